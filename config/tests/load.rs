//! Loading real files: the original's examples parse, every error kind is
//! reported at the right file, line, column and field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::{error_at, errors, fixture, load, sandbox};
use config::{Cores, ErrorKind, WarningKind, XdpMode};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn original_configuration_reference_parses() {
    let dir = sandbox();
    let handler = dir.path().join("handler");
    let text = fixture("reference.yaml").replace("/path/to/handler", handler.to_str().unwrap());
    let cfg = config::load_str(&text, "reference.yaml", dir.path()).unwrap();

    let o = &cfg.orchestrator;
    assert_eq!(o.shm_buffer_size, 4_194_304);
    assert_eq!(o.warm_pool_size, 10);
    assert_eq!(o.restore_timeout_ms, 15);
    assert_eq!(o.snapshot_dir, Path::new("/dev/shm/aetherless"));
    assert_eq!(o.cores, Cores::All);
    assert_eq!(
        o.metrics_addr,
        "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
    );

    let [f] = cfg.functions.as_slice() else {
        panic!("expected one function: {:?}", cfg.functions)
    };
    assert_eq!(f.id, "my-function");
    assert_eq!(f.memory_limit_mb, 256);
    assert_eq!(f.trigger_port, 8080);
    assert_eq!(f.handler_path, handler);
    assert_eq!(f.timeout_ms, 30_000);
    assert_eq!(f.environment.get("KEY").map(String::as_str), Some("value"));
    assert_eq!(f.command(), (handler.clone().into_os_string(), vec![]));
    // Fields the original did not have take their documented defaults.
    assert_eq!(f.concurrency, 1);
    assert_eq!(f.max_instances, 16);
    assert!(f.egress);
}

#[test]
fn original_quickstart_parses_unchanged_apart_from_the_handler_location() {
    let hello = repo_root().join("examples/hello.py");
    let text = fixture("quickstart-original.yaml")
        .replace("/opt/handlers/hello.py", hello.to_str().unwrap());
    let cfg = config::load_str(&text, "hello.yaml", Path::new("/")).unwrap();
    assert_eq!(cfg.functions.len(), 1);
    assert_eq!(cfg.functions[0].id, "hello-api");
    assert_eq!(cfg.functions[0].handler_path, hello);
}

#[test]
fn example_hello_yaml_loads_from_any_working_directory() {
    let path = repo_root().join("examples/hello.yaml");
    let loaded = config::load_file_with_warnings(&path).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let f = &loaded.config.functions[0];
    let hello = repo_root().join("examples/hello.py");
    assert_eq!(f.handler_path, hello);
    assert_eq!(f.memory_limit_mb, 128);
    assert_eq!(f.trigger_port, 8080);
    assert_eq!(f.timeout_ms, 30_000);
    assert_eq!(
        f.command(),
        (OsString::from("python3"), vec![hello.into_os_string()])
    );
}

#[test]
fn example_handler_is_the_original_byte_for_byte() {
    use std::os::unix::fs::PermissionsExt;
    let readme = std::fs::read_to_string(repo_root().join("../shared/seed/original-README.md"));
    let Ok(readme) = readme else {
        eprintln!("SKIP: ../shared/seed/original-README.md is not beside the work tree");
        return;
    };
    let start = readme.find("```python\n").unwrap() + "```python\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let path = repo_root().join("examples/hello.py");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), &readme[start..end]);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_ne!(mode & 0o111, 0, "examples/hello.py must be executable");
}

