use std::os::unix::fs::MetadataExt;

use super::*;
use crate::test_util::{check_integrity, on_reactor, scratch_dir, unique};
use crate::{open, IoBuf, IoStatus};

fn file_of(len: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = scratch_dir();
    let path = dir.join("disk.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(len).unwrap();
    (dir, path)
}

fn make(path: &std::path::Path, bs: Option<u32>) -> Arc<Bdev> {
    create(UringOptions {
        name: unique("uring"),
        filename: path.to_path_buf(),
        block_size: bs,
        uuid: None,
    })
    .unwrap()
}

#[test]
fn data_integrity_on_a_temp_file() {
    for (bs, seed) in [(None, 11u64), (Some(4096), 12)] {
        let (dir, path) = file_of(1 << 20);
        let b = make(&path, bs);
        assert_eq!(b.block_size(), bs.unwrap_or(512));
        assert_eq!(b.size_bytes(), 1 << 20);
        let name = b.name().to_string();
        on_reactor(move || async move {
            let ch = open(&name, true, None).unwrap().io_channel().unwrap();
            check_integrity(&ch, seed, 200, true).await;
            ch.flush().await.unwrap();
        });
        crate::unregister(b.name()).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn writes_reach_the_file_and_unmap_punches_holes() {
    let (dir, path) = file_of(4 << 20);
    let b = make(&path, Some(4096));
    let name = b.name().to_string();
    on_reactor(move || async move {
        let ch = open(&name, true, None).unwrap().io_channel().unwrap();
        for blk in 0..256 {
            ch.write(blk, IoBuf::from_slice(&[0xA5; 4096]))
                .await
                .unwrap();
        }
        ch.flush().await.unwrap();
    });
    let data = std::fs::read(&path).unwrap();
    assert!(
        data[..256 * 4096].iter().all(|&x| x == 0xA5),
        "written through to the file"
    );
    let allocated_before = std::fs::metadata(&path).unwrap().blocks();
    let name = b.name().to_string();
    on_reactor(move || async move {
        let ch = open(&name, true, None).unwrap().io_channel().unwrap();
        ch.unmap(0, 256).await.unwrap();
        let back = ch.read(0, 256).await.unwrap();
        assert!(
            back.as_slice().iter().all(|&x| x == 0),
            "a punched hole reads zeros"
        );
        ch.flush().await.unwrap();
    });
    let allocated_after = std::fs::metadata(&path).unwrap().blocks();
    assert!(
        allocated_after + 1024 <= allocated_before,
        "punch-hole released space: {allocated_before} -> {allocated_after} sectors"
    );
    crate::unregister(b.name()).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_files_and_sizes_are_clear_errors() {
    let dir = scratch_dir();
    let missing = create(UringOptions {
        name: unique("uring"),
        filename: dir.join("missing"),
        block_size: None,
        uuid: None,
    });
    assert!(matches!(missing, Err(BdevError::Io(..))), "{missing:?}");
    let (_d, odd) = file_of(1000);
    assert!(matches!(
        create(UringOptions {
            name: unique("u"),
            filename: odd,
            block_size: None,
            uuid: None
        }),
        Err(BdevError::Invalid(_))
    ));
    let (_d, ok) = file_of(8192);
    for bs in [100, 3000, 256] {
        let r = create(UringOptions {
            name: unique("u"),
            filename: ok.clone(),
            block_size: Some(bs),
            uuid: None,
        });
        assert!(matches!(r, Err(BdevError::Invalid(_))), "block size {bs}");
    }
    let r = create(UringOptions {
        name: unique("u"),
        filename: dir.clone(),
        block_size: None,
        uuid: None,
    });
    assert!(r.is_err(), "a directory is refused");
}

#[test]
fn rescan_picks_up_a_grown_file() {
    let (_dir, path) = file_of(1 << 20);
    let b = make(&path, Some(4096));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    rescan(&b).unwrap();
    assert_eq!(b.num_blocks(), 512);
}

#[test]
fn many_in_flight_beyond_the_ring_all_complete() {
    let (_dir, path) = file_of(16 << 20);
    let b = make(&path, Some(4096));
    let name = b.name().to_string();
    let ok = on_reactor(move || async move {
        let ch = open(&name, true, None).unwrap().io_channel().unwrap();
        // Far more than the ring and CQ hold: NOMEM retries must carry them.
        let done = std::rc::Rc::new(std::cell::Cell::new(0u32));
        let failed = std::rc::Rc::new(std::cell::Cell::new(0u32));
        let (d, f) = (done.clone(), failed.clone());
        let cb: std::rc::Rc<dyn crate::IoDone> = std::rc::Rc::new(move |io: crate::IoBox, _| {
            if io.status() != IoStatus::Success {
                f.set(f.get() + 1);
            }
            d.set(d.get() + 1);
        });
        for i in 0..4096u64 {
            let mut io = crate::IoBox::new();
            io.prep(crate::IoType::Write, i, 1)
                .set_buf(IoBuf::from_slice(&[i as u8; 4096]));
            ch.submit(io, cb.clone(), 0);
        }
        while done.get() < 4096 {
            reactor::yield_now().await;
        }
        for i in [0u64, 1000, 4095] {
            assert_eq!(ch.read(i, 1).await.unwrap().as_slice()[0], i as u8);
        }
        failed.get()
    });
    assert_eq!(ok, 0);
}

#[test]
fn data_integrity_on_a_busy_reactor() {
    // Busy reactors set the ring up differently (deferred, cooperative task
    // running; completions run only when we enter the kernel): check it.
    let (_dir, path) = file_of(1 << 20);
    let b = make(&path, Some(4096));
    let name = b.name().to_string();
    let opts = reactor::ReactorOptions {
        mode: reactor::PollMode::Busy,
        no_pin: false,
    };
    let set = reactor::ReactorSet::start(&[0], opts).unwrap();
    set.block_on(0, move || async move {
        let ch = open(&name, true, None).unwrap().io_channel().unwrap();
        check_integrity(&ch, 13, 200, true).await;
        ch.flush().await.unwrap();
    })
    .unwrap();
}

/// A file of `len` bytes in /dev/shm (tmpfs), removed on drop; None where
/// /dev/shm is not tmpfs.
struct ShmFile(std::path::PathBuf);

impl ShmFile {
    fn new(len: u64) -> Option<ShmFile> {
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        let dir = std::path::Path::new("/dev/shm");
        let c = std::ffi::CString::new("/dev/shm").unwrap();
        // SAFETY: all-zero is a valid statfs; statfs writes one into it.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a live local.
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } < 0 || st.f_type as i64 != TMPFS_MAGIC {
            eprintln!("/dev/shm is not tmpfs here: skipped");
            return None;
        }
        let path = dir.join(format!("{}.img", unique("ferrothin-uring-")));
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
        Some(ShmFile(path))
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Fills blocks `0..n` of 4 KiB with a byte per block, zeroes `zero`
/// (blocks), and checks the zeroed blocks read zeros and the others kept
/// their bytes, through the bdev and in the file.
fn fill(blk: u64) -> u8 {
    (blk % 251) as u8 + 1
}

fn zeroes_read_back(b: &Arc<Bdev>, path: &std::path::Path, n: u64, zero: (u64, u64)) {
    let name = b.name().to_string();
    on_reactor(move || async move {
        let ch = open(&name, true, None).unwrap().io_channel().unwrap();
        for blk in 0..n {
            ch.write(blk, IoBuf::from_slice(&[fill(blk); 4096]))
                .await
                .unwrap();
        }
        ch.write_zeroes(zero.0, zero.1).await.unwrap();
        let back = ch.read(0, n).await.unwrap();
        for blk in 0..n {
            let want = if (zero.0..zero.0 + zero.1).contains(&blk) {
                0
            } else {
                fill(blk)
            };
            let got = &back.as_slice()[blk as usize * 4096..(blk as usize + 1) * 4096];
            assert!(got.iter().all(|&x| x == want), "block {blk}: want {want}");
        }
        ch.flush().await.unwrap();
    });
    let data = std::fs::read(path).unwrap();
    for blk in 0..n {
        let zeroed = (zero.0..zero.0 + zero.1).contains(&blk);
        let got = &data[blk as usize * 4096..(blk as usize + 1) * 4096];
        assert!(
            got.iter().all(|&x| x == if zeroed { 0 } else { fill(blk) }),
            "file block {blk}"
        );
    }
}

fn driver_specific(b: &Bdev) -> serde_json::Value {
    crate::info::describe(b)["driver_specific"]["uring"].clone()
}

/// tmpfs refuses FALLOC_FL_ZERO_RANGE; the bdev finds that out at open
/// and zeroes by punching holes (issue 19: every partial write to a new
/// thin block failed with EIO).
#[test]
fn write_zeroes_on_tmpfs_punches_holes() {
    let Some(f) = ShmFile::new(1 << 20) else {
        return;
    };
    let b = make(&f.0, Some(4096));
    let ds = driver_specific(&b);
    assert_eq!(ds["zeroing"], "punch_hole", "{ds}");
    assert_eq!(ds["unmap"], true, "{ds}");
    zeroes_read_back(&b, &f.0, 32, (5, 7));
    // A zeroed range at the very end of the file keeps the file's size.
    zeroes_read_back(&b, &f.0, 256, (250, 6));
    assert_eq!(std::fs::metadata(&f.0).unwrap().len(), 1 << 20);
    crate::unregister(b.name()).unwrap();
}

/// Where neither fallocate mode works, WRITE_ZEROES writes zeros, in
/// pieces when the range is longer than one; UNMAP is not offered.
#[test]
fn write_zeroes_by_writes_crosses_pieces() {
    let (dir, path) = file_of(8 << 20);
    let b = create_with(
        UringOptions {
            name: unique("uring"),
            filename: path.clone(),
            block_size: Some(4096),
            uuid: None,
        },
        Some(Zeroing::Write),
    )
    .unwrap();
    assert_eq!(driver_specific(&b)["zeroing"], "write");
    // 3.5 MiB of zeros from block 3: four pieces, the last one short.
    zeroes_read_back(&b, &path, 1024, (3, 896));
    crate::unregister(b.name()).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// On a filesystem with every fallocate mode (the scratch directory's),
/// the probe picks ZERO_RANGE and leaves the file's bytes and size alone.
#[test]
fn the_zeroing_probe_changes_nothing_in_the_file() {
    let (dir, path) = file_of(1 << 20);
    std::fs::write(&path, vec![0x5A; 1 << 20]).unwrap();
    let b = make(&path, Some(4096));
    let ds = driver_specific(&b);
    assert!(
        ["zero_range", "punch_hole", "write"].contains(&ds["zeroing"].as_str().unwrap()),
        "{ds}"
    );
    crate::unregister(b.name()).unwrap();
    let data = std::fs::read(&path).unwrap();
    assert_eq!(data.len(), 1 << 20);
    assert!(data.iter().all(|&x| x == 0x5A));
    std::fs::remove_dir_all(dir).unwrap();
}

fn try_flock(path: &std::path::Path) -> (std::fs::File, bool) {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new().read(true).open(path).unwrap();
    // SAFETY: flock on a descriptor we own.
    let ok = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    (f, ok)
}

/// One file, one bdev (issue 18 defect 4): a second bdev on the same file,
/// by any name, is refused naming the first; another holder of the lock
/// (a process) is refused too; the lock lasts until the bdev is deleted.
#[test]
fn a_file_belongs_to_one_bdev() {
    let (dir, path) = file_of(1 << 20);
    let a = make(&path, None);
    let second = |p: &std::path::Path| {
        create(UringOptions {
            name: unique("u"),
            filename: p.to_path_buf(),
            block_size: None,
            uuid: None,
        })
    };
    let link = dir.join("link.img");
    std::fs::hard_link(&path, &link).unwrap();
    let sym = dir.join("sym.img");
    std::os::unix::fs::symlink(&path, &sym).unwrap();
    for p in [&path, &link, &sym] {
        match second(p) {
            Err(e @ BdevError::Busy(..)) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("is in use by bdev {}", a.name())),
                    "{msg}"
                );
                assert!(msg.contains(&p.display().to_string()), "{msg}");
                assert_eq!(e.errno(), libc::EBUSY);
            }
            r => panic!("second bdev on {}: {r:?}", p.display()),
        }
    }
    // Over JSON-RPC: SPDK's -EBUSY, the message as it is.
    let r = crate::rpc::RpcRegistry::with_modules()
        .call_now(
            "bdev_uring_create",
            Some(serde_json::json!({"name": unique("u"), "filename": path})),
        )
        .unwrap_err();
    assert_eq!(r.code, -libc::EBUSY, "{r:?}");
    assert!(r.message.contains("is in use by bdev"), "{r:?}");
    // A duplicate name stays -EEXIST.
    let r = crate::rpc::RpcRegistry::with_modules()
        .call_now(
            "bdev_aio_create",
            Some(serde_json::json!({"name": a.name(), "filename": dir.join("other")})),
        )
        .unwrap_err();
    assert_eq!(r.code, -libc::EEXIST, "{r:?}");

    // The flock is what another process meets.
    let (f, locked) = try_flock(&path);
    assert!(!locked, "the bdev holds an exclusive flock");
    drop(f);
    crate::unregister(a.name()).unwrap();
    let (f, locked) = try_flock(&path);
    assert!(locked, "deleting the bdev released its lock");
    let r = second(&path);
    match r {
        Err(e @ BdevError::Busy(..)) => assert!(
            e.to_string().contains("in use by another bdev or process"),
            "{e}"
        ),
        r => panic!("a file locked elsewhere: {r:?}"),
    }
    drop(f);
    let b = second(&sym).unwrap();
    crate::unregister(b.name()).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// A loop device as the block device (skipped where loop devices cannot
/// be attached): opened O_EXCL, so a second bdev or another exclusive
/// opener is refused, and one held elsewhere is refused to us.
#[test]
fn a_block_device_is_opened_exclusively() {
    use std::os::unix::fs::OpenOptionsExt;
    let (dir, path) = file_of(4 << 20);
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&path)
        .output();
    let dev = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        r => {
            eprintln!("no loop device here ({r:?}): skipped");
            return;
        }
    };
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }
    let _detach = Detach(dev.clone());
    let excl = || {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&dev)
    };
    let mk = || {
        create(UringOptions {
            name: unique("u"),
            filename: dev.clone().into(),
            block_size: None,
            uuid: None,
        })
    };
    // Held elsewhere: refused, "in use".
    let other = excl().unwrap();
    match mk() {
        Err(e @ BdevError::Busy(..)) => {
            assert!(e.to_string().contains(&format!("{dev} is in use")), "{e}")
        }
        r => panic!("a device held exclusively elsewhere: {r:?}"),
    }
    drop(other);
    let a = mk().unwrap();
    assert_eq!(driver_specific(&a)["zeroing"], "blkzeroout");
    assert_eq!(
        excl().map_err(|e| e.raw_os_error()).unwrap_err(),
        Some(libc::EBUSY),
        "the bdev holds the device exclusively"
    );
    match mk() {
        Err(e @ BdevError::Busy(..)) => assert!(
            e.to_string()
                .contains(&format!("in use by bdev {}", a.name())),
            "{e}"
        ),
        r => panic!("a second bdev on the device: {r:?}"),
    }
    let name = a.name().to_string();
    on_reactor(move || async move {
        let ch = open(&name, true, None).unwrap().io_channel().unwrap();
        ch.write(8, IoBuf::from_slice(&[7; 4096])).await.unwrap();
        ch.write_zeroes(9, 2).await.unwrap();
        let back = ch.read(8, 8).await.unwrap();
        let b = back.as_slice();
        assert!(b[..512].iter().all(|&x| x == 7));
        assert!(b[512..1536].iter().all(|&x| x == 0));
        assert!(b[1536..].iter().all(|&x| x == 7));
        ch.flush().await.unwrap();
    });
    crate::unregister(a.name()).unwrap();
    drop(a);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A lock that goes away within a second (a daemon killed just before:
/// the kernel closes its io_uring rings, and so its files, a little after
/// the process is gone) is waited for.
#[test]
fn a_lock_released_soon_after_is_waited_for() {
    let (dir, path) = file_of(1 << 20);
    let (f, locked) = try_flock(&path);
    assert!(locked);
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(f);
    });
    let b = make(&path, None);
    releaser.join().unwrap();
    crate::unregister(b.name()).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}
