//! End-to-end tests (issue 3, item 7): the real `aetherd` and `aetherctl`
//! binaries, real handler processes, HTTP over loopback.
//!
//! Run: `cargo build -p control && cargo test -p dataplane --test e2e -- --nocapture`
//! (as root). Each test has its own state dir, log dir and ports, so they run
//! in parallel; each stops its aetherd and proves no handler is left. Tests
//! that cannot run (not root, no memory cgroup) print `SKIP <test>: <reason>`.
//!
//! | test | proves |
//! |---|---|
//! | quickstart | `examples/hello.py` answers the original JSON; list (≥ 1 instance per executor core, pids), stats, metrics, logs; `down` leaves no aetherd, control segment, handler or cgroup directory |
//! | deploy | `--dry-run` prints the diff only; deploy adds (new port answers), redeploys unchanged, updates (new environment answers); undeploy closes the port |
//! | bad configs | exit 3 with `file:line:col` and "did you mean" (validate, up, deploy); exit 4 for every verb without aetherd; exit 2 for a bad command line |
//! | malformed HTTP | 400 for garbage, 431 for a 70 KB head or 150 fields; the gateway keeps serving; handler stdout/stderr reach `logs` |
//! | crash under load | 4 clients for 3 s, one `POST /crash`: every request answered within `timeout_ms`, /crash gets 502, no other request fails, exactly one crash, the instance restarts |
//! | memory limit | 300 MB under `memory_limit_mb: 64`: 502, `aether_instance_oom_kills_total` ≥ 1, restart counted, serves again |
//! | SIGKILL | handlers die within 2 s of aetherd (parent-death signal); the next `up` cleans up (stale cgroups, bridge) and serves |
//! | egress | `egress: true` reaches the bridge address through NAT, `egress: false` has no route; `down` removes bridge address and NAT rule |
//! | timeout | a handler slower than `timeout_ms: 500` gives 504 after about 500 ms |
//! | drain | a request in flight during `down` completes with 200 |
//! | SIGTERM | stops aetherd, handlers and control segment like `down` |
//! | concurrent aetherctl | 40 list/stats/logs calls from 8 threads all answer correctly |
//! | update under load | redeploying a changed function while 2 keep-alive clients call: every request answered 200 (old instances serve until new ones are ready) |

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http::{self, Conn};
use common::{
    cores_from_up, examples, function_entry, metric_sum, require_memory_cgroup, require_root,
    run_ctl, wait_for, Daemon, FunctionSpec, Json,
};

/// Start a daemon or fail the test with aetherctl's output and aetherd's log.
fn start(name: &str, functions: Vec<FunctionSpec>) -> Daemon {
    Daemon::start(name, functions).unwrap_or_else(|e| panic!("[{name}] {e}"))
}

/// Wait until function `id` answers `GET /` with 200 (its instances are up).
fn await_serving(d: &Daemon, id: &str) -> http::Response {
    let port = d.port(id);
    let r = http::get_until(port, "/", 200, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("[{}] {id} never served: {e}\n{}", d.name, d.log_report()));
    // Records the handlers' cgroups, for clean-up if aetherd leaves them.
    d.handler_pids();
    r
}

/// Root check, then start one function and wait until it serves: the daemon
/// and the function's port, or `None` after a SKIP line.
fn serve_one(test: &str, spec: FunctionSpec) -> Option<(Daemon, u16)> {
    if !require_root(test) {
        return None;
    }
    let id = spec.id.clone();
    let d = start(test, vec![spec]);
    await_serving(&d, &id);
    let port = d.port(&id);
    Some((d, port))
}

/// `stats -o json` count of `status` answers for function `id`.
fn status_count(stats: &Json, id: &str, status: u16) -> u64 {
    stats
        .get("functions")
        .map(Json::as_array)
        .unwrap_or_default()
        .iter()
        .find(|f| f.get("id").and_then(Json::as_str) == Some(id))
        .and_then(|f| f.at(&["by_status", &status.to_string()]))
        .and_then(Json::as_u64)
        .unwrap_or(0)
}

/// Total restarts of function `id`'s instances per `list -o json`.
fn restarts(list: &Json, id: &str) -> u64 {
    function_entry(list, id)
        .and_then(|f| f.get("instances"))
        .map(Json::as_array)
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i.get("restarts")?.as_u64())
        .sum()
}

/// Wait until function `id` restarted an instance and every executor core
/// again has a ready instance; panics with `list` and the log otherwise.
fn await_restarted(d: &Daemon, id: &str) {
    let cores = cores_from_up(&d.up_output);
    let mut list = Json::Null;
    let ok = wait_for(Duration::from_secs(15), || {
        list = d.list();
        let instances = function_entry(&list, id)
            .and_then(|f| f.get("instances"))
            .map(Json::as_array)
            .unwrap_or_default();
        let ready_on = |cpu: u64| {
            instances.iter().any(|i| {
                i.get("core").and_then(Json::as_u64) == Some(cpu)
                    && i.get("state").and_then(Json::as_str) == Some("ready")
            })
        };
        restarts(&list, id) >= 1 && cores.iter().all(|c| ready_on(*c))
    });
    assert!(
        ok,
        "[{}] {id}: no restarted, ready instance on every core {cores:?} within 15 s: {list:?}\n{}",
        d.name,
        d.log_report()
    );
}

