//! Network namespaces for instances, prepared ahead of need.
//!
//! A namespace is made on a helper thread: `unshare(CLONE_NEWNET)`, keep the
//! fd of `/proc/thread-self/ns/net`, bring `lo` up with `SIOCSIFFLAGS` on a
//! socket created inside, `setns` back to the thread's home namespace. The
//! namespace lives as long as its fd or a process in it.
//!
//! **Egress** (optional per namespace): aetherd owns a bridge (`aether0`,
//! 10.200.0.1/16 by default, see [`EgressConfig`]) with NAT (iptables
//! `MASQUERADE` for the subnet, `ip_forward=1`). Each egress namespace gets a
//! veth pair: `eth0` inside (an address from the subnet, default route via
//! the bridge address), `<veth_prefix><n>` outside, attached to the bridge.
//! The veth pair and bridge are built with `ip`/`iptables` subprocesses:
//! this happens only while *preparing* a namespace (on the pool thread), never
//! on an instance's start path. The veth pair disappears with its namespace;
//! [`Egress`] removes the bridge and its iptables rules on drop, and
//! [`Egress::cleanup_stale`] does so for leftovers of a previous aetherd.
//!
//! Entering a namespace from any thread ([`Netns::enter`]) switches the
//! calling thread with `setns` and switches it back to the thread's home
//! namespace (an fd opened on the thread's first use) before returning.

use std::cell::OnceCell;
use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Errors of namespace preparation.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A syscall failed.
    #[error("{op} while preparing a network namespace: {source}")]
    Sys {
        /// The operation (`unshare(CLONE_NEWNET)`, `setns`, `SIOCSIFFLAGS lo`, ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An `ip` or `iptables` command failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The egress subnet has no free address.
    #[error("egress subnet {subnet}/{prefix_len} has no free address left")]
    SubnetExhausted {
        /// Subnet address.
        subnet: Ipv4Addr,
        /// Prefix length.
        prefix_len: u8,
    },
    /// The helper thread could not be started or died.
    #[error("network namespace helper thread failed: {0}")]
    Thread(String),
}

fn sys(op: &'static str) -> impl FnOnce(io::Error) -> NetnsError {
    move |source| NetnsError::Sys { op, source }
}

thread_local! {
    /// The namespace this thread lives in, opened on first use.
    static HOME_NETNS: OnceCell<OwnedFd> = const { OnceCell::new() };
}

fn open_thread_netns() -> io::Result<OwnedFd> {
    Ok(OwnedFd::from(File::open("/proc/thread-self/ns/net")?))
}

fn setns_net(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns(2) only reads the fd number; a bad fd yields EBADF/EINVAL.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs `f` with the calling thread inside the namespace `ns`, then returns
/// the thread to its home namespace. If switching back fails the thread would
/// silently run everything else (listeners, connections) in the wrong
/// namespace, so the process aborts instead.
fn with_netns<T>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T) -> io::Result<T> {
    HOME_NETNS.with(|home| {
        let home = match home.get() {
            Some(h) => h,
            None => {
                let fd = open_thread_netns()?;
                home.get_or_init(|| fd)
            }
        };
        setns_net(ns)?;
        let out = f();
        if let Err(e) = setns_net(home.as_fd()) {
            eprintln!("aetherd: FATAL: cannot return thread to its network namespace: {e}");
            std::process::abort();
        }
        Ok(out)
    })
}

