//! Reading a request body: bounded in size (`limits.max_body_bytes`), in
//! bytes held over all requests (`limits.max_buffered_bytes`) and in time
//! (`timeouts.client_read_ms`). Only once it has arrived is the request
//! counted in flight for load shedding.

use super::{overloaded, Gateway, RequestCtx};
use crate::protocol::error::{ApiError, ErrorKind};
use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::ServerSession;

pub async fn read(
    gw: &Gateway,
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
) -> Result<Bytes, ApiError> {
    let limit = gw.limits.max_body_bytes;
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let mut reservation = gw.body_budget.reservation();
    let over_budget = |ctx: &mut RequestCtx| {
        ctx.rejected_reason = Some("request_bytes_budget");
        overloaded(
            "Lynkr is overloaded (request bytes held at once, limits.max_buffered_bytes); retry later",
            gw.shedder.retry_after_secs,
        )
    };
    // A declared length is reserved before anything is read.
    if let Some(n) = declared {
        if reservation.grow(n).is_err() {
            return Err(over_budget(ctx));
        }
    }
    let read_all =
        async {
            // A body that arrives in one piece (the usual case) is kept as
            // it is; only a second piece makes a copy.
            let mut first: Option<Bytes> = None;
            let mut body = BytesMut::new();
            let mut len = 0;
            while let Some(chunk) = session.read_request_body().await.map_err(|e| {
                ApiError::invalid(format!("body: could not read the request body: {e}"))
            })? {
                if len + chunk.len() > limit {
                    return Err(too_large(limit));
                }
                let grow = (len + chunk.len()).saturating_sub(reservation.bytes());
                if grow > 0 && reservation.grow(grow).is_err() {
                    return Err(over_budget(ctx));
                }
                len += chunk.len();
                if first.is_none() && body.is_empty() {
                    first = Some(chunk);
                } else {
                    if let Some(earlier) = first.take() {
                        body.reserve(declared.unwrap_or(0).max(len));
                        body.extend_from_slice(&earlier);
                    }
                    body.extend_from_slice(&chunk);
                }
            }
            Ok(first.unwrap_or_else(|| body.freeze()))
        };
    let body = tokio::time::timeout(gw.client_read, read_all)
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorKind::InvalidRequestError,
                format!(
                    "body: not received within {} ms (timeouts.client_read_ms)",
                    gw.client_read.as_millis()
                ),
            )
            .with_status(408)
        })??;
    ctx.body_bytes = Some(reservation);
    // Now the request costs something: count it in flight.
    match gw.shedder.admit() {
        Ok(slot) => ctx.in_flight = Some(slot),
        Err(why) => return Err(gw.shed(ctx, why)),
    }
    Ok(body)
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorKind::RequestTooLarge,
        format!("body: request body exceeds the limit of {limit} bytes"),
    )
}
