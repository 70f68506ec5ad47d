//! Regression tests for the request path's defects (issue 9), each against
//! the built gateway over real sockets: the steps that showed the defect,
//! and what must happen instead.

use crate::common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

async fn breaker_of(gw: &Gateway, provider: &str) -> Value {
    get_json(&gw.url("/metrics/circuit-breakers")).await["providers"][provider].clone()
}

// ---- 1. circuit breakers always recover ---------------------------------------------------

/// Reproduced: a half-open probe whose client went away (`curl -m 1` on a
/// slow upstream) held the only probe slot forever: every later request got
/// 529 and the breaker showed `half_open` for the life of the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_probe_never_leaves_the_breaker_half_open() {
    const FAIL: usize = 0;
    const SLOW: usize = 1;
    const OK: usize = 2;
    let mode = Arc::new(AtomicUsize::new(FAIL));
    let m = mode.clone();
    let mock = MockUpstream::start(move |_| match m.load(Ordering::SeqCst) {
        FAIL => error_reply(500, "down"),
        SLOW => Reply::Delayed {
            delay: Duration::from_secs(3),
            reply: Box::new(ok_json()),
        },
        _ => ok_json(),
    })
    .await;
    let gw = Gateway::start(
        &format!(
            "resilience: {{retry: {{max_attempts: 1}}, circuit_breaker: {{failure_threshold: 2, open_ms: 1000, half_open_probes: 1, success_threshold: 1}}}}\n{}",
            openai_provider(mock.addr)
        ),
        &[MOCK_KEY],
    );
    for _ in 0..2 {
        assert_eq!(post(&gw, &simple_request(false)).await.status(), 500);
    }
    assert_eq!(breaker_of(&gw, "mock").await["state"], "open");
    // The open period (1 s) has to pass before a probe is let through.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    mode.store(SLOW, Ordering::SeqCst);
    let dropped = reqwest::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap()
        .post(gw.url("/v1/messages"))
        .json(&simple_request(false))
        .send()
        .await;
    assert!(dropped.is_err(), "the client gave up on the slow probe");
    mode.store(OK, Ordering::SeqCst);
    let mut last = 0;
    for _ in 0..50 {
        last = post(&gw, &simple_request(false)).await.status().as_u16();
        if last == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, 200, "the breaker lets requests through again");
    assert_eq!(breaker_of(&gw, "mock").await["state"], "closed");
}

/// A stream that fails before its first byte was recorded twice: a success
/// at the response header, then a failure.
#[tokio::test]
async fn a_stream_failing_before_its_first_byte_is_recorded_once() {
    let mock = MockUpstream::start(|_| Reply::SseThenClose { pieces: vec![] }).await;
    let gw = Gateway::start(
        &format!(
            "resilience: {{retry: {{max_attempts: 1}}, circuit_breaker: {{failure_threshold: 100, min_requests: 1000}}}}\n{}",
            openai_provider(mock.addr)
        ),
        &[MOCK_KEY],
    );
    let resp = post(&gw, &simple_request(true)).await;
    assert_eq!(resp.status(), 502);
    let b = breaker_of(&gw, "mock").await;
    assert_eq!(
        (b["window_requests"].as_u64(), b["window_failures"].as_u64()),
        (Some(1), Some(1)),
        "{b}"
    );
}

// ---- 2. forward-compatible Anthropic content ----------------------------------------------

