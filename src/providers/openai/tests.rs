use super::request::{to_chat_request, MISSING_TOOL_RESULT, TOOL_ERROR_PREFIX};
use super::response::to_message;
use super::stream::{Progress, StreamTranslator};
use super::*;
use crate::protocol::anthropic::{ResponseBlock, StopReason};
use crate::protocol::error::upstream_error_message;
use crate::protocol::validate::parse_messages_request;
use crate::test_support::{fixture_body, fixtures_dir};
use bytes::BytesMut;
use serde_json::{json, Value};

fn translate_with(req: Value, opts: OpenAiOptions) -> Value {
    let body = serde_json::to_vec(&req).unwrap();
    let parsed = parse_messages_request(&body).unwrap();
    let chat = to_chat_request(&parsed, "gpt-test", &opts).unwrap();
    serde_json::to_value(&chat).unwrap()
}

fn translate(req: Value) -> Value {
    translate_with(req, OpenAiOptions::default())
}

/// The checks OpenAI's API makes on a conversation: known roles, every
/// `tool` message right after the assistant message that called it, every
/// call answered, and no Anthropic-only field anywhere.
fn assert_openai_valid(body: &Value) {
    let messages = body["messages"].as_array().expect("messages");
    let mut open_calls: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap();
        assert!(
            ["system", "user", "assistant", "tool"].contains(&role),
            "role {role}"
        );
        if role == "tool" {
            let id = m["tool_call_id"].as_str().unwrap().to_string();
            let pos = open_calls.iter().position(|c| *c == id);
            assert!(
                pos.is_some(),
                "message {i}: tool result {id} does not follow its call"
            );
            open_calls.remove(pos.unwrap());
            assert!(m["content"].is_string());
            continue;
        }
        assert!(
            open_calls.is_empty(),
            "message {i}: calls {open_calls:?} left unanswered"
        );
        if role == "assistant" {
            for call in m["tool_calls"].as_array().into_iter().flatten() {
                open_calls.push(call["id"].as_str().unwrap().to_string());
                let args: Value =
                    serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
                assert!(args.is_object());
            }
            assert!(m["content"].is_string() || m.get("tool_calls").is_some());
        }
    }
    assert!(
        open_calls.is_empty(),
        "calls {open_calls:?} left unanswered at the end"
    );
    let mut keys = Vec::new();
    collect_keys(body, &mut keys);
    for field in [
        "cache_control",
        "context_management",
        "thinking",
        "output_config",
        "metadata",
        "input_schema",
        "tool_use_id",
        "is_error",
        "budget_tokens",
        "stop_sequences",
        "system",
        "top_k",
        "source",
        "signature",
    ] {
        assert!(
            !keys.contains(&field.to_string()),
            "Anthropic-only field {field} left in the body"
        );
    }
    for block_type in ["tool_use", "tool_result", "thinking", "image", "document"] {
        assert!(
            !body
                .to_string()
                .contains(&format!("\"type\":\"{block_type}\"")),
            "Anthropic block {block_type} left"
        );
    }
    for tool in body["tools"].as_array().into_iter().flatten() {
        assert_eq!(tool["type"], "function");
        assert!(tool["function"]["parameters"].is_object());
    }
}

/// Every object key in the body, except inside tool parameter schemas
/// (whose property names belong to the tool).
fn collect_keys(v: &Value, keys: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                keys.push(k.clone());
                if k != "parameters" && k != "schema" {
                    collect_keys(child, keys);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_keys(i, keys)),
        _ => {}
    }
}

#[test]
fn every_claude_code_fixture_translates_to_a_valid_openai_body() {
    let mut count = 0;
    for entry in std::fs::read_dir(fixtures_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".json") || name.contains("count_tokens") {
            continue;
        }
        let body = fixture_body(&path);
        let parsed = parse_messages_request(&body).unwrap();
        let opts = OpenAiOptions {
            max_tokens_field: MaxTokensField::MaxCompletionTokens,
            reasoning: ReasoningStyle::Effort,
            max_output_tokens: Some(16384),
        };
        let chat =
            serde_json::to_value(to_chat_request(&parsed, "gpt-4o", &opts).unwrap()).unwrap();
        assert_openai_valid(&chat);
        assert_eq!(chat["model"], "gpt-4o");
        assert!(
            chat["max_completion_tokens"].as_u64().unwrap() <= 16384,
            "{name}"
        );
        assert_eq!(chat["stream_options"]["include_usage"], true, "{name}");
        assert!(chat["user"].as_str().unwrap().len() <= 64, "{name}");
        let tools_in = parsed.tools.as_ref().map_or(0, |t| t.len());
        assert_eq!(
            chat["tools"].as_array().map_or(0, |t| t.len()),
            tools_in,
            "{name}"
        );
        count += 1;
    }
    assert_eq!(count, 4, "expected the four message fixtures");
}

