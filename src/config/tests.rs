use super::*;
use std::collections::HashMap;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

fn load_text(yaml: &str, env: &[(&str, &str)]) -> Result<Config, Vec<String>> {
    let dir = std::env::temp_dir().join(format!("lynkr-cfg-{}", crate::util::unique_id()));
    std::fs::write(&dir, yaml).unwrap();
    let r = Config::load_with_env(Some(dir.to_str().unwrap()), &env_of(env));
    std::fs::remove_file(&dir).unwrap();
    r.map_err(|e| e.0.iter().map(|p| p.to_string()).collect())
}

#[test]
fn embedded_default_is_valid_and_matches_the_code_defaults() {
    let c = Config::load_with_env(None, &env_of(&[])).unwrap();
    assert_eq!(c.server.listen, ["127.0.0.1:8080"]);
    assert_eq!(c.limits.max_body_bytes, 32 * 1024 * 1024);
    // The documented file states every default the code has.
    assert_eq!(c.server, ServerConfig::default());
    assert_eq!(c.limits, LimitsConfig::default());
    assert_eq!(c.timeouts, TimeoutsConfig::default());
    assert_eq!(c.logging, LoggingConfig::default());
    assert_eq!(c.resilience, ResilienceConfig::default());
    assert_eq!(c.models.default, Some(Targets::One("local".into())));
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let errs = load_text(
        "server: {listen: ['nonsense'], threads: 0}\n\
         providers:\n  openai: {preset: openai, base_url: 'not a url'}\n  az: {preset: azure, base_url: 'https://x', api_key_env: MISSING_KEY}\n\
         \x20 local: {base_url: 'http://127.0.0.1:1', model: m, tls_ca_file: /nonexistent/ca.pem}\n\
         models:\n  default: nope\n  routes: [{match: 'claude-*', target: 'openai'}]\n",
        &[],
    )
    .unwrap_err();
    for expected in [
        "server.listen.0: not an address",
        "server.threads: must be at least 1",
        "providers.openai.base_url: not a URL",
        "providers.openai.api_key_env: required for preset",
        "providers.az.api_key_env: environment variable MISSING_KEY is not set",
        "providers.az.deployment: required for Azure",
        "models.default: unknown provider \"nope\"",
        "models.routes.0.target: no model given",
        "providers.local.tls_ca_file: cannot read /nonexistent/ca.pem",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(expected)),
            "missing {expected:?} in {errs:#?}"
        );
    }
}

#[test]
fn type_errors_and_unknown_keys_name_the_path() {
    let errs = load_text("limits: {max_body_bytes: lots}\n", &[]).unwrap_err();
    assert!(
        errs[0].starts_with("limits.max_body_bytes: invalid type"),
        "{errs:?}"
    );
    let errs = load_text("server: {listn: []}\n", &[]).unwrap_err();
    assert!(
        errs[0].starts_with("server.listn: unknown field `listn`"),
        "{errs:?}"
    );
}

