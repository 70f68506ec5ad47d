//! What the integration tests run against: the built `lynkr` binary as a
//! child process, and a mock OpenAI upstream on 127.0.0.1 that speaks the
//! Chat Completions wire format (JSON and chunked SSE) and can misbehave.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

// ---- the gateway ---------------------------------------------------------------

pub struct Gateway {
    child: Child,
    pub port: u16,
    pub base: String,
    pub dir: PathBuf,
    /// The configuration file it runs with (an upgrade reuses it).
    config: Option<PathBuf>,
}

impl Gateway {
    /// Start `lynkr -c <file>` with `providers_and_models` (YAML) added to a
    /// config that listens on a free port; waits until it answers.
    pub fn start(providers_and_models: &str, env: &[(&str, &str)]) -> Gateway {
        let shutdown = "  grace_period_seconds: 1\n  graceful_shutdown_timeout_seconds: 1\n";
        Self::start_with_server(shutdown, providers_and_models, env)
    }

    /// As `start`, with more `server:` settings (two-space indented lines).
    pub fn start_with_server(
        server: &str,
        providers_and_models: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let port = free_port();
        let dir = scratch_dir("gw");
        // Short timeouts for tests, unless the test brings its own.
        let timeouts = if providers_and_models.contains("timeouts:") {
            ""
        } else {
            "timeouts:\n  connect_ms: 2000\n  first_byte_ms: 10000\n  read_ms: 10000\n"
        };
        let config = format!(
            "server:\n  listen: [\"127.0.0.1:{port}\"]\n  threads: 2\n  pid_file: {d}/lynkr.pid\n  upgrade_sock: {d}/upgrade.sock\n{server}{timeouts}{providers_and_models}",
            d = dir.display()
        );
        let path = dir.join("lynkr.yaml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(lynkr_bin());
        cmd.arg("-c").arg(&path);
        let mut gw = Self::spawn(cmd, port, dir, env);
        gw.config = Some(path);
        gw
    }

    /// Start `lynkr` with no config file, only the environment.
    pub fn start_env_only(env: &[(&str, &str)], port: u16) -> Gateway {
        let cmd = Command::new(lynkr_bin());
        Self::spawn(cmd, port, scratch_dir("gw-env"), env)
    }

    fn spawn(mut cmd: Command, port: u16, dir: PathBuf, env: &[(&str, &str)]) -> Gateway {
        cmd.env("LYNKR_LOG_FORMAT", "json").env("LOG_LEVEL", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = std::fs::File::create(dir.join("lynkr.log")).unwrap();
        cmd.stdout(Stdio::null()).stderr(log);
        let child = cmd.spawn().expect("spawn lynkr");
        let gw = Gateway {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            config: None,
        };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("lynkr did not start; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lynkr.log")).unwrap_or_default()
    }

    /// True once the log contains `needle` (the access line is written
    /// just after the response, so tests wait for it a moment).
    pub fn log_contains(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Start a new binary with `-u` on this one's config: it waits for the
    /// listening sockets this process hands over on SIGQUIT. Logs to its own dir.
    pub fn start_upgrade(&self, env: &[(&str, &str)]) -> Gateway {
        let config = self.config_path();
        let mut cmd = Command::new(lynkr_bin());
        cmd.arg("-u").arg("-c").arg(&config);
        let mut gw = Self::spawn(cmd, self.port, scratch_dir("gw-upgrade"), env);
        gw.config = Some(config);
        gw
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| self.dir.join("lynkr.yaml"))
    }

    /// Send a signal (`-TERM`, `-QUIT`) to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(sig)
            .arg(self.pid().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits up to `timeout` for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary under test: this build's, or `LYNKR_TEST_BIN` (to run the
/// suite against another build, e.g. to see a regression test fail on the
/// code before its fix).
pub fn lynkr_bin() -> PathBuf {
    std::env::var_os("LYNKR_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lynkr")))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "lynkr-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Config text for one OpenAI-compatible provider at `addr`, default route.
pub fn openai_provider(addr: SocketAddr) -> String {
    format!(
        "providers:\n  mock:\n    preset: openai\n    base_url: http://{addr}/v1\n    api_key_env: MOCK_OPENAI_KEY\n    model: gpt-mock\n\
         models:\n  default: mock\n  routes:\n    - {{match: \"claude-*haiku*\", target: \"mock:gpt-mini\"}}\n"
    )
}

pub const MOCK_KEY: (&str, &str) = ("MOCK_OPENAI_KEY", "sk-test-key");

// ---- the mock upstream -----------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    /// The body as received (for signature checks).
    pub raw: Vec<u8>,
    /// Which accepted connection carried it (0, 1, ...).
    pub connection: usize,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub enum Reply {
    Json {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// Chunked `text/event-stream`: each piece is written (and flushed) as it
    /// comes, `delay` apart; the stream then ends properly.
    Sse {
        pieces: Vec<String>,
        delay: Duration,
    },
    /// As `Sse`, but the connection is dropped after the pieces, without
    /// the terminating chunk.
    SseThenClose { pieces: Vec<String> },
    /// Chunked `application/x-ndjson` (Ollama's streaming).
    Ndjson { lines: Vec<String> },
    /// Chunked binary pieces (Bedrock's event stream).
    Binary {
        content_type: String,
        pieces: Vec<Vec<u8>>,
    },
    /// The pieces, then silence for `stall`, then a proper end.
    SseStall {
        pieces: Vec<String>,
        stall: Duration,
    },
    /// Wait, then answer.
    Delayed { delay: Duration, reply: Box<Reply> },
    /// Close the connection without answering.
    Close,
}

pub type Script = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

pub struct MockUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub connections: Arc<AtomicUsize>,
    /// Streams cut short because the gateway closed the connection.
    pub aborted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    pub async fn start(
        script: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> MockUpstream {
        Self::start_inner(script, None).await
    }

    /// The same mock behind TLS, with the given server configuration.
    pub async fn start_tls(
        script: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
        tls: Arc<tokio_rustls::rustls::ServerConfig>,
    ) -> MockUpstream {
        Self::start_inner(script, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_inner(
        script: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let aborted = Arc::new(AtomicUsize::new(0));
        let script: Script = Arc::new(script);
        let (reqs, conns, ab) = (requests.clone(), connections.clone(), aborted.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                stream.set_nodelay(true).unwrap();
                let n = conns.fetch_add(1, Ordering::SeqCst);
                let (script, reqs, ab) = (script.clone(), reqs.clone(), ab.clone());
                match &tls {
                    None => {
                        tokio::spawn(serve(stream, n, script, reqs, ab));
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            // A failed handshake (an untrusted client) just closes.
                            if let Ok(s) = acceptor.accept(stream).await {
                                serve(s, n, script, reqs, ab).await;
                            }
                        });
                    }
                }
            }
        });
        MockUpstream {
            addr,
            requests,
            connections,
            aborted,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests()
            .last()
            .cloned()
            .expect("the mock received a request")
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    connection: usize,
    script: Script,
    log: Arc<Mutex<Vec<Recorded>>>,
    aborted: Arc<AtomicUsize>,
) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let rec = Recorded {
            method,
            path,
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            raw: body,
            connection,
        };
        log.lock().unwrap().push(rec.clone());
        let stream = reader.get_mut();
        let mut reply = script(&rec);
        if let Reply::Delayed {
            delay,
            reply: inner,
        } = reply
        {
            tokio::time::sleep(delay).await;
            reply = *inner;
        }
        match reply {
            Reply::Delayed { .. } => unreachable!("unwrapped above"),
            Reply::SseStall { pieces, stall } => {
                if write_sse(stream, &pieces, Duration::ZERO).await.is_err() {
                    return;
                }
                tokio::time::sleep(stall).await;
                if stream.write_all(b"0\r\n\r\n").await.is_err() {
                    return;
                }
            }
            Reply::Json {
                status,
                body,
                headers,
            } => {
                let mut head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                if stream.write_all(head.as_bytes()).await.is_err()
                    || stream.write_all(body.as_bytes()).await.is_err()
                {
                    return;
                }
            }
            Reply::Binary {
                content_type,
                pieces,
            } => {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n");
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for piece in pieces {
                    let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
                    chunk.extend_from_slice(&piece);
                    chunk.extend_from_slice(b"\r\n");
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                if stream.write_all(b"0\r\n\r\n").await.is_err() {
                    return;
                }
            }
            Reply::Ndjson { lines } => {
                if write_chunked(stream, "application/x-ndjson", &lines, Duration::ZERO)
                    .await
                    .is_err()
                    || stream.write_all(b"0\r\n\r\n").await.is_err()
                {
                    return;
                }
            }
            Reply::Sse { pieces, delay } => {
                if write_sse(stream, &pieces, delay).await.is_err()
                    || stream.write_all(b"0\r\n\r\n").await.is_err()
                {
                    aborted.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            Reply::SseThenClose { pieces } => {
                let _ = write_sse(stream, &pieces, Duration::ZERO).await;
                let _ = stream.shutdown().await;
                return;
            }
            Reply::Close => return,
        }
    }
}

async fn write_sse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    pieces: &[String],
    delay: Duration,
) -> std::io::Result<()> {
    write_chunked(stream, "text/event-stream", pieces, delay).await
}

async fn write_chunked<S: AsyncWrite + Unpin>(
    stream: &mut S,
    content_type: &str,
    pieces: &[String],
    delay: Duration,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    for piece in pieces {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        stream
            .write_all(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes())
            .await?;
        stream.flush().await?;
    }
    Ok(())
}

// ---- requests and answers shared by the tests ------------------------------------------

/// POST `body` to the gateway's `/v1/messages`.
pub async fn post(gw: &Gateway, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/messages"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A plain successful completion.
pub fn ok_json() -> Reply {
    Reply::Json {
        status: 200,
        body: completion_json("fine", "stop", Value::Null),
        headers: vec![],
    }
}

/// An OpenAI-shaped error answer.
pub fn error_reply(code: u16, message: &str) -> Reply {
    Reply::Json {
        status: code,
        body: json!({"error": {"message": message}}).to_string(),
        headers: vec![],
    }
}

/// A gateway whose default route is an anthropic-kind provider at a mock
/// answering every request with one message JSON.
pub async fn passthrough_gateway(text: &str, provider: &str) -> (MockUpstream, Gateway) {
    let body = anthropic_message(text);
    let mock = MockUpstream::start(move |_| Reply::Json {
        status: 200,
        body: body.clone(),
        headers: vec![],
    })
    .await;
    let gw = Gateway::start(
        &format!(
            "providers:\n  a: {{kind: anthropic, base_url: 'http://{}'{provider}}}\nmodels: {{default: a}}\n",
            mock.addr
        ),
        &[],
    );
    (mock, gw)
}

// ---- OpenAI wire-format builders ---------------------------------------------------

pub fn completion_json(content: &str, finish: &str, tool_calls: Value) -> String {
    let mut message = json!({"role": "assistant", "content": content});
    if tool_calls.is_array() {
        message["tool_calls"] = tool_calls;
    }
    json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": "gpt-mock",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                  "prompt_tokens_details": {"cached_tokens": 4}},
    })
    .to_string()
}

pub fn chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": "gpt-mock",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

pub fn usage_chunk(prompt: u64, completion: u64) -> String {
    let c = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}});
    format!("data: {c}\n\n")
}