/// The original quickstart: hello.py, up, request, list, stats, logs, down.
#[test]
fn quickstart_serves_lists_counts_logs_and_stops_cleanly() {
    const T: &str = "quickstart";
    if !require_root(T) {
        return;
    }
    let hello = examples().join("hello.py");
    let mut d = start(
        T,
        vec![FunctionSpec::new("hello-api")
            .handler(hello)
            .timeout_ms(30_000)],
    );
    let port = d.port("hello-api");

    eprintln!("[{T}] GET 127.0.0.1:{port}/test");
    let r = http::get_until(port, "/test", 200, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log_report()));
    assert_eq!(
        r.text(),
        r#"{"message": "Hello from Aetherless!", "path": "/test"}"#,
        "the original quickstart's answer, byte for byte"
    );

    eprintln!("[{T}] aetherctl list -o json");
    let cores = cores_from_up(&d.up_output);
    assert!(
        !cores.is_empty(),
        "`up` did not name its executor cores: {:?}",
        d.up_output
    );
    let list = d.list();
    let f = function_entry(&list, "hello-api")
        .unwrap_or_else(|| panic!("hello-api missing from list: {list:?}"));
    assert_eq!(
        f.get("trigger_port").and_then(Json::as_u64),
        Some(u64::from(port))
    );
    let instances = f.get("instances").map(Json::as_array).unwrap_or_default();
    for cpu in &cores {
        let on_core: Vec<&Json> = instances
            .iter()
            .filter(|i| i.get("core").and_then(Json::as_u64) == Some(*cpu))
            .collect();
        assert!(
            !on_core.is_empty(),
            "no hello-api instance on executor cpu {cpu}: {instances:?}"
        );
        for i in on_core {
            let pid = i.get("pid").and_then(Json::as_u64).unwrap_or(0);
            eprintln!(
                "[{T}]   cpu {cpu}: pid {pid} state {:?}",
                i.get("state").and_then(Json::as_str)
            );
            assert!(pid > 0, "instance without a pid: {i:?}");
        }
    }
    let handler_pids = d.instance_pids("hello-api");
    let tagged = d.handler_pids();
    for pid in &handler_pids {
        assert!(
            tagged.contains(pid),
            "list pid {pid} is not a hello-api handler process (tagged: {tagged:?})"
        );
    }

    eprintln!("[{T}] aetherctl stats -o json");
    let stats = d.stats();
    let ok = status_count(&stats, "hello-api", 200);
    assert!(ok >= 1, "stats did not count the 200: {stats:?}");
    let total = function_entry(stats.get("functions").unwrap(), "hello-api")
        .and_then(|f| f.get("requests_total"))
        .and_then(Json::as_u64);
    assert!(
        total >= Some(ok),
        "requests_total {total:?} < 200s counted {ok}"
    );

    eprintln!("[{T}] GET /metrics");
    let metrics = d.metrics().unwrap_or_else(|e| panic!("{e}"));
    let requests = metric_sum(&metrics, "aether_requests_total");
    assert!(requests >= Some(1.0), "aether_requests_total {requests:?}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("aether_requests_total{") && l.contains("hello-api")),
        "no aether_requests_total sample for hello-api"
    );

    eprintln!("[{T}] aetherctl logs hello-api");
    d.ctl_ok(&["logs", "hello-api", "-n", "20"]);
    let missing = d.ctl(&["logs", "no-such-function"]);
    assert_eq!(
        missing.code,
        Some(1),
        "logs of an unknown function: {missing}"
    );
    assert!(missing.stderr.contains("no-such-function"), "{missing}");

    let cgroups: Vec<std::path::PathBuf> = handler_pids
        .iter()
        .flat_map(|p| common::cgroup_dirs(*p))
        .collect();
    eprintln!("[{T}] handler cgroups: {cgroups:?}");
    let aetherd = d.pid().expect("pidfile while running");
    let out = d.down();
    assert!(
        out.ok(),
        "`aetherctl down` failed: {out}\n{}",
        d.log_report()
    );
    assert!(
        !common::alive(aetherd),
        "aetherd pid {aetherd} still alive after down"
    );
    assert!(
        !d.control_segment().exists(),
        "control segment {} left behind",
        d.control_segment().display()
    );
    let left = common::still_alive(&handler_pids);
    assert!(left.is_empty(), "handler pids {left:?} outlived `down`");
    assert!(
        d.handler_pids().is_empty(),
        "handler processes left: {:?}",
        d.handler_pids()
    );
    assert!(
        http::refused(port),
        "port {port} still accepts connections after down"
    );
    // Instance, function and aetherd group directories: all removed by down.
    let mut left: Vec<&std::path::Path> = cgroups
        .iter()
        .flat_map(|c| c.ancestors().take(3))
        .filter(|c| c.exists())
        .collect();
    left.sort_unstable();
    left.dedup();
    assert!(
        left.is_empty(),
        "cgroup directories left after down: {left:?}"
    );

    eprintln!(
        "[{T}] down: aetherd, control segment and {} handler(s) gone",
        handler_pids.len()
    );
}

