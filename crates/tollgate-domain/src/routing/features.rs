//! The featuriser: a prompt's bytes → the distinct hashed buckets a linear model reads.
//!
//! Everything is defined on the UTF-8 bytes of the text, with no regex and no Unicode
//! table, so it is cheap (one pass, one multiply a byte) and exactly reproducible in any
//! language (`scripts/router_ref.py` is an independent Python implementation the test
//! vectors come from).
//!
//! 1. **Normalise** (format-neutral, so MMLU's layout is not what the model learns):
//!    strip trailing ASCII whitespace (`" \t\r\n\x0b\x0c"`); if the text then ends with
//!    `Answer:`, drop it and strip again; at the start of every line, drop an option prefix
//!    `X. ` or `X) ` with `X` in `A`–`J` (the option's text is kept).
//! 2. **Window**: a text longer than `head_bytes + tail_bytes` is read as its first
//!    `head_bytes` and its last `tail_bytes` (cuts moved by at most 64 bytes so they do not
//!    split a word). Bounds the work per decision whatever the prompt size; the start (the
//!    system prompt, the task) and the end (the latest request) carry the signal.
//! 3. **Tokenise**: maximal runs of word bytes (`[0-9A-Za-z]` or any byte ≥ 0x80),
//!    ASCII-lowercased, truncated to their first 32 bytes.
//! 4. **Hash**: unigram key = FNV-1a 64 of `b"w" ‖ token`; bigram key (consecutive tokens
//!    within a window) = splitmix64-finaliser of `hu(prev) XOR rotl64(hu(cur), 32)` where
//!    `hu` is the unigram hash. Bucket = key & (2^bits − 1).
//! 5. **Value**: binary, L2-normalised: each distinct bucket hit counts `1/√n` (n = the
//!    number of distinct buckets), so a row's margin is `bias + Σ w[k] / √n`.

/// Buckets for the default model: 2^18 = 262,144.
pub const DEFAULT_BITS: u8 = 18;
/// Bytes read from the start of a long text.
pub const DEFAULT_HEAD_BYTES: u32 = 2048;
/// Bytes read from the end of a long text.
pub const DEFAULT_TAIL_BYTES: u32 = 2048;
/// Tokens longer than this are hashed on their first `MAX_TOKEN_BYTES` bytes.
pub const MAX_TOKEN_BYTES: usize = 32;
/// How far a window cut moves to avoid splitting a word.
const MAX_CUT_SHIFT: usize = 64;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// FNV-1a state after the unigram namespace byte `b'w'`.
const FNV_W: u64 = (FNV_OFFSET ^ b'w' as u64).wrapping_mul(FNV_PRIME);

/// How a text becomes buckets. Stored in the model file: a model is only valid with the
/// spec it was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureSpec {
    /// log2 of the number of buckets (10..=24).
    pub bits: u8,
    /// Window sizes for long texts.
    pub head_bytes: u32,
    pub tail_bytes: u32,
}

impl Default for FeatureSpec {
    fn default() -> Self {
        FeatureSpec {
            bits: DEFAULT_BITS,
            head_bytes: DEFAULT_HEAD_BYTES,
            tail_bytes: DEFAULT_TAIL_BYTES,
        }
    }
}

impl FeatureSpec {
    /// Number of buckets, 2^bits.
    pub fn buckets(&self) -> usize {
        1usize << self.bits
    }

    fn mask(&self) -> u64 {
        (1u64 << self.bits) - 1
    }
}

/// Reusable buffers for featurising (a 2^bits-bit set to find distinct buckets, and the
/// keys). One per thread; reusing it makes a decision allocation-free.
#[derive(Debug, Default)]
pub struct Scratch {
    seen: Vec<u64>,
    keys: Vec<u32>,
}

