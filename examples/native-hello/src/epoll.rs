//! A minimal, safe wrapper over the epoll calls the server uses.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Interest in readability.
pub const IN: u32 = libc::EPOLLIN as u32;
/// Interest in writability.
pub const OUT: u32 = libc::EPOLLOUT as u32;
/// The peer closed its side (reported with [`IN`]).
pub const RDHUP: u32 = libc::EPOLLRDHUP as u32;
/// Error or hang-up (always reported).
pub const ERR_HUP: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
/// Wake only one of the epoll instances waiting on a shared listener.
pub const EXCLUSIVE: u32 = libc::EPOLLEXCLUSIVE as u32;

/// One ready event: the token it was registered with and its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub token: u64,
    pub flags: u32,
}

/// An epoll instance (closed on drop).
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// Creates an epoll instance with `EPOLL_CLOEXEC`.
    ///
    /// # Errors
    /// The `epoll_create1` error (e.g. `EMFILE`).
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; a negative result is an error.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Registers `fd` with interest `events`, reported with `token`.
    ///
    /// # Errors
    /// The `epoll_ctl` error.
    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    /// Changes the interest of a registered `fd`.
    ///
    /// # Errors
    /// The `epoll_ctl` error.
    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Removes `fd` (closing it also removes it).
    ///
    /// # Errors
    /// The `epoll_ctl` error.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event on this frame for the duration of
        // the call (the kernel copies it); both descriptors are plain integers.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &raw mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (−1: forever) and fills `out` with ready
    /// events; returns how many. An interrupted wait returns 0 events.
    ///
    /// # Errors
    /// The `epoll_wait` error other than `EINTR`.
    pub fn wait(
        &self,
        buf: &mut [libc::epoll_event],
        timeout_ms: i32,
        out: &mut Vec<Ready>,
    ) -> io::Result<usize> {
        let cap = libc::c_int::try_from(buf.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `buf` is valid writable memory for `cap` (≤ buf.len()) events
        // and stays borrowed for the duration of the call.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), buf.as_mut_ptr(), cap, timeout_ms) };
        out.clear();
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(err)
            };
        }
        let n = usize::try_from(n).unwrap_or(0);
        // Copy the (packed on x86_64) fields by value; never take references.
        out.extend(buf[..n].iter().map(|ev| Ready {
            token: ev.u64,
            flags: ev.events,
        }));
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn reports_readable_with_its_token() {
        let ep = Epoll::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        ep.add(b.as_raw_fd(), IN, 42).unwrap();
        let mut buf = [libc::epoll_event { events: 0, u64: 0 }; 4];
        let mut out = Vec::new();
        assert_eq!(ep.wait(&mut buf, 0, &mut out).unwrap(), 0);
        a.write_all(b"x").unwrap();
        assert_eq!(ep.wait(&mut buf, 1000, &mut out).unwrap(), 1);
        assert_eq!(out[0].token, 42);
        assert_ne!(out[0].flags & IN, 0);
        ep.modify(b.as_raw_fd(), OUT, 7).unwrap();
        ep.wait(&mut buf, 1000, &mut out).unwrap();
        assert_eq!(out[0].token, 7);
        ep.delete(b.as_raw_fd()).unwrap();
        assert_eq!(ep.wait(&mut buf, 0, &mut out).unwrap(), 0);
    }
}
