//! Workspace templates: `templates` lists them, `saveWorkspaceTemplate` and
//! `deleteWorkspaceTemplate` manage a workspace's own, `applyTemplate` applies one (owners).

use async_graphql::{Context, ID, InputObject, Json, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::approvals::ApprovalRequest;
use super::governance::WorkspaceSettings;
use super::replay::{self, Replayable};
use super::{error, rc};
use crate::domain::governance::templates as domain;
use crate::ids::WorkspaceId;

/// A preset of policy, security, quota and retention settings (see
/// docs/features/templates.md). Built-ins are public; a custom template is visible to its workspace only.
pub struct WorkspaceTemplate(pub domain::Template);

#[Object]
impl WorkspaceTemplate {
    /// Opaque id (`tpl_…`); fixed for the built-ins.
    async fn id(&self) -> ID {
        ID(self.0.external_id())
    }

    /// Key, e.g. `HEALTHCARE` (unique among the templates a workspace sees).
    async fn key(&self) -> &str {
        &self.0.key
    }

    /// Display name.
    async fn name(&self) -> &str {
        &self.0.name
    }

    /// What it is for.
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }

    /// Built into the service (`ENTERPRISE_STARTER`, `FINANCIAL_SERVICES`, `HEALTHCARE`,
    /// `GOVERNMENT`).
    async fn built_in(&self) -> bool {
        self.0.built_in()
    }

    /// Visible to every workspace (the built-ins); custom templates are private to theirs.
    async fn public(&self) -> bool {
        self.0.built_in()
    }

    /// What it sets: `{policy, security, quotas, retention}`, each with only the settings
    /// the template names (field names as in `WorkspaceSettings`; `null` means "no limit").
    /// It never holds an IP allow-list.
    async fn settings(&self) -> Json<&domain::Preset> {
        Json(&self.0.preset)
    }

    /// When a custom template was saved (null for built-ins).
    async fn created_at(&self) -> Option<DateTime<Utc>> {
        self.0.created_at
    }
}

/// One setting an application changed.
#[derive(SimpleObject)]
pub struct SettingChange {
    /// `section.field`, e.g. `policy.mfaRequired`, `security.requireTls`, `quotas.members`,
    /// `retention.auditLogsDays`.
    pub field: String,
    /// The value before (null: unset or no limit); lists as JSON arrays.
    pub from: Option<String>,
    /// The value after.
    pub to: Option<String>,
}

/// Input of `saveWorkspaceTemplate`.
#[derive(InputObject)]
pub struct SaveWorkspaceTemplateInput {
    /// The workspace whose current settings it snapshots (and to which it belongs).
    pub workspace_id: ID,
    /// `^[A-Z][A-Z0-9_]{0,39}$`, unique in the workspace, not a built-in key.
    pub key: String,
    /// Display name, 1–100 characters.
    pub name: String,
    /// At most 500 characters.
    pub description: Option<String>,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `saveWorkspaceTemplate`.
#[derive(SimpleObject)]
pub struct SaveWorkspaceTemplatePayload {
    /// The new template.
    pub template: WorkspaceTemplate,
}

/// Input of `deleteWorkspaceTemplate`.
#[derive(InputObject)]
pub struct DeleteWorkspaceTemplateInput {
    /// A custom template.
    pub template_id: ID,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `deleteWorkspaceTemplate`.
#[derive(SimpleObject)]
pub struct DeleteWorkspaceTemplatePayload {
    /// Id of the deleted template.
    pub deleted_template_id: ID,
}

/// Input of `applyTemplate`.
#[derive(InputObject)]
pub struct ApplyTemplateInput {
    /// The workspace.
    pub workspace_id: ID,
    /// A built-in template, or a custom template of this workspace.
    pub template_id: ID,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `applyTemplate`.
pub struct ApplyTemplatePayload(domain::Applied);

#[Object]
impl ApplyTemplatePayload {
    /// The workspace's settings now (unchanged when the application is held for approval).
    async fn settings(&self, ctx: &Context<'_>) -> Result<Option<WorkspaceSettings>> {
        super::governance::settings_of(ctx, self.0.workspace_id.0)
            .await
            .map(Some)
    }

