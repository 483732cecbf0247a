//! Provider prompt caching, decided on cost: where to put cache breakpoints the client
//! did not, and whether they pay.
//!
//! A breakpoint makes the provider write the prompt's prefix up to it into its cache at
//! a premium (Anthropic and Bedrock: 1.25× the input rate for 5 minutes, 2× for an
//! hour) so later calls with the same prefix read it at a discount (0.1×). It pays only
//! if the prefix comes back, within the TTL, often enough: with `E` expected reads of a
//! write, a breakpoint with TTL `T` is worth
//!
//! ```text
//! E_T × (input − cache_read)  −  (cache_write_T − input)      per prefix token
//! ```
//!
//! and it is placed only when that is positive (the best TTL wins; `always` places it
//! whenever the prefix is long enough). `E` comes from what was seen: [`PrefixTracker`]
//! keeps, per scope (tenant and deployment) and prefix hash, the gaps between arrivals
//! of the same prefix, and per scope and kind of prefix the share of prefixes that came
//! back at all. With `p_T` the smoothed share of gaps shorter than `T`, each read
//! refreshing the provider's TTL, the reads that follow a write form a geometric chain:
//! `E_T = p_T / (1 − p_T)`. A prefix never seen before gets its scope's record for that
//! kind, unsmoothed, so a tenant that never repeats itself gets no breakpoints.
//!
//! Two kinds of prefix are tracked: [`PrefixKind::System`] (tools and system prompt:
//! what FAQ- and handbook-style workloads share) and [`PrefixKind::History`] (the whole
//! prompt as sent: what an agent's next call extends; it "comes back" when a later
//! prompt starts with it). Rules per model family (minimum cacheable tokens, most
//! breakpoints, TTLs, fields) are data ([`RuleTable`]); below the minimum nothing is
//! placed. The client's own markers win: ours go only after its last one, with a TTL no
//! longer than its, within the limit. Pure: `now` is an argument.

use crate::money::Rate;
use crate::pricing::EffectiveRates;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

/// The built-in rules (`data/prompt_cache.json`).
pub const DEFAULT_RULES_JSON: &str = include_str!("../data/prompt_cache.json");

/// How long a breakpoint asks the provider to keep the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ttl {
    FiveMinutes,
    OneHour,
}

impl Ttl {
    pub fn ms(self) -> i64 {
        match self {
            Ttl::FiveMinutes => 300_000,
            Ttl::OneHour => 3_600_000,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Ttl::FiveMinutes => "5m",
            Ttl::OneHour => "1h",
        }
    }
}

/// The provider family a rule is for (how breakpoints are written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Anthropic `cache_control` (direct or on Bedrock).
    Claude,
    /// Amazon Nova on Bedrock (`cachePoint`, default TTL only, no tools).
    Nova,
    /// OpenAI: automatic caching; no breakpoints (a `prompt_cache_key` routes it).
    Openai,
}

/// One model family's caching rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub family: Family,
    /// The shortest prefix (tokens) the provider caches.
    pub min_tokens: u64,
    /// Most breakpoints one request may carry (the client's included).
    pub max_breakpoints: usize,
    pub five_minutes: bool,
    pub one_hour: bool,
    pub tools: bool,
    pub system: bool,
    pub messages: bool,
    /// Longest prefix the provider caches (Nova: 32k), if limited.
    pub max_cached_tokens: Option<u64>,
    /// The provider refuses a breakpoint right after a tool result (Nova).
    pub no_breakpoint_after_tool_result: bool,
}

#[derive(Deserialize)]
struct RawRule {
    #[serde(rename = "match")]
    pattern: String,
    family: Family,
    min_tokens: u64,
    max_breakpoints: usize,
    #[serde(default)]
    ttls: Vec<String>,
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    max_cached_tokens: Option<u64>,
    #[serde(default)]
    no_breakpoint_after_tool_result: bool,
}

