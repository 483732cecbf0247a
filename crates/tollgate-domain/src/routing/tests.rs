//! Tests against the committed model, its test vectors and the committed dev set.

use super::features::{FeatureSpec, Scratch, featurize};
use super::metrics::{self, Curve, Evaluation};
use super::*;
use serde_json::Value;

/// Written by `scripts/router_ref.py`, an independent Python implementation of the
/// featuriser and the model file.
const VECTORS: &str = include_str!("../../data/router-test-vectors.json");
const DEV: &str = include_str!("../../../../data/router/dev.jsonl");

fn dev() -> (Vec<String>, Vec<f64>, Vec<f64>) {
    let (mut p, mut l, mut h) = (Vec::new(), Vec::new(), Vec::new());
    for line in DEV.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        p.push(v["prompt"].as_str().unwrap().to_string());
        l.push(v["outcomes"]["mixtral-8x7b-instruct"].as_f64().unwrap());
        h.push(v["outcomes"]["gpt-4-1106-preview"].as_f64().unwrap());
    }
    (p, l, h)
}

#[test]
fn embedded_model_loads_and_is_small() {
    assert!(DEFAULT_MODEL_BYTES.len() < 1 << 20);
    let r = Router::embedded().unwrap();
    let m = r.model();
    assert_eq!(m.spec, FeatureSpec::default());
    assert_eq!(m.min_tokens, 3);
    assert_eq!(m.light, "mixtral-8x7b-instruct");
    assert_eq!(m.heavy, "gpt-4-1106-preview");
    let cal = r.calibration();
    assert_eq!(cal.quality_target, 0.95);
    assert!(cal.threshold > 0.0 && cal.threshold < 1.0);
    assert!(cal.points.len() > 50);
    assert!(
        cal.points
            .windows(2)
            .all(|w| w[0].heavy_share <= w[1].heavy_share)
    );
    assert_eq!(r.to_bytes(), DEFAULT_MODEL_BYTES);
}

#[test]
fn embedded_model_scores_the_committed_test_vectors() {
    let doc: Value = serde_json::from_str(VECTORS).unwrap();
    let r = Router::embedded().unwrap();
    let tol = doc["tolerance"].as_f64().unwrap();
    let vectors = doc["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 20);
    let mut scratch = Scratch::default();
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let prompt = v["prompt"].as_str().unwrap();
        let f = featurize(r.spec(), prompt, &mut scratch);
        assert_eq!(f.tokens as u64, v["tokens"].as_u64().unwrap(), "{name}");
        assert_eq!(
            f.buckets.len() as u64,
            v["n_buckets"].as_u64().unwrap(),
            "{name}"
        );
        let sum: u64 = f.buckets.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(sum, v["bucket_sum"].as_u64().unwrap(), "{name}");
        if let Some(expected) = v.get("buckets") {
            let mut got = f.buckets.to_vec();
            got.sort_unstable();
            let expected: Vec<u32> = serde_json::from_value(expected.clone()).unwrap();
            assert_eq!(got, expected, "{name}");
        }
        let margin = r.model().margin(&f);
        let want = v["margin"].as_f64().unwrap();
        assert!(
            (margin - want).abs() <= tol,
            "{name}: margin {margin} vs {want}"
        );
        let score = r.score(prompt);
        let want = v["score"].as_f64().unwrap();
        assert!(
            (score - want).abs() <= tol,
            "{name}: score {score} vs {want}"
        );
        assert!((0.0..=1.0).contains(&score));
    }
}

#[test]
fn short_prompts_get_the_lowest_score_and_tier() {
    let r = Router::embedded().unwrap();
    let p = r.default_policy();
    for text in ["", "hi", "  hello there  ", "Answer:"] {
        assert_eq!(
            r.decide(text, &p),
            Decision {
                score: 0.0,
                tier: 0
            },
            "{text:?}"
        );
    }
}

