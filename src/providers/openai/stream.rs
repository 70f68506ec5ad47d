//! OpenAI chunk stream -> Anthropic SSE event sequence, as the chunks arrive.
//!
//! Anthropic allows one open content block at a time, so a change of kind
//! (text, thinking, a tool call with another index) closes the open block
//! and starts the next. Nothing is buffered beyond one SSE event.

use super::response::{message_id, reasoning_text, stop_reason, ChatUsage};
use crate::protocol::anthropic::{StopReason, Usage};
use crate::protocol::error::ApiError;
use crate::protocol::events::{
    empty_text, empty_thinking, empty_tool_use, input_json_delta, text_delta, thinking_delta,
    BlockKey, BlockKind, EventWriter,
};
use crate::protocol::sse::{SseEvent, SseParser};
use bytes::BytesMut;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<ChatUsage>,
    /// Some servers report a failure inside the stream.
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<Value>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Debug, Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

pub use crate::providers::Progress;

pub struct StreamTranslator {
    events: EventWriter,
    parser: SseParser,
    sse: Vec<SseEvent>,
    /// OpenAI tool indexes whose block was already closed.
    closed_tools: Vec<u64>,
    /// Tool calls seen, by the upstream's id, with the index they were
    /// given: pairs a delta that carries an id but no index with its call.
    tool_ids: Vec<(String, u64)>,
    finish_reason: Option<String>,
    saw_tool_call: bool,
    usage: Usage,
}

const TEXT: BlockKey = BlockKey {
    kind: BlockKind::Text,
    upstream_index: 0,
};
const THINKING: BlockKey = BlockKey {
    kind: BlockKind::Thinking,
    upstream_index: 0,
};

