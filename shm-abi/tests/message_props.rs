//! Property tests of the control messages: every variant round-trips, and
//! hostile bytes (random, truncated, bit-flipped, unaligned, empty) give a
//! typed result and never a panic.
//!
//! Validation proves bytes form *a* well-formed message, not the one that was
//! sent (integrity is the ring's CRC32), so for corrupted input the oracle is:
//! either `Err(Invalid)`, or a value that is itself a genuine message (it
//! re-encodes and decodes to itself). Where the format guarantees rejection
//! (misaligned root, short input, bad tag, bad UTF-8) the tests demand `Err`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use proptest::{collection::vec, prelude::*, sample::Index, test_runner::FileFailurePersistence};
use rkyv::{rancor, util::AlignedVec};
use shm_abi::message::{
    decode_reply, decode_request, encode_reply, encode_reply_to_slice, encode_request,
    encode_request_to_slice, ArchivedReply, ArchivedRequest, Command, ErrorKind, FunctionStats,
    FunctionStatus, InstanceStatus, MessageError, Reply, ReplyBody, Request, SnapshotInfo,
    MESSAGE_ALIGN,
};

// ---------- strategies ----------

/// Strings on both sides of rkyv's 8-byte inline limit, any Unicode.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,8}", ".{9,80}"]
}

fn ids() -> impl Strategy<Value = Vec<String>> {
    vec(text(), 0..6)
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (text(), text(), any::<bool>()).prop_map(|(config_yaml, source_path, dry_run)| {
            Command::Deploy {
                config_yaml,
                source_path,
                dry_run,
            }
        }),
        text().prop_map(|function_id| Command::Undeploy { function_id }),
        Just(Command::List),
        Just(Command::Stats),
        any::<u64>().prop_map(|drain_deadline_ms| Command::Shutdown { drain_deadline_ms }),
        Just(Command::Ping),
        (text(), any::<u32>()).prop_map(|(function_id, tail_lines)| Command::Logs {
            function_id,
            tail_lines
        }),
        text().prop_map(|function_id| Command::Snapshot { function_id }),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (any::<u64>(), command()).prop_map(|(id, command)| Request { id, command })
}

fn error_kind() -> impl Strategy<Value = ErrorKind> {
    prop_oneof![
        Just(ErrorKind::InvalidConfig),
        Just(ErrorKind::InvalidRequest),
        Just(ErrorKind::NotFound),
        Just(ErrorKind::Busy),
        Just(ErrorKind::ShuttingDown),
        Just(ErrorKind::Timeout),
        Just(ErrorKind::Internal),
    ]
}

fn instance() -> impl Strategy<Value = InstanceStatus> {
    (text(), any::<u32>(), text(), any::<u32>(), any::<u32>()).prop_map(
        |(instance_id, core, state, pid, restarts)| InstanceStatus {
            instance_id,
            core,
            state,
            pid,
            restarts,
        },
    )
}

fn snapshot_info() -> impl Strategy<Value = SnapshotInfo> {
    (
        (text(), text(), text(), text()),
        // any::<f64>() includes NaN, infinities and subnormals.
        (any::<u64>(), any::<u64>(), any::<f64>(), any::<u64>()),
    )
        .prop_map(
            |((state, identity, images_dir, error), (bytes, age_ms, dump_ms, created_unix_ms))| {
                SnapshotInfo {
                    state,
                    identity,
                    images_dir,
                    bytes,
                    age_ms,
                    dump_ms,
                    error,
                    created_unix_ms,
                }
            },
        )
}

fn function_status() -> impl Strategy<Value = FunctionStatus> {
    (text(), any::<u16>(), vec(instance(), 0..4), snapshot_info()).prop_map(
        |(id, trigger_port, instances, snapshot)| FunctionStatus {
            id,
            trigger_port,
            instances,
            snapshot,
        },
    )
}

fn function_stats() -> impl Strategy<Value = FunctionStats> {
    (
        (
            text(),
            any::<u64>(),
            vec(any::<(u16, u64)>(), 0..6),
            any::<u64>(),
            any::<u64>(),
        ),
        // any::<f64>() includes NaN, infinities and subnormals.
        any::<[f64; 4]>(),
    )
        .prop_map(
            |((id, requests_total, by_status, in_flight, queue_depth), lat)| FunctionStats {
                id,
                requests_total,
                by_status,
                in_flight,
                queue_depth,
                latency_p50_us: lat[0],
                latency_p99_us: lat[1],
                latency_p999_us: lat[2],
                latency_max_us: lat[3],
            },
        )
}

