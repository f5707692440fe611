//! The NVMe commands the host sends, as SQEs (protocols.md A.10, A.12):
//! admin commands for attach and keep-alive, NVM commands for I/O. The
//! CID is the queue's to set. Pure functions, so every field is checked
//! by the tests below without a connection.

use nvme::sqe::{Sgl1, Sqe};

pub(crate) mod opc {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DSM: u8 = 0x09;
    pub const IDENTIFY: u8 = 0x06;
    pub const SET_FEATURES: u8 = 0x09;
    pub const KEEP_ALIVE: u8 = 0x18;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const ASYNC_EVENT: u8 = 0x0C;
}

/// The Changed Namespace List log page (04h): 1024 NSIDs.
pub(crate) const CHANGED_NS_LOG: u8 = 0x04;
pub(crate) const LOG_LEN: u32 = 4096;

/// Identify's 4096-byte structures.
pub(crate) const IDENTIFY_LEN: u32 = 4096;
/// One Dataset Management range: context attributes, length in blocks,
/// starting LBA.
pub(crate) const DSM_RANGE_LEN: usize = 16;
/// Ranges one DSM command carries at most (NR is 8 bits, 0's based).
pub(crate) const DSM_MAX_RANGES: usize = 256;
/// NLB is 16 bits, 0's based: one Read, Write or Write Zeroes moves at
/// most this many blocks.
pub(crate) const MAX_NLB: u64 = 1 << 16;

/// FUA: Write's CDW12 bit 30.
const FUA: u32 = 1 << 30;
/// DSM's Attribute - Deallocate (CDW11 bit 2).
const DSM_AD: u32 = 1 << 2;

pub(crate) fn identify(cns: u8, nsid: u32) -> Sqe {
    let mut s = Sqe::new(opc::IDENTIFY, 0);
    s.set_nsid(nsid);
    s.set_cdw(10, u32::from(cns));
    s.set_sgl1(Sgl1::Transport {
        length: IDENTIFY_LEN,
    });
    s
}

/// Set Features Number of Queues (FID 0x07) asking for `n` I/O queue
/// pairs (both counts 0's based).
pub(crate) fn set_num_queues(n: u16) -> Sqe {
    let mut s = Sqe::new(opc::SET_FEATURES, 0);
    let v = u32::from(n.max(1) - 1);
    s.set_cdw(10, 0x07);
    s.set_cdw(11, v | (v << 16));
    s.set_sgl1(Sgl1::Transport { length: 0 });
    s
}

/// Set Features Asynchronous Event Configuration (FID 0x0B): namespace
/// attribute notices only (bit 8).
pub(crate) fn aen_config() -> Sqe {
    let mut s = Sqe::new(opc::SET_FEATURES, 0);
    s.set_cdw(10, 0x0B);
    s.set_cdw(11, 1 << 8);
    s.set_sgl1(Sgl1::Transport { length: 0 });
    s
}

/// An Asynchronous Event Request: answered when the controller has
/// something to tell.
pub(crate) fn async_event() -> Sqe {
    let mut s = Sqe::new(opc::ASYNC_EVENT, 0);
    s.set_sgl1(Sgl1::Transport { length: 0 });
    s
}

/// Get Log Page `lid`, LOG_LEN bytes, the event cleared (RAE 0).
pub(crate) fn get_log(lid: u8) -> Sqe {
    let mut s = Sqe::new(opc::GET_LOG_PAGE, 0);
    s.set_nsid(0xFFFF_FFFF);
    let numd = LOG_LEN / 4 - 1;
    s.set_cdw(10, u32::from(lid) | ((numd & 0xFFFF) << 16));
    s.set_cdw(11, numd >> 16);
    s.set_sgl1(Sgl1::Transport { length: LOG_LEN });
    s
}

pub(crate) fn keep_alive() -> Sqe {
    let mut s = Sqe::new(opc::KEEP_ALIVE, 0);
    s.set_sgl1(Sgl1::Transport { length: 0 });
    s
}

/// Read or Write of `blocks` (1..=MAX_NLB) from `slba`; the SGL is the
/// queue's to set (in-capsule or transport).
pub(crate) fn rw(opcode: u8, nsid: u32, slba: u64, blocks: u32, fua: bool) -> Sqe {
    let mut s = Sqe::new(opcode, 0);
    s.set_nsid(nsid);
    s.set_cdw(10, slba as u32);
    s.set_cdw(11, (slba >> 32) as u32);
    s.set_cdw(12, (blocks - 1) | if fua { FUA } else { 0 });
    s
}

