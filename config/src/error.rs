//! Errors and warnings found while loading a configuration.
//!
//! Every diagnostic names the file, the 1-based line and column of the value
//! (or key) at fault, and the field path (`functions[0].trigger_port`), and
//! renders as `file:line:column: field: message`. Line and column are 0 only
//! for problems with the file as a whole (it cannot be read).

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[error("{}{}", location(.file, *.line, *.column, .field_path), .kind)]
pub struct ConfigError {
    /// The file name as given to the loader.
    pub file: String,
    /// 1-based line; 0 when the problem is the whole file.
    pub line: usize,
    /// 1-based column in characters; 0 when the problem is the whole file.
    pub column: usize,
    /// Where in the document: `orchestrator.cores[1]`, `functions[0].id`;
    /// empty for the document itself.
    pub field_path: String,
    /// What is wrong.
    pub kind: ErrorKind,
}

fn location(file: &str, line: usize, column: usize, field_path: &str) -> String {
    let mut s = String::from(file);
    if line > 0 {
        s.push_str(&format!(":{line}:{column}"));
    }
    s.push_str(": ");
    if !field_path.is_empty() {
        s.push_str(field_path);
        s.push_str(": ");
    }
    s
}

/// What is wrong, with the values that explain it.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ErrorKind {
    /// The file could not be read.
    #[error("cannot read the configuration: {message}")]
    Io {
        /// The operating system's reason.
        message: String,
    },
    /// The text is not valid YAML.
    #[error("YAML syntax error: {message}")]
    Syntax {
        /// The parser's description.
        message: String,
    },
    /// More than one YAML document (`---`) in the file.
    #[error("the file holds {count} YAML documents; put the whole configuration in one")]
    MultipleDocuments {
        /// How many documents were found.
        count: usize,
    },
    /// A YAML tag other than the core schema's.
    #[error("unsupported YAML tag {tag}")]
    UnsupportedTag {
        /// The tag as written.
        tag: String,
    },
    /// An alias refers to no anchor.
    #[error("alias to an undefined anchor")]
    UnknownAnchor,
    /// Anchors and aliases expand to too many nodes.
    #[error("aliases expand to more than {limit} nodes")]
    AliasLimit {
        /// The budget.
        limit: usize,
    },
    /// The same key twice in one mapping.
    #[error("duplicate key '{key}'; first given at line {first_line}, column {first_column}")]
    DuplicateKey {
        /// The repeated key.
        key: String,
        /// Where the first occurrence is.
        first_line: usize,
        /// Where the first occurrence is.
        first_column: usize,
    },
    /// A key the schema does not know.
    #[error("unknown field '{field}'; {}", hint(.suggestion, .valid))]
    UnknownField {
        /// The key as written.
        field: String,
        /// The closest valid key, when one is close.
        suggestion: Option<String>,
        /// All keys valid at this place.
        valid: Vec<String>,
    },
    /// A key that is not a string (`1: x`, `[a]: x`).
    #[error("keys must be strings, found {found}")]
    NonStringKey {
        /// What was found.
        found: String,
    },
    /// A value of the wrong YAML type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// The type this field takes.
        expected: String,
        /// What was found, with its value.
        found: String,
    },
    /// A number outside the field's range.
    #[error("{value} is out of range {range}")]
    OutOfRange {
        /// The value as written.
        value: String,
        /// The accepted range, e.g. `1..=65535`.
        range: String,
    },
    /// A required field is absent.
    #[error("missing required field '{field}'")]
    MissingField {
        /// The field's name.
        field: String,
    },
    /// A value of the right type that the field does not accept.
    #[error("invalid value {value:?}: {reason}")]
    InvalidValue {
        /// The value as written.
        value: String,
        /// Why it is rejected, and what would be accepted.
        reason: String,
    },
    /// Two functions with the same id.
    #[error(
        "duplicate function id '{id}'; first defined at line {first_line}, column {first_column}"
    )]
    DuplicateId {
        /// The id.
        id: String,
        /// Where the first function with this id sets it.
        first_line: usize,
        /// Where the first function with this id sets it.
        first_column: usize,
    },
    /// Two functions with the same trigger port.
    #[error(
        "trigger_port {port} is already used by function '{other_id}' at line {first_line}, column {first_column}"
    )]
    DuplicatePort {
        /// The port.
        port: u16,
        /// The function that claimed it first.
        other_id: String,
        /// Where that function sets it.
        first_line: usize,
        /// Where that function sets it.
        first_column: usize,
    },
    /// A trigger port that aetherd needs for something else.
    #[error("trigger_port {port} collides with orchestrator.metrics_addr {metrics_addr}")]
    PortConflict {
        /// The port.
        port: u16,
        /// The metrics address using it.
        metrics_addr: String,
    },
    /// `min_instances` above `max_instances`.
    #[error("min_instances {min} is greater than max_instances {max}")]
    MinAboveMax {
        /// `min_instances`.
        min: u32,
        /// `max_instances`.
        max: u32,
    },
    /// An environment variable aetherd sets itself.
    #[error("environment variable '{key}' is reserved: aetherd sets AETHER_* variables for every instance")]
    ReservedEnvironment {
        /// The variable.
        key: String,
    },
    /// `handler_path` does not exist.
    #[error("handler {} does not exist (a relative handler_path is resolved against the configuration file's directory)", .path.display())]
    HandlerNotFound {
        /// The resolved path.
        path: PathBuf,
    },
    /// `handler_path` is a directory or another non-file.
    #[error("handler {} is not a regular file", .path.display())]
    HandlerNotAFile {
        /// The resolved path.
        path: PathBuf,
    },
    /// `handler_path` cannot be inspected.
    #[error("handler {} cannot be inspected: {message}", .path.display())]
    HandlerInaccessible {
        /// The resolved path.
        path: PathBuf,
        /// The operating system's reason.
        message: String,
    },
    /// `handler_path` is not a `.py` file and has no execute bit.
    #[error("handler {} is not executable (mode {mode:04o}); run `chmod +x {}`, or use a .py handler, which runs with python3", .path.display(), .path.display())]
    HandlerNotExecutable {
        /// The resolved path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

fn hint(suggestion: &Option<String>, valid: &[String]) -> String {
    match suggestion {
        Some(s) => format!("did you mean '{s}'?"),
        None => format!("valid fields here: {}", valid.join(", ")),
    }
}

/// Every error found in one file, in source order.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The errors, in source order.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    /// How many errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false for a value returned by the loader.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates over the errors.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One error per line.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Something legal but probably not what was meant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigWarning {
    /// The file name as given to the loader.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Where in the document; empty for the document itself.
    pub field_path: String,
    /// What is odd.
    pub kind: WarningKind,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}warning: {}",
            location(&self.file, self.line, self.column, &self.field_path),
            self.kind
        )
    }
}

/// What is odd about a valid configuration.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WarningKind {
    /// No functions: aetherd starts and waits for `aetherctl deploy`.
    #[error("no functions are defined; aetherd will serve nothing until `aetherctl deploy`")]
    NoFunctions,
    /// A `.py` handler, but no `python3` on `PATH`.
    #[error("python3 is not on PATH, and .py handlers run with python3")]
    Python3NotFound,
    /// An executable that is neither a `#!` script nor an ELF binary.
    #[error("handler {} starts with neither '#!' nor an ELF header; exec may fail", .path.display())]
    NoInterpreterLine {
        /// The resolved path.
        path: PathBuf,
    },
}
