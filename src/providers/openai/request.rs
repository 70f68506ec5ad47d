//! Anthropic Messages request -> OpenAI Chat Completions request.
//!
//! The output borrows from the parsed request wherever it can (text, tool
//! schemas as raw JSON), so translating a 100 KB Claude Code request copies
//! each byte about once.

use super::{MaxTokensField, OpenAiOptions, ReasoningStyle};
use crate::protocol::anthropic::{
    ContentBlock, MediaSource, MessagesRequest, OutputFormat, Role, TextOrBlocks, Thinking,
    ToolChoice, ToolResultBlock,
};
use crate::protocol::error::ApiError;
use crate::protocol::readable;
use crate::util::json_text::{serialize_opt_text, serialize_text};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::borrow::Cow;

#[derive(Debug, Serialize)]
pub struct ChatRequest<'a> {
    pub model: &'a str,
    pub messages: Vec<ChatMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ChatTool<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<&'static str>,
    /// OpenRouter's unified reasoning object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum ChatMessage<'a> {
    System {
        #[serde(serialize_with = "serialize_text")]
        content: Cow<'a, str>,
    },
    User {
        content: UserContent<'a>,
    },
    Assistant {
        #[serde(serialize_with = "serialize_opt_text")]
        content: Option<Cow<'a, str>>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall<'a>>,
    },
    Tool {
        tool_call_id: &'a str,
        #[serde(serialize_with = "serialize_text")]
        content: Cow<'a, str>,
    },
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum UserContent<'a> {
    Text(#[serde(serialize_with = "serialize_text")] Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part<'a> {
    Text {
        #[serde(serialize_with = "serialize_text")]
        text: Cow<'a, str>,
    },
    ImageUrl {
        image_url: ImageUrl,
    },
    File {
        file: FileData<'a>,
    },
}

#[derive(Debug, Serialize)]
pub struct ImageUrl {
    pub url: String,
}

#[derive(Debug, Serialize)]
pub struct FileData<'a> {
    pub filename: &'a str,
    pub file_data: String,
}

#[derive(Debug, Serialize)]
pub struct ToolCall<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall<'a>,
}

#[derive(Debug, Serialize)]
pub struct FunctionCall<'a> {
    pub name: &'a str,
    pub arguments: String,
}

#[derive(Debug, Serialize)]
pub struct ChatTool<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionDef<'a>,
}

#[derive(Debug, Serialize)]
pub struct FunctionDef<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a RawValue>,
    pub parameters: &'a RawValue,
}

/// What a tool call without a result is answered with, so the conversation
/// stays valid for OpenAI (every `tool_calls` id needs a `tool` message).
pub const MISSING_TOOL_RESULT: &str = "[no result: the tool call was interrupted]";
/// Prefix that carries Anthropic's `is_error: true` in the tool message text.
pub const TOOL_ERROR_PREFIX: &str = "[tool error] ";

/// Translate `req` for an OpenAI-compatible provider serving `model`.
pub fn to_chat_request<'a>(
    req: &'a MessagesRequest<'a>,
    model: &'a str,
    opts: &OpenAiOptions,
) -> Result<ChatRequest<'a>, ApiError> {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = &req.system {
        let text = join_text(system);
        if !text.is_empty() {
            messages.push(ChatMessage::System { content: text });
        }
    }
    translate_messages(req, &mut messages)?;

    let tools: Vec<ChatTool> = req
        .tools
        .iter()
        .flatten()
        .filter(|t| t.is_client_tool())
        .map(|t| ChatTool {
            kind: "function",
            function: FunctionDef {
                name: &t.name,
                description: t.description,
                parameters: t.input_schema.expect("client tools have a schema"),
            },
        })
        .collect();
    let has_tools = !tools.is_empty();

    let max_tokens = match opts.max_output_tokens {
        Some(cap) => req.max_tokens.min(cap),
        None => req.max_tokens,
    };
    let (reasoning_effort, reasoning) = reasoning_settings(req, opts.reasoning, max_tokens);
    let (max_tokens, max_completion_tokens) = match opts.max_tokens_field {
        MaxTokensField::MaxTokens => (Some(max_tokens), None),
        MaxTokensField::MaxCompletionTokens => (None, Some(max_tokens)),
    };
    let stream = req.is_stream();

    Ok(ChatRequest {
        model,
        messages,
        max_tokens,
        max_completion_tokens,
        stream,
        stream_options: stream.then(|| json!({"include_usage": true})),
        tool_choice: if has_tools {
            req.tool_choice.as_ref().map(tool_choice)
        } else {
            None
        },
        parallel_tool_calls: (has_tools
            && req.tool_choice.as_ref().is_some_and(|c| c.disables_parallel()))
        .then_some(false),
        tools: has_tools.then_some(tools),
        temperature: req.temperature,
        top_p: req.top_p,
        // OpenAI accepts at most four stop sequences.
        stop: req
            .stop_sequences
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| &s[..s.len().min(4)]),
        user: req
            .metadata
            .as_ref()
            .and_then(|m| m.user_id.as_deref())
            .map(user_field),
        reasoning_effort,
        reasoning,
        response_format: req
            .output_config
            .as_ref()
            .and_then(|o| o.format.as_ref())
            .and_then(|f| match f {
                OutputFormat::JsonSchema { schema } => Some(
                    json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}),
                ),
                OutputFormat::Unknown => None,
            }),
    })
}

