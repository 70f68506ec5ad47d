//! The Anthropic streaming event sequence, written once for every provider:
//! `message_start`, then content blocks (`content_block_start`, deltas,
//! `content_block_stop`) with their indexes, then `message_delta` and
//! `message_stop`. Anthropic allows one open block at a time, so opening a
//! block closes the one before it.

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
    started: bool,
    open: Option<BlockKey>,
    next_index: usize,
    finished: bool,
}

impl EventWriter {
    /// `model` is the name the client asked for, echoed in `message_start`.
    pub fn new(model: impl Into<String>) -> Self {
        EventWriter {
            model: model.into(),
            started: false,
            open: None,
            next_index: 0,
            finished: false,
        }
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    pub fn open_block(&self) -> Option<BlockKey> {
        self.open
    }

    /// `message_start`, once.
    pub fn start(&mut self, id: &str, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        write_event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
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
        write_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start",
            "index": self.next_index, "content_block": block()}),
        );
        self.open = Some(key);
    }

    /// A delta for the open block (none open: nothing to add it to).
    pub fn delta(&mut self, delta: Value, out: &mut BytesMut) {
        if self.open.is_some() {
            write_event(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta",
                "index": self.next_index, "delta": delta}),
            );
        }
    }

    /// Close the open block, returning which it was.
    pub fn close(&mut self, out: &mut BytesMut) -> Option<BlockKey> {
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

pub fn text_delta(text: &str) -> Value {
    json!({"type": "text_delta", "text": text})
}

pub fn thinking_delta(thinking: &str) -> Value {
    json!({"type": "thinking_delta", "thinking": thinking})
}

pub fn input_json_delta(partial: &str) -> Value {
    json!({"type": "input_json_delta", "partial_json": partial})
}

/// A fresh message id for providers that give none.
pub fn new_message_id() -> String {
    format!("msg_lynkr_{:016x}", crate::util::unique_id())
}
