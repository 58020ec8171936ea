//! aetherd in front of the native handler: the gateway benchmark's
//! [`Launch`] (a fixed number of instances, no scaling), started through
//! [`crate::aetherd`] and awaited until it serves the hello JSON.

use crate::aetherd::{Aetherd, AetherdError, Function, Launch, Site};
use std::time::Duration;

/// Function id of the benchmark's function.
pub const FUNCTION_ID: &str = "bench-native";

/// Knobs of the benchmark's function.
#[derive(Debug, Clone, Copy)]
pub struct FunctionShape {
    /// Instances kept (`min_instances` = `max_instances`).
    pub instances: u32,
    /// In-flight requests per instance (`concurrency`).
    pub concurrency: u32,
}

/// The aetherd run: `min_instances` = `max_instances` = `instances`.
#[must_use]
pub fn launch(site: Site, shape: FunctionShape) -> Launch {
    Launch {
        benchmark: "gateway",
        site,
        orchestrator: Vec::new(),
        function: Function {
            id: FUNCTION_ID,
            memory_limit_mb: 256,
            settings: vec![
                ("concurrency", shape.concurrency.to_string()),
                ("min_instances", shape.instances.to_string()),
                ("max_instances", shape.instances.to_string()),
            ],
        },
        up_flags: Vec::new(),
    }
}

/// Starts aetherd and waits until `GET path` on the trigger port returns
/// `expected_body`.
///
/// # Errors
/// [`AetherdError`], with aetherctl's output or aetherd's log tail.
pub fn start(launch: &Launch, path: &str, expected_body: &[u8]) -> Result<Aetherd, AetherdError> {
    let aetherd = Aetherd::start(launch)?;
    aetherd.await_serving(path, |b| b == expected_body, Duration::from_secs(30))?;
    Ok(aetherd)
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
            FunctionShape {
                instances: 2,
                concurrency: 64,
            },
        )
    }

    #[test]
    fn aetherctl_validates_the_generated_config() {
        let dir = tempfile::tempdir().unwrap();
        crate::aetherd::assert_aetherctl_accepts(
            "gateway aetherctl_validates_the_generated_config",
            &setup(dir.path(), "/bin/true").config(),
        );
    }

    #[test]
    fn config_keeps_a_fixed_number_of_instances() {
        let c = setup(Path::new("/tmp/run"), "/x/hello-native").config();
        for needle in [
            "state_dir: /tmp/run/state",
            "metrics_addr: 127.0.0.1:4343",
            "id: bench-native",
            "trigger_port: 4242",
            "handler_path: /x/hello-native",
            "egress: false",
            "min_instances: 2",
            "max_instances: 2",
            "concurrency: 64",
        ] {
            assert!(c.contains(needle), "missing {needle:?} in\n{c}");
        }
    }
}
