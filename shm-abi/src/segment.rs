//! Named shared-memory segments with a self-describing header.
//!
//! A segment is a file (under `/dev/shm` by default, so tmpfs-backed), mode
//! 0600, mapped `MAP_SHARED` by every process that uses it. Its first 128
//! bytes describe it; the payload that follows is interpreted according to a
//! [`SegmentLayout`] both sides agree on.
//!
//! ```text
//!  offset  size  field
//!  ┌──────┬─────┬─────────────────────────────────────────────────────────┐
//!  │    0 │   8 │ magic        b"AETHSHM\0" (stored last, with Release)   │
//!  │    8 │   4 │ abi_version  u32 LE: version of this header format      │
//!  │   12 │   4 │ header_len   u32 LE: 128                                │
//!  │   16 │   8 │ layout_hash  u64 LE: FNV-1a of the payload layout facts │
//!  │   24 │   8 │ total_len    u64 LE: header + payload bytes             │
//!  │   32 │   4 │ creator_pid  u32 LE                                     │
//!  │   36 │  92 │ reserved (zero)                                         │
//!  ├──────┼─────┼─────────────────────────────────────────────────────────┤
//!  │  128 │ ... │ payload (128-byte aligned), e.g. ring headers + data    │
//!  └──────┴─────┴─────────────────────────────────────────────────────────┘
//! ```
//!
//! Shared memory holds offsets, never pointers: every process maps the file
//! at its own address. Types placed in it implement [`ShmSafe`].

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapMut, MmapOptions};

/// Magic at offset 0 of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"AETHSHM\0";
/// Version of the segment header format (bump on any header change).
pub const ABI_VERSION: u32 = 1;
/// Bytes before the payload.
pub const SEGMENT_HEADER_LEN: usize = 128;
/// Where segments live unless the caller says otherwise.
pub const DEFAULT_DIR: &str = "/dev/shm";

/// Marker for types that may be placed in memory shared between processes.
///
/// # Safety
///
/// Implement only for types that:
/// - are `#[repr(C)]` (or primitive) with a layout fixed across compilations,
///   pinned by a `const _: () = assert!(size_of::<T>() == N);`;
/// - contain no pointers or references (shared memory holds offsets only),
///   and no `Drop` logic that must run;
/// - are valid for every bit pattern another process may have written, or are
///   only read through accessors that validate what they read;
/// - use atomics for every field written while another process may read it.
pub unsafe trait ShmSafe: Sized {}

// SAFETY: plain integers: every bit pattern valid, no pointers.
unsafe impl ShmSafe for u8 {}
// SAFETY: as above.
unsafe impl ShmSafe for u32 {}
// SAFETY: as above.
unsafe impl ShmSafe for u64 {}
// SAFETY: atomics over integers: every bit pattern valid, no pointers.
unsafe impl ShmSafe for std::sync::atomic::AtomicU32 {}
// SAFETY: as above.
unsafe impl ShmSafe for std::sync::atomic::AtomicU64 {}

/// The segment header, exactly as drawn in the module docs.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct SegmentHeader {
    magic: AtomicU64,
    abi_version: u32,
    header_len: u32,
    layout_hash: u64,
    total_len: u64,
    creator_pid: u32,
    reserved: [u8; 92],
}

const _: () = assert!(size_of::<SegmentHeader>() == SEGMENT_HEADER_LEN);
const HEADER_LEN_U32: u32 = 128;
const _: () = assert!(HEADER_LEN_U32 as usize == SEGMENT_HEADER_LEN);
const _: () = assert!(std::mem::offset_of!(SegmentHeader, layout_hash) == 16);
const _: () = assert!(std::mem::offset_of!(SegmentHeader, creator_pid) == 32);

// SAFETY: repr(C), integers and an atomic only, size pinned above; the
// fields are validated by `Segment::open` before anything trusts them.
unsafe impl ShmSafe for SegmentHeader {}

/// FNV-1a over bytes, usable in `const` context.
pub const fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// FNV-1a offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// What a segment's payload contains: a name (for error messages) and a hash
/// of the facts (sizes, offsets, framing constants) both sides compile in.
/// Two binaries whose payload layouts differ get different hashes, and
/// [`Segment::open`] refuses with [`SegmentError::LayoutMismatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentLayout {
    /// Human name, e.g. `"aether-control-channel"`.
    pub name: &'static str,
    /// FNV-1a of `name` and `facts`.
    pub hash: u64,
}