#[test]
fn every_field_is_decoded() {
    let (result, dir) = load("all_fields.yaml");
    let cfg = result.unwrap().config;
    let o = &cfg.orchestrator;
    assert_eq!(o.shm_buffer_size, 8 << 20);
    assert_eq!(o.warm_pool_size, 4);
    assert_eq!(o.restore_timeout_ms, 15);
    assert_eq!(o.snapshot_dir, dir.path().join("snapshots"));
    assert_eq!(o.cores, Cores::List(vec![1, 0]));
    assert_eq!(o.metrics_addr.to_string(), "127.0.0.1:9191");
    assert_eq!(o.listen_addr.to_string(), "127.0.0.1");
    assert_eq!(o.state_dir, Path::new("/tmp/aetherless-state"));
    assert_eq!(o.log_dir, dir.path().join("logs"));
    assert_eq!(o.drain_timeout_ms, 2500);
    let xdp = o.xdp.as_ref().unwrap();
    assert_eq!(
        (xdp.interface.as_str(), xdp.mode, xdp.strict),
        ("veth0", XdpMode::Generic, true)
    );
    assert_eq!(xdp.allow_ports, [22, 8443]);

    let f = &cfg.functions[0];
    assert_eq!(f.id, "everything_1");
    assert_eq!(f.memory_limit_mb, 256);
    assert_eq!(f.memory_limit_bytes(), 256 << 20);
    assert_eq!(f.trigger_port, 9000);
    assert_eq!(f.timeout_ms, 1000);
    let env: Vec<_> = f
        .environment
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [("DEBUG", "true"), ("MODE", "0755"), ("NAME", "quoted")]
    );
    assert_eq!(f.concurrency, 8);
    assert_eq!(f.target_utilization, 0.5);
    assert_eq!((f.min_instances, f.max_instances), (2, 4));
    assert_eq!(f.idle_timeout_ms, 0);
    assert_eq!(f.stable_window_ms, 6000);
    assert_eq!(f.panic_window_pct, 25.0);
    assert_eq!(f.panic_window().as_millis(), 1500);
    assert!(!f.egress);
    assert_eq!(f.handshake_timeout_ms, 2000);
    assert_eq!(f.warmup_requests, 3);
    assert_eq!(f.queue_size, 0);

    // A non-executable .py handler is fine: it runs with python3.
    let py = &cfg.functions[1];
    assert!(py.is_python());
    assert_eq!(py.command().0, "python3");
    assert_eq!(py.timeout_ms, 30_000);
    assert_eq!(py.memory_limit_mb, 128);

    // Serializes to JSON with the YAML's field names.
    let json = serde_json::to_value(&cfg).unwrap();
    assert_eq!(json["orchestrator"]["cores"], serde_json::json!([1, 0]));
    assert_eq!(json["orchestrator"]["xdp"]["mode"], "generic");
    assert_eq!(json["functions"][0]["trigger_port"], 9000);
}

#[test]
fn unknown_field_suggests_the_nearest_name() {
    let errs = errors("unknown_field.yaml");
    assert_eq!(errs.len(), 3, "{errs:#?}");
    let typo = error_at(&errs, 3, 5, "functions[0].trigger_prot");
    assert!(
        matches!(&typo.kind, ErrorKind::UnknownField { suggestion: Some(s), .. } if s == "trigger_port")
    );
    assert_eq!(
        typo.to_string(),
        "unknown_field.yaml:3:5: functions[0].trigger_prot: unknown field 'trigger_prot'; did you mean 'trigger_port'?"
    );
    let stranger = error_at(&errs, 5, 5, "functions[0].colour");
    assert!(matches!(
        &stranger.kind,
        ErrorKind::UnknownField {
            suggestion: None,
            ..
        }
    ));
    assert!(stranger
        .to_string()
        .contains("valid fields here: id, memory_limit_mb"));
    // The misspelt field is then missing.
    let missing = error_at(&errs, 2, 5, "functions[0].trigger_port");
    assert!(matches!(&missing.kind, ErrorKind::MissingField { field } if field == "trigger_port"));
}

#[test]
fn out_of_range_values_name_the_range() {
    let errs = errors("out_of_range.yaml");
    assert_eq!(errs.len(), 4, "{errs:#?}");
    let port = error_at(&errs, 3, 19, "functions[0].trigger_port");
    assert_eq!(
        port.to_string(),
        "out_of_range.yaml:3:19: functions[0].trigger_port: 70000 is out of range 1..=65535"
    );
    let mem = error_at(&errs, 5, 22, "functions[0].memory_limit_mb");
    assert!(
        matches!(&mem.kind, ErrorKind::OutOfRange { value, range } if value == "0" && range == "1..=16384")
    );
    let timeout = error_at(&errs, 6, 17, "functions[0].timeout_ms");
    assert!(matches!(&timeout.kind, ErrorKind::OutOfRange { range, .. } if range == "1..=900000"));
    let util = error_at(&errs, 7, 25, "functions[0].target_utilization");
    assert!(
        matches!(&util.kind, ErrorKind::OutOfRange { value, range } if value == "1.5" && range == "(0, 1]")
    );
}

