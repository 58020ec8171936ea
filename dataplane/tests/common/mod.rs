//! Harness of the end-to-end tests: drives the real `aetherd` and
//! `aetherctl` binaries.
//!
//! A [`Daemon`] owns a temporary directory holding its YAML configuration,
//! `state_dir` and `log_dir`, so tests run in parallel without sharing
//! anything (aetherd derives its cgroup group and bridge names from the state
//! dir). Each function gets a free loopback port and the environment variable
//! `E2E_TAG=<unique tag>`, by which the harness finds every handler process
//! of this daemon in `/proc/*/environ` — to prove none is left, and to kill
//! leftovers when a test fails half-way.
//!
//! Dropping a [`Daemon`] runs `aetherctl down`; if that fails it SIGKILLs
//! aetherd (pidfile) and every tagged handler and removes their cgroups.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod http;
pub mod json;

use std::fmt::Write as _;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use json::Json;

/// The repository's `examples/` directory.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .canonicalize()
        .expect("examples/ exists beside dataplane/")
}

/// The end-to-end test handler (see its docstring for the paths it serves).
pub fn test_handler() -> PathBuf {
    examples().join("test-e2e-handler.py")
}

/// The aetherd binary cargo built for this test.
pub fn aetherd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_aetherd"))
}

/// aetherctl, expected beside aetherd in the same target directory.
///
/// `cargo test -p dataplane` builds aetherd but not aetherctl; a stale
/// aetherctl (older than a source it is built from) gets a loud warning.
pub fn aetherctl() -> PathBuf {
    static CHECKED: std::sync::Once = std::sync::Once::new();
    let ctl = aetherd().with_file_name("aetherctl");
    assert!(
        ctl.is_file(),
        "{} is missing: run `cargo build -p control` first (the end-to-end tests drive the real aetherctl)",
        ctl.display()
    );
    CHECKED.call_once(|| {
        let built = std::fs::metadata(&ctl).and_then(|m| m.modified()).ok();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let newer = ["control/src", "control/src/command", "config/src", "shm-abi/src"]
            .iter()
            .filter_map(|d| std::fs::read_dir(root.join(d)).ok())
            .flatten()
            .filter_map(|e| {
                let e = e.ok()?;
                let modified = e.metadata().ok()?.modified().ok()?;
                (Some(modified) > built).then(|| e.path())
            })
            .collect::<Vec<_>>();
        if !newer.is_empty() {
            eprintln!(
                "WARNING: {} is older than {newer:?}: run `cargo build -p control` (the tests drive that binary)",
                ctl.display()
            );
        }
    });
    ctl
}

/// True when the test may run; prints a loud SKIP line otherwise.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {test}: needs root (aetherd creates namespaces and cgroups)");
        return false;
    }
    true
}

/// True when a memory cgroup controller is mounted (v1 or v2); SKIP otherwise.
pub fn require_memory_cgroup(test: &str) -> bool {
    let v1 = Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
        || Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists();
    let v2 = [
        "/sys/fs/cgroup/cgroup.controllers",
        "/sys/fs/cgroup/unified/cgroup.controllers",
    ]
    .iter()
    .any(|p| std::fs::read_to_string(p).is_ok_and(|c| c.split_whitespace().any(|w| w == "memory")));
    if !(v1 || v2) {
        eprintln!("SKIP {test}: no memory cgroup controller (neither v1 nor v2) is mounted");
        return false;
    }
    true
}

/// A free loopback TCP port (bound, read, closed: a small race remains).
pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Outcome of one aetherctl run.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    /// Exit code; `None` when killed by a signal (or by our timeout).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for CtlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Run aetherctl with `args`; killed after `timeout` (then `code` is `None`).
pub fn run_ctl(args: &[&str], timeout: Duration) -> CtlOutput {
    let child = Command::new(aetherctl())
        .args(args)
        .env_remove("AETHER_CONFIG")
        .env_remove("AETHER_STATE_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aetherctl");
    let pid = i32::try_from(child.id()).expect("pid fits i32");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => CtlOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("waiting for aetherctl {args:?}: {e}"),
        Err(_) => {
            kill(pid, libc::SIGKILL);
            let out = rx.recv_timeout(Duration::from_secs(5));
            let (stdout, stderr) = match out {
                Ok(Ok(o)) => (
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                ),
                _ => (String::new(), String::new()),
            };
            CtlOutput {
                code: None,
                stdout,
                stderr: format!("{stderr}\n[harness: aetherctl {args:?} killed after {timeout:?}]"),
            }
        }
    }
}

