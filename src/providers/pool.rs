//! A provider's endpoints (URLs, keys, or both), chosen per request with
//! `pingora-load-balancing` and, when configured, health-checked by a
//! Pingora background service.
//!
//! Pingora's `Backend` is identified by its socket address and weight, but
//! a provider's endpoints are host names (resolved per request) and may be
//! two keys at one URL. So each endpoint gets a synthetic address that only
//! names it (`0.0.0.0:<index + 1>`), its index rides in `Backend::ext`, and
//! the health check probes the real endpoint behind that index.

use super::Endpoint;
use crate::config::{HealthCheckConfig, ProbeKind, Selection};
use async_trait::async_trait;
use pingora_core::protocols::tls::CaType;
use pingora_core::services::background::GenBackgroundService;
use pingora_core::services::ServiceWithDependents;
use pingora_error::{Error, ErrorType};
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::selection::{BackendIter, BackendSelection, Consistent, RoundRobin};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// One URL and key of a provider.
#[derive(Clone)]
pub struct Member {
    pub endpoint: Endpoint,
    pub count_tokens_endpoint: Option<Endpoint>,
    /// The header carrying this endpoint's key, and its value.
    pub auth: Option<(&'static str, String)>,
    /// `host:port#index`: names the endpoint in logs and metrics, never the key.
    pub label: String,
    pub weight: usize,
}

impl std::fmt::Debug for Member {
    // Hand-written so the key can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("label", &self.label)
            .field("weight", &self.weight)
            .finish()
    }
}

/// Index of a member, kept in its `Backend`'s extensions.
#[derive(Clone, Copy)]
struct MemberIndex(usize);

fn index_of(b: &Backend) -> usize {
    b.ext.get::<MemberIndex>().map_or(usize::MAX, |m| m.0)
}

enum Selector {
    /// Round robin and weighted: pingora's weighted round robin (weights
    /// are all 1 for plain round robin).
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Consistent(Arc<LoadBalancer<Consistent>>),
}

pub struct Pool {
    provider: String,
    members: Arc<Vec<Member>>,
    selector: Selector,
    /// The probe interval when health checks run.
    interval: Option<Duration>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("provider", &self.provider)
            .field("members", &self.members)
            .finish()
    }
}

/// Endpoint health for `/metrics/endpoints`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberStatus {
    pub endpoint: String,
    pub weight: usize,
    pub healthy: bool,
}

