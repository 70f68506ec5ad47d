//! Each provider kind and preset against a mock speaking its wire format,
//! and the routing decisions (fallback, capabilities, the route header).

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

async fn post_with(gw: &Gateway, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut rb = client()
        .post(gw.url("/v1/messages?beta=true"))
        .header("x-api-key", "client-key-must-not-leak")
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "interleaved-thinking-2025-05-14,context-management-2025-06-27",
        );
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.json(body).send().await.unwrap()
}

fn user(text: &str, stream: bool) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 512, "stream": stream,
           "messages": [{"role": "user", "content": text}],
           "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}]})
}

fn last_text(r: &Recorded) -> String {
    r.body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .map(|m| m["content"].to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn anthropic_passthrough_forwards_body_headers_and_stream_unchanged() {
    let mock = MockUpstream::start(|r| {
        let text = last_text(r);
        if r.path.ends_with("/count_tokens") {
            Reply::Json { status: 200, body: json!({"input_tokens": 4242}).to_string(), headers: vec![] }
        } else if text.contains("overloaded") {
            Reply::Json { status: 529, body: json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).to_string(), headers: vec![] }
        } else if r.body["stream"] == true {
            Reply::Sse { pieces: anthropic_stream("native answer", &[("toolu_1", "Read", "{\"file_path\":\"/a\"}")]), delay: Duration::ZERO }
        } else {
            Reply::Json { status: 200, body: anthropic_message("native json"), headers: vec![] }
        }
    })
    .await;
    let config = format!(
        "providers:\n  claude:\n    kind: anthropic\n    base_url: http://{}\n    api_key_env: UPSTREAM_ANTHROPIC_KEY\n    count_tokens: true\n\
         models:\n  default: claude\n  routes: [{{match: 'claude-opus-*', target: 'claude:claude-opus-upstream'}}]\n",
        mock.addr
    );
    let gw = Gateway::start(&config, &[("UPSTREAM_ANTHROPIC_KEY", "sk-ant-upstream")]);

    // Streaming: the bytes arrive exactly as the upstream sent them.
    let resp = post_with(&gw, &user("hello", true), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-lynkr-route"],
        "default/claude/claude-sonnet-4-5"
    );
    let body = resp.text().await.unwrap();
    assert_eq!(
        body,
        anthropic_stream(
            "native answer",
            &[("toolu_1", "Read", "{\"file_path\":\"/a\"}")]
        )
        .concat()
    );
    let up = mock.last();
    assert_eq!(up.path, "/v1/messages");
    assert_eq!(up.header("x-api-key"), Some("sk-ant-upstream"));
    assert_eq!(up.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        up.header("anthropic-beta"),
        Some("interleaved-thinking-2025-05-14,context-management-2025-06-27")
    );
    assert_eq!(up.header("authorization"), None);
    // Minimal change: cache_control and everything else kept.
    assert_eq!(up.body["system"], user("hello", true)["system"]);
    assert_eq!(up.body["model"], "claude-sonnet-4-5");

    // The model map renames; JSON passes through.
    let mut req = user("hello", false);
    req["model"] = json!("claude-opus-4-8");
    let resp = post_with(&gw, &req, &[]).await;
    assert_eq!(
        resp.headers()["x-lynkr-route"],
        "model:claude-opus-*/claude/claude-opus-upstream"
    );
    let msg: Value = resp.json().await.unwrap();
    assert_eq!(msg["content"][0]["text"], "native json");
    assert_eq!(mock.last().body["model"], "claude-opus-upstream");

    // An Anthropic error keeps its status, type and wording.
    let resp = post_with(&gw, &user("overloaded", false), &[]).await;
    assert_eq!(resp.status(), 529);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(
        err["error"],
        json!({"type": "overloaded_error", "message": "Overloaded"})
    );

    // count_tokens is forwarded to the provider that has it.
    let resp = client()
        .post(gw.url("/v1/messages/count_tokens?beta=true"))
        .body(fixture_body("04"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["input_tokens"], 4242);
    assert_eq!(mock.last().path, "/v1/messages/count_tokens");
}

#[tokio::test]
async fn ollama_native_chat_json_ndjson_and_errors() {
    let mock = MockUpstream::start(|r| {
        if last_text(r).contains("missing") {
            return Reply::Json {
                status: 404,
                body: json!({"error": "model \"nope\" not found, try pulling it first"})
                    .to_string(),
                headers: vec![],
            };
        }
        if r.body["stream"] == true {
            Reply::Ndjson {
                lines: ollama_stream("local model says hi", &[("Bash", json!({"command": "ls"}))]),
            }
        } else {
            Reply::Json {
                status: 200,
                body: ollama_message("local json"),
                headers: vec![],
            }
        }
    })
    .await;
    let config = format!("providers:\n  ollama: {{kind: ollama, base_url: 'http://{}', model: 'qwen3:8b'}}\nmodels: {{default: ollama}}\n", mock.addr);
    let gw = Gateway::start(&config, &[]);

    let events = sse_events(
        &post_with(&gw, &user("hi", true), &[])
            .await
            .text()
            .await
            .unwrap(),
    );
    let text: String = events
        .iter()
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "local model says hi");
    let tool = events
        .iter()
        .find(|(_, v)| v["content_block"]["type"] == "tool_use")
        .expect("a tool_use block");
    assert_eq!(tool.1["content_block"]["name"], "Bash");
    let delta = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta.1["usage"]["input_tokens"], 40);
    let up = mock.last();
    assert_eq!(up.path, "/api/chat");
    assert_eq!(up.body["model"], "qwen3:8b");
    assert_eq!(
        up.body["messages"][0],
        json!({"role": "system", "content": "sys"})
    );
    assert_eq!(up.body["options"]["num_predict"], 512);

    let msg: Value = post_with(&gw, &user("hi", false), &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(msg["content"][0]["text"], "local json");

    let resp = post_with(&gw, &user("missing", false), &[]).await;
    assert_eq!(resp.status(), 404);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["type"], "not_found_error");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("try pulling it first"));
}

