//! Workspaces: the tenant container.

use async_graphql::connection::Connection;
use async_graphql::{Context, Enum, ID, InputObject, MaybeUndefined, Object, Result, SimpleObject};

use super::audit::AuditEvent;
use super::members::{Member, Role};
use super::organizations::{Organization, OrganizationConnection};
use super::pagination::{self, complexity};
use super::replay::{self, Replayable};
use super::resources::Resource;
use super::{error, rc};
use crate::db::models::WorkspaceRow;
use crate::domain::{self, DomainError};
use crate::ids::{MemberId, WorkspaceId};

/// How a workspace is billed. Chosen at creation; it can never change.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum BillingMode {
    /// One billing account pays for every organization.
    Single,
    /// Up to ten billing accounts; each root organization is assigned one and its subtree
    /// draws only from that account's pool.
    Assigned,
    /// Up to ten billing accounts feeding one pool shared by the whole workspace.
    Pooled,
}

impl From<BillingMode> for domain::BillingMode {
    fn from(m: BillingMode) -> Self {
        match m {
            BillingMode::Single => domain::BillingMode::Single,
            BillingMode::Assigned => domain::BillingMode::Assigned,
            BillingMode::Pooled => domain::BillingMode::Pooled,
        }
    }
}

impl From<domain::BillingMode> for BillingMode {
    fn from(m: domain::BillingMode) -> Self {
        match m {
            domain::BillingMode::Single => BillingMode::Single,
            domain::BillingMode::Assigned => BillingMode::Assigned,
            domain::BillingMode::Pooled => BillingMode::Pooled,
        }
    }
}

/// A workspace: one customer account holding organizations, members and billing.
#[derive(Clone)]
pub struct Workspace(pub WorkspaceRow);

#[Object]
impl Workspace {
    /// Opaque id (`ws_…`).
    pub async fn id(&self) -> ID {
        ID(WorkspaceId(self.0.id).encode())
    }

    /// Name, 1–50 characters.
    async fn name(&self) -> &str {
        &self.0.name
    }

