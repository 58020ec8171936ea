//! The XDP policy on real packets: each test creates its own pair of network
//! namespaces joined by a veth pair, attaches the program to B's end from a
//! thread inside B, and sends UDP datagrams and TCP SYNs from A.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bpf::{PortStats, XdpAttachMode, XdpPolicy};
use common::*;

const FN_PORT: u16 = 8080;
const UNKNOWN_PORT: u16 = 7777;
const ALLOWED_PORT: u16 = 2222;
const PAYLOAD: &[u8] = b"aetherless-xdp-test";
const DATAGRAMS: u64 = 20;
const ETH_IPV4_UDP: u64 = 14 + 20 + 8;
const ETH_IPV6_UDP: u64 = 14 + 40 + 8;

/// Namespaces, and the program attached to B's veth, or None after a loud skip.
fn setup(test: &str, mode: XdpAttachMode) -> Option<(NetnsPair, XdpPolicy)> {
    if skip_if_unavailable(test) {
        return None;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("SKIP {test}: `ip` (iproute2) not installed");
        return None;
    }
    let pair = NetnsPair::new();
    let attached = NetnsPair::in_ns(&pair.b, move || XdpPolicy::load_and_attach(VETH_B, mode));
    match attached {
        Ok(policy) => Some((pair, policy)),
        Err(error) if error.is_permission_denied() => {
            eprintln!("SKIP {test}: BPF/XDP not permitted here: {error}");
            None
        }
        Err(error) => panic!("{test}: attaching XDP ({mode}) to {VETH_B} failed: {error}"),
    }
}

