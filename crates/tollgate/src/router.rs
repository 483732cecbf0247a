//! `tollgate router train | score | eval`: fit, apply and measure the light/heavy router.
//!
//! The commands' names, flags and outputs are a stable interface that other tools call:
//! - `score` writes exactly one line `{"score": S}` per input line, in order, and nothing
//!   else on stdout; any bad input line is reported on stderr, the exit status is non-zero
//!   and nothing at all is written to stdout.
//! - `eval` prints `key: value` lines (or one JSON object with `--json`).
//!
//! Input rows (JSON Lines, `.jsonl` or gzipped `.jsonl.gz`):
//! `{"prompt": "...", "messages": [...], "outcomes": {model: quality}, "source": "...",
//!   "costs": {model: usd}}`. The text is `prompt` if present, else the chat `messages`
//! (see [`tollgate_domain::routing::prompt_text`]: system/developer/user turns; `content`
//! a string or an array of parts with a `text` field). `outcomes` (quality in [0, 1]) is
//! needed by `train` and `eval`; `source` optionally groups rows for label smoothing;
//! `costs` optionally gives what answering the row cost on each model, in USD, for the
//! dollar figures of `eval`.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tollgate_domain::Rate;
use tollgate_domain::routing::features::FeatureSpec;
use tollgate_domain::routing::metrics::{self, CostSaving, Evaluation, QualityPoint};
use tollgate_domain::routing::train::{self, Example, Featurised, TrainOptions};
use tollgate_domain::routing::{Router, prompt_text};
use tollgate_domain::{Money, money::ATTO_PER_NANO};

#[derive(Args, Debug)]
pub struct RouterArgs {
    #[command(subcommand)]
    pub action: RouterAction,
}

#[derive(Subcommand, Debug)]
pub enum RouterAction {
    /// Fit a router from labelled JSONL (`{"prompt"|"messages", "outcomes": {model: q}}`).
    Train(TrainArgs),
    /// Score prompts: one `{"score": S}` line per input line (S in [0, 1], higher = heavier).
    Score(ScoreArgs),
    /// APGR, CPT(50%), CPT(80%) and the dollar saving at 95% of heavy quality.
    Eval(EvalArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training data, JSONL or JSONL.gz (optional with `--from-ledger`, which it then
    /// adds to).
    #[arg(long, required_unless_present = "from_ledger")]
    pub data: Option<PathBuf>,
    /// The gateway's ledger (SQLite file): train on the routing samples it recorded
    /// (`routing.record_samples = true`) labelled by escalations and task outcomes.
    /// `--light`/`--heavy` are then deployment names.
    #[arg(long)]
    pub from_ledger: Option<PathBuf>,
    /// With `--from-ledger`: only samples of this route.
    #[arg(long)]
    pub route: Option<String>,
    /// The light model's name in `outcomes` (a deployment name with `--from-ledger`).
    #[arg(long)]
    pub light: String,
    /// The heavy model's name in `outcomes` (a deployment name with `--from-ledger`).
    #[arg(long)]
    pub heavy: String,
    /// Dev data to calibrate the threshold on and report metrics for (else: the training
    /// data itself, in-sample).
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// Where to write the model.
    #[arg(long, default_value = "router.bin")]
    pub out: PathBuf,
    /// Inverse L2 regularisation strength.
    #[arg(long, default_value_t = 2.0)]
    pub c: f64,
    /// Label smoothing toward the row's source mean (1 = none).
    #[arg(long, default_value_t = 0.25)]
    pub smoothing: f64,
    /// log2 of the number of hashed buckets.
    #[arg(long, default_value_t = 18)]
    pub bits: u8,
    /// Also learn weights for 15 dense text statistics.
    #[arg(long)]
    pub dense: bool,
    /// Quality (fraction of the heavy model's) the default threshold is calibrated for.
    #[arg(long, default_value_t = 0.95)]
    pub quality_target: f64,
    /// Also run K-fold cross-validation on the training data and print its metrics.
    #[arg(long, default_value_t = 0)]
    pub cv: usize,
    /// Seed of the cross-validation shuffle.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// JSONL with a `prompt` or `messages` field per line (`-` = stdin).
    #[arg(long)]
    pub input: PathBuf,
    /// Model file (default: the compiled-in model).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Labelled JSONL or JSONL.gz.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub light: String,
    #[arg(long)]
    pub heavy: String,
    /// Model file (default: the compiled-in model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Evaluate a naive baseline instead of the model: `length` (longer prompt ⇒ heavy).
    #[arg(long)]
    pub baseline: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn router(args: RouterArgs) -> Result<ExitCode> {
    match args.action {
        RouterAction::Train(a) => train_cmd(a),
        RouterAction::Score(a) => score_cmd(a),
        RouterAction::Eval(a) => eval_cmd(a),
    }
}

// ------------------------------------------------------------------------------ input

fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let r: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(Box::new(BufReader::new(r)))
}

/// The lines of a JSONL file with their 1-based numbers; trailing blank lines dropped
/// (a blank line before the end is kept, so it is reported as an error).
fn lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let mut out = Vec::new();
    for (i, l) in open(path)?.lines().enumerate() {
        out.push((i + 1, l.with_context(|| format!("{}", path.display()))?));
    }
    while out.last().is_some_and(|(_, l)| l.trim().is_empty()) {
        out.pop();
    }
    Ok(out)
}

/// The text a row is judged on: `prompt`, else the chat `messages`.
fn row_text(v: &Value) -> Result<String> {
    if let Some(p) = v.get("prompt") {
        return p
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("\"prompt\" must be a string"));
    }
    let Some(msgs) = v.get("messages") else {
        bail!("no \"prompt\" (string) or \"messages\" (array) field");
    };
    let msgs = msgs
        .as_array()
        .ok_or_else(|| anyhow!("\"messages\" must be an array"))?;
    let mut turns: Vec<(String, String)> = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("messages[{i}]: no string \"role\""))?;
        let text = match m.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            Some(_) => bail!("messages[{i}]: \"content\" must be a string or an array"),
        };
        turns.push((role.to_string(), text));
    }
    Ok(prompt_text(
        turns.iter().map(|(r, t)| (r.as_str(), t.as_str())),
    ))
}

