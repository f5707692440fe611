//! Opening and closing 1,000 connections that read leaves the I/O buffer
//! memory where it was after the first few (its own binary: the count is
//! process-wide, so no other test may move it).
//!
//! Buffers are pooled per thread and a thread's pool is never freed. When
//! each connection had a writer thread that dropped the read buffers, its
//! pool leaked with the thread: at least one buffer per size class per
//! connection. Now a read's buffer is dropped on the reactor that
//! allocated it, into the pool it came from.

mod common;

use bdev::IoBuf;
use common::{pattern, Setup, CMD_READ};

const CONNECTIONS: usize = 1000;
const WARM: usize = 50;

#[test]
fn a_thousand_connections_doing_reads_leave_buffer_memory_flat() {
    let s = Setup::new(1024);
    let mut c = s.connect();
    assert_eq!(c.write(0, &pattern(256 << 10, 1)).unwrap(), 0);
    drop(c);
    let mut warm = 0;
    for i in 0..CONNECTIONS {
        if i == WARM {
            warm = IoBuf::allocated_bytes();
        }
        let mut c = s.connect();
        // Two 4 KiB and two 64 KiB reads in flight at once, then one of
        // 256 KiB (written from its own buffer): three size classes.
        for (off, len) in [(0, 4096), (8192, 4096), (0, 65536), (65536, 65536)] {
            c.send(CMD_READ, off, len, &[]).unwrap();
        }
        for _ in 0..4 {
            assert_eq!(c.recv().unwrap().1, 0);
        }
        assert_eq!(c.read(0, 256 << 10).unwrap(), pattern(256 << 10, 1));
    }
    let end = IoBuf::allocated_bytes();
    eprintln!("I/O buffer bytes: {warm} after {WARM} connections, {end} after {CONNECTIONS}");
    // After the warm-up each reactor's pools hold what one connection's
    // reads need at once, and the following connections reuse it. A pool
    // can still gain a few buffers when two connections overlap on a core
    // (a client closes and the next opens before the reactor has ended
    // the first), so allow 1 MiB: four more buffers of each class on each
    // core. The leak this guards against adds at least one buffer per
    // class per connection: 324 KiB each, over 300 MiB for this run.
    assert!(
        end <= warm + (1 << 20),
        "buffer memory grew from {warm} to {end} bytes over {} connections",
        CONNECTIONS - WARM
    );
    s.stop();
}
