//! The NBD server as a library, in this process: no daemon, no RPC. Two
//! reactors, a malloc bdev, clients on plain threads.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{pattern, threads, Client, Setup, CMD_READ, CMD_WRITE};

#[test]
fn pipelined_reads_writes_and_flushes_are_all_answered() {
    let s = Setup::new(4096);
    let mut c = s.connect();
    assert_eq!(c.size, 4096 * 4096);
    assert_eq!(c.write(0, &pattern(8192, 1)).unwrap(), 0);
    assert_eq!(c.read(0, 8192).unwrap(), pattern(8192, 1));
    assert_eq!(c.flush().unwrap(), 0);

    // 200 writes of distinct blocks in one burst (more than a socket
    // buffer holds: the server reads them in many pieces), then 200 reads,
    // then the replies in whatever order they complete.
    let mut sent = Vec::new();
    for i in 0..200u64 {
        sent.push(
            c.send(CMD_WRITE, (16 + i) * 4096, 4096, &pattern(4096, i))
                .unwrap(),
        );
    }
    let mut answered = Vec::new();
    for _ in 0..200 {
        let (cookie, err, _) = c.recv().unwrap();
        assert_eq!(err, 0);
        answered.push(cookie);
    }
    answered.sort();
    assert_eq!(answered, sent);
    let reads: Vec<u64> = (0..200u64)
        .map(|i| c.send(CMD_READ, (16 + i) * 4096, 4096, &[]).unwrap())
        .collect();
    for _ in 0..200 {
        let (cookie, err, data) = c.recv().unwrap();
        assert_eq!(err, 0);
        let i = reads.iter().position(|&r| r == cookie).unwrap() as u64;
        assert_eq!(data, pattern(4096, i), "block {}", 16 + i);
    }
    // A read larger than the reply batch copies (written from its own
    // buffer), and an unaligned one (served from the blocks it touches).
    assert_eq!(c.write(1 << 20, &pattern(1 << 20, 9)).unwrap(), 0);
    assert_eq!(c.read(1 << 20, 1 << 20).unwrap(), pattern(1 << 20, 9));
    assert_eq!(
        c.read((1 << 20) + 100, 5000).unwrap(),
        pattern(1 << 20, 9)[100..5100]
    );
    drop(c);
    s.stop();
}

/// Connections run on the cores the caller does not reserve; the
/// callback is asked for each connection.
#[test]
fn connections_avoid_reserved_cores() {
    let asked = Arc::new(AtomicUsize::new(0));
    let a = asked.clone();
    let s = Setup::with_reserved(
        1024,
        Arc::new(move || {
            a.fetch_add(1, Ordering::Relaxed);
            vec![1]
        }),
    );
    let before = s.set.stats();
    let mut clients: Vec<Client> = (0..4).map(|_| s.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        for _ in 0..200 {
            assert_eq!(c.write(i as u64 * 4096, &[7u8; 4096]).unwrap(), 0);
        }
    }
    let after = s.set.stats();
    // Core 1 stays idle (its reactor has no connection to wake it); core 0
    // serves all four.
    let busy = |core: usize| after[core].busy_ns - before[core].busy_ns;
    assert!(
        busy(1) * 10 < busy(0),
        "core 1 busy {} ns, core 0 {} ns",
        busy(1),
        busy(0)
    );
    assert!(asked.load(Ordering::Relaxed) >= 4);
    drop(clients);
    s.stop();
}

/// 200 connections open at once on two reactors, each doing a write, a
/// read and a flush, served with no thread of their own.
#[test]
fn two_hundred_simultaneous_connections_add_no_threads() {
    let s = Setup::new(1024);
    let base = threads();
    let mut clients: Vec<Client> = (0..200).map(|_| s.connect()).collect();
    let open = threads();
    // Every request is sent before any reply is read: all 200 are in
    // flight together.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(CMD_WRITE, i as u64 * 4096, 4096, &pattern(4096, i as u64))
            .unwrap();
    }
    for c in clients.iter_mut() {
        assert_eq!(c.recv().unwrap().1, 0);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            c.read(i as u64 * 4096, 4096).unwrap(),
            pattern(4096, i as u64)
        );
        assert_eq!(c.flush().unwrap(), 0);
    }
    eprintln!("threads: {base} before, {open} with 200 connections open");
    // Other tests of this binary may run beside this one, each with a
    // thread and two reactors; a thread per connection (or two, as the
    // old design had) would be 200 or 400 more.
    assert!(open < 20, "{open} threads with 200 connections open");
    drop(clients);
    s.stop();
}

/// Stopping an export closes its connections after their I/O; a client
/// of the stopped export sees the end of the stream.
#[test]
fn stopping_the_export_closes_its_connections() {
    let s = Setup::new(1024);
    let mut c = s.connect();
    assert_eq!(c.write(0, &[1u8; 4096]).unwrap(), 0);
    s.server.stop_disk(&s.addr, Some("disk")).unwrap();
    assert!(c.read(0, 4096).is_err());
    assert!(s.server.disks().is_empty());
    assert!(
        Client::connect(&s.addr, "disk").is_err(),
        "the listener went with its last export"
    );
    s.stop();
}

/// A client that sends garbage loses its connection; one that stalls in
/// the handshake holds nothing up.
#[test]
fn a_bad_frame_closes_only_its_connection() {
    use std::io::{Read, Write};
    let s = Setup::new(1024);
    let mut good = s.connect();
    let stalled = std::net::TcpStream::connect(&s.addr).unwrap();
    let mut bad = s.connect();
    bad.s.write_all(&[0u8; 28]).unwrap();
    bad.s
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(bad.s.read(&mut b).unwrap(), 0, "closed after a bad magic");
    assert_eq!(good.write(0, &[3u8; 4096]).unwrap(), 0);
    assert_eq!(good.read(0, 4096).unwrap(), vec![3u8; 4096]);
    drop(stalled);
    drop(good);
    s.stop();
}
