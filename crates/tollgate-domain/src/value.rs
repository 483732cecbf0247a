//! Value per dollar: unit economics of tasks, ROI, and savings by mechanism.
//!
//! All arithmetic is on integers; ratios are exact fractions ([`Ratio`]) turned into
//! decimals only to print. A figure that has no meaning is `None`, never zero or
//! infinity: cost per successful task when nothing succeeded, ROI when nothing was spent.
//!
//! Conventions (also in README.md):
//! - A task's cost is the cost of every ledger row that carries its id in the window.
//! - Tasks without a recorded outcome count as cost with no value (conservative) and
//!   are left out of the success rate's denominator.
//! - Cost per successful task is *all* the group's task cost divided by its successes:
//!   failures are part of what a success costs.
//! - When a task spans several models (or routes), its value is split between them in
//!   proportion to what each cost it, so group values add up to the total exactly.

use crate::money::{Money, NANO_PER_USD};
use crate::outcome::OutcomeStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An exact fraction with a positive denominator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    num: i128,
    den: i128,
}

impl Ratio {
    /// `None` when `den` is zero: the ratio is undefined.
    pub fn new(num: i128, den: i128) -> Option<Ratio> {
        if den == 0 {
            return None;
        }
        let (num, den) = if den < 0 { (-num, -den) } else { (num, den) };
        Some(Ratio { num, den })
    }

    pub fn num(self) -> i128 {
        self.num
    }

    pub fn den(self) -> i128 {
        self.den
    }

    /// For charts and JSON numbers only.
    pub fn as_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }

    /// `self × 10^decimals`, rounded half away from zero.
    fn scaled(self, decimals: u32) -> i128 {
        let scaled = self.num.saturating_mul(10i128.pow(decimals));
        let q = scaled / self.den;
        let r = (scaled % self.den).abs();
        if r.saturating_mul(2) >= self.den {
            if scaled < 0 { q - 1 } else { q + 1 }
        } else {
            q
        }
    }

    /// A decimal with `decimals` places: `1.25`, `-0.50`.
    pub fn decimal(self, decimals: u32) -> String {
        let v = self.scaled(decimals);
        let sign = if v < 0 { "-" } else { "" };
        let abs = v.unsigned_abs();
        if decimals == 0 {
            return format!("{sign}{abs}");
        }
        let p = 10u128.pow(decimals);
        format!("{sign}{}.{:0w$}", abs / p, abs % p, w = decimals as usize)
    }

    /// A percentage with `decimals` places: `ROI 2.5` → `250.0%`.
    pub fn percent(self, decimals: u32) -> String {
        let r = Ratio {
            num: self.num.saturating_mul(100),
            den: self.den,
        };
        format!("{}%", r.decimal(decimals))
    }
}

impl Money {
    /// `self / n`, rounded up to the nano-USD (a per-unit cost is never understated);
    /// `None` when `n` is zero.
    pub fn div_ceil(self, n: u64) -> Option<Money> {
        if n == 0 {
            return None;
        }
        let n = i128::from(n);
        let v = i128::from(self.nanos());
        let q = v.div_euclid(n) + i128::from(v.rem_euclid(n) != 0);
        Some(Money::from_nanos(i64::try_from(q).unwrap_or(i64::MAX)))
    }
}

/// Sums over a set of tasks: one group of a ROI report, or the total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStats {
    pub tasks: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub abandoned: u64,
    /// Tasks with no recorded outcome.
    pub open: u64,
    /// Ledger rows (calls) of these tasks.
    pub calls: u64,
    pub cost: Money,
    /// Value of the recorded outcomes.
    pub value: Money,
}

impl TaskStats {
    /// Count one task (or one task's share of a group).
    pub fn add_task(
        &mut self,
        status: Option<OutcomeStatus>,
        calls: u64,
        cost: Money,
        value: Money,
    ) {
        self.tasks += 1;
        match status {
            Some(OutcomeStatus::Success) => self.succeeded += 1,
            Some(OutcomeStatus::Failure) => self.failed += 1,
            Some(OutcomeStatus::Abandoned) => self.abandoned += 1,
            None => self.open += 1,
        }
        self.calls += calls;
        self.cost = self.cost.saturating_add(cost);
        self.value = self.value.saturating_add(value);
    }

