//! HTTP/1.1 message heads for the gateway: parsing (httparse), body framing
//! (RFC 9112 §6), hop-by-hop filtering (RFC 9110 §7.6.1) and serialization of
//! the heads the gateway forwards.
//!
//! The gateway never forwards a head byte for byte: it parses the head, decides
//! the framing of the body that follows, and writes a fresh head for the other
//! side with the end-to-end fields kept in their original order and case and
//! the hop-by-hop ones dropped:
//!
//! ```text
//! client → gateway                         gateway → upstream
//! POST /x HTTP/1.0                          POST /x HTTP/1.1
//! Host: a                                   Host: a
//! Connection: keep-alive, X-Hop             content-length: 5
//! X-Hop: 1                 ───────────▶     x-forwarded-for: 10.0.0.1
//! Keep-Alive: timeout=5
//! Content-Length: 5
//! ```
//!
//! Responses go the same way in the other direction; a body the upstream
//! frames with `chunked` or by closing the connection is re-framed as
//! `chunked` for an HTTP/1.1 client (so its connection stays open) and sent
//! close-delimited to an HTTP/1.0 client.

use std::io::Write as _;

/// Largest request or response head (request line, fields, final CRLF).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in one head.
pub const MAX_HEADERS: usize = 100;
/// Most tokens honoured in `Connection` fields; more is treated as malformed.
const MAX_CONNECTION_TOKENS: usize = 16;

/// Why a message head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The head did not end within [`MAX_HEAD_BYTES`].
    #[error("message head exceeds {limit} bytes")]
    HeadTooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// More than [`MAX_HEADERS`] header fields.
    #[error("message head has more than {limit} header fields")]
    TooManyHeaders {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// httparse rejected the head.
    #[error("malformed message head: {0}")]
    Malformed(httparse::Error),
    /// A `Content-Length` that is not a decimal number.
    #[error("invalid Content-Length {value:?}")]
    InvalidContentLength {
        /// The field value as received (lossy UTF-8).
        value: String,
    },
    /// Several `Content-Length` fields that disagree.
    #[error("conflicting Content-Length values {first} and {second}")]
    ConflictingContentLength {
        /// The first value seen.
        first: u64,
        /// The differing later value.
        second: u64,
    },
    /// Both `Transfer-Encoding` and `Content-Length` in a request: a request
    /// smuggling vector, refused (RFC 9112 §6.1).
    #[error("request has both Transfer-Encoding and Content-Length")]
    TransferEncodingWithContentLength,
    /// A transfer coding other than plain `chunked`.
    #[error("unsupported transfer coding {coding:?} (only chunked is supported)")]
    UnsupportedTransferCoding {
        /// The field value as received (lossy UTF-8).
        coding: String,
    },
    /// `Transfer-Encoding` whose last coding is not `chunked`, in a request.
    #[error("Transfer-Encoding {coding:?} does not end with chunked")]
    ChunkedNotLast {
        /// The field value as received (lossy UTF-8).
        coding: String,
    },
    /// An HTTP/1.1 request without `Host` (RFC 9112 §3.2).
    #[error("HTTP/1.1 request without a Host field")]
    MissingHost,
    /// More than one `Host` field.
    #[error("request with more than one Host field")]
    DuplicateHost,
    /// Too many `Connection` tokens.
    #[error("more than {limit} Connection tokens")]
    TooManyConnectionTokens {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A method the gateway does not proxy (`CONNECT` tunnels).
    #[error("method {method} is not supported by the gateway")]
    UnsupportedMethod {
        /// The method as received.
        method: String,
    },
    /// The upstream answered `101 Switching Protocols` although the gateway
    /// never forwards `Upgrade`.
    #[error("upstream switched protocols without being asked to")]
    UnexpectedUpgrade,
}

impl HeadError {
    /// The status the gateway answers a client with when its request head
    /// fails this way.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadTooLarge { .. } | Self::TooManyHeaders { .. } => 431,
            Self::UnsupportedTransferCoding { .. } | Self::UnsupportedMethod { .. } => 501,
            Self::UnexpectedUpgrade => 502,
            _ => 400,
        }
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// Who sent a request and to which address, for the fields the gateway adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr<'a> {
    /// The client's IP address, as text.
    pub ip: &'a [u8],
    /// The gateway address the client connected to, as text (`host:port`).
    pub host: &'a [u8],
}

