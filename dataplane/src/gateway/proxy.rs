//! One client connection: read requests in order, admit each, forward it to a
//! backend over a pooled connection, stream the response back.
//!
//! Per request:
//!
//! ```text
//! head ──parse──▶ admit (slot now | queue | 503) ──▶ upstream conn (pool | connect)
//!   ──▶ head + body to upstream ──▶ response head      (all before the deadline: 504)
//!   ──▶ response body to client ──▶ conn back to pool, slot released
//! ```
//!
//! Failures before any byte of the request left for a backend (refused
//! connect, a pooled connection that breaks on the first write) are retried;
//! so is a connection that closes or resets without a single byte of answer
//! when the whole request is still at hand and the method is idempotent (RFC
//! 9110 §9.2.2; nginx's `proxy_next_upstream error` does the same). A fresh
//! connection that ends that way means the instance is dying (e.g. it was
//! accepted from the backlog of a crashed handler), so its backend sits out
//! its suspect period and the retry waits for another instance or the
//! restart. Anything else after the request was written is a 502.
//!
//! Quiet-core fast path: while a core serves at most one request, a wait for
//! that request's response, or (with no request in flight) for the next
//! request of a keep-alive client, busy-polls the socket for at most
//! [`QUIET_SPIN`] before it waits the executor's way (see
//! [`Conn::fill_now`]): on loopback the answer usually comes within that, and
//! the request then costs no executor turn, park or wake-up. The poll also
//! watches the core's other client connections (up to [`MAX_WATCHED`]), so
//! their requests are not held up; timers, accepts and commands to the core
//! wait at most [`QUIET_SPIN`]. With more connections, or more requests in
//! flight, every wait is the executor's.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd as _, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::net::TcpStream;
use glommio::timer::Timer;

use super::admission::{AdmissionError, FunctionRoute, Permit};
use super::body::{BodyError, BodyReader, BodyWriter, Step};
use super::conn::{Conn, MAX_WATCHED};
use super::http::{self, ClientAddr, ClientView, Framing, HeadError, RequestHead, ResponseHead};
use super::metrics::FunctionMetrics;
use super::signal::Signal;

/// Queued output is written once it reaches this size.
const FLUSH_AT: usize = 64 * 1024;
/// Attempts per request on connections that broke after being obtained
/// (stale pooled ones). Refused connects do not count: they are retried until
/// the deadline, each refusing backend sitting out its suspect period.
const MAX_ATTEMPTS: usize = 4;
/// How long a closing connection keeps reading what the client still sends,
/// so the error response is not destroyed by a reset.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes discarded while lingering.
const LINGER_BYTES: usize = 1 << 20;
/// Status recorded for a request the client abandoned.
pub const STATUS_CLIENT_GONE: u16 = 499;

/// Longest a quiet core busy-polls for one socket before it waits the
/// executor's way. Long enough for a fast handler's answer or a keep-alive
/// client's next request; short enough that the cpu it costs when neither
/// comes stays small (and a connection whose busy-poll timed out skips it
/// for its next few waits: see [`Conn::fill_now`]).
pub const QUIET_SPIN: Duration = Duration::from_micros(50);

/// What the gateway is doing on this core (thread): its client sockets and
/// requests in flight, over all functions.
#[derive(Debug, Default)]
struct CoreLoad {
    clients: RefCell<Vec<RawFd>>,
    in_flight: Cell<usize>,
}

thread_local! {
    static LOAD: CoreLoad = CoreLoad::default();
}

/// Keeps a client socket in [`CoreLoad::clients`] while it lives.
struct ClientRegistration(RawFd);

impl ClientRegistration {
    fn new(fd: RawFd) -> Self {
        LOAD.with(|l| l.clients.borrow_mut().push(fd));
        Self(fd)
    }
}

impl Drop for ClientRegistration {
    fn drop(&mut self) {
        LOAD.with(|l| {
            let mut clients = l.clients.borrow_mut();
            if let Some(i) = clients.iter().position(|&fd| fd == self.0) {
                clients.swap_remove(i);
            }
        });
    }
}

/// Counts a request in [`CoreLoad::in_flight`] while it lives.
struct InFlight;

