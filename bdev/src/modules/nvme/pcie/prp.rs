//! Physical Region Page entries for one command's data (NVMe base spec
//! 4.1.1): PRP1 points at the first byte (any dword offset into its
//! page), PRP2 at the second page when the data ends there, or else at
//! a list of the remaining pages. A list page holds 512 entries; when
//! more pages remain than fit, its last entry points at the next list
//! page instead of at data.
//!
//! The data here is one region contiguous in IOVA space (a command
//! slot's buffer in the DMA arena). The list pages are the slot's own,
//! taken when the queue was made, so building PRPs allocates nothing:
//! `build` only writes entries through `put`.

use super::regs::PAGE;

/// Entries in one list page.
pub const ENTRIES_PER_LIST: usize = PAGE / 8;

/// PRP1 and PRP2 of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Prp {
    pub prp1: u64,
    pub prp2: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrpError {
    #[error("data address {0:#x} is not dword-aligned")]
    Unaligned(u64),
    #[error("{have} PRP list pages, {need} needed")]
    ListTooShort { need: usize, have: usize },
    #[error("a command with no data has no PRPs")]
    Empty,
}

/// Data pages after the first one for `len` bytes at `iova`.
fn pages_after_first(iova: u64, len: usize) -> usize {
    let first = PAGE - (iova as usize % PAGE);
    len.saturating_sub(first).div_ceil(PAGE)
}

/// List pages needed for `len` bytes at `iova` (0 when PRP2 suffices).
pub fn list_pages(iova: u64, len: usize) -> usize {
    let n = pages_after_first(iova, len);
    if n <= 1 {
        return 0;
    }
    // Every list page but the last gives one entry to the chain.
    if n <= ENTRIES_PER_LIST {
        1
    } else {
        1 + (n - ENTRIES_PER_LIST).div_ceil(ENTRIES_PER_LIST - 1)
    }
}

