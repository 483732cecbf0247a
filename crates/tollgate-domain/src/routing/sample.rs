//! Routing samples: what the gateway may record of a routed request so a router can be
//! retrained on its own traffic without keeping any prompt text, and how a label is
//! derived for it from what was observed.
//!
//! A [`Sample`] is the request's hashed feature vector under a [`FeatureSpec`]: the
//! sorted distinct bucket ids of its words and word pairs (FNV-1a hashes folded to
//! `2^bits` buckets: the words cannot be read back), its token count and the 15 dense text
//! statistics. That is everything the trainer and the scorer use, so a model can be fitted
//! and calibrated on samples alone.
//!
//! # Labels, and the bandit-feedback limitation
//! The gateway observes the outcome of the tier that served a request, never of the tier
//! that did not. [`label`] therefore labels only what was observed:
//! - a light call whose answer failed the escalation check: light 0, heavy 1 (the retry
//!   on the heavier tier is what the client got);
//! - a light call in a task recorded `success`: light 1, heavy 1 (the light model
//!   sufficed; the heavy one is assumed at least as good);
//! - a light call in a task recorded `failure`: light 0, heavy 1 (an assumption: the
//!   failure may have had other causes, and the heavy model might have failed too);
//! - a heavy call: no label (what the light model would have done is unknown), and calls
//!   in tasks without an outcome, abandoned or still open: no label.
//!
//! The labelled set is thus biased toward what the current router already sent light: a
//! router trained on it learns where light was wrong or enough, not where heavy was
//! needlessly used. Shadow mode (which records decisions while serving the default) or
//! occasionally serving a light tier on purpose widens what is observed.

use super::RoutingError;
use super::features::{FeatureSpec, Scratch, dense_stats, featurize};
use super::model::{Model, sigmoid};
use serde::{Deserialize, Serialize};

/// A request's hashed features (no text).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The spec's `bits` (a sample is only usable with a model of the same spec).
    pub bits: u8,
    pub head_bytes: u32,
    pub tail_bytes: u32,
    /// Tokens of the normalised, windowed text.
    pub tokens: u32,
    /// Distinct bucket ids, sorted.
    pub buckets: Vec<u32>,
    /// The 15 dense statistics.
    pub dense: Vec<f64>,
}

impl Sample {
    /// Featurise `text` under `spec`.
    pub fn of(spec: &FeatureSpec, text: &str, scratch: &mut Scratch) -> Sample {
        let f = featurize(spec, text, scratch);
        let mut buckets = f.buckets.to_vec();
        buckets.sort_unstable();
        Sample {
            bits: spec.bits,
            head_bytes: spec.head_bytes,
            tail_bytes: spec.tail_bytes,
            tokens: u32::try_from(f.tokens).unwrap_or(u32::MAX),
            dense: dense_stats(&f, spec).to_vec(),
            buckets,
        }
    }

    pub fn spec(&self) -> FeatureSpec {
        FeatureSpec {
            bits: self.bits,
            head_bytes: self.head_bytes,
            tail_bytes: self.tail_bytes,
        }
    }