#[derive(Deserialize)]
struct RawTable {
    rules: Vec<RawRule>,
}

/// Rules by model-id pattern; the first match wins.
#[derive(Debug, Clone)]
pub struct RuleTable {
    rules: Vec<(String, Rules)>,
}

impl RuleTable {
    /// Parse the JSON form of `data/prompt_cache.json`.
    pub fn from_json(text: &str) -> Result<RuleTable, String> {
        let raw: RawTable = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut rules = Vec::new();
        for r in raw.rules {
            for t in &r.ttls {
                if t != "5m" && t != "1h" {
                    return Err(format!("rule {:?}: unknown ttl {t:?}", r.pattern));
                }
            }
            let has = |f: &str| r.fields.iter().any(|x| x == f);
            rules.push((
                r.pattern.to_ascii_lowercase(),
                Rules {
                    family: r.family,
                    min_tokens: r.min_tokens,
                    max_breakpoints: r.max_breakpoints,
                    five_minutes: r.ttls.iter().any(|t| t == "5m"),
                    one_hour: r.ttls.iter().any(|t| t == "1h"),
                    tools: has("tools"),
                    system: has("system"),
                    messages: has("messages"),
                    max_cached_tokens: r.max_cached_tokens,
                    no_breakpoint_after_tool_result: r.no_breakpoint_after_tool_result,
                },
            ));
        }
        Ok(RuleTable { rules })
    }

    /// The built-in table.
    pub fn builtin() -> Result<RuleTable, String> {
        RuleTable::from_json(DEFAULT_RULES_JSON)
    }

    /// The rules for an upstream model id.
    pub fn lookup(&self, model: &str) -> Option<&Rules> {
        let m = model.to_ascii_lowercase();
        self.rules
            .iter()
            .find(|(p, _)| m.contains(p.as_str()))
            .map(|(_, r)| r)
    }
}

/// `off | auto | always`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    /// Place breakpoints where the expected reads pay for the write premium.
    Auto,
    /// Place them wherever the prefix is long enough.
    Always,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "off" => Some(Mode::Off),
            "auto" => Some(Mode::Auto),
            "always" => Some(Mode::Always),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Auto => "auto",
            Mode::Always => "always",
        }
    }
}

/// What a part of the prompt is (in the provider's rendered order: tools, system,
/// messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    Tools,
    System,
    /// A message; `tool_result`: it carries a tool result.
    Message {
        tool_result: bool,
    },
}

/// One part of the prompt, as the format adapter and the token counter see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub kind: PartKind,
    pub tokens: u64,
    /// Hash of this part alone; prefixes are hashed from these.
    pub hash: u128,
    /// The client put a breakpoint at the end of this part, with this TTL.
    pub client_marker: Option<Ttl>,
}

/// Which prefix a breakpoint closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrefixKind {
    /// Tools and system prompt.
    System,
    /// The prompt as sent, up to its last message.
    History,
}

/// A breakpoint to place: after part `part`, with `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breakpoint {
    pub part: usize,
    pub ttl: Ttl,
    pub kind: PrefixKind,
}

/// What the planner decided for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// In part order.
    pub breakpoints: Vec<Breakpoint>,
    /// Prompt tokens the gateway expects the provider to write to its cache, and to read
    /// from it, on this call (to verify against what it reports).
    pub expected_write: u64,
    pub expected_read: u64,
}

/// Gaps between arrivals of one prefix.
#[derive(Debug, Clone, Copy, Default)]
struct Gaps {
    total: u32,
    within_5m: u32,
    within_1h: u32,
}

impl Gaps {
    fn add(&mut self, gap_ms: i64) {
        self.total = self.total.saturating_add(1);
        if gap_ms < Ttl::FiveMinutes.ms() {
            self.within_5m = self.within_5m.saturating_add(1);
        }
        if gap_ms < Ttl::OneHour.ms() {
            self.within_1h = self.within_1h.saturating_add(1);
        }
    }