#[test]
fn legacy_environment_serves_openai() {
    let env = [
        ("MODEL_PROVIDER", "openai"),
        (
            "OPENAI_ENDPOINT",
            "http://127.0.0.1:9000/v1/chat/completions",
        ),
        ("OPENAI_API_KEY", "x"),
        ("OPENAI_MODEL", "gpt-4o"),
        ("PORT", "18090"),
    ];
    let c = Config::load_with_env(None, &env_of(&env)).unwrap();
    assert_eq!(c.server.listen, ["127.0.0.1:18090"]);
    assert_eq!(c.models.default, Some(Targets::One("openai".into())));
    let p = &c.providers["openai"];
    assert_eq!(p.base_url, "http://127.0.0.1:9000/v1/chat/completions");
    assert_eq!(p.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
    assert_eq!(p.model.as_deref(), Some("gpt-4o"));
    assert_eq!(p.preset, Preset::Openai);
}

#[test]
fn legacy_environment_other_providers() {
    let c = Config::load_with_env(
        None,
        &env_of(&[
            ("MODEL_PROVIDER", "azure-openai"),
            ("AZURE_OPENAI_ENDPOINT", "https://r.openai.azure.com"),
            ("AZURE_OPENAI_API_KEY", "k"),
            ("AZURE_OPENAI_DEPLOYMENT", "dep"),
            ("AZURE_OPENAI_API_VERSION", "2025-01-01"),
        ]),
    )
    .unwrap();
    let p = &c.providers["azure-openai"];
    assert_eq!(
        (p.deployment.as_deref(), p.api_version.as_deref()),
        (Some("dep"), Some("2025-01-01"))
    );

    let c = Config::load_with_env(
        None,
        &env_of(&[
            ("MODEL_PROVIDER", "databricks"),
            ("DATABRICKS_API_BASE", "https://w.cloud.databricks.com"),
            ("DATABRICKS_API_KEY", "k"),
            (
                "DATABRICKS_ENDPOINT_PATH",
                "/serving-endpoints/my-llm/invocations",
            ),
        ]),
    )
    .unwrap();
    let p = &c.providers["databricks"];
    assert_eq!(
        p.base_url,
        "https://w.cloud.databricks.com/serving-endpoints/my-llm/invocations"
    );
    assert_eq!(p.model.as_deref(), Some("my-llm"));

    for (name, endpoint_var, model_var) in [
        ("llamacpp", "LLAMACPP_ENDPOINT", "LLAMACPP_MODEL"),
        ("lmstudio", "LMSTUDIO_ENDPOINT", "LMSTUDIO_MODEL"),
    ] {
        let c = Config::load_with_env(
            None,
            &env_of(&[
                ("MODEL_PROVIDER", name),
                (endpoint_var, "http://127.0.0.1:5555"),
                (model_var, "qwen"),
            ]),
        )
        .unwrap();
        assert_eq!(c.providers[name].base_url, "http://127.0.0.1:5555");
        assert_eq!(c.providers[name].model.as_deref(), Some("qwen"));
    }

    let c = Config::load_with_env(
        None,
        &env_of(&[
            ("MODEL_PROVIDER", "openrouter"),
            ("OPENROUTER_API_KEY", "k"),
            ("OPENROUTER_MODEL", "x/y"),
        ]),
    )
    .unwrap();
    assert_eq!(c.providers["openrouter"].headers["X-Title"], "Lynkr");
}

#[test]
fn unknown_provider_and_missing_key_are_errors() {
    let errs = Config::load_with_env(None, &env_of(&[("MODEL_PROVIDER", "gemini")]))
        .unwrap_err()
        .0;
    assert!(
        errs[0]
            .to_string()
            .starts_with("MODEL_PROVIDER: unknown provider \"gemini\""),
        "{errs:?}"
    );
    let errs = Config::load_with_env(None, &env_of(&[("MODEL_PROVIDER", "openai")]))
        .unwrap_err()
        .0;
    assert_eq!(
        errs[0].to_string(),
        "providers.openai.api_key_env: environment variable OPENAI_API_KEY is not set"
    );
    let errs = Config::load_with_env(None, &env_of(&[("PORT", "eighty")]))
        .unwrap_err()
        .0;
    assert_eq!(errs[0].path, "PORT");
}

#[test]
fn lynkr_overrides() {
    let c = Config::load_with_env(
        None,
        &env_of(&[
            ("LYNKR_LISTEN", "127.0.0.1:1,127.0.0.1:2"),
            ("LYNKR_MAX_BODY_BYTES", "1000"),
            ("LOG_LEVEL", "debug"),
            ("LYNKR_THREADS", "4"),
        ]),
    )
    .unwrap();
    assert_eq!(c.server.listen, ["127.0.0.1:1", "127.0.0.1:2"]);
    assert_eq!((c.limits.max_body_bytes, c.server.threads), (1000, 4));
    assert_eq!(c.logging.level, "debug");
}

#[test]
fn routing_problems_are_reported_with_their_paths() {
    let errs = load_text(
        "providers:\n  a: {base_url: 'http://127.0.0.1:1', model: m}\n\
         models:\n  default: a\n  routes: [{match: 'claude-*haku*', target: a}, {match: 'gpt-*', target: [a, ghost]}]\n\
         routing:\n  background: nobody\n  think: [a, 'nobody:x']\n  long_context: {threshold_tokens: 0, targets: a}\n\
         \x20 rules: [{name: r, model: 'claude-opus-*', targets: {targets: [a, missing], balance: affinity}}]\n",
        &[],
    )
    .unwrap_err();
    for expected in [
        "models.routes.0.match: the glob \"claude-*haku*\" matches no Claude model name",
        "models.routes.1.target.1: unknown provider \"ghost\"",
        "routing.background: unknown provider \"nobody\"",
        "routing.think.1: unknown provider \"nobody\"",
        "routing.long_context.threshold_tokens: must be greater than 0",
        "routing.rules.0.targets.targets.1: unknown provider \"missing\"",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(expected)),
            "missing {expected:?} in {errs:#?}"
        );
    }
    // A glob that is not about Claude names is the user's business.
    assert!(!errs.iter().any(|e| e.contains("gpt-*")));
}

