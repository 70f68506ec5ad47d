//! The upstream exchange: HTTP/1.1 over pooled keep-alive connections,
//! rustls TLS through Pingora's connector, timeouts from config, any body
//! size.
//!
//! Pingora's proxy loop is not used: it would pre-read the body into its
//! fixed 64 KiB retry buffer, which hangs on Claude Code's 80-130 KB
//! requests (see DESIGN.md). Its HTTP client is not used either: it writes
//! the request head and body in separate system calls, spawns a task for
//! every connection it pools, and hands out a streamed body one upstream
//! chunk at a time (one client write per SSE event).

pub(crate) mod chunked;
mod conn;
pub(crate) mod h1;

use crate::config::TimeoutsConfig;
use crate::protocol::error::{upstream_error_message, ApiError, ErrorKind};
use bytes::{Bytes, BytesMut};
use conn::{Conn, IdlePool, PoolKey};
use h1::{Body, ResponseHead};
use pingora_core::connectors::http::Connector;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::tls::CaType;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};
use pingora_http::RequestHeader;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Socket read size for response heads and streamed bodies.
const READ_CHUNK: usize = 16 * 1024;
const DNS_TTL: Duration = Duration::from_secs(30);
/// Upper bound on an upstream error body kept for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Attempts when a pooled connection turns out to be closed by the server.
const STALE_CONNECTION_ATTEMPTS: usize = 3;

/// Where a request goes: scheme, host, port, and the request line's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query of the request line.
    pub path: String,
}

impl Endpoint {
    /// The scheme's own port: left out of the `Host` header.
    pub fn has_default_port(&self) -> bool {
        self.port == if self.tls { 443 } else { 80 }
    }

    /// The value of the `Host` header.
    pub fn authority(&self) -> String {
        if self.has_default_port() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn from_url(url: &url::Url) -> Result<Endpoint, String> {
        let host = url.host_str().ok_or("URL has no host")?;
        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        Ok(Endpoint {
            tls: url.scheme() == "https",
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: url.port_or_known_default().ok_or("URL has no port")?,
            path,
        })
    }
}

/// One request to send: where, with which headers and body. Built by a
/// provider; the client adds only the transport's own headers (host,
/// content-type, content-length, accept, user-agent, x-request-id).
pub struct Outgoing<'a> {
    pub endpoint: &'a Endpoint,
    /// CA certificates trusted for this endpoint; `None`: the system roots.
    pub ca: Option<&'a std::sync::Arc<CaType>>,
    /// Credentials and the provider kind's headers.
    pub headers: &'a [(&'static str, String)],
    /// Headers from the configuration (`providers.NAME.headers`).
    pub extra_headers: &'a [(String, String)],
    pub body: Bytes,
    /// Ask for an event stream rather than JSON.
    pub stream: bool,
    pub request_id: &'a str,
}

pub struct UpstreamClient {
    /// TLS connections (rustls, the provider's CAs); plain TCP is direct.
    tls: TransportConnector,
    pool: IdlePool,
    connect: Duration,
    first_byte: Duration,
    read: Duration,
    write: Duration,
    dns: Mutex<HashMap<(String, u16), (Instant, SocketAddr)>>,
}

/// A request in flight: the response header has arrived.
pub struct Exchange {
    conn: Conn,
    key: PoolKey,
    /// Bytes read from the connection and not yet handed out.
    buf: BytesMut,
    head: ResponseHead,
    body: Body,
    read_timeout: Duration,
}

/// What went wrong on the connection, before it becomes an `ApiError`.
#[derive(Debug)]
enum Fault {
    ConnectTimeout,
    Connect(String),
    WriteTimeout,
    ReadTimeout,
    /// Closed by the upstream; `true` when no byte of a response came.
    Closed(bool),
    Io(std::io::Error, bool),
    Protocol(String),
}

impl Fault {
    /// The request never reached a live server: a pooled connection the
    /// server had already closed. Sending it again on another is safe.
    fn is_stale(&self) -> bool {
        matches!(self, Fault::Closed(true) | Fault::Io(_, true))
    }

