//! The HTTP gateway: what one executor core runs for one function's
//! `trigger_port`.
//!
//! aetherd runs one glommio `LocalExecutor` per core. On each core, for each
//! function, [`serve_function`] binds that core's member of the port's
//! `SO_REUSEPORT` group, accepts connections, and proxies HTTP/1.1 to the
//! function's backends that this core owns ([`FunctionRoute`]). Nothing on the
//! request path is shared between cores: the route, its queue, its connection
//! pools and its metrics cells ([`CoreMetrics`]) belong to one core.
//!
//! ```text
//!            ┌─ core 0 ──────────────────────────────────────────┐
//! :8080 ──▶  │ listener ─▶ conn task ─▶ FunctionRoute ─▶ backend │──▶ instance
//! (reuse-    │  (member)    (httparse)   (slots, FIFO     (pool)  │   (netns)
//!  port      │                           queue)                  │
//!  group) ─▶ └─ core 1: the same, its own members and backends ───┘
//! ```
//!
//! Plugging instances in: the instance manager of a core calls
//! [`FunctionRoute::add_backend`] with an [`Upstream`] (whose `connect`
//! returns a socket connected inside the instance's namespace) when an
//! instance becomes ready, and [`FunctionRoute::remove_backend`] when it
//! goes away.
//!
//! Shutdown: when the `shutdown` future given to [`serve_function`]
//! resolves, the core stops accepting, lets requests in progress finish
//! (responses then carry `Connection: close`), closes idle keep-alive
//! connections at once, and after [`ServeConfig::drain_timeout`] closes
//! whatever is left.

mod admission;
mod body;
mod conn;
mod http;
mod listener;
mod metrics;
mod pool;
mod proxy;
mod signal;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use futures_lite::future;
use glommio::timer::Timer;

pub use admission::{
    AdmissionError, Backend, FunctionRoute, Parked, Permit, RouteSettings, TcpUpstream, Upstream,
    WaitForSlot, SUSPECT_PERIOD,
};
pub use body::{BodyError, BodyReader, BodyWriter, ChunkedDecoder, Step};
pub use http::{HeadError, MAX_HEADERS, MAX_HEAD_BYTES};
pub use listener::{bind_reuseport, into_glommio, ListenerError};
pub use metrics::{CoreMetrics, FunctionMetrics, LatencySnapshot};
pub use proxy::STATUS_CLIENT_GONE;
pub use signal::{Notify, Signal};

/// Listener and connection settings of one function on one core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeConfig {
    /// Address of the trigger port (default `0.0.0.0:<trigger_port>`).
    pub listen: SocketAddr,
    /// Accept backlog of this core's listener.
    pub backlog: i32,
    /// How long requests in progress may run after shutdown starts.
    pub drain_timeout: Duration,
    /// A client connection with no bytes for this long is closed (idle
    /// keep-alive, or a head or body that stalls).
    pub client_timeout: Duration,
}

impl ServeConfig {
    /// Defaults for a listener on `listen`: backlog 1024, 10 s drain, 60 s
    /// client timeout.
    #[must_use]
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            backlog: 1024,
            drain_timeout: Duration::from_secs(10),
            client_timeout: Duration::from_secs(60),
        }
    }
}

/// The gateway could not serve.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listener could not be set up.
    #[error(transparent)]
    Listener(#[from] ListenerError),
}

/// What a finished [`serve_function`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeReport {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections still open at the drain deadline and closed by force.
    pub forced: usize,
}

/// Counts live connection tasks; wakes a waiter when none is left.
#[derive(Debug, Default)]
struct Live {
    count: Cell<usize>,
    waker: RefCell<Option<Waker>>,
}

struct LiveGuard(Rc<Live>);

impl Live {
    fn enter(self: &Rc<Self>) -> LiveGuard {
        self.count.set(self.count.get() + 1);
        LiveGuard(Rc::clone(self))
    }

