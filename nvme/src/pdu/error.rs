//! Why a received PDU breaks the protocol, and the TermReq that says so.
//!
//! Every error the PDU layer finds is fatal to the connection: the
//! receiver answers with a TermReq (C2HTermReq from the controller)
//! carrying a Fatal Error Status and, for invalid fields and unsupported
//! parameters, the byte offset of the offending field inside the
//! offending PDU (protocols.md A.2.3, A.5).

use std::fmt;

use super::header::PduType;

/// A TermReq's Fatal Error Status. A newtype rather than an enum: a
/// TermReq we receive may carry a value this code does not know, and it
/// is still to be reported, not rejected.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fes(pub u16);

impl Fes {
    /// A field of the PDU header is invalid (FEI: its offset).
    pub const INVALID_HEADER_FIELD: Fes = Fes(0x01);
    /// The PDU is legal but not now (before ICReq, a second ICReq).
    pub const PDU_SEQUENCE_ERROR: Fes = Fes(0x02);
    /// The header digest does not match.
    pub const HEADER_DIGEST_ERROR: Fes = Fes(0x03);
    /// Data outside the command's (or any) range.
    pub const DATA_OUT_OF_RANGE: Fes = Fes(0x04);
    /// More data than allowed (also: R2T limit exceeded; one code).
    pub const DATA_LIMIT_EXCEEDED: Fes = Fes(0x05);
    /// A parameter this side does not support (FEI: its offset).
    pub const UNSUPPORTED_PARAMETER: Fes = Fes(0x06);

    /// The name the spec gives the value, or "unknown".
    pub fn name(self) -> &'static str {
        match self.0 {
            0x01 => "invalid PDU header field",
            0x02 => "PDU sequence error",
            0x03 => "header digest error",
            0x04 => "data transfer out of range",
            0x05 => "data transfer limit exceeded",
            0x06 => "unsupported parameter",
            _ => "unknown",
        }
    }

    /// Whether the value is one the spec defines.
    pub fn is_defined(self) -> bool {
        (0x01..=0x06).contains(&self.0)
    }
}

impl fmt::Debug for Fes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fes({:#04x} {})", self.0, self.name())
    }
}

impl fmt::Display for Fes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#04x})", self.name(), self.0)
    }
}

/// Byte offsets, inside a PDU, of the fields errors point at.
pub mod field {
    /// PDU-TYPE.
    pub const TYPE: u32 = 0;
    /// FLAGS.
    pub const FLAGS: u32 = 1;
    /// HLEN.
    pub const HLEN: u32 = 2;
    /// PDO.
    pub const PDO: u32 = 3;
    /// PLEN.
    pub const PLEN: u32 = 4;
    /// ICReq/ICResp PFV.
    pub const PFV: u32 = 8;
    /// ICReq HPDA, ICResp CPDA.
    pub const PDA: u32 = 10;
    /// ICResp MAXH2CDATA.
    pub const MAXH2CDATA: u32 = 12;
    /// H2CData/C2HData DATAO, R2T R2TO.
    pub const DATAO: u32 = 12;
    /// H2CData/C2HData DATAL, R2T R2TL.
    pub const DATAL: u32 = 16;
    /// CapsuleCmd: SGL1 address (SQE byte 24).
    pub const SGL_ADDRESS: u32 = 32;
    /// CapsuleCmd: SGL1 length (SQE byte 32).
    pub const SGL_LENGTH: u32 = 40;
    /// CapsuleCmd: SGL1 identifier (SQE byte 39).
    pub const SGL_ID: u32 = 47;
}

