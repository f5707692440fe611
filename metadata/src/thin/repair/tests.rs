use std::collections::BTreeMap;

use super::*;
use crate::io::MemIo;
use crate::pdata::btree_walk::read_tree;
use crate::thin::read::read_image;
use crate::thin::write::write_image;

fn pool(seed: u64) -> PoolModel {
    let mut x = seed | 1;
    let mut r = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut m = PoolModel {
        time: 2,
        trans_id: 5,
        data_block_size: 128,
        nr_data_blocks: 100_000,
        ..Default::default()
    };
    for id in [1u64, 4, 9] {
        let mappings: BTreeMap<u64, BlockTime> = (0..3000)
            .map(|_| {
                (
                    r() % 50_000,
                    BlockTime {
                        block: r() % 100_000,
                        time: (r() % 3) as u32,
                    },
                )
            })
            .collect();
        let details = DeviceDetails {
            mapped_blocks: mappings.len() as u64,
            transaction_id: 1,
            creation_time: 0,
            snapshotted_time: 2,
        };
        m.devices.insert(id, Device { details, mappings });
    }
    m
}

/// A seeded corruptor damages random mapping leaves; repair must recover
/// every mapping whose leaf is intact, and its output must pass our check.
#[test]
fn repair_recovers_every_mapping_in_an_intact_leaf() {
    for seed in 1..6u64 {
        let m = pool(seed);
        let mut io = MemIo::new(4096);
        write_image(&mut io, &m).unwrap();
        // Which leaf holds which keys, per device.
        let sb = crate::thin::read::read_superblock(&io).unwrap();
        let top = read_tree(&io, sb.data_mapping_root, 8, &mut |_, _| {}).unwrap();
        let mut leaves: Vec<(u64, u64, Vec<u64>)> = Vec::new();
        for (id, root) in &top {
            let root = u64::from_le_bytes(root[..8].try_into().unwrap());
            read_tree(&io, root, 8, &mut |b, n| {
                if n.kind == NodeKind::Leaf {
                    leaves.push((*id, b, n.keys.clone()));
                }
            })
            .unwrap();
        }
        let mut x = seed * 7919;
        let mut damaged = Vec::new();
        for _ in 0..4 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (id, b, keys) = leaves[(x >> 33) as usize % leaves.len()].clone();
            io.block_mut(b).unwrap()[100 + (x as usize % 3000)] ^= 0x5a;
            damaged.push((id, keys));
        }
        let (got, report) = salvage(&io).unwrap();
        assert!(
            !report.lost_nodes.is_empty(),
            "seed {seed}: damage went unnoticed"
        );
        for (id, d) in &m.devices {
            let mut want = d.mappings.clone();
            for (did, keys) in &damaged {
                if did == id {
                    for k in keys {
                        want.remove(k);
                    }
                }
            }
            assert_eq!(got.devices[id].mappings, want, "seed {seed}: device {id}");
        }
        let mut out = MemIo::new(4096);
        write_image(&mut out, &got).unwrap();
        let r = crate::thin::check::check(&out, &Default::default());
        assert!(
            r.passed() && r.non_fatal.is_empty(),
            "seed {seed}: {:?}",
            r.fatal
        );
        assert_eq!(read_image(&out, false).unwrap(), got);
        // And Debian's thin_check (ci/setup installs it).
        let path = std::env::temp_dir().join(format!(
            "ferrothin-repair-{}-{seed}.img",
            std::process::id()
        ));
        std::fs::write(&path, out.bytes()).unwrap();
        let tc = std::process::Command::new("thin_check")
            .arg(&path)
            .output()
            .expect("thin_check");
        assert!(
            tc.status.success(),
            "seed {seed}: thin_check: {}",
            String::from_utf8_lossy(&tc.stderr)
        );
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn lost_details_and_a_lost_superblock() {
    let m = pool(3);
    let mut io = MemIo::new(4096);
    write_image(&mut io, &m).unwrap();
    let sb = crate::thin::read::read_superblock(&io).unwrap();
    io.block_mut(sb.device_details_root).unwrap()[200] ^= 1;
    let (got, report) = salvage(&io).unwrap();
    assert_eq!(report.lost_nodes.len(), 1);
    for (id, d) in &m.devices {
        assert_eq!(
            got.devices[id].mappings, d.mappings,
            "mappings survive lost details"
        );
        assert_eq!(
            got.devices[id].details.mapped_blocks,
            d.mappings.len() as u64
        );
    }
    io.block_mut(0).unwrap()[0x30] ^= 1;
    assert!(matches!(salvage(&io), Err(MetadataError::Invalid(_))));
}

/// A pool with history (many commits, so stale copies of its trees lie in
/// blocks not yet reused), then its superblock zeroed: the rebuilt
/// superblock finds the current trees, not an older version. Seen failing
/// when roots were taken to be the nodes nothing points at (a stale node
/// can point at a block reused for a current root) and when the pair with
/// more devices won over the newer one.
#[test]
fn a_lost_superblock_is_rebuilt_from_the_current_trees() {
    use crate::io::SimDisk;
    use crate::thin::pool::Pool;
    for seed in 1..60u64 {
        let disk = SimDisk::new(1024);
        let mut p = Pool::format(Box::new(disk.clone()), 128, 4000).unwrap();
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut r = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut ids: Vec<u32> = Vec::new();
        let mut next = 0u32;
        for _commit in 0..(5 + r(20)) {
            for _ in 0..(1 + r(40)) {
                match r(12) {
                    0 => {
                        p.create_thin(next).unwrap();
                        ids.push(next);
                        next += 1;
                    }
                    1 if !ids.is_empty() => {
                        let o = ids[r(ids.len() as u64) as usize];
                        p.create_snap(next, o).unwrap();
                        ids.push(next);
                        next += 1;
                    }
                    2 if ids.len() > 2 => {
                        let i = r(ids.len() as u64) as usize;
                        p.delete(ids.swap_remove(i)).unwrap();
                    }
                    3 if !ids.is_empty() => {
                        let id = ids[r(ids.len() as u64) as usize];
                        let v = r(300);
                        if let Some(b) = p.remove(id, v).unwrap() {
                            if p.data_block_count(b) == 0 {
                                p.free_data_block(b);
                            }
                        }
                    }
                    _ if !ids.is_empty() => {
                        let id = ids[r(ids.len() as u64) as usize];
                        let v = r(300);
                        if let Some(b) = p.alloc_data_block() {
                            p.insert(id, v, b).unwrap();
                        }
                    }
                    _ => {}
                }
            }
            p.commit(&mut || Ok(())).unwrap();
        }
        // The last transaction takes a snapshot: its time is then newer
        // than any earlier tree's, the one order a lost superblock leaves
        // (see roots.rs for what cannot be told apart).
        if ids.is_empty() {
            p.create_thin(next).unwrap();
            ids.push(next);
            next += 1;
        }
        p.create_snap(next, ids[0]).unwrap();
        p.commit(&mut || Ok(())).unwrap();
        let mut io = MemIo::from_blocks(disk.power_cut(0));
        let want = read_image(&io, false).unwrap();
        io.block_mut(0).unwrap().fill(0);

        // Without the block size there is nothing to rebuild from.
        let err = salvage(&io).unwrap_err().to_string();
        assert!(err.contains("--data-block-size"), "{err}");

        let o = Overrides {
            transaction_id: Some(want.trans_id),
            data_block_size: Some(128),
            nr_data_blocks: Some(4000),
        };
        let (got, report) = salvage_with(&io, &o).unwrap();
        assert!(report.lost_nodes.is_empty(), "seed {seed}: {report:?}");
        assert_eq!(got.devices, want.devices, "seed {seed}");
        assert_eq!(
            (got.trans_id, got.data_block_size, got.nr_data_blocks),
            (want.trans_id, 128, 4000)
        );
        assert!(got.time <= want.time, "seed {seed}");
        let newest = want
            .devices
            .values()
            .flat_map(|d| d.mappings.values().map(|bt| bt.time))
            .max()
            .unwrap_or(0);
        assert!(got.time >= newest, "seed {seed}");

        // Without the sizes, the least the trees need, said in the report.
        let (least, report) = salvage_with(
            &io,
            &Overrides {
                data_block_size: Some(128),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(least.devices, want.devices);
        assert_eq!(report.notes.len(), 3, "{:?}", report.notes);
    }
}

/// Overrides replace a readable superblock's fields.
#[test]
fn overrides_replace_the_superblocks_fields() {
    let m = pool(5);
    let mut io = MemIo::new(4096);
    write_image(&mut io, &m).unwrap();
    let o = Overrides {
        transaction_id: Some(77),
        data_block_size: Some(256),
        nr_data_blocks: Some(200_000),
    };
    let (got, report) = salvage_with(&io, &o).unwrap();
    assert!(report.notes.is_empty());
    assert_eq!(
        (got.trans_id, got.data_block_size, got.nr_data_blocks),
        (77, 256, 200_000)
    );
    assert_eq!(got.devices, m.devices);
    let bad = Overrides {
        data_block_size: Some(100),
        ..Default::default()
    };
    assert!(salvage_with(&io, &bad).is_err());
}
