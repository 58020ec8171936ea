//! Single-producer single-consumer ring of variable-length records in shared
//! memory.
//!
//! # Layout
//!
//! A ring is a 384-byte header (three 128-byte lines) followed by a data area
//! of `capacity` bytes (the requested capacity rounded up to a multiple of 8):
//!
//! ```text
//!  line 0 (read-mostly)      line 1 (producer writes)   line 2 (consumer writes)
//!  ┌──────────────────────┐  ┌──────────────────────┐  ┌──────────────────────┐
//!  │ magic  u32 "RING"    │  │ tail   u64 (monotone)│  │ head   u64 (monotone)│
//!  │ version u32          │  │ consumer_sleeping u32│  │ producer_sleeping u32│
//!  │ capacity u64         │  │   (futex word)       │  │   (futex word)       │
//!  │ producer_pid u32     │  │ pad to 128           │  │ pad to 128           │
//!  │ consumer_pid u32     │  └──────────────────────┘  └──────────────────────┘
//!  │ pad to 128           │
//!  └──────────────────────┘
//!  data area, `capacity` bytes, records back to back:
//!  ┌────────┬────────┬───────────────────┬─────────┐
//!  │ len u32│ crc u32│ payload (len B)   │ pad → 8 │  one record = 8 + round8(len) bytes
//!  └────────┴────────┴───────────────────┴─────────┘
//!  len = 0xFFFF_FFFF, crc = "SKIP": skip marker, the rest of the lap is unused
//! ```
//!
//! `head` and `tail` are byte positions that only grow (u64, they never wrap in
//! practice: 2^64 bytes); the data offset is `index % capacity`. `tail - head`
//! is the number of bytes in use. A record never straddles the end of the data
//! area: when it does not fit in the bytes left in the lap, the producer writes
//! a skip marker there and the record starts at offset 0 of the next lap. The
//! skip marker is published at once, even when the record then does not fit
//! (the push returns [`PushError::Full`]), so any record up to the whole
//! capacity makes progress once the consumer drains the ring.
//!
//! # Cache lines
//!
//! Lines are 128 bytes, not 64: Intel's L2 "adjacent line" prefetcher fetches
//! 64-byte lines in 128-byte aligned pairs, so two indices 64 bytes apart
//! still ping-pong. Each sleeping flag sits on the line its *checker* already
//! owns: the producer checks `consumer_sleeping` after every publish, and it
//! lives beside `tail`, which the producer just wrote — the check costs no
//! coherence traffic. Each handle also keeps a private copy of the peer's
//! index (`cached_head` / `cached_tail`) and reads the shared one only when the
//! copy says the ring is full/empty, so in steady state each line moves once
//! per batch, not once per record.
//!
//! # Ordering argument
//!
//! * Data: the producer writes a record's bytes, then stores `tail` with (at
//!   least) Release; the consumer loads `tail` with Acquire before reading any
//!   byte below it. Symmetrically the consumer finishes reading, then stores
//!   `head` with Release; the producer loads `head` with Acquire before
//!   overwriting bytes below it. So no byte is read while written or written
//!   while read.
//! * Sleep/wake (Dekker): a waiter stores `sleeping = 1`, issues a SeqCst
//!   fence, re-checks the index, and only then `FUTEX_WAIT`s while the word is
//!   still 1. The peer publishes the index with a SeqCst swap and loads the
//!   flag with SeqCst. By the C++20 total order on SeqCst operations and
//!   fences (argument in `wake_waiter`), at least one side sees the other's
//!   store: either the waiter sees the new index and does not sleep, or the
//!   peer sees the flag, swaps it to 0 and `FUTEX_WAKE`s; a wake that lands
//!   before the wait makes the wait return at once (word no longer 1). The
//!   busy path is one `xchg` plus a load of the peer's own line on x86: no
//!   `mfence`, no syscall (store + `mfence` measured 7 M records/s for 64 B
//!   between two threads here, the swap 12–15 M).
//! * Everything read from shared memory (indices, lengths, CRCs) is bounds
//!   checked before use; a bad value is [`PopError::Corrupt`], never a panic.
//!
//! The loom test (`tests/loom.rs`) checks both arguments exhaustively; see the
//! crate docs for the command. Loom models SeqCst accesses only as AcqRel, so
//! its build adds a SeqCst fence on the wake side and checks the fence form of
//! the handshake; the step from that to the SeqCst-access form is the C++20
//! argument written out in `wake_waiter`.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::segment::{Segment, SegmentError, SegmentLayout};
use crate::sync::{
    fence, spin_limit, spin_pause, AtomicU32, AtomicU64, DataTracker, Futex, Ordering,
};

/// Bytes of the record header (`len` + `crc`).
pub const RECORD_HEADER_LEN: usize = 8;
/// Records start at multiples of this.
pub const RECORD_ALIGN: usize = 8;
/// Smallest accepted capacity.
pub const MIN_CAPACITY: usize = 64;
/// Largest accepted capacity (keeps every length below the skip marker).
pub const MAX_CAPACITY: usize = 1 << 31;
/// `len` value of a skip marker.
pub const SKIP_LEN: u32 = u32::MAX;
/// `crc` value of a skip marker ("SKIP").
pub const SKIP_CRC: u32 = u32::from_le_bytes(*b"SKIP");
/// Magic of a ring header ("RING").
pub const RING_MAGIC: u32 = u32::from_le_bytes(*b"RING");
/// Version of the ring header and framing.
pub const RING_VERSION: u32 = 1;
/// Cache line size used for padding (see module docs).
pub const CACHE_LINE: usize = 128;
/// Size of the ring header in shared memory.
pub const RING_HEADER_LEN: usize = size_of::<RingHeader>();

