//! Packet parsing and policy, checked with `BPF_PROG_TEST_RUN` on crafted
//! frames: no namespace needed, but root and BPF are.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use bpf::{XdpPolicy, XdpVerdict};
use common::*;

fn verdict(policy: &mut XdpPolicy, frame: &Frame) -> XdpVerdict {
    policy.run_on(&frame.bytes, 1).expect("test run").0
}

#[test]
fn loads_and_passes_everything_when_not_strict() {
    let Some(mut policy) = load_or_skip("loads_and_passes_everything_when_not_strict") else {
        return;
    };
    assert!(!policy.strict().unwrap());
    let frame = Frame::ethernet(&[], ETH_P_IP)
        .ipv4(IPPROTO_UDP, &[], 0, 12)
        .udp(9999, b"abcd");
    assert_eq!(verdict(&mut policy, &frame), XdpVerdict::Pass);
    assert!(
        policy.stats().unwrap().is_empty(),
        "unknown ports are not counted when not strict"
    );
}

const FN_PORT: u16 = 8080;
const DISABLED_PORT: u16 = 9090;
const ALLOWED_PORT: u16 = 22;
const UNKNOWN_PORT: u16 = 7777;

/// Strict mode with one enabled function, one disabled function, one allow-listed port.
fn strict_policy(test: &str) -> Option<XdpPolicy> {
    let mut policy = load_or_skip(test)?;
    policy.set_strict(true).unwrap();
    policy.set_port(FN_PORT, 1, true).unwrap();
    policy.set_port(DISABLED_PORT, 2, false).unwrap();
    policy.allow_port(ALLOWED_PORT).unwrap();
    Some(policy)
}

fn udp4(vlans: &[u16], options: &[u8], dport: u16) -> Frame {
    Frame::ethernet(vlans, ETH_P_IP)
        .ipv4(IPPROTO_UDP, options, 0, 12)
        .udp(dport, b"abcd")
}

fn tcp4(dport: u16) -> Frame {
    Frame::ethernet(&[], ETH_P_IP)
        .ipv4(IPPROTO_TCP, &[], 0, 20)
        .tcp_syn(dport)
}

fn udp6(exts: &[(u8, usize)], dport: u16) -> Frame {
    Frame::ethernet(&[], ETH_P_IPV6)
        .ipv6(exts, IPPROTO_UDP, 12)
        .udp(dport, b"abcd")
}

fn expected(dport: u16) -> XdpVerdict {
    match dport {
        FN_PORT | ALLOWED_PORT => XdpVerdict::Pass,
        _ => XdpVerdict::Drop,
    }
}

const ALL_PORTS: [u16; 4] = [FN_PORT, DISABLED_PORT, ALLOWED_PORT, UNKNOWN_PORT];

#[test]
fn strict_policy_on_ipv4_tcp_udp_with_vlans_and_options() {
    let Some(mut policy) = strict_policy("strict_policy_on_ipv4_tcp_udp_with_vlans_and_options")
    else {
        return;
    };
    let max_options = [1u8; 40]; // IHL 15: 40 bytes of NOP options
    for dport in ALL_PORTS {
        for vlans in [&[][..], &[10], &[100, 10]] {
            for options in [&[][..], &[1, 1, 1, 0], &max_options] {
                let frame = udp4(vlans, options, dport);
                assert_eq!(
                    verdict(&mut policy, &frame),
                    expected(dport),
                    "udp {dport} vlans {vlans:?} opts {}",
                    options.len()
                );
            }
        }
        assert_eq!(
            verdict(&mut policy, &tcp4(dport)),
            expected(dport),
            "tcp {dport}"
        );
    }
}

