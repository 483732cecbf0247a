//! `tollgate report --view roi|tasks|savings`: value per dollar as readable tables,
//! JSON (the admin API's shapes) or CSV (exact figures, for scripts).
//!
//! Tables round money to the micro-dollar for reading; JSON and CSV carry exact
//! nano-USD decimals. A figure with no meaning prints as `n/a` (JSON `null`, CSV empty).

use crate::cli::ReportArgs;
use anyhow::{Result, bail};
use std::process::ExitCode;
use tollgate_domain::money::Money;
use tollgate_domain::report::GroupBy;
use tollgate_domain::time::{iso, parse_since};
use tollgate_domain::value::{Ratio, RoiReport, SavingsReport, TaskStats, TaskSummary};
use tollgate_server::clock::now_ms;
use tollgate_server::views::{roi_json, savings_json, tasks_json};
use tollgate_store::ReportStore;

pub async fn report(args: ReportArgs) -> Result<ExitCode> {
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
    let format = args.format.as_str();
    if !matches!(format, "table" | "json" | "csv") {
        bail!("--format {format:?}: expected table, json or csv");
    }
    let out = match args.view.as_str() {
        "roi" => {
            let r = store.roi_report(by, since, until).await?;
            match format {
                "table" => roi_table(&r),
                "json" => serde_json::to_string_pretty(&roi_json(&r))? + "\n",
                _ => roi_csv(&r),
            }
        }
        "tasks" => {
            let t = store.task_summaries(since, until, args.limit).await?;
            match format {
                "table" => tasks_table(&t, since, until),
                "json" => serde_json::to_string_pretty(&tasks_json(&t, since, until))? + "\n",
                _ => tasks_csv(&t),
            }
        }
        "savings" => {
            let r = store.savings_report(Some(by), since, until).await?;
            match format {
                "table" => savings_table(&r),
                "json" => serde_json::to_string_pretty(&savings_json(&r))? + "\n",
                _ => savings_csv(&r),
            }
        }
        v => bail!("--view {v:?}: expected usage, roi, tasks or savings"),
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// USD rounded half away from zero to the micro-dollar, for tables.
pub fn usd(m: Money) -> String {
    Ratio::new(i128::from(m.nanos()), 1_000_000_000)
        .map(|r| r.decimal(6))
        .unwrap_or_default()
}

fn usd_opt(m: Option<Money>) -> String {
    m.map_or_else(|| "n/a".into(), usd)
}

fn pct_opt(r: Option<Ratio>) -> String {
    r.map_or_else(|| "n/a".into(), |r| r.percent(1))
}

fn dec_opt(r: Option<Ratio>, places: u32) -> String {
    r.map_or_else(|| "n/a".into(), |r| r.decimal(places))
}

/// A fixed-width table: the first `left` columns (names) left-aligned, the others
/// (figures) right-aligned; the last row (when `total`) under a rule.
pub fn table(
    title: &str,
    headers: &[&str],
    rows: &[Vec<String>],
    left: usize,
    total: bool,
) -> String {
    table_with_totals(title, headers, rows, left, usize::from(total))
}

/// [`table`] whose last `totals` rows are totals (one rule above them).
pub fn table_with_totals(
    title: &str,
    headers: &[&str],
    rows: &[Vec<String>],
    left: usize,
    totals: usize,
) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            let pad = w.saturating_sub(c.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if i < left {
                s.push_str(c);
                if i + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad));
                }
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        s.push('\n');
        s
    };
    let mut out = format!("{title}\n");
    out.push_str(&line(
        &headers.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    ));
    for (i, r) in rows.iter().enumerate() {
        if totals > 0 && i + totals == rows.len() {
            let w: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            out.push_str(&"-".repeat(w));
            out.push('\n');
        }
        out.push_str(&line(r));
    }
    out
}

pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub(crate) fn csv(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = headers.join(",");
    out.push('\n');
    for r in rows {
        out.push_str(&r.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

const ROI_HEADERS: [&str; 13] = [
    "tasks",
    "success",
    "fail",
    "aband",
    "open",
    "success_rate",
    "cost_usd",
    "value_usd",
    "cost/task",
    "cost/success",
    "roi",
    "success/$",
    "value/$",
];

fn roi_cells(name: &str, s: &TaskStats) -> Vec<String> {
    vec![
        name.to_string(),
        s.tasks.to_string(),
        s.succeeded.to_string(),
        s.failed.to_string(),
        s.abandoned.to_string(),
        s.open.to_string(),
        pct_opt(s.success_rate()),
        usd(s.cost),
        usd(s.value),
        usd_opt(s.cost_per_task()),
        usd_opt(s.cost_per_successful_task()),
        pct_opt(s.roi()),
        dec_opt(s.successes_per_dollar(), 2),
        dec_opt(s.value_per_dollar(), 2),
    ]
}

pub fn roi_table(r: &RoiReport) -> String {
    let by = r.group_by.map(GroupBy::as_str).unwrap_or("all");
    let mut headers = vec![by];
    headers.extend(ROI_HEADERS);
    let mut rows: Vec<Vec<String>> = r
        .groups
        .iter()
        .map(|(g, s)| roi_cells(g.as_deref().unwrap_or("(none)"), s))
        .collect();
    rows.push(roi_cells("TOTAL", &r.total));
    let mut out = table(
        &format!(
            "value per dollar by {by}, {} → {}",
            iso(r.since_ms),
            iso(r.until_ms)
        ),
        &headers,
        &rows,
        1,
        true,
    );
    out.push_str(
        "roi = (value − cost) / cost; cost/success = all task cost / successful tasks; success/$ and value/$ = reasoning per dollar; n/a = undefined\n",
    );
    if r.untasked_calls > 0 {
        out.push_str(&format!(
            "not in any task: {} calls, {} USD (send x-tollgate-task to count them)\n",
            r.untasked_calls,
            usd(r.untasked_cost)
        ));
    }
    out
}

fn roi_csv(r: &RoiReport) -> String {
    let by = r.group_by.map(GroupBy::as_str).unwrap_or("all");
    let headers = [
        by,
        "tasks",
        "succeeded",
        "failed",
        "abandoned",
        "open",
        "calls",
        "success_rate",
        "cost_usd",
        "value_usd",
        "cost_per_task_usd",
        "cost_per_successful_task_usd",
        "roi",
        "successful_tasks_per_usd",
        "value_per_usd",
    ];
    let opt_m = |m: Option<Money>| m.map(|m| m.to_string()).unwrap_or_default();
    let opt_r = |r: Option<Ratio>| r.map(|r| r.decimal(6)).unwrap_or_default();
    let rows: Vec<Vec<String>> = r
        .groups
        .iter()
        .map(|(g, s)| {
            vec![
                g.clone().unwrap_or_default(),
                s.tasks.to_string(),
                s.succeeded.to_string(),
                s.failed.to_string(),
                s.abandoned.to_string(),
                s.open.to_string(),
                s.calls.to_string(),
                opt_r(s.success_rate()),
                s.cost.to_string(),
                s.value.to_string(),
                opt_m(s.cost_per_task()),
                opt_m(s.cost_per_successful_task()),
                opt_r(s.roi()),
                opt_r(s.successes_per_dollar()),
                opt_r(s.value_per_dollar()),
            ]
        })
        .collect();
    csv(&headers, &rows)
}

fn duration(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}.{}s", ms / 1000, (ms % 1000) / 100)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

const TASK_HEADERS: [&str; 13] = [
    "task",
    "agent",
    "models",
    "outcome",
    "calls",
    "input",
    "cached",
    "cache_write",
    "output",
    "reasoning",
    "cost_usd",
    "duration",
    "value_usd",
];

pub fn tasks_table(tasks: &[TaskSummary], since: i64, until: i64) -> String {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.task.clone(),
                t.agents.join(","),
                t.models.join(","),
                t.status.map_or("(open)", |s| s.as_str()).to_string(),
                t.calls.to_string(),
                t.input_tokens.to_string(),
                t.cached_tokens.to_string(),
                t.cache_write_tokens.to_string(),
                t.output_tokens.to_string(),
                t.reasoning_tokens.to_string(),
                usd(t.cost),
                duration(t.duration_ms),
                usd_opt(t.value),
            ]
        })
        .collect();
    table(
        &format!(
            "tasks by cost, {} → {} ({} shown)",
            iso(since),
            iso(until),
            tasks.len()
        ),
        &TASK_HEADERS,
        &rows,
        4,
        false,
    )
}