/// The corpus: a request with every content block type, tool result block,
/// media source, tool type and thinking mode of the installed Anthropic
/// Python SDK (`tests/sdk/content_corpus.py`, made from the SDK's types).
fn sdk_corpus() -> Value {
    let out = std::process::Command::new("python3")
        .arg(repo_root().join("tests/sdk/content_corpus.py"))
        .output()
        .expect("python3 runs (scripts/test-all.sh installs the anthropic SDK)");
    assert!(
        out.status.success(),
        "content_corpus.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Reproduced: a conversation that used web search, or a user turn with a
/// `search_result`, was answered 400 `unknown variant`.
#[tokio::test]
async fn every_sdk_content_block_is_accepted_by_every_provider_kind() {
    let corpus = sdk_corpus();
    let types = &corpus["types"];
    // The corpus really covers what the issue names.
    for t in [
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "search_result",
        "container_upload",
    ] {
        assert!(
            types["message"].as_array().unwrap().contains(&json!(t)),
            "{t}"
        );
    }
    for s in ["file", "content"] {
        assert!(types["document_source"]
            .as_array()
            .unwrap()
            .contains(&json!(s)));
    }
    let request = corpus["request"].clone();

    let passthrough = MockUpstream::start(|_| Reply::Json {
        status: 200,
        body: anthropic_message("ok"),
        headers: vec![],
    })
    .await;
    let openai = MockUpstream::start(|_| ok_json()).await;
    let ollama = MockUpstream::start(|_| Reply::Json {
        status: 200,
        body: ollama_message("ok"),
        headers: vec![],
    })
    .await;
    let bedrock = MockUpstream::start(|_| Reply::Json {
        status: 200,
        body: json!({"output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}}, "stopReason": "end_turn", "usage": {"inputTokens": 1, "outputTokens": 1}}).to_string(),
        headers: vec![],
    })
    .await;
    let config = format!(
        "providers:\n\
         \x20 pass: {{kind: anthropic, base_url: 'http://{}'}}\n\
         \x20 oai: {{base_url: 'http://{}/v1', model: m}}\n\
         \x20 oll: {{kind: ollama, base_url: 'http://{}', model: m, capabilities: {{reasoning: true}}}}\n\
         \x20 bed: {{kind: bedrock, base_url: 'http://{}', model: m, api_key_env: BEDROCK_KEY}}\n\
         models:\n  default: pass\n  routes:\n    - {{match: via-openai, target: oai}}\n    - {{match: via-ollama, target: oll}}\n    - {{match: via-bedrock, target: bed}}\n",
        passthrough.addr, openai.addr, ollama.addr, bedrock.addr
    );
    let gw = Gateway::start(&config, &[("BEDROCK_KEY", "k")]);
    let thinking_modes = corpus["thinking"].as_array().unwrap().clone();
    for model in [
        "claude-sonnet-4-5",
        "via-openai",
        "via-ollama",
        "via-bedrock",
    ] {
        for thinking in &thinking_modes {
            let mut req = request.clone();
            req["model"] = json!(model);
            req["thinking"] = thinking.clone();
            let resp = post(&gw, &req).await;
            let status = resp.status();
            let body = resp.text().await.unwrap();
            assert_eq!(status, 200, "{model} with thinking {thinking}: {body}");
        }
    }
    // The passthrough forwards what it does not know byte for byte.
    let mut req = request.clone();
    req["model"] = json!("claude-sonnet-4-5");
    let sent = serde_json::to_vec(&req).unwrap();
    let resp = client()
        .post(gw.url("/v1/messages"))
        .header("content-type", "application/json")
        .body(sent.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let upstream = String::from_utf8(passthrough.last().raw).unwrap();
    let messages = serde_json::to_string(&req["messages"]).unwrap();
    assert!(upstream.contains(&messages), "messages changed on the way");
    let tools = serde_json::to_string(&req["tools"]).unwrap();
    assert!(upstream.contains(&tools), "tools changed on the way");

    // A structurally wrong request is still a 400 naming the field.
    let mut bad = request.clone();
    bad.as_object_mut().unwrap().remove("messages");
    let resp = post(&gw, &bad).await;
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["message"], "messages: field required");
    let mut bad = request.clone();
    bad["messages"][2]["content"][0] = json!({"type": "search_result", "source": 5});
    let resp = post(&gw, &bad).await;
    assert_eq!(resp.status(), 400);
}

/// The issue's own example, through an OpenAI provider: what the model gets.
#[tokio::test]
async fn a_web_search_conversation_reads_as_text_for_other_models() {
    let mock = MockUpstream::start(|_| ok_json()).await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    let req = json!({
        "model": "claude-sonnet-4-5", "max_tokens": 1024,
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}],
        "messages": [
            {"role": "user", "content": "What is new in Rust?"},
            {"role": "assistant", "content": [
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "rust release"}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [
                    {"type": "web_search_result", "url": "https://blog.rust-lang.org/x", "title": "Rust 1.95", "encrypted_content": "EqgfCi...", "page_age": "1 day"}]},
                {"type": "text", "text": "Rust 1.95 is out.", "citations": [{"type": "web_search_result_location", "url": "https://blog.rust-lang.org/x", "title": "Rust 1.95", "encrypted_index": "Eo8B", "cited_text": "1.95"}]}]},
            {"role": "user", "content": [
                {"type": "search_result", "source": "https://kb.example/a", "title": "KB entry", "content": [{"type": "text", "text": "internal fact"}], "citations": {"enabled": true}},
                {"type": "text", "text": "and this?"}]}
        ]
    });
    assert_eq!(post(&gw, &req).await.status(), 200);
    let up = mock.last().body;
    let assistant = up["messages"][1]["content"].as_str().unwrap();
    assert!(
        assistant.contains("[server tool call: web_search]"),
        "{assistant}"
    );
    assert!(assistant.contains("Rust 1.95 (https://blog.rust-lang.org/x)"));
    assert!(assistant.contains("Rust 1.95 is out."));
    assert!(
        !assistant.contains("EqgfCi"),
        "encrypted content is left out"
    );
    let user = up["messages"][2]["content"].as_str().unwrap();
    assert!(
        user.contains("KB entry") && user.contains("internal fact"),
        "{user}"
    );
    assert!(
        up["tools"].is_null(),
        "server tools are not offered as functions"
    );
}

