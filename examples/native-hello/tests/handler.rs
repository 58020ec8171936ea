//! Drives the real `hello-native` binary: the READY handshake, keep-alive,
//! pipelining, and byte-for-byte agreement with `examples/hello.py`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child on drop, so a failed assertion leaves no process behind.
struct Guard {
    child: Child,
    handshake: Option<UnixStream>,
}

impl Guard {
    fn new(child: Child) -> Self {
        Self {
            child,
            handshake: None,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.handshake.take();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hello-native-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `cmd` with the handler environment, accepts its handshake and
/// returns the child once it sent READY.
fn start_with_handshake(mut cmd: Command, dir: &Path, port: u16) -> Guard {
    let sock = dir.join("aether.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let child = cmd
        .env("AETHER_SOCKET", &sock)
        .env("AETHER_TRIGGER_PORT", port.to_string())
        .env("AETHER_FUNCTION_ID", "hello-api")
        .env("AETHER_INSTANCE_ID", "0")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Guard::new(child);
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = [0u8; 5];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"READY");
    // Exactly five bytes: nothing else arrives (the handler keeps it open).
    conn.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut more = [0u8; 1];
    let err = conn.read(&mut more).expect_err("bytes after READY");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "handshake socket: {err}"
    );
    // Keep the handshake socket open for the child's life, as aetherd does.
    let mut guard = guard;
    guard.handshake = Some(conn);
    guard
}

fn connect(port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return s;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("port {port} never accepted: {e}"),
        }
    }
}

/// Reads one response (Content-Length framed, or to EOF without it) and
/// returns status, header names (lowercase) and body; `pending` keeps bytes
/// of the next pipelined response.
fn read_response(s: &mut TcpStream, pending: &mut Vec<u8>) -> (u16, Vec<String>, Vec<u8>) {
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = resp.parse(pending).unwrap() {
            let status = resp.code.unwrap();
            let names: Vec<String> = resp
                .headers
                .iter()
                .map(|h| h.name.to_ascii_lowercase())
                .collect();
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| {
                    std::str::from_utf8(h.value)
                        .unwrap()
                        .trim()
                        .parse::<usize>()
                        .unwrap()
                });
            match len {
                Some(len) if pending.len() >= head + len => {
                    let body = pending[head..head + len].to_vec();
                    pending.drain(..head + len);
                    return (status, names, body);
                }
                None => {
                    s.read_to_end(pending).unwrap();
                    let body = pending[head..].to_vec();
                    pending.clear();
                    return (status, names, body);
                }
                Some(_) => {}
            }
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&chunk[..n]);
    }
}

fn get(port: u16, target: &str) -> (u16, Vec<u8>) {
    let mut s = connect(port);
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let (status, _, body) = read_response(&mut s, &mut Vec::new());
    (status, body)
}

#[test]
fn handshake_then_keep_alive_and_pipelining() {
    let dir = temp_dir("ka");
    let port = free_port();
    let _child = start_with_handshake(Command::new(env!("CARGO_BIN_EXE_hello-native")), &dir, port);
    let mut s = connect(port);
    let mut pending = Vec::new();
    for path in ["/test", "/again"] {
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let (status, names, body) = read_response(&mut s, &mut pending);
        assert_eq!(status, 200);
        assert!(
            !names.contains(&"connection".to_owned()),
            "keep-alive is implicit in 1.1"
        );
        assert_eq!(
            String::from_utf8(body).unwrap(),
            format!(r#"{{"message": "Hello from Aetherless!", "path": "{path}"}}"#)
        );
    }
    // Three pipelined requests in one write come back in order.
    s.write_all(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    for i in 1..=3 {
        let (status, names, body) = read_response(&mut s, &mut pending);
        assert_eq!(status, 200);
        assert!(String::from_utf8(body)
            .unwrap()
            .ends_with(&format!(r#""path": "/{i}"}}"#)));
        assert_eq!(names.contains(&"connection".to_owned()), i == 3);
    }
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "server closed after Connection: close");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn runs_without_handshake_on_port_flag() {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_hello-native"))
        .env_remove("AETHER_SOCKET")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--threads",
            "1",
        ])
        .spawn()
        .unwrap();
    let _guard = Guard::new(child);
    let (status, body) = get(port, "/direct");
    assert_eq!(status, 200);
    assert!(String::from_utf8(body)
        .unwrap()
        .contains(r#""path": "/direct""#));
}

#[test]
fn bad_arguments_exit_with_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_hello-native"))
        .args(["--port", "notaport"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--port"));
}

#[test]
fn answers_byte_for_byte_like_hello_py() {
    let hello_py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hello.py");
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIP answers_byte_for_byte_like_hello_py: python3 is not installed");
        return;
    }
    let dir = temp_dir("py");
    let (native_port, py_port) = (free_port(), free_port());
    let _native = start_with_handshake(
        Command::new(env!("CARGO_BIN_EXE_hello-native")),
        &dir.join(""),
        native_port,
    );
    let py_dir = dir.join("py");
    std::fs::create_dir_all(&py_dir).unwrap();
    let mut py = Command::new("python3");
    py.arg(&hello_py);
    let _py = start_with_handshake(py, &py_dir, py_port);
    for target in ["/test", "/", "/a%20b?q=1&r=%22", "/caf\u{e9}", "/x\\y", "*"] {
        let native = get(native_port, target);
        let python = get(py_port, target);
        assert_eq!(
            native,
            python,
            "{target}: native {:?} vs python {:?}",
            String::from_utf8_lossy(&native.1),
            String::from_utf8_lossy(&python.1)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
