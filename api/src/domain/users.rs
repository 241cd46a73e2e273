//! Users: just-in-time provisioning from verified token claims.

use diesel_async::{AsyncConnection, AsyncPgConnection};

use super::{DomainError, DomainResult, Services};
use crate::db::models::UserRow;
use crate::db::repo::users;

pub use crate::auth::Claims;

/// How long a provisioned identity is trusted without reading its row again.
const IDENTITY_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// Identities kept at most (the cache is emptied when it is full).
const IDENTITY_CAPACITY: usize = 50_000;

/// Identities provisioned in the last minute, by their exact claims. A change of any claim
/// misses the cache and goes through provisioning again; an erasure forgets its user at once
/// ([`IdentityCache::forget`]).
#[derive(Default)]
pub struct IdentityCache {
    map: std::sync::Mutex<std::collections::HashMap<Claims, (UserRow, std::time::Instant)>>,
    /// Bumped by every `forget`: a provisioning that started before one does not cache what
    /// it read (it may be the user just forgotten).
    generation: std::sync::atomic::AtomicU64,
}

impl IdentityCache {
    fn get(&self, claims: &Claims) -> Option<UserRow> {
        let map = self.map.lock().ok()?;
        map.get(claims)
            .filter(|(_, at)| at.elapsed() < IDENTITY_TTL)
            .map(|(u, _)| u.clone())
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn put(&self, claims: &Claims, user: &UserRow, generation: u64) {
        if let Ok(mut map) = self.map.lock() {
            // Checked under the lock that `forget` takes: nothing forgotten comes back.
            if self.generation() != generation {
                return;
            }
            if map.len() >= IDENTITY_CAPACITY {
                map.clear();
            }
            map.insert(claims.clone(), (user.clone(), std::time::Instant::now()));
        }
    }

    /// Forgets every identity of `user` (its erasure was requested).
    pub fn forget(&self, user: uuid::Uuid) {
        let mut map = match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        map.retain(|_, (u, _)| u.id != user);
    }
}

/// Returns the user for these claims, creating or updating it as needed. Signing in joins no
/// workspace: invitations are accepted by the person (`domain::invitations`). The
/// identity of an erased user is refused (`UNAUTHENTICATED`): it cannot sign in again, nor
/// come back as a new user. No token signs in as an API key's service account: a `sub` of
/// their form (`apikey|…`) is refused, and provisioning never finds their rows.
pub async fn provision(services: &Services, claims: &Claims) -> DomainResult<UserRow> {
    if claims
        .subject
        .starts_with(super::governance::api_key_admin::SERVICE_SUBJECT_PREFIX)
    {
        return Err(DomainError::Unauthenticated(
            "this token's subject is reserved for API keys".into(),
        ));
    }
    if let Some(u) = services.identities.get(claims) {
        return Ok(u);
    }
    let generation = services.identities.generation();
    let user = provision_uncached(services, claims).await?;
    services.identities.put(claims, &user, generation);
    Ok(user)
}

async fn provision_uncached(services: &Services, claims: &Claims) -> DomainResult<UserRow> {
    let mut conn = services.conn().await?;
    if let Some(u) = users::find_by_subject(&mut conn, &claims.subject).await?
        && u.email == claims.email
        && u.name == claims.name
        && u.email_verified == claims.email_verified
    {
        return Ok(u);
    }
    let claims = claims.clone();
    let closed = super::gdpr::closed_subject(&services.vault, &claims.subject);
    conn.transaction(async |conn| provision_tx(conn, &claims, &closed).await)
        .await
}

async fn provision_tx(
    conn: &mut AsyncPgConnection,
    c: &Claims,
    closed_subject: &str,
) -> DomainResult<UserRow> {
    let name = c.name.as_deref();
    if let Some(u) = users::find_by_subject(conn, &c.subject).await? {
        return Ok(users::update_profile(conn, u.id, &c.email, name, c.email_verified).await?);
    }
    // A subject seen for the first time (or again): was it erased?
    if crate::db::repo::erasure::subject_taken(conn, closed_subject).await? {
        return Err(DomainError::Unauthenticated(
            "this account was erased; it cannot sign in again".into(),
        ));
    }
    users::insert_signed_in(conn, &c.subject, &c.email, name, c.email_verified)
        .await
        .map_err(DomainError::from)
}

/// Users by id.
pub async fn load_many(services: &Services, ids: &[uuid::Uuid]) -> DomainResult<Vec<UserRow>> {
    let mut conn = services.conn().await?;
    Ok(users::find_many(&mut conn, ids).await?)
}
