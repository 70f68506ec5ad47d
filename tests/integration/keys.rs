//! API keys and the usage ledger (issue 11): the built binary's `keys` and
//! `usage` commands on the same SQLite file as the running gateway, and
//! each refusal with its exact body.

use crate::common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Run `lynkr ARGS -c CONFIG`: (status, stdout, stderr).
fn lynkr(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(lynkr_bin())
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .expect("run lynkr");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `lynkr keys create --name NAME EXTRA...`: the key it prints.
fn create_key(config: &Path, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["keys", "create", "--name", name];
    args.extend_from_slice(extra);
    let (status, stdout, stderr) = lynkr(config, &args);
    assert_eq!(status, 0, "keys create failed: {stderr}");
    let key = stdout.trim().to_string();
    assert_eq!(stdout, format!("{key}\n"), "the key alone on stdout");
    key
}

fn store_yaml(dir: &Path, auth: &str, flush_ms: u64) -> String {
    format!(
        "store:\n  path: {}/lynkr.db\n  flush_ms: {flush_ms}\nauth:\n  mode: {auth}\n  refresh_ms: 100\n",
        dir.display()
    )
}

/// A gateway with a store (and `auth.mode: AUTH`), and its database file.
async fn keyed_gateway(auth: &str) -> (MockUpstream, Gateway, std::path::PathBuf) {
    let mock = MockUpstream::start(|r| {
        if r.body["stream"] == true {
            Reply::Sse {
                pieces: text_stream(&["Hel", "lo"]),
                delay: Duration::ZERO,
            }
        } else {
            ok_json()
        }
    })
    .await;
    let dir = scratch_dir("store");
    let config = format!(
        "{}{}",
        openai_provider(mock.addr),
        store_yaml(&dir, auth, 50)
    );
    let gw = Gateway::start(&config, &[MOCK_KEY]);
    (mock, gw, dir.join("lynkr.db"))
}

async fn send(
    gw: &Gateway,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = client().post(gw.url("/v1/messages")).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    )
}

fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// Poll `check` for up to `within` (a key change made by the CLI reaches
/// the server within `auth.refresh_ms`, 100 ms here).
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// `key` is refused with a 401 and `message` within the refresh interval.
async fn refused_soon(gw: &Gateway, key: &str, body: &Value, message: &str) -> bool {
    eventually(Duration::from_secs(3), || async {
        let (status, answer, _) = send(gw, &[("x-api-key", key)], body).await;
        status == 401 && answer == error_body("authentication_error", message)
    })
    .await
}

