//! tollgate's domain: the rules of money and metering, free of IO.
//!
//! Nothing here touches a socket, a file, a clock or an async runtime: functions take
//! what they need (including `now`) as arguments, so every rule is a plain, testable
//! function. `cargo tree -p tollgate-domain` must never show tokio, axum, reqwest or a
//! database driver.
//!
//! # Layout
//! - [`money`]: exact integer money (`Money`, nano-USD) and per-token rates (`Rate`).
//! - [`prompt_cache`]: where provider prompt-cache breakpoints pay (prefix tracking, rules per model family).
//! - [`pricing`]: price tables in the community catalog format, tiers, hashing.
//! - [`usage`]: provider-neutral token counts.
//! - [`cost`]: usage × rates → exact cost, rounded up to the nano.
//! - [`attribution`]: who pays: key, user, team, agent, task, tags.
//! - [`ledger`]: the metered row.
//! - [`report`]: report dimensions and sums.
//! - [`budget`]: scopes, calendar periods, reservation arithmetic, alert thresholds.
//! - [`reconcile`]: the ledger against a provider's usage and cost exports (OpenAI,
//!   Anthropic, AWS CUR 2.0, FOCUS): matching, drift classification, the export parsers.
//! - [`replay`]: what-if replay: a recorded workload re-priced under another policy
//!   (model swap, prices, routing, prompt and response caching, pruning).
//! - [`ratelimit`]: rolling-window limits on requests, tokens and dollars per minute.
//! - [`loopguard`]: per-task limits and loop detection (SimHash of the newest messages).
//! - [`outcome`]: task outcomes (success, value in USD or minutes saved).
//! - [`value`]: value per dollar: task stats, ROI, savings by mechanism.
//! - [`routing`]: the light/heavy router: features, model, trainer, metrics, tier policy.
//! - [`time`]: report windows (`24h`, RFC 3339, Unix ms) and ISO timestamps.
//! - [`embed`]: sentence embeddings: the WordPiece tokenizer, the compiled-in static model,
//!   all-MiniLM-L6-v2 from bytes.
//! - [`cache`]: the response cache indexes: exact and semantic, bounded, TTL, LRU.
//! - [`prune`]: token pruning of long histories (dedupe, old tool results, caps, BM25
//!   selection against the last user turn), on a format-neutral view of the texts.

pub mod attribution;
pub mod budget;
pub mod cache;
pub mod cost;
pub mod embed;
pub mod ledger;
pub mod loopguard;
pub mod money;
pub mod outcome;
pub mod pricing;
pub mod prompt_cache;
pub mod prune;
pub mod ratelimit;
pub mod reconcile;
pub mod replay;
pub mod report;
pub mod routing;
pub mod time;
pub mod usage;
pub mod value;

pub use money::{Money, Rate};
