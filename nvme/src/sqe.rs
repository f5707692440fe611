//! The NVMe queue entries a capsule carries: the 64-byte submission
//! queue entry with its data pointer in NVMe/TCP's SGL forms, the Fabrics
//! commands the target needs at this level (Connect, Property Get/Set),
//! and the 16-byte completion queue entry with its status field
//! (protocols.md A.7, A.9.1, A.9.2). All little-endian.

use std::fmt;

use crate::pdu::error::{field, Fes};

/// Bytes of a submission queue entry.
pub const SQE_LEN: usize = 64;
/// Bytes of a completion queue entry.
pub const CQE_LEN: usize = 16;
/// Bytes of SGL descriptor 1.
pub const SGL_LEN: usize = 16;
/// The opcode of every Fabrics command; FCTYPE (byte 4) says which.
pub const OPC_FABRICS: u8 = 0x7F;

/// Fabrics command types (SQE byte 4 when the opcode is 0x7F).
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTH_SEND: u8 = 0x05;
    pub const AUTH_RECV: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

// Where the fields sit in an SQE.
const SQE_CID: usize = 2;
const SQE_NSID: usize = 4;
const SQE_SGL: usize = 24;
const SQE_CDW10: usize = 40;
const _: () = assert!(SQE_SGL + SGL_LEN == SQE_CDW10);
const _: () = assert!(SQE_CDW10 + 6 * 4 == SQE_LEN);

fn le16(b: &[u8; SQE_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8; SQE_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8; SQE_LEN], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

/// Which way a command's data moves (opcode bits 1:0, or FCTYPE bits 1:0
/// for Fabrics commands).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    None,
    HostToController,
    ControllerToHost,
    /// Both ways: no command the target serves does this.
    Bidirectional,
}

impl Direction {
    fn from_bits(b: u8) -> Direction {
        match b & 3 {
            0 => Direction::None,
            1 => Direction::HostToController,
            2 => Direction::ControllerToHost,
            _ => Direction::Bidirectional,
        }
    }
}

/// A submission queue entry as the host sent it. Kept as bytes: each
/// command reads only its few fields, and the bytes are what an error
/// log or a TermReq wants.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sqe(pub [u8; SQE_LEN]);

impl Default for Sqe {
    fn default() -> Self {
        Sqe([0; SQE_LEN])
    }
}

impl fmt::Debug for Sqe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Sqe");
        d.field("opcode", &format_args!("{:#04x}", self.opcode()));
        if let Some(t) = self.fctype() {
            d.field("fctype", &format_args!("{t:#04x}"));
        } else {
            d.field("nsid", &self.nsid());
        }
        d.field("cid", &self.cid()).field("sgl1", &self.sgl1());
        d.finish_non_exhaustive()
    }
}

impl Sqe {
    /// An entry with `opcode` and `cid`, PSDT saying SGL as hosts set it
    /// on fabrics, everything else zero.
    pub fn new(opcode: u8, cid: u16) -> Sqe {
        let mut s = Sqe::default();
        s.0[0] = opcode;
        s.0[1] = 0x40;
        s.set_cid(cid);
        s
    }

    /// OPC.
    pub fn opcode(&self) -> u8 {
        self.0[0]
    }

    /// FUSE (bits 1:0 of byte 1); the target takes only 0.
    pub fn fuse(&self) -> u8 {
        self.0[1] & 0x03
    }

    /// PSDT (bits 7:6 of byte 1). Informational: the SGL says it all.
    pub fn psdt(&self) -> u8 {
        self.0[1] >> 6
    }

    /// CID: opaque, echoed in the completion.
    pub fn cid(&self) -> u16 {
        le16(&self.0, SQE_CID)
    }

    pub fn set_cid(&mut self, cid: u16) {
        self.0[SQE_CID..SQE_CID + 2].copy_from_slice(&cid.to_le_bytes());
    }

    /// NSID (for Fabrics commands byte 4 is FCTYPE instead).
    pub fn nsid(&self) -> u32 {
        le32(&self.0, SQE_NSID)
    }

    pub fn set_nsid(&mut self, nsid: u32) {
        self.0[SQE_NSID..SQE_NSID + 4].copy_from_slice(&nsid.to_le_bytes());
    }

    /// FCTYPE, if this is a Fabrics command.
    pub fn fctype(&self) -> Option<u8> {
        (self.opcode() == OPC_FABRICS).then_some(self.0[4])
    }

    /// Command dword `n` (0..=15), `None` past the entry.
    pub fn cdw(&self, n: usize) -> Option<u32> {
        (n < 16).then(|| le32(&self.0, n * 4))
    }

    /// Sets command dword `n`; an `n` past 15 changes nothing and says so.
    pub fn set_cdw(&mut self, n: usize, v: u32) -> bool {
        if n >= 16 {
            return false;
        }
        self.0[n * 4..n * 4 + 4].copy_from_slice(&v.to_le_bytes());
        true
    }

