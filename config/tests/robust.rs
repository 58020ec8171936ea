//! The loader never panics, and every error it reports has a position, on
//! arbitrary edits of valid and invalid files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use proptest::prelude::*;

const FIXTURES: &[&str] = &[
    "all_fields.yaml",
    "many_errors.yaml",
    "wrong_type.yaml",
    "duplicate_port.yaml",
    "reference.yaml",
];

/// Characters that change YAML structure most.
const NOISE: &[char] = &[
    ' ', '\n', ':', '-', '[', ']', '{', '}', '"', '\'', '&', '*', '!', '#', '|', '>', '\t', '0',
    'x', 'é',
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn edits_never_panic_and_errors_are_located(
        fixture in 0..FIXTURES.len(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0..NOISE.len(), 0..3u8), 1..6),
    ) {
        let dir = common::sandbox();
        let mut chars: Vec<char> = common::fixture(FIXTURES[fixture]).chars().collect();
        for (at, noise, op) in edits {
            let i = at.index(chars.len() + 1);
            match op {
                0 => chars.insert(i, NOISE[noise]),
                1 if i < chars.len() => { chars.remove(i); }
                _ if i < chars.len() => chars[i] = NOISE[noise],
                _ => {}
            }
        }
        let text: String = chars.into_iter().collect();
        let lines = text.lines().count().max(1) + 1;
        if let Err(errors) = config::load_str(&text, "fuzz.yaml", dir.path()) {
            prop_assert!(!errors.is_empty());
            for e in &errors {
                prop_assert!(e.line >= 1 && e.line <= lines, "{e} in\n{text}");
                prop_assert!(e.column >= 1, "{e} in\n{text}");
                prop_assert!(e.to_string().starts_with("fuzz.yaml:"), "{e}");
            }
        }
    }
}