/// What the gateway needs to know about a parsed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes the head occupied in the input (to consume).
    pub head_len: usize,
    /// `HEAD` request: the response has no body.
    pub is_head: bool,
    /// An idempotent method (RFC 9110 §9.2.2), which may be retried on a
    /// fresh connection when a reused one fails before any response byte.
    pub idempotent: bool,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// The request body's framing (never [`Framing::UntilClose`]).
    pub body: Framing,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
}

/// What the gateway needs to know about a parsed upstream response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes the head occupied in the input (to consume).
    pub head_len: usize,
    /// Status code.
    pub status: u16,
    /// A 1xx interim response: another head follows.
    pub interim: bool,
    /// How the upstream delimits the body.
    pub upstream_body: Framing,
    /// The upstream connection may be reused after the body.
    pub upstream_keep_alive: bool,
    /// How the gateway delimits the body towards the client.
    pub client_body: Framing,
    /// The client connection stays open after this response.
    pub client_keep_alive: bool,
}

/// What of the client's request shapes the response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientView {
    /// The request was `HEAD`.
    pub is_head: bool,
    /// Client's HTTP minor version.
    pub minor_version: u8,
    /// The client connection may stay open (client asked, no drain).
    pub keep_alive: bool,
}

/// Fields dropped at each hop (RFC 9110 §7.6.1), besides those the
/// `Connection` field names. `Expect` is answered by the gateway itself.
/// `Content-Length`/`Transfer-Encoding` are re-written from the framing.
fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
        "proxy-connection",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
}

/// Tokens of the `Connection` fields of one head.
struct ConnectionTokens<'a> {
    tokens: [&'a [u8]; MAX_CONNECTION_TOKENS],
    len: usize,
    close: bool,
    keep_alive: bool,
}

impl<'a> ConnectionTokens<'a> {
    fn collect(headers: &[httparse::Header<'a>]) -> Result<Self, HeadError> {
        let mut this = Self {
            tokens: [&[]; MAX_CONNECTION_TOKENS],
            len: 0,
            close: false,
            keep_alive: false,
        };
        for h in headers {
            if !h.name.eq_ignore_ascii_case("connection") {
                continue;
            }
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.is_empty() {
                    continue;
                }
                if token.eq_ignore_ascii_case(b"close") {
                    this.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    this.keep_alive = true;
                } else {
                    let slot = this.tokens.get_mut(this.len).ok_or(
                        HeadError::TooManyConnectionTokens {
                            limit: MAX_CONNECTION_TOKENS,
                        },
                    )?;
                    *slot = token;
                    this.len += 1;
                }
            }
        }
        Ok(this)
    }

    fn names(&self, name: &str) -> bool {
        self.tokens
            .get(..self.len)
            .unwrap_or_default()
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    }
}

fn lossy(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    let text = value.trim_ascii();
    let invalid = || HeadError::InvalidContentLength {
        value: lossy(value),
    };
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(invalid)
}

/// Content-Length across all fields of a head; `None` when absent.
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, HeadError> {
    let mut found: Option<u64> = None;
    for h in headers {
        if !h.name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        // A list form "5, 5" is allowed when all members agree.
        for part in h.value.split(|&b| b == b',') {
            let v = parse_content_length(part)?;
            match found {
                Some(first) if first != v => {
                    return Err(HeadError::ConflictingContentLength { first, second: v })
                }
                _ => found = Some(v),
            }
        }
    }
    Ok(found)
}

/// The transfer codings of a head: `None` when absent, `Some(true)` when it is
/// exactly `chunked`.
fn transfer_encoding(headers: &[httparse::Header<'_>]) -> Result<Option<bool>, HeadError> {
    let mut codings: Option<(usize, bool)> = None; // (count, last is chunked)
    let mut raw = Vec::new();
    for h in headers {
        if !h.name.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        raw.push(h.value);
        for c in h.value.split(|&b| b == b',') {
            let c = c.trim_ascii();
            if c.is_empty() {
                continue;
            }
            let (n, _) = codings.unwrap_or((0, false));
            codings = Some((n + 1, c.eq_ignore_ascii_case(b"chunked")));
        }
    }
    let joined = || lossy(&raw.join(&b", "[..]));
    match codings {
        None if raw.is_empty() => Ok(None),
        None => Err(HeadError::UnsupportedTransferCoding { coding: joined() }),
        Some((1, true)) => Ok(Some(true)),
        Some((_, true)) => Err(HeadError::UnsupportedTransferCoding { coding: joined() }),
        Some((_, false)) => Err(HeadError::ChunkedNotLast { coding: joined() }),
    }
}

fn map_parse_error(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders { limit: MAX_HEADERS },
        other => HeadError::Malformed(other),
    }
}

