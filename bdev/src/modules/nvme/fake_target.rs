//! A scripted NVMe/TCP controller for the host's tests: blocking
//! threads, one per connection, an in-memory namespace, small limits
//! (512-byte blocks, 1 KiB in-capsule, 8 KiB MAXH2CDATA, MDTS 8 KiB) so that every path
//! of the host runs with few bytes, and misbehaviours on demand (the
//! kind of bad input a broken or hostile target sends). Built on the
//! nvme crate's wire layer; nothing of the exports crate.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nvme::fuzz::SplitMix64;
use nvme::pdu::header::{Framing, Role};
use nvme::pdu::{C2HData, CapsuleResp, Header, IcResp, Pdu, R2T};
use nvme::receive::{Limits, Received, Receiver};
use nvme::sqe::{Cqe, Fabrics, Sgl1, Sqe, Status};

pub(crate) const BS: usize = 512;
pub(crate) const BLOCKS: usize = 2048;
const MAXH2CDATA: u32 = 8192;
/// IOCCSZ for 1 KiB of in-capsule data.
const IOCCSZ: u32 = (1024 + 64) / 16;

/// What the target gets wrong, on I/O queues only (attach works).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Evil {
    None,
    /// Answers a Read with a response for a CID nobody sent.
    UnknownCid,
    /// Sends more C2H data than a Read asked for.
    DataBeyond,
    /// Sends a C2HTermReq on a Read.
    TermReq,
    /// Closes the connection on a Read.
    Close,
    /// Answers a Read twice.
    TwoResponses,
    /// Asks for data (R2T) of a write that carried it in the capsule.
    R2TForInCapsule,
    /// Never answers a Read, nor any Keep Alive: a target that hangs
    /// with its connections open.
    Silent,
    /// Answers each I/O command, at random from this seed, rightly or
    /// with one of the misbehaviours in `fuzz_answer` (fuzz_tests.rs).
    Fuzz(u64),
    /// Not a misbehaviour: the namespace doubles in size just as the
    /// host enables namespace notices (Set Features 0Bh), too early for
    /// an event, and no AER is ever answered.
    GrowsAtNotices,
}

