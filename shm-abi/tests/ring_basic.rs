//! Behaviour of one ring in one process: push/pop, framing, wraparound,
//! zero-copy paths, claims, corruption and header mismatches.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)] // tests fail loudly by design

use std::time::Duration;

use shm_abi::ring::{framed_len, ClaimError, PopError, PushError, RingSegment, MIN_CAPACITY};

fn seg(cap: usize) -> (tempfile::TempDir, RingSegment) {
    let dir = tempfile::tempdir().unwrap();
    let rs = RingSegment::create(&dir.path().join("ring"), cap).unwrap();
    (dir, rs)
}

#[test]
fn push_pop_roundtrip_and_empty() {
    let (_d, rs) = seg(1024);
    let mut p = rs.producer().unwrap();
    let mut c = rs.consumer().unwrap();
    assert_eq!(c.try_pop().unwrap_err(), PopError::Empty);
    p.try_push(b"hello").unwrap();
    p.try_push(b"").unwrap();
    p.try_push(&[7u8; 100]).unwrap();
    assert_eq!(&*c.try_pop().unwrap(), b"hello");
    assert_eq!(&*c.try_pop().unwrap(), b"");
    let mut v = Vec::new();
    c.pop_into(&mut v).unwrap();
    assert_eq!(v, vec![7u8; 100]);
    assert_eq!(c.try_pop().unwrap_err(), PopError::Empty);
    assert_eq!(
        c.wait_pop(Some(Duration::from_millis(5))).unwrap_err(),
        PopError::Empty
    );
}

#[test]
fn zero_copy_reserve_commit_and_record_ref_release() {
    let (_d, rs) = seg(256);
    let mut p = rs.producer().unwrap();
    let mut c = rs.consumer().unwrap();
    let mut g = p.reserve(12).unwrap();
    assert_eq!(g.len(), 12);
    g.copy_from_slice(b"in-place-rec");
    g.commit();
    // Not committed: invisible, and the space is reusable.
    p.reserve(40).unwrap();
    assert_eq!(rs.ring().used_bytes(), framed_len(12) as u64);
    let rec = c.try_pop().unwrap();
    assert_eq!(&*rec, b"in-place-rec");
    // While borrowed, the slot is still in use; release frees it.
    rec.release();
    assert_eq!(rs.ring().used_bytes(), 0);
    assert_eq!(c.try_pop().unwrap_err(), PopError::Empty);
}

#[test]
fn full_too_large_and_wraparound_never_split() {
    let cap = 100; // not a multiple of 8: rounded to 104
    let (_d, rs) = seg(cap);
    assert_eq!(rs.ring().capacity(), 104);
    assert_eq!(rs.ring().max_payload(), 96);
    let mut p = rs.producer().unwrap();
    let mut c = rs.consumer().unwrap();
    assert_eq!(
        p.try_push(&[0; 97]).unwrap_err(),
        PushError::TooLarge { len: 97, max: 96 }
    );
    // A record of the whole capacity fits in an empty ring.
    p.try_push(&[1; 96]).unwrap();
    assert_eq!(p.try_push(b"").unwrap_err(), PushError::Full);
    assert_eq!(&*c.try_pop().unwrap(), &[1u8; 96][..]);
    // Now at offset 0 again (104 % 104). Put head/tail at offset 72.
    for i in 0..3u8 {
        p.try_push(&[i; 16]).unwrap(); // 24 bytes each
        c.try_pop().unwrap().release();
    }
    // 32 bytes left before the end; a 48-byte record needs a skip marker.
    p.try_push(&[9; 40]).unwrap(); // skip 32, then 48 at offset 0
    assert_eq!(rs.ring().used_bytes(), 32 + 48);
    let rec = c.try_pop().unwrap();
    assert_eq!(&*rec, &[9u8; 40][..]);
    // Borrowed in place at data offset 8 (after its header): not split.
    assert_eq!(
        rec.as_ptr(),
        rs.ring().data_ptr_for_tests().wrapping_add(8).cast_const()
    );
    drop(rec);
    // A record that needs the whole capacity while head is mid-lap: the
    // skip marker is published, the push reports Full, and once the
    // consumer passes the marker the record fits.
    p.try_push(&[3; 8]).unwrap();
    c.try_pop().unwrap().release();
    assert_eq!(p.try_push(&[4; 96]).unwrap_err(), PushError::Full);
    assert_eq!(c.try_pop().unwrap_err(), PopError::Empty); // passes the marker
    p.try_push(&[4; 96]).unwrap();
    assert_eq!(&*c.try_pop().unwrap(), &[4u8; 96][..]);
}

