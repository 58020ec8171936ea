//! A TCP connection with a read buffer, as both sides of the proxy use it.
//!
//! The buffer holds `buf[start..end]` of received, unconsumed bytes. It starts
//! small and grows (up to [`MAX_BUFFER`]) only when a head does not fit, so an
//! idle keep-alive connection costs little memory.

use std::io;
use std::os::fd::{FromRawFd as _, IntoRawFd as _};

use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
use glommio::net::TcpStream;

use super::http::MAX_HEAD_BYTES;

/// Initial read buffer.
const INITIAL_BUFFER: usize = 16 * 1024;
/// The buffer never grows past this (a head is at most `MAX_HEAD_BYTES`).
const MAX_BUFFER: usize = MAX_HEAD_BYTES + 1024;

/// A buffered connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn {
    /// Wraps a glommio stream.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
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
        let free = self.buf.get_mut(self.end..).unwrap_or_default();
        let n = self.stream.read(free).await?;
        self.end += n;
        Ok(n)
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
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.stream),
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