// ---- 3. failover decided on what the provider said ----------------------------------------

/// A configured 408 or 409 never matched (they reach the client as 400),
/// and 503 was retried even when left out of the list (it reaches the
/// client as 529).
#[tokio::test]
async fn failover_matches_the_providers_own_status() {
    let first =
        MockUpstream::start(
            |r| match r.body["messages"][0]["content"].as_str().unwrap_or("") {
                "408" => error_reply(408, "request timeout"),
                "409" => error_reply(409, "conflict"),
                _ => error_reply(503, "busy"),
            },
        )
        .await;
    let second = MockUpstream::start(|_| ok_json()).await;
    let cfg = |statuses: &str| {
        format!(
            "resilience: {{retry: {{max_attempts: 2, base_ms: 1, cap_ms: 5, statuses: {statuses}}}}}\n\
             providers:\n  a: {{base_url: 'http://{}/v1', model: a}}\n  b: {{base_url: 'http://{}/v1', model: b}}\n\
             models: {{default: [a, b]}}\n",
            first.addr, second.addr
        )
    };
    let say = |text: &str| {
        let mut r = simple_request(false);
        r["messages"][0]["content"] = json!(text);
        r
    };
    let gw = Gateway::start(&cfg("[408, 409]"), &[]);
    for code in ["408", "409"] {
        let resp = post(&gw, &say(code)).await;
        assert_eq!(resp.status(), 200, "{code} falls over to the next target");
        assert_eq!(resp.headers()["x-lynkr-route"], "default/b/b");
    }
    let before = second.requests().len();
    let resp = post(&gw, &say("503")).await;
    assert_eq!(resp.status(), 529, "503 is not in the list: no failover");
    assert_eq!(second.requests().len(), before);
}

/// Errors a provider streams before any byte reached the client fail over
/// like their HTTP equivalents.
#[tokio::test]
async fn errors_streamed_before_the_first_byte_fail_over() {
    let openai_err = MockUpstream::start(|_| Reply::Sse {
        pieces: vec![
            chunk(json!({"role": "assistant", "content": ""}), None),
            format!(
                "data: {}\n\n",
                json!({"error": {"message": "Rate limit reached", "type": "rate_limit_exceeded"}})
            ),
        ],
        delay: Duration::ZERO,
    })
    .await;
    let anthropic_err = MockUpstream::start(|_| Reply::Sse {
        pieces: vec![format!(
            "event: error\ndata: {}\n\n",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        )],
        delay: Duration::ZERO,
    })
    .await;
    let good = MockUpstream::start(|_| Reply::Sse {
        pieces: text_stream(&["fine"]),
        delay: Duration::ZERO,
    })
    .await;
    let cfg = format!(
        "resilience: {{retry: {{max_attempts: 3, base_ms: 1, cap_ms: 5}}}}\n\
         providers:\n  o: {{base_url: 'http://{}/v1', model: o}}\n  an: {{kind: anthropic, base_url: 'http://{}'}}\n  g: {{base_url: 'http://{}/v1', model: g}}\n\
         models: {{default: [o, an, g]}}\n",
        openai_err.addr, anthropic_err.addr, good.addr
    );
    let gw = Gateway::start(&cfg, &[]);
    let resp = post(&gw, &simple_request(true)).await;
    assert_eq!(resp.headers()["x-lynkr-route"], "default/g/g");
    let events = sse_events(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap().0, "message_stop", "{events:?}");
    assert!(events.iter().all(|(n, _)| n != "error"));
    assert_eq!(
        (openai_err.requests().len(), anthropic_err.requests().len()),
        (1, 1)
    );
    // Both count against their providers' breakers (429 and 529).
    assert_eq!(breaker_of(&gw, "o").await["window_failures"], 1);
    assert_eq!(breaker_of(&gw, "an").await["window_failures"], 1);
}

