//! Builds the Pingora server from the configuration.

use crate::config::Config;
use crate::gateway::Gateway;
use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Raises the gateway's shutting-down flag (`/health/ready` turns 503) when
/// Pingora broadcasts graceful shutdown: at SIGTERM, and at SIGQUIT once the
/// listeners have been handed to the new process.
struct ShutdownFlag(Arc<AtomicBool>);

#[async_trait]
impl BackgroundService for ShutdownFlag {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        self.0.store(true, Ordering::Relaxed);
        tracing::info!(
            "graceful shutdown started: readiness now fails, in-flight requests continue"
        );
    }
}

/// Pingora's own settings, taken from the `server` section.
pub fn server_conf(config: &Config) -> ServerConf {
    let s = &config.server;
    let mut conf = ServerConf {
        daemon: s.daemon,
        error_log: s.error_log.clone(),
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        threads: s.threads,
        grace_period_seconds: Some(s.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout_seconds),
        ..ServerConf::default()
    };
    conf.version = 1;
    conf
}

/// A server with the gateway listening on every `server.listen` address.
/// `opt` carries Pingora's flags (`-u`, `-d`, `-t`); its `-c` path is ours.
pub fn build(config: &Config, mut opt: Opt) -> Result<Server, String> {
    opt.conf = None;
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(config));
    server.bootstrap();
    let gateway = Gateway::from_config(config)?;
    let health_checks = gateway.health_services();
    let shutdown = ShutdownFlag(gateway.shutting_down.clone());
    let mut service = pingora_proxy::http_proxy_service(&server.configuration, gateway);
    service.threads = Some(config.server.threads);
    for addr in &config.server.listen {
        service.add_tcp(addr);
    }
    // Same service; request_filter restricts this listener to health and metrics.
    if let Some(admin) = &config.server.admin_listen {
        service.add_tcp(admin);
    }
    server.add_service(service);
    server.add_services(health_checks);
    server.add_service(background_service("shutdown flag", shutdown));
    Ok(server)
}
