//! Environment overrides: `LYNKR_*` settings, and the variables of the
//! original Node.js Lynkr (`MODEL_PROVIDER`, `OPENAI_API_KEY`, `PORT`, ...)
//! so its users can start from their existing environment. The README's
//! table lists each variable and what it sets.

use super::{Config, LogFormat, Preset, Problem, ProviderConfig, ProviderKind, Targets};
use std::collections::BTreeMap;

/// Values of `MODEL_PROVIDER` this build serves.
pub const LEGACY_PROVIDERS: &[&str] = &[
    "openai",
    "openrouter",
    "azure-openai",
    "databricks",
    "llamacpp",
    "lmstudio",
    "azure-anthropic",
    "ollama",
    "bedrock",
];

pub(super) fn apply(config: &mut Config, env: &dyn Fn(&str) -> Option<String>) -> Vec<Problem> {
    let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let mut problems = Vec::new();

    if let Some(v) = get("LYNKR_LISTEN") {
        config.server.listen = v.split(',').map(|s| s.trim().to_string()).collect();
    }
    if let Some(v) = get("PORT") {
        match v.trim().parse::<u16>() {
            Ok(port) => {
                for addr in &mut config.server.listen {
                    let host = addr.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
                    *addr = format!("{host}:{port}");
                }
            }
            Err(_) => problems.push(Problem::new("PORT", format!("not a port number: {v:?}"))),
        }
    }
    parse_into(
        &get,
        "LYNKR_THREADS",
        &mut config.server.threads,
        &mut problems,
    );
    parse_into(
        &get,
        "LYNKR_MAX_BODY_BYTES",
        &mut config.limits.max_body_bytes,
        &mut problems,
    );
    if let Some(v) = get("WORKSPACE_ROOT") {
        config.sandbox.workspace_root = v;
    }
    parse_into(
        &get,
        "MCP_SANDBOX_TIMEOUT_MS",
        &mut config.sandbox.timeout_ms,
        &mut problems,
    );
    parse_into(
        &get,
        "MCP_SANDBOX_PIDS_LIMIT",
        &mut config.sandbox.pids,
        &mut problems,
    );
    if let Some(v) = get("MCP_SANDBOX_MEMORY_LIMIT") {
        match super::parse_bytes(&v) {
            Ok(n) => config.sandbox.memory_bytes = n,
            Err(e) => problems.push(Problem::new("MCP_SANDBOX_MEMORY_LIMIT", e)),
        }
    }
    if let Some(v) = get("POLICY_SAFE_COMMANDS_ENABLED") {
        match v.trim() {
            "true" | "1" => config.sandbox.policy = crate::sandbox::policy::Mode::Allowlist,
            "false" | "0" => config.sandbox.policy = crate::sandbox::policy::Mode::Isolate,
            _ => problems.push(Problem::new(
                "POLICY_SAFE_COMMANDS_ENABLED",
                "must be true or false",
            )),
        }
    }
    if let Some(v) = get("POLICY_SAFE_COMMANDS_CONFIG") {
        config.sandbox.commands_file = v;
    }
    if let Some(v) = get("LYNKR_DB_PATH") {
        config.store.path = v;
    }
    if let Some(v) = get("LYNKR_AUTH") {
        match v.trim() {
            "off" => config.auth.mode = super::AuthMode::Off,
            "keys" => config.auth.mode = super::AuthMode::Keys,
            _ => problems.push(Problem::new("LYNKR_AUTH", "must be off or keys")),
        }
    }
    if let Some(v) = get("LYNKR_LOG_LEVEL").or_else(|| get("LOG_LEVEL")) {
        config.logging.level = v;
    }
    if let Some(v) = get("LYNKR_LOG_FORMAT") {
        match v.as_str() {
            "auto" => config.logging.format = LogFormat::Auto,
            "json" => config.logging.format = LogFormat::Json,
            "text" => config.logging.format = LogFormat::Text,
            _ => problems.push(Problem::new(
                "LYNKR_LOG_FORMAT",
                "must be auto, json or text",
            )),
        }
    }
    let b = &mut config.resilience.circuit_breaker;
    parse_into(
        &get,
        "CIRCUIT_BREAKER_FAILURE_THRESHOLD",
        &mut b.failure_threshold,
        &mut problems,
    );
    parse_into(
        &get,
        "CIRCUIT_BREAKER_SUCCESS_THRESHOLD",
        &mut b.success_threshold,
        &mut problems,
    );
    parse_into(
        &get,
        "CIRCUIT_BREAKER_TIMEOUT",
        &mut b.open_ms,
        &mut problems,
    );
    let s = &mut config.resilience.load_shedding;
    parse_into(
        &get,
        "LOAD_SHEDDING_ACTIVE_REQUESTS_THRESHOLD",
        &mut s.max_in_flight,
        &mut problems,
    );
    parse_into(
        &get,
        "LOAD_SHEDDING_MEMORY_THRESHOLD",
        &mut s.max_memory,
        &mut problems,
    );
    if let Some(v) = get("LYNKR_DEFAULT_MODEL") {
        config.models.default = Some(Targets::One(v));
    }

    if let Some(name) = get("MODEL_PROVIDER") {
        let name = name.trim().to_ascii_lowercase();
        match legacy_provider(&name, &get) {
            Some(provider) => {
                config.providers.insert(name.clone(), provider);
                config.models.default = Some(Targets::One(name));
            }
            None => problems.push(Problem::new(
                "MODEL_PROVIDER",
                format!(
                    "unknown provider {name:?} (this build serves: {})",
                    LEGACY_PROVIDERS.join(", ")
                ),
            )),
        }
    }
    apply_hybrid(config, &get, &mut problems);
    problems
}

