use super::*;
use crate::attribution::Attribution;
use crate::ledger::{
    CacheRecord, Endpoint, PrefixRecord, PruneRecord, Route, RouteMode, RouteRecord,
};
use crate::pricing::PriceTable;
use crate::usage::UsageSource;
use proptest::prelude::*;

const CATALOG: &str = r#"{
  "heavy": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
            "cache_read_input_token_cost": 1.25e-06,
            "input_cost_per_token_priority": 4.25e-06, "output_cost_per_token_priority": 1.7e-05,
            "input_cost_per_token_flex": 1.25e-06, "output_cost_per_token_flex": 5e-06},
  "light": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07,
            "cache_read_input_token_cost": 7.5e-08},
  "claude": {"input_cost_per_token": 1e-06, "output_cost_per_token": 5e-06,
             "cache_read_input_token_cost": 1e-07,
             "cache_creation_input_token_cost": 1.25e-06,
             "cache_creation_input_token_cost_above_1hr": 2e-06}
}"#;

fn table() -> PriceTable {
    PriceTable::from_catalog_json(CATALOG, "test").unwrap()
}

fn catalog(t: &PriceTable, hash: &str) -> Catalog {
    let mut targets = HashMap::new();
    for (name, min) in [
        ("heavy", Some(1024)),
        ("light", Some(1024)),
        ("claude", Some(2048)),
    ] {
        targets.insert(
            name.to_string(),
            Target {
                price: t.get(name).cloned(),
                cache_min_tokens: min,
                encoding: None,
            },
        );
    }
    Catalog {
        hash: hash.to_string(),
        targets,
    }
}

/// A row as the meter writes it: priced at `t` for its deployment and service tier.
fn row(
    t: &PriceTable,
    i: usize,
    deployment: &str,
    usage: Usage,
    service_tier: Option<&str>,
) -> LedgerRow {
    let charged = cost(&usage, t.get(deployment).unwrap(), service_tier)
        .unwrap()
        .charged;
    LedgerRow {
        ts_ms: 1_700_000_000_000 + i as i64 * 1000,
        request_id: format!("r{i}"),
        endpoint: Endpoint::ChatCompletions,
        attribution: Attribution {
            key_id: Some("k1".into()),
            agent: Some(format!("agent-{}", i % 3)),
            task: Some(format!("task-{}", i % 5)),
            ..Attribution::default()
        },
        route: Route {
            requested_model: deployment.into(),
            deployment: deployment.into(),
            upstream: "sim".into(),
            upstream_model: deployment.into(),
        },
        usage,
        usage_source: UsageSource::Reported,
        cost: charged,
        cost_without_cache: charged,
        priced: true,
        price_hash: t.hash().to_string(),
        latency_us: 1000,
        ttft_us: None,
        status: 200,
        error_code: None,
        stream: false,
        partial: false,
        routing: None,
        cache: None,
        prune: None,
        usage_suspect: false,
        service_tier: service_tier.map(str::to_string),
        prefix: None,
    }
}

fn usage(input: u64, cache_read: u64, output: u64) -> Usage {
    Usage {
        input,
        cache_read,
        output,
        ..Usage::default()
    }
}

fn routed(mut r: LedgerRow, score_ppm: u32, tier: u32, ladder: &[&str]) -> LedgerRow {
    r.routing = Some(RouteRecord {
        name: "auto".into(),
        tier,
        tier_deployment: ladder[tier as usize].into(),
        score_ppm,
        mode: RouteMode::Enforce,
        heavy_cost: Money::ZERO,
        tier_cost: r.cost,
        escalated: None,
        sample: None,
    });
    r
}

fn replay(policy: Policy, cat: Catalog, rows: &[LedgerRow], by: Option<GroupBy>) -> ReplayReport {
    let mut r = Replay::new(policy, cat, by);
    for row in rows {
        r.add(row);
    }
    let ok: BTreeSet<String> = (0..5).map(|i| format!("task-{i}")).collect();
    r.finish(&ok)
}