#[test]
fn metrics_reproduce_the_reference_baselines_on_dev() {
    // Reference values: router-lab metrics.py (numpy) on the same scores.
    let (p, l, h) = dev();
    let bytes: Vec<f64> = p.iter().map(|s| s.len() as f64).collect();
    let e = Evaluation::new(&bytes, &l, &h).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(close(e.apgr, 0.6062274509803921), "{e:?}");
    assert!(close(e.apgr_routellm, 0.5556040150784605), "{e:?}");
    assert!(close(e.cpt50, 0.39269746646795817), "{e:?}");
    assert!(close(e.cpt80, 0.7444113263785394), "{e:?}");
    assert_eq!(e.at95.threshold, 265.0);
    assert!(close(e.at95.heavy_share, 0.5655737704918032));
    assert!(close(e.at95.quality, 0.9507299270072993));
    let curve = Curve::new(&bytes, &l, &h).unwrap();
    assert!(close(curve.auc(), 0.5527044797054439));

    let chars: Vec<f64> = p.iter().map(|s| s.chars().count() as f64).collect();
    let e = Evaluation::new(&chars, &l, &h).unwrap();
    assert!(close(e.apgr, 0.6056882352941175), "{e:?}");
    assert!(close(e.apgr_routellm, 0.5546375032874558), "{e:?}");

    // Heavily tied scores (1,000 distinct values): tie splitting and RouteLLM's
    // interpolated decile thresholds.
    let tied: Vec<f64> = (0..p.len())
        .map(|i| ((i * 7919) % 1000) as f64 / 1000.0)
        .collect();
    let e = Evaluation::new(&tied, &l, &h).unwrap();
    assert!(close(e.apgr, 0.5351176470588235), "{e:?}");
    assert!(close(e.apgr_routellm, 0.48390461997019407), "{e:?}");
    assert!(close(e.cpt50, 0.5052160953800297), "{e:?}");
    assert!(close(e.cpt80, 0.8032786885245902), "{e:?}");
    assert_eq!(e.at95.threshold, 0.299);
}

#[test]
fn embedded_model_meets_the_dev_target() {
    let (p, l, h) = dev();
    let r = Router::embedded().unwrap();
    let s: Vec<f64> = p.iter().map(|t| r.score(t)).collect();
    let e = Evaluation::new(&s, &l, &h).unwrap();
    assert!(e.apgr >= 0.70, "{e:?}");
    // The stored threshold is the dev calibration's.
    let at = metrics::at_threshold(&s, &l, &h, r.calibration().threshold).unwrap();
    assert!(at.quality >= 0.95, "{at:?}");
    // The curve's 1 %-resolution threshold for the same target is never more aggressive.
    let t = r.policy_for_quality(0.95).unwrap().thresholds()[0];
    assert!(t <= r.calibration().threshold, "{t}");
}

#[test]
fn tier_policies() {
    let p = TierPolicy::new(vec![0.3, 0.6]).unwrap();
    assert_eq!(p.tiers(), 3);
    assert_eq!(
        [0.0, 0.29, 0.3, 0.59, 0.6, 1.0].map(|s| p.tier(s)),
        [0, 0, 1, 1, 2, 2]
    );
    assert!(TierPolicy::new(vec![]).is_err());
    assert!(TierPolicy::new(vec![0.6, 0.3]).is_err());
    assert!(TierPolicy::new(vec![1.5]).is_err());
    assert!(TierPolicy::new(vec![f64::NAN]).is_err());
    let r = Router::embedded().unwrap();
    assert_eq!(
        r.default_policy().thresholds(),
        &[r.calibration().threshold]
    );
    // A higher quality target never sends fewer prompts heavy.
    let t90 = r.policy_for_quality(0.90).unwrap().thresholds()[0];
    let t99 = r.policy_for_quality(0.99).unwrap().thresholds()[0];
    assert!(t99 <= t90);
}

#[test]
fn prompt_text_keeps_the_requesters_turns() {
    let t = prompt_text([
        ("system", "You are terse."),
        ("user", "Summarise this."),
        ("assistant", "A long answer."),
        ("tool", "{\"x\":1}"),
        ("user", "  "),
        ("user", "Now in French."),
    ]);
    assert_eq!(t, "You are terse.\n\nSummarise this.\n\nNow in French.");
}

#[test]
fn scoring_is_deterministic_across_threads_and_scratch() {
    let r = Router::embedded().unwrap();
    let text = "Design a distributed rate limiter with Redis and explain the failure modes.";
    let a = r.score(text);
    let b = std::thread::spawn(move || Router::embedded().unwrap().score(text))
        .join()
        .unwrap();
    let c = r.score_with(&mut Scratch::default(), text);
    assert_eq!(a, b);
    assert_eq!(a, c);
}

