//! The one token estimate Lynkr uses everywhere: routing (`long_context`,
//! rule `min_tokens`/`max_tokens`), `capabilities.context_window`,
//! `count_tokens`, and the `input_tokens` a stream's `message_start`
//! carries before the provider reports its own count.
//!
//! It is an estimate, not a tokenizer: one token per four bytes of text
//! (system, messages, tool calls and results, tool definitions), plus
//! `MESSAGE_OVERHEAD_TOKENS` per message and `MEDIA_TOKENS` per image or
//! binary document, however many bytes its base64 takes. Computed once per
//! request.

use super::anthropic::{
    ContentBlock, MediaSource, Message, SystemPrompt, TextOrBlocks, Tool, ToolResultBlock,
};

/// Tokens per image or binary document (Anthropic's ~1600 for a large image).
pub const MEDIA_TOKENS: u64 = 1600;
/// Framing tokens per message.
pub const MESSAGE_OVERHEAD_TOKENS: u64 = 4;

/// Estimated input tokens of a request's system prompt, messages and tools.
pub fn input_tokens(system: Option<&SystemPrompt>, messages: &[Message], tools: &[Tool]) -> u64 {
    let mut e = Estimate::default();
    match system {
        Some(TextOrBlocks::Text(t)) => e.text(t),
        Some(TextOrBlocks::Blocks(b)) => b.iter().for_each(|t| e.text(&t.text)),
        None => {}
    }
    for m in messages {
        e.extra += MESSAGE_OVERHEAD_TOKENS;
        match &m.content {
            TextOrBlocks::Text(t) => e.text(t),
            TextOrBlocks::Blocks(blocks) => blocks.iter().for_each(|b| e.block(b)),
        }
    }
    for t in tools {
        e.bytes += t.name.len()
            + t.description.as_ref().map_or(0, |d| d.get().len())
            + t.input_schema.as_ref().map_or(0, |s| s.get().len());
    }
    (e.bytes as u64).div_ceil(4) + e.extra
}

#[derive(Default)]
struct Estimate {
    bytes: usize,
    extra: u64,
}

impl Estimate {
    fn text(&mut self, t: &str) {
        self.bytes += t.len();
    }

    fn media(&mut self, source: &MediaSource) {
        match source {
            MediaSource::Text { data, .. } => self.text(data),
            MediaSource::Content { content } => self.bytes += content.to_string().len(),
            _ => self.extra += MEDIA_TOKENS,
        }
    }

    fn block(&mut self, b: &ContentBlock) {
        match b {
            ContentBlock::Text { text } => self.text(text),
            ContentBlock::Thinking { thinking, .. } => self.text(thinking),
            ContentBlock::RedactedThinking { data } => self.text(data),
            ContentBlock::ToolUse { name, input, .. } => {
                self.bytes += name.len() + input.to_string().len()
            }
            ContentBlock::ToolResult { content, .. } => match content {
                Some(TextOrBlocks::Text(t)) => self.text(t),
                Some(TextOrBlocks::Blocks(rb)) => {
                    for r in rb {
                        match r {
                            ToolResultBlock::Text { text } => self.text(text),
                            ToolResultBlock::Image { source }
                            | ToolResultBlock::Document { source } => self.media(source),
                            other => {
                                if let Some(t) = super::readable::tool_result_block_text(other) {
                                    self.text(&t)
                                }
                            }
                        }
                    }
                }
                None => {}
            },
            ContentBlock::Image { source } | ContentBlock::Document { source, .. } => {
                self.media(source)
            }
            other => {
                if let Some(t) = super::readable::block_text(other) {
                    self.text(&t)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::validate::parse_messages_request;

    fn estimate(body: &serde_json::Value) -> u64 {
        let body = body.to_string();
        let req = parse_messages_request(body.as_bytes()).unwrap();
        req.estimated_input_tokens()
    }

    #[test]
    fn text_counts_by_bytes_and_images_by_a_fixed_count() {
        let text = serde_json::json!({"model": "m", "max_tokens": 5,
            "messages": [{"role": "user", "content": "x".repeat(400)}]});
        assert_eq!(estimate(&text), 100 + MESSAGE_OVERHEAD_TOKENS);
        // Regression: a 600 KB screenshot counted as 150k tokens (body / 4).
        let image = serde_json::json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user",
            "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A".repeat(600_000)}}]}]});
        assert_eq!(estimate(&image), MEDIA_TOKENS + MESSAGE_OVERHEAD_TOKENS);
    }
}