    /// Tasks that have an outcome.
    pub fn decided(&self) -> u64 {
        self.succeeded + self.failed + self.abandoned
    }

    /// Successes over tasks with an outcome; `None` when no task has one.
    pub fn success_rate(&self) -> Option<Ratio> {
        Ratio::new(i128::from(self.succeeded), i128::from(self.decided()))
    }

    pub fn cost_per_task(&self) -> Option<Money> {
        self.cost.div_ceil(self.tasks)
    }

    /// All task cost over successes; `None` (undefined) when nothing succeeded.
    pub fn cost_per_successful_task(&self) -> Option<Money> {
        self.cost.div_ceil(self.succeeded)
    }

    /// `(value − cost) / cost`; `None` when nothing was spent.
    pub fn roi(&self) -> Option<Ratio> {
        let cost = i128::from(self.cost.nanos());
        Ratio::new(i128::from(self.value.nanos()) - cost, cost)
    }

    /// Successful tasks per USD spent; `None` when nothing was spent.
    pub fn successes_per_dollar(&self) -> Option<Ratio> {
        Ratio::new(
            i128::from(self.succeeded) * i128::from(NANO_PER_USD),
            i128::from(self.cost.nanos()),
        )
    }

    /// USD of value per USD spent; `None` when nothing was spent.
    pub fn value_per_dollar(&self) -> Option<Ratio> {
        Ratio::new(
            i128::from(self.value.nanos()),
            i128::from(self.cost.nanos()),
        )
    }
}

/// Split `total` in proportion to `weights` (largest remainder): the parts add up to
/// `total` exactly. Equal weights when all are zero. Empty for no weights.
pub fn allocate(total: Money, weights: &[u64]) -> Vec<Money> {
    if weights.is_empty() {
        return Vec::new();
    }
    let sum: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    let (weights, sum): (Vec<u128>, u128) = if sum == 0 {
        (vec![1; weights.len()], weights.len() as u128)
    } else {
        (weights.iter().map(|w| u128::from(*w)).collect(), sum)
    };
    let t = total.nanos();
    let abs = u128::from(t.unsigned_abs());
    let mut parts: Vec<u128> = weights.iter().map(|w| abs * w / sum).collect();
    let mut rems: Vec<(u128, usize)> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| ((abs * w) % sum, i))
        .collect();
    let given: u128 = parts.iter().sum();
    // Largest remainders first; ties to the earliest part, so the split is deterministic.
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in rems.iter().take((abs - given) as usize) {
        parts[*i] += 1;
    }
    parts
        .into_iter()
        .map(|p| {
            let p = i64::try_from(p).unwrap_or(i64::MAX);
            Money::from_nanos(if t < 0 { -p } else { p })
        })
        .collect()
}

/// One task's spend inside one group (a task that used two models has two slices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSlice {
    pub task: String,
    pub group: Option<String>,
    pub calls: u64,
    pub cost: Money,
}

/// A task's recorded outcome, as the ROI report needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutcomeFigure {
    pub status: OutcomeStatus,
    pub value: Money,
}

/// Group task slices into per-group stats (most expensive first) and the total (each
/// task counted once). A task's value is split between its groups by cost.
pub fn roi_groups(
    slices: &[TaskSlice],
    outcomes: &BTreeMap<String, OutcomeFigure>,
) -> (Vec<(Option<String>, TaskStats)>, TaskStats) {
    let mut by_task: BTreeMap<&str, Vec<&TaskSlice>> = BTreeMap::new();
    for s in slices {
        by_task.entry(&s.task).or_default().push(s);
    }
    let mut groups: BTreeMap<Option<String>, TaskStats> = BTreeMap::new();
    let mut total = TaskStats::default();
    for (task, parts) in by_task {
        let outcome = outcomes.get(task);
        let status = outcome.map(|o| o.status);
        let value = outcome.map(|o| o.value).unwrap_or(Money::ZERO);
        let calls: u64 = parts.iter().map(|p| p.calls).sum();
        let cost: Money = parts.iter().map(|p| p.cost).sum();
        total.add_task(status, calls, cost, value);
        let weights: Vec<u64> = parts.iter().map(|p| p.cost.nanos().max(0) as u64).collect();
        for (p, v) in parts.iter().zip(allocate(value, &weights)) {
            groups
                .entry(p.group.clone())
                .or_default()
                .add_task(status, p.calls, p.cost, v);
        }
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.cost.cmp(&a.1.cost).then_with(|| a.0.cmp(&b.0)));
    (groups, total)
}

