//! Anthropic-native providers: the Messages API passed through with
//! minimal change (the model name mapped, `max_tokens` capped if the
//! provider says so). Serves Anthropic, Azure/Foundry Anthropic, Databricks
//! Claude endpoints, and Ollama (>= 0.14) or llama.cpp `/v1/messages`.

use super::{Endpoint, Progress};
use crate::protocol::anthropic::Usage;
use crate::protocol::error::ApiError;
use crate::protocol::sse::{SseEvent, SseParser};
use bytes::{Bytes, BytesMut};
use patch::{Edit, TopLevel};
use serde::Deserialize;

pub(crate) mod patch;

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

/// The client's body with `model` replaced, `max_tokens` capped and the
/// thinking budget kept under it (see `providers::thinking`). Only the top
/// level is parsed; every other value is copied byte for byte, in order, so
/// fields and blocks this build does not know reach the provider intact.
pub fn rewrite_body(
    raw: &[u8],
    model: &str,
    max_tokens_cap: Option<u64>,
) -> Result<Bytes, ApiError> {
    let body =
        TopLevel::scan(raw).map_err(|e| ApiError::invalid(format!("body: invalid JSON: {e}")))?;
    let mut edits = vec![Edit::Set(
        "model",
        serde_json::to_string(model).expect("a string serializes"),
    )];
    if let Some(cap) = max_tokens_cap {
        let asked: u64 = body
            .get("max_tokens")
            .and_then(|v| v.parse().ok())
            .unwrap_or(cap);
        let max_tokens = asked.min(cap);
        if max_tokens != asked {
            edits.push(Edit::Set("max_tokens", max_tokens.to_string()));
        }
        let thinking: Option<serde_json::Map<String, serde_json::Value>> = body
            .get("thinking")
            .and_then(|t| serde_json::from_str(t).ok());
        if let Some(mut thinking) = thinking {
            let budget = thinking.get("budget_tokens").and_then(|b| b.as_u64());
            if let (Some("enabled"), Some(budget)) =
                (thinking.get("type").and_then(|t| t.as_str()), budget)
            {
                match super::thinking::budget_within(budget, max_tokens) {
                    Some(b) if b == budget => {}
                    Some(b) => {
                        thinking.insert("budget_tokens".into(), b.into());
                        let t = serde_json::to_string(&thinking).expect("a map serializes");
                        edits.push(Edit::Set("thinking", t));
                    }
                    None => edits.push(Edit::Remove("thinking")),
                }
            }
        }
    }
    Ok(Bytes::from(body.apply(&edits)))
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
///
/// The bytes are held back until the first event has been seen: a stream
/// whose first event is `error` (Anthropic's `overloaded_error` comes that
/// way) is the provider's refusal, not a started answer, so it fails over
/// like the HTTP status it stands for.
pub struct Passthrough {
    parser: SseParser,
    events: Vec<SseEvent>,
    usage: Usage,
    done: bool,
    /// The bytes received before the first event, until it is checked.
    held: Option<BytesMut>,
}

#[derive(Deserialize)]
struct EventHead {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    message: Option<UsageOnly>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
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
            held: Some(BytesMut::new()),
        }
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    pub fn feed(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<Progress, ApiError> {
        match &mut self.held {
            Some(held) => held.extend_from_slice(bytes),
            None => out.extend_from_slice(bytes),
        }
        self.parser
            .feed(bytes, &mut self.events)
            .map_err(|_| ApiError::bad_upstream("upstream sent an oversized stream event"))?;
        for event in self.events.drain(..) {
            let head = serde_json::from_str::<EventHead>(&event.data).ok();
            if let Some(held) = self.held.take() {
                if let Some(err) = head
                    .as_ref()
                    .filter(|h| h.kind == "error")
                    .and_then(|h| h.error.as_ref())
                {
                    return Err(ApiError::from_upstream_type(&err.kind, err.message.clone()));
                }
                out.extend_from_slice(&held);
            }
            let Some(head) = head else {
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
            Err(ApiError::bad_upstream(
                "upstream stream ended before the response was complete",
            ))
        }
    }
}

/// A whole Anthropic message as the event sequence a streaming client
/// expects, for an upstream that answered a streaming request with JSON.
/// Blocks pass through as they are: text, thinking and tool input stream
/// as deltas; any other block (server tool results, blocks this build does
/// not know) is sent whole in its `content_block_start`, as Anthropic does.
pub fn message_events(body: &[u8], out: &mut BytesMut) -> Result<Usage, ApiError> {
    use crate::protocol::sse::write_event;
    use serde_json::{json, Value};
    let mut message: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_upstream(format!("upstream returned an invalid message: {e}"))
        })?;
    let usage = usage_of(body);
    let content = match message.remove("content") {
        Some(Value::Array(blocks)) => blocks,
        _ => Vec::new(),
    };
    let stop_reason = message.remove("stop_reason").unwrap_or(Value::Null);
    let stop_sequence = message.remove("stop_sequence").unwrap_or(Value::Null);
    let full_usage = message.get("usage").cloned().unwrap_or(json!({}));
    message.insert("content".into(), json!([]));
    message.insert("stop_reason".into(), Value::Null);
    message.insert("stop_sequence".into(), Value::Null);
    write_event(
        out,
        "message_start",
        &json!({"type": "message_start", "message": message}),
    );
    for (index, mut block) in content.into_iter().enumerate() {
        let kind = block["type"].as_str().unwrap_or_default().to_string();
        let mut deltas = Vec::new();
        match kind.as_str() {
            "text" => {
                let text = block["text"].take();
                block["text"] = json!("");
                deltas.push(json!({"type": "text_delta", "text": text}));
                if let Some(Value::Array(citations)) =
                    block.as_object_mut().and_then(|b| b.remove("citations"))
                {
                    for c in citations {
                        deltas.push(json!({"type": "citations_delta", "citation": c}));
                    }
                }
            }
            "thinking" => {
                let thinking = block["thinking"].take();
                let signature = block["signature"].take();
                block["thinking"] = json!("");
                block["signature"] = json!("");
                deltas.push(json!({"type": "thinking_delta", "thinking": thinking}));
                deltas.push(json!({"type": "signature_delta", "signature": signature.as_str().unwrap_or("")}));
            }
            "tool_use" | "server_tool_use" | "mcp_tool_use" => {
                let input = block["input"].take();
                block["input"] = json!({});
                deltas.push(json!({"type": "input_json_delta", "partial_json": input.to_string()}));
            }
            _ => {}
        }
        write_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        for delta in deltas {
            write_event(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": delta}),
            );
        }
        write_event(
            out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
    }
    write_event(
        out,
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence}, "usage": full_usage}),
    );
    write_event(out, "message_stop", &json!({"type": "message_stop"}));
    Ok(usage)
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
