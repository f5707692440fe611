use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

fn idle_pair() -> ReactorSet {
    ReactorSet::start(
        &[0, 1],
        ReactorOptions {
            mode: PollMode::Idle { spins: 100 },
            no_pin: false,
        },
    )
    .unwrap()
}

#[test]
fn messages_across_cores_arrive_in_order_per_sender() {
    let set = idle_pair();
    let seen = Arc::new(Mutex::new(Vec::new()));
    // Two senders (an outside thread and reactor 0) each send 10k numbered
    // messages to reactor 1; each sender's numbers must arrive in order.
    let s = seen.clone();
    set.send(0, move || {
        for i in 0..10_000u32 {
            let s = s.clone();
            send(1, move || s.lock().unwrap().push((0u8, i))).unwrap();
        }
    })
    .unwrap();
    for i in 0..10_000u32 {
        let s = seen.clone();
        set.send(1, move || s.lock().unwrap().push((1u8, i)))
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 20_000 {
        assert!(Instant::now() < deadline, "messages lost");
        std::thread::sleep(Duration::from_millis(1));
    }
    let seen = seen.lock().unwrap();
    for sender in [0u8, 1] {
        let order: Vec<u32> = seen
            .iter()
            .filter(|(s, _)| *s == sender)
            .map(|(_, i)| *i)
            .collect();
        assert_eq!(order, (0..10_000).collect::<Vec<_>>(), "sender {sender}");
    }
}

#[test]
fn messages_to_a_missing_core_are_refused() {
    let set = idle_pair();
    assert!(matches!(
        set.send(7, || {}),
        Err(ReactorError::NoSuchCore(7))
    ));
    let r = set.block_on(0, || async { send(9, || {}) }).unwrap();
    assert!(matches!(r, Err(ReactorError::NoSuchCore(9))));
    assert!(matches!(send(0, || {}), Err(ReactorError::NotOnReactor)));
}

#[test]
fn pollers_run_until_unregistered() {
    let set = idle_pair();
    let n = set
        .block_on(0, || async {
            let count = Rc::new(Cell::new(0u32));
            let c = count.clone();
            let mut p = register_poller(move || {
                c.set(c.get() + 1);
                PollStatus::Busy
            });
            while count.get() < 1000 {
                yield_now().await;
            }
            p.unregister();
            let at_stop = count.get();
            for _ in 0..100 {
                yield_now().await;
            }
            (at_stop, count.get())
        })
        .unwrap();
    assert_eq!(n.0, n.1, "poller ran after unregister");
}

#[test]
fn a_poller_may_unregister_itself() {
    let set = idle_pair();
    let runs = set
        .block_on(0, || async {
            let runs = Rc::new(Cell::new(0u32));
            let slot: Rc<Cell<Option<Poller>>> = Rc::new(Cell::new(None));
            let (r, s) = (runs.clone(), slot.clone());
            slot.set(Some(register_poller(move || {
                r.set(r.get() + 1);
                if r.get() == 3 {
                    drop(s.take());
                }
                PollStatus::Busy
            })));
            for _ in 0..50 {
                yield_now().await;
            }
            runs.get()
        })
        .unwrap();
    assert_eq!(runs, 3);
}

#[test]
fn timers_fire_in_deadline_order_and_cancel() {
    let set = idle_pair();
    let order = set
        .block_on(0, || async {
            let order = Rc::new(std::cell::RefCell::new(Vec::new()));
            for (i, ms) in [(0, 30u64), (1, 10), (2, 20)] {
                let o = order.clone();
                after(Duration::from_millis(ms), move || o.borrow_mut().push(i)).detach();
            }
            let o = order.clone();
            let cancelled = after(Duration::from_millis(15), move || o.borrow_mut().push(99));
            drop(cancelled);
            sleep(Duration::from_millis(60)).await;
            let out = order.borrow().clone();
            out
        })
        .unwrap();
    assert_eq!(order, vec![1, 2, 0]);
}

#[test]
fn timed_pollers_run_on_their_period() {
    let set = idle_pair();
    let (runs, elapsed) = set
        .block_on(1, || async {
            let runs = Rc::new(Cell::new(0u32));
            let r = runs.clone();
            let start = Instant::now();
            let p = register_timed_poller(Duration::from_millis(5), move || {
                r.set(r.get() + 1);
                PollStatus::Busy
            });
            while runs.get() < 10 {
                sleep(Duration::from_millis(1)).await;
            }
            drop(p);
            (runs.get(), start.elapsed())
        })
        .unwrap();
    // The task checks every millisecond, so a stalled reactor may let one
    // more run in before it looks; a burst (several runs per period) may not.
    assert!((10..=11).contains(&runs), "{runs}");
    // The n-th run comes a full period after the (n-1)-th, never sooner.
    assert!(
        elapsed >= Duration::from_millis(5 * u64::from(runs) - 1),
        "{runs} runs in {elapsed:?}"
    );
}

#[test]
fn a_parked_reactor_wakes_for_a_message_within_a_millisecond() {
    let set = idle_pair();
    let mut samples = Vec::new();
    for _ in 0..21 {
        // Let reactor 1 go idle and park.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !set.stats()[1].in_interrupt {
            assert!(Instant::now() < deadline, "reactor never parked");
            std::thread::sleep(Duration::from_micros(200));
        }
        let ran_at = Arc::new(Mutex::new(None));
        let r = ran_at.clone();
        let sent = Instant::now();
        set.send(1, move || *r.lock().unwrap() = Some(Instant::now()))
            .unwrap();
        let at = loop {
            if let Some(t) = *ran_at.lock().unwrap() {
                break t;
            }
            std::thread::yield_now();
        };
        samples.push(at - sent);
        std::thread::sleep(Duration::from_millis(2));
    }
    samples.sort();
    let median = samples[samples.len() / 2];
    assert!(
        median < Duration::from_millis(1),
        "median wake latency {median:?}, samples {samples:?}"
    );
    assert!(set.stats()[1].parks > 0);
}