impl InFlight {
    fn new() -> Self {
        LOAD.with(|l| l.in_flight.set(l.in_flight.get() + 1));
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        LOAD.with(|l| l.in_flight.set(l.in_flight.get().saturating_sub(1)));
    }
}

/// The quiet-core fast path (module docs): reads `conn` busy-polling for at
/// most [`QUIET_SPIN`], if this core has exactly `in_flight` requests in flight and at
/// most [`MAX_WATCHED`] other client connections. `None`: not quiet, or
/// nothing arrived in time; wait the executor's way.
fn fill_if_quiet(conn: &mut Conn, in_flight: usize) -> Option<io::Result<usize>> {
    LOAD.with(|l| {
        let clients = l.clients.borrow();
        if l.in_flight.get() != in_flight || clients.len() > MAX_WATCHED + 1 {
            return None;
        }
        conn.fill_now(QUIET_SPIN, &clients)
    })
}

/// What the connections of one function on one core share.
#[derive(Debug)]
pub struct Shared {
    /// The function's backends on this core.
    pub route: Rc<FunctionRoute>,
    /// Its metrics on this core.
    pub metrics: FunctionMetrics,
    /// Fired when draining starts: finish the request at hand, then close.
    pub drain: Signal,
    /// Fired when the drain deadline passes: close at once.
    pub force: Signal,
    /// Client idle/read timeout.
    pub client_timeout: Duration,
}

/// How a connection continues after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    KeepAlive,
    Close,
    /// Close, after reading off what the client may still be sending.
    Linger,
}

/// Why an exchange failed before a response head reached the client.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("no response head before the function's timeout")]
    Timeout,
    #[error(transparent)]
    QueueFull(AdmissionError),
    /// A backend failed after the request (or part of it) was written.
    #[error("upstream failed after the request was sent: {0}")]
    Upstream(std::io::Error),
    #[error("upstream sent an invalid response head: {0}")]
    BadUpstreamHead(HeadError),
    #[error("invalid request body: {0}")]
    BadBody(BodyError),
    #[error("request body larger than the limit")]
    BodyTooLarge,
    #[error("client closed the connection")]
    ClientGone,
}

impl Failure {
    fn status(&self) -> u16 {
        match self {
            Self::Timeout => 504,
            Self::QueueFull(_) => 503,
            Self::Upstream(_) | Self::BadUpstreamHead(_) => 502,
            Self::BadBody(_) => 400,
            Self::BodyTooLarge => 413,
            Self::ClientGone => STATUS_CLIENT_GONE,
        }
    }
}

/// Where a body pump failed.
#[derive(Debug, thiserror::Error)]
enum PumpError {
    #[error("reading the body failed: {0}")]
    Source(std::io::Error),
    #[error("the body is malformed: {0}")]
    SourceBody(BodyError),
    #[error("writing the body failed: {0}")]
    Sink(std::io::Error),
    #[error("the body exceeds the limit")]
    TooLarge,
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed inside a body")
}

/// Output queued for one side, with whether any of it already left.
struct Outbox<'a> {
    buf: &'a mut Vec<u8>,
    /// Bytes of this message were written (and dropped from `buf`).
    flushed: bool,
}

impl Outbox<'_> {
    async fn flush(&mut self, dst: &mut Conn) -> io::Result<()> {
        if !self.buf.is_empty() {
            dst.write_all(self.buf).await?;
            self.buf.clear();
            self.flushed = true;
        }
        Ok(())
    }
}

