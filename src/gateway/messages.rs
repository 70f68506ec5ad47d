//! `POST /v1/messages`: read and validate the body, route it, and walk the
//! route's targets (with retries and backoff) until one answers. Each try
//! is an attempt (`attempt.rs`); a failed attempt is tried again only
//! before the first byte reached the client, and only when its failure is
//! worth it (see `Failure`).

use super::attempt::{self, Attempt, Failure};
use super::{body, overloaded, Gateway, RequestCtx};
use crate::protocol::error::{ApiError, Origin};
use crate::protocol::validate::parse_messages_request;
use crate::resilience::breaker::Permit;
use crate::routing::{needs, Decision, Features, Target};
use crate::store::budgets::Charges;
use pingora_core::protocols::http::ServerSession;
use std::time::{Duration, Instant};

pub async fn handle(
    gw: &Gateway,
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
) -> Result<(), ApiError> {
    let deadline = ctx.started + gw.total;
    let body = body::read(gw, session, ctx).await?;
    let req = parse_messages_request(&body)?;
    ctx.model = Some(req.model.clone());
    gw.check_model(ctx, &req.model)?;
    ctx.billable = true;
    ctx.stream = req.is_stream();
    let estimate = req.estimated_input_tokens();
    let client_headers = session.req_header().headers.clone();
    let features = Features::of(&req, estimate, &client_headers);
    let decision = gw
        .router
        .decide(&features)
        .ok_or_else(|| ApiError::not_found(format!("model: no route for {:?}", req.model)))?;
    if features.background() {
        gw.shedder
            .admit_background()
            .map_err(|why| gw.shed(ctx, why))?;
    }
    let eligible = eligible_targets(&decision, &needs(&req, &features))?;
    ctx.estimate = estimate;
    gw.take_tokens(session, ctx, estimate)?;
    gw.reserve_budget(ctx, worst_case(&eligible, estimate, req.max_tokens))?;
    let request = Attempt {
        req: &req,
        raw: &body,
        client_headers: &client_headers,
        estimate,
        deadline,
    };

    // Every target gets a try; retries beyond the chain wrap around it.
    let max_attempts = (gw.retry.max_attempts as usize).max(eligible.len());
    let mut tried = vec![0u32; eligible.len()];
    // Pool endpoints each target has tried, so a retry moves to another.
    let mut tried_members: Vec<Vec<usize>> = vec![Vec::new(); eligible.len()];
    let balance_key = features.session.unwrap_or(&ctx.request_id).to_string();
    let mut last_error: Option<ApiError> = None;
    let mut next = 0usize;
    while (ctx.attempts as usize) < max_attempts {
        let chosen = choose(gw, &eligible, next, balance_key.as_bytes(), &tried_members);
        let (i, member, permit) = match chosen {
            Ok(c) => c,
            // No target can take it now: fail fast rather than pile on.
            Err(unavailable) => {
                return Err(last_error.unwrap_or_else(|| {
                    ctx.rejected_reason = Some("targets_unavailable");
                    overloaded(
                        &format!(
                            "every target of route {:?} is unavailable ({})",
                            decision.route,
                            unavailable.reasons.join("; ")
                        ),
                        unavailable.retry_after_secs(),
                    )
                }))
            }
        };
        let target = eligible[i];
        if tried[i] > 0 {
            let after = last_error
                .as_ref()
                .and_then(|e| e.retry_after)
                .map(Duration::from_secs);
            tokio::time::sleep(gw.retry.delay(ctx.attempts, after)).await;
        }
        tried[i] += 1;
        next = i + 1;
        ctx.attempts += 1;
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
        let model = target.model_for(&req.model);
        ctx.routed(&decision.route, provider, model);
        match attempt::run(gw, session, ctx, &request, provider, model, permit).await {
            Ok(()) => return Ok(()),
            Err(Failure::Final(e)) => return Err(e),
            Err(Failure::Retry(e)) => {
                tracing::warn!(request_id = %ctx.request_id, route = ctx.route_label(), attempt = ctx.attempts, error = %e, "attempt failed");
                let worth_it = match e.origin {
                    Origin::Transport => true,
                    Origin::Provider(status) => gw.retry.retries_status(status),
                    Origin::Gateway => false,
                };
                if !worth_it || Instant::now() >= deadline {
                    return Err(e);
                }
                last_error = Some(e);
            }
        }
    }
    Err(last_error.expect("at least one attempt was made"))
}

/// The most a request can spend: its input estimate and all of `max_tokens`
/// as output, priced by the dearest target it may fall back to.
fn worst_case(eligible: &[&Target], estimate: u64, max_tokens: u64) -> Charges {
    Charges {
        usd: eligible
            .iter()
            .filter_map(|t| t.provider.pricing)
            .map(|p| p.cost(estimate, max_tokens))
            .fold(0.0, f64::max),
        tokens: (estimate + max_tokens) as f64,
        requests: 1.0,
    }
}

/// Targets that can serve this request, in the route's order.
fn eligible_targets<'r>(
    decision: &Decision<'r>,
    needs: &crate::providers::Needs,
) -> Result<Vec<&'r Target>, ApiError> {
    let mut skipped = Vec::new();
    let eligible: Vec<_> = decision
        .targets
        .iter()
        .copied()
        .filter(|t| match t.provider.capabilities.lacks(needs) {
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
    Ok(eligible)
}

/// Why no target could take a request now.
struct Unavailable {
    reasons: Vec<String>,
    shortest_wait: Option<Duration>,
}

impl Unavailable {
    fn retry_after_secs(&self) -> u64 {
        self.shortest_wait
            .map_or(1, |w| w.as_secs_f64().ceil().max(1.0) as u64)
    }
}

/// The next target, from `next` on, with a healthy endpoint whose breaker
/// lets a request through: its index, pool member, and breaker permit.
fn choose<'g>(
    gw: &'g Gateway,
    eligible: &[&Target],
    next: usize,
    balance_key: &[u8],
    tried_members: &[Vec<usize>],
) -> Result<(usize, Option<usize>, Permit<'g>), Unavailable> {
    let mut why = Unavailable {
        reasons: Vec::new(),
        shortest_wait: None,
    };
    let wait = |w: Duration, why: &mut Unavailable| {
        why.shortest_wait = Some(why.shortest_wait.map_or(w, |s| s.min(w)));
    };
    for k in 0..eligible.len() {
        let i = (next + k) % eligible.len();
        let provider = &eligible[i].provider;
        let member = match &provider.pool {
            Some(pool) => match pool.pick(balance_key, &tried_members[i]) {
                Some(m) => Some(m),
                None => {
                    wait(Duration::from_secs(pool.retry_after_secs()), &mut why);
                    why.reasons
                        .push(format!("{}: no healthy endpoint", provider.name));
                    continue;
                }
            },
            None => None,
        };
        match gw.breaker(&provider.name).permit() {
            Ok(permit) => return Ok((i, member, permit)),
            Err(w) => {
                wait(w, &mut why);
                why.reasons
                    .push(format!("{}: circuit breaker open", provider.name));
            }
        }
    }
    Err(why)
}
