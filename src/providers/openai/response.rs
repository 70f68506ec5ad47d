//! OpenAI Chat Completions response -> Anthropic message, and upstream errors.

use crate::protocol::anthropic::{MessageResponse, ResponseBlock, StopReason, Usage};
use crate::protocol::error::ApiError;
use crate::protocol::validate::parse_json;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub struct ChatCompletion {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<ChatUsage>,
}

#[derive(Debug, Deserialize)]
pub struct Choice {
    pub message: ChoiceMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChoiceMessage {
    #[serde(default)]
    pub content: Option<String>,
    /// vLLM, llama.cpp, DeepSeek and others.
    #[serde(default)]
    pub reasoning_content: Option<String>,
    /// OpenRouter.
    #[serde(default)]
    pub reasoning: Option<Value>,
    #[serde(default)]
    pub refusal: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallOut>>,
}

#[derive(Debug, Deserialize)]
pub struct ToolCallOut {
    #[serde(default)]
    pub id: Option<String>,
    pub function: FunctionOut,
}

#[derive(Debug, Deserialize)]
pub struct FunctionOut {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
pub struct ChatUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
pub struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

impl ChatUsage {
    /// Anthropic counts cached prompt tokens apart from `input_tokens`.
    pub fn to_anthropic(self) -> Usage {
        let cached = self
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
            .min(self.prompt_tokens);
        Usage {
            input_tokens: self.prompt_tokens - cached,
            output_tokens: self.completion_tokens,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: cached,
        }
    }
}

pub fn stop_reason(finish_reason: Option<&str>) -> StopReason {
    match finish_reason {
        Some("length") => StopReason::MaxTokens,
        Some("tool_calls") | Some("function_call") => StopReason::ToolUse,
        Some("content_filter") => StopReason::Refusal,
        _ => StopReason::EndTurn,
    }
}

/// Tool arguments as a JSON object; a model that produced broken JSON gets
/// its raw text kept under `_raw_arguments` rather than silently dropped.
pub fn parse_arguments(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return Value::Object(Default::default());
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => serde_json::json!({ "_raw_arguments": arguments }),
    }
}

pub fn reasoning_text(
    reasoning_content: Option<&str>,
    reasoning: Option<&Value>,
) -> Option<String> {
    reasoning_content
        .map(str::to_owned)
        .or_else(|| reasoning.and_then(|r| r.as_str()).map(str::to_owned))
        .filter(|s| !s.is_empty())
}

/// Translate a whole (non-streaming) completion body.
pub fn to_message(body: &[u8], client_model: &str) -> Result<MessageResponse, ApiError> {
    let completion: ChatCompletion = parse_json(body).map_err(|e| {
        ApiError::bad_upstream(format!(
            "upstream returned an invalid completion: {}",
            e.message
        ))
    })?;
    let choice =
        completion.choices.into_iter().next().ok_or_else(|| {
            ApiError::bad_upstream("upstream returned a completion without choices")
        })?;
    let msg = choice.message;
    let mut content = Vec::new();
    if let Some(thinking) = reasoning_text(msg.reasoning_content.as_deref(), msg.reasoning.as_ref())
    {
        content.push(ResponseBlock::Thinking {
            thinking,
            signature: String::new(),
        });
    }
    if let Some(text) = msg.content.filter(|t| !t.is_empty()) {
        content.push(ResponseBlock::Text { text });
    } else if let Some(refusal) = msg.refusal.filter(|t| !t.is_empty()) {
        content.push(ResponseBlock::Text { text: refusal });
    }
    for call in msg.tool_calls.into_iter().flatten() {
        content.push(ResponseBlock::ToolUse {
            id: call
                .id
                .filter(|s| !s.is_empty())
                .unwrap_or_else(crate::util::ids::tool_use_id),
            input: parse_arguments(&call.function.arguments),
            name: call.function.name,
        });
    }
    let has_tool_use = content
        .iter()
        .any(|b| matches!(b, ResponseBlock::ToolUse { .. }));
    let mut stop = stop_reason(choice.finish_reason.as_deref());
    // Some servers say "stop" even when the turn ends in tool calls.
    if has_tool_use && stop == StopReason::EndTurn {
        stop = StopReason::ToolUse;
    }
    Ok(MessageResponse {
        id: message_id(completion.id.as_deref()),
        kind: "message",
        role: "assistant",
        model: client_model.to_string(),
        content,
        stop_reason: Some(stop),
        stop_sequence: None,
        usage: completion.usage.unwrap_or_default().to_anthropic(),
    })
}

pub fn message_id(upstream_id: Option<&str>) -> String {
    match upstream_id {
        Some(id) if !id.is_empty() => format!("msg_{id}"),
        _ => crate::util::ids::message_id(),
    }
}
