//! No silent new pools (issue 25, point 4): the banner says whether each
//! pool was created or reopened; a pool file in a directory that does not
//! exist, or a missing pool file whose volumes were remembered, stops the
//! start unless --create-missing asks for it.

mod tgt_util;

use std::time::Duration;

use tgt_util::{scratch, tgt_must_exit, Tgt};

fn default_args(data: &std::path::Path) -> Vec<String> {
    tgt_util::default_args(data, false)
        .into_iter()
        .map(String::from)
        .collect()
}

/// The daemon's log once it holds `needle` (the banner is printed just
/// after the socket opens, so a test that connected may be early).
fn log_with(t: &Tgt, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = t.log();
        if log.contains(needle) || std::time::Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn the_banner_says_created_then_reopened() {
    let dir = scratch("created");
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    let args = default_args(&data);
    let t = Tgt::start_in(dir, &strs(&args));
    let want = "pool pool0 on Disk0: created (a new, empty pool), mode write, 1 devices (1 active)";
    let log = log_with(&t, want);
    assert!(log.contains(want), "{log}");
    let dir = t.dir.clone();
    t.stop();
    std::fs::remove_file(dir.join("tgt.log")).unwrap();
    let t = Tgt::start_in(dir, &strs(&args));
    let want = "pool pool0 on Disk0: reopened, mode write, 1 devices (1 active)";
    let log = log_with(&t, want);
    assert!(log.contains(want), "{log}");
    assert!(!log.contains("created (a new"), "{log}");
    t.stop();
}

#[test]
fn a_mistyped_data_dir_is_refused_unless_asked() {
    let dir = scratch("typo");
    let data = dir.join("no-such-dir");
    let args = default_args(&data);
    let (st, log) = tgt_must_exit(&dir, &strs(&args), Duration::from_secs(30));
    assert!(!st.success(), "{log}");
    assert!(
        log.contains(&format!(
            "{} would be created, but its directory {} does not exist (a mistyped path?): \
             create the directory, or start with --create-missing",
            data.join("pool0.img").display(),
            data.display()
        )),
        "{log}"
    );
    assert!(!data.exists());
    let mut asked = args.clone();
    asked.push("--create-missing".into());
    let t = Tgt::start_in(dir, &strs(&asked));
    assert!(data.join("pool0.img").exists());
    t.stop();
}

#[test]
fn a_missing_pool_file_with_remembered_volumes_is_refused_unless_asked() {
    let dir = scratch("lost");
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    let args = default_args(&data);
    let t = Tgt::start_in(dir.clone(), &strs(&args));
    t.stop();
    std::fs::rename(data.join("pool0.img"), dir.join("moved.img")).unwrap();
    let (st, log) = tgt_must_exit(&dir, &strs(&args), Duration::from_secs(30));
    assert!(!st.success(), "{log}");
    assert!(
        log.contains(&format!(
            "{} is missing, but {} remembers volumes in it: was the pool file moved?",
            data.join("pool0.img").display(),
            data.join("volumes.json").display()
        )),
        "{log}"
    );
    assert!(!data.join("pool0.img").exists());
    let mut asked = args.clone();
    asked.push("--create-missing".into());
    let t = Tgt::start_in(dir, &strs(&asked));
    let log = log_with(&t, "created (a new, empty pool)");
    assert!(log.contains("created (a new, empty pool)"), "{log}");
    t.stop();
}
