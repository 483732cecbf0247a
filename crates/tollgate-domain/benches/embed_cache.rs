//! The embedding models and the response cache indexes: embedding time per text (the
//! compiled-in static model; all-MiniLM-L6-v2 too when `TOLLGATE_MINILM_DIR` names a
//! directory with `model.safetensors` and `vocab.txt`), semantic lookup at 10k and 100k
//! entries in one context bucket (the worst case) against a naive `f32` scan, exact
//! lookup, and memory per entry. A benchmark, not a test: it prints numbers.
//!
//!     cargo bench -p tollgate-domain --bench embed_cache
//!     TOLLGATE_MINILM_DIR=path/to/all-MiniLM-L6-v2 cargo bench -p tollgate-domain --bench embed_cache

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is right

use std::hint::black_box;
use std::time::{Duration, Instant};
use tollgate_domain::cache::exact::ExactIndex;
use tollgate_domain::cache::semantic::SemanticIndex;
use tollgate_domain::cache::{Bounds, ContextKey};
use tollgate_domain::embed::{Embedder, MiniLm, cosine, l2_normalize, static_model};

fn stats(name: &str, mut xs: Vec<Duration>) {
    xs.sort_unstable();
    let p =
        |q: f64| xs[((xs.len() as f64 * q) as usize).min(xs.len() - 1)].as_nanos() as f64 / 1000.0;
    println!(
        "{name:<58} p50 {:>9.2} µs   p99 {:>9.2} µs   (n={})",
        p(0.5),
        p(0.99),
        xs.len()
    );
}

fn time<F: FnMut()>(n: usize, mut f: F) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

const SHORT: &str = "How do I change the email address on my account? I no longer use the old one.";

fn kilobyte() -> String {
    let para = "Our deployment pipeline fails intermittently when the integration tests run against \
        the staging database; the error mentions a connection reset by peer, and retrying usually works. \
        Could you explain what typically causes this, how to confirm it from the logs, and what \
        configuration changes to the connection pool or timeouts would make it reliable? ";
    let mut s = String::new();
    while s.len() < 1024 {
        s.push_str(para);
    }
    s.truncate(1024);
    s
}

fn unit(seed: u64, dim: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f32> = (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    l2_normalize(&mut v);
    v
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<usize>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn embedders() {
    let kb = kilobyte();
    let t = Instant::now();
    let m = static_model::builtin().unwrap();
    println!(
        "static model: {} dims, table {} KiB (parsed once: first call {:?})",
        m.dim(),
        m.table_bytes() / 1024,
        t.elapsed()
    );
    let mut out = Vec::with_capacity(m.dim());
    stats(
        &format!("static embed, {} B text", SHORT.len()),
        time(20_000, || m.embed_into(black_box(SHORT), &mut out)),
    );
    stats(
        "static embed, 1 KB text",
        time(20_000, || m.embed_into(black_box(&kb), &mut out)),
    );
    stats(
        "  of which tokenizing, 1 KB text",
        time(20_000, || {
            black_box(m.tokenizer().tokenize(black_box(&kb)));
        }),
    );
    if let Ok(dir) = std::env::var("TOLLGATE_MINILM_DIR") {
        let dir = std::path::Path::new(&dir);
        let st = std::fs::read(dir.join("model.safetensors")).unwrap();
        let vocab = std::fs::read_to_string(dir.join("vocab.txt")).unwrap();
        let t = Instant::now();
        let full = MiniLm::from_bytes(&st, &vocab).unwrap();
        println!("MiniLM loaded in {:?}", t.elapsed());
        let mut out = Vec::new();
        stats(
            &format!("MiniLM embed, {} B text", SHORT.len()),
            time(30, || full.embed_into(black_box(SHORT), &mut out)),
        );
        stats(
            &format!(
                "MiniLM embed, 1 KB text ({} tokens)",
                full.input_ids(&kb).len()
            ),
            time(10, || full.embed_into(black_box(&kb), &mut out)),
        );
    } else {
        println!("(set TOLLGATE_MINILM_DIR to time all-MiniLM-L6-v2 too)");
    }
}

fn semantic(entries: usize, dim: usize) {
    let key = ContextKey(42);
    let before = rss_bytes();
    let mut ix = SemanticIndex::new(
        dim,
        Bounds {
            max_entries: entries,
            max_bytes: usize::MAX,
            ttl_ms: u64::MAX / 2,
        },
    );
    for i in 0..entries as u64 {
        ix.insert(key, &unit(i, dim), i, 0, 0);
    }
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "semantic index, {entries} entries × {dim} dims: charged {} B/entry, RSS growth {:.0} B/entry",
        ix.entry_bytes(),
        grown as f64 / entries as f64
    );
    // half the queries are stored vectors (hits), half new ones (misses): a miss scans
    // the whole bucket just like a hit, so the split does not change the cost
    let mut q = 0u64;
    stats(
        &format!("semantic lookup, {entries} entries in one bucket, dim {dim}"),
        time(1_000, || {
            q += 1;
            let v = if q.is_multiple_of(2) {
                unit(q % entries as u64, dim)
            } else {
                unit(1_000_000 + q, dim)
            };
            black_box(ix.lookup(key, &v, 0.86, 1));
        }),
    );
    // naive baseline: f32 vectors, one allocation each, cosine against every one
    let naive: Vec<Vec<f32>> = (0..entries as u64).map(|i| unit(i, dim)).collect();
    let queries: Vec<Vec<f32>> = (0..200u64).map(|i| unit(2_000_000 + i, dim)).collect();
    let mut i = 0;
    stats(
        &format!("  naive f32 scan (Vec<Vec<f32>>, cosine), {entries}"),
        time(200, || {
            i += 1;
            let q = &queries[i % queries.len()];
            let best = naive.iter().map(|v| cosine(q, v)).fold(f32::MIN, f32::max);
            black_box(best);
        }),
    );
}

fn exact(entries: usize) {
    let before = rss_bytes();
    let mut ix = ExactIndex::new(Bounds {
        max_entries: entries,
        max_bytes: usize::MAX,
        ttl_ms: u64::MAX / 2,
    });
    let key = |i: u64| u128::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    for i in 0..entries as u64 {
        ix.insert(key(i), i, 0, 0);
    }
    println!(
        "exact index, {entries} entries: RSS growth {:.0} B/entry",
        rss_bytes().saturating_sub(before) as f64 / entries as f64
    );
    let mut q = 0u64;
    stats(
        &format!("exact lookup, {entries} entries (half hits)"),
        time(100_000, || {
            q += 1;
            let k = if q.is_multiple_of(2) {
                key(q % entries as u64)
            } else {
                key(u64::MAX - q)
            };
            black_box(ix.get(k, 1));
        }),
    );
}

fn main() {
    embedders();
    let only = std::env::var("TOLLGATE_BENCH_ONLY").unwrap_or_default();
    if only == "semantic" {
        semantic(100_000, 96);
        return;
    }
    for &(n, d) in &[(10_000, 96), (100_000, 96), (10_000, 384), (100_000, 384)] {
        semantic(n, d);
    }
    exact(100_000);
}
