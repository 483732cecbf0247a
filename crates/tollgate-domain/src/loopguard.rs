//! The runaway-agent guard's rules: per-task limits, and loop detection.
//!
//! A task (`x-tollgate-task`) is a unit of agent work spanning many calls. Its
//! [`TaskState`] watches each call before it is forwarded ([`TaskState::observe`]) and
//! each settled cost ([`TaskState::record_cost`]), and halts the task when:
//! - it ran more calls than `max_iterations`, longer than `max_duration_ms`, cost more
//!   than `max_cost` or spends faster than `max_cost_per_minute`;
//! - it loops: more than `loop_max_repeats` calls in a row each repeat a near-identical
//!   call among the last `loop_window` and bring nothing new (the same tool call and
//!   result over and over, or a cycle over a few calls). A repeat between calls that bring something new (polling
//!   a job while working, re-reading a file after editing it) restarts the count: that
//!   is what keeps healthy agents running. "Near-identical" is measured on a
//!   [`Fingerprint`]: a 64-bit
//!   SimHash of word 3-gram shingles of the call's newest messages (the model's last turn
//!   and what came back), normalised so ids, timestamps and whitespace do not hide a
//!   repeat;
//! - it makes no progress: `no_progress_calls` calls in a row bring (almost) no content
//!   the task has not already seen (a loop cycling over several calls).
//!
//! Sampling is not looping: evaluation harnesses send the same prompt many times on
//! purpose (pass@k, repeated sampling). A call that asks for a fresh sample
//! ([`sampled`]: temperature above 0, `n` above 1, or a seed) and repeats earlier calls
//! counts as a repeat only when their answers repeat too ([`TaskState::record_answer`]
//! feeds each answer's SimHash back after the call): under [`Sampling::Answers`] (the
//! default) identical prompts with different answers are progress. [`Sampling::Loop`]
//! counts them as any other repeat.
//!
//! Pure: the caller supplies `now` and the messages; nothing here reads a clock.

use crate::money::Money;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{HashSet, VecDeque};

/// Most distinct shingles remembered per task (bounds memory: ~32 KiB). When full the
/// memory starts over, so "new content" means new within a recent horizon.
pub const MAX_SEEN_SHINGLES: usize = 2048;
/// Most shingles taken from one call.
pub const MAX_SHINGLES_PER_CALL: usize = 512;
/// Bytes of normalised text kept as evidence of what repeated.
const EVIDENCE_CHARS: usize = 240;

/// Limits for one agent's tasks. `None` disables a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardLimits {
    pub max_iterations: Option<u64>,
    pub max_cost: Option<Money>,
    pub max_duration_ms: Option<i64>,
    pub max_cost_per_minute: Option<Money>,
    /// Calls compared for repeats.
    pub loop_window: usize,
    /// This many calls in a row may each repeat an earlier near-identical call; one more
    /// halts.
    pub loop_max_repeats: Option<u32>,
    /// SimHash bits (of 64) two calls may differ in and still count as near-identical.
    pub loop_max_distance: u32,
    /// Consecutive calls with (almost) no new content that halt the task.
    pub no_progress_calls: Option<u32>,
    /// A call brings "no new content" when fewer than this percent of its shingles are
    /// new to the task.
    pub min_novelty_pct: u8,
    /// How repeated calls that ask for a fresh sample are judged.
    pub sampling: Sampling,
}

/// How the guard judges a sampled call ([`sampled`]) that repeats earlier calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// A repeat only when the answers repeat too: once two earlier near-identical calls
    /// got near-identical answers.
    #[default]
    Answers,
    /// A repeat like any other (the prompt alone decides).
    Loop,
}

impl Sampling {
    pub fn as_str(self) -> &'static str {
        match self {
            Sampling::Answers => "answers",
            Sampling::Loop => "loop",
        }
    }
}

/// Whether a request body (OpenAI, Anthropic, Bedrock Converse or Responses) asks for a
/// fresh sample: a temperature above 0, `n` above 1, or a seed (a harness varying the
/// seed wants distinct samples; a fixed seed gives identical answers, which
/// [`Sampling::Answers`] then counts as repeats). A request without a temperature is
/// not a sample: agents rarely set one, and their loops must still be caught on the
/// prompt alone.
pub fn sampled(body: &serde_json::Map<String, Value>) -> bool {
    let hot = |v: Option<&Value>| v.and_then(Value::as_f64).is_some_and(|t| t > 0.0);
    hot(body.get("temperature"))
        || hot(body
            .get("inferenceConfig")
            .and_then(|c| c.get("temperature")))
        || body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1)
        || body.get("seed").is_some_and(|s| !s.is_null())
}