pub(crate) struct FakeTarget {
    pub port: u16,
    pub nguid_id: u32,
    /// Connections open now.
    pub live: Arc<AtomicUsize>,
    /// Reads still to be answered by closing their connection (a
    /// target that drops a queue with I/O in flight).
    pub drop_reads: Arc<AtomicUsize>,
    /// Normal shutdown notifications (CC.SHN 01b) received.
    pub shutdowns: Arc<AtomicUsize>,
    evil: Evil,
    disk: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeTarget {
    pub fn start(evil: Evil) -> FakeTarget {
        static IDS: AtomicU32 = AtomicU32::new(1);
        let mut t = FakeTarget {
            port: 0,
            nguid_id: IDS.fetch_add(1, Ordering::Relaxed),
            live: Arc::new(AtomicUsize::new(0)),
            drop_reads: Arc::new(AtomicUsize::new(0)),
            shutdowns: Arc::new(AtomicUsize::new(0)),
            evil,
            disk: Arc::new(Mutex::new(vec![0u8; BS * BLOCKS])),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        t.listen();
        t
    }

    /// Listens on `self.port` (0: any), serving the same namespace.
    fn listen(&mut self) {
        let l = TcpListener::bind(("127.0.0.1", self.port)).expect("bind");
        self.port = l.local_addr().expect("addr").port();
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        self.stop = stop.clone();
        let (disk, live, drops, shuts, evil, id) = (
            self.disk.clone(),
            self.live.clone(),
            self.drop_reads.clone(),
            self.shutdowns.clone(),
            self.evil,
            self.nguid_id,
        );
        self.thread = Some(std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let (d, st, lv, dr, sh) = (
                            disk.clone(),
                            stop.clone(),
                            live.clone(),
                            drops.clone(),
                            shuts.clone(),
                        );
                        lv.fetch_add(1, Ordering::SeqCst);
                        // Each connection its own stream of choices.
                        let evil = match evil {
                            Evil::Fuzz(seed) => Evil::Fuzz(
                                seed.wrapping_mul(0x100_0000_01B3)
                                    .wrapping_add(conns.len() as u64),
                            ),
                            e => e,
                        };
                        conns.push(std::thread::spawn(move || {
                            serve(s, d, evil, st, id, dr, sh);
                            lv.fetch_sub(1, Ordering::SeqCst);
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        }));
    }

    /// Goes away: the port is closed and every connection dropped (the
    /// namespace's data is kept for `restart`).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Comes back on the same port with the same namespace.
    pub fn restart(&mut self) {
        self.stop();
        self.listen();
    }
}

impl Drop for FakeTarget {
    fn drop(&mut self) {
        self.stop();
    }
}

fn identify_ctrlr() -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    b[4..12].copy_from_slice(b"FAKE0001");
    b[24..28].copy_from_slice(b"Fake");
    b[64..67].copy_from_slice(b"0.1");
    b[77] = 1; // MDTS: 8 KiB
    b[78..80].copy_from_slice(&1u16.to_le_bytes());
    b[80..84].copy_from_slice(&0x0001_0300u32.to_le_bytes());
    b[320..322].copy_from_slice(&10u16.to_le_bytes());
    b[514..516].copy_from_slice(&32u16.to_le_bytes());
    b[516..520].copy_from_slice(&1u32.to_le_bytes());
    b[520..522].copy_from_slice(&0x0Cu16.to_le_bytes());
    b[525] = 1;
    b[536..540].copy_from_slice(&0x0010_0001u32.to_le_bytes());
    b[1792..1796].copy_from_slice(&IOCCSZ.to_le_bytes());
    b[1796..1800].copy_from_slice(&1u32.to_le_bytes());
    b
}

/// Namespace `id`'s Identify data; `id` becomes its NGUID, unique per
/// target (a host refuses two namespaces with one identity).
fn identify_ns(id: u32, nsze: usize) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    b[0..8].copy_from_slice(&(nsze as u64).to_le_bytes());
    b[8..16].copy_from_slice(&(nsze as u64).to_le_bytes());
    b[128..132].copy_from_slice(&0x0009_0000u32.to_le_bytes());
    b[104..108].copy_from_slice(&id.to_le_bytes());
    b[108] = 0x42;
    b
}

struct Conn {
    s: TcpStream,
    id: u32,
    rng: SplitMix64,
    drop_reads: Arc<AtomicUsize>,
    shutdowns: Arc<AtomicUsize>,
    framing: Framing,
    qid: u16,
    cc: u64,
    /// Writes waiting for H2C data: (slba, bytes so far, length).
    writes: HashMap<u16, (u64, Vec<u8>, u32)>,
    /// The namespace's size in blocks, as Identify reports it.
    nsze: usize,
}

impl Conn {
    fn send(&mut self, p: &Pdu) -> bool {
        let mut out = Vec::new();
        if p.encode(&self.framing, &mut out).is_err() {
            return false;
        }
        self.s.write_all(&out).is_ok()
    }

    fn respond(&mut self, cid: u16, status: Status, dw0: u32, dw1: u32) -> bool {
        let mut cqe = Cqe::new(cid, status);
        cqe.dw0 = dw0;
        cqe.dw1 = dw1;
        cqe.sqid = self.qid;
        self.send(&Pdu::new(
            Header::CapsuleResp(CapsuleResp { cqe }),
            Vec::new(),
        ))
    }

    /// Sends `data` as C2HData in two PDUs (offsets matter), then the
    /// response.
    fn c2h(&mut self, cid: u16, data: &[u8]) -> bool {
        let half = (data.len() / 2).max(1).min(data.len());
        for (at, part) in [(0, &data[..half]), (half, &data[half..])] {
            if part.is_empty() {
                continue;
            }
            let h = Header::C2HData(C2HData {
                cccid: cid,
                datao: at as u32,
                last: at + part.len() == data.len(),
                success: false,
            });
            if !self.send(&Pdu::new(h, part.to_vec())) {
                return false;
            }
        }
        self.respond(cid, Status::SUCCESS, 0, 0)
    }
}

fn serve(
    s: TcpStream,
    disk: Arc<Mutex<Vec<u8>>>,
    evil: Evil,
    stop: Arc<AtomicBool>,
    id: u32,
    drop_reads: Arc<AtomicUsize>,
    shutdowns: Arc<AtomicUsize>,
) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = s.set_nodelay(true);
    let mut c = Conn {
        s,
        id,
        rng: SplitMix64::new(match evil {
            Evil::Fuzz(seed) => seed,
            _ => 0,
        }),
        drop_reads,
        shutdowns,
        framing: Framing::default(),
        qid: 0,
        cc: 0,
        writes: HashMap::new(),
        nsze: BLOCKS,
    };
    let mut recv = Receiver::new(
        Role::Controller,
        Limits {
            max_data: MAXH2CDATA,
            max_in_capsule: 8192,
        },
    );
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        let n = match c.s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        };
        let mut input = &buf[..n];
        while !input.is_empty() {
            match recv.feed(&mut input) {
                Some(Ok(Received::Pdu(p))) => {
                    if !handle(&mut c, &mut recv, p, &disk, evil) {
                        return;
                    }
                }
                Some(Ok(Received::BadDataDigest { .. })) | Some(Err(_)) => return,
                None => break,
            }
        }
    }
}