    fn within(&self, ttl: Ttl) -> u32 {
        match ttl {
            Ttl::FiveMinutes => self.within_5m,
            Ttl::OneHour => self.within_1h,
        }
    }
}

#[derive(Debug, Clone)]
struct PrefixState {
    last_ms: i64,
    gaps: Gaps,
    tokens: u64,
    /// Until when the provider presumably holds it (we placed a breakpoint on it, or it
    /// was read since): `None` if we never did.
    cached_until: Option<i64>,
    tick: u64,
}

/// Per scope and kind: how many distinct prefixes arrived, and how many of those came
/// back within each TTL (the prior for a prefix never seen before).
#[derive(Debug, Clone, Copy, Default)]
struct KindStats {
    prefixes: u32,
    came_back: Gaps,
}

/// Bounded memory of prefixes per scope (LRU).
#[derive(Debug)]
pub struct PrefixTracker {
    capacity: usize,
    map: HashMap<(u64, u128), PrefixState>,
    lru: BTreeMap<u64, (u64, u128)>,
    kinds: HashMap<(u64, PrefixKind), KindStats>,
    tick: u64,
}

/// The hash of a prefix: the parts' hashes chained.
pub fn chain(prev: u128, part: u128) -> u128 {
    // A simple, well-mixed combination of two 128-bit hashes (not a security boundary:
    // it only names prefixes the tracker has seen).
    let x = prev.rotate_left(47) ^ part.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    x.wrapping_mul(0xff51_afd7_ed55_8ccd_c4ce_b9fe_1a85_ec53) ^ (x >> 61)
}

