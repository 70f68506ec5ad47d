//! Helpers shared by unit tests and benches: the captured Claude Code requests.

use std::path::{Path, PathBuf};

/// `tests/fixtures/claude-code`: real requests captured from Claude Code 2.1.197
/// (a copy of `shared/fixtures/claude-code`, so a lone clone can run its tests).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/claude-code")
}

/// The request body of a fixture file, as the compact JSON Claude Code sent.
pub fn fixture_body(path: &Path) -> Vec<u8> {
    let text = std::fs::read(path).expect("fixture readable");
    let v: serde_json::Value = serde_json::from_slice(&text).expect("fixture is JSON");
    serde_json::to_vec(&v["body"]).expect("body serializes")
}

/// A fixture by file-name prefix, such as `"01"`.
pub fn fixture(prefix: &str) -> Vec<u8> {
    let dir = fixtures_dir();
    let entry = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no fixture {prefix} in {dir:?}"));
    fixture_body(&entry)
}

/// An Anthropic SSE body as (event name, JSON data) pairs.
pub fn sse_events(out: &[u8]) -> Vec<(String, serde_json::Value)> {
    let mut p = crate::protocol::sse::SseParser::new();
    let mut evs = Vec::new();
    p.feed(out, &mut evs).expect("an SSE body");
    evs.into_iter()
        .map(|e| {
            let data = serde_json::from_str(&e.data).expect("JSON event data");
            (e.event.expect("a named event"), data)
        })
        .collect()
}