/// Bytes one record of `payload_len` occupies in the data area.
pub const fn framed_len(payload_len: usize) -> usize {
    RECORD_HEADER_LEN + payload_len.next_multiple_of(RECORD_ALIGN)
}

/// The data-area size used for a requested capacity (rounded up to 8).
pub const fn data_capacity(capacity: usize) -> usize {
    match capacity.checked_next_multiple_of(RECORD_ALIGN) {
        Some(c) => c,
        // Only for absurd capacities, which init rejects anyway.
        None => usize::MAX - (RECORD_ALIGN - 1),
    }
}

/// Largest payload a ring of this requested capacity accepts.
pub const fn max_payload(capacity: usize) -> usize {
    data_capacity(capacity).saturating_sub(RECORD_HEADER_LEN)
}

#[repr(C, align(128))]
#[derive(Debug)]
struct CachePadded<T>(T);

#[repr(C)]
#[derive(Debug)]
struct MetaLine {
    magic: AtomicU32,
    version: u32,
    capacity: u64,
    producer_pid: AtomicU32,
    consumer_pid: AtomicU32,
}

/// An index and the futex its peer sleeps on while waiting for it to move.
#[repr(C)]
#[derive(Debug)]
struct IndexLine {
    index: AtomicU64,
    waiter: Futex,
}

/// The ring header as it lies in shared memory (see module docs).
#[repr(C)]
#[derive(Debug)]
pub struct RingHeader {
    meta: CachePadded<MetaLine>,
    tail: CachePadded<IndexLine>,
    head: CachePadded<IndexLine>,
    #[cfg(loom)]
    tracker: DataTracker,
}

#[cfg(not(loom))]
const _: () = {
    assert!(size_of::<RingHeader>() == 384);
    assert!(std::mem::offset_of!(RingHeader, tail) == 128);
    assert!(std::mem::offset_of!(RingHeader, head) == 256);
    assert!(size_of::<MetaLine>() == 24);
    assert!(size_of::<IndexLine>() == 16);
};

// SAFETY: repr(C) with pinned size and offsets (above); integers and atomics
// only, no pointers; every field is validated (`attach`) or bounds-checked
// (`head`/`tail` on each read) before use.
#[cfg(not(loom))]
unsafe impl crate::segment::ShmSafe for RingHeader {}

/// Facts the ring layout depends on; part of every layout hash that contains
/// a ring.
pub const RING_LAYOUT_FACTS: [u64; 8] = [
    RING_HEADER_LEN as u64,
    CACHE_LINE as u64,
    RECORD_HEADER_LEN as u64,
    RECORD_ALIGN as u64,
    SKIP_LEN as u64,
    SKIP_CRC as u64,
    RING_VERSION as u64,
    MIN_CAPACITY as u64,
];

#[cfg(not(loom))]
static NO_TRACKER: DataTracker = DataTracker {};

/// Errors of creating or attaching a ring.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The region does not start on a 128-byte boundary.
    #[error("ring region at {addr:#x} is not 128-byte aligned")]
    Misaligned {
        /// Address of the region.
        addr: usize,
    },
    /// The region is too small for the header and data area.
    #[error("ring region of {len} bytes, need {required}")]
    RegionTooSmall {
        /// Bytes available.
        len: usize,
        /// Bytes needed.
        required: usize,
    },
    /// Capacity outside [`MIN_CAPACITY`]..=[`MAX_CAPACITY`] (or, on attach,
    /// not a multiple of 8).
    #[error("ring capacity {capacity} outside {min}..={max} (or not a multiple of 8)")]
    Capacity {
        /// The capacity asked for or found.
        capacity: u64,
        /// Minimum.
        min: usize,
        /// Maximum.
        max: usize,
    },
    /// No ring header at this place.
    #[error("no ring here (magic {found:#010x})")]
    BadMagic {
        /// The value found.
        found: u32,
    },
    /// A ring of another version.
    #[error("ring version {found}, this binary speaks {expected}")]
    VersionMismatch {
        /// Version found.
        found: u32,
        /// Version expected.
        expected: u32,
    },
    /// The segment holding the ring failed.
    #[error(transparent)]
    Segment(#[from] SegmentError),
}

/// Why a handle could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// A live process (possibly this one) holds the handle.
    #[error("ring {role} is held by live process {pid}")]
    AlreadyClaimed {
        /// `"producer"` or `"consumer"`.
        role: &'static str,
        /// The holder.
        pid: u32,
    },
    /// The shared indices are impossible; the ring must be re-created.
    #[error("ring indices are corrupt (head {head}, tail {tail}, capacity {capacity})")]
    Corrupt {
        /// Head found.
        head: u64,
        /// Tail found.
        tail: u64,
        /// Data capacity.
        capacity: u64,
    },
}

/// Why a push failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The record can never fit in this ring.
    #[error("record of {len} bytes exceeds the ring's maximum payload of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// Largest payload this ring takes.
        max: usize,
    },
    /// Not enough free space now (or by the deadline); retry later.
    #[error("ring full")]
    Full,
    /// The consumer's index is impossible; the ring must be re-created.
    #[error("ring indices are corrupt (head {head}, tail {tail})")]
    Corrupt {
        /// Head found.
        head: u64,
        /// Our tail.
        tail: u64,
    },
}