/// The PRPs of `len` bytes at `iova`. List entries are written with
/// `put(list page index, entry index, value)` into the pages whose IOVAs
/// `lists` gives, in order.
pub fn build(
    iova: u64,
    len: usize,
    lists: &[u64],
    mut put: impl FnMut(usize, usize, u64),
) -> Result<Prp, PrpError> {
    if len == 0 {
        return Err(PrpError::Empty);
    }
    if !iova.is_multiple_of(4) {
        return Err(PrpError::Unaligned(iova));
    }
    let n = pages_after_first(iova, len);
    let page0 = iova & !(PAGE as u64 - 1);
    let page = |i: usize| page0 + (i * PAGE) as u64;
    match n {
        0 => Ok(Prp {
            prp1: iova,
            prp2: 0,
        }),
        1 => Ok(Prp {
            prp1: iova,
            prp2: page(1),
        }),
        _ => {
            let need = list_pages(iova, len);
            if lists.len() < need {
                return Err(PrpError::ListTooShort {
                    need,
                    have: lists.len(),
                });
            }
            let (mut list, mut entry) = (0, 0);
            for i in 1..=n {
                let remaining = n - i + 1;
                if entry == ENTRIES_PER_LIST - 1 && remaining > 1 {
                    // The last slot of a full list page chains to the next.
                    put(list, entry, lists[list + 1]);
                    list += 1;
                    entry = 0;
                }
                put(list, entry, page(i));
                entry += 1;
            }
            Ok(Prp {
                prp1: iova,
                prp2: lists[0],
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks PRPs the way a controller does, independently of `build`:
    /// the page addresses the data lands in, one per page touched.
    fn walk(prp: Prp, len: usize, lists: &[(u64, Vec<u64>)]) -> Vec<u64> {
        let mut out = vec![prp.prp1 & !(PAGE as u64 - 1)];
        let mut left = len.saturating_sub(PAGE - (prp.prp1 as usize % PAGE));
        if left == 0 {
            return out;
        }
        if left <= PAGE {
            out.push(prp.prp2);
            return out;
        }
        let find = |iova: u64| &lists.iter().find(|l| l.0 == iova).expect("a list page").1;
        let mut list = find(prp.prp2);
        let mut i = 0;
        while left > 0 {
            if i == ENTRIES_PER_LIST - 1 && left > PAGE {
                list = find(list[i]);
                i = 0;
                continue;
            }
            out.push(list[i]);
            left = left.saturating_sub(PAGE);
            i += 1;
        }
        out
    }

    fn run(iova: u64, len: usize) -> (Prp, Vec<(u64, Vec<u64>)>) {
        let need = list_pages(iova, len);
        let mut lists: Vec<(u64, Vec<u64>)> = (0..need)
            .map(|i| (0xF000_0000 + (i * PAGE) as u64, vec![0; ENTRIES_PER_LIST]))
            .collect();
        let iovas: Vec<u64> = lists.iter().map(|l| l.0).collect();
        let prp = build(iova, len, &iovas, |l, e, v| lists[l].1[e] = v).unwrap();
        (prp, lists)
    }

    fn expect_pages(iova: u64, len: usize) -> Vec<u64> {
        let first = iova & !(PAGE as u64 - 1);
        let last = (iova + len as u64 - 1) & !(PAGE as u64 - 1);
        (first..=last).step_by(PAGE).collect()
    }

    #[test]
    fn one_and_two_pages_need_no_list() {
        let (p, l) = run(0x10_0000, 512);
        assert_eq!((p.prp1, p.prp2, l.len()), (0x10_0000, 0, 0));
        let (p, l) = run(0x10_0000, PAGE);
        assert_eq!((p.prp2, l.len()), (0, 0));
        // Offset into the first page: 4 KiB spills into a second page.
        let (p, l) = run(0x10_0200, PAGE);
        assert_eq!((p.prp1, p.prp2, l.len()), (0x10_0200, 0x10_1000, 0));
        let (p, _) = run(0x10_0000, 2 * PAGE);
        assert_eq!(p.prp2, 0x10_1000);
    }

    #[test]
    fn a_list_for_three_pages_and_more() {
        for (iova, len) in [
            (0x20_0000u64, 3 * PAGE),
            (0x20_0400, 2 * PAGE),
            (0x20_0000, 128 << 10),
            (0x20_0000, 1 << 20),
            (0x20_0004, (1 << 20) - 4),
        ] {
            let (p, lists) = run(iova, len);
            assert_eq!(p.prp2, 0xF000_0000, "PRP2 is the list");
            assert_eq!(lists.len(), 1);
            assert_eq!(
                walk(p, len, &lists),
                expect_pages(iova, len),
                "{iova:#x}+{len}"
            );
        }
    }

    #[test]
    fn lists_chain_across_pages() {
        // 513 pages after the first: one full list of 511 data entries
        // plus the chain, then a second list with two entries.
        let len = 514 * PAGE;
        assert_eq!(list_pages(0, len), 2);
        let (p, lists) = run(0, len);
        assert_eq!(lists[0].1[ENTRIES_PER_LIST - 1], lists[1].0, "chain entry");
        assert_eq!(lists[1].1[0], 511 * PAGE as u64 + PAGE as u64);
        assert_eq!(walk(p, len, &lists), expect_pages(0, len));
        // Exactly 512 pages after the first fit one list, no chain.
        assert_eq!(list_pages(0, 513 * PAGE), 1);
        let (p, lists) = run(0, 513 * PAGE);
        assert_eq!(lists[0].1[511], 512 * PAGE as u64);
        assert_eq!(walk(p, 513 * PAGE, &lists), expect_pages(0, 513 * PAGE));
        // Three list pages, with an unaligned start.
        let len = 1100 * PAGE;
        assert_eq!(list_pages(0x40, len), 3);
        let (p, lists) = run(0x40, len);
        assert_eq!(walk(p, len, &lists), expect_pages(0x40, len));
    }

    #[test]
    fn refusals() {
        assert_eq!(build(2, 8, &[], |_, _, _| ()), Err(PrpError::Unaligned(2)));
        assert_eq!(build(0, 0, &[], |_, _, _| ()), Err(PrpError::Empty));
        assert_eq!(
            build(0, 3 * PAGE, &[], |_, _, _| ()),
            Err(PrpError::ListTooShort { need: 1, have: 0 })
        );
    }
}
