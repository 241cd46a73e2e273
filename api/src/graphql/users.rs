//! Users and the `viewer` query.

use async_graphql::{Context, ID, Object, Result};

use super::rc;
use crate::db::models::UserRow;
use crate::ids::UserId;

/// A person who signed in.
pub struct User(pub UserRow);

#[Object]
impl User {
    /// Opaque id (`usr_…`).
    pub async fn id(&self) -> ID {
        ID(UserId(self.0.id).encode())
    }

    /// E-mail address.
    async fn email(&self) -> &str {
        &self.0.email
    }

    /// Display name, when the identity provider gave one.
    async fn name(&self) -> Option<&str> {
        self.0.name.as_deref()
    }

    /// Whether the person signed in (true for every member: invitations are not members).
    async fn signed_in(&self) -> bool {
        self.0.subject.is_some()
    }

    /// When the user was first seen.
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }

    /// The person's latest consent decision per purpose (`recordConsent` keeps the whole
    /// history). Readable by the person alone: `FORBIDDEN` for anyone else.
    async fn consents(
        &self,
        ctx: &Context<'_>,
    ) -> Result<std::sync::Arc<Vec<super::gdpr::Consent>>> {
        rc(ctx)
            .once(
                format!("consents:{}", self.0.id),
                super::gdpr::consents_of(ctx, self.0.id),
            )
            .await
    }

    /// Pending invitations addressed to this person's verified e-mail, newest first (at most
    /// 100; none while the address is not verified). Readable by the person alone:
    /// `FORBIDDEN` for anyone else.
    async fn invitations(
        &self,
        ctx: &Context<'_>,
    ) -> Result<std::sync::Arc<Vec<super::invitations::ReceivedInvitation>>> {
        let rc = rc(ctx);
        if rc.actor.user_id.0 != self.0.id {
            return Err(rc.err(crate::domain::DomainError::Forbidden(
                "only the person themself reads their invitations".into(),
            )));
        }
        rc.once(
            format!("invitations:{}", self.0.id),
            super::invitations::received(ctx),
        )
        .await
    }

    /// Data exports about this person that you asked for (`requestDataExport`), newest
    /// first (`first`: 0–50, default 10).
    async fn data_exports(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
    ) -> Result<Vec<super::gdpr::DataExport>> {
        super::gdpr::exports_of(ctx, self.0.id, first).await
    }
}

/// Queries about the caller.
#[derive(Default)]
pub struct UserQuery;

#[Object]
impl UserQuery {
    /// The signed-in caller.
    async fn viewer(&self, ctx: &Context<'_>) -> Result<User> {
        let rc = rc(ctx);
        let user = rc
            .loaders
            .users
            .load_one(rc.actor.user_id.0)
            .await
            .map_err(|e| rc.err(e))?;
        user.map(User).ok_or_else(|| {
            rc.err(crate::domain::DomainError::internal(anyhow::anyhow!(
                "viewer row missing"
            )))
        })
    }
}
