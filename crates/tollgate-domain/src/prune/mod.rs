//! Token pruning of long conversations: fewer prompt tokens, the facts the next answer
//! needs kept, the request still valid and a warm prompt cache intact.
//!
//! Works on a format-neutral view: the conversation's text fields ([`Text`]), each tagged
//! with its message, role and (for a tool result) the tool's name. The wire formats map
//! to it and apply the [`Edit`]s back (`tollgate_providers::prune`). Pruning only ever
//! rewrites text, never removes a message or a block, so a tool call and its result stay
//! together and every format's structure (roles, ids, alternation) is untouched.
//!
//! Strategies, in order, all without a model call:
//! 1. `dedupe`: a text repeated later (exactly, or nearly: the same file dumped twice
//!    with a few lines changed) is replaced by a placeholder; the latest copy stays.
//! 2. `clear_tool_results`: tool results older than the last `tool_keep_last` that share
//!    nothing with the query are replaced by a placeholder naming the tool and the
//!    tokens removed.
//! 3. `cap_tool_output`: a tool result longer than `tool_max_tokens` keeps its head, its
//!    tail and, in between, the lines that score highest against the query.
//! 4. `select`: while the whole is above the target, lines and sentences are kept by
//!    BM25 score against the query (the last user turn, the first one (the task) and
//!    the system prompt), with a small preference for recent ones; runs of dropped lines
//!    become one marker line.
//!
//! Never touched: system text, the last user turn, the last `keep_last` messages, and
//! every message before `floor` (the caller puts it after the last prompt-cache
//! breakpoint the client set). The BM25 score against the final question is what keeps
//! an early fact alive: within a tool output it is the matching line that survives, not
//! only the head and tail.
//!
//! # Layout
//! - [`tokens`]: the fast token estimate the decisions use.
//! - [`score`]: BM25 of segments against the query.

pub mod score;
pub mod tokens;

use score::{Corpus, Query};
use tokens::estimate;

/// Tokens of framing per message (role, separators), as chat formats count them.
pub const MESSAGE_OVERHEAD: u64 = 4;
/// Texts shorter than this are left as they are.
const MIN_TOKENS: u64 = 16;
/// Texts shorter than this are not compared for duplicates.
const DEDUPE_MIN_TOKENS: u64 = 48;
/// Segments scoring at least this share of the best one are kept first.
const MUST_KEEP_SHARE: f32 = 0.5;
/// A near-duplicate differing in more lines than this is not one.
const NEAR_DUPLICATE_LINES: usize = 24;
/// Lines longer than this are split into sentences (and, failing that, at a space).
const LONG_LINE: usize = 320;
/// An old tool result whose best line scores below this share of the best line
/// anywhere is cleared.
const CLEAR_SHARE: f32 = 0.15;

/// Who wrote a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's result (an OpenAI `tool` message, an Anthropic `tool_result` or a Bedrock
    /// `toolResult` block).
    Tool,
}

/// One text field of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a> {
    /// The message it belongs to (0-based over the messages; system text outside the
    /// messages, as in Anthropic and Bedrock, uses 0 and is protected by its role).
    pub msg: usize,
    pub role: Role,
    /// For a tool result, the tool's name if known.
    pub tool: Option<&'a str>,
    pub text: &'a str,
}

/// A conversation as pruning sees it.
#[derive(Debug, Clone, Default)]
pub struct Conversation<'a> {
    pub texts: Vec<Text<'a>>,
    /// Number of messages.
    pub messages: usize,
    /// Messages with an index below this are never touched (a prompt-cache breakpoint
    /// is on message `floor - 1`).
    pub floor: usize,
}

/// How small to make it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    Tokens(u64),
    /// A share of the conversation's tokens, in `[0, 1]`.
    Ratio(f64),
}

/// Which strategies run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strategies {
    pub dedupe: bool,
    pub clear_tool_results: bool,
    pub cap_tool_output: bool,
    pub select: bool,
}

