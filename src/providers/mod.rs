//! Providers: where a request goes and how it is spoken there.
//! One folder per wire format; this file holds what all of them share:
//! the resolved endpoint and the credentials.

pub mod openai;

use crate::config::{Preset, ProviderConfig, ProviderKind};
use openai::OpenAiOptions;
use pingora_core::protocols::tls::CaType;
use pingora_core::utils::tls::{parse_x509, WrappedX509};
use std::sync::Arc;

/// A provider ready to serve: URL split for the connector, credentials
/// read from the environment at startup.
#[derive(Clone)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub endpoint: Endpoint,
    /// Header carrying the key: `authorization: Bearer ...` or Azure's `api-key`.
    pub auth: Option<(&'static str, String)>,
    pub extra_headers: Vec<(String, String)>,
    pub default_model: Option<String>,
    pub openai: OpenAiOptions,
    /// CA certificates from `tls_ca_file`; `None` trusts the system roots.
    pub ca: Option<Arc<CaType>>,
}

impl std::fmt::Debug for Provider {
    // Hand-written so the key can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("auth", &self.auth.as_ref().map(|(h, _)| (h, "<redacted>")))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query of the request line.
    pub path: String,
}

impl Endpoint {
    /// The value of the `Host` header.
    pub fn authority(&self) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl Provider {
    /// Build from a validated config; `env` reads the key variable.
    pub fn from_config(
        name: &str,
        cfg: &ProviderConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Provider, String> {
        let key = cfg.api_key_env.as_deref().and_then(env);
        let auth = key.map(|k| match cfg.preset {
            Preset::Azure => ("api-key", k),
            _ => ("authorization", format!("Bearer {k}")),
        });
        Ok(Provider {
            name: name.to_string(),
            kind: cfg.kind,
            endpoint: chat_completions_endpoint(cfg)?,
            auth,
            extra_headers: cfg.headers.clone().into_iter().collect(),
            default_model: cfg.model.clone(),
            openai: OpenAiOptions {
                max_tokens_field: cfg
                    .max_tokens_field
                    .unwrap_or(cfg.preset.default_max_tokens_field()),
                reasoning: cfg.reasoning.unwrap_or(cfg.preset.default_reasoning()),
                max_output_tokens: cfg.max_output_tokens,
            },
            ca: cfg.tls_ca_file.as_deref().map(load_ca_file).transpose()?,
        })
    }
}

/// The certificates of a PEM file, as Pingora's per-peer CA list.
pub fn load_ca_file(path: &str) -> Result<Arc<CaType>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no certificate in the file"));
    }
    Ok(certs
        .into_iter()
        .map(|der| WrappedX509::new(der.to_vec(), parse_x509))
        .collect::<Vec<_>>()
        .into())
}

/// The chat completions URL: a base URL gets `/chat/completions` appended
/// (Azure: `/openai/deployments/{d}/chat/completions?api-version=...`);
/// a full URL (`.../chat/completions`, Databricks `.../invocations`) is kept.
fn chat_completions_endpoint(cfg: &ProviderConfig) -> Result<Endpoint, String> {
    let mut url = url::Url::parse(&cfg.base_url).map_err(|e| format!("not a URL: {e}"))?;
    let path = url.path().trim_end_matches('/').to_string();
    let full = path.ends_with("/chat/completions") || path.ends_with("/invocations");
    if !full {
        let suffix = match cfg.preset {
            Preset::Azure => format!(
                "/openai/deployments/{}/chat/completions",
                cfg.deployment
                    .as_deref()
                    .or(cfg.model.as_deref())
                    .unwrap_or_default()
            ),
            Preset::Llamacpp | Preset::Lmstudio if !path.ends_with("/v1") => {
                "/v1/chat/completions".to_string()
            }
            _ => "/chat/completions".to_string(),
        };
        url.set_path(&format!("{path}{suffix}"));
    }
    if cfg.preset == Preset::Azure && !url.query_pairs().any(|(k, _)| k == "api-version") {
        let version = cfg
            .api_version
            .as_deref()
            .unwrap_or(crate::config::AZURE_DEFAULT_API_VERSION);
        url.query_pairs_mut().append_pair("api-version", version);
    }
    let tls = url.scheme() == "https";
    let host = url.host_str().ok_or("URL has no host")?.to_string();
    let port = url.port_or_known_default().ok_or("URL has no port")?;
    let mut path = url.path().to_string();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    Ok(Endpoint {
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(preset: Preset, base_url: &str) -> ProviderConfig {
        let mut c: ProviderConfig =
            serde_yaml::from_str(&format!("base_url: {base_url}\nmodel: m")).unwrap();
        c.preset = preset;
        c
    }

    #[test]
    fn endpoints_by_preset() {
        let e =
            chat_completions_endpoint(&cfg(Preset::Openai, "https://api.openai.com/v1")).unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.path.as_str()),
            (true, "api.openai.com", 443, "/v1/chat/completions")
        );
        assert_eq!(e.authority(), "api.openai.com");
        let e = chat_completions_endpoint(&cfg(
            Preset::Generic,
            "http://127.0.0.1:9000/v1/chat/completions",
        ))
        .unwrap();
        assert_eq!(
            (e.tls, e.port, e.path.as_str()),
            (false, 9000, "/v1/chat/completions")
        );
        assert_eq!(e.authority(), "127.0.0.1:9000");
        let mut az = cfg(Preset::Azure, "https://r.openai.azure.com/");
        az.deployment = Some("gpt4o".into());
        let e = chat_completions_endpoint(&az).unwrap();
        assert_eq!(
            e.path,
            "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"
        );
        let e = chat_completions_endpoint(&cfg(Preset::Llamacpp, "http://localhost:8081")).unwrap();
        assert_eq!(e.path, "/v1/chat/completions");
        let e = chat_completions_endpoint(&cfg(
            Preset::Databricks,
            "https://x.cloud.databricks.com/serving-endpoints/claude/invocations",
        ))
        .unwrap();
        assert_eq!(e.path, "/serving-endpoints/claude/invocations");
    }

    #[test]
    fn auth_header_by_preset_and_debug_redacts() {
        let env = |_: &str| Some("sk-secret".to_string());
        let mut c = cfg(Preset::Openai, "https://api.openai.com/v1");
        c.api_key_env = Some("K".into());
        let p = Provider::from_config("o", &c, &env).unwrap();
        assert_eq!(p.auth, Some(("authorization", "Bearer sk-secret".into())));
        assert!(!format!("{p:?}").contains("sk-secret"));
        c.preset = Preset::Azure;
        let p = Provider::from_config("a", &c, &env).unwrap();
        assert_eq!(p.auth, Some(("api-key", "sk-secret".into())));
    }
}