struct Labelled {
    examples: Vec<Example>,
    /// Per-row costs in atto-USD (light, heavy), if every row has both.
    costs: Option<(Vec<u128>, Vec<u128>)>,
    rows_with_costs: usize,
}

/// A row's cost in USD (a JSON number) as exact atto-USD: the decimal literal is parsed,
/// not multiplied in floating point (amounts above 18 USD, beyond a `Rate`, are rounded
/// to the atto, far below a report's nano-USD).
fn usd_to_atto(v: &Value) -> Option<u128> {
    let usd = v.as_f64().filter(|x| x.is_finite() && *x >= 0.0)?;
    match Rate::from_f64_usd_per_token(usd) {
        Ok((rate, _)) => Some(u128::from(rate.atto())),
        Err(_) => Some((usd * 1e18).round() as u128),
    }
}

fn read_labelled(path: &Path, light: &str, heavy: &str) -> Result<Labelled> {
    let mut examples = Vec::new();
    let (mut cl, mut ch) = (Vec::new(), Vec::new());
    let mut errors = Vec::new();
    for (n, line) in lines(path)? {
        let parsed = (|| -> Result<(Example, Option<(u128, u128)>)> {
            let v: Value = serde_json::from_str(&line)?;
            let text = row_text(&v)?;
            let outcome = |m: &str| -> Result<f64> {
                let q = v
                    .get("outcomes")
                    .and_then(|o| o.get(m))
                    .and_then(Value::as_f64)
                    .ok_or_else(|| anyhow!("no numeric \"outcomes\".{m:?}"))?;
                if !(0.0..=1.0).contains(&q) {
                    bail!("\"outcomes\".{m:?} = {q} is outside [0, 1]");
                }
                Ok(q)
            };
            let (l, h) = (outcome(light)?, outcome(heavy)?);
            let cost = |m: &str| v.get("costs").and_then(|c| c.get(m)).and_then(usd_to_atto);
            let costs = cost(light).zip(cost(heavy));
            let source = v.get("source").and_then(Value::as_str).map(str::to_string);
            Ok((
                Example {
                    text,
                    light: l,
                    heavy: h,
                    source,
                },
                costs,
            ))
        })();
        match parsed {
            Ok((e, c)) => {
                examples.push(e);
                if let Some((l, h)) = c {
                    cl.push(l);
                    ch.push(h);
                }
            }
            Err(e) => errors.push(format!("{}:{n}: {e:#}", path.display())),
        }
    }
    if !errors.is_empty() {
        for e in errors.iter().take(20) {
            eprintln!("{e}");
        }
        bail!("{} bad line(s) in {}", errors.len(), path.display());
    }
    if examples.is_empty() {
        bail!("{}: no rows", path.display());
    }
    let rows_with_costs = cl.len();
    let costs = (rows_with_costs == examples.len()).then_some((cl, ch));
    Ok(Labelled {
        examples,
        costs,
        rows_with_costs,
    })
}

