//! The control loop: answers aetherctl's requests from the control ring.
//!
//! It runs on aetherd's main thread, blocked in the ring's futex wait while
//! idle (it wakes every `SIGNAL_POLL` to notice SIGTERM). Commands that touch
//! functions are fanned out to every core over its command channel, and the
//! cores' answers are merged here; nothing on a core's request path ever
//! waits for this thread. It also owns the XDP port policy (when attached) and
//! keeps its ports in step with the deployed functions.
//!
//! A forced snapshot (`aetherctl snapshot FUNCTION`) asks the cores one after
//! the other, in core order, to dump one of their ready instances; the first
//! core that succeeds ends the round (one dump, not one per core), and when
//! every core fails the error lists each core's reason. The loop answers no
//! other command meanwhile (a dump takes tens of milliseconds; warm-up
//! requests and a slow CRIU at most `PendingSnapshot`'s bound per core).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use hdrhistogram::Histogram;
use shm_abi::channel::ControlServer;
use shm_abi::message::{
    self, Command, ErrorKind, FunctionStats, FunctionStatus, Reply, ReplyBody, Request,
    SnapshotInfo,
};

use crate::core::{CoreHandle, FunctionCoreStats};
use crate::daemon::{terminated, SIGNAL_POLL};
use crate::instance::logs;
use crate::snapshot::{SnapshotState, SnapshotStatus, SnapshotStore};
use crate::steering::{self, Steering};
use crate::xdp::XdpPortPolicy;

/// State of the control loop: the deployed configuration and the cores.
#[derive(Debug)]
pub struct ControlLoop {
    config: config::Config,
    cores: Vec<CoreHandle>,
    started: Instant,
    xdp: Option<XdpPortPolicy>,
    /// sk_reuseport steering on or off (see [`crate::steering`]).
    steering_mode: SteeringMode,
    /// Each deployed function's selector, with the port whose group it serves.
    steering: HashMap<String, (u16, Steering)>,
    /// CRIU images of every function.
    snapshots: Arc<SnapshotStore>,
}

/// Whether listeners get an sk_reuseport selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SteeringMode {
    /// Try loading a selector per function.
    On,
    /// Turned off by `AETHER_REUSEPORT_STEERING`, or the program did not load
    /// once (warned then; not retried).
    Off,
}

impl ControlLoop {
    pub fn new(
        config: config::Config,
        cores: Vec<CoreHandle>,
        started: Instant,
        snapshots: Arc<SnapshotStore>,
    ) -> Self {
        ControlLoop {
            snapshots,
            config,
            cores,
            started,
            xdp: None,
            steering_mode: if steering::enabled_by_env() {
                SteeringMode::On
            } else {
                tracing::info!(
                    "{}=0: sk_reuseport steering off, the kernel's hash spreads connections",
                    steering::STEERING_ENV
                );
                SteeringMode::Off
            },
            steering: HashMap::new(),
        }
    }

    /// The selector for `f`'s listener group: the current one when the
    /// function keeps its port (a replacement joins the same group), a newly
    /// loaded one otherwise; `None` when steering is off.
    fn steering_for(&mut self, f: &config::Function) -> Option<Steering> {
        if self.steering_mode == SteeringMode::Off {
            return None;
        }
        if let Some((port, s)) = self.steering.get(&f.id) {
            if *port == f.trigger_port {
                return Some(s.clone());
            }
        }
        match Steering::load() {
            Ok(s) => {
                self.steering
                    .insert(f.id.clone(), (f.trigger_port, s.clone()));
                Some(s)
            }
            Err(e) => {
                tracing::warn!(
                    "sk_reuseport steering unavailable, the kernel's hash spreads connections \
                     over the cores: {e}"
                );
                self.steering_mode = SteeringMode::Off;
                self.steering.clear();
                None
            }
        }
    }

    /// Hand over the attached XDP policy: from now on deploy and undeploy
    /// update its ports, and shutdown detaches it.
    pub fn set_xdp(&mut self, xdp: Option<XdpPortPolicy>) {
        self.xdp = xdp;
    }

