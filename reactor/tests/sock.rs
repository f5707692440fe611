//! Reactor sockets under load: echo servers on two reactors, clients that
//! write far more than the socket buffers hold before reading (so both
//! sides meet EAGAIN and short writes), over TCP and Unix sockets.

mod sock_util;

use std::io::{Read, Write};
use std::time::Duration;

use reactor::{ReactorOptions, ReactorSet};
use sock_util::{echo_server, tcp, wait_open};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes `data` from one thread while another reads the echo back.
fn round_trip<S: Read + Write + Send + 'static>(mut w: S, mut r: S, data: Vec<u8>) -> Vec<u8> {
    let len = data.len();
    let writer = std::thread::spawn(move || {
        // Uneven chunks: the server sees reads that split anywhere.
        for chunk in data.chunks(7919) {
            w.write_all(chunk).unwrap();
        }
        w
    });
    let mut back = vec![0u8; len];
    r.read_exact(&mut back).unwrap();
    drop(writer.join().unwrap());
    back
}

#[test]
fn tcp_and_unix_streams_echo_megabytes_through_short_writes() {
    let set = ReactorSet::start(&[0, 1], ReactorOptions::default()).unwrap();
    let (l, addr) = tcp();
    echo_server(&set.handle(), 0, l, vec![0, 1]);
    let dir = std::env::temp_dir().join(format!("reactor-sock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo.sock");
    let _ = std::fs::remove_file(&path);
    let ul = std::os::unix::net::UnixListener::bind(&path).unwrap();
    echo_server(&set.handle(), 1, ul.into(), vec![1, 0]);

    let clients: Vec<_> = (0..6u8)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let data = pattern(3 << 20, i);
                let back = if i % 2 == 0 {
                    let s = std::net::TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    round_trip(s.try_clone().unwrap(), s, data.clone())
                } else {
                    let s = std::os::unix::net::UnixStream::connect(&path).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    round_trip(s.try_clone().unwrap(), s, data.clone())
                };
                assert!(back == data, "client {i}: echo differs");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // Every echo task saw its client leave.
    wait_open(0);
    set.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sockets_refuse_registration_off_a_reactor() {
    let (l, _) = tcp();
    let e = reactor::sock::Listener::new(l)
        .err()
        .expect("no reactor here");
    assert_eq!(e.kind(), std::io::ErrorKind::Other);
}