    pub fn cdw10(&self) -> u32 {
        le32(&self.0, 40)
    }
    pub fn cdw11(&self) -> u32 {
        le32(&self.0, 44)
    }
    pub fn cdw12(&self) -> u32 {
        le32(&self.0, 48)
    }
    pub fn cdw13(&self) -> u32 {
        le32(&self.0, 52)
    }
    pub fn cdw14(&self) -> u32 {
        le32(&self.0, 56)
    }
    pub fn cdw15(&self) -> u32 {
        le32(&self.0, 60)
    }

    /// SGL descriptor 1 (DPTR).
    pub fn sgl1(&self) -> Sgl1 {
        let mut b = [0; SGL_LEN];
        b.copy_from_slice(&self.0[SQE_SGL..SQE_SGL + SGL_LEN]);
        Sgl1::decode(&b)
    }

    pub fn set_sgl1(&mut self, sgl: Sgl1) {
        self.0[SQE_SGL..SQE_SGL + SGL_LEN].copy_from_slice(&sgl.encode());
    }

    /// Which way the data moves.
    pub fn direction(&self) -> Direction {
        Direction::from_bits(self.fctype().unwrap_or(self.opcode()))
    }

    /// The Fabrics command, if this is one.
    pub fn fabrics(&self) -> Option<Fabrics> {
        let t = self.fctype()?;
        let b = &self.0;
        Some(match t {
            fctype::CONNECT => Fabrics::Connect(Connect {
                recfmt: le16(b, 40),
                qid: le16(b, 42),
                sqsize: le16(b, 44),
                cattr: b[46],
                kato: le32(b, 48),
            }),
            fctype::PROPERTY_GET => Fabrics::PropertyGet {
                size: PropertySize::from_attrib(b[40]),
                offset: le32(b, 44),
            },
            fctype::PROPERTY_SET => Fabrics::PropertySet {
                size: PropertySize::from_attrib(b[40]),
                offset: le32(b, 44),
                value: le64(b, 48),
            },
            other => Fabrics::Other(other),
        })
    }
}

/// SGL descriptor 1 in the forms a capsule may hold (A.7.4). Only the
/// first two are valid on TCP; the others are decoded so the target can
/// name what it refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sgl1 {
    /// 0x01, Data Block / Offset: the data is in this capsule, `offset`
    /// bytes into its data section (ICDOFF is 0, so only 0 is valid).
    InCapsule { offset: u64, length: u32 },
    /// 0x5A, Transport Data Block: the data moves in H2CData (after an
    /// R2T) or C2HData PDUs. Length 0 means no data.
    Transport { length: u32 },
    /// Keyed Data Block (type 4): host memory named by a remote key, as
    /// RDMA does. Not valid on TCP.
    Keyed {
        subtype: u8,
        address: u64,
        length: u32,
        key: u32,
    },
    /// Any other descriptor (plain address, segments, bit bucket).
    Other { id: u8, address: u64, length: u32 },
}

/// The SGL identifier byte of the in-capsule form.
pub const SGL_IN_CAPSULE: u8 = 0x01;
/// The SGL identifier byte of the transport form.
pub const SGL_TRANSPORT: u8 = 0x5A;
const SGL_TYPE_KEYED: u8 = 0x4;

impl Sgl1 {
    /// Reads the 16 descriptor bytes (SQE bytes 24..40).
    pub fn decode(b: &[u8; SGL_LEN]) -> Sgl1 {
        let address = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let length = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        let id = b[15];
        match id {
            SGL_IN_CAPSULE => Sgl1::InCapsule {
                offset: address,
                length,
            },
            SGL_TRANSPORT => Sgl1::Transport { length },
            _ if id >> 4 == SGL_TYPE_KEYED => Sgl1::Keyed {
                subtype: id & 0x0F,
                address,
                // Keyed descriptors have a 3-byte length and a 4-byte key.
                length: u32::from_le_bytes([b[8], b[9], b[10], 0]),
                key: u32::from_le_bytes([b[11], b[12], b[13], b[14]]),
            },
            _ => Sgl1::Other {
                id,
                address,
                length,
            },
        }
    }

