//! Test support for the gateway: plain-std HTTP upstreams on loopback, a raw
//! HTTP client, and a gateway running in its own glommio executor thread.
//!
//! The client and the upstreams parse HTTP with httparse and their own tiny
//! body readers, not with the gateway's code, so a gateway framing bug cannot
//! hide behind the same bug on both ends.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use dataplane::gateway::{
    bind_reuseport, into_glommio, serve_listener, CoreMetrics, FunctionRoute, LatencySnapshot,
    RouteSettings, ServeConfig, ServeReport,
};
use glommio::{LocalExecutorBuilder, Placement};

// ---------------------------------------------------------------- messages

/// A parsed HTTP message (request or response) with its body.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// Status code (responses) or 0.
    pub status: u16,
    /// Method (requests) or empty.
    pub method: String,
    /// Path (requests) or empty.
    pub path: String,
    /// Header fields as received.
    pub headers: Vec<(String, String)>,
    /// The body (for huge bodies: only the first MiB is kept).
    pub body: Vec<u8>,
    /// The body's full length.
    pub body_len: u64,
    /// The body came chunked.
    pub chunked: bool,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A buffered reader of HTTP messages from a std stream.
pub struct Wire {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

const KEEP: usize = 1 << 20;

impl Wire {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads more; false at EOF or error.
    fn more(&mut self) -> bool {
        let mut tmp = [0u8; 65536];
        match self.stream.read(&mut tmp) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    fn take_line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            if !self.more() {
                return None;
            }
        }
    }

    fn body_exact(&mut self, mut n: u64, into: &mut Vec<u8>) -> bool {
        while n > 0 {
            if self.buf.is_empty() && !self.more() {
                return false;
            }
            let take = self.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            if into.len() < KEEP {
                into.extend_from_slice(&self.buf[..take]);
            }
            self.buf.drain(..take);
            n -= take as u64;
        }
        true
    }

    fn read_body(&mut self, m: &mut Message, length: Option<u64>, until_close: bool) -> bool {
        if m.chunked {
            loop {
                let Some(line) = self.take_line() else {
                    return false;
                };
                let hex = String::from_utf8_lossy(&line);
                let hex = hex.split(';').next().unwrap().trim();
                let size = u64::from_str_radix(hex, 16).expect("chunk size");
                if size == 0 {
                    // trailers
                    loop {
                        let Some(l) = self.take_line() else {
                            return false;
                        };
                        if l.is_empty() {
                            return true;
                        }
                    }
                }
                if !self.body_exact(size, &mut m.body) {
                    return false;
                }
                m.body_len += size;
                let Some(crlf) = self.take_line() else {
                    return false;
                };
                assert!(crlf.is_empty(), "chunk data not followed by CRLF");
            }
        } else if let Some(n) = length {
            m.body_len = n;
            self.body_exact(n, &mut m.body)
        } else if until_close {
            loop {
                let n = self.buf.len();
                if m.body.len() < KEEP {
                    m.body.extend_from_slice(&self.buf);
                }
                m.body_len += n as u64;
                self.buf.clear();
                if !self.more() {
                    return true;
                }
            }
        } else {
            true
        }
    }

    fn head_end(&mut self) -> Option<usize> {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(i + 4);
            }
            if !self.more() {
                return None;
            }
        }
    }

    /// Reads one request; None at EOF.
    pub fn read_request(&mut self) -> Option<Message> {
        let end = self.head_end()?;
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(&self.buf[..end])
            .expect("upstream got a valid head");
        let mut m = Message {
            method: req.method.unwrap().to_owned(),
            path: req.path.unwrap().to_owned(),
            headers: collect(req.headers),
            ..Message::default()
        };
        self.buf.drain(..end);
        m.chunked = m
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let len = m.header("content-length").map(|v| v.parse().unwrap());
        self.read_body(&mut m, len, false).then_some(m)
    }

    /// Reads one response (to a request with `method`); None at EOF.
    pub fn read_response(&mut self, method: &str) -> Option<Message> {
        loop {
            let end = self.head_end()?;
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut resp = httparse::Response::new(&mut headers);
            resp.parse(&self.buf[..end])
                .expect("client got a valid head");
            let mut m = Message {
                status: resp.code.unwrap(),
                headers: collect(resp.headers),
                ..Message::default()
            };
            self.buf.drain(..end);
            if (100..200).contains(&m.status) {
                continue;
            }
            let bodiless = method == "HEAD" || m.status == 204 || m.status == 304;
            m.chunked = !bodiless
                && m.header("transfer-encoding")
                    .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
            let len = if bodiless {
                Some(0)
            } else {
                m.header("content-length").map(|v| v.parse().unwrap())
            };
            return self.read_body(&mut m, len, true).then_some(m);
        }
    }

    /// Reads a response head only, returning the raw status line and fields.
    pub fn read_raw_head(&mut self) -> Option<String> {
        let end = self.head_end()?;
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        Some(head)
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    /// True when the peer closed (reads EOF) within the read timeout.
    pub fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.more()
    }
}