/// The head's length from httparse's verdict on `buffered` bytes; `None`
/// while incomplete. Enforces [`MAX_HEAD_BYTES`].
fn head_len(
    parsed: Result<httparse::Status<usize>, httparse::Error>,
    buffered: usize,
) -> Result<Option<usize>, HeadError> {
    let too_large = HeadError::HeadTooLarge {
        limit: MAX_HEAD_BYTES,
    };
    match parsed.map_err(map_parse_error)? {
        httparse::Status::Complete(n) if n > MAX_HEAD_BYTES => Err(too_large),
        httparse::Status::Complete(n) => Ok(Some(n)),
        // A partial head that already fills the limit can only end beyond it.
        httparse::Status::Partial if buffered >= MAX_HEAD_BYTES => Err(too_large),
        httparse::Status::Partial => Ok(None),
    }
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn write_framing(out: &mut Vec<u8>, framing: Framing) {
    match framing {
        Framing::Length(n) => {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::UntilClose => {}
    }
}

/// Parses a request head at the start of `buf`. `Ok(None)`: incomplete, read
/// more. On success the head to send upstream is appended to `out`;
/// `client.ip` (e.g. `b"10.0.0.1"`) is appended to `X-Forwarded-For`;
/// `client.host` is sent as `Host` for an HTTP/1.0 request without one (the
/// gateway speaks HTTP/1.1 upstream, where `Host` is mandatory).
pub fn parse_request(
    buf: &[u8],
    client: &ClientAddr<'_>,
    out: &mut Vec<u8>,
) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Some(head_len) = head_len(req.parse(buf), buf.len())? else {
        return Ok(None);
    };
    // httparse guarantees these are set on Complete.
    let (Some(method), Some(path), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return Err(HeadError::Malformed(httparse::Error::Token));
    };
    let headers = &*req.headers;
    if method == "CONNECT" {
        return Err(HeadError::UnsupportedMethod {
            method: method.to_owned(),
        });
    }

    let conn = ConnectionTokens::collect(headers)?;
    let te = transfer_encoding(headers)?;
    let cl = content_length(headers)?;
    let body = match (te, cl) {
        (Some(_), Some(_)) => return Err(HeadError::TransferEncodingWithContentLength),
        (Some(_), None) if minor_version == 0 => {
            return Err(HeadError::UnsupportedTransferCoding {
                coding: "chunked in HTTP/1.0".into(),
            })
        }
        (Some(_), None) => Framing::Chunked,
        (None, Some(0) | None) => Framing::Empty,
        (None, Some(n)) => Framing::Length(n),
    };
    let hosts = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .count();
    match hosts {
        0 if minor_version == 1 => return Err(HeadError::MissingHost),
        0 | 1 => {}
        _ => return Err(HeadError::DuplicateHost),
    }
    let expect_continue = headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("expect")
            && h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
    });
    let keep_alive = if minor_version == 1 {
        !conn.close
    } else {
        conn.keep_alive && !conn.close
    };

    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded = false;
    for h in headers {
        if is_hop_by_hop(h.name) || conn.names(h.name) {
            continue;
        }
        if h.name.eq_ignore_ascii_case("x-forwarded-for") && !forwarded {
            forwarded = true;
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b", ");
            out.extend_from_slice(client.ip);
            out.extend_from_slice(b"\r\n");
            continue;
        }
        write_field(out, h.name.as_bytes(), h.value);
    }
    if !forwarded {
        write_field(out, b"x-forwarded-for", client.ip);
    }
    if hosts == 0 {
        write_field(out, b"host", client.host);
    }
    write_framing(out, body);
    out.extend_from_slice(b"\r\n");

    let is_head = method == "HEAD";
    let idempotent = matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    );
    Ok(Some(RequestHead {
        head_len,
        is_head,
        idempotent,
        minor_version,
        keep_alive,
        body,
        expect_continue,
    }))
}

