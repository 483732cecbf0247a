use super::*;
use crate::pricing::EffectiveRates;

fn rate(usd_per_mtok: &str) -> Rate {
    Rate::parse_usd_per_mtok(usd_per_mtok).unwrap().0
}

/// gpt-4o-mini: $0.15 input, $0.075 cached, $0.60 output per Mtok.
fn mini() -> EffectiveRates {
    EffectiveRates {
        input: rate("0.15"),
        output: rate("0.6"),
        cache_read: rate("0.075"),
        cache_write_5m: rate("0.15"),
        cache_write_1h: rate("0.15"),
        reasoning: rate("0.6"),
    }
}

const D: Day = Day(20_000);

fn spend(model: &str, usage: Usage, cost_nanos: i64) -> PricedSpend {
    PricedSpend {
        spend: GatewaySpend {
            day: D,
            upstream: "openai".into(),
            deployment: model.into(),
            model: model.into(),
            key_id: Some("tgk_a".into()),
            price_hash: "00aa11bb22cc33dd".into(),
            requests: 10,
            usage,
            cost: Money::from_nanos(cost_nanos),
            ..GatewaySpend::default()
        },
        rates: Some(mini()),
    }
}

fn line(model: &str, class: TokenClass, tokens: Option<u64>, usd: Option<&str>) -> InvoiceLine {
    InvoiceLine {
        day: D,
        model: Some(ModelRef::Id(model.into())),
        account: None,
        class: Some(class),
        tokens,
        amount: usd.map(|u| Money::parse_usd(u).unwrap()),
        description: String::new(),
        origin: "test".into(),
    }
}

fn invoice(lines: Vec<InvoiceLine>) -> Invoice {
    let mut inv = Invoice::new(InvoiceFormat::Focus, "test.csv");
    inv.days.insert(D);
    inv.lines = lines;
    inv
}

fn usage(input: u64, cache_read: u64, output: u64) -> Usage {
    Usage {
        input,
        cache_read,
        output,
        ..Usage::default()
    }
}

fn opts() -> Options {
    Options {
        min_amount: Money::parse_usd("0.01").unwrap(),
        ..Options::default()
    }
}

fn cell(r: &Reconciliation, class: TokenClass) -> &Cell {
    r.cells.iter().find(|c| c.class == Some(class)).unwrap()
}

// 10 M input ($1.50), 40 M cached ($3.00), 5 M output ($3.00): $7.50 in the ledger.
fn ledger() -> Vec<PricedSpend> {
    vec![spend(
        "gpt-4o-mini",
        usage(10_000_000, 40_000_000, 5_000_000),
        7_500_000_000,
    )]
}

#[test]
fn exact_match_has_no_drift() {
    let inv = invoice(vec![
        line(
            "gpt-4o-mini-2024-07-18",
            TokenClass::Input,
            Some(10_000_000),
            Some("1.5"),
        ),
        line(
            "gpt-4o-mini-2024-07-18",
            TokenClass::CacheRead,
            Some(40_000_000),
            Some("3"),
        ),
        line(
            "gpt-4o-mini-2024-07-18",
            TokenClass::Output,
            Some(5_000_000),
            Some("3"),
        ),
    ]);
    let r = reconcile(&[inv], &ledger(), &opts());
    assert_eq!(r.cells.len(), 3);
    assert!(
        r.cells
            .iter()
            .all(|c| c.status == CellStatus::Matched && !c.within_tolerance),
        "{r:#?}"
    );
    assert!(!r.has_drift());
    assert_eq!(
        r.totals.provider_amount,
        Some(Money::from_nanos(7_500_000_000))
    );
    assert_eq!(r.totals.gateway_amount, Money::from_nanos(7_500_000_000));
}