#[test]
fn capacity_edges() {
    let dir = tempfile::tempdir().unwrap();
    assert!(RingSegment::create(&dir.path().join("small"), MIN_CAPACITY - 1).is_err());
    for cap in [MIN_CAPACITY, 65, 71, 72, 1000, 4097] {
        let rs = RingSegment::create(&dir.path().join(format!("r{cap}")), cap).unwrap();
        assert_eq!(rs.ring().capacity(), cap.next_multiple_of(8));
        let mut p = rs.producer().unwrap();
        let mut c = rs.consumer().unwrap();
        let max = rs.ring().max_payload();
        // Many laps of max-size and tiny records, never stuck, never split.
        for round in 0..50usize {
            let len = if round % 3 == 0 { max } else { round % 13 };
            let data: Vec<u8> = (0..len).map(|i| (i + round) as u8).collect();
            if let Err(e) = p.try_push(&data) {
                // Only a whole-capacity record may need the ring to be empty
                // *and* at a lap start: the push published a skip marker,
                // popping passes it, and the retry must succeed.
                assert_eq!((e, len), (PushError::Full, max));
                assert_eq!(c.try_pop().unwrap_err(), PopError::Empty);
                p.try_push(&data).unwrap();
            }
            assert_eq!(&*c.try_pop().unwrap(), &data[..]);
        }
    }
}

#[test]
fn handles_are_claimed_once() {
    let (_d, rs) = seg(256);
    let me = std::process::id();
    let p = rs.producer().unwrap();
    assert_eq!(
        rs.producer().unwrap_err(),
        ClaimError::AlreadyClaimed {
            role: "producer",
            pid: me
        }
    );
    assert_eq!(rs.ring().producer_pid(), Some(me));
    let c = rs.consumer().unwrap();
    assert_eq!(
        rs.consumer().unwrap_err(),
        ClaimError::AlreadyClaimed {
            role: "consumer",
            pid: me
        }
    );
    // Another process opening the same segment would see the same claims:
    // a second open in this process shares the pid slots.
    let again = RingSegment::open(rs.segment().path()).unwrap();
    assert!(again.producer().is_err());
    drop(p);
    drop(c);
    assert_eq!(rs.ring().producer_pid(), None);
    let _p2 = again.producer().unwrap();
    let _c2 = again.consumer().unwrap();
}

/// Pid of a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Writes a u32/u64 at byte `off` of the ring header.
fn poke_header<T: Copy>(rs: &RingSegment, off: usize, v: T) {
    let p = rs
        .ring()
        .header_ptr_for_tests()
        .wrapping_add(off)
        .cast::<T>();
    // SAFETY: the offset is inside the 384-byte ring header, which is mapped.
    unsafe { p.write_unaligned(v) }
}

#[test]
fn dead_holder_is_reclaimed() {
    let (_d, rs) = seg(256);
    let dead = dead_pid();
    poke_header(&rs, 16, dead); // producer_pid
    poke_header(&rs, 20, dead); // consumer_pid
    assert_eq!(rs.ring().producer_pid(), Some(dead));
    let mut p = rs.producer().unwrap();
    let mut c = rs.consumer().unwrap();
    assert_eq!(rs.ring().producer_pid(), Some(std::process::id()));
    p.try_push(b"after takeover").unwrap();
    assert_eq!(&*c.try_pop().unwrap(), b"after takeover");
    // A live holder (pid 1) is not taken over.
    drop(p);
    poke_header(&rs, 16, 1u32);
    assert_eq!(
        rs.producer().unwrap_err(),
        ClaimError::AlreadyClaimed {
            role: "producer",
            pid: 1
        }
    );
}

/// Pushes one record of `payload` and returns (segment, consumer) with the
/// record's header at data offset 0.
fn one_record(payload: &[u8]) -> (tempfile::TempDir, RingSegment) {
    let (d, rs) = seg(256);
    rs.producer().unwrap().try_push(payload).unwrap();
    (d, rs)
}

fn flip(rs: &RingSegment, data_off: usize, mask: u8) {
    let p = rs.ring().data_ptr_for_tests().wrapping_add(data_off);
    // SAFETY: the offset is inside the 256-byte data area, which is mapped.
    unsafe { *p ^= mask };
}

