//! Audit events.

use async_graphql::{Context, ID, Json, Object, Result};

use super::rc;
use super::users::User;
use crate::db::models::AuditEventRow;
use crate::ids::AuditEventId;

/// One successful mutation, recorded in the same transaction as its effect.
pub struct AuditEvent(pub AuditEventRow);

#[Object]
impl AuditEvent {
    /// Opaque id (`aud_…`).
    pub async fn id(&self) -> ID {
        ID(AuditEventId(self.0.id).encode())
    }

    /// What was done, e.g. `member.add`.
    async fn action(&self) -> &str {
        &self.0.action
    }

    /// Kind of the changed object, e.g. `Member`.
    async fn target_type(&self) -> &str {
        &self.0.target_type
    }

    /// Id of the changed object.
    async fn target_id(&self) -> ID {
        ID(self.0.target_id.clone())
    }

    /// Summary of the change.
    async fn summary(&self) -> Json<serde_json::Value> {
        Json(self.0.summary.clone())
    }

    /// Who did it.
    async fn actor(&self, ctx: &Context<'_>) -> Result<Option<User>> {
        let Some(id) = self.0.actor_id else {
            return Ok(None);
        };
        let rc = rc(ctx);
        Ok(rc
            .loaders
            .users
            .load_one(id)
            .await
            .map_err(|e| rc.err(e))?
            .map(User))
    }

    /// Id of the request that did it (as in the `x-request-id` header and the logs).
    async fn request_id(&self) -> Option<&str> {
        self.0.request_id.as_deref()
    }

    /// When.
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
}
