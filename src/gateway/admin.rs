//! The admin API, `/admin/...` on the admin listener only: keys, budgets,
//! usage and sessions as JSON, guarded by `Authorization: Bearer
//! $LYNKR_ADMIN_KEY`. Every call runs on the store's thread, so it sees
//! the same file the CLI does, and a change reaches the key table at once.
//!
//! | method and path | does |
//! | --- | --- |
//! | `GET /admin/keys` | every key |
//! | `POST /admin/keys` | make a key (and its budgets); the key is in the answer, once |
//! | `GET /admin/keys/{name}` | one key, with its budgets |
//! | `PATCH /admin/keys/{name}` | change what the body names |
//! | `DELETE /admin/keys/{name}` | revoke it (its ledger rows stay) |
//! | `GET /admin/budgets` | every budget, with its period's spend |
//! | `POST /admin/budgets` | create a budget, or change its limits |
//! | `DELETE /admin/budgets/{id}` | remove it |
//! | `GET /admin/usage?by=&key=&since=` | ledger sums, as `lynkr usage` |
//! | `GET /admin/sessions/{id}` | one session's rows and totals |

use super::{body, respond, Gateway, RequestCtx};
use crate::protocol::error::{ApiError, ErrorKind};
use crate::store::budgets::{self, BudgetSpec, Metric, Period, Scope};
use crate::store::keys::{self, KeyHash, KeySpec};
use crate::store::usage::{self, Filter, GroupBy};
use crate::store::Store;
use crate::util::{date, query};
use pingora_core::protocols::http::ServerSession;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

/// The environment variable that holds the admin key.
pub const ADMIN_KEY_ENV: &str = "LYNKR_ADMIN_KEY";
/// A shorter admin key is refused at startup: it could be guessed.
const MIN_ADMIN_KEY_LEN: usize = 16;
/// How long an admin call may wait for the store (a usage sum over a large
/// ledger is the slowest).
const STORE_DEADLINE: Duration = Duration::from_secs(10);
/// Rows `/admin/sessions/{id}` returns at most.
const SESSION_ROWS: usize = 10_000;

/// The admin key's hash, from `LYNKR_ADMIN_KEY`; `None` when unset (the
/// admin API then refuses every call). Too short a key stops startup.
pub fn admin_key_from_env() -> Result<Option<KeyHash>, String> {
    match std::env::var(ADMIN_KEY_ENV) {
        Err(_) => Ok(None),
        Ok(k) if k.trim().len() < MIN_ADMIN_KEY_LEN => Err(format!(
            "{ADMIN_KEY_ENV} must be at least {MIN_ADMIN_KEY_LEN} characters \
             (for example: openssl rand -hex 32)"
        )),
        Ok(k) => Ok(Some(keys::hash(k.trim()))),
    }
}

/// `/admin` and everything under it.
pub fn is_admin_path(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

pub async fn handle(
    gw: &Gateway,
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    method: &str,
    path: &str,
) -> Result<(), ApiError> {
    authorize(gw, session)?;
    let store = gw.store.clone().ok_or_else(|| {
        unavailable("the admin API needs a store: set store.path (or LYNKR_DB_PATH)".into())
    })?;
    let segments = path
        .trim_start_matches("/admin")
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| query::percent_decode(s, false).map_err(ApiError::invalid))
        .collect::<Result<Vec<_>, _>>()?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let query = session.req_header().uri.query().unwrap_or("").to_string();
    let (status, answer) = match (method, segments.as_slice()) {
        ("GET", ["keys"]) => (200, list_keys(&store).await?),
        ("POST", ["keys"]) => {
            let new: NewKey = read_json(gw, session, ctx).await?;
            (201, create_key(&store, new).await?)
        }
        ("GET", ["keys", name]) => (200, get_key(&store, name).await?),
        ("PATCH", ["keys", name]) => {
            let change: KeyChange = read_json(gw, session, ctx).await?;
            (200, update_key(&store, name, change).await?)
        }
        ("DELETE", ["keys", name]) => (200, revoke_key(&store, name).await?),
        ("GET", ["budgets"]) => (200, list_budgets(&store).await?),
        ("POST", ["budgets"]) => {
            let new: NewBudget = read_json(gw, session, ctx).await?;
            (200, set_budget(&store, new).await?)
        }
        ("DELETE", ["budgets", id]) => (200, delete_budget(&store, id).await?),
        ("GET", ["usage"]) => (200, usage_sums(&store, &query).await?),
        ("GET", ["sessions", id]) => (200, session_rows(&store, id).await?),
        _ => {
            return Err(ApiError::not_found(format!(
                "{method} {path}: no such admin endpoint (see the README's \"Admin API\")"
            )))
        }
    };
    respond::json(session, ctx, status, answer.to_string().into_bytes()).await;
    Ok(())
}

