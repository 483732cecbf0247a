//! `router`: decision latency of the default router on one core, with naive baselines.
//!
//! ```sh
//! cargo build --release -p tollgate-bench
//! taskset -c 0 target/release/router            # markdown table on stdout
//! ```
//!
//! Prompt sets: the dev prompts (`data/router/dev.jsonl`, MMLU/GSM8K questions, mostly
//! 0.1–2 KB), chat transcripts of about 2, 4 and 8 KB built from them (system prompt,
//! alternating user/assistant turns), and single ~32 KB prompts (the featuriser's 2 KB
//! head and tail windows bound the work). A decision on a transcript is what the gateway will
//! do: [`prompt_text`] over the turns, then [`Router::decide`]. Each call is timed on its
//! own (`Instant` around it, ~20 ns of overhead included) after a warm-up pass; every set is
//! repeated until it has at least `--samples` timings.
//!
//! Baselines: `length rule` (heavy iff the text is longer than 1,000 bytes: the issue's
//! "longer prompt ⇒ heavy"), and `naive featuriser` (the same hashed words and pairs,
//! without normalisation or windows, computed the obvious way: a lowercased `String` per
//! token, a `HashSet` of bucket ids, `f64` weights in a `HashMap`), which shows what the
//! byte-level single pass and the windows buy.

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;
use tollgate_domain::routing::features::{bigram_key, fnv1a64};
use tollgate_domain::routing::{Router, TierPolicy, prompt_text};

#[derive(Parser, Debug)]
#[command(about = "Router decision latency benchmark")]
struct Cli {
    /// Labelled prompts (JSONL with a "prompt" field).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/router/dev.jsonl"))]
    data: PathBuf,
    /// Minimum timings per prompt set.
    #[arg(long, default_value_t = 200_000)]
    samples: usize,
    /// Only run scorers whose name contains this (e.g. `router`, `length`, `naive`).
    #[arg(long, default_value = "")]
    only: String,
}

/// A timed function of one case's turns.
type Scorer<'a> = Box<dyn FnMut(&[(&'static str, String)]) -> f64 + 'a>;

struct Set {
    name: String,
    /// Each case: chat turns (a plain prompt is one user turn).
    cases: Vec<Vec<(&'static str, String)>>,
}

fn transcripts(
    prompts: &[String],
    target: usize,
    count: usize,
) -> Vec<Vec<(&'static str, String)>> {
    let mut out = Vec::with_capacity(count);
    let mut k = 0;
    for c in 0..count {
        let mut turns = vec![(
            "system",
            "You are a careful assistant for an engineering team. Answer precisely.".to_string(),
        )];
        let mut len = turns[0].1.len();
        while len < target {
            let p = &prompts[(k * 7 + c) % prompts.len()];
            k += 1;
            let role = if turns.len() % 2 == 1 {
                "user"
            } else {
                "assistant"
            };
            len += p.len();
            turns.push((role, p.clone()));
        }
        if turns.last().is_some_and(|t| t.0 != "user") {
            turns.push(("user", prompts[(k + c) % prompts.len()].clone()));
        }
        out.push(turns);
    }
    out
}

/// The obvious implementation of the same features (the naive baseline).
struct Naive {
    weights: HashMap<u32, f64>,
    bias: f64,
    mask: u64,
}

impl Naive {
    fn new(r: &Router) -> Naive {
        let m = r.model();
        let weights = m
            .weights
            .iter()
            .enumerate()
            .filter(|(_, w)| **w != 0)
            .map(|(k, &w)| (k as u32, f64::from(w) * m.scale))
            .collect();
        Naive {
            weights,
            bias: m.bias,
            mask: (1u64 << m.spec.bits) - 1,
        }
    }