impl SegmentLayout {
    /// Hashes `name` and each fact (little-endian) into a layout identity.
    pub const fn new(name: &'static str, facts: &[u64]) -> Self {
        let mut hash = fnv1a(FNV_OFFSET, name.as_bytes());
        let mut i = 0;
        while i < facts.len() {
            hash = fnv1a(hash, &facts[i].to_le_bytes());
            i += 1;
        }
        Self { name, hash }
    }
}

/// Errors of creating or opening a segment.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// A system call on the segment file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing (`"create"`, `"open"`, `"mmap"`, ...).
        op: &'static str,
        /// The segment file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with [`SEGMENT_MAGIC`] (not a segment, or its
    /// creator has not finished initialising it).
    #[error("{path} is not an aetherless segment (magic {found:02x?})")]
    BadMagic {
        /// The segment file.
        path: PathBuf,
        /// The first 8 bytes found.
        found: [u8; 8],
    },
    /// The header was written by another ABI version.
    #[error("{path}: segment ABI version {found}, this binary speaks {expected}; restart the peer with a matching build")]
    VersionMismatch {
        /// The segment file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version this binary speaks.
        expected: u32,
    },
    /// The payload layout differs from the one this binary expects.
    #[error("{path}: layout hash {found:#018x} is not {expected:#018x} ({layout}); the peer was built with a different layout")]
    LayoutMismatch {
        /// The segment file.
        path: PathBuf,
        /// Hash in the file.
        found: u64,
        /// Hash expected.
        expected: u64,
        /// Name of the expected layout.
        layout: &'static str,
    },
    /// The file is shorter than its header or the payload requires.
    #[error("{path}: {len} bytes, need at least {required}")]
    TooSmall {
        /// The segment file.
        path: PathBuf,
        /// Actual bytes.
        len: u64,
        /// Bytes required.
        required: u64,
    },
    /// The file belongs to another user or is readable/writable by others:
    /// whoever planted it could read or forge our messages.
    #[error("{path} is owned by uid {owner} with mode {mode:o}; expected uid {expected} and mode 600. Remove it if it is not ours")]
    NotPrivate {
        /// The segment file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
        /// Our effective uid.
        expected: u32,
    },
    /// An accessor asked for bytes outside the payload or misaligned.
    #[error("{path}: {len} bytes at payload offset {offset} (align {align}) do not fit the {payload}-byte payload")]
    OutOfBounds {
        /// The segment file.
        path: PathBuf,
        /// Requested offset.
        offset: usize,
        /// Requested length.
        len: usize,
        /// Required alignment.
        align: usize,
        /// Payload length.
        payload: usize,
    },
    /// A segment already exists at the path and its creator is alive.
    #[error("{path} is in use by live process {pid}")]
    InUse {
        /// The segment file.
        path: PathBuf,
        /// The creator's pid.
        pid: u32,
    },
}

/// A mapped segment. Dropping it unmaps it; the creator's handle also removes
/// the file (see [`Segment::set_unlink_on_drop`]).
#[derive(Debug)]
pub struct Segment {
    path: PathBuf,
    file: File,
    /// Keeps the mapping alive; all access goes through `base`.
    _map: MmapMut,
    base: NonNull<u8>,
    len: usize,
    unlink_on_drop: bool,
}

// SAFETY: `base` points into `_map`, which lives as long as the Segment and is
// itself Send + Sync; all shared accesses through it are atomics or follow the
// ring protocol, which is designed for concurrent use by several threads and
// processes.
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SegmentError + 'a {
    move |source| SegmentError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn map_file(file: File, path: &Path, unlink_on_drop: bool) -> Result<Segment, SegmentError> {
    // SAFETY: the file is a regular file we opened read-write; the mapping is
    // shared by design and only accessed through atomics, validated header
    // fields, or the ring protocol, which tolerates concurrent writers by
    // bounds-checking every value it reads.
    let mut map = unsafe { MmapOptions::new().map_mut(&file) }.map_err(io_err("mmap", path))?;
    let len = map.len();
    let base = NonNull::new(map.as_mut_ptr()).ok_or_else(|| SegmentError::TooSmall {
        path: path.to_path_buf(),
        len: 0,
        required: SEGMENT_HEADER_LEN as u64,
    })?;
    Ok(Segment {
        path: path.to_path_buf(),
        file,
        _map: map,
        base,
        len,
        unlink_on_drop,
    })
}

