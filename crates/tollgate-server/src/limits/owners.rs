//! Task ids are scoped to their owner: the key's team, or the key itself when it has no
//! team. The first owner to use a task id keeps it; another owner's call naming it is
//! refused (403) before it is cached, counted by the guard or admitted, so it can never
//! add to, or halt, somebody else's task.
//!
//! Who owns a task is remembered here (bounded), and learnt from the ledger the first
//! time this process sees the task (its calls' key and team), so a restart does not hand
//! a task to whoever calls first. Across replicas, two owners' first calls within the
//! ledger's write delay (milliseconds) could both be admitted; from then on the first
//! owner recorded wins.

use crate::error::ApiError;
use std::collections::HashMap;
use std::sync::Mutex;
use tollgate_store::outcomes::TaskParty;
use tollgate_store::{OutcomeStore, Store, VirtualKey};

/// Task ids remembered before the map is emptied (and relearnt from the ledger).
const MAX_TASKS: usize = 100_000;

/// Who may use a task id.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claim {
    Team(String),
    Key(String),
}

impl Claim {
    fn of(key: &VirtualKey) -> Claim {
        match &key.team {
            Some(t) => Claim::Team(t.clone()),
            None => Claim::Key(key.id.clone()),
        }
    }

    /// The owner a recorded call shows.
    fn of_party(p: &TaskParty) -> Claim {
        match (&p.team, &p.key_id) {
            (Some(t), _) => Claim::Team(t.clone()),
            (None, Some(k)) => Claim::Key(k.clone()),
            (None, None) => Claim::Key(String::new()),
        }
    }

    fn covers(&self, p: &TaskParty) -> bool {
        match self {
            Claim::Team(t) => p.team.as_deref() == Some(t.as_str()),
            Claim::Key(k) => p.key_id.as_deref() == Some(k.as_str()),
        }
    }
}

#[derive(Default)]
pub struct TaskOwners {
    map: Mutex<HashMap<String, Claim>>,
}

impl TaskOwners {
    fn known(&self, task: &str) -> Option<Claim> {
        self.map.lock().ok()?.get(task).cloned()
    }

    /// Record `claim` for `task` unless one is there already; returns the one in force.
    fn claim(&self, task: &str, claim: Claim) -> Claim {
        let Ok(mut m) = self.map.lock() else {
            return claim;
        };
        if m.len() >= MAX_TASKS && !m.contains_key(task) {
            m.clear();
        }
        m.entry(task.to_string()).or_insert(claim).clone()
    }

    /// `Ok` if `key` may use `task`: nobody else has, or its owner did.
    pub async fn check(&self, store: &Store, task: &str, key: &VirtualKey) -> Result<(), ApiError> {
        let mine = Claim::of(key);
        let owner = match self.known(task) {
            Some(c) => c,
            None => {
                let parties = store.task_parties(task).await?;
                // The ledger's calls: all of this owner's (or none) → it is this owner's;
                // else the first other owner's.
                let found = match parties.iter().find(|p| !mine.covers(p)) {
                    None => mine.clone(),
                    Some(other) => Claim::of_party(other),
                };
                self.claim(task, found)
            }
        };
        if owner == mine {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "task {task:?} belongs to another team or key; use a task id of your own"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, team: Option<&str>) -> VirtualKey {
        VirtualKey {
            id: id.into(),
            hash: String::new(),
            name: None,
            team: team.map(str::to_string),
            agent: None,
            user: None,
            models: Vec::new(),
            created_ms: 0,
            revoked_ms: None,
            sealed_secret: None,
        }
    }

    #[test]
    fn a_party_belongs_to_its_team_or_key() {
        let p = TaskParty {
            key_id: Some("k1".into()),
            agent: None,
            team: Some("b".into()),
        };
        assert!(Claim::of(&key("k9", Some("b"))).covers(&p));
        assert!(!Claim::of(&key("k1", Some("a"))).covers(&p));
        assert_eq!(Claim::of_party(&p), Claim::Team("b".into()));
        let lone = TaskParty {
            key_id: Some("k1".into()),
            agent: None,
            team: None,
        };
        assert!(Claim::of(&key("k1", None)).covers(&lone));
        assert!(!Claim::of(&key("k2", None)).covers(&lone));
    }

    #[test]
    fn the_first_claim_stays() {
        let o = TaskOwners::default();
        assert_eq!(
            o.claim("t", Claim::Team("b".into())),
            Claim::Team("b".into())
        );
        assert_eq!(
            o.claim("t", Claim::Team("a".into())),
            Claim::Team("b".into())
        );
    }
}
