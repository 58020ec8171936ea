//! Admission, deadlines, retries and draining, against real loopback
//! upstreams: per-backend concurrency, the bounded FIFO queue (503 when
//! full), `timeout_ms` → 504, retries before the request is written, 502
//! after, and graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod gateway_support;

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use dataplane::gateway::{RouteSettings, TcpUpstream};
use gateway_support::{
    backends, connect, dead_addr, get, start, upstream, upstream_at, GatewayOptions, Reply,
};

fn opts(timeout_ms: u64, queue: usize) -> GatewayOptions {
    GatewayOptions {
        settings: RouteSettings {
            timeout: Duration::from_millis(timeout_ms),
            queue_size: queue,
            ..RouteSettings::default()
        },
        ..GatewayOptions::default()
    }
}

#[test]
fn slow_upstream_gets_504_at_the_deadline_and_the_connection_lives_on() {
    let up = upstream(|req| {
        if req.path == "/slow" {
            Reply::slow("late", Duration::from_millis(800))
        } else {
            Reply::ok("fast")
        }
    });
    let gw = start(opts(150, 16), backends(vec![(up.addr, 4)]));
    let mut c = connect(gw.addr);
    let t = Instant::now();
    c.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response("GET").unwrap();
    let took = t.elapsed();
    assert_eq!(r.status, 504);
    assert!(
        took >= Duration::from_millis(140) && took < Duration::from_millis(600),
        "{took:?}"
    );
    // Same client connection, next request fine (on a new upstream connection:
    // the timed-out one was discarded).
    c.send(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response("GET").unwrap().body, b"fast");
    let fin = gw.stop();
    assert_eq!(fin.connects, 2);
}

#[test]
fn concurrency_one_queues_five_requests_in_order_none_fails() {
    let up = upstream(|req| Reply::slow(req.path.clone(), Duration::from_millis(40)));
    let gw = start(opts(5_000, 16), backends(vec![(up.addr, 1)]));
    let addr = gw.addr;
    let clients: Vec<_> = (0..5)
        .map(|i| {
            // Staggered so the arrival order is known.
            thread::sleep(Duration::from_millis(25));
            thread::spawn(move || get(addr, &format!("/{i}")))
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let r = c.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, format!("/{i}").as_bytes());
    }
    assert_eq!(up.max_concurrent.load(Ordering::SeqCst), 1);
    let order: Vec<String> = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.path.clone())
        .collect();
    assert_eq!(order, ["/0", "/1", "/2", "/3", "/4"], "FIFO");
}

#[test]
fn full_queue_answers_503_with_retry_after() {
    let up = upstream(|_| Reply::slow("done", Duration::from_millis(600)));
    let gw = start(opts(5_000, 1), backends(vec![(up.addr, 1)]));
    let addr = gw.addr;
    let busy = thread::spawn(move || get(addr, "/a"));
    thread::sleep(Duration::from_millis(100));
    let queued = thread::spawn(move || get(addr, "/b"));
    thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let r = get(addr, "/c");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(t.elapsed() < Duration::from_millis(300), "503 is immediate");
    assert_eq!(busy.join().unwrap().status, 200);
    assert_eq!(queued.join().unwrap().status, 200);
}

#[test]
fn no_backend_waits_then_504() {
    let gw = start(opts(200, 16), |_| {});
    let t = Instant::now();
    let r = get(gw.addr, "/");
    assert_eq!(r.status, 504);
    assert!(
        t.elapsed() >= Duration::from_millis(190),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn backend_added_while_waiting_serves_the_queued_request() {
    let up = upstream(|_| Reply::ok("late backend"));
    let addr = up.addr;
    let gw = start(opts(3_000, 16), move |route| {
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(150)).await;
            route.add_backend(Rc::new(TcpUpstream::new(9, addr)), 1);
        })
        .detach();
    });
    let t = Instant::now();
    let r = get(gw.addr, "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"late backend");
    assert!(t.elapsed() >= Duration::from_millis(140));
}

#[test]
fn refused_backend_is_skipped_and_the_request_retried() {
    let up = upstream(|_| Reply::ok("alive"));
    let gw = start(
        opts(2_000, 16),
        backends(vec![(dead_addr(), 4), (up.addr, 4)]),
    );
    for _ in 0..6 {
        let r = get(gw.addr, "/");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"alive");
    }
    let fin = gw.stop();
    assert!(
        fin.retries >= 1,
        "the dead backend was tried once, then suspect"
    );
}

#[test]
fn queued_request_waits_for_a_refusing_backend_to_come_back() {
    // The only backend refuses at first (an instance restarting), then
    // listens: the request waits in the queue and is served before its
    // deadline, without any other request arriving to stir the queue.
    let addr = dead_addr();
    let gw = start(opts(3_000, 16), backends(vec![(addr, 1)]));
    let late = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        upstream_at(addr, |_| Reply::ok("back"))
    });
    let t = Instant::now();
    let r = get(gw.addr, "/");
    let _up = late.join().unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"back"[..]));
    assert!(
        t.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        t.elapsed()
    );
    let fin = gw.stop();
    assert!(fin.retries >= 1);
}

