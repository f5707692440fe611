//! The PDU-specific headers of every PDU type (protocols.md A.4, A.5):
//! typed fields, the checks each type's fields must pass, and the
//! encoder that writes a whole header (CH, PSH, header digest, padding)
//! for a given amount of data.

use super::error::{field, EncodeError, Fes, PduError};
use super::header::{flags, CommonHeader, DataRule, Framing, Layout, PduType, CH_LEN, MAX_HLEN};
use crate::digest;
use crate::sqe::{Cqe, Sgl1, Sqe, CQE_LEN, SQE_LEN};

/// ICReq: the host's first PDU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IcReq {
    /// PDU format version: 0.
    pub pfv: u16,
    /// Data alignment the host wants, 0's based dwords (0..=31).
    pub hpda: u8,
    pub hdgst: bool,
    pub ddgst: bool,
    /// 0's based R2Ts the host takes per command.
    pub maxr2t: u32,
}

/// ICResp: the controller's answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IcResp {
    pub pfv: u16,
    /// Data alignment the controller wants, 0's based dwords.
    pub cpda: u8,
    pub hdgst: bool,
    pub ddgst: bool,
    /// Most data bytes in one H2CData PDU.
    pub maxh2cdata: u32,
}

impl IcResp {
    /// The least MAXH2CDATA a host takes (Linux and SPDK refuse less).
    pub const MIN_MAXH2CDATA: u32 = 4096;
}

/// H2CTermReq and C2HTermReq; the PDU's data is the offending header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermReq {
    pub fes: Fes,
    /// For FES 0x01 and 0x06, the offending field's byte offset.
    pub fei: u32,
}

/// CapsuleCmd: a command, maybe with in-capsule data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapsuleCmd {
    pub sqe: Sqe,
}

/// CapsuleResp: a completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapsuleResp {
    pub cqe: Cqe,
}

/// H2CData: write data the controller asked for. DATAL is the length of
/// the PDU's data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct H2CData {
    pub cccid: u16,
    /// The R2T's transfer tag.
    pub ttag: u16,
    /// Offset in the command's data.
    pub datao: u32,
    /// Last PDU of this R2T.
    pub last: bool,
}

/// C2HData: read data. DATAL is the length of the PDU's data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct C2HData {
    pub cccid: u16,
    pub datao: u32,
    /// Last PDU of the command.
    pub last: bool,
    /// The command succeeded and no CapsuleResp follows (needs `last`).
    pub success: bool,
}

/// R2T: the controller asks for write data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct R2T {
    pub cccid: u16,
    pub ttag: u16,
    /// Where the solicited data starts in the command's data.
    pub r2to: u32,
    /// How much is solicited (non-zero).
    pub r2tl: u32,
}

/// The header of a PDU of any type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    IcReq(IcReq),
    IcResp(IcResp),
    H2CTermReq(TermReq),
    C2HTermReq(TermReq),
    CapsuleCmd(CapsuleCmd),
    CapsuleResp(CapsuleResp),
    H2CData(H2CData),
    C2HData(C2HData),
    R2T(R2T),
}

fn le16(h: &[u8; MAX_HLEN], at: usize) -> u16 {
    u16::from_le_bytes([h[at], h[at + 1]])
}

fn le32(h: &[u8; MAX_HLEN], at: usize) -> u32 {
    u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]])
}