mod properties {
    use super::super::features::{FeatureSpec, Scratch, bigram_key, featurize, fnv1a64, tokens};
    use super::super::metrics::Curve;
    use super::super::*;
    use proptest::prelude::*;

    /// Text with the structures the featuriser special-cases: newlines, option prefixes,
    /// `Answer:`, multi-byte characters, long word runs, trailing whitespace.
    fn texty() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[a-zA-Z0-9]{1,40}",
            Just(" ".to_string()),
            Just("\n".to_string()),
            Just("\nA. ".to_string()),
            Just("B) ".to_string()),
            Just("Answer:".to_string()),
            Just("\r\n\t ".to_string()),
            "[ -~]{1,6}",
            "\\PC{1,4}",
        ];
        prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
    }

    fn specs() -> impl Strategy<Value = FeatureSpec> {
        (10u8..=18, 1u32..64, 1u32..64).prop_map(|(bits, head_bytes, tail_bytes)| FeatureSpec {
            bits,
            head_bytes,
            tail_bytes,
        })
    }

    proptest! {
        #[test]
        fn featurising_any_text_is_total_bounded_and_consistent(text in texty(), spec in specs()) {
            let mut s = Scratch::default();
            let f = featurize(&spec, &text, &mut s);
            let buckets = f.buckets.to_vec();
            let n_tokens = f.tokens;
            // A text that fits both windows is read whole (as the head); otherwise each
            // window is at most its size (the tail's cut may move right, never left).
            prop_assert!(f.head.len() + f.tail.len() <= (spec.head_bytes + spec.tail_bytes) as usize);
            prop_assert!(f.tail.is_empty() || f.head.len() <= spec.head_bytes as usize);
            // The on-the-fly normalisation agrees with the copying one (`tokens`), and the
            // buckets are exactly the hashed unigrams and within-window bigrams.
            let toks = tokens(&spec, &text);
            prop_assert_eq!(toks.len(), n_tokens);
            let mask = (1u64 << spec.bits) - 1;
            let mut sorted = buckets.clone();
            sorted.sort_unstable();
            let before = sorted.len();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), before, "buckets are distinct");
            prop_assert!(sorted.iter().all(|&b| u64::from(b) <= mask));
            let hu: Vec<u64> = toks.iter().map(|t| fnv1a64(&[b"w".as_slice(), t].concat())).collect();
            prop_assert!(hu.iter().all(|h| sorted.binary_search(&((h & mask) as u32)).is_ok()));
            let pairs = hu.windows(2).filter(|w| sorted.binary_search(&((bigram_key(w[0], w[1]) & mask) as u32)).is_ok()).count();
            // All pairs but at most the one across the head/tail gap are present.
            prop_assert!(pairs + 1 >= hu.len().saturating_sub(1));
            // Reusing the scratch gives the same answer.
            let again = featurize(&spec, &text, &mut s).buckets.to_vec();
            prop_assert_eq!(again, buckets);
        }

        #[test]
        fn scores_are_in_unit_range_and_deterministic(text in texty()) {
            let r = Router::embedded().unwrap();
            let a = r.score(&text);
            prop_assert!((0.0..=1.0).contains(&a));
            prop_assert_eq!(a, r.score(&text));
            let d = r.decide(&text, &r.default_policy());
            prop_assert!(d.tier <= 1);
        }

        #[test]
        fn metrics_depend_only_on_the_order_of_scores(
            rows in prop::collection::vec((0u8..20, any::<bool>(), any::<bool>()), 5..200)
        ) {
            let s: Vec<f64> = rows.iter().map(|r| f64::from(r.0)).collect();
            let l: Vec<f64> = rows.iter().map(|r| f64::from(u8::from(r.1))).collect();
            let h: Vec<f64> = rows.iter().map(|r| f64::from(u8::from(r.2))).collect();
            let Ok(a) = Curve::new(&s, &l, &h) else { return Ok(()) };
            let t: Vec<f64> = s.iter().map(|x| (x / 7.0).exp() - 3.0).collect();
            let b = Curve::new(&t, &l, &h).unwrap();
            prop_assert!((a.apgr() - b.apgr()).abs() < 1e-9);
            prop_assert!((a.cpt(0.5) - b.cpt(0.5)).abs() < 1e-9);
            prop_assert!(a.cpt(0.5) <= a.cpt(0.8) + 1e-12);
            prop_assert!((a.pgr_at(1.0) - 1.0).abs() < 1e-9);
        }
    }
}
