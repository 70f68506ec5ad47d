//! Small endpoints: `/`, health, `/v1/models`, `/v1/messages/count_tokens`.

use super::{body, respond, Gateway, RequestCtx};
use crate::protocol::error::ApiError;
use crate::protocol::validate::parse_count_tokens_request;
use crate::resilience::breaker::State;
use crate::routing::Features;
use pingora_core::protocols::http::ServerSession as Session;
use serde_json::json;

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
    let shutting_down = gw.drain.shutting_down();
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
        "store": store_check(gw).await,
    });
    let ok = checks
        .as_object()
        .is_some_and(|c| c.values().all(|v| v["ok"] == true));
    let body = json!({"status": if ok { "ok" } else { "unavailable" }, "checks": checks});
    let status = if ok { 200 } else { 503 };
    respond::json(session, ctx, status, body.to_string().into_bytes()).await;
    Ok(())
}

/// How long the readiness check waits for the store to answer.
const STORE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// The store thread answers, and the file is readable and writable.
async fn store_check(gw: &Gateway) -> serde_json::Value {
    let Some(store) = &gw.store else {
        return json!({"ok": true, "detail": "no store configured"});
    };
    match store.check(STORE_DEADLINE).await {
        Ok(()) => json!({"ok": true, "buffered_rows": store.buffered()}),
        // With fail_open the gateway still serves: report it, stay ready.
        Err(e) => json!({"ok": store.fail_open, "error": e, "buffered_rows": store.buffered()}),
    }
}

/// Every metric in Prometheus's text format; gauges of state read now.
pub async fn prometheus(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), ApiError> {
    let m = &gw.metrics;
    m.in_flight.set(gw.shedder.in_flight() as i64);
    m.body_bytes_held.set(gw.body_budget.used() as i64);
    if let Some(store) = &gw.store {
        m.budget_reservations
            .set(store.budgets().reservations_in_flight());
    }
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
/// (Anthropic kind with `count_tokens: true`), else estimated here with
/// the gateway's one estimator (`protocol::estimate`).
pub async fn count_tokens(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), ApiError> {
    let body = body::read(gw, session, ctx).await?;
    let req = parse_count_tokens_request(&body)?;
    ctx.model = Some(req.model.clone());
    gw.check_model(ctx, &req.model)?;
    let estimate = req.estimated_input_tokens();
    let headers = session.req_header().headers.clone();
    let tools = req.tools.as_ref().map_or(0, Vec::len);
    let features = Features::basic(&req.model, tools, estimate, &headers);
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
        let model = target.model_for(&req.model);
        if let Some(prepared) = provider.prepare_count_tokens(&body, model, &headers) {
            let prepared = prepared?;
            ctx.routed(&route, provider, model);
            let out = provider.outgoing(&prepared, false, &ctx.request_id);
            let redact = |e| gw.redact(e);
            let mut ex = gw
                .upstream
                .send(&out, &provider.name)
                .await
                .map_err(redact)?;
            if !(200..300).contains(&ex.status()) {
                let (err, ex) = ex.into_error(&provider.name).await;
                gw.upstream.finish(ex);
                return Err(redact(err));
            }
            let reply = ex
                .read_all(&provider.name, gw.limits.max_response_bytes)
                .await;
            gw.upstream.finish(ex);
            respond::json(session, ctx, 200, reply.map_err(redact)?).await;
            return Ok(());
        }
    }
    let body = json!({"input_tokens": estimate});
    respond::json(session, ctx, 200, body.to_string().into_bytes()).await;
    Ok(())
}
