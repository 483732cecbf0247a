//! `tollgate reconcile --invoice FILE [--provider openai|anthropic|aws|focus]`: the
//! ledger against the provider's own usage and cost export, per UTC day × model (×
//! account with `--account`/`--by-key`) × token class.
//!
//! Exit codes (for CI and cron): 0 every cell and the totals within tolerance; 3 drift
//! (a drifted cell, a provider-only or gateway-only cell, or totals beyond tolerance);
//! 4 an input error (unreadable or malformed export, bad flag value, no ledger); 2 a
//! command-line usage error (clap's own); 1 anything else (a database error).
//!
//! The matching and the explanations are `tollgate_domain::reconcile`; this module
//! reads the files, picks the ledger rows (`tollgate_store::reconcile`), resolves each
//! deployment's catalog rates as the FOCUS export does, and prints.

use crate::cli::ReconcileArgs;
use crate::export::Pricing;
use crate::views::{csv, table, usd};
use crate::{config_path, db_path, env_map};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::ExitCode;
use tollgate_domain::money::Money;
use tollgate_domain::reconcile::invoice::Provider;
use tollgate_domain::reconcile::{
    Accounts, Cell, CellStatus, Day, Invoice, Options, PricedSpend, Reconciliation, TokenClass,
    Tolerance, parse_invoice, reconcile as match_spend,
};
use tollgate_server::config::RawConfig;
use tollgate_store::SqliteStore;

/// Exit code when the ledger and the export disagree beyond tolerance.
pub const EXIT_DRIFT: u8 = 3;
/// Exit code when an input (export file, flag, ledger path) is unusable.
pub const EXIT_INPUT: u8 = 4;

enum Failure {
    Input(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<tollgate_store::StoreError> for Failure {
    fn from(e: tollgate_store::StoreError) -> Self {
        Failure::Other(e.into())
    }
}

pub fn reconcile(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    match run(&args) {
        Ok((out, drift)) => {
            print!("{out}");
            Ok(if drift {
                ExitCode::from(EXIT_DRIFT)
            } else {
                ExitCode::SUCCESS
            })
        }
        Err(Failure::Input(msg)) => {
            eprintln!("tollgate reconcile: {msg}");
            Ok(ExitCode::from(EXIT_INPUT))
        }
        Err(Failure::Other(e)) => Err(e),
    }
}

fn input<T>(msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Input(msg.into()))
}

/// Everything the output needs besides the reconciliation itself.
pub struct Context {
    pub provider: Provider,
    pub files: Vec<(String, String)>,
    pub upstreams: Vec<String>,
    pub tolerance: Tolerance,
    pub min_amount: Money,
    pub price_hash: String,
    pub accounts: String,
}

fn run(args: &ReconcileArgs) -> Result<(String, bool), Failure> {
    let provider = match &args.provider {
        Some(p) => Some(Provider::parse(p).ok_or_else(|| {
            Failure::Input(format!(
                "--provider {p:?}: expected openai, anthropic, aws or focus"
            ))
        })?),
        None => None,
    };
    let Some(tolerance) = Tolerance::parse(&args.tolerance) else {
        return input(format!(
            "--tolerance {:?}: expected a percentage (1%, 0.5%) or a fraction (0.01)",
            args.tolerance
        ));
    };
    let min_amount = match Money::parse_usd(&args.min_usd) {
        Ok(m) if !m.is_negative() => m,
        _ => {
            return input(format!(
                "--min-usd {:?}: expected a USD amount",
                args.min_usd
            ));
        }
    };
    if !matches!(args.format.as_str(), "table" | "json" | "csv") {
        return input(format!(
            "--format {:?}: expected table, json or csv",
            args.format
        ));
    }
    let accounts = if args.by_key {
        Accounts::VirtualKey
    } else if args.accounts.is_empty() {
        Accounts::Ignore
    } else {
        let mut map = BTreeMap::new();
        for a in &args.accounts {
            match a.split_once('=') {
                Some((id, up)) if !id.trim().is_empty() && !up.trim().is_empty() => {
                    map.insert(id.trim().to_string(), up.trim().to_string());
                }
                _ => return input(format!("--account {a:?}: expected ID=UPSTREAM")),
            }
        }
        Accounts::Upstreams(map)
    };

    let mut invoices: Vec<Invoice> = Vec::new();
    for path in &args.invoices {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::Input(format!("{name}: cannot read: {e}")))?;
        let inv =
            parse_invoice(&name, &text, provider).map_err(|e| Failure::Input(e.to_string()))?;
        invoices.push(inv);
    }
    let provider = match provider {
        Some(p) => p,
        None => {
            let mut ps: Vec<Provider> = invoices.iter().map(|i| i.format.provider()).collect();
            ps.sort();
            ps.dedup();
            match ps.as_slice() {
                [p] => *p,
                _ => {
                    return input(
                        "the files are exports of different providers: reconcile one provider at a time",
                    );
                }
            }
        }
    };
    let Some((first, last)) = invoices.iter().flat_map(|i| i.days.iter().copied()).fold(
        None,
        |acc: Option<(Day, Day)>, d| match acc {
            None => Some((d, d)),
            Some((a, b)) => Some((a.min(d), b.max(d))),
        },
    ) else {
        return input("the export covers no day: nothing to reconcile");
    };