#[test]
fn upstream_dying_after_the_request_was_written_is_502() {
    let up = upstream(|_| Reply::Hangup);
    let gw = start(opts(2_000, 16), backends(vec![(up.addr, 4)]));
    let mut c = connect(gw.addr);
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi");
    let r = c.read_response("POST").unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(up.requests.load(Ordering::SeqCst), 1, "not retried");
    // The body was fully read: the client connection stays usable.
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response("GET").unwrap().status, 502);
}

#[test]
fn stale_pooled_connection_is_retried_for_idempotent_requests() {
    // Every upstream connection closes right after its first response,
    // though the response implies keep-alive: the pooled one is dead on reuse.
    let up = upstream(|req| Reply::OkThenClose(req.path.clone().into_bytes()));
    let gw = start(opts(2_000, 16), backends(vec![(up.addr, 4)]));
    assert_eq!(get(gw.addr, "/first").body, b"/first");
    // Reused at once (no probe): written, then EOF before any response byte.
    thread::sleep(Duration::from_millis(20));
    let r = get(gw.addr, "/second");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"/second"[..]));
    // Reused after a long idle time: the probe sees the close first.
    thread::sleep(Duration::from_millis(250));
    let r = get(gw.addr, "/third");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"/third"[..]));
    let fin = gw.stop();
    assert_eq!(fin.connects, 3);
    assert_eq!(fin.retries, 1, "only the unprobed reuse needed a retry");
    assert_eq!(up.requests.load(Ordering::SeqCst), 3);
}

#[test]
fn drain_finishes_in_flight_requests_and_closes_idle_connections() {
    let up = upstream(|_| Reply::slow("finished", Duration::from_millis(300)));
    let gw = start(opts(5_000, 16), backends(vec![(up.addr, 4)]));
    let addr = gw.addr;
    let mut idle = connect(addr);
    idle.send(b"GET /warm HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(idle.read_response("GET").unwrap().status, 200);
    let in_flight = thread::spawn(move || {
        let mut c = connect(addr);
        c.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
        c.read_response("GET").unwrap()
    });
    thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let fin = gw.stop();
    let r = in_flight.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"finished");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        idle.closed(),
        "idle keep-alive connection closed by the drain"
    );
    assert_eq!(fin.report.forced, 0);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer accepting"
    );
}

#[test]
fn drain_deadline_closes_what_is_left() {
    let up = upstream(|_| Reply::slow("never seen", Duration::from_secs(3)));
    let gw = start(
        GatewayOptions {
            drain_timeout: Duration::from_millis(200),
            ..opts(10_000, 16)
        },
        backends(vec![(up.addr, 4)]),
    );
    let addr = gw.addr;
    let stuck = thread::spawn(move || {
        let mut c = connect(addr);
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        c.read_response("GET")
    });
    thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let fin = gw.stop();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(fin.report.forced, 1);
    assert!(
        stuck.join().unwrap().is_none(),
        "connection closed without a response"
    );
}

#[test]
fn in_flight_and_queue_depth_are_visible_while_requests_wait() {
    use dataplane::gateway::CoreMetrics;
    use prometheus_client::registry::Registry;

    let mut registry = Registry::default();
    let metrics = CoreMetrics::register(&mut registry, 0);
    let up = upstream(|_| Reply::slow("ok", Duration::from_millis(300)));
    let gw = start(
        GatewayOptions {
            metrics: Some(metrics),
            ..opts(5_000, 16)
        },
        backends(vec![(up.addr, 1)]),
    );
    let addr = gw.addr;
    let clients: Vec<_> = (0..2)
        .map(|_| thread::spawn(move || get(addr, "/")))
        .collect();
    thread::sleep(Duration::from_millis(120));
    assert_gauges(&encode(&registry), 2, 1);
    for c in clients {
        assert_eq!(c.join().unwrap().status, 200);
    }
    // The gateway records a request right after writing its response.
    let done = r#"requests_total{core="0",function="fn",status="200"} 2"#;
    let text = eventually(&registry, done);
    assert!(text.contains(done), "{text}");
    assert_gauges(&text, 0, 0);
}

fn assert_gauges(text: &str, in_flight: u64, queued: u64) {
    for line in [
        format!(r#"in_flight{{core="0",function="fn"}} {in_flight}"#),
        format!(r#"queue_depth{{core="0",function="fn"}} {queued}"#),
    ] {
        assert!(text.contains(&line), "{line} not in\n{text}");
    }
}

/// The registry's text once it contains `needle` (waits up to 2 s).
fn eventually(registry: &prometheus_client::registry::Registry, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let text = encode(registry);
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn encode(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}
