//! Per-instance log files: `<log_dir>/<function>/<instance>.log`.
//!
//! The handler's stdout and stderr are the same file descriptor, opened with
//! `O_APPEND` by aetherd and handed to the child: the kernel writes straight
//! to the file, aetherd copies nothing. Files are never rotated (yet).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Errors of log handling.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Opening, reading or listing a log failed.
    #[error("log {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The log file of one instance.
pub fn log_path(log_dir: &Path, function: &str, instance: &str) -> PathBuf {
    log_dir.join(function).join(format!("{instance}.log"))
}

/// Opens (creating the directory and file) an instance's log for appending.
pub fn open_log(log_dir: &Path, function: &str, instance: &str) -> Result<File, LogError> {
    let path = log_path(log_dir, function, instance);
    let dir = log_dir.join(function);
    fs::create_dir_all(&dir).map_err(|source| LogError::Io { path: dir, source })?;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&path)
        .map_err(|source| LogError::Io { path, source })
}

/// One line of a function's logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The instance that wrote it.
    pub instance: String,
    /// The text, without the newline.
    pub line: String,
}

/// The last `n` lines of `path` (reads backwards in blocks; whole file never
/// loaded unless it is small).
pub fn tail_file(path: &Path, n: usize) -> Result<Vec<String>, LogError> {
    let err = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(err)?;
    let len = f.seek(SeekFrom::End(0)).map_err(err)?;
    let mut pos = len;
    let mut buf: Vec<u8> = Vec::new();
    const BLOCK: u64 = 8192;
    while pos > 0 {
        // A trailing newline ends the last line rather than starting an empty one.
        let newlines = buf.iter().filter(|&&b| b == b'\n').count();
        let ends_nl = buf.last() == Some(&b'\n');
        if newlines > n + usize::from(ends_nl) {
            break;
        }
        let start = pos.saturating_sub(BLOCK);
        let mut chunk = vec![0; usize::try_from(pos - start).unwrap_or(0)];
        f.seek(SeekFrom::Start(start)).map_err(err)?;
        f.read_exact(&mut chunk).map_err(err)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        pos = start;
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    Ok(lines[skip..].iter().map(|s| (*s).to_owned()).collect())
}

/// The last `n` lines across all instance logs of `function`: files are taken
/// oldest-modified first, so the newest output comes last.
pub fn tail(log_dir: &Path, function: &str, n: usize) -> Result<Vec<LogLine>, LogError> {
    let dir = log_dir.join(function);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(LogError::Io { path: dir, source }),
    };
    let mut files: Vec<(std::time::SystemTime, String, PathBuf)> = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let Some(instance) = path
            .file_name()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_suffix(".log"))
        else {
            continue;
        };
        let modified = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        files.push((modified, instance.to_owned(), path));
    }
    files.sort();
    let mut out = Vec::new();
    for (_, instance, path) in files.iter().rev() {
        if out.len() >= n {
            break;
        }
        let want = n - out.len();
        let mut lines: Vec<LogLine> = tail_file(path, want)?
            .into_iter()
            .map(|line| LogLine {
                instance: instance.clone(),
                line,
            })
            .collect();
        lines.append(&mut out);
        out = lines;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tail_file_returns_last_lines_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = open_log(dir.path(), "fn", "i0").unwrap();
        for i in 0..5000 {
            writeln!(f, "line {i}").unwrap();
        }
        let got = tail_file(&log_path(dir.path(), "fn", "i0"), 3).unwrap();
        assert_eq!(got, vec!["line 4997", "line 4998", "line 4999"]);
        let all = tail_file(&log_path(dir.path(), "fn", "i0"), 10_000).unwrap();
        assert_eq!(all.len(), 5000);
        assert_eq!(all[0], "line 0");
    }

    #[test]
    fn tail_spans_instances_newest_last() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = open_log(dir.path(), "fn", "a").unwrap();
        writeln!(a, "a1\na2").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut b = open_log(dir.path(), "fn", "b").unwrap();
        writeln!(b, "b1").unwrap();
        let got = tail(dir.path(), "fn", 2).unwrap();
        assert_eq!(
            got,
            vec![
                LogLine {
                    instance: "a".into(),
                    line: "a2".into()
                },
                LogLine {
                    instance: "b".into(),
                    line: "b1".into()
                },
            ]
        );
        assert!(tail(dir.path(), "missing", 5).unwrap().is_empty());
    }
}
