//! The sending half of a queue pair: ICReq and Connect, queued requests
//! turned into capsules (data in the capsule, or announced for R2T),
//! H2C data, and the send buffer written as the socket takes it.

use nvme::digest::Crc32c;
use nvme::pdu::header::PduType;
use nvme::pdu::{CapsuleCmd, Header, IcReq, Pdu};
use nvme::sqe::{Connect, ConnectData, Fabrics, Sgl1};
use reactor::sock;

use super::{Inner, Part, PartKind, Phase, Req, Slot, CONNECT_DATA_LEN, OUT_LIMIT};
use crate::modules::nvme::cmd;
use crate::{IoBuf, IoType};

impl Inner {
    pub(super) fn send_icreq(&mut self) {
        let ic = IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: self.cfg.hdgst,
            ddgst: self.cfg.ddgst,
            maxr2t: 0,
        };
        self.push_pdu(&Pdu::new(Header::IcReq(ic), Vec::new()));
    }

    pub(super) fn push_pdu(&mut self, p: &Pdu) {
        if let Err(e) = p.encode(&self.send, &mut self.out) {
            self.fail(format!("cannot encode a {:?} PDU: {e}", p.pdu_type()));
        }
    }

    /// Appends a PDU header for `data_len` bytes; false (and failed) if
    /// it cannot be encoded.
    pub(super) fn push_header(&mut self, h: &Header, data_len: usize) -> bool {
        let send = self.send;
        match h.encode(data_len, &send, &mut self.out) {
            Ok(()) => true,
            Err(e) => {
                self.fail(format!("cannot encode a {:?} PDU: {e}", h.pdu_type()));
                false
            }
        }
    }

    /// Appends `len` bytes of I/O `idx`'s buffers from byte `at`, and
    /// their digest if data digests are on.
    pub(super) fn push_io_data(&mut self, idx: u32, at: usize, len: usize, ty: PduType) {
        let dd = self.send.dd(ty, len as u32) != 0;
        let Some(e) = self.ios.get(idx) else {
            return;
        };
        let mut crc = Crc32c::new();
        copy_from_bufs(&e.io.bufs, at, len, |s| {
            self.out.extend_from_slice(s);
            if dd {
                crc.update(s);
            }
        });
        if dd {
            self.out.extend_from_slice(&crc.value().to_le_bytes());
        }
    }

    /// Turns queued requests into commands while CIDs and room last.
    pub(super) fn pump(&mut self) {
        while self.phase == Phase::Live && self.out.len() - self.out_at < OUT_LIMIT {
            let Some(&cid) = self.free.last() else { return };
            match self.queue.pop_front() {
                None => return,
                Some(Req::Admin(a)) => {
                    self.free.pop();
                    let mut sqe = a.sqe;
                    sqe.set_cid(cid);
                    let expect = match sqe.sgl1() {
                        Sgl1::Transport { length } => length,
                        _ => 0,
                    };
                    let header = Header::CapsuleCmd(CapsuleCmd { sqe });
                    self.slots[usize::from(cid)] = Slot::Admin {
                        tx: a.tx,
                        data: Vec::new(),
                        expect,
                    };
                    self.push_pdu(&Pdu::new(header, a.data));
                }
                Some(Req::Io(idx)) => {
                    self.free.pop();
                    if self.issue(idx, cid) {
                        self.queue.push_front(Req::Io(idx));
                    }
                }
            }
        }
    }

    /// Encodes the next command of I/O `idx` under `cid`; true if the
    /// I/O has more to issue.
    fn issue(&mut self, idx: u32, cid: u16) -> bool {
        let in_capsule = self.cfg.in_capsule;
        let Some(e) = self.ios.get_mut(idx) else {
            self.free.push(cid);
            return false;
        };
        let ns = e.ns;
        let bs = u64::from(ns.block_size);
        let first = e.io.offset_blocks();
        let left = e.end - e.next;
        // A flush counts its one command from 0, not from its offset:
        // only data-moving commands have a place in the buffers.
        let at = (e.next.saturating_sub(first) * bs) as usize;
        let slba = e.next;
        let ty = e.io.io_type();
        let (blocks, mut sqe, kind, capsule) = match ty {
            IoType::Read | IoType::Write => {
                let n = left.min(ns.max_rw_blocks).min(cmd::MAX_NLB);
                let opc = if ty == IoType::Read {
                    cmd::opc::READ
                } else {
                    cmd::opc::WRITE
                };
                let mut s = cmd::rw(opc, ns.nsid, slba, n as u32, false);
                let len = (n * bs) as u32;
                let (kind, capsule) = if ty == IoType::Read {
                    s.set_sgl1(Sgl1::Transport { length: len });
                    (PartKind::Read, 0)
                } else if len <= in_capsule {
                    s.set_sgl1(Sgl1::InCapsule {
                        offset: 0,
                        length: len,
                    });
                    (PartKind::Plain, len)
                } else {
                    s.set_sgl1(Sgl1::Transport { length: len });
                    (PartKind::WriteR2T, 0)
                };
                (n, s, kind, capsule)
            }
            IoType::WriteZeroes => {
                let n = left.min(cmd::MAX_NLB);
                (
                    n,
                    cmd::write_zeroes(ns.nsid, slba, n as u32),
                    PartKind::Plain,
                    0,
                )
            }
            IoType::Unmap => {
                self.dsm.clear();
                let max = (in_capsule as usize / cmd::DSM_RANGE_LEN).max(1);
                let (n, ranges) = cmd::dsm_ranges(&mut self.dsm, slba, left, max);
                let mut s = cmd::deallocate(ns.nsid, ranges);
                s.set_sgl1(Sgl1::InCapsule {
                    offset: 0,
                    length: self.dsm.len() as u32,
                });
                (n, s, PartKind::Plain, 0)
            }
            IoType::Flush | IoType::Reset => (left, cmd::flush(ns.nsid), PartKind::Plain, 0),
        };
        sqe.set_cid(cid);
        e.next += blocks;
        e.inflight += 1;
        let more = e.next < e.end;
        let len = match kind {
            PartKind::Read | PartKind::WriteR2T => (blocks * bs) as u32,
            PartKind::Plain => capsule,
        };
        self.slots[usize::from(cid)] = Slot::Io(Part {
            io: idx,
            at,
            len,
            kind,
            got: 0,
            bad: false,
        });
        let header = Header::CapsuleCmd(CapsuleCmd { sqe });
        if ty == IoType::Unmap {
            let dsm = std::mem::take(&mut self.dsm);
            if self.push_header(&header, dsm.len()) {
                self.out.extend_from_slice(&dsm);
                if self.send.dd(PduType::CapsuleCmd, dsm.len() as u32) != 0 {
                    self.out
                        .extend_from_slice(&nvme::digest::crc32c(&dsm).to_le_bytes());
                }
            }
            self.dsm = dsm;
        } else if self.push_header(&header, capsule as usize) && capsule > 0 {
            self.push_io_data(idx, at, capsule as usize, PduType::CapsuleCmd);
        }
        more
    }

    /// Writes what the socket takes.
    pub(super) fn flush(&mut self, sock: &sock::Stream) -> Result<(), String> {
        while self.out_at < self.out.len() {
            match sock.write(&self.out[self.out_at..]) {
                Ok(0) => return Err("the connection closed".into()),
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        self.out.clear();
        self.out_at = 0;
        Ok(())
    }

    pub(super) fn send_connect(&mut self) {
        let data = ConnectData {
            hostid: self.cfg.hostid,
            cntlid: self.cfg.cntlid,
            subnqn: self.cfg.subnqn.clone(),
            hostnqn: self.cfg.hostnqn.clone(),
        }
        .encode();
        let data = match data {
            Ok(d) => d,
            Err(e) => return self.fail(format!("Connect data: {e}")),
        };
        let Some(cid) = self.free.pop() else {
            return self.fail("no CID for Connect".into());
        };
        let c = Connect {
            recfmt: 0,
            qid: self.cfg.qid,
            sqsize: self.cfg.entries.saturating_sub(1),
            cattr: 0,
            kato: if self.cfg.qid == 0 {
                self.cfg.kato_ms
            } else {
                0
            },
        };
        let sqe = Fabrics::Connect(c).to_sqe(
            cid,
            Sgl1::InCapsule {
                offset: 0,
                length: CONNECT_DATA_LEN,
            },
        );
        self.slots[usize::from(cid)] = Slot::Connect;
        self.push_pdu(&Pdu::new(Header::CapsuleCmd(CapsuleCmd { sqe }), data));
    }
}

/// Calls `f` with the pieces of `len` bytes from byte `at` of `bufs`.
fn copy_from_bufs(bufs: &[IoBuf], mut at: usize, mut len: usize, mut f: impl FnMut(&[u8])) {
    for b in bufs {
        if len == 0 {
            break;
        }
        if at >= b.len() {
            at -= b.len();
            continue;
        }
        let n = (b.len() - at).min(len);
        f(&b.as_slice()[at..at + n]);
        len -= n;
        at = 0;
    }
}
