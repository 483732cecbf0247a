//! Tiered routing: judge a prompt before it is processed and pick a tier of a model ladder
//! (light → heavy).
//!
//! The router is a linear model over hashed words and word pairs of the prompt (see
//! [`features`]), trained on labelled outcomes (which of a light and a heavy model answered
//! well) and measured with RouteLLM's metrics ([`metrics`]). A decision featurises at most
//! ~4 KB of text and sums ≤ a few thousand `i16` weights: microseconds on one core, no
//! network, no file (the default model is compiled in).
//!
//! ```
//! use tollgate_domain::routing::Router;
//! let router = Router::embedded().unwrap();
//! let s = router.score("Prove that there are infinitely many primes of the form 4k + 3.");
//! assert!((0.0..=1.0).contains(&s));
//! let d = router.decide("hi", &router.default_policy());
//! assert_eq!((d.score, d.tier), (0.0, 0)); // fewer than 3 tokens: the lowest score
//! ```
//!
//! # Layout
//! - [`features`]: normalisation, windowing, tokens, hashed buckets (and dense statistics).
//! - [`model`]: the quantised linear model, its calibration and its binary file format.
//! - [`sample`]: hashed feature vectors of routed requests and their labels (training on
//!   the gateway's own traffic).
//! - [`sticky`]: keep a conversation on its tier unless switching beats its warm cache.
//! - [`check`]: the cheap answer check that decides an escalation to the next tier.
//! - [`train`]: soft-label L2 logistic regression, solved by Newton-CG; cross-validation folds.
//! - [`metrics`]: PGR, APGR (both definitions), CPT, thresholds for a quality target, savings.
//! - this module: [`Router`] (score, decide, calibrate), [`TierPolicy`], [`prompt_text`].
//!
//! # Decisions
//! `score` is the logistic sigmoid of the margin, in [0, 1], higher meaning more need for
//! the heavy tier. A text with fewer than `min_tokens` (3 by default) tokens scores 0.0:
//! greetings and empty prompts go to the lightest tier (an unfitted bias would otherwise
//! make them look average-to-hard). A [`TierPolicy`] maps a score to a tier index.

pub mod check;
pub mod features;
pub mod metrics;
pub mod model;
pub mod sample;
pub mod sticky;
pub mod train;

use features::{FeatureSpec, Scratch, featurize};
use model::{Calibration, CalibrationPoint, Model, sigmoid};
use std::cell::RefCell;
use std::sync::OnceLock;

/// Routing errors: a bad model file, bad labelled data, a bad policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("router model: {0}")]
    BadModel(String),
    #[error("router data: {0}")]
    Data(String),
    #[error("tier policy: {0}")]
    Policy(String),
}

impl RoutingError {
    /// Stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            RoutingError::BadModel(_) => "router_bad_model",
            RoutingError::Data(_) => "router_bad_data",
            RoutingError::Policy(_) => "router_bad_policy",
        }
    }
}

/// The default model's file, compiled in (trained by `tollgate router train` on
/// `data/router/train.jsonl.gz`, calibrated on `data/router/dev.jsonl`).
pub const DEFAULT_MODEL_BYTES: &[u8] = include_bytes!("../../data/router-default.bin");

/// Maps a score to a tier of a ladder (0 = lightest). `thresholds` are non-decreasing;
/// the tier is the number of thresholds ≤ score, so a 2-tier ladder has one threshold
/// and routes heavy iff score ≥ threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct TierPolicy {
    thresholds: Vec<f64>,
}

impl TierPolicy {
    /// A policy for a ladder of `thresholds.len() + 1` tiers.
    pub fn new(thresholds: Vec<f64>) -> Result<TierPolicy, RoutingError> {
        if thresholds.is_empty() {
            return Err(RoutingError::Policy(
                "a ladder needs at least two tiers (one threshold)".into(),
            ));
        }
        if thresholds.iter().any(|t| !(0.0..=1.0).contains(t)) {
            return Err(RoutingError::Policy(
                "thresholds must be within [0, 1]".into(),
            ));
        }
        if thresholds.windows(2).any(|w| w[1] < w[0]) {
            return Err(RoutingError::Policy(
                "thresholds must be non-decreasing (light → heavy)".into(),
            ));
        }
        Ok(TierPolicy { thresholds })
    }

    /// Two tiers: heavy iff score ≥ `threshold`.
    pub fn two_tier(threshold: f64) -> Result<TierPolicy, RoutingError> {
        TierPolicy::new(vec![threshold])
    }

    pub fn tiers(&self) -> usize {
        self.thresholds.len() + 1
    }

    pub fn thresholds(&self) -> &[f64] {
        &self.thresholds
    }

    /// The tier for a score: 0 = lightest, `tiers() - 1` = heaviest.
    pub fn tier(&self, score: f64) -> usize {
        self.thresholds.partition_point(|&t| t <= score)
    }
}

/// A routing decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// In [0, 1]; higher = more need for a heavy tier.
    pub score: f64,
    /// Index into the ladder, 0 = lightest.
    pub tier: usize,
}

