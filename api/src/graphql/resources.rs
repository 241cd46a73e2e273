//! Resources a workspace allocates or meters.

use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};

use super::error;
use super::replay::{self, Replayable};
use crate::db::models::ResourceRow;
use crate::domain;
use crate::ids::WorkspaceId;

/// How a resource is used.
// Its values are the stored names (`db::models::ResourceKind`), compared by a test.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "crate::db::models::ResourceKind")]
pub enum ResourceKind {
    /// Held until released: seats, locations, connections.
    Allocated,
    /// Consumed and counted per window that resets: executions per day, API calls per month.
    Metered,
}

/// When a metered resource's window resets (UTC).
// Its values are the stored names (`db::models::ResetPeriod`), compared by a test.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "crate::db::models::ResetPeriod")]
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
        self.0.kind.into()
    }

    /// Reset period of a metered resource; null for allocated ones.
    async fn reset_period(&self) -> Option<ResetPeriod> {
        self.0.reset_period.map(Into::into)
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
        let new = domain::resources::NewResource {
            workspace_id: WorkspaceId::decode(&input.workspace_id)
                .ok_or_else(|| error::not_found("workspace"))?,
            key: input.key,
            name: input.name,
            unit: input.unit,
            kind: input.kind.into(),
            reset_period: input.reset_period.map(Into::into),
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::resources::define(s, a, new, k).await,
            |r| Some(r.workspace_id),
            |row| DefineResourcePayload {
                resource: Resource(row),
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use async_graphql::EnumType;

    use super::{ResetPeriod, ResourceKind};
    use crate::db::models;

    /// The GraphQL values are the stored names, so both execution paths (the one-step
    /// writer writes `as_str`) and the database agree.
    #[test]
    fn graphql_enum_values_are_the_stored_names() {
        let graphql: Vec<&str> = ResourceKind::items().iter().map(|i| i.name).collect();
        let stored: Vec<&str> = models::ResourceKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(graphql, stored);
        for item in ResourceKind::items() {
            assert_eq!(models::ResourceKind::from(item.value).as_str(), item.name);
        }
        let graphql: Vec<&str> = ResetPeriod::items().iter().map(|i| i.name).collect();
        let stored: Vec<&str> = models::ResetPeriod::ALL
            .iter()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(graphql, stored);
        for item in ResetPeriod::items() {
            assert_eq!(models::ResetPeriod::from(item.value).as_str(), item.name);
        }
    }
}