/// Send `sig` to `pid` (errors ignored: the process may be gone).
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill only sends a signal; a stale pid yields ESRCH, nothing else.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // State is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Those of `pids` that are still alive.
pub fn still_alive(pids: &[i32]) -> Vec<i32> {
    pids.iter().copied().filter(|p| alive(*p)).collect()
}

/// Pids of every live process whose environment holds `NAME=value` exactly.
pub fn pids_with_env(name: &str, value: &str) -> Vec<i32> {
    let needle = format!("{name}={value}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let mut env = Vec::new();
            std::fs::File::open(format!("/proc/{pid}/environ"))
                .and_then(|mut f| f.read_to_end(&mut env))
                .is_ok()
                && env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
        })
        .filter(|pid| alive(*pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// Poll `cond` every 20 ms until true or `within` passes.
pub fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One function of a test configuration.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub id: String,
    pub handler: PathBuf,
    pub memory_limit_mb: u32,
    pub timeout_ms: u64,
    pub concurrency: u32,
    /// Extra environment (besides `E2E_TAG`).
    pub environment: Vec<(String, String)>,
    /// Port; 0 = pick a free one.
    pub port: u16,
    /// Outbound network through aetherd's bridge (off by default here: the
    /// tests are faster without the veth set-up).
    pub egress: bool,
}

impl FunctionSpec {
    /// The test handler with modest limits; a free port is picked at start.
    pub fn new(id: &str) -> FunctionSpec {
        FunctionSpec {
            id: id.to_string(),
            handler: test_handler(),
            memory_limit_mb: 128,
            timeout_ms: 5_000,
            concurrency: 1,
            environment: Vec::new(),
            port: 0,
            egress: false,
        }
    }

    pub fn handler(mut self, path: PathBuf) -> Self {
        self.handler = path;
        self
    }

    pub fn memory_limit_mb(mut self, mb: u32) -> Self {
        self.memory_limit_mb = mb;
        self
    }

    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = ms;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.environment.push((key.to_string(), value.to_string()));
        self
    }
}

/// A running (or failed-to-start) aetherd of one test, stopped on drop.
#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    dir: tempfile::TempDir,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    /// Unique value of `E2E_TAG` in every handler's environment.
    pub tag: String,
    pub functions: Vec<FunctionSpec>,
    /// stdout of the successful `up`.
    pub up_output: String,
    stopped: bool,
    /// `orchestrator.listen_addr` (127.0.0.1 unless a test changes it).
    listen_addr: String,
    /// Extra lines of the orchestrator section (indented 2 spaces), e.g. `xdp:`.
    orchestrator_extra: String,
    /// Cgroup directories of every handler seen (see `handler_pids`), removed
    /// on drop if aetherd left them behind.
    cgroups: std::sync::Mutex<std::collections::BTreeSet<PathBuf>>,
}

impl Daemon {
    /// Write the configuration and run `aetherctl up`; Err carries aetherctl's
    /// output and aetherd's log.
    pub fn start(name: &str, functions: Vec<FunctionSpec>) -> Result<Daemon, String> {
        Daemon::configure(name, functions).up()
    }

    /// Rewrite the configuration with this `listen_addr` and extra
    /// orchestrator lines (indented 2 spaces, ending in a newline).
    pub fn with_orchestrator(mut self, listen_addr: &str, extra: &str) -> Daemon {
        self.listen_addr = listen_addr.to_string();
        self.orchestrator_extra = extra.to_string();
        self.write_config(&self.config.clone(), &self.functions.clone());
        self
    }

    /// Run `aetherctl up` on the written configuration (see [`Daemon::start`]).
    pub fn up(self) -> Result<Daemon, String> {
        self.up_with(&[])
    }

    /// `aetherctl up EXTRA...` (e.g. `--xdp IFACE`) on the written configuration.
    pub fn up_with(mut self, extra: &[&str]) -> Result<Daemon, String> {
        let name = self.name.clone();
        let shown = self.config.display();
        eprintln!("[{name}] aetherctl -c {shown} up {}", extra.join(" "));
        let mut args = vec!["up", "--timeout", "20"];
        args.extend_from_slice(extra);
        let out = self.ctl_timeout(&args, Duration::from_secs(30));
        if !out.ok() {
            return Err(format!(
                "`aetherctl up` failed: {out}\n{}",
                self.log_report()
            ));
        }
        eprintln!("[{name}] {}", out.stdout.trim());
        self.up_output = out.stdout;
        self.stopped = false;
        // Records the handlers' cgroups, for clean-up if aetherd leaves them.
        self.handler_pids();
        Ok(self)
    }