/// A mechanism by which tollgate makes calls cheaper. Each is measured against what the
/// same calls would have cost without it. Routing and pruning join this list when they
/// exist; until then they have no line (no figures are invented).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// Provider prompt caching the client asked for (or the provider does by itself):
    /// cache reads and writes priced at their own rates instead of the uncached input
    /// rate.
    PromptCache,
    /// Provider prompt caching the gateway turned on (breakpoints it injected): the same
    /// comparison, net of the write premium (an injection that never paid off counts as
    /// a loss).
    PromptCacheInjected,
    /// Answered from the gateway's response cache, the same request exactly: nothing
    /// charged, against what the answer cost when it was paid for.
    ResponseCacheExact,
    /// Answered from the response cache by a similar last turn in the same context.
    ResponseCacheSemantic,
    /// Long histories pruned before they were sent: what was paid against the same call
    /// with the unpruned prompt at the same prices (net of any prompt-cache rewrite).
    Pruning,
    /// Tiered routing (enforce mode): the tier the router chose instead of the heaviest
    /// tier of the route, for the same token counts.
    Routing,
    /// Tiered routing in shadow mode: what the tier the router would have chosen would
    /// have cost, against what was actually paid. Nothing was saved: "would have saved".
    RoutingShadow,
}

impl Mechanism {
    pub const ALL: [Mechanism; 7] = [
        Mechanism::PromptCache,
        Mechanism::PromptCacheInjected,
        Mechanism::ResponseCacheExact,
        Mechanism::ResponseCacheSemantic,
        Mechanism::Pruning,
        Mechanism::Routing,
        Mechanism::RoutingShadow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::PromptCache => "prompt_cache",
            Mechanism::PromptCacheInjected => "prompt_cache_injected",
            Mechanism::ResponseCacheExact => "response_cache_exact",
            Mechanism::ResponseCacheSemantic => "response_cache_semantic",
            Mechanism::Pruning => "pruning",
            Mechanism::Routing => "routing",
            Mechanism::RoutingShadow => "routing_shadow",
        }
    }

    /// Whether the figure is money actually saved (false: a counterfactual, "would have
    /// saved", which totals must leave out).
    pub fn realised(self) -> bool {
        !matches!(self, Mechanism::RoutingShadow)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Mechanism::PromptCache => {
                "provider prompt caching (vs every prompt token at the input rate)"
            }
            Mechanism::PromptCacheInjected => {
                "prompt caching the gateway injected (vs every prompt token at the input rate; write premium included)"
            }
            Mechanism::ResponseCacheExact => {
                "response cache, exact repeats (vs what the answer cost when it was paid for)"
            }
            Mechanism::ResponseCacheSemantic => {
                "response cache, similar questions (vs what the answer cost when it was paid for)"
            }
            Mechanism::Pruning => {
                "history pruning (vs the unpruned prompt at the same prices, net of cache rewrites)"
            }
            Mechanism::Routing => "tiered routing (vs the route's heaviest tier)",
            Mechanism::RoutingShadow => {
                "tiered routing, shadow mode: would have saved (chosen tier vs what was paid)"
            }
        }
    }
}

/// What one mechanism saved over a set of calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Savings {
    pub mechanism: Mechanism,
    /// Calls the mechanism changed the price of.
    pub requests: u64,
    /// What those calls cost.
    pub actual: Money,
    /// What they would have cost without the mechanism.
    pub baseline: Money,
    /// Calls where the mechanism did not act as expected (injected prompt caching: the
    /// provider reported no cache write or read where one was expected).
    #[serde(default)]
    pub misses: u64,
}

impl Savings {
    /// `baseline − actual` (negative when the mechanism cost more than it saved).
    pub fn saved(&self) -> Money {
        self.baseline.saturating_sub(self.actual)
    }

    /// Saved over baseline; `None` when the baseline is zero.
    pub fn saved_share(&self) -> Option<Ratio> {
        Ratio::new(
            i128::from(self.saved().nanos()),
            i128::from(self.baseline.nanos()),
        )
    }
}

