//! The copy-on-write B-tree against `BTreeMap` (proptest): random inserts,
//! overwrites and removes over a small key range (so nodes split, merge
//! and redistribute), with commits and reopens from the committed image.

use std::collections::BTreeMap;

use metadata::io::MemIo;
use metadata::pdata::btree::{self, Tree, ValueKind};
use metadata::pdata::tm::Tm;
use metadata::thin::write::write_image;
use metadata::thin::PoolModel;
use proptest::prelude::*;

const PLAIN: Tree = Tree {
    value_size: 8,
    kind: ValueKind::Plain,
};

#[derive(Clone, Debug)]
enum Op {
    Insert(u64, u64),
    Remove(u64),
    Commit,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0u64..3000, any::<u64>()).prop_map(|(k, v)| Op::Insert(k, v)),
        6 => (0u64..3000).prop_map(Op::Remove),
        1 => Just(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

fn fresh() -> (Tm, metadata::pdata::superblock::Superblock) {
    let mut io = MemIo::new(4096);
    write_image(
        &mut io,
        &PoolModel {
            data_block_size: 128,
            nr_data_blocks: 16,
            ..Default::default()
        },
    )
    .unwrap();
    Tm::open(Box::new(io)).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn btree_matches_btreemap(ops in proptest::collection::vec(op(), 1..2500)) {
        let (mut tm, mut sb) = fresh();
        // The tree under test lives in the mapping-root slot of our own
        // superblock (formatted as an empty leaf of 8-byte values), so
        // commits carry it and reopens find it.
        let mut root = sb.data_mapping_root;
        let mut model = BTreeMap::new();
        let mut committed = (root, BTreeMap::new());
        for op in ops {
            match op {
                Op::Insert(k, v) => {
                    let (r, new) = btree::insert(&mut tm, root, k, &v.to_le_bytes(), PLAIN, false).unwrap();
                    root = r;
                    prop_assert_eq!(new, model.insert(k, v).is_none());
                }
                Op::Remove(k) => {
                    let (r, old) = btree::remove(&mut tm, root, k, PLAIN).unwrap();
                    root = r;
                    let old = old.map(|v| u64::from_le_bytes(v[..8].try_into().unwrap()));
                    prop_assert_eq!(old, model.remove(&k));
                }
                Op::Commit => {
                    sb.data_mapping_root = root;
                    tm.commit(&mut sb, &mut || Ok(())).unwrap();
                    committed = (root, model.clone());
                }
                Op::Reopen => {
                    let (t, s) = Tm::open(tm.into_io()).unwrap();
                    tm = t;
                    sb = s;
                    root = sb.data_mapping_root;
                    prop_assert_eq!(root, committed.0);
                    model = committed.1.clone();
                }
            }
        }
        let all: BTreeMap<u64, u64> = btree::range(&mut tm, root, 0, u64::MAX, PLAIN)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, u64::from_le_bytes(v[..8].try_into().unwrap())))
            .collect();
        prop_assert_eq!(&all, &model);
        for k in (0..3000).step_by(97) {
            let got = btree::lookup(&mut tm, root, k, PLAIN).unwrap().map(|v| u64::from_le_bytes(v[..8].try_into().unwrap()));
            prop_assert_eq!(got, model.get(&k).copied());
        }
    }
}
