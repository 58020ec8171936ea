//! A one-shot broadcast event for the tasks of one executor (drain, force
//! close). Waiting is a future; each waiting future holds one slot, replaced
//! on every poll and removed on drop, so a long-lived connection that waits
//! many times never grows the waiter list.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A one-shot event.
#[derive(Debug, Default)]
pub struct Signal {
    fired: Cell<bool>,
    next: Cell<u64>,
    waiters: RefCell<HashMap<u64, Waker>>,
}

impl Signal {
    /// An event that has not fired.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the event and wakes every waiter.
    pub fn fire(&self) {
        self.fired.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters.into_values() {
            w.wake();
        }
    }

    /// Has it fired.
    #[must_use]
    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Resolves once the event fires.
    #[must_use]
    pub fn wait(&self) -> SignalWait<'_> {
        let id = self.next.get();
        self.next.set(id.wrapping_add(1));
        SignalWait { signal: self, id }
    }
}

/// Future of [`Signal::wait`].
#[derive(Debug)]
pub struct SignalWait<'a> {
    signal: &'a Signal,
    id: u64,
}

impl Future for SignalWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.fired.get() {
            return Poll::Ready(());
        }
        self.signal
            .waiters
            .borrow_mut()
            .insert(self.id, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for SignalWait<'_> {
    fn drop(&mut self) {
        self.signal.waiters.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use futures_lite::future;

    #[test]
    fn wakes_all_and_never_accumulates() {
        let s = Signal::new();
        let mut a = s.wait();
        for _ in 0..10 {
            assert!(future::block_on(future::poll_once(&mut a)).is_none());
        }
        assert_eq!(s.waiters.borrow().len(), 1);
        let mut b = s.wait();
        assert!(future::block_on(future::poll_once(&mut b)).is_none());
        drop(b);
        assert_eq!(s.waiters.borrow().len(), 1);
        s.fire();
        assert!(future::block_on(future::poll_once(&mut a)).is_some());
        assert!(future::block_on(future::poll_once(s.wait())).is_some());
    }
}

/// A re-armable wake-up for one waiter: [`Notify::notify`] wakes the task
/// waiting in [`Notify::notified`], or makes its next wait return at once.
#[derive(Debug, Default)]
pub struct Notify {
    pending: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    /// Wakes the waiter (or lets its next wait through).
    pub fn notify(&self) {
        self.pending.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves once notified since the last time it resolved.
    pub fn notified(&self) -> Notified<'_> {
        Notified { notify: self }
    }
}

/// The future of [`Notify::notified`].
#[derive(Debug)]
pub struct Notified<'a> {
    notify: &'a Notify,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.pending.replace(false) {
            return Poll::Ready(());
        }
        *self.notify.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}