/// Parses an upstream response head at the start of `buf`. `Ok(None)`:
/// incomplete. On success the head for the client is appended to `out`.
pub fn parse_response(
    buf: &[u8],
    client: ClientView,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let Some(head_len) = head_len(resp.parse(buf), buf.len())? else {
        return Ok(None);
    };
    let (Some(status), Some(minor_version)) = (resp.code, resp.version) else {
        return Err(HeadError::Malformed(httparse::Error::Status));
    };
    let reason = resp.reason.unwrap_or("");
    let headers = &*resp.headers;
    if status == 101 {
        return Err(HeadError::UnexpectedUpgrade);
    }
    let conn = ConnectionTokens::collect(headers)?;
    let interim = (100..200).contains(&status);
    let upstream_body = if interim || client.is_head || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match transfer_encoding(headers) {
            Ok(Some(_)) => Framing::Chunked,
            // A coding we cannot decode: the body runs until close (RFC 9112 §6.3).
            Err(_) => Framing::UntilClose,
            Ok(None) => match content_length(headers)? {
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            },
        }
    };
    let upstream_keep_alive = upstream_body != Framing::UntilClose
        && if minor_version == 1 {
            !conn.close
        } else {
            conn.keep_alive && !conn.close
        };
    let (client_body, client_keep_alive) = match upstream_body {
        Framing::Chunked | Framing::UntilClose if client.minor_version == 1 => {
            (Framing::Chunked, client.keep_alive)
        }
        Framing::Chunked | Framing::UntilClose => (Framing::UntilClose, false),
        other => (other, client.keep_alive),
    };

    // Writing into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    // Empty bodies keep Content-Length as sent (HEAD and 304 describe the
    // representation); bodies we frame get our own framing field.
    let keep_cl = upstream_body == Framing::Empty && !interim;
    for h in headers {
        let cl = h.name.eq_ignore_ascii_case("content-length");
        if (is_hop_by_hop(h.name) && !(cl && keep_cl)) || conn.names(h.name) {
            continue;
        }
        write_field(out, h.name.as_bytes(), h.value);
    }
    if !interim {
        write_framing(out, client_body);
        if !client_keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if client.minor_version == 0 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        head_len,
        status,
        interim,
        upstream_body,
        upstream_keep_alive,
        client_body,
        client_keep_alive,
    }))
}