    let db = db_path(args.db.clone(), args.config.config.clone())?;
    if !db.exists() {
        return input(format!(
            "no ledger at {} (use --db or --config)",
            db.display()
        ));
    }
    let env = env_map();
    // A config that does not load is an input error like a malformed export.
    let raw = RawConfig::load(config_path(args.config.config.clone()).as_deref(), &env)
        .map_err(|e| Failure::Input(format!("config: {e}")))?;
    let prices = raw
        .price_table()
        .map_err(|e| Failure::Input(format!("price table: {e}")))?;
    let store = SqliteStore::open(&db)?;
    let since = first.start_ms();
    let until = Day(last.0 + 1).start_ms();

    let mut notes = Vec::new();
    let upstreams: Vec<String> = if !args.upstreams.is_empty() {
        args.upstreams.clone()
    } else if let Some(kind) = provider.upstream_kind() {
        let configured: Vec<String> = raw
            .upstreams
            .iter()
            .filter(|u| u.kind.as_deref().unwrap_or("openai") == kind)
            .map(|u| u.name.clone())
            .collect();
        if !configured.is_empty() {
            configured
        } else {
            let in_ledger = store.ledger_upstreams(since, until)?;
            if in_ledger.iter().any(|u| u == kind) {
                vec![kind.to_string()]
            } else {
                notes.push(format!(
                    "no config names a {kind} upstream: every upstream in the ledger is compared (use --upstream)"
                ));
                in_ledger
            }
        }
    } else {
        let named: Vec<String> = invoices
            .iter()
            .flat_map(|i| i.upstreams.iter().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if named.is_empty() {
            let all = store.ledger_upstreams(since, until)?;
            notes.push(
                "the FOCUS file names no gateway upstream (x_Upstream): every upstream in the ledger is compared (use --upstream)".to_string(),
            );
            all
        } else {
            named
        }
    };

    let pricing = Pricing {
        raw: &raw,
        prices: &prices,
    };
    let spend: Vec<PricedSpend> = store
        .reconcile_spend(since, until, Some(&upstreams))?
        .into_iter()
        .map(|s| {
            let rates = pricing
                .price(&s.deployment, &s.model)
                .and_then(|p| p.rates(0, None));
            PricedSpend { spend: s, rates }
        })
        .collect();
    let opts = Options {
        tolerance,
        min_amount,
        accounts: accounts.clone(),
    };
    let mut r = match_spend(&invoices, &spend, &opts);
    r.notes.extend(notes);
    // A price drift on rows priced by an older table than today's: say which.
    let stale: std::collections::BTreeSet<&str> = r
        .cells
        .iter()
        .filter(|c| c.price.is_some())
        .flat_map(|c| c.price_hashes.iter().map(String::as_str))
        .filter(|h| *h != prices.hash())
        .collect();
    if !stale.is_empty() {
        let list = stale.into_iter().collect::<Vec<_>>().join(", ");
        r.notes.push(format!(
            "price drifts on rows priced by table(s) {list}; the price table in use now is {} (its catalog rates are the ones shown)",
            prices.hash()
        ));
    }
    let ctx = Context {
        provider,
        files: invoices
            .iter()
            .map(|i| (i.source.clone(), i.format.as_str().to_string()))
            .collect(),
        upstreams,
        tolerance,
        min_amount,
        price_hash: prices.hash().to_string(),
        accounts: match &accounts {
            Accounts::Ignore => "ignored".into(),
            Accounts::VirtualKey => "virtual key".into(),
            Accounts::Upstreams(m) => m
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
        },
    };
    let out = match args.format.as_str() {
        "json" => {
            serde_json::to_string_pretty(&to_json(&r, &ctx)).map_err(anyhow::Error::from)? + "\n"
        }
        "csv" => to_csv(&r),
        _ => to_table(&r, &ctx, args.all),
    };
    Ok((out, r.has_drift()))
}

fn class_name(c: Option<TokenClass>) -> &'static str {
    c.map_or("all", TokenClass::as_str)
}

