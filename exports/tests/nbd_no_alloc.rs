//! A connection's steady path allocates nothing on its reactor: reads,
//! whole-block writes and flushes, pipelined 32 deep, go through pooled
//! I/Os and buffers, reused receive and send buffers and fixed slots. A
//! counting allocator watches the two reactor threads (not the client's)
//! once the connection is warm. Its own test binary, so the allocator
//! sees only this test.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{pattern, Client, Setup, CMD_FLUSH, CMD_READ, CMD_WRITE};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
thread_local! {
    // Const-initialised with no destructor: reading it never allocates.
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if WATCHED.with(|w| w.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if WATCHED.with(|w| w.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const DEPTH: u64 = 32;

/// `rounds` rounds of DEPTH requests sent back to back (writes and reads
/// of distinct 4 KiB blocks, a flush every eighth) and their replies.
fn traffic(c: &mut Client, rounds: u64, data: &[u8]) {
    for r in 0..rounds {
        for i in 0..DEPTH {
            let block = (r * DEPTH + i) % 512;
            match i % 8 {
                7 => c.send(CMD_FLUSH, 0, 0, &[]),
                k if k % 2 == 0 => c.send(CMD_WRITE, block * 4096, 4096, data),
                _ => c.send(CMD_READ, block * 4096, 4096, &[]),
            }
            .unwrap();
        }
        for _ in 0..DEPTH {
            assert_eq!(c.recv().unwrap().1, 0);
        }
    }
}

#[test]
fn a_warm_connection_allocates_nothing_on_its_reactor() {
    let s = Setup::new(1024);
    let mut c = s.connect();
    let data = pattern(4096, 3);
    traffic(&mut c, 200, &data);
    for core in [0, 1] {
        s.set
            .block_on(core, || async { WATCHED.with(|w| w.set(true)) })
            .unwrap();
    }
    let before = ALLOCS.load(Ordering::Relaxed);
    let rounds = 1000;
    traffic(&mut c, rounds, &data);
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    for core in [0, 1] {
        s.set
            .block_on(core, || async { WATCHED.with(|w| w.set(false)) })
            .unwrap();
    }
    eprintln!(
        "{allocs} allocations on the reactors for {} requests",
        rounds * DEPTH
    );
    // Counted from after the block_on that turned counting on and up to
    // before the one that turns it off: their own tasks are outside.
    assert_eq!(allocs, 0, "allocations for {} requests", rounds * DEPTH);
    drop(c);
    s.stop();
}
