//! Synchronisation shim: std atomics and the real Linux futex in normal
//! builds, loom's models under `RUSTFLAGS="--cfg loom"`.
//!
//! Everything the ring does to cross threads or processes goes through this
//! module, so the loom build checks exactly the orderings the real build uses.
//! Under loom the futex is modelled with a mutex and a condition variable:
//! `wait` checks the word and parks atomically with respect to `wake`, which is
//! precisely the guarantee `FUTEX_WAIT`/`FUTEX_WAKE` give.

use std::time::Duration;

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// How many times a waiter re-checks the index (with a pause between checks)
/// before it takes the futex path. About 10–40 µs on current x86 cores: long
/// enough that a busy peer is caught without a syscall, short enough that an
/// idle waiter stops burning its core almost at once. Zero under loom, where
/// spinning only multiplies the explored interleavings.
#[inline]
pub(crate) fn spin_limit() -> u32 {
    if cfg!(loom) {
        0
    } else {
        1024
    }
}

/// Under loom: a SeqCst fence standing in for the SeqCst swap + SeqCst load
/// pair of the wake-side Dekker handshake, which loom cannot model (it treats
/// SeqCst accesses as AcqRel). Nothing in real builds, where the C++20
/// SeqCst-access argument in `ring::wake_waiter` applies.
#[inline]
pub(crate) fn loom_dekker_fence() {
    #[cfg(loom)]
    fence(Ordering::SeqCst);
}

/// One pause of a spin-wait.
#[inline]
pub(crate) fn spin_pause() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// A 32-bit futex word (process-shared: never `FUTEX_PRIVATE_FLAG`).
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Futex {
    word: AtomicU32,
    #[cfg(loom)]
    lock: loom::sync::Mutex<()>,
    #[cfg(loom)]
    cv: loom::sync::Condvar,
}

impl Futex {
    pub(crate) fn new(value: u32) -> Self {
        Self {
            word: AtomicU32::new(value),
            #[cfg(loom)]
            lock: loom::sync::Mutex::new(()),
            #[cfg(loom)]
            cv: loom::sync::Condvar::new(),
        }
    }

    pub(crate) fn word(&self) -> &AtomicU32 {
        &self.word
    }

    /// Sleeps while the word equals `expected`, at most `timeout`. May return
    /// spuriously; callers re-check their condition.
    #[cfg(not(loom))]
    pub(crate) fn wait(&self, expected: u32, timeout: Option<Duration>) {
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(d.subsec_nanos()),
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: the word is a live, 4-byte aligned AtomicU32 (in a shared
        // mapping or in our memory) for the whole call; `ts_ptr` is null or
        // points at `ts`, which outlives the call. FUTEX_WAIT without the
        // PRIVATE flag keys on the physical page, so it works across
        // processes. EAGAIN/EINTR/ETIMEDOUT are all "return and re-check".
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.word.as_ptr(),
                libc::FUTEX_WAIT,
                expected,
                ts_ptr,
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }

    /// Wakes every waiter on the word.
    #[cfg(not(loom))]
    pub(crate) fn wake_all(&self) {
        // SAFETY: the word is a live, aligned AtomicU32; FUTEX_WAKE only reads
        // the address as a key and never dereferences the unused arguments.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.word.as_ptr(),
                libc::FUTEX_WAKE,
                i32::MAX,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }

    #[cfg(loom)]
    pub(crate) fn wait(&self, expected: u32, _timeout: Option<Duration>) {
        let guard = match self.lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // SYNC: under the model lock, so a concurrent `wake_all` either runs
        // before this load (and we see its store) or after we park.
        if self.word.load(Ordering::SeqCst) == expected {
            drop(self.cv.wait(guard));
        }
    }

    #[cfg(loom)]
    pub(crate) fn wake_all(&self) {
        let guard = match self.lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        self.cv.notify_all();
        drop(guard);
    }
}

/// Loom-only tracker of the ring's data bytes: one `loom::cell::UnsafeCell`
/// per 8-byte word, touched by the producer when it writes a record and by
/// the consumer when it reads one, so loom reports any write/read pair the
/// index protocol fails to order. Zero-sized and free in normal builds.
#[derive(Debug)]
pub(crate) struct DataTracker {
    #[cfg(loom)]
    words: Vec<loom::cell::UnsafeCell<()>>,
}

impl DataTracker {
    #[cfg(loom)]
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            words: (0..capacity / 8)
                .map(|_| loom::cell::UnsafeCell::new(()))
                .collect(),
        }
    }

    #[cfg_attr(not(loom), allow(unused_variables))]
    #[inline]
    pub(crate) fn wrote(&self, offset: usize, len: usize) {
        #[cfg(loom)]
        for w in &self.words[offset / 8..(offset + len).div_ceil(8)] {
            w.with_mut(|_| ());
        }
    }

    #[cfg_attr(not(loom), allow(unused_variables))]
    #[inline]
    pub(crate) fn read(&self, offset: usize, len: usize) {
        #[cfg(loom)]
        for w in &self.words[offset / 8..(offset + len).div_ceil(8)] {
            w.with(|_| ());
        }
    }
}