/// deploy --dry-run, deploy (add), deploy (update), undeploy.
#[test]
fn deploy_adds_updates_and_undeploy_removes() {
    const T: &str = "deploy";
    let Some((d, _)) = serve_one(T, FunctionSpec::new("e2e-first")) else {
        return;
    };

    let mut other = FunctionSpec::new("e2e-other").env("E2E_VERSION", "1");
    other.port = common::free_port();
    let file = d.path("other.yaml");
    let file_arg = file.display().to_string();
    d.write_config(&file, std::slice::from_ref(&other));

    eprintln!("[{T}] deploy other.yaml --dry-run");
    let out = d.ctl_ok(&["deploy", &file_arg, "--dry-run"]);
    assert!(
        out.contains("would add e2e-other"),
        "dry run output: {out:?}"
    );
    assert!(
        http::refused(other.port),
        "dry run opened port {}",
        other.port
    );
    assert!(
        function_entry(&d.list(), "e2e-other").is_none(),
        "dry run deployed e2e-other"
    );

    eprintln!("[{T}] deploy other.yaml");
    let out = d.ctl_ok(&["deploy", &file_arg]);
    assert!(
        out.lines().any(|l| l == "add e2e-other"),
        "deploy output: {out:?}"
    );
    let r = http::get_until(other.port, "/v", 200, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log_report()));
    d.handler_pids();
    let body = Json::parse(&r.text()).unwrap();
    assert_eq!(
        body.get("version").and_then(Json::as_str),
        Some("1"),
        "{body:?}"
    );
    await_serving(&d, "e2e-first");

    eprintln!("[{T}] deploy the same file again: nothing changes");
    let out = d.ctl_ok(&["deploy", &file_arg]);
    assert!(
        out.contains("unchanged e2e-other") && out.contains("nothing to change"),
        "{out:?}"
    );

    eprintln!("[{T}] deploy a changed other.yaml (E2E_VERSION 2)");
    other.environment = vec![("E2E_VERSION".into(), "2".into())];
    d.write_config(&file, std::slice::from_ref(&other));
    let out = d.ctl_ok(&["deploy", &file_arg]);
    assert!(
        out.lines().any(|l| l == "update e2e-other"),
        "deploy output: {out:?}"
    );
    let mut seen = BTreeMap::new();
    let updated = wait_for(Duration::from_secs(15), || {
        match http::get(other.port, "/v", Duration::from_secs(5)) {
            Ok(r) => {
                let v = Json::parse(&r.text())
                    .ok()
                    .and_then(|b| b.get("version").and_then(Json::as_str).map(str::to_string));
                *seen.entry((r.status, v.clone())).or_insert(0) += 1;
                r.status == 200 && v.as_deref() == Some("2")
            }
            Err(e) => {
                *seen.entry((0, Some(e.to_string()))).or_insert(0) += 1;
                false
            }
        }
    });
    assert!(
        updated,
        "e2e-other never answered version 2; answers seen: {seen:?}\n{}",
        d.log_report()
    );
    eprintln!("[{T}] answers during the update: {seen:?}");

    eprintln!("[{T}] undeploy e2e-other");
    let out = d.ctl_ok(&["undeploy", "e2e-other"]);
    assert!(out.contains("removed e2e-other"), "{out:?}");
    assert!(
        wait_for(Duration::from_secs(5), || http::refused(other.port)),
        "port {} still accepts connections after undeploy",
        other.port
    );
    assert!(
        function_entry(&d.list(), "e2e-other").is_none(),
        "e2e-other still listed"
    );
    let again = d.ctl(&["undeploy", "e2e-other"]);
    assert_eq!(
        again.code,
        Some(1),
        "undeploy of a removed function: {again}"
    );
    await_serving(&d, "e2e-first");
}

