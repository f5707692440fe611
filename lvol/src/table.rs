//! The lvol table: what SPDK keeps in blob xattrs and dm-thin's metadata
//! has no room for (the lvstore's name and UUID, each lvol's name, UUID,
//! size, flags and parent), as the bytes stored in the pool's side table
//! (`thin::sidecar`, which adds the checksum and the transaction stamp).
//!
//! Layout, little-endian: a 128-byte header, then one 128-byte entry per
//! lvol.
//!
//! | header bytes | field |
//! |---|---|
//! | 0..4 | format version (1) |
//! | 4..8 | number of entries |
//! | 8..24 | lvstore UUID |
//! | 24..32 | cluster size in bytes |
//! | 32 | name length (1..=63) |
//! | 33..96 | name, UTF-8, zero padded |
//! | 96..128 | zero |
//!
//! | entry bytes | field |
//! |---|---|
//! | 0..16 | lvol UUID (its bdev name) |
//! | 16..20 | thin device id in the pool |
//! | 20..24 | flags: 1 read-only, 2 thin provisioned |
//! | 24..32 | size in bytes |
//! | 32 | parent kind: 0 none, 1 an lvol of this store, 2 an external bdev |
//! | 33 | clear method (0 default, 1 none, 2 unmap, 3 write_zeroes) |
//! | 34 | name length (1..=63) |
//! | 35..98 | name, UTF-8, zero padded |
//! | 98..114 | parent UUID (zero when none) |
//! | 114..128 | zero |

use bdev::Uuid;

pub const HEADER_BYTES: usize = 128;
pub const ENTRY_BYTES: usize = 128;
const VERSION: u32 = 1;
/// SPDK's limit for lvstore and lvol names (SPDK_LVS_NAME_MAX - 1).
pub const NAME_MAX: usize = 63;

const READ_ONLY: u32 = 1;
const THIN: u32 = 2;

/// What an lvol reads its unwritten clusters from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parent {
    None,
    /// A read-only lvol of the same store (a snapshot).
    Lvol(Uuid),
    /// An external bdev, by UUID (an esnap clone).
    External(Uuid),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClearMethod {
    #[default]
    Default,
    None,
    Unmap,
    WriteZeroes,
}

