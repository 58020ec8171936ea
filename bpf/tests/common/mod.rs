//! Helpers shared by the kernel tests: loud skips, frame builders, network
//! namespaces with a veth pair.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design; each binary uses a subset

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Why kernel tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: loading BPF and creating network namespaces need root".into());
    }
    None
}

/// Prints a loud SKIP line and returns true if the test must skip.
pub fn skip_if_unavailable(test: &str) -> bool {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIP {test}: {reason}");
        return true;
    }
    false
}

/// Loads the program, or prints a loud SKIP when the kernel lacks BPF.
pub fn load_or_skip(test: &str) -> Option<bpf::XdpPolicy> {
    if skip_if_unavailable(test) {
        return None;
    }
    match bpf::XdpPolicy::load() {
        Ok(policy) => Some(policy),
        Err(error) if error.is_permission_denied() => {
            eprintln!("SKIP {test}: BPF not permitted here: {error}");
            None
        }
        Err(error) => panic!("{test}: loading the XDP program failed: {error}"),
    }
}

/// An Ethernet frame under construction.
#[derive(Debug, Clone)]
pub struct Frame {
    pub bytes: Vec<u8>,
}

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;

impl Frame {
    /// Ethernet header with the given VLAN tags (outer first) and final ethertype.
    pub fn ethernet(vlans: &[u16], ethertype: u16) -> Self {
        let mut bytes = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        for (i, vid) in vlans.iter().enumerate() {
            let tpid = if i == 0 && vlans.len() == 2 {
                ETH_P_8021AD
            } else {
                ETH_P_8021Q
            };
            bytes.extend_from_slice(&tpid.to_be_bytes());
            bytes.extend_from_slice(&vid.to_be_bytes());
        }
        bytes.extend_from_slice(&ethertype.to_be_bytes());
        Self { bytes }
    }

    /// IPv4 header with `options` (a multiple of 4 bytes) and a fragment offset field.
    pub fn ipv4(mut self, proto: u8, options: &[u8], frag_off: u16, payload_len: usize) -> Self {
        assert_eq!(options.len() % 4, 0);
        let ihl = 5 + options.len() / 4;
        let total = u16::try_from(ihl * 4 + payload_len).unwrap();
        self.bytes.push(0x40 | u8::try_from(ihl).unwrap());
        self.bytes.push(0);
        self.bytes.extend_from_slice(&total.to_be_bytes());
        self.bytes.extend_from_slice(&[0, 1]);
        self.bytes.extend_from_slice(&frag_off.to_be_bytes());
        self.bytes.extend_from_slice(&[64, proto, 0, 0]);
        self.bytes
            .extend_from_slice(&Ipv4Addr::new(10, 213, 0, 1).octets());
        self.bytes
            .extend_from_slice(&Ipv4Addr::new(10, 213, 0, 2).octets());
        self.bytes.extend_from_slice(options);
        self
    }

    /// IPv6 fixed header, then extension headers given as (type, total length
    /// in bytes, a multiple of 8), the last one pointing at `proto`.
    pub fn ipv6(mut self, exts: &[(u8, usize)], proto: u8, payload_len: usize) -> Self {
        let ext_len: usize = exts.iter().map(|(_, len)| len).sum();
        let first = exts.first().map_or(proto, |(kind, _)| *kind);
        self.bytes.extend_from_slice(&[0x60, 0, 0, 0]);
        self.bytes
            .extend_from_slice(&u16::try_from(ext_len + payload_len).unwrap().to_be_bytes());
        self.bytes.extend_from_slice(&[first, 64]);
        self.bytes
            .extend_from_slice(&"fd00:a37::1".parse::<Ipv6Addr>().unwrap().octets());
        self.bytes
            .extend_from_slice(&"fd00:a37::2".parse::<Ipv6Addr>().unwrap().octets());
        for (i, (kind, len)) in exts.iter().enumerate() {
            let next = exts.get(i + 1).map_or(proto, |(kind, _)| *kind);
            assert!(*len >= 8 && len % 8 == 0);
            let start = self.bytes.len();
            self.bytes.resize(start + len, 0);
            self.bytes[start] = next;
            if *kind == 44 {
                assert_eq!(*len, 8, "fragment header is 8 bytes");
            } else {
                self.bytes[start + 1] = u8::try_from(len / 8 - 1).unwrap();
            }
        }
        self
    }

    pub fn udp(mut self, dport: u16, payload: &[u8]) -> Self {
        self.bytes.extend_from_slice(&40000u16.to_be_bytes());
        self.bytes.extend_from_slice(&dport.to_be_bytes());
        self.bytes
            .extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
        self.bytes.extend_from_slice(&[0, 0]);
        self.bytes.extend_from_slice(payload);
        self
    }

    pub fn tcp_syn(mut self, dport: u16) -> Self {
        self.bytes.extend_from_slice(&40000u16.to_be_bytes());
        self.bytes.extend_from_slice(&dport.to_be_bytes());
        self.bytes
            .extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        self
    }

    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// Cuts the frame to `len` bytes (to test bound checks).
    pub fn truncated(mut self, len: usize) -> Self {
        self.bytes.truncate(len);
        self
    }
}

static NEXT_NS: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`; panics with its stderr on failure.
pub fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run `ip {}`: {error} (install iproute2)",
                args.join(" ")
            )
        });
    assert!(
        output.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Two network namespaces A and B joined by a veth pair `veth-a` (in A,
/// 10.213.<n>.1/24, fd00:a37:<n>::1/64) ↔ `veth-b` (in B, .2 / ::2). Deleted
/// on drop (deleting a namespace deletes its veth end, which deletes the pair).
#[derive(Debug)]
pub struct NetnsPair {
    pub a: String,
    pub b: String,
    pub addr_a: Ipv4Addr,
    pub addr_b: Ipv4Addr,
    pub addr6_a: Ipv6Addr,
    pub addr6_b: Ipv6Addr,
}

pub const VETH_A: &str = "veth-a";
pub const VETH_B: &str = "veth-b";

impl NetnsPair {
    pub fn new() -> Self {
        let n = NEXT_NS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let subnet = u8::try_from(n % 250).unwrap();
        let pair = Self {
            a: format!("aeth-{pid}-{n}-a"),
            b: format!("aeth-{pid}-{n}-b"),
            addr_a: Ipv4Addr::new(10, 213, subnet, 1),
            addr_b: Ipv4Addr::new(10, 213, subnet, 2),
            addr6_a: format!("fd00:a37:{subnet}::1").parse().unwrap(),
            addr6_b: format!("fd00:a37:{subnet}::2").parse().unwrap(),
        };
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        ip(&[
            "link", "add", VETH_A, "netns", &pair.a, "type", "veth", "peer", "name", VETH_B,
            "netns", &pair.b,
        ]);
        for (ns, dev, v4, v6) in [
            (&pair.a, VETH_A, pair.addr_a, pair.addr6_a),
            (&pair.b, VETH_B, pair.addr_b, pair.addr6_b),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Runs `f` on a fresh thread that has joined namespace `ns`.
    pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// The XDP program attached to `veth-b`, as `ip` reports it (None if none).
    pub fn xdp_on_b(&self) -> Option<String> {
        let output = Command::new("ip")
            .args(["-n", &self.b, "-d", "link", "show", "dev", VETH_B])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        text.contains("prog/xdp").then_some(text)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