#[tokio::test]
async fn openai_presets_azure_openrouter_databricks() {
    let mock = MockUpstream::start(|_| Reply::Json {
        status: 200,
        body: completion_json("ok", "stop", Value::Null),
        headers: vec![],
    })
    .await;
    let a = mock.addr;
    let config = format!(
        "providers:\n\
         \x20 azure: {{preset: azure, base_url: 'http://{a}', deployment: gpt4o-prod, api_version: '2025-01-01', api_key_env: AZ_KEY}}\n\
         \x20 openrouter: {{preset: openrouter, base_url: 'http://{a}/api/v1', api_key_env: OR_KEY, model: 'anthropic/claude-3.5', headers: {{HTTP-Referer: 'https://example.org', X-Title: Lynkr}}}}\n\
         \x20 databricks: {{preset: databricks, base_url: 'http://{a}/serving-endpoints/claude-db/invocations', api_key_env: DB_KEY, model: claude-db}}\n\
         models:\n  default: azure\n  routes:\n    - {{match: or, target: openrouter}}\n    - {{match: db, target: databricks}}\n"
    );
    let gw = Gateway::start(
        &config,
        &[
            ("AZ_KEY", "az-secret"),
            ("OR_KEY", "or-secret"),
            ("DB_KEY", "dapi-secret"),
        ],
    );
    let mut req = user("x", false);
    req["thinking"] = json!({"type": "enabled", "budget_tokens": 2048});

    assert_eq!(post_with(&gw, &req, &[]).await.status(), 200);
    let up = mock.last();
    assert_eq!(
        up.path,
        "/openai/deployments/gpt4o-prod/chat/completions?api-version=2025-01-01"
    );
    assert_eq!(up.header("api-key"), Some("az-secret"));
    assert_eq!(up.header("authorization"), None);
    assert_eq!(up.body["max_completion_tokens"], 512);

    req["model"] = json!("or");
    assert_eq!(post_with(&gw, &req, &[]).await.status(), 200);
    let up = mock.last();
    assert_eq!(up.path, "/api/v1/chat/completions");
    assert_eq!(up.header("authorization"), Some("Bearer or-secret"));
    assert_eq!(up.header("http-referer"), Some("https://example.org"));
    assert_eq!(up.header("x-title"), Some("Lynkr"));
    // The budget (2048) does not fit under the capped max_tokens (512):
    // OpenRouter gets an effort instead of a budget it would refuse.
    assert_eq!(up.body["reasoning"], json!({"effort": "low"}));
    assert_eq!(up.body["max_tokens"], 512);

    req["model"] = json!("db");
    assert_eq!(post_with(&gw, &req, &[]).await.status(), 200);
    let up = mock.last();
    assert_eq!(up.path, "/serving-endpoints/claude-db/invocations");
    assert_eq!(up.header("authorization"), Some("Bearer dapi-secret"));
    assert_eq!(up.body["model"], "claude-db");
    assert!(up.body.get("reasoning").is_none());
}