fn translate_messages<'a>(
    req: &'a MessagesRequest<'a>,
    out: &mut Vec<ChatMessage<'a>>,
) -> Result<(), ApiError> {
    // Tool calls of the last assistant message still waiting for a result.
    let mut pending: Vec<&'a str> = Vec::new();
    for (i, msg) in req.messages.iter().enumerate() {
        match msg.role {
            Role::System => {
                close_pending(&mut pending, out);
                out.push(ChatMessage::System {
                    content: content_text(&msg.content),
                });
            }
            Role::Assistant => {
                close_pending(&mut pending, out);
                let (content, tool_calls) = assistant_message(&msg.content);
                pending = tool_calls.iter().map(|c| c.id).collect();
                if content.is_some() || !tool_calls.is_empty() {
                    out.push(ChatMessage::Assistant {
                        content,
                        tool_calls,
                    });
                }
            }
            Role::User => {
                let blocks = match &msg.content {
                    TextOrBlocks::Text(t) => {
                        close_pending(&mut pending, out);
                        out.push(ChatMessage::User {
                            content: UserContent::Text(Cow::Borrowed(t)),
                        });
                        continue;
                    }
                    TextOrBlocks::Blocks(b) => b,
                };
                let mut parts: Vec<Part<'a>> = Vec::new();
                // Tool results first, straight after the assistant message
                // that made the calls: OpenAI rejects anything in between.
                for (j, block) in blocks.iter().enumerate() {
                    if let ContentBlock::ToolResult {
                        tool_use_id,
                        content,
                        is_error,
                    } = block
                    {
                        let text = tool_result_text(content.as_ref(), is_error.unwrap_or(false));
                        if let Some(pos) = pending.iter().position(|id| *id == tool_use_id) {
                            pending.remove(pos);
                            out.push(ChatMessage::Tool {
                                tool_call_id: tool_use_id,
                                content: text,
                            });
                        } else {
                            // A result for no open call: keep it as user text.
                            parts.push(Part::Text {
                                text: Cow::Owned(format!("[tool result {tool_use_id}] {text}")),
                            });
                        }
                        // Images a tool returned travel in the user message.
                        if let Some(TextOrBlocks::Blocks(rb)) = content {
                            for (k, b) in rb.iter().enumerate() {
                                if let ToolResultBlock::Image {
                                    source:
                                        source @ (MediaSource::Base64 { .. } | MediaSource::Url { .. }),
                                } = b
                                {
                                    let path = format!("messages.{i}.content.{j}.content.{k}");
                                    parts.push(image_part(source, &path)?);
                                }
                            }
                        }
                    }
                }
                close_pending(&mut pending, out);
                for (j, block) in blocks.iter().enumerate() {
                    let path = || format!("messages.{i}.content.{j}");
                    match block {
                        ContentBlock::Text { text } => parts.push(Part::Text {
                            text: Cow::Borrowed(text),
                        }),
                        ContentBlock::Image {
                            source:
                                source @ (MediaSource::Base64 { .. }
                                | MediaSource::Url { .. }
                                | MediaSource::Text { .. }),
                        } => parts.push(image_part(source, &path())?),
                        ContentBlock::Document {
                            source:
                                source @ (MediaSource::Base64 { .. }
                                | MediaSource::Url { .. }
                                | MediaSource::Text { .. }),
                            title,
                        } => parts.push(document_part(source, title.as_deref(), &path())?),
                        ContentBlock::ToolResult { .. } => {}
                        // Blocks only Anthropic understands: as text, or left out.
                        other => {
                            if let Some(text) = readable::block_text(other) {
                                parts.push(Part::Text {
                                    text: Cow::Owned(text),
                                })
                            }
                        }
                    }
                }
                if !parts.is_empty() {
                    out.push(ChatMessage::User {
                        content: user_content(parts),
                    });
                }
            }
        }
    }
    close_pending(&mut pending, out);
    Ok(())
}

