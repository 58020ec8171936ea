//! HTTP/1.1 response framing for the load generator (httparse).
//!
//! The load generator sends one fixed keep-alive request and needs, from the
//! bytes received so far, only: is a whole response there, its status, and
//! how many bytes it spans. Responses must carry `Content-Length` (the native
//! handler, nginx and aetherd all send it for this handler); a chunked or
//! unframed response is reported as an error rather than guessed at.

use thiserror::Error;

/// Why response bytes cannot be framed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// httparse rejected the response head.
    #[error("malformed response head ({0})")]
    Malformed(httparse::Error),
    /// The response has no `Content-Length` (chunked or close-delimited).
    #[error("response {status} has no Content-Length (chunked or close-delimited bodies are not supported by the load generator)")]
    NoLength { status: u16 },
    /// `Content-Length` is not a number.
    #[error("response {status} has an invalid Content-Length")]
    BadLength { status: u16 },
}

/// A complete response at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed {
    pub status: u16,
    /// Length of the head (status line and headers, with the blank line).
    pub head: usize,
    /// Head plus body.
    pub total: usize,
}

/// The fixed request every client sends: `GET <path>` with keep-alive.
#[must_use]
pub fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: aether-gateway-bench\r\n\r\n")
        .into_bytes()
}

/// Frames the response at the front of `buf`: `Ok(None)` while incomplete.
///
/// # Errors
/// [`FrameError`] when the head is malformed or the body length unknown.
pub fn frame(buf: &[u8]) -> Result<Option<Framed>, FrameError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf).map_err(FrameError::Malformed)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp.code.unwrap_or(0);
    let body = if status == 204 || status == 304 || (100..200).contains(&status) {
        0
    } else {
        let h = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .ok_or(FrameError::NoLength { status })?;
        std::str::from_utf8(h.value)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or(FrameError::BadLength { status })?
    };
    let total = head + body;
    Ok((buf.len() >= total).then_some(Framed {
        status,
        head,
        total,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn frames_content_length_responses_incrementally() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 502 Bad";
        assert_eq!(frame(&r[..10]).unwrap(), None);
        assert_eq!(frame(&r[..40]).unwrap(), None);
        assert_eq!(
            frame(r).unwrap(),
            Some(Framed {
                status: 200,
                head: 38,
                total: 43
            })
        );
    }

    #[test]
    fn rejects_unframed_and_malformed_responses() {
        assert_eq!(
            frame(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(FrameError::NoLength { status: 200 })
        );
        assert_eq!(
            frame(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(FrameError::BadLength { status: 200 })
        );
        assert!(matches!(
            frame(b"HTTP/1.1 abc\r\n\r\n"),
            Err(FrameError::Malformed(_))
        ));
        assert_eq!(
            frame(b"HTTP/1.1 204 No Content\r\n\r\n")
                .unwrap()
                .unwrap()
                .total,
            27
        );
    }

    #[test]
    fn request_is_keep_alive_http11() {
        let r = get_request("/bench");
        assert!(r.starts_with(b"GET /bench HTTP/1.1\r\n"));
        assert!(r.ends_with(b"\r\n\r\n"));
        assert!(!String::from_utf8(r)
            .unwrap()
            .to_lowercase()
            .contains("connection"));
    }
}
