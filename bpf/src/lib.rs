//! eBPF data plane of Aetherless: an XDP program that enforces the port policy
//! before the kernel's network stack and counts traffic per destination port
//! ([`XdpPolicy`]), and an sk_reuseport program that hands each connection to
//! the listener of the CPU that received it ([`ReuseportCpuSelector`]).
//!
//! The programs are written in C (`src/*.bpf.c`), compiled by clang
//! (`-target bpf -O2 -g`) from `build.rs` and loaded with aya. The structs they
//! share with this crate live in `src/aether_bpf.h`, mirrored in [`abi`]; the
//! build fails if the two layouts differ.
//!
//! # Maps
//!
//! | map      | type                | key                          | value                   |
//! |----------|---------------------|------------------------------|-------------------------|
//! | `ports`  | `HASH`, 4096        | `u16` destination port (host order) | [`abi::PortPolicy`] `{ u32 function_slot; u32 flags }` |
//! | `config` | `ARRAY`, 1          | `u32` 0                      | [`abi::XdpConfig`] `{ u32 strict }` |
//! | `stats`  | `PERCPU_HASH`, 4097 | `u16` destination port, 0 = other | [`abi::PortStats`] `{ u64 packets, bytes, drops }` per CPU |
//!
//! `flags`: bit 0 `ENABLED` (a deployed function that takes traffic), bit 1
//! `ALLOW` (allow-listed, e.g. SSH). See [`abi`] for the byte layout.
//!
//! # Policy
//!
//! For a TCP or UDP packet to destination port `p`:
//! - `p` in `ports` with `ENABLED` or `ALLOW` → pass, counted under `p`;
//! - `p` in `ports` with neither flag (a disabled function) → drop, in any
//!   mode, counted under `p` (packets and drops);
//! - `p` not in `ports`: strict mode → drop, counted under port 0 (the
//!   "other" bucket); otherwise pass, not counted.
//!
//! Packets that are not TCP/UDP (ARP, ICMP, ESP, …) always pass, uncounted.
//! `bytes` counts the whole frame as XDP sees it (Ethernet header included).
//!
//! # Parsing limits
//!
//! - Ethernet, then at most two VLAN tags (802.1Q `0x8100`, 802.1ad `0x88a8`).
//! - IPv4 with IHL 5..=15 (options skipped). Non-first fragments carry no L4
//!   header and pass (the first fragment, which carries the ports, is judged,
//!   so a dropped first fragment leaves nothing to reassemble).
//! - IPv6: fixed header, then at most 4 extension headers among hop-by-hop,
//!   routing, destination options and fragment (non-first fragments pass).
//!   Other next headers (ICMPv6, ESP, AH, …) count as "not TCP/UDP" and pass.
//! - A frame that claims IPv4/IPv6 but cannot be parsed to a decision within
//!   these limits (truncated header, IHL < 5, a longer IPv6 extension chain,
//!   a third VLAN tag) is *malformed*: dropped in strict mode (counted under
//!   port 0), passed otherwise. This closes the bypass "hide the TCP header
//!   behind more headers than the parser follows".
//!
//! # Attachment lifetime
//!
//! On kernels ≥ 5.9 aya attaches XDP through a BPF link (`BPF_LINK_CREATE`),
//! a file descriptor owned by this process: the program is detached when
//! [`XdpPolicy`] is dropped *and* when the process dies, even by SIGKILL (the
//! kernel closes the fd). The test `sigkill_detaches` checks this. On older
//! kernels aya would fall back to a netlink attachment, which outlives the
//! process; [`XdpPolicy::attach`] refuses to run there
//! ([`BpfError::KernelTooOld`]) instead of leaving stale programs behind, so
//! no `cleanup_stale` step is needed.
//!
//! The interface name is resolved in the network namespace of the calling
//! thread; once attached, the object may move to any thread.
//!
//! # Counters
//!
//! Counters live while their port has a policy: [`XdpPolicy::remove_port`]
//! deletes them with it. If `stats` is full (4097 entries) a new port's
//! packets are judged but not counted. Reading them ([`XdpPolicy::stats`])
//! sums the per-CPU values; it does not reset them.
//!
//! # Tests
//!
//! Run `cargo test -p bpf` as root (`-- --nocapture` shows the attach mode
//! each test got and the SKIP lines). Without root, `ip` (iproute2) or BPF,
//! the kernel tests print `SKIP <test>: <reason>` and return.
//!
//! - `tests/xdp_parse.rs`: the policy and the parser through
//!   `BPF_PROG_TEST_RUN` ([`XdpPolicy::run_on`]) on crafted frames: VLAN and
//!   QinQ, IPv4 options up to IHL 15, IPv6 extension chains up to and past the
//!   limit, fragments, every truncation of valid frames, counters, live updates.
//! - `tests/xdp_netns.rs`: real packets. Each test creates namespaces
//!   `aeth-<pid>-<n>-{a,b}` joined by a veth pair (`10.213.<n>.1`/`.2`,
//!   `fd00:a37:<n>::1`/`::2`), attaches the program to B's end (generic, and
//!   native-or-generic) from a thread inside B, and sends from A: UDP
//!   datagrams over IPv4 and IPv6 (exact packet/byte/drop counts), TCP connects
//!   (the unknown port times out instead of being reset), raw frames with
//!   VLAN/QinQ tags, IPv4 options and IPv6 extension headers (AF_PACKET; this
//!   kernel has no 802.1Q devices), live disable/allow/remove, a second
//!   attachment refused, and a SIGKILLed child leaving nothing attached. The
//!   namespaces are deleted on drop.
//! - `tests/reuseport.rs`: two `SO_REUSEPORT` listeners mapped to CPUs 0 and
//!   1; clients pinned to each CPU connect over loopback; every connection is
//!   accepted by its CPU's listener, and with the slots emptied the kernel's
//!   hash spreads them over both (skips without CPUs 0 and 1).

