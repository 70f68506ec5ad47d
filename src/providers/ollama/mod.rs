//! Ollama's native `/api/chat` (for Ollama without the Anthropic API):
//! NDJSON streaming, tools, images as base64, `think`.
//!
//! The conversation is first put in OpenAI order by the OpenAI translation
//! (tool results straight after their calls, unanswered calls closed), then
//! reshaped into Ollama's message form, so the ordering rules live once.

use super::openai::request::{ChatMessage, Part, UserContent};
use super::openai::response::parse_arguments;
use super::openai::OpenAiOptions;
use super::{Capabilities, Endpoint, Progress};
use crate::protocol::anthropic::{
    MessageResponse, MessagesRequest, ResponseBlock, StopReason, Usage,
};
use crate::protocol::error::ApiError;
use crate::protocol::events::{
    empty_text, empty_thinking, empty_tool_use, input_json_delta, text_delta, thinking_delta,
    BlockKey, BlockKind, EventWriter,
};
use crate::protocol::readable;
use crate::protocol::validate::parse_json;
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::borrow::Cow;

/// `/api/chat` under the base URL (a full `.../api/chat` URL is kept).
pub fn endpoint(base_url: &str) -> Result<Endpoint, String> {
    let mut url = url::Url::parse(base_url).map_err(|e| format!("not a URL: {e}"))?;
    let path = url.path().trim_end_matches('/').to_string();
    if !path.ends_with("/api/chat") {
        url.set_path(&format!("{path}/api/chat"));
    }
    Endpoint::from_url(&url)
}

#[derive(Debug, Serialize)]
pub struct OllamaRequest<'a> {
    pub model: &'a str,
    pub messages: Vec<OllamaMessage<'a>>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Value>,
    pub options: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub think: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct OllamaMessage<'a> {
    pub role: &'static str,
    pub content: Cow<'a, str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
}

pub fn to_ollama_request<'a>(
    req: &'a MessagesRequest<'a>,
    model: &'a str,
    opts: &OpenAiOptions,
    caps: &Capabilities,
) -> Result<OllamaRequest<'a>, ApiError> {
    let chat = super::openai::request::to_chat_request(req, model, opts)?;
    let mut messages = Vec::with_capacity(chat.messages.len());
    // Tool call id -> name, for Ollama's `tool_name` on results.
    let mut call_names: Vec<(&str, String)> = Vec::new();
    for m in chat.messages {
        messages.push(match m {
            ChatMessage::System { content } => message("system", content),
            ChatMessage::User { content } => user_message(content)?,
            ChatMessage::Assistant {
                content,
                tool_calls,
            } => {
                let mut msg = message("assistant", content.unwrap_or_default());
                for call in tool_calls {
                    call_names.push((call.id, call.function.name.to_string()));
                    msg.tool_calls.push(json!({"function": {
                        "name": call.function.name,
                        "arguments": parse_arguments(&call.function.arguments),
                    }}));
                }
                msg
            }
            ChatMessage::Tool {
                tool_call_id,
                content,
            } => {
                let mut msg = message("tool", content);
                msg.tool_name = call_names
                    .iter()
                    .find(|(id, _)| *id == tool_call_id)
                    .map(|(_, name)| name.clone());
                msg
            }
        });
    }
    let tools = chat
        .tools
        .into_iter()
        .flatten()
        .map(|t| serde_json::to_value(t).expect("tools serialize"))
        .collect();
    let mut options = json!({"num_predict": chat.max_tokens.or(chat.max_completion_tokens)});
    if let Some(t) = req.temperature {
        options["temperature"] = json!(t);
    }
    if let Some(p) = req.top_p {
        options["top_p"] = json!(p);
    }
    if let Some(stop) = req.stop_sequences.as_ref().filter(|s| !s.is_empty()) {
        options["stop"] = json!(stop);
    }
    if let Some(window) = caps.context_window {
        options["num_ctx"] = json!(window);
    }
    let thinking = matches!(
        req.thinking,
        Some(
            crate::protocol::anthropic::Thinking::Enabled { .. }
                | crate::protocol::anthropic::Thinking::Adaptive
        )
    );
    Ok(OllamaRequest {
        model,
        messages,
        stream: req.is_stream(),
        tools,
        options,
        think: (caps.reasoning && thinking).then_some(true),
        format: chat
            .response_format
            .and_then(|f| f.pointer("/json_schema/schema").cloned()),
    })
}

