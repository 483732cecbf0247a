//! What a per-deployment / route / key / team override of a section applies to
//! (`[[cache.overrides]]`, `[[pruning.overrides]]`): first matching override wins.

/// The requests an override applies to: any listed deployment, route, key or team.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applies {
    pub deployments: Vec<String>,
    pub routes: Vec<String>,
    pub keys: Vec<String>,
    pub teams: Vec<String>,
}

impl Applies {
    pub fn new(
        deployments: &[String],
        routes: &[String],
        keys: &[String],
        teams: &[String],
    ) -> Applies {
        Applies {
            deployments: deployments.to_vec(),
            routes: routes.to_vec(),
            keys: keys.to_vec(),
            teams: teams.to_vec(),
        }
    }

    /// An override that names nothing would apply to nothing.
    pub fn is_empty(&self) -> bool {
        self.deployments.is_empty()
            && self.routes.is_empty()
            && self.keys.is_empty()
            && self.teams.is_empty()
    }

    pub fn matches(
        &self,
        deployment: &str,
        route: Option<&str>,
        key: &str,
        team: Option<&str>,
    ) -> bool {
        self.deployments.iter().any(|d| d == deployment)
            || route.is_some_and(|r| self.routes.iter().any(|x| x == r))
            || self.keys.iter().any(|k| k == key)
            || team.is_some_and(|t| self.teams.iter().any(|x| x == t))
    }
}
