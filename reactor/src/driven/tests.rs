use std::any::Any;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::{
    after, call_on, current_core, duration_to_ticks, register_poller, register_timed_poller, send,
    sleep, spawn_local, ticks, IoDevice, PollStatus,
};

/// A caller's clock far from the counter's values, so a test can tell
/// which of the two `ticks` read.
const T0: u64 = 1 << 62;

/// A thread the test owns turning one core on the test's clock until
/// told to stop; waits on the reactor when a turn finds nothing to do.
struct Driver {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Driver {
    fn start(set: &Arc<DrivenSet>, core: u32, clock: &Arc<AtomicU64>) -> Driver {
        let stop = Arc::new(AtomicBool::new(false));
        let (set, clock, s) = (set.clone(), clock.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let r = set.attach(core).expect("attach");
            let mut turns = 0u64;
            loop {
                let t = r.turn(clock.load(Ordering::Acquire)).expect("turn");
                turns += 1;
                if !t.busy {
                    if s.load(Ordering::Acquire) {
                        return turns;
                    }
                    r.wait(Some(Duration::from_millis(1)));
                }
            }
        });
        Driver {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let turns = t.join().expect("driver thread");
            assert!(turns > 0);
        }
    }
}

/// Waits (really) for `rx`, failing the test after ten seconds.
fn recv<T>(rx: &mpsc::Receiver<T>) -> T {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("no answer from a driven core")
}

#[test]
fn two_threads_drive_two_cores_on_the_callers_clock() {
    let set = Arc::new(DrivenSet::new(&[0, 1], PollMode::Idle { spins: 0 }).unwrap());
    let clock = Arc::new(AtomicU64::new(T0));
    let drivers = [
        Driver::start(&set, 0, &clock),
        Driver::start(&set, 1, &clock),
    ];

    // Messages both ways and tasks on both cores: core 0 asks core 1,
    // which answers from its own core, a thousand times.
    let answers = set
        .block_on(0, || async {
            let mut answers = Vec::new();
            for i in 0..1000u32 {
                let here = current_core();
                let there = call_on(1, move || async move { (current_core(), i) })
                    .await
                    .unwrap();
                answers.push((here, there));
            }
            answers
        })
        .unwrap();
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(*a, (Some(0), (Some(1), i as u32)));
    }

    // A timer fires only once the caller's clock passes its deadline,
    // however long the threads turn in the meantime.
    let (tx, rx) = mpsc::channel();
    set.spawn_on(1, move || async move {
        let start = ticks();
        sleep(Duration::from_millis(5)).await;
        let _ = tx.send((start, ticks()));
    })
    .unwrap();
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "a timer fired with the clock standing"
    );
    let d = duration_to_ticks(Duration::from_millis(5));
    assert!(d > 1, "tick rate not calibrated");
    clock.fetch_add(d - 1, Ordering::AcqRel);
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    clock.fetch_add(1, Ordering::AcqRel);
    let (start, end) = recv(&rx);
    assert_eq!(start, T0, "ticks() is the caller's clock inside a turn");
    assert_eq!(end, T0 + d);

    // An io device: one channel per core, made on first use on each, found
    // again by for_each_channel, which visits both threads' cores.
    let dev = Arc::new(IoDevice::<Cell<u32>>::new());
    let made = {
        let dev = dev.clone();
        set.block_on(1, move || async move {
            let ch = dev.get_or_create(|| Ok::<_, ReactorError>(Cell::new(10)))?;
            // Keep core 1's channel alive after this task.
            let keep = ch.clone();
            register_poller(move || {
                let _ = &keep;
                PollStatus::Idle
            })
            .detach();
            Ok::<_, ReactorError>(Rc::as_ptr(&ch) as usize)
        })
        .unwrap()
        .unwrap()
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (dev2, seen2) = (dev.clone(), seen.clone());
    let again = set
        .block_on(0, move || async move {
            let mine = dev2.get_or_create(|| Ok::<_, ReactorError>(Cell::new(20)))?;
            dev2.for_each_channel(move |ch| {
                let seen = seen2.clone();
                async move {
                    seen.lock().unwrap().push((current_core(), ch.get()));
                    ch.set(ch.get() + 1);
                    Ok::<_, ReactorError>(())
                }
            })
            .await?;
            let theirs = call_on(1, move || async move {
                dev2.channel().map(|c| (Rc::as_ptr(&c) as usize, c.get()))
            })
            .await?;
            Ok::<_, ReactorError>((mine.get(), theirs))
        })
        .unwrap()
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(Some(0), 20), (Some(1), 10)],
        "each core visited on its own driver, in core order"
    );
    assert_eq!(again, (21, Some((made, 11))));

    drop(drivers);
    // Stopped cores refuse new work.
    assert!(matches!(set.send(0, || {}), Err(ReactorError::Stopped)));
}

