//! Which backend serves a request, and when: per-backend in-flight limits and
//! a bounded FIFO queue per function, all on one core.
//!
//! A [`FunctionRoute`] lives on one executor and holds the backends (instances)
//! of one function that this core owns. A request takes a [`Permit`] — one
//! in-flight slot of one backend — before it touches an upstream connection.
//! Without a free slot (no backend, all busy, or all suspect) it joins the
//! route's queue; a slot that frees, or a backend that is added, is handed to
//! the queue's head directly (no thundering herd, strict FIFO). A waiter whose
//! future is dropped (its deadline passed) leaves the queue.
//!
//! Nothing here is `Send`: the route is shared by the connection tasks of one
//! core through `Rc`, so the hot path has no atomics and no locks.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::pool::IdlePool;
use super::signal::Notify;

/// How long a backend that refused a connection is skipped.
pub const SUSPECT_PERIOD: Duration = Duration::from_millis(500);

/// Something the gateway can open connections to: a handler instance.
pub trait Upstream {
    /// Opens a new connection to the handler (blocking connect is acceptable:
    /// it targets a local socket and completes or fails at once). The socket
    /// should have `TCP_NODELAY` set.
    fn connect(&self) -> io::Result<std::net::TcpStream>;
    /// A stable identifier, unique within the route.
    fn id(&self) -> u64;
}

/// An upstream reached by plain TCP at an address (tests, benchmarks, or a
/// handler outside any namespace).
#[derive(Debug, Clone)]
pub struct TcpUpstream {
    id: u64,
    addr: SocketAddr,
}

impl TcpUpstream {
    /// An upstream with this id at `addr`.
    #[must_use]
    pub fn new(id: u64, addr: SocketAddr) -> Self {
        Self { id, addr }
    }
}

impl Upstream for TcpUpstream {
    fn connect(&self) -> io::Result<std::net::TcpStream> {
        let s = std::net::TcpStream::connect(self.addr)?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    fn id(&self) -> u64 {
        self.id
    }
}

/// Per-function settings of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSettings {
    /// Deadline from the request head to the upstream's response head
    /// (`timeout_ms`); waiting in the queue counts against it.
    pub timeout: Duration,
    /// Requests that may wait for a slot (`queue_size`); beyond, 503.
    pub queue_size: usize,
    /// Largest request body accepted; beyond, 413.
    pub max_body_bytes: u64,
}

impl Default for RouteSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(30_000),
            queue_size: 1024,
            max_body_bytes: 16 * 1024 * 1024,
        }
    }
}

/// One backend of a route.
pub struct Backend {
    upstream: Rc<dyn Upstream>,
    max_concurrency: usize,
    in_flight: Cell<usize>,
    suspect_until: Cell<Option<Instant>>,
    removed: Cell<bool>,
    pool: IdlePool,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("id", &self.upstream.id())
            .field("max_concurrency", &self.max_concurrency)
            .field("in_flight", &self.in_flight.get())
            .field("suspect_until", &self.suspect_until.get())
            .field("removed", &self.removed.get())
            .field("idle", &self.pool.len())
            .finish()
    }
}

impl Backend {
    /// The backend's upstream id.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.upstream.id()
    }

    /// The upstream to connect to.
    #[must_use]
    pub fn upstream(&self) -> &dyn Upstream {
        &*self.upstream
    }

    /// Its idle connections.
    #[must_use]
    pub fn pool(&self) -> &IdlePool {
        &self.pool
    }

    /// Still part of its route.
    #[must_use]
    pub fn is_live(&self) -> bool {
        !self.removed.get()
    }

    fn available(&self, now: &mut Option<Instant>) -> bool {
        // An expired suspect period is cleared even when the backend is busy,
        // so `next_recovery` never reports a time already past.
        if let Some(until) = self.suspect_until.get() {
            if *now.get_or_insert_with(Instant::now) < until {
                return false;
            }
            self.suspect_until.set(None);
        }
        self.in_flight.get() < self.max_concurrency
    }
}

