//! Resources a workspace allocates or meters.

use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};

use super::replay::{self, Replayable, replayable};
use super::{error, rc};
use crate::db::models::ResourceRow;
use crate::domain;
use crate::ids::WorkspaceId;

/// How a resource is used.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum ResourceKind {
    /// Held until released: seats, locations, connections.
    Allocated,
    /// Consumed and counted per window that resets: executions per day, API calls per month.
    Metered,
}

impl ResourceKind {
    pub(crate) fn from_db(s: &str) -> Self {
        if s == "METERED" {
            ResourceKind::Metered
        } else {
            ResourceKind::Allocated
        }
    }
}

/// When a metered resource's window resets (UTC).
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum ResetPeriod {
    /// Every day at 00:00 UTC.
    Day,
    /// On the first of every month at 00:00 UTC.
    Month,
}

/// Something organizations consume, named by a key.
#[derive(Clone)]
pub struct Resource(pub ResourceRow);

#[Object]
impl Resource {
    /// Key used in `recordUsage` and `setOrganizationLimit`, e.g. `users`.
    async fn key(&self) -> &str {
        &self.0.key
    }

    /// Display name.
    async fn name(&self) -> &str {
        &self.0.name
    }

    /// Unit, e.g. `seats`.
    async fn unit(&self) -> &str {
        &self.0.unit
    }

    /// Allocated or metered.
    async fn kind(&self) -> ResourceKind {
        ResourceKind::from_db(&self.0.kind)
    }

    /// Reset period of a metered resource; null for allocated ones.
    async fn reset_period(&self) -> Option<ResetPeriod> {
        match self.0.reset_period.as_deref() {
            Some("DAY") => Some(ResetPeriod::Day),
            Some("MONTH") => Some(ResetPeriod::Month),
            _ => None,
        }
    }

    /// One of the built-ins every workspace has (`users`, `locations`, `sso_connections`).
    async fn built_in(&self) -> bool {
        self.0.built_in
    }
}

/// Input of `defineResource`.
#[derive(InputObject)]
pub struct DefineResourceInput {
    /// Workspace.
    pub workspace_id: ID,
    /// Key: lower-case letters, digits and `_`, starting with a letter, at most 40.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Unit, e.g. `calls`.
    pub unit: String,
    /// Allocated or metered.
    pub kind: ResourceKind,
    /// Required for metered resources, absent for allocated ones.
    pub reset_period: Option<ResetPeriod>,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `defineResource`.
#[derive(SimpleObject)]
pub struct DefineResourcePayload {
    /// The new resource.
    pub resource: Resource,
}

/// Resource mutations.
#[derive(Default)]
pub struct ResourceMutation;

#[Object]
impl ResourceMutation {
    /// Defines a custom resource (owners and admins).
    async fn define_resource(
        &self,
        ctx: &Context<'_>,
        input: DefineResourceInput,
    ) -> Result<Replayable<DefineResourcePayload>> {
        let rc = rc(ctx);
        let key = replay::key(ctx, input.idempotency_key);
        let new = domain::resources::NewResource {
            workspace_id: WorkspaceId::decode(&input.workspace_id)
                .ok_or_else(|| error::not_found("workspace"))?,
            key: input.key,
            name: input.name,
            unit: input.unit,
            kind: match input.kind {
                ResourceKind::Allocated => domain::resources::Kind::Allocated,
                ResourceKind::Metered => domain::resources::Kind::Metered,
            },
            reset_period: input.reset_period.map(|p| match p {
                ResetPeriod::Day => domain::resources::ResetPeriod::Day,
                ResetPeriod::Month => domain::resources::ResetPeriod::Month,
            }),
        };
        let done = domain::resources::define(&rc.services, &rc.actor, new, key.as_ref())
            .await
            .map_err(|e| rc.err(e))?;
        Ok(replayable(
            done,
            |r| Some(r.workspace_id),
            |row| DefineResourcePayload {
                resource: Resource(row),
            },
        ))
    }
}