/// Ollama's application errors are the class they are: a missing model is
/// a 404 for the client, not a breaker failure.
#[tokio::test]
async fn an_ollama_application_error_is_not_a_provider_failure() {
    let mock = MockUpstream::start(|_| Reply::Ndjson {
        lines: vec![format!(
            "{}\n",
            json!({"error": "model \"qwen9\" not found, try pulling it first"})
        )],
    })
    .await;
    let gw = Gateway::start(
        &format!("providers:\n  oll: {{kind: ollama, base_url: 'http://{}', model: qwen9}}\nmodels: {{default: oll}}\n", mock.addr),
        &[],
    );
    let resp = post(&gw, &simple_request(true)).await;
    assert_eq!(resp.status(), 404);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["type"], "not_found_error");
    assert_eq!(mock.requests().len(), 1, "a 404 is not retried");
    let b = breaker_of(&gw, "oll").await;
    assert_eq!(b["window_failures"], 0, "{b}");
}

// ---- 4. the thinking budget under a capped max_tokens --------------------------------------

#[tokio::test]
async fn the_thinking_budget_stays_under_a_capped_max_tokens() {
    let (mock, gw) = passthrough_gateway("ok", ", capabilities: {max_output_tokens: 8192}").await;
    // Claude Code's own thinking request (fixture 05), not streamed here.
    let mut req: Value = serde_json::from_slice(&fixture_body("05")).unwrap();
    req["stream"] = json!(false);
    req["max_tokens"] = json!(32000);
    req["thinking"] = json!({"type": "enabled", "budget_tokens": 31999});
    assert_eq!(post(&gw, &req).await.status(), 200);
    let up = mock.last().body;
    assert_eq!(up["max_tokens"], 8192);
    assert_eq!(
        up["thinking"],
        json!({"type": "enabled", "budget_tokens": 8191})
    );
}

// ---- 5. JSON labelled as SSE -----------------------------------------------------------------

#[tokio::test]
async fn a_passthrough_json_answer_to_a_stream_becomes_events() {
    let (_mock, gw) = passthrough_gateway("whole answer", "").await;
    let resp = post(&gw, &simple_request(true)).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = sse_events(&resp.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[2].1["delta"]["text"], "whole answer");
    assert_eq!(events[4].1["usage"]["output_tokens"], 9);
}

// ---- 6. tool-use ids never repeat -----------------------------------------------------------------

