//! One contract, run against every counter store: in memory always, in Redis when
//! `TOLLGATE_TEST_REDIS_URL` is set (CI sets it; the Redis runs say when they are skipped).

use super::*;
use tollgate_domain::budget::Line;

fn line(key: &str, limit: Option<i64>, amount: i64) -> Line {
    Line {
        key: key.into(),
        limit: limit.map(Money::from_nanos),
        amount: Money::from_nanos(amount),
    }
}

fn req(id: &str, now_ms: i64, budget: Vec<Line>, rate: Vec<RateLine>) -> ReserveRequest {
    ReserveRequest {
        id: id.into(),
        now_ms,
        // Counters expire in real time (Redis TTLs); keep them well past the test.
        expire_at_ms: vec![Some(FAR_FUTURE); budget.len()],
        budget,
        rate,
        hold_ms: 600_000,
    }
}

fn rate(base: &str, limit: u64, cost: u64) -> RateLine {
    RateLine {
        base: base.into(),
        limit,
        cost,
        window_ms: 60_000,
    }
}

const T0: i64 = 1_750_000_000_000;
const FAR_FUTURE: i64 = 4_102_444_800_000;

async fn grant(c: &Counters, r: &ReserveRequest) -> Reserved {
    match c.reserve(r).await {
        Ok(Ok(g)) => g,
        other => panic!("expected a grant for {}: {other:?}", r.id),
    }
}

async fn refusal(c: &Counters, r: &ReserveRequest) -> Refusal {
    match c.reserve(r).await {
        Ok(Err(f)) => f,
        other => panic!("expected a refusal for {}: {other:?}", r.id),
    }
}

async fn account(c: &Counters, key: &str) -> Account {
    c.accounts(&[key.to_string()]).await.unwrap()[0]
}

async fn all_or_nothing_across_lines(c: &Counters) {
    let a = grant(
        c,
        &req(
            "r1",
            T0,
            vec![line("b:a", Some(100), 60), line("b:b", Some(1000), 60)],
            vec![],
        ),
    )
    .await;
    assert_eq!(
        a.budget_remaining,
        vec![Money::from_nanos(40), Money::from_nanos(940)]
    );
    // b:b has room, b:a does not: nothing is reserved anywhere.
    let f = refusal(
        c,
        &req(
            "r2",
            T0,
            vec![line("b:b", Some(1000), 50), line("b:a", Some(100), 50)],
            vec![],
        ),
    )
    .await;
    assert_eq!(
        f,
        Refusal::Budget {
            line: 1,
            remaining: Money::from_nanos(40)
        }
    );
    assert_eq!(account(c, "b:b").await.reserved, Money::from_nanos(60));
    // Soft lines (no limit) are counted but never refuse.
    grant(
        c,
        &req("r3", T0, vec![line("b:soft", None, 1_000_000)], vec![]),
    )
    .await;
    assert_eq!(
        account(c, "b:soft").await.reserved,
        Money::from_nanos(1_000_000)
    );
}

async fn settle_charges_actual_and_releases_the_rest(c: &Counters) {
    let g = grant(c, &req("s1", T0, vec![line("b:s", Some(100), 80)], vec![])).await;
    let out = c
        .settle(&g.reservation, Money::from_nanos(30), &[])
        .await
        .unwrap();
    assert_eq!(out[0].spent_before, Money::ZERO);
    assert_eq!(out[0].spent_after, Money::from_nanos(30));
    assert_eq!(out[0].released, Money::from_nanos(50));
    assert_eq!(out[0].overage, Money::ZERO);
    assert_eq!(
        account(c, "b:s").await,
        Account {
            spent: Money::from_nanos(30),
            reserved: Money::ZERO
        }
    );
    // Actual above the reservation: charged in full, the excess reported as overage.
    let g = grant(c, &req("s2", T0, vec![line("b:s", Some(100), 10)], vec![])).await;
    let out = c
        .settle(&g.reservation, Money::from_nanos(25), &[])
        .await
        .unwrap();
    assert_eq!(out[0].overage, Money::from_nanos(15));
    assert_eq!(account(c, "b:s").await.spent, Money::from_nanos(55));
    // An exhausted budget refuses even a free request.
    let g = grant(c, &req("s3", T0, vec![line("b:s", Some(100), 45)], vec![])).await;
    c.settle(&g.reservation, Money::from_nanos(45), &[])
        .await
        .unwrap();
    let f = refusal(c, &req("s4", T0, vec![line("b:s", Some(100), 0)], vec![])).await;
    assert_eq!(
        f,
        Refusal::Budget {
            line: 0,
            remaining: Money::ZERO
        }
    );
}