impl Segment {
    /// The default directory for segments (`/dev/shm`).
    pub fn default_dir() -> &'static Path {
        Path::new(DEFAULT_DIR)
    }

    /// Creates a new segment file at `path` (it must not exist) with room for
    /// `payload_len` payload bytes, mode 0600, zero-filled, and writes the
    /// header for `layout`. The returned handle removes the file on drop.
    pub fn create(
        path: &Path,
        layout: &SegmentLayout,
        payload_len: usize,
    ) -> Result<Self, SegmentError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(io_err("create", path))?;
        // Be sure of 0600 whatever the umask or a pre-set default ACL did.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("fchmod", path))?;
        let total = SEGMENT_HEADER_LEN + payload_len;
        let build = || -> Result<Self, SegmentError> {
            file.set_len(total as u64)
                .map_err(io_err("ftruncate", path))?;
            map_file(file, path, true)
        };
        let seg = match build() {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        let hdr = seg.header_ptr();
        let header = SegmentHeader {
            magic: AtomicU64::new(0),
            abi_version: ABI_VERSION,
            header_len: HEADER_LEN_U32,
            layout_hash: layout.hash,
            total_len: total as u64,
            creator_pid: std::process::id(),
            reserved: [0; 92],
        };
        // SAFETY: the mapping is at least SEGMENT_HEADER_LEN bytes, page
        // aligned (so aligned for SegmentHeader), and nobody else can have
        // trusted it yet: the magic is zero until the store below.
        unsafe { hdr.write(header) };
        // SYNC: Release publishes the fields above; `open` loads the magic
        // with Acquire before reading them.
        seg.header()
            .magic
            .store(u64::from_le_bytes(SEGMENT_MAGIC), Ordering::Release);
        Ok(seg)
    }

    /// Like [`Segment::create`], but if a segment already exists at `path`
    /// and its creator is dead (a crashed daemon), removes it first. A live
    /// creator gives [`SegmentError::InUse`].
    pub fn create_replacing_stale(
        path: &Path,
        layout: &SegmentLayout,
        payload_len: usize,
    ) -> Result<Self, SegmentError> {
        match Self::create(path, layout, payload_len) {
            Err(SegmentError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                let pid = Self::peek_creator(path);
                if let Some(pid) = pid.filter(|&p| crate::process_alive(p)) {
                    return Err(SegmentError::InUse {
                        path: path.to_path_buf(),
                        pid,
                    });
                }
                std::fs::remove_file(path).map_err(io_err("unlink stale", path))?;
                Self::create(path, layout, payload_len)
            }
            other => other,
        }
    }

    /// Reads the creator pid of whatever file is at `path`, if it looks like
    /// a segment header.
    fn peek_creator(path: &Path) -> Option<u32> {
        use std::io::Read;
        let mut buf = [0u8; 36];
        File::open(path).ok()?.read_exact(&mut buf).ok()?;
        if buf[..8] != SEGMENT_MAGIC {
            return None;
        }
        Some(u32::from_le_bytes([buf[32], buf[33], buf[34], buf[35]]))
    }

    /// Opens an existing segment and checks its header against `layout`.
    pub fn open(path: &Path, layout: &SegmentLayout) -> Result<Self, SegmentError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            // Never follow a symlink planted in a shared directory.
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_err("open", path))?;
        let meta = file.metadata().map_err(io_err("fstat", path))?;
        {
            use std::os::unix::fs::MetadataExt;
            // SAFETY: geteuid has no preconditions and cannot fail.
            let euid = unsafe { libc::geteuid() };
            if meta.uid() != euid || meta.mode() & 0o077 != 0 {
                return Err(SegmentError::NotPrivate {
                    path: path.to_path_buf(),
                    owner: meta.uid(),
                    mode: meta.mode() & 0o7777,
                    expected: euid,
                });
            }
        }
        let len = meta.len();
        if len < SEGMENT_HEADER_LEN as u64 {
            return Err(SegmentError::TooSmall {
                path: path.to_path_buf(),
                len,
                required: SEGMENT_HEADER_LEN as u64,
            });
        }
        let seg = map_file(file, path, false)?;
        let h = seg.header();
        // SYNC: Acquire pairs with the creator's Release store of the magic,
        // making the other header fields visible.
        let magic = h.magic.load(Ordering::Acquire).to_le_bytes();
        if magic != SEGMENT_MAGIC {
            return Err(SegmentError::BadMagic {
                path: seg.path.clone(),
                found: magic,
            });
        }
        if h.abi_version != ABI_VERSION {
            return Err(SegmentError::VersionMismatch {
                path: seg.path.clone(),
                found: h.abi_version,
                expected: ABI_VERSION,
            });
        }
        if h.layout_hash != layout.hash {
            return Err(SegmentError::LayoutMismatch {
                path: seg.path.clone(),
                found: h.layout_hash,
                expected: layout.hash,
                layout: layout.name,
            });
        }
        if h.total_len > len || h.header_len != HEADER_LEN_U32 {
            return Err(SegmentError::TooSmall {
                path: seg.path.clone(),
                len,
                required: h.total_len,
            });
        }
        Ok(seg)
    }

    fn header_ptr(&self) -> *mut SegmentHeader {
        self.base.as_ptr().cast::<SegmentHeader>()
    }

    fn header(&self) -> &SegmentHeader {
        // SAFETY: the mapping is page aligned and at least 128 bytes (checked
        // at create/open); SegmentHeader is ShmSafe (any bit pattern valid)
        // and only its atomic field is written after creation.
        unsafe { &*self.header_ptr() }
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (for `flock`, `fstat`, ...).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Pid of the process that created the segment.
    pub fn creator_pid(&self) -> u32 {
        self.header().creator_pid
    }

    /// Layout hash stored in the header.
    pub fn layout_hash(&self) -> u64 {
        self.header().layout_hash
    }

    /// Total bytes (header + payload) as recorded in the header.
    pub fn total_len(&self) -> u64 {
        self.header().total_len
    }

    /// Start of the payload (128-byte aligned).
    pub fn payload_ptr(&self) -> NonNull<u8> {
        // SAFETY: the mapping is at least SEGMENT_HEADER_LEN bytes long
        // (checked at create/open), so the offset stays inside it.
        unsafe { self.base.add(SEGMENT_HEADER_LEN) }
    }

    /// A shared reference to a `T` at payload `offset`, bounds- and
    /// alignment-checked. `T: ShmSafe` guarantees any bytes there are a valid
    /// `T` and that concurrent writers use its atomics.
    pub fn get<T: ShmSafe>(&self, offset: usize) -> Result<&T, SegmentError> {
        let (len, align) = (size_of::<T>(), align_of::<T>());
        let fits = offset
            .checked_add(len)
            .is_some_and(|end| end <= self.payload_len());
        // The payload starts 128-aligned (page + 128), so offset alignment
        // is address alignment for align ≤ 128.
        if !fits || !offset.is_multiple_of(align) || align > SEGMENT_HEADER_LEN {
            return Err(SegmentError::OutOfBounds {
                path: self.path.clone(),
                offset,
                len,
                align,
                payload: self.payload_len(),
            });
        }
        // SAFETY: offset + len ≤ payload_len (checked), so the pointer stays
        // inside the mapping.
        let ptr = unsafe { self.payload_ptr().add(offset) }.cast::<T>();
        // SAFETY: in bounds and aligned (checked above); the mapping lives as
        // long as `self`; T: ShmSafe makes every bit pattern valid and all
        // shared mutation go through atomics.
        Ok(unsafe { ptr.as_ref() })
    }

    /// Payload bytes.
    pub fn payload_len(&self) -> usize {
        self.len - SEGMENT_HEADER_LEN
    }

    /// Whether dropping this handle removes the file.
    pub fn set_unlink_on_drop(&mut self, unlink: bool) {
        self.unlink_on_drop = unlink;
    }

    /// Removes the file now (the mapping stays valid until drop).
    pub fn unlink(&mut self) -> Result<(), SegmentError> {
        self.unlink_on_drop = false;
        std::fs::remove_file(&self.path).map_err(io_err("unlink", &self.path))
    }

    /// Raw fd, for `flock` and friends.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.unlink_on_drop {
            // Only remove the file if it is still ours: a replacement created
            // after an explicit unlink must survive.
            let same = std::fs::metadata(&self.path)
                .ok()
                .zip(self.file.metadata().ok())
                .is_some_and(|(a, b)| {
                    use std::os::unix::fs::MetadataExt;
                    a.ino() == b.ino() && a.dev() == b.dev()
                });
            if same {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn layout_hash_depends_on_name_facts_and_order() {
        let a = SegmentLayout::new("x", &[1, 2]);
        assert_eq!(a, SegmentLayout::new("x", &[1, 2]));
        assert_ne!(a.hash, SegmentLayout::new("y", &[1, 2]).hash);
        assert_ne!(a.hash, SegmentLayout::new("x", &[2, 1]).hash);
        assert_ne!(a.hash, SegmentLayout::new("x", &[1, 2, 0]).hash);
    }

    #[test]
    fn header_offsets_match_the_drawing() {
        assert_eq!(std::mem::offset_of!(SegmentHeader, magic), 0);
        assert_eq!(std::mem::offset_of!(SegmentHeader, abi_version), 8);
        assert_eq!(std::mem::offset_of!(SegmentHeader, header_len), 12);
        assert_eq!(std::mem::offset_of!(SegmentHeader, layout_hash), 16);
        assert_eq!(std::mem::offset_of!(SegmentHeader, total_len), 24);
        assert_eq!(std::mem::offset_of!(SegmentHeader, creator_pid), 32);
    }
}
