//! A cache of the identity provider's signing keys.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Mutex, RwLock};

use super::AuthError;

/// Keys are re-fetched at most this often when a token names an unknown `kid`
/// (at most six times a minute), and refreshed at least this often anyway.
const MIN_REFRESH: Duration = Duration::from_secs(10);
const MAX_AGE: Duration = Duration::from_secs(600);

/// Keys from a JWKS URL, by `kid`, each with its algorithm.
pub struct JwksCache {
    url: String,
    client: reqwest::Client,
    keys: RwLock<HashMap<String, (DecodingKey, Algorithm)>>,
    /// Last fetch attempt and last success (the lock also serializes fetches).
    state: Mutex<(Option<Instant>, Option<Instant>)>,
}

impl JwksCache {
    /// An empty cache; keys are fetched on first use.
    pub fn new(url: String) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self {
            url,
            client,
            keys: RwLock::new(HashMap::new()),
            state: Mutex::new((None, None)),
        }
    }

    /// The key for `kid`, fetching the set when it is unknown or stale.
    pub async fn key(&self, kid: &str) -> Result<(DecodingKey, Algorithm), AuthError> {
        let fresh = self
            .state
            .lock()
            .await
            .1
            .is_some_and(|t| t.elapsed() < MAX_AGE);
        if fresh && let Some(k) = self.keys.read().await.get(kid) {
            return Ok(k.clone());
        }
        self.refresh().await;
        self.keys
            .read()
            .await
            .get(kid)
            .cloned()
            .ok_or_else(|| AuthError("token signed by an unknown key".into()))
    }

    async fn refresh(&self) {
        let mut state = self.state.lock().await;
        if state.0.is_some_and(|t| t.elapsed() < MIN_REFRESH) {
            return;
        }
        state.0 = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "fetched JWKS");
                *self.keys.write().await = keys;
                state.1 = Some(Instant::now());
            }
            // Keep the old keys; the next attempt comes no sooner than MIN_REFRESH.
            Err(e) => tracing::warn!(url = %self.url, error = %e, "fetching JWKS failed"),
        }
    }

    async fn fetch(&self) -> anyhow::Result<HashMap<String, (DecodingKey, Algorithm)>> {
        let set: JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(a), _) => match format!("{a:?}").parse::<Algorithm>() {
                    Ok(a) => a,
                    Err(_) => continue,
                },
                (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                (None, _) => continue,
            };
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                continue; // Symmetric keys never come from a public key set.
            }
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, (key, alg));
            }
        }
        Ok(keys)
    }
}
