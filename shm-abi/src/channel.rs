//! The control channel between `aetherctl` (clients) and `aetherd` (server):
//! one segment holding two rings. Transport only: it moves byte strings; the
//! message types and request ids live in the message layer.
//!
//! ```text
//!  segment payload
//!  ┌──────────────────────────────┬──────────────────────────────┐
//!  │ request ring  (offset 0)     │ reply ring (offset R)        │
//!  │ aetherctl → aetherd          │ aetherd → aetherctl          │
//!  └──────────────────────────────┴──────────────────────────────┘
//!  R = Ring::required_bytes(capacity) rounded up to 128; both rings have the
//!  same capacity, read back from the request ring's header on connect.
//! ```
//!
//! The server claims the request consumer and the reply producer for its
//! lifetime. A client takes an exclusive `flock` on the segment file for the
//! whole exchange (so concurrent `aetherctl` processes — or threads with
//! their own clients — take turns), then claims the request producer and the
//! reply consumer, and releases all three on drop, claims first. A client
//! that dies mid-exchange releases the lock with its file descriptors, and its
//! claims are taken over because its pid is dead. A reply that arrives after
//! its client gave up stays in the reply ring; the next client drains what is
//! there on connect and [`ControlClient::call_matching`] drops any reply whose
//! request id (checked by the caller's predicate) is not its own.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ring::{
    ClaimError, Consumer, PopError, Producer, PushError, Ring, RingError, CACHE_LINE, MAX_CAPACITY,
    MIN_CAPACITY, RING_LAYOUT_FACTS,
};
use crate::segment::{Segment, SegmentError, SegmentLayout};

const CHANNEL_FACTS: [u64; 11] = {
    let mut f = [0u64; 11];
    let mut i = 0;
    while i < RING_LAYOUT_FACTS.len() {
        f[i] = RING_LAYOUT_FACTS[i];
        i += 1;
    }
    f[8] = 2; // two rings
    f[9] = CACHE_LINE as u64; // reply ring offset rounding
                              // The messages' schema: a client of another schema is refused at open
                              // (LayoutMismatch) instead of timing out on replies it cannot read.
    f[10] = crate::message::SCHEMA_VERSION as u64;
    f
};

/// Layout identity of a control channel segment.
pub const CHANNEL_LAYOUT: SegmentLayout =
    SegmentLayout::new("aether-control-channel", &CHANNEL_FACTS);