    /// Connection-level failures: timeouts as 504, the rest as 502, all
    /// `api_error`, so Claude Code's own retry takes over.
    fn into_api(self, provider: &str) -> ApiError {
        let (status, what, detail) = match self {
            Fault::ConnectTimeout => (504, "upstream connect timed out", String::new()),
            Fault::WriteTimeout => (504, "upstream write timed out", String::new()),
            Fault::ReadTimeout => (504, "upstream read timed out", String::new()),
            Fault::Connect(e) => (502, "upstream connect error", e),
            Fault::Closed(_) => (
                502,
                "upstream connection error",
                "the upstream closed the connection".into(),
            ),
            Fault::Io(e, _) => (502, "upstream connection error", e.to_string()),
            Fault::Protocol(e) => (502, "upstream connection error", e),
        };
        let message = if detail.is_empty() {
            format!("{what} ({provider})")
        } else {
            format!("{what} ({provider}): {detail}")
        };
        let mut err = ApiError::new(ErrorKind::ApiError, message).with_status(status);
        err.origin = crate::protocol::error::Origin::Transport;
        err
    }
}

impl UpstreamClient {
    pub fn new(t: &TimeoutsConfig) -> Self {
        UpstreamClient {
            tls: TransportConnector::new(None),
            pool: IdlePool::new(Duration::from_millis(t.pool_idle_ms)),
            connect: Duration::from_millis(t.connect_ms),
            first_byte: Duration::from_millis(t.first_byte_ms),
            read: Duration::from_millis(t.read_ms),
            write: Duration::from_millis(t.write_ms),
            dns: Mutex::new(HashMap::new()),
        }
    }

