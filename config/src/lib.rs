//! Aetherless configuration: the original project's schema, plus the fields
//! later features need, loaded strictly and reported precisely.
//!
//! ```no_run
//! match config::load_file("examples/hello.yaml") {
//!     Ok(cfg) => println!("{} function(s)", cfg.functions.len()),
//!     // One line per error: `hello.yaml:5:19: functions[0].trigger_port: 70000 is out of range 1..=65535`
//!     Err(errors) => eprintln!("{errors}"),
//! }
//! ```
//!
//! # The file
//!
//! ```yaml
//! orchestrator:                 # optional, every field optional
//!   shm_buffer_size: 4194304
//!   warm_pool_size: 10
//!   restore_timeout_ms: 15
//!   snapshot_dir: /dev/shm/aetherless
//! functions:
//!   - id: hello-api             # required
//!     memory_limit_mb: 128
//!     trigger_port: 8080        # required
//!     handler_path: hello.py    # required; relative to this file's directory
//!     timeout_ms: 30000
//!     environment:
//!       KEY: "value"
//! ```
//!
//! # Field reference
//!
//! | field | type | range | default | meaning |
//! |---|---|---|---|---|
//! | `orchestrator` | mapping | — | all defaults | settings of aetherd itself |
//! | `orchestrator.shm_buffer_size` | integer (bytes) | `4096..=1073741824` | `4194304` | bytes of each shared-memory segment |
//! | `orchestrator.warm_pool_size` | integer | `0..=1024` | `10` | instances kept restored and frozen; only with `aetherctl up --warm-pool` (the original's example value) |
//! | `orchestrator.restore_timeout_ms` | integer (ms) | `1..=60000` | `100` | a CRIU restore slower than this is killed, counted (`aether_restore_failures_total{reason="over_budget"}`) and logged with its measured time; the instance is spawned instead (the original's example says 15; restores measure 15–100 ms on our 2-core machines, see Benchmarks) |
//! | `orchestrator.snapshot_dir` | path | — | `/dev/shm/aetherless` | CRIU images |
//! | `orchestrator.cores` | `all`, integer, or list of integers | count `1..=1024`, ids `0..=4095`, unique | `all` | CPUs that get an executor: all allowed ones, the first N allowed ones, or exactly these ids |
//! | `orchestrator.metrics_addr` | `ip:port` | port 0 = any free port | `127.0.0.1:9090` | Prometheus endpoint |
//! | `orchestrator.listen_addr` | IP address | — | `0.0.0.0` | address trigger ports are bound on |
//! | `orchestrator.state_dir` | path | — | `/run/aetherless` | pidfile, control segment |
//! | `orchestrator.log_dir` | path | — | `/var/log/aetherless` | aetherd's and instances' logs |
//! | `orchestrator.drain_timeout_ms` | integer (ms) | `0..=600000` | `10000` | shutdown waits this long for in-flight requests |
//! | `orchestrator.xdp` | mapping | — | absent (no XDP) | attach the XDP program |
//! | `orchestrator.xdp.interface` | string | 1..=15 chars | **required** in `xdp` | interface to attach to |
//! | `orchestrator.xdp.mode` | `auto`, `native` or `generic` | — | `auto` | driver or skb mode; `auto` lets the kernel choose |
//! | `orchestrator.xdp.strict` | boolean | — | `false` | drop packets to ports of unknown or disabled functions |
//! | `orchestrator.xdp.allow_ports` | list of integers | each `1..=65535`, unique; `[]` allows none | `[22]` | ports that always pass (SSH by default, so strict mode cannot lock you out); a function's port takes precedence while it is deployed |
//! | `functions` | sequence of mappings | — | `[]` (warning) | the functions; none is valid, for a later `aetherctl deploy` |
//! | `functions[].id` | string | 1..=63 of `[a-zA-Z0-9_-]`, unique | **required** | function id (cgroup, log and metric names) |
//! | `functions[].memory_limit_mb` | integer (MiB) | `1..=16384` | `128` | memory limit of each instance's cgroup |
//! | `functions[].trigger_port` | integer | `1..=65535` | **required** | port clients call; unique, not the metrics port |
//! | `functions[].handler_path` | path | existing file, executable unless `.py` | **required** | relative paths are resolved against the config file's directory; `.py` runs as `python3 PATH` |
//! | `functions[].timeout_ms` | integer (ms) | `1..=900000` | `30000` | request deadline, then 504 |
//! | `functions[].environment` | mapping of string to scalar | no `AETHER_*` keys | `{}` | extra environment; values kept exactly as written (`0755` stays `0755`) |
//! | `functions[].concurrency` | integer | `1..=10000` | `1` | requests in flight on one instance; 1 suits single-threaded handlers like the quickstart's `http.server`; raise it for async or threaded handlers |
//! | `functions[].target_utilization` | float | `(0, 1]` | `0.7` | autoscaler aims for this fraction of `concurrency` |
//! | `functions[].min_instances` | integer | `0..=1024` | `0` | instances kept when idle (0 = scale to zero) |
//! | `functions[].max_instances` | integer | `1..=1024` | `16` | most instances; must be ≥ `min_instances` |
//! | `functions[].idle_timeout_ms` | integer (ms) | `0..=86400000` | `60000` | an idle instance stops after this |
//! | `functions[].stable_window_ms` | integer (ms) | `1000..=3600000` | `60000` | autoscaler averaging window |
//! | `functions[].panic_window_pct` | float | `[1, 100]` | `10` | panic window, percent of the stable window |
//! | `functions[].egress` | boolean | — | `true` | outbound network through aetherd's bridge with NAT |
//! | `functions[].handshake_timeout_ms` | integer (ms) | `1..=600000` | `10000` | time a new instance has to send `READY` |
//! | `functions[].warmup_requests` | integer | `0..=100000` | `0` | requests sent to the first instance before its snapshot |
//! | `functions[].queue_size` | integer | `0..=1048576` | `1024` | requests that may wait for an instance; beyond it 503 |
//!
//! Choices worth knowing:
//! - **Required** are `id`, `trigger_port` and `handler_path`: a function
//!   cannot run without them. `memory_limit_mb` (128) and `timeout_ms`
//!   (30000) have defaults, though the original's quickstart sets both.
//! - **Relative paths** (`handler_path`, `snapshot_dir`, `state_dir`,
//!   `log_dir`) are resolved against the directory of the configuration file
//!   ([`load_file`]) or the `base_dir` given to [`load_str`], so
//!   `handler_path: hello.py` beside `hello.yaml` works from any working
//!   directory. [`Function::handler_path`] holds the resolved path.
//! - **Handlers** are checked when the file is loaded: the file must exist
//!   and be a regular file; a `.py` file runs as `python3 PATH` and need not be
//!   executable; anything else needs an execute bit (a warning if it starts
//!   with neither `#!` nor an ELF header). See [`Function::command`].
//! - **`concurrency` defaults to 1**: the reference handler is Python's
//!   single-threaded `http.server`, which serves one request at a time; more in
//!   flight would only wait in its socket backlog, invisible to the gateway's
//!   deadline queue and to the autoscaler. Async or threaded handlers (Node,
//!   Go, `ThreadingHTTPServer`) should raise it.
//! - **`warm_pool_size`** keeps the original's example value, 10, as default;
//!   the pool exists only with `aetherctl up --warm-pool`.
//! - **`restore_timeout_ms`** defaults to 100, not the original's example 15:
//!   restores measured on our 2-core machines take 15–100 ms (a loaded
//!   machine is at the top), and a timeout kills the restore (the instance
//!   is then spawned). Set 15 to hold aetherd to the original's promise.
//! - **`environment`** values may be any scalar and are kept exactly as
//!   written (`MODE: 0755` gives `"0755"`, `DEBUG: true` gives `"true"`).
//!   Names starting `AETHER_` are reserved for the variables aetherd sets.
//! - **Empty `functions`** (or none) is valid, with a warning: aetherd can start
//!   and receive functions later through `aetherctl deploy`.
//!
//! # Strictness and errors
//!
//! Loading collects every error, in source order, each naming file, line,
//! column and field path ([`ConfigError`]): unknown fields (with the nearest
//! valid name: `unknown field 'trigger_prot'; did you mean 'trigger_port'?`),
//! wrong types (naming the expected type), out-of-range values, missing
//! required fields, duplicate keys, duplicate function ids and trigger ports
//! (naming the first location too), a trigger port equal to the metrics port,
//! `min_instances > max_instances`, and missing or non-executable handlers.
//!
//! YAML is read with `saphyr-parser` (maintained; `serde_yaml` is archived)
//! into a tree that keeps each node's position (the private `yaml` module),
//! then decoded by hand: a serde deserializer stops at the first error and
//! loses positions of valid-but-wrong values. Scalars follow the YAML 1.2
//! core schema (`yes` is a string, not a boolean; quoted numbers are strings).