/// Answer every still-open tool call so the next message is valid.
fn close_pending<'a>(pending: &mut Vec<&'a str>, out: &mut Vec<ChatMessage<'a>>) {
    for id in pending.drain(..) {
        out.push(ChatMessage::Tool {
            tool_call_id: id,
            content: Cow::Borrowed(MISSING_TOOL_RESULT),
        });
    }
}

fn assistant_message(
    content: &TextOrBlocks<ContentBlock>,
) -> (Option<Cow<'_, str>>, Vec<ToolCall<'_>>) {
    let blocks = match content {
        TextOrBlocks::Text(t) => return (Some(Cow::Borrowed(t.as_str())), Vec::new()),
        TextOrBlocks::Blocks(b) => b,
    };
    let mut texts: Vec<Cow<'_, str>> = Vec::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block {
            ContentBlock::Text { text } if !text.is_empty() => texts.push(Cow::Borrowed(text)),
            ContentBlock::Text { .. } => {}
            ContentBlock::ToolUse { id, name, input } => calls.push(ToolCall {
                id,
                kind: "function",
                function: FunctionCall {
                    name,
                    arguments: input.to_string(),
                },
            }),
            // Thinking cannot be replayed to another model; it is dropped.
            ContentBlock::Thinking { .. } | ContentBlock::RedactedThinking { .. } => {}
            // Server tool calls and their results Anthropic ran: as text.
            other => {
                if let Some(t) = readable::block_text(other) {
                    texts.push(Cow::Owned(t))
                }
            }
        }
    }
    let content = match texts.len() {
        0 => None,
        1 => texts.pop(),
        _ => Some(Cow::Owned(texts.join("\n"))),
    };
    (content, calls)
}

/// Several text parts become one string: the most widely accepted form.
fn user_content(parts: Vec<Part<'_>>) -> UserContent<'_> {
    if parts.iter().all(|p| matches!(p, Part::Text { .. })) {
        let mut texts = parts.into_iter().map(|p| match p {
            Part::Text { text } => text,
            _ => unreachable!(),
        });
        let first = texts.next().unwrap_or_default();
        let rest: Vec<_> = texts.collect();
        if rest.is_empty() {
            return UserContent::Text(first);
        }
        let mut joined = first.into_owned();
        for t in rest {
            joined.push('\n');
            joined.push_str(&t);
        }
        return UserContent::Text(Cow::Owned(joined));
    }
    UserContent::Parts(parts)
}

fn join_text<'a>(
    system: &'a TextOrBlocks<crate::protocol::anthropic::TextBlock<'_>>,
) -> Cow<'a, str> {
    match system {
        TextOrBlocks::Text(t) => Cow::Borrowed(t),
        TextOrBlocks::Blocks(b) if b.len() == 1 => Cow::Borrowed(&b[0].text),
        TextOrBlocks::Blocks(b) => {
            Cow::Owned(b.iter().map(|t| &*t.text).collect::<Vec<_>>().join("\n"))
        }
    }
}

