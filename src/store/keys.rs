//! API keys: `lk-` and 32 random bytes in base62. Only the SHA-256 of a
//! key is stored; the key itself is shown once, when it is made. The hot
//! path checks a presented key against an in-memory table by its hash.

use rusqlite::{params, Connection, OptionalExtension, Row};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

pub const PREFIX: &str = "lk-";
/// Characters of a key after `lk-`: 32 bytes in base62 (62^43 > 2^256).
const BODY_LEN: usize = 43;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

pub type KeyHash = [u8; 32];

/// A key as the gateway checks it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: i64,
    pub name: String,
    pub user: String,
    pub team: Option<String>,
    /// Globs matched on the client's model name; empty: every model.
    pub models: Vec<String>,
    /// Requests per minute; `None`: the `resilience.rate_limit` setting.
    pub rpm: Option<u64>,
    /// Requests in flight at once; `None`: the `resilience.rate_limit` setting.
    pub max_in_flight: Option<u64>,
    /// Tokens per minute; `None`: the `resilience.rate_limit` setting.
    pub tpm: Option<u64>,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<i64>,
    pub disabled: bool,
    /// `lk-` and the first characters: enough to tell keys apart in a list.
    pub prefix: String,
    pub created_at: i64,
}

impl ApiKey {
    /// The key as `keys list --json` and the admin API show it (never its secret).
    pub fn to_json(&self) -> serde_json::Value {
        use crate::util::date::format_utc;
        serde_json::json!({
            "name": self.name,
            "prefix": self.prefix,
            "user": self.user,
            "team": self.team,
            "models": self.models,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_in_flight": self.max_in_flight,
            "expires_at": self.expires_at.map(format_utc),
            "revoked": self.disabled,
            "created_at": format_utc(self.created_at),
        })
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty()
            || self
                .models
                .iter()
                .any(|g| crate::util::glob_match(g, model))
    }
}

/// Why a presented key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Missing,
    Unknown,
    Revoked,
    Expired,
}

impl Refused {
    pub fn message(self) -> &'static str {
        match self {
            Refused::Missing => {
                "an API key is required: send it in x-api-key or Authorization: Bearer"
            }
            Refused::Unknown => "invalid API key",
            Refused::Revoked => "this API key has been revoked",
            Refused::Expired => "this API key has expired",
        }
    }
}

/// Every key by the hash of its secret: what the hot path reads.
#[derive(Debug, Default)]
pub struct KeyTable(HashMap<KeyHash, Arc<ApiKey>>);

impl KeyTable {
    /// The key `presented` names, if it may be used at `now` (unix seconds).
    pub fn check(&self, presented: Option<&str>, now: i64) -> Result<Arc<ApiKey>, Refused> {
        let presented = presented.ok_or(Refused::Missing)?;
        let key = self.0.get(&hash(presented)).ok_or(Refused::Unknown)?;
        if key.disabled {
            return Err(Refused::Revoked);
        }
        if key.expires_at.is_some_and(|t| now >= t) {
            return Err(Refused::Expired);
        }
        Ok(key.clone())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub fn hash(secret: &str) -> KeyHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new key from 32 bytes of the OS's randomness.
pub fn generate() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(encode(bytes))
}

/// `lk-` and the bytes as one base62 number, zero-padded to 43 digits.
fn encode(mut n: [u8; 32]) -> String {
    let mut digits = [b'0'; BODY_LEN];
    for d in digits.iter_mut().rev() {
        // n /= 62, keeping the remainder: long division, most significant byte first.
        let mut rem = 0u32;
        for b in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 62) as u8;
            rem = cur % 62;
        }
        *d = BASE62[rem as usize];
    }
    let mut s = String::with_capacity(PREFIX.len() + BODY_LEN);
    s.push_str(PREFIX);
    s.push_str(std::str::from_utf8(&digits).expect("base62 is ASCII"));
    s
}

/// What `keys create` and `keys update` set. `None` leaves a field as it is
/// (update) or unset (create).
#[derive(Debug, Default, Clone)]
pub struct KeySpec {
    pub user: Option<String>,
    pub team: Option<String>,
    pub models: Option<Vec<String>>,
    pub rpm: Option<u64>,
    pub max_in_flight: Option<u64>,
    pub tpm: Option<u64>,
    pub expires_at: Option<i64>,
}

pub fn now_secs() -> i64 {
    super::now_ms() / 1000
}

/// Key names are what operators type: short, printable, no spaces.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key name {name:?}: use 1-64 letters, digits, '-', '_', '.' or '@'"
        ))
    }
}