/// What was wrong with a record or index read from shared memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorruptReason {
    /// The published tail is behind the head or more than a capacity ahead.
    IndexOutOfRange {
        /// Head.
        head: u64,
        /// Tail found.
        tail: u64,
    },
    /// The record length does not fit in the published bytes or the lap.
    LengthOutOfBounds {
        /// Length field.
        len: u32,
        /// Bytes it could occupy at most.
        available: u64,
    },
    /// The payload does not match its CRC.
    CrcMismatch {
        /// CRC in the record header.
        stored: u32,
        /// CRC of the payload.
        computed: u32,
    },
    /// A skip marker with the wrong CRC field.
    BadSkipMarker {
        /// The CRC field found.
        crc: u32,
    },
}

impl fmt::Display for CorruptReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IndexOutOfRange { head, tail } => {
                write!(f, "tail {tail} out of range for head {head}")
            }
            Self::LengthOutOfBounds { len, available } => {
                write!(f, "length {len} exceeds the {available} bytes available")
            }
            Self::CrcMismatch { stored, computed } => {
                write!(
                    f,
                    "crc {computed:#010x} of the payload, header says {stored:#010x}"
                )
            }
            Self::BadSkipMarker { crc } => write!(f, "skip marker with crc field {crc:#010x}"),
        }
    }
}

/// Why a pop failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PopError {
    /// No record now (or by the deadline).
    #[error("ring empty")]
    Empty,
    /// The record at `offset` is damaged. The consumer does not advance past
    /// it: the ring is poisoned and must be re-created.
    #[error("corrupt record at ring index {offset} (data offset = index % capacity): {reason}")]
    Corrupt {
        /// Ring index (monotone byte position) of the bad record.
        offset: u64,
        /// What was wrong.
        reason: CorruptReason,
    },
}

/// A ring inside some shared region. Cheap to clone; the producer and consumer
/// handles are taken from it with [`Ring::producer`] / [`Ring::consumer`].
#[derive(Clone)]
pub struct Ring {
    hdr: NonNull<RingHeader>,
    data: NonNull<u8>,
    cap: u64,
    _keep: Option<Arc<Segment>>,
}

// SAFETY: the ring's memory is shared by design; all cross-thread access goes
// through atomics or the SPSC protocol, and exclusivity of the two roles is
// enforced by the pid claims. The optional Arc keeps the mapping alive.
unsafe impl Send for Ring {}
// SAFETY: as above: `&Ring` only allows claiming handles and reading atomics.
unsafe impl Sync for Ring {}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.cap)
            .field("head", &self.hdr().head.0.index.load(Ordering::Relaxed))
            .field("tail", &self.hdr().tail.0.index.load(Ordering::Relaxed))
            .finish()
    }
}

/// `x % cap` or a position below `cap`, as a usize. Values are < capacity ≤
/// 2^31, so the conversion never truncates.
#[allow(clippy::cast_possible_truncation)]
#[inline]
fn us(x: u64) -> usize {
    x as usize
}

impl Ring {
    /// Bytes a ring of `capacity` needs (header + data area rounded to 8).
    pub const fn required_bytes(capacity: usize) -> usize {
        RING_HEADER_LEN.saturating_add(data_capacity(capacity))
    }

    fn check_region(base: NonNull<u8>, len: usize) -> Result<(), RingError> {
        let addr = base.as_ptr() as usize;
        if !addr.is_multiple_of(CACHE_LINE) {
            return Err(RingError::Misaligned { addr });
        }
        if len < RING_HEADER_LEN {
            return Err(RingError::RegionTooSmall {
                len,
                required: RING_HEADER_LEN,
            });
        }
        Ok(())
    }