#[tokio::test]
async fn fallback_chain_walks_on_failures_before_the_first_byte() {
    let bad = MockUpstream::start(|r| match last_text(r).as_str() {
        s if s.contains("429") => Reply::Json {
            status: 429,
            body: json!({"error": {"message": "slow down"}}).to_string(),
            headers: vec![],
        },
        s if s.contains("400") => Reply::Json {
            status: 400,
            body: json!({"error": {"message": "bad field"}}).to_string(),
            headers: vec![],
        },
        s if s.contains("close") => Reply::Close,
        _ => Reply::Json {
            status: 503,
            body: json!({"error": {"message": "unavailable"}}).to_string(),
            headers: vec![],
        },
    })
    .await;
    let good = MockUpstream::start(|_| Reply::Sse {
        pieces: text_stream(&["from backup"]),
        delay: Duration::ZERO,
    })
    .await;
    let dead = free_port();
    let config = format!(
        "providers:\n\
         \x20 dead: {{base_url: 'http://127.0.0.1:{dead}/v1', model: d}}\n\
         \x20 bad: {{base_url: 'http://{}/v1', model: b}}\n\
         \x20 good: {{base_url: 'http://{}/v1', model: g}}\n\
         models:\n  default: [dead, bad, good]\n",
        bad.addr, good.addr
    );
    let gw = Gateway::start(&config, &[]);
    for case in ["503", "429", "close"] {
        let resp = post_with(&gw, &user(case, true), &[]).await;
        assert_eq!(resp.status(), 200, "{case}");
        assert_eq!(resp.headers()["x-lynkr-route"], "default/good/g", "{case}");
        let events = sse_events(&resp.text().await.unwrap());
        assert_eq!(events[2].1["delta"]["text"], "from backup", "{case}");
    }
    assert_eq!(good.requests().len(), 3);
    // A client error is the client's: no fallback.
    let resp = post_with(&gw, &user("400", true), &[]).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-lynkr-route"], "default/bad/b");
    assert_eq!(good.requests().len(), 3);
    assert!(
        gw.log_contains("\"attempts\":3"),
        "the access log counts attempts"
    );
    assert!(
        gw.log_contains("\"attempts\":2"),
        "the access log counts attempts"
    );
}

#[tokio::test]
async fn capabilities_route_around_or_refuse() {
    let a = MockUpstream::start(|_| Reply::Json {
        status: 200,
        body: completion_json("from a", "stop", Value::Null),
        headers: vec![],
    })
    .await;
    let b = MockUpstream::start(|_| Reply::Json {
        status: 200,
        body: completion_json("from b", "stop", Value::Null),
        headers: vec![],
    })
    .await;
    let config = format!(
        "providers:\n\
         \x20 a: {{base_url: 'http://{}/v1', model: a, capabilities: {{tools: false, vision: false, context_window: 1000}}}}\n\
         \x20 b: {{base_url: 'http://{}/v1', model: b}}\n\
         models:\n  default: [a, b]\n  routes: [{{match: only-a, target: a}}]\n",
        a.addr, b.addr
    );
    let gw = Gateway::start(&config, &[]);
    let text_of = |v: Value| v["content"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(
        text_of(
            post_with(&gw, &user("plain", false), &[])
                .await
                .json()
                .await
                .unwrap()
        ),
        "from a"
    );
    let mut tools = user("tools", false);
    tools["tools"] = json!([{"name": "Read", "input_schema": {"type": "object"}}]);
    assert_eq!(
        text_of(post_with(&gw, &tools, &[]).await.json().await.unwrap()),
        "from b"
    );
    let mut image = user("img", false);
    image["messages"][0]["content"] = json!([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}]);
    assert_eq!(
        text_of(post_with(&gw, &image, &[]).await.json().await.unwrap()),
        "from b"
    );
    let big = user(&"word ".repeat(2000), false);
    assert_eq!(
        text_of(post_with(&gw, &big, &[]).await.json().await.unwrap()),
        "from b"
    );

    tools["model"] = json!("only-a");
    let resp = post_with(&gw, &tools, &[]).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a lacks tools"),
        "{err}"
    );
    assert_eq!(a.requests().len(), 1);
}

