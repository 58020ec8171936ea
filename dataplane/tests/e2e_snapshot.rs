//! End-to-end tests of `aetherctl snapshot` and the snapshot column of
//! `aetherctl list` (issue 4, deliverable 1): the real `aetherd` and
//! `aetherctl`, the quickstart's `hello.py`, real CRIU.
//!
//! Run: `cargo build -p control -p dataplane && cargo test -p dataplane --test e2e_snapshot -- --nocapture`
//! (as root; the forced-snapshot test also needs CRIU at `/usr/local/sbin/criu`,
//! which `scripts/setup.sh` builds). Every daemon keeps its images in its own
//! temporary `snapshot_dir`. Tests that cannot run print `SKIP <test>: <reason>`.
//!
//! | test | proves |
//! |---|---|
//! | verb errors | without aetherd `snapshot` exits 4; without FUNCTION 2; `snapshot nosuch` exits 1 naming the function and "not found" |
//! | list column | `list` has a `SNAPSHOT` column whose cell is one of the protocol's states; `list -o json` has a `snapshot` object per function |
//! | forced snapshot | `snapshot hello` → `ready`, a 16-hex-digit identity, images inside `snapshot_dir` whose `*.img` files add up to the reported size, a measured dump time; the dumped instance keeps serving; `list` shows `ready AGE SIZE` and the same identity and size |
//! | snapshots off | with `AETHER_SNAPSHOTS=0` list says `unavailable` with the reason and `snapshot` exits 1 carrying it |

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    aetherctl, examples, function_entry, http, require_criu, require_root, run_ctl, CtlOutput,
    Daemon, FunctionSpec, Json,
};

/// Every value of a snapshot's `state` (`shm_abi::message::SnapshotInfo::STATES`).
const STATES: [&str; 5] = ["none", "dumping", "ready", "failed", "unavailable"];
/// Bound on one `aetherctl snapshot` (its own default `--timeout` is 150 s).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(160);

/// The quickstart's handler as function `hello`.
fn hello() -> FunctionSpec {
    FunctionSpec::new("hello")
        .handler(examples().join("hello.py"))
        .timeout_ms(30_000)
}

/// Write the config of `hello` with a private `snapshot_dir`; the daemon
/// (not started) and that directory.
fn configure(test: &str) -> (Daemon, PathBuf) {
    let d = Daemon::configure(test, vec![hello()]);
    // The harness puts snapshot_dir at <temp dir>/snapshots.
    let snapshots = d.path("snapshots");
    (d.with_orchestrator("127.0.0.1", ""), snapshots)
}

/// Start `hello` with a private `snapshot_dir` and wait until it serves.
fn start(test: &str) -> (Daemon, PathBuf) {
    let (d, snapshots) = configure(test);
    let d = d.up().unwrap_or_else(|e| panic!("[{test}] {e}"));
    await_serving(&d);
    (d, snapshots)
}

/// Wait until `hello` answers `GET /` with 200.
fn await_serving(d: &Daemon) {
    http::get_until(d.port("hello"), "/", 200, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("[{}] hello never served: {e}\n{}", d.name, d.log_report()));
    // Records the handlers' cgroups, for clean-up if aetherd leaves them.
    d.handler_pids();
}

/// `hello`'s `snapshot` object in `list -o json`.
fn listed_snapshot(d: &Daemon) -> Json {
    let list = d.list();
    function_entry(&list, "hello")
        .and_then(|f| f.get("snapshot"))
        .cloned()
        .unwrap_or_else(|| panic!("no snapshot object for hello in list: {list:?}"))
}

/// The SNAPSHOT cell of each `hello` row of the `list` table (the text after
/// the RESTARTS column), checking the header names the column.
fn snapshot_cells(table: &str) -> Vec<String> {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let at = header
        .find("SNAPSHOT")
        .unwrap_or_else(|| panic!("no SNAPSHOT column in the list header: {table}"));
    lines
        .filter(|l| l.starts_with("hello "))
        .map(|l| l.get(at..).unwrap_or_default().trim().to_string())
        .collect()
}

fn str_of<'a>(j: &'a Json, key: &str) -> &'a str {
    j.get(key)
        .and_then(Json::as_str)
        .unwrap_or_else(|| panic!("no string {key:?} in {j:?}"))
}

fn u64_of(j: &Json, key: &str) -> u64 {
    j.get(key)
        .and_then(Json::as_u64)
        .unwrap_or_else(|| panic!("no integer {key:?} in {j:?}"))
}

