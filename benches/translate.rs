//! Translation cost on real Claude Code requests.
//! `cargo bench --bench translate`; figures are recorded in the README.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use lynkr::protocol::validate::parse_messages_request;
use lynkr::providers::anthropic::rewrite_body;
use lynkr::providers::openai::request::to_chat_request;
use lynkr::providers::openai::stream::StreamTranslator;
use lynkr::providers::openai::{MaxTokensField, OpenAiOptions, ReasoningStyle};
use lynkr::test_support::fixture;

fn opts() -> OpenAiOptions {
    OpenAiOptions {
        max_tokens_field: MaxTokensField::MaxCompletionTokens,
        reasoning: ReasoningStyle::Effort,
        max_output_tokens: Some(16384),
    }
}

/// The request bodies of the load benchmark: a Claude-Code-like 22.5 KB
/// request with 12 tools, and fixture 01 (76 KB, 24 tools).
fn bodies() -> [(&'static str, Vec<u8>); 2] {
    let small = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/bodies/claude-code-22k.json"
    ))
    .expect("benches/bodies/claude-code-22k.json");
    [("22k", small), ("fixture_01", fixture("01"))]
}

fn request(c: &mut Criterion) {
    let opts = opts();
    for (name, body) in bodies() {
        // What the gateway does per request on the translating path: parse
        // and validate the client's body, translate it, serialize it.
        c.bench_function(&format!("{name}_parse_translate_serialize"), |b| {
            b.iter(|| {
                let req = parse_messages_request(black_box(&body)).unwrap();
                let chat = to_chat_request(&req, "gpt-4o", &opts).unwrap();
                black_box(serde_json::to_vec(&chat).unwrap())
            })
        });
        c.bench_function(&format!("{name}_parse_only"), |b| {
            b.iter(|| black_box(parse_messages_request(black_box(&body)).unwrap()))
        });
        let req = parse_messages_request(&body).unwrap();
        c.bench_function(&format!("{name}_translate_serialize_only"), |b| {
            b.iter(|| {
                let chat = to_chat_request(black_box(&req), "gpt-4o", &opts).unwrap();
                black_box(serde_json::to_vec(&chat).unwrap())
            })
        });
        // The Anthropic passthrough: parse and validate, then patch
        // `model` and `max_tokens` into the client's bytes.
        c.bench_function(&format!("{name}_passthrough_parse_patch"), |b| {
            b.iter(|| {
                let _req = parse_messages_request(black_box(&body)).unwrap();
                black_box(rewrite_body(&body, "claude-sonnet-4-5", Some(8192)).unwrap())
            })
        });
        c.bench_function(&format!("{name}_passthrough_patch_only"), |b| {
            b.iter(|| {
                black_box(rewrite_body(black_box(&body), "claude-sonnet-4-5", Some(8192)).unwrap())
            })
        });
    }
}

fn stream(c: &mut Criterion) {
    // A 200-chunk text answer as an OpenAI server streams it.
    let mut upstream = String::new();
    for i in 0..200 {
        upstream.push_str(&format!(
            "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    upstream.push_str("data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
    let pieces: Vec<&[u8]> = upstream.as_bytes().chunks(512).collect();
    c.bench_function("stream_200_chunks_to_anthropic_events", |b| {
        b.iter(|| {
            let mut t = StreamTranslator::new("claude-opus-4-8");
            let mut out = BytesMut::new();
            for p in &pieces {
                t.feed(p, &mut out).unwrap();
            }
            black_box(out.len())
        })
    });
}

/// One 1 MiB event (SSE) or line (NDJSON), fed in 1-byte and 1 KiB
/// chunks: linear parsers cost about the same per byte either way.
fn parsers(c: &mut Criterion) {
    use lynkr::protocol::sse::SseParser;
    use lynkr::util::lines::LineReader;
    let event = format!("data: {}\n\n", "x".repeat(1 << 20));
    let line = format!("{}\n", "y".repeat(1 << 20));
    let mut g = c.benchmark_group("parsers_1mib");
    g.sample_size(10);
    for chunk in [1usize, 1024] {
        g.bench_function(format!("sse_event_in_{chunk}_byte_chunks"), |b| {
            b.iter(|| {
                let mut p = SseParser::new();
                let mut out = Vec::new();
                for piece in event.as_bytes().chunks(chunk) {
                    p.feed(piece, &mut out).unwrap();
                }
                black_box(out.len())
            })
        });
        g.bench_function(format!("ndjson_line_in_{chunk}_byte_chunks"), |b| {
            b.iter(|| {
                let mut r = LineReader::new();
                let mut n = 0;
                for piece in line.as_bytes().chunks(chunk) {
                    r.push(piece);
                    while r.next_line().is_some() {
                        n += 1;
                    }
                }
                black_box(n)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, request, stream, parsers);
criterion_main!(benches);
