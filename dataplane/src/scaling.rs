//! One function's autoscaling across cores: the [`Autoscaler`] decides how
//! many instances the function needs in total, and [`allocate`] spreads that
//! total over the cores by where the demand is.
//!
//! ```text
//! core k, every supervision tick (≤ 20 ms, at once when a request queues):
//!   publish(k, demand = in_flight + queued, live instances)
//!   decide(now, urgent)   one core at a time (try_lock), every DECISION_EVERY
//!                         or at once when `urgent` (requests queued on a core
//!                         with no instance): record Σ demand, decide(Σ live),
//!                         allocation[] = allocate(desired, demand[], live[])
//!   allocation(k)         → the core starts or retires instances to match
//! ```
//!
//! Cores share a [`FunctionScale`] through an `Arc`; per-core values are
//! atomics written by their own core only, read by whichever core decides.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::autoscale::{AutoscaleError, AutoscaleSettings, Autoscaler, Decision};
use crate::lifecycle_metrics::FunctionLabel;

/// Longest time between two decisions.
const DECISION_EVERY: Duration = Duration::from_millis(100);
/// Shortest time between two decisions (even urgent ones).
const DECISION_MIN_GAP: Duration = Duration::from_millis(2);

/// Labels of `scale_events_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleEventLabels {
    pub function: String,
    /// `up` or `down`.
    pub direction: String,
}

/// The autoscaler's metrics (one set per aetherd, not per core).
#[derive(Debug, Clone, Default)]
pub struct ScaleMetrics {
    desired: Family<FunctionLabel, Gauge>,
    panic: Family<FunctionLabel, Gauge>,
    events: Family<ScaleEventLabels, Counter>,
}

impl ScaleMetrics {
    /// Registers them (`aether_autoscale_*`, `aether_scale_events_total`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "autoscale_desired_instances",
            "Instances the autoscaler wants for the function, across cores",
            self.desired.clone(),
        );
        registry.register(
            "autoscale_panic",
            "1 while the function's autoscaler is in panic mode",
            self.panic.clone(),
        );
        registry.register(
            "scale_events",
            "Changes of the desired instance count, by direction",
            self.events.clone(),
        );
    }

    fn label(function: &str) -> FunctionLabel {
        FunctionLabel {
            function: function.to_string(),
        }
    }

    /// Removes a function's gauges (undeploy).
    pub fn forget(&self, function: &str) {
        self.desired.remove(&Self::label(function));
        self.panic.remove(&Self::label(function));
    }
}

/// A [`Decision`] with the per-core split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub decision: Decision,
    pub per_core: Vec<u32>,
}

struct ScalerState {
    autoscaler: Autoscaler,
    last_decision: Option<Instant>,
}

/// One function's autoscaling state, shared by the cores serving it.
pub struct FunctionScale {
    function: String,
    per_instance: f64,
    max_instances: u32,
    scaler: Mutex<ScalerState>,
    demand: Vec<AtomicU32>,
    live: Vec<AtomicU32>,
    alloc: Vec<AtomicU32>,
    /// Whether each core saw a request within the idle timeout (or has
    /// requests in flight): such a core keeps an instance, because requests
    /// are not handed between cores.
    active: Vec<AtomicBool>,
    /// Ready instances of each core, as last published.
    ready: Vec<AtomicU32>,
    /// Each core's inbox for connections handed over by other cores.
    inboxes: Mutex<Vec<Option<flume::Sender<OwnedFd>>>>,
    desired: AtomicU32,
    metrics: ScaleMetrics,
}