/// Invalid files exit 3 with located errors; verbs without aetherd exit 4.
#[test]
fn bad_configs_and_no_daemon_exit_codes() {
    const T: &str = "bad-configs";
    // Needs no root: aetherctl rejects the files before aetherd would start.
    let d = Daemon::configure(T, vec![FunctionSpec::new("e2e-valid")]);
    let good = d.config.display().to_string();

    let out = run_ctl(&["validate", &good], Duration::from_secs(20));
    assert_eq!(out.code, Some(0), "valid file: {out}");
    assert!(out.stdout.starts_with("OK"), "{out}");

    let bad = d.path("bad.yaml");
    let text = d
        .yaml(&d.functions)
        .replace("trigger_port:", "trigger_prot:");
    std::fs::write(&bad, &text).unwrap();
    let (line, col) = text
        .lines()
        .enumerate()
        .find_map(|(n, l)| l.find("trigger_prot").map(|c| (n + 1, c + 1)))
        .unwrap();
    let bad_arg = bad.display().to_string();
    eprintln!("[{T}] validate {bad_arg} (trigger_prot at {line}:{col})");
    let out = run_ctl(&["validate", &bad_arg], Duration::from_secs(20));
    assert_eq!(out.code, Some(3), "validate of an invalid file: {out}");
    let located = format!("{bad_arg}:{line}:{col}:");
    assert!(out.stderr.contains(&located), "no '{located}' in: {out}");
    assert!(
        out.stderr.contains("did you mean 'trigger_port'"),
        "no suggestion in: {out}"
    );

    eprintln!("[{T}] up -c {bad_arg}");
    let out = run_ctl(
        &["-c", &bad_arg, "up", "--timeout", "5"],
        Duration::from_secs(20),
    );
    assert_eq!(out.code, Some(3), "up with an invalid config: {out}");
    assert!(
        d.pid().is_none(),
        "up with an invalid config wrote a pidfile"
    );

    eprintln!("[{T}] deploy {bad_arg}");
    let out = d.ctl_timeout(&["deploy", &bad_arg], Duration::from_secs(20));
    assert_eq!(out.code, Some(3), "deploy of an invalid file: {out}");
    assert!(out.stderr.contains(&located), "{out}");

    let range = d.path("range.yaml");
    std::fs::write(
        &range,
        d.yaml(&d.functions)
            .replace("memory_limit_mb: 128", "memory_limit_mb: 0"),
    )
    .unwrap();
    let out = run_ctl(
        &["validate", &range.display().to_string()],
        Duration::from_secs(20),
    );
    assert_eq!(out.code, Some(3), "memory_limit_mb 0: {out}");
    assert!(out.stderr.contains("memory_limit_mb"), "{out}");

    eprintln!("[{T}] verbs without a running aetherd");
    for args in [
        vec!["list"],
        vec!["stats", "-o", "json"],
        vec!["logs", "e2e-valid"],
        vec!["undeploy", "e2e-valid"],
        vec!["deploy", good.as_str()],
        vec!["down", "--timeout", "5"],
    ] {
        let out = d.ctl_timeout(&args, Duration::from_secs(20));
        assert_eq!(
            out.code,
            Some(4),
            "aetherctl {args:?} without aetherd: {out}"
        );
        assert!(
            out.stderr.contains("not running"),
            "aetherctl {args:?}: {out}"
        );
    }
    let out = run_ctl(&["no-such-verb"], Duration::from_secs(20));
    assert_eq!(out.code, Some(2), "unknown verb: {out}");
}

/// Malformed requests get 400 / 431; the gateway keeps serving.
#[test]
fn malformed_http_gets_400_and_431_and_gateway_keeps_serving() {
    const T: &str = "malformed-http";
    let Some((d, port)) = serve_one(T, FunctionSpec::new("e2e-http")) else {
        return;
    };
    let t = Duration::from_secs(5);

    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let cases: [(&str, &[u8], u16); 5] = [
        ("garbage request line", b"THIS IS NOT HTTP\r\n\r\n", 400),
        ("binary garbage", b"\x00\x01\x02\xff\xfe GET\r\n\r\n", 400),
        (
            "bad header line",
            b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
            400,
        ),
        ("70 KB header", big.as_bytes(), 431),
        ("150 header fields", many.as_bytes(), 431),
    ];
    for (what, request, want) in cases {
        eprintln!("[{T}] {what} -> expect {want}");
        let r = Conn::open(port, t)
            .and_then(|mut c| c.raw(request))
            .unwrap_or_else(|e| panic!("{what}: no response: {e}\n{}", d.log_report()));
        assert_eq!(r.status, want, "{what}: {r:?}");
    }

    eprintln!("[{T}] valid requests on a new keep-alive connection");
    let mut c = Conn::open(port, t).unwrap();
    for i in 0..3 {
        let r = c.get(&format!("/after/{i}")).unwrap();
        assert_eq!(r.status, 200, "request {i} after the malformed ones: {r:?}");
        let body = Json::parse(&r.text()).unwrap();
        assert_eq!(
            body.get("path").and_then(Json::as_str),
            Some(format!("/after/{i}").as_str())
        );
    }
    eprintln!("[{T}] aetherctl logs e2e-http: the handlers' stdout and stderr");
    let logs = d.ctl_ok(&["logs", "e2e-http", "-n", "50"]);
    assert!(
        logs.contains("test-e2e-handler up: instance=")
            && logs.contains("test-e2e-handler stderr line"),
        "logs lack the handler's stdout/stderr lines: {logs:?}"
    );
    let stats = d.stats();
    assert!(
        status_count(&stats, "e2e-http", 400) >= 3,
        "400s not counted: {stats:?}"
    );
}

/// What one client request got.
#[derive(Debug, Clone)]
enum Outcome {
    Status(u16),
    Failed(String),
}