/// Brings `lo` up in the calling thread's current network namespace.
fn loopback_up() -> Result<(), NetnsError> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(sys("socket")(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh socket fd we own from here on.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = src.cast_signed();
    }
    // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifr_flags of `req`,
    // which is a valid, writable ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(sys("SIOCGIFFLAGS lo")(io::Error::last_os_error()));
    }
    // SAFETY: the kernel filled the flags member of the union just above.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    // IFF_UP is 0x1: it fits in the c_short flags field.
    #[allow(clippy::cast_possible_truncation)]
    let up = libc::IFF_UP as libc::c_short;
    req.ifr_ifru.ifru_flags = flags | up;
    // SAFETY: SIOCSIFFLAGS reads ifr_name and ifr_flags of the valid `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(sys("SIOCSIFFLAGS lo")(io::Error::last_os_error()));
    }
    Ok(())
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<(), NetnsError> {
    use std::io::Write;
    let line = format!("{cmd:?}");
    if stdin.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    }
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| NetnsError::Command {
        cmd: line.clone(),
        status: "not started".into(),
        stderr: e.to_string(),
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| NetnsError::Command {
        cmd: line.clone(),
        status: "wait failed".into(),
        stderr: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Command {
            cmd: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Bridge and subnet of the egress network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressConfig {
    /// Bridge name (≤ 15 bytes).
    pub bridge: String,
    /// Prefix of host-side veth names; a number is appended (total ≤ 15 bytes).
    pub veth_prefix: String,
    /// Subnet address; the bridge takes `.1`, namespaces the rest.
    pub subnet: Ipv4Addr,
    /// Subnet prefix length (8..=30).
    pub prefix_len: u8,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            bridge: "aether0".into(),
            veth_prefix: "aeth".into(),
            subnet: Ipv4Addr::new(10, 200, 0, 0),
            prefix_len: 16,
        }
    }
}

impl EgressConfig {
    /// The bridge's own address (subnet + 1): the namespaces' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + 1)
    }

    fn cidr(&self) -> String {
        format!("{}/{}", self.subnet, self.prefix_len)
    }

    fn comment(&self) -> String {
        format!("aetherless:{}", self.bridge)
    }

    fn rules(&self) -> Vec<(&'static str, &'static str, Vec<String>)> {
        let c = self.comment();
        let br = self.bridge.clone();
        let m = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        vec![
            (
                "nat",
                "POSTROUTING",
                m(&[
                    "-s",
                    &self.cidr(),
                    "!",
                    "-o",
                    &br,
                    "-m",
                    "comment",
                    "--comment",
                    &c,
                    "-j",
                    "MASQUERADE",
                ]),
            ),
            (
                "filter",
                "FORWARD",
                m(&["-i", &br, "-m", "comment", "--comment", &c, "-j", "ACCEPT"]),
            ),
            (
                "filter",
                "FORWARD",
                m(&[
                    "-o",
                    &br,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "RELATED,ESTABLISHED",
                    "-m",
                    "comment",
                    "--comment",
                    &c,
                    "-j",
                    "ACCEPT",
                ]),
            ),
        ]
    }
}

#[derive(Debug, Default)]
struct AddressBook {
    next: u32,
    used: HashSet<u32>,
}

/// The bridge + NAT of the egress network; torn down on drop.
#[derive(Debug)]
pub struct Egress {
    cfg: EgressConfig,
    book: Mutex<AddressBook>,
}

impl Egress {
    /// Removes any leftover bridge, host veths and rules of `cfg` (from an
    /// aetherd that died), then creates the bridge and NAT.
    pub fn setup(cfg: EgressConfig) -> Result<Arc<Self>, NetnsError> {
        Self::cleanup_stale(&cfg);
        run(
            Command::new("ip").args(["link", "add", &cfg.bridge, "type", "bridge"]),
            None,
        )?;
        let me = Arc::new(Self {
            cfg,
            book: Mutex::new(AddressBook {
                next: 2,
                used: HashSet::new(),
            }),
        });
        let cfg = &me.cfg;
        run(
            Command::new("ip").args([
                "addr",
                "add",
                &format!("{}/{}", cfg.gateway(), cfg.prefix_len),
                "dev",
                &cfg.bridge,
            ]),
            None,
        )?;
        run(
            Command::new("ip").args(["link", "set", &cfg.bridge, "up"]),
            None,
        )?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(sys("write ip_forward"))?;
        for (table, chain, rule) in cfg.rules() {
            let op = if chain == "FORWARD" { "-I" } else { "-A" };
            run(
                Command::new("iptables")
                    .args(["-w", "-t", table, op, chain])
                    .args(&rule),
                None,
            )?;
        }
        Ok(me)
    }

    /// The configuration.
    pub fn config(&self) -> &EgressConfig {
        &self.cfg
    }

