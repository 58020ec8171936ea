//! Handler instances against the real kernel: namespaces, cgroups, handshake,
//! logs, OOM, restarts, orphans. Needs root; every test says SKIP loudly and
//! returns when a feature is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dataplane::instance::cgroup::CgroupRoot;
use dataplane::instance::netns::{Egress, EgressConfig, Netns, NetnsPool};
use dataplane::instance::state::InstanceState;
use dataplane::instance::supervisor::{BackoffPolicy, Supervisor, SupervisorEvent};
use dataplane::instance::{logs, start, ExitReason, Instance, InstanceError, InstanceSpec};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Per-test cgroup group and temp dirs; removes the group on drop.
struct Env {
    cgroups: CgroupRoot,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(name: &str) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP {name}: needs root (namespaces, cgroups)");
            return None;
        }
        let group = format!("aetherless-test-{}-{name}", std::process::id());
        let cgroups = match CgroupRoot::detect(&group) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("SKIP {name}: {e}");
                return None;
            }
        };
        let dir = tempfile::Builder::new().prefix("aeth").tempdir().unwrap();
        Some(Self { cgroups, dir })
    }

    fn spec(&self, function: &str, program: &str, port: u16) -> InstanceSpec {
        let program = examples().join(program);
        let (program, args) = if program.extension().is_some_and(|e| e == "py") {
            (
                PathBuf::from("/usr/bin/python3"),
                vec![program.display().to_string()],
            )
        } else {
            (program, Vec::new())
        };
        InstanceSpec {
            function_id: function.to_owned(),
            program,
            args,
            environment: BTreeMap::from([("TEST_VAR".to_owned(), "hello world".to_owned())]),
            trigger_port: port,
            memory_limit_bytes: 128 << 20,
            handshake_timeout: Duration::from_secs(10),
            egress: false,
            cpu: None,
            log_dir: self.dir.path().join("logs"),
            state_dir: self.dir.path().join("state"),
        }
    }

    fn start(&self, spec: &InstanceSpec, id: &str) -> Result<Instance, InstanceError> {
        let ns = Netns::create(None)?;
        start(spec, id, &self.cgroups, ns)?.wait()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.cgroups.cleanup_stale();
        let _ = std::fs::remove_dir(self.cgroups.base());
    }
}

/// GET `path` over `s`; returns (status, body).
fn http_get(mut s: TcpStream, path: &str) -> std::io::Result<(u16, String)> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn json_field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let at = body.find(&format!("\"{key}\": "))? + key.len() + 4;
    let rest = &body[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

fn pid_alive(pid: i32) -> bool {
    // A zombie waiting for a reaper outside our control is dead too.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')),
        Err(_) => false,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn echo_runs_in_own_pid_and_net_namespace() {
    let Some(env) = Env::new("echo") else { return };
    let mut spec = env.spec("echo", "test-echo.py", 18080);
    spec.cpu = Some(0);
    let mut times = Vec::new();
    for round in 0..5 {
        let inst = env.start(&spec, &format!("echo-{round}")).unwrap();
        times.push(inst.ready_after().unwrap());
        assert_eq!(inst.state(), InstanceState::Ready);
        if round > 0 {
            continue;
        }
        let (status, body) = http_get(inst.connect_upstream().unwrap(), "/test").unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(json_field(&body, "path"), Some("/test"));
        assert_eq!(
            json_field(&body, "pid"),
            Some("1"),
            "not pid 1 in its own pid namespace: {body}"
        );
        assert_eq!(json_field(&body, "AETHER_FUNCTION_ID"), Some("echo"));
        assert_eq!(json_field(&body, "AETHER_TRIGGER_PORT"), Some("18080"));
        assert_eq!(json_field(&body, "AETHER_INSTANCE_ID"), Some("echo-0"));
        assert_eq!(json_field(&body, "TEST_VAR"), Some("hello world"));
        let sock = json_field(&body, "AETHER_SOCKET").unwrap();
        assert!(sock.ends_with("/state/sock/echo-0.sock"), "{sock}");
        // Nothing from our environment but PATH, HOME, LANG.
        let keys = body.split("\"env_keys\": [").nth(1).unwrap();
        for k in keys.trim_end_matches(['}', ']']).split(", ") {
            let k = k.trim_matches('"');
            assert!(
                ["PATH", "HOME", "LANG", "TEST_VAR", "LC_CTYPE"].contains(&k)
                    || k.starts_with("AETHER_"),
                "unexpected env var {k}"
            );
        }
        let ours = |kind: &str| std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
        let theirs =
            |kind: &str| std::fs::read_link(format!("/proc/{}/ns/{kind}", inst.pid())).unwrap();
        assert_ne!(ours("net"), theirs("net"));
        assert_ne!(ours("pid"), theirs("pid"));
        let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", inst.pid())).unwrap();
        assert!(cg.contains("/aetherless-test-"), "not in our cgroup: {cg}");
        let status = std::fs::read_to_string(format!("/proc/{}/status", inst.pid())).unwrap();
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("Cpus_allowed_list:") && l.trim_end().ends_with("\t0")),
            "not pinned to cpu 0"
        );
        let lines = logs::tail(&spec.log_dir, "echo", 10).unwrap();
        assert!(
            lines
                .iter()
                .any(|l| l.line.contains("test-echo starting pid=1")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.line.contains("test-echo stderr line")),
            "{lines:?}"
        );
    }
    eprintln!(
        "MEASURE python spawn->Ready: median {:?} of {times:?}",
        median(times.clone())
    );
}

#[test]
fn measure_setns_cost() {
    let Some(_env) = Env::new("setns") else {
        return;
    };
    let ns = Netns::create(None).unwrap();
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        ns.enter(|| ()).unwrap();
    }
    eprintln!("MEASURE setns there+back: {:?}", t.elapsed() / n);
    let l = ns
        .enter(|| std::net::TcpListener::bind("127.0.0.1:18999").unwrap())
        .unwrap();
    let t = Instant::now();
    for _ in 0..n {
        let s = ns
            .tcp_connect("127.0.0.1:18999".parse().unwrap(), None)
            .unwrap();
        drop(l.accept().unwrap());
        drop(s);
    }
    eprintln!("MEASURE tcp_connect in ns: {:?}", t.elapsed() / n);
}
