//! Virtual keys: what clients authenticate with. Only a SHA-256 of each secret is stored;
//! the secret is shown once, when the key is created.

use crate::StoreError;
use crate::sqlite::{SqliteStore, Sync};
use rand::Rng;
use rusqlite::{Row, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Prefix of every tollgate key secret.
pub const SECRET_PREFIX: &str = "tg-";

/// A key's public record (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualKey {
    /// Public id, safe to log and show (`tgk_` + 12 characters).
    pub id: String,
    /// SHA-256 of the secret, hex.
    #[serde(skip_serializing)]
    pub hash: String,
    pub name: Option<String>,
    pub team: Option<String>,
    pub agent: Option<String>,
    pub user: Option<String>,
    /// Models (public names) this key may call; empty means all.
    pub models: Vec<String>,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

impl VirtualKey {
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }

    pub fn is_active(&self) -> bool {
        self.revoked_ms.is_none()
    }
}

/// What to create a key with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: Option<String>,
    pub team: Option<String>,
    pub agent: Option<String>,
    pub user: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
}

/// SHA-256 of a key secret, as stored.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn random_string(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn key_from_sql(r: &Row<'_>) -> rusqlite::Result<VirtualKey> {
    let models: Option<String> = r.get(6)?;
    Ok(VirtualKey {
        id: r.get(0)?,
        hash: r.get(1)?,
        name: r.get(2)?,
        team: r.get(3)?,
        agent: r.get(4)?,
        user: r.get(5)?,
        models: models
            .and_then(|m| serde_json::from_str(&m).ok())
            .unwrap_or_default(),
        created_ms: r.get(7)?,
        revoked_ms: r.get(8)?,
    })
}

const KEY_COLUMNS: &str = "id, hash, name, team, agent, user, models, created_ms, revoked_ms";

impl SqliteStore {
    /// Create a key; returns its record and the secret (shown once, never stored).
    pub fn create_key(
        &self,
        new: &NewKey,
        now_ms: i64,
    ) -> Result<(VirtualKey, String), StoreError> {
        let secret = format!("{SECRET_PREFIX}{}", random_string(43));
        let key = VirtualKey {
            id: format!("tgk_{}", random_string(12)),
            hash: hex::encode(hash_secret(&secret)),
            name: new.name.clone(),
            team: new.team.clone(),
            agent: new.agent.clone(),
            user: new.user.clone(),
            models: new.models.clone(),
            created_ms: now_ms,
            revoked_ms: None,
        };
        let conn = self.connect(Sync::Normal)?;
        conn.execute(
            &format!(
                "INSERT INTO keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ),
            params![
                key.id,
                key.hash,
                key.name,
                key.team,
                key.agent,
                key.user,
                if key.models.is_empty() {
                    None
                } else {
                    Some(serde_json::to_string(&key.models).unwrap_or_default())
                },
                key.created_ms,
                key.revoked_ms,
            ],
        )?;
        Ok((key, secret))
    }

    /// Every key, revoked ones included, oldest first.
    pub fn list_keys(&self) -> Result<Vec<VirtualKey>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {KEY_COLUMNS} FROM keys ORDER BY created_ms, id"
        ))?;
        let keys = stmt
            .query_map([], key_from_sql)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(keys)
    }

    /// Revoke a key by id. `false` if no active key has that id.
    pub fn revoke_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let n = conn.execute(
            "UPDATE keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
            params![id, now_ms],
        )?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("k.db")).unwrap();
        let (k, secret) = s
            .create_key(
                &NewKey {
                    team: Some("t".into()),
                    agent: Some("a".into()),
                    models: vec!["gpt-4o".into()],
                    ..NewKey::default()
                },
                5,
            )
            .unwrap();
        assert!(secret.starts_with(SECRET_PREFIX));
        assert_eq!(secret.len(), 46);
        assert_eq!(k.hash, hex::encode(hash_secret(&secret)));
        let all = s.list_keys().unwrap();
        assert_eq!(all, vec![k.clone()]);
        assert!(all[0].allows_model("gpt-4o") && !all[0].allows_model("o3"));
        // The secret is nowhere in the database.
        let conn = s.connect(Sync::Normal).unwrap();
        let n: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM keys WHERE hash = ?1 OR id = ?1 OR name = ?1",
                [&secret],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0);
        assert!(s.revoke_key(&k.id, 9).unwrap());
        assert!(!s.revoke_key(&k.id, 10).unwrap());
        assert_eq!(s.list_keys().unwrap()[0].revoked_ms, Some(9));
    }
}