/// A ROI report: tasks grouped by a dimension over a window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoiReport {
    pub group_by: Option<crate::report::GroupBy>,
    pub since_ms: i64,
    pub until_ms: i64,
    pub groups: Vec<(Option<String>, TaskStats)>,
    /// Every task once.
    pub total: TaskStats,
    /// Spend in the window on calls that carried no task id (not in any figure above).
    pub untasked_calls: u64,
    pub untasked_cost: Money,
}

/// One task's calls, tokens, cost, duration, models and outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub task: String,
    pub agents: Vec<String>,
    pub teams: Vec<String>,
    pub models: Vec<String>,
    pub calls: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost: Money,
    pub first_ms: i64,
    /// First call's arrival to the last call's end.
    pub duration_ms: i64,
    pub status: Option<OutcomeStatus>,
    pub value: Option<Money>,
}

/// Savings by mechanism, per group and in total.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavingsReport {
    pub group_by: Option<crate::report::GroupBy>,
    pub since_ms: i64,
    pub until_ms: i64,
    /// Calls and cost of the whole window, for scale.
    pub requests: u64,
    pub cost: Money,
    pub groups: Vec<(Option<String>, Vec<Savings>)>,
    pub total: Vec<Savings>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usd(s: &str) -> Money {
        Money::parse_usd(s).unwrap()
    }

    #[test]
    fn the_mission_examples() {
        // Saves four hours (at $100/h) and costs $50: ROI 700%.
        let mut good = TaskStats::default();
        good.add_task(Some(OutcomeStatus::Success), 40, usd("50"), usd("400"));
        assert_eq!(good.roi().unwrap().percent(1), "700.0%");
        assert_eq!(good.cost_per_successful_task(), Some(usd("50")));
        assert_eq!(good.value_per_dollar().unwrap().decimal(2), "8.00");
        // Saves five minutes and costs $20: ROI −58.3%.
        let mut bad = TaskStats::default();
        bad.add_task(
            Some(OutcomeStatus::Success),
            40,
            usd("20"),
            usd("8.333333333"),
        );
        assert_eq!(bad.roi().unwrap().percent(1), "-58.3%");
        assert_eq!(bad.successes_per_dollar().unwrap().decimal(3), "0.050");
    }

    #[test]
    fn undefined_figures_are_none() {
        let mut s = TaskStats::default();
        assert_eq!(s.roi(), None);
        assert_eq!(s.cost_per_task(), None);
        assert_eq!(s.success_rate(), None);
        s.add_task(Some(OutcomeStatus::Failure), 3, usd("1"), Money::ZERO);
        s.add_task(None, 1, usd("1"), Money::ZERO);
        assert_eq!(s.cost_per_successful_task(), None);
        assert_eq!(s.success_rate().unwrap().percent(0), "0%");
        assert_eq!(s.roi().unwrap().percent(0), "-100%");
        assert_eq!(s.cost_per_task(), Some(usd("1")));
    }

    #[test]
    fn ratio_rounding() {
        let r = Ratio::new(2, 3).unwrap();
        assert_eq!(r.decimal(2), "0.67");
        assert_eq!(Ratio::new(-2, 3).unwrap().decimal(2), "-0.67");
        assert_eq!(Ratio::new(1, -8).unwrap().decimal(2), "-0.13");
        assert_eq!(Ratio::new(5, 1).unwrap().decimal(0), "5");
        assert_eq!(Ratio::new(1, 0), None);
    }

    #[test]
    fn value_split_by_cost_between_models() {
        let slices = vec![
            TaskSlice {
                task: "t1".into(),
                group: Some("big".into()),
                calls: 1,
                cost: usd("3"),
            },
            TaskSlice {
                task: "t1".into(),
                group: Some("small".into()),
                calls: 2,
                cost: usd("1"),
            },
            TaskSlice {
                task: "t2".into(),
                group: Some("small".into()),
                calls: 1,
                cost: usd("1"),
            },
        ];
        let outcomes = BTreeMap::from([(
            "t1".to_string(),
            OutcomeFigure {
                status: OutcomeStatus::Success,
                value: usd("10"),
            },
        )]);
        let (groups, total) = roi_groups(&slices, &outcomes);
        assert_eq!(total.tasks, 2);
        assert_eq!(total.succeeded, 1);
        assert_eq!(total.open, 1);
        assert_eq!(total.cost, usd("5"));
        assert_eq!(total.value, usd("10"));
        assert_eq!(groups[0].0.as_deref(), Some("big"));
        assert_eq!(groups[0].1.value, usd("7.5"));
        assert_eq!(groups[1].1.value, usd("2.5"));
        assert_eq!(groups[1].1.tasks, 2);
    }

    fn arb_stats() -> impl Strategy<Value = TaskStats> {
        (
            0u64..50,
            0u64..50,
            0u64..50,
            0u64..50,
            0i64..1_000_000_000_000,
            0i64..1_000_000_000_000,
        )
            .prop_map(|(s, f, a, o, cost, value)| TaskStats {
                tasks: s + f + a + o,
                succeeded: s,
                failed: f,
                abandoned: a,
                open: o,
                calls: s + f + a + o,
                cost: Money::from_nanos(cost),
                value: Money::from_nanos(value),
            })
    }

    proptest! {
        /// Cost per successful task is undefined (None), never infinite or zero, when
        /// nothing succeeded; otherwise it is the exact cost share, rounded up.
        #[test]
        fn cost_per_successful_task_is_undefined_without_successes(st in arb_stats()) {
            match st.cost_per_successful_task() {
                None => prop_assert_eq!(st.succeeded, 0),
                Some(per) => {
                    prop_assert!(st.succeeded > 0);
                    let n = i128::from(st.succeeded);
                    let per = i128::from(per.nanos());
                    let cost = i128::from(st.cost.nanos());
                    prop_assert!(per * n >= cost);
                    prop_assert!((per - 1) * n < cost);
                    if cost > 0 { prop_assert!(per > 0); }
                }
            }
            // ROI, per-dollar figures: defined exactly when something was spent, and finite.
            prop_assert_eq!(st.roi().is_some(), st.cost.nanos() > 0);
            prop_assert_eq!(st.value_per_dollar().is_some(), st.cost.nanos() > 0);
            prop_assert_eq!(st.successes_per_dollar().is_some(), st.cost.nanos() > 0);
            if let Some(roi) = st.roi() {
                prop_assert!(roi.as_f64().is_finite());
                prop_assert!(roi.as_f64() >= -1.0);
                let vpd = st.value_per_dollar().unwrap();
                // ROI = value per dollar − 1.
                prop_assert_eq!(roi.num() + roi.den(), vpd.num());
            }
            prop_assert_eq!(st.success_rate().is_some(), st.decided() > 0);
        }

        #[test]
        fn allocation_is_exact(total in -1_000_000_000_000i64..1_000_000_000_000,
                               weights in proptest::collection::vec(0u64..1_000_000_000, 1..12)) {
            let parts = allocate(Money::from_nanos(total), &weights);
            prop_assert_eq!(parts.len(), weights.len());
            let sum: i128 = parts.iter().map(|p| i128::from(p.nanos())).sum();
            prop_assert_eq!(sum, i128::from(total));
        }

        #[test]
        fn group_values_add_up_to_the_total(
            slices in proptest::collection::vec((0usize..6, 0usize..3, 0i64..10_000_000), 1..40),
            won in proptest::collection::vec((0usize..6, 0i64..100_000_000), 0..6)) {
            let slices: Vec<TaskSlice> = slices.into_iter().map(|(t, g, c)| TaskSlice {
                task: format!("t{t}"), group: Some(format!("g{g}")), calls: 1,
                cost: Money::from_nanos(c) }).collect();
            let outcomes: BTreeMap<String, OutcomeFigure> = won.into_iter().map(|(t, v)|
                (format!("t{t}"), OutcomeFigure { status: OutcomeStatus::Success, value: Money::from_nanos(v) })).collect();
            let (groups, total) = roi_groups(&slices, &outcomes);
            let v: Money = groups.iter().map(|g| g.1.value).sum();
            let c: Money = groups.iter().map(|g| g.1.cost).sum();
            prop_assert_eq!(v, total.value);
            prop_assert_eq!(c, total.cost);
        }
    }
}