#[tokio::test]
async fn a_key_made_with_the_cli_is_used_changed_and_revoked() {
    let (mock, gw, _) = keyed_gateway("keys").await;
    let config = gw.config_path();
    let body = simple_request(false);

    // Attacks first: no key, a made-up key, a near miss, the wrong scheme.
    let (status, answer, _) = send(&gw, &[], &body).await;
    assert_eq!(status, 401);
    assert_eq!(
        answer,
        error_body(
            "authentication_error",
            "an API key is required: send it in x-api-key or Authorization: Bearer"
        )
    );
    let key = create_key(
        &config,
        "alice",
        &["--user", "al", "--models", "claude-sonnet-*"],
    );
    assert!(key.starts_with("lk-") && key.len() == 46, "{key}");
    let near_miss = format!("{}x", &key[..key.len() - 1]);
    for bad in ["lk-nothing", near_miss.as_str(), "", "sk-test-key"] {
        let (status, answer, _) = send(&gw, &[("x-api-key", bad)], &body).await;
        assert_eq!(status, 401, "{bad:?} accepted");
        let message = answer["error"]["message"].as_str().unwrap_or("");
        assert!(
            message == "invalid API key" || message.starts_with("an API key is required"),
            "{answer}"
        );
    }
    let basic = format!("Basic {key}");
    let (status, _, _) = send(&gw, &[("authorization", basic.as_str())], &body).await;
    assert_eq!(status, 401, "only the Bearer scheme carries a key");

    // The new key works within the refresh interval, as x-api-key and as Bearer.
    assert!(
        eventually(Duration::from_secs(3), || async {
            send(&gw, &[("x-api-key", key.as_str())], &body).await.0 == 200
        })
        .await,
        "the key never took effect; log:\n{}",
        gw.log()
    );
    let bearer = format!("Bearer {key}");
    let (status, _, _) = send(&gw, &[("authorization", bearer.as_str())], &body).await;
    assert_eq!(status, 200);
    // It never reaches the provider: the provider's own key goes instead.
    for r in mock.requests() {
        assert_eq!(r.header("authorization"), Some("Bearer sk-test-key"));
        assert!(
            !r.headers.iter().any(|(_, v)| v.contains(&key)),
            "{:?}",
            r.headers
        );
    }

    // A model outside the key's globs: 403.
    let mut haiku = body.clone();
    haiku["model"] = json!("claude-haiku-4-5");
    let (status, answer, _) = send(&gw, &[("x-api-key", key.as_str())], &haiku).await;
    assert_eq!(status, 403);
    assert_eq!(
        answer,
        error_body(
            "permission_error",
            "model \"claude-haiku-4-5\" is not allowed for key \"alice\""
        )
    );
    // Widened by `keys update`, it is allowed soon after.
    let (status, _, stderr) = lynkr(
        &config,
        &["keys", "update", "alice", "--models", "claude-*"],
    );
    assert_eq!(status, 0, "{stderr}");
    assert!(
        eventually(Duration::from_secs(3), || async {
            send(&gw, &[("x-api-key", key.as_str())], &haiku).await.0 == 200
        })
        .await
    );

    // Revoked: refused within the refresh interval, and listed as revoked.
    let (status, _, stderr) = lynkr(&config, &["keys", "revoke", "alice"]);
    assert_eq!(status, 0, "{stderr}");
    assert!(refused_soon(&gw, &key, &body, "this API key has been revoked").await);
    let (_, listed, _) = lynkr(&config, &["keys", "list", "--json"]);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["name"], "alice");
    assert_eq!(listed[0]["revoked"], true);
    assert_eq!(listed[0]["models"], json!(["claude-*"]));
    assert_eq!(listed[0]["user"], "al");
    assert!(
        !listed.to_string().contains(&key),
        "the list never shows a key"
    );

    // Expired: refused with its own message.
    let old = create_key(&config, "old", &["--expires", "2020-01-01"]);
    assert!(refused_soon(&gw, &old, &body, "this API key has expired").await);
    // Health and metrics stay open without a key.
    assert_eq!(
        get_json(&gw.url("/health/ready")).await["checks"]["store"]["ok"],
        true
    );
}

#[tokio::test]
async fn a_keys_own_rate_limit_answers_429_with_retry_after() {
    let (_mock, gw, _) = keyed_gateway("keys").await;
    let key = create_key(&gw.config_path(), "slow", &["--rpm", "2"]);
    let body = simple_request(false);
    assert!(
        eventually(Duration::from_secs(3), || async {
            send(&gw, &[("x-api-key", key.as_str())], &body).await.0 == 200
        })
        .await
    );
    let (status, _, _) = send(&gw, &[("x-api-key", key.as_str())], &body).await;
    assert_eq!(status, 200);
    let (status, answer, headers) = send(&gw, &[("x-api-key", key.as_str())], &body).await;
    assert_eq!(status, 429);
    assert_eq!(
        answer,
        error_body(
            "rate_limit_error",
            "rate limit: more than 2 requests per minute for this key"
        )
    );
    assert_eq!(headers.get("retry-after").unwrap(), "60");
}

