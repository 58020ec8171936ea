//! The JSON document every benchmark writes, and its target checks.
//!
//! ```text
//! {
//!   "benchmark": "ring",                 // = binary name = file stem
//!   "timestamp": "2026-11-30T03:20:00Z", // UTC, end of the run
//!   "git_rev": "1c66427…",               // HEAD of the work tree ("unknown" outside git)
//!   "git_dirty": true,                   // uncommitted changes in the tree
//!   "machine": { hostname, kernel, cpu_model, cores_used: [a, b], … },
//!   "smoke": false,
//!   "parameters": { … },                 // iteration counts, sizes: what was run
//!   "results": { "<metric>_<unit>": number, … },   // flat, every number measured
//!   "targets": { "<name>": { description, comparison, limit, measured, pass } }
//! }
//! ```

use crate::machine::Machine;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use thiserror::Error;

/// Errors writing a report.
#[derive(Debug, Error)]
pub enum ReportError {
    /// Serialising the report failed.
    #[error("cannot serialise the {benchmark} report: {source}")]
    Json {
        benchmark: String,
        source: serde_json::Error,
    },
    /// Creating the directory or writing the file failed.
    #[error("cannot write {path}: {source}; check that the output directory is writable")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How a measured value is compared with its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// `measured <= limit` passes.
    AtMost,
    /// `measured >= limit` passes.
    AtLeast,
}

/// One target from the issue, checked against a number of the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub description: String,
    pub comparison: Comparison,
    pub limit: f64,
    pub measured: f64,
    pub pass: bool,
}

impl Target {
    /// A target that passes when `measured <= limit`.
    #[must_use]
    pub fn at_most(description: &str, limit: f64, measured: f64) -> Self {
        Self::new(description, Comparison::AtMost, limit, measured)
    }

    /// A target that passes when `measured >= limit`.
    #[must_use]
    pub fn at_least(description: &str, limit: f64, measured: f64) -> Self {
        Self::new(description, Comparison::AtLeast, limit, measured)
    }

    fn new(description: &str, comparison: Comparison, limit: f64, measured: f64) -> Self {
        let pass = match comparison {
            Comparison::AtMost => measured <= limit,
            Comparison::AtLeast => measured >= limit,
        };
        Self {
            description: description.to_owned(),
            comparison,
            limit,
            measured,
            pass,
        }
    }
}

/// A benchmark result document (see the module docs for the layout).
#[derive(Debug, Clone, Serialize)]
pub struct Report<P: Serialize, R: Serialize> {
    pub benchmark: String,
    pub timestamp: String,
    pub git_rev: String,
    pub git_dirty: bool,
    pub machine: Machine,
    pub smoke: bool,
    pub parameters: P,
    pub results: R,
    pub targets: BTreeMap<String, Target>,
}

impl<P: Serialize, R: Serialize> Report<P, R> {
    /// Serialises the report to `dir/<benchmark>.json` (pretty, trailing
    /// newline), creating `dir`; returns the path written.
    ///
    /// # Errors
    /// [`ReportError`] when serialising or writing fails.
    pub fn write_to(&self, dir: &Path) -> Result<PathBuf, ReportError> {
        let mut text = serde_json::to_string_pretty(self).map_err(|source| ReportError::Json {
            benchmark: self.benchmark.clone(),
            source,
        })?;
        text.push('\n');
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(format!("{}.json", self.benchmark));
        std::fs::write(&path, text).map_err(|source| ReportError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

/// The work tree's HEAD and whether it has uncommitted changes, from `git`
/// run in this crate's source directory; `("unknown", false)` without git.
#[must_use]
pub fn git_revision() -> (String, bool) {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            (rev, dirty)
        }
        None => ("unknown".to_owned(), false),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn targets_compare_in_their_direction() {
        assert!(Target::at_most("x", 1.5, 1.5).pass);
        assert!(!Target::at_most("x", 1.5, 1.6).pass);
        assert!(Target::at_least("x", 10.0, 10.0).pass);
        assert!(!Target::at_least("x", 10.0, 9.9).pass);
    }

    #[test]
    fn report_round_trips_through_json() {
        let dir = std::env::temp_dir().join(format!("bench-report-test-{}", std::process::id()));
        let mut targets = BTreeMap::new();
        targets.insert("t".to_owned(), Target::at_least("t", 1.0, 2.0));
        let report = Report {
            benchmark: "unit".to_owned(),
            timestamp: crate::clock::utc_timestamp(),
            git_rev: git_revision().0,
            git_dirty: false,
            machine: Machine::detect(&[0]),
            smoke: true,
            parameters: serde_json::json!({ "n": 3 }),
            results: serde_json::json!({ "x_ns": 42 }),
            targets,
        };
        let path = report.write_to(&dir).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["benchmark"], "unit");
        assert_eq!(v["results"]["x_ns"], 42);
        assert_eq!(v["targets"]["t"]["pass"], true);
        assert_eq!(v["targets"]["t"]["comparison"], "at_least");
        assert_eq!(v["machine"]["cores_used"][0], 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
