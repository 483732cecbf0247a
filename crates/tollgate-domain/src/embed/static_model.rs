//! The compiled-in static embedding (`data/static-minilm-96.bin`, distilled from
//! all-MiniLM-L6-v2 by `scripts/distill_static.py`; provenance in `data/README.md`).
//!
//! A text's embedding is the sum of its WordPiece tokens' rows, L2-normalised: no matrix
//! product, one pass over the tokens (a 1 KB text in a few microseconds).
//!
//! File format (little-endian): magic `TGSE0001`; `dim: u32`, `vocab: u32`,
//! `threshold: f32`, `name_len: u32`, the name (UTF-8); `vocab` row scales (`f32`);
//! `vocab × dim` int8 values, row-major. Row `t` is `scale[t] × q[t]`, already weighted
//! (SIF) at distillation time. The vocabulary is all-MiniLM-L6-v2's `vocab.txt`.

use super::{EmbedError, Embedder, WordPiece, l2_normalize};
use std::cell::RefCell;
use std::sync::OnceLock;

const MAGIC: &[u8; 8] = b"TGSE0001";
static BUILTIN_BIN: &[u8] = include_bytes!("../../data/static-minilm-96.bin");
static BUILTIN_VOCAB: &str = include_str!("../../data/minilm-vocab.txt");

thread_local! {
    static IDS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// A static (token-table) embedding model.
#[derive(Debug, Clone)]
pub struct StaticModel {
    name: String,
    dim: usize,
    threshold: f32,
    scales: Vec<f32>,
    rows: Vec<i8>,
    tokenizer: WordPiece,
}

/// The compiled-in model, parsed on first use (a few milliseconds, once per process).
pub fn builtin() -> Result<&'static StaticModel, EmbedError> {
    static MODEL: OnceLock<Result<StaticModel, EmbedError>> = OnceLock::new();
    MODEL
        .get_or_init(|| StaticModel::from_bytes(BUILTIN_BIN, BUILTIN_VOCAB))
        .as_ref()
        .map_err(Clone::clone)
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, EmbedError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(EmbedError::Format("static model: truncated header"))
}

impl StaticModel {
    /// Parses a model file (the format in the module doc) and its `vocab.txt`.
    pub fn from_bytes(bin: &[u8], vocab: &str) -> Result<Self, EmbedError> {
        if bin.get(..8) != Some(MAGIC.as_slice()) {
            return Err(EmbedError::Format("static model: bad magic"));
        }
        let dim = u32_at(bin, 8)? as usize;
        let n = u32_at(bin, 12)? as usize;
        let threshold = f32::from_bits(u32_at(bin, 16)?);
        let name_len = u32_at(bin, 20)? as usize;
        let name = bin
            .get(24..24 + name_len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or(EmbedError::Format("static model: bad name"))?
            .to_string();
        let s0 = 24 + name_len;
        let r0 = s0 + 4 * n;
        if dim == 0 || bin.len() != r0 + n * dim {
            return Err(EmbedError::Format(
                "static model: size does not match its header",
            ));
        }
        let scales = bin[s0..r0]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let rows = bin[r0..].iter().map(|&b| b as i8).collect();
        let tokenizer = WordPiece::new(vocab)?;
        if tokenizer.vocab_size() != n {
            return Err(EmbedError::Format(
                "static model: vocabulary size differs from the table",
            ));
        }
        Ok(Self {
            name,
            dim,
            threshold,
            scales,
            rows,
            tokenizer,
        })
    }

    /// The tokenizer (shared with MiniLM: same vocabulary).
    pub fn tokenizer(&self) -> &WordPiece {
        &self.tokenizer
    }

    /// Bytes of the token table in memory.
    pub fn table_bytes(&self) -> usize {
        self.rows.len() + 4 * self.scales.len()
    }

    fn accumulate(&self, ids: &[u32], acc: &mut [f32]) {
        for &id in ids {
            let id = id as usize;
            let (Some(&s), Some(row)) = (
                self.scales.get(id),
                self.rows.get(id * self.dim..(id + 1) * self.dim),
            ) else {
                continue;
            };
            for (a, &q) in acc.iter_mut().zip(row) {
                *a += s * f32::from(q);
            }
        }
    }
}

impl Embedder for StaticModel {
    fn name(&self) -> &str {
        &self.name
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn threshold(&self) -> f32 {
        self.threshold
    }
    fn embed_into(&self, text: &str, out: &mut Vec<f32>) {
        out.clear();
        out.resize(self.dim, 0.0);
        IDS.with(|cell| {
            // a re-entrant call (impossible today) would just allocate its own buffer
            let mut local = Vec::new();
            let mut guard = cell.try_borrow_mut();
            let ids = match guard.as_mut() {
                Ok(v) => &mut **v,
                Err(_) => &mut local,
            };
            ids.clear();
            self.tokenizer.tokenize_into(text, ids);
            self.accumulate(ids, out);
        });
        l2_normalize(out);
    }
}