/// A handler crash under load: every request is answered, the instance restarts.
#[test]
fn handler_crash_under_load_answers_every_request_and_restarts() {
    const T: &str = "crash-under-load";
    let Some((d, port)) = serve_one(T, FunctionSpec::new("e2e-crash").timeout_ms(5_000)) else {
        return;
    };
    // Longer than timeout_ms: the gateway must answer 504 before this fires.
    let client_timeout = Duration::from_secs(8);

    let start_at = Instant::now();
    let stop_at = start_at + Duration::from_secs(3);
    // (client, sent at since start, took, path, outcome)
    type Record = (usize, Duration, Duration, &'static str, Outcome);
    let outcomes: Arc<Mutex<Vec<Record>>> = Arc::default();
    let crash: Arc<Mutex<Option<Outcome>>> = Arc::default();
    eprintln!("[{T}] 4 clients for 3 s; one sends POST /crash at 1 s");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let outcomes = outcomes.clone();
            let crash = crash.clone();
            std::thread::spawn(move || {
                let mut conn: Option<Conn> = None;
                let mut crashed = false;
                while Instant::now() < stop_at {
                    let path = if t == 0 && !crashed && start_at.elapsed() > Duration::from_secs(1)
                    {
                        crashed = true;
                        "/crash"
                    } else {
                        "/load"
                    };
                    let began = Instant::now();
                    let result = match conn.take() {
                        Some(c) => Ok(c),
                        None => Conn::open(port, client_timeout),
                    }
                    .and_then(|mut c| {
                        // POST: not idempotent, so the gateway must not replay
                        // it on another instance (a replayed GET /crash would
                        // kill that one too).
                        let r = if path == "/crash" {
                            c.raw(b"POST /crash HTTP/1.1\r\nHost: e2e\r\nContent-Length: 0\r\n\r\n")
                        } else {
                            c.get(path)
                        };
                        r.map(|r| (c, r))
                    });
                    let outcome = match result {
                        Ok((c, r)) => {
                            if !r.closes() {
                                conn = Some(c);
                            }
                            Outcome::Status(r.status)
                        }
                        Err(e) => Outcome::Failed(format!("{path}: {e}")),
                    };
                    if path == "/crash" {
                        *crash.lock().unwrap() = Some(outcome.clone());
                    }
                    let record = (t, began - start_at, began.elapsed(), path, outcome);
                    outcomes.lock().unwrap().push(record);
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let outcomes = outcomes.lock().unwrap().clone();
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for (t, at, took, path, o) in &outcomes {
        slowest = slowest.max(*took);
        match o {
            Outcome::Status(s) => *by_status.entry(*s).or_default() += 1,
            Outcome::Failed(e) => failures.push(format!("client {t} after {took:?}: {e}")),
        }
        if !matches!(o, Outcome::Status(200)) {
            eprintln!("[{T}]   client {t} {path} sent at {at:?}: {o:?} after {took:?}");
        }
    }
    eprintln!(
        "[{T}] {} requests in {:?}: {by_status:?}, {} failures, slowest {slowest:?}; /crash -> {:?}",
        outcomes.len(),
        start_at.elapsed(),
        failures.len(),
        crash.lock().unwrap()
    );
    for line in d
        .log()
        .lines()
        .filter(|l| !l.contains(" INFO ") || l.contains("e2e-crash-"))
    {
        eprintln!("[{T}]   log: {line}");
    }
    assert!(
        failures.is_empty(),
        "requests without an answer: {failures:#?}\n{}",
        d.log_report()
    );
    // timeout_ms is 5 s: the gateway answers by then (plus scheduling slack).
    assert!(
        slowest <= Duration::from_millis(6_500),
        "a request took {slowest:?}, past timeout_ms 5000"
    );
    let unexpected: Vec<_> = by_status
        .keys()
        .filter(|s| ![200, 502, 504].contains(*s))
        .collect();
    assert!(
        unexpected.is_empty(),
        "statuses other than 200/502/504: {by_status:?}"
    );
    assert!(
        by_status.get(&200).copied().unwrap_or(0) > 0,
        "no request succeeded: {by_status:?}"
    );
    match crash.lock().unwrap().clone() {
        Some(Outcome::Status(502)) => {}
        other => panic!(
            "/crash (the instance died with the request written) should get 502, got {other:?}"
        ),
    }
    // concurrency is 1: no other request was on the instance /crash killed,
    // so none of them may fail: each is served by the other core's instance
    // or waits in the queue for the restarted one.
    let load_502: Vec<String> = outcomes
        .iter()
        .filter(|(_, _, _, path, o)| *path == "/load" && matches!(o, Outcome::Status(502)))
        .map(|(t, at, took, _, _)| format!("client {t} sent at {at:?}, 502 after {took:?}"))
        .collect();
    let gateway_counters: Vec<String> = d
        .metrics()
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            !l.starts_with('#') && (l.contains("retries") || l.contains("upstream_connects"))
        })
        .map(str::to_string)
        .collect();
    eprintln!("[{T}] gateway counters: {gateway_counters:?}");
    assert!(
        load_502.is_empty(),
        "requests that never reached the crashing handler got 502 (should wait for the restart): {load_502:#?}\n{}",
        d.log_report()
    );

    eprintln!("[{T}] after the crash: list shows the restart and the function serves");
    await_restarted(&d, "e2e-crash");
    await_serving(&d, "e2e-crash");
    let crashes = metric_sum(&d.metrics().unwrap(), "aether_instance_crashes_total");
    assert_eq!(
        crashes,
        Some(1.0),
        "one POST /crash must crash exactly one instance (not be replayed)\n{}",
        d.log_report()
    );
    let stats = d.stats();
    assert!(
        status_count(&stats, "e2e-crash", 502) >= 1,
        "502 not counted: {stats:?}"
    );
}

/// A handler above its memory limit is OOM-killed, reported, and replaced.
#[test]
fn memory_limit_oom_kill_is_reported_and_function_recovers() {
    const T: &str = "memory-limit";
    if !require_memory_cgroup(T) {
        return;
    }
    let hog = FunctionSpec::new("e2e-hog")
        .memory_limit_mb(64)
        .timeout_ms(15_000);
    let Some((d, port)) = serve_one(T, hog) else {
        return;
    };

    eprintln!("[{T}] GET /hog (300 MB under a 64 MB limit)");
    let began = Instant::now();
    let r = http::get(port, "/hog", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("/hog: {e}\n{}", d.log_report()));
    eprintln!("[{T}] /hog -> {} after {:?}", r.status, began.elapsed());
    assert_eq!(
        r.status, 502,
        "/hog should fail with 502 (instance OOM-killed): {r:?}"
    );

    let mut metrics = String::new();
    let reported = wait_for(Duration::from_secs(10), || {
        metrics = d.metrics().unwrap_or_else(|e| panic!("{e}"));
        metric_sum(&metrics, "aether_instance_oom_kills_total").unwrap_or(0.0) >= 1.0
    });
    let oom_lines: Vec<&str> = metrics.lines().filter(|l| l.contains("oom")).collect();
    assert!(
        reported,
        "aether_instance_oom_kills_total never reached 1: {oom_lines:#?}\n{}",
        d.log_report()
    );
    eprintln!("[{T}] metrics: {oom_lines:?}");
    let log = d.log();
    let log_oom: Vec<&str> = log
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("oom"))
        .collect();
    eprintln!("[{T}] aetherd.log OOM lines: {log_oom:#?}");

    await_restarted(&d, "e2e-hog");
    await_serving(&d, "e2e-hog");
    let restarts_total = metric_sum(&d.metrics().unwrap(), "aether_instance_restarts_total");
    assert!(
        restarts_total >= Some(1.0),
        "restart not counted: {restarts_total:?}"
    );
}

/// aetherd SIGKILLed: its handlers die with it; the next `up` starts cleanly.
#[test]
fn sigkilled_daemon_leaves_no_handlers_and_next_up_works() {
    const T: &str = "sigkill";
    // With egress, so the next `up` also meets a stale bridge and NAT rule.
    let mut spec = FunctionSpec::new("e2e-kill");
    spec.egress = true;
    let Some((mut d, _)) = serve_one(T, spec) else {
        return;
    };
    let listed = d.instance_pids("e2e-kill");
    let tagged = d.handler_pids();
    assert!(!listed.is_empty(), "list shows no instance pids");
    for pid in &listed {
        assert!(
            tagged.contains(pid),
            "list pid {pid} not among the handler processes {tagged:?}"
        );
    }
    let aetherd = d.pid().expect("pidfile");
    eprintln!("[{T}] kill -9 aetherd {aetherd}; handlers {tagged:?}");
    common::kill(aetherd, libc::SIGKILL);
    let killed_at = Instant::now();
    assert!(
        wait_for(Duration::from_secs(2), || !common::alive(aetherd)),
        "aetherd {aetherd} survived SIGKILL for 2 s"
    );
    d.mark_stopped();
    let gone = wait_for(Duration::from_secs(2), || {
        common::still_alive(&tagged).is_empty()
    });
    let left = common::still_alive(&tagged);
    assert!(
        gone,
        "handlers {left:?} still alive 2 s after aetherd was SIGKILLed (parent-death signal)"
    );
    eprintln!(
        "[{T}] all handlers gone {:?} after the kill",
        killed_at.elapsed()
    );
    assert!(
        d.handler_pids().is_empty(),
        "tagged handlers left: {:?}",
        d.handler_pids()
    );

    let out = d.up_again();
    assert!(
        out.ok(),
        "`up` after a SIGKILLed aetherd failed: {out}\n{}",
        d.log_report()
    );
    let r = await_serving(&d, "e2e-kill");
    let new_pids = d.instance_pids("e2e-kill");
    assert!(
        new_pids.iter().all(|p| !listed.contains(p)),
        "old pids listed again: {new_pids:?} vs {listed:?}"
    );
    eprintln!(
        "[{T}] restarted: {} instance(s) {new_pids:?}, answered {}",
        new_pids.len(),
        r.status
    );
}

/// A handler slower than `timeout_ms` gets the client a 504 at the deadline.
#[test]
fn slow_handler_gets_504_at_timeout() {
    const T: &str = "timeout";
    let Some((d, port)) = serve_one(T, FunctionSpec::new("e2e-slow").timeout_ms(500)) else {
        return;
    };

    eprintln!("[{T}] GET /slow?ms=3000 with timeout_ms 500");
    let began = Instant::now();
    let r = http::get(port, "/slow?ms=3000", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("/slow: {e}\n{}", d.log_report()));
    let took = began.elapsed();
    eprintln!("[{T}] /slow -> {} after {took:?}", r.status);
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        took >= Duration::from_millis(450) && took <= Duration::from_millis(1_500),
        "504 after {took:?}, expected about 500 ms"
    );
    await_serving(&d, "e2e-slow");
    let stats = d.stats();
    assert!(
        status_count(&stats, "e2e-slow", 504) >= 1,
        "504 not counted: {stats:?}"
    );
}

