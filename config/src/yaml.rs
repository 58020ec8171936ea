//! A YAML tree that remembers where every node came from.
//!
//! `saphyr-parser` turns the text into events, each with a [`Span`]; [`parse`]
//! folds them into [`Node`]s that keep the line and column of their first
//! character. Unlike a typed deserializer this keeps going after the first
//! semantic problem, so the decoder can report every error in one pass.
//!
//! Choices made here, on purpose:
//! - Mappings are kept as ordered `(key, value)` pairs, duplicates included,
//!   so the decoder can report a duplicate key with both of its locations.
//! - Scalars keep their source text (`raw`) beside the value resolved with the
//!   YAML 1.2 core schema, so `FOO: 0755` in an environment stays `"0755"` and
//!   error messages quote what the user wrote.
//! - Anchors and aliases are expanded by copying, with a node budget
//!   ([`ALIAS_NODE_LIMIT`]) so a "billion laughs" file cannot exhaust memory.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, SpannedEventReceiver, Tag};

/// Most nodes alias expansion may create in one file.
pub(crate) const ALIAS_NODE_LIMIT: usize = 100_000;

/// A position in the source: both 1-based, columns counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Mark {
    pub line: usize,
    pub column: usize,
}

impl Mark {
    fn of(span: Span) -> Self {
        Mark {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub mark: Mark,
    pub kind: NodeKind,
}

#[derive(Debug, Clone)]
pub(crate) enum NodeKind {
    Scalar(Scalar),
    Sequence(Vec<Node>),
    Mapping(Vec<(Node, Node)>),
}

#[derive(Debug, Clone)]
pub(crate) struct Scalar {
    /// The text as written, without quotes or escapes.
    pub raw: String,
    pub value: Value,
}

/// A scalar resolved with the YAML 1.2 core schema.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    /// Written as an integer but outside `i64`.
    BigInt,
    Float(f64),
    /// A string; its text is [`Scalar::raw`].
    Str,
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar(s) if s.value == Value::Null)
    }

    /// What this node is, for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Sequence(_) => "a sequence".to_owned(),
            NodeKind::Mapping(_) => "a mapping".to_owned(),
            NodeKind::Scalar(s) => match s.value {
                Value::Null => "null (no value)".to_owned(),
                Value::Bool(b) => format!("boolean {b}"),
                Value::Int(_) | Value::BigInt => format!("integer {}", s.raw),
                Value::Float(_) => format!("float {}", s.raw),
                Value::Str => format!("string {:?}", s.raw),
            },
        }
    }

    fn count(&self) -> usize {
        match &self.kind {
            NodeKind::Scalar(_) => 1,
            NodeKind::Sequence(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            NodeKind::Mapping(entries) => {
                1 + entries
                    .iter()
                    .map(|(k, v)| k.count() + v.count())
                    .sum::<usize>()
            }
        }
    }
}

/// A problem found while building the tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TreeError {
    /// The YAML is malformed; the parser stops here.
    Syntax { mark: Mark, message: String },
    /// A tag we do not interpret (`!custom`); the node is kept as a string.
    UnsupportedTag { mark: Mark, tag: String },
    /// Alias expansion would pass [`ALIAS_NODE_LIMIT`].
    AliasLimit { mark: Mark },
    /// An alias names an anchor that was never defined.
    UnknownAnchor { mark: Mark },
}

/// The parsed documents of one file, plus the problems met on the way.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub documents: Vec<Node>,
    pub errors: Vec<TreeError>,
}

/// Parses `text` into trees, one per YAML document.
pub(crate) fn parse(text: &str) -> Parsed {
    let mut builder = Builder::default();
    let result = Parser::new_from_str(text).load(&mut builder, true);
    if let Err(e) = result {
        builder.errors.push(syntax_error(&e));
    }
    Parsed {
        documents: builder.documents,
        errors: builder.errors,
    }
}

fn syntax_error(e: &ScanError) -> TreeError {
    TreeError::Syntax {
        mark: Mark {
            line: e.marker().line(),
            column: e.marker().col() + 1,
        },
        message: e.info().to_owned(),
    }
}