    /// Initialises a fresh ring of `capacity` (rounded up to 8) at `base`.
    ///
    /// # Safety
    ///
    /// `base..base+len` must be valid for reads and writes, not used for
    /// anything else, and outlive the returned `Ring`, its clones and every
    /// handle taken from them. No process may be using a ring there.
    pub unsafe fn init_in(
        base: NonNull<u8>,
        len: usize,
        capacity: usize,
    ) -> Result<Ring, RingError> {
        Self::check_region(base, len)?;
        if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return Err(RingError::Capacity {
                capacity: capacity as u64,
                min: MIN_CAPACITY,
                max: MAX_CAPACITY,
            });
        }
        let required = Self::required_bytes(capacity);
        if len < required {
            return Err(RingError::RegionTooSmall { len, required });
        }
        let cap = data_capacity(capacity);
        let hdr = base.cast::<RingHeader>();
        let header = RingHeader {
            meta: CachePadded(MetaLine {
                magic: AtomicU32::new(0),
                version: RING_VERSION,
                capacity: cap as u64,
                producer_pid: AtomicU32::new(0),
                consumer_pid: AtomicU32::new(0),
            }),
            tail: CachePadded(IndexLine {
                index: AtomicU64::new(0),
                waiter: Futex::new(0),
            }),
            head: CachePadded(IndexLine {
                index: AtomicU64::new(0),
                waiter: Futex::new(0),
            }),
            #[cfg(loom)]
            tracker: DataTracker::new(cap),
        };
        // SAFETY: `base` is 128-aligned (checked), valid for `len ≥
        // RING_HEADER_LEN` bytes and unused by anyone else (caller contract).
        unsafe { hdr.as_ptr().write(header) };
        // SAFETY: required_bytes ≤ len, so the data area is inside the region.
        let data = unsafe { base.add(RING_HEADER_LEN) };
        let ring = Ring {
            hdr,
            data,
            cap: cap as u64,
            _keep: None,
        };
        // SYNC: Release publishes the header fields to `attach`, which loads
        // the magic with Acquire.
        ring.hdr().meta.0.magic.store(RING_MAGIC, Ordering::Release);
        Ok(ring)
    }

    /// Attaches to a ring initialised (by any process) at `base`, validating
    /// its header against `len`.
    ///
    /// # Safety
    ///
    /// `base..base+len` must be valid for reads and writes and outlive the
    /// returned `Ring`, its clones and every handle taken from them; the memory
    /// may be shared with other processes that follow the ring protocol.
    pub unsafe fn attach(base: NonNull<u8>, len: usize) -> Result<Ring, RingError> {
        Self::check_region(base, len)?;
        let hdr = base.cast::<RingHeader>();
        // SAFETY: aligned and long enough for the header (checked above);
        // valid for reads per the caller contract.
        let h = unsafe { hdr.as_ref() };
        // SYNC: Acquire pairs with the Release store of the magic in init_in.
        let magic = h.meta.0.magic.load(Ordering::Acquire);
        if magic != RING_MAGIC {
            return Err(RingError::BadMagic { found: magic });
        }
        if h.meta.0.version != RING_VERSION {
            return Err(RingError::VersionMismatch {
                found: h.meta.0.version,
                expected: RING_VERSION,
            });
        }
        let cap = h.meta.0.capacity;
        if cap < MIN_CAPACITY as u64
            || cap > MAX_CAPACITY as u64
            || !cap.is_multiple_of(RECORD_ALIGN as u64)
        {
            return Err(RingError::Capacity {
                capacity: cap,
                min: MIN_CAPACITY,
                max: MAX_CAPACITY,
            });
        }
        let required = RING_HEADER_LEN + us(cap);
        if len < required {
            return Err(RingError::RegionTooSmall { len, required });
        }
        // SAFETY: RING_HEADER_LEN + cap ≤ len (checked).
        let data = unsafe { base.add(RING_HEADER_LEN) };
        Ok(Ring {
            hdr,
            data,
            cap,
            _keep: None,
        })
    }

    fn segment_region(seg: &Segment, offset: usize) -> Result<(NonNull<u8>, usize), RingError> {
        let len = seg
            .payload_len()
            .checked_sub(offset)
            .ok_or(RingError::RegionTooSmall {
                len: seg.payload_len(),
                required: offset,
            })?;
        // SAFETY: offset ≤ payload_len (checked), so the pointer stays inside
        // (or one past the end of) the mapping.
        let base = unsafe { seg.payload_ptr().add(offset) };
        Ok((base, len))
    }

    /// Initialises a ring at `offset` (a multiple of 128) of `seg`'s payload.
    /// The ring keeps the segment mapped.
    pub fn init_in_segment(
        seg: &Arc<Segment>,
        offset: usize,
        capacity: usize,
    ) -> Result<Ring, RingError> {
        let (base, len) = Self::segment_region(seg, offset)?;
        // SAFETY: the region lies in the segment's mapping, which the Arc we
        // store keeps alive as long as the ring and its handles.
        let mut ring = unsafe { Self::init_in(base, len, capacity) }?;
        ring._keep = Some(Arc::clone(seg));
        Ok(ring)
    }

    /// Attaches to the ring at `offset` of `seg`'s payload.
    pub fn attach_in_segment(seg: &Arc<Segment>, offset: usize) -> Result<Ring, RingError> {
        let (base, len) = Self::segment_region(seg, offset)?;
        // SAFETY: as in init_in_segment.
        let mut ring = unsafe { Self::attach(base, len) }?;
        ring._keep = Some(Arc::clone(seg));
        Ok(ring)
    }

    fn hdr(&self) -> &RingHeader {
        // SAFETY: `hdr` was validated (aligned, in bounds, initialised) at
        // init/attach and the memory outlives `self` (constructor contracts).
        unsafe { self.hdr.as_ref() }
    }

    #[cfg(loom)]
    fn tracker(&self) -> &DataTracker {
        &self.hdr().tracker
    }

    #[cfg(not(loom))]
    fn tracker(&self) -> &DataTracker {
        &NO_TRACKER
    }

    /// Size of the data area (requested capacity rounded up to 8).
    pub fn capacity(&self) -> usize {
        us(self.cap)
    }

    /// Largest payload a record may have.
    pub fn max_payload(&self) -> usize {
        us(self.cap) - RECORD_HEADER_LEN
    }

    /// Bytes between head and tail right now (a racy snapshot).
    pub fn used_bytes(&self) -> u64 {
        // SYNC: Relaxed: an informational snapshot; nothing is read through it.
        let tail = self.hdr().tail.0.index.load(Ordering::Relaxed);
        let head = self.hdr().head.0.index.load(Ordering::Relaxed);
        tail.saturating_sub(head)
    }

    /// Pid holding the producer handle, if any.
    pub fn producer_pid(&self) -> Option<u32> {
        // SYNC: Relaxed: informational snapshot.
        Some(self.hdr().meta.0.producer_pid.load(Ordering::Relaxed)).filter(|&p| p != 0)
    }

    /// Pid holding the consumer handle, if any.
    pub fn consumer_pid(&self) -> Option<u32> {
        // SYNC: Relaxed: informational snapshot.
        Some(self.hdr().meta.0.consumer_pid.load(Ordering::Relaxed)).filter(|&p| p != 0)
    }

    fn load_indices(&self) -> Result<(u64, u64), ClaimError> {
        // SYNC: Acquire on both: a previous holder released its handle with a
        // Release store of the pid slot, and we read the indices it left.
        let head = self.hdr().head.0.index.load(Ordering::Acquire);
        let tail = self.hdr().tail.0.index.load(Ordering::Acquire);
        if tail < head
            || tail - head > self.cap
            || !head.is_multiple_of(8)
            || !tail.is_multiple_of(8)
        {
            return Err(ClaimError::Corrupt {
                head,
                tail,
                capacity: self.cap,
            });
        }
        Ok((head, tail))
    }

    /// Takes the producer handle. Fails with [`ClaimError::AlreadyClaimed`]
    /// while a live process (this one included) holds it; a handle left by a
    /// dead process is taken over.
    pub fn producer(&self) -> Result<Producer, ClaimError> {
        let pid = claim(&self.hdr().meta.0.producer_pid, "producer")?;
        let (head, tail) = match self.load_indices() {
            Ok(v) => v,
            Err(e) => {
                unclaim(&self.hdr().meta.0.producer_pid, pid);
                return Err(e);
            }
        };
        Ok(Producer {
            ring: self.clone(),
            tail,
            cached_head: head,
            pid,
        })
    }

    /// Takes the consumer handle (same rules as [`Ring::producer`]).
    pub fn consumer(&self) -> Result<Consumer, ClaimError> {
        let pid = claim(&self.hdr().meta.0.consumer_pid, "consumer")?;
        let (head, tail) = match self.load_indices() {
            Ok(v) => v,
            Err(e) => {
                unclaim(&self.hdr().meta.0.consumer_pid, pid);
                return Err(e);
            }
        };
        Ok(Consumer {
            ring: self.clone(),
            head,
            cached_tail: tail,
            pid,
        })
    }

    /// Raw pointer to data offset `off`. Callers guarantee `off + n ≤ cap`
    /// for the `n` bytes they touch.
    fn at(&self, off: usize) -> *mut u8 {
        debug_assert!(off <= us(self.cap));
        // SAFETY: off ≤ cap, and the data area is `cap` bytes long.
        unsafe { self.data.as_ptr().add(off) }
    }

    fn read_word(&self, off: usize) -> u32 {
        debug_assert!(off + 4 <= us(self.cap));
        // SAFETY: callers pass off with off + 4 ≤ cap (record headers start at
        // multiples of 8 < cap, and cap is a multiple of 8). Volatile so the
        // value is read once and validated as read, even if a faulty peer
        // changes it concurrently.
        u32::from_le_bytes(unsafe { self.at(off).cast::<[u8; 4]>().read_volatile() })
    }

    fn write_header(&self, off: usize, len: u32, crc: u32) {
        debug_assert!(off + 8 <= us(self.cap));
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        bytes[4..].copy_from_slice(&crc.to_le_bytes());
        // SAFETY: off + 8 ≤ cap (callers write headers at 8-aligned offsets
        // below cap); the bytes are beyond the published tail, so only the
        // producer (us) touches them.
        unsafe { self.at(off).cast::<[u8; 8]>().write_volatile(bytes) };
    }

    /// Test hook: the raw data area, to damage records in tests.
    #[doc(hidden)]
    pub fn data_ptr_for_tests(&self) -> *mut u8 {
        self.data.as_ptr()
    }

    /// Test hook: the ring header, to damage indices in tests.
    #[doc(hidden)]
    pub fn header_ptr_for_tests(&self) -> *mut u8 {
        self.hdr.as_ptr().cast()
    }
}