struct Waiter {
    permit: RefCell<Option<Permit>>,
    waker: RefCell<Option<Waker>>,
}

/// The backends of one function on one core, and its wait queue.
pub struct FunctionRoute {
    function: Rc<str>,
    settings: RouteSettings,
    backends: RefCell<Vec<Rc<Backend>>>,
    waiters: RefCell<VecDeque<Rc<Waiter>>>,
    next: Cell<usize>,
    /// Requests that asked for a slot, ever (the autoscaler's starts).
    requests: Cell<u64>,
    /// Woken when a request joins the queue (the autoscaler's wake-up).
    demand: Notify,
    /// Connections parked on this core waiting for an instance anywhere
    /// (see [`FunctionRoute::park`]).
    parked: Cell<usize>,
}

/// A parked connection; unparked on drop.
pub struct Parked(Rc<FunctionRoute>);

impl fmt::Debug for Parked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parked").finish_non_exhaustive()
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.parked.set(self.0.parked.get().saturating_sub(1));
    }
}

impl fmt::Debug for FunctionRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FunctionRoute")
            .field("function", &self.function)
            .field("settings", &self.settings)
            .field("backends", &self.backends.borrow())
            .field("waiting", &self.waiters.borrow().len())
            .finish()
    }
}

/// Why a request got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// The queue already holds `queue_size` requests.
    #[error("queue of function is full ({size} waiting)")]
    QueueFull {
        /// The queue bound.
        size: usize,
    },
}

impl FunctionRoute {
    /// An empty route for `function`.
    #[must_use]
    pub fn new(function: &str, settings: RouteSettings) -> Rc<Self> {
        Rc::new(Self {
            function: Rc::from(function),
            settings,
            backends: RefCell::new(Vec::new()),
            waiters: RefCell::new(VecDeque::new()),
            next: Cell::new(0),
            requests: Cell::new(0),
            demand: Notify::default(),
            parked: Cell::new(0),
        })
    }

    /// The function's id.
    #[must_use]
    pub fn function(&self) -> &str {
        &self.function
    }

    /// The route's settings.
    #[must_use]
    pub fn settings(&self) -> &RouteSettings {
        &self.settings
    }

    /// Adds a backend serving at most `max_concurrency` requests at once
    /// (at least 1). Replaces a backend with the same id. Queued requests are
    /// served from it at once.
    pub fn add_backend(self: &Rc<Self>, upstream: Rc<dyn Upstream>, max_concurrency: usize) {
        let id = upstream.id();
        self.remove_backend(id);
        let max_concurrency = max_concurrency.max(1);
        self.backends.borrow_mut().push(Rc::new(Backend {
            upstream,
            max_concurrency,
            in_flight: Cell::new(0),
            suspect_until: Cell::new(None),
            removed: Cell::new(false),
            pool: IdlePool::new(max_concurrency),
        }));
        self.dispatch();
    }

    /// Removes a backend; returns whether it existed. Requests in flight on it
    /// finish; its idle connections are closed and none is returned to it.
    pub fn remove_backend(&self, id: u64) -> bool {
        let removed = {
            let mut backends = self.backends.borrow_mut();
            let before = backends.len();
            let mut gone = Vec::new();
            backends.retain(|b| {
                let keep = b.id() != id;
                if !keep {
                    gone.push(Rc::clone(b));
                }
                keep
            });
            drop(backends);
            for b in &gone {
                b.removed.set(true);
                b.pool.clear();
            }
            before != self.backends.borrow().len()
        };
        removed
    }

    /// Skips a backend for [`SUSPECT_PERIOD`] (it refused a connection) and
    /// closes its idle connections.
    pub fn mark_suspect(&self, backend: &Backend) {
        backend
            .suspect_until
            .set(Some(Instant::now() + SUSPECT_PERIOD));
        backend.pool.clear();
    }