#[tokio::test]
async fn claude_code_aware_routes_and_affinity_end_to_end() {
    let mock = MockUpstream::start(|_| Reply::Json {
        status: 200,
        body: completion_json("ok", "stop", Value::Null),
        headers: vec![],
    })
    .await;
    let m = mock.addr;
    let config = format!(
        "providers:\n\
         \x20 main: {{base_url: 'http://{m}/v1', model: main-model}}\n\
         \x20 cheap: {{base_url: 'http://{m}/v1', model: cheap-model}}\n\
         \x20 east: {{base_url: 'http://{m}/v1', model: east}}\n\
         \x20 west: {{base_url: 'http://{m}/v1', model: west}}\n\
         models:\n  default: main\n  routes: [{{match: 'claude-opus-*', target: {{targets: [east, west], balance: affinity}}}}]\n\
         routing:\n  background: cheap\n  think: main:thinking-model\n  long_context: {{threshold_tokens: 5000, targets: main:long-model}}\n\
         \x20 web_search: main:search-model\n  rules: [{{name: tool-heavy, min_tools: 20, targets: main:tools-model}}]\n"
    );
    let gw = Gateway::start(&config, &[]);
    let route = |resp: &reqwest::Response| {
        resp.headers()["x-lynkr-route"]
            .to_str()
            .unwrap()
            .to_string()
    };

    let mut haiku = user("title please", false);
    haiku["model"] = json!("claude-haiku-4-5-20251001");
    assert_eq!(
        route(&post_with(&gw, &haiku, &[]).await),
        "background/cheap/cheap-model"
    );
    let mut think = user("think", false);
    think["thinking"] = json!({"type": "enabled", "budget_tokens": 4000});
    assert_eq!(
        route(&post_with(&gw, &think, &[]).await),
        "think/main/thinking-model"
    );
    let mut search = user("search", false);
    search["tools"] = json!([{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]);
    assert_eq!(
        route(&post_with(&gw, &search, &[]).await),
        "web_search/main/search-model"
    );
    assert_eq!(
        route(&post_with(&gw, &user(&"long ".repeat(6000), false), &[]).await),
        "long_context/main/long-model"
    );
    // The real Claude Code request (24 tools) meets the tool-heavy rule.
    let resp = client()
        .post(gw.url("/v1/messages?beta=true"))
        .body(fixture_body("01"))
        .send()
        .await
        .unwrap();
    assert_eq!(route(&resp), "rule:tool-heavy/main/tools-model");
    assert_eq!(mock.last().body["model"], "tools-model");

    // Affinity: one session keeps its target; sessions spread over both.
    let mut opus = user("x", false);
    opus["model"] = json!("claude-opus-4-8");
    let mut seen = std::collections::HashSet::new();
    for i in 0..12 {
        let session = format!("session-{i}");
        let first = route(&post_with(&gw, &opus, &[("x-claude-code-session-id", &session)]).await);
        let again = route(&post_with(&gw, &opus, &[("x-claude-code-session-id", &session)]).await);
        assert_eq!(first, again);
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        gw.log_contains("\"route\":\"background/cheap/cheap-model\""),
        "the decision is logged"
    );
}

// ---- Bedrock ------------------------------------------------------------------------

fn frame(message_type: &str, type_header: (&str, &str), payload: Value) -> Vec<u8> {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let msg = Message::new(payload.to_string().into_bytes())
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String(message_type.to_string().into()),
        ))
        .add_header(Header::new(
            type_header.0.to_string(),
            HeaderValue::String(type_header.1.to_string().into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut out = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&msg, &mut out).unwrap();
    out
}

fn event(kind: &str, payload: Value) -> Vec<u8> {
    frame("event", (":event-type", kind), payload)
}

/// `20231114T221320Z` -> SystemTime.
fn amz_date(s: &str) -> std::time::SystemTime {
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(4, 6), n(6, 8));
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let days = era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
    let secs = days * 86400 + n(9, 11) * 3600 + n(11, 13) * 60 + n(13, 15);
    std::time::UNIX_EPOCH + Duration::from_secs(secs as u64)
}

