//! The upstream exchange through Pingora's HTTP connector: pooled
//! keep-alive connections, rustls TLS, timeouts from config, any body size.
//!
//! Pingora's own proxy loop is not used for this: it would have to pre-read
//! the body into its fixed 64 KiB retry buffer, which hangs on Claude Code's
//! 80-130 KB requests (see DESIGN.md).

use crate::config::TimeoutsConfig;
use crate::protocol::error::{upstream_error_message, ApiError, ErrorKind};
use bytes::Bytes;
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::protocols::tls::CaType;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};
use pingora_http::RequestHeader;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a resolved provider address is reused before resolving again.
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
    /// The value of the `Host` header.
    pub fn authority(&self) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
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
    connector: Connector,
    connect: Duration,
    first_byte: Duration,
    read: Duration,
    write: Duration,
    pool_idle: Duration,
    dns: Mutex<HashMap<(String, u16), (Instant, SocketAddr)>>,
}

/// A request in flight: the response header has arrived.
pub struct Exchange {
    session: HttpSession,
    peer: HttpPeer,
    pub status: u16,
}

impl UpstreamClient {
    pub fn new(t: &TimeoutsConfig) -> Self {
        UpstreamClient {
            connector: Connector::new(None),
            connect: Duration::from_millis(t.connect_ms),
            first_byte: Duration::from_millis(t.first_byte_ms),
            read: Duration::from_millis(t.read_ms),
            write: Duration::from_millis(t.write_ms),
            pool_idle: Duration::from_millis(t.pool_idle_ms),
            dns: Mutex::new(HashMap::new()),
        }
    }

    /// POST the request and wait for the response header. `label` names
    /// the upstream in error messages (the provider's name).
    pub async fn send(&self, out: &Outgoing<'_>, label: &str) -> Result<Exchange, ApiError> {
        let peer = self.peer(out.endpoint, out.ca).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (mut session, reused) = self
                .connector
                .get_http_session(&peer)
                .await
                .map_err(|e| transport_error(&e, label))?;
            let header = request_header(out)?;
            session.set_write_timeout(Some(self.write));
            session.set_read_timeout(Some(self.first_byte));
            match exchange(&mut session, header, out.body.clone()).await {
                Ok(status) => {
                    session.set_read_timeout(Some(self.read));
                    return Ok(Exchange {
                        session,
                        peer,
                        status,
                    });
                }
                // A pooled connection the server had already closed: nothing
                // was processed, so the request is sent again on another.
                Err(e) if reused && attempt < STALE_CONNECTION_ATTEMPTS && is_stale(&e) => {
                    tracing::debug!(upstream = %label, error = %e, "stale pooled connection, retrying");
                    session.shutdown().await;
                }
                Err(e) => {
                    session.shutdown().await;
                    return Err(transport_error(&e, label));
                }
            }
        }
    }

    async fn peer(
        &self,
        ep: &Endpoint,
        ca: Option<&std::sync::Arc<CaType>>,
    ) -> Result<HttpPeer, ApiError> {
        let addr = self.resolve(&ep.host, ep.port).await?;
        let mut peer = http_peer(addr, ep, ca.cloned(), self.connect, self.first_byte);
        peer.options.write_timeout = Some(self.write);
        peer.options.idle_timeout = Some(self.pool_idle);
        Ok(peer)
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
    pub async fn finish(&self, mut ex: Exchange) {
        if ex.session.response_done() {
            self.connector
                .release_http_session(ex.session, &ex.peer, Some(self.pool_idle))
                .await;
        } else {
            ex.session.shutdown().await;
        }
    }
}

impl Exchange {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.session
            .response_header()
            .and_then(|h| h.headers.get(name))
            .and_then(|v| v.to_str().ok())
    }

    /// The next piece of the body; `None` at its end.
    pub async fn read(&mut self, provider: &str) -> Result<Option<Bytes>, ApiError> {
        self.session
            .read_response_body()
            .await
            .map_err(|e| transport_error(&e, provider))
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
        let mut err = ApiError::from_upstream_status(self.status, upstream_error_message(&body));
        err.retry_after = self
            .header("retry-after")
            .and_then(|v| v.trim().parse().ok());
        (err, self)
    }

    /// Abandon the request (client gone, stream broken): close the connection.
    pub async fn abort(mut self) {
        self.session.shutdown().await;
    }
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

async fn exchange(
    session: &mut HttpSession,
    header: RequestHeader,
    body: Bytes,
) -> pingora_error::Result<u16> {
    session.write_request_header(Box::new(header)).await?;
    session.write_request_body(body, true).await?;
    session.finish_request_body().await?;
    session.read_response_header().await?;
    Ok(session
        .response_header()
        .map(|h| h.status.as_u16())
        .unwrap_or(502))
}

fn request_header(out: &Outgoing<'_>) -> Result<RequestHeader, ApiError> {
    let build = || -> pingora_error::Result<RequestHeader> {
        let mut h = RequestHeader::build("POST", out.endpoint.path.as_bytes(), Some(8))?;
        h.insert_header("host", out.endpoint.authority())?;
        h.insert_header("content-type", "application/json")?;
        h.insert_header("content-length", out.body.len().to_string())?;
        // No accept-encoding: the body is parsed (SSE) as it arrives.
        h.insert_header(
            "accept",
            if out.stream {
                "text/event-stream"
            } else {
                "application/json"
            },
        )?;
        h.insert_header("user-agent", concat!("lynkr/", env!("CARGO_PKG_VERSION")))?;
        h.insert_header("x-request-id", out.request_id)?;
        for (name, value) in out.headers {
            h.insert_header(*name, value.as_str())?;
        }
        for (name, value) in out.extra_headers {
            h.insert_header(name.clone(), value.as_str())?;
        }
        Ok(h)
    };
    build().map_err(|e| ApiError::api(format!("cannot build the upstream request: {e}")))
}

fn is_stale(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectionClosed
            | ErrorType::ReadError
            | ErrorType::WriteError
            | ErrorType::H1Error
    )
}

/// Connection-level failures: timeouts as 504, the rest as 502, all
/// `api_error`, so Claude Code's own retry takes over.
fn transport_error(e: &Error, provider: &str) -> ApiError {
    let (status, what) = match e.etype() {
        ErrorType::ConnectTimedout => (504, "upstream connect timed out"),
        ErrorType::ReadTimedout => (504, "upstream read timed out"),
        ErrorType::WriteTimedout => (504, "upstream write timed out"),
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError => (502, "upstream connect error"),
        _ => (502, "upstream connection error"),
    };
    let mut err =
        ApiError::new(ErrorKind::ApiError, format!("{what} ({provider}): {e}")).with_status(status);
    err.origin = crate::protocol::error::Origin::Transport;
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::error::Origin;

    /// Regression: an unresolvable host came back as the gateway's own
    /// error, so the route no longer fell back to its next target.
    #[tokio::test]
    async fn an_unresolvable_host_is_a_transport_failure() {
        let client = UpstreamClient::new(&TimeoutsConfig::default());
        let e = client.resolve("nothing.invalid", 443).await.unwrap_err();
        assert_eq!((e.status, e.origin), (502, Origin::Transport));
    }
}
