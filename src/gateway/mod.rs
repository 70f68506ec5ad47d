//! The gateway: its shared state, what one request carries through its
//! life, and the request's phases (admission, dispatch, accounting). The
//! HTTP server that drives them is `http.rs`; `/v1/messages` is answered
//! by the exchange in `messages.rs` and `attempt.rs`.

mod admin;
mod attempt;
mod body;
mod drain;
mod http;
mod messages;
mod ops;
mod respond;
mod sweep;
mod trim;

pub use drain::{Drain, DrainService};
pub use http::LynkrApp;
pub use sweep::PoolSweep;
pub use trim::IdleTrim;

use crate::access_log::AccessRecord;
use crate::config::{AuthMode, Config, LimitsConfig};
use crate::metrics::{Finished, Metrics, Upstream};
use crate::protocol::error::{ApiError, ErrorKind};
use crate::providers::pool::Pool;
use crate::providers::Provider;
use crate::resilience::backoff::RetryPolicy;
use crate::resilience::breaker::Breaker;
use crate::resilience::buffered::{BodyBudget, Reservation};
use crate::resilience::rate_limit::{Limited, RateLimiter};
use crate::resilience::shedder::{InFlight, Shed, Shedder};
use crate::routing::Router;
use crate::store::budgets::{self, Charges};
use crate::store::keys::ApiKey;
use crate::store::usage::UsageRow;
use crate::store::Store;
use crate::upstream::UpstreamClient;
use crate::util::redact::Redactor;
use pingora_core::protocols::http::ServerSession;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Gateway {
    pub router: Router,
    pub upstream: UpstreamClient,
    pub limits: LimitsConfig,
    /// How long a client may take to send a request header or body.
    pub client_read: Duration,
    /// How long an idle kept-alive client connection is kept.
    pub client_idle: Duration,
    /// Longest a request may take, streams included.
    pub total: Duration,
    pub retry: RetryPolicy,
    /// One circuit breaker per provider, by name.
    pub breakers: HashMap<String, Breaker>,
    pub shedder: Shedder,
    pub body_budget: BodyBudget,
    pub limiter: RateLimiter,
    /// Providers with several endpoints, by name.
    pub pools: Vec<(String, Arc<Pool>)>,
    pub metrics: Metrics,
    /// Shutdown and upgrade state (`/health/ready`, the drain, stream cuts).
    pub drain: Arc<Drain>,
    /// Every configured provider key, kept out of upstream error text.
    pub redactor: Redactor,
    /// Keys and the usage ledger (`store.path`), if configured.
    pub store: Option<Arc<Store>>,
    pub auth: AuthMode,
    /// SHA-256 of `LYNKR_ADMIN_KEY`: the admin API's bearer token.
    pub admin_key: Option<crate::store::keys::KeyHash>,
}

