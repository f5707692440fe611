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