    /// Write the configuration only (for tests that run `up` themselves).
    pub fn configure(name: &str, mut functions: Vec<FunctionSpec>) -> Daemon {
        // Short prefix: AETHER_SOCKET lives under the state dir and unix
        // socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("ae2e")
            .tempdir()
            .expect("temp dir");
        let tag = dir
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("ae2e")
            .to_string();
        for f in &mut functions {
            if f.port == 0 {
                f.port = free_port();
            }
        }
        let d = Daemon {
            name: name.to_string(),
            config: dir.path().join("aether.yaml"),
            state_dir: dir.path().join("state"),
            log_dir: dir.path().join("log"),
            dir,
            tag,
            functions,
            up_output: String::new(),
            // Nothing to stop until `up` ran.
            stopped: true,
            listen_addr: "127.0.0.1".to_string(),
            orchestrator_extra: String::new(),
            cgroups: std::sync::Mutex::default(),
        };
        d.write_config(&d.config.clone(), &d.functions.clone());
        d
    }

    /// The orchestrator section every file of this daemon shares.
    fn orchestrator_yaml(&self) -> String {
        format!(
            "orchestrator:\n  state_dir: {}\n  log_dir: {}\n  snapshot_dir: {}\n  metrics_addr: 127.0.0.1:0\n  listen_addr: {}\n  drain_timeout_ms: 2000\n{}",
            self.state_dir.display(),
            self.log_dir.display(),
            self.dir.path().join("snapshots").display(),
            self.listen_addr,
            self.orchestrator_extra
        )
    }

    /// The YAML of `functions` under this daemon's orchestrator section.
    pub fn yaml(&self, functions: &[FunctionSpec]) -> String {
        let mut y = self.orchestrator_yaml();
        y.push_str("functions:\n");
        for f in functions {
            let _ = write!(
                y,
                "  - id: {}\n    trigger_port: {}\n    handler_path: {}\n    memory_limit_mb: {}\n    timeout_ms: {}\n    concurrency: {}\n    egress: {}\n    handshake_timeout_ms: 10000\n    environment:\n      E2E_TAG: \"{}\"\n",
                f.id,
                f.port,
                f.handler.display(),
                f.memory_limit_mb,
                f.timeout_ms,
                f.concurrency,
                f.egress,
                self.tag
            );
            for (k, v) in &f.environment {
                let _ = writeln!(y, "      {k}: \"{v}\"");
            }
        }
        y
    }

    /// Write a configuration file for these functions (e.g. for `deploy`).
    pub fn write_config(&self, path: &Path, functions: &[FunctionSpec]) {
        std::fs::write(path, self.yaml(functions)).expect("write config");
    }

    /// A path inside this daemon's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Trigger port of function `id`.
    pub fn port(&self, id: &str) -> u16 {
        self.functions
            .iter()
            .find(|f| f.id == id)
            .map(|f| f.port)
            .unwrap_or_else(|| panic!("no function {id} in this test's config"))
    }

