//! Two-process tests (own `main`: the binary re-executes itself as the peer).
//!
//! * `million_records`: the parent streams 1,000,000 records of varying size
//!   to a child through one ring; the child checks each one's sequence number
//!   and content checksum and answers through a second ring with
//!   (sequence, checksum it computed); the parent checks every answer. Both
//!   directions use the blocking waits (spin, then futex), with small rings so
//!   both sides fill, wrap and sleep many times.
//! * `dead_claim_reclaimed`: a child claims the producer and is SIGKILLed;
//!   the parent is refused while it lives and takes the handle over after.
//! * `control_clients_in_two_processes`: two child processes call the
//!   parent's control server at the same time, several sessions each; the
//!   segment lock serializes them and each gets exactly its own replies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)] // tests fail loudly by design

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shm_abi::channel::{ControlClient, ControlServer};
use shm_abi::ring::{ClaimError, RingSegment};
use shm_abi::segment::{fnv1a, FNV_OFFSET};

const ROLE_ENV: &str = "SHM_ABI_TWO_PROCESS_ROLE";
const RECORDS: u64 = 1_000_000;
const RING_CAPACITY: usize = 4096;
const WAIT: Option<Duration> = Some(Duration::from_secs(30));

/// The payload of record `seq`: 0..=120 pseudo-random bytes.
fn payload(seq: u64, out: &mut Vec<u8>) {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let len = (x % 121) as usize;
    out.clear();
    for _ in 0..len.div_ceil(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
}

/// Record = seq u64 | checksum u64 (FNV-1a of payload) | payload.
fn encode(seq: u64, buf: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    payload(seq, scratch);
    buf.clear();
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&fnv1a(FNV_OFFSET, scratch).to_le_bytes());
    buf.extend_from_slice(scratch);
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Child side of `million_records`: consume requests, verify, answer.
fn echo_child(req: &Path, rep: &Path) -> Result<(), String> {
    let req = RingSegment::open(req).map_err(|e| e.to_string())?;
    let rep = RingSegment::open(rep).map_err(|e| e.to_string())?;
    let mut rx = req.consumer().map_err(|e| e.to_string())?;
    let mut tx = rep.producer().map_err(|e| e.to_string())?;
    let mut expect = Vec::new();
    for seq in 0..RECORDS {
        let rec = rx
            .wait_pop(WAIT)
            .map_err(|e| format!("child pop {seq}: {e}"))?;
        if rec.len() < 16 || u64_at(&rec, 0) != seq {
            return Err(format!(
                "record {seq}: bad sequence/length ({} bytes)",
                rec.len()
            ));
        }
        let sum = fnv1a(FNV_OFFSET, &rec[16..]);
        payload(seq, &mut expect);
        if sum != u64_at(&rec, 8) || rec[16..] != expect[..] {
            return Err(format!("record {seq}: content checksum mismatch"));
        }
        drop(rec);
        let mut ans = [0u8; 16];
        ans[..8].copy_from_slice(&seq.to_le_bytes());
        ans[8..].copy_from_slice(&sum.to_le_bytes());
        tx.push_blocking(&ans, WAIT)
            .map_err(|e| format!("child push {seq}: {e}"))?;
    }
    Ok(())
}

fn spawn_self(role: &str, args: &[&Path]) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .env(ROLE_ENV, role)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn shm_dir() -> tempfile::TempDir {
    // tmpfs like production; fall back to the default temp dir elsewhere.
    tempfile::Builder::new()
        .prefix("shm-abi-test")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

fn million_records() {
    let dir = shm_dir();
    let (req_p, rep_p): (PathBuf, PathBuf) = (dir.path().join("req"), dir.path().join("rep"));
    let req = RingSegment::create(&req_p, RING_CAPACITY).unwrap();
    let rep = RingSegment::create(&rep_p, RING_CAPACITY).unwrap();
    let mut tx = req.producer().unwrap();
    let mut rx = rep.consumer().unwrap();
    let start = Instant::now();
    let mut child = spawn_self("echo", &[&req_p, &rep_p]);

    let checker = std::thread::spawn(move || {
        let mut expect = Vec::new();
        for seq in 0..RECORDS {
            let ans = rx
                .wait_pop(WAIT)
                .unwrap_or_else(|e| panic!("answer {seq}: {e}"));
            assert_eq!(ans.len(), 16, "answer {seq} length");
            assert_eq!(u64_at(&ans, 0), seq, "answer sequence");
            payload(seq, &mut expect);
            assert_eq!(
                u64_at(&ans, 8),
                fnv1a(FNV_OFFSET, &expect),
                "answer {seq} checksum"
            );
        }
    });
    let (mut buf, mut scratch) = (Vec::new(), Vec::new());
    for seq in 0..RECORDS {
        encode(seq, &mut buf, &mut scratch);
        tx.push_blocking(&buf, WAIT)
            .unwrap_or_else(|e| panic!("push {seq}: {e}"));
    }
    checker.join().expect("answer checker failed");
    let status = child.wait().unwrap();
    assert!(status.success(), "echo child failed: {status}");
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "million_records: {RECORDS} records each way in {secs:.2} s ({:.2} M round trips/s)",
        RECORDS as f64 / secs / 1e6
    );
}

/// Child side of `dead_claim_reclaimed`: claim, report, wait to be killed.
fn claim_child(path: &Path) -> Result<(), String> {
    let rs = RingSegment::open(path).map_err(|e| e.to_string())?;
    let p = rs.producer().map_err(|e| e.to_string())?;
    println!("claimed");
    std::thread::sleep(Duration::from_secs(60));
    drop(p);
    Err("not killed".into())
}

fn dead_claim_reclaimed() {
    let dir = shm_dir();
    let path = dir.path().join("ring");
    let rs = RingSegment::create(&path, 256).unwrap();
    let mut child = spawn_self("claim", &[&path]);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "claimed");
    assert_eq!(
        rs.producer().unwrap_err(),
        ClaimError::AlreadyClaimed {
            role: "producer",
            pid: child.id()
        }
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let mut p = rs.producer().expect("dead holder's claim is taken over");
    let mut c = rs.consumer().unwrap();
    p.try_push(b"after the holder died").unwrap();
    assert_eq!(&*c.try_pop().unwrap(), b"after the holder died");
    eprintln!(
        "dead_claim_reclaimed: ok (holder pid {} reclaimed)",
        child.id()
    );
}

const CALLS: usize = 100;
const SESSIONS: usize = 5;

/// Child side of `control_clients_in_two_processes`.
fn control_client_child(path: &Path, name: &str) -> Result<(), String> {
    for session in 0..SESSIONS {
        let mut client = ControlClient::connect_timeout(path, Duration::from_secs(30))
            .map_err(|e| e.to_string())?;
        for i in 0..CALLS {
            let req = format!("{name}/{session}/{i}");
            let rep = client
                .call(req.as_bytes(), Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            if rep != format!("re:{req}").into_bytes() {
                return Err(format!("{req}: got {:?}", String::from_utf8_lossy(&rep)));
            }
        }
    }
    Ok(())
}

fn control_clients_in_two_processes() {
    let dir = shm_dir();
    let path = dir.path().join("control");
    let mut server = ControlServer::create(&path, 4096).unwrap();
    let children: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| {
            Command::new(std::env::current_exe().unwrap())
                .env(ROLE_ENV, "client")
                .arg(&path)
                .arg(n)
                .spawn()
                .unwrap()
        })
        .collect();
    let mut per_client = std::collections::HashMap::<String, usize>::new();
    for _ in 0..2 * SESSIONS * CALLS {
        let req = server
            .recv(Some(Duration::from_secs(30)))
            .unwrap()
            .expect("a request within 30 s");
        let who = String::from_utf8(req.clone()).unwrap();
        *per_client.entry(who[..1].to_string()).or_default() += 1;
        let mut rep = b"re:".to_vec();
        rep.extend_from_slice(&req);
        server.reply(&rep).unwrap();
    }
    for mut c in children {
        assert!(c.wait().unwrap().success(), "control client child failed");
    }
    assert_eq!(per_client["a"], SESSIONS * CALLS);
    assert_eq!(per_client["b"], SESSIONS * CALLS);
    eprintln!("control_clients_in_two_processes: ok ({per_client:?})");
}

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
        let res = match role.as_str() {
            "echo" => echo_child(&args[0], &args[1]),
            "claim" => claim_child(&args[0]),
            "client" => control_client_child(&args[0], &args[1].to_string_lossy()),
            other => Err(format!("unknown role {other}")),
        };
        if let Err(e) = res {
            eprintln!("two_process child ({role}) failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    // `cargo test` passes harness flags (e.g. --nocapture); a name filter
    // selects tests like the default harness does.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tests: [(&str, fn()); 3] = [
        ("million_records", million_records),
        ("dead_claim_reclaimed", dead_claim_reclaimed),
        (
            "control_clients_in_two_processes",
            control_clients_in_two_processes,
        ),
    ];
    for (name, f) in tests {
        if filter.is_empty() || filter.iter().any(|x| name.contains(x.as_str())) {
            eprintln!("test {name} ...");
            f();
            eprintln!("test {name} ... ok");
        }
    }
}
