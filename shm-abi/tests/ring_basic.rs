//! Behaviour of one ring in one process: push/pop, framing, wraparound,
//! zero-copy paths, claims, corruption and header mismatches.

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