impl std::fmt::Debug for FunctionScale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionScale")
            .field("function", &self.function)
            .field("desired", &self.desired_total())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poison only says another core panicked mid-decision; the state is
    // still a valid autoscaler.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FunctionScale {
    /// The scale of `f` over `cores` cores; each of the first
    /// `max_instances` cores starts with one instance (the deploy's), and the
    /// deploy counts as activity, so the function idles out only
    /// `idle_timeout_ms` after it.
    pub fn new(
        f: &config::Function,
        cores: usize,
        metrics: ScaleMetrics,
        now: Instant,
    ) -> Result<Self, AutoscaleError> {
        let settings = AutoscaleSettings::from_function(f)?;
        let per_instance = settings.target_per_instance();
        let mut autoscaler = Autoscaler::new(settings, now);
        autoscaler.request_started(now);
        let cores = cores.max(1);
        let atomics = |v: u32| (0..cores).map(|_| AtomicU32::new(v)).collect::<Vec<_>>();
        // One instance on each of the first `max_instances` cores.
        let initial: Vec<AtomicU32> = (0..cores)
            .map(|c| AtomicU32::new(u32::from(c < f.max_instances as usize)))
            .collect();
        let n = u32::try_from(cores)
            .unwrap_or(u32::MAX)
            .min(f.max_instances);
        metrics
            .desired
            .get_or_create(&ScaleMetrics::label(&f.id))
            .set(i64::from(n));
        metrics
            .panic
            .get_or_create(&ScaleMetrics::label(&f.id))
            .set(0);
        Ok(Self {
            function: f.id.clone(),
            per_instance,
            max_instances: f.max_instances,
            scaler: Mutex::new(ScalerState {
                autoscaler,
                last_decision: None,
            }),
            demand: atomics(0),
            live: (0..cores)
                .map(|c| AtomicU32::new(u32::from(c < f.max_instances as usize)))
                .collect(),
            alloc: initial,
            active: (0..cores).map(|_| AtomicBool::new(true)).collect(),
            ready: atomics(0),
            inboxes: Mutex::new(vec![None; cores]),
            desired: AtomicU32::new(n),
            metrics,
        })
    }

    /// Registers core `core`'s inbox for handed-over connections.
    pub fn register_inbox(&self, core: usize, tx: flume::Sender<OwnedFd>) {
        if let Some(slot) = lock(&self.inboxes).get_mut(core) {
            *slot = Some(tx);
        }
    }

    /// Hands a connection core `from` accepted (while it has no instance)
    /// to the other core with the most ready instances; gives it back when
    /// no other core has one.
    pub fn offer(&self, from: usize, fd: OwnedFd) -> Result<(), OwnedFd> {
        let best = self
            .ready
            .iter()
            .enumerate()
            .filter(|(c, _)| *c != from)
            // SYNC: Relaxed: see `publish`.
            .map(|(c, r)| (c, r.load(Ordering::Relaxed)))
            .filter(|(_, r)| *r > 0)
            .max_by_key(|(_, r)| *r);
        let Some((to, _)) = best else {
            return Err(fd);
        };
        let tx = lock(&self.inboxes).get(to).cloned().flatten();
        match tx {
            Some(tx) => tx.send(fd).map_err(|e| e.into_inner()),
            None => Err(fd),
        }
    }

    /// Core `core`'s demand (requests in flight plus queued), its live and
    /// ready instances, and whether it is active (a request within the idle
    /// timeout, or demand now).
    pub fn publish(&self, core: usize, demand: u32, live: u32, ready: u32, active: bool) {
        // SYNC: Relaxed everywhere here: each value is a lone sample read by
        // the deciding core under the scaler lock; no other memory depends on it.
        if let Some(d) = self.demand.get(core) {
            d.store(demand, Ordering::Relaxed);
        }
        if let Some(l) = self.live.get(core) {
            l.store(live, Ordering::Relaxed);
        }
        if let Some(a) = self.active.get(core) {
            a.store(active, Ordering::Relaxed);
        }
        if let Some(r) = self.ready.get(core) {
            r.store(ready, Ordering::Relaxed);
        }
    }

    /// Instances core `core` should have.
    pub fn allocation(&self, core: usize) -> u32 {
        // SYNC: Relaxed: a level read on every tick; a stale value is
        // corrected on the next one.
        self.alloc
            .get(core)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }

    /// Room left under `max_instances` for core `core` to grow into: the
    /// maximum less every other core's published live count. Other cores
    /// only grow within their allocation (the allocations sum to at most
    /// `max_instances`) and a stale count of a shrinking core is too high,
    /// so growing within both bounds never exceeds the maximum.
    pub fn room_for(&self, core: usize) -> u32 {
        let others = self
            .live
            .iter()
            .enumerate()
            .filter(|(c, _)| *c != core)
            // SYNC: Relaxed: see `publish`.
            .map(|(_, l)| l.load(Ordering::Relaxed))
            .fold(0, u32::saturating_add);
        self.max_instances.saturating_sub(others)
    }

    /// The latest desired total.
    pub fn desired_total(&self) -> u32 {
        // SYNC: Relaxed: a reported level.
        self.desired.load(Ordering::Relaxed)
    }

    /// Runs a decision when one is due (every [`DECISION_EVERY`], or at once
    /// when `urgent`) and no other core is deciding; returns it.
    /// `new_requests` says whether the calling core counted requests since
    /// its last tick (idleness is counted from starts).
    pub fn decide(&self, now: Instant, urgent: bool, new_requests: bool) -> Option<Allocation> {
        let mut st = match self.scaler.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                if !new_requests {
                    return None;
                }
                // A start must not be lost to contention: wait for the lock.
                lock(&self.scaler)
            }
        };
        if new_requests {
            st.autoscaler.request_started(now);
        }
        let since = st.last_decision.map(|t| now.saturating_duration_since(t));
        let due = since.is_none_or(|d| d >= DECISION_EVERY || (urgent && d >= DECISION_MIN_GAP));
        if !due {
            return None;
        }
        st.last_decision = Some(now);
        // SYNC: Relaxed: samples (see `publish`).
        let demand: Vec<u32> = self
            .demand
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .collect();
        let live: Vec<u32> = self
            .live
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect();
        st.autoscaler
            .record_concurrency(now, demand.iter().copied().fold(0, u32::saturating_add));
        let total_live = live.iter().copied().fold(0, u32::saturating_add);
        let mut decision = st.autoscaler.decide(now, total_live);
        // Every active core keeps one instance (within max_instances).
        let floor: Vec<u32> = self
            .active
            .iter()
            .map(|a| u32::from(a.load(Ordering::Relaxed)))
            .collect();
        let active_cores = floor.iter().sum::<u32>().min(self.max_instances);
        decision.desired = decision.desired.max(active_cores);
        let per_core = allocate(decision.desired, &demand, &live, &floor, self.per_instance);
        for (a, n) in self.alloc.iter().zip(&per_core) {
            // SYNC: Relaxed: see `allocation`.
            a.store(*n, Ordering::Relaxed);
        }
        // SYNC: Relaxed: a reported level.
        let before = self.desired.swap(decision.desired, Ordering::Relaxed);
        let label = ScaleMetrics::label(&self.function);
        self.metrics
            .desired
            .get_or_create(&label)
            .set(i64::from(decision.desired));
        self.metrics
            .panic
            .get_or_create(&label)
            .set(i64::from(decision.panic));
        if decision.desired != before {
            let direction = if decision.desired > before {
                "up"
            } else {
                "down"
            };
            self.metrics
                .events
                .get_or_create(&ScaleEventLabels {
                    function: self.function.clone(),
                    direction: direction.into(),
                })
                .inc();
            tracing::info!(
                "{}: scale {direction} {before} → {} ({}); demand {demand:?}, live {live:?}, per core {per_core:?}",
                self.function,
                decision.desired,
                decision.reason,
            );
        }
        Some(Allocation { decision, per_core })
    }
}

