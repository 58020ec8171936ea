//! The autoscaling algorithm of one function: how many instances it should
//! have, from the concurrency it sees. Pure and runtime-agnostic: no threads,
//! no timers, no I/O. Time comes in as an explicit [`Instant`] argument, so
//! tests drive it with a fake clock (a base instant plus offsets).
//!
//! # Algorithm (Knative's KPA)
//!
//! The owner samples the function's *concurrency* — requests in flight plus
//! requests queued — and the autoscaler keeps two moving averages of it:
//!
//! * the **stable** average over `stable_window` (default 60 s), and
//! * the **panic** average over the panic window, `panic_window_pct` percent of
//!   the stable window (default 10 %, so 6 s).
//!
//! With `target = concurrency × target_utilization` (the load one instance
//! should carry), each decision computes
//!
//! ```text
//! ready        = max(current_instances, 1)
//! stable_want  = ceil(stable_avg / target)
//! panic_want   = ceil(panic_avg  / target)
//! max_up       = ceil(ready × max_scale_up_rate)       (default rate 1000)
//! max_down     = floor(ready / max_scale_down_rate)    (default rate 2: at most halve)
//! over         = panic_want / ready ≥ panic_threshold  (default 2)
//! ```
//!
//! * **From zero.** With no instance, nothing serves, so the latest sample is
//!   all unserved demand: `panic_want` is at least `ceil(latest / target)`.
//!   A burst from zero thus asks for its full capacity on the first decision
//!   (Knative's window average alone, diluted by the idle zeros, takes about
//!   a panic window to get there).
//! * **Burst.** When the latest sample alone would be over the threshold
//!   (`ceil(latest / target) / ready ≥ panic_threshold`), `panic_want` is at
//!   least `ceil(latest / target)`: a burst onto running instances is sized
//!   on the first decision too, instead of climbing about one instance per
//!   bucket as the panic average absorbs it.
//! * **Panic.** `over` enters panic mode (or extends it). Panic mode is left
//!   once a whole stable window has passed since `over` last held. While
//!   panicking the desired count is the running maximum of
//!   `max(stable_want, panic_want)` (rate-limited) and of the current instance
//!   count: it scales up at once and never down.
//! * **Stable.** Otherwise the desired count is `stable_want`, kept within
//!   `[max_down, max_up]`: a scale-down at most halves the count per decision.
//! * **Idleness.** While a request *started* less than `idle_timeout` ago, or
//!   the latest concurrency sample is above zero (a long request still
//!   running, or requests queued), the desired count is at least 1 — so any
//!   request arriving at zero instances asks for one at once, and a long
//!   request keeps its instance. Once `idle_timeout` has passed since the last
//!   started request and the latest sample is zero, the function is idle: the
//!   desired count heads for zero (still halving at most per decision), even
//!   if the stable average has not decayed yet. Finished requests do not
//!   count: idleness is measured from starts.
//! * **Clamp.** The result is clamped to `[min_instances, max_instances]`, so
//!   it never goes below `min_instances` and is 0 only when `min_instances`
//!   is 0 and the function is idle.
//!
//! # Windows
//!
//! Samples go into one fixed ring of buckets allocated at construction. A
//! bucket spans a tenth of the panic window (at least 1 ms), so the panic
//! window is about ten buckets and the stable window at most about a thousand
//! (`panic_window_pct ≥ 1`). Recording a sample is O(1) and allocation-free: it
//! adds to the bucket of its time, resetting the bucket first if it held an
//! older lap of the ring. A window's average is the mean of the per-bucket
//! means of the buckets inside it (O(buckets in the window) per decision).
//! Concurrency is a level, so when a window holds no sample at all the latest
//! sample stands for it (zero-order hold); with no sample ever, it is 0.
//!
//! # What the owner calls, and when
//!
//! 1. [`Autoscaler::new`] once per function, with
//!    [`AutoscaleSettings::from_function`] (and again when the function's
//!    settings change; the history is not carried over).
//! 2. [`Autoscaler::request_started`] whenever a request of the function is
//!    accepted (before it is queued or dispatched).
//! 3. [`Autoscaler::record_concurrency`] on every tick (say every 100 ms, and
//!    at least a few times per panic window) with `in_flight + queued`.
//! 4. [`Autoscaler::decide`] after sampling (every tick or every few), with the
//!    number of instances that exist now (ready or starting); start or stop
//!    instances to reach [`Decision::desired`]. Stopping should pick instances
//!    with no request in flight; the autoscaler only counts.

use std::fmt;
use std::time::{Duration, Instant};

use thiserror::Error;

/// Knative's default `max-scale-up-rate`: at most 1000 × the ready count.
pub const DEFAULT_MAX_SCALE_UP_RATE: f64 = 1000.0;
/// Knative's default `max-scale-down-rate`: at most halve per decision.
pub const DEFAULT_MAX_SCALE_DOWN_RATE: f64 = 2.0;
/// Knative's default `panic-threshold-percentage` (200 %) as a factor.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 2.0;

/// Buckets per panic window.
const BUCKETS_PER_PANIC_WINDOW: u64 = 10;
/// Shortest bucket.
const MIN_BUCKET_NS: u64 = 1_000_000;