fn lba(sqe: &Sqe) -> (u64, usize) {
    let slba = u64::from(sqe.cdw10()) | (u64::from(sqe.cdw11()) << 32);
    (slba, (sqe.cdw12() & 0xFFFF) as usize + 1)
}

/// One PDU; false ends the connection.
fn handle(c: &mut Conn, recv: &mut Receiver, p: Pdu, disk: &Mutex<Vec<u8>>, evil: Evil) -> bool {
    let d = || disk.lock().unwrap_or_else(|e| e.into_inner());
    match p.header {
        Header::IcReq(ic) => {
            let f = Framing {
                header_digest: ic.hdgst,
                data_digest: ic.ddgst,
                pda: 0,
            };
            let r = IcResp {
                pfv: 0,
                cpda: 0,
                hdgst: ic.hdgst,
                ddgst: ic.ddgst,
                maxh2cdata: MAXH2CDATA,
            };
            recv.negotiated(f);
            let ok = c.send(&Pdu::new(Header::IcResp(r), Vec::new()));
            c.framing = f;
            ok
        }
        Header::H2CData(h) => {
            let Some((slba, got, len)) = c.writes.get_mut(&h.cccid) else {
                return false;
            };
            if h.datao as usize != got.len() {
                return false;
            }
            got.extend_from_slice(&p.data);
            if got.len() < *len as usize {
                return true;
            }
            let (slba, data) = (*slba as usize, std::mem::take(got));
            c.writes.remove(&h.cccid);
            d()[slba * BS..slba * BS + data.len()].copy_from_slice(&data);
            c.respond(h.cccid, Status::SUCCESS, 0, 0)
        }
        Header::CapsuleCmd(cmd) => command(c, cmd.sqe, p.data, disk, evil),
        _ => false,
    }
}