pub const DONE: &str = "data: [DONE]\n\n";

/// A complete streamed text answer.
pub fn text_stream(pieces: &[&str]) -> Vec<String> {
    let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    out.extend(pieces.iter().map(|p| chunk(json!({"content": p}), None)));
    out.push(chunk(json!({}), Some("stop")));
    out.push(usage_chunk(21, pieces.len() as u64));
    out.push(DONE.to_string());
    out
}

/// A streamed answer: optional text, then tool calls `(id, name, arguments)`,
/// each call's arguments split into `split`-byte deltas.
pub fn tool_stream(text: &str, calls: &[(&str, &str, &str)], split: usize) -> Vec<String> {
    let mut out = vec![chunk(json!({"role": "assistant"}), None)];
    if !text.is_empty() {
        out.push(chunk(json!({"content": text}), None));
    }
    for (index, (id, name, args)) in calls.iter().enumerate() {
        out.push(chunk(
            json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
            None,
        ));
        for piece in args.as_bytes().chunks(split) {
            let piece = std::str::from_utf8(piece).unwrap();
            out.push(chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                None,
            ));
        }
    }
    out.push(chunk(json!({}), Some("tool_calls")));
    out.push(usage_chunk(30, 12));
    out.push(DONE.to_string());
    out
}