/// `down` lets an in-flight request finish, then stops everything.
#[test]
fn down_drains_in_flight_request_then_stops() {
    const T: &str = "drain";
    let Some((mut d, port)) = serve_one(T, FunctionSpec::new("e2e-drain").timeout_ms(10_000))
    else {
        return;
    };
    let handlers = d.handler_pids();
    eprintln!("[{T}] GET /slow?ms=1500, then `down --drain-ms 2000` while it runs");
    let slow = std::thread::spawn(move || {
        let began = Instant::now();
        let r = http::get(port, "/slow?ms=1500", Duration::from_secs(10));
        (
            r.map(|r| r.status).map_err(|e| e.to_string()),
            began.elapsed(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let out = d.down();
    let (status, took) = slow.join().unwrap();
    eprintln!(
        "[{T}] in-flight request -> {status:?} after {took:?}; down -> {:?}",
        out.code
    );
    assert!(out.ok(), "`down` failed: {out}\n{}", d.log_report());
    assert_eq!(
        status,
        Ok(200),
        "the in-flight request was not drained\n{}",
        d.log_report()
    );
    assert!(
        http::refused(port),
        "port {port} still accepts connections after down"
    );
    let left = common::still_alive(&handlers);
    assert!(left.is_empty(), "handlers {left:?} outlived down");
}

/// SIGTERM stops aetherd like `down`: no handler, no control segment left.
#[test]
fn sigterm_stops_daemon_and_handlers() {
    const T: &str = "sigterm";
    let Some((mut d, port)) = serve_one(T, FunctionSpec::new("e2e-term")) else {
        return;
    };
    let handlers = d.handler_pids();
    let aetherd = d.pid().expect("pidfile");
    eprintln!("[{T}] kill -TERM {aetherd}; handlers {handlers:?}");
    common::kill(aetherd, libc::SIGTERM);
    let stopped = wait_for(Duration::from_secs(15), || !common::alive(aetherd));
    assert!(
        stopped,
        "aetherd {aetherd} still runs 15 s after SIGTERM\n{}",
        d.log_report()
    );
    d.mark_stopped();
    let left = common::still_alive(&handlers);
    assert!(left.is_empty(), "handlers {left:?} outlived SIGTERM");
    assert!(
        !d.control_segment().exists(),
        "control segment left after SIGTERM"
    );
    assert!(http::refused(port), "port {port} still accepts connections");
    let out = d.ctl(&["list"]);
    assert_eq!(out.code, Some(4), "list after SIGTERM: {out}");
}

/// Many aetherctl processes at once: every one gets its own correct answer.
#[test]
fn concurrent_aetherctl_calls_all_succeed() {
    const T: &str = "concurrent-ctl";
    let Some((d, _)) = serve_one(T, FunctionSpec::new("e2e-ctl")) else {
        return;
    };
    let d = Arc::new(d);
    eprintln!("[{T}] 8 threads x 5 rounds of list / stats / logs");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let d = d.clone();
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                for round in 0..5 {
                    let args: &[&str] = match (t + round) % 3 {
                        0 => &["list", "-o", "json"],
                        1 => &["stats", "-o", "json"],
                        _ => &["logs", "e2e-ctl", "-n", "5"],
                    };
                    let out = d.ctl_timeout(args, Duration::from_secs(30));
                    let valid = match args[0] {
                        "list" => Json::parse(&out.stdout)
                            .ok()
                            .is_some_and(|l| function_entry(&l, "e2e-ctl").is_some()),
                        "stats" => Json::parse(&out.stdout)
                            .ok()
                            .is_some_and(|s| s.get("uptime_ms").is_some()),
                        _ => out.stdout.contains("test-e2e-handler up"),
                    };
                    if !out.ok() || !valid {
                        errors.push(format!("thread {t} round {round} {args:?}: {out}"));
                    }
                }
                errors
            })
        })
        .collect();
    let errors: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        errors.is_empty(),
        "concurrent aetherctl calls failed: {errors:#?}"
    );
}

