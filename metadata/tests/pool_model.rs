//! The runtime API against a model: seeded random sequences of creates,
//! snapshots (of snapshots), inserts and overwrites, removes, deletes,
//! commits and aborts. After every commit the image must pass our check,
//! a reopened pool must map exactly what the model says, and every data
//! block's count must equal the number of slots naming it in distinct
//! physical leaves (thin_check 0.9.0 does not check data counts, so we
//! do); after every third commit and the last, Debian's thin_check must
//! pass it too and thin_dump print what we print. A failing seed is
//! printed and replays.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;

use metadata::io::FileIo;
use metadata::pdata::btree_walk::read_tree;
use metadata::pdata::node::NodeKind;
use metadata::pdata::values::BlockTime;
use metadata::thin::pool::Pool;
use metadata::thin::read::read_superblock;

use metadata::fuzz::Rng;

type Model = BTreeMap<u32, BTreeMap<u64, u64>>;

/// A zeroed 16 MiB image file at `path`.
fn fresh_image(path: &std::path::Path) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(4096 * 4096).unwrap();
}

fn open_file(path: &std::path::Path) -> Box<FileIo> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    Box::new(FileIo::new(f).unwrap())
}

/// Data counts rebuilt from the image: slots in distinct level-1 leaves.
fn expected_data_counts(path: &std::path::Path) -> HashMap<u64, u32> {
    let io = open_file(path);
    let sb = read_superblock(&*io).unwrap();
    let mut top = read_tree(&*io, sb.data_mapping_root, 8, &mut |_, _| {}).unwrap();
    if sb.held_root != 0 {
        // The metadata snapshot's leaves are distinct physical leaves too.
        let blk = metadata::io::BlockIo::read(&*io, sb.held_root).unwrap();
        let snap = metadata::pdata::superblock::Superblock::unpack(&blk, sb.held_root).unwrap();
        top.extend(read_tree(&*io, snap.data_mapping_root, 8, &mut |_, _| {}).unwrap());
    }
    let mut leaves = HashMap::new();
    for (_, root) in top {
        let root = u64::from_le_bytes(root[..8].try_into().unwrap());
        read_tree(&*io, root, 8, &mut |b, n| {
            if n.kind == NodeKind::Leaf {
                leaves.insert(b, n.values.clone());
            }
        })
        .unwrap();
    }
    let mut counts = HashMap::new();
    for values in leaves.values() {
        for v in values.chunks(8) {
            *counts
                .entry(BlockTime::unpack(u64::from_le_bytes(v.try_into().unwrap())).block)
                .or_insert(0) += 1;
        }
    }
    counts
}

/// `verify`, after thin_check passes the image and thin_dump prints what
/// we print.
fn verify_with_tools(seed: u64, step: usize, path: &std::path::Path, model: &Model, nr_data: u64) {
    let check = Command::new("thin_check")
        .arg(path)
        .output()
        .expect("thin_check (ci/setup installs it)");
    assert!(
        check.status.success(),
        "seed {seed} step {step}: thin_check failed:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let dump = Command::new("thin_dump")
        .arg(path)
        .output()
        .expect("thin_dump");
    let image = metadata::thin::read::read_image(&*open_file(path), false).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&dump.stdout),
        metadata::thin::xml::write_xml(&image),
        "seed {seed} step {step}: thin_dump differs from our dump"
    );
    verify(seed, step, path, model, nr_data);
}

