//! Admission's arithmetic: which budget and rate-limit lines a call falls under, its
//! worst case, one atomic reservation across all of them (clamping `max_tokens` when
//! allowed), and the response headers that say what is left.

use super::{Limits, LineInfo, Ticket, Verdict, expiry, period_text};
use crate::clock::now_ms;
use crate::config::{Deployment, LimitsConfig};
use crate::error::ApiError;
use crate::headers;
use crate::ingress::IngressRequest;
use http::{HeaderMap, HeaderValue};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tollgate_domain::attribution::Attribution;
use tollgate_domain::budget::{
    Line, affordable_output, counter_key, scopes_of, window, worst_case,
};
use tollgate_domain::loopguard::{Fingerprint, Sampling, sampled};
use tollgate_domain::money::Money;
use tollgate_domain::pricing::EffectiveRates;
use tollgate_domain::ratelimit::{MINUTE_MS, RateKind};
use tollgate_providers::tokenizer::Encoding;
use tollgate_store::counters::{
    CounterError, Counters, RateLine, Refusal, ReserveError, ReserveRequest, Reserved,
};

/// The call being admitted, as far as the limits care.
pub struct Call<'a> {
    pub request_id: &'a str,
    pub attribution: &'a Attribution,
    /// An escalation retry: part of the call it retries, which the guard already
    /// counted (not another iteration of the task).
    pub retry: bool,
    /// The deployment that will serve it (its tokenizer and prices make the worst case).
    pub deployment: Option<&'a Deployment>,
    pub request: &'a IngressRequest,
}

/// What admission gives back: the ticket settlement takes, the headers for the
/// response, and the output cap to send if the budget could only pay that much.
#[derive(Debug)]
pub struct Admitted {
    pub ticket: Ticket,
    pub headers: HeaderMap,
    pub clamped_to: Option<u64>,
}