/// Make a key; its secret is returned once and never stored.
pub fn create(conn: &Connection, name: &str, spec: &KeySpec) -> Result<(ApiKey, String), String> {
    check_name(name)?;
    let secret = generate()?;
    let now = now_secs();
    let prefix = secret[..PREFIX.len() + 6].to_string();
    conn.execute(
        "INSERT INTO keys (name, hash, prefix, user, team, models, rpm, max_in_flight,
                           expires_at, disabled, created_at, updated_at, tpm)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10, ?10, ?11)",
        params![
            name,
            &hash(&secret)[..],
            prefix,
            spec.user.as_deref().unwrap_or(""),
            spec.team,
            spec.models.as_deref().unwrap_or_default().join(","),
            spec.rpm.map(|v| v as i64),
            spec.max_in_flight.map(|v| v as i64),
            spec.expires_at,
            now,
            spec.tpm.map(|v| v as i64),
        ],
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            format!("a key named {name:?} already exists")
        }
        e => e.to_string(),
    })?;
    let key = get(conn, name)?.ok_or("the new key vanished")?;
    Ok((key, secret))
}

/// Change what `spec` sets; returns the key as it is now.
pub fn update(conn: &Connection, name: &str, spec: &KeySpec) -> Result<ApiKey, String> {
    let models = spec.models.as_ref().map(|m| m.join(","));
    let changed = conn
        .execute(
            "UPDATE keys SET
                user = COALESCE(?2, user),
                team = COALESCE(?3, team),
                models = COALESCE(?4, models),
                rpm = COALESCE(?5, rpm),
                max_in_flight = COALESCE(?6, max_in_flight),
                expires_at = COALESCE(?7, expires_at),
                updated_at = ?8,
                tpm = COALESCE(?9, tpm)
             WHERE name = ?1",
            params![
                name,
                spec.user,
                spec.team,
                models,
                spec.rpm.map(|v| v as i64),
                spec.max_in_flight.map(|v| v as i64),
                spec.expires_at,
                now_secs(),
                spec.tpm.map(|v| v as i64),
            ],
        )
        .map_err(|e| e.to_string())?;
    if changed == 0 {
        return Err(format!("no key named {name:?}"));
    }
    get(conn, name)?.ok_or_else(|| format!("no key named {name:?}"))
}

/// Revoke a key: it stays in the list (and the ledger keeps naming it),
/// but is refused from the next refresh on.
pub fn revoke(conn: &Connection, name: &str) -> Result<(), String> {
    let changed = conn
        .execute(
            "UPDATE keys SET disabled = 1, updated_at = ?2 WHERE name = ?1",
            params![name, now_secs()],
        )
        .map_err(|e| e.to_string())?;
    if changed == 0 {
        return Err(format!("no key named {name:?}"));
    }
    Ok(())
}

const COLUMNS: &str =
    "id, name, user, team, models, rpm, max_in_flight, expires_at, disabled, prefix, created_at, tpm";
const COLUMN_COUNT: usize = 12;

fn from_row(r: &Row) -> rusqlite::Result<ApiKey> {
    let models: String = r.get(4)?;
    Ok(ApiKey {
        id: r.get(0)?,
        name: r.get(1)?,
        user: r.get(2)?,
        team: r.get(3)?,
        models: models
            .split(',')
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect(),
        rpm: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        max_in_flight: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        expires_at: r.get(7)?,
        disabled: r.get(8)?,
        prefix: r.get(9)?,
        created_at: r.get(10)?,
        tpm: r.get::<_, Option<i64>>(11)?.map(|v| v as u64),
    })
}

pub fn get(conn: &Connection, name: &str) -> Result<Option<ApiKey>, String> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM keys WHERE name = ?1"),
        [name],
        from_row,
    )
    .optional()
    .map_err(|e| e.to_string())
}

pub fn list(conn: &Connection) -> Result<Vec<ApiKey>, String> {
    let mut stmt = conn
        .prepare(&format!("SELECT {COLUMNS} FROM keys ORDER BY name"))
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], from_row)
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| e.to_string())?;
    Ok(rows)
}

/// Every key, by hash: the table the gateway checks against.
pub fn load_table(conn: &Connection) -> Result<KeyTable, String> {
    let mut stmt = conn
        .prepare(&format!("SELECT {COLUMNS}, hash FROM keys"))
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(COLUMN_COUNT)?, from_row(r)?))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| e.to_string())?;
    let mut table = HashMap::with_capacity(rows.len());
    for (h, key) in rows {
        let h: KeyHash = h
            .try_into()
            .map_err(|_| format!("key {:?}: stored hash is not 32 bytes", key.name))?;
        table.insert(h, Arc::new(key));
    }
    Ok(KeyTable(table))
}
