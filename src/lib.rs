//! Lynkr: a gateway that lets Claude Code (and any Anthropic Messages API
//! client) run on any model provider. Built on Cloudflare's Pingora.

pub mod access_log;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod providers;
pub mod resilience;
pub mod routing;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod upstream;
pub mod util;

#[doc(hidden)]
pub mod test_support;

#[cfg(test)]
mod properties;
