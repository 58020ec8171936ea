//! Control messages exchanged by `aetherctl` and `aetherd`.
//!
//! `aetherctl` puts a [`Request`] on the control segment's request ring;
//! `aetherd` answers with a [`Reply`] on the reply ring. This module only
//! turns messages into bytes and back: framing (length + CRC32), blocking and
//! producer serialisation are the ring's business.
//!
//! # Wire format
//!
//! One ring record holds exactly one message, encoded with rkyv 0.8
//! (little-endian, 32-bit relative pointers, the crate's default format). rkyv
//! writes children before parents, so the archived root sits at the **end** of
//! the buffer and everything it points to lies before it:
//!
//! ```text
//!  offset 0                                                   len
//!  +--------------------------------------+-------------------+
//!  | out-of-line data, each item padded   | ArchivedRequest / |
//!  | to its alignment (string bytes that  | ArchivedReply     |
//!  | do not fit inline, Vec elements,     | (root, 8-aligned, |
//!  | nested structs ...)                  |  fixed size)      |
//!  +--------------------------------------+-------------------+
//!                  ^ relative pointers (i32 offsets from the pointer's own
//!                    address) from the root and its children point back here
//!
//!  root               size  layout (repr(C), little-endian)
//!  ArchivedRequest     32   +0 id: u64 | +8 command: u8 tag, then that variant's fields
//!  ArchivedReply       48   +0 id: u64 | +8 body:    u8 tag, then that variant's fields
//!
//!  Command tags   0 Deploy  1 Undeploy  2 List  3 Stats  4 Shutdown  5 Ping  6 Logs
//!                 7 Snapshot
//!  ReplyBody tags 0 Ok  1 Error  2 Deployed  3 List  4 Stats  5 Pong  6 Logs  7 ShuttingDown
//!                 8 Snapshot (its SnapshotInfo is boxed: a 4-byte rel ptr, so the
//!                   root keeps its 48 bytes)
//!  ErrorKind      u8, declaration order (0 InvalidConfig .. 6 Internal)
//!  String         8 bytes, 4-aligned: inline if <= 8 bytes, else length header + i32 rel ptr
//!  Vec<T>         8 bytes, 4-aligned: i32 rel ptr + u32 len, to `len` packed archived T
//!  bool           1 byte, 0 or 1;  padding is written as zero
//!  Box<T>         4 bytes: i32 rel ptr to one archived T
//! ```
//!
//! Out-of-line structs (Vec elements, boxed values), repr(C) in field order:
//!
//! ```text
//!  ArchivedSnapshotInfo    64   +0 state: String | +8 identity: String
//!                               +16 images_dir: String | +24 bytes: u64
//!                               +32 age_ms: u64 | +40 dump_ms: f64 | +48 error: String
//!                               +56 created_unix_ms: u64
//!  ArchivedFunctionStatus  88   +0 id: String | +8 trigger_port: u16, 2 padding
//!                               +12 instances: Vec, 4 padding | +24 snapshot:
//!                               SnapshotInfo (8-aligned for its u64s)
//! ```
//!
//! For example `Request { id: 1, command: Undeploy { function_id: "abcdefghij" } }`
//! encodes to 48 bytes (pinned by a unit test):
//!
//! ```text
//!   0  61 62 63 64 65 66 67 68 69 6a 00 00 00 00 00 00   "abcdefghij", padded to 8
//!  16  01 00 00 00 00 00 00 00                           root: id = 1
//!  24  01 00 00 00                                       tag 1 = Undeploy, padding
//!  28  8a 00 00 00 e4 ff ff ff                           String: out-of-line, length 10,
//!                                                        rel ptr -28 (28 - 28 = offset 0)
//!  36  00 x 12                                           rest of the 24-byte command
//! ```
//!
//! There is no header, magic or version inside a message: the control segment
//! already carries magic, ABI version and layout hash; the segment code is
//! expected to fold [`SCHEMA_VERSION`] into that hash, so that both ends agree
//! on these types before the first message is read. Changing any type in this module is an
//! ABI change: bump [`SCHEMA_VERSION`].
//!
//! # Why validate
//!
//! The bytes come from another process (possibly a different build, possibly
//! a crashed writer). Reading an archive without checking it would trust every
//! relative pointer, length, enum tag, `bool` and UTF-8 string in it, and one
//! bad byte would be undefined behaviour. Decoding therefore always runs
//! bytecheck over the whole archive first (`rkyv::access`): every pointer must
//! land inside the buffer, be aligned and not overlap its parent, every tag and
//! `bool` must be in range, every string must be UTF-8. Bytes that are not a
//! well-formed message yield [`MessageError::Invalid`], never a panic or UB.
//! Validation proves the bytes are *a* well-formed message, not *the* message
//! that was sent: a flipped bit inside an integer still decodes. Integrity is
//! the ring's CRC32.
//!
//! # Alignment
//!
//! The archived roots need 8-byte alignment (pinned below with a compile-time
//! assertion), and the encoder pads relative to the start of its output, so an
//! encoded message may be read in place from any 8-aligned address, for
//! instance a ring record. [`decode_request`] and [`decode_reply`] accept any
//! slice: when it is not 8-aligned they first copy it into an aligned buffer
//! (one extra copy of at most [`MAX_MESSAGE_BYTES`]); when it is, they decode
//! it in place.
//!
//! # Size limit
//!
//! A message may not exceed [`MAX_MESSAGE_BYTES`] encoded. The encoder stops
//! storing bytes once the limit is passed (it keeps only counting, so the
//! error reports the exact size without buffering it) and returns
//! [`MessageError::TooLarge`]; the decoder rejects longer input before
//! looking at it. A deploy of a large YAML file is the likely way to hit it.
//!
//! # Request ids
//!
//! Every [`Request`] carries an `id` chosen by the client, and `aetherd` copies
//! it into the [`Reply`] it sends back. The reply ring is shared by every
//! `aetherctl` process that ever talked to this `aetherd`, so a client can find
//! a stale reply on it (one whose requester timed out and exited, or one meant
//! for a concurrent client if the segment's producer lock is not held for the
//! whole exchange). The rules:
//!
//! - The client picks an id unique across processes and time:
//!   [`client_request_id`]`(pid, seq)` = `pid << 32 | seq`, where `seq` is a
//!   per-process counter (start it from a random or time-derived value so a
//!   recycled pid does not repeat an earlier process's ids).
//! - `aetherd` never invents ids: each reply echoes the id of the request it
//!   answers, including [`ReplyBody::Error`] replies. A request that fails to
//!   decode has no trustworthy id, so `aetherd` logs it and sends nothing; the
//!   client's timeout covers that case.
//! - The client reads replies until one carries its id, and drops (with a
//!   debug log) every reply whose id does not match. It never acts on a
//!   foreign reply.
//! - Retrying after a timeout uses a fresh id, so a late answer to the first
//!   attempt is dropped rather than mistaken for the second.