/// Parse an SSE body into `(event, data)` pairs.
pub fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = String::new();
            for line in e.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            (name, serde_json::from_str(&data).unwrap_or(Value::Null))
        })
        .collect()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// GET `url` and parse its JSON body.
pub async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// GET `url` and read its body as text.
pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub fn simple_request(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": stream,
        "messages": [{"role": "user", "content": "Say hello"}],
    })
}

/// The repository root (for fixtures and helper scripts).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture_body(prefix: &str) -> Vec<u8> {
    lynkr::test_support::fixture(prefix)
}

// ---- TLS -----------------------------------------------------------------------------

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it, made
/// with the `openssl` command. Returns (CA PEM path, server TLS config).
pub fn test_pki(dir: &std::path::Path) -> (PathBuf, Arc<tokio_rustls::rustls::ServerConfig>) {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=lynkr test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    let certs = rustls_pemfile_certs(&dir.join("server.pem"));
    let key_pem = std::fs::read(dir.join("server.key")).unwrap();
    let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem)
        .expect("server key");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    (dir.join("ca.pem"), Arc::new(config))
}

fn rustls_pemfile_certs(
    path: &std::path::Path,
) -> Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    tokio_rustls::rustls::pki_types::CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(|c| c.unwrap())
        .collect()
}

