//! The incremental PDU receiver (protocols.md A.2.3): bytes in, in any
//! split the socket gives them, whole PDUs out.
//!
//! A PDU is read in the algorithm's steps, each a [`RecvState`]: the
//! 8-byte common header (checked at once: type, direction, sequence,
//! HLEN, flags, PLEN, PDO, data limit), the rest of the header and its
//! digest (the digest is checked before any field is believed, and
//! before any memory is set aside for data), the padding, the data, the
//! data digest. The receiver holds at most one PDU's header (a fixed
//! array) and one data section, never more than the [`Limits`] it was
//! built with: a peer that lies about lengths costs a TermReq, not
//! memory.
//!
//! A protocol error stops the receiver for good and yields the
//! [`Fatal`] whose [`Fatal::term_req`] is to be sent before closing. A
//! data digest mismatch is not one: the PDU arrives marked
//! ([`Received::BadDataDigest`]) so its command can be completed with a
//! Transient Transport Error, as SPDK does, and the stream goes on.

use crate::digest::{self, Crc32c, DIGEST_LEN};
use crate::pdu::error::PduError;
use crate::pdu::header::{
    CommonHeader, Framing, Layout, PduType, Role, CH_LEN, MAX_HLEN, TERM_REQ_MAX_DATA,
};
use crate::pdu::{Header, Pdu};

/// The most data one received PDU may carry, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Per H2CData PDU on a controller (the MAXH2CDATA it advertised);
    /// per C2HData PDU on a host.
    pub max_data: u32,
    /// In-capsule data per CapsuleCmd: the most any queue of the
    /// connection allows (8192 for admin and Fabrics commands, IOCCSZ's
    /// for I/O). Narrower per-command limits are the command layer's.
    pub max_in_capsule: u32,
}

impl Limits {
    fn max_for(&self, ty: PduType) -> u32 {
        match ty {
            PduType::CapsuleCmd => self.max_in_capsule,
            PduType::H2CData | PduType::C2HData => self.max_data,
            PduType::H2CTermReq | PduType::C2HTermReq => TERM_REQ_MAX_DATA as u32,
            PduType::IcReq | PduType::IcResp | PduType::CapsuleResp | PduType::R2T => 0,
        }
    }

    /// The most data bytes a receiver with these limits ever holds.
    pub fn bound(&self) -> usize {
        self.max_data
            .max(self.max_in_capsule)
            .max(TERM_REQ_MAX_DATA as u32) as usize
    }
}

/// Where the receiver is in the current PDU, or why it reads no more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvState {
    /// Reading the 8-byte common header (between PDUs, when none of it
    /// has come).
    CommonHeader,
    /// Reading the PDU-specific header, then the header digest.
    Header,
    /// Skipping the padding up to PDO.
    Padding,
    /// Reading the data section.
    Data,
    /// Reading the data digest.
    DataDigest,
    /// An ICReq (ICResp on a host) was received. Nothing more is read
    /// until [`Receiver::negotiated`] says how the stream is framed: the
    /// controller reads no PDU before it has sent its ICResp.
    AwaitNegotiation,
    /// The peer sent a TermReq; the connection is over.
    Terminated,
    /// This side found a protocol error; the connection is over once the
    /// TermReq is sent.
    Failed,
}

/// What the receiver hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// A whole, valid PDU.
    Pdu(Pdu),
    /// A PDU whose header is sound but whose data digest does not match:
    /// its data must not be used. Not a protocol error; the command it
    /// belongs to fails with a Transient Transport Error (retryable).
    BadDataDigest {
        pdu: Pdu,
        received: u32,
        computed: u32,
    },
}

impl Received {
    /// The PDU, whatever its data digest said.
    pub fn pdu(&self) -> &Pdu {
        match self {
            Received::Pdu(p) | Received::BadDataDigest { pdu: p, .. } => p,
        }
    }
}

/// A protocol error: the connection ends with [`Fatal::term_req`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct Fatal {
    pub error: PduError,
    /// The offending PDU's header as far as it was read (8 bytes at
    /// least, at most 128): what the TermReq copies.
    pub header: Vec<u8>,
    /// Who is to send the TermReq: the receiver's side.
    pub from: Role,
}