#[test]
fn strict_policy_on_ipv6_with_extension_headers() {
    let Some(mut policy) = strict_policy("strict_policy_on_ipv6_with_extension_headers") else {
        return;
    };
    let (hop, routing, dest, frag) = (0u8, 43u8, 60u8, 44u8);
    for dport in ALL_PORTS {
        for exts in [
            &[][..],
            &[(hop, 8)],
            &[(hop, 16), (routing, 24), (dest, 8)],
            &[(hop, 8), (dest, 8), (frag, 8), (dest, 2048)], // 4: the limit
        ] {
            assert_eq!(
                verdict(&mut policy, &udp6(exts, dport)),
                expected(dport),
                "udp6 {dport} exts {exts:?}"
            );
        }
        let tcp = Frame::ethernet(&[100], ETH_P_IPV6)
            .ipv6(&[(dest, 8)], IPPROTO_TCP, 20)
            .tcp_syn(dport);
        assert_eq!(verdict(&mut policy, &tcp), expected(dport), "tcp6 {dport}");
        // Five extension headers exceed the parser: malformed, dropped in strict
        // mode even towards an enabled function.
        let long = udp6(
            &[(hop, 8), (dest, 8), (dest, 8), (dest, 8), (dest, 8)],
            dport,
        );
        assert_eq!(
            verdict(&mut policy, &long),
            XdpVerdict::Drop,
            "5 extension headers, port {dport}"
        );
    }
}

#[test]
fn non_tcp_udp_and_non_first_fragments_pass() {
    let Some(mut policy) = strict_policy("non_tcp_udp_and_non_first_fragments_pass") else {
        return;
    };
    let arp = Frame::ethernet(&[], ETH_P_ARP).raw(&[0; 28]);
    let icmp = Frame::ethernet(&[], ETH_P_IP)
        .ipv4(IPPROTO_ICMP, &[], 0, 8)
        .raw(&[8, 0, 0, 0, 0, 0, 0, 0]);
    let icmp6 = Frame::ethernet(&[5], ETH_P_IPV6)
        .ipv6(&[], 58, 8)
        .raw(&[128, 0, 0, 0, 0, 0, 0, 0]);
    // Offset 185 * 8: its payload is the middle of a datagram, not a UDP header.
    let frag4 = Frame::ethernet(&[], ETH_P_IP)
        .ipv4(IPPROTO_UDP, &[], 185, 12)
        .udp(UNKNOWN_PORT, b"abcd");
    let mut frag6 = udp6(&[(44, 8)], UNKNOWN_PORT);
    frag6.bytes[14 + 40 + 2..14 + 40 + 4].copy_from_slice(&(185u16 << 3).to_be_bytes());
    for (name, frame) in [
        ("arp", &arp),
        ("icmp", &icmp),
        ("icmp6", &icmp6),
        ("frag4", &frag4),
        ("frag6", &frag6),
    ] {
        assert_eq!(verdict(&mut policy, frame), XdpVerdict::Pass, "{name}");
    }
    // The first fragment (offset 0, more-fragments set) carries the ports: judged.
    let first4 = Frame::ethernet(&[], ETH_P_IP)
        .ipv4(IPPROTO_UDP, &[], 0x2000, 12)
        .udp(UNKNOWN_PORT, b"abcd");
    assert_eq!(verdict(&mut policy, &first4), XdpVerdict::Drop);
    let first6 = udp6(&[(44, 8)], UNKNOWN_PORT);
    assert_eq!(verdict(&mut policy, &first6), XdpVerdict::Drop);
}

