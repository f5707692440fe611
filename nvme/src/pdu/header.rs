//! The common header every PDU starts with, the per-type constants, and
//! the length/offset rules (protocols.md A.2) checked as soon as the
//! 8 header bytes are in, before anything else of the PDU is read.

use super::error::PduError;
use crate::digest::DIGEST_LEN;

/// Bytes of the common header (CH).
pub const CH_LEN: usize = 8;

/// The longest PDU header (ICReq/ICResp), and with a header digest the
/// most a receiver holds before the data section.
pub const MAX_HLEN: usize = 128;

/// The most bytes of an offending header a TermReq copies.
pub const TERM_REQ_MAX_DATA: usize = 128;

/// Which end of a connection: who sends a PDU type, who runs a receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Host,
    Controller,
}

impl Role {
    /// The other end.
    pub fn peer(self) -> Role {
        match self {
            Role::Host => Role::Controller,
            Role::Controller => Role::Host,
        }
    }
}

/// PDU types (A.2.1). 0x08 is reserved; everything else above 0x09 is
/// unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PduType {
    IcReq = 0x00,
    IcResp = 0x01,
    H2CTermReq = 0x02,
    C2HTermReq = 0x03,
    CapsuleCmd = 0x04,
    CapsuleResp = 0x05,
    H2CData = 0x06,
    C2HData = 0x07,
    R2T = 0x09,
}

/// Whether a PDU type has a data section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataRule {
    Never,
    Optional,
    Always,
}

impl PduType {
    /// Every type, in wire order.
    pub const ALL: [PduType; 9] = [
        PduType::IcReq,
        PduType::IcResp,
        PduType::H2CTermReq,
        PduType::C2HTermReq,
        PduType::CapsuleCmd,
        PduType::CapsuleResp,
        PduType::H2CData,
        PduType::C2HData,
        PduType::R2T,
    ];

    /// The type a PDU-TYPE byte names, if any.
    pub fn from_u8(v: u8) -> Option<PduType> {
        PduType::ALL.into_iter().find(|t| *t as u8 == v)
    }

    /// The fixed HLEN of the type.
    pub const fn hlen(self) -> u8 {
        match self {
            PduType::IcReq | PduType::IcResp => 128,
            PduType::CapsuleCmd => 72,
            PduType::H2CTermReq
            | PduType::C2HTermReq
            | PduType::CapsuleResp
            | PduType::H2CData
            | PduType::C2HData
            | PduType::R2T => 24,
        }
    }

    /// Whether a negotiated header digest applies to the type.
    pub const fn header_digest(self) -> bool {
        matches!(
            self,
            PduType::CapsuleCmd
                | PduType::CapsuleResp
                | PduType::H2CData
                | PduType::C2HData
                | PduType::R2T
        )
    }

    /// Whether a negotiated data digest applies to the type's data.
    pub const fn data_digest(self) -> bool {
        matches!(
            self,
            PduType::CapsuleCmd | PduType::H2CData | PduType::C2HData
        )
    }

    /// Whether the type has a data section.
    pub const fn data(self) -> DataRule {
        match self {
            PduType::IcReq | PduType::IcResp | PduType::CapsuleResp | PduType::R2T => {
                DataRule::Never
            }
            PduType::CapsuleCmd => DataRule::Optional,
            PduType::H2CTermReq | PduType::C2HTermReq | PduType::H2CData | PduType::C2HData => {
                DataRule::Always
            }
        }
    }

    /// Who sends the type.
    pub const fn sender(self) -> Role {
        match self {
            PduType::IcReq | PduType::H2CTermReq | PduType::CapsuleCmd | PduType::H2CData => {
                Role::Host
            }
            PduType::IcResp
            | PduType::C2HTermReq
            | PduType::CapsuleResp
            | PduType::C2HData
            | PduType::R2T => Role::Controller,
        }
    }

    /// ICReq and ICResp: allowed once, first, and never with digests.
    pub const fn is_ic(self) -> bool {
        matches!(self, PduType::IcReq | PduType::IcResp)
    }

    /// H2CTermReq and C2HTermReq.
    pub const fn is_term_req(self) -> bool {
        matches!(self, PduType::H2CTermReq | PduType::C2HTermReq)
    }
}

