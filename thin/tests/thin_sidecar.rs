//! The side table (`thin::sidecar`): the copy the committed transaction
//! id names is the one read back; a copy staged for a change that never
//! committed (a crash, a refused call) is not; the pool stays one that
//! Debian's thin_check accepts, and the superblock carries the mark.

mod thin_util;

use thin::PoolOptions;
use thin_util::*;

fn opts() -> PoolOptions {
    PoolOptions {
        block_size: 64 << 10,
        ..PoolOptions::default()
    }
}

async fn table(p: &thin::PoolHandle) -> Option<Vec<u8>> {
    p.side_table().await.expect("side table")
}

#[test]
fn the_committed_transaction_picks_the_copy() {
    run(|| async {
        let base = unique("side");
        malloc(&base, 32 << 20);
        let name = unique("sp");
        let p = thin::create_pool(&name, &base, None, opts()).await.unwrap();
        assert_eq!(table(&p).await, None, "a plain pool has no side table");
        p.side_table_format([7; 16], b"one".to_vec()).await.unwrap();
        assert_eq!(table(&p).await.as_deref(), Some(&b"one"[..]));

        // Alone, then with a change that takes the staged copy.
        p.commit_side_table(b"two".to_vec()).await.unwrap();
        assert_eq!(table(&p).await.as_deref(), Some(&b"two"[..]));
        let tid = p.stage_side_table(b"three".to_vec()).await.unwrap();
        assert!(!p.side_table_landed(tid).await.unwrap());
        thin::create_volume(&name, &unique("v"), 1 << 20, Some(5))
            .await
            .unwrap();
        assert!(p.side_table_landed(tid).await.unwrap());

        // A change refused before it changes anything leaves the copy
        // staged; unstaged, the next commit does not carry it.
        let tid = p.stage_side_table(b"refused".to_vec()).await.unwrap();
        assert!(thin::create_volume(&name, &unique("v"), 1 << 20, Some(5))
            .await
            .is_err());
        assert!(!p.side_table_landed(tid).await.unwrap());
        p.unstage_side_table().await.unwrap();
        thin::create_volume(&name, &unique("v"), 1 << 20, Some(6))
            .await
            .unwrap();
        assert!(!p.side_table_landed(tid).await.unwrap());
        assert_eq!(table(&p).await.as_deref(), Some(&b"three"[..]));

        // Staged, written, then the process dies before a commit: the
        // reopened pool reads the copy of the last commit.
        let tid = p.stage_side_table(b"four".to_vec()).await.unwrap();
        drop(p);
        thin::abandon_pool(&name).await.unwrap();
        let p = thin::create_pool(&name, &base, None, opts()).await.unwrap();
        assert_eq!(table(&p).await.as_deref(), Some(&b"three"[..]));
        assert!(!p.side_table_landed(tid).await.unwrap());
        // And the next copy goes where "four" went, over it.
        p.commit_side_table(b"five".to_vec()).await.unwrap();
        drop(p);
        thin::delete_pool(&name).await.unwrap();

        // The superblock is marked; thin_check accepts the pool with its
        // hidden device.
        let desc = bdev::open(&base, false, None).unwrap();
        let ch = desc.io_channel().unwrap();
        let head = ch.read(0, 1).await.unwrap();
        assert_eq!(
            thin::sidecar::marked_superblock_uuid(head.as_slice()),
            Some([7; 16])
        );
        drop(ch);
        drop(desc);
        let (ok, out) = thin_check(&base, (32 << 20) / BS as u64).await;
        assert!(ok, "thin_check: {out}");
        let p = thin::create_pool(&name, &base, None, opts()).await.unwrap();
        assert_eq!(table(&p).await.as_deref(), Some(&b"five"[..]));
        assert!(
            p.stage_side_table(vec![0; 64 << 10]).await.is_err(),
            "a table larger than a copy"
        );
        drop(p);
        thin::delete_pool(&name).await.unwrap();
        bdev::unregister(&base).unwrap();
    });
}
