//! A small shared-memory file that two benchmark processes map.
//!
//! The creator makes a new file (`O_EXCL`, mode 0600, zero-filled) under
//! `/dev/shm` and removes it on drop; the peer opens it by path. The file
//! holds exactly one `T`, viewed in place through `&T`; `T` is made only of
//! atomics (see [`SharedPod`]), so both processes use it concurrently without
//! any pointer ever being stored in it.

use memmap2::MmapMut;
use std::fs::OpenOptions;
use std::marker::PhantomData;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Types that may live in a [`SharedFile`].
///
/// # Safety
/// Implementors must be `#[repr(C)]`, valid when every byte is zero, contain
/// no pointers or references, be at most 4096-byte aligned, and be safe to use
/// through `&Self` from several processes at once (all mutation through
/// atomics).
pub unsafe trait SharedPod: Sync {}

/// Errors creating or opening a shared file.
#[derive(Debug, Error)]
pub enum SharedError {
    /// Creating, sizing or opening the file failed.
    #[error("cannot {action} shared file {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The opened file is smaller than the type it must hold.
    #[error("shared file {path} holds {len} bytes, {needed} needed (created by another build?)")]
    TooSmall {
        path: PathBuf,
        len: u64,
        needed: usize,
    },
}

/// A file in shared memory holding one `T`.
#[derive(Debug)]
pub struct SharedFile<T: SharedPod> {
    map: MmapMut,
    path: PathBuf,
    owner: bool,
    _holds: PhantomData<T>,
}

impl<T: SharedPod> SharedFile<T> {
    /// Creates `path` (must not exist), zero-filled and sized for `T`; the
    /// returned handle removes the file when dropped.
    ///
    /// # Errors
    /// [`SharedError::Io`] when the file exists or cannot be created or mapped.
    pub fn create(path: &Path) -> Result<Self, SharedError> {
        let io = |action| {
            move |source| SharedError::Io {
                action,
                path: path.to_path_buf(),
                source,
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io("create"))?;
        let len = u64::try_from(std::mem::size_of::<T>()).unwrap_or(u64::MAX);
        // A file handle exists from here on: remove the file on any error.
        let cleanup = |e| {
            let _ = std::fs::remove_file(path);
            e
        };
        file.set_len(len).map_err(io("size")).map_err(cleanup)?;
        Self::map(&file, path, true).map_err(cleanup)
    }

    /// Opens a file made by [`SharedFile::create`] in another process.
    ///
    /// # Errors
    /// [`SharedError`] when the file is missing, too small or cannot be mapped.
    pub fn open(path: &Path) -> Result<Self, SharedError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| SharedError::Io {
                action: "open",
                path: path.to_path_buf(),
                source,
            })?;
        Self::map(&file, path, false)
    }

    fn map(file: &std::fs::File, path: &Path, owner: bool) -> Result<Self, SharedError> {
        let needed = std::mem::size_of::<T>();
        let len = file
            .metadata()
            .map_err(|source| SharedError::Io {
                action: "stat",
                path: path.to_path_buf(),
                source,
            })?
            .len();
        if usize::try_from(len).is_ok_and(|l| l < needed) {
            return Err(SharedError::TooSmall {
                path: path.to_path_buf(),
                len,
                needed,
            });
        }
        // SAFETY: the mapping is MAP_SHARED over a file only benchmark
        // processes touch; no one truncates it while mapped (the creator only
        // unlinks it, which keeps the pages alive). All access to its bytes
        // goes through `T`'s atomics (SharedPod contract), so concurrent
        // writes from the peer are not data races.
        let map = unsafe { MmapMut::map_mut(file) }.map_err(|source| SharedError::Io {
            action: "mmap",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            map,
            path: path.to_path_buf(),
            owner,
            _holds: PhantomData,
        })
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl<T: SharedPod> std::ops::Deref for SharedFile<T> {
    type Target = T;

    fn deref(&self) -> &T {
        let ptr = self.map.as_ptr().cast::<T>();
        debug_assert!(ptr.is_aligned());
        // SAFETY: the mapping is page-aligned (mmap) and `T` is at most
        // 4096-aligned (SharedPod), at least size_of::<T>() long (checked in
        // `map`), zero-filled at creation (a valid `T` by the SharedPod
        // contract) and lives as long as `self`; `T` is only used through
        // shared references and atomics.
        unsafe { &*ptr }
    }
}

impl<T: SharedPod> Drop for SharedFile<T> {
    fn drop(&mut self) {
        if self.owner {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[repr(C)]
    struct Two {
        a: AtomicU64,
        b: AtomicU64,
    }
    // SAFETY: repr(C), two atomics, zero is valid, no pointers.
    unsafe impl SharedPod for Two {}

    #[test]
    fn two_mappings_see_each_other_and_creator_unlinks() {
        let path = std::env::temp_dir().join(format!("bench-shared-test-{}", std::process::id()));
        let a = SharedFile::<Two>::create(&path).unwrap();
        let b = SharedFile::<Two>::open(&path).unwrap();
        assert_eq!(b.a.load(Ordering::Relaxed), 0);
        a.a.store(7, Ordering::Relaxed);
        b.b.store(9, Ordering::Relaxed);
        assert_eq!(b.a.load(Ordering::Relaxed), 7);
        assert_eq!(a.b.load(Ordering::Relaxed), 9);
        assert!(
            SharedFile::<Two>::create(&path).is_err(),
            "create must not reuse a file"
        );
        drop(b);
        drop(a);
        assert!(!path.exists());
    }
}
