//! The closed-loop keep-alive load generator.
//!
//! - [`LatencyProbe`]: one connection, requests strictly one after another;
//!   every sample is the time from just before `write` of the request to the
//!   read that completes the response (one `Instant::now()` pair included).
//! - [`throughput`]: `connections` connections over `threads` client threads,
//!   each thread a `poll(2)` loop over its connections; each connection always
//!   has exactly one request in flight (the next is written as soon as a
//!   response is complete). After a warm-up, complete `200` responses are
//!   counted for a fixed duration; anything else is an error.
//!
//! Responses are framed with httparse and `Content-Length` ([`super::http`]).

use super::http::{frame, FrameError, Framed};
use super::interrupt::interrupted;
use crate::clock::duration_ns;
use crate::histogram::{HistogramError, LatencyHistogram};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Errors of a load run.
#[derive(Debug, Error)]
pub enum LoadError {
    /// Connecting failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    /// Reading or writing failed outside the error budget's reach.
    #[error("i/o with {addr} failed: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    /// The peer closed a connection while a response was due.
    #[error("{addr} closed the connection before a complete response")]
    Closed { addr: SocketAddr },
    /// Response bytes could not be framed.
    #[error("bad response from {addr}: {source}")]
    Frame {
        addr: SocketAddr,
        source: FrameError,
    },
    /// Too many failed requests: the run is not a measurement any more.
    #[error("{errors} failed requests to {addr} (limit {limit}); last: {last}")]
    TooManyErrors {
        addr: SocketAddr,
        errors: u64,
        limit: u64,
        last: String,
    },
    /// A client thread could not start or panicked.
    #[error("client thread: {0}")]
    Thread(String),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted by a signal")]
    Interrupted,
    #[error(transparent)]
    Histogram(#[from] HistogramError),
}

/// Failed requests (or broken connections) tolerated per run before it is
/// abandoned; each one is also counted in the result.
pub const ERROR_LIMIT: u64 = 1000;

/// Timeout of every blocking connect, read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Received bytes of one connection; complete responses are taken from the front.
#[derive(Debug)]
struct RecvBuf {
    buf: Vec<u8>,
    filled: usize,
}

impl RecvBuf {
    fn new() -> Self {
        Self {
            buf: vec![0; 16 * 1024],
            filled: 0,
        }
    }

    /// One `read` into the free space (grown when full); returns its result.
    fn read_from(&mut self, r: &mut impl Read) -> io::Result<usize> {
        if self.filled == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = r.read(&mut self.buf[self.filled..])?;
        self.filled += n;
        Ok(n)
    }

    /// The complete response at the front, if any (not consumed).
    fn peek(&self) -> Result<Option<Framed>, FrameError> {
        frame(&self.buf[..self.filled])
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.filled]
    }

    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
    }
}

/// A blocking keep-alive client connection.
#[derive(Debug)]
pub struct Client {
    addr: SocketAddr,
    stream: TcpStream,
    rx: RecvBuf,
}

impl Client {
    /// Connects with `TCP_NODELAY` and 10 s i/o timeouts.
    ///
    /// # Errors
    /// [`LoadError::Connect`].
    pub fn connect(addr: SocketAddr) -> Result<Self, LoadError> {
        let stream = connect_stream(addr)?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|source| LoadError::Connect { addr, source })?;
        Ok(Self {
            addr,
            stream,
            rx: RecvBuf::new(),
        })
    }

    /// Sends `request` and reads its response; returns the status.
    ///
    /// # Errors
    /// i/o, framing, or the peer closing.
    pub fn round_trip(&mut self, request: &[u8]) -> Result<u16, LoadError> {
        let f = self.exchange(request)?;
        self.rx.consume(f.total);
        Ok(f.status)
    }

    /// Sends `request` and returns the status and body of its response.
    ///
    /// # Errors
    /// i/o, framing, or the peer closing.
    pub fn fetch(&mut self, request: &[u8]) -> Result<(u16, Vec<u8>), LoadError> {
        let f = self.exchange(request)?;
        let body = self.rx.bytes()[f.head..f.total].to_vec();
        self.rx.consume(f.total);
        Ok((f.status, body))
    }

    fn exchange(&mut self, request: &[u8]) -> Result<Framed, LoadError> {
        let addr = self.addr;
        self.stream
            .write_all(request)
            .map_err(|source| LoadError::Io { addr, source })?;
        loop {
            if let Some(f) = self
                .rx
                .peek()
                .map_err(|source| LoadError::Frame { addr, source })?
            {
                return Ok(f);
            }
            match self.rx.read_from(&mut self.stream) {
                Ok(0) => return Err(LoadError::Closed { addr }),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(LoadError::Io { addr, source }),
            }
        }
    }
}

