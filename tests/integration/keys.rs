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

#[tokio::test]
async fn a_keys_tokens_per_minute_count_the_estimate_then_the_answer() {
    let (_mock, gw, _) = keyed_gateway("keys").await;
    let config = gw.config_path();
    let body = simple_request(false);
    // The estimate Lynkr takes at admission: count_tokens uses the same one.
    let probe = create_key(&config, "probe", &[]);
    let estimate = eventually_ok_estimate(&gw, &probe, &body).await;
    let (status, answer, _) = send(&gw, &[("x-api-key", probe.as_str())], &body).await;
    assert_eq!(status, 200);
    let u = &answer["usage"];
    let reported = u["input_tokens"].as_u64().unwrap()
        + u["cache_read_input_tokens"].as_u64().unwrap_or(0)
        + u["output_tokens"].as_u64().unwrap();
    let per_request = reported.max(estimate);
    // Room for two requests and not a third's estimate.
    let tpm = 2 * per_request + estimate - 1;
    let key = create_key(&config, "tokens", &["--tpm", &tpm.to_string()]);
    assert!(
        eventually(Duration::from_secs(3), || async {
            send(&gw, &[("x-api-key", key.as_str())], &body).await.0 == 200
        })
        .await
    );
    assert_eq!(
        send(&gw, &[("x-api-key", key.as_str())], &body).await.0,
        200
    );
    let (status, answer, headers) = send(&gw, &[("x-api-key", key.as_str())], &body).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(
        answer,
        error_body(
            "rate_limit_error",
            &format!("rate limit: more than {tpm} tokens per minute for this key")
        )
    );
    assert_eq!(headers["retry-after"], "60");
    // A request that no wait would let through: 413, not to be retried.
    let small = create_key(&config, "small", &["--tpm", &(estimate - 1).to_string()]);
    assert!(
        eventually(Duration::from_secs(3), || async {
            send(&gw, &[("x-api-key", small.as_str())], &body).await.0 == 413
        })
        .await
    );
    let (_, answer, headers) = send(&gw, &[("x-api-key", small.as_str())], &body).await;
    assert_eq!(
        answer,
        error_body(
            "request_too_large",
            &format!(
                "this request's estimated {estimate} input tokens exceed the {} tokens per minute its key may use",
                estimate - 1
            )
        )
    );
    assert_eq!(headers["x-should-retry"], "false");
    // One 429 and two 413s (counted as each request is logged, just after
    // its answer is sent).
    let wanted = "http_requests_rejected_total{reason=\"rate_limit_tokens\"} 3";
    assert!(
        eventually(Duration::from_secs(3), || async {
            get_text(&gw.url("/metrics/prometheus"))
                .await
                .contains(wanted)
        })
        .await,
        "{}",
        get_text(&gw.url("/metrics/prometheus")).await
    );
}

/// The input estimate of `body`, once the server knows `key`.
async fn eventually_ok_estimate(gw: &Gateway, key: &str, body: &Value) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let res = client()
            .post(gw.url("/v1/messages/count_tokens"))
            .header("x-api-key", key)
            .json(body)
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            let v: Value = res.json().await.unwrap();
            return v["input_tokens"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "the key never took effect");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---- the admin API -----------------------------------------------------------

const ADMIN_KEY: &str = "admin-test-key-5f1c2a9e0b7d4c3a";

/// A keyed gateway with an admin listener and `LYNKR_ADMIN_KEY`; the
/// admin listener's base URL.
async fn admin_gateway(
    admin_key: Option<&str>,
) -> (MockUpstream, Gateway, String, std::path::PathBuf) {
    let mock = MockUpstream::start(|_| ok_json()).await;
    let dir = scratch_dir("admin");
    let admin_port = free_port();
    let server = format!(
        "  admin_listen: \"127.0.0.1:{admin_port}\"\n  grace_period_seconds: 1\n  graceful_shutdown_timeout_seconds: 1\n"
    );
    let config = format!(
        "{}{}",
        openai_provider(mock.addr),
        store_yaml(&dir, "keys", 50)
    );
    let mut env = vec![MOCK_KEY];
    if let Some(k) = admin_key {
        env.push(("LYNKR_ADMIN_KEY", k));
    }
    let gw = Gateway::start_with_server(&server, &config, &env);
    let base = format!("http://127.0.0.1:{admin_port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_err() {
        assert!(Instant::now() < deadline, "no admin listener");
        std::thread::sleep(Duration::from_millis(25));
    }
    (mock, gw, base, dir.join("lynkr.db"))
}

