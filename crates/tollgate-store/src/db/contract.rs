//! One contract, run against every store: SQLite always, PostgreSQL when
//! `TOLLGATE_TEST_POSTGRES_URL` is set (CI sets it; the PostgreSQL runs say when they are
//! skipped). Each PostgreSQL run gets a fresh schema with a random name, dropped after
//! (even when the body panics), so runs sharing one server never collide.
//!
//! The same bodies run on both; `reports_are_identical_on_sqlite_and_postgres` then puts
//! the same varied rows into both and compares every report and view, value for value.
//! `postgres_restart_keeps_every_row` stops and starts the real server and runs only with
//! `TOLLGATE_TEST_PG_RESTART=1` as well (it disturbs everyone using that server).

use super::postgres::PostgresStore;
use super::*;
use crate::config::{PostgresSettings, WriteMethod};
use crate::ledger::tests::row;
use crate::ledger::{Durability, LedgerConfig};
use futures_util::FutureExt;
use std::path::{Path, PathBuf};
use tollgate_domain::budget::ScopeKind;
use tollgate_domain::ledger::{
    CacheKind, Endpoint, LedgerRow, RouteMode, RouteRecord, RouteSample,
};
use tollgate_domain::outcome::{OutcomeStatus, ValueBasis};
use tollgate_domain::value::Mechanism;

pub(crate) fn pg_url() -> Option<String> {
    match std::env::var("TOLLGATE_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("skipped: TOLLGATE_TEST_POSTGRES_URL is not set");
            None
        }
    }
}

fn unique_schema(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut s = format!(
        "tg_test_{}_{:x}_{}",
        std::process::id(),
        nanos ^ u128::from(rand::random::<u64>()),
        name
    );
    s.truncate(63);
    s
}

/// Where a PostgreSQL test body runs: its schema, and a directory for its spool.
pub(crate) struct PgCtx {
    pub url: String,
    pub schema: String,
    pub dir: tempfile::TempDir,
    pub method: WriteMethod,
}

impl PgCtx {
    pub fn settings(&self) -> PostgresSettings {
        let mut s = PostgresSettings::new(&self.url, self.dir.path().join("ledger.spool"));
        s.schema = Some(self.schema.clone());
        s.write_method = self.method;
        s
    }
}

/// Run `body` on a fresh schema and drop it afterwards, whatever happens in `body`.
pub(crate) async fn on_postgres(
    url: &str,
    name: &str,
    method: WriteMethod,
    body: impl AsyncFnOnce(Store, &PgCtx),
) {
    let ctx = PgCtx {
        url: url.to_string(),
        schema: unique_schema(name),
        dir: tempfile::tempdir().unwrap(),
        method,
    };
    let store = PostgresStore::open(&ctx.settings()).await.unwrap();
    let outcome = std::panic::AssertUnwindSafe(body(Store::Postgres(store.clone()), &ctx))
        .catch_unwind()
        .await;
    if let Err(e) = store.drop_schema().await {
        eprintln!("could not drop test schema {}: {e}", ctx.schema);
    }
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

async fn sqlite() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("contract.db")).unwrap();
    (dir, Store::Sqlite(s))
}

