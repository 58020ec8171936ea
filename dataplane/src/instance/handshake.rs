//! The `READY` handshake on the instance's unix socket.
//!
//! ```text
//! handler -> aetherd, on the stream socket named by AETHER_SOCKET:
//! +-----+-----+-----+-----+-----+
//! | 'R' | 'E' | 'A' | 'D' | 'Y' |   exactly 5 bytes, nothing after them
//! +-----+-----+-----+-----+-----+
//! ```
//!
//! Anything else (a wrong byte, EOF before 5 bytes, bytes after `READY` that
//! are already there when `READY` completes) is garbage. The socket lives in a
//! directory of mode 0700 and is itself 0600. Everything here is
//! non-blocking, so a caller can drive it from a tick or `poll(2)` on
//! [`Handshake::pollable_fd`].

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The handshake message.
pub const READY: &[u8; 5] = b"READY";

/// Progress of a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeStep {
    /// Nothing conclusive yet.
    Pending,
    /// Exactly `READY` arrived.
    Ready,
    /// Something else arrived; the bytes received.
    Garbage(Vec<u8>),
}

/// aetherd's side of one instance's handshake socket.
#[derive(Debug)]
pub struct Handshake {
    listener: UnixListener,
    conn: Option<UnixStream>,
    buf: Vec<u8>,
    path: PathBuf,
}

impl Handshake {
    /// Binds `path` (its directory is created with mode 0700; a stale socket
    /// file is replaced).
    pub fn bind(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            conn: None,
            buf: Vec::with_capacity(READY.len()),
            path: path.to_path_buf(),
        })
    }

    /// The socket path (value of `AETHER_SOCKET`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fd to wait on for progress (listener, then the connection).
    pub fn pollable_fd(&self) -> BorrowedFd<'_> {
        match &self.conn {
            Some(c) => c.as_fd(),
            None => self.listener.as_fd(),
        }
    }

    /// Advances without blocking.
    pub fn poll(&mut self) -> io::Result<HandshakeStep> {
        if self.conn.is_none() {
            match self.listener.accept() {
                Ok((c, _)) => {
                    c.set_nonblocking(true)?;
                    self.conn = Some(c);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(HandshakeStep::Pending)
                }
                Err(e) => return Err(e),
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(HandshakeStep::Pending);
        };
        let mut chunk = [0u8; 64];
        loop {
            let want = if self.buf.len() < READY.len() {
                READY.len() - self.buf.len()
            } else {
                chunk.len()
            };
            match conn.read(&mut chunk[..want]) {
                Ok(0) => {
                    return Ok(if self.buf.as_slice() == READY {
                        HandshakeStep::Ready
                    } else {
                        HandshakeStep::Garbage(self.buf.clone())
                    });
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if !READY.starts_with(&self.buf) {
                        return Ok(HandshakeStep::Garbage(self.buf.clone()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(if self.buf.as_slice() == READY {
                        HandshakeStep::Ready
                    } else {
                        HandshakeStep::Pending
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pair() -> (tempfile::TempDir, Handshake) {
        let dir = tempfile::tempdir().unwrap();
        let hs = Handshake::bind(&dir.path().join("s").join("i.sock")).unwrap();
        (dir, hs)
    }

    #[test]
    fn ready_in_pieces() {
        let (_d, mut hs) = pair();
        assert_eq!(hs.poll().unwrap(), HandshakeStep::Pending);
        let mut c = UnixStream::connect(hs.path()).unwrap();
        c.write_all(b"RE").unwrap();
        assert_eq!(hs.poll().unwrap(), HandshakeStep::Pending);
        c.write_all(b"ADY").unwrap();
        assert_eq!(hs.poll().unwrap(), HandshakeStep::Ready);
        let mode = fs::metadata(hs.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn garbage_and_short_eof() {
        let (_d, mut hs) = pair();
        let mut c = UnixStream::connect(hs.path()).unwrap();
        c.write_all(b"HELLO").unwrap();
        assert_eq!(
            hs.poll().unwrap(),
            HandshakeStep::Garbage(b"HELLO".to_vec())
        );
        let (_d, mut hs) = pair();
        let mut c = UnixStream::connect(hs.path()).unwrap();
        c.write_all(b"REA").unwrap();
        drop(c);
        assert_eq!(hs.poll().unwrap(), HandshakeStep::Garbage(b"REA".to_vec()));
        let (_d, mut hs) = pair();
        let mut c = UnixStream::connect(hs.path()).unwrap();
        c.write_all(b"READYX").unwrap();
        assert_eq!(
            hs.poll().unwrap(),
            HandshakeStep::Garbage(b"READYX".to_vec())
        );
    }
}
