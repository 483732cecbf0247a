//! Router quality metrics, as RouteLLM defines them.
//!
//! Inputs: per prompt a router score `s` (higher = more need for the heavy model) and the
//! quality of the light and of the heavy model's answer (`l`, `h`, usually 0 or 1).
//! `q_light`, `q_heavy` are their means. PGR(q) = (q − q_light) / (q_heavy − q_light): the
//! share of the quality gap a router recovers.
//!
//! - **Expected PGR curve**: prompts sorted by decreasing score, the top share `c` sent
//!   heavy; a group of tied scores straddling the cut is split proportionally (= the
//!   expectation under random tie-breaking), so the curve is piecewise linear between
//!   tie-group boundaries.
//! - **APGR** ([`Curve::apgr`]): mean of PGR at heavy shares 10 %, 20 %, …, 100 % ("PGR
//!   averaged over heavy-call shares 10 %…100 %"). This is the definition the issue's
//!   reference numbers use: "longer prompt ⇒ heavy" 0.606 on dev, random 0.55 expected.
//! - **APGR, RouteLLM trapezoid** ([`apgr_routellm`]): RouteLLM's exact procedure (`evals/`:
//!   thresholds at the score deciles by linear interpolation, heavy iff s ≥ t, the last
//!   threshold strict; the 11 (share, accuracy) points sorted by share; trapezoid area,
//!   normalised). About 0.05 below APGR because PGR(100 %) = 1 gets half weight.
//! - **CPT(x)** ([`Curve::cpt`]): the smallest heavy share whose expected PGR reaches x.
//! - **Threshold for a quality target** ([`threshold_for_quality`]): the highest score
//!   threshold (heavy iff s ≥ t) whose routed quality is ≥ target × q_heavy.

use super::RoutingError;

fn check(scores: &[f64], light: &[f64], heavy: &[f64]) -> Result<(f64, f64), RoutingError> {
    if scores.len() != light.len() || scores.len() != heavy.len() {
        return Err(RoutingError::Data(format!(
            "{} scores for {} light and {} heavy outcomes",
            scores.len(),
            light.len(),
            heavy.len()
        )));
    }
    if scores.is_empty() {
        return Err(RoutingError::Data("no rows".into()));
    }
    if scores
        .iter()
        .chain(light)
        .chain(heavy)
        .any(|x| !x.is_finite())
    {
        return Err(RoutingError::Data("non-finite score or outcome".into()));
    }
    let n = scores.len() as f64;
    let ql = light.iter().sum::<f64>() / n;
    let qh = heavy.iter().sum::<f64>() / n;
    if qh == ql {
        return Err(RoutingError::Data(
            "the light and heavy models have the same mean quality: PGR is undefined".into(),
        ));
    }
    Ok((ql, qh))
}

