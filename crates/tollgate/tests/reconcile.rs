//! `tollgate reconcile` end to end: a ledger written through the ledger writer (rows
//! priced with the embedded catalog), provider exports in each documented format with
//! planted drifts (`tests/fixtures/reconcile/README.md`), the binary's exit codes, JSON,
//! table and CSV.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tollgate_domain::attribution::Attribution;
use tollgate_domain::cost::cost;
use tollgate_domain::ledger::{Endpoint, LedgerRow, Route};
use tollgate_domain::pricing::{DEFAULT_CATALOG_JSON, PriceTable};
use tollgate_domain::usage::{Usage, UsageSource};
use tollgate_store::{Durability, LedgerConfig, SqliteStore};

/// 2025-11-03T00:00:00Z and the next day.
const D1: i64 = 1_762_128_000_000;
const D2: i64 = D1 + 86_400_000;

fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reconcile")
        .join(rel)
        .display()
        .to_string()
}

struct Rows {
    table: PriceTable,
    rows: Vec<LedgerRow>,
}

impl Rows {
    fn new() -> Rows {
        Rows {
            table: PriceTable::from_catalog_json(DEFAULT_CATALOG_JSON, "embedded").unwrap(),
            rows: Vec::new(),
        }
    }

    /// `n` requests of `usage` each on `day` (ms), the first `cut` of them cut streams
    /// with estimated tokens.
    fn add(&mut self, day: i64, upstream: &str, model: &str, n: usize, cut: usize, usage: Usage) {
        let table = &self.table;
        let price = table.get(model).unwrap_or_else(|| panic!("{model}"));
        let charged = cost(&usage, price, None).unwrap().charged;
        for i in 0..n {
            let k = self.rows.len();
            self.rows.push(LedgerRow {
                ts_ms: day + 3_600_000 + (k as i64) * 1000,
                request_id: format!("req-{k}"),
                endpoint: Endpoint::ChatCompletions,
                attribution: Attribution {
                    key_id: Some("tgk_support".into()),
                    agent: Some("support".into()),
                    ..Attribution::default()
                },
                route: Route {
                    requested_model: model.into(),
                    deployment: model.into(),
                    upstream: upstream.into(),
                    upstream_model: model.into(),
                },
                usage,
                usage_source: if i < cut {
                    UsageSource::Estimated
                } else {
                    UsageSource::Reported
                },
                cost: charged,
                cost_without_cache: charged,
                priced: true,
                price_hash: table.hash().to_string(),
                latency_us: 1000,
                ttft_us: None,
                status: if i < cut { 499 } else { 200 },
                error_code: (i < cut).then(|| "client_disconnected".to_string()),
                stream: true,
                partial: i < cut,
                routing: None,
                cache: None,
                prune: None,
                usage_suspect: false,
                service_tier: None,
                prefix: None,
            });
        }
    }

    /// Write every row through the ledger writer into a new database.
    fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ledger.db");
        let store = SqliteStore::open(&path).unwrap();
        let (ledger, writer) = store
            .start_ledger(&LedgerConfig {
                durability: Durability::Strict,
                ..LedgerConfig::default()
            })
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for r in &self.rows {
                ledger.record(r.clone()).await.unwrap();
            }
        });
        drop(ledger);
        writer.join();
        path
    }
}

fn u(input: u64, cache_read: u64, w5: u64, w1: u64, output: u64) -> Usage {
    Usage {
        input,
        cache_read,
        cache_write_5m: w5,
        cache_write_1h: w1,
        output,
        reasoning: 0,
    }
}

fn tollgate(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .current_dir(dir)
        .env_remove("TOLLGATE_CONFIG")
        .env("TOLLGATE_LOG", "warn")
        .output()
        .unwrap()
}

fn reconcile_json(dir: &Path, db: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec![
        "reconcile",
        "--db",
        db.to_str().unwrap(),
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = tollgate(dir, &args);
    let code = out.status.code().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    (code, v)
}

/// The cell for `day` × `model` (as the comparable key) × `class`.
fn cell<'a>(v: &'a Value, day: &str, model: &str, class: &str) -> &'a Value {
    v["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["day"] == day && c["model"] == model && c["class"] == class)
        .unwrap_or_else(|| panic!("no cell {day} {model} {class}: {v:#}"))
}