#[test]
fn outdated_output_rate_is_a_price_drift_naming_both_rates() {
    // The provider bills output at $0.66/Mtok; the gateway's table says $0.60.
    let inv = invoice(vec![
        line(
            "gpt-4o-mini",
            TokenClass::Input,
            Some(10_000_000),
            Some("1.5"),
        ),
        line(
            "gpt-4o-mini",
            TokenClass::CacheRead,
            Some(40_000_000),
            Some("3"),
        ),
        line(
            "gpt-4o-mini",
            TokenClass::Output,
            Some(5_000_000),
            Some("3.3"),
        ),
    ]);
    let r = reconcile(&[inv], &ledger(), &opts());
    let out = cell(&r, TokenClass::Output);
    assert_eq!(out.status, CellStatus::Drift);
    assert_eq!(out.kinds, vec![DriftKind::Price]);
    let p = out.price.as_ref().unwrap();
    assert_eq!(p.provider_usd_per_mtok, "0.6600");
    assert_eq!(p.gateway_usd_per_mtok, "0.6000");
    assert_eq!(p.catalog_usd_per_mtok, vec!["0.6".to_string()]);
    assert!(p.gateway_undercharges);
    assert!(
        out.explanation.contains("00aa11bb22cc33dd"),
        "{}",
        out.explanation
    );
    assert_eq!(cell(&r, TokenClass::Input).status, CellStatus::Matched);
    assert!(r.has_drift());
}

#[test]
fn bypassed_traffic_is_a_quantity_drift() {
    // 20 % more input and output than the ledger, at the ledger's own rates.
    let inv = invoice(vec![
        line(
            "gpt-4o-mini",
            TokenClass::Input,
            Some(12_000_000),
            Some("1.8"),
        ),
        line(
            "gpt-4o-mini",
            TokenClass::CacheRead,
            Some(40_000_000),
            Some("3"),
        ),
        line(
            "gpt-4o-mini",
            TokenClass::Output,
            Some(6_000_000),
            Some("3.6"),
        ),
    ]);
    let r = reconcile(&[inv], &ledger(), &opts());
    for c in [TokenClass::Input, TokenClass::Output] {
        let x = cell(&r, c);
        assert_eq!(x.kinds, vec![DriftKind::Quantity], "{x:#?}");
        assert!(
            x.explanation.contains("bypassed the gateway"),
            "{}",
            x.explanation
        );
        assert!(x.price.is_none());
    }
    assert_eq!(cell(&r, TokenClass::Input).token_delta(), Some(2_000_000));
}

#[test]
fn cut_streams_within_and_beyond_tolerance() {
    let mut l = ledger();
    l[0].spend.partial = 3;
    l[0].spend.estimated = 3;
    // +0.5 % output: within 1 %, said but matched.
    let inv = invoice(vec![line(
        "gpt-4o-mini",
        TokenClass::Output,
        Some(5_025_000),
        None,
    )]);
    let r = reconcile(&[inv], &l, &opts());
    let out = cell(&r, TokenClass::Output);
    assert_eq!(out.status, CellStatus::Matched);
    assert!(out.within_tolerance);
    assert!(
        out.explanation.contains("3 cut stream"),
        "{}",
        out.explanation
    );
    // +2 %: a quantity drift blamed first on the cut streams.
    let inv = invoice(vec![line(
        "gpt-4o-mini",
        TokenClass::Output,
        Some(5_100_000),
        None,
    )]);
    let r = reconcile(&[inv], &l, &opts());
    let out = cell(&r, TokenClass::Output);
    assert_eq!(out.kinds, vec![DriftKind::Quantity]);
    assert!(
        out.explanation.contains("cut stream"),
        "{}",
        out.explanation
    );
    // A usage-only export compares tokens only.
    assert_eq!(out.provider.amount, None);
}