    /// Exactly what changed (empty when the workspace already had these settings, or when
    /// the application is held for approval).
    async fn changes(&self) -> Vec<SettingChange> {
        self.0
            .changes
            .iter()
            .map(|c| SettingChange {
                field: c.field.clone(),
                from: c.from.clone(),
                to: c.to.clone(),
            })
            .collect()
    }

    /// Set when the application waits for a second owner's or admin's approval (it would
    /// change security settings or take actions off the approval list, and the workspace
    /// requires approval for `CHANGE_SECURITY_SETTINGS`); nothing changed yet.
    async fn approval_request(&self) -> Option<ApprovalRequest> {
        self.0.approval_request.clone().map(ApprovalRequest)
    }
}

fn workspace_id(id: &ID) -> Result<WorkspaceId> {
    WorkspaceId::decode(id).ok_or_else(|| error::not_found("workspace"))
}

/// Template queries.
#[derive(Default)]
pub struct TemplateQuery;

#[Object]
impl TemplateQuery {
    /// The templates: the built-ins always; with `workspaceId`, also that workspace's custom
    /// templates when the caller is one of its owners or admins, unless `publicOnly`. A
    /// workspace the caller cannot manage adds nothing (it reads like a missing one).
    async fn templates(
        &self,
        ctx: &Context<'_>,
        public_only: Option<bool>,
        workspace_id: Option<ID>,
    ) -> Result<Vec<WorkspaceTemplate>> {
        let rc = rc(ctx);
        // An id that is not a workspace id names no workspace the caller manages.
        let ws = match workspace_id {
            Some(id) => match WorkspaceId::decode(&id) {
                Some(ws) => Some(ws),
                None => {
                    return Ok(domain::BUILT_INS
                        .iter()
                        .cloned()
                        .map(WorkspaceTemplate)
                        .collect());
                }
            },
            None => None,
        };
        let list = domain::list(&rc.services, &rc.actor, public_only.unwrap_or(false), ws)
            .await
            .map_err(|e| rc.err(e))?;
        Ok(list.into_iter().map(WorkspaceTemplate).collect())
    }
}

/// Template mutations.
#[derive(Default)]
pub struct TemplateMutation;

#[Object]
impl TemplateMutation {
    /// Saves the workspace's current policy, security (without the IP allow-list), quotas and
    /// retention as a custom template (owners; at most 50 per workspace). Audited as
    /// `template.save`.
    async fn save_workspace_template(
        &self,
        ctx: &Context<'_>,
        input: SaveWorkspaceTemplateInput,
    ) -> Result<Replayable<SaveWorkspaceTemplatePayload>> {
        let new = domain::NewTemplate {
            workspace_id: workspace_id(&input.workspace_id)?,
            key: input.key,
            name: input.name,
            description: input.description,
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::save(s, a, new, k).await,
            |t| t.workspace_id,
            |t| SaveWorkspaceTemplatePayload {
                template: WorkspaceTemplate(t),
            },
        )
        .await
    }

    /// Deletes a custom template (owners of its workspace). Audited as `template.delete`.
    async fn delete_workspace_template(
        &self,
        ctx: &Context<'_>,
        input: DeleteWorkspaceTemplateInput,
    ) -> Result<Replayable<DeleteWorkspaceTemplatePayload>> {
        let del = domain::DeleteTemplate {
            template_id: input.template_id.to_string(),
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::delete(s, a, del, k).await,
            |_| None,
            |id| DeleteWorkspaceTemplatePayload {
                deleted_template_id: ID(id),
            },
        )
        .await
    }

    /// Applies a template to a workspace (owners) in one transaction: the policy, security,
    /// quota (for resources the workspace has) and retention settings it names, and one
    /// `template.apply` audit event listing every change. The IP allow-list is never touched.
    async fn apply_template(
        &self,
        ctx: &Context<'_>,
        input: ApplyTemplateInput,
    ) -> Result<Replayable<ApplyTemplatePayload>> {
        let apply = domain::ApplyTemplate {
            workspace_id: workspace_id(&input.workspace_id)?,
            template_id: input.template_id.to_string(),
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::apply(s, a, apply, k).await,
            |a| Some(a.workspace_id.0),
            ApplyTemplatePayload,
        )
        .await
    }
}
