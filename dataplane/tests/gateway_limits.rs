//! Malformed and oversized requests, sent as raw bytes, get the right status
//! and never reach the upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod gateway_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use dataplane::gateway::{RouteSettings, MAX_HEADERS, MAX_HEAD_BYTES};
use gateway_support::{backends, connect, start, upstream, GatewayOptions, Reply, TestUpstream};

fn gateway(up: &TestUpstream) -> gateway_support::Gateway {
    start(
        GatewayOptions {
            settings: RouteSettings {
                timeout: Duration::from_secs(5),
                max_body_bytes: 1000,
                ..RouteSettings::default()
            },
            ..GatewayOptions::default()
        },
        backends(vec![(up.addr, 4)]),
    )
}

/// Sends `raw` on a new connection; returns the status and whether the
/// gateway then closed the connection.
fn send_raw(addr: std::net::SocketAddr, raw: &[u8]) -> (u16, bool) {
    let mut c = connect(addr);
    c.send(raw);
    let r = c.read_response("GET").expect("an error response");
    let closed = c.closed();
    (r.status, closed)
}

#[test]
fn oversized_heads_are_431() {
    let up = upstream(|_| Reply::ok("no"));
    let gw = gateway(&up);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(MAX_HEAD_BYTES)
    );
    assert_eq!(send_raw(gw.addr, big.as_bytes()), (431, true));
    let mut many = String::from("GET / HTTP/1.1\r\nHost: t\r\n");
    for i in 0..MAX_HEADERS {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(send_raw(gw.addr, many.as_bytes()), (431, true));
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

#[test]
fn oversized_bodies_are_413() {
    let up = upstream(|_| Reply::ok("no"));
    let gw = gateway(&up);
    // Declared too large: refused before reading the body.
    assert_eq!(
        send_raw(
            gw.addr,
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n"
        ),
        (413, true)
    );
    // Chunked, discovered while streaming.
    let mut raw = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        raw.extend_from_slice(b"190\r\n");
        raw.extend_from_slice(&[b'x'; 400]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(send_raw(gw.addr, &raw), (413, true));
    // At the limit: fine.
    let mut c = connect(gw.addr);
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n");
    c.send(&[b'y'; 1000]);
    assert_eq!(c.read_response("POST").unwrap().status, 200);
}

#[test]
fn malformed_requests_are_400_or_501() {
    let up = upstream(|_| Reply::ok("no"));
    let gw = gateway(&up);
    let cases: [(&[u8], u16); 8] = [
        (b"HELLO\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400), // no Host
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ];
    for (raw, status) in cases {
        let (got, closed) = send_raw(gw.addr, raw);
        assert_eq!(got, status, "{}", String::from_utf8_lossy(raw));
        assert!(closed, "{}", String::from_utf8_lossy(raw));
    }
    // Only the bad-chunk case got as far as an upstream (its head was valid).
    assert!(up.requests.load(Ordering::SeqCst) <= 1);
}
