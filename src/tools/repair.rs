//! `ferrothin repair`: thin_repair. Salvages what is readable from a
//! damaged metadata device into a fresh one (the input is not changed).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use metadata::io::BlockIo;
use metadata::thin::repair::{salvage_with, Overrides};
use metadata::thin::write::write_image;

use super::Access;

#[derive(Args, Debug)]
pub struct RepairArgs {
    /// The damaged metadata device or image (read only unless --in-place).
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Where to write the repaired metadata (must exist and be large enough).
    #[arg(short, long, conflicts_with = "in_place")]
    pub output: Option<PathBuf>,
    /// Repair a one-device pool file in place: its metadata region is
    /// copied to INPUT.metadata-backup, then rewritten.
    #[arg(long)]
    pub in_place: bool,
    #[arg(short, long)]
    pub quiet: bool,
    /// The pool's transaction id, replacing the superblock's (needed only
    /// when the superblock is lost and a volume manager tracks it).
    #[arg(long, value_name = "N")]
    pub transaction_id: Option<u64>,
    /// The data block size in 512-byte sectors, replacing the
    /// superblock's; required when the superblock is lost.
    #[arg(long, value_name = "SECTORS")]
    pub data_block_size: Option<u32>,
    /// The data device's size in data blocks, replacing the superblock's.
    #[arg(long, value_name = "N")]
    pub nr_data_blocks: Option<u64>,
    /// With --in-place and a lost superblock: how many blocks at the
    /// front of the file are metadata (the pool was created with it; see
    /// `ferrothin metadata-size`).
    #[arg(long, value_name = "N", requires = "in_place")]
    pub metadata_blocks: Option<u64>,
}

impl RepairArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            transaction_id: self.transaction_id,
            data_block_size: self.data_block_size,
            nr_data_blocks: self.nr_data_blocks,
        }
    }
}

pub fn run(a: &RepairArgs) -> anyhow::Result<i32> {
    let input_path = super::input(&a.input)?;
    if !a.in_place {
        super::output(&a.output)?;
    }
    let Some(output) = &a.output else {
        let (m, report, backup) =
            super::repair_in_place::run(input_path, &a.overrides(), a.metadata_blocks)?;
        if !a.quiet {
            print_report(&m, &report, input_path);
            eprintln!(
                "the metadata as it was is in {} (dd it back over the front of {} to undo)",
                backup.display(),
                input_path.display()
            );
        }
        return Ok(0);
    };
    let input = super::open_device(input_path, Access::Read)?;
    let (m, report) = salvage_with(&input, &a.overrides())
        .with_context(|| format!("cannot repair {}", input_path.display()))?;
    let mut out = super::open_device(output, Access::Write)?;
    if out.nr_blocks() < 16 {
        anyhow::bail!(
            "{} is too small for metadata ({} blocks)",
            output.display(),
            out.nr_blocks()
        );
    }
    write_image(&mut out, &m).with_context(|| format!("cannot write {}", output.display()))?;
    if !a.quiet {
        print_report(&m, &report, output);
    }
    Ok(0)
}

fn print_report(
    m: &metadata::thin::model::PoolModel,
    report: &metadata::thin::repair::SalvageReport,
    to: &std::path::Path,
) {
    for note in &report.notes {
        eprintln!("{note}");
    }
    for (b, why) in &report.lost_nodes {
        eprintln!("lost block {b}: {why}");
    }
    if report.dropped_mappings > 0 {
        eprintln!(
            "dropped {} mappings past the end of the data device",
            report.dropped_mappings
        );
    }
    let n: usize = m.devices.values().map(|d| d.mappings.len()).sum();
    eprintln!(
        "repaired: {} devices, {n} mappings written to {}",
        m.devices.len(),
        to.display()
    );
}