    /// Description, up to 200 characters.
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }

    /// Billing mode, fixed at creation.
    async fn billing_mode(&self) -> Result<BillingMode> {
        domain::BillingMode::parse(&self.0.billing_mode)
            .map(Into::into)
            .ok_or_else(|| {
                error::to_graphql(
                    DomainError::internal(anyhow::anyhow!("bad billing mode")),
                    "",
                )
            })
    }

    /// The caller's role here.
    async fn viewer_role(&self, ctx: &Context<'_>) -> Result<Role> {
        let rc = rc(ctx);
        let access = rc
            .loaders
            .access
            .load_one(self.0.id)
            .await
            .map_err(|e| rc.err(e))?;
        access
            .map(|(_, role)| role.into())
            .ok_or_else(|| rc.err(DomainError::NotFound("workspace")))
    }

    /// When it was created.
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }

    /// When its settings last changed.
    async fn updated_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.updated_at
    }

    /// Members, oldest first (people who accepted their invitation; pending ones are in
    /// `invitations`). At most 100 per page.
    #[graphql(complexity = "complexity(first, child_complexity)")]
    async fn members(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, Member>> {
        let rc = rc(ctx);
        let page = pagination::page(first, after.as_deref())?;
        let rows = rc
            .loaders
            .member_pages
            .load_one((self.0.id, page))
            .await
            .map_err(|e| rc.err(e))?;
        Ok(pagination::connection(
            rows.unwrap_or_default(),
            page,
            |m| m.id,
            Member,
        ))
    }

    /// Organizations, oldest first (all of them, or only the roots). At most 100 per page.
    #[graphql(complexity = "complexity(first, child_complexity)")]
    async fn organizations(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        #[graphql(default = false)] roots_only: bool,
    ) -> Result<super::one_step::Fast<OrganizationConnection>> {
        let rc = rc(ctx);
        let page = pagination::page(first, after.as_deref())?;
        // The page is read once per operation, however many aliases ask for it.
        let rows = rc
            .once(
                format!("organizations:{}:{:?}", self.0.id, (&roots_only, &page,)),
                async {
                    domain::organizations::page_for_workspace(
                        &rc.services,
                        self.0.id,
                        roots_only,
                        page,
                    )
                    .await
                    .map_err(|e| rc.err(e))
                },
            )
            .await?
            .as_ref()
            .clone();
        // The extra row only tells whether there is a next page: nothing of it is shown.
        let shown = &rows[..rows.len().min(page.size())];
        let fetched = super::organizations::prefetch(ctx, shown).await?;
        Ok(OrganizationConnection::from_rows(rows, page, |o| {
            Organization::prefetched(o, fetched.clone())
        }))
    }

    /// Resources organizations can use: the built-ins and the workspace's own.
    async fn resources(&self, ctx: &Context<'_>) -> Result<Vec<Resource>> {
        let rc = rc(ctx);
        let rows = rc
            .loaders
            .resources
            .load_one(self.0.id)
            .await
            .map_err(|e| rc.err(e))?;
        Ok(rows.unwrap_or_default().into_iter().map(Resource).collect())
    }

    /// Billing accounts, oldest first. Owners and admins only (`FORBIDDEN` otherwise).
    async fn billing_accounts(
        &self,
        ctx: &Context<'_>,
    ) -> Result<std::sync::Arc<Vec<super::billing::BillingAccount>>> {
        rc(ctx)
            .once(
                format!("billing_accounts:{}", self.0.id),
                super::billing::accounts_of(ctx, self.0.id),
            )
            .await
    }

    /// Costs of a month: fees accrued, the month-end projection, and breakdowns by resource
    /// and by billing account. Owners and admins only.
    async fn billing_summary(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "super::billing::BillingPeriod::CurrentMonth")]
        period: super::billing::BillingPeriod,
    ) -> Result<std::sync::Arc<super::billing::BillingSummary>> {
        rc(ctx)
            .once(
                format!("billing_summary:{}:{:?}", self.0.id, (&period,)),
                super::billing::summary_of(ctx, self.0.id, period),
            )
            .await
    }

    /// Governance: the policies and security settings enforced on the workspace, its
    /// quotas, retention and integrations. Owners and admins only (`FORBIDDEN` otherwise).
    async fn settings(
        &self,
        ctx: &Context<'_>,
    ) -> Result<std::sync::Arc<super::governance::WorkspaceSettings>> {
        rc(ctx)
            .once(
                format!("settings:{}", self.0.id),
                super::governance::settings_of(ctx, self.0.id),
            )
            .await
    }

    /// Whether the workspace's policy accepts an upload of this name and MIME type (each at
    /// most 255 characters), for frontends to ask before uploading. Any member.
    async fn validate_upload(
        &self,
        ctx: &Context<'_>,
        file_name: String,
        mime_type: String,
    ) -> Result<super::governance::UploadValidation> {
        super::governance::validate_upload(ctx, self.0.id, &file_name, &mime_type).await
    }

    /// How long the workspace keeps each kind of its data. Owners and admins only.
    async fn retention_settings(
        &self,
        ctx: &Context<'_>,
    ) -> Result<std::sync::Arc<super::retention::RetentionSettings>> {
        rc(ctx)
            .once(
                format!("retention_settings:{}", self.0.id),
                super::retention::settings_of(ctx, self.0.id),
            )
            .await
    }

    /// Archives of the workspace's deleted rows, newest first (of one category, or all).
    /// Owners and admins only (`FORBIDDEN` otherwise). At most 100 per page.
    #[graphql(complexity = "complexity(first, child_complexity)")]
    async fn archives(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        category: Option<super::archives::ArchiveCategory>,
    ) -> Result<std::sync::Arc<Connection<String, super::archives::Archive>>> {
        rc(ctx)
            .once(
                format!("archives:{}:{:?}", self.0.id, (&first, &after, &category,)),
                super::archives::archives_of(ctx, self.0.id, first, after, category),
            )
            .await
    }

    /// Where the workspace's notifications go: webhook endpoints, Slack, e-mail recipients
    /// (never a secret). Owners and admins only (`FORBIDDEN` otherwise).
    async fn integrations(
        &self,
        ctx: &Context<'_>,
    ) -> Result<std::sync::Arc<super::integrations::IntegrationSettings>> {
        rc(ctx)
            .once(
                format!("integrations:{}", self.0.id),
                super::integrations::integrations_of(ctx, self.0.id),
            )
            .await
    }

    /// Deliveries of the workspace's notifications, newest first (of one status, or all),
    /// each with its attempts. Owners and admins only (`FORBIDDEN` otherwise). At most 100
    /// per page.
    #[graphql(complexity = "complexity(first, child_complexity)")]
    async fn notification_deliveries(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        status: Option<super::notifications::NotificationDeliveryStatus>,
    ) -> Result<std::sync::Arc<Connection<String, super::notifications::NotificationDelivery>>>
    {
        rc(ctx)
            .once(
                format!(
                    "notification_deliveries:{}:{:?}",
                    self.0.id,
                    (&first, &after, &status,)
                ),
                super::notifications::deliveries_of(ctx, self.0.id, first, after, status),
            )
            .await
    }

    /// Background jobs of the workspace, newest first (of one status, or all). Owners and
    /// admins only (`FORBIDDEN` otherwise). At most 100 per page.
    #[graphql(complexity = "complexity(first, child_complexity)")]
    async fn jobs(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        status: Option<super::jobs::JobStatus>,
    ) -> Result<std::sync::Arc<Connection<String, super::jobs::Job>>> {
        rc(ctx)
            .once(
                format!("jobs:{}:{:?}", self.0.id, (&first, &after, &status,)),
                super::jobs::jobs_of(ctx, self.0.id, first, after, status),
            )
            .await
    }

    /// The latest analytics snapshot of a month (members, usage, jobs, cost; see
    /// `generateAnalytics`), null until one was computed. Owners and admins only
    /// (`FORBIDDEN` otherwise).
    async fn analytics(
        &self,
        ctx: &Context<'_>,
        #[graphql(default)] period: super::analytics::AnalyticsPeriod,
    ) -> Result<std::sync::Arc<Option<super::analytics::Analytics>>> {
        rc(ctx)
            .once(
                format!("analytics:{}:{:?}", self.0.id, (&period,)),
                super::analytics::analytics_of(ctx, self.0.id, period),
            )
            .await
    }

    /// A short-lived download link to the latest analytics snapshot of a month as a CSV or
    /// JSON file (see `AnalyticsExportFormat`); null until a snapshot was computed. Owners
    /// and admins only (`FORBIDDEN` otherwise).
    async fn analytics_export(
        &self,
        ctx: &Context<'_>,
        #[graphql(default)] period: super::analytics::AnalyticsPeriod,
        format: super::analytics::AnalyticsExportFormat,
    ) -> Result<std::sync::Arc<Option<super::analytics::AnalyticsExport>>> {
        rc(ctx)
            .once(
                format!("analytics_export:{}:{:?}", self.0.id, (&period, &format,)),
                super::analytics::export_of(ctx, self.0.id, period, format),
            )
            .await
    }

    /// API keys (service accounts), newest first, revoked and expired ones included; never
    /// a secret. Owners and admins only (`FORBIDDEN` otherwise). At most 100 per page.
    #[graphql(complexity = "complexity(first, child_complexity)")]
    async fn api_keys(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<std::sync::Arc<Connection<String, super::api_keys::ApiKey>>> {
        rc(ctx)
            .once(
                format!("api_keys:{}:{:?}", self.0.id, (&first, &after,)),
                super::api_keys::api_keys_of(ctx, self.0.id, first, after),
            )
            .await
    }

    /// Pending invitations, newest first. Owners and admins only (`FORBIDDEN` otherwise). At
    /// most 100 per page.
    #[graphql(complexity = "complexity(first, child_complexity)")]
    async fn invitations(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<std::sync::Arc<Connection<String, super::invitations::Invitation>>> {
        rc(ctx)
            .once(
                format!("invitations:{}:{:?}", self.0.id, (&first, &after,)),
                super::invitations::invitations_of(ctx, self.0.id, first, after),
            )
            .await
    }

    /// Every workspace quota with its usage, limit, percentage and status (`OK`, `WARNING`
    /// at ≥ 80 %, `EXCEEDED` at ≥ 100 %), sorted by key. Owners and admins only (`FORBIDDEN`
    /// otherwise).
    async fn quota_status(
        &self,
        ctx: &Context<'_>,
    ) -> Result<std::sync::Arc<Vec<super::quotas::QuotaStatus>>> {
        rc(ctx)
            .once(
                format!("quota_status:{}", self.0.id),
                super::quotas::status_of(ctx, self.0.id),
            )
            .await
    }

    /// Approval requests (sensitive mutations held for a second person's approval), newest
    /// first, of one status or all. Owners and admins only (`FORBIDDEN` otherwise). At most
    /// 100 per page.
    #[graphql(complexity = "complexity(first, child_complexity)")]
    async fn approval_requests(
        &self,
        ctx: &Context<'_>,
        status: Option<super::approvals::ApprovalStatus>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<std::sync::Arc<Connection<String, super::approvals::ApprovalRequest>>> {
        rc(ctx)
            .once(
                format!(
                    "approval_requests:{}:{:?}",
                    self.0.id,
                    (&first, &after, &status,)
                ),
                super::approvals::requests_of(ctx, self.0.id, first, after, status),
            )
            .await
    }

    /// Audit events, newest first. Owners and admins only (`FORBIDDEN` otherwise).
    #[graphql(complexity = "complexity(first, child_complexity)")]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Option<Connection<String, AuditEvent>>> {
        let rc = rc(ctx);
        let access = rc
            .loaders
            .access
            .load_one(self.0.id)
            .await
            .map_err(|e| rc.err(e))?;
        if !access.is_some_and(|(_, role)| role.is_manager()) {
            return Err(rc.err(DomainError::Forbidden(
                "only owners and admins can read the audit log".into(),
            )));
        }
        let page = pagination::page(first, after.as_deref())?;
        let rows = rc
            .loaders
            .audit_pages
            .load_one((self.0.id, page))
            .await
            .map_err(|e| rc.err(e))?;
        Ok(Some(pagination::connection(
            rows.unwrap_or_default(),
            page,
            |e| e.id,
            AuditEvent,
        )))
    }
}

/// Loads a workspace the caller belongs to; `None` for missing, deleted or foreign ones.
pub(crate) async fn load_visible(ctx: &Context<'_>, id: WorkspaceId) -> Result<Option<Workspace>> {
    let rc = rc(ctx);
    let access = rc
        .loaders
        .access
        .load_one(id.0)
        .await
        .map_err(|e| rc.err(e))?;
    match access {
        Some((ws, _)) => {
            rc.actor.admit(ws.id).await.map_err(|e| rc.err(e))?;
            Ok(Some(Workspace(ws)))
        }
        None => Ok(None),
    }
}

/// Workspace queries.
#[derive(Default)]
pub struct WorkspaceQuery;

#[Object]
impl WorkspaceQuery {
    /// A workspace the caller belongs to; null when it does not exist or the caller is not
    /// a member (the two are indistinguishable).
    async fn workspace(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Workspace>> {
        match WorkspaceId::decode(&id) {
            Some(id) => load_visible(ctx, id).await,
            None => Ok(None),
        }
    }

    /// The workspaces the caller belongs to, oldest first. At most 100 per page.
    #[graphql(complexity = "complexity(first, child_complexity)")]
    async fn workspaces(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, Workspace>> {
        let rc = rc(ctx);
        let page = pagination::page(first, after.as_deref())?;
        let rows = domain::workspaces::page_for(&rc.services, &rc.actor, page)
            .await
            .map_err(|e| rc.err(e))?;
        for (w, role) in &rows {
            rc.loaders.access.feed_one(w.id, (w.clone(), *role)).await;
        }
        Ok(pagination::connection(
            rows,
            page,
            |(w, _)| w.id,
            |(w, _)| Workspace(w),
        ))
    }
}

/// Input of `createWorkspace`.
#[derive(InputObject)]
pub struct CreateWorkspaceInput {
    /// Name, 1–50 characters.
    pub name: String,
    /// Optional description, up to 200 characters.
    pub description: Option<String>,
    /// Billing mode; it can never be changed afterwards.
    pub billing_mode: BillingMode,
    /// Makes the mutation safe to retry (1–255 characters, kept 24 hours).
    pub idempotency_key: Option<String>,
}

/// Result of `createWorkspace`.
#[derive(SimpleObject)]
pub struct CreateWorkspacePayload {
    /// The new workspace; the caller is its owner.
    pub workspace: Workspace,
}

/// Input of `renameWorkspace`.
#[derive(InputObject)]
pub struct RenameWorkspaceInput {
    /// Workspace.
    pub workspace_id: ID,
    /// New name, 1–50 characters.
    pub name: String,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `renameWorkspace`.
#[derive(SimpleObject)]
pub struct RenameWorkspacePayload {
    /// The renamed workspace.
    pub workspace: Workspace,
}

/// Input of `updateWorkspace`.
#[derive(InputObject)]
pub struct UpdateWorkspaceInput {
    /// Workspace.
    pub workspace_id: ID,
    /// New name; omit to keep.
    pub name: Option<String>,
    /// New description; omit to keep, null to clear.
    pub description: MaybeUndefined<String>,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `updateWorkspace`.
#[derive(SimpleObject)]
pub struct UpdateWorkspacePayload {
    /// The updated workspace.
    pub workspace: Workspace,
}

/// Input of `deleteWorkspace`.
#[derive(InputObject)]
pub struct DeleteWorkspaceInput {
    /// Workspace.
    pub workspace_id: ID,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `deleteWorkspace`.
#[derive(SimpleObject)]
pub struct DeleteWorkspacePayload {
    /// Id of the deleted workspace.
    pub deleted_workspace_id: ID,
}

fn ws_id(id: &ID) -> Result<WorkspaceId> {
    WorkspaceId::decode(id).ok_or_else(|| error::not_found("workspace"))
}

/// Workspace mutations.
#[derive(Default)]
pub struct WorkspaceMutation;

#[Object]
impl WorkspaceMutation {
    /// Creates a workspace; the caller becomes its owner.
    async fn create_workspace(
        &self,
        ctx: &Context<'_>,
        input: CreateWorkspaceInput,
    ) -> Result<Replayable<CreateWorkspacePayload>> {
        let new = domain::workspaces::NewWorkspace {
            name: input.name,
            description: input.description,
            billing_mode: input.billing_mode.into(),
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::workspaces::create(s, a, new, k).await,
            |w| Some(w.id),
            |row| CreateWorkspacePayload {
                workspace: Workspace(row),
            },
        )
        .await
    }

    /// Renames a workspace (owners and admins).
    async fn rename_workspace(
        &self,
        ctx: &Context<'_>,
        input: RenameWorkspaceInput,
    ) -> Result<Replayable<RenameWorkspacePayload>> {
        let update = domain::workspaces::WorkspaceUpdate {
            workspace_id: ws_id(&input.workspace_id)?,
            name: Some(input.name),
            description: None,
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::workspaces::update(s, a, update, k).await,
            |w| Some(w.id),
            |row| RenameWorkspacePayload {
                workspace: Workspace(row),
            },
        )
        .await
    }

    /// Changes name and/or description (owners and admins). The billing mode cannot change.
    async fn update_workspace(
        &self,
        ctx: &Context<'_>,
        input: UpdateWorkspaceInput,
    ) -> Result<Replayable<UpdateWorkspacePayload>> {
        let description = match input.description {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => Some(None),
            MaybeUndefined::Value(d) => Some(Some(d)),
        };
        let update = domain::workspaces::WorkspaceUpdate {
            workspace_id: ws_id(&input.workspace_id)?,
            name: input.name,
            description,
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::workspaces::update(s, a, update, k).await,
            |w| Some(w.id),
            |row| UpdateWorkspacePayload {
                workspace: Workspace(row),
            },
        )
        .await
    }

    /// Deletes a workspace (owners only).
    async fn delete_workspace(
        &self,
        ctx: &Context<'_>,
        input: DeleteWorkspaceInput,
    ) -> Result<Replayable<DeleteWorkspacePayload>> {
        let id = ws_id(&input.workspace_id)?;
        // Shows only the id the input held.
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::workspaces::delete(s, a, id, k).await,
            |_| None,
            |id| DeleteWorkspacePayload {
                deleted_workspace_id: ID(id.encode()),
            },
        )
        .await
    }
}

/// Decodes a member id; malformed ids are reported like missing ones.
pub(crate) fn member_id(id: &ID) -> Result<MemberId> {
    MemberId::decode(id).ok_or_else(|| error::not_found("member"))
}
