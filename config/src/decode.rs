//! From the span-annotated YAML tree to a typed [`Config`], collecting every
//! error instead of stopping at the first.
//!
//! Each field is decoded on its own: a bad value records an error and the
//! field takes its default, so later fields (and the cross-field checks:
//! duplicate ids and ports, `min_instances <= max_instances`, handler files)
//! are still checked. The result is used only when no error was recorded.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, ConfigWarning, ErrorKind, WarningKind};
use crate::model::{Config, Cores, Function, Orchestrator, Xdp, XdpMode};
use crate::schema::{self, FloatSpec, IntSpec};
use crate::yaml::{self, Mark, Node, NodeKind, TreeError, Value};

/// Keys accepted at the top of the document.
const TOP_FIELDS: &[&str] = &["orchestrator", "functions"];

/// Everything the loader found: a config (meaningful only without errors),
/// the errors and the warnings.
pub(crate) struct Outcome {
    pub config: Config,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigWarning>,
}

/// Parses and decodes `text`; relative paths are resolved against `base_dir`.
pub(crate) fn decode_str(text: &str, file: &str, base_dir: &Path) -> Outcome {
    let mut d = Decoder {
        file,
        base_dir,
        errors: Vec::new(),
        warnings: Vec::new(),
        python_checked: false,
    };
    let parsed = yaml::parse(text);
    for e in parsed.errors {
        let (mark, kind) = match e {
            TreeError::Syntax { mark, message } => (mark, ErrorKind::Syntax { message }),
            TreeError::UnsupportedTag { mark, tag } => (mark, ErrorKind::UnsupportedTag { tag }),
            TreeError::AliasLimit { mark } => (
                mark,
                ErrorKind::AliasLimit {
                    limit: yaml::ALIAS_NODE_LIMIT,
                },
            ),
            TreeError::UnknownAnchor { mark } => (mark, ErrorKind::UnknownAnchor),
        };
        d.error(mark, "", kind);
    }
    if parsed.documents.len() > 1 {
        let mark = parsed.documents[1].mark;
        d.error(
            mark,
            "",
            ErrorKind::MultipleDocuments {
                count: parsed.documents.len(),
            },
        );
    }
    let config = d.config(parsed.documents.first());
    let Decoder {
        mut errors,
        mut warnings,
        ..
    } = d;
    // Stable: errors at one place keep the order they were found in.
    errors.sort_by_key(|e| (e.line, e.column));
    warnings.sort_by_key(|w| (w.line, w.column));
    Outcome {
        config,
        errors,
        warnings,
    }
}

/// The checked entries of one mapping, by field name.
struct Fields<'n> {
    mark: Mark,
    entries: Vec<(&'static str, &'n Node)>,
}

impl<'n> Fields<'n> {
    fn empty(mark: Mark) -> Self {
        Fields {
            mark,
            entries: Vec::new(),
        }
    }

    fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
    }
}

/// Where a function's id and port were written, for the cross-field checks.
struct Claims {
    ids: HashMap<String, Mark>,
    ports: HashMap<u16, (String, Mark)>,
}

struct Decoder<'a> {
    file: &'a str,
    base_dir: &'a Path,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
    python_checked: bool,
}

fn child(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

/// The closest known field to `field`, if it is close enough to be a typo.
fn suggest(field: &str, known: &[&str]) -> Option<String> {
    let by_edits = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(field, k), *k))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, _)| *d <= (field.chars().count() / 3).max(1))
        .map(|(_, k)| k);
    let by_similarity = || {
        known
            .iter()
            .map(|k| (strsim::jaro_winkler(field, k), *k))
            .filter(|(s, _)| *s >= 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, k)| k)
    };
    by_edits.or_else(by_similarity).map(str::to_owned)
}