#[tokio::test]
async fn tool_calls_without_ids_get_ids_unique_across_turns() {
    let mock = MockUpstream::start(|r| {
        if r.body["stream"] == true {
            // Local servers: calls without `index`, told apart by id only.
            let call = |id: &str, name: Option<&str>, args: &str| {
                let mut f = json!({"arguments": args});
                if let Some(n) = name {
                    f["name"] = json!(n);
                }
                chunk(
                    json!({"tool_calls": [{"id": id, "type": "function", "function": f}]}),
                    None,
                )
            };
            return Reply::Sse {
                pieces: vec![
                    chunk(json!({"role": "assistant"}), None),
                    call("a", Some("Read"), "{\"path\":"),
                    call("a", None, "\"/x\"}"),
                    call("b", Some("Grep"), "{\"q\":\"y\"}"),
                    chunk(json!({}), Some("tool_calls")),
                    DONE.to_string(),
                ],
                delay: Duration::ZERO,
            };
        }
        let calls = json!([
            {"type": "function", "function": {"name": "Read", "arguments": "{}"}},
            {"type": "function", "function": {"name": "Grep", "arguments": "{}"}}
        ]);
        Reply::Json {
            status: 200,
            body: completion_json("", "tool_calls", calls),
            headers: vec![],
        }
    })
    .await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let m: Value = post(&gw, &simple_request(false))
            .await
            .json()
            .await
            .unwrap();
        for b in m["content"].as_array().unwrap() {
            ids.push(b["id"].as_str().unwrap().to_string());
        }
    }
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 6, "ids repeat: {ids:?}");

    let events = sse_events(&post(&gw, &simple_request(true)).await.text().await.unwrap());
    let tools: Vec<&Value> = events
        .iter()
        .filter(|(n, v)| n == "content_block_start" && v["content_block"]["type"] == "tool_use")
        .map(|(_, v)| &v["content_block"])
        .collect();
    assert_eq!(tools.len(), 2, "{events:?}");
    assert_eq!(
        (tools[0]["id"].as_str(), tools[1]["id"].as_str()),
        (Some("a"), Some("b"))
    );
    let args: Vec<String> = [1, 2]
        .iter()
        .map(|i| {
            events
                .iter()
                .filter(|(_, v)| v["index"] == *i - 1 && v["delta"]["type"] == "input_json_delta")
                .map(|(_, v)| v["delta"]["partial_json"].as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    assert_eq!(args, ["{\"path\":\"/x\"}", "{\"q\":\"y\"}"]);
}

// ---- 7. one token estimator ----------------------------------------------------------------

/// A 600 KB screenshot counted as 150k tokens (body bytes / 4): it tripped
/// `long_context` and refused targets with a context window.
#[tokio::test]
async fn an_image_counts_as_an_image_not_as_its_bytes() {
    let mock = MockUpstream::start(|_| ok_json()).await;
    let gw = Gateway::start(
        &format!(
            "providers:\n  small: {{base_url: 'http://{a}/v1', model: small, capabilities: {{context_window: 32000}}}}\n  big: {{base_url: 'http://{a}/v1', model: big}}\n\
             models: {{default: small}}\nrouting: {{long_context: {{threshold_tokens: 60000, targets: big}}}}\n",
            a = mock.addr
        ),
        &[],
    );
    let req = json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A".repeat(600_000)}},
        {"type": "text", "text": "what is on the screen?"}]}]});
    let resp = post(&gw, &req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-lynkr-route"], "default/small/small");
    let counted: Value = client()
        .post(gw.url("/v1/messages/count_tokens"))
        .json(&json!({"model": "claude-sonnet-4-5", "messages": req["messages"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let n = counted["input_tokens"].as_u64().unwrap();
    assert!((1600..1700).contains(&n), "{n}");
}

// ---- 8. streams keep the connection --------------------------------------------------------

/// A stream went out without Content-Length or chunked encoding, so it
/// ended by closing the connection: every stream cost a new connection.
#[tokio::test]
async fn two_streams_share_one_kept_alive_connection() {
    let mock = MockUpstream::start(|_| Reply::Sse {
        pieces: text_stream(&["a", "b"]),
        delay: Duration::ZERO,
    })
    .await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    let mut conn = RawConn::connect(("127.0.0.1", gw.port)).await.unwrap();
    for _ in 0..2 {
        conn.send(&raw_post(&simple_request(true))).await.unwrap();
        let r = conn.read_response().await.expect("a complete response");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert!(!r.closes());
        let events = sse_events(&r.text());
        assert_eq!(events.last().unwrap().0, "message_stop");
    }
}

/// `timeouts.pool_idle_ms`: an idle pooled upstream connection is closed
/// once it has idled that long, with no further request to notice it
/// (the pool sweep service), so it never lingers half-closed.
#[tokio::test]
async fn an_idle_pooled_upstream_connection_is_closed_after_pool_idle_ms() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gw = Gateway::start(
        &format!(
            "timeouts: {{pool_idle_ms: 1000}}\n{}",
            openai_provider(addr)
        ),
        &[MOCK_KEY],
    );
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 65536];
        // The request: its head, then as many body bytes as it declares.
        loop {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the request");
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request).to_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                if request.len() >= end + 4 + length {
                    break;
                }
            }
        }
        let body = completion_json("pooled", "stop", Value::Null);
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(answer.as_bytes()).await.unwrap();
        let idle_since = std::time::Instant::now();
        // Kept alive, then closed by the gateway: EOF within the pool's
        // idle time and one sweep interval (1 s each here).
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf))
            .await
            .expect("the pooled connection was never closed")
            .unwrap_or(0);
        (n, idle_since.elapsed())
    });
    let r = post(&gw, &simple_request(false)).await;
    assert_eq!(r.status(), 200);
    let (n, idled) = server.await.unwrap();
    assert_eq!(n, 0, "EOF, not another request");
    assert!(
        idled >= Duration::from_millis(900),
        "kept for pool_idle_ms first: {idled:?}"
    );
}

