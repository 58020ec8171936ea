//! Ctrl-C, `SIGTERM` and `SIGHUP` become a flag the measurement loops poll,
//! so the benchmark unwinds through its guards (nginx stopped, `aetherctl
//! down` run, temp dir removed) instead of dying with children left behind.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // SYNC: a lone flag with no data published through it; Relaxed suffices
    // (the loops only need to see it eventually). Async-signal-safe: one store.
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Installs the handlers (idempotent).
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `on_signal` is an `extern "C" fn(c_int)` that only performs
        // an atomic store, which is async-signal-safe; glibc's signal() gives
        // BSD semantics (SA_RESTART, handler stays installed).
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

/// Whether one of the signals arrived.
#[must_use]
pub fn interrupted() -> bool {
    // SYNC: see `on_signal`.
    INTERRUPTED.load(Ordering::Relaxed)
}