fn kinds(c: &Value) -> Vec<&str> {
    c["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect()
}

fn explanation(c: &Value) -> &str {
    c["explanation"].as_str().unwrap()
}

fn openai_ledger() -> Rows {
    let mut r = Rows::new();
    // D1: gpt-4o-mini 10 × (1M uncached, 4M cached, 500k output), 2 cut; gpt-4o 5 × (400k, 100k).
    r.add(
        D1,
        "openai",
        "gpt-4o-mini",
        10,
        2,
        u(1_000_000, 4_000_000, 0, 0, 500_000),
    );
    r.add(D1, "openai", "gpt-4o", 5, 0, u(400_000, 0, 0, 0, 100_000));
    // D2: the same mini traffic, none cut; gpt-4o 4 × (500k, 100k), 1 cut.
    r.add(
        D2,
        "openai",
        "gpt-4o-mini",
        10,
        0,
        u(1_000_000, 4_000_000, 0, 0, 500_000),
    );
    r.add(D2, "openai", "gpt-4o", 4, 1, u(500_000, 0, 0, 0, 100_000));
    // Another provider's traffic in the same days is not compared.
    r.add(
        D1,
        "anthropic",
        "claude-haiku-4-5",
        3,
        0,
        u(1000, 0, 0, 0, 100),
    );
    r
}

#[test]
fn openai_exports_find_and_explain_each_planted_drift() {
    let dir = tempfile::tempdir().unwrap();
    let db = openai_ledger().write(dir.path());
    let (code, v) = reconcile_json(
        dir.path(),
        &db,
        &[
            "--invoice",
            &fixture("openai/usage.json"),
            "--invoice",
            &fixture("openai/costs.json"),
        ],
    );
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(v["provider"], "openai");
    assert_eq!(v["upstreams"], serde_json::json!(["openai"]));
    assert_eq!(v["status"], "drift");

    // D1 gpt-4o-mini: cut streams, +0.4 % output: within tolerance, said.
    let c = cell(&v, "2025-11-03", "gpt-4o-mini", "output");
    assert_eq!(c["status"], "matched");
    assert_eq!(c["within_tolerance"], true);
    assert_eq!(c["token_delta"], "20000");
    assert!(explanation(c).contains("2 cut stream"), "{c:#}");
    for class in ["input", "cache_read"] {
        let c = cell(&v, "2025-11-03", "gpt-4o-mini", class);
        assert_eq!(c["status"], "matched");
        assert_eq!(c["within_tolerance"], false);
    }

    // D1 gpt-4o: output billed at $12/Mtok, the catalog says $10: price drift.
    let c = cell(&v, "2025-11-03", "gpt-4o", "output");
    assert_eq!(c["status"], "drift");
    assert_eq!(kinds(c), ["price"]);
    assert_eq!(c["price"]["provider_usd_per_mtok"], "12.0000");
    assert_eq!(c["price"]["gateway_usd_per_mtok"], "10.0000");
    assert_eq!(
        c["price"]["catalog_usd_per_mtok"],
        serde_json::json!(["10.0"])
    );
    assert_eq!(c["price"]["gateway_undercharges"], true);
    assert_eq!(c["gateway_models"], serde_json::json!(["gpt-4o"]));
    assert_eq!(
        c["provider_models"],
        serde_json::json!(["gpt-4o-2024-08-06"])
    );
    let hash = c["price_hashes"][0].as_str().unwrap();
    assert_eq!(hash.len(), 16);
    assert!(explanation(c).contains(hash), "{c:#}");
    assert!(explanation(c).contains("under-charges"));
    assert_eq!(
        cell(&v, "2025-11-03", "gpt-4o", "input")["status"],
        "matched"
    );

    // D2 gpt-4o-mini: 20 % more uncached input and output than metered: bypass.
    for (class, delta) in [("input", "2000000"), ("output", "1000000")] {
        let c = cell(&v, "2025-11-04", "gpt-4o-mini", class);
        assert_eq!(kinds(c), ["quantity"], "{c:#}");
        assert_eq!(c["token_delta"], delta);
        assert!(explanation(c).contains("bypassed the gateway"), "{c:#}");
        assert!(c["price"].is_null());
    }
    assert_eq!(
        cell(&v, "2025-11-04", "gpt-4o-mini", "cache_read")["status"],
        "matched"
    );

    // D2 gpt-4o: +3 % output with a cut stream: quantity drift, the cut stream named.
    let c = cell(&v, "2025-11-04", "gpt-4o", "output");
    assert_eq!(kinds(c), ["quantity"]);
    assert_eq!(c["partial"], 1);
    assert!(explanation(c).contains("1 cut stream"), "{c:#}");

    // D2 gpt-4.1-nano: never through the gateway.
    let c = cell(&v, "2025-11-04", "gpt-4.1-nano", "input");
    assert_eq!(c["status"], "provider_only");
    assert!(explanation(c).contains("bypassed"));

    assert_eq!(v["summary"]["drift"], 4);
    assert_eq!(v["summary"]["provider_only"], 2);
    assert_eq!(v["summary"]["gateway_only"], 0);
    // The image line has no model: reported apart, never compared.
    assert_eq!(v["unattributed"][0]["description"], "Image models");
    assert_eq!(v["unattributed"][0]["usd"], "0.120000000");
    // Totals: provider $36.732 (attributed) vs the ledger's $7.50 + $10 + $7.50 + $9.
    assert_eq!(v["totals"]["provider_usd"], "36.732000000");
    assert_eq!(v["totals"]["gateway_usd"], "34.000000000");
}

#[test]
fn openai_accounts_map_projects_to_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let db = openai_ledger().write(dir.path());
    let (code, v) = reconcile_json(
        dir.path(),
        &db,
        &[
            "--invoice",
            &fixture("openai/usage.json"),
            "--account",
            "proj_gateway=openai",
        ],
    );
    assert_eq!(code, 3);
    let only: Vec<&Value> = v["cells"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "provider_only")
        .collect();
    assert_eq!(only.len(), 2);
    assert!(only.iter().all(|c| c["account"] == "proj_notebook"));
    assert!(explanation(only[0]).contains("not mapped to a gateway upstream"));
    assert_eq!(
        cell(&v, "2025-11-03", "gpt-4o-mini", "input")["account"],
        "openai"
    );
}