#[test]
fn wrong_types_name_the_expected_type() {
    let errs = errors("wrong_type.yaml");
    assert_eq!(errs.len(), 5, "{errs:#?}");
    let expect = |line, column, path: &str, expected: &str, found: &str| {
        let e = error_at(&errs, line, column, path);
        match &e.kind {
            ErrorKind::WrongType {
                expected: x,
                found: f,
            } => {
                assert!(x.contains(expected), "{e}");
                assert_eq!(f, found, "{e}");
            }
            other => panic!("not a wrong type: {other:?}"),
        }
    };
    expect(2, 14, "orchestrator.cores[1]", "integer", "string \"one\"");
    expect(
        5,
        19,
        "functions[0].trigger_port",
        "integer",
        "string \"8080\"",
    );
    expect(
        7,
        22,
        "functions[0].memory_limit_mb",
        "integer",
        "string \"lots\"",
    );
    expect(8, 13, "functions[0].egress", "boolean", "string \"yes\"");
    expect(9, 18, "functions[0].environment", "mapping", "a sequence");
}

#[test]
fn missing_required_fields_are_each_named() {
    let errs = errors("missing_field.yaml");
    let fields: Vec<_> = errs
        .iter()
        .map(|e| {
            assert_eq!((e.line, e.column), (2, 5), "{e}");
            match &e.kind {
                ErrorKind::MissingField { field } => field.as_str(),
                other => panic!("not a missing field: {other:?}"),
            }
        })
        .collect();
    assert_eq!(fields, ["id", "trigger_port", "handler_path"]);
    assert_eq!(errs[0].field_path, "functions[0].id");
}

#[test]
fn duplicate_ids_name_both_locations() {
    let errs = errors("duplicate_id.yaml");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = error_at(&errs, 8, 9, "functions[2].id");
    assert!(
        matches!(&e.kind, ErrorKind::DuplicateId { id, first_line: 2, first_column: 9 } if id == "hello-api")
    );
    assert_eq!(
        e.to_string(),
        "duplicate_id.yaml:8:9: functions[2].id: duplicate function id 'hello-api'; first defined at line 2, column 9"
    );
}

#[test]
fn duplicate_ports_name_both_locations_and_the_metrics_port_is_taken() {
    let errs = errors("duplicate_port.yaml");
    assert_eq!(errs.len(), 2, "{errs:#?}");
    let dup = error_at(&errs, 6, 19, "functions[1].trigger_port");
    assert!(matches!(&dup.kind,
        ErrorKind::DuplicatePort { port: 8080, other_id, first_line: 3, first_column: 19 } if other_id == "first"));
    let metrics = error_at(&errs, 9, 19, "functions[2].trigger_port");
    assert!(matches!(
        &metrics.kind,
        ErrorKind::PortConflict { port: 9090, .. }
    ));
}