/// The features of one text, borrowed from the text and a [`Scratch`].
#[derive(Debug, Clone, Copy)]
pub struct Features<'a> {
    /// Distinct buckets, in first-seen order.
    pub buckets: &'a [u32],
    /// Tokens in the normalised, windowed text.
    pub tokens: usize,
    /// The windows of the stripped text (before option prefixes are dropped); `tail` is
    /// empty when the text fits in one window.
    pub head: &'a [u8],
    pub tail: &'a [u8],
    /// Whether `tail` starts at the start of a line.
    pub tail_line_start: bool,
    /// Bytes of the text after trailing whitespace and `Answer:` are stripped.
    pub stripped_len: usize,
}

impl Features<'_> {
    /// The normalised, windowed text (head then tail) and where the tail starts in it.
    pub fn normalised(&self) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(self.head.len() + self.tail.len());
        push_normalised(&mut out, self.head, true);
        let split = out.len();
        push_normalised(&mut out, self.tail, self.tail_line_start);
        (out, split)
    }
}

/// Word bytes lowercased; 0 for separators.
static WORD: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if c.is_ascii_uppercase() {
            c + 32
        } else if c.is_ascii_alphanumeric() || c >= 0x80 {
            c
        } else {
            0
        };
        b += 1;
    }
    t
};

#[inline]
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

#[inline]
fn is_trailing_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c)
}

/// The splitmix64 finaliser: mixes a bigram's two unigram hashes into one key.
#[inline]
pub fn splitmix_fin(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The 64-bit bigram key of two consecutive tokens' unigram hashes.
#[inline]
pub fn bigram_key(prev: u64, cur: u64) -> u64 {
    splitmix_fin(prev ^ cur.rotate_left(32))
}

fn trim_end(mut d: &[u8]) -> &[u8] {
    while let Some((&last, rest)) = d.split_last() {
        if !is_trailing_space(last) {
            break;
        }
        d = rest;
    }
    d
}

/// Step 1a: trailing whitespace and a trailing `Answer:` removed.
fn strip_tail(text: &[u8]) -> &[u8] {
    let d = trim_end(text);
    match d.strip_suffix(b"Answer:") {
        Some(rest) => trim_end(rest),
        None => d,
    }
}

/// Step 2: the (head, tail) windows of a stripped text; `tail` is empty for a short one.
/// The bool says whether the tail starts at a line start.
fn windows<'a>(d: &'a [u8], spec: &FeatureSpec) -> (&'a [u8], &'a [u8], bool) {
    let (head, tail) = (spec.head_bytes as usize, spec.tail_bytes as usize);
    if d.len() <= head.saturating_add(tail) {
        return (d, &[], false);
    }
    let splits_word = |i: usize| i > 0 && i < d.len() && is_word(d[i - 1]) && is_word(d[i]);
    let mut end = head;
    while splits_word(end) && head - end < MAX_CUT_SHIFT.min(head) {
        end -= 1;
    }
    if splits_word(end) {
        end = head;
    }
    let base = d.len() - tail;
    let mut start = base;
    while splits_word(start) && start - base < MAX_CUT_SHIFT.min(tail) {
        start += 1;
    }
    if splits_word(start) {
        start = base;
    }
    (&d[..end], &d[start..], d[start - 1] == b'\n')
}

/// Step 1b: copy `seg` into `out`, dropping option prefixes at line starts.
fn push_normalised(out: &mut Vec<u8>, seg: &[u8], mut line_start: bool) {
    let mut i = 0;
    while i < seg.len() {
        if line_start
            && i + 3 <= seg.len()
            && (b'A'..=b'J').contains(&seg[i])
            && matches!(seg[i + 1], b'.' | b')')
            && seg[i + 2] == b' '
        {
            i += 3;
        }
        // Copy up to and including the next newline.
        match seg[i..].iter().position(|&b| b == b'\n') {
            Some(p) => {
                out.extend_from_slice(&seg[i..i + p + 1]);
                i += p + 1;
                line_start = true;
            }
            None => {
                out.extend_from_slice(&seg[i..]);
                i = seg.len();
            }
        }
    }
}

