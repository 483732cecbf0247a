use crate::cli::ReportArgs;
use anyhow::{Result, bail};
use std::process::ExitCode;
use tollgate_domain::report::{GroupBy, UsageGroup, UsageReport};
use tollgate_domain::time::{iso, parse_since};
use tollgate_server::clock::now_ms;
use tollgate_server::views::report_json;
use tollgate_store::ReportStore;

pub async fn report(args: ReportArgs) -> Result<ExitCode> {
    if args.view != "usage" {
        return crate::views::report(args).await;
    }
    let Some(by) = GroupBy::parse(&args.by) else {
        bail!(
            "--by {:?}: expected one of {}",
            args.by,
            GroupBy::ALL.map(GroupBy::as_str).join(", ")
        );
    };
    let now = now_ms();
    let since = parse_since(&args.since, now).map_err(anyhow::Error::msg)?;
    let until = match &args.until {
        Some(u) => parse_since(u, now).map_err(anyhow::Error::msg)?,
        None => now + 1,
    };
    let store = crate::open_store(args.db.clone(), args.config.config.clone(), true).await?;
    let rep = store.usage_report(Some(by), since, until).await?;
    match args.format.as_str() {
        "table" => print!("{}", render_table(&rep)),
        "json" => println!("{}", serde_json::to_string_pretty(&report_json(&rep))?),
        "csv" => print!("{}", render_csv(&rep)),
        f => bail!("--format {f:?}: expected table, json or csv"),
    }
    Ok(ExitCode::SUCCESS)
}

const HEADERS: [&str; 10] = [
    "requests",
    "errors",
    "input",
    "cached",
    "cache_write",
    "output",
    "reasoning",
    "cost_usd",
    "unpriced",
    "partial",
];

fn cells(g: &UsageGroup) -> [String; 10] {
    [
        g.requests.to_string(),
        g.errors.to_string(),
        g.input_tokens.to_string(),
        g.cached_tokens.to_string(),
        g.cache_write_tokens.to_string(),
        g.output_tokens.to_string(),
        g.reasoning_tokens.to_string(),
        g.cost.to_string(),
        g.unpriced.to_string(),
        g.partial.to_string(),
    ]
}

/// A fixed-width table: the group column left-aligned, numbers right-aligned, a total.
pub fn render_table(rep: &UsageReport) -> String {
    let by = rep.group_by.map(GroupBy::as_str).unwrap_or("all");
    let mut rows: Vec<(String, [String; 10])> = rep
        .groups
        .iter()
        .map(|g| (g.group.clone().unwrap_or_else(|| "(none)".into()), cells(g)))
        .collect();
    rows.push(("TOTAL".into(), cells(&rep.total)));
    let mut widths = [0usize; 11];
    widths[0] = by
        .len()
        .max(rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0));
    for (i, h) in HEADERS.iter().enumerate() {
        widths[i + 1] = h
            .len()
            .max(rows.iter().map(|r| r.1[i].len()).max().unwrap_or(0));
    }
    let mut out = format!(
        "spend by {by}, {} → {}\n",
        iso(rep.since_ms),
        iso(rep.until_ms)
    );
    let line = |name: &str, vals: &[String]| {
        let mut s = format!("{name:<w$}", w = widths[0]);
        for (i, v) in vals.iter().enumerate() {
            s.push_str(&format!("  {v:>w$}", w = widths[i + 1]));
        }
        s.push('\n');
        s
    };
    out.push_str(&line(by, &HEADERS.map(str::to_string)));
    let total_width: usize = widths.iter().sum::<usize>() + 2 * HEADERS.len();
    for (i, (name, vals)) in rows.iter().enumerate() {
        if i + 1 == rows.len() {
            out.push_str(&"-".repeat(total_width));
            out.push('\n');
        }
        out.push_str(&line(name, vals));
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn render_csv(rep: &UsageReport) -> String {
    let by = rep.group_by.map(GroupBy::as_str).unwrap_or("all");
    let mut out = format!("{by},{}\n", HEADERS.join(","));
    for g in &rep.groups {
        out.push_str(&csv_field(g.group.as_deref().unwrap_or("")));
        for c in cells(g) {
            out.push(',');
            out.push_str(&c);
        }
        out.push('\n');
    }
    out
}
