//! A seeded fuzzer for the PDU receiver: valid PDU streams, mutated (bit
//! flips, truncations, splices, length lies, with and without a fixed-up
//! header digest), fed to a [`Receiver`] whole, in random splits and
//! byte by byte.
//!
//! What every case asserts:
//! - nothing panics (a panic is reported with the case's seed, which
//!   [`fuzz_case`] replays);
//! - the receiver never holds more than its [`Limits`] allow;
//! - how the bytes are split changes nothing: same PDUs, same end;
//! - every error is one a TermReq can carry (a defined FES, an FEI
//!   inside the copied header), and that TermReq encodes and is received
//!   by the peer as sent;
//! - every PDU received re-encodes to bytes that are received as the
//!   same PDU;
//! - a stream left unmutated comes out exactly as it went in.
//!
//! Self-contained (its own SplitMix64) so a seed means the same thing on
//! every machine and every build.

use std::panic::{self, AssertUnwindSafe};

use crate::digest;
use crate::pdu::header::{PduType, TERM_REQ_MAX_DATA};
use crate::pdu::{
    C2HData, CapsuleCmd, CapsuleResp, Fes, Framing, H2CData, Header, IcReq, IcResp, Pdu, Role, R2T,
};
use crate::receive::{Fatal, Limits, Received, Receiver, RecvState};
use crate::sqe::{Cqe, Sgl1, Sqe, Status};

/// SplitMix64: tiny, fast, and fully determined by its seed.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in `0..n` as a usize.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True `num` times in `den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        from.get(self.index(from.len())).copied()
    }
}

/// How one case's stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// At a PDU boundary.
    Clean,
    /// Inside a PDU: the stream was cut or a length lie left the
    /// receiver waiting.
    Truncated,
    /// The stream carried a TermReq.
    Terminated,
    /// A protocol error, answered with a TermReq of this status.
    Fatal(Fes),
}

/// What one case did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseOutcome {
    pub mutated: bool,
    pub bytes: usize,
    pub pdus: usize,
    pub bad_data_digests: usize,
    pub end: End,
    pub max_memory: usize,
}

/// Totals over a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FuzzReport {
    pub seed: u64,
    pub iterations: u64,
    /// Cases whose stream was not mutated (each received exactly).
    pub clean_streams: u64,
    pub bytes: u64,
    pub pdus: u64,
    pub bad_data_digests: u64,
    /// Cases ending at a PDU boundary.
    pub ended_clean: u64,
    pub truncated: u64,
    pub terminated: u64,
    /// Cases ending in a protocol error, by FES (index = FES, 1..=6).
    pub fatal: [u64; 7],
    /// The most data memory a receiver held.
    pub max_memory: usize,
}

impl FuzzReport {
    fn add(&mut self, o: &CaseOutcome) {
        if !o.mutated {
            self.clean_streams += 1;
        }
        self.bytes += o.bytes as u64;
        self.pdus += o.pdus as u64;
        self.bad_data_digests += o.bad_data_digests as u64;
        match o.end {
            End::Clean => self.ended_clean += 1,
            End::Truncated => self.truncated += 1,
            End::Terminated => self.terminated += 1,
            End::Fatal(f) => {
                if let Some(n) = self.fatal.get_mut(usize::from(f.0)) {
                    *n += 1;
                }
            }
        }
        self.max_memory = self.max_memory.max(o.max_memory);
    }
}

impl std::fmt::Display for FuzzReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} iterations {}: {} bytes, {} PDUs received ({} with a bad data digest), {} streams unmutated",
            self.seed, self.iterations, self.bytes, self.pdus, self.bad_data_digests, self.clean_streams
        )?;
        writeln!(
            f,
            "ends: {} clean, {} truncated, {} TermReq received, {} fatal",
            self.ended_clean,
            self.truncated,
            self.terminated,
            self.fatal.iter().sum::<u64>()
        )?;
        for (fes, n) in self.fatal.iter().enumerate().skip(1) {
            writeln!(f, "  FES {fes:#04x} {:<30} {n}", Fes(fes as u16).name())?;
        }
        write!(
            f,
            "most data memory held by a receiver: {} bytes",
            self.max_memory
        )
    }
}

