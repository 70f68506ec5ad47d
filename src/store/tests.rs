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
    store.record(row("a", None, "m", 1));
    store.flush(Duration::from_secs(5)).await.unwrap();
    assert_eq!(count(&path), 1);
    assert!(store.check(Duration::from_secs(5)).await.is_ok());

    // The store's own connection turns read-only: writes fail as on a full disk.
    set_query_only(&store, true).await;
    for i in 0..3 {
        store.record(row(&format!("b{i}"), None, "m", 1));
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