    /// `aetherctl -c <config> ARGS` (bounded by 60 s).
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        self.ctl_timeout(args, Duration::from_secs(60))
    }

    pub fn ctl_timeout(&self, args: &[&str], timeout: Duration) -> CtlOutput {
        let cfg = self.config.display().to_string();
        let mut all = vec!["-c", cfg.as_str()];
        all.extend_from_slice(args);
        run_ctl(&all, timeout)
    }

    /// `aetherctl ARGS` that must succeed; panics with output and aetherd's log.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.ok(),
            "[{}] aetherctl {args:?} failed: {out}\n{}",
            self.name,
            self.log_report()
        );
        out.stdout
    }

    /// `list -o json`, parsed.
    pub fn list(&self) -> Json {
        let text = self.ctl_ok(&["list", "-o", "json"]);
        Json::parse(&text)
            .unwrap_or_else(|e| panic!("`list -o json` printed invalid JSON ({e}): {text}"))
    }

    /// `stats -o json`, parsed.
    pub fn stats(&self) -> Json {
        let text = self.ctl_ok(&["stats", "-o", "json"]);
        Json::parse(&text)
            .unwrap_or_else(|e| panic!("`stats -o json` printed invalid JSON ({e}): {text}"))
    }

    /// Host pids of function `id`'s instances per `list -o json`.
    pub fn instance_pids(&self, id: &str) -> Vec<i32> {
        let list = self.list();
        function_entry(&list, id)
            .map(|f| {
                f.get("instances")
                    .map(Json::as_array)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|i| i.get("pid")?.as_u64())
                    .filter_map(|p| i32::try_from(p).ok())
                    .filter(|p| *p > 0)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// aetherd's pid from its pidfile.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.state_dir.join("aetherd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn control_segment(&self) -> PathBuf {
        self.state_dir.join("control.shm")
    }

    /// aetherd's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_dir.join("aetherd.log")).unwrap_or_default()
    }

    /// The log framed for a failure message.
    pub fn log_report(&self) -> String {
        format!(
            "--- {}/aetherd.log\n{}--- end of log",
            self.log_dir.display(),
            self.log()
        )
    }

    /// The metrics address aetherd logged ("metrics on http://ADDR/metrics").
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let log = self.log();
        let at = log.rfind("metrics on http://")? + "metrics on http://".len();
        let rest = &log[at..];
        rest[..rest.find('/')?].parse().ok()
    }

    /// The Prometheus text from the metrics endpoint.
    pub fn metrics(&self) -> Result<String, String> {
        let addr = self.metrics_addr().ok_or_else(|| {
            format!(
                "no 'metrics on http://ADDR/metrics' line in aetherd.log\n{}",
                self.log_report()
            )
        })?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "metrics address {addr} is not loopback; the tests only talk to 127.0.0.1"
            ));
        }
        let resp = http::get(addr.port(), "/metrics", Duration::from_secs(5))
            .map_err(|e| format!("GET http://{addr}/metrics: {e}"))?;
        if resp.status != 200 {
            return Err(format!("GET http://{addr}/metrics: status {}", resp.status));
        }
        Ok(resp.text())
    }

    /// Live handler processes of this daemon (by `E2E_TAG`).
    pub fn handler_pids(&self) -> Vec<i32> {
        let pids = pids_with_env("E2E_TAG", &self.tag);
        if let Ok(mut seen) = self.cgroups.lock() {
            seen.extend(pids.iter().flat_map(|p| cgroup_dirs(*p)));
        }
        pids
    }

    /// `aetherctl down`; marks the daemon stopped when it succeeds.
    pub fn down(&mut self) -> CtlOutput {
        eprintln!("[{}] aetherctl down", self.name);
        let out = self.ctl_timeout(
            &["down", "--drain-ms", "2000", "--timeout", "20"],
            Duration::from_secs(30),
        );
        if out.ok() {
            self.stopped = true;
        }
        out
    }

    /// Forget that aetherd runs (a test killed it and checks the aftermath);
    /// `start_again` or drop's clean-up still handles leftovers.
    pub fn mark_stopped(&mut self) {
        self.stopped = true;
    }

    /// `aetherctl up` again with the same configuration.
    pub fn up_again(&mut self) -> CtlOutput {
        eprintln!("[{}] aetherctl up (again)", self.name);
        let out = self.ctl_timeout(&["up", "--timeout", "20"], Duration::from_secs(30));
        if out.ok() {
            self.stopped = false;
            self.up_output = out.stdout.clone();
        }
        out
    }

    /// Kill whatever of this daemon still runs and remove its cgroups.
    fn force_cleanup(&self) {
        let handlers = self.handler_pids();
        if let Some(pid) = self.pid().filter(|p| alive(*p)) {
            eprintln!("[{}] cleanup: SIGKILL aetherd pid {pid}", self.name);
            kill(pid, libc::SIGKILL);
        }
        for pid in &handlers {
            eprintln!(
                "[{}] cleanup: SIGKILL leftover handler pid {pid}",
                self.name
            );
            kill(*pid, libc::SIGKILL);
        }
        wait_for(Duration::from_secs(3), || {
            self.handler_pids().is_empty() && self.pid().is_none_or(|p| !alive(p))
        });
        let _ = std::fs::remove_file(self.control_segment());
    }

    /// Remove the cgroup directories of this daemon's handlers that are
    /// still there: instance, then function, then aetherd's group (rmdir
    /// fails harmlessly on a group that still has members or children).
    fn remove_cgroups(&self) {
        let seen = self.cgroups.lock().map(|s| s.clone()).unwrap_or_default();
        for dir in seen {
            for d in dir.ancestors().take(3) {
                if std::fs::remove_dir(d).is_ok() {
                    eprintln!(
                        "[{}] cleanup: removed leftover cgroup {}",
                        self.name,
                        d.display()
                    );
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[{}] test failed; {}", self.name, self.log_report());
        }
        if !self.stopped || self.pid().is_some_and(alive) {
            let out = self.down();
            if !out.ok() {
                eprintln!(
                    "[{}] `aetherctl down` failed during clean-up: {out}",
                    self.name
                );
            }
        }
        if !self.handler_pids().is_empty() || self.pid().is_some_and(alive) {
            self.force_cleanup();
        }
        self.remove_cgroups();
    }
}

/// The aetherless cgroup directories process `pid` is in (v1 memory and v2):
/// `<hierarchy>/<aetherd group>/<function>/<instance>`.
pub fn cgroup_dirs(pid: i32) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mut dirs = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        if !path.starts_with("/aetherless") {
            continue;
        }
        let rel = path.trim_start_matches('/');
        let roots: &[&str] = if controllers.split(',').any(|c| c == "memory") {
            &["/sys/fs/cgroup/memory"]
        } else if controllers.is_empty() {
            &["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        } else {
            &[]
        };
        dirs.extend(
            roots
                .iter()
                .map(|r| Path::new(r).join(rel))
                .filter(|d| d.is_dir()),
        );
    }
    dirs
}

