//! The store on real SQLite files in a scratch directory.

use super::keys::{self, KeySpec, Refused};
use super::usage::{self, Filter, GroupBy, UsageRow};
use super::*;

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lynkr-store-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("lynkr.db")
}

fn config(path: &std::path::Path, flush_ms: u64) -> StoreConfig {
    StoreConfig {
        path: path.display().to_string(),
        flush_ms,
        ..StoreConfig::default()
    }
}

fn row(request_id: &str, key_id: Option<i64>, model: &str, input: u64) -> UsageRow {
    UsageRow {
        at_ms: now_ms(),
        request_id: request_id.into(),
        key_id,
        model: model.into(),
        input_tokens: input,
        output_tokens: 1,
        cost: 0.5,
        status: 200,
        attempts: 1,
        ..UsageRow::default()
    }
}

/// Make the store's own connection read-only (or writable again): its
/// writes then fail as they would on a full disk.
async fn set_query_only(store: &Store, on: bool) {
    store
        .call(Duration::from_secs(5), move |c| {
            c.pragma_update(None, "query_only", on)
        })
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn keys_are_46_characters_of_base62_and_never_repeat() {
    let a = keys::generate().unwrap();
    let b = keys::generate().unwrap();
    assert_ne!(a, b);
    for k in [&a, &b] {
        assert_eq!(k.len(), 46, "{k}");
        assert!(k.starts_with("lk-"));
        assert!(k[3..].bytes().all(|c| c.is_ascii_alphanumeric()), "{k}");
    }
    assert_ne!(keys::hash(&a), keys::hash(&b));
}

#[test]
fn a_presented_key_is_refused_for_each_reason() {
    let path = scratch("refuse");
    let conn = open(path.to_str().unwrap()).unwrap();
    let (_, good) = keys::create(&conn, "good", &KeySpec::default()).unwrap();
    let (_, gone) = keys::create(&conn, "gone", &KeySpec::default()).unwrap();
    keys::revoke(&conn, "gone").unwrap();
    let expiring = KeySpec {
        expires_at: Some(keys::now_secs() + 60),
        ..KeySpec::default()
    };
    let (_, soon) = keys::create(&conn, "soon", &expiring).unwrap();
    let table = keys::load_table(&conn).unwrap();
    let now = keys::now_secs();
    assert_eq!(table.check(Some(&good), now).unwrap().name, "good");
    assert_eq!(table.check(None, now).unwrap_err(), Refused::Missing);
    assert_eq!(table.check(Some(&gone), now).unwrap_err(), Refused::Revoked);
    assert_eq!(table.check(Some(&soon), now).unwrap().name, "soon");
    assert_eq!(
        table.check(Some(&soon), now + 60).unwrap_err(),
        Refused::Expired
    );
    // Attacks: the stored hash presented as a key, a prefix, the key with
    // one character changed, upper-cased, empty.
    let stored: Vec<u8> = conn
        .query_row("SELECT hash FROM keys WHERE name = 'good'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let hex: String = stored.iter().map(|b| format!("{b:02x}")).collect();
    let mut flipped = good.clone().into_bytes();
    flipped[10] = if flipped[10] == b'a' { b'b' } else { b'a' };
    for bad in [
        hex,
        good[..20].to_string(),
        String::from_utf8(flipped).unwrap(),
        good.to_uppercase(),
        String::new(),
    ] {
        assert_eq!(
            table.check(Some(&bad), now).unwrap_err(),
            Refused::Unknown,
            "{bad:?}"
        );
    }
    // Nothing but the hash is stored: the secret is nowhere in the file.
    drop(conn);
    let bytes = std::fs::read(&path).unwrap();
    let wal = std::fs::read(path.with_extension("db-wal")).unwrap_or_default();
    for secret in [&good, &gone, &soon] {
        let needle = &secret.as_bytes()[3..];
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        assert!(!wal.windows(needle.len()).any(|w| w == needle));
    }
}

#[test]
fn names_are_checked_and_unique() {
    let conn = open(scratch("names").to_str().unwrap()).unwrap();
    for bad in ["", "has space", "semi;colon", &"x".repeat(65)] {
        assert!(
            keys::create(&conn, bad, &KeySpec::default()).is_err(),
            "{bad:?}"
        );
    }
    keys::create(&conn, "ci-bot", &KeySpec::default()).unwrap();
    let again = keys::create(&conn, "ci-bot", &KeySpec::default()).unwrap_err();
    assert!(again.contains("already exists"), "{again}");
    assert!(keys::revoke(&conn, "nobody")
        .unwrap_err()
        .contains("no key named"));
    assert!(keys::update(&conn, "nobody", &KeySpec::default()).is_err());
}

#[test]
fn update_changes_only_what_it_names() {
    let conn = open(scratch("update").to_str().unwrap()).unwrap();
    let spec = KeySpec {
        user: Some("al".into()),
        models: Some(vec!["claude-*".into()]),
        rpm: Some(10),
        ..KeySpec::default()
    };
    keys::create(&conn, "k", &spec).unwrap();
    let k = keys::update(
        &conn,
        "k",
        &KeySpec {
            team: Some("core".into()),
            ..KeySpec::default()
        },
    )
    .unwrap();
    assert_eq!(
        (k.user.as_str(), k.team.as_deref(), k.rpm),
        ("al", Some("core"), Some(10))
    );
    assert!(k.allows_model("claude-opus-4") && !k.allows_model("gpt-4o"));
}

#[test]
fn migrations_run_once_and_a_newer_file_is_refused() {
    let path = scratch("migrate");
    let mut conn = open(path.to_str().unwrap()).unwrap();
    let version = |c: &rusqlite::Connection| -> u32 {
        c.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(version(&conn), schema::CURRENT);
    schema::migrate(&mut conn).unwrap();
    assert_eq!(version(&conn), schema::CURRENT);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.pragma_update(None, "user_version", schema::CURRENT + 1)
        .unwrap();
    drop(conn);
    let e = open(path.to_str().unwrap()).unwrap_err();
    assert!(e.contains("newer than this build"), "{e}");
}

#[tokio::test]
async fn rows_that_cannot_be_written_are_kept_until_they_can() {
    let path = scratch("keep");
    let store = Store::start(&config(&path, 20), Duration::from_millis(50)).unwrap();
    let count = |p: &std::path::Path| -> i64 {
        rusqlite::Connection::open(p)
            .unwrap()
            .query_row("SELECT count(*) FROM usage", [], |r| r.get(0))
            .unwrap()
    };
    store.record(row("a", None, "m", 1), Default::default());
    store.flush(Duration::from_secs(5)).await.unwrap();
    assert_eq!(count(&path), 1);
    assert!(store.check(Duration::from_secs(5)).await.is_ok());

    // The store's own connection turns read-only: writes fail as on a full disk.
    set_query_only(&store, true).await;
    for i in 0..3 {
        store.record(row(&format!("b{i}"), None, "m", 1), Default::default());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while store.writable().is_ok() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let why = store.writable().unwrap_err();
    assert!(why.contains("cannot write usage rows"), "{why}");
    assert_eq!(store.buffered(), 3);
    assert!(store.check(Duration::from_secs(5)).await.is_err());
    assert_eq!(count(&path), 1);

    // Writable again: the kept rows are written, none lost.
    set_query_only(&store, false).await;
    store.flush(Duration::from_secs(5)).await.unwrap();
    assert_eq!(count(&path), 4);
    assert!(store.writable().is_ok());
    assert_eq!(store.buffered(), 0);
}

#[tokio::test]
async fn a_key_made_by_another_process_is_seen_after_the_refresh() {
    let path = scratch("refresh");
    let store = Store::start(&config(&path, 20), Duration::from_millis(30)).unwrap();
    assert!(store.keys().is_empty());
    // Another connection, as `lynkr keys create` would.
    let other = open(path.to_str().unwrap()).unwrap();
    let (_, secret) = keys::create(&other, "late", &KeySpec::default()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while store.keys().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        store
            .keys()
            .check(Some(&secret), keys::now_secs())
            .unwrap()
            .name,
        "late"
    );
}

#[test]
fn usage_sums_group_and_filter() {
    let path = scratch("sums");
    let mut conn = open(path.to_str().unwrap()).unwrap();
    let (k, _) = keys::create(&conn, "k", &KeySpec::default()).unwrap();
    let mut old = row("old", Some(k.id), "a", 100);
    old.at_ms -= 3 * 86_400_000;
    let mut failed = row("f", None, "b", 5);
    failed.status = 502;
    usage::insert(
        &mut conn,
        &[
            row("1", Some(k.id), "a", 10),
            row("2", Some(k.id), "b", 20),
            failed,
            old,
        ],
    )
    .unwrap();
    let by_model = usage::summarize(&conn, GroupBy::Model, &Filter::default()).unwrap();
    assert_eq!(by_model.len(), 2);
    assert_eq!((by_model[0].requests, by_model[0].input_tokens), (2, 110));
    assert_eq!((by_model[1].requests, by_model[1].errors), (2, 1));
    let recent = Filter {
        key: Some("k".into()),
        since_ms: Some(now_ms() - 86_400_000),
    };
    let by_key = usage::summarize(&conn, GroupBy::Key, &recent).unwrap();
    assert_eq!(by_key.len(), 1);
    assert_eq!(
        (
            by_key[0].group.as_str(),
            by_key[0].requests,
            by_key[0].input_tokens
        ),
        ("k", 2, 30)
    );
    assert!((by_key[0].cost - 1.0).abs() < 1e-9);
    assert_eq!(usage::expire(&conn, 2, now_ms()).unwrap(), 1);
    assert!(GroupBy::parse("week").is_err());
}

// ---- budgets ---------------------------------------------------------------

use super::budgets::{BudgetSpec, Charges, Metric, Period, Scope};

fn key_named(name: &str, user: &str, team: Option<&str>) -> keys::ApiKey {
    keys::ApiKey {
        id: 1,
        name: name.into(),
        user: user.into(),
        team: team.map(str::to_owned),
        models: Vec::new(),
        rpm: None,
        max_in_flight: None,
        tpm: None,
        expires_at: None,
        disabled: false,
        prefix: "lk-x".into(),
        created_at: 0,
    }
}

fn budget(
    id: i64,
    scope: Scope,
    subject: &str,
    metric: Metric,
    period: Period,
    hard: f64,
) -> budgets::Budget {
    budgets::Budget {
        id,
        scope,
        subject: subject.into(),
        metric,
        period,
        hard,
        soft: None,
    }
}

fn usd(v: f64) -> Charges {
    Charges {
        usd: v,
        tokens: 0.0,
        requests: 1.0,
    }
}

const NOW: i64 = 1_796_209_697; // 2026-12-02T11:08:17Z

#[test]
fn a_budget_admits_what_fits_beside_what_is_spent_and_reserved() {
    let book = BudgetBook::build(
        vec![budget(1, Scope::Key, "ci", Metric::Usd, Period::Month, 1.0)],
        None,
        |_, _| 0.0,
        &Default::default(),
        NOW,
    );
    let key = key_named("ci", "", None);
    let a = book.reserve(&key, usd(0.4), NOW).unwrap();
    let _b = book.reserve(&key, usd(0.4), NOW).unwrap();
    let refused = book.reserve(&key, usd(0.4), NOW).unwrap_err();
    assert_eq!(
        (refused.spent, refused.reserved, refused.wanted),
        (0.0, 0.8, 0.4)
    );
    assert_eq!(refused.resets_at, Some(date_utc("2027-01-01")));
    let m = refused.message();
    assert!(
        m.contains("key \"ci\" usd/month allows 1.0000 USD")
            && m.contains("resets at 2027-01-01T00:00:00Z"),
        "{m}"
    );
    // Settled to what it really cost: room for another.
    a.settle(usd(0.1), NOW);
    let state = book.budgets().next().unwrap();
    let (spent, reserved) = state.totals(NOW);
    assert!((spent - 0.1).abs() < 1e-9 && (reserved - 0.4).abs() < 1e-9);
    assert_eq!(book.reservations_in_flight(), 1);
    book.reserve(&key, usd(0.4), NOW).unwrap();
}

fn date_utc(s: &str) -> i64 {
    crate::util::date::parse_utc(s).unwrap()
}

#[test]
fn a_refusal_by_one_budget_gives_back_what_the_others_reserved() {
    let book = BudgetBook::build(
        vec![
            budget(1, Scope::Key, "ci", Metric::Usd, Period::Day, 10.0),
            budget(2, Scope::User, "ana", Metric::Tokens, Period::Week, 100.0),
            budget(3, Scope::Team, "ml", Metric::Requests, Period::Total, 5.0),
        ],
        None,
        |_, _| 0.0,
        &Default::default(),
        NOW,
    );
    let key = key_named("ci", "ana", Some("ml"));
    let worst = Charges {
        usd: 1.0,
        tokens: 150.0,
        requests: 1.0,
    };
    let refused = book.reserve(&key, worst, NOW).unwrap_err();
    assert_eq!(refused.budget.id, 2);
    for b in book.budgets() {
        assert_eq!(b.totals(NOW), (0.0, 0.0), "{}", b.budget.label());
    }
    assert_eq!(book.reservations_in_flight(), 0);
    // The team's total budget never resets.
    let held: Vec<_> = (0..5)
        .map(|_| {
            book.reserve(
                &key,
                Charges {
                    usd: 0.0,
                    tokens: 1.0,
                    requests: 1.0,
                },
                NOW,
            )
            .unwrap()
        })
        .collect();
    let e = book
        .reserve(
            &key,
            Charges {
                usd: 0.0,
                tokens: 1.0,
                requests: 1.0,
            },
            NOW,
        )
        .unwrap_err();
    assert_eq!((e.budget.id, e.resets_at), (3, None));
    assert!(e.message().contains("does not reset"), "{}", e.message());
    drop(held);
}

#[test]
fn concurrent_reservations_admit_exactly_what_the_budget_holds() {
    let book = Arc::new(BudgetBook::build(
        vec![budget(
            1,
            Scope::Key,
            "ci",
            Metric::Usd,
            Period::Month,
            37.0,
        )],
        None,
        |_, _| 0.0,
        &Default::default(),
        NOW,
    ));
    let key = Arc::new(key_named("ci", "", None));
    let threads: Vec<_> = (0..500)
        .map(|_| {
            let (book, key) = (book.clone(), key.clone());
            std::thread::spawn(move || {
                let held = book.reserve(&key, usd(1.0), NOW).ok()?;
                std::thread::yield_now();
                held.settle(usd(1.0), NOW);
                Some(())
            })
        })
        .collect();
    let admitted = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .count();
    assert_eq!(admitted, 37);
    let (spent, reserved) = book.budgets().next().unwrap().totals(NOW);
    assert_eq!((spent, reserved), (37.0, 0.0));
}

#[test]
fn a_new_period_forgets_the_spend_but_not_the_reservations_in_flight() {
    let book = BudgetBook::build(
        vec![budget(
            1,
            Scope::Key,
            "ci",
            Metric::Tokens,
            Period::Day,
            100.0,
        )],
        None,
        |_, _| 60.0,
        &Default::default(),
        NOW,
    );
    let key = key_named("ci", "", None);
    let tokens = |n: f64| Charges {
        usd: 0.0,
        tokens: n,
        requests: 1.0,
    };
    assert!(book.reserve(&key, tokens(50.0), NOW).is_err());
    let held = book.reserve(&key, tokens(30.0), NOW).unwrap();
    let tomorrow = NOW + 86_400;
    assert_eq!(book.budgets().next().unwrap().totals(tomorrow), (0.0, 30.0));
    assert!(book.reserve(&key, tokens(71.0), tomorrow).is_err());
    let _in_flight = book.reserve(&key, tokens(70.0), tomorrow).unwrap();
    drop(held); // never settled: charged in full, not forgotten
    let totals = book.budgets().next().unwrap().totals(tomorrow);
    assert_eq!(totals, (30.0, 70.0));
}

#[test]
fn the_soft_limit_is_reported_once_a_period() {
    let mut b = budget(1, Scope::Key, "ci", Metric::Usd, Period::Day, 10.0);
    b.soft = Some(1.0);
    let book = BudgetBook::build(vec![b], None, |_, _| 0.0, &Default::default(), NOW);
    let key = key_named("ci", "", None);
    let settle = |v: f64, now: i64| {
        book.reserve(&key, usd(v), now)
            .unwrap()
            .settle(usd(v), now)
            .crossed
    };
    assert!(settle(0.8, NOW).is_empty());
    assert_eq!(settle(0.8, NOW).len(), 1);
    assert!(settle(0.8, NOW).is_empty());
    assert_eq!(settle(1.5, NOW + 86_400).len(), 1);
}

#[test]
fn budgets_start_from_the_ledger_and_keep_their_totals_across_reloads() {
    let path = scratch("budgets");
    let conn = open(path.to_str().unwrap()).unwrap();
    let (key, _) = keys::create(
        &conn,
        "ci",
        &KeySpec {
            user: Some("ana".into()),
            ..KeySpec::default()
        },
    )
    .unwrap();
    let b = budgets::set(
        &conn,
        &BudgetSpec {
            scope: Scope::Key,
            subject: "ci".into(),
            metric: Metric::Usd,
            period: Period::Month,
            hard: 2.0,
            soft: None,
        },
    )
    .unwrap();
    let mut rows = vec![
        row("a", Some(key.id), "m", 10),
        row("b", Some(key.id), "m", 10),
        row("c", None, "m", 10),
    ];
    rows[1].status = 500; // its cost (0.5) still counts: it was reported
    rows.push(UsageRow {
        at_ms: 0,
        ..row("old", Some(key.id), "m", 10)
    }); // 1970: another month
    let mut conn = conn;
    usage::insert(&mut conn, &rows).unwrap();
    assert_eq!(
        budgets::spent_since(&conn, &b, Period::Month.start(keys::now_secs())).unwrap(),
        1.0
    );
    let first = load_book(&conn, None).unwrap();
    let state = first.budgets().next().unwrap().clone();
    assert_eq!(state.totals(keys::now_secs()).0, 1.0);
    let held = first.reserve(&key, usd(0.9), keys::now_secs()).unwrap();
    // A reload (a limit changed) keeps the running totals.
    budgets::set(
        &conn,
        &BudgetSpec {
            scope: Scope::Key,
            subject: "ci".into(),
            metric: Metric::Usd,
            period: Period::Month,
            hard: 3.0,
            soft: None,
        },
    )
    .unwrap();
    let second = load_book(&conn, Some(&first)).unwrap();
    let now_state = second.budgets().next().unwrap();
    assert_eq!(now_state.budget.hard, 3.0);
    assert_eq!(now_state.totals(keys::now_secs()), (1.0, 0.9));
    held.settle(usd(0.2), keys::now_secs());
    assert_eq!(now_state.totals(keys::now_secs()).1, 0.0);
    assert!((now_state.totals(keys::now_secs()).0 - 1.2).abs() < 1e-9);
}

/// Two processes on one file (as during a `-u` upgrade): each counts the
/// rows the other wrote, once the other's commit makes it reload, and what
/// the other holds for its requests in flight.
#[test]
fn a_reload_counts_what_another_process_wrote_and_holds() {
    let path = scratch("budgets-shared");
    let mut conn = open(path.to_str().unwrap()).unwrap();
    let (key, _) = keys::create(&conn, "ci", &KeySpec::default()).unwrap();
    let spec = BudgetSpec {
        scope: Scope::Key,
        subject: "ci".into(),
        metric: Metric::Usd,
        period: Period::Total,
        hard: 10.0,
        soft: None,
    };
    let b = budgets::set(&conn, &spec).unwrap();
    let first = load_book(&conn, None).unwrap();
    let now = keys::now_secs();
    let state = first.budgets().next().unwrap().clone();

    // This process settles 2 USD; its row is not written yet.
    let held = first.reserve(&key, usd(3.0), now).unwrap();
    assert_eq!(first.holds(), vec![(b.id, 3.0)]);
    let charged = held.settle(usd(2.0), now).charged;
    assert_eq!(state.totals(now), (2.0, 0.0));
    // The other process wrote a 1.5 USD row and holds 4 USD in flight.
    let mut other = row("other", Some(key.id), "m", 10);
    other.cost = 1.5;
    usage::insert(&mut conn, &[other]).unwrap();
    conn.execute(
        "INSERT INTO holds (pid, budget_id, reserved, updated_ms) VALUES (?1, ?2, 4.0, ?3)",
        rusqlite::params![i64::from(std::process::id()) + 1, b.id, now_ms()],
    )
    .unwrap();
    // A stale hold (a process gone for a minute) is not counted.
    conn.execute(
        "INSERT INTO holds (pid, budget_id, reserved, updated_ms) VALUES (?1, ?2, 100.0, ?3)",
        rusqlite::params![i64::from(std::process::id()) + 2, b.id, now_ms() - 60_000],
    )
    .unwrap();
    let second = load_book(&conn, Some(&first)).unwrap();
    let state = second.budgets().next().unwrap();
    assert_eq!(state.totals(now), (3.5, 4.0), "ledger 1.5, unwritten 2");
    let refused = second.reserve(&key, usd(2.6), now).unwrap_err();
    assert_eq!((refused.spent, refused.reserved), (3.5, 4.0));

    // Its row written: counted once, as the ledger's, before and after a reload.
    let mut mine = row("mine", Some(key.id), "m", 10);
    mine.cost = 2.0;
    usage::insert(&mut conn, &[mine]).unwrap();
    charged.written(now);
    assert_eq!(state.totals(now), (3.5, 4.0));
    let third = load_book(&conn, Some(&second)).unwrap();
    assert_eq!(third.budgets().next().unwrap().totals(now), (3.5, 4.0));

    // This process's own holds, as the store thread writes them.
    super::holds::write(&mut conn, &[(b.id, 0.5)], now_ms()).unwrap();
    let fourth = load_book(&conn, Some(&third)).unwrap();
    assert_eq!(
        fourth.budgets().next().unwrap().totals(now),
        (3.5, 4.0),
        "a process does not count its own holds twice"
    );
}