/// A loaded router model, ready to score on the hot path (`&self`, thread-safe).
#[derive(Debug, Clone, PartialEq)]
pub struct Router {
    model: Model,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl Router {
    pub fn new(model: Model) -> Router {
        Router { model }
    }

    /// Parse a model file (see [`model`] for the format).
    pub fn from_bytes(bytes: &[u8]) -> Result<Router, RoutingError> {
        Model::from_bytes(bytes).map(Router::new)
    }

    /// The compiled-in default router, parsed once.
    pub fn embedded() -> Result<&'static Router, RoutingError> {
        static EMBEDDED: OnceLock<Result<Router, RoutingError>> = OnceLock::new();
        EMBEDDED
            .get_or_init(|| Router::from_bytes(DEFAULT_MODEL_BYTES))
            .as_ref()
            .map_err(Clone::clone)
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.model.to_bytes()
    }

    pub fn spec(&self) -> &FeatureSpec {
        &self.model.spec
    }

    pub fn calibration(&self) -> &Calibration {
        &self.model.calibration
    }

    /// The score of a text, in [0, 1] (uses a per-thread scratch buffer).
    pub fn score(&self, text: &str) -> f64 {
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => self.score_with(&mut s, text),
            Err(_) => self.score_with(&mut Scratch::default(), text),
        })
    }

    /// [`Router::score`] with caller-owned scratch buffers.
    pub fn score_with(&self, scratch: &mut Scratch, text: &str) -> f64 {
        let f = featurize(&self.model.spec, text, scratch);
        if f.tokens < usize::from(self.model.min_tokens) {
            return 0.0;
        }
        sigmoid(self.model.margin(&f))
    }

    /// Score a text and pick its tier.
    pub fn decide(&self, text: &str, policy: &TierPolicy) -> Decision {
        let score = self.score(text);
        Decision {
            score,
            tier: policy.tier(score),
        }
    }

    /// Two tiers at the model's calibrated threshold (its stored quality target, 95 % of
    /// the heavy model's quality on the dev set for the default model).
    pub fn default_policy(&self) -> TierPolicy {
        TierPolicy {
            thresholds: vec![self.model.calibration.threshold.clamp(0.0, 1.0)],
        }
    }

    /// Two tiers at the calibrated threshold keeping `target` × the heavy model's quality
    /// on the calibration set (1 % heavy-share resolution).
    pub fn policy_for_quality(&self, target: f64) -> Result<TierPolicy, RoutingError> {
        let t = self
            .model
            .calibration
            .threshold_for_quality(target)
            .ok_or_else(|| {
                RoutingError::Policy(format!(
                    "no calibrated threshold reaches {target} of heavy quality"
                ))
            })?;
        TierPolicy::two_tier(t)
    }

    /// Measure this router on a labelled set and store the calibration: the threshold
    /// keeping `target` × heavy quality with the fewest heavy calls, and the curve at
    /// heavy shares 0 %, 1 %, …, 100 %. Returns the scores.
    pub fn calibrate(
        &mut self,
        texts: &[&str],
        light: &[f64],
        heavy: &[f64],
        target: f64,
    ) -> Result<Vec<f64>, RoutingError> {
        let scores: Vec<f64> = texts.iter().map(|t| self.score(t)).collect();
        self.calibrate_scores(scores, light, heavy, target)
    }

    /// [`Router::calibrate`] on scores already computed (from [`sample::Sample`]s).
    pub fn calibrate_scores(
        &mut self,
        scores: Vec<f64>,
        light: &[f64],
        heavy: &[f64],
        target: f64,
    ) -> Result<Vec<f64>, RoutingError> {
        let best = metrics::threshold_for_quality(&scores, light, heavy, target)?;
        let pts = metrics::threshold_points(&scores, light, heavy)?;
        let zero = metrics::at_threshold(&scores, light, heavy, 1.0)?;
        let mut points = vec![CalibrationPoint {
            heavy_share: zero.heavy_share,
            threshold: 1.0,
            quality: zero.quality,
        }];
        for k in 1..=100 {
            let want = f64::from(k) / 100.0 - 1e-12;
            if let Some(p) = pts.iter().find(|p| p.heavy_share >= want)
                && points.last().is_none_or(|l| l.threshold != p.threshold)
            {
                points.push(CalibrationPoint {
                    heavy_share: p.heavy_share,
                    threshold: p.threshold,
                    quality: p.quality,
                });
            }
        }
        self.model.calibration = Calibration {
            quality_target: target,
            threshold: best.threshold,
            points,
        };
        Ok(scores)
    }

    /// Replace the model's informative metadata (JSON).
    pub fn set_meta(&mut self, meta: String) {
        self.model.meta = meta;
    }
}

/// The text a router judges for a chat conversation: the system/developer and user turns
/// in order, joined by blank lines. Assistant and tool turns are left out: they are model
/// output (not the requester's ask) and, being long, would dilute the request's words in
/// the L2-normalised features. With the featuriser's head and tail windows this keeps the
/// instructions (start) and the latest user request (end) of long conversations.
pub fn prompt_text<'a>(turns: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (role, text) in turns {
        if matches!(role, "system" | "developer" | "user") && !text.trim().is_empty() {
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str(text);
        }
    }
    out
}

#[cfg(test)]
mod tests;