/// `egress` gives a handler outbound TCP through aetherd's bridge (NAT);
/// `egress: false` leaves it loopback only. The handler dials its default
/// gateway — the bridge address on this machine — so nothing leaves the host.
#[test]
fn egress_reaches_the_bridge_and_egress_false_cuts_it() {
    const T: &str = "egress";
    if !require_root(T) {
        return;
    }
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let lport = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(40);
            let mut accepted = 0;
            // SYNC: Relaxed: a plain stop flag, no data behind it.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        accepted += 1;
                        eprintln!("[{T}] host listener: connection from {peer}");
                        let _ = std::io::Write::write_all(&mut s, b"hello-from-host\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            accepted
        })
    };
    let mut on = FunctionSpec::new("e2e-egress-on");
    on.egress = true;
    let mut d = start(T, vec![on, FunctionSpec::new("e2e-egress-off")]);
    if let Some(line) = d
        .log()
        .lines()
        .find(|l| l.contains("egress network unavailable"))
    {
        eprintln!("SKIP {T}: aetherd could not set up the egress bridge: {line}");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        server.join().unwrap();
        return;
    }
    await_serving(&d, "e2e-egress-on");
    await_serving(&d, "e2e-egress-off");
    let path = format!("/egress?port={lport}");

    eprintln!("[{T}] e2e-egress-on GET {path}");
    let r = http::get(d.port("e2e-egress-on"), &path, Duration::from_secs(10)).unwrap();
    let body = Json::parse(&r.text()).unwrap_or_else(|e| panic!("{e}: {}", r.text()));
    eprintln!("[{T}]   -> {body:?}");
    assert_eq!(
        body.get("read").and_then(Json::as_str),
        Some("hello-from-host\n"),
        "egress: true could not reach the bridge: {body:?}\n{}",
        d.log_report()
    );

    let gateway = body
        .get("gateway")
        .and_then(Json::as_str)
        .unwrap()
        .to_string();

    eprintln!("[{T}] e2e-egress-off GET {path}");
    let r = http::get(d.port("e2e-egress-off"), &path, Duration::from_secs(10)).unwrap();
    let body = Json::parse(&r.text()).unwrap_or_else(|e| panic!("{e}: {}", r.text()));
    eprintln!("[{T}]   -> {body:?}");
    assert!(
        body.get("read").is_none() && body.get("error").is_some(),
        "egress: false still reached the network: {body:?}"
    );
    // SYNC: Relaxed: see the server loop.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        server.join().unwrap(),
        1,
        "the host listener saw a connection other than the egress-on handler's"
    );

    eprintln!("[{T}] down: the bridge address {gateway} and its NAT rule must go");
    let out = d.down();
    assert!(out.ok(), "down: {out}");
    let addrs = command_output("ip", &["-o", "-4", "addr", "show"]);
    assert!(
        !addrs.contains(&format!("inet {gateway}/")),
        "bridge address {gateway} still configured after down:\n{addrs}"
    );
    let subnet = gateway
        .rsplitn(3, '.')
        .nth(2)
        .unwrap_or_default()
        .to_string();
    let nat = command_output("iptables", &["-t", "nat", "-S"]);
    assert!(
        !nat.lines().any(|l| l.contains(&format!("{subnet}.0.0/"))),
        "NAT rule for {subnet}.0.0/16 still present after down:\n{nat}"
    );
}

