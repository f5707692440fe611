//! `ferrothin check`: thin_check. Exit status as Debian's thin_check
//! 0.9.0: 1 on damage, and on non-fatal errors (leaked metadata blocks,
//! underfull nodes) unless --ignore-non-fatal-errors; leaked data blocks
//! are reported but do not fail the check; 0 otherwise.

use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;
use metadata::io::BlockIo;
use metadata::pdata::superblock::NEEDS_CHECK;
use metadata::thin::check::{check, check_with_progress, CheckOptions, CheckReport};
use metadata::thin::pool::Pool;

use super::progress::Progress;
use super::Access;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The metadata device or image.
    pub device: Option<PathBuf>,
    /// Print nothing; the exit status tells.
    #[arg(short, long)]
    pub quiet: bool,
    /// Check only the superblock.
    #[arg(long)]
    pub super_block_only: bool,
    /// Do not check the mappings (devices and space maps only).
    #[arg(long)]
    pub skip_mappings: bool,
    /// Exit 0 when only non-fatal problems (leaks, underfull nodes) are found.
    #[arg(long)]
    pub ignore_non_fatal_errors: bool,
    /// Clear the needs_check flag if the check passes.
    #[arg(long)]
    pub clear_needs_check_flag: bool,
    /// Fail unless the pool holds a metadata snapshot (whose trees are
    /// checked whenever there is one).
    #[arg(short = 'm', long = "metadata-snap")]
    pub metadata_snap: bool,
    /// Check with this block as the mapping tree's root instead of the
    /// superblock's (never with --clear-needs-check-flag: that would write
    /// the superblock the check did not read).
    #[arg(long, value_name = "BLOCK", conflicts_with = "clear_needs_check_flag")]
    pub override_mapping_root: Option<u64>,
    /// Fix what loses nothing (leaked blocks, counts above their
    /// references) in one metadata commit, then check again; with
    /// --clear-needs-check-flag the same commit clears the flag.
    #[arg(long, conflicts_with_all = ["override_mapping_root", "skip_mappings", "super_block_only"])]
    pub auto_repair: bool,
}

/// Runs the check; returns the process exit code.
pub fn run(a: &CheckArgs) -> anyhow::Result<i32> {
    let device = super::input(&a.device)?;
    let mut io: Box<dyn BlockIo> = Box::new(super::open_device(
        device,
        if a.clear_needs_check_flag || a.auto_repair {
            Access::Write
        } else {
            Access::Read
        },
    )?);
    let opts = CheckOptions {
        super_block_only: a.super_block_only,
        skip_mappings: a.skip_mappings,
        metadata_snap: a.metadata_snap,
        override_mapping_root: a.override_mapping_root,
        keep_counts: a.auto_repair,
    };
    let mut bar = Progress::new("checking");
    let mut r = check_with_progress(&*io, &opts, &mut |done, total| {
        if !a.quiet {
            bar.update(done, total)
        }
    });
    bar.finish();
    if a.auto_repair {
        (io, r) = auto_repair(io, r, a, &opts)?;
    }
    if !a.quiet {
        // A closed stdout must not hide the verdict: write errors there
        // are ignored and the exit status still tells.
        let mut out = std::io::stdout().lock();
        // -m reports the snapshot's own transaction and free blocks.
        if let Some(sb) = r.snapshot.as_ref().or(r.superblock.as_ref()) {
            let _ = writeln!(out, "TRANSACTION_ID={}", sb.trans_id);
        }
        // The snapshot keeps no space map of its own (its copy's roots are
        // zeroed): thin_check 0.9 -m counts every block of the device but
        // the superblock as free, and so do we.
        let free = match &r.snapshot {
            Some(_) => Some(io.nr_blocks().saturating_sub(1)),
            None => r.metadata_free_blocks,
        };
        if let Some(n) = free {
            let _ = writeln!(out, "METADATA_FREE_BLOCKS={n}");
        }
        for m in &r.fatal {
            eprintln!("{m}");
        }
        for m in &r.non_fatal {
            eprintln!("{m} (non-fatal)");
        }
    }
    let ok = r.exit_code(a.ignore_non_fatal_errors) == 0;
    if ok && a.clear_needs_check_flag {
        if let Some(mut sb) = r.superblock.filter(|s| s.flags & NEEDS_CHECK != 0) {
            sb.flags &= !NEEDS_CHECK;
            io.write(&[(0, &sb.pack())])?;
            io.flush()?;
            if !a.quiet {
                eprintln!("cleared the needs_check flag");
            }
        }
    }
    Ok(if ok { 0 } else { 1 })
}

/// --auto-repair: when the check found no damage but counts above their
/// references, lowers them (and clears needs_check when asked) in one
/// commit, then checks again. Damage is left alone: that is repair's.
fn auto_repair(
    io: Box<dyn BlockIo>,
    r: CheckReport,
    a: &CheckArgs,
    opts: &CheckOptions,
) -> anyhow::Result<(Box<dyn BlockIo>, CheckReport)> {
    let Some((meta, data)) = r.found_counts.as_ref().filter(|_| r.fatal.is_empty()) else {
        if !r.fatal.is_empty() && !a.quiet {
            eprintln!("not repaired: the metadata is damaged (ferrothin repair salvages it)");
        }
        return Ok((io, r));
    };
    let mut pool = Pool::open(io)?;
    let (m, d) = pool.fix_counts(meta, data);
    let clear = a.clear_needs_check_flag && pool.needs_check();
    if m + d == 0 && !clear {
        return Ok((pool.into_io(), r));
    }
    if clear {
        pool.set_needs_check(false);
    }
    pool.commit(&mut || Ok(()))?;
    if !a.quiet {
        eprintln!("repaired: {m} metadata and {d} data block counts lowered to their references");
    }
    let io = pool.into_io();
    let again = check(&*io, opts);
    Ok((io, again))
}