fn put16(h: &mut [u8; MAX_HLEN], at: usize, v: u16) {
    h[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(h: &mut [u8; MAX_HLEN], at: usize, v: u32) {
    h[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

const DGST_HDGST: u8 = 1 << 0;
const DGST_DDGST: u8 = 1 << 1;

fn dgst_bits(h: bool, d: bool) -> u8 {
    (if h { DGST_HDGST } else { 0 }) | (if d { DGST_DDGST } else { 0 })
}

impl Header {
    pub fn pdu_type(&self) -> PduType {
        match self {
            Header::IcReq(_) => PduType::IcReq,
            Header::IcResp(_) => PduType::IcResp,
            Header::H2CTermReq(_) => PduType::H2CTermReq,
            Header::C2HTermReq(_) => PduType::C2HTermReq,
            Header::CapsuleCmd(_) => PduType::CapsuleCmd,
            Header::CapsuleResp(_) => PduType::CapsuleResp,
            Header::H2CData(_) => PduType::H2CData,
            Header::C2HData(_) => PduType::C2HData,
            Header::R2T(_) => PduType::R2T,
        }
    }

    /// Reads bytes `[0, HLEN)` of a PDU whose common header passed
    /// [`Layout::check`] and whose header digest (if any) matched, and
    /// checks the fields only the PSH can show wrong.
    pub fn decode(layout: &Layout, h: &[u8; MAX_HLEN]) -> Result<Header, PduError> {
        let ty = layout.ty;
        let bad = |offset, why| PduError::BadField { ty, offset, why };
        let last = layout.flags & flags::LAST_PDU != 0;
        Ok(match ty {
            PduType::IcReq | PduType::IcResp => {
                let pfv = le16(h, 8);
                if pfv != 0 {
                    return Err(bad(field::PFV, "PDU format version is not 0"));
                }
                let pda = h[10];
                if pda > Framing::MAX_PDA {
                    return Err(bad(field::PDA, "data alignment over 31 dwords"));
                }
                let (hdgst, ddgst) = (h[11] & DGST_HDGST != 0, h[11] & DGST_DDGST != 0);
                let v = le32(h, 12);
                if ty == PduType::IcReq {
                    Header::IcReq(IcReq {
                        pfv,
                        hpda: pda,
                        hdgst,
                        ddgst,
                        maxr2t: v,
                    })
                } else {
                    if v < IcResp::MIN_MAXH2CDATA || !v.is_multiple_of(4) {
                        return Err(bad(
                            field::MAXH2CDATA,
                            "MAXH2CDATA under 4096 or not a multiple of 4",
                        ));
                    }
                    Header::IcResp(IcResp {
                        pfv,
                        cpda: pda,
                        hdgst,
                        ddgst,
                        maxh2cdata: v,
                    })
                }
            }
            PduType::H2CTermReq | PduType::C2HTermReq => {
                let t = TermReq {
                    fes: Fes(le16(h, 8)),
                    fei: le32(h, 10),
                };
                if ty == PduType::H2CTermReq {
                    Header::H2CTermReq(t)
                } else {
                    Header::C2HTermReq(t)
                }
            }
            PduType::CapsuleCmd => {
                let mut sqe = Sqe::default();
                sqe.0.copy_from_slice(&h[CH_LEN..CH_LEN + SQE_LEN]);
                check_in_capsule(&sqe, layout)?;
                Header::CapsuleCmd(CapsuleCmd { sqe })
            }
            PduType::CapsuleResp => {
                let mut b = [0; CQE_LEN];
                b.copy_from_slice(&h[CH_LEN..CH_LEN + CQE_LEN]);
                Header::CapsuleResp(CapsuleResp {
                    cqe: Cqe::decode(&b),
                })
            }
            PduType::H2CData | PduType::C2HData | PduType::R2T => {
                let (cccid, tag, offset, len) = (le16(h, 8), le16(h, 10), le32(h, 12), le32(h, 16));
                if ty == PduType::R2T {
                    if len == 0 {
                        return Err(bad(field::DATAL, "R2TL is 0"));
                    }
                } else if len != layout.data_len {
                    return Err(bad(field::DATAL, "DATAL differs from the data PLEN leaves"));
                }
                if offset.checked_add(len).is_none() {
                    return Err(PduError::DataOutOfRange { ty, offset, len });
                }
                match ty {
                    PduType::H2CData => Header::H2CData(H2CData {
                        cccid,
                        ttag: tag,
                        datao: offset,
                        last,
                    }),
                    PduType::C2HData => {
                        let success = layout.flags & flags::SUCCESS != 0;
                        if success && !last {
                            return Err(PduError::BadFlags {
                                ty,
                                flags: layout.flags,
                                why: "SUCCESS without LAST_PDU",
                            });
                        }
                        Header::C2HData(C2HData {
                            cccid,
                            datao: offset,
                            last,
                            success,
                        })
                    }
                    _ => Header::R2T(R2T {
                        cccid,
                        ttag: tag,
                        r2to: offset,
                        r2tl: len,
                    }),
                }
            }
        })
    }

    /// Appends the PDU's header for `data_len` bytes of data: common
    /// header, PSH, header digest and padding, framed as `framing` says.
    /// The data and its digest are the caller's to append (so data can
    /// be sent from where it lies), or [`super::Pdu::encode`] does both.
    /// Never pads beyond the receiver's alignment: with PDA 0, PDO is
    /// HLEN plus the header digest, where Linux reads the data.
    pub fn encode(
        &self,
        data_len: usize,
        framing: &Framing,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let ty = self.pdu_type();
        if framing.pda > Framing::MAX_PDA {
            return Err(EncodeError::Alignment(framing.pda));
        }
        match ty.data() {
            DataRule::Never if data_len > 0 => {
                return Err(EncodeError::DataNotAllowed { ty, len: data_len })
            }
            DataRule::Always if data_len == 0 => return Err(EncodeError::DataRequired { ty }),
            _ => {}
        }
        if ty.is_term_req() && data_len > super::header::TERM_REQ_MAX_DATA {
            return Err(EncodeError::TermReqData(data_len));
        }
        let too_long = || EncodeError::TooLong { ty, len: data_len };
        let dl = u32::try_from(data_len).map_err(|_| too_long())?;
        let hlen = usize::from(ty.hlen());
        let hd = framing.hd(ty);
        let dd = framing.dd(ty, dl);
        let (pdo, data_at) = if dl == 0 {
            (0, hlen + hd)
        } else if ty.is_term_req() {
            (0, hlen)
        } else {
            let pdo = framing.data_offset(ty);
            (pdo, pdo as usize)
        };
        let plen = u32::try_from(data_at)
            .ok()
            .and_then(|a| a.checked_add(dl))
            .and_then(|p| p.checked_add(dd as u32))
            .ok_or_else(too_long)?;

        let mut h = [0u8; MAX_HLEN];
        let mut fl = 0;
        if hd != 0 {
            fl |= flags::HDGSTF;
        }
        if dd != 0 {
            fl |= flags::DDGSTF;
        }
        match self {
            Header::IcReq(r) => {
                put16(&mut h, 8, r.pfv);
                h[10] = r.hpda;
                h[11] = dgst_bits(r.hdgst, r.ddgst);
                put32(&mut h, 12, r.maxr2t);
            }
            Header::IcResp(r) => {
                put16(&mut h, 8, r.pfv);
                h[10] = r.cpda;
                h[11] = dgst_bits(r.hdgst, r.ddgst);
                put32(&mut h, 12, r.maxh2cdata);
            }
            Header::H2CTermReq(t) | Header::C2HTermReq(t) => {
                put16(&mut h, 8, t.fes.0);
                put32(&mut h, 10, t.fei);
            }
            Header::CapsuleCmd(c) => h[CH_LEN..CH_LEN + SQE_LEN].copy_from_slice(&c.sqe.0),
            Header::CapsuleResp(r) => h[CH_LEN..CH_LEN + CQE_LEN].copy_from_slice(&r.cqe.encode()),
            Header::H2CData(d) => {
                put16(&mut h, 8, d.cccid);
                put16(&mut h, 10, d.ttag);
                put32(&mut h, 12, d.datao);
                put32(&mut h, 16, dl);
                if d.last {
                    fl |= flags::LAST_PDU;
                }
            }
            Header::C2HData(d) => {
                if d.success && !d.last {
                    return Err(EncodeError::SuccessWithoutLast);
                }
                put16(&mut h, 8, d.cccid);
                put32(&mut h, 12, d.datao);
                put32(&mut h, 16, dl);
                if d.last {
                    fl |= flags::LAST_PDU;
                }
                if d.success {
                    fl |= flags::SUCCESS;
                }
            }
            Header::R2T(r) => {
                put16(&mut h, 8, r.cccid);
                put16(&mut h, 10, r.ttag);
                put32(&mut h, 12, r.r2to);
                put32(&mut h, 16, r.r2tl);
            }
        }
        let ch = CommonHeader {
            pdu_type: ty as u8,
            flags: fl,
            hlen: ty.hlen(),
            pdo: u8::try_from(pdo).map_err(|_| too_long())?,
            plen,
        };
        h[..CH_LEN].copy_from_slice(&ch.encode());
        out.extend_from_slice(&h[..hlen]);
        if hd != 0 {
            out.extend_from_slice(&digest::crc32c(&h[..hlen]).to_le_bytes());
        }
        out.resize(out.len() + (data_at - hlen - hd), 0);
        Ok(())
    }
}

/// A capsule's data section must be what its SGL describes: framing
/// depends on it, so a mismatch is fatal (A.2.3, A.7.4). A capsule
/// without data and an SGL TCP refuses is a bad command, not a bad PDU:
/// that is for the command layer ([`crate::sqe::SglError::status`]).
fn check_in_capsule(sqe: &Sqe, layout: &Layout) -> Result<(), PduError> {
    let ty = PduType::CapsuleCmd;
    let plen_mismatch = PduError::BadPlen {
        ty,
        plen: layout.plen,
        why: "in-capsule data length differs from the SGL length",
    };
    match sqe.sgl1() {
        Sgl1::InCapsule { offset, length } if layout.data_len > 0 => {
            if offset != 0 {
                return Err(PduError::Unsupported {
                    ty,
                    offset: field::SGL_ADDRESS,
                    why: "in-capsule data at a non-zero offset",
                });
            }
            if length != layout.data_len {
                return Err(plen_mismatch);
            }
        }
        Sgl1::InCapsule { length, .. } if length != 0 => return Err(plen_mismatch),
        _ if layout.data_len > 0 => {
            return Err(PduError::Unsupported {
                ty,
                offset: field::SGL_ID,
                why: "in-capsule data under an SGL that does not point at it",
            })
        }
        _ => {}
    }
    Ok(())
}
