//! A job's I/O path without fio: io_us made here, a malloc bdev, the
//! core driven from the test's thread.

use super::*;
use bdev::rpc::RpcRegistry;
use serde_json::json;

fn malloc(name: &str) {
    RpcRegistry::with_modules()
        .call_now(
            "bdev_malloc_create",
            Some(json!({"name": name, "num_blocks": 256, "block_size": 4096})),
        )
        .unwrap();
}

fn io_u(ddir: sys::fio_ddir, offset: u64, buf: *mut u8, len: usize) -> Box<sys::io_u> {
    // SAFETY: io_u is plain C data; zero is fio's own initial state.
    let mut u: Box<sys::io_u> = Box::new(unsafe { std::mem::zeroed() });
    u.ddir = ddir;
    u.offset = offset;
    u.xfer_buf = buf as *mut libc::c_void;
    u.xfer_buflen = len as u64;
    u
}

/// Runs `u` through the job; returns its errno.
fn run(job: &mut Job, file: usize, u: &mut sys::io_u) -> u32 {
    let p: *mut sys::io_u = u;
    // SAFETY: `u` lives across the call and its buffer holds its length.
    if let Some(errno) = unsafe { job.queue(file, p) } {
        return errno;
    }
    assert_eq!(job.getevents(1, 4, None).unwrap(), 1);
    assert_eq!(job.event(0), Some(p));
    assert_eq!(job.inflight(), 0);
    u.error
}

/// Writes then reads back 8 KiB through buffers at `skew` bytes past a
/// 4 KiB boundary (0: fio's buffer lent as is, else copied).
fn round_trip(name: &str, bounce: bool, skew: usize) {
    malloc(name);
    let set = crate::process::driven_set(&[1, 0]).unwrap();
    let mut job = Job::new(&set, 1, 8, bounce).unwrap();
    let f = job.open(name).unwrap();
    assert_eq!(job.open(name).unwrap(), f, "a reopen finds the channel");
    let mut wbuf = IoBuf::new(16384);
    let mut rbuf = IoBuf::zeroed(16384);
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    wbuf.as_mut_slice()[skew..skew + 8192].copy_from_slice(&data);
    let wptr = wbuf.as_mut_ptr().wrapping_add(skew);
    let rptr = rbuf.as_mut_ptr().wrapping_add(skew);
    assert_eq!(
        run(&mut job, f, &mut io_u(sys::DDIR_WRITE, 8192, wptr, 8192)),
        0
    );
    assert_eq!(
        run(&mut job, f, &mut io_u(sys::DDIR_READ, 8192, rptr, 8192)),
        0
    );
    assert_eq!(&rbuf.as_slice()[skew..skew + 8192], &data[..]);
    // A trim, then the range reads back as zeroes.
    assert_eq!(
        run(
            &mut job,
            f,
            &mut io_u(sys::DDIR_TRIM, 8192, std::ptr::null_mut(), 4096)
        ),
        0
    );
    assert_eq!(
        run(&mut job, f, &mut io_u(sys::DDIR_READ, 8192, rptr, 8192)),
        0
    );
    assert!(rbuf.as_slice()[skew..skew + 4096].iter().all(|&b| b == 0));
    assert_eq!(&rbuf.as_slice()[skew + 4096..skew + 8192], &data[4096..]);
    assert_eq!(job.close(Duration::from_secs(5)), 0);
}

#[test]
fn data_round_trips_through_fios_own_buffer() {
    round_trip("FioJobLent", false, 0);
}

#[test]
fn data_round_trips_through_a_bounce_buffer() {
    round_trip("FioJobBounced", true, 0);
    round_trip("FioJobUnaligned", false, 512);
}