    /// Bring the XDP ports map in line with the deployed functions.
    fn sync_xdp(&self) -> Result<(), String> {
        match &self.xdp {
            Some(xdp) => xdp.sync(&self.config.functions).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// Deploy the start-up configuration's functions on every core; returns a
    /// one-line summary for the log.
    pub fn deploy_initial(&mut self, cfg: &config::Config) -> String {
        let mut summary = Vec::new();
        for f in &cfg.functions {
            match self.apply_function(f) {
                Ok(()) => summary.push(format!("{} on :{}", f.id, f.trigger_port)),
                Err(e) => summary.push(format!("{} FAILED: {e}", f.id)),
            }
        }
        if let Err(e) = self.sync_xdp() {
            summary.push(format!("XDP FAILED: {e}"));
        }
        summary.join(", ")
    }

    /// Serve requests until Shutdown or a termination signal; returns the drain deadline to use.
    pub fn serve(&mut self, mut server: ControlServer, terminate: &AtomicBool) -> Duration {
        let default_drain = self.config.orchestrator.drain_timeout();
        loop {
            if terminated(terminate) {
                return default_drain;
            }
            let bytes = match server.recv(Some(SIGNAL_POLL)) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!("control ring: {e}");
                    continue;
                }
            };
            // An undecodable request gets no reply: the client's timeout covers it
            // (see shm_abi::message).
            let Request { id, command } = match message::decode_request(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("dropping an invalid control request: {e}");
                    continue;
                }
            };
            let (body, stop) = self.handle(command);
            let reply = Reply { id, body };
            match message::encode_reply(&reply) {
                Ok(bytes) => {
                    if let Err(e) = server.reply(&bytes) {
                        tracing::warn!("cannot send reply {id}: {e}");
                    }
                }
                Err(e) => tracing::error!("cannot encode reply {id}: {e}"),
            }
            if let Some(drain) = stop {
                return drain;
            }
        }
    }

    /// Answer one command; `Some(drain)` when aetherd should stop after replying.
    fn handle(&mut self, command: Command) -> (ReplyBody, Option<Duration>) {
        match command {
            Command::Ping => (
                ReplyBody::Pong {
                    pid: std::process::id(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    cores: self
                        .cores
                        .iter()
                        .map(|c| u32::try_from(c.cpu()).unwrap_or(u32::MAX))
                        .collect(),
                },
                None,
            ),
            Command::Deploy {
                config_yaml,
                source_path,
                dry_run,
            } => (self.deploy(&config_yaml, &source_path, dry_run), None),
            Command::Undeploy { function_id } => (self.undeploy(&function_id), None),
            Command::List => (
                ReplyBody::List {
                    functions: self.list(),
                },
                None,
            ),
            Command::Stats => (self.stats(), None),
            Command::Logs {
                function_id,
                tail_lines,
            } => (self.logs(&function_id, tail_lines), None),
            Command::Snapshot { function_id } => (self.snapshot(&function_id), None),
            Command::Shutdown { drain_deadline_ms } => (
                ReplyBody::ShuttingDown,
                Some(Duration::from_millis(drain_deadline_ms)),
            ),
        }
    }

    fn deploy(&mut self, yaml: &str, source_path: &str, dry_run: bool) -> ReplyBody {
        let source = Path::new(source_path);
        let base_dir = source.parent().unwrap_or(Path::new("/"));
        let new = match config::load_str(yaml, source_path, base_dir) {
            Ok(c) => c,
            Err(errors) => return error(ErrorKind::InvalidConfig, errors.to_string()),
        };
        // Ports must stay unique across what runs and what arrives.
        for f in &new.functions {
            if let Some(other) = self
                .config
                .functions
                .iter()
                .find(|o| o.trigger_port == f.trigger_port && o.id != f.id)
            {
                return error(
                    ErrorKind::InvalidConfig,
                    format!(
                        "{source_path}: function '{}' wants trigger_port {}, which function '{}' already uses",
                        f.id, f.trigger_port, other.id
                    ),
                );
            }
        }
        // Deploy adds or updates; functions absent from the file keep running
        // (remove them with `aetherctl undeploy`).
        let mut merged = self.config.clone();
        for f in &new.functions {
            match merged.functions.iter_mut().find(|o| o.id == f.id) {
                Some(slot) => *slot = f.clone(),
                None => merged.functions.push(f.clone()),
            }
        }
        let diff = config::Config::diff(&self.config, &merged);
        let updated: Vec<String> = diff.updated.iter().map(|u| u.id.clone()).collect();
        if !dry_run {
            let mut failures = Vec::new();
            for id in diff.added.iter().chain(updated.iter()) {
                if let Some(f) = merged.function(id).cloned() {
                    if let Err(e) = self.apply_function(&f) {
                        failures.push(format!("{id}: {e}"));
                    }
                }
            }
            if let Err(e) = self.sync_xdp() {
                failures.push(e);
            }
            if !failures.is_empty() {
                return error(ErrorKind::Internal, failures.join("; "));
            }
        }
        ReplyBody::Deployed {
            added: diff.added,
            updated,
            removed: Vec::new(),
            unchanged: diff.unchanged,
        }
    }

    /// Start or replace one function on every core, recording it in the deployed config.
    fn apply_function(&mut self, f: &config::Function) -> Result<(), String> {
        let steering = self.steering_for(f);
        let pending: Vec<_> = self
            .cores
            .iter()
            .map(|core| (core.cpu(), core.deploy(f.clone(), steering.clone())))
            .collect();
        let mut errors = Vec::new();
        for (cpu, p) in pending {
            if let Err(e) = p.wait() {
                errors.push(format!("cpu {cpu}: {e}"));
            }
        }
        match self.config.functions.iter_mut().find(|o| o.id == f.id) {
            Some(slot) => *slot = f.clone(),
            None => self.config.functions.push(f.clone()),
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn undeploy(&mut self, id: &str) -> ReplyBody {
        if self.config.function(id).is_none() {
            return not_deployed(id);
        }
        for core in &self.cores {
            core.undeploy(id);
        }
        self.steering.remove(id);
        self.config.functions.retain(|f| f.id != id);
        if let Err(e) = self.sync_xdp() {
            return error(ErrorKind::Internal, format!("{id} undeployed, but {e}"));
        }
        ReplyBody::Deployed {
            added: Vec::new(),
            updated: Vec::new(),
            removed: vec![id.to_string()],
            unchanged: Vec::new(),
        }
    }

    fn list(&self) -> Vec<FunctionStatus> {
        let mut out: Vec<FunctionStatus> = self
            .config
            .functions
            .iter()
            .map(|f| FunctionStatus {
                id: f.id.clone(),
                trigger_port: f.trigger_port,
                instances: Vec::new(),
                snapshot: snapshot_info(&self.snapshots.status(&f.id)),
            })
            .collect();
        for core in &self.cores {
            for (function, instances) in core.list() {
                if let Some(status) = out.iter_mut().find(|s| s.id == function) {
                    status.instances.extend(instances);
                }
            }
        }
        out
    }

    /// Dump `id` now: the cores are asked one after the other until one
    /// succeeds (see the module docs).
    fn snapshot(&self, id: &str) -> ReplyBody {
        if self.config.function(id).is_none() {
            return not_deployed(id);
        }
        let current = self.snapshots.status(id);
        if current.state == SnapshotState::Unavailable {
            return error(
                ErrorKind::Internal,
                format!(
                    "cannot snapshot '{id}': snapshots are unavailable: {}",
                    current.error.as_deref().unwrap_or("no reason recorded")
                ),
            );
        }
        let mut failures = Vec::new();
        for core in &self.cores {
            let cpu = core.cpu();
            let outcome = match core.snapshot(id) {
                Some(pending) => pending.wait(),
                None => Err("core stopped".to_string()),
            };
            match outcome {
                Ok(status) => {
                    tracing::info!(
                        "forced snapshot of {id} on cpu {cpu}: {} bytes in {:.1} ms, {}",
                        status.bytes,
                        status.dump_ms,
                        status.images_dir.display()
                    );
                    return ReplyBody::Snapshot {
                        function_id: id.to_string(),
                        snapshot: Box::new(snapshot_info(&status)),
                    };
                }
                Err(e) => failures.push(format!("cpu {cpu}: {e}")),
            }
        }
        if failures.is_empty() {
            failures.push("aetherd runs no executor core".to_string());
        }
        tracing::warn!("forced snapshot of {id} failed: {}", failures.join("; "));
        error(
            ErrorKind::Internal,
            format!(
                "no core could snapshot '{id}' ({}); see `aetherctl logs {id}` and aetherd.log",
                failures.join("; ")
            ),
        )
    }

    fn stats(&self) -> ReplyBody {
        let mut merged: Vec<(String, FunctionCoreStats)> = self
            .config
            .functions
            .iter()
            .map(|f| (f.id.clone(), FunctionCoreStats::default()))
            .collect();
        for core in &self.cores {
            for (function, stats) in core.stats() {
                if let Some((_, m)) = merged.iter_mut().find(|(id, _)| *id == function) {
                    m.merge(&stats);
                }
            }
        }
        let functions = merged
            .into_iter()
            .map(|(id, s)| s.into_report(id))
            .collect();
        let uptime_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        ReplyBody::Stats {
            functions,
            uptime_ms,
        }
    }

    fn logs(&self, id: &str, lines: u32) -> ReplyBody {
        if self.config.function(id).is_none() {
            return not_deployed(id);
        }
        match logs::tail(&self.config.orchestrator.log_dir, id, lines as usize) {
            Ok(lines) => ReplyBody::Logs {
                lines: lines
                    .into_iter()
                    .map(|l| format!("[{}] {}", l.instance, l.line))
                    .collect(),
            },
            Err(e) => error(ErrorKind::Internal, e.to_string()),
        }
    }

    /// Drain every core until `deadline`, stop all handlers, join the executors.
    pub fn shutdown(self, deadline: Instant) {
        for core in &self.cores {
            core.begin_shutdown(deadline);
        }
        for core in self.cores {
            core.join();
        }
    }
}

fn error(kind: ErrorKind, message: String) -> ReplyBody {
    ReplyBody::Error { kind, message }
}

/// The answer to a command naming a function that is not deployed.
fn not_deployed(id: &str) -> ReplyBody {
    error(
        ErrorKind::NotFound,
        format!("no function '{id}' is deployed; see `aetherctl list`"),
    )
}

/// A snapshot's status as the control protocol reports it.
fn snapshot_info(status: &SnapshotStatus) -> SnapshotInfo {
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    SnapshotInfo {
        state: status.state.as_str().to_string(),
        identity: status.identity.clone(),
        images_dir: status.images_dir.display().to_string(),
        bytes: status.bytes,
        age_ms: SnapshotStore::age(status).map_or(0, millis),
        dump_ms: status.dump_ms,
        error: status.error.clone().unwrap_or_default(),
        created_unix_ms: status
            .created
            .and_then(|c| c.duration_since(UNIX_EPOCH).ok())
            .map_or(0, millis),
    }
}

/// Percentiles of a latency histogram in microseconds (recorded in µs).
pub(crate) fn percentiles(h: &Histogram<u64>) -> (f64, f64, f64, f64) {
    if h.is_empty() {
        return (0.0, 0.0, 0.0, 0.0);
    }
    let q = |p: f64| h.value_at_quantile(p) as f64;
    (q(0.5), q(0.99), q(0.999), h.max() as f64)
}

impl FunctionCoreStats {
    fn into_report(self, id: String) -> FunctionStats {
        let (p50, p99, p999, max) = percentiles(&self.latency_us);
        FunctionStats {
            id,
            requests_total: self.by_status.iter().map(|(_, n)| n).sum(),
            by_status: self.by_status,
            in_flight: self.in_flight,
            queue_depth: self.queue_depth,
            latency_p50_us: p50,
            latency_p99_us: p99,
            latency_p999_us: p999,
            latency_max_us: max,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use crate::criu::Criu;
    use std::path::PathBuf;
    use std::time::SystemTime;

    /// A control loop without executor cores, `hello` deployed in its config.
    fn loop_with_hello(snapshots: SnapshotStore) -> ControlLoop {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let yaml = format!(
            "functions:\n  - id: hello\n    trigger_port: 18080\n    handler_path: {}\n",
            examples.join("hello.py").display()
        );
        let cfg = config::load_str(&yaml, "test.yaml", &examples).unwrap();
        ControlLoop::new(cfg, Vec::new(), Instant::now(), Arc::new(snapshots))
    }

    fn error_of(body: ReplyBody) -> (ErrorKind, String) {
        match body {
            ReplyBody::Error { kind, message } => (kind, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn snapshot_of_an_unknown_function_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut cl = loop_with_hello(SnapshotStore::new(dir.path(), Ok(Criu::default())));
        let (body, stop) = cl.handle(Command::Snapshot {
            function_id: "nosuch".into(),
        });
        assert!(stop.is_none());
        let (kind, message) = error_of(body);
        assert_eq!(kind, ErrorKind::NotFound);
        assert!(message.contains("'nosuch'"), "{message}");
    }

    #[test]
    fn snapshot_without_criu_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path(), Err("CRIU not found at /nowhere/criu".into()));
        let mut cl = loop_with_hello(store);
        let f = cl.config.function("hello").cloned().unwrap();
        cl.snapshots.register(&f);
        let (kind, message) = error_of(
            cl.handle(Command::Snapshot {
                function_id: "hello".into(),
            })
            .0,
        );
        assert_eq!(kind, ErrorKind::Internal);
        assert!(message.contains("/nowhere/criu"), "{message}");
        // And list reports the same state and reason.
        let list = cl.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].snapshot.state, "unavailable");
        assert!(list[0].snapshot.error.contains("/nowhere/criu"));
        assert_eq!((list[0].snapshot.bytes, list[0].snapshot.age_ms), (0, 0));
    }

    #[test]
    fn snapshot_with_no_core_to_ask_is_an_error_not_a_success() {
        let dir = tempfile::tempdir().unwrap();
        let mut cl = loop_with_hello(SnapshotStore::new(dir.path(), Ok(Criu::default())));
        let (kind, message) = error_of(
            cl.handle(Command::Snapshot {
                function_id: "hello".into(),
            })
            .0,
        );
        assert_eq!(kind, ErrorKind::Internal);
        assert!(message.contains("no executor core"), "{message}");
    }

    #[test]
    fn every_snapshot_state_is_one_the_protocol_documents() {
        for state in [
            SnapshotState::None,
            SnapshotState::Dumping,
            SnapshotState::Ready,
            SnapshotState::Failed,
            SnapshotState::Unavailable,
        ] {
            assert!(SnapshotInfo::STATES.contains(&state.as_str()), "{state:?}");
        }
    }

    #[test]
    fn list_reports_state_age_size_and_dump_time() {
        let created = SystemTime::now() - Duration::from_millis(1_500);
        let status = SnapshotStatus {
            state: SnapshotState::Ready,
            identity: "0123456789abcdef".into(),
            images_dir: PathBuf::from("/dev/shm/aetherless/hello/0123456789abcdef"),
            bytes: 4_194_304,
            created: Some(created),
            dump_ms: 70.25,
            error: None,
        };
        let info = snapshot_info(&status);
        assert_eq!(info.state, "ready");
        assert_eq!(info.identity, "0123456789abcdef");
        assert_eq!(
            info.images_dir,
            "/dev/shm/aetherless/hello/0123456789abcdef"
        );
        assert_eq!(info.bytes, 4_194_304);
        assert!(
            (1_500..60_000).contains(&info.age_ms),
            "age {}",
            info.age_ms
        );
        assert!((info.dump_ms - 70.25).abs() < f64::EPSILON);
        assert!(info.error.is_empty());
        let since_epoch = created.duration_since(UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(u128::from(info.created_unix_ms), since_epoch);

        let none = snapshot_info(&SnapshotStatus {
            state: SnapshotState::None,
            created: None,
            bytes: 0,
            dump_ms: 0.0,
            error: None,
            ..status
        });
        assert_eq!(
            (none.state.as_str(), none.age_ms, none.created_unix_ms),
            ("none", 0, 0)
        );
    }
}
