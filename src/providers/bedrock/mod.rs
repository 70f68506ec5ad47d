//! AWS Bedrock through the Converse and ConverseStream APIs.
//!
//! Requests are signed with SigV4 by AWS's `aws-sigv4` (or carry a Bedrock
//! API key as a bearer token); streamed responses arrive in AWS's binary
//! event-stream framing, decoded (CRCs checked) by `aws-smithy-eventstream`.

use super::{Endpoint, Progress};
use crate::protocol::anthropic::{
    ContentBlock, MediaSource, MessageResponse, MessagesRequest, ResponseBlock, Role, StopReason,
    TextOrBlocks, Thinking, ToolChoice, ToolResultBlock, Usage,
};
use crate::protocol::error::ApiError;
use crate::protocol::events::{
    empty_text, empty_thinking, empty_tool_use, input_json_delta, text_delta, thinking_delta,
    BlockKey, BlockKind, EventWriter,
};
use crate::protocol::readable;
use crate::protocol::validate::parse_json;
use aws_credential_types::Credentials;
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use bytes::BytesMut;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::SystemTime;

pub const DEFAULT_REGION: &str = "us-east-1";

/// The runtime endpoint of `region`, unless `base_url` overrides it.
pub fn endpoint(base_url: Option<&str>, region: &str) -> Result<Endpoint, String> {
    let default = format!("https://bedrock-runtime.{region}.amazonaws.com");
    let url =
        url::Url::parse(base_url.unwrap_or(&default)).map_err(|e| format!("not a URL: {e}"))?;
    let mut ep = Endpoint::from_url(&url)?;
    ep.path = ep.path.trim_end_matches('/').to_string();
    Ok(ep)
}

/// `/model/{id}/converse` or `/converse-stream`, the id percent-encoded
/// (model ids and ARNs carry `:` and `/`).
pub fn path(base: &Endpoint, model: &str, stream: bool) -> String {
    let id: String = url::form_urlencoded::byte_serialize(model.as_bytes())
        .collect::<String>()
        .replace('+', "%20");
    let op = if stream {
        "converse-stream"
    } else {
        "converse"
    };
    format!("{}/model/{id}/{op}", base.path)
}

/// SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`)
/// for a POST of `body` to `endpoint` + `path`.
pub fn sign(
    credentials: &Credentials,
    region: &str,
    endpoint: &Endpoint,
    path: &str,
    body: &[u8],
    time: SystemTime,
) -> Result<Vec<(&'static str, String)>, ApiError> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let identity = credentials.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("bedrock")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| ApiError::api(format!("cannot sign the Bedrock request: {e}")))?
        .into();
    let scheme = if endpoint.tls { "https" } else { "http" };
    let uri = format!("{scheme}://{}{path}", endpoint.authority());
    let authority = endpoint.authority();
    let headers = [
        ("host", authority.as_str()),
        ("content-type", "application/json"),
    ];
    let request =
        SignableRequest::new("POST", &uri, headers.into_iter(), SignableBody::Bytes(body))
            .map_err(|e| ApiError::api(format!("cannot sign the Bedrock request: {e}")))?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| ApiError::api(format!("cannot sign the Bedrock request: {e}")))?
        .into_parts();
    let (headers, _) = instructions.into_parts();
    Ok(headers
        .into_iter()
        .map(|h| (h.name(), h.value().to_string()))
        .collect())
}

