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

/// The wire format the scripted upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Wire {
    Openai,
    Anthropic,
    Ollama,
}

/// The upstream's script: the main loop (it carries the Write tool) first
/// gets a Write call, then, once the tool result comes back, the final
/// text; side requests (titles, summaries) get a short answer.
fn script(target: PathBuf, wire: Wire) -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    move |r: &Recorded| {
        let b = &r.body;
        let tool_names: Vec<&str> = b["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["name"].as_str().or(t["function"]["name"].as_str()))
            .collect();
        let has_write = tool_names.contains(&"Write");
        let has_result = b["messages"].as_array().is_some_and(|m| {
            m.iter().any(|m| {
                m["role"] == "tool"
                    || m["content"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["type"] == "tool_result"))
            })
        });
        let structured = b.get("response_format").is_some()
            || b.pointer("/output_config/format").is_some()
            || b.get("format").is_some();
        let stream = b["stream"] == true;
        let args = json!({"file_path": target.to_str().unwrap(), "content": FILE_CONTENT});
        let (text, call): (String, Option<Value>) = if has_write && !has_result {
            ("I'll create the file.".into(), Some(args))
        } else if has_write {
            (FINAL_TEXT.into(), None)
        } else if structured {
            (json!({"title": "Lynkr end-to-end test"}).to_string(), None)
        } else {
            ("OK".into(), None)
        };
        match (wire, stream) {
            (Wire::Openai, false) => {
                let tool_calls = call.as_ref().map_or(Value::Null, |a| {
                    json!([{"id": "call_write_1", "type": "function", "function": {"name": "Write", "arguments": a.to_string()}}])
                });
                let finish = if call.is_some() { "tool_calls" } else { "stop" };
                Reply::Json {
                    status: 200,
                    body: completion_json(&text, finish, tool_calls),
                    headers: vec![],
                }
            }
            (Wire::Openai, true) => {
                let pieces = match &call {
                    None => {
                        let words: Vec<&str> = text.split_inclusive(' ').collect();
                        text_stream(&words)
                    }
                    Some(a) => tool_stream(&text, &[("call_write_1", "Write", &a.to_string())], 7),
                };
                Reply::Sse {
                    pieces,
                    delay: Duration::from_millis(1),
                }
            }
            (Wire::Anthropic, true) => {
                let input = call.as_ref().map(|a| a.to_string());
                let calls: Vec<(&str, &str, &str)> = input
                    .iter()
                    .map(|i| ("toolu_write_1", "Write", i.as_str()))
                    .collect();
                Reply::Sse {
                    pieces: anthropic_stream(&text, &calls),
                    delay: Duration::from_millis(1),
                }
            }
            (Wire::Anthropic, false) => {
                let mut content = vec![json!({"type": "text", "text": text})];
                if let Some(a) = &call {
                    content.push(json!({"type": "tool_use", "id": "toolu_write_1", "name": "Write", "input": a}));
                }
                let stop = if call.is_some() {
                    "tool_use"
                } else {
                    "end_turn"
                };
                let body = json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": "m", "content": content,
                    "stop_reason": stop, "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 5}});
                Reply::Json {
                    status: 200,
                    body: body.to_string(),
                    headers: vec![],
                }
            }
            (Wire::Ollama, true) => {
                let calls: Vec<(&str, Value)> = call.iter().map(|a| ("Write", a.clone())).collect();
                Reply::Ndjson {
                    lines: ollama_stream(&text, &calls),
                }
            }
            (Wire::Ollama, false) => {
                let mut message = json!({"role": "assistant", "content": text});
                if let Some(a) = &call {
                    message["tool_calls"] =
                        json!([{"function": {"name": "Write", "arguments": a}}]);
                }
                let body = json!({"model": "q", "message": message, "done": true, "done_reason": "stop",
                    "prompt_eval_count": 10, "eval_count": 5});
                Reply::Json {
                    status: 200,
                    body: body.to_string(),
                    headers: vec![],
                }
            }
        }
    }
}

/// Claude Code in print mode, told to write hello.txt in `work`, against
/// `base` with `api_key` as its `ANTHROPIC_API_KEY` (bounded: 240 s).
async fn run_claude(
    base: &str,
    api_key: &str,
    work: &std::path::Path,
    home: &std::path::Path,
) -> std::process::Output {
    let bin = claude_bin();
    let (base, api_key) = (base.to_string(), api_key.to_string());
    let (work, home) = (work.to_path_buf(), home.to_path_buf());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&bin)
            .args(["-p", "Create a file named hello.txt in the current directory containing: hello from lynkr",
                   "--dangerously-skip-permissions", "--output-format", "json"])
            .current_dir(&work)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("ANTHROPIC_BASE_URL", &base)
            .env("ANTHROPIC_API_KEY", &api_key)
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("IS_SANDBOX", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {bin:?} (install it with the README's test command): {e}"))
    });
    tokio::time::timeout(Duration::from_secs(240), out)
        .await
        .expect("claude finished in time")
        .unwrap()
}