fn tasks_csv(tasks: &[TaskSummary]) -> String {
    let mut headers = TASK_HEADERS.to_vec();
    headers[11] = "duration_ms";
    headers.push("errors");
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.task.clone(),
                t.agents.join(";"),
                t.models.join(";"),
                t.status.map(|s| s.as_str().to_string()).unwrap_or_default(),
                t.calls.to_string(),
                t.input_tokens.to_string(),
                t.cached_tokens.to_string(),
                t.cache_write_tokens.to_string(),
                t.output_tokens.to_string(),
                t.reasoning_tokens.to_string(),
                t.cost.to_string(),
                t.duration_ms.to_string(),
                t.value.map(|v| v.to_string()).unwrap_or_default(),
                t.errors.to_string(),
            ]
        })
        .collect();
    csv(&headers, &rows)
}

pub fn savings_table(r: &SavingsReport) -> String {
    let by = r.group_by.map(GroupBy::as_str).unwrap_or("all");
    let headers = [
        by,
        "mechanism",
        "calls",
        "without_usd",
        "with_usd",
        "saved_usd",
        "saved",
        "misses",
    ];
    let cells = |g: &str, s: &tollgate_domain::value::Savings| {
        vec![
            g.to_string(),
            s.mechanism.as_str().to_string(),
            s.requests.to_string(),
            usd(s.baseline),
            usd(s.actual),
            usd(s.saved()),
            pct_opt(s.saved_share()),
            if s.mechanism == tollgate_domain::value::Mechanism::PromptCacheInjected {
                s.misses.to_string()
            } else {
                "-".to_string()
            },
        ]
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (g, lines) in &r.groups {
        // A group the mechanism never touched has nothing to say.
        for s in lines.iter().filter(|s| s.requests > 0) {
            rows.push(cells(g.as_deref().unwrap_or("(none)"), s));
        }
    }
    for s in &r.total {
        rows.push(cells("TOTAL", s));
    }
    let mut out = table_with_totals(
        &format!(
            "savings by mechanism and {by}, {} → {} ({} calls, {} USD charged in all)",
            iso(r.since_ms),
            iso(r.until_ms),
            r.requests,
            usd(r.cost)
        ),
        &headers,
        &rows,
        2,
        r.total.len(),
    );
    for s in &r.total {
        out.push_str(&format!(
            "{}: {}\n",
            s.mechanism.as_str(),
            s.mechanism.describe()
        ));
    }
    out.push_str(
        "routing_shadow is what routing would have saved (shadow mode forwards the route's default); it is not in any total of money saved.\nmisses: injected prompt-cache breakpoints the provider did not act on as expected (no write or no read reported).\n",
    );
    out
}

fn savings_csv(r: &SavingsReport) -> String {
    let by = r.group_by.map(GroupBy::as_str).unwrap_or("all");
    let headers = [
        by,
        "mechanism",
        "requests",
        "without_usd",
        "actual_usd",
        "saved_usd",
        "misses",
    ];
    let mut rows = Vec::new();
    for (g, lines) in &r.groups {
        for s in lines {
            rows.push(vec![
                g.clone().unwrap_or_default(),
                s.mechanism.as_str().to_string(),
                s.requests.to_string(),
                s.baseline.to_string(),
                s.actual.to_string(),
                s.saved().to_string(),
                s.misses.to_string(),
            ]);
        }
    }
    csv(&headers, &rows)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tollgate_domain::attribution::Attribution;
    use tollgate_domain::ledger::{Endpoint, LedgerRow, Route};
    use tollgate_domain::outcome::{OutcomeStatus, TaskOutcome, ValueBasis};
    use tollgate_domain::usage::{Usage, UsageSource};
    use tollgate_store::SqliteStore;

    /// 2024-01-02T03:00:00Z
    pub const T0: i64 = 1_704_164_400_000;

    fn row(
        i: i64,
        agent: &str,
        task: Option<&str>,
        model: &str,
        usage: Usage,
        cost: i64,
        without: i64,
    ) -> LedgerRow {
        LedgerRow {
            ts_ms: T0 + i * 60_000,
            request_id: format!("req-{i}"),
            endpoint: Endpoint::ChatCompletions,
            attribution: Attribution {
                key_id: Some(format!("tgk_{agent}")),
                user: Some("alice".into()),
                team: Some(format!("team-{agent}")),
                agent: Some(agent.into()),
                task: task.map(str::to_string),
                tags: vec!["env:test".into()],
            },
            route: Route {
                requested_model: model.into(),
                deployment: model.into(),
                upstream: "openai".into(),
                upstream_model: model.into(),
            },
            usage,
            usage_source: UsageSource::Reported,
            cost: Money::from_nanos(cost),
            cost_without_cache: Money::from_nanos(without),
            priced: true,
            price_hash: "0123456789abcdef".into(),
            latency_us: 1_500_000,
            ttft_us: None,
            status: 200,
            error_code: None,
            stream: false,
            partial: false,
            routing: None,
            cache: None,
            prune: None,
            usage_suspect: false,
            service_tier: None,
            prefix: None,
        }
    }

    /// A small fixed ledger: two agents, three tasks, one untasked call.
    pub fn fixture() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("fixture.db")).unwrap();
        let u = |input, cache_read, output, reasoning| Usage {
            input,
            cache_read,
            cache_write_5m: 0,
            cache_write_1h: 0,
            output,
            reasoning,
        };
        let rows = [
            // support: ticket-1 (cached prompt), ticket-2.
            row(
                0,
                "support",
                Some("ticket-1"),
                "gpt-4o-mini",
                u(1200, 0, 300, 0),
                360_000,
                360_000,
            ),
            row(
                1,
                "support",
                Some("ticket-1"),
                "gpt-4o-mini",
                u(86, 1920, 280, 0),
                312_900,
                456_900,
            ),
            row(
                2,
                "support",
                Some("ticket-2"),
                "gpt-4o-mini",
                u(900, 0, 200, 0),
                255_000,
                255_000,
            ),
            // research: report-1 spans two models.
            row(
                3,
                "research",
                Some("report-1"),
                "gpt-4o",
                u(2000, 0, 900, 0),
                14_000_000,
                14_000_000,
            ),
            row(
                4,
                "research",
                Some("report-1"),
                "o3-mini",
                u(500, 0, 1200, 800),
                5_830_000,
                5_830_000,
            ),
            // an untasked call.
            row(
                5,
                "research",
                None,
                "gpt-4o",
                u(100, 0, 10, 0),
                350_000,
                350_000,
            ),
        ];
        let mut c = s.connect(tollgate_store::sqlite::Sync::Normal).unwrap();
        tollgate_store::ledger::insert_batch(&mut c, rows.iter()).unwrap();
        let outcome = |task: &str, status, basis| TaskOutcome {
            task: task.into(),
            status,
            basis,
            labels: BTreeMap::new(),
        };
        s.record_outcome(
            &outcome(
                "ticket-1",
                OutcomeStatus::Success,
                ValueBasis::MinutesSaved {
                    minutes: 12,
                    hourly_rate: Money::parse_usd("45").unwrap(),
                },
            ),
            "test",
            T0,
        )
        .unwrap();
        s.record_outcome(
            &outcome("ticket-2", OutcomeStatus::Failure, ValueBasis::None),
            "test",
            T0,
        )
        .unwrap();
        (dir, s)
    }

    pub const UNTIL: i64 = T0 + 3_600_000;

    #[test]
    fn roi_views() {
        let (_d, s) = fixture();
        let by_agent = s.roi_report(GroupBy::Agent, T0, UNTIL).unwrap();
        insta::assert_snapshot!("roi_by_agent_table", roi_table(&by_agent));
        insta::assert_snapshot!("roi_by_agent_csv", roi_csv(&by_agent));
        let by_model = s.roi_report(GroupBy::Model, T0, UNTIL).unwrap();
        insta::assert_snapshot!("roi_by_model_table", roi_table(&by_model));
        insta::assert_json_snapshot!("roi_by_agent_json", roi_json(&by_agent));
        // research succeeded at nothing: cost per successful task is undefined.
        let research = by_agent
            .groups
            .iter()
            .find(|g| g.0.as_deref() == Some("research"))
            .unwrap();
        assert_eq!(research.1.cost_per_successful_task(), None);
        assert!(roi_table(&by_agent).contains("n/a"));
    }

    #[test]
    fn tasks_and_savings_views() {
        let (_d, s) = fixture();
        let t = s.task_summaries(T0, UNTIL, 10).unwrap();
        insta::assert_snapshot!("tasks_table", tasks_table(&t, T0, UNTIL));
        insta::assert_snapshot!("tasks_csv", tasks_csv(&t));
        let sv = s.savings_report(Some(GroupBy::Agent), T0, UNTIL).unwrap();
        insta::assert_snapshot!("savings_table", savings_table(&sv));
        insta::assert_snapshot!("savings_csv", savings_csv(&sv));
    }

    /// Routed rows: a helpdesk agent whose `auto` calls went light (saving against the
    /// heavy tier), one light call escalated (a loss), one heavy call (no saving); a
    /// shadow route on the support agent (would have saved).
    #[test]
    fn savings_view_with_routing() {
        use tollgate_domain::ledger::{RouteMode, RouteRecord};
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("routed.db")).unwrap();
        let u = |input, output| Usage {
            input,
            output,
            ..Usage::default()
        };
        let routed = |mut r: LedgerRow, tier: u32, mode, heavy: i64, chosen: i64, esc: bool| {
            r.routing = Some(RouteRecord {
                name: "auto".into(),
                tier,
                tier_deployment: if tier == 0 { "gpt-4o-mini" } else { "gpt-4o" }.into(),
                score_ppm: 400_000 + 300_000 * tier,
                mode,
                heavy_cost: Money::from_nanos(heavy),
                tier_cost: Money::from_nanos(chosen),
                escalated: esc.then(|| "empty".to_string()),
                sample: None,
            });
            r
        };
        // gpt-4o-mini at $0.15/$0.60, gpt-4o at $2.50/$10 per million tokens.
        let rows = [
            routed(
                row(
                    0,
                    "helpdesk",
                    None,
                    "gpt-4o-mini",
                    u(1000, 200),
                    270_000,
                    270_000,
                ),
                0,
                RouteMode::Enforce,
                4_500_000,
                270_000,
                false,
            ),
            routed(
                row(
                    1,
                    "helpdesk",
                    None,
                    "gpt-4o-mini",
                    u(500, 100),
                    135_000,
                    135_000,
                ),
                0,
                RouteMode::Enforce,
                2_250_000,
                135_000,
                false,
            ),
            routed(
                row(
                    2,
                    "helpdesk",
                    None,
                    "gpt-4o-mini",
                    u(400, 0),
                    60_000,
                    60_000,
                ),
                0,
                RouteMode::Enforce,
                1_000_000,
                60_000,
                true,
            ),
            routed(
                row(
                    3,
                    "helpdesk",
                    None,
                    "gpt-4o",
                    u(400, 150),
                    2_500_000,
                    2_500_000,
                ),
                1,
                RouteMode::Enforce,
                2_500_000,
                2_500_000,
                false,
            ),
            routed(
                row(
                    4,
                    "support",
                    None,
                    "gpt-4o",
                    u(800, 100),
                    3_000_000,
                    3_000_000,
                ),
                0,
                RouteMode::Shadow,
                3_000_000,
                180_000,
                false,
            ),
        ];
        let mut c = s.connect(tollgate_store::sqlite::Sync::Normal).unwrap();
        tollgate_store::ledger::insert_batch(&mut c, rows.iter()).unwrap();
        let sv = s.savings_report(Some(GroupBy::Agent), T0, UNTIL).unwrap();
        let routing = sv
            .total
            .iter()
            .find(|s| s.mechanism == tollgate_domain::value::Mechanism::Routing)
            .copied()
            .unwrap();
        // (4.5 − 0.27) + (2.25 − 0.135) + (0 − 0.06) + 0 = 6.285 mUSD.
        assert_eq!(routing.saved(), Money::from_nanos(6_285_000));
        insta::assert_snapshot!("savings_table_routed", savings_table(&sv));
    }
}
