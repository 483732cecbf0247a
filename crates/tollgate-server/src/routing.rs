//! Tiered routing on the hot path: a request asking for a routed model name (`auto`) is
//! scored by the route's router and sent to a tier of its ladder.
//!
//! [`decide`] runs in the pipeline's resolve step, before admission, so budgets and rate
//! limits reserve against the chosen deployment's prices. It reads the prompt straight out
//! of the client's JSON (system/developer and user turns, [`prompt_text`]'s rule), scores
//! it with a per-thread scratch buffer (no IO, a handful of allocations), applies
//! stickiness (a conversation stays on its tier unless switching beats its warm cache) and
//! says which deployment serves it: the chosen tier (`enforce`) or the route's default
//! (`shadow`). The meter then records the decision and what the heaviest and the chosen
//! tiers would have cost for the row's token counts.
//!
//! [`prompt_text`]: tollgate_domain::routing::prompt_text

use crate::config::{Deployment, Route};
use crate::headers;
use crate::ingress::IngressRequest;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use tollgate_domain::ledger::{RouteMode, RouteSample};
use tollgate_domain::pricing::ModelPrice;
use tollgate_domain::routing::check::Failure;
use tollgate_domain::routing::features::Scratch;
use tollgate_domain::routing::sample::Sample;
use tollgate_domain::routing::sticky::{
    self, CallEstimate, StickyMap, Stuck, TierRates, should_switch,
};

/// Per-gateway routing state: the stickiness map (bounded; a std mutex never held across
/// an `.await`).
pub struct RoutingState {
    sticky: Mutex<StickyMap>,
}

impl RoutingState {
    pub fn new(capacity: usize) -> RoutingState {
        RoutingState {
            sticky: Mutex::new(StickyMap::new(capacity)),
        }
    }

    fn get(&self, id: u64) -> Option<Stuck> {
        self.sticky
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
    }

    /// Remember the tier a conversation's call went to and its size.
    pub fn remember(&self, id: u64, s: Stuck) {
        self.sticky
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(id, s);
    }

    pub fn len(&self) -> usize {
        self.sticky.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A routing decision travelling with the request (in the `Meter`).
#[derive(Debug, Clone)]
pub struct Routed {
    pub route: Arc<Route>,
    /// In [0, 1].
    pub score: f64,
    /// The tier the router wanted before stickiness.
    pub wanted: usize,
    /// The tier chosen (after stickiness).
    pub tier: usize,
    pub mode: RouteMode,
    /// The deployment that serves the request.
    pub served: Arc<Deployment>,
    /// The conversation id for stickiness, when the route is sticky.
    pub conversation: Option<u64>,
    /// This call's answer failed the escalation check (set on the first call's row).
    pub escalated: Option<Failure>,
    /// The hashed feature vector, when samples are recorded.
    pub sample: Option<RouteSample>,
}

impl Routed {
    pub fn tier_deployment(&self) -> &Arc<Deployment> {
        &self.route.tiers[self.tier]
    }

    pub fn heavy_deployment(&self) -> &Arc<Deployment> {
        &self.route.tiers[self.route.heaviest()]
    }

    /// `x-tollgate-route`, `-route-tier`, `-route-deployment`, `-route-score`,
    /// `-route-mode` on a routed answer.
    pub fn write_headers(&self, h: &mut http::HeaderMap) {
        let mut set = |name: &'static str, v: &str| {
            if let Ok(v) = http::HeaderValue::from_str(v) {
                h.insert(name, v);
            }
        };
        set(headers::ROUTE, &self.route.name);
        set(headers::ROUTE_TIER, &self.tier.to_string());
        set(headers::ROUTE_DEPLOYMENT, &self.tier_deployment().name);
        set(headers::ROUTE_SCORE, &format!("{:.4}", self.score));
        set(headers::ROUTE_MODE, self.mode.as_str());
    }
}

/// The (role, text) turns of a request, borrowed from its JSON body, in order. The
/// first `system` block and first user turn identify a conversation.
pub fn turns(req: &IngressRequest) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let (body, system_key) = match req {
        IngressRequest::Chat(r) => (&r.body, None),
        IngressRequest::Responses(r) => (&r.chat.body, None),
        IngressRequest::Messages(r) => (&r.body, Some("system")),
        IngressRequest::Converse(r) => (&r.body, Some("system")),
        IngressRequest::Embeddings(_) => return out,
    };
    if let Some(k) = system_key {
        push_content(&mut out, "system", body.get(k));
    }
    if let Some(Value::Array(messages)) = body.get("messages") {
        for m in messages {
            let role = m.get("role").and_then(Value::as_str).unwrap_or("");
            push_content(&mut out, role, m.get("content"));
        }
    }
    out
}

