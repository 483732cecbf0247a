//! The linear model, its calibration and its compact binary file.
//!
//! # File format (version 1, all integers and floats little-endian)
//!
//! ```text
//! magic          8 bytes  b"TGROUTER"
//! version        u16      1
//! bits           u8       log2(buckets), 10..=24
//! min_tokens     u8       texts with fewer tokens score 0.0 (the lowest score)
//! head_bytes     u32      featuriser windows (see `features`)
//! tail_bytes     u32
//! scale          f64      weight of bucket k = weights[k] × scale
//! bias           f64
//! quality_target f64      the target the default threshold was calibrated for (e.g. 0.95)
//! threshold      f64      heavy iff score ≥ threshold reaches that target on the dev set
//! n_points       u16      calibration curve, then n_points × (heavy_share, threshold,
//!                         quality) as f64: on the dev set, routing heavy iff score ≥
//!                         threshold sends heavy_share of prompts to the heavy model and
//!                         keeps quality × the heavy model's quality
//! light, heavy   u16 length + UTF-8 each: the outcome labels the model was trained on
//! n_dense        u16      then n_dense × (feature id u16, mean f64, inv_sd f64, weight f64)
//! meta           u32 length + UTF-8 JSON: training parameters and metrics (informative)
//! weights        2^bits × i16
//! ```
//!
//! The margin of a text is `bias + scale × Σ_{distinct buckets k} weights[k] / √n +
//! Σ_dense weight × (x − mean) × inv_sd`, summed as an exact integer first; its score is
//! the logistic sigmoid of the margin, in [0, 1].

use super::RoutingError;
use super::features::{Dense, FeatureSpec, Features, dense_stats};

/// File magic.
pub const MAGIC: &[u8; 8] = b"TGROUTER";
/// The format version this code reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Texts with fewer tokens than this score 0.0 by default ("hi", "", "ok thanks").
pub const DEFAULT_MIN_TOKENS: u8 = 3;

/// One point of the dev-set calibration curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibrationPoint {
    /// Share of prompts with score ≥ `threshold`.
    pub heavy_share: f64,
    pub threshold: f64,
    /// Quality of routing at this threshold divided by the heavy model's quality.
    pub quality: f64,
}

/// Where the router's thresholds come from: measured on a labelled set it was not fitted on.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// Fraction of the heavy model's quality the default threshold keeps.
    pub quality_target: f64,
    /// The default threshold (route heavy iff score ≥ threshold).
    pub threshold: f64,
    /// The curve, by increasing heavy share.
    pub points: Vec<CalibrationPoint>,
}

impl Calibration {
    /// The highest threshold (fewest heavy calls) whose calibration point keeps at least
    /// `target` × the heavy model's quality; `None` if no point does.
    pub fn threshold_for_quality(&self, target: f64) -> Option<f64> {
        self.points
            .iter()
            .filter(|p| p.quality >= target)
            .min_by(|a, b| a.heavy_share.total_cmp(&b.heavy_share))
            .map(|p| p.threshold)
    }

    /// The threshold sending about `share` of traffic heavy (on the calibration set).
    pub fn threshold_for_share(&self, share: f64) -> Option<f64> {
        self.points
            .iter()
            .find(|p| p.heavy_share >= share)
            .map(|p| p.threshold)
    }
}

/// A dense input of the model, standardised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenseWeight {
    pub feature: Dense,
    pub mean: f64,
    pub inv_sd: f64,
    pub weight: f64,
}

/// A trained router model: quantised hashed weights, optional dense weights, calibration.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub spec: FeatureSpec,
    pub min_tokens: u8,
    pub scale: f64,
    pub bias: f64,
    /// 2^bits quantised bucket weights.
    pub weights: Vec<i16>,
    pub dense: Vec<DenseWeight>,
    pub calibration: Calibration,
    /// Outcome labels of the light and the heavy model in the training data.
    pub light: String,
    pub heavy: String,
    /// Training parameters and metrics, JSON (informative only).
    pub meta: String,
}

/// Round-half-to-even quantisation to i16: `w ≈ q × scale`, `scale = max|w| / 32767`.
pub fn quantize(w: &[f64]) -> (Vec<i16>, f64) {
    let max = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        return (vec![0; w.len()], 1.0);
    }
    let scale = max / f64::from(i16::MAX);
    let q = w
        .iter()
        .map(|x| (x / scale).round_ties_even().clamp(-32767.0, 32767.0) as i16)
        .collect();
    (q, scale)
}