/// Moves one body from `src` to `dst`. `out` may already hold bytes for
/// `dst` (a head); on success it holds the unwritten tail, ending with the
/// body's end. `interim`, if any, is written to `src` before the first wait
/// for body bytes (`100 Continue`) and then cleared.
#[allow(clippy::too_many_arguments)]
async fn pump(
    src: &mut Conn,
    reader: &mut BodyReader,
    dst: &mut Conn,
    writer: BodyWriter,
    out: &mut Outbox<'_>,
    limit: Option<u64>,
    seen: &mut u64,
    interim: &mut Option<&'static [u8]>,
) -> Result<(), PumpError> {
    loop {
        match reader.step(src.buffered()).map_err(PumpError::SourceBody)? {
            Step::Data { skip, len } => {
                *seen += len as u64;
                if limit.is_some_and(|l| *seen > l) {
                    return Err(PumpError::TooLarge);
                }
                let data = src.buffered().get(skip..skip + len).unwrap_or_default();
                writer.data(out.buf, data);
                src.consume(skip + len);
                if out.buf.len() >= FLUSH_AT {
                    out.flush(dst).await.map_err(PumpError::Sink)?;
                }
            }
            Step::NeedMore { consumed } => {
                src.consume(consumed);
                out.flush(dst).await.map_err(PumpError::Sink)?;
                if let Some(bytes) = interim.take() {
                    src.write_all(bytes).await.map_err(PumpError::Source)?;
                }
                match src.fill().await {
                    Ok(0) if reader.ends_at_close() => {
                        reader.finish_at_close();
                        writer.finish(out.buf);
                        return Ok(());
                    }
                    Ok(0) => return Err(PumpError::Source(truncated())),
                    Ok(_) => {}
                    Err(e) => return Err(PumpError::Source(e)),
                }
            }
            Step::Done { consumed } => {
                src.consume(consumed);
                writer.finish(out.buf);
                return Ok(());
            }
        }
    }
}

/// The request being forwarded, kept across attempts.
struct RequestSend<'a> {
    out: Outbox<'a>,
    reader: BodyReader,
    /// The complete request is in `out.buf` (written at most once as a
    /// whole): it can be replayed on another connection.
    whole: bool,
    seen: u64,
    interim: Option<&'static [u8]>,
    max_body: u64,
}

impl RequestSend<'_> {
    /// Nothing of the request is lost if this attempt is abandoned.
    fn restartable(&self) -> bool {
        self.whole || !self.out.flushed
    }
}

enum SendError {
    Upstream(io::Error),
    Client,
    BadBody(BodyError),
    TooLarge,
}

async fn send_request(
    req: &mut RequestSend<'_>,
    up: &mut Conn,
    client: &mut Conn,
) -> Result<(), SendError> {
    if req.whole {
        return up.write_all(req.out.buf).await.map_err(SendError::Upstream);
    }
    if !req.reader.is_done() {
        let writer = if matches!(req.reader, BodyReader::Chunked(_)) {
            BodyWriter::Chunked
        } else {
            BodyWriter::Identity
        };
        pump(
            client,
            &mut req.reader,
            up,
            writer,
            &mut req.out,
            Some(req.max_body),
            &mut req.seen,
            &mut req.interim,
        )
        .await
        .map_err(|e| match e {
            PumpError::Source(e) => {
                tracing::debug!(error = %e, "client failed while sending its body");
                SendError::Client
            }
            PumpError::SourceBody(b) => SendError::BadBody(b),
            PumpError::Sink(e) => SendError::Upstream(e),
            PumpError::TooLarge => SendError::TooLarge,
        })?;
    }
    if req.out.flushed {
        req.out.flush(up).await.map_err(SendError::Upstream)
    } else {
        // The whole request in one write; keep it for a replay.
        up.write_all(req.out.buf)
            .await
            .map_err(SendError::Upstream)?;
        req.whole = true;
        Ok(())
    }
}

enum HeadReadError {
    /// The upstream closed or reset without sending a byte.
    Silent(io::Error),
    Io(io::Error),
    Bad(HeadError),
    Client,
}

fn silent_close(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof
    )
}