fn parse_into<T: std::str::FromStr>(
    get: &dyn Fn(&str) -> Option<String>,
    name: &str,
    target: &mut T,
    problems: &mut Vec<Problem>,
) {
    if let Some(v) = get(name) {
        match v.trim().parse() {
            Ok(parsed) => *target = parsed,
            Err(_) => problems.push(Problem::new(name, format!("not a number: {v:?}"))),
        }
    }
}

/// The provider the original Lynkr built for `MODEL_PROVIDER=name`.
fn legacy_provider(name: &str, get: &dyn Fn(&str) -> Option<String>) -> Option<ProviderConfig> {
    let or = |var: &str, default: &str| get(var).unwrap_or_else(|| default.to_string());
    let provider = |preset, base_url: String, key: Option<&str>, model: String| ProviderConfig {
        kind: ProviderKind::Openai,
        preset,
        base_url,
        api_key_env: key.map(str::to_string),
        model: Some(model),
        deployment: None,
        api_version: None,
        max_tokens_field: None,
        reasoning: None,
        region: None,
        capabilities: Default::default(),
        auth_header: None,
        anthropic_version: None,
        count_tokens: false,
        headers: BTreeMap::new(),
        tls_ca_file: None,
        endpoints: Vec::new(),
        selection: Default::default(),
        health_check: None,
        pricing: None,
    };
    Some(match name {
        "openai" => provider(
            Preset::Openai,
            or(
                "OPENAI_ENDPOINT",
                "https://api.openai.com/v1/chat/completions",
            ),
            Some("OPENAI_API_KEY"),
            or("OPENAI_MODEL", "gpt-4o"),
        ),
        "openrouter" => {
            let mut p = provider(
                Preset::Openrouter,
                or(
                    "OPENROUTER_ENDPOINT",
                    "https://openrouter.ai/api/v1/chat/completions",
                ),
                Some("OPENROUTER_API_KEY"),
                or("OPENROUTER_MODEL", "openai/gpt-4o-mini"),
            );
            p.headers
                .insert("HTTP-Referer".into(), "https://github.com/lynkr".into());
            p.headers.insert("X-Title".into(), "Lynkr".into());
            p
        }
        "azure-openai" => {
            let deployment = or("AZURE_OPENAI_DEPLOYMENT", "gpt-4o");
            let mut p = provider(
                Preset::Azure,
                get("AZURE_OPENAI_ENDPOINT").unwrap_or_default(),
                Some("AZURE_OPENAI_API_KEY"),
                deployment.clone(),
            );
            p.deployment = Some(deployment);
            p.api_version = Some(or(
                "AZURE_OPENAI_API_VERSION",
                super::validate::AZURE_DEFAULT_API_VERSION,
            ));
            p
        }
        "databricks" => {
            let base = get("DATABRICKS_API_BASE").unwrap_or_default();
            let path = or(
                "DATABRICKS_ENDPOINT_PATH",
                "/serving-endpoints/databricks-claude-sonnet-4-5/invocations",
            );
            let model = path
                .trim_matches('/')
                .split('/')
                .nth(1)
                .unwrap_or("databricks")
                .to_string();
            let url = format!(
                "{}/{}",
                base.trim_end_matches('/'),
                path.trim_start_matches('/')
            );
            provider(Preset::Databricks, url, Some("DATABRICKS_API_KEY"), model)
        }
        "llamacpp" => provider(
            Preset::Llamacpp,
            or("LLAMACPP_ENDPOINT", "http://localhost:8080"),
            None,
            or("LLAMACPP_MODEL", "default"),
        ),
        "lmstudio" => provider(
            Preset::Lmstudio,
            or("LMSTUDIO_ENDPOINT", "http://localhost:1234"),
            None,
            or("LMSTUDIO_MODEL", "default"),
        ),
        "azure-anthropic" => {
            let mut p = provider(
                Preset::Generic,
                get("AZURE_ANTHROPIC_ENDPOINT").unwrap_or_default(),
                Some("AZURE_ANTHROPIC_API_KEY"),
                String::new(),
            );
            p.kind = ProviderKind::Anthropic;
            // The client's model passes through unless a route names one.
            p.model = None;
            p.anthropic_version = get("AZURE_ANTHROPIC_VERSION");
            p
        }
        "bedrock" => {
            let key = get("AWS_BEDROCK_API_KEY").map(|_| "AWS_BEDROCK_API_KEY");
            let mut p = provider(
                Preset::Generic,
                String::new(),
                key,
                or(
                    "AWS_BEDROCK_MODEL_ID",
                    "anthropic.claude-3-5-sonnet-20241022-v2:0",
                ),
            );
            p.kind = ProviderKind::Bedrock;
            p.region = get("AWS_BEDROCK_REGION");
            p
        }
        "ollama" => {
            let mut p = provider(
                Preset::Generic,
                or("OLLAMA_ENDPOINT", "http://localhost:11434"),
                None,
                or("OLLAMA_MODEL", "qwen2.5-coder:7b"),
            );
            p.kind = ProviderKind::Ollama;
            p
        }
        _ => return None,
    })
}