/// Settings that make no sense for the algorithm.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AutoscaleError {
    /// `concurrency` must be at least 1.
    #[error("concurrency must be at least 1, got {0}")]
    Concurrency(u32),
    /// `target_utilization` must be in (0, 1].
    #[error("target_utilization must be in (0, 1], got {0}")]
    Utilization(f64),
    /// `min_instances` must not exceed `max_instances`, which must be ≥ 1.
    #[error(
        "instance range [{min}, {max}] is empty or allows no instance (need min ≤ max, max ≥ 1)"
    )]
    InstanceRange {
        /// `min_instances`.
        min: u32,
        /// `max_instances`.
        max: u32,
    },
    /// The stable window must be at least 10 ms.
    #[error("stable window {0:?} is shorter than 10 ms")]
    StableWindow(Duration),
    /// `panic_window_pct` must be in [1, 100].
    #[error("panic_window_pct must be in [1, 100], got {0}")]
    PanicWindowPct(f64),
    /// A rate or threshold must be finite and at least 1.
    #[error("{name} must be finite and at least 1, got {value}")]
    Rate {
        /// Which setting.
        name: &'static str,
        /// Its value.
        value: f64,
    },
}

/// The settings of one function's autoscaler.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleSettings {
    /// Most requests in flight on one instance.
    pub concurrency: u32,
    /// Fraction of `concurrency` each instance should carry.
    pub target_utilization: f64,
    /// Fewest instances, even when idle.
    pub min_instances: u32,
    /// Most instances.
    pub max_instances: u32,
    /// Time since the last started request after which the function is idle.
    pub idle_timeout: Duration,
    /// Averaging window of the stable average.
    pub stable_window: Duration,
    /// Panic window as a percentage of the stable window.
    pub panic_window_pct: f64,
    /// A scale-up reaches at most `ceil(ready × this)` per decision.
    pub max_scale_up_rate: f64,
    /// A scale-down reaches at least `floor(ready / this)` per decision.
    pub max_scale_down_rate: f64,
    /// Panic when `panic_want / ready` reaches this.
    pub panic_threshold: f64,
}

impl AutoscaleSettings {
    /// Settings with the default rates and panic threshold, checked.
    pub fn new(
        concurrency: u32,
        target_utilization: f64,
        min_instances: u32,
        max_instances: u32,
        idle_timeout: Duration,
        stable_window: Duration,
        panic_window_pct: f64,
    ) -> Result<Self, AutoscaleError> {
        Self {
            concurrency,
            target_utilization,
            min_instances,
            max_instances,
            idle_timeout,
            stable_window,
            panic_window_pct,
            max_scale_up_rate: DEFAULT_MAX_SCALE_UP_RATE,
            max_scale_down_rate: DEFAULT_MAX_SCALE_DOWN_RATE,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
        }
        .validated()
    }

    /// The settings of a configured function (default rates and threshold).
    pub fn from_function(f: &config::Function) -> Result<Self, AutoscaleError> {
        Self::new(
            f.concurrency,
            f.target_utilization,
            f.min_instances,
            f.max_instances,
            f.idle_timeout(),
            f.stable_window(),
            f.panic_window_pct,
        )
    }

    /// These settings, if every value is in range.
    pub fn validated(self) -> Result<Self, AutoscaleError> {
        if self.concurrency == 0 {
            return Err(AutoscaleError::Concurrency(self.concurrency));
        }
        if !(self.target_utilization > 0.0 && self.target_utilization <= 1.0) {
            return Err(AutoscaleError::Utilization(self.target_utilization));
        }
        if self.max_instances == 0 || self.min_instances > self.max_instances {
            return Err(AutoscaleError::InstanceRange {
                min: self.min_instances,
                max: self.max_instances,
            });
        }
        if self.stable_window < Duration::from_millis(10) {
            return Err(AutoscaleError::StableWindow(self.stable_window));
        }
        if !(1.0..=100.0).contains(&self.panic_window_pct) {
            return Err(AutoscaleError::PanicWindowPct(self.panic_window_pct));
        }
        for (name, value) in [
            ("max_scale_up_rate", self.max_scale_up_rate),
            ("max_scale_down_rate", self.max_scale_down_rate),
            ("panic_threshold", self.panic_threshold),
        ] {
            if !(value.is_finite() && value >= 1.0) {
                return Err(AutoscaleError::Rate { name, value });
            }
        }
        Ok(self)
    }

    /// The panic window.
    pub fn panic_window(&self) -> Duration {
        self.stable_window.mul_f64(self.panic_window_pct / 100.0)
    }

    /// Concurrency one instance should carry: `concurrency × target_utilization`.
    pub fn target_per_instance(&self) -> f64 {
        f64::from(self.concurrency) * self.target_utilization
    }
}

