//! The ring measurements: round-trip latency, throughput and wake-up.
//!
//! Every loop polls with `try_pop` / `try_push` and busy-waits through
//! [`Link::idle`], the same spin the floor ping-pong uses.
//!
//! Record contents: a fixed byte pattern of the record size whose first
//! 8 bytes are replaced by a little-endian `u64` (a sequence number, or a
//! `CLOCK_MONOTONIC` stamp for wake-ups). Throughput checksums are the
//! wrapping sum of a record's 8-byte little-endian words: the consumer
//! computes it over every byte it popped; the producer, which knows the
//! pattern, adds `seq + sum(pattern words after the first)` per record.
//!
//! Throughput is bimodal when the ring publishes its index with a locked
//! instruction (a SeqCst swap: `xchg` on x86). While the consumer keeps up,
//! every `try_pop` re-reads the producer's `tail` line, so each push must win
//! that line back before its `xchg` can retire: the producer stalls for one
//! cross-core transfer per record. When the consumer falls behind, it pops
//! from its cached copy of `tail` without touching the line and the producer
//! streams. Small timing differences (how fast the consumer polls) decide
//! which regime a run settles in, so throughput runs in rounds and the
//! results carry the slowest and fastest round beside the total.

use super::link::Link;
use super::RingBenchError;
use crate::clock::{duration_ns, monotonic_ns};
use crate::histogram::LatencyHistogram;
use shm_abi::ring::{Consumer, PopError, Producer, PushError};
use std::time::{Duration, Instant};

/// Round trips through two rings: the parent pushes `i` into `fwd`, the child
/// pops it and pushes the same bytes into `back`, the parent pops it.
#[derive(Debug)]
pub struct RoundTrips {
    /// Whole round trips.
    pub rtt: LatencyHistogram,
    /// Round trip / 2 per sample.
    pub one_way: LatencyHistogram,
}

impl RoundTrips {
    /// Empty histograms.
    ///
    /// # Errors
    /// [`HistogramError`](crate::histogram::HistogramError) from creation.
    pub fn new() -> Result<Self, RingBenchError> {
        Ok(Self {
            rtt: LatencyHistogram::new()?,
            one_way: LatencyHistogram::new()?,
        })
    }

    /// Adds the samples of another run.
    ///
    /// # Errors
    /// [`HistogramError::Merge`](crate::histogram::HistogramError::Merge).
    pub fn merge(&mut self, other: &Self) -> Result<(), RingBenchError> {
        self.rtt.merge(&other.rtt)?;
        self.one_way.merge(&other.one_way)?;
        Ok(())
    }
}

/// The parent's side of a round-trip run.
#[derive(Debug)]
pub struct ParentPair<'a> {
    pub fwd: &'a mut Producer,
    pub back: &'a mut Consumer,
}

/// The child's side of a round-trip run.
#[derive(Debug)]
pub struct ChildPair<'a> {
    pub fwd: &'a mut Consumer,
    pub back: &'a mut Producer,
}

/// Measures `samples` round trips of `size`-byte records after `warmup`.
///
/// # Errors
/// Ring errors, an echo carrying the wrong sequence number, a dead peer.
pub fn round_trips_parent(
    link: &mut Link,
    rings: ParentPair<'_>,
    size: usize,
    warmup: u64,
    samples: u64,
) -> Result<RoundTrips, RingBenchError> {
    let mut out = RoundTrips::new()?;
    let mut record = pattern(size);
    link.sync()?;
    for i in 0..warmup + samples {
        stamp(&mut record, i);
        let t0 = Instant::now();
        push_spin(link, rings.fwd, &record)?;
        let echoed = pop_spin(link, rings.back, |_, r| read_stamp(r))?;
        let ns = duration_ns(t0.elapsed());
        if echoed != Some(i) {
            return Err(RingBenchError::EchoMismatch { sent: i, echoed });
        }
        if i >= warmup {
            out.rtt.record(ns);
            out.one_way.record(ns / 2);
        }
    }
    Ok(out)
}

/// Echoes `warmup + samples` records from `fwd` into `back`.
///
/// # Errors
/// Ring errors.
pub fn round_trips_child(
    link: &mut Link,
    rings: ChildPair<'_>,
    warmup: u64,
    samples: u64,
) -> Result<(), RingBenchError> {
    link.sync()?;
    for _ in 0..warmup + samples {
        pop_spin(link, rings.fwd, |link, r| push_spin(link, rings.back, r))??;
    }
    Ok(())
}

