//! Blocks only Anthropic understands, as text another model can read.
//!
//! A conversation that used Anthropic's server tools (web search, web
//! fetch, code execution, MCP) or client-supplied search results carries
//! blocks no other provider accepts. Translating providers turn each into a
//! short text in the same place of the conversation; the rules (also in the
//! README) are:
//! - search results, server and MCP tool calls and their results, code
//!   execution output and compaction summaries become text;
//! - encrypted content (search result pages) is left out;
//! - references only Anthropic can resolve (Files API ids, container
//!   uploads) become a one-line note, or are left out for uploads;
//! - media a provider cannot take (a document by URL, an image by URL for
//!   Bedrock and Ollama, a PDF for Ollama) becomes a one-line note naming
//!   it, rather than refusing the whole conversation;
//! - a block type this build does not know is left out.

use super::anthropic::{ContentBlock, MediaSource, SearchResult, ToolResultBlock};
use serde_json::Value;
use std::borrow::Cow;

/// The text a block that only Anthropic understands stands for, or `None`
/// when it is left out (or is a block every provider handles itself).
pub fn block_text(block: &ContentBlock) -> Option<String> {
    Some(match block {
        ContentBlock::SearchResult(r) => search_result_text(r),
        ContentBlock::ServerToolUse { name, input } => {
            format!("[server tool call: {name}] {}", compact(input))
        }
        ContentBlock::McpToolUse {
            name,
            server_name,
            input,
        } => format!(
            "[MCP tool call: {}{name}] {}",
            server_name
                .as_deref()
                .map(|s| format!("{s}/"))
                .unwrap_or_default(),
            compact(input)
        ),
        ContentBlock::McpToolResult { content, is_error } => {
            let prefix = if is_error.unwrap_or(false) {
                "[MCP tool error]"
            } else {
                "[MCP tool result]"
            };
            format!("{prefix} {}", text_of(content))
        }
        ContentBlock::WebSearchToolResult { content } => web_search_text(content),
        ContentBlock::WebFetchToolResult { content } => web_fetch_text(content),
        ContentBlock::CodeExecutionToolResult { content }
        | ContentBlock::BashCodeExecutionToolResult { content } => execution_text(content),
        ContentBlock::TextEditorCodeExecutionToolResult { content } => match error_code(content) {
            Some(code) => format!("[text editor error: {code}]"),
            None => format!("[text editor result] {}", compact(content)),
        },
        ContentBlock::Compaction { content } => format!(
            "[summary of the earlier conversation]\n{}",
            content.as_deref().unwrap_or_default()
        ),
        ContentBlock::Document {
            source: MediaSource::File { file_id },
            title,
        } => unavailable_file("document", title.as_deref(), file_id),
        ContentBlock::Image {
            source: MediaSource::File { file_id },
        } => unavailable_file("image", None, file_id),
        ContentBlock::Document {
            source: MediaSource::Content { content },
            title,
        } => match title {
            Some(t) => format!("{t}\n\n{}", text_of(content)),
            None => text_of(content),
        },
        _ => return None,
    })
}

/// The text of a tool result's block, for providers that take tool results
/// as text: text, text documents, search results; `None` for images (they
/// travel separately) and unknown blocks.
pub fn tool_result_block_text(block: &ToolResultBlock) -> Option<Cow<'_, str>> {
    match block {
        ToolResultBlock::Text { text } => Some(Cow::Borrowed(text)),
        ToolResultBlock::Document {
            source: MediaSource::Text { data, .. },
        } => Some(Cow::Borrowed(data)),
        ToolResultBlock::Document {
            source: MediaSource::Content { content },
        } => Some(Cow::Owned(text_of(content))),
        ToolResultBlock::Document {
            source: MediaSource::File { file_id },
        } => Some(Cow::Owned(unavailable_file("document", None, file_id))),
        ToolResultBlock::SearchResult(r) => Some(Cow::Owned(search_result_text(r))),
        _ => None,
    }
}

/// The note that stands for media a provider cannot take.
pub fn media_note(what: &str, title: Option<&str>, reference: &str) -> String {
    let title = title.map(|t| format!(" {t:?}")).unwrap_or_default();
    format!("[{what}{title}: {reference}, not available to this model]")
}

fn search_result_text(r: &SearchResult) -> String {
    let mut out = format!("[search result] {}", r.title);
    if !r.source.is_empty() {
        out.push_str(&format!(" ({})", r.source));
    }
    for t in r.content.iter().filter_map(|c| c.text.as_deref()) {
        out.push('\n');
        out.push_str(t);
    }
    out
}

