//! OpenAI Chat Completions providers: OpenAI, Azure OpenAI, OpenRouter,
//! Databricks serving endpoints, llama.cpp, LM Studio, vLLM.

pub mod request;
pub mod response;
pub mod stream;

use serde::{Deserialize, Serialize};

/// Which field carries the output limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    MaxTokens,
    /// Required by OpenAI's reasoning models, accepted by its others.
    MaxCompletionTokens,
}

/// How the provider takes a reasoning (thinking) request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningStyle {
    /// Thinking is not forwarded (non-reasoning models reject the fields).
    None,
    /// `reasoning_effort: low|medium|high` (OpenAI o-series and gpt-5, Azure).
    Effort,
    /// OpenRouter's `reasoning: {max_tokens}` / `{effort}`.
    Openrouter,
}

/// The translation settings of one OpenAI-compatible provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenAiOptions {
    pub max_tokens_field: MaxTokensField,
    pub reasoning: ReasoningStyle,
    /// Caps `max_tokens`: Claude Code asks for 32000-64000, more than many models allow.
    pub max_output_tokens: Option<u64>,
}

impl Default for OpenAiOptions {
    fn default() -> Self {
        OpenAiOptions {
            max_tokens_field: MaxTokensField::MaxTokens,
            reasoning: ReasoningStyle::None,
            max_output_tokens: None,
        }
    }
}

#[cfg(test)]
mod tests;