impl Limits {
    /// Admit a call: guard its task, reserve its worst case across every budget and
    /// rate limit it falls under, maybe clamp its output cap (the caller writes
    /// [`Admitted::clamped_to`] into the request before it is serialised upstream).
    pub async fn admit(
        self: &Arc<Self>,
        lc: &LimitsConfig,
        call: Call<'_>,
    ) -> Result<Admitted, ApiError> {
        let now = now_ms();
        let attr = call.attribution;
        let mut ticket = Ticket::default();
        let mut headers = HeaderMap::new();

        // 1. The task guard (an escalation retry is part of the call it retries: the guard
        //    admitted that one moments ago and does not count it twice).
        if let Some(task) = &attr.task
            && lc.guard.enabled
            && !call.retry
        {
            let (limits, dry_run) = lc.guard.for_agent(attr.agent.as_deref());
            let fp = call.request.messages().map(|m| {
                let mut fp = Fingerprint::of_chat(m);
                fp.sampled = sampled(call.request.body());
                fp
            });
            let (verdict, run, halted_ms) = match &self.counters {
                Counters::Redis(r) => {
                    let who = (task.as_str(), attr.agent.as_deref());
                    self.shared_verdict(lc, r, who, fp.as_ref(), now).await?
                }
                Counters::Memory(_) => (
                    self.guard.observe(task, fp.as_ref(), now, limits, dry_run),
                    None,
                    None,
                ),
            };
            match verdict {
                Verdict::Continue => {}
                Verdict::Halted(reason) => {
                    self.stats.refused_halted.fetch_add(1, Ordering::Relaxed);
                    return Err(ApiError::TaskHalted {
                        task: task.clone(),
                        reason,
                    });
                }
                Verdict::Trip(halt) => {
                    self.trip(attr, task, halt, dry_run, call.request_id, halted_ms)
                        .await?;
                }
            }
            ticket.task = Some(task.clone());
            ticket.task_run = run;
            ticket.sample = fp
                .as_ref()
                .filter(|f| f.sampled && limits.sampling == Sampling::Answers)
                .map(|f| f.simhash);
        }

        // 2. Which budgets and rate limits apply.
        let rules = self.rules();
        let scopes = scopes_of(attr);
        let mut budget: Vec<Line> = Vec::new();
        let mut expire: Vec<Option<i64>> = Vec::new();
        let mut infos: Vec<LineInfo> = Vec::new();
        for r in rules.iter() {
            for s in scopes.iter().filter(|s| r.scope.covers(s)) {
                let w = window(r.period, now, &lc.time_zone);
                let key = counter_key(s, &w);
                let hard = r.hard.then_some(r.limit);
                match budget.iter().position(|l| l.key == key) {
                    // Two rules on one counter (`agent:*` and `agent:bot`): one line, the
                    // stricter hard limit, both rules' alerts.
                    Some(i) => {
                        budget[i].limit = match (budget[i].limit, hard) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        infos[i].rules.push((r.limit, r.hard, r.alert_at.clone()));
                    }
                    None => {
                        budget.push(Line {
                            key,
                            limit: hard,
                            amount: Money::ZERO,
                        });
                        expire.push(expiry(&w));
                        infos.push(LineInfo {
                            scope: s.clone(),
                            period: r.period,
                            label: w.label.clone(),
                            rules: vec![(r.limit, r.hard, r.alert_at.clone())],
                        });
                    }
                }
            }
        }
        let mut rate: Vec<RateLine> = Vec::new();
        let mut rate_scopes: Vec<String> = Vec::new();
        for r in &lc.rate_limits {
            for s in scopes.iter().filter(|s| r.scope.covers(s)) {
                for (kind, limit) in r.limits() {
                    let base = format!("r:{}:{s}", kind.as_str());
                    if rate.iter().any(|l| l.base == base) {
                        continue;
                    }
                    rate.push(RateLine {
                        base,
                        limit,
                        cost: 0,
                        window_ms: MINUTE_MS,
                    });
                    ticket.rate_kinds.push(kind);
                    rate_scopes.push(s.to_string());
                }
            }
        }
        if budget.is_empty() && rate.is_empty() {
            return Ok(Admitted {
                ticket,
                headers,
                clamped_to: None,
            });
        }

        // 3. The worst case, then one atomic reservation (clamping if allowed).
        let deployment = call.deployment;
        let enc = deployment.map_or(Encoding::O200kBase, |d| d.encoding);
        let mut est = call.request.estimate(&self.tokens, enc);
        // The provider may count the prompt higher than the local tokenizer: reserve
        // what it is expected to charge (learnt per deployment, floor 1.0).
        if let Some(d) = deployment {
            ticket.prompt_counted = Some((d.name.clone(), est.prompt_tokens));
            est.prompt_tokens = self.corrected_prompt(&d.name, est.prompt_tokens);
        }
        let tier = call.request.service_tier();
        let rates: Option<EffectiveRates> = deployment
            .and_then(|d| d.price.as_ref())
            .and_then(|p| p.rates(est.prompt_tokens, tier));
        let requested = if est.chat {
            est.max_output.unwrap_or(lc.default_max_tokens)
        } else {
            0
        };
        let mut max_out = requested;
        let mut req = ReserveRequest {
            id: call.request_id.to_string(),
            now_ms: now,
            budget,
            expire_at_ms: expire,
            rate,
            hold_ms: match self.counters {
                Counters::Redis(_) => lc.lease_ms,
                Counters::Memory(_) => lc.hold_ms,
            },
        };
        let granted = loop {
            let amount = rates
                .as_ref()
                .map(|r| worst_case(r, est.prompt_tokens, max_out))
                .unwrap_or(Money::ZERO);
            for l in &mut req.budget {
                l.amount = amount;
            }
            for (l, kind) in req.rate.iter_mut().zip(&ticket.rate_kinds) {
                l.cost = match kind {
                    RateKind::Requests => 1,
                    RateKind::Tokens => est.prompt_tokens.saturating_add(max_out),
                    RateKind::Usd => amount.nanos().max(0) as u64,
                };
            }
            match self.reserve(lc, &req).await? {
                None => break None,
                Some(Ok(g)) => break Some(g),
                Some(Err(Refusal::Budget { line, remaining })) => {
                    let clamp_to = rates
                        .as_ref()
                        .filter(|_| lc.clamp_max_tokens && est.chat)
                        .and_then(|r| affordable_output(r, est.prompt_tokens, remaining))
                        .filter(|n| *n >= lc.min_clamped_tokens && *n < max_out);
                    if let Some(n) = clamp_to {
                        max_out = n;
                        continue;
                    }
                    self.stats.refused_budget.fetch_add(1, Ordering::Relaxed);
                    let info = &infos[line];
                    let limit = req.budget[line].limit.unwrap_or(Money::ZERO);
                    return Err(ApiError::BudgetExceeded {
                        scope: info.scope.to_string(),
                        period: period_text(info.period, &info.label),
                        limit,
                        remaining,
                        needed: amount,
                    });
                }
                Some(Err(Refusal::Rate {
                    line,
                    retry_after_ms,
                    remaining,
                })) => {
                    self.stats.refused_rate.fetch_add(1, Ordering::Relaxed);
                    return Err(ApiError::RateLimited {
                        scope: rate_scopes[line].clone(),
                        kind: ticket.rate_kinds[line].as_str(),
                        limit: req.rate[line].limit,
                        remaining,
                        retry_after_ms,
                    });
                }
            }
        };
        let Some(granted) = granted else {
            // Counters unreachable and `on_counter_error = "allow"`: forwarded unbudgeted.
            return Ok(Admitted {
                ticket,
                headers,
                clamped_to: None,
            });
        };
        self.stats.reserved.fetch_add(1, Ordering::Relaxed);
        let clamped_to = (max_out < requested).then(|| {
            self.stats.clamped.fetch_add(1, Ordering::Relaxed);
            put(
                &mut headers,
                headers::MAX_TOKENS_CLAMPED,
                max_out.to_string(),
            );
            max_out
        });
        success_headers(&mut headers, &req, &granted, &ticket.rate_kinds);
        if matches!(self.counters, Counters::Redis(_)) && !granted.reservation.budget.is_empty() {
            self.leases.open(&granted.reservation.id, now);
        }
        ticket.reservation = Some(granted.reservation);
        ticket.lines = infos;
        Ok(Admitted {
            ticket,
            headers,
            clamped_to,
        })
    }

