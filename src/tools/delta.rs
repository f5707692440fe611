//! `ferrothin delta`: thin_delta, the changed ranges between two devices
//! (or two states of one, through the metadata snapshot).

use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;
use metadata::thin::delta::delta_xml;

#[derive(Args, Debug)]
pub struct DeltaArgs {
    /// The metadata device or image.
    pub device: Option<PathBuf>,
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
    let m = super::read_pool(super::input(&a.device)?, a.metadata_snap)?;
    let text = delta_xml(&m, a.snap1, a.snap2)?;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(0)
}