// ---- Anthropic and Ollama wire-format builders -----------------------------------------

/// An Anthropic SSE stream: optional text, then tool calls `(id, name, input JSON)`.
pub fn anthropic_stream(text: &str, calls: &[(&str, &str, &str)]) -> Vec<String> {
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut out = vec![ev(
        "message_start",
        json!({"type": "message_start", "message": {
        "id": "msg_mock", "type": "message", "role": "assistant", "model": "claude-upstream", "content": [],
        "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}),
    )];
    let mut index = 0;
    if !text.is_empty() {
        out.push(ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
        out.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})));
        out.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        index = 1;
    }
    for (id, name, input) in calls {
        out.push(ev("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}})));
        out.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": input}})));
        out.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    let stop = if calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    };
    out.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 9}})));
    out.push(ev("message_stop", json!({"type": "message_stop"})));
    out
}

pub fn anthropic_message(text: &str) -> String {
    json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": "claude-upstream",
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 25, "output_tokens": 9}})
    .to_string()
}

/// Ollama NDJSON lines: text in pieces, then tool calls `(name, arguments object)`, then done.
pub fn ollama_stream(text: &str, calls: &[(&str, Value)]) -> Vec<String> {
    let mut out: Vec<String> = text
        .split_inclusive(' ')
        .map(|w| {
            format!(
                "{}\n",
                json!({"model": "q", "message": {"role": "assistant", "content": w}, "done": false})
            )
        })
        .collect();
    if !calls.is_empty() {
        let tc: Vec<Value> = calls
            .iter()
            .map(|(n, a)| json!({"function": {"name": n, "arguments": a}}))
            .collect();
        out.push(format!("{}\n", json!({"model": "q", "message": {"role": "assistant", "content": "", "tool_calls": tc}, "done": false})));
    }
    out.push(format!(
        "{}\n",
        json!({"model": "q", "message": {"role": "assistant", "content": ""}, "done": true,
        "done_reason": "stop", "prompt_eval_count": 40, "eval_count": 10})
    ));
    out
}

pub fn ollama_message(text: &str) -> String {
    json!({"model": "q", "message": {"role": "assistant", "content": text}, "done": true, "done_reason": "stop",
        "prompt_eval_count": 40, "eval_count": 10})
    .to_string()
}

// ---- a raw HTTP/1.1 client ----------------------------------------------------------------

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The server said this connection ends after this response.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// One client connection, read and written by hand: what a test needs to
/// see of framing (chunked or not), keep-alive and pipelining.
pub struct RawConn {
    stream: BufReader<tokio::net::TcpStream>,
}

impl RawConn {
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> std::io::Result<RawConn> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(RawConn {
            stream: BufReader::new(s),
        })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.get_mut().write_all(bytes).await
    }

    /// Read one response (Content-Length or chunked); an error if the
    /// connection closes before it is complete, or after 30 s.
    pub async fn read_response(&mut self) -> std::io::Result<RawResponse> {
        tokio::time::timeout(Duration::from_secs(30), self.read_response_inner())
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("no response within 30 s")))
    }

    async fn read_response_inner(&mut self) -> std::io::Result<RawResponse> {
        let closed = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed");
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            return Err(closed());
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(closed());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut resp = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                line.clear();
                if self.stream.read_line(&mut line).await? == 0 {
                    return Err(closed());
                }
                let size = usize::from_str_radix(line.trim(), 16)
                    .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
                let mut chunk = vec![0u8; size + 2];
                self.stream.read_exact(&mut chunk).await?;
                if size == 0 {
                    break;
                }
                resp.body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(len) = resp.header("content-length").and_then(|v| v.parse().ok()) {
            let mut body = vec![0u8; len];
            self.stream.read_exact(&mut body).await?;
            resp.body = body;
        } else {
            // Delimited by the close of the connection.
            self.stream.read_to_end(&mut resp.body).await?;
        }
        Ok(resp)
    }

    /// True when the server has closed the connection (reads EOF soon).
    pub async fn is_closed(&mut self, within: Duration) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(within, self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// A `POST /v1/messages` request as bytes.
pub fn raw_post(body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST /v1/messages HTTP/1.1\r\nhost: lynkr\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `/metrics/observability` once `ready` holds for it (or after 5 s). A
/// request is counted after its response is sent, so a client that has
/// its answer can be a moment ahead of the counters.
pub async fn summary_when(gw: &Gateway, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let summary = get_json(&gw.url("/metrics/observability")).await;
        if ready(&summary) || Instant::now() > deadline {
            return summary;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}