fn command(c: &mut Conn, sqe: Sqe, data: Vec<u8>, disk: &Mutex<Vec<u8>>, evil: Evil) -> bool {
    let d = || disk.lock().unwrap_or_else(|e| e.into_inner());
    let cid = sqe.cid();
    if let Some(f) = sqe.fabrics() {
        return match f {
            Fabrics::Connect(k) => {
                c.qid = k.qid;
                c.respond(cid, Status::SUCCESS, 1, 0)
            }
            Fabrics::PropertyGet { offset, .. } => {
                let v: u64 = match offset {
                    0x00 => 31 | (1 << 24), // MQES 31, TO 500 ms
                    0x08 => 0x0001_0300,
                    0x14 => c.cc,
                    0x1C => (c.cc & 1) | if c.cc & (3 << 14) != 0 { 2 << 2 } else { 0 },
                    _ => 0,
                };
                c.respond(cid, Status::SUCCESS, v as u32, (v >> 32) as u32)
            }
            Fabrics::PropertySet { offset, value, .. } => {
                if offset == 0x14 {
                    if (value >> 14) & 3 == 1 && (c.cc >> 14) & 3 == 0 {
                        c.shutdowns.fetch_add(1, Ordering::SeqCst);
                    }
                    c.cc = value;
                }
                c.respond(cid, Status::SUCCESS, 0, 0)
            }
            Fabrics::Other(_) => c.respond(cid, Status::INVALID_OPCODE, 0, 0),
        };
    }
    if c.qid == 0 {
        return match sqe.opcode() {
            0x06 => match sqe.cdw10() & 0xFF {
                1 => c.c2h(cid, &identify_ctrlr()),
                0 => {
                    let ns = identify_ns(c.id, c.nsze);
                    c.c2h(cid, &ns)
                }
                2 => {
                    let mut l = vec![0u8; 4096];
                    if sqe.nsid() == 0 {
                        l[0] = 1;
                    }
                    c.c2h(cid, &l)
                }
                _ => c.respond(cid, Status::INVALID_FIELD, 0, 0),
            },
            0x09 => {
                if evil == Evil::GrowsAtNotices && sqe.cdw10() & 0xFF == 0x0B {
                    c.nsze = 2 * BLOCKS;
                }
                c.respond(cid, Status::SUCCESS, 0x0003_0003, 0)
            }
            0x18 if evil == Evil::Silent => true,
            // Asynchronous Event Requests: held (this target has no
            // events to tell).
            0x0C => true,
            _ => c.respond(cid, Status::SUCCESS, 0, 0),
        };
    }
    if let Evil::Fuzz(_) = evil {
        return fuzz_answer(c, sqe, data, disk);
    }
    match sqe.opcode() {
        0x02 if c
            .drop_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok() =>
        {
            false
        }
        0x02 => {
            let (slba, n) = lba(&sqe);
            let bytes = d()[slba as usize * BS..(slba as usize + n) * BS].to_vec();
            match evil {
                Evil::UnknownCid => c.respond(cid ^ 0x4000, Status::SUCCESS, 0, 0),
                Evil::DataBeyond => {
                    let mut more = bytes;
                    more.extend_from_slice(&[0; 512]);
                    c.c2h(cid, &more)
                }
                Evil::TermReq => {
                    let t = Pdu::term_req(
                        Role::Controller,
                        nvme::pdu::Fes::PDU_SEQUENCE_ERROR,
                        0,
                        &[1],
                    );
                    c.send(&t)
                }
                Evil::Close => false,
                Evil::Silent => true,
                Evil::TwoResponses => c.c2h(cid, &bytes) && c.respond(cid, Status::SUCCESS, 0, 0),
                Evil::None | Evil::R2TForInCapsule | Evil::Fuzz(_) | Evil::GrowsAtNotices => {
                    c.c2h(cid, &bytes)
                }
            }
        }
        0x01 => {
            let (slba, n) = lba(&sqe);
            let len = (n * BS) as u32;
            match sqe.sgl1() {
                Sgl1::InCapsule { .. } if evil == Evil::R2TForInCapsule => {
                    let r = R2T {
                        cccid: cid,
                        ttag: 1,
                        r2to: 0,
                        r2tl: len,
                    };
                    c.send(&Pdu::new(Header::R2T(r), Vec::new()))
                }
                Sgl1::InCapsule { .. } => {
                    let at = slba as usize * BS;
                    d()[at..at + data.len()].copy_from_slice(&data);
                    c.respond(cid, Status::SUCCESS, 0, 0)
                }
                _ => {
                    c.writes.insert(cid, (slba, Vec::new(), len));
                    let r = R2T {
                        cccid: cid,
                        ttag: cid,
                        r2to: 0,
                        r2tl: len,
                    };
                    c.send(&Pdu::new(Header::R2T(r), Vec::new()))
                }
            }
        }
        0x08 => {
            let (slba, n) = lba(&sqe);
            d()[slba as usize * BS..(slba as usize + n) * BS].fill(0);
            c.respond(cid, Status::SUCCESS, 0, 0)
        }
        0x09 => {
            for r in data
                .chunks_exact(16)
                .take((sqe.cdw10() & 0xFF) as usize + 1)
            {
                let n = u32::from_le_bytes([r[4], r[5], r[6], r[7]]) as usize;
                let mut s = [0u8; 8];
                s.copy_from_slice(&r[8..16]);
                let slba = u64::from_le_bytes(s) as usize;
                d()[slba * BS..(slba + n) * BS].fill(0);
            }
            c.respond(cid, Status::SUCCESS, 0, 0)
        }
        _ => c.respond(cid, Status::SUCCESS, 0, 0),
    }
}