#[test]
fn malformed_frames_drop_when_strict_and_pass_otherwise() {
    let Some(mut policy) = strict_policy("malformed_frames_drop_when_strict_and_pass_otherwise")
    else {
        return;
    };
    let three_vlans = udp4(&[1, 2], &[], FN_PORT);
    let mut three = Frame::ethernet(&[1, 2, 3], ETH_P_IP);
    three.bytes.extend_from_slice(&three_vlans.bytes[22..]);
    let mut bad_ihl = udp4(&[], &[], FN_PORT);
    bad_ihl.bytes[14] = 0x44;
    let cases = [("three vlan tags", three), ("ihl 4", bad_ihl)];
    for (name, frame) in &cases {
        assert_eq!(
            verdict(&mut policy, frame),
            XdpVerdict::Drop,
            "{name}, strict"
        );
    }
    // Every truncation of a valid frame inside its IP/UDP headers is malformed;
    // frames cut inside Ethernet are not IP at all and pass.
    // (frame, end of its Ethernet+VLAN header, end of its L4 header)
    let frames = [
        (udp4(&[7], &[1, 1, 1, 0], FN_PORT), 18, 18 + 24 + 8),
        (udp6(&[(0, 8)], FN_PORT), 14, 14 + 40 + 8 + 8),
        (tcp4(FN_PORT), 14, 14 + 20 + 20),
    ];
    for (full, eth_end, l4_end) in frames {
        for len in 14..full.bytes.len() {
            let cut = full.clone().truncated(len);
            let want = if len < eth_end || len >= l4_end {
                XdpVerdict::Pass
            } else {
                XdpVerdict::Drop
            };
            assert_eq!(
                verdict(&mut policy, &cut),
                want,
                "cut at {len} of {}",
                full.bytes.len()
            );
        }
        assert_eq!(verdict(&mut policy, &full), XdpVerdict::Pass, "full frame");
    }
    policy.set_strict(false).unwrap();
    for (name, frame) in &cases {
        assert_eq!(
            verdict(&mut policy, frame),
            XdpVerdict::Pass,
            "{name}, not strict"
        );
    }
}

#[test]
fn counters_count_packets_bytes_and_drops() {
    let Some(mut policy) = strict_policy("counters_count_packets_bytes_and_drops") else {
        return;
    };
    let pass = udp4(&[], &[], FN_PORT);
    let disabled = tcp4(DISABLED_PORT);
    let unknown = udp6(&[], UNKNOWN_PORT);
    assert_eq!(policy.run_on(&pass.bytes, 10).unwrap().0, XdpVerdict::Pass);
    assert_eq!(
        policy.run_on(&disabled.bytes, 3).unwrap().0,
        XdpVerdict::Drop
    );
    assert_eq!(
        policy.run_on(&unknown.bytes, 5).unwrap().0,
        XdpVerdict::Drop
    );
    let stats = policy.stats().unwrap();
    let len = |f: &Frame| u64::try_from(f.bytes.len()).unwrap();
    assert_eq!(
        stats[&FN_PORT],
        bpf::PortStats {
            packets: 10,
            bytes: 10 * len(&pass),
            drops: 0
        }
    );
    assert_eq!(
        stats[&DISABLED_PORT],
        bpf::PortStats {
            packets: 3,
            bytes: 3 * len(&disabled),
            drops: 3
        }
    );
    assert_eq!(
        stats[&0],
        bpf::PortStats {
            packets: 5,
            bytes: 5 * len(&unknown),
            drops: 5
        }
    );
    assert!(!stats.contains_key(&UNKNOWN_PORT) && !stats.contains_key(&ALLOWED_PORT));
    // Live update: enabling the function lets its traffic through, counted on.
    policy.set_port(DISABLED_PORT, 2, true).unwrap();
    assert_eq!(
        policy.run_on(&disabled.bytes, 2).unwrap().0,
        XdpVerdict::Pass
    );
    assert_eq!(policy.stats().unwrap()[&DISABLED_PORT].packets, 5);
    policy.remove_port(DISABLED_PORT).unwrap();
    assert!(!policy.stats().unwrap().contains_key(&DISABLED_PORT));
    assert_eq!(
        policy.run_on(&disabled.bytes, 1).unwrap().0,
        XdpVerdict::Drop
    );
    assert!(matches!(
        policy.set_port(0, 1, true),
        Err(bpf::BpfError::PortZero)
    ));
}

#[test]
fn attaching_to_a_missing_interface_is_a_typed_error() {
    let test = "attaching_to_a_missing_interface_is_a_typed_error";
    let Some(mut policy) = load_or_skip(test) else {
        return;
    };
    let error = policy
        .attach("aeth-nonexist0", bpf::XdpAttachMode::Generic)
        .unwrap_err();
    assert!(
        matches!(&error, bpf::BpfError::UnknownInterface { ifname } if ifname == "aeth-nonexist0"),
        "{error}"
    );
    assert!(policy.attachment().is_none());
}