#[test]
fn corrupted_bytes_are_typed_errors() {
    use shm_abi::ring::CorruptReason;
    // Payload byte flipped: CRC mismatch.
    let (_d, rs) = one_record(b"payload bytes");
    flip(&rs, 8 + 3, 0x40);
    let mut c = rs.consumer().unwrap();
    match c.try_pop().unwrap_err() {
        PopError::Corrupt {
            offset: 0,
            reason: CorruptReason::CrcMismatch { .. },
        } => {}
        e => panic!("{e:?}"),
    }
    // The consumer stays on the bad record (poisoned), never panics.
    assert!(matches!(c.try_pop(), Err(PopError::Corrupt { .. })));
    assert!(matches!(
        c.wait_pop(Some(Duration::from_millis(1))),
        Err(PopError::Corrupt { .. })
    ));

    // CRC field flipped.
    let (_d, rs) = one_record(b"payload bytes");
    flip(&rs, 4, 0x01);
    assert!(matches!(
        rs.consumer().unwrap().try_pop(),
        Err(PopError::Corrupt {
            reason: CorruptReason::CrcMismatch { .. },
            ..
        })
    ));

    // Length flipped high: beyond the published bytes.
    let (_d, rs) = one_record(b"payload bytes");
    flip(&rs, 3, 0x10);
    assert!(matches!(
        rs.consumer().unwrap().try_pop(),
        Err(PopError::Corrupt {
            reason: CorruptReason::LengthOutOfBounds { .. },
            ..
        })
    ));

    // Length flipped low: shorter payload, the CRC no longer matches.
    let (_d, rs) = one_record(b"payload bytes");
    flip(&rs, 0, 0x01);
    assert!(matches!(
        rs.consumer().unwrap().try_pop(),
        Err(PopError::Corrupt {
            reason: CorruptReason::CrcMismatch { .. },
            ..
        })
    ));

    // Skip marker (len 0xFFFF_FFFF) with a wrong CRC field.
    let (_d, rs) = one_record(b"payload bytes");
    // SAFETY: data offset 0..4 is inside the data area.
    unsafe {
        rs.ring()
            .data_ptr_for_tests()
            .cast::<u32>()
            .write_unaligned(u32::MAX)
    };
    assert!(matches!(
        rs.consumer().unwrap().try_pop(),
        Err(PopError::Corrupt {
            reason: CorruptReason::BadSkipMarker { .. },
            ..
        })
    ));

    // Tail more than a capacity ahead of head.
    let (_d, rs) = one_record(b"x");
    poke_header(&rs, 128, 1024u64);
    assert!(matches!(
        rs.consumer().unwrap_err(),
        ClaimError::Corrupt { tail: 1024, .. }
    ));
    let (_d, rs) = one_record(b"x");
    let mut c = rs.consumer().unwrap();
    c.try_pop().unwrap().release();
    poke_header(&rs, 128, 4096u64);
    assert!(matches!(
        c.try_pop(),
        Err(PopError::Corrupt {
            reason: CorruptReason::IndexOutOfRange { tail: 4096, .. },
            ..
        })
    ));

    // Head moved behind the producer's back: push reports Corrupt.
    let (_d, rs) = seg(64);
    let mut p = rs.producer().unwrap();
    p.try_push(&[0; 48]).unwrap();
    poke_header(&rs, 256, 4000u64);
    assert!(matches!(
        p.try_push(&[0; 40]),
        Err(PushError::Corrupt { head: 4000, .. })
    ));
}

#[test]
fn segment_header_mismatches_are_typed_errors() {
    use shm_abi::segment::{Segment, SegmentError, SegmentLayout, ABI_VERSION};
    use std::os::unix::fs::{FileExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg");
    let layout = SegmentLayout::new("test-layout", &[1, 2, 3]);
    let seg = Segment::create(&path, &layout, 4096).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(seg.creator_pid(), std::process::id());
    assert_eq!(seg.payload_len(), 4096);
    // O_EXCL: a second create fails, naming the path.
    let err = Segment::create(&path, &layout, 4096).unwrap_err();
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");

    Segment::open(&path, &layout).unwrap();
    let other = SegmentLayout::new("test-layout", &[1, 2, 4]);
    match Segment::open(&path, &other).unwrap_err() {
        SegmentError::LayoutMismatch {
            found, expected, ..
        } => {
            assert_eq!((found, expected), (layout.hash, other.hash));
        }
        e => panic!("{e:?}"),
    }
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&(ABI_VERSION + 1).to_le_bytes(), 8).unwrap();
    match Segment::open(&path, &layout).unwrap_err() {
        SegmentError::VersionMismatch {
            found, expected, ..
        } => {
            assert_eq!((found, expected), (ABI_VERSION + 1, ABI_VERSION));
        }
        e => panic!("{e:?}"),
    }
    f.write_all_at(b"NOTASEG!", 0).unwrap();
    assert!(matches!(
        Segment::open(&path, &layout),
        Err(SegmentError::BadMagic { found, .. }) if &found == b"NOTASEG!"
    ));
    // Truncated below the header / below its recorded length.
    f.set_len(64).unwrap();
    assert!(matches!(
        Segment::open(&path, &layout),
        Err(SegmentError::TooSmall { len: 64, .. })
    ));
    let missing = dir.path().join("missing");
    match Segment::open(&missing, &layout).unwrap_err() {
        e @ SegmentError::Io { .. } => assert!(e.to_string().contains("missing")),
        e => panic!("{e:?}"),
    }
    // The creator's handle removes the file on drop.
    drop(seg);
    assert!(!path.exists());
}

