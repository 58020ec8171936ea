//! The two benchmark processes and the control block they share.
//!
//! The parent creates the control file and the ring segments, then re-executes
//! its own binary as the child (`--child-of PREFIX --child-cpu B`). Both run
//! the same fixed sequence of phases and meet at barriers ([`Link::sync`])
//! between them.
//!
//! Control block (`PREFIX-ctl`, one file, every field on its own 128-byte
//! block so no two fields share a cache line or an adjacent-line prefetch pair):
//!
//! ```text
//! offset  field           written by  meaning
//!      0  parent_step     parent      last barrier the parent reached
//!    128  child_step      child       last barrier the child reached
//!    256  ping            parent      floor ping-pong: round trip i sent
//!    384  pong            child       floor ping-pong: round trip i echoed
//!    512  wake_word       child       futex floor: sample i published (u32)
//!    640  wake_stamp      child       futex floor: CLOCK_MONOTONIC at publish
//!    768  child_records   child       throughput: records the child pushed
//!    896  child_checksum  child       throughput: checksum of what it pushed
//!   1024  wake_ack        parent      wake-ups: samples the sleeper has taken
//! ```

use super::RingBenchError;
use crate::shared::{SharedFile, SharedPod};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One field on its own 128-byte block.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct Padded<T>(pub T);

/// The control block (layout in the module docs).
#[repr(C)]
#[derive(Debug, Default)]
pub struct Control {
    pub parent_step: Padded<AtomicU64>,
    pub child_step: Padded<AtomicU64>,
    pub ping: Padded<AtomicU64>,
    pub pong: Padded<AtomicU64>,
    pub wake_word: Padded<AtomicU32>,
    pub wake_stamp: Padded<AtomicU64>,
    pub child_records: Padded<AtomicU64>,
    pub child_checksum: Padded<AtomicU64>,
    pub wake_ack: Padded<AtomicU64>,
}

const _: () = assert!(std::mem::size_of::<Control>() == 9 * 128);
const _: () = assert!(std::mem::align_of::<Control>() == 128);

// SAFETY: repr(C), only atomics (zero is a valid value for each), no
// pointers, 128-byte alignment (≤ 4096); all mutation through atomics.
unsafe impl SharedPod for Control {}

/// Which of the two processes this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Pinned to the first cpu; drives every phase and measures.
    Parent,
    /// Pinned to the second cpu; echoes, produces, publishes.
    Child,
}

/// Files of one run, all under `/dev/shm` with a common prefix.
#[derive(Debug, Clone)]
pub struct RunFiles {
    prefix: PathBuf,
}

impl RunFiles {
    /// Names for a run of this process (`/dev/shm/aether-bench-ring-<pid>`).
    #[must_use]
    pub fn for_this_process() -> Self {
        Self {
            prefix: PathBuf::from(format!("/dev/shm/aether-bench-ring-{}", std::process::id())),
        }
    }

    /// Names under an existing prefix (the child's view).
    #[must_use]
    pub fn from_prefix(prefix: &Path) -> Self {
        Self {
            prefix: prefix.to_path_buf(),
        }
    }

    /// The prefix passed to the child.
    #[must_use]
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// `PREFIX-<name>`.
    #[must_use]
    pub fn file(&self, name: &str) -> PathBuf {
        let mut s = self.prefix.clone().into_os_string();
        s.push("-");
        s.push(name);
        PathBuf::from(s)
    }
}

/// How long one phase (from one barrier to the next) may wait for the peer
/// before the run gives up.
const PEER_TIMEOUT: Duration = Duration::from_secs(300);

/// This process's end of the pair: the control block, the child (parent
/// only), and the barrier count.
#[derive(Debug)]
pub struct Link {
    ctl: SharedFile<Control>,
    side: Side,
    child: Option<Child>,
    step: u64,
    spins: u64,
    waiting_since: Option<Instant>,
    wakeups: u64,
}

impl Link {
    /// The parent's end: spawns `exe` with `args` (the child re-executes this
    /// binary) after the control file exists.
    ///
    /// # Errors
    /// [`RingBenchError::Spawn`] when the child cannot be started.
    pub fn parent(
        ctl: SharedFile<Control>,
        exe: &Path,
        args: &[std::ffi::OsString],
    ) -> Result<Self, RingBenchError> {
        let child =
            Command::new(exe)
                .args(args)
                .spawn()
                .map_err(|source| RingBenchError::Spawn {
                    exe: exe.to_path_buf(),
                    source,
                })?;
        Ok(Self::new(ctl, Side::Parent, Some(child)))
    }

    /// The child's end. The child dies with its parent (`PR_SET_PDEATHSIG`),
    /// so it never spins forever on a ring nobody feeds.
    ///
    /// # Errors
    /// [`RingBenchError::Prctl`] when the parent-death signal cannot be set.
    pub fn child(ctl: SharedFile<Control>) -> Result<Self, RingBenchError> {
        // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
        let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        if rc != 0 {
            return Err(RingBenchError::Prctl(std::io::Error::last_os_error()));
        }
        Ok(Self::new(ctl, Side::Child, None))
    }

