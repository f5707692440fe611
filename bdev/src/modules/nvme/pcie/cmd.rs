//! The admin commands only a PCIe host sends (a fabrics host gets its
//! queues by Connect): Create and Delete I/O Completion and Submission
//! Queues. Their PRP1 (the ring) is set by the admin queue. Shared
//! commands (Identify, Set Features, Read, Write, Flush) come from
//! `nvme::cmd`.

use nvme::sqe::Sqe;

pub mod opc {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
}

/// Physically Contiguous: our rings are one piece of the arena.
const PC: u32 = 1;

/// Create I/O Completion Queue `qid` of `entries` entries, interrupts
/// off (IEN 0): completions are polled.
pub fn create_io_cq(qid: u16, entries: u16) -> Sqe {
    let mut s = Sqe::new(opc::CREATE_IO_CQ, 0);
    s.set_cdw(10, (u32::from(entries - 1) << 16) | u32::from(qid));
    s.set_cdw(11, PC);
    s
}

/// Create I/O Submission Queue `qid` posting to completion queue `cqid`.
pub fn create_io_sq(qid: u16, entries: u16, cqid: u16) -> Sqe {
    let mut s = Sqe::new(opc::CREATE_IO_SQ, 0);
    s.set_cdw(10, (u32::from(entries - 1) << 16) | u32::from(qid));
    s.set_cdw(11, (u32::from(cqid) << 16) | PC);
    s
}

pub fn delete_io_sq(qid: u16) -> Sqe {
    let mut s = Sqe::new(opc::DELETE_IO_SQ, 0);
    s.set_cdw(10, u32::from(qid));
    s
}

pub fn delete_io_cq(qid: u16) -> Sqe {
    let mut s = Sqe::new(opc::DELETE_IO_CQ, 0);
    s.set_cdw(10, u32::from(qid));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_commands() {
        let c = create_io_cq(3, 64);
        assert_eq!(
            (c.opcode(), c.cdw10(), c.cdw11()),
            (0x05, (63 << 16) | 3, 1)
        );
        let s = create_io_sq(3, 64, 3);
        assert_eq!(
            (s.opcode(), s.cdw10(), s.cdw11()),
            (0x01, (63 << 16) | 3, (3 << 16) | 1)
        );
        assert_eq!((delete_io_sq(7).opcode(), delete_io_sq(7).cdw10()), (0, 7));
        assert_eq!((delete_io_cq(7).opcode(), delete_io_cq(7).cdw10()), (4, 7));
    }
}
