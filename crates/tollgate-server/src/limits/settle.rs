//! Settlement: a ticket meets its request's final row, exactly once.

use super::{Limits, LineInfo, Ticket, period_text};
use crate::alerts::Alert;
use crate::clock::now_ms;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tollgate_domain::budget::{SettledLine, crossed_thresholds};
use tollgate_domain::ledger::LedgerRow;
use tollgate_domain::money::Money;
use tollgate_domain::ratelimit::RateKind;
use tollgate_domain::usage::UsageSource;
use tollgate_store::counters::{Counters, RedisCounters, TaskRun};

impl Limits {
    /// Settle a ticket with the request's final row. Called once, from the meter's
    /// settlement, whatever path the request took. `answer`: the SimHash of the answer's
    /// text, when the ticket wanted it ([`Ticket::wants_answer`]).
    pub fn settle(self: &Arc<Self>, ticket: Ticket, row: &LedgerRow, answer: Option<u64>) {
        let now = now_ms();
        if let Some(task) = &ticket.task {
            self.guard.record_cost(task, row.cost, now);
            if let (Some(call), Some(answer)) = (ticket.sample, answer)
                && row.is_success()
            {
                self.guard.record_answer(task, call, answer);
                if let Counters::Redis(r) = &self.counters {
                    self.share_answer(r, task, call, answer);
                }
            }
            if let Counters::Redis(r) = &self.counters
                && row.cost > Money::ZERO
                && let Some(run) = ticket.task_run
            {
                self.share_task_cost(r, task, run, row);
            }
        }
        if let Some((deployment, local)) = &ticket.prompt_counted
            && row.usage_source == UsageSource::Reported
            && !row.usage_suspect
        {
            self.learn_prompt(deployment, *local, row.usage.prompt_total());
        }
        let Some(res) = ticket.reservation else {
            return;
        };
        self.leases.close(&res.id);
        let rate_actual: Vec<u64> = ticket
            .rate_kinds
            .iter()
            .map(|k| match k {
                RateKind::Requests => 1,
                RateKind::Tokens => row.usage.total(),
                RateKind::Usd => row.cost.nanos().max(0) as u64,
            })
            .collect();
        let actual = row.cost;
        match &self.counters {
            Counters::Memory(m) => {
                let out = m.settle(&res, actual, &rate_actual);
                self.settled(&ticket.lines, &out, &row.request_id);
            }
            Counters::Redis(_) => {
                let Ok(handle) = tokio::runtime::Handle::try_current() else {
                    tracing::error!(request_id = %row.request_id, "settlement outside a runtime; the hold is released when its lease (budgets.lease_s) ends");
                    return;
                };
                let me = self.clone();
                let request_id = row.request_id.clone();
                self.tasks.spawn_on(
                    async move {
                        match me.counters.settle(&res, actual, &rate_actual).await {
                            Ok(out) => me.settled(&ticket.lines, &out, &request_id),
                            Err(e) => {
                                me.stats.settle_errors.fetch_add(1, Ordering::Relaxed);
                                tracing::error!(request_id, error = %e, "settlement failed; the hold is released when its lease (budgets.lease_s) ends");
                            }
                        }
                    },
                    &handle,
                );
            }
        }
    }

    /// Add a settled call's cost to the shared totals of the run of its task it was counted
    /// in, from a tracked task.
    fn share_task_cost(&self, redis: &RedisCounters, task: &str, run: TaskRun, row: &LedgerRow) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::error!(request_id = %row.request_id, "task cost outside a runtime; not shared");
            return;
        };
        let (redis, task, cost, id) = (
            redis.clone(),
            task.to_string(),
            row.cost,
            row.request_id.clone(),
        );
        self.tasks.spawn_on(
            async move {
                if let Err(e) = redis.task_cost(&task, run, cost, now_ms(), &id).await {
                    tracing::error!(task, request_id = id, error = %e, "could not add the call's cost to the task's shared totals");
                }
            },
            &handle,
        );
    }

    /// Record a sample's answer in the task's shared loop history, from a tracked task.
    fn share_answer(&self, redis: &RedisCounters, task: &str, call: u64, answer: u64) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (redis, task) = (redis.clone(), task.to_string());
        self.tasks.spawn_on(
            async move {
                if let Err(e) = redis.task_answer(&task, call, answer).await {
                    tracing::warn!(task, error = %e, "could not share a sampled answer through Redis");
                }
            },
            &handle,
        );
    }

    /// After settling: record overage, send threshold alerts.
    fn settled(&self, lines: &[LineInfo], out: &[SettledLine], request_id: &str) {
        self.stats.settled.fetch_add(1, Ordering::Relaxed);
        if let Some(over) = out.iter().map(|s| s.overage).max()
            && over > Money::ZERO
        {
            self.stats.overages.fetch_add(1, Ordering::Relaxed);
            self.stats
                .overage_nanos
                .fetch_add(over.nanos(), Ordering::Relaxed);
            tracing::warn!(request_id, overage_usd = %over, "actual cost exceeded the reservation");
        }
        for (info, s) in lines.iter().zip(out) {
            for (limit, hard, alert_at) in &info.rules {
                for pct in crossed_thresholds(*limit, s.spent_before, s.spent_after, alert_at) {
                    self.alerts
                        .send(budget_alert(info, *limit, *hard, pct, s.spent_after));
                }
            }
        }
    }
}

fn budget_alert(info: &LineInfo, limit: Money, hard: bool, pct: u8, spent: Money) -> Alert {
    let period = period_text(info.period, &info.label);
    let what = if pct >= 100 && hard {
        "is exhausted: further requests are refused (402 budget_exceeded)"
    } else if pct >= 100 {
        "is used up (a soft budget: requests continue)"
    } else {
        "crossed an alert threshold"
    };
    Alert {
        kind: "budget_threshold",
        subject: format!("{} {}", info.scope, period),
        title: format!("Budget {pct}%: {}", info.scope),
        text: format!(
            "The {period} budget of {} {what}: ${spent} spent of ${limit} ({pct}% threshold).",
            info.scope
        ),
        fields: vec![
            ("Scope".into(), info.scope.to_string()),
            ("Period".into(), period.clone()),
            ("Spent".into(), format!("${spent}")),
            (
                "Limit".into(),
                format!("${limit}{}", if hard { "" } else { " (soft)" }),
            ),
        ],
        excerpt: None,
        footer: "Adjust with `tollgate budgets set`; see `tollgate budgets show`.".into(),
    }
}
