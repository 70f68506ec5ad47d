//! A minimal, fast OpenAI Chat Completions server for the load benchmark
//! (`scripts/loadbench.sh`): HTTP/1.1 keep-alive, a fixed completion for
//! every request. `cargo run --release --example mock_openai -- 127.0.0.1:19100`

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BODY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"gpt-bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the benchmark upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:19100".into());
    let listener = TcpListener::bind(&addr).await.expect("bind");
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    loop {
        let (mut sock, _) = listener.accept().await.expect("accept");
        sock.set_nodelay(true).ok();
        let response = response.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(8192);
            let mut tmp = [0u8; 8192];
            loop {
                // Read one request: headers, then content-length bytes.
                let (head_end, len) = loop {
                    if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..pos]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (pos + 4, len);
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
                buf.drain(..head_end + len);
                if sock.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}
