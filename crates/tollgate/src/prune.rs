//! `tollgate prune`: the gateway's own pruning over a file of conversations.
//!
//! Input: JSON Lines, one object per line with a `messages` array (OpenAI chat format:
//! system, user, assistant with `tool_calls`, tool); other fields are ignored. Output on
//! stdout: one pruned `messages` array per input line, same order. With `--stats FILE`,
//! one `{"line": N, "tokens_before": B, "tokens_after": A}` per line in FILE, counted
//! with the `o200k_base` tokenizer (as the gateway counts an OpenAI prompt). A bad line is
//! an error naming its line number, and then nothing is written to stdout.

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tollgate_domain::prune::{Policy, Strategies, Target, prune as run};
use tollgate_providers::prune::{apply, view};
use tollgate_providers::tokenizer::Encoding;
use tollgate_providers::translate::Format;

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["target_tokens", "ratio"])))]
pub struct PruneArgs {
    /// JSON Lines file of `{"messages": [...]}` objects (`-` for stdin).
    #[arg(long)]
    pub input: PathBuf,
    /// Prune each conversation to at most this many prompt tokens.
    #[arg(long)]
    pub target_tokens: Option<u64>,
    /// Prune each conversation to this share of its prompt tokens (0 < R <= 1).
    #[arg(long)]
    pub ratio: Option<f64>,
    /// Messages at the end never touched (default: the gateway's).
    #[arg(long)]
    pub keep_last: Option<usize>,
    /// Most recent tool results never cleared (default: the gateway's).
    #[arg(long)]
    pub tool_keep_last: Option<usize>,
    /// Cap per tool output, in tokens (default: the gateway's).
    #[arg(long)]
    pub tool_max_tokens: Option<u64>,
    /// Comma-separated strategies: dedupe, clear_tool_results, cap_tool_output, select
    /// (default: all).
    #[arg(long, value_delimiter = ',')]
    pub strategies: Option<Vec<String>>,
    /// Write per-line token counts (before, after) to this file.
    #[arg(long)]
    pub stats: Option<PathBuf>,
}

fn reader(input: &Path) -> Result<Box<dyn Read>> {
    Ok(if input.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?,
        )
    })
}

/// The pruned messages of one conversation, and its tokens before and after.
pub fn prune_messages(
    messages: Vec<Value>,
    base: &Policy,
    target: Target,
) -> (Vec<Value>, u64, u64) {
    let enc = Encoding::O200kBase;
    let before = enc.count_chat_prompt(&messages);
    // The decisions use the domain's estimate; an absolute target becomes a share of
    // the real count so the two scales never mix.
    let target = match target {
        Target::Tokens(n) => Target::Ratio((n as f64 / before.max(1) as f64).min(1.0)),
        r => r,
    };
    let policy = Policy { target, ..*base };
    let mut body = Map::new();
    body.insert("messages".into(), Value::Array(messages));
    let edits = view(Format::OpenAi, &body).map(|v| (run(&v.conversation, &policy).edits, v.paths));
    if let Some((edits, paths)) = edits {
        apply(&mut body, &paths, edits);
    }
    let messages = match body.remove("messages") {
        Some(Value::Array(m)) => m,
        _ => Vec::new(),
    };
    let after = enc.count_chat_prompt(&messages);
    (messages, before, after)
}

pub fn prune(a: PruneArgs) -> Result<ExitCode> {
    let target = match (a.target_tokens, a.ratio) {
        (Some(n), _) => Target::Tokens(n),
        (None, Some(r)) if r > 0.0 && r <= 1.0 => Target::Ratio(r),
        (None, Some(r)) => bail!("--ratio {r}: must be within (0, 1]"),
        (None, None) => bail!("one of --target-tokens or --ratio is required"),
    };
    let defaults = Policy::default();
    let strategies = match &a.strategies {
        Some(names) => Strategies::parse(names.iter().map(String::as_str)).map_err(|n| {
            anyhow!(
                "--strategies: {n:?} is not one of {}",
                Strategies::NAMES.join(", ")
            )
        })?,
        None => defaults.strategies,
    };
    let base = Policy {
        target,
        keep_last: a.keep_last.unwrap_or(defaults.keep_last),
        tool_keep_last: a.tool_keep_last.unwrap_or(defaults.tool_keep_last),
        tool_max_tokens: a.tool_max_tokens.unwrap_or(defaults.tool_max_tokens),
        strategies,
    };
    let mut conversations = Vec::new();
    for (i, line) in BufReader::new(reader(&a.input)?).lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("line {n}: cannot read"))?;
        let v: Value = serde_json::from_str(&line).map_err(|e| {
            anyhow!("line {n}: expected a JSON object with a \"messages\" array: {e}")
        })?;
        let Value::Object(mut obj) = v else {
            bail!("line {n}: expected a JSON object with a \"messages\" array");
        };
        let Some(Value::Array(messages)) = obj.remove("messages") else {
            bail!("line {n}: no \"messages\" array");
        };
        if let Some(j) = messages
            .iter()
            .position(|m| !m.is_object() || !m.get("role").is_some_and(Value::is_string))
        {
            bail!("line {n}: messages[{j}] is not an object with a string \"role\"");
        }
        conversations.push(messages);
    }
    let mut out = String::new();
    let mut stats = String::new();
    for (i, messages) in conversations.into_iter().enumerate() {
        let (pruned, before, after) = prune_messages(messages, &base, target);
        out.push_str(&Value::Array(pruned).to_string());
        out.push('\n');
        stats.push_str(&format!(
            "{{\"line\":{},\"tokens_before\":{before},\"tokens_after\":{after}}}\n",
            i + 1
        ));
    }
    if let Some(p) = &a.stats {
        std::fs::write(p, stats).with_context(|| format!("writing {}", p.display()))?;
    }
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