enum Frame {
    Sequence {
        mark: Mark,
        anchor: usize,
        items: Vec<Node>,
    },
    Mapping {
        mark: Mark,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    documents: Vec<Node>,
    anchors: HashMap<usize, Node>,
    alias_nodes: usize,
    errors: Vec<TreeError>,
}

impl Builder {
    /// Hands a finished node to its parent (or makes it a document).
    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some(Frame::Sequence { items, .. }) => items.push(node),
            Some(Frame::Mapping { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }

    fn scalar(&mut self, text: &str, style: ScalarStyle, tag: Option<&Tag>, mark: Mark) -> Node {
        let value = match tag {
            None if style == ScalarStyle::Plain => resolve_plain(text),
            None => Value::Str,
            Some(tag) if tag.is_yaml_core_schema() => {
                let plain = resolve_plain(text);
                match (tag.suffix.as_str(), &plain) {
                    ("str", _) => Value::Str,
                    ("int", Value::Int(_) | Value::BigInt)
                    | ("float", Value::Float(_))
                    | ("bool", Value::Bool(_))
                    | ("null", Value::Null) => plain,
                    ("float", Value::Int(i)) => Value::Float(*i as f64),
                    _ => {
                        self.errors.push(TreeError::UnsupportedTag {
                            mark,
                            tag: format!("!!{} on {text:?}", tag.suffix),
                        });
                        Value::Str
                    }
                }
            }
            Some(tag) => {
                self.errors.push(TreeError::UnsupportedTag {
                    mark,
                    tag: format!("{}{}", tag.handle, tag.suffix),
                });
                Value::Str
            }
        };
        Node {
            mark,
            kind: NodeKind::Scalar(Scalar {
                raw: text.to_owned(),
                value,
            }),
        }
    }

    fn alias(&mut self, id: usize, mark: Mark) -> Node {
        let Some(target) = self.anchors.get(&id) else {
            self.errors.push(TreeError::UnknownAnchor { mark });
            return null_at(mark);
        };
        self.alias_nodes = self.alias_nodes.saturating_add(target.count());
        if self.alias_nodes > ALIAS_NODE_LIMIT {
            if !self
                .errors
                .iter()
                .any(|e| matches!(e, TreeError::AliasLimit { .. }))
            {
                self.errors.push(TreeError::AliasLimit { mark });
            }
            return null_at(mark);
        }
        let mut copy = target.clone();
        // Errors about the copy should point at the alias the user wrote.
        copy.mark = mark;
        copy
    }

    fn unsupported_collection_tag(&mut self, tag: Option<&Tag>, mark: Mark, core: &str) {
        if let Some(tag) = tag {
            if !(tag.is_yaml_core_schema() && tag.suffix == core) {
                self.errors.push(TreeError::UnsupportedTag {
                    mark,
                    tag: format!("{}{}", tag.handle, tag.suffix),
                });
            }
        }
    }
}

fn null_at(mark: Mark) -> Node {
    Node {
        mark,
        kind: NodeKind::Scalar(Scalar {
            raw: String::new(),
            value: Value::Null,
        }),
    }
}

impl<'input> SpannedEventReceiver<'input> for Builder {
    fn on_event(&mut self, event: Event<'input>, span: Span) {
        let mark = Mark::of(span);
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let node = self.scalar(&text, style, tag.as_deref(), mark);
                self.finish(node, anchor);
            }
            Event::SequenceStart(anchor, tag) => {
                self.unsupported_collection_tag(tag.as_deref(), mark, "seq");
                self.stack.push(Frame::Sequence {
                    mark,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, tag) => {
                self.unsupported_collection_tag(tag.as_deref(), mark, "map");
                self.stack.push(Frame::Mapping {
                    mark,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Sequence {
                        mark,
                        anchor,
                        items,
                    }) => (
                        Node {
                            mark,
                            kind: NodeKind::Sequence(items),
                        },
                        anchor,
                    ),
                    Some(Frame::Mapping {
                        mark,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            mark,
                            kind: NodeKind::Mapping(entries),
                        },
                        anchor,
                    ),
                    // The parser only emits balanced events; nothing to close.
                    None => return,
                };
                self.finish(node, anchor);
            }
            Event::Alias(id) => {
                let node = self.alias(id, mark);
                self.finish(node, 0);
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd => {}
        }
    }
}

/// Resolves an untagged plain scalar with the YAML 1.2 core schema.
pub(crate) fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") {
        return Value::Float(if negative {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        // Parse with the sign so that i64::MIN fits.
        return text.parse::<i64>().map_or(Value::BigInt, Value::Int);
    }
    // Core schema: octal and hexadecimal are unsigned.
    for (prefix, radix) in [("0o", 8), ("0x", 16)] {
        if let Some(digits) = text.strip_prefix(prefix) {
            if !digits.is_empty() && digits.chars().all(|c| c.is_digit(radix)) {
                return i64::from_str_radix(digits, radix).map_or(Value::BigInt, Value::Int);
            }
        }
    }
    if is_core_float(unsigned) {
        if let Ok(f) = text.parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::Str
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, the unsigned core float.
fn is_core_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => (!int.is_empty() || !frac.is_empty()) && digits(int) && digits(frac),
        None => !mantissa.is_empty() && digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_schema_resolution() {
        assert_eq!(resolve_plain("8080"), Value::Int(8080));
        assert_eq!(resolve_plain("-3"), Value::Int(-3));
        assert_eq!(resolve_plain("+3"), Value::Int(3));
        assert_eq!(resolve_plain("0x1F"), Value::Int(31));
        assert_eq!(resolve_plain("0o17"), Value::Int(15));
        assert_eq!(resolve_plain("99999999999999999999"), Value::BigInt);
        assert_eq!(resolve_plain("0.7"), Value::Float(0.7));
        assert_eq!(resolve_plain(".5"), Value::Float(0.5));
        assert_eq!(resolve_plain("1e3"), Value::Float(1000.0));
        assert_eq!(resolve_plain("-.inf"), Value::Float(f64::NEG_INFINITY));
        assert_eq!(resolve_plain("~"), Value::Null);
        assert_eq!(resolve_plain("True"), Value::Bool(true));
        // YAML 1.1 booleans and Rust-only float spellings are strings in 1.2.
        assert_eq!(resolve_plain("yes"), Value::Str);
        assert_eq!(resolve_plain("inf"), Value::Str);
        assert_eq!(resolve_plain("1.2.3"), Value::Str);
        assert_eq!(resolve_plain("0x"), Value::Str);
        assert_eq!(resolve_plain("e5"), Value::Str);
    }

    #[test]
    fn marks_are_one_based_and_duplicates_kept() {
        let parsed = parse("a: 1\nb:\n  - x\na: 2\n");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let NodeKind::Mapping(entries) = &parsed.documents[0].kind else {
            panic!("root is not a mapping");
        };
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].0.mark, Mark { line: 1, column: 1 });
        assert_eq!(entries[0].1.mark, Mark { line: 1, column: 4 });
        let NodeKind::Sequence(items) = &entries[1].1.kind else {
            panic!("b is not a sequence");
        };
        assert_eq!(items[0].mark, Mark { line: 3, column: 5 });
        assert_eq!(entries[2].0.mark, Mark { line: 4, column: 1 });
    }

