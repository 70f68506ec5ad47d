//! What each process's requests in flight hold against each budget, in the
//! `holds` table: how processes sharing one file (the old and the new
//! during a `-u` upgrade, or several on one host) see each other's
//! reservations. A process rewrites its own rows as they change, and at
//! least every few seconds while it holds anything; rows not rewritten
//! for a while are a process that is gone, and are ignored.

use rusqlite::{params, Connection};
use std::collections::HashMap;

fn pid() -> i64 {
    i64::from(std::process::id())
}

/// Replace this process's rows by `held` (budget id, amount).
pub fn write(conn: &mut Connection, held: &[(i64, f64)], now_ms: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM holds WHERE pid = ?1", [pid()])?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO holds (pid, budget_id, reserved, updated_ms) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (id, reserved) in held {
            insert.execute(params![pid(), id, reserved, now_ms])?;
        }
    }
    tx.commit()
}

/// Remove this process's rows (at start, for a pid reused, and at exit).
pub fn clear(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM holds WHERE pid = ?1", [pid()])
        .map(|_| ())
}

/// What other processes hold, by budget id, from rows written at or after
/// `fresh_since_ms`.
pub fn of_others(conn: &Connection, fresh_since_ms: i64) -> rusqlite::Result<HashMap<i64, f64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT budget_id, SUM(reserved) FROM holds
         WHERE pid != ?1 AND updated_ms >= ?2 GROUP BY budget_id",
    )?;
    let rows = stmt.query_map(params![pid(), fresh_since_ms], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))
    })?;
    rows.collect()
}
