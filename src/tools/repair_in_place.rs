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
use metadata::thin::repair::{salvage_with, Overrides, SalvageReport};
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
/// `metadata_blocks` is where the metadata ends when the superblock that
/// says so is lost.
pub fn run(
    file: &Path,
    overrides: &Overrides,
    metadata_blocks: Option<u64>,
) -> anyhow::Result<(metadata::thin::model::PoolModel, SalvageReport, PathBuf)> {
    // Held exclusively for the whole repair: no daemon or tool can open
    // the pool meanwhile.
    let held = super::open_device(file, Access::Write)?;
    let nr_meta = match (Superblock::unpack(&*held.read(0)?, 0), metadata_blocks) {
        (Ok(sb), None) => sb.metadata_nr_blocks,
        (Ok(sb), Some(n)) => {
            anyhow::ensure!(
                n == sb.metadata_nr_blocks,
                "{}: --metadata-blocks {n} disagrees with the superblock's {}",
                file.display(),
                sb.metadata_nr_blocks
            );
            n
        }
        (Err(_), Some(n)) => n,
        (Err(e), None) => anyhow::bail!(
            "{}: the superblock is unreadable ({e}); in-place repair needs to know where \
             the metadata ends and the data begins: give --metadata-blocks (and \
             --data-block-size to rebuild the superblock)",
            file.display()
        ),
    };
    anyhow::ensure!(
        nr_meta > 0 && nr_meta <= held.nr_blocks(),
        "{}: the superblock says {nr_meta} metadata blocks in a file of {}",
        file.display(),
        held.nr_blocks()
    );
    // Only the metadata region is scanned: the data behind it may hold
    // anything, a nested pool's metadata included.
    let region = FileIo::with_nr_blocks(OpenOptions::new().read(true).open(file)?, nr_meta);
    let (m, report) = salvage_with(&region, overrides)
        .with_context(|| format!("cannot repair {}", file.display()))?;

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
