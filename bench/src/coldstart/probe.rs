//! One `GET` on a fresh connection, timed to the first byte of the answer.
//!
//! The quickstart handler (`examples/hello.py`, Python's `http.server`)
//! answers HTTP/1.0 without `Content-Length` and closes; through aetherd the
//! same answer arrives as HTTP/1.1 chunked. So the request asks for
//! `Connection: close` and the response is read to EOF, or to the last chunk
//! when it is chunked, and then checked: status `200` and the hello JSON.
//! The clock stops at the first byte; reading the rest is not timed.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use thiserror::Error;

/// What every answer's body must contain.
pub const HELLO: &str = "Hello from Aetherless!";

/// The path every request asks for.
pub const PATH: &str = "/coldstart";

/// Bound of every read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest answer kept (the hello answer is ≈ 250 bytes).
const MAX_ANSWER: usize = 64 * 1024;

/// Why a request did not get the hello answer.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// Writing the request or reading the answer failed (or timed out).
    #[error("{step}: {source}")]
    Io {
        step: &'static str,
        source: io::Error,
    },
    /// The peer closed before sending a byte.
    #[error("the connection was closed before any answer byte")]
    Empty,
    /// Something other than `200` with the hello JSON came back.
    #[error("unexpected answer (wanted 200 with {HELLO:?}): {answer:?}")]
    Unexpected { answer: String },
}

/// A checked answer.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    /// When its first byte was read.
    pub first_byte_at: Instant,
}

/// The request bytes.
fn request() -> Vec<u8> {
    format!(
        "GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: aether-coldstart-bench\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Sends the request on `stream`, reads the whole answer and checks it.
///
/// # Errors
/// [`ProbeError`] on i/o failure, an empty or a wrong answer.
pub fn fetch(mut stream: TcpStream) -> Result<Answer, ProbeError> {
    let io = |step| move |source| ProbeError::Io { step, source };
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(io("setting timeouts"))?;
    stream
        .write_all(&request())
        .map_err(io("writing the request"))?;
    let mut buf = vec![0u8; 4096];
    let mut filled = 0;
    let mut first_byte_at = None;
    loop {
        if filled == buf.len() {
            if buf.len() >= MAX_ANSWER {
                break;
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = match stream.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("reading the answer")(e)),
        };
        if n == 0 {
            break;
        }
        first_byte_at.get_or_insert_with(Instant::now);
        filled += n;
        if complete_chunked(&buf[..filled]) {
            break;
        }
    }
    let first_byte_at = first_byte_at.ok_or(ProbeError::Empty)?;
    check(&buf[..filled])?;
    Ok(Answer { first_byte_at })
}

/// Whether `answer` is a chunked response whose last chunk arrived.
fn complete_chunked(answer: &[u8]) -> bool {
    let Some(head_end) = find(answer, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
    head.contains("transfer-encoding: chunked") && answer.ends_with(b"0\r\n\r\n")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `Ok` for a `200` whose body carries [`HELLO`].
fn check(answer: &[u8]) -> Result<(), ProbeError> {
    let text = String::from_utf8_lossy(answer);
    let status_ok = text
        .split_once("\r\n")
        .map(|(line, _)| line)
        .is_some_and(|line| {
            line.starts_with("HTTP/1.") && line.split_whitespace().nth(1) == Some("200")
        });
    if status_ok && text.contains(HELLO) {
        Ok(())
    } else {
        Err(ProbeError::Unexpected {
            answer: text.chars().take(300).collect(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves one connection with `answer` (written in two parts, the second
    /// after `gap`), then closes.
    fn serve(answer: &'static [u8], split: usize, gap: Duration) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let n = s.read(&mut req).unwrap();
            assert!(req[..n].starts_with(b"GET /coldstart HTTP/1.1\r\n"));
            s.write_all(&answer[..split]).unwrap();
            std::thread::sleep(gap);
            s.write_all(&answer[split..]).unwrap();
        });
        addr
    }

    #[test]
    fn close_delimited_http10_answer_is_read_to_eof() {
        let answer: &'static [u8] = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"message\": \"Hello from Aetherless!\", \"path\": \"/coldstart\"}";
        let addr = serve(answer, 10, Duration::from_millis(50));
        let t0 = Instant::now();
        let a = fetch(TcpStream::connect(addr).unwrap()).unwrap();
        // The first byte came before the rest: the clock stops at it.
        assert!(a.first_byte_at.duration_since(t0) < Duration::from_millis(45));
        assert!(t0.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn chunked_answer_ends_at_its_last_chunk() {
        let answer: &'static [u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3b\r\n{\"message\": \"Hello from Aetherless!\", \"path\": \"/coldstart\"}\r\n0\r\n\r\n";
        // The server keeps the connection open for a while after the last
        // chunk; fetch must not wait for the close.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).unwrap();
            s.write_all(answer).unwrap();
            std::thread::sleep(Duration::from_secs(2));
        });
        let t0 = Instant::now();
        fetch(TcpStream::connect(addr).unwrap()).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(1));
        server.join().unwrap();
    }

    #[test]
    fn wrong_status_or_body_and_empty_answers_are_errors() {
        let addr = serve(
            b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n",
            5,
            Duration::ZERO,
        );
        let e = fetch(TcpStream::connect(addr).unwrap()).unwrap_err();
        assert!(matches!(e, ProbeError::Unexpected { .. }), "{e}");
        let addr = serve(b"HTTP/1.0 200 OK\r\n\r\nhi", 5, Duration::ZERO);
        let e = fetch(TcpStream::connect(addr).unwrap()).unwrap_err();
        assert!(e.to_string().contains("hi"), "{e}");
        let addr = serve(b"", 0, Duration::ZERO);
        let e = fetch(TcpStream::connect(addr).unwrap()).unwrap_err();
        assert!(matches!(e, ProbeError::Empty), "{e}");
    }
}
