//! What changes between two configurations (`aetherctl deploy --dry-run`).
//!
//! Functions are matched by id. A function whose fields all compare equal is
//! unchanged; otherwise it is updated and the diff names the changed fields.
//! Orchestrator fields cannot change on a running aetherd; the diff lists
//! them so `deploy` can say a restart is needed.

use std::fmt;

use serde::Serialize;

use crate::model::{Config, Function, Orchestrator};

/// The difference between a running configuration and a new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct ConfigDiff {
    /// Ids only in the new configuration, in its order.
    pub added: Vec<String>,
    /// Ids only in the old configuration, in its order.
    pub removed: Vec<String>,
    /// Functions in both whose fields differ, in the new configuration's order.
    pub updated: Vec<FunctionUpdate>,
    /// Ids in both with identical fields, in the new configuration's order.
    pub unchanged: Vec<String>,
    /// Orchestrator fields that differ (they take effect only at the next `up`).
    pub orchestrator_changed: Vec<&'static str>,
}

/// One function present in both configurations, with different fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FunctionUpdate {
    /// The function id.
    pub id: String,
    /// Names of the fields whose values differ, in schema order.
    pub fields: Vec<&'static str>,
}

impl ConfigDiff {
    /// Whether applying the new configuration would change nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.updated.is_empty()
            && self.orchestrator_changed.is_empty()
    }
}

impl Config {
    /// What changes from `old` to `new`.
    pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
        let mut diff = ConfigDiff {
            orchestrator_changed: orchestrator_fields(&old.orchestrator, &new.orchestrator),
            ..ConfigDiff::default()
        };
        for f in &new.functions {
            match old.function(&f.id) {
                None => diff.added.push(f.id.clone()),
                Some(before) => {
                    let fields = function_fields(before, f);
                    if fields.is_empty() {
                        diff.unchanged.push(f.id.clone());
                    } else {
                        diff.updated.push(FunctionUpdate {
                            id: f.id.clone(),
                            fields,
                        });
                    }
                }
            }
        }
        diff.removed = old
            .functions
            .iter()
            .filter(|f| new.function(&f.id).is_none())
            .map(|f| f.id.clone())
            .collect();
        diff
    }
}

/// Lists the names of the fields that differ; `$a` is destructured in full so
/// a new field is a compile error here until it is compared.
macro_rules! changed_fields {
    ($ty:ident, $a:expr, $b:expr, [$($field:ident),* $(,)?]) => {{
        let $ty { $($field: _),* } = $a;
        let mut changed = Vec::new();
        $(
            if $a.$field != $b.$field {
                changed.push(stringify!($field));
            }
        )*
        changed
    }};
}

fn function_fields(a: &Function, b: &Function) -> Vec<&'static str> {
    changed_fields!(
        Function,
        a,
        b,
        [
            id,
            memory_limit_mb,
            trigger_port,
            handler_path,
            timeout_ms,
            environment,
            concurrency,
            target_utilization,
            min_instances,
            max_instances,
            idle_timeout_ms,
            stable_window_ms,
            panic_window_pct,
            egress,
            handshake_timeout_ms,
            warmup_requests,
            queue_size,
        ]
    )
}

fn orchestrator_fields(a: &Orchestrator, b: &Orchestrator) -> Vec<&'static str> {
    changed_fields!(
        Orchestrator,
        a,
        b,
        [
            shm_buffer_size,
            warm_pool_size,
            restore_timeout_ms,
            snapshot_dir,
            cores,
            metrics_addr,
            listen_addr,
            state_dir,
            log_dir,
            drain_timeout_ms,
            xdp,
        ]
    )
}

/// One line per function: `+ id` added, `- id` removed, `~ id (fields)`
/// updated, `= id` unchanged; then `! orchestrator (fields)` when it differs.
impl fmt::Display for ConfigDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for id in &self.added {
            writeln!(f, "+ {id}")?;
        }
        for id in &self.removed {
            writeln!(f, "- {id}")?;
        }
        for u in &self.updated {
            writeln!(f, "~ {} ({})", u.id, u.fields.join(", "))?;
        }
        for id in &self.unchanged {
            writeln!(f, "= {id}")?;
        }
        if !self.orchestrator_changed.is_empty() {
            writeln!(
                f,
                "! orchestrator ({}): takes effect at the next `aetherctl up`",
                self.orchestrator_changed.join(", ")
            )?;
        }
        Ok(())
    }
}
