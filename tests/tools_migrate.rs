//! `ferrothin migrate` (issue 26, tools): a thin device copied out of a
//! one-device pool file equals, byte for byte, what the daemon served over
//! NBD; unmapped ranges stay holes; `-m` copies a snapshot from the
//! metadata snapshot while the daemon runs.

mod tgt_util;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output};

use serde_json::json;
use tgt_util::{nbd::Client, Tgt};

fn ferrothin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrothin"))
        .args(args)
        .output()
        .unwrap()
}

fn stamp(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

const SIZE: u64 = 16 << 20;

fn whole(c: &mut Client) -> Vec<u8> {
    (0..SIZE / (1 << 20))
        .flat_map(|i| c.read(i << 20, 1 << 20).unwrap())
        .collect()
}

#[test]
fn migrate_copies_what_the_daemon_served() {
    let t = Tgt::start("migrate", &["--empty", "-m", "0x3"]);
    let (img, mut c) = t.file_pool_with_volume();
    // Whole blocks, a partial block, and blocks far apart.
    for (off, len, seed) in [
        (0u64, 128 << 10, 1u8),
        (3 << 20, 5000, 2),
        (15 << 20, 64 << 10, 3),
    ] {
        assert_eq!(c.write(off, &stamp(len, seed)).unwrap(), 0);
    }
    assert_eq!(c.flush().unwrap(), 0);
    t.ok(
        "bdev_thin_snapshot",
        json!({"origin": "vol", "name": "snap", "dev_id": 1}),
    );
    // The origin moves on; the snapshot keeps what it had.
    assert_eq!(c.write(64 << 10, &stamp(4096, 9)).unwrap(), 0);
    assert_eq!(c.write(8 << 20, &stamp(70000, 8)).unwrap(), 0);
    assert_eq!(c.flush().unwrap(), 0);
    let vol = whole(&mut c);
    drop(c);
    let saddr = t.export("snap", None, None);
    let mut s = Client::connect(&saddr, "snap").unwrap();
    let snap = whole(&mut s);
    drop(s);
    assert_ne!(vol, snap);
    let path = img.to_str().unwrap();
    let dest = |name: &str| t.dir.join(name).to_str().unwrap().to_string();

    // While the daemon runs: refused live, allowed from the metadata
    // snapshot.
    let o = ferrothin(&[
        "migrate",
        "--metadata-dev",
        path,
        "--dev-id",
        "1",
        "--dest-file",
        &dest("x"),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is in use"));
    t.ok(
        "bdev_thin_pool_reserve_metadata_snap",
        json!({"name": "pool0"}),
    );
    let snap_copy = dest("snap.img");
    let o = ferrothin(&[
        "migrate",
        "--metadata-dev",
        path,
        "-m",
        "--dev-id",
        "1",
        "--dest-file",
        &snap_copy,
        "--size",
        &SIZE.to_string(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read(&snap_copy).unwrap() == snap,
        "the snapshot's copy differs"
    );
    let dir = t.dir.clone();
    t.stop();

    // Offline: the origin, with its holes.
    let vol_copy = dir.join("vol.img");
    let vol_copy = vol_copy.to_str().unwrap();
    let o = ferrothin(&[
        "migrate",
        "--metadata-dev",
        path,
        "--dev-id",
        "0",
        "--dest-file",
        vol_copy,
        "--size",
        &SIZE.to_string(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read(vol_copy).unwrap() == vol,
        "the volume's copy differs"
    );
    let allocated = std::fs::metadata(vol_copy).unwrap().blocks() * 512;
    assert!(
        allocated <= 8 * (64 << 10),
        "holes were written: {allocated} bytes allocated"
    );

    // Errors: a device the pool does not have, a file that exists, a size
    // that cuts mapped blocks off.
    let o = ferrothin(&[
        "migrate",
        "--metadata-dev",
        path,
        "--dev-id",
        "7",
        "--dest-file",
        &format!("{vol_copy}.2"),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no thin device 7"));
    let o = ferrothin(&[
        "migrate",
        "--metadata-dev",
        path,
        "--dev-id",
        "0",
        "--dest-file",
        vol_copy,
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot create"));
    let o = ferrothin(&[
        "migrate",
        "--metadata-dev",
        path,
        "--dev-id",
        "0",
        "--dest-file",
        &format!("{vol_copy}.3"),
        "--size",
        "4096",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("is less than the"));
}