    /// POST the request and wait for the response header. `label` names
    /// the upstream in error messages (the provider's name).
    pub async fn send(&self, out: &Outgoing<'_>, label: &str) -> Result<Exchange, ApiError> {
        let ep = out.endpoint;
        let addr = self.resolve(&ep.host, ep.port).await?;
        let key = PoolKey::new(addr, ep.tls.then_some(ep.host.as_str()), out.ca);
        let head = h1::request_head(out)
            .map_err(|e| ApiError::api(format!("cannot build the upstream request: {e}")))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (mut conn, reused) = match self.pool.take(&key) {
                Some(conn) => (conn, true),
                None => (
                    self.open(addr, out).await.map_err(|f| f.into_api(label))?,
                    false,
                ),
            };
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            match self.exchange(&mut conn, &head, &out.body, &mut buf).await {
                Ok((head, body)) => {
                    return Ok(Exchange {
                        conn,
                        key,
                        buf,
                        head,
                        body,
                        read_timeout: self.read,
                    })
                }
                Err(f) if reused && attempt < STALE_CONNECTION_ATTEMPTS && f.is_stale() => {
                    tracing::debug!(upstream = %label, error = ?f, "stale pooled connection, retrying");
                }
                Err(f) => return Err(f.into_api(label)),
            }
        }
    }

    /// A new connection: TCP directly, TLS through Pingora's connector.
    async fn open(&self, addr: SocketAddr, out: &Outgoing<'_>) -> Result<Conn, Fault> {
        let ep = out.endpoint;
        if ep.tls {
            let peer = http_peer(addr, ep, out.ca.cloned(), self.connect, self.first_byte);
            return match self.tls.new_stream(&peer).await {
                Ok(stream) => Ok(Conn::Tls(stream)),
                Err(e) if e.etype() == &ErrorType::ConnectTimedout => Err(Fault::ConnectTimeout),
                Err(e) => Err(Fault::Connect(e.to_string())),
            };
        }
        let stream = tokio::time::timeout(self.connect, TcpStream::connect(addr))
            .await
            .map_err(|_| Fault::ConnectTimeout)?
            .map_err(|e| Fault::Connect(format!("{addr}: {e}")))?;
        // Requests go out whole; Nagle would only hold back their tail.
        let _ = stream.set_nodelay(true);
        Ok(Conn::Plain(stream))
    }

    /// Write the request (head and body in one write where the transport
    /// allows) and read the response head.
    async fn exchange(
        &self,
        conn: &mut Conn,
        head: &[u8],
        body: &[u8],
        buf: &mut BytesMut,
    ) -> Result<(ResponseHead, Body), Fault> {
        tokio::time::timeout(self.write, write_request(conn, head, body))
            .await
            .map_err(|_| Fault::WriteTimeout)?
            .map_err(|e| Fault::Io(e, true))?;
        let read_head = async {
            loop {
                if let Some(mut head) = h1::parse_response_head(buf).map_err(Fault::Protocol)? {
                    if head.is_interim() {
                        continue;
                    }
                    let body = head.body().map_err(Fault::Protocol)?;
                    return Ok((head, body));
                }
                buf.reserve(READ_CHUNK);
                let nothing_yet = buf.is_empty();
                match conn.read_buf(buf).await {
                    Ok(0) => return Err(Fault::Closed(nothing_yet)),
                    Ok(_) => {}
                    Err(e) => return Err(Fault::Io(e, nothing_yet)),
                }
            }
        };
        tokio::time::timeout(self.first_byte, read_head)
            .await
            .map_err(|_| Fault::ReadTimeout)?
    }

    /// Resolve without blocking a worker thread; cached for `DNS_TTL`.
    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, ApiError> {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = (host.to_string(), port);
        if let Some((at, addr)) = self.dns.lock().unwrap().get(&key) {
            if at.elapsed() < DNS_TTL {
                return Ok(*addr);
            }
        }
        let addr = lookup(host, port).await.ok_or_else(|| {
            ApiError::bad_upstream(format!("upstream connect error: cannot resolve {host}"))
        })?;
        self.dns.lock().unwrap().insert(key, (Instant::now(), addr));
        Ok(addr)
    }

    /// Return a fully read connection to the pool, or close it.
    pub fn finish(&self, ex: Exchange) {
        if ex.body.is_done() && ex.head.keep_alive && ex.buf.is_empty() {
            self.pool.put(ex.key, ex.conn);
        }
    }

    /// Idle upstream connections held (for tests).
    pub fn idle_connections(&self) -> usize {
        self.pool.idle_count()
    }

    /// Close idle connections past `timeouts.pool_idle_ms`; run every
    /// `sweep_interval` by the server's pool sweep service.
    pub fn sweep_idle(&self) -> usize {
        self.pool.sweep()
    }

    pub fn sweep_interval(&self) -> Duration {
        self.pool.sweep_interval()
    }
}

/// Write head and body, vectored: one `writev` for a plain connection.
async fn write_request(conn: &mut Conn, mut head: &[u8], mut body: &[u8]) -> std::io::Result<()> {
    while !head.is_empty() || !body.is_empty() {
        let slices = [std::io::IoSlice::new(head), std::io::IoSlice::new(body)];
        let n = conn.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        if n < head.len() {
            head = &head[n..];
        } else {
            body = &body[n - head.len()..];
            head = &[];
        }
    }
    conn.flush().await
}

