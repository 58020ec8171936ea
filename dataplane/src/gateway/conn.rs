//! A TCP connection with a read buffer, as both sides of the proxy use it.
//!
//! The buffer holds `buf[start..end]` of received, unconsumed bytes. It starts
//! small and grows (up to [`MAX_BUFFER`]) only when a head does not fit, so an
//! idle keep-alive connection costs little memory.
//!
//! Reads normally wait the executor's way (glommio's io_uring poll). When the
//! core has nothing else to do, [`Conn::fill_now`] instead busy-polls this
//! socket and the core's other client sockets for a few tens of µs, which
//! skips the executor's turn, park and wake-up (glommio 0.9 re-arms its
//! preemption timers with 3–4 `io_uring_enter`s every turn, and parking adds
//! a `membarrier` and 2–3 more).

use std::io;
use std::os::fd::{AsRawFd as _, RawFd};
use std::os::fd::{FromRawFd as _, IntoRawFd as _};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
use glommio::net::TcpStream;

use super::http::MAX_HEAD_BYTES;

/// Initial read buffer.
const INITIAL_BUFFER: usize = 16 * 1024;
/// The buffer never grows past this (a head is at most `MAX_HEAD_BYTES`).
const MAX_BUFFER: usize = MAX_HEAD_BYTES + 1024;
/// Most other sockets [`Conn::fill_now`] watches besides its own.
pub const MAX_WATCHED: usize = 16;
/// After a busy-poll that found nothing in time, this many following
/// [`Conn::fill_now`] calls on the same connection do not busy-poll (a slow
/// handler or a client that thinks between requests costs little cpu).
const SPIN_BACKOFF: u8 = 8;

/// How a busy-poll ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Polled {
    /// This socket is readable.
    Own,
    /// Another watched socket is.
    Other,
    /// Neither within the spin time.
    TimedOut,
}

/// A buffered connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// [`Conn::fill_now`] calls left that skip the busy-poll.
    spin_skip: u8,
}

