//! The official Anthropic Python SDK (`pip install anthropic`) through the
//! gateway: its streaming helper must assemble the translated stream into
//! the right final message. The assertions live in the Python script.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn anthropic_python_sdk_assembles_the_translated_stream() {
    let mock = MockUpstream::start(|r| {
        let text = r.body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()).unwrap_or("");
        match text {
            "sdk-text" => Reply::Sse {
                pieces: text_stream(&["Hello", " from", " the", " mock", " gateway", " test"]),
                delay: Duration::from_millis(2),
            },
            "sdk-tool" => Reply::Sse {
                pieces: tool_stream(
                    "I'll write the file.",
                    &[("call_sdk_1", "Write", r#"{"file_path": "/tmp/sdk.txt", "content": "hello from the SDK test"}"#)],
                    5,
                ),
                delay: Duration::ZERO,
            },
            "sdk-json" => Reply::Json { status: 200, body: completion_json("plain json answer", "length", Value::Null), headers: vec![] },
            _ => Reply::Json {
                status: 429,
                body: json!({"error": {"message": "Rate limit reached for test", "type": "rate_limit"}}).to_string(),
                headers: vec![],
            },
        }
    })
    .await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    let script = repo_root().join("tests/sdk/anthropic_sdk_check.py");
    let base = gw.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .arg(base)
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK check failed:\n{stdout}\n{stderr}\ngateway log:\n{}",
        gw.log()
    );
    assert!(stdout.contains("SDK OK"), "{stdout}");
    // Every SDK call that should reach the upstream did; the 429 was
    // retried by Lynkr (3 attempts in all) before the SDK saw it.
    assert_eq!(mock.requests().len(), 6);
}
