//! all-MiniLM-L6-v2 in plain Rust: a 6-layer BERT encoder (hidden 384, 12 heads,
//! feed-forward 1536, exact-erf GELU, post-layer-norm), then mean pooling over the
//! tokens (`[CLS]` and `[SEP]` included, as sentence-transformers does) and L2
//! normalisation. Inputs longer than 256 tokens are cut to the first 256 (the model's
//! `max_seq_length`).
//!
//! No BLAS, no unsafe: the matrix products are written so the compiler vectorises their
//! inner dot products (eight independent accumulators, four tokens per weight row so
//! each row is read once per four tokens). The weights (86 MiB of `f32`) are copied out
//! of the safetensors bytes once, at load.

use super::safetensors::SafeTensors;
use super::{EmbedError, Embedder, WordPiece, l2_normalize};

const HIDDEN: usize = 384;
const HEADS: usize = 12;
const HEAD_DIM: usize = HIDDEN / HEADS;
const FFN: usize = 1536;
const LAYERS: usize = 6;
const MAX_TOKENS: usize = 256;
const MAX_POSITIONS: usize = 512;
const LN_EPS: f32 = 1e-12;

/// The default cache threshold for this model: the smallest cosine with at most 1 %
/// false hits on the dev split of `data/cache/pairs.jsonl` (`scripts/cache_eval.py` on
/// `tollgate cache similarity --model-dir` scores).
pub const MINILM_THRESHOLD: f32 = 0.8068;

struct Layer {
    qkv_w: Vec<f32>, // (3 × HIDDEN) × HIDDEN: query, key, value rows
    qkv_b: Vec<f32>,
    out_w: Vec<f32>,
    out_b: Vec<f32>,
    ln1_w: Vec<f32>,
    ln1_b: Vec<f32>,
    up_w: Vec<f32>,
    up_b: Vec<f32>,
    down_w: Vec<f32>,
    down_b: Vec<f32>,
    ln2_w: Vec<f32>,
    ln2_b: Vec<f32>,
}

/// The full all-MiniLM-L6-v2 sentence transformer.
pub struct MiniLm {
    tokenizer: WordPiece,
    word: Vec<f32>,
    pos: Vec<f32>,
    token_type: Vec<f32>,
    ln_w: Vec<f32>,
    ln_b: Vec<f32>,
    layers: Vec<Layer>,
    threshold: f32,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLm")
            .field("vocab", &self.tokenizer.vocab_size())
            .finish()
    }
}