/// An option prefix `X. ` / `X) ` (`X` in `A`–`J`) at `seg[i..]`.
#[inline]
fn option_prefix(seg: &[u8], i: usize) -> bool {
    i + 3 <= seg.len()
        && (b'A'..=b'J').contains(&seg[i])
        && matches!(seg[i + 1], b'.' | b')')
        && seg[i + 2] == b' '
}

/// Calls `on_token(unigram_hash)` for each token of the normalised `seg`, in order,
/// dropping option prefixes at line starts on the fly (no copy).
#[inline]
fn for_each_token(seg: &[u8], line_start: bool, mut on_token: impl FnMut(u64)) {
    let n = seg.len();
    let mut i = 0;
    if line_start && option_prefix(seg, 0) {
        i = 3;
    }
    while i < n {
        // Separators; a newline starts a line, which may open with an option prefix.
        let b = seg[i];
        if WORD[usize::from(b)] == 0 {
            i += 1;
            if b == b'\n' && option_prefix(seg, i) {
                i += 3;
            }
            continue;
        }
        // A token: hash its first MAX_TOKEN_BYTES bytes, skip the rest.
        let mut h = FNV_W;
        let lim = (i + MAX_TOKEN_BYTES).min(n);
        while i < lim {
            let c = WORD[usize::from(seg[i])];
            if c == 0 {
                break;
            }
            h = (h ^ u64::from(c)).wrapping_mul(FNV_PRIME);
            i += 1;
        }
        while i < n && WORD[usize::from(seg[i])] != 0 {
            i += 1;
        }
        on_token(h);
    }
}

/// The tokens of a text, as byte strings (lowercased, truncated), after normalisation and
/// windowing. For tests, tooling and explanation; the scorer never materialises tokens.
pub fn tokens(spec: &FeatureSpec, text: &str) -> Vec<Vec<u8>> {
    let mut s = Scratch::default();
    let f = featurize(spec, text, &mut s);
    let (text, split) = f.normalised();
    let mut out = Vec::new();
    for seg in [&text[..split], &text[split..]] {
        for t in seg.split(|&b| WORD[usize::from(b)] == 0) {
            if !t.is_empty() {
                out.push(
                    t[..t.len().min(MAX_TOKEN_BYTES)]
                        .iter()
                        .map(|&b| WORD[usize::from(b)])
                        .collect(),
                );
            }
        }
    }
    out
}

/// Featurise `text`: its distinct buckets and token count (see the module docs).
pub fn featurize<'a>(spec: &FeatureSpec, text: &'a str, scratch: &'a mut Scratch) -> Features<'a> {
    let Scratch { seen, keys } = scratch;
    let words = spec.buckets().div_ceil(64);
    if seen.len() != words {
        seen.clear();
        seen.resize(words, 0);
    } else {
        // Clear only the words the previous call set.
        for &k in keys.iter() {
            seen[(k >> 6) as usize] = 0;
        }
    }
    keys.clear();

    let stripped = strip_tail(text.as_bytes());
    let (head, tail, tail_line_start) = windows(stripped, spec);
    let mask = spec.mask();
    let mut tokens = 0usize;
    let mut add = |key: u64| {
        let k = (key & mask) as u32;
        let (w, bit) = ((k >> 6) as usize, 1u64 << (k & 63));
        if seen[w] & bit == 0 {
            seen[w] |= bit;
            keys.push(k);
        }
    };
    for (seg, line_start) in [(head, true), (tail, tail_line_start)] {
        let mut prev: Option<u64> = None;
        for_each_token(seg, line_start, |hu| {
            tokens += 1;
            add(hu);
            if let Some(p) = prev {
                add(bigram_key(p, hu));
            }
            prev = Some(hu);
        });
    }
    Features {
        buckets: keys,
        tokens,
        head,
        tail,
        tail_line_start,
        stripped_len: stripped.len(),
    }
}

// ---------------------------------------------------------------------------------------
// Dense text statistics (optional extra inputs of a linear model).