/// The seed of case `i` of a run: every case is replayable on its own.
pub fn case_seed(seed: u64, i: u64) -> u64 {
    let mut r = SplitMix64::new(seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    r.next_u64()
}

/// Runs `iterations` cases from `seed`. Panics, naming the case, if any
/// property fails.
pub fn fuzz(seed: u64, iterations: u64) -> FuzzReport {
    let mut report = FuzzReport {
        seed,
        iterations,
        ..FuzzReport::default()
    };
    for i in 0..iterations {
        let case = case_seed(seed, i);
        match panic::catch_unwind(AssertUnwindSafe(|| fuzz_case(case))) {
            Ok(o) => report.add(&o),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| e.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                panic!(
                    "nvmf fuzz: seed {seed} iteration {i} failed (replay: fuzz_case({case:#x})): {msg}"
                );
            }
        }
    }
    report
}

/// One case: generate, mutate, receive every way, check.
pub fn fuzz_case(case: u64) -> CaseOutcome {
    let mut rng = SplitMix64::new(case);
    let role = if rng.chance(3, 4) {
        Role::Controller
    } else {
        Role::Host
    };
    let limits = Limits {
        max_data: rng.pick(&[4096, 8192, 16384]).unwrap_or(4096),
        max_in_capsule: rng.pick(&[4096, 8192]).unwrap_or(8192),
    };
    let framing = random_framing(&mut rng);
    let gen = generate(&mut rng, role, &limits, &framing);
    let mutated = rng.chance(4, 5);
    let mut bytes = gen.bytes.clone();
    if mutated {
        for _ in 0..1 + rng.below(3) {
            let other = generate(&mut rng, role, &limits, &framing);
            mutate(&mut rng, &mut bytes, &gen, &other.bytes, &framing);
        }
    }
    // Now and then the receiver is told a framing the sender did not
    // use: a negotiation the two ends read differently.
    let told = if mutated && rng.chance(1, 10) {
        random_framing(&mut rng)
    } else {
        framing
    };

    // Memory is compared to the bound, not between runs: a whole-stream
    // feed hands each PDU's buffer out within the call that filled it.
    let (whole, memory) = receive(&bytes, role, limits, told, &mut |rest| rest);
    let mut split_rng = SplitMix64::new(rng.next_u64());
    let (split, split_memory) = receive(&bytes, role, limits, told, &mut |rest| {
        let small = split_rng.chance(1, 2);
        1 + split_rng.index(rest.min(if small { 16 } else { 4096 }))
    });
    assert_eq!(whole, split, "random splits changed what was received");
    if rng.chance(1, 8) {
        let (bytewise, _) = receive(&bytes, role, limits, told, &mut |_| 1);
        assert_eq!(
            whole, bytewise,
            "byte-by-byte feeding changed what was received"
        );
    }

    for r in &whole.events {
        check_reencodes(r.pdu(), role, limits, told);
    }
    if let Some(f) = &whole.fatal {
        check_fatal(f, role);
    }
    if !mutated {
        let got: Vec<&Pdu> = whole.events.iter().map(Received::pdu).collect();
        let want: Vec<&Pdu> = gen.pdus.iter().collect();
        assert_eq!(got, want, "an unmutated stream was not received as sent");
        assert!(whole.events.iter().all(|r| matches!(r, Received::Pdu(_))));
        let want_end = if gen.ends_with_term_req {
            End::Terminated
        } else {
            End::Clean
        };
        assert_eq!(whole.end, want_end);
    }
    CaseOutcome {
        mutated,
        bytes: bytes.len(),
        pdus: whole.events.len(),
        bad_data_digests: whole
            .events
            .iter()
            .filter(|r| matches!(r, Received::BadDataDigest { .. }))
            .count(),
        end: whole.end,
        max_memory: memory.max(split_memory),
    }
}

fn random_framing(rng: &mut SplitMix64) -> Framing {
    Framing {
        header_digest: rng.chance(1, 2),
        data_digest: rng.chance(1, 2),
        pda: rng.pick(&[0, 0, 0, 0, 1, 3, 31]).unwrap_or(0),
    }
}

