//! Usage reports: what to group by and what a group sums to.

use crate::money::Money;
use serde::{Deserialize, Serialize};

/// A report dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Agent,
    Model,
    Team,
    Task,
    Key,
    User,
    Deployment,
    Upstream,
    /// The requested model and the deployment that served it (`gpt-4o → gpt-4o-eu`).
    Route,
}

impl GroupBy {
    pub const ALL: [GroupBy; 9] = [
        GroupBy::Agent,
        GroupBy::Model,
        GroupBy::Team,
        GroupBy::Task,
        GroupBy::Key,
        GroupBy::User,
        GroupBy::Deployment,
        GroupBy::Upstream,
        GroupBy::Route,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Agent => "agent",
            GroupBy::Model => "model",
            GroupBy::Team => "team",
            GroupBy::Task => "task",
            GroupBy::Key => "key",
            GroupBy::User => "user",
            GroupBy::Deployment => "deployment",
            GroupBy::Upstream => "upstream",
            GroupBy::Route => "route",
        }
    }

    pub fn parse(s: &str) -> Option<GroupBy> {
        GroupBy::ALL.into_iter().find(|g| g.as_str() == s)
    }
}

/// Sums over a group of ledger rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageGroup {
    /// The group's value; `None` for rows without one (shown as `(none)`).
    pub group: Option<String>,
    pub requests: u64,
    pub errors: u64,
    pub partial: u64,
    pub unpriced: u64,
    pub input_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost: Money,
}

/// A whole report: its groups (most expensive first) and the grand total.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    pub group_by: Option<GroupBy>,
    pub since_ms: i64,
    pub until_ms: i64,
    pub groups: Vec<UsageGroup>,
    pub total: UsageGroup,
}