/// What a throughput run measured (parent = consumer).
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub records: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Throughput {
    /// Records per second.
    #[must_use]
    pub fn records_per_s(&self) -> f64 {
        per_second(self.records, self.elapsed)
    }

    /// Payload gigabytes (10⁹ bytes) per second.
    #[must_use]
    pub fn gb_per_s(&self) -> f64 {
        per_second(self.bytes, self.elapsed) / 1e9
    }

    /// All rounds as one run: total records and bytes over total time.
    #[must_use]
    pub fn total(rounds: &[Self]) -> Self {
        rounds.iter().fold(
            Self {
                records: 0,
                bytes: 0,
                elapsed: Duration::ZERO,
            },
            |acc, r| Self {
                records: acc.records + r.records,
                bytes: acc.bytes + r.bytes,
                elapsed: acc.elapsed + r.elapsed,
            },
        )
    }

    /// The slowest and fastest round's records per second (0, 0 for none).
    #[must_use]
    pub fn range(rounds: &[Self]) -> (f64, f64) {
        let rates = rounds.iter().map(Self::records_per_s);
        let min = rates.clone().fold(f64::INFINITY, f64::min);
        let max = rates.fold(0.0, f64::max);
        if rounds.is_empty() {
            (0.0, 0.0)
        } else {
            (min, max)
        }
    }
}

#[allow(clippy::cast_precision_loss)] // counts < 2^53; ratios are reported, not compared exactly
fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// Consumes `records` records of `size` bytes as fast as they come, checks
/// the count and checksum against what the child says it pushed.
///
/// # Errors
/// Ring errors, a checksum or size mismatch, a dead peer.
pub fn throughput_parent(
    link: &mut Link,
    consumer: &mut Consumer,
    size: usize,
    records: u64,
) -> Result<Throughput, RingBenchError> {
    let mut checksum = 0u64;
    let mut bytes = 0u64;
    link.sync()?;
    let t0 = Instant::now();
    for _ in 0..records {
        let (sum, len) = pop_spin(link, consumer, |_, r| (word_sum(r), r.len()))?;
        checksum = checksum.wrapping_add(sum);
        bytes += u64::try_from(len).unwrap_or(u64::MAX);
    }
    let elapsed = t0.elapsed();
    link.sync()?;
    // SYNC: Relaxed: the child stored these before its Release in `sync`,
    // which our Acquire in `sync` observed.
    let pushed = link
        .ctl()
        .child_records
        .0
        .load(std::sync::atomic::Ordering::Relaxed);
    // SYNC: as above.
    let expected = link
        .ctl()
        .child_checksum
        .0
        .load(std::sync::atomic::Ordering::Relaxed);
    let expected_bytes = records * u64::try_from(size).unwrap_or(u64::MAX);
    if pushed != records || expected != checksum || bytes != expected_bytes {
        return Err(RingBenchError::ChecksumMismatch {
            size,
            pushed,
            popped: records,
            bytes,
            expected_bytes,
            pushed_sum: expected,
            popped_sum: checksum,
        });
    }
    Ok(Throughput {
        records,
        bytes,
        elapsed,
    })
}

/// Pushes `records` records of `size` bytes as fast as the ring takes them,
/// then publishes the count and checksum in the control block.
///
/// # Errors
/// Ring errors.
pub fn throughput_child(
    link: &mut Link,
    producer: &mut Producer,
    size: usize,
    records: u64,
) -> Result<(), RingBenchError> {
    let mut record = pattern(size);
    let rest = word_sum(&record).wrapping_sub(read_stamp(&record).unwrap_or(0));
    let mut checksum = 0u64;
    link.sync()?;
    for seq in 0..records {
        stamp(&mut record, seq);
        push_spin(link, producer, &record)?;
        checksum = checksum.wrapping_add(seq).wrapping_add(rest);
    }
    // SYNC: Relaxed: published by the Release store in `sync` below.
    link.ctl()
        .child_records
        .0
        .store(records, std::sync::atomic::Ordering::Relaxed);
    // SYNC: as above.
    link.ctl()
        .child_checksum
        .0
        .store(checksum, std::sync::atomic::Ordering::Relaxed);
    link.sync()
}

/// What a wake-up run measured (parent = sleeping consumer).
#[derive(Debug)]
pub struct Wakeups {
    /// Push (stamp taken just before `try_push`) to return from `wait_pop`.
    pub delay: LatencyHistogram,
    /// Voluntary context switches of the consumer per record: ≈ 1 proves it
    /// was asleep in the kernel when each record arrived.
    pub voluntary_switches_per_record: f64,
}