/// The mock's own check: sign the request it received again, with the
/// credentials it knows, and compare.
fn signature_ok(r: &Recorded, port: u16) -> bool {
    let creds = aws_credential_types::Credentials::new(
        "AKIDMOCK",
        "mock-secret",
        Some("mock-session".into()),
        None,
        "mock",
    );
    let Some(date) = r.header("x-amz-date") else {
        return false;
    };
    let endpoint = lynkr::providers::Endpoint {
        tls: false,
        host: "127.0.0.1".into(),
        port,
        path: String::new(),
    };
    let expected = lynkr::providers::bedrock::sign(
        &creds,
        "us-west-2",
        &endpoint,
        &r.path,
        &r.raw,
        amz_date(date),
    )
    .unwrap();
    let want = expected
        .iter()
        .find(|(k, _)| *k == "authorization")
        .map(|(_, v)| v.as_str());
    r.header("authorization") == want && r.header("x-amz-security-token") == Some("mock-session")
}

#[tokio::test]
async fn bedrock_converse_with_sigv4_checked_by_the_mock() {
    let port_cell = std::sync::Arc::new(std::sync::OnceLock::<u16>::new());
    let port_for_mock = port_cell.clone();
    let mock = MockUpstream::start(move |r| {
        let port = *port_for_mock.get().unwrap();
        if r.header("authorization").is_some_and(|a| a.starts_with("Bearer ")) {
            if r.header("authorization") != Some("Bearer bedrock-api-key") {
                return Reply::Json { status: 403, body: json!({"message": "Invalid API key"}).to_string(), headers: vec![] };
            }
        } else if !signature_ok(r, port) {
            return Reply::Json { status: 403, body: json!({"message": "The request signature we calculated does not match the signature you provided."}).to_string(), headers: vec![] };
        }
        if r.path.ends_with("/converse") {
            let body = json!({"output": {"message": {"role": "assistant", "content": [{"text": "bedrock json"}]}},
                "stopReason": "end_turn", "usage": {"inputTokens": 12, "outputTokens": 3}});
            return Reply::Json { status: 200, body: body.to_string(), headers: vec![] };
        }
        let text = r.body["messages"][0]["content"][0]["text"].as_str().unwrap_or("");
        let mut pieces = vec![event("messageStart", json!({"role": "assistant"}))];
        if text == "throttle" {
            pieces.push(frame("exception", (":exception-type", "throttlingException"), json!({"message": "Too many tokens"})));
        } else if text == "throttle-late" {
            pieces.push(event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "partial"}})));
            pieces.push(frame("exception", (":exception-type", "throttlingException"), json!({"message": "Too many tokens"})));
        } else {
            pieces.push(event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "from "}})));
            pieces.push(event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "bedrock"}})));
            pieces.push(event("contentBlockStop", json!({"contentBlockIndex": 0})));
            pieces.push(event("contentBlockStart", json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tu1", "name": "Read"}}})));
            pieces.push(event("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"file_path\":"}}})));
            pieces.push(event("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"/a\"}"}}})));
            pieces.push(event("contentBlockStop", json!({"contentBlockIndex": 1})));
            pieces.push(event("messageStop", json!({"stopReason": "tool_use"})));
            pieces.push(event("metadata", json!({"usage": {"inputTokens": 30, "outputTokens": 8}})));
        }
        // Split frames across chunks, as a network would.
        let all: Vec<u8> = pieces.concat();
        Reply::Binary { content_type: "application/vnd.amazon.eventstream".into(), pieces: all.chunks(11).map(<[u8]>::to_vec).collect() }
    })
    .await;
    port_cell.set(mock.addr.port()).unwrap();
    let model = "anthropic.claude-3-5-sonnet-20241022-v2:0";
    let config = format!(
        "providers:\n\
         \x20 bedrock: {{kind: bedrock, base_url: 'http://{a}', region: us-west-2, model: '{model}'}}\n\
         \x20 bedrock-key: {{kind: bedrock, base_url: 'http://{a}', region: us-west-2, model: '{model}', api_key_env: BEDROCK_KEY}}\n\
         models:\n  default: bedrock\n  routes: [{{match: keyed, target: bedrock-key}}]\n",
        a = mock.addr
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIDMOCK"),
        ("AWS_SECRET_ACCESS_KEY", "mock-secret"),
        ("AWS_SESSION_TOKEN", "mock-session"),
        ("BEDROCK_KEY", "bedrock-api-key"),
    ];
    let gw = Gateway::start(&config, &env);

    let resp = post_with(&gw, &user("hello", true), &[]).await;
    assert_eq!(resp.status(), 200);
    let events = sse_events(&resp.text().await.unwrap());
    let text: String = events
        .iter()
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "from bedrock", "{events:?}");
    let args: String = events
        .iter()
        .filter_map(|(_, v)| v["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(args, "{\"file_path\":\"/a\"}");
    let delta = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
    let up = mock.last();
    assert_eq!(
        up.path,
        "/model/anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse-stream"
    );
    assert!(up
        .header("authorization")
        .unwrap()
        .starts_with("AWS4-HMAC-SHA256 Credential=AKIDMOCK/"));
    assert_eq!(up.body["system"], json!([{"text": "sys"}]));
    assert_eq!(up.body["inferenceConfig"]["maxTokens"], 512);

    let msg: Value = post_with(&gw, &user("hello", false), &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(msg["content"][0]["text"], "bedrock json");

    // A throttling exception before any content is Bedrock's 429: it is
    // retried like one, then answered as one (nothing had been streamed).
    let before = mock.requests().len();
    let resp = post_with(&gw, &user("throttle", true), &[]).await;
    assert_eq!(resp.status(), 429);
    let data: Value = resp.json().await.unwrap();
    assert_eq!(data["error"]["type"], "rate_limit_error");
    assert!(data["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Too many tokens"));
    assert_eq!(mock.requests().len() - before, 3, "retried as a 429");
    // After content reached the client, it ends the stream with an error event.
    let events = sse_events(
        &post_with(&gw, &user("throttle-late", true), &[])
            .await
            .text()
            .await
            .unwrap(),
    );
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["type"], "rate_limit_error");

    // A Bedrock API key goes as a bearer token, unsigned.
    let mut keyed = user("hello", false);
    keyed["model"] = json!("keyed");
    let msg: Value = post_with(&gw, &keyed, &[]).await.json().await.unwrap();
    assert_eq!(msg["content"][0]["text"], "bedrock json");
    assert_eq!(
        mock.last().header("authorization"),
        Some("Bearer bedrock-api-key")
    );
    assert_eq!(mock.last().header("x-amz-date"), None);

    // Wrong credentials: the mock's signature check fails, and the client
    // sees Bedrock's 403 as a permission error with its wording.
    let bad_env = [
        ("AWS_ACCESS_KEY_ID", "AKIDMOCK"),
        ("AWS_SECRET_ACCESS_KEY", "wrong-secret"),
        ("AWS_SESSION_TOKEN", "mock-session"),
    ];
    let bad = Gateway::start(
        &config.replace("api_key_env: BEDROCK_KEY", "api_key_env: MOCK_OPENAI_KEY"),
        &[bad_env[0], bad_env[1], bad_env[2], MOCK_KEY],
    );
    let resp = post_with(&bad, &user("hello", false), &[]).await;
    assert_eq!(resp.status(), 403);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["type"], "permission_error");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("signature we calculated does not match"));
}