    /// Reserve, reseeding a store that lost its data. `None`: the store is unreachable and
    /// the config says to forward anyway.
    async fn reserve(
        &self,
        lc: &LimitsConfig,
        req: &ReserveRequest,
    ) -> Result<Option<Result<Reserved, Refusal>>, ApiError> {
        let unreachable = |e: CounterError| {
            if lc.fail_open {
                tracing::error!(error = %e, "budget counters unreachable; forwarding without a reservation");
                Ok(None)
            } else {
                Err(ApiError::CountersUnavailable(e.0))
            }
        };
        match self.counters.reserve(req).await {
            Ok(r) => Ok(Some(r)),
            Err(ReserveError::Store(e)) => unreachable(e),
            Err(ReserveError::Unseeded) => {
                self.reseed(lc, now_ms()).await?;
                match self.counters.reserve(req).await {
                    Ok(r) => Ok(Some(r)),
                    Err(ReserveError::Store(e)) => unreachable(e),
                    Err(ReserveError::Unseeded) => Err(ApiError::CountersUnavailable(
                        "the counters were reset again while seeding".into(),
                    )),
                }
            }
        }
    }
}

fn put(h: &mut HeaderMap, name: &'static str, v: String) {
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.insert(name, v);
    }
}

/// `x-tollgate-budget-remaining-usd`: the least any hard budget of the request has left
/// with its worst case held; `x-tollgate-ratelimit-remaining-*`: the least left per kind.
fn success_headers(h: &mut HeaderMap, req: &ReserveRequest, g: &Reserved, kinds: &[RateKind]) {
    if let Some(min) = req
        .budget
        .iter()
        .zip(&g.budget_remaining)
        .filter(|(l, _)| l.limit.is_some())
        .map(|(_, r)| *r)
        .min()
    {
        put(h, headers::BUDGET_REMAINING_USD, min.to_string());
    }
    for kind in [RateKind::Requests, RateKind::Tokens, RateKind::Usd] {
        if let Some(min) = kinds
            .iter()
            .zip(&g.rate_remaining)
            .filter(|(k, _)| **k == kind)
            .map(|(_, r)| *r)
            .min()
            && let Ok(name) = http::HeaderName::from_bytes(
                format!("{}{}", headers::RATELIMIT_REMAINING_PREFIX, kind.as_str()).as_bytes(),
            )
            && let Ok(v) = HeaderValue::from_str(&min.to_string())
        {
            h.insert(name, v);
        }
    }
}
