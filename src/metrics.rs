//! Prometheus metrics (`/metrics/prometheus`) and the JSON summary behind
//! `/metrics/observability`. Every label value is bounded: paths are the
//! gateway's own endpoints, providers and routes come from the
//! configuration, and model names are those the configuration names (its
//! targets' models and exact routes; anything else counts as `other`),
//! capped at `MAX_MODELS` distinct values.

use prometheus::{
    Counter, CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

/// Distinct model label values kept; later ones are counted as `other`.
pub const MAX_MODELS: usize = 64;
/// Distinct routes counted in the JSON summary; later ones as `other`.
const MAX_ROUTES: usize = 256;
/// Recent requests the JSON summary's percentiles are computed over.
const LATENCY_WINDOW: usize = 4096;

/// Every `reason` of `http_requests_rejected_total`, exported from the
/// start (at 0) so rate() alerts see the series before the first refusal.
pub const REJECT_REASONS: &[&str] = &[
    "load_shedding_in_flight",
    "load_shedding_memory",
    "load_shedding_background",
    "rate_limit_per_minute",
    "rate_limit_in_flight",
    "rate_limit_tokens",
    "targets_unavailable",
    "request_bytes_budget",
    "store_unwritable",
    "auth",
    "permission",
    "budget",
];

/// Request durations: LLM calls run from milliseconds to minutes.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
const TTFT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// What one finished request did, as the access log line sees it.
#[derive(Debug, Clone, Default)]
pub struct Finished<'a> {
    pub path: &'a str,
    pub status: u16,
    /// Anthropic error type of an error answer.
    pub error_type: Option<&'a str>,
    /// Why it was refused before reaching a provider (shedding, rate limit).
    pub rejected: Option<&'a str>,
    pub duration_secs: f64,
    /// Set once the request was routed.
    pub upstream: Option<Upstream<'a>>,
}

#[derive(Debug, Clone, Default)]
pub struct Upstream<'a> {
    pub route: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub attempts: u32,
    pub first_byte_secs: Option<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: f64,
}

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    errors: IntCounterVec,
    rejected: IntCounterVec,
    duration: HistogramVec,
    first_token: HistogramVec,
    upstream_duration: HistogramVec,
    tokens_input: IntCounterVec,
    tokens_output: IntCounterVec,
    cost: CounterVec,
    retries: IntCounterVec,
    /// Set at scrape time from the gateway's own state.
    pub in_flight: IntGauge,
    pub body_bytes_held: IntGauge,
    pub budget_reservations: IntGauge,
    pub budget_soft_crossed: prometheus::IntCounter,
    pub breaker_state: IntGaugeVec,
    pub endpoint_healthy: IntGaugeVec,
    state: Mutex<State>,
    started: Instant,
}

/// Everything `record` updates under its one lock.
#[derive(Default)]
struct State {
    by_path: HashMap<(&'static str, &'static str), (IntCounter, Histogram)>,
    /// Provider -> model label -> its metric children.
    by_target: HashMap<String, HashMap<String, TargetChildren>>,
    /// Model label values in use (at most `MAX_MODELS`).
    models: usize,
    /// The model names labels may carry; `None`: any (up to the cap).
    allowed_models: Option<std::collections::HashSet<String>>,
    summary: Summary,
}

struct TargetChildren {
    first_token: Histogram,
    duration: Histogram,
    tokens_input: IntCounter,
    tokens_output: IntCounter,
    cost: Counter,
    retries: IntCounter,
}

impl State {
    fn upstream_children(&mut self, m: &Metrics, provider: &str, model: &str) -> &TargetChildren {
        if !self.by_target.contains_key(provider) {
            self.by_target.insert(provider.to_string(), HashMap::new());
        }
        let allowed = self
            .allowed_models
            .as_ref()
            .is_none_or(|a| a.contains(model));
        let known = self.by_target[provider].contains_key(model);
        let model = if allowed && (known || self.models < MAX_MODELS) {
            model
        } else {
            "other"
        };
        let models = &mut self.models;
        let per_model = self.by_target.get_mut(provider).expect("inserted above");
        if !per_model.contains_key(model) {
            if model != "other" {
                *models += 1;
            }
            let labels = [provider, model];
            per_model.insert(
                model.to_string(),
                TargetChildren {
                    first_token: m.first_token.with_label_values(&[provider]),
                    duration: m.upstream_duration.with_label_values(&[provider]),
                    tokens_input: m.tokens_input.with_label_values(&labels),
                    tokens_output: m.tokens_output.with_label_values(&labels),
                    cost: m.cost.with_label_values(&labels),
                    retries: m.retries.with_label_values(&[provider]),
                },
            );
        }
        &per_model[model]
    }
}

