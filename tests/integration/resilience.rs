//! Fault injection over real sockets: a mock upstream that refuses, delays,
//! resets, rate-limits, fails and stalls, and the gateway's answer to each.

use crate::common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(mock: std::net::SocketAddr, resilience: &str) -> String {
    format!("resilience:\n{resilience}\n{}", openai_provider(mock))
}

#[tokio::test]
async fn retries_with_backoff_until_success_but_never_on_4xx() {
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    let mock = MockUpstream::start(move |r| {
        if r.body["messages"][0]["content"] == "bad" {
            return error_reply(400, "invalid");
        }
        match count.fetch_add(1, Ordering::SeqCst) {
            0 => Reply::Close,
            1 => error_reply(503, "busy"),
            _ => ok_json(),
        }
    })
    .await;
    let gw = Gateway::start(
        &config(
            mock.addr,
            "  retry: {max_attempts: 4, base_ms: 10, cap_ms: 50}",
        ),
        &[MOCK_KEY],
    );
    let resp = post(&gw, &simple_request(false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.requests().len(), 3, "reset, 503, then success");
    assert!(gw.log_contains("\"attempts\":3"));

    let mut bad = simple_request(false);
    bad["messages"][0]["content"] = json!("bad");
    assert_eq!(post(&gw, &bad).await.status(), 400);
    assert_eq!(mock.requests().len(), 4, "a 400 is not retried");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    let mock = MockUpstream::start(move |_| {
        if count.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::Json {
                status: 429,
                body: json!({"error": {"message": "slow down"}}).to_string(),
                headers: vec![("retry-after".into(), "1".into())],
            }
        } else {
            ok_json()
        }
    })
    .await;
    let gw = Gateway::start(
        &config(
            mock.addr,
            "  retry: {max_attempts: 2, base_ms: 1, cap_ms: 5000}",
        ),
        &[MOCK_KEY],
    );
    let started = Instant::now();
    assert_eq!(post(&gw, &simple_request(false)).await.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stream_is_never_retried_once_bytes_reached_the_client() {
    let mock = MockUpstream::start(|_| Reply::SseThenClose {
        pieces: vec![chunk(json!({"content": "partial"}), None)],
    })
    .await;
    let gw = Gateway::start(
        &config(
            mock.addr,
            "  retry: {max_attempts: 5, base_ms: 1, cap_ms: 5}",
        ),
        &[MOCK_KEY],
    );
    let events = sse_events(&post(&gw, &simple_request(true)).await.text().await.unwrap());
    assert_eq!(events[0].0, "message_start");
    assert_eq!(events.last().unwrap().0, "error");
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn circuit_breaker_opens_fails_fast_and_recovers() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = healthy.clone();
    let mock = MockUpstream::start(move |_| {
        if h.load(Ordering::SeqCst) {
            ok_json()
        } else {
            error_reply(500, "down")
        }
    })
    .await;
    let gw = Gateway::start(
        &config(mock.addr, "  retry: {max_attempts: 1}\n  circuit_breaker: {failure_threshold: 3, open_ms: 1500, success_threshold: 1}"),
        &[MOCK_KEY],
    );
    for _ in 0..3 {
        assert_eq!(post(&gw, &simple_request(false)).await.status(), 500);
    }
    // Open: refused at once with 529 and Retry-After, nothing sent upstream.
    let resp = post(&gw, &simple_request(false)).await;
    assert_eq!(resp.status(), 529);
    assert!(
        resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["type"], "overloaded_error");
    assert_eq!(mock.requests().len(), 3);
    let state = get_json(&gw.url("/metrics/circuit-breakers")).await;
    assert_eq!(state["providers"]["mock"]["state"], "open");
    assert_eq!(state["providers"]["mock"]["times_opened"], 1);

    // After the timeout a probe goes through; its success closes the breaker.
    healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(post(&gw, &simple_request(false)).await.status(), 200);
    let state = get_json(&gw.url("/metrics/circuit-breakers")).await;
    assert_eq!(state["providers"]["mock"]["state"], "closed");
}

#[tokio::test]
async fn an_open_breaker_moves_traffic_to_the_next_target() {
    let down = MockUpstream::start(|_| error_reply(503, "down")).await;
    let up = MockUpstream::start(|_| ok_json()).await;
    let cfg = format!(
        "resilience: {{retry: {{max_attempts: 2, base_ms: 1, cap_ms: 5}}, circuit_breaker: {{failure_threshold: 2, open_ms: 60000}}}}\n\
         providers:\n  down: {{base_url: 'http://{}/v1', model: d}}\n  up: {{base_url: 'http://{}/v1', model: u}}\nmodels: {{default: [down, up]}}\n",
        down.addr, up.addr
    );
    let gw = Gateway::start(&cfg, &[]);
    for _ in 0..5 {
        let resp = post(&gw, &simple_request(false)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-lynkr-route"], "default/up/u");
    }
    assert_eq!(
        down.requests().len(),
        2,
        "the open breaker keeps requests off the failing target"
    );
}

#[tokio::test]
async fn load_shedding_keeps_health_answering_and_loses_nothing() {
    let mock = MockUpstream::start(|_| Reply::Delayed {
        delay: Duration::from_millis(800),
        reply: Box::new(ok_json()),
    })
    .await;
    let gw = Gateway::start(
        &config(
            mock.addr,
            "  load_shedding: {max_in_flight: 2, retry_after_secs: 3}",
        ),
        &[MOCK_KEY],
    );
    let base = gw.base.clone();
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let url = format!("{base}/v1/messages");
            tokio::spawn(async move {
                client()
                    .post(url)
                    .json(&simple_request(false))
                    .send()
                    .await
                    .unwrap()
            })
        })
        .collect();
    // Two are in flight once the upstream has them.
    assert!(eventually(Duration::from_secs(5), || mock.requests().len() >= 2).await);
    // Under overload the health endpoint still answers.
    let live = client().get(gw.url("/health/live")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let (mut ok, mut shed) = (0, 0);
    for r in requests {
        let resp = r.await.unwrap();
        match resp.status().as_u16() {
            200 => ok += 1,
            529 => {
                assert_eq!(resp.headers()["retry-after"], "3");
                let err: Value = resp.json().await.unwrap();
                assert_eq!(err["error"]["type"], "overloaded_error");
                shed += 1;
            }
            other => panic!("request ended in {other}"),
        }
    }
    assert_eq!(
        ok + shed,
        8,
        "every request ended in a success or an Anthropic error"
    );
    assert!(ok >= 2 && shed >= 1, "ok {ok}, shed {shed}");
    assert_eq!(mock.requests().len(), ok);
}

#[tokio::test]
async fn background_requests_are_shed_first() {
    let mock = MockUpstream::start(|_| Reply::Delayed {
        delay: Duration::from_millis(600),
        reply: Box::new(ok_json()),
    })
    .await;
    let gw = Gateway::start(
        &config(
            mock.addr,
            "  load_shedding: {max_in_flight: 4, background_share: 0.25}",
        ),
        &[MOCK_KEY],
    );
    let url = gw.url("/v1/messages");
    let slow = tokio::spawn(async move {
        client()
            .post(url)
            .json(&simple_request(false))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(eventually(Duration::from_secs(5), || mock.requests().len() == 1).await);
    let mut haiku = simple_request(false);
    haiku["model"] = json!("claude-haiku-4-5");
    let resp = post(&gw, &haiku).await;
    assert_eq!(
        resp.status(),
        529,
        "a background request is shed while a main-loop one is in flight"
    );
    // ...while a main-loop request still gets through.
    assert_eq!(post(&gw, &simple_request(false)).await.status(), 200);
    assert_eq!(slow.await.unwrap(), 200);
}

#[tokio::test]
async fn rate_limits_per_key() {
    let mock = MockUpstream::start(|r| {
        if r.body["messages"][0]["content"] == "slow" {
            Reply::Delayed {
                delay: Duration::from_millis(700),
                reply: Box::new(ok_json()),
            }
        } else {
            ok_json()
        }
    })
    .await;
    let gw = Gateway::start(
        &config(
            mock.addr,
            "  rate_limit: {requests_per_minute: 3, max_in_flight_per_key: 1}",
        ),
        &[MOCK_KEY],
    );
    let send = |key: &'static str, text: &'static str| {
        let url = gw.url("/v1/messages");
        async move {
            let mut body = simple_request(false);
            body["messages"][0]["content"] = json!(text);
            client()
                .post(url)
                .header("x-api-key", key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    // In flight: a second concurrent request of the same key is refused.
    let first = tokio::spawn(send("key-a", "slow"));
    assert!(eventually(Duration::from_secs(5), || mock.requests().len() == 1).await);
    let resp = send("key-a", "x").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(first.await.unwrap().status(), 200);
    // Per minute: the third counted request is the last one allowed.
    assert_eq!(send("key-a", "x").await.status(), 200);
    let resp = send("key-a", "x").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "60");
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["type"], "rate_limit_error");
    // Another key is counted apart.
    assert_eq!(send("key-b", "x").await.status(), 200);
}

#[tokio::test]
async fn a_stalled_stream_ends_in_an_overloaded_error_event() {
    let mock = MockUpstream::start(|_| Reply::SseStall {
        pieces: vec![chunk(json!({"content": "thinking about it"}), None)],
        stall: Duration::from_secs(5),
    })
    .await;
    let cfg = format!("timeouts: {{read_ms: 500}}\n{}", openai_provider(mock.addr));
    let gw = Gateway::start(&cfg, &[MOCK_KEY]);
    let started = Instant::now();
    let events = sse_events(&post(&gw, &simple_request(true)).await.text().await.unwrap());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "not held for the whole stall"
    );
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["type"], "overloaded_error");
    assert!(data["error"]["message"]
        .as_str()
        .unwrap()
        .contains("stalled"));
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_upstream_request() {
    let pieces: Vec<String> = (0..100)
        .map(|i| chunk(json!({"content": format!("w{i} ")}), None))
        .collect();
    let mock = MockUpstream::start(move |_| Reply::Sse {
        pieces: pieces.clone(),
        delay: Duration::from_millis(100),
    })
    .await;
    let gw = Gateway::start(&openai_provider(mock.addr), &[MOCK_KEY]);
    let mut resp = post(&gw, &simple_request(true)).await;
    assert!(resp.chunk().await.unwrap().is_some(), "the stream started");
    drop(resp);
    // The upstream stream (10 s long) is cut within a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    while mock.aborted.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        mock.aborted.load(Ordering::SeqCst),
        1,
        "upstream stream not cancelled"
    );
}