    /// The JSON stored in the `route_samples` table. Dense statistics are written as
    /// their shortest round-trip decimal text, so a sample reads back bit-exact.
    pub fn to_json(&self) -> String {
        let w = Wire {
            bits: self.bits,
            head_bytes: self.head_bytes,
            tail_bytes: self.tail_bytes,
            tokens: self.tokens,
            buckets: self.buckets.clone(),
            dense: self.dense.iter().map(|d| d.to_string()).collect(),
        };
        serde_json::to_string(&w).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Result<Sample, RoutingError> {
        let bad = |m: &str| RoutingError::Data(format!("sample: {m}"));
        let w: Wire = serde_json::from_str(s).map_err(|e| bad(&e.to_string()))?;
        if w.bits > 24 || w.dense.len() != 15 {
            return Err(bad("inconsistent features"));
        }
        let n = 1u64 << w.bits;
        if w.buckets.iter().any(|&b| u64::from(b) >= n) {
            return Err(bad("bucket out of range"));
        }
        let dense = w
            .dense
            .iter()
            .map(|d| d.parse::<f64>().ok().filter(|x| x.is_finite()))
            .collect::<Option<Vec<f64>>>()
            .ok_or_else(|| bad("dense statistic is not a finite number"))?;
        Ok(Sample {
            bits: w.bits,
            head_bytes: w.head_bytes,
            tail_bytes: w.tail_bytes,
            tokens: w.tokens,
            buckets: w.buckets,
            dense,
        })
    }

    /// The dense statistics as the trainer's array.
    pub fn dense_array(&self) -> [f64; 15] {
        let mut a = [0.0; 15];
        for (x, v) in a.iter_mut().zip(&self.dense) {
            *x = *v;
        }
        a
    }
}

impl Model {
    /// The score of a sample (as [`super::Router::score`] of its text): `None` when the
    /// sample was taken under another feature spec.
    pub fn score_sample(&self, s: &Sample) -> Option<f64> {
        if s.spec() != self.spec {
            return None;
        }
        if s.tokens < u32::from(self.min_tokens) {
            return Some(0.0);
        }
        let mut z = self.bias;
        let n = s.buckets.len();
        if n > 0 {
            let sum: i64 = s
                .buckets
                .iter()
                .map(|&k| self.weights.get(k as usize).map_or(0, |w| i64::from(*w)))
                .sum();
            z += (sum as f64 * self.scale) / (n as f64).sqrt();
        }
        let x = s.dense_array();
        for d in &self.dense {
            z += d.weight * (x[usize::from(d.feature.id())] - d.mean) * d.inv_sd;
        }
        Some(sigmoid(z))
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    bits: u8,
    head_bytes: u32,
    tail_bytes: u32,
    tokens: u32,
    buckets: Vec<u32>,
    dense: Vec<String>,
}

/// What is known of how a routed call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The call was served by the light deployment (else by the heavy one).
    pub served_light: bool,
    /// Its answer failed the escalation check.
    pub escalated: bool,
    /// Its task's recorded outcome: `Some(true)` success, `Some(false)` failure, `None`
    /// for no outcome, abandoned or open.
    pub task_succeeded: Option<bool>,
}

/// `(light quality, heavy quality)` for a routed call, or `None` when the call says
/// nothing about the light tier (see the module docs).
pub fn label(o: &Observed) -> Option<(f64, f64)> {
    if !o.served_light {
        return None;
    }
    if o.escalated {
        return Some((0.0, 1.0));
    }
    match o.task_succeeded {
        Some(true) => Some((1.0, 1.0)),
        Some(false) => Some((0.0, 1.0)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Router;

    #[test]
    fn a_sample_scores_like_its_text_and_keeps_no_words() {
        let r = Router::embedded().unwrap();
        let mut scratch = Scratch::default();
        for text in [
            "What is the capital of Portugal?",
            "hi",
            "Prove that there are infinitely many primes of the form 4k + 3, step by step.",
        ] {
            let s = Sample::of(r.spec(), text, &mut scratch);
            let back = Sample::from_json(&s.to_json()).unwrap();
            assert_eq!(back, s);
            let a = r.model().score_sample(&back).unwrap();
            assert!((a - r.score(text)).abs() < 1e-12, "{text}: {a}");
            let json = s.to_json();
            assert!(!json.contains("Portugal") && !json.contains("primes"));
        }
        let mut other = Sample::of(r.spec(), "some words here", &mut scratch);
        other.bits = 12;
        assert_eq!(r.model().score_sample(&other), None);
        assert!(Sample::from_json("{\"bits\": 30}").is_err());
        assert!(Sample::from_json("not json").is_err());
    }

    #[test]
    fn labels_only_what_was_observed() {
        let o = |served_light, escalated, task_succeeded| Observed {
            served_light,
            escalated,
            task_succeeded,
        };
        let cases = [
            (o(true, true, None), Some((0.0, 1.0))),
            (o(true, true, Some(true)), Some((0.0, 1.0))),
            (o(true, false, Some(true)), Some((1.0, 1.0))),
            (o(true, false, Some(false)), Some((0.0, 1.0))),
            (o(true, false, None), None),
            (o(false, false, Some(true)), None),
            (o(false, false, Some(false)), None),
            (o(false, true, None), None),
        ];
        for (obs, want) in cases {
            assert_eq!(label(&obs), want, "{obs:?}");
        }
    }
}
