//! Small endpoints: `/`, health, `/v1/models`, `/v1/messages/count_tokens`.

use super::messages::read_body;
use super::{respond, Gateway, RequestCtx};
use crate::protocol::anthropic::{ContentBlock, CountTokensRequest, TextOrBlocks, ToolResultBlock};
use crate::protocol::error::ApiError;
use crate::protocol::validate::parse_count_tokens_request;
use crate::providers::anthropic;
use crate::routing::Features;
use pingora_proxy::Session;
use serde_json::json;

pub async fn root(session: &mut Session, ctx: &mut RequestCtx) -> Result<(), ApiError> {
    let body = json!({"name": "lynkr", "version": env!("CARGO_PKG_VERSION"), "status": "ok"});
    respond::json(session, ctx, 200, body.to_string().into_bytes()).await;
    Ok(())
}

pub async fn health(session: &mut Session, ctx: &mut RequestCtx) -> Result<(), ApiError> {
    respond::json(session, ctx, 200, br#"{"status":"ok"}"#.to_vec()).await;
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
            ctx.route = Some(format!("{route}/{}/{model}", provider.name));
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
