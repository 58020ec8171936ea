//! Field names, ranges and defaults: the one place they are written.
//!
//! The decoder checks values against these constants, and
//! [`reference_table`] renders them as the Markdown table in the crate docs
//! (a test keeps the two identical).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Limits and default of an integer field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntSpec {
    /// Key in the YAML.
    pub name: &'static str,
    /// Smallest accepted value.
    pub min: i64,
    /// Largest accepted value.
    pub max: i64,
    /// Value when absent; `None` when the field is required.
    pub default: Option<i64>,
}

impl IntSpec {
    const fn new(name: &'static str, min: i64, max: i64, default: i64) -> Self {
        IntSpec {
            name,
            min,
            max,
            default: Some(default),
        }
    }

    const fn required(name: &'static str, min: i64, max: i64) -> Self {
        IntSpec {
            name,
            min,
            max,
            default: None,
        }
    }

    /// The default as `u64` (0 for a required field; every spec has `min >= 0`).
    pub fn default_u64(&self) -> u64 {
        self.default
            .and_then(|d| u64::try_from(d).ok())
            .unwrap_or(0)
    }

    /// The default as `u32` (0 for a required field or one out of `u32`).
    pub fn default_u32(&self) -> u32 {
        self.default
            .and_then(|d| u32::try_from(d).ok())
            .unwrap_or(0)
    }

    /// `min..=max`.
    pub fn range_text(&self) -> String {
        format!("{}..={}", self.min, self.max)
    }
}

/// Limits and default of a floating-point field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloatSpec {
    /// Key in the YAML.
    pub name: &'static str,
    /// Lower bound.
    pub min: f64,
    /// Whether `min` itself is accepted.
    pub min_inclusive: bool,
    /// Upper bound (inclusive).
    pub max: f64,
    /// Value when absent.
    pub default: f64,
}

impl FloatSpec {
    /// Whether `v` is inside the bounds (NaN never is).
    pub fn contains(&self, v: f64) -> bool {
        let above_min = if self.min_inclusive {
            v >= self.min
        } else {
            v > self.min
        };
        above_min && v <= self.max
    }

    /// `(min, max]` or `[min, max]`.
    pub fn range_text(&self) -> String {
        let open = if self.min_inclusive { '[' } else { '(' };
        format!("{open}{}, {}]", self.min, self.max)
    }
}

/// Fields of `orchestrator:`.
pub mod orchestrator {
    use super::*;

    /// Every key accepted in `orchestrator:`.
    pub const FIELDS: &[&str] = &[
        "shm_buffer_size",
        "warm_pool_size",
        "restore_timeout_ms",
        "snapshot_dir",
        "cores",
        "metrics_addr",
        "listen_addr",
        "state_dir",
        "log_dir",
        "drain_timeout_ms",
        "xdp",
    ];
    /// Bytes of each shared-memory segment.
    pub const SHM_BUFFER_SIZE: IntSpec = IntSpec::new("shm_buffer_size", 4096, 1 << 30, 4 << 20);
    /// Instances kept warm with `up --warm-pool`.
    pub const WARM_POOL_SIZE: IntSpec = IntSpec::new("warm_pool_size", 0, 1024, 10);
    /// Restore deadline, ms.
    pub const RESTORE_TIMEOUT_MS: IntSpec = IntSpec::new("restore_timeout_ms", 1, 60_000, 100);
    /// Default `snapshot_dir`.
    pub const SNAPSHOT_DIR: &str = "/dev/shm/aetherless";
    /// `cores: N` bounds.
    pub const CORES_COUNT: IntSpec = IntSpec::new("cores", 1, 1024, 1);
    /// `cores: [id, ...]` bounds for each id.
    pub const CORE_ID: IntSpec = IntSpec::new("cores", 0, 4095, 0);
    /// Default `metrics_addr`.
    pub const METRICS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);
    /// Default `listen_addr`.
    pub const LISTEN_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    /// Default `state_dir`.
    pub const STATE_DIR: &str = "/run/aetherless";
    /// Default `log_dir`.
    pub const LOG_DIR: &str = "/var/log/aetherless";
    /// Shutdown drain deadline, ms.
    pub const DRAIN_TIMEOUT_MS: IntSpec = IntSpec::new("drain_timeout_ms", 0, 600_000, 10_000);
    /// Every key accepted in `orchestrator.xdp:`.
    pub const XDP_FIELDS: &[&str] = &["interface", "mode", "strict", "allow_ports"];
    /// Bounds of each `xdp.allow_ports` entry.
    pub const XDP_ALLOW_PORT: IntSpec = IntSpec::new("allow_ports", 1, 65_535, 22);
    /// Default `xdp.allow_ports`: SSH, so strict mode does not lock the operator out.
    pub const XDP_ALLOW_PORTS: &[u16] = &[22];
    /// Longest interface name (IFNAMSIZ - 1).
    pub const IFNAME_MAX: usize = 15;
}

