use super::*;
use crate::protocol::validate::parse_messages_request;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};

/// One event-stream frame as Bedrock sends it.
pub fn frame(event_type: &str, payload: Value) -> Vec<u8> {
    let msg = Message::new(payload.to_string().into_bytes())
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("event".into()),
        ))
        .add_header(Header::new(
            ":event-type",
            HeaderValue::String(event_type.to_string().into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut out = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&msg, &mut out).unwrap();
    out
}

fn exception(kind: &str, message: &str) -> Vec<u8> {
    let msg = Message::new(json!({"message": message}).to_string().into_bytes())
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("exception".into()),
        ))
        .add_header(Header::new(
            ":exception-type",
            HeaderValue::String(kind.to_string().into()),
        ));
    let mut out = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&msg, &mut out).unwrap();
    out
}

use crate::test_support::sse_events as events;

#[test]
fn converse_request_shape() {
    let body = json!({
        "model": "claude", "max_tokens": 4000, "temperature": 0.3, "stop_sequences": ["X"],
        "system": [{"type": "text", "text": "be good"}],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "tools": [{"name": "Read", "description": "read a file", "input_schema": {"type": "object"}},
                  {"type": "web_search_20250305", "name": "web_search"}],
        "tool_choice": {"type": "any"},
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "reminder"},
            {"role": "assistant", "content": [{"type": "text", "text": "reading"},
                {"type": "tool_use", "id": "t1", "name": "Read", "input": {"p": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "data", "is_error": true},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QQ=="}}]},
        ]
    });
    let body = body.to_string();
    let req = parse_messages_request(body.as_bytes()).unwrap();
    let c = to_converse(&req, Some(1000), true).unwrap();
    assert_eq!(c["system"], json!([{"text": "be good"}]));
    assert_eq!(
        c["inferenceConfig"],
        json!({"maxTokens": 1000, "temperature": 0.3, "stopSequences": ["X"]})
    );
    // user + mid-conversation system merged into one user turn
    assert_eq!(
        c["messages"][0],
        json!({"role": "user", "content": [{"text": "hi"}, {"text": "reminder"}]})
    );
    assert_eq!(
        c["messages"][1]["content"][1],
        json!({"toolUse": {"toolUseId": "t1", "name": "Read", "input": {"p": 1}}})
    );
    assert_eq!(
        c["messages"][2]["content"][0],
        json!({"toolResult": {"toolUseId": "t1", "content": [{"text": "data"}], "status": "error"}})
    );
    assert_eq!(
        c["messages"][2]["content"][1],
        json!({"image": {"format": "png", "source": {"bytes": "QQ=="}}})
    );
    assert_eq!(
        c["toolConfig"]["tools"],
        json!([{"toolSpec": {"name": "Read", "description": "read a file", "inputSchema": {"json": {"type": "object"}}}}])
    );
    assert_eq!(c["toolConfig"]["toolChoice"], json!({"any": {}}));
    // Regression: the budget (2048) went out above the capped maxTokens
    // (1000), which Bedrock refuses; with no room for 1024 it is left out.
    assert!(c.get("additionalModelRequestFields").is_none(), "{c}");
    let budget = |cap| {
        to_converse(&req, cap, true).unwrap()["additionalModelRequestFields"]["thinking"]
            ["budget_tokens"]
            .clone()
    };
    assert_eq!(budget(None), 2048);
    assert_eq!(budget(Some(3000)), 2048);
    assert_eq!(budget(Some(2048)), 2047);
    assert!(to_converse(&req, None, false)
        .unwrap()
        .get("additionalModelRequestFields")
        .is_none());
}

#[test]
fn every_fixture_translates() {
    for p in ["01", "02", "03", "05"] {
        let body = crate::test_support::fixture(p);
        let req = parse_messages_request(&body).unwrap();
        let c = to_converse(&req, None, true).unwrap();
        let roles: Vec<&str> = c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles[0], "user", "fixture {p}");
        assert!(
            roles.windows(2).all(|w| w[0] != w[1]),
            "fixture {p}: roles alternate: {roles:?}"
        );
    }
}

#[test]
fn path_encodes_the_model_id() {
    let ep = endpoint(None, "eu-west-1").unwrap();
    assert_eq!(
        (ep.host.as_str(), ep.tls),
        ("bedrock-runtime.eu-west-1.amazonaws.com", true)
    );
    assert_eq!(
        path(&ep, "anthropic.claude-3-5-sonnet-20241022-v2:0", true),
        "/model/anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse-stream"
    );
    assert_eq!(
        path(
            &ep,
            "arn:aws:bedrock:us-east-1:1:inference-profile/x",
            false
        ),
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx/converse"
    );
}

#[test]
fn sigv4_headers() {
    let creds = Credentials::new("AKIDEXAMPLE", "secret", Some("token".into()), None, "test");
    let ep = endpoint(None, "us-east-1").unwrap();
    let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let h = sign(&creds, "us-east-1", &ep, "/model/m/converse", b"{}", time).unwrap();
    let get = |n: &str| {
        h.iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.as_str())
            .unwrap()
    };
    assert_eq!(get("x-amz-date"), "20231114T221320Z");
    assert_eq!(get("x-amz-security-token"), "token");
    let auth = get("authorization");
    assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="), "{auth}");
    // Deterministic for the same input, different for another body.
    assert_eq!(
        sign(&creds, "us-east-1", &ep, "/model/m/converse", b"{}", time).unwrap(),
        h
    );
    assert_ne!(
        sign(&creds, "us-east-1", &ep, "/model/m/converse", b"{ }", time).unwrap(),
        h
    );
}