    /// Writes the descriptor. A keyed length keeps its low 24 bits.
    pub fn encode(&self) -> [u8; SGL_LEN] {
        let mut b = [0; SGL_LEN];
        let (id, address) = match *self {
            Sgl1::InCapsule { offset, length } => {
                b[8..12].copy_from_slice(&length.to_le_bytes());
                (SGL_IN_CAPSULE, offset)
            }
            Sgl1::Transport { length } => {
                b[8..12].copy_from_slice(&length.to_le_bytes());
                (SGL_TRANSPORT, 0)
            }
            Sgl1::Keyed {
                subtype,
                address,
                length,
                key,
            } => {
                b[8..11].copy_from_slice(&length.to_le_bytes()[..3]);
                b[11..15].copy_from_slice(&key.to_le_bytes());
                ((SGL_TYPE_KEYED << 4) | (subtype & 0x0F), address)
            }
            Sgl1::Other {
                id,
                address,
                length,
            } => {
                b[8..12].copy_from_slice(&length.to_le_bytes());
                (id, address)
            }
        };
        b[..8].copy_from_slice(&address.to_le_bytes());
        b[15] = id;
        b
    }

    /// Where the command's data is, as a TCP controller may accept it.
    pub fn tcp_data(&self) -> Result<DataLocation, SglError> {
        match *self {
            Sgl1::InCapsule { offset: 0, length } => Ok(DataLocation::InCapsule { length }),
            Sgl1::InCapsule { offset, .. } => Err(SglError::InCapsuleOffset(offset)),
            Sgl1::Transport { length } => Ok(DataLocation::Transport { length }),
            Sgl1::Keyed { .. } => Err(SglError::Keyed),
            Sgl1::Other { id, .. } => Err(SglError::Unsupported(id)),
        }
    }
}

/// Where a command's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataLocation {
    /// In the capsule's data section.
    InCapsule { length: u32 },
    /// In separate data PDUs (possibly none: length 0).
    Transport { length: u32 },
}

impl DataLocation {
    pub fn length(&self) -> u32 {
        match *self {
            DataLocation::InCapsule { length } | DataLocation::Transport { length } => length,
        }
    }
}

/// An SGL descriptor 1 a TCP controller refuses. A capsule that carries
/// data under it breaks the framing (the PDU layer answers with the
/// TermReq, [`SglError::fes`]); one without data is a bad command (the
/// command layer answers with the status, [`SglError::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SglError {
    #[error("in-capsule data at offset {0}, only 0 is valid")]
    InCapsuleOffset(u64),
    #[error("keyed SGL descriptor: RDMA only, not TCP")]
    Keyed,
    #[error("SGL descriptor {0:#04x} is not valid on TCP")]
    Unsupported(u8),
}

impl SglError {
    /// The completion status for the command.
    pub fn status(&self) -> Status {
        match self {
            SglError::InCapsuleOffset(_) => Status::INVALID_SGL_OFFSET.with_dnr(),
            SglError::Keyed | SglError::Unsupported(_) => {
                Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr()
            }
        }
    }

    /// The TermReq status when the framing depends on the descriptor.
    pub fn fes(&self) -> Fes {
        Fes::UNSUPPORTED_PARAMETER
    }

    /// The offending field's offset in the CapsuleCmd PDU.
    pub fn fei(&self) -> u32 {
        match self {
            SglError::InCapsuleOffset(_) => field::SGL_ADDRESS,
            SglError::Keyed | SglError::Unsupported(_) => field::SGL_ID,
        }
    }
}

/// A Fabrics command's parameters (those this layer decodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fabrics {
    Connect(Connect),
    PropertyGet {
        size: PropertySize,
        offset: u32,
    },
    PropertySet {
        size: PropertySize,
        offset: u32,
        value: u64,
    },
    /// Authentication, Disconnect or unknown: answered Invalid Opcode.
    Other(u8),
}

impl Fabrics {
    /// The SQE a host sends for this command. `Other` gets its FCTYPE
    /// and nothing more.
    pub fn to_sqe(&self, cid: u16, sgl: Sgl1) -> Sqe {
        let mut s = Sqe::new(OPC_FABRICS, cid);
        s.set_sgl1(sgl);
        let b = &mut s.0;
        match *self {
            Fabrics::Connect(c) => {
                b[4] = fctype::CONNECT;
                b[40..42].copy_from_slice(&c.recfmt.to_le_bytes());
                b[42..44].copy_from_slice(&c.qid.to_le_bytes());
                b[44..46].copy_from_slice(&c.sqsize.to_le_bytes());
                b[46] = c.cattr;
                b[48..52].copy_from_slice(&c.kato.to_le_bytes());
            }
            Fabrics::PropertyGet { size, offset } => {
                b[4] = fctype::PROPERTY_GET;
                b[40] = size.attrib();
                b[44..48].copy_from_slice(&offset.to_le_bytes());
            }
            Fabrics::PropertySet {
                size,
                offset,
                value,
            } => {
                b[4] = fctype::PROPERTY_SET;
                b[40] = size.attrib();
                b[44..48].copy_from_slice(&offset.to_le_bytes());
                b[48..56].copy_from_slice(&value.to_le_bytes());
            }
            Fabrics::Other(t) => b[4] = t,
        }
        s
    }
}