/// Spreads `desired` instances over the cores: first `floor[c]` to each
/// core (in core order, while any are left), then each core keeps the
/// instances it has as far as its own demand needs them, then one at a time
/// to the core
/// with the most demand not yet covered (`max(0, demand − instances × per_instance)`),
/// ties to the core that has more instances now (fewer moves), then to the
/// lower index. The result sums to `desired`.
pub fn allocate(
    desired: u32,
    demand: &[u32],
    live: &[u32],
    floor: &[u32],
    per_instance: f64,
) -> Vec<u32> {
    let n = demand.len().max(live.len());
    let mut out = vec![0u32; n];
    if n == 0 {
        return out;
    }
    let per = if per_instance > 0.0 {
        per_instance
    } else {
        1.0
    };
    let mut left = desired;
    for (slot, f) in out.iter_mut().zip(floor) {
        let give = (*f).min(left);
        *slot = give;
        left -= give;
    }
    // Keep instances where they are still needed: moving one between cores
    // costs a retire and a restore, and the demand split changes from one
    // sample to the next.
    for (c, slot) in out.iter_mut().enumerate() {
        let d = f64::from(demand.get(c).copied().unwrap_or(0));
        // `ceil` of a non-negative ratio of u32s: in range for u32.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let needed = (d / per).ceil() as u32;
        let keep = live
            .get(c)
            .copied()
            .unwrap_or(0)
            .min(needed)
            .saturating_sub(*slot)
            .min(left);
        *slot += keep;
        left -= keep;
    }
    for _ in 0..left {
        let mut best = 0;
        let mut best_key = (f64::NEG_INFINITY, 0i64);
        for (c, slot) in out.iter().enumerate() {
            let d = f64::from(demand.get(c).copied().unwrap_or(0));
            // Covered demand is just covered: beyond that, stay where the
            // instances are.
            let uncovered = (d - f64::from(*slot) * per).max(0.0);
            let has = i64::from(live.get(c).copied().unwrap_or(0)) - i64::from(*slot);
            let key = (uncovered, has);
            if key.0 > best_key.0 || (key.0 == best_key.0 && key.1 > best_key.1) {
                best = c;
                best_key = key;
            }
        }
        out[best] += 1;
    }
    out
}