impl Strategies {
    pub const ALL: Strategies = Strategies {
        dedupe: true,
        clear_tool_results: true,
        cap_tool_output: true,
        select: true,
    };
    pub const NAMES: [&'static str; 4] =
        ["dedupe", "clear_tool_results", "cap_tool_output", "select"];

    /// From names (see [`Strategies::NAMES`]); `Err` names the first unknown one.
    pub fn parse<'s>(names: impl IntoIterator<Item = &'s str>) -> Result<Strategies, String> {
        let mut s = Strategies {
            dedupe: false,
            clear_tool_results: false,
            cap_tool_output: false,
            select: false,
        };
        for n in names {
            match n.trim() {
                "dedupe" => s.dedupe = true,
                "clear_tool_results" => s.clear_tool_results = true,
                "cap_tool_output" => s.cap_tool_output = true,
                "select" => s.select = true,
                o => return Err(o.to_string()),
            }
        }
        Ok(s)
    }
}

/// What to prune to, and what to keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub target: Target,
    /// The most recent messages, never touched.
    pub keep_last: usize,
    /// The most recent tool results, never cleared (they may still be capped).
    pub tool_keep_last: usize,
    /// A tool result's cap, in tokens.
    pub tool_max_tokens: u64,
    pub strategies: Strategies,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            target: Target::Ratio(0.5),
            keep_last: 4,
            tool_keep_last: 2,
            tool_max_tokens: 2_000,
            strategies: Strategies::ALL,
        }
    }
}

/// Replace text number `text` of the conversation with `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub text: usize,
    pub new: String,
}

/// The edits, and the estimated tokens before and after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub edits: Vec<Edit>,
    pub tokens_before: u64,
    pub tokens_after: u64,
}

