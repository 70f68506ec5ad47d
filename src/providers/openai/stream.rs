//! OpenAI chunk stream -> Anthropic SSE event sequence, as the chunks arrive.
//!
//! Anthropic allows one open content block at a time, so a change of kind
//! (text, thinking, a tool call with another index) closes the open block
//! and starts the next. Nothing is buffered beyond one SSE event.

use super::response::{message_id, reasoning_text, stop_reason, ChatUsage};
use crate::protocol::anthropic::{StopReason, Usage};
use crate::protocol::error::ApiError;
use crate::protocol::sse::{write_event, SseEvent, SseParser};
use bytes::BytesMut;
use serde::Deserialize;
use serde_json::{json, Value};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// A tool call, by its OpenAI `index`.
    Tool(usize),
}

pub use crate::providers::Progress;

pub struct StreamTranslator {
    model: String,
    parser: SseParser,
    events: Vec<SseEvent>,
    started: bool,
    open: Option<Block>,
    next_index: usize,
    /// OpenAI tool indexes whose block was already closed.
    closed_tools: Vec<usize>,
    finish_reason: Option<String>,
    saw_tool_call: bool,
    usage: Usage,
    done: bool,
}

impl StreamTranslator {
    /// `model` is the name the client asked for, echoed in `message_start`.
    pub fn new(model: impl Into<String>) -> Self {
        StreamTranslator {
            model: model.into(),
            parser: SseParser::new(),
            events: Vec::new(),
            started: false,
            open: None,
            next_index: 0,
            closed_tools: Vec::new(),
            finish_reason: None,
            saw_tool_call: false,
            usage: Usage::default(),
            done: false,
        }
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// True once `message_start` has been produced, i.e. the client has (or
    /// will have) seen bytes of this response.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Feed upstream bytes; append Anthropic events to `out`. An error means
    /// the stream cannot go on: the caller sends it as `event: error`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<Progress, ApiError> {
        if self.done {
            return Ok(Progress::Done);
        }
        self.parser.feed(bytes, &mut self.events).map_err(|_| {
            ApiError::api("upstream sent an oversized stream event").with_status(502)
        })?;
        let events = std::mem::take(&mut self.events);
        for event in &events {
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                self.finish(out);
                break;
            }
            let chunk: Chunk = serde_json::from_str(data).map_err(|e| {
                ApiError::api(format!("malformed upstream stream: {e}")).with_status(502)
            })?;
            self.chunk(chunk, out)?;
        }
        self.events = events;
        self.events.clear();
        Ok(if self.done {
            Progress::Done
        } else {
            Progress::Continue
        })
    }

    /// The upstream closed its stream. A stream that never said how it ended
    /// is an error; one that gave a finish reason (some servers omit
    /// `[DONE]`) is completed.
    pub fn end_of_input(&mut self, out: &mut BytesMut) -> Result<(), ApiError> {
        if self.done {
            return Ok(());
        }
        if self.finish_reason.is_some() && !self.parser.has_partial() {
            self.finish(out);
            return Ok(());
        }
        Err(
            ApiError::api("upstream stream ended before the response was complete")
                .with_status(502),
        )
    }

    fn chunk(&mut self, chunk: Chunk, out: &mut BytesMut) -> Result<(), ApiError> {
        if let Some(err) = chunk.error {
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| err.to_string());
            let status = err.get("code").and_then(Value::as_u64).unwrap_or(500) as u16;
            return Err(ApiError::from_upstream_status(status, message));
        }
        self.start(chunk.id.as_deref(), out);
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
            self.close_block(out);
            self.finish_reason = Some(reason);
        }
        Ok(())
    }

    fn delta(&mut self, delta: Delta, out: &mut BytesMut) -> Result<(), ApiError> {
        if let Some(thinking) =
            reasoning_text(delta.reasoning_content.as_deref(), delta.reasoning.as_ref())
        {
            self.ensure_block(
                Block::Thinking,
                out,
                || json!({"type": "thinking", "thinking": "", "signature": ""}),
            );
            self.block_delta(out, json!({"type": "thinking_delta", "thinking": thinking}));
        }
        for text in [delta.content, delta.refusal].into_iter().flatten() {
            if text.is_empty() {
                continue;
            }
            self.ensure_block(Block::Text, out, || json!({"type": "text", "text": ""}));
            self.block_delta(out, json!({"type": "text_delta", "text": text}));
        }
        for (pos, call) in delta.tool_calls.into_iter().flatten().enumerate() {
            let index = call.index.unwrap_or(pos);
            let function = call.function.unwrap_or(FunctionDelta {
                name: None,
                arguments: None,
            });
            if self.open != Some(Block::Tool(index)) {
                if self.closed_tools.contains(&index) {
                    return Err(ApiError::api(format!(
                        "upstream interleaved the arguments of tool call {index} with another call"
                    ))
                    .with_status(502));
                }
                let id = call
                    .id
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| {
                        format!("toolu_lynkr_{:x}_{index}", crate::util::unique_id())
                    });
                let name = function.name.clone().unwrap_or_default();
                self.ensure_block(
                    Block::Tool(index),
                    out,
                    || json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                );
                self.saw_tool_call = true;
            }
            if let Some(args) = function.arguments.filter(|a| !a.is_empty()) {
                self.block_delta(
                    out,
                    json!({"type": "input_json_delta", "partial_json": args}),
                );
            }
        }
        Ok(())
    }

    fn start(&mut self, upstream_id: Option<&str>, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        write_event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": message_id(upstream_id),
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        );
    }

    fn ensure_block(&mut self, kind: Block, out: &mut BytesMut, start: impl FnOnce() -> Value) {
        if self.open == Some(kind) {
            return;
        }
        self.close_block(out);
        write_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": self.next_index, "content_block": start()}),
        );
        self.open = Some(kind);
    }

    fn block_delta(&mut self, out: &mut BytesMut, delta: Value) {
        write_event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": self.next_index, "delta": delta}),
        );
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        let Some(block) = self.open.take() else {
            return;
        };
        if let Block::Tool(i) = block {
            self.closed_tools.push(i);
        }
        write_event(
            out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": self.next_index}),
        );
        self.next_index += 1;
    }

    fn finish(&mut self, out: &mut BytesMut) {
        self.start(None, out);
        self.close_block(out);
        let mut stop = stop_reason(self.finish_reason.as_deref());
        if self.saw_tool_call && stop == StopReason::EndTurn {
            stop = StopReason::ToolUse;
        }
        write_event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": null},
            "usage": {
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens,
                "cache_creation_input_tokens": self.usage.cache_creation_input_tokens,
                "cache_read_input_tokens": self.usage.cache_read_input_tokens,
            }}),
        );
        write_event(out, "message_stop", &json!({"type": "message_stop"}));
        self.done = true;
    }
}
