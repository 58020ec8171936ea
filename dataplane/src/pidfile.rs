//! aetherd's pidfile, held with an exclusive `flock` for aetherd's lifetime.
//!
//! The lock, not the file's existence, says whether an aetherd owns a state
//! directory: the kernel drops it when the process dies, even by SIGKILL, so
//! the next `up` can tell a stale state directory from a live one and clean
//! up after the dead one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why the pidfile could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("another aetherd (pid {pid}) already runs with state dir {dir}; stop it with `aetherctl down` or use another orchestrator.state_dir")]
    AlreadyRunning { pid: String, dir: PathBuf },
    #[error("pidfile {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A held pidfile; removed when dropped.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    file: File,
}

impl PidFile {
    /// Take `path` for this process. Fails when a live process holds it.
    pub fn acquire(path: &Path) -> Result<PidFile, PidFileError> {
        let io = |source| PidFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(PidFileError::AlreadyRunning {
                pid: pid.trim().to_string(),
                dir: path.parent().unwrap_or(path).to_path_buf(),
            });
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(PidFile {
            path: path.to_path_buf(),
            file,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        // The lock goes with the descriptor, after the file is gone, so no
        // new aetherd can see a removed-but-locked pidfile as ours.
        let _ = &self.file;
    }
}
