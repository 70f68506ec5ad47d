//! Builds the Pingora server from the configuration: one HTTP service for
//! the API listeners, one for the optional admin listener (health and
//! metrics only), the drain that follows shutdown, and the pool health checks.

use crate::config::Config;
use crate::gateway::{DrainService, Gateway, IdleTrim, LynkrApp, PoolSweep};
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use std::sync::Arc;

/// Pingora's own settings, taken from the `server` section.
pub fn server_conf(config: &Config) -> ServerConf {
    let s = &config.server;
    let mut conf = ServerConf {
        daemon: s.daemon,
        error_log: s.error_log.clone(),
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        threads: s.threads,
        grace_period_seconds: Some(s.grace_seconds(&config.timeouts)),
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
    let gateway = Arc::new(Gateway::from_config(config)?);
    let health_checks = gateway.health_services();
    let drain = DrainService {
        drain: gateway.drain.clone(),
        store: gateway.store.clone(),
    };
    let trim = IdleTrim(gateway.drain.clone());
    let sweep = PoolSweep(gateway.clone());

    let mut api = Service::new(
        "lynkr api".to_string(),
        LynkrApp {
            gateway: gateway.clone(),
            admin: false,
        },
    );
    api.threads = Some(config.server.threads);
    for addr in &config.server.listen {
        api.add_listener(client_listener(addr));
    }
    server.add_service(api);
    // A service of its own: a request is an admin request by the socket
    // that accepted it, whatever address or port the listeners share.
    if let Some(addr) = &config.server.admin_listen {
        let mut admin = Service::new(
            "lynkr admin".to_string(),
            LynkrApp {
                gateway,
                admin: true,
            },
        );
        admin.threads = Some(1);
        admin.add_listener(client_listener(addr));
        server.add_service(admin);
    }
    server.add_services(health_checks);
    server.add_service(background_service("drain", drain));
    server.add_service(background_service("idle memory trim", trim));
    server.add_service(background_service("upstream pool sweep", sweep));
    Ok(server)
}

/// Write buffer of a client connection: a response head and the first
/// stretch of its body leave in one send. Pingora's default (1,460 bytes)
/// sent the head of every stream, and of any answer over ~1.2 KB, alone.
const CLIENT_WRITE_BUFFER: usize = 16 * 1024;

fn client_listener(addr: &str) -> ListenerConfig {
    ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::default().write(CLIENT_WRITE_BUFFER))
}