#[test]
fn fixture_02_tool_result_follows_its_call() {
    let body = crate::test_support::fixture("02");
    let parsed = parse_messages_request(&body).unwrap();
    let chat =
        serde_json::to_value(to_chat_request(&parsed, "m", &OpenAiOptions::default()).unwrap())
            .unwrap();
    let msgs = chat["messages"].as_array().unwrap();
    let a = msgs.iter().position(|m| m["role"] == "assistant").unwrap();
    assert_eq!(msgs[a]["tool_calls"][0]["function"]["name"], "Write");
    assert_eq!(
        msgs[a]["tool_calls"][0]["id"],
        "toolu_01MockWriteHello000000001"
    );
    assert_eq!(msgs[a + 1]["role"], "tool");
    assert_eq!(
        msgs[a + 1]["tool_call_id"],
        "toolu_01MockWriteHello000000001"
    );
    assert!(msgs[a + 1]["content"]
        .as_str()
        .unwrap()
        .starts_with("File created successfully"));
    // The mid-conversation system message stays where it was.
    assert!(msgs[1..].iter().any(|m| m["role"] == "system"));
}

#[test]
fn system_blocks_and_mid_conversation_system_messages() {
    let out = translate(json!({
        "model": "claude", "max_tokens": 100,
        "system": [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "b"}],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "reminder"},
            {"role": "assistant", "content": "hello"},
        ]
    }));
    assert_eq!(
        out["messages"],
        json!([
            {"role": "system", "content": "a\nb"},
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "reminder"},
            {"role": "assistant", "content": "hello"},
        ])
    );
    assert_eq!(out["max_tokens"], 100);
    assert!(out.get("max_completion_tokens").is_none());
    assert_eq!(out["stream"], false);
    assert!(out.get("stream_options").is_none());
}

#[test]
fn images_base64_and_url_become_image_parts() {
    let out = translate(json!({
        "model": "c", "max_tokens": 10,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        ]}]
    }));
    assert_eq!(
        out["messages"][0]["content"],
        json!([
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        ])
    );
}

#[test]
fn tools_and_every_tool_choice() {
    let base = |choice: Value| {
        json!({
            "model": "c", "max_tokens": 10,
            "messages": [{"role": "user", "content": "x"}],
            "tools": [
                {"name": "get", "description": "d", "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}},
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
            ],
            "tool_choice": choice,
        })
    };
    let out = translate(base(json!({"type": "auto"})));
    assert_eq!(
        out["tools"],
        json!([{"type": "function", "function": {"name": "get", "description": "d",
        "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}}])
    );
    assert_eq!(out["tool_choice"], "auto");
    assert!(out.get("parallel_tool_calls").is_none());
    assert_eq!(
        translate(base(json!({"type": "any"})))["tool_choice"],
        "required"
    );
    assert_eq!(
        translate(base(json!({"type": "none"})))["tool_choice"],
        "none"
    );
    let named = translate(base(
        json!({"type": "tool", "name": "get", "disable_parallel_tool_use": true}),
    ));
    assert_eq!(
        named["tool_choice"],
        json!({"type": "function", "function": {"name": "get"}})
    );
    assert_eq!(named["parallel_tool_calls"], false);
}

#[test]
fn parallel_tool_calls_and_results_in_openai_order() {
    let out = translate(json!({
        "model": "c", "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "read both"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "reading"},
                {"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": "a"}},
                {"type": "tool_use", "id": "t2", "name": "Read", "input": {"path": "b"}},
            ]},
            {"role": "user", "content": [
                {"type": "text", "text": "and then?"},
                {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "B"}]},
                {"type": "tool_result", "tool_use_id": "t1", "content": "A", "is_error": true},
            ]},
        ]
    }));
    assert_openai_valid(&out);
    let m = &out["messages"];
    assert_eq!(m[1]["content"], "reading");
    assert_eq!(
        m[1]["tool_calls"][0],
        json!({"id": "t1", "type": "function", "function": {"name": "Read", "arguments": "{\"path\":\"a\"}"}})
    );
    assert_eq!(m[1]["tool_calls"][1]["id"], "t2");
    assert_eq!(
        m[2],
        json!({"role": "tool", "tool_call_id": "t2", "content": "B"})
    );
    assert_eq!(
        m[3],
        json!({"role": "tool", "tool_call_id": "t1", "content": format!("{TOOL_ERROR_PREFIX}A")})
    );
    assert_eq!(m[4], json!({"role": "user", "content": "and then?"}));
}