/// Connect's SQE fields (A.9.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Connect {
    /// Record format: 0 is the only one.
    pub recfmt: u16,
    /// 0 is the admin queue.
    pub qid: u16,
    /// 0's based entries.
    pub sqsize: u16,
    pub cattr: u8,
    /// Keep-alive timeout, ms; 0 disables it.
    pub kato: u32,
}

impl Connect {
    /// CATTR bit: the host disabled SQ flow control (SQHD reserved; the
    /// C2HData SUCCESS flag allowed).
    pub const CATTR_DSQFC: u8 = 1 << 2;

    pub fn disable_sq_flow_control(&self) -> bool {
        self.cattr & Self::CATTR_DSQFC != 0
    }

    /// Priority class (CATTR bits 1:0).
    pub fn priority_class(&self) -> u8 {
        self.cattr & 3
    }

    /// Entries the host asks for (SQSIZE is 0's based).
    pub fn queue_entries(&self) -> u32 {
        u32::from(self.sqsize) + 1
    }
}

/// A property access's width (ATTRIB bits 2:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropertySize {
    Four,
    Eight,
    /// A reserved value: the command is answered Invalid Field.
    Reserved(u8),
}

impl PropertySize {
    fn from_attrib(a: u8) -> PropertySize {
        match a & 7 {
            0 => PropertySize::Four,
            1 => PropertySize::Eight,
            r => PropertySize::Reserved(r),
        }
    }

    fn attrib(self) -> u8 {
        match self {
            PropertySize::Four => 0,
            PropertySize::Eight => 1,
            PropertySize::Reserved(r) => r & 7,
        }
    }

    /// Bytes accessed, if the width is a valid one.
    pub fn bytes(self) -> Option<u8> {
        match self {
            PropertySize::Four => Some(4),
            PropertySize::Eight => Some(8),
            PropertySize::Reserved(_) => None,
        }
    }
}

/// The 1024 bytes of data a Connect carries in its capsule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    /// 0xFFFF on the admin queue (dynamic controllers); the controller's
    /// id on I/O queues.
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
}

impl ConnectData {
    pub const LEN: usize = 1024;
    pub const SUBNQN_OFFSET: u16 = 256;
    pub const HOSTNQN_OFFSET: u16 = 512;
    /// The longest NQN in bytes; its field is 256 bytes, NUL-terminated.
    pub const MAX_NQN: usize = 223;
    const NQN_FIELD: usize = 256;

    /// Reads the data. Bytes past 1024 are ignored (the SGL length
    /// decides how many came).
    pub fn decode(data: &[u8]) -> Result<ConnectData, ConnectDataError> {
        if data.len() < Self::LEN {
            return Err(ConnectDataError::Short(data.len()));
        }
        let mut hostid = [0; 16];
        hostid.copy_from_slice(&data[..16]);
        Ok(ConnectData {
            hostid,
            cntlid: u16::from_le_bytes([data[16], data[17]]),
            subnqn: Self::nqn(data, Self::SUBNQN_OFFSET)?,
            hostnqn: Self::nqn(data, Self::HOSTNQN_OFFSET)?,
        })
    }

    fn nqn(data: &[u8], offset: u16) -> Result<String, ConnectDataError> {
        let at = usize::from(offset);
        let f = &data[at..at + Self::NQN_FIELD];
        let bad = |why| ConnectDataError::BadNqn { offset, why };
        let len = f
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad("not NUL-terminated"))?;
        if len > Self::MAX_NQN {
            return Err(bad("longer than 223 bytes"));
        }
        String::from_utf8(f[..len].to_vec()).map_err(|_| bad("not UTF-8"))
    }

    /// The 1024 bytes a host sends.
    pub fn encode(&self) -> Result<Vec<u8>, ConnectDataError> {
        let mut d = vec![0; Self::LEN];
        d[..16].copy_from_slice(&self.hostid);
        d[16..18].copy_from_slice(&self.cntlid.to_le_bytes());
        for (nqn, offset) in [
            (&self.subnqn, Self::SUBNQN_OFFSET),
            (&self.hostnqn, Self::HOSTNQN_OFFSET),
        ] {
            if nqn.len() > Self::MAX_NQN || nqn.as_bytes().contains(&0) {
                return Err(ConnectDataError::BadNqn {
                    offset,
                    why: "longer than 223 bytes or holding a NUL",
                });
            }
            let at = usize::from(offset);
            d[at..at + nqn.len()].copy_from_slice(nqn.as_bytes());
        }
        Ok(d)
    }
}

/// Connect data the controller refuses, with the completion to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectDataError {
    #[error("Connect data is {0} bytes, 1024 needed")]
    Short(usize),
    #[error("NQN at byte {offset} of the Connect data: {why}")]
    BadNqn { offset: u16, why: &'static str },
}

