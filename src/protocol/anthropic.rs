//! The Anthropic Messages API types: the gateway's own language.
//!
//! Requests are parsed into these types once; providers translate from them.
//! Fields the gateway never looks at (`context_management`, `cache_control`,
//! ...) are ignored by serde rather than modelled. Large opaque JSON (tool
//! schemas, tool inputs) stays as `RawValue` so it is copied, not re-parsed.

use super::tagged::internally_tagged;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Tool definitions borrow from the client's body (`'a`): they are most of
/// a Claude Code request and pass through untouched.
#[derive(Debug, Deserialize)]
pub struct MessagesRequest<'a> {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: u64,
    #[serde(default, borrow)]
    pub system: Option<SystemPrompt<'a>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default, borrow)]
    pub tools: Option<Vec<Tool<'a>>>,
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default)]
    pub thinking: Option<Thinking>,
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub output_config: Option<OutputConfig>,
}

impl MessagesRequest<'_> {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// The gateway's token estimate (see `protocol::estimate`); compute it
    /// once per request and pass the figure on.
    pub fn estimated_input_tokens(&self) -> u64 {
        super::estimate::input_tokens(
            self.system.as_ref(),
            &self.messages,
            self.tools.as_deref().unwrap_or_default(),
        )
    }
}

/// `count_tokens` takes the same input as a message request, minus `max_tokens`.
#[derive(Debug, Deserialize)]
pub struct CountTokensRequest<'a> {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, borrow)]
    pub system: Option<SystemPrompt<'a>>,
    #[serde(default, borrow)]
    pub tools: Option<Vec<Tool<'a>>>,
}

impl CountTokensRequest<'_> {
    pub fn estimated_input_tokens(&self) -> u64 {
        super::estimate::input_tokens(
            self.system.as_ref(),
            &self.messages,
            self.tools.as_deref().unwrap_or_default(),
        )
    }
}

/// A field that is either a plain string or a list of blocks (`system`,
/// `content`, `tool_result.content`). Deserialized by hand rather than as an
/// untagged enum so errors keep their path and nothing is buffered twice.
#[derive(Debug)]
pub enum TextOrBlocks<T> {
    Text(String),
    Blocks(Vec<T>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for TextOrBlocks<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = TextOrBlocks<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of content blocks")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TextOrBlocks::Text(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(TextOrBlocks::Text(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut blocks = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                while let Some(block) = seq.next_element()? {
                    blocks.push(block);
                }
                Ok(TextOrBlocks::Blocks(blocks))
            }
        }
        deserializer.deserialize_any(V(std::marker::PhantomData))
    }
}

pub type SystemPrompt<'a> = TextOrBlocks<TextBlock<'a>>;
pub type Content = TextOrBlocks<ContentBlock>;
pub type ToolResultContent = TextOrBlocks<ToolResultBlock>;

#[derive(Debug, Deserialize)]
pub struct TextBlock<'a> {
    /// Always "text"; kept so a wrong type is rejected with its path.
    #[serde(rename = "type")]
    pub kind: TextType,
    /// Borrowed from the body unless it has escapes.
    #[serde(borrow)]
    pub text: Cow<'a, str>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextType {
    Text,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    /// Claude Code puts `{"role":"system"}` messages mid-conversation.
    System,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Content,
}

/// A content block of a message. Anthropic adds block types every few
/// months: a type this build does not know parses as `Unknown` (the
/// passthrough forwards it byte for byte; translating providers leave it
/// out), so a valid request is never refused for it.
#[derive(Debug, Deserialize)]
#[serde(remote = "Self", rename_all = "snake_case")]
pub enum ContentBlock {
    Text {
        text: String,
    },
    Image {
        source: MediaSource,
    },
    Document {
        source: MediaSource,
        #[serde(default)]
        title: Option<String>,
    },
    ToolUse {
        id: String,
        name: String,
        /// A `Value`: Ollama and Bedrock need the object. (Since blocks
        /// are no longer buffered by serde, a `RawValue` would now parse.)
        input: serde_json::Value,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(default)]
        content: Option<ToolResultContent>,
        #[serde(default)]
        is_error: Option<bool>,
    },
    Thinking {
        thinking: String,
        #[serde(default)]
        signature: Option<String>,
    },
    RedactedThinking {
        data: String,
    },
    /// A search result the client supplies (RAG with citations).
    SearchResult(SearchResult),
    /// A call of one of Anthropic's server tools (web search, web fetch,
    /// code execution) that Anthropic ran during an earlier turn.
    ServerToolUse {
        #[serde(default)]
        name: String,
        #[serde(default)]
        input: serde_json::Value,
    },
    /// A call of a tool on a remote MCP server (Anthropic's MCP connector).
    McpToolUse {
        #[serde(default)]
        name: String,
        #[serde(default)]
        server_name: Option<String>,
        #[serde(default)]
        input: serde_json::Value,
    },
    McpToolResult {
        #[serde(default)]
        content: serde_json::Value,
        #[serde(default)]
        is_error: Option<bool>,
    },
    WebSearchToolResult {
        #[serde(default)]
        content: serde_json::Value,
    },
    WebFetchToolResult {
        #[serde(default)]
        content: serde_json::Value,
    },
    CodeExecutionToolResult {
        #[serde(default)]
        content: serde_json::Value,
    },
    BashCodeExecutionToolResult {
        #[serde(default)]
        content: serde_json::Value,
    },
    TextEditorCodeExecutionToolResult {
        #[serde(default)]
        content: serde_json::Value,
    },
    /// A file put into Anthropic's code-execution container (by file id).
    ContainerUpload {
        #[serde(default)]
        file_id: String,
    },
    /// A summary that replaced earlier turns (context compaction).
    Compaction {
        #[serde(default)]
        content: Option<String>,
    },
    /// Any block type this build does not know.
    #[serde(other)]
    Unknown,
}
internally_tagged!(ContentBlock, "a content block (an object with a \"type\")");

#[derive(Debug, Deserialize)]
pub struct SearchResult {
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub content: Vec<LooseText>,
}

/// A text block inside another block: its text if it is one, else nothing.
#[derive(Debug, Deserialize)]
pub struct LooseText {
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(remote = "Self", rename_all = "snake_case")]
pub enum MediaSource {
    Base64 {
        media_type: String,
        data: String,
    },
    Url {
        url: String,
    },
    Text {
        media_type: String,
        data: String,
    },
    /// A file uploaded to Anthropic's Files API: only Anthropic can read it.
    File {
        #[serde(default)]
        file_id: String,
    },
    /// A document given as content blocks (a string or text/image blocks).
    Content {
        #[serde(default)]
        content: serde_json::Value,
    },
    #[serde(other)]
    Unknown,
}
internally_tagged!(MediaSource, "a source (an object with a \"type\")");

#[derive(Debug, Deserialize)]
#[serde(remote = "Self", rename_all = "snake_case")]
pub enum ToolResultBlock {
    Text {
        text: String,
    },
    Image {
        source: MediaSource,
    },
    Document {
        source: MediaSource,
    },
    SearchResult(SearchResult),
    #[serde(other)]
    Unknown,
}
internally_tagged!(
    ToolResultBlock,
    "a tool result block (an object with a \"type\")"
);

#[derive(Debug, Deserialize)]
pub struct Tool<'a> {
    /// Absent (or "custom") for client tools; server tools such as
    /// `web_search_20250305` carry a versioned type and no schema.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Required of client tools (checked in validation); some server tool
    /// entries (`mcp_toolset`) have none.
    #[serde(default)]
    pub name: String,
    /// Kept as the raw JSON string token, borrowed from the body: tool
    /// descriptions are most of a Claude Code request (47 of 76 KB) and
    /// pass through untouched.
    #[serde(default, borrow)]
    pub description: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub input_schema: Option<&'a RawValue>,
}

impl Tool<'_> {
    pub fn is_client_tool(&self) -> bool {
        matches!(self.kind.as_deref(), None | Some("custom")) && self.input_schema.is_some()
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoice {
    Auto {
        #[serde(default)]
        disable_parallel_tool_use: Option<bool>,
    },
    Any {
        #[serde(default)]
        disable_parallel_tool_use: Option<bool>,
    },
    Tool {
        name: String,
        #[serde(default)]
        disable_parallel_tool_use: Option<bool>,
    },
    None,
}

impl ToolChoice {
    pub fn disables_parallel(&self) -> bool {
        match self {
            ToolChoice::Auto {
                disable_parallel_tool_use,
            }
            | ToolChoice::Any {
                disable_parallel_tool_use,
            }
            | ToolChoice::Tool {
                disable_parallel_tool_use,
                ..
            } => disable_parallel_tool_use.unwrap_or(false),
            ToolChoice::None => false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Thinking {
    Enabled {
        budget_tokens: u64,
    },
    Adaptive,
    Disabled,
    /// A newer mode (`between_tools`, ...): thinking on, budget left to the model.
    #[serde(other)]
    Other,
}

impl Thinking {
    /// Whether the request asks for thinking at all.
    pub fn is_on(&self) -> bool {
        !matches!(self, Thinking::Disabled)
    }
}

#[derive(Debug, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub user_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct OutputConfig {
    #[serde(default)]
    pub effort: Option<String>,
    #[serde(default)]
    pub format: Option<OutputFormat>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputFormat {
    JsonSchema {
        schema: serde_json::Value,
    },
    /// A format this build does not know: not forwarded to translated providers.
    #[serde(other)]
    Unknown,
}

// ---- responses -------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct MessageResponse {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub role: &'static str,
    pub model: String,
    pub content: Vec<ResponseBlock>,
    pub stop_reason: Option<StopReason>,
    pub stop_sequence: Option<String>,
    pub usage: Usage,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseBlock {
    Text {
        text: String,
    },
    Thinking {
        thinking: String,
        signature: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: serde_json::Value,
    },
}

#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
    Refusal,
}

#[derive(Debug, Serialize, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}