#[test]
fn bad_io_finishes_at_once_with_an_errno() {
    malloc("FioJobBad");
    let set = crate::process::driven_set(&[1, 0]).unwrap();
    let mut job = Job::new(&set, 1, 4, false).unwrap();
    let f = job.open("FioJobBad").unwrap();
    let mut buf = IoBuf::new(8192);
    let p = buf.as_mut_ptr();
    let einval = libc::EINVAL as u32;
    // Not a whole block, not block-aligned, an unknown direction.
    assert_eq!(
        run(&mut job, f, &mut io_u(sys::DDIR_READ, 0, p, 1000)),
        einval
    );
    assert_eq!(
        run(&mut job, f, &mut io_u(sys::DDIR_READ, 512, p, 4096)),
        einval
    );
    assert_eq!(
        run(&mut job, f, &mut io_u(sys::DDIR_WAIT, 0, p, 4096)),
        einval
    );
    assert_eq!(run(&mut job, f, &mut io_u(sys::DDIR_READ, 0, p, 4096)), 0);
    // Past the end: the bdev layer refuses it, as a completion.
    assert_ne!(
        run(&mut job, f, &mut io_u(sys::DDIR_READ, 256 * 4096, p, 4096)),
        0
    );
    assert_eq!(
        run(&mut job, 9, &mut io_u(sys::DDIR_READ, 0, p, 4096)),
        libc::EBADF as u32
    );
    assert!(matches!(job.open("FioJobNoSuch"), Err(JobError::Open(..))));
    // A sync is a FLUSH (malloc has none to do: done at once, no error).
    assert_eq!(
        run(
            &mut job,
            f,
            &mut io_u(sys::DDIR_SYNC, 0, std::ptr::null_mut(), 0)
        ),
        0
    );
    job.close(Duration::from_secs(5));
}

#[test]
fn a_core_is_driven_by_one_job_only() {
    let set = crate::process::driven_set(&[1, 0]).unwrap();
    let _a = Job::new(&set, 1, 1, false).unwrap();
    assert!(matches!(
        Job::new(&set, 1, 1, false),
        Err(JobError::Reactor(_))
    ));
}

#[test]
fn waiting_completions_are_reaped_without_polling_for_more() {
    malloc("FioJobReap");
    let set = crate::process::driven_set(&[1, 0]).unwrap();
    let mut job = Job::new(&set, 1, 4, false).unwrap();
    let f = job.open("FioJobReap").unwrap();
    let mut buf = IoBuf::new(4096);
    let p = buf.as_mut_ptr();
    let mut us: Vec<Box<sys::io_u>> = (0..4)
        .map(|i| io_u(sys::DDIR_WRITE, i * 4096, p, 4096))
        .collect();
    let ptrs: Vec<*mut sys::io_u> = us.iter_mut().map(|u| &mut **u as *mut _).collect();
    for &u in &ptrs[..3] {
        // SAFETY: the io_us and their buffer outlive the job's use.
        assert_eq!(unsafe { job.queue(f, u) }, None);
    }
    // fio's default reaps one at a time: the first turn completes all
    // three, the ring hands them out one per call.
    assert_eq!(job.getevents(1, 1, None).unwrap(), 1);
    assert_eq!(job.event(0), Some(ptrs[0]));
    assert_eq!(job.inflight(), 0);
    // SAFETY: as above.
    assert_eq!(unsafe { job.queue(f, ptrs[3]) }, None);
    // Two completions wait, so no turn: the new write is submitted by the
    // call but not polled yet.
    assert_eq!(job.getevents(1, 1, None).unwrap(), 1);
    assert_eq!(job.event(0), Some(ptrs[1]));
    assert_eq!(job.inflight(), 1);
    assert_eq!(job.getevents(1, 8, None).unwrap(), 1);
    assert_eq!(job.event(0), Some(ptrs[2]));
    assert_eq!(job.inflight(), 1);
    // The ring is empty: now the core turns and the write completes.
    assert_eq!(job.getevents(1, 8, None).unwrap(), 1);
    assert_eq!(job.event(0), Some(ptrs[3]));
    assert_eq!(job.inflight(), 0);
    assert!(us.iter().all(|u| u.error == 0));
    assert_eq!(job.close(Duration::from_secs(5)), 0);
}
