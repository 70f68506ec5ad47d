//! `POST /v1/messages`: read and validate the body, route it, translate it,
//! exchange it with the provider (walking the route's fallback chain until
//! one answers, always before the first byte reaches the client), and
//! translate the answer back: JSON, or SSE event by event as it arrives.

use super::{respond, Gateway, RequestCtx};
use crate::protocol::error::{ApiError, ErrorKind};
use crate::protocol::sse::message_events;
use crate::protocol::validate::parse_messages_request;
use crate::providers::{Progress, Provider};
use crate::resilience::breaker::Permit;
use crate::routing::{needs, Features};
use crate::upstream::Exchange;
use bytes::{Bytes, BytesMut};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::time::Duration;

/// After the end of a stream, how long to wait for the rest of the
/// upstream body so the connection can go back to the pool.
const DRAIN_AFTER_DONE: Duration = Duration::from_secs(1);

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
    if features.background() {
        gw.shedder.admit_background().map_err(|_| {
            ctx.rejected_reason = Some("load_shedding_background");
            overloaded(
                "background requests are shed under load",
                gw.shedder.retry_after_secs,
            )
        })?;
    }

    // Targets that can serve this request, in the route's order.
    let mut skipped = Vec::new();
    let eligible: Vec<_> = decision
        .targets
        .iter()
        .filter(|t| match t.provider.capabilities.lacks(&needs) {
            Some(missing) => {
                skipped.push(format!("{} lacks {missing}", t.provider.name));
                false
            }
            None => true,
        })
        .collect();
    if eligible.is_empty() {
        return Err(ApiError::invalid(format!(
            "no target of route {:?} can serve this request: {}",
            decision.route,
            skipped.join("; ")
        )));
    }

    // Every target gets a try; retries beyond the chain wrap around it.
    let max_attempts = (gw.retry.max_attempts as usize).max(eligible.len());
    let mut tried = vec![0u32; eligible.len()];
    // Pool endpoints each target has tried, so a retry moves to another.
    let mut tried_members: Vec<Vec<usize>> = vec![Vec::new(); eligible.len()];
    let balance_key = features.session.unwrap_or(&ctx.request_id).to_string();
    let mut last_error: Option<ApiError> = None;
    let mut next = 0usize;
    while (ctx.attempts as usize) < max_attempts {
        // The next target with a healthy endpoint whose breaker lets a
        // request through.
        let mut shortest_wait: Option<Duration> = None;
        let mut unavailable = Vec::new();
        let mut chosen = None;
        for k in 0..eligible.len() {
            let i = (next + k) % eligible.len();
            let provider = &eligible[i].provider;
            let member = match &provider.pool {
                Some(pool) => match pool.pick(balance_key.as_bytes(), &tried_members[i]) {
                    Some(m) => Some(m),
                    None => {
                        let wait = Duration::from_secs(pool.retry_after_secs());
                        shortest_wait = Some(shortest_wait.map_or(wait, |w| w.min(wait)));
                        unavailable.push(format!("{}: no healthy endpoint", provider.name));
                        continue;
                    }
                },
                None => None,
            };
            match gw.breaker(&provider.name).permit() {
                Permit::Refused(wait) => {
                    shortest_wait = Some(shortest_wait.map_or(wait, |w| w.min(wait)));
                    unavailable.push(format!("{}: circuit breaker open", provider.name));
                }
                permit => {
                    chosen = Some((i, member, permit));
                    break;
                }
            }
        }
        let Some((i, member, permit)) = chosen else {
            // No target can take it now: fail fast rather than pile on.
            return Err(last_error.unwrap_or_else(|| {
                ctx.rejected_reason = Some("targets_unavailable");
                let secs = shortest_wait.map_or(1, |w| w.as_secs_f64().ceil().max(1.0) as u64);
                overloaded(
                    &format!(
                        "every target of route {:?} is unavailable ({})",
                        decision.route,
                        unavailable.join("; ")
                    ),
                    secs,
                )
            }));
        };
        let target = eligible[i];
        let pooled;
        let provider = match member {
            Some(m) => {
                tried_members[i].push(m);
                pooled = target.provider.at_member(m);
                ctx.endpoint = pooled.pool.as_ref().map(|p| p.member(m).label.clone());
                &pooled
            }
            None => &*target.provider,
        };
        let breaker = gw.breaker(&provider.name);
        let model = target.model_for(&req.model);
        if tried[i] > 0 {
            let wait = gw.retry.delay(
                ctx.attempts,
                last_error
                    .as_ref()
                    .and_then(|e| e.retry_after)
                    .map(Duration::from_secs),
            );
            tokio::time::sleep(wait).await;
        }
        tried[i] += 1;
        next = i + 1;
        ctx.attempts += 1;
        ctx.routed(&decision.route, provider, model);
        let failed = |ctx: &RequestCtx, err: ApiError, last: &mut Option<ApiError>| {
            breaker.record(permit, false);
            tracing::warn!(request_id = %ctx.request_id, route = ctx.route_label(), attempt = ctx.attempts, error = %err, "attempt failed");
            *last = Some(err);
        };

        let prepared = provider.prepare(&req, &body, model, &client_headers)?;
        let endpoint = match prepared.path {
            Some(path) => std::borrow::Cow::Owned(crate::providers::Endpoint {
                path,
                ..provider.endpoint.clone()
            }),
            None => std::borrow::Cow::Borrowed(&provider.endpoint),
        };
        let sent = tokio::select! {
            sent = gw.upstream.send(provider, &endpoint, &prepared.headers, prepared.body, ctx.stream, &ctx.request_id) => sent,
            _ = client_closed(session) => return Err(client_disconnected()),
        };
        let mut ex = match sent {
            Ok(ex) if (200..300).contains(&ex.status) => ex,
            Ok(ex) => {
                let (err, ex) = ex.into_error(&provider.name).await;
                gw.upstream.finish(ex).await;
                if gw.retry.retries_status(err.status) || err.status == 529 {
                    failed(ctx, err, &mut last_error);
                    continue;
                }
                // The provider answered; the request was at fault.
                breaker.record(permit, true);
                return Err(err);
            }
            Err(err) if retryable(&err) => {
                failed(ctx, err, &mut last_error);
                continue;
            }
            Err(err) => return Err(err),
        };
        breaker.record(permit, true);
        ctx.first_byte_ms = Some(ctx.started.elapsed().as_millis() as u64);
        let streamed = ex
            .header("content-type")
            .is_some_and(|c| provider.is_stream_response(c));
        if ctx.stream && streamed {
            match stream(gw, session, ctx, ex, &req.model, provider).await {
                // Broken before its first byte reached the client: retry.
                Err(err) if retryable(&err) => {
                    failed(ctx, err, &mut last_error);
                    continue;
                }
                other => return other,
            }
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
    Err(last_error.expect("at least one attempt was made"))
}

/// Transport failures (connect, timeout, broken stream) are worth another try.
fn retryable(e: &ApiError) -> bool {
    matches!(e.status, 502 | 504)
}

fn overloaded(message: &str, retry_after_secs: u64) -> ApiError {
    let mut e = ApiError::new(ErrorKind::OverloadedError, message);
    e.retry_after = Some(retry_after_secs);
    e
}

fn client_disconnected() -> ApiError {
    ApiError::api("client disconnected").with_status(499)
}

/// Resolves when the client closes its connection (it sends nothing more
/// once its request body is read, so any end of input means it is gone).
async fn client_closed(session: &mut Session) {
    loop {
        match session.read_body_or_idle(true).await {
            Ok(Some(_)) => continue,
            _ => return,
        }
    }
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
        let read = tokio::select! {
            read = ex.read(provider) => read,
            _ = client_closed(session) => {
                // Stop the upstream generating for nobody.
                ex.abort().await;
                return Err(client_disconnected());
            }
        };
        let step = match read {
            Ok(Some(bytes)) => translator.feed(&bytes, &mut out),
            Ok(None) => translator.end_of_input(&mut out).map(|_| Progress::Done),
            // Silence longer than `timeouts.read_ms`: a stalled stream.
            Err(e) if e.status == 504 && header_sent => Err(overloaded(
                &format!("upstream stream stalled: {}", e.message),
                1,
            )),
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