// The header sizes the layouts in types.rs are written against.
const _: () = assert!(PduType::IcReq.hlen() as usize == MAX_HLEN);
const _: () = assert!(PduType::CapsuleCmd.hlen() as usize == CH_LEN + 64);
const _: () = assert!(PduType::CapsuleResp.hlen() as usize == CH_LEN + 16);
const _: () = assert!(PduType::H2CTermReq.hlen() as usize + TERM_REQ_MAX_DATA == 152);

/// FLAGS bits.
pub mod flags {
    /// A header digest follows the header.
    pub const HDGSTF: u8 = 1 << 0;
    /// A data digest follows the data.
    pub const DDGSTF: u8 = 1 << 1;
    /// H2CData: last of this R2T; C2HData: last of the command.
    pub const LAST_PDU: u8 = 1 << 2;
    /// C2HData: the command succeeded, no CapsuleResp follows.
    pub const SUCCESS: u8 = 1 << 3;
}

/// The 8-byte common header, fields as on the wire (PDU-TYPE unparsed:
/// an unknown type is a finding, not a decode failure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}

impl CommonHeader {
    /// Reads the header (little-endian PLEN).
    pub fn decode(b: &[u8; CH_LEN]) -> CommonHeader {
        CommonHeader {
            pdu_type: b[0],
            flags: b[1],
            hlen: b[2],
            pdo: b[3],
            plen: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    /// Writes the header.
    pub fn encode(&self) -> [u8; CH_LEN] {
        let p = self.plen.to_le_bytes();
        [
            self.pdu_type,
            self.flags,
            self.hlen,
            self.pdo,
            p[0],
            p[1],
            p[2],
            p[3],
        ]
    }
}

/// How the PDUs going one way on a connection are framed, as ICReq and
/// ICResp settled it: the digests both ways, and the data alignment the
/// *receiving* side asked for (CPDA for host-to-controller PDUs, HPDA for
/// controller-to-host ones), 0's based in dwords.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Framing {
    pub header_digest: bool,
    pub data_digest: bool,
    pub pda: u8,
}

impl Framing {
    /// The highest PDA (0's based dwords: 128-byte alignment).
    pub const MAX_PDA: u8 = 31;

    /// Data alignment in bytes.
    pub fn alignment(&self) -> u32 {
        (u32::from(self.pda) + 1) * 4
    }

    /// Header digest bytes a PDU of type `ty` carries.
    pub fn hd(&self, ty: PduType) -> usize {
        if self.header_digest && ty.header_digest() {
            DIGEST_LEN
        } else {
            0
        }
    }

    /// Data digest bytes a PDU of type `ty` with `data_len` data bytes
    /// carries.
    pub fn dd(&self, ty: PduType, data_len: u32) -> usize {
        if self.data_digest && ty.data_digest() && data_len > 0 {
            DIGEST_LEN
        } else {
            0
        }
    }

    /// The PDO of a PDU of type `ty` that carries data: the header and
    /// its digest, then the least padding that aligns the data. TermReqs
    /// say 0 (their table in A.5 does; nobody reads it).
    pub fn data_offset(&self, ty: PduType) -> u32 {
        if ty.is_term_req() {
            return 0;
        }
        let head = u32::from(ty.hlen()) + self.hd(ty) as u32;
        head.div_ceil(self.alignment()) * self.alignment()
    }
}

/// Where the parts of one PDU sit, from its validated common header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub ty: PduType,
    pub flags: u8,
    /// HLEN.
    pub hlen: usize,
    /// Header digest bytes (0 or 4).
    pub hd: usize,
    /// Padding between the header digest and the data.
    pub pad: usize,
    /// Bytes of data.
    pub data_len: u32,
    /// Data digest bytes (0 or 4).
    pub dd: usize,
    pub plen: u32,
}