fn connect_stream(addr: SocketAddr) -> Result<TcpStream, LoadError> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|source| LoadError::Connect { addr, source })?;
    stream
        .set_nodelay(true)
        .map_err(|source| LoadError::Connect { addr, source })?;
    Ok(stream)
}

/// Counts failures and stops the run once [`ERROR_LIMIT`] is passed.
#[derive(Debug)]
struct ErrorBudget {
    addr: SocketAddr,
    errors: u64,
}

impl ErrorBudget {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, errors: 0 }
    }

    fn charge(&mut self, what: &dyn std::fmt::Display) -> Result<(), LoadError> {
        self.errors += 1;
        if self.errors > ERROR_LIMIT {
            return Err(LoadError::TooManyErrors {
                addr: self.addr,
                errors: self.errors,
                limit: ERROR_LIMIT,
                last: what.to_string(),
            });
        }
        Ok(())
    }
}

/// Latency with one connection, fed in rounds (so several set-ups can be
/// measured alternately and share whatever else the machine is doing).
#[derive(Debug)]
pub struct LatencyProbe {
    addr: SocketAddr,
    client: Client,
    request: Vec<u8>,
    histogram: LatencyHistogram,
    budget: ErrorBudget,
}

impl LatencyProbe {
    /// Connects the probe's one connection.
    ///
    /// # Errors
    /// [`LoadError::Connect`], or a histogram that cannot be created.
    pub fn connect(addr: SocketAddr, request: &[u8]) -> Result<Self, LoadError> {
        Ok(Self {
            addr,
            client: Client::connect(addr)?,
            request: request.to_vec(),
            histogram: LatencyHistogram::new()?,
            budget: ErrorBudget::new(addr),
        })
    }

    /// `n` sequential round trips; each `200` is recorded when `record`
    /// (false: warm-up). A failed request is charged to the error budget and
    /// the connection re-opened.
    ///
    /// # Errors
    /// A failed reconnect, more than [`ERROR_LIMIT`] failures, or a signal.
    pub fn run(&mut self, n: u64, record: bool) -> Result<(), LoadError> {
        for i in 0..n {
            if i % 1024 == 0 && interrupted() {
                return Err(LoadError::Interrupted);
            }
            let t0 = Instant::now();
            match self.client.round_trip(&self.request) {
                Ok(200) => {
                    let ns = duration_ns(t0.elapsed());
                    if record {
                        self.histogram.record(ns);
                    }
                }
                Ok(status) => self.budget.charge(&format_args!("status {status}"))?,
                Err(e) => {
                    self.budget.charge(&e)?;
                    self.client = Client::connect(self.addr)?;
                }
            }
        }
        Ok(())
    }

    /// Round trips of the recorded `200` responses, ns.
    #[must_use]
    pub fn histogram(&self) -> &LatencyHistogram {
        &self.histogram
    }

    /// Non-200 responses and broken connections so far (warm-up included).
    #[must_use]
    pub fn errors(&self) -> u64 {
        self.budget.errors
    }
}

/// Result of [`throughput`].
#[derive(Debug, Clone)]
pub struct ThroughputRun {
    /// Complete `200` responses inside the measured window.
    pub ok: u64,
    /// Non-200 responses and broken connections inside the measured window.
    pub errors: u64,
    /// The measured window.
    pub window: Duration,
    /// `ok / window`.
    pub rps: f64,
    /// `ok` per client thread (shows how evenly the threads were served).
    pub ok_per_thread: Vec<u64>,
}