/// The ledger's rows, read straight from the file.
fn ledger(db: &Path) -> Vec<Value> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT u.request_id, COALESCE(k.name, ''), u.user, u.session, u.model, u.provider,
                    u.upstream_model, u.input_tokens, u.output_tokens, u.status, u.stream,
                    u.attempts, u.route, u.cache_read_tokens
             FROM usage u LEFT JOIN keys k ON k.id = u.key_id ORDER BY u.id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok(json!({
            "request_id": r.get::<_, String>(0)?, "key": r.get::<_, String>(1)?,
            "user": r.get::<_, String>(2)?, "session": r.get::<_, String>(3)?,
            "model": r.get::<_, String>(4)?, "provider": r.get::<_, String>(5)?,
            "upstream_model": r.get::<_, String>(6)?, "input_tokens": r.get::<_, i64>(7)?,
            "output_tokens": r.get::<_, i64>(8)?, "status": r.get::<_, i64>(9)?,
            "stream": r.get::<_, bool>(10)?, "attempts": r.get::<_, i64>(11)?,
            "route": r.get::<_, String>(12)?, "cache_read_tokens": r.get::<_, i64>(13)?,
        }))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[tokio::test]
async fn the_ledger_holds_what_the_provider_reported_and_survives_shutdown() {
    let (_mock, mut gw, db) = keyed_gateway("keys").await;
    let config = gw.config_path();
    let key = create_key(&config, "bob", &["--user", "bob@example.com"]);
    let auth = [
        ("x-api-key", key.as_str()),
        ("x-claude-code-session-id", "sess-1"),
    ];
    assert!(
        eventually(Duration::from_secs(3), || async {
            send(&gw, &auth, &simple_request(false)).await.0 == 200
        })
        .await
    );
    let (_, json_answer, _) = send(&gw, &auth, &simple_request(false)).await;
    let res = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", key.as_str())
        .header("x-claude-code-session-id", "sess-1")
        .json(&simple_request(true))
        .send()
        .await
        .unwrap();
    let events = sse_events(&res.text().await.unwrap());
    let streamed_usage = &events.iter().find(|(e, _)| e == "message_delta").unwrap().1["usage"];

    // Rows are written in batches (flush_ms 50): wait for all three.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ledger(&db).len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = ledger(&db);
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in &rows {
        assert_eq!(row["key"], "bob");
        assert_eq!(row["user"], "bob@example.com");
        assert_eq!(row["session"], "sess-1");
        assert_eq!(row["model"], "claude-sonnet-4-5");
        assert_eq!(row["provider"], "mock");
        assert_eq!(row["upstream_model"], "gpt-mock");
        assert_eq!(row["route"], "default");
        assert_eq!(
            (row["status"].as_i64(), row["attempts"].as_i64()),
            (Some(200), Some(1))
        );
        assert!(row["request_id"].as_str().unwrap().starts_with("req_"));
    }
    // Input counts every prompt token, as the access log does; cache reads
    // are also kept apart (the mock reports 11 prompt tokens, 4 cached).
    let answered = &json_answer["usage"];
    assert_eq!(
        rows[1]["input_tokens"].as_u64(),
        Some(
            answered["input_tokens"].as_u64().unwrap()
                + answered["cache_read_input_tokens"].as_u64().unwrap()
        )
    );
    assert_eq!(
        rows[1]["cache_read_tokens"],
        answered["cache_read_input_tokens"]
    );
    assert_eq!(rows[1]["cache_read_tokens"], 4);
    assert_eq!(
        rows[1]["output_tokens"],
        json_answer["usage"]["output_tokens"]
    );
    assert_eq!(rows[1]["stream"], false);
    assert_eq!(rows[2]["stream"], true);
    // The stream's final usage (message_delta) is what the mock reported: 21 in.
    assert_eq!(rows[2]["input_tokens"], streamed_usage["input_tokens"]);
    assert_eq!(rows[2]["input_tokens"], 21);
    assert_eq!(rows[2]["output_tokens"], streamed_usage["output_tokens"]);
    assert_eq!(rows[2]["output_tokens"], 2);

    // `lynkr usage` sums them.
    let (status, out, stderr) = lynkr(&config, &["usage", "--by", "key", "--json"]);
    assert_eq!(status, 0, "{stderr}");
    let sums: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sums[0]["group"], "bob");
    assert_eq!(sums[0]["requests"], 3);

    // With a long flush interval, only the shutdown writes the last rows.
    drop(gw);
    let mock = MockUpstream::start(|_| ok_json()).await;
    let yaml = format!(
        "{}store:\n  path: {}\n  flush_ms: 600000\n",
        openai_provider(mock.addr),
        db.display()
    );
    gw = Gateway::start(&yaml, &[MOCK_KEY]);
    for _ in 0..5 {
        assert_eq!(send(&gw, &[], &simple_request(false)).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ledger(&db).len(),
        3,
        "nothing written before the flush interval"
    );
    gw.signal("-TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(15)).is_some(),
        "lynkr did not exit"
    );
    let rows = ledger(&db);
    assert_eq!(rows.len(), 8, "every row written at shutdown: {rows:?}");
    assert_eq!(rows[7]["key"], "", "auth off: no key");
}