fn unavailable_file(what: &str, title: Option<&str>, file_id: &str) -> String {
    media_note(what, title, &format!("Anthropic file {file_id}"))
}

fn web_search_text(content: &Value) -> String {
    if let Some(code) = error_code(content) {
        return format!("[web search error: {code}]");
    }
    let mut out = String::from("[web search results]");
    for r in content.as_array().into_iter().flatten() {
        let (title, url) = (str_at(r, "title"), str_at(r, "url"));
        out.push_str(&format!("\n- {title} ({url})"));
        if let Some(age) = r.get("page_age").and_then(Value::as_str) {
            out.push_str(&format!(", {age}"));
        }
    }
    out
}

fn web_fetch_text(content: &Value) -> String {
    if let Some(code) = error_code(content) {
        return format!("[web fetch error: {code}]");
    }
    let mut out = format!("[web fetch] {}", str_at(content, "url"));
    let source = content.pointer("/content/source");
    match source.and_then(|s| s.get("type")).and_then(Value::as_str) {
        Some("text") => {
            out.push('\n');
            out.push_str(source.map_or("", |s| str_at(s, "data")));
        }
        Some("content") => {
            out.push('\n');
            out.push_str(&text_of(
                &source.map_or(Value::Null, |s| s["content"].clone()),
            ));
        }
        Some(other) => out.push_str(&format!(" ({other} content not shown)")),
        None => {}
    }
    out
}

fn execution_text(content: &Value) -> String {
    if let Some(code) = error_code(content) {
        return format!("[code execution error: {code}]");
    }
    let mut out = format!(
        "[code execution] return code {}",
        content
            .get("return_code")
            .map_or_else(|| "unknown".to_string(), Value::to_string)
    );
    for stream in ["stdout", "stderr"] {
        let text = str_at(content, stream);
        if !text.is_empty() {
            out.push_str(&format!("\n{stream}:\n{text}"));
        }
    }
    out
}

/// The `error_code` of a server tool's error result.
fn error_code(content: &Value) -> Option<&str> {
    content
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| t.ends_with("_error"))
        .map(|_| {
            content
                .get("error_code")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
        })
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// A string, or the texts of a list of text blocks, joined.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => compact(other),
    }
}

/// Compact JSON without encrypted payloads, which no other model can use.
fn compact(v: &Value) -> String {
    fn strip(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(k, _)| !k.starts_with("encrypted"))
                    .map(|(k, v)| (k.clone(), strip(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
            other => other.clone(),
        }
    }
    strip(v).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(json: Value) -> ContentBlock {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn server_tool_blocks_read_as_text() {
        let t = block_text(&block(serde_json::json!({"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1",
            "content": [{"type": "web_search_result", "url": "https://a.example", "title": "A", "encrypted_content": "xyz", "page_age": "2 days"}]})))
        .unwrap();
        assert_eq!(t, "[web search results]\n- A (https://a.example), 2 days");
        let t = block_text(&block(serde_json::json!({"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}}))).unwrap();
        assert_eq!(t, r#"[server tool call: web_search] {"query":"q"}"#);
        let t = block_text(&block(serde_json::json!({"type": "bash_code_execution_tool_result", "tool_use_id": "s",
            "content": {"type": "bash_code_execution_result", "stdout": "hi\n", "stderr": "", "return_code": 0, "content": []}}))).unwrap();
        assert_eq!(t, "[code execution] return code 0\nstdout:\nhi\n");
        let t = block_text(&block(serde_json::json!({"type": "web_fetch_tool_result", "tool_use_id": "s",
            "content": {"type": "web_fetch_tool_result_error", "error_code": "url_not_accessible"}}))).unwrap();
        assert_eq!(t, "[web fetch error: url_not_accessible]");
        let t = block_text(&block(
            serde_json::json!({"type": "search_result", "source": "https://kb", "title": "KB",
            "content": [{"type": "text", "text": "fact"}], "citations": {"enabled": true}}),
        ))
        .unwrap();
        assert_eq!(t, "[search result] KB (https://kb)\nfact");
    }

    #[test]
    fn unknown_blocks_and_uploads_are_left_out() {
        assert!(block_text(&block(serde_json::json!({"type": "hologram_2031", "x": 1}))).is_none());
        assert!(block_text(&block(
            serde_json::json!({"type": "container_upload", "file_id": "f"})
        ))
        .is_none());
        let t = block_text(&block(serde_json::json!({"type": "document", "source": {"type": "file", "file_id": "file_1"}, "title": "Spec"}))).unwrap();
        assert!(t.contains("file_1") && t.contains("not available"), "{t}");
    }
}
