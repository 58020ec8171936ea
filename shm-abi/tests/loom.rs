//! Exhaustive-interleaving tests of the ring's index and sleep/wake protocol
//! under loom. Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p shm-abi --test loom --release
//! ```
//!
//! Under `--cfg loom` the crate's `sync` shim swaps in loom's atomics, fences
//! and a mutex/condvar model of the futex, and tracks every 8-byte word of the
//! data area with a loom `UnsafeCell`, so loom fails the test if any record
//! byte could be read while written or overwritten while read, if a wake-up
//! can be lost (deadlock), or if a record arrives damaged or out of order.
#![cfg(loom)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)] // tests fail loudly by design

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use loom::thread;
use shm_abi::ring::{ClaimError, PopError, PushError, Ring, RingHeader, MIN_CAPACITY};

/// A 128-aligned heap region standing in for shared memory.
struct Region {
    ptr: NonNull<u8>,
    layout: Layout,
    ring: Option<Ring>,
}

impl Region {
    fn new(capacity: usize) -> Self {
        let layout = Layout::from_size_align(Ring::required_bytes(capacity), 128).unwrap();
        // SAFETY: non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).unwrap();
        // SAFETY: fresh, aligned, exclusively ours, outlives the ring (Drop).
        let ring = unsafe { Ring::init_in(ptr, layout.size(), capacity) }.unwrap();
        Self {
            ptr,
            layout,
            ring: Some(ring),
        }
    }

    fn ring(&self) -> Ring {
        self.ring.clone().unwrap()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        self.ring = None;
        // SAFETY: all handles are gone (threads joined); the header holds
        // loom objects that must be dropped before the memory is freed.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr().cast::<RingHeader>()) };
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

fn record(i: u8) -> [u8; 16] {
    [i.wrapping_mul(37) ^ 0x5A; 16]
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        // Bound preemptions (overridable with LOOM_MAX_PREEMPTIONS) so the
        // suite stays well under two minutes; 3 covers every interleaving
        // with at most 3 forced context switches.
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

/// Four 16-byte records (24 framed) through a 64-byte ring: the third one
/// needs a skip marker and wraps, the producer must wait for space and the
/// consumer for data, both through the futex path (no spinning under loom).
#[test]
fn blocking_transfer_with_wraparound() {
    model(|| {
        let region = Region::new(MIN_CAPACITY);
        let ring = region.ring();
        let mut p = ring.producer().unwrap();
        let mut c = ring.consumer().unwrap();
        let producer = thread::spawn(move || {
            for i in 0..4 {
                p.push_blocking(&record(i), None).unwrap();
            }
        });
        for i in 0..4 {
            let rec = c.wait_pop(None).unwrap();
            assert_eq!(&*rec, &record(i)[..]);
        }
        producer.join().unwrap();
        assert_eq!(c.try_pop().unwrap_err(), PopError::Empty);
        drop(c);
        drop(ring);
        drop(region);
    });
}

/// Non-blocking push/pop with retries: Full and Empty are transient, data
/// arrives intact and in order, and zero-copy grants are published only on
/// commit.
#[test]
fn try_push_try_pop_with_grants() {
    model(|| {
        let region = Region::new(MIN_CAPACITY);
        let ring = region.ring();
        let mut p = ring.producer().unwrap();
        let mut c = ring.consumer().unwrap();
        let producer = thread::spawn(move || {
            for i in 0..3 {
                loop {
                    match p.reserve(16) {
                        Ok(mut g) => {
                            g.copy_from_slice(&record(i));
                            g.commit();
                            break;
                        }
                        Err(PushError::Full) => thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        });
        let mut next = 0;
        while next < 3 {
            match c.try_pop() {
                Ok(rec) => {
                    assert_eq!(&*rec, &record(next)[..]);
                    next += 1;
                }
                Err(PopError::Empty) => thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        producer.join().unwrap();
        drop(c);
        drop(ring);
        drop(region);
    });
}

/// Two concurrent claims of the producer: exactly one wins; after it is
/// dropped the handle can be claimed again.
#[test]
fn concurrent_claims_exactly_one_wins() {
    model(|| {
        let region = Region::new(MIN_CAPACITY);
        let ring = region.ring();
        let r2 = ring.clone();
        let t = thread::spawn(move || r2.producer());
        let mine = ring.producer();
        let theirs = t.join().unwrap();
        match (&mine, &theirs) {
            (Ok(_), Err(ClaimError::AlreadyClaimed { .. }))
            | (Err(ClaimError::AlreadyClaimed { .. }), Ok(_)) => {}
            other => panic!("not exactly one winner: {other:?}"),
        }
        drop((mine, theirs));
        // The winner has released it.
        drop(ring.producer().unwrap());
        drop(ring);
        drop(region);
    });
}