/// Everything a receiver made of a stream.
#[derive(Debug, PartialEq, Eq)]
struct Trace {
    events: Vec<Received>,
    fatal: Option<Fatal>,
    end: End,
}

/// Feeds `bytes` in pieces whose sizes `chunk` picks (given what is
/// left), answering the initialisation PDU with `told`.
fn receive(
    bytes: &[u8],
    role: Role,
    limits: Limits,
    told: Framing,
    chunk: &mut dyn FnMut(usize) -> usize,
) -> (Trace, usize) {
    let mut rx = Receiver::new(role, limits);
    let mut events = Vec::new();
    let mut fatal = None;
    let mut max_memory = 0;
    let mut rest = bytes;
    'stream: while !rest.is_empty() {
        let n = chunk(rest.len()).clamp(1, rest.len());
        let (piece, after) = rest.split_at(n);
        let mut piece = piece;
        loop {
            let r = rx.feed(&mut piece);
            let memory = rx.memory();
            assert!(
                memory <= limits.bound(),
                "receiver holds {memory} bytes, bound {}",
                limits.bound()
            );
            max_memory = max_memory.max(memory);
            match r {
                Some(Ok(ev)) => {
                    events.push(ev);
                    if rx.state() == RecvState::AwaitNegotiation {
                        assert!(rx.negotiated(told));
                    }
                }
                Some(Err(f)) => {
                    assert_eq!(rx.state(), RecvState::Failed);
                    // Stopped for good: more input changes nothing.
                    let mut more: &[u8] = after;
                    assert!(rx.feed(&mut more).is_none());
                    assert_eq!(more.len(), after.len());
                    fatal = Some(f);
                    break 'stream;
                }
                None if piece.is_empty() => break,
                None => {
                    assert_eq!(rx.state(), RecvState::Terminated, "input left unread");
                    break 'stream;
                }
            }
        }
        rest = after;
    }
    let end = match (&fatal, rx.state()) {
        (Some(f), _) => End::Fatal(f.error.fes()),
        (None, RecvState::Terminated) => End::Terminated,
        (None, _) => match rx.finish() {
            Ok(()) => End::Clean,
            Err(t) => {
                assert!(t.missing > 0);
                End::Truncated
            }
        },
    };
    (Trace { events, fatal, end }, max_memory)
}

/// An error must be one a TermReq carries, and that TermReq must reach
/// the peer intact.
fn check_fatal(f: &Fatal, role: Role) {
    let fes = f.error.fes();
    assert!(fes.is_defined(), "{f}: FES {fes:?}");
    assert!(
        (8..=TERM_REQ_MAX_DATA).contains(&f.header.len()),
        "{f}: {} header bytes",
        f.header.len()
    );
    assert!(
        (f.error.fei() as usize) < f.header.len(),
        "{f}: FEI {} outside the {} copied bytes",
        f.error.fei(),
        f.header.len()
    );
    let term = f.term_req();
    let mut wire = Vec::new();
    term.encode(&Framing::default(), &mut wire)
        .unwrap_or_else(|e| panic!("{f}: TermReq does not encode: {e}"));
    let mut peer = Receiver::after_ic(
        role.peer(),
        Limits {
            max_data: 4096,
            max_in_capsule: 4096,
        },
        Framing::default(),
    );
    let mut w: &[u8] = &wire;
    match peer.feed(&mut w) {
        Some(Ok(Received::Pdu(p))) => {
            assert_eq!(p, term);
            let t = match p.header {
                Header::C2HTermReq(t) | Header::H2CTermReq(t) => t,
                other => panic!("TermReq received as {other:?}"),
            };
            assert_eq!((t.fes, t.fei), (fes, f.error.fei()));
            assert_eq!(p.data, f.header);
        }
        other => panic!("{f}: the peer received the TermReq as {other:?}"),
    }
    assert!(w.is_empty());
    assert_eq!(peer.state(), RecvState::Terminated);
}

