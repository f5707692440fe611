//! `ferrothin restore`: thin_restore. Reads thin_dump XML (flat, or with
//! 1.x defs/refs) and writes it as fresh metadata on the output device.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use metadata::io::BlockIo;
use metadata::thin::write::write_image;
use metadata::thin::xml::parse_xml_with_progress;

use super::progress::Progress;
use super::Access;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The XML to restore.
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// The metadata device or image to write (it must exist and be large
    /// enough; its contents are replaced).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(a: &RestoreArgs) -> anyhow::Result<i32> {
    let input = super::input(&a.input)?;
    let output = super::output(&a.output)?;
    let text = std::fs::read_to_string(input)
        .with_context(|| format!("cannot read {}", input.display()))?;
    let mut bar = Progress::new("reading XML");
    let parsed = parse_xml_with_progress(&text, &mut |done, total| {
        if !a.quiet {
            bar.update(done, total)
        }
    });
    bar.finish();
    let m = parsed.with_context(|| format!("{} is not valid thin_dump XML", input.display()))?;
    let mut io = super::open_device(output, Access::Write)?;
    if io.nr_blocks() < 16 {
        anyhow::bail!(
            "{} is too small for metadata ({} blocks)",
            output.display(),
            io.nr_blocks()
        );
    }
    write_image(&mut io, &m)
        .with_context(|| format!("cannot write the metadata to {}", output.display()))?;
    if !a.quiet {
        eprintln!(
            "restored {} devices to {}",
            m.devices.len(),
            output.display()
        );
    }
    Ok(0)
}
