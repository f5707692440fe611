//! NVM I/O commands (protocols.md A.12): checked against the namespace
//! before any data moves (a write that would fail gets no R2T), then run
//! through the namespace's export, whose async commands every export
//! shares. Thin provisioning shows through: Dataset Management with
//! Deallocate unmaps, Write Zeroes with DEAC may unmap, out of data space
//! is Capacity Exceeded.

use bdev::{IoBuf, IoStatus};

use super::sqe::{DataLocation, Sqe, Status};
use super::subsystem::Namespace;
use super::transport::TransportOpts;
use crate::nbd::export::{Command, Outcome};

pub mod opc {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

const FUA: u32 = 1 << 30;
const DEAC: u32 = 1 << 25;
const DSM_DEALLOCATE: u32 = 1 << 2;
const DSM_RANGE: usize = 16;

/// A checked I/O command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoCmd {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Zero {
        offset: u64,
        len: u64,
        fua: bool,
        deac: bool,
    },
    /// Deallocate the ranges the data lists (`ranges` of them).
    Deallocate {
        ranges: u32,
    },
    /// Dataset Management without Deallocate: a hint, nothing to do.
    Hint,
}

impl IoCmd {
    /// Bytes the host sends with it.
    pub fn data_in(&self) -> u32 {
        match *self {
            IoCmd::Write { len, .. } => len,
            IoCmd::Deallocate { ranges } => ranges * DSM_RANGE as u32,
            _ => 0,
        }
    }
}

/// The block range a command covers, in bytes, if it lies inside the
/// namespace.
fn range(ns: &Namespace, sqe: &Sqe) -> Result<(u64, u64), Status> {
    let slba = u64::from(sqe.cdw10()) | (u64::from(sqe.cdw11()) << 32);
    let nlb = u64::from(sqe.cdw12() & 0xFFFF) + 1;
    match slba.checked_add(nlb) {
        Some(end) if end <= ns.num_blocks() => {}
        _ => return Err(Status::LBA_OUT_OF_RANGE.with_dnr()),
    }
    let bs = u64::from(ns.block_size());
    Ok((slba * bs, nlb * bs))
}

/// Checks an I/O command against its namespace and the transport.
pub fn check(
    ns: &Namespace,
    sqe: &Sqe,
    loc: DataLocation,
    opts: &TransportOpts,
) -> Result<IoCmd, Status> {
    if sqe.fuse() != 0 {
        return Err(Status::INVALID_FIELD.with_dnr());
    }
    let sgl_len = loc.length();
    let cdw12 = sqe.cdw12();
    let writes = matches!(sqe.opcode(), opc::WRITE | opc::WRITE_ZEROES)
        || (sqe.opcode() == opc::DATASET_MANAGEMENT && sqe.cdw11() & DSM_DEALLOCATE != 0);
    if writes && ns.read_only() {
        return Err(Status::NAMESPACE_WRITE_PROTECTED.with_dnr());
    }
    match sqe.opcode() {
        opc::READ | opc::WRITE => {
            let (offset, len) = range(ns, sqe)?;
            if len > u64::from(opts.max_io_size) {
                return Err(Status::INVALID_FIELD.with_dnr());
            }
            if u64::from(sgl_len) != len {
                return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
            }
            let len = len as u32;
            if sqe.opcode() == opc::READ {
                if matches!(loc, DataLocation::InCapsule { .. }) {
                    return Err(Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr());
                }
                Ok(IoCmd::Read { offset, len })
            } else {
                Ok(IoCmd::Write {
                    offset,
                    len,
                    fua: cdw12 & FUA != 0,
                })
            }
        }
        opc::FLUSH => {
            if sqe.nsid() == u32::MAX {
                // VWC says broadcast flushes are not supported.
                return Err(Status::INVALID_NAMESPACE.with_dnr());
            }
            Ok(IoCmd::Flush)
        }
        opc::WRITE_ZEROES => {
            let (offset, len) = range(ns, sqe)?;
            Ok(IoCmd::Zero {
                offset,
                len,
                fua: cdw12 & FUA != 0,
                deac: cdw12 & DEAC != 0,
            })
        }
        opc::DATASET_MANAGEMENT => {
            let ranges = (sqe.cdw10() & 0xFF) + 1;
            if (sgl_len as usize) < ranges as usize * DSM_RANGE {
                return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
            }
            if sqe.cdw11() & DSM_DEALLOCATE == 0 {
                return Ok(IoCmd::Hint);
            }
            Ok(IoCmd::Deallocate { ranges })
        }
        _ => Err(Status::INVALID_OPCODE.with_dnr()),
    }
}

