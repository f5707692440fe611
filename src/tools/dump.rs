//! `ferrothin dump`: thin_dump, as XML (the flat form both tool versions
//! read) or human-readable text.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use metadata::thin::xml::{runs, write_xml};
use metadata::thin::PoolModel;

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
    /// while a live pool holds the device).
    #[arg(short = 'm', long = "metadata-snap")]
    pub metadata_snap: bool,
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
    let m = super::read_pool(super::input(&a.device)?, a.metadata_snap)?;
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