/// Decode, encode, decode: the second decode gives the first's PDU.
fn check_reencodes(p: &Pdu, role: Role, limits: Limits, framing: Framing) {
    let mut wire = Vec::new();
    p.encode(&framing, &mut wire)
        .unwrap_or_else(|e| panic!("received {p:?} does not re-encode: {e}"));
    let mut rx = if p.pdu_type().is_ic() {
        Receiver::new(role, limits)
    } else {
        Receiver::after_ic(role, limits, framing)
    };
    let mut w: &[u8] = &wire;
    match rx.feed(&mut w) {
        Some(Ok(Received::Pdu(q))) => assert_eq!(&q, p, "re-encoded PDU received differently"),
        other => panic!("re-encoded {p:?} received as {other:?}"),
    }
    assert!(w.is_empty());
}

/// A valid stream and what it holds.
struct Generated {
    bytes: Vec<u8>,
    pdus: Vec<Pdu>,
    /// Where each PDU starts in `bytes`.
    starts: Vec<usize>,
    ends_with_term_req: bool,
}

/// A data length: mostly small, sometimes up to or exactly the limit.
fn data_len(rng: &mut SplitMix64, max: u32) -> usize {
    let max = max.max(1) as usize;
    match rng.below(20) {
        0 => max,
        1 => max - rng.index(max.min(16)),
        2..=8 => 1 + rng.index(max.min(1024)),
        _ => 1 + rng.index(max.min(64)),
    }
}

/// Data whose content does not matter beyond its digest: one value,
/// a few bytes changed (cheap in a debug build, where tests run).
fn data(rng: &mut SplitMix64, len: usize) -> Vec<u8> {
    let mut d = vec![rng.next_u64() as u8; len];
    for _ in 0..4 {
        let i = rng.index(len);
        if let Some(b) = d.get_mut(i) {
            *b = rng.next_u64() as u8;
        }
    }
    d
}

fn random_sqe(rng: &mut SplitMix64) -> Sqe {
    let opcode = rng
        .pick(&[0x00, 0x01, 0x02, 0x06, 0x09, 0x7F, 0x18])
        .unwrap_or(0);
    let mut s = Sqe::new(opcode, rng.next_u64() as u16);
    s.set_nsid(rng.pick(&[0, 1, 2, u32::MAX]).unwrap_or(1));
    for n in 10..16 {
        s.set_cdw(n, rng.next_u64() as u32);
    }
    s
}

