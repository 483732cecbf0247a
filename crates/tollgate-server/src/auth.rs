//! Who is calling: virtual keys (held in memory, refreshed from the store) and the
//! master key for the admin API.

use crate::error::ApiError;
use http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tollgate_store::VirtualKey;
use tollgate_store::keys::hash_secret;

/// Active keys by the SHA-256 of their secret. Lookups never touch the database: the
/// cache is reloaded every few seconds (so keys created or revoked by the CLI in another
/// process take effect) and updated at once by the admin API.
#[derive(Default)]
pub struct KeyCache {
    by_hash: RwLock<HashMap<[u8; 32], Arc<VirtualKey>>>,
}

impl KeyCache {
    /// Replace the whole cache with `keys` (revoked ones are left out).
    pub fn replace(&self, keys: Vec<VirtualKey>) {
        let map = keys
            .into_iter()
            .filter(VirtualKey::is_active)
            .filter_map(|k| {
                let mut h = [0u8; 32];
                hex::decode_to_slice(&k.hash, &mut h).ok()?;
                Some((h, Arc::new(k)))
            })
            .collect();
        if let Ok(mut g) = self.by_hash.write() {
            *g = map;
        }
    }

    pub fn insert(&self, key: VirtualKey) {
        let mut h = [0u8; 32];
        if hex::decode_to_slice(&key.hash, &mut h).is_ok()
            && let Ok(mut g) = self.by_hash.write()
        {
            g.insert(h, Arc::new(key));
        }
    }

    pub fn remove(&self, id: &str) {
        if let Ok(mut g) = self.by_hash.write() {
            g.retain(|_, k| k.id != id);
        }
    }

    pub fn lookup(&self, secret: &str) -> Option<Arc<VirtualKey>> {
        let h = hash_secret(secret);
        self.by_hash.read().ok()?.get(&h).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_hash.read().map(|g| g.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The bearer token of a request: `Authorization: Bearer <t>`, else `x-api-key`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?.trim();
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
            .filter(|t| !t.is_empty());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Authenticate a proxy request by virtual key.
pub fn authenticate(cache: &KeyCache, headers: &HeaderMap) -> Result<Arc<VirtualKey>, ApiError> {
    let token = bearer(headers).ok_or(ApiError::MissingKey)?;
    cache.lookup(token).ok_or(ApiError::InvalidKey)
}

/// The master key, kept as a hash so comparisons take the same time whatever matches.
pub struct MasterKey {
    hash: Option<[u8; 32]>,
    env_var: String,
}

impl MasterKey {
    pub fn new(key: Option<&SecretString>, env_var: &str) -> MasterKey {
        MasterKey {
            hash: key.map(|k| Sha256::digest(k.expose_secret().as_bytes()).into()),
            env_var: env_var.to_string(),
        }
    }

    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.hash else {
            return Err(ApiError::AdminDisabled(self.env_var.clone()));
        };
        let token = bearer(headers).ok_or(ApiError::MissingKey)?;
        let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Constant-time comparison of the two digests.
        let diff = got
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(ApiError::InvalidKey)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn bearer_forms() {
        assert_eq!(bearer(&h(&[("authorization", "Bearer abc")])), Some("abc"));
        assert_eq!(
            bearer(&h(&[("authorization", "bearer  abc ")])),
            Some("abc")
        );
        assert_eq!(bearer(&h(&[("authorization", "Basic abc")])), None);
        assert_eq!(bearer(&h(&[("authorization", "Bearer ")])), None);
        assert_eq!(bearer(&h(&[("x-api-key", "k")])), Some("k"));
        assert_eq!(bearer(&h(&[])), None);
    }

    #[test]
    fn master_key_check() {
        let m = MasterKey::new(Some(&SecretString::from("root".to_string())), "M");
        assert!(m.check(&h(&[("authorization", "Bearer root")])).is_ok());
        assert!(matches!(
            m.check(&h(&[("authorization", "Bearer nope")])),
            Err(ApiError::InvalidKey)
        ));
        let off = MasterKey::new(None, "M");
        assert!(matches!(
            off.check(&h(&[("authorization", "Bearer root")])),
            Err(ApiError::AdminDisabled(_))
        ));
    }
}