#[test]
fn parked_reactor_wakes_for_its_timer() {
    let set = idle_pair();
    let t = set
        .block_on(0, || async {
            let start = Instant::now();
            sleep(Duration::from_millis(20)).await;
            start.elapsed()
        })
        .unwrap();
    assert!(
        t >= Duration::from_millis(20) && t < Duration::from_secs(2),
        "{t:?}"
    );
}

#[test]
fn tasks_woken_from_another_core_run_on_their_own() {
    let set = idle_pair();
    let (core_before, core_after, v) = set
        .block_on(0, || async {
            let before = current_core();
            let v = call_on(1, || async { current_core().unwrap() * 10 + 7 })
                .await
                .unwrap();
            (before, current_core(), v)
        })
        .unwrap();
    assert_eq!((core_before, core_after, v), (Some(0), Some(0), 17));
}

#[test]
fn shutdown_runs_pending_messages() {
    let set = idle_pair();
    let ran = Arc::new(AtomicUsize::new(0));
    // Block reactor 1 briefly so messages pile up, then stop at once.
    set.send(1, || std::thread::sleep(Duration::from_millis(50)))
        .unwrap();
    for _ in 0..1000 {
        let r = ran.clone();
        set.send(1, move || {
            r.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
    }
    set.stop();
    assert_eq!(ran.load(Ordering::Relaxed), 1000);
}

struct Chan {
    core: u32,
    destroyed: Arc<AtomicUsize>,
}
impl Drop for Chan {
    fn drop(&mut self) {
        self.destroyed.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn io_channels_are_per_core_lazy_and_released_by_the_last_user() {
    let set = idle_pair();
    let dev = Arc::new(IoDevice::<Chan>::new());
    let created = Arc::new(AtomicUsize::new(0));
    let destroyed = Arc::new(AtomicUsize::new(0));
    let (d, c, x) = (dev.clone(), created.clone(), destroyed.clone());
    let out = set
        .block_on(0, move || async move {
            assert!(d.channel().is_none(), "created before first use");
            let mk = || {
                c.fetch_add(1, Ordering::Relaxed);
                Ok::<_, ReactorError>(Chan {
                    core: current_core().unwrap(),
                    destroyed: x.clone(),
                })
            };
            let a = d.get_or_create(mk).unwrap();
            let b = d.get_or_create(mk).unwrap();
            assert!(Rc::ptr_eq(&a, &b), "one channel per core");
            // A channel on core 1 too, kept alive there by a leaked-on-purpose holder.
            let d1 = d.clone();
            let (c1, x1) = (c.clone(), x.clone());
            call_on(1, move || async move {
                let ch = d1
                    .get_or_create(|| {
                        c1.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, ReactorError>(Chan {
                            core: 1,
                            destroyed: x1,
                        })
                    })
                    .unwrap();
                std::mem::forget(ch);
            })
            .await
            .unwrap();
            let visited = Arc::new(Mutex::new(Vec::new()));
            let v = visited.clone();
            d.for_each_channel(move |ch: Rc<Chan>| {
                let v = v.clone();
                async move {
                    assert_eq!(Some(ch.core), current_core());
                    v.lock().unwrap().push(ch.core);
                    Ok::<(), ReactorError>(())
                }
            })
            .await
            .unwrap();
            let back_on = current_core();
            drop(a);
            let alive_after_one_drop = d.channel().is_some();
            drop(b);
            let alive_after_both = d.channel().is_some();
            let visited = visited.lock().unwrap().clone();
            (visited, back_on, alive_after_one_drop, alive_after_both)
        })
        .unwrap();
    assert_eq!(
        out.0,
        vec![0, 1],
        "visits every core with a channel, in order"
    );
    assert_eq!(out.1, Some(0), "completion runs on the caller's core");
    assert!(out.2 && !out.3, "released when the last user drops it");
    assert_eq!(created.load(Ordering::Relaxed), 2);
    assert_eq!(destroyed.load(Ordering::Relaxed), 1);
}

#[test]
fn for_each_channel_skips_cores_without_a_channel_and_stops_on_error() {
    let set = idle_pair();
    let dev = Arc::new(IoDevice::<u32>::new());
    let calls = Arc::new(AtomicU64::new(0));
    let (d, c) = (dev.clone(), calls.clone());
    let r = set
        .block_on(1, move || async move {
            let _ch = d.get_or_create(|| Ok::<_, ReactorError>(5u32)).unwrap();
            let c2 = c.clone();
            let ok = d
                .for_each_channel(move |ch: Rc<u32>| {
                    c2.fetch_add(*ch as u64, Ordering::Relaxed);
                    async { Ok::<(), ReactorError>(()) }
                })
                .await;
            let err = d
                .for_each_channel(|_ch: Rc<u32>| async {
                    Err::<(), ReactorError>(ReactorError::Stopped)
                })
                .await;
            (ok.is_ok(), err.is_err())
        })
        .unwrap();
    assert_eq!(r, (true, true));
    assert_eq!(
        calls.load(Ordering::Relaxed),
        5,
        "only core 1 had a channel"
    );
}

#[test]
fn busy_and_idle_time_are_counted() {
    let set = idle_pair();
    set.block_on(0, || async {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            yield_now().await;
        }
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let s = &set.stats()[0];
    assert!(s.busy_ns >= 20_000_000, "{s:?}");
    assert!(s.idle_ns > 0 && s.loops > 0, "{s:?}");
}

#[test]
fn timeout_returns_the_output_or_none_when_time_runs_out() {
    let set = idle_pair();
    let (fast, slow) = set
        .block_on(0, || async {
            let fast = timeout(Duration::from_secs(5), async { 7 }).await;
            let t = Instant::now();
            let slow = timeout(Duration::from_millis(20), sleep(Duration::from_secs(30))).await;
            assert!(t.elapsed() < Duration::from_secs(5));
            (fast, slow)
        })
        .unwrap();
    assert_eq!(fast, Some(7));
    assert_eq!(slow, None);
}

#[test]
fn block_on_returns_when_its_reactor_dies() {
    let set = idle_pair();
    // A future that never finishes keeps its reply's sender queued on
    // core 0; then a task's panic ends core 0's thread.
    let h = set.handle();
    let waiter = std::thread::spawn(move || h.block_on(0, std::future::pending::<()>));
    std::thread::sleep(Duration::from_millis(50));
    set.send(0, || panic!("a bug in a task (this test's own panic)"))
        .unwrap();
    assert!(matches!(waiter.join().unwrap(), Err(ReactorError::Stopped)));
    // The other core still answers.
    assert_eq!(set.block_on(1, || async { 7 }).unwrap(), 7);
}