impl MiniLm {
    /// Builds the model from the bytes of `model.safetensors` and the text of
    /// `vocab.txt` (the caller reads the files: this crate does no IO).
    pub fn from_bytes(safetensors: &[u8], vocab: &str) -> Result<Self, EmbedError> {
        let st = SafeTensors::parse(safetensors)?;
        let tokenizer = WordPiece::new(vocab)?;
        let v = tokenizer.vocab_size();
        let word = st.f32("embeddings.word_embeddings.weight", &[v, HIDDEN])?;
        let pos = st.f32(
            "embeddings.position_embeddings.weight",
            &[MAX_POSITIONS, HIDDEN],
        )?;
        let types = st.f32("embeddings.token_type_embeddings.weight", &[2, HIDDEN])?;
        let mut layers = Vec::with_capacity(LAYERS);
        for i in 0..LAYERS {
            let p = |s: &str| format!("encoder.layer.{i}.{s}");
            let mat = |s: &str, r, c| st.f32(&p(s), &[r, c]);
            let vec = |s: &str, n| st.f32(&p(s), &[n]);
            let mut qkv_w = mat("attention.self.query.weight", HIDDEN, HIDDEN)?;
            qkv_w.extend(mat("attention.self.key.weight", HIDDEN, HIDDEN)?);
            qkv_w.extend(mat("attention.self.value.weight", HIDDEN, HIDDEN)?);
            let mut qkv_b = vec("attention.self.query.bias", HIDDEN)?;
            qkv_b.extend(vec("attention.self.key.bias", HIDDEN)?);
            qkv_b.extend(vec("attention.self.value.bias", HIDDEN)?);
            layers.push(Layer {
                qkv_w,
                qkv_b,
                out_w: mat("attention.output.dense.weight", HIDDEN, HIDDEN)?,
                out_b: vec("attention.output.dense.bias", HIDDEN)?,
                ln1_w: vec("attention.output.LayerNorm.weight", HIDDEN)?,
                ln1_b: vec("attention.output.LayerNorm.bias", HIDDEN)?,
                up_w: mat("intermediate.dense.weight", FFN, HIDDEN)?,
                up_b: vec("intermediate.dense.bias", FFN)?,
                down_w: mat("output.dense.weight", HIDDEN, FFN)?,
                down_b: vec("output.dense.bias", HIDDEN)?,
                ln2_w: vec("output.LayerNorm.weight", HIDDEN)?,
                ln2_b: vec("output.LayerNorm.bias", HIDDEN)?,
            });
        }
        Ok(Self {
            tokenizer,
            word,
            pos,
            token_type: types[..HIDDEN].to_vec(),
            ln_w: st.f32("embeddings.LayerNorm.weight", &[HIDDEN])?,
            ln_b: st.f32("embeddings.LayerNorm.bias", &[HIDDEN])?,
            layers,
            threshold: MINILM_THRESHOLD,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &WordPiece {
        &self.tokenizer
    }

    /// `[CLS] tokens [SEP]`, cut to 256 ids.
    pub fn input_ids(&self, text: &str) -> Vec<u32> {
        let (cls, sep) = self.tokenizer.cls_sep();
        let mut ids = vec![cls];
        self.tokenizer.tokenize_into(text, &mut ids);
        ids.truncate(MAX_TOKENS - 1);
        ids.push(sep);
        ids
    }

    /// The encoder's last hidden states for `ids` (n × 384, row-major).
    pub fn hidden_states(&self, ids: &[u32]) -> Vec<f32> {
        let n = ids.len().min(MAX_POSITIONS);
        let mut x = vec![0.0f32; n * HIDDEN];
        for (t, &id) in ids.iter().take(n).enumerate() {
            let id = id as usize;
            let row = &mut x[t * HIDDEN..(t + 1) * HIDDEN];
            let w = self.word.get(id * HIDDEN..(id + 1) * HIDDEN);
            let p = &self.pos[t * HIDDEN..(t + 1) * HIDDEN];
            for d in 0..HIDDEN {
                row[d] = w.map_or(0.0, |w| w[d]) + p[d] + self.token_type[d];
            }
            layer_norm(row, &self.ln_w, &self.ln_b);
        }
        let mut qkv = vec![0.0f32; n * 3 * HIDDEN];
        let mut ctx = vec![0.0f32; n * HIDDEN];
        let mut tmp = vec![0.0f32; n * HIDDEN];
        let mut up = vec![0.0f32; n * FFN];
        let mut scores = vec![0.0f32; n];
        let scale = 1.0 / (HEAD_DIM as f32).sqrt();
        for l in &self.layers {
            linear(&x, HIDDEN, &l.qkv_w, &l.qkv_b, &mut qkv);
            for h in 0..HEADS {
                let (qo, ko, vo) = (
                    h * HEAD_DIM,
                    HIDDEN + h * HEAD_DIM,
                    2 * HIDDEN + h * HEAD_DIM,
                );
                for i in 0..n {
                    let q = &qkv[i * 3 * HIDDEN + qo..i * 3 * HIDDEN + qo + HEAD_DIM];
                    let mut max = f32::NEG_INFINITY;
                    for (j, s) in scores.iter_mut().enumerate() {
                        let k = &qkv[j * 3 * HIDDEN + ko..j * 3 * HIDDEN + ko + HEAD_DIM];
                        *s = dot(q, k) * scale;
                        max = max.max(*s);
                    }
                    let mut sum = 0.0;
                    for s in scores.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let c = &mut ctx[i * HIDDEN + qo..i * HIDDEN + qo + HEAD_DIM];
                    c.fill(0.0);
                    for (j, &s) in scores.iter().enumerate() {
                        let v = &qkv[j * 3 * HIDDEN + vo..j * 3 * HIDDEN + vo + HEAD_DIM];
                        let a = s / sum;
                        for (cd, &vd) in c.iter_mut().zip(v) {
                            *cd += a * vd;
                        }
                    }
                }
            }
            linear(&ctx, HIDDEN, &l.out_w, &l.out_b, &mut tmp);
            add_norm(&mut x, &tmp, &l.ln1_w, &l.ln1_b);
            linear(&x, HIDDEN, &l.up_w, &l.up_b, &mut up);
            for u in up.iter_mut() {
                *u = gelu(*u);
            }
            linear(&up, FFN, &l.down_w, &l.down_b, &mut tmp);
            add_norm(&mut x, &tmp, &l.ln2_w, &l.ln2_b);
        }
        x
    }
}

impl Embedder for MiniLm {
    fn name(&self) -> &str {
        "all-MiniLM-L6-v2"
    }
    fn dim(&self) -> usize {
        HIDDEN
    }
    fn threshold(&self) -> f32 {
        self.threshold
    }
    fn embed_into(&self, text: &str, out: &mut Vec<f32>) {
        let ids = self.input_ids(text);
        let hs = self.hidden_states(&ids);
        let n = ids.len();
        out.clear();
        out.resize(HIDDEN, 0.0);
        for row in hs.chunks_exact(HIDDEN) {
            for (o, &v) in out.iter_mut().zip(row) {
                *o += v;
            }
        }
        for o in out.iter_mut() {
            *o /= n as f32;
        }
        l2_normalize(out);
    }
}

/// Dot product with eight independent accumulators (vectorises without `unsafe`).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `out[t][o] = x[t] · w[o] + b[o]` for `x`: n × `inp`, `w`: out × `inp` (PyTorch's
/// layout), four tokens at a time so each weight row is loaded once per four tokens.
fn linear(x: &[f32], inp: usize, w: &[f32], b: &[f32], out: &mut [f32]) {
    let outs = b.len();
    let n = x.len() / inp;
    let mut t = 0;
    while t + 4 <= n {
        let x0 = &x[t * inp..(t + 1) * inp];
        let x1 = &x[(t + 1) * inp..(t + 2) * inp];
        let x2 = &x[(t + 2) * inp..(t + 3) * inp];
        let x3 = &x[(t + 3) * inp..(t + 4) * inp];
        for (o, (row, &bias)) in w.chunks_exact(inp).zip(b).enumerate() {
            let mut acc = [[0.0f32; 8]; 4];
            for (c, wc) in row.chunks_exact(8).enumerate() {
                let r = c * 8..c * 8 + 8;
                let (a0, a1, a2, a3) = (&x0[r.clone()], &x1[r.clone()], &x2[r.clone()], &x3[r]);
                for k in 0..8 {
                    acc[0][k] += a0[k] * wc[k];
                    acc[1][k] += a1[k] * wc[k];
                    acc[2][k] += a2[k] * wc[k];
                    acc[3][k] += a3[k] * wc[k];
                }
            }
            for (j, a) in acc.iter().enumerate() {
                out[(t + j) * outs + o] = a.iter().sum::<f32>() + bias;
            }
        }
        t += 4;
    }
    for t in t..n {
        let xt = &x[t * inp..(t + 1) * inp];
        for (o, (row, &bias)) in w.chunks_exact(inp).zip(b).enumerate() {
            out[t * outs + o] = dot(xt, row) + bias;
        }
    }
}

fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32]) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + LN_EPS).sqrt();
    for ((v, &g), &bb) in x.iter_mut().zip(w).zip(b) {
        *v = (*v - mean) * inv * g + bb;
    }
}

/// `x = LayerNorm(x + y)`, row by row.
fn add_norm(x: &mut [f32], y: &[f32], w: &[f32], b: &[f32]) {
    for (xr, yr) in x.chunks_exact_mut(HIDDEN).zip(y.chunks_exact(HIDDEN)) {
        for (a, &c) in xr.iter_mut().zip(yr) {
            *a += c;
        }
        layer_norm(xr, w, b);
    }
}

/// BERT's exact GELU, `x Φ(x)`.
fn gelu(x: f32) -> f32 {
    let x = f64::from(x);
    (0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))) as f32
}

/// erf to about 1e-7 relative error (the Chebyshev fit of erfc in Numerical Recipes).
fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = 1.0 - t * poly.exp();
    if x >= 0.0 { r } else { -r }
}
