//! The handler side of the `READY` handshake.
//!
//! ```text
//! handler ──connect──▶ $AETHER_SOCKET (unix stream socket, aetherd listens)
//! handler ──"READY"──▶ exactly these 5 bytes, nothing before or after
//! ```
//!
//! The connection stays open for the handler's lifetime (as in `hello.py`,
//! whose socket object lives until the process exits).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The handshake message.
pub const READY: &[u8; 5] = b"READY";

/// Errors announcing readiness.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// Connecting to the orchestrator's socket failed.
    #[error("cannot connect to AETHER_SOCKET {path}: {source}; is aetherd running and did it set AETHER_SOCKET?")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Writing `READY` failed.
    #[error("cannot send READY on {path}: {source}")]
    Send {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Connects to `path` and sends `READY`; returns the connection, which the
/// caller keeps open while it serves.
///
/// # Errors
/// [`HandshakeError`] naming the socket.
pub fn announce_ready(path: &Path) -> Result<UnixStream, HandshakeError> {
    let mut stream = UnixStream::connect(path).map_err(|source| HandshakeError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    stream
        .write_all(READY)
        .map_err(|source| HandshakeError::Send {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(stream)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    #[test]
    fn sends_exactly_ready() {
        let dir = std::env::temp_dir().join(format!("hello-native-hs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let conn = announce_ready(&path).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        drop(conn);
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"READY");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_socket_names_the_path() {
        let err = announce_ready(Path::new("/nonexistent/aether.sock")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/aether.sock"),
            "{err}"
        );
    }
}