    /// When the earliest suspect backend becomes eligible again, if any.
    #[must_use]
    pub fn next_recovery(&self) -> Option<Instant> {
        self.backends
            .borrow()
            .iter()
            .filter_map(|b| b.suspect_until.get())
            .min()
    }

    /// Hands slots that became available without a release (a suspect
    /// backend's period ended) to the queue.
    pub fn redispatch(self: &Rc<Self>) {
        self.dispatch();
    }

    /// Number of backends.
    #[must_use]
    pub fn backend_count(&self) -> usize {
        self.backends.borrow().len()
    }

    /// Requests waiting for a slot.
    #[must_use]
    pub fn queue_len(&self) -> usize {
        self.waiters.borrow().len()
    }

    /// Counts a request asking for a slot (call before `try_acquire`).
    pub fn note_request(&self) {
        self.requests.set(self.requests.get() + 1);
    }

    /// Parks a connection that waits for an instance on any core before its
    /// request is read: it counts as demand (and wakes the autoscaler) like
    /// a queued request, until the guard is dropped.
    pub fn park(self: &Rc<Self>) -> Parked {
        self.parked.set(self.parked.get() + 1);
        self.demand.notify();
        Parked(Rc::clone(self))
    }

    /// Connections parked now.
    #[must_use]
    pub fn parked(&self) -> usize {
        self.parked.get()
    }

    /// Requests counted by [`Self::note_request`] so far.
    #[must_use]
    pub fn requests(&self) -> u64 {
        self.requests.get()
    }

    /// Resolves once a request joined the queue since the last wake-up
    /// (one waiter: the function's supervision task).
    pub fn demand(&self) -> &Notify {
        &self.demand
    }

    /// Requests in flight on the backend `id`, if it is in the route.
    #[must_use]
    pub fn backend_in_flight(&self, id: u64) -> Option<usize> {
        self.backends
            .borrow()
            .iter()
            .find(|b| b.id() == id)
            .map(|b| b.in_flight.get())
    }

    /// Requests in flight across all backends.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.backends
            .borrow()
            .iter()
            .map(|b| b.in_flight.get())
            .sum()
    }

    /// The least loaded available backend, round robin among equals; takes
    /// one of its slots.
    fn pick(self: &Rc<Self>) -> Option<Permit> {
        let backends = self.backends.borrow();
        let n = backends.len();
        let start = self.next.get();
        let mut now = None;
        let mut best: Option<(usize, &Rc<Backend>)> = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let Some(b) = backends.get(idx) else { continue };
            if !b.available(&mut now) {
                continue;
            }
            if best.is_none_or(|(_, cur)| b.in_flight.get() < cur.in_flight.get()) {
                best = Some((idx, b));
            }
        }
        let (idx, b) = best?;
        self.next.set((idx + 1) % n.max(1));
        b.in_flight.set(b.in_flight.get() + 1);
        Some(Permit {
            route: Rc::clone(self),
            backend: Rc::clone(b),
        })
    }

    /// Hands free slots to the queue's head, in order.
    fn dispatch(self: &Rc<Self>) {
        loop {
            if self.waiters.borrow().is_empty() {
                return;
            }
            let Some(permit) = self.pick() else { return };
            let Some(waiter) = self.waiters.borrow_mut().pop_front() else {
                // Unreachable (checked non-empty above); the permit's drop
                // returns the slot.
                return;
            };
            *waiter.permit.borrow_mut() = Some(permit);
            let waker = waiter.waker.borrow_mut().take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    /// A slot now, if one is free and nobody is waiting ahead.
    pub fn try_acquire(self: &Rc<Self>) -> Option<Permit> {
        if !self.waiters.borrow().is_empty() {
            // Suspect backends may have recovered since the queue formed.
            self.dispatch();
            if !self.waiters.borrow().is_empty() {
                return None;
            }
        }
        self.pick()
    }

    /// Joins the queue's tail; the future resolves with a slot. Dropping it leaves
    /// the queue (or returns a slot handed to it meanwhile). Fails at once
    /// when the queue is full.
    pub fn enqueue(self: &Rc<Self>) -> Result<WaitForSlot, AdmissionError> {
        let mut waiters = self.waiters.borrow_mut();
        if waiters.len() >= self.settings.queue_size {
            return Err(AdmissionError::QueueFull {
                size: self.settings.queue_size,
            });
        }
        let waiter = Rc::new(Waiter {
            permit: RefCell::new(None),
            waker: RefCell::new(None),
        });
        waiters.push_back(Rc::clone(&waiter));
        drop(waiters);
        self.demand.notify();
        // Served at once if a slot is free (e.g. called without try_acquire).
        self.dispatch();
        Ok(WaitForSlot {
            route: Rc::clone(self),
            waiter,
        })
    }
}

/// A request waiting in a route's queue.
pub struct WaitForSlot {
    route: Rc<FunctionRoute>,
    waiter: Rc<Waiter>,
}

impl fmt::Debug for WaitForSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitForSlot")
            .field("function", &self.route.function)
            .finish_non_exhaustive()
    }
}