impl Decoder<'_> {
    fn error(&mut self, mark: Mark, field_path: &str, kind: ErrorKind) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line: mark.line,
            column: mark.column,
            field_path: field_path.to_owned(),
            kind,
        });
    }

    fn warn(&mut self, mark: Mark, field_path: &str, kind: WarningKind) {
        self.warnings.push(ConfigWarning {
            file: self.file.to_owned(),
            line: mark.line,
            column: mark.column,
            field_path: field_path.to_owned(),
            kind,
        });
    }

    fn wrong_type(&mut self, node: &Node, path: &str, expected: &str) {
        self.error(
            node.mark,
            path,
            ErrorKind::WrongType {
                expected: expected.to_owned(),
                found: node.describe(),
            },
        );
    }

    /// Checks a mapping's keys (strings, no duplicates, all known). Null is an
    /// empty mapping; any other non-mapping is an error (`None`).
    fn mapping<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        known: &'static [&'static str],
        what: &str,
    ) -> Option<Fields<'n>> {
        let entries = match &node.kind {
            NodeKind::Mapping(entries) => entries,
            _ if node.is_null() => return Some(Fields::empty(node.mark)),
            _ => {
                self.wrong_type(node, path, what);
                return None;
            }
        };
        let mut fields = Fields::empty(node.mark);
        for (name, key, value) in self.unique_keys(entries, path) {
            let key_path = child(path, &name);
            match known.iter().find(|k| **k == name) {
                Some(k) => fields.entries.push((k, value)),
                None => {
                    let kind = ErrorKind::UnknownField {
                        suggestion: suggest(&name, known),
                        valid: known.iter().map(|k| (*k).to_owned()).collect(),
                        field: name,
                    };
                    self.error(key.mark, &key_path, kind);
                }
            }
        }
        Some(fields)
    }

    /// The entries of a mapping with string keys, each key once: keys that
    /// are not strings and repeated keys are reported and left out.
    fn unique_keys<'n>(
        &mut self,
        entries: &'n [(Node, Node)],
        path: &str,
    ) -> Vec<(String, &'n Node, &'n Node)> {
        let mut seen: HashMap<String, Mark> = HashMap::new();
        let mut out = Vec::new();
        for (key, value) in entries {
            let Some(name) = self.key(key, path) else {
                continue;
            };
            if let Some(first) = seen.get(&name) {
                let kind = ErrorKind::DuplicateKey {
                    key: name.clone(),
                    first_line: first.line,
                    first_column: first.column,
                };
                self.error(key.mark, &child(path, &name), kind);
                continue;
            }
            seen.insert(name.clone(), key.mark);
            out.push((name, key, value));
        }
        out
    }

    /// A mapping key as a string: any non-null scalar, as written.
    fn key(&mut self, key: &Node, path: &str) -> Option<String> {
        match &key.kind {
            NodeKind::Scalar(s) if s.value != Value::Null => Some(s.raw.clone()),
            _ => {
                let kind = ErrorKind::NonStringKey {
                    found: key.describe(),
                };
                self.error(key.mark, path, kind);
                None
            }
        }
    }

    fn int<T: TryFrom<i64>>(&mut self, node: &Node, path: &str, spec: &IntSpec) -> Option<T> {
        let NodeKind::Scalar(s) = &node.kind else {
            self.wrong_type(node, path, "an integer");
            return None;
        };
        let value = match s.value {
            Value::Int(v) => Some(v),
            Value::BigInt => None,
            _ => {
                self.wrong_type(node, path, "an integer");
                return None;
            }
        };
        // The conversion cannot fail for our specs (their ranges fit T); if
        // one did, the value is out of the field's range all the same.
        if let Some(t) = value
            .filter(|v| (spec.min..=spec.max).contains(v))
            .and_then(|v| T::try_from(v).ok())
        {
            return Some(t);
        }
        let kind = ErrorKind::OutOfRange {
            value: s.raw.clone(),
            range: spec.range_text(),
        };
        self.error(node.mark, path, kind);
        None
    }

    /// An optional integer field: its value, or the default when absent or bad.
    fn int_field<T: TryFrom<i64> + Default>(
        &mut self,
        fields: &Fields<'_>,
        parent: &str,
        spec: &IntSpec,
    ) -> T {
        let default = || {
            spec.default
                .and_then(|d| T::try_from(d).ok())
                .unwrap_or_default()
        };
        match fields.get(spec.name) {
            Some(node) => self
                .int(node, &child(parent, spec.name), spec)
                .unwrap_or_else(default),
            None => default(),
        }
    }

    fn float_field(&mut self, fields: &Fields<'_>, parent: &str, spec: &FloatSpec) -> f64 {
        let Some(node) = fields.get(spec.name) else {
            return spec.default;
        };
        let path = child(parent, spec.name);
        let (value, raw) = match &node.kind {
            NodeKind::Scalar(s) => match s.value {
                Value::Float(f) => (f, &s.raw),
                // Integers of this size convert exactly.
                Value::Int(i) if i.unsigned_abs() < (1 << 53) => (i as f64, &s.raw),
                _ => {
                    self.wrong_type(node, &path, "a number");
                    return spec.default;
                }
            },
            _ => {
                self.wrong_type(node, &path, "a number");
                return spec.default;
            }
        };
        if spec.contains(value) {
            return value;
        }
        let kind = ErrorKind::OutOfRange {
            value: raw.clone(),
            range: spec.range_text(),
        };
        self.error(node.mark, &path, kind);
        spec.default
    }

    fn bool_field(&mut self, fields: &Fields<'_>, parent: &str, name: &str, default: bool) -> bool {
        let Some(node) = fields.get(name) else {
            return default;
        };
        match &node.kind {
            NodeKind::Scalar(s) => match s.value {
                Value::Bool(b) => return b,
                _ => self.wrong_type(node, &child(parent, name), "a boolean (true or false)"),
            },
            _ => self.wrong_type(node, &child(parent, name), "a boolean (true or false)"),
        }
        default
    }

    /// A string: any non-null scalar, exactly as written.
    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.kind {
            NodeKind::Scalar(s) if s.value != Value::Null => Some(s.raw.clone()),
            _ => {
                self.wrong_type(node, path, "a string");
                None
            }
        }
    }

    /// A path, resolved against the config file's directory.
    fn path(&mut self, node: &Node, path: &str) -> Option<PathBuf> {
        let text = self.string(node, path)?;
        if text.is_empty() {
            let kind = ErrorKind::InvalidValue {
                value: text,
                reason: "a path cannot be empty".to_owned(),
            };
            self.error(node.mark, path, kind);
            return None;
        }
        Some(self.base_dir.join(text))
    }

    fn path_field(
        &mut self,
        fields: &Fields<'_>,
        parent: &str,
        name: &str,
        default: &str,
    ) -> PathBuf {
        fields
            .get(name)
            .and_then(|node| self.path(node, &child(parent, name)))
            .unwrap_or_else(|| PathBuf::from(default))
    }

    /// A string parsed with `FromStr`; `what` describes the accepted form.
    fn parsed<T: std::str::FromStr>(&mut self, node: &Node, path: &str, what: &str) -> Option<T> {
        let text = self.string(node, path)?;
        match text.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                let kind = ErrorKind::InvalidValue {
                    value: text,
                    reason: format!("expected {what}"),
                };
                self.error(node.mark, path, kind);
                None
            }
        }
    }

    fn config(&mut self, root: Option<&Node>) -> Config {
        let Some(root) = root else {
            self.warn(Mark { line: 1, column: 1 }, "", WarningKind::NoFunctions);
            return Config {
                orchestrator: Orchestrator::default(),
                functions: Vec::new(),
            };
        };
        let fields = self
            .mapping(
                root,
                "",
                TOP_FIELDS,
                "a mapping with `orchestrator:` and `functions:`",
            )
            .unwrap_or(Fields::empty(root.mark));
        let orchestrator = match fields.get("orchestrator") {
            Some(node) => self.orchestrator(node),
            None => Orchestrator::default(),
        };
        let functions = match fields.get("functions") {
            Some(node) => self.functions(node, &orchestrator),
            None => Vec::new(),
        };
        if functions.is_empty() && self.errors.is_empty() {
            let mark = fields.get("functions").map_or(fields.mark, |n| n.mark);
            self.warn(mark, "functions", WarningKind::NoFunctions);
        }
        Config {
            orchestrator,
            functions,
        }
    }

    fn orchestrator(&mut self, node: &Node) -> Orchestrator {
        use schema::orchestrator as s;
        let p = "orchestrator";
        let Some(f) = self.mapping(node, p, s::FIELDS, "a mapping") else {
            return Orchestrator::default();
        };
        let defaults = Orchestrator::default();
        Orchestrator {
            shm_buffer_size: self.int_field(&f, p, &s::SHM_BUFFER_SIZE),
            warm_pool_size: self.int_field(&f, p, &s::WARM_POOL_SIZE),
            restore_timeout_ms: self.int_field(&f, p, &s::RESTORE_TIMEOUT_MS),
            snapshot_dir: self.path_field(&f, p, "snapshot_dir", s::SNAPSHOT_DIR),
            cores: f.get("cores").map_or(Cores::All, |n| self.cores(n)),
            metrics_addr: f
                .get("metrics_addr")
                .and_then(|n| self.metrics_addr(n))
                .unwrap_or(defaults.metrics_addr),
            listen_addr: f
                .get("listen_addr")
                .and_then(|n| self.parsed::<IpAddr>(n, "orchestrator.listen_addr", "an IP address"))
                .unwrap_or(defaults.listen_addr),
            state_dir: self.path_field(&f, p, "state_dir", s::STATE_DIR),
            log_dir: self.path_field(&f, p, "log_dir", s::LOG_DIR),
            drain_timeout_ms: self.int_field(&f, p, &s::DRAIN_TIMEOUT_MS),
            xdp: f.get("xdp").and_then(|n| self.xdp(n)),
        }
    }

    fn metrics_addr(&mut self, node: &Node) -> Option<SocketAddr> {
        let path = "orchestrator.metrics_addr";
        // Port 0 asks for any free port (aetherd logs the one it got); tests
        // that run several aetherd processes side by side use it.
        self.parsed(node, path, "ip:port, e.g. 127.0.0.1:9090")
    }

    fn cores(&mut self, node: &Node) -> Cores {
        use schema::orchestrator as s;
        let path = "orchestrator.cores";
        let expected = "\"all\", a core count, or a list of CPU ids";
        match &node.kind {
            NodeKind::Scalar(sc) if sc.value == Value::Str && sc.raw == "all" => Cores::All,
            NodeKind::Scalar(sc) if matches!(sc.value, Value::Int(_) | Value::BigInt) => self
                .int(node, path, &s::CORES_COUNT)
                .map_or(Cores::All, Cores::Count),
            NodeKind::Sequence(items) if !items.is_empty() => {
                Cores::List(self.unique_ints(items, path, &s::CORE_ID, "CPU"))
            }
            _ => {
                self.wrong_type(node, path, expected);
                Cores::All
            }
        }
    }

    /// The integers of a sequence, each in `spec`'s range and listed once;
    /// bad and repeated entries are reported (`what` names one in the
    /// message) and left out.
    fn unique_ints<T>(&mut self, items: &[Node], path: &str, spec: &IntSpec, what: &str) -> Vec<T>
    where
        T: TryFrom<i64> + Copy + Eq + std::hash::Hash + std::fmt::Display,
    {
        let mut out = Vec::new();
        let mut seen: HashMap<T, Mark> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let Some(value) = self.int::<T>(item, &item_path, spec) else {
                continue;
            };
            if let Some(first) = seen.get(&value) {
                let kind = ErrorKind::InvalidValue {
                    value: value.to_string(),
                    reason: format!(
                        "{what} {value} is listed twice (first at line {}, column {})",
                        first.line, first.column
                    ),
                };
                self.error(item.mark, &item_path, kind);
                continue;
            }
            seen.insert(value, item.mark);
            out.push(value);
        }
        out
    }

    /// `orchestrator.xdp.allow_ports`: a (possibly empty) list of unique ports.
    fn allow_ports(&mut self, fields: &Fields<'_>) -> Vec<u16> {
        use schema::orchestrator as s;
        let path = "orchestrator.xdp.allow_ports";
        let Some(node) = fields.get("allow_ports") else {
            return s::XDP_ALLOW_PORTS.to_vec();
        };
        match &node.kind {
            NodeKind::Sequence(items) => self.unique_ints(items, path, &s::XDP_ALLOW_PORT, "port"),
            _ => {
                self.wrong_type(node, path, "a list of ports, e.g. [22, 443] ([] for none)");
                s::XDP_ALLOW_PORTS.to_vec()
            }
        }
    }

    fn xdp(&mut self, node: &Node) -> Option<Xdp> {
        use schema::orchestrator as s;
        let p = "orchestrator.xdp";
        if node.is_null() {
            return None;
        }
        let f = self.mapping(node, p, s::XDP_FIELDS, "a mapping")?;
        let interface = match f.get("interface") {
            Some(n) => self.interface(n),
            None => {
                let kind = ErrorKind::MissingField {
                    field: "interface".to_owned(),
                };
                self.error(f.mark, &child(p, "interface"), kind);
                None
            }
        };
        let mode = match f.get("mode") {
            None => XdpMode::Auto,
            Some(n) => match self.string(n, "orchestrator.xdp.mode").as_deref() {
                Some("auto") => XdpMode::Auto,
                Some("native") => XdpMode::Native,
                Some("generic") => XdpMode::Generic,
                Some(other) => {
                    let kind = ErrorKind::InvalidValue {
                        value: other.to_owned(),
                        reason: "expected auto, native or generic".to_owned(),
                    };
                    self.error(n.mark, "orchestrator.xdp.mode", kind);
                    XdpMode::Auto
                }
                None => XdpMode::Auto,
            },
        };
        let strict = self.bool_field(&f, p, "strict", false);
        let allow_ports = self.allow_ports(&f);
        Some(Xdp {
            interface: interface?,
            mode,
            strict,
            allow_ports,
        })
    }

    fn interface(&mut self, node: &Node) -> Option<String> {
        let path = "orchestrator.xdp.interface";
        let name = self.string(node, path)?;
        let max = schema::orchestrator::IFNAME_MAX;
        let ok = !name.is_empty()
            && name.len() <= max
            && !name.contains(|c: char| c == '/' || c.is_whitespace() || c == '\0');
        if !ok {
            let kind = ErrorKind::InvalidValue {
                value: name,
                reason: format!("an interface name has 1 to {max} bytes and no '/' or whitespace"),
            };
            self.error(node.mark, path, kind);
            return None;
        }
        Some(name)
    }

    fn functions(&mut self, node: &Node, orchestrator: &Orchestrator) -> Vec<Function> {
        let items = match &node.kind {
            NodeKind::Sequence(items) => items,
            _ if node.is_null() => return Vec::new(),
            _ => {
                self.wrong_type(node, "functions", "a sequence of functions (`- id: ...`)");
                return Vec::new();
            }
        };
        let mut claims = Claims {
            ids: HashMap::new(),
            ports: HashMap::new(),
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(f) =
                self.function(item, &format!("functions[{i}]"), orchestrator, &mut claims)
            {
                out.push(f);
            }
        }
        out
    }

    fn required<'n>(&mut self, f: &Fields<'n>, parent: &str, name: &str) -> Option<&'n Node> {
        let node = f.get(name);
        if node.is_none() {
            let kind = ErrorKind::MissingField {
                field: name.to_owned(),
            };
            self.error(f.mark, &child(parent, name), kind);
        }
        node
    }

    fn function(
        &mut self,
        node: &Node,
        p: &str,
        orchestrator: &Orchestrator,
        claims: &mut Claims,
    ) -> Option<Function> {
        use schema::function as s;
        if node.is_null() {
            self.wrong_type(
                node,
                p,
                "a function (a mapping with id, trigger_port, handler_path)",
            );
            return None;
        }
        let f = self.mapping(
            node,
            p,
            s::FIELDS,
            "a function (a mapping with id, trigger_port, handler_path)",
        )?;

        let id = self
            .required(&f, p, "id")
            .and_then(|n| self.function_id(n, &child(p, "id"), claims));
        let trigger_port = self.required(&f, p, "trigger_port").and_then(|n| {
            self.trigger_port(
                n,
                &child(p, "trigger_port"),
                id.as_deref(),
                orchestrator,
                claims,
            )
        });
        let handler_path = self.required(&f, p, "handler_path").and_then(|n| {
            let path = child(p, "handler_path");
            let resolved = self.path(n, &path)?;
            self.check_handler(&resolved, n.mark, &path)
                .then_some(resolved)
        });
        let environment = f
            .get("environment")
            .map(|n| self.environment(n, &child(p, "environment")))
            .unwrap_or_default();
        let min_instances: u32 = self.int_field(&f, p, &s::MIN_INSTANCES);
        let max_instances: u32 = self.int_field(&f, p, &s::MAX_INSTANCES);
        if min_instances > max_instances {
            let (mark, path) = match (f.get("max_instances"), f.get("min_instances")) {
                (Some(n), _) => (n.mark, child(p, "max_instances")),
                (None, Some(n)) => (n.mark, child(p, "min_instances")),
                (None, None) => (f.mark, p.to_owned()),
            };
            let kind = ErrorKind::MinAboveMax {
                min: min_instances,
                max: max_instances,
            };
            self.error(mark, &path, kind);
        }
        // Decode every field before building, so each one is checked even
        // when an earlier one failed.
        let memory_limit_mb = self.int_field(&f, p, &s::MEMORY_LIMIT_MB);
        let timeout_ms = self.int_field(&f, p, &s::TIMEOUT_MS);
        let concurrency = self.int_field(&f, p, &s::CONCURRENCY);
        let target_utilization = self.float_field(&f, p, &s::TARGET_UTILIZATION);
        let idle_timeout_ms = self.int_field(&f, p, &s::IDLE_TIMEOUT_MS);
        let stable_window_ms = self.int_field(&f, p, &s::STABLE_WINDOW_MS);
        let panic_window_pct = self.float_field(&f, p, &s::PANIC_WINDOW_PCT);
        let egress = self.bool_field(&f, p, "egress", s::EGRESS);
        let handshake_timeout_ms = self.int_field(&f, p, &s::HANDSHAKE_TIMEOUT_MS);
        let warmup_requests = self.int_field(&f, p, &s::WARMUP_REQUESTS);
        let queue_size = self.int_field(&f, p, &s::QUEUE_SIZE);
        Some(Function {
            id: id?,
            memory_limit_mb,
            trigger_port: trigger_port?,
            handler_path: handler_path?,
            timeout_ms,
            environment,
            concurrency,
            target_utilization,
            min_instances,
            max_instances,
            idle_timeout_ms,
            stable_window_ms,
            panic_window_pct,
            egress,
            handshake_timeout_ms,
            warmup_requests,
            queue_size,
        })
    }

    fn function_id(&mut self, node: &Node, path: &str, claims: &mut Claims) -> Option<String> {
        let id = self.string(node, path)?;
        let max = schema::function::ID_MAX_LEN;
        let bad_char = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'));
        let reason = if id.is_empty() || id.len() > max {
            Some(format!(
                "an id has 1 to {max} characters, this one has {}",
                id.chars().count()
            ))
        } else {
            bad_char.map(|c| format!("{c:?} is not allowed; use letters, digits, '-' and '_'"))
        };
        if let Some(reason) = reason {
            self.error(
                node.mark,
                path,
                ErrorKind::InvalidValue { value: id, reason },
            );
            return None;
        }
        if let Some(first) = claims.ids.get(&id) {
            let kind = ErrorKind::DuplicateId {
                id: id.clone(),
                first_line: first.line,
                first_column: first.column,
            };
            self.error(node.mark, path, kind);
            // Still a well-formed id: keep checking this function.
            return Some(id);
        }
        claims.ids.insert(id.clone(), node.mark);
        Some(id)
    }

    fn trigger_port(
        &mut self,
        node: &Node,
        path: &str,
        id: Option<&str>,
        orchestrator: &Orchestrator,
        claims: &mut Claims,
    ) -> Option<u16> {
        let port: u16 = self.int(node, path, &schema::function::TRIGGER_PORT)?;
        if let Some((other_id, first)) = claims.ports.get(&port) {
            let kind = ErrorKind::DuplicatePort {
                port,
                other_id: other_id.clone(),
                first_line: first.line,
                first_column: first.column,
            };
            self.error(node.mark, path, kind);
            return Some(port);
        }
        claims
            .ports
            .insert(port, (id.unwrap_or("?").to_owned(), node.mark));
        let metrics = orchestrator.metrics_addr;
        let overlaps = orchestrator.listen_addr.is_unspecified()
            || metrics.ip().is_unspecified()
            || orchestrator.listen_addr == metrics.ip();
        if port == metrics.port() && metrics.port() != 0 && overlaps {
            let kind = ErrorKind::PortConflict {
                port,
                metrics_addr: metrics.to_string(),
            };
            self.error(node.mark, path, kind);
        }
        Some(port)
    }

    fn environment(&mut self, node: &Node, path: &str) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let entries = match &node.kind {
            NodeKind::Mapping(entries) => entries,
            _ if node.is_null() => return env,
            _ => {
                self.wrong_type(node, path, "a mapping of variable names to values");
                return env;
            }
        };
        for (name, key, value) in self.unique_keys(entries, path) {
            let var_path = child(path, &name);
            if name.starts_with(schema::function::RESERVED_ENV_PREFIX) {
                self.error(
                    key.mark,
                    &var_path,
                    ErrorKind::ReservedEnvironment { key: name },
                );
                continue;
            }
            if name.is_empty() || name.contains(['=', '\0']) {
                let kind = ErrorKind::InvalidValue {
                    value: name,
                    reason: "a variable name cannot be empty or contain '=' or NUL".to_owned(),
                };
                self.error(key.mark, &var_path, kind);
                continue;
            }
            let Some(text) = self.string(value, &var_path) else {
                continue;
            };
            if text.contains('\0') {
                let kind = ErrorKind::InvalidValue {
                    value: text,
                    reason: "a variable value cannot contain NUL".to_owned(),
                };
                self.error(value.mark, &var_path, kind);
                continue;
            }
            env.insert(name, text);
        }
        env
    }

    /// Checks the handler file; true when it can be started.
    fn check_handler(&mut self, path: &Path, mark: Mark, field_path: &str) -> bool {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let kind = ErrorKind::HandlerNotFound {
                    path: path.to_owned(),
                };
                self.error(mark, field_path, kind);
                return false;
            }
            Err(e) => {
                let kind = ErrorKind::HandlerInaccessible {
                    path: path.to_owned(),
                    message: e.to_string(),
                };
                self.error(mark, field_path, kind);
                return false;
            }
        };
        if !meta.is_file() {
            let kind = ErrorKind::HandlerNotAFile {
                path: path.to_owned(),
            };
            self.error(mark, field_path, kind);
            return false;
        }
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("py"))
        {
            if !self.python_checked {
                self.python_checked = true;
                if !on_path("python3") {
                    self.warn(mark, field_path, WarningKind::Python3NotFound);
                }
            }
            return true;
        }
        let mode = meta.permissions().mode();
        if mode & 0o111 == 0 {
            let kind = ErrorKind::HandlerNotExecutable {
                path: path.to_owned(),
                mode: mode & 0o7777,
            };
            self.error(mark, field_path, kind);
            return false;
        }
        if !has_exec_header(path) {
            let kind = WarningKind::NoInterpreterLine {
                path: path.to_owned(),
            };
            self.warn(mark, field_path, kind);
        }
        true
    }
}

/// Whether an executable named `program` is in a `PATH` directory.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Whether the file starts like something `execve` runs: `#!` or ELF.
/// An unreadable file counts as fine here; exec will say what is wrong.
fn has_exec_header(path: &Path) -> bool {
    let mut head = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| {
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    });
    match read {
        Ok(n) => head[..n].starts_with(b"#!") || head[..n] == *b"\x7fELF",
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::suggest;
    use crate::schema::function::FIELDS;

    #[test]
    fn suggestions_catch_typos_but_not_strangers() {
        assert_eq!(
            suggest("trigger_prot", FIELDS).as_deref(),
            Some("trigger_port")
        );
        assert_eq!(suggest("timeout", FIELDS).as_deref(), Some("timeout_ms"));
        assert_eq!(
            suggest("memory_limit", FIELDS).as_deref(),
            Some("memory_limit_mb")
        );
        assert_eq!(
            suggest("enviroment", FIELDS).as_deref(),
            Some("environment")
        );
        assert_eq!(suggest("colour", FIELDS), None);
    }
}