/// Total size of the `*.img` files directly in `dir`.
fn images_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("images dir {}: {e}", dir.display()))
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".img"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn snapshot_verb_errors_have_their_exit_codes() {
    const T: &str = "snapshot errors";
    let nowhere = tempfile::tempdir().unwrap();
    let state_dir = nowhere.path().display().to_string();
    let out = run_ctl(
        &["--state-dir", &state_dir, "snapshot", "hello"],
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(4), "snapshot without aetherd: {out}");
    assert!(out.stderr.contains("not running"), "{out}");
    let out = run_ctl(&["snapshot"], Duration::from_secs(30));
    assert_eq!(out.code, Some(2), "snapshot without FUNCTION: {out}");

    if !require_root(T) {
        return;
    }
    let (d, _) = start(T);
    eprintln!("[{T}] aetherctl snapshot nosuch");
    let out = d.ctl_timeout(&["snapshot", "nosuch"], SNAPSHOT_WAIT);
    assert_eq!(out.code, Some(1), "snapshot of an unknown function: {out}");
    assert!(
        out.stderr.contains("not found") && out.stderr.contains("'nosuch'"),
        "the error names the kind and the function: {out}"
    );
    assert!(out.stdout.is_empty(), "nothing on stdout: {out}");
}

#[test]
fn list_shows_a_snapshot_column() {
    const T: &str = "list snapshot column";
    if !require_root(T) {
        return;
    }
    let (d, _) = start(T);
    eprintln!("[{T}] aetherctl list");
    let table = d.ctl_ok(&["list"]);
    eprint!("{table}");
    let cells = snapshot_cells(&table);
    assert!(!cells.is_empty(), "no hello row in list: {table}");
    for cell in &cells {
        let state = cell.split_whitespace().next().unwrap_or_default();
        assert!(
            STATES.contains(&state),
            "SNAPSHOT cell {cell:?} is not one of {STATES:?}: {table}"
        );
    }
    eprintln!("[{T}] hello's snapshot: {:?}", cells[0]);

    let snapshot = listed_snapshot(&d);
    let state = str_of(&snapshot, "state");
    assert!(STATES.contains(&state), "{snapshot:?}");
    for key in ["bytes", "age_ms", "created_unix_ms"] {
        u64_of(&snapshot, key);
    }
    for key in ["identity", "images_dir", "error"] {
        str_of(&snapshot, key);
    }
    assert!(snapshot.get("dump_ms").and_then(Json::as_f64).is_some());
}