/// Indices by decreasing score (stable for ties).
fn order_desc(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// The expected PGR curve: breakpoints `(share, pgr)` at tie-group boundaries.
#[derive(Debug, Clone)]
pub struct Curve {
    pub q_light: f64,
    pub q_heavy: f64,
    /// Heavy shares, from 0 to 1, strictly increasing.
    pub share: Vec<f64>,
    pub pgr: Vec<f64>,
}

impl Curve {
    pub fn new(scores: &[f64], light: &[f64], heavy: &[f64]) -> Result<Curve, RoutingError> {
        let (ql, qh) = check(scores, light, heavy)?;
        let n = scores.len();
        let order = order_desc(scores);
        let mut share = vec![0.0];
        let mut pgr = vec![0.0];
        let mut cum = 0.0;
        for (pos, &i) in order.iter().enumerate() {
            cum += heavy[i] - light[i];
            let last_of_group = pos + 1 == n || scores[order[pos + 1]] != scores[i];
            if last_of_group {
                share.push((pos + 1) as f64 / n as f64);
                let q = ql + cum / n as f64;
                pgr.push((q - ql) / (qh - ql));
            }
        }
        Ok(Curve {
            q_light: ql,
            q_heavy: qh,
            share,
            pgr,
        })
    }

    /// Expected PGR when `share` of prompts go heavy (linear inside a tie group).
    pub fn pgr_at(&self, share: f64) -> f64 {
        let s = share.clamp(0.0, 1.0);
        let j = self.share.partition_point(|&c| c < s);
        if j == 0 {
            return self.pgr[0];
        }
        if j == self.share.len() {
            return self.pgr[j - 1];
        }
        if self.share[j] == s {
            return self.pgr[j];
        }
        let (c0, c1, p0, p1) = (
            self.share[j - 1],
            self.share[j],
            self.pgr[j - 1],
            self.pgr[j],
        );
        p0 + (s - c0) * (p1 - p0) / (c1 - c0)
    }

    /// APGR: mean PGR at heavy shares 10 %, 20 %, …, 100 %.
    pub fn apgr(&self) -> f64 {
        (1..=10)
            .map(|k| self.pgr_at(f64::from(k) / 10.0))
            .sum::<f64>()
            / 10.0
    }

    /// Area under the expected PGR curve over shares 0..1 (the continuous limit of the
    /// RouteLLM trapezoid).
    pub fn auc(&self) -> f64 {
        self.share
            .windows(2)
            .zip(self.pgr.windows(2))
            .map(|(c, p)| (c[1] - c[0]) * (p[1] + p[0]) / 2.0)
            .sum()
    }

    /// CPT(x): the smallest heavy share whose expected PGR reaches `x` (1.0 if only all
    /// heavy does).
    pub fn cpt(&self, x: f64) -> f64 {
        let Some(k) = self.pgr.iter().position(|&p| p >= x - 1e-12) else {
            return 1.0;
        };
        if k == 0 {
            return 0.0;
        }
        let (p0, p1, c0, c1) = (
            self.pgr[k - 1],
            self.pgr[k],
            self.share[k - 1],
            self.share[k],
        );
        c0 + (x - p0) / (p1 - p0) * (c1 - c0)
    }
}

/// numpy's `quantile(sorted, q)` with linear interpolation, including its `lerp` rounding
/// (so RouteLLM's thresholds, and therefore ties at them, are reproduced exactly).
fn np_quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let virt = q * (n - 1) as f64;
    let lo = virt.floor();
    let t = virt - lo;
    let lo = (lo as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let (a, b) = (sorted[lo], sorted[hi]);
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

/// RouteLLM's APGR (the trapezoid over its 11 decile-threshold points) and its points
/// `(heavy share, accuracy)` sorted by share.
pub fn routellm_points(
    scores: &[f64],
    light: &[f64],
    heavy: &[f64],
) -> Result<Vec<(f64, f64)>, RoutingError> {
    check(scores, light, heavy)?;
    let n = scores.len() as f64;
    let mut sorted = scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut pts: Vec<(f64, f64)> = (0..=10)
        .map(|i| {
            // numpy.linspace(0, 1, 11)[i] is i * 0.1.
            let t = np_quantile(&sorted, f64::from(i) * 0.1);
            let (mut k, mut acc) = (0usize, 0.0);
            for (j, &s) in scores.iter().enumerate() {
                let sel = if i < 10 { s >= t } else { s > t };
                k += usize::from(sel);
                acc += if sel { heavy[j] } else { light[j] };
            }
            (k as f64 / n, acc / n)
        })
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(pts)
}

/// APGR exactly as RouteLLM computes it (the trapezoid variant).
pub fn apgr_routellm(scores: &[f64], light: &[f64], heavy: &[f64]) -> Result<f64, RoutingError> {
    let (ql, qh) = check(scores, light, heavy)?;
    let pts = routellm_points(scores, light, heavy)?;
    let auc: f64 = pts
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
        .sum();
    let span = pts[pts.len() - 1].0 - pts[0].0;
    if span == 0.0 {
        return Err(RoutingError::Data(
            "all RouteLLM points at one share".into(),
        ));
    }
    Ok((auc - ql * span) / ((qh - ql) * span))
}

/// The result of routing heavy iff score ≥ `threshold` on a labelled set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityPoint {
    pub threshold: f64,
    pub heavy_share: f64,
    /// Routed quality / heavy quality.
    pub quality: f64,
    /// Routed quality (mean outcome).
    pub q_routed: f64,
}

/// Route heavy iff score ≥ `threshold`: share and quality on this data.
pub fn at_threshold(
    scores: &[f64],
    light: &[f64],
    heavy: &[f64],
    threshold: f64,
) -> Result<QualityPoint, RoutingError> {
    let (_, qh) = check(scores, light, heavy)?;
    let n = scores.len() as f64;
    let (mut k, mut q) = (0usize, 0.0);
    for (j, &s) in scores.iter().enumerate() {
        let sel = s >= threshold;
        k += usize::from(sel);
        q += if sel { heavy[j] } else { light[j] };
    }
    Ok(QualityPoint {
        threshold,
        heavy_share: k as f64 / n,
        quality: (q / n) / qh,
        q_routed: q / n,
    })
}

/// Every distinct threshold (a tie group's score), by increasing heavy share.
pub fn threshold_points(
    scores: &[f64],
    light: &[f64],
    heavy: &[f64],
) -> Result<Vec<QualityPoint>, RoutingError> {
    let (ql, qh) = check(scores, light, heavy)?;
    let n = scores.len();
    let order = order_desc(scores);
    let mut out = Vec::new();
    let mut cum = 0.0;
    for (pos, &i) in order.iter().enumerate() {
        cum += heavy[i] - light[i];
        if pos + 1 == n || scores[order[pos + 1]] != scores[i] {
            let q = ql + cum / n as f64;
            out.push(QualityPoint {
                threshold: scores[i],
                heavy_share: (pos + 1) as f64 / n as f64,
                quality: q / qh,
                q_routed: q,
            });
        }
    }
    Ok(out)
}

/// The highest threshold (smallest heavy share) keeping ≥ `target` × q_heavy on this data.
/// Falls back to the lowest threshold (everything heavy) if none does.
pub fn threshold_for_quality(
    scores: &[f64],
    light: &[f64],
    heavy: &[f64],
    target: f64,
) -> Result<QualityPoint, RoutingError> {
    let pts = threshold_points(scores, light, heavy)?;
    let last = pts[pts.len() - 1];
    Ok(pts
        .into_iter()
        .find(|p| p.quality >= target - 1e-12)
        .unwrap_or(last))
}

/// The standard metric set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub rows: usize,
    pub q_light: f64,
    pub q_heavy: f64,
    /// Mean PGR at heavy shares 10 %…100 % (the definition).
    pub apgr: f64,
    /// RouteLLM's trapezoid APGR.
    pub apgr_routellm: f64,
    pub cpt50: f64,
    pub cpt80: f64,
    /// The best threshold on this data for 95 % of heavy quality.
    pub at95: QualityPoint,
}