#[test]
fn one_sided_groups() {
    let inv = invoice(vec![
        line(
            "gpt-4o-mini",
            TokenClass::Input,
            Some(10_000_000),
            Some("1.5"),
        ),
        line(
            "gpt-4o-mini",
            TokenClass::CacheRead,
            Some(40_000_000),
            Some("3"),
        ),
        line(
            "gpt-4o-mini",
            TokenClass::Output,
            Some(5_000_000),
            Some("3"),
        ),
        line(
            "gpt-4.1-nano",
            TokenClass::Input,
            Some(1_000_000),
            Some("0.1"),
        ),
    ]);
    let mut l = ledger();
    l.push(spend("o3-mini", usage(1000, 0, 1000), 5_500_000));
    // A day the export does not cover is not compared.
    let mut other_day = spend("gpt-4o-mini", usage(1, 0, 1), 10);
    other_day.spend.day = Day(D.0 + 1);
    l.push(other_day);
    let r = reconcile(&[inv], &l, &opts());
    let nano: Vec<_> = r
        .cells
        .iter()
        .filter(|c| c.model == "gpt-4.1-nano")
        .collect();
    assert_eq!(nano.len(), 1);
    assert_eq!(nano[0].status, CellStatus::ProviderOnly);
    assert!(nano[0].explanation.contains("bypassed"));
    let o3: Vec<_> = r.cells.iter().filter(|c| c.model == "o3-mini").collect();
    assert_eq!(o3.len(), 2);
    assert!(o3.iter().all(|c| c.status == CellStatus::GatewayOnly));
    assert_eq!(r.count(CellStatus::Matched), 3);
    assert_eq!(r.totals.gateway_amount, Money::from_nanos(7_505_500_000));
}

#[test]
fn accounts_map_to_upstreams() {
    let mut a = line("gpt-4o-mini", TokenClass::Input, Some(10_000_000), None);
    a.account = Some("proj_gateway".into());
    let mut b = line("gpt-4o-mini", TokenClass::Input, Some(500_000), None);
    b.account = Some("proj_notebook".into());
    let inv = invoice(vec![a, b]);
    let o = Options {
        accounts: Accounts::Upstreams(BTreeMap::from([(
            "proj_gateway".to_string(),
            "openai".to_string(),
        )])),
        ..opts()
    };
    let r = reconcile(&[inv], &ledger(), &o);
    let bypass: Vec<_> = r
        .cells
        .iter()
        .filter(|c| c.status == CellStatus::ProviderOnly)
        .collect();
    assert_eq!(bypass.len(), 1);
    assert_eq!(bypass[0].account.as_deref(), Some("proj_notebook"));
    assert!(
        bypass[0].explanation.contains("not mapped"),
        "{}",
        bypass[0].explanation
    );
    let input = r
        .cells
        .iter()
        .find(|c| c.account.as_deref() == Some("openai") && c.class == Some(TokenClass::Input))
        .unwrap();
    assert_eq!(input.status, CellStatus::Matched);
}

#[test]
fn family_lines_resolve_to_the_one_gateway_model() {
    let mut s = spend(
        "us.amazon.nova-2-lite-v1:0",
        usage(1_000_000, 0, 0),
        330_000_000,
    );
    s.rates = None;
    let mut l = line("x", TokenClass::Input, Some(1_000_000), Some("0.33"));
    l.model = Some(ModelRef::Family("Nova2Lite".into()));
    let r = reconcile(&[invoice(vec![l])], &[s], &opts());
    assert_eq!(r.cells.len(), 1);
    assert_eq!(r.cells[0].model, "nova-2-lite");
    assert_eq!(r.cells[0].status, CellStatus::Matched);
    assert_eq!(
        r.cells[0].gateway_models,
        vec!["us.amazon.nova-2-lite-v1:0".to_string()]
    );
}

#[test]
fn unclassified_amounts_compare_the_group_total() {
    let mut l = line("gpt-4o-mini", TokenClass::Input, None, Some("9"));
    l.class = None;
    let r = reconcile(&[invoice(vec![l])], &ledger(), &opts());
    let total = r.cells.iter().find(|c| c.class.is_none()).unwrap();
    assert_eq!(total.kinds, vec![DriftKind::Amount]);
    assert_eq!(total.gateway.amount, Some(Money::from_nanos(7_500_000_000)));
    // Token cells carry no provider figures and are not drifts.
    assert!(
        r.cells
            .iter()
            .filter(|c| c.class.is_some())
            .all(|c| c.status == CellStatus::Matched)
    );
}

