//! `aetherctl list`: functions, their instances per core and their states,
//! and each function's CRIU snapshot (state, age, size).

use shm_abi::message::{Command, FunctionStatus, ReplyBody};

use super::{snapshot, unexpected, Context, QUERY_TIMEOUT};
use crate::cli::Output;
use crate::CtlError;

pub(crate) fn run(ctx: &Context, output: Output) -> Result<(), CtlError> {
    let body = ctx.call(Command::List, QUERY_TIMEOUT)?;
    let ReplyBody::List { functions } = body else {
        return Err(unexpected("list", &body));
    };
    match output {
        Output::Json => println!("{}", json(&functions)),
        Output::Table => print!("{}", table(&functions)),
    }
    Ok(())
}

fn json(functions: &[FunctionStatus]) -> serde_json::Value {
    functions
        .iter()
        .map(|f| {
            serde_json::json!({
                "id": f.id,
                "trigger_port": f.trigger_port,
                "instances": f.instances.iter().map(|i| serde_json::json!({
                    "instance_id": i.instance_id,
                    "core": i.core,
                    "state": i.state,
                    "pid": i.pid,
                    "restarts": i.restarts,
                })).collect::<Vec<_>>(),
                "snapshot": snapshot::json(&f.snapshot),
            })
        })
        .collect()
}

/// One row per instance (one `none` row for a function without any); the
/// function's snapshot is repeated on each of its rows, so every line stands
/// on its own for grep.
fn table(functions: &[FunctionStatus]) -> String {
    let row = |cells: [&str; 8]| {
        let [f, port, inst, core, state, pid, restarts, snap] = cells;
        format!(
            "{f:<24} {port:>6} {inst:>10} {core:>5} {state:<12} {pid:>8} {restarts:>8}  {snap}\n"
        )
    };
    let mut out = row([
        "FUNCTION", "PORT", "INSTANCE", "CORE", "STATE", "PID", "RESTARTS", "SNAPSHOT",
    ]);
    for f in functions {
        let port = f.trigger_port.to_string();
        let snap = snapshot::cell(&f.snapshot);
        if f.instances.is_empty() {
            out.push_str(&row([&f.id, &port, "-", "-", "none", "-", "-", &snap]));
        }
        for i in &f.instances {
            out.push_str(&row([
                &f.id,
                &port,
                &i.instance_id,
                &i.core.to_string(),
                &i.state,
                &i.pid.to_string(),
                &i.restarts.to_string(),
                &snap,
            ]));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use shm_abi::message::{InstanceStatus, SnapshotInfo};

    fn functions() -> Vec<FunctionStatus> {
        vec![
            FunctionStatus {
                id: "hello".into(),
                trigger_port: 8080,
                instances: (0..2)
                    .map(|core| InstanceStatus {
                        instance_id: format!("hello-c{core}-1"),
                        core,
                        state: "ready".into(),
                        pid: 100 + core,
                        restarts: 0,
                    })
                    .collect(),
                snapshot: SnapshotInfo {
                    state: "ready".into(),
                    bytes: 5 << 20,
                    age_ms: 90_000,
                    ..SnapshotInfo::default()
                },
            },
            FunctionStatus {
                id: "idle".into(),
                trigger_port: 8081,
                instances: Vec::new(),
                snapshot: SnapshotInfo {
                    state: "none".into(),
                    ..SnapshotInfo::default()
                },
            },
        ]
    }

    #[test]
    fn table_has_a_snapshot_column_on_every_row() {
        let text = table(&functions());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].ends_with("  SNAPSHOT"), "{text}");
        assert!(lines[1].starts_with("hello") && lines[1].ends_with("  ready 1m 5.0MiB"));
        assert!(lines[2].contains("hello-c1-1") && lines[2].ends_with("  ready 1m 5.0MiB"));
        assert!(
            lines[3].starts_with("idle") && lines[3].ends_with("  none"),
            "{text}"
        );
    }

    #[test]
    fn json_carries_each_functions_snapshot() {
        let v = json(&functions());
        assert_eq!(v[0]["snapshot"]["state"], "ready");
        assert_eq!(v[0]["snapshot"]["bytes"], 5 << 20);
        assert_eq!(v[0]["snapshot"]["age_ms"], 90_000);
        assert_eq!(v[0]["instances"][1]["pid"], 101);
        assert_eq!(v[1]["snapshot"]["state"], "none");
    }
}