/// The [`FunctionScale`] of each deployed function version, so the cores
/// deploying one version share one (found by function id and config).
#[derive(Debug, Default)]
pub struct ScaleRegistry {
    map: Mutex<HashMap<(String, String), Weak<FunctionScale>>>,
}

impl ScaleRegistry {
    /// The scale of `f` (shared with other cores deploying the same config),
    /// created when none is alive.
    pub fn get_or_create(
        &self,
        f: &config::Function,
        cores: usize,
        metrics: &ScaleMetrics,
    ) -> Result<Arc<FunctionScale>, AutoscaleError> {
        let key = (f.id.clone(), format!("{f:?}"));
        let mut map = lock(&self.map);
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let s = Arc::new(FunctionScale::new(
            f,
            cores,
            metrics.clone(),
            Instant::now(),
        )?);
        map.insert(key, Arc::downgrade(&s));
        Ok(s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn demand_gets_the_instances() {
        // A burst on core 1 only.
        let none = [0, 0];
        assert_eq!(allocate(3, &[0, 9], &[1, 1], &none, 1.0), vec![0, 3]);
        // An active core keeps one even without demand right now.
        assert_eq!(allocate(3, &[0, 9], &[1, 1], &[1, 1], 1.0), vec![1, 2]);
        // From zero: the core with queued requests gets the first one.
        assert_eq!(allocate(1, &[0, 1], &[0, 0], &none, 1.0), vec![0, 1]);
        // No demand: keep instances where they are.
        assert_eq!(allocate(2, &[0, 0], &[0, 2], &none, 1.0), vec![0, 2]);
        assert_eq!(allocate(1, &[0, 0], &[1, 1], &none, 1.0), vec![1, 0]);
        // Even demand, even split.
        assert_eq!(allocate(4, &[4, 4], &[0, 0], &none, 1.0), vec![2, 2]);
        // Per-instance capacity 4: one each covers it; the rest follows live.
        assert_eq!(allocate(2, &[3, 4], &[0, 0], &none, 4.0), vec![1, 1]);
        assert_eq!(allocate(0, &[5, 5], &[3, 3], &[1, 1], 1.0), vec![0, 0]);
        // Instances stay where their core still needs them: no move from
        // core 0 (needs 3, has 3) to core 1 (needs 9, has 1) at the same
        // total; growth goes to core 1.
        assert_eq!(allocate(4, &[3, 9], &[3, 1], &none, 1.0), vec![3, 1]);
        assert_eq!(allocate(6, &[3, 9], &[3, 1], &none, 1.0), vec![3, 3]);
        // An instance its core no longer needs can move.
        assert_eq!(allocate(2, &[0, 9], &[2, 0], &none, 1.0), vec![0, 2]);
    }

    proptest! {
        #[test]
        fn allocation_sums_to_desired(
            desired in 0u32..64,
            cores in 1usize..8,
            seed in proptest::collection::vec((0u32..50, 0u32..10), 8),
            per in 0.1f64..10.0,
        ) {
            let demand: Vec<u32> = seed.iter().take(cores).map(|p| p.0).collect();
            let live: Vec<u32> = seed.iter().take(cores).map(|p| p.1).collect();
            let floor = vec![0; cores];
            let a = allocate(desired, &demand, &live, &floor, per);
            prop_assert_eq!(a.len(), cores);
            prop_assert_eq!(a.iter().sum::<u32>(), desired);
            // A core with demand never gets nothing while one without demand gets some.
            let starved = (0..cores).any(|c| demand[c] > 0 && a[c] == 0);
            let idle_served = (0..cores).any(|c| demand[c] == 0 && a[c] > 0);
            prop_assert!(!(starved && idle_served));
        }
    }

    fn function() -> config::Function {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().join("h.py");
        std::fs::write(&h, "").unwrap();
        let yaml = format!(
            "functions:\n  - id: f\n    memory_limit_mb: 64\n    trigger_port: 9\n    handler_path: {}\n    idle_timeout_ms: 100\n    stable_window_ms: 1000\n    max_instances: 4\n    target_utilization: 1.0\n",
            h.display()
        );
        config::load_str(&yaml, "t.yaml", dir.path())
            .unwrap()
            .functions
            .remove(0)
    }

    #[test]
    fn burst_from_zero_then_idle_back_to_zero() {
        let f = function();
        let t0 = Instant::now();
        let s = FunctionScale::new(&f, 2, ScaleMetrics::default(), t0).unwrap();
        // Deploy: one per core, active for idle_timeout.
        let a = s.decide(t0, false, false).unwrap();
        assert_eq!(a.decision.desired, 2, "both cores active since the deploy");
        assert_eq!(a.per_core, vec![1, 1]);
        // Idle past the timeout: heads to zero.
        s.publish(0, 0, 0, 0, false);
        s.publish(1, 0, 0, 0, false);
        let t = t0 + Duration::from_millis(300);
        let a = s.decide(t, false, false).unwrap();
        assert_eq!(a.decision.desired, 0);
        assert_eq!(a.per_core, vec![0, 0]);
        // Three requests queue on core 1 at zero instances: urgent decision.
        s.publish(1, 3, 0, 0, true);
        let t = t + Duration::from_millis(5);
        let a = s.decide(t, true, true).unwrap();
        assert_eq!(
            a.decision.desired, 3,
            "sized for the queued demand at once: {a:?}"
        );
        assert_eq!(a.per_core, vec![0, 3]);
        assert_eq!(s.allocation(1), 3);
        // Not due again right away unless urgent.
        assert!(s
            .decide(t + Duration::from_millis(1), false, false)
            .is_none());
    }

    #[test]
    fn registry_shares_one_scale_per_config() {
        let f = function();
        let r = ScaleRegistry::default();
        let m = ScaleMetrics::default();
        let a = r.get_or_create(&f, 2, &m).unwrap();
        let b = r.get_or_create(&f, 2, &m).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let mut g = f.clone();
        g.max_instances = 8;
        let c = r.get_or_create(&g, 2, &m).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        drop((a, b));
        let d = r.get_or_create(&f, 2, &m).unwrap();
        assert_eq!(
            d.desired_total(),
            2,
            "a fresh scale after the last user left"
        );
    }
}
