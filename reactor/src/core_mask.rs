//! Core masks in SPDK's two spellings: a hex mask (`0x3`, `3`) or a list
//! (`[0,1]`, `[0-3,6]`).

use crate::ReactorError;

/// Parses a core mask into a sorted, de-duplicated list of core numbers.
pub fn parse_core_mask(s: &str) -> Result<Vec<u32>, ReactorError> {
    let s = s.trim();
    let bad = || ReactorError::BadCoreMask(s.to_string());
    let mut cores = Vec::new();
    if let Some(list) = s.strip_prefix('[') {
        let list = list.strip_suffix(']').ok_or_else(bad)?;
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let lo: u32 = lo.parse().map_err(|_| bad())?;
            let hi: u32 = hi.parse().map_err(|_| bad())?;
            if lo > hi || hi >= 1024 {
                return Err(bad());
            }
            cores.extend(lo..=hi);
        }
    } else {
        let hex = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        if hex.is_empty() || hex.len() > 256 {
            return Err(bad());
        }
        // Walk nibbles from the least significant end so masks wider than
        // 64 bits work too.
        for (i, c) in hex.chars().rev().enumerate() {
            let v = c.to_digit(16).ok_or_else(bad)?;
            for bit in 0..4 {
                if v & (1 << bit) != 0 {
                    cores.push((i * 4 + bit) as u32);
                }
            }
        }
    }
    cores.sort_unstable();
    cores.dedup();
    if cores.is_empty() {
        return Err(bad());
    }
    Ok(cores)
}

/// Formats cores as SPDK's hex mask without leading zeros (`0x3`).
pub fn format_core_mask(cores: &[u32]) -> String {
    let top = cores.iter().copied().max().unwrap_or(0) as usize;
    let mut nibbles = vec![0u8; top / 4 + 1];
    for &c in cores {
        nibbles[c as usize / 4] |= 1 << (c % 4);
    }
    let mut s: String = nibbles.iter().rev().map(|n| format!("{n:x}")).collect();
    while s.len() > 1 && s.starts_with('0') {
        s.remove(0);
    }
    format!("0x{s}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_list_forms() {
        assert_eq!(parse_core_mask("0x3").unwrap(), vec![0, 1]);
        assert_eq!(parse_core_mask("3").unwrap(), vec![0, 1]);
        assert_eq!(parse_core_mask("0x10").unwrap(), vec![4]);
        assert_eq!(parse_core_mask("[0,1]").unwrap(), vec![0, 1]);
        assert_eq!(parse_core_mask("[0-2, 5]").unwrap(), vec![0, 1, 2, 5]);
        assert_eq!(parse_core_mask("0x10000000000000001").unwrap(), vec![0, 64]);
    }

    #[test]
    fn garbage_is_an_error() {
        for s in ["", "0x", "0x0", "[", "[]", "[2-1]", "zz", "[a]", "[0-5000]"] {
            assert!(parse_core_mask(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn formats_like_spdk() {
        assert_eq!(format_core_mask(&[0]), "0x1");
        assert_eq!(format_core_mask(&[0, 1]), "0x3");
        assert_eq!(format_core_mask(&[4]), "0x10");
    }
}
