//! CRIU against the real kernel: an instance spawned the way aetherd spawns
//! them (pid 1 of its own pid namespace, session leader, pre-made network
//! namespace, memory cgroup) is dumped with `--leave-running`, killed, and
//! restored into fresh pre-made network namespaces; its in-memory state must
//! survive. Needs root and a working CRIU; every test says SKIP loudly and
//! returns otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dataplane::criu::{netns_inode, Criu, CriuError, DumpOptions, ExternalNetns, RestoreOptions};
use dataplane::instance::netns::Netns;
use dataplane::instance::{start, Instance, InstanceSpec};

use common::TestCgroups;

const PORT: u16 = 18480;
const NETNS_KEY: &str = "aether-net";

/// Root, a working CRIU, a cgroup group and temp dirs; removes the group on drop.
struct Env {
    criu: Criu,
    cgroups: TestCgroups,
    dir: tempfile::TempDir,
    /// Images on tmpfs, as aetherd keeps them.
    images: tempfile::TempDir,
}

impl Env {
    fn new(name: &str) -> Option<Self> {
        let cgroups = TestCgroups::new(name, "CRIU, namespaces, cgroups")?;
        let criu = Criu::new(
            std::env::var("AETHER_CRIU")
                .unwrap_or_else(|_| dataplane::criu::DEFAULT_CRIU_PATH.into()),
        );
        if let Err(e) = criu.check() {
            eprintln!("SKIP {name}: CRIU does not work here: {e}");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("aeth").tempdir().unwrap();
        let shm = Path::new("/dev/shm");
        let images = if shm.is_dir() {
            tempfile::Builder::new().prefix("aeth-img").tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("aeth-img").tempdir()
        }
        .unwrap();
        Some(Self {
            criu,
            cgroups,
            dir,
            images,
        })
    }

    fn spec(&self) -> InstanceSpec {
        let handler = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/criu_support/counter.py");
        let python = if Path::new("/usr/bin/python3").exists() {
            PathBuf::from("/usr/bin/python3")
        } else {
            PathBuf::from("python3")
        };
        InstanceSpec {
            function_id: "counter".to_owned(),
            program: python,
            args: vec![handler.display().to_string()],
            environment: BTreeMap::new(),
            trigger_port: PORT,
            memory_limit_bytes: 128 << 20,
            handshake_timeout: Duration::from_secs(10),
            egress: false,
            cpu: None,
            log_dir: self.dir.path().join("logs"),
            state_dir: self.dir.path().join("state"),
        }
    }

    fn start(&self, id: &str) -> Instance {
        let ns = Netns::create(None).unwrap();
        start(&self.spec(), id, &self.cgroups, ns)
            .unwrap()
            .wait()
            .unwrap()
    }
}

/// A restored process tree (our child: `--restore-sibling`): SIGKILLed and
/// reaped on drop.
struct Restored(i32);

impl Drop for Restored {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a pid CRIU reported; at worst ESRCH.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
        let _ = dataplane::instance::spawn::wait_blocking(self.0);
    }
}

/// GET / over `s`; returns the body.
fn get(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    text.split_once("\r\n\r\n").unwrap().1.to_owned()
}

fn get_in(ns: &Netns) -> String {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, PORT);
    get(ns.tcp_connect(addr, Some(Duration::from_secs(5))).unwrap())
}

/// Dumps `inst` into the images dir, left running, netns external under
/// [`NETNS_KEY`].
fn dump_running(env: &Env, inst: &Instance) {
    let opts = DumpOptions {
        leave_running: true,
        external_netns: Some(ExternalNetns {
            inode: netns_inode(inst.pid()).unwrap(),
            key: NETNS_KEY.to_owned(),
        }),
        // The namespace is external and private: nothing to lock.
        skip_network_lock: true,
        ..DumpOptions::default()
    };
    let report = match env.criu.dump(inst.pid(), env.images.path(), &opts) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    eprintln!(
        "criu dump: {:.1} ms, images {} KiB",
        report.duration.as_secs_f64() * 1e3,
        report.images_bytes >> 10
    );
    assert!(report.images_bytes > 1 << 20, "{report:?}");
}

/// Starts an instance, serves 3 requests, dumps it (left running, netns
/// external under [`NETNS_KEY`]) and kills it.
fn snapshot(env: &Env) {
    let mut inst = env.start("c0");
    for n in 1..=3 {
        assert_eq!(
            get(inst.connect_upstream().unwrap()),
            format!("count={n} pid=1")
        );
    }
    dump_running(env, &inst);
    // --leave-running: the original still serves, with its state.
    assert_eq!(get(inst.connect_upstream().unwrap()), "count=4 pid=1");
    inst.kill_and_wait().unwrap();
}

fn restore_options<'a>(env: &Env, ns: &'a Netns, work: &str) -> RestoreOptions<'a> {
    RestoreOptions {
        netns: Some((ns.fd(), NETNS_KEY.to_owned())),
        work_dir: Some(env.dir.path().join(work)),
        sibling: true,
        ..RestoreOptions::default()
    }
}

