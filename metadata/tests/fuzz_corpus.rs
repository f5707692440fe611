//! The fuzz target's seed corpus (valid images made here from seeded
//! pools, the same ones `bench/fuzz.sh` gives cargo-fuzz) through the same
//! function the target runs, then seeded mutations of them: no reader may
//! panic. A failure prints its (corpus image, iteration) and replays.

use metadata::fuzz::{exercise, mutate};
use metadata::io::MemIo;
use metadata::thin::pool::Pool;

fn corpus() -> Vec<MemIo> {
    metadata::fuzz::seed_corpus()
}

#[test]
fn no_reader_panics_on_damaged_images() {
    let iterations: u64 = std::env::var("FERROTHIN_FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let corpus = corpus();
    for (i, image) in corpus.iter().enumerate() {
        assert!(
            exercise(image).is_none(),
            "a valid image made a reader panic"
        );
        for it in 0..iterations {
            let bad = mutate(image, i as u64, it);
            if let Some(what) = exercise(&bad) {
                panic!("corpus image {i}, iteration {it}: {what}");
            }
        }
    }
}

/// Found by the fuzzer: a superblock claiming 2^62 data blocks made the
/// open size a space map by it and abort on allocation.
#[test]
fn an_absurd_data_block_count_is_an_error_not_an_abort() {
    use metadata::io::BlockIo;
    use metadata::pdata::superblock::Superblock;
    let image = corpus().remove(1);
    let mut sb = Superblock::unpack(&image.read(0).unwrap(), 0).unwrap();
    sb.data_sm_root.nr_blocks = 1 << 62;
    let mut bad = image.clone();
    bad.block_mut(0).unwrap().copy_from_slice(&sb.pack()[..]);
    assert!(Pool::open(Box::new(bad.clone())).is_err());
    assert!(!metadata::thin::check::check(&bad, &Default::default()).passed());
    let m = metadata::thin::PoolModel {
        data_block_size: 128,
        nr_data_blocks: 1 << 62,
        ..Default::default()
    };
    let mut out = MemIo::new(64);
    assert!(metadata::thin::write::write_image(&mut out, &m).is_err());
}
