//! Workloads and how each picks its next I/O.

use bdev::IoType;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Read,
    Write,
    RandRead,
    RandWrite,
    Rw,
    RandRw,
    Verify,
    Unmap,
    Flush,
    WriteZeroes,
}

impl Workload {
    pub fn parse(s: &str) -> Result<Workload, String> {
        Ok(match s {
            "read" => Workload::Read,
            "write" => Workload::Write,
            "randread" => Workload::RandRead,
            "randwrite" => Workload::RandWrite,
            "rw" => Workload::Rw,
            "randrw" => Workload::RandRw,
            "verify" => Workload::Verify,
            "unmap" => Workload::Unmap,
            "flush" => Workload::Flush,
            "write_zeroes" => Workload::WriteZeroes,
            _ => return Err(format!("unknown workload {s:?}")),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::RandRead => "randread",
            Workload::RandWrite => "randwrite",
            Workload::Rw => "rw",
            Workload::RandRw => "randrw",
            Workload::Verify => "verify",
            Workload::Unmap => "unmap",
            Workload::Flush => "flush",
            Workload::WriteZeroes => "write_zeroes",
        }
    }

    pub fn is_random(self) -> bool {
        matches!(
            self,
            Workload::RandRead | Workload::RandWrite | Workload::RandRw
        )
    }

    pub fn is_mixed(self) -> bool {
        matches!(self, Workload::Rw | Workload::RandRw)
    }

    /// The I/O types a target must support for this workload.
    pub fn needs(self) -> &'static [IoType] {
        match self {
            Workload::Read | Workload::RandRead => &[IoType::Read],
            Workload::Write | Workload::RandWrite => &[IoType::Write],
            Workload::Rw | Workload::RandRw | Workload::Verify => &[IoType::Read, IoType::Write],
            Workload::Unmap => &[IoType::Unmap],
            Workload::Flush => &[IoType::Flush],
            Workload::WriteZeroes => &[IoType::WriteZeroes],
        }
    }
}

/// xorshift64, as bdevperf draws random offsets.
#[derive(Clone, Copy, Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    #[inline]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
