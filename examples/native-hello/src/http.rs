//! Request framing and the response bytes.
//!
//! One call of [`Responder::answer`] consumes at most one request head from
//! the front of the connection's buffer and appends its whole response to the
//! output buffer, so pipelined requests are answered in order.
//!
//! Response to `GET /test` (keep-alive):
//!
//! ```text
//! HTTP/1.1 200 OK\r\n
//! Content-Type: application/json\r\n
//! Content-Length: 54\r\n
//! \r\n
//! {"message": "Hello from Aetherless!", "path": "/test"}
//! ```
//!
//! `Connection: close` is added when the connection ends after the response;
//! `Connection: keep-alive` when an HTTP/1.0 client asked to keep it.
//!
//! The path is JSON-escaped the way `hello.py` does it: Python decodes the
//! request line as ISO-8859-1 and `json.dumps` escapes every non-ASCII
//! character, so each byte ≥ 0x80 becomes `\u00xx`.

use std::io::Write;

/// Largest request head accepted; a longer one gets `431` and the connection closes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Header slots given to httparse; more headers get `431`.
pub const MAX_HEADERS: usize = 64;

/// What [`Responder::answer`] did with the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// No complete request head yet: read more.
    Incomplete,
    /// A response was appended to the output.
    Done {
        /// Bytes of the request head consumed from the buffer.
        consumed: usize,
        /// Request body bytes that follow the head and must be discarded.
        body: u64,
        /// Whether the connection stays open after this response.
        keep_alive: bool,
    },
}

/// Builds responses; owns a scratch buffer reused across requests.
#[derive(Debug, Default)]
pub struct Responder {
    body: Vec<u8>,
}

impl Responder {
    /// Answers the request at the front of `buf` into `out`.
    pub fn answer(&mut self, buf: &[u8], out: &mut Vec<u8>) -> Answer {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let consumed = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => {
                return Answer::Incomplete
            }
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return Self::fail(out, 431, "Request Header Fields Too Large", buf.len());
            }
            Err(_) => return Self::fail(out, 400, "Bad Request", buf.len()),
        };
        let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
            return Self::fail(out, 400, "Bad Request", buf.len());
        };
        let mut keep_alive = minor == 1;
        let mut body: u64 = 0;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("connection") {
                if has_token(h.value, b"close") {
                    keep_alive = false;
                } else if has_token(h.value, b"keep-alive") {
                    keep_alive = true;
                }
            } else if h.name.eq_ignore_ascii_case("content-length") {
                match std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                {
                    Some(n) => body = n,
                    None => return Self::fail(out, 400, "Bad Request", buf.len()),
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // This handler reads no request bodies; without decoding the
                // chunks it cannot find the next request, so it closes.
                return Self::fail(out, 501, "Not Implemented", buf.len());
            }
        }
        let head_only = method == "HEAD";
        if method != "GET" && !head_only {
            self.body.clear();
            self.body.extend_from_slice(b"Unsupported method\n");
            Self::head(
                out,
                501,
                "Not Implemented",
                "text/plain",
                self.body.len(),
                minor,
                keep_alive,
            );
            out.extend_from_slice(&self.body);
            return Answer::Done {
                consumed,
                body,
                keep_alive,
            };
        }
        self.body.clear();
        self.body
            .extend_from_slice(br#"{"message": "Hello from Aetherless!", "path": ""#);
        escape_json_latin1(path.as_bytes(), &mut self.body);
        self.body.extend_from_slice(br#""}"#);
        Self::head(
            out,
            200,
            "OK",
            "application/json",
            self.body.len(),
            minor,
            keep_alive,
        );
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        Answer::Done {
            consumed,
            body,
            keep_alive,
        }
    }

    fn head(
        out: &mut Vec<u8>,
        status: u16,
        reason: &str,
        ctype: &str,
        len: usize,
        minor: u8,
        keep_alive: bool,
    ) {
        let connection = match (keep_alive, minor) {
            (false, _) => "Connection: close\r\n",
            (true, 0) => "Connection: keep-alive\r\n",
            (true, _) => "",
        };
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\n{connection}\r\n"
        );
    }

    /// An error response after which the connection closes; consumes `len`.
    fn fail(out: &mut Vec<u8>, status: u16, reason: &str, len: usize) -> Answer {
        let text = format!("{status} {reason}\n");
        Self::head(out, status, reason, "text/plain", text.len(), 1, false);
        out.extend_from_slice(text.as_bytes());
        Answer::Done {
            consumed: len,
            body: 0,
            keep_alive: false,
        }
    }
}