/// stdout of a system command (ip, iptables) that must succeed.
fn command_output(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Tally of one client's answers (status, or the error) and how long its
/// failures spanned (first to last).
type LoadTally = (BTreeMap<String, usize>, Option<Duration>);

/// A client that sends `GET path` over keep-alive connections until `stop`
/// (or 20 s); failed attempts are spaced 5 ms apart, so the count is bounded.
fn keep_calling(
    port: u16,
    path: &'static str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<LoadTally> {
    std::thread::spawn(move || {
        let mut tally: BTreeMap<String, usize> = BTreeMap::new();
        let mut conn: Option<Conn> = None;
        let mut window: Option<(Instant, Instant)> = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        // SYNC: Relaxed: a plain stop flag, no data behind it.
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            let reused = conn.is_some();
            let fresh = || {
                Conn::open(port, Duration::from_secs(8))
                    .and_then(|mut c| c.get(path).map(|r| (c, r)))
            };
            let mut result = match conn.take() {
                Some(c) => Ok(c),
                None => Conn::open(port, Duration::from_secs(8)),
            }
            .and_then(|mut c| c.get(path).map(|r| (c, r)));
            // RFC 9112 §9.3.1: a server may close an idle keep-alive
            // connection at any time (the old version's gateway does when it
            // drains), and a client retries an idempotent request that failed
            // on a *reused* connection. Only a failure on a fresh connection
            // counts.
            if result.is_err() && reused {
                *tally
                    .entry("(retried on a new connection)".into())
                    .or_default() += 1;
                result = fresh();
            }
            let key = match result {
                Ok((c, r)) => {
                    if !r.closes() {
                        conn = Some(c);
                    }
                    r.status.to_string()
                }
                Err(e) => {
                    std::thread::sleep(Duration::from_millis(5));
                    let now = Instant::now();
                    window = Some(window.map_or((now, now), |(first, _)| (first, now)));
                    format!("error: {e}")
                }
            };
            *tally.entry(key).or_default() += 1;
        }
        (tally, window.map(|(first, last)| last - first))
    })
}

/// Redeploying a changed function under load: the old instances serve until
/// the new ones are ready, so no request fails.
#[test]
fn update_under_load_fails_no_request() {
    const T: &str = "update-under-load";
    let spec = FunctionSpec::new("e2e-roll").env("E2E_VERSION", "1");
    let Some((d, port)) = serve_one(T, spec.clone()) else {
        return;
    };
    let file = d.path("v2.yaml");
    let mut v2 = spec;
    v2.port = port;
    v2.environment = vec![("E2E_VERSION".into(), "2".into())];
    d.write_config(&file, std::slice::from_ref(&v2));

    eprintln!("[{T}] 2 keep-alive clients; deploy E2E_VERSION 2 while they call");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| keep_calling(port, "/during", stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let out = d.ctl_ok(&["deploy", &file.display().to_string()]);
    assert!(
        out.lines().any(|l| l == "update e2e-roll"),
        "deploy output: {out:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    // SYNC: Relaxed: see keep_calling.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut during: BTreeMap<String, usize> = BTreeMap::new();
    let mut windows = Vec::new();
    for t in load {
        let (tally, window) = t.join().unwrap();
        windows.push(window);
        for (k, n) in tally {
            *during.entry(k).or_default() += n;
        }
    }
    eprintln!("[{T}] answers: {during:?}; failures spanned {windows:?}");
    let r = http::get(port, "/v", Duration::from_secs(5)).unwrap();
    let version = Json::parse(&r.text())
        .ok()
        .and_then(|b| b.get("version").and_then(Json::as_str).map(str::to_string));
    assert_eq!(version.as_deref(), Some("2"), "not updated: {}", r.text());
    assert!(
        during
            .keys()
            .all(|k| k == "200" || k == "(retried on a new connection)"),
        "requests failed while e2e-roll was updated (failures spanned {windows:?}): {during:?}\n{}",
        d.log_report()
    );
}