    #[test]
    fn quoted_scalars_are_strings_and_raw_text_is_kept() {
        let parsed = parse("a: \"8080\"\nb: 0755\nc: !!str 12\n");
        let NodeKind::Mapping(entries) = &parsed.documents[0].kind else {
            panic!("root is not a mapping");
        };
        let scalar = |i: usize| match &entries[i].1.kind {
            NodeKind::Scalar(s) => s.clone(),
            other => panic!("not a scalar: {other:?}"),
        };
        assert_eq!(scalar(0).value, Value::Str);
        assert_eq!(scalar(1).value, Value::Int(755));
        assert_eq!(scalar(1).raw, "0755");
        assert_eq!(scalar(2).value, Value::Str);
    }

    #[test]
    fn aliases_expand_within_a_budget() {
        let parsed = parse("base: &b {x: 1}\ncopy: *b\n");
        assert!(parsed.errors.is_empty());
        let NodeKind::Mapping(entries) = &parsed.documents[0].kind else {
            panic!("root is not a mapping");
        };
        assert!(matches!(&entries[1].1.kind, NodeKind::Mapping(m) if m.len() == 1));
        assert_eq!(entries[1].1.mark, Mark { line: 2, column: 7 });

        // Nine levels of ten-fold aliases: 10^9 nodes if expanded.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let parsed = parse(&bomb);
        assert!(parsed
            .errors
            .iter()
            .any(|e| matches!(e, TreeError::AliasLimit { .. })));
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let parsed = parse("functions:\n  - id: a\n   bad: [\n");
        assert!(matches!(
            parsed.errors.as_slice(),
            [TreeError::Syntax { mark, .. }] if mark.line >= 2
        ));
    }
}
