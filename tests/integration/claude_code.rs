//! End to end: the real Claude Code CLI (print mode) through the gateway to
//! a scripted OpenAI upstream completes a task that needs a tool: it must
//! write a file with the Write tool, then report back.

use crate::common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

const FILE_CONTENT: &str = "hello from lynkr\n";
const FINAL_TEXT: &str = "Created hello.txt through Lynkr.";

/// The `claude` binary: `CLAUDE_BIN`, else the copy the README's test
/// command installs under `target/claude-code`, else `claude` on PATH.
fn claude_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CLAUDE_BIN") {
        return PathBuf::from(p);
    }
    let root = repo_root().join("target/claude-code/node_modules");
    for candidate in [
        root.join(".bin/claude"),
        root.join("@anthropic-ai/claude-code-linux-x64/claude"),
    ] {
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from("claude")
}

/// The upstream's script: the main loop (it carries the Write tool) first
/// gets a Write call, then, once the tool result comes back, the final
/// text; side requests (titles, summaries) get a short answer.
fn script(target: PathBuf) -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    move |r: &Recorded| {
        let b = &r.body;
        let has_write = b["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["function"]["name"] == "Write"));
        let has_result = b["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"));
        let structured = b.get("response_format").is_some();
        let stream = b["stream"] == true;
        let (text, calls): (String, Vec<(String, String, String)>) = if has_write && !has_result {
            let args =
                json!({"file_path": target.to_str().unwrap(), "content": FILE_CONTENT}).to_string();
            (
                "I'll create the file.".into(),
                vec![("call_write_1".into(), "Write".into(), args)],
            )
        } else if has_write {
            (FINAL_TEXT.into(), vec![])
        } else if structured {
            (
                json!({"title": "Lynkr end-to-end test"}).to_string(),
                vec![],
            )
        } else {
            ("OK".into(), vec![])
        };
        if !stream {
            let tool_calls = if calls.is_empty() {
                Value::Null
            } else {
                Value::Array(calls.iter().map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})).collect())
            };
            let finish = if calls.is_empty() {
                "stop"
            } else {
                "tool_calls"
            };
            return Reply::Json {
                status: 200,
                body: completion_json(&text, finish, tool_calls),
                headers: vec![],
            };
        }
        let pieces = if calls.is_empty() {
            let words: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
            text_stream(&words.iter().map(String::as_str).collect::<Vec<_>>())
        } else {
            let calls: Vec<(&str, &str, &str)> = calls
                .iter()
                .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
                .collect();
            tool_stream(&text, &calls, 7)
        };
        Reply::Sse {
            pieces,
            delay: Duration::from_millis(1),
        }
    }
}

#[tokio::test]
async fn claude_code_writes_a_file_through_lynkr() {
    let work = scratch_dir("cc-work");
    let home = scratch_dir("cc-home");
    let target = work.join("hello.txt");
    let mock = MockUpstream::start(script(target.clone())).await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    let bin = claude_bin();
    let base = gw.base.clone();
    let (work2, home2) = (work.clone(), home.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&bin)
            .args(["-p", "Create a file named hello.txt in the current directory containing: hello from lynkr",
                   "--dangerously-skip-permissions", "--output-format", "json"])
            .current_dir(&work2)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home2)
            .env("ANTHROPIC_BASE_URL", &base)
            .env("ANTHROPIC_API_KEY", "sk-ant-test")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("IS_SANDBOX", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {bin:?} (install it with the README's test command): {e}"))
    });
    let out = tokio::time::timeout(Duration::from_secs(240), out)
        .await
        .expect("claude finished in time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = || {
        format!(
            "stdout:\n{stdout}\nstderr:\n{stderr}\nupstream saw {} requests\ngateway log:\n{}",
            mock.requests().len(),
            gw.log()
        )
    };
    assert!(out.status.success(), "claude failed\n{}", context());
    let result: Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|_| panic!("no JSON result\n{}", context()));
    assert_eq!(result["is_error"], false, "{}", context());
    assert_eq!(
        result["result"].as_str().map(str::trim),
        Some(FINAL_TEXT),
        "{}",
        context()
    );
    assert_eq!(
        std::fs::read_to_string(&target).unwrap_or_default(),
        FILE_CONTENT,
        "{}",
        context()
    );
    // The tool result went back upstream as an OpenAI tool message.
    let followup = mock
        .requests()
        .into_iter()
        .find(|r| {
            r.body["messages"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"))
        })
        .expect("a follow-up with the tool result");
    let tool_msg = followup.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap()
        .clone();
    assert_eq!(tool_msg["tool_call_id"], "call_write_1");
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::remove_dir_all(&work);
}
