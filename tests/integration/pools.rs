//! Several endpoints or keys behind one provider: round robin, weighted and
//! consistent selection, and active health checks that take an endpoint
//! out and bring it back.

use crate::common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECOND_KEY: (&str, &str) = ("MOCK_SECOND_KEY", "sk-second-key");

/// One provider `mock` whose `endpoints` YAML list is given, as the default route.
fn pooled(base: SocketAddr, endpoints: &str, extra: &str) -> String {
    format!(
        "providers:\n  mock:\n    preset: openai\n    base_url: http://{base}/v1\n    api_key_env: MOCK_OPENAI_KEY\n    model: gpt-mock\n{extra}    endpoints:\n{endpoints}models:\n  default: mock\n"
    )
}

fn ok() -> Reply {
    Reply::Json {
        status: 200,
        body: completion_json("fine", "stop", Value::Null),
        headers: vec![],
    }
}

/// A mock whose `GET /health` answers 200 while `up` is true, else 503.
async fn mock_with_health(up: Arc<AtomicBool>) -> MockUpstream {
    MockUpstream::start(move |r| {
        if r.method == "GET" {
            let code = if up.load(Ordering::SeqCst) { 200 } else { 503 };
            return Reply::Json {
                status: code,
                body: "{}".into(),
                headers: vec![],
            };
        }
        ok()
    })
    .await
}

async fn send(gw: &Gateway, request_id: &str) -> reqwest::Response {
    client()
        .post(gw.url("/v1/messages"))
        .header("x-request-id", request_id)
        .json(&simple_request(false))
        .send()
        .await
        .unwrap()
}

fn posts(mock: &MockUpstream) -> Vec<Recorded> {
    mock.requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect()
}