#[test]
fn an_exact_match_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = openai_ledger().write(dir.path());
    let args = [
        "--invoice",
        &fixture("openai/exact_usage.json"),
        "--invoice",
        &fixture("openai/exact_costs.json"),
    ];
    let (code, v) = reconcile_json(dir.path(), &db, &args);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["status"], "matched");
    assert_eq!(v["summary"]["drift"], 0);
    assert_eq!(v["totals"]["provider_usd"], v["totals"]["gateway_usd"]);
    // The human table says so too, and lists nothing.
    let mut t = vec!["reconcile", "--db", db.to_str().unwrap()];
    t.extend_from_slice(&args);
    let out = tollgate(dir.path(), &t);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("cells: 5 matched, 0 drift"), "{text}");
    assert!(text.contains("result: matched within tolerance"), "{text}");
    // A looser tolerance keeps the drifting exports failing only where they exceed it.
    let (code, _) = reconcile_json(
        dir.path(),
        &db,
        &[
            "--invoice",
            &fixture("openai/usage.json"),
            "--tolerance",
            "50%",
        ],
    );
    // gpt-4.1-nano is still provider-only.
    assert_eq!(code, 3);
}

#[test]
fn anthropic_reports_find_the_outdated_one_hour_cache_rate() {
    let dir = tempfile::tempdir().unwrap();
    // The gateway's price table has an override file written when Sonnet 4.5 had no
    // 1-hour cache-write rate: 1 h writes are priced at the 5-minute rate ($3.75/Mtok;
    // Anthropic bills $6).
    let stale = r#"{"claude-sonnet-4-5": {"cache_creation_input_token_cost_above_1hr": 3.75e-06}}"#;
    std::fs::write(dir.path().join("old-prices.json"), stale).unwrap();
    std::fs::write(
        dir.path().join("tollgate.toml"),
        "[pricing]\ncatalogs = [\"old-prices.json\"]\n",
    )
    .unwrap();
    let mut table = tollgate_domain::pricing::PriceTableBuilder::default();
    table
        .merge_catalog_json(DEFAULT_CATALOG_JSON, "embedded")
        .unwrap();
    table.merge_catalog_json(stale, "old-prices.json").unwrap();
    let table = table.build();
    let mut r = Rows::new();
    assert_ne!(table.hash(), r.table.hash());
    r.table = table;
    r.add(
        D1,
        "anthropic",
        "claude-sonnet-4-5",
        8,
        0,
        u(100_000, 1_000_000, 200_000, 100_000, 50_000),
    );
    r.add(
        D2,
        "anthropic",
        "claude-haiku-4-5",
        5,
        0,
        u(200_000, 0, 0, 0, 40_000),
    );
    r.add(
        D2,
        "anthropic",
        "claude-sonnet-4-5",
        4,
        1,
        u(100_000, 0, 0, 0, 50_000),
    );
    let db = r.write(dir.path());
    let (code, v) = reconcile_json(
        dir.path(),
        &db,
        &[
            "--invoice",
            &fixture("anthropic/usage_report.json"),
            "--invoice",
            &fixture("anthropic/cost_report.json"),
            "--provider",
            "anthropic",
            "--config",
            "tollgate.toml",
        ],
    );
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(v["price_table_hash"], r.table.hash());
    let files: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["format"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["anthropic_usage", "anthropic_costs"]);

    // D1: every class matches but 1-hour cache writes, billed at $6 vs the gateway's $3.75.
    for class in ["input", "cache_read", "cache_write_5m", "output"] {
        assert_eq!(
            cell(&v, "2025-11-03", "claude-sonnet-4-5", class)["status"],
            "matched",
            "{class}"
        );
    }
    let c = cell(&v, "2025-11-03", "claude-sonnet-4-5", "cache_write_1h");
    assert_eq!(kinds(c), ["price"], "{c:#}");
    assert_eq!(c["provider"]["usd"], "4.800000000");
    assert_eq!(c["gateway"]["usd"], "3.000000000");
    assert_eq!(c["price"]["provider_usd_per_mtok"], "6.0000");
    assert_eq!(c["price"]["gateway_usd_per_mtok"], "3.7500");
    assert_eq!(
        c["price"]["catalog_usd_per_mtok"],
        serde_json::json!(["3.75"])
    );
    assert_eq!(c["price_hashes"], serde_json::json!([r.table.hash()]));
    assert!(explanation(c).contains("cache_write_1h"), "{c:#}");
    assert!(explanation(c).contains(r.table.hash()), "{c:#}");

    // D2 haiku: +30 %.
    let c = cell(&v, "2025-11-04", "claude-haiku-4-5", "input");
    assert_eq!(kinds(c), ["quantity"]);
    assert_eq!(c["token_delta"], "300000");
    // D2 sonnet: a cut stream within tolerance.
    let c = cell(&v, "2025-11-04", "claude-sonnet-4-5", "output");
    assert_eq!(c["status"], "matched");
    assert_eq!(c["within_tolerance"], true);
    // D2 claude-3-5-haiku: provider-only.
    assert_eq!(
        cell(&v, "2025-11-04", "claude-3-5-haiku", "output")["status"],
        "provider_only"
    );
    // Web search is not metered by the gateway: apart.
    assert_eq!(v["unattributed"][0]["usd"], "0.250000000");
    assert_eq!(v["summary"]["drift"], 3);
}