async fn join(writer: LedgerWriter) {
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// The bodies.

async fn keys_are_created_listed_and_revoked(s: &Store) {
    let (k, secret) = s
        .create_key(
            &NewKey {
                team: Some("t".into()),
                agent: Some("a".into()),
                user: Some("u".into()),
                models: vec!["gpt-4o".into()],
                ..NewKey::default()
            },
            5,
            None,
        )
        .await
        .unwrap();
    assert!(secret.starts_with(crate::keys::SECRET_PREFIX));
    assert_eq!(k.hash, hex::encode(crate::keys::hash_secret(&secret)));
    let sealer = SecretSealer::new("master").unwrap();
    let (sealed, sealed_secret) = s
        .create_key(&NewKey::default(), 6, Some(&sealer))
        .await
        .unwrap();
    let all = s.list_keys().await.unwrap();
    assert_eq!(all, vec![k.clone(), sealed.clone()]);
    assert_eq!(all[0].user.as_deref(), Some("u"));
    assert_eq!(
        sealer
            .open(&sealed.id, all[1].sealed_secret.as_deref().unwrap())
            .as_deref(),
        Some(sealed_secret.as_str())
    );
    assert!(all[0].allows_model("gpt-4o") && !all[0].allows_model("o3"));
    assert!(s.revoke_key(&k.id, 9).await.unwrap());
    assert!(!s.revoke_key(&k.id, 10).await.unwrap());
    assert!(!s.revoke_key("tgk_nope", 10).await.unwrap());
    assert_eq!(s.list_keys().await.unwrap()[0].revoked_ms, Some(9));
}

async fn budgets_round_trip_and_spend_sums_the_ledger(s: &Store) {
    let rule = BudgetRule {
        scope: ScopeSpec::parse("team:team").unwrap(),
        period: Period::Day,
        limit: Money::from_nanos(5_000),
        hard: true,
        alert_at: vec![50, 100],
    };
    s.upsert_budget(&rule, 1).await.unwrap();
    let mut softer = rule.clone();
    softer.hard = false;
    s.upsert_budget(&softer, 2).await.unwrap();
    let org_rule = BudgetRule {
        scope: ScopeSpec::parse("org").unwrap(),
        period: Period::Month,
        limit: Money::from_nanos(1),
        hard: false,
        alert_at: vec![],
    };
    s.upsert_budget(&org_rule, 3).await.unwrap();
    assert_eq!(
        s.list_budgets().await.unwrap(),
        vec![org_rule.clone(), softer]
    );

    let mut rows: Vec<_> = (0..9).map(row).collect();
    rows[0].attribution.user = Some("dana".into());
    s.insert_rows(rows.clone()).await.unwrap();
    let all: Money = rows.iter().map(|r| r.cost).sum();
    let org = s.spend_by_scope(&org_rule.scope, 0, None).await.unwrap();
    assert_eq!(org, vec![("org".to_string(), all)]);
    let team = s.spend_by_scope(&rule.scope, 0, None).await.unwrap();
    assert_eq!(team, vec![("team".to_string(), all)]);
    let mut agents = s
        .spend_by_scope(&ScopeSpec::parse("agent:*").unwrap(), 0, None)
        .await
        .unwrap();
    agents.sort();
    assert_eq!(agents.len(), 3);
    assert_eq!(agents.iter().map(|(_, m)| *m).sum::<Money>(), all);
    let users = s
        .spend_by_scope(&ScopeSpec::parse("user:*").unwrap(), 0, None)
        .await
        .unwrap();
    assert_eq!(users, vec![("dana".to_string(), rows[0].cost)]);
    assert_eq!(ScopeSpec::parse("user:dana").unwrap().kind, ScopeKind::User);
    let dana = s
        .spend_by_scope(&ScopeSpec::parse("user:dana").unwrap(), 0, None)
        .await
        .unwrap();
    assert_eq!(dana, users);
    // The window bounds apply.
    let none = s
        .spend_by_scope(&rule.scope, 0, Some(1_700_000_000_000))
        .await
        .unwrap();
    assert_eq!(none[0].1, Money::ZERO);
    assert!(s.delete_budget(&rule.scope, Period::Day).await.unwrap());
    assert!(!s.delete_budget(&rule.scope, Period::Day).await.unwrap());
    assert_eq!(s.list_budgets().await.unwrap(), vec![org_rule]);
}

async fn halts_incidents_releases_and_alerts(s: &Store) {
    let ev = serde_json::json!({"calls": 5, "repeated": "search no results"});
    let id = s
        .record_incident(
            &NewIncident {
                task: "t1",
                agent: Some("a"),
                kind: "loop",
                reason: "loop detected",
                evidence: &ev,
                dry_run: false,
                request_id: Some("req_1"),
            },
            10,
        )
        .await
        .unwrap();
    let halted = s.halted_tasks().await.unwrap();
    assert_eq!(halted.len(), 1);
    assert_eq!(halted[0].incident_id, Some(id));
    assert!(halted[0].is_halted() && !halted[0].recorded_elsewhere);
    let inc = s.incidents(Some("t1"), 10).await.unwrap();
    assert_eq!(
        (inc[0].id, &inc[0].evidence, inc[0].request_id.as_deref()),
        (id, &ev, Some("req_1"))
    );
    assert!(s.incidents(Some("other"), 10).await.unwrap().is_empty());
    // A dry run flags, does not halt.
    s.record_incident(
        &NewIncident {
            task: "t0",
            agent: None,
            kind: "cost",
            reason: "would halt",
            evidence: &ev,
            dry_run: true,
            request_id: None,
        },
        11,
    )
    .await
    .unwrap();
    assert_eq!(s.incidents(None, 10).await.unwrap().len(), 2);
    assert_eq!(s.halted_tasks().await.unwrap().len(), 1);
    assert_eq!(
        s.task_record("t0").await.unwrap().unwrap().status,
        "flagged"
    );
    assert!(s.release_task("t1", 20).await.unwrap());
    assert!(!s.release_task("t1", 21).await.unwrap());
    assert!(s.halted_tasks().await.unwrap().is_empty());
    assert_eq!(
        s.task_record("t1").await.unwrap().unwrap().released_ms,
        Some(20)
    );

    // Halts recorded by another replica.
    let shared = |task: &str, ms: i64| KnownHalt {
        task: task.into(),
        halted_ms: ms,
        reason: "loop detected".into(),
        kind: "loop".into(),
        agent: Some("bot".into()),
    };
    assert!(s.record_shared_halt(&shared("t2", 30)).await.unwrap());
    assert!(!s.record_shared_halt(&shared("t2", 31)).await.unwrap());
    let r = s.task_record("t2").await.unwrap().unwrap();
    assert!(r.is_halted() && r.recorded_elsewhere);
    assert_eq!((r.halted_ms, r.incident_id), (30, None));
    // A released task halted again elsewhere is halted again; a halt recorded here
    // is never replaced.
    assert!(s.record_shared_halt(&shared("t1", 40)).await.unwrap());
    assert!(s.task_record("t1").await.unwrap().unwrap().is_halted());
    assert!(s.release_task("t1", 41).await.unwrap());
    let id3 = s
        .record_incident(
            &NewIncident {
                task: "t3",
                agent: None,
                kind: "iterations",
                reason: "too many calls",
                evidence: &ev,
                dry_run: false,
                request_id: None,
            },
            50,
        )
        .await
        .unwrap();
    assert!(!s.record_shared_halt(&shared("t3", 51)).await.unwrap());
    let r3 = s.task_record("t3").await.unwrap().unwrap();
    assert_eq!((r3.incident_id, r3.halted_ms), (Some(id3), 50));
    let guarded = s.guarded_tasks(10).await.unwrap();
    assert_eq!(
        guarded.iter().map(|t| t.task.as_str()).collect::<Vec<_>>(),
        ["t3", "t1", "t2", "t0"]
    );
    assert_eq!(s.guarded_tasks(2).await.unwrap().len(), 2);
    assert!(s.task_record("never").await.unwrap().is_none());

    let a = s
        .insert_alert("task_halted", "t1", "halted", &ev, "pending", 11)
        .await
        .unwrap();
    let b = s
        .insert_alert("budget_threshold", "org day", "50%", &ev, "no_webhook", 12)
        .await
        .unwrap();
    assert!(b > a);
    s.update_alert(a, "delivered", 2, Some("HTTP 500"), Some(12))
        .await
        .unwrap();
    let al = s.alerts(Some("t1"), 10).await.unwrap();
    assert_eq!(
        (
            al[0].status.as_str(),
            al[0].attempts,
            al[0].last_error.as_deref(),
            al[0].delivered_ms
        ),
        ("delivered", 2, Some("HTTP 500"), Some(12))
    );
    let all = s.alerts(None, 10).await.unwrap();
    assert_eq!(all.iter().map(|a| a.id).collect::<Vec<_>>(), [b, a]);

    // Per-task usage from the ledger.
    s.insert_rows((0..10).map(row).collect()).await.unwrap();
    let u = s.task_usage(None, 0, 10).await.unwrap();
    assert_eq!(u.len(), 5);
    assert_eq!(u.iter().map(|t| t.calls).sum::<u64>(), 10);
    // Most recent first: task-4 (row 9) then task-3 (row 8).
    assert_eq!(
        (u[0].task.as_str(), u[1].task.as_str()),
        ("task-4", "task-3")
    );
    let one = s.task_usage(Some("task-1"), 0, 10).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(
        one[0].cost,
        Money::from_nanos(row(1).cost.nanos() + row(6).cost.nanos())
    );
    assert_eq!(
        (one[0].first_ms, one[0].last_ms),
        (row(1).ts_ms, row(6).ts_ms)
    );
    // MAX(agent): agent-1 (row 1) and agent-0 (row 6).
    assert_eq!(one[0].agent.as_deref(), Some("agent-1"));
}

async fn outcomes_are_idempotent_and_corrections_recorded(s: &Store) {
    let outcome = |status, value: &str| TaskOutcome {
        task: "t-1".into(),
        status,
        basis: ValueBasis::Usd {
            value: Money::parse_usd(value).unwrap(),
        },
        labels: BTreeMap::from([("reviewer".to_string(), "dana".to_string())]),
    };
    let first = s
        .record_outcome(&outcome(OutcomeStatus::Success, "10"), "key:k1", 1)
        .await
        .unwrap();
    assert!(first.changed);
    assert_eq!(first.current.revision, 1);
    let again = s
        .record_outcome(&outcome(OutcomeStatus::Success, "10"), "key:k1", 2)
        .await
        .unwrap();
    assert!(!again.changed);
    assert_eq!(again.current.recorded_ms, 1);
    let fix = s
        .record_outcome(&outcome(OutcomeStatus::Failure, "0"), "master", 3)
        .await
        .unwrap();
    assert!(fix.changed);
    assert_eq!(fix.current.revision, 2);
    assert_eq!(fix.previous.unwrap().outcome.status, OutcomeStatus::Success);
    let now = s.task_outcome("t-1").await.unwrap().unwrap();
    assert_eq!(now.outcome.status, OutcomeStatus::Failure);
    assert_eq!(now.recorded_by, "master");
    assert_eq!(now.outcome.labels["reviewer"], "dana");
    let h = s.outcome_history("t-1").await.unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].value, Money::parse_usd("10").unwrap());
    assert_eq!(h[1].revision, 2);
    assert!(s.task_outcome("nope").await.unwrap().is_none());

    // Outcomes of the tasks with calls in a window, and who spent on a task.
    let mut r = row(1);
    r.attribution.task = Some("t-1".into());
    s.insert_rows(vec![r.clone(), row(2)]).await.unwrap();
    let w = s.outcomes_in_window(0, i64::MAX).await.unwrap();
    assert_eq!(w.keys().collect::<Vec<_>>(), ["t-1"]);
    assert!(s.outcomes_in_window(0, 1).await.unwrap().is_empty());
    let parties = s.task_parties("t-1").await.unwrap();
    assert_eq!(
        parties,
        [TaskParty {
            key_id: Some("k".into()),
            agent: Some("agent-1".into()),
            team: Some("team".into()),
        }]
    );
}