pub(crate) fn flush(nsid: u32) -> Sqe {
    let mut s = Sqe::new(opc::FLUSH, 0);
    s.set_nsid(nsid);
    s.set_sgl1(Sgl1::Transport { length: 0 });
    s
}

pub(crate) fn write_zeroes(nsid: u32, slba: u64, blocks: u32) -> Sqe {
    let mut s = rw(opc::WRITE_ZEROES, nsid, slba, blocks, false);
    s.set_sgl1(Sgl1::Transport { length: 0 });
    s
}

/// Dataset Management with Deallocate over `ranges` ranges, whose list
/// (`dsm_ranges`) goes in the capsule.
pub(crate) fn deallocate(nsid: u32, ranges: usize) -> Sqe {
    let mut s = Sqe::new(opc::DSM, 0);
    s.set_nsid(nsid);
    s.set_cdw(10, (ranges.clamp(1, DSM_MAX_RANGES) - 1) as u32);
    s.set_cdw(11, DSM_AD);
    s
}

/// Appends the DSM range list for `blocks` blocks from `slba`, ranges of
/// at most u32::MAX blocks, at most `max_ranges` of them; returns the
/// blocks covered and the ranges used.
pub(crate) fn dsm_ranges(
    out: &mut Vec<u8>,
    slba: u64,
    blocks: u64,
    max_ranges: usize,
) -> (u64, usize) {
    let mut done = 0u64;
    let mut n = 0;
    while done < blocks && n < max_ranges.min(DSM_MAX_RANGES) {
        let len = (blocks - done).min(u64::from(u32::MAX));
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&(slba + done).to_le_bytes());
        done += len;
        n += 1;
    }
    (done, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_fields() {
        let s = rw(opc::WRITE, 3, 0x1_0000_0002, 8, true);
        assert_eq!(s.opcode(), opc::WRITE);
        assert_eq!(s.nsid(), 3);
        assert_eq!((s.cdw10(), s.cdw11()), (2, 1));
        assert_eq!(s.cdw12(), 7 | (1 << 30));
        let r = rw(opc::READ, 1, 5, 1, false);
        assert_eq!(r.cdw12(), 0);
    }

    #[test]
    fn admin_fields() {
        let s = identify(2, 0);
        assert_eq!((s.opcode(), s.cdw10(), s.nsid()), (0x06, 2, 0));
        assert_eq!(s.sgl1(), Sgl1::Transport { length: 4096 });
        let q = set_num_queues(4);
        assert_eq!((q.cdw10(), q.cdw11()), (7, 0x0003_0003));
        assert_eq!(set_num_queues(0).cdw11(), 0);
        assert_eq!(keep_alive().opcode(), 0x18);
        let l = get_log(4);
        assert_eq!(
            (l.opcode(), l.cdw10(), l.cdw11()),
            (0x02, 4 | (1023 << 16), 0)
        );
        assert_eq!(l.sgl1(), Sgl1::Transport { length: 4096 });
        assert_eq!((aen_config().cdw10(), aen_config().cdw11()), (0x0B, 0x100));
        assert_eq!(async_event().opcode(), 0x0C);
    }

    #[test]
    fn dsm_range_list_splits_at_u32_max() {
        let mut v = Vec::new();
        let total = u64::from(u32::MAX) + 10;
        assert_eq!(dsm_ranges(&mut v, 100, total, 256), (total, 2));
        assert_eq!(v.len(), 2 * DSM_RANGE_LEN);
        assert_eq!(u32::from_le_bytes(v[4..8].try_into().unwrap()), u32::MAX);
        assert_eq!(u64::from_le_bytes(v[8..16].try_into().unwrap()), 100);
        assert_eq!(u32::from_le_bytes(v[20..24].try_into().unwrap()), 10);
        assert_eq!(
            u64::from_le_bytes(v[24..32].try_into().unwrap()),
            100 + u64::from(u32::MAX)
        );
        // A bounded list covers what it can.
        let mut w = Vec::new();
        assert_eq!(dsm_ranges(&mut w, 0, total, 1), (u64::from(u32::MAX), 1));
        let d = deallocate(1, 2);
        assert_eq!((d.opcode(), d.cdw10(), d.cdw11()), (0x09, 1, 4));
    }
}