    async fn all_gone(&self) {
        future::poll_fn(|cx| {
            if self.count.get() == 0 {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let left = self.0.count.get().saturating_sub(1);
        self.0.count.set(left);
        if left == 0 {
            if let Some(w) = self.0.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }
}

/// Binds this core's member of `cfg.listen`'s `SO_REUSEPORT` group and serves
/// `route` until `shutdown` resolves, then drains. Runs inside a glommio
/// executor.
pub async fn serve_function(
    cfg: ServeConfig,
    route: Rc<FunctionRoute>,
    metrics: Rc<CoreMetrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<ServeReport, GatewayError> {
    let listener = into_glommio(bind_reuseport(cfg.listen, cfg.backlog)?);
    Ok(serve_listener(listener, cfg, route, metrics, shutdown).await)
}

/// Connections moved between the cores serving one function: a core with no
/// instance of its own offers what it accepts to a core that has one, and
/// serves what other cores hand it.
pub struct Handoff {
    /// Connections other cores handed to this one.
    pub inbox: flume::Receiver<OwnedFd>,
    /// Offers a just-accepted connection to another core; gives it back
    /// when none takes it.
    pub offer: Box<dyn Fn(OwnedFd) -> Result<(), OwnedFd>>,
    /// Whether this core has or will get an instance of its own; when not,
    /// a connection no other core took yet is offered again every
    /// [`HANDOFF_RETRY`] until one does or this core gets an instance.
    pub expects_instance: Box<dyn Fn() -> bool>,
}

/// How often a connection waiting for a core with an instance is re-offered.
pub const HANDOFF_RETRY: Duration = Duration::from_millis(1);

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff").finish_non_exhaustive()
    }
}

/// [`serve_function`] on a listener bound by the caller (e.g. with
/// [`bind_reuseport`] before the executor started, to report a port conflict
/// early). `cfg.listen` and `cfg.backlog` are not used.
pub async fn serve_listener(
    listener: glommio::net::TcpListener,
    cfg: ServeConfig,
    route: Rc<FunctionRoute>,
    metrics: Rc<CoreMetrics>,
    shutdown: impl Future<Output = ()>,
) -> ServeReport {
    serve_listener_with(listener, cfg, route, metrics, None, shutdown).await
}

/// What the accept loop got next.
enum Next {
    Accepted(glommio::Result<glommio::net::TcpStream, ()>),
    Shutdown,
}

/// A copy of an accepted connection's socket that outlives the glommio
/// stream (glommio 0.9 has no `into_raw_fd`; closing the original fd of a
/// just-accepted socket with no I/O in flight leaves the copy intact).
/// The stream comes back when the copy cannot be made (e.g. EMFILE).
fn detach(stream: glommio::net::TcpStream) -> Result<OwnedFd, glommio::net::TcpStream> {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the fd belongs to `stream`, which is alive for this call.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    match fd.try_clone_to_owned() {
        Ok(copy) => {
            drop(stream);
            Ok(copy)
        }
        Err(_) => Err(stream),
    }
}

/// A connected socket as this executor's stream.
fn adopt(fd: OwnedFd) -> glommio::net::TcpStream {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: `fd` is a connected TCP socket nobody else owns any more (an
    // accepted one given back, or one another core gave up).
    unsafe { glommio::net::TcpStream::from_raw_fd(fd.into_raw_fd()) }
}

/// Offers `fd` again every [`HANDOFF_RETRY`] until another core takes it or
/// this core has (or expects) an instance, then serves it here; bounded by
/// the client timeout (then it is served here, and waits in the queue).
async fn offer_until_taken(shared: &Rc<proxy::Shared>, h: &Handoff, fd: OwnedFd) {
    let deadline = std::time::Instant::now() + shared.client_timeout;
    let mut fd = fd;
    // Demand for the autoscaler while it waits: this core may get an
    // instance of its own (then it stops waiting and serves here).
    let parked = shared.route.park();
    loop {
        Timer::new(HANDOFF_RETRY).await;
        if shared.route.backend_count() > 0
            || (h.expects_instance)()
            || std::time::Instant::now() >= deadline
            || shared.drain.is_fired()
        {
            break;
        }
        match (h.offer)(fd) {
            Ok(()) => return,
            Err(back) => fd = back,
        }
    }
    drop(parked);
    proxy::serve_connection(Rc::clone(shared), adopt(fd)).await;
}

/// [`serve_listener`] with cross-core [`Handoff`]: while `route` has no
/// backend, accepted connections are offered to other cores first.
pub async fn serve_listener_with(
    listener: glommio::net::TcpListener,
    cfg: ServeConfig,
    route: Rc<FunctionRoute>,
    metrics: Rc<CoreMetrics>,
    handoff: Option<Handoff>,
    shutdown: impl Future<Output = ()>,
) -> ServeReport {
    let handoff = handoff.map(Rc::new);
    let shared = Rc::new(proxy::Shared {
        metrics: metrics.function(route.function()),
        route,
        drain: Signal::new(),
        force: Signal::new(),
        client_timeout: cfg.client_timeout,
    });
    let live = Rc::new(Live::default());
    let mut shutdown = pin!(shutdown);
    let mut accepted = 0u64;
    // Connections handed over by other cores are served by a task of their
    // own: racing the inbox against `accept` would drop accept futures,
    // and an io_uring accept that completed as its future was dropped loses
    // the connection.
    if let Some(h) = &handoff {
        let (inbox, shared, live) = (h.inbox.clone(), Rc::clone(&shared), Rc::clone(&live));
        glommio::spawn_local(async move {
            loop {
                let next = future::or(async { inbox.recv_async().await.ok() }, async {
                    shared.drain.wait().await;
                    None
                })
                .await;
                let Some(fd) = next else { break };
                let guard = live.enter();
                let shared = Rc::clone(&shared);
                glommio::spawn_local(async move {
                    let _guard = guard;
                    future::or(
                        proxy::serve_connection(Rc::clone(&shared), adopt(fd)),
                        shared.force.wait(),
                    )
                    .await;
                })
                .detach();
            }
        })
        .detach();
    }
    loop {
        let next = future::or(async { Next::Accepted(listener.accept().await) }, async {
            shutdown.as_mut().await;
            Next::Shutdown
        })
        .await;
        let stream = match next {
            Next::Shutdown => break,
            Next::Accepted(Ok(stream)) => match &handoff {
                Some(h) if shared.route.backend_count() == 0 => {
                    // Counts as this core's activity for the autoscaler.
                    shared.route.note_request();
                    match detach(stream) {
                        Ok(fd) => match (h.offer)(fd) {
                            Ok(()) => continue,
                            Err(fd) if !(h.expects_instance)() => {
                                // Nobody can take it yet and no instance is
                                // coming here: keep offering it.
                                accepted += 1;
                                let guard = live.enter();
                                let shared = Rc::clone(&shared);
                                let h = Rc::clone(h);
                                glommio::spawn_local(async move {
                                    let _guard = guard;
                                    future::or(
                                        offer_until_taken(&shared, &h, fd),
                                        shared.force.wait(),
                                    )
                                    .await;
                                })
                                .detach();
                                continue;
                            }
                            Err(fd) => Ok(adopt(fd)),
                        },
                        Err(stream) => Ok(stream),
                    }
                }
                _ => Ok(stream),
            },
            Next::Accepted(Err(e)) => Err(e),
        };
        match stream {
            Ok(stream) => {
                accepted += 1;
                let guard = live.enter();
                let shared = Rc::clone(&shared);
                glommio::spawn_local(async move {
                    let _guard = guard;
                    future::or(
                        proxy::serve_connection(Rc::clone(&shared), stream),
                        shared.force.wait(),
                    )
                    .await;
                })
                .detach();
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(function = shared.route.function(), error = %e, "accept failed");
                Timer::new(Duration::from_millis(10)).await;
            }
        }
    }
    drop(listener);
    shared.drain.fire();
    let drained = future::or(
        async {
            live.all_gone().await;
            true
        },
        async {
            Timer::new(cfg.drain_timeout).await;
            false
        },
    )
    .await;
    let forced = if drained {
        0
    } else {
        let left = live.count.get();
        shared.force.fire();
        live.all_gone().await;
        left
    };
    ServeReport { accepted, forced }
}