/// The Converse request body.
pub fn to_converse(
    req: &MessagesRequest,
    max_tokens_cap: Option<u64>,
    reasoning: bool,
) -> Result<Value, ApiError> {
    let mut system: Vec<Value> = match &req.system {
        Some(TextOrBlocks::Text(t)) if !t.is_empty() => vec![json!({"text": t})],
        Some(TextOrBlocks::Blocks(b)) => b
            .iter()
            .filter(|t| !t.text.is_empty())
            .map(|t| json!({"text": t.text}))
            .collect(),
        _ => Vec::new(),
    };
    let max_tokens = max_tokens_cap.map_or(req.max_tokens, |c| req.max_tokens.min(c));
    // Converse wants alternating roles: adjacent messages of one role merge,
    // and mid-conversation system messages become user text.
    let mut messages: Vec<(Role, Vec<Value>)> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let role = if m.role == Role::Assistant {
            Role::Assistant
        } else {
            Role::User
        };
        let mut content = Vec::new();
        match &m.content {
            TextOrBlocks::Text(t) if !t.is_empty() => content.push(json!({"text": t})),
            TextOrBlocks::Text(_) => {}
            TextOrBlocks::Blocks(blocks) => {
                for (j, b) in blocks.iter().enumerate() {
                    if let Some(v) = block(b, &format!("messages.{i}.content.{j}"))? {
                        content.push(v);
                    }
                }
            }
        }
        if content.is_empty() {
            continue;
        }
        match messages.last_mut() {
            Some((r, c)) if *r == role => c.extend(content),
            _ => messages.push((role, content)),
        }
    }
    if messages.first().is_some_and(|(r, _)| *r == Role::Assistant) {
        messages.insert(0, (Role::User, vec![json!({"text": "."})]));
    }
    pair_tool_results(&mut messages);
    let mut body = json!({
        "messages": messages.into_iter().map(|(r, c)| json!({
            "role": if r == Role::Assistant { "assistant" } else { "user" },
            "content": c,
        })).collect::<Vec<_>>(),
        "inferenceConfig": {"maxTokens": max_tokens},
    });
    if !system.is_empty() {
        body["system"] = Value::Array(std::mem::take(&mut system));
    }
    let inference = &mut body["inferenceConfig"];
    if let Some(t) = req.temperature {
        inference["temperature"] = json!(t);
    }
    if let Some(p) = req.top_p {
        inference["topP"] = json!(p);
    }
    if let Some(s) = req.stop_sequences.as_ref().filter(|s| !s.is_empty()) {
        inference["stopSequences"] = json!(s);
    }
    let tools: Vec<Value> = req
        .tools
        .iter()
        .flatten()
        .filter(|t| t.is_client_tool())
        .map(|t| {
            let schema: Value =
                serde_json::from_str(t.input_schema.as_ref().map_or("{}", |s| s.get()))
                    .unwrap_or(json!({}));
            let description = t
                .description
                .as_ref()
                .and_then(|d| serde_json::from_str::<String>(d.get()).ok());
            let mut spec = json!({"name": t.name, "inputSchema": {"json": schema}});
            if let Some(d) = description.filter(|d| !d.is_empty()) {
                spec["description"] = json!(d);
            }
            json!({"toolSpec": spec})
        })
        .collect();
    if !tools.is_empty() {
        let choice = match &req.tool_choice {
            Some(ToolChoice::Any { .. }) => json!({"any": {}}),
            Some(ToolChoice::Tool { name, .. }) => json!({"tool": {"name": name}}),
            // Converse has no "none"; tools stay declared for the history.
            _ => json!({"auto": {}}),
        };
        body["toolConfig"] = json!({"tools": tools, "toolChoice": choice});
    }
    if let (true, Some(Thinking::Enabled { budget_tokens })) = (reasoning, &req.thinking) {
        // Kept under the (capped) maxTokens, or left out: see `providers::thinking`.
        if let Some(budget) = super::thinking::budget_within(*budget_tokens, max_tokens) {
            body["additionalModelRequestFields"] =
                json!({"thinking": {"type": "enabled", "budget_tokens": budget}});
        }
    }
    Ok(body)
}