#[test]
fn timers_fire_when_the_callers_clock_reaches_them() {
    let set = DrivenSet::new(&[3], PollMode::Busy).unwrap();
    let r = set.attach(3).unwrap();
    let d = duration_to_ticks(Duration::from_millis(2));
    let period = duration_to_ticks(Duration::from_millis(3));
    assert!(d > 1 && period > d);

    let fired = Rc::new(Cell::new(None));
    let polls = Rc::new(Cell::new(0u32));
    let (f, p) = (fired.clone(), polls.clone());
    let seen = r
        .enter(T0, move || {
            after(Duration::from_millis(2), move || f.set(Some(ticks()))).detach();
            register_timed_poller(Duration::from_millis(3), move || {
                p.set(p.get() + 1);
                PollStatus::Busy
            })
            .detach();
            (ticks(), current_core())
        })
        .unwrap();
    assert_eq!(seen, (T0, Some(3)));
    assert!(ticks() < T0, "the counter again outside the turn");
    assert_eq!(current_core(), None);

    // Nothing to do: not busy, and the deadline is the timer's.
    let t = r.turn(T0).unwrap();
    assert_eq!(
        t,
        Turn {
            busy: false,
            next_deadline: Some(T0 + d)
        }
    );
    assert!(!r.turn(T0 + d - 1).unwrap().busy);
    assert_eq!(fired.get(), None);
    let t = r.turn(T0 + d).unwrap();
    assert!(t.busy);
    assert_eq!(fired.get(), Some(T0 + d));
    assert_eq!(t.next_deadline, Some(T0 + period), "the timed poller's");
    assert_eq!(polls.get(), 0);

    // A clock that runs backwards stands still instead.
    let t = r.turn(T0).unwrap();
    assert!(!t.busy);
    assert_eq!(r.enter(T0, ticks).unwrap(), T0 + d);

    // A turn long after runs the late periodic poller and sets it a
    // period after the turn's time.
    let late = T0 + 10 * period;
    let t = r.turn(late).unwrap();
    assert!(t.busy);
    assert!(polls.get() > 0);
    assert_eq!(t.next_deadline, Some(late + period));
}

#[test]
fn tasks_and_messages_run_in_the_next_turns() {
    let set = DrivenSet::new(&[0, 1], PollMode::Busy).unwrap();
    let (r0, r1) = (set.attach(0).unwrap(), set.attach(1).unwrap());
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    r0.enter(T0, move || {
        spawn_local(async move {
            l.borrow_mut().push("task started");
            crate::yield_now().await;
            l.borrow_mut().push("task resumed");
        })
        .detach();
        send(1, || assert_eq!(current_core(), Some(1))).unwrap();
    })
    .unwrap();
    assert!(log.borrow().is_empty(), "nothing runs inside enter");
    assert!(r0.turn(T0).unwrap().busy);
    assert_eq!(*log.borrow(), ["task started"]);
    assert!(r0.turn(T0).unwrap().busy);
    assert_eq!(*log.borrow(), ["task started", "task resumed"]);
    assert!(!r0.turn(T0).unwrap().busy);
    // Core 1's message waited in its inbox for its turn.
    assert!(r1.turn(T0).unwrap().busy);
    assert!(!r1.turn(T0).unwrap().busy);

    // A limited turn runs at most that many messages.
    let count = Arc::new(AtomicU64::new(0));
    for _ in 0..5 {
        let c = count.clone();
        set.send(1, move || {
            c.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
    }
    let limits = TurnLimits {
        messages: 2,
        tasks: 1,
    };
    assert!(r1.turn_limited(T0, limits).unwrap().busy);
    assert_eq!(count.load(Ordering::Relaxed), 2);
    assert!(r1.turn(T0).unwrap().busy);
    assert_eq!(count.load(Ordering::Relaxed), 5);
}

#[test]
fn a_core_is_driven_by_one_thread_only() {
    let set = Arc::new(DrivenSet::new(&[0, 1], PollMode::Busy).unwrap());
    let r0 = set.attach(0).unwrap();

    // Another thread cannot attach it while this one drives it, even in
    // the middle of a turn. (Nor can it be handed the reactor: it is not
    // `Send`; see the compile_fail example on `DrivenReactor`.)
    let (in_turn, go) = (mpsc::channel(), mpsc::channel::<()>());
    let (in_turn_tx, go_rx) = (in_turn.0, go.1);
    r0.enter(T0, || {
        register_poller(move || {
            let _ = in_turn_tx.send(());
            let _ = go_rx.recv_timeout(Duration::from_secs(10));
            PollStatus::Idle
        })
        .detach();
    })
    .unwrap();
    let other = {
        let set = set.clone();
        std::thread::spawn(move || {
            recv(&in_turn.1);
            let r = [set.attach(0).err(), set.attach(5).err()];
            let _ = go.0.send(());
            r.map(|e| e.map(|e| e.to_string()))
        })
    };
    let _ = r0.turn(T0).unwrap();
    let refused = other.join().unwrap();
    assert_eq!(
        refused,
        [
            Some(ReactorError::AlreadyDriven(0).to_string()),
            Some(ReactorError::NoSuchCore(5).to_string())
        ]
    );

    // A turn inside a turn is refused, of this core or another.
    let r1 = set.attach(1).unwrap();
    let nested = r0
        .enter(T0, || (r1.turn(T0).err(), r0.turn(T0).err()))
        .unwrap();
    assert!(matches!(
        nested,
        (Some(ReactorError::InTurn), Some(ReactorError::InTurn))
    ));
    // So is driving a core from a threaded reactor.
    let threaded = crate::ReactorSet::start(
        &[0],
        crate::ReactorOptions {
            no_pin: true,
            ..Default::default()
        },
    )
    .unwrap();
    let refused = threaded
        .block_on(0, || async {
            let set = DrivenSet::new(&[9], PollMode::Busy).unwrap();
            let r = set.attach(9).unwrap();
            matches!(r.turn(T0), Err(ReactorError::InTurn))
        })
        .unwrap();
    assert!(refused);

    // Dropping the reactor stops the core for good.
    drop(r0);
    assert!(matches!(set.attach(0), Err(ReactorError::Stopped)));
    assert!(matches!(set.send(0, || {}), Err(ReactorError::Stopped)));
}

#[test]
fn wait_sleeps_until_a_message_or_the_timeout() {
    let set = Arc::new(DrivenSet::new(&[0], PollMode::Idle { spins: 0 }).unwrap());
    let r = set.attach(0).unwrap();
    let start = Instant::now();
    r.wait(Some(Duration::from_millis(20)));
    assert!(start.elapsed() >= Duration::from_millis(20));

    let handle = set.handle();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        handle.send(0, || {}).unwrap();
    });
    let start = Instant::now();
    r.wait(Some(Duration::from_secs(10)));
    assert!(start.elapsed() < Duration::from_secs(5), "not woken");
    sender.join().unwrap();
    // Work already queued: no sleep at all.
    let start = Instant::now();
    r.wait(Some(Duration::from_secs(10)));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(r.turn(T0).unwrap().busy);
}