use rkyv::{
    api::high::{HighDeserializer, HighSerializer, HighValidator},
    bytecheck::CheckBytes,
    rancor,
    ser::{allocator::ArenaHandle, Positional, Writer},
    util::AlignedVec,
    Archive, Deserialize, Serialize,
};

/// Largest encoded message accepted by either side, in bytes (1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Version of the message schema in this module, for the control segment to
/// fold into its layout hash; bump it whenever a type here changes.
pub const SCHEMA_VERSION: u32 = 2;

/// Alignment an encoded message needs to be decoded in place.
pub const MESSAGE_ALIGN: usize = 8;

// The in-place / copy decision and the docs above rely on this bound.
const _: () = assert!(core::mem::align_of::<ArchivedRequest>() <= MESSAGE_ALIGN);
const _: () = assert!(core::mem::align_of::<ArchivedReply>() <= MESSAGE_ALIGN);
// Root sizes drawn in the module docs; a change here is an ABI change.
const _: () = assert!(core::mem::size_of::<ArchivedRequest>() == 32);
const _: () = assert!(core::mem::size_of::<ArchivedReply>() == 48);
const _: () = assert!(core::mem::size_of::<ArchivedSnapshotInfo>() == 64);
const _: () = assert!(core::mem::size_of::<ArchivedFunctionStatus>() == 88);
const _: () = assert!(core::mem::offset_of!(ArchivedSnapshotInfo, dump_ms) == 40);
const _: () = assert!(core::mem::offset_of!(ArchivedSnapshotInfo, created_unix_ms) == 56);
const _: () = assert!(core::mem::offset_of!(ArchivedFunctionStatus, instances) == 12);
const _: () = assert!(core::mem::offset_of!(ArchivedFunctionStatus, snapshot) == 24);

