//! `POST /v1/messages`: read and validate the body, route it, translate it,
//! exchange it with the provider (walking the route's fallback chain until
//! one answers, always before the first byte reaches the client), and
//! translate the answer back: JSON, or SSE event by event as it arrives.

use super::{respond, Gateway, RequestCtx};
use crate::protocol::error::ApiError;
use crate::protocol::sse::message_events;
use crate::protocol::validate::parse_messages_request;
use crate::providers::{Progress, Provider};
use crate::routing::{needs, Features};
use crate::upstream::Exchange;
use bytes::{Bytes, BytesMut};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::time::Duration;

/// After the end of a stream, how long to wait for the rest of the
/// upstream body so the connection can go back to the pool.
const DRAIN_AFTER_DONE: Duration = Duration::from_secs(1);

/// Failures that move on to the route's next target: nothing was
/// answered yet, and another provider may well succeed.
fn falls_back(e: &ApiError) -> bool {
    e.status == 429 || e.status >= 500
}

pub async fn handle(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), ApiError> {
    let body = read_body(session, gw.limits.max_body_bytes).await?;
    let req = parse_messages_request(&body)?;
    ctx.model = Some(req.model.clone());
    ctx.stream = req.is_stream();
    let client_headers = session.req_header().headers.clone();
    let features = Features::of(&req, body.len(), &client_headers);
    let decision = gw
        .router
        .decide(&features)
        .ok_or_else(|| ApiError::not_found(format!("model: no route for {:?}", req.model)))?;
    let needs = needs(&req, &features);

    let mut last_error: Option<ApiError> = None;
    let mut skipped = Vec::new();
    for target in &decision.targets {
        let provider = &target.provider;
        let model = target.model_for(&req.model);
        if let Some(missing) = provider.capabilities.lacks(&needs) {
            skipped.push(format!("{} lacks {missing}", provider.name));
            continue;
        }
        ctx.route = Some(format!("{}/{}/{model}", decision.route, provider.name));
        ctx.attempts += 1;
        let prepared = provider.prepare(&req, &body, model, &client_headers)?;
        let endpoint = match prepared.path {
            Some(path) => std::borrow::Cow::Owned(crate::providers::Endpoint {
                path,
                ..provider.endpoint.clone()
            }),
            None => std::borrow::Cow::Borrowed(&provider.endpoint),
        };
        let sent = gw
            .upstream
            .send(
                provider,
                &endpoint,
                &prepared.headers,
                prepared.body,
                ctx.stream,
                &ctx.request_id,
            )
            .await;
        let mut ex = match sent {
            Ok(ex) if (200..300).contains(&ex.status) => ex,
            Ok(ex) => {
                let (err, ex) = ex.into_error(&provider.name).await;
                gw.upstream.finish(ex).await;
                if falls_back(&err) {
                    tracing::warn!(request_id = %ctx.request_id, route = ctx.route.as_deref(), error = %err, "target failed, trying the next");
                    last_error = Some(err);
                    continue;
                }
                return Err(err);
            }
            Err(err) if falls_back(&err) => {
                tracing::warn!(request_id = %ctx.request_id, route = ctx.route.as_deref(), error = %err, "target failed, trying the next");
                last_error = Some(err);
                continue;
            }
            Err(err) => return Err(err),
        };
        ctx.first_byte_ms = Some(ctx.started.elapsed().as_millis() as u64);
        let streamed = ex
            .header("content-type")
            .is_some_and(|c| provider.is_stream_response(c));
        if ctx.stream && streamed {
            return stream(gw, session, ctx, ex, &req.model, provider).await;
        }
        let reply = match ex
            .read_all(&provider.name, gw.limits.max_response_bytes)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                ex.abort().await;
                return Err(e);
            }
        };
        gw.upstream.finish(ex).await;
        return json_reply(session, ctx, provider, &reply, &req.model).await;
    }
    Err(last_error.unwrap_or_else(|| {
        ApiError::invalid(format!(
            "no target of route {:?} can serve this request: {}",
            decision.route,
            skipped.join("; ")
        ))
    }))
}

