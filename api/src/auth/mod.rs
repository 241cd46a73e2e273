//! JWT verification: HS256 development tokens and RS256 (Auth0-style) tokens whose keys
//! come from a JWKS endpoint.

mod claims;
mod jwks;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Config;

pub use claims::Claims;
pub use jwks::JwksCache;

/// Issuer of development tokens when `JWT_ISSUER` is not set.
pub const DEV_ISSUER: &str = "workspaces-dev";
/// Audience of development tokens when `JWT_AUDIENCE` is not set.
pub const DEV_AUDIENCE: &str = "workspaces-api";
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// Why a token was refused. The reason goes to the log; clients see [`AuthError::public`],
/// which never describes the server's key configuration.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// Reasons a client may be told as they are (they describe the token, not the server).
const PUBLIC_REASONS: &[&str] = &["malformed token", "token expired", "token not yet valid"];

impl AuthError {
    /// The message for the client.
    pub fn public(&self) -> &str {
        PUBLIC_REASONS
            .iter()
            .find(|r| **r == self.0)
            .copied()
            .unwrap_or("invalid bearer token")
    }
}

/// Refuses a token whose header names critical parameters (RFC 7515 §4.1.11: a recipient
/// must refuse `crit` extensions it does not understand, and this server understands none).
fn refuse_critical_header(token: &str) -> Result<(), AuthError> {
    use base64::Engine as _;
    let malformed = || AuthError("malformed token".into());
    let segment = token.split('.').next().ok_or_else(malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .map_err(|_| malformed())?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    if header.contains_key("crit") {
        return Err(AuthError(
            "token header lists critical parameters (crit), which are not supported".into(),
        ));
    }
    Ok(())
}

/// Identity claims become stored names and e-mail addresses: no control characters.
fn refuse_control_characters(claim: &'static str, value: &str) -> Result<(), AuthError> {
    if value.chars().any(char::is_control) {
        return Err(AuthError(format!(
            "token claim {claim} contains control characters"
        )));
    }
    Ok(())
}

/// The claims we read. `exp` and `nbf` must be JSON numbers: a string fails here.
#[derive(Debug, Deserialize, Serialize)]
struct RawClaims {
    sub: String,
    exp: f64,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
    /// Auth0 puts profile claims of access tokens under namespaced keys.
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// Verifies bearer tokens.
pub struct Verifier {
    hs256: Option<DecodingKey>,
    jwks: Option<JwksCache>,
    issuer: String,
    audience: String,
}

impl Verifier {
    /// Builds the verifier from configuration.
    pub fn new(config: &Config) -> Self {
        Self {
            hs256: config
                .jwt_hs256_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks: config
                .jwt_jwks_url
                .as_ref()
                .map(|u| JwksCache::new(u.clone())),
            issuer: config
                .jwt_issuer
                .clone()
                .unwrap_or_else(|| DEV_ISSUER.into()),
            audience: config
                .jwt_audience
                .clone()
                .unwrap_or_else(|| DEV_AUDIENCE.into()),
        }
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.algorithms = vec![alg];
        v.leeway = LEEWAY_SECS;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        v
    }

    /// Verifies `token` and returns the identity claims and the session's.
    pub async fn verify(&self, token: &str) -> Result<(Claims, Session), AuthError> {
        refuse_critical_header(token)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthError("malformed token".into()))?;
        let data = match header.alg {
            Algorithm::HS256 => {
                let key = self.hs256.as_ref().ok_or_else(|| {
                    AuthError("HS256 tokens are not accepted by this server".into())
                })?;
                jsonwebtoken::decode::<RawClaims>(token, key, &self.validation(Algorithm::HS256))
            }
            alg => {
                let jwks = self.jwks.as_ref().ok_or_else(|| {
                    AuthError(format!("{alg:?} tokens are not accepted by this server"))
                })?;
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| AuthError("token has no kid".into()))?;
                let (key, key_alg) = jwks.key(kid).await?;
                // The key's own algorithm decides, never the token's header alone.
                if key_alg != alg {
                    return Err(AuthError("token algorithm does not match its key".into()));
                }
                jsonwebtoken::decode::<RawClaims>(token, &key, &self.validation(key_alg))
            }
        }
        .map_err(describe)?;
        let c = data.claims;
        let email = c
            .email
            .or_else(|| namespaced(&c.extra, "email").and_then(|v| v.as_str().map(String::from)));
        let email = email.ok_or_else(|| AuthError("token carries no email claim".into()))?;
        let name = c
            .name
            .or_else(|| namespaced(&c.extra, "name").and_then(|v| v.as_str().map(String::from)));
        let verified = c
            .email_verified
            .or_else(|| namespaced(&c.extra, "email_verified").and_then(serde_json::Value::as_bool))
            // No claim proves nothing about the address (`invitations` need it verified).
            .unwrap_or(false);
        if c.sub.trim().is_empty() {
            return Err(AuthError("token has an empty sub".into()));
        }
        refuse_control_characters("sub", &c.sub)?;
        refuse_control_characters("email", &email)?;
        if let Some(n) = &name {
            refuse_control_characters("name", n)?;
        }
        let _ = (c.exp, c.nbf);
        let session = Session::of(&c.extra);
        Ok((
            Claims {
                subject: c.sub,
                email: email.trim().to_ascii_lowercase(),
                name: name.filter(|n| !n.trim().is_empty()),
                email_verified: verified,
            },
            session,
        ))
    }
}