fn claim(slot: &AtomicU32, role: &'static str) -> Result<u32, ClaimError> {
    let me = std::process::id();
    // SYNC: Acquire: a handle released by a previous holder (Release store of
    // 0) hands over its view of the indices.
    let mut cur = slot.load(Ordering::Acquire);
    loop {
        if cur != 0 && (cur == me || crate::process_alive(cur)) {
            return Err(ClaimError::AlreadyClaimed { role, pid: cur });
        }
        // cur is 0 (free) or a dead process: take it over.
        // SYNC: AcqRel on success (acquire the previous holder's writes,
        // publish ours); Acquire on failure to re-examine the new holder.
        match slot.compare_exchange(cur, me, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(me),
            Err(now) => cur = now,
        }
    }
}

fn unclaim(slot: &AtomicU32, pid: u32) {
    // SYNC: Release: our index stores happen-before the next holder's claim.
    let _ = slot.compare_exchange(pid, 0, Ordering::Release, Ordering::Relaxed);
}

/// Wakes the sleeper on `line.waiter`, if any. Called right after the
/// SeqCst swap that stored `line.index`.
fn wake_waiter(line: &IndexLine) {
    let word = line.waiter.word();
    // SYNC: Dekker, SeqCst load C after our SeqCst index swap A. The waiter
    // stores the flag (W), issues a SeqCst fence X, then loads the index (B).
    // Suppose both miss: B reads an index older than A and C reads a flag
    // older than W. In C++20's single total order S (Rust's model):
    // X happens-before B, B is coherence-ordered before A, A is SeqCst, so
    // X <S A; C is SeqCst, coherence-ordered before W, W happens-before X,
    // so C <S X; and A is sequenced before C, both SeqCst, so A <S C. That
    // is X <S A <S C <S X: impossible, so at least one side sees the other.
    // On x86 A is one `xchg` and C a plain `mov` of our own line: the busy
    // path has no `mfence` and no syscall. Loom treats SeqCst accesses as
    // AcqRel, so its build adds a SeqCst fence here (`loom_dekker_fence`)
    // and checks the fence form of the same handshake.
    crate::sync::loom_dekker_fence();
    if word.load(Ordering::SeqCst) != 0 && word.swap(0, Ordering::Relaxed) != 0 {
        line.waiter.wake_all();
    }
}

