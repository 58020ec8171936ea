//! `aetherctl stats`: request counters and latency percentiles (hdrhistogram in aetherd).

use std::time::Duration;

use shm_abi::message::{Command, ReplyBody};

use super::{unexpected, Context, QUERY_TIMEOUT};
use crate::cli::Output;
use crate::CtlError;

pub(crate) fn run(ctx: &Context, output: Output, dashboard: bool) -> Result<(), CtlError> {
    loop {
        let body = ctx.call(Command::Stats, QUERY_TIMEOUT)?;
        let ReplyBody::Stats {
            functions,
            uptime_ms,
        } = body
        else {
            return Err(unexpected("stats", &body));
        };
        if dashboard {
            // Clear the screen and home the cursor.
            print!("\x1b[2J\x1b[H");
        }
        match output {
            Output::Json => {
                let doc = serde_json::json!({
                    "uptime_ms": uptime_ms,
                    "functions": functions.iter().map(|f| serde_json::json!({
                        "id": f.id,
                        "requests_total": f.requests_total,
                        "by_status": f.by_status.iter().map(|(s, n)| (s.to_string(), serde_json::Value::from(*n))).collect::<serde_json::Map<_, _>>(),
                        "in_flight": f.in_flight,
                        "queue_depth": f.queue_depth,
                        "latency_us": {"p50": f.latency_p50_us, "p99": f.latency_p99_us, "p999": f.latency_p999_us, "max": f.latency_max_us},
                    })).collect::<Vec<_>>(),
                });
                println!("{doc}");
            }
            Output::Table => {
                println!("uptime {:.1} s", uptime_ms as f64 / 1000.0);
                println!(
                    "{:<24} {:>10} {:>8} {:>6} {:>10} {:>10} {:>10} {:>10}  STATUS",
                    "FUNCTION",
                    "REQUESTS",
                    "INFLIGHT",
                    "QUEUE",
                    "P50(us)",
                    "P99(us)",
                    "P999(us)",
                    "MAX(us)"
                );
                for f in &functions {
                    let statuses: Vec<String> = f
                        .by_status
                        .iter()
                        .map(|(s, n)| format!("{s}:{n}"))
                        .collect();
                    println!(
                        "{:<24} {:>10} {:>8} {:>6} {:>10.1} {:>10.1} {:>10.1} {:>10.1}  {}",
                        f.id,
                        f.requests_total,
                        f.in_flight,
                        f.queue_depth,
                        f.latency_p50_us,
                        f.latency_p99_us,
                        f.latency_p999_us,
                        f.latency_max_us,
                        statuses.join(" ")
                    );
                }
            }
        }
        if !dashboard {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