mod decode;
mod diff;
mod error;
mod model;
pub mod runtime;
pub mod schema;
mod yaml;

use std::path::Path;

pub use diff::{ConfigDiff, FunctionUpdate};
pub use error::{ConfigError, ConfigErrors, ConfigWarning, ErrorKind, WarningKind};
pub use model::{Config, Cores, Function, Orchestrator, Xdp, XdpMode};

/// A configuration that loaded, with the warnings about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Legal but suspicious things (no functions, no python3 on PATH, ...).
    pub warnings: Vec<ConfigWarning>,
}

/// Reads, parses and checks the file at `path`.
///
/// Relative paths inside it are resolved against the file's directory.
///
/// # Errors
/// Every problem found, in source order (an unreadable file is one error with
/// line and column 0).
pub fn load_file(path: impl AsRef<Path>) -> Result<Config, ConfigErrors> {
    load_file_with_warnings(path).map(|l| l.config)
}

/// Like [`load_file`], also returning the warnings.
///
/// # Errors
/// As [`load_file`].
pub fn load_file_with_warnings(path: impl AsRef<Path>) -> Result<Loaded, ConfigErrors> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let io_error = |e: std::io::Error| {
        ConfigErrors(vec![ConfigError {
            file: name.clone(),
            line: 0,
            column: 0,
            field_path: String::new(),
            kind: ErrorKind::Io {
                message: e.to_string(),
            },
        }])
    };
    let text = std::fs::read_to_string(path).map_err(io_error)?;
    let absolute = std::path::absolute(path).map_err(io_error)?;
    let base_dir = absolute.parent().unwrap_or(Path::new("/"));
    load_str_with_warnings(&text, &name, base_dir)
}

