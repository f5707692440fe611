//! What the host reads from Identify (protocols.md A.10.2): the
//! controller's limits and names, each namespace's geometry and
//! identifiers. Every field is read with bounds checks from whatever the
//! target sent: a short or odd structure gives zeros or an error, never
//! a panic.

use super::NvmeError;

fn le16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

fn byte(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

/// An ASCII field, space padding and NULs dropped.
fn text(b: &[u8], at: usize, len: usize) -> String {
    let s = b.get(at..at + len).unwrap_or(&[]);
    let s: String = s
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                c as char
            } else {
                '?'
            }
        })
        .collect();
    s.trim_end().to_string()
}

/// Identify Controller, the fields the host uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CtrlrData {
    pub vid: u16,
    pub serial_number: String,
    pub model_number: String,
    pub firmware_revision: String,
    /// Max transfer: 2^MDTS pages (of CAP.MPSMIN, 4 KiB here); 0 = no limit.
    pub mdts: u8,
    pub cntlid: u16,
    pub ver: u32,
    /// Keep Alive Support granularity in 100 ms units; 0 = none.
    pub kas: u16,
    pub maxcmd: u16,
    pub nn: u32,
    pub oncs: u16,
    pub vwc: u8,
    pub sgls: u32,
    pub subnqn: String,
    pub ioccsz: u32,
    pub iorcsz: u32,
    pub icdoff: u16,
}

impl CtrlrData {
    pub fn parse(b: &[u8]) -> CtrlrData {
        CtrlrData {
            vid: le16(b, 0),
            serial_number: text(b, 4, 20),
            model_number: text(b, 24, 40),
            firmware_revision: text(b, 64, 8),
            mdts: byte(b, 77),
            cntlid: le16(b, 78),
            ver: le32(b, 80),
            kas: le16(b, 320),
            maxcmd: le16(b, 514),
            nn: le32(b, 516),
            oncs: le16(b, 520),
            vwc: byte(b, 525),
            sgls: le32(b, 536),
            subnqn: text(b, 768, 256),
            ioccsz: le32(b, 1792),
            iorcsz: le32(b, 1796),
            icdoff: le16(b, 1800),
        }
    }

    /// The checks a fabrics host makes before it trusts the controller
    /// (A.15 step 4): the CNTLID its Connect gave, SGLs, capsule sizes.
    pub fn check(&self, cntlid: u16) -> Result<(), NvmeError> {
        let bad = |why: String| Err(NvmeError::Controller(why));
        if self.cntlid != cntlid {
            return bad(format!(
                "Identify says CNTLID {} but Connect gave {cntlid}",
                self.cntlid
            ));
        }
        if self.sgls & 3 == 0 {
            return bad("the controller supports no SGLs (mandatory over TCP)".into());
        }
        if self.ioccsz < 4 {
            return bad(format!("IOCCSZ {} is below the minimum 4", self.ioccsz));
        }
        if self.iorcsz < 1 {
            return bad("IORCSZ is 0".into());
        }
        if self.icdoff != 0 {
            return bad(format!("ICDOFF {} is not 0 (TCP needs 0)", self.icdoff));
        }
        Ok(())
    }

    /// Bytes of write data an I/O capsule may carry (IOCCSZ*16 - 64), or
    /// 0 when the controller cannot take in-capsule data at offset 0
    /// (SGLS bit 20).
    pub fn in_capsule(&self) -> u32 {
        if self.sgls & (1 << 20) == 0 {
            return 0;
        }
        self.ioccsz.saturating_mul(16).saturating_sub(64)
    }

    /// The most bytes one command moves: 4 KiB << MDTS (0 = no limit:
    /// ours, `cap`), never over `cap`.
    pub fn max_xfer(&self, cap: u32) -> u32 {
        if self.mdts == 0 || self.mdts >= 20 {
            return cap;
        }
        (4096u32 << self.mdts).min(cap)
    }

    pub fn dsm(&self) -> bool {
        self.oncs & (1 << 2) != 0
    }

    pub fn write_zeroes(&self) -> bool {
        self.oncs & (1 << 3) != 0
    }

    pub fn volatile_cache(&self) -> bool {
        self.vwc & 1 != 0
    }
}