#[test]
fn swap_reprices_with_token_ratio_rounded_up() {
    let t = table();
    let rows = vec![row(&t, 0, "heavy", usage(1000, 0, 100), None)];
    assert_eq!(rows[0].cost, Money::from_nanos(3_500_000));
    let policy = Policy {
        swaps: vec![Swap {
            from: "heavy".into(),
            to: "claude".into(),
            token_ratio_ppm: 1_100_000,
            lighter: true,
        }],
        ..Policy::default()
    };
    let rep = replay(policy, catalog(&t, t.hash()), &rows, None);
    // 1100 × $1/M + 110 × $5/M = 1,100,000 + 550,000 nanos.
    assert_eq!(rep.total.cost_policy, Money::from_nanos(1_650_000));
    assert_eq!(rep.total.saved, Money::from_nanos(1_850_000));
    assert_eq!((rep.total.swapped, rep.total.lighter), (1, 1));
    assert_eq!((rep.total.tasks_succeeded, rep.total.tasks_at_risk), (1, 1));
    assert_eq!(scale(3, 1_100_000), 4, "rounded up");
}

#[test]
fn routing_threshold_moves_rows_and_counts_risk() {
    let t = table();
    let ladder = ["light", "heavy"];
    // Scores 0.2 (ran light), 0.5 and 0.8 (ran heavy).
    let rows = vec![
        routed(
            row(&t, 0, "light", usage(500, 0, 50), None),
            200_000,
            0,
            &ladder,
        ),
        routed(
            row(&t, 1, "heavy", usage(500, 0, 50), None),
            500_000,
            1,
            &ladder,
        ),
        routed(
            row(&t, 2, "heavy", usage(500, 0, 50), None),
            800_000,
            1,
            &ladder,
        ),
    ];
    let mut routes = BTreeMap::new();
    routes.insert(
        "auto".to_string(),
        RoutePolicy {
            tiers: vec!["light".into(), "heavy".into()],
            policy: TierPolicy::two_tier(0.6).unwrap(),
        },
    );
    let policy = Policy {
        routes,
        ..Policy::default()
    };
    let rep = replay(policy, catalog(&t, t.hash()), &rows, Some(GroupBy::Agent));
    assert_eq!(rep.total.lighter, 1);
    assert_eq!(rep.total.heavier, 0);
    let heavy = cost(&usage(500, 0, 50), t.get("heavy").unwrap(), None)
        .unwrap()
        .charged;
    let light = cost(&usage(500, 0, 50), t.get("light").unwrap(), None)
        .unwrap()
        .charged;
    assert_eq!(rep.total.saved.nanos(), heavy.nanos() - light.nanos());
    // task-1 (row 1) moved lighter; three successful tasks seen.
    assert_eq!((rep.total.tasks_succeeded, rep.total.tasks_at_risk), (3, 1));
    assert_eq!(rep.total.quality_risk_ppm, 333_333);
    let g1 = rep.groups.iter().find(|g| g.key == "agent-1").unwrap();
    assert_eq!((g1.tasks_at_risk, g1.lighter), (1, 1));
}

#[test]
fn prompt_cache_on_simulates_writes_then_reads_within_ttl() {
    let t = table();
    let mut rows = Vec::new();
    // Same 3,000-token prefix at t=0, +1 s, +2 s, then 10 minutes later (5m TTL lapsed).
    for (i, gap) in [0i64, 1_000, 2_000, 602_000].into_iter().enumerate() {
        let mut r = row(&t, i, "claude", usage(4000, 0, 100), None);
        r.ts_ms = 1_700_000_000_000 + gap;
        r.prefix = Some(PrefixRecord {
            hash: "ab".repeat(16),
            tokens: 3000,
        });
        rows.push(r);
    }
    // A short prefix (below claude's 2,048 minimum) never caches.
    let mut short = row(&t, 9, "claude", usage(1500, 0, 10), None);
    short.ts_ms = 1_700_000_000_500;
    short.prefix = Some(PrefixRecord {
        hash: "cd".repeat(16),
        tokens: 1500,
    });
    rows.insert(1, short);
    let policy = Policy {
        prompt_cache: PromptCacheLever::On(Ttl::FiveMinutes),
        ..Policy::default()
    };
    let mut r = Replay::new(policy, catalog(&t, t.hash()), None);
    let out: Vec<RowReplay> = rows.iter().map(|row| r.add(row)).collect();
    assert!(out[0].cache_write && !out[0].cache_read);
    assert!(
        !out[1].cache_write && !out[1].cache_read,
        "below the minimum"
    );
    assert!(out[2].cache_read && out[3].cache_read);
    assert!(out[4].cache_write, "TTL lapsed: written again");
    assert_eq!(out[2].usage, usage(1000, 3000, 100));
    assert_eq!(out[0].usage.cache_write_5m, 3000);
    let price = t.get("claude").unwrap();
    assert_eq!(
        out[2].cost,
        cost(&out[2].usage, price, None).unwrap().charged
    );
    let rep = r.finish(&BTreeSet::new());
    assert_eq!((rep.total.cache_reads, rep.total.cache_writes), (2, 2));
    assert!(rep.total.saved.nanos() > 0);
}

