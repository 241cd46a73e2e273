//! Retention settings of a workspace (read: owners and admins; change: owners).

use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject};

use super::replay::{self, Replayable};
use super::{error, rc};
use crate::domain::{self, retention};
use crate::ids::WorkspaceId;

/// How long a workspace keeps each kind of its data, in days (see
/// docs/features/retention-and-archives.md).
#[derive(SimpleObject)]
pub struct RetentionSettings {
    /// Audit events (30–3650; default 2555, seven years).
    pub audit_logs_days: i32,
    /// The usage ledger and past windows of metered usage (30–3650; default 730).
    pub usage_events_days: i32,
    /// Workflow execution logs: a declared requirement (1–3650; default 365).
    pub execution_logs_days: i32,
    /// Workflow data: a declared requirement (1–3650; default 2555).
    pub workflow_data_days: i32,
    /// Removed members' personal data (1–3650; default 2555).
    pub user_data_days: i32,
    /// Whether cleanup archives audit events and the usage ledger to object storage before it
    /// deletes them (`Workspace.archives`; default false).
    pub archive_before_delete: bool,
}

impl From<retention::RetentionSettings> for RetentionSettings {
    fn from(s: retention::RetentionSettings) -> Self {
        Self {
            audit_logs_days: s.audit_logs_days,
            usage_events_days: s.usage_events_days,
            execution_logs_days: s.execution_logs_days,
            workflow_data_days: s.workflow_data_days,
            user_data_days: s.user_data_days,
            archive_before_delete: s.archive_before_delete,
        }
    }
}

/// The retention settings of a workspace (owners and admins; `FORBIDDEN` otherwise).
pub async fn settings_of(ctx: &Context<'_>, ws: uuid::Uuid) -> Result<RetentionSettings> {
    let rc = rc(ctx);
    let s = retention::read(&rc.services, &rc.actor, WorkspaceId(ws))
        .await
        .map_err(|e| rc.err(e))?;
    Ok(s.into())
}

/// Input of `updateRetentionSettings`: absent categories keep their value.
#[derive(InputObject)]
pub struct UpdateRetentionSettingsInput {
    /// Workspace.
    pub workspace_id: ID,
    /// Audit events, 30–3650 days.
    pub audit_logs_days: Option<i32>,
    /// Usage ledger, 30–3650 days.
    pub usage_events_days: Option<i32>,
    /// Execution logs, 1–3650 days.
    pub execution_logs_days: Option<i32>,
    /// Workflow data, 1–3650 days.
    pub workflow_data_days: Option<i32>,
    /// Removed members' personal data, 1–3650 days.
    pub user_data_days: Option<i32>,
    /// Archive audit events and the usage ledger before deleting them.
    pub archive_before_delete: Option<bool>,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `updateRetentionSettings`.
#[derive(SimpleObject)]
pub struct UpdateRetentionSettingsPayload {
    /// The settings now.
    pub retention_settings: RetentionSettings,
}

/// Retention mutations.
#[derive(Default)]
pub struct RetentionMutation;

#[Object]
impl RetentionMutation {
    /// Changes how long the workspace keeps each kind of its data (owners). The daily
    /// cleanup deletes what is past it.
    async fn update_retention_settings(
        &self,
        ctx: &Context<'_>,
        input: UpdateRetentionSettingsInput,
    ) -> Result<Replayable<UpdateRetentionSettingsPayload>> {
        let ws = WorkspaceId::decode(&input.workspace_id)
            .ok_or_else(|| error::not_found("workspace"))?;
        let change = retention::RetentionChange {
            workspace_id: ws,
            days: [
                input.audit_logs_days,
                input.usage_events_days,
                input.execution_logs_days,
                input.workflow_data_days,
                input.user_data_days,
            ],
            archive_before_delete: input.archive_before_delete,
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::retention::update(s, a, change, k).await,
            move |_| Some(ws.0),
            |s| UpdateRetentionSettingsPayload {
                retention_settings: s.into(),
            },
        )
        .await
    }
}