/// The logistic sigmoid.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

impl Model {
    /// The margin (log-odds that the heavy model is needed) of featurised text.
    pub fn margin(&self, f: &Features<'_>) -> f64 {
        let n = f.buckets.len();
        let mut z = self.bias;
        if n > 0 {
            let sum: i64 = f
                .buckets
                .iter()
                .map(|&k| i64::from(self.weights[k as usize]))
                .sum();
            z += (sum as f64 * self.scale) / (n as f64).sqrt();
        }
        if !self.dense.is_empty() {
            let x = dense_stats(f, &self.spec);
            for d in &self.dense {
                z += d.weight * (x[usize::from(d.feature.id())] - d.mean) * d.inv_sd;
            }
        }
        z
    }

    /// Serialise to the binary format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(64 + self.weights.len() * 2 + self.meta.len());
        o.extend_from_slice(MAGIC);
        o.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        o.push(self.spec.bits);
        o.push(self.min_tokens);
        o.extend_from_slice(&self.spec.head_bytes.to_le_bytes());
        o.extend_from_slice(&self.spec.tail_bytes.to_le_bytes());
        for v in [
            self.scale,
            self.bias,
            self.calibration.quality_target,
            self.calibration.threshold,
        ] {
            o.extend_from_slice(&v.to_le_bytes());
        }
        let n_points = self.calibration.points.len().min(usize::from(u16::MAX));
        o.extend_from_slice(&(n_points as u16).to_le_bytes());
        for p in &self.calibration.points[..n_points] {
            for v in [p.heavy_share, p.threshold, p.quality] {
                o.extend_from_slice(&v.to_le_bytes());
            }
        }
        for s in [&self.light, &self.heavy] {
            let b = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
            o.extend_from_slice(&(b.len() as u16).to_le_bytes());
            o.extend_from_slice(b);
        }
        o.extend_from_slice(&(self.dense.len() as u16).to_le_bytes());
        for d in &self.dense {
            o.extend_from_slice(&d.feature.id().to_le_bytes());
            for v in [d.mean, d.inv_sd, d.weight] {
                o.extend_from_slice(&v.to_le_bytes());
            }
        }
        o.extend_from_slice(&(self.meta.len() as u32).to_le_bytes());
        o.extend_from_slice(self.meta.as_bytes());
        for w in &self.weights {
            o.extend_from_slice(&w.to_le_bytes());
        }
        o
    }

    /// Parse and validate the binary format.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, RoutingError> {
        let mut r = Reader { b: bytes, at: 0 };
        if r.take(8)? != MAGIC {
            return Err(bad("not a tollgate router model (bad magic)"));
        }
        let version = r.u16()?;
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "model format version {version}, this tollgate reads {FORMAT_VERSION}"
            )));
        }
        let bits = r.u8()?;
        if !(10..=24).contains(&bits) {
            return Err(bad(format!("bits {bits} outside 10..=24")));
        }
        let min_tokens = r.u8()?;
        let spec = FeatureSpec {
            bits,
            head_bytes: r.u32()?,
            tail_bytes: r.u32()?,
        };
        if spec.head_bytes == 0 || spec.tail_bytes == 0 {
            return Err(bad("window sizes must be positive"));
        }
        let scale = r.f64()?;
        let bias = r.f64()?;
        if !(scale.is_finite() && scale > 0.0 && bias.is_finite()) {
            return Err(bad("scale must be finite and positive, bias finite"));
        }
        let quality_target = r.f64()?;
        let threshold = r.f64()?;
        let n_points = r.u16()?;
        let mut points = Vec::with_capacity(usize::from(n_points));
        for _ in 0..n_points {
            points.push(CalibrationPoint {
                heavy_share: r.f64()?,
                threshold: r.f64()?,
                quality: r.f64()?,
            });
        }
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        if !unit(threshold)
            || !quality_target.is_finite()
            || points
                .iter()
                .any(|p| !unit(p.heavy_share) || !unit(p.threshold) || !p.quality.is_finite())
        {
            return Err(bad("calibration values out of range"));
        }
        let light = r.string16()?;
        let heavy = r.string16()?;
        let n_dense = r.u16()?;
        let mut dense = Vec::with_capacity(usize::from(n_dense));
        for _ in 0..n_dense {
            let id = r.u16()?;
            let feature = Dense::from_id(id).ok_or_else(|| bad(format!("unknown dense {id}")))?;
            let d = DenseWeight {
                feature,
                mean: r.f64()?,
                inv_sd: r.f64()?,
                weight: r.f64()?,
            };
            if !(d.mean.is_finite() && d.inv_sd.is_finite() && d.weight.is_finite()) {
                return Err(bad("dense weights must be finite"));
            }
            dense.push(d);
        }
        let meta_len = r.u32()? as usize;
        let meta = String::from_utf8(r.take(meta_len)?.to_vec())
            .map_err(|_| bad("metadata is not UTF-8"))?;
        let n = spec.buckets();
        let raw = r.take(n * 2)?;
        if r.at != bytes.len() {
            return Err(bad(format!(
                "{} trailing bytes after the weights",
                bytes.len() - r.at
            )));
        }
        let weights = raw
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        Ok(Model {
            spec,
            min_tokens,
            scale,
            bias,
            weights,
            dense,
            calibration: Calibration {
                quality_target,
                threshold,
                points,
            },
            light,
            heavy,
            meta,
        })
    }
}