/// The original Lynkr's hybrid routing: with `PREFER_OLLAMA`, requests with
/// few tools (`OLLAMA_MAX_TOOLS_FOR_ROUTING`, default 3) go to Ollama; the
/// rest, and Ollama's failures when `FALLBACK_ENABLED` (default true), go to
/// `FALLBACK_PROVIDER` (default: `MODEL_PROVIDER` when that is not ollama).
fn apply_hybrid(
    config: &mut Config,
    get: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    let truthy = |v: Option<String>, default: bool| {
        v.map_or(default, |v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
    };
    if !truthy(get("PREFER_OLLAMA"), false) {
        return;
    }
    let ollama = legacy_provider("ollama", get).expect("ollama is a legacy provider");
    config.providers.insert("ollama".into(), ollama);
    let mut max_tools = 3usize;
    parse_into(
        get,
        "OLLAMA_MAX_TOOLS_FOR_ROUTING",
        &mut max_tools,
        problems,
    );
    let fallback = get("FALLBACK_PROVIDER")
        .map(|f| f.trim().to_ascii_lowercase())
        .or_else(|| get("MODEL_PROVIDER").map(|m| m.trim().to_ascii_lowercase()))
        .filter(|f| f != "ollama");
    let mut targets = vec!["ollama".to_string()];
    if let Some(name) = fallback {
        match legacy_provider(&name, get) {
            Some(p) => {
                config.providers.insert(name.clone(), p);
                config.models.default = Some(Targets::One(name.clone()));
                if truthy(get("FALLBACK_ENABLED"), true) {
                    targets.push(name);
                }
            }
            None => problems.push(Problem::new(
                "FALLBACK_PROVIDER",
                format!(
                    "unknown provider {name:?} (this build serves: {})",
                    LEGACY_PROVIDERS.join(", ")
                ),
            )),
        }
    } else if config.models.default.is_none() {
        config.models.default = Some(Targets::One("ollama".into()));
    }
    config.routing.rules.insert(
        0,
        super::RuleConfig {
            name: "hybrid-local".into(),
            model: None,
            min_tools: None,
            max_tools: Some(max_tools),
            min_tokens: None,
            max_tokens: None,
            header: None,
            targets: Targets::Chain(targets),
        },
    );
}