/// Waits until `ready()` is true or `deadline` passes; returns whether ready.
/// Spins `spin_limit()` times, then sleeps on `line.waiter` with the Dekker
/// protocol described in the module docs.
fn wait_on(line: &IndexLine, deadline: Option<Instant>, mut ready: impl FnMut() -> bool) -> bool {
    let mut spins = 0;
    while spins < spin_limit() {
        if ready() {
            return true;
        }
        spin_pause();
        spins += 1;
    }
    let word = line.waiter.word();
    loop {
        if ready() {
            return true;
        }
        let remaining = match deadline {
            None => None,
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(r) if !r.is_zero() => Some(r),
                _ => return false,
            },
        };
        // SYNC: announce the sleep, then a SeqCst fence before re-checking
        // the index: pairs with the peer's fence between its index store and
        // its flag load (Dekker), so one of us sees the other's store.
        word.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if ready() {
            // SYNC: Relaxed: only saves the peer a pointless wake syscall.
            word.store(0, Ordering::Relaxed);
            return true;
        }
        line.waiter.wait(1, remaining);
        // Woken, timed out or spurious: loop to re-check. The flag is cleared
        // by the waker; on timeout the next iteration returns and the flag
        // stays set, costing the peer at most one wake syscall.
    }
}

fn clear_flag_on_timeout(line: &IndexLine) {
    // SYNC: Relaxed: the flag only decides whether the peer makes a syscall.
    line.waiter.word().store(0, Ordering::Relaxed);
}

/// The single producer of a ring. Released on drop.
pub struct Producer {
    ring: Ring,
    tail: u64,
    cached_head: u64,
    pid: u32,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("tail", &self.tail)
            .field("cached_head", &self.cached_head)
            .field("capacity", &self.ring.cap)
            .finish()
    }
}

impl Producer {
    /// The ring this producer writes.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    fn free_with(&self, head: u64) -> u64 {
        self.ring.cap - (self.tail - head)
    }

    /// Ensures `need` free bytes, refreshing the cached head if necessary.
    fn has_room(&mut self, need: u64) -> Result<bool, PushError> {
        if self.free_with(self.cached_head) >= need {
            return Ok(true);
        }
        // SYNC: Acquire pairs with the consumer's Release store of head: its
        // reads of the bytes below head are done before we overwrite them.
        let head = self.ring.hdr().head.0.index.load(Ordering::Acquire);
        if head > self.tail || self.tail - head > self.ring.cap || head < self.cached_head {
            return Err(PushError::Corrupt {
                head,
                tail: self.tail,
            });
        }
        self.cached_head = head;
        Ok(self.free_with(head) >= need)
    }

    fn publish(&self) {
        let line = &self.ring.hdr().tail.0;
        // SYNC: SeqCst swap: a Release store of tail (publishes the record
        // bytes; pairs with the consumer's Acquire load) that is also the
        // SeqCst write of the Dekker handshake with the consumer's flag store
        // + fence + tail load (see `wake_waiter`). On x86 one `xchg`, cheaper
        // than a store followed by `mfence`.
        line.index.swap(self.tail, Ordering::SeqCst);
        wake_waiter(line);
    }

    /// Reserves room for a record of `len` payload bytes and returns it for
    /// in-place writing; nothing is visible to the consumer until
    /// [`Grant::commit`]. May publish a skip marker (see module docs).
    pub fn reserve(&mut self, len: usize) -> Result<Grant<'_>, PushError> {
        let max = self.ring.max_payload();
        if len > max {
            return Err(PushError::TooLarge { len, max });
        }
        let framed = framed_len(len) as u64;
        let off = self.tail % self.ring.cap;
        let to_end = self.ring.cap - off;
        let off = if framed <= to_end {
            if !self.has_room(framed)? {
                return Err(PushError::Full);
            }
            off
        } else {
            // Does not fit before the end of the lap: skip to offset 0.
            if !self.has_room(to_end)? {
                return Err(PushError::Full);
            }
            self.ring.write_header(us(off), SKIP_LEN, SKIP_CRC);
            self.ring.tracker().wrote(us(off), RECORD_HEADER_LEN);
            self.tail += to_end;
            // Publish the marker at once: if the record does not fit yet, the
            // consumer must pass it for the whole capacity to become usable,
            // and an abandoned grant must not leave an unpublished marker.
            self.publish();
            if !self.has_room(framed)? {
                return Err(PushError::Full);
            }
            0
        };
        Ok(Grant {
            producer: self,
            off: us(off),
            len,
        })
    }

    /// Copies `data` into the ring as one record.
    pub fn try_push(&mut self, data: &[u8]) -> Result<(), PushError> {
        let mut grant = self.reserve(data.len())?;
        grant.copy_from_slice(data);
        grant.commit();
        Ok(())
    }

    /// Like [`Producer::try_push`], but waits for space (spinning briefly,
    /// then sleeping on a futex) up to `timeout` (`None`: forever). Returns
    /// [`PushError::Full`] if the deadline passes.
    pub fn push_blocking(
        &mut self,
        data: &[u8],
        timeout: Option<Duration>,
    ) -> Result<(), PushError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.try_push(data) {
                Err(PushError::Full) => {}
                other => return other,
            }
            // After a Full, the next attempt starts at a lap start or needs
            // `framed` bytes where it is; wait for that much space.
            let need = framed_len(data.len()) as u64;
            let tail = self.tail;
            let cap = self.ring.cap;
            let line = &self.ring.hdr().head.0;
            let ready = || {
                // SYNC: Relaxed: only a wake-up hint; has_room re-loads head
                // with Acquire before anything is overwritten.
                let head = line.index.load(Ordering::Relaxed);
                cap.saturating_sub(tail.saturating_sub(head)) >= need
            };
            if !wait_on(line, deadline, ready) {
                clear_flag_on_timeout(line);
                return Err(PushError::Full);
            }
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        unclaim(&self.ring.hdr().meta.0.producer_pid, self.pid);
    }
}

/// Space for one record, written in place; [`Grant::commit`] publishes it.
/// Dropping a grant without committing publishes nothing.
pub struct Grant<'a> {
    producer: &'a mut Producer,
    off: usize,
    len: usize,
}