/// Running totals and a window of recent latencies, for the JSON summary.
#[derive(Default)]
struct Summary {
    requests: u64,
    errors: u64,
    latencies_ms: Vec<f64>,
    first_token_ms: Vec<f64>,
    next: usize,
    next_ttft: usize,
    input_tokens: u64,
    output_tokens: u64,
    cost: f64,
    routes: BTreeMap<String, u64>,
    providers: BTreeMap<String, ProviderTotals>,
}

#[derive(Default, Clone, serde::Serialize)]
struct ProviderTotals {
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost: f64,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str], b: &[f64]) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(b.to_vec()), labels)
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process collector");
        let in_flight = IntGauge::new("http_requests_in_flight", "API requests being served now.")
            .expect("valid metric");
        r.register(Box::new(in_flight.clone()))
            .expect("unique metric");
        let rejected = counter(
            &r,
            "http_requests_rejected_total",
            "Requests refused before reaching a provider, by reason.",
            &["reason"],
        );
        for reason in REJECT_REASONS {
            rejected.with_label_values(&[reason]);
        }
        let body_bytes_held = IntGauge::new(
            "http_request_body_bytes_held",
            "Request body bytes held now over all requests (bounded by limits.max_buffered_bytes).",
        )
        .expect("valid metric");
        r.register(Box::new(body_bytes_held.clone()))
            .expect("unique metric");
        let budget_reservations = IntGauge::new(
            "budget_reservations_in_flight",
            "Requests holding a budget reservation now (reserved before forwarding, settled when they end).",
        )
        .expect("valid metric");
        r.register(Box::new(budget_reservations.clone()))
            .expect("unique metric");
        let budget_soft_crossed = prometheus::IntCounter::new(
            "budget_soft_limit_crossed_total",
            "Times a budget's soft limit was crossed (once per budget and period).",
        )
        .expect("valid metric");
        r.register(Box::new(budget_soft_crossed.clone()))
            .expect("unique metric");
        Metrics {
            body_bytes_held,
            budget_reservations,
            budget_soft_crossed,
            rejected,
            requests: counter(
                &r,
                "http_requests_total",
                "Requests answered, by endpoint path and status.",
                &["path", "status"],
            ),
            errors: counter(
                &r,
                "http_request_errors_total",
                "Requests answered with an error (status >= 400), by Anthropic error type.",
                &["path", "type"],
            ),
            duration: histogram(
                &r,
                "http_request_duration_seconds",
                "From the request's arrival to the end of its response.",
                &["path"],
                DURATION_BUCKETS,
            ),
            first_token: histogram(
                &r,
                "upstream_time_to_first_token_seconds",
                "From the request's arrival to the provider's response header (first token of a stream).",
                &["provider"],
                TTFT_BUCKETS,
            ),
            upstream_duration: histogram(
                &r,
                "upstream_request_duration_seconds",
                "From the request's arrival to the end of the provider's response, for routed requests.",
                &["provider"],
                DURATION_BUCKETS,
            ),
            tokens_input: counter(
                &r,
                "tokens_input_total",
                "Input tokens the providers reported (cache reads included).",
                &["provider", "model"],
            ),
            tokens_output: counter(
                &r,
                "tokens_output_total",
                "Output tokens the providers reported.",
                &["provider", "model"],
            ),
            cost: {
                let c = CounterVec::new(
                    Opts::new(
                        "cost_total",
                        "Cost in the currency of providers.NAME.pricing, from reported tokens.",
                    ),
                    &["provider", "model"],
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            retries: counter(
                &r,
                "retries_total",
                "Attempts after a request's first, by the provider that answered last.",
                &["provider"],
            ),
            in_flight,
            breaker_state: gauge(
                &r,
                "circuit_breaker_state",
                "1 for each provider's current breaker state, 0 for the others.",
                &["provider", "state"],
            ),
            endpoint_healthy: gauge(
                &r,
                "upstream_endpoint_healthy",
                "1 while a pooled endpoint passes its health checks.",
                &["provider", "endpoint"],
            ),
            registry: r,
            state: Mutex::new(State::default()),
            started: Instant::now(),
        }
    }

    /// Metrics whose model labels are only the names given (the
    /// configuration's); any other model counts as `other`.
    pub fn with_models(names: impl IntoIterator<Item = String>) -> Self {
        let m = Self::new();
        m.state.lock().unwrap().allowed_models = Some(names.into_iter().collect());
        m
    }

    /// A refusal before the request reached routing (shedding, rate limit).
    pub fn reject(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    /// Record one finished request: one lock, metric children looked up
    /// once per label set and cached (the middleware bench measures this).
    pub fn record(&self, f: &Finished) {
        let path = path_label(f.path);
        let status = status_label(f.status);
        let mut guard = self.state.lock().unwrap();
        let st = &mut *guard;
        let (requests, duration) = st.by_path.entry((path, status)).or_insert_with(|| {
            (
                self.requests.with_label_values(&[path, status]),
                self.duration.with_label_values(&[path]),
            )
        });
        requests.inc();
        duration.observe(f.duration_secs);
        if f.status >= 400 {
            self.errors
                .with_label_values(&[path, f.error_type.unwrap_or("api_error")])
                .inc();
        }
        if let Some(reason) = f.rejected {
            self.reject(reason);
        }
        if let Some(u) = &f.upstream {
            let c = st.upstream_children(self, u.provider, u.model);
            c.first_token
                .observe(u.first_byte_secs.unwrap_or(f.duration_secs));
            c.duration.observe(f.duration_secs);
            c.tokens_input.inc_by(u.input_tokens);
            c.tokens_output.inc_by(u.output_tokens);
            c.cost.inc_by(u.cost);
            if u.attempts > 1 {
                c.retries.inc_by(u64::from(u.attempts - 1));
            }
        }
        st.summary.add(f);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding does not fail");
        out
    }

    /// The `/metrics/observability` summary.
    pub fn summary_json(&self) -> serde_json::Value {
        let state = self.state.lock().unwrap();
        let s = &state.summary;
        serde_json::json!({
            "uptime_secs": self.started.elapsed().as_secs(),
            "requests": s.requests,
            "errors": s.errors,
            "in_flight": self.in_flight.get(),
            "latency_ms": percentiles(&s.latencies_ms),
            "time_to_first_token_ms": percentiles(&s.first_token_ms),
            "tokens": {"input": s.input_tokens, "output": s.output_tokens},
            "cost": s.cost,
            "routes": s.routes,
            "providers": s.providers,
        })
    }
}

impl Summary {
    fn add(&mut self, f: &Finished) {
        self.requests += 1;
        if f.status >= 400 {
            self.errors += 1;
        }
        push_window(
            &mut self.latencies_ms,
            &mut self.next,
            f.duration_secs * 1000.0,
        );
        let Some(u) = &f.upstream else { return };
        if let Some(t) = u.first_byte_secs {
            push_window(&mut self.first_token_ms, &mut self.next_ttft, t * 1000.0);
        }
        self.input_tokens += u.input_tokens;
        self.output_tokens += u.output_tokens;
        self.cost += u.cost;
        // Look up before inserting: no allocation once a name is known.
        let full = self.routes.len() >= MAX_ROUTES;
        match self.routes.get_mut(u.route) {
            Some(n) => *n += 1,
            None if !full => {
                self.routes.insert(u.route.to_string(), 1);
            }
            None => *self.routes.entry("other".into()).or_default() += 1,
        }
        if !self.providers.contains_key(u.provider) {
            self.providers
                .insert(u.provider.to_string(), ProviderTotals::default());
        }
        let p = self.providers.get_mut(u.provider).expect("inserted above");
        p.requests += 1;
        p.input_tokens += u.input_tokens;
        p.output_tokens += u.output_tokens;
        p.cost += u.cost;
    }
}

/// Append to a bounded window, overwriting the oldest once full.
fn push_window(window: &mut Vec<f64>, next: &mut usize, value: f64) {
    if window.len() < LATENCY_WINDOW {
        window.push(value);
    } else {
        window[*next % LATENCY_WINDOW] = value;
        *next += 1;
    }
}

fn percentiles(window: &[f64]) -> serde_json::Value {
    if window.is_empty() {
        return serde_json::json!({"count": 0});
    }
    let mut sorted = window.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        (sorted[i] * 1000.0).round() / 1000.0
    };
    serde_json::json!({
        "count": sorted.len(),
        "p50": at(0.50),
        "p90": at(0.90),
        "p95": at(0.95),
        "p99": at(0.99),
        "max": at(1.0),
    })
}