#[test]
fn aws_cur_maps_usage_types_to_the_gateway_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rows::new();
    let nova = "us.amazon.nova-2-lite-v1:0";
    r.add(
        D1,
        "bedrock",
        nova,
        6,
        0,
        u(500_000, 1_000_000, 0, 0, 100_000),
    );
    r.add(
        D2,
        "bedrock",
        nova,
        6,
        1,
        u(500_000, 1_000_000, 0, 0, 100_000),
    );
    let db = r.write(dir.path());
    let (code, v) = reconcile_json(
        dir.path(),
        &db,
        &["--invoice", &fixture("aws/cur2.csv"), "--provider", "aws"],
    );
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(v["upstreams"], serde_json::json!(["bedrock"]));
    // D1: the two input lines (one by ARN, one by family) add up to the ledger's 3M.
    let c = cell(&v, "2025-11-03", "nova-2-lite", "input");
    assert_eq!(c["status"], "matched");
    assert_eq!(c["provider"]["tokens"], 3_000_000);
    assert_eq!(c["gateway_models"], serde_json::json!([nova]));
    let c = cell(&v, "2025-11-03", "nova-2-lite", "output");
    assert_eq!(kinds(c), ["price"]);
    assert_eq!(c["price"]["provider_usd_per_mtok"], "3.3000");
    assert_eq!(c["price"]["gateway_usd_per_mtok"], "2.7500");
    // D2: bypass on input; a cut stream and the same stale rate on output.
    assert_eq!(
        kinds(cell(&v, "2025-11-04", "nova-2-lite", "input")),
        ["quantity"]
    );
    let c = cell(&v, "2025-11-04", "nova-2-lite", "output");
    assert_eq!(kinds(c), ["quantity", "price"]);
    assert!(explanation(c).contains("1 cut stream"), "{c:#}");
    // Nova Pro never went through the gateway.
    let pro: Vec<&Value> = v["cells"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["provider_models"] == serde_json::json!(["NovaPro"]))
        .collect();
    assert_eq!(pro.len(), 2);
    assert!(pro.iter().all(|c| c["status"] == "provider_only"));
    assert_eq!(v["unattributed"][0]["usd"], "0.500000000");
    let notes = v["notes"].to_string();
    assert!(notes.contains("other AWS services skipped"), "{notes}");
    assert!(notes.contains("family"), "{notes}");
    // CSV: one row per cell.
    let out = tollgate(
        dir.path(),
        &[
            "reconcile",
            "--db",
            db.to_str().unwrap(),
            "--invoice",
            &fixture("aws/cur2.csv"),
            "--format",
            "csv",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let csv = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        csv.lines().count(),
        1 + v["cells"].as_array().unwrap().len()
    );
    assert!(csv.starts_with("day,model,account,class,status,kinds,"));
}