fn udp_listener(pair: &NetnsPair, addr: IpAddr, port: u16) -> UdpSocket {
    NetnsPair::in_ns(&pair.b, move || {
        let socket = UdpSocket::bind(SocketAddr::new(addr, port)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        socket
    })
}

fn udp_sender(pair: &NetnsPair, v6: bool) -> UdpSocket {
    NetnsPair::in_ns(&pair.a, move || {
        UdpSocket::bind(if v6 { "[::]:0" } else { "0.0.0.0:0" }).unwrap()
    })
}

/// Sends `count` datagrams to `to`, then returns how many `listener` received.
fn send_and_count(sender: &UdpSocket, to: SocketAddr, listener: &UdpSocket, count: u64) -> u64 {
    for _ in 0..count {
        sender.send_to(PAYLOAD, to).unwrap();
    }
    let mut received = 0;
    let mut buf = [0u8; 64];
    loop {
        match listener.recv_from(&mut buf) {
            Ok((len, _)) => {
                assert_eq!(&buf[..len], PAYLOAD);
                received += 1;
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return received;
            }
            Err(error) => panic!("recv: {error}"),
        }
    }
}

fn stats_of(policy: &XdpPolicy, port: u16) -> PortStats {
    policy
        .stats()
        .unwrap()
        .get(&port)
        .copied()
        .unwrap_or_default()
}

/// Strict mode drops UDP to an unknown port and passes a deployed one, over
/// IPv4 and IPv6; the counters match the datagrams sent exactly.
fn strict_udp_exact_counts(test: &str, mode: XdpAttachMode) {
    let Some((pair, mut policy)) = setup(test, mode) else {
        return;
    };
    eprintln!("{test}: attached as {:?}", policy.attachment());
    for (v6, addr, frame_len) in [
        (false, IpAddr::V4(pair.addr_b), ETH_IPV4_UDP),
        (true, IpAddr::V6(pair.addr6_b), ETH_IPV6_UDP),
    ] {
        let sender = udp_sender(&pair, v6);
        let fn_listener = udp_listener(&pair, addr, FN_PORT);
        let unknown_listener = udp_listener(&pair, addr, UNKNOWN_PORT);
        let before_fn = stats_of(&policy, FN_PORT);
        let before_other = stats_of(&policy, 0);

        // Not strict: the unknown port's listener gets everything; the
        // unknown port is not counted. This also resolves the neighbour.
        policy.set_strict(false).unwrap();
        let to_unknown = SocketAddr::new(addr, UNKNOWN_PORT);
        assert_eq!(
            send_and_count(&sender, to_unknown, &unknown_listener, 3),
            3,
            "v6={v6}"
        );
        assert!(!policy.stats().unwrap().contains_key(&UNKNOWN_PORT));

        policy.set_strict(true).unwrap();
        policy.set_port(FN_PORT, 1, true).unwrap();
        let to_fn = SocketAddr::new(addr, FN_PORT);
        assert_eq!(
            send_and_count(&sender, to_fn, &fn_listener, DATAGRAMS),
            DATAGRAMS,
            "v6={v6}"
        );
        assert_eq!(
            send_and_count(&sender, to_unknown, &unknown_listener, DATAGRAMS),
            0,
            "v6={v6}"
        );

        let bytes = DATAGRAMS * (frame_len + PAYLOAD.len() as u64);
        let fn_stats = stats_of(&policy, FN_PORT);
        assert_eq!(fn_stats.packets - before_fn.packets, DATAGRAMS, "v6={v6}");
        assert_eq!(fn_stats.bytes - before_fn.bytes, bytes, "v6={v6}");
        assert_eq!(fn_stats.drops, 0);
        let other = stats_of(&policy, 0);
        assert_eq!(other.packets - before_other.packets, DATAGRAMS, "v6={v6}");
        assert_eq!(other.drops - before_other.drops, DATAGRAMS, "v6={v6}");
        assert_eq!(other.bytes - before_other.bytes, bytes, "v6={v6}");
        policy.remove_port(FN_PORT).unwrap();
    }
    assert!(pair.xdp_on_b().is_some(), "attached while the policy lives");
    drop(policy);
    assert!(
        pair.xdp_on_b().is_none(),
        "drop detaches: {:?}",
        pair.xdp_on_b()
    );
}

#[test]
fn strict_udp_exact_counts_generic() {
    strict_udp_exact_counts("strict_udp_exact_counts_generic", XdpAttachMode::Generic);
}

#[test]
fn strict_udp_exact_counts_native_or_auto() {
    strict_udp_exact_counts(
        "strict_udp_exact_counts_native_or_auto",
        XdpAttachMode::Auto,
    );
}

#[test]
fn strict_tcp_connect_unknown_times_out_deployed_connects() {
    let test = "strict_tcp_connect_unknown_times_out_deployed_connects";
    let Some((pair, mut policy)) = setup(test, XdpAttachMode::Auto) else {
        return;
    };
    let addr_b = pair.addr_b;
    let listeners: Vec<TcpListener> = NetnsPair::in_ns(&pair.b, move || {
        [FN_PORT, UNKNOWN_PORT]
            .iter()
            .map(|port| TcpListener::bind((addr_b, *port)).unwrap())
            .collect()
    });
    policy.set_strict(true).unwrap();
    policy.set_port(FN_PORT, 3, true).unwrap();
    let (fn_result, unknown_result, elapsed) = NetnsPair::in_ns(&pair.a, move || {
        let timeout = Duration::from_millis(400);
        let fn_result =
            TcpStream::connect_timeout(&SocketAddr::new(addr_b.into(), FN_PORT), timeout);
        let start = Instant::now();
        let unknown =
            TcpStream::connect_timeout(&SocketAddr::new(addr_b.into(), UNKNOWN_PORT), timeout);
        (fn_result.map(|_| ()), unknown.map(|_| ()), start.elapsed())
    });
    fn_result.expect("connect to the deployed port");
    let error = unknown_result.expect_err("connect to an unknown port must fail in strict mode");
    assert_eq!(
        error.kind(),
        ErrorKind::TimedOut,
        "dropped SYN: a timeout, not a reset: {error}"
    );
    assert!(elapsed >= Duration::from_millis(400));
    let stats = policy.stats().unwrap();
    assert!(
        stats[&FN_PORT].packets >= 2 && stats[&FN_PORT].drops == 0,
        "{stats:?}"
    );
    assert!(
        stats[&0].drops >= 1,
        "the SYN to {UNKNOWN_PORT} is counted as a drop: {stats:?}"
    );
    drop(listeners);
}

#[test]
fn disable_allow_and_remove_take_effect_live() {
    let test = "disable_allow_and_remove_take_effect_live";
    let Some((pair, mut policy)) = setup(test, XdpAttachMode::Generic) else {
        return;
    };
    // A second program cannot take the interface while the first is attached.
    let second = NetnsPair::in_ns(&pair.b, || {
        XdpPolicy::load_and_attach(VETH_B, XdpAttachMode::Generic)
    });
    let error = second.expect_err("a second XDP attachment must fail");
    eprintln!("{test}: second attachment: {error}");
    assert!(matches!(error, bpf::BpfError::Attach { .. }), "{error}");
    let addr = IpAddr::V4(pair.addr_b);
    let sender = udp_sender(&pair, false);
    let fn_listener = udp_listener(&pair, addr, FN_PORT);
    let allowed_listener = udp_listener(&pair, addr, ALLOWED_PORT);
    let (to_fn, to_allowed) = (
        SocketAddr::new(addr, FN_PORT),
        SocketAddr::new(addr, ALLOWED_PORT),
    );
    policy.set_strict(true).unwrap();
    policy.set_port(FN_PORT, 7, true).unwrap();
    assert_eq!(
        send_and_count(&sender, to_fn, &fn_listener, 5),
        5,
        "enabled function"
    );

    policy.set_port(FN_PORT, 7, false).unwrap();
    assert_eq!(
        send_and_count(&sender, to_fn, &fn_listener, 5),
        0,
        "disabled function"
    );
    assert_eq!(
        stats_of(&policy, FN_PORT),
        PortStats {
            packets: 10,
            bytes: 10 * (ETH_IPV4_UDP + PAYLOAD.len() as u64),
            drops: 5
        }
    );
    // Disabled functions are dropped even when not strict.
    policy.set_strict(false).unwrap();
    assert_eq!(
        send_and_count(&sender, to_fn, &fn_listener, 2),
        0,
        "disabled, not strict"
    );
    policy.set_strict(true).unwrap();

    assert_eq!(
        send_and_count(&sender, to_allowed, &allowed_listener, 4),
        0,
        "not yet allowed"
    );
    policy.allow_port(ALLOWED_PORT).unwrap();
    assert_eq!(
        send_and_count(&sender, to_allowed, &allowed_listener, 4),
        4,
        "allow-listed"
    );
    assert_eq!(stats_of(&policy, ALLOWED_PORT).packets, 4);
    policy.remove_port(ALLOWED_PORT).unwrap();
    assert_eq!(
        send_and_count(&sender, to_allowed, &allowed_listener, 4),
        0,
        "removed"
    );

    policy.set_port(FN_PORT, 7, true).unwrap();
    assert_eq!(
        send_and_count(&sender, to_fn, &fn_listener, 5),
        5,
        "re-enabled"
    );
    assert_eq!(
        stats_of(&policy, 0).drops,
        8,
        "drops to ports without policy"
    );
}

const CHILD_ENV: &str = "AETHER_BPF_TEST_CHILD_NETNS";

/// Not a test on its own: the child process of `sigkill_detaches`.
#[test]
#[ignore = "run by sigkill_detaches in a child process"]
fn child_attach_and_wait() {
    let Ok(ns) = std::env::var(CHILD_ENV) else {
        eprintln!("SKIP child_attach_and_wait: only meaningful as sigkill_detaches' child");
        return;
    };
    let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    let _policy = XdpPolicy::load_and_attach(VETH_B, XdpAttachMode::Generic).unwrap();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ATTACHED").unwrap();
    stdout.flush().unwrap();
    std::thread::sleep(Duration::from_secs(30));
}

/// The child process, killed if the test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process killed with SIGKILL leaves no XDP program behind: the BPF link
/// is a file descriptor the kernel closes with the process.
#[test]
fn sigkill_detaches() {
    let test = "sigkill_detaches";
    let Some((pair, policy)) = setup(test, XdpAttachMode::Generic) else {
        return;
    };
    drop(policy);
    assert!(pair.xdp_on_b().is_none());
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_attach_and_wait",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &pair.b)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let attached = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("ATTACHED"));
    assert!(attached, "child did not attach");
    assert!(pair.xdp_on_b().is_some(), "child's program attached");
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while pair.xdp_on_b().is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        pair.xdp_on_b().is_none(),
        "still attached after SIGKILL: {:?}",
        pair.xdp_on_b()
    );
}