/// Estimated prompt tokens of a conversation: its texts plus framing per message.
pub fn conversation_tokens(conv: &Conversation<'_>) -> u64 {
    conv.texts.iter().map(|t| estimate(t.text)).sum::<u64>()
        + MESSAGE_OVERHEAD * conv.messages as u64
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The text left where a whole text was removed.
pub fn placeholder(t: &Text<'_>, tokens: u64, why: Option<&str>) -> String {
    let what = match (t.role, t.tool) {
        (Role::Tool, Some(name)) => format!(
            "{} tokens of output from tool `{name}` removed",
            thousands(tokens)
        ),
        (Role::Tool, None) => format!("{} tokens of tool output removed", thousands(tokens)),
        _ => format!("{} tokens removed", thousands(tokens)),
    };
    match why {
        Some(w) => format!("[tollgate: {what}: {w}]"),
        None => format!("[tollgate: {what}]"),
    }
}

fn gap_marker(lines: usize) -> String {
    if lines == 1 {
        "[tollgate: 1 line removed]\n".to_string()
    } else {
        format!("[tollgate: {} lines removed]\n", thousands(lines as u64))
    }
}

/// Split `text` into segments (byte ranges that tile it): lines, and long lines into
/// sentences, and over-long sentences at a space.
fn segments(text: &str, out: &mut Vec<(u32, u32)>) {
    let b = text.as_bytes();
    let mut start = 0usize;
    while start < b.len() {
        let end = match memchr_nl(&b[start..]) {
            Some(i) => start + i + 1,
            None => b.len(),
        };
        if end - start <= LONG_LINE {
            out.push((start as u32, end as u32));
        } else {
            split_long(text, start, end, out);
        }
        start = end;
    }
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

fn split_long(text: &str, mut start: usize, end: usize, out: &mut Vec<(u32, u32)>) {
    let b = text.as_bytes();
    while end - start > LONG_LINE {
        // The last sentence end (". ", "? ", "! ", "; ") within the window, else the last
        // space, else a char boundary.
        let window_end = start + LONG_LINE;
        let mut cut = None;
        let mut space = None;
        let mut i = start + 40;
        while i < window_end {
            if b[i] == b' ' {
                space = Some(i + 1);
                if matches!(b[i - 1], b'.' | b'?' | b'!' | b';') {
                    cut = Some(i + 1);
                }
            }
            i += 1;
        }
        let mut at = cut.or(space).unwrap_or(window_end);
        while !text.is_char_boundary(at) {
            at += 1;
        }
        if at >= end {
            break;
        }
        out.push((start as u32, at as u32));
        start = at;
    }
    out.push((start as u32, end as u32));
}

/// Line hashes kept in a text's sketch.
const SKETCH: usize = 8;

/// Exact hash and a bottom-k sketch (the smallest distinct line hashes) of a text, for
/// duplicate detection: two texts that share most lines share most of their sketch.
fn fingerprint(text: &str) -> (u64, [u64; SKETCH]) {
    let mut exact: u64 = 0xcbf2_9ce4_8422_2325;
    let mut sketch = [u64::MAX; SKETCH];
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &c in line.as_bytes() {
            h ^= u64::from(c);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= h >> 31;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 29;
        exact = (exact ^ h).wrapping_mul(0x0100_0000_01b3);
        if h < sketch[SKETCH - 1] && !sketch.contains(&h) {
            let at = sketch.partition_point(|&x| x < h);
            sketch.copy_within(at..SKETCH - 1, at + 1);
            sketch[at] = h;
        }
    }
    (exact, sketch)
}

/// Line hashes two sketches share.
fn shared(a: &[u64; SKETCH], b: &[u64; SKETCH]) -> usize {
    a.iter()
        .filter(|x| **x != u64::MAX && b.contains(x))
        .count()
}

/// What happens to one text.
#[derive(Clone)]
enum Fate {
    Keep,
    Replace(String),
}

/// Prune `conv` under `policy`. Pure and deterministic: the same conversation and policy
/// always give the same edits.
pub fn prune(conv: &Conversation<'_>, policy: &Policy) -> Pruned {
    let texts = &conv.texts;
    let n = texts.len();
    let tok: Vec<u64> = texts.iter().map(|t| estimate(t.text)).collect();
    let before = tok.iter().sum::<u64>() + MESSAGE_OVERHEAD * conv.messages as u64;
    let target = match policy.target {
        Target::Tokens(t) => t,
        Target::Ratio(r) => (before as f64 * r.clamp(0.0, 1.0)) as u64,
    };
    let unchanged = Pruned {
        edits: Vec::new(),
        tokens_before: before,
        tokens_after: before,
    };
    if before <= target || n == 0 {
        return unchanged;
    }
    let last_user = texts
        .iter()
        .rposition(|t| t.role == Role::User)
        .map(|i| texts[i].msg);
    let first_user = texts.iter().find(|t| t.role == Role::User).map(|t| t.msg);
    let recent_from = conv.messages.saturating_sub(policy.keep_last);
    let protected = |t: &Text<'_>| {
        t.role == Role::System
            || t.msg < conv.floor
            || t.msg >= recent_from
            || Some(t.msg) == last_user
    };
    let candidate: Vec<bool> = texts
        .iter()
        .zip(&tok)
        .map(|(t, &k)| !protected(t) && k >= MIN_TOKENS)
        .collect();
    if !candidate.iter().any(|&c| c) {
        return unchanged;
    }

    // The query: the last user turn, the task (first user turn), the system prompt.
    let mut parts: Vec<(&str, f32)> = Vec::new();
    for t in texts {
        let w = if Some(t.msg) == last_user && t.role == Role::User {
            1.0
        } else if Some(t.msg) == first_user && t.role == Role::User {
            0.5
        } else if t.role == Role::System {
            0.3
        } else {
            continue;
        };
        parts.push((t.text, w));
    }
    let query = Query::new(&parts);

    let mut fate: Vec<Fate> = vec![Fate::Keep; n];

    // 1. Duplicates: the latest copy stays. A near-duplicate keeps the lines the later
    // copy does not have (a value that changed between two reads of a file).
    if policy.strategies.dedupe {
        let mut later: Vec<(u64, [u64; SKETCH], u64, usize)> = Vec::new();
        for i in (0..n).rev() {
            if tok[i] < DEDUPE_MIN_TOKENS || texts[i].role == Role::System {
                continue;
            }
            let (exact, sim) = fingerprint(texts[i].text);
            let same = later.iter().find(|(e, s, k, _)| {
                *e == exact
                    || (shared(s, &sim) + 2 >= SKETCH && k.abs_diff(tok[i]) * 5 <= *k.max(&tok[i]))
            });
            if let (Some(&(e, _, _, j)), true) = (same, candidate[i]) {
                let why = "repeated later in the conversation";
                if e == exact {
                    fate[i] = Fate::Replace(placeholder(&texts[i], tok[i], Some(why)));
                } else {
                    let theirs: std::collections::HashSet<&str> =
                        texts[j].text.lines().map(str::trim).collect();
                    let own: Vec<&str> = texts[i]
                        .text
                        .lines()
                        .filter(|l| !theirs.contains(l.trim()))
                        .collect();
                    if own.len() <= NEAR_DUPLICATE_LINES {
                        let mut p = placeholder(
                            &texts[i],
                            tok[i],
                            Some("repeated later, except these lines"),
                        );
                        for l in own {
                            p.push('\n');
                            p.push_str(l);
                        }
                        fate[i] = Fate::Replace(p);
                    }
                }
            }
            later.push((exact, sim, tok[i], i));
        }
    }

    // Segments of the texts still in play, scored against the query.
    let mut segs: Vec<(u32, u32)> = Vec::new();
    let mut seg_text: Vec<u32> = Vec::new();
    let mut ranges: Vec<(usize, usize)> = vec![(0, 0); n];
    let mut corpus = Corpus::new(&query);
    for i in 0..n {
        if !candidate[i] || matches!(fate[i], Fate::Replace(_)) {
            continue;
        }
        let s = segs.len();
        segments(texts[i].text, &mut segs);
        for &(a, b) in &segs[s..] {
            corpus.add(&texts[i].text[a as usize..b as usize]);
            seg_text.push(i as u32);
        }
        ranges[i] = (s, segs.len());
    }
    let scores = corpus.scores();
    let seg_tok: Vec<u64> = segs
        .iter()
        .zip(&seg_text)
        .map(|(&(a, b), &i)| estimate(&texts[i as usize].text[a as usize..b as usize]))
        .collect();
    let best = scores.iter().copied().fold(0.0f32, f32::max);
    let mut kept = vec![true; segs.len()];

    // 2. Old tool results that share nothing with the query.
    if policy.strategies.clear_tool_results {
        let mut recent_tools = 0usize;
        for i in (0..n).rev() {
            if texts[i].role != Role::Tool {
                continue;
            }
            recent_tools += 1;
            if recent_tools <= policy.tool_keep_last
                || !candidate[i]
                || matches!(fate[i], Fate::Replace(_))
            {
                continue;
            }
            let (s, e) = ranges[i];
            let top = scores[s..e].iter().copied().fold(0.0f32, f32::max);
            if best <= 0.0 || top < CLEAR_SHARE * best {
                fate[i] = Fate::Replace(placeholder(&texts[i], tok[i], None));
            }
        }
    }

    // 3. Per tool output: head, tail and the best lines in between.
    if policy.strategies.cap_tool_output {
        for i in 0..n {
            if texts[i].role != Role::Tool
                || !candidate[i]
                || matches!(fate[i], Fate::Replace(_))
                || tok[i] <= policy.tool_max_tokens
            {
                continue;
            }
            let (s, e) = ranges[i];
            let cap = policy.tool_max_tokens;
            let edge = cap / 8;
            let mut keep = vec![false; e - s];
            let mut used = 0u64;
            let mut head = 0u64;
            for j in s..e {
                if head + seg_tok[j] > edge {
                    break;
                }
                head += seg_tok[j];
                keep[j - s] = true;
            }
            let mut tail = 0u64;
            for j in (s..e).rev() {
                if keep[j - s] || tail + seg_tok[j] > edge {
                    break;
                }
                tail += seg_tok[j];
                keep[j - s] = true;
            }
            used += head + tail;
            let mut order: Vec<usize> = (s..e).filter(|&j| !keep[j - s]).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            for j in order {
                if scores[j] <= 0.0 {
                    break;
                }
                if used + seg_tok[j] <= cap {
                    used += seg_tok[j];
                    keep[j - s] = true;
                }
            }
            kept[s..e].copy_from_slice(&keep);
        }
    }

    // The tokens of a text as things stand.
    let current = |i: usize, fate: &[Fate], kept: &[bool]| -> u64 {
        match &fate[i] {
            Fate::Replace(p) => estimate(p),
            Fate::Keep if candidate[i] => {
                let (s, e) = ranges[i];
                let body: u64 = (s..e).filter(|&j| kept[j]).map(|j| seg_tok[j]).sum();
                let gaps = (s..e)
                    .filter(|&j| !kept[j] && (j == s || kept[j - 1]))
                    .count() as u64;
                body + gaps * 8
            }
            Fate::Keep => tok[i],
        }
    };

    // 4. Selection by score, within the target.
    if policy.strategies.select {
        let total: u64 = (0..n).map(|i| current(i, &fate, &kept)).sum::<u64>()
            + MESSAGE_OVERHEAD * conv.messages as u64;
        if total > target {
            let fixed: u64 = (0..n)
                .filter(|&i| !candidate[i] || matches!(fate[i], Fate::Replace(_)))
                .map(|i| current(i, &fate, &kept))
                .sum::<u64>()
                + MESSAGE_OVERHEAD * conv.messages as u64;
            let live: Vec<usize> = (0..segs.len())
                .filter(|&j| kept[j] && matches!(fate[seg_text[j] as usize], Fate::Keep))
                .collect();
            // Markers for the gaps this leaves: a few tokens per text in play.
            let texts_live = {
                let mut v: Vec<u32> = live.iter().map(|&j| seg_text[j]).collect();
                v.dedup();
                v.len() as u64
            };
            let mut budget = target.saturating_sub(fixed + texts_live * 8);
            let mut round_budget = budget;
            let norm = if best > 0.0 { 1.0 / best } else { 0.0 };
            let messages = conv.messages.max(1) as f32;
            let priority = |j: usize| -> f32 {
                let i = seg_text[j] as usize;
                let first = ranges[i].0 == j;
                scores[j] * norm
                    + 0.15 * texts[i].msg as f32 / messages
                    + if first { 0.1 } else { 0.0 }
            };
            let mut order: Vec<(f32, usize)> = live.iter().map(|&j| (priority(j), j)).collect();
            order.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
            // The markers of the gaps are only known once chosen: a round that ends
            // above the target runs again with the excess taken off the budget.
            for _round in 0..3 {
                budget = round_budget;
                for &j in &live {
                    kept[j] = false;
                }
                // The lines that match the query best are kept even when the protected
                // part alone fills the target (up to a quarter of it): they are what the
                // next answer is likely to need.
                let mut must = target / 4;
                for &(_, j) in &order {
                    if scores[j] * norm >= MUST_KEEP_SHARE && seg_tok[j] <= must {
                        must -= seg_tok[j];
                        budget = budget.saturating_sub(seg_tok[j]);
                        kept[j] = true;
                    }
                }
                for &(_, j) in &order {
                    if !kept[j] && seg_tok[j] <= budget {
                        budget -= seg_tok[j];
                        kept[j] = true;
                    }
                }
                let total: u64 = (0..n).map(|i| current(i, &fate, &kept)).sum::<u64>()
                    + MESSAGE_OVERHEAD * conv.messages as u64;
                if total <= target || round_budget == 0 {
                    break;
                }
                round_budget = round_budget.saturating_sub(total - target);
            }
        }
    }

    // The edits.
    let mut edits = Vec::new();
    let mut after = MESSAGE_OVERHEAD * conv.messages as u64;
    for i in 0..n {
        let new = match &fate[i] {
            Fate::Replace(p) => Some(p.clone()),
            Fate::Keep if candidate[i] => {
                let (s, e) = ranges[i];
                if (s..e).all(|j| kept[j]) {
                    None
                } else if (s..e).all(|j| !kept[j]) {
                    Some(placeholder(&texts[i], tok[i], None))
                } else {
                    let text = texts[i].text;
                    let mut out = String::new();
                    let mut gap = 0usize;
                    for j in s..e {
                        if kept[j] {
                            if gap > 0 {
                                out.push_str(&gap_marker(gap));
                                gap = 0;
                            }
                            out.push_str(&text[segs[j].0 as usize..segs[j].1 as usize]);
                            if !out.ends_with('\n') && j + 1 < e && !kept[j + 1] {
                                out.push('\n');
                            }
                        } else {
                            gap += 1;
                        }
                    }
                    if gap > 0 {
                        if !out.ends_with('\n') {
                            out.push('\n');
                        }
                        out.push_str(&gap_marker(gap));
                    }
                    Some(out.trim_end_matches('\n').to_string())
                }
            }
            Fate::Keep => None,
        };
        match new {
            Some(new) => {
                let k = estimate(&new);
                if k >= tok[i] {
                    after += tok[i];
                    continue;
                }
                after += k;
                edits.push(Edit { text: i, new });
            }
            None => after += tok[i],
        }
    }
    Pruned {
        edits,
        tokens_before: before,
        tokens_after: after,
    }
}

#[cfg(test)]
mod tests;