/// Polls `/metrics/endpoints` until `provider`'s health flags equal `want`.
async fn wait_for_health(gw: &Gateway, provider: &str, want: &[bool]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Value::Null;
    while Instant::now() < deadline {
        let body = get_json(&gw.url("/metrics/endpoints")).await;
        seen = body["providers"][provider].clone();
        let flags: Vec<bool> = seen
            .as_array()
            .map(|a| a.iter().map(|e| e["healthy"] == true).collect())
            .unwrap_or_default();
        if flags == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{provider} endpoints never reached health {want:?}; last seen {seen}");
}

#[tokio::test]
async fn round_robin_spreads_requests_over_urls_and_keys() {
    let a = MockUpstream::start(|_| ok()).await;
    let b = MockUpstream::start(|_| ok()).await;
    let endpoints = format!(
        "      - {{}}\n      - {{url: \"http://{}/v1\"}}\n      - {{url: \"http://{}/v1\", api_key_env: MOCK_SECOND_KEY}}\n",
        b.addr, b.addr
    );
    let gw = Gateway::start(&pooled(a.addr, &endpoints, ""), &[MOCK_KEY, SECOND_KEY]);
    for n in 0..6 {
        let r = send(&gw, &format!("rr-{n}")).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(posts(&a).len(), 2, "endpoint 0 (the provider's own URL)");
    let keys: Vec<String> = posts(&b)
        .iter()
        .map(|r| r.header("authorization").unwrap_or("").to_string())
        .collect();
    assert_eq!(keys.len(), 4, "endpoints 1 and 2 share a URL");
    for key in ["Bearer sk-test-key", "Bearer sk-second-key"] {
        assert_eq!(keys.iter().filter(|k| *k == key).count(), 2, "{keys:?}");
    }
    // The access log names the endpoint (never the key).
    assert!(gw.log_contains(&format!("\"endpoint\":\"{}#2\"", b.addr)));
    assert!(!gw.log().contains("sk-second-key"));
}

#[tokio::test]
async fn weighted_selection_follows_the_weights() {
    let a = MockUpstream::start(|_| ok()).await;
    let b = MockUpstream::start(|_| ok()).await;
    let endpoints = format!(
        "      - {{weight: 3}}\n      - {{url: \"http://{}/v1\", weight: 1}}\n",
        b.addr
    );
    let gw = Gateway::start(
        &pooled(a.addr, &endpoints, "    selection: weighted\n"),
        &[MOCK_KEY],
    );
    for n in 0..8 {
        assert_eq!(send(&gw, &format!("w-{n}")).await.status(), 200);
    }
    assert_eq!((posts(&a).len(), posts(&b).len()), (6, 2));
}

#[tokio::test]
async fn consistent_hashing_keeps_each_session_on_one_endpoint() {
    let mocks = [
        MockUpstream::start(|_| ok()).await,
        MockUpstream::start(|_| ok()).await,
        MockUpstream::start(|_| ok()).await,
    ];
    let endpoints: String = mocks
        .iter()
        .map(|m| format!("      - {{url: \"http://{}/v1\"}}\n", m.addr))
        .collect();
    let gw = Gateway::start(
        &pooled(mocks[0].addr, &endpoints, "    selection: consistent\n"),
        &[MOCK_KEY],
    );
    for session in 0..12 {
        for n in 0..3 {
            let r = client()
                .post(gw.url("/v1/messages"))
                .header("x-claude-code-session-id", format!("session-{session}"))
                .header("x-request-id", format!("s{session}-{n}"))
                .json(&simple_request(false))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    let mut used = 0;
    for session in 0..12 {
        let prefix = format!("s{session}-");
        let holders: Vec<usize> = (0..3)
            .filter(|&i| {
                posts(&mocks[i])
                    .iter()
                    .any(|r| r.header("x-request-id").unwrap().starts_with(&prefix))
            })
            .collect();
        assert_eq!(holders.len(), 1, "session {session} went to {holders:?}");
    }
    for m in &mocks {
        used += usize::from(!posts(m).is_empty());
    }
    assert!(used >= 2, "12 sessions all hashed to one endpoint");
}

#[tokio::test]
async fn an_unhealthy_endpoint_is_skipped_until_it_recovers() {
    let a_up = Arc::new(AtomicBool::new(true));
    let a = mock_with_health(a_up.clone()).await;
    let b = mock_with_health(Arc::new(AtomicBool::new(true))).await;
    let endpoints = format!("      - {{}}\n      - {{url: \"http://{}/v1\"}}\n", b.addr);
    let check = "    health_check: {kind: http, path: /health, interval_ms: 100, timeout_ms: 1000, unhealthy_after: 1, healthy_after: 2}\n";
    let gw = Gateway::start(&pooled(a.addr, &endpoints, check), &[MOCK_KEY]);
    wait_for_health(&gw, "mock", &[true, true]).await;

    a_up.store(false, Ordering::SeqCst);
    wait_for_health(&gw, "mock", &[false, true]).await;
    let before = posts(&a).len();
    for n in 0..6 {
        assert_eq!(send(&gw, &format!("down-{n}")).await.status(), 200);
    }
    assert_eq!(
        posts(&a).len(),
        before,
        "no request reached the unhealthy endpoint"
    );
    assert!(gw.log_contains("endpoint unhealthy"));

    a_up.store(true, Ordering::SeqCst);
    wait_for_health(&gw, "mock", &[true, true]).await;
    for n in 0..4 {
        assert_eq!(send(&gw, &format!("up-{n}")).await.status(), 200);
    }
    assert_eq!(posts(&a).len(), before + 2, "back in the rotation");
    // The probe carries the endpoint's key, so a revoked key shows up too.
    let probe = a
        .requests()
        .into_iter()
        .find(|r| r.method == "GET")
        .expect("a probe");
    assert_eq!(probe.path, "/health");
    assert_eq!(probe.header("authorization"), Some("Bearer sk-test-key"));
}

#[tokio::test]
async fn with_no_healthy_endpoint_the_route_falls_back_or_fails_fast() {
    let live = MockUpstream::start(|_| ok()).await;
    let dead = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "providers:\n  dead:\n    base_url: http://{dead}/v1\n    model: m\n    endpoints: [{{}}, {{}}]\n    health_check: {{kind: tcp, interval_ms: 100, timeout_ms: 500, unhealthy_after: 1}}\n  live:\n    base_url: http://{}/v1\n    model: m\n\
         models:\n  default: [dead, live]\n  routes:\n    - {{match: \"claude-*haiku*\", target: dead}}\n",
        live.addr
    );
    let gw = Gateway::start(&config, &[]);
    wait_for_health(&gw, "dead", &[false, false]).await;

    let r = send(&gw, "fallback").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["x-lynkr-route"]
        .to_str()
        .unwrap()
        .contains("/live/"));
    assert!(gw.log_contains("\"request_id\":\"fallback\""));
    assert!(gw.log().contains("\"attempts\":1"), "skipped, not tried");

    let mut body = simple_request(false);
    body["model"] = "claude-3-5-haiku-20241022".into();
    let r = client()
        .post(gw.url("/v1/messages"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 529);
    assert!(r.headers().contains_key("retry-after"));
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["type"], "overloaded_error");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("dead: no healthy endpoint"), "{message}");
}
