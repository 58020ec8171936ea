//! The control channel: concurrent clients each get their own replies,
//! stale replies are dropped, stale segments of dead servers are replaced.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shm_abi::channel::{ChannelError, ControlClient, ControlServer};
use shm_abi::segment::SegmentError;

const SECOND: Duration = Duration::from_secs(1);

/// Serves until `stop`: replies `re:<request>`; `slow:` requests are answered
/// after 300 ms.
fn serve(mut server: ControlServer, stop: Arc<AtomicBool>) -> usize {
    let mut served = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(req) = server.recv(Some(Duration::from_millis(20))).unwrap() else {
            continue;
        };
        if req.starts_with(b"slow:") {
            std::thread::sleep(Duration::from_millis(300));
        }
        let mut rep = b"re:".to_vec();
        rep.extend_from_slice(&req);
        server.reply(&rep).unwrap();
        served += 1;
    }
    served
}

fn start(path: &Path) -> (Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
    let server = ControlServer::create(path, 4096).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    (stop, std::thread::spawn(move || serve(server, s)))
}

#[test]
fn concurrent_clients_get_their_own_replies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control");
    let (stop, server) = start(&path);
    let clients: Vec<_> = (0..2)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                for session in 0..10 {
                    let mut client = ControlClient::connect(&path).unwrap();
                    for i in 0..20 {
                        let req = format!("client {t} session {session} call {i}");
                        let rep = client.call(req.as_bytes(), SECOND).unwrap();
                        assert_eq!(rep, format!("re:{req}").into_bytes());
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert_eq!(server.join().unwrap(), 2 * 10 * 20);
    // The server's drop removed the segment file.
    assert!(!path.exists());
}

#[test]
fn stale_reply_is_dropped_by_the_next_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control");
    let (stop, server) = start(&path);
    let mut first = ControlClient::connect(&path).unwrap();
    match first.call(b"slow:1", Duration::from_millis(50)) {
        Err(ChannelError::Timeout { what: "reply", .. }) => {}
        other => panic!("expected a reply timeout, got {other:?}"),
    }
    drop(first);
    // Connect while the slow reply is still being prepared, so it lands in
    // this client's reply ring.
    let mut second = ControlClient::connect(&path).unwrap();
    let mut seen = Vec::new();
    let rep = second
        .call_matching(b"id:2", SECOND, |r| {
            seen.push(r.to_vec());
            r.ends_with(b":2")
        })
        .unwrap();
    assert_eq!(rep, b"re:id:2");
    assert_eq!(seen, vec![b"re:slow:1".to_vec(), b"re:id:2".to_vec()]);
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
}

#[test]
fn lock_serializes_clients_and_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control");
    let (stop, server) = start(&path);
    let holder = ControlClient::connect(&path).unwrap();
    match ControlClient::connect_timeout(&path, Duration::from_millis(30)) {
        Err(ChannelError::LockTimeout { .. }) => {}
        other => panic!("expected LockTimeout, got {other:?}"),
    }
    drop(holder);
    let mut next = ControlClient::connect_timeout(&path, SECOND).unwrap();
    assert_eq!(next.call(b"x", SECOND).unwrap(), b"re:x");
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
}

#[test]
fn server_segment_lifecycle() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control");
    // No server: the error names the path.
    let err = ControlClient::connect(&path).unwrap_err();
    assert!(err.to_string().contains("control"), "{err}");

    let live = ControlServer::create(&path, 1024).unwrap();
    match ControlServer::create(&path, 1024) {
        Err(ChannelError::Segment(SegmentError::InUse { pid, .. })) => {
            assert_eq!(pid, std::process::id());
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    // Pretend the creator died: creator_pid (offset 32) := a reaped pid.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&dead.to_le_bytes(), 32).unwrap();
    let mut replacement = ControlServer::create(&path, 1024).unwrap();
    drop(live); // the old handle must not remove the replacement's file
    assert!(path.exists());
    let mut client = ControlClient::connect(&path).unwrap();
    let t = std::thread::spawn(move || client.call(b"ping", SECOND).unwrap());
    let req = replacement.recv(Some(SECOND)).unwrap().unwrap();
    assert_eq!(req, b"ping");
    replacement.reply(b"pong").unwrap();
    assert_eq!(t.join().unwrap(), b"pong");
}