impl PrefixTracker {
    /// Remember at most `capacity` prefixes (LRU).
    pub fn new(capacity: usize) -> PrefixTracker {
        PrefixTracker {
            capacity: capacity.max(16),
            map: HashMap::new(),
            lru: BTreeMap::new(),
            kinds: HashMap::new(),
            tick: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn touch(&mut self, key: (u64, u128)) {
        self.tick += 1;
        if let Some(s) = self.map.get_mut(&key) {
            self.lru.remove(&s.tick);
            s.tick = self.tick;
            self.lru.insert(self.tick, key);
        }
    }

    /// Record an arrival of `prefix` (of `kind`, `tokens` long) in `scope`; returns the
    /// state before it, if it was known.
    fn arrive(
        &mut self,
        scope: u64,
        kind: PrefixKind,
        prefix: u128,
        tokens: u64,
        now_ms: i64,
    ) -> Option<(i64, Option<i64>)> {
        let key = (scope, prefix);
        if let Some(s) = self.map.get_mut(&key) {
            let before = (s.last_ms, s.cached_until);
            let gap = now_ms.saturating_sub(s.last_ms);
            let first_return = s.gaps.total == 0;
            s.gaps.add(gap);
            s.last_ms = now_ms;
            s.tokens = tokens;
            if first_return {
                let k = self.kinds.entry((scope, kind)).or_default();
                k.came_back.add(gap);
            }
            self.touch(key);
            return Some(before);
        }
        if self.map.len() >= self.capacity
            && let Some((_, old)) = self.lru.pop_first()
        {
            self.map.remove(&old);
        }
        self.tick += 1;
        self.map.insert(
            key,
            PrefixState {
                last_ms: now_ms,
                gaps: Gaps::default(),
                tokens,
                cached_until: None,
                tick: self.tick,
            },
        );
        self.lru.insert(self.tick, key);
        let k = self.kinds.entry((scope, kind)).or_default();
        k.prefixes = k.prefixes.saturating_add(1);
        None
    }

    /// A prefix seen before, looked up without counting an arrival (a later prompt's
    /// boundary that may extend an earlier prompt).
    fn peek(&self, scope: u64, prefix: u128) -> Option<&PrefixState> {
        self.map.get(&(scope, prefix))
    }

    /// `E_T`: expected reads of a write of `prefix` now, from its own gaps (smoothed) or,
    /// new, its scope's record for the kind.
    fn expected_reads(&self, scope: u64, kind: PrefixKind, prefix: u128, ttl: Ttl) -> f64 {
        let p = match self.map.get(&(scope, prefix)) {
            Some(s) if s.gaps.total > 0 => {
                (f64::from(s.gaps.within(ttl)) + 1.0) / (f64::from(s.gaps.total) + 2.0)
            }
            _ => match self.kinds.get(&(scope, kind)) {
                Some(k) if k.prefixes > 0 => {
                    f64::from(k.came_back.within(ttl)) / f64::from(k.prefixes)
                }
                _ => 0.0,
            },
        };
        let p = p.clamp(0.0, 0.95);
        p / (1.0 - p)
    }

    /// The provider holds `prefix` until `until` (a breakpoint placed or a read).
    fn cached(&mut self, scope: u64, prefix: u128, until: i64) {
        if let Some(s) = self.map.get_mut(&(scope, prefix)) {
            s.cached_until = Some(s.cached_until.map_or(until, |u| u.max(until)));
        }
    }
}

/// Net value per prefix token of a write with `ttl` and `reads` expected reads, in
/// atto-USD (a heuristic for the decision; never money on the ledger).
fn net_value(rates: &EffectiveRates, ttl: Ttl, reads: f64) -> f64 {
    let a = |r: Rate| r.atto() as f64;
    let write = match ttl {
        Ttl::FiveMinutes => rates.cache_write_5m,
        Ttl::OneHour => rates.cache_write_1h,
    };
    reads * (a(rates.input) - a(rates.cache_read)) - (a(write) - a(rates.input))
}

/// The TTL worth placing for a prefix, if any.
fn choose(
    tracker: &PrefixTracker,
    rules: &Rules,
    rates: &EffectiveRates,
    mode: Mode,
    (scope, kind, prefix): (u64, PrefixKind, u128),
    longest: Option<Ttl>,
) -> Option<Ttl> {
    let mut best: Option<(Ttl, f64)> = None;
    for ttl in [Ttl::FiveMinutes, Ttl::OneHour] {
        let allowed = match ttl {
            Ttl::FiveMinutes => rules.five_minutes,
            Ttl::OneHour => rules.one_hour,
        };
        if !allowed || longest.is_some_and(|l| ttl > l) {
            continue;
        }
        let v = net_value(rates, ttl, tracker.expected_reads(scope, kind, prefix, ttl));
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((ttl, v));
        }
    }
    match (mode, best) {
        (Mode::Off, _) | (_, None) => None,
        (Mode::Always, Some((t, _))) => Some(t),
        (Mode::Auto, Some((t, v))) => (v > 0.0).then_some(t),
    }
}

/// Plan the breakpoints of one request. `scope` identifies the tenant and deployment
/// (caches are per both); `rates` are the deployment's at this prompt length. Records
/// the request's prefixes in `tracker` either way (so `auto` learns).
pub fn plan(
    tracker: &mut PrefixTracker,
    scope: u64,
    parts: &[Part],
    rules: &Rules,
    rates: &EffectiveRates,
    mode: Mode,
    now_ms: i64,
) -> Plan {
    let mut out = Plan::default();
    if parts.is_empty() {
        return out;
    }
    // Prefix hashes and token counts at every part boundary.
    let mut hashes = Vec::with_capacity(parts.len());
    let mut totals = Vec::with_capacity(parts.len());
    let (mut h, mut t) = (0u128, 0u64);
    for p in parts {
        h = chain(h, p.hash);
        t = t.saturating_add(p.tokens);
        hashes.push(h);
        totals.push(t);
    }
    // What the provider presumably holds already: the longest prefix of this prompt we
    // marked before (or that was read since) that is still within its TTL.
    let mut read_at: Option<usize> = None;
    for i in (0..parts.len()).rev() {
        if let Some(s) = tracker.peek(scope, hashes[i])
            && s.cached_until.is_some_and(|u| u > now_ms)
        {
            read_at = Some(i);
            break;
        }
    }
    // Arrivals: an earlier prompt this one extends (its history prefix came back), and
    // this prompt's own prefixes. Only message boundaries can be an earlier prompt's
    // end: the system prefix recurring is counted once, as a system prefix, below.
    for i in 0..parts.len().saturating_sub(1) {
        if matches!(parts[i].kind, PartKind::Message { .. })
            && tracker.peek(scope, hashes[i]).is_some()
        {
            tracker.arrive(scope, PrefixKind::History, hashes[i], totals[i], now_ms);
        }
    }
    let last_system = parts
        .iter()
        .rposition(|p| matches!(p.kind, PartKind::Tools | PartKind::System));
    if let Some(i) = last_system {
        tracker.arrive(scope, PrefixKind::System, hashes[i], totals[i], now_ms);
    }
    let last = parts.len() - 1;
    if matches!(parts[last].kind, PartKind::Message { .. }) {
        tracker.arrive(
            scope,
            PrefixKind::History,
            hashes[last],
            totals[last],
            now_ms,
        );
    }
    if let Some(i) = read_at {
        out.expected_read = totals[i];
    }

    // The client's markers win: ours only after its last, never longer-lived, within
    // the limit.
    let client: Vec<(usize, Ttl)> = parts
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.client_marker.map(|t| (i, t)))
        .collect();
    let room = rules.max_breakpoints.saturating_sub(client.len());
    if mode == Mode::Off || room == 0 {
        refresh_reads(tracker, scope, &hashes, read_at, now_ms);
        return out;
    }
    let after = client.last().map(|(i, _)| *i);
    let mut longest = client.last().map(|(_, t)| *t);
    let cap = rules.max_cached_tokens.unwrap_or(u64::MAX);
    let fits = |i: usize| totals[i] >= rules.min_tokens && totals[i] <= cap;
    let mut candidates: Vec<(usize, PrefixKind)> = Vec::new();
    if let Some(i) = last_system
        && fits(i)
        && after.is_none_or(|a| i > a)
        && match parts[i].kind {
            PartKind::Tools => rules.tools,
            _ => rules.system,
        }
    {
        candidates.push((i, PrefixKind::System));
    }
    if rules.messages {
        // The last message, or (where the provider refuses one right after a tool
        // result) the last message that is not one.
        let at = (0..parts.len()).rev().find(|&i| match parts[i].kind {
            PartKind::Message { tool_result } => {
                !(tool_result && rules.no_breakpoint_after_tool_result)
            }
            _ => false,
        });
        if let Some(i) = at
            && fits(i)
            && after.is_none_or(|a| i > a)
            && candidates.iter().all(|(c, _)| *c != i)
        {
            candidates.push((i, PrefixKind::History));
        }
    }
    for (i, kind) in candidates {
        if out.breakpoints.len() >= room {
            break;
        }
        // A prefix the provider already holds still needs its breakpoint: that is
        // where Anthropic and Bedrock look it up (with a short lookback).
        let Some(ttl) = choose(
            tracker,
            rules,
            rates,
            mode,
            (scope, kind, hashes[i]),
            longest,
        ) else {
            continue;
        };
        // Later breakpoints never outlive earlier ones (1-hour entries come first).
        longest = Some(longest.map_or(ttl, |l| l.min(ttl)));
        out.breakpoints.push(Breakpoint { part: i, ttl, kind });
    }
    if let Some(b) = out.breakpoints.last() {
        out.expected_write = totals[b.part].saturating_sub(out.expected_read);
        for b in &out.breakpoints {
            tracker.cached(scope, hashes[b.part], now_ms + b.ttl.ms());
        }
    }
    refresh_reads(tracker, scope, &hashes, read_at, now_ms);
    out
}

