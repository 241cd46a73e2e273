//! Tokens for the tests: HS256 development tokens and RS256 tokens whose public key is
//! served from a JWKS endpoint the harness starts.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::{AUDIENCE, HS256_SECRET, ISSUER};

/// The test RSA key (PEM), whose public half is `fixtures/jwks.json`.
pub const RSA_PEM: &str = include_str!("../fixtures/rsa_test_key.pem");
/// The JWKS document served to the server.
pub const JWKS: &str = include_str!("../fixtures/jwks.json");
/// `kid` of the test key.
pub const KID: &str = "test-key-1";

/// Now, in seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Mints tokens.
pub struct Tokens {
    rsa: EncodingKey,
}

impl Default for Tokens {
    fn default() -> Self {
        Self::new()
    }
}

impl Tokens {
    /// Loads the keys.
    pub fn new() -> Self {
        Self {
            rsa: EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).expect("test RSA key"),
        }
    }

    /// Standard claims for `sub`/`email`, valid for an hour.
    pub fn claims(sub: &str, email: &str, verified: bool) -> Value {
        json!({
            "sub": sub, "email": email, "name": email.split('@').next(), "email_verified": verified,
            "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "nbf": now(), "exp": now() + 3600,
        })
    }

    /// A valid HS256 token.
    pub fn hs256(&self, sub: &str, email: &str, verified: bool) -> String {
        self.hs256_claims(&Self::claims(sub, email, verified))
    }

    /// An HS256 token with arbitrary claims.
    pub fn hs256_claims(&self, claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(HS256_SECRET.as_bytes()),
        )
        .expect("sign hs256")
    }

    /// An RS256 token signed by the JWKS key, with arbitrary claims.
    pub fn rs256_claims(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(KID.into());
        jsonwebtoken::encode(&h, claims, &self.rsa).expect("sign rs256")
    }
}

/// Serves `JWKS` on a random local port; returns the address.
pub async fn serve_jwks() -> SocketAddr {
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(|| async { ([("content-type", "application/json")], JWKS) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind jwks");
    let addr = listener.local_addr().expect("jwks addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}