impl Fatal {
    /// The TermReq to send (C2HTermReq from a controller).
    pub fn term_req(&self) -> Pdu {
        Pdu::term_req(self.from, self.error.fes(), self.error.fei(), &self.header)
    }
}

/// The stream ended inside a PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the stream ended in {state:?}, {missing} bytes short of the PDU's end")]
pub struct Truncated {
    pub state: RecvState,
    /// Bytes the PDU still lacked (as far as its header tells).
    pub missing: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before ICReq/ICResp: that PDU (or a TermReq) only.
    Init,
    Running,
}

/// The state with what each step has learnt of the PDU, so no step can
/// run without it.
#[derive(Clone, Copy, Debug)]
enum Step {
    CommonHeader,
    Header(Layout),
    Padding(Layout, Header),
    Data(Layout, Header),
    DataDigest(Layout, Header),
    Stopped(RecvState),
}

/// Receives the PDUs one end of a connection is sent.
#[derive(Debug)]
pub struct Receiver {
    role: Role,
    limits: Limits,
    framing: Framing,
    phase: Phase,
    step: Step,
    hdr: [u8; MAX_HLEN],
    /// Header bytes in `hdr`.
    hdr_have: usize,
    hdgst: [u8; DIGEST_LEN],
    hdgst_have: usize,
    pad_left: usize,
    data: Vec<u8>,
    /// A data buffer given back (`recycle`), used for the next PDU's data
    /// instead of a new allocation.
    spare: Vec<u8>,
    crc: Crc32c,
    ddgst: [u8; DIGEST_LEN],
    ddgst_have: usize,
    /// Bytes of the current PDU consumed.
    consumed: u64,
}

/// Moves bytes from `input` into `dst[*have..]`; true once `dst` is full.
fn take(dst: &mut [u8], have: &mut usize, input: &mut &[u8]) -> bool {
    let n = (dst.len() - *have).min(input.len());
    let (now, rest) = input.split_at(n);
    dst[*have..*have + n].copy_from_slice(now);
    *have += n;
    *input = rest;
    *have == dst.len()
}

impl Receiver {
    /// A receiver for `role`'s end of a new connection: it expects the
    /// ICReq (controller) or ICResp (host) first.
    pub fn new(role: Role, limits: Limits) -> Receiver {
        Receiver {
            role,
            limits,
            framing: Framing::default(),
            phase: Phase::Init,
            step: Step::CommonHeader,
            hdr: [0; MAX_HLEN],
            hdr_have: 0,
            hdgst: [0; DIGEST_LEN],
            hdgst_have: 0,
            pad_left: 0,
            data: Vec::new(),
            spare: Vec::new(),
            crc: Crc32c::new(),
            ddgst: [0; DIGEST_LEN],
            ddgst_have: 0,
            consumed: 0,
        }
    }

    /// A receiver for a connection whose initialisation is done: framed
    /// as `framing`, any data-path PDU next.
    pub fn after_ic(role: Role, limits: Limits, framing: Framing) -> Receiver {
        let mut r = Receiver::new(role, limits);
        r.phase = Phase::Running;
        r.framing = framing;
        r
    }