/// Closed-loop load: `connections` over `threads` threads, `warmup` then a
/// `window` in which complete `200` responses are counted.
///
/// # Errors
/// A failed connect, more than [`ERROR_LIMIT`] failures in one thread, a
/// thread failure, or a signal.
pub fn throughput(
    addr: SocketAddr,
    request: &[u8],
    connections: usize,
    threads: usize,
    warmup: Duration,
    window: Duration,
) -> Result<ThroughputRun, LoadError> {
    let threads = threads.clamp(1, connections.max(1));
    let start = Instant::now();
    let measure_from = start + warmup;
    let until = measure_from + window;
    let per_thread: Vec<Result<(u64, u64), LoadError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                // Spread the remainder over the first threads.
                let n = connections / threads + usize::from(t < connections % threads);
                std::thread::Builder::new()
                    .name(format!("load-{t}"))
                    .spawn_scoped(s, move || drive(addr, request, n, measure_from, until))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(LoadError::Thread("a client thread panicked".into()))),
                Err(e) => Err(LoadError::Thread(format!(
                    "cannot spawn a client thread: {e}"
                ))),
            })
            .collect()
    });
    let mut ok = 0;
    let mut errors = 0;
    let mut ok_per_thread = Vec::with_capacity(threads);
    for r in per_thread {
        let (o, e) = r?;
        ok += o;
        errors += e;
        ok_per_thread.push(o);
    }
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let rps = ok as f64 / window.as_secs_f64();
    Ok(ThroughputRun {
        ok,
        errors,
        window,
        rps,
        ok_per_thread,
    })
}

/// One client connection of a [`drive`] loop.
#[derive(Debug)]
struct LoopConn {
    stream: TcpStream,
    rx: RecvBuf,
}

impl LoopConn {
    /// Connects (blocking), switches to non-blocking and sends the first request.
    fn open(addr: SocketAddr, request: &[u8]) -> Result<Self, LoadError> {
        let stream = connect_stream(addr)?;
        let mut c = Self {
            stream,
            rx: RecvBuf::new(),
        };
        c.stream
            .set_nonblocking(true)
            .map_err(|source| LoadError::Connect { addr, source })?;
        c.send(request)
            .map_err(|source| LoadError::Io { addr, source })?;
        Ok(c)
    }