#[test]
fn unanswered_and_orphan_tool_results_stay_valid() {
    let out = translate(json!({
        "model": "c", "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "zzz", "content": "late"}]},
        ]
    }));
    assert_openai_valid(&out);
    assert_eq!(
        out["messages"][2],
        json!({"role": "tool", "tool_call_id": "t1", "content": MISSING_TOOL_RESULT})
    );
    assert_eq!(
        out["messages"][3],
        json!({"role": "user", "content": "[tool result zzz] late"})
    );
    assert!(out["messages"][1]["content"].is_null());
}

#[test]
fn tool_result_images_move_to_a_user_message() {
    let out = translate(json!({
        "model": "c", "max_tokens": 10,
        "messages": [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Shot", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
                {"type": "text", "text": "screenshot"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
            ]}]},
        ]
    }));
    assert_openai_valid(&out);
    assert_eq!(out["messages"][1]["content"], "screenshot");
    assert_eq!(
        out["messages"][2]["content"][0]["image_url"]["url"],
        "data:image/png;base64,AAA"
    );
}

#[test]
fn options_thinking_format_stop_user_sampling() {
    let req = json!({
        "model": "c", "max_tokens": 64000, "stream": true,
        "messages": [{"role": "user", "content": "x"}],
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "output_config": {"effort": "high", "format": {"type": "json_schema", "schema": {"type": "object"}}},
        "stop_sequences": ["a", "b", "c", "d", "e"],
        "metadata": {"user_id": "short-user"},
        "temperature": 0.5, "top_p": 0.9, "top_k": 5,
        "context_management": {"edits": []},
    });
    let out = translate_with(
        req.clone(),
        OpenAiOptions {
            max_tokens_field: MaxTokensField::MaxCompletionTokens,
            reasoning: ReasoningStyle::Effort,
            max_output_tokens: Some(16384),
        },
    );
    assert_eq!(out["max_completion_tokens"], 16384);
    assert_eq!(out["reasoning_effort"], "high");
    assert_eq!(
        out["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "output", "schema": {"type": "object"}}})
    );
    assert_eq!(out["stop"], json!(["a", "b", "c", "d"]));
    assert_eq!(out["user"], "short-user");
    assert_eq!(out["temperature"], 0.5);
    assert_eq!(out["top_p"], 0.9);
    assert!(out.get("top_k").is_none());
    assert_eq!(out["stream"], true);
    assert_eq!(out["stream_options"], json!({"include_usage": true}));

    let or = translate_with(
        req.clone(),
        OpenAiOptions {
            reasoning: ReasoningStyle::Openrouter,
            ..Default::default()
        },
    );
    assert_eq!(or["reasoning"], json!({"max_tokens": 31999}));
    assert!(or.get("reasoning_effort").is_none());
    let none = translate(req);
    assert!(none.get("reasoning_effort").is_none() && none.get("reasoning").is_none());
}

#[test]
fn response_text_tools_thinking_and_usage() {
    let body = json!({
        "id": "chatcmpl-1", "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me check.", "reasoning_content": "thinking...",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": "{\"path\":\"a\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "Bash", "arguments": "not json"}},
            ]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": 60}},
    });
    let msg = to_message(body.to_string().as_bytes(), "claude-x").unwrap();
    assert_eq!(msg.id, "msg_chatcmpl-1");
    assert_eq!(msg.model, "claude-x");
    assert_eq!(msg.stop_reason, Some(StopReason::ToolUse));
    assert_eq!(
        msg.content[0],
        ResponseBlock::Thinking {
            thinking: "thinking...".into(),
            signature: String::new()
        }
    );
    assert_eq!(
        msg.content[1],
        ResponseBlock::Text {
            text: "Let me check.".into()
        }
    );
    assert_eq!(
        msg.content[2],
        ResponseBlock::ToolUse {
            id: "call_1".into(),
            name: "Read".into(),
            input: json!({"path": "a"})
        }
    );
    assert_eq!(
        msg.content[3],
        ResponseBlock::ToolUse {
            id: "call_2".into(),
            name: "Bash".into(),
            input: json!({"_raw_arguments": "not json"})
        }
    );
    assert_eq!(
        (
            msg.usage.input_tokens,
            msg.usage.cache_read_input_tokens,
            msg.usage.output_tokens
        ),
        (40, 60, 20)
    );
}

#[test]
fn finish_reasons_map_to_stop_reasons() {
    for (finish, stop) in [
        ("stop", StopReason::EndTurn),
        ("length", StopReason::MaxTokens),
        ("tool_calls", StopReason::ToolUse),
        ("content_filter", StopReason::Refusal),
    ] {
        let body = json!({"choices": [{"finish_reason": finish, "message": {"content": "x"}}]});
        assert_eq!(
            to_message(body.to_string().as_bytes(), "m")
                .unwrap()
                .stop_reason,
            Some(stop),
            "{finish}"
        );
    }
    assert_eq!(
        to_message(b"{\"choices\":[]}", "m").unwrap_err().status,
        502
    );
    assert_eq!(to_message(b"<html>", "m").unwrap_err().status, 502);
}

#[test]
fn upstream_error_text_is_preserved() {
    assert_eq!(
        upstream_error_message(
            br#"{"error":{"message":"Rate limit reached for gpt-4o","type":"requests"}}"#
        ),
        "Rate limit reached for gpt-4o"
    );
    assert_eq!(
        upstream_error_message(br#"{"error":"model not loaded"}"#),
        "model not loaded"
    );
    assert_eq!(upstream_error_message(b"Bad Gateway"), "Bad Gateway");
}

// ---- streaming ---------------------------------------------------------------

fn sse(chunks: &[Value]) -> String {
    let mut s: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    s.push_str("data: [DONE]\n\n");
    s
}

type Events = Vec<(String, Value)>;

/// Run a whole upstream stream through the translator, split into pieces
/// of `step` bytes, and return the Anthropic events as (name, data).
fn run_stream(stream: &str, step: usize) -> Result<Events, (Events, String)> {
    let mut t = StreamTranslator::new("claude-test");
    let mut out = BytesMut::new();
    let mut result = Ok(());
    for piece in stream.as_bytes().chunks(step) {
        match t.feed(piece, &mut out) {
            Ok(Progress::Done) => break,
            Ok(Progress::Continue) => {}
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        result = t.end_of_input(&mut out);
    }
    let events = parse_events(&out);
    result
        .map(|_| events.clone())
        .map_err(|e| (events, e.message))
}

use crate::test_support::sse_events as parse_events;

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

fn chunk(delta: Value) -> Value {
    json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
}

fn finish(reason: &str) -> Value {
    json!({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}})
}

#[test]
fn text_stream_becomes_the_exact_anthropic_sequence() {
    let stream = sse(&[
        chunk(json!({"role": "assistant", "content": ""})),
        chunk(json!({"content": "Hel"})),
        chunk(json!({"content": "lo"})),
        finish("stop"),
        usage(12, 3),
    ]);
    let events = run_stream(&stream, 4096).unwrap();
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[0].1["message"]["model"], "claude-test");
    assert_eq!(events[0].1["message"]["id"], "msg_c1");
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    assert_eq!(
        events[2].1["delta"],
        json!({"type": "text_delta", "text": "Hel"})
    );
    assert_eq!(events[5].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[5].1["usage"]["input_tokens"], 12);
    assert_eq!(events[5].1["usage"]["output_tokens"], 3);
    // The same bytes one at a time give the same events.
    assert_eq!(run_stream(&stream, 1).unwrap(), events);
}

#[test]
fn tool_arguments_split_over_many_deltas() {
    let args = r#"{"file_path": "/tmp/x.txt", "content": "hello world"}"#;
    let mut chunks = vec![
        chunk(json!({"content": "Writing."})),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_9", "type": "function", "function": {"name": "Write", "arguments": ""}}]}),
        ),
    ];
    for piece in args.as_bytes().chunks(3) {
        let piece = std::str::from_utf8(piece).unwrap();
        chunks.push(chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
        ));
    }
    chunks.push(finish("tool_calls"));
    let events = run_stream(&sse(&chunks), 7).unwrap();
    let starts: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        starts[1]["content_block"],
        json!({"type": "tool_use", "id": "call_9", "name": "Write", "input": {}})
    );
    assert_eq!(starts[1]["index"], 1);
    let joined: String = events
        .iter()
        .filter(|(_, v)| v["delta"]["type"] == "input_json_delta")
        .map(|(_, v)| v["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(joined, args);
    let delta = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
}

#[test]
fn parallel_tool_calls_become_consecutive_blocks() {
    let stream = sse(&[
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "Read", "arguments": "{\"p\":"}}]}),
        ),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]})),
        chunk(
            json!({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "Read", "arguments": "{\"p\":2}"}}]}),
        ),
        finish("tool_calls"),
    ]);
    let events = run_stream(&stream, 4096).unwrap();
    assert_eq!(
        names(&events),
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
    assert_eq!(events[5].1["index"], 1);
    assert_eq!(events[5].1["content_block"]["id"], "b");
}