fn collect(h: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    h.iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------- client

/// A client connection to `addr` with a 10 s read timeout.
pub fn connect(addr: SocketAddr) -> Wire {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    Wire::new(s)
}

/// One GET on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> Message {
    let mut w = connect(addr);
    w.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    w.read_response("GET").expect("a response")
}

// ---------------------------------------------------------------- upstream

/// What an upstream does with a request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status and body with Content-Length, after a delay.
    Fixed {
        status: u16,
        body: Vec<u8>,
        delay: Duration,
        extra: Vec<(String, String)>,
    },
    /// A chunked body from these pieces.
    Chunked(Vec<Vec<u8>>),
    /// `n` bytes of body with Content-Length.
    Huge(u64),
    /// HTTP/1.0 style: body then close.
    CloseDelimited(Vec<u8>),
    /// Close the connection without answering.
    Hangup,
    /// Answer (keep-alive implied), then close the connection anyway.
    OkThenClose(Vec<u8>),
}

impl Reply {
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self::Fixed {
            status: 200,
            body: body.into(),
            delay: Duration::ZERO,
            extra: Vec::new(),
        }
    }

    pub fn slow(body: impl Into<Vec<u8>>, delay: Duration) -> Self {
        Self::Fixed {
            status: 200,
            body: body.into(),
            delay,
            extra: Vec::new(),
        }
    }
}

type Handler = Arc<dyn Fn(&Message) -> Reply + Send + Sync>;

/// A std-thread HTTP/1.1 keep-alive server on 127.0.0.1.
pub struct TestUpstream {
    pub addr: SocketAddr,
    /// Connections accepted.
    pub accepts: Arc<AtomicUsize>,
    /// Requests handled.
    pub requests: Arc<AtomicUsize>,
    /// Most requests in progress at once.
    pub max_concurrent: Arc<AtomicUsize>,
    /// Every request seen (bodies capped at 1 MiB).
    pub seen: Arc<Mutex<Vec<Message>>>,
}

pub fn upstream(handler: impl Fn(&Message) -> Reply + Send + Sync + 'static) -> TestUpstream {
    upstream_at("127.0.0.1:0".parse().unwrap(), handler)
}

/// An upstream listening on `addr`.
pub fn upstream_at(
    addr: SocketAddr,
    handler: impl Fn(&Message) -> Reply + Send + Sync + 'static,
) -> TestUpstream {
    let listener = TcpListener::bind(addr).unwrap();
    let addr = listener.local_addr().unwrap();
    let up = TestUpstream {
        addr,
        accepts: Arc::default(),
        requests: Arc::default(),
        max_concurrent: Arc::default(),
        seen: Arc::default(),
    };
    let handler: Handler = Arc::new(handler);
    let (accepts, requests, max, seen) = (
        up.accepts.clone(),
        up.requests.clone(),
        up.max_concurrent.clone(),
        up.seen.clone(),
    );
    let current = Arc::new(AtomicUsize::new(0));
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            // SYNC: plain counters read by the test after the fact; no data
            // is published through them (Relaxed/SeqCst both fine).
            accepts.fetch_add(1, Ordering::SeqCst);
            let (handler, requests, max, seen, current) = (
                handler.clone(),
                requests.clone(),
                max.clone(),
                seen.clone(),
                current.clone(),
            );
            thread::spawn(move || serve_upstream_conn(s, handler, requests, max, seen, current));
        }
    });
    up
}

