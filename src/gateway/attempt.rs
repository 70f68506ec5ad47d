//! One attempt of a `/v1/messages` request at one provider: build the
//! upstream request, send it, and turn the answer into what the client
//! asked for, relaying a stream as it arrives.
//!
//! The attempt holds the provider's circuit-breaker permit and settles it
//! exactly once: success when the provider's answer starts reaching the
//! client (or, for a whole answer, once it is read), failure when the
//! provider is to blame (transport errors, 429, 5xx, including an error it
//! streams before any byte reached the client), and abandoned (the permit
//! dropped) when the client leaves or the request never went out.

use super::{overloaded, respond, Gateway, RequestCtx};
use crate::protocol::anthropic::{MessagesRequest, Usage};
use crate::protocol::error::{ApiError, Origin};
use crate::providers::{Decoder, DecoderOptions, Progress, Provider};
use crate::resilience::breaker::Permit;
use crate::upstream::Exchange;
use bytes::BytesMut;
use pingora_core::protocols::http::ServerSession;
use std::time::{Duration, Instant};

/// After the end of a stream, how long to wait for the rest of the
/// upstream body so the connection can go back to the pool.
const DRAIN_AFTER_DONE: Duration = Duration::from_secs(1);

/// What every attempt of one request shares.
pub struct Attempt<'a> {
    pub req: &'a MessagesRequest<'a>,
    /// The client's body (the passthrough forwards it).
    pub raw: &'a [u8],
    pub client_headers: &'a http::HeaderMap,
    /// The input token estimate, for `message_start`.
    pub estimate: u64,
    /// `timeouts.total_ms` after the request arrived.
    pub deadline: Instant,
}

/// How an attempt failed.
pub enum Failure {
    /// Nothing reached the client: another attempt may follow, if the
    /// error's origin makes it worth it.
    Retry(ApiError),
    /// The request ends with this error (the client left, the deadline
    /// passed, shutdown, or a request the gateway itself cannot send).
    Final(ApiError),
}

pub async fn run(
    gw: &Gateway,
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    a: &Attempt<'_>,
    provider: &Provider,
    model: &str,
    permit: Permit<'_>,
) -> Result<(), Failure> {
    // Dropping the permit on these early returns records "abandoned".
    let prepared = provider
        .prepare(a.req, a.raw, model, a.client_headers)
        .map_err(Failure::Final)?;
    let out = provider.outgoing(&prepared, ctx.stream, &ctx.request_id);
    let sent = tokio::select! {
        sent = gw.upstream.send(&out, &provider.name) => sent,
        _ = client_closed(session) => return Err(Failure::Final(client_disconnected())),
        _ = tokio::time::sleep_until(a.deadline.into()) => return Err(Failure::Final(past_deadline(gw))),
        _ = gw.drain.cut() => return Err(Failure::Final(shutting_down())),
    };
    let ex = match sent {
        Ok(ex) if (200..300).contains(&ex.status()) => ex,
        Ok(ex) => {
            let (err, ex) = ex.into_error(&provider.name).await;
            gw.upstream.finish(ex);
            return Err(failed(gw, permit, err));
        }
        Err(err) => return Err(failed(gw, permit, err)),
    };
    ctx.first_byte_ms = Some(ctx.started.elapsed().as_millis() as u64);
    let decoder = provider.decoder(
        ex.header("content-type"),
        DecoderOptions {
            client_model: &a.req.model,
            client_stream: ctx.stream,
            input_estimate: a.estimate,
            max_response_bytes: gw.limits.max_response_bytes,
        },
    );
    let answer = Answer {
        ex,
        decoder,
        permit,
        label: &provider.name,
    };
    if answer.decoder.streams() {
        relay_stream(gw, session, ctx, a, answer).await
    } else {
        whole_answer(gw, session, ctx, a, answer).await
    }
}

/// A provider's 2xx answer under way: the exchange, its decoder, the
/// breaker permit it settles, and the provider's name for messages.
struct Answer<'p> {
    ex: Exchange,
    decoder: Decoder,
    permit: Permit<'p>,
    label: &'p str,
}

/// Settle the permit for an attempt that failed before any byte reached
/// the client, and say whether the request may go on. Keys an upstream
/// quotes back are redacted first. The gateway's own errors (the deadline,
/// shutdown, the client gone) end the request, the permit abandoned.
fn failed(gw: &Gateway, permit: Permit<'_>, err: ApiError) -> Failure {
    let err = gw.redact(err);
    match err.origin {
        Origin::Transport => permit.failure(),
        // 429 and 5xx: the provider is to blame. Other statuses: it
        // answered properly, the request was at fault.
        Origin::Provider(s) if s == 429 || s >= 500 => permit.failure(),
        Origin::Provider(_) => permit.success(),
        Origin::Gateway => {
            drop(permit);
            return Failure::Final(err);
        }
    }
    Failure::Retry(err)
}

/// Why the upstream read loop stopped waiting.
enum Wake {
    Read(Result<Option<bytes::Bytes>, ApiError>),
    ClientGone,
    Deadline,
    Cut,
}

