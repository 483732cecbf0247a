//! Sentence embeddings, in process and on the CPU, for the semantic response cache (and
//! later the intent router and pruning).
//!
//! Two models share one tokenizer ([`wordpiece`], BERT-uncased, all-MiniLM-L6-v2's
//! vocabulary) and one trait ([`Embedder`]):
//! - [`static_model::StaticModel`], the compiled-in default: a static embedding distilled
//!   from all-MiniLM-L6-v2 (one int8 row of 96 dimensions per vocabulary token, summed
//!   and L2-normalised; `data/static-minilm-96.bin`, ~3 MB). Microseconds per text, no
//!   file, no download: [`static_model::builtin`].
//! - [`minilm::MiniLm`], the full transformer (6 layers, 384 hidden, mean pooling,
//!   L2-normalised) from a `model.safetensors` and `vocab.txt` the caller has read.
//!
//! Every embedding is L2-normalised, so [`cosine`] of two embeddings is their dot product.
//! Each model carries the similarity threshold the gateway applies by default
//! ([`Embedder::threshold`]): chosen on `data/cache/pairs.jsonl` for at most 1 % false
//! hits, never a hard-coded 0.8.

pub mod minilm;
pub mod safetensors;
pub mod static_model;
pub mod wordpiece;

pub use minilm::MiniLm;
pub use static_model::StaticModel;
pub use wordpiece::WordPiece;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EmbedError {
    /// The bytes are not what the format says they must be.
    #[error("malformed model data: {0}")]
    Format(&'static str),
    /// A tensor the model needs is missing or has the wrong shape or type.
    #[error("tensor {0}: {1}")]
    Tensor(String, &'static str),
}

impl EmbedError {
    /// Stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            EmbedError::Format(_) => "embed_model_malformed",
            EmbedError::Tensor(..) => "embed_model_tensor",
        }
    }
}

/// A sentence-embedding model. Object-safe: the gateway holds a `Box<dyn Embedder>`
/// chosen at startup (the built-in static model, or MiniLM from a directory).
pub trait Embedder: Send + Sync {
    /// The model's name, e.g. `static-minilm-96` or `all-MiniLM-L6-v2`.
    fn name(&self) -> &str;
    /// Dimensions of an embedding.
    fn dim(&self) -> usize;
    /// The default cache threshold: answer from the cache when the cosine of the two
    /// last user turns is at least this (≤ 1 % false hits on the evaluation set).
    fn threshold(&self) -> f32;
    /// Writes the text's L2-normalised embedding into `out` (cleared first; `dim()`
    /// values). An empty text, or one with no known token, gives the zero vector, whose
    /// cosine with anything is 0.
    fn embed_into(&self, text: &str, out: &mut Vec<f32>);
    /// The text's embedding in a new vector.
    fn embed(&self, text: &str) -> Vec<f32> {
        let mut v = Vec::with_capacity(self.dim());
        self.embed_into(text, &mut v);
        v
    }
}

/// Cosine similarity. For the L2-normalised embeddings of this module it is the dot
/// product; vectors of different length compare over the shorter prefix, and a zero
/// vector has cosine 0 with anything.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na.sqrt() * nb.sqrt())
}

/// Scales `v` to unit length in place (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        for x in v.iter_mut() {
            *x /= n;
        }
    }
}

#[cfg(test)]
mod tests;