/// The entry of function `id` in `list -o json` output.
pub fn function_entry<'a>(list: &'a Json, id: &str) -> Option<&'a Json> {
    list.as_array()
        .iter()
        .find(|f| f.get("id").and_then(Json::as_str) == Some(id))
}

/// Executor CPUs from `up`'s "... executor core(s): [0, 1]) ..." line.
pub fn cores_from_up(up_stdout: &str) -> Vec<u64> {
    let Some(at) = up_stdout.find("core(s): [") else {
        return Vec::new();
    };
    let rest = &up_stdout[at + "core(s): [".len()..];
    rest[..rest.find(']').unwrap_or(0)]
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect()
}

/// Sum of a Prometheus metric's samples whose name is `name` exactly
/// (any labels), or `None` if no sample exists.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let metric = series.split('{').next().unwrap_or_default();
        if metric == name {
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

/// The labels of one exposition-format series (`name{a="x",b="y"}`).
pub fn series_labels(series: &str) -> Vec<(&str, &str)> {
    let Some((_, rest)) = series.split_once('{') else {
        return Vec::new();
    };
    rest.trim_end_matches('}')
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
        .collect()
}

/// Sum of metric `name`'s samples whose labels include every pair of `want`;
/// `None` if no sample matched.
pub fn metric_where(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if series.split('{').next() != Some(name) {
            continue;
        }
        let have = series_labels(series);
        if want.iter().all(|w| have.contains(w)) {
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

/// Pin the calling thread to `cpu`.
pub fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside `set` for cpu < CPU_SETSIZE (the
    // callers pass CPUs from sched_getaffinity or 0 and 1).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity(cpu {cpu}): {}",
        std::io::Error::last_os_error()
    );
}

/// Where aetherd looks for CRIU (`dataplane::criu::DEFAULT_CRIU_PATH`).
pub const CRIU: &str = "/usr/local/sbin/criu";

/// True when aetherd here can snapshot and restore: CRIU installed and not
/// turned off; prints a loud SKIP otherwise.
pub fn require_criu(test: &str) -> bool {
    if !Path::new(CRIU).is_file() {
        eprintln!("SKIP {test}: no CRIU at {CRIU} (scripts/setup.sh builds it)");
        return false;
    }
    if std::env::var("AETHER_SNAPSHOTS").is_ok_and(|v| v == "0") {
        eprintln!("SKIP {test}: AETHER_SNAPSHOTS=0 in the environment turns snapshots off");
        return false;
    }
    true
}

/// A cgroup group of one kernel test (`aetherless-test-<pid>-<name>`, or
/// `AETHER_TEST_GROUP`), killed and removed on drop. Derefs to its
/// [`dataplane::instance::cgroup::CgroupRoot`].
pub struct TestCgroups(dataplane::instance::cgroup::CgroupRoot);

impl TestCgroups {
    /// Root and a memory cgroup hierarchy, or a loud SKIP (`needs` says
    /// what root is for) and `None`.
    pub fn new(name: &str, needs: &str) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP {name}: needs root ({needs})");
            return None;
        }
        let group = std::env::var("AETHER_TEST_GROUP")
            .unwrap_or_else(|_| format!("aetherless-test-{}-{name}", std::process::id()));
        match dataplane::instance::cgroup::CgroupRoot::detect(&group) {
            Ok(c) => Some(Self(c)),
            Err(e) => {
                eprintln!("SKIP {name}: {e}");
                None
            }
        }
    }
}

impl std::ops::Deref for TestCgroups {
    type Target = dataplane::instance::cgroup::CgroupRoot;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        let _ = self.0.cleanup_stale();
        let _ = std::fs::remove_dir(self.0.base());
    }
}