#[test]
fn anthropic_targets_may_pass_the_client_model_through() {
    let c = load_text("providers:\n  c: {kind: anthropic, base_url: 'https://api.anthropic.com', api_key_env: K}\nmodels: {default: c}\n", &[("K", "k")]).unwrap();
    assert_eq!(c.providers["c"].kind, ProviderKind::Anthropic);
    let errs = load_text("providers:\n  o: {kind: ollama, base_url: 'http://127.0.0.1:11434'}\nmodels: {default: o}\n", &[]).unwrap_err();
    assert!(
        errs[0].starts_with("models.default: no model given"),
        "{errs:?}"
    );
}

#[test]
fn legacy_azure_anthropic_ollama_and_hybrid() {
    let c = Config::load_with_env(
        None,
        &env_of(&[
            ("MODEL_PROVIDER", "azure-anthropic"),
            (
                "AZURE_ANTHROPIC_ENDPOINT",
                "https://r.services.ai.azure.com/anthropic/v1/messages",
            ),
            ("AZURE_ANTHROPIC_API_KEY", "k"),
            ("AZURE_ANTHROPIC_VERSION", "2023-06-01"),
        ]),
    )
    .unwrap();
    let p = &c.providers["azure-anthropic"];
    assert_eq!(
        (p.kind, p.model.as_deref()),
        (ProviderKind::Anthropic, None)
    );
    assert_eq!(
        p.base_url,
        "https://r.services.ai.azure.com/anthropic/v1/messages"
    );
    assert_eq!(p.anthropic_version.as_deref(), Some("2023-06-01"));

    let c = Config::load_with_env(
        None,
        &env_of(&[
            ("MODEL_PROVIDER", "ollama"),
            ("OLLAMA_ENDPOINT", "http://127.0.0.1:11434"),
            ("OLLAMA_MODEL", "qwen3:8b"),
        ]),
    )
    .unwrap();
    assert_eq!(
        (
            c.providers["ollama"].kind,
            c.providers["ollama"].model.as_deref()
        ),
        (ProviderKind::Ollama, Some("qwen3:8b"))
    );

    // PREFER_OLLAMA: few tools to Ollama (falling back to the cloud), the rest to the cloud.
    let c = Config::load_with_env(
        None,
        &env_of(&[
            ("MODEL_PROVIDER", "openai"),
            ("OPENAI_API_KEY", "k"),
            ("PREFER_OLLAMA", "true"),
            ("OLLAMA_MAX_TOOLS_FOR_ROUTING", "5"),
            ("FALLBACK_PROVIDER", "openai"),
        ]),
    )
    .unwrap();
    let rule = &c.routing.rules[0];
    assert_eq!(
        (rule.name.as_str(), rule.max_tools),
        ("hybrid-local", Some(5))
    );
    assert_eq!(
        rule.targets,
        Targets::Chain(vec!["ollama".into(), "openai".into()])
    );
    assert_eq!(c.models.default, Some(Targets::One("openai".into())));
    let c = Config::load_with_env(
        None,
        &env_of(&[
            ("MODEL_PROVIDER", "openai"),
            ("OPENAI_API_KEY", "k"),
            ("PREFER_OLLAMA", "1"),
            ("FALLBACK_ENABLED", "false"),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.routing.rules[0].targets,
        Targets::Chain(vec!["ollama".into()])
    );
    assert_eq!(c.routing.rules[0].max_tools, Some(3));
}

#[test]
fn bedrock_needs_credentials_and_takes_the_original_environment() {
    let errs = Config::load_with_env(None, &env_of(&[("MODEL_PROVIDER", "bedrock")]))
        .unwrap_err()
        .0;
    assert!(
        errs[0]
            .to_string()
            .starts_with("providers.bedrock.api_key_env: Bedrock needs credentials"),
        "{errs:?}"
    );
    let c = Config::load_with_env(
        None,
        &env_of(&[
            ("MODEL_PROVIDER", "bedrock"),
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_BEDROCK_REGION", "eu-central-1"),
            ("AWS_BEDROCK_MODEL_ID", "anthropic.claude-sonnet-4-5-v1:0"),
        ]),
    )
    .unwrap();
    let p = &c.providers["bedrock"];
    assert_eq!(
        (p.kind, p.region.as_deref(), p.model.as_deref()),
        (
            ProviderKind::Bedrock,
            Some("eu-central-1"),
            Some("anthropic.claude-sonnet-4-5-v1:0")
        )
    );
    assert_eq!(p.api_key_env, None);
    let c = Config::load_with_env(
        None,
        &env_of(&[("MODEL_PROVIDER", "bedrock"), ("AWS_BEDROCK_API_KEY", "k")]),
    )
    .unwrap();
    assert_eq!(
        c.providers["bedrock"].api_key_env.as_deref(),
        Some("AWS_BEDROCK_API_KEY")
    );
}

#[test]
fn original_resilience_variables_are_read() {
    let c = Config::load_with_env(
        None,
        &env_of(&[
            ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "7"),
            ("CIRCUIT_BREAKER_SUCCESS_THRESHOLD", "4"),
            ("CIRCUIT_BREAKER_TIMEOUT", "45000"),
            ("LOAD_SHEDDING_ACTIVE_REQUESTS_THRESHOLD", "64"),
            ("LOAD_SHEDDING_MEMORY_THRESHOLD", "0.85"),
        ]),
    )
    .unwrap();
    let b = &c.resilience.circuit_breaker;
    assert_eq!(
        (b.failure_threshold, b.success_threshold, b.open_ms),
        (7, 4, 45000)
    );
    let s = &c.resilience.load_shedding;
    assert_eq!((s.max_in_flight, s.max_memory), (64, 0.85));
    let errs = Config::load_with_env(None, &env_of(&[("CIRCUIT_BREAKER_TIMEOUT", "soon")]))
        .unwrap_err()
        .0;
    assert_eq!(errs[0].path, "CIRCUIT_BREAKER_TIMEOUT");
    let errs = load_text(
        "resilience: {retry: {max_attempts: 0}, circuit_breaker: {failure_rate: 2}}\n",
        &[],
    )
    .unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.starts_with("resilience.retry.max_attempts: must be at least 1")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("resilience.circuit_breaker.failure_rate")),
        "{errs:?}"
    );
}