fn generate(rng: &mut SplitMix64, role: Role, limits: &Limits, f: &Framing) -> Generated {
    let mut pdus = Vec::new();
    pdus.push(match role {
        Role::Controller => Pdu::new(
            Header::IcReq(IcReq {
                pfv: 0,
                hpda: rng.below(32) as u8,
                hdgst: f.header_digest,
                ddgst: f.data_digest,
                maxr2t: rng.pick(&[0, 0, 3, u32::MAX]).unwrap_or(0),
            }),
            vec![],
        ),
        Role::Host => Pdu::new(
            Header::IcResp(IcResp {
                pfv: 0,
                cpda: rng.below(32) as u8,
                hdgst: f.header_digest,
                ddgst: f.data_digest,
                maxh2cdata: 4096 * (1 + rng.below(64) as u32),
            }),
            vec![],
        ),
    });
    for _ in 0..1 + rng.below(6) {
        let kind = rng.below(3);
        pdus.push(match (role, kind) {
            (Role::Controller, 0) => {
                let mut sqe = random_sqe(rng);
                sqe.set_sgl1(match rng.below(8) {
                    0 => Sgl1::Keyed {
                        subtype: 0,
                        address: rng.next_u64(),
                        length: 4096,
                        key: 7,
                    },
                    _ => Sgl1::Transport {
                        length: rng.next_u64() as u32,
                    },
                });
                Pdu::new(Header::CapsuleCmd(CapsuleCmd { sqe }), vec![])
            }
            (Role::Controller, 1) => {
                let n = data_len(rng, limits.max_in_capsule);
                let mut sqe = random_sqe(rng);
                sqe.set_sgl1(Sgl1::InCapsule {
                    offset: 0,
                    length: n as u32,
                });
                Pdu::new(Header::CapsuleCmd(CapsuleCmd { sqe }), data(rng, n))
            }
            (Role::Controller, _) => {
                let n = data_len(rng, limits.max_data);
                Pdu::new(
                    Header::H2CData(H2CData {
                        cccid: rng.next_u64() as u16,
                        ttag: rng.next_u64() as u16,
                        datao: rng.below(u64::from(u32::MAX) - n as u64) as u32,
                        last: rng.chance(1, 2),
                    }),
                    data(rng, n),
                )
            }
            (Role::Host, 0) => {
                let mut cqe = Cqe::new(
                    rng.next_u64() as u16,
                    Status::from_field(rng.next_u64() as u16).0,
                );
                cqe.dw0 = rng.next_u64() as u32;
                cqe.sqhd = rng.next_u64() as u16;
                Pdu::new(Header::CapsuleResp(CapsuleResp { cqe }), vec![])
            }
            (Role::Host, 1) => {
                let n = data_len(rng, limits.max_data);
                let last = rng.chance(1, 2);
                Pdu::new(
                    Header::C2HData(C2HData {
                        cccid: rng.next_u64() as u16,
                        datao: rng.below(1 << 30) as u32,
                        last,
                        success: last && rng.chance(1, 2),
                    }),
                    data(rng, n),
                )
            }
            (Role::Host, _) => {
                let r2tl = 1 + rng.below(1 << 24) as u32;
                Pdu::new(
                    Header::R2T(R2T {
                        cccid: rng.next_u64() as u16,
                        ttag: rng.next_u64() as u16,
                        r2to: rng.below(u64::from(u32::MAX - r2tl)) as u32,
                        r2tl,
                    }),
                    vec![],
                )
            }
        });
    }
    let ends_with_term_req = rng.chance(1, 8);
    if ends_with_term_req {
        let len = 1 + rng.index(TERM_REQ_MAX_DATA);
        let copy = data(rng, len);
        pdus.push(Pdu::term_req(
            role.peer(),
            Fes(1 + rng.below(6) as u16),
            rng.below(128) as u32,
            &copy,
        ));
    }
    let mut bytes = Vec::new();
    let mut starts = Vec::new();
    for p in &pdus {
        starts.push(bytes.len());
        // IC and TermReq PDUs ignore the framing; the rest follow it.
        p.encode(f, &mut bytes)
            .unwrap_or_else(|e| panic!("generated {p:?} does not encode: {e}"));
    }
    Generated {
        bytes,
        pdus,
        starts,
        ends_with_term_req,
    }
}

