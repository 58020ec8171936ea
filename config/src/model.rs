//! The typed configuration, as produced by the loader.
//!
//! Every value here has been range-checked; paths are resolved (absolute).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// A whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Settings of aetherd itself (`orchestrator:`; all optional).
    pub orchestrator: Orchestrator,
    /// The functions, in file order (`functions:`).
    pub functions: Vec<Function>,
}

impl Config {
    /// The function with this id.
    pub fn function(&self, id: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.id == id)
    }
}

/// Settings of aetherd itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Orchestrator {
    /// Bytes of each shared-memory segment.
    pub shm_buffer_size: u64,
    /// Instances kept restored and frozen when `aetherctl up --warm-pool` is given.
    pub warm_pool_size: u32,
    /// A CRIU restore slower than this is killed and reported.
    pub restore_timeout_ms: u64,
    /// Where CRIU images live.
    pub snapshot_dir: PathBuf,
    /// Which CPUs get an executor.
    pub cores: Cores,
    /// Prometheus endpoint.
    pub metrics_addr: SocketAddr,
    /// Address the trigger ports are bound on.
    pub listen_addr: IpAddr,
    /// Control segment, pidfile and other runtime state.
    pub state_dir: PathBuf,
    /// Per-instance stdout/stderr logs and aetherd's own log.
    pub log_dir: PathBuf,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout_ms: u64,
    /// XDP program attachment; `None` runs without XDP.
    pub xdp: Option<Xdp>,
}

impl Orchestrator {
    /// `restore_timeout_ms` as a duration.
    pub fn restore_timeout(&self) -> Duration {
        Duration::from_millis(self.restore_timeout_ms)
    }

    /// `drain_timeout_ms` as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

impl Default for Orchestrator {
    fn default() -> Self {
        use crate::schema::orchestrator as s;
        Orchestrator {
            shm_buffer_size: s::SHM_BUFFER_SIZE.default_u64(),
            warm_pool_size: s::WARM_POOL_SIZE.default_u32(),
            restore_timeout_ms: s::RESTORE_TIMEOUT_MS.default_u64(),
            snapshot_dir: PathBuf::from(s::SNAPSHOT_DIR),
            cores: Cores::All,
            metrics_addr: s::METRICS_ADDR,
            listen_addr: s::LISTEN_ADDR,
            state_dir: PathBuf::from(s::STATE_DIR),
            log_dir: PathBuf::from(s::LOG_DIR),
            drain_timeout_ms: s::DRAIN_TIMEOUT_MS.default_u64(),
            xdp: None,
        }
    }
}

/// Which CPUs aetherd runs executors on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Cores {
    /// Every CPU in aetherd's allowed set (`cores: all`, or absent).
    #[default]
    All,
    /// The first `n` CPUs of the allowed set (`cores: 2`).
    Count(u32),
    /// Exactly these CPU ids, unique, in the given order (`cores: [0, 2]`).
    List(Vec<u32>),
}

/// Serializes to the YAML form it was written in: `"all"`, `2` or `[0, 2]`.
impl Serialize for Cores {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Cores::All => serializer.serialize_str("all"),
            Cores::Count(n) => serializer.serialize_u32(*n),
            Cores::List(ids) => ids.serialize(serializer),
        }
    }
}

/// XDP attachment settings (`orchestrator.xdp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Xdp {
    /// Network interface to attach to.
    pub interface: String,
    /// Driver (native) or generic (skb) mode.
    pub mode: XdpMode,
    /// Drop packets to ports of unknown or disabled functions.
    pub strict: bool,
    /// Ports that always pass, strict or not (default `[22]`, so strict mode
    /// does not lock the operator out of SSH). Unique, in the written order.
    pub allow_ports: Vec<u16>,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native if the driver supports it, generic otherwise (the kernel decides).
    Auto,
    /// Driver mode only; attaching fails where the driver lacks XDP.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
}

/// One function: a program that serves HTTP on its trigger port.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Function {
    /// Unique id: 1 to 63 of `[a-zA-Z0-9_-]`.
    pub id: String,
    /// Memory limit of each instance's cgroup, MiB.
    pub memory_limit_mb: u32,
    /// The port clients call, unique across functions.
    pub trigger_port: u16,
    /// Absolute path of the handler (relative paths in the file are resolved
    /// against the file's directory).
    pub handler_path: PathBuf,
    /// Deadline of one request (504 after it).
    pub timeout_ms: u64,
    /// Extra environment of each instance.
    pub environment: BTreeMap<String, String>,
    /// Most requests in flight on one instance at once.
    pub concurrency: u32,
    /// Fraction of `concurrency` the autoscaler aims for.
    pub target_utilization: f64,
    /// Instances kept even when idle.
    pub min_instances: u32,
    /// Most instances at once.
    pub max_instances: u32,
    /// An instance idle this long is stopped (down to `min_instances`).
    pub idle_timeout_ms: u64,
    /// Autoscaler's averaging window.
    pub stable_window_ms: u64,
    /// Panic window as a percentage of the stable window.
    pub panic_window_pct: f64,
    /// Outbound network through the aetherd bridge.
    pub egress: bool,
    /// Time a new instance has to send `READY`.
    pub handshake_timeout_ms: u64,
    /// Requests sent to the first instance before it is snapshotted.
    pub warmup_requests: u32,
    /// Requests that may wait for an instance; more get 503.
    pub queue_size: u32,
}

impl Function {
    /// Whether the handler is a Python file, run with `python3`.
    pub fn is_python(&self) -> bool {
        self.handler_path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("py"))
    }

    /// Program and arguments that start the handler: `python3 <path>` for a
    /// `.py` file (executable or not), the path itself otherwise.
    pub fn command(&self) -> (OsString, Vec<OsString>) {
        if self.is_python() {
            (
                OsString::from("python3"),
                vec![self.handler_path.clone().into_os_string()],
            )
        } else {
            (self.handler_path.clone().into_os_string(), Vec::new())
        }
    }

    /// `timeout_ms` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// `idle_timeout_ms` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// `stable_window_ms` as a duration.
    pub fn stable_window(&self) -> Duration {
        Duration::from_millis(self.stable_window_ms)
    }

    /// The panic window: `panic_window_pct` percent of the stable window.
    pub fn panic_window(&self) -> Duration {
        self.stable_window().mul_f64(self.panic_window_pct / 100.0)
    }

    /// `handshake_timeout_ms` as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// Memory limit in bytes.
    pub fn memory_limit_bytes(&self) -> u64 {
        u64::from(self.memory_limit_mb) << 20
    }
}
