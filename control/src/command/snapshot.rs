//! `aetherctl snapshot FUNCTION`: dump a ready instance with CRIU now; and
//! the snapshot formatting `list` shares.
//!
//! aetherd asks its cores in order until one dumps an instance (the instance
//! keeps running); new instances of the function are restored from the
//! images from then on. The verb prints the snapshot's state, identity, size,
//! dump time and images directory, and exits 0 only when the state is
//! `ready`.

use std::time::Duration;

use shm_abi::message::{Command, ReplyBody, SnapshotInfo};

use super::{unexpected, Context};
use crate::cli::Output;
use crate::CtlError;

/// Default `--timeout`: aetherd gives each core up to 60 s (warm-up requests
/// plus the dump) and asks the cores one after the other.
pub(crate) const DEFAULT_TIMEOUT_S: u64 = 150;

pub(crate) fn run(
    ctx: &Context,
    function: &str,
    output: Output,
    timeout: Duration,
) -> Result<(), CtlError> {
    let body = ctx.call(
        Command::Snapshot {
            function_id: function.to_string(),
        },
        timeout,
    )?;
    let ReplyBody::Snapshot {
        function_id,
        snapshot,
    } = body
    else {
        return Err(unexpected("snapshot", &body));
    };
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"function": function_id, "snapshot": json(&snapshot)})
        ),
        Output::Table => print!("{}", report(&function_id, &snapshot)),
    }
    if snapshot.state == "ready" {
        Ok(())
    } else {
        Err(CtlError::Failed(format!(
            "the snapshot of {function_id} is {}{}",
            snapshot.state,
            reason(&snapshot)
        )))
    }
}

/// ": <error>" when the snapshot carries one.
fn reason(s: &SnapshotInfo) -> String {
    if s.error.is_empty() {
        String::new()
    } else {
        format!(": {}", s.error)
    }
}

/// The `snapshot` verb's text for people.
fn report(function: &str, s: &SnapshotInfo) -> String {
    let mut out = format!("{function}: snapshot {}{}\n", s.state, reason(s));
    let mut row = |name: &str, value: String| out.push_str(&format!("  {name:<9} {value}\n"));
    if !s.identity.is_empty() {
        row("identity", s.identity.clone());
    }
    if s.state == "ready" {
        row(
            "size",
            format!("{} ({} bytes)", human_bytes(s.bytes), s.bytes),
        );
        row("dump", format!("{:.1} ms", s.dump_ms));
        row("age", human_age(s.age_ms));
    }
    if !s.images_dir.is_empty() {
        row("images", s.images_dir.clone());
    }
    out
}

/// A snapshot as JSON (for `snapshot -o json` and `list -o json`).
pub(crate) fn json(s: &SnapshotInfo) -> serde_json::Value {
    serde_json::json!({
        "state": s.state,
        "identity": s.identity,
        "images_dir": s.images_dir,
        "bytes": s.bytes,
        "age_ms": s.age_ms,
        "dump_ms": s.dump_ms,
        "created_unix_ms": s.created_unix_ms,
        "error": s.error,
    })
}

/// `list`'s SNAPSHOT cell: the state, and for a ready snapshot its age and
/// size (`ready 12s 9.4MiB`).
pub(crate) fn cell(s: &SnapshotInfo) -> String {
    if s.state == "ready" {
        format!("ready {} {}", human_age(s.age_ms), human_bytes(s.bytes))
    } else {
        s.state.clone()
    }
}

/// Bytes in binary units: `512B`, `9.4KiB`, `12.0MiB`, `1.5GiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// A duration in its largest whole unit: `850ms`, `12s`, `5m`, `3h`, `2d`.
pub(crate) fn human_age(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{}s", ms / 1_000),
        60_000..3_600_000 => format!("{}m", ms / 60_000),
        3_600_000..86_400_000 => format!("{}h", ms / 3_600_000),
        _ => format!("{}d", ms / 86_400_000),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    fn ready() -> SnapshotInfo {
        SnapshotInfo {
            state: "ready".into(),
            identity: "0123456789abcdef".into(),
            images_dir: "/dev/shm/aetherless/hello/0123456789abcdef".into(),
            bytes: 9_856_614,
            age_ms: 12_400,
            dump_ms: 70.25,
            error: String::new(),
            created_unix_ms: 1_790_000_000_000,
        }
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1024), "1.0KiB");
        assert_eq!(human_bytes(9_856_614), "9.4MiB");
        assert_eq!(human_bytes(3 << 30), "3.0GiB");
        assert_eq!(human_bytes(u64::MAX), "16777216.0TiB");
    }

    #[test]
    fn ages_use_their_largest_whole_unit() {
        assert_eq!(human_age(0), "0ms");
        assert_eq!(human_age(999), "999ms");
        assert_eq!(human_age(12_400), "12s");
        assert_eq!(human_age(59_999), "59s");
        assert_eq!(human_age(300_000), "5m");
        assert_eq!(human_age(3 * 3_600_000 + 1), "3h");
        assert_eq!(human_age(2 * 86_400_000), "2d");
    }

    #[test]
    fn list_cell_shows_age_and_size_only_when_ready() {
        assert_eq!(cell(&ready()), "ready 12s 9.4MiB");
        for state in ["none", "dumping", "failed", "unavailable"] {
            let s = SnapshotInfo {
                state: state.into(),
                error: "why".into(),
                ..SnapshotInfo::default()
            };
            assert_eq!(cell(&s), state);
        }
    }

    #[test]
    fn report_names_every_fact_of_a_ready_snapshot() {
        let text = report("hello", &ready());
        for needle in [
            "hello: snapshot ready\n",
            "identity  0123456789abcdef",
            "size      9.4MiB (9856614 bytes)",
            "dump      70.2 ms",
            "age       12s",
            "images    /dev/shm/aetherless/hello/0123456789abcdef",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
    }

    #[test]
    fn report_of_a_failed_snapshot_carries_the_reason() {
        let s = SnapshotInfo {
            state: "failed".into(),
            identity: "0123456789abcdef".into(),
            error: "criu dump exited with 1".into(),
            ..SnapshotInfo::default()
        };
        let text = report("hello", &s);
        assert!(
            text.starts_with("hello: snapshot failed: criu dump exited with 1\n"),
            "{text}"
        );
        assert!(!text.contains("size"), "{text}");
    }

    #[test]
    fn json_keeps_every_field() {
        let v = json(&ready());
        assert_eq!(v["state"], "ready");
        assert_eq!(v["bytes"], 9_856_614);
        assert_eq!(v["age_ms"], 12_400);
        assert_eq!(v["dump_ms"], 70.25);
        assert_eq!(v["identity"], "0123456789abcdef");
        assert_eq!(v["created_unix_ms"], 1_790_000_000_000_u64);
        assert_eq!(v["error"], "");
    }
}