/// One admin call: (status, JSON answer).
async fn admin(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client().request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn the_admin_api_makes_uses_changes_and_revokes_keys_and_reports_spend() {
    let (_mock, gw, base, _) = admin_gateway(Some(ADMIN_KEY)).await;
    let token = Some(ADMIN_KEY);

    // Attacks: no token, a wrong one, a near miss, the API key scheme, and
    // the public listener (which never serves /admin, token or not).
    let needs = error_body(
        "authentication_error",
        "the admin API needs Authorization: Bearer $LYNKR_ADMIN_KEY",
    );
    let near_miss = &ADMIN_KEY[..ADMIN_KEY.len() - 1];
    for bad in [None, Some("wrong"), Some(near_miss), Some("")] {
        assert_eq!(
            admin(&base, "GET", "/admin/keys", bad, None).await,
            (401, needs.clone()),
            "{bad:?}"
        );
    }
    let res = client()
        .get(format!("{base}/admin/keys"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "only the Bearer header carries it");
    let (status, _) = admin(&gw.base, "GET", "/admin/keys", token, None).await;
    assert_eq!(status, 404, "never on the public listener");

    // Make a key with a budget of three requests a day.
    let (status, made) = admin(
        &base,
        "POST",
        "/admin/keys",
        token,
        Some(
            json!({"name": "ana", "user": "ana@example.com", "team": "ml",
                    "models": ["claude-sonnet-*"], "rpm": 100,
                    "budgets": [{"metric": "requests", "limit": 3, "period": "day"}]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let key = made["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("lk-") && key.len() == 46, "{made}");
    assert_eq!(made["api_key"]["name"], "ana");
    assert_eq!(made["api_key"]["team"], "ml");
    assert_eq!(made["api_key"]["rpm"], 100);
    assert_eq!(made["budgets"][0]["metric"], "requests");
    assert_eq!(made["budgets"][0]["limit"], 3.0);
    let budget_id = made["budgets"][0]["id"].as_i64().unwrap();

    // What is wrong is said, and nothing is made.
    for (body, status, needle) in [
        (json!({"name": "ana"}), 409, "already exists"),
        (json!({"name": "a b"}), 400, "key name"),
        (
            json!({"name": "x", "colour": 1}),
            400,
            "unknown field `colour`",
        ),
        (json!({"name": "x", "rpm": -1}), 400, "invalid value"),
        (
            json!({"name": "x", "expires_at": "tomorrow"}),
            400,
            "expires_at",
        ),
        (
            json!({"name": "x", "budgets": [{"metric": "requests", "limit": 1.5}]}),
            400,
            "whole numbers",
        ),
        (
            json!({"name": "x", "budgets": [{"metric": "euros", "limit": 1}]}),
            400,
            "euros",
        ),
    ] {
        let (got, answer) = admin(&base, "POST", "/admin/keys", token, Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["type"], "error");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let (_, listed) = admin(&base, "GET", "/admin/keys", token, None).await;
    let names: Vec<_> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("ana")], "a refused create makes nothing");
    assert!(
        !listed.to_string().contains(&key),
        "the list never shows a key"
    );

    // The key works at once (an admin change reloads the table), three
    // times; the fourth is over the budget.
    let auth = [
        ("x-api-key", key.as_str()),
        ("x-claude-code-session-id", "sess-admin"),
    ];
    let mut answers = Vec::new();
    for _ in 0..3 {
        let (status, answer, _) = send(&gw, &auth, &simple_request(false)).await;
        assert_eq!(status, 200, "{answer}");
        answers.push(answer);
    }
    let (status, answer, _) = send(&gw, &auth, &simple_request(false)).await;
    assert_eq!(status, 402, "{answer}");

    // Spend, usage and the session, from the ledger (an admin call writes
    // the rows waiting for their batch first; a request hands its row over
    // just after its answer is sent).
    assert!(
        eventually(Duration::from_secs(3), || async {
            let (_, u) = admin(&base, "GET", "/admin/usage?by=key", token, None).await;
            u["groups"][0]["requests"] == 4
        })
        .await
    );
    let (status, listed) = admin(&base, "GET", "/admin/budgets", token, None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["budgets"][0]["spent"], 3.0, "{listed}");
    assert_eq!(listed["budgets"][0]["reserved"], 0.0);
    let (_, one) = admin(&base, "GET", "/admin/keys/ana", token, None).await;
    assert_eq!(one["budgets"][0]["spent"], 3.0, "{one}");
    let (status, usage) = admin(&base, "GET", "/admin/usage?by=key&key=ana", token, None).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["by"], "key");
    assert_eq!(usage["groups"][0]["group"], "ana");
    assert_eq!(usage["groups"][0]["requests"], 4);
    assert_eq!(usage["groups"][0]["errors"], 1);
    let (status, _) = admin(&base, "GET", "/admin/usage?by=colour", token, None).await;
    assert_eq!(status, 400);
    let (status, session) = admin(&base, "GET", "/admin/sessions/sess-admin", token, None).await;
    assert_eq!(status, 200, "{session}");
    let reported = |field: &str| -> u64 {
        answers
            .iter()
            .map(|a| a["usage"][field].as_u64().unwrap_or(0))
            .sum()
    };
    let totals = &session["totals"];
    assert_eq!(totals["requests"], 4);
    assert_eq!(totals["errors"], 1);
    assert_eq!(
        totals["input_tokens"].as_u64().unwrap(),
        reported("input_tokens") + reported("cache_read_input_tokens")
    );
    assert_eq!(
        totals["output_tokens"].as_u64().unwrap(),
        reported("output_tokens")
    );
    let rows = session["requests"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3]["status"], 402);
    assert_eq!(rows[0]["key"], "ana");
    assert_eq!(rows[0]["team"], "ml");
    assert_eq!(rows[0]["upstream_model"], "gpt-mock");
    let (status, _) = admin(&base, "GET", "/admin/sessions/nobody", token, None).await;
    assert_eq!(status, 404);

    // Raise the budget; change the key; then revoke it.
    let (status, raised) = admin(
        &base,
        "POST",
        "/admin/budgets",
        token,
        Some(
            json!({"scope": "key", "subject": "ana", "metric": "requests",
                    "limit": 4, "period": "day"}),
        ),
    )
    .await;
    assert_eq!((status, raised["id"].as_i64()), (200, Some(budget_id)));
    assert_eq!(send(&gw, &auth, &simple_request(false)).await.0, 200);
    let mut haiku = simple_request(false);
    haiku["model"] = json!("claude-haiku-4-5");
    assert_eq!(send(&gw, &auth, &haiku).await.0, 403);
    let (status, changed) = admin(
        &base,
        "PATCH",
        "/admin/keys/ana",
        token,
        Some(json!({"models": ["claude-*"], "tpm": 100000})),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["models"], json!(["claude-*"]));
    assert_eq!(changed["tpm"], 100000);
    assert_eq!(changed["rpm"], 100, "what the body does not name stays");
    let (status, _) = admin(
        &base,
        "DELETE",
        &format!("/admin/budgets/{budget_id}"),
        token,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = admin(
        &base,
        "DELETE",
        &format!("/admin/budgets/{budget_id}"),
        token,
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(send(&gw, &auth, &haiku).await.0, 200);
    let (status, _) = admin(&base, "PATCH", "/admin/keys/nobody", token, Some(json!({}))).await;
    assert_eq!(status, 404);
    let (status, revoked) = admin(&base, "DELETE", "/admin/keys/ana", token, None).await;
    assert_eq!(status, 200, "{revoked}");
    let (status, answer, _) = send(&gw, &auth, &simple_request(false)).await;
    assert_eq!(
        (status, answer),
        (
            401,
            error_body("authentication_error", "this API key has been revoked")
        ),
        "revoked at once"
    );
    // Expired, made through the API.
    let (_, old) = admin(
        &base,
        "POST",
        "/admin/keys",
        token,
        Some(json!({"name": "old", "expires_at": "2020-01-01T00:00:00Z"})),
    )
    .await;
    let old = old["key"].as_str().unwrap();
    let (status, answer, _) = send(&gw, &[("x-api-key", old)], &simple_request(false)).await;
    assert_eq!(
        (status, answer),
        (
            401,
            error_body("authentication_error", "this API key has expired")
        )
    );
    let (status, _) = admin(&base, "GET", "/admin/nothing", token, None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_admin_api_is_off_without_a_key_and_refuses_a_short_one() {
    let (_mock, _gw, base, _) = admin_gateway(None).await;
    assert_eq!(
        admin(
            &base,
            "GET",
            "/admin/keys",
            Some("anything-at-all-long"),
            None
        )
        .await,
        (
            403,
            error_body(
                "permission_error",
                "the admin API is off: set LYNKR_ADMIN_KEY and restart"
            )
        )
    );
    // Too short to be safe: startup stops with the reason.
    let dir = scratch_dir("admin-short");
    let config = dir.join("lynkr.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{listen: [\"127.0.0.1:{}\"]}}\n\
             providers: {{m: {{base_url: \"http://127.0.0.1:9/v1\", model: x}}}}\n\
             models: {{default: m}}\n",
            free_port()
        ),
    )
    .unwrap();
    let out = Command::new(lynkr_bin())
        .arg("-c")
        .arg(&config)
        .env("LYNKR_ADMIN_KEY", "short")
        .output()
        .expect("run lynkr");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("LYNKR_ADMIN_KEY must be at least 16 characters"),
        "{stderr}"
    );
}

// ---- restart and upgrade -----------------------------------------------------

/// Four clients, each sending a request every 100 ms until `stop` (and at
/// most 600 each): every status they got.
fn budgeted_load(
    base: &str,
    key: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<u16>>> {
    (0..4)
        .map(|_| {
            let (base, key, stop) = (base.to_string(), key.to_string(), stop.clone());
            tokio::spawn(async move {
                let c = client();
                let mut statuses = Vec::new();
                for _ in 0..600 {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let r = c
                        .post(format!("{base}/v1/messages"))
                        .header("x-api-key", &key)
                        .json(&simple_request(false))
                        .send()
                        .await;
                    statuses.push(match r {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            let _ = r.bytes().await;
                            s
                        }
                        Err(_) => 0,
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                statuses
            })
        })
        .collect()
}

/// Requests a budget allows across a `-u` upgrade (both processes serve
/// for a while, sharing the file) and then a restart: exactly the budget
/// is admitted, every request ends in 200 or 402, and each has its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_holds_across_an_upgrade_under_load_and_a_restart() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const BUDGET: usize = 400;
    let mock = MockUpstream::start(|_| Reply::Delayed {
        delay: Duration::from_millis(30),
        reply: Box::new(ok_json()),
    })
    .await;
    let dir = scratch_dir("budget-upgrade");
    let server = "  grace_period_seconds: 5\n  graceful_shutdown_timeout_seconds: 2\n";
    let config = format!(
        "{}{}",
        openai_provider(mock.addr),
        store_yaml(&dir, "keys", 50)
    );
    let mut old = Gateway::start_with_server(server, &config, &[MOCK_KEY]);
    let key = create_key(
        &old.config_path(),
        "ci",
        &["--budget-requests", &BUDGET.to_string(), "--period", "day"],
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            let res = client()
                .post(old.url("/v1/messages/count_tokens"))
                .header("x-api-key", &key)
                .json(&simple_request(false))
                .send()
                .await
                .unwrap();
            res.status() == 200
        })
        .await
    );
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let load = budgeted_load(&old.base, &key, stop.clone());
    // The new process starts (and reads the budget) a second before the
    // handoff: what the old one admits meanwhile is counted by the new one
    // from the ledger and the old one's holds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let new = old.start_upgrade(&[MOCK_KEY]);
    assert!(new.log_contains("Bootstrap starting"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    old.signal("-QUIT");
    // Until the budget refuses for a while (bounded: 60 s).
    let db = dir.join("lynkr.db");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let refused = ledger(&db).iter().filter(|r| r["status"] == 402).count();
        if refused >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut statuses = Vec::new();
    for l in load {
        statuses.extend(l.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    let others: Vec<_> = statuses
        .iter()
        .filter(|s| !matches!(**s, 200 | 402))
        .collect();
    assert!(others.is_empty(), "only 200 and 402: {others:?}");
    assert_eq!(
        ok,
        BUDGET,
        "exactly the budget is admitted across the upgrade ({refused} refused)\nold:\n{}\nnew:\n{}",
        old.log(),
        new.log()
    );
    assert!(
        old.wait_exit(Duration::from_secs(20))
            .is_some_and(|s| s.success()),
        "the old process exits cleanly"
    );
    assert!(old.log().contains("store: every usage row written"));
    // Every request has its row: both processes wrote to the one file.
    assert!(
        eventually(Duration::from_secs(5), || async {
            ledger(&db).len() == statuses.len()
        })
        .await,
        "rows {} for {} requests",
        ledger(&db).len(),
        statuses.len()
    );
    let rows = ledger(&db);
    assert_eq!(rows.iter().filter(|r| r["status"] == 200).count(), BUDGET);

    // A restart starts from the ledger: still exhausted.
    let mut new = new;
    new.signal("-TERM");
    assert!(new.wait_exit(Duration::from_secs(20)).is_some());
    let again = Gateway::start_with_server(server, &config, &[MOCK_KEY]);
    let (status, answer, _) = send(
        &again,
        &[("x-api-key", key.as_str())],
        &simple_request(false),
    )
    .await;
    assert_eq!(status, 402, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "allows {BUDGET} requests, {BUDGET} requests spent"
        )),
        "{message}"
    );
    let (_, listed, _) = lynkr(&again.config_path(), &["budgets", "list", "--json"]);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["spent"], BUDGET as f64);
}

// ---- a full disk ---------------------------------------------------------------

/// A small tmpfs (CI runs as root), unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = scratch_dir("tmpfs");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir)
    }

    /// Write zeros until the disk refuses more.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![0u8; 4096];
        for _ in 0..1_000_000 {
            if f.write_all(&block).and_then(|()| f.sync_all()).is_err() {
                return;
            }
        }
        panic!("the tmpfs never filled");
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Send requests (at most 300, 25 ms apart) until one answers `wanted`;
/// every status seen, that one last.
async fn until_status(gw: &Gateway, wanted: u16) -> Vec<u16> {
    let mut seen = Vec::new();
    for _ in 0..300 {
        let (status, _, _) = send(gw, &[], &simple_request(false)).await;
        seen.push(status);
        if status == wanted {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never {wanted}: {seen:?}\n{}", gw.log());
}

/// With the disk full, requests are refused with a clear 503 (or, with
/// `store.fail_open`, served and their rows kept); once there is room,
/// every served request's row is written: none is silently unbilled.
#[tokio::test]
async fn a_full_disk_refuses_requests_or_serves_them_with_fail_open_and_loses_no_row() {
    let disk = SmallDisk::mount("2m");
    let mock = MockUpstream::start(|_| ok_json()).await;
    let db = disk.0.join("lynkr.db");
    for fail_open in [false, true] {
        let config = format!(
            "{}store:\n  path: {}\n  flush_ms: 50\n  fail_open: {fail_open}\n",
            openai_provider(mock.addr),
            db.display()
        );
        let gw = Gateway::start(&config, &[MOCK_KEY]);
        let before = ledger(&db).len();
        for _ in 0..3 {
            assert_eq!(send(&gw, &[], &simple_request(false)).await.0, 200);
        }
        disk.fill();
        let served_while_full;
        if fail_open {
            // Served all along; the store reports it is failing.
            let mut served = 0;
            for _ in 0..40 {
                assert_eq!(send(&gw, &[], &simple_request(false)).await.0, 200);
                served += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let ready = get_json(&gw.url("/health/ready")).await;
            let store = &ready["checks"]["store"];
            assert_eq!(ready["status"], "ok", "{ready}");
            assert!(
                store["error"].as_str().unwrap_or("").contains("full"),
                "{ready}"
            );
            assert!(store["buffered_rows"].as_u64().unwrap() > 0, "{ready}");
            served_while_full = served;
        } else {
            let seen = until_status(&gw, 503).await;
            served_while_full = seen.iter().filter(|s| **s == 200).count();
            assert!(seen[..seen.len() - 1].iter().all(|s| *s == 200), "{seen:?}");
            let (status, answer, headers) = send(&gw, &[], &simple_request(false)).await;
            assert_eq!(status, 503);
            assert_eq!(
                answer,
                error_body(
                    "api_error",
                    "usage cannot be recorded (cannot write usage rows: database or disk is full); \
                     requests are refused until it can"
                )
            );
            assert_eq!(headers["retry-after"], "5");
            let ready = client().get(gw.url("/health/ready")).send().await.unwrap();
            assert_eq!(ready.status(), 503);
        }
        disk.free();
        let seen = until_status(&gw, 200).await;
        let served_after = seen.iter().filter(|s| **s == 200).count();
        let expected = before + 3 + served_while_full + served_after;
        assert!(
            eventually(Duration::from_secs(5), || async {
                ledger(&db).len() == expected
            })
            .await,
            "fail_open {fail_open}: {} rows for {expected} served requests",
            ledger(&db).len()
        );
        assert!(gw.log_contains("store: usage rows are written again"));
    }
}