/// A content field: a string, or blocks carrying `text` (OpenAI `{type: text, text}`,
/// Anthropic text blocks, Bedrock `{text}`).
fn push_content<'a>(out: &mut Vec<(&'a str, &'a str)>, role: &'a str, content: Option<&'a Value>) {
    match content {
        Some(Value::String(s)) => out.push((role, s.as_str())),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                if let Some(t) = b.get("text").and_then(Value::as_str) {
                    out.push((role, t));
                }
            }
        }
        _ => {}
    }
}

fn tier_rates(p: Option<&Arc<ModelPrice>>, prompt_tokens: u64) -> Option<TierRates> {
    let r = p?.rates(prompt_tokens, None)?;
    Some(TierRates {
        input: r.input,
        cache_read: r.cache_read,
        output: r.output,
    })
}

thread_local! {
    static SAMPLE_SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Decide a routed request. `task`: the request's task id (it identifies the
/// conversation when present). `shadow_of`: the deployment the client asked for when
/// routing only shadows a concrete model (`x-tollgate-route` header). `record`: also take
/// the request's hashed feature vector (`routing.record_samples`).
pub fn decide(
    state: &RoutingState,
    route: &Arc<Route>,
    req: &IngressRequest,
    task: Option<&str>,
    shadow_of: Option<Arc<Deployment>>,
    record: bool,
) -> Routed {
    let turns = turns(req);
    let text = tollgate_domain::routing::prompt_text(turns.iter().copied());
    let d = route.router.decide(&text, &route.policy);
    let sample = record.then(|| {
        let s = SAMPLE_SCRATCH.with(|sc| match sc.try_borrow_mut() {
            Ok(mut sc) => Sample::of(route.router.spec(), &text, &mut sc),
            Err(_) => Sample::of(route.router.spec(), &text, &mut Scratch::default()),
        });
        RouteSample {
            model: route.model_id.clone(),
            tokens: s.tokens,
            features: s.to_json(),
        }
    });
    let wanted = d.tier.min(route.heaviest());
    let conversation = route.sticky.then(|| {
        let system = turns.iter().find(|t| matches!(t.0, "system" | "developer"));
        let user = turns.iter().find(|t| t.0 == "user");
        match task {
            Some(t) => sticky::conversation_id(&route.name, ["task", t]),
            None => sticky::conversation_id(
                &route.name,
                [
                    "conversation",
                    system.map_or("", |s| s.1),
                    user.map_or("", |u| u.1),
                ],
            ),
        }
    });
    let mut tier = wanted;
    if let Some(id) = conversation
        && let Some(prev) = state.get(id)
        && prev.tier < route.tiers.len()
        && prev.tier != wanted
    {
        let cur = tier_rates(route.tiers[prev.tier].price.as_ref(), prev.prompt_tokens);
        let new = tier_rates(route.tiers[wanted].price.as_ref(), prev.prompt_tokens);
        let call = CallEstimate {
            prompt_tokens: prev.prompt_tokens,
            cached_prefix_tokens: prev.prompt_tokens,
            output_tokens: prev.output_tokens,
        };
        // Unpriced tiers: nothing to weigh, follow the router.
        if let (Some(cur), Some(new)) = (cur, new)
            && !should_switch(prev.tier, wanted, &cur, &new, &call)
        {
            tier = prev.tier;
        }
    }
    let (mode, served) = match (shadow_of, route.mode) {
        (Some(d), _) => (RouteMode::Shadow, d),
        (None, RouteMode::Shadow) => (RouteMode::Shadow, route.tiers[route.default_tier].clone()),
        (None, RouteMode::Enforce) => (RouteMode::Enforce, route.tiers[tier].clone()),
    };
    Routed {
        route: route.clone(),
        score: d.score,
        wanted,
        tier,
        mode,
        served,
        conversation,
        escalated: None,
        sample,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;
    use crate::ingress::Ingress;
    use serde_json::json;
    use std::collections::HashMap;

    fn parse(ingress: Ingress, v: Value) -> IngressRequest {
        IngressRequest::parse(&ingress, v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn turns_come_out_of_every_format() {
        let chat = parse(
            Ingress::ChatCompletions,
            json!({"model": "auto", "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "answer"},
                {"role": "tool", "tool_call_id": "1", "content": "out"},
                {"role": "user", "content": "c"}]}),
        );
        assert_eq!(
            turns(&chat),
            [
                ("system", "sys"),
                ("user", "a"),
                ("user", "b"),
                ("assistant", "answer"),
                ("tool", "out"),
                ("user", "c")
            ]
        );
        let msgs = parse(
            Ingress::Messages,
            json!({"model": "auto", "max_tokens": 5, "system": [{"type": "text", "text": "sys"}],
                   "messages": [{"role": "user", "content": "q"}]}),
        );
        assert_eq!(turns(&msgs), [("system", "sys"), ("user", "q")]);
        let conv = parse(
            Ingress::Converse {
                model: "auto".into(),
                stream: false,
            },
            json!({"system": [{"text": "sys"}], "messages": [{"role": "user", "content": [{"text": "q"}]}]}),
        );
        assert_eq!(turns(&conv), [("system", "sys"), ("user", "q")]);
        let emb = parse(Ingress::Embeddings, json!({"model": "auto", "input": "x"}));
        assert!(turns(&emb).is_empty());
    }

    fn route() -> Arc<Route> {
        let text = r#"
            [[upstreams]]
            name = "u"
            base_url = "http://127.0.0.1:1/v1"
            [[deployments]]
            name = "light"
            upstream = "u"
            model = "gpt-4o-mini"
            [[deployments]]
            name = "heavy"
            upstream = "u"
            model = "gpt-4o"
            [[routes]]
            name = "auto"
            tiers = ["light", "heavy"]
            thresholds = [0.6]
        "#;
        let env = HashMap::new();
        let cfg = RawConfig::from_toml(text, &env)
            .unwrap()
            .validate(&env)
            .unwrap();
        cfg.routes["auto"].clone()
    }

    #[test]
    fn a_conversation_is_its_task_or_its_system_prompt_and_first_question() {
        let r = route();
        let state = RoutingState::new(100);
        let req = |msgs: Value| {
            parse(
                Ingress::ChatCompletions,
                json!({"model": "auto", "messages": msgs}),
            )
        };
        let first =
            req(json!([{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"}]));
        let later = req(
            json!([{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]),
        );
        let other =
            req(json!([{"role": "system", "content": "S"}, {"role": "user", "content": "Q9"}]));
        let id = |x: &IngressRequest, task| decide(&state, &r, x, task, None, false).conversation;
        assert_eq!(id(&first, None), id(&later, None));
        assert_ne!(id(&first, None), id(&other, None));
        assert_eq!(id(&first, Some("t")), id(&other, Some("t")));
        assert_ne!(id(&first, Some("t")), id(&first, None));
        // Shadowing a concrete deployment serves it, whatever the tier.
        let heavy = r.tiers[1].clone();
        let d = decide(&state, &r, &first, None, Some(heavy), true);
        assert_eq!(
            (d.mode, d.served.name.as_str()),
            (RouteMode::Shadow, "heavy")
        );
        let sample = d.sample.unwrap();
        assert_eq!(sample.model, "embedded");
        assert!(!sample.features.contains("Q1"));
    }
}
