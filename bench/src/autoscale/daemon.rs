//! The autoscale benchmark's aetherd run: one function that scales from
//! zero (`min_instances: 0`), started through [`crate::aetherd`].

use crate::aetherd::{Function, Launch, Site};

/// Function id of the benchmark's function.
pub const FUNCTION_ID: &str = "bench-burst";

/// The autoscaling knobs of the function (see the benchmark's module docs
/// for why these values).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Scaling {
    pub concurrency: u32,
    pub target_utilization: f64,
    pub max_instances: u32,
    pub idle_timeout_ms: u64,
    pub stable_window_ms: u64,
    pub panic_window_pct: f64,
    pub queue_size: u32,
}

/// The aetherd run: `min_instances: 0`, the [`Scaling`] knobs, a 2 s drain
/// on `down`.
#[must_use]
pub fn launch(site: Site, s: Scaling) -> Launch {
    Launch {
        benchmark: "autoscale",
        site,
        orchestrator: vec![("drain_timeout_ms", "2000".into())],
        function: Function {
            id: FUNCTION_ID,
            memory_limit_mb: 256,
            settings: vec![
                ("concurrency", s.concurrency.to_string()),
                ("target_utilization", s.target_utilization.to_string()),
                ("min_instances", "0".into()),
                ("max_instances", s.max_instances.to_string()),
                ("idle_timeout_ms", s.idle_timeout_ms.to_string()),
                ("stable_window_ms", s.stable_window_ms.to_string()),
                ("panic_window_pct", s.panic_window_pct.to_string()),
                ("queue_size", s.queue_size.to_string()),
            ],
        },
        up_flags: Vec::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use crate::aetherd::test_site;
    use std::path::Path;

    fn setup(dir: &Path, handler: &str) -> Launch {
        launch(
            test_site(dir, handler),
            Scaling {
                concurrency: 8,
                target_utilization: 0.7,
                max_instances: 8,
                idle_timeout_ms: 1000,
                stable_window_ms: 10_000,
                panic_window_pct: 10.0,
                queue_size: 1024,
            },
        )
    }

    #[test]
    fn config_scales_from_zero() {
        let c = setup(Path::new("/tmp/run"), "/x/hello-native").config();
        for needle in [
            "state_dir: /tmp/run/state",
            "metrics_addr: 127.0.0.1:4343",
            "\n  drain_timeout_ms: 2000\n",
            "id: bench-burst",
            "trigger_port: 4242",
            "concurrency: 8",
            "target_utilization: 0.7",
            "min_instances: 0",
            "max_instances: 8",
            "idle_timeout_ms: 1000",
            "stable_window_ms: 10000",
            "panic_window_pct: 10",
            "queue_size: 1024",
            "egress: false",
        ] {
            assert!(c.contains(needle), "missing {needle:?} in\n{c}");
        }
    }

    #[test]
    fn aetherctl_validates_the_generated_config() {
        let dir = tempfile::tempdir().unwrap();
        crate::aetherd::assert_aetherctl_accepts(
            "autoscale aetherctl_validates_the_generated_config",
            &setup(dir.path(), "/bin/true").config(),
        );
    }
}
