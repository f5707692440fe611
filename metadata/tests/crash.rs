//! Crash tests: a seeded workload runs on a simulated disk and loses power
//! at every block write (and flush) of chosen commits. The surviving image,
//! with each unflushed write kept, dropped or torn, must open as exactly the
//! last committed transaction (or the new one, only if the power went after
//! its superblock was written) and pass Debian's thin_check. A failing
//! (seed, commit, write, cut) is printed and replays.

use std::collections::BTreeMap;
use std::process::Command;

use metadata::io::{BlockIo, MemIo, SimDisk};
use metadata::thin::pool::Pool;

use metadata::fuzz::Rng;

type Model = BTreeMap<u32, BTreeMap<u64, u64>>;
const OPS_PER_COMMIT: usize = 40;

struct Run {
    disk: SimDisk,
    committed: Model,
    attempted: Model,
    /// Block writes each commit made (when it was not interrupted).
    commit_writes: Vec<u64>,
    crashed: bool,
}

/// Runs `commits` commits of a seeded workload; arms a power loss at write
/// `w` of commit `k` when asked.
fn scenario(seed: u64, commits: usize, crash: Option<(usize, u64)>) -> Run {
    let disk = SimDisk::new(2048);
    let mut p = Pool::format(Box::new(disk.clone()), 128, 4000).unwrap();
    let mut r = Rng(seed);
    let mut model: Model = BTreeMap::new();
    let mut committed = model.clone();
    let mut commit_writes = Vec::new();
    let mut next_id = 0;
    for k in 0..commits {
        for _ in 0..OPS_PER_COMMIT {
            let ids: Vec<u32> = model.keys().copied().collect();
            let pick = |r: &mut Rng| ids[r.below(ids.len() as u64) as usize];
            match r.below(20) {
                0 => {
                    p.create_thin(next_id).unwrap();
                    model.insert(next_id, BTreeMap::new());
                    next_id += 1;
                }
                1 if !ids.is_empty() => {
                    let o = pick(&mut r);
                    p.create_snap(next_id, o).unwrap();
                    let m = model[&o].clone();
                    model.insert(next_id, m);
                    next_id += 1;
                }
                2 if ids.len() > 2 => {
                    let id = pick(&mut r);
                    p.delete(id).unwrap();
                    model.remove(&id);
                }
                3..=6 if !ids.is_empty() => {
                    let id = pick(&mut r);
                    let keys: Vec<u64> = model[&id].keys().copied().collect();
                    if !keys.is_empty() {
                        let v = keys[r.below(keys.len() as u64) as usize];
                        p.remove(id, v).unwrap();
                        model.get_mut(&id).unwrap().remove(&v);
                    }
                }
                _ if !ids.is_empty() => {
                    let id = pick(&mut r);
                    let v = r.below(800);
                    if let Some(d) = p.alloc_data_block() {
                        p.insert(id, v, d).unwrap();
                        model.get_mut(&id).unwrap().insert(v, d);
                    }
                }
                _ => {}
            }
        }
        let start = disk.writes();
        if let Some((ck, w)) = crash {
            if ck == k {
                disk.fail_at_write(start + w);
            }
        }
        if p.commit(&mut || Ok(())).is_err() {
            return Run {
                disk,
                committed,
                attempted: model,
                commit_writes,
                crashed: true,
            };
        }
        commit_writes.push(disk.writes() - start);
        committed = model.clone();
    }
    Run {
        disk,
        committed: committed.clone(),
        attempted: model,
        commit_writes,
        crashed: false,
    }
}

fn state_of(p: &mut Pool) -> Model {
    p.devices()
        .into_iter()
        .map(|id| {
            (
                id,
                p.mappings(id)
                    .unwrap()
                    .into_iter()
                    .map(|(v, bt)| (v, bt.block))
                    .collect(),
            )
        })
        .collect()
}

fn thin_check(blocks: &MemIo, tag: &str) {
    let path = std::env::temp_dir().join(format!("ferrothin-crash-{}.img", std::process::id()));
    std::fs::write(&path, blocks.bytes()).unwrap();
    let out = Command::new("thin_check")
        .arg(&path)
        .output()
        .expect("thin_check (ci/setup installs it)");
    assert!(
        out.status.success(),
        "{tag}: thin_check failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_power_loss_at_any_write_of_a_commit_leaves_the_last_commit() {
    let commits = 6;
    for seed in 0..3u64 {
        let full = scenario(seed, commits, None);
        assert!(!full.crashed);
        for k in [1usize, 3, 5] {
            let n = full.commit_writes[k];
            for w in 0..=n {
                let run = scenario(seed, commits, Some((k, w)));
                assert!(
                    run.crashed,
                    "seed {seed} commit {k} write {w}: the armed power loss did not happen"
                );
                let cut = seed * 1000 + w;
                let image = MemIo::from_blocks(run.disk.power_cut(cut));
                let tag = format!("seed {seed} commit {k} write {w}/{n} cut {cut}");
                let mut p = Pool::open(Box::new(image.clone()))
                    .unwrap_or_else(|e| panic!("{tag}: reopen failed: {e}"));
                let got = state_of(&mut p);
                // Only the last step (the final flush, after the superblock
                // write) may have made the new transaction durable.
                if w < n {
                    assert_eq!(got, run.committed, "{tag}: not the last committed state");
                } else {
                    assert!(
                        got == run.committed || got == run.attempted,
                        "{tag}: neither the old nor the new state"
                    );
                }
                assert_eq!(image.nr_blocks(), 2048);
                thin_check(&image, &tag);
                let ours = metadata::thin::check::check(&image, &Default::default());
                // A committed state leaks nothing: a leak is as wrong here
                // as a fatal error, though thin_check would exit 0 on it.
                assert!(
                    ours.passed() && ours.non_fatal.is_empty(),
                    "{tag}: our check: {:?} {:?}",
                    ours.fatal,
                    ours.non_fatal
                );
            }
        }
    }
}

#[test]
fn a_clean_run_survives_any_power_cut_after_its_commits() {
    for seed in 10..13u64 {
        let run = scenario(seed, 4, None);
        for cut in 0..5 {
            let image = MemIo::from_blocks(run.disk.power_cut(cut));
            let mut p = Pool::open(Box::new(image)).unwrap();
            assert_eq!(state_of(&mut p), run.committed, "seed {seed} cut {cut}");
        }
    }
}