/// A dense statistic of the normalised, windowed text. `ln1p` = ln(1 + x).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Dense {
    /// ln1p(bytes of the stripped text before windowing).
    LogBytes = 0,
    /// ln1p(tokens).
    LogTokens = 1,
    /// ASCII digits / bytes.
    DigitFrac = 2,
    /// ln1p(all-digit tokens).
    LogNumbers = 3,
    /// ln1p(count of `+*/=^<>%`).
    LogMathOps = 4,
    /// ln1p(count of `\`).
    LogBackslash = 5,
    /// ln1p(count of `{` and `}`).
    LogBraces = 6,
    /// ln1p(count of `;`).
    LogSemicolon = 7,
    /// Mean token length (bytes, after truncation).
    AvgTokLen = 8,
    /// ln1p(code fences: non-overlapping "```").
    CodeFence = 9,
    /// Distinct unigram buckets / tokens.
    TypeToken = 10,
    /// Bytes ≥ 0x80 / bytes.
    NonAsciiFrac = 11,
    /// ln1p(tokens of ≥ 10 bytes).
    LogLongWords = 12,
    /// ln1p(count of `?`).
    LogQmarks = 13,
    /// ln1p(count of `$`).
    LogDollar = 14,
}

impl Dense {
    /// Every statistic, in id order.
    pub const ALL: [Dense; 15] = [
        Dense::LogBytes,
        Dense::LogTokens,
        Dense::DigitFrac,
        Dense::LogNumbers,
        Dense::LogMathOps,
        Dense::LogBackslash,
        Dense::LogBraces,
        Dense::LogSemicolon,
        Dense::AvgTokLen,
        Dense::CodeFence,
        Dense::TypeToken,
        Dense::NonAsciiFrac,
        Dense::LogLongWords,
        Dense::LogQmarks,
        Dense::LogDollar,
    ];

    pub fn from_id(id: u16) -> Option<Dense> {
        Dense::ALL.get(usize::from(id)).copied()
    }

    pub fn id(self) -> u16 {
        self as u16
    }
}