    fn score(&self, text: &str) -> f64 {
        let lower = text.to_ascii_lowercase();
        let toks: Vec<String> = lower
            .split(|c: char| c.is_ascii() && !c.is_ascii_alphanumeric())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        let hashes: Vec<u64> = toks
            .iter()
            .map(|t| fnv1a64(format!("w{t}").as_bytes()))
            .collect();
        let mut set = HashSet::new();
        for (i, &h) in hashes.iter().enumerate() {
            set.insert((h & self.mask) as u32);
            if i > 0 {
                set.insert((bigram_key(hashes[i - 1], h) & self.mask) as u32);
            }
        }
        let sum: f64 = set
            .iter()
            .map(|k| self.weights.get(k).copied().unwrap_or(0.0))
            .sum();
        let z = self.bias + sum / (set.len().max(1) as f64).sqrt();
        1.0 / (1.0 + (-z).exp())
    }
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
}

fn measure(
    set: &Set,
    samples: usize,
    mut f: impl FnMut(&[(&'static str, String)]) -> f64,
) -> (f64, f64, f64) {
    let mut sink = 0.0;
    for c in &set.cases {
        sink += f(c);
    }
    let rounds = samples.div_ceil(set.cases.len()).max(1);
    let mut ns = Vec::with_capacity(rounds * set.cases.len());
    for _ in 0..rounds {
        for c in &set.cases {
            let t = Instant::now();
            sink += f(black_box(c));
            ns.push(t.elapsed().as_nanos() as u64);
        }
    }
    black_box(sink);
    ns.sort_unstable();
    (
        percentile(&ns, 0.5),
        percentile(&ns, 0.99),
        percentile(&ns, 1.0),
    )
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let text =
        std::fs::read_to_string(&cli.data).with_context(|| format!("{}", cli.data.display()))?;
    let mut prompts = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)?;
        if let Some(p) = v["prompt"].as_str() {
            prompts.push(p.to_string());
        }
    }
    let router = Router::embedded()?;
    let policy: TierPolicy = router.default_policy();
    let naive = Naive::new(router);
    let mut sets = vec![Set {
        name: "dev prompts".into(),
        cases: prompts.iter().map(|p| vec![("user", p.clone())]).collect(),
    }];
    for kb in [2, 4, 8] {
        sets.push(Set {
            name: format!("chat ~{kb} KB"),
            cases: transcripts(&prompts, kb * 1024, 200),
        });
    }
    // One long user prompt: the windows bound the work.
    sets.push(Set {
        name: "prompt ~32 KB".into(),
        cases: (0..50)
            .map(|c| {
                let mut p = String::new();
                let mut k = c;
                while p.len() < 32 * 1024 {
                    p.push_str(&prompts[k % prompts.len()]);
                    p.push('\n');
                    k += 13;
                }
                vec![("user", p)]
            })
            .collect(),
    });
    let text_of =
        |c: &[(&'static str, String)]| prompt_text(c.iter().map(|(r, t)| (*r, t.as_str())));
    println!(
        "| prompt set | cases | mean bytes (all turns) | mean bytes scored | scorer | p50 µs | p99 µs | max µs |"
    );
    println!("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |");
    for set in &sets {
        let n = set.cases.len();
        let bytes: usize = set
            .cases
            .iter()
            .map(|c| c.iter().map(|t| t.1.len()).sum::<usize>())
            .sum();
        let mean = bytes / n;
        let scored = set.cases.iter().map(|c| text_of(c).len()).sum::<usize>() / n;
        let rows: [(&str, Scorer); 3] = [
            (
                "router (default model)",
                Box::new(|c| {
                    let d = router.decide(&text_of(c), &policy);
                    d.score + d.tier as f64
                }),
            ),
            (
                "baseline: length rule",
                Box::new(|c| f64::from(u8::from(text_of(c).len() > 1000))),
            ),
            (
                "baseline: naive featuriser",
                Box::new(|c| naive.score(&text_of(c))),
            ),
        ];
        for (name, f) in rows {
            if !name.contains(cli.only.as_str()) {
                continue;
            }
            let (p50, p99, max) = measure(set, cli.samples, f);
            println!(
                "| {} | {} | {mean} | {scored} | {name} | {p50:.1} | {p99:.1} | {max:.1} |",
                set.name,
                set.cases.len()
            );
        }
    }
    Ok(())
}