/// What set [`Decision::desired`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The stable average, unchanged by any limit.
    Stable,
    /// Panic mode: the running maximum since panic began.
    Panic,
    /// Raised to 1: a request started within the idle timeout, or requests
    /// are in flight or queued.
    Active,
    /// Idle: heading for zero.
    Idle,
    /// The scale-down rate limit held the count above what was wanted.
    ScaleDownLimited {
        /// What the algorithm wanted (0 when idle).
        wanted: u32,
    },
    /// The scale-up rate limit held the count below what was wanted.
    ScaleUpLimited {
        /// What the algorithm wanted.
        wanted: u32,
    },
    /// Raised to `min_instances`.
    ClampedToMin {
        /// What the algorithm wanted.
        wanted: u32,
    },
    /// Lowered to `max_instances`.
    ClampedToMax {
        /// What the algorithm wanted.
        wanted: u32,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Stable => f.write_str("stable window average"),
            Reason::Panic => f.write_str("panic mode"),
            Reason::Active => f.write_str("recent or running requests keep one instance"),
            Reason::Idle => f.write_str("idle past the idle timeout"),
            Reason::ScaleDownLimited { wanted } => {
                write!(f, "scale-down rate limit (wanted {wanted})")
            }
            Reason::ScaleUpLimited { wanted } => write!(f, "scale-up rate limit (wanted {wanted})"),
            Reason::ClampedToMin { wanted } => write!(f, "min_instances (wanted {wanted})"),
            Reason::ClampedToMax { wanted } => write!(f, "max_instances (wanted {wanted})"),
        }
    }
}

/// The outcome of one [`Autoscaler::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Instances the function should have.
    pub desired: u32,
    /// Whether panic mode is on.
    pub panic: bool,
    /// What set `desired`.
    pub reason: Reason,
}

/// One bucket of the ring: the samples of one bucket-long slice of time.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Which slice (`time / bucket_ns`); [`EMPTY`] when never used.
    epoch: u64,
    sum: f64,
    count: u32,
}

/// Epoch of an unused bucket.
const EMPTY: u64 = u64::MAX;

/// A fixed ring of time buckets, allocated once.
#[derive(Debug)]
struct BucketRing {
    buckets: Box<[Bucket]>,
    bucket_ns: u64,
}

impl BucketRing {
    fn new(bucket_ns: u64, len: usize) -> Self {
        let empty = Bucket {
            epoch: EMPTY,
            sum: 0.0,
            count: 0,
        };
        Self {
            buckets: vec![empty; len.max(1)].into_boxed_slice(),
            bucket_ns: bucket_ns.max(1),
        }
    }

    fn slot(&self, epoch: u64) -> usize {
        // The remainder is below `buckets.len()`, itself a usize, so the
        // conversion cannot fail; 0 is never reached.
        usize::try_from(epoch % self.buckets.len() as u64).unwrap_or(0)
    }

    /// Adds a sample at time `t_ns`. O(1), no allocation. A sample older
    /// than what its slot now holds (time went backwards by a lap) is dropped.
    fn record(&mut self, t_ns: u64, value: f64) {
        let epoch = t_ns / self.bucket_ns;
        let slot = self.slot(epoch);
        let b = &mut self.buckets[slot];
        if b.epoch != epoch {
            if b.epoch != EMPTY && b.epoch > epoch {
                return;
            }
            *b = Bucket {
                epoch,
                sum: 0.0,
                count: 0,
            };
        }
        b.sum += value;
        b.count = b.count.saturating_add(1);
    }

    /// Mean of the per-bucket means of the `span` buckets ending with the
    /// one holding `t_ns`; `None` if none of them has a sample.
    fn average(&self, t_ns: u64, span: u64) -> Option<f64> {
        let current = t_ns / self.bucket_ns;
        let span = span.clamp(1, self.buckets.len() as u64);
        let mut total = 0.0;
        let mut used = 0u32;
        for back in 0..span {
            let Some(epoch) = current.checked_sub(back) else {
                break;
            };
            let b = &self.buckets[self.slot(epoch)];
            if b.epoch == epoch && b.count > 0 {
                total += b.sum / f64::from(b.count);
                used += 1;
            }
        }
        (used > 0).then(|| total / f64::from(used))
    }
}