/// Errors of the control channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The segment could not be created or opened.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// A ring in the segment is missing or damaged.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// A ring handle is held by another live party.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// Sending failed (too large, or the ring is corrupt).
    #[error(transparent)]
    Push(#[from] PushError),
    /// Receiving failed (a corrupt record).
    #[error(transparent)]
    Pop(#[from] PopError),
    /// `flock` on the segment file failed.
    #[error("lock {path}: {source}")]
    Lock {
        /// The segment file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another client kept the channel locked for the whole timeout.
    #[error("{path} stayed locked by another client for {waited:?}; is another aetherctl stuck?")]
    LockTimeout {
        /// The segment file.
        path: PathBuf,
        /// How long we tried.
        waited: Duration,
    },
    /// No room in the request ring or no (matching) reply before the deadline.
    #[error("no {what} within {waited:?}; is aetherd running and healthy?")]
    Timeout {
        /// `"room for the request"` or `"reply"`.
        what: &'static str,
        /// The timeout.
        waited: Duration,
    },
    /// The reply ring is full: the client is not reading its replies.
    #[error("reply ring full")]
    ReplyRingFull,
}

fn reply_ring_offset(capacity: usize) -> usize {
    Ring::required_bytes(capacity).next_multiple_of(CACHE_LINE)
}

/// `aetherd`'s end: receives requests, sends replies.
#[derive(Debug)]
pub struct ControlServer {
    requests: Consumer,
    replies: Producer,
    segment: Arc<Segment>,
}

impl ControlServer {
    /// Creates the channel segment at `path` with two rings of `capacity`
    /// bytes each. A stale segment left by a dead server is replaced; one of
    /// a live server is [`SegmentError::InUse`]. The file is removed when the
    /// server drops.
    pub fn create(path: &Path, capacity: usize) -> Result<Self, ChannelError> {
        if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return Err(RingError::Capacity {
                capacity: capacity as u64,
                min: MIN_CAPACITY,
                max: MAX_CAPACITY,
            }
            .into());
        }
        let off = reply_ring_offset(capacity);
        let payload = off + Ring::required_bytes(capacity);
        let segment = Arc::new(Segment::create_replacing_stale(
            path,
            &CHANNEL_LAYOUT,
            payload,
        )?);
        let req = Ring::init_in_segment(&segment, 0, capacity)?;
        let rep = Ring::init_in_segment(&segment, off, capacity)?;
        Ok(Self {
            requests: req.consumer()?,
            replies: rep.producer()?,
            segment,
        })
    }

    /// The segment file.
    pub fn path(&self) -> &Path {
        self.segment.path()
    }

    /// The request consumer, for callers that want zero-copy access.
    pub fn requests(&mut self) -> &mut Consumer {
        &mut self.requests
    }

    /// Receives one request without waiting.
    pub fn try_recv(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        self.recv(Some(Duration::ZERO))
    }

    /// Receives one request, waiting up to `timeout` (`None`: forever);
    /// `Ok(None)` if none came.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Vec<u8>>, ChannelError> {
        let rec = if timeout == Some(Duration::ZERO) {
            self.requests.try_pop()
        } else {
            self.requests.wait_pop(timeout)
        };
        match rec {
            Ok(r) => Ok(Some(r.to_vec())),
            Err(PopError::Empty) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends one reply without waiting; [`ChannelError::ReplyRingFull`] if
    /// the client does not read its replies.
    pub fn reply(&mut self, bytes: &[u8]) -> Result<(), ChannelError> {
        match self.replies.try_push(bytes) {
            Err(PushError::Full) => Err(ChannelError::ReplyRingFull),
            other => Ok(other?),
        }
    }
}

/// An exclusive `flock` on a file, released on drop.
#[derive(Debug)]
struct FileLock {
    file: File,
}

impl FileLock {
    fn acquire(path: &Path, timeout: Option<Duration>) -> Result<Self, ChannelError> {
        let lock_err = |source| ChannelError::Lock {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(lock_err)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut pause = Duration::from_micros(50);
        loop {
            let op = if deadline.is_some() {
                libc::LOCK_EX | libc::LOCK_NB
            } else {
                libc::LOCK_EX
            };
            // SAFETY: flock on a descriptor we own; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(Self { file });
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => {}
                _ => return Err(lock_err(err)),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ChannelError::LockTimeout {
                    path: path.to_path_buf(),
                    waited: timeout.unwrap_or_default(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: flock on a descriptor we own. Closing the file would release
        // the lock too; unlocking explicitly documents the intent.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// `aetherctl`'s end. Holds the channel exclusively until dropped.
#[derive(Debug)]
pub struct ControlClient {
    // Field order is drop order: release the claims before the lock.
    requests: Producer,
    replies: Consumer,
    _segment: Arc<Segment>,
    _lock: FileLock,
}

impl ControlClient {
    /// Connects, waiting as long as needed for other clients to finish.
    pub fn connect(path: &Path) -> Result<Self, ChannelError> {
        Self::connect_inner(path, None)
    }

    /// Connects, waiting at most `timeout` for other clients to finish.
    pub fn connect_timeout(path: &Path, timeout: Duration) -> Result<Self, ChannelError> {
        Self::connect_inner(path, Some(timeout))
    }

    fn connect_inner(path: &Path, timeout: Option<Duration>) -> Result<Self, ChannelError> {
        let segment = Arc::new(Segment::open(path, &CHANNEL_LAYOUT)?);
        let lock = FileLock::acquire(path, timeout)?;
        let req = Ring::attach_in_segment(&segment, 0)?;
        let rep = Ring::attach_in_segment(&segment, reply_ring_offset(req.capacity()))?;
        let requests = req.producer()?;
        let mut replies = rep.consumer()?;
        // Replies to a previous client that gave up are not ours.
        loop {
            match replies.try_pop() {
                Ok(stale) => stale.release(),
                Err(PopError::Empty) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Self {
            requests,
            replies,
            _segment: segment,
            _lock: lock,
        })
    }

    /// Largest request or reply the rings carry.
    pub fn max_message(&self) -> usize {
        self.requests.ring().max_payload()
    }

    /// Sends `request` and returns the next reply, waiting up to `timeout`
    /// in total.
    pub fn call(&mut self, request: &[u8], timeout: Duration) -> Result<Vec<u8>, ChannelError> {
        self.call_matching(request, timeout, |_| true)
    }

    /// Sends `request` and returns the first reply for which `is_ours`
    /// holds (e.g. its request id matches), dropping others as stale.
    pub fn call_matching(
        &mut self,
        request: &[u8],
        timeout: Duration,
        mut is_ours: impl FnMut(&[u8]) -> bool,
    ) -> Result<Vec<u8>, ChannelError> {
        let deadline = Instant::now() + timeout;
        match self.requests.push_blocking(request, Some(timeout)) {
            Ok(()) => {}
            Err(PushError::Full) => {
                return Err(ChannelError::Timeout {
                    what: "room for the request",
                    waited: timeout,
                })
            }
            Err(e) => return Err(e.into()),
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.wait_pop(Some(left)) {
                Ok(reply) if is_ours(&reply) => return Ok(reply.to_vec()),
                Ok(stale) => stale.release(),
                Err(PopError::Empty) => {
                    return Err(ChannelError::Timeout {
                        what: "reply",
                        waited: timeout,
                    })
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
