//! `ferrothin ls`: the devices of a pool with their mapped, exclusive and
//! shared block counts, in thin_ls's fields and layout (`-o`, the same
//! field names; each column right-aligned to its widest cell and followed
//! by a space). As thin_ls counts them: a mapping is shared when its data
//! block is mapped more than once across all devices (by two devices, or
//! twice by one). The space map's reference counts do not tell this: a
//! snapshot shares its origin's mapping subtrees, and the data blocks
//! below a shared subtree keep a count of 1.

use std::io::{BufWriter, Write as _};
use std::path::PathBuf;

use clap::Args;
use metadata::thin::model::PoolModel;

#[derive(Args, Debug)]
pub struct LsArgs {
    /// The metadata device or image.
    pub device: Option<PathBuf>,
    /// Comma-separated fields (thin_ls's names): DEV, MAPPED_BLOCKS,
    /// EXCLUSIVE_BLOCKS, SHARED_BLOCKS, the same in _SECTORS and _BYTES,
    /// MAPPED, EXCLUSIVE, SHARED (in KiB/MiB/...), TRANSACTION,
    /// CREATE_TIME, SNAP_TIME.
    #[arg(
        short = 'o',
        long = "format",
        default_value = "DEV,MAPPED,CREATE_TIME,SNAP_TIME"
    )]
    pub format: String,
    #[arg(long)]
    pub no_headers: bool,
    /// List the devices of the metadata snapshot.
    #[arg(short = 'm', long = "metadata-snap")]
    pub metadata_snap: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Count {
    Mapped,
    Exclusive,
    Shared,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Blocks,
    Sectors,
    Bytes,
    /// Bytes in the largest binary unit that still reads 10 or more.
    Human,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Dev,
    Count(Count, Unit),
    Transaction,
    CreateTime,
    SnapTime,
}

const FIELDS: &[(&str, Field)] = &[
    ("DEV", Field::Dev),
    ("MAPPED_BLOCKS", Field::Count(Count::Mapped, Unit::Blocks)),
    (
        "EXCLUSIVE_BLOCKS",
        Field::Count(Count::Exclusive, Unit::Blocks),
    ),
    ("SHARED_BLOCKS", Field::Count(Count::Shared, Unit::Blocks)),
    ("MAPPED_SECTORS", Field::Count(Count::Mapped, Unit::Sectors)),
    (
        "EXCLUSIVE_SECTORS",
        Field::Count(Count::Exclusive, Unit::Sectors),
    ),
    ("SHARED_SECTORS", Field::Count(Count::Shared, Unit::Sectors)),
    ("MAPPED_BYTES", Field::Count(Count::Mapped, Unit::Bytes)),
    (
        "EXCLUSIVE_BYTES",
        Field::Count(Count::Exclusive, Unit::Bytes),
    ),
    ("SHARED_BYTES", Field::Count(Count::Shared, Unit::Bytes)),
    ("MAPPED", Field::Count(Count::Mapped, Unit::Human)),
    ("EXCLUSIVE", Field::Count(Count::Exclusive, Unit::Human)),
    ("SHARED", Field::Count(Count::Shared, Unit::Human)),
    ("TRANSACTION", Field::Transaction),
    ("CREATE_TIME", Field::CreateTime),
    ("SNAP_TIME", Field::SnapTime),
];

fn parse_fields(spec: &str) -> anyhow::Result<Vec<(&'static str, Field)>> {
    spec.split(',')
        .map(|name| {
            FIELDS
                .iter()
                .find(|(n, _)| *n == name.trim())
                .copied()
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "unknown field {name:?}; the fields are {}",
                        FIELDS
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
        })
        .collect()
}

/// `bytes` as thin_ls prints a size: 0, or a whole number (halves round
/// up) of the largest of B, KiB, MiB, ... in which it is at least 10.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes == 0 {
        return "0".into();
    }
    let round = |shift: u32| -> u128 {
        let unit = 1u128 << shift;
        (u128::from(bytes) + unit / 2) >> shift
    };
    let i = (0..UNITS.len())
        .rev()
        .find(|&i| round(10 * i as u32) >= 10)
        .unwrap_or(0);
    format!("{}{}", round(10 * i as u32), UNITS[i])
}

/// How often each data block is mapped, saturating at two: one bit for
/// "mapped", one for "mapped again".
#[derive(Default)]
struct MapCounts {
    once: Vec<u64>,
    again: Vec<u64>,
}

impl MapCounts {
    fn with_blocks(n: u64) -> MapCounts {
        let words = n.div_ceil(64) as usize;
        MapCounts {
            once: vec![0; words],
            again: vec![0; words],
        }
    }

