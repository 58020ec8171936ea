//! End-to-end test of aetherd with the XDP port policy (issue 5): the real
//! `aetherd` and `aetherctl`, real packets over a veth pair.
//!
//! Run: `cargo build -p control && cargo test -p dataplane --test e2e_xdp -- --nocapture`
//! (as root). It prints `SKIP <test>: <reason>` and returns without root,
//! without `ip` (iproute2) or when the kernel refuses to load the program.
//!
//! ```text
//!  root namespace                               namespace aexN<pid>-<k>
//!  aetherd, XDP (generic, strict) on aeX<pid><k> aeY<pid><k> 10.251.<n>.2/30
//!  aeX<pid><k> 10.251.<n>.1/30  ◄───── veth ─────►  clients (a thread in it)
//! ```
//!
//! | step | proves |
//! |---|---|
//! | before aetherd | a listener on another port is reachable from the namespace (the set-up routes) |
//! | `up` with `orchestrator.xdp` | the program is attached (`ip link` shows `xdpgeneric`); the function answers 200 on the veth address |
//! | strict | a connect to the other port times out (dropped, not reset) |
//! | live deploy / undeploy | a deployed function's port connects; once undeployed, it times out |
//! | metrics | `aether_xdp_packets_total` counts the function's port, `aether_xdp_drops_total` the other port (under port 0, function `(none)`) |
//! | `down` | the program is detached: the other port is reachable again |
//! | `up --xdp IFACE`, no `orchestrator.xdp` | attached, not strict: the other port stays reachable; the function's port is counted |
//! | `orchestrator.xdp` on a missing interface | aetherd exits 1 naming the interface and the cause, before any handler starts |

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use common::http::Conn;
use common::{require_root, wait_for, Daemon, FunctionSpec};

/// How long a connect may take before it counts as dropped.
const DROP_TIMEOUT: Duration = Duration::from_millis(1500);

/// Run `ip ARGS`; Err carries stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace joined to the root namespace by a veth pair; both
/// are deleted on drop.
struct VethNetns {
    ns: String,
    host: String,
    host_addr: Ipv4Addr,
}

impl VethNetns {
    /// Pair `k` (0..=9) of this test process.
    fn create(k: u32) -> Result<VethNetns, String> {
        let pid = std::process::id();
        let n = u8::try_from((pid * 10 + k) % 250).unwrap() + 1;
        let guard = VethNetns {
            ns: format!("aexN{pid}-{k}"),
            host: format!("aeX{pid}{k}"),
            host_addr: Ipv4Addr::new(10, 251, n, 1),
        };
        let peer = format!("aeY{pid}{k}");
        // Leftovers of an earlier run with the same pid.
        let _ = ip(&["link", "del", &guard.host]);
        let _ = ip(&["netns", "del", &guard.ns]);
        let host_cidr = format!("{}/30", guard.host_addr);
        let peer_cidr = format!("10.251.{n}.2/30");
        ip(&["netns", "add", &guard.ns])?;
        ip(&[
            "link",
            "add",
            &guard.host,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &guard.ns])?;
        ip(&["addr", "add", &host_cidr, "dev", &guard.host])?;
        ip(&["link", "set", &guard.host, "up"])?;
        let ns = guard.ns.as_str();
        ip(&["-n", ns, "addr", "add", &peer_cidr, "dev", &peer])?;
        ip(&["-n", ns, "link", "set", &peer, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(guard)
    }

    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.host_addr, port))
    }

    /// Run `f` on a thread that entered the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: the fd is a namespace file open for the whole call;
            // CLONE_NEWNET moves only this (short-lived) thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }

    /// A TCP connect from inside the namespace: Ok, or the error's kind.
    fn connect(&self, port: u16, timeout: Duration) -> Result<(), io::ErrorKind> {
        let addr = self.addr(port);
        self.run(move || {
            TcpStream::connect_timeout(&addr, timeout)
                .map(drop)
                .map_err(|e| e.kind())
        })
    }

    /// Whether the program is attached to the host end (`ip link` says so).
    fn xdp_attached(&self) -> bool {
        ip(&["link", "show", "dev", &self.host]).is_ok_and(|s| s.contains("xdp"))
    }
}