/// Failure to encode or decode a control message.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The bytes are not a valid archived message (garbage, truncated,
    /// corrupted, or from an incompatible schema).
    #[error("invalid control message: {reason}")]
    Invalid {
        /// What the validator rejected, with the input length.
        reason: String,
    },
    /// The message exceeds [`MAX_MESSAGE_BYTES`].
    #[error(
        "control message is {len} bytes, above the {max}-byte limit \
         (split the request or deploy a smaller config)"
    )]
    TooLarge {
        /// Encoded size (encoding) or input size (decoding), in bytes.
        len: usize,
        /// The limit that was exceeded.
        max: usize,
    },
    /// The message fits the protocol limit but not the caller's buffer; retry
    /// with a buffer of at least `needed` bytes.
    #[error("control message needs {needed} bytes but the buffer holds only {available}")]
    BufferTooSmall {
        /// Exact encoded size of the message.
        needed: usize,
        /// Length of the buffer that was passed.
        available: usize,
    },
    /// rkyv's serializer failed (not expected with the writers used here).
    #[error("encoding control message failed: {reason}")]
    Encode {
        /// The serializer's error.
        reason: String,
    },
}

/// A command from `aetherctl` to `aetherd`, tagged with the client's id.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Request {
    /// Client-chosen id, echoed in the [`Reply`]; see the module docs.
    pub id: u64,
    /// What to do.
    pub command: Command,
}

/// What `aetherctl` asks `aetherd` to do.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum Command {
    /// Reconcile the running functions with a config file. `aetherd` parses
    /// the YAML itself; the client sends the file's text and its path so that
    /// errors name the file. Answered by [`ReplyBody::Deployed`].
    Deploy {
        /// Full text of the config file.
        config_yaml: String,
        /// Path of the config file as the user gave it (for error messages).
        source_path: String,
        /// Validate and compute the plan without applying it.
        dry_run: bool,
    },
    /// Stop and remove one function and its instances.
    Undeploy {
        /// Function id as in the config.
        function_id: String,
    },
    /// List functions and their instances ([`ReplyBody::List`]).
    List,
    /// Request counters and latency ([`ReplyBody::Stats`]).
    Stats,
    /// Stop accepting requests, drain, and exit ([`ReplyBody::ShuttingDown`]).
    Shutdown {
        /// How long in-flight requests may take before they are cut off.
        drain_deadline_ms: u64,
    },
    /// Readiness probe ([`ReplyBody::Pong`]).
    Ping,
    /// Recent log lines of one function ([`ReplyBody::Logs`]).
    Logs {
        /// Function id as in the config.
        function_id: String,
        /// How many of the most recent lines to return.
        tail_lines: u32,
    },
    /// Dump a ready instance of one function with CRIU now, replacing its
    /// snapshot ([`ReplyBody::Snapshot`]).
    Snapshot {
        /// Function id as in the config.
        function_id: String,
    },
}

/// `aetherd`'s answer to one [`Request`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Reply {
    /// The id of the request this answers.
    pub id: u64,
    /// The answer.
    pub body: ReplyBody,
}

/// The payload of a [`Reply`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum ReplyBody {
    /// The command succeeded and has nothing to report (e.g. `Undeploy`).
    Ok,
    /// The command failed.
    Error {
        /// Category, for the client's exit code.
        kind: ErrorKind,
        /// Human-readable explanation, including what to do next.
        message: String,
    },
    /// Result of a `Deploy`: function ids by what happened to them.
    Deployed {
        /// Functions that did not run before.
        added: Vec<String>,
        /// Functions whose config changed and were restarted.
        updated: Vec<String>,
        /// Functions no longer in the config, now stopped.
        removed: Vec<String>,
        /// Functions left as they were.
        unchanged: Vec<String>,
    },
    /// Result of `List`.
    List {
        /// Every deployed function.
        functions: Vec<FunctionStatus>,
    },
    /// Result of `Stats`.
    Stats {
        /// Per-function counters.
        functions: Vec<FunctionStats>,
        /// Time since `aetherd` started.
        uptime_ms: u64,
    },
    /// Result of `Ping`: `aetherd` is up and serving.
    Pong {
        /// `aetherd`'s process id.
        pid: u32,
        /// `aetherd`'s version string.
        version: String,
        /// Cores running executors.
        cores: Vec<u32>,
    },
    /// Result of `Logs`, oldest line first.
    Logs {
        /// The lines, without trailing newlines.
        lines: Vec<String>,
    },
    /// Result of `Shutdown`: draining has started; `aetherd` exits after it.
    ShuttingDown,
    /// Result of `Snapshot`: the function's snapshot after the dump.
    Snapshot {
        /// Function id as in the config.
        function_id: String,
        /// The new snapshot (boxed to keep the root small, see the module docs).
        snapshot: Box<SnapshotInfo>,
    },
}