/// Our check passes the image, and it holds the model: devices,
/// mappings, counts.
fn verify(seed: u64, step: usize, path: &std::path::Path, model: &Model, nr_data: u64) {
    let ours = metadata::thin::check::check(&*open_file(path), &Default::default());
    assert!(
        ours.passed() && ours.non_fatal.is_empty(),
        "seed {seed} step {step}: our check: {:?} {:?}",
        ours.fatal,
        ours.non_fatal
    );
    let mut p = Pool::open(open_file(path))
        .unwrap_or_else(|e| panic!("seed {seed} step {step}: reopen: {e}"));
    assert_eq!(
        p.devices(),
        model.keys().copied().collect::<Vec<_>>(),
        "seed {seed} step {step}: devices"
    );
    for (id, maps) in model {
        let got: BTreeMap<u64, u64> = p
            .mappings(*id)
            .unwrap()
            .into_iter()
            .map(|(v, bt)| (v, bt.block))
            .collect();
        assert_eq!(&got, maps, "seed {seed} step {step}: device {id}");
        assert_eq!(
            p.details(*id).unwrap().mapped_blocks,
            maps.len() as u64,
            "seed {seed} step {step}: mapped_blocks {id}"
        );
    }
    let want = expected_data_counts(path);
    for b in 0..nr_data {
        let w = want.get(&b).copied().unwrap_or(0);
        assert_eq!(
            p.data_block_count(b),
            w,
            "seed {seed} step {step}: data block {b}"
        );
    }
}

/// The metadata snapshot, if held, still shows the pool at reserve time.
fn check_snapshot(seed: u64, step: usize, path: &std::path::Path, snap: Option<&Model>) {
    let got = metadata::thin::read::read_image(&*open_file(path), true);
    match snap {
        None => assert!(
            got.is_err(),
            "seed {seed} step {step}: a snapshot nobody reserved"
        ),
        Some(want) => {
            let got = got.unwrap_or_else(|e| panic!("seed {seed} step {step}: snapshot: {e}"));
            let got: Model = got
                .devices
                .into_iter()
                .map(|(id, d)| {
                    (
                        u32::try_from(id).expect("a 24-bit device id"),
                        d.mappings
                            .into_iter()
                            .map(|(v, bt)| (v, bt.block))
                            .collect(),
                    )
                })
                .collect();
            assert_eq!(
                &got, want,
                "seed {seed} step {step}: the metadata snapshot changed"
            );
        }
    }
}