#[test]
fn a_non_executable_handler_is_an_error_unless_it_is_python() {
    let (result, dir) = load("handler_not_executable.yaml");
    let errs = result.unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = error_at(&errs, 4, 19, "functions[0].handler_path");
    match &e.kind {
        ErrorKind::HandlerNotExecutable { path, mode } => {
            assert_eq!(path, &dir.path().join("plain"));
            assert_eq!(*mode, 0o644);
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("chmod +x"), "{e}");
}

#[test]
fn a_missing_handler_or_a_directory_is_an_error() {
    let errs = errors("handler_missing.yaml");
    assert_eq!(errs.len(), 2, "{errs:#?}");
    let ghost = error_at(&errs, 4, 19, "functions[0].handler_path");
    assert!(
        matches!(&ghost.kind, ErrorKind::HandlerNotFound { path } if path.ends_with("does-not-exist"))
    );
    assert!(ghost
        .to_string()
        .contains("resolved against the configuration file's directory"));
    let dir = error_at(&errs, 7, 19, "functions[1].handler_path");
    assert!(matches!(&dir.kind, ErrorKind::HandlerNotAFile { .. }));
}

#[test]
fn bad_yaml_syntax_is_located() {
    let errs = errors("syntax.yaml");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = &errs[0];
    assert!(matches!(&e.kind, ErrorKind::Syntax { .. }), "{e}");
    assert!(e.line >= 4 && e.column >= 1, "{e}");
    assert!(e.to_string().starts_with(&format!(
        "syntax.yaml:{}:{}: YAML syntax error: ",
        e.line, e.column
    )));
}

#[test]
fn every_error_in_a_file_is_reported_in_source_order() {
    let errs = errors("many_errors.yaml");
    let places: Vec<_> = errs
        .iter()
        .map(|e| (e.line, e.column, e.field_path.as_str()))
        .collect();
    assert_eq!(
        places,
        [
            (2, 19, "orchestrator.warm_pool_size"),
            (3, 3, "orchestrator.metrics_adr"),
            (5, 9, "functions[0].id"),
            (6, 19, "functions[0].trigger_port"),
            (8, 5, "functions[0].timeout"),
            (11, 19, "functions[1].handler_path"),
            (13, 20, "functions[1].max_instances"),
            (15, 7, "functions[1].environment.AETHER_SOCKET"),
            (17, 7, "functions[1].environment.MODE"),
        ],
        "{errs:#?}"
    );
    assert!(
        matches!(&errs[1].kind, ErrorKind::UnknownField { suggestion: Some(s), .. } if s == "metrics_addr")
    );
    assert!(matches!(&errs[2].kind, ErrorKind::InvalidValue { value, .. } if value == "bad id!"));
    assert!(
        matches!(&errs[4].kind, ErrorKind::UnknownField { suggestion: Some(s), .. } if s == "timeout_ms")
    );
    assert!(matches!(
        &errs[6].kind,
        ErrorKind::MinAboveMax { min: 5, max: 2 }
    ));
    assert!(matches!(
        &errs[7].kind,
        ErrorKind::ReservedEnvironment { .. }
    ));
    assert!(matches!(
        &errs[8].kind,
        ErrorKind::DuplicateKey {
            first_line: 16,
            first_column: 7,
            ..
        }
    ));

    // The Display of the whole list is one line per error.
    let all = config::ConfigErrors(errs.clone()).to_string();
    assert_eq!(all.lines().count(), errs.len());
    assert!(all.lines().all(|l| l.starts_with("many_errors.yaml:")));
}

#[test]
fn an_unreadable_file_is_one_error_without_position() {
    let errs = config::load_file("/nonexistent/aetherless.yaml").unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(matches!(&errs.errors()[0].kind, ErrorKind::Io { .. }));
    assert_eq!((errs.errors()[0].line, errs.errors()[0].column), (0, 0));
    assert!(errs
        .to_string()
        .starts_with("/nonexistent/aetherless.yaml: cannot read the configuration: "));
}

#[test]
fn empty_configurations_are_valid_with_a_warning() {
    let dir = sandbox();
    for text in [
        "",
        "# nothing\n",
        "functions:\n",
        "functions: []\n",
        "orchestrator:\n  warm_pool_size: 0\n",
    ] {
        let loaded = config::load_str_with_warnings(text, "empty.yaml", dir.path())
            .unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(loaded.config.functions.is_empty());
        assert!(
            matches!(loaded.warnings.as_slice(), [w] if w.kind == WarningKind::NoFunctions),
            "{text:?}: {:?}",
            loaded.warnings
        );
    }
}

#[test]
fn structural_mistakes_are_errors() {
    let dir = sandbox();
    let errs = |text: &str| config::load_str(text, "t.yaml", dir.path()).unwrap_err().0;
    // A second document.
    let e = errs("functions: []\n---\nfunctions: []\n");
    assert!(
        matches!(&e[0].kind, ErrorKind::MultipleDocuments { count: 2 }),
        "{e:?}"
    );
    // A root that is not a mapping.
    let e = errs("- id: x\n");
    assert!(matches!(&e[0].kind, ErrorKind::WrongType { .. }), "{e:?}");
    // `functions` as a mapping.
    let e = errs("functions:\n  id: x\n");
    assert_eq!(
        (e[0].line, e[0].column, e[0].field_path.as_str()),
        (2, 3, "functions")
    );
    // A duplicate top-level key.
    let e = errs("functions: []\nfunctions: []\n");
    assert!(
        matches!(&e[0].kind, ErrorKind::DuplicateKey { first_line: 1, .. }),
        "{e:?}"
    );
    // Unsupported tags, unknown xdp mode, bad addresses, bad cores.
    let e = errs("orchestrator:\n  warm_pool_size: !custom 3\n");
    assert!(
        matches!(&e[0].kind, ErrorKind::UnsupportedTag { .. }),
        "{e:?}"
    );
    let e = errs("orchestrator:\n  xdp:\n    mode: turbo\n");
    let kinds: Vec<_> = e.iter().map(|e| e.field_path.as_str()).collect();
    assert_eq!(
        kinds,
        ["orchestrator.xdp.interface", "orchestrator.xdp.mode"]
    );
    // allow_ports: default SSH, `[]` allows none, entries checked and unique.
    let xdp = |yaml: &str| {
        let cfg = config::load_str(yaml, "t.yaml", Path::new("/")).unwrap();
        cfg.orchestrator.xdp.unwrap().allow_ports
    };
    assert_eq!(xdp("orchestrator:\n  xdp:\n    interface: eth0\n"), [22]);
    assert_eq!(
        xdp("orchestrator:\n  xdp:\n    interface: eth0\n    allow_ports: []\n"),
        Vec::<u16>::new()
    );
    let e =
        errs("orchestrator:\n  xdp:\n    interface: eth0\n    allow_ports: [22, 0, 22, 70000]\n");
    let paths: Vec<_> = e.iter().map(|e| e.field_path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "orchestrator.xdp.allow_ports[1]",
            "orchestrator.xdp.allow_ports[2]",
            "orchestrator.xdp.allow_ports[3]"
        ]
    );
    assert!(
        matches!(&e[1].kind, ErrorKind::InvalidValue { reason, .. } if reason.contains("port 22 is listed twice")),
        "{e:?}"
    );
    let e = errs("orchestrator:\n  xdp:\n    interface: eth0\n    allow_ports: 22\n");
    assert!(matches!(&e[0].kind, ErrorKind::WrongType { .. }), "{e:?}");
    let e = errs("orchestrator:\n  metrics_addr: localhost\n  listen_addr: 1.2.3\n");
    assert_eq!(e.len(), 2, "{e:?}");
    let e = errs("orchestrator:\n  cores: [0, 0]\n");
    assert_eq!((e[0].line, e[0].column), (2, 14));
    let e = errs("orchestrator:\n  cores: 0\n");
    assert!(matches!(&e[0].kind, ErrorKind::OutOfRange { .. }), "{e:?}");
    // A too-long id and an integer past i64.
    let e = errs(&format!(
        "functions:\n  - id: {}\n    trigger_port: 99999999999999999999\n    handler_path: handler\n",
        "x".repeat(64)
    ));
    assert!(
        matches!(&e[0].kind, ErrorKind::InvalidValue { .. }),
        "{e:?}"
    );
    assert!(matches!(&e[1].kind, ErrorKind::OutOfRange { .. }), "{e:?}");
}

#[test]
fn cores_accept_all_a_count_or_a_list() {
    let dir = sandbox();
    let cores = |v: &str| {
        config::load_str(
            &format!("orchestrator:\n  cores: {v}\n"),
            "t.yaml",
            dir.path(),
        )
        .unwrap()
        .orchestrator
        .cores
    };
    assert_eq!(cores("all"), Cores::All);
    assert_eq!(cores("2"), Cores::Count(2));
    assert_eq!(cores("[3, 1]"), Cores::List(vec![3, 1]));
}

#[test]
fn crlf_line_endings_and_a_byte_order_mark_are_accepted() {
    let dir = sandbox();
    let text = "\u{feff}functions:\r\n  - id: a\r\n    trigger_port: 70000\r\n    handler_path: handler\r\n";
    let errs = config::load_str(text, "crlf.yaml", dir.path())
        .unwrap_err()
        .0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!((errs[0].line, errs[0].column), (3, 19), "{}", errs[0]);
    let ok = text.replace("70000", "8080");
    assert_eq!(
        config::load_str(&ok, "crlf.yaml", dir.path())
            .unwrap()
            .functions[0]
            .trigger_port,
        8080
    );
}