impl Future for WaitForSlot {
    type Output = Permit;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        if let Some(p) = self.waiter.permit.borrow_mut().take() {
            return Poll::Ready(p);
        }
        *self.waiter.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for WaitForSlot {
    fn drop(&mut self) {
        self.route
            .waiters
            .borrow_mut()
            .retain(|w| !Rc::ptr_eq(w, &self.waiter));
        // A slot handed over but never taken goes back (its drop dispatches).
        let unused = self.waiter.permit.borrow_mut().take();
        drop(unused);
    }
}

/// One in-flight slot on one backend; released on drop.
pub struct Permit {
    route: Rc<FunctionRoute>,
    backend: Rc<Backend>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("function", &self.route.function)
            .field("backend", &self.backend.id())
            .finish()
    }
}

impl Permit {
    /// The backend this slot belongs to.
    #[must_use]
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The route it came from.
    #[must_use]
    pub fn route(&self) -> &Rc<FunctionRoute> {
        &self.route
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let b = &self.backend;
        b.in_flight.set(b.in_flight.get().saturating_sub(1));
        self.route.dispatch();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use futures_lite::future;
    use proptest::prelude::*;

    #[derive(Debug)]
    struct Fake(u64);
    impl Upstream for Fake {
        fn connect(&self) -> io::Result<std::net::TcpStream> {
            Err(io::Error::from(io::ErrorKind::ConnectionRefused))
        }
        fn id(&self) -> u64 {
            self.0
        }
    }

    fn route(queue: usize) -> Rc<FunctionRoute> {
        FunctionRoute::new(
            "f",
            RouteSettings {
                queue_size: queue,
                ..RouteSettings::default()
            },
        )
    }

    fn poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
        future::block_on(future::poll_once(f))
    }

