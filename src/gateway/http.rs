//! The HTTP server side: Pingora's `HttpServerApp`, one instance per
//! listener kind (the API listeners, the admin listener), so a request is
//! known to be an admin request by the socket that accepted it.
//!
//! Lynkr answers every request itself, so it uses Pingora's HTTP server
//! directly rather than its proxy: the connection loop is ours, which is
//! what lets it
//! - time out slow request headers (`timeouts.client_read_ms`) and keep
//!   idle connections `timeouts.client_idle_ms`;
//! - answer a malformed or oversized request head with an Anthropic error;
//! - serve pipelined requests in order on one kept-alive connection;
//! - on shutdown, keep serving kept-alive connections through the drain
//!   window with `Connection: close` instead of dropping them while their
//!   client may be sending (see `drain.rs`).

use super::{Gateway, RequestCtx};
use crate::protocol::error::ApiError;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_error::ErrorType;
use pingora_http::ResponseHeader;
use std::sync::Arc;
use std::time::Duration;

/// How long a connection answered before its body was read keeps reading
/// (and dropping) that body before it closes.
const LINGER: Duration = Duration::from_secs(2);

/// Longest request target (path and query) accepted.
pub const MAX_URI_BYTES: usize = 8 * 1024;

pub struct LynkrApp {
    pub gateway: Arc<Gateway>,
    /// The admin listener serves health, metrics and the admin API.
    pub admin: bool,
}

/// What reading a request head gave.
enum Head {
    Request,
    /// The client closed, stayed idle too long, or the drain window ended.
    Gone,
    /// A request head that cannot be served: answered, then closed.
    Bad(ApiError),
}

#[async_trait]
impl HttpServerApp for LynkrApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let gw = &*self.gateway;
        session.set_pipelining_enabled(true);
        match read_head(gw, &mut session, shutdown).await {
            Head::Request => {}
            Head::Gone => return None,
            Head::Bad(e) => {
                answer_bad_head(&mut session, &e).await;
                return None;
            }
        }
        let _active = gw.drain.enter();
        if gw.drain.shutting_down() {
            // Served, then closed: the client reconnects to the new process.
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(gw.client_idle.as_secs().max(1)));
        }
        // `body::read` bounds the whole body by client_read_ms; Pingora's
        // per-read timeout must not fire first.
        session.set_read_timeout(Some(gw.client_read + LINGER));
        let mut ctx = RequestCtx::default();
        gw.serve(&mut session, &mut ctx, self.admin).await;
        gw.log(&session, &mut ctx);
        drop(ctx);
        if !session.is_body_done() {
            // Answered before its body was read (413, 529, 408): read and
            // drop what the client still sends for a moment, so closing
            // does not reset the connection before it reads the answer.
            let _ = tokio::time::timeout(LINGER, session.drain_request_body()).await;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(reusable) => reusable.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(e) => {
                tracing::debug!(error = %e, "client connection not reusable");
                None
            }
        }
    }
}

/// Read the next request head. A connection idle when shutdown begins gets
/// the drain window to start a request; one that started must finish its
/// head within `timeouts.client_read_ms` (after the keep-alive wait).
async fn read_head(gw: &Gateway, session: &mut ServerSession, shutdown: &ShutdownWatch) -> Head {
    let limit = gw.client_idle + gw.client_read;
    let result = {
        let read = tokio::time::timeout(limit, session.read_request());
        tokio::pin!(read);
        tokio::select! {
            biased;
            r = &mut read => r,
            _ = shutdown_broadcast(shutdown.clone()) => {
                gw.drain.begin();
                let end = gw.drain.window_end().unwrap_or_else(std::time::Instant::now);
                match tokio::time::timeout_at(end.into(), &mut read).await {
                    Ok(r) => r,
                    Err(_) => return Head::Gone,
                }
            }
        }
    };
    match result {
        Err(_) => Head::Gone,
        Ok(Ok(true)) => {
            let uri = session.req_header().raw_path().len();
            if uri > MAX_URI_BYTES {
                return Head::Bad(ApiError::invalid(format!(
                    "url: the request target is {uri} bytes, more than the {MAX_URI_BYTES} accepted"
                )));
            }
            Head::Request
        }
        Ok(Ok(false)) => Head::Gone,
        // Pingora's parser refused it (its context may quote the whole
        // head, so it goes to the debug log only).
        Ok(Err(e)) if matches!(e.etype(), ErrorType::InvalidHTTPHeader) => {
            tracing::debug!(error = %e, "invalid request head");
            Head::Bad(ApiError::invalid(format!(
                "request head: not a valid HTTP/1.1 request head (a malformed line, or a request target over {MAX_URI_BYTES} bytes)"
            )))
        }
        Ok(Err(_)) => Head::Gone,
    }
}

/// Resolves when Pingora broadcasts shutdown (at once if it has).
async fn shutdown_broadcast(mut shutdown: ShutdownWatch) {
    let _ = shutdown.wait_for(|s| *s).await.is_ok();
}

/// An Anthropic-shaped error for a request head that cannot be served;
/// the connection is closed after it.
async fn answer_bad_head(session: &mut ServerSession, e: &ApiError) {
    let body = Bytes::from(e.body());
    let head = || -> pingora_error::Result<ResponseHeader> {
        let mut h = ResponseHeader::build(e.status, Some(4))?;
        h.insert_header("content-type", "application/json")?;
        h.insert_header("content-length", body.len().to_string())?;
        h.insert_header("connection", "close")?;
        Ok(h)
    };
    if let Ok(h) = head() {
        let write = session.write_error_response(h, body.clone());
        let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
    }
    tracing::info!(
        target: "lynkr::access",
        status = e.status,
        error = %e.message,
        "request"
    );
}