async fn rate_limits_refuse_with_retry_after_and_refund_unused(c: &Counters) {
    let t = T0 - T0.rem_euclid(60_000) + 1_000; // 1 s into a window
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(
            grant(
                c,
                &req(
                    &format!("q{i}"),
                    t,
                    vec![],
                    vec![rate("r:tokens:agent:x", 300, 100)],
                ),
            )
            .await,
        );
    }
    let f = refusal(
        c,
        &req("q3", t, vec![], vec![rate("r:tokens:agent:x", 300, 100)]),
    )
    .await;
    match f {
        Refusal::Rate {
            line: 0,
            retry_after_ms,
            remaining: 0,
        } => assert!(retry_after_ms >= 59_000, "{retry_after_ms}"),
        other => panic!("{other:?}"),
    }
    // A refused rate line reserves no budget either.
    let f = refusal(
        c,
        &req(
            "q4",
            t,
            vec![line("b:q", Some(100), 5)],
            vec![rate("r:tokens:agent:x", 300, 100)],
        ),
    )
    .await;
    assert!(matches!(f, Refusal::Rate { .. }));
    assert_eq!(account(c, "b:q").await.reserved, Money::ZERO);
    // Settling with 40 of 100 tokens used gives 60 back: a 60-token request now fits.
    c.settle(&held[0].reservation, Money::ZERO, &[40])
        .await
        .unwrap();
    grant(
        c,
        &req("q5", t, vec![], vec![rate("r:tokens:agent:x", 300, 60)]),
    )
    .await;
    refusal(
        c,
        &req("q6", t, vec![], vec![rate("r:tokens:agent:x", 300, 1)]),
    )
    .await;
    // Two windows later everything has rolled off.
    grant(
        c,
        &req(
            "q7",
            t + 120_000,
            vec![],
            vec![rate("r:tokens:agent:x", 300, 300)],
        ),
    )
    .await;
}

async fn seeding_only_fills_missing_counters(c: &Counters) {
    grant(
        c,
        &req("z1", T0, vec![line("b:live", Some(100), 10)], vec![]),
    )
    .await;
    let n = c
        .seed(
            &[
                Seed {
                    key: "b:live".into(),
                    spent: Money::from_nanos(99),
                    expire_at_ms: None,
                },
                Seed {
                    key: "b:cold".into(),
                    spent: Money::from_nanos(70),
                    expire_at_ms: Some(FAR_FUTURE),
                },
            ],
            true,
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        account(c, "b:live").await,
        Account {
            spent: Money::ZERO,
            reserved: Money::from_nanos(10)
        }
    );
    assert_eq!(account(c, "b:cold").await.spent, Money::from_nanos(70));
    let f = refusal(
        c,
        &req("z2", T0, vec![line("b:cold", Some(100), 31)], vec![]),
    )
    .await;
    assert_eq!(
        f,
        Refusal::Budget {
            line: 0,
            remaining: Money::from_nanos(30)
        }
    );
}

/// `replicas` handles on the same store race 400 reservations against a budget that
/// holds 100 of them; every granted one is settled at its full cost.
async fn concurrent_reservations_never_overspend(replicas: Vec<Counters>) {
    let limit = 100 * 1_000;
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..400 {
        let c = replicas[i % replicas.len()].clone();
        joins.spawn(async move {
            let r = req(
                &format!("c{i}"),
                T0,
                vec![
                    line("b:race", Some(limit), 1_000),
                    line("b:org", None, 1_000),
                ],
                vec![],
            );
            match c.reserve(&r).await.unwrap() {
                Ok(g) => {
                    tokio::task::yield_now().await;
                    c.settle(&g.reservation, Money::from_nanos(1_000), &[])
                        .await
                        .unwrap();
                    1u32
                }
                Err(_) => 0,
            }
        });
    }
    let mut granted = 0;
    while let Some(j) = joins.join_next().await {
        granted += j.unwrap();
    }
    assert_eq!(granted, 100);
    let a = account(&replicas[0], "b:race").await;
    assert_eq!(
        a,
        Account {
            spent: Money::from_nanos(limit),
            reserved: Money::ZERO
        }
    );
    assert_eq!(
        account(&replicas[0], "b:org").await.spent,
        Money::from_nanos(limit)
    );
}

