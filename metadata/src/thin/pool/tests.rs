use super::*;
use crate::io::MemIo;

fn pool(nr_data: u64) -> Pool {
    Pool::format(Box::new(MemIo::new(1024)), 128, nr_data).unwrap()
}

fn commit(p: &mut Pool) {
    p.commit(&mut || Ok(())).unwrap();
}

fn reopen(p: Pool) -> Pool {
    // Reopen from what is on the device (the committed state).
    Pool::open(p.tm.into_io()).unwrap()
}

#[test]
fn create_map_commit_reopen() {
    let mut p = pool(1000);
    p.create_thin(1).unwrap();
    for v in 0..600u64 {
        let d = p.alloc_data_block().unwrap();
        p.insert(1, v * 3, d).unwrap();
    }
    commit(&mut p);
    let mut p = reopen(p);
    assert_eq!(p.details(1).unwrap().mapped_blocks, 600);
    assert_eq!(p.lookup(1, 3).unwrap().map(|l| l.block), Some(1));
    assert_eq!(p.lookup(1, 4).unwrap(), None);
    assert_eq!(p.nr_free_data_blocks(), 400);
    assert_eq!(p.mappings(1).unwrap().len(), 600);
}

#[test]
fn the_spec_snapshot_example_counts() {
    // Device 1 maps v0..2 -> d0..2 and v10 -> d100 in one leaf.
    let mut p = pool(1000);
    p.create_thin(1).unwrap();
    for (v, d) in [(0, 0), (1, 1), (2, 2), (10, 100)] {
        p.tm.data.set(d, 1);
        p.insert(1, v, d).unwrap();
    }
    commit(&mut p);
    let leaf = p.root_of(1).unwrap();
    p.create_snap(2, 1).unwrap();
    assert_eq!(p.tm.meta_count(leaf), 2, "the snapshot shares the leaf");
    assert_eq!(
        p.tm.data_count(0),
        1,
        "data counts do not change at snapshot time"
    );
    assert_eq!(p.time(), 1);
    // Device 1 writes v0 to a new block: its leaf is copied, every value in
    // the copy takes a reference, and the overwritten d0 gives one back.
    let d3 = p.alloc_data_block().unwrap();
    p.insert(1, 0, d3).unwrap();
    let counts: Vec<u32> = [0, 1, 2, d3, 100]
        .iter()
        .map(|&b| p.tm.data_count(b))
        .collect();
    assert_eq!(counts, vec![1, 2, 2, 1, 2]);
    assert_eq!(p.tm.meta_count(leaf), 1);
    assert_eq!(p.root_of(2).unwrap(), leaf);
    let l = p.lookup(2, 1).unwrap().unwrap();
    assert!(l.maybe_shared, "time 0 < snapshotted time 1");
    assert!(
        !p.lookup(1, 0).unwrap().unwrap().maybe_shared,
        "a mapping made after the snapshot is private"
    );
    commit(&mut p);
    let mut p = reopen(p);
    assert_eq!(p.details(2).unwrap().mapped_blocks, 4);
    assert_eq!(p.details(1).unwrap().snapshotted_time, 1);
    // Deleting the snapshot frees its tree and its data references.
    p.delete(2).unwrap();
    assert_eq!((p.tm.data_count(1), p.tm.data_count(0)), (1, 0));
    commit(&mut p);
}

#[test]
fn abort_returns_to_the_last_commit() {
    let mut p = pool(100);
    p.create_thin(7).unwrap();
    commit(&mut p);
    let d = p.alloc_data_block().unwrap();
    p.insert(7, 5, d).unwrap();
    p.create_thin(8).unwrap();
    p.set_transaction_id(0, 9).unwrap();
    let mut p = p.abort().unwrap();
    assert_eq!(p.devices(), vec![7]);
    assert_eq!(p.lookup(7, 5).unwrap(), None);
    assert_eq!(p.transaction_id(), 0);
    assert_eq!(p.nr_free_data_blocks(), 100);
}

#[test]
fn transaction_id_is_compare_and_swap_and_bad_calls_are_errors() {
    let mut p = pool(10);
    assert!(p.set_transaction_id(5, 6).is_err());
    p.set_transaction_id(0, 6).unwrap();
    assert_eq!(p.transaction_id(), 6);
    p.create_thin(1).unwrap();
    assert!(p.create_thin(1).is_err(), "duplicate id");
    assert!(p.create_thin(1 << 24).is_err(), "not a 24-bit id");
    assert!(p.create_snap(2, 99).is_err(), "no origin");
    assert!(p.insert(3, 0, 0).is_err(), "no device");
    assert!(p.insert(1, 0, 10).is_err(), "past the data device");
    assert!(p.delete(3).is_err());
    for _ in 0..10 {
        assert!(p.alloc_data_block().is_some());
    }
    assert_eq!(p.alloc_data_block(), None, "full");
    p.grow_data(20).unwrap();
    assert!(p.alloc_data_block().is_some());
    assert!(p.grow_data(5).is_err(), "no shrinking");
    p.set_needs_check(true);
    commit(&mut p);
    let p = reopen(p);
    assert!(p.needs_check());
    assert_eq!(p.nr_data_blocks(), 20);
}

