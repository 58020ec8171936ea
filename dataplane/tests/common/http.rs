//! A tiny HTTP/1.1 client over `std::net::TcpStream` for the end-to-end
//! tests: loopback only, every read and write bounded by a timeout, one
//! connection reusable for several requests (keep-alive).
//!
//! Response bodies are read by `Content-Length`, by chunked framing, or up to
//! the close of the connection, whichever the response uses.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

/// The most a test ever reads in one response (a bound, not a limit of HTTP).
const MAX_RESPONSE: usize = 16 << 20;

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the server will close the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A connection to `127.0.0.1:port`.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// Bytes read past the previous response.
    buf: Vec<u8>,
    timeout: Duration,
}

/// Loopback address of a test port.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

impl Conn {
    /// Connect with `timeout` for the connect and for every later read/write.
    pub fn open(port: u16, timeout: Duration) -> io::Result<Conn> {
        Conn::open_addr(loopback(port), timeout)
    }

    /// Like [`Conn::open`], to any address (e.g. a test's veth address).
    pub fn open_addr(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            timeout,
        })
    }

    /// Send raw bytes (a request, well-formed or not) and read one response.
    ///
    /// A server may answer an oversized request early and close without
    /// reading the rest (the write then fails with a reset or broken pipe);
    /// the response it sent is still read before giving up.
    pub fn raw(&mut self, request: &[u8]) -> io::Result<Response> {
        match self.stream.write_all(request) {
            Ok(()) => self.read_response(),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                self.read_response().map_err(|r| {
                    io::Error::new(
                        r.kind(),
                        format!("write failed ({e}), then read failed ({r})"),
                    )
                })
            }
            Err(e) => Err(e),
        }
    }

    /// `GET path` with keep-alive.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: aether-e2e\r\n\r\n");
        self.raw(req.as_bytes())
    }

    /// Fill `self.buf` until it holds `n` bytes; false at end of stream.
    fn fill_to(&mut self, n: usize, deadline: Instant) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        while self.buf.len() < n {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "response deadline passed",
                ));
            }
            let got = self.stream.read(&mut chunk)?;
            if got == 0 {
                return Ok(false);
            }
            self.buf.extend_from_slice(&chunk[..got]);
            if self.buf.len() > MAX_RESPONSE {
                return Err(io::Error::other("response larger than the test bound"));
            }
        }
        Ok(true)
    }

    /// Read until `needle` appears in `self.buf`; its end offset.
    fn fill_until(&mut self, needle: &[u8], deadline: Instant) -> io::Result<usize> {
        loop {
            if let Some(at) = self.buf.windows(needle.len()).position(|w| w == needle) {
                return Ok(at + needle.len());
            }
            if !self.fill_to(self.buf.len() + 1, deadline)? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    fn read_response(&mut self) -> io::Result<Response> {
        // A whole response must arrive within twice the per-read timeout.
        let deadline = Instant::now() + self.timeout * 2;
        let head_end = self.fill_until(b"\r\n\r\n", deadline)?;
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = resp
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        if chunked {
            resp.body = self.read_chunked(deadline)?;
        } else if let Some(n) = length {
            if !self.fill_to(n, deadline)? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "body shorter than Content-Length",
                ));
            }
            resp.body = self.buf.drain(..n).collect();
        } else if (100..200).contains(&status) || status == 204 || status == 304 {
            // No body.
        } else {
            while self.fill_to(self.buf.len() + 1, deadline)? {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }

    fn read_chunked(&mut self, deadline: Instant) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = self.fill_until(b"\r\n", deadline)?;
            let line = String::from_utf8_lossy(&self.buf[..line_end - 2]).into_owned();
            self.buf.drain(..line_end);
            let size_text = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| io::Error::other(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                // Trailers end with an empty line.
                loop {
                    let end = self.fill_until(b"\r\n", deadline)?;
                    let empty = end == 2;
                    self.buf.drain(..end);
                    if empty {
                        return Ok(body);
                    }
                }
            }
            if !self.fill_to(size + 2, deadline)? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "chunk cut short",
                ));
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }
}

/// One `GET` on a fresh connection.
pub fn get(port: u16, path: &str, timeout: Duration) -> io::Result<Response> {
    Conn::open(port, timeout)?.get(path)
}

/// Retry `GET path` until it answers `want` or `within` passes; the last outcome.
pub fn get_until(port: u16, path: &str, want: u16, within: Duration) -> Result<Response, String> {
    let deadline = Instant::now() + within;
    let mut last = String::from("no attempt");
    let mut attempts = 0u32;
    while Instant::now() < deadline {
        attempts += 1;
        match get(port, path, Duration::from_secs(5)) {
            Ok(r) if r.status == want => return Ok(r),
            Ok(r) => last = format!("status {} body {:?}", r.status, r.text()),
            Err(e) => last = format!("error {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "GET 127.0.0.1:{port}{path} never answered {want} within {within:?} ({attempts} attempts); last: {last}"
    ))
}

/// Whether a connection to the port is refused (nothing listens).
pub fn refused(port: u16) -> bool {
    matches!(
        TcpStream::connect_timeout(&loopback(port), Duration::from_secs(1)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
    )
}
