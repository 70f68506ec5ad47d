//! Semantic checks of a parsed configuration: every problem, with its path.

use super::{Config, Preset};
use std::net::SocketAddr;

pub const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

fn keys_on_every_endpoint(prov: &super::ProviderConfig) -> bool {
    !prov.endpoints.is_empty() && prov.endpoints.iter().all(|e| e.api_key_env.is_some())
}

/// `endpoints`, `selection` and `health_check` of one provider.
fn pool_problems(
    path: &str,
    prov: &super::ProviderConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<Problem> {
    use super::Selection;
    let mut p = Vec::new();
    if prov.endpoints.is_empty() {
        if prov.selection != Selection::default() {
            p.push(Problem::new(
                format!("{path}.selection"),
                "applies only with endpoints",
            ));
        }
        if prov.health_check.is_some() {
            p.push(Problem::new(
                format!("{path}.health_check"),
                "applies only with endpoints",
            ));
        }
    }
    for (i, e) in prov.endpoints.iter().enumerate() {
        let at = format!("{path}.endpoints.{i}");
        if let Some(u) = &e.url {
            match url::Url::parse(u) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                _ => p.push(Problem::new(
                    format!("{at}.url"),
                    format!("not a URL: {u:?}"),
                )),
            }
        }
        if let Some(var) = &e.api_key_env {
            if env(var).is_none_or(|v| v.is_empty()) {
                p.push(Problem::new(
                    format!("{at}.api_key_env"),
                    format!("environment variable {var} is not set"),
                ));
            }
        }
        match e.weight {
            Some(0) => p.push(Problem::new(format!("{at}.weight"), "must be at least 1")),
            Some(_) if prov.selection != Selection::Weighted => p.push(Problem::new(
                format!("{at}.weight"),
                "applies only with selection: weighted",
            )),
            _ => {}
        }
    }
    if let Some(h) = &prov.health_check {
        let at = format!("{path}.health_check");
        if !h.path.starts_with('/') {
            p.push(Problem::new(format!("{at}.path"), "must start with /"));
        }
        for (name, v) in [
            ("interval_ms", h.interval_ms),
            ("timeout_ms", h.timeout_ms),
            ("unhealthy_after", h.unhealthy_after as u64),
            ("healthy_after", h.healthy_after as u64),
        ] {
            if v == 0 {
                p.push(Problem::new(
                    format!("{at}.{name}"),
                    "must be greater than 0",
                ));
            }
        }
    }
    p
}

