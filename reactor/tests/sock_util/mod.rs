//! An echo server on reactors, for the socket tests: a listener task on
//! one core hands each connection to a core in turn, where a task echoes
//! what it reads, handling short writes and EAGAIN both ways.

#![allow(dead_code)]

use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use reactor::sock::{Listener, StdListener, StdStream, Stream};
use reactor::ReactorHandle;

/// Connections the echo tasks are serving now.
pub static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Serves `l` from `core`, echo tasks on `cores` round-robin.
pub fn echo_server(set: &ReactorHandle, core: u32, l: StdListener, cores: Vec<u32>) {
    let handle = set.clone();
    set.spawn_on(core, move || async move {
        let l = Listener::new(l).expect("register the listener");
        let mut n = 0usize;
        loop {
            match l.accept() {
                Ok(s) => {
                    let c = cores[n % cores.len()];
                    n += 1;
                    handle
                        .spawn_on(c, move || echo(s))
                        .expect("reactors are running");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::future::poll_fn(|cx| l.poll_acceptable(cx)).await
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    })
    .unwrap();
}

async fn echo(s: StdStream) {
    let s = Rc::new(Stream::new(s).expect("register the stream"));
    OPEN.fetch_add(1, Ordering::SeqCst);
    let mut buf = vec![0u8; 16 << 10];
    'conn: loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                s.readable().await;
                continue;
            }
            Err(_) => break,
        };
        let mut at = 0;
        while at < n {
            match s.write(&buf[at..n]) {
                Ok(k) => at += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.writable().await,
                Err(_) => break 'conn,
            }
        }
    }
    OPEN.fetch_sub(1, Ordering::SeqCst);
}

/// A TCP listener on a free port of the loopback, and its address.
pub fn tcp() -> (StdListener, std::net::SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l.into(), a)
}

pub fn wait_open(n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while OPEN.load(Ordering::SeqCst) != n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} connections open, want {n}",
            OPEN.load(Ordering::SeqCst)
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

pub fn shared<T>(v: T) -> Arc<T> {
    Arc::new(v)
}
