use super::*;
use crate::protocol::validate::parse_messages_request;

fn caps(reasoning: bool, window: Option<u64>) -> Capabilities {
    Capabilities {
        tools: true,
        vision: true,
        reasoning,
        max_output_tokens: None,
        context_window: window,
    }
}

#[test]
fn request_in_ollama_form() {
    let body = json!({
        "model": "claude", "max_tokens": 500, "stream": true, "temperature": 0.2,
        "stop_sequences": ["END"], "thinking": {"type": "enabled", "budget_tokens": 2000},
        "system": "sys",
        "tools": [{"name": "Read", "description": "read", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {"p": "a"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "file text"}]},
        ]
    });
    let body = body.to_string();
    let req = parse_messages_request(body.as_bytes()).unwrap();
    let out = serde_json::to_value(
        to_ollama_request(
            &req,
            "qwen3",
            &OpenAiOptions::default(),
            &caps(true, Some(32768)),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(out["model"], "qwen3");
    assert_eq!(out["stream"], true);
    assert_eq!(out["think"], true);
    assert_eq!(
        out["options"],
        json!({"num_predict": 500, "temperature": 0.2, "stop": ["END"], "num_ctx": 32768})
    );
    assert_eq!(out["tools"][0]["function"]["name"], "Read");
    let m = &out["messages"];
    assert_eq!(m[0], json!({"role": "system", "content": "sys"}));
    assert_eq!(
        m[1],
        json!({"role": "user", "content": "look", "images": ["QUJD"]})
    );
    assert_eq!(
        m[2]["tool_calls"][0],
        json!({"function": {"name": "Read", "arguments": {"p": "a"}}})
    );
    assert_eq!(
        m[3],
        json!({"role": "tool", "content": "file text", "tool_name": "Read"})
    );
    // No reasoning capability: no `think`.
    let out = serde_json::to_value(
        to_ollama_request(&req, "q", &OpenAiOptions::default(), &caps(false, None)).unwrap(),
    )
    .unwrap();
    assert!(out.get("think").is_none());
}

/// Ollama takes no image URL: the model gets a note naming it, and the
/// conversation is not refused over it.
#[test]
fn url_images_become_a_note() {
    let body = json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
        {"type": "text", "text": "what is this?"}]}]});
    let body = body.to_string();
    let req = parse_messages_request(body.as_bytes()).unwrap();
    let out = serde_json::to_value(
        to_ollama_request(&req, "q", &OpenAiOptions::default(), &caps(false, None)).unwrap(),
    )
    .unwrap();
    let text = out["messages"][0]["content"].as_str().unwrap();
    assert!(
        text.contains("https://x/y.png") && text.contains("what is this?"),
        "{text}"
    );
    assert!(out["messages"][0].get("images").is_none());
}

#[test]
fn whole_response_with_tool_call() {
    let body = json!({"model": "q", "message": {"role": "assistant", "content": "", "thinking": "hmm",
        "tool_calls": [{"function": {"name": "Bash", "arguments": {"command": "ls"}}}]},
        "done": true, "done_reason": "stop", "prompt_eval_count": 30, "eval_count": 8});
    let msg = to_message(body.to_string().as_bytes(), "claude-x").unwrap();
    assert_eq!(msg.stop_reason, Some(StopReason::ToolUse));
    assert!(
        matches!(&msg.content[0], ResponseBlock::Thinking { thinking, .. } if thinking == "hmm")
    );
    assert!(
        matches!(&msg.content[1], ResponseBlock::ToolUse { name, input, .. } if name == "Bash" && input["command"] == "ls")
    );
    assert_eq!((msg.usage.input_tokens, msg.usage.output_tokens), (30, 8));
}

fn ndjson(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

use crate::test_support::sse_events as events;

#[test]
fn ndjson_stream_to_anthropic_events() {
    let stream = ndjson(&[
        json!({"message": {"role": "assistant", "content": "Hel"}, "done": false}),
        json!({"message": {"role": "assistant", "content": "lo"}, "done": false}),
        json!({"message": {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "Write", "arguments": {"file_path": "/x"}}}]}, "done": false}),
        json!({"message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "stop", "prompt_eval_count": 12, "eval_count": 4}),
    ]);
    let mut t = StreamTranslator::new("claude-m");
    let mut out = BytesMut::new();
    let mut progress = Progress::Continue;
    for piece in stream.as_bytes().chunks(9) {
        progress = t.feed(piece, &mut out).unwrap();
    }
    assert_eq!(progress, Progress::Done);
    let ev = events(&out);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(ev[5].1["content_block"]["name"], "Write");
    assert_eq!(ev[6].1["delta"]["partial_json"], "{\"file_path\":\"/x\"}");
    assert_eq!(ev[8].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(ev[8].1["usage"]["input_tokens"], 12);
}

#[test]
fn broken_ndjson_streams_are_errors() {
    let mut t = StreamTranslator::new("m");
    assert!(t
        .feed(
            b"{\"message\":{\"content\":\"a\"}}\n{oops}\n",
            &mut BytesMut::new()
        )
        .is_err());
    let mut t = StreamTranslator::new("m");
    t.feed(
        b"{\"message\":{\"content\":\"a\"},\"done\":false}\n",
        &mut BytesMut::new(),
    )
    .unwrap();
    assert!(t.end_of_input(&mut BytesMut::new()).is_err());
    let mut t = StreamTranslator::new("m");
    assert_eq!(
        t.feed(
            b"{\"error\":\"model 'x' not found\"}\n",
            &mut BytesMut::new()
        )
        .unwrap_err()
        .message,
        "model 'x' not found"
    );
}
