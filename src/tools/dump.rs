//! `ferrothin dump`: thin_dump, as XML (the flat form both tool versions
//! read) or human-readable text.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use metadata::thin::xml::{runs, write_xml};
use metadata::thin::PoolModel;

use super::Access;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Xml,
    #[value(name = "human_readable")]
    HumanReadable,
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// The metadata device or image.
    pub device: Option<PathBuf>,
    /// Dump the metadata snapshot instead of the live metadata (this works
    /// while a live pool holds the device); `-m=BLOCK` (or
    /// `--metadata-snap=BLOCK`) reads the snapshot whose superblock copy
    /// is at BLOCK rather than the one the superblock records.
    #[arg(
        short = 'm',
        long = "metadata-snap",
        value_name = "BLOCK",
        num_args = 0..=1,
        require_equals = true
    )]
    pub metadata_snap: Option<Option<u64>>,
    /// Dump what can be read of damaged metadata (as repair salvages it)
    /// instead of refusing.
    #[arg(short, long)]
    pub repair: bool,
    /// Dump only this device.
    #[arg(long, value_name = "ID")]
    pub dev_id: Option<u64>,
    /// Leave out the mappings (devices only).
    #[arg(long)]
    pub skip_mappings: bool,
    #[arg(short, long, value_enum, default_value_t = Format::Xml)]
    pub format: Format,
    /// Write to this file instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

pub fn human_readable(m: &PoolModel) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "begin superblock: \"\", {}, {}, {}, 2, {}, {}",
        m.time, m.trans_id, m.flags, m.data_block_size, m.nr_data_blocks
    );
    for (id, d) in &m.devices {
        let dd = &d.details;
        let _ = writeln!(s, "device: {id}");
        let _ = writeln!(s, "mapped_blocks: {}", dd.mapped_blocks);
        let _ = writeln!(s, "transaction: {}", dd.transaction_id);
        let _ = writeln!(s, "creation time: {}", dd.creation_time);
        let _ = writeln!(s, "snap time: {}", dd.snapshotted_time);
        for (v, b, t, len) in runs(&d.mappings) {
            if len == 1 {
                let _ = writeln!(s, "    {v} -> {b}, {t}");
            } else {
                let _ = writeln!(
                    s,
                    "    ({v}..{}) -> ({b}..{}), {t}",
                    v + len - 1,
                    b + len - 1
                );
            }
        }
        s.push('\n');
    }
    s.push_str("end superblock\n");
    s
}

pub fn run(a: &DumpArgs) -> anyhow::Result<i32> {
    let device = super::input(&a.device)?;
    let mut m = match a.metadata_snap {
        None if a.repair => {
            let io = super::open_device(device, Access::Read)?;
            let (m, report) = metadata::thin::repair::salvage(&io)
                .with_context(|| format!("cannot read the metadata on {}", device.display()))?;
            for (b, why) in &report.lost_nodes {
                eprintln!("lost block {b}: {why}");
            }
            m
        }
        None => super::read_pool(device, false)?,
        Some(None) => super::read_pool(device, true)?,
        Some(Some(at)) => {
            let io = super::open_device(device, Access::Snapshot)?;
            metadata::thin::read::read_snapshot_at(&io, at).with_context(|| {
                format!("no metadata snapshot at block {at} of {}", device.display())
            })?
        }
    };
    if let Some(id) = a.dev_id {
        m.devices.retain(|k, _| *k == id);
    }
    if a.skip_mappings {
        for d in m.devices.values_mut() {
            d.mappings.clear();
        }
    }
    let text = match a.format {
        Format::Xml => write_xml(&m),
        Format::HumanReadable => human_readable(&m),
    };
    match &a.output {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?
        }
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(0)
}
