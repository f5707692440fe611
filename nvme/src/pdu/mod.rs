//! NVMe/TCP PDUs: [`header`] (the common header, PDU types, the
//! length/offset rules), [`types`] (each type's header fields, their
//! checks, the encoder) and [`error`] (what breaks the protocol and the
//! TermReq that answers it). A [`Pdu`] is a header and its data section;
//! receiving them from a byte stream is [`crate::receive`].

pub mod error;
pub mod header;
pub mod types;

pub use error::{EncodeError, Fes, PduError};
pub use header::{CommonHeader, Framing, Layout, PduType, Role};
pub use types::{C2HData, CapsuleCmd, CapsuleResp, H2CData, Header, IcReq, IcResp, TermReq, R2T};

use header::TERM_REQ_MAX_DATA;

/// A whole PDU: its header and its data section (in-capsule data, write
/// or read data, or for a TermReq the copied offending header).
#[derive(Clone, PartialEq, Eq)]
pub struct Pdu {
    pub header: Header,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Pdu {
    /// The data as its length, digest and first bytes: a log line or a
    /// failed assertion should not print 128 KiB.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head = &self.data[..self.data.len().min(8)];
        f.debug_struct("Pdu")
            .field("header", &self.header)
            .field(
                "data",
                &format_args!(
                    "{} bytes crc32c {:#010x} {:02x?}{}",
                    self.data.len(),
                    crate::digest::crc32c(&self.data),
                    head,
                    if self.data.len() > head.len() {
                        ".."
                    } else {
                        ""
                    }
                ),
            )
            .finish()
    }
}

impl Pdu {
    pub fn new(header: Header, data: Vec<u8>) -> Pdu {
        Pdu { header, data }
    }

    pub fn pdu_type(&self) -> PduType {
        self.header.pdu_type()
    }

    /// Appends the PDU as it goes on the wire, digests as `framing` says.
    pub fn encode(&self, framing: &Framing, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.header.encode(self.data.len(), framing, out)?;
        out.extend_from_slice(&self.data);
        if framing.dd(self.pdu_type(), self.data.len() as u32) != 0 {
            out.extend_from_slice(&crate::digest::crc32c(&self.data).to_le_bytes());
        }
        Ok(())
    }