fn load_router(path: Option<&Path>) -> Result<Router> {
    match path {
        None => Ok(Router::embedded()?.clone()),
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("{}", p.display()))?;
            Router::from_bytes(&bytes).with_context(|| format!("{}", p.display()))
        }
    }
}

fn outcomes(ex: &[Example]) -> (Vec<f64>, Vec<f64>) {
    (
        ex.iter().map(|e| e.light).collect(),
        ex.iter().map(|e| e.heavy).collect(),
    )
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn metrics_line(e: &Evaluation) -> String {
    format!(
        "APGR {:.4}  APGR (RouteLLM trapezoid) {:.4}  CPT(50%) {}  CPT(80%) {}",
        e.apgr,
        e.apgr_routellm,
        pct(e.cpt50),
        pct(e.cpt80)
    )
}

// ------------------------------------------------------------------------------ train

/// Labelled examples and their features from the ledger's routing samples (see
/// `tollgate_domain::routing::sample` for how labels are derived, and what they cannot
/// say: only the served tier's outcome is observed).
fn ledger_examples(
    a: &TrainArgs,
    spec: &FeatureSpec,
) -> Result<(Vec<Example>, Featurised, Vec<u32>, LedgerCounts)> {
    use tollgate_domain::routing::sample::{Observed, Sample, label};
    let Some(db) = &a.from_ledger else {
        return Ok(Default::default());
    };
    if !db.exists() {
        bail!("{}: no such ledger", db.display());
    }
    let store = tollgate_store::SqliteStore::open(db)?;
    let mut ex = Vec::new();
    let mut set = Featurised::default();
    let mut tokens = Vec::new();
    let mut n = LedgerCounts::default();
    for s in store.route_samples()? {
        if a.route.as_deref().is_some_and(|r| r != s.route_name) {
            continue;
        }
        n.samples += 1;
        let served_light = s.deployment == a.light;
        if !served_light && s.deployment != a.heavy {
            n.other_deployment += 1;
            continue;
        }
        let sample = match Sample::from_json(&s.features) {
            Ok(x) => x,
            Err(_) => {
                n.bad += 1;
                continue;
            }
        };
        if sample.spec() != *spec {
            n.other_spec += 1;
            continue;
        }
        let obs = Observed {
            served_light,
            escalated: s.escalated,
            task_succeeded: match s.outcome.as_deref() {
                Some("success") => Some(true),
                Some("failure") => Some(false),
                _ => None,
            },
        };
        let Some((light, heavy)) = label(&obs) else {
            n.unlabelled += 1;
            continue;
        };
        n.labelled += 1;
        ex.push(Example {
            text: String::new(),
            light,
            heavy,
            source: Some(format!("ledger/{}", s.route_name)),
        });
        set.dense.push(sample.dense_array());
        tokens.push(sample.tokens);
        set.buckets.push(sample.buckets);
    }
    Ok((ex, set, tokens, n))
}

#[derive(Debug, Default)]
struct LedgerCounts {
    samples: usize,
    labelled: usize,
    unlabelled: usize,
    other_deployment: usize,
    other_spec: usize,
    bad: usize,
}

fn train_cmd(a: TrainArgs) -> Result<ExitCode> {
    if a.from_ledger.is_some() {
        return ledger_train_cmd(a);
    }
    let Some(data_path) = a.data.clone() else {
        bail!("--data or --from-ledger is required");
    };
    let data = read_labelled(&data_path, &a.light, &a.heavy)?;
    let opts = TrainOptions {
        c: a.c,
        smoothing: a.smoothing,
        spec: FeatureSpec {
            bits: a.bits,
            ..FeatureSpec::default()
        },
        dense: a.dense,
        ..TrainOptions::default()
    };
    let ex = &data.examples;
    let t0 = std::time::Instant::now();
    let set = Featurised::new(&opts.spec, ex.iter().map(|e| e.text.as_str()));
    let all: Vec<usize> = (0..ex.len()).collect();
    let (model, rep) = train::train_featurised(ex, &set, &all, &a.light, &a.heavy, &opts)?;
    println!(
        "trained on {} rows of {} (light {}, heavy {}): C={} smoothing={} bits={} dense={}",
        ex.len(),
        data_path.display(),
        a.light,
        a.heavy,
        a.c,
        a.smoothing,
        a.bits,
        a.dense
    );
    println!(
        "solver: {} Newton steps, {} CG steps, objective {:.6} -> {:.6}, |grad| {:.3e} ({:.1e} of initial), {}; {:.1}s",
        rep.newton_iterations,
        rep.cg_iterations,
        rep.objective[0],
        rep.objective[rep.objective.len() - 1],
        rep.grad_norm,
        rep.grad_norm / rep.grad_norm0,
        if rep.converged {
            "converged"
        } else {
            "NOT converged"
        },
        t0.elapsed().as_secs_f64()
    );
    let mut router = Router::new(model);
    let mut meta: serde_json::Map<String, Value> =
        serde_json::from_str(&router.model().meta).unwrap_or_default();

    let (ltr, htr) = outcomes(ex);
    let train_scores: Vec<f64> = ex.iter().map(|e| router.score(&e.text)).collect();
    let tr = Evaluation::new(&train_scores, &ltr, &htr)?;
    println!("train (in-sample): {}", metrics_line(&tr));

    if a.cv > 1 {
        let folds = train::fold_assignment(ex.len(), a.cv, a.seed);
        let mut oof = vec![0.0; ex.len()];
        for k in 0..a.cv {
            let rows: Vec<usize> = (0..ex.len()).filter(|&i| folds[i] != k).collect();
            let (m, _) = train::train_featurised(ex, &set, &rows, &a.light, &a.heavy, &opts)?;
            let r = Router::new(m);
            for i in (0..ex.len()).filter(|&i| folds[i] == k) {
                oof[i] = r.score(&ex[i].text);
            }
        }
        let cv = Evaluation::new(&oof, &ltr, &htr)?;
        println!("{}-fold CV (seed {}): {}", a.cv, a.seed, metrics_line(&cv));
        meta.insert("cv".into(), eval_json(&cv));
    }

    let (cal_name, cal) = match &a.dev {
        Some(p) => (
            format!("dev {}", p.display()),
            read_labelled(p, &a.light, &a.heavy)?.examples,
        ),
        None => {
            eprintln!("no --dev: calibrating on the training data (in-sample, optimistic)");
            ("train (in-sample)".to_string(), ex.clone())
        }
    };
    let (lc, hc) = outcomes(&cal);
    let texts: Vec<&str> = cal.iter().map(|e| e.text.as_str()).collect();
    let scores = router.calibrate(&texts, &lc, &hc, a.quality_target)?;
    let ev = Evaluation::new(&scores, &lc, &hc)?;
    let at = metrics::at_threshold(&scores, &lc, &hc, router.calibration().threshold)?;
    println!("{cal_name} ({} rows): {}", cal.len(), metrics_line(&ev));
    println!(
        "threshold: heavy iff score >= {:.6}: heavy share {} keeps {:.4} of heavy quality on {cal_name} (target {})",
        at.threshold,
        pct(at.heavy_share),
        at.quality,
        a.quality_target
    );
    meta.insert("calibrated_on".into(), Value::from(cal_name));
    meta.insert("calibration_eval".into(), eval_json(&ev));
    router.set_meta(Value::Object(meta).to_string());

    let bytes = router.to_bytes();
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    std::fs::write(&a.out, &bytes).with_context(|| format!("{}", a.out.display()))?;
    let nonzero = router.model().weights.iter().filter(|&&w| w != 0).count();
    println!(
        "wrote {} ({} bytes; {} of {} bucket weights non-zero)",
        a.out.display(),
        bytes.len(),
        nonzero,
        router.model().weights.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `router train --from-ledger`: fit on the gateway's own routed traffic (plus `--data`
/// rows if given), calibrate on `--dev` (else in-sample on what was trained on).
fn ledger_train_cmd(a: TrainArgs) -> Result<ExitCode> {
    let opts = TrainOptions {
        c: a.c,
        smoothing: a.smoothing,
        spec: FeatureSpec {
            bits: a.bits,
            ..FeatureSpec::default()
        },
        dense: a.dense,
        ..TrainOptions::default()
    };
    let (mut ex, mut set, tokens, n) = ledger_examples(&a, &opts.spec)?;
    let from_ledger = ex.len();
    println!(
        "ledger {}: {} routing sample(s){}; {} labelled (light call escalated, or in a task with a success/failure outcome), {} unlabelled (served heavy, or no outcome: the light tier's result is unknown), {} served by other deployments, {} of another feature spec, {} unreadable",
        a.from_ledger
            .as_deref()
            .map(Path::display)
            .map(|d| d.to_string())
            .unwrap_or_default(),
        n.samples,
        a.route
            .as_deref()
            .map(|r| format!(" of route {r}"))
            .unwrap_or_default(),
        n.labelled,
        n.unlabelled,
        n.other_deployment,
        n.other_spec,
        n.bad
    );
    if let Some(p) = &a.data {
        let data = read_labelled(p, &a.light, &a.heavy)?;
        let extra = Featurised::new(&opts.spec, data.examples.iter().map(|e| e.text.as_str()));
        set.buckets.extend(extra.buckets);
        set.dense.extend(extra.dense);
        println!(
            "plus {} labelled row(s) of {}",
            data.examples.len(),
            p.display()
        );
        ex.extend(data.examples);
    }
    if ex.is_empty() {
        bail!(
            "nothing to train on: no labelled sample (record samples with `[routing] record_samples = true`, and record task outcomes)"
        );
    }
    let all: Vec<usize> = (0..ex.len()).collect();
    let (model, rep) = train::train_featurised(&ex, &set, &all, &a.light, &a.heavy, &opts)?;
    println!(
        "trained on {} rows ({from_ledger} from the ledger): {} Newton steps, {}",
        ex.len(),
        rep.newton_iterations,
        if rep.converged {
            "converged"
        } else {
            "NOT converged"
        }
    );
    let mut router = Router::new(model);
    let (cal_name, scores, lc, hc) = match &a.dev {
        Some(p) => {
            let cal = read_labelled(p, &a.light, &a.heavy)?.examples;
            let (lc, hc) = outcomes(&cal);
            let scores: Vec<f64> = cal.iter().map(|e| router.score(&e.text)).collect();
            (format!("dev {}", p.display()), scores, lc, hc)
        }
        None => {
            eprintln!("no --dev: calibrating on the training rows (in-sample, optimistic)");
            let (lc, hc) = outcomes(&ex);
            let model = router.model().clone();
            // Ledger rows are scored from their features, `--data` rows from their text.
            let scores: Vec<f64> = (0..ex.len())
                .map(|i| match tokens.get(i) {
                    Some(&t) => {
                        let s = tollgate_domain::routing::sample::Sample {
                            bits: opts.spec.bits,
                            head_bytes: opts.spec.head_bytes,
                            tail_bytes: opts.spec.tail_bytes,
                            tokens: t,
                            buckets: set.buckets[i].clone(),
                            dense: set.dense[i].to_vec(),
                        };
                        model.score_sample(&s).unwrap_or(0.0)
                    }
                    None => router.score(&ex[i].text),
                })
                .collect();
            ("train (in-sample)".to_string(), scores, lc, hc)
        }
    };
    let scores = router.calibrate_scores(scores, &lc, &hc, a.quality_target)?;
    let ev = Evaluation::new(&scores, &lc, &hc)?;
    println!("{cal_name} ({} rows): {}", scores.len(), metrics_line(&ev));
    let mut meta: serde_json::Map<String, Value> =
        serde_json::from_str(&router.model().meta).unwrap_or_default();
    meta.insert("trained_from_ledger_rows".into(), Value::from(from_ledger));
    meta.insert(
        "labels".into(),
        Value::from("ledger: light call escalated → (0, 1); light call in a successful task → (1, 1); in a failed task → (0, 1); heavy calls and tasks without an outcome unlabelled (bandit feedback)"),
    );
    meta.insert("calibrated_on".into(), Value::from(cal_name));
    router.set_meta(Value::Object(meta).to_string());
    let bytes = router.to_bytes();
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    std::fs::write(&a.out, &bytes).with_context(|| format!("{}", a.out.display()))?;
    println!(
        "wrote {} ({} bytes); threshold {:.6} for {} of heavy quality",
        a.out.display(),
        bytes.len(),
        router.calibration().threshold,
        a.quality_target
    );
    Ok(ExitCode::SUCCESS)
}

fn eval_json(e: &Evaluation) -> Value {
    serde_json::json!({
        "rows": e.rows,
        "apgr": e.apgr,
        "apgr_routellm": e.apgr_routellm,
        "cpt50": e.cpt50,
        "cpt80": e.cpt80,
        "q_light": e.q_light,
        "q_heavy": e.q_heavy,
    })
}

// ------------------------------------------------------------------------------ score

fn score_cmd(a: ScoreArgs) -> Result<ExitCode> {
    let router = load_router(a.model.as_deref())?;
    let mut out = String::new();
    let mut errors = Vec::new();
    for (n, line) in lines(&a.input)? {
        let text = serde_json::from_str::<Value>(&line)
            .map_err(anyhow::Error::from)
            .and_then(|v| row_text(&v));
        match text {
            Ok(t) if errors.is_empty() => {
                let s = router.score(&t);
                out.push_str(&format!("{{\"score\": {s}}}\n"));
            }
            Ok(_) => {}
            Err(e) => errors.push(format!("{}:{n}: {e:#}", a.input.display())),
        }
    }
    if !errors.is_empty() {
        for e in errors.iter().take(20) {
            eprintln!("tollgate router score: {e}");
        }
        eprintln!(
            "tollgate router score: {} bad line(s); nothing written",
            errors.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

// ------------------------------------------------------------------------------ eval

fn eval_cmd(a: EvalArgs) -> Result<ExitCode> {
    let data = read_labelled(&a.data, &a.light, &a.heavy)?;
    let ex = &data.examples;
    let (l, h) = outcomes(ex);
    let (scorer, scores, model_threshold) = match a.baseline.as_deref() {
        Some("length") => (
            "baseline: length (longer prompt => heavy)".to_string(),
            ex.iter().map(|e| e.text.len() as f64).collect::<Vec<_>>(),
            None,
        ),
        Some(b) => bail!("--baseline {b:?}: expected \"length\""),
        None => {
            let r = load_router(a.model.as_deref())?;
            let name = match &a.model {
                Some(p) => format!("model {}", p.display()),
                None => "model (embedded default)".to_string(),
            };
            let s = ex.iter().map(|e| r.score(&e.text)).collect();
            let cal = r.calibration().clone();
            (name, s, Some((cal.threshold, cal.quality_target)))
        }
    };
    let ev = Evaluation::new(&scores, &l, &h)?;
    let at_model = match model_threshold {
        Some((t, target)) => Some((metrics::at_threshold(&scores, &l, &h, t)?, target)),
        None => None,
    };
    let saving = |p: &QualityPoint| {
        data.costs
            .as_ref()
            .map(|(cl, ch)| CostSaving::new(&scores, cl, ch, p.threshold))
    };
    if data.costs.is_none() && data.rows_with_costs > 0 {
        eprintln!(
            "only {} of {} rows carry \"costs\" for both models: no dollar figures",
            data.rows_with_costs,
            ex.len()
        );
    }
    if a.json {
        let mut v = eval_json(&ev);
        v["scorer"] = Value::from(scorer);
        v["light"] = Value::from(a.light.clone());
        v["heavy"] = Value::from(a.heavy.clone());
        v["at_95pct_heavy_quality"] = point_json(&ev.at95, saving(&ev.at95));
        if let Some((p, target)) = &at_model {
            v["at_model_threshold"] = point_json(p, saving(p));
            v["at_model_threshold"]["quality_target"] = Value::from(*target);
        }
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("scorer: {scorer}");
    println!("rows: {}", ev.rows);
    println!("light: {} (quality {:.4})", a.light, ev.q_light);
    println!("heavy: {} (quality {:.4})", a.heavy, ev.q_heavy);
    println!("APGR: {:.4}", ev.apgr);
    println!("APGR (RouteLLM trapezoid): {:.4}", ev.apgr_routellm);
    println!("CPT(50%): {}", pct(ev.cpt50));
    println!("CPT(80%): {}", pct(ev.cpt80));
    println!(
        "at 95% of heavy quality (best threshold on this data): {}",
        point_text(&ev.at95, saving(&ev.at95))
    );
    if let Some((p, target)) = &at_model {
        println!(
            "at the model's threshold (calibrated for {:.0}% of heavy quality): {}",
            100.0 * target,
            point_text(p, saving(p))
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn money_of(atto: u128) -> Money {
    Money::from_atto_ceil(atto)
}

fn signed_money(atto: i128) -> String {
    let m = money_of(atto.unsigned_abs());
    let rounded = !atto.unsigned_abs().is_multiple_of(ATTO_PER_NANO);
    format!(
        "{}${m}{}",
        if atto < 0 { "-" } else { "" },
        if rounded { "~" } else { "" }
    )
}

fn point_text(p: &QualityPoint, s: Option<CostSaving>) -> String {
    let dollars = match s {
        Some(s) => format!(
            "saving {} of {} ({})",
            signed_money(s.saved_atto()),
            signed_money(s.all_heavy_atto as i128),
            pct(s.saved_fraction())
        ),
        None => "dollar saving n/a (rows carry no \"costs\")".to_string(),
    };
    format!(
        "threshold {:.6}, heavy share {}, quality {:.4} of heavy, {dollars}",
        p.threshold,
        pct(p.heavy_share),
        p.quality
    )
}

fn point_json(p: &QualityPoint, s: Option<CostSaving>) -> Value {
    let mut v = serde_json::json!({
        "threshold": p.threshold,
        "heavy_share": p.heavy_share,
        "quality_of_heavy": p.quality,
    });
    if let Some(s) = s {
        v["cost_all_heavy_usd"] = Value::from(money_of(s.all_heavy_atto).to_string());
        v["cost_routed_usd"] = Value::from(money_of(s.routed_atto).to_string());
        v["saving_usd"] = Value::from(signed_money(s.saved_atto()).replace(['$', '~'], ""));
        v["saving_fraction"] = Value::from(s.saved_fraction());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_text_reads_prompt_or_chat_messages() {
        let v: Value = serde_json::from_str(r#"{"prompt": "hello there"}"#).unwrap();
        assert_eq!(row_text(&v).unwrap(), "hello there");
        let v: Value = serde_json::from_str(
            r#"{"messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "long answer"},
                {"role": "tool", "content": "{}"},
                {"role": "user", "content": "and now?"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(row_text(&v).unwrap(), "be brief\n\na\nb\n\nand now?");
        for bad in [
            r#"{"x": 1}"#,
            r#"{"prompt": 3}"#,
            r#"{"messages": [{"content": "x"}]}"#,
        ] {
            let v: Value = serde_json::from_str(bad).unwrap();
            assert!(row_text(&v).is_err(), "{bad}");
        }
    }

    #[test]
    fn money_formatting() {
        assert_eq!(signed_money(1_500_000_000_000_000_000), "$1.500000000");
        assert_eq!(signed_money(-1), "-$0.000000001~");
        assert_eq!(
            usd_to_atto(&Value::from(0.0025)),
            Some(2_500_000_000_000_000)
        );
    }
}
