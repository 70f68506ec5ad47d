//! The per-request middleware: load-shedding check and admission, the
//! rate-limit check, the circuit-breaker permit and its settlement, and the metrics
//! update (counters, histograms, token and cost counters, JSON summary);
//! and the same with `auth.mode: keys`: the presented key hashed and looked
//! up among 1,000 keys, and its model allowlist checked.
//! `cargo bench --bench middleware`; figures are recorded in the README.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use lynkr::config::{BreakerConfig, RateLimitConfig, SheddingConfig};
use lynkr::metrics::{Finished, Metrics, Upstream};
use lynkr::resilience::breaker::Breaker;
use lynkr::resilience::rate_limit::RateLimiter;
use lynkr::resilience::shedder::Shedder;

fn middleware(c: &mut Criterion) {
    let shedder = Shedder::new(&SheddingConfig {
        max_in_flight: 1024,
        // Memory check on: RSS is sampled at most every 250 ms.
        max_memory: 0.9,
        ..Default::default()
    });
    let limiter = RateLimiter::new(&RateLimitConfig {
        requests_per_minute: u64::MAX / 2,
        max_in_flight_per_key: 1_000_000,
        tokens_per_minute: 0,
    });
    let breaker = Breaker::new(&BreakerConfig::default());
    let metrics = Metrics::new();
    let key = "key:5f1c2a9e0b7d4c3a";
    c.bench_function("per_request_middleware", |b| {
        b.iter(|| {
            shedder.check().unwrap();
            let slot = shedder.admit().unwrap();
            let guard = limiter.check(black_box(key), (None, None)).unwrap();
            breaker.permit().unwrap().success();
            metrics.record(black_box(&Finished {
                path: "/v1/messages",
                status: 200,
                error_type: None,
                rejected: None,
                duration_secs: 1.25,
                upstream: Some(Upstream {
                    route: "default",
                    provider: "openai",
                    model: "gpt-4o",
                    attempts: 1,
                    first_byte_secs: Some(0.4),
                    input_tokens: 21_000,
                    output_tokens: 350,
                    cost: 0.0683,
                }),
            }));
            drop((guard, slot));
        })
    });
}

/// The key check alone, as `Gateway::authenticate` and `check_model` do it.
fn key_check(c: &mut Criterion) {
    use lynkr::store::keys::{self, KeySpec};
    let dir = std::env::temp_dir().join(format!("lynkr-bench-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conn = lynkr::store::open(dir.join("keys.db").to_str().unwrap()).unwrap();
    let spec = KeySpec {
        models: Some(vec!["claude-*".into()]),
        ..KeySpec::default()
    };
    let mut secret = String::new();
    for i in 0..1000 {
        secret = keys::create(&conn, &format!("k{i}"), &spec).unwrap().1;
    }
    let table = keys::load_table(&conn).unwrap();
    let now = keys::now_secs();
    c.bench_function("key_check_among_1000", |b| {
        b.iter(|| {
            let key = table.check(Some(black_box(&secret)), now).unwrap();
            assert!(key.allows_model(black_box("claude-sonnet-4-5")));
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// A request's budget reservation and its settlement, against a key with
/// budgets of its own, its user's and its team's (three budgets, each a
/// lock and an add), among 3,000 budgets.
fn budget_reserve_settle(c: &mut Criterion) {
    use lynkr::store::budgets::{Budget, BudgetBook, Charges, Metric, Period, Scope};
    use lynkr::store::keys::ApiKey;
    let mut budgets = Vec::new();
    for i in 0..1000i64 {
        for (j, (scope, subject, metric)) in [
            (Scope::Key, format!("k{i}"), Metric::Usd),
            (Scope::User, format!("u{i}"), Metric::Tokens),
            (Scope::Team, format!("t{i}"), Metric::Requests),
        ]
        .into_iter()
        .enumerate()
        {
            budgets.push(Budget {
                id: i * 3 + j as i64,
                scope,
                subject,
                metric,
                period: Period::Month,
                hard: 1e18,
                soft: Some(1e17),
            });
        }
    }
    let book = BudgetBook::build(
        budgets,
        None,
        |_, _| 0.0,
        &Default::default(),
        1_796_209_697,
    );
    let key = ApiKey {
        id: 7,
        name: "k7".into(),
        user: "u7".into(),
        team: Some("t7".into()),
        models: Vec::new(),
        rpm: None,
        max_in_flight: None,
        tpm: None,
        expires_at: None,
        disabled: false,
        prefix: "lk-".into(),
        created_at: 0,
    };
    let worst = Charges {
        usd: 0.2,
        tokens: 40_000.0,
        requests: 1.0,
    };
    let now = lynkr::store::keys::now_secs();
    c.bench_function("budget_reserve_and_settle_3_budgets", |b| {
        b.iter(|| {
            let held = book.reserve(black_box(&key), worst, now).unwrap();
            black_box(held.settle(worst, now));
        })
    });
}

criterion_group!(benches, middleware, key_check, budget_reserve_settle);
criterion_main!(benches);