impl ConnectDataError {
    pub fn status(&self) -> Status {
        match self {
            ConnectDataError::Short(_) => Status::DATA_SGL_LENGTH_INVALID.with_dnr(),
            ConnectDataError::BadNqn { .. } => Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
        }
    }

    /// Completion DW0: for invalid parameters, the offset (IPO, bits
    /// 15:0) and that it is in the data (IATTR = 1, bits 23:16).
    pub fn dw0(&self) -> u32 {
        match self {
            ConnectDataError::Short(_) => 0,
            ConnectDataError::BadNqn { offset, .. } => u32::from(*offset) | (1 << 16),
        }
    }
}

/// A completion's status: CQE bytes 14..16 without the phase bit.
/// Stored as that field so encoding is a copy and no field can hold a
/// value its bits cannot.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(u16);

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status(sct {} sc {:#04x}", self.sct(), self.sc())?;
        if self.crd() != 0 {
            write!(f, " crd {}", self.crd())?;
        }
        if self.more() {
            f.write_str(" more")?;
        }
        if self.dnr() {
            f.write_str(" dnr")?;
        }
        f.write_str(")")
    }
}

impl Status {
    pub const SCT_GENERIC: u8 = 0;
    pub const SCT_COMMAND_SPECIFIC: u8 = 1;
    pub const SCT_MEDIA: u8 = 2;
    pub const SCT_PATH: u8 = 3;
    pub const SCT_VENDOR: u8 = 7;

    pub const SUCCESS: Status = Status::generic(0x00);
    pub const INVALID_OPCODE: Status = Status::generic(0x01);
    pub const INVALID_FIELD: Status = Status::generic(0x02);
    pub const COMMAND_ID_CONFLICT: Status = Status::generic(0x03);
    pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04);
    pub const INTERNAL_ERROR: Status = Status::generic(0x06);
    pub const ABORT_REQUESTED: Status = Status::generic(0x07);
    pub const ABORTED_SQ_DELETION: Status = Status::generic(0x08);
    pub const INVALID_NAMESPACE: Status = Status::generic(0x0B);
    pub const COMMAND_SEQUENCE_ERROR: Status = Status::generic(0x0C);
    pub const DATA_SGL_LENGTH_INVALID: Status = Status::generic(0x0F);
    pub const SGL_DESCRIPTOR_TYPE_INVALID: Status = Status::generic(0x11);
    pub const INVALID_SGL_OFFSET: Status = Status::generic(0x16);
    pub const KEEP_ALIVE_EXPIRED: Status = Status::generic(0x19);
    pub const KEEP_ALIVE_INVALID: Status = Status::generic(0x1A);
    pub const NAMESPACE_WRITE_PROTECTED: Status = Status::generic(0x20);
    pub const TRANSIENT_TRANSPORT_ERROR: Status = Status::generic(0x22);
    pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80);
    pub const CAPACITY_EXCEEDED: Status = Status::generic(0x81);
    pub const NAMESPACE_NOT_READY: Status = Status::generic(0x82);
    pub const INVALID_QUEUE_ID: Status = Status::command_specific(0x01);
    pub const INVALID_QUEUE_SIZE: Status = Status::command_specific(0x02);
    pub const AER_LIMIT_EXCEEDED: Status = Status::command_specific(0x05);
    pub const INVALID_LOG_PAGE: Status = Status::command_specific(0x09);
    pub const FEATURE_NOT_SAVEABLE: Status = Status::command_specific(0x0D);
    pub const FEATURE_NOT_CHANGEABLE: Status = Status::command_specific(0x0E);
    pub const FEATURE_NOT_NS_SPECIFIC: Status = Status::command_specific(0x0F);
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = Status::command_specific(0x80);
    pub const CONNECT_CONTROLLER_BUSY: Status = Status::command_specific(0x81);
    pub const CONNECT_INVALID_PARAMETERS: Status = Status::command_specific(0x82);
    pub const CONNECT_RESTART_DISCOVERY: Status = Status::command_specific(0x83);
    pub const CONNECT_INVALID_HOST: Status = Status::command_specific(0x84);
    pub const DISCOVER_RESTART: Status = Status::command_specific(0x90);
    pub const AUTH_REQUIRED: Status = Status::command_specific(0x91);
    pub const WRITE_FAULT: Status = Status::media(0x80);
    pub const UNRECOVERED_READ_ERROR: Status = Status::media(0x81);
    pub const ACCESS_DENIED: Status = Status::media(0x86);

    /// Status code `sc` of type `sct` (3 bits; higher bits dropped).
    pub const fn new(sct: u8, sc: u8) -> Status {
        Status((((sct & 7) as u16) << 9) | ((sc as u16) << 1))
    }
    pub const fn generic(sc: u8) -> Status {
        Status::new(Self::SCT_GENERIC, sc)
    }
    pub const fn command_specific(sc: u8) -> Status {
        Status::new(Self::SCT_COMMAND_SPECIFIC, sc)
    }
    pub const fn media(sc: u8) -> Status {
        Status::new(Self::SCT_MEDIA, sc)
    }

    /// Do Not Retry: the error will not go away.
    pub const fn with_dnr(self) -> Status {
        Status(self.0 | 1 << 15)
    }
    /// More: a log page has more about this error.
    pub const fn with_more(self) -> Status {
        Status(self.0 | 1 << 14)
    }
    /// Command Retry Delay index (2 bits).
    pub const fn with_crd(self, crd: u8) -> Status {
        Status((self.0 & !(3 << 12)) | (((crd & 3) as u16) << 12))
    }

    pub const fn sct(self) -> u8 {
        ((self.0 >> 9) & 7) as u8
    }
    pub const fn sc(self) -> u8 {
        (self.0 >> 1) as u8
    }
    pub const fn crd(self) -> u8 {
        ((self.0 >> 12) & 3) as u8
    }
    pub const fn more(self) -> bool {
        self.0 & 1 << 14 != 0
    }
    pub const fn dnr(self) -> bool {
        self.0 & 1 << 15 != 0
    }
    pub const fn is_success(self) -> bool {
        self.sct() == 0 && self.sc() == 0
    }

    /// CQE bytes 14..16 as a number, with the phase bit (always 0 over
    /// fabrics, kept for completeness).
    pub const fn field(self, phase: bool) -> u16 {
        self.0 | phase as u16
    }

    /// Splits CQE bytes 14..16 into the status and the phase bit.
    pub const fn from_field(v: u16) -> (Status, bool) {
        (Status(v & !1), v & 1 != 0)
    }
}