#[test]
fn endpoint_pools_are_checked() {
    let errs = load_text(
        "providers:\n\
         \x20 a: {base_url: 'http://127.0.0.1:1', model: m, selection: weighted}\n\
         \x20 b:\n    base_url: 'http://127.0.0.1:1'\n    model: m\n    health_check: {path: health, interval_ms: 0}\n    endpoints:\n      - {url: 'nope', weight: 2}\n      - {api_key_env: UNSET_KEY, weight: 0}\n\
         \x20 c: {base_url: 'http://127.0.0.1:1', model: m, health_check: {kind: tcp}}\n\
         models: {default: a}\n",
        &[],
    )
    .unwrap_err();
    for expected in [
        "providers.a.selection: applies only with endpoints",
        "providers.c.health_check: applies only with endpoints",
        "providers.b.endpoints.0.url: not a URL",
        "providers.b.endpoints.0.weight: applies only with selection: weighted",
        "providers.b.endpoints.1.api_key_env: environment variable UNSET_KEY is not set",
        "providers.b.endpoints.1.weight: must be at least 1",
        "providers.b.health_check.path: must start with /",
        "providers.b.health_check.interval_ms: must be greater than 0",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(expected)),
            "missing {expected:?} in {errs:#?}"
        );
    }
    // Keys only on the endpoints satisfy a hosted preset; defaults fill in.
    let c = load_text(
        "providers:\n  o:\n    preset: openai\n    base_url: https://api.openai.com/v1\n    model: m\n    selection: consistent\n    health_check: {kind: tcp}\n    endpoints: [{api_key_env: K1}, {api_key_env: K2}]\nmodels: {default: o}\n",
        &[("K1", "a"), ("K2", "b")],
    )
    .unwrap();
    let o = &c.providers["o"];
    assert_eq!(o.selection, Selection::Consistent);
    assert_eq!(
        o.health_check
            .as_ref()
            .map(|h| (h.interval_ms, h.unhealthy_after)),
        Some((10_000, 2))
    );
}

#[test]
fn the_original_sandbox_variables_set_the_sandbox() {
    let c = Config::load_with_env(
        None,
        &env_of(&[
            ("WORKSPACE_ROOT", "/srv/ws"),
            ("MCP_SANDBOX_TIMEOUT_MS", "1500"),
            ("MCP_SANDBOX_MEMORY_LIMIT", "512m"),
            ("MCP_SANDBOX_PIDS_LIMIT", "10"),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.sandbox.workspace_root(),
        std::path::PathBuf::from("/srv/ws")
    );
    assert_eq!(
        (c.sandbox.timeout_ms, c.sandbox.memory_bytes, c.sandbox.pids),
        (1500, 512 << 20, 10)
    );
    // The embedded default documents the same defaults as the code.
    assert_eq!(
        Config::load_with_env(None, &env_of(&[])).unwrap().sandbox,
        crate::config::SandboxConfig::default()
    );
    let bad = Config::load_with_env(None, &env_of(&[("MCP_SANDBOX_MEMORY_LIMIT", "lots")]));
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("MCP_SANDBOX_MEMORY_LIMIT"));
}