async fn read_response_head(
    up: &mut Conn,
    client: &mut Conn,
    head: &RequestHead,
    drain: &Signal,
    out: &mut Vec<u8>,
    client_dirty: &Cell<bool>,
) -> Result<ResponseHead, HeadReadError> {
    let mut got_any = false;
    loop {
        out.clear();
        // Decided when the head is complete: a drain that started meanwhile
        // makes this the connection's last response.
        let view = ClientView {
            is_head: head.is_head,
            minor_version: head.minor_version,
            keep_alive: head.keep_alive && !drain.is_fired(),
        };
        match http::parse_response(up.buffered(), view, out) {
            Ok(Some(h)) if h.interim => {
                up.consume(h.head_len);
                got_any = true;
                // 100 answers the Expect the gateway handles itself; other
                // 1xx go to HTTP/1.1 clients (RFC 9110 §15.2).
                if h.status != 100 && view.minor_version == 1 {
                    client_dirty.set(true);
                    client
                        .write_all(out)
                        .await
                        .map_err(|_| HeadReadError::Client)?;
                }
            }
            Ok(Some(h)) => {
                up.consume(h.head_len);
                return Ok(h);
            }
            Ok(None) => {
                got_any |= !up.buffered().is_empty();
                let filled = match fill_if_quiet(up, 1) {
                    Some(r) => r,
                    None => up.fill().await,
                };
                match filled {
                    Ok(0) if got_any => return Err(HeadReadError::Io(truncated())),
                    Ok(0) => return Err(HeadReadError::Silent(truncated())),
                    Ok(_) => {}
                    Err(e) if !got_any && silent_close(&e) => return Err(HeadReadError::Silent(e)),
                    Err(e) => return Err(HeadReadError::Io(e)),
                }
            }
            Err(e) => return Err(HeadReadError::Bad(e)),
        }
    }
}

async fn acquire(shared: &Shared) -> Result<Permit, Failure> {
    shared.route.note_request();
    if let Some(p) = shared.route.try_acquire() {
        shared.metrics.slot_acquired(Duration::ZERO);
        return Ok(p);
    }
    let queued_at = Instant::now();
    let permit = wait_in_queue(shared).await?;
    shared.metrics.slot_acquired(queued_at.elapsed());
    Ok(permit)
}

async fn wait_in_queue(shared: &Shared) -> Result<Permit, Failure> {
    let wait = shared.route.enqueue().map_err(Failure::QueueFull)?;
    shared.metrics.queued();
    // Leaves the gauge right even when this future is dropped at the deadline.
    struct Dequeue<'a>(&'a FunctionMetrics);
    impl Drop for Dequeue<'_> {
        fn drop(&mut self) {
            self.0.dequeued();
        }
    }
    let _dequeue = Dequeue(&shared.metrics);
    let mut wait = wait;
    // Keep the place in the queue; meanwhile, wake up when a suspect backend
    // becomes eligible again (no release would announce it).
    while let Some(at) = shared.route.next_recovery() {
        let served = future::or(async { Some((&mut wait).await) }, async {
            Timer::new(at.saturating_duration_since(Instant::now())).await;
            None
        })
        .await;
        match served {
            Some(permit) => return Ok(permit),
            None => shared.route.redispatch(),
        }
    }
    Ok(wait.await)
}

/// The upstream side of an exchange whose response head arrived.
struct Upstreamed {
    permit: Permit,
    up: Conn,
    resp: ResponseHead,
}

