//! Writing whole responses to the client.

use super::RequestCtx;
use crate::protocol::error::ApiError;
use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// A complete response with a body. A client that is gone is not an error
/// worth more than the access log's status.
pub async fn send(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    content_type: &str,
    body: Bytes,
    retry_after: Option<u64>,
) {
    ctx.status = status;
    let head = || -> pingora_error::Result<ResponseHeader> {
        let mut h = ResponseHeader::build(status, Some(4))?;
        h.insert_header("content-type", content_type)?;
        h.insert_header("content-length", body.len().to_string())?;
        common_headers(&mut h, ctx)?;
        if let Some(secs) = retry_after {
            h.insert_header("retry-after", secs.to_string())?;
        }
        Ok(h)
    };
    let Ok(header) = head() else { return };
    let is_head = session.req_header().method == http::Method::HEAD;
    if session
        .write_response_header(Box::new(header), is_head)
        .await
        .is_err()
    {
        return;
    }
    if !is_head {
        let _ = session.write_response_body(Some(body), true).await;
    }
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

pub async fn json(session: &mut Session, ctx: &mut RequestCtx, status: u16, body: Vec<u8>) {
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
pub async fn error(session: &mut Session, ctx: &mut RequestCtx, err: &ApiError) {
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
