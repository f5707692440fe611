//! `ferrothin migrate`: thin_migrate for an offline pool. Copies one thin
//! device's mapped blocks, live or as the metadata snapshot holds them,
//! to a file or another device; unmapped ranges are not written, so in a
//! new file they stay holes. The backup workflow: take a thin snapshot,
//! reserve a metadata snapshot, and migrate the thin snapshot with `-m`
//! while the pool runs (nothing writes a snapshot no one has open).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::Access;

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The pool's metadata device (in the one-device layout, the pool).
    #[arg(long)]
    pub metadata_dev: Option<PathBuf>,
    /// The pool's data device (absent, or the same path: one device).
    #[arg(long)]
    pub data_dev: Option<PathBuf>,
    /// The thin device to copy.
    #[arg(long, value_name = "ID")]
    pub dev_id: u64,
    /// Copy the device as the metadata snapshot holds it (works while a
    /// live pool holds the devices).
    #[arg(short = 'm', long = "metadata-snap")]
    pub metadata_snap: bool,
    /// Write to this file (created; it must not exist).
    #[arg(long, conflicts_with = "dest_dev")]
    pub dest_file: Option<PathBuf>,
    /// Write into this existing file or block device (only the mapped
    /// ranges are written: give it zeroed).
    #[arg(long)]
    pub dest_dev: Option<PathBuf>,
    /// The device's size in bytes (the metadata does not record it);
    /// default: up to its last mapped block.
    #[arg(long)]
    pub size: Option<u64>,
}

pub fn run(a: &MigrateArgs) -> anyhow::Result<i32> {
    let meta_path = super::input(&a.metadata_dev)?;
    let access = if a.metadata_snap {
        Access::Snapshot
    } else {
        Access::Read
    };
    let meta = super::open_device(meta_path, access)?;
    let sb = metadata::thin::read::read_superblock(&meta)
        .with_context(|| format!("cannot read the superblock of {}", meta_path.display()))?;
    let m = metadata::thin::read::read_image(&meta, a.metadata_snap)
        .with_context(|| format!("cannot read the metadata on {}", meta_path.display()))?;
    let dev = m.devices.get(&a.dev_id).with_context(|| {
        format!(
            "{} has no thin device {} (devices: {:?})",
            meta_path.display(),
            a.dev_id,
            m.devices.keys().collect::<Vec<_>>()
        )
    })?;
    let block = u64::from(m.data_block_size) * 512;
    let needed = dev
        .mappings
        .keys()
        .next_back()
        .map_or(0, |v| (v + 1) * block);
    let size = a.size.unwrap_or(needed);
    anyhow::ensure!(
        size >= needed,
        "--size {size} is less than the {needed} bytes thin device {} maps",
        a.dev_id
    );

    let (data_path, offset) = super::data_area(meta_path, a.data_dev.as_deref(), &sb);
    // The data device is read as the metadata is held: shared with other
    // readers, refused while a pool holds it (except for -m, as above).
    let data_io = if super::same_file(data_path, meta_path) {
        None
    } else {
        Some(super::open_device(data_path, access)?)
    };
    let data = match &data_io {
        Some(io) => io.file().try_clone()?,
        None => meta.file().try_clone()?,
    };

    let dest = match (&a.dest_file, &a.dest_dev) {
        (Some(p), _) => {
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p)
                .with_context(|| format!("cannot create {}", p.display()))?;
            f.set_len(size)?;
            (f, p)
        }
        (None, Some(p)) => {
            let f = OpenOptions::new()
                .write(true)
                .open(p)
                .with_context(|| format!("cannot open {}", p.display()))?;
            let is_bdev = f.metadata()?.file_type().is_block_device();
            let have = super::trim::device_bytes(&f, is_bdev)?;
            anyhow::ensure!(
                have >= size,
                "{} holds {have} bytes, less than the device's {size}",
                p.display()
            );
            (f, p)
        }
        (None, None) => return Err(super::Missing::Output.into()),
    };
    let copied = copy(&data, offset, dev, block, &dest.0)
        .with_context(|| format!("copying thin device {} to {}", a.dev_id, dest.1.display()))?;
    dest.0.sync_all()?;
    eprintln!(
        "migrated thin device {}: {copied} mapped blocks of {block} bytes into {} ({size} bytes)",
        a.dev_id,
        dest.1.display()
    );
    Ok(0)
}

/// Copies each mapped block, joining runs that are contiguous on both
/// sides into one read and one write.
fn copy(
    data: &File,
    offset: u64,
    dev: &metadata::thin::model::Device,
    block: u64,
    dest: &File,
) -> std::io::Result<u64> {
    const MAX_RUN: u64 = 64;
    let mut buf = Vec::new();
    let mut run: Option<(u64, u64, u64)> = None; // (vblock, data block, blocks)
    let mut flush = |r: (u64, u64, u64)| -> std::io::Result<()> {
        buf.resize((r.2 * block) as usize, 0);
        data.read_exact_at(&mut buf, offset + r.1 * block)?;
        dest.write_all_at(&buf, r.0 * block)
    };
    for (&v, bt) in &dev.mappings {
        run = match run {
            Some((rv, rb, n)) if rv + n == v && rb + n == bt.block && n < MAX_RUN => {
                Some((rv, rb, n + 1))
            }
            Some(r) => {
                flush(r)?;
                Some((v, bt.block, 1))
            }
            None => Some((v, bt.block, 1)),
        };
    }
    if let Some(r) = run {
        flush(r)?;
    }
    Ok(dev.mappings.len() as u64)
}