    /// Writes the request; it is small and the connection has nothing else in
    /// flight, so a short write means the peer is broken.
    fn send(&mut self, request: &[u8]) -> io::Result<()> {
        match self.stream.write(request) {
            Ok(n) if n == request.len() => Ok(()),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write of a request",
            )),
            Err(e) => Err(e),
        }
    }

    /// Reads what is there and answers every complete response with the next
    /// request; returns the statuses seen, or why the connection broke.
    fn service(&mut self, request: &[u8], statuses: &mut Vec<u16>) -> Result<(), String> {
        match self.rx.read_from(&mut self.stream) {
            Ok(0) => return Err("connection closed by the server".into()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e.to_string()),
        }
        while let Some(f) = self.rx.peek().map_err(|e| e.to_string())? {
            self.rx.consume(f.total);
            statuses.push(f.status);
            self.send(request).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// One client thread: `n` connections in a `poll` loop until `until`.
/// Returns (200 responses, failures) counted from `measure_from`.
fn drive(
    addr: SocketAddr,
    request: &[u8],
    n: usize,
    measure_from: Instant,
    until: Instant,
) -> Result<(u64, u64), LoadError> {
    let mut conns = (0..n)
        .map(|_| LoopConn::open(addr, request))
        .collect::<Result<Vec<_>, _>>()?;
    let mut fds: Vec<libc::pollfd> = conns
        .iter()
        .map(|c| libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
    let mut budget = ErrorBudget::new(addr);
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut statuses = Vec::with_capacity(4);
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        if interrupted() {
            return Err(LoadError::Interrupted);
        }
        let wait_ms = (until - now).as_millis().clamp(1, 100);
        let wait_ms = libc::c_int::try_from(wait_ms).unwrap_or(100);
        // SAFETY: `fds` is a live, initialised array of `nfds` pollfd entries
        // borrowed mutably for the call; the kernel writes only `revents`.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), nfds, wait_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(LoadError::Io { addr, source: e });
        }
        let at = Instant::now();
        let counting = at >= measure_from && at < until;
        for (i, pfd) in fds.iter_mut().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            pfd.revents = 0;
            statuses.clear();
            let result = conns[i].service(request, &mut statuses);
            for &status in &statuses {
                if status == 200 {
                    ok += u64::from(counting);
                } else {
                    failed += u64::from(counting);
                    budget.charge(&format_args!("status {status}"))?;
                }
            }
            if let Err(why) = result {
                failed += u64::from(counting);
                budget.charge(&why)?;
                conns[i] = LoopConn::open(addr, request)?;
                pfd.fd = conns[i].stream.as_raw_fd();
            }
        }
    }
    Ok((ok, failed))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use crate::gateway::http::get_request;
    use std::net::TcpListener;

    /// What the test server does with the n-th request (from 0) of a connection.
    #[derive(Clone, Copy)]
    enum Policy {
        AlwaysOk,
        OddFail,
        CloseAfterOne,
    }

    /// A keep-alive server on a loopback port, one thread per connection;
    /// threads end when the test process does.
    fn serve(policy: Policy) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut n = 0u64;
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let ok = match policy {
                                Policy::AlwaysOk | Policy::CloseAfterOne => true,
                                Policy::OddFail => n.is_multiple_of(2),
                            };
                            let resp: &[u8] = if ok {
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                            } else {
                                b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy"
                            };
                            if s.write_all(resp).is_err() {
                                return;
                            }
                            n += 1;
                            if matches!(policy, Policy::CloseAfterOne) {
                                return;
                            }
                        }
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn probe_records_200s_and_charges_the_rest() {
        let addr = serve(Policy::OddFail);
        let mut p = LatencyProbe::connect(addr, &get_request("/")).unwrap();
        p.run(10, false).unwrap();
        assert!(p.histogram().is_empty(), "warm-up is not recorded");
        p.run(100, true).unwrap();
        assert_eq!(p.histogram().len(), 50);
        assert_eq!(p.errors(), 55);
    }

    #[test]
    fn probe_reconnects_when_the_server_closes() {
        let addr = serve(Policy::CloseAfterOne);
        let mut p = LatencyProbe::connect(addr, &get_request("/")).unwrap();
        p.run(20, true).unwrap();
        assert!(p.errors() >= 1, "a closed connection is an error");
        assert_eq!(p.histogram().len() + p.errors(), 20);
        assert!(
            p.histogram().len() >= 10,
            "every reconnect serves one request"
        );
    }

    #[test]
    fn throughput_counts_complete_200s_in_the_window() {
        let addr = serve(Policy::AlwaysOk);
        let window = Duration::from_millis(300);
        let t = throughput(
            addr,
            &get_request("/"),
            5,
            2,
            Duration::from_millis(50),
            window,
        )
        .unwrap();
        assert_eq!(t.errors, 0);
        assert!(t.ok > 100, "{t:?}");
        assert_eq!(t.ok_per_thread.len(), 2);
        assert!(t.ok_per_thread.iter().all(|&n| n > 0), "{t:?}");
        assert_eq!(t.ok, t.ok_per_thread.iter().sum::<u64>());
        #[allow(clippy::cast_precision_loss)]
        let expected = t.ok as f64 / window.as_secs_f64();
        assert!((t.rps - expected).abs() < 1e-6);
    }

    #[test]
    fn throughput_counts_non_200_as_errors() {
        let addr = serve(Policy::OddFail);
        let t = throughput(
            addr,
            &get_request("/"),
            2,
            1,
            Duration::ZERO,
            Duration::from_millis(100),
        );
        // 50 % failures exceed the error budget quickly on loopback.
        match t {
            Err(LoadError::TooManyErrors { errors, .. }) => assert!(errors > ERROR_LIMIT),
            Ok(t) => assert!(t.errors > 0 && t.ok > 0, "{t:?}"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn connect_to_a_closed_port_fails_with_its_address() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = LatencyProbe::connect(port, b"").unwrap_err();
        assert!(err.to_string().contains(&port.to_string()), "{err}");
    }
}