    pub fn state(&self) -> RecvState {
        match self.step {
            Step::CommonHeader => RecvState::CommonHeader,
            Step::Header(_) => RecvState::Header,
            Step::Padding(..) => RecvState::Padding,
            Step::Data(..) => RecvState::Data,
            Step::DataDigest(..) => RecvState::DataDigest,
            Step::Stopped(s) => s,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Ends [`RecvState::AwaitNegotiation`]: the PDUs that follow are
    /// framed as `framing` (the digests ICResp granted; the alignment
    /// this side asked for, CPDA on a controller). False, and nothing
    /// changes, in any other state.
    pub fn negotiated(&mut self, framing: Framing) -> bool {
        if self.state() != RecvState::AwaitNegotiation {
            return false;
        }
        self.framing = framing;
        self.step = Step::CommonHeader;
        true
    }

    /// Bytes of data memory the receiver holds now. With the fixed
    /// header arrays, all it holds; never over [`Limits::bound`].
    pub fn memory(&self) -> usize {
        self.data.capacity() + self.spare.capacity()
    }

    /// Gives back a received PDU's data buffer once its bytes have been
    /// used: the next PDU with data reuses it instead of allocating (a
    /// host's read path: one buffer for every C2HData). Kept only when
    /// the receiver holds no other data buffer and it fits the limits,
    /// so [`Self::memory`] stays within [`Limits::bound`].
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.data.capacity() == 0 && buf.capacity() <= self.limits.bound() {
            buf.clear();
            self.spare = buf;
        }
    }

    /// Consumes bytes from the front of `input` until a PDU is complete
    /// (yielded), a protocol error is found (yielded, and the receiver
    /// stops), or `input` is empty. `None` when `input` ran out first or
    /// the receiver reads no more ([`RecvState::AwaitNegotiation`],
    /// [`RecvState::Terminated`], [`RecvState::Failed`]), in which case
    /// `input` is left as it was. Never more than one PDU per call, so
    /// the caller can act on an ICReq before the next bytes are read.
    pub fn feed(&mut self, input: &mut &[u8]) -> Option<Result<Received, Fatal>> {
        let before = input.len();
        let r = self.run(input);
        self.consumed += (before - input.len()) as u64;
        if matches!(r, Some(Ok(_))) {
            self.consumed = 0;
        }
        r
    }

    /// Checks the stream may end here: between PDUs, or after the
    /// receiver stopped.
    pub fn finish(&self) -> Result<(), Truncated> {
        let missing = match self.step {
            Step::Stopped(_) => 0,
            Step::CommonHeader if self.hdr_have == 0 => 0,
            Step::CommonHeader => (CH_LEN - self.hdr_have) as u64,
            Step::Header(l) | Step::Padding(l, _) | Step::Data(l, _) | Step::DataDigest(l, _) => {
                u64::from(l.plen).saturating_sub(self.consumed)
            }
        };
        if missing == 0 {
            Ok(())
        } else {
            Err(Truncated {
                state: self.state(),
                missing,
            })
        }
    }

    fn run(&mut self, input: &mut &[u8]) -> Option<Result<Received, Fatal>> {
        loop {
            match self.step {
                Step::Stopped(_) => return None,
                Step::CommonHeader => {
                    if !take(&mut self.hdr[..CH_LEN], &mut self.hdr_have, input) {
                        return None;
                    }
                    match self.common_header() {
                        Ok(l) => self.step = Step::Header(l),
                        Err(e) => return Some(Err(self.fail(e))),
                    }
                }
                Step::Header(l) => {
                    if !take(&mut self.hdr[..l.hlen], &mut self.hdr_have, input) {
                        return None;
                    }
                    if l.hd != 0 && !take(&mut self.hdgst, &mut self.hdgst_have, input) {
                        return None;
                    }
                    let h = match self.header(&l) {
                        Ok(h) => h,
                        Err(e) => return Some(Err(self.fail(e))),
                    };
                    if l.data_len == 0 {
                        return Some(Ok(self.complete(l, h, None)));
                    }
                    // Only now, with the header proven, is memory set
                    // aside for the data.
                    let mut d = std::mem::take(&mut self.spare);
                    d.clear();
                    d.reserve_exact(l.data_len as usize);
                    self.data = d;
                    self.crc = Crc32c::new();
                    self.ddgst_have = 0;
                    self.pad_left = l.pad;
                    self.step = if l.pad > 0 {
                        Step::Padding(l, h)
                    } else {
                        Step::Data(l, h)
                    };
                }
                Step::Padding(l, h) => {
                    let n = self.pad_left.min(input.len());
                    *input = &input[n..];
                    self.pad_left -= n;
                    if self.pad_left > 0 {
                        return None;
                    }
                    self.step = Step::Data(l, h);
                }
                Step::Data(l, h) => {
                    let n = (l.data_len as usize - self.data.len()).min(input.len());
                    let (now, rest) = input.split_at(n);
                    self.data.extend_from_slice(now);
                    if l.dd != 0 {
                        self.crc.update(now);
                    }
                    *input = rest;
                    if self.data.len() < l.data_len as usize {
                        return None;
                    }
                    if l.dd == 0 {
                        return Some(Ok(self.complete(l, h, None)));
                    }
                    self.step = Step::DataDigest(l, h);
                }
                Step::DataDigest(l, h) => {
                    if !take(&mut self.ddgst, &mut self.ddgst_have, input) {
                        return None;
                    }
                    let d = digest::read(self.ddgst);
                    return Some(Ok(self.complete(l, h, Some(d))));
                }
            }
        }
    }

    /// Step 1: the common header. Everything that can be known from 8
    /// bytes is checked here, so a lying PLEN is caught before anything
    /// is read on its word.
    fn common_header(&mut self) -> Result<Layout, PduError> {
        let mut b = [0; CH_LEN];
        b.copy_from_slice(&self.hdr[..CH_LEN]);
        let ch = CommonHeader::decode(&b);
        let ty = PduType::from_u8(ch.pdu_type).ok_or(PduError::UnknownType(ch.pdu_type))?;
        if ty.sender() != self.role.peer() {
            return Err(PduError::WrongDirection(ty));
        }
        // A TermReq may come at any time: it is how a peer gives up.
        let in_sequence = ty.is_term_req()
            || match self.phase {
                Phase::Init => ty.is_ic(),
                Phase::Running => !ty.is_ic(),
            };
        if !in_sequence {
            return Err(PduError::OutOfSequence(ty));
        }
        Layout::check(&ch, ty, &self.framing, self.limits.max_for(ty))
    }

    /// Step 2: the header and its digest are in; the digest is checked
    /// before any field is believed.
    fn header(&mut self, l: &Layout) -> Result<Header, PduError> {
        if l.hd != 0 {
            let received = digest::read(self.hdgst);
            let computed = digest::crc32c(&self.hdr[..l.hlen]);
            if received != computed {
                return Err(PduError::HeaderDigest { received, computed });
            }
        }
        Header::decode(l, &self.hdr)
    }

    fn complete(&mut self, l: Layout, header: Header, data_digest: Option<u32>) -> Received {
        self.hdr_have = 0;
        self.hdgst_have = 0;
        self.step = if l.ty.is_term_req() {
            Step::Stopped(RecvState::Terminated)
        } else if l.ty.is_ic() {
            self.phase = Phase::Running;
            Step::Stopped(RecvState::AwaitNegotiation)
        } else {
            Step::CommonHeader
        };
        let pdu = Pdu {
            header,
            data: std::mem::take(&mut self.data),
        };
        let computed = self.crc.value();
        match data_digest {
            Some(received) if received != computed => Received::BadDataDigest {
                pdu,
                received,
                computed,
            },
            _ => Received::Pdu(pdu),
        }
    }

    fn fail(&mut self, error: PduError) -> Fatal {
        self.step = Step::Stopped(RecvState::Failed);
        self.data = Vec::new();
        Fatal {
            error,
            header: self.hdr[..self.hdr_have].to_vec(),
            from: self.role,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::SplitMix64;
    use crate::pdu::error::Fes;
    use crate::pdu::header::flags;
    use crate::pdu::{C2HData, CapsuleCmd, CapsuleResp, H2CData, IcReq, IcResp, R2T};
    use crate::sqe::{Cqe, Sgl1, Sqe, Status};

    const LIMITS: Limits = Limits {
        max_data: 8192,
        max_in_capsule: 4096,
    };

    fn enc(p: &Pdu, f: &Framing) -> Vec<u8> {
        let mut w = Vec::new();
        p.encode(f, &mut w).unwrap();
        w
    }

    fn capsule(cid: u16, data: Vec<u8>) -> Pdu {
        let mut sqe = Sqe::new(0x01, cid);
        sqe.set_nsid(1);
        sqe.set_sgl1(if data.is_empty() {
            Sgl1::Transport { length: 65536 }
        } else {
            Sgl1::InCapsule {
                offset: 0,
                length: data.len() as u32,
            }
        });
        Pdu::new(Header::CapsuleCmd(CapsuleCmd { sqe }), data)
    }

    fn h2c(cid: u16, datao: u32, data: Vec<u8>) -> Pdu {
        Pdu::new(
            Header::H2CData(H2CData {
                cccid: cid,
                ttag: 1,
                datao,
                last: true,
            }),
            data,
        )
    }

    fn icreq(f: &Framing) -> Pdu {
        Pdu::new(
            Header::IcReq(IcReq {
                hdgst: f.header_digest,
                ddgst: f.data_digest,
                ..IcReq::default()
            }),
            vec![],
        )
    }

    /// What a host sends a controller: ICReq, capsules with and without
    /// data, write data, one of them as large as allowed.
    fn host_stream(f: &Framing) -> (Vec<u8>, Vec<Pdu>) {
        let pdus = vec![
            icreq(f),
            capsule(1, vec![]),
            capsule(2, (0..1024u32).map(|i| i as u8).collect()),
            capsule(3, vec![0xAB; 4096]),
            h2c(1, 0, vec![7; 8192]),
            h2c(1, 8192, vec![9; 12]),
            capsule(4, vec![]),
        ];
        let mut w = Vec::new();
        for p in &pdus {
            p.encode(f, &mut w).unwrap();
        }
        (w, pdus)
    }

    /// Feeds `bytes` in chunks of the sizes `chunk` gives, negotiating
    /// `f` after the IC PDU; returns what came out.
    fn run(
        rx: &mut Receiver,
        bytes: &[u8],
        f: Framing,
        chunk: &mut dyn FnMut() -> usize,
    ) -> (Vec<Received>, Option<Fatal>) {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = chunk().clamp(1, rest.len());
            let mut piece = &rest[..n];
            rest = &rest[n..];
            loop {
                match rx.feed(&mut piece) {
                    Some(Ok(r)) => {
                        out.push(r);
                        rx.negotiated(f);
                    }
                    Some(Err(e)) => return (out, Some(e)),
                    None => break,
                }
                assert!(rx.memory() <= rx.limits().bound());
            }
            assert!(piece.is_empty() || rx.state() == RecvState::Terminated);
        }
        (out, None)
    }

    fn framings() -> Vec<Framing> {
        let mut v = Vec::new();
        for pda in [0, 3, 31] {
            for h in [false, true] {
                for d in [false, true] {
                    v.push(Framing {
                        header_digest: h,
                        data_digest: d,
                        pda,
                    });
                }
            }
        }
        v
    }

    #[test]
    fn any_split_gives_the_same_pdus() {
        let mut rng = SplitMix64::new(21);
        for f in framings() {
            let (bytes, pdus) = host_stream(&f);
            let want: Vec<Received> = pdus.into_iter().map(Received::Pdu).collect();
            let mut whole = Receiver::new(Role::Controller, LIMITS);
            let got = run(&mut whole, &bytes, f, &mut || usize::MAX);
            assert_eq!(got, (want.clone(), None), "{f:?}");
            assert_eq!(whole.finish(), Ok(()));
            let mut bytewise = Receiver::new(Role::Controller, LIMITS);
            assert_eq!(
                run(&mut bytewise, &bytes, f, &mut || 1),
                (want.clone(), None)
            );
            for _ in 0..20 {
                let mut rx = Receiver::new(Role::Controller, LIMITS);
                let max = 1 + rng.index(300);
                let got = run(&mut rx, &bytes, f, &mut || 1 + rng.index(max));
                assert_eq!(got, (want.clone(), None), "{f:?}");
            }
        }
    }

    #[test]
    fn host_side_receives_what_a_controller_sends() {
        let f = Framing {
            header_digest: true,
            data_digest: true,
            pda: 0,
        };
        let pdus = vec![
            Pdu::new(
                Header::IcResp(IcResp {
                    hdgst: true,
                    ddgst: true,
                    maxh2cdata: 131072,
                    ..IcResp::default()
                }),
                vec![],
            ),
            Pdu::new(
                Header::R2T(R2T {
                    cccid: 5,
                    ttag: 1,
                    r2to: 0,
                    r2tl: 8192,
                }),
                vec![],
            ),
            Pdu::new(
                Header::C2HData(C2HData {
                    cccid: 6,
                    datao: 0,
                    last: true,
                    success: true,
                }),
                vec![3; 4096],
            ),
            Pdu::new(
                Header::CapsuleResp(CapsuleResp {
                    cqe: Cqe::new(5, Status::SUCCESS),
                }),
                vec![],
            ),
        ];
        let mut bytes = Vec::new();
        for p in &pdus {
            p.encode(&f, &mut bytes).unwrap();
        }
        let mut rx = Receiver::new(Role::Host, LIMITS);
        let got = run(&mut rx, &bytes, f, &mut || 7);
        assert_eq!(got, (pdus.into_iter().map(Received::Pdu).collect(), None));
    }

    #[test]
    fn states_follow_the_receive_algorithm() {
        // H2CData with both digests and CPDA 3 (16-byte alignment): 24
        // header, 4 digest, 4 padding, 8 data, 4 digest.
        let f = Framing {
            header_digest: true,
            data_digest: true,
            pda: 3,
        };
        let bytes = enc(&h2c(1, 0, vec![1; 8]), &f);
        assert_eq!(bytes.len(), 44);
        let mut rx = Receiver::after_ic(Role::Controller, LIMITS, f);
        let mut states = Vec::new();
        for (i, b) in bytes.iter().enumerate() {
            let mut one: &[u8] = std::slice::from_ref(b);
            let r = rx.feed(&mut one);
            assert!(one.is_empty());
            assert_eq!(r.is_some(), i == bytes.len() - 1);
            states.push(rx.state());
        }
        // The state after each byte is the step still to finish: the
        // 8th byte completes the common header, the 28th the header
        // digest, the 32nd the padding, the 40th the data.
        use RecvState::*;
        let mut want = vec![CommonHeader; 7];
        want.extend([Header; 20]);
        want.extend([Padding; 4]);
        want.extend([Data; 8]);
        want.extend([DataDigest; 4]);
        want.push(CommonHeader);
        assert_eq!(states, want);
        assert_eq!(rx.finish(), Ok(()));
    }

    #[test]
    fn nothing_is_read_between_icreq_and_icresp() {
        let f = Framing::default();
        let mut bytes = enc(&icreq(&f), &f);
        bytes.extend(enc(&capsule(1, vec![]), &f));
        let mut rx = Receiver::new(Role::Controller, LIMITS);
        let mut input: &[u8] = &bytes;
        assert!(matches!(rx.feed(&mut input), Some(Ok(Received::Pdu(_)))));
        assert_eq!(rx.state(), RecvState::AwaitNegotiation);
        assert_eq!(input.len(), 72);
        assert!(rx.feed(&mut input).is_none());
        assert_eq!(input.len(), 72, "nothing consumed before negotiation");
        assert!(rx.negotiated(f));
        assert!(!rx.negotiated(f));
        assert!(matches!(rx.feed(&mut input), Some(Ok(Received::Pdu(_)))));
        assert!(input.is_empty());
    }

    /// Feeds `bytes` to a fresh controller-side receiver that has
    /// negotiated `f`; returns the error.
    fn fatal_after_ic(bytes: &[u8], f: Framing) -> Fatal {
        let mut rx = Receiver::after_ic(Role::Controller, LIMITS, f);
        let mut input = bytes;
        loop {
            match rx.feed(&mut input) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    assert_eq!(rx.state(), RecvState::Failed);
                    let before = input.len();
                    assert!(rx.feed(&mut input).is_none());
                    assert_eq!(input.len(), before);
                    return e;
                }
                None => panic!("no error from {bytes:02x?}"),
            }
        }
    }