impl Layout {
    /// Checks a common header against the rules of A.2 for a PDU of type
    /// `ty` framed as `framing`, carrying at most `max_data` data bytes.
    /// Direction and sequence are the caller's (they depend on who
    /// receives and when). Checked in header order, so the first bad
    /// field is the one reported.
    pub fn check(
        ch: &CommonHeader,
        ty: PduType,
        framing: &Framing,
        max_data: u32,
    ) -> Result<Layout, PduError> {
        let hlen = ty.hlen();
        if ch.hlen != hlen {
            return Err(PduError::BadHlen {
                ty,
                hlen: ch.hlen,
                expected: hlen,
            });
        }
        let bad_flags = |why| PduError::BadFlags {
            ty,
            flags: ch.flags,
            why,
        };
        // Linux and we set the digest flags on every PDU that carries
        // digests: a flag that disagrees with the negotiation means the
        // two ends frame the stream differently, and nothing after this
        // PDU could be read right.
        let hdgstf = ch.flags & flags::HDGSTF != 0;
        let hd = framing.hd(ty);
        if hdgstf != (hd != 0) {
            return Err(bad_flags(if hdgstf {
                "HDGSTF set, no header digest negotiated for this type"
            } else {
                "HDGSTF clear, header digests were negotiated"
            }));
        }
        let ddgstf = ch.flags & flags::DDGSTF != 0;
        let data_digests = framing.data_digest && ty.data_digest();
        if ddgstf && !data_digests {
            return Err(bad_flags(
                "DDGSTF set, no data digest negotiated for this type",
            ));
        }
        let bad_plen = |why| PduError::BadPlen {
            ty,
            plen: ch.plen,
            why,
        };
        let hlen = usize::from(hlen);

        if ty.is_term_req() {
            // No digests, data right after the header; PDO is written 0
            // (A.5) but HLEN is as good a reading of "where the data is",
            // so either is accepted.
            if ch.plen <= hlen as u32 || ch.plen > (hlen + TERM_REQ_MAX_DATA) as u32 {
                return Err(bad_plen("a TermReq copies 1..=128 header bytes"));
            }
            if ch.pdo != 0 && usize::from(ch.pdo) != hlen {
                return Err(PduError::BadPdo {
                    ty,
                    pdo: ch.pdo,
                    expected: 0,
                });
            }
            return Ok(Layout {
                ty,
                flags: ch.flags,
                hlen,
                hd: 0,
                pad: 0,
                data_len: ch.plen - hlen as u32,
                dd: 0,
                plen: ch.plen,
            });
        }

        let head = (hlen + hd) as u32;
        if ch.plen < head {
            return Err(bad_plen("shorter than the header"));
        }
        if ch.plen == head {
            if ch.pdo != 0 {
                return Err(PduError::BadPdo {
                    ty,
                    pdo: ch.pdo,
                    expected: 0,
                });
            }
            if ty.data() == DataRule::Always {
                return Err(bad_plen("this type must carry data"));
            }
            return Ok(Layout {
                ty,
                flags: ch.flags,
                hlen,
                hd,
                pad: 0,
                data_len: 0,
                dd: 0,
                plen: ch.plen,
            });
        }
        if ty.data() == DataRule::Never {
            return Err(bad_plen("this type carries no data"));
        }
        // Padding only ever brings the data to the receiver's alignment;
        // more than that is a sender that frames differently (Linux
        // ignores PDO and would read the padding as data).
        let pdo = framing.data_offset(ty);
        if u32::from(ch.pdo) != pdo {
            return Err(PduError::BadPdo {
                ty,
                pdo: ch.pdo,
                expected: u8::try_from(pdo).unwrap_or(u8::MAX),
            });
        }
        if data_digests && !ddgstf {
            return Err(bad_flags("DDGSTF clear, data digests were negotiated"));
        }
        let dd = if data_digests { DIGEST_LEN } else { 0 };
        let data_len = match ch.plen.checked_sub(pdo + dd as u32) {
            Some(n) if n > 0 => n,
            _ => return Err(bad_plen("no room for data after PDO")),
        };
        if data_len > max_data {
            return Err(PduError::DataTooLong {
                ty,
                len: data_len,
                max: max_data,
            });
        }
        Ok(Layout {
            ty,
            flags: ch.flags,
            hlen,
            hd,
            pad: (pdo - head) as usize,
            data_len,
            dd,
            plen: ch.plen,
        })
    }

