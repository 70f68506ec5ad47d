//! Anthropic-native providers: the Messages API passed through with
//! minimal change (the model name mapped, `max_tokens` capped if the
//! provider says so). Serves Anthropic, Azure/Foundry Anthropic, Databricks
//! Claude endpoints, and Ollama (>= 0.14) or llama.cpp `/v1/messages`.

use super::{Endpoint, Progress};
use crate::protocol::anthropic::Usage;
use crate::protocol::error::ApiError;
use crate::protocol::sse::{SseEvent, SseParser};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;

pub const DEFAULT_VERSION: &str = "2023-06-01";

/// The messages endpoint and its `count_tokens` sibling: a base URL gets
/// `/v1/messages`; a full `.../messages` URL is kept.
pub fn endpoints(base_url: &str) -> Result<(Endpoint, Endpoint), String> {
    let mut url = url::Url::parse(base_url).map_err(|e| format!("not a URL: {e}"))?;
    let path = url.path().trim_end_matches('/').to_string();
    if !path.ends_with("/messages") {
        let suffix = if path.ends_with("/v1") {
            "/messages"
        } else {
            "/v1/messages"
        };
        url.set_path(&format!("{path}{suffix}"));
    }
    let messages = Endpoint::from_url(&url)?;
    let mut count = url.clone();
    count.set_path(&format!("{}/count_tokens", url.path()));
    Ok((messages, Endpoint::from_url(&count)?))
}

/// The client's body with `model` replaced (and `max_tokens` capped). Only
/// the top level is parsed; everything else is copied as raw JSON.
pub fn rewrite_body(
    raw: &[u8],
    model: &str,
    max_tokens_cap: Option<u64>,
) -> Result<Bytes, ApiError> {
    let mut top: BTreeMap<Cow<str>, &RawValue> = serde_json::from_slice(raw)
        .map_err(|e| ApiError::invalid(format!("body: invalid JSON: {e}")))?;
    let model_json = serde_json::to_string(model).expect("a string serializes");
    let model_raw = RawValue::from_string(model_json).expect("valid JSON");
    top.insert(Cow::Borrowed("model"), &model_raw);
    let capped;
    if let Some(cap) = max_tokens_cap {
        let asked: u64 = top
            .get("max_tokens")
            .and_then(|v| v.get().parse().ok())
            .unwrap_or(cap);
        capped = RawValue::from_string(asked.min(cap).to_string()).expect("a number");
        top.insert(Cow::Borrowed("max_tokens"), &capped);
    }
    serde_json::to_vec(&top)
        .map(Bytes::from)
        .map_err(|e| ApiError::api(format!("cannot encode the upstream request: {e}")))
}

/// `anthropic-version` (the client's, else the provider's default) and
/// `anthropic-beta` go upstream; the client's own key never does.
pub fn forward_headers(
    client: &http::HeaderMap,
    default_version: &str,
) -> Vec<(&'static str, String)> {
    let get = |name: &str| {
        client
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut headers = vec![(
        "anthropic-version",
        get("anthropic-version").unwrap_or_else(|| default_version.to_string()),
    )];
    if let Some(beta) = get("anthropic-beta") {
        headers.push(("anthropic-beta", beta));
    }
    headers
}

#[derive(Deserialize, Default)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct RawUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl RawUsage {
    fn merge_into(self, u: &mut Usage) {
        u.input_tokens = self.input_tokens.unwrap_or(u.input_tokens);
        u.output_tokens = self.output_tokens.unwrap_or(u.output_tokens);
        u.cache_creation_input_tokens = self
            .cache_creation_input_tokens
            .unwrap_or(u.cache_creation_input_tokens);
        u.cache_read_input_tokens = self
            .cache_read_input_tokens
            .unwrap_or(u.cache_read_input_tokens);
    }
}

/// Usage of a whole Anthropic message, for the access log.
pub fn usage_of(body: &[u8]) -> Usage {
    let mut u = Usage::default();
    if let Some(raw) = serde_json::from_slice::<UsageOnly>(body)
        .ok()
        .and_then(|b| b.usage)
    {
        raw.merge_into(&mut u);
    }
    u
}