fn content_text(content: &TextOrBlocks<ContentBlock>) -> Cow<'_, str> {
    match content {
        TextOrBlocks::Text(t) => Cow::Borrowed(t),
        TextOrBlocks::Blocks(b) => Cow::Owned(
            b.iter()
                .filter_map(|b| match b {
                    ContentBlock::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    }
}

fn tool_result_text(
    content: Option<&TextOrBlocks<ToolResultBlock>>,
    is_error: bool,
) -> Cow<'_, str> {
    let text: Cow<str> = match content {
        None => Cow::Borrowed(""),
        Some(TextOrBlocks::Text(t)) => Cow::Borrowed(t),
        Some(TextOrBlocks::Blocks(blocks)) => {
            let mut texts: Vec<Cow<str>> = blocks
                .iter()
                .filter_map(readable::tool_result_block_text)
                .collect();
            if texts.len() == 1 {
                texts.pop().expect("one text")
            } else {
                Cow::Owned(texts.join("\n"))
            }
        }
    };
    if is_error {
        Cow::Owned(format!("{TOOL_ERROR_PREFIX}{text}"))
    } else {
        text
    }
}

fn image_part<'a>(source: &'a MediaSource, path: &str) -> Result<Part<'a>, ApiError> {
    let url = match source {
        MediaSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        MediaSource::Url { url } => url.clone(),
        _ => {
            return Err(ApiError::invalid(format!(
                "{path}.source.type: an image takes a base64 or URL source"
            )))
        }
    };
    Ok(Part::ImageUrl {
        image_url: ImageUrl { url },
    })
}

fn document_part<'a>(
    source: &'a MediaSource,
    title: Option<&'a str>,
    path: &str,
) -> Result<Part<'a>, ApiError> {
    match source {
        MediaSource::Text { data, .. } => Ok(Part::Text {
            text: match title {
                Some(t) => Cow::Owned(format!("{t}\n\n{data}")),
                None => Cow::Borrowed(data),
            },
        }),
        MediaSource::Base64 { media_type, data } => Ok(Part::File {
            file: FileData {
                filename: title.unwrap_or("document.pdf"),
                file_data: format!("data:{media_type};base64,{data}"),
            },
        }),
        // Chat Completions takes no document URL: the model gets a note.
        MediaSource::Url { url } => Ok(Part::Text {
            text: Cow::Owned(readable::media_note("document", title, url)),
        }),
        _ => Err(ApiError::invalid(format!(
            "{path}.source.type: this document source cannot be sent to OpenAI-compatible providers"
        ))),
    }
}

fn tool_choice(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto { .. } => json!("auto"),
        ToolChoice::Any { .. } => json!("required"),
        ToolChoice::None => json!("none"),
        ToolChoice::Tool { name, .. } => json!({"type": "function", "function": {"name": name}}),
    }
}

/// Map Anthropic thinking onto the provider's reasoning setting, if it has one.
fn reasoning_settings(
    req: &MessagesRequest,
    style: ReasoningStyle,
    max_tokens: u64,
) -> (Option<&'static str>, Option<Value>) {
    let requested_effort = req
        .output_config
        .as_ref()
        .and_then(|o| o.effort.as_deref())
        .map(|e| match e {
            "low" => "low",
            "medium" => "medium",
            _ => "high",
        });
    let effort = match &req.thinking {
        None | Some(Thinking::Disabled) => return (None, None),
        Some(Thinking::Enabled { budget_tokens }) => match budget_tokens {
            0..=4096 => "low",
            4097..=16384 => "medium",
            _ => "high",
        },
        Some(Thinking::Adaptive | Thinking::Other) => requested_effort.unwrap_or("medium"),
    };
    match style {
        ReasoningStyle::None => (None, None),
        ReasoningStyle::Effort => (Some(effort), None),
        ReasoningStyle::Openrouter => match &req.thinking {
            // A budget must stay under max_tokens, as for Anthropic; one
            // that does not fit becomes an effort.
            Some(Thinking::Enabled { budget_tokens }) if *budget_tokens < max_tokens => {
                (None, Some(json!({"max_tokens": budget_tokens})))
            }
            _ => (None, Some(json!({"effort": effort}))),
        },
    }
}

/// OpenAI caps `user` at 64 characters; Claude Code's `user_id` is a longer
/// JSON string, so long ids are replaced by a stable hash of themselves.
fn user_field(user_id: &str) -> Cow<'_, str> {
    if user_id.len() <= 64 {
        return Cow::Borrowed(user_id);
    }
    let h = crate::util::fnv1a(user_id);
    Cow::Owned(format!("lynkr-{h:016x}"))
}