impl Evaluation {
    pub fn new(scores: &[f64], light: &[f64], heavy: &[f64]) -> Result<Evaluation, RoutingError> {
        let curve = Curve::new(scores, light, heavy)?;
        Ok(Evaluation {
            rows: scores.len(),
            q_light: curve.q_light,
            q_heavy: curve.q_heavy,
            apgr: curve.apgr(),
            apgr_routellm: apgr_routellm(scores, light, heavy)?,
            cpt50: curve.cpt(0.5),
            cpt80: curve.cpt(0.8),
            at95: threshold_for_quality(scores, light, heavy, 0.95)?,
        })
    }
}

/// Dollars of routing heavy iff score ≥ threshold against sending everything heavy.
/// Costs are per row, in atto-USD (exact integers; see `money`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostSaving {
    pub all_heavy_atto: u128,
    pub routed_atto: u128,
}

impl CostSaving {
    pub fn new(scores: &[f64], light_atto: &[u128], heavy_atto: &[u128], threshold: f64) -> Self {
        let mut s = CostSaving {
            all_heavy_atto: 0,
            routed_atto: 0,
        };
        for ((&x, &l), &h) in scores.iter().zip(light_atto).zip(heavy_atto) {
            s.all_heavy_atto += h;
            s.routed_atto += if x >= threshold { h } else { l };
        }
        s
    }

