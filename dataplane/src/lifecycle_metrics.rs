//! Instance-lifecycle metrics of one core (the gateway's request metrics live
//! in `gateway::metrics`): instances by state, restarts, OOM kills, crashes
//! and the spawn-to-ready handshake duration. Registered per core under a
//! `core` label, so no core ever writes a metric another core writes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabel {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub function: String,
    pub state: String,
}

/// Labels of `instance_starts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub function: String,
    /// `spawn`, `restore` or `warm`.
    pub source: String,
}

/// Labels of `restore_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub function: String,
    /// `over_budget` or `failed`.
    pub reason: String,
}

/// Labels of `snapshots_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub function: String,
    /// `ok` or `failed`.
    pub outcome: String,
}

/// One core's lifecycle metrics.
#[derive(Debug)]
pub struct LifecycleMetrics {
    pub instances: Family<StateLabel, Gauge>,
    pub starts: Family<SourceLabel, Counter>,
    pub restore_seconds: Family<FunctionLabel, Histogram>,
    pub restore_failures: Family<ReasonLabel, Counter>,
    pub snapshots: Family<OutcomeLabel, Counter>,
    pub warm_pool: Family<FunctionLabel, Gauge>,
    pub restarts: Family<FunctionLabel, Counter>,
    pub oom_kills: Family<FunctionLabel, Counter>,
    pub crashes: Family<FunctionLabel, Counter>,
    pub handshake_seconds: Family<FunctionLabel, Histogram>,
}

fn restore_histogram() -> Histogram {
    // 1 ms .. ~1 s
    Histogram::new(exponential_buckets(0.001, 1.5, 18))
}

fn handshake_histogram() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl LifecycleMetrics {
    /// Create and register into `registry` (a core's sub-registry).
    pub fn register(registry: &mut Registry) -> Self {
        let m = LifecycleMetrics {
            instances: Family::default(),
            restarts: Family::default(),
            oom_kills: Family::default(),
            crashes: Family::default(),
            handshake_seconds: Family::new_with_constructor(handshake_histogram),
            starts: Family::default(),
            restore_seconds: Family::new_with_constructor(restore_histogram),
            restore_failures: Family::default(),
            snapshots: Family::default(),
            warm_pool: Family::default(),
        };
        registry.register(
            "instance_starts",
            "Instances started, by how: spawn, restore (CRIU) or warm (thawed from the warm pool)",
            m.starts.clone(),
        );
        registry.register(
            "restore_duration_seconds",
            "Wall time of a successful criu restore of an instance",
            m.restore_seconds.clone(),
        );
        registry.register(
            "restore_failures",
            "Restores that failed or were killed past restore_timeout_ms",
            m.restore_failures.clone(),
        );
        registry.register(
            "snapshots",
            "CRIU snapshots (dumps) of a function, by outcome",
            m.snapshots.clone(),
        );
        registry.register(
            "warm_pool_instances",
            "Restored, frozen instances waiting in the warm pool",
            m.warm_pool.clone(),
        );
        registry.register(
            "instances",
            "Handler instances by lifecycle state",
            m.instances.clone(),
        );
        registry.register(
            "instance_restarts",
            "Instances started to replace a failed one",
            m.restarts.clone(),
        );
        registry.register(
            "instance_oom_kills",
            "Instances killed by the OOM killer at their memory limit",
            m.oom_kills.clone(),
        );
        registry.register(
            "instance_crashes",
            "Instance exits nobody asked for (OOM kills included)",
            m.crashes.clone(),
        );
        registry.register(
            "handshake_duration_seconds",
            "Time from spawn to READY and a listening trigger port",
            m.handshake_seconds.clone(),
        );
        m
    }

    fn label(function: &str) -> FunctionLabel {
        FunctionLabel {
            function: function.to_string(),
        }
    }

    /// Add what a supervisor counted since the last call.
    pub fn add_counts(&self, function: &str, restarts: u64, oom_kills: u64, crashes: u64) {
        let l = Self::label(function);
        for (family, n) in [
            (&self.restarts, restarts),
            (&self.oom_kills, oom_kills),
            (&self.crashes, crashes),
        ] {
            if n > 0 {
                family.get_or_create(&l).inc_by(n);
            }
        }
    }

    pub fn started(&self, function: &str, source: &str) {
        self.starts
            .get_or_create(&SourceLabel {
                function: function.to_string(),
                source: source.to_string(),
            })
            .inc();
    }

    pub fn restore_failed(&self, function: &str, reason: &str) {
        self.restore_failures
            .get_or_create(&ReasonLabel {
                function: function.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn snapshot_done(&self, function: &str, ok: bool) {
        self.snapshots
            .get_or_create(&OutcomeLabel {
                function: function.to_string(),
                outcome: if ok { "ok" } else { "failed" }.to_string(),
            })
            .inc();
    }

    pub fn observe_restore(&self, function: &str, seconds: f64) {
        self.restore_seconds
            .get_or_create(&Self::label(function))
            .observe(seconds);
    }

    pub fn observe_handshake(&self, function: &str, seconds: f64) {
        self.handshake_seconds
            .get_or_create(&Self::label(function))
            .observe(seconds);
    }

    /// Set the number of instances of `function` in each state (states absent from `counts` read 0).
    pub fn set_instances(&self, function: &str, counts: &[(&str, i64)]) {
        for state in [
            "starting",
            "restoring",
            "snapshotting",
            "ready",
            "serving",
            "idle",
            "draining",
        ] {
            let n = counts
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n);
            self.instances
                .get_or_create(&StateLabel {
                    function: function.to_string(),
                    state: state.to_string(),
                })
                .set(n);
        }
    }
}
