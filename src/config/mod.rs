//! Typed configuration: a YAML file (or the embedded default), then
//! environment overrides, then validation that reports every problem with
//! its path. Every field here is read by the gateway; `conf/lynkr.yaml`
//! documents each one with its default.

mod env;
mod pool;
mod resilience;
mod routing;
mod sandbox;
mod validate;

pub use pool::{EndpointConfig, HealthCheckConfig, ProbeKind, Selection};
pub use resilience::{
    BreakerConfig, RateLimitConfig, ResilienceConfig, RetryConfig, SheddingConfig,
};
pub use routing::{Balance, LongContextRoute, RoutingConfig, RuleConfig, Targets};
pub use sandbox::{parse_bytes, SandboxConfig};

pub use validate::AZURE_DEFAULT_API_VERSION;

pub use validate::Problem;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The documented default configuration, used when no file is given.
pub const DEFAULT_YAML: &str = include_str!("../../conf/lynkr.yaml");

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub timeouts: TimeoutsConfig,
    pub logging: LoggingConfig,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub models: ModelsConfig,
    pub routing: RoutingConfig,
    pub resilience: ResilienceConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub sandbox: SandboxConfig,
}

/// The SQLite file that holds keys and the usage ledger.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Path of the database file (created if missing). Empty: no store, so
    /// no keys and no ledger.
    pub path: String,
    /// How often buffered usage rows are written (one transaction a batch).
    pub flush_ms: u64,
    /// Ledger rows older than this many days are deleted (0: kept forever).
    pub retention_days: u64,
    /// When the store cannot record usage: serve anyway (true) or refuse
    /// requests with 503 until it can (false).
    pub fail_open: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: String::new(),
            flush_ms: 200,
            retention_days: 90,
            fail_open: false,
        }
    }
}

/// Who may call the API.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// How soon a key created, changed or revoked by another process (the
    /// CLI, another instance) takes effect here.
    pub refresh_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Off,
            refresh_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone who reaches the port may call (the default, as before keys).
    #[default]
    Off,
    /// Every API request needs a key made with `lynkr keys create`.
    Keys,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `host:port` addresses to listen on.
    pub listen: Vec<String>,
    /// Worker threads of the proxy service.
    pub threads: usize,
    pub pid_file: String,
    /// Optional `host:port` serving only health and metrics (not the API).
    pub admin_listen: Option<String>,
    /// Unix socket over which a new binary (`-u`) takes the listeners.
    pub upgrade_sock: String,
    /// Seconds in-flight requests and streams may run on after shutdown
    /// (SIGTERM, or the SIGQUIT of an upgrade) begins; they are then closed
    /// with an `overloaded_error` event. Default: the longest request the
    /// gateway allows (`timeouts.total_ms`) plus `drain_ms` and a margin, so
    /// a reload never cuts a stream short. The process exits as soon as
    /// nothing is in flight.
    pub grace_period_seconds: Option<u64>,
    /// After shutdown begins, how long an idle kept-alive connection may
    /// still send a request (answered with `Connection: close`) before it
    /// is closed.
    pub drain_ms: u64,
    /// Seconds the final shutdown may take.
    pub graceful_shutdown_timeout_seconds: u64,
    /// Run in the background (also `-d`).
    pub daemon: bool,
    /// File for the error log when daemonized.
    pub error_log: Option<String>,
}

/// Seconds added to the longest request for the default grace period.
const GRACE_MARGIN_SECS: u64 = 5;

