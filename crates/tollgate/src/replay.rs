//! `tollgate replay --since 30d --policy other.toml [--by agent|model|route|team]
//! [--format table|json|csv] [--chart FILE.svg]`: the recorded workload re-priced under
//! another policy, "now vs policy" per group and in total.
//!
//! Rows are read page by page through the configured store (`[store]`: SQLite or
//! PostgreSQL), so a replica's shared ledger replays as well as a local file; the policy
//! file's format is documented in `tollgate_server::replay`, the engine is
//! `tollgate_domain::replay`. A progress bar goes to stderr when it is a terminal.

use crate::cli::ReplayArgs;
use crate::views::{csv, table_with_totals, usd};
use crate::{config_path, env_map};
use anyhow::{Context, Result, bail};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use tollgate_domain::replay::ReplayGroup;
use tollgate_domain::report::GroupBy;
use tollgate_domain::time::parse_since;
use tollgate_domain::value::Ratio;
use tollgate_server::clock::now_ms;
use tollgate_server::config::RawConfig;
use tollgate_server::config::store::StoreSettings;
use tollgate_server::replay::{ReplayOutput, parse_policy, prepare, run, targets_from_raw};
use tollgate_server::views::replay_json;
use tollgate_store::Store;

pub async fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let now = now_ms();
    let since = parse_since(&args.since, now).map_err(anyhow::Error::msg)?;
    let until = match &args.until {
        Some(u) => parse_since(u, now).map_err(anyhow::Error::msg)?,
        None => now + 1,
    };
    let by = match args.by.as_deref() {
        None => None,
        Some(b) => match GroupBy::parse(b) {
            Some(g @ (GroupBy::Agent | GroupBy::Model | GroupBy::Route | GroupBy::Team)) => Some(g),
            _ => bail!("--by {b:?}: expected agent, model, route or team"),
        },
    };
    if !matches!(args.format.as_str(), "table" | "json" | "csv") {
        bail!("--format {:?}: expected table, json or csv", args.format);
    }
    let env = env_map();
    let raw = RawConfig::load(config_path(args.config.config.clone()).as_deref(), &env)?;
    let prices = raw.price_table()?;
    let policy_text = std::fs::read_to_string(&args.policy)
        .with_context(|| format!("reading {}", args.policy.display()))?;
    let (targets, routes) = targets_from_raw(&raw, &prices);
    let prepared = parse_policy(&policy_text)
        .and_then(|p| prepare(&p, &targets, &routes, &prices))
        .map_err(|errs| {
            anyhow::anyhow!(
                "{}: invalid policy:\n  - {}",
                args.policy.display(),
                errs.join("\n  - ")
            )
        })?;

    let ledger_path = PathBuf::from(raw.ledger.path.as_deref().unwrap_or("tollgate.db"));
    let settings = match &args.db {
        Some(db) => StoreSettings::Sqlite { path: db.clone() },
        None => {
            let mut errs = Vec::new();
            let s = raw.store.validate(&ledger_path, &env, &mut errs);
            if !errs.is_empty() {
                bail!("invalid [store]:\n  - {}", errs.join("\n  - "));
            }
            s
        }
    };
    if let StoreSettings::Sqlite { path } = &settings
        && !path.exists()
    {
        bail!("no ledger at {} (use --db or --config)", path.display());
    }
    let store = Store::open(&settings).await?;

    let mut bar = Progress::new(since, until, std::io::stderr().is_terminal());
    let out = run(&store, prepared, by, since, until, |rows, ts| {
        bar.update(rows, ts)
    })
    .await?;
    bar.done();

    let text = match args.format.as_str() {
        "table" => replay_table(&out),
        "json" => serde_json::to_string_pretty(&replay_json(&out))? + "\n",
        _ => replay_csv(&out),
    };
    print!("{text}");
    if let Some(path) = &args.chart {
        std::fs::write(path, replay_svg(&out))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote the chart to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// A one-line progress bar on stderr, by time covered (rows come oldest first), drawn
/// at most ten times a second and only on a terminal.
struct Progress {
    since: i64,
    until: i64,
    on: bool,
    started: Instant,
    last_draw: Option<Instant>,
}

impl Progress {
    fn new(since: i64, until: i64, on: bool) -> Progress {
        Progress {
            since,
            until,
            on,
            started: Instant::now(),
            last_draw: None,
        }
    }

    fn update(&mut self, rows: u64, ts: i64) {
        if !self.on
            || self
                .last_draw
                .is_some_and(|t| t.elapsed().as_millis() < 100)
        {
            return;
        }
        // Short runs draw nothing.
        if self.started.elapsed().as_millis() < 300 {
            return;
        }
        self.last_draw = Some(Instant::now());
        let span = (self.until - self.since).max(1) as f64;
        let done = ((ts - self.since) as f64 / span).clamp(0.0, 1.0);
        let filled = (done * 30.0).round() as usize;
        eprint!(
            "\r[{}{}] {:>3.0}%  {rows} rows",
            "#".repeat(filled),
            ".".repeat(30 - filled),
            done * 100.0
        );
    }

    fn done(&self) {
        if self.on && self.last_draw.is_some() {
            eprint!("\r{}\r", " ".repeat(60));
        }
    }
}

fn pct(num: i64, den: i64) -> String {
    Ratio::new(i128::from(num), i128::from(den)).map_or_else(|| "n/a".into(), |r| r.percent(1))
}

fn risk(g: &ReplayGroup) -> String {
    if g.tasks_succeeded == 0 {
        return "n/a".into();
    }
    format!(
        "{} ({}/{})",
        pct(g.tasks_at_risk as i64, g.tasks_succeeded as i64),
        g.tasks_at_risk,
        g.tasks_succeeded
    )
}

fn cells(g: &ReplayGroup) -> Vec<String> {
    vec![
        g.key.clone(),
        g.requests.to_string(),
        usd(g.cost_now),
        usd(g.cost_policy),
        usd(g.saved),
        pct(g.saved.nanos(), g.cost_now.nanos()),
        format!("{}/{}", g.lighter, g.heavier),
        g.swapped.to_string(),
        format!("{}/{}", g.cache_reads, g.cache_writes),
        g.hits_lost.to_string(),
        risk(g),
    ]
}

const HEADERS: [&str; 11] = [
    "group",
    "requests",
    "now USD",
    "policy USD",
    "saved USD",
    "saved",
    "lighter/heavier",
    "swapped",
    "cache r/w",
    "hits lost",
    "quality risk",
];

pub fn replay_table(r: &ReplayOutput) -> String {
    let mut rows: Vec<Vec<String>> = r.report.groups.iter().map(cells).collect();
    rows.push(cells(&r.report.total));
    let title = format!(
        "What-if replay: now vs policy, {} rows ({} to {}){}",
        r.rows,
        tollgate_domain::time::iso(r.since_ms),
        tollgate_domain::time::iso(r.until_ms),
        r.report
            .group_by
            .map(|b| format!(", by {b}"))
            .unwrap_or_default()
    );
    let mut out = table_with_totals(&title, &HEADERS, &rows, 1, 1);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    for n in &r.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

pub fn replay_csv(r: &ReplayOutput) -> String {
    let headers = [
        "group",
        "requests",
        "cost_now_usd",
        "cost_policy_usd",
        "saved_usd",
        "cost_now_nanos",
        "cost_policy_nanos",
        "saved_nanos",
        "calls_lighter",
        "calls_heavier",
        "calls_swapped",
        "prompt_cache_reads",
        "prompt_cache_writes",
        "response_hits_lost",
        "unpriced",
        "tasks_succeeded",
        "tasks_at_risk",
    ];
    let row = |g: &ReplayGroup| {
        vec![
            g.key.clone(),
            g.requests.to_string(),
            g.cost_now.to_string(),
            g.cost_policy.to_string(),
            g.saved.to_string(),
            g.cost_now.nanos().to_string(),
            g.cost_policy.nanos().to_string(),
            g.saved.nanos().to_string(),
            g.lighter.to_string(),
            g.heavier.to_string(),
            g.swapped.to_string(),
            g.cache_reads.to_string(),
            g.cache_writes.to_string(),
            g.hits_lost.to_string(),
            g.unpriced.to_string(),
            g.tasks_succeeded.to_string(),
            g.tasks_at_risk.to_string(),
        ]
    };
    let mut rows: Vec<Vec<String>> = r.report.groups.iter().map(row).collect();
    rows.push(row(&r.report.total));
    csv(&headers, &rows)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A hand-written SVG bar chart: per group (and the total), the cost now and under the
/// policy as two horizontal bars on one scale, with the saving in the label.
pub fn replay_svg(r: &ReplayOutput) -> String {
    let mut groups: Vec<&ReplayGroup> = r.report.groups.iter().collect();
    groups.push(&r.report.total);
    let max = groups
        .iter()
        .map(|g| g.cost_now.nanos().max(g.cost_policy.nanos()))
        .max()
        .unwrap_or(0)
        .max(1);
    let (label_w, bar_w, row_h, top) = (170.0, 420.0, 46.0, 56.0);
    let width = label_w + bar_w + 190.0;
    let height = top + row_h * groups.len() as f64 + 30.0;
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="12" y="22" font-size="15" font-weight="bold">What-if replay: cost now vs policy (USD)</text>
<rect x="12" y="32" width="12" height="10" fill="#9aa5b1"/><text x="28" y="41">now</text>
<rect x="70" y="32" width="12" height="10" fill="#2b7bb9"/><text x="86" y="41">policy</text>
"##
    );
    for (i, g) in groups.iter().enumerate() {
        let y = top + row_h * i as f64;
        let w = |m: i64| (m.max(0) as f64 / max as f64) * bar_w;
        let (wn, wp) = (w(g.cost_now.nanos()), w(g.cost_policy.nanos()));
        let weight = if i + 1 == groups.len() {
            " font-weight=\"bold\""
        } else {
            ""
        };
        s.push_str(&format!(
            r##"<text x="12" y="{ty}"{weight}>{label}</text>
<rect x="{label_w}" y="{y}" width="{wn:.1}" height="16" fill="#9aa5b1"/>
<text x="{tn:.1}" y="{t1}">{now}</text>
<rect x="{label_w}" y="{y2}" width="{wp:.1}" height="16" fill="#2b7bb9"/>
<text x="{tp:.1}" y="{t2}">{pol} (saved {saved}, {sp})</text>
"##,
            ty = y + 21.0,
            label = xml_escape(&g.key),
            y2 = y + 18.0,
            tn = label_w + wn + 6.0,
            tp = label_w + wp + 6.0,
            t1 = y + 12.5,
            t2 = y + 30.5,
            now = usd(g.cost_now),
            pol = usd(g.cost_policy),
            saved = usd(g.saved),
            sp = pct(g.saved.nanos(), g.cost_now.nanos()),
        ));
    }
    s.push_str("</svg>\n");
    s
}
