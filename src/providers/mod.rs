//! Providers: where a request goes and how it is spoken there.
//! One folder per wire format; this file holds what all of them share:
//! the resolved endpoint, the credentials, the capabilities, and the one
//! interface the gateway uses: [`Provider::prepare`] builds the upstream
//! request, [`Provider::decoder`] turns the answer (JSON or a stream) into
//! what the client asked for.

pub mod anthropic;
pub mod bedrock;
mod decode;
pub mod ollama;
pub mod openai;
pub mod pool;
pub mod thinking;

pub use crate::upstream::Endpoint;
pub use decode::{Decoder, DecoderOptions, Progress};

use crate::config::{AuthHeader, Preset, ProviderConfig, ProviderKind};
use crate::protocol::anthropic::MessagesRequest;
use crate::protocol::error::ApiError;
use crate::upstream::Outgoing;
use bytes::Bytes;
use openai::OpenAiOptions;
use pingora_core::protocols::tls::CaType;
use std::borrow::Cow;
use std::sync::Arc;

/// A provider ready to serve: URL split for the connector, credentials
/// read from the environment at startup.
#[derive(Clone)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// Chat completions, messages, or `/api/chat`, by kind.
    pub endpoint: Endpoint,
    /// Anthropic kind with `count_tokens: true`.
    pub count_tokens_endpoint: Option<Endpoint>,
    /// The header carrying the key and its value.
    pub auth: Option<(&'static str, String)>,
    pub extra_headers: Vec<(String, String)>,
    pub default_model: Option<String>,
    pub capabilities: Capabilities,
    pub openai: OpenAiOptions,
    pub anthropic_version: String,
    /// CA certificates from `tls_ca_file`; `None` trusts the system roots.
    pub ca: Option<Arc<CaType>>,
    /// Bedrock: the region, and the credentials when requests are SigV4-signed
    /// (`None` with a Bedrock API key in `auth`).
    pub aws: Option<(String, Option<aws_credential_types::Credentials>)>,
    /// Several endpoints or keys (`endpoints` in the config); `endpoint`,
    /// `count_tokens_endpoint` and `auth` above are then the first one's.
    pub pool: Option<Arc<pool::Pool>>,
    pub pricing: Option<crate::config::PricingConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub tools: bool,
    pub vision: bool,
    pub reasoning: bool,
    pub max_output_tokens: Option<u64>,
    pub context_window: Option<u64>,
}

/// What a request needs of the provider that serves it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub tools: bool,
    pub vision: bool,
    pub reasoning: bool,
    pub estimated_tokens: u64,
}

