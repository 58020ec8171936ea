//! Handler instances against the real kernel: namespaces, cgroups, handshake,
//! logs, OOM, restarts, orphans. Needs root; every test says SKIP loudly and
//! returns when a feature is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

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

use common::TestCgroups;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Per-test cgroup group and temp dirs; removes the group on drop.
struct Env {
    cgroups: TestCgroups,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(name: &str) -> Option<Self> {
        let cgroups = TestCgroups::new(name, "namespaces, cgroups")?;
        let dir = tempfile::Builder::new().prefix("aeth").tempdir().unwrap();
        Some(Self { cgroups, dir })
    }

    /// The cgroup group name (what a restarted aetherd would detect again).
    fn group(&self) -> String {
        let name = self.cgroups.base().file_name().unwrap();
        name.to_str().unwrap().to_owned()
    }

    fn spec(&self, function: &str, program: &str, port: u16) -> InstanceSpec {
        let program = examples().join(program);
        let (program, args) = if program.extension().is_some_and(|e| e == "py") {
            // A bare name: resolved through the handler's PATH.
            (
                PathBuf::from("python3"),
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
    // The real interpreter, not a wrapper on PATH (a pyenv shim adds its own
    // variables), so the environment check sees exactly what we pass.
    if Path::new("/usr/bin/python3").exists() {
        spec.program = PathBuf::from("/usr/bin/python3");
    }
    // An fd aetherd opened without O_CLOEXEC must not reach the handler.
    let mut leaky = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    assert_eq!(unsafe { libc::pipe(leaky.as_mut_ptr()) }, 0);
    let leaky_name = std::fs::read_link(format!("/proc/self/fd/{}", leaky[0])).unwrap();
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
        // Nothing from our environment but PATH, HOME, LANG (python may add
        // LC_CTYPE: PEP 538 locale coercion).
        let keys = body.split("\"env_keys\": [").nth(1).unwrap();
        for k in keys.trim_end_matches(['}', ']']).split(", ") {
            let k = k.trim_matches('"');
            assert!(
                ["PATH", "HOME", "LANG", "TEST_VAR", "LC_CTYPE"].contains(&k)
                    || k.starts_with("AETHER_"),
                "unexpected env var {k}"
            );
        }
        for fd in std::fs::read_dir(format!("/proc/{}/fd", inst.pid())).unwrap() {
            let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
            assert_ne!(target, leaky_name, "aetherd's fd leaked into the handler");
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
    for fd in leaky {
        // SAFETY: closing an fd we opened above and nothing else uses.
        unsafe { libc::close(fd) };
    }
    eprintln!(
        "MEASURE python spawn->Ready: median {:?} of {times:?}",
        median(times.clone())
    );
}

#[test]
fn measure_spawn_cost() {
    let Some(env) = Env::new("spawncost") else {
        return;
    };
    // A handler that is a plain binary: measures clone + cgroup + exec only.
    let mut spec = env.spec("spawncost", "test-silent.sh", 18090);
    spec.program = PathBuf::from("/bin/sleep");
    spec.args = vec!["1000".into()];
    let pool = NetnsPool::new(4, None).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut times = Vec::new();
    for i in 0..10 {
        let ns = pool.take(false).unwrap();
        let t = Instant::now();
        let s = start(&spec, &format!("spawncost-{i}"), &env.cgroups, ns).unwrap();
        times.push(t.elapsed());
        drop(s);
    }
    eprintln!(
        "MEASURE start() (cgroup + socket + clone + exec of /bin/sleep): median {:?}",
        median(times)
    );
    let mut cg_times = Vec::new();
    for i in 0..10 {
        let t = Instant::now();
        let cg = env
            .cgroups
            .create("spawncost", &format!("cg-{i}"), 64 << 20)
            .unwrap();
        cg_times.push(t.elapsed());
        cg.destroy().unwrap();
    }
    eprintln!(
        "MEASURE cgroup create (mkdir + limit): median {:?}",
        median(cg_times)
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

#[test]
fn two_instances_share_the_trigger_port() {
    let Some(env) = Env::new("twins") else { return };
    let spec = env.spec("twins", "test-echo.py", 18081);
    let a = env.start(&spec, "twins-a").unwrap();
    let b = env.start(&spec, "twins-b").unwrap();
    for (inst, id) in [(&a, "twins-a"), (&b, "twins-b"), (&a, "twins-a")] {
        let (status, body) = http_get(inst.connect_upstream().unwrap(), "/").unwrap();
        assert_eq!(status, 200);
        assert_eq!(json_field(&body, "AETHER_INSTANCE_ID"), Some(id));
        assert_eq!(json_field(&body, "AETHER_TRIGGER_PORT"), Some("18081"));
    }
}

#[test]
fn handshake_timeout_kills_the_handler() {
    let Some(env) = Env::new("silent") else {
        return;
    };
    let mut spec = env.spec("silent", "test-silent.sh", 18082);
    spec.handshake_timeout = Duration::from_millis(300);
    let ns = Netns::create(None).unwrap();
    let starting = start(&spec, "silent-1", &env.cgroups, ns).unwrap();
    let pid = starting.instance().pid();
    let cg = starting.instance().cgroup_path().unwrap().to_path_buf();
    let t = Instant::now();
    let err = starting.wait().unwrap_err();
    assert!(
        matches!(err, InstanceError::HandshakeTimeout { after_ms: 300, waiting_for } if waiting_for.contains("READY")),
        "{err}"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "gave up too early: {:?}",
        t.elapsed()
    );
    assert!(
        !pid_alive(pid),
        "handler {pid} still alive after handshake timeout"
    );
    assert!(!cg.exists(), "cgroup {} left behind", cg.display());
    eprintln!("error text: {err}");
}

#[test]
fn handshake_garbage_is_rejected() {
    let Some(env) = Env::new("garbage") else {
        return;
    };
    let spec = env.spec("garbage", "test-garbage.py", 18083);
    let ns = Netns::create(None).unwrap();
    let starting = start(&spec, "garbage-1", &env.cgroups, ns).unwrap();
    let pid = starting.instance().pid();
    let err = starting.wait().unwrap_err();
    assert!(
        matches!(&err, InstanceError::HandshakeGarbage { got } if got == "HELLO"),
        "{err}"
    );
    assert!(!pid_alive(pid));
}

#[test]
fn exit_before_ready_carries_code_and_output() {
    let Some(env) = Env::new("crash") else { return };
    let spec = env.spec("crash", "test-crash.sh", 18084);
    let err = env.start(&spec, "crash-1").unwrap_err();
    match &err {
        InstanceError::ExitedBeforeReady {
            reason,
            stderr_tail,
        } => {
            assert_eq!(*reason, ExitReason::Exited { code: 7 });
            assert!(
                stderr_tail.contains("test-crash: about to fail"),
                "{stderr_tail}"
            );
        }
        other => panic!("wrong error: {other}"),
    }
    let mut bad = spec.clone();
    bad.program = PathBuf::from("/nonexistent/handler");
    let err = env.start(&bad, "crash-2").unwrap_err();
    assert!(err.to_string().contains("Exec"), "{err}");
}

#[test]
fn memory_limit_oom_is_reported() {
    let Some(env) = Env::new("oom") else { return };
    let mut spec = env.spec("oom", "test-echo.py", 18085);
    spec.memory_limit_bytes = 32 << 20;
    let mut inst = env.start(&spec, "oom-1").unwrap();
    // The request dies with the handler; only the exit matters.
    let _ = http_get(inst.connect_upstream().unwrap(), "/oom");
    let deadline = Instant::now() + Duration::from_secs(10);
    let reason = loop {
        if let Some(r) = inst.try_wait().unwrap() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "handler survived allocating 200 MB under a 32 MB limit"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        reason,
        ExitReason::OomKilled {
            limit_bytes: 32 << 20
        }
    );
    assert_eq!(inst.state(), InstanceState::Failed);
    assert!(inst.cgroup_path().is_none());
}

/// Drives `sup` until `pred` accepts an event or `within` passes.
fn drive(
    sup: &mut Supervisor,
    pool: &NetnsPool,
    within: Duration,
    mut pred: impl FnMut(&SupervisorEvent) -> bool,
) -> (SupervisorEvent, Instant) {
    let deadline = Instant::now() + within;
    loop {
        let now = Instant::now();
        for ev in sup.tick(now, pool) {
            eprintln!("event: {ev:?}");
            if pred(&ev) {
                return (ev, now);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no matching supervisor event within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn supervisor_restarts_crashes_with_backoff_and_counts_oom() {
    let Some(env) = Env::new("super") else { return };
    let mut spec = env.spec("super", "test-echo.py", 18086);
    spec.memory_limit_bytes = 32 << 20;
    let pool = NetnsPool::new(1, None).unwrap();
    let policy = BackoffPolicy {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(2),
        reset_after: Duration::from_secs(30),
    };
    let mut sup = Supervisor::new(spec, env.cgroups.clone(), 1, policy);
    let ready = |e: &SupervisorEvent| matches!(e, SupervisorEvent::Ready { .. });
    let exited = |e: &SupervisorEvent| matches!(e, SupervisorEvent::Exited { .. });
    drive(&mut sup, &pool, Duration::from_secs(10), ready);
    let gen0 = sup.generation();
    for (round, min_delay) in [(1u32, 200u64), (2, 400)] {
        let _ = http_get(sup.ready()[0].connect_upstream().unwrap(), "/crash");
        let (ev, t_exit) = drive(&mut sup, &pool, Duration::from_secs(5), exited);
        assert!(
            matches!(
                ev,
                SupervisorEvent::Exited {
                    reason: ExitReason::Exited { code: 3 },
                    ..
                }
            ),
            "{ev:?}"
        );
        assert!(sup.ready().is_empty());
        assert_eq!(sup.consecutive_failures(), round);
        drive(&mut sup, &pool, Duration::from_secs(10), ready);
        let waited = sup.ready()[0].started_at().duration_since(t_exit);
        assert!(
            waited >= Duration::from_millis(min_delay),
            "restart {round} after {waited:?}, backoff is {min_delay} ms"
        );
        eprintln!("restart {round}: respawned {waited:?} after the crash");
    }
    assert!(sup.generation() >= gen0 + 4);
    let _ = http_get(sup.ready()[0].connect_upstream().unwrap(), "/oom");
    let (ev, _) = drive(&mut sup, &pool, Duration::from_secs(10), exited);
    assert!(
        matches!(ev, SupervisorEvent::Exited { reason: ExitReason::OomKilled { limit_bytes }, .. } if limit_bytes == 32 << 20),
        "{ev:?}"
    );
    let stats = sup.stats();
    assert_eq!(
        (stats.crashes, stats.oom_kills, stats.restarts),
        (3, 1, 2),
        "{stats:?}"
    );
    drive(&mut sup, &pool, Duration::from_secs(10), ready);
    let pid = sup.ready()[0].pid();
    // Non-blocking stop: python as pid 1 ignores SIGTERM, so it lives until
    // the grace period ends and SIGKILL comes from a tick; no tick blocks.
    let t0 = Instant::now();
    sup.begin_shutdown(t0, Duration::from_millis(200));
    let mut events = Vec::new();
    while !sup.is_stopped() {
        let t = Instant::now();
        events.extend(sup.tick(t, &pool));
        assert!(
            t.elapsed() < Duration::from_millis(50),
            "tick blocked {:?}",
            t.elapsed()
        );
        assert!(t0.elapsed() < Duration::from_secs(5), "never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "killed before the grace period"
    );
    assert!(
        matches!(
            events.as_slice(),
            [SupervisorEvent::Exited {
                reason: ExitReason::Stopped,
                ..
            }]
        ),
        "{events:?}"
    );
    assert_eq!(sup.next_tick(Instant::now()), None);
    assert!(!pid_alive(pid));
}

/// Not a test by itself: run by `no_orphans_when_the_parent_is_sigkilled` in a
/// child process, which it then SIGKILLs.
#[test]
#[ignore = "helper process for no_orphans_when_the_parent_is_sigkilled"]
fn orphan_helper() {
    let Ok(out) = std::env::var("AETHER_ORPHAN_OUT") else {
        return;
    };
    let env = Env::new("orphan").unwrap();
    let spec = env.spec("orphan", "test-echo.py", 18087);
    let inst = env.start(&spec, "orphan-1").unwrap();
    std::fs::write(&out, inst.pid().to_string()).unwrap();
    std::mem::forget(inst);
    std::mem::forget(env);
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn no_orphans_when_the_parent_is_sigkilled() {
    let Some(env) = Env::new("orphan") else {
        return;
    };
    let out = env.dir.path().join("pid");
    let group = env.group();
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "orphan_helper", "--ignored", "--nocapture"])
        .env("AETHER_ORPHAN_OUT", &out)
        .env("AETHER_TEST_GROUP", &group)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid: i32 = loop {
        if let Some(p) = std::fs::read_to_string(&out)
            .ok()
            .and_then(|s| s.parse().ok())
        {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "helper never started its handler"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(pid_alive(pid));
    helper.kill().unwrap();
    helper.wait().unwrap();
    let killed_at = Instant::now();
    while pid_alive(pid) {
        assert!(
            killed_at.elapsed() < Duration::from_secs(1),
            "handler {pid} outlived its SIGKILLed parent by a second"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "handler gone {:?} after its parent was SIGKILLed",
        killed_at.elapsed()
    );
    // The next aetherd's start-up clean-up removes the group the dead one left.
    let report = CgroupRoot::detect(&group).unwrap().cleanup_stale().unwrap();
    assert_eq!(report.removed, 1, "{report:?}");
}

#[test]
fn stale_cgroup_cleanup_kills_leftovers() {
    let Some(env) = Env::new("stale") else { return };
    let mut child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let cg = env.cgroups.create("stalefn", "stale-1", 64 << 20).unwrap();
    cg.add_pid(pid).unwrap();
    assert_eq!(cg.pids().unwrap(), vec![pid]);
    let path = cg.path().to_path_buf();
    drop(cg); // as if aetherd died: the group stays
    let group = env.group();
    let report = CgroupRoot::detect(&group).unwrap().cleanup_stale().unwrap();
    assert_eq!((report.killed, report.removed), (1, 1));
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!path.exists());
}

#[test]
fn egress_reaches_the_bridge_and_pool_hands_out_prepared_namespaces() {
    let Some(_env) = Env::new("egress") else {
        return;
    };
    if std::process::Command::new("iptables")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP egress: iptables not installed");
        return;
    }
    let cfg = EgressConfig {
        bridge: "aethtest0".into(),
        veth_prefix: "aett".into(),
        subnet: std::net::Ipv4Addr::new(10, 201, 0, 0),
        prefix_len: 24,
    };
    let eg = Egress::setup(cfg.clone()).unwrap();
    let mut plain = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        drop(Netns::create(None).unwrap());
        plain.push(t.elapsed());
    }
    let mut with = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        keep.push(Netns::create(Some(&eg)).unwrap());
        with.push(t.elapsed());
    }
    eprintln!("MEASURE netns prepare (lo up): median {:?}", median(plain));
    eprintln!(
        "MEASURE netns prepare with egress veth: median {:?}",
        median(with)
    );
    let ns = &keep[0];
    let lease = ns.egress().unwrap();
    assert!(lease.addr().to_string().starts_with("10.201.0."));
    let listener = std::net::TcpListener::bind((cfg.gateway(), 0)).unwrap();
    let addr = match listener.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    let mut s = ns.tcp_connect(addr, Some(Duration::from_secs(2))).unwrap();
    let (mut peer, from) = listener.accept().unwrap();
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(lease.addr()),
        "came from the namespace's address"
    );
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    // Without egress: the bridge is unreachable.
    let isolated = Netns::create(None).unwrap();
    assert!(isolated
        .tcp_connect(addr, Some(Duration::from_millis(200)))
        .is_err());

    let pool = NetnsPool::new(2, Some(eg.clone())).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let a = pool.take(true).unwrap();
    let b = pool.take(false).unwrap();
    eprintln!("MEASURE NetnsPool::take (prepared) x2: {:?}", t.elapsed());
    assert!(a.egress().is_some() && b.egress().is_none());
    drop((a, b, pool, keep, isolated, s, peer));
    drop(eg);
    Egress::cleanup_stale(&cfg);
    let shown = std::process::Command::new("ip")
        .args(["link", "show", "aethtest0"])
        .output()
        .unwrap();
    assert!(!shown.status.success(), "bridge left behind");
}

#[test]
fn ready_waits_for_the_port_to_listen() {
    let Some(env) = Env::new("late") else {
        return;
    };
    let mut spec = env.spec("late", "test-late-bind.py", 18091);
    spec.environment
        .insert("TEST_BIND_DELAY_MS".into(), "400".into());
    let inst = env.start(&spec, "late-1").unwrap();
    let after = inst.ready_after().unwrap();
    assert!(
        after >= Duration::from_millis(400),
        "Ready before the port listened: {after:?}"
    );
    let (status, body) = http_get(inst.connect_upstream().unwrap(), "/").unwrap();
    assert_eq!((status, body.as_str()), (200, "late but here"));

    spec.environment
        .insert("TEST_BIND_DELAY_MS".into(), "never".into());
    spec.handshake_timeout = Duration::from_millis(500);
    let err = env.start(&spec, "late-2").unwrap_err();
    assert!(
        matches!(err, InstanceError::HandshakeTimeout { after_ms: 500, waiting_for } if waiting_for.contains("AETHER_TRIGGER_PORT")),
        "{err}"
    );
}

#[test]
fn supervisor_forgets_failures_after_a_healthy_spell() {
    let Some(env) = Env::new("healthy") else {
        return;
    };
    let spec = env.spec("healthy", "test-echo.py", 18092);
    let pool = NetnsPool::new(1, None).unwrap();
    let policy = BackoffPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(1),
        reset_after: Duration::from_millis(300),
    };
    let mut sup = Supervisor::new(spec, env.cgroups.clone(), 1, policy);
    let ready = |e: &SupervisorEvent| matches!(e, SupervisorEvent::Ready { .. });
    drive(&mut sup, &pool, Duration::from_secs(10), ready);
    let _ = http_get(sup.ready()[0].connect_upstream().unwrap(), "/crash");
    drive(&mut sup, &pool, Duration::from_secs(5), |e| {
        matches!(e, SupervisorEvent::Exited { .. })
    });
    assert_eq!(sup.consecutive_failures(), 1);
    drive(&mut sup, &pool, Duration::from_secs(10), ready);
    std::thread::sleep(Duration::from_millis(350));
    assert!(sup.tick(Instant::now(), &pool).is_empty());
    assert_eq!(
        sup.consecutive_failures(),
        0,
        "healthy for longer than reset_after"
    );
    assert_eq!(sup.stats().restarts, 1);
    let pid = sup.ready()[0].pid();
    let events = sup.shutdown(Duration::ZERO);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(!pid_alive(pid));
}