/// A whole upstream response, as JSON, or as an event sequence when the
/// client asked for a stream and the upstream answered in one piece.
async fn json_reply(
    session: &mut Session,
    ctx: &mut RequestCtx,
    provider: &Provider,
    body: &[u8],
    client_model: &str,
) -> Result<(), ApiError> {
    let reply = provider.translate_json(body, client_model)?;
    ctx.input_tokens = reply.usage.input_tokens + reply.usage.cache_read_input_tokens;
    ctx.output_tokens = reply.usage.output_tokens;
    match (reply.message, reply.passthrough) {
        (Some(message), _) if ctx.stream => {
            let events = message_events(&message);
            write_sse_header(session, ctx).await.map_err(client_gone)?;
            let _ = session
                .write_response_body(Some(events.freeze()), true)
                .await;
        }
        (Some(message), _) => {
            let json = serde_json::to_vec(&message).map_err(|e| ApiError::api(e.to_string()))?;
            respond::json(session, ctx, 200, json).await;
        }
        (None, Some(raw)) => {
            let content_type = if ctx.stream {
                "text/event-stream"
            } else {
                "application/json"
            };
            respond::send(session, ctx, 200, content_type, raw, None).await;
        }
        (None, None) => unreachable!("a reply is a message or passthrough bytes"),
    }
    Ok(())
}

/// Relay an upstream SSE stream as Anthropic events, chunk by chunk.
async fn stream(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut ex: Exchange,
    model: &str,
    provider: &Provider,
) -> Result<(), ApiError> {
    let mut translator = provider.stream_translator(model);
    let provider = provider.name.as_str();
    let mut out = BytesMut::with_capacity(4096);
    let mut header_sent = false;
    loop {
        let step = match ex.read(provider).await {
            Ok(Some(bytes)) => translator.feed(&bytes, &mut out),
            Ok(None) => translator.end_of_input(&mut out).map(|_| Progress::Done),
            Err(e) => Err(e),
        };
        let progress = match step {
            Ok(p) => p,
            Err(e) => {
                ex.abort().await;
                if !header_sent {
                    // Nothing reached the client yet: answer with a plain error.
                    return Err(e);
                }
                // Mid-stream: an `event: error`, so Claude Code retries.
                ctx.error = Some(e.message.clone());
                out.extend_from_slice(e.sse_event().as_bytes());
                let _ = session
                    .write_response_body(Some(out.split().freeze()), true)
                    .await;
                return Ok(());
            }
        };
        if !out.is_empty() {
            if !header_sent {
                if let Err(e) = write_sse_header(session, ctx).await {
                    ex.abort().await;
                    return Err(client_gone(e));
                }
                header_sent = true;
            }
            if let Err(e) = session
                .write_response_body(Some(out.split().freeze()), false)
                .await
            {
                ex.abort().await;
                return Err(client_gone(e));
            }
        }
        if progress == Progress::Done {
            break;
        }
    }
    let usage = translator.usage();
    ctx.input_tokens = usage.input_tokens + usage.cache_read_input_tokens;
    ctx.output_tokens = usage.output_tokens;
    let _ = session.write_response_body(None, true).await;
    let _ = tokio::time::timeout(DRAIN_AFTER_DONE, async {
        while let Ok(Some(_)) = ex.read(provider).await {}
    })
    .await;
    gw.upstream.finish(ex).await;
    Ok(())
}

async fn write_sse_header(
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> pingora_error::Result<()> {
    let mut h = ResponseHeader::build(200, Some(4))?;
    h.insert_header("content-type", "text/event-stream")?;
    h.insert_header("cache-control", "no-cache")?;
    respond::common_headers(&mut h, ctx)?;
    ctx.status = 200;
    session.write_response_header(Box::new(h), false).await
}

/// The client went away; recorded for the access log, nothing to answer.
fn client_gone(e: Box<pingora_error::Error>) -> ApiError {
    ApiError::api(format!("client disconnected: {e}")).with_status(499)
}

/// Read the whole request body, refusing more than `limit` bytes (by the
/// declared length before reading anything, or as the bytes arrive).
pub(super) async fn read_body(session: &mut Session, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            crate::protocol::error::ErrorKind::RequestTooLarge,
            format!("body: request body exceeds the limit of {limit} bytes"),
        )
    };
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|e| ApiError::invalid(format!("body: could not read the request body: {e}")))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