    /// Removes the bridge, host veths with the configured prefix and our
    /// iptables rules; everything that is absent is skipped.
    pub fn cleanup_stale(cfg: &EgressConfig) {
        for (table, chain, rule) in cfg.rules() {
            for _ in 0..64 {
                let deleted = run(
                    Command::new("iptables")
                        .args(["-w", "-t", table, "-D", chain])
                        .args(&rule),
                    None,
                );
                if deleted.is_err() {
                    break;
                }
            }
        }
        if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
            let text = String::from_utf8_lossy(&out.stdout);
            for line in text.lines() {
                let Some(name) = line.split(": ").nth(1) else {
                    continue;
                };
                let name = name.split('@').next().unwrap_or(name);
                let numbered = name
                    .strip_prefix(cfg.veth_prefix.as_str())
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                if numbered {
                    let _ = run(Command::new("ip").args(["link", "del", name]), None);
                }
            }
        }
        let _ = run(Command::new("ip").args(["link", "del", &cfg.bridge]), None);
    }

    fn lease(self: &Arc<Self>) -> Result<EgressLease, NetnsError> {
        let hosts = (1u32 << (32 - u32::from(self.cfg.prefix_len))) - 2;
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        // Hand out indices round-robin so a just-freed veth name (whose
        // namespace the kernel may still be tearing down) is not reused soon.
        for _ in 0..hosts {
            let idx = book.next;
            book.next = if book.next >= hosts { 2 } else { book.next + 1 };
            if book.used.insert(idx) {
                return Ok(EgressLease {
                    idx,
                    addr: Ipv4Addr::from(u32::from(self.cfg.subnet) + idx),
                    egress: Arc::clone(self),
                });
            }
        }
        Err(NetnsError::SubnetExhausted {
            subnet: self.cfg.subnet,
            prefix_len: self.cfg.prefix_len,
        })
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        Self::cleanup_stale(&self.cfg);
    }
}

/// An address (and host veth) of the egress network held by one namespace.
#[derive(Debug)]
pub struct EgressLease {
    idx: u32,
    addr: Ipv4Addr,
    egress: Arc<Egress>,
}

impl EgressLease {
    /// The namespace's address on the bridge subnet.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The host side veth name.
    pub fn host_veth(&self) -> String {
        format!("{}{}", self.egress.cfg.veth_prefix, self.idx)
    }
}

impl Drop for EgressLease {
    fn drop(&mut self) {
        let mut book = self.egress.book.lock().unwrap_or_else(|p| p.into_inner());
        book.used.remove(&self.idx);
    }
}

/// A prepared network namespace (loopback up, optionally egress).
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    egress: Option<EgressLease>,
}

impl Netns {
    /// Creates a namespace on a short-lived helper thread (the calling thread
    /// never changes namespace).
    pub fn create(egress: Option<&Arc<Egress>>) -> Result<Self, NetnsError> {
        let egress = egress.cloned();
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("netns-prep".into())
                .spawn_scoped(s, || prepare_on_this_thread(egress.as_ref()))
                .map_err(|e| NetnsError::Thread(e.to_string()))?
                .join()
                .map_err(|_| NetnsError::Thread("panicked".into()))?
        })
    }

    /// The namespace fd (`/proc/<pid>/fd/<n>` refers to it).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The egress address, if this namespace has egress.
    pub fn egress(&self) -> Option<&EgressLease> {
        self.egress.as_ref()
    }

    /// Runs `f` on the calling thread inside this namespace.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        with_netns(self.fd.as_fd(), f)
    }

    /// A TCP connection to `addr` from inside this namespace; see
    /// [`tcp_connect_in`].
    pub fn tcp_connect(
        &self,
        addr: SocketAddrV4,
        connect_timeout: Option<Duration>,
    ) -> io::Result<TcpStream> {
        tcp_connect_in(self.fd.as_fd(), addr, connect_timeout)
    }
}

/// A TCP connection to `addr` from inside the network namespace `ns` (for
/// callers that keep only a duplicate of the namespace fd). The socket is
/// created inside (the calling thread enters with `setns` and returns to its
/// home namespace, ≈ 3 µs); `connect` runs after the thread is back home,
/// which is fine because a socket belongs to the namespace it was created in.
/// `connect_timeout` bounds the connect (`SO_SNDTIMEO`) and is cleared again
/// afterwards. The stream has `TCP_NODELAY`.
pub fn tcp_connect_in(
    ns: BorrowedFd<'_>,
    addr: SocketAddrV4,
    connect_timeout: Option<Duration>,
) -> io::Result<TcpStream> {
    let ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    // SAFETY: plain socket(2); the result is checked below.
    let raw = with_netns(ns, || unsafe { libc::socket(libc::AF_INET, ty, 0) })?;
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh socket fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let stream = TcpStream::from(fd);
    if connect_timeout.is_some() {
        stream.set_write_timeout(connect_timeout)?;
    }
    let sa = libc::sockaddr_in {
        sin_family: AF_INET_FAMILY,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = SOCKADDR_IN_LEN;
    // SAFETY: `sa` is a valid sockaddr_in of `len` bytes for the call.
    let rc = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            std::ptr::from_ref(&sa).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if connect_timeout.is_some() {
        stream.set_write_timeout(None)?;
    }
    stream.set_nodelay(true)?;
    Ok(stream)
}

// AF_INET is 2 and sockaddr_in is 16 bytes: both fit their C types.
#[allow(clippy::cast_possible_truncation)]
const AF_INET_FAMILY: libc::sa_family_t = libc::AF_INET as libc::sa_family_t;
#[allow(clippy::cast_possible_truncation)]
const SOCKADDR_IN_LEN: libc::socklen_t =
    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

fn prepare_on_this_thread(egress: Option<&Arc<Egress>>) -> Result<Netns, NetnsError> {
    let home = open_thread_netns().map_err(sys("open /proc/thread-self/ns/net"))?;
    // SAFETY: unshare(2) only changes this thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(sys("unshare(CLONE_NEWNET)")(io::Error::last_os_error()));
    }
    let result = (|| {
        let fd = open_thread_netns().map_err(sys("open new netns"))?;
        loopback_up()?;
        let lease = match egress {
            Some(eg) => Some(attach_egress(eg, home.as_fd())?),
            None => None,
        };
        Ok(Netns { fd, egress: lease })
    })();
    setns_net(home.as_fd()).map_err(sys("setns back home"))?;
    if let (Ok(ns), Some(_)) = (&result, egress) {
        if let Some(lease) = &ns.egress {
            run(
                Command::new("ip").args([
                    "link",
                    "set",
                    &lease.host_veth(),
                    "master",
                    &lease.egress.cfg.bridge,
                    "up",
                ]),
                None,
            )?;
        }
    }
    result
}