#[test]
fn reasoning_content_becomes_a_thinking_block_first() {
    let stream = sse(&[
        chunk(json!({"reasoning_content": "think"})),
        chunk(json!({"reasoning": "ing"})),
        chunk(json!({"content": "answer"})),
        finish("stop"),
    ]);
    let events = run_stream(&stream, 4096).unwrap();
    assert_eq!(events[1].1["content_block"]["type"], "thinking");
    assert_eq!(
        events[2].1["delta"],
        json!({"type": "thinking_delta", "thinking": "think"})
    );
    assert_eq!(events[3].1["delta"]["thinking"], "ing");
    // Anthropic clients check that a thinking block is signed before it stops.
    assert_eq!(
        events[4].1["delta"],
        json!({"type": "signature_delta", "signature": ""})
    );
    assert_eq!(events[5].0, "content_block_stop");
    assert_eq!(events[6].1["content_block"]["type"], "text");
    assert_eq!(events[6].1["index"], 1);
}

#[test]
fn malformed_early_ended_and_error_streams_fail_cleanly() {
    let (events, msg) = run_stream(
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {not json}\n\n",
        4096,
    )
    .unwrap_err();
    assert!(msg.starts_with("malformed upstream stream"), "{msg}");
    assert_eq!(names(&events)[0], "message_start");

    let (_, msg) = run_stream(
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        4096,
    )
    .unwrap_err();
    assert_eq!(
        msg,
        "upstream stream ended before the response was complete"
    );

    let (_, msg) = run_stream(
        "data: {\"error\":{\"message\":\"context length exceeded\",\"code\":400}}\n\n",
        4096,
    )
    .unwrap_err();
    assert_eq!(msg, "context length exceeded");

    // A finish reason without [DONE] still completes the message.
    let events = run_stream(&format!("data: {}\n\n", finish("stop")), 4096).unwrap();
    assert_eq!(names(&events).last(), Some(&"message_stop"));
}