    /// Bytes of header and header digest: what is read before the data.
    pub fn head(&self) -> usize {
        self.hlen + self.hd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::error::Fes;

    fn ch(ty: PduType, flags: u8, pdo: u8, plen: u32) -> CommonHeader {
        CommonHeader {
            pdu_type: ty as u8,
            flags,
            hlen: ty.hlen(),
            pdo,
            plen,
        }
    }

    const PLAIN: Framing = Framing {
        header_digest: false,
        data_digest: false,
        pda: 0,
    };
    const DIGESTS: Framing = Framing {
        header_digest: true,
        data_digest: true,
        pda: 0,
    };

    #[test]
    fn types_round_trip_and_reserved_is_unknown() {
        for t in PduType::ALL {
            assert_eq!(PduType::from_u8(t as u8), Some(t));
        }
        assert_eq!(PduType::from_u8(0x08), None);
        assert_eq!(PduType::from_u8(0x0A), None);
        assert_eq!(PduType::from_u8(0xFF), None);
    }

    #[test]
    fn common_header_round_trips_little_endian() {
        let h = CommonHeader {
            pdu_type: 4,
            flags: 3,
            hlen: 72,
            pdo: 76,
            plen: 0x0102_0304,
        };
        let b = h.encode();
        assert_eq!(b, [4, 3, 72, 76, 4, 3, 2, 1]);
        assert_eq!(CommonHeader::decode(&b), h);
    }

    #[test]
    fn no_data_pdus() {
        let l = Layout::check(&ch(PduType::R2T, 0, 0, 24), PduType::R2T, &PLAIN, 0).unwrap();
        assert_eq!((l.head(), l.data_len, l.dd), (24, 0, 0));
        let l = Layout::check(
            &ch(PduType::R2T, flags::HDGSTF, 0, 28),
            PduType::R2T,
            &DIGESTS,
            0,
        )
        .unwrap();
        assert_eq!((l.head(), l.data_len), (28, 0));
        // PLEN one short, one long; PDO set without data.
        for (pdo, plen, fei) in [(0, 23, 4), (0, 25, 4), (24, 24, 3)] {
            let e = Layout::check(&ch(PduType::R2T, 0, pdo, plen), PduType::R2T, &PLAIN, 0)
                .unwrap_err();
            assert_eq!((e.fes(), e.fei()), (Fes::INVALID_HEADER_FIELD, fei), "{e}");
        }
    }

    #[test]
    fn digest_flags_must_match_the_negotiation() {
        let e = Layout::check(&ch(PduType::R2T, 0, 0, 28), PduType::R2T, &DIGESTS, 0).unwrap_err();
        assert_eq!(e.fei(), 1);
        let e = Layout::check(
            &ch(PduType::R2T, flags::HDGSTF, 0, 28),
            PduType::R2T,
            &PLAIN,
            0,
        )
        .unwrap_err();
        assert_eq!(e.fei(), 1);
        // A data digest flag on a type that never has one.
        let e = Layout::check(
            &ch(PduType::CapsuleResp, flags::HDGSTF | flags::DDGSTF, 0, 28),
            PduType::CapsuleResp,
            &DIGESTS,
            0,
        )
        .unwrap_err();
        assert_eq!(e.fei(), 1);
        // Data carried, data digests negotiated, DDGSTF clear.
        let e = Layout::check(
            &ch(PduType::H2CData, flags::HDGSTF, 28, 28 + 8 + 4),
            PduType::H2CData,
            &DIGESTS,
            4096,
        )
        .unwrap_err();
        assert_eq!(e.fei(), 1);
        // IC PDUs never carry digests, whatever was asked.
        let e = Layout::check(
            &ch(PduType::IcReq, flags::HDGSTF, 0, 128),
            PduType::IcReq,
            &DIGESTS,
            0,
        )
        .unwrap_err();
        assert_eq!(e.fei(), 1);
    }

    #[test]
    fn data_pdus_with_digests_and_padding() {
        let f = DIGESTS;
        let l = Layout::check(
            &ch(PduType::CapsuleCmd, 3, 76, 76 + 1024 + 4),
            PduType::CapsuleCmd,
            &f,
            8192,
        )
        .unwrap();
        assert_eq!((l.head(), l.pad, l.data_len, l.dd), (76, 0, 1024, 4));
        // A capsule without in-capsule data: no PDO, no data digest
        // (DDGSTF on it is tolerated: a sender that always sets it frames
        // the same bytes).
        let l = Layout::check(
            &ch(PduType::CapsuleCmd, 3, 0, 76),
            PduType::CapsuleCmd,
            &f,
            8192,
        )
        .unwrap();
        assert_eq!((l.data_len, l.dd), (0, 0));
        // CPDA 31: data at 128.
        let f = Framing { pda: 31, ..DIGESTS };
        let l = Layout::check(
            &ch(PduType::H2CData, 3, 128, 128 + 4096 + 4),
            PduType::H2CData,
            &f,
            4096,
        )
        .unwrap();
        assert_eq!((l.head(), l.pad, l.data_len), (28, 100, 4096));
        // CPDA 1 (8 bytes): 28 rounds up to 32; 28 and 36 are wrong.
        let f = Framing { pda: 1, ..DIGESTS };
        assert!(Layout::check(
            &ch(PduType::H2CData, 3, 32, 32 + 8 + 4),
            PduType::H2CData,
            &f,
            4096
        )
        .is_ok());
        for pdo in [0, 24, 28, 36, 255] {
            let e = Layout::check(
                &ch(PduType::H2CData, 3, pdo, 64),
                PduType::H2CData,
                &f,
                4096,
            )
            .unwrap_err();
            assert_eq!(e.fei(), 3, "PDO {pdo}");
        }
    }

    #[test]
    fn data_length_limits() {
        // Exactly the limit, one over, the digest eating the data, and a
        // data PDU without data.
        let at = |plen| {
            Layout::check(
                &ch(PduType::H2CData, 0, 24, plen),
                PduType::H2CData,
                &PLAIN,
                4096,
            )
        };
        assert_eq!(at(24 + 4096).unwrap().data_len, 4096);
        let e = at(24 + 4097).unwrap_err();
        assert_eq!(e.fes(), Fes::DATA_LIMIT_EXCEEDED);
        let e = at(u32::MAX).unwrap_err();
        assert_eq!(e.fes(), Fes::DATA_LIMIT_EXCEEDED);
        let e = Layout::check(
            &ch(PduType::H2CData, 0, 0, 24),
            PduType::H2CData,
            &PLAIN,
            4096,
        )
        .unwrap_err();
        assert_eq!(e.fei(), 4);
        let e = Layout::check(
            &ch(PduType::H2CData, flags::DDGSTF, 24, 28),
            PduType::H2CData,
            &Framing {
                data_digest: true,
                ..PLAIN
            },
            4096,
        )
        .unwrap_err();
        assert_eq!(e.fei(), 4);
    }

    #[test]
    fn term_req_lengths() {
        let t = PduType::H2CTermReq;
        for (plen, ok) in [(24, false), (25, true), (152, true), (153, false)] {
            let r = Layout::check(&ch(t, 0, 0, plen), t, &DIGESTS, 128);
            assert_eq!(r.is_ok(), ok, "PLEN {plen}");
            if let Err(e) = r {
                assert_eq!(e.fei(), 4);
            }
        }
        assert_eq!(
            Layout::check(&ch(t, 0, 24, 30), t, &PLAIN, 128)
                .unwrap()
                .data_len,
            6
        );
        assert_eq!(
            Layout::check(&ch(t, 0, 28, 30), t, &PLAIN, 128)
                .unwrap_err()
                .fei(),
            3
        );
    }

    #[test]
    fn ic_pdus_are_exactly_128() {
        let t = PduType::IcReq;
        assert!(Layout::check(&ch(t, 0, 0, 128), t, &PLAIN, 0).is_ok());
        for plen in [0, 127, 129, 132] {
            assert_eq!(
                Layout::check(&ch(t, 0, 0, plen), t, &PLAIN, 0)
                    .unwrap_err()
                    .fei(),
                4
            );
        }
        let mut bad = ch(t, 0, 0, 128);
        bad.hlen = 24;
        assert_eq!(
            Layout::check(&bad, t, &PLAIN, 0).unwrap_err(),
            PduError::BadHlen {
                ty: t,
                hlen: 24,
                expected: 128
            }
        );
    }
}