/// Runs inside the new namespace: creates the veth pair with its host end in
/// `home`, addresses `eth0` and sets the default route.
fn attach_egress(eg: &Arc<Egress>, home: BorrowedFd<'_>) -> Result<EgressLease, NetnsError> {
    let lease = eg.lease()?;
    let cfg = &eg.cfg;
    let home_path = format!("/proc/{}/fd/{}", std::process::id(), home.as_raw_fd());
    let script = format!(
        "link add eth0 type veth peer name {host} netns {home_path}\n\
         addr add {addr}/{len} dev eth0\n\
         link set eth0 up\n\
         route add default via {gw}\n",
        host = lease.host_veth(),
        addr = lease.addr,
        len = cfg.prefix_len,
        gw = cfg.gateway(),
    );
    run(Command::new("ip").args(["-b", "-"]), Some(&script))?;
    Ok(lease)
}

struct Filler {
    rx: Receiver<Result<Netns, NetnsError>>,
}

impl std::fmt::Debug for Filler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Filler")
    }
}

impl Filler {
    fn start(ahead: usize, egress: Option<Arc<Egress>>) -> Result<Self, NetnsError> {
        let (tx, rx) = sync_channel(ahead.max(1));
        std::thread::Builder::new()
            .name("netns-pool".into())
            .spawn(move || loop {
                let made = prepare_on_this_thread(egress.as_ref());
                let failed = made.is_err();
                if tx.send(made).is_err() {
                    return;
                }
                if failed {
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
            .map_err(|e| NetnsError::Thread(e.to_string()))?;
        Ok(Self { rx })
    }
}

/// Keeps `ahead` namespaces of each kind (plain, egress) ready, prepared on
/// background threads; [`NetnsPool::take`] hands one out at no cost, or makes
/// one on the spot when the pool ran dry.
#[derive(Debug)]
pub struct NetnsPool {
    plain: Filler,
    with_egress: Option<(Filler, Arc<Egress>)>,
}

impl NetnsPool {
    /// Starts the background preparation. Without `egress`, asking for an
    /// egress namespace yields a plain one (loopback only) — see [`Self::take`].
    pub fn new(ahead: usize, egress: Option<Arc<Egress>>) -> Result<Self, NetnsError> {
        let plain = Filler::start(ahead, None)?;
        let with_egress = match egress {
            Some(eg) => Some((Filler::start(ahead, Some(Arc::clone(&eg)))?, eg)),
            None => None,
        };
        Ok(Self { plain, with_egress })
    }

    /// A prepared namespace; with egress if asked and the pool has egress.
    pub fn take(&self, egress: bool) -> Result<Netns, NetnsError> {
        let (filler, eg) = match (&self.with_egress, egress) {
            (Some((f, eg)), true) => (f, Some(eg)),
            (None, true) => {
                tracing::warn!("egress asked for but aetherd has no egress bridge: loopback only");
                (&self.plain, None)
            }
            _ => (&self.plain, None),
        };
        match filler.rx.try_recv() {
            Ok(made) => made,
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => Netns::create(eg),
        }
    }

    /// Whether egress namespaces are available.
    pub fn has_egress(&self) -> bool {
        self.with_egress.is_some()
    }
}