fn message<'a>(role: &'static str, content: Cow<'a, str>) -> OllamaMessage<'a> {
    OllamaMessage {
        role,
        content,
        images: Vec::new(),
        tool_calls: Vec::new(),
        tool_name: None,
    }
}

/// Ollama takes text plus a list of base64 images. Image URLs and PDF
/// documents, which it cannot take, become notes in the text.
fn user_message(content: UserContent<'_>) -> Result<OllamaMessage<'_>, ApiError> {
    let parts = match content {
        UserContent::Text(t) => return Ok(message("user", t)),
        UserContent::Parts(p) => p,
    };
    let mut texts = Vec::new();
    let mut images = Vec::new();
    for part in parts {
        match part {
            Part::Text { text } => texts.push(text),
            Part::ImageUrl { image_url } => match image_url.url.split_once(";base64,") {
                Some((_, data)) if image_url.url.starts_with("data:") => {
                    images.push(data.to_string())
                }
                _ => texts.push(Cow::Owned(readable::media_note(
                    "image",
                    None,
                    &image_url.url,
                ))),
            },
            Part::File { file } => texts.push(Cow::Owned(readable::media_note(
                "PDF document",
                Some(file.filename),
                "sent as a file",
            ))),
        }
    }
    let mut msg = message("user", Cow::Owned(texts.join("\n")));
    msg.images = images;
    Ok(msg)
}

#[derive(Debug, Deserialize, Default)]
struct OllamaChunk {
    #[serde(default)]
    message: Option<OllamaOut>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct OllamaOut {
    #[serde(default)]
    content: String,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    tool_calls: Vec<OllamaToolCall>,
}

#[derive(Debug, Deserialize)]
struct OllamaToolCall {
    function: OllamaFunction,
}

#[derive(Debug, Deserialize)]
struct OllamaFunction {
    name: String,
    #[serde(default)]
    arguments: Value,
}

impl OllamaChunk {
    fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.prompt_eval_count.unwrap_or(0),
            output_tokens: self.eval_count.unwrap_or(0),
            ..Usage::default()
        }
    }

    fn stop_reason(&self, saw_tool_call: bool) -> StopReason {
        match self.done_reason.as_deref() {
            Some("length") => StopReason::MaxTokens,
            _ if saw_tool_call => StopReason::ToolUse,
            _ => StopReason::EndTurn,
        }
    }
}

/// An error Ollama reports in a 200 answer or inside its stream, as the
/// HTTP status it stands for: a missing model is a 404 and a request the
/// model cannot serve a 400 (the client's to fix, not a provider failure
/// for the breaker); anything else a 500.
fn application_error(message: String) -> ApiError {
    let m = message.to_ascii_lowercase();
    let status = if m.contains("not found") {
        404
    } else if m.contains("does not support")
        || m.contains("invalid")
        || m.contains("exceeds")
        || m.contains("too long")
    {
        400
    } else {
        500
    };
    ApiError::from_upstream_status(status, message)
}

fn arguments_object(v: Value) -> Value {
    match v {
        Value::Object(_) => v,
        Value::String(s) => parse_arguments(&s),
        Value::Null => json!({}),
        other => json!({"_raw_arguments": other}),
    }
}

/// A whole `/api/chat` response (`stream: false`).
pub fn to_message(body: &[u8], client_model: &str) -> Result<MessageResponse, ApiError> {
    let chunk: OllamaChunk = parse_json(body).map_err(|e| {
        ApiError::bad_upstream(format!(
            "upstream returned an invalid chat response: {}",
            e.message
        ))
    })?;
    if let Some(err) = chunk.error {
        return Err(application_error(err));
    }
    let mut content = Vec::new();
    let out = chunk.message.as_ref();
    if let Some(t) = out
        .and_then(|m| m.thinking.clone())
        .filter(|t| !t.is_empty())
    {
        content.push(ResponseBlock::Thinking {
            thinking: t,
            signature: String::new(),
        });
    }
    if let Some(text) = out.map(|m| m.content.clone()).filter(|t| !t.is_empty()) {
        content.push(ResponseBlock::Text { text });
    }
    let calls = chunk.message.as_ref().map_or(0, |m| m.tool_calls.len());
    let stop = chunk.stop_reason(calls > 0);
    let usage = chunk.usage();
    for call in chunk.message.into_iter().flat_map(|m| m.tool_calls) {
        content.push(ResponseBlock::ToolUse {
            id: crate::util::ids::tool_use_id(),
            name: call.function.name,
            input: arguments_object(call.function.arguments),
        });
    }
    Ok(MessageResponse {
        id: crate::util::ids::message_id(),
        kind: "message",
        role: "assistant",
        model: client_model.to_string(),
        content,
        stop_reason: Some(stop),
        stop_sequence: None,
        usage,
    })
}

