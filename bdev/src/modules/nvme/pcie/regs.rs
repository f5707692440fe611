//! The controller's registers (BAR0) and the trait the driver reaches
//! them through: a VFIO-mapped BAR on a real device, the in-process
//! simulated controller in tests. Offsets and fields from the NVMe base
//! specification, section 3.1.

/// Controller Capabilities (64 bits).
pub const CAP: u32 = 0x00;
/// Version.
pub const VS: u32 = 0x08;
/// Controller Configuration.
pub const CC: u32 = 0x14;
/// Controller Status.
pub const CSTS: u32 = 0x1C;
/// Admin Queue Attributes.
pub const AQA: u32 = 0x24;
/// Admin Submission Queue base address (64 bits).
pub const ASQ: u32 = 0x28;
/// Admin Completion Queue base address (64 bits).
pub const ACQ: u32 = 0x30;
/// The first doorbell (admin SQ tail).
pub const DOORBELL_BASE: u32 = 0x1000;

pub const CC_EN: u32 = 1;
/// CC.SHN: normal shutdown notification (bits 15:14 = 01b).
pub const CC_SHN_NORMAL: u32 = 1 << 14;
pub const CC_SHN_MASK: u32 = 3 << 14;
/// CC with IOSQES 6 (64-byte SQEs), IOCQES 4 (16-byte CQEs), MPS 0
/// (4 KiB pages), CSS 0 (NVM), AMS round robin; EN is separate.
pub const CC_BASE: u32 = (6 << 16) | (4 << 20);

pub const CSTS_RDY: u32 = 1;
/// Controller Fatal Status.
pub const CSTS_CFS: u32 = 1 << 1;
/// CSTS.SHST (bits 3:2): 10b is "shutdown processing complete".
pub const CSTS_SHST_MASK: u32 = 3 << 2;
pub const CSTS_SHST_DONE: u32 = 2 << 2;

/// The memory page size the driver uses (CC.MPS 0): PRPs are built in
/// these pages.
pub const PAGE: usize = 4096;

/// Access to BAR0. Reads and writes are 32-bit, as every controller
/// takes them; a 64-bit register is two accesses, low half first (the
/// specification allows that for CAP, ASQ and ACQ).
pub trait Regs: Send + Sync {
    fn read32(&self, off: u32) -> u32;
    fn write32(&self, off: u32, v: u32);

    fn read64(&self, off: u32) -> u64 {
        u64::from(self.read32(off)) | (u64::from(self.read32(off + 4)) << 32)
    }

    fn write64(&self, off: u32, v: u64) {
        self.write32(off, v as u32);
        self.write32(off + 4, (v >> 32) as u32);
    }
}

/// CAP, the fields the driver uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum Queue Entries Supported, as a count (the field is 0's based).
    pub fn mqes(self) -> u32 {
        (self.0 & 0xFFFF) as u32 + 1
    }

    /// Timeout: the worst case for CSTS.RDY to follow CC.EN, in 500 ms units.
    pub fn to_ms(self) -> u64 {
        ((self.0 >> 24) & 0xFF) * 500
    }

    /// Doorbell Stride: doorbells are 4 << DSTRD bytes apart.
    pub fn dstrd(self) -> u32 {
        ((self.0 >> 32) & 0xF) as u32
    }

    /// Whether the NVM command set is supported (CSS bit 0).
    pub fn nvm_css(self) -> bool {
        (self.0 >> 37) & 1 != 0
    }

    /// The smallest memory page size the controller takes, bytes.
    pub fn mps_min(self) -> usize {
        1usize << (12 + ((self.0 >> 48) & 0xF))
    }

    /// The largest memory page size, bytes.
    pub fn mps_max(self) -> usize {
        1usize << (12 + ((self.0 >> 52) & 0xF))
    }
}

/// The offset of queue `qid`'s submission tail doorbell (`cq` false) or
/// completion head doorbell (`cq` true) under doorbell stride `dstrd`.
pub fn doorbell(qid: u16, cq: bool, dstrd: u32) -> u32 {
    DOORBELL_BASE + (2 * u32::from(qid) + u32::from(cq)) * (4 << dstrd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields() {
        // MQES 2047, TO 30 (15 s), DSTRD 2, CSS NVM, MPSMIN 0, MPSMAX 4.
        let c = Cap(0x07FF | (30 << 24) | (2 << 32) | (1 << 37) | (4 << 52));
        assert_eq!(c.mqes(), 2048);
        assert_eq!(c.to_ms(), 15_000);
        assert_eq!(c.dstrd(), 2);
        assert!(c.nvm_css());
        assert_eq!((c.mps_min(), c.mps_max()), (4096, 65536));
    }

    #[test]
    fn doorbell_stride() {
        assert_eq!(doorbell(0, false, 0), 0x1000);
        assert_eq!(doorbell(0, true, 0), 0x1004);
        assert_eq!(doorbell(1, false, 0), 0x1008);
        assert_eq!(doorbell(3, true, 0), 0x101C);
        // Stride 16 bytes (DSTRD 2): queue 1's CQ head is the 4th doorbell.
        assert_eq!(doorbell(1, true, 2), 0x1000 + 3 * 16);
        assert_eq!(doorbell(65535, true, 0), 0x1000 + 131071 * 4);
    }

    #[test]
    fn cc_layout() {
        assert_eq!(CC_BASE, 0x0046_0000);
        assert_eq!(CC_SHN_NORMAL & CC_SHN_MASK, CC_SHN_NORMAL);
    }
}
