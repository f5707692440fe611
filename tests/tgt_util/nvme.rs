//! A minimal NVMe/TCP host (one command at a time, blocking), built on
//! the exports crate's PDU layer: exact control over the wire, for data
//! checks and the error answers a real host never provokes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use exports::nvmf::pdu::header::{Framing, Role};
use exports::nvmf::pdu::{CapsuleCmd, H2CData, Header, IcReq, Pdu};
use exports::nvmf::receive::{Limits, Received, Receiver};
use exports::nvmf::sqe::{Connect, ConnectData, Cqe, Fabrics, PropertySize, Sgl1, Sqe};

pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:0f0e0d0c-0b0a-4908-8706-050403020100";
pub const HOSTID: [u8; 16] = [15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0];

pub struct Host {
    pub s: TcpStream,
    recv: Receiver,
    framing: Framing,
    next_cid: u16,
    pub qid: u16,
}

/// What a command came back with.
pub struct Reply {
    pub cqe: Cqe,
    pub data: Vec<u8>,
}

impl Reply {
    pub fn ok(&self) -> bool {
        self.cqe.status.is_success()
    }
    /// (status code type, status code)
    pub fn status(&self) -> (u8, u8) {
        (self.cqe.status.sct(), self.cqe.status.sc())
    }
}