async fn run_contract(make: impl AsyncFn(&str) -> Counters) {
    all_or_nothing_across_lines(&make("aon").await).await;
    settle_charges_actual_and_releases_the_rest(&make("settle").await).await;
    rate_limits_refuse_with_retry_after_and_refund_unused(&make("rate").await).await;
    seeding_only_fills_missing_counters(&make("seed").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_counters_keep_the_contract() {
    run_contract(async |_| Counters::memory()).await;
    concurrent_reservations_never_overspend(vec![Counters::memory()]).await;
}

fn redis_url() -> Option<String> {
    match std::env::var("TOLLGATE_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("skipped: TOLLGATE_TEST_REDIS_URL is not set");
            None
        }
    }
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("tgtest:{}:{nanos}:{name}", std::process::id())
}

async fn redis(url: &str, prefix: &str) -> RedisCounters {
    let r = RedisCounters::connect(url, prefix).await.unwrap();
    r.clear().await.unwrap();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_counters_keep_the_contract() {
    let Some(url) = redis_url() else { return };
    run_contract(async |name| {
        let r = redis(&url, &unique(name)).await;
        r.seed(&[], true).await.unwrap();
        Counters::Redis(r)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_redis_replicas_never_overspend() {
    let Some(url) = redis_url() else { return };
    let prefix = unique("replicas");
    let a = redis(&url, &prefix).await;
    a.seed(&[], true).await.unwrap();
    let b = RedisCounters::connect(&url, &prefix).await.unwrap();
    concurrent_reservations_never_overspend(vec![Counters::Redis(a.clone()), Counters::Redis(b)])
        .await;
    a.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refuses_until_seeded_and_reclaims_dead_reservations() {
    let Some(url) = redis_url() else { return };
    let r = redis(&url, &unique("lifecycle")).await;
    let c = Counters::Redis(r.clone());
    let q = req("l1", T0, vec![line("b:l", Some(100), 70)], vec![]);
    assert_eq!(c.reserve(&q).await.unwrap_err(), ReserveError::Unseeded);
    c.seed(
        &[Seed {
            key: "b:l".into(),
            spent: Money::from_nanos(10),
            expire_at_ms: None,
        }],
        true,
    )
    .await
    .unwrap();
    let g = grant(&c, &q).await;
    // A replica holding l1 dies; past its hold, the next reserve reclaims it.
    let late = T0 + q.hold_ms + 1;
    grant(
        &c,
        &req("l2", late, vec![line("b:l", Some(100), 90)], vec![]),
    )
    .await;
    assert_eq!(account(&c, "b:l").await.reserved, Money::from_nanos(90));
    // If it settles after all, its cost is still charged, and released only once.
    c.settle(&g.reservation, Money::from_nanos(5), &[])
        .await
        .unwrap();
    assert_eq!(
        account(&c, "b:l").await,
        Account {
            spent: Money::from_nanos(15),
            reserved: Money::from_nanos(90)
        }
    );
    // A retried settlement changes nothing.
    assert!(
        c.settle(&g.reservation, Money::from_nanos(5), &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(account(&c, "b:l").await.spent, Money::from_nanos(15));
    r.clear().await.unwrap();
}

/// Leases: a live replica's renewed reservation outlives its first deadline; a dead
/// replica's is released by the sweep once its lease ends, with no reserve needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_leases_are_renewed_and_swept() {
    let Some(url) = redis_url() else { return };
    let r = redis(&url, &unique("leases")).await;
    let c = Counters::Redis(r.clone());
    c.seed(&[], true).await.unwrap();
    let mut live = req("live", T0, vec![line("b:l", Some(100), 30)], vec![]);
    live.hold_ms = 3_000;
    let mut dead = req("dead", T0, vec![line("b:l", Some(100), 20)], vec![]);
    dead.hold_ms = 3_000;
    grant(&c, &live).await;
    grant(&c, &dead).await;
    // Nothing has expired yet.
    assert_eq!(r.reclaim_expired(T0 + 2_000, 100).await.unwrap(), 0);
    // The live one is renewed; the dead one is not.
    r.renew(
        &["live".to_string(), "settled-long-ago".to_string()],
        T0 + 2_000 + 3_000,
    )
    .await
    .unwrap();
    assert_eq!(r.reclaim_expired(T0 + 3_500, 100).await.unwrap(), 1);
    assert_eq!(account(&c, "b:l").await.reserved, Money::from_nanos(30));
    // Past the renewed lease too: released.
    assert_eq!(r.reclaim_expired(T0 + 5_001, 100).await.unwrap(), 1);
    assert_eq!(account(&c, "b:l").await.reserved, Money::ZERO);
    r.clear().await.unwrap();
}

/// The guard's shared task state: counted calls, halts claimed once, release, and a
/// replica's store reconciled with Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_task_state_is_shared_halted_once_and_released_everywhere() {
    use super::{HaltClaim, TaskAdmit};
    let Some(url) = redis_url() else { return };
    let prefix = unique("tasks");
    let a = redis(&url, &prefix).await;
    let b = RedisCounters::connect(&url, &prefix).await.unwrap();
    // Calls through either replica count on one total; the first call starts the task.
    let (t1, run) = counted(a.task_admit("t", T0, true).await.unwrap());
    assert_eq!((t1.iterations, t1.started_ms), (1, T0));
    a.task_cost("t", run, Money::from_nanos(700), T0 + 10, "r1")
        .await
        .unwrap();
    b.task_cost("t", run, Money::from_nanos(300), T0 + 70_000, "r2")
        .await
        .unwrap();
    let (t2, run2) = counted(b.task_admit("t", T0 + 70_001, true).await.unwrap());
    assert_eq!(run2, run, "one run until released");
    assert_eq!(t2.iterations, 2);
    assert_eq!(t2.started_ms, T0);
    assert_eq!(t2.cost, Money::from_nanos(1000));
    // Only the second cost is within the last minute.
    assert_eq!(t2.spend_last_minute, Money::from_nanos(300));
    // Two replicas trip at once: one records it, the other learns the reason.
    let HaltClaim::First { halted_ms } = b
        .task_halt("t", None, run, "loop detected", "loop", false)
        .await
        .unwrap()
    else {
        panic!("the first halt is claimed");
    };
    assert_eq!(
        a.task_halt("t", None, run, "too many calls", "iterations", false)
            .await
            .unwrap(),
        HaltClaim::Already("loop detected".into())
    );
    // Halted: refused on both, and not counted.
    for r in [&a, &b] {
        assert_eq!(
            r.task_admit("t", T0 + 70_004, false).await.unwrap(),
            TaskAdmit::Halted("loop detected".into())
        );
    }
    // A replica whose store still says "halted" is told of the release; a halt Redis
    // lost (never released) is written back.
    assert!(a.task_release("t").await.unwrap());
    assert!(!a.task_release("t").await.unwrap());
    let released = a
        .task_reconcile(&[known("t", halted_ms), known("lost", T0)])
        .await
        .unwrap();
    assert_eq!(released, ["t"]);
    assert_eq!(
        b.task_admit("lost", T0 + 80_002, false).await.unwrap(),
        TaskAdmit::Halted("loop detected".into())
    );
    // Released: a fresh start, totals forgotten (a late cost of the old run is dropped).
    b.task_cost("t", run, Money::from_nanos(5), T0 + 80_003, "r3")
        .await
        .unwrap();
    let (t3, run3) = counted(b.task_admit("t", T0 + 90_000, true).await.unwrap());
    assert_ne!(run3, run);
    assert_eq!(
        (t3.iterations, t3.started_ms, t3.cost),
        (1, T0 + 90_000, Money::ZERO)
    );
    // Dry-run flags are claimed once too.
    let (_, d) = counted(a.task_admit("d", T0, false).await.unwrap());
    assert!(matches!(
        a.task_halt("d", None, d, "x", "loop", true).await.unwrap(),
        HaltClaim::First { .. }
    ));
    assert_eq!(
        b.task_halt("d", None, d, "x", "loop", true).await.unwrap(),
        HaltClaim::Already(String::new())
    );
    a.clear().await.unwrap();
}

fn counted(x: super::TaskAdmit) -> (tollgate_domain::loopguard::TaskTotals, super::TaskRun) {
    match x {
        super::TaskAdmit::Counted(t, run) => (t, run),
        super::TaskAdmit::Halted(r) => panic!("halted: {r}"),
    }
}

fn known(task: &str, halted_ms: i64) -> super::KnownHalt {
    super::KnownHalt {
        task: task.into(),
        halted_ms,
        reason: "loop detected".into(),
        kind: "loop".into(),
        agent: None,
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A call admitted before an operator's release, whose halt or cost lands after it,
/// belongs to a run that is over: it neither halts the task again nor charges the run
/// that starts after the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_release_is_not_undone_by_calls_admitted_before_it() {
    use super::{HaltClaim, TaskAdmit};
    let Some(url) = redis_url() else { return };
    let prefix = unique("release-race");
    let a = redis(&url, &prefix).await;
    let b = RedisCounters::connect(&url, &prefix).await.unwrap();

    // Replica A admits a call and decides to halt; meanwhile B releases the task.
    let (_, old) = counted(a.task_admit("h", T0, false).await.unwrap());
    b.task_release("h").await.unwrap();
    assert_eq!(
        a.task_halt("h", None, old, "too many calls", "iterations", false)
            .await
            .unwrap(),
        HaltClaim::Stale
    );
    // Not halted afterwards: the next call is the first of a new run.
    let (t, new) = counted(b.task_admit("h", T0 + 1, false).await.unwrap());
    assert_eq!(t.iterations, 1);
    assert_ne!(new, old);
    // Still stale once the new run exists (dry-run flags alike).
    assert_eq!(
        a.task_halt("h", None, old, "too many calls", "iterations", false)
            .await
            .unwrap(),
        HaltClaim::Stale
    );
    assert_eq!(
        a.task_halt("h", None, old, "too many calls", "iterations", true)
            .await
            .unwrap(),
        HaltClaim::Stale
    );
    assert!(matches!(
        b.task_admit("h", T0 + 2, false).await.unwrap(),
        TaskAdmit::Counted(ref t, run) if t.iterations == 2 && run == new
    ));
    // A halt of the new run is recorded.
    assert!(matches!(
        b.task_halt("h", None, new, "loop detected", "loop", false)
            .await
            .unwrap(),
        HaltClaim::First { .. }
    ));

    // An in-flight call's cost settles after the release and after the next run began.
    let (_, old) = counted(a.task_admit("c", T0, true).await.unwrap());
    a.task_cost("c", old, Money::from_nanos(400), T0 + 5, "c1")
        .await
        .unwrap();
    b.task_release("c").await.unwrap();
    let (t, new) = counted(b.task_admit("c", T0 + 10, true).await.unwrap());
    assert_eq!((t.cost, t.spend_last_minute), (Money::ZERO, Money::ZERO));
    a.task_cost("c", old, Money::from_nanos(900), T0 + 20, "c2")
        .await
        .unwrap();
    b.task_cost("c", new, Money::from_nanos(7), T0 + 30, "c3")
        .await
        .unwrap();
    let (t, run) = counted(b.task_admit("c", T0 + 40, true).await.unwrap());
    assert_eq!(run, new);
    assert_eq!(t.iterations, 2);
    assert_eq!(
        t.cost,
        Money::from_nanos(7),
        "the old run's cost is not charged"
    );
    assert_eq!(t.spend_last_minute, Money::from_nanos(7));
    a.clear().await.unwrap();
}

/// Whether a halt was released is never decided by comparing two hosts' clocks: halts
/// and releases are timed by Redis, so a replica whose clock is far ahead, or a release
/// right after the halt from a host whose clock is behind, leaves the task released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reconcile_keeps_a_release_whatever_the_clocks_say() {
    use super::{HaltClaim, TaskAdmit};
    let Some(url) = redis_url() else { return };
    let prefix = unique("release-clock");
    let a = redis(&url, &prefix).await;
    let b = RedisCounters::connect(&url, &prefix).await.unwrap();

    // Replica A's clock is far ahead. Its halt is timed by Redis, and A stores that
    // time; the release lands before A's own store has even recorded the halt.
    let (_, run) = counted(a.task_admit("s", FAR_FUTURE, false).await.unwrap());
    let HaltClaim::First { halted_ms } = a
        .task_halt("s", None, run, "loop detected", "loop", false)
        .await
        .unwrap()
    else {
        panic!("the halt is claimed");
    };
    assert!(
        (halted_ms - wall_ms()).abs() < 600_000,
        "the halt is timed by Redis, not by the replica: {halted_ms}"
    );
    assert!(b.task_release("s").await.unwrap());
    for _ in 0..2 {
        assert_eq!(
            a.task_reconcile(&[known("s", halted_ms)]).await.unwrap(),
            ["s"]
        );
    }
    assert!(matches!(
        b.task_admit("s", T0, false).await.unwrap(),
        TaskAdmit::Counted(ref t, _) if t.iterations == 1
    ));

    // A halt a replica stored on its own clock, far in the future (recorded while Redis
    // was unreachable): written back to Redis, then released; it stays released.
    assert!(
        a.task_reconcile(&[known("f", FAR_FUTURE)])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        b.task_admit("f", T0, false).await.unwrap(),
        TaskAdmit::Halted("loop detected".into())
    );
    assert!(b.task_release("f").await.unwrap());
    assert_eq!(
        a.task_reconcile(&[known("f", FAR_FUTURE)]).await.unwrap(),
        ["f"]
    );
    assert!(matches!(
        b.task_admit("f", T0, false).await.unwrap(),
        TaskAdmit::Counted(..)
    ));

    // The other way round: a halt after a release is timed later than it even if Redis's
    // clock stepped back meanwhile, so a Redis that lost that halt gets it back rather
    // than taking it as released.
    let (_, run) = counted(a.task_admit("n", T0, false).await.unwrap());
    b.task_release("n").await.unwrap();
    let stepped_back = wall_ms() + 600_000;
    let mut conn = a.conn().await.unwrap();
    let () = ::redis::cmd("SET")
        .arg(a.k("tr:n"))
        .arg(stepped_back)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (_, run2) = counted(a.task_admit("n", T0, false).await.unwrap());
    assert_ne!(run, run2);
    let HaltClaim::First { halted_ms } = a
        .task_halt("n", None, run2, "loop detected", "loop", false)
        .await
        .unwrap()
    else {
        panic!("the halt of the new run is claimed");
    };
    assert!(halted_ms > stepped_back);
    let deleted: i64 = ::redis::cmd("DEL")
        .arg(a.k("th:n"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert!(
        a.task_reconcile(&[known("n", halted_ms)])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        b.task_admit("n", T0, false).await.unwrap(),
        TaskAdmit::Halted("loop detected".into())
    );
    // And its release is no earlier than it: released, and stays so.
    assert!(b.task_release("n").await.unwrap());
    assert_eq!(
        a.task_reconcile(&[known("n", halted_ms)]).await.unwrap(),
        ["n"]
    );
    a.clear().await.unwrap();
}

/// The index of halts: a replica reading it learns every halt recorded elsewhere, once,
/// a bounded page at a time, with the halt's reason, kind, Redis time and agent; releases
/// leave it, dry-run flags never enter it; a Redis that lost its data (a new epoch) is
/// read from the start again, and the halts written back by reconciling are in it, as are
/// halts recorded before halts were indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_halts_are_indexed_for_every_replica() {
    use super::{HaltClaim, HaltCursor, KnownHalt};
    let Some(url) = redis_url() else { return };
    let prefix = unique("halt-index");
    let a = redis(&url, &prefix).await;
    let b = RedisCounters::connect(&url, &prefix).await.unwrap();
    let start = HaltCursor::default();
    let (none, c0) = b.task_halts_since(&start, 10).await.unwrap();
    assert!(none.is_empty());

    let halt = async |task: &str, agent: Option<&str>| {
        let (_, run) = counted(a.task_admit(task, T0, false).await.unwrap());
        match a
            .task_halt(task, agent, run, "loop detected", "loop", false)
            .await
            .unwrap()
        {
            HaltClaim::First { halted_ms } => halted_ms,
            other => panic!("{task}: {other:?}"),
        }
    };
    let x_ms = halt("x", Some("bot")).await;
    let (tasks, c1) = b.task_halts_since(&c0, 10).await.unwrap();
    assert_eq!(tasks, ["x"]);
    assert!(c1.is_past(&c0));
    assert_eq!(
        b.task_halts(&tasks).await.unwrap(),
        [KnownHalt {
            task: "x".into(),
            halted_ms: x_ms,
            reason: "loop detected".into(),
            kind: "loop".into(),
            agent: Some("bot".into()),
        }]
    );
    // Nothing new: an empty page, and the cursor stays.
    let (tasks, same) = b.task_halts_since(&c1, 10).await.unwrap();
    assert!(tasks.is_empty());
    assert_eq!(same, c1);

    // Pages of one, in the order the halts were written; a dry-run flag is not a halt.
    halt("y", None).await;
    let (_, d) = counted(a.task_admit("d", T0, false).await.unwrap());
    assert!(matches!(
        a.task_halt("d", None, d, "x", "loop", true).await.unwrap(),
        HaltClaim::First { .. }
    ));
    halt("z", None).await;
    let (p1, c2) = b.task_halts_since(&c1, 1).await.unwrap();
    let (p2, c3) = b.task_halts_since(&c2, 1).await.unwrap();
    let (p3, c4) = b.task_halts_since(&c3, 1).await.unwrap();
    assert_eq!((p1, p2), (vec!["y".to_string()], vec!["z".to_string()]));
    assert!(p3.is_empty() && c4 == c3 && c3.is_past(&c2) && c2.is_past(&c1));
    assert_eq!(
        b.task_halts(&["y".to_string()]).await.unwrap()[0].agent,
        None
    );

    // Released on one replica: out of the index, and no longer a halt to copy.
    assert!(b.task_release("y").await.unwrap());
    let (all, _) = b.task_halts_since(&start, 10).await.unwrap();
    assert_eq!(all, ["x", "z"]);
    assert!(b.task_halts(&["y".to_string()]).await.unwrap().is_empty());

    // Redis loses everything: the index restarts (a new epoch), and a reader whose
    // cursor is far along reads it from the start. The halt of "x" written back by a
    // replica that holds it is in the new index, with what that replica knew.
    a.clear().await.unwrap();
    let mut x = known("x", x_ms);
    x.agent = Some("bot".into());
    assert!(a.task_reconcile(&[x.clone()]).await.unwrap().is_empty());
    let (tasks, c5) = b.task_halts_since(&c4, 10).await.unwrap();
    assert_eq!(tasks, ["x"]);
    assert!(c5.is_past(&c4));
    assert_eq!(b.task_halts(&tasks).await.unwrap(), [x]);

    // A halt written by a tollgate that did not index halts is indexed by the next
    // reconcile of a replica holding it; a hash that is not a halt is left out.
    let mut conn = a.conn().await.unwrap();
    let () = ::redis::cmd("HSET")
        .arg(a.k("th:old"))
        .arg("reason")
        .arg("loop detected")
        .arg("kind")
        .arg("loop")
        .arg("ms")
        .arg(T0)
        .query_async(&mut conn)
        .await
        .unwrap();
    let () = ::redis::cmd("HSET")
        .arg(a.k("th:junk"))
        .arg("reason")
        .arg("no time")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (tasks, c6) = b.task_halts_since(&c5, 10).await.unwrap();
    assert!(tasks.is_empty());
    assert!(
        a.task_reconcile(&[known("old", T0)])
            .await
            .unwrap()
            .is_empty()
    );
    let (tasks, _) = b.task_halts_since(&c6, 10).await.unwrap();
    assert_eq!(tasks, ["old"]);
    assert_eq!(
        b.task_halts(&["old".to_string(), "junk".to_string(), "never".to_string()])
            .await
            .unwrap(),
        [known("old", T0)]
    );
    a.clear().await.unwrap();
}
