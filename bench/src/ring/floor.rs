//! The baselines of the same run: what the hardware and kernel give before
//! any ring code runs.
//!
//! - **Cache-line ping-pong**: the parent stores `i` into `ping` (its own
//!   128-byte block), the child spins until it sees `i` and stores it into
//!   `pong` (another block), the parent spins until it sees `i`. One round trip
//!   moves two cache lines between the cores, once each way: the least any
//!   cross-core message can cost. Half its p50 is the one-way floor.
//! - **Futex wake-up**: the child sleeps `gap`, stamps `CLOCK_MONOTONIC`,
//!   publishes `i` in a 32-bit word and `FUTEX_WAKE`s the parent, which sleeps
//!   in `FUTEX_WAIT` on that word; the parent records now − stamp. This is the
//!   least a sleeping consumer can cost to wake with the kernel's help.
//!
//! Both loops busy-wait through [`Link::idle`], exactly like the ring loops.

use super::link::{Link, Side};
use super::RingBenchError;
use crate::clock::{duration_ns, monotonic_ns};
use crate::histogram::LatencyHistogram;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Round trips of the cache-line ping-pong; the first `warmup` are not recorded.
///
/// Parent: returns the round-trip histogram. Child: echoes, returns an empty one.
///
/// # Errors
/// When the peer dies or stalls.
pub fn cache_line_ping_pong(
    link: &mut Link,
    warmup: u64,
    samples: u64,
) -> Result<LatencyHistogram, RingBenchError> {
    let mut rtt = LatencyHistogram::new()?;
    link.sync()?;
    let total = warmup + samples;
    match link.side() {
        Side::Parent => {
            for i in 1..=total {
                let t0 = Instant::now();
                // SYNC: Release/Acquire are free on x86 and keep the model
                // honest: the value itself is the message.
                link.ctl().ping.0.store(i, Ordering::Release);
                // SYNC: Acquire pairs with the child's Release store of pong.
                while link.ctl().pong.0.load(Ordering::Acquire) != i {
                    link.idle()?;
                }
                let ns = duration_ns(t0.elapsed());
                if i > warmup {
                    rtt.record(ns);
                }
            }
        }
        Side::Child => {
            for i in 1..=total {
                // SYNC: Acquire pairs with the parent's Release store of ping.
                while link.ctl().ping.0.load(Ordering::Acquire) != i {
                    link.idle()?;
                }
                // SYNC: Release pairs with the parent's Acquire load of pong.
                link.ctl().pong.0.store(i, Ordering::Release);
            }
        }
    }
    Ok(rtt)
}

/// Futex wake-ups, `gap` apart; the first `warmup` are not recorded.
///
/// Parent (the sleeper): returns the wake-up delay histogram. Child (the
/// waker): returns an empty one.
///
/// # Errors
/// When the peer dies or stalls.
pub fn futex_wakeups(
    link: &mut Link,
    warmup: u64,
    samples: u64,
    gap: Duration,
) -> Result<LatencyHistogram, RingBenchError> {
    let mut delay = LatencyHistogram::new()?;
    link.sync()?;
    let total = warmup + samples;
    match link.side() {
        Side::Parent => {
            for i in 1..=total {
                let expect = sample_word(i);
                loop {
                    // SYNC: Acquire pairs with the child's Release store of the
                    // word, making its earlier stamp store visible.
                    let seen = link.ctl().wake_word.0.load(Ordering::Acquire);
                    if seen == expect {
                        break;
                    }
                    futex_wait(&link.ctl().wake_word.0, seen, Duration::from_millis(100));
                    link.check_peer()?;
                }
                let now = monotonic_ns();
                // SYNC: Relaxed: ordered by the Acquire load of the word above.
                let stamp = link.ctl().wake_stamp.0.load(Ordering::Relaxed);
                if i > warmup {
                    delay.record(now.saturating_sub(stamp));
                }
                link.ack_wakeup();
            }
        }
        Side::Child => {
            for i in 1..=total {
                std::thread::sleep(gap);
                // SYNC: Relaxed: published by the Release store of the word.
                link.ctl()
                    .wake_stamp
                    .0
                    .store(monotonic_ns(), Ordering::Relaxed);
                // SYNC: Release pairs with the parent's Acquire load.
                link.ctl()
                    .wake_word
                    .0
                    .store(sample_word(i), Ordering::Release);
                wake_one(&link.ctl().wake_word.0);
                link.await_wakeup_ack()?;
            }
        }
    }
    Ok(delay)
}

/// The 32-bit futex value for sample `i` (wraps harmlessly: consecutive
/// samples always differ).
fn sample_word(i: u64) -> u32 {
    u32::try_from(i & u64::from(u32::MAX)).unwrap_or(0)
}

/// `FUTEX_WAIT` on a process-shared word while it equals `expected`.
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    // SAFETY: `word` is a live, aligned AtomicU32 in a shared mapping for the
    // whole call and `ts` outlives it. Without FUTEX_PRIVATE_FLAG the kernel
    // keys the wait on the physical page, so the other process's wake finds
    // it. EAGAIN/EINTR/ETIMEDOUT all mean "re-check", which the caller does.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &raw const ts,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// `FUTEX_WAKE` one waiter on a process-shared word.
fn wake_one(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned AtomicU32; FUTEX_WAKE only uses its
    // address as a key and touches no memory.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1i32);
    }
}