fn run(seed: u64, ops: usize) {
    let path = std::env::temp_dir().join(format!(
        "ferrothin-pool-model-{}-{seed}.img",
        std::process::id()
    ));
    fresh_image(&path);
    let nr_data = 3000;
    let mut p = Pool::format(open_file(&path), 128, nr_data).unwrap();
    let mut r = Rng(seed);
    let mut model: Model = BTreeMap::new();
    let mut committed: Model = BTreeMap::new();
    let mut next_id = 0u32;
    let mut snap: Option<Model> = None;
    // thin_check and thin_dump cost ~50 ms a run here (most of it their
    // AIO context's teardown): they see every third commit, ours all.
    let mut commits = 0usize;
    let mut check = |step: usize, model: &Model| {
        if commits.is_multiple_of(3) {
            verify_with_tools(seed, step, &path, model, nr_data);
        } else {
            verify(seed, step, &path, model, nr_data);
        }
        commits += 1;
    };
    for step in 0..ops {
        let ids: Vec<u32> = model.keys().copied().collect();
        let pick = |r: &mut Rng| ids[r.below(ids.len() as u64) as usize];
        match r.below(100) {
            0..=4 => {
                p.create_thin(next_id).unwrap();
                model.insert(next_id, BTreeMap::new());
                next_id += 1;
            }
            5..=9 if !ids.is_empty() => {
                let origin = pick(&mut r);
                p.create_snap(next_id, origin).unwrap();
                let copy = model[&origin].clone();
                model.insert(next_id, copy);
                next_id += 1;
            }
            10..=59 if !ids.is_empty() => {
                let id = pick(&mut r);
                let v = r.below(1500);
                if let Some(d) = p.alloc_data_block() {
                    p.insert(id, v, d).unwrap();
                    model.get_mut(&id).unwrap().insert(v, d);
                }
            }
            60..=84 if !ids.is_empty() => {
                let id = pick(&mut r);
                let keys: Vec<u64> = model[&id].keys().copied().collect();
                if !keys.is_empty() {
                    let v = keys[r.below(keys.len() as u64) as usize];
                    let got = p.remove(id, v).unwrap();
                    assert_eq!(
                        got,
                        model.get_mut(&id).unwrap().remove(&v),
                        "seed {seed} step {step}"
                    );
                }
            }
            85..=87 if !ids.is_empty() => {
                let id = pick(&mut r);
                let lo = r.below(1500);
                let hi = lo + r.below(400);
                let n = p.remove_range(id, lo, hi).unwrap();
                let m = model.get_mut(&id).unwrap();
                let before = m.len();
                m.retain(|k, _| *k < lo || *k >= hi);
                assert_eq!(n as usize, before - m.len(), "seed {seed} step {step}");
            }
            88 if !ids.is_empty() => {
                let id = pick(&mut r);
                p.delete(id).unwrap();
                model.remove(&id);
            }
            89 => {
                // Reserve or release the metadata snapshot (each commits).
                if snap.is_none() {
                    p.reserve_metadata_snap(&mut || Ok(())).unwrap();
                    snap = Some(model.clone());
                } else {
                    p.release_metadata_snap(&mut || Ok(())).unwrap();
                    snap = None;
                }
                committed = model.clone();
                check(step, &model);
                check_snapshot(seed, step, &path, snap.as_ref());
            }
            90..=97 => {
                p.commit(&mut || Ok(())).unwrap();
                committed = model.clone();
                check(step, &model);
                check_snapshot(seed, step, &path, snap.as_ref());
            }
            98..=99 => {
                p = p.abort().unwrap();
                model = committed.clone();
                next_id = next_id.max(model.keys().last().map_or(0, |k| k + 1));
            }
            _ => {}
        }
    }
    p.commit(&mut || Ok(())).unwrap();
    verify_with_tools(seed, ops, &path, &model, nr_data);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn random_workloads_match_the_model_and_pass_thin_check() {
    let seeds: u64 = std::env::var("FERROTHIN_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    for seed in 0..seeds {
        run(seed, 1500);
    }
}

/// Trees that shrink: fill two devices (one a snapshot of the other), then
/// remove most keys in random order, committing between batches, so
/// removal has to merge and redistribute nodes at every level.
#[test]
fn shrinking_trees_stay_valid() {
    for seed in 0..3u64 {
        let path = std::env::temp_dir().join(format!(
            "ferrothin-pool-shrink-{}-{seed}.img",
            std::process::id()
        ));
        fresh_image(&path);
        let nr_data = 40_000;
        let mut p = Pool::format(open_file(&path), 128, nr_data).unwrap();
        let mut r = Rng(seed + 1000);
        let mut model: Model = BTreeMap::new();
        p.create_thin(1).unwrap();
        model.insert(1, BTreeMap::new());
        for v in 0..20_000u64 {
            let d = p.alloc_data_block().unwrap();
            p.insert(1, v, d).unwrap();
            model.get_mut(&1).unwrap().insert(v, d);
        }
        p.commit(&mut || Ok(())).unwrap();
        p.create_snap(2, 1).unwrap();
        model.insert(2, model[&1].clone());
        let mut keys: Vec<u64> = (0..20_000).collect();
        for i in (1..keys.len()).rev() {
            keys.swap(i, r.below(i as u64 + 1) as usize);
        }
        for (n, batch) in keys[..19_900].chunks(2_000).enumerate() {
            for &k in batch {
                let id = 1 + (k % 2) as u32;
                p.remove(id, k).unwrap();
                model.get_mut(&id).unwrap().remove(&k);
            }
            p.commit(&mut || Ok(())).unwrap();
            verify_with_tools(seed, n, &path, &model, nr_data);
        }
        std::fs::remove_file(&path).unwrap();
    }
}
