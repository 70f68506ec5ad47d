//! Property tests (`proptest`) over the parsers and translators: any
//! chunking of a valid stream, any valid request, any garbage, and no panic.
//!
//! Each property runs `PROPTEST_CASES` cases (10,000 by default, as in CI);
//! a long run: `PROPTEST_CASES=1000000 cargo test --release --lib properties`.

use crate::protocol::validate::parse_messages_request;
use crate::providers::openai::OpenAiOptions;
use crate::providers::{anthropic, bedrock, ollama, openai, Capabilities};
use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Cases per property: `PROPTEST_CASES`, else 10,000.
pub fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Split `bytes` at the given cut points (any chunking).
pub fn split<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut from = 0;
    for p in points {
        out.push(&bytes[from..p]);
        from = p;
    }
    out.push(&bytes[from..]);
    out
}

// ---- valid Anthropic requests ------------------------------------------------------------

/// What one generated block is, before ids are given out.
#[derive(Debug, Clone)]
enum Gen {
    Text(String),
    Image,
    ToolUse,
    /// A result for the n-th tool use so far (or an unknown id).
    ToolResult(usize, Option<String>, bool),
    Thinking(String),
    SearchResult(String),
    ServerToolUse,
    WebSearchResult,
    Unknown,
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn user_block() -> impl Strategy<Value = Gen> {
    prop_oneof![
        4 => text().prop_map(Gen::Text),
        1 => Just(Gen::Image),
        4 => (0usize..8, proptest::option::of(text()), any::<bool>())
            .prop_map(|(n, c, e)| Gen::ToolResult(n, c, e)),
        1 => text().prop_map(Gen::SearchResult),
        1 => Just(Gen::Unknown),
    ]
}

fn assistant_block() -> impl Strategy<Value = Gen> {
    prop_oneof![
        4 => text().prop_map(Gen::Text),
        4 => Just(Gen::ToolUse),
        1 => text().prop_map(Gen::Thinking),
        1 => Just(Gen::ServerToolUse),
        1 => Just(Gen::WebSearchResult),
        1 => Just(Gen::Unknown),
    ]
}

/// (role, content as a string or blocks)
fn turn() -> impl Strategy<Value = (u8, Option<String>, Vec<Gen>)> {
    (0u8..3).prop_flat_map(|role| {
        let blocks = match role {
            1 => proptest::collection::vec(assistant_block(), 0..5).boxed(),
            _ => proptest::collection::vec(user_block(), 0..5).boxed(),
        };
        (Just(role), proptest::option::of(text()), blocks)
    })
}

/// A valid Messages request: any order of text, images, tool calls and
/// results (answered or not, results for no call), thinking, server tool
/// blocks, unknown blocks and empty content.
pub fn request() -> impl Strategy<Value = Value> {
    (proptest::collection::vec(turn(), 1..8), any::<bool>(), any::<bool>()).prop_map(
        |(turns, stream, tools)| {
            let mut used = 0usize;
            let messages: Vec<Value> = turns
                .into_iter()
                .map(|(role, as_text, blocks)| {
                    let role_name = ["user", "assistant", "system"][role as usize];
                    if role == 2 || (as_text.is_some() && blocks.is_empty()) {
                        return json!({"role": role_name, "content": as_text.unwrap_or_default()});
                    }
                    let content: Vec<Value> = blocks
                        .into_iter()
                        .map(|b| match b {
                            Gen::Text(t) => json!({"type": "text", "text": t}),
                            Gen::Image => json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}),
                            Gen::ToolUse => {
                                used += 1;
                                json!({"type": "tool_use", "id": format!("toolu_{}", used - 1), "name": "Read", "input": {"n": used}})
                            }
                            Gen::ToolResult(n, c, e) => {
                                let mut r = json!({"type": "tool_result", "tool_use_id": format!("toolu_{n}"), "is_error": e});
                                if let Some(c) = c {
                                    r["content"] = json!(c);
                                }
                                r
                            }
                            Gen::Thinking(t) => json!({"type": "thinking", "thinking": t, "signature": "sig"}),
                            Gen::SearchResult(t) => json!({"type": "search_result", "source": "s", "title": t, "content": [{"type": "text", "text": t}]}),
                            Gen::ServerToolUse => json!({"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}}),
                            Gen::WebSearchResult => json!({"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [{"type": "web_search_result", "url": "u", "title": "t"}]}),
                            Gen::Unknown => json!({"type": "hologram_2031", "payload": [1, 2]}),
                        })
                        .collect();
                    json!({"role": role_name, "content": content})
                })
                .collect();
            let mut req = json!({"model": "m", "max_tokens": 4096, "stream": stream, "messages": messages});
            if tools {
                req["tools"] = json!([{"name": "Read", "description": "read", "input_schema": {"type": "object"}},
                                      {"type": "web_search_20250305", "name": "web_search"}]);
                req["thinking"] = json!({"type": "enabled", "budget_tokens": 2048});
            }
            req
        },
    )
}

/// OpenAI accepts it: every assistant `tool_calls` entry is answered by
/// exactly one `tool` message straight after it, and no `tool` message
/// answers anything else.
fn check_openai(messages: &[Value]) -> Result<(), String> {
    let mut i = 0;
    while i < messages.len() {
        let m = &messages[i];
        match m["role"].as_str() {
            Some("tool") => return Err(format!("tool message {i} answers no call")),
            Some("assistant") => {
                let calls: Vec<&str> = m["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| c["id"].as_str().unwrap_or(""))
                    .collect();
                if m["content"].is_null() && calls.is_empty() {
                    return Err(format!("empty assistant message {i}"));
                }
                let mut answered = Vec::new();
                while i + 1 < messages.len() && messages[i + 1]["role"] == "tool" {
                    i += 1;
                    answered.push(messages[i]["tool_call_id"].as_str().unwrap_or(""));
                }
                let mut want = calls.clone();
                want.sort_unstable();
                answered.sort_unstable();
                if want != answered {
                    return Err(format!("calls {calls:?} answered by {answered:?}"));
                }
            }
            Some("user") | Some("system") => {}
            other => return Err(format!("unknown role {other:?}")),
        }
        i += 1;
    }
    Ok(())
}

/// Bedrock accepts it: roles alternate starting with the user, no turn is
/// empty, and every `toolUse` is answered by exactly one `toolResult` in
/// the next turn, with no other `toolResult` anywhere.
fn check_bedrock(messages: &[Value]) -> Result<(), String> {
    let ids = |m: &Value, key: &str| -> Vec<String> {
        m["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| {
                b.pointer(&format!("/{key}/toolUseId"))?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    };
    for (i, m) in messages.iter().enumerate() {
        let want = if i % 2 == 0 { "user" } else { "assistant" };
        if m["role"] != want {
            return Err(format!("message {i} is {} not {want}", m["role"]));
        }
        if m["content"].as_array().is_none_or(|c| c.is_empty()) {
            return Err(format!("message {i} is empty"));
        }
        let mut calls = if i > 0 {
            ids(&messages[i - 1], "toolUse")
        } else {
            Vec::new()
        };
        let mut results = ids(m, "toolResult");
        calls.sort();
        results.sort();
        if calls != results {
            return Err(format!(
                "message {i}: calls {calls:?} answered by {results:?}"
            ));
        }
    }
    if messages
        .last()
        .is_some_and(|m| !ids(m, "toolUse").is_empty())
    {
        return Err("the last turn's calls are unanswered".into());
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_valid_request_translates_into_one_each_provider_accepts(req in request()) {
        let body = serde_json::to_vec(&req).unwrap();
        let parsed = parse_messages_request(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let opts = OpenAiOptions::default();
        let chat = openai::request::to_chat_request(&parsed, "m", &opts).unwrap();
        let chat = serde_json::to_value(&chat).unwrap();
        check_openai(chat["messages"].as_array().unwrap()).map_err(TestCaseError::fail)?;
        let caps = Capabilities { tools: true, vision: true, reasoning: true, max_output_tokens: Some(1000), context_window: None };
        let o = ollama::to_ollama_request(&parsed, "m", &opts, &caps).unwrap();
        let o = serde_json::to_value(&o).unwrap();
        for m in o["messages"].as_array().unwrap() {
            prop_assert!(["system", "user", "assistant", "tool"].contains(&m["role"].as_str().unwrap()));
        }
        let converse = bedrock::to_converse(&parsed, Some(1000), true).unwrap();
        check_bedrock(converse["messages"].as_array().unwrap()).map_err(TestCaseError::fail)?;
        let passthrough = anthropic::rewrite_body(&body, "up", Some(1000)).unwrap();
        let up: Value = serde_json::from_slice(&passthrough).unwrap();
        prop_assert_eq!(&up["messages"], &req["messages"]);
        if let Some(budget) = up["thinking"]["budget_tokens"].as_u64() {
            prop_assert!(budget < up["max_tokens"].as_u64().unwrap());
        }
    }

    #[test]
    fn any_bytes_as_a_request_body_is_an_error_or_a_request(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_messages_request(&body);
        let _ = crate::protocol::validate::parse_count_tokens_request(&body);
    }

    #[test]
    fn any_json_as_a_request_body_never_panics(v in json_value()) {
        let body = serde_json::to_vec(&v).unwrap();
        if let Ok(req) = parse_messages_request(&body) {
            let _ = openai::request::to_chat_request(&req, "m", &OpenAiOptions::default());
            let _ = bedrock::to_converse(&req, None, true);
            let _ = req.estimated_input_tokens();
        }
    }

    #[test]
    fn any_bytes_in_any_chunks_as_an_upstream_answer_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        for kind in [crate::config::ProviderKind::Openai, crate::config::ProviderKind::Anthropic,
                     crate::config::ProviderKind::Ollama, crate::config::ProviderKind::Bedrock] {
            for (streamed, client_stream) in [(true, true), (false, true), (false, false)] {
                let mut d = crate::providers::Decoder::for_tests(kind, streamed, client_stream);
                let mut out = BytesMut::new();
                let mut failed = false;
                for piece in split(&bytes, &cuts) {
                    if d.feed(piece, &mut out).is_err() {
                        failed = true;
                        break;
                    }
                }
                if !failed {
                    let _ = d.end_of_input(&mut out);
                }
            }
        }
    }

    #[test]
    fn any_openai_chunk_sequence_in_any_chunks_gives_well_formed_events(
        chunks in proptest::collection::vec(openai_chunk(), 0..12),
        done in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut stream = String::new();
        for c in &chunks {
            stream.push_str(&format!("data: {c}\n\n"));
        }
        if done {
            stream.push_str("data: [DONE]\n\n");
        }
        let mut t = openai::stream::StreamTranslator::new("m");
        let mut out = BytesMut::new();
        let mut ok = true;
        for piece in split(stream.as_bytes(), &cuts) {
            if t.feed(piece, &mut out).is_err() {
                ok = false;
                break;
            }
        }
        if ok && t.end_of_input(&mut out).is_ok() {
            check_events(&crate::test_support::sse_events(&out)).map_err(TestCaseError::fail)?;
        }
    }
}

/// A chunk an OpenAI-compatible server might send: text, reasoning, tool
/// call pieces with or without index and id, a finish reason, usage.
fn openai_chunk() -> impl Strategy<Value = Value> {
    let tool = (
        proptest::option::of(0u64..3),
        proptest::option::of(prop_oneof![Just("a"), Just("b"), Just("")]),
        proptest::option::of(prop_oneof![Just("Read"), Just("Grep")]),
        proptest::option::of("[{}\":a-z0-9]{0,6}"),
    )
        .prop_map(|(index, id, name, args)| {
            let mut c = json!({"type": "function", "function": {}});
            if let Some(i) = index {
                c["index"] = json!(i);
            }
            if let Some(id) = id {
                c["id"] = json!(id);
            }
            if let Some(n) = name {
                c["function"]["name"] = json!(n);
            }
            if let Some(a) = args {
                c["function"]["arguments"] = json!(a);
            }
            c
        });
    prop_oneof![
        text().prop_map(|t| json!({"choices": [{"delta": {"content": t}}]})),
        text().prop_map(|t| json!({"choices": [{"delta": {"reasoning_content": t}}]})),
        proptest::collection::vec(tool, 1..3)
            .prop_map(|calls| json!({"choices": [{"delta": {"tool_calls": calls}}]})),
        prop_oneof![Just("stop"), Just("length"), Just("tool_calls")]
            .prop_map(|f| json!({"choices": [{"delta": {}, "finish_reason": f}]})),
        (0u64..100, 0u64..100).prop_map(
            |(p, c)| json!({"choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c}})
        ),
    ]
}

/// Any JSON value, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::from),
        prop_oneof![
            Just("model"),
            Just("messages"),
            Just("role"),
            Just("user"),
            Just("content"),
            Just("type"),
            Just("text"),
            Just("tool_use"),
            Just("max_tokens")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just("model".to_string()),
                        Just("messages".to_string()),
                        Just("max_tokens".to_string()),
                        Just("role".to_string()),
                        Just("content".to_string()),
                        Just("type".to_string()),
                        "[a-z_]{1,8}"
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Anthropic's event grammar: `message_start` first; blocks opened with
/// increasing indexes, one at a time, deltas only inside them, each stopped;
/// `message_delta` then `message_stop` last.
pub fn check_events(events: &[(String, Value)]) -> Result<(), String> {
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    if names.first() != Some(&"message_start") {
        return Err(format!("does not start with message_start: {names:?}"));
    }
    if names[names.len().saturating_sub(2)..] != ["message_delta", "message_stop"] {
        return Err(format!(
            "does not end with message_delta, message_stop: {names:?}"
        ));
    }
    let mut open: Option<u64> = None;
    let mut next = 0u64;
    for (name, data) in &events[1..events.len() - 2] {
        let index = data["index"].as_u64();
        match name.as_str() {
            "content_block_start" if open.is_none() && index == Some(next) => open = index,
            "content_block_delta" if open.is_some() && index == open => {}
            "content_block_stop" if open.is_some() && index == open => {
                open = None;
                next += 1;
            }
            _ => return Err(format!("{name} out of place in {names:?}")),
        }
    }
    if open.is_some() {
        return Err("a block is never stopped".into());
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sse_events_are_the_same_however_the_stream_is_split(
        events in proptest::collection::vec((proptest::option::of("[a-z_]{1,12}"), proptest::collection::vec("\\PC{0,20}", 1..3)), 0..6),
        crlf in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut stream = String::new();
        for (name, data) in &events {
            if let Some(n) = name {
                stream.push_str(&format!("event: {n}{nl}"));
            }
            for line in data {
                stream.push_str(&format!("data: {}{nl}", line.replace(['\r', '\n'], " ")));
            }
            stream.push_str(nl);
        }
        let parse = |pieces: Vec<&[u8]>| {
            let mut p = crate::protocol::sse::SseParser::new();
            let mut out = Vec::new();
            for piece in pieces {
                p.feed(piece, &mut out).unwrap();
            }
            out
        };
        let whole = parse(vec![stream.as_bytes()]);
        prop_assert_eq!(whole.len(), events.len());
        prop_assert_eq!(parse(split(stream.as_bytes(), &cuts)), whole);
    }

    #[test]
    fn ndjson_lines_are_the_same_however_the_stream_is_split(
        lines in proptest::collection::vec("[^\n]{0,30}", 0..10),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let stream: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let mut r = crate::util::lines::LineReader::new();
        let mut got = Vec::new();
        for piece in split(stream.as_bytes(), &cuts) {
            r.push(piece);
            while let Some(l) = r.next_line() {
                got.push(String::from_utf8(l.to_vec()).unwrap());
            }
        }
        prop_assert_eq!(got, lines);
        prop_assert!(r.pending().is_empty());
    }
}

proptest! {
    #![proptest_config(config())]

    /// The passthrough's in-place patch means what a full parse, edit and
    /// re-serialization would, and leaves every other byte as it was.
    #[test]
    fn the_in_place_patch_means_what_a_reserialization_would(
        members in proptest::collection::vec(("[a-z_]{1,8}|model|max_tokens|thinking", json_value()), 0..8),
        pretty in any::<bool>(),
        new_model in "\\PC{0,12}",
        remove in "[a-z_]{1,8}|thinking",
    ) {
        use crate::providers::anthropic::patch::{Edit, TopLevel};
        let object: serde_json::Map<String, Value> = members.into_iter().collect();
        let value = Value::Object(object.clone());
        let body = if pretty { serde_json::to_vec_pretty(&value) } else { serde_json::to_vec(&value) }.unwrap();
        let scanned = TopLevel::scan(&body).map_err(TestCaseError::fail)?;
        // Setting a member to its own text changes nothing, byte for byte.
        if let Some(first) = object.keys().next() {
            let own = scanned.get(first).unwrap().to_string();
            prop_assert_eq!(scanned.apply(&[Edit::Set(first, own)]), body.clone());
        }
        let model_json = serde_json::to_string(&new_model).unwrap();
        let patched = scanned.apply(&[Edit::Set("model", model_json), Edit::Remove(&remove), Edit::Set("max_tokens", "7".into())]);
        let mut expected = object;
        expected.insert("model".into(), Value::from(new_model.clone()));
        if remove != "model" && remove != "max_tokens" {
            expected.remove(&remove);
        }
        expected.insert("max_tokens".into(), Value::from(7));
        let got: Value = serde_json::from_slice(&patched).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(got, Value::Object(expected));
    }

    #[test]
    fn the_in_place_patch_never_panics_on_garbage(body in proptest::collection::vec(any::<u8>(), 0..256), json_ish in "[{}\\[\\]\":,\\\\a1 ]{0,64}") {
        use crate::providers::anthropic::patch::{Edit, TopLevel};
        for b in [&body[..], json_ish.as_bytes()] {
            if let Ok(t) = TopLevel::scan(b) {
                let _ = t.get("model");
                let _ = t.apply(&[Edit::Set("model", "\"m\"".into()), Edit::Remove("thinking")]);
            }
        }
    }
}

/// `data` in chunks of the given sizes (cycled), with the framing an
/// upstream may use: extensions, upper-case hex, a trailer.
fn chunk_encode(
    data: &[u8],
    sizes: &[usize],
    upper: bool,
    extension: bool,
    trailer: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = (sizes[i % sizes.len()]).clamp(1, rest.len());
        i += 1;
        let size = if upper {
            format!("{n:X}")
        } else {
            format!("{n:x}")
        };
        out.extend_from_slice(size.as_bytes());
        if extension {
            out.extend_from_slice(b";ext=1");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(b"0\r\n");
    if trailer {
        out.extend_from_slice(b"x-usage: 1\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

proptest! {
    #![proptest_config(config())]

    /// Any data, any chunk sizes, any split of the wire bytes into socket
    /// reads: the same data comes out, and the body ends exactly once.
    #[test]
    fn a_chunked_body_decodes_the_same_however_it_arrives(
        data in proptest::collection::vec(any::<u8>(), 0..2048),
        sizes in proptest::collection::vec(1usize..600, 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        upper in any::<bool>(), extension in any::<bool>(), trailer in any::<bool>(),
    ) {
        use crate::upstream::chunked::ChunkedDecoder;
        let wire = chunk_encode(&data, &sizes, upper, extension, trailer);
        let mut decoder = ChunkedDecoder::default();
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        for piece in split(&wire, &cuts) {
            prop_assert!(!decoder.is_done() || piece.is_empty());
            input.extend_from_slice(piece);
            decoder.decode(&mut input, &mut out).unwrap();
        }
        prop_assert!(decoder.is_done());
        prop_assert!(input.is_empty());
        prop_assert_eq!(&out[..], &data[..]);
    }

    /// Garbage as a chunked body or as a response head: an error or a
    /// result, never a panic, and never more data out than bytes in.
    #[test]
    fn any_bytes_as_upstream_http_framing_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        head_ish in "(HTTP/1\\.[01] [0-9]{3} [A-Za-z ]{0,8}\r\n)?([A-Za-z-]{1,16}: [ -~]{0,16}\r\n){0,6}(\r\n)?",
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        use crate::upstream::chunked::ChunkedDecoder;
        use crate::upstream::h1::parse_response_head;
        let mut decoder = ChunkedDecoder::default();
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        for piece in split(&bytes, &cuts) {
            input.extend_from_slice(piece);
            if decoder.decode(&mut input, &mut out).is_err() {
                break;
            }
        }
        prop_assert!(out.len() <= bytes.len());
        for candidate in [&bytes[..], head_ish.as_bytes()] {
            let mut buf = BytesMut::from(candidate);
            if let Ok(Some(mut head)) = parse_response_head(&mut buf) {
                let _ = head.body();
                let _ = head.header("content-length");
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// A delta written directly is byte for byte the event serde_json
    /// writes for the same `Value`, for any text (escapes, controls,
    /// any Unicode) and any index.
    #[test]
    fn a_delta_event_is_written_as_serde_json_would(
        text in any::<String>(),
        index in any::<usize>(),
        kind in 0u8..4,
    ) {
        use crate::protocol::events::Delta;
        let delta = match kind {
            0 => Delta::Text(&text),
            1 => Delta::Thinking(&text),
            2 => Delta::InputJson(&text),
            _ => Delta::Signature(&text),
        };
        let mut direct = BytesMut::new();
        delta.write_event(index, &mut direct);
        let mut through_value = BytesMut::new();
        crate::protocol::sse::write_event(
            &mut through_value,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta.to_value()}),
        );
        prop_assert_eq!(&direct[..], &through_value[..]);
    }
}

proptest! {
    #![proptest_config(config())]

    /// Text escaped a word at a time is byte for byte serde_json's string,
    /// for any Unicode and for text dense with bytes to escape, and so is
    /// a struct field serialized through `serialize_text`.
    #[test]
    fn text_escaped_a_word_at_a_time_is_serde_jsons_string(
        any_text in any::<String>(),
        dense in "[\\x00-\\x1f\"\\\\a-z é日\\x7f]{0,200}",
    ) {
        use crate::util::json_text::{serialize_text, write_json_string};
        #[derive(serde::Serialize)]
        struct Field<'a>(#[serde(serialize_with = "serialize_text")] &'a str);
        for s in [&any_text, &dense] {
            let mut out = Vec::new();
            write_json_string(&mut out, s);
            let expected = serde_json::to_string(s).unwrap();
            prop_assert_eq!(std::str::from_utf8(&out).unwrap(), expected.as_str());
            prop_assert_eq!(serde_json::to_string(&Field(s)).unwrap(), expected);
        }
    }
}