async fn the_writer_writes_every_row_once(s: &Store) {
    for (k, durability) in [Durability::Batched, Durability::Strict]
        .into_iter()
        .enumerate()
    {
        let base = k * 1000;
        let cfg = LedgerConfig {
            durability,
            channel_capacity: 8, // tiny: exercises backpressure
            max_batch: 16,
            replica: Some("contract".into()),
        };
        let (ledger, writer) = s.start_ledger(&cfg).unwrap();
        let mut joins = tokio::task::JoinSet::new();
        for t in 0..8 {
            let l = ledger.clone();
            joins.spawn(async move {
                for i in 0..100 {
                    l.record(row(base + t * 100 + i)).await.unwrap();
                }
            });
        }
        while let Some(j) = joins.join_next().await {
            j.unwrap();
        }
        if durability == Durability::Strict {
            // Strict: committed (visible to another connection) once `record` returns.
            ledger.record(row(base + 900)).await.unwrap();
            assert!(
                s.ledger_row(&format!("req-{}", base + 900))
                    .await
                    .unwrap()
                    .is_some()
            );
        }
        // A retried row (same request id) is not counted twice.
        ledger.record(row(base + 5)).await.unwrap();
        let stats = writer.stats().clone();
        drop(ledger);
        join(writer).await;
        let expected = 800 + u64::from(durability == Durability::Strict);
        assert_eq!(
            stats
                .rows_written
                .load(std::sync::atomic::Ordering::Relaxed),
            expected + 1,
            "{durability:?}"
        );
    }
    assert_eq!(s.ledger_count().await.unwrap(), 1601);
    assert_eq!(s.ledger_row("req-7").await.unwrap().unwrap(), row(7));
    let plain = s.ledger_row("req-8").await.unwrap().unwrap();
    assert_eq!((plain, row(8).routing), (row(8), None));
    assert!(s.ledger_row("req-none").await.unwrap().is_none());
    // Two writer streams, every number accounted for (the duplicate included).
    let seqs = s.ledger_sequences(0, i64::MAX).await.unwrap();
    assert_eq!(seqs.len(), 2, "{seqs:?}");
    let mut sizes: Vec<u64> = seqs.iter().map(|q| q.rows).collect();
    sizes.sort();
    assert_eq!(sizes, [801, 802]);
    for q in &seqs {
        assert!(q.replica_id.starts_with("contract-"));
        assert_eq!((q.first_seq, q.last_seq as u64), (1, q.rows));
        assert!(q.gaps.is_empty() && q.missing() == 0, "{q:?}");
    }
    let rows = s.ledger_rows(row(0).ts_ms, row(3).ts_ms, 10).await.unwrap();
    assert_eq!(rows, [row(0), row(1), row(2)]);
}