impl ServerConfig {
    /// The grace period in effect: the setting, or one that covers the
    /// longest request `timeouts` allow.
    pub fn grace_seconds(&self, timeouts: &TimeoutsConfig) -> u64 {
        self.grace_period_seconds.unwrap_or_else(|| {
            timeouts.total_ms.div_ceil(1000) + self.drain_ms.div_ceil(1000) + GRACE_MARGIN_SECS
        })
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec!["127.0.0.1:8080".into()],
            threads: 2,
            admin_listen: None,
            pid_file: "/tmp/lynkr.pid".into(),
            upgrade_sock: "/tmp/lynkr_upgrade.sock".into(),
            grace_period_seconds: None,
            drain_ms: 5_000,
            graceful_shutdown_timeout_seconds: 10,
            daemon: false,
            error_log: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body accepted (bytes).
    pub max_body_bytes: usize,
    /// Request body bytes held at once over all requests; a request that
    /// would pass it gets 529 (bytes).
    pub max_buffered_bytes: usize,
    /// Largest non-streaming upstream response read (bytes).
    pub max_response_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 32 * 1024 * 1024,
            max_buffered_bytes: 512 * 1024 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// TCP (and TLS) connect to a provider.
    pub connect_ms: u64,
    /// From the request sent to the response header (time to first token
    /// for streams; the whole generation for non-streaming requests).
    pub first_byte_ms: u64,
    /// Longest silence while reading a response body or stream.
    pub read_ms: u64,
    /// Longest wait while writing the request to a provider.
    pub write_ms: u64,
    /// How long an idle pooled upstream connection is kept.
    pub pool_idle_ms: u64,
    /// Longest time a request may take from its arrival to the end of its
    /// answer, streams included.
    pub total_ms: u64,
    /// How long a client may take to send a request's header once it
    /// started, and its whole body.
    pub client_read_ms: u64,
    /// How long an idle kept-alive client connection is kept open.
    pub client_idle_ms: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            connect_ms: 10_000,
            first_byte_ms: 600_000,
            read_ms: 300_000,
            write_ms: 60_000,
            pool_idle_ms: 90_000,
            total_ms: 1_800_000,
            client_read_ms: 60_000,
            client_idle_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text on a terminal, JSON lines otherwise.
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// trace, debug, info, warn or error (or a tracing filter directive).
    pub level: String,
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI Chat Completions.
    Openai,
    /// Anthropic Messages API, passed through (Anthropic, Azure/Foundry,
    /// Databricks Claude, Ollama >= 0.14 and llama.cpp `/v1/messages`).
    Anthropic,
    /// Ollama's native `/api/chat`.
    Ollama,
    /// AWS Bedrock Converse / ConverseStream.
    Bedrock,
}

/// Header carrying an Anthropic-kind provider's key.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AuthHeader {
    /// `x-api-key: KEY` (Anthropic).
    XApiKey,
    /// `authorization: Bearer KEY` (Databricks, most gateways).
    Bearer,
    /// `api-key: KEY` (Azure).
    ApiKey,
}

/// What a provider can serve. A request needing tools, vision or more
/// context than it has goes to the next target of its route.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CapabilitiesConfig {
    pub tools: bool,
    pub vision: bool,
    /// Whether thinking is served; default by kind (anthropic: yes; openai:
    /// when `reasoning` is not `none`; ollama: no).
    pub reasoning: Option<bool>,
    /// Caps the client's `max_tokens` (no cap by default).
    pub max_output_tokens: Option<u64>,
    /// Estimated input tokens the model takes (no limit by default).
    pub context_window: Option<u64>,
}

impl Default for CapabilitiesConfig {
    fn default() -> Self {
        CapabilitiesConfig {
            tools: true,
            vision: true,
            reasoning: None,
            max_output_tokens: None,
            context_window: None,
        }
    }
}

/// Which field carries the output limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    MaxTokens,
    /// Required by OpenAI's reasoning models, accepted by its others.
    MaxCompletionTokens,
}

/// How the provider takes a reasoning (thinking) request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningStyle {
    /// Thinking is not forwarded (non-reasoning models reject the fields).
    None,
    /// `reasoning_effort: low|medium|high` (OpenAI o-series and gpt-5, Azure).
    Effort,
    /// OpenRouter's `reasoning: {max_tokens}` / `{effort}`.
    Openrouter,
}

/// Presets fill in URL shape, authentication and translation defaults.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Openai,
    Azure,
    Openrouter,
    Databricks,
    Llamacpp,
    Lmstudio,
    Vllm,
    /// Any other OpenAI-compatible server.
    Generic,
}

impl Preset {
    /// Hosted services need a key; local servers do not.
    pub fn requires_key(self) -> bool {
        matches!(
            self,
            Preset::Openai | Preset::Azure | Preset::Openrouter | Preset::Databricks
        )
    }

    pub fn default_max_tokens_field(self) -> MaxTokensField {
        match self {
            Preset::Openai | Preset::Azure => MaxTokensField::MaxCompletionTokens,
            _ => MaxTokensField::MaxTokens,
        }
    }