/// One I/O command answered by a hostile target: about half rightly,
/// the rest one of the ways a broken or malicious target gets NVMe/TCP
/// wrong, chosen by the connection's seeded generator. Never silence:
/// the host has no command timeout but the keep-alive's, which this
/// target answers.
fn fuzz_answer(c: &mut Conn, sqe: Sqe, data: Vec<u8>, disk: &Mutex<Vec<u8>>) -> bool {
    let cid = sqe.cid();
    let fine = |c: &mut Conn, sqe: Sqe, data: Vec<u8>| command(c, sqe, data, disk, Evil::None);
    match c.rng.below(24) {
        // A response for another CID, perhaps one that is outstanding.
        12 => {
            let other = cid.wrapping_add(1 + c.rng.below(4) as u16);
            c.respond(other, Status::SUCCESS, 0, 0)
        }
        // The right answer, then a second response for the same CID.
        13 => fine(c, sqe, data) && c.respond(cid, Status::SUCCESS, 0, 0),
        // Short data: a read's data cut short (or none at all), then
        // success.
        14 => {
            let len = (sqe.cdw12() as usize & 0xFFFF).saturating_add(1) * BS;
            let short = vec![0xEEu8; c.rng.index(len)];
            if sqe.opcode() == 0x02 && !short.is_empty() {
                let h = Header::C2HData(C2HData {
                    cccid: cid,
                    datao: 0,
                    last: true,
                    success: false,
                });
                if !c.send(&Pdu::new(h, short)) {
                    return false;
                }
            }
            c.respond(cid, Status::SUCCESS, 0, 0)
        }
        // Data at an offset far beyond what the command moves.
        15 => {
            let h = Header::C2HData(C2HData {
                cccid: cid,
                datao: (1 << 30) + c.rng.below(1 << 20) as u32,
                last: c.rng.chance(1, 2),
                success: c.rng.chance(1, 2),
            });
            c.send(&Pdu::new(h, vec![0xAB; 512]))
        }
        // A header whose PLEN says gigabytes (or less than its header).
        16 => {
            let plen = if c.rng.chance(1, 2) { u32::MAX } else { 3 };
            let mut b = vec![0x05, 0, 24, 0];
            b.extend_from_slice(&plen.to_le_bytes());
            b.extend_from_slice(&[0u8; 16]);
            c.s.write_all(&b).is_ok()
        }
        // Random bytes.
        17 => {
            let n = 1 + c.rng.index(300);
            let b: Vec<u8> = (0..n).map(|_| c.rng.next_u64() as u8).collect();
            c.s.write_all(&b).is_ok()
        }
        // A response cut off in the middle, then the connection closes.
        18 => {
            let mut out = Vec::new();
            let cqe = Cqe::new(cid, Status::SUCCESS);
            let p = Pdu::new(Header::CapsuleResp(CapsuleResp { cqe }), Vec::new());
            if p.encode(&c.framing, &mut out).is_ok() {
                let cut = 1 + c.rng.index(out.len() - 1);
                let _ = c.s.write_all(&out[..cut]);
            }
            false
        }
        // An R2T asking for nothing, or for more than the command has.
        19 => {
            let r = R2T {
                cccid: cid,
                ttag: 7,
                r2to: c.rng.below(1 << 16) as u32,
                r2tl: if c.rng.chance(1, 2) { 0 } else { 1 << 24 },
            };
            c.send(&Pdu::new(Header::R2T(r), Vec::new()))
        }
        // An error status (the I/O fails; the connection stays).
        20 => {
            let st = [
                Status::INTERNAL_ERROR,
                Status::DATA_TRANSFER_ERROR,
                Status::ABORTED_SQ_DELETION,
                Status::INVALID_FIELD,
            ];
            let i = c.rng.index(st.len());
            c.respond(cid, st[i], 0, 0)
        }
        21 => {
            let t = Pdu::term_req(
                Role::Controller,
                nvme::pdu::Fes::INVALID_HEADER_FIELD,
                c.rng.below(8) as u32,
                &[0x05, 0, 24, 0],
            );
            let _ = c.send(&t);
            false
        }
        22 => false,
        // A PDU type a controller never sends (an H2CData).
        23 => {
            let h = Header::H2CData(nvme::pdu::H2CData {
                cccid: cid,
                ttag: 1,
                datao: 0,
                last: true,
            });
            c.send(&Pdu::new(h, vec![1; 16]))
        }
        _ => fine(c, sqe, data),
    }
}