impl StreamTranslator {
    /// `model` is the name the client asked for, echoed in `message_start`.
    pub fn new(model: impl Into<String>) -> Self {
        StreamTranslator {
            events: EventWriter::new(model),
            parser: SseParser::new(),
            sse: Vec::new(),
            closed_tools: Vec::new(),
            tool_ids: Vec::new(),
            finish_reason: None,
            saw_tool_call: false,
            usage: Usage::default(),
        }
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    pub fn set_input_estimate(&mut self, tokens: u64) {
        self.events.set_input_estimate(tokens);
    }

    /// Feed upstream bytes; append Anthropic events to `out`. An error means
    /// the stream cannot go on: the caller sends it as `event: error`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<Progress, ApiError> {
        if self.events.finished() {
            return Ok(Progress::Done);
        }
        self.parser
            .feed(bytes, &mut self.sse)
            .map_err(|_| ApiError::bad_upstream("upstream sent an oversized stream event"))?;
        let events = std::mem::take(&mut self.sse);
        for event in &events {
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                self.finish(out);
                break;
            }
            let chunk: Chunk = serde_json::from_str(data)
                .map_err(|e| ApiError::bad_upstream(format!("malformed upstream stream: {e}")))?;
            self.chunk(chunk, out)?;
        }
        self.sse = events;
        self.sse.clear();
        Ok(if self.events.finished() {
            Progress::Done
        } else {
            Progress::Continue
        })
    }

    /// The upstream closed its stream. A stream that never said how it ended
    /// is an error; one that gave a finish reason (some servers omit
    /// `[DONE]`) is completed.
    pub fn end_of_input(&mut self, out: &mut BytesMut) -> Result<(), ApiError> {
        if self.events.finished() {
            return Ok(());
        }
        if self.finish_reason.is_some() && !self.parser.has_partial() {
            self.finish(out);
            return Ok(());
        }
        Err(ApiError::bad_upstream(
            "upstream stream ended before the response was complete",
        ))
    }

    fn chunk(&mut self, chunk: Chunk, out: &mut BytesMut) -> Result<(), ApiError> {
        if let Some(err) = chunk.error {
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| err.to_string());
            return Err(ApiError::from_upstream_status(
                stream_error_status(&err),
                message,
            ));
        }
        self.events.start(|| message_id(chunk.id.as_deref()));
        if let Some(usage) = chunk.usage {
            self.usage = usage.to_anthropic();
        }
        let Some(choice) = chunk.choices.into_iter().next() else {
            return Ok(());
        };
        if let Some(delta) = choice.delta {
            self.delta(delta, out)?;
        }
        if let Some(reason) = choice.finish_reason {
            self.close(out);
            self.finish_reason = Some(reason);
        }
        Ok(())
    }

    fn delta(&mut self, delta: Delta, out: &mut BytesMut) -> Result<(), ApiError> {
        if let Some(thinking) =
            reasoning_text(delta.reasoning_content.as_deref(), delta.reasoning.as_ref())
        {
            self.open(THINKING, empty_thinking, out);
            self.events.delta(thinking_delta(&thinking), out);
        }
        for text in [delta.content, delta.refusal].into_iter().flatten() {
            if text.is_empty() {
                continue;
            }
            self.open(TEXT, empty_text, out);
            self.events.delta(text_delta(&text), out);
        }
        for call in delta.tool_calls.into_iter().flatten() {
            let index = self.tool_index(&call);
            let key = BlockKey::new(BlockKind::ToolUse, index);
            let function = call.function.unwrap_or(FunctionDelta {
                name: None,
                arguments: None,
            });
            if self.events.open_block() != Some(key) {
                if self.closed_tools.contains(&index) {
                    return Err(ApiError::bad_upstream(format!(
                        "upstream interleaved the arguments of tool call {index} with another call"
                    )));
                }
                let id = call
                    .id
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(crate::util::ids::tool_use_id);
                let name = function.name.clone().unwrap_or_default();
                self.open(key, || empty_tool_use(&id, &name), out);
                self.saw_tool_call = true;
            }
            if let Some(args) = function.arguments.filter(|a| !a.is_empty()) {
                self.events.delta(input_json_delta(&args), out);
            }
        }
        Ok(())
    }

    /// Which call a tool delta belongs to: its `index` when it has one;
    /// else the call with its id; else, with neither, the call being
    /// streamed (a continuation); a new id without an index is a new call.
    fn tool_index(&mut self, call: &ToolCallDelta) -> u64 {
        let id = call.id.as_deref().filter(|i| !i.is_empty());
        if let Some(index) = call.index {
            if let Some(id) = id {
                if !self.tool_ids.iter().any(|(known, _)| known == id) {
                    self.tool_ids.push((id.to_string(), index as u64));
                }
            }
            return index as u64;
        }
        let open = self
            .events
            .open_block()
            .filter(|k| k.kind == BlockKind::ToolUse)
            .map(|k| k.upstream_index);
        match id {
            Some(id) => match self.tool_ids.iter().find(|(known, _)| known == id) {
                Some((_, index)) => *index,
                None => {
                    // Past every index seen, so it cannot collide with one.
                    let index = self
                        .tool_ids
                        .iter()
                        .map(|(_, i)| i + 1)
                        .chain(self.closed_tools.iter().map(|i| i + 1))
                        .chain(open.map(|i| i + 1))
                        .max()
                        .unwrap_or(0);
                    self.tool_ids.push((id.to_string(), index));
                    index
                }
            },
            None => {
                let named = call
                    .function
                    .as_ref()
                    .and_then(|f| f.name.as_deref())
                    .is_some_and(|n| !n.is_empty());
                match open {
                    // Arguments for the call being streamed.
                    Some(i) if !named => i,
                    // A name starts a new call.
                    _ => self
                        .closed_tools
                        .iter()
                        .map(|i| i + 1)
                        .chain(open.map(|i| i + 1))
                        .chain(self.tool_ids.iter().map(|(_, i)| i + 1))
                        .max()
                        .unwrap_or(0),
                }
            }
        }
    }

    fn open(&mut self, key: BlockKey, block: impl FnOnce() -> Value, out: &mut BytesMut) {
        if self.events.open_block() != Some(key) {
            self.close(out);
        }
        self.events.open(key, block, out);
    }

    /// Close the open block, remembering closed tool calls.
    fn close(&mut self, out: &mut BytesMut) {
        if let Some(key) = self.events.close(out) {
            if key.kind == BlockKind::ToolUse {
                self.closed_tools.push(key.upstream_index);
            }
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        self.events.start(|| message_id(None));
        self.close(out);
        let mut stop = stop_reason(self.finish_reason.as_deref());
        if self.saw_tool_call && stop == StopReason::EndTurn {
            stop = StopReason::ToolUse;
        }
        self.events.finish(stop, &self.usage, out);
    }
}

/// The HTTP status an OpenAI-style in-stream `error` stands for: a numeric
/// `code`, else what its `code` or `type` names (`rate_limit_exceeded`,
/// `server_error`, ...), else 500.
fn stream_error_status(err: &Value) -> u16 {
    if let Some(code) = err.get("code").and_then(Value::as_u64) {
        return u16::try_from(code).unwrap_or(500);
    }
    let name = [err.get("code"), err.get("type")]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase();
    let has = |s: &str| name.contains(s);
    if has("rate_limit") || has("quota") {
        429
    } else if has("overloaded") || has("unavailable") || has("busy") {
        503
    } else if has("auth") || has("api_key") {
        401
    } else if has("permission") {
        403
    } else if has("not_found") {
        404
    } else if has("invalid") || has("context_length") {
        400
    } else {
        500
    }
}
