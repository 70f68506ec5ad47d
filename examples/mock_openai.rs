//! A minimal, fast OpenAI Chat Completions server for the load benchmarks
//! (`scripts/loadbench.sh`, `scripts/stream-rss.sh`): HTTP/1.1 keep-alive, a
//! fixed completion for every request, or, for `"stream": true`, a chunked
//! SSE stream of `MOCK_STREAM_CHUNKS` chunks (default 20) sent
//! `MOCK_STREAM_GAP_MS` apart (default 0). A `POST /v1/messages` is
//! answered with a fixed Anthropic message (JSON only), so the benchmark
//! can measure the Anthropic passthrough against the same server.
//! `cargo run --release --example mock_openai -- 127.0.0.1:19100`

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ANTHROPIC_BODY: &str = r#"{"id":"msg_bench","type":"message","role":"assistant","model":"claude-bench","content":[{"type":"text","text":"Hello from the benchmark upstream."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":7}}"#;

const BODY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"gpt-bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the benchmark upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:19100".into());
    let listener = TcpListener::bind(&addr).await.expect("bind");
    let json = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let (response, anthropic_response) = (json(BODY), json(ANTHROPIC_BODY));
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let chunks = env("MOCK_STREAM_CHUNKS", 20);
    let gap = std::time::Duration::from_millis(env("MOCK_STREAM_GAP_MS", 0));
    loop {
        let (mut sock, _) = listener.accept().await.expect("accept");
        sock.set_nodelay(true).ok();
        let (response, anthropic_response) = (response.clone(), anthropic_response.clone());
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(8192);
            let mut tmp = [0u8; 8192];
            loop {
                // Read one request: headers, then content-length bytes.
                let (head_end, len, anthropic) = loop {
                    if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..pos]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (pos + 4, len, head.starts_with("post /v1/messages "));
                    }
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                };
                while buf.len() < head_end + len {
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let stream = buf[head_end..head_end + len]
                    .windows(13)
                    .any(|w| w == b"\"stream\":true");
                buf.drain(..head_end + len);
                if anthropic {
                    if sock.write_all(anthropic_response.as_bytes()).await.is_err() {
                        return;
                    }
                } else if stream {
                    if write_stream(&mut sock, chunks, gap).await.is_err() {
                        return;
                    }
                } else if sock.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// A chunked SSE answer: `chunks` content deltas, then the finish, usage
/// and `[DONE]`. Without a gap it is one write, as an instant upstream
/// that had the whole answer ready would send it.
async fn write_stream(
    sock: &mut tokio::net::TcpStream,
    chunks: u64,
    gap: std::time::Duration,
) -> std::io::Result<()> {
    let chunk = |data: &str| {
        let event = format!("data: {data}\n\n");
        format!("{:x}\r\n{event}\r\n", event.len())
    };
    let mut pending = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    for i in 0..chunks {
        if !gap.is_zero() {
            sock.write_all(pending.as_bytes()).await?;
            pending.clear();
            tokio::time::sleep(gap).await;
        }
        pending += &chunk(&format!(
            r#"{{"id":"c","object":"chat.completion.chunk","choices":[{{"index":0,"delta":{{"content":"word{i} "}},"finish_reason":null}}]}}"#
        ));
    }
    pending += &chunk(
        r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
    );
    pending += &chunk(
        r#"{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":20,"total_tokens":32}}"#,
    );
    pending += &chunk("[DONE]");
    pending += "0\r\n\r\n";
    sock.write_all(pending.as_bytes()).await
}
