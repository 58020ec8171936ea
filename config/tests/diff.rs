//! `Config::diff`: what `aetherctl deploy --dry-run` prints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::sandbox;
use config::{Config, ConfigDiff, FunctionUpdate};

const OLD: &str = "\
functions:
  - id: keep
    trigger_port: 8080
    handler_path: handler
  - id: change
    trigger_port: 8081
    handler_path: handler
    timeout_ms: 1000
  - id: drop
    trigger_port: 8082
    handler_path: handler
";

const NEW: &str = "\
orchestrator:
  warm_pool_size: 2
functions:
  - id: add
    trigger_port: 8083
    handler_path: handler.py
  - id: change
    trigger_port: 8081
    handler_path: handler
    timeout_ms: 2000
    environment:
      A: b
  - id: keep
    trigger_port: 8080
    handler_path: handler
";

fn load(text: &str, dir: &std::path::Path) -> Config {
    config::load_str(text, "t.yaml", dir).unwrap()
}

#[test]
fn diff_classifies_every_function() {
    let dir = sandbox();
    let diff = Config::diff(&load(OLD, dir.path()), &load(NEW, dir.path()));
    assert_eq!(
        diff,
        ConfigDiff {
            added: vec!["add".to_owned()],
            removed: vec!["drop".to_owned()],
            updated: vec![FunctionUpdate {
                id: "change".to_owned(),
                fields: vec!["timeout_ms", "environment"],
            }],
            unchanged: vec!["keep".to_owned()],
            orchestrator_changed: vec!["warm_pool_size"],
        }
    );
    assert!(!diff.is_empty());
    assert_eq!(
        diff.to_string(),
        "+ add\n- drop\n~ change (timeout_ms, environment)\n= keep\n\
         ! orchestrator (warm_pool_size): takes effect at the next `aetherctl up`\n"
    );
    let json = serde_json::to_value(&diff).unwrap();
    assert_eq!(
        json["updated"][0]["fields"],
        serde_json::json!(["timeout_ms", "environment"])
    );
}

#[test]
fn a_config_against_itself_is_an_empty_diff() {
    let dir = sandbox();
    let cfg = load(NEW, dir.path());
    let diff = Config::diff(&cfg, &cfg);
    assert!(diff.is_empty());
    assert_eq!(diff.unchanged, ["add", "change", "keep"]);
}

#[test]
fn relative_handler_paths_resolve_per_directory() {
    // The same text in two directories names two different handlers.
    let a = sandbox();
    let b = sandbox();
    let diff = Config::diff(&load(OLD, a.path()), &load(OLD, b.path()));
    assert_eq!(diff.updated.len(), 3);
    assert!(diff.updated.iter().all(|u| u.fields == ["handler_path"]));
}

#[test]
fn every_function_field_is_compared() {
    // Changing each field alone is seen as a change of that field.
    let dir = sandbox();
    let render = |field: &str, value: &str| {
        let mut fields = vec![
            ("id", "f"),
            ("trigger_port", "8080"),
            ("handler_path", "handler"),
        ];
        match fields.iter_mut().find(|(k, _)| *k == field) {
            Some(entry) => entry.1 = value,
            None => fields.push((field, value)),
        }
        let body: Vec<_> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!("functions:\n  - {}\n", body.join("\n    "))
    };
    let changes = [
        ("id", "g"),
        ("memory_limit_mb", "64"),
        ("trigger_port", "8081"),
        ("handler_path", "handler.py"),
        ("timeout_ms", "5"),
        ("environment", "{X: y}"),
        ("concurrency", "4"),
        ("target_utilization", "0.9"),
        ("min_instances", "1"),
        ("max_instances", "3"),
        ("idle_timeout_ms", "5"),
        ("stable_window_ms", "5000"),
        ("panic_window_pct", "50"),
        ("egress", "false"),
        ("handshake_timeout_ms", "5"),
        ("warmup_requests", "5"),
        ("queue_size", "5"),
    ];
    let fields: Vec<_> = changes.iter().map(|(f, _)| *f).collect();
    assert_eq!(fields, config::schema::function::FIELDS);
    let old = load(&render("id", "f"), dir.path());
    for (field, value) in changes {
        let text = render(field, value);
        let diff = Config::diff(&old, &load(&text, dir.path()));
        if field == "id" {
            assert_eq!(
                (diff.added, diff.removed),
                (vec!["g".to_owned()], vec!["f".to_owned()])
            );
        } else {
            let expected = FunctionUpdate {
                id: "f".to_owned(),
                fields: vec![field],
            };
            assert_eq!(diff.updated, [expected], "{text}");
        }
    }
}
