//! A reactor pair holding 100 idle connections parks like an idle one
//! (its own process, so no other test's CPU time is counted), and a
//! parked reactor wakes at once for a socket: the socket's epoll fd is
//! part of what the reactor sleeps on, there is no periodic poll.

mod cpu_util;
mod sock_util;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use cpu_util::process_cpu;
use reactor::{ReactorOptions, ReactorSet};
use sock_util::{echo_server, tcp, wait_open};

#[test]
fn idle_connections_cost_no_cpu_and_a_parked_reactor_wakes_for_input() {
    let set = ReactorSet::start(&[0, 1], ReactorOptions::default()).unwrap();
    let (l, addr) = tcp();
    echo_server(&set.handle(), 0, l, vec![0, 1]);
    let mut conns: Vec<std::net::TcpStream> = (0..100)
        .map(|_| {
            let s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.set_nodelay(true).unwrap();
            s
        })
        .collect();
    wait_open(100);
    for s in conns.iter_mut() {
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
    }

    let before = process_cpu();
    std::thread::sleep(Duration::from_secs(5));
    let used = process_cpu() - before;
    // Parked now, each of them. (Counting parks in the window would be
    // wrong: a reactor that parked before it and was never woken, the
    // best case, adds none.)
    let parked: Vec<bool> = set.stats().iter().map(|r| r.in_interrupt).collect();
    eprintln!("100 idle connections on 2 reactors: {used:?} CPU in 5 s, parked: {parked:?}");
    assert!(
        used < Duration::from_millis(100),
        "idle process used {used:?} of CPU in 5 s"
    );
    assert_eq!(parked, [true, true], "reactors not parked");

    // Both reactors are parked now, with no timer to wake them: an echo
    // comes back only if socket input wakes a parked reactor. 100 ms is
    // far above a wake-up (microseconds) and far below the 5 s read
    // timeout that a reactor that slept on would hit.
    let mut worst = Duration::ZERO;
    for s in conns.iter_mut().step_by(10) {
        assert!(set.stats().iter().all(|r| r.in_interrupt), "not parked");
        let t = Instant::now();
        s.write_all(b"y").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("a parked reactor did not wake");
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("worst echo from parked reactors: {worst:?}");
    assert!(
        worst < Duration::from_millis(100),
        "slow wake-up: {worst:?}"
    );
    drop(conns);
    wait_open(0);
    set.stop();
}