    #[test]
    fn wrong_types_and_sequence() {
        let f = Framing::default();
        // A controller-to-host type sent to the controller.
        let r2t = enc(
            &Pdu::new(
                Header::R2T(R2T {
                    r2tl: 1,
                    ..R2T::default()
                }),
                vec![],
            ),
            &f,
        );
        let e = fatal_after_ic(&r2t, f);
        assert_eq!(e.error, PduError::WrongDirection(PduType::R2T));
        assert_eq!(
            (e.error.fes(), e.error.fei()),
            (Fes::INVALID_HEADER_FIELD, 0)
        );
        assert_eq!(e.header, r2t[..8]);
        // Reserved and unknown types.
        for t in [0x08, 0x0A, 0x7F, 0xFF] {
            let mut b = enc(&capsule(1, vec![]), &f);
            b[0] = t;
            let e = fatal_after_ic(&b, f);
            assert_eq!(e.error, PduError::UnknownType(t));
        }
        // A second ICReq.
        let e = fatal_after_ic(&enc(&icreq(&f), &f), f);
        assert_eq!(e.error.fes(), Fes::PDU_SEQUENCE_ERROR);
        // A capsule before the ICReq.
        let mut rx = Receiver::new(Role::Controller, LIMITS);
        let b = enc(&capsule(1, vec![]), &f);
        let e = rx.feed(&mut &b[..]).unwrap().unwrap_err();
        assert_eq!(e.error, PduError::OutOfSequence(PduType::CapsuleCmd));
        // The TermReq a controller sends for it.
        let t = e.term_req();
        assert_eq!(
            t.header,
            Header::C2HTermReq(crate::pdu::TermReq {
                fes: Fes::PDU_SEQUENCE_ERROR,
                fei: 0
            })
        );
        assert_eq!(t.data, b[..8]);
    }