/// Run Claude Code in print mode through a gateway configured with
/// `provider_yaml`, against a mock speaking `wire`; check the file it wrote,
/// its final text, and that the tool result went back upstream.
async fn claude_code_writes_a_file(
    wire: Wire,
    provider_yaml: impl Fn(std::net::SocketAddr) -> String,
) {
    let work = scratch_dir("cc-work");
    let target = work.join("hello.txt");
    let mock = MockUpstream::start(script(target.clone(), wire)).await;
    let gw = Gateway::start(&provider_yaml(mock.addr), &[MOCK_KEY]);
    writes_the_file(&gw, &mock, wire, "sk-ant-test", work).await;
}

/// Claude Code, with `api_key`, writes the file through `gw`.
async fn writes_the_file(
    gw: &Gateway,
    mock: &MockUpstream,
    wire: Wire,
    api_key: &str,
    work: PathBuf,
) {
    let home = scratch_dir("cc-home");
    let target = work.join("hello.txt");
    let out = run_claude(&gw.base, api_key, &work, &home).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = || {
        format!("{wire:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\nupstream saw {} requests\ngateway log:\n{}", mock.requests().len(), gw.log())
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
    // The tool result went back upstream in the provider's own form.
    let followup = mock
        .requests()
        .into_iter()
        .filter_map(|r| r.body["messages"].as_array().cloned())
        .flatten()
        .find(|m| {
            m["role"] == "tool"
                || m["content"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "tool_result"))
        })
        .expect("a follow-up carrying the tool result");
    match wire {
        Wire::Openai => assert_eq!(followup["tool_call_id"], "call_write_1"),
        Wire::Ollama => assert_eq!(followup["tool_name"], "Write"),
        Wire::Anthropic => assert_eq!(followup["content"][0]["tool_use_id"], "toolu_write_1"),
    }
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test]
async fn claude_code_writes_a_file_through_an_openai_provider() {
    claude_code_writes_a_file(Wire::Openai, openai_provider).await;
}

#[tokio::test]
async fn claude_code_writes_a_file_through_the_anthropic_passthrough() {
    claude_code_writes_a_file(Wire::Anthropic, |addr| {
        format!("providers:\n  native: {{kind: anthropic, base_url: 'http://{addr}', api_key_env: MOCK_OPENAI_KEY}}\nmodels: {{default: native}}\n")
    })
    .await;
}

#[tokio::test]
async fn claude_code_writes_a_file_through_ollama() {
    claude_code_writes_a_file(Wire::Ollama, |addr| {
        format!("providers:\n  ollama: {{kind: ollama, base_url: 'http://{addr}', model: 'qwen3-coder:30b'}}\nmodels: {{default: ollama}}\n")
    })
    .await;
}

/// With `auth.mode: keys`, Claude Code works with a key made by `lynkr keys
/// create` as its `ANTHROPIC_API_KEY` (sent as `x-api-key`), every request
/// lands in the ledger under that key, and a wrong key gets nowhere.
#[tokio::test]
async fn claude_code_works_with_a_created_key_and_is_refused_with_a_wrong_one() {
    let work = scratch_dir("cc-work");
    let mock = MockUpstream::start(script(work.join("hello.txt"), Wire::Openai)).await;
    let store = scratch_dir("cc-store");
    let config = format!(
        "{}store:\n  path: {}/lynkr.db\n  flush_ms: 50\nauth:\n  mode: keys\n  refresh_ms: 100\n",
        openai_provider(mock.addr),
        store.display()
    );
    let gw = Gateway::start(&config, &[MOCK_KEY]);
    let out = std::process::Command::new(lynkr_bin())
        .args([
            "keys",
            "create",
            "--name",
            "claude",
            "--user",
            "dev@example.com",
            "-c",
        ])
        .arg(gw.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // The running server takes the new key within auth.refresh_ms.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A wrong key: refused, and nothing reaches the provider.
    let wrong_work = scratch_dir("cc-work-wrong");
    let home = scratch_dir("cc-home");
    let out = run_claude(&gw.base, "lk-wrong", &wrong_work, &home).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let refused = !out.status.success()
        || serde_json::from_str::<Value>(stdout.trim().lines().last().unwrap_or(""))
            .is_ok_and(|r| r["is_error"] == true);
    assert!(
        refused,
        "claude succeeded with a wrong key: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("invalid API key") || stdout.contains("Invalid API key"),
        "the refusal says why: {stdout}"
    );
    assert!(mock.requests().is_empty(), "nothing went upstream");
    assert!(!wrong_work.join("hello.txt").exists());
    assert!(gw.log_contains("\"status\":401"));

    // The created key: the task completes, and the ledger holds it.
    writes_the_file(&gw, &mock, Wire::Openai, &key, work).await;
    let conn = rusqlite::Connection::open(store.join("lynkr.db")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let count = |conn: &rusqlite::Connection| -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM usage u JOIN keys k ON k.id = u.key_id
             WHERE k.name = 'claude' AND u.user = 'dev@example.com' AND u.status = 200",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    while (count(&conn) as usize) < mock.requests().len() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        count(&conn) as usize,
        mock.requests().len(),
        "one ledger row under the key for each request that went upstream"
    );
    let _ = std::fs::remove_dir_all(&home);
}
