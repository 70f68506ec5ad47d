//! Parsing and validation of client requests. Every failure is a 400
//! `invalid_request_error` whose message starts with the offending field's
//! path (`messages.2.content.0.type: ...`), so a client can see what to fix.

use super::anthropic::{ContentBlock, CountTokensRequest, MessagesRequest, Role, TextOrBlocks};
use super::error::ApiError;
use serde::Deserialize;

/// Parse a `POST /v1/messages` body and check what serde cannot.
pub fn parse_messages_request(body: &[u8]) -> Result<MessagesRequest<'_>, ApiError> {
    let req: MessagesRequest = parse_json(body)?;
    check_model(&req.model)?;
    if req.max_tokens == 0 {
        return Err(ApiError::invalid("max_tokens: must be at least 1"));
    }
    check_messages(&req.messages)?;
    check_tools(req.tools.as_deref())?;
    if let Some(t) = req.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::invalid("temperature: must be between 0 and 2"));
        }
    }
    if let Some(p) = req.top_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(ApiError::invalid("top_p: must be between 0 and 1"));
        }
    }
    Ok(req)
}

/// Parse a `POST /v1/messages/count_tokens` body.
pub fn parse_count_tokens_request(body: &[u8]) -> Result<CountTokensRequest<'_>, ApiError> {
    let req: CountTokensRequest = parse_json(body)?;
    check_model(&req.model)?;
    check_messages(&req.messages)?;
    check_tools(req.tools.as_deref())?;
    Ok(req)
}

/// Longest model name accepted.
pub const MAX_MODEL_LEN: usize = 256;

/// A model name travels in headers (`x-lynkr-route`), in a Bedrock URL
/// path, in log lines and metric labels: it must be a header-safe token.
/// A CR, LF or NUL in it could split a header or a log line.
fn check_model(model: &str) -> Result<(), ApiError> {
    if model.is_empty() {
        return Err(ApiError::invalid("model: must not be empty"));
    }
    if model.len() > MAX_MODEL_LEN || !model.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(format!(
            "model: must be at most {MAX_MODEL_LEN} visible ASCII characters (no spaces or control characters)"
        )));
    }
    Ok(())
}

fn check_messages(messages: &[super::anthropic::Message]) -> Result<(), ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages: at least one message is required",
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        let TextOrBlocks::Blocks(blocks) = &m.content else {
            continue;
        };
        for (j, b) in blocks.iter().enumerate() {
            // The placements Anthropic refuses; newer blocks go anywhere.
            let allowed = match b {
                ContentBlock::ToolUse { .. }
                | ContentBlock::Thinking { .. }
                | ContentBlock::RedactedThinking { .. } => m.role == Role::Assistant,
                ContentBlock::ToolResult { .. }
                | ContentBlock::Image { .. }
                | ContentBlock::Document { .. } => m.role == Role::User,
                _ => true,
            };
            if !allowed {
                return Err(ApiError::invalid(format!(
                    "messages.{i}.content.{j}.type: a {} block is not allowed in a {:?} message",
                    block_name(b),
                    m.role
                )));
            }
        }
    }
    Ok(())
}

/// What serde leaves unchecked in tools (kept raw for speed).
fn check_tools(tools: Option<&[super::anthropic::Tool<'_>]>) -> Result<(), ApiError> {
    for (i, t) in tools.unwrap_or_default().iter().enumerate() {
        if t.description
            .as_ref()
            .is_some_and(|d| !d.get().starts_with('"'))
        {
            return Err(ApiError::invalid(format!(
                "tools.{i}.description: must be a string"
            )));
        }
        if t.input_schema
            .as_ref()
            .is_some_and(|s| !s.get().starts_with('{'))
        {
            return Err(ApiError::invalid(format!(
                "tools.{i}.input_schema: must be an object"
            )));
        }
        if t.is_client_tool() && t.name.is_empty() {
            return Err(ApiError::invalid(format!(
                "tools.{i}.name: must not be empty"
            )));
        }
    }
    Ok(())
}

fn block_name(b: &ContentBlock) -> &'static str {
    match b {
        ContentBlock::Image { .. } => "image",
        ContentBlock::Document { .. } => "document",
        ContentBlock::ToolUse { .. } => "tool_use",
        ContentBlock::ToolResult { .. } => "tool_result",
        ContentBlock::Thinking { .. } => "thinking",
        ContentBlock::RedactedThinking { .. } => "redacted_thinking",
        _ => "content",
    }
}

/// Deserialize JSON, turning serde's error into a message that names the field.
pub fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    // serde would read a struct from a JSON array too; requests are objects.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::invalid("body: must be a JSON object"));
    }
    // Plain serde first: tracking the path costs about a fifth of the
    // parse, and only a request already known to be bad needs it.
    match serde_json::from_slice(body) {
        Ok(value) => Ok(value),
        Err(plain) => Err(explain::<T>(body, plain)),
    }
}

