//! Property test: the ring against a `VecDeque` model that knows the framing
//! (record = 8-byte header + payload padded to 8; a record that does not fit
//! before the end of the data area is preceded by a skip marker filling the
//! rest of the lap). Full, Empty and TooLarge must happen exactly when the
//! model says so, and every popped record must equal the model's.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)] // tests fail loudly by design

use std::collections::VecDeque;

use proptest::prelude::*;
use shm_abi::ring::{
    data_capacity, framed_len, PopError, PushError, RingSegment, MIN_CAPACITY, RECORD_HEADER_LEN,
};

/// What the model predicts for a push.
#[derive(Debug, PartialEq)]
enum Predicted {
    Ok,
    Full,
    TooLarge,
}

#[derive(Debug)]
struct Model {
    cap: u64,
    head: u64,
    tail: u64,
    /// (bytes occupied, payload or None for a skip marker)
    q: VecDeque<(u64, Option<Vec<u8>>)>,
}

impl Model {
    fn new(capacity: usize) -> Self {
        Self {
            cap: data_capacity(capacity) as u64,
            head: 0,
            tail: 0,
            q: VecDeque::new(),
        }
    }

    fn free(&self) -> u64 {
        self.cap - (self.tail - self.head)
    }

    fn push(&mut self, data: &[u8]) -> Predicted {
        if data.len() + RECORD_HEADER_LEN > self.cap as usize {
            return Predicted::TooLarge;
        }
        let framed = framed_len(data.len()) as u64;
        let to_end = self.cap - self.tail % self.cap;
        if framed > to_end {
            if self.free() < to_end {
                return Predicted::Full;
            }
            self.q.push_back((to_end, None));
            self.tail += to_end;
        }
        if self.free() < framed {
            return Predicted::Full;
        }
        self.q.push_back((framed, Some(data.to_vec())));
        self.tail += framed;
        Predicted::Ok
    }

    fn pop(&mut self) -> Option<Vec<u8>> {
        while let Some((n, None)) = self.q.front() {
            self.head += n;
            self.q.pop_front();
        }
        let (n, data) = self.q.pop_front()?;
        self.head += n;
        data
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Push with try_push, size = seed % (capacity + 9).
    Push(u32),
    /// Push a small record (size = seed % 24).
    PushSmall(u32),
    /// Push through reserve/commit.
    Reserve(u32),
    /// Reserve then drop the grant without committing.
    Abandon(u32),
    /// try_pop (borrowed in place).
    Pop,
    /// pop_into a Vec.
    PopInto,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<u32>().prop_map(Op::Push),
        4 => any::<u32>().prop_map(Op::PushSmall),
        2 => any::<u32>().prop_map(Op::Reserve),
        1 => any::<u32>().prop_map(Op::Abandon),
        4 => Just(Op::Pop),
        2 => Just(Op::PopInto),
    ]
}

fn payload(len: usize, tag: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ tag) as u8).collect()
}

fn to_predicted(r: Result<(), PushError>) -> Predicted {
    match r {
        Ok(()) => Predicted::Ok,
        Err(PushError::Full) => Predicted::Full,
        Err(PushError::TooLarge { .. }) => Predicted::TooLarge,
        Err(e) => panic!("unexpected push error {e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn ring_matches_vecdeque_model(
        capacity in MIN_CAPACITY..700usize,
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let rs = RingSegment::create(&dir.path().join("ring"), capacity).unwrap();
        let mut p = rs.producer().unwrap();
        let mut c = rs.consumer().unwrap();
        let mut model = Model::new(capacity);
        prop_assert_eq!(rs.ring().capacity() as u64, model.cap);
        let mut out = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Push(seed) | Op::PushSmall(seed) | Op::Reserve(seed) => {
                    let len = match op {
                        Op::PushSmall(_) => seed as usize % 24,
                        _ => seed as usize % (capacity + 9),
                    };
                    let data = payload(len, i);
                    let got = if matches!(op, Op::Reserve(_)) {
                        p.reserve(len).map(|mut g| {
                            g.copy_from_slice(&data);
                            g.commit();
                        })
                    } else {
                        p.try_push(&data)
                    };
                    let want = model.push(&data);
                    prop_assert_eq!(to_predicted(got), want, "push of {} bytes, op {}", len, i);
                }
                Op::Abandon(seed) => {
                    let len = seed as usize % (capacity + 9);
                    let got = to_predicted(p.reserve(len).map(drop));
                    // An abandoned grant is a push whose record vanishes: the
                    // skip marker (if any) stays, the record does not.
                    let mut shadow = Model { cap: model.cap, head: model.head, tail: model.tail, q: model.q.clone() };
                    let want = shadow.push(&payload(len, i));
                    if want == Predicted::Ok {
                        shadow.q.pop_back();
                        shadow.tail -= framed_len(len) as u64;
                    }
                    model = shadow;
                    prop_assert_eq!(got, want, "abandoned reserve of {} bytes, op {}", len, i);
                }
                Op::Pop => {
                    let want = model.pop();
                    match c.try_pop() {
                        Ok(rec) => prop_assert_eq!(Some(rec.to_vec()), want, "op {}", i),
                        Err(PopError::Empty) => prop_assert_eq!(None, want, "op {}", i),
                        Err(e) => prop_assert!(false, "pop error {}", e),
                    }
                }
                Op::PopInto => {
                    let want = model.pop();
                    match c.pop_into(&mut out) {
                        Ok(()) => prop_assert_eq!(Some(out.clone()), want, "op {}", i),
                        Err(PopError::Empty) => prop_assert_eq!(None, want, "op {}", i),
                        Err(e) => prop_assert!(false, "pop error {}", e),
                    }
                }
            }
            prop_assert_eq!(rs.ring().used_bytes(), model.tail - model.head, "op {}", i);
        }
        // Drain: everything the model holds comes out, in order.
        while let Some(want) = model.pop() {
            let rec = c.try_pop().unwrap();
            prop_assert_eq!(&*rec, &want[..]);
        }
        prop_assert_eq!(c.try_pop().unwrap_err(), PopError::Empty);
    }
}