/// The export quotes only Tags (JSON with commas); split around it.
fn split_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                cur.push(ch);
            }
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    fields.push(cur);
    fields
}

fn replace_field(line: &str, idx: usize, f: impl Fn(&str) -> String) -> String {
    let mut fields = split_fields(line);
    fields[idx] = f(&fields[idx]);
    fields.join(",")
}

#[test]
fn focus_export_reconciles_exactly_and_edits_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let db = openai_ledger().write(dir.path());
    let focus = dir.path().join("focus.csv");
    let out = tollgate(
        dir.path(),
        &[
            "export",
            "--db",
            db.to_str().unwrap(),
            "--since",
            "2025-11-03T00:00:00Z",
            "--until",
            "2025-11-05T00:00:00Z",
            "--out",
            focus.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, v) = reconcile_json(
        dir.path(),
        &db,
        &["--invoice", focus.to_str().unwrap(), "--by-key"],
    );
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["provider"], "focus");
    // Both upstreams of the file are compared, per virtual key.
    assert_eq!(v["upstreams"], serde_json::json!(["anthropic", "openai"]));
    assert!(
        v["cells"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["account"] == "tgk_support")
    );
    assert_eq!(v["totals"]["provider_usd"], v["totals"]["gateway_usd"]);

    // Edits: D1 gpt-4o output cost +10 % (a rate), D2 gpt-4o-mini input quantity and
    // cost +25 % (traffic), and a model the gateway never served.
    let text = std::fs::read_to_string(&focus).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let col = |n: &str| header.iter().position(|h| *h == n).unwrap();
    let (billed, qty, sku, kind, start) = (
        col("BilledCost"),
        col("ConsumedQuantity"),
        col("SkuId"),
        col("x_TokenKind"),
        col("ChargePeriodStart"),
    );
    let scale = |s: &str, num: i64, den: i64| {
        let m = tollgate_domain::money::Money::parse_usd(s).unwrap();
        tollgate_domain::money::Money::from_nanos(m.nanos() * num / den).to_string()
    };
    let mut edited = String::new();
    let mut extra = String::new();
    for (i, line) in text.lines().enumerate() {
        let f = split_fields(line);
        let mut l = line.to_string();
        if i > 0 && f[sku] == "gpt-4o" && f[kind] == "output" && f[start].starts_with("2025-11-03")
        {
            l = replace_field(&l, billed, |s| scale(s, 11, 10));
        }
        if i > 0
            && f[sku] == "gpt-4o-mini"
            && f[kind] == "input"
            && f[start].starts_with("2025-11-04")
        {
            l = replace_field(&l, billed, |s| scale(s, 5, 4));
            l = replace_field(&l, qty, |s| {
                let n: f64 = s.parse().unwrap();
                format!("{}.0", (n * 1.25) as u64)
            });
            // The same row for a model the gateway never called.
            extra = replace_field(&l, sku, |_| "gpt-4.1-nano".into());
        }
        edited.push_str(&l);
        edited.push('\n');
    }
    edited.push_str(&extra);
    edited.push('\n');
    let edited_path = dir.path().join("focus-edited.csv");
    std::fs::write(&edited_path, edited).unwrap();
    let (code, v) = reconcile_json(
        dir.path(),
        &db,
        &["--invoice", edited_path.to_str().unwrap(), "--by-key"],
    );
    assert_eq!(code, 3, "{v:#}");
    let c = cell(&v, "2025-11-03", "gpt-4o", "output");
    assert_eq!(kinds(c), ["price"], "{c:#}");
    assert_eq!(c["price"]["provider_usd_per_mtok"], "11.0000");
    let c = cell(&v, "2025-11-04", "gpt-4o-mini", "input");
    assert_eq!(kinds(c), ["quantity"], "{c:#}");
    assert_eq!(c["token_delta"], "2500000");
    assert_eq!(
        cell(&v, "2025-11-04", "gpt-4.1-nano", "input")["status"],
        "provider_only"
    );
    assert_eq!(v["summary"]["drift"], 2);
    assert_eq!(v["summary"]["provider_only"], 1);
}