    fn add(&mut self, b: u64) {
        let (w, bit) = ((b / 64) as usize, 1u64 << (b % 64));
        if w >= self.once.len() {
            // A mapping past the data device (damaged metadata): count it all
            // the same.
            self.once.resize(w + 1, 0);
            self.again.resize(w + 1, 0);
        }
        if self.once[w] & bit != 0 {
            self.again[w] |= bit;
        }
        self.once[w] |= bit;
    }

    fn shared(&self, b: u64) -> bool {
        self.again
            .get((b / 64) as usize)
            .is_some_and(|w| w & (1 << (b % 64)) != 0)
    }
}

pub fn run(a: &LsArgs) -> anyhow::Result<i32> {
    let device = super::input(&a.device)?;
    let fields = parse_fields(&a.format)?;
    let m = super::read_pool(device, a.metadata_snap)?;
    let rows = table(&m, &fields);
    let mut out = BufWriter::new(std::io::stdout().lock());
    write_table(&mut out, &fields, &rows, !a.no_headers)?;
    out.flush()?;
    Ok(0)
}

/// One row of cells per device.
fn table(m: &PoolModel, fields: &[(&str, Field)]) -> Vec<Vec<String>> {
    let mut counts = MapCounts::with_blocks(m.nr_data_blocks);
    for d in m.devices.values() {
        for bt in d.mappings.values() {
            counts.add(bt.block);
        }
    }
    let sectors = u64::from(m.data_block_size);
    m.devices
        .iter()
        .map(|(id, d)| {
            let mapped = d.mappings.len() as u64;
            let shared = d
                .mappings
                .values()
                .filter(|bt| counts.shared(bt.block))
                .count() as u64;
            fields
                .iter()
                .map(|(_, f)| match *f {
                    Field::Dev => id.to_string(),
                    Field::Count(c, unit) => {
                        let blocks = match c {
                            Count::Mapped => mapped,
                            Count::Exclusive => mapped - shared,
                            Count::Shared => shared,
                        };
                        match unit {
                            Unit::Blocks => blocks.to_string(),
                            Unit::Sectors => (blocks * sectors).to_string(),
                            Unit::Bytes => (blocks * sectors * 512).to_string(),
                            Unit::Human => human(blocks * sectors * 512),
                        }
                    }
                    Field::Transaction => d.details.transaction_id.to_string(),
                    Field::CreateTime => d.details.creation_time.to_string(),
                    Field::SnapTime => d.details.snapshotted_time.to_string(),
                })
                .collect()
        })
        .collect()
}

fn write_table(
    out: &mut impl std::io::Write,
    fields: &[(&str, Field)],
    rows: &[Vec<String>],
    headers: bool,
) -> std::io::Result<()> {
    let widths: Vec<usize> = (0..fields.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain(headers.then(|| fields[i].0.len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let header: Vec<String> = fields.iter().map(|(n, _)| n.to_string()).collect();
    for row in headers.then_some(&header).into_iter().chain(rows) {
        for (cell, w) in row.iter().zip(&widths) {
            write!(out, "{cell:>w$} ")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_saturate_at_shared() {
        let mut c = MapCounts::with_blocks(100);
        c.add(3);
        c.add(70);
        c.add(70);
        c.add(70);
        c.add(1000);
        c.add(1000);
        assert!(!c.shared(3) && c.shared(70) && c.shared(1000));
        assert!(!c.shared(4) && !c.shared(5000));
    }

    /// The sizes thin_ls 0.9 printed for these byte counts.
    #[test]
    fn human_sizes_are_thin_ls_ones() {
        for (bytes, want) in [
            (0, "0"),
            (65536, "64KiB"),
            (1048576, "1024KiB"),
            (1572864, "1536KiB"),
            (9961472, "10MiB"),
            (10944512, "10MiB"),
            (11010048, "11MiB"),
            (65536000, "63MiB"),
            (1073741824, "1024MiB"),
            (2621440000, "2500MiB"),
            (10737418240, "10GiB"),
            (11010048000, "10GiB"),
        ] {
            assert_eq!(human(bytes), want, "{bytes}");
        }
    }

    #[test]
    fn unknown_fields_name_the_known_ones() {
        let e = parse_fields("DEV,BOGUS").unwrap_err().to_string();
        assert!(
            e.contains("unknown field \"BOGUS\"") && e.contains("SNAP_TIME"),
            "{e}"
        );
        assert_eq!(parse_fields("DEV,SNAP_TIME").unwrap().len(), 2);
    }
}