#[test]
fn class_split_adds_up_to_the_ledger() {
    let u = Usage {
        input: 1234,
        cache_read: 99,
        cache_write_5m: 7,
        cache_write_1h: 3,
        output: 555,
        reasoning: 100,
    };
    let w = class_weights(&u, Some(&mini()));
    let parts = allocate(
        Money::from_nanos(1_000_003),
        &w.iter().map(|x| x.2).collect::<Vec<_>>(),
    );
    assert_eq!(
        parts.iter().copied().sum::<Money>(),
        Money::from_nanos(1_000_003)
    );
    assert_eq!(w.len(), 5);
}

#[test]
fn tolerances() {
    assert_eq!(Tolerance::parse("1%"), Some(Tolerance::from_ppm(10_000)));
    assert_eq!(Tolerance::parse("0.5 %"), Some(Tolerance::from_ppm(5_000)));
    assert_eq!(Tolerance::parse("0.01"), Some(Tolerance::from_ppm(10_000)));
    assert_eq!(Tolerance::parse("0%"), Some(Tolerance::from_ppm(0)));
    assert_eq!(Tolerance::parse("101%"), None);
    assert_eq!(Tolerance::parse("-1%"), None);
    assert_eq!(Tolerance::parse("abc"), None);
    assert_eq!(Tolerance::from_ppm(10_000).to_string(), "1%");
    assert_eq!(Tolerance::from_ppm(2_500).to_string(), "0.25%");
    let t = Tolerance::default();
    assert!(!t.exceeded(100, 101));
    assert!(t.exceeded(100, 102));
    assert!(!t.exceeded(0, 0));
    assert!(t.exceeded(0, 1));
}

#[test]
fn days() {
    assert_eq!(Day::parse("2025-11-03T00:00:00Z"), Some(Day(20_395)));
    assert_eq!(Day::parse("2025-11-03T23:59:59.999Z"), Some(Day(20_395)));
    assert_eq!(Day::parse("2025-11-03 00:00:00"), Some(Day(20_395)));
    assert_eq!(Day::parse("2025-11-03"), Some(Day(20_395)));
    assert_eq!(Day::parse("nope"), None);
    assert_eq!(Day(20_395).to_string(), "2025-11-03");
    assert_eq!(Day::from_ms(Day(20_395).start_ms() + 5), Day(20_395));
}

#[test]
fn rows_priced_by_another_table_compare_classes_at_todays_rates() {
    // The ledger charged output at $0.50/Mtok (an older table): $7.00 instead of $7.50.
    let mut l = ledger();
    l[0].spend.cost = Money::from_nanos(7_000_000_000);
    l[0].spend.price_hash = "0ld0ld0ld0ld0ld0".into();
    let inv = invoice(vec![
        line(
            "gpt-4o-mini",
            TokenClass::Input,
            Some(10_000_000),
            Some("1.5"),
        ),
        line(
            "gpt-4o-mini",
            TokenClass::CacheRead,
            Some(40_000_000),
            Some("3"),
        ),
        line(
            "gpt-4o-mini",
            TokenClass::Output,
            Some(5_000_000),
            Some("3"),
        ),
    ]);
    let r = reconcile(&[inv], &l, &opts());
    // Today's table agrees with the provider class by class...
    for c in [TokenClass::Input, TokenClass::CacheRead, TokenClass::Output] {
        assert_eq!(cell(&r, c).status, CellStatus::Matched, "{c:?}");
    }
    assert_eq!(
        cell(&r, TokenClass::Output).gateway.amount,
        Some(Money::from_nanos(3_000_000_000))
    );
    // ...and the ledger's total does not: said on the group cell, with the rows' hash.
    let total = r.cells.iter().find(|c| c.class.is_none()).unwrap();
    assert_eq!(total.kinds, vec![DriftKind::Amount]);
    assert_eq!(total.gateway.amount, Some(Money::from_nanos(7_000_000_000)));
    assert!(
        total.explanation.contains("other rates than today"),
        "{}",
        total.explanation
    );
    assert!(
        total.explanation.contains("0ld0ld0ld0ld0ld0"),
        "{}",
        total.explanation
    );
    assert_eq!(total.price_hashes, vec!["0ld0ld0ld0ld0ld0".to_string()]);
}