    #[test]
    fn a_host_term_req_ends_the_stream_at_any_time() {
        let f = Framing::default();
        let mut b = enc(&Pdu::term_req(Role::Host, Fes(1), 2, &[0; 24]), &f);
        b.extend(enc(&capsule(1, vec![]), &f));
        for mut rx in [
            Receiver::new(Role::Controller, LIMITS),
            Receiver::after_ic(Role::Controller, LIMITS, f),
        ] {
            let mut input: &[u8] = &b;
            let r = rx.feed(&mut input).unwrap().unwrap();
            assert_eq!(r.pdu().pdu_type(), PduType::H2CTermReq);
            assert_eq!(rx.state(), RecvState::Terminated);
            assert!(rx.feed(&mut input).is_none());
            assert_eq!(input.len(), 72);
            assert_eq!(rx.finish(), Ok(()));
        }
    }

    #[test]
    fn wrong_hlen_plen_pdo() {
        let f = Framing {
            header_digest: true,
            data_digest: false,
            pda: 0,
        };
        let good = enc(&capsule(1, vec![1; 16]), &f);
        for (at, v, fei) in [(2usize, 24u8, 2u32), (3, 72, 3), (3, 0, 3), (4, 75, 4)] {
            let mut b = good.clone();
            b[at] = v;
            let e = fatal_after_ic(&b, f);
            assert_eq!(
                (e.error.fes(), e.error.fei()),
                (Fes::INVALID_HEADER_FIELD, fei),
                "{e}"
            );
        }
        // The digest flag cleared although digests were negotiated.
        let mut b = good.clone();
        b[1] &= !flags::HDGSTF;
        assert_eq!(fatal_after_ic(&b, f).error.fei(), 1);
    }

