//! Writing responses to the client.

use super::RequestCtx;
use crate::protocol::error::ApiError;
use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_http::ResponseHeader;

/// A complete response with a body. A client that is gone is not an error
/// worth more than the access log's status.
pub async fn send(
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    status: u16,
    content_type: &str,
    body: Bytes,
    retry_after: Option<u64>,
) {
    ctx.status = status;
    let head = || -> pingora_error::Result<ResponseHeader> {
        let mut h = ResponseHeader::build(status, Some(5))?;
        h.insert_header("content-type", content_type)?;
        h.insert_header("content-length", body.len().to_string())?;
        common_headers(&mut h, ctx)?;
        if let Some(secs) = retry_after {
            h.insert_header("retry-after", secs.to_string())?;
        }
        // Errors retrying cannot fix say so: the Anthropic SDK and Claude
        // Code otherwise retry 408, 409, 429 and every 5xx.
        if matches!(status, 400 | 401 | 402 | 403 | 404 | 413) {
            h.insert_header("x-should-retry", "false")?;
        }
        Ok(h)
    };
    let Ok(header) = head() else { return };
    let is_head = session.req_header().method == http::Method::HEAD;
    if session
        .write_response_header(Box::new(header))
        .await
        .is_err()
    {
        return;
    }
    let body = if is_head { Bytes::new() } else { body };
    let _ = session.write_response_body(body, true).await;
}

/// The header of an event stream: chunked, so the connection stays open
/// for the client's next request (Claude Code sends dozens per task).
pub async fn sse_header(
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
) -> pingora_error::Result<()> {
    let mut h = ResponseHeader::build(200, Some(5))?;
    h.insert_header("content-type", "text/event-stream")?;
    h.insert_header("cache-control", "no-cache")?;
    h.insert_header("transfer-encoding", "chunked")?;
    common_headers(&mut h, ctx)?;
    ctx.status = 200;
    session.write_response_header(Box::new(h)).await
}

/// `x-request-id` on every response; `x-lynkr-route` (route/provider/model)
/// once a request was routed.
pub fn common_headers(h: &mut ResponseHeader, ctx: &RequestCtx) -> pingora_error::Result<()> {
    h.insert_header("x-request-id", ctx.request_id.as_str())?;
    if let Some(route) = ctx.route_label() {
        h.insert_header("x-lynkr-route", route)?;
    }
    Ok(())
}

pub async fn json(session: &mut ServerSession, ctx: &mut RequestCtx, status: u16, body: Vec<u8>) {
    send(
        session,
        ctx,
        status,
        "application/json",
        Bytes::from(body),
        None,
    )
    .await
}

/// An Anthropic-shaped error response.
pub async fn error(session: &mut ServerSession, ctx: &mut RequestCtx, err: &ApiError) {
    ctx.error = Some(err.message.clone());
    ctx.error_type = Some(err.kind.as_str());
    if session.response_written().is_some() {
        // Too late for a status: the streaming path has already sent its own event.
        return;
    }
    // A request whose body was not read to the end cannot keep its connection.
    if !session.is_body_done() {
        session.set_keepalive(None);
    }
    let body = Bytes::from(err.body());
    send(
        session,
        ctx,
        err.status,
        "application/json",
        body,
        err.retry_after,
    )
    .await
}
