//! Builds the Pingora server from the configuration.

use crate::config::Config;
use crate::gateway::Gateway;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;

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
    let mut service = pingora_proxy::http_proxy_service(&server.configuration, gateway);
    service.threads = Some(config.server.threads);
    for addr in &config.server.listen {
        service.add_tcp(addr);
    }
    server.add_service(service);
    server.add_services(health_checks);
    Ok(server)
}