#[test]
fn a_recorded_cache_read_keeps_the_prefix_warm_for_the_next_row() {
    let t = table();
    let prefix = PrefixRecord {
        hash: "ef".repeat(16),
        tokens: 3000,
    };
    let mut warm = row(&t, 0, "claude", usage(1000, 3000, 10), None);
    warm.prefix = Some(prefix.clone());
    let mut cold = row(&t, 1, "claude", usage(4000, 0, 10), None);
    cold.prefix = Some(prefix);
    let mut r = Replay::new(
        Policy {
            prompt_cache: PromptCacheLever::On(Ttl::FiveMinutes),
            ..Policy::default()
        },
        catalog(&t, t.hash()),
        None,
    );
    let a = r.add(&warm);
    assert_eq!(
        (a.cost, a.usage),
        (warm.cost, warm.usage),
        "kept as recorded"
    );
    let b = r.add(&cold);
    assert!(b.cache_read && !b.cache_write);
    assert_eq!(b.usage, usage(1000, 3000, 10));
}

#[test]
fn prompt_cache_off_prices_every_prompt_token_as_input() {
    let t = table();
    let rows = vec![row(&t, 0, "heavy", usage(100, 2000, 10), None)];
    let policy = Policy {
        prompt_cache: PromptCacheLever::Off,
        ..Policy::default()
    };
    let rep = replay(policy, catalog(&t, t.hash()), &rows, None);
    let flat = cost(&usage(2100, 0, 10), t.get("heavy").unwrap(), None).unwrap();
    assert_eq!(rep.total.cost_policy, flat.charged);
    assert!(rep.total.saved.is_negative());
}

#[test]
fn response_cache_off_and_threshold() {
    let t = table();
    let mut exact = row(&t, 0, "light", usage(300, 0, 30), None);
    let mut sem_low = row(&t, 1, "light", usage(300, 0, 30), None);
    let mut sem_high = row(&t, 2, "light", usage(300, 0, 30), None);
    let paid = exact.cost;
    for (r, kind, sim) in [
        (&mut exact, CacheKind::ResponseExact, None),
        (&mut sem_low, CacheKind::ResponseSemantic, Some(910_000)),
        (&mut sem_high, CacheKind::ResponseSemantic, Some(990_000)),
    ] {
        r.cache = Some(CacheRecord {
            kind,
            similarity_ppm: sim,
            avoided_cost: r.cost,
            expected_write: 0,
            expected_read: 0,
            miss: false,
        });
        r.cost = Money::ZERO;
    }
    let rows = vec![exact, sem_low, sem_high];
    let off = replay(
        Policy {
            response_cache: ResponseCacheLever::Off,
            ..Policy::default()
        },
        catalog(&t, t.hash()),
        &rows,
        None,
    );
    assert_eq!(off.total.hits_lost, 3);
    assert_eq!(off.total.cost_policy.nanos(), 3 * paid.nanos());
    let stricter = replay(
        Policy {
            response_cache: ResponseCacheLever::MinSimilarity(950_000),
            ..Policy::default()
        },
        catalog(&t, t.hash()),
        &rows,
        None,
    );
    assert_eq!(stricter.total.hits_lost, 1);
    assert_eq!(stricter.total.cost_policy, paid);
}