fn opt_u64(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn opt_usd(v: Option<Money>) -> String {
    v.map_or_else(|| "-".into(), usd)
}

fn signed(v: i128) -> String {
    if v > 0 {
        format!("+{v}")
    } else {
        v.to_string()
    }
}

fn status(c: &Cell) -> String {
    match c.status {
        CellStatus::Drift => format!(
            "DRIFT ({})",
            c.kinds
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join("+")
        ),
        CellStatus::ProviderOnly => "PROVIDER ONLY".into(),
        CellStatus::GatewayOnly => "GATEWAY ONLY".into(),
        CellStatus::Matched if c.within_tolerance => "ok (within)".into(),
        CellStatus::Matched => "ok".into(),
    }
}

fn model_label(c: &Cell) -> String {
    c.gateway_models
        .first()
        .or(c.provider_models.first())
        .cloned()
        .unwrap_or_else(|| c.model.clone())
}

fn pct_of(delta: i128, base: i128) -> String {
    tollgate_domain::value::Ratio::new(delta, base.max(1))
        .map(|r| r.percent(2))
        .unwrap_or_else(|| "n/a".into())
}

pub fn to_table(r: &Reconciliation, ctx: &Context, all: bool) -> String {
    let days = match (r.days.first(), r.days.last()) {
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a} → {b}"),
        _ => String::new(),
    };
    let mut out = format!(
        "reconcile {} against the ledger: {} (UTC), tolerance {}, amounts under {} USD ignored\n",
        ctx.provider.as_str(),
        days,
        ctx.tolerance,
        usd(ctx.min_amount)
    );
    out.push_str(&format!(
        "files: {}; upstreams: {}; accounts: {}; price table in use: {}\n",
        ctx.files
            .iter()
            .map(|(f, k)| format!("{f} ({k})"))
            .collect::<Vec<_>>()
            .join(", "),
        if ctx.upstreams.is_empty() {
            "(none)".into()
        } else {
            ctx.upstreams.join(", ")
        },
        ctx.accounts,
        ctx.price_hash
    ));
    out.push_str(&format!(
        "cells: {} matched, {} drift, {} provider-only, {} gateway-only\n\n",
        r.count(CellStatus::Matched),
        r.count(CellStatus::Drift),
        r.count(CellStatus::ProviderOnly),
        r.count(CellStatus::GatewayOnly)
    ));
    let shown: Vec<&Cell> = r
        .cells
        .iter()
        .filter(|c| all || c.status != CellStatus::Matched || c.within_tolerance)
        .collect();
    if !shown.is_empty() {
        let rows: Vec<Vec<String>> = shown
            .iter()
            .map(|c| {
                vec![
                    c.day.to_string(),
                    model_label(c),
                    c.account.clone().unwrap_or_else(|| "-".into()),
                    class_name(c.class).to_string(),
                    opt_u64(c.provider.tokens),
                    opt_u64(c.gateway.tokens),
                    c.token_delta()
                        .filter(|_| c.gateway.tokens.is_some())
                        .map_or_else(|| "-".into(), signed),
                    opt_usd(c.provider.amount),
                    opt_usd(c.gateway.amount),
                    c.amount_delta()
                        .filter(|_| c.gateway.amount.is_some())
                        .map_or_else(|| "-".into(), usd),
                    status(c),
                ]
            })
            .collect();
        out.push_str(&table(
            if all { "cells" } else { "cells that differ" },
            &[
                "day",
                "model",
                "account",
                "class",
                "provider_tokens",
                "gateway_tokens",
                "Δtokens",
                "provider_usd",
                "gateway_usd",
                "Δusd",
                "status",
            ],
            &rows,
            4,
            false,
        ));
        out.push('\n');
    }
    let explained: Vec<&Cell> = r
        .cells
        .iter()
        .filter(|c| {
            !c.explanation.is_empty() && (c.status != CellStatus::Matched || c.within_tolerance)
        })
        .collect();
    if !explained.is_empty() {
        out.push_str("why:\n");
        for (i, c) in explained.iter().enumerate() {
            out.push_str(&format!(
                "{:>3}. {} {} {}{}: {}\n",
                i + 1,
                c.day,
                model_label(c),
                class_name(c.class),
                c.account
                    .as_ref()
                    .map(|a| format!(" [{a}]"))
                    .unwrap_or_default(),
                c.explanation
            ));
        }
        out.push('\n');
    }
    if !r.unattributed.is_empty() {
        out.push_str("provider charges not tied to a model or token class (not compared):\n");
        for u in &r.unattributed {
            out.push_str(&format!(
                "  {} {} USD  {} ({})\n",
                u.day,
                usd(u.amount),
                u.description,
                u.origin
            ));
        }
        out.push('\n');
    }
    if !r.notes.is_empty() {
        out.push_str("notes:\n");
        for n in &r.notes {
            out.push_str(&format!("  - {n}\n"));
        }
        out.push('\n');
    }
    let t = &r.totals;
    match t.provider_amount {
        Some(p) => {
            let d = i128::from(p.nanos()) - i128::from(t.gateway_amount.nanos());
            out.push_str(&format!(
                "total: provider {} USD, gateway {} USD, difference {} USD ({})\n",
                usd(p),
                usd(t.gateway_amount),
                usd(Money::from_nanos(i64::try_from(d).unwrap_or(i64::MAX))),
                pct_of(d, i128::from(t.gateway_amount.nanos()))
            ));
        }
        None => {
            out.push_str("total tokens (the export has no amounts):");
            for c in TokenClass::ALL {
                let p = t.provider_tokens.get(&c).copied().unwrap_or(0);
                let g = t.gateway_tokens.get(&c).copied().unwrap_or(0);
                if p > 0 || g > 0 {
                    out.push_str(&format!(" {} {p} vs {g};", c.as_str()));
                }
            }
            out.push('\n');
        }
    }
    out.push_str(&if r.has_drift() {
        format!("result: DRIFT (exit {EXIT_DRIFT})\n")
    } else {
        "result: matched within tolerance\n".to_string()
    });
    out
}