/// Keyset pages cover the window exactly once, oldest first, even across rows that
/// share a millisecond; the service tier and stable prefix round-trip (migration 9).
async fn ledger_pages_cover_the_window_once(s: &Store) {
    let mut rows: Vec<LedgerRow> = (0..23).map(row).collect();
    let t10 = row(10).ts_ms;
    for r in rows.iter_mut().skip(10).take(6) {
        r.ts_ms = t10; // six rows in one millisecond, across page boundaries
    }
    assert_eq!(s.insert_rows(rows.clone()).await.unwrap(), 23);
    let (since, until) = (row(0).ts_ms, row(22).ts_ms + 1);
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = s.ledger_page(since, until, after, 4).await.unwrap();
        pages += 1;
        seen.extend(page.rows);
        match page.next {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 6, "5 full pages of 4, then the last 3");
    let mut want = rows.clone();
    want.sort_by_key(|r| r.ts_ms);
    assert_eq!(seen.len(), 23);
    let ids = |v: &[LedgerRow]| {
        let mut x: Vec<String> = v.iter().map(|r| r.request_id.clone()).collect();
        x.sort();
        x
    };
    assert_eq!(ids(&seen), ids(&want));
    assert!(seen.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
    for r in &seen {
        let i: usize = r.request_id.trim_start_matches("req-").parse().unwrap();
        assert_eq!(r, &rows[i]);
    }
    assert!(
        seen.iter()
            .any(|r| r.service_tier.is_some() && r.prefix.is_some())
    );
    let empty = s.ledger_page(until, until + 10, None, 4).await.unwrap();
    assert!(empty.rows.is_empty() && empty.next.is_none());
}

async fn a_missing_row_shows_as_a_gap(s: &Store) {
    let cfg = LedgerConfig {
        replica: Some("gaps".into()),
        ..LedgerConfig::default()
    };
    let (ledger, writer) = s.start_ledger(&cfg).unwrap();
    for i in 0..5 {
        ledger.record(row(i)).await.unwrap();
    }
    drop(ledger);
    join(writer).await;
    let seqs = s.ledger_sequences(0, i64::MAX).await.unwrap();
    assert_eq!((seqs[0].rows, seqs[0].missing()), (5, 0));
    // Rows 2 and 3 (numbers 3 and 4) go missing: one gap of two.
    let (lo, hi) = (row(2).ts_ms, row(3).ts_ms);
    match s {
        Store::Sqlite(sq) => {
            let c = sq.connect(crate::sqlite::Sync::Normal).unwrap();
            c.execute(
                "DELETE FROM ledger WHERE ts_ms >= ?1 AND ts_ms <= ?2",
                rusqlite::params![lo, hi],
            )
            .unwrap();
        }
        Store::Postgres(pg) => {
            let c = pg.conn().await.unwrap();
            c.execute(
                "DELETE FROM ledger WHERE ts_ms >= $1 AND ts_ms <= $2",
                &[&lo, &hi],
            )
            .await
            .unwrap();
        }
    }
    let seqs = s.ledger_sequences(0, i64::MAX).await.unwrap();
    assert_eq!(seqs[0].gaps, [(3, 4)]);
    assert_eq!(
        (seqs[0].rows, seqs[0].first_seq, seqs[0].last_seq),
        (3, 1, 5)
    );
    assert_eq!(seqs[0].missing(), 2);
    assert!(s.ledger_sequences(0, 1).await.unwrap().is_empty());
}

async fn direct_inserts_are_idempotent(s: &Store) {
    let rows: Vec<_> = (0..20).map(row).collect();
    assert_eq!(s.insert_rows(rows.clone()).await.unwrap(), 20);
    assert_eq!(s.insert_rows(rows[..5].to_vec()).await.unwrap(), 0);
    let mut twice = vec![row(20), row(20), row(21)];
    twice[1].cost = Money::from_nanos(1);
    assert_eq!(s.insert_rows(twice).await.unwrap(), 2);
    assert_eq!(s.ledger_count().await.unwrap(), 22);
    // The first of two rows with one request id is the one kept.
    assert_eq!(s.ledger_row("req-20").await.unwrap().unwrap(), row(20));
    // Rows written outside the writer belong to no stream.
    assert!(s.ledger_sequences(0, i64::MAX).await.unwrap().is_empty());
}

async fn reports_sum_to_the_ledger(s: &Store) {
    let rows: Vec<_> = (0..30).map(row).collect();
    s.insert_rows(rows.clone()).await.unwrap();
    let expected: Money = rows.iter().map(|r| r.cost).sum();
    for g in GroupBy::ALL {
        let rep = s.usage_report(Some(g), 0, i64::MAX).await.unwrap();
        assert_eq!(rep.total.cost, expected);
        assert_eq!(rep.total.requests, 30);
        assert_eq!(
            rep.groups.iter().map(|g| g.cost).sum::<Money>(),
            expected,
            "{g:?}"
        );
        assert_eq!(rep.groups.iter().map(|g| g.requests).sum::<u64>(), 30);
    }
    let by_agent = s
        .usage_report(Some(GroupBy::Agent), 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(by_agent.groups.len(), 3);
    assert_eq!(by_agent.total.cached_tokens, 600);
    let none = s.usage_report(None, 0, 1).await.unwrap();
    assert_eq!((none.total.requests, none.total.cost), (0, Money::ZERO));

    s.record_outcome(
        &TaskOutcome {
            task: "task-1".into(),
            status: OutcomeStatus::Success,
            basis: ValueBasis::Usd {
                value: Money::from_nanos(1_000_000),
            },
            labels: BTreeMap::new(),
        },
        "test",
        1,
    )
    .await
    .unwrap();
    for g in [
        GroupBy::Agent,
        GroupBy::Model,
        GroupBy::Route,
        GroupBy::Team,
    ] {
        let r = s.roi_report(g, 0, i64::MAX).await.unwrap();
        assert_eq!((r.total.tasks, r.total.succeeded, r.total.open), (5, 1, 4));
        assert_eq!(r.total.cost, expected);
        assert_eq!(r.total.value, Money::from_nanos(1_000_000));
        let v: Money = r.groups.iter().map(|g| g.1.value).sum();
        assert_eq!(v, r.total.value, "{g:?}");
    }
    let tasks = s.task_summaries(0, i64::MAX, 10).await.unwrap();
    assert_eq!(tasks.len(), 5);
    let t1 = tasks.iter().find(|t| t.task == "task-1").unwrap();
    assert_eq!(t1.status, Some(OutcomeStatus::Success));
    assert_eq!((t1.calls, t1.agents.len(), t1.duration_ms), (6, 3, 26));
    assert_eq!(t1.models, vec!["gpt-4o-2024-08-06".to_string()]);
    assert_eq!(s.task_summary("task-1").await.unwrap().as_ref(), Some(t1));
    assert!(s.task_summary("nope").await.unwrap().is_none());

    let r = s
        .savings_report(Some(GroupBy::Agent), 0, i64::MAX)
        .await
        .unwrap();
    // Every mechanism has a line, in the order of Mechanism::ALL, touched or not.
    assert_eq!(
        r.total.iter().map(|m| m.mechanism).collect::<Vec<_>>(),
        Mechanism::ALL.to_vec()
    );
    let line = |m: Mechanism| r.total.iter().find(|l| l.mechanism == m).unwrap();
    // Rows 0, 14, 28 were routed (enforce) against a heavy tier of 99 999 nanos.
    assert_eq!(line(Mechanism::Routing).requests, 3);
    assert_eq!(
        line(Mechanism::Routing).saved(),
        Money::from_nanos((99_999 - 1234) * 3 - 14 - 28)
    );
    assert_eq!(
        line(Mechanism::RoutingShadow).saved(),
        Money::from_nanos(234 * 2)
    );
    // Client-placed prompt caching: every row read 20 cached tokens, except the rows
    // whose breakpoints the gateway injected (every fifth from row 1), which count there.
    let rows: Vec<_> = (0..30).map(row).collect();
    let saved_on = |pick: &dyn Fn(&LedgerRow) -> bool, base: &dyn Fn(&LedgerRow) -> i64| {
        let picked: Vec<_> = rows.iter().filter(|r| pick(r)).collect();
        let saved: i64 = picked.iter().map(|r| base(r) - r.cost.nanos()).sum();
        (picked.len() as u64, Money::from_nanos(saved))
    };
    let kind = |k: CacheKind| move |r: &LedgerRow| r.cache.as_ref().is_some_and(|c| c.kind == k);
    let without = |r: &LedgerRow| r.cost_without_cache.nanos();
    let client = saved_on(
        &|r| r.cache.is_none() || !kind(CacheKind::PromptInjected)(r),
        &without,
    );
    assert_eq!(client, (24, Money::from_nanos(66 * 24)));
    let at = |m: Mechanism| (line(m).requests, line(m).saved());
    assert_eq!(at(Mechanism::PromptCache), client);
    assert_eq!(
        at(Mechanism::PromptCacheInjected),
        saved_on(&kind(CacheKind::PromptInjected), &without)
    );
    assert_eq!(line(Mechanism::PromptCacheInjected).misses, 3);
    let avoided = |r: &LedgerRow| r.cost.nanos() + r.cache.as_ref().unwrap().avoided_cost.nanos();
    assert_eq!(
        at(Mechanism::ResponseCacheSemantic),
        saved_on(&kind(CacheKind::ResponseSemantic), &avoided)
    );
    assert_eq!(
        at(Mechanism::ResponseCacheSemantic),
        (6, Money::from_nanos(777 * 6))
    );
    assert_eq!(at(Mechanism::ResponseCacheExact), (0, Money::ZERO));
    let pruned = saved_on(&|r| r.prune.is_some(), &|r| {
        r.prune.as_ref().unwrap().cost_without.nanos()
    });
    assert_eq!(pruned.0, 10);
    assert_eq!(at(Mechanism::Pruning), pruned);
    let by_group: i64 = r.groups.iter().map(|g| g.1[0].saved().nanos()).sum();
    assert_eq!(by_group, 66 * 24);

    let series = s
        .spend_series(GroupBy::Agent, 0, i64::MAX, 10)
        .await
        .unwrap();
    assert_eq!(series.iter().map(|p| p.cost).sum::<Money>(), expected);
    assert_eq!(series.iter().map(|p| p.requests).sum::<u64>(), 30);
    let hourly = s.hourly_usage(0, i64::MAX).await.unwrap();
    assert_eq!(hourly.iter().map(|h| h.cost).sum::<Money>(), expected);
    assert_eq!(
        s.ledger_span(0, i64::MAX).await.unwrap(),
        Some((row(0).ts_ms, row(29).ts_ms))
    );
    assert_eq!(s.ledger_span(0, 1).await.unwrap(), None);
}

async fn route_samples_join_their_row_and_outcome(s: &Store) {
    let mut with = row(14);
    if let Some(rt) = with.routing.as_mut() {
        rt.sample = Some(RouteSample {
            model: "embedded".into(),
            tokens: 5,
            features: "{\"b\": [1, 2]}".into(),
        });
    }
    s.insert_rows(vec![with.clone(), row(21)]).await.unwrap();
    s.insert_rows(vec![with]).await.unwrap();
    assert!(s.route_samples().await.unwrap()[0].outcome.is_none());
    s.record_outcome(
        &TaskOutcome {
            task: "task-4".into(),
            status: OutcomeStatus::Success,
            basis: ValueBasis::Usd {
                value: Money::from_nanos(1),
            },
            labels: Default::default(),
        },
        "test",
        1,
    )
    .await
    .unwrap();
    let samples = s.route_samples().await.unwrap();
    assert_eq!(samples.len(), 1, "one sample, written once");
    assert_eq!(
        samples[0],
        StoredSample {
            request_id: "req-14".into(),
            route_name: "auto".into(),
            task: Some("task-4".into()),
            model: "embedded".into(),
            features: "{\"b\": [1, 2]}".into(),
            deployment: "gpt-4o".into(),
            escalated: false,
            outcome: Some("success".into()),
        }
    );
}

async fn price_tables_register_once(s: &Store) {
    let sources = vec!["embedded".to_string(), "prices.json".to_string()];
    s.register_price_table("abcd", &sources, 10, 1)
        .await
        .unwrap();
    s.register_price_table("abcd", &sources, 11, 2)
        .await
        .unwrap();
    let first_seen = match s {
        Store::Sqlite(sq) => sq
            .connect(crate::sqlite::Sync::Normal)
            .unwrap()
            .query_row(
                "SELECT first_seen_ms, models, sources FROM price_tables WHERE hash = 'abcd'",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                },
            )
            .unwrap(),
        Store::Postgres(pg) => {
            let r = pg
                .conn()
                .await
                .unwrap()
                .query_one(
                    "SELECT first_seen_ms, models, sources FROM price_tables WHERE hash = 'abcd'",
                    &[],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1), r.get(2))
        }
    };
    assert_eq!(
        first_seen,
        (1, 10, "[\"embedded\",\"prices.json\"]".to_string())
    );
}