#[test]
fn malformed_exports_exit_4_naming_file_record_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let db = openai_ledger().write(dir.path());
    let bad_json = dir.path().join("bad.json");
    std::fs::write(
        &bad_json,
        r#"{"object": "page", "data": [{"object": "bucket", "start_time": 1762128000, "end_time": 1762214400,
           "results": [{"object": "organization.usage.completions.result", "input_tokens": "many",
                        "output_tokens": 5, "model": "gpt-4o"}]}]}"#,
    )
    .unwrap();
    let bad_csv = dir.path().join("bad.csv");
    std::fs::write(
        &bad_csv,
        "line_item_usage_start_date,line_item_usage_type,line_item_usage_amount,line_item_unblended_cost\n\
         2025-11-03T00:00:00Z,USE1-Nova2Lite-input-tokens,12x,0.1\n",
    )
    .unwrap();
    let cases = [
        (
            bad_json.to_str().unwrap().to_string(),
            "data[0].results[0]: field \"input_tokens\"",
        ),
        (
            bad_csv.to_str().unwrap().to_string(),
            "line 2: field \"line_item_usage_amount\"",
        ),
        (fixture("openai/usage.json"), "--provider is anthropic"),
        ("/nonexistent/x.json".to_string(), "cannot read"),
    ];
    for (i, (file, want)) in cases.iter().enumerate() {
        let mut args = vec!["reconcile", "--db", db.to_str().unwrap(), "--invoice", file];
        if i == 2 {
            args.extend(["--provider", "anthropic"]);
        }
        let out = tollgate(dir.path(), &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{err}");
        assert!(err.contains(want), "{want:?} not in {err}");
        assert!(err.contains(file.as_str()) || i == 3, "{err}");
    }
    let out = tollgate(
        dir.path(),
        &[
            "reconcile",
            "--db",
            db.to_str().unwrap(),
            "--invoice",
            &fixture("aws/cur2.csv"),
            "--tolerance",
            "lots",
        ],
    );
    assert_eq!(out.status.code(), Some(4));
    let out = tollgate(
        dir.path(),
        &[
            "reconcile",
            "--db",
            "nope.db",
            "--invoice",
            &fixture("aws/cur2.csv"),
        ],
    );
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no ledger"));
}