/// The request must carry the admin key as a bearer token.
fn authorize(gw: &Gateway, session: &ServerSession) -> Result<(), ApiError> {
    let Some(expected) = &gw.admin_key else {
        return Err(ApiError::new(
            ErrorKind::PermissionError,
            format!("the admin API is off: set {ADMIN_KEY_ENV} and restart"),
        ));
    };
    let presented = session
        .req_header()
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Compared as hashes, every byte: the time taken says nothing about
    // how much of a guess was right.
    let matches = presented.is_some_and(|p| {
        let h = keys::hash(p);
        h.iter().zip(expected).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
    });
    if matches {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorKind::AuthenticationError,
            format!("the admin API needs Authorization: Bearer ${ADMIN_KEY_ENV}"),
        ))
    }
}

/// The body as `T`; a 400 naming what is wrong with it.
async fn read_json<T: DeserializeOwned>(
    gw: &Gateway,
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
) -> Result<T, ApiError> {
    let bytes = body::read(gw, session, ctx).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("body: {e}")))
}

fn unavailable(message: String) -> ApiError {
    let mut e = ApiError::api(message).with_status(503);
    e.retry_after = Some(5);
    e
}

/// A store error as an answer: a missing name is a 404, a taken one a 409,
/// the rest is what the caller sent (400).
fn refused(message: String) -> ApiError {
    if message.starts_with("no key named") || message.starts_with("no budget with id") {
        ApiError::not_found(message)
    } else if message.contains("already exists") {
        ApiError::invalid(message).with_status(409)
    } else {
        ApiError::invalid(message)
    }
}

/// Run `f` on the store thread: its error is the caller's (`refused`);
/// a store that does not answer is a 503.
async fn on_store<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&mut rusqlite::Connection) -> Result<T, String> + Send + 'static,
) -> Result<T, ApiError> {
    store
        .call(STORE_DEADLINE, f)
        .await
        .map_err(|e| unavailable(format!("the store is unavailable: {e}")))?
        .map_err(refused)
}

// ---- keys ------------------------------------------------------------------

/// `POST /admin/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    #[serde(flatten)]
    settings: KeyChange,
    /// Budgets of the new key, made with it in one transaction.
    #[serde(default)]
    budgets: Vec<KeyBudget>,
}

/// `PATCH /admin/keys/{name}`: what is named changes, the rest stays.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyChange {
    user: Option<String>,
    team: Option<String>,
    models: Option<Vec<String>>,
    rpm: Option<u64>,
    tpm: Option<u64>,
    max_in_flight: Option<u64>,
    /// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ`, UTC.
    expires_at: Option<String>,
}