/// `timeouts.client_idle_ms`: a kept-alive connection with no next
/// request is closed after it.
#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_client_idle_ms() {
    let mock = MockUpstream::start(|_| ok_json()).await;
    let gw = Gateway::start(
        &format!(
            "timeouts: {{connect_ms: 2000, first_byte_ms: 10000, read_ms: 10000, client_idle_ms: 1000}}\n{}",
            openai_provider(mock.addr)
        ),
        &[MOCK_KEY],
    );
    let mut conn = RawConn::connect(("127.0.0.1", gw.port)).await.unwrap();
    conn.send(&raw_post(&simple_request(false))).await.unwrap();
    let r = conn.read_response().await.unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.closes(), "kept alive");
    assert!(
        conn.is_closed(Duration::from_secs(10)).await,
        "closed once idle"
    );
}

/// Pipelined requests after the first were dropped although the response
/// said keep-alive.
#[tokio::test]
async fn pipelined_requests_are_all_answered_in_order() {
    let mock = MockUpstream::start(|r| Reply::Json {
        status: 200,
        body: completion_json(
            r.body["messages"][0]["content"].as_str().unwrap(),
            "stop",
            Value::Null,
        ),
        headers: vec![],
    })
    .await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    let mut conn = RawConn::connect(("127.0.0.1", gw.port)).await.unwrap();
    let mut all = Vec::new();
    for i in 0..3 {
        let mut r = simple_request(false);
        r["messages"][0]["content"] = json!(format!("n{i}"));
        all.extend(raw_post(&r));
    }
    conn.send(&all).await.unwrap();
    for i in 0..3 {
        let r = conn
            .read_response()
            .await
            .expect("every pipelined request is answered");
        assert_eq!(r.status, 200);
        let m: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(m["content"][0]["text"], format!("n{i}"));
    }
}

// ---- 9. a 100 KB URL, the admin listener by socket ---------------------------------------------

