//! The database's schema, versioned by `PRAGMA user_version`: migration
//! N brings a database at version N-1 to N. A database newer than this
//! build is refused rather than written with an older idea of its tables.

use rusqlite::Connection;

/// Each entry is one migration; its index + 1 is the version it makes.
const MIGRATIONS: &[&str] = &[
    // 1: keys and the usage ledger.
    "CREATE TABLE keys (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        hash BLOB NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        user TEXT NOT NULL DEFAULT '',
        team TEXT,
        models TEXT NOT NULL DEFAULT '',
        rpm INTEGER,
        max_in_flight INTEGER,
        expires_at INTEGER,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE usage (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        key_id INTEGER,
        user TEXT NOT NULL DEFAULT '',
        session TEXT NOT NULL DEFAULT '',
        route TEXT NOT NULL DEFAULT '',
        provider TEXT NOT NULL DEFAULT '',
        model TEXT NOT NULL DEFAULT '',
        upstream_model TEXT NOT NULL DEFAULT '',
        input_tokens INTEGER NOT NULL,
        cache_read_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost REAL NOT NULL,
        status INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        ttft_ms INTEGER,
        attempts INTEGER NOT NULL,
        stream INTEGER NOT NULL
    );
    CREATE INDEX usage_at ON usage(at_ms);
    CREATE INDEX usage_key_at ON usage(key_id, at_ms);",
    // 2: budgets, and the team on each ledger row (team budgets sum by it).
    "CREATE TABLE budgets (
        id INTEGER PRIMARY KEY,
        scope TEXT NOT NULL CHECK (scope IN ('key', 'user', 'team')),
        subject TEXT NOT NULL,
        metric TEXT NOT NULL CHECK (metric IN ('usd', 'tokens', 'requests')),
        period TEXT NOT NULL CHECK (period IN ('day', 'week', 'month', 'total')),
        hard REAL NOT NULL,
        soft REAL,
        created_at INTEGER NOT NULL,
        UNIQUE (scope, subject, metric, period)
    );
    ALTER TABLE usage ADD COLUMN team TEXT NOT NULL DEFAULT '';
    CREATE INDEX usage_user_at ON usage(user, at_ms);
    CREATE INDEX usage_team_at ON usage(team, at_ms);",
    // 3: tokens per minute per key; budget reservations each running
    // process holds (so another process sharing the file, as during a
    // `-u` upgrade, counts them too).
    "ALTER TABLE keys ADD COLUMN tpm INTEGER;
    CREATE TABLE holds (
        pid INTEGER NOT NULL,
        budget_id INTEGER NOT NULL,
        reserved REAL NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (pid, budget_id)
    );",
];

/// The version this build writes.
pub const CURRENT: u32 = MIGRATIONS.len() as u32;

/// Bring the database to `CURRENT`, each migration in its own transaction.
pub fn migrate(conn: &mut Connection) -> Result<(), String> {
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if version > CURRENT {
        return Err(format!(
            "the database is at schema version {version}, newer than this build's {CURRENT}; \
             run the newer lynkr, or point store.path at another file"
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        tx.execute_batch(sql)
            .and_then(|()| tx.pragma_update(None, "user_version", i as u32 + 1))
            .and_then(|()| tx.commit())
            .map_err(|e| format!("migration to schema version {}: {e}", i + 1))?;
    }
    Ok(())
}