/// Identify Namespace, the fields a bdev needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NsData {
    pub nsze: u64,
    pub ncap: u64,
    pub block_size: u32,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
}

impl NsData {
    pub fn parse(b: &[u8]) -> Result<NsData, NvmeError> {
        let flbas = byte(b, 26) & 0x0F;
        let lbaf = le32(b, 128 + 4 * usize::from(flbas));
        let ms = lbaf & 0xFFFF;
        let lbads = (lbaf >> 16) & 0xFF;
        if ms != 0 {
            return Err(NvmeError::Controller(format!(
                "namespace format has {ms} bytes of metadata per block (not supported)"
            )));
        }
        if !(9..=16).contains(&lbads) {
            return Err(NvmeError::Controller(format!(
                "namespace block size 2^{lbads} is not supported"
            )));
        }
        let mut nguid = [0u8; 16];
        if let Some(s) = b.get(104..120) {
            nguid.copy_from_slice(s);
        }
        let mut eui64 = [0u8; 8];
        if let Some(s) = b.get(120..128) {
            eui64.copy_from_slice(s);
        }
        Ok(NsData {
            nsze: le64(b, 0),
            ncap: le64(b, 8),
            block_size: 1 << lbads,
            nguid,
            eui64,
        })
    }
}

/// The UUID in a Namespace Identification Descriptor list (CNS 0x03).
pub fn ns_uuid(b: &[u8]) -> Option<[u8; 16]> {
    let mut at = 0;
    while at + 4 <= b.len() {
        let (t, l) = (b[at], usize::from(b[at + 1]));
        if l == 0 {
            return None;
        }
        let id = b.get(at + 4..at + 4 + l)?;
        if t == 3 && l == 16 {
            let mut u = [0u8; 16];
            u.copy_from_slice(id);
            return Some(u);
        }
        at += 4 + l;
    }
    None
}

/// The active NSID list (CNS 0x02): ascending, zero-terminated.
pub fn ns_list(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&n| n != 0)
        .collect()
}

/// The active namespace list, read a page (1024 NSIDs) at a time: each
/// Identify CNS 02h starts after the last NSID of the page before, until
/// a page is not full. Both transports walk it with this.
pub(crate) struct ActiveNsList {
    nsids: Vec<u32>,
    /// Where the next page starts (after this NSID); None once whole.
    next: Option<u32>,
}

impl ActiveNsList {
    pub fn new() -> ActiveNsList {
        ActiveNsList {
            nsids: Vec::new(),
            next: Some(0),
        }
    }

    /// The NSID the next page's Identify starts after, until the list is
    /// whole.
    pub fn next_page(&self) -> Option<u32> {
        self.next
    }

    /// Takes the page read for `next_page`. A page not ascending, or not
    /// above where it was to start, is refused: a target that repeats
    /// itself must not make the walk endless.
    pub fn take(&mut self, data: &[u8]) -> Result<(), NvmeError> {
        let Some(from) = self.next else {
            return Ok(());
        };
        let page = ns_list(data);
        let sane = page.windows(2).all(|w| w[0] < w[1]) && page.first().is_none_or(|&n| n > from);
        if !sane {
            return Err(NvmeError::Controller(
                "the active namespace list is not ascending".into(),
            ));
        }
        let last = page.last().copied().unwrap_or(from);
        let full = page.len() == 1024;
        self.nsids.extend(page);
        // FFFFFFFEh and above are not namespaces: nothing can follow.
        self.next = (full && last < 0xFFFF_FFFD).then_some(last);
        Ok(())
    }