    /// Saved atto-USD (negative if routing costs more, e.g. a light model priced higher).
    pub fn saved_atto(&self) -> i128 {
        self.all_heavy_atto as i128 - self.routed_atto as i128
    }

    /// Saving as a fraction of the all-heavy cost.
    pub fn saved_fraction(&self) -> f64 {
        if self.all_heavy_atto == 0 {
            0.0
        } else {
            self.saved_atto() as f64 / self.all_heavy_atto as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_tied_scores_are_the_random_router() {
        let l = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0];
        let h = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0];
        let s = [0.3; 8];
        let c = Curve::new(&s, &l, &h).unwrap();
        // Expected PGR(c) = c, so the mean over 10 %..100 % is 0.55 and CPT(x) = x.
        assert!((c.apgr() - 0.55).abs() < 1e-12);
        assert!((c.cpt(0.5) - 0.5).abs() < 1e-12);
        assert!((c.auc() - 0.5).abs() < 1e-12);
        // RouteLLM: points (0, q_light) and (1, q_heavy): 0.5.
        assert!((apgr_routellm(&s, &l, &h).unwrap() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn oracle_and_anti_oracle() {
        let l = [0.0, 1.0, 0.0, 1.0, 1.0];
        let h = [1.0, 0.0, 1.0, 1.0, 1.0];
        let oracle: Vec<f64> = l.iter().zip(&h).map(|(a, b)| b - a).collect();
        let c = Curve::new(&oracle, &l, &h).unwrap();
        // q_light 0.6, q_heavy 0.8: two wins (a tie group), one loss. The oracle sends the
        // wins first and recovers twice the gap (PGR 2) at 40 % heavy.
        assert!((c.pgr_at(0.2) - 1.0).abs() < 1e-12);
        assert!((c.pgr_at(0.4) - 2.0).abs() < 1e-12);
        assert!((c.pgr_at(1.0) - 1.0).abs() < 1e-12);
        assert!((c.cpt(0.5) - 0.1).abs() < 1e-12);
        let anti: Vec<f64> = oracle.iter().map(|x| -x).collect();
        assert!(Curve::new(&anti, &l, &h).unwrap().apgr() < c.apgr());
    }

    #[test]
    fn threshold_for_quality_picks_the_smallest_heavy_share() {
        let l = [0.0, 0.0, 1.0, 1.0];
        let h = [1.0, 1.0, 1.0, 1.0];
        let s = [0.9, 0.8, 0.2, 0.1];
        let p = threshold_for_quality(&s, &l, &h, 0.95).unwrap();
        assert_eq!(p.threshold, 0.8);
        assert_eq!(p.heavy_share, 0.5);
        assert_eq!(p.quality, 1.0);
        assert_eq!(at_threshold(&s, &l, &h, 0.8).unwrap(), p);
    }

    #[test]
    fn cost_saving_is_exact() {
        let s = [0.9, 0.1, 0.5];
        let c = CostSaving::new(&s, &[1, 2, 3], &[10, 20, 30], 0.5);
        assert_eq!(c.all_heavy_atto, 60);
        assert_eq!(c.routed_atto, 10 + 2 + 30);
        assert_eq!(c.saved_atto(), 18);
        assert!((c.saved_fraction() - 0.3).abs() < 1e-15);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(Curve::new(&[], &[], &[]).is_err());
        assert!(Curve::new(&[1.0], &[1.0], &[1.0]).is_err());
        assert!(Curve::new(&[1.0, 2.0], &[1.0], &[0.0]).is_err());
        assert!(Curve::new(&[f64::NAN], &[1.0], &[0.0]).is_err());
    }
}