/// Why a command failed.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
pub enum ErrorKind {
    /// The config file is unreadable as YAML or violates the schema.
    InvalidConfig,
    /// The request is malformed or inconsistent (e.g. an empty function id).
    InvalidRequest,
    /// The named function does not exist.
    NotFound,
    /// Another command is in progress; retry later.
    Busy,
    /// `aetherd` is shutting down and accepts no more commands.
    ShuttingDown,
    /// The operation did not finish in time.
    Timeout,
    /// A bug or an unexpected system failure inside `aetherd`.
    Internal,
}

impl core::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::InvalidConfig => "invalid config",
            Self::InvalidRequest => "invalid request",
            Self::NotFound => "not found",
            Self::Busy => "busy",
            Self::ShuttingDown => "shutting down",
            Self::Timeout => "timed out",
            Self::Internal => "internal error",
        })
    }
}

/// One deployed function, as reported by `List`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct FunctionStatus {
    /// Function id as in the config.
    pub id: String,
    /// Port its trigger listens on.
    pub trigger_port: u16,
    /// Its running (or restarting) instances.
    pub instances: Vec<InstanceStatus>,
    /// Its CRIU snapshot.
    pub snapshot: SnapshotInfo,
}

/// A function's CRIU snapshot, as reported by `List` and `Snapshot`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct SnapshotInfo {
    /// One of [`SnapshotInfo::STATES`]: `"none"` (no images yet),
    /// `"dumping"`, `"ready"` (new instances are restored from it),
    /// `"failed"` (the last dump failed, see `error`), `"unavailable"` (CRIU
    /// is not usable here, see `error`).
    pub state: String,
    /// Identity the images belong to (16 hex digits; empty when unknown).
    pub identity: String,
    /// Directory of the images (empty when unknown).
    pub images_dir: String,
    /// Total size of the images, in bytes (0 when there are none).
    pub bytes: u64,
    /// Time since the images were completed, in milliseconds (0 when none).
    pub age_ms: u64,
    /// Wall time of the `criu dump` that made them, in milliseconds (0 for
    /// images adopted from disk, or when there are none).
    pub dump_ms: f64,
    /// Why the last dump failed or why CRIU is unavailable; empty otherwise.
    pub error: String,
    /// When the images were completed, in milliseconds since the Unix epoch
    /// (0 when none).
    pub created_unix_ms: u64,
}

impl SnapshotInfo {
    /// Every value `state` takes.
    pub const STATES: [&'static str; 5] = ["none", "dumping", "ready", "failed", "unavailable"];
}

/// One instance of a function.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct InstanceStatus {
    /// Instance id as the handler sees it in `AETHER_INSTANCE_ID`
    /// (`<function>-c<cpu>-<n>`), unique within the `aetherd` run.
    pub instance_id: String,
    /// Core the instance is pinned to.
    pub core: u32,
    /// Lifecycle state, e.g. `"running"`, `"warm"`, `"restoring"`.
    pub state: String,
    /// Process id of the instance.
    pub pid: u32,
    /// How many times it was restarted after a crash.
    pub restarts: u32,
}

/// Counters of one function, as reported by `Stats`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct FunctionStats {
    /// Function id as in the config.
    pub id: String,
    /// Requests completed since start.
    pub requests_total: u64,
    /// Completed requests by HTTP status: `(status, count)`.
    pub by_status: Vec<(u16, u64)>,
    /// Requests currently being handled.
    pub in_flight: u64,
    /// Requests waiting for an instance.
    pub queue_depth: u64,
    /// Median latency, microseconds.
    pub latency_p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub latency_p99_us: f64,
    /// 99.9th percentile latency, microseconds.
    pub latency_p999_us: f64,
    /// Maximum latency, microseconds.
    pub latency_max_us: f64,
}