impl KeyChange {
    fn spec(self) -> Result<KeySpec, ApiError> {
        Ok(KeySpec {
            user: self.user,
            team: self.team,
            models: self.models,
            rpm: self.rpm,
            tpm: self.tpm,
            max_in_flight: self.max_in_flight,
            expires_at: self
                .expires_at
                .as_deref()
                .map(date::parse_utc)
                .transpose()
                .map_err(|e| ApiError::invalid(format!("expires_at: {e}")))?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBudget {
    metric: String,
    limit: f64,
    period: Option<String>,
    soft_limit: Option<f64>,
}

/// A budget's parts, checked as the CLI checks them.
fn budget_spec(
    scope: Scope,
    subject: String,
    metric: &str,
    period: Option<&str>,
    hard: f64,
    soft: Option<f64>,
) -> Result<BudgetSpec, ApiError> {
    let metric = Metric::parse(metric).map_err(ApiError::invalid)?;
    let period = Period::parse(period.unwrap_or("month")).map_err(ApiError::invalid)?;
    budgets::check_limits(hard, soft).map_err(ApiError::invalid)?;
    let whole = |v: f64| v.fract() == 0.0;
    if metric != Metric::Usd && !(whole(hard) && soft.is_none_or(whole)) {
        return Err(ApiError::invalid(format!(
            "a {} budget's limits are whole numbers",
            metric.as_str()
        )));
    }
    Ok(BudgetSpec {
        scope,
        subject,
        metric,
        period,
        hard,
        soft,
    })
}

async fn list_keys(store: &Store) -> Result<Value, ApiError> {
    let list = on_store(store, |conn| keys::list(conn)).await?;
    let keys: Vec<_> = list.iter().map(keys::ApiKey::to_json).collect();
    Ok(json!({ "keys": keys }))
}

async fn create_key(store: &Store, new: NewKey) -> Result<Value, ApiError> {
    keys::check_name(&new.name).map_err(ApiError::invalid)?;
    let spec = new.settings.spec()?;
    let budget_specs = new
        .budgets
        .iter()
        .map(|b| {
            let (metric, period) = (b.metric.as_str(), b.period.as_deref());
            budget_spec(
                Scope::Key,
                new.name.clone(),
                metric,
                period,
                b.limit,
                b.soft_limit,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let name = new.name;
    let (key, secret, made) = on_store(store, move |conn| {
        // The key and its budgets together, or neither.
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        let (key, secret) = keys::create(&tx, &name, &spec)?;
        let made = budget_specs
            .iter()
            .map(|b| budgets::set(&tx, b))
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().map_err(|e| e.to_string())?;
        Ok((key, secret, made))
    })
    .await?;
    let now = keys::now_secs();
    tracing::info!(key = %key.name, user = %key.user, "admin: key created");
    Ok(json!({
        "key": secret,
        "api_key": key.to_json(),
        "budgets": made.iter().map(|b| b.to_json(0.0, now)).collect::<Vec<_>>(),
    }))
}

async fn get_key(store: &Store, name: &str) -> Result<Value, ApiError> {
    let name = name.to_string();
    let (key, own) = on_store(store, move |conn| {
        let key = keys::get(conn, &name)?.ok_or_else(|| format!("no key named {name:?}"))?;
        let now = keys::now_secs();
        let mut own = Vec::new();
        for b in budgets::list(conn)? {
            if b.scope == Scope::Key && b.subject == key.name {
                let spent = budgets::spent_since(conn, &b, b.period.start(now))
                    .map_err(|e| e.to_string())?;
                own.push(b.to_json(spent, now));
            }
        }
        Ok((key, own))
    })
    .await?;
    let mut answer = key.to_json();
    answer["budgets"] = Value::Array(own);
    Ok(answer)
}

async fn update_key(store: &Store, name: &str, change: KeyChange) -> Result<Value, ApiError> {
    let spec = change.spec()?;
    let name = name.to_string();
    let key = on_store(store, move |conn| keys::update(conn, &name, &spec)).await?;
    tracing::info!(key = %key.name, "admin: key updated");
    Ok(key.to_json())
}

async fn revoke_key(store: &Store, name: &str) -> Result<Value, ApiError> {
    let owned = name.to_string();
    on_store(store, move |conn| keys::revoke(conn, &owned)).await?;
    tracing::info!(key = %name, "admin: key revoked");
    Ok(json!({ "name": name, "revoked": true }))
}

// ---- budgets ----------------------------------------------------------------

/// `POST /admin/budgets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBudget {
    /// `key`, `user` or `team`.
    scope: String,
    /// The key's name, the user or the team.
    subject: String,
    metric: String,
    limit: f64,
    period: Option<String>,
    soft_limit: Option<f64>,
}

async fn list_budgets(store: &Store) -> Result<Value, ApiError> {
    let rows = on_store(store, |conn| {
        let now = keys::now_secs();
        budgets::list(conn)?
            .iter()
            .map(|b| {
                let spent = budgets::spent_since(conn, b, b.period.start(now))
                    .map_err(|e| e.to_string())?;
                Ok(b.to_json(spent, now))
            })
            .collect::<Result<Vec<_>, String>>()
    })
    .await?;
    // What requests in flight here hold against each budget now.
    let book = store.budgets();
    let now = keys::now_secs();
    let rows: Vec<_> = rows
        .into_iter()
        .map(|mut row| {
            let reserved = book
                .budgets()
                .find(|s| Some(s.budget.id) == row["id"].as_i64())
                .map_or(0.0, |s| s.totals(now).1);
            row["reserved"] = json!(reserved);
            row
        })
        .collect();
    Ok(json!({ "budgets": rows }))
}

async fn set_budget(store: &Store, new: NewBudget) -> Result<Value, ApiError> {
    let scope = Scope::parse(&new.scope).map_err(ApiError::invalid)?;
    let spec = budget_spec(
        scope,
        new.subject,
        &new.metric,
        new.period.as_deref(),
        new.limit,
        new.soft_limit,
    )?;
    let budget = on_store(store, move |conn| {
        if spec.scope == Scope::Key && keys::get(conn, &spec.subject)?.is_none() {
            return Err(format!("no key named {:?}", spec.subject));
        }
        budgets::set(conn, &spec)
    })
    .await?;
    tracing::info!(
        budget = budget.label(),
        limit = budget.hard,
        "admin: budget set"
    );
    Ok(budget.to_json(0.0, keys::now_secs()))
}

async fn delete_budget(store: &Store, id: &str) -> Result<Value, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("{id:?} is not a budget id")))?;
    on_store(store, move |conn| budgets::delete(conn, id)).await?;
    tracing::info!(id, "admin: budget deleted");
    Ok(json!({ "id": id, "deleted": true }))
}

// ---- usage ----------------------------------------------------------------

async fn usage_sums(store: &Store, query: &str) -> Result<Value, ApiError> {
    let (mut by, mut filter) = (GroupBy::Day, Filter::default());
    let mut by_name = "day".to_string();
    for (name, value) in query::query_pairs(query).map_err(ApiError::invalid)? {
        match name.as_str() {
            "by" => {
                by = GroupBy::parse(&value).map_err(ApiError::invalid)?;
                by_name = value;
            }
            "key" => filter.key = Some(value),
            "since" => {
                let t = date::parse_utc(&value).map_err(ApiError::invalid)?;
                filter.since_ms = Some(t * 1000);
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown parameter {other:?}: use by, key or since"
                )))
            }
        }
    }
    let groups = on_store(store, move |conn| {
        usage::summarize(conn, by, &filter).map_err(|e| e.to_string())
    })
    .await?;
    Ok(json!({ "by": by_name, "groups": groups }))
}