/// A read refreshes the provider's TTL on what it read (5 minutes at least).
fn refresh_reads(
    tracker: &mut PrefixTracker,
    scope: u64,
    hashes: &[u128],
    read_at: Option<usize>,
    now_ms: i64,
) {
    if let Some(i) = read_at {
        tracker.cached(scope, hashes[i], now_ms + Ttl::FiveMinutes.ms());
    }
}

/// Whether the provider's reported cache tokens contradict the plan: a read expected
/// and none reported, or a write expected and neither a write nor a read reported.
pub fn missed(plan: &Plan, cache_read: u64, cache_write: u64) -> bool {
    (plan.expected_read > 0 && cache_read == 0)
        || (plan.expected_write > 0 && cache_write == 0 && cache_read == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates() -> EffectiveRates {
        // $3 / $0.30 / $3.75 / $6 per million (Claude Sonnet).
        let r = |usd_mtok: u64| Rate::from_atto(usd_mtok * 1_000_000_000_000 / 100);
        EffectiveRates {
            input: r(300),
            output: r(1500),
            cache_read: r(30),
            cache_write_5m: r(375),
            cache_write_1h: r(600),
            reasoning: r(1500),
        }
    }

    fn claude() -> Rules {
        RuleTable::builtin()
            .unwrap()
            .lookup("claude-sonnet-4-5")
            .cloned()
            .unwrap()
    }

    fn convo(system_tokens: u64, n: usize) -> Vec<Part> {
        let mut v = vec![Part {
            kind: PartKind::System,
            tokens: system_tokens,
            hash: 1,
            client_marker: None,
        }];
        for i in 0..n {
            v.push(Part {
                kind: PartKind::Message { tool_result: false },
                tokens: 50,
                hash: 100 + i as u128,
                client_marker: None,
            });
        }
        v
    }

    #[test]
    fn rules_come_from_the_data_and_match_by_model() {
        let t = RuleTable::builtin().unwrap();
        assert_eq!(t.lookup("claude-haiku-4-5").unwrap().min_tokens, 4096);
        assert_eq!(
            t.lookup("claude-3-5-haiku-20241022").unwrap().min_tokens,
            2048
        );
        assert_eq!(
            t.lookup("us.anthropic.claude-sonnet-4-5-v1:0")
                .unwrap()
                .min_tokens,
            1024
        );
        let nova = t.lookup("us.amazon.nova-2-lite-v1:0").unwrap();
        assert!(!nova.one_hour && !nova.tools && nova.no_breakpoint_after_tool_result);
        assert_eq!(t.lookup("gpt-4o-mini").unwrap().max_breakpoints, 0);
        assert!(t.lookup("llama3").is_none());
        assert!(RuleTable::from_json(r#"{"rules":[{"match":"x","family":"claude","min_tokens":1,"max_breakpoints":1,"ttls":["2m"]}]}"#).is_err());
    }

    #[test]
    fn a_shared_handbook_is_cached_once_it_recurs() {
        let mut tr = PrefixTracker::new(1000);
        let parts = convo(5000, 1);
        // First sight, nothing known: no breakpoint in auto.
        let p = plan(&mut tr, 7, &parts, &claude(), &rates(), Mode::Auto, 0);
        assert!(p.breakpoints.is_empty(), "{p:?}");
        // It recurs a minute later: now a write pays (expected reads ≥ 2).
        let mut q = parts.clone();
        q[1].hash = 999; // another question, same handbook
        let p = plan(&mut tr, 7, &q, &claude(), &rates(), Mode::Auto, 60_000);
        // Only on the handbook: questions that never come back extended are not worth
        // a write of their own.
        assert_eq!(p.breakpoints.len(), 1, "{p:?}");
        assert_eq!(p.breakpoints[0].kind, PrefixKind::System);
        assert_eq!(p.breakpoints[0].part, 0);
        assert_eq!(p.expected_read, 0);
        assert!(p.expected_write >= 5000);
        // A third question within the TTL: the handbook is expected to be read.
        let mut r = parts.clone();
        r[1].hash = 998;
        let p = plan(&mut tr, 7, &r, &claude(), &rates(), Mode::Auto, 120_000);
        assert_eq!(p.expected_read, 5000);
        // Another tenant learned nothing from this.
        let p = plan(&mut tr, 8, &r, &claude(), &rates(), Mode::Auto, 130_000);
        assert!(p.breakpoints.is_empty());
    }

    #[test]
    fn an_agents_growing_history_gets_a_breakpoint_on_its_last_message() {
        let mut tr = PrefixTracker::new(1000);
        let rules = claude();
        let mut now = 0;
        let mut placed = 0;
        for n in 1..10 {
            let parts = convo(1200, n);
            let p = plan(&mut tr, 1, &parts, &rules, &rates(), Mode::Auto, now);
            if p.breakpoints
                .iter()
                .any(|b| b.kind == PrefixKind::History && b.part == n)
            {
                placed += 1;
            }
            now += 20_000;
        }
        // Once the scope has shown that prompts come back extended, every call marks its
        // last message.
        assert!(placed >= 6, "placed {placed}");
    }

    #[test]
    fn nothing_below_the_minimum_and_always_places_what_is_long_enough() {
        let mut tr = PrefixTracker::new(100);
        let short = convo(300, 1);
        let p = plan(&mut tr, 1, &short, &claude(), &rates(), Mode::Always, 0);
        assert!(p.breakpoints.is_empty());
        let long = convo(3000, 1);
        let p = plan(&mut tr, 1, &long, &claude(), &rates(), Mode::Always, 0);
        assert_eq!(p.breakpoints.len(), 2);
        let p = plan(&mut tr, 1, &long, &claude(), &rates(), Mode::Off, 0);
        assert!(p.breakpoints.is_empty());
    }

    #[test]
    fn the_clients_markers_win() {
        let mut tr = PrefixTracker::new(100);
        let mut parts = convo(3000, 3);
        parts[0].client_marker = Some(Ttl::FiveMinutes);
        let p = plan(&mut tr, 1, &parts, &claude(), &rates(), Mode::Always, 0);
        // Only after the client's marker, never an hour, within 4 in all.
        assert!(
            p.breakpoints
                .iter()
                .all(|b| b.part > 0 && b.ttl == Ttl::FiveMinutes)
        );
        for (i, part) in parts.iter_mut().enumerate().skip(1) {
            part.client_marker = (i <= 3).then_some(Ttl::FiveMinutes);
        }
        let p = plan(&mut tr, 1, &parts, &claude(), &rates(), Mode::Always, 0);
        assert!(
            p.breakpoints.is_empty(),
            "4 client markers leave no room: {p:?}"
        );
    }

    #[test]
    fn nova_takes_no_breakpoint_after_a_tool_result() {
        let mut tr = PrefixTracker::new(100);
        let nova = RuleTable::builtin()
            .unwrap()
            .lookup("amazon.nova-pro-v1:0")
            .cloned()
            .unwrap();
        let mut parts = convo(2000, 2);
        parts[2].kind = PartKind::Message { tool_result: true };
        let p = plan(&mut tr, 1, &parts, &nova, &rates(), Mode::Always, 0);
        assert!(p.breakpoints.iter().all(|b| b.part != 2));
        assert!(p.breakpoints.iter().all(|b| b.ttl == Ttl::FiveMinutes));
    }

    #[test]
    fn a_miss_is_a_promised_read_or_write_the_provider_did_not_report() {
        let plan = Plan {
            breakpoints: vec![],
            expected_write: 2000,
            expected_read: 0,
        };
        assert!(missed(&plan, 0, 0));
        assert!(!missed(&plan, 0, 2000));
        let read = Plan {
            expected_read: 1500,
            ..plan
        };
        assert!(missed(&read, 0, 2000));
        assert!(!missed(&read, 1500, 0));
    }
}