/// The id a client should use for its `seq`-th request: `pid << 32 | seq`.
///
/// Unique across concurrent clients (pids differ) and within one client
/// (`seq` increments); see the module docs for how ids are matched.
#[must_use]
pub const fn client_request_id(pid: u32, seq: u32) -> u64 {
    ((pid as u64) << 32) | seq as u64
}

/// Encodes a request into a fresh 16-aligned buffer.
///
/// # Errors
/// [`MessageError::TooLarge`] if it would exceed [`MAX_MESSAGE_BYTES`].
pub fn encode_request(request: &Request) -> Result<AlignedVec, MessageError> {
    let mut out = AlignedVec::new();
    encode_into(request, &mut out)?;
    Ok(out)
}

/// Encodes a reply into a fresh 16-aligned buffer.
///
/// # Errors
/// [`MessageError::TooLarge`] if it would exceed [`MAX_MESSAGE_BYTES`].
pub fn encode_reply(reply: &Reply) -> Result<AlignedVec, MessageError> {
    let mut out = AlignedVec::new();
    encode_into(reply, &mut out)?;
    Ok(out)
}

/// Encodes a request into `out`, replacing its contents and reusing its
/// allocation; returns the encoded length.
///
/// # Errors
/// [`MessageError::TooLarge`] if it would exceed [`MAX_MESSAGE_BYTES`]; `out`
/// then holds a truncated, undecodable prefix.
pub fn encode_request_into(request: &Request, out: &mut AlignedVec) -> Result<usize, MessageError> {
    encode_into(request, out)
}

/// Encodes a reply into `out`, replacing its contents and reusing its
/// allocation; returns the encoded length.
///
/// # Errors
/// [`MessageError::TooLarge`] if it would exceed [`MAX_MESSAGE_BYTES`]; `out`
/// then holds a truncated, undecodable prefix.
pub fn encode_reply_into(reply: &Reply, out: &mut AlignedVec) -> Result<usize, MessageError> {
    encode_into(reply, out)
}

/// Encodes a request into the front of `buf` (e.g. space reserved in a ring)
/// and returns the encoded length. For the result to be decodable in place,
/// `buf` must start at a [`MESSAGE_ALIGN`]-aligned address.
///
/// # Errors
/// [`MessageError::TooLarge`] above [`MAX_MESSAGE_BYTES`];
/// [`MessageError::BufferTooSmall`] with the exact size needed if `buf` is
/// shorter. On error, the contents of `buf` are unspecified.
pub fn encode_request_to_slice(request: &Request, buf: &mut [u8]) -> Result<usize, MessageError> {
    encode_to_slice(request, buf)
}

/// Encodes a reply into the front of `buf`; see [`encode_request_to_slice`].
///
/// # Errors
/// As [`encode_request_to_slice`].
pub fn encode_reply_to_slice(reply: &Reply, buf: &mut [u8]) -> Result<usize, MessageError> {
    encode_to_slice(reply, buf)
}

/// Validates and decodes a request. Any alignment is accepted (see the module
/// docs); the whole slice must be exactly one encoded message.
///
/// # Errors
/// [`MessageError::TooLarge`] for input above [`MAX_MESSAGE_BYTES`];
/// [`MessageError::Invalid`] for anything that is not a valid request.
pub fn decode_request(bytes: &[u8]) -> Result<Request, MessageError> {
    decode(bytes)
}

/// Validates and decodes a reply; see [`decode_request`].
///
/// # Errors
/// As [`decode_request`].
pub fn decode_reply(bytes: &[u8]) -> Result<Reply, MessageError> {
    decode(bytes)
}

/// Where a [`LimitedWriter`] puts the bytes it keeps.
trait Sink {
    /// Stores `bytes` at offset `at`, which is the current end of the data.
    fn put(&mut self, at: usize, bytes: &[u8]);
}

impl Sink for &mut AlignedVec {
    fn put(&mut self, at: usize, bytes: &[u8]) {
        debug_assert_eq!(self.len(), at);
        self.extend_from_slice(bytes);
    }
}

impl Sink for &mut [u8] {
    fn put(&mut self, at: usize, bytes: &[u8]) {
        // `LimitedWriter` only calls `put` while `at + bytes.len() <= limit`
        // and the limit is at most `self.len()`, so this range is in bounds.
        if let Some(dst) = self.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }
}