/// `pid` lives in `ns` (the pre-made namespace, not a copy CRIU made).
fn assert_joined(pid: i32, ns: &Netns) {
    let want = std::fs::metadata(format!("/proc/self/fd/{}", ns.fd().as_raw_fd()))
        .unwrap()
        .ino();
    assert_eq!(netns_inode(pid).unwrap(), want);
}

fn restore_into(env: &Env, ns: &Netns) -> Restored {
    let r = match env
        .criu
        .restore(env.images.path(), &restore_options(env, ns, "r0"))
    {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    eprintln!(
        "criu restore: {:.1} ms, pid {}",
        r.duration.as_secs_f64() * 1e3,
        r.pid
    );
    assert_joined(r.pid, ns);
    Restored(r.pid)
}

#[test]
fn state_survives_dump_and_restore_into_premade_netns() {
    let Some(env) = Env::new("criu_state") else {
        return;
    };
    snapshot(&env);
    let ns = Netns::create(None).unwrap();
    let _restored = restore_into(&env, &ns);
    let t = Instant::now();
    // The counter was 3 at the dump: the restored copy continues from there.
    assert_eq!(get_in(&ns), "count=4 pid=1");
    eprintln!(
        "first request after restore: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(get_in(&ns), "count=5 pid=1");
}

/// Copies restored at once by `ten_concurrent_restores_of_one_image_all_serve`.
const COPIES: usize = 10;

#[test]
fn ten_concurrent_restores_of_one_image_all_serve() {
    let Some(env) = Env::new("criu_ten") else {
        return;
    };
    snapshot(&env);
    let namespaces: Vec<Netns> = (0..COPIES).map(|_| Netns::create(None).unwrap()).collect();
    // Each copy in its own memory cgroup, made ahead with its limit.
    let cgroups: Vec<_> = (0..COPIES)
        .map(|i| {
            env.cgroups
                .create("counter", &format!("r{i}"), 96 << 20)
                .unwrap()
        })
        .collect();
    // All started from this thread (the restored roots' parent: their death
    // signal fires when it exits), running at once.
    let t = Instant::now();
    let pending: Vec<_> = namespaces
        .iter()
        .zip(&cgroups)
        .enumerate()
        .map(|(i, (ns, cg))| {
            let mut opts = restore_options(&env, ns, &format!("r{i}"));
            opts.cgroup = Some(cg.path().to_path_buf());
            env.criu.restore_start(env.images.path(), &opts).unwrap()
        })
        .collect();
    let restored: Vec<Restored> = pending
        .into_iter()
        .map(|p| match p.wait() {
            Ok(r) => {
                eprintln!(
                    "criu restore: {:.1} ms, pid {}",
                    r.duration.as_secs_f64() * 1e3,
                    r.pid
                );
                Restored(r.pid)
            }
            Err(e) => panic!("{e}"),
        })
        .collect();
    eprintln!(
        "{COPIES} concurrent restores: {:.1} ms wall",
        t.elapsed().as_secs_f64() * 1e3
    );
    for ((r, ns), cg) in restored.iter().zip(&namespaces).zip(&cgroups) {
        assert_joined(r.0, ns);
        let mine = std::fs::read_to_string(format!("/proc/{}/cgroup", r.0)).unwrap();
        assert_eq!(
            cg.pids().unwrap(),
            vec![r.0],
            "{}\n{mine}",
            cg.path().display()
        );
        // Its restored pages are charged to its own cgroup.
        let usage = ["memory.usage_in_bytes", "memory.current"]
            .iter()
            .find_map(|f| std::fs::read_to_string(cg.path().join(f)).ok())
            .unwrap();
        let usage: u64 = usage.trim().parse().unwrap();
        assert!(
            usage > 4 << 20,
            "{} uses {usage} bytes",
            cg.path().display()
        );
    }
    let pids: std::collections::BTreeSet<i32> = restored.iter().map(|r| r.0).collect();
    assert_eq!(pids.len(), COPIES, "distinct processes");
    // Each copy has its own state, starting from the dumped counter.
    for ns in &namespaces {
        assert_eq!(get_in(ns), "count=4 pid=1");
    }
    for ns in &namespaces {
        assert_eq!(get_in(ns), "count=5 pid=1");
    }
}

/// The original quickstart handler, unchanged (it keeps its `AETHER_SOCKET`
/// connection open), survives dump and restore.
#[test]
fn quickstart_hello_py_restores() {
    let Some(env) = Env::new("criu_hello") else {
        return;
    };
    let mut spec = env.spec();
    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello.py");
    spec.args = vec![hello.display().to_string()];
    let ns = Netns::create(None).unwrap();
    let mut inst = start(&spec, "h0", &env.cgroups, ns)
        .unwrap()
        .wait()
        .unwrap();
    dump_running(&env, &inst);
    inst.kill_and_wait().unwrap();
    let ns = Netns::create(None).unwrap();
    let _restored = restore_into(&env, &ns);
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, PORT);
    let body = get(ns.tcp_connect(addr, Some(Duration::from_secs(5))).unwrap());
    assert!(body.contains("Hello from Aetherless!"), "{body}");
}

/// Missing images: a typed failure whose log tail says what went wrong.
#[test]
fn restore_of_missing_images_explains_itself() {
    let Some(env) = Env::new("criu_missing") else {
        return;
    };
    let ns = Netns::create(None).unwrap();
    match env
        .criu
        .restore(env.images.path(), &restore_options(&env, &ns, "m"))
    {
        Err(CriuError::Failed {
            action,
            status,
            log,
            log_tail,
        }) => {
            eprintln!("expected failure ({status}), log tail:\n{log_tail}");
            assert_eq!(action, "restore");
            assert!(!status.success());
            assert!(log.ends_with("m/restore.log"), "{}", log.display());
            assert!(log_tail.contains("Error"), "{log_tail}");
        }
        other => panic!("expected CriuError::Failed, got {other:?}"),
    }
}

/// The restore speed ladder (images dumped with `--network-lock skip`):
/// plain; with CRIU's kernel-probe cache on a private tmpfs `/run`; plus a
/// pre-made cgroup (`--manage-cgroups=ignore`). Every copy must serve its state; the times are
/// printed (not asserted: two shared cores make them noisy).
#[test]
fn restore_speed_ladder_all_serve() {
    let Some(env) = Env::new("criu_ladder") else {
        return;
    };
    snapshot(&env);
    let cached = env.criu.clone().with_run_cache().unwrap();
    let steps = [
        "plain",
        "+ /run cache",
        "+ pre-made cgroup (--manage-cgroups=ignore)",
    ];
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..5 {
        for (step, criu) in [&env.criu, &cached, &cached].into_iter().enumerate() {
            let ns = Netns::create(None).unwrap();
            let mut opts = restore_options(&env, &ns, "c");
            let cg = (step == 2).then(|| {
                env.cgroups
                    .create("counter", &format!("s{round}"), 96 << 20)
                    .unwrap()
            });
            if let Some(cg) = &cg {
                opts.cgroup = Some(cg.path().to_path_buf());
            }
            let r = match criu.restore(env.images.path(), &opts) {
                Ok(r) => r,
                Err(e) => panic!("{}: {e}", steps[step]),
            };
            let _restored = Restored(r.pid);
            assert_eq!(
                get_in(&ns),
                "count=4 pid=1",
                "{} round {round}",
                steps[step]
            );
            times[step].push(r.duration);
            if step > 0 {
                // The cache lives in the restored process's mount namespace.
                let kdat = format!("/proc/{}/root/run/criu.kdat", r.pid);
                assert!(Path::new(&kdat).exists(), "{kdat}");
            }
        }
    }
    for (step, t) in steps.iter().zip(&times) {
        let ms: Vec<String> = t
            .iter()
            .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
            .collect();
        eprintln!("criu restore, {step}: {} ms", ms.join(" "));
    }
}

/// A restore past its budget is killed: a typed error with the measured
/// time, and killing its pre-made cgroup leaves nothing behind.
#[test]
fn restore_over_budget_is_killed_with_a_typed_error() {
    let Some(env) = Env::new("criu_budget") else {
        return;
    };
    snapshot(&env);
    let ns = Netns::create(None).unwrap();
    let cg = env.cgroups.create("counter", "late", 96 << 20).unwrap();
    let mut opts = restore_options(&env, &ns, "late");
    opts.cgroup = Some(cg.path().to_path_buf());
    let budget = Duration::from_millis(2);
    let pending = env.criu.restore_start(env.images.path(), &opts).unwrap();
    match pending.wait_within(budget) {
        Err(CriuError::Timeout {
            budget: b, elapsed, ..
        }) => {
            eprintln!("killed after {:.1} ms", elapsed.as_secs_f64() * 1e3);
            assert_eq!(b, budget);
            assert!(elapsed >= budget, "{elapsed:?}");
        }
        other => panic!("expected CriuError::Timeout, got {other:?}"),
    }
    // Whatever it had restored is in the cgroup: kill it, and it is gone.
    for pid in cg.pids().unwrap() {
        // SAFETY: kill(2) on a pid listed in our cgroup.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let t = Instant::now();
    while !cg.pids().unwrap().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", cg.pids());
        std::thread::sleep(Duration::from_millis(5));
    }
    // With a generous budget the same restore serves.
    let pending = env.criu.restore_start(env.images.path(), &opts).unwrap();
    let r = match pending.wait_within(Duration::from_secs(10)) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    let _restored = Restored(r.pid);
    assert_eq!(get_in(&ns), "count=4 pid=1");
}