impl Default for GuardLimits {
    fn default() -> Self {
        GuardLimits {
            max_iterations: None,
            max_cost: None,
            max_duration_ms: None,
            max_cost_per_minute: None,
            loop_window: 20,
            loop_max_repeats: Some(4),
            loop_max_distance: 3,
            no_progress_calls: Some(12),
            min_novelty_pct: 10,
            sampling: Sampling::Answers,
        }
    }
}

/// Why a task was halted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaltKind {
    Iterations,
    Cost,
    Duration,
    Velocity,
    Loop,
    NoProgress,
}

impl HaltKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HaltKind::Iterations => "iterations",
            HaltKind::Cost => "cost",
            HaltKind::Duration => "duration",
            HaltKind::Velocity => "velocity",
            HaltKind::Loop => "loop",
            HaltKind::NoProgress => "no_progress",
        }
    }
}

/// A decision to halt, with what a human needs to judge it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Halt {
    pub kind: HaltKind,
    /// One sentence, shown in the 409 and the alert.
    pub reason: String,
    /// Calls, cost, what repeated.
    pub evidence: Value,
}

/// The newest part of a chat: the model's last turn (its tool calls) and everything
/// after it (tool results, the next user message): what this call adds. A conversation
/// with no assistant turn yet is its last message.
pub fn chat_tail_text(messages: &[Value]) -> String {
    let start = messages
        .iter()
        .rposition(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .unwrap_or(messages.len().saturating_sub(1));
    let mut out = String::new();
    for m in &messages[start..] {
        if let Some(role) = m.get("role").and_then(Value::as_str) {
            out.push_str(role);
            out.push(' ');
        }
        if let Some(name) = m.get("name").and_then(Value::as_str) {
            out.push_str(name);
            out.push(' ');
        }
        push_text(m.get("content"), &mut out);
        // Tool calls: the function and its arguments, never the per-call id.
        if let Some(Value::Array(calls)) = m.get("tool_calls") {
            for c in calls {
                let f = c.get("function").unwrap_or(c);
                if let Some(n) = f.get("name").and_then(Value::as_str) {
                    out.push_str(n);
                    out.push(' ');
                }
                push_text(f.get("arguments"), &mut out);
            }
        }
        if let Some(f) = m.get("function_call") {
            push_text(f.get("name"), &mut out);
            push_text(f.get("arguments"), &mut out);
        }
        out.push('\n');
    }
    out
}

fn push_text(v: Option<&Value>, out: &mut String) {
    match v {
        Some(Value::String(s)) => {
            out.push_str(s);
            out.push(' ');
        }
        Some(Value::Array(parts)) => {
            for p in parts {
                match p {
                    Value::String(s) => {
                        out.push_str(s);
                        out.push(' ');
                    }
                    Value::Object(o) => {
                        push_text(o.get("text"), out);
                        push_text(o.get("content"), out);
                        if let Some(input) = o.get("input") {
                            out.push_str(&input.to_string());
                            out.push(' ');
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(Value::Object(_)) | Some(Value::Number(_)) | Some(Value::Bool(_)) => {
            if let Some(v) = v {
                out.push_str(&v.to_string());
                out.push(' ');
            }
        }
        _ => {}
    }
}

/// Hashes of the lower-cased words, and the normalised text's start (evidence). A
/// compound token holding four or more digits (an id, a timestamp, a hash, a counter
/// that always changes: `2025-06-04T12:00:01Z`, `9f8e7d6c5b`) becomes `#`; other
/// tokens split into their words (`src/a1.rs` → `src a1 rs`).
fn words(text: &str) -> (Vec<u64>, String) {
    let mut out = Vec::new();
    let mut summary = String::new();
    let note = |w: &str, summary: &mut String| {
        if summary.len() < EVIDENCE_CHARS {
            if !summary.is_empty() {
                summary.push(' ');
            }
            summary.extend(w.chars().flat_map(char::to_lowercase));
        }
    };
    let compound = |c: char| c.is_alphanumeric() || "_-:./+".contains(c);
    for tok in text.split(|c: char| !compound(c)).filter(|t| !t.is_empty()) {
        if tok.bytes().filter(u8::is_ascii_digit).count() >= 4 {
            out.push(hash(b"#"));
            note("#", &mut summary);
            continue;
        }
        for w in tok
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .filter(|w| !w.is_empty())
        {
            out.push(hash_lower(w));
            note(w, &mut summary);
        }
    }
    (out, summary)
}

/// [`hash`] of the lower-cased word, without allocating for ASCII.
fn hash_lower(w: &str) -> u64 {
    if w.is_ascii() {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in w.bytes() {
            h ^= u64::from(b.to_ascii_lowercase());
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        finish(h)
    } else {
        hash(w.to_lowercase().as_bytes())
    }
}

/// FNV-1a 64, then a final mix so nearby inputs spread over all bits.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    finish(h)
}

/// splitmix64's finaliser: spreads nearby inputs over all 64 bits.
fn finish(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// What one call looked like, compactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub simhash: u64,
    /// Distinct shingle hashes (at most [`MAX_SHINGLES_PER_CALL`]).
    pub shingles: Vec<u64>,
    /// The normalised text's start, for evidence.
    pub summary: String,
    /// The call asks for a fresh sample ([`sampled`]); set by the caller.
    pub sampled: bool,
}

impl Fingerprint {
    /// Fingerprint the text a call adds (see [`chat_tail_text`]).
    pub fn of_text(text: &str) -> Fingerprint {
        let (w, mut summary) = words(text);
        let mut shingles: Vec<u64> = if w.len() < 3 {
            w.clone()
        } else {
            w.windows(3)
                .map(|g| finish(g[0] ^ g[1].rotate_left(21) ^ g[2].rotate_left(42)))
                .collect()
        };
        shingles.sort_unstable();
        shingles.dedup();
        shingles.truncate(MAX_SHINGLES_PER_CALL);
        let mut votes = [0i32; 64];
        for s in &shingles {
            for (bit, v) in votes.iter_mut().enumerate() {
                if s >> bit & 1 == 1 {
                    *v += 1;
                } else {
                    *v -= 1;
                }
            }
        }
        let simhash =
            votes.iter().enumerate().fold(
                0u64,
                |acc, (bit, v)| if *v > 0 { acc | 1 << bit } else { acc },
            );
        if summary.len() > EVIDENCE_CHARS {
            let mut cut = EVIDENCE_CHARS;
            while !summary.is_char_boundary(cut) {
                cut -= 1;
            }
            summary.truncate(cut);
            summary.push('…');
        }
        Fingerprint {
            simhash,
            shingles,
            summary,
            sampled: false,
        }
    }

    pub fn of_chat(messages: &[Value]) -> Fingerprint {
        Fingerprint::of_text(&chat_tail_text(messages))
    }

    /// SimHash bits that differ.
    pub fn distance(&self, other: &Fingerprint) -> u32 {
        (self.simhash ^ other.simhash).count_ones()
    }
}

/// The SimHash of an answer's text, for [`TaskState::record_answer`].
pub fn answer_hash(text: &str) -> u64 {
    Fingerprint::of_text(text).simhash
}

#[derive(Debug, Clone)]
struct Seen {
    simhash: u64,
    at_ms: i64,
    summary: String,
    /// The SimHash of the answer, once the call is settled.
    answer: Option<u64>,
}

/// An earlier call near-identical to the one being judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimilarCall {
    /// SimHash bits the two differ in.
    pub distance: u32,
    pub at_ms: i64,
    pub summary: String,
    /// The SimHash of its answer, if settled.
    pub answer: Option<u64>,
}

/// Whether near-identical calls also got near-identical answers: the newest answered
/// one's answer is within `max_distance` bits of another's. `similar` newest first.
pub fn answers_repeat(similar: &[SimilarCall], max_distance: u32) -> bool {
    let mut answered = similar.iter().filter_map(|s| s.answer);
    let Some(newest) = answered.next() else {
        return false;
    };
    answered.any(|a| (a ^ newest).count_ones() <= max_distance)
}

/// One call's step through loop detection, as this process or a store shared by every
/// replica computed it (the same rules either way): the streaks after this call, and
/// what it repeated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopStep {
    /// Calls in a row (this one included) that repeated an earlier near-identical call
    /// and brought nothing new.
    pub repeat_streak: u32,
    /// Calls in a row (this one included) that brought (almost) no new content.
    pub stale_streak: u32,
    /// Calls remembered before this one.
    pub window: usize,
    /// The near-identical earlier calls, newest first.
    pub similar: Vec<SimilarCall>,
    /// The call was a sample whose repeat did not count (its predecessors' answers
    /// differ).
    pub sampling: bool,
}

impl LoopStep {
    /// The streaks' next values for a call with `novelty_pct` new content near-identical
    /// to `similar` (newest first).
    pub fn next(
        (repeat_streak, stale_streak): (u32, u32),
        novelty_pct: usize,
        similar: Vec<SimilarCall>,
        window: usize,
        sampled: bool,
        limits: &GuardLimits,
    ) -> LoopStep {
        let novel = novelty_pct >= usize::from(limits.min_novelty_pct);
        let sampling = sampled
            && limits.sampling == Sampling::Answers
            && !similar.is_empty()
            && !answers_repeat(&similar, limits.loop_max_distance);
        let (repeat_streak, stale_streak) = if sampling {
            // A fresh sample with a different answer: progress on both counts.
            (0, 0)
        } else {
            (
                if similar.is_empty() || novel {
                    0
                } else {
                    repeat_streak + 1
                },
                if novel { 0 } else { stale_streak + 1 },
            )
        };
        LoopStep {
            repeat_streak,
            stale_streak,
            window,
            similar,
            sampling,
        }
    }

    /// The halt this step calls for, if any: a loop (more repeats in a row than
    /// allowed), else no progress.
    pub fn halt(
        &self,
        totals: &TaskTotals,
        fp: &Fingerprint,
        now_ms: i64,
        limits: &GuardLimits,
    ) -> Option<Halt> {
        if let Some(max) = limits.loop_max_repeats
            && self.repeat_streak > max
        {
            let first = self.similar.last().map(|s| s.at_ms).unwrap_or(now_ms);
            return Some(Halt {
                kind: HaltKind::Loop,
                reason: format!(
                    "loop detected: {} calls in a row repeated earlier near-identical calls (limit {max})",
                    self.repeat_streak
                ),
                evidence: totals.evidence(
                    now_ms,
                    json!({
                        "repeated": fp.summary,
                        "repeats": self.repeat_streak,
                        "similar_in_window": self.similar.len(),
                        "window": self.window,
                        "repeating_for_s": (now_ms - first) as f64 / 1000.0,
                        "max_distance_bits": limits.loop_max_distance,
                        "distances": self.similar.iter().rev().map(|s| s.distance).collect::<Vec<_>>(),
                        "earlier": self.similar.iter().take(3).map(|s| s.summary.clone()).collect::<Vec<_>>(),
                        "sampled": fp.sampled,
                        "answers_repeat": fp.sampled && answers_repeat(&self.similar, limits.loop_max_distance),
                    }),
                ),
            });
        }
        if let Some(max) = limits.no_progress_calls
            && self.stale_streak >= max
        {
            return Some(Halt {
                kind: HaltKind::NoProgress,
                reason: format!(
                    "no progress: {} calls in a row brought less than {}% new content",
                    self.stale_streak, limits.min_novelty_pct
                ),
                evidence: totals.evidence(
                    now_ms,
                    json!({"stale_calls": self.stale_streak, "last": fp.summary}),
                ),
            });
        }
        None
    }
}

/// A task's running totals, this call included: counted by one process
/// ([`TaskState::totals`]) or by a store every gateway replica shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskTotals {
    pub iterations: u64,
    pub started_ms: i64,
    /// Settled cost so far.
    pub cost: Money,
    /// Settled cost in the minute before now.
    pub spend_last_minute: Money,
}

impl TaskTotals {
    fn evidence(&self, now_ms: i64, extra: Value) -> Value {
        let mut e = json!({
            "calls": self.iterations,
            "cost_usd": self.cost.to_string(),
            "duration_s": (now_ms - self.started_ms) as f64 / 1000.0,
            "spend_last_minute_usd": self.spend_last_minute.to_string(),
        });
        if let (Value::Object(e), Value::Object(x)) = (&mut e, extra) {
            e.extend(x);
        }
        e
    }

    /// The first of the iteration, duration, cost and velocity limits these totals
    /// break, if any.
    pub fn limit_halt(&self, now_ms: i64, limits: &GuardLimits) -> Option<Halt> {
        if let Some(max) = limits.max_iterations
            && self.iterations > max
        {
            return Some(Halt {
                kind: HaltKind::Iterations,
                reason: format!("the task made more than {max} calls"),
                evidence: self.evidence(now_ms, json!({"max_iterations": max})),
            });
        }
        if let Some(max) = limits.max_duration_ms
            && now_ms - self.started_ms > max
        {
            return Some(Halt {
                kind: HaltKind::Duration,
                reason: format!("the task ran longer than {} s", max / 1000),
                evidence: self.evidence(now_ms, json!({"max_duration_s": max / 1000})),
            });
        }
        if let Some(max) = limits.max_cost
            && self.cost >= max
        {
            return Some(Halt {
                kind: HaltKind::Cost,
                reason: format!("the task cost ${} (limit ${max})", self.cost),
                evidence: self.evidence(now_ms, json!({"max_cost_usd": max.to_string()})),
            });
        }
        if let Some(max) = limits.max_cost_per_minute {
            let v = self.spend_last_minute;
            if v >= max {
                return Some(Halt {
                    kind: HaltKind::Velocity,
                    reason: format!("the task spent ${v} in the last minute (limit ${max}/min)"),
                    evidence: self.evidence(now_ms, json!({"max_usd_per_minute": max.to_string()})),
                });
            }
        }
        None
    }
}

/// What the guard remembers about one task.
#[derive(Debug, Clone)]
pub struct TaskState {
    pub started_ms: i64,
    pub last_ms: i64,
    pub iterations: u64,
    pub cost: Money,
    recent: VecDeque<Seen>,
    seen: HashSet<u64>,
    stale_streak: u32,
    repeat_streak: u32,
    spend: VecDeque<(i64, Money)>,
    /// Set once the task has been reported (dry-run mode keeps it running, but alerts
    /// once).
    pub flagged: Option<HaltKind>,
}

impl TaskState {
    pub fn new(now_ms: i64) -> TaskState {
        TaskState {
            started_ms: now_ms,
            last_ms: now_ms,
            iterations: 0,
            cost: Money::ZERO,
            recent: VecDeque::new(),
            seen: HashSet::new(),
            stale_streak: 0,
            repeat_streak: 0,
            spend: VecDeque::new(),
            flagged: None,
        }
    }

    /// Spend in the minute before `now_ms`.
    pub fn spend_last_minute(&self, now_ms: i64) -> Money {
        self.spend
            .iter()
            .filter(|(t, _)| *t > now_ms - 60_000)
            .map(|(_, c)| *c)
            .sum()
    }

    /// A settled call's cost.
    pub fn record_cost(&mut self, cost: Money, now_ms: i64) {
        self.cost = self.cost.saturating_add(cost);
        if cost > Money::ZERO {
            self.spend.push_back((now_ms, cost));
        }
        while self
            .spend
            .front()
            .is_some_and(|(t, _)| *t <= now_ms - 60_000)
            || self.spend.len() > 4096
        {
            self.spend.pop_front();
        }
    }

    /// This task's totals as this process counted them.
    pub fn totals(&self, now_ms: i64) -> TaskTotals {
        TaskTotals {
            iterations: self.iterations,
            started_ms: self.started_ms,
            cost: self.cost,
            spend_last_minute: self.spend_last_minute(now_ms),
        }
    }

    /// A new call for this task, about to be forwarded. `fingerprint` is `None` for
    /// calls with nothing to compare (embeddings).
    pub fn observe(
        &mut self,
        fingerprint: Option<&Fingerprint>,
        now_ms: i64,
        limits: &GuardLimits,
    ) -> Option<Halt> {
        self.iterations += 1;
        let totals = self.totals(now_ms);
        self.observe_counted(&totals, fingerprint, now_ms, limits)
    }

    /// [`TaskState::observe`] with the task's totals counted elsewhere (by a store
    /// shared with other gateway replicas, this call included): the limits are checked
    /// on `totals`, loops on this state's own history.
    pub fn observe_counted(
        &mut self,
        totals: &TaskTotals,
        fingerprint: Option<&Fingerprint>,
        now_ms: i64,
        limits: &GuardLimits,
    ) -> Option<Halt> {
        self.last_ms = now_ms;
        if let Some(h) = totals.limit_halt(now_ms, limits) {
            return Some(h);
        }
        let fp = fingerprint?;
        // Loops: near-identical earlier calls in the window, newest first.
        let similar: Vec<SimilarCall> = self
            .recent
            .iter()
            .rev()
            .filter(|s| (s.simhash ^ fp.simhash).count_ones() <= limits.loop_max_distance)
            .map(|s| SimilarCall {
                distance: (s.simhash ^ fp.simhash).count_ones(),
                at_ms: s.at_ms,
                summary: s.summary.clone(),
                answer: s.answer,
            })
            .collect();
        // Progress: the share of this call's shingles the task has not seen before.
        let total = fp.shingles.len();
        let new = fp
            .shingles
            .iter()
            .filter(|s| !self.seen.contains(s))
            .count();
        let novelty_pct = (new * 100).checked_div(total).unwrap_or(0);
        let step = LoopStep::next(
            (self.repeat_streak, self.stale_streak),
            novelty_pct,
            similar,
            self.recent.len(),
            fp.sampled,
            limits,
        );
        self.repeat_streak = step.repeat_streak;
        self.stale_streak = step.stale_streak;
        if self.seen.len() + fp.shingles.len() > MAX_SEEN_SHINGLES {
            self.seen.clear();
        }
        self.seen.extend(fp.shingles.iter().copied());
        self.recent.push_back(Seen {
            simhash: fp.simhash,
            at_ms: now_ms,
            summary: fp.summary.clone(),
            answer: None,
        });
        while self.recent.len() > limits.loop_window.max(1) {
            self.recent.pop_front();
        }
        step.halt(totals, fp, now_ms, limits)
    }

    /// A settled call's answer: the SimHash of its text ([`answer_hash`]), given to the
    /// newest remembered call with the call's own SimHash that has no answer yet.
    pub fn record_answer(&mut self, call_simhash: u64, answer: u64) {
        if let Some(s) = self
            .recent
            .iter_mut()
            .rev()
            .find(|s| s.simhash == call_simhash && s.answer.is_none())
        {
            s.answer = Some(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool_turn(call: &str, args: &str, result: &str, id: &str) -> Vec<Value> {
        vec![
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": call, "arguments": args}}]}),
            json!({"role": "tool", "tool_call_id": id, "content": result}),
        ]
    }

    fn convo(turns: &[Vec<Value>]) -> Vec<Value> {
        let mut m = vec![
            json!({"role": "system", "content": "You are an agent."}),
            json!({"role": "user", "content": "Find the invoice for ACME and summarise it."}),
        ];
        for t in turns {
            m.extend(t.iter().cloned());
        }
        m
    }

    #[test]
    fn tail_is_the_last_assistant_turn_and_what_followed() {
        let m = convo(&[
            tool_turn("search", r#"{"q":"acme"}"#, "3 results", "call_1"),
            tool_turn("open", r#"{"id":7}"#, "Invoice 7 body", "call_2"),
        ]);
        let t = chat_tail_text(&m);
        assert!(t.contains("open") && t.contains("Invoice 7 body"), "{t}");
        assert!(!t.contains("acme") && !t.contains("call_2"), "{t}");
    }

    #[test]
    fn ids_and_timestamps_do_not_hide_a_repeat() {
        let a = Fingerprint::of_chat(&convo(&[tool_turn(
            "fetch_status",
            r#"{"job":"build"}"#,
            "status: pending at 2025-06-04T12:00:01Z (request 9f8e7d6c5b)",
            "call_aaa111",
        )]));
        let b = Fingerprint::of_chat(&convo(&[tool_turn(
            "fetch_status",
            r#"{"job":"build"}"#,
            "status: pending at 2025-06-04T12:00:31Z (request 1a2b3c4d5e)",
            "call_bbb222",
        )]));
        assert_eq!(a.distance(&b), 0, "{} / {}", a.summary, b.summary);
        let c = Fingerprint::of_chat(&convo(&[tool_turn(
            "read_file",
            r#"{"path":"src/billing.rs"}"#,
            "fn total(items: &[Item]) -> i64 { items.iter().map(|i| i.price).sum() }",
            "call_ccc333",
        )]));
        assert!(a.distance(&c) > 3, "{}", a.distance(&c));
    }

    #[test]
    fn replayed_call_halts_after_the_configured_repeats() {
        let limits = GuardLimits {
            loop_max_repeats: Some(3),
            ..GuardLimits::default()
        };
        let mut s = TaskState::new(0);
        let turn = |i: usize| {
            Fingerprint::of_chat(&convo(&[tool_turn(
                "search",
                r#"{"q":"acme invoice"}"#,
                "No results found.",
                &format!("call_{i}"),
            )]))
        };
        for i in 0..4 {
            assert!(
                s.observe(Some(&turn(i)), i as i64 * 1000, &limits)
                    .is_none(),
                "call {i}"
            );
        }
        let h = s.observe(Some(&turn(4)), 4000, &limits).unwrap();
        assert_eq!(h.kind, HaltKind::Loop);
        assert_eq!(h.evidence["repeats"], 4);
        assert_eq!(h.evidence["calls"], 5);
        assert!(
            h.evidence["repeated"]
                .as_str()
                .unwrap()
                .contains("no results found")
        );
    }

    #[test]
    fn cycling_over_seen_calls_is_no_progress() {
        let limits = GuardLimits {
            loop_max_repeats: None,
            no_progress_calls: Some(6),
            ..GuardLimits::default()
        };
        let mut s = TaskState::new(0);
        let pages = [
            "alpha beta gamma delta",
            "epsilon zeta eta theta",
            "iota kappa lambda mu",
        ];
        let mut halted = None;
        for i in 0..30 {
            let fp = Fingerprint::of_text(&format!("assistant next_page tool {}", pages[i % 3]));
            if let Some(h) = s.observe(Some(&fp), i as i64, &limits) {
                halted = Some((i, h));
                break;
            }
        }
        let (i, h) = halted.unwrap();
        assert_eq!(h.kind, HaltKind::NoProgress);
        assert_eq!(i, 3 + 6 - 1, "three novel calls, then six stale ones");
    }

    #[test]
    fn limits_are_checked_on_totals_counted_elsewhere() {
        let limits = GuardLimits {
            max_iterations: Some(3),
            max_cost: Some(Money::from_nanos(1000)),
            loop_max_repeats: Some(1),
            ..GuardLimits::default()
        };
        let shared = |iterations, cost| TaskTotals {
            iterations,
            started_ms: 0,
            cost: Money::from_nanos(cost),
            spend_last_minute: Money::ZERO,
        };
        // This process saw one call; other replicas made the rest.
        let mut s = TaskState::new(0);
        assert!(s.observe_counted(&shared(3, 0), None, 5, &limits).is_none());
        let h = s.observe_counted(&shared(4, 0), None, 6, &limits).unwrap();
        assert_eq!(
            (h.kind, h.evidence["calls"].as_u64()),
            (HaltKind::Iterations, Some(4))
        );
        let h = s
            .observe_counted(&shared(2, 1000), None, 7, &limits)
            .unwrap();
        assert_eq!(h.kind, HaltKind::Cost);
        // Loops are still judged on this process's own history.
        let fp = Fingerprint::of_text("assistant poll tool pending");
        let mut s = TaskState::new(0);
        assert!(
            s.observe_counted(&shared(1, 0), Some(&fp), 1, &limits)
                .is_none()
        );
        assert!(
            s.observe_counted(&shared(2, 0), Some(&fp), 2, &limits)
                .is_none()
        );
        let h = s
            .observe_counted(&shared(3, 0), Some(&fp), 3, &limits)
            .unwrap();
        assert_eq!(
            (h.kind, h.evidence["calls"].as_u64()),
            (HaltKind::Loop, Some(3))
        );
        // Counting here gives the same totals as before the split.
        let mut s = TaskState::new(0);
        s.record_cost(Money::from_nanos(10), 1);
        s.observe(None, 2, &limits);
        assert_eq!(
            s.totals(2),
            TaskTotals {
                spend_last_minute: Money::from_nanos(10),
                ..shared(1, 10)
            }
        );
    }

    #[test]
    fn cost_velocity_iterations_duration() {
        let limits = GuardLimits {
            max_iterations: Some(3),
            max_cost: Some(Money::from_nanos(1000)),
            max_duration_ms: Some(60_000),
            max_cost_per_minute: Some(Money::from_nanos(500)),
            loop_max_repeats: None,
            no_progress_calls: None,
            ..GuardLimits::default()
        };
        let mut s = TaskState::new(0);
        assert!(s.observe(None, 0, &limits).is_none());
        s.record_cost(Money::from_nanos(600), 10);
        assert_eq!(
            s.observe(None, 20, &limits).unwrap().kind,
            HaltKind::Velocity
        );
        let mut s = TaskState::new(0);
        for t in [0, 70_000, 140_000] {
            s.record_cost(Money::from_nanos(400), t);
        }
        assert_eq!(s.spend_last_minute(140_000), Money::from_nanos(400));
        assert_eq!(
            s.observe(None, 140_001, &limits).unwrap().kind,
            HaltKind::Duration
        );
        let mut s = TaskState::new(0);
        s.record_cost(Money::from_nanos(1000), 0);
        assert_eq!(
            s.observe(None, 61_000 / 2, &limits).unwrap().kind,
            HaltKind::Cost
        );
        let mut s = TaskState::new(0);
        for i in 0..3 {
            assert!(s.observe(None, i, &limits).is_none());
        }
        assert_eq!(
            s.observe(None, 4, &limits).unwrap().kind,
            HaltKind::Iterations
        );
    }

    /// The same prompt sampled again and again (pass@k): distinct answers are progress,
    /// repeating answers halt as a loop, and with `sampling = loop` the prompt alone
    /// decides.
    #[test]
    fn sampling_is_not_looping_unless_the_answers_repeat() {
        let limits = GuardLimits::default();
        let body = serde_json::json!({"temperature": 0.8, "messages": []});
        assert!(sampled(body.as_object().unwrap()));
        let prompt = vec![
            json!({"role": "user", "content": "Write a function that reverses a linked list in Rust."}),
        ];
        let mut fp = Fingerprint::of_chat(&prompt);
        fp.sampled = true;
        // Fifty samples, each answer different: never halted.
        let mut s = TaskState::new(0);
        for i in 0..50 {
            assert!(s.observe(Some(&fp), i, &limits).is_none(), "sample {i}");
            let answer = format!(
                "fn reverse_{i}(head: Option<Box<Node>>) uses variant {} of the walk",
                i * 7919
            );
            s.record_answer(fp.simhash, answer_hash(&answer));
        }
        // The same answer every time: a loop, caught once two earlier calls answered alike.
        let mut s = TaskState::new(0);
        let mut halted_at = None;
        for i in 0..20 {
            if let Some(h) = s.observe(Some(&fp), i, &limits) {
                assert_eq!(h.kind, HaltKind::Loop);
                assert_eq!(h.evidence["answers_repeat"], true);
                halted_at = Some(i);
                break;
            }
            s.record_answer(
                fp.simhash,
                answer_hash("I cannot help with that request today."),
            );
        }
        assert_eq!(halted_at, Some(6));
        // sampling = loop: the prompt alone decides, as for calls that are not samples.
        let strict = GuardLimits {
            sampling: Sampling::Loop,
            ..GuardLimits::default()
        };
        let mut s = TaskState::new(0);
        let halted = (0..20).find(|i| {
            let h = s.observe(Some(&fp), *i, &strict);
            s.record_answer(fp.simhash, answer_hash(&format!("answer {i}")));
            h.is_some()
        });
        assert_eq!(halted, Some(5));
        // Not a sample (no temperature): a plain repeat, halted as before.
        let plain = Fingerprint::of_chat(&prompt);
        let mut s = TaskState::new(0);
        let halted = (0..20).find(|i| s.observe(Some(&plain), *i, &limits).is_some());
        assert_eq!(halted, Some(5));
        for b in [
            json!({"temperature": 0}),
            json!({}),
            json!({"n": 1}),
            json!({"seed": null}),
        ] {
            assert!(!sampled(b.as_object().unwrap()), "{b}");
        }
        for b in [
            json!({"n": 4}),
            json!({"seed": 7}),
            json!({"inferenceConfig": {"temperature": 0.5}}),
        ] {
            assert!(sampled(b.as_object().unwrap()), "{b}");
        }
    }
}