impl ClearMethod {
    fn code(self) -> u8 {
        match self {
            ClearMethod::Default => 0,
            ClearMethod::None => 1,
            ClearMethod::Unmap => 2,
            ClearMethod::WriteZeroes => 3,
        }
    }
    fn from_code(c: u8) -> Result<Self, TableError> {
        Ok(match c {
            0 => ClearMethod::Default,
            1 => ClearMethod::None,
            2 => ClearMethod::Unmap,
            3 => ClearMethod::WriteZeroes,
            _ => return Err(TableError(format!("clear method {c} is unknown"))),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LvolEntry {
    pub uuid: Uuid,
    pub name: String,
    pub dev_id: u32,
    pub size_bytes: u64,
    pub read_only: bool,
    pub thin: bool,
    pub parent: Parent,
    pub clear_method: ClearMethod,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LvolTable {
    pub lvs_uuid: Uuid,
    pub lvs_name: String,
    pub cluster_size: u64,
    pub lvols: Vec<LvolEntry>,
}

/// Why stored bytes are not a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the lvol table is damaged: {0}")]
pub struct TableError(pub String);

fn put_name(b: &mut [u8], name: &str) {
    b[0] = name.len() as u8;
    b[1..1 + name.len()].copy_from_slice(name.as_bytes());
}

fn get_name(b: &[u8]) -> Result<String, TableError> {
    let len = b[0] as usize;
    if len == 0 || len > NAME_MAX {
        return Err(TableError(format!("a name of {len} bytes")));
    }
    String::from_utf8(b[1..1 + len].to_vec()).map_err(|_| TableError("a name is not UTF-8".into()))
}

fn uuid_at(b: &[u8], at: usize) -> Uuid {
    let mut u = [0u8; 16];
    u.copy_from_slice(&b[at..at + 16]);
    Uuid(u)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// A name SPDK would take: 1 to 63 bytes.
pub fn valid_name(name: &str) -> bool {
    (1..=NAME_MAX).contains(&name.len())
}

impl LvolTable {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_BYTES + ENTRY_BYTES * self.lvols.len()];
        b[0..4].copy_from_slice(&VERSION.to_le_bytes());
        b[4..8].copy_from_slice(&(self.lvols.len() as u32).to_le_bytes());
        b[8..24].copy_from_slice(&self.lvs_uuid.0);
        b[24..32].copy_from_slice(&self.cluster_size.to_le_bytes());
        put_name(&mut b[32..96], &self.lvs_name);
        for (i, l) in self.lvols.iter().enumerate() {
            let e = &mut b[HEADER_BYTES + i * ENTRY_BYTES..][..ENTRY_BYTES];
            e[0..16].copy_from_slice(&l.uuid.0);
            e[16..20].copy_from_slice(&l.dev_id.to_le_bytes());
            let flags = if l.read_only { READ_ONLY } else { 0 } | if l.thin { THIN } else { 0 };
            e[20..24].copy_from_slice(&flags.to_le_bytes());
            e[24..32].copy_from_slice(&l.size_bytes.to_le_bytes());
            let (kind, parent) = match l.parent {
                Parent::None => (0u8, [0u8; 16]),
                Parent::Lvol(u) => (1, u.0),
                Parent::External(u) => (2, u.0),
            };
            e[32] = kind;
            e[33] = l.clear_method.code();
            put_name(&mut e[34..98], &l.name);
            e[98..114].copy_from_slice(&parent);
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<LvolTable, TableError> {
        if b.len() < HEADER_BYTES {
            return Err(TableError(format!(
                "{} bytes, shorter than a header",
                b.len()
            )));
        }
        let version = u32_at(b, 0);
        if version != VERSION {
            return Err(TableError(format!("format version {version}")));
        }
        let n = u32_at(b, 4) as usize;
        if b.len() != HEADER_BYTES + n.saturating_mul(ENTRY_BYTES) {
            return Err(TableError(format!("{} bytes for {n} entries", b.len())));
        }
        let mut lvols = Vec::with_capacity(n);
        for i in 0..n {
            let e = &b[HEADER_BYTES + i * ENTRY_BYTES..][..ENTRY_BYTES];
            let flags = u32_at(e, 20);
            let parent_uuid = uuid_at(e, 98);
            let parent = match e[32] {
                0 => Parent::None,
                1 => Parent::Lvol(parent_uuid),
                2 => Parent::External(parent_uuid),
                k => return Err(TableError(format!("parent kind {k}"))),
            };
            lvols.push(LvolEntry {
                uuid: uuid_at(e, 0),
                name: get_name(&e[34..98])?,
                dev_id: u32_at(e, 16),
                size_bytes: u64_at(e, 24),
                read_only: flags & READ_ONLY != 0,
                thin: flags & THIN != 0,
                parent,
                clear_method: ClearMethod::from_code(e[33])?,
            });
        }
        Ok(LvolTable {
            lvs_uuid: uuid_at(b, 8),
            cluster_size: u64_at(b, 24),
            lvs_name: get_name(&b[32..96])?,
            lvols,
        })
    }

    /// The bytes this table takes once encoded.
    pub fn encoded_len(entries: usize) -> usize {
        HEADER_BYTES + ENTRY_BYTES * entries
    }

    pub fn by_name(&self, name: &str) -> Option<&LvolEntry> {
        self.lvols.iter().find(|l| l.name == name)
    }

    pub fn by_uuid(&self, uuid: Uuid) -> Option<&LvolEntry> {
        self.lvols.iter().find(|l| l.uuid == uuid)
    }

    pub fn by_uuid_mut(&mut self, uuid: Uuid) -> Option<&mut LvolEntry> {
        self.lvols.iter_mut().find(|l| l.uuid == uuid)
    }

    /// The lvols whose parent is `uuid` (a snapshot's clones).
    pub fn clones_of(&self, uuid: Uuid) -> Vec<&LvolEntry> {
        self.lvols
            .iter()
            .filter(|l| l.parent == Parent::Lvol(uuid))
            .collect()
    }
}

#[cfg(test)]
mod tests;