impl Gateway {
    /// Build from a validated config; keys are read from the environment.
    pub fn from_config(config: &Config) -> std::result::Result<Gateway, String> {
        let env = |name: &str| std::env::var(name).ok();
        let providers = config
            .providers
            .iter()
            .map(|(name, cfg)| {
                Provider::from_config(name, cfg, &env)
                    .map(Arc::new)
                    .map_err(|e| format!("providers.{name}: {e}"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let r = &config.resilience;
        let t = &config.timeouts;
        let router = Router::new(config, &providers)?;
        Ok(Gateway {
            metrics: Metrics::with_models(router.configured_models()),
            router,
            upstream: UpstreamClient::new(t),
            limits: config.limits.clone(),
            client_read: Duration::from_millis(t.client_read_ms),
            client_idle: Duration::from_millis(t.client_idle_ms),
            total: Duration::from_millis(t.total_ms),
            retry: RetryPolicy::new(&r.retry),
            breakers: providers
                .iter()
                .map(|p| (p.name.clone(), Breaker::new(&r.circuit_breaker)))
                .collect(),
            shedder: Shedder::new(&r.load_shedding),
            body_budget: BodyBudget::new(config.limits.max_buffered_bytes),
            limiter: RateLimiter::new(&r.rate_limit),
            pools: providers
                .iter()
                .filter_map(|p| Some((p.name.clone(), p.pool.clone()?)))
                .collect(),
            drain: {
                // The drain window cannot outlast the grace period.
                let grace = Duration::from_secs(config.server.grace_seconds(t));
                let window = Duration::from_millis(config.server.drain_ms).min(grace);
                Arc::new(Drain::new(window, grace))
            },
            redactor: Redactor::new(providers.iter().flat_map(|p| p.secrets())),
            store: match config.store.path.is_empty() {
                true => None,
                false => Some(Arc::new(Store::start(
                    &config.store,
                    Duration::from_millis(config.auth.refresh_ms),
                )?)),
            },
            auth: config.auth.mode,
            admin_key: admin::admin_key_from_env()?,
        })
    }

    /// The background services checking pooled endpoints' health.
    pub fn health_services(&self) -> Vec<Box<dyn pingora_core::services::ServiceWithDependents>> {
        self.pools
            .iter()
            .filter_map(|(_, pool)| pool.health_service())
            .collect()
    }

    /// An error from a provider, with any configured key it quotes redacted.
    pub fn redact(&self, mut e: ApiError) -> ApiError {
        if let std::borrow::Cow::Owned(m) = self.redactor.redact(&e.message) {
            e.message = m;
        }
        e
    }

    /// The breaker of a configured provider.
    pub fn breaker(&self, provider: &str) -> &Breaker {
        &self.breakers[provider]
    }

    /// Answer one request. `admin`: it came in on the admin listener, which
    /// serves health, metrics and the admin API (and nothing else).
    pub async fn serve(&self, session: &mut ServerSession, ctx: &mut RequestCtx, admin: bool) {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        ctx.request_id = request_id(session);
        let result = match self.admit(session, ctx, &path, admin) {
            Err(e) => Err(e),
            Ok(()) => match (method.as_str(), path.as_str()) {
                ("POST", "/v1/messages") => messages::handle(self, session, ctx).await,
                ("POST", "/v1/messages/count_tokens") => {
                    ops::count_tokens(self, session, ctx).await
                }
                ("GET", "/v1/models") => ops::models(self, session, ctx).await,
                ("GET" | "HEAD", "/") => ops::root(session, ctx).await,
                ("GET" | "HEAD", "/health/live") => ops::live(session, ctx).await,
                ("GET" | "HEAD", "/health/ready") => ops::ready(self, session, ctx).await,
                ("GET", "/metrics/prometheus") => ops::prometheus(self, session, ctx).await,
                ("GET", "/metrics/observability") => ops::observability(self, session, ctx).await,
                ("GET", "/metrics/circuit-breakers") => {
                    ops::circuit_breakers(self, session, ctx).await
                }
                ("GET", "/metrics/endpoints") => ops::endpoints(self, session, ctx).await,
                _ if admin && admin::is_admin_path(&path) => {
                    admin::handle(self, session, ctx, method.as_str(), &path).await
                }
                _ => Err(ApiError::not_found(format!(
                    "{method} {path}: no such endpoint"
                ))),
            },
        };
        if let Err(e) = result {
            respond::error(session, ctx, &e).await;
        }
    }

    /// The checks before a request's body is read: the admin listener's
    /// restriction, load shedding (nothing is counted yet: a request holds
    /// an in-flight slot only once its body has arrived), and rate limits.
    fn admit(
        &self,
        session: &ServerSession,
        ctx: &mut RequestCtx,
        path: &str,
        admin: bool,
    ) -> Result<(), ApiError> {
        if is_ops_path(path) || (admin && admin::is_admin_path(path)) {
            return Ok(());
        }
        if admin::is_admin_path(path) {
            // Never served here, whatever the request carries.
            return Err(ApiError::not_found(format!("{path}: no such endpoint")));
        }
        if admin {
            return Err(ApiError::not_found(format!(
                "{path}: the admin listener serves only health, metrics and /admin/"
            )));
        }
        if let Err(why) = self.shedder.check() {
            return Err(self.shed(ctx, why));
        }
        if let Some(store) = self.store.as_ref().filter(|s| !s.fail_open) {
            if let Err(why) = store.writable() {
                ctx.rejected_reason = Some("store_unwritable");
                let mut e = ApiError::new(
                    ErrorKind::ApiError,
                    format!("usage cannot be recorded ({why}); requests are refused until it can"),
                );
                e.status = 503;
                e.retry_after = Some(5);
                return Err(e);
            }
        }
        if self.auth == AuthMode::Keys {
            ctx.key = Some(self.authenticate(session, ctx)?);
        }
        let limits = ctx.key.as_deref().map(|k| (k.rpm, k.max_in_flight));
        if self.limiter.enabled() || limits.is_some_and(|(r, f)| r.is_some() || f.is_some()) {
            let key = rate_key(session, ctx);
            match self.limiter.check(&key, limits.unwrap_or_default()) {
                Ok(guard) => ctx.key_in_flight = guard,
                Err(limited) => return Err(rate_limited(ctx, limited)),
            }
        }
        Ok(())
    }

    /// Count a request's estimated input against its key's tokens per
    /// minute; a 429 when the minute has no room for it.
    pub fn take_tokens(
        &self,
        session: &ServerSession,
        ctx: &mut RequestCtx,
        estimate: u64,
    ) -> Result<(), ApiError> {
        let limit = self
            .limiter
            .tokens_limit(ctx.key.as_deref().and_then(|k| k.tpm));
        if limit == 0 {
            return Ok(());
        }
        let key = rate_key(session, ctx);
        match self.limiter.take_tokens(&key, limit, estimate) {
            Ok(()) => {
                ctx.tokens_taken = Some((key, estimate));
                Ok(())
            }
            Err(limited) => Err(rate_limited(ctx, limited)),
        }
    }

    /// The key a request presents (`x-api-key`, or `Authorization: Bearer`),
    /// checked against the store's table; a 401 when it is refused.
    fn authenticate(
        &self,
        session: &ServerSession,
        ctx: &mut RequestCtx,
    ) -> Result<Arc<ApiKey>, ApiError> {
        let store = self
            .store
            .as_ref()
            .expect("auth.mode keys is validated to have a store");
        let h = &session.req_header().headers;
        let presented = h
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                h.get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
            })
            .map(str::trim);
        store
            .keys()
            .check(presented, crate::store::keys::now_secs())
            .map_err(|why| {
                ctx.rejected_reason = Some("auth");
                ApiError::new(ErrorKind::AuthenticationError, why.message())
            })
    }

    /// A 403 unless the request's key may use `model`.
    pub fn check_model(&self, ctx: &mut RequestCtx, model: &str) -> Result<(), ApiError> {
        match ctx.key.as_deref() {
            Some(key) if !key.allows_model(model) => {
                ctx.rejected_reason = Some("permission");
                Err(ApiError::new(
                    ErrorKind::PermissionError,
                    format!("model {model:?} is not allowed for key {:?}", key.name),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Reserve the request's worst case against the budgets of its key,
    /// its user and its team; a 402 when one of them cannot take it.
    pub fn reserve_budget(&self, ctx: &mut RequestCtx, worst: Charges) -> Result<(), ApiError> {
        let (Some(store), Some(key)) = (&self.store, &ctx.key) else {
            return Ok(());
        };
        let book = store.budgets();
        if book.is_empty() {
            return Ok(());
        }
        match book.reserve(key, worst, crate::store::keys::now_secs()) {
            Ok(held) => {
                ctx.budget = (!held.is_empty()).then_some(held);
                Ok(())
            }
            Err(exhausted) => {
                ctx.rejected_reason = Some("budget");
                Err(ApiError::new(ErrorKind::BillingError, exhausted.message()))
            }
        }
    }

    /// The 529 for a shed request, noted for the metrics.
    fn shed(&self, ctx: &mut RequestCtx, why: Shed) -> ApiError {
        let (reason, message) = match why {
            Shed::Memory => (
                "load_shedding_memory",
                "Lynkr is overloaded (memory); retry later",
            ),
            Shed::Background => (
                "load_shedding_background",
                "background requests are shed under load",
            ),
            Shed::InFlight => (
                "load_shedding_in_flight",
                "Lynkr is overloaded (too many requests in flight); retry later",
            ),
        };
        ctx.rejected_reason = Some(reason);
        overloaded(message, self.shedder.retry_after_secs)
    }

    /// Metrics and the access log line of a finished request.
    pub fn log(&self, session: &ServerSession, ctx: &mut RequestCtx) {
        let req = session.req_header();
        let duration = ctx.started.elapsed();
        let target = ctx.target.as_ref();
        let cost = target
            .and_then(|t| t.pricing)
            .map_or(0.0, |p| p.cost(ctx.input_tokens, ctx.output_tokens));
        self.metrics.record(&Finished {
            path: req.uri.path(),
            status: ctx.status,
            error_type: ctx.error_type,
            rejected: ctx.rejected_reason,
            duration_secs: duration.as_secs_f64(),
            upstream: target.map(|t| Upstream {
                route: &t.route,
                provider: &t.provider,
                model: &t.model,
                attempts: ctx.attempts,
                first_byte_secs: ctx.first_byte_ms.map(|ms| ms as f64 / 1000.0),
                input_tokens: ctx.input_tokens,
                output_tokens: ctx.output_tokens,
                cost,
            }),
        });
        if let Some((key, taken)) = ctx.tokens_taken.take() {
            let used = ctx.input_tokens + ctx.output_tokens;
            self.limiter.add_tokens(&key, used.saturating_sub(taken));
        }
        let route = ctx.route_label().unwrap_or_default();
        let session_id = req
            .headers
            .get("x-claude-code-session-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if let Some(store) = self.store.as_ref().filter(|_| ctx.billable) {
            let row = UsageRow {
                at_ms: crate::store::now_ms(),
                request_id: ctx.request_id.clone(),
                key_id: ctx.key.as_ref().map(|k| k.id),
                user: ctx
                    .key
                    .as_ref()
                    .map_or_else(String::new, |k| k.user.clone()),
                session: session_id.to_string(),
                route: target.map_or_else(String::new, |t| t.route.clone()),
                provider: target.map_or_else(String::new, |t| t.provider.clone()),
                model: ctx.model.clone().unwrap_or_default(),
                upstream_model: target.map_or_else(String::new, |t| t.model.clone()),
                input_tokens: ctx.input_tokens,
                cache_read_tokens: ctx.cache_read_tokens,
                output_tokens: ctx.output_tokens,
                cost,
                status: ctx.status,
                latency_ms: duration.as_millis() as u64,
                ttft_ms: ctx.first_byte_ms,
                attempts: ctx.attempts,
                stream: ctx.stream,
                team: ctx
                    .key
                    .as_ref()
                    .and_then(|k| k.team.clone())
                    .unwrap_or_default(),
            };
            let charged = match ctx.budget.take() {
                Some(held) => self.settle_budget(held, &row, ctx),
                None => Default::default(),
            };
            store.record(row, charged);
        }
        AccessRecord {
            request_id: &ctx.request_id,
            session_id,
            method: req.method.as_str(),
            path: req.uri.path(),
            status: ctx.status,
            model: ctx.model.as_deref().unwrap_or(""),
            route: &route,
            provider: target.map_or("", |t| t.provider.as_str()),
            upstream_model: target.map_or("", |t| t.model.as_str()),
            attempts: ctx.attempts,
            endpoint: ctx.endpoint.as_deref().unwrap_or(""),
            stream: ctx.stream,
            input_tokens: ctx.input_tokens,
            output_tokens: ctx.output_tokens,
            first_byte_ms: ctx.first_byte_ms,
            duration_ms: duration.as_millis() as u64,
            cost,
            error: ctx.error.as_deref().unwrap_or(""),
        }
        .emit();
    }
}

impl Gateway {
    /// Replace a request's reservation by what it spent: what the provider
    /// reported, or, for a request cut short after the provider began to
    /// answer and before it reported, the input estimate.
    fn settle_budget(
        &self,
        held: budgets::Reservation,
        row: &UsageRow,
        ctx: &RequestCtx,
    ) -> budgets::Charged {
        let mut spent = Charges::spent_by(row);
        let reported = row.input_tokens + row.output_tokens > 0;
        if !reported && ctx.first_byte_ms.is_some() {
            spent.tokens = ctx.estimate as f64;
            spent.usd = ctx
                .target
                .as_ref()
                .and_then(|t| t.pricing)
                .map_or(0.0, |p| p.cost(ctx.estimate, 0));
        }
        let settled = held.settle(spent, crate::store::keys::now_secs());
        for crossed in settled.crossed {
            self.metrics.budget_soft_crossed.inc();
            tracing::warn!(
                budget = crossed.budget.label(),
                soft_limit = crossed.budget.soft,
                spent = crossed.spent,
                "budget: soft limit crossed"
            );
        }
        settled.charged
    }
}

fn overloaded(message: &str, retry_after_secs: u64) -> ApiError {
    let mut e = ApiError::new(ErrorKind::OverloadedError, message);
    e.retry_after = Some(retry_after_secs);
    e
}

/// Health, metrics and the root answer even under overload.
fn is_ops_path(path: &str) -> bool {
    path == "/" || path.starts_with("/health/") || path.starts_with("/metrics")
}

/// A caller's request id (bounded, printable), or a new one.
fn request_id(session: &ServerSession) -> String {
    session
        .req_header()
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req_{:016x}", crate::util::unique_id()))
}

/// What rate limits count by: the authenticated key, else the presented
/// key (hashed) or the client's address.
fn rate_key(session: &ServerSession, ctx: &RequestCtx) -> String {
    match ctx.key.as_deref() {
        Some(k) => format!("id:{}", k.id),
        None => client_key(session),
    }
}

/// The 429 for a request over a rate limit, noted for the metrics; a 413
/// (`x-should-retry: false`) for one that no wait would let through.
fn rate_limited(ctx: &mut RequestCtx, limited: Limited) -> ApiError {
    ctx.rejected_reason = Some(match limited {
        Limited::PerMinute(_) => "rate_limit_per_minute",
        Limited::InFlight(_) => "rate_limit_in_flight",
        Limited::TokensPerMinute(_) | Limited::TooLarge { .. } => "rate_limit_tokens",
    });
    let (message, retry_after) = match limited {
        Limited::PerMinute(n) => (
            format!("rate limit: more than {n} requests per minute for this key"),
            60,
        ),
        Limited::InFlight(n) => (
            format!("rate limit: more than {n} requests in flight for this key"),
            1,
        ),
        Limited::TokensPerMinute(n) => (
            format!("rate limit: more than {n} tokens per minute for this key"),
            60,
        ),
        Limited::TooLarge { limit, estimate } => {
            return ApiError::new(
                ErrorKind::RequestTooLarge,
                format!(
                    "this request's estimated {estimate} input tokens exceed the {limit} \
                     tokens per minute its key may use"
                ),
            )
        }
    };
    let mut e = ApiError::new(ErrorKind::RateLimitError, message);
    e.retry_after = Some(retry_after);
    e
}

/// The rate-limit key: the client's API key (hashed, never kept), else its address.
fn client_key(session: &ServerSession) -> String {
    let h = &session.req_header().headers;
    match h.get("x-api-key").or_else(|| h.get("authorization")) {
        Some(k) => format!("key:{:016x}", crate::util::fnv1a(k.to_str().unwrap_or(""))),
        None => format!(
            "addr:{}",
            session
                .client_addr()
                .and_then(|a| a.as_inet().map(|i| i.ip().to_string()))
                .unwrap_or_default()
        ),
    }
}

/// What one request did, for the access log.
pub struct RequestCtx {
    pub request_id: String,
    pub started: Instant,
    pub status: u16,
    /// Targets tried (1 unless the route fell back).
    pub attempts: u32,
    /// The pool endpoint (`host:port#index`) of the last attempt, if pooled.
    pub endpoint: Option<String>,
    /// Where the last attempt went, once the request was routed.
    pub target: Option<Routed>,
    /// Anthropic error type of an error answer.
    pub error_type: Option<&'static str>,
    /// Why the request was refused before reaching a provider (for metrics).
    pub rejected_reason: Option<&'static str>,
    pub model: Option<String>,
    pub stream: bool,
    /// Prompt tokens in all, cache reads included.
    pub input_tokens: u64,
    /// Of `input_tokens`, those read from the provider's prompt cache.
    pub cache_read_tokens: u64,
    pub output_tokens: u64,
    pub first_byte_ms: Option<u64>,
    pub error: Option<String>,
    /// Held for the request's life: its in-flight slots and body bytes.
    pub in_flight: Option<InFlight>,
    pub key_in_flight: Option<pingora_limits::inflight::Guard>,
    pub body_bytes: Option<Reservation>,
    /// The caller's key, when `auth.mode` is `keys`.
    pub key: Option<Arc<ApiKey>>,
    /// The request reached the point where it can spend: it gets a ledger row.
    pub billable: bool,
    /// Its hold on the key's budgets, settled when the request is logged.
    pub budget: Option<budgets::Reservation>,
    /// Its estimated input tokens: what a request cut short is charged.
    pub estimate: u64,
    /// The rate-limit key and the tokens counted for it at admission; the
    /// rest of what it used is counted when it ends.
    pub tokens_taken: Option<(String, u64)>,
}

impl Default for RequestCtx {
    fn default() -> Self {
        RequestCtx {
            request_id: String::new(),
            started: Instant::now(),
            status: 0,
            attempts: 0,
            endpoint: None,
            target: None,
            error_type: None,
            rejected_reason: None,
            model: None,
            stream: false,
            input_tokens: 0,
            cache_read_tokens: 0,
            output_tokens: 0,
            first_byte_ms: None,
            error: None,
            in_flight: None,
            key_in_flight: None,
            body_bytes: None,
            key: None,
            billable: false,
            budget: None,
            estimate: 0,
            tokens_taken: None,
        }
    }
}

/// The route, provider and upstream model an attempt went to.
pub struct Routed {
    pub route: String,
    pub provider: String,
    pub model: String,
    pub pricing: Option<crate::config::PricingConfig>,
}

impl Routed {
    /// `route/provider/model`: the `x-lynkr-route` header and the log's `route`.
    pub fn label(&self) -> String {
        format!("{}/{}/{}", self.route, self.provider, self.model)
    }
}

impl RequestCtx {
    /// Note the target an attempt goes to (`x-lynkr-route`, log, metrics).
    pub fn routed(&mut self, route: &str, provider: &Provider, model: &str) {
        self.target = Some(Routed {
            route: route.to_string(),
            provider: provider.name.clone(),
            model: model.to_string(),
            pricing: provider.pricing,
        });
    }

    pub fn route_label(&self) -> Option<String> {
        self.target.as_ref().map(Routed::label)
    }
}