    #[test]
    fn limits_per_backend_and_spreads_load() {
        let r = route(4);
        r.add_backend(Rc::new(Fake(1)), 2);
        r.add_backend(Rc::new(Fake(2)), 1);
        let a = r.try_acquire().unwrap();
        let b = r.try_acquire().unwrap();
        assert_ne!(a.backend().id(), b.backend().id(), "least loaded first");
        let c = r.try_acquire().unwrap();
        assert_eq!(c.backend().id(), 1);
        assert!(r.try_acquire().is_none());
        assert_eq!(r.in_flight(), 3);
        drop((a, b, c));
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn queue_is_fifo_and_bounded_and_cancellable() {
        let r = route(2);
        let mut w1 = r.enqueue().unwrap();
        let mut w2 = r.enqueue().unwrap();
        assert_eq!(
            r.enqueue().unwrap_err(),
            AdmissionError::QueueFull { size: 2 }
        );
        assert!(poll_once(&mut w1).is_none());
        assert!(poll_once(&mut w2).is_none());
        r.add_backend(Rc::new(Fake(7)), 1);
        let p1 = poll_once(&mut w1).expect("head of queue served first");
        assert!(poll_once(&mut w2).is_none());
        drop(p1);
        let p2 = poll_once(&mut w2).expect("second served when the slot frees");
        drop(p2);
        // A cancelled waiter with a handed-over slot returns it.
        let _hold = r.try_acquire().unwrap();
        let w3 = r.enqueue().unwrap();
        drop(w3);
        assert_eq!(r.queue_len(), 0);
    }

    #[test]
    fn suspect_backend_is_skipped_and_removed_backend_gone() {
        let r = route(2);
        r.add_backend(Rc::new(Fake(1)), 1);
        r.add_backend(Rc::new(Fake(2)), 1);
        let p = r.try_acquire().unwrap();
        let first = p.backend().id();
        r.mark_suspect(p.backend());
        drop(p);
        let q = r.try_acquire().unwrap();
        assert_ne!(q.backend().id(), first);
        assert!(r.try_acquire().is_none());
        assert!(r.remove_backend(q.backend().id()));
        assert!(!q.backend().is_live());
        assert_eq!(r.backend_count(), 1);
    }

    #[test]
    fn queued_request_is_served_when_a_suspect_backend_recovers() {
        let r = route(2);
        r.add_backend(Rc::new(Fake(1)), 1);
        let p = r.try_acquire().unwrap();
        r.mark_suspect(p.backend());
        drop(p);
        let mut w = r.enqueue().unwrap();
        assert!(poll_once(&mut w).is_none());
        let at = r.next_recovery().unwrap();
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        r.redispatch();
        assert!(poll_once(&mut w).is_some());
        assert_eq!(r.next_recovery(), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Acquire,
        Enqueue,
        Release(usize),
        Cancel(usize),
        AddBackend(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Acquire),
            Just(Op::Enqueue),
            (0usize..8).prop_map(Op::Release),
            (0usize..8).prop_map(Op::Cancel),
            (1usize..3).prop_map(Op::AddBackend),
        ]
    }

    proptest! {
        /// Against a model: in-flight never exceeds the total capacity; no
        /// request waits while a slot is free; waiters are served in order.
        #[test]
        fn model(ops in proptest::collection::vec(op(), 1..80)) {
            let r = route(3);
            let mut held: Vec<Permit> = Vec::new();
            let mut waiting: VecDeque<(u64, WaitForSlot)> = VecDeque::new();
            let mut capacity = 0usize;
            let mut next_id = 0u64;
            let mut served: Vec<u64> = Vec::new();
            for op in ops {
                match op {
                    Op::Acquire => {
                        if let Some(p) = r.try_acquire() { held.push(p) }
                    }
                    Op::Enqueue => {
                        if let Ok(w) = r.enqueue() {
                            next_id += 1;
                            waiting.push_back((next_id, w));
                        } else {
                            prop_assert_eq!(waiting.len(), 3);
                        }
                    }
                    Op::Release(i) => {
                        if !held.is_empty() { let i = i % held.len(); held.remove(i); }
                    }
                    Op::Cancel(i) => {
                        if !waiting.is_empty() { let i = i % waiting.len(); waiting.remove(i); }
                    }
                    Op::AddBackend(c) => {
                        next_id += 1;
                        r.add_backend(Rc::new(Fake(1000 + next_id)), c);
                        capacity += c;
                    }
                }
                // Collect every waiter that was served.
                let mut still = VecDeque::new();
                while let Some((id, mut w)) = waiting.pop_front() {
                    match poll_once(&mut w) {
                        Some(p) => { served.push(id); held.push(p); }
                        None => still.push_back((id, w)),
                    }
                }
                waiting = still;
                prop_assert!(held.len() <= capacity);
                prop_assert_eq!(r.in_flight(), held.len());
                prop_assert_eq!(r.queue_len(), waiting.len());
                if !waiting.is_empty() {
                    prop_assert_eq!(held.len(), capacity, "a request waits while a slot is free");
                }
            }
            let mut sorted = served.clone();
            sorted.sort_unstable();
            prop_assert_eq!(served, sorted, "FIFO order");
        }
    }
}
