//! `tollgate cache similarity`: the semantic cache's similarity scores, with the model,
//! normalisation and threshold the gateway uses.
//!
//! Stable interface (other tools parse it): stdout has exactly one line `{"score": S}`
//! per input line, in order, and nothing else; a summary line
//! `threshold=T model=NAME dim=D pairs=N` goes to stderr. Any bad input line is reported
//! on stderr with its line number, the exit status is non-zero and nothing is written to
//! stdout.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tollgate_domain::embed::{Embedder, MiniLm, cosine, static_model};

#[derive(Args, Debug)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub action: CacheAction,
}

#[derive(Subcommand, Debug)]
pub enum CacheAction {
    /// Score (cached, query) pairs as the semantic cache does.
    #[command(
        long_about = "Score (cached, query) pairs as the semantic cache does.\n\n\
        Input: JSON Lines, one {\"cached\": \"...\", \"query\": \"...\"} per line (other fields are \
        ignored). Output on stdout: one {\"score\": S} per input line, same order: the cosine of \
        the two texts' embeddings. On stderr, a final line `threshold=T model=NAME dim=D pairs=N`: \
        the gateway answers from the cache when S >= T (T is the model's threshold for at most 1 % \
        false hits on tollgate's evaluation set). A bad line is an error naming its line number, \
        and then nothing is written to stdout."
    )]
    Similarity(SimilarityArgs),
    /// Embed texts: one `{"ids": [...], "embedding": [...]}` per input line
    /// `{"text": "..."}` (the WordPiece ids without [CLS]/[SEP]; for checking the
    /// tokenizer and the models against a reference).
    Embed(SimilarityArgs),
}

#[derive(Args, Debug)]
pub struct SimilarityArgs {
    /// JSONL input (`-` for standard input).
    #[arg(long)]
    pub input: PathBuf,
    /// Directory holding all-MiniLM-L6-v2 (`model.safetensors`, `vocab.txt`): use the full
    /// transformer instead of the compiled-in static model.
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Pair {
    cached: String,
    query: String,
}

/// Reads all-MiniLM-L6-v2 from a directory (the file reading the domain crate leaves to
/// its caller).
pub fn load_minilm(dir: &Path) -> Result<MiniLm> {
    let st = std::fs::read(dir.join("model.safetensors"))
        .with_context(|| format!("reading {}", dir.join("model.safetensors").display()))?;
    let vocab = std::fs::read_to_string(dir.join("vocab.txt"))
        .with_context(|| format!("reading {}", dir.join("vocab.txt").display()))?;
    MiniLm::from_bytes(&st, &vocab).map_err(|e| anyhow!("{}: {e}", dir.display()))
}

/// The embedder the gateway would use: MiniLM from `dir`, else the built-in static model.
pub fn embedder(dir: Option<&Path>) -> Result<Box<dyn Embedder>> {
    Ok(match dir {
        Some(d) => Box::new(load_minilm(d)?),
        None => Box::new(static_model::builtin().map_err(|e| anyhow!("{e}"))?.clone()),
    })
}

pub fn cache(args: CacheArgs) -> Result<ExitCode> {
    match args.action {
        CacheAction::Similarity(a) => similarity(a),
        CacheAction::Embed(a) => embed(a),
    }
}

fn read_lines<T: serde::de::DeserializeOwned>(input: &Path, shape: &str) -> Result<Vec<T>> {
    let reader: Box<dyn Read> = if input.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?,
        )
    };
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("line {n}: cannot read"))?;
        let row: T =
            serde_json::from_str(&line).map_err(|e| anyhow!("line {n}: expected {shape}: {e}"))?;
        rows.push(row);
    }
    Ok(rows)
}

#[derive(Deserialize)]
struct Text {
    text: String,
}

fn embed(a: SimilarityArgs) -> Result<ExitCode> {
    let rows: Vec<Text> = read_lines(&a.input, "{\"text\": string}")?;
    let model = embedder(a.model_dir.as_deref())?;
    let tok = tollgate_domain::embed::static_model::builtin().map_err(|e| anyhow!("{e}"))?;
    let mut stdout = std::io::stdout().lock();
    for r in &rows {
        let line = serde_json::json!({
            "ids": tok.tokenizer().tokenize(&r.text),
            "embedding": model.embed(&r.text),
        });
        writeln!(stdout, "{line}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn similarity(a: SimilarityArgs) -> Result<ExitCode> {
    let pairs: Vec<Pair> = read_lines(&a.input, "{\"cached\": string, \"query\": string}")?;
    if pairs.is_empty() && a.input.as_os_str() != "-" {
        bail!("{}: no input lines", a.input.display());
    }
    let model = embedder(a.model_dir.as_deref())?;
    let mut out = String::with_capacity(pairs.len() * 20);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for p in &pairs {
        model.embed_into(&p.cached, &mut x);
        model.embed_into(&p.query, &mut y);
        let s = cosine(&x, &y);
        out.push_str(&serde_json::json!({ "score": s }).to_string());
        out.push('\n');
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    eprintln!(
        "threshold={:.4} model={} dim={} pairs={}",
        model.threshold(),
        model.name(),
        model.dim(),
        pairs.len()
    );
    Ok(ExitCode::SUCCESS)
}