fn reply_body() -> impl Strategy<Value = ReplyBody> {
    prop_oneof![
        Just(ReplyBody::Ok),
        (error_kind(), text()).prop_map(|(kind, message)| ReplyBody::Error { kind, message }),
        (ids(), ids(), ids(), ids()).prop_map(|(added, updated, removed, unchanged)| {
            ReplyBody::Deployed {
                added,
                updated,
                removed,
                unchanged,
            }
        }),
        vec(function_status(), 0..4).prop_map(|functions| ReplyBody::List { functions }),
        (vec(function_stats(), 0..4), any::<u64>()).prop_map(|(functions, uptime_ms)| {
            ReplyBody::Stats {
                functions,
                uptime_ms,
            }
        }),
        (any::<u32>(), text(), vec(any::<u32>(), 0..8)).prop_map(|(pid, version, cores)| {
            ReplyBody::Pong {
                pid,
                version,
                cores,
            }
        }),
        ids().prop_map(|lines| ReplyBody::Logs { lines }),
        Just(ReplyBody::ShuttingDown),
        (text(), snapshot_info()).prop_map(|(function_id, snapshot)| ReplyBody::Snapshot {
            function_id,
            snapshot: Box::new(snapshot),
        }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    (any::<u64>(), reply_body()).prop_map(|(id, body)| Reply { id, body })
}

// ---------- oracles ----------

/// The encode/decode pair of one message type, so each oracle is written once.
struct Codec<T> {
    encode: fn(&T) -> Result<AlignedVec, MessageError>,
    decode: fn(&[u8]) -> Result<T, MessageError>,
    /// Size of the archived root, which sits at the end of every encoding.
    root_size: usize,
}

const REQUEST: Codec<Request> = Codec {
    encode: encode_request,
    decode: decode_request,
    root_size: size_of::<ArchivedRequest>(),
};

const REPLY: Codec<Reply> = Codec {
    encode: encode_reply,
    decode: decode_reply,
    root_size: size_of::<ArchivedReply>(),
};

/// How much corruption validation caught.
#[derive(Debug, Default)]
struct Tally {
    cuts: usize,
    cuts_detected: usize,
    flips: usize,
    flips_detected: usize,
}

impl<T: std::fmt::Debug> Codec<T> {
    fn bytes(&self, msg: &T) -> AlignedVec {
        (self.encode)(msg).unwrap()
    }

    /// Equality judged on the encoding, which is deterministic (rkyv zeroes
    /// padding) and keeps every float bit, so NaN latencies compare equal.
    fn same(&self, a: &T, b: &T) -> bool {
        self.bytes(a).as_slice() == self.bytes(b).as_slice()
    }

    /// Decodes `bytes` (an encoding of `msg`, at any alignment) and checks
    /// it is `msg`.
    fn decodes_to(&self, bytes: &[u8], msg: &T) -> bool {
        self.same(&(self.decode)(bytes).unwrap(), msg)
    }

    /// Decoding corrupted bytes either fails with `Invalid` or yields a
    /// genuine message (one that re-encodes and decodes to itself). Returns
    /// whether the corruption was detected.
    fn check_corrupt(&self, bytes: &[u8]) -> bool {
        match (self.decode)(bytes) {
            Err(MessageError::Invalid { .. }) => true,
            Err(other) => panic!("corrupt input gave {other:?}, expected Invalid"),
            Ok(msg) => {
                assert!(
                    self.decodes_to(&self.bytes(&msg), &msg),
                    "accepted bytes must decode to a self-consistent message: {msg:?}"
                );
                false
            }
        }
    }

    /// Checks the truncation of an encoding to `len` bytes; demands `Err`
    /// where the format guarantees it. Returns whether it was detected.
    fn check_truncation(&self, bytes: &[u8], len: usize) -> bool {
        let detected = self.check_corrupt(&bytes[..len]);
        if truncation_must_fail(len, self.root_size) {
            assert!(
                detected,
                "truncation to {len} of {} bytes accepted",
                bytes.len()
            );
        }
        detected
    }

    /// Checks the encoding of `msg` with bit `bit` flipped.
    fn check_flip(&self, msg: &T, bit: usize) -> bool {
        let mut bytes = self.bytes(msg);
        bytes[bit / 8] ^= 1 << (bit % 8);
        self.check_corrupt(&bytes)
    }

    /// Every truncation and every single-bit flip of the encoding of `msg`.
    fn corrupt_exhaustively(&self, msg: &T, tally: &mut Tally) {
        let bytes = self.bytes(msg);
        assert!(self.decodes_to(&bytes, msg), "{msg:?} does not round-trip");
        for len in 0..bytes.len() {
            tally.cuts += 1;
            tally.cuts_detected += usize::from(self.check_truncation(&bytes, len));
        }
        for bit in 0..bytes.len() * 8 {
            tally.flips += 1;
            tally.flips_detected += usize::from(self.check_flip(msg, bit));
        }
    }
}

/// Copies `bytes` to an address that is `offset` bytes past a 16-aligned one.
fn at_offset(bytes: &[u8], offset: usize) -> (AlignedVec, std::ops::Range<usize>) {
    let mut buf = AlignedVec::new();
    buf.resize(offset, 0);
    buf.extend_from_slice(bytes);
    (buf, offset..offset + bytes.len())
}

/// A truncation is certainly rejected when the input is shorter than the root
/// or when the root (the last bytes) no longer starts on an 8-aligned offset.
fn truncation_must_fail(cut_len: usize, root_size: usize) -> bool {
    cut_len < root_size || !(cut_len - root_size).is_multiple_of(MESSAGE_ALIGN)
}

// ---------- properties ----------

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES raises this for a longer soak.
        cases: ProptestConfig::default().cases.max(512),
        // Integration tests have no lib.rs beside them; keep failures next to this file.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn request_round_trips(req in request()) {
        let bytes = encode_request(&req).unwrap();
        prop_assert_eq!(bytes.len() % MESSAGE_ALIGN, 0);
        prop_assert_eq!(decode_request(&bytes).unwrap(), req.clone());

        let mut slice = vec![0u8; bytes.len() + 3];
        let n = encode_request_to_slice(&req, &mut slice).unwrap();
        prop_assert_eq!(&slice[..n], bytes.as_slice());
    }

    #[test]
    fn reply_round_trips(rep in reply()) {
        let bytes = encode_reply(&rep).unwrap();
        let back = decode_reply(&bytes).unwrap();
        prop_assert!(REPLY.same(&back, &rep));
        prop_assert_eq!(format!("{back:?}"), format!("{rep:?}"));

        let mut slice = vec![0u8; bytes.len()];
        let n = encode_reply_to_slice(&rep, &mut slice).unwrap();
        prop_assert_eq!(&slice[..n], bytes.as_slice());
    }

    #[test]
    fn any_alignment_decodes(req in request(), rep in reply(), offset in 0usize..16) {
        let (buf, range) = at_offset(&encode_request(&req).unwrap(), offset);
        prop_assert_eq!(decode_request(&buf[range]).unwrap(), req);
        let (buf, range) = at_offset(&encode_reply(&rep).unwrap(), offset);
        prop_assert!(REPLY.decodes_to(&buf[range], &rep));
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..600), offset in 0usize..8) {
        let (buf, range) = at_offset(&bytes, offset);
        REQUEST.check_corrupt(&buf[range.clone()]);
        REPLY.check_corrupt(&buf[range]);
    }

    #[test]
    fn truncations_are_rejected_or_harmless(req in request(), rep in reply(), cut in any::<Index>()) {
        let bytes = REQUEST.bytes(&req);
        REQUEST.check_truncation(&bytes, cut.index(bytes.len()));
        let bytes = REPLY.bytes(&rep);
        REPLY.check_truncation(&bytes, cut.index(bytes.len()));
    }

    #[test]
    fn bit_flips_are_rejected_or_harmless(
        req in request(),
        rep in reply(),
        flips in vec(any::<Index>(), 1..8),
    ) {
        for flip in &flips {
            REQUEST.check_flip(&req, flip.index(REQUEST.bytes(&req).len() * 8));
            REPLY.check_flip(&rep, flip.index(REPLY.bytes(&rep).len() * 8));
        }
    }
}