impl fmt::Debug for Grant<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("offset", &self.off)
            .field("len", &self.len)
            .finish()
    }
}

impl Deref for Grant<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: off + 8 + len ≤ cap (checked in reserve: framed ≤ to_end);
        // the bytes are beyond the published tail, so nobody else touches them
        // while the grant (which borrows the unique producer) lives.
        unsafe {
            std::slice::from_raw_parts(
                self.producer.ring.at(self.off + RECORD_HEADER_LEN),
                self.len,
            )
        }
    }
}

impl DerefMut for Grant<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref; `&mut self` makes the slice unique.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.producer.ring.at(self.off + RECORD_HEADER_LEN),
                self.len,
            )
        }
    }
}

impl Grant<'_> {
    /// Frames the record (length + CRC32 of the payload) and publishes it.
    pub fn commit(self) {
        let crc = crc32fast::hash(&self);
        // len ≤ max_payload < 2^31, so it fits in u32 and differs from SKIP_LEN.
        let len32 = u32::try_from(self.len).unwrap_or(SKIP_LEN - 1);
        let p = self.producer;
        p.ring.write_header(self.off, len32, crc);
        let framed = framed_len(self.len);
        p.ring.tracker().wrote(self.off, framed);
        p.tail += framed as u64;
        p.publish();
    }
}

/// The single consumer of a ring. Released on drop.
pub struct Consumer {
    ring: Ring,
    head: u64,
    cached_tail: u64,
    pid: u32,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("head", &self.head)
            .field("cached_tail", &self.cached_tail)
            .field("capacity", &self.ring.cap)
            .finish()
    }
}

/// A validated record found at the head: where it is and where the next starts.
#[derive(Debug, Clone, Copy)]
struct Slot {
    off: usize,
    len: usize,
    next_head: u64,
}

impl Consumer {
    /// The ring this consumer reads.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Stores the new head and wakes a producer waiting for space.
    fn advance(&mut self, next_head: u64) {
        self.head = next_head;
        let line = &self.ring.hdr().head.0;
        // SYNC: SeqCst swap: Release for our reads of the consumed bytes
        // (the producer loads head with Acquire before overwriting them), and
        // the SeqCst write of the Dekker handshake with a producer waiting
        // for space (see `wake_waiter`).
        line.index.swap(next_head, Ordering::SeqCst);
        wake_waiter(line);
    }

    /// Finds the next record, consuming skip markers; validates everything.
    fn peek(&mut self) -> Result<Option<Slot>, PopError> {
        let cap = self.ring.cap;
        loop {
            if self.head == self.cached_tail {
                // SYNC: Acquire pairs with the producer's Release store of
                // tail: the record bytes below it are visible.
                let tail = self.ring.hdr().tail.0.index.load(Ordering::Acquire);
                if tail < self.head || tail - self.head > cap || !tail.is_multiple_of(8) {
                    return Err(PopError::Corrupt {
                        offset: self.head,
                        reason: CorruptReason::IndexOutOfRange {
                            head: self.head,
                            tail,
                        },
                    });
                }
                self.cached_tail = tail;
                if tail == self.head {
                    return Ok(None);
                }
            }
            let avail = self.cached_tail - self.head;
            let off = self.head % cap;
            let to_end = cap - off;
            // head is a multiple of 8 (checked at claim, kept by framing) and
            // avail ≥ 8 (tail is a multiple of 8 too), so the header is inside.
            self.ring.tracker().read(us(off), RECORD_HEADER_LEN);
            let len = self.ring.read_word(us(off));
            let crc = self.ring.read_word(us(off) + 4);
            if len == SKIP_LEN {
                if crc != SKIP_CRC {
                    return Err(PopError::Corrupt {
                        offset: self.head,
                        reason: CorruptReason::BadSkipMarker { crc },
                    });
                }
                if to_end > avail {
                    return Err(PopError::Corrupt {
                        offset: self.head,
                        reason: CorruptReason::LengthOutOfBounds {
                            len,
                            available: avail,
                        },
                    });
                }
                self.advance(self.head + to_end);
                continue;
            }
            let framed = framed_len(len as usize) as u64;
            if framed > to_end.min(avail) {
                return Err(PopError::Corrupt {
                    offset: self.head,
                    reason: CorruptReason::LengthOutOfBounds {
                        len,
                        available: to_end.min(avail),
                    },
                });
            }
            let start = us(off) + RECORD_HEADER_LEN;
            self.ring.tracker().read(us(off), us(framed));
            // SAFETY: start + len ≤ off + framed ≤ cap (checked above); the
            // bytes are below the Acquire-loaded tail and above head, so the
            // producer will not touch them until we advance head.
            let payload = unsafe { std::slice::from_raw_parts(self.ring.at(start), len as usize) };
            let computed = crc32fast::hash(payload);
            if computed != crc {
                return Err(PopError::Corrupt {
                    offset: self.head,
                    reason: CorruptReason::CrcMismatch {
                        stored: crc,
                        computed,
                    },
                });
            }
            return Ok(Some(Slot {
                off: start,
                len: len as usize,
                next_head: self.head + framed,
            }));
        }
    }

