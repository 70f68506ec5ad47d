//! The Anthropic streaming event sequence, written once for every provider:
//! `message_start`, then content blocks (`content_block_start`, deltas,
//! `content_block_stop`) with their indexes, then `message_delta` and
//! `message_stop`. Anthropic allows one open block at a time, so opening a
//! block closes the one before it.
//!
//! Two details Anthropic clients check: `message_start` carries an
//! `input_tokens` figure (the gateway's estimate; the provider's own count
//! follows in `message_delta`), and a `thinking` block always gets a
//! `signature_delta` before it stops (empty when the provider gives none).

use super::anthropic::{StopReason, Usage};
use super::sse::write_event;
use bytes::BytesMut;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Text,
    Thinking,
    ToolUse,
}

/// A block as the upstream numbers it (its own index or tool-call index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockKey {
    pub kind: BlockKind,
    pub upstream_index: u64,
}

impl BlockKey {
    pub fn new(kind: BlockKind, upstream_index: u64) -> Self {
        BlockKey {
            kind,
            upstream_index,
        }
    }
}

#[derive(Debug)]
pub struct EventWriter {
    model: String,
    input_estimate: u64,
    started: bool,
    /// The message id, until `message_start` is written.
    pending_start: Option<String>,
    open: Option<BlockKey>,
    /// Whether the open thinking block got its `signature_delta`.
    signed: bool,
    next_index: usize,
    finished: bool,
}

impl EventWriter {
    /// `model` is the name the client asked for, echoed in `message_start`.
    pub fn new(model: impl Into<String>) -> Self {
        EventWriter {
            model: model.into(),
            input_estimate: 0,
            started: false,
            pending_start: None,
            open: None,
            signed: false,
            next_index: 0,
            finished: false,
        }
    }

    /// The `input_tokens` that `message_start` reports.
    pub fn set_input_estimate(&mut self, tokens: u64) {
        self.input_estimate = tokens;
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    pub fn open_block(&self) -> Option<BlockKey> {
        self.open
    }

    /// The message began. `message_start` is written with the first block
    /// (or the end): until the provider sends content, nothing has reached
    /// the client, so an error it sends first can still fail over.
    pub fn start(&mut self, id: impl FnOnce() -> String) {
        if self.started {
            return;
        }
        self.started = true;
        self.pending_start = Some(id());
    }

    /// Write a pending `message_start`.
    fn flush_start(&mut self, out: &mut BytesMut) {
        let Some(id) = self.pending_start.take() else {
            return;
        };
        write_event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": self.input_estimate, "output_tokens": 0},
            }}),
        );
    }

    /// Make `key` the open block (closing any other), starting it with
    /// `block` (the empty content block) if it is not open yet.
    pub fn open(&mut self, key: BlockKey, block: impl FnOnce() -> Value, out: &mut BytesMut) {
        if self.open == Some(key) {
            return;
        }
        self.close(out);
        self.flush_start(out);
        write_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start",
            "index": self.next_index, "content_block": block()}),
        );
        self.open = Some(key);
        self.signed = false;
    }

    /// A delta for the open block (none open: nothing to add it to).
    pub fn delta(&mut self, delta: Delta<'_>, out: &mut BytesMut) {
        if self.open.is_some() {
            delta.write_event(self.next_index, out);
        }
    }

    /// The signature of the open thinking block.
    pub fn signature(&mut self, signature: &str, out: &mut BytesMut) {
        if self.open.is_some_and(|k| k.kind == BlockKind::Thinking) {
            self.delta(Delta::Signature(signature), out);
            self.signed = true;
        }
    }

    /// Close the open block, returning which it was.
    pub fn close(&mut self, out: &mut BytesMut) -> Option<BlockKey> {
        if self.open.is_some_and(|k| k.kind == BlockKind::Thinking) && !self.signed {
            self.signature("", out);
        }
        let key = self.open.take()?;
        write_event(
            out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": self.next_index}),
        );
        self.next_index += 1;
        Some(key)
    }

    /// Close any open block, then `message_delta` and `message_stop`.
    pub fn finish(&mut self, stop: StopReason, usage: &Usage, out: &mut BytesMut) {
        self.close(out);
        self.flush_start(out);
        write_event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": usage}),
        );
        write_event(out, "message_stop", &json!({"type": "message_stop"}));
        self.finished = true;
    }
}

/// The empty content blocks a stream starts them with.
pub fn empty_text() -> Value {
    json!({"type": "text", "text": ""})
}

pub fn empty_thinking() -> Value {
    json!({"type": "thinking", "thinking": "", "signature": ""})
}

pub fn empty_tool_use(id: &str, name: &str) -> Value {
    json!({"type": "tool_use", "id": id, "name": name, "input": {}})
}

pub fn text_delta(text: &str) -> Delta<'_> {
    Delta::Text(text)
}

pub fn thinking_delta(thinking: &str) -> Delta<'_> {
    Delta::Thinking(thinking)
}

pub fn input_json_delta(partial: &str) -> Delta<'_> {
    Delta::InputJson(partial)
}

/// A `content_block_delta`: the one event a stream sends per piece of
/// text, so it is written directly rather than built as a `Value` tree
/// (eight allocations and two maps per event). The bytes are the ones
/// `serde_json` writes for the same `Value`: keys in sorted order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta<'a> {
    Text(&'a str),
    Thinking(&'a str),
    InputJson(&'a str),
    Signature(&'a str),
}

impl Delta<'_> {
    /// As a `Value`: what the direct writer must match (tests).
    #[cfg(test)]
    pub fn to_value(self) -> Value {
        match self {
            Delta::Text(t) => json!({"type": "text_delta", "text": t}),
            Delta::Thinking(t) => json!({"type": "thinking_delta", "thinking": t}),
            Delta::InputJson(p) => json!({"type": "input_json_delta", "partial_json": p}),
            Delta::Signature(s) => json!({"type": "signature_delta", "signature": s}),
        }
    }

    pub(crate) fn write_event(self, index: usize, out: &mut BytesMut) {
        use bytes::BufMut;
        let (field, value, kind) = match self {
            Delta::Text(t) => ("text", t, "text_delta"),
            Delta::Thinking(t) => ("thinking", t, "thinking_delta"),
            Delta::InputJson(p) => ("partial_json", p, "input_json_delta"),
            Delta::Signature(s) => ("signature", s, "signature_delta"),
        };
        out.reserve(value.len() + 128);
        out.put_slice(b"event: content_block_delta\ndata: {\"delta\":{\"");
        out.put_slice(field.as_bytes());
        out.put_slice(b"\":");
        serde_json::to_writer((&mut *out).writer(), value).expect("writing to memory");
        out.put_slice(b",\"type\":\"");
        out.put_slice(kind.as_bytes());
        out.put_slice(b"\"},\"index\":");
        out.put_slice(index.to_string().as_bytes());
        out.put_slice(b",\"type\":\"content_block_delta\"}\n\n");
    }
}