#[test]
fn freed_blocks_are_not_reused_before_commit() {
    let mut p = pool(4);
    p.create_thin(1).unwrap();
    let a = p.alloc_data_block().unwrap();
    p.insert(1, 0, a).unwrap();
    commit(&mut p);
    assert_eq!(p.remove(1, 0).unwrap(), Some(a));
    assert_eq!(p.data_block_count(a), 0);
    let got: Vec<u64> = std::iter::from_fn(|| p.alloc_data_block()).collect();
    assert!(
        !got.contains(&a),
        "freed block {a} handed out again in the same transaction: {got:?}"
    );
    assert_eq!(got.len(), 3);
}

#[test]
fn a_metadata_snapshot_freezes_the_trees_until_released() {
    use crate::thin::check::check;
    use crate::thin::read::read_image;
    let disk = crate::io::SimDisk::new(2048);
    let mut p = Pool::format(Box::new(disk.clone()), 128, 5000).unwrap();
    p.create_thin(1).unwrap();
    p.create_thin(2).unwrap();
    for v in 0..900 {
        let d = p.alloc_data_block().unwrap();
        p.insert(1 + (v % 2) as u32, v, d).unwrap();
    }
    let at = p.reserve_metadata_snap(&mut || Ok(())).unwrap();
    assert!(
        p.reserve_metadata_snap(&mut || Ok(())).is_err(),
        "only one at a time"
    );
    let frozen = read_image(&disk, false).unwrap();
    // Change the live pool a lot: overwrite, remove, delete, snapshot.
    for v in 0..300 {
        let d = p.alloc_data_block().unwrap();
        p.insert(1 + (v % 2) as u32, v, d).unwrap();
    }
    p.remove_range(1, 500, 900).unwrap();
    p.delete(2).unwrap();
    p.create_snap(3, 1).unwrap();
    p.commit(&mut || Ok(())).unwrap();
    let mut snap = read_image(&disk, true).unwrap();
    assert_eq!(
        snap.nr_data_blocks, 0,
        "a snapshot dump shows no data space map"
    );
    snap.nr_data_blocks = frozen.nr_data_blocks;
    assert_eq!(
        snap.devices, frozen.devices,
        "the snapshot still shows the pool at reserve time"
    );
    assert_eq!(p.metadata_snap(), Some(at));
    let r = check(&disk, &Default::default());
    assert!(
        r.passed() && r.non_fatal.is_empty(),
        "{:?} {:?}",
        r.fatal,
        r.non_fatal
    );
    p.release_metadata_snap(&mut || Ok(())).unwrap();
    assert!(p.release_metadata_snap(&mut || Ok(())).is_err());
    let r = check(&disk, &Default::default());
    assert!(
        r.passed() && r.non_fatal.is_empty(),
        "after release: {:?} {:?}",
        r.fatal,
        r.non_fatal
    );
    assert!(read_image(&disk, true).is_err(), "no snapshot any more");
    // Everything only the snapshot used is free again.
    let live = read_image(&disk, false).unwrap();
    let used: u64 = live.devices.values().map(|d| d.mappings.len() as u64).sum();
    assert!(
        p.nr_free_data_blocks() >= 5000 - used - 300,
        "data blocks only the snapshot held were freed"
    );
}

#[test]
fn metadata_grows_past_a_bitmap_boundary() {
    use crate::thin::check::check;
    let disk = crate::io::SimDisk::new(40_000);
    let mut p = Pool::format_sized(Box::new(disk.clone()), 128, 2_000_000, 600).unwrap();
    p.create_thin(1).unwrap();
    let mut v = 0u64;
    // Fill until the metadata runs out.
    let err = loop {
        let d = p.alloc_data_block().unwrap();
        match p.insert(1, v * 2, d).and_then(|_| {
            if v % 5000 == 4999 {
                p.commit(&mut || Ok(()))
            } else {
                Ok(())
            }
        }) {
            Ok(()) => v += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, MetadataError::NoSpace(600)), "{err}");
    let mut p = p.abort().unwrap();
    let committed = p.details(1).unwrap().mapped_blocks;
    assert!(p.grow_metadata(500).is_err(), "no shrinking");
    assert!(p.grow_metadata(50_000).is_err(), "past the device");
    p.grow_metadata(33_000).unwrap();
    assert_eq!(p.nr_metadata_blocks(), 33_000);
    for w in committed..committed + 120_000 {
        let d = p.alloc_data_block().unwrap();
        p.insert(1, w * 2, d).unwrap();
        if w % 20_000 == 0 {
            p.commit(&mut || Ok(())).unwrap();
        }
    }
    p.commit(&mut || Ok(())).unwrap();
    let image = crate::io::MemIo::from_blocks(disk.power_cut(0));
    let r = check(&image, &Default::default());
    assert!(
        r.passed() && r.non_fatal.is_empty(),
        "{:?} {:?}",
        r.fatal,
        r.non_fatal
    );
    // Growth added two bitmaps: both written and listed in the index.
    let sb = crate::thin::read::read_superblock(&image).unwrap();
    let at = sb.metadata_sm_root.bitmap_root;
    let index = crate::pdata::space_map::unpack_index(&image.read(at).unwrap(), at, 3).unwrap();
    assert!(index.iter().all(|e| e.blocknr != 0), "{index:?}");
    let q = Pool::open(Box::new(image)).unwrap();
    assert_eq!(q.nr_metadata_blocks(), 33_000);
    assert_eq!(q.details(1).unwrap().mapped_blocks, committed + 120_000);
}
