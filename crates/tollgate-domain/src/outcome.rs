//! Task outcomes: what a unit of work achieved, as its owner reports it.
//!
//! A task (the `x-tollgate-task` label) may span many calls. When it ends, its owner
//! records an outcome: `success`, `failure` or `abandoned`, and optionally what it was
//! worth, either directly in USD or as minutes of human work saved at an hourly rate.
//! The value is resolved to exact [`Money`] once, when the outcome is recorded.

use crate::attribution::{self, LabelError};
use crate::money::Money;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most labels an outcome may carry.
pub const MAX_OUTCOME_LABELS: usize = 32;
/// Longest accepted `minutes_saved` (one year of minutes): anything above is a typo.
pub const MAX_MINUTES_SAVED: u64 = 525_600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    Success,
    Failure,
    Abandoned,
}

impl OutcomeStatus {
    pub const ALL: [OutcomeStatus; 3] = [
        OutcomeStatus::Success,
        OutcomeStatus::Failure,
        OutcomeStatus::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeStatus::Success => "success",
            OutcomeStatus::Failure => "failure",
            OutcomeStatus::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<OutcomeStatus> {
        OutcomeStatus::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// How an outcome's value was stated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ValueBasis {
    /// No value stated: the task counts in success rates, not in value.
    None,
    /// A USD amount.
    Usd { value: Money },
    /// Minutes of human work saved, at an hourly rate (USD per hour).
    MinutesSaved { minutes: u64, hourly_rate: Money },
}

impl ValueBasis {
    /// The value in USD. Minutes saved are priced `minutes × rate / 60`, rounded down to
    /// the nano-USD: a value is never overstated.
    pub fn value(&self) -> Money {
        match *self {
            ValueBasis::None => Money::ZERO,
            ValueBasis::Usd { value } => value,
            ValueBasis::MinutesSaved {
                minutes,
                hourly_rate,
            } => {
                let nanos = i128::from(hourly_rate.nanos()) * i128::from(minutes) / 60;
                Money::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
            }
        }
    }
}

/// An outcome as recorded (validated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutcome {
    pub task: String,
    pub status: OutcomeStatus,
    pub basis: ValueBasis,
    /// Free-form `key → value` labels (`"reviewer": "dana"`, `"ticket_tier": "gold"`).
    pub labels: BTreeMap<String, String>,
}

impl TaskOutcome {
    pub fn value(&self) -> Money {
        self.basis.value()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutcomeError {
    #[error("the task id is empty")]
    EmptyTask,
    #[error("status {0:?} is not one of success, failure, abandoned")]
    Status(String),
    #[error("give either value_usd or minutes_saved, not both")]
    BothValues,
    #[error(
        "minutes_saved needs an hourly rate: send hourly_rate_usd or configure [outcomes] hourly_rate_usd"
    )]
    NoHourlyRate,
    #[error("{field} must not be negative")]
    Negative { field: &'static str },
    #[error("minutes_saved must be at most {MAX_MINUTES_SAVED}")]
    TooManyMinutes,
    #[error("more than {MAX_OUTCOME_LABELS} labels")]
    TooManyLabels,
    #[error(transparent)]
    Label(#[from] LabelError),
}

impl OutcomeError {
    /// The request field at fault.
    pub fn field(&self) -> &str {
        match self {
            OutcomeError::EmptyTask => "task_id",
            OutcomeError::Status(_) => "status",
            OutcomeError::BothValues => "value_usd",
            OutcomeError::NoHourlyRate => "hourly_rate_usd",
            OutcomeError::Negative { field } => field,
            OutcomeError::TooManyMinutes => "minutes_saved",
            OutcomeError::TooManyLabels => "labels",
            OutcomeError::Label(e) => e.field(),
        }
    }
}

/// What a client sends, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutcomeInput {
    pub status: String,
    pub value_usd: Option<Money>,
    pub minutes_saved: Option<u64>,
    /// The request's own rate; when absent the caller's default (agent, team, global).
    pub hourly_rate: Option<Money>,
    pub labels: BTreeMap<String, String>,
}

/// Validate an outcome. `default_rate` is the configured hourly rate for the task's
/// agent or team, used when minutes are given without a rate.
pub fn validate(
    task: &str,
    input: &OutcomeInput,
    default_rate: Option<Money>,
) -> Result<TaskOutcome, OutcomeError> {
    let task = attribution::label("task_id", task)?.ok_or(OutcomeError::EmptyTask)?;
    let status = OutcomeStatus::parse(input.status.trim())
        .ok_or(OutcomeError::Status(input.status.clone()))?;
    let basis = match (input.value_usd, input.minutes_saved) {
        (Some(_), Some(_)) => return Err(OutcomeError::BothValues),
        (Some(v), None) => {
            if v.is_negative() {
                return Err(OutcomeError::Negative { field: "value_usd" });
            }
            ValueBasis::Usd { value: v }
        }
        (None, Some(m)) => {
            if m > MAX_MINUTES_SAVED {
                return Err(OutcomeError::TooManyMinutes);
            }
            let rate = input
                .hourly_rate
                .or(default_rate)
                .ok_or(OutcomeError::NoHourlyRate)?;
            if rate.is_negative() {
                return Err(OutcomeError::Negative {
                    field: "hourly_rate_usd",
                });
            }
            ValueBasis::MinutesSaved {
                minutes: m,
                hourly_rate: rate,
            }
        }
        (None, None) => ValueBasis::None,
    };
    if input.labels.len() > MAX_OUTCOME_LABELS {
        return Err(OutcomeError::TooManyLabels);
    }
    let mut labels = BTreeMap::new();
    for (k, v) in &input.labels {
        let Some(k) = attribution::label("labels", k)? else {
            continue;
        };
        labels.insert(k, attribution::label("labels", v)?.unwrap_or_default());
    }
    Ok(TaskOutcome {
        task,
        status,
        basis,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Money {
        Money::parse_usd(s).unwrap()
    }

    #[test]
    fn minutes_saved_are_priced_at_the_hourly_rate_rounded_down() {
        let b = ValueBasis::MinutesSaved {
            minutes: 20,
            hourly_rate: usd("45"),
        };
        assert_eq!(b.value(), usd("15"));
        let odd = ValueBasis::MinutesSaved {
            minutes: 1,
            hourly_rate: Money::from_nanos(7),
        };
        assert_eq!(odd.value(), Money::ZERO);
        assert_eq!(ValueBasis::None.value(), Money::ZERO);
    }

    #[test]
    fn validation() {
        let ok = validate(
            "t-1",
            &OutcomeInput {
                status: "success".into(),
                minutes_saved: Some(30),
                ..OutcomeInput::default()
            },
            Some(usd("60")),
        )
        .unwrap();
        assert_eq!(ok.value(), usd("30"));
        // The request's own rate wins over the default.
        let own = validate(
            "t-1",
            &OutcomeInput {
                status: "success".into(),
                minutes_saved: Some(30),
                hourly_rate: Some(usd("100")),
                ..OutcomeInput::default()
            },
            Some(usd("60")),
        )
        .unwrap();
        assert_eq!(own.value(), usd("50"));
        let bad = |i: OutcomeInput, rate: Option<Money>| validate("t", &i, rate).unwrap_err();
        assert!(matches!(
            bad(
                OutcomeInput {
                    status: "won".into(),
                    ..OutcomeInput::default()
                },
                None
            ),
            OutcomeError::Status(_)
        ));
        assert_eq!(
            bad(
                OutcomeInput {
                    status: "success".into(),
                    minutes_saved: Some(3),
                    ..OutcomeInput::default()
                },
                None
            ),
            OutcomeError::NoHourlyRate
        );
        assert_eq!(
            bad(
                OutcomeInput {
                    status: "success".into(),
                    minutes_saved: Some(3),
                    value_usd: Some(usd("1")),
                    ..OutcomeInput::default()
                },
                None
            ),
            OutcomeError::BothValues
        );
        assert!(matches!(
            bad(
                OutcomeInput {
                    status: "failure".into(),
                    value_usd: Some(usd("-1")),
                    ..OutcomeInput::default()
                },
                None
            ),
            OutcomeError::Negative { .. }
        ));
        assert!(validate("  ", &OutcomeInput::default(), None).is_err());
    }
}
