//! The built gateway between a real HTTP client and a mock OpenAI upstream.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// As Claude Code posts: `?beta=true`, a client key, `anthropic-version`.
async fn post(gw: &Gateway, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/messages?beta=true"))
        .header("x-api-key", "client-key")
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn error_of(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    (
        status,
        v["error"]["type"].as_str().unwrap().to_string(),
        v["error"]["message"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn json_request_is_translated_both_ways() {
    let mock = MockUpstream::start(|_| Reply::Json {
        status: 200,
        body: completion_json("Hello there", "stop", Value::Null),
        headers: vec![],
    })
    .await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    let mut req = simple_request(false);
    req["system"] =
        json!([{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}]);
    let resp = post(&gw, &req).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-request-id").is_some());
    let msg: Value = resp.json().await.unwrap();
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["role"], "assistant");
    assert_eq!(msg["model"], "claude-sonnet-4-5");
    assert_eq!(
        msg["content"],
        json!([{"type": "text", "text": "Hello there"}])
    );
    assert_eq!(msg["stop_reason"], "end_turn");
    assert_eq!(msg["usage"]["input_tokens"], 7);
    assert_eq!(msg["usage"]["cache_read_input_tokens"], 4);
    assert_eq!(msg["usage"]["output_tokens"], 7);

    let up = mock.last();
    assert_eq!(
        (up.method.as_str(), up.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(up.header("authorization"), Some("Bearer sk-test-key"));
    assert_eq!(up.header("accept-encoding"), None);
    assert!(up.header("x-request-id").is_some());
    assert_eq!(up.body["model"], "gpt-mock");
    assert_eq!(up.body["max_completion_tokens"], 1024);
    assert_eq!(
        up.body["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(up.body["stream"], false);
}

#[tokio::test]
async fn glob_route_picks_the_mapped_model() {
    let mock = MockUpstream::start(|_| Reply::Json {
        status: 200,
        body: completion_json("ok", "stop", Value::Null),
        headers: vec![],
    })
    .await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    let mut req = simple_request(false);
    req["model"] = json!("claude-haiku-4-5-20251001");
    assert_eq!(post(&gw, &req).await.status(), 200);
    assert_eq!(mock.last().body["model"], "gpt-mini");
    let models = get_json(&gw.url("/v1/models")).await;
    assert_eq!(models["data"][0]["type"], "model");
    assert_eq!(models["data"][0]["id"], "gpt-mock");
    assert_eq!(models["has_more"], false);
}

#[tokio::test]
async fn sse_text_stream_is_the_exact_anthropic_sequence() {
    let mock = MockUpstream::start(|_| Reply::Sse {
        pieces: text_stream(&["Hel", "lo", " world"]),
        delay: Duration::from_millis(5),
    })
    .await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    let resp = post(&gw, &simple_request(true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = sse_events(&resp.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let text: String = events
        .iter()
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello world");
    assert_eq!(events[6].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[6].1["usage"]["output_tokens"], 3);
    let up = mock.last();
    assert_eq!(up.body["stream"], true);
    assert_eq!(up.body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn tool_call_arguments_over_many_deltas_and_parallel_calls() {
    let mock = MockUpstream::start(|_| Reply::Sse {
        pieces: tool_stream(
            "Reading both.",
            &[
                ("call_a", "Read", r#"{"file_path":"/tmp/a.txt"}"#),
                ("call_b", "Read", r#"{"file_path":"/tmp/b.txt"}"#),
            ],
            2,
        ),
        delay: Duration::ZERO,
    })
    .await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    let events = sse_events(&post(&gw, &simple_request(true)).await.text().await.unwrap());
    let starts: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, v)| &v["content_block"])
        .collect();
    assert_eq!(starts.len(), 3);
    assert_eq!(starts[0]["type"], "text");
    assert_eq!(
        starts[1],
        &json!({"type": "tool_use", "id": "call_a", "name": "Read", "input": {}})
    );
    assert_eq!(starts[2]["id"], "call_b");
    for (index, path) in [(1, "/tmp/a.txt"), (2, "/tmp/b.txt")] {
        let args: String = events
            .iter()
            .filter(|(_, v)| v["index"] == index && v["delta"]["type"] == "input_json_delta")
            .map(|(_, v)| v["delta"]["partial_json"].as_str().unwrap())
            .collect();
        let parsed: Value = serde_json::from_str(&args).unwrap();
        assert_eq!(parsed["file_path"], path);
    }
    let delta = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn claude_code_fixture_of_76_kb_streams_through() {
    let mock = MockUpstream::start(|_| Reply::Sse {
        pieces: text_stream(&["done"]),
        delay: Duration::ZERO,
    })
    .await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    for fixture in ["01", "02", "05"] {
        let body = fixture_body(fixture);
        assert!(body.len() > 70_000);
        let resp = client()
            .post(gw.url("/v1/messages?beta=true"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "fixture {fixture}");
        let events = sse_events(&resp.text().await.unwrap());
        assert_eq!(
            events.last().unwrap().0,
            "message_stop",
            "fixture {fixture}"
        );
        assert_eq!(mock.last().body["tools"].as_array().unwrap().len(), 24);
    }
    // The pooled keep-alive connection carried every request.
    assert_eq!(
        mock.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn upstream_errors_keep_status_type_and_wording() {
    let mock = MockUpstream::start(|r| {
        let (status, message) = match r.body["messages"][0]["content"].as_str().unwrap() {
            "400" => (400, "This model's maximum context length is 128000 tokens."),
            "401" => (401, "Incorrect API key provided: sk-test***"),
            "429" => (
                429,
                "Rate limit reached for gpt-4o in organization org-x on tokens per min.",
            ),
            _ => (
                500,
                "The server had an error while processing your request.",
            ),
        };
        Reply::Json {
            status,
            body: json!({"error": {"message": message, "type": "x", "code": null}}).to_string(),
            headers: if status == 429 {
                vec![("retry-after".into(), "7".into())]
            } else {
                vec![]
            },
        }
    })
    .await;
    // One attempt and no breaker: this test is about how each error reads.
    let no_retry = "resilience: {retry: {max_attempts: 1}, circuit_breaker: {enabled: false}}\n";
    let gw = Gateway::start(
        &format!("{no_retry}{}", openai_provider(mock.addr)),
        &[MOCK_KEY],
    );
    for (code, status, kind, wording) in [
        (
            "400",
            400,
            "invalid_request_error",
            "maximum context length",
        ),
        ("401", 401, "authentication_error", "Incorrect API key"),
        ("429", 429, "rate_limit_error", "Rate limit reached"),
        ("500", 500, "api_error", "had an error while processing"),
    ] {
        for stream in [false, true] {
            let mut req = simple_request(stream);
            req["messages"][0]["content"] = json!(code);
            let resp = post(&gw, &req).await;
            if code == "429" {
                assert_eq!(resp.headers()["retry-after"], "7");
            }
            let (s, k, m) = error_of(resp).await;
            assert_eq!((s, k.as_str()), (status, kind), "upstream {code}");
            assert!(m.contains(wording), "{m}");
        }
    }
}

#[tokio::test]
async fn malformed_and_truncated_streams_end_in_an_error_event() {
    let mock = MockUpstream::start(
        |r| match r.body["messages"][0]["content"].as_str().unwrap() {
            "garbage-later" => Reply::Sse {
                pieces: vec![
                    chunk(json!({"content": "partial"}), None),
                    "data: {this is not json}\n\n".into(),
                ],
                delay: Duration::ZERO,
            },
            "garbage-first" => Reply::Sse {
                pieces: vec!["data: <html>oops</html>\n\n".into()],
                delay: Duration::ZERO,
            },
            "early-close" => Reply::SseThenClose {
                pieces: vec![chunk(json!({"content": "partial"}), None)],
            },
            _ => Reply::Close,
        },
    )
    .await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    for case in ["garbage-later", "early-close"] {
        let mut req = simple_request(true);
        req["messages"][0]["content"] = json!(case);
        let resp = post(&gw, &req).await;
        assert_eq!(resp.status(), 200, "{case}");
        let events = sse_events(
            &tokio::time::timeout(Duration::from_secs(20), resp.text())
                .await
                .unwrap()
                .unwrap(),
        );
        assert_eq!(events.first().unwrap().0, "message_start", "{case}");
        let (name, data) = events.last().unwrap();
        assert_eq!(name, "error", "{case}: {events:?}");
        assert_eq!(data["type"], "error");
        assert_eq!(data["error"]["type"], "api_error");
        assert!(!events.iter().any(|(n, _)| n == "message_stop"), "{case}");
    }
    // Broken before anything reached the client: a plain JSON error.
    for (case, wording) in [
        ("garbage-first", "malformed upstream stream"),
        ("close", "upstream connection error"),
    ] {
        let mut req = simple_request(true);
        req["messages"][0]["content"] = json!(case);
        let (status, kind, message) = error_of(post(&gw, &req).await).await;
        assert_eq!((status, kind.as_str()), (502, "api_error"), "{case}");
        assert!(message.contains(wording), "{case}: {message}");
    }
}

#[tokio::test]
async fn unreachable_upstream_is_a_502_api_error() {
    let port = free_port(); // nothing listens there
    let gw = Gateway::start(
        &openai_provider(format!("127.0.0.1:{port}").parse().unwrap()),
        &[MOCK_KEY],
    );
    let (status, kind, message) = error_of(post(&gw, &simple_request(false)).await).await;
    assert_eq!((status, kind.as_str()), (502, "api_error"));
    assert!(message.contains("upstream connect error"), "{message}");
}

#[tokio::test]
async fn a_streaming_request_answered_with_json_still_streams() {
    let mock = MockUpstream::start(|_| Reply::Json {
        status: 200,
        body: completion_json(
            "",
            "tool_calls",
            json!([{"id": "call_1", "type": "function",
            "function": {"name": "Bash", "arguments": "{\"command\":\"ls\"}"}}]),
        ),
        headers: vec![],
    })
    .await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    let events = sse_events(&post(&gw, &simple_request(true)).await.text().await.unwrap());
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
    assert_eq!(events[1].1["content_block"]["name"], "Bash");
    assert_eq!(events[2].1["delta"]["partial_json"], "{\"command\":\"ls\"}");
}

#[tokio::test]
async fn bad_input_gets_a_400_naming_the_field_and_never_reaches_upstream() {
    let mock = MockUpstream::start(|_| Reply::Close).await;
    let gw = Gateway::start(
        &format!(
            "limits: {{max_body_bytes: 200000}}\n{}",
            openai_provider(mock.addr)
        ),
        &[MOCK_KEY],
    );
    let raw = |body: &'static str| {
        let url = gw.url("/v1/messages");
        async move {
            client()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let (s, k, m) = error_of(raw("{\"model\": ").await).await;
    assert_eq!((s, k.as_str()), (400, "invalid_request_error"));
    assert!(m.starts_with("body: invalid JSON"), "{m}");
    let (s, _, m) =
        error_of(raw(r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#).await).await;
    assert_eq!((s, m.as_str()), (400, "max_tokens: field required"));
    let (_, _, m) = error_of(
        raw(r#"{"model":"m","max_tokens":1,"messages":[{"role":"tool","content":"x"}]}"#).await,
    )
    .await;
    assert!(
        m.starts_with("messages.0.role: unknown variant `tool`"),
        "{m}"
    );
    // A known block type must be well formed (an unknown one is accepted:
    // Anthropic adds block types, see `forward_compatible_content`).
    let (_, _, m) = error_of(raw(r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"image"}]}]}"#).await).await;
    assert_eq!(m, "messages.0.content.0.source: field required");
    let (_, _, m) = error_of(raw(r#"{"max_tokens":1,"messages":[]}"#).await).await;
    assert_eq!(m, "model: field required");

    // Over the limit: refused by its declared length, and when streamed in.
    let big = vec![b' '; 300_000];
    let resp = client()
        .post(gw.url("/v1/messages"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let (s, k, _) = error_of(resp).await;
    assert_eq!((s, k.as_str()), (413, "request_too_large"));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(50_000).map(|c| Ok(c.to_vec())).collect();
    let resp = client()
        .post(gw.url("/v1/messages"))
        .body(reqwest::Body::wrap_stream(futures_util_stream(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    assert!(mock.requests().is_empty(), "bad input reached the upstream");
    // ...and the gateway is still up.
    assert_eq!(
        client().head(gw.url("/")).send().await.unwrap().status(),
        200
    );
}

fn futures_util_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    struct Iter(std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>);
    impl futures_core::Stream for Iter {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(chunks.into_iter())
}

#[tokio::test]
async fn ops_endpoints_count_tokens_and_404() {
    let mock = MockUpstream::start(|_| Reply::Close).await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    let c = client();
    assert_eq!(c.head(gw.url("/")).send().await.unwrap().status(), 200);
    let root: Value = c
        .get(gw.url("/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(root["name"], "lynkr");
    assert_eq!(
        c.get(gw.url("/health/live")).send().await.unwrap().status(),
        200
    );

    let (s, k, m) = error_of(c.get(gw.url("/v2/whatever")).send().await.unwrap()).await;
    assert_eq!((s, k.as_str()), (404, "not_found_error"));
    assert!(m.contains("/v2/whatever"));
    let (s, _, _) = error_of(c.get(gw.url("/v1/messages")).send().await.unwrap()).await;
    assert_eq!(s, 404);

    let body = fixture_body("04");
    let resp = c
        .post(gw.url("/v1/messages/count_tokens?beta=true"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let count: Value = resp.json().await.unwrap();
    let n = count["input_tokens"].as_u64().unwrap();
    // About one token per four bytes of a 30 KB request.
    assert!(
        (body.len() as u64 / 6..=body.len() as u64 / 3).contains(&n),
        "{n} for {} bytes",
        body.len()
    );
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn original_lynkr_environment_alone_serves_requests() {
    let mock = MockUpstream::start(|_| Reply::Sse {
        pieces: text_stream(&["hi"]),
        delay: Duration::ZERO,
    })
    .await;
    let port = free_port();
    let endpoint = format!("http://{}/v1/chat/completions", mock.addr);
    let port_s = port.to_string();
    let gw = Gateway::start_env_only(
        &[
            ("MODEL_PROVIDER", "openai"),
            ("OPENAI_ENDPOINT", &endpoint),
            ("OPENAI_API_KEY", "x"),
            ("OPENAI_MODEL", "gpt-4o"),
            ("PORT", &port_s),
        ],
        port,
    );
    let events = sse_events(&post(&gw, &simple_request(true)).await.text().await.unwrap());
    assert_eq!(events.last().unwrap().0, "message_stop");
    let up = mock.last();
    assert_eq!(up.body["model"], "gpt-4o");
    assert_eq!(up.header("authorization"), Some("Bearer x"));
    assert_eq!(up.path, "/v1/chat/completions");
}

/// Run the built binary to completion: (exit code, stdout, stderr).
fn lynkr(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(lynkr_bin())
        .args(args)
        .envs(env.iter().copied())
        .env("PORT", free_port().to_string())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn check_config_reports_every_problem_with_its_path() {
    let dir = scratch_dir("check");
    let bad = dir.join("bad.yaml");
    let bad_yaml =
        "providers:\n  openai: {preset: openai, base_url: 'nope'}\nmodels: {default: ghost}\n";
    std::fs::write(&bad, bad_yaml).unwrap();
    let bad = bad.to_str().unwrap();
    let (code, text, _) = lynkr(&["check-config", bad], &[]);
    assert_eq!(code, Some(1));
    for expected in [
        "providers.openai.base_url: not a URL",
        "providers.openai.api_key_env: required",
        "models.default: unknown provider \"ghost\"",
    ] {
        assert!(text.contains(expected), "{expected} not in {text}");
    }

    let good = dir.join("good.yaml");
    let good_yaml =
        "providers:\n  l: {base_url: 'http://127.0.0.1:1/v1', model: m}\nmodels: {default: l}\n";
    std::fs::write(&good, good_yaml).unwrap();
    let good = good.to_str().unwrap();
    let (code, text, _) = lynkr(&["check-config", good], &[]);
    assert_eq!(code, Some(0), "{text}");
    // Pingora's -t loads everything and exits.
    let (code, _, log) = lynkr(&["-t", "-c", good], &[]);
    assert_eq!(code, Some(0), "{log}");

    // The server itself refuses a bad configuration...
    let (code, _, err) = lynkr(&["-c", bad], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("providers.openai.base_url"), "{err}");
    // ...and an unknown MODEL_PROVIDER.
    let (code, _, err) = lynkr(&[], &[("MODEL_PROVIDER", "nonsense")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("MODEL_PROVIDER: unknown provider"), "{err}");
}

#[tokio::test]
async fn tls_upstream_with_a_private_ca() {
    let dir = scratch_dir("tls");
    let (ca, server_tls) = test_pki(&dir);
    let mock = MockUpstream::start_tls(
        |_| Reply::Sse {
            pieces: text_stream(&["secure"]),
            delay: Duration::ZERO,
        },
        server_tls,
    )
    .await;
    let port = mock.addr.port();
    let provider = |ca_line: &str| {
        format!(
            "providers:\n  tls:\n    base_url: https://127.0.0.1:{port}/v1\n    model: m\n{ca_line}models:\n  default: tls\n"
        )
    };
    let gw = Gateway::start(
        &provider(&format!("    tls_ca_file: {}\n", ca.display())),
        &[],
    );
    let events = sse_events(&post(&gw, &simple_request(true)).await.text().await.unwrap());
    assert_eq!(
        events.last().unwrap().0,
        "message_stop",
        "{events:?}\n{}",
        gw.log()
    );
    assert_eq!(events[2].1["delta"]["text"], "secure");
    assert_eq!(mock.requests().len(), 1);

    // Without the CA the certificate is not trusted: nothing is sent.
    let gw = Gateway::start(&provider(""), &[]);
    let (status, kind, message) = error_of(post(&gw, &simple_request(true)).await).await;
    assert_eq!((status, kind.as_str()), (502, "api_error"));
    assert!(message.contains("upstream connect error"), "{message}");
    assert_eq!(mock.requests().len(), 1);
}
