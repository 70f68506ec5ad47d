//! Several endpoints or keys behind one provider: how one is chosen per
//! request, and how they are health-checked.

use serde::{Deserialize, Serialize};

/// One more URL, key, or both, for a provider. Omitted fields take the
/// provider's own (`base_url`, `api_key_env`), so two entries with only
/// different `api_key_env` spread requests over two keys at one URL.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointConfig {
    pub url: Option<String>,
    pub api_key_env: Option<String>,
    /// Relative share of requests under `selection: weighted` (default 1).
    pub weight: Option<usize>,
}

/// How a provider's endpoint is chosen for a request.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Each healthy endpoint in turn; weights ignored.
    #[default]
    RoundRobin,
    /// In turn, each endpoint `weight` times as often as a weight of 1.
    Weighted,
    /// Consistent (Ketama) hashing on `X-Claude-Code-Session-Id`, so a
    /// session keeps its endpoint (and its prompt cache) while it is healthy.
    Consistent,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// A TCP connect to the endpoint's host and port.
    Tcp,
    /// `GET path` with the endpoint's key; any 2xx is healthy, so a revoked
    /// key or a failing server takes the endpoint out.
    Http,
}

/// Active health checks, run by a background service.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub kind: ProbeKind,
    /// HTTP only: the path probed on the endpoint's host (with query).
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failures that take an endpoint out.
    pub unhealthy_after: usize,
    /// Consecutive successes that bring it back.
    pub healthy_after: usize,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: ProbeKind::Http,
            path: "/".into(),
            interval_ms: 10_000,
            timeout_ms: 2_000,
            unhealthy_after: 2,
            healthy_after: 1,
        }
    }
}
