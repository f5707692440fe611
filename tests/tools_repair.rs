//! `ferrothin repair --in-place` (issue 25, point 9) on a one-device pool
//! file: refused while a daemon holds the file; on a damaged file, the
//! metadata region is backed up, rewritten, checks clean, and the daemon
//! reopens the pool with its data.

mod tgt_util;

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::{Command, Output};

use serde_json::{json, Value};
use tgt_util::{nbd::Client, Tgt};

fn ferrothin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrothin"))
        .args(args)
        .output()
        .unwrap()
}

fn pattern() -> Vec<u8> {
    (0..4096u32).map(|i| (i * 7 % 253) as u8).collect()
}

#[test]
fn repair_in_place_mends_a_one_device_pool_file() {
    let t = Tgt::start("repair-in-place", &["--empty", "-m", "0x3"]);
    let (img, mut c) = t.file_pool_with_volume();
    assert_eq!(c.write(1 << 20, &pattern()).unwrap(), 0);
    assert_eq!(c.flush().unwrap(), 0);
    drop(c);
    let path = img.to_str().unwrap();

    // A live pool's file is not touched.
    let o = ferrothin(&["repair", "--in-place", "-i", path]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is in use (held by a live pool?)"), "{err}");
    let dir = t.dir.clone();
    t.stop();

    // Damage: the device details tree's root block.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let mut sb = [0u8; 4096];
    f.read_exact(&mut sb).unwrap();
    let sb = metadata::pdata::superblock::Superblock::unpack(&sb, 0).unwrap();
    f.seek(SeekFrom::Start(sb.device_details_root * 4096))
        .unwrap();
    f.write_all(&[0xa5; 4096]).unwrap();
    drop(f);
    let before = std::fs::read(&img).unwrap();
    assert!(!ferrothin(&["check", "-q", path]).status.success());

    let o = ferrothin(&["repair", "--in-place", "-i", path]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("repaired: 1 devices"), "{err}");
    assert!(err.contains(".metadata-backup (dd it back"), "{err}");
    let backup = std::fs::read(dir.join("pool.img.metadata-backup")).unwrap();
    let region = (sb.metadata_nr_blocks * 4096) as usize;
    assert_eq!(backup, before[..region], "the backup is the old region");
    let after = std::fs::read(&img).unwrap();
    assert_eq!(after.len(), before.len());
    assert_eq!(
        after[region..],
        before[region..],
        "the data area was written"
    );
    let o = ferrothin(&["check", path]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // A second repair keeps the first backup.
    let o = ferrothin(&["repair", "--in-place", "-i", path]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("an earlier repair's backup?"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Then the superblock itself lost: the region's size and the fields
    // no tree records must be given, and the pool comes back the same.
    let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all(&[0; 4096]).unwrap();
    drop(f);
    std::fs::remove_file(dir.join("pool.img.metadata-backup")).unwrap();
    let o = ferrothin(&["repair", "--in-place", "-i", path]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("give --metadata-blocks"), "{err}");
    let (nr_meta, block_size) = (
        sb.metadata_nr_blocks.to_string(),
        sb.data_block_size.to_string(),
    );
    let (nr_data, tid) = (
        sb.data_sm_root.nr_blocks.to_string(),
        sb.trans_id.to_string(),
    );
    let o = ferrothin(&[
        "repair",
        "--in-place",
        "-i",
        path,
        "--metadata-blocks",
        &nr_meta,
        "--data-block-size",
        &block_size,
        "--nr-data-blocks",
        &nr_data,
        "--transaction-id",
        &tid,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("superblock rebuilt"));
    assert!(ferrothin(&["check", "-q", path]).status.success());

    let t = Tgt::start_in(dir, &["--empty", "-m", "0x3"]);
    t.ok(
        "bdev_uring_create",
        json!({"name": "Disk0", "filename": img}),
    );
    t.ok(
        "bdev_thin_pool_create",
        json!({"name": "pool0", "metadata_bdev": "Disk0"}),
    );
    let pools = t.ok("bdev_thin_pool_get_pools", Value::Null);
    assert_eq!(pools[0]["mode"], "write", "{pools}");
    t.ok(
        "bdev_thin_activate",
        json!({"pool": "pool0", "name": "vol", "dev_id": 0, "size_in_mib": 16}),
    );
    let addr = t.export("vol", None, None);
    let mut c = Client::connect(&addr, "vol").unwrap();
    assert_eq!(c.read(1 << 20, 4096).unwrap(), pattern());
    drop(c);
    t.stop();
}
