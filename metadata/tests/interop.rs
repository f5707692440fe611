//! Interoperability with Debian's thin-provisioning-tools (installed by
//! ci/setup): images we write pass `thin_check` and `thin_dump` reads them
//! as we wrote them; what `thin_restore` writes from our XML reads back
//! the same through our reader. Failing seeds are printed; they replay.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use metadata::io::{BlockIo, FileIo};
use metadata::pdata::values::{BlockTime, DeviceDetails};
use metadata::thin::read::read_image;
use metadata::thin::write::write_image;
use metadata::thin::xml::{parse_xml, write_xml};
use metadata::thin::{Device, PoolModel};

use metadata::fuzz::Rng;

/// A random pool: a few devices, runs and single mappings, some data
/// blocks named by several devices (counts of 2, 3 and more).
fn random_model(seed: u64) -> PoolModel {
    let mut r = Rng(seed);
    let time = r.below(6) as u32;
    let trans_id = r.below(100);
    let nr_data_blocks = 1000 + r.below(100_000);
    let shared: Vec<u64> = (0..8).map(|_| r.below(nr_data_blocks - 64)).collect();
    let mut devices = BTreeMap::new();
    for _ in 0..r.below(6) {
        let id = if r.below(4) == 0 {
            r.below(1 << 24)
        } else {
            r.below(64)
        };
        let mut mappings = BTreeMap::new();
        for _ in 0..r.below(120) {
            let len = 1 + r.below(40);
            let v0 = r.below(1 << 20);
            let d0 = if r.below(3) == 0 {
                shared[r.below(8) as usize]
            } else {
                r.below(nr_data_blocks - len)
            };
            let t = r.below(time as u64 + 1) as u32;
            for i in 0..len.min(nr_data_blocks - d0) {
                mappings.insert(
                    v0 + i,
                    BlockTime {
                        block: d0 + i,
                        time: t,
                    },
                );
            }
        }
        let creation_time = r.below(time as u64 + 1) as u32;
        let details = DeviceDetails {
            mapped_blocks: mappings.len() as u64,
            transaction_id: r.below(trans_id + 1),
            creation_time,
            snapshotted_time: creation_time + r.below((time - creation_time) as u64 + 1) as u32,
        };
        devices.insert(id, Device { details, mappings });
    }
    PoolModel {
        flags: 0,
        time,
        trans_id,
        data_block_size: 128 * (1 + r.below(16) as u32),
        nr_data_blocks,
        devices,
    }
}

/// A scratch file, removed when the test is done with it.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    Scratch(std::env::temp_dir().join(format!("ferrothin-interop-{}-{name}", std::process::id())))
}

fn empty_device(path: &Path, blocks: u64) -> FileIo {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(blocks * 4096).unwrap();
    FileIo::new(f).unwrap()
}

fn tool(name: &str, args: &[&str]) -> std::process::Output {
    Command::new(name).args(args).output().unwrap_or_else(|e| {
        panic!("{name} could not run ({e}); ci/setup installs thin-provisioning-tools")
    })
}

#[test]
fn images_we_write_pass_thin_check_and_dump_as_written() {
    for seed in 0..40u64 {
        let m = random_model(seed);
        let path = scratch(&format!("ours-{seed}.img"));
        let mut io = empty_device(&path, 2048);
        write_image(&mut io, &m).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let p = path.to_str().unwrap();
        let check = tool("thin_check", &[p]);
        assert!(
            check.status.success(),
            "seed {seed}: thin_check failed:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let dump = tool("thin_dump", &[p]);
        assert!(
            dump.status.success(),
            "seed {seed}: thin_dump failed: {}",
            String::from_utf8_lossy(&dump.stderr)
        );
        let theirs = parse_xml(&String::from_utf8_lossy(&dump.stdout))
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(
            theirs, m,
            "seed {seed}: thin_dump disagrees with what we wrote"
        );
        assert_eq!(
            read_image(&io, false).unwrap(),
            m,
            "seed {seed}: our reader disagrees"
        );
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn what_thin_restore_writes_from_our_xml_reads_back_the_same() {
    for seed in 100..130u64 {
        let m = random_model(seed);
        let xml = scratch(&format!("in-{seed}.xml"));
        std::fs::write(&xml, write_xml(&m)).unwrap();
        let path = scratch(&format!("theirs-{seed}.img"));
        let io = empty_device(&path, 2048);
        let out = tool(
            "thin_restore",
            &["-i", xml.to_str().unwrap(), "-o", path.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "seed {seed}: thin_restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let back = read_image(&io, false).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(back, m, "seed {seed}");
        assert_eq!(
            write_xml(&back),
            std::fs::read_to_string(&xml).unwrap(),
            "seed {seed}: our dump differs from the XML"
        );
        assert_eq!(io.nr_blocks(), 2048);
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&xml).unwrap();
    }
}

#[test]
fn damage_is_caught_by_thin_check_and_by_our_reader() {
    use metadata::pdata::checksum::{seal, BlockKind};
    use metadata::pdata::space_map::pack_bitmap;
    use metadata::thin::read::read_superblock;

    let m = random_model(7);
    assert!(!m.devices.is_empty(), "seed 7 has devices");
    // 1. A metadata count off by one (block 5 freed in the bitmap, re-sealed
    //    so only the accounting is wrong): thin_check must object.
    let path = scratch("damaged-count.img");
    let mut io = empty_device(&path, 2048);
    write_image(&mut io, &m).unwrap();
    let sb = read_superblock(&io).unwrap();
    let index = io.read(sb.metadata_sm_root.bitmap_root).unwrap();
    let bitmap_at = u64::from_le_bytes(index[16..24].try_into().unwrap());
    let mut entries =
        metadata::pdata::space_map::unpack_bitmap(&io.read(bitmap_at).unwrap(), bitmap_at).unwrap();
    entries[5] = 0;
    io.write(&[(bitmap_at, &pack_bitmap(&entries, bitmap_at))])
        .unwrap();
    let check = tool("thin_check", &[path.to_str().unwrap()]);
    assert!(
        !check.status.success(),
        "thin_check accepted a wrong metadata count"
    );

    // 2. A flipped byte in the mapping root: both thin_check and our reader refuse.
    let path2 = scratch("damaged-node.img");
    let mut io = empty_device(&path2, 2048);
    write_image(&mut io, &m).unwrap();
    let sb = read_superblock(&io).unwrap();
    let mut b = io.read(sb.data_mapping_root).unwrap();
    b[40] ^= 0x55;
    io.write(&[(sb.data_mapping_root, &b)]).unwrap();
    assert!(!tool("thin_check", &[path2.to_str().unwrap()])
        .status
        .success());
    assert!(read_image(&io, false).is_err());
    // Re-sealed with bad keys: checksum fine, structure not.
    seal(&mut b, BlockKind::Node);
    io.write(&[(sb.data_mapping_root, &b)]).unwrap();
    assert!(
        read_image(&io, false).is_err()
            || !tool("thin_check", &[path2.to_str().unwrap()])
                .status
                .success()
    );
    std::fs::remove_file(path).unwrap();
    std::fs::remove_file(path2).unwrap();
}