/// Admits the request, sends it, reads the response head; retries what is
/// safe to retry.
async fn forward(
    shared: &Shared,
    client: &mut Conn,
    req: &mut RequestSend<'_>,
    head: &RequestHead,
    resp_out: &mut Vec<u8>,
    client_dirty: &Cell<bool>,
) -> Result<Upstreamed, Failure> {
    let core = shared.metrics.core();
    // Connections that broke after being obtained (see MAX_ATTEMPTS).
    let mut broken = 0;
    loop {
        let last = broken + 1 >= MAX_ATTEMPTS;
        let permit = acquire(shared).await?;
        let backend = permit.backend();
        let (mut up, reused) = match backend.pool().checkout() {
            Some(c) => (c, true),
            None => match backend.upstream().connect() {
                Ok(s) => {
                    core.upstream_connect();
                    (Conn::from_std(s), false)
                }
                Err(e) => {
                    tracing::debug!(function = shared.route.function(), backend = backend.id(), error = %e, "connect failed");
                    // Nothing was sent: wait for another backend, or for
                    // this one to recover, until the deadline (the suspect
                    // period keeps this from spinning).
                    shared.route.mark_suspect(backend);
                    core.retry();
                    continue;
                }
            },
        };
        match send_request(req, &mut up, client).await {
            Ok(()) => {}
            Err(SendError::Upstream(e)) if req.restartable() && !last => {
                if !reused {
                    shared.route.mark_suspect(backend);
                }
                tracing::debug!(function = shared.route.function(), error = %e, reused, "write to upstream failed, retrying");
                broken += 1;
                core.retry();
                continue;
            }
            Err(SendError::Upstream(e)) => return Err(Failure::Upstream(e)),
            Err(SendError::Client) => return Err(Failure::ClientGone),
            Err(SendError::BadBody(e)) => return Err(Failure::BadBody(e)),
            Err(SendError::TooLarge) => return Err(Failure::BodyTooLarge),
        }
        match read_response_head(&mut up, client, head, &shared.drain, resp_out, client_dirty).await
        {
            Ok(resp) => return Ok(Upstreamed { permit, up, resp }),
            Err(HeadReadError::Silent(e)) if req.whole && head.idempotent && !last => {
                if !reused {
                    shared.route.mark_suspect(backend);
                }
                tracing::debug!(function = shared.route.function(), error = %e, reused, "upstream connection closed without answering, retrying");
                broken += 1;
                core.retry();
            }
            Err(HeadReadError::Silent(e) | HeadReadError::Io(e)) => {
                return Err(Failure::Upstream(e))
            }
            Err(HeadReadError::Bad(e)) => return Err(Failure::BadUpstreamHead(e)),
            Err(HeadReadError::Client) => return Err(Failure::ClientGone),
        }
    }
}

/// Reusable buffers of one client connection.
#[derive(Debug, Default)]
struct Scratch {
    req: Vec<u8>,
    resp: Vec<u8>,
}

async fn write_error(client: &mut Conn, out: &mut Vec<u8>, status: u16, close: bool) -> After {
    out.clear();
    http::write_error_response(out, status, close, status == 503);
    match client.write_all(out).await {
        Ok(()) if !close => After::KeepAlive,
        Ok(()) => After::Linger,
        Err(_) => After::Close,
    }
}

/// One request/response exchange; returns the status and how to go on.
async fn exchange(
    shared: &Shared,
    client: &mut Conn,
    head: RequestHead,
    started: Instant,
    scratch: &mut Scratch,
) -> (u16, After) {
    let _in_flight = InFlight::new();
    let settings = *shared.route.settings();
    if let Framing::Length(n) = head.body {
        if n > settings.max_body_bytes {
            return (413, write_error(client, &mut scratch.resp, 413, true).await);
        }
    }
    let deadline = started + settings.timeout;
    let client_dirty = Cell::new(false);
    let mut req = RequestSend {
        out: Outbox {
            buf: &mut scratch.req,
            flushed: false,
        },
        reader: BodyReader::new(head.body),
        whole: false,
        seen: 0,
        interim: (head.expect_continue && head.body != Framing::Empty)
            .then_some(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]),
        max_body: settings.max_body_bytes,
    };
    let phase = future::or(
        forward(
            shared,
            client,
            &mut req,
            &head,
            &mut scratch.resp,
            &client_dirty,
        ),
        async {
            Timer::new(deadline.saturating_duration_since(Instant::now())).await;
            Err(Failure::Timeout)
        },
    )
    .await;
    let Upstreamed {
        permit,
        mut up,
        resp,
    } = match phase {
        Ok(u) => u,
        Err(f) => {
            let status = f.status();
            if !matches!(f, Failure::Timeout | Failure::QueueFull(_)) {
                tracing::debug!(function = shared.route.function(), status, failure = %f, "request failed");
            }
            if let Failure::ClientGone = f {
                return (status, After::Close);
            }
            let close = !req.reader.is_done()
                || client_dirty.get()
                || !head.keep_alive
                || shared.drain.is_fired();
            return (
                status,
                write_error(client, &mut scratch.resp, status, close).await,
            );
        }
    };
    // The response: head, then body, streamed.
    let mut reader = BodyReader::new(resp.upstream_body);
    let mut out = Outbox {
        buf: &mut scratch.resp,
        flushed: false,
    };
    let result = pump(
        &mut up,
        &mut reader,
        client,
        BodyWriter::for_framing(resp.client_body),
        &mut out,
        None,
        &mut 0,
        &mut None,
    )
    .await;
    let after = match result {
        Ok(()) => match out.flush(client).await {
            Ok(()) if resp.client_keep_alive => After::KeepAlive,
            _ => After::Close,
        },
        Err(e) => {
            tracing::debug!(function = shared.route.function(), error = %e, "response body aborted");
            // Head already sent: the client learns of the failure by the
            // connection closing before the body's end.
            After::Close
        }
    };
    if reader.is_done() && resp.upstream_keep_alive && permit.backend().is_live() {
        permit.backend().pool().checkin(up);
    }
    drop(permit);
    (resp.status, after)
}

