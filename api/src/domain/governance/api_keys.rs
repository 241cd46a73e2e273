//! API keys: what a key looks like, how it is hashed, and how a request presenting one is
//! authenticated (creating, listing and revoking keys is in `api_key_admin`).
//!
//! A key is `wsk_<12 hex>_<43 base64url>`: the first part (`wsk_…`, the *prefix*) names the
//! key in logs and lists, the rest is 256 random bits. Only the SHA-256 of the whole key is
//! stored; a presented key is found by its prefix and compared in constant time. Each key acts
//! as its own service-account user, a member of its workspace only, so a key reaches nothing
//! else. Recently authenticated keys are cached for `GOVERNANCE_CACHE_MS`; revoking forgets a
//! key in this process at once. Last use is kept in memory and stored with the API usage
//! counters' flush.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::repo::governance::{self as repo, KeyAuth};
use crate::domain::{DomainError, DomainResult};

/// How every key starts.
pub const KEY_PREFIX: &str = "wsk_";
/// Hex digits of the identifying part after `wsk_`.
const ID_HEX: usize = 12;
/// Longest token looked at as a key.
const MAX_KEY_LEN: usize = 100;
/// Keys cached at most (emptied when full).
const CAPACITY: usize = 50_000;

/// A new key: what the client is shown once, and what is stored.
pub struct NewSecret {
    /// The whole key (shown once).
    pub secret: String,
    /// Its identifying prefix (`wsk_` and 12 hex digits).
    pub prefix: String,
    /// SHA-256 of the whole key.
    pub hash: Vec<u8>,
}

/// Generates a key.
pub fn generate() -> NewSecret {
    use aes_gcm::aead::rand_core::RngCore as _;
    let mut rng = aes_gcm::aead::OsRng;
    let mut id = [0u8; ID_HEX / 2];
    rng.fill_bytes(&mut id);
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let prefix = format!("{KEY_PREFIX}{}", hex::encode(id));
    let secret = format!(
        "{prefix}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    NewSecret {
        hash: hash(&secret),
        prefix,
        secret,
    }
}

/// SHA-256 of a key.
pub fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Whether a bearer token is meant as an API key (it starts with `wsk_`).
pub fn looks_like_key(token: &str) -> bool {
    token.starts_with(KEY_PREFIX)
}

/// The prefix of a well-formed key.
fn prefix_of(token: &str) -> Option<&str> {
    if token.len() > MAX_KEY_LEN || !token.is_ascii() {
        return None;
    }
    let prefix = token.get(..KEY_PREFIX.len() + ID_HEX)?;
    let id = &prefix[KEY_PREFIX.len()..];
    let rest = token.get(prefix.len()..)?;
    (id.bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && rest.starts_with('_')
        && rest.len() > 1)
        .then_some(prefix)
}

/// Equal in constant time (for equal lengths, which SHA-256 digests have).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An authenticated key.
#[derive(Debug, Clone, Copy)]
pub struct KeyCaller {
    /// The key.
    pub key: Uuid,
    /// Its workspace.
    pub workspace: Uuid,
    /// Its service-account user.
    pub user: Uuid,
}

/// Keys recently read, by prefix, and last uses not yet stored.
pub struct KeyCache {
    ttl: Duration,
    keys: Mutex<HashMap<String, (Instant, KeyAuth)>>,
    used: Mutex<HashMap<Uuid, DateTime<Utc>>>,
}

impl KeyCache {
    /// A cache trusting what it read for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            keys: Mutex::new(HashMap::new()),
            used: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets the key with `prefix` (revoked).
    pub fn forget(&self, prefix: &str) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(prefix);
    }

    fn cached(&self, prefix: &str) -> Option<KeyAuth> {
        let map = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        map.get(prefix)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, k)| k.clone())
    }

    fn put(&self, prefix: &str, key: &KeyAuth) {
        let mut map = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(prefix.to_string(), (Instant::now(), key.clone()));
    }

    fn mark_used(&self, key: Uuid) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if used.len() < CAPACITY {
            used.insert(key, Utc::now());
        }
    }

    /// Stores the last uses recorded since the previous call (one statement per distinct
    /// time, usually one); the keys touched.
    pub async fn flush(&self, conn: &mut diesel_async::AsyncPgConnection) -> anyhow::Result<usize> {
        let used = std::mem::take(&mut *self.used.lock().unwrap_or_else(|p| p.into_inner()));
        if used.is_empty() {
            return Ok(0);
        }
        let at = used.values().max().copied().unwrap_or_else(Utc::now);
        let ids: Vec<Uuid> = used.into_keys().collect();
        Ok(repo::touch_keys(conn, &ids, at).await?)
    }
}

/// The key a request presents, or `UNAUTHENTICATED` (unknown, revoked, expired, or
/// malformed: one message for all, so that a guess learns nothing).
pub async fn authenticate(governance: &super::Governance, token: &str) -> DomainResult<KeyCaller> {
    let refused = || DomainError::Unauthenticated("invalid API key".into());
    let prefix = prefix_of(token).ok_or_else(refused)?;
    let key = match governance.keys.cached(prefix) {
        Some(k) => k,
        None => {
            let mut conn = governance.conn().await?;
            let k = repo::key_by_prefix(&mut conn, prefix)
                .await?
                .ok_or_else(refused)?;
            governance.keys.put(prefix, &k);
            k
        }
    };
    if !same(&hash(token), &key.secret_hash) {
        return Err(refused());
    }
    if key.revoked_at.is_some() {
        tracing::info!(key = prefix, "revoked API key refused");
        return Err(refused());
    }
    if key.pending_approval_id.is_some() {
        tracing::info!(key = prefix, "API key awaiting approval refused");
        return Err(refused());
    }
    if key.expires_at.is_some_and(|at| at <= Utc::now()) {
        tracing::info!(key = prefix, "expired API key refused");
        return Err(refused());
    }
    governance.keys.mark_used(key.id);
    Ok(KeyCaller {
        key: key.id,
        workspace: key.workspace_id,
        user: key.user_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash() {
        let k = generate();
        assert!(looks_like_key(&k.secret));
        assert_eq!(prefix_of(&k.secret), Some(k.prefix.as_str()));
        assert_eq!(k.prefix.len(), 16);
        assert!(same(&hash(&k.secret), &k.hash));
        assert!(!same(&hash(&format!("{}x", k.secret)), &k.hash));
        assert_ne!(generate().secret, k.secret);
    }

    #[test]
    fn malformed_keys_have_no_prefix() {
        assert!(prefix_of("wsk_").is_none());
        assert!(prefix_of("wsk_0123456789ab").is_none());
        assert!(prefix_of("wsk_0123456789ab_").is_none());
        assert!(prefix_of("wsk_0123456789AB_x").is_none());
        assert!(prefix_of("wsk_0123456789ab_x").is_some());
        assert!(prefix_of(&format!("wsk_0123456789ab_{}", "x".repeat(200))).is_none());
        assert!(prefix_of("wsk_é123456789ab_x").is_none());
    }
}
