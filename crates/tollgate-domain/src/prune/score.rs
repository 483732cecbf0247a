//! BM25 of text segments against a query, over the conversation's own segments as the
//! corpus. Only the query's terms are looked up, so a pass over a long history is one
//! hash and one table probe per word.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Words this short, and these, carry no topic.
const STOPWORDS: [&str; 40] = [
    "the", "and", "for", "are", "was", "were", "what", "which", "who", "whom", "this", "that",
    "these", "those", "with", "from", "into", "onto", "have", "has", "had", "not", "but", "you",
    "your", "our", "its", "they", "them", "their", "there", "here", "when", "where", "how", "why",
    "can", "does", "did", "will",
];

const K1: f32 = 1.2;
const B: f32 = 0.75;

/// The term hash is already mixed; the table uses it as is.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Calls `f` with the hash of each word of `text` (lowercased ASCII letters and digits;
/// non-ASCII characters are part of words, `_` splits identifiers), skipping stop words, single characters and
/// two-letter words without a digit. Returns the number of words seen, stop words included.
pub fn terms(text: &str, mut f: impl FnMut(u64)) -> u32 {
    let b = text.as_bytes();
    let mut i = 0;
    let mut n = 0u32;
    while i < b.len() {
        let c = b[i];
        if !(c.is_ascii_alphanumeric() || c >= 0x80) {
            i += 1;
            continue;
        }
        let s = i;
        // FNV-1a over the lowercased bytes.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] >= 0x80) {
            h ^= u64::from(b[i].to_ascii_lowercase());
            h = h.wrapping_mul(0x0100_0000_01b3);
            i += 1;
        }
        n += 1;
        let w = &b[s..i];
        // Two characters are a term only with a digit in them (`v7`, `18`: versions).
        let short = w.len() < 2 || (w.len() == 2 && !w.iter().any(u8::is_ascii_digit));
        if short || (w.len() <= 5 && is_stopword(w)) {
            continue;
        }
        f(mix(h));
    }
    n
}

fn is_stopword(w: &[u8]) -> bool {
    STOPWORDS
        .iter()
        .any(|s| s.as_bytes().eq_ignore_ascii_case(w))
}

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The query: distinct terms with a weight each (the last user turn weighs more than
/// the system prompt or the task).
pub struct Query {
    index: IdMap<usize>,
    weights: Vec<f32>,
}

impl Query {
    /// Terms of each text, weighted; a term in several texts keeps its largest weight.
    pub fn new(parts: &[(&str, f32)]) -> Query {
        let mut index: IdMap<usize> = IdMap::default();
        let mut weights: Vec<f32> = Vec::new();
        for (text, w) in parts {
            terms(text, |h| {
                let next = weights.len();
                let i = *index.entry(h).or_insert(next);
                if i == next {
                    weights.push(*w);
                } else if weights[i] < *w {
                    weights[i] = *w;
                }
            });
        }
        Query { index, weights }
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }
}

/// Segments' query-term frequencies, then their BM25 scores.
pub struct Corpus<'q> {
    query: &'q Query,
    /// (segment, query term, frequency), segment-major.
    hits: Vec<(u32, u32, u16)>,
    lens: Vec<u32>,
    df: Vec<u32>,
}

impl<'q> Corpus<'q> {
    pub fn new(query: &'q Query) -> Corpus<'q> {
        Corpus {
            query,
            hits: Vec::new(),
            lens: Vec::new(),
            df: vec![0; query.weights.len()],
        }
    }

    /// Add a segment; returns its number.
    pub fn add(&mut self, text: &str) -> usize {
        let seg = self.lens.len() as u32;
        let start = self.hits.len();
        let index = &self.query.index;
        let hits = &mut self.hits;
        let len = terms(text, |h| {
            if let Some(&q) = index.get(&h) {
                let q = q as u32;
                match hits[start..].iter_mut().find(|(_, t, _)| *t == q) {
                    Some(hit) => hit.2 = hit.2.saturating_add(1),
                    None => hits.push((seg, q, 1)),
                }
            }
        });
        for &(_, q, _) in &self.hits[start..] {
            self.df[q as usize] += 1;
        }
        self.lens.push(len.max(1));
        seg as usize
    }

    /// Every segment's score, in the order they were added.
    pub fn scores(&self) -> Vec<f32> {
        let n = self.lens.len() as f32;
        let avg = if self.lens.is_empty() {
            1.0
        } else {
            self.lens.iter().map(|&l| l as f32).sum::<f32>() / n
        };
        let idf: Vec<f32> = self
            .df
            .iter()
            .map(|&d| {
                let d = d as f32;
                ((n - d + 0.5) / (d + 0.5) + 1.0).ln()
            })
            .collect();
        let mut out = vec![0.0f32; self.lens.len()];
        for &(seg, q, tf) in &self.hits {
            let tf = f32::from(tf);
            let len = self.lens[seg as usize] as f32;
            let norm = tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len / avg));
            out[seg as usize] += self.query.weights[q as usize] * idf[q as usize] * norm;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_sharing_rare_query_terms_scores_highest() {
        let q = Query::new(&[("What port does the staging database use?", 1.0)]);
        let mut c = Corpus::new(&q);
        let a = c.add("fn main() { println!(\"hello\"); }");
        let b = c.add("STAGING_DATABASE_PORT is not it; staging database port = 6433");
        let d = c.add("the database is fine");
        let s = c.scores();
        assert_eq!(s[a], 0.0);
        assert!(s[b] > s[d] && s[d] > 0.0, "{s:?}");
    }

    #[test]
    fn stop_words_and_short_words_are_not_terms() {
        let mut seen = 0;
        let words = terms("What is the id of it? Deploy v7.18.2", |_| seen += 1);
        assert_eq!(words, 10);
        assert_eq!(seen, 3);
    }
}