/// The error of a body that failed to parse, with the failing field's path.
fn explain<'a, T: Deserialize<'a>>(body: &'a [u8], plain: serde_json::Error) -> ApiError {
    let mut de = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(e) => describe(e),
        Ok(_) => match de.end() {
            Err(e) => ApiError::invalid(format!("body: invalid JSON: {e}")),
            // Cannot happen (the same input, the same parser); say what serde said.
            Ok(()) => ApiError::invalid(format!("body: {plain}")),
        },
    }
}

fn describe(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = err.inner();
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::invalid(format!("body: invalid JSON: {inner}"));
    }
    // `messages[2].content[0]` -> `messages.2.content.0`, Anthropic's own style.
    let mut path = err.path().to_string().replace('[', ".").replace(']', "");
    if path == "." {
        path.clear();
    }
    let text = inner.to_string();
    let text = text.split(" at line ").next().unwrap_or(&text).to_string();
    // serde reports a missing field at the parent; name the field itself.
    if let Some(field) = text
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        let full = if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        return ApiError::invalid(format!("{full}: field required"));
    }
    if path.is_empty() {
        path = "body".into();
    }
    ApiError::invalid(format!("{path}: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        parse_messages_request(body.as_bytes()).unwrap_err().message
    }

    #[test]
    fn names_the_missing_or_wrong_field() {
        assert_eq!(
            err(r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#),
            "model: field required"
        );
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#),
            "max_tokens: field required"
        );
        assert!(err(r#"{"model":"m","max_tokens":"x","messages":[]}"#)
            .starts_with("max_tokens: invalid type"));
        assert!(err(
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"robot","content":"hi"}]}"#
        )
        .starts_with("messages.0.role: unknown variant `robot`"));
        // A block type this build does not know is accepted (forward
        // compatible), but a known one must still be well formed.
        assert!(parse_messages_request(
            br#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"video_2031","frames":[]}]}]}"#
        )
        .is_ok());
        let e = err(
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text","text":5}]}]}"#,
        );
        // The path goes down to the field: blocks are no longer buffered
        // by serde before their variant is known (`protocol::tagged`).
        assert!(
            e.starts_with("messages.0.content.0.text: invalid type"),
            "{e}"
        );
        let e = err(
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"assistant","content":[{"type":"tool_use","name":"x","input":{}}]}]}"#,
        );
        assert_eq!(e, "messages.0.content.0.id: field required");
        assert_eq!(
            err(r#"{"model":"m","max_tokens":5,"messages":[]}"#),
            "messages: at least one message is required"
        );
        assert_eq!(
            err(r#"{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"x"}]}"#),
            "max_tokens: must be at least 1"
        );
        let e = err(
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"tool_use","id":"a","name":"x","input":{}}]}]}"#,
        );
        assert!(
            e.starts_with("messages.0.content.0.type: a tool_use block"),
            "{e}"
        );
    }

    /// Regression: `pass-x\r\nX-Injected: 1` reached a passthrough upstream
    /// (which billed it) and broke the response headers.
    #[test]
    fn model_names_are_header_safe_tokens() {
        for bad in [
            r"pass-x\r\nX-Injected: 1",
            r"a\u0000b",
            "two words",
            r"caf\u00e9",
            r"\t",
        ] {
            let body = format!(
                r#"{{"model":"{bad}","max_tokens":5,"messages":[{{"role":"user","content":"x"}}]}}"#
            );
            let e = err(&body);
            assert!(e.starts_with("model: must be"), "{bad:?}: {e}");
        }
        let long = "m".repeat(MAX_MODEL_LEN + 1);
        assert!(err(&format!(
            r#"{{"model":"{long}","max_tokens":5,"messages":[{{"role":"user","content":"x"}}]}}"#
        ))
        .starts_with("model:"));
        for good in [
            "claude-sonnet-4-5",
            "arn:aws:bedrock:us-east-1:1:inference-profile/us.anthropic.x-v2:0",
            "qwen2.5-coder:7b",
            "a/b@c",
        ] {
            let body = format!(
                r#"{{"model":"{good}","max_tokens":5,"messages":[{{"role":"user","content":"x"}}]}}"#
            );
            assert!(parse_messages_request(body.as_bytes()).is_ok(), "{good}");
        }
    }

    #[test]
    fn tools_are_checked() {
        let e = err(
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"a","description":5,"input_schema":{}}]}"#,
        );
        assert_eq!(e, "tools.0.description: must be a string");
        let e = err(
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"a","input_schema":[]}]}"#,
        );
        assert_eq!(e, "tools.0.input_schema: must be an object");
    }

    #[test]
    fn invalid_json_is_reported_as_such() {
        assert!(err("{\"model\":").starts_with("body: invalid JSON"));
        assert_eq!(err("[1,2]"), "body: must be a JSON object");
        assert!(err("42").starts_with("body: invalid type"));
        assert!(err(
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}]} trailing"#
        )
        .starts_with("body: invalid JSON"));
    }

    #[test]
    fn every_fixture_parses() {
        for entry in std::fs::read_dir(crate::test_support::fixtures_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let body = crate::test_support::fixture_body(&path);
            if path.to_string_lossy().contains("count_tokens") {
                parse_count_tokens_request(&body).unwrap();
            } else {
                parse_messages_request(&body).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            }
        }
    }
}