impl Pool {
    pub fn new(
        provider: &str,
        members: Vec<Member>,
        selection: Selection,
        health: Option<&HealthCheckConfig>,
        ca: Option<Arc<CaType>>,
    ) -> Pool {
        let members = Arc::new(members);
        let backends: BTreeSet<Backend> = members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut b = Backend {
                    addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(
                        std::net::SocketAddr::from(([0, 0, 0, 0], (i + 1) as u16)),
                    ),
                    weight: match selection {
                        Selection::Weighted => m.weight,
                        _ => 1,
                    },
                    ext: Default::default(),
                };
                b.ext.insert(MemberIndex(i));
                b
            })
            .collect();
        let check = health.map(|h| EndpointCheck {
            provider: provider.to_string(),
            members: members.clone(),
            config: h.clone(),
            ca,
            connector: pingora_core::connectors::http::Connector::new(None),
        });
        let selector = match selection {
            Selection::Consistent => Selector::Consistent(balancer(backends, check, health)),
            _ => Selector::RoundRobin(balancer(backends, check, health)),
        };
        Pool {
            provider: provider.to_string(),
            members,
            selector,
            interval: health.map(|h| Duration::from_millis(h.interval_ms)),
        }
    }

    pub fn member(&self, i: usize) -> &Member {
        &self.members[i]
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The endpoint for a request: a healthy one not in `avoid` (those this
    /// request already tried), else any healthy one; `None` when none is
    /// healthy. `key` only matters to consistent hashing.
    pub fn pick(&self, key: &[u8], avoid: &[usize]) -> Option<usize> {
        let fresh = |b: &Backend, healthy: bool| healthy && !avoid.contains(&index_of(b));
        self.select(key, &fresh)
            .or_else(|| self.select(key, &|_, healthy| healthy))
            .map(|b| index_of(&b))
    }

    fn select(&self, key: &[u8], accept: &dyn Fn(&Backend, bool) -> bool) -> Option<Backend> {
        // The selectors' fallback order is pseudo-random; bounded, then a
        // scan in order, so a healthy endpoint is never missed.
        let bound = 16 * self.members.len() + 16;
        let (chosen, backends) = match &self.selector {
            Selector::RoundRobin(lb) => (lb.select_with(key, bound, accept), lb.backends()),
            Selector::Consistent(lb) => (lb.select_with(key, bound, accept), lb.backends()),
        };
        chosen.or_else(|| {
            backends
                .get_backend()
                .iter()
                .find(|b| accept(b, backends.ready(b)))
                .cloned()
        })
    }

    fn backends(&self) -> &Backends {
        match &self.selector {
            Selector::RoundRobin(lb) => lb.backends(),
            Selector::Consistent(lb) => lb.backends(),
        }
    }

    /// Each endpoint with its current health, in configuration order.
    pub fn status(&self) -> Vec<MemberStatus> {
        let backends = self.backends();
        let mut all: Vec<_> = backends
            .get_backend()
            .iter()
            .map(|b| {
                let i = index_of(b);
                (
                    i,
                    MemberStatus {
                        endpoint: self.members[i].label.clone(),
                        weight: self.members[i].weight,
                        healthy: backends.ready(b),
                    },
                )
            })
            .collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, s)| s).collect()
    }

    /// Whether any endpoint is healthy.
    pub fn any_healthy(&self) -> bool {
        let backends = self.backends();
        backends.get_backend().iter().any(|b| backends.ready(b))
    }

    /// Seconds a client should wait for the next health check.
    pub fn retry_after_secs(&self) -> u64 {
        self.interval
            .map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// The background service running this pool's health checks, if any.
    pub fn health_service(&self) -> Option<Box<dyn ServiceWithDependents>> {
        self.interval?;
        let name = format!("health checks of {}", self.provider);
        Some(match &self.selector {
            Selector::RoundRobin(lb) => Box::new(GenBackgroundService::new(name, lb.clone())),
            Selector::Consistent(lb) => Box::new(GenBackgroundService::new(name, lb.clone())),
        })
    }
}

fn balancer<S>(
    backends: BTreeSet<Backend>,
    check: Option<EndpointCheck>,
    health: Option<&HealthCheckConfig>,
) -> Arc<LoadBalancer<S>>
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
{
    use futures_util::FutureExt;
    let mut lb = LoadBalancer::<S>::from_backends(Backends::new(Static::new(backends)));
    // Static discovery completes at once: the selector is ready before the
    // first request, whether or not the background service has started.
    lb.update()
        .now_or_never()
        .expect("static discovery does not wait")
        .expect("static discovery does not fail");
    if let (Some(check), Some(h)) = (check, health) {
        lb.set_health_check(Box::new(check));
        lb.health_check_frequency = Some(Duration::from_millis(h.interval_ms));
        lb.parallel_health_check = true;
    }
    Arc::new(lb)
}

/// Probes the real endpoint behind a synthetic backend.
struct EndpointCheck {
    provider: String,
    members: Arc<Vec<Member>>,
    config: HealthCheckConfig,
    ca: Option<Arc<CaType>>,
    connector: pingora_core::connectors::http::Connector,
}

