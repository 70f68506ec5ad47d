//! Small endpoints: `/`, health, `/v1/models`, `/v1/messages/count_tokens`.

use super::messages::read_body;
use super::{respond, Gateway, RequestCtx};
use crate::protocol::anthropic::{ContentBlock, CountTokensRequest, TextOrBlocks, ToolResultBlock};
use crate::protocol::error::ApiError;
use crate::protocol::validate::parse_count_tokens_request;
use crate::providers::anthropic;
use crate::resilience::breaker::State;
use crate::routing::Features;
use pingora_proxy::Session;
use serde_json::json;
use std::sync::atomic::Ordering;

pub async fn root(session: &mut Session, ctx: &mut RequestCtx) -> Result<(), ApiError> {
    let body = json!({"name": "lynkr", "version": env!("CARGO_PKG_VERSION"), "status": "ok"});
    respond::json(session, ctx, 200, body.to_string().into_bytes()).await;
    Ok(())
}

/// The process answers.
pub async fn live(session: &mut Session, ctx: &mut RequestCtx) -> Result<(), ApiError> {
    respond::json(session, ctx, 200, br#"{"status":"ok"}"#.to_vec()).await;
    Ok(())
}

/// Whether to send traffic here: not shutting down, some provider can take
/// a request, memory under the shedding threshold. Each check is in the body;
/// any failing one makes it 503.
pub async fn ready(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), ApiError> {
    let shutting_down = gw.shutting_down.load(Ordering::Relaxed);
    let (mut available, mut unavailable) = (Vec::new(), Vec::new());
    for (name, breaker) in &gw.breakers {
        let open = breaker.snapshot().state == State::Open;
        let no_endpoint = gw
            .pools
            .iter()
            .any(|(p, pool)| p == name && !pool.any_healthy());
        if open || no_endpoint {
            unavailable.push(name.as_str());
        } else {
            available.push(name.as_str());
        }
    }
    available.sort_unstable();
    unavailable.sort_unstable();
    let (rss, limit) = (gw.shedder.rss(), gw.shedder.max_rss());
    let memory_ok = limit == 0 || rss <= limit;
    let checks = json!({
        "shutdown": {"ok": !shutting_down},
        "upstreams": {"ok": !available.is_empty(), "available": available, "unavailable": unavailable},
        "memory": {"ok": memory_ok, "rss_bytes": rss, "limit_bytes": limit},
        // Nothing is stored yet (no cache or database), so nothing can be unreachable.
        "store": {"ok": true, "detail": "no store configured"},
    });
    let ok = checks
        .as_object()
        .is_some_and(|c| c.values().all(|v| v["ok"] == true));
    let body = json!({"status": if ok { "ok" } else { "unavailable" }, "checks": checks});
    let status = if ok { 200 } else { 503 };
    respond::json(session, ctx, status, body.to_string().into_bytes()).await;
    Ok(())
}

/// Every metric in Prometheus's text format; gauges of state read now.
pub async fn prometheus(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), ApiError> {
    let m = &gw.metrics;
    m.in_flight.set(gw.shedder.in_flight() as i64);
    for (name, breaker) in &gw.breakers {
        let now = breaker.snapshot().state;
        for (state, label) in [
            (State::Closed, "closed"),
            (State::Open, "open"),
            (State::HalfOpen, "half_open"),
        ] {
            m.breaker_state
                .with_label_values(&[name.as_str(), label])
                .set(i64::from(now == state));
        }
    }
    for (name, pool) in &gw.pools {
        for s in pool.status() {
            m.endpoint_healthy
                .with_label_values(&[name.as_str(), s.endpoint.as_str()])
                .set(i64::from(s.healthy));
        }
    }
    let body = bytes::Bytes::from(m.render());
    respond::send(
        session,
        ctx,
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        body,
        None,
    )
    .await;
    Ok(())
}

/// A JSON summary: latency percentiles, tokens, cost, routing counts.
pub async fn observability(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), ApiError> {
    gw.metrics.in_flight.set(gw.shedder.in_flight() as i64);
    let body = gw.metrics.summary_json().to_string().into_bytes();
    respond::json(session, ctx, 200, body).await;
    Ok(())
}

/// Each provider's circuit breaker, as JSON.
pub async fn circuit_breakers(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), ApiError> {
    let states: serde_json::Map<String, serde_json::Value> = gw
        .breakers
        .iter()
        .map(|(name, b)| {
            (
                name.clone(),
                serde_json::to_value(b.snapshot()).expect("snapshot serializes"),
            )
        })
        .collect();
    let body = json!({"providers": states});
    respond::json(session, ctx, 200, body.to_string().into_bytes()).await;
    Ok(())
}

/// Health of every pooled provider's endpoints.
pub async fn endpoints(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), ApiError> {
    let pools: serde_json::Map<String, serde_json::Value> = gw
        .pools
        .iter()
        .map(|(name, pool)| (name.clone(), json!(pool.status())))
        .collect();
    let body = json!({"providers": pools});
    respond::json(session, ctx, 200, body.to_string().into_bytes()).await;
    Ok(())
}

/// The names the configuration routes, in Anthropic's list shape.
pub async fn models(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), ApiError> {
    let names = gw.router.model_names();
    let data: Vec<_> = names
        .iter()
        .map(|n| json!({"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"}))
        .collect();
    let body = json!({
        "data": data,
        "has_more": false,
        "first_id": names.first(),
        "last_id": names.last(),
    });
    respond::json(session, ctx, 200, body.to_string().into_bytes()).await;
    Ok(())
}

/// Forwarded to the routed provider when it counts tokens itself
/// (Anthropic kind with `count_tokens: true`), else estimated here.
pub async fn count_tokens(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), ApiError> {
    let body = read_body(session, gw.limits.max_body_bytes).await?;
    let req = parse_count_tokens_request(&body)?;
    ctx.model = Some(req.model.clone());
    let headers = session.req_header().headers.clone();
    let tools = req.tools.as_ref().map_or(0, Vec::len);
    let features = Features::basic(&req.model, tools, body.len(), &headers);
    let target = gw.router.decide(&features).and_then(|d| {
        let route = d.route;
        d.targets.into_iter().next().map(|t| (route, t))
    });
    if let Some((route, target)) = target {
        let key = features.session.unwrap_or(&ctx.request_id).to_string();
        let pooled = target.provider.pool.as_ref().and_then(|pool| {
            let m = pool.pick(key.as_bytes(), &[])?;
            ctx.endpoint = Some(pool.member(m).label.clone());
            Some(target.provider.at_member(m))
        });
        let provider = pooled.as_ref().unwrap_or(&target.provider);
        if let Some(endpoint) = &provider.count_tokens_endpoint {
            let model = target.model_for(&req.model);
            ctx.routed(&route, provider, model);
            let upstream_body = anthropic::rewrite_body(&body, model, None)?;
            let fwd = anthropic::forward_headers(&headers, &provider.anthropic_version);
            let mut ex = gw
                .upstream
                .send(
                    provider,
                    endpoint,
                    &fwd,
                    upstream_body,
                    false,
                    &ctx.request_id,
                )
                .await?;
            if !(200..300).contains(&ex.status) {
                let (err, ex) = ex.into_error(&provider.name).await;
                gw.upstream.finish(ex).await;
                return Err(err);
            }
            let reply = ex
                .read_all(&provider.name, gw.limits.max_response_bytes)
                .await;
            gw.upstream.finish(ex).await;
            respond::json(session, ctx, 200, reply?).await;
            return Ok(());
        }
    }
    let body = json!({"input_tokens": estimate_tokens(&req)});
    respond::json(session, ctx, 200, body.to_string().into_bytes()).await;
    Ok(())
}

/// Tokens per image in the estimate (Anthropic's ~1600 for a large image).
pub const IMAGE_TOKENS: u64 = 1600;
/// Framing tokens per message in the estimate.
pub const MESSAGE_OVERHEAD_TOKENS: u64 = 4;

/// A documented estimate, not a tokenizer: one token per four bytes of text
/// (system, messages, tool calls and results, tool definitions), plus
/// `MESSAGE_OVERHEAD_TOKENS` per message and `IMAGE_TOKENS` per image.
pub fn estimate_tokens(req: &CountTokensRequest) -> u64 {
    let mut bytes = 0usize;
    let mut extra = 0u64;
    match &req.system {
        Some(TextOrBlocks::Text(t)) => bytes += t.len(),
        Some(TextOrBlocks::Blocks(b)) => bytes += b.iter().map(|t| t.text.len()).sum::<usize>(),
        None => {}
    }
    for m in &req.messages {
        extra += MESSAGE_OVERHEAD_TOKENS;
        match &m.content {
            TextOrBlocks::Text(t) => bytes += t.len(),
            TextOrBlocks::Blocks(blocks) => {
                for b in blocks {
                    match b {
                        ContentBlock::Text { text } => bytes += text.len(),
                        ContentBlock::Thinking { thinking, .. } => bytes += thinking.len(),
                        ContentBlock::ToolUse { name, input, .. } => {
                            bytes += name.len() + input.to_string().len()
                        }
                        ContentBlock::ToolResult { content, .. } => match content {
                            Some(TextOrBlocks::Text(t)) => bytes += t.len(),
                            Some(TextOrBlocks::Blocks(rb)) => {
                                for r in rb {
                                    match r {
                                        ToolResultBlock::Text { text } => bytes += text.len(),
                                        _ => extra += IMAGE_TOKENS,
                                    }
                                }
                            }
                            None => {}
                        },
                        ContentBlock::Image { .. } | ContentBlock::Document { .. } => {
                            extra += IMAGE_TOKENS
                        }
                        ContentBlock::RedactedThinking { data } => bytes += data.len(),
                    }
                }
            }
        }
    }
    for t in req.tools.iter().flatten() {
        bytes += t.name.len()
            + t.description.as_ref().map_or(0, |d| d.get().len())
            + t.input_schema.as_ref().map_or(0, |s| s.get().len());
    }
    (bytes as u64).div_ceil(4) + extra
}