/// The completion status for a failed bdev I/O.
pub fn status(s: IoStatus) -> Status {
    match s {
        IoStatus::NoSpace => Status::CAPACITY_EXCEEDED.with_dnr(),
        IoStatus::IoError(e) if e == libc::ENOSPC => Status::CAPACITY_EXCEEDED.with_dnr(),
        IoStatus::IoError(e) if e == libc::ENODEV => Status::INVALID_NAMESPACE.with_dnr(),
        IoStatus::Invalid(_) => Status::INVALID_FIELD.with_dnr(),
        IoStatus::Aborted => Status::ABORT_REQUESTED,
        // A read-only or failed pool, a failing device.
        _ => Status::INTERNAL_ERROR,
    }
}

/// Why a command failed: the bdev's status (logged with its cause), or an
/// NVMe status of our own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Bdev(IoStatus),
    Nvme(Status),
}

impl Failure {
    pub fn status(self) -> Status {
        match self {
            Failure::Bdev(s) => status(s),
            Failure::Nvme(s) => s,
        }
    }
}

impl IoCmd {
    /// Its name, byte offset and length, for the log.
    pub fn describe(&self) -> (&'static str, u64, u64) {
        match *self {
            IoCmd::Read { offset, len } => ("read", offset, u64::from(len)),
            IoCmd::Write { offset, len, .. } => ("write", offset, u64::from(len)),
            IoCmd::Flush => ("flush", 0, 0),
            IoCmd::Zero { offset, len, .. } => ("write_zeroes", offset, len),
            IoCmd::Deallocate { .. } => ("deallocate", 0, 0),
            IoCmd::Hint => ("dataset management", 0, 0),
        }
    }
}

/// The bytes written at most per Write Zeroes or deallocation command
/// sent to the export (its lengths are u32).
const CHUNK: u64 = 1 << 30;

/// Runs a checked command; reads return their data.
pub async fn run(
    ns: &Namespace,
    cmd: IoCmd,
    data: Option<IoBuf>,
) -> Result<Option<IoBuf>, Failure> {
    let e = &ns.export;
    let go = |c: Command| async move { e.execute(c).await.map_err(Failure::Bdev) };
    match cmd {
        IoCmd::Read { offset, len } => match go(Command::Read { offset, len }).await? {
            Outcome::Data(b) => Ok(Some(b)),
            _ => Err(Failure::Nvme(Status::INTERNAL_ERROR)),
        },
        IoCmd::Write { offset, fua, .. } => {
            let data = data.ok_or(Failure::Nvme(Status::DATA_TRANSFER_ERROR))?;
            go(Command::Write { offset, data, fua }).await?;
            Ok(None)
        }
        IoCmd::Flush => {
            go(Command::Flush).await?;
            Ok(None)
        }
        IoCmd::Zero {
            offset,
            len,
            fua,
            deac,
        } => {
            let mut at = 0;
            while at < len {
                let n = (len - at).min(CHUNK) as u32;
                go(Command::Zero {
                    offset: offset + at,
                    len: n,
                    fua,
                    no_hole: !deac,
                })
                .await?;
                at += u64::from(n);
            }
            Ok(None)
        }
        IoCmd::Hint => Ok(None),
        IoCmd::Deallocate { ranges } => {
            let data = data.ok_or(Failure::Nvme(Status::DATA_TRANSFER_ERROR))?;
            let list = parse_ranges(data.as_slice(), ranges, ns).map_err(Failure::Nvme)?;
            if !ns.can_unmap() {
                // Deallocation is advisory: a bdev that cannot unmap keeps
                // its blocks, and reads were never promised zeros.
                return Ok(None);
            }
            for (offset, len) in list {
                let mut at = 0;
                while at < len {
                    let n = (len - at).min(CHUNK) as u32;
                    go(Command::Trim {
                        offset: offset + at,
                        len: n,
                        fua: false,
                    })
                    .await?;
                    at += u64::from(n);
                }
            }
            Ok(None)
        }
    }
}

/// The byte ranges a Dataset Management list names; all checked before
/// any is acted on.
fn parse_ranges(d: &[u8], ranges: u32, ns: &Namespace) -> Result<Vec<(u64, u64)>, Status> {
    let bs = u64::from(ns.block_size());
    let mut out = Vec::new();
    for r in d.chunks_exact(DSM_RANGE).take(ranges as usize) {
        let nlb = u64::from(u32::from_le_bytes([r[4], r[5], r[6], r[7]]));
        let mut s = [0u8; 8];
        s.copy_from_slice(&r[8..16]);
        let slba = u64::from_le_bytes(s);
        if nlb == 0 {
            continue;
        }
        match slba.checked_add(nlb) {
            Some(end) if end <= ns.num_blocks() => out.push((slba * bs, nlb * bs)),
            _ => return Err(Status::LBA_OUT_OF_RANGE.with_dnr()),
        }
    }
    Ok(out)
}
