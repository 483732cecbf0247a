//! Who is calling: virtual keys (held in memory, refreshed from the store) and the
//! master key for the admin API.

use crate::error::ApiError;
use http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tollgate_providers::sigv4::{self, Received};
use tollgate_store::keys::hash_secret;
use tollgate_store::{SecretSealer, VirtualKey};

/// Active keys by the SHA-256 of their secret. Lookups never touch the database: the
/// cache is reloaded every few seconds (so keys created or revoked by the CLI in another
/// process take effect) and updated at once by the admin API.
#[derive(Default)]
pub struct KeyCache {
    maps: RwLock<Maps>,
}

#[derive(Default)]
struct Maps {
    by_hash: HashMap<[u8; 32], Arc<VirtualKey>>,
    /// By public id: SigV4 clients send the id as their access key id.
    by_id: HashMap<String, Arc<VirtualKey>>,
}

impl Maps {
    fn insert(&mut self, key: VirtualKey) {
        let mut h = [0u8; 32];
        if hex::decode_to_slice(&key.hash, &mut h).is_ok() {
            let key = Arc::new(key);
            self.by_id.insert(key.id.clone(), key.clone());
            self.by_hash.insert(h, key);
        }
    }
}

impl KeyCache {
    /// Replace the whole cache with `keys` (revoked ones are left out).
    pub fn replace(&self, keys: Vec<VirtualKey>) {
        let mut maps = Maps::default();
        for k in keys.into_iter().filter(VirtualKey::is_active) {
            maps.insert(k);
        }
        if let Ok(mut g) = self.maps.write() {
            *g = maps;
        }
    }

    pub fn insert(&self, key: VirtualKey) {
        if let Ok(mut g) = self.maps.write() {
            g.insert(key);
        }
    }

    pub fn remove(&self, id: &str) {
        if let Ok(mut g) = self.maps.write() {
            g.by_hash.retain(|_, k| k.id != id);
            g.by_id.remove(id);
        }
    }

    pub fn lookup(&self, secret: &str) -> Option<Arc<VirtualKey>> {
        let h = hash_secret(secret);
        self.maps.read().ok()?.by_hash.get(&h).cloned()
    }

    /// An active key by its public id.
    pub fn lookup_id(&self, id: &str) -> Option<Arc<VirtualKey>> {
        self.maps.read().ok()?.by_id.get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.maps.read().map(|g| g.by_hash.len()).unwrap_or(0)
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

/// Whether a request carries an AWS SigV4 `Authorization` header.
pub fn sigv4_header(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.trim_start().starts_with(sigv4::ALGORITHM))
}

/// A SigV4 request's signer, found from its headers alone (before the body is read):
/// an active key whose secret can be opened, a `bedrock` credential scope, a date
/// within the allowed skew. [`Signer::verify`] then checks the signature over the body.
pub struct Signer {
    auth: sigv4::AuthHeader,
    pub key: Arc<VirtualKey>,
    secret: String,
}

impl Signer {
    /// Check the signature (the body's hash included).
    pub fn verify(&self, req: &Received<'_>, now_unix: i64) -> Result<(), ApiError> {
        sigv4::verify(&self.auth, &self.secret, req, now_unix).map_err(ApiError::BadSignature)
    }

    /// Whether `name` (lower case) is one of the signed headers.
    pub fn signed(&self, name: &str) -> bool {
        self.auth.signed_headers.iter().any(|h| h == name)
    }
}

/// The signer of a SigV4-signed request (Bedrock clients): the access key id is a
/// tollgate key id, the secret access key that key's secret. The secret is read from
/// its sealed copy (see `tollgate_store::keys`), so this needs the master key.
pub fn sigv4_signer(
    cache: &KeyCache,
    sealer: Option<&SecretSealer>,
    master_key_env: &str,
    authorization: &str,
    headers: &HeaderMap,
    now_unix: i64,
) -> Result<Signer, ApiError> {
    let auth = sigv4::parse_authorization(authorization).map_err(ApiError::BadSignature)?;
    let key = cache
        .lookup_id(&auth.access_key_id)
        .ok_or(ApiError::UnknownAccessKey)?;
    sigv4::check_scope(&auth, headers, now_unix).map_err(ApiError::BadSignature)?;
    let sealer = sealer.ok_or_else(|| {
        ApiError::SigV4Unavailable(format!(
            "AWS SigV4 authentication is disabled: start tollgate with a master key ({master_key_env}) so key secrets can be verified."
        ))
    })?;
    let secret = key
        .sealed_secret
        .as_deref()
        .and_then(|sealed| sealer.open(&key.id, sealed))
        .ok_or_else(|| {
            ApiError::SigV4Unavailable(format!(
                "Key {} cannot sign AWS requests: it was created without the current master key. Use it as a bearer token, or create a new key.",
                key.id
            ))
        })?;
    Ok(Signer { auth, key, secret })
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