/// Reads a request head; `Ok(None)` when the client closed between requests.
async fn read_request_head(
    client: &mut Conn,
    addr: &ClientAddr<'_>,
    out: &mut Vec<u8>,
) -> Result<Option<RequestHead>, HeadError> {
    loop {
        out.clear();
        if let Some(h) = http::parse_request(client.buffered(), addr, out)? {
            client.consume(h.head_len);
            return Ok(Some(h));
        }
        match client.fill().await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// Reads off what the client still sends (bounded), so that closing does not
/// reset the connection before it read the response.
async fn linger(client: &mut Conn) {
    if client.shutdown_write().await.is_err() {
        return;
    }
    let discard = async {
        let mut total = 0;
        loop {
            let n = client.buffered().len();
            client.consume(n);
            match client.fill().await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
            if total > LINGER_BYTES {
                return;
            }
        }
    };
    future::or(discard, async {
        Timer::new(LINGER).await;
    })
    .await;
}

/// Serves one client connection until it closes, errs, or the core drains.
pub async fn serve_connection(shared: Rc<Shared>, stream: TcpStream) {
    let ip = stream
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let host = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "localhost".into());
    let addr = ClientAddr {
        ip: ip.as_bytes(),
        host: host.as_bytes(),
    };
    // Failing to set options leaves a working, slower or untimed, connection.
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(shared.client_timeout));
    let _registration = ClientRegistration::new(stream.as_raw_fd());
    let mut client = Conn::new(stream);
    let mut scratch = Scratch::default();
    loop {
        if client.buffered().is_empty() && !shared.drain.is_fired() {
            match fill_if_quiet(&mut client, 0) {
                Some(Ok(n)) if n > 0 => {}
                Some(_) => return,
                None => {}
            }
        }
        if client.buffered().is_empty() {
            if shared.drain.is_fired() {
                return;
            }
            // Waiting for the next request on an idle keep-alive connection.
            // When the drain starts, the read is not cancelled (a request
            // that arrived at that instant would be consumed and lost, and
            // its client left hanging): the read side is shut down instead,
            // so the pending read ends with either that request or EOF.
            let fd = std::os::fd::AsRawFd::as_raw_fd(client.stream());
            let mut fill = std::pin::pin!(client.fill());
            let first = future::or(async { Some(fill.as_mut().await) }, async {
                shared.drain.wait().await;
                None
            })
            .await;
            let more = match first {
                Some(r) => r,
                None => {
                    // SAFETY: shutdown(2) on the connection's own descriptor,
                    // which `client` keeps open; it touches no memory.
                    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
                    fill.as_mut().await
                }
            };
            match more {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
        let started = Instant::now();
        let head = match read_request_head(&mut client, &addr, &mut scratch.req).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                let status = e.status();
                shared.metrics.request_started();
                let after = write_error(&mut client, &mut scratch.resp, status, true).await;
                shared.metrics.request_finished(status, started.elapsed());
                if after == After::Linger {
                    linger(&mut client).await;
                }
                return;
            }
        };
        shared.metrics.request_started();
        let (status, after) = exchange(&shared, &mut client, head, started, &mut scratch).await;
        shared.metrics.request_finished(status, started.elapsed());
        match after {
            After::KeepAlive => {}
            After::Close => return,
            After::Linger => {
                linger(&mut client).await;
                return;
            }
        }
    }
}