#[test]
fn converse_response() {
    let body = json!({"output": {"message": {"role": "assistant", "content": [
        {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "sig"}}},
        {"text": "I'll read it"},
        {"toolUse": {"toolUseId": "tu1", "name": "Read", "input": {"p": "a"}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 50, "outputTokens": 7, "cacheReadInputTokens": 20}});
    let m = to_message(body.to_string().as_bytes(), "claude-x").unwrap();
    assert_eq!(m.stop_reason, Some(StopReason::ToolUse));
    assert_eq!(
        m.content[0],
        ResponseBlock::Thinking {
            thinking: "hmm".into(),
            signature: "sig".into()
        }
    );
    assert_eq!(
        m.content[2],
        ResponseBlock::ToolUse {
            id: "tu1".into(),
            name: "Read".into(),
            input: json!({"p": "a"})
        }
    );
    assert_eq!(
        (
            m.usage.input_tokens,
            m.usage.cache_read_input_tokens,
            m.usage.output_tokens
        ),
        (50, 20, 7)
    );
}

pub fn converse_stream(text: &str, tool: Option<(&str, &str, &str)>) -> Vec<u8> {
    let mut out = frame("messageStart", json!({"role": "assistant"}));
    for piece in text.split_inclusive(' ') {
        out.extend(frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": piece}}),
        ));
    }
    out.extend(frame("contentBlockStop", json!({"contentBlockIndex": 0})));
    let mut stop = "end_turn";
    if let Some((id, name, input)) = tool {
        out.extend(frame(
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": id, "name": name}}}),
        ));
        for piece in input.as_bytes().chunks(4) {
            let piece = std::str::from_utf8(piece).unwrap();
            out.extend(frame(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": piece}}}),
            ));
        }
        out.extend(frame("contentBlockStop", json!({"contentBlockIndex": 1})));
        stop = "tool_use";
    }
    out.extend(frame("messageStop", json!({"stopReason": stop})));
    out.extend(frame(
        "metadata",
        json!({"usage": {"inputTokens": 33, "outputTokens": 9}, "metrics": {"latencyMs": 5}}),
    ));
    out
}

#[test]
fn converse_stream_to_anthropic_events() {
    let bytes = converse_stream(
        "hello there",
        Some(("tu1", "Write", r#"{"file_path":"/x","content":"y"}"#)),
    );
    let mut t = StreamTranslator::new("claude-m");
    let mut out = BytesMut::new();
    let mut progress = Progress::Continue;
    for piece in bytes.chunks(7) {
        progress = t.feed(piece, &mut out).unwrap();
    }
    assert_eq!(progress, Progress::Done);
    let ev = events(&out);
    let text: String = ev
        .iter()
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "hello there");
    let start = ev
        .iter()
        .find(|(_, v)| v["content_block"]["type"] == "tool_use")
        .unwrap();
    assert_eq!(
        (
            start.1["index"].as_u64(),
            start.1["content_block"]["id"].as_str()
        ),
        (Some(1), Some("tu1"))
    );
    let args: String = ev
        .iter()
        .filter_map(|(_, v)| v["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(args, r#"{"file_path":"/x","content":"y"}"#);
    let delta = ev.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta.1["usage"]["input_tokens"], 33);
    assert_eq!(ev.last().unwrap().0, "message_stop");
}

#[test]
fn corrupt_frames_exceptions_and_early_ends_are_errors() {
    let mut bytes = converse_stream("hello", None);
    let n = bytes.len();
    bytes[n - 10] ^= 0xff; // inside the last frame: its CRC no longer matches
    let mut t = StreamTranslator::new("m");
    let err = t.feed(&bytes, &mut BytesMut::new()).unwrap_err();
    assert!(
        err.message.starts_with("malformed upstream event stream"),
        "{}",
        err.message
    );

    let mut t = StreamTranslator::new("m");
    let mut bytes = frame("messageStart", json!({"role": "assistant"}));
    bytes.extend(exception("throttlingException", "Too many requests"));
    let err = t.feed(&bytes, &mut BytesMut::new()).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (429, "throttlingException: Too many requests")
    );

    let mut t = StreamTranslator::new("m");
    t.feed(
        &frame("messageStart", json!({"role": "assistant"})),
        &mut BytesMut::new(),
    )
    .unwrap();
    assert!(t.end_of_input(&mut BytesMut::new()).is_err());
}

/// A tool call Bedrock sends without an id gets one from the gateway's
/// generator: an empty id would pair every result with every call.
#[test]
fn tool_calls_without_ids_get_generated_ones() {
    let body = json!({"output": {"message": {"role": "assistant", "content": [
        {"toolUse": {"name": "Read", "input": {}}}, {"toolUse": {"toolUseId": "", "name": "Grep", "input": {}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 1, "outputTokens": 1}});
    let m = to_message(body.to_string().as_bytes(), "c").unwrap();
    let ids: Vec<&str> = m
        .content
        .iter()
        .filter_map(|b| match b {
            ResponseBlock::ToolUse { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|i| i.starts_with("toolu_lynkr_")), "{ids:?}");
    assert_ne!(ids[0], ids[1]);
}
