//! BERT-uncased WordPiece tokenisation, as all-MiniLM-L6-v2's `tokenizer.json` defines it
//! (the `tokenizers` crate's `BertNormalizer` + `BertPreTokenizer` + `WordPiece`):
//!
//! 1. clean: drop NUL, U+FFFD and "other" characters (general category C*, except tab,
//!    newline and carriage return); every white-space character becomes a space;
//! 2. put spaces around CJK ideographs, so each is a word of its own;
//! 3. strip accents (NFD, then drop non-spacing marks) and lowercase;
//! 4. split on white space, and make every punctuation character (ASCII punctuation or
//!    general category P*) a word of its own;
//! 5. each word: greedy longest match from the left against the vocabulary, pieces after
//!    the first prefixed `##`; a word with an unmatched rest, or longer than 100
//!    characters, becomes `[UNK]`.
//!
//! Checked against the `tokenizers` PyPI package (see `scripts/tokenizer_check.py`).

use super::EmbedError;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

const MAX_WORD_CHARS: usize = 100;

/// A small multiplicative hasher for vocabulary lookups (keys are short and not
/// attacker-chosen in a way that matters: the vocabulary is fixed, only lookups vary).
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
        self.0 = h;
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A WordPiece tokenizer over a BERT `vocab.txt` (one token per line, id = line number).
#[derive(Debug, Clone)]
pub struct WordPiece {
    /// Word-initial pieces.
    heads: FxMap<Box<str>, u32>,
    /// Continuation pieces, stored without their `##`.
    tails: FxMap<Box<str>, u32>,
    unk: u32,
    cls: u32,
    sep: u32,
    size: usize,
}

impl WordPiece {
    /// Reads a `vocab.txt`. It must hold `[UNK]`, `[CLS]` and `[SEP]`.
    pub fn new(vocab: &str) -> Result<Self, EmbedError> {
        let mut heads = FxMap::default();
        let mut tails = FxMap::default();
        let mut size = 0usize;
        for (i, line) in vocab.lines().enumerate() {
            let id = u32::try_from(i).map_err(|_| EmbedError::Format("vocabulary too large"))?;
            let tok = line.trim_end_matches('\r');
            match tok.strip_prefix("##") {
                Some(rest) if !rest.is_empty() => tails.entry(rest.into()).or_insert(id),
                _ => heads.entry(tok.into()).or_insert(id),
            };
            size = i + 1;
        }
        let get = |t: &str| {
            heads
                .get(t)
                .copied()
                .ok_or(EmbedError::Format("vocabulary lacks a special token"))
        };
        Ok(Self {
            unk: get("[UNK]")?,
            cls: get("[CLS]")?,
            sep: get("[SEP]")?,
            heads,
            tails,
            size,
        })
    }

    /// Number of entries in the vocabulary (the largest id + 1).
    pub fn vocab_size(&self) -> usize {
        self.size
    }

    /// The `[CLS]` and `[SEP]` ids.
    pub fn cls_sep(&self) -> (u32, u32) {
        (self.cls, self.sep)
    }

    /// The text's token ids, without `[CLS]`/`[SEP]`, appended to `ids`.
    pub fn tokenize_into(&self, text: &str, ids: &mut Vec<u32>) {
        let mut norm = String::with_capacity(text.len() + 8);
        normalize_into(text, &mut norm);
        let mut word = String::new();
        for ch in norm.chars() {
            if ch == ' ' {
                self.push_word(&word, ids);
                word.clear();
            } else if is_punctuation(ch) {
                self.push_word(&word, ids);
                word.clear();
                let mut b = [0u8; 4];
                self.push_word(ch.encode_utf8(&mut b), ids);
            } else {
                word.push(ch);
            }
        }
        self.push_word(&word, ids);
    }

    /// The text's token ids, without `[CLS]`/`[SEP]`.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        self.tokenize_into(text, &mut ids);
        ids
    }

    fn push_word(&self, word: &str, ids: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if word.chars().count() > MAX_WORD_CHARS {
            ids.push(self.unk);
            return;
        }
        let before = ids.len();
        let mut start = 0;
        while start < word.len() {
            let map = if start == 0 { &self.heads } else { &self.tails };
            let rest = &word[start..];
            let mut end = rest.len();
            let mut found = None;
            while end > 0 {
                if rest.is_char_boundary(end)
                    && let Some(&id) = map.get(&rest[..end])
                {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => {
                    ids.push(id);
                    start += end;
                }
                None => {
                    ids.truncate(before);
                    ids.push(self.unk);
                    return;
                }
            }
        }
    }
}

/// Steps 1–3 of the module doc: clean, space out CJK, strip accents, lowercase.
fn normalize_into(text: &str, out: &mut String) {
    let mut cleaned = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '\0' || c == '\u{fffd}' || is_control(c) {
            continue;
        }
        if is_whitespace(c) {
            cleaned.push(' ');
        } else if is_cjk(c) {
            cleaned.push(' ');
            cleaned.push(c);
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }
    if cleaned.is_ascii() {
        // nothing to decompose; ASCII lowercasing is the same as Unicode's here
        out.push_str(&cleaned.to_ascii_lowercase());
        return;
    }
    let stripped: String = cleaned
        .nfd()
        .filter(|c| c.general_category() != GeneralCategory::NonspacingMark)
        .collect();
    out.push_str(&stripped.to_lowercase());
}

fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    if c.is_ascii() {
        return c.is_ascii_control(); // the only C* characters in ASCII are Cc
    }
    c.general_category_group() == GeneralCategoryGroup::Other
}

fn is_punctuation(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_punctuation();
    }
    c.general_category_group() == GeneralCategoryGroup::Punctuation
}

/// The CJK Unified Ideographs blocks BERT treats as one-character words.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B920..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}
