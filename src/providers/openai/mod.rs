//! OpenAI Chat Completions providers: OpenAI, Azure OpenAI, OpenRouter,
//! Databricks serving endpoints, llama.cpp, LM Studio, vLLM.

pub mod request;
pub mod response;
pub mod stream;

pub use crate::config::{MaxTokensField, ReasoningStyle};

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