/// The gateway's endpoints by name; anything else is `other`.
fn path_label(path: &str) -> &'static str {
    match path {
        "/v1/messages" => "/v1/messages",
        "/v1/messages/count_tokens" => "/v1/messages/count_tokens",
        "/v1/models" => "/v1/models",
        "/" => "/",
        "/health/live" => "/health/live",
        "/health/ready" => "/health/ready",
        p if p.starts_with("/metrics/") => "/metrics",
        _ => "other",
    }
}

fn status_label(status: u16) -> &'static str {
    const KNOWN: &[(u16, &str)] = &[
        (200, "200"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (413, "413"),
        (429, "429"),
        (499, "499"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
        (529, "529"),
    ];
    KNOWN.iter().find(|(s, _)| *s == status).map_or(
        match status {
            0..=299 => "2xx",
            300..=499 => "4xx",
            _ => "5xx",
        },
        |(_, l)| l,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(model: &str, status: u16, secs: f64) -> Finished<'_> {
        Finished {
            path: "/v1/messages",
            status,
            error_type: (status >= 400).then_some("overloaded_error"),
            rejected: None,
            duration_secs: secs,
            upstream: Some(Upstream {
                route: "default",
                provider: "openai",
                model,
                attempts: 3,
                first_byte_secs: Some(secs / 2.0),
                input_tokens: 1000,
                output_tokens: 10,
                cost: 0.5,
            }),
        }
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn records_the_named_series() {
        let m = Metrics::new();
        m.record(&routed("gpt-4o", 200, 0.2));
        m.record(&routed("gpt-4o", 529, 0.02));
        m.record(&Finished {
            path: "/v1/messages/req_123",
            status: 404,
            error_type: Some("not_found_error"),
            ..Default::default()
        });
        m.reject("load_shedding_in_flight");
        let text = String::from_utf8(m.render()).unwrap();
        let v = |s: &str| sample(&text, s).unwrap_or_else(|| panic!("no {s} in\n{text}"));
        assert_eq!(
            v(r#"http_requests_total{path="/v1/messages",status="200"}"#),
            1.0
        );
        assert_eq!(v(r#"http_requests_total{path="other",status="404"}"#), 1.0);
        assert_eq!(
            v(r#"http_request_errors_total{path="/v1/messages",type="overloaded_error"}"#),
            1.0
        );
        assert_eq!(
            v(r#"http_requests_rejected_total{reason="load_shedding_in_flight"}"#),
            1.0
        );
        assert_eq!(
            v(r#"tokens_input_total{model="gpt-4o",provider="openai"}"#),
            2000.0
        );
        assert_eq!(
            v(r#"tokens_output_total{model="gpt-4o",provider="openai"}"#),
            20.0
        );
        assert_eq!(v(r#"cost_total{model="gpt-4o",provider="openai"}"#), 1.0);
        assert_eq!(v(r#"retries_total{provider="openai"}"#), 4.0);
        assert_eq!(
            v(r#"http_request_duration_seconds_bucket{path="/v1/messages",le="0.025"}"#),
            1.0
        );
        assert_eq!(
            v(r#"upstream_time_to_first_token_seconds_count{provider="openai"}"#),
            2.0
        );
        assert!(text.contains("process_resident_memory_bytes"));
        assert!(!text.contains("req_123"), "raw paths are never labels");
    }

    #[test]
    fn model_labels_are_bounded() {
        let m = Metrics::new();
        let names: Vec<String> = (0..MAX_MODELS + 10).map(|i| format!("m{i}")).collect();
        for n in &names {
            m.record(&routed(n, 200, 0.1));
        }
        let text = String::from_utf8(m.render()).unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with("tokens_input_total{"))
            .count();
        assert_eq!(series, MAX_MODELS + 1);
        assert_eq!(
            sample(
                &text,
                r#"tokens_input_total{model="other",provider="openai"}"#
            ),
            Some(10_000.0)
        );
    }

    /// Regression: the model label took the first 64 names clients sent
    /// (a passthrough target forwards any), so clients chose the series.
    #[test]
    fn model_labels_are_the_configured_names() {
        let m = Metrics::with_models(["gpt-4o".to_string()]);
        for n in ["gpt-4o", "client-invented-1", "client-invented-2"] {
            m.record(&routed(n, 200, 0.1));
        }
        let text = String::from_utf8(m.render()).unwrap();
        assert_eq!(
            sample(
                &text,
                r#"tokens_input_total{model="gpt-4o",provider="openai"}"#
            ),
            Some(1000.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"tokens_input_total{model="other",provider="openai"}"#
            ),
            Some(2000.0)
        );
        assert!(!text.contains("client-invented"));
    }

    #[test]
    fn summary_has_percentiles_tokens_cost_and_routes() {
        let m = Metrics::new();
        for i in 1..=100 {
            m.record(&routed("gpt-4o", 200, i as f64 / 1000.0));
        }
        let s = m.summary_json();
        assert_eq!(s["requests"], 100);
        assert_eq!(s["latency_ms"]["p50"], 50.0);
        assert_eq!(s["latency_ms"]["p99"], 99.0);
        assert_eq!(s["tokens"]["input"], 100_000);
        assert_eq!(s["cost"], 50.0);
        assert_eq!(s["routes"]["default"], 100);
        assert_eq!(s["providers"]["openai"]["requests"], 100);
    }
}
