//! Provider prompt caching on the request path: the shape stage asks [`PromptCache`] to
//! place the breakpoints that pay (see `tollgate_domain::prompt_cache` for the rule)
//! into a same-format request, and for OpenAI upstreams to set a `prompt_cache_key`.
//!
//! A translated request (another format upstream) gets no breakpoints: the client's own
//! markers are translated as far as the target allows, but the gateway places none.

use crate::config::{Deployment, UpstreamKind};
use crate::ingress::IngressRequest;
use crate::tokens::TokenCache;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use tollgate_domain::ledger::PrefixRecord;
use tollgate_domain::prompt_cache::{
    self, Family, Mode, Part, PartKind, Plan, PrefixTracker, RuleTable,
};
use tollgate_providers::prompt_cache::{self as wire, BodyPart};
use tollgate_providers::translate::Format;

/// The prefixes seen, and the rules per model family.
pub struct PromptCache {
    tracker: Mutex<PrefixTracker>,
    rules: RuleTable,
}

fn scope_hash(scope: &str, deployment: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    scope.hash(&mut h);
    deployment.hash(&mut h);
    h.finish()
}

/// What the shape stage did with a request's prompt caching.
#[derive(Debug, Default)]
pub struct Shaped {
    /// Breakpoints placed, with the tokens the provider should write and read.
    pub plan: Option<Plan>,
    /// An OpenAI `prompt_cache_key` was set.
    pub openai_key: bool,
}

impl PromptCache {
    /// Remember at most `prefixes` prompt prefixes.
    pub fn new(prefixes: usize) -> Result<PromptCache, String> {
        Ok(PromptCache {
            tracker: Mutex::new(PrefixTracker::new(prefixes)),
            rules: RuleTable::builtin()?,
        })
    }

    /// Prefixes remembered.
    pub fn tracked(&self) -> usize {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The request's stable prefix as it will be sent: the tools and the system prompt
    /// (OpenAI: the leading system/developer messages), as a hash and a token count,
    /// for the ledger (what-if replay simulates prompt caching from it). `None` without
    /// one, for embeddings and for the Responses API.
    pub fn stable_prefix(
        &self,
        req: &IngressRequest,
        d: &Deployment,
        tokens: &TokenCache,
    ) -> Option<PrefixRecord> {
        let enc = d.encoding;
        let body = req.body();
        let (hash, n) = match req.format() {
            _ if matches!(req, IngressRequest::Embeddings(_)) => return None,
            Format::Responses => return None,
            Format::OpenAi => {
                let mut n = body
                    .get("tools")
                    .map_or(0, |t| tokens.get_or(enc, t, || enc.count(&t.to_string())));
                if let Some(serde_json::Value::Array(ms)) = body.get("messages") {
                    for m in ms.iter().take_while(|m| {
                        matches!(
                            m.get("role").and_then(serde_json::Value::as_str),
                            Some("system" | "developer")
                        )
                    }) {
                        n += tokens.get_or(enc, m, || {
                            enc.count_chat_prompt(std::slice::from_ref(m))
                                .saturating_sub(3)
                        });
                    }
                }
                (wire::openai_stable_prefix(body), n)
            }
            format => {
                let parts = wire::parts(format, body)?;
                let mut h = 0u128;
                let mut n = 0u64;
                for p in parts
                    .iter()
                    .take_while(|p| matches!(p.kind, PartKind::Tools | PartKind::System))
                {
                    h = prompt_cache::chain(h, wire::part_hash(p.kind, p.value));
                    n += tokens.get_or(enc, p.value, || enc.count(&p.value.to_string()));
                }
                (h, n)
            }
        };
        (n > 0).then(|| PrefixRecord {
            hash: format!("{hash:032x}"),
            tokens: n,
        })
    }

    /// Place breakpoints into `req` (served by `d`) where they pay under `mode`.
    /// `scope`: the tenant (caches are per tenant and deployment).
    pub fn shape(
        &self,
        req: &mut IngressRequest,
        d: &Deployment,
        scope: &str,
        mode: Mode,
        tokens: &TokenCache,
        now_ms: i64,
    ) -> Shaped {
        let format = req.format();
        if mode == Mode::Off
            || format != d.upstream.kind.format()
            || matches!(req, IngressRequest::Embeddings(_))
        {
            return Shaped::default();
        }
        if d.upstream.kind == UpstreamKind::OpenAi {
            // OpenAI caches prefixes of 1,024+ tokens by itself; a key keeps requests that
            // share one on the same cache. Only api.openai.com is known to take the field
            // (other OpenAI-compatible servers may refuse it), unless `always`.
            let official = d.upstream.base_url.contains("api.openai.com");
            if !(official || mode == Mode::Always) {
                return Shaped::default();
            }
            let body = req.body_mut();
            let prefix = wire::openai_stable_prefix(body);
            let key = format!(
                "tg-{:016x}{:016x}",
                scope_hash(scope, &d.name),
                (prefix as u64) ^ ((prefix >> 64) as u64)
            );
            return Shaped {
                plan: None,
                openai_key: wire::set_openai_key(body, &key),
            };
        }
        let Some(mut rules) = self.rules.lookup(&d.model).cloned() else {
            return Shaped::default();
        };
        if rules.family == Family::Openai {
            return Shaped::default();
        }
        if let Some(min) = d.prompt_cache_min_tokens {
            rules.min_tokens = min;
        }
        if format == Format::Bedrock {
            // Bedrock's cachePoint takes the default TTL.
            rules.one_hour = false;
        }
        let enc = d.encoding;
        let parts: Vec<Part> = {
            let Some(body_parts) = wire::parts(format, req.body()) else {
                return Shaped::default();
            };
            body_parts
                .iter()
                .map(|p: &BodyPart<'_>| Part {
                    kind: p.kind,
                    // Counted as admission counts them (and cached with the same keys).
                    tokens: match p.kind {
                        PartKind::Message { .. } => tokens.get_or(enc, p.value, || {
                            enc.count_chat_prompt(std::slice::from_ref(p.value))
                                .saturating_sub(3)
                        }),
                        _ => tokens.get_or(enc, p.value, || enc.count(&p.value.to_string())),
                    },
                    hash: wire::part_hash(p.kind, p.value),
                    client_marker: p.client_marker,
                })
                .collect()
        };
        let total: u64 = parts.iter().map(|p| p.tokens).sum();
        let Some(rates) = d.price.as_ref().and_then(|p| p.rates(total, None)) else {
            return Shaped::default();
        };
        let plan = {
            let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
            prompt_cache::plan(
                &mut t,
                scope_hash(scope, &d.name),
                &parts,
                &rules,
                &rates,
                mode,
                now_ms,
            )
        };
        if plan.breakpoints.is_empty() {
            return Shaped::default();
        }
        let written = wire::apply(format, req.body_mut(), &plan.breakpoints);
        Shaped {
            plan: (written > 0).then_some(plan),
            openai_key: false,
        }
    }
}
