//! Property tests: whatever bytes another process leaves in shared memory,
//! the ring answers with a typed result and never panics or reads out of
//! bounds; a single flipped bit in a record is never delivered as a
//! different payload.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)] // tests fail loudly by design

use proptest::prelude::*;
use shm_abi::ring::{framed_len, PopError, PushError, RingSegment, RING_HEADER_LEN};

fn poke<T: Copy>(rs: &RingSegment, off: usize, v: T) {
    let p = rs
        .ring()
        .header_ptr_for_tests()
        .wrapping_add(off)
        .cast::<T>();
    // SAFETY: callers stay inside the ring header (384 bytes) or data area.
    unsafe { p.write_unaligned(v) }
}

/// Head and tail: mostly plausible (aligned, tail within a capacity of head),
/// sometimes anything.
fn indices(cap: u64) -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        3 => (0u64..1 << 40, 0..=cap / 8).prop_map(|(h, n)| (h & !7, (h & !7) + n * 8)),
        1 => (any::<u64>(), any::<u64>()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn garbage_gives_typed_results(
        capacity in 64usize..400,
        (head, tail) in indices(400),
        data in proptest::collection::vec(any::<u8>(), 400),
        flags in (any::<u32>(), any::<u32>()),
        pushes in proptest::collection::vec(0usize..450, 0..8),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let rs = RingSegment::create(&dir.path().join("ring"), capacity).unwrap();
        let cap = rs.ring().capacity();
        poke(&rs, 128, tail);
        poke(&rs, 136, flags.0);
        poke(&rs, 256, head);
        poke(&rs, 264, flags.1);
        for (i, b) in data.iter().take(cap).enumerate() {
            poke(&rs, RING_HEADER_LEN + i, *b);
        }
        if let Ok(mut c) = rs.consumer() {
            for _ in 0..64 {
                // Touch every delivered byte (all inside the data area).
                let got = c
                    .try_pop()
                    .map(|rec| (rec.len(), rec.iter().map(|&b| u32::from(b)).sum::<u32>()));
                match got {
                    Ok((len, _sum)) => prop_assert!(len + 8 <= cap),
                    Err(PopError::Empty) => break,
                    Err(PopError::Corrupt { .. }) => {
                        // Poisoned: stays corrupt, never panics.
                        let again = matches!(c.try_pop(), Err(PopError::Corrupt { .. }));
                        prop_assert!(again, "a corrupt ring must stay corrupt");
                        break;
                    }
                }
            }
        }
        if let Ok(mut p) = rs.producer() {
            for len in pushes {
                match p.try_push(&vec![0xA5; len]) {
                    Ok(()) | Err(PushError::Full | PushError::Corrupt { .. }) => {}
                    Err(PushError::TooLarge { max, .. }) => prop_assert!(len > max),
                }
            }
        }
    }

    #[test]
    fn a_flipped_bit_is_never_a_different_payload(
        capacity in 64usize..400,
        lens in proptest::collection::vec(0usize..40, 1..12),
        bit in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let rs = RingSegment::create(&dir.path().join("ring"), capacity).unwrap();
        let mut p = rs.producer().unwrap();
        let mut sent = Vec::new();
        for (i, len) in lens.into_iter().enumerate() {
            let rec: Vec<u8> = (0..len).map(|j| (i * 7 + j) as u8).collect();
            if p.try_push(&rec).is_err() {
                break;
            }
            sent.push(rec);
        }
        let used: usize = sent.iter().map(|r| framed_len(r.len())).sum();
        let bit = bit.index(used * 8);
        let off = RING_HEADER_LEN + bit / 8;
        let ptr = rs.ring().header_ptr_for_tests().wrapping_add(off);
        // SAFETY: inside the used part of the data area.
        unsafe { *ptr ^= 1 << (bit % 8) };
        let mut c = rs.consumer().unwrap();
        for want in &sent {
            match c.try_pop() {
                Ok(rec) => prop_assert_eq!(&*rec, &want[..]),
                Err(PopError::Corrupt { .. }) => return Ok(()),
                Err(PopError::Empty) => prop_assert!(false, "record lost without an error"),
            }
        }
    }
}