/// Fields of each entry of `functions:`.
pub mod function {
    use super::*;

    /// Every key accepted in a function.
    pub const FIELDS: &[&str] = &[
        "id",
        "memory_limit_mb",
        "trigger_port",
        "handler_path",
        "timeout_ms",
        "environment",
        "concurrency",
        "target_utilization",
        "min_instances",
        "max_instances",
        "idle_timeout_ms",
        "stable_window_ms",
        "panic_window_pct",
        "egress",
        "handshake_timeout_ms",
        "warmup_requests",
        "queue_size",
    ];
    /// Longest function id.
    pub const ID_MAX_LEN: usize = 63;
    /// Prefix of environment variables aetherd reserves.
    pub const RESERVED_ENV_PREFIX: &str = "AETHER_";
    /// Instance memory limit, MiB.
    pub const MEMORY_LIMIT_MB: IntSpec = IntSpec::new("memory_limit_mb", 1, 16_384, 128);
    /// Trigger port (required).
    pub const TRIGGER_PORT: IntSpec = IntSpec::required("trigger_port", 1, 65_535);
    /// Request deadline, ms.
    pub const TIMEOUT_MS: IntSpec = IntSpec::new("timeout_ms", 1, 900_000, 30_000);
    /// In-flight requests per instance.
    pub const CONCURRENCY: IntSpec = IntSpec::new("concurrency", 1, 10_000, 1);
    /// Autoscaler target as a fraction of `concurrency`.
    pub const TARGET_UTILIZATION: FloatSpec = FloatSpec {
        name: "target_utilization",
        min: 0.0,
        min_inclusive: false,
        max: 1.0,
        default: 0.7,
    };
    /// Floor of the instance count.
    pub const MIN_INSTANCES: IntSpec = IntSpec::new("min_instances", 0, 1024, 0);
    /// Ceiling of the instance count.
    pub const MAX_INSTANCES: IntSpec = IntSpec::new("max_instances", 1, 1024, 16);
    /// Idle time before an instance stops, ms.
    pub const IDLE_TIMEOUT_MS: IntSpec = IntSpec::new("idle_timeout_ms", 0, 86_400_000, 60_000);
    /// Autoscaler stable window, ms.
    pub const STABLE_WINDOW_MS: IntSpec =
        IntSpec::new("stable_window_ms", 1_000, 3_600_000, 60_000);
    /// Panic window, percent of the stable window.
    pub const PANIC_WINDOW_PCT: FloatSpec = FloatSpec {
        name: "panic_window_pct",
        min: 1.0,
        min_inclusive: true,
        max: 100.0,
        default: 10.0,
    };
    /// Default of `egress`.
    pub const EGRESS: bool = true;
    /// `READY` deadline, ms.
    pub const HANDSHAKE_TIMEOUT_MS: IntSpec =
        IntSpec::new("handshake_timeout_ms", 1, 600_000, 10_000);
    /// Requests before the snapshot.
    pub const WARMUP_REQUESTS: IntSpec = IntSpec::new("warmup_requests", 0, 100_000, 0);
    /// Waiting requests per function.
    pub const QUEUE_SIZE: IntSpec = IntSpec::new("queue_size", 0, 1 << 20, 1024);
}

fn int_row(section: &str, spec: &IntSpec, ty: &str, doc: &str) -> String {
    let default = match spec.default {
        Some(d) => format!("`{d}`"),
        None => "**required**".to_owned(),
    };
    format!(
        "| `{section}{}` | {ty} | `{}` | {default} | {doc} |",
        spec.name,
        spec.range_text()
    )
}

fn float_row(section: &str, spec: &FloatSpec, doc: &str) -> String {
    format!(
        "| `{section}{}` | float | `{}` | `{}` | {doc} |",
        spec.name,
        spec.range_text(),
        spec.default
    )
}

fn row(name: &str, ty: &str, range: &str, default: &str, doc: &str) -> String {
    format!("| `{name}` | {ty} | {range} | {default} | {doc} |")
}