    fn new(ctl: SharedFile<Control>, side: Side, child: Option<Child>) -> Self {
        Self {
            ctl,
            side,
            child,
            step: 0,
            spins: 0,
            waiting_since: None,
            wakeups: 0,
        }
    }

    /// The shared control block.
    #[must_use]
    pub fn ctl(&self) -> &Control {
        &self.ctl
    }

    /// Which process this is.
    #[must_use]
    pub fn side(&self) -> Side {
        self.side
    }

    /// Waits until the peer reached the same barrier. Both processes call
    /// `sync` the same number of times, in the same order.
    ///
    /// # Errors
    /// When the child died or the peer did not arrive within the timeout.
    pub fn sync(&mut self) -> Result<(), RingBenchError> {
        self.step += 1;
        let step = self.step;
        let mine = match self.side {
            Side::Parent => &self.ctl.parent_step.0,
            Side::Child => &self.ctl.child_step.0,
        };
        // SYNC: Release publishes everything this process wrote before the
        // barrier (child results in the control block, drained rings); the
        // peer's Acquire load of our step below makes it visible to it.
        mine.store(step, Ordering::Release);
        // SYNC: Acquire pairs with the peer's Release store of its step.
        while self.theirs_step() < step {
            self.idle()?;
        }
        // The next phase gets a fresh PEER_TIMEOUT.
        self.waiting_since = None;
        Ok(())
    }

    fn theirs_step(&self) -> u64 {
        let theirs = match self.side {
            Side::Parent => &self.ctl.child_step.0,
            Side::Child => &self.ctl.parent_step.0,
        };
        // SYNC: Acquire pairs with the peer's Release store in `sync`.
        theirs.load(Ordering::Acquire)
    }

    /// Parent: announces that it took one more wake-up sample. The count runs
    /// on across wake-up phases, in step with the child's.
    pub fn ack_wakeup(&mut self) {
        self.wakeups += 1;
        // SYNC: Release/Acquire: only a count; nothing else is published.
        self.ctl.wake_ack.0.store(self.wakeups, Ordering::Release);
    }

    /// Child: waits until the parent took the sample just sent, so the next
    /// one finds it asleep again rather than queued behind this one.
    ///
    /// # Errors
    /// [`RingBenchError::PeerTimeout`].
    pub fn await_wakeup_ack(&mut self) -> Result<(), RingBenchError> {
        self.wakeups += 1;
        // SYNC: Acquire pairs with `ack_wakeup`'s Release store.
        while self.ctl.wake_ack.0.load(Ordering::Acquire) < self.wakeups {
            self.idle()?;
        }
        Ok(())
    }

    /// One iteration of a busy-wait on the peer: a spin hint, and every 64 Ki
    /// calls a check that the child is alive and the wait is not hopeless.
    /// Used identically by the floor and the ring loops, so both pay the same.
    ///
    /// # Errors
    /// [`RingBenchError::ChildDied`] or [`RingBenchError::PeerTimeout`].
    #[inline]
    pub fn idle(&mut self) -> Result<(), RingBenchError> {
        self.spins = self.spins.wrapping_add(1);
        if self.spins & 0xFFFF == 0 {
            self.check_peer()?;
        }
        std::hint::spin_loop();
        Ok(())
    }

    /// Checks that the child is alive and the phase is not hopelessly late.
    /// Loops that sleep (futex, `wait_pop` with a timeout) call it after
    /// every sleep; spinning loops reach it through [`Link::idle`].
    ///
    /// # Errors
    /// [`RingBenchError::ChildDied`] or [`RingBenchError::PeerTimeout`].
    #[cold]
    pub fn check_peer(&mut self) -> Result<(), RingBenchError> {
        let step = self.step;
        if let Some(child) = self.child.as_mut() {
            match child.try_wait() {
                Ok(Some(status)) => return Err(RingBenchError::ChildDied { step, status }),
                Ok(None) => {}
                Err(source) => return Err(RingBenchError::ChildWait(source)),
            }
        }
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        if since.elapsed() > PEER_TIMEOUT {
            return Err(RingBenchError::PeerTimeout {
                step,
                waited: since.elapsed(),
            });
        }
        Ok(())
    }

    /// Parent only: waits for the child to exit and checks it succeeded.
    ///
    /// # Errors
    /// [`RingBenchError::ChildDied`] when it exited unsuccessfully.
    pub fn finish(mut self) -> Result<(), RingBenchError> {
        if let Some(mut child) = self.child.take() {
            let status = child.wait().map_err(RingBenchError::ChildWait)?;
            if !status.success() {
                return Err(RingBenchError::ChildDied {
                    step: self.step,
                    status,
                });
            }
        }
        Ok(())
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // An error path left the child running: stop it (our own child, by pid).
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
