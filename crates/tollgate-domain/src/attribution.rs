//! Who a request is charged to.
//!
//! Sources in precedence order: the virtual key's owner, then `x-tollgate-*` headers,
//! then the request body's `user` and `metadata` fields. A higher source's value is never
//! overridden by a lower one (a key bound to agent A cannot claim to be agent B); tags
//! are the union of all sources.

use serde::{Deserialize, Serialize};

/// Longest accepted label (agent, user, team, task, tag), in bytes.
pub const MAX_LABEL_BYTES: usize = 256;
/// Most tags a request may carry.
pub const MAX_TAGS: usize = 32;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    pub key_id: Option<String>,
    pub user: Option<String>,
    pub team: Option<String>,
    pub agent: Option<String>,
    pub task: Option<String>,
    pub tags: Vec<String>,
}

/// Labels from one source, already validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    pub user: Option<String>,
    pub team: Option<String>,
    pub agent: Option<String>,
    pub task: Option<String>,
    pub tags: Vec<String>,
}

impl Attribution {
    /// Fill what is still unset from a lower-precedence source; add its tags.
    pub fn fill_from(&mut self, lower: Labels) {
        fn fill(slot: &mut Option<String>, v: Option<String>) {
            if slot.is_none() {
                *slot = v;
            }
        }
        fill(&mut self.user, lower.user);
        fill(&mut self.team, lower.team);
        fill(&mut self.agent, lower.agent);
        fill(&mut self.task, lower.task);
        for t in lower.tags {
            if self.tags.len() >= MAX_TAGS {
                break;
            }
            if !self.tags.contains(&t) {
                self.tags.push(t);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("{field} is longer than {MAX_LABEL_BYTES} bytes")]
    TooLong { field: String },
    #[error("{field} contains control characters")]
    ControlChars { field: String },
    #[error("{field} has more than {MAX_TAGS} tags")]
    TooManyTags { field: String },
}

impl LabelError {
    pub fn field(&self) -> &str {
        match self {
            LabelError::TooLong { field }
            | LabelError::ControlChars { field }
            | LabelError::TooManyTags { field } => field,
        }
    }
}

/// Validate one label: trimmed, non-empty (empty means absent), bounded, printable.
pub fn label(field: &str, raw: &str) -> Result<Option<String>, LabelError> {
    let v = raw.trim();
    if v.is_empty() {
        return Ok(None);
    }
    if v.len() > MAX_LABEL_BYTES {
        return Err(LabelError::TooLong {
            field: field.to_string(),
        });
    }
    if v.chars().any(char::is_control) {
        return Err(LabelError::ControlChars {
            field: field.to_string(),
        });
    }
    Ok(Some(v.to_string()))
}

/// Parse a comma-separated tag list (`"env:prod, feature:search"`), dropping blanks and
/// duplicates.
pub fn tags(field: &str, raw: &str) -> Result<Vec<String>, LabelError> {
    let mut out: Vec<String> = Vec::new();
    for part in raw.split(',') {
        if let Some(t) = label(field, part)?
            && !out.contains(&t)
        {
            out.push(t);
        }
    }
    if out.len() > MAX_TAGS {
        return Err(LabelError::TooManyTags {
            field: field.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_sources_win_and_tags_union() {
        let mut a = Attribution {
            key_id: Some("k1".into()),
            agent: Some("billing-bot".into()),
            tags: vec!["a".into()],
            ..Attribution::default()
        };
        a.fill_from(Labels {
            agent: Some("impostor".into()),
            task: Some("t-1".into()),
            tags: vec!["a".into(), "b".into()],
            ..Labels::default()
        });
        a.fill_from(Labels {
            user: Some("alice".into()),
            task: Some("t-2".into()),
            ..Labels::default()
        });
        assert_eq!(a.agent.as_deref(), Some("billing-bot"));
        assert_eq!(a.task.as_deref(), Some("t-1"));
        assert_eq!(a.user.as_deref(), Some("alice"));
        assert_eq!(a.tags, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn labels_are_validated() {
        assert_eq!(label("agent", "  x "), Ok(Some("x".into())));
        assert_eq!(label("agent", "   "), Ok(None));
        assert!(label("agent", &"x".repeat(300)).is_err());
        assert!(label("agent", "a\u{7}b").is_err());
        assert_eq!(
            tags("tags", "env:prod, ,feature:x,env:prod").unwrap(),
            vec!["env:prod".to_string(), "feature:x".to_string()]
        );
        let many = (0..40).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        assert!(tags("tags", &many).is_err());
    }
}