pub mod abi;
mod reuseport;

pub use reuseport::{ReuseportCpuSelector, REUSEPORT_PROGRAM_NAME};

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuHashMap};
use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfError, EbpfLoader, VerifierLogLevel};

pub use abi::{PortPolicy, PortStats, XdpConfig};

/// The XDP object file, compiled by build.rs.
static XDP_POLICY_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_policy.bpf.o"));

/// Name of the XDP program (its C function) in the object and in the kernel.
pub const XDP_PROGRAM_NAME: &str = "aether_xdp";

/// First kernel whose XDP attachment is a process-owned BPF link.
const MIN_KERNEL_FOR_XDP_LINK: KernelVersion = KernelVersion::new(5, 9, 0);

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XdpAttachMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`); fails if the driver lacks XDP.
    Native,
    /// In the generic network stack path (`XDP_FLAGS_SKB_MODE`), any device.
    Generic,
    /// Native, then generic if the driver refuses.
    Auto,
}

impl fmt::Display for XdpAttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Auto => "auto",
        })
    }
}

/// What the XDP program decided for one frame (see [`XdpPolicy::run_on`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpVerdict {
    /// `XDP_DROP`.
    Drop,
    /// `XDP_PASS`.
    Pass,
    /// Any other return code (the program returns none today).
    Other(u32),
}

/// Errors of loading, attaching and driving the XDP policy program.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The object file could not be loaded (maps created, BTF parsed).
    #[error("cannot load the eBPF object {object}: {source}")]
    Object {
        /// The object file's name.
        object: &'static str,
        /// aya's error.
        #[source]
        source: Box<EbpfError>,
    },
    /// The object lacks a program this crate expects (a build mismatch).
    #[error("program {name} missing from the eBPF object")]
    MissingProgram {
        /// The program name.
        name: &'static str,
    },
    /// The object lacks a map this crate expects (a build mismatch).
    #[error("map {name} missing from the eBPF object")]
    MissingMap {
        /// The map name.
        name: &'static str,
    },
    /// The kernel refused the program; `verifier_log` says why when the
    /// verifier rejected it (empty for other failures). The message shows it
    /// once: aya's error text already ends with the log.
    #[error("the kernel refused program {program}: {source}")]
    Load {
        /// The program name.
        program: &'static str,
        /// The verifier's log (empty unless the verifier produced one).
        verifier_log: String,
        /// aya's error.
        #[source]
        source: Box<ProgramError>,
    },
    /// No interface of that name in the calling thread's network namespace.
    #[error("no network interface {ifname} in this thread's network namespace")]
    UnknownInterface {
        /// The interface name.
        ifname: String,
    },
    /// Attaching failed (e.g. another XDP program is attached, or the driver
    /// has no native XDP).
    #[error("cannot attach XDP in {mode} mode to {ifname}: {detail}{native_error}")]
    Attach {
        /// The interface name.
        ifname: String,
        /// The mode last tried.
        mode: XdpAttachMode,
        /// In [`XdpAttachMode::Auto`], why native mode failed first.
        native_error: String,
        /// aya's error with its causes (aya's own message omits the errno).
        detail: String,
        /// aya's error.
        #[source]
        source: Box<ProgramError>,
    },
    /// The running kernel would attach through netlink, which outlives the
    /// process; we refuse rather than leave stale programs behind.
    #[error("kernel {found} has no XDP BPF links (need >= 5.9): refusing a netlink attachment that would outlive aetherd")]
    KernelTooOld {
        /// The running kernel's version.
        found: String,
    },
    /// A map operation failed.
    #[error("{op} on map {map} failed: {source}")]
    Map {
        /// What was attempted.
        op: &'static str,
        /// The map name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: Box<MapError>,
    },
    /// Port 0 is the "other" statistics bucket and cannot carry a policy.
    #[error("port 0 cannot be given a policy (its stats bucket counts drops to unknown ports)")]
    PortZero,
    /// Attaching the sk_reuseport program to a socket's group failed.
    #[error("cannot attach the sk_reuseport program to the socket's SO_REUSEPORT group: {source}")]
    ReuseportAttach {
        /// aya's error.
        #[source]
        source: Box<ProgramError>,
    },
    /// CPU ids at or above [`abi::MAX_CPUS`] have no slot in the listener array.
    #[error("cpu {cpu} is beyond the listener array ({max} slots)", max = abi::MAX_CPUS)]
    CpuOutOfRange {
        /// The CPU id.
        cpu: u32,
    },
    /// A test run through `BPF_PROG_TEST_RUN` failed.
    #[error("BPF_PROG_TEST_RUN failed: {source}")]
    TestRun {
        /// aya's error.
        #[source]
        source: Box<ProgramError>,
    },
}

impl BpfError {
    /// Whether the kernel refused for lack of privilege (EPERM: neither root
    /// nor CAP_BPF/CAP_NET_ADMIN, or BPF disabled for this user), so the
    /// caller can say "run as root" instead of reporting a bug.
    pub fn is_permission_denied(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = cause {
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                if io.raw_os_error() == Some(EPERM) {
                    return true;
                }
            }
            cause = error.source();
        }
        false
    }
}

/// EPERM, the errno of a BPF syscall refused for lack of privilege (not
/// EACCES, which is the verifier's rejection: both are `PermissionDenied` for
/// `std::io::ErrorKind`, hence the raw number).
const EPERM: i32 = 1;

fn map_error(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |source| BpfError::Map {
        op,
        map,
        source: Box::new(source),
    }
}

/// The loaded XDP policy program, its maps, and (once attached) its link.
///
/// Dropping it detaches the program and frees the maps.
pub struct XdpPolicy {
    // Field order matters only for readability: the maps and the program are
    // independent kernel objects, each freed when its last fd closes.
    ebpf: Ebpf,
    ports: HashMap<MapData, u16, PortPolicy>,
    config: Array<MapData, XdpConfig>,
    stats: PerCpuHashMap<MapData, u16, PortStats>,
    attached: Option<(String, XdpAttachMode)>,
}

impl fmt::Debug for XdpPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpPolicy")
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl XdpPolicy {
    /// Loads the program into the kernel (verified, maps created) without
    /// attaching it anywhere; [`XdpPolicy::run_on`] works on it.
    pub fn load() -> Result<Self, BpfError> {
        let mut ebpf = load_object("xdp_policy.bpf.o", XDP_POLICY_OBJECT)?;
        let program = xdp_program(&mut ebpf)?;
        program
            .load()
            .map_err(|source| load_error(XDP_PROGRAM_NAME, source))?;
        let ports = HashMap::try_from(take_map(&mut ebpf, "ports")?)
            .map_err(map_error("opening", "ports"))?;
        let config = Array::try_from(take_map(&mut ebpf, "config")?)
            .map_err(map_error("opening", "config"))?;
        let stats = PerCpuHashMap::try_from(take_map(&mut ebpf, "stats")?)
            .map_err(map_error("opening", "stats"))?;
        Ok(Self {
            ebpf,
            ports,
            config,
            stats,
            attached: None,
        })
    }

    /// Loads the program and attaches it to `ifname` (resolved in the calling
    /// thread's network namespace). Starts in non-strict mode with no ports.
    pub fn load_and_attach(ifname: &str, mode: XdpAttachMode) -> Result<Self, BpfError> {
        let mut policy = Self::load()?;
        policy.attach(ifname, mode)?;
        Ok(policy)
    }

    /// Attaches the loaded program to `ifname`; returns the mode that worked
    /// (never `Auto`).
    pub fn attach(&mut self, ifname: &str, mode: XdpAttachMode) -> Result<XdpAttachMode, BpfError> {
        if let Ok(kernel) = KernelVersion::current() {
            if kernel < MIN_KERNEL_FOR_XDP_LINK {
                return Err(BpfError::KernelTooOld {
                    found: format!("{kernel:?}"),
                });
            }
        }
        let program = xdp_program(&mut self.ebpf)?;
        let try_mode = |program: &mut Xdp, mode: XdpAttachMode| {
            let aya_mode = match mode {
                XdpAttachMode::Native | XdpAttachMode::Auto => XdpMode::Driver,
                XdpAttachMode::Generic => XdpMode::Skb,
            };
            program
                .attach(ifname, aya_mode)
                .map(|_link| ())
                .map_err(|source| match source {
                    ProgramError::UnknownInterface { .. } => BpfError::UnknownInterface {
                        ifname: ifname.to_string(),
                    },
                    source => BpfError::Attach {
                        ifname: ifname.to_string(),
                        mode,
                        native_error: String::new(),
                        detail: error_chain(&source),
                        source: Box::new(source),
                    },
                })
        };
        let used = match mode {
            XdpAttachMode::Auto => match try_mode(program, XdpAttachMode::Native) {
                Ok(()) => XdpAttachMode::Native,
                Err(BpfError::Attach { detail, .. }) => {
                    let native_error = format!(" (native mode failed first: {detail})");
                    try_mode(program, XdpAttachMode::Generic).map_err(|error| match error {
                        BpfError::Attach {
                            ifname,
                            mode,
                            detail,
                            source,
                            ..
                        } => BpfError::Attach {
                            ifname,
                            mode,
                            native_error,
                            detail,
                            source,
                        },
                        other => other,
                    })?;
                    XdpAttachMode::Generic
                }
                Err(other) => return Err(other),
            },
            mode => {
                try_mode(program, mode)?;
                mode
            }
        };
        self.attached = Some((ifname.to_string(), used));
        Ok(used)
    }

    /// The interface and mode the program is attached with, if attached.
    pub fn attachment(&self) -> Option<(&str, XdpAttachMode)> {
        self.attached
            .as_ref()
            .map(|(ifname, mode)| (ifname.as_str(), *mode))
    }

    /// Strict mode: drop TCP/UDP to ports that are neither functions nor
    /// allow-listed. Takes effect for the next packet.
    pub fn set_strict(&mut self, strict: bool) -> Result<(), BpfError> {
        let value = XdpConfig {
            strict: u32::from(strict),
        };
        self.config
            .set(0, value, 0)
            .map_err(map_error("setting strict", "config"))
    }

    /// Whether strict mode is on.
    pub fn strict(&self) -> Result<bool, BpfError> {
        let value = self
            .config
            .get(&0, 0)
            .map_err(map_error("reading", "config"))?;
        Ok(value.strict != 0)
    }

    /// Declares `port` the trigger port of the function in `slot`; a disabled
    /// function's traffic is dropped (in any mode).
    pub fn set_port(&mut self, port: u16, slot: u32, enabled: bool) -> Result<(), BpfError> {
        let flags = if enabled { abi::PORT_ENABLED } else { 0 };
        self.insert_port(
            port,
            PortPolicy {
                function_slot: slot,
                flags,
            },
        )
    }

    /// Allow-lists `port` (e.g. 22): it passes in strict mode; it has no function.
    pub fn allow_port(&mut self, port: u16) -> Result<(), BpfError> {
        self.insert_port(
            port,
            PortPolicy {
                function_slot: abi::NO_FUNCTION,
                flags: abi::PORT_ALLOW,
            },
        )
    }

    fn insert_port(&mut self, port: u16, policy: PortPolicy) -> Result<(), BpfError> {
        if port == abi::OTHER_PORT {
            return Err(BpfError::PortZero);
        }
        self.ports
            .insert(port, policy, 0)
            .map_err(map_error("inserting a port", "ports"))
    }

    /// Forgets `port` (a no-op if absent) and its counters.
    pub fn remove_port(&mut self, port: u16) -> Result<(), BpfError> {
        if port == abi::OTHER_PORT {
            return Err(BpfError::PortZero);
        }
        ignore_missing(self.ports.remove(&port)).map_err(map_error("removing a port", "ports"))?;
        ignore_missing(self.stats.remove(&port)).map_err(map_error("removing a port", "stats"))
    }

    /// The policy of `port`, if it has one.
    pub fn port(&self, port: u16) -> Result<Option<PortPolicy>, BpfError> {
        match self.ports.get(&port, 0) {
            Ok(policy) => Ok(Some(policy)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(map_error("reading a port", "ports")(source)),
        }
    }

    /// Counters per destination port, summed over CPUs; key 0 holds the drops
    /// to ports without a policy (and malformed frames) in strict mode.
    pub fn stats(&self) -> Result<BTreeMap<u16, PortStats>, BpfError> {
        let mut out = BTreeMap::new();
        for entry in self.stats.iter() {
            let (port, per_cpu) = entry.map_err(map_error("iterating", "stats"))?;
            let sum = per_cpu
                .iter()
                .fold(PortStats::default(), |acc, cpu| PortStats {
                    packets: acc.packets + cpu.packets,
                    bytes: acc.bytes + cpu.bytes,
                    drops: acc.drops + cpu.drops,
                });
            out.insert(port, sum);
        }
        Ok(out)
    }

    /// Runs the program on `frame` (an Ethernet frame) `repeat` times through
    /// `BPF_PROG_TEST_RUN`, with the live maps (counters included). Returns the
    /// verdict and the kernel's mean time per run.
    pub fn run_on(
        &mut self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(XdpVerdict, Duration), BpfError> {
        let program = xdp_program(&mut self.ebpf)?;
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        options.repeat = repeat.max(1);
        let result = program
            .test_run(options)
            .map_err(|source| BpfError::TestRun {
                source: Box::new(source),
            })?;
        let verdict = match result.return_value {
            1 => XdpVerdict::Drop,
            2 => XdpVerdict::Pass,
            other => XdpVerdict::Other(other),
        };
        Ok((verdict, result.duration))
    }
}

/// `error` and its causes, joined by ": ".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, BpfError> {
    let missing = BpfError::MissingProgram {
        name: XDP_PROGRAM_NAME,
    };
    match ebpf.program_mut(XDP_PROGRAM_NAME) {
        Some(program) => program.try_into().map_err(|_| missing),
        None => Err(missing),
    }
}

/// Parses `bytes` and creates its maps (programs are loaded one by one).
fn load_object(object: &'static str, bytes: &[u8]) -> Result<Ebpf, BpfError> {
    EbpfLoader::new()
        .verifier_log_level(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS)
        .load(bytes)
        .map_err(|source| BpfError::Object {
            object,
            source: Box::new(source),
        })
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, BpfError> {
    ebpf.take_map(name).ok_or(BpfError::MissingMap { name })
}

fn load_error(program: &'static str, source: ProgramError) -> BpfError {
    let verifier_log = match &source {
        ProgramError::LoadError { verifier_log, .. } => verifier_log.to_string(),
        _ => String::new(),
    };
    BpfError::Load {
        program,
        verifier_log,
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

    use super::*;

    static REJECTED_OBJECT: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/testdata_rejected.bpf.o"));

    fn syscall_failure(errno: i32) -> BpfError {
        BpfError::TestRun {
            source: Box::new(ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_prog_test_run",
                io_error: std::io::Error::from_raw_os_error(errno),
            })),
        }
    }

    #[test]
    fn permission_denied_means_eperm_not_the_verifiers_eacces() {
        assert!(syscall_failure(1).is_permission_denied());
        assert!(!syscall_failure(13).is_permission_denied());
        assert!(!BpfError::PortZero.is_permission_denied());
    }

    #[test]
    fn verifier_rejection_carries_the_log() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP verifier_rejection_carries_the_log: not root, cannot load BPF");
            return;
        }
        let mut ebpf = match load_object("rejected.bpf.o", REJECTED_OBJECT) {
            Ok(ebpf) => ebpf,
            Err(error) => {
                eprintln!("SKIP verifier_rejection_carries_the_log: cannot create maps: {error}");
                return;
            }
        };
        let program: &mut Xdp = ebpf
            .program_mut("aether_rejected")
            .unwrap()
            .try_into()
            .unwrap();
        let error = load_error("aether_rejected", program.load().unwrap_err());
        let BpfError::Load { verifier_log, .. } = &error else {
            panic!("not a load error: {error}");
        };
        if error.is_permission_denied() {
            eprintln!("SKIP verifier_rejection_carries_the_log: BPF not permitted (not root?)");
            return;
        }
        assert!(
            verifier_log.contains("invalid access to packet"),
            "log: {verifier_log}"
        );
        assert!(
            error.to_string().contains("invalid access to packet"),
            "{error}"
        );
        eprintln!("the error reads:\n{error}");
    }
}