#[async_trait]
impl HealthCheck for EndpointCheck {
    async fn check(&self, target: &Backend) -> pingora_error::Result<()> {
        let member = self
            .members
            .get(index_of(target))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "unknown endpoint"))?;
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let result = match self.config.kind {
            ProbeKind::Tcp => crate::upstream::probe_tcp(&member.endpoint, timeout).await,
            ProbeKind::Http => {
                crate::upstream::probe_http(
                    &self.connector,
                    &member.endpoint,
                    member.auth.as_ref(),
                    &self.config.path,
                    self.ca.clone(),
                    timeout,
                )
                .await
            }
        };
        result.map_err(|e| Error::explain(ErrorType::Custom("health check failed"), e))
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        let endpoint = self
            .members
            .get(index_of(target))
            .map_or("?", |m| m.label.as_str());
        if healthy {
            tracing::info!(provider = %self.provider, endpoint, "endpoint healthy again");
        } else {
            tracing::warn!(provider = %self.provider, endpoint, "endpoint unhealthy, skipped until it recovers");
        }
    }

    fn backend_summary(&self, target: &Backend) -> String {
        let endpoint = self
            .members
            .get(index_of(target))
            .map_or("?", |m| m.label.as_str());
        format!("{} endpoint {endpoint}", self.provider)
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.config.healthy_after
        } else {
            self.config.unhealthy_after
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, selection: Selection, weights: &[usize]) -> Pool {
        let members = (0..n)
            .map(|i| Member {
                endpoint: Endpoint {
                    tls: false,
                    host: "127.0.0.1".into(),
                    port: 9000 + i as u16,
                    path: "/v1/chat/completions".into(),
                },
                count_tokens_endpoint: None,
                auth: Some(("authorization", format!("Bearer key-{i}"))),
                label: format!("127.0.0.1:{}#{i}", 9000 + i),
                weight: weights.get(i).copied().unwrap_or(1),
            })
            .collect();
        Pool::new("p", members, selection, None, None)
    }

    fn set_healthy(p: &Pool, i: usize, healthy: bool) {
        let b = p.backends();
        let backend = b
            .get_backend()
            .iter()
            .find(|b| index_of(b) == i)
            .cloned()
            .unwrap();
        b.set_enable(&backend, healthy);
    }

    fn counts(p: &Pool, picks: usize) -> Vec<usize> {
        let mut c = vec![0; p.members.len()];
        for _ in 0..picks {
            c[p.pick(b"", &[]).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn round_robin_takes_each_in_turn_and_ignores_weights() {
        let p = pool(3, Selection::RoundRobin, &[5, 1, 1]);
        assert_eq!(counts(&p, 30), vec![10, 10, 10]);
    }

    #[test]
    fn weighted_follows_the_weights() {
        let p = pool(2, Selection::Weighted, &[3, 1]);
        assert_eq!(counts(&p, 40), vec![30, 10]);
    }

    #[test]
    fn unhealthy_and_already_tried_endpoints_are_avoided() {
        let p = pool(3, Selection::RoundRobin, &[]);
        set_healthy(&p, 1, false);
        assert_eq!(counts(&p, 30)[1], 0);
        for _ in 0..10 {
            let first = p.pick(b"", &[]).unwrap();
            let second = p.pick(b"", &[first]).unwrap();
            assert_ne!(first, second);
            assert_ne!(second, 1);
        }
        // Everything tried: a healthy one again rather than none.
        assert!(matches!(p.pick(b"", &[0, 2]), Some(0 | 2)));
        set_healthy(&p, 0, false);
        set_healthy(&p, 2, false);
        assert!(!p.any_healthy());
        assert_eq!(p.pick(b"", &[]), None);
        let healthy: Vec<bool> = p.status().iter().map(|s| s.healthy).collect();
        assert_eq!(healthy, vec![false, false, false]);
    }

    #[test]
    fn consistent_hashing_moves_only_the_keys_of_a_lost_endpoint() {
        let p = pool(4, Selection::Consistent, &[]);
        let keys: Vec<String> = (0..200).map(|i| format!("session-{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| p.pick(k.as_bytes(), &[]).unwrap())
            .collect();
        // Stable, and spread over every endpoint.
        for (k, m) in keys.iter().zip(&before) {
            assert_eq!(p.pick(k.as_bytes(), &[]), Some(*m));
        }
        for i in 0..4 {
            assert!(before.contains(&i), "no key on endpoint {i}");
        }
        set_healthy(&p, 2, false);
        for (k, m) in keys.iter().zip(&before) {
            let now = p.pick(k.as_bytes(), &[]).unwrap();
            if *m == 2 {
                assert_ne!(now, 2);
            } else {
                assert_eq!(now, *m, "{k} moved although its endpoint is healthy");
            }
        }
    }
}