/// The field reference as a Markdown table (the one in the crate docs).
pub fn reference_table() -> String {
    use function as f;
    use orchestrator as o;
    let oo = "orchestrator.";
    let ff = "functions[].";
    let lines = [
        "| field | type | range | default | meaning |".to_owned(),
        "|---|---|---|---|---|".to_owned(),
        row("orchestrator", "mapping", "—", "all defaults", "settings of aetherd itself"),
        int_row(oo, &o::SHM_BUFFER_SIZE, "integer (bytes)", "bytes of each shared-memory segment"),
        int_row(oo, &o::WARM_POOL_SIZE, "integer", "instances kept restored and frozen; only with `aetherctl up --warm-pool` (the original's example value)"),
        int_row(oo, &o::RESTORE_TIMEOUT_MS, "integer (ms)", "a CRIU restore slower than this is killed, counted (`aether_restore_failures_total{reason=\"over_budget\"}`) and logged with its measured time; the instance is spawned instead (the original's example says 15; restores measure 15–100 ms on our 2-core machines, see Benchmarks)"),
        row("orchestrator.snapshot_dir", "path", "—", &format!("`{}`", o::SNAPSHOT_DIR), "CRIU images"),
        row("orchestrator.cores", "`all`, integer, or list of integers", &format!("count `{}`, ids `{}`, unique", o::CORES_COUNT.range_text(), o::CORE_ID.range_text()), "`all`", "CPUs that get an executor: all allowed ones, the first N allowed ones, or exactly these ids"),
        row("orchestrator.metrics_addr", "`ip:port`", "port 0 = any free port", &format!("`{}`", o::METRICS_ADDR), "Prometheus endpoint"),
        row("orchestrator.listen_addr", "IP address", "—", &format!("`{}`", o::LISTEN_ADDR), "address trigger ports are bound on"),
        row("orchestrator.state_dir", "path", "—", &format!("`{}`", o::STATE_DIR), "pidfile, control segment"),
        row("orchestrator.log_dir", "path", "—", &format!("`{}`", o::LOG_DIR), "aetherd's and instances' logs"),
        int_row(oo, &o::DRAIN_TIMEOUT_MS, "integer (ms)", "shutdown waits this long for in-flight requests"),
        row("orchestrator.xdp", "mapping", "—", "absent (no XDP)", "attach the XDP program"),
        row("orchestrator.xdp.interface", "string", &format!("1..={} chars", o::IFNAME_MAX), "**required** in `xdp`", "interface to attach to"),
        row("orchestrator.xdp.mode", "`auto`, `native` or `generic`", "—", "`auto`", "driver or skb mode; `auto` lets the kernel choose"),
        row("orchestrator.xdp.strict", "boolean", "—", "`false`", "drop packets to ports of unknown or disabled functions"),
        row("orchestrator.xdp.allow_ports", "list of integers", &format!("each `{}`, unique; `[]` allows none", o::XDP_ALLOW_PORT.range_text()), "`[22]`", "ports that always pass (SSH by default, so strict mode cannot lock you out); a function's port takes precedence while it is deployed"),
        row("functions", "sequence of mappings", "—", "`[]` (warning)", "the functions; none is valid, for a later `aetherctl deploy`"),
        row("functions[].id", "string", &format!("1..={} of `[a-zA-Z0-9_-]`, unique", f::ID_MAX_LEN), "**required**", "function id (cgroup, log and metric names)"),
        int_row(ff, &f::MEMORY_LIMIT_MB, "integer (MiB)", "memory limit of each instance's cgroup"),
        int_row(ff, &f::TRIGGER_PORT, "integer", "port clients call; unique, not the metrics port"),
        row("functions[].handler_path", "path", "existing file, executable unless `.py`", "**required**", "relative paths are resolved against the config file's directory; `.py` runs as `python3 PATH`"),
        int_row(ff, &f::TIMEOUT_MS, "integer (ms)", "request deadline, then 504"),
        row("functions[].environment", "mapping of string to scalar", "no `AETHER_*` keys", "`{}`", "extra environment; values kept exactly as written (`0755` stays `0755`)"),
        int_row(ff, &f::CONCURRENCY, "integer", "requests in flight on one instance; 1 suits single-threaded handlers like the quickstart's `http.server`; raise it for async or threaded handlers"),
        float_row(ff, &f::TARGET_UTILIZATION, "autoscaler aims for this fraction of `concurrency`"),
        int_row(ff, &f::MIN_INSTANCES, "integer", "instances kept when idle (0 = scale to zero)"),
        int_row(ff, &f::MAX_INSTANCES, "integer", "most instances; must be ≥ `min_instances`"),
        int_row(ff, &f::IDLE_TIMEOUT_MS, "integer (ms)", "an idle instance stops after this"),
        int_row(ff, &f::STABLE_WINDOW_MS, "integer (ms)", "autoscaler averaging window"),
        float_row(ff, &f::PANIC_WINDOW_PCT, "panic window, percent of the stable window"),
        row("functions[].egress", "boolean", "—", &format!("`{}`", f::EGRESS), "outbound network through aetherd's bridge with NAT"),
        int_row(ff, &f::HANDSHAKE_TIMEOUT_MS, "integer (ms)", "time a new instance has to send `READY`"),
        int_row(ff, &f::WARMUP_REQUESTS, "integer", "requests sent to the first instance before its snapshot"),
        int_row(ff, &f::QUEUE_SIZE, "integer", "requests that may wait for an instance; beyond it 503"),
    ];
    let mut out = String::new();
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    out
}