    /// The TermReq `from` sends: `fes` and `fei`, and the first bytes (at
    /// most 128, at least one) of the offending PDU's header.
    pub fn term_req(from: Role, fes: Fes, fei: u32, offending: &[u8]) -> Pdu {
        let t = TermReq { fes, fei };
        let header = match from {
            Role::Host => Header::H2CTermReq(t),
            Role::Controller => Header::C2HTermReq(t),
        };
        let mut data = offending[..offending.len().min(TERM_REQ_MAX_DATA)].to_vec();
        if data.is_empty() {
            // A TermReq must copy something; a zero byte says "nothing
            // useful" without breaking its PLEN rule.
            data.push(0);
        }
        Pdu { header, data }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::header::{flags, CH_LEN, MAX_HLEN};
    use super::*;
    use crate::digest::{self, DIGEST_LEN};
    use crate::sqe::{Cqe, Sgl1, Sqe, Status};

    /// Decodes one PDU from a buffer that holds all of it, the plain way
    /// (no incremental state), so the encoder is checked against the
    /// rules directly; the receiver's tests check it agrees.
    fn decode_whole(buf: &[u8], framing: &Framing) -> Result<(Pdu, usize), PduError> {
        let ch = CommonHeader::decode(buf[..CH_LEN].try_into().unwrap());
        let ty = PduType::from_u8(ch.pdu_type).ok_or(PduError::UnknownType(ch.pdu_type))?;
        let l = Layout::check(&ch, ty, framing, u32::MAX)?;
        let mut h = [0u8; MAX_HLEN];
        h[..l.hlen].copy_from_slice(&buf[..l.hlen]);
        if l.hd != 0 {
            let got = digest::read(buf[l.hlen..l.hlen + 4].try_into().unwrap());
            let want = digest::crc32c(&buf[..l.hlen]);
            if got != want {
                return Err(PduError::HeaderDigest {
                    received: got,
                    computed: want,
                });
            }
        }
        let header = Header::decode(&l, &h)?;
        let at = l.head() + l.pad;
        let data = buf[at..at + l.data_len as usize].to_vec();
        if l.dd != 0 {
            let end = at + data.len();
            let got = digest::read(buf[end..end + 4].try_into().unwrap());
            assert_eq!(got, digest::crc32c(&data), "data digest");
        }
        Ok((Pdu { header, data }, l.plen as usize))
    }

    fn sqe_with(sgl: Sgl1) -> Sqe {
        let mut s = Sqe::new(0x01, 0x4007);
        s.set_nsid(1);
        s.set_sgl1(sgl);
        s.set_cdw(12, 7);
        s
    }

    /// One PDU of every type, with data where the type takes it.
    pub(crate) fn one_of_each() -> Vec<Pdu> {
        let data: Vec<u8> = (0..512u32).map(|i| (i * 31) as u8).collect();
        vec![
            Pdu::new(
                Header::IcReq(IcReq {
                    pfv: 0,
                    hpda: 0,
                    hdgst: true,
                    ddgst: false,
                    maxr2t: 0,
                }),
                vec![],
            ),
            Pdu::new(
                Header::IcResp(IcResp {
                    pfv: 0,
                    cpda: 0,
                    hdgst: true,
                    ddgst: true,
                    maxh2cdata: 131072,
                }),
                vec![],
            ),
            Pdu::term_req(Role::Host, Fes::HEADER_DIGEST_ERROR, 0, &[5; 24]),
            Pdu::term_req(Role::Controller, Fes::INVALID_HEADER_FIELD, 2, &[9; 200]),
            Pdu::new(
                Header::CapsuleCmd(CapsuleCmd {
                    sqe: sqe_with(Sgl1::Transport { length: 8192 }),
                }),
                vec![],
            ),
            Pdu::new(
                Header::CapsuleCmd(CapsuleCmd {
                    sqe: sqe_with(Sgl1::InCapsule {
                        offset: 0,
                        length: 512,
                    }),
                }),
                data.clone(),
            ),
            Pdu::new(
                Header::CapsuleResp(CapsuleResp {
                    cqe: Cqe {
                        dw0: 1,
                        dw1: 2,
                        sqhd: 3,
                        sqid: 4,
                        cid: 0x4007,
                        status: Status::LBA_OUT_OF_RANGE.with_dnr(),
                        phase: false,
                    },
                }),
                vec![],
            ),
            Pdu::new(
                Header::H2CData(H2CData {
                    cccid: 0x4007,
                    ttag: 3,
                    datao: 4096,
                    last: true,
                }),
                data.clone(),
            ),
            Pdu::new(
                Header::C2HData(C2HData {
                    cccid: 0x4007,
                    datao: 0,
                    last: true,
                    success: true,
                }),
                data[..100].to_vec(),
            ),
            Pdu::new(
                Header::R2T(R2T {
                    cccid: 0x4007,
                    ttag: 3,
                    r2to: 0,
                    r2tl: 65536,
                }),
                vec![],
            ),
        ]
    }

    fn framings() -> Vec<Framing> {
        let mut v = Vec::new();
        for pda in [0, 1, 3, 31] {
            for (header_digest, data_digest) in
                [(false, false), (true, false), (false, true), (true, true)]
            {
                v.push(Framing {
                    header_digest,
                    data_digest,
                    pda,
                });
            }
        }
        v
    }

    #[test]
    fn every_type_round_trips_under_every_framing() {
        for f in framings() {
            for p in one_of_each() {
                let mut wire = Vec::new();
                p.encode(&f, &mut wire).unwrap();
                let (back, len) =
                    decode_whole(&wire, &f).unwrap_or_else(|e| panic!("{p:?} {f:?}: {e}"));
                assert_eq!(len, wire.len());
                assert_eq!(back, p, "{f:?}");
                // Each PDU's own arithmetic (A.2.2).
                let ch = CommonHeader::decode(wire[..8].try_into().unwrap());
                let ty = p.pdu_type();
                let hd = f.hd(ty);
                assert_eq!(ch.hlen, ty.hlen());
                assert_eq!(ch.plen as usize, wire.len());
                assert_eq!(ch.flags & flags::HDGSTF != 0, hd != 0);
                if p.data.is_empty() {
                    assert_eq!((ch.pdo, ch.plen as usize), (0, ty.hlen() as usize + hd));
                } else if !ty.is_term_req() {
                    let dd = f.dd(ty, p.data.len() as u32);
                    assert_eq!(ch.pdo as u32 % f.alignment(), 0);
                    assert!((ch.pdo as usize) < ty.hlen() as usize + hd + f.alignment() as usize);
                    assert_eq!(ch.plen as usize, ch.pdo as usize + p.data.len() + dd);
                    assert_eq!(ch.flags & flags::DDGSTF != 0, dd != 0);
                }
            }
        }
    }

    #[test]
    fn wire_bytes_of_known_pdus() {
        // The ICReq example of A.4.
        let mut w = Vec::new();
        Pdu::new(Header::IcReq(IcReq::default()), vec![])
            .encode(&Framing::default(), &mut w)
            .unwrap();
        let mut want = vec![0x00, 0x00, 0x80, 0x00, 0x80, 0x00, 0x00, 0x00];
        want.resize(128, 0);
        assert_eq!(w, want);
        // The CapsuleResp digest vector of A.3.
        let mut w = Vec::new();
        let mut cqe = Cqe::new(0, Status::SUCCESS);
        cqe.dw0 = 1;
        cqe.sqhd = 1;
        Pdu::new(Header::CapsuleResp(CapsuleResp { cqe }), vec![])
            .encode(
                &Framing {
                    header_digest: true,
                    ..Framing::default()
                },
                &mut w,
            )
            .unwrap();
        assert_eq!(
            w,
            [
                0x05, 0x01, 0x18, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x42, 0x62, 0x33, 0x32
            ]
        );
        // A TermReq: FEI at byte 10, PDO 0, the header copy at 24.
        let mut w = Vec::new();
        Pdu::term_req(
            Role::Controller,
            Fes::INVALID_HEADER_FIELD,
            0x0102_0304,
            &[0xAA; 8],
        )
        .encode(&Framing::default(), &mut w)
        .unwrap();
        assert_eq!(&w[..14], &[0x03, 0, 24, 0, 32, 0, 0, 0, 1, 0, 4, 3, 2, 1]);
        assert_eq!(&w[24..], &[0xAA; 8]);
        // H2CData with both digests: PDO 28, DATAL, trailing DDGST.
        let mut w = Vec::new();
        Pdu::new(
            Header::H2CData(H2CData {
                cccid: 1,
                ttag: 2,
                datao: 3,
                last: true,
            }),
            b"abcd".to_vec(),
        )
        .encode(
            &Framing {
                header_digest: true,
                data_digest: true,
                pda: 0,
            },
            &mut w,
        )
        .unwrap();
        assert_eq!(&w[..8], &[0x06, 0x07, 24, 28, 36, 0, 0, 0]);
        assert_eq!(&w[8..20], &[1, 0, 2, 0, 3, 0, 0, 0, 4, 0, 0, 0]);
        assert_eq!(&w[28..32], b"abcd");
        assert_eq!(&w[32..], &digest::crc32c(b"abcd").to_le_bytes());
        assert_eq!(w.len(), 28 + 4 + DIGEST_LEN);
    }

    #[test]
    fn encoder_refuses_what_the_wire_cannot_carry() {
        let f = Framing::default();
        let mut w = Vec::new();
        let r2t = Header::R2T(R2T::default());
        assert!(matches!(
            r2t.encode(1, &f, &mut w),
            Err(EncodeError::DataNotAllowed { .. })
        ));
        let h2c = Header::H2CData(H2CData::default());
        assert!(matches!(
            h2c.encode(0, &f, &mut w),
            Err(EncodeError::DataRequired { .. })
        ));
        assert!(matches!(
            h2c.encode(u32::MAX as usize, &f, &mut w),
            Err(EncodeError::TooLong { .. })
        ));
        let bad = Header::C2HData(C2HData {
            success: true,
            ..C2HData::default()
        });
        assert_eq!(
            bad.encode(4, &f, &mut w),
            Err(EncodeError::SuccessWithoutLast)
        );
        let t = Header::H2CTermReq(TermReq {
            fes: Fes(1),
            fei: 0,
        });
        assert_eq!(
            t.encode(129, &f, &mut w),
            Err(EncodeError::TermReqData(129))
        );
        assert_eq!(
            h2c.encode(4, &Framing { pda: 32, ..f }, &mut w),
            Err(EncodeError::Alignment(32))
        );
        assert!(w.is_empty(), "a refused PDU writes nothing");
        assert_eq!(Pdu::term_req(Role::Host, Fes(1), 0, &[]).data, vec![0]);
    }

    #[test]
    fn psh_checks() {
        let f = Framing::default();
        let enc = |p: Pdu| {
            let mut w = Vec::new();
            p.encode(&f, &mut w).unwrap();
            w
        };
        let fails = |w: &[u8], fes: Fes, fei: u32| {
            let e = decode_whole(w, &f).unwrap_err();
            assert_eq!((e.fes(), e.fei()), (fes, fei), "{e}");
        };
        let ic = enc(Pdu::new(Header::IcReq(IcReq::default()), vec![]));
        let mut w = ic.clone();
        w[8] = 1;
        fails(&w, Fes::INVALID_HEADER_FIELD, 8);
        let mut w = ic.clone();
        w[10] = 32;
        fails(&w, Fes::INVALID_HEADER_FIELD, 10);
        let mut w = ic.clone();
        w[10] = 31;
        assert!(decode_whole(&w, &f).is_ok());
        let resp = |max: u32| {
            enc(Pdu::new(
                Header::IcResp(IcResp {
                    maxh2cdata: max,
                    ..IcResp::default()
                }),
                vec![],
            ))
        };
        assert!(decode_whole(&resp(4096), &f).is_ok());
        fails(&resp(4092), Fes::INVALID_HEADER_FIELD, 12);
        fails(&resp(4098), Fes::INVALID_HEADER_FIELD, 12);
        // DATAL that disagrees with PLEN; offset + length past 4 GiB.
        let h2c = enc(Pdu::new(Header::H2CData(H2CData::default()), vec![1; 8]));
        let mut w = h2c.clone();
        w[16] = 9;
        fails(&w, Fes::INVALID_HEADER_FIELD, 16);
        let mut w = h2c.clone();
        w[12..16].copy_from_slice(&(u32::MAX - 4).to_le_bytes());
        fails(&w, Fes::DATA_OUT_OF_RANGE, 0);
        let r2t = |len: u32| {
            enc(Pdu::new(
                Header::R2T(R2T {
                    r2to: 16,
                    r2tl: len,
                    ..R2T::default()
                }),
                vec![],
            ))
        };
        fails(&r2t(0), Fes::INVALID_HEADER_FIELD, 16);
        fails(&r2t(u32::MAX), Fes::DATA_OUT_OF_RANGE, 0);
        // SUCCESS without LAST_PDU.
        let mut w = enc(Pdu::new(Header::C2HData(C2HData::default()), vec![1; 4]));
        w[1] |= flags::SUCCESS;
        fails(&w, Fes::INVALID_HEADER_FIELD, 1);
    }

    #[test]
    fn capsule_data_must_match_its_sgl() {
        let f = Framing::default();
        let cap = |sgl: Sgl1, data: Vec<u8>| {
            let mut w = Vec::new();
            Pdu::new(Header::CapsuleCmd(CapsuleCmd { sqe: sqe_with(sgl) }), data)
                .encode(&f, &mut w)
                .unwrap();
            decode_whole(&w, &f)
                .map(|_| ())
                .map_err(|e| (e.fes(), e.fei()))
        };
        let ic = |offset, length| Sgl1::InCapsule { offset, length };
        assert_eq!(cap(ic(0, 16), vec![0; 16]), Ok(()));
        assert_eq!(cap(ic(0, 0), vec![]), Ok(()));
        assert_eq!(
            cap(ic(0, 17), vec![0; 16]),
            Err((Fes::INVALID_HEADER_FIELD, 4))
        );
        assert_eq!(cap(ic(0, 16), vec![]), Err((Fes::INVALID_HEADER_FIELD, 4)));
        assert_eq!(
            cap(ic(8, 16), vec![0; 16]),
            Err((Fes::UNSUPPORTED_PARAMETER, 32))
        );
        assert_eq!(
            cap(Sgl1::Transport { length: 16 }, vec![0; 16]),
            Err((Fes::UNSUPPORTED_PARAMETER, 47))
        );
        // No data and an SGL TCP refuses: the command layer's business.
        assert_eq!(
            cap(
                Sgl1::Keyed {
                    subtype: 0,
                    address: 0,
                    length: 4096,
                    key: 1
                },
                vec![]
            ),
            Ok(())
        );
    }

    #[test]
    fn header_digest_covers_exactly_the_header() {
        let f = Framing {
            header_digest: true,
            ..Framing::default()
        };
        let mut w = Vec::new();
        Pdu::new(
            Header::R2T(R2T {
                r2tl: 1,
                ..R2T::default()
            }),
            vec![],
        )
        .encode(&f, &mut w)
        .unwrap();
        assert_eq!(w.len(), 28);
        assert_eq!(
            digest::read(w[24..28].try_into().unwrap()),
            digest::crc32c(&w[..24])
        );
        w[20] ^= 1; // a reserved byte: still covered
        assert_eq!(
            decode_whole(&w, &f).unwrap_err().fes(),
            Fes::HEADER_DIGEST_ERROR
        );
    }
}