/// Sends raw Ethernet frames on `VETH_A` from namespace A (AF_PACKET), `count`
/// times each, with the destination MAC of `VETH_B`.
fn send_raw(pair: &NetnsPair, frames: Vec<Vec<u8>>, count: usize) {
    let output = Command::new("ip")
        .args(["-n", &pair.b, "-o", "link", "show", "dev", VETH_B])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let mac_text = text
        .split("link/ether ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let mut mac = [0u8; 8];
    for (byte, hex) in mac.iter_mut().zip(mac_text.split(':')) {
        *byte = u8::from_str_radix(hex, 16).unwrap();
    }
    NetnsPair::in_ns(&pair.a, move || {
        use nix::libc;
        let ifindex = nix::net::if_::if_nametoindex(VETH_A).unwrap();
        // SAFETY: plain socket(2) call; the result is checked below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
        addr.sll_ifindex = i32::try_from(ifindex).unwrap();
        addr.sll_halen = 6;
        addr.sll_addr = mac;
        for frame in &frames {
            let mut frame = frame.clone();
            frame[..6].copy_from_slice(&mac[..6]);
            for _ in 0..count {
                // SAFETY: the buffer and the address outlive the call; the
                // lengths passed are theirs.
                let sent = unsafe {
                    libc::sendto(
                        fd,
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        std::ptr::from_ref(&addr).cast(),
                        u32::try_from(std::mem::size_of_val(&addr)).unwrap(),
                    )
                };
                assert_eq!(
                    sent,
                    isize::try_from(frame.len()).unwrap(),
                    "{}",
                    std::io::Error::last_os_error()
                );
            }
        }
        // SAFETY: fd is ours and closed once.
        unsafe { libc::close(fd) };
    });
}

/// Frames the kernel here cannot build through sockets (it has no 802.1Q
/// support, and IPv6 extension chains need raw sockets), sent raw over the
/// veth pair: VLAN and QinQ tags, IPv4 options, an IPv6 extension chain.
/// The counters show the verdict of every frame, exactly.
fn tagged_and_extended_frames(test: &str, mode: XdpAttachMode) {
    let Some((pair, mut policy)) = setup(test, mode) else {
        return;
    };
    eprintln!("{test}: attached as {:?}", policy.attachment());
    policy.set_strict(true).unwrap();
    policy.set_port(FN_PORT, 1, true).unwrap();
    let kinds = |dport: u16| -> Vec<Vec<u8>> {
        vec![
            Frame::ethernet(&[42], ETH_P_IP)
                .ipv4(IPPROTO_UDP, &[], 0, 12)
                .udp(dport, b"abcd")
                .bytes,
            Frame::ethernet(&[100, 42], ETH_P_IP)
                .ipv4(IPPROTO_TCP, &[], 0, 20)
                .tcp_syn(dport)
                .bytes,
            Frame::ethernet(&[], ETH_P_IP)
                .ipv4(IPPROTO_UDP, &[1; 40], 0, 12)
                .udp(dport, b"abcd")
                .bytes,
            Frame::ethernet(&[42], ETH_P_IPV6)
                .ipv6(&[(0, 8), (43, 24), (60, 16)], IPPROTO_UDP, 12)
                .udp(dport, b"abcd")
                .bytes,
        ]
    };
    const EACH: usize = 10;
    let bytes = |frames: &[Vec<u8>]| (frames.iter().map(Vec::len).sum::<usize>() * EACH) as u64;
    let (to_fn, to_unknown) = (kinds(FN_PORT), kinds(UNKNOWN_PORT));
    let (fn_bytes, unknown_bytes) = (bytes(&to_fn), bytes(&to_unknown));
    send_raw(&pair, to_fn, EACH);
    send_raw(&pair, to_unknown, EACH);
    let frames = (4 * EACH) as u64;
    // Generic XDP runs in the receive path of the sender's own softirq, native
    // XDP on veth in the peer's NAPI poll: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while stats_of(&policy, 0).packets < frames && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let expect_fn = PortStats {
        packets: frames,
        bytes: fn_bytes,
        drops: 0,
    };
    assert_eq!(
        stats_of(&policy, FN_PORT),
        expect_fn,
        "passed to the function"
    );
    let expect_other = PortStats {
        packets: frames,
        bytes: unknown_bytes,
        drops: frames,
    };
    assert_eq!(stats_of(&policy, 0), expect_other, "dropped, unknown port");
}

#[test]
fn tagged_and_extended_frames_generic() {
    tagged_and_extended_frames("tagged_and_extended_frames_generic", XdpAttachMode::Generic);
}

#[test]
fn tagged_and_extended_frames_native_or_auto() {
    tagged_and_extended_frames(
        "tagged_and_extended_frames_native_or_auto",
        XdpAttachMode::Auto,
    );
}