impl Capabilities {
    /// The first hard requirement this provider cannot meet. Reasoning is
    /// soft: a provider without it serves the request without thinking.
    pub fn lacks(&self, needs: &Needs) -> Option<String> {
        if needs.tools && !self.tools {
            return Some("tools".into());
        }
        if needs.vision && !self.vision {
            return Some("vision".into());
        }
        match self.context_window {
            Some(w) if needs.estimated_tokens > w => Some(format!(
                "a context window of {} estimated tokens (has {w})",
                needs.estimated_tokens
            )),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Provider {
    // Hand-written so the key can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint)
            .field("auth", &self.auth.as_ref().map(|(h, _)| (h, "<redacted>")))
            .finish()
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
        let region = cfg
            .region
            .clone()
            .unwrap_or_else(|| bedrock::DEFAULT_REGION.to_string());
        let auth_header = match (cfg.kind, cfg.auth_header) {
            (_, Some(h)) => h,
            (ProviderKind::Openai, None) if cfg.preset == Preset::Azure => AuthHeader::ApiKey,
            (ProviderKind::Anthropic, None) => AuthHeader::XApiKey,
            _ => AuthHeader::Bearer,
        };
        let auth_for = |key: Option<String>| {
            key.map(|k| match auth_header {
                AuthHeader::XApiKey => ("x-api-key", k),
                AuthHeader::ApiKey => ("api-key", k),
                AuthHeader::Bearer => ("authorization", format!("Bearer {k}")),
            })
        };
        let auth = auth_for(key);
        let openai = OpenAiOptions {
            max_tokens_field: cfg
                .max_tokens_field
                .unwrap_or(cfg.preset.default_max_tokens_field()),
            reasoning: cfg.reasoning.unwrap_or(cfg.preset.default_reasoning()),
            max_output_tokens: cfg.capabilities.max_output_tokens,
        };
        let c = &cfg.capabilities;
        let capabilities = Capabilities {
            tools: c.tools,
            vision: c.vision,
            reasoning: c.reasoning.unwrap_or(match cfg.kind {
                ProviderKind::Anthropic => true,
                ProviderKind::Openai => openai.reasoning != openai::ReasoningStyle::None,
                ProviderKind::Ollama => false,
                ProviderKind::Bedrock => true,
            }),
            max_output_tokens: c.max_output_tokens,
            context_window: c.context_window,
        };
        let endpoints_at = |base_url: &str| -> Result<(Endpoint, Option<Endpoint>), String> {
            Ok(match cfg.kind {
                ProviderKind::Openai => (chat_completions_endpoint(cfg, base_url)?, None),
                ProviderKind::Anthropic => {
                    let (messages, count) = anthropic::endpoints(base_url)?;
                    (messages, cfg.count_tokens.then_some(count))
                }
                ProviderKind::Ollama => (ollama::endpoint(base_url)?, None),
                ProviderKind::Bedrock => {
                    let base = Some(base_url).filter(|u| !u.is_empty());
                    (bedrock::endpoint(base, &region)?, None)
                }
            })
        };
        let (endpoint, count_tokens_endpoint) = endpoints_at(&cfg.base_url)?;
        let ca = cfg
            .tls_ca_file
            .as_deref()
            .map(crate::util::tls::load_ca_file)
            .transpose()?;
        let members = cfg
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let (endpoint, count_tokens_endpoint) =
                    endpoints_at(e.url.as_deref().unwrap_or(&cfg.base_url))
                        .map_err(|err| format!("endpoints.{i}: {err}"))?;
                let key_env = e.api_key_env.as_ref().or(cfg.api_key_env.as_ref());
                Ok(pool::Member {
                    label: format!("{}#{i}", endpoint.authority()),
                    count_tokens_endpoint,
                    auth: auth_for(key_env.and_then(|v| env(v))),
                    weight: e.weight.unwrap_or(1),
                    endpoint,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let (endpoint, count_tokens_endpoint, auth) = match members.first() {
            Some(m) => (
                m.endpoint.clone(),
                m.count_tokens_endpoint.clone(),
                m.auth.clone(),
            ),
            None => (endpoint, count_tokens_endpoint, auth),
        };
        let pool = (!members.is_empty()).then(|| {
            Arc::new(pool::Pool::new(
                name,
                members,
                cfg.selection,
                cfg.health_check.as_ref(),
                ca.clone(),
            ))
        });
        let aws = (cfg.kind == ProviderKind::Bedrock).then(|| {
            let signing = auth.is_none().then(|| {
                aws_credential_types::Credentials::new(
                    env("AWS_ACCESS_KEY_ID").unwrap_or_default(),
                    env("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
                    env("AWS_SESSION_TOKEN").filter(|t| !t.is_empty()),
                    None,
                    "environment",
                )
            });
            (region.clone(), signing)
        });
        Ok(Provider {
            name: name.to_string(),
            kind: cfg.kind,
            endpoint,
            count_tokens_endpoint,
            auth,
            extra_headers: cfg.headers.clone().into_iter().collect(),
            default_model: cfg.model.clone().or_else(|| cfg.deployment.clone()),
            capabilities,
            openai,
            anthropic_version: cfg
                .anthropic_version
                .clone()
                .unwrap_or_else(|| anthropic::DEFAULT_VERSION.to_string()),
            ca,
            aws,
            pool,
            pricing: cfg.pricing,
        })
    }

    /// Every key this provider holds (its own, its endpoints', AWS
    /// credentials), for redacting upstream error text.
    pub fn secrets(&self) -> Vec<String> {
        let raw =
            |(_, v): &(&'static str, String)| v.strip_prefix("Bearer ").unwrap_or(v).to_string();
        let mut out: Vec<String> = self.auth.iter().map(raw).collect();
        if let Some(pool) = &self.pool {
            out.extend(
                pool.members()
                    .iter()
                    .filter_map(|m| m.auth.as_ref().map(raw)),
            );
        }
        if let Some((_, Some(creds))) = &self.aws {
            out.push(creds.secret_access_key().to_string());
            out.extend(creds.session_token().map(str::to_string));
        }
        out
    }

    /// This provider as served by endpoint `i` of its pool.
    pub fn at_member(&self, i: usize) -> Provider {
        let mut p = self.clone();
        if let Some(m) = self.pool.as_ref().map(|pool| pool.member(i)) {
            p.endpoint = m.endpoint.clone();
            p.count_tokens_endpoint = m.count_tokens_endpoint.clone();
            p.auth = m.auth.clone();
        }
        p
    }

    /// The upstream request for one attempt: this provider's wire format,
    /// its endpoint (Bedrock names the model in the path), its credentials
    /// and headers.
    pub fn prepare(
        &self,
        req: &MessagesRequest,
        raw: &[u8],
        model: &str,
        client_headers: &http::HeaderMap,
    ) -> Result<Prepared<'_>, ApiError> {
        let mut opts = self.openai;
        if !self.capabilities.reasoning {
            opts.reasoning = openai::ReasoningStyle::None;
        }
        let mut headers: Vec<(&'static str, String)> = self.auth.iter().cloned().collect();
        let mut endpoint = Cow::Borrowed(&self.endpoint);
        let body = match self.kind {
            ProviderKind::Openai => encode(
                &openai::request::to_chat_request(req, model, &opts)?,
                raw.len(),
            )?,
            ProviderKind::Anthropic => {
                headers.extend(anthropic::forward_headers(
                    client_headers,
                    &self.anthropic_version,
                ));
                anthropic::rewrite_body(raw, model, self.capabilities.max_output_tokens)?
            }
            ProviderKind::Bedrock => {
                let converse = bedrock::to_converse(
                    req,
                    self.capabilities.max_output_tokens,
                    self.capabilities.reasoning,
                )?;
                let body = encode(&converse, raw.len())?;
                let path = bedrock::path(&self.endpoint, model, req.is_stream());
                if let Some((region, Some(creds))) = &self.aws {
                    headers.extend(bedrock::sign(
                        creds,
                        region,
                        &self.endpoint,
                        &path,
                        &body,
                        std::time::SystemTime::now(),
                    )?);
                }
                endpoint = Cow::Owned(Endpoint {
                    path,
                    ..self.endpoint.clone()
                });
                body
            }
            ProviderKind::Ollama => encode(
                &ollama::to_ollama_request(req, model, &opts, &self.capabilities)?,
                raw.len(),
            )?,
        };
        Ok(Prepared {
            endpoint,
            headers,
            body,
        })
    }

    /// The upstream `count_tokens` request, when this provider counts
    /// tokens itself (anthropic kind with `count_tokens: true`).
    pub fn prepare_count_tokens(
        &self,
        raw: &[u8],
        model: &str,
        client_headers: &http::HeaderMap,
    ) -> Option<Result<Prepared<'_>, ApiError>> {
        let endpoint = self.count_tokens_endpoint.as_ref()?;
        let mut headers: Vec<(&'static str, String)> = self.auth.iter().cloned().collect();
        headers.extend(anthropic::forward_headers(
            client_headers,
            &self.anthropic_version,
        ));
        Some(
            anthropic::rewrite_body(raw, model, None).map(|body| Prepared {
                endpoint: Cow::Borrowed(endpoint),
                headers,
                body,
            }),
        )
    }

    /// What the upstream client sends for `prepared`.
    pub fn outgoing<'a>(
        &'a self,
        prepared: &'a Prepared<'a>,
        stream: bool,
        request_id: &'a str,
    ) -> Outgoing<'a> {
        Outgoing {
            endpoint: &prepared.endpoint,
            ca: self.ca.as_ref(),
            headers: &prepared.headers,
            extra_headers: &self.extra_headers,
            body: prepared.body.clone(),
            stream,
            request_id,
        }
    }

    /// The decoder for a 2xx answer with this content type: a stream
    /// translator when the client asked for a stream and the provider sent
    /// its stream format, else a whole-body decoder.
    pub fn decoder(&self, content_type: Option<&str>, opts: DecoderOptions<'_>) -> Decoder {
        let streamed = content_type.is_some_and(|c| self.is_stream_response(c));
        Decoder::new(self.kind, streamed, opts)
    }

    /// Whether a 2xx response with this content type is this provider's stream.
    fn is_stream_response(&self, content_type: &str) -> bool {
        match self.kind {
            ProviderKind::Ollama => content_type.contains("ndjson"),
            ProviderKind::Bedrock => content_type.contains("eventstream"),
            _ => content_type.contains("text/event-stream"),
        }
    }
}

/// One attempt's upstream request, ready to send.
pub struct Prepared<'p> {
    pub endpoint: Cow<'p, Endpoint>,
    /// Credentials and the kind's headers (Anthropic version and betas,
    /// SigV4 signature).
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

/// The chat completions URL: a base URL gets `/chat/completions` appended
/// (Azure: `/openai/deployments/{d}/chat/completions?api-version=...`);
/// a full URL (`.../chat/completions`, Databricks `.../invocations`) is kept.
fn chat_completions_endpoint(cfg: &ProviderConfig, base_url: &str) -> Result<Endpoint, String> {
    let mut url = url::Url::parse(base_url).map_err(|e| format!("not a URL: {e}"))?;
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
    Endpoint::from_url(&url)
}

/// The upstream body, straight into one buffer about the size of the
/// client's (a translation is about as long): growing from serde_json's
/// 128 bytes copied the body about twice over.
fn encode<T: serde::Serialize>(value: &T, client_body_len: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::with_capacity(client_body_len + 1024);
    serde_json::to_writer(&mut out, value)
        .map(|()| Bytes::from(out))
        .map_err(|e| ApiError::api(format!("cannot encode the upstream request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint_of(c: &ProviderConfig) -> Result<Endpoint, String> {
        chat_completions_endpoint(c, &c.base_url)
    }

    fn cfg(preset: Preset, base_url: &str) -> ProviderConfig {
        let mut c: ProviderConfig =
            serde_yaml::from_str(&format!("base_url: {base_url}\nmodel: m")).unwrap();
        c.preset = preset;
        c
    }

    #[test]
    fn endpoints_by_preset() {
        let e = endpoint_of(&cfg(Preset::Openai, "https://api.openai.com/v1")).unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.path.as_str()),
            (true, "api.openai.com", 443, "/v1/chat/completions")
        );
        assert_eq!(e.authority(), "api.openai.com");
        let e = endpoint_of(&cfg(
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
        let e = endpoint_of(&az).unwrap();
        assert_eq!(
            e.path,
            "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"
        );
        let e = endpoint_of(&cfg(Preset::Llamacpp, "http://localhost:8081")).unwrap();
        assert_eq!(e.path, "/v1/chat/completions");
        let e = endpoint_of(&cfg(
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
        assert_eq!(p.kind, ProviderKind::Openai);
        assert_eq!(p.auth, Some(("authorization", "Bearer sk-secret".into())));
        assert!(!format!("{p:?}").contains("sk-secret"));
        c.preset = Preset::Azure;
        let p = Provider::from_config("a", &c, &env).unwrap();
        assert_eq!(p.auth, Some(("api-key", "sk-secret".into())));
    }
}