/// A completion queue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cqe {
    /// Command specific (Connect: CNTLID; Property Get: low half).
    pub dw0: u32,
    /// Command specific (Property Get: high half).
    pub dw1: u32,
    /// SQ head pointer (0xFFFF in the Connect response, then reserved,
    /// when the host disabled SQ flow control).
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
    /// Phase tag: 0 over fabrics.
    pub phase: bool,
}

impl Cqe {
    /// A completion of `cid` with `status`, everything else zero.
    pub fn new(cid: u16, status: Status) -> Cqe {
        Cqe {
            dw0: 0,
            dw1: 0,
            sqhd: 0,
            sqid: 0,
            cid,
            status,
            phase: false,
        }
    }

    pub fn encode(&self) -> [u8; CQE_LEN] {
        let mut b = [0; CQE_LEN];
        b[0..4].copy_from_slice(&self.dw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.dw1.to_le_bytes());
        b[8..10].copy_from_slice(&self.sqhd.to_le_bytes());
        b[10..12].copy_from_slice(&self.sqid.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        b[14..16].copy_from_slice(&self.status.field(self.phase).to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; CQE_LEN]) -> Cqe {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let (status, phase) = Status::from_field(u16_at(14));
        Cqe {
            dw0: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            dw1: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            sqhd: u16_at(8),
            sqid: u16_at(10),
            cid: u16_at(12),
            status,
            phase,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Connect SQE for an admin queue, written byte by byte as A.9.1
    /// lays it out (not through the encoder under test).
    fn admin_connect_bytes() -> [u8; SQE_LEN] {
        let mut b = [0u8; SQE_LEN];
        b[0] = 0x7F;
        b[1] = 0x40;
        b[2..4].copy_from_slice(&[0x34, 0x12]); // CID 0x1234
        b[4] = 0x01; // Connect
        b[32..36].copy_from_slice(&[0x00, 0x04, 0, 0]); // 1024 bytes
        b[39] = 0x01; // in-capsule
        b[42..44].copy_from_slice(&[0, 0]); // QID 0
        b[44..46].copy_from_slice(&[31, 0]); // SQSIZE 31
        b[46] = 0x04; // DSQFC
        b[48..52].copy_from_slice(&[0x88, 0x13, 0, 0]); // KATO 5000
        b
    }

    #[test]
    fn connect_fields() {
        let s = Sqe(admin_connect_bytes());
        assert_eq!(s.opcode(), OPC_FABRICS);
        assert_eq!((s.fuse(), s.psdt()), (0, 1));
        assert_eq!(s.cid(), 0x1234);
        assert_eq!(s.fctype(), Some(fctype::CONNECT));
        assert_eq!(s.direction(), Direction::HostToController);
        assert_eq!(
            s.sgl1(),
            Sgl1::InCapsule {
                offset: 0,
                length: 1024
            }
        );
        assert_eq!(
            s.sgl1().tcp_data(),
            Ok(DataLocation::InCapsule { length: 1024 })
        );
        let c = Connect {
            recfmt: 0,
            qid: 0,
            sqsize: 31,
            cattr: 4,
            kato: 5000,
        };
        assert_eq!(s.fabrics(), Some(Fabrics::Connect(c)));
        assert!(c.disable_sq_flow_control());
        assert_eq!((c.queue_entries(), c.priority_class()), (32, 0));
        // And the encoder writes the same bytes.
        assert_eq!(
            Fabrics::Connect(c)
                .to_sqe(
                    0x1234,
                    Sgl1::InCapsule {
                        offset: 0,
                        length: 1024
                    }
                )
                .0,
            s.0
        );
    }

    #[test]
    fn property_get_and_set() {
        for f in [
            Fabrics::PropertyGet {
                size: PropertySize::Eight,
                offset: 0,
            },
            Fabrics::PropertySet {
                size: PropertySize::Four,
                offset: 0x14,
                value: 0x0046_0001,
            },
            Fabrics::PropertyGet {
                size: PropertySize::Reserved(5),
                offset: 0x1C,
            },
            Fabrics::Other(fctype::AUTH_SEND),
        ] {
            let s = f.to_sqe(7, Sgl1::Transport { length: 0 });
            assert_eq!(s.fabrics(), Some(f));
            assert_eq!(s.cid(), 7);
        }
        let s = Fabrics::PropertySet {
            size: PropertySize::Four,
            offset: 0x14,
            value: 0x0046_0001,
        }
        .to_sqe(1, Sgl1::Transport { length: 0 });
        assert_eq!(&s.0[44..56], &[0x14, 0, 0, 0, 0x01, 0, 0x46, 0, 0, 0, 0, 0]);
        assert_eq!(s.direction(), Direction::None);
        assert_eq!(PropertySize::Reserved(2).bytes(), None);
        // Auth Receive moves data to the host.
        let s = Fabrics::Other(fctype::AUTH_RECV).to_sqe(1, Sgl1::Transport { length: 0 });
        assert_eq!(s.direction(), Direction::ControllerToHost);
    }

    #[test]
    fn io_command_fields() {
        // A write: opcode 0x01, NSID 1, SLBA in CDW10-11, NLB in CDW12.
        let mut s = Sqe::new(0x01, 0xA00F);
        s.set_nsid(1);
        s.set_sgl1(Sgl1::Transport { length: 8192 });
        assert!(s.set_cdw(10, 0x89AB_CDEF));
        assert!(s.set_cdw(11, 0x0123_4567));
        assert!(s.set_cdw(12, 1 | 1 << 30));
        assert!(s.set_cdw(15, 0xFFFF_FFFF));
        assert!(!s.set_cdw(16, 1));
        assert!(!s.set_cdw(usize::MAX / 2, 1));
        assert_eq!(s.fctype(), None);
        assert_eq!(s.nsid(), 1);
        assert_eq!(s.cid(), 0xA00F);
        assert_eq!(s.direction(), Direction::HostToController);
        assert_eq!(
            (
                s.cdw10(),
                s.cdw11(),
                s.cdw12(),
                s.cdw13(),
                s.cdw14(),
                s.cdw15()
            ),
            (0x89AB_CDEF, 0x0123_4567, 1 | 1 << 30, 0, 0, 0xFFFF_FFFF)
        );
        assert_eq!(s.cdw(12), Some(s.cdw12()));
        assert_eq!(s.cdw(16), None);
        assert_eq!(&s.0[36..40], &[0, 0, 0, 0x5A]);
        assert_eq!(
            s.sgl1().tcp_data(),
            Ok(DataLocation::Transport { length: 8192 })
        );
        assert_eq!(Sqe::new(0x02, 0).direction(), Direction::ControllerToHost);
        assert_eq!(Sqe::new(0x00, 0).direction(), Direction::None);
        assert_eq!(Sqe::new(0x03, 0).direction(), Direction::Bidirectional);
        let mut fused = Sqe::new(0x05, 0);
        fused.0[1] |= 1;
        assert_eq!(fused.fuse(), 1);
    }

    #[test]
    fn sgl_forms() {
        let forms = [
            Sgl1::InCapsule {
                offset: 0,
                length: 4096,
            },
            Sgl1::InCapsule {
                offset: 16,
                length: 4096,
            },
            Sgl1::Transport { length: 0 },
            Sgl1::Transport { length: u32::MAX },
            Sgl1::Keyed {
                subtype: 0,
                address: 0x1000,
                length: 0xAB_CDEF,
                key: 0xDEAD_BEEF,
            },
            Sgl1::Other {
                id: 0x00,
                address: 0x2000,
                length: 512,
            },
            Sgl1::Other {
                id: 0x02,
                address: 0,
                length: 0,
            },
        ];
        for f in forms {
            assert_eq!(Sgl1::decode(&f.encode()), f);
        }
        let keyed = forms[4].encode();
        assert_eq!(keyed[15], 0x40);
        assert_eq!(&keyed[8..15], &[0xEF, 0xCD, 0xAB, 0xEF, 0xBE, 0xAD, 0xDE]);
        let e = forms[1].tcp_data().unwrap_err();
        assert_eq!(
            (e.status(), e.fei()),
            (Status::INVALID_SGL_OFFSET.with_dnr(), 32)
        );
        let e = forms[4].tcp_data().unwrap_err();
        assert_eq!(
            (e.status(), e.fes(), e.fei()),
            (
                Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr(),
                Fes::UNSUPPORTED_PARAMETER,
                47
            )
        );
        assert_eq!(forms[5].tcp_data(), Err(SglError::Unsupported(0)));
    }

    #[test]
    fn status_field_encoding() {
        // The example of A.7.2: Invalid Field with DNR is 0x8004.
        assert_eq!(Status::INVALID_FIELD.with_dnr().field(false), 0x8004);
        let s = Status::CONNECT_INVALID_PARAMETERS.with_dnr();
        assert_eq!((s.sct(), s.sc(), s.dnr(), s.more()), (1, 0x82, true, false));
        assert_eq!(s.field(false), (0x82 << 1) | (1 << 9) | (1 << 15));
        let s = Status::WRITE_FAULT.with_more().with_crd(3).with_crd(2);
        assert_eq!(
            (s.sct(), s.sc(), s.crd(), s.more(), s.dnr()),
            (2, 0x80, 2, true, false)
        );
        assert_eq!(Status::new(0xFF, 0xFF).sct(), 7);
        assert!(Status::SUCCESS.is_success());
        assert!(!Status::COMMAND_SEQUENCE_ERROR.is_success());
        for v in [0u16, 1, 0x8004, 0xFFFF, 0x7FFE] {
            let (s, p) = Status::from_field(v);
            assert_eq!(s.field(p), v);
        }
    }

    #[test]
    fn cqe_round_trip_and_layout() {
        let c = Cqe {
            dw0: 1,
            dw1: 0,
            sqhd: 1,
            sqid: 0,
            cid: 0,
            status: Status::SUCCESS,
            phase: false,
        };
        assert_eq!(c.encode(), [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        let c = Cqe {
            dw0: 0x0001_0100,
            dw1: 0xFFFF_FFFF,
            sqhd: 0xFFFF,
            sqid: 3,
            cid: 0xBEEF,
            status: Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
            phase: true,
        };
        let b = c.encode();
        assert_eq!(&b[12..16], &[0xEF, 0xBE, 0x05, 0x83]);
        assert_eq!(Cqe::decode(&b), c);
        assert_eq!(Cqe::new(9, Status::SUCCESS).cid, 9);
    }

    #[test]
    fn connect_data() {
        let d = ConnectData {
            hostid: [7; 16],
            cntlid: 0xFFFF,
            subnqn: "nqn.2024-01.io.ferrothin:vol0".into(),
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:1234".into(),
        };
        let b = d.encode().unwrap();
        assert_eq!(b.len(), 1024);
        assert_eq!(&b[16..18], &[0xFF, 0xFF]);
        assert_eq!(&b[256..260], b"nqn.");
        assert_eq!(ConnectData::decode(&b).unwrap(), d);
        // Longer data is fine, shorter is not.
        let mut long = b.clone();
        long.extend_from_slice(&[1; 100]);
        assert_eq!(ConnectData::decode(&long).unwrap(), d);
        let e = ConnectData::decode(&b[..1023]).unwrap_err();
        assert_eq!(
            (e.status(), e.dw0()),
            (Status::DATA_SGL_LENGTH_INVALID.with_dnr(), 0)
        );
        // A host NQN filling its field with no NUL.
        let mut bad = b.clone();
        bad[512..768].fill(b'a');
        let e = ConnectData::decode(&bad).unwrap_err();
        assert_eq!(e.status(), Status::CONNECT_INVALID_PARAMETERS.with_dnr());
        assert_eq!(e.dw0(), 512 | 1 << 16);
        // 224 bytes then NUL: one too long.
        let mut bad = b.clone();
        bad[256..256 + 224].fill(b'n');
        bad[256 + 224] = 0;
        assert_eq!(ConnectData::decode(&bad).unwrap_err().dw0(), 256 | 1 << 16);
        // 223 is the most.
        let mut ok = b.clone();
        ok[256..256 + 223].fill(b'n');
        ok[256 + 223] = 0;
        assert_eq!(ConnectData::decode(&ok).unwrap().subnqn.len(), 223);
        let mut bad = b;
        bad[512] = 0xFF;
        assert!(ConnectData::decode(&bad).is_err());
        let too_long = ConnectData {
            hostnqn: "x".repeat(224),
            ..d
        };
        assert!(too_long.encode().is_err());
    }
}
