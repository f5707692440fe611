//! The receiving half of a queue pair: bytes from the socket through
//! the PDU receiver, then each PDU checked against what is outstanding:
//! ICResp, responses, C2H data, R2Ts. Anything that does not fit ends
//! the connection (the caller fails it).

use nvme::pdu::header::{Framing, PduType};
use nvme::pdu::{C2HData, H2CData, Header, IcResp, R2T};
use nvme::receive::{Received, Receiver, RecvState};
use nvme::sqe::Cqe;
use reactor::sock;

use super::{Inner, PartKind, Phase, Reply, Slot, READ_BUDGET};
use crate::IoStatus;

impl Inner {
    /// Reads and handles PDUs; Ok(true) when the budget ran out with
    /// more maybe waiting.
    pub(super) fn read(
        &mut self,
        sock: &sock::Stream,
        recv: &mut Receiver,
        rbuf: &mut [u8],
    ) -> Result<bool, String> {
        let mut taken = 0;
        while taken < READ_BUDGET {
            let n = match sock.read(rbuf) {
                Ok(0) => return Err("the target closed the connection".into()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(format!("read: {e}")),
            };
            taken += n;
            let mut input = &rbuf[..n];
            while !input.is_empty() {
                match recv.feed(&mut input) {
                    Some(Ok(r)) => self.received(r, recv)?,
                    Some(Err(fatal)) => {
                        self.push_pdu(&fatal.term_req());
                        let _ = self.flush(sock);
                        return Err(format!("protocol error from the target: {fatal}"));
                    }
                    None => {
                        if matches!(recv.state(), RecvState::Terminated | RecvState::Failed) {
                            return Err("the target ended the connection".into());
                        }
                        break;
                    }
                }
            }
            if self.phase == Phase::Failed {
                return Err(self.why.clone());
            }
        }
        Ok(true)
    }

    fn received(&mut self, r: Received, recv: &mut Receiver) -> Result<(), String> {
        let (pdu, bad) = match r {
            Received::Pdu(p) => (p, false),
            Received::BadDataDigest { pdu, .. } => (pdu, true),
        };
        match pdu.header {
            Header::IcResp(ic) => self.ic_resp(ic, recv),
            Header::CapsuleResp(c) => self.response(c.cqe),
            Header::C2HData(c) => {
                let r = self.c2h_data(c, &pdu.data, bad);
                // The read path's buffer goes back to the receiver: no
                // allocation per C2HData.
                recv.recycle(pdu.data);
                r
            }
            Header::R2T(r) => self.r2t(r),
            Header::C2HTermReq(t) => Err(format!(
                "the target sent a TermReq: {} (FEI {:#x})",
                t.fes.name(),
                t.fei
            )),
            other => Err(format!("unexpected {:?} PDU", other.pdu_type())),
        }
    }

    fn ic_resp(&mut self, ic: IcResp, recv: &mut Receiver) -> Result<(), String> {
        if self.phase != Phase::Connecting || self.maxh2cdata != 0 {
            return Err("a second ICResp".into());
        }
        if ic.pfv != 0 {
            return Err(format!("ICResp PFV {} is not 0", ic.pfv));
        }
        if ic.maxh2cdata < IcResp::MIN_MAXH2CDATA || !ic.maxh2cdata.is_multiple_of(4) {
            return Err(format!("ICResp MAXH2CDATA {} is invalid", ic.maxh2cdata));
        }
        if ic.cpda > Framing::MAX_PDA {
            return Err(format!("ICResp CPDA {} is invalid", ic.cpda));
        }
        if (ic.hdgst, ic.ddgst) != (self.cfg.hdgst, self.cfg.ddgst) {
            // SPDK's host adopts the controller's choice; so do we, and
            // say so, since the user asked otherwise.
            tracing::info!(
                "nvme: {} granted digests header {} data {} (asked {} {})",
                self.cfg.addr,
                ic.hdgst,
                ic.ddgst,
                self.cfg.hdgst,
                self.cfg.ddgst
            );
        }
        self.maxh2cdata = ic.maxh2cdata;
        self.send = Framing {
            header_digest: ic.hdgst,
            data_digest: ic.ddgst,
            pda: ic.cpda,
        };
        // Our HPDA is 0: data we receive is not padded.
        if !recv.negotiated(Framing {
            header_digest: ic.hdgst,
            data_digest: ic.ddgst,
            pda: 0,
        }) {
            return Err("ICResp out of sequence".into());
        }
        self.send_connect();
        Ok(())
    }

    fn slot(&mut self, cid: u16) -> Result<&mut Slot, String> {
        match self.slots.get_mut(usize::from(cid)) {
            Some(s) if !matches!(s, Slot::Free) => Ok(s),
            _ => Err(format!(
                "the target answered CID {cid}, which is not outstanding"
            )),
        }
    }

    pub(super) fn response(&mut self, cqe: Cqe) -> Result<(), String> {
        let slot = std::mem::replace(self.slot(cqe.cid)?, Slot::Free);
        self.free.push(cqe.cid);
        match slot {
            Slot::Free => Ok(()),
            Slot::Connect => {
                if !cqe.status.is_success() {
                    return Err(format!(
                        "Connect refused: status type {:#x} code {:#x}",
                        cqe.status.sct(),
                        cqe.status.sc()
                    ));
                }
                self.cntlid = cqe.dw0 as u16;
                self.phase = Phase::Live;
                for w in self.waiters.drain(..) {
                    w.send(Ok(self.cntlid));
                }
                Ok(())
            }
            Slot::Admin { tx, data, .. } => {
                tx.send(Ok(Reply { cqe, data }));
                Ok(())
            }
            Slot::Io(p) => {
                let ok = cqe.status.is_success()
                    && !p.bad
                    && (p.kind != PartKind::Read || p.got == p.len);
                if !ok {
                    tracing::debug!(
                        "nvme: I/O CID {} failed: status {:#x}/{:#x}, {} of {} bytes",
                        cqe.cid,
                        cqe.status.sct(),
                        cqe.status.sc(),
                        p.got,
                        p.len
                    );
                }
                self.part_done(p.io, ok);
                Ok(())
            }
        }
    }

    /// One command of I/O `idx` ended; the I/O completes with its last.
    pub(super) fn part_done(&mut self, idx: u32, ok: bool) {
        let Some(e) = self.ios.get_mut(idx) else {
            return;
        };
        e.inflight -= 1;
        if !ok {
            e.status = IoStatus::IoError(libc::EIO);
        }
        if e.inflight == 0 && e.next >= e.end {
            if let Some(e) = self.ios.remove(idx) {
                self.done.push((e.io, e.status));
            }
        }
    }

    fn c2h_data(&mut self, c: C2HData, data: &[u8], bad: bool) -> Result<(), String> {
        let len = data.len() as u32;
        let end = c
            .datao
            .checked_add(len)
            .ok_or_else(|| "C2HData offset overflows".to_string())?;
        match self.slot(c.cccid)? {
            Slot::Admin {
                data: buf, expect, ..
            } => {
                if end > *expect || c.datao as usize != buf.len() {
                    return Err(format!(
                        "C2HData for CID {} at {} +{len} outside its {} bytes",
                        c.cccid, c.datao, expect
                    ));
                }
                if bad {
                    // Admin data steers the controller's setup: none of
                    // it may be used, and the command has no retry here.
                    return Err(format!(
                        "C2HData for admin CID {} failed its digest",
                        c.cccid
                    ));
                }
                buf.extend_from_slice(data);
            }
            Slot::Io(p) if p.kind == PartKind::Read => {
                if end > p.len {
                    return Err(format!(
                        "C2HData for CID {} at {} +{len} beyond its {} bytes",
                        c.cccid, c.datao, p.len
                    ));
                }
                p.got = p.got.saturating_add(len);
                p.bad |= bad;
                let (idx, at) = (p.io, p.at + c.datao as usize);
                if let Some(e) = self.ios.get_mut(idx) {
                    e.io.copy_into_bufs(at, data);
                }
            }
            _ => return Err(format!("C2HData for CID {}, which reads nothing", c.cccid)),
        }
        if c.success {
            // SUCCESS stands for the response capsule (only sent when SQ
            // flow control is off, which we never ask; accepted anyway).
            let cqe = Cqe::new(c.cccid, nvme::sqe::Status::SUCCESS);
            return self.response(cqe);
        }
        Ok(())
    }

    fn r2t(&mut self, r: R2T) -> Result<(), String> {
        let (idx, at, len) = match self.slot(r.cccid)? {
            Slot::Io(p) if p.kind == PartKind::WriteR2T => (p.io, p.at, p.len),
            _ => return Err(format!("R2T for CID {}, which sends no data", r.cccid)),
        };
        let end = r.r2to.saturating_add(r.r2tl);
        if r.r2tl == 0 || end > len {
            return Err(format!(
                "R2T for CID {} asks {} +{} of {len} bytes",
                r.cccid, r.r2to, r.r2tl
            ));
        }
        let mut off = r.r2to;
        while off < end {
            let n = (end - off).min(self.maxh2cdata);
            let h = Header::H2CData(H2CData {
                cccid: r.cccid,
                ttag: r.ttag,
                datao: off,
                last: off + n == end,
            });
            if !self.push_header(&h, n as usize) {
                return Err(self.why.clone());
            }
            self.push_io_data(idx, at + off as usize, n as usize, PduType::H2CData);
            off += n;
        }
        Ok(())
    }
}
