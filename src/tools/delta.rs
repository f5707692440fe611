//! `ferrothin delta`: thin_delta, the changed ranges between two devices
//! (or two states of one, through the metadata snapshot).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use metadata::thin::delta::delta_xml;
use metadata::thin::read::read_image;

use super::Access;

#[derive(Args, Debug)]
pub struct DeltaArgs {
    /// The metadata device or image.
    pub device: PathBuf,
    #[arg(long)]
    pub snap1: u64,
    #[arg(long)]
    pub snap2: u64,
    /// Read the devices from the metadata snapshot (this works while a
    /// live pool holds the device).
    #[arg(short = 'm', long = "metadata-snap")]
    pub metadata_snap: bool,
}

pub fn run(a: &DeltaArgs) -> anyhow::Result<i32> {
    let io = super::open_device(
        &a.device,
        if a.metadata_snap {
            Access::Snapshot
        } else {
            Access::Read
        },
    )?;
    let m = read_image(&io, a.metadata_snap)
        .with_context(|| format!("cannot read the metadata on {}", a.device.display()))?;
    let text = delta_xml(&m, a.snap1, a.snap2)?;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(0)
}