fn cell_json(c: &Cell) -> Value {
    let money = |m: Option<Money>| m.map(|m| Value::String(m.to_string()));
    json!({
        "day": c.day.to_string(),
        "model": c.model,
        "provider_models": c.provider_models,
        "gateway_models": c.gateway_models,
        "account": c.account,
        "class": c.class.map(TokenClass::as_str),
        "status": c.status.as_str(),
        "kinds": c.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        "within_tolerance": c.within_tolerance,
        "provider": {"tokens": c.provider.tokens, "usd": money(c.provider.amount)},
        "gateway": {"tokens": c.gateway.tokens, "usd": money(c.gateway.amount)},
        "token_delta": c.token_delta().filter(|_| c.gateway.tokens.is_some()).map(|d| d.to_string()),
        "usd_delta": c.amount_delta().filter(|_| c.gateway.amount.is_some()).map(|m| m.to_string()),
        "price": c.price.as_ref().map(|p| json!({
            "provider_usd_per_mtok": p.provider_usd_per_mtok,
            "gateway_usd_per_mtok": p.gateway_usd_per_mtok,
            "catalog_usd_per_mtok": p.catalog_usd_per_mtok,
            "gateway_undercharges": p.gateway_undercharges,
        })),
        "price_hashes": c.price_hashes,
        "requests": c.requests,
        "partial": c.partial,
        "estimated": c.estimated,
        "explanation": c.explanation,
    })
}

