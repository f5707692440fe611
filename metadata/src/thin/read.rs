//! Reads a pool's metadata back into a [`PoolModel`], checking structure
//! on the way (node validity, key ranges, depths, loops, and that the
//! details and mapping trees list the same devices).

use crate::io::BlockIo;
use crate::pdata::btree_walk::read_tree;
use crate::pdata::superblock::Superblock;
use crate::pdata::values::{BlockTime, DeviceDetails};
use crate::thin::model::{Device, PoolModel};
use crate::MetadataError;

/// The live superblock.
pub fn read_superblock(io: &dyn BlockIo) -> Result<Superblock, MetadataError> {
    Superblock::unpack(&*io.read(0)?, 0)
}

/// The pool as the live superblock describes it, or as the metadata
/// snapshot does (`snapshot`), whose data block count reads as 0.
pub fn read_image(io: &dyn BlockIo, snapshot: bool) -> Result<PoolModel, MetadataError> {
    let live = read_superblock(io)?;
    if !snapshot {
        return read_image_of(io, &live);
    }
    if live.held_root == 0 {
        return Err(MetadataError::Invalid(
            "the pool has no metadata snapshot".into(),
        ));
    }
    read_snapshot_at(io, live.held_root)
}

/// The metadata snapshot whose superblock copy is at block `at` (thin_dump
/// -m with a block number: a snapshot the live superblock no longer
/// records, or one read from a damaged pool).
pub fn read_snapshot_at(io: &dyn BlockIo, at: u64) -> Result<PoolModel, MetadataError> {
    read_image_of(io, &Superblock::unpack(&*io.read(at)?, at)?)
}

/// The pool as the superblock `sb` (live or a snapshot's copy) describes it.
pub fn read_image_of(io: &dyn BlockIo, sb: &Superblock) -> Result<PoolModel, MetadataError> {
    let details = read_tree(
        io,
        sb.device_details_root,
        DeviceDetails::SIZE,
        &mut |_, _| {},
    )?;
    let top = read_tree(io, sb.data_mapping_root, 8, &mut |_, _| {})?;
    let ids = |v: &[(u64, Vec<u8>)]| v.iter().map(|(k, _)| *k).collect::<Vec<_>>();
    if ids(&details) != ids(&top) {
        return Err(MetadataError::Corrupt {
            block: sb.device_details_root,
            what: "the details tree and the mapping tree list different devices".into(),
        });
    }
    let mut m = PoolModel {
        flags: sb.flags,
        time: sb.time,
        trans_id: sb.trans_id,
        data_block_size: sb.data_block_size,
        nr_data_blocks: sb.data_sm_root.nr_blocks,
        devices: Default::default(),
    };
    for ((id, dv), (_, root)) in details.iter().zip(&top) {
        let root = u64::from_le_bytes(root[..8].try_into().unwrap_or([0; 8]));
        let mappings = read_tree(io, root, 8, &mut |_, _| {})?
            .into_iter()
            .map(|(v, raw)| {
                (
                    v,
                    BlockTime::unpack(u64::from_le_bytes(raw[..8].try_into().unwrap_or([0; 8]))),
                )
            })
            .collect();
        m.devices.insert(
            *id,
            Device {
                details: DeviceDetails::unpack(dv),
                mappings,
            },
        );
    }
    Ok(m)
}