/// What a token says about its sign-in, for the workspaces' policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// `amr` (RFC 8176) holds `mfa` (also under an Auth0-style namespaced `…/amr` claim).
    pub mfa: bool,
    /// `auth_time` (OpenID Connect), else `iat`, in seconds since the epoch.
    pub authenticated_at: Option<i64>,
}

impl Session {
    fn of(extra: &serde_json::Map<String, serde_json::Value>) -> Self {
        let amr = extra.get("amr").or_else(|| namespaced(extra, "amr"));
        let mfa = match amr {
            Some(serde_json::Value::Array(items)) => {
                items.iter().any(|v| v.as_str() == Some("mfa"))
            }
            Some(serde_json::Value::String(s)) => s == "mfa",
            _ => false,
        };
        let time = |name: &str| {
            extra
                .get(name)
                .and_then(serde_json::Value::as_f64)
                .filter(|t| t.is_finite() && *t >= 0.0 && *t < 1e12)
                .map(|t| t as i64)
        };
        Self {
            mfa,
            authenticated_at: time("auth_time").or_else(|| time("iat")),
        }
    }
}

fn namespaced<'a>(
    extra: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Option<&'a serde_json::Value> {
    let suffix = format!("/{name}");
    extra
        .iter()
        .find(|(k, _)| k.starts_with("https://") && k.ends_with(&suffix))
        .map(|(_, v)| v)
}

fn describe(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    AuthError(
        match e.kind() {
            K::ExpiredSignature => "token expired",
            K::ImmatureSignature => "token not yet valid",
            K::InvalidIssuer => "token issuer is not accepted",
            K::InvalidAudience => "token audience is not accepted",
            K::InvalidSignature => "token signature is invalid",
            K::InvalidAlgorithm => "token algorithm is not accepted",
            K::MissingRequiredClaim(_) => "token lacks a required claim",
            _ => "token is invalid",
        }
        .to_string(),
    )
}

/// Signs a development token (HS256) for `email`, valid for `ttl_secs`.
pub fn dev_token(
    config: &Config,
    subject: &str,
    email: &str,
    name: Option<&str>,
    ttl_secs: u64,
) -> anyhow::Result<String> {
    let secret = config.jwt_hs256_secret.as_ref().ok_or_else(|| {
        anyhow::anyhow!("JWT_HS256_SECRET is not set: development tokens are disabled")
    })?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({
        "sub": subject,
        "email": email,
        "name": name,
        "email_verified": true,
        "iss": config.jwt_issuer.clone().unwrap_or_else(|| DEV_ISSUER.into()),
        "aud": config.jwt_audience.clone().unwrap_or_else(|| DEV_AUDIENCE.into()),
        "iat": now,
        "nbf": now,
        "exp": now + ttl_secs,
    });
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}
