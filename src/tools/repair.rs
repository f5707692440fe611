//! `ferrothin repair`: thin_repair. Salvages what is readable from a
//! damaged metadata device into a fresh one (the input is not changed).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use metadata::io::BlockIo;
use metadata::thin::repair::salvage;
use metadata::thin::write::write_image;

use super::Access;

#[derive(Args, Debug)]
pub struct RepairArgs {
    /// The damaged metadata device or image (read only).
    #[arg(short, long)]
    pub input: PathBuf,
    /// Where to write the repaired metadata (must exist and be large enough).
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(a: &RepairArgs) -> anyhow::Result<i32> {
    let input = super::open_device(&a.input, Access::Read)?;
    let (m, report) =
        salvage(&input).with_context(|| format!("cannot repair {}", a.input.display()))?;
    let mut out = super::open_device(&a.output, Access::Write)?;
    if out.nr_blocks() < 16 {
        anyhow::bail!(
            "{} is too small for metadata ({} blocks)",
            a.output.display(),
            out.nr_blocks()
        );
    }
    write_image(&mut out, &m).with_context(|| format!("cannot write {}", a.output.display()))?;
    if !a.quiet {
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
            a.output.display()
        );
    }
    Ok(0)
}