/// Sleeps in `wait_pop` for each of `warmup + samples` records.
///
/// # Errors
/// Ring errors, a dead peer.
pub fn wakeups_parent(
    link: &mut Link,
    consumer: &mut Consumer,
    warmup: u64,
    samples: u64,
) -> Result<Wakeups, RingBenchError> {
    let mut delay = LatencyHistogram::new()?;
    link.sync()?;
    let switches0 = voluntary_switches();
    for i in 0..warmup + samples {
        let stamped = loop {
            match consumer.wait_pop(Some(Duration::from_millis(100))) {
                Ok(r) => {
                    let now = monotonic_ns();
                    break read_stamp(&r).map(|s| now.saturating_sub(s));
                }
                Err(PopError::Empty) => link.check_peer()?,
                Err(e) => return Err(RingBenchError::Pop(e)),
            }
        };
        let Some(ns) = stamped else {
            return Err(RingBenchError::ShortRecord { index: i });
        };
        if i >= warmup {
            delay.record(ns);
        }
        link.ack_wakeup();
    }
    let switches = voluntary_switches().saturating_sub(switches0);
    #[allow(clippy::cast_precision_loss)] // small counts
    let per_record = switches as f64 / (warmup + samples).max(1) as f64;
    Ok(Wakeups {
        delay,
        voluntary_switches_per_record: per_record,
    })
}

/// Pushes one stamped record every `gap`.
///
/// # Errors
/// Ring errors.
pub fn wakeups_child(
    link: &mut Link,
    producer: &mut Producer,
    size: usize,
    warmup: u64,
    samples: u64,
    gap: Duration,
) -> Result<(), RingBenchError> {
    let mut record = pattern(size);
    link.sync()?;
    for _ in 0..warmup + samples {
        std::thread::sleep(gap);
        stamp(&mut record, monotonic_ns());
        push_spin(link, producer, &record)?;
        link.await_wakeup_ack()?;
    }
    Ok(())
}

/// `try_push` until it fits.
#[inline]
fn push_spin(
    link: &mut Link,
    producer: &mut Producer,
    record: &[u8],
) -> Result<(), RingBenchError> {
    loop {
        match producer.try_push(record) {
            Ok(()) => return Ok(()),
            Err(PushError::Full) => link.idle()?,
            Err(e) => return Err(RingBenchError::Push(e)),
        }
    }
}

/// `try_pop` until a record arrives; `f` reads it in place before it is
/// released (and gets the link back, to spin on something else meanwhile).
#[inline]
fn pop_spin<T>(
    link: &mut Link,
    consumer: &mut Consumer,
    f: impl FnOnce(&mut Link, &[u8]) -> T,
) -> Result<T, RingBenchError> {
    loop {
        match consumer.try_pop() {
            Ok(r) => return Ok(f(link, &r)),
            Err(PopError::Empty) => link.idle()?,
            Err(e) => return Err(RingBenchError::Pop(e)),
        }
    }
}

/// A record of `size` bytes with a fixed, non-trivial pattern.
fn pattern(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| u8::try_from((i * 7 + 1) % 251).unwrap_or(0))
        .collect()
}

/// Writes `value` into the first 8 bytes (records are at least 16 bytes).
fn stamp(record: &mut [u8], value: u64) {
    if let Some(head) = record.get_mut(..8) {
        head.copy_from_slice(&value.to_le_bytes());
    }
}

/// The `u64` in the first 8 bytes, if the record has them.
fn read_stamp(record: &[u8]) -> Option<u64> {
    record
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

/// Wrapping sum of the little-endian 8-byte words (a trailing partial word is
/// zero-padded).
fn word_sum(record: &[u8]) -> u64 {
    let mut chunks = record.chunks_exact(8);
    let mut sum = 0u64;
    for c in chunks.by_ref() {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        sum = sum.wrapping_add(u64::from_le_bytes(w));
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut w = [0u8; 8];
        w[..tail.len()].copy_from_slice(tail);
        sum = sum.wrapping_add(u64::from_le_bytes(w));
    }
    sum
}

/// Voluntary context switches of this process so far.
fn voluntary_switches() -> u64 {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage for the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc == 0 {
        u64::try_from(usage.ru_nvcsw).unwrap_or(0)
    } else {
        0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn producer_checksum_formula_matches_consumer_sum() {
        for size in [16, 64, 1024, 100] {
            let mut record = pattern(size);
            let rest = word_sum(&record).wrapping_sub(read_stamp(&record).unwrap());
            for seq in [0u64, 1, 77, u64::MAX] {
                stamp(&mut record, seq);
                assert_eq!(
                    word_sum(&record),
                    seq.wrapping_add(rest),
                    "size {size} seq {seq}"
                );
                assert_eq!(read_stamp(&record), Some(seq));
            }
        }
    }

    #[test]
    fn short_records_have_no_stamp() {
        assert_eq!(read_stamp(&[1, 2, 3]), None);
        assert_eq!(word_sum(&[1, 0, 0]), 1);
    }
}