fn serve_upstream_conn(
    s: TcpStream,
    handler: Handler,
    requests: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Message>>>,
    current: Arc<AtomicUsize>,
) {
    s.set_nodelay(true).unwrap();
    let mut w = Wire::new(s);
    while let Some(req) = w.read_request() {
        // SYNC: statistics only (see above).
        let now = current.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(now, Ordering::SeqCst);
        requests.fetch_add(1, Ordering::SeqCst);
        seen.lock().unwrap().push(req.clone());
        let reply = handler(&req);
        let head_only = req.method == "HEAD";
        let ok = match reply {
            Reply::Fixed {
                status,
                body,
                delay,
                extra,
            } => {
                thread::sleep(delay);
                let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                for (n, v) in extra {
                    out.push_str(&format!("{n}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let mut out = out.into_bytes();
                if !head_only && status != 204 && status != 304 {
                    out.extend_from_slice(&body);
                }
                w.stream.write_all(&out).is_ok()
            }
            Reply::Chunked(pieces) => {
                let mut ok = w
                    .stream
                    .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .is_ok();
                for p in pieces {
                    let mut c = format!("{:x}\r\n", p.len()).into_bytes();
                    c.extend_from_slice(&p);
                    c.extend_from_slice(b"\r\n");
                    ok &= w.stream.write_all(&c).is_ok();
                    thread::sleep(Duration::from_millis(2));
                }
                ok && w.stream.write_all(b"0\r\nX-Trailer: 1\r\n\r\n").is_ok()
            }
            Reply::Huge(n) => {
                let mut ok = w
                    .stream
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").as_bytes())
                    .is_ok();
                let block = vec![b'z'; 65536];
                let mut left = n;
                while ok && left > 0 {
                    let k = block.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    ok = w.stream.write_all(&block[..k]).is_ok();
                    left -= k as u64;
                }
                ok
            }
            Reply::CloseDelimited(body) => {
                let _ = w.stream.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
                let _ = w.stream.write_all(&body);
                false
            }
            Reply::Hangup => false,
            Reply::OkThenClose(body) => {
                let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                    .into_bytes();
                out.extend_from_slice(&body);
                let _ = w.stream.write_all(&out);
                false
            }
        };
        current.fetch_sub(1, Ordering::SeqCst);
        if !ok {
            break;
        }
    }
}

/// A loopback port with nothing listening (connects are refused).
pub fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

// ---------------------------------------------------------------- gateway

/// A gateway serving one function on its own executor thread.
pub struct Gateway {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    join: Option<glommio::ExecutorJoinHandle<Finished>>,
}

/// What the gateway thread returns when it ends.
#[derive(Debug)]
pub struct Finished {
    pub report: ServeReport,
    pub latency: Vec<LatencySnapshot>,
    pub retries: u64,
    pub connects: u64,
}

pub struct GatewayOptions {
    pub settings: RouteSettings,
    pub placement: Placement,
    /// Bind this address (port 0: ephemeral).
    pub listen: SocketAddr,
    pub drain_timeout: Duration,
    pub metrics: Option<CoreMetrics>,
    pub core: usize,
    /// glommio's spin-before-park (latency measurements).
    pub spin: Option<Duration>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            settings: RouteSettings {
                timeout: Duration::from_secs(5),
                ..RouteSettings::default()
            },
            placement: Placement::Unbound,
            listen: "127.0.0.1:0".parse().unwrap(),
            drain_timeout: Duration::from_secs(5),
            metrics: None,
            core: 0,
            spin: None,
        }
    }
}

/// Starts a gateway; `setup` runs inside its executor with the route (add
/// backends there, or spawn tasks that add them later).
pub fn start(
    opts: GatewayOptions,
    setup: impl FnOnce(Rc<FunctionRoute>) + Send + 'static,
) -> Gateway {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let (tx, rx) = mpsc::channel();
    let mut builder = LocalExecutorBuilder::new(opts.placement.clone()).name("gw-test");
    if let Some(spin) = opts.spin {
        builder = builder.spin_before_park(spin);
    }
    let join = builder
        .spawn(move || async move {
            let std = bind_reuseport(opts.listen, 128).unwrap();
            tx.send(std.local_addr().unwrap()).unwrap();
            let route = FunctionRoute::new("fn", opts.settings);
            setup(Rc::clone(&route));
            let metrics = Rc::new(
                opts.metrics
                    .unwrap_or_else(|| CoreMetrics::unregistered(opts.core)),
            );
            let mut cfg = ServeConfig::new(opts.listen);
            cfg.drain_timeout = opts.drain_timeout;
            let shutdown = async move {
                // SYNC: a stop flag with nothing published behind it.
                while !stop2.load(Ordering::SeqCst) {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
            };
            let report =
                serve_listener(into_glommio(std), cfg, route, Rc::clone(&metrics), shutdown).await;
            Finished {
                report,
                latency: metrics.latency_snapshot(),
                retries: metrics.retries(),
                connects: metrics.upstream_connects(),
            }
        })
        .unwrap();
    let addr = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    Gateway {
        addr,
        stop,
        join: Some(join),
    }
}

impl Gateway {
    /// Signals shutdown and waits for the drain to end.
    pub fn stop(mut self) -> Finished {
        self.stop.store(true, Ordering::SeqCst);
        self.join.take().unwrap().join().unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// A route setup adding plain-TCP backends `(addr, concurrency)`.
pub fn backends(list: Vec<(SocketAddr, usize)>) -> impl FnOnce(Rc<FunctionRoute>) + Send + 'static {
    move |route| {
        for (i, (addr, c)) in list.into_iter().enumerate() {
            route.add_backend(
                Rc::new(dataplane::gateway::TcpUpstream::new(i as u64 + 1, addr)),
                c,
            );
        }
    }
}