impl Exchange {
    pub fn status(&self) -> u16 {
        self.head.status
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The body that has arrived since the last call (all of it, however
    /// the upstream framed it); `None` at its end. Cancel-safe: a read
    /// dropped in a `select!` loses nothing.
    pub async fn read(&mut self, provider: &str) -> Result<Option<Bytes>, ApiError> {
        loop {
            let fault = |f: Fault| f.into_api(provider);
            if let Some(data) = self
                .body
                .take(&mut self.buf)
                .map_err(|e| fault(Fault::Protocol(e)))?
            {
                return Ok(Some(data));
            }
            if self.body.is_done() {
                return Ok(None);
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(self.body.read_hint());
            }
            let read = tokio::time::timeout(self.read_timeout, self.conn.read_buf(&mut self.buf));
            match read.await {
                Err(_) => return Err(fault(Fault::ReadTimeout)),
                Ok(Err(e)) => return Err(fault(Fault::Io(e, false))),
                Ok(Ok(0)) => self.body.at_eof().map_err(|e| fault(Fault::Protocol(e)))?,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The whole body, up to `limit` bytes.
    pub async fn read_all(&mut self, provider: &str, limit: usize) -> Result<Vec<u8>, ApiError> {
        let mut body = Vec::new();
        while let Some(chunk) = self.read(provider).await? {
            if body.len() + chunk.len() > limit {
                return Err(ApiError::bad_upstream(format!(
                    "upstream {provider} response exceeds {limit} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The upstream's error as the client will see it: matching Anthropic
    /// type and status, the upstream's message text, its `Retry-After`.
    pub async fn into_error(mut self, provider: &str) -> (ApiError, Self) {
        let body = self
            .read_all(provider, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        let mut err = ApiError::from_upstream_status(self.status(), upstream_error_message(&body));
        err.retry_after = self
            .header("retry-after")
            .and_then(|v| v.trim().parse().ok());
        (err, self)
    }

    /// Abandon the request (client gone, stream broken): close the
    /// connection, which tells the upstream to stop generating.
    pub fn abort(self) {}
}

async fn lookup(host: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await
        .ok()
        .and_then(|mut it| it.next())
}

/// An HTTP/1.1 peer for `ep` at `addr`, with the provider's CAs.
fn http_peer(
    addr: SocketAddr,
    ep: &Endpoint,
    ca: Option<std::sync::Arc<CaType>>,
    connect: Duration,
    read: Duration,
) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, ep.tls, ep.host.clone());
    let o = &mut peer.options;
    o.connection_timeout = Some(connect);
    o.total_connection_timeout = Some(connect);
    o.read_timeout = Some(read);
    o.write_timeout = Some(read);
    o.alpn = ALPN::H1;
    o.ca = ca;
    peer
}

/// Health probe: a TCP connection to the endpoint opens within `timeout`.
pub async fn probe_tcp(ep: &Endpoint, timeout: Duration) -> Result<(), String> {
    let connect = async {
        let addr = lookup(&ep.host, ep.port)
            .await
            .ok_or_else(|| format!("cannot resolve {}", ep.host))?;
        tokio::net::TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("connect to {addr}: {e}"))
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| format!("no connection within {timeout:?}"))?
}

/// Health probe: `GET path` on the endpoint's host, with its key, answers
/// 2xx within `timeout`. A fresh connection each time, closed afterwards.
pub async fn probe_http(
    connector: &Connector,
    ep: &Endpoint,
    auth: Option<&(&'static str, String)>,
    path: &str,
    ca: Option<std::sync::Arc<CaType>>,
    timeout: Duration,
) -> Result<(), String> {
    let probe = async {
        let addr = lookup(&ep.host, ep.port)
            .await
            .ok_or_else(|| format!("cannot resolve {}", ep.host))?;
        let peer = http_peer(addr, ep, ca, timeout, timeout);
        let (mut session, _) = connector
            .get_http_session(&peer)
            .await
            .map_err(|e| e.to_string())?;
        let build = || -> pingora_error::Result<RequestHeader> {
            let mut h = RequestHeader::build("GET", path.as_bytes(), Some(4))?;
            h.insert_header("host", ep.authority())?;
            h.insert_header("user-agent", concat!("lynkr/", env!("CARGO_PKG_VERSION")))?;
            if let Some((name, value)) = auth {
                h.insert_header(*name, value.as_str())?;
            }
            Ok(h)
        };
        let header = build().map_err(|e| e.to_string())?;
        let status = async {
            session.write_request_header(Box::new(header)).await?;
            session.finish_request_body().await?;
            session.read_response_header().await?;
            Ok::<_, Box<Error>>(session.response_header().map_or(0, |h| h.status.as_u16()))
        }
        .await;
        session.shutdown().await;
        match status {
            Ok(s) if (200..300).contains(&s) => Ok(()),
            Ok(s) => Err(format!("GET {path} answered {s}")),
            Err(e) => Err(e.to_string()),
        }
    };
    tokio::time::timeout(timeout, probe)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

#[cfg(test)]
mod tests;