#[test]
fn a_store_that_cannot_be_opened_stops_startup_with_its_reason() {
    let dir = scratch_dir("store-bad");
    let not_a_dir = dir.join("file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let garbage = dir.join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    for (path, reason) in [
        (not_a_dir.join("lynkr.db"), "unable to open database file"),
        (garbage.clone(), "file is not a database"),
    ] {
        let config = dir.join("bad.yaml");
        std::fs::write(
            &config,
            format!(
                "server: {{listen: [\"127.0.0.1:{}\"]}}\nstore: {{path: {}}}\n\
                 providers: {{m: {{base_url: \"http://127.0.0.1:9/v1\", model: x}}}}\n\
                 models: {{default: m}}\n",
                free_port(),
                path.display()
            ),
        )
        .unwrap();
        let out = Command::new(lynkr_bin())
            .arg("-c")
            .arg(&config)
            .output()
            .expect("run lynkr");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("store.path {:?}", path.display().to_string()))
                && stderr.contains(reason),
            "{stderr}"
        );
    }
    // The garbage is left as it was: nothing is overwritten.
    assert_eq!(std::fs::read(&garbage).unwrap(), vec![0x5a; 8192]);
    // keys mode without a store is a configuration error.
    let config = dir.join("nokeys.yaml");
    std::fs::write(&config, "auth: {mode: keys}\n").unwrap();
    let out = Command::new(lynkr_bin())
        .args(["check-config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("auth.mode: keys needs a store"));
}

/// An OpenAI answer that reports all of `max_completion_tokens` as output:
/// what a request spends then equals what Lynkr reserved for it.
fn spends_its_max_tokens(r: &Recorded) -> Reply {
    let max = r.body["max_completion_tokens"]
        .as_u64()
        .or(r.body["max_tokens"].as_u64())
        .unwrap_or(0);
    let mut body: Value =
        serde_json::from_str(&completion_json("fine", "stop", Value::Null)).unwrap();
    body["usage"] = json!({"prompt_tokens": 3, "completion_tokens": max, "total_tokens": 3 + max});
    Reply::Json {
        status: 200,
        body: body.to_string(),
        headers: vec![],
    }
}

#[tokio::test]
async fn five_hundred_concurrent_requests_spend_at_most_the_budget_and_exactly_n_succeed() {
    let mock = MockUpstream::start(spends_its_max_tokens).await;
    let dir = scratch_dir("budget");
    // Output at 0.5 USD a token, input free: max_tokens 2 costs 1 USD at
    // worst and in fact, so a budget of 37 USD admits exactly 37.
    let provider = openai_provider(mock.addr).replace(
        "    model: gpt-mock\n",
        "    model: gpt-mock\n    pricing: {input_per_million: 0, output_per_million: 500000}\n",
    );
    let config = format!(
        "{provider}{}resilience:\n  load_shedding: {{max_in_flight: 4096}}\n",
        store_yaml(&dir, "keys", 50)
    );
    let gw = Gateway::start(&config, &[MOCK_KEY]);
    let key = create_key(
        &gw.config_path(),
        "ci",
        &["--user", "ana", "--budget-usd", "37", "--period", "day"],
    );
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 2,
                      "messages": [{"role": "user", "content": "hi"}]});
    // The server knows the key once count_tokens (which spends nothing) takes it.
    assert!(
        eventually(Duration::from_secs(3), || async {
            let res = client()
                .post(gw.url("/v1/messages/count_tokens"))
                .header("x-api-key", &key)
                .json(&body)
                .send()
                .await
                .unwrap();
            res.status() == 200
        })
        .await
    );
    let answers = futures_util::future::join_all((0..500).map(|_| {
        let (gw, key, body) = (&gw, key.as_str(), &body);
        async move { send(gw, &[("x-api-key", key)], body).await }
    }))
    .await;
    let ok = answers.iter().filter(|(s, _, _)| *s == 200).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 402).collect();
    assert_eq!(
        ok,
        37,
        "statuses: {:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    let others: Vec<_> = answers
        .iter()
        .filter(|(s, _, _)| !matches!(*s, 200 | 402))
        .map(|(s, b, _)| (s, b))
        .take(3)
        .collect();
    assert_eq!(
        refused.len(),
        500 - 37,
        "every request ends in success or 402: {others:?}"
    );
    let (_, body402, headers) = refused[0];
    assert_eq!(body402["type"], "error");
    assert_eq!(body402["error"]["type"], "billing_error");
    let message = body402["error"]["message"].as_str().unwrap();
    let tomorrow = lynkr::util::date::format_utc(
        lynkr::util::date::start_of_day(lynkr::store::keys::now_secs()) + 86_400,
    );
    assert!(
        message.starts_with("budget exhausted: key \"ci\" usd/day allows 37.0000 USD, ")
            && message
                .contains("reserved by requests in flight; this request could need 1.0000 USD; "),
        "{message}"
    );
    assert!(
        message.ends_with(&format!("it resets at {tomorrow}")),
        "{message}"
    );
    assert_eq!(headers["x-should-retry"], "false");
    // The ledger: 37 rows of 1 USD, nothing lost; the CLI shows the spend.
    let db = dir.join("lynkr.db");
    assert!(
        eventually(Duration::from_secs(5), || async {
            ledger(&db).iter().filter(|r| r["status"] == 200).count() == 37
        })
        .await,
        "the ledger holds the 37 answered requests"
    );
    let (status, stdout, stderr) = lynkr(&gw.config_path(), &["budgets", "list", "--json"]);
    assert_eq!(status, 0, "{stderr}");
    let list: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list[0]["subject"], "ci");
    assert_eq!(list[0]["limit"], 37.0);
    assert_eq!(list[0]["spent"], 37.0);
    // Raised by the CLI: the running gateway admits again within refresh_ms.
    let (status, _, stderr) = lynkr(
        &gw.config_path(),
        &[
            "budgets", "set", "--key", "ci", "--usd", "38", "--period", "day",
        ],
    );
    assert_eq!(status, 0, "{stderr}");
    assert!(
        eventually(Duration::from_secs(3), || async {
            send(&gw, &[("x-api-key", &key)], &body).await.0 == 200
        })
        .await
    );
    assert_eq!(send(&gw, &[("x-api-key", &key)], &body).await.0, 402);
    // A user budget of requests applies to every key of the user.
    let (status, _, stderr) = lynkr(
        &gw.config_path(),
        &["budgets", "set", "--user", "ana", "--requests", "0"],
    );
    assert_eq!(status, 0, "{stderr}");
    let other = create_key(&gw.config_path(), "ci-2", &["--user", "ana"]);
    assert!(
        eventually(Duration::from_secs(3), || async {
            let (s, b, _) = send(&gw, &[("x-api-key", &other)], &body).await;
            s == 402
                && b["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("user \"ana\" requests/month")
        })
        .await
    );
    let metrics = client()
        .get(gw.url("/metrics/prometheus"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("http_requests_rejected_total{reason=\"budget\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("budget_reservations_in_flight 0"),
        "{metrics}"
    );
    drop(mock);
}