#[test]
fn forced_snapshot_is_ready_and_listed_with_age_and_size() {
    const T: &str = "forced snapshot";
    if !require_root(T) || !require_criu(T) {
        return;
    }
    let (d, snapshots) = start(T);

    eprintln!("[{T}] aetherctl snapshot hello");
    let out = d.ctl_timeout(&["snapshot", "hello"], SNAPSHOT_WAIT);
    assert!(out.ok(), "[{T}] snapshot hello: {out}\n{}", d.log_report());
    eprint!("{}", out.stdout);
    assert!(out.stdout.starts_with("hello: snapshot ready\n"), "{out}");
    for row in ["identity", "size", "dump", "images"] {
        assert!(
            out.stdout.lines().any(|l| l.trim_start().starts_with(row)),
            "no {row} line: {out}"
        );
    }

    eprintln!("[{T}] aetherctl snapshot hello -o json");
    let out = d.ctl_timeout(&["snapshot", "hello", "-o", "json"], SNAPSHOT_WAIT);
    assert!(
        out.ok(),
        "[{T}] snapshot -o json: {out}\n{}",
        d.log_report()
    );
    let doc = Json::parse(&out.stdout)
        .unwrap_or_else(|e| panic!("`snapshot -o json` printed invalid JSON ({e}): {out}"));
    assert_eq!(doc.get("function").and_then(Json::as_str), Some("hello"));
    let snap = doc.get("snapshot").cloned().expect("snapshot object");
    assert_eq!(str_of(&snap, "state"), "ready", "{snap:?}");
    assert_eq!(str_of(&snap, "error"), "", "{snap:?}");
    let identity = str_of(&snap, "identity").to_string();
    assert!(
        identity.len() == 16 && identity.chars().all(|c| c.is_ascii_hexdigit()),
        "identity {identity:?} is not 16 hex digits"
    );
    let bytes = u64_of(&snap, "bytes");
    assert!(
        bytes > 0,
        "a ready snapshot of a live process has images: {snap:?}"
    );
    let dump_ms = snap.get("dump_ms").and_then(Json::as_f64).unwrap_or(0.0);
    assert!(dump_ms > 0.0, "a forced dump has a measured time: {snap:?}");
    let images = PathBuf::from(str_of(&snap, "images_dir"));
    assert!(
        images.starts_with(&snapshots),
        "images {} outside snapshot_dir {}",
        images.display(),
        snapshots.display()
    );
    assert_eq!(
        images_bytes(&images),
        bytes,
        "reported size vs the *.img files in {}",
        images.display()
    );
    eprintln!(
        "[{T}] identity {identity}, {bytes} bytes in {dump_ms:.1} ms at {}",
        images.display()
    );

    // The dump left the instance running: it still answers.
    let r = http::get(d.port("hello"), "/after-dump", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("hello after the dump: {e}\n{}", d.log_report()));
    assert_eq!(r.status, 200, "hello after the dump: {}", r.text());

    eprintln!("[{T}] aetherctl list");
    let listed = listed_snapshot(&d);
    assert_eq!(str_of(&listed, "state"), "ready", "{listed:?}");
    assert_eq!(str_of(&listed, "identity"), identity);
    let listed_bytes = u64_of(&listed, "bytes");
    assert!(listed_bytes > 0, "{listed:?}");
    assert!(
        u64_of(&listed, "created_unix_ms") > 0,
        "a ready snapshot has a creation time: {listed:?}"
    );
    let table = d.ctl_ok(&["list"]);
    let cells = snapshot_cells(&table);
    assert!(!cells.is_empty(), "no hello row in list: {table}");
    for cell in &cells {
        let parts: Vec<&str> = cell.split_whitespace().collect();
        assert_eq!(parts.len(), 3, "`ready AGE SIZE` expected, got {cell:?}");
        assert_eq!(parts[0], "ready", "{table}");
        assert!(
            parts[1]
                .trim_end_matches(char::is_alphabetic)
                .parse::<u64>()
                .is_ok(),
            "age {:?} in {cell:?}",
            parts[1]
        );
        assert!(
            parts[2].ends_with('B') && parts[2] != "0B",
            "size {:?} in {cell:?}",
            parts[2]
        );
    }
    eprintln!("[{T}] list: {}", cells[0]);
}

/// `aetherctl -c CONFIG up` with `AETHER_SNAPSHOTS=0` for aetherd (the
/// harness clears only aetherctl's own variables, so this one reaches it).
fn up_with_snapshots_off(d: &mut Daemon) -> CtlOutput {
    eprintln!(
        "[{}] AETHER_SNAPSHOTS=0 aetherctl -c {} up",
        d.name,
        d.config.display()
    );
    let out = Command::new(aetherctl())
        .args([
            "-c",
            &d.config.display().to_string(),
            "up",
            "--timeout",
            "20",
        ])
        .env_remove("AETHER_CONFIG")
        .env_remove("AETHER_STATE_DIR")
        .env("AETHER_SNAPSHOTS", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run aetherctl up");
    let out = CtlOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    d.up_output = out.stdout.clone();
    out
}

#[test]
fn snapshots_off_report_unavailable_and_the_reason() {
    const T: &str = "snapshots off";
    if !require_root(T) {
        return;
    }
    // Dropping the daemon runs `down` as long as its pidfile names a live aetherd.
    let (mut d, _) = configure(T);
    let out = up_with_snapshots_off(&mut d);
    assert!(out.ok(), "[{T}] up: {out}\n{}", d.log_report());
    await_serving(&d);

    let listed = listed_snapshot(&d);
    assert_eq!(str_of(&listed, "state"), "unavailable", "{listed:?}");
    assert!(
        str_of(&listed, "error").contains("AETHER_SNAPSHOTS=0"),
        "the reason: {listed:?}"
    );
    assert_eq!(u64_of(&listed, "bytes"), 0);
    let cells = snapshot_cells(&d.ctl_ok(&["list"]));
    assert!(cells.iter().all(|c| c == "unavailable"), "{cells:?}");

    let out = d.ctl_timeout(&["snapshot", "hello"], SNAPSHOT_WAIT);
    assert_eq!(out.code, Some(1), "snapshot with snapshots off: {out}");
    assert!(
        out.stderr.contains("unavailable") && out.stderr.contains("AETHER_SNAPSHOTS=0"),
        "the error carries the reason: {out}"
    );
}