impl Host {
    /// TCP connect and ICReq/ICResp, with or without digests.
    pub fn open(addr: &str, digests: bool) -> Host {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        let mut h = Host {
            s,
            recv: Receiver::new(
                Role::Host,
                Limits {
                    max_data: 1 << 21,
                    max_in_capsule: 0,
                },
            ),
            framing: Framing::default(),
            next_cid: 1,
            qid: 0,
        };
        let ic = IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: digests,
            ddgst: digests,
            maxr2t: 0,
        };
        h.send(&Pdu::new(Header::IcReq(ic), Vec::new()));
        match h.next().header {
            Header::IcResp(r) => {
                assert_eq!((r.hdgst, r.ddgst), (digests, digests));
                h.framing = Framing {
                    header_digest: r.hdgst,
                    data_digest: r.ddgst,
                    pda: 0,
                };
                assert!(h.recv.negotiated(Framing {
                    header_digest: r.hdgst,
                    data_digest: r.ddgst,
                    pda: r.cpda,
                }));
            }
            other => panic!("ICResp expected, got {other:?}"),
        }
        h
    }

    /// Opens and connects queue `qid` of `subnqn` (cntlid 0xFFFF on the
    /// admin queue); the Connect's reply.
    pub fn connect(addr: &str, subnqn: &str, qid: u16, cntlid: u16) -> (Host, Reply) {
        let mut h = Host::open(addr, false);
        let r = h.fabrics_connect(subnqn, HOSTNQN, qid, cntlid);
        (h, r)
    }

    pub fn fabrics_connect(&mut self, subnqn: &str, hostnqn: &str, qid: u16, cntlid: u16) -> Reply {
        let data = ConnectData {
            hostid: HOSTID,
            cntlid,
            subnqn: subnqn.into(),
            hostnqn: hostnqn.into(),
        }
        .encode()
        .unwrap();
        let c = Connect {
            recfmt: 0,
            qid,
            sqsize: 31,
            cattr: 0,
            kato: if qid == 0 { 30_000 } else { 0 },
        };
        let cid = self.cid();
        let sqe = Fabrics::Connect(c).to_sqe(
            cid,
            Sgl1::InCapsule {
                offset: 0,
                length: 1024,
            },
        );
        self.qid = qid;
        self.command(sqe, Some(data), 0)
    }

    /// An admin queue connected and enabled (CC.EN = 1, CSTS.RDY seen).
    pub fn admin(addr: &str, subnqn: &str) -> (Host, u16) {
        let (mut h, r) = Host::connect(addr, subnqn, 0, 0xFFFF);
        assert!(r.ok(), "admin Connect: {:?}", r.cqe);
        let cntlid = r.cqe.dw0 as u16;
        assert!(h.prop_set(0x14, 0x0046_0001).ok());
        assert_eq!(h.prop_get(0x1C, false).cqe.dw0 & 1, 1, "CSTS.RDY");
        (h, cntlid)
    }

    fn cid(&mut self) -> u16 {
        self.next_cid = self.next_cid.wrapping_add(1);
        self.next_cid
    }

    pub fn send(&mut self, p: &Pdu) {
        let out = self.encode(p);
        self.s.write_all(&out).unwrap();
    }

    /// The PDU's bytes as this connection frames them (to damage them).
    pub fn encode(&self, p: &Pdu) -> Vec<u8> {
        let mut out = Vec::new();
        p.encode(&self.framing, &mut out).unwrap();
        out
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// The next PDU; panics on a protocol error or a closed stream.
    pub fn next(&mut self) -> Pdu {
        self.try_next().expect("a PDU")
    }

    /// The next PDU, or None when the target closed the connection.
    pub fn try_next(&mut self) -> Option<Pdu> {
        let mut buf = [0u8; 1];
        loop {
            // One byte at a time: never reads past the PDU it needs.
            match self.s.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let mut input = &buf[..];
            match self.recv.feed(&mut input) {
                Some(Ok(Received::Pdu(p))) => return Some(p),
                Some(Ok(r)) => panic!("bad data digest from the target: {r:?}"),
                Some(Err(e)) => panic!("protocol error from the target: {e}"),
                None => {}
            }
        }
    }

    /// Sends `sqe` (its CID set here) with `data` in the capsule, or via
    /// R2T when it is longer than `in_capsule`; collects C2H data.
    pub fn command(&mut self, mut sqe: Sqe, data: Option<Vec<u8>>, in_capsule: usize) -> Reply {
        let cid = sqe.cid();
        let cid = if cid == 0 { self.cid() } else { cid };
        sqe.set_cid(cid);
        let mut r2t_data = None;
        let cap = match data {
            Some(d) if d.len() > in_capsule && sqe.opcode() != 0x7F => {
                sqe.set_sgl1(Sgl1::Transport {
                    length: d.len() as u32,
                });
                r2t_data = Some(d);
                Vec::new()
            }
            Some(d) => {
                if sqe.opcode() != 0x7F {
                    sqe.set_sgl1(Sgl1::InCapsule {
                        offset: 0,
                        length: d.len() as u32,
                    });
                }
                d
            }
            None => Vec::new(),
        };
        self.send(&Pdu::new(Header::CapsuleCmd(CapsuleCmd { sqe }), cap));
        let mut got = Vec::new();
        loop {
            let p = self.next();
            match p.header {
                Header::C2HData(c) => {
                    assert_eq!(c.cccid, cid);
                    assert_eq!(c.datao as usize, got.len());
                    got.extend_from_slice(&p.data);
                    if c.success {
                        let mut cqe = Cqe::new(cid, exports::nvmf::sqe::Status::SUCCESS);
                        cqe.sqid = self.qid;
                        return Reply { cqe, data: got };
                    }
                }
                Header::R2T(r) => {
                    let d = r2t_data.take().expect("an R2T for a command with data");
                    assert_eq!((r.cccid, r.r2to, r.r2tl as usize), (cid, 0, d.len()));
                    let h = H2CData {
                        cccid: cid,
                        ttag: r.ttag,
                        datao: 0,
                        last: true,
                    };
                    self.send(&Pdu::new(Header::H2CData(h), d));
                }
                Header::CapsuleResp(c) => {
                    assert_eq!(c.cqe.cid, cid);
                    return Reply {
                        cqe: c.cqe,
                        data: got,
                    };
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Sends every command (data in the capsule) in one write, as a host
    /// with a deep queue does, then collects the replies in any order:
    /// each command's, in the order given.
    pub fn burst(&mut self, cmds: Vec<(Sqe, Vec<u8>)>) -> Vec<Reply> {
        let mut out = Vec::new();
        let mut cids = Vec::new();
        for (mut sqe, data) in cmds {
            let cid = self.cid();
            sqe.set_cid(cid);
            if !data.is_empty() {
                sqe.set_sgl1(Sgl1::InCapsule {
                    offset: 0,
                    length: data.len() as u32,
                });
            }
            cids.push(cid);
            out.extend(self.encode(&Pdu::new(Header::CapsuleCmd(CapsuleCmd { sqe }), data)));
        }
        self.send_raw(&out);
        let mut data: std::collections::HashMap<u16, Vec<u8>> = Default::default();
        let mut done: std::collections::HashMap<u16, Reply> = Default::default();
        while done.len() < cids.len() {
            let p = self.next();
            match p.header {
                Header::C2HData(c) => {
                    let got = data.entry(c.cccid).or_default();
                    assert_eq!(c.datao as usize, got.len(), "C2HData in order");
                    got.extend_from_slice(&p.data);
                }
                Header::CapsuleResp(c) => {
                    let cid = c.cqe.cid;
                    let got = data.remove(&cid).unwrap_or_default();
                    assert!(
                        done.insert(
                            cid,
                            Reply {
                                cqe: c.cqe,
                                data: got
                            }
                        )
                        .is_none(),
                        "CID {cid} answered twice"
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        cids.iter().map(|c| done.remove(c).unwrap()).collect()
    }

    pub fn prop_get(&mut self, offset: u32, eight: bool) -> Reply {
        let size = if eight {
            PropertySize::Eight
        } else {
            PropertySize::Four
        };
        let sqe = Fabrics::PropertyGet { size, offset }.to_sqe(0, Sgl1::Transport { length: 0 });
        self.command(sqe, None, 0)
    }

    pub fn prop_set(&mut self, offset: u32, value: u64) -> Reply {
        let sqe = Fabrics::PropertySet {
            size: PropertySize::Four,
            offset,
            value,
        }
        .to_sqe(0, Sgl1::Transport { length: 0 });
        self.command(sqe, None, 0)
    }

    /// Identify with CNS `cns` for `nsid`: its 4096 bytes.
    pub fn identify(&mut self, cns: u8, nsid: u32) -> Reply {
        let mut sqe = Sqe::new(0x06, 0);
        sqe.set_nsid(nsid);
        sqe.set_cdw(10, u32::from(cns));
        sqe.set_sgl1(Sgl1::Transport { length: 4096 });
        self.command(sqe, None, 0)
    }

    pub fn read(&mut self, nsid: u32, slba: u64, blocks: u32, bs: u32) -> Reply {
        let mut sqe = Sqe::new(0x02, 0);
        sqe.set_nsid(nsid);
        sqe.set_cdw(10, slba as u32);
        sqe.set_cdw(11, (slba >> 32) as u32);
        sqe.set_cdw(12, blocks - 1);
        sqe.set_sgl1(Sgl1::Transport {
            length: blocks * bs,
        });
        self.command(sqe, None, 0)
    }

    /// A write, in the capsule if it fits `in_capsule` bytes, else by R2T.
    pub fn write(
        &mut self,
        nsid: u32,
        slba: u64,
        data: &[u8],
        bs: u32,
        in_capsule: usize,
    ) -> Reply {
        let mut sqe = Sqe::new(0x01, 0);
        sqe.set_nsid(nsid);
        sqe.set_cdw(10, slba as u32);
        sqe.set_cdw(11, (slba >> 32) as u32);
        sqe.set_cdw(12, data.len() as u32 / bs - 1);
        self.command(sqe, Some(data.to_vec()), in_capsule)
    }

    pub fn flush(&mut self, nsid: u32) -> Reply {
        let mut sqe = Sqe::new(0x00, 0);
        sqe.set_nsid(nsid);
        sqe.set_sgl1(Sgl1::Transport { length: 0 });
        self.command(sqe, None, 0)
    }
}
