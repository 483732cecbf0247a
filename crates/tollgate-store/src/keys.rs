//! Virtual keys: what clients authenticate with. A SHA-256 of each secret is stored for
//! bearer authentication; the secret is shown once, when the key is created.
//!
//! AWS SigV4 (how boto3 and the other AWS SDKs sign Bedrock calls) cannot be checked
//! against a hash: the verifier must compute the same HMAC, so it needs the secret. When
//! a master key is configured, the secret is also stored sealed with AES-256-GCM under a
//! key derived from the master key (HMAC-SHA256 of the master key and a fixed label),
//! with the key id as associated data so a sealed value cannot be moved to another key.
//! The database alone never reveals a secret; rotating the master key makes the sealed
//! copies unreadable (those keys fall back to bearer use only).

use crate::StoreError;
use crate::sqlite::{SqliteStore, Sync};
use rand::Rng;
use ring::aead;
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
    /// The secret sealed by a [`SecretSealer`] (hex of nonce ‖ ciphertext ‖ tag).
    #[serde(skip)]
    pub sealed_secret: Option<String>,
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

/// Seals and opens key secrets with a key derived from the master key.
pub struct SecretSealer {
    key: aead::LessSafeKey,
}

impl std::fmt::Debug for SecretSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretSealer(..)")
    }
}

const SEAL_LABEL: &[u8] = b"tollgate/key-secret-seal/v1";

impl SecretSealer {
    pub fn new(master_key: &str) -> Option<SecretSealer> {
        let derived = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, master_key.as_bytes()),
            SEAL_LABEL,
        );
        let key = aead::UnboundKey::new(&aead::AES_256_GCM, derived.as_ref()).ok()?;
        Some(SecretSealer {
            key: aead::LessSafeKey::new(key),
        })
    }

    /// Seal `secret` for key `key_id`.
    pub fn seal(&self, key_id: &str, secret: &str) -> Option<String> {
        let nonce_bytes: [u8; 12] = rand::random();
        let mut data = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce_bytes),
                aead::Aad::from(key_id.as_bytes()),
                &mut data,
            )
            .ok()?;
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&data);
        Some(hex::encode(out))
    }

    /// Open a sealed secret of key `key_id`; `None` if it was sealed under another
    /// master key, for another key id, or tampered with.
    pub fn open(&self, key_id: &str, sealed: &str) -> Option<String> {
        let raw = hex::decode(sealed).ok()?;
        if raw.len() < 12 + 16 {
            return None;
        }
        let (nonce, rest) = raw.split_at(12);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, aead::Aad::from(key_id.as_bytes()), &mut data)
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
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

/// A new key's record and its secret (shown once): a random id and secret, the secret's
/// hash, and its sealed copy when `sealer` is given. Every backend stores this record.
pub fn new_key(new: &NewKey, now_ms: i64, sealer: Option<&SecretSealer>) -> (VirtualKey, String) {
    let secret = format!("{SECRET_PREFIX}{}", random_string(43));
    let id = format!("tgk_{}", random_string(12));
    let sealed_secret = sealer.and_then(|s| s.seal(&id, &secret));
    let key = VirtualKey {
        id,
        hash: hex::encode(hash_secret(&secret)),
        name: new.name.clone(),
        team: new.team.clone(),
        agent: new.agent.clone(),
        user: new.user.clone(),
        models: new.models.clone(),
        created_ms: now_ms,
        revoked_ms: None,
        sealed_secret,
    };
    (key, secret)
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
        sealed_secret: r.get(9)?,
    })
}

const KEY_COLUMNS: &str =
    "id, hash, name, team, agent, user, models, created_ms, revoked_ms, sealed_secret";

impl SqliteStore {
    /// Create a key; returns its record and the secret (shown once, stored only hashed).
    /// The key works as a bearer token; see [`SqliteStore::create_key_sealed`] for one
    /// that also signs AWS SigV4 requests.
    pub fn create_key(
        &self,
        new: &NewKey,
        now_ms: i64,
    ) -> Result<(VirtualKey, String), StoreError> {
        self.create_key_sealed(new, now_ms, None)
    }

    /// Create a key whose secret is also stored sealed by `sealer` (when given), so the
    /// gateway can verify SigV4 signatures made with it.
    pub fn create_key_sealed(
        &self,
        new: &NewKey,
        now_ms: i64,
        sealer: Option<&SecretSealer>,
    ) -> Result<(VirtualKey, String), StoreError> {
        let (key, secret) = new_key(new, now_ms, sealer);
        self.insert_key(&key)?;
        Ok((key, secret))
    }

    /// Store a key record made by [`new_key`].
    pub fn insert_key(&self, key: &VirtualKey) -> Result<(), StoreError> {
        let conn = self.connect(Sync::Normal)?;
        conn.execute(
            &format!(
                "INSERT INTO keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
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
                key.sealed_secret,
            ],
        )?;
        Ok(())
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

    #[test]
    fn sealed_secrets_open_only_with_the_same_master_key_and_id() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("k.db")).unwrap();
        let sealer = SecretSealer::new("master-1").unwrap();
        let (k, secret) = s
            .create_key_sealed(&NewKey::default(), 1, Some(&sealer))
            .unwrap();
        let stored = s.list_keys().unwrap()[0].sealed_secret.clone().unwrap();
        assert!(!stored.contains(&secret) && !stored.contains(&hex::encode(&secret)));
        assert_eq!(
            sealer.open(&k.id, &stored).as_deref(),
            Some(secret.as_str())
        );
        assert_eq!(sealer.open("tgk_other", &stored), None);
        assert_eq!(
            SecretSealer::new("master-2").unwrap().open(&k.id, &stored),
            None
        );
        let mut tampered = stored.clone().into_bytes();
        tampered[30] = if tampered[30] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            sealer.open(&k.id, std::str::from_utf8(&tampered).unwrap()),
            None
        );
        let (plain, _) = s.create_key(&NewKey::default(), 2).unwrap();
        assert!(plain.sealed_secret.is_none());
    }
}