async fn session_rows(store: &Store, id: &str) -> Result<Value, ApiError> {
    let owned = id.to_string();
    let rows = on_store(store, move |conn| {
        usage::session_rows(conn, &owned, SESSION_ROWS + 1).map_err(|e| e.to_string())
    })
    .await?;
    if rows.is_empty() {
        return Err(ApiError::not_found(format!(
            "no ledger rows for session {id:?}"
        )));
    }
    let truncated = rows.len() > SESSION_ROWS;
    let rows = &rows[..rows.len().min(SESSION_ROWS)];
    let sum = |f: fn(&usage::LedgerEntry) -> u64| rows.iter().map(f).sum::<u64>();
    Ok(json!({
        "session": id,
        "totals": {
            "requests": rows.len(),
            "input_tokens": sum(|r| r.input_tokens),
            "cache_read_tokens": sum(|r| r.cache_read_tokens),
            "output_tokens": sum(|r| r.output_tokens),
            "cost": rows.iter().map(|r| r.cost).sum::<f64>(),
            "errors": rows.iter().filter(|r| r.status >= 400).count(),
            "first_at": rows.first().map(|r| r.at.clone()),
            "last_at": rows.last().map(|r| r.at.clone()),
        },
        "requests": rows,
        "truncated": truncated,
    }))
}