thread_local! {
    /// A layer's per-core state kept in a thread-local, as bdev's.
    static STATE: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    static MOVES: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

fn take_state() -> Box<dyn Any> {
    MOVES.with(|m| m.set((m.get().0 + 1, m.get().1)));
    Box::new(STATE.with(|s| std::mem::take(&mut *s.borrow_mut())))
}

fn put_state(b: Box<dyn Any>) {
    MOVES.with(|m| m.set((m.get().0, m.get().1 + 1)));
    if let Ok(v) = b.downcast::<Vec<u32>>() {
        STATE.with(|s| *s.borrow_mut() = *v);
    }
}

fn push_state() {
    let core = current_core().unwrap();
    STATE.with(|s| s.borrow_mut().push(core));
}

fn state() -> Vec<u32> {
    STATE.with(|s| s.borrow().clone())
}

#[test]
fn followed_state_moves_only_when_a_thread_switches_cores() {
    // A thread of its own, so the thread-locals start empty.
    std::thread::spawn(|| {
        let set = DrivenSet::new(&[0, 1], PollMode::Busy)
            .unwrap()
            .follow(take_state, put_state);
        let (r0, r1) = (set.attach(0).unwrap(), set.attach(1).unwrap());
        for _ in 0..3 {
            r0.enter(T0, push_state).unwrap();
            let _ = r0.turn(T0).unwrap();
        }
        assert_eq!(MOVES.with(Cell::get), (0, 0), "one core: nothing moves");
        assert_eq!(r0.enter(T0, state).unwrap(), [0, 0, 0]);
        // Core 1 starts on a fresh state; each keeps its own.
        assert_eq!(r1.enter(T0, state).unwrap(), [] as [u32; 0]);
        r1.enter(T0, push_state).unwrap();
        assert_eq!(r0.enter(T0, state).unwrap(), [0, 0, 0]);
        assert_eq!(r1.enter(T0, state).unwrap(), [1]);
        assert_eq!(MOVES.with(Cell::get), (3, 2));
        // A stopped core's state leaves the thread with it.
        drop(r1);
        assert_eq!(state(), [] as [u32; 0]);
        assert_eq!(r0.enter(T0, state).unwrap(), [0, 0, 0]);
        drop(r0);
        assert_eq!(state(), [] as [u32; 0]);
    })
    .join()
    .unwrap();
}