impl Drop for VethNetns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["link", "del", &self.host]) {
            eprintln!("cleanup: {e}");
        }
        if let Err(e) = ip(&["netns", "del", &self.ns]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Root, iproute2 and a kernel that loads the XDP program; a SKIP line otherwise.
fn xdp_available(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    if let Err(e) = ip(&["-V"]) {
        eprintln!("SKIP {test}: no iproute2: {e}");
        return false;
    }
    if let Err(e) = bpf::XdpPolicy::load() {
        eprintln!("SKIP {test}: the kernel refuses the XDP program: {e}");
        return false;
    }
    true
}

/// The checks of [`xdp_available`], veth pair `k`, and a listener on
/// `0.0.0.0:<free port>` (the "other" port, of no function) with its port.
fn setup(test: &str, k: u32) -> Option<(VethNetns, TcpListener, u16)> {
    if !xdp_available(test) {
        return None;
    }
    let net = VethNetns::create(k).unwrap();
    let other = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let other_port = other.local_addr().unwrap().port();
    Some((net, other, other_port))
}

/// The value of `name{port="P",function="F"}`, if that sample exists.
fn sample(text: &str, name: &str, port: u16, function: &str) -> Option<u64> {
    let series = format!("{name}{{port=\"{port}\",function=\"{function}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn strict_xdp_passes_functions_and_drops_other_ports() {
    const T: &str = "e2e_xdp";
    let Some((net, other, other_port)) = setup(T, 0) else {
        return;
    };
    assert_eq!(
        net.connect(other_port, DROP_TIMEOUT),
        Ok(()),
        "without XDP the namespace must reach {}",
        net.addr(other_port)
    );

    let xdp_yaml = format!(
        "  xdp:\n    interface: {}\n    mode: generic\n    strict: true\n    allow_ports: [22]\n",
        net.host
    );
    let mut d = Daemon::configure(T, vec![FunctionSpec::new("xdp-fn")])
        .with_orchestrator("0.0.0.0", &xdp_yaml)
        .up()
        .unwrap_or_else(|e| panic!("[{T}] {e}"));
    let port = d.port("xdp-fn");
    assert!(net.xdp_attached(), "ip link shows no XDP on {}", net.host);
    assert!(d.log().contains("XDP attached to"), "{}", d.log_report());

    eprintln!("[{T}] GET {} from the namespace", net.addr(port));
    assert_eq!(get_from_netns(&net, port), Ok(200), "{}", d.log_report());

    eprintln!("[{T}] connect to the other port {other_port}: dropped in strict mode");
    assert_eq!(
        net.connect(other_port, DROP_TIMEOUT),
        Err(io::ErrorKind::TimedOut)
    );

    eprintln!("[{T}] deploy a second function: its port passes; undeploy: dropped");
    let mut second = FunctionSpec::new("xdp-second");
    second.port = common::free_port();
    let file = d.path("second.yaml");
    d.write_config(&file, std::slice::from_ref(&second));
    d.ctl_ok(&["deploy", &file.display().to_string()]);
    assert_eq!(net.connect(second.port, DROP_TIMEOUT), Ok(()));
    d.ctl_ok(&["undeploy", "xdp-second"]);
    assert_eq!(
        net.connect(second.port, DROP_TIMEOUT),
        Err(io::ErrorKind::TimedOut)
    );

    let text = d.metrics().unwrap();
    let packets = sample(&text, "aether_xdp_packets_total", port, "xdp-fn");
    let bytes = sample(&text, "aether_xdp_bytes_total", port, "xdp-fn");
    let fn_drops = sample(&text, "aether_xdp_drops_total", port, "xdp-fn");
    let other_drops = sample(&text, "aether_xdp_drops_total", 0, "(none)");
    eprintln!(
        "[{T}] function port: packets {packets:?} bytes {bytes:?} drops {fn_drops:?}; other ports: drops {other_drops:?}"
    );
    // A GET is at least SYN, ACK and the request: three packets of 54+ bytes.
    assert!(packets.is_some_and(|p| p >= 3), "{text}");
    assert!(bytes.is_some_and(|b| b >= 3 * 54), "{text}");
    assert_eq!(fn_drops, Some(0), "{text}");
    // Each timed-out connect sent at least one SYN.
    assert!(other_drops.is_some_and(|n| n >= 2), "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("aether_xdp_") && l.contains("\"xdp-second\"")),
        "undeployed function still has XDP series:\n{text}"
    );

    let out = d.down();
    assert!(out.ok(), "{out}");
    assert!(
        wait_for(Duration::from_secs(5), || !net.xdp_attached()),
        "XDP still attached to {} after down",
        net.host
    );
    assert_eq!(
        net.connect(other_port, DROP_TIMEOUT),
        Ok(()),
        "after down the other port must be reachable again"
    );
    drop(other);
}