/// Relay an upstream stream as Anthropic events, chunk by chunk. Before
/// the first byte reaches the client a failure is the attempt's (it may be
/// retried); after it, the stream ends with an `event: error`.
async fn relay_stream(
    gw: &Gateway,
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    a: &Attempt<'_>,
    answer: Answer<'_>,
) -> Result<(), Failure> {
    let Answer {
        mut ex,
        mut decoder,
        permit,
        label,
    } = answer;
    let mut permit = Some(permit);
    let mut out = BytesMut::with_capacity(4096);
    let deadline = tokio::time::sleep_until(a.deadline.into());
    let cut = gw.drain.cut();
    tokio::pin!(deadline, cut);
    loop {
        let wake = tokio::select! {
            read = ex.read(label) => Wake::Read(read),
            _ = client_closed(session) => Wake::ClientGone,
            _ = &mut deadline => Wake::Deadline,
            _ = &mut cut => Wake::Cut,
        };
        let started = permit.is_none();
        let step = match wake {
            Wake::Read(Ok(Some(bytes))) => decoder.feed(&bytes, &mut out),
            Wake::Read(Ok(None)) => decoder.end_of_input(&mut out).map(|_| Progress::Done),
            // Silence longer than `timeouts.read_ms` once the stream began.
            Wake::Read(Err(e)) if e.status == 504 && started => Err(overloaded(
                &format!("upstream stream stalled: {}", e.message),
                1,
            )),
            Wake::Read(Err(e)) => Err(e),
            Wake::ClientGone => {
                // Stop the upstream generating for nobody.
                ex.abort();
                return Err(Failure::Final(client_disconnected()));
            }
            Wake::Deadline => Err(past_deadline(gw)),
            Wake::Cut => Err(shutting_down()),
        };
        // Events decoded before a fault in the same read still reach the
        // client, then the error: what the client sees does not depend on
        // how the upstream's bytes were split into reads.
        let (progress, fault) = match step {
            Ok(p) => (p, None),
            Err(e) if permit.is_some() && out.is_empty() => {
                // Nothing reached the client: a plain error, maybe a retry.
                ex.abort();
                let permit = permit.take().expect("checked above");
                return Err(failed(gw, permit, e));
            }
            Err(e) => (Progress::Done, Some(e)),
        };
        if !out.is_empty() {
            if let Some(permit) = permit.take() {
                if let Err(e) = respond::sse_header(session, ctx).await {
                    ex.abort();
                    drop(permit);
                    return Err(Failure::Final(client_gone(e)));
                }
                // The provider's answer is reaching the client.
                permit.success();
            }
        }
        if let Some(e) = fault {
            // Mid-stream: an `event: error`, so Claude Code retries.
            ex.abort();
            let e = gw.redact(e);
            ctx.error = Some(e.message.clone());
            out.extend_from_slice(e.sse_event().as_bytes());
            let _ = session
                .write_response_body(out.split().freeze(), true)
                .await;
            return Ok(());
        }
        if !out.is_empty() {
            if let Err(e) = session
                .write_response_body(out.split().freeze(), false)
                .await
            {
                ex.abort();
                return Err(Failure::Final(client_gone(e)));
            }
        }
        if progress == Progress::Done {
            break;
        }
    }
    note_usage(ctx, decoder.usage());
    let _ = session.write_response_body(bytes::Bytes::new(), true).await;
    let _ = tokio::time::timeout(DRAIN_AFTER_DONE, async {
        while let Ok(Some(_)) = ex.read(label).await {}
    })
    .await;
    gw.upstream.finish(ex);
    Ok(())
}

/// A whole (non-streamed) answer: read it, translate it, send it at once
/// (as JSON, or as an event sequence to a streaming client).
async fn whole_answer(
    gw: &Gateway,
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    a: &Attempt<'_>,
    answer: Answer<'_>,
) -> Result<(), Failure> {
    let Answer {
        mut ex,
        mut decoder,
        permit,
        label,
    } = answer;
    let mut out = BytesMut::new();
    let read = async {
        while let Some(chunk) = ex.read(label).await? {
            decoder.feed(&chunk, &mut out)?;
        }
        decoder.end_of_input(&mut out)
    };
    let result = tokio::select! {
        r = read => r,
        _ = client_closed(session) => Err(client_disconnected()),
        _ = tokio::time::sleep_until(a.deadline.into()) => Err(past_deadline(gw)),
        _ = gw.drain.cut() => Err(shutting_down()),
    };
    if let Err(e) = result {
        ex.abort();
        return Err(failed(gw, permit, e));
    }
    permit.success();
    gw.upstream.finish(ex);
    note_usage(ctx, decoder.usage());
    let body = out.freeze();
    if ctx.stream {
        if respond::sse_header(session, ctx).await.is_ok() {
            let _ = session.write_response_body(body, true).await;
        }
    } else {
        respond::send(session, ctx, 200, "application/json", body, None).await;
    }
    Ok(())
}

fn note_usage(ctx: &mut RequestCtx, usage: Usage) {
    ctx.input_tokens = usage.input_tokens + usage.cache_read_input_tokens;
    ctx.cache_read_tokens = usage.cache_read_input_tokens;
    ctx.output_tokens = usage.output_tokens;
}

/// Resolves when the client closes its connection (it sends nothing more
/// once its request body is read; a pipelined next request is kept for
/// later, not taken for a close).
pub async fn client_closed(session: &mut ServerSession) {
    loop {
        match session.read_body_or_idle(true).await {
            Ok(Some(_)) => continue,
            _ => return,
        }
    }
}

pub fn client_disconnected() -> ApiError {
    ApiError::api("client disconnected").with_status(499)
}

/// The client went away; recorded for the access log, nothing to answer.
fn client_gone(e: Box<pingora_error::Error>) -> ApiError {
    ApiError::api(format!("client disconnected: {e}")).with_status(499)
}

fn past_deadline(gw: &Gateway) -> ApiError {
    ApiError::api(format!(
        "the request took longer than {} ms (timeouts.total_ms)",
        gw.total.as_millis()
    ))
    .with_status(504)
}

fn shutting_down() -> ApiError {
    overloaded(
        "Lynkr is shutting down and its grace period is over; retry the request",
        1,
    )
}