    pub fn default_reasoning(self) -> ReasoningStyle {
        match self {
            Preset::Openrouter => ReasoningStyle::Openrouter,
            _ => ReasoningStyle::None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    #[serde(default = "default_kind")]
    pub kind: ProviderKind,
    #[serde(default = "default_preset")]
    pub preset: Preset,
    /// Base URL (`https://api.openai.com/v1`) or the full chat completions URL.
    /// Azure: the resource URL; the deployment path is added. Bedrock: optional.
    #[serde(default)]
    pub base_url: String,
    /// Bedrock: the AWS region (default `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// Name of the environment variable holding the API key (never the key).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Model sent upstream when a route names only the provider.
    #[serde(default)]
    pub model: Option<String>,
    /// Azure: the deployment name (default: `model`).
    #[serde(default)]
    pub deployment: Option<String>,
    /// Azure: the `api-version` query parameter.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Default by preset: `max_completion_tokens` for openai/azure, else `max_tokens`.
    #[serde(default)]
    pub max_tokens_field: Option<MaxTokensField>,
    /// Default by preset: `openrouter` for OpenRouter, else `none`.
    #[serde(default)]
    pub reasoning: Option<ReasoningStyle>,
    #[serde(default)]
    pub capabilities: CapabilitiesConfig,
    /// Anthropic kind: the header carrying the key (default `x-api-key`).
    #[serde(default)]
    pub auth_header: Option<AuthHeader>,
    /// Anthropic kind: `anthropic-version` when the client sends none.
    #[serde(default)]
    pub anthropic_version: Option<String>,
    /// Anthropic kind: forward `count_tokens` (else Lynkr estimates).
    #[serde(default)]
    pub count_tokens: bool,
    /// Extra request headers (OpenRouter attribution, gateways' own headers).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// PEM file of CA certificates trusted for this provider instead of the
    /// system roots (private CAs, corporate proxies).
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// More URLs or keys for this provider (the provider's own `base_url`
    /// and `api_key_env` are the first endpoint only when this is empty).
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// How one of `endpoints` is chosen per request.
    #[serde(default)]
    pub selection: Selection,
    /// Active checks of `endpoints`; without them every endpoint counts as healthy.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Prices per million tokens, for `cost_total` (no cost counted without).
    #[serde(default)]
    pub pricing: Option<PricingConfig>,
}

/// Prices per million tokens, in whatever currency the operator uses.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PricingConfig {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl PricingConfig {
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input_per_million
            + output_tokens as f64 * self.output_per_million)
            / 1_000_000.0
    }
}

fn default_kind() -> ProviderKind {
    ProviderKind::Openai
}

fn default_preset() -> Preset {
    Preset::Generic
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// `provider` or `provider:model` (or a list: a fallback chain) for
    /// client models no route matches.
    pub default: Option<Targets>,
    /// Tried in order; the first whose `match` (a name or `*`/`?` glob) fits wins.
    pub routes: Vec<ModelRoute>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelRoute {
    #[serde(rename = "match")]
    pub pattern: String,
    pub target: Targets,
}

/// A configuration that failed to load: every problem found.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<Problem>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.0 {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Parse YAML text; a type error is reported with its path.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigErrors> {
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = e.inner().to_string();
            // serde_yaml starts its message with (part of) the path already.
            let message = match message.split_once(": ") {
                Some((head, rest)) if path.starts_with(head) => rest.to_string(),
                _ => message,
            };
            ConfigErrors(vec![Problem::new(
                if path == "." { "config".into() } else { path },
                message,
            )])
        })
    }

    /// Load `path` (or the embedded default), apply the environment, validate.
    pub fn load(path: Option<&str>) -> Result<Config, ConfigErrors> {
        Self::load_with_env(path, &|name| std::env::var(name).ok())
    }

    /// Load `path` and apply the environment, without the checks that
    /// concern serving (provider keys, routes): for the commands that only
    /// read `store` settings, run where the server's secrets are not set.
    pub fn load_for_store(path: Option<&str>) -> Result<Config, ConfigErrors> {
        let mut config = Self::from_yaml(&Self::read(path)?)?;
        let problems = env::apply(&mut config, &|name| std::env::var(name).ok());
        match problems.is_empty() {
            true => Ok(config),
            false => Err(ConfigErrors(problems)),
        }
    }

    fn read(path: Option<&str>) -> Result<String, ConfigErrors> {
        Ok(match path {
            Some(p) => std::fs::read_to_string(p).map_err(|e| {
                ConfigErrors(vec![Problem::new(
                    p.to_string(),
                    format!("cannot read: {e}"),
                )])
            })?,
            None => DEFAULT_YAML.to_string(),
        })
    }

    /// As `load`, with the environment given as a lookup function (for tests).
    pub fn load_with_env(
        path: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let mut config = Self::from_yaml(&Self::read(path)?)?;
        let mut problems = env::apply(&mut config, env);
        problems.extend(validate::validate(&config, env));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(problems))
        }
    }
}

#[cfg(test)]
mod tests;