    fn record(&mut self, slot: Slot) -> RecordRef<'_> {
        RecordRef {
            consumer: self,
            off: slot.off,
            len: slot.len,
            next_head: slot.next_head,
        }
    }

    /// Borrows the next record in place. Head advances when the returned
    /// [`RecordRef`] is dropped (or released).
    pub fn try_pop(&mut self) -> Result<RecordRef<'_>, PopError> {
        match self.peek()? {
            Some(slot) => Ok(self.record(slot)),
            None => Err(PopError::Empty),
        }
    }

    /// Copies the next record into `out` (cleared first) and releases it.
    pub fn pop_into(&mut self, out: &mut Vec<u8>) -> Result<(), PopError> {
        let rec = self.try_pop()?;
        out.clear();
        out.extend_from_slice(&rec);
        Ok(())
    }

    /// Waits for a record up to `timeout` (`None`: forever): spins briefly,
    /// then sleeps on the futex (no CPU while idle). Returns
    /// [`PopError::Empty`] if the deadline passes.
    pub fn wait_pop(&mut self, timeout: Option<Duration>) -> Result<RecordRef<'_>, PopError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(slot) = self.peek()? {
                return Ok(self.record(slot));
            }
            let head = self.head;
            let line = &self.ring.hdr().tail.0;
            // SYNC: Relaxed: only a wake-up hint; peek re-loads tail with
            // Acquire before reading any record byte.
            let ready = || line.index.load(Ordering::Relaxed) != head;
            if !wait_on(line, deadline, ready) {
                clear_flag_on_timeout(line);
                return Err(PopError::Empty);
            }
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        unclaim(&self.ring.hdr().meta.0.consumer_pid, self.pid);
    }
}

/// A record borrowed in place from the ring. Derefs to the payload; the slot
/// is released (head advances) on drop or [`RecordRef::release`].
pub struct RecordRef<'a> {
    consumer: &'a mut Consumer,
    off: usize,
    len: usize,
    next_head: u64,
}

impl fmt::Debug for RecordRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordRef")
            .field("offset", &self.off)
            .field("len", &self.len)
            .finish()
    }
}

impl Deref for RecordRef<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: validated in peek (off + len ≤ cap, below the published
        // tail); the producer does not overwrite it before head advances,
        // which happens only when this RecordRef is dropped.
        unsafe { std::slice::from_raw_parts(self.consumer.ring.at(self.off), self.len) }
    }
}

impl RecordRef<'_> {
    /// Releases the record (same as dropping it).
    pub fn release(self) {}
}

impl Drop for RecordRef<'_> {
    fn drop(&mut self) {
        self.consumer.advance(self.next_head);
    }
}

/// A segment holding exactly one ring at payload offset 0.
#[derive(Debug)]
pub struct RingSegment {
    segment: Arc<Segment>,
    ring: Ring,
}

impl RingSegment {
    /// Layout identity of a ring segment.
    pub const LAYOUT: SegmentLayout = SegmentLayout::new("aether-ring-segment", &RING_LAYOUT_FACTS);

    /// Creates the segment file at `path` holding one ring of `capacity`.
    /// The file is removed when the last handle to it drops.
    pub fn create(path: &std::path::Path, capacity: usize) -> Result<Self, RingError> {
        if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return Err(RingError::Capacity {
                capacity: capacity as u64,
                min: MIN_CAPACITY,
                max: MAX_CAPACITY,
            });
        }
        let segment = Arc::new(Segment::create(
            path,
            &Self::LAYOUT,
            Ring::required_bytes(capacity),
        )?);
        let ring = Ring::init_in_segment(&segment, 0, capacity)?;
        Ok(Self { segment, ring })
    }

    /// Opens an existing ring segment.
    pub fn open(path: &std::path::Path) -> Result<Self, RingError> {
        let segment = Arc::new(Segment::open(path, &Self::LAYOUT)?);
        let ring = Ring::attach_in_segment(&segment, 0)?;
        Ok(Self { segment, ring })
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The segment.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// Takes the producer handle.
    pub fn producer(&self) -> Result<Producer, ClaimError> {
        self.ring.producer()
    }

    /// Takes the consumer handle.
    pub fn consumer(&self) -> Result<Consumer, ClaimError> {
        self.ring.consumer()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn framing_arithmetic() {
        assert_eq!(framed_len(0), 8);
        assert_eq!(framed_len(1), 16);
        assert_eq!(framed_len(8), 16);
        assert_eq!(framed_len(9), 24);
        assert_eq!(data_capacity(64), 64);
        assert_eq!(data_capacity(65), 72);
        assert_eq!(max_payload(65), 64);
        assert_eq!(max_payload(0), 0);
        assert_eq!(Ring::required_bytes(100), 384 + 104);
        assert_eq!(Ring::required_bytes(usize::MAX), usize::MAX);
        assert_eq!(SKIP_CRC.to_le_bytes(), *b"SKIP");
    }

    #[test]
    fn header_offsets_match_the_drawing() {
        assert_eq!(std::mem::offset_of!(RingHeader, meta), 0);
        assert_eq!(std::mem::offset_of!(RingHeader, tail), 128);
        assert_eq!(std::mem::offset_of!(RingHeader, head), 256);
        assert_eq!(std::mem::offset_of!(MetaLine, capacity), 8);
        assert_eq!(std::mem::offset_of!(MetaLine, producer_pid), 16);
        assert_eq!(std::mem::offset_of!(MetaLine, consumer_pid), 20);
        assert_eq!(std::mem::offset_of!(IndexLine, waiter), 8);
    }

    #[test]
    fn init_rejects_bad_regions() {
        let mut buf = vec![0u128; 64]; // 1024 bytes, 16-aligned
        let base = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap_or(NonNull::dangling());
        // SAFETY: the buffer is valid for 1024 bytes and outlives the calls.
        let odd = unsafe { NonNull::new_unchecked(base.as_ptr().wrapping_add(8)) };
        // SAFETY: as above; misalignment is detected before any access.
        let r = unsafe { Ring::init_in(odd, 512, 64) };
        assert!(matches!(r, Err(RingError::Misaligned { .. })));
    }
}