#[test]
fn ring_segment_of_another_layout_is_refused() {
    use shm_abi::segment::{Segment, SegmentError, SegmentLayout};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg");
    let _seg = Segment::create(&path, &SegmentLayout::new("other", &[]), 4096).unwrap();
    assert!(matches!(
        RingSegment::open(&path),
        Err(shm_abi::ring::RingError::Segment(
            SegmentError::LayoutMismatch { .. }
        ))
    ));
}

#[test]
fn blocking_wait_wakes_across_threads() {
    let (_d, rs) = seg(128);
    let mut p = rs.producer().unwrap();
    let mut c = rs.consumer().unwrap();
    let t = std::thread::spawn(move || {
        let mut got = Vec::new();
        for _ in 0..2000u32 {
            let rec = c.wait_pop(Some(Duration::from_secs(10))).unwrap();
            got.push(u32::from_le_bytes(rec[..4].try_into().unwrap()));
        }
        got
    });
    for i in 0..2000u32 {
        if i % 500 == 0 {
            // Let the consumer fall asleep on the futex now and then.
            std::thread::sleep(Duration::from_millis(20));
        }
        p.push_blocking(&i.to_le_bytes(), Some(Duration::from_secs(10)))
            .unwrap();
    }
    assert_eq!(t.join().unwrap(), (0..2000).collect::<Vec<_>>());
    // A timed-out push on a full ring reports Full.
    while p.try_push(&[0; 40]).is_ok() {}
    assert_eq!(
        p.push_blocking(&[0; 40], Some(Duration::from_millis(5))),
        Err(PushError::Full)
    );
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap(),
        u32::try_from(ts.tv_nsec).unwrap(),
    )
}

#[test]
fn idle_consumer_costs_no_cpu() {
    let (_d, rs) = seg(256);
    let mut c = rs.consumer().unwrap();
    let mut p = rs.producer().unwrap();
    let t = std::thread::spawn(move || {
        let before = thread_cpu_time();
        let started = std::time::Instant::now();
        assert_eq!(
            c.wait_pop(Some(Duration::from_millis(300))).unwrap_err(),
            PopError::Empty
        );
        let waited = started.elapsed();
        let cpu = thread_cpu_time() - before;
        // Then a record pushed while it sleeps wakes it promptly.
        let started = std::time::Instant::now();
        let rec = c.wait_pop(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(&*rec, b"wake");
        (waited, cpu, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    p.try_push(b"wake").unwrap();
    let (waited, cpu, woke_after) = t.join().unwrap();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    // Spinning the whole time would cost ~300 ms of CPU.
    assert!(
        cpu < Duration::from_millis(30),
        "idle wait used {cpu:?} CPU"
    );
    assert!(woke_after < Duration::from_secs(5), "{woke_after:?}");
}

#[test]
fn segment_refuses_foreign_or_open_files_and_checks_accessors() {
    use shm_abi::segment::{Segment, SegmentError, SegmentLayout};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::AtomicU64;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg");
    let layout = SegmentLayout::new("acc", &[]);
    let seg = Segment::create(&path, &layout, 256).unwrap();
    // Typed accessor: aligned and in bounds only.
    let a: &AtomicU64 = seg.get(8).unwrap();
    a.store(7, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(seg.get::<u64>(8).unwrap(), &7);
    assert!(matches!(
        seg.get::<u64>(4),
        Err(SegmentError::OutOfBounds { .. })
    ));
    assert!(matches!(
        seg.get::<u64>(252),
        Err(SegmentError::OutOfBounds { .. })
    ));
    assert!(matches!(
        seg.get::<u8>(usize::MAX),
        Err(SegmentError::OutOfBounds { .. })
    ));
    // Group/other permissions: refused.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        Segment::open(&path, &layout),
        Err(SegmentError::NotPrivate { mode: 0o644, .. })
    ));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Symlinks are not followed.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(matches!(
        Segment::open(&link, &layout),
        Err(SegmentError::Io { .. })
    ));
    Segment::open(&path, &layout).unwrap();
}