/// An rkyv writer that stores at most `limit` bytes. Once a write would pass
/// the limit it stops storing and only counts, so an oversized message costs
/// no memory beyond the limit yet its exact size is still known.
struct LimitedWriter<S> {
    sink: S,
    limit: usize,
    pos: usize,
}

impl<S> LimitedWriter<S> {
    fn new(sink: S, limit: usize) -> Self {
        Self {
            sink,
            limit,
            pos: 0,
        }
    }
}

impl<S> Positional for LimitedWriter<S> {
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<S: Sink, E> Writer<E> for LimitedWriter<S> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let end = self.pos.saturating_add(bytes.len());
        if end <= self.limit {
            self.sink.put(self.pos, bytes);
        }
        self.pos = end;
        Ok(())
    }
}

/// Serializes `msg` through a [`LimitedWriter`] and returns the exact encoded
/// length, which may exceed `limit` (then only a prefix was stored).
fn serialize_limited<M, S>(msg: &M, sink: S, limit: usize) -> Result<usize, MessageError>
where
    S: Sink,
    M: for<'a> Serialize<HighSerializer<LimitedWriter<S>, ArenaHandle<'a>, rancor::Error>>,
{
    let writer =
        rkyv::api::high::to_bytes_in::<_, rancor::Error>(msg, LimitedWriter::new(sink, limit))
            .map_err(|e| MessageError::Encode {
                reason: e.to_string(),
            })?;
    Ok(writer.pos)
}

fn encode_into<M>(msg: &M, out: &mut AlignedVec) -> Result<usize, MessageError>
where
    M: for<'a, 'b> Serialize<
        HighSerializer<LimitedWriter<&'b mut AlignedVec>, ArenaHandle<'a>, rancor::Error>,
    >,
{
    out.clear();
    let len = serialize_limited(msg, out, MAX_MESSAGE_BYTES)?;
    if len > MAX_MESSAGE_BYTES {
        return Err(MessageError::TooLarge {
            len,
            max: MAX_MESSAGE_BYTES,
        });
    }
    Ok(len)
}

fn encode_to_slice<M>(msg: &M, buf: &mut [u8]) -> Result<usize, MessageError>
where
    M: for<'a, 'b> Serialize<
        HighSerializer<LimitedWriter<&'b mut [u8]>, ArenaHandle<'a>, rancor::Error>,
    >,
{
    let available = buf.len();
    let len = serialize_limited(msg, buf, available.min(MAX_MESSAGE_BYTES))?;
    if len > MAX_MESSAGE_BYTES {
        Err(MessageError::TooLarge {
            len,
            max: MAX_MESSAGE_BYTES,
        })
    } else if len > available {
        Err(MessageError::BufferTooSmall {
            needed: len,
            available,
        })
    } else {
        Ok(len)
    }
}