/// Whether a comma-separated header value contains `token` (ASCII case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Appends `bytes`, each taken as one ISO-8859-1 character, JSON-escaped as
/// Python's `json.dumps(..., ensure_ascii=True)` does.
pub fn escape_json_latin1(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(br#"\""#),
            b'\\' => out.extend_from_slice(br"\\"),
            b'\n' => out.extend_from_slice(br"\n"),
            b'\r' => out.extend_from_slice(br"\r"),
            b'\t' => out.extend_from_slice(br"\t"),
            0x08 => out.extend_from_slice(br"\b"),
            0x0c => out.extend_from_slice(br"\f"),
            0x00..=0x1f | 0x80..=0xff => {
                out.extend_from_slice(br"\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    fn answer(req: &[u8]) -> (Answer, String) {
        let mut out = Vec::new();
        let a = Responder::default().answer(req, &mut out);
        (a, String::from_utf8(out).unwrap())
    }

    #[test]
    fn get_answers_the_quickstart_json() {
        let req = b"GET /test HTTP/1.1\r\nHost: x\r\n\r\n";
        let (a, out) = answer(req);
        assert_eq!(
            a,
            Answer::Done {
                consumed: req.len(),
                body: 0,
                keep_alive: true
            }
        );
        let body = r#"{"message": "Hello from Aetherless!", "path": "/test"}"#;
        assert_eq!(
            out,
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        );
    }

    #[test]
    fn partial_head_asks_for_more_and_pipelining_takes_one() {
        let (a, out) = answer(b"GET / HTTP/1.1\r\nHost");
        assert_eq!(a, Answer::Incomplete);
        assert!(out.is_empty());
        let two = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let (a, out) = answer(two);
        assert_eq!(
            a,
            Answer::Done {
                consumed: 19,
                body: 0,
                keep_alive: true
            }
        );
        assert!(out.ends_with(r#""path": "/a"}"#), "{out}");
    }

    #[test]
    fn connection_semantics_follow_http_versions() {
        let (a, out) = answer(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n");
        assert!(matches!(
            a,
            Answer::Done {
                keep_alive: false,
                ..
            }
        ));
        assert!(out.contains("Connection: close\r\n"));
        let (a, _) = answer(b"GET / HTTP/1.0\r\n\r\n");
        assert!(matches!(
            a,
            Answer::Done {
                keep_alive: false,
                ..
            }
        ));
        let (a, out) = answer(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(matches!(
            a,
            Answer::Done {
                keep_alive: true,
                ..
            }
        ));
        assert!(out.contains("Connection: keep-alive\r\n"));
    }

    #[test]
    fn head_has_length_but_no_body_and_post_gets_501_after_its_body() {
        let (_, out) = answer(b"HEAD /x HTTP/1.1\r\n\r\n");
        assert!(out.contains("Content-Length: 51\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\n"));
        let req = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
        let (a, out) = answer(req);
        assert_eq!(
            a,
            Answer::Done {
                consumed: req.len(),
                body: 5,
                keep_alive: true
            }
        );
        assert!(out.starts_with("HTTP/1.1 501 Not Implemented\r\n"), "{out}");
    }

    #[test]
    fn malformed_oversized_and_chunked_requests_close() {
        let (a, out) = answer(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n");
        assert!(matches!(
            a,
            Answer::Done {
                keep_alive: false,
                ..
            }
        ));
        assert!(out.starts_with("HTTP/1.1 400 "));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 1, b'a');
        let (_, out) = answer(&big);
        assert!(out.starts_with("HTTP/1.1 431 "));
        let (_, out) = answer(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 501 "));
        let (_, out) = answer(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 400 "));
    }

    #[test]
    fn path_escaping_matches_python_json_dumps() {
        // json.dumps('/a"b\\c\x01\xe9') == '"/a\\"b\\\\c\\u0001\\u00e9"'
        let mut out = Vec::new();
        escape_json_latin1(b"/a\"b\\c\x01\xe9\t~", &mut out);
        assert_eq!(out, br#"/a\"b\\c\u0001\u00e9\t~"#);
    }
}