fn bad(msg: impl Into<String>) -> RoutingError {
    RoutingError::BadModel(msg.into())
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RoutingError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| bad(format!("truncated at byte {}", self.at)))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RoutingError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, RoutingError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, RoutingError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, RoutingError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn f64(&mut self) -> Result<f64, RoutingError> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    fn string16(&mut self) -> Result<String, RoutingError> {
        let n = usize::from(self.u16()?);
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| bad("label is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Model {
        let spec = FeatureSpec {
            bits: 10,
            ..FeatureSpec::default()
        };
        Model {
            spec,
            min_tokens: 3,
            scale: 0.001,
            bias: -0.25,
            weights: (0..1024).map(|i| (i * 37 % 2001 - 1000) as i16).collect(),
            dense: vec![DenseWeight {
                feature: Dense::LogBytes,
                mean: 5.0,
                inv_sd: 0.5,
                weight: 0.1,
            }],
            calibration: Calibration {
                quality_target: 0.95,
                threshold: 0.5,
                points: vec![
                    CalibrationPoint {
                        heavy_share: 0.0,
                        threshold: 1.0,
                        quality: 0.7,
                    },
                    CalibrationPoint {
                        heavy_share: 0.6,
                        threshold: 0.5,
                        quality: 0.96,
                    },
                    CalibrationPoint {
                        heavy_share: 1.0,
                        threshold: 0.0,
                        quality: 1.0,
                    },
                ],
            },
            light: "small".into(),
            heavy: "big".into(),
            meta: "{\"c\":2}".into(),
        }
    }

    #[test]
    fn binary_format_round_trips() {
        let m = tiny();
        let b = m.to_bytes();
        assert_eq!(Model::from_bytes(&b).unwrap(), m);
        assert_eq!(m.calibration.threshold_for_quality(0.95), Some(0.5));
        assert_eq!(m.calibration.threshold_for_quality(0.99), Some(0.0));
        assert_eq!(m.calibration.threshold_for_share(0.5), Some(0.5));
    }

    #[test]
    fn corrupt_files_are_errors_not_panics() {
        let b = tiny().to_bytes();
        for cut in [0, 7, 8, 20, 60, b.len() - 1] {
            assert!(Model::from_bytes(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = b.clone();
        extra.push(0);
        assert!(Model::from_bytes(&extra).is_err());
        let mut magic = b.clone();
        magic[0] = b'X';
        assert!(Model::from_bytes(&magic).is_err());
        let mut bits = b;
        bits[10] = 40;
        assert!(Model::from_bytes(&bits).is_err());
    }

    #[test]
    fn quantisation_is_round_half_even_and_bounded() {
        let (q, s) = quantize(&[0.0, 1.0, -2.0, 0.5 * 2.0 / 32767.0]);
        assert_eq!(s, 2.0 / 32767.0);
        assert_eq!(q, vec![0, 16384, -32767, 0]);
        assert_eq!(quantize(&[0.0, 0.0]), (vec![0, 0], 1.0));
    }

    #[test]
    fn sigmoid_is_stable() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(-800.0) >= 0.0 && sigmoid(800.0) <= 1.0);
        assert!((sigmoid(2.0) + sigmoid(-2.0) - 1.0).abs() < 1e-15);
    }
}