pub(super) fn validate(c: &Config, env: &dyn Fn(&str) -> Option<String>) -> Vec<Problem> {
    let mut p = Vec::new();
    if c.server.listen.is_empty() {
        p.push(Problem::new(
            "server.listen",
            "at least one address is required",
        ));
    }
    for (i, addr) in c.server.listen.iter().enumerate() {
        if addr.parse::<SocketAddr>().is_err() {
            p.push(Problem::new(
                format!("server.listen.{i}"),
                format!("not an address (ip:port): {addr:?}"),
            ));
        }
    }
    if let Some(addr) = &c.server.admin_listen {
        if addr.parse::<SocketAddr>().is_err() {
            p.push(Problem::new(
                "server.admin_listen",
                format!("not an address (ip:port): {addr:?}"),
            ));
        } else if c.server.listen.contains(addr) {
            p.push(Problem::new(
                "server.admin_listen",
                "must differ from every server.listen address",
            ));
        }
    }
    if c.auth.mode == super::AuthMode::Keys && c.store.path.is_empty() {
        p.push(Problem::new(
            "auth.mode",
            "keys needs a store: set store.path (or LYNKR_DB_PATH)",
        ));
    }
    if !c.store.path.is_empty() && c.store.flush_ms == 0 {
        p.push(Problem::new("store.flush_ms", "must be greater than 0"));
    }
    if c.auth.refresh_ms == 0 {
        p.push(Problem::new("auth.refresh_ms", "must be greater than 0"));
    }
    if c.server.threads == 0 {
        p.push(Problem::new("server.threads", "must be at least 1"));
    }
    if c.limits.max_body_bytes == 0 {
        p.push(Problem::new(
            "limits.max_body_bytes",
            "must be greater than 0",
        ));
    }
    if c.limits.max_buffered_bytes < c.limits.max_body_bytes {
        p.push(Problem::new(
            "limits.max_buffered_bytes",
            "must be at least limits.max_body_bytes",
        ));
    }
    if c.limits.max_response_bytes == 0 {
        p.push(Problem::new(
            "limits.max_response_bytes",
            "must be greater than 0",
        ));
    }
    let t = &c.timeouts;
    for (name, v) in [
        ("connect_ms", t.connect_ms),
        ("first_byte_ms", t.first_byte_ms),
        ("read_ms", t.read_ms),
        ("write_ms", t.write_ms),
        ("pool_idle_ms", t.pool_idle_ms),
        ("total_ms", t.total_ms),
        ("client_read_ms", t.client_read_ms),
        ("client_idle_ms", t.client_idle_ms),
    ] {
        if v == 0 {
            p.push(Problem::new(
                format!("timeouts.{name}"),
                "must be greater than 0",
            ));
        }
    }
    if c.logging
        .level
        .parse::<tracing_subscriber::EnvFilter>()
        .is_err()
    {
        p.push(Problem::new(
            "logging.level",
            format!("not a log level or filter: {:?}", c.logging.level),
        ));
    }

    if c.providers.is_empty() {
        p.push(Problem::new(
            "providers",
            "at least one provider is required",
        ));
    }
    for (name, prov) in &c.providers {
        let path = format!("providers.{name}");
        match url::Url::parse(&prov.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            // Bedrock's URL follows from its region.
            _ if prov.kind == super::ProviderKind::Bedrock && prov.base_url.is_empty() => {}
            _ => p.push(Problem::new(
                format!("{path}.base_url"),
                format!("not a URL: {:?}", prov.base_url),
            )),
        }
        match &prov.api_key_env {
            Some(var) if env(var).is_none_or(|v| v.is_empty()) => p.push(Problem::new(
                format!("{path}.api_key_env"),
                format!("environment variable {var} is not set"),
            )),
            // Keys named only on the endpoints will do.
            None if prov.preset.requires_key() && !keys_on_every_endpoint(prov) => {
                p.push(Problem::new(
                    format!("{path}.api_key_env"),
                    format!(
                        "required for preset {:?}: name the variable holding the API key",
                        prov.preset
                    ),
                ))
            }
            _ => {}
        }
        let has = |var: &str| env(var).is_some_and(|v| !v.is_empty());
        if prov.kind == super::ProviderKind::Bedrock
            && prov.api_key_env.is_none()
            && !(has("AWS_ACCESS_KEY_ID") && has("AWS_SECRET_ACCESS_KEY"))
        {
            p.push(Problem::new(
                format!("{path}.api_key_env"),
                "Bedrock needs credentials: a Bedrock API key (api_key_env) or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ));
        }
        if prov.preset == Preset::Azure && prov.deployment.is_none() && prov.model.is_none() {
            p.push(Problem::new(
                format!("{path}.deployment"),
                "required for Azure (or set model)",
            ));
        }
        if let Some(file) = &prov.tls_ca_file {
            if let Err(e) = crate::util::tls::load_ca_file(file) {
                p.push(Problem::new(format!("{path}.tls_ca_file"), e));
            }
        }
        if prov.capabilities.max_output_tokens == Some(0) {
            p.push(Problem::new(
                format!("{path}.capabilities.max_output_tokens"),
                "must be greater than 0",
            ));
        }
        p.extend(pool_problems(&path, prov, env));
        if let Some(price) = &prov.pricing {
            if !(price.input_per_million >= 0.0 && price.output_per_million >= 0.0) {
                p.push(Problem::new(
                    format!("{path}.pricing"),
                    "prices must not be negative",
                ));
            }
        }
        for header in prov.headers.keys() {
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                p.push(Problem::new(
                    format!("{path}.headers.{header}"),
                    "not a valid header name",
                ));
            }
        }
    }

    let r = &c.resilience;
    if r.retry.max_attempts == 0 {
        p.push(Problem::new(
            "resilience.retry.max_attempts",
            "must be at least 1",
        ));
    }
    if r.retry.base_ms > r.retry.cap_ms {
        p.push(Problem::new(
            "resilience.retry.base_ms",
            "must not exceed cap_ms",
        ));
    }
    let b = &r.circuit_breaker;
    for (name, v) in [
        ("failure_threshold", b.failure_threshold as u64),
        ("success_threshold", b.success_threshold as u64),
        ("half_open_probes", b.half_open_probes as u64),
        ("open_ms", b.open_ms),
        ("window_secs", b.window_secs),
    ] {
        if v == 0 {
            p.push(Problem::new(
                format!("resilience.circuit_breaker.{name}"),
                "must be greater than 0",
            ));
        }
    }
    if !(0.0..=1.0).contains(&b.failure_rate) {
        p.push(Problem::new(
            "resilience.circuit_breaker.failure_rate",
            "must be between 0 and 1",
        ));
    }
    let s = &r.load_shedding;
    if !(s.background_share > 0.0 && s.background_share <= 1.0) {
        p.push(Problem::new(
            "resilience.load_shedding.background_share",
            "must be in (0, 1]",
        ));
    }
    if s.max_memory < 0.0 {
        p.push(Problem::new(
            "resilience.load_shedding.max_memory",
            "must not be negative",
        ));
    }
    if c.models.default.is_none() && c.models.routes.is_empty() {
        p.push(Problem::new(
            "models",
            "no route: set models.default or models.routes",
        ));
    }
    if let Some(targets) = &c.models.default {
        check_targets(c, "models.default", targets, &mut p);
    }
    for (i, route) in c.models.routes.iter().enumerate() {
        check_pattern(&format!("models.routes.{i}.match"), &route.pattern, &mut p);
        check_targets(
            c,
            &format!("models.routes.{i}.target"),
            &route.target,
            &mut p,
        );
    }
    let r = &c.routing;
    for (name, targets) in [
        ("background", &r.background),
        ("think", &r.think),
        ("web_search", &r.web_search),
    ] {
        if let Some(t) = targets {
            check_targets(c, &format!("routing.{name}"), t, &mut p);
        }
    }
    if let Some(lc) = &r.long_context {
        check_targets(c, "routing.long_context.targets", &lc.targets, &mut p);
        if lc.threshold_tokens == 0 {
            p.push(Problem::new(
                "routing.long_context.threshold_tokens",
                "must be greater than 0",
            ));
        }
    }
    for (i, rule) in r.rules.iter().enumerate() {
        let path = format!("routing.rules.{i}");
        if let Some(model) = &rule.model {
            check_pattern(&format!("{path}.model"), model, &mut p);
        }
        if rule.name.trim().is_empty() {
            p.push(Problem::new(format!("{path}.name"), "must not be empty"));
        }
        check_targets(c, &format!("{path}.targets"), &rule.targets, &mut p);
    }
    p
}

/// Claude model names a `claude*` glob is checked against: a glob that
/// matches none of them is almost surely a typo (`claude-*haku*`).
pub const KNOWN_CLAUDE_MODELS: &[&str] = &[
    "claude-3-haiku-20240307",
    "claude-3-5-haiku-20241022",
    "claude-3-5-sonnet-20241022",
    "claude-3-7-sonnet-20250219",
    "claude-haiku-4-5",
    "claude-haiku-4-5-20251001",
    "claude-sonnet-4-20250514",
    "claude-sonnet-4-5",
    "claude-sonnet-4-5-20250929",
    "claude-opus-4-20250514",
    "claude-opus-4-1-20250805",
    "claude-opus-4-5",
    "claude-opus-4-8",
];

fn check_pattern(path: &str, pattern: &str, p: &mut Vec<Problem>) {
    if pattern.trim().is_empty() {
        p.push(Problem::new(path, "must not be empty"));
    } else if pattern.starts_with("claude")
        && pattern.contains(['*', '?'])
        && !KNOWN_CLAUDE_MODELS
            .iter()
            .any(|m| crate::util::glob_match(pattern, m))
    {
        p.push(Problem::new(
            path,
            format!("the glob {pattern:?} matches no Claude model name"),
        ));
    }
}

fn check_targets(c: &Config, path: &str, targets: &super::Targets, p: &mut Vec<Problem>) {
    let list = targets.list();
    if list.is_empty() {
        p.push(Problem::new(path, "at least one target is required"));
    }
    for (i, target) in list.iter().enumerate() {
        let path = match targets {
            super::Targets::One(_) => path.to_string(),
            super::Targets::Chain(_) => format!("{path}.{i}"),
            super::Targets::Balanced(_) => format!("{path}.targets.{i}"),
        };
        check_target(c, &path, target, p);
    }
}

fn check_target(c: &Config, path: &str, target: &str, p: &mut Vec<Problem>) {
    let (provider, model) = match target.split_once(':') {
        Some((prov, model)) => (prov, Some(model)),
        None => (target, None),
    };
    match c.providers.get(provider) {
        None => p.push(Problem::new(path, format!("unknown provider {provider:?}"))),
        Some(prov)
            if model.is_none_or(str::is_empty)
                && prov.model.is_none()
                && prov.deployment.is_none()
                && prov.kind != super::ProviderKind::Anthropic =>
        {
            p.push(Problem::new(
                path,
                format!("no model given and provider {provider:?} has no default model"),
            ))
        }
        _ => {}
    }
}