/// The autoscaler of one function. See the module docs for the algorithm and
/// for what the owner must call, and when.
#[derive(Debug)]
pub struct Autoscaler {
    settings: AutoscaleSettings,
    /// Time zero of all `*_ns` values.
    origin: Instant,
    ring: BucketRing,
    stable_span: u64,
    panic_span: u64,
    stable_ns: u64,
    idle_ns: u64,
    /// Latest sample (by time) and when it was taken.
    last_sample: Option<(u64, f64)>,
    last_started_ns: Option<u64>,
    /// When the panic condition last held, while in panic mode.
    panic_last_over_ns: Option<u64>,
    /// Running maximum of the desired count since panic began.
    max_panic: f64,
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `x` as a count: NaN and negatives are 0, beyond `u32::MAX` saturates.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn to_count(x: f64) -> u32 {
    if x.is_nan() {
        0
    } else {
        // In range after the clamp, and an integer (all callers pass ceil/floor
        // results or integers), so the cast is exact.
        x.clamp(0.0, f64::from(u32::MAX)) as u32
    }
}

impl Autoscaler {
    /// An autoscaler with no history; `now` is its time zero.
    pub fn new(settings: AutoscaleSettings, now: Instant) -> Self {
        let stable_ns = duration_ns(settings.stable_window).max(1);
        let panic_ns = duration_ns(settings.panic_window()).max(1);
        let bucket_ns = (panic_ns / BUCKETS_PER_PANIC_WINDOW).max(MIN_BUCKET_NS);
        let stable_span = stable_ns.div_ceil(bucket_ns).max(1);
        let panic_span = panic_ns.div_ceil(bucket_ns).clamp(1, stable_span);
        // At most ~1000 buckets for validated settings (see module docs); the
        // cap only guards settings built by hand without `validated`.
        let len = usize::try_from(stable_span.min(1 << 20)).unwrap_or(1 << 20);
        Self {
            idle_ns: duration_ns(settings.idle_timeout),
            settings,
            origin: now,
            ring: BucketRing::new(bucket_ns, len),
            stable_span,
            panic_span,
            stable_ns,
            last_sample: None,
            last_started_ns: None,
            panic_last_over_ns: None,
            max_panic: 0.0,
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &AutoscaleSettings {
        &self.settings
    }

    fn ns(&self, now: Instant) -> u64 {
        duration_ns(now.saturating_duration_since(self.origin))
    }

    /// Records the function's concurrency (`in_flight + queued`) at `now`.
    /// Call on every tick. O(1), no allocation.
    pub fn record_concurrency(&mut self, now: Instant, concurrency: u32) {
        let t = self.ns(now);
        let value = f64::from(concurrency);
        self.ring.record(t, value);
        if self.last_sample.is_none_or(|(at, _)| t >= at) {
            self.last_sample = Some((t, value));
        }
    }

    /// Records that a request started (was accepted) at `now`. Idleness is
    /// counted from the latest start.
    pub fn request_started(&mut self, now: Instant) {
        let t = self.ns(now);
        self.last_started_ns = Some(self.last_started_ns.map_or(t, |s| s.max(t)));
    }

    /// Whether panic mode is on (as of the latest decision).
    pub fn panicking(&self) -> bool {
        self.panic_last_over_ns.is_some()
    }

    /// The stable and panic averages of concurrency at `now`.
    pub fn observed(&self, now: Instant) -> (f64, f64) {
        let t = self.ns(now);
        let held = self.last_sample.map_or(0.0, |(_, v)| v);
        (
            self.ring.average(t, self.stable_span).unwrap_or(held),
            self.ring.average(t, self.panic_span).unwrap_or(held),
        )
    }

    /// Whether a request started within the idle timeout, or the latest
    /// sample shows requests in flight or queued.
    fn active(&self, t: u64) -> bool {
        let recent_start = self
            .last_started_ns
            .is_some_and(|s| t.saturating_sub(s) < self.idle_ns);
        let busy = self.last_sample.is_some_and(|(_, v)| v > 0.0);
        recent_start || busy
    }

    /// How many instances the function should have, given that
    /// `current_instances` exist now. Updates the panic state.
    pub fn decide(&mut self, now: Instant, current_instances: u32) -> Decision {
        let t = self.ns(now);
        let s = &self.settings;
        let (stable_avg, panic_avg) = self.observed(now);
        let target = s.target_per_instance();
        let ready = f64::from(current_instances.max(1));
        let max_up = (ready * s.max_scale_up_rate).ceil();
        let max_down = (ready / s.max_scale_down_rate).floor();
        let stable_want = (stable_avg / target).ceil();
        let mut panic_want = (panic_avg / target).ceil();
        let level = self.last_sample.map_or(0.0, |(_, v)| v);
        let level_want = (level / target).ceil();
        if current_instances == 0 {
            // Nothing serves at zero instances, so the latest sample is all
            // unserved demand: size for it now rather than wait for the
            // window average (diluted by the idle zeros) to catch up.
            panic_want = panic_want.max(level_want);
        }
        let over = panic_want / ready >= s.panic_threshold;
        if over || level_want / ready >= s.panic_threshold {
            // A burst: the latest level, not the window average still
            // diluted by the quiet before it, says how much capacity is
            // missing now (the window average would add about one instance
            // per bucket).
            panic_want = panic_want.max(level_want);
        }
        let over = panic_want / ready >= s.panic_threshold;

        // Panic state: enter or extend while over; leave a stable window after
        // the condition last held.
        if over {
            self.panic_last_over_ns = Some(t);
        } else if self
            .panic_last_over_ns
            .is_some_and(|last| t.saturating_sub(last) >= self.stable_ns)
        {
            self.panic_last_over_ns = None;
            self.max_panic = 0.0;
        }

        let (wanted, mut reason) = if self.active(t) {
            if stable_want < 1.0 {
                (1.0, Reason::Active)
            } else {
                (stable_want, Reason::Stable)
            }
        } else {
            (0.0, Reason::Idle)
        };
        let mut desired = wanted.clamp(max_down, max_up);
        if desired > wanted {
            reason = Reason::ScaleDownLimited {
                wanted: to_count(wanted),
            };
        } else if desired < wanted {
            reason = Reason::ScaleUpLimited {
                wanted: to_count(wanted),
            };
        }

        if self.panic_last_over_ns.is_some() {
            let panic_desired = panic_want.max(1.0).clamp(max_down, max_up);
            self.max_panic = self
                .max_panic
                .max(desired)
                .max(panic_desired)
                .max(f64::from(current_instances));
            desired = self.max_panic;
            reason = Reason::Panic;
        }

        let desired = to_count(desired);
        let clamped = desired.clamp(s.min_instances, s.max_instances);
        if clamped > desired {
            reason = Reason::ClampedToMin { wanted: desired };
        } else if clamped < desired {
            reason = Reason::ClampedToMax { wanted: desired };
        }
        Decision {
            desired: clamped,
            panic: self.panic_last_over_ns.is_some(),
            reason,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TICK: Duration = Duration::from_millis(100);

    /// A fake clock: a fixed base instant plus an offset the test advances.
    struct FakeClock {
        base: Instant,
        offset: Duration,
    }

    impl FakeClock {
        fn new() -> Self {
            Self {
                base: Instant::now(),
                offset: Duration::ZERO,
            }
        }
        fn now(&self) -> Instant {
            self.base + self.offset
        }
        fn advance(&mut self, d: Duration) -> Instant {
            self.offset += d;
            self.now()
        }
    }

    /// concurrency 10, utilization 0.7 (target 7), [min, max], idle timeout,
    /// 60 s stable window, 10 % panic window.
    fn settings(min: u32, max: u32, idle: Duration) -> AutoscaleSettings {
        AutoscaleSettings::new(10, 0.7, min, max, idle, Duration::from_secs(60), 10.0).unwrap()
    }

    /// A fake clock and an autoscaler with no history.
    fn fresh(s: AutoscaleSettings) -> (FakeClock, Autoscaler) {
        let clock = FakeClock::new();
        let a = Autoscaler::new(s, clock.now());
        (clock, a)
    }

    /// [`fresh`], with a request started at time zero.
    fn started(s: AutoscaleSettings) -> (FakeClock, Autoscaler) {
        let (clock, mut a) = fresh(s);
        a.request_started(clock.now());
        (clock, a)
    }

    /// Samples `load` every tick for `d`.
    fn feed(a: &mut Autoscaler, clock: &mut FakeClock, load: u32, d: Duration) {
        let end = clock.offset + d;
        while clock.offset < end {
            let now = clock.advance(TICK);
            a.record_concurrency(now, load);
        }
    }

    #[test]
    fn steady_load_follows_ceil_of_concurrency_over_target() {
        for (load, expect) in [(7, 1), (8, 2), (14, 2), (20, 3), (35, 5), (36, 6), (70, 10)] {
            let (mut clock, mut a) = started(settings(0, 100, Duration::from_secs(60)));
            feed(&mut a, &mut clock, load, Duration::from_secs(70));
            let (stable, panic) = a.observed(clock.now());
            assert!((stable - f64::from(load)).abs() < 1e-9, "stable {stable}");
            assert!((panic - f64::from(load)).abs() < 1e-9, "panic {panic}");
            let d = a.decide(clock.now(), expect);
            assert_eq!(
                d,
                Decision {
                    desired: expect,
                    panic: false,
                    reason: Reason::Stable
                },
                "load {load}"
            );
        }
    }

    #[test]
    fn burst_on_one_instance_sizes_for_the_latest_level() {
        // One instance, idle for a stable window, then 50 concurrent: the
        // first decision after the burst sizes for all of it (50 / 7 → 8),
        // not for the panic average still diluted by the quiet before.
        let (mut clock, mut a) = started(settings(0, 20, Duration::from_secs(60)));
        feed(&mut a, &mut clock, 1, Duration::from_secs(60));
        assert_eq!(a.decide(clock.now(), 1).desired, 1);
        let now = clock.advance(TICK);
        a.record_concurrency(now, 50);
        let d = a.decide(now, 1);
        assert_eq!(d.desired, 8, "{d:?}");
        assert!(d.panic);
        // A single noisy sample on a big fleet is not a burst: no panic.
        let (mut clock, mut a) = started(settings(0, 20, Duration::from_secs(60)));
        feed(&mut a, &mut clock, 69, Duration::from_secs(60));
        assert_eq!(a.decide(clock.now(), 10).desired, 10);
        let now = clock.advance(TICK);
        a.record_concurrency(now, 90);
        let d = a.decide(now, 10);
        assert!(!d.panic, "{d:?}");
        assert_eq!(d.desired, 10);
    }

    #[test]
    fn burst_panics_and_scales_up_at_once() {
        let (mut clock, mut a) = started(settings(0, 50, Duration::from_secs(60)));
        feed(&mut a, &mut clock, 14, Duration::from_secs(60));
        assert_eq!(a.decide(clock.now(), 2).desired, 2);
        // A burst to 100 for one panic window (6 s): the stable average is
        // only (54·14 + 6·100) / 60 ≈ 22.6 (4 instances), the panic one 100.
        feed(&mut a, &mut clock, 100, Duration::from_secs(6));
        let d = a.decide(clock.now(), 2);
        assert!(d.panic);
        assert_eq!(d.reason, Reason::Panic);
        assert_eq!(d.desired, 15, "ceil(100 / 7)");
    }

    #[test]
    fn panic_begins_within_one_tick_of_the_burst() {
        let (mut clock, mut a) = started(settings(0, 50, Duration::from_secs(60)));
        feed(&mut a, &mut clock, 7, Duration::from_secs(60));
        assert!(!a.decide(clock.now(), 1).panic);
        // 1 s of load 70 in a 6 s window of load 7: panic average 17.5,
        // 3 instances wanted against 1 ready: ≥ 2 × capacity.
        feed(&mut a, &mut clock, 70, Duration::from_secs(1));
        let d = a.decide(clock.now(), 1);
        assert!(d.panic);
        assert!(d.desired >= 3, "{d:?}");
    }

    #[test]
    fn no_scale_down_while_panicking_and_panic_ends_after_a_stable_window() {
        let (mut clock, mut a) = started(settings(0, 50, Duration::from_secs(60)));
        feed(&mut a, &mut clock, 14, Duration::from_secs(60));
        feed(&mut a, &mut clock, 100, Duration::from_secs(6));
        let first = a.decide(clock.now(), 2);
        assert!(first.panic);
        // Load falls back; instances were raised to what panic asked for.
        let mut prev = first.desired;
        let mut current = first.desired;
        let mut secs_until_calm = None;
        for sec in 1..=120u32 {
            feed(&mut a, &mut clock, 14, Duration::from_secs(1));
            let d = a.decide(clock.now(), current);
            if d.panic {
                assert!(d.desired >= prev, "panic scaled down at {sec} s: {d:?}");
                assert!(d.desired >= current);
            } else if secs_until_calm.is_none() {
                secs_until_calm = Some(sec);
                // The first calm decision only halves.
                assert_eq!(d.desired, current / 2);
                assert!(matches!(
                    d.reason,
                    Reason::ScaleDownLimited { wanted: 2..=4 }
                ));
            }
            prev = d.desired;
            current = d.desired;
        }
        // 15 instances against load 14 is not over the threshold, so panic
        // ends one stable window (60 s) after the burst.
        assert_eq!(secs_until_calm, Some(60));
        assert_eq!(current, 2, "settles back to ceil(14 / 7)");
    }

    #[test]
    fn scale_down_at_most_halves_per_decision() {
        let (mut clock, mut a) = started(settings(0, 50, Duration::from_secs(600)));
        feed(&mut a, &mut clock, 7, Duration::from_secs(60));
        let mut current = 16;
        let mut seen = Vec::new();
        for _ in 0..6 {
            let d = a.decide(clock.now(), current);
            assert!(!d.panic);
            seen.push(d.desired);
            current = d.desired;
        }
        assert_eq!(seen, [8, 4, 2, 1, 1, 1]);
    }

    #[test]
    fn custom_scale_down_rate_is_honoured() {
        let mut s = settings(0, 50, Duration::from_secs(600));
        s.max_scale_down_rate = 4.0;
        let (mut clock, mut a) = started(s.validated().unwrap());
        feed(&mut a, &mut clock, 7, Duration::from_secs(60));
        assert_eq!(
            a.decide(clock.now(), 16),
            Decision {
                desired: 4,
                panic: false,
                reason: Reason::ScaleDownLimited { wanted: 1 }
            }
        );
    }

    #[test]
    fn min_and_max_clamp() {
        let (mut clock, mut a) = fresh(settings(3, 4, Duration::from_secs(60)));
        // Idle and empty: min_instances still holds.
        let d = a.decide(clock.now(), 3);
        assert_eq!(d.desired, 3);
        assert_eq!(d.reason, Reason::ClampedToMin { wanted: 1 });
        a.request_started(clock.now());
        feed(&mut a, &mut clock, 7, Duration::from_secs(60));
        assert_eq!(a.decide(clock.now(), 3).desired, 3);
        feed(&mut a, &mut clock, 1000, Duration::from_secs(60));
        let d = a.decide(clock.now(), 4);
        assert_eq!(d.desired, 4);
        assert!(
            matches!(d.reason, Reason::ClampedToMax { wanted: 143 }),
            "{d:?}"
        );
    }

    /// Starts a request at time zero, samples `load` for `busy`, then 0;
    /// checks that one instance is kept until `idle` after the start and
    /// none wanted from then on. Returns the clock at `idle`.
    fn zero_exactly_at_idle_timeout(
        idle: Duration,
        load: u32,
        busy: Duration,
    ) -> (FakeClock, Autoscaler) {
        let (mut clock, mut a) = started(settings(0, 10, idle));
        feed(&mut a, &mut clock, load, busy);
        feed(&mut a, &mut clock, 0, idle - busy - TICK);
        let d = a.decide(clock.now(), 1);
        assert_eq!(d.desired, 1, "{d:?} one tick before the idle timeout");
        feed(&mut a, &mut clock, 0, TICK);
        let d = a.decide(clock.now(), 1);
        assert_eq!(
            (d.desired, d.reason),
            (0, Reason::Idle),
            "at the idle timeout"
        );
        (clock, a)
    }

    #[test]
    fn scale_to_zero_only_after_idle_timeout_since_last_start() {
        // Idle timeout longer than the stable window: the average decays to
        // 0 long before, but the start still holds one instance.
        let (mut clock, mut a) = started(settings(0, 10, Duration::from_secs(90)));
        feed(&mut a, &mut clock, 1, Duration::from_secs(1));
        feed(&mut a, &mut clock, 0, Duration::from_secs(79));
        assert_eq!(a.observed(clock.now()).0, 0.0);
        let d = a.decide(clock.now(), 1);
        assert_eq!((d.desired, d.reason), (1, Reason::Active));
        zero_exactly_at_idle_timeout(Duration::from_secs(90), 1, Duration::from_secs(1));
    }

    #[test]
    fn scale_to_zero_does_not_wait_for_the_average_to_decay() {
        let (clock, mut a) =
            zero_exactly_at_idle_timeout(Duration::from_secs(10), 5, Duration::from_secs(5));
        assert!(a.observed(clock.now()).0 > 0.0);
        // From 4 instances, idleness still only halves per decision.
        assert_eq!(
            a.decide(clock.now(), 4).reason,
            Reason::ScaleDownLimited { wanted: 0 }
        );
    }

    #[test]
    fn finished_requests_do_not_reset_idleness() {
        // Requests that start and finish within ticks leave only starts: the
        // idle timeout runs from the last start, whatever happened after.
        let (mut clock, mut a) = started(settings(0, 10, Duration::from_secs(5)));
        feed(&mut a, &mut clock, 0, Duration::from_secs(5));
        assert_eq!(a.decide(clock.now(), 1).desired, 0);
    }

    #[test]
    fn long_request_keeps_its_instance() {
        let (mut clock, mut a) = started(settings(0, 10, Duration::from_secs(30)));
        let mut current = 1;
        for _ in 0..600 {
            feed(&mut a, &mut clock, 1, Duration::from_secs(1));
            let d = a.decide(clock.now(), current);
            assert!(d.desired >= 1, "{:?} after {:?}", d, clock.offset);
            current = d.desired;
        }
        // It finishes: the function is idle (started 600 s ago).
        feed(&mut a, &mut clock, 0, Duration::from_secs(1));
        assert_eq!(a.decide(clock.now(), 1).desired, 0);
    }

    #[test]
    fn zero_to_one_on_the_first_request() {
        let (mut clock, mut a) = fresh(settings(0, 10, Duration::from_secs(60)));
        feed(&mut a, &mut clock, 0, Duration::from_secs(120));
        assert_eq!(a.decide(clock.now(), 0).desired, 0);
        // A start, before any sample shows it: one instance at once.
        a.request_started(clock.now());
        let d = a.decide(clock.now(), 0);
        assert_eq!((d.desired, d.reason), (1, Reason::Active));

        // A queued request seen only by the sampler does the same.
        let mut b = Autoscaler::new(settings(0, 10, Duration::from_secs(60)), clock.now());
        feed(&mut b, &mut clock, 0, Duration::from_secs(120));
        b.record_concurrency(clock.advance(TICK), 1);
        assert_eq!(b.decide(clock.now(), 0).desired, 1);
    }

    #[test]
    fn burst_from_zero_asks_for_full_capacity_at_once() {
        let s = AutoscaleSettings::new(
            1,
            0.7,
            0,
            64,
            Duration::from_secs(60),
            Duration::from_secs(60),
            10.0,
        )
        .unwrap();
        let (mut clock, mut a) = fresh(s);
        feed(&mut a, &mut clock, 0, Duration::from_secs(60));
        let now = clock.advance(TICK);
        for _ in 0..50 {
            a.request_started(now);
        }
        a.record_concurrency(now, 50);
        let d = a.decide(now, 0);
        // The window average alone would be a fraction of a sample of 50
        // among a minute of zeros; at zero instances the latest sample is
        // all unserved demand, so full capacity is asked for at once.
        assert_eq!(
            (d.desired, d.panic),
            (64, true),
            "ceil(50 / 0.7) = 72, max 64"
        );
        // Once instances exist, panic holds the count while the burst lasts.
        for _ in 0..60 {
            let now = clock.advance(TICK);
            a.record_concurrency(now, 50);
            assert_eq!(a.decide(now, 64).desired, 64);
        }
    }

    #[test]
    fn one_request_from_zero_asks_for_one_instance_per_target() {
        // concurrency 10, target 7: one queued request needs one instance,
        // no panic.
        let (mut clock, mut a) = fresh(settings(0, 10, Duration::from_secs(60)));
        feed(&mut a, &mut clock, 0, Duration::from_secs(60));
        let now = clock.advance(TICK);
        a.request_started(now);
        a.record_concurrency(now, 1);
        let d = a.decide(now, 0);
        assert_eq!((d.desired, d.panic), (1, false));
    }

    #[test]
    fn windows_average_bucket_means() {
        let mut ring = BucketRing::new(10, 6);
        assert_eq!(ring.average(0, 6), None);
        ring.record(0, 2.0);
        ring.record(5, 4.0);
        ring.record(10, 9.0);
        assert_eq!(ring.average(10, 6), Some((3.0 + 9.0) / 2.0));
        assert_eq!(ring.average(10, 1), Some(9.0));
        // Six buckets later, slot 0 holds a new lap; the old samples are gone.
        ring.record(60, 1.0);
        assert_eq!(ring.average(60, 6), Some((9.0 + 1.0) / 2.0));
        // A sample a lap older than its slot is dropped.
        ring.record(0, 100.0);
        assert_eq!(ring.average(60, 1), Some(1.0));
    }

    #[test]
    fn bad_settings_are_rejected() {
        let d = Duration::from_secs(60);
        assert_eq!(
            AutoscaleSettings::new(0, 0.7, 0, 1, d, d, 10.0),
            Err(AutoscaleError::Concurrency(0))
        );
        assert!(matches!(
            AutoscaleSettings::new(1, 0.0, 0, 1, d, d, 10.0),
            Err(AutoscaleError::Utilization(_))
        ));
        assert_eq!(
            AutoscaleSettings::new(1, 0.7, 3, 2, d, d, 10.0),
            Err(AutoscaleError::InstanceRange { min: 3, max: 2 })
        );
        assert!(matches!(
            AutoscaleSettings::new(1, 0.7, 0, 1, d, Duration::from_millis(1), 10.0),
            Err(AutoscaleError::StableWindow(_))
        ));
        assert!(matches!(
            AutoscaleSettings::new(1, 0.7, 0, 1, d, d, 0.5),
            Err(AutoscaleError::PanicWindowPct(_))
        ));
        let mut s = settings(0, 1, d);
        s.max_scale_down_rate = 0.5;
        assert!(matches!(
            s.validated(),
            Err(AutoscaleError::Rate {
                name: "max_scale_down_rate",
                ..
            })
        ));
    }

    #[test]
    fn settings_from_a_configured_function() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("h.py"), "").unwrap();
        let yaml = "functions:\n  - id: f\n    trigger_port: 9000\n    handler_path: h.py\n    \
                    concurrency: 4\n    target_utilization: 0.5\n    min_instances: 1\n    \
                    max_instances: 8\n    idle_timeout_ms: 5000\n    stable_window_ms: 20000\n    \
                    panic_window_pct: 20\n";
        let cfg = config::load_str(yaml, "test.yaml", dir.path()).unwrap();
        let s = AutoscaleSettings::from_function(&cfg.functions[0]).unwrap();
        assert_eq!(s.concurrency, 4);
        assert_eq!(s.target_per_instance(), 2.0);
        assert_eq!((s.min_instances, s.max_instances), (1, 8));
        assert_eq!(s.idle_timeout, Duration::from_secs(5));
        assert_eq!(s.stable_window, Duration::from_secs(20));
        assert_eq!(s.panic_window(), Duration::from_secs(4));
        assert_eq!(s.max_scale_down_rate, DEFAULT_MAX_SCALE_DOWN_RATE);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Advance(u16),
        Sample(u32),
        Start,
        Decide { follow: bool, other: u32 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u16..5_000).prop_map(Op::Advance),
            (0u32..300).prop_map(Op::Sample),
            Just(Op::Start),
            (any::<bool>(), 0u32..80).prop_map(|(follow, other)| Op::Decide { follow, other }),
        ]
    }

    proptest! {
        #[test]
        fn desired_in_range_zero_only_when_idle_and_monotone_in_panic(
            concurrency in 1u32..20,
            utilization in 0.1f64..=1.0,
            min in 0u32..5,
            extra in 0u32..40,
            idle_ms in 0u64..20_000,
            stable_ms in 1_000u64..30_000,
            pct in 1.0f64..=100.0,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let max = (min + extra).max(1);
            let s = AutoscaleSettings::new(
                concurrency, utilization, min, max,
                Duration::from_millis(idle_ms), Duration::from_millis(stable_ms), pct,
            ).unwrap();
            let (mut clock, mut a) = fresh(s);
            let mut last_start: Option<Duration> = None;
            let mut last_sample = 0;
            let mut current = 0;
            let mut prev: Option<Decision> = None;
            for op in ops {
                match op {
                    Op::Advance(ms) => { clock.advance(Duration::from_millis(u64::from(ms))); }
                    Op::Sample(v) => { a.record_concurrency(clock.now(), v); last_sample = v; }
                    Op::Start => { a.request_started(clock.now()); last_start = Some(clock.offset); }
                    Op::Decide { follow, other } => {
                        if !follow { current = other; }
                        let d = a.decide(clock.now(), current);
                        prop_assert!(d.desired >= min && d.desired <= max, "{d:?} not in [{min}, {max}]");
                        if d.desired == 0 {
                            let idle = last_start.is_none_or(|t| clock.offset - t >= Duration::from_millis(idle_ms));
                            prop_assert!(min == 0 && idle && last_sample == 0, "zero while active: {d:?}");
                        }
                        if let Some(p) = prev {
                            if p.panic && d.panic {
                                prop_assert!(d.desired >= p.desired, "panic went down: {p:?} -> {d:?}");
                            }
                        }
                        prev = Some(d);
                        current = d.desired;
                    }
                }
            }
        }
    }
}