// ---------- exhaustive corruption of one message per variant ----------

fn one_request_per_variant() -> Vec<Request> {
    let cmds = vec![
        Command::Deploy {
            config_yaml: "functions:\n  - id: resize-image\n    trigger: {port: 8080}\n".into(),
            source_path: "/etc/aetherless/functions.yaml".into(),
            dry_run: false,
        },
        Command::Undeploy {
            function_id: "resize-image".into(),
        },
        Command::List,
        Command::Stats,
        Command::Shutdown {
            drain_deadline_ms: 30_000,
        },
        Command::Ping,
        Command::Logs {
            function_id: "fn".into(),
            tail_lines: 100,
        },
        Command::Snapshot {
            function_id: "resize-image".into(),
        },
    ];
    cmds.into_iter()
        .enumerate()
        .map(|(i, command)| Request {
            id: (0x1234 << 32) | i as u64,
            command,
        })
        .collect()
}

fn one_reply_per_variant() -> Vec<Reply> {
    let bodies = vec![
        ReplyBody::Ok,
        ReplyBody::Error {
            kind: ErrorKind::NotFound,
            message: "no function 'x'".into(),
        },
        ReplyBody::Deployed {
            added: vec!["a".into(), "a-much-longer-function-name".into()],
            updated: vec![],
            removed: vec!["old".into()],
            unchanged: vec!["c".into()],
        },
        ReplyBody::List {
            functions: vec![FunctionStatus {
                id: "hello-world".into(),
                trigger_port: 8080,
                instances: vec![InstanceStatus {
                    instance_id: "hello-world-c1-7".into(),
                    core: 1,
                    state: "running".into(),
                    pid: 4321,
                    restarts: 2,
                }],
                snapshot: SnapshotInfo {
                    state: "failed".into(),
                    error: "criu dump: exit 1".into(),
                    ..SnapshotInfo::default()
                },
            }],
        },
        ReplyBody::Stats {
            functions: vec![FunctionStats {
                id: "hello-world".into(),
                requests_total: 1_000_000,
                by_status: vec![(200, 999_000), (503, 1_000)],
                in_flight: 3,
                queue_depth: 0,
                latency_p50_us: 41.5,
                latency_p99_us: 120.25,
                latency_p999_us: 900.0,
                latency_max_us: 15_000.0,
            }],
            uptime_ms: 86_400_000,
        },
        ReplyBody::Pong {
            pid: 99,
            version: "0.1.0 (abcdef0)".into(),
            cores: vec![0, 1],
        },
        ReplyBody::Logs {
            lines: vec!["started".into(), "listening on :8080".into()],
        },
        ReplyBody::ShuttingDown,
        ReplyBody::Snapshot {
            function_id: "hello-world".into(),
            snapshot: Box::new(SnapshotInfo {
                state: "ready".into(),
                identity: "0123456789abcdef".into(),
                images_dir: "/dev/shm/aetherless/hello-world/0123456789abcdef".into(),
                bytes: 5_242_880,
                age_ms: 12,
                dump_ms: 70.5,
                error: String::new(),
                created_unix_ms: 1_790_000_000_000,
            }),
        },
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| Reply {
            id: (0x1234 << 32) | i as u64,
            body,
        })
        .collect()
}