/// No input makes the translation panic: every truncation of a real
/// request, and the request with bytes replaced, either parses and
/// translates or is refused with an error.
#[test]
fn mangled_requests_never_panic() {
    let body = crate::test_support::fixture("02");
    let opts = OpenAiOptions::default();
    let try_one = |bytes: &[u8]| {
        if let Ok(req) = parse_messages_request(bytes) {
            let chat = to_chat_request(&req, "m", &opts);
            if let Ok(chat) = chat {
                serde_json::to_vec(&chat).unwrap();
            }
        }
    };
    for cut in (0..body.len()).step_by(97) {
        try_one(&body[..cut]);
    }
    let mut seed: u64 = 0x5eed;
    for _ in 0..2000 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut mangled = body.clone();
        let pos = (seed >> 33) as usize % mangled.len();
        mangled[pos] = b"{}[]\",:0an\\"[(seed >> 20) as usize % 11];
        try_one(&mangled);
    }
    // Streams too: any byte soup ends in events or an error, never a panic.
    for cut in (0..400).step_by(13) {
        let stream = sse(&[chunk(json!({"content": "hello"})), finish("stop")]);
        let bytes = &stream.as_bytes()[..cut.min(stream.len())];
        let mut t = StreamTranslator::new("m");
        let mut out = BytesMut::new();
        let _ = t.feed(bytes, &mut out);
        let _ = t.end_of_input(&mut out);
    }
}
