//! `ferrothin repair --in-place FILE`: repair for the one-device layout,
//! where the metadata is the front of the pool file and there is no
//! separate metadata device to swap for a repaired one. What can be read
//! is salvaged into memory, the metadata region is copied aside first
//! (`FILE.metadata-backup`: a repair that goes wrong can be undone with
//! dd), and fresh metadata is written over the region, no larger than it
//! was, so the data area behind it stays where it is. Refused while a
//! live pool (a daemon) holds the file, as every writing tool is.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use metadata::io::{BlockIo, FileIo};
use metadata::pdata::superblock::Superblock;
use metadata::thin::repair::{salvage, SalvageReport};
use metadata::thin::write::write_image_sized;
use metadata::BLOCK_SIZE;

use super::Access;

/// Where the metadata region is copied before it is rewritten.
pub fn backup_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".metadata-backup");
    PathBuf::from(p)
}

/// Repairs `file` in place; what was lost, and the backup's path.
pub fn run(
    file: &Path,
) -> anyhow::Result<(metadata::thin::model::PoolModel, SalvageReport, PathBuf)> {
    // Held exclusively for the whole repair: no daemon or tool can open
    // the pool meanwhile.
    let held = super::open_device(file, Access::Write)?;
    let sb = Superblock::unpack(&*held.read(0)?, 0).map_err(|e| {
        anyhow::anyhow!(
            "{}: the superblock is unreadable ({e}); in-place repair needs it to know where \
             the metadata ends and the data begins",
            file.display()
        )
    })?;
    let nr_meta = sb.metadata_nr_blocks;
    anyhow::ensure!(
        nr_meta > 0 && nr_meta <= held.nr_blocks(),
        "{}: the superblock says {nr_meta} metadata blocks in a file of {}",
        file.display(),
        held.nr_blocks()
    );
    let (m, report) =
        salvage(&held).with_context(|| format!("cannot repair {}", file.display()))?;

    let backup = backup_path(file);
    let region = nr_meta * BLOCK_SIZE as u64;
    {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&backup)
            .with_context(|| {
                format!(
                    "cannot create {} (an earlier repair's backup? move it away first)",
                    backup.display()
                )
            })?;
        let mut src = OpenOptions::new().read(true).open(file)?;
        let copied = std::io::copy(&mut (&mut src).take(region), &mut out)?;
        anyhow::ensure!(copied == region, "short read of the metadata region");
        out.sync_all()
            .with_context(|| format!("cannot write {}", backup.display()))?;
    }

    // A second handle on the file, limited to the metadata region, for
    // the writer; the first keeps the lock.
    let mut f = OpenOptions::new().read(true).write(true).open(file)?;
    f.seek(SeekFrom::Start(0))?;
    let mut io = FileIo::with_nr_blocks(f.try_clone()?, nr_meta);
    write_image_sized(&mut io, &m, nr_meta)
        .with_context(|| format!("cannot write the repaired metadata to {}", file.display()))?;
    f.flush()?;
    f.sync_all()?;
    drop(held);
    Ok((m, report, backup))
}
