//! `ferrothin status` as text: one line per pool in the manner of lvs,
//! then its devices as a tree of snapshots.

use std::fmt::Write;

use super::model::{DeviceNode, PoolStatus};

/// Bytes in binary units with two decimals ("64.00MiB"), as lvs prints.
pub fn size(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.2}{}", UNITS[i])
    }
}

pub fn render(pools: &[PoolStatus], ratio: f64) -> String {
    let mut out = String::new();
    if pools.is_empty() {
        out.push_str("no thin pools\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<12} {:<22} {:>10} {:>7} {:>7} {:<11} {:<9} {:>10}",
        "POOL", "MODE", "SIZE", "DATA%", "META%", "NEEDS_CHECK", "LOW_WATER", "VIRTUAL"
    );
    for p in pools {
        let _ = writeln!(
            out,
            "{:<12} {:<22} {:>10} {:>7.2} {:>7.2} {:<11} {:<9} {:>10}",
            p.name,
            p.mode,
            size(p.size),
            p.data_percent,
            p.metadata_percent,
            if p.needs_check { "yes" } else { "no" },
            p.low_water,
            size(p.virtual_size)
        );
        if let Some(e) = &p.error {
            let _ = writeln!(out, "  failed to open: {e}");
        }
        if p.overprovisioned {
            let _ = writeln!(
                out,
                "  WARNING: {} of volumes in a {} pool ({:.2}x, over {ratio:.2}x): \
                 writes fail once the pool fills; grow it or watch DATA%",
                size(p.virtual_size),
                size(p.size),
                p.overprovision
            );
        }
        for d in &p.devices {
            device(&mut out, d, 1, true);
        }
    }
    out
}

fn device(out: &mut String, d: &DeviceNode, depth: usize, root: bool) {
    let indent = "  ".repeat(depth);
    let branch = if root { "" } else { "└─ " };
    let name = d.name.as_deref().unwrap_or("(inactive)");
    let _ = write!(
        out,
        "{indent}{branch}{name} dev {} size {} mapped {} exclusive {}",
        d.dev_id,
        d.size.map_or_else(|| "-".to_string(), size),
        size(d.mapped),
        size(d.exclusive)
    );
    if let Some(o) = &d.origin {
        let _ = write!(out, " origin {o}");
    }
    if !d.exports.is_empty() {
        let _ = write!(out, " exported {}", d.exports.join(", "));
    }
    out.push('\n');
    for c in &d.children {
        device(out, c, depth + 1, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_lvs_prints_them() {
        assert_eq!(size(0), "0B");
        assert_eq!(size(1023), "1023B");
        assert_eq!(size(64 << 20), "64.00MiB");
        assert_eq!(size(95 << 40), "95.00TiB");
    }
}
