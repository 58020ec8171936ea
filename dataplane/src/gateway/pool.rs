//! Idle keep-alive upstream connections of one backend, on one core.
//!
//! Last in, first out: the most recently used connection is the warmest (its
//! handler thread and socket buffers are hot) and the least likely to have
//! been closed by the upstream's idle timeout. A connection that sat idle
//! longer than [`PROBE_AFTER`] is probed without blocking before reuse, so one
//! the upstream closed meanwhile is dropped instead of failing a request.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use super::conn::Conn;

/// Idle time after which a pooled connection is probed before reuse.
pub const PROBE_AFTER: Duration = Duration::from_millis(100);

/// A connection waiting for its next request.
#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

/// The idle connections of one backend.
#[derive(Debug)]
pub struct IdlePool {
    idle: RefCell<Vec<Idle>>,
    capacity: usize,
}

impl IdlePool {
    /// A pool keeping at most `capacity` idle connections.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            idle: RefCell::new(Vec::new()),
            capacity,
        }
    }

    /// Takes the most recently returned connection that is still usable.
    pub fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.borrow_mut();
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < PROBE_AFTER || !c.conn.peer_gone() {
                return Some(c.conn);
            }
        }
        None
    }

    /// Returns a connection after a complete exchange. Dropped (closed) when
    /// the pool is full or the connection holds unexpected bytes.
    pub fn checkin(&self, conn: Conn) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() < self.capacity && conn.buffered().is_empty() {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
    }

    /// Number of idle connections.
    #[must_use]
    pub fn len(&self) -> usize {
        self.idle.borrow().len()
    }

    /// No idle connection.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