pub fn to_json(r: &Reconciliation, ctx: &Context) -> Value {
    let t = &r.totals;
    let tokens = |m: &BTreeMap<TokenClass, u64>| -> Value {
        Value::Object(
            m.iter()
                .map(|(c, n)| (c.as_str().to_string(), json!(n)))
                .collect(),
        )
    };
    json!({
        "provider": ctx.provider.as_str(),
        "files": ctx.files.iter().map(|(f, k)| json!({"file": f, "format": k})).collect::<Vec<_>>(),
        "days": r.days.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        "upstreams": ctx.upstreams,
        "accounts": ctx.accounts,
        "tolerance": ctx.tolerance.to_string(),
        "min_usd": ctx.min_amount.to_string(),
        "price_table_hash": ctx.price_hash,
        "status": if r.has_drift() { "drift" } else { "matched" },
        "exit_code": if r.has_drift() { EXIT_DRIFT } else { 0 },
        "summary": {
            "cells": r.cells.len(),
            "matched": r.count(CellStatus::Matched),
            "drift": r.count(CellStatus::Drift),
            "provider_only": r.count(CellStatus::ProviderOnly),
            "gateway_only": r.count(CellStatus::GatewayOnly),
        },
        "totals": {
            "provider_usd": t.provider_amount.map(|m| m.to_string()),
            "gateway_usd": t.gateway_amount.to_string(),
            "provider_tokens": tokens(&t.provider_tokens),
            "gateway_tokens": tokens(&t.gateway_tokens),
            "drift": t.drift,
        },
        "drifts": r.cells.iter().filter(|c| c.status != CellStatus::Matched).map(cell_json).collect::<Vec<_>>(),
        "cells": r.cells.iter().map(cell_json).collect::<Vec<_>>(),
        "unattributed": r.unattributed.iter().map(|u| json!({
            "day": u.day.to_string(), "usd": u.amount.to_string(),
            "description": u.description, "origin": u.origin,
        })).collect::<Vec<_>>(),
        "notes": r.notes,
    })
}

pub fn to_csv(r: &Reconciliation) -> String {
    let headers = [
        "day",
        "model",
        "account",
        "class",
        "status",
        "kinds",
        "provider_tokens",
        "gateway_tokens",
        "provider_usd",
        "gateway_usd",
        "provider_usd_per_mtok",
        "gateway_usd_per_mtok",
        "catalog_usd_per_mtok",
        "price_hashes",
        "requests",
        "partial",
        "estimated",
        "explanation",
    ];
    let opt = |v: Option<String>| v.unwrap_or_default();
    let rows: Vec<Vec<String>> = r
        .cells
        .iter()
        .map(|c| {
            vec![
                c.day.to_string(),
                c.model.clone(),
                opt(c.account.clone()),
                class_name(c.class).to_string(),
                c.status.as_str().to_string(),
                c.kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(";"),
                opt(c.provider.tokens.map(|t| t.to_string())),
                opt(c.gateway.tokens.map(|t| t.to_string())),
                opt(c.provider.amount.map(|m| m.to_string())),
                opt(c.gateway.amount.map(|m| m.to_string())),
                opt(c.price.as_ref().map(|p| p.provider_usd_per_mtok.clone())),
                opt(c.price.as_ref().map(|p| p.gateway_usd_per_mtok.clone())),
                opt(c.price.as_ref().map(|p| p.catalog_usd_per_mtok.join(";"))),
                c.price_hashes.join(";"),
                c.requests.to_string(),
                c.partial.to_string(),
                c.estimated.to_string(),
                c.explanation.clone(),
            ]
        })
        .collect();
    csv(&headers, &rows)
}