fn decode<M>(bytes: &[u8]) -> Result<M, MessageError>
where
    M: Archive,
    M::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<M, HighDeserializer<rancor::Error>>,
{
    let len = bytes.len();
    if len > MAX_MESSAGE_BYTES {
        return Err(MessageError::TooLarge {
            len,
            max: MAX_MESSAGE_BYTES,
        });
    }
    if len == 0 {
        return Err(MessageError::Invalid {
            reason: "empty message (0 bytes)".to_owned(),
        });
    }
    let result = if bytes.as_ptr().addr().is_multiple_of(MESSAGE_ALIGN) {
        rkyv::from_bytes::<M, rancor::Error>(bytes)
    } else {
        // Unaligned input (e.g. a sub-slice at an odd offset): the validator
        // would reject it as misaligned, so decode from an aligned copy.
        let mut aligned = AlignedVec::<16>::with_capacity(len);
        aligned.extend_from_slice(bytes);
        rkyv::from_bytes::<M, rancor::Error>(&aligned)
    };
    result.map_err(|e| MessageError::Invalid {
        reason: format!("{len}-byte input rejected: {e}"),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    fn deploy_request() -> Request {
        Request {
            id: client_request_id(4242, 7),
            command: Command::Deploy {
                config_yaml: "functions:\n  - id: hello\n    port: 8080\n".to_owned(),
                source_path: "examples/hello.yaml".to_owned(),
                dry_run: true,
            },
        }
    }

    #[test]
    fn request_id_packs_pid_and_sequence() {
        assert_eq!(client_request_id(1, 2), 0x0000_0001_0000_0002);
        assert_eq!(client_request_id(u32::MAX, u32::MAX), u64::MAX);
    }

    #[test]
    fn deploy_round_trips() {
        let req = deploy_request();
        let bytes = encode_request(&req).unwrap();
        assert_eq!(
            bytes.len() % MESSAGE_ALIGN,
            0,
            "root is padded to its alignment"
        );
        assert_eq!(decode_request(&bytes).unwrap(), req);
    }

    #[test]
    fn undeploy_encoding_matches_the_module_docs() {
        let req = Request {
            id: 1,
            command: Command::Undeploy {
                function_id: "abcdefghij".to_owned(),
            },
        };
        #[rustfmt::skip]
        let expected: [u8; 48] = [
            0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0, 0, 0, 0, 0, 0,
            1, 0, 0, 0, 0, 0, 0, 0,
            1, 0, 0, 0,
            0x8a, 0, 0, 0, 0xe4, 0xff, 0xff, 0xff,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(encode_request(&req).unwrap().as_slice(), &expected);
        assert_eq!(decode_request(&expected).unwrap(), req);
    }

    #[test]
    fn empty_input_is_invalid() {
        assert!(matches!(
            decode_request(&[]),
            Err(MessageError::Invalid { .. })
        ));
        assert!(matches!(
            decode_reply(&[]),
            Err(MessageError::Invalid { .. })
        ));
    }

    #[test]
    fn oversized_request_is_rejected_before_storing_it() {
        let req = Request {
            id: 1,
            command: Command::Deploy {
                config_yaml: "x".repeat(MAX_MESSAGE_BYTES),
                source_path: "big.yaml".to_owned(),
                dry_run: false,
            },
        };
        let mut out = AlignedVec::new();
        match encode_request_into(&req, &mut out) {
            Err(MessageError::TooLarge { len, max }) => {
                assert_eq!(max, MAX_MESSAGE_BYTES);
                assert!(len > MAX_MESSAGE_BYTES, "exact size {len} reported");
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(out.len() <= MAX_MESSAGE_BYTES, "stored {} bytes", out.len());
    }

    #[test]
    fn largest_allowed_message_encodes_and_oversized_input_is_refused() {
        // Find the biggest YAML that fits exactly at the limit, then one more byte.
        let probe = |n: usize| Request {
            id: 9,
            command: Command::Deploy {
                config_yaml: "y".repeat(n),
                source_path: String::new(),
                dry_run: false,
            },
        };
        let overhead = encode_request(&probe(4096)).unwrap().len() - 4096;
        let fit = MAX_MESSAGE_BYTES - overhead;
        let bytes = encode_request(&probe(fit)).unwrap();
        assert!(bytes.len() <= MAX_MESSAGE_BYTES);
        assert_eq!(decode_request(&bytes).unwrap(), probe(fit));
        assert!(matches!(
            encode_request(&probe(fit + 8)),
            Err(MessageError::TooLarge { .. })
        ));

        let long = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            decode_request(&long),
            Err(MessageError::TooLarge { len, max }) if len == MAX_MESSAGE_BYTES + 1 && max == MAX_MESSAGE_BYTES
        ));
    }

    #[test]
    fn slice_encoding_reports_exact_needed_size() {
        let req = deploy_request();
        let expected = encode_request(&req).unwrap();
        let mut small = vec![0u8; 8];
        let needed = match encode_request_to_slice(&req, &mut small) {
            Err(MessageError::BufferTooSmall {
                needed,
                available: 8,
            }) => needed,
            other => panic!("expected BufferTooSmall, got {other:?}"),
        };
        assert_eq!(needed, expected.len());

        let mut exact = AlignedVec::<16>::new();
        exact.resize(needed, 0xAA);
        let n = encode_request_to_slice(&req, &mut exact).unwrap();
        assert_eq!(n, needed);
        assert_eq!(
            exact.as_slice(),
            expected.as_slice(),
            "same bytes as the Vec encoder"
        );
        assert_eq!(decode_request(&exact[..n]).unwrap(), req);
    }

    #[test]
    fn invalid_utf8_in_a_string_is_rejected() {
        let req = deploy_request();
        let mut bytes = encode_request(&req).unwrap().into_vec();
        let needle = b"functions:";
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        bytes[at] |= 0x80; // lone continuation byte: not UTF-8
        let err = decode_request(&bytes).unwrap_err();
        assert!(matches!(err, MessageError::Invalid { .. }), "{err:?}");
    }

    #[test]
    fn out_of_range_enum_tag_is_rejected() {
        let reply = Reply {
            id: 3,
            body: ReplyBody::ShuttingDown,
        };
        let mut bytes = encode_reply(&reply).unwrap().into_vec();
        // Root = { id: u64, body: tag u8 ... }; the root is the whole buffer
        // here (no out-of-line data), so the tag is at offset 8.
        assert_eq!(bytes[8], 7, "ShuttingDown is the eighth variant");
        bytes[8] = 200;
        let err = decode_reply(&bytes).unwrap_err();
        assert!(matches!(err, MessageError::Invalid { .. }), "{err:?}");
    }

    fn ready_snapshot() -> SnapshotInfo {
        SnapshotInfo {
            state: "ready".to_owned(),
            identity: "0123456789abcdef".to_owned(),
            images_dir: "/dev/shm/aetherless/hello/0123456789abcdef".to_owned(),
            bytes: 9_876_543,
            age_ms: 1_250,
            dump_ms: 71.5,
            error: String::new(),
            created_unix_ms: 1_790_000_000_000,
        }
    }

    #[test]
    fn snapshot_command_round_trips_with_tag_7() {
        let req = Request {
            id: client_request_id(77, 1),
            command: Command::Snapshot {
                function_id: "hello".to_owned(),
            },
        };
        let bytes = encode_request(&req).unwrap();
        assert_eq!(bytes.len(), 32, "a short id stays inline in the root");
        assert_eq!(bytes[8], 7, "Snapshot is the eighth command");
        assert_eq!(decode_request(&bytes).unwrap(), req);
    }

    #[test]
    fn snapshot_reply_round_trips_and_keeps_the_root_size() {
        let reply = Reply {
            id: 5,
            body: ReplyBody::Snapshot {
                function_id: "hello-api-with-a-long-name".to_owned(),
                snapshot: Box::new(ready_snapshot()),
            },
        };
        let bytes = encode_reply(&reply).unwrap();
        let root = &bytes[bytes.len() - 48..];
        assert_eq!(root[8], 8, "Snapshot is the ninth reply body");
        assert_eq!(decode_reply(&bytes).unwrap(), reply);
    }

    #[test]
    fn list_reply_carries_each_functions_snapshot() {
        let failed = SnapshotInfo {
            state: "failed".to_owned(),
            error: "criu dump exited with 1: (00.012) Error (criu/cr-dump.c:1): boom".to_owned(),
            ..SnapshotInfo::default()
        };
        let reply = Reply {
            id: 6,
            body: ReplyBody::List {
                functions: vec![
                    FunctionStatus {
                        id: "hello".to_owned(),
                        trigger_port: 8080,
                        instances: vec![InstanceStatus {
                            instance_id: "hello-c0-1".to_owned(),
                            core: 0,
                            state: "ready".to_owned(),
                            pid: 4321,
                            restarts: 0,
                        }],
                        snapshot: ready_snapshot(),
                    },
                    FunctionStatus {
                        id: "other".to_owned(),
                        trigger_port: 8081,
                        instances: Vec::new(),
                        snapshot: failed,
                    },
                    FunctionStatus {
                        id: "fresh".to_owned(),
                        trigger_port: 8082,
                        instances: Vec::new(),
                        snapshot: SnapshotInfo {
                            state: "none".to_owned(),
                            ..SnapshotInfo::default()
                        },
                    },
                ],
            },
        };
        let bytes = encode_reply(&reply).unwrap();
        assert_eq!(decode_reply(&bytes).unwrap(), reply);
    }

    #[test]
    fn snapshot_states_are_lower_case_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for s in SnapshotInfo::STATES {
            assert_eq!(s, s.to_lowercase());
            assert!(seen.insert(s), "{s} listed twice");
        }
    }

    #[test]
    fn error_messages_carry_their_values() {
        let e = MessageError::TooLarge {
            len: 2_000_000,
            max: MAX_MESSAGE_BYTES,
        };
        let text = e.to_string();
        assert!(
            text.contains("2000000") && text.contains("1048576"),
            "{text}"
        );
    }
}