#[tokio::test]
async fn an_oversized_url_gets_an_anthropic_error() {
    let mock = MockUpstream::start(|_| ok_json()).await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    // The Anthropic error for a GET of `/v1/messages?qqq...` (n KiB of q).
    let error_for = |kib: usize| {
        let port = gw.port;
        async move {
            let mut conn = RawConn::connect(("127.0.0.1", port)).await.unwrap();
            let path = format!("/v1/messages?{}", "q".repeat(kib * 1024));
            conn.send(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let r = conn.read_response().await.unwrap();
            assert_eq!(r.status, 400);
            let e: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(
                (e["type"].as_str(), e["error"]["type"].as_str()),
                (Some("error"), Some("invalid_request_error"))
            );
            e["error"]["message"].as_str().unwrap().to_string()
        }
    };
    // Past what the HTTP parser takes, and past Lynkr's own 8 KiB limit.
    let message = error_for(100).await;
    assert!(message.starts_with("request head:"), "{message}");
    assert!(message.len() < 300, "the URL is not echoed back");
    let message = error_for(20).await;
    assert!(message.starts_with("url:"), "{message}");
}

/// The admin listener was recognised by its port alone: an API listener on
/// the same port (another address) answered 404 to the API.
#[tokio::test]
async fn the_admin_listener_is_known_by_its_socket() {
    let mock = MockUpstream::start(|_| ok_json()).await;
    let port = free_port();
    let dir = scratch_dir("admin-socket");
    let config = format!(
        "server:\n  listen: [\"127.0.0.1:{port}\"]\n  admin_listen: \"[::1]:{port}\"\n  pid_file: {d}/pid\n  upgrade_sock: {d}/sock\n  grace_period_seconds: 1\n{}",
        openai_provider(mock.addr),
        d = dir.display()
    );
    std::fs::write(dir.join("lynkr.yaml"), config).unwrap();
    let mut cmd = std::process::Command::new(lynkr_bin());
    cmd.arg("-c")
        .arg(dir.join("lynkr.yaml"))
        .env(MOCK_KEY.0, MOCK_KEY.1);
    /// Kills the gateway however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Killed(
        cmd.stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let api = format!("http://127.0.0.1:{port}");
    let admin = format!("http://[::1]:{port}");
    let mut ready = false;
    for _ in 0..300 {
        if client()
            .get(format!("{admin}/health/live"))
            .send()
            .await
            .is_ok()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        ready,
        "{}",
        std::fs::read_to_string(dir.join("log")).unwrap_or_default()
    );
    let via = |base: &str| {
        let url = format!("{base}/v1/messages");
        async move {
            client()
                .post(url)
                .json(&simple_request(false))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(via(&api).await, 200, "the API listener serves the API");
    assert_eq!(via(&admin).await, 404, "the admin listener does not");
    let metrics = client()
        .get(format!("{admin}/metrics/prometheus"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
}

// ---- 12. what Anthropic clients check in a stream -------------------------------------------

#[tokio::test]
async fn message_start_estimates_input_and_thinking_is_signed() {
    let mock = MockUpstream::start(|_| Reply::Sse {
        pieces: vec![
            chunk(
                json!({"role": "assistant", "reasoning_content": "hmm"}),
                None,
            ),
            chunk(json!({"content": "answer"}), None),
            chunk(json!({}), Some("stop")),
            usage_chunk(40, 2),
            DONE.to_string(),
        ],
        delay: Duration::ZERO,
    })
    .await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    let mut req = simple_request(true);
    req["messages"][0]["content"] = json!("x".repeat(400));
    let events = sse_events(&post(&gw, &req).await.text().await.unwrap());
    let start = &events[0].1["message"]["usage"]["input_tokens"];
    assert_eq!(start, 104, "the estimate: 400 bytes / 4 + 4 per message");
    let thinking_end = events
        .iter()
        .position(|(n, v)| n == "content_block_stop" && v["index"] == 0)
        .unwrap();
    assert_eq!(
        events[thinking_end - 1].1["delta"]["type"],
        "signature_delta"
    );
    let delta = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(
        delta.1["usage"]["input_tokens"], 40,
        "the provider's figure at the end"
    );
}

// ---- 13. hostile clients and upstreams -------------------------------------------------------

/// Admission happened before the body was read and nothing timed the body
/// out: clients sending 1 byte a second held every load-shedding slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_bodies_hold_no_slot_and_time_out() {
    let mock = MockUpstream::start(|_| ok_json()).await;
    let gw = Gateway::start(
        &format!(
            "timeouts: {{connect_ms: 2000, first_byte_ms: 10000, read_ms: 10000, client_read_ms: 1500}}\n\
             resilience: {{load_shedding: {{max_in_flight: 2}}}}\n{}",
            openai_provider(mock.addr)
        ),
        &[MOCK_KEY],
    );
    let body = simple_request(false).to_string();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut slow = Vec::new();
    for _ in 0..6 {
        let mut c = RawConn::connect(("127.0.0.1", gw.port)).await.unwrap();
        c.send(head.as_bytes()).await.unwrap();
        c.send(&body.as_bytes()[..5]).await.unwrap();
        slow.push(c);
    }
    // Six half-sent bodies, a limit of two: real requests still get through.
    for _ in 0..3 {
        assert_eq!(post(&gw, &simple_request(false)).await.status(), 200);
    }
    // And the slow ones are answered 408 and closed once client_read_ms passes.
    for mut c in slow {
        let r = tokio::time::timeout(Duration::from_secs(10), c.read_response())
            .await
            .expect("answered within the read timeout")
            .unwrap();
        assert_eq!(r.status, 408);
        assert!(c.is_closed(Duration::from_secs(5)).await);
    }
}

/// Control characters in `model` reached a passthrough upstream, which
/// billed the request, and the client then got no HTTP response at all.
#[tokio::test]
async fn model_names_must_be_header_safe_and_labels_stay_bounded() {
    let (mock, gw) = passthrough_gateway("ok", "").await;
    for bad in ["pass-x\r\nX-Injected: 1", "a\u{0}b"] {
        let mut req = simple_request(false);
        req["model"] = json!(bad);
        let resp = post(&gw, &req).await;
        assert_eq!(resp.status(), 400, "{bad:?}");
    }
    assert!(mock.requests().is_empty(), "nothing reached the provider");
    // Clients choose model names; metric labels stay those configured.
    for i in 0..70 {
        let mut req = simple_request(false);
        req["model"] = json!(format!("client-model-{i}"));
        assert_eq!(post(&gw, &req).await.status(), 200);
    }
    let text = get_text(&gw.url("/metrics/prometheus")).await;
    assert!(
        !text.contains("client-model-"),
        "client names became labels"
    );
    assert!(text.contains(r#"tokens_input_total{model="other",provider="a"}"#));
}

/// An upstream 401 quoting the key went to the client and the access log
/// word for word.
#[tokio::test]
async fn keys_echoed_by_an_upstream_are_redacted() {
    let mock = MockUpstream::start(|_| Reply::Json {
        status: 401,
        body: json!({"error": {"message": format!("Incorrect API key provided: {}. You can find your API key at https://platform.openai.com.", MOCK_KEY.1)}}).to_string(),
        headers: vec![],
    })
    .await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    let resp = post(&gw, &simple_request(false)).await;
    assert_eq!(resp.status(), 401);
    let e: Value = resp.json().await.unwrap();
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Incorrect API key provided: [redacted]"),
        "{message}"
    );
    assert!(gw.log_contains("[redacted]"));
    assert!(!gw.log().contains(MOCK_KEY.1));
}

/// With LYNKR_LOG_LEVEL=trace, Pingora's header logging wrote the client's
/// `x-api-key` and the upstream `Authorization` header.
#[tokio::test]
async fn keys_stay_out_of_the_log_at_trace_level() {
    let mock = MockUpstream::start(|_| ok_json()).await;
    let gw = Gateway::start(
        &openai_provider(mock.addr),
        &[MOCK_KEY, ("LYNKR_LOG_LEVEL", "trace")],
    );
    let resp = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", "client-secret-key-123")
        .json(&simple_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(gw.log_contains("lynkr::access"));
    let log = gw.log();
    assert!(log.contains("\"level\":\"DEBUG\""), "verbose logging is on");
    assert!(!log.contains("client-secret-key-123"));
    assert!(!log.contains(MOCK_KEY.1));
}

/// An upstream dripping a byte every 100 ms held the client forever:
/// `read_ms` is a silence timeout.
#[tokio::test]
async fn the_total_deadline_ends_a_dripping_stream() {
    let mock = MockUpstream::start(|_| {
        let mut pieces = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
        pieces.extend((0..100).map(|_| chunk(json!({"content": "."}), None)));
        Reply::Sse {
            pieces,
            delay: Duration::from_millis(100),
        }
    })
    .await;
    let gw = Gateway::start(
        &format!(
            "timeouts: {{connect_ms: 2000, first_byte_ms: 10000, read_ms: 10000, total_ms: 1500}}\n{}",
            openai_provider(mock.addr)
        ),
        &[MOCK_KEY],
    );
    let started = std::time::Instant::now();
    let events = sse_events(&post(&gw, &simple_request(true)).await.text().await.unwrap());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the deadline cut it"
    );
    let (name, err) = events.last().unwrap();
    assert_eq!(name, "error");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("timeouts.total_ms"));
    assert!(
        eventually(Duration::from_secs(5), || mock
            .aborted
            .load(Ordering::SeqCst)
            == 1)
        .await
    );
}

/// A burst of large bodies could take gigabytes: request bytes held at once
/// are bounded, and past the bound a request gets 529.
#[tokio::test]
async fn request_bytes_held_at_once_are_bounded() {
    let mock = MockUpstream::start(|_| ok_json()).await;
    let gw = Gateway::start(
        &format!(
            "limits: {{max_body_bytes: 100000, max_buffered_bytes: 150000}}\n{}",
            openai_provider(mock.addr)
        ),
        &[MOCK_KEY],
    );
    // One request declares 100 KB and sends it slowly: 100 KB are held.
    let mut held = RawConn::connect(("127.0.0.1", gw.port)).await.unwrap();
    held.send(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{").await.unwrap();
    let mut reserved = false;
    for _ in 0..250 {
        let text = get_text(&gw.url("/metrics/prometheus")).await;
        if text.contains("http_request_body_bytes_held 100000") {
            reserved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reserved, "the slow request holds its declared bytes");
    let mut big = simple_request(false);
    big["messages"][0]["content"] = json!("y".repeat(90_000));
    let resp = post(&gw, &big).await;
    assert_eq!(resp.status(), 529);
    assert!(resp.headers().contains_key("retry-after"));
    let e: Value = resp.json().await.unwrap();
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_buffered_bytes"));
    // A small one still fits, and once the held request is gone, so does the big one.
    assert_eq!(post(&gw, &simple_request(false)).await.status(), 200);
    drop(held);
    let mut ok = false;
    for _ in 0..50 {
        if post(&gw, &big).await.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the bytes are given back");
}
