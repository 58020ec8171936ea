//! Two executors pinned to two cores each hold a member of one port's
//! `SO_REUSEPORT` group: connections from many client ports spread over
//! both, each core serves them with its own backends, and each core's
//! metrics land in the shared registry under its own `core` label.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod gateway_support;

use std::net::SocketAddr;

use dataplane::gateway::CoreMetrics;
use gateway_support::{backends, get, start, upstream, GatewayOptions, Reply};
use glommio::Placement;
use prometheus_client::registry::Registry;

#[test]
fn two_cores_share_the_port_and_both_accept() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (p0, p1) = if cpus >= 2 {
        (Placement::Fixed(0), Placement::Fixed(1))
    } else {
        eprintln!("NOTE: one CPU only; running both executors unpinned");
        (Placement::Unbound, Placement::Unbound)
    };
    let up0 = upstream(|_| Reply::ok("core0"));
    let up1 = upstream(|_| Reply::ok("core1"));
    let mut registry = Registry::default();
    let m0 = CoreMetrics::register(&mut registry, 0);
    let m1 = CoreMetrics::register(&mut registry, 1);

    let gw0 = start(
        GatewayOptions {
            placement: p0,
            metrics: Some(m0),
            core: 0,
            ..GatewayOptions::default()
        },
        backends(vec![(up0.addr, 8)]),
    );
    let listen: SocketAddr = gw0.addr;
    let gw1 = start(
        GatewayOptions {
            placement: p1,
            listen,
            metrics: Some(m1),
            core: 1,
            ..GatewayOptions::default()
        },
        backends(vec![(up1.addr, 8)]),
    );
    assert_eq!(gw1.addr, listen);

    let (mut a, mut b) = (0, 0);
    for _ in 0..64 {
        let r = get(listen, "/");
        assert_eq!(r.status, 200);
        match r.body.as_slice() {
            b"core0" => a += 1,
            b"core1" => b += 1,
            other => panic!("unexpected body {other:?}"),
        }
    }
    assert!(
        a > 0 && b > 0,
        "connections spread over both members: {a} / {b}"
    );

    // The gateway records a request right after writing its response: give
    // the last one a moment to be counted.
    let want = [
        format!(r#"requests_total{{core="0",function="fn",status="200"}} {a}"#),
        format!(r#"requests_total{{core="1",function="fn",status="200"}} {b}"#),
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut text = String::new();
    loop {
        text.clear();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        if want.iter().all(|w| text.contains(w.as_str())) || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        text.contains(&format!(
            r#"requests_total{{core="0",function="fn",status="200"}} {a}"#
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"requests_total{{core="1",function="fn",status="200"}} {b}"#
        )),
        "{text}"
    );
    assert!(text.contains(r#"request_duration_seconds_count{core="1",function="fn"}"#));
    assert!(
        text.contains(r#"upstream_connects_total{core="0"} 1"#),
        "{text}"
    );
    let f0 = gw0.stop();
    let f1 = gw1.stop();
    assert_eq!(f0.report.accepted + f1.report.accepted, 64);
}
