use super::*;

fn sample() -> LvolTable {
    let snap = Uuid([7; 16]);
    LvolTable {
        lvs_uuid: Uuid([1; 16]),
        lvs_name: "lvs0".into(),
        cluster_size: 4 << 20,
        lvols: vec![
            LvolEntry {
                uuid: snap,
                name: "snap".into(),
                dev_id: 1,
                size_bytes: 8 << 20,
                read_only: true,
                thin: false,
                parent: Parent::None,
                clear_method: ClearMethod::Default,
            },
            LvolEntry {
                uuid: Uuid([9; 16]),
                name: "x".repeat(NAME_MAX),
                dev_id: 0,
                size_bytes: 8 << 20,
                read_only: false,
                thin: true,
                parent: Parent::Lvol(snap),
                clear_method: ClearMethod::WriteZeroes,
            },
            LvolEntry {
                uuid: Uuid([3; 16]),
                name: "esnap".into(),
                dev_id: 2,
                size_bytes: 4 << 20,
                read_only: false,
                thin: true,
                parent: Parent::External(Uuid([4; 16])),
                clear_method: ClearMethod::None,
            },
        ],
    }
}

#[test]
fn a_table_round_trips_with_every_field() {
    let t = sample();
    let b = t.encode();
    assert_eq!(b.len(), LvolTable::encoded_len(3));
    assert_eq!(LvolTable::decode(&b), Ok(t.clone()));
    assert_eq!(t.clones_of(Uuid([7; 16])).len(), 1);
    assert_eq!(t.by_name("esnap").map(|l| l.dev_id), Some(2));
}

#[test]
fn the_layout_is_the_documented_one() {
    let b = sample().encode();
    assert_eq!(&b[0..4], &1u32.to_le_bytes());
    assert_eq!(&b[4..8], &3u32.to_le_bytes());
    assert_eq!(&b[24..32], &(4u64 << 20).to_le_bytes());
    assert_eq!(b[32], 4);
    assert_eq!(&b[33..37], b"lvs0");
    let e1 = &b[HEADER_BYTES + ENTRY_BYTES..];
    assert_eq!(&e1[16..20], &0u32.to_le_bytes());
    assert_eq!(&e1[20..24], &2u32.to_le_bytes());
    assert_eq!(e1[32], 1);
    assert_eq!(&e1[98..114], &[7u8; 16]);
}

#[test]
fn damaged_bytes_are_an_error_not_a_panic() {
    let good = sample().encode();
    assert!(LvolTable::decode(&good[..good.len() - 1]).is_err());
    assert!(LvolTable::decode(&[]).is_err());
    let mut bad = good.clone();
    bad[0] = 2;
    assert!(LvolTable::decode(&bad).is_err());
    let mut bad = good.clone();
    bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(LvolTable::decode(&bad).is_err());
    let mut bad = good.clone();
    bad[HEADER_BYTES + 32] = 9;
    assert!(LvolTable::decode(&bad).is_err());
    let mut bad = good;
    bad[HEADER_BYTES + 34] = 0;
    assert!(LvolTable::decode(&bad).is_err());
}
