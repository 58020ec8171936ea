//! CRIU snapshots of functions: which images exist, which are being made,
//! and where they live.
//!
//! One [`SnapshotStore`] per aetherd, shared by every core and the control
//! loop. A function's images live in
//!
//! ```text
//! <snapshot_dir>/<function>/<identity>/      *.img, dump.log, COMPLETE
//! <snapshot_dir>/<function>/<identity>.partial-<pid>   while dumping
//! <snapshot_dir>/.restore/<instance>/      a restore's log and pidfile
//! ```
//!
//! The *identity* is 16 hex digits of FNV-1a over what the restored process
//! depends on: the handler's path, size and mtime, the command line, the
//! environment, the trigger port and the warm-up request count. A changed
//! handler file or config thus gets a new identity and a new snapshot; the
//! old directory is removed when the new identity is first seen. Images are
//! written to a `.partial-*` directory and renamed into place once CRIU
//! succeeded and `COMPLETE` is written, so a crash mid-dump never leaves a
//! directory that looks usable. Images from an earlier aetherd run with the
//! same identity are used as they are (`snapshot_dir` is a tmpfs by default:
//! they last until reboot).
//!
//! Who dumps: the first core whose instance of the function becomes ready
//! calls [`SnapshotStore::claim`]; exactly one caller gets the [`DumpTicket`]
//! for an identity; the others start from its images once they are ready.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use shm_abi::segment::{fnv1a, FNV_OFFSET};

use crate::criu::{Criu, CriuError};

/// Marker written last into a finished images directory.
const COMPLETE: &str = "COMPLETE";

/// Where a function's snapshot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    /// No images for the current identity yet.
    None,
    /// A dump is running.
    Dumping,
    /// Images exist; new instances are restored from them.
    Ready,
    /// The last dump failed (see `error`); instances are spawned.
    Failed,
    /// CRIU is not usable on this host (see `error`); instances are spawned.
    Unavailable,
}

impl SnapshotState {
    /// Lower-case name, for `aetherctl list` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Dumping => "dumping",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::Unavailable => "unavailable",
        }
    }
}

/// A function's snapshot, as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotStatus {
    pub state: SnapshotState,
    /// Identity the images belong to (16 hex digits; empty when unknown).
    pub identity: String,
    /// The images directory (exists when `state` is `Ready`).
    pub images_dir: PathBuf,
    /// Total size of the `*.img` files.
    pub bytes: u64,
    /// When the images were completed.
    pub created: Option<SystemTime>,
    /// Wall time of the `criu dump` that made them (0 for images found on disk).
    pub dump_ms: f64,
    /// Why the last dump failed, or why CRIU is unavailable.
    pub error: Option<String>,
}

/// Errors of computing an identity or of a dump.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("handler {path}: {source}")]
    Handler { path: PathBuf, source: io::Error },
    #[error("snapshot directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Criu(#[from] CriuError),
    #[error("warm-up request {n} of {total} to {instance} failed: {reason}")]
    Warmup {
        instance: String,
        n: u32,
        total: u32,
        reason: String,
    },
}

/// Images of one function, ready to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyImages {
    pub identity: String,
    pub dir: PathBuf,
    /// Where restores keep their logs and pidfiles: `<snapshot_dir>/.restore`,
    /// visible to `criu` wherever it runs (its mount namespace has a private
    /// `/run`, so the default state dir under `/run` is not).
    pub work_root: PathBuf,
}

/// The right to dump one function's identity (one holder at a time).
#[derive(Debug)]
pub struct DumpTicket {
    pub function: String,
    pub identity: String,
    /// Where the finished images go.
    pub dir: PathBuf,
}

#[derive(Debug, Clone)]
struct Entry {
    status: SnapshotStatus,
    /// Consecutive failed dumps of this identity, and when the last failed:
    /// a failed snapshot is tried again after [`retry_delay`].
    failures: u32,
    failed_at: Option<Instant>,
}

/// First wait before a failed dump is tried again; doubles per failure.
const RETRY_FIRST: Duration = Duration::from_secs(5);
/// Longest wait before a failed dump is tried again.
const RETRY_MAX: Duration = Duration::from_secs(300);

/// How long after its `failures`-th consecutive failure a dump is retried.
fn retry_delay(failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    RETRY_FIRST.saturating_mul(factor).min(RETRY_MAX)
}