/// The GET of `port` on the veth address from inside the namespace, retried
/// for up to 15 s until 200: Ok(200) or the last outcome.
fn get_from_netns(net: &VethNetns, port: u16) -> Result<u16, String> {
    let addr = net.addr(port);
    net.run(move || {
        let mut last = String::new();
        for _ in 0..150 {
            match Conn::open_addr(addr, Duration::from_secs(5)).and_then(|mut c| c.get("/")) {
                Ok(r) if r.status == 200 => return Ok(200),
                Ok(r) => last = format!("status {}", r.status),
                Err(e) => last = format!("error {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last)
    })
}

/// `aetherctl up --xdp IFACE` without `orchestrator.xdp`: attached (auto
/// mode), not strict, counting the function's port.
#[test]
fn xdp_flag_alone_attaches_without_strict_mode() {
    const T: &str = "e2e_xdp_flag";
    let Some((net, other, other_port)) = setup(T, 1) else {
        return;
    };
    let mut d = Daemon::configure(T, vec![FunctionSpec::new("xdp-flag")])
        .with_orchestrator("0.0.0.0", "")
        .up_with(&["--xdp", &net.host])
        .unwrap_or_else(|e| panic!("[{T}] {e}"));
    let port = d.port("xdp-flag");
    assert!(net.xdp_attached(), "ip link shows no XDP on {}", net.host);
    assert!(
        d.log().contains("strict false, allowed ports [22]"),
        "{}",
        d.log_report()
    );
    assert_eq!(get_from_netns(&net, port), Ok(200), "{}", d.log_report());
    assert_eq!(
        net.connect(other_port, DROP_TIMEOUT),
        Ok(()),
        "not strict: the other port must stay reachable"
    );
    let text = d.metrics().unwrap();
    let packets = sample(&text, "aether_xdp_packets_total", port, "xdp-flag");
    assert!(packets.is_some_and(|p| p >= 3), "{text}");
    // Not strict: unknown ports pass uncounted.
    assert_eq!(
        sample(&text, "aether_xdp_drops_total", 0, "(none)"),
        None,
        "{text}"
    );
    assert!(d.down().ok());
    assert!(
        wait_for(Duration::from_secs(5), || !net.xdp_attached()),
        "XDP still attached to {} after down",
        net.host
    );
    drop(other);
}

/// `orchestrator.xdp` on a missing interface: aetherd stops at start-up with
/// exit code 1 and an error naming the interface and the cause.
#[test]
fn attach_failure_is_a_startup_error() {
    const T: &str = "e2e_xdp_attach_failure";
    if !xdp_available(T) {
        return;
    }
    let missing = format!("aeZ{}", std::process::id());
    let d = Daemon::configure(T, vec![FunctionSpec::new("xdp-never")]).with_orchestrator(
        "127.0.0.1",
        &format!("  xdp:\n    interface: {missing}\n    mode: generic\n"),
    );
    let mut child = Command::new(common::aetherd())
        .arg("-c")
        .arg(&d.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    let exited = wait_for(Duration::from_secs(20), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("aetherd did not stop within 20 s with interface {missing} missing");
    }
    let mut stderr = String::new();
    io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    eprintln!("[{T}] {}", stderr.trim());
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot attach the XDP program to {missing}"))
            && stderr.contains("no network interface"),
        "{stderr}"
    );
    assert!(
        d.handler_pids().is_empty(),
        "a handler started despite the failure"
    );
}