/// Parses and checks `text`, naming it `source_name` in errors; relative paths
/// are resolved against `base_dir`, which should be absolute.
///
/// # Errors
/// Every problem found, in source order.
pub fn load_str(text: &str, source_name: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    load_str_with_warnings(text, source_name, base_dir).map(|l| l.config)
}

/// Like [`load_str`], also returning the warnings.
///
/// # Errors
/// As [`load_str`].
pub fn load_str_with_warnings(
    text: &str,
    source_name: &str,
    base_dir: &Path,
) -> Result<Loaded, ConfigErrors> {
    let outcome = decode::decode_str(text, source_name, base_dir);
    if outcome.errors.is_empty() {
        Ok(Loaded {
            config: outcome.config,
            warnings: outcome.warnings,
        })
    } else {
        Err(ConfigErrors(outcome.errors))
    }
}

#[cfg(test)]
mod tests {
    /// The table in the crate docs is the one the schema constants render;
    /// run with `--nocapture` to print it after changing a constant.
    #[test]
    fn docs_table_matches_schema() {
        let table = crate::schema::reference_table();
        println!("{table}");
        let docs: String = include_str!("lib.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! |"))
            .map(|l| format!("|{l}\n"))
            .collect();
        assert_eq!(docs, table);
    }

    #[test]
    fn every_schema_field_is_in_the_table() {
        let table = crate::schema::reference_table();
        for f in crate::schema::orchestrator::FIELDS {
            assert!(table.contains(&format!("`orchestrator.{f}`")), "{f}");
        }
        for f in crate::schema::orchestrator::XDP_FIELDS {
            assert!(table.contains(&format!("`orchestrator.xdp.{f}`")), "{f}");
        }
        for f in crate::schema::function::FIELDS {
            assert!(table.contains(&format!("`functions[].{f}`")), "{f}");
        }
    }
}
