//! Writes a whole pool bottom-up into an empty metadata device, as
//! thin_restore does: every tree built packed, every count computed from
//! what was written, then the superblock last (write, flush, superblock,
//! flush).

use crate::io::BlockIo;
use crate::pdata::btree_builder::build;
use crate::pdata::space_map::{nr_bitmaps, pack_bitmap, pack_index, Counts, MAX_METADATA_BLOCKS};
use crate::pdata::superblock::{Superblock, MAGIC, METADATA_BLOCK_SECTORS, VERSION};
use crate::pdata::values::{IndexEntry, SmRoot};
use crate::thin::model::PoolModel;
use crate::{Block, MetadataError};

/// Writes `m` as the only contents of `io`.
pub fn write_image(io: &mut dyn BlockIo, m: &PoolModel) -> Result<(), MetadataError> {
    let n = io.nr_blocks();
    write_image_sized(io, m, n)
}

/// As `write_image`, using only the first `nr_metadata_blocks` blocks of
/// the device (the rest can be added later by growing the metadata).
pub fn write_image_sized(
    io: &mut dyn BlockIo,
    m: &PoolModel,
    nr_metadata_blocks: u64,
) -> Result<(), MetadataError> {
    m.validate()?;
    let nr_meta = io
        .nr_blocks()
        .min(nr_metadata_blocks)
        .min(MAX_METADATA_BLOCKS);
    let mut next = 1u64;
    let mut alloc = || {
        if next >= nr_meta {
            return Err(MetadataError::NoSpace(nr_meta));
        }
        next += 1;
        Ok(next - 1)
    };
    let mut out: Vec<(u64, Box<Block>)> = Vec::new();

    // Metadata space map: one index block and the bitmaps; its contents
    // are filled in last, when every count is known.
    let meta_index = alloc()?;
    let meta_bitmaps: Vec<u64> = (0..nr_bitmaps(nr_meta))
        .map(|_| alloc())
        .collect::<Result<_, _>>()?;

    // Data space map: each data block counts the mapping slots that name it
    // (every device has its own leaves here, so that is one per device).
    if nr_bitmaps(m.nr_data_blocks) >= nr_meta {
        return Err(MetadataError::NoSpace(nr_meta));
    }
    let mut data = Counts::try_new(m.nr_data_blocks)?;
    for d in m.devices.values() {
        for bt in d.mappings.values() {
            data.inc(bt.block);
        }
    }
    let mut data_index = Vec::new();
    for j in 0..nr_bitmaps(m.nr_data_blocks) {
        let b = alloc()?;
        out.push((b, pack_bitmap(&data.bitmap_entries(j), b)));
        let (nr_free, none_free_before) = data.index_hints(j);
        let mut v = vec![0u8; IndexEntry::SIZE];
        IndexEntry {
            blocknr: b,
            nr_free,
            none_free_before,
        }
        .pack(&mut v);
        data_index.push((j, v));
    }
    let (data_index_root, nodes) = build(&data_index, IndexEntry::SIZE, &mut alloc)?;
    out.extend(nodes);
    let overflow: Vec<(u64, Vec<u8>)> = data
        .overflow()
        .map(|(b, c)| (b, c.to_le_bytes().to_vec()))
        .collect();
    let (data_overflow_root, nodes) = build(&overflow, 4, &mut alloc)?;
    out.extend(nodes);
    // Every metadata block written here has count 1: nothing is shared, so
    // the metadata overflow tree is empty.
    let (meta_overflow_root, nodes) = build(&[], 4, &mut alloc)?;
    out.extend(nodes);

    // The thin trees.
    let details: Vec<(u64, Vec<u8>)> = m
        .devices
        .iter()
        .map(|(id, d)| {
            let mut v = vec![0u8; 24];
            d.details.pack(&mut v);
            (*id, v)
        })
        .collect();
    let (details_root, nodes) = build(&details, 24, &mut alloc)?;
    out.extend(nodes);
    let mut top = Vec::new();
    for (id, d) in &m.devices {
        let entries: Vec<(u64, Vec<u8>)> = d
            .mappings
            .iter()
            .map(|(v, bt)| {
                Ok((
                    *v,
                    bt.pack()
                        .ok_or_else(|| MetadataError::Invalid(format!("bad mapping {bt:?}")))?
                        .to_le_bytes()
                        .to_vec(),
                ))
            })
            .collect::<Result<_, MetadataError>>()?;
        let (root, nodes) = build(&entries, 8, &mut alloc)?;
        out.extend(nodes);
        top.push((*id, root.to_le_bytes().to_vec()));
    }
    let (mapping_root, nodes) = build(&top, 8, &mut alloc)?;
    out.extend(nodes);

    // Now the metadata counts: the superblock and every block handed out.
    let used = next;
    let mut meta = Counts::try_new(nr_meta)?;
    for b in 0..used {
        meta.set(b, 1);
    }
    let mut index = Vec::new();
    for (j, &b) in meta_bitmaps.iter().enumerate() {
        out.push((b, pack_bitmap(&meta.bitmap_entries(j as u64), b)));
        let (nr_free, none_free_before) = meta.index_hints(j as u64);
        index.push(IndexEntry {
            blocknr: b,
            nr_free,
            none_free_before,
        });
    }
    out.push((meta_index, pack_index(&index, meta_index)?));

    let sb = Superblock {
        flags: m.flags,
        magic: MAGIC,
        version: VERSION,
        time: m.time,
        trans_id: m.trans_id,
        data_sm_root: SmRoot {
            nr_blocks: m.nr_data_blocks,
            nr_allocated: data.nr_allocated(),
            bitmap_root: data_index_root,
            ref_count_root: data_overflow_root,
        },
        metadata_sm_root: SmRoot {
            nr_blocks: nr_meta,
            nr_allocated: meta.nr_allocated(),
            bitmap_root: meta_index,
            ref_count_root: meta_overflow_root,
        },
        data_mapping_root: mapping_root,
        device_details_root: details_root,
        data_block_size: m.data_block_size,
        metadata_block_size: METADATA_BLOCK_SECTORS,
        metadata_nr_blocks: nr_meta,
        ..Default::default()
    };
    let writes: Vec<(u64, &Block)> = out.iter().map(|(b, d)| (*b, &**d)).collect();
    io.write(&writes)?;
    io.flush()?;
    io.write(&[(0, &sb.pack())])?;
    io.flush()
}