/// Reason phrase for the statuses the gateway generates itself.
#[must_use]
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        400 => "Bad Request",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        499 => "Client Closed Request",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// Appends a complete error response generated by the gateway.
pub fn write_error_response(out: &mut Vec<u8>, status: u16, close: bool, retry_after: bool) {
    let reason = reason(status);
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n",
        reason.len() + 1
    );
    if retry_after {
        out.extend_from_slice(b"retry-after: 1\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(reason.as_bytes());
    out.push(b'\n');
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    fn req(raw: &str) -> Result<Option<(RequestHead, String)>, HeadError> {
        let mut out = Vec::new();
        let client = ClientAddr {
            ip: b"10.0.0.1",
            host: b"gw:80",
        };
        parse_request(raw.as_bytes(), &client, &mut out)
            .map(|o| o.map(|h| (h, String::from_utf8(out).unwrap())))
    }

    #[test]
    fn simple_get_keeps_end_to_end_fields_and_adds_forwarded_for() {
        let (h, out) = req("GET /a?b HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, Framing::Empty);
        assert!(h.keep_alive && h.idempotent && !h.is_head);
        assert_eq!(
            out,
            "GET /a?b HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"
        );
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_are_dropped() {
        let (h, out) = req(
            "POST / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
             Keep-Alive: timeout=5\r\nProxy-Authorization: x\r\nTE: trailers\r\n\
             Upgrade: h2c\r\nX-Forwarded-For: 1.2.3.4\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(h.keep_alive);
        assert_eq!(h.body, Framing::Length(5));
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.1\r\ncontent-length: 5\r\n\r\n"
        );
    }

    #[test]
    fn keep_alive_defaults_per_version() {
        let (h, out) = req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        assert!(out.ends_with("host: gw:80\r\n\r\n"), "{out}");
        assert!(
            !req("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .unwrap()
                .unwrap()
                .0
                .keep_alive
        );
    }

    #[test]
    fn partial_and_limits() {
        assert_eq!(req("GET / HTTP/1.1\r\nHost: a\r\n").unwrap(), None);
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(req(&big).unwrap_err().status(), 431);
        let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..MAX_HEADERS {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(req(&many).unwrap_err().status(), 431);
        assert_eq!(
            req("GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(req("GARBAGE\r\n\r\n").unwrap_err().status(), 400);
        assert_eq!(
            req("GET / HTTP/1.1\r\n\r\n").unwrap_err(),
            HeadError::MissingHost
        );
        let connect = req("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n");
        assert_eq!(connect.unwrap_err().status(), 501);
    }

    #[test]
    fn framing_rules() {
        let chunked = req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(chunked.0.body, Framing::Chunked);
        assert!(chunked.1.ends_with("transfer-encoding: chunked\r\n\r\n"));
        let e = req(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        );
        assert_eq!(e.unwrap_err(), HeadError::TransferEncodingWithContentLength);
        let e = req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(e.unwrap_err().status(), 501);
        let e = req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(e.unwrap_err().status(), 400);
        let e = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
        assert_eq!(e.unwrap_err().status(), 400);
        let e = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\n");
        assert_eq!(e.unwrap_err().status(), 400);
        let ok = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(ok.0.body, Framing::Length(3));
    }

    fn resp(raw: &str, client: ClientView) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let h = parse_response(raw.as_bytes(), client, &mut out)
            .unwrap()
            .unwrap();
        (h, String::from_utf8(out).unwrap())
    }

    const V11: ClientView = ClientView {
        is_head: false,
        minor_version: 1,
        keep_alive: true,
    };

    #[test]
    fn response_framing_and_reframing() {
        let (h, out) = resp(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: x\r\n\r\nhi",
            V11,
        );
        assert_eq!(
            (h.upstream_body, h.client_body),
            (Framing::Length(2), Framing::Length(2))
        );
        assert!(h.upstream_keep_alive && h.client_keep_alive);
        assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n");

        let (h, out) = resp("HTTP/1.0 200 OK\r\n\r\n", V11);
        assert_eq!(
            (h.upstream_body, h.client_body),
            (Framing::UntilClose, Framing::Chunked)
        );
        assert!(!h.upstream_keep_alive && h.client_keep_alive);
        assert!(out.ends_with("transfer-encoding: chunked\r\n\r\n"));

        let v10 = ClientView {
            minor_version: 0,
            keep_alive: true,
            ..V11
        };
        let (h, out) = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", v10);
        assert_eq!(h.client_body, Framing::UntilClose);
        assert!(!h.client_keep_alive);
        assert!(out.ends_with("connection: close\r\n\r\n"));

        let (h, out) = resp("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", v10);
        assert!(h.client_keep_alive);
        assert!(out.ends_with("connection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn bodiless_responses() {
        let head = ClientView {
            is_head: true,
            ..V11
        };
        let (h, out) = resp("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", head);
        assert_eq!(h.upstream_body, Framing::Empty);
        assert!(out.contains("Content-Length: 9"));
        for s in ["204 No Content", "304 Not Modified"] {
            let (h, _) = resp(&format!("HTTP/1.1 {s}\r\n\r\n"), V11);
            assert_eq!(h.upstream_body, Framing::Empty);
            assert!(h.upstream_keep_alive);
        }
        let (h, _) = resp("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", V11);
        assert!(h.interim);
        let mut out = Vec::new();
        assert_eq!(
            parse_response(b"HTTP/1.1 101 Switching\r\n\r\n", V11, &mut out).unwrap_err(),
            HeadError::UnexpectedUpgrade
        );
    }

    #[test]
    fn upstream_close_is_honoured() {
        let (h, _) = resp(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            V11,
        );
        assert!(!h.upstream_keep_alive);
        assert!(h.client_keep_alive);
    }

    #[test]
    fn error_response_is_well_formed() {
        let mut out = Vec::new();
        write_error_response(&mut out, 503, false, true);
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut r = httparse::Response::new(&mut headers);
        let n = match r.parse(&out).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        assert_eq!(r.code, Some(503));
        assert_eq!(out.len() - n, "Service Unavailable\n".len());
        assert!(r.headers.iter().any(|h| h.name == "retry-after"));
    }
}