    #[test]
    fn header_digest_is_checked_before_the_header_is_believed() {
        let f = Framing {
            header_digest: true,
            data_digest: false,
            pda: 0,
        };
        let mut b = enc(&capsule(1, vec![5; 64]), &f);
        // A wrong SGL length would be a PLEN error if it were believed.
        b[40] ^= 0x10;
        let e = fatal_after_ic(&b, f);
        assert!(matches!(e.error, PduError::HeaderDigest { .. }), "{e}");
        assert_eq!(e.error.fes(), Fes::HEADER_DIGEST_ERROR);
        assert_eq!(e.header.len(), 72);
        let mut b = enc(&capsule(1, vec![5; 64]), &f);
        b[73] ^= 1; // the digest itself
        assert_eq!(fatal_after_ic(&b, f).error.fes(), Fes::HEADER_DIGEST_ERROR);
    }

    #[test]
    fn data_digest_mismatch_is_reported_and_the_stream_goes_on() {
        let f = Framing {
            header_digest: false,
            data_digest: true,
            pda: 0,
        };
        let p = h2c(9, 0, vec![4; 32]);
        let mut b = enc(&p, &f);
        let n = b.len();
        b[30] ^= 0x80; // data
        b.extend(enc(&capsule(2, vec![]), &f));
        let mut rx = Receiver::after_ic(Role::Controller, LIMITS, f);
        let mut input: &[u8] = &b;
        match rx.feed(&mut input) {
            Some(Ok(Received::BadDataDigest {
                pdu,
                received,
                computed,
            })) => {
                assert_eq!(pdu.header, p.header);
                assert_ne!(received, computed);
                assert_eq!(computed, digest::crc32c(&b[24..56]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(input.len(), b.len() - n);
        assert_eq!(
            rx.feed(&mut input),
            Some(Ok(Received::Pdu(capsule(2, vec![]))))
        );
    }

    #[test]
    fn oversize_data_is_refused_before_any_memory_is_taken() {
        let f = Framing::default();
        let e = fatal_after_ic(&enc(&h2c(1, 0, vec![0; 8193]), &f)[..8], f);
        assert_eq!(
            e.error,
            PduError::DataTooLong {
                ty: PduType::H2CData,
                len: 8193,
                max: 8192
            }
        );
        assert_eq!(e.error.fes(), Fes::DATA_LIMIT_EXCEEDED);
        let e = fatal_after_ic(&enc(&capsule(1, vec![0; 4097]), &f)[..8], f);
        assert_eq!(e.error.fes(), Fes::DATA_LIMIT_EXCEEDED);
        // A PLEN of 4 GiB: refused on the common header alone.
        let mut b = enc(&h2c(1, 0, vec![0; 4]), &f);
        b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut rx = Receiver::after_ic(Role::Controller, LIMITS, f);
        assert!(rx.feed(&mut &b[..8]).unwrap().is_err());
        assert_eq!(rx.memory(), 0);
        // Exactly at the limit is fine and holds exactly that much.
        let b = enc(&h2c(1, 0, vec![0; 8192]), &f);
        let mut rx = Receiver::after_ic(Role::Controller, LIMITS, f);
        assert!(rx.feed(&mut &b[..30]).is_none());
        assert_eq!(rx.memory(), 8192);
    }

    #[test]
    fn a_recycled_buffer_carries_the_next_pdus_data() {
        let f = Framing::default();
        let mut rx = Receiver::after_ic(Role::Controller, LIMITS, f);
        let first = enc(&h2c(1, 0, vec![1; 4096]), &f);
        let p = match rx.feed(&mut &first[..]) {
            Some(Ok(Received::Pdu(p))) => p,
            other => panic!("{other:?}"),
        };
        let at = p.data.as_ptr();
        rx.recycle(p.data);
        assert_eq!(rx.memory(), 4096);
        let second = enc(&h2c(1, 4096, vec![2; 2048]), &f);
        let p = match rx.feed(&mut &second[..]) {
            Some(Ok(Received::Pdu(p))) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(p.data, vec![2; 2048]);
        assert_eq!(p.data.as_ptr(), at, "the same buffer, not a new one");
        assert_eq!(rx.memory(), 0);
        // A buffer over the limits is not kept.
        rx.recycle(vec![0; 1 << 20]);
        assert_eq!(rx.memory(), 0);
    }

    #[test]
    fn truncated_streams() {
        let f = Framing {
            header_digest: true,
            data_digest: true,
            pda: 0,
        };
        let b = enc(&h2c(1, 0, vec![8; 100]), &f);
        assert_eq!(b.len(), 28 + 100 + 4);
        for cut in [0, 1, 7, 8, 27, 28, 127, 128, 131, 132] {
            let mut rx = Receiver::after_ic(Role::Controller, LIMITS, f);
            let mut input = &b[..cut];
            let r = rx.feed(&mut input);
            assert!(input.is_empty());
            if cut == b.len() {
                assert!(r.is_some());
                assert_eq!(rx.finish(), Ok(()));
            } else if cut == 0 {
                assert_eq!(rx.finish(), Ok(()));
            } else {
                assert!(r.is_none());
                // Inside the common header only its own 8 bytes are
                // known to be missing; after it, the rest of PLEN.
                let t = rx.finish().unwrap_err();
                let missing = if cut < 8 { 8 - cut } else { b.len() - cut };
                assert_eq!(t.missing, missing as u64, "cut at {cut}");
            }
        }
    }

    #[test]
    fn fatal_term_req_reaches_the_host() {
        let f = Framing::default();
        let mut b = enc(&capsule(1, vec![1; 16]), &f);
        b[39 + 8] = 0x5A; // in-capsule data under a transport SGL
        let e = fatal_after_ic(&b, f);
        assert_eq!(
            (e.error.fes(), e.error.fei()),
            (Fes::UNSUPPORTED_PARAMETER, 47)
        );
        assert_eq!(e.header, b[..72]);
        let t = enc(&e.term_req(), &f);
        assert_eq!(t.len(), 24 + 72);
        let mut host = Receiver::after_ic(Role::Host, LIMITS, f);
        let got = host.feed(&mut &t[..]).unwrap().unwrap();
        assert_eq!(got, Received::Pdu(e.term_req()));
        assert_eq!(host.state(), RecvState::Terminated);
    }
}
