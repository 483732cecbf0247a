//! Run-time budgets and halted tasks re-read from the store (every few seconds, and
//! right after an admin change), and budget counters seeded from the ledger.

use super::{Limits, seeds_for};
use crate::clock::now_ms;
use crate::config::LimitsConfig;
use crate::error::ApiError;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tollgate_domain::budget::BudgetRule;
use tollgate_domain::budget::merge_rules;
use tollgate_store::counters::Counters;
use tollgate_store::{BudgetStore, StoreError, TaskStore};

impl Limits {
    /// Re-read run-time budgets and halted tasks from the store (every few seconds, and
    /// right after an admin change). New budgets are seeded from the ledger before they
    /// take effect, so a budget set mid-period counts what was already spent. With Redis,
    /// the store's halts are reconciled with the shared state first, and halts recorded by
    /// other replicas are copied into it.
    pub async fn refresh(&self, lc: &LimitsConfig) -> Result<(), ApiError> {
        let internal = |e: StoreError| ApiError::Internal(e.to_string());
        let db_rules = self.store.list_budgets().await.map_err(internal)?;
        let halted = self.store.halted_tasks().await.map_err(internal)?;
        let halted = match &self.counters {
            Counters::Redis(r) => {
                match r.reclaim_expired(now_ms(), 1000).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        reservations = n,
                        "released the holds of reservations a replica never settled (past budgets.hold_s)"
                    ),
                    Err(e) => tracing::warn!(error = %e, "could not sweep expired reservations"),
                }
                let halted = self.reconcile_halts(r, halted).await;
                self.import_halts(r, halted).await
            }
            Counters::Memory(_) => halted,
        };
        self.guard.sync_halted(&halted);
        let merged = merge_rules(&lc.budgets, &db_rules);
        let current = self.rules();
        if *current == merged {
            return Ok(());
        }
        let fresh: Vec<BudgetRule> = merged
            .iter()
            .filter(|r| {
                !current
                    .iter()
                    .any(|c| c.scope == r.scope && c.period == r.period)
            })
            .cloned()
            .collect();
        if !fresh.is_empty() {
            self.seed(lc, &fresh, false).await?;
        }
        self.rules.store(Arc::new(merged));
        Ok(())
    }

    /// Seed the counters of `rules` from the ledger (`mark`: record the store as seeded).
    async fn seed(
        &self,
        lc: &LimitsConfig,
        rules: &[BudgetRule],
        mark: bool,
    ) -> Result<(), ApiError> {
        let seeds = seeds_for(&self.store, rules, now_ms(), &lc.time_zone)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let n = self
            .counters
            .seed(&seeds, mark)
            .await
            .map_err(|e| ApiError::CountersUnavailable(e.0))?;
        tracing::info!(
            counters = n,
            of = seeds.len(),
            store = self.counters.name(),
            "budget counters seeded from the ledger"
        );
        Ok(())
    }

    /// The counter store lost its data (a Redis restarted empty): rebuild every budget's
    /// current counters from the ledger, once, however many requests notice at the same time.
    pub(super) async fn reseed(&self, lc: &LimitsConfig, noticed_ms: i64) -> Result<(), ApiError> {
        let _one = self.seed_lock.lock().await;
        if self.seeded_at_ms.load(Ordering::Acquire) >= noticed_ms {
            return Ok(());
        }
        let rules = self.rules();
        self.seed(lc, &rules, true).await?;
        self.seeded_at_ms.store(now_ms(), Ordering::Release);
        Ok(())
    }
}
