//! Structured logging with `tracing`: JSON lines by default, readable text
//! on a terminal. The level comes from config (`logging.level`, `LOG_LEVEL`).
//!
//! Pingora's crates log request headers at trace level (the upstream
//! `Authorization` among them), so unless the filter names a Pingora crate
//! itself, they are capped at debug: keys stay out of the log at every level.

use crate::config::{LogFormat, LoggingConfig};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Pingora's crates, capped at debug by default.
const PINGORA_CRATES: &[&str] = &[
    "pingora",
    "pingora_core",
    "pingora_proxy",
    "pingora_http",
    "pingora_pool",
    "pingora_load_balancing",
    "pingora_limits",
    "pingora_runtime",
    "pingora_timeout",
    "pingora_rustls",
    "pingora_error",
];

/// The filter for a configured level or directive list: when its default
/// level is `trace`, Pingora's crates are held at `debug` (a lower default
/// level already keeps them below trace, and is left as it is).
pub fn filter_directives(level: &str) -> String {
    let default_is_trace = level
        .split(',')
        .map(str::trim)
        .any(|d| d.eq_ignore_ascii_case("trace"));
    if level.contains("pingora") || !default_is_trace {
        return level.to_string();
    }
    let mut d = level.to_string();
    for c in PINGORA_CRATES {
        d.push_str(&format!(",{c}=debug"));
    }
    d
}

pub fn init(cfg: &LoggingConfig) {
    let filter = EnvFilter::try_new(filter_directives(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match cfg.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    crate::access_log::write_json_directly(json);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_is_capped_below_trace_unless_named() {
        let d = filter_directives("trace");
        assert!(
            d.starts_with("trace,") && d.contains("pingora_core=debug"),
            "{d}"
        );
        assert!(d.parse::<EnvFilter>().is_ok());
        assert_eq!(
            filter_directives("info,pingora_core=trace"),
            "info,pingora_core=trace"
        );
    }
}