    pub fn into_nsids(self) -> Vec<u32> {
        self.nsids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(nsids: impl IntoIterator<Item = u32>) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        for (i, n) in nsids.into_iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&n.to_le_bytes());
        }
        b
    }

    #[test]
    fn the_active_list_is_read_until_a_page_is_not_full() {
        let mut l = ActiveNsList::new();
        assert_eq!(l.next_page(), Some(0));
        l.take(&page(1..=1024)).unwrap();
        assert_eq!(l.next_page(), Some(1024), "a full page: one more");
        l.take(&page([1030, 2000])).unwrap();
        assert_eq!(l.next_page(), None);
        let all = l.into_nsids();
        assert_eq!(all.len(), 1026);
        assert_eq!(all[1024..], [1030, 2000]);
    }

    #[test]
    fn a_list_that_repeats_or_goes_down_is_refused() {
        let mut l = ActiveNsList::new();
        l.take(&page(1..=1024)).unwrap();
        // The same page again: would loop for ever if accepted.
        assert!(l.take(&page(1..=1024)).is_err());
        let mut l = ActiveNsList::new();
        assert!(l.take(&page([5, 3])).is_err());
        let mut l = ActiveNsList::new();
        l.take(&page([])).unwrap();
        assert_eq!((l.next_page(), l.into_nsids()), (None, vec![]));
    }

    fn ctrlr_bytes() -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[4..8].copy_from_slice(b"SN42");
        b[8..24].fill(b' ');
        b[24..29].copy_from_slice(b"Model");
        b[64..67].copy_from_slice(b"1.0");
        b[77] = 5;
        b[78..80].copy_from_slice(&7u16.to_le_bytes());
        b[320..322].copy_from_slice(&10u16.to_le_bytes());
        b[520..522].copy_from_slice(&0x0Cu16.to_le_bytes());
        b[525] = 7;
        b[536..540].copy_from_slice(&0x0010_0001u32.to_le_bytes());
        b[1792..1796].copy_from_slice(&260u32.to_le_bytes());
        b[1796..1800].copy_from_slice(&1u32.to_le_bytes());
        b
    }

    #[test]
    fn controller_fields_and_checks() {
        let c = CtrlrData::parse(&ctrlr_bytes());
        assert_eq!(c.serial_number, "SN42");
        assert_eq!(c.model_number, "Model");
        assert_eq!(c.firmware_revision, "1.0");
        assert_eq!(c.in_capsule(), 4096);
        assert_eq!(c.max_xfer(1 << 20), 128 << 10);
        assert!(c.dsm() && c.write_zeroes() && c.volatile_cache());
        assert!(c.check(7).is_ok());
        assert!(c.check(8).is_err(), "a CNTLID other than Connect's");
        let mut b = ctrlr_bytes();
        b[536] = 0;
        assert!(CtrlrData::parse(&b).check(7).is_err(), "no SGLs");
        let mut b = ctrlr_bytes();
        b[1792] = 3;
        b[1793] = 0;
        assert!(CtrlrData::parse(&b).check(7).is_err(), "IOCCSZ < 4");
        // No offset SGLs: nothing in the capsule.
        let mut b = ctrlr_bytes();
        b[538] = 0;
        assert_eq!(CtrlrData::parse(&b).in_capsule(), 0);
    }

    #[test]
    fn short_structures_read_as_zero() {
        let c = CtrlrData::parse(&[1, 2, 3]);
        assert_eq!(c.cntlid, 0);
        assert!(c.check(0).is_err());
        assert!(NsData::parse(&[]).is_err());
        assert_eq!(ns_list(&[1, 0, 0]), Vec::<u32>::new());
        assert_eq!(ns_uuid(&[3, 16, 0, 0, 1]), None);
    }

    #[test]
    fn namespace_geometry_and_ids() {
        let mut b = vec![0u8; 4096];
        b[0..8].copy_from_slice(&1000u64.to_le_bytes());
        b[8..16].copy_from_slice(&1000u64.to_le_bytes());
        b[26] = 1;
        b[132..136].copy_from_slice(&0x000C_0000u32.to_le_bytes());
        b[104] = 0xAB;
        let n = NsData::parse(&b).unwrap();
        assert_eq!((n.nsze, n.block_size, n.nguid[0]), (1000, 4096, 0xAB));
        b[132] = 8; // metadata bytes
        assert!(NsData::parse(&b).is_err());

        let mut d = vec![0u8; 64];
        d[0] = 2;
        d[1] = 16;
        d[20] = 3;
        d[21] = 16;
        d[24] = 0x55;
        assert_eq!(ns_uuid(&d).map(|u| u[0]), Some(0x55));
        let mut l = vec![0u8; 16];
        l[0] = 1;
        l[4] = 3;
        assert_eq!(ns_list(&l), vec![1, 3]);
    }
}