/// Applies one mutation. `other` is a second valid stream to splice from.
fn mutate(rng: &mut SplitMix64, b: &mut Vec<u8>, gen: &Generated, other: &[u8], f: &Framing) {
    if b.is_empty() {
        return;
    }
    // A PDU start still inside the (maybe already shortened) stream.
    let start = gen
        .starts
        .get(rng.index(gen.starts.len()))
        .copied()
        .filter(|&s| s + 8 <= b.len());
    // Drawn up front: a pick list cannot borrow the generator twice.
    let r = rng.next_u64();
    match rng.below(10) {
        0 => {
            let i = rng.index(b.len());
            b[i] ^= 1 << rng.below(8);
        }
        1 => {
            // A bit flip in a header, where it changes the framing.
            if let Some(s) = start {
                let i = (s + rng.index(24)).min(b.len() - 1);
                b[i] ^= 1 << rng.below(8);
                maybe_fix_digest(rng, b, s, f);
            }
        }
        2 => b.truncate(rng.index(b.len())),
        3 => {
            // Splice a piece of another stream in, at a PDU boundary or
            // anywhere.
            let from = rng.index(other.len());
            let len = rng.index((other.len() - from).min(512)) + 1;
            let piece = &other[from..(from + len).min(other.len())];
            let at = match start {
                Some(s) if rng.chance(1, 2) => s,
                _ => rng.index(b.len() + 1),
            };
            b.splice(at..at, piece.iter().copied());
        }
        4 => {
            // Length lies.
            if let Some(s) = start {
                let plen = u32::from_le_bytes([b[s + 4], b[s + 5], b[s + 6], b[s + 7]]);
                match rng.below(4) {
                    0 => {
                        let lie = rng
                            .pick(&[
                                0,
                                1,
                                7,
                                8,
                                23,
                                24,
                                25,
                                72,
                                127,
                                128,
                                129,
                                152,
                                153,
                                plen.wrapping_add(1),
                                plen.wrapping_sub(1),
                                plen.wrapping_add(4),
                                plen.wrapping_sub(4),
                                plen.wrapping_add(1 << 20),
                                u32::MAX,
                                r as u32,
                            ])
                            .unwrap_or(0);
                        b[s + 4..s + 8].copy_from_slice(&lie.to_le_bytes());
                    }
                    1 => {
                        let pdo = b[s + 3];
                        b[s + 3] = rng
                            .pick(&[
                                0,
                                24,
                                28,
                                72,
                                76,
                                128,
                                255,
                                pdo.wrapping_add(1),
                                pdo.wrapping_sub(4),
                                r as u8,
                            ])
                            .unwrap_or(0);
                    }
                    2 => {
                        b[s + 2] = rng.pick(&[0, 8, 24, 72, 128, 255, r as u8]).unwrap_or(0);
                    }
                    _ => {
                        // DATAL/R2TL, or a capsule's SGL length.
                        let at = if b[s] == PduType::CapsuleCmd as u8 {
                            s + 40
                        } else {
                            s + 16
                        };
                        if at + 4 <= b.len() {
                            let v = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                            let lie = rng
                                .pick(&[0, v.wrapping_add(1), v.wrapping_sub(1), u32::MAX])
                                .unwrap_or(0);
                            b[at..at + 4].copy_from_slice(&lie.to_le_bytes());
                        }
                    }
                }
                maybe_fix_digest(rng, b, s, f);
            }
        }
        5 => {
            if let Some(s) = start {
                b[s] = rng
                    .pick(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0xFF, r as u8])
                    .unwrap_or(0);
            }
        }
        6 => {
            if let Some(s) = start {
                b[s + 1] ^= 1 << rng.below(8);
                maybe_fix_digest(rng, b, s, f);
            }
        }
        7 => {
            let at = rng.index(b.len());
            let n = (1 + rng.index(16)).min(b.len() - at);
            b.drain(at..at + n);
        }
        8 => {
            let at = rng.index(b.len() + 1);
            let n = 1 + rng.index(16);
            let junk = data(rng, n);
            b.splice(at..at, junk);
        }
        _ => {
            // Corrupt the data digest (the last 4 bytes) of some PDU.
            if let Some(i) = gen.starts.iter().position(|&s| Some(s) == start) {
                let end = gen.starts.get(i + 1).copied().unwrap_or(gen.bytes.len());
                if end <= b.len() && end >= 4 {
                    b[end - 1 - rng.index(4)] ^= 1 << rng.below(8);
                }
            }
        }
    }
}

/// Half the time, recomputes the header digest of the PDU at `s` after a
/// header mutation, so the lie gets past the digest and the field checks
/// behind it are what catch it.
fn maybe_fix_digest(rng: &mut SplitMix64, b: &mut [u8], s: usize, f: &Framing) {
    if !f.header_digest || !rng.chance(1, 2) {
        return;
    }
    let Some(ty) = b.get(s).and_then(|&t| PduType::from_u8(t)) else {
        return;
    };
    if !ty.header_digest() {
        return;
    }
    let hlen = usize::from(ty.hlen());
    if s + hlen + 4 <= b.len() {
        let d = digest::crc32c(&b[s..s + hlen]);
        b[s + hlen..s + hlen + 4].copy_from_slice(&d.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_run_holds_every_property() {
        let r = fuzz(0x5EED_0021, 20_000);
        eprintln!("{r}");
        // The mutations must reach every kind of ending and most
        // statuses, or the fuzzer is not probing what it claims to.
        assert!(r.clean_streams > 2_000, "{r}");
        assert!(
            r.ended_clean > 0 && r.truncated > 0 && r.terminated > 0,
            "{r}"
        );
        assert!(r.bad_data_digests > 0, "{r}");
        for fes in 1..=6 {
            assert!(r.fatal[fes] > 0, "FES {fes} never seen\n{r}");
        }
        assert!(r.max_memory <= 16384, "{r}");
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        assert_eq!(fuzz(7, 300), fuzz(7, 300));
        assert_ne!(fuzz(7, 300).bytes, fuzz(8, 300).bytes);
    }
}