impl Conn {
    /// Wraps a glommio stream.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
            spin_skip: 0,
        }
    }

    /// Adopts a connected std socket (e.g. one created inside an instance's
    /// network namespace). Must run inside a glommio executor.
    pub fn from_std(stream: std::net::TcpStream) -> Self {
        let fd = stream.into_raw_fd();
        // SAFETY: `fd` comes from `into_raw_fd` on a connected TCP socket, so
        // it is open, a TCP stream, and owned by nobody else from here on;
        // glommio's stream takes ownership and closes it on drop.
        Self::new(unsafe { TcpStream::from_raw_fd(fd) })
    }

    /// The underlying stream.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Received bytes not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    /// Consumes `n` buffered bytes (clamped to what is buffered).
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream. Makes room
    /// by moving buffered bytes to the front, and grows the buffer when it is
    /// full of unconsumed bytes (up to [`MAX_BUFFER`]; beyond, `Ok(0)` is
    /// impossible so an `InvalidData` error is returned).
    pub async fn fill(&mut self) -> io::Result<usize> {
        self.make_room()?;
        let free = self.buf.get_mut(self.end..).unwrap_or_default();
        let n = self.stream.read(free).await?;
        self.end += n;
        Ok(n)
    }

    /// [`Conn::fill`] without the executor: reads what is there, else
    /// busy-polls for at most `spin` until this socket is readable, and reads
    /// then. Returns `None` when nothing arrived in time or when one of
    /// `wake_on` (other sockets whose readiness the executor must handle; at
    /// most [`MAX_WATCHED`] are watched) became readable first: the caller
    /// then waits the executor's way. After a busy-poll that timed out, the
    /// next [`SPIN_BACKOFF`] calls only try the socket once.
    pub fn fill_now(&mut self, spin: Duration, wake_on: &[RawFd]) -> Option<io::Result<usize>> {
        if let Err(e) = self.make_room() {
            return Some(Err(e));
        }
        if let Some(r) = self.try_recv() {
            return Some(r);
        }
        if self.spin_skip > 0 {
            self.spin_skip -= 1;
            return None;
        }
        match self.poll_readable(spin, wake_on) {
            Polled::Own => self.try_recv(),
            Polled::Other => None,
            Polled::TimedOut => {
                self.spin_skip = SPIN_BACKOFF;
                None
            }
        }
    }

    fn make_room(&mut self) -> io::Result<()> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < MAX_BUFFER {
                self.buf.resize(MAX_BUFFER, 0);
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "read buffer full of unconsumed bytes",
                ));
            }
        }
        Ok(())
    }

    /// One `recv` that does not wait: `None` when no byte is there yet.
    fn try_recv(&mut self) -> Option<io::Result<usize>> {
        let fd = self.stream.as_raw_fd();
        let free = self.buf.get_mut(self.end..).unwrap_or_default();
        // SAFETY: `free` is a writable slice of `free.len()` bytes owned by
        // this Conn, and recv writes at most that many bytes into it; `fd` is
        // the stream's open socket.
        let n = unsafe { libc::recv(fd, free.as_mut_ptr().cast(), free.len(), libc::MSG_DONTWAIT) };
        match usize::try_from(n) {
            Ok(n) => {
                self.end += n;
                Some(Ok(n))
            }
            Err(_) => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => None,
                    _ => Some(Err(e)),
                }
            }
        }
    }

    /// Busy-polls (`ppoll(2)` with a zero timeout, then `sched_yield(2)` so
    /// that a handler sharing the cpu runs) until this socket is readable
    /// (data, end of stream or error), one of `wake_on` is, or `spin` passed.
    fn poll_readable(&self, spin: Duration, wake_on: &[RawFd]) -> Polled {
        let own = self.stream.as_raw_fd();
        let none = libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        };
        let mut fds = [none; MAX_WATCHED + 1];
        let mut n: usize = 0;
        for fd in std::iter::once(own).chain(wake_on.iter().copied().filter(|&fd| fd != own)) {
            let Some(slot) = fds.get_mut(n) else { break };
            *slot = libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            };
            n += 1;
        }
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let deadline = Instant::now() + spin;
        loop {
            // SAFETY: `fds` holds `n` (<= its length) initialized pollfds for
            // open descriptors (this Conn's and the core's live client
            // sockets; one closed meanwhile only yields POLLNVAL); `zero` is
            // a valid timespec and the signal mask pointer is null
            // (unchanged). ppoll writes only the `revents` fields of those
            // `n` entries and does not block.
            let ready = unsafe {
                // n <= MAX_WATCHED + 1: fits nfds_t.
                libc::ppoll(
                    fds.as_mut_ptr(),
                    n as libc::nfds_t,
                    &raw const zero,
                    std::ptr::null(),
                )
            };
            if ready > 0 && fds.first().is_some_and(|f| f.revents != 0) {
                return Polled::Own;
            }
            if ready != 0 {
                // Another socket, or a poll error: the executor handles it.
                return Polled::Other;
            }
            if Instant::now() >= deadline {
                return Polled::TimedOut;
            }
            // SAFETY: sched_yield takes no arguments and touches no memory.
            unsafe { libc::sched_yield() };
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data).await
    }

    /// Shuts down the write side (FIN), keeping the read side open.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .await
            .map_err(io::Error::from)
    }

    /// Checks without blocking whether the peer has closed or reset an idle
    /// connection (a pooled one about to be reused). Bytes the peer sent
    /// unasked also make the connection unusable.
    pub fn peer_gone(&self) -> bool {
        let mut fds = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: `fds` is a valid, initialized pollfd for an fd this Conn
        // owns; nfds is 1 and the timeout 0, so poll neither blocks nor
        // writes beyond that one struct.
        let n = unsafe { libc::poll(&raw mut fds, 1, 0) };
        // Readable data, hang-up or error on an idle connection all mean it
        // must not carry a new request.
        n != 0
    }
}
