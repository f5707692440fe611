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