/// Every function's snapshot state; see the module docs.
#[derive(Debug)]
pub struct SnapshotStore {
    root: PathBuf,
    criu: Result<Criu, String>,
    entries: Mutex<HashMap<String, Entry>>,
}

/// What a function's images depend on; see the module docs.
pub fn identity(f: &config::Function) -> Result<String, SnapshotError> {
    let meta = fs::metadata(&f.handler_path).map_err(|source| SnapshotError::Handler {
        path: f.handler_path.clone(),
        source,
    })?;
    let mut h = FNV_OFFSET;
    h = fnv1a(h, f.handler_path.as_os_str().as_encoded_bytes());
    h = fnv1a(h, &meta.size().to_le_bytes());
    h = fnv1a(h, &meta.mtime().to_le_bytes());
    h = fnv1a(h, &meta.mtime_nsec().to_le_bytes());
    let (program, args) = f.command();
    for part in std::iter::once(program).chain(args) {
        h = fnv1a(h, part.as_encoded_bytes());
        h = fnv1a(h, &[0]);
    }
    for (k, v) in &f.environment {
        h = fnv1a(h, k.as_bytes());
        h = fnv1a(h, b"=");
        h = fnv1a(h, v.as_bytes());
        h = fnv1a(h, &[0]);
    }
    h = fnv1a(h, &f.trigger_port.to_le_bytes());
    h = fnv1a(h, &f.warmup_requests.to_le_bytes());
    Ok(format!("{h:016x}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it;
    // every update here leaves the map consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SnapshotStore {
    /// A store under `root` (created 0700). `criu` is what dumps and
    /// restores; `Err(reason)` when CRIU is not usable here (every function
    /// then reports `Unavailable` and instances are spawned).
    pub fn new(root: &Path, criu: Result<Criu, String>) -> Self {
        let criu = criu.and_then(|c| {
            fs::create_dir_all(root)
                .and_then(|()| fs::set_permissions(root, fs::Permissions::from_mode(0o700)))
                .map_err(|e| format!("snapshot_dir {}: {e}", root.display()))?;
            Ok(c)
        });
        Self {
            root: root.to_path_buf(),
            criu,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The CRIU in use, if any.
    pub fn criu(&self) -> Option<&Criu> {
        self.criu.as_ref().ok()
    }

    /// Where `function`'s images of `identity` live.
    fn dir(&self, function: &str, identity: &str) -> PathBuf {
        self.root.join(function).join(identity)
    }

    /// Registers `f` (at deploy, by every core; idempotent): computes its
    /// identity; a new identity forgets the old snapshot and removes its
    /// images; complete images already on disk are adopted.
    pub fn register(&self, f: &config::Function) -> SnapshotStatus {
        let unavailable = |identity: String, error: String| SnapshotStatus {
            state: SnapshotState::Unavailable,
            identity,
            images_dir: PathBuf::new(),
            bytes: 0,
            created: None,
            dump_ms: 0.0,
            error: Some(error),
        };
        let identity = match identity(f) {
            Ok(i) => i,
            Err(e) => return self.set(&f.id, unavailable(String::new(), e.to_string())),
        };
        if let Err(reason) = &self.criu {
            return self.set(&f.id, unavailable(identity, reason.clone()));
        }
        let mut entries = lock(&self.entries);
        if let Some(e) = entries.get(&f.id) {
            if e.status.identity == identity {
                return e.status.clone();
            }
        }
        let dir = self.dir(&f.id, &identity);
        remove_other_identities(&self.root.join(&f.id), &identity);
        let status = match fs::metadata(dir.join(COMPLETE)) {
            Ok(meta) => SnapshotStatus {
                state: SnapshotState::Ready,
                identity,
                bytes: crate::criu::images_bytes(&dir).unwrap_or(0),
                images_dir: dir,
                created: meta.modified().ok(),
                dump_ms: 0.0,
                error: None,
            },
            Err(_) => SnapshotStatus {
                state: SnapshotState::None,
                identity,
                images_dir: dir,
                bytes: 0,
                created: None,
                dump_ms: 0.0,
                error: None,
            },
        };
        entries.insert(
            f.id.clone(),
            Entry {
                status: status.clone(),
                failures: 0,
                failed_at: None,
            },
        );
        status
    }

    fn set(&self, function: &str, status: SnapshotStatus) -> SnapshotStatus {
        lock(&self.entries).insert(
            function.to_string(),
            Entry {
                status: status.clone(),
                failures: 0,
                failed_at: None,
            },
        );
        status
    }

    /// Forgets `function` (undeploy); its images stay on disk for a later
    /// deploy of the same identity.
    pub fn forget(&self, function: &str) {
        lock(&self.entries).remove(function);
    }

    /// The function's snapshot status (`None` state for an unknown function).
    pub fn status(&self, function: &str) -> SnapshotStatus {
        lock(&self.entries).get(function).map_or_else(
            || SnapshotStatus {
                state: SnapshotState::None,
                identity: String::new(),
                images_dir: PathBuf::new(),
                bytes: 0,
                created: None,
                dump_ms: 0.0,
                error: None,
            },
            |e| e.status.clone(),
        )
    }

    /// Images of `function`'s `identity` to restore from, when ready (a
    /// function version being replaced has another identity and gets none).
    pub fn ready(&self, function: &str, identity: &str) -> Option<ReadyImages> {
        let entries = lock(&self.entries);
        let e = entries.get(function)?;
        (e.status.state == SnapshotState::Ready && e.status.identity == identity).then(|| {
            ReadyImages {
                identity: e.status.identity.clone(),
                dir: e.status.images_dir.clone(),
                work_root: self.root.join(".restore"),
            }
        })
    }

    /// The right to dump `function`'s `identity` now: given when it has no
    /// snapshot (or, with `force`, unless a dump is already running). The state becomes
    /// `Dumping` until [`Self::finish`].
    pub fn claim(&self, function: &str, identity: &str, force: bool) -> Option<DumpTicket> {
        self.claim_at(function, identity, force, Instant::now())
    }

    /// [`Self::claim`] at time `now`: a failed snapshot is free again once
    /// [`retry_delay`] has passed since its last failure.
    fn claim_at(
        &self,
        function: &str,
        identity: &str,
        force: bool,
        now: Instant,
    ) -> Option<DumpTicket> {
        let mut entries = lock(&self.entries);
        let e = entries.get_mut(function)?;
        if e.status.identity != identity {
            // Another version of the function (an update in progress).
            return None;
        }
        let retry_due = e
            .failed_at
            .is_some_and(|at| now.saturating_duration_since(at) >= retry_delay(e.failures));
        let free = match e.status.state {
            SnapshotState::None => true,
            SnapshotState::Failed => force || retry_due,
            SnapshotState::Ready => force,
            SnapshotState::Dumping | SnapshotState::Unavailable => false,
        };
        if !free {
            return None;
        }
        e.status.state = SnapshotState::Dumping;
        Some(DumpTicket {
            function: function.to_string(),
            identity: e.status.identity.clone(),
            dir: e.status.images_dir.clone(),
        })
    }

    /// Dumps the instance `pid` (left running) for `ticket` into a partial
    /// directory, then moves it into place; blocking (≈ 60–70 ms), so call
    /// it from a thread of its own. `prepare` runs first (warm-up requests).
    /// The store's state is updated either way; the status is returned.
    pub fn dump(
        &self,
        ticket: DumpTicket,
        pid: i32,
        source_log: &Path,
        prepare: impl FnOnce() -> Result<(), SnapshotError>,
    ) -> Result<SnapshotStatus, SnapshotError> {
        let result = prepare().and_then(|()| self.dump_inner(&ticket, pid, source_log));
        let mut entries = lock(&self.entries);
        let Some(e) = entries.get_mut(&ticket.function) else {
            // Undeployed meanwhile: nothing to record.
            return result;
        };
        if e.status.identity != ticket.identity {
            // Redeployed with another identity meanwhile; this dump is stale.
            let _ = fs::remove_dir_all(&ticket.dir);
            return result;
        }
        match &result {
            Ok(s) => {
                e.status = s.clone();
                e.failures = 0;
                e.failed_at = None;
            }
            Err(err) => {
                e.status.state = SnapshotState::Failed;
                e.status.error = Some(err.to_string());
                e.failures = e.failures.saturating_add(1);
                e.failed_at = Some(Instant::now());
            }
        }
        result
    }

    fn dump_inner(
        &self,
        ticket: &DumpTicket,
        pid: i32,
        source_log: &Path,
    ) -> Result<SnapshotStatus, SnapshotError> {
        use crate::instance::restore::{NETNS_KEY, SOURCE_LOG};
        let criu = self.criu.as_ref().map_err(|reason| {
            SnapshotError::Criu(CriuError::NotInstalled {
                path: PathBuf::from(reason),
            })
        })?;
        let parent = ticket.dir.parent().unwrap_or(&self.root);
        let dir_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SnapshotError::Dir { path, source }
        };
        fs::create_dir_all(parent).map_err(dir_err(parent))?;
        let partial = parent.join(format!(
            "{}.partial-{}",
            ticket.identity,
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&partial);
        let opts = crate::criu::DumpOptions {
            leave_running: true,
            external_netns: Some(crate::criu::ExternalNetns {
                inode: crate::criu::netns_inode(pid)?,
                key: NETNS_KEY.to_string(),
            }),
            skip_network_lock: true,
            tcp_established: true,
            ..Default::default()
        };
        let report = match criu.dump(pid, &partial, &opts) {
            Ok(r) => r,
            Err(e) => {
                let _ = fs::remove_dir_all(&partial);
                return Err(e.into());
            }
        };
        fs::write(
            partial.join(SOURCE_LOG),
            source_log.as_os_str().as_encoded_bytes(),
        )
        .and_then(|()| fs::write(partial.join(COMPLETE), ticket.identity.as_bytes()))
        .map_err(dir_err(&partial))?;
        let _ = fs::remove_dir_all(&ticket.dir);
        fs::rename(&partial, &ticket.dir).map_err(dir_err(&ticket.dir))?;
        Ok(SnapshotStatus {
            state: SnapshotState::Ready,
            identity: ticket.identity.clone(),
            images_dir: ticket.dir.clone(),
            bytes: report.images_bytes,
            created: Some(SystemTime::now()),
            dump_ms: report.duration.as_secs_f64() * 1e3,
            error: None,
        })
    }

    /// Marks `function`'s images unusable (a restore found them corrupt):
    /// they are removed and the next ready instance dumps anew.
    pub fn invalidate(&self, function: &str, identity: &str, why: &str) {
        let mut entries = lock(&self.entries);
        if let Some(e) = entries.get_mut(function) {
            if e.status.identity == identity && e.status.state == SnapshotState::Ready {
                tracing::warn!(
                    "{function}: snapshot {identity} unusable, dumping a new one: {why}"
                );
                let _ = fs::remove_dir_all(&e.status.images_dir);
                e.status.state = SnapshotState::None;
                e.status.error = Some(why.to_string());
                e.status.bytes = 0;
                e.status.created = None;
            }
        }
    }

    /// Age of `function`'s images.
    pub fn age(status: &SnapshotStatus) -> Option<Duration> {
        status.created.and_then(|c| c.elapsed().ok())
    }
}

/// Removes every entry of a function's directory but `keep` (stale
/// identities and abandoned partial dumps).
fn remove_other_identities(dir: &Path, keep: &str) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for entry in rd.flatten() {
        if entry.file_name().to_string_lossy() != keep {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn function(dir: &Path) -> config::Function {
        let handler = dir.join("h.py");
        fs::write(&handler, "print('hi')\n").unwrap();
        let yaml = format!(
            "functions:\n  - id: f\n    memory_limit_mb: 64\n    trigger_port: 9\n    handler_path: {}\n",
            handler.display()
        );
        config::load_str(&yaml, "t.yaml", dir)
            .unwrap()
            .functions
            .remove(0)
    }

    #[test]
    fn identity_follows_handler_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = function(dir.path());
        let a = identity(&f).unwrap();
        assert_eq!(a, identity(&f).unwrap());
        f.environment.insert("K".into(), "V".into());
        let b = identity(&f).unwrap();
        assert_ne!(a, b);
        f.max_instances += 1;
        assert_eq!(
            b,
            identity(&f).unwrap(),
            "autoscaling knobs keep the images"
        );
        fs::write(&f.handler_path, "print('changed, longer')\n").unwrap();
        assert_ne!(b, identity(&f).unwrap());
        fs::remove_file(&f.handler_path).unwrap();
        assert!(matches!(identity(&f), Err(SnapshotError::Handler { .. })));
    }

    #[test]
    fn one_claim_at_a_time_and_identity_change_resets() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(&dir.path().join("snap"), Ok(Criu::default()));
        let mut f = function(dir.path());
        let id = store.register(&f).identity;
        assert!(store.claim("f", "other-version", false).is_none());
        let t = store.claim("f", &id, false).unwrap();
        assert!(store.claim("f", &id, false).is_none());
        assert!(store.claim("f", &id, true).is_none(), "a dump is running");
        assert_eq!(store.status("f").state, SnapshotState::Dumping);
        // Pretend the dump finished: complete images on disk.
        fs::create_dir_all(&t.dir).unwrap();
        fs::write(t.dir.join("core-1.img"), [0u8; 10]).unwrap();
        fs::write(t.dir.join(COMPLETE), t.identity.as_bytes()).unwrap();
        // A fresh store (aetherd restarted) adopts them.
        let again = SnapshotStore::new(&dir.path().join("snap"), Ok(Criu::default()));
        let s = again.register(&f);
        assert_eq!(s.state, SnapshotState::Ready);
        assert_eq!(s.bytes, 10);
        assert_eq!(again.ready("f", &id).unwrap().dir, t.dir);
        assert!(again.ready("f", "other-version").is_none());
        // A changed config: new identity, old images removed.
        f.environment.insert("K".into(), "V".into());
        let s = again.register(&f);
        assert_eq!(s.state, SnapshotState::None);
        assert!(!t.dir.exists());
        assert!(again.ready("f", &id).is_none());
        assert!(again.ready("f", &s.identity).is_none(), "no images yet");
    }

    #[test]
    fn a_failed_dump_is_retried_after_a_growing_delay() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(&dir.path().join("snap"), Ok(Criu::default()));
        let f = function(dir.path());
        let id = store.register(&f).identity;
        let fail = |store: &SnapshotStore| {
            let t = store.claim("f", &id, true).unwrap();
            let r = store.dump(t, 1, Path::new("/dev/null"), || {
                Err(SnapshotError::Warmup {
                    instance: "f-1".into(),
                    n: 1,
                    total: 1,
                    reason: "refused".into(),
                })
            });
            assert!(r.is_err());
            assert_eq!(store.status("f").state, SnapshotState::Failed);
        };
        fail(&store);
        let t0 = Instant::now();
        assert!(store.claim_at("f", &id, false, t0).is_none(), "not at once");
        assert!(store.claim_at("f", &id, false, t0 + RETRY_FIRST).is_some());
        // That claim is in flight; fail it again: the wait doubles.
        let e = store.status("f");
        assert_eq!(e.state, SnapshotState::Dumping);
        lock(&store.entries).get_mut("f").unwrap().status.state = SnapshotState::Failed;
        fail(&store);
        let t1 = Instant::now();
        assert!(store.claim_at("f", &id, false, t1 + RETRY_FIRST).is_none());
        assert!(store
            .claim_at("f", &id, false, t1 + 2 * RETRY_FIRST)
            .is_some());
        assert_eq!(retry_delay(30), RETRY_MAX);
    }

    #[test]
    fn unavailable_criu_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(&dir.path().join("snap"), Err("no criu here".into()));
        let f = function(dir.path());
        let s = store.register(&f);
        assert_eq!(s.state, SnapshotState::Unavailable);
        assert_eq!(s.error.as_deref(), Some("no criu here"));
        assert!(store.claim("f", &s.identity, true).is_none());
    }

    #[test]
    fn invalidate_removes_images() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(&dir.path().join("snap"), Ok(Criu::default()));
        let f = function(dir.path());
        let id = store.register(&f).identity;
        let img = store.dir("f", &id);
        fs::create_dir_all(&img).unwrap();
        fs::write(img.join(COMPLETE), b"x").unwrap();
        store.forget("f");
        assert_eq!(store.register(&f).state, SnapshotState::Ready);
        store.invalidate("f", &id, "corrupt");
        assert!(!img.exists());
        assert_eq!(store.status("f").state, SnapshotState::None);
        assert!(store.claim("f", &id, false).is_some());
    }
}