#[test]
fn pruning_off_sends_the_removed_tokens() {
    let t = table();
    let mut r = row(&t, 0, "heavy", usage(1000, 0, 50), None);
    r.prune = Some(PruneRecord {
        tokens_before: 5000,
        tokens_after: 1000,
        cost_without: Money::ZERO,
    });
    let rep = replay(
        Policy {
            pruning: PruningLever::Off,
            ..Policy::default()
        },
        catalog(&t, t.hash()),
        &[r],
        None,
    );
    let unpruned = cost(&usage(5000, 0, 50), t.get("heavy").unwrap(), None).unwrap();
    assert_eq!(rep.total.cost_policy, unpruned.charged);
}

#[test]
fn unknown_target_is_flagged_and_kept_at_recorded_cost() {
    let t = table();
    let rows = vec![row(&t, 0, "heavy", usage(1000, 0, 100), None)];
    let policy = Policy {
        swaps: vec![Swap {
            from: "*".into(),
            to: "nowhere".into(),
            token_ratio_ppm: PPM,
            lighter: false,
        }],
        ..Policy::default()
    };
    let rep = replay(policy, catalog(&t, t.hash()), &rows, None);
    assert_eq!(rep.total.unpriced, 1);
    assert_eq!(rep.total.cost_policy, rows[0].cost);
}

fn arb_row(t: &PriceTable) -> impl Strategy<Value = (usize, u8, u64, u64, u64, u64, u8, bool)> {
    let _ = t;
    (
        0usize..1000,
        0u8..3,
        0u64..300_000,
        0u64..50_000,
        0u64..20_000,
        0u64..5_000,
        0u8..3,
        any::<bool>(),
    )
}

proptest! {
    /// Replaying the current policy reproduces the recorded cost exactly, row by row and
    /// in total; re-pricing every row (another table hash, the same prices) too.
    #[test]
    fn current_policy_reproduces_recorded_cost(
        specs in proptest::collection::vec(arb_row(&table()), 1..60),
        by in 0usize..4,
    ) {
        let t = table();
        let names = ["heavy", "light", "claude"];
        let tiers = [None, Some("priority"), Some("flex")];
        let mut rows = Vec::new();
        for (n, (i, d, input, read, out, reasoning, tier, write)) in specs.into_iter().enumerate() {
            let dep = names[d as usize];
            let u = Usage {
                input,
                cache_read: read,
                cache_write_5m: if write { read / 3 } else { 0 },
                cache_write_1h: if write { read / 7 } else { 0 },
                output: out,
                reasoning: reasoning.min(out),
            };
            let mut r = row(&t, i, dep, u, tiers[tier as usize]);
            r.ts_ms += n as i64;
            r.prefix = Some(PrefixRecord { hash: format!("{:032x}", i % 7), tokens: input / 2 });
            if i % 4 == 0 {
                r = routed(r, (i * 997 % 1_000_000) as u32, u32::from(dep == "heavy"), &["light", "heavy"]);
            }
            rows.push(r);
        }
        let recorded: i128 = rows.iter().map(|r| i128::from(r.cost.nanos())).sum();
        let by = [None, Some(GroupBy::Agent), Some(GroupBy::Model), Some(GroupBy::Route)][by];
        for hash in [t.hash().to_string(), "another-table".to_string()] {
            let mut rep = Replay::new(Policy::default(), catalog(&t, &hash), by);
            for r in &rows {
                let out = rep.add(r);
                prop_assert_eq!(out.cost, r.cost);
                prop_assert_eq!(out.usage, r.usage);
            }
            let rep = rep.finish(&BTreeSet::new());
            prop_assert_eq!(i128::from(rep.total.cost_policy.nanos()), recorded);
            prop_assert_eq!(rep.total.saved, Money::ZERO);
            let groups: i128 = rep.groups.iter().map(|g| i128::from(g.cost_policy.nanos())).sum();
            if by.is_some() {
                prop_assert_eq!(groups, recorded);
            }
            prop_assert_eq!(rep.total.unpriced, 0);
        }
    }
}