/// A received PDU that breaks the protocol. Each variant knows the
/// TermReq to answer with: [`PduError::fes`] and [`PduError::fei`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("unknown PDU type {0:#04x}")]
    UnknownType(u8),
    #[error("{0:?} PDUs are not sent to this side")]
    WrongDirection(PduType),
    #[error("{0:?} PDU out of sequence")]
    OutOfSequence(PduType),
    #[error("{ty:?} PDU with HLEN {hlen}, must be {expected}")]
    BadHlen { ty: PduType, hlen: u8, expected: u8 },
    #[error("{ty:?} PDU with flags {flags:#04x}: {why}")]
    BadFlags {
        ty: PduType,
        flags: u8,
        why: &'static str,
    },
    #[error("{ty:?} PDU with PLEN {plen}: {why}")]
    BadPlen {
        ty: PduType,
        plen: u32,
        why: &'static str,
    },
    #[error("{ty:?} PDU with PDO {pdo}, must be {expected}")]
    BadPdo { ty: PduType, pdo: u8, expected: u8 },
    #[error("{ty:?} PDU carries {len} data bytes, more than the {max} allowed")]
    DataTooLong { ty: PduType, len: u32, max: u32 },
    #[error("header digest {received:#010x}, computed {computed:#010x}")]
    HeaderDigest { received: u32, computed: u32 },
    #[error("{ty:?} PDU: bad field at byte {offset}: {why}")]
    BadField {
        ty: PduType,
        offset: u32,
        why: &'static str,
    },
    #[error("{ty:?} PDU: data offset {offset} + length {len} is past 4 GiB")]
    DataOutOfRange { ty: PduType, offset: u32, len: u32 },
    #[error("{ty:?} PDU: unsupported parameter at byte {offset}: {why}")]
    Unsupported {
        ty: PduType,
        offset: u32,
        why: &'static str,
    },
}

impl PduError {
    /// The Fatal Error Status the TermReq carries.
    pub fn fes(&self) -> Fes {
        match self {
            PduError::UnknownType(_)
            | PduError::WrongDirection(_)
            | PduError::BadHlen { .. }
            | PduError::BadFlags { .. }
            | PduError::BadPlen { .. }
            | PduError::BadPdo { .. }
            | PduError::BadField { .. } => Fes::INVALID_HEADER_FIELD,
            PduError::OutOfSequence(_) => Fes::PDU_SEQUENCE_ERROR,
            PduError::HeaderDigest { .. } => Fes::HEADER_DIGEST_ERROR,
            PduError::DataOutOfRange { .. } => Fes::DATA_OUT_OF_RANGE,
            PduError::DataTooLong { .. } => Fes::DATA_LIMIT_EXCEEDED,
            PduError::Unsupported { .. } => Fes::UNSUPPORTED_PARAMETER,
        }
    }

    /// The Fatal Error Information: the offending field's byte offset in
    /// the PDU where the status defines one (0x01, 0x06), else 0.
    pub fn fei(&self) -> u32 {
        match self {
            PduError::UnknownType(_) | PduError::WrongDirection(_) => field::TYPE,
            PduError::BadHlen { .. } => field::HLEN,
            PduError::BadFlags { .. } => field::FLAGS,
            PduError::BadPlen { .. } => field::PLEN,
            PduError::BadPdo { .. } => field::PDO,
            PduError::BadField { offset, .. } | PduError::Unsupported { offset, .. } => *offset,
            PduError::OutOfSequence(_)
            | PduError::HeaderDigest { .. }
            | PduError::DataOutOfRange { .. }
            | PduError::DataTooLong { .. } => 0,
        }
    }
}

/// Why a PDU could not be encoded: the caller asked for something the
/// wire cannot carry. These are bugs above this layer, reported rather
/// than panicked on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{ty:?} PDUs carry no data, {len} bytes given")]
    DataNotAllowed { ty: PduType, len: usize },
    #[error("{ty:?} PDUs must carry data")]
    DataRequired { ty: PduType },
    #[error("{ty:?} PDU with {len} data bytes: PLEN would not fit")]
    TooLong { ty: PduType, len: usize },
    #[error("TermReq with {0} bytes of offending header, 1..=128 allowed")]
    TermReqData(usize),
    #[error("C2HData with SUCCESS but not LAST_PDU")]
    SuccessWithoutLast,
    #[error("PDU data alignment {0} is more than 31 (0's based dwords)")]
    Alignment(u8),
}
