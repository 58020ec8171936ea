//! The shared-memory ABI of Aetherless: segments, SPSC rings, and the control
//! channel `aetherctl` and `aetherd` talk through (plus, in [`message`], the
//! rkyv control messages carried over it).
//!
//! This crate depends on no other crate of ours and never on glommio: every
//! process that maps a segment (the daemon, the CLI, handler shims) can use it.
//!
//! # Layers
//!
//! * [`segment`]: a named file under `/dev/shm`, mode 0600, mapped shared,
//!   starting with a header (magic, ABI version, layout hash, creator pid,
//!   length). Opening one of another version or layout is a typed error
//!   ([`segment::SegmentError`]), never undefined behaviour.
//! * [`ring`]: a single-producer single-consumer ring of variable-length,
//!   CRC32-framed records placed at an offset in a segment. The producer and
//!   consumer handles are each claimed once (by pid, taken over from dead
//!   processes), reads are zero-copy, and waits spin briefly then sleep on a
//!   process-shared futex.
//! * [`channel`]: two rings in one segment (requests, replies); clients
//!   serialize on an `flock` of the segment file.
//!
//! # Memory layout
//!
//! ```text
//!  segment file (/dev/shm/...)
//!  ┌────────────────────┬───────────────────────────────────────────────────┐
//!  │ segment header 128 │ payload                                           │
//!  │ magic "AETHSHM\0"  │ ┌─ ring ───────────────────────────────────────┐  │
//!  │ abi_version u32    │ │ line 0: magic "RING", version, capacity,    │  │
//!  │ header_len  u32    │ │         producer_pid, consumer_pid           │  │
//!  │ layout_hash u64    │ │ line 1: tail u64, consumer_sleeping u32      │  │
//!  │ total_len   u64    │ │ line 2: head u64, producer_sleeping u32      │  │
//!  │ creator_pid u32    │ │ data:   [len u32|crc32 u32|payload|pad→8]... │  │
//!  │                    │ └──────────────────────────────────────────────┘  │
//!  │                    │ (the control channel puts a second ring after it) │
//!  └────────────────────┴───────────────────────────────────────────────────┘
//!  lines are 128 bytes; head and tail are monotone byte positions (u64),
//!  data offset = index % capacity; a record never straddles the end (a skip
//!  marker len = 0xFFFF_FFFF fills the rest of the lap).
//! ```
//!
//! Shared memory holds offsets and pids, never pointers. Types that may live
//! there implement the `unsafe` marker trait [`segment::ShmSafe`], and their
//! sizes are pinned with `const` assertions.
//!
//! # Ordering argument (summary; details in [`ring`])
//!
//! * The producer writes a record, then stores `tail` with Release; the
//!   consumer loads `tail` with Acquire before reading it. The consumer reads,
//!   then stores `head` with Release; the producer loads `head` with Acquire
//!   before reusing the bytes. Each side reads the other's index only when
//!   its cached copy says full/empty.
//! * Sleeping is a Dekker handshake: the waiter stores its sleeping flag,
//!   SeqCst fence, re-checks the index, then `FUTEX_WAIT`s on the flag word
//!   while it is 1; the peer publishes the index with a SeqCst swap, loads the
//!   flag with SeqCst, and only if set clears it and `FUTEX_WAKE`s. One of the
//!   two always sees the other's store, so no wake-up is lost, and the busy
//!   path makes no syscall and no `mfence`.
//! * Everything read from shared memory is bounds-checked; damage is
//!   [`ring::PopError::Corrupt`] with the offset and the reason.
//!
//! # Tests
//!
//! ```text
//! cargo test -p shm-abi                       # unit, model (proptest), two-process, channel
//! cargo test -p shm-abi --release --test two_process   # 1M records each way, ~4 s
//! RUSTFLAGS="--cfg loom" cargo test -p shm-abi --test loom --release
//! ```
//!
//! The loom run explores every interleaving (preemption bound 3, override
//! with `LOOM_MAX_PREEMPTIONS`) of a producer and a consumer through a 64-byte
//! ring with wraparound, blocking waits and racing claims; it takes about 40 s
//! here. Under `--cfg loom` the `sync` shim swaps in loom's atomics, a
//! mutex/condvar model of the futex, and per-word access tracking of the data
//! area, so a missing Release/Acquire or a lost wake-up fails the run (both
//! were checked by deliberately breaking the code). Use a separate target dir
//! (`CARGO_TARGET_DIR=target/loom`) to avoid rebuilding the normal build.

pub mod channel;
pub mod ring;
pub mod segment;
mod sync;

/// Whether `pid` names a live process: `kill(pid, 0)` succeeds or fails with
/// anything but `ESRCH` (EPERM means alive but not ours). Pids that do not
/// fit a `pid_t` cannot exist and count as dead.
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if p <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks existence and
    // permission.
    let rc = unsafe { libc::kill(p, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}
pub mod message;

#[cfg(test)]
mod tests {
    #[test]
    fn process_alive_distinguishes_live_dead_and_impossible_pids() {
        assert!(crate::process_alive(std::process::id()));
        assert!(crate::process_alive(1));
        assert!(!crate::process_alive(0));
        assert!(!crate::process_alive(u32::MAX));
        let mut child = std::process::Command::new("true")
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let pid = child.id();
        child.wait().unwrap_or_else(|e| panic!("{e}"));
        assert!(!crate::process_alive(pid));
    }
}