/// Forwards the upstream's SSE bytes unchanged while watching the events
/// go by: usage for the log, `message_stop` or `error` for the end.
pub struct Passthrough {
    parser: SseParser,
    events: Vec<SseEvent>,
    usage: Usage,
    done: bool,
}

#[derive(Deserialize)]
struct EventHead {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    message: Option<UsageOnly>,
}

impl Default for Passthrough {
    fn default() -> Self {
        Self::new()
    }
}

impl Passthrough {
    pub fn new() -> Self {
        Passthrough {
            parser: SseParser::new(),
            events: Vec::new(),
            usage: Usage::default(),
            done: false,
        }
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    pub fn feed(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<Progress, ApiError> {
        out.extend_from_slice(bytes);
        self.parser.feed(bytes, &mut self.events).map_err(|_| {
            ApiError::api("upstream sent an oversized stream event").with_status(502)
        })?;
        for event in self.events.drain(..) {
            let Ok(head) = serde_json::from_str::<EventHead>(&event.data) else {
                continue;
            };
            if let Some(u) = head.message.and_then(|m| m.usage) {
                u.merge_into(&mut self.usage);
            }
            if let Some(u) = head.usage {
                u.merge_into(&mut self.usage);
            }
            if head.kind == "message_stop" || head.kind == "error" {
                self.done = true;
            }
        }
        Ok(if self.done {
            Progress::Done
        } else {
            Progress::Continue
        })
    }

    pub fn end_of_input(&mut self, _out: &mut BytesMut) -> Result<(), ApiError> {
        if self.done {
            Ok(())
        } else {
            Err(
                ApiError::api("upstream stream ended before the response was complete")
                    .with_status(502),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_from_base_or_full_url() {
        let (m, c) = endpoints("https://api.anthropic.com").unwrap();
        assert_eq!(
            (m.path.as_str(), c.path.as_str()),
            ("/v1/messages", "/v1/messages/count_tokens")
        );
        let (m, _) = endpoints("https://r.services.ai.azure.com/anthropic/v1/messages").unwrap();
        assert_eq!(m.path, "/anthropic/v1/messages");
        let (m, _) = endpoints("http://127.0.0.1:11434/v1").unwrap();
        assert_eq!((m.port, m.path.as_str()), (11434, "/v1/messages"));
    }

    #[test]
    fn body_is_kept_but_for_model_and_cap() {
        let raw = br#"{"model":"claude-opus-4-8","max_tokens":64000,"system":[{"type":"text","text":"a\nb","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":"hi"}]}"#;
        let out: serde_json::Value =
            serde_json::from_slice(&rewrite_body(raw, "claude-x", Some(8192)).unwrap()).unwrap();
        let orig: serde_json::Value = serde_json::from_slice(raw).unwrap();
        assert_eq!(out["model"], "claude-x");
        assert_eq!(out["max_tokens"], 8192);
        assert_eq!(out["system"], orig["system"]);
        assert_eq!(out["messages"], orig["messages"]);
        let out: serde_json::Value =
            serde_json::from_slice(&rewrite_body(raw, "m", None).unwrap()).unwrap();
        assert_eq!(out["max_tokens"], 64000);
    }

    #[test]
    fn passthrough_forwards_bytes_and_sees_the_end() {
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n\
                      event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\n\n\
                      event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let mut p = Passthrough::new();
        let mut out = BytesMut::new();
        let mut last = Progress::Continue;
        for piece in stream.as_bytes().chunks(10) {
            last = p.feed(piece, &mut out).unwrap();
        }
        assert_eq!(last, Progress::Done);
        assert_eq!(&out[..], stream.as_bytes());
        assert_eq!((p.usage().input_tokens, p.usage().output_tokens), (9, 5));
        let mut cut = Passthrough::new();
        cut.feed(&stream.as_bytes()[..80], &mut BytesMut::new())
            .unwrap();
        assert!(cut.end_of_input(&mut BytesMut::new()).is_err());
    }
}
