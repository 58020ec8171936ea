//! A mount namespace whose `/run` is a tmpfs, for `criu restore` to keep its
//! kernel-probe cache in.
//!
//! CRIU probes the kernel (≈ 100 ms of a restore here) unless it finds
//! `/run/criu.kdat`, and it writes that file only when `/run` is a tmpfs. On
//! hosts where `/run` is not one, restores run in this namespace instead: a
//! copy of the host's mounts (slave propagation: later host mounts appear in
//! it) with a private tmpfs on `/run`, made once by a short-lived helper
//! process and kept alive by its fd. The first restore writes the cache, the
//! next ones read it.
//!
//! What the restored process sees: the host's mounts, except an empty private
//! `/run`. A process restored this way lives in this mount namespace, not the
//! host's, so it cannot be dumped again by a `criu` running in the host's.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::CriuError;

/// The `/run`-on-tmpfs mount namespace.
#[derive(Debug)]
pub struct RunCacheNs {
    fd: OwnedFd,
}

fn cstr(s: &str) -> CString {
    // The literals passed here contain no NUL byte.
    CString::new(s).unwrap_or_default()
}

impl RunCacheNs {
    /// Makes the namespace (a helper `sleep` process unshares it, mounts the
    /// tmpfs, and is killed once its namespace fd is open).
    pub fn new() -> Result<Self, CriuError> {
        let (root, run, tmpfs, opts) = (cstr("/"), cstr("/run"), cstr("tmpfs"), cstr("mode=755"));
        let prepare = move || {
            // SAFETY: unshare(2) is a raw syscall, async-signal-safe; it gives
            // this (child) process its own mount namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: mount(2) with a NUL-terminated target made before the
            // fork; changes propagation in this child's namespace only.
            let rc = unsafe {
                libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: mount(2) with NUL-terminated strings made before the
            // fork; mounts in this child's namespace only.
            let rc = unsafe {
                libc::mount(
                    tmpfs.as_ptr(),
                    run.as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    opts.as_ptr().cast(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        let sleep = PathBuf::from("/bin/sleep");
        let mut cmd = Command::new(&sleep);
        cmd.arg("3600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the closure only makes raw syscalls (see above).
        unsafe {
            cmd.pre_exec(prepare);
        }
        let mut child = cmd.spawn().map_err(|source| CriuError::Io {
            op: "starting the /run namespace helper",
            path: sleep.clone(),
            source,
        })?;
        let ns_path = PathBuf::from(format!("/proc/{}/ns/mnt", child.id()));
        let opened = File::open(&ns_path);
        let _ = child.kill();
        let _ = child.wait();
        let fd = opened.map_err(|source| CriuError::Io {
            op: "opening",
            path: ns_path,
            source,
        })?;
        Ok(Self { fd: fd.into() })
    }

    /// The namespace fd (`setns(fd, CLONE_NEWNS)` enters it).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