/// All [`Dense`] statistics of a featurised text, indexed by id.
pub fn dense_stats(f: &Features<'_>, spec: &FeatureSpec) -> [f64; 15] {
    let (text, split) = f.normalised();
    let d = &text[..];
    let mut cnt = [0usize; 256];
    for &b in d {
        cnt[usize::from(b)] += 1;
    }
    let nz = d.len().max(1) as f64;
    let c = |b: u8| cnt[usize::from(b)];
    let l1 = |x: usize| (x as f64).ln_1p();
    let digits: usize = (b'0'..=b'9').map(c).sum();
    let nonascii: usize = cnt[128..].iter().sum();
    let math: usize = b"+*/=^<>%".iter().map(|&b| c(b)).sum();
    let (mut numbers, mut long, mut total_len, mut ntok) = (0usize, 0usize, 0usize, 0usize);
    let mut distinct = Vec::with_capacity(f.tokens);
    for seg in [&d[..split], &d[split..]] {
        let (mut h, mut len, mut digits_only, mut in_tok) = (0u64, 0usize, true, false);
        let mut end_token = |h: u64, len: usize, digits_only: bool| {
            ntok += 1;
            total_len += len;
            long += usize::from(len >= 10);
            numbers += usize::from(digits_only);
            distinct.push(h & spec.mask());
        };
        for &b in seg {
            if is_word(b) {
                if !in_tok {
                    (h, len, digits_only, in_tok) = (FNV_W, 0, true, true);
                }
                digits_only &= b.is_ascii_digit();
                if len < MAX_TOKEN_BYTES {
                    h = (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(FNV_PRIME);
                    len += 1;
                }
            } else if in_tok {
                end_token(h, len, digits_only);
                in_tok = false;
            }
        }
        if in_tok {
            end_token(h, len, digits_only);
        }
    }
    distinct.sort_unstable();
    distinct.dedup();
    let fences = {
        let (mut n, mut i) = (0, 0);
        while i + 3 <= d.len() {
            if &d[i..i + 3] == b"```" {
                n += 1;
                i += 3;
            } else {
                i += 1;
            }
        }
        n
    };
    let per_tok = |x: usize| {
        if ntok == 0 {
            0.0
        } else {
            x as f64 / ntok as f64
        }
    };
    [
        l1(f.stripped_len.max(d.len())),
        l1(ntok),
        digits as f64 / nz,
        l1(numbers),
        l1(math),
        l1(c(b'\\')),
        l1(c(b'{') + c(b'}')),
        l1(c(b';')),
        per_tok(total_len),
        l1(fences),
        per_tok(distinct.len()),
        nonascii as f64 / nz,
        l1(long),
        l1(c(b'?')),
        l1(c(b'$')),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(text: &str) -> Vec<u32> {
        let mut s = Scratch::default();
        let mut b = featurize(&FeatureSpec::default(), text, &mut s)
            .buckets
            .to_vec();
        b.sort_unstable();
        b
    }

    #[test]
    fn fnv_and_splitmix_reference_values() {
        // FNV-1a 64 published test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
        assert_eq!(FNV_W, fnv1a64(b"w"));
        // splitmix64's finaliser of 0 is 0; of 1 a known constant.
        assert_eq!(splitmix_fin(0), 0);
        assert_eq!(splitmix_fin(1), 0x5692161d100b05e5);
    }

    #[test]
    fn tokeniser_normalises_and_truncates() {
        let spec = FeatureSpec::default();
        let t = |s: &str| -> Vec<String> {
            tokens(&spec, s)
                .into_iter()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .collect()
        };
        assert_eq!(t("Hello, World!  "), ["hello", "world"]);
        assert_eq!(
            t("Q?\nA. yes\nB) no\nK. kept\nAnswer:\n "),
            ["q", "yes", "no", "k", "kept"]
        );
        assert_eq!(t("x=3.14; ÜBER"), ["x", "3", "14", "Über"]);
        let long = "a".repeat(40);
        assert_eq!(t(&long), ["a".repeat(32)]);
        assert!(t("").is_empty());
        assert!(t(" \n\t").is_empty());
        assert!(t("Answer:").is_empty());
    }

    #[test]
    fn features_are_deterministic_and_scratch_reuse_is_clean() {
        let a = buckets("The quick brown fox jumps over the lazy dog.");
        let mut s = Scratch::default();
        let spec = FeatureSpec::default();
        let _ = featurize(&spec, &"zz ".repeat(500), &mut s);
        let mut b = featurize(
            &spec,
            "The quick brown fox jumps over the lazy dog.",
            &mut s,
        )
        .buckets
        .to_vec();
        b.sort_unstable();
        assert_eq!(a, b);
        // 9 tokens, 8 bigrams, "the" twice as a unigram.
        assert_eq!(a.len(), 8 + 8);
    }

    #[test]
    fn long_texts_are_windowed_without_splitting_words() {
        let spec = FeatureSpec {
            bits: 18,
            head_bytes: 16,
            tail_bytes: 16,
        };
        let text = "alpha beta gamma delta epsilon zeta eta theta iota kappa";
        let toks: Vec<String> = tokens(&spec, text)
            .into_iter()
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .collect();
        assert_eq!(toks, ["alpha", "beta", "gamma", "theta", "iota", "kappa"]);
        // No bigram across the gap: the same windows featurised separately add up.
        let mut s = Scratch::default();
        let n = featurize(&spec, text, &mut s).buckets.len();
        assert_eq!(n, 3 + 2 + 3 + 2);
    }

    #[test]
    fn windowing_bounds_the_work() {
        let spec = FeatureSpec::default();
        let mut s = Scratch::default();
        let text = "word ".repeat(100_000);
        let f = featurize(&spec, &text, &mut s);
        assert!(f.head.len() + f.tail.len() <= 4096);
        assert!(f.tokens <= 820);
    }
}
