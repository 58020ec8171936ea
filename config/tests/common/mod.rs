//! Shared by the integration tests: a directory with handler files, and
//! loading a fixture against it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use config::{ConfigError, ConfigErrors, Loaded};

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures_dir().join(name)).unwrap()
}

/// A temporary directory holding `handler` (executable shell script),
/// `plain` (not executable), `handler.py` (not executable) and `adir/`.
pub fn sandbox() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str, mode: u32| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("handler", "#!/bin/sh\nexit 0\n", 0o755);
    write("plain", "#!/bin/sh\nexit 0\n", 0o644);
    write("handler.py", "print('hi')\n", 0o644);
    std::fs::create_dir(dir.path().join("adir")).unwrap();
    dir
}

/// Loads fixture `name` with relative paths resolved in a fresh sandbox.
pub fn load(name: &str) -> (Result<Loaded, ConfigErrors>, tempfile::TempDir) {
    let dir = sandbox();
    let result = config::load_str_with_warnings(&fixture(name), name, dir.path());
    (result, dir)
}

/// The errors of a fixture that must fail.
pub fn errors(name: &str) -> Vec<ConfigError> {
    match load(name).0 {
        Ok(l) => panic!("{name} loaded but should not: {:?}", l.config),
        Err(e) => e.0,
    }
}

/// The one error at `line:column` on `path`; panics listing all otherwise.
pub fn error_at<'a>(
    errors: &'a [ConfigError],
    line: usize,
    column: usize,
    path: &str,
) -> &'a ConfigError {
    let found: Vec<_> = errors
        .iter()
        .filter(|e| e.line == line && e.column == column && e.field_path == path)
        .collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "expected one error at {line}:{column} on {path:?}, got:\n{}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}