/// Converse wants every `toolUse` of an assistant turn answered by a
/// `toolResult` in the next user turn, once, and no other `toolResult`:
/// a result for no open call becomes text, a call with no result is
/// answered with the placeholder the OpenAI translation uses, and the
/// results go first in their turn.
fn pair_tool_results(messages: &mut Vec<(Role, Vec<Value>)>) {
    let use_id = |b: &Value| {
        b.pointer("/toolUse/toolUseId")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let result_id = |b: &Value| {
        b.pointer("/toolResult/toolUseId")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let placeholder = |id: &str| json!({"toolResult": {"toolUseId": id, "content": [{"text": super::openai::request::MISSING_TOOL_RESULT}]}});
    let mut i = 0;
    while i < messages.len() {
        let pending: Vec<String> = if messages[i].0 == Role::Assistant {
            messages[i].1.iter().filter_map(use_id).collect()
        } else {
            Vec::new()
        };
        // The turn after: a user turn (one is added when there is none).
        let next = i + 1;
        if pending.is_empty() {
            i += 1;
            continue;
        }
        if next == messages.len() || messages[next].0 != Role::User {
            messages.insert(next, (Role::User, Vec::new()));
        }
        let content = std::mem::take(&mut messages[next].1);
        let mut results = Vec::new();
        let mut rest = Vec::new();
        let mut answered: Vec<String> = Vec::new();
        for b in content {
            match result_id(&b) {
                Some(id) if pending.contains(&id) && !answered.contains(&id) => {
                    answered.push(id);
                    results.push(b);
                }
                Some(id) => {
                    rest.push(json!({"text": format!("[tool result {id}] {}", result_text(&b))}))
                }
                None => rest.push(b),
            }
        }
        for id in pending.iter().filter(|id| !answered.contains(id)) {
            results.push(placeholder(id));
        }
        results.extend(rest);
        messages[next].1 = results;
        i = next + 1;
    }
    // A user turn with results for no call before it: those become text.
    for k in 0..messages.len() {
        let after_calls = k > 0
            && messages[k - 1].0 == Role::Assistant
            && messages[k - 1].1.iter().any(|b| use_id(b).is_some());
        if messages[k].0 == Role::User && !after_calls {
            for b in messages[k].1.iter_mut() {
                if let Some(id) = result_id(b) {
                    *b = json!({"text": format!("[tool result {id}] {}", result_text(b))});
                }
            }
        }
    }
}

/// The text of a `toolResult`'s content, for one turned into text.
fn result_text(b: &Value) -> String {
    b.pointer("/toolResult/content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Bedrock's tool-use id, or one from the gateway's generator when it gave
/// none (an empty id would pair every result with every call).
fn tool_use_id(id: &Value) -> String {
    id.as_str()
        .filter(|i| !i.is_empty())
        .map_or_else(crate::util::ids::tool_use_id, str::to_owned)
}

fn image_format(media_type: &str) -> &str {
    media_type.strip_prefix("image/").unwrap_or(media_type)
}

fn block(b: &ContentBlock, path: &str) -> Result<Option<Value>, ApiError> {
    Ok(match b {
        ContentBlock::Text { text } if text.is_empty() => None,
        ContentBlock::Text { text } => Some(json!({"text": text})),
        ContentBlock::Image {
            source:
                source @ (MediaSource::Base64 { .. }
                | MediaSource::Url { .. }
                | MediaSource::Text { .. }),
        } => Some(image(source, path)?),
        ContentBlock::Document {
            source: MediaSource::Text { data, .. },
            ..
        } => Some(json!({"text": data})),
        ContentBlock::Document {
            source: MediaSource::Base64 { data, .. },
            title,
        } => Some(json!({"document": {"format": "pdf",
                "name": title.as_deref().unwrap_or("document"), "source": {"bytes": data}}})),
        // Converse takes media by value only: a URL becomes a note.
        ContentBlock::Document {
            source: MediaSource::Url { url },
            title,
        } => Some(json!({"text": readable::media_note("document", title.as_deref(), url)})),
        ContentBlock::ToolUse { id, name, input } => {
            Some(json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}))
        }
        ContentBlock::ToolResult {
            tool_use_id,
            content,
            is_error,
        } => {
            let mut parts = Vec::new();
            match content {
                Some(TextOrBlocks::Text(t)) => parts.push(json!({"text": t})),
                Some(TextOrBlocks::Blocks(rb)) => {
                    for (k, r) in rb.iter().enumerate() {
                        match r {
                            ToolResultBlock::Image {
                                source:
                                    source @ (MediaSource::Base64 { .. } | MediaSource::Url { .. }),
                            } => parts.push(image(source, &format!("{path}.content.{k}"))?),
                            other => {
                                if let Some(t) = readable::tool_result_block_text(other) {
                                    parts.push(json!({"text": t}))
                                }
                            }
                        }
                    }
                }
                None => {}
            }
            if parts.is_empty() {
                parts.push(json!({"text": ""}));
            }
            let mut result = json!({"toolUseId": tool_use_id, "content": parts});
            if is_error.unwrap_or(false) {
                result["status"] = json!("error");
            }
            Some(json!({"toolResult": result}))
        }
        // Thinking goes back only with its signature, which Bedrock checks.
        ContentBlock::Thinking {
            thinking,
            signature: Some(sig),
        } if !sig.is_empty() => Some(
            json!({"reasoningContent": {"reasoningText": {"text": thinking, "signature": sig}}}),
        ),
        ContentBlock::Thinking { .. } => None,
        ContentBlock::RedactedThinking { data } => {
            Some(json!({"reasoningContent": {"redactedContent": data}}))
        }
        // Blocks only Anthropic understands: as text, or left out.
        other => readable::block_text(other).map(|t| json!({"text": t})),
    })
}

fn image(source: &MediaSource, path: &str) -> Result<Value, ApiError> {
    match source {
        MediaSource::Base64 { media_type, data } => {
            Ok(json!({"image": {"format": image_format(media_type), "source": {"bytes": data}}}))
        }
        MediaSource::Url { url } => Ok(json!({"text": readable::media_note("image", None, url)})),
        _ => Err(ApiError::invalid(format!(
            "{path}.source.type: an image takes a base64 or URL source"
        ))),
    }
}

fn stop_reason(s: &str) -> StopReason {
    match s {
        "tool_use" => StopReason::ToolUse,
        "max_tokens" | "model_context_window_exceeded" => StopReason::MaxTokens,
        "stop_sequence" => StopReason::StopSequence,
        "content_filtered" | "guardrail_intervened" => StopReason::Refusal,
        _ => StopReason::EndTurn,
    }
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct ConverseUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_write_input_tokens: u64,
}

impl From<ConverseUsage> for Usage {
    fn from(u: ConverseUsage) -> Usage {
        Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_creation_input_tokens: u.cache_write_input_tokens,
            cache_read_input_tokens: u.cache_read_input_tokens,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseResponse {
    output: ConverseOutput,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: ConverseUsage,
}

#[derive(Debug, Deserialize)]
struct ConverseOutput {
    message: ConverseMessage,
}

#[derive(Debug, Deserialize)]
struct ConverseMessage {
    #[serde(default)]
    content: Vec<Value>,
}

/// A whole Converse response.
pub fn to_message(body: &[u8], client_model: &str) -> Result<MessageResponse, ApiError> {
    let r: ConverseResponse = parse_json(body).map_err(|e| {
        ApiError::bad_upstream(format!(
            "upstream returned an invalid Converse response: {}",
            e.message
        ))
    })?;
    let mut content = Vec::new();
    for c in r.output.message.content {
        if let Some(text) = c["text"].as_str() {
            content.push(ResponseBlock::Text {
                text: text.to_string(),
            });
        } else if let Some(t) = c.get("toolUse") {
            content.push(ResponseBlock::ToolUse {
                id: tool_use_id(&t["toolUseId"]),
                name: t["name"].as_str().unwrap_or_default().to_string(),
                input: t.get("input").cloned().unwrap_or(json!({})),
            });
        } else if let Some(rt) = c.pointer("/reasoningContent/reasoningText") {
            content.push(ResponseBlock::Thinking {
                thinking: rt["text"].as_str().unwrap_or_default().to_string(),
                signature: rt["signature"].as_str().unwrap_or_default().to_string(),
            });
        }
    }
    Ok(MessageResponse {
        id: crate::util::ids::message_id(),
        kind: "message",
        role: "assistant",
        model: client_model.to_string(),
        content,
        stop_reason: Some(stop_reason(r.stop_reason.as_deref().unwrap_or("end_turn"))),
        stop_sequence: None,
        usage: r.usage.into(),
    })
}

/// ConverseStream event-stream frames -> Anthropic events.
pub struct StreamTranslator {
    events: EventWriter,
    buf: BytesMut,
    decoder: MessageFrameDecoder,
    stop: Option<StopReason>,
    usage: Usage,
}

impl StreamTranslator {
    pub fn new(model: impl Into<String>) -> Self {
        StreamTranslator {
            events: EventWriter::new(model),
            buf: BytesMut::new(),
            decoder: MessageFrameDecoder::new(),
            stop: None,
            usage: Usage::default(),
        }
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    pub fn set_input_estimate(&mut self, tokens: u64) {
        self.events.set_input_estimate(tokens);
    }

    pub fn feed(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<Progress, ApiError> {
        self.buf.extend_from_slice(bytes);
        while !self.events.finished() {
            let frame = self.decoder.decode_frame(&mut self.buf).map_err(|e| {
                ApiError::bad_upstream(format!("malformed upstream event stream: {e}"))
            })?;
            let DecodedFrame::Complete(message) = frame else {
                break;
            };
            let header = |name: &str| {
                message
                    .headers()
                    .iter()
                    .find(|h| h.name().as_str() == name)
                    .and_then(|h| h.value().as_string().ok())
                    .map(|s| s.as_str().to_string())
            };
            let payload: Value = serde_json::from_slice(message.payload()).unwrap_or(Value::Null);
            if header(":message-type").as_deref() == Some("exception") {
                let kind = header(":exception-type").unwrap_or_default();
                let text = payload["message"]
                    .as_str()
                    .unwrap_or("Bedrock stream exception")
                    .to_string();
                let status = match kind.as_str() {
                    "throttlingException" => 429,
                    "validationException" => 400,
                    "serviceUnavailableException" | "modelNotReadyException" => 503,
                    _ => 500,
                };
                return Err(ApiError::from_upstream_status(
                    status,
                    format!("{kind}: {text}"),
                ));
            }
            self.event(
                header(":event-type").as_deref().unwrap_or(""),
                &payload,
                out,
            );
        }
        Ok(if self.events.finished() {
            Progress::Done
        } else {
            Progress::Continue
        })
    }

    pub fn end_of_input(&mut self, out: &mut BytesMut) -> Result<(), ApiError> {
        // Usage metadata follows messageStop; a stream cut just before it is whole.
        if let (false, Some(stop), true) = (self.events.finished(), self.stop, self.buf.is_empty())
        {
            self.events.finish(stop, &self.usage, out);
        }
        if self.events.finished() {
            Ok(())
        } else {
            Err(ApiError::bad_upstream(
                "upstream stream ended before the response was complete",
            ))
        }
    }

    fn event(&mut self, kind: &str, p: &Value, out: &mut BytesMut) {
        self.events.start(crate::util::ids::message_id);
        let index = p["contentBlockIndex"].as_u64().unwrap_or(0);
        let ev = &mut self.events;
        match kind {
            "contentBlockStart" => {
                if let Some(tool) = p.pointer("/start/toolUse") {
                    let (id, name) = (
                        tool_use_id(&tool["toolUseId"]),
                        tool["name"].as_str().unwrap_or(""),
                    );
                    ev.open(
                        BlockKey::new(BlockKind::ToolUse, index),
                        || empty_tool_use(&id, name),
                        out,
                    );
                }
            }
            "contentBlockDelta" => {
                let d = &p["delta"];
                if let Some(text) = d["text"].as_str() {
                    ev.open(BlockKey::new(BlockKind::Text, index), empty_text, out);
                    ev.delta(text_delta(text), out);
                } else if let Some(input) = d.pointer("/toolUse/input").and_then(Value::as_str) {
                    ev.delta(input_json_delta(input), out);
                } else if let Some(r) = d.get("reasoningContent") {
                    ev.open(
                        BlockKey::new(BlockKind::Thinking, index),
                        empty_thinking,
                        out,
                    );
                    if let Some(t) = r["text"].as_str() {
                        ev.delta(thinking_delta(t), out);
                    }
                    if let Some(s) = r["signature"].as_str() {
                        ev.signature(s, out);
                    }
                }
            }
            "contentBlockStop" => {
                ev.close(out);
            }
            "messageStop" => {
                ev.close(out);
                self.stop = Some(stop_reason(p["stopReason"].as_str().unwrap_or("end_turn")));
            }
            "metadata" => {
                if let Ok(u) = serde_json::from_value::<ConverseUsage>(p["usage"].clone()) {
                    self.usage = u.into();
                }
                if let Some(stop) = self.stop {
                    self.events.finish(stop, &self.usage, out);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
