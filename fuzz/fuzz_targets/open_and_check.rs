//! Coverage-guided: any bytes, as a metadata image, go through open,
//! check, read and salvage; none may panic (errors are fine).
#![no_main]

use libfuzzer_sys::fuzz_target;
use metadata::io::MemIo;
use metadata::BLOCK_SIZE;

fuzz_target!(|data: &[u8]| {
    let blocks: Vec<Box<metadata::Block>> = data
        .chunks(BLOCK_SIZE)
        .map(|c| {
            let mut b = Box::new([0u8; BLOCK_SIZE]);
            b[..c.len()].copy_from_slice(c);
            b
        })
        .collect();
    if let Some(what) = metadata::fuzz::exercise(&MemIo::from_blocks(blocks)) {
        panic!("{what}");
    }
});
