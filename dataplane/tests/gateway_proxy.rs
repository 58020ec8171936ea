//! The gateway proxies HTTP/1.1 between real loopback sockets: keep-alive on
//! both sides, streamed Content-Length and chunked bodies both ways,
//! bodiless responses, pipelining, Expect: 100-continue, hop-by-hop fields.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod gateway_support;

use std::time::Duration;

use gateway_support::{backends, connect, get, start, upstream, GatewayOptions, Reply};

#[test]
fn get_reaches_the_upstream_and_comes_back() {
    let up = upstream(|req| Reply::ok(format!("path={}", req.path)));
    let gw = start(GatewayOptions::default(), backends(vec![(up.addr, 4)]));
    let resp = get(gw.addr, "/test?x=1");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"path=/test?x=1");
    let seen = up.seen.lock().unwrap();
    let req = &seen[0];
    assert_eq!(req.header("host"), Some("t"));
    assert_eq!(req.header("x-forwarded-for"), Some("127.0.0.1"));
    drop(seen);
    let fin = gw.stop();
    assert_eq!(fin.report.accepted, 1);
    assert_eq!(fin.latency[0].histogram.len(), 1);
}

#[test]
fn keep_alive_reuses_client_and_upstream_connections() {
    let up = upstream(|req| Reply::ok(req.path.clone()));
    let gw = start(GatewayOptions::default(), backends(vec![(up.addr, 4)]));
    let mut c = connect(gw.addr);
    for i in 0..50 {
        c.send(format!("GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = c.read_response("GET").unwrap();
        assert_eq!(r.body, format!("/{i}").as_bytes());
        assert_eq!(r.header("connection"), None);
    }
    // A second client connection reuses the pooled upstream connection.
    let r = get(gw.addr, "/again");
    assert_eq!(r.body, b"/again");
    assert_eq!(up.accepts.load(std::sync::atomic::Ordering::SeqCst), 1);
    let fin = gw.stop();
    assert_eq!(fin.connects, 1);
    assert_eq!(fin.report.accepted, 2);
}

#[test]
fn connection_close_and_http10_close_the_client_connection() {
    let up = upstream(|_| Reply::ok("x"));
    let gw = start(GatewayOptions::default(), backends(vec![(up.addr, 4)]));
    let mut c = connect(gw.addr);
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let r = c.read_response("GET").unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed());

    let mut c = connect(gw.addr);
    c.send(b"GET / HTTP/1.0\r\n\r\n");
    let r = c.read_response("GET").unwrap();
    assert_eq!(r.body, b"x");
    assert!(c.closed());

    // HTTP/1.0 asking for keep-alive gets it.
    let mut c = connect(gw.addr);
    for _ in 0..2 {
        c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = c.read_response("GET").unwrap();
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = upstream(|req| Reply::ok(req.path.clone()));
    let gw = start(GatewayOptions::default(), backends(vec![(up.addr, 4)]));
    let mut c = connect(gw.addr);
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.extend_from_slice(format!("GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    batch.extend_from_slice(b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    batch.extend_from_slice(b"GET /last HTTP/1.1\r\nHost: t\r\n\r\n");
    c.send(&batch);
    for i in 0..10 {
        assert_eq!(
            c.read_response("GET").unwrap().body,
            format!("/{i}").as_bytes()
        );
    }
    assert_eq!(c.read_response("POST").unwrap().body, b"/p");
    assert_eq!(c.read_response("GET").unwrap().body, b"/last");
    let seen = up.seen.lock().unwrap();
    let post = seen.iter().find(|m| m.method == "POST").unwrap();
    assert_eq!(post.body, b"abc");
}

#[test]
fn chunked_request_body_is_streamed_as_chunks() {
    let up = upstream(|req| Reply::ok(format!("len={} chunked={}", req.body_len, req.chunked)));
    let gw = start(GatewayOptions::default(), backends(vec![(up.addr, 4)]));
    let mut c = connect(gw.addr);
    c.send(b"POST /u HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut expected = Vec::new();
    for i in 0..20u8 {
        let piece = vec![b'a' + i; 100 + usize::from(i) * 37];
        expected.extend_from_slice(&piece);
        let mut raw = format!("{:x};ext=1\r\n", piece.len()).into_bytes();
        raw.extend_from_slice(&piece);
        raw.extend_from_slice(b"\r\n");
        // Split the chunk framing across writes too.
        let (a, b) = raw.split_at(raw.len() / 2);
        c.send(a);
        std::thread::sleep(Duration::from_millis(1));
        c.send(b);
    }
    c.send(b"0\r\nX-T: 1\r\n\r\n");
    let r = c.read_response("POST").unwrap();
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        format!("len={} chunked=true", expected.len())
    );
    let seen = up.seen.lock().unwrap();
    assert_eq!(seen[0].body, expected);
}

#[test]
fn chunked_and_close_delimited_responses_reach_the_client_chunked() {
    let pieces: Vec<Vec<u8>> = (0..30u8)
        .map(|i| vec![b'0' + (i % 10); 1000 + usize::from(i)])
        .collect();
    let expected: Vec<u8> = pieces.concat();
    let p2 = pieces.clone();
    let up = upstream(move |req| {
        if req.path == "/close" {
            Reply::CloseDelimited(b"until close".to_vec())
        } else {
            Reply::Chunked(p2.clone())
        }
    });
    let gw = start(GatewayOptions::default(), backends(vec![(up.addr, 4)]));
    let mut c = connect(gw.addr);
    c.send(b"GET /chunks HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response("GET").unwrap();
    assert!(r.chunked);
    assert_eq!(r.body, expected);
    c.send(b"GET /close HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response("GET").unwrap();
    assert!(
        r.chunked,
        "close-delimited body re-framed for the 1.1 client"
    );
    assert_eq!(r.body, b"until close");
    // The client connection survived both.
    c.send(b"GET /chunks HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response("GET").unwrap().body, expected);
    // An HTTP/1.0 client gets the chunked body close-delimited.
    let mut c = connect(gw.addr);
    c.send(b"GET /chunks HTTP/1.0\r\n\r\n");
    let r = c.read_response("GET").unwrap();
    assert!(!r.chunked);
    assert_eq!(r.body, expected);
}

#[test]
fn ten_megabyte_bodies_stream_both_ways() {
    const N: u64 = 10 * 1024 * 1024;
    let up = upstream(|req| {
        if req.method == "POST" {
            Reply::ok(format!("{}", req.body_len))
        } else {
            Reply::Huge(N)
        }
    });
    let gw = start(GatewayOptions::default(), backends(vec![(up.addr, 4)]));
    let mut c = connect(gw.addr);
    c.send(format!("POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: {N}\r\n\r\n").as_bytes());
    let block = vec![b'q'; 1 << 16];
    let mut left = N;
    while left > 0 {
        let k = block.len().min(usize::try_from(left).unwrap());
        c.send(&block[..k]);
        left -= k as u64;
    }
    let r = c.read_response("POST").unwrap();
    assert_eq!(r.body, N.to_string().as_bytes());
    c.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response("GET").unwrap();
    assert_eq!(r.body_len, N);
    assert_eq!(r.header("content-length"), Some(N.to_string().as_str()));
}

#[test]
fn bodiless_responses_and_expect_continue() {
    let up = upstream(|req| match req.path.as_str() {
        "/204" => Reply::Fixed {
            status: 204,
            body: Vec::new(),
            delay: Duration::ZERO,
            extra: Vec::new(),
        },
        "/304" => Reply::Fixed {
            status: 304,
            body: Vec::new(),
            delay: Duration::ZERO,
            extra: Vec::new(),
        },
        _ => Reply::ok(format!("body of {} bytes", req.body_len)),
    });
    let gw = start(GatewayOptions::default(), backends(vec![(up.addr, 4)]));
    let mut c = connect(gw.addr);
    c.send(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response("HEAD").unwrap();
    // HEAD keeps the Content-Length of what GET would send, without a body.
    assert_eq!(r.header("content-length"), Some("15"));
    assert!(r.body.is_empty());
    for p in ["/204", "/304"] {
        c.send(format!("GET {p} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = c.read_response("GET").unwrap();
        assert_eq!(r.status.to_string(), p[1..]);
    }
    // Expect: the gateway says 100 Continue before the body is sent.
    c.send(b"PUT /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    let interim = c.read_raw_head().unwrap();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    c.send(b"hello");
    let r = c.read_response("PUT").unwrap();
    assert_eq!(r.body, b"body of 5 bytes");
    assert_eq!(
        up.seen.lock().unwrap().last().unwrap().header("expect"),
        None
    );
}

#[test]
fn hop_by_hop_fields_stay_on_their_hop() {
    let up = upstream(|_| Reply::Fixed {
        status: 200,
        body: b"ok".to_vec(),
        delay: Duration::ZERO,
        extra: vec![
            ("Keep-Alive".into(), "timeout=5".into()),
            ("Connection".into(), "X-Secret".into()),
            ("X-Secret".into(), "1".into()),
            ("X-Public".into(), "2".into()),
        ],
    });
    let gw = start(GatewayOptions::default(), backends(vec![(up.addr, 4)]));
    let mut c = connect(gw.addr);
    c.send(
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: X-Mine\r\nX-Mine: 1\r\nTE: trailers\r\n\
          Upgrade: websocket\r\nProxy-Authorization: Basic x\r\nX-Kept: 3\r\n\r\n",
    );
    let r = c.read_response("GET").unwrap();
    assert_eq!(r.header("keep-alive"), None);
    assert_eq!(r.header("x-secret"), None);
    assert_eq!(r.header("x-public"), Some("2"));
    let seen = up.seen.lock().unwrap();
    for h in [
        "connection",
        "x-mine",
        "te",
        "upgrade",
        "proxy-authorization",
    ] {
        assert_eq!(seen[0].header(h), None, "{h} forwarded");
    }
    assert_eq!(seen[0].header("x-kept"), Some("3"));
}