/// NDJSON chunks -> Anthropic events. Text and thinking stream as deltas;
/// Ollama sends each tool call whole, so each becomes one complete block.
pub struct StreamTranslator {
    events: EventWriter,
    lines: crate::util::lines::LineReader,
    tool_calls: u64,
    usage: Usage,
}

/// A single NDJSON line larger than this is a protocol error.
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

impl StreamTranslator {
    pub fn new(model: impl Into<String>) -> Self {
        StreamTranslator {
            events: EventWriter::new(model),
            lines: crate::util::lines::LineReader::new(),
            tool_calls: 0,
            usage: Usage::default(),
        }
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    fn done(&self) -> bool {
        self.events.finished()
    }

    pub fn set_input_estimate(&mut self, tokens: u64) {
        self.events.set_input_estimate(tokens);
    }

    pub fn feed(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<Progress, ApiError> {
        self.lines.push(bytes);
        while let Some(line) = self.lines.next_line() {
            if self.events.finished() || line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let chunk: OllamaChunk = serde_json::from_slice(line)
                .map_err(|e| ApiError::bad_upstream(format!("malformed upstream stream: {e}")))?;
            self.chunk(chunk, out)?;
        }
        if self.lines.pending().len() > MAX_LINE_BYTES {
            return Err(ApiError::bad_upstream(
                "upstream sent an oversized stream line",
            ));
        }
        Ok(if self.done() {
            Progress::Done
        } else {
            Progress::Continue
        })
    }

    pub fn end_of_input(&mut self, out: &mut BytesMut) -> Result<(), ApiError> {
        if !self.done() && !self.lines.pending().iter().all(u8::is_ascii_whitespace) {
            // A last line without its newline.
            let rest = self.lines.take_pending();
            if let Ok(chunk) = serde_json::from_slice::<OllamaChunk>(&rest) {
                self.chunk(chunk, out)?;
            }
        }
        if self.done() {
            Ok(())
        } else {
            Err(ApiError::bad_upstream(
                "upstream stream ended before the response was complete",
            ))
        }
    }

    fn chunk(&mut self, chunk: OllamaChunk, out: &mut BytesMut) -> Result<(), ApiError> {
        if let Some(err) = chunk.error {
            return Err(application_error(err));
        }
        self.events.start(crate::util::ids::message_id);
        if let Some(m) = &chunk.message {
            if let Some(t) = m.thinking.as_deref().filter(|t| !t.is_empty()) {
                self.events
                    .open(BlockKey::new(BlockKind::Thinking, 0), empty_thinking, out);
                self.events.delta(thinking_delta(t), out);
            }
            if !m.content.is_empty() {
                self.events
                    .open(BlockKey::new(BlockKind::Text, 0), empty_text, out);
                self.events.delta(text_delta(&m.content), out);
            }
            for call in &m.tool_calls {
                let args = arguments_object(call.function.arguments.clone());
                let key = BlockKey::new(BlockKind::ToolUse, self.tool_calls);
                self.tool_calls += 1;
                self.events.open(
                    key,
                    || empty_tool_use(&crate::util::ids::tool_use_id(), &call.function.name),
                    out,
                );
                self.events.delta(input_json_delta(&args.to_string()), out);
                self.events.close(out);
            }
        }
        if chunk.done {
            self.usage = chunk.usage();
            let stop = chunk.stop_reason(self.tool_calls > 0);
            self.events.finish(stop, &self.usage, out);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