#[test]
fn every_variant_survives_every_truncation_and_bit_flip() {
    let mut tally = Tally::default();
    for req in one_request_per_variant() {
        REQUEST.corrupt_exhaustively(&req, &mut tally);
    }
    for rep in one_reply_per_variant() {
        REPLY.corrupt_exhaustively(&rep, &mut tally);
    }
    let Tally {
        cuts,
        cuts_detected,
        flips,
        flips_detected,
    } = tally;
    eprintln!(
        "corruption detected by validation: truncations {cuts_detected}/{cuts}, \
         single-bit flips {flips_detected}/{flips} (the rest decode to other valid messages; \
         the ring's CRC32 catches those)"
    );
    assert!(cuts_detected > 0 && flips_detected > 0);
}

#[test]
fn unaligned_input_is_rejected_by_rkyv_but_decoded_by_us() {
    let req = &one_request_per_variant()[0];
    let (buf, range) = at_offset(&encode_request(req).unwrap(), 3);
    // The raw validator refuses a misaligned root: the copy path is needed.
    assert!(rkyv::access::<ArchivedRequest, rancor::Error>(&buf[range.clone()]).is_err());
    assert_eq!(&decode_request(&buf[range]).unwrap(), req);
}

#[test]
fn ring_style_eight_aligned_slot_decodes_in_place() {
    // A ring record is 8- but not necessarily 16-aligned; encode straight into
    // such a slot and read the archive there without copying.
    let req = &one_request_per_variant()[0];
    let len = encode_request(req).unwrap().len();
    let mut ring = AlignedVec::<16>::new();
    ring.resize(8 + len, 0xEE);
    let n = encode_request_to_slice(req, &mut ring[8..]).unwrap();
    assert_eq!(n, len);
    let slot = &ring[8..8 + n];
    let archived = rkyv::access::<ArchivedRequest, rancor::Error>(slot).unwrap();
    assert_eq!(archived.id, req.id);
    assert_eq!(&decode_request(slot).unwrap(), req);
}

#[test]
fn message_of_the_other_type_never_panics() {
    // A request fed to the reply decoder (and vice versa) must never panic;
    // the oracle accepts either a rejection or a self-consistent value.
    for req in one_request_per_variant() {
        REPLY.check_corrupt(&REQUEST.bytes(&req));
    }
    for rep in one_reply_per_variant() {
        REQUEST.check_corrupt(&REPLY.bytes(&rep));
    }
}