macro_rules! contract {
    ($($body:ident),* $(,)?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn sqlite_keeps_the_contract() {
            $(
                let (_dir, s) = sqlite().await;
                $body(&s).await;
            )*
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn postgres_keeps_the_contract() {
            let Some(url) = pg_url() else { return };
            $(
                on_postgres(&url, stringify!($body), WriteMethod::Copy, async |s, _| {
                    $body(&s).await
                })
                .await;
            )*
        }
    };
}

contract!(
    keys_are_created_listed_and_revoked,
    budgets_round_trip_and_spend_sums_the_ledger,
    halts_incidents_releases_and_alerts,
    outcomes_are_idempotent_and_corrections_recorded,
    the_writer_writes_every_row_once,
    a_missing_row_shows_as_a_gap,
    ledger_pages_cover_the_window_once,
    direct_inserts_are_idempotent,
    reports_sum_to_the_ledger,
    route_samples_join_their_row_and_outcome,
    price_tables_register_once,
);

/// The multi-row INSERT load path keeps the ledger contract too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_insert_method_keeps_the_ledger_contract() {
    let Some(url) = pg_url() else { return };
    on_postgres(&url, "insert_writer", WriteMethod::Insert, async |s, _| {
        the_writer_writes_every_row_once(&s).await
    })
    .await;
    on_postgres(&url, "insert_direct", WriteMethod::Insert, async |s, _| {
        direct_inserts_are_idempotent(&s).await;
        route_samples_join_their_row_and_outcome(&s).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The same rows in both: the same figures out.

/// Rows that exercise every branch the queries have: NULL dimensions, names whose
/// order differs between bytewise and dictionary collation, tags, errors, partial and
/// unpriced rows, routed rows of both modes (escalated, with samples), several hours,
/// days and a month boundary.
fn varied_row(i: usize) -> LedgerRow {
    let mut r = row(i);
    // 2025-11-29 00:00 UTC, then every ~17 minutes: crosses into December.
    r.ts_ms = 1_764_374_400_000 + i as i64 * 997_000;
    r.request_id = format!("v-{i:04}");
    let pick = |xs: &[Option<&str>], k: usize| xs[k % xs.len()].map(str::to_string);
    r.attribution.agent = pick(
        &[
            Some("alice"),
            Some("Bob"),
            Some("Ålesund"),
            Some("_ops"),
            None,
        ],
        i,
    );
    r.attribution.user = pick(&[None, Some("ü1"), Some("Zed"), Some("amy")], i);
    r.attribution.team = pick(&[Some("research"), Some("Support"), None], i);
    r.attribution.key_id = if i.is_multiple_of(9) {
        None
    } else {
        Some(format!("k{}", i % 4))
    };
    r.attribution.task = (!i.is_multiple_of(11)).then(|| format!("t-{}", i % 13));
    r.attribution.tags = match i % 3 {
        0 => vec![],
        1 => vec!["a".into()],
        _ => vec!["b".into(), "a".into()],
    };
    let (req, dep, model) = [
        ("gpt-4o", "gpt-4o", "gpt-4o-2024-08-06"),
        ("auto", "Nova-lite", "us.amazon.nova-2-lite-v1:0"),
        ("claude", "claude-eu", "claude-sonnet-4-5"),
    ][i % 3];
    r.route.requested_model = req.into();
    r.route.deployment = dep.into();
    r.route.upstream_model = model.into();
    r.route.upstream = if i % 3 == 1 {
        "bedrock".into()
    } else {
        "openai".into()
    };
    r.endpoint = [Endpoint::ChatCompletions, Endpoint::Messages][i % 2];
    r.usage.input = (i as u64 * 37) % 1000;
    r.usage.cache_read = if i.is_multiple_of(4) {
        0
    } else {
        (i as u64 * 11) % 300
    };
    r.usage.cache_write_5m = (i as u64) % 7;
    r.usage.cache_write_1h = (i as u64) % 5;
    r.usage.output = (i as u64 * 13) % 700;
    r.usage.reasoning = (i as u64) % 50;
    r.cost = Money::from_nanos((i as i64 * 7919) % 100_000 + 1);
    r.cost_without_cache = Money::from_nanos(r.cost.nanos() + (i as i64 % 3) * 50);
    r.priced = !i.is_multiple_of(17);
    (r.status, r.error_code) = if i.is_multiple_of(19) {
        (500, Some("upstream_error".into()))
    } else if i.is_multiple_of(23) {
        (429, Some("rate_limited".into()))
    } else {
        (200, None)
    };
    r.partial = i.is_multiple_of(29);
    r.latency_us = 1000 + i as u64 * 13_001;
    r.ttft_us = i.is_multiple_of(2).then_some(i as u64 * 10);
    r.routing = (i % 4 == 1).then(|| RouteRecord {
        name: "auto".into(),
        tier: (i % 2) as u32,
        tier_deployment: dep.into(),
        score_ppm: (i as u32 * 7_777) % 1_000_000,
        mode: if i % 8 == 1 {
            RouteMode::Shadow
        } else {
            RouteMode::Enforce
        },
        heavy_cost: Money::from_nanos(r.cost.nanos() * 3),
        tier_cost: Money::from_nanos(r.cost.nanos() / 2),
        escalated: (i % 12 == 5).then(|| "empty".to_string()),
        sample: (i % 8 == 5).then(|| RouteSample {
            model: "embedded".into(),
            tokens: i as u32,
            features: format!("{{\"b\": [{i}]}}"),
        }),
    });
    r
}

async fn fill(s: &Store, rows: &[LedgerRow]) {
    for chunk in rows.chunks(64) {
        s.insert_rows(chunk.to_vec()).await.unwrap();
    }
    for (k, (task, status)) in [
        ("t-1", OutcomeStatus::Success),
        ("t-2", OutcomeStatus::Failure),
        ("t-5", OutcomeStatus::Success),
        ("t-12", OutcomeStatus::Abandoned),
        ("no-calls", OutcomeStatus::Success),
    ]
    .into_iter()
    .enumerate()
    {
        s.record_outcome(
            &TaskOutcome {
                task: task.into(),
                status,
                basis: ValueBasis::Usd {
                    value: Money::from_nanos(1_000_003 * (k as i64 + 1)),
                },
                labels: BTreeMap::new(),
            },
            "test",
            k as i64,
        )
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_identical_on_sqlite_and_postgres() {
    let Some(url) = pg_url() else { return };
    let rows: Vec<_> = (0..240).map(varied_row).collect();
    let (_dir, lite) = sqlite().await;
    fill(&lite, &rows).await;
    on_postgres(&url, "identical", WriteMethod::Copy, async |pg, _| {
        fill(&pg, &rows).await;
        let (a, b) = (&lite, &pg);
        let (lo, hi) = (rows[0].ts_ms, rows[200].ts_ms);
        let windows = [
            (0, i64::MAX),
            (lo, hi),
            (rows[37].ts_ms, rows[38].ts_ms),
            (0, 1),
        ];
        macro_rules! same {
            ($call:ident ( $($arg:expr),* )) => {{
                let x = a.$call($($arg),*).await.unwrap();
                let y = b.$call($($arg),*).await.unwrap();
                assert_eq!(x, y, "{} {:?}", stringify!($call), ($($arg),*));
                x
            }};
        }
        for (since, until) in windows {
            same!(usage_report(None::<GroupBy>, since, until));
            same!(savings_report(None::<GroupBy>, since, until));
            same!(task_summaries(since, until, 100));
            same!(task_summaries(since, until, 3));
            same!(hourly_usage(since, until));
            same!(ledger_span(since, until));
            same!(outcomes_in_window(since, until));
            same!(ledger_rows(since, until, 500));
            for g in GroupBy::ALL {
                let u = same!(usage_report(Some(g), since, until));
                if until == i64::MAX {
                    assert!(u.groups.len() > 1, "{g:?}");
                }
                same!(roi_report(g, since, until));
                same!(savings_report(Some(g), since, until));
                same!(spend_series(g, since, until, 3_600_000));
                same!(spend_series(g, since, until, 86_400_000));
            }
        }
        same!(task_usage(None::<&str>, 0, 100));
        same!(task_usage(Some("t-3"), 0, 100));
        same!(task_summary("t-4"));
        same!(route_samples());
        for r in &rows {
            // The sample lives in `route_samples`, not in the row.
            let mut expected = r.clone();
            if let Some(rt) = expected.routing.as_mut() {
                rt.sample = None;
            }
            assert_eq!(b.ledger_row(&r.request_id).await.unwrap(), Some(expected));
        }
        for spec in [
            "org",
            "team:*",
            "agent:*",
            "user:*",
            "key:*",
            "task:*",
            "agent:Bob",
            "user:ü1",
        ] {
            let spec = ScopeSpec::parse(spec).unwrap();
            let mut x = a.spend_by_scope(&spec, lo, Some(hi)).await.unwrap();
            let mut y = b.spend_by_scope(&spec, lo, Some(hi)).await.unwrap();
            x.sort();
            y.sort();
            assert_eq!(x, y, "{spec:?}");
        }
        for task in ["t-1", "t-7"] {
            let x = same!(task_parties(task));
            assert_eq!(
                x.len(),
                16,
                "more parties than the limit: the same 16 on both"
            );
        }
        // The figures are not all zero: the comparison compared something.
        let total = a.usage_report(None, 0, i64::MAX).await.unwrap().total;
        assert_eq!(total.requests, 240);
        assert_eq!(total.cost, rows.iter().map(|r| r.cost).sum::<Money>());
        assert!(total.errors > 0 && total.partial > 0 && total.unpriced > 0);
        assert!(!a.route_samples().await.unwrap().is_empty());
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// PostgreSQL only: migrations, partitions, the spool.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrations_are_versioned_and_refuse_a_newer_schema() {
    let Some(url) = pg_url() else { return };
    on_postgres(&url, "migrations", WriteMethod::Copy, async |s, ctx| {
        let Store::Postgres(pg) = &s else { panic!() };
        assert_eq!(
            pg.schema_version().await.unwrap(),
            crate::sqlite::SCHEMA_VERSION
        );
        // Opening again (another replica starting) changes nothing.
        let again = PostgresStore::open(&ctx.settings()).await.unwrap();
        assert_eq!(
            again.schema_version().await.unwrap(),
            crate::sqlite::SCHEMA_VERSION
        );
        let c = pg.conn().await.unwrap();
        let applied: i64 = c
            .query_one("SELECT COUNT(*) FROM tollgate_schema_migrations", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(applied, crate::sqlite::SCHEMA_VERSION);
        c.execute(
            "INSERT INTO tollgate_schema_migrations (version, applied_ms) VALUES ($1, 0)",
            &[&(crate::sqlite::SCHEMA_VERSION + 1)],
        )
        .await
        .unwrap();
        match PostgresStore::open(&ctx.settings()).await {
            Err(e @ StoreError::SchemaTooNew { found, known }) => {
                assert_eq!((found, known), (known + 1, crate::sqlite::SCHEMA_VERSION));
                assert_eq!(e.code(), "store_schema_too_new");
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_partitions_are_made_ahead_and_on_demand_and_dropped_for_retention() {
    let Some(url) = pg_url() else { return };
    on_postgres(&url, "partitions", WriteMethod::Copy, async |s, _| {
        let Store::Postgres(pg) = &s else { panic!() };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let parts = pg.partitions().await.unwrap();
        assert_eq!(parts.len(), 3, "this month and two ahead: {parts:?}");
        assert!(parts[0].1 <= now && now < parts[0].2);
        assert_eq!((parts[0].2, parts[1].2), (parts[1].1, parts[2].1));
        // A row from March 2019: its month (and the next) appear when it is written.
        let mut old = row(1);
        old.ts_ms = 1_552_000_000_000;
        assert_eq!(s.insert_rows(vec![old.clone(), row(2)]).await.unwrap(), 2);
        let names: Vec<String> = pg
            .partitions()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert!(names.contains(&"ledger_y2019m03".to_string()), "{names:?}");
        assert!(names.contains(&"ledger_y2019m04".to_string()));
        assert!(names.contains(&"ledger_y2023m11".to_string()));
        // Retention: everything before May 2019 is one DROP per month.
        let may_2019 = 1_556_668_800_000;
        let dropped = pg.drop_months_before(may_2019).await.unwrap();
        assert_eq!(dropped, ["ledger_y2019m03", "ledger_y2019m04"]);
        assert!(s.ledger_row("req-1").await.unwrap().is_none());
        assert_eq!(s.ledger_count().await.unwrap(), 1);
        // Its request id went with it: the row can be written again (recreating March).
        assert_eq!(s.insert_rows(vec![old.clone()]).await.unwrap(), 1);
        assert_eq!(s.ledger_row("req-1").await.unwrap(), Some(old));
    })
    .await;
}

/// Two writer connections take batches in turn: every row lands once, each writer's
/// stream is gapless; rows two writers spooled while PostgreSQL was down (two spool
/// files) are all shipped by a later single writer, which adopts the second file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_writers_write_every_row_once_and_a_single_writer_adopts_their_spools() {
    let Some(url) = pg_url() else { return };
    on_postgres(&url, "writers", WriteMethod::Copy, async |s, ctx| {
        let Store::Postgres(pg) = &s else { panic!() };
        let two = Store::Postgres(pg.with_writers(2, false));
        let (ledger, writer) = two
            .start_ledger(&LedgerConfig {
                max_batch: 64,
                replica: Some("two".into()),
                ..LedgerConfig::default()
            })
            .unwrap();
        for i in 0..2000 {
            ledger.record(row(i)).await.unwrap();
        }
        drop(ledger);
        join(writer).await;
        assert_eq!(s.ledger_count().await.unwrap(), 2000);
        let seqs = s.ledger_sequences(0, i64::MAX).await.unwrap();
        assert_eq!(seqs.len(), 2, "{seqs:?}");
        assert_eq!(seqs.iter().map(|q| q.rows).sum::<u64>(), 2000);
        assert!(seqs.iter().all(|q| q.missing() == 0), "{seqs:?}");

        // Down: both writers spool, into `ledger.spool` and `ledger.spool.1`.
        let down = Store::Postgres(pg.with_writers(2, true));
        let (ledger, writer) = down
            .start_ledger(&LedgerConfig {
                max_batch: 16,
                ..LedgerConfig::default()
            })
            .unwrap();
        for i in 2000..2400 {
            ledger.record(row(i)).await.unwrap();
        }
        drop(ledger);
        join(writer).await;
        let second = ctx.dir.path().join("ledger.spool.1");
        assert!(second.exists());
        // Back, with one writer: it adopts the second spool and ships both.
        let one = Store::Postgres(pg.with_writers(1, false));
        let (ledger, writer) = one.start_ledger(&LedgerConfig::default()).unwrap();
        drop(ledger);
        join(writer).await;
        assert_eq!(s.ledger_count().await.unwrap(), 2400);
        assert!(!second.exists(), "the second spool was adopted");
    })
    .await;
}

/// PostgreSQL unreachable: the writer keeps answering (strict callers after the spool's
/// fsync), rows wait in the spool; the next writer ships them exactly once, and shipping
/// the same lines again (a crash before the offset was saved) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writer_spools_while_unreachable_and_ships_exactly_once() {
    let Some(url) = pg_url() else { return };
    on_postgres(&url, "spool", WriteMethod::Copy, async |s, ctx| {
        let Store::Postgres(pg) = &s else { panic!() };
        let spool_path: PathBuf = ctx.dir.path().join("ledger.spool");
        let down = Store::Postgres(pg.with_unreachable_writer());
        for (k, durability) in [Durability::Strict, Durability::Batched]
            .into_iter()
            .enumerate()
        {
            let (ledger, writer) = down
                .start_ledger(&LedgerConfig {
                    durability,
                    max_batch: 64,
                    replica: Some("down".into()),
                    ..LedgerConfig::default()
                })
                .unwrap();
            for i in 0..250 {
                ledger.record(row(k * 250 + i)).await.unwrap();
            }
            ledger.record(row(k * 250 + 3)).await.unwrap(); // a retry
            let stats = writer.stats().clone();
            drop(ledger);
            join(writer).await;
            let spooled = stats
                .rows_spooled
                .load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(spooled, 251, "{durability:?}");
            assert_eq!(
                stats
                    .rows_written
                    .load(std::sync::atomic::Ordering::Relaxed),
                0
            );
        }
        assert_eq!(s.ledger_count().await.unwrap(), 0);
        let spooled_bytes = std::fs::read(&spool_path).unwrap();
        assert_eq!(spooled_bytes.iter().filter(|&&b| b == b'\n').count(), 502);

        // PostgreSQL reachable: a writer ships the spool at start, then writes directly.
        let (ledger, writer) = s.start_ledger(&LedgerConfig::default()).unwrap();
        ledger.record(row(900)).await.unwrap();
        let stats = writer.stats().clone();
        drop(ledger);
        join(writer).await;
        assert_eq!(
            stats
                .rows_shipped
                .load(std::sync::atomic::Ordering::Relaxed),
            502
        );
        assert_eq!(s.ledger_count().await.unwrap(), 501);
        assert_eq!(std::fs::metadata(&spool_path).unwrap().len(), 0);
        assert_eq!(s.ledger_row("req-42").await.unwrap(), Some(row(42)));
        let seqs = s.ledger_sequences(0, i64::MAX).await.unwrap();
        assert_eq!(seqs.len(), 3);
        for q in seqs.iter().filter(|q| q.replica_id.starts_with("down-")) {
            assert_eq!(
                (q.rows, q.first_seq, q.last_seq, q.missing()),
                (251, 1, 251, 0)
            );
        }

        // The same lines shipped again: nothing new, no duplicates recorded.
        std::fs::write(&spool_path, &spooled_bytes).unwrap();
        let (ledger, writer) = s.start_ledger(&LedgerConfig::default()).unwrap();
        drop(ledger);
        join(writer).await;
        assert_eq!(s.ledger_count().await.unwrap(), 501);
        let dups: i64 = pg
            .conn()
            .await
            .unwrap()
            .query_one("SELECT COUNT(*) FROM ledger_duplicates", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(dups, 2, "only the two retried request ids");
        assert_eq!(s.ledger_sequences(0, i64::MAX).await.unwrap(), seqs);
    })
    .await;
}

/// Runs `pg_ctlcluster` for the server the tests use (Debian's cluster 15/main).
fn pg_ctl(action: &str) -> bool {
    std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", "15", "main", action])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Starts the server again however the test ends.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        if !pg_ctl("start") {
            eprintln!("pg_ctlcluster start failed: start PostgreSQL by hand");
        }
    }
}

/// The real thing: PostgreSQL stops while a writer is recording, the gateway's callers
/// keep being answered, and every row is in PostgreSQL exactly once after it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_keeps_every_row() {
    let Some(url) = pg_url() else { return };
    if std::env::var("TOLLGATE_TEST_PG_RESTART").as_deref() != Ok("1") {
        eprintln!("skipped: TOLLGATE_TEST_PG_RESTART=1 is not set (this test stops the server)");
        return;
    }
    let ctx = PgCtx {
        url: url.clone(),
        schema: unique_schema("restart"),
        dir: tempfile::tempdir().unwrap(),
        method: WriteMethod::Copy,
    };
    let store = PostgresStore::open(&ctx.settings()).await.unwrap();
    let s = Store::Postgres(store.clone());
    let result = std::panic::AssertUnwindSafe(async {
        let (ledger, writer) = s
            .start_ledger(&LedgerConfig {
                durability: Durability::Strict,
                max_batch: 128,
                replica: Some("restart".into()),
                ..LedgerConfig::default()
            })
            .unwrap();
        let stats = writer.stats().clone();
        let mut next = 0;
        let mut burst = async |n: usize| {
            for _ in 0..n {
                ledger.record(row(next)).await.unwrap();
                next += 1;
            }
        };
        burst(300).await;
        {
            let _restart = Restart;
            assert!(pg_ctl("stop"), "pg_ctlcluster stop failed");
            // Down: strict callers are still answered (from the spool).
            burst(300).await;
        }
        // Back: wait until the server accepts connections, keep recording meanwhile.
        for _ in 0..100 {
            if PostgresStore::open(&ctx.settings()).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        burst(300).await;
        drop(ledger);
        join(writer).await;
        let spooled = stats
            .rows_spooled
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(spooled >= 300, "rows spooled while down: {spooled}");
        assert_eq!(s.ledger_count().await.unwrap(), 900);
        let seqs = s.ledger_sequences(0, i64::MAX).await.unwrap();
        assert_eq!(seqs.len(), 1);
        assert_eq!((seqs[0].rows, seqs[0].missing()), (900, 0));
        assert_eq!(
            std::fs::metadata(ctx.dir.path().join("ledger.spool"))
                .unwrap()
                .len(),
            0
        );
    })
    .catch_unwind()
    .await;
    // A fresh connection: the server restarted under the store's pool.
    if let Ok(fresh) = PostgresStore::open(&ctx.settings()).await {
        let _ = fresh.drop_schema().await;
    }
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn schema_names_are_unique_and_valid() {
    let a = unique_schema("the_writer_writes_every_row_once_and_more_words_here");
    let b = unique_schema("the_writer_writes_every_row_once_and_more_words_here");
    assert_ne!(a, b);
    assert!(crate::config::valid_schema_name(&a) && a.len() <= 63, "{a}");
    let _ = Path::new(&a);
}
