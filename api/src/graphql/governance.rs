//! Workspace governance settings: `Workspace.settings` (policy, security, quotas, retention,
//! integrations; read: owners and admins), `updateWorkspacePolicy` and
//! `updateSecuritySettings` (owners), and `Workspace.validateUpload` (any member).

use async_graphql::{Context, ID, InputObject, MaybeUndefined, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::approvals::{ApprovalAction, ApprovalRequest};
use super::replay::{self, Replayable};
use super::{error, rc};
use crate::db::repo::governance::SettingsRow;
use crate::domain::DomainError;
use crate::domain::governance::approvals::{self as domain_approvals, ApprovalRow};
use crate::domain::governance::settings::{self as domain, Patch};
use crate::ids::WorkspaceId;

/// A workspace's governance: the policies and security settings the service enforces, its
/// quotas, data retention and integration settings. Owners and admins read it; owners change
/// it (`updateWorkspacePolicy`, `updateSecuritySettings`, `updateQuotas`,
/// `updateRetentionSettings`, `updateIntegrationSettings`).
pub struct WorkspaceSettings {
    row: SettingsRow,
    stored: bool,
}

#[Object]
impl WorkspaceSettings {
    /// What members and requests may do in the workspace.
    async fn policy(&self) -> WorkspacePolicy {
        WorkspacePolicy(self.row.clone())
    }

    /// Where and how requests may reach the workspace.
    async fn security(&self) -> SecuritySettings {
        SecuritySettings {
            row: self.row.clone(),
            stored: self.stored,
        }
    }

    /// Workspace-wide quotas, by key (`updateQuotas`; usage in `Workspace.quotaStatus`).
    async fn quotas(
        &self,
        ctx: &Context<'_>,
    ) -> Result<std::sync::Arc<Vec<super::quotas::ResourceQuota>>> {
        let ws = self.row.workspace_id;
        rc(ctx)
            .once(format!("quotas:{ws}"), super::quotas::quotas_of(ctx, ws))
            .await
    }

    /// How long the workspace keeps each kind of its data.
    async fn retention(
        &self,
        ctx: &Context<'_>,
    ) -> Result<std::sync::Arc<super::retention::RetentionSettings>> {
        // The same read as `Workspace.retentionSettings` (one per operation).
        let ws = self.row.workspace_id;
        rc(ctx)
            .once(
                format!("retention_settings:{ws}"),
                super::retention::settings_of(ctx, ws),
            )
            .await
    }

    /// Where the workspace's notifications go (never a secret).
    async fn integrations(
        &self,
        ctx: &Context<'_>,
    ) -> Result<std::sync::Arc<super::integrations::IntegrationSettings>> {
        // The same read as `Workspace.integrations` (one per operation).
        let ws = self.row.workspace_id;
        rc(ctx)
            .once(
                format!("integrations:{ws}"),
                super::integrations::integrations_of(ctx, ws),
            )
            .await
    }

    /// When the policy or security settings last changed (null: never, all defaults).
    async fn updated_at(&self) -> Option<DateTime<Utc>> {
        self.stored.then_some(self.row.updated_at)
    }
}

/// What members and requests may do in a workspace. Every field is enforced: see each.
pub struct WorkspacePolicy(SettingsRow);

#[Object]
impl WorkspacePolicy {
    /// Requests to the workspace need a token whose `amr` claim holds `mfa` (else `FORBIDDEN`
    /// with reason `MFA_REQUIRED`). Default false.
    async fn mfa_required(&self) -> bool {
        self.0.mfa_required
    }

    /// Tokens whose `auth_time` (else `iat`) is older than this many minutes are refused for
    /// the workspace (`SESSION_EXPIRED`); null: no limit (the default). 5–525600.
    async fn session_timeout_minutes(&self) -> Option<i32> {
        self.0.session_timeout_minutes
    }

    /// `addMember` accepts only addresses of these domains or their subdomains
    /// (`example.com` admits `a@eu.example.com`); empty: any domain (the default).
    async fn allowed_email_domains(&self) -> &[String] {
        &self.0.allowed_email_domains
    }

    /// `addMember` refuses addresses of these domains and their subdomains
    /// (`DOMAIN_NOT_ALLOWED`), even when they are allowed too.
    async fn blocked_email_domains(&self) -> &[String] {
        &self.0.blocked_email_domains
    }

    /// API keys may be created and used (else `API_KEYS_DISABLED`). Default true.
    async fn api_keys_allowed(&self) -> bool {
        self.0.api_keys_allowed
    }

    /// Longest lifetime of a new API key, in days (1–3650); null: no limit.
    async fn api_key_max_lifetime_days(&self) -> Option<i32> {
        self.0.api_key_max_lifetime_days
    }

    /// Most live API keys (0–1000); null: no limit.
    async fn api_key_max_count(&self) -> Option<i32> {
        self.0.api_key_max_count
    }

    /// Webhook endpoints, Slack and e-mail recipients may be added, changed and used. When
    /// false, adding or changing them is refused (`INTEGRATIONS_DISABLED`), notifications are
    /// not delivered to them (their deliveries end `SKIPPED`), and what is stored stays
    /// stored for when it is turned back on. Default true.
    async fn external_integrations_allowed(&self) -> bool {
        self.0.external_integrations_allowed
    }

    /// Uploads accepted: MIME types (`image/png`), wildcards (`image/*`) or extensions
    /// (`.pdf`); empty: any (the default). See `Workspace.validateUpload`.
    async fn allowed_upload_types(&self) -> &[String] {
        &self.0.allowed_upload_types
    }

    /// Uploads refused, whatever the allowed list says: MIME types, wildcards or extensions.
    async fn blocked_upload_types(&self) -> &[String] {
        &self.0.blocked_upload_types
    }

    /// Sensitive actions that need a second owner's or admin's approval: such a mutation
    /// returns a pending `ApprovalRequest` instead of acting. Default none.
    async fn approval_required_for(&self) -> Vec<ApprovalAction> {
        self.0
            .approval_required_for
            .iter()
            .filter_map(|a| domain_approvals::ApprovalAction::parse(a))
            .map(Into::into)
            .collect()
    }

    /// Hours a pending approval request lives before it expires (1–720; default 72).
    async fn approval_expiry_hours(&self) -> i32 {
        self.0.approval_expiry_hours
    }

    /// Reads of billing data (`Workspace.billingAccounts`, `Workspace.billingSummary`) are
    /// audited: one `billing.read` event per request. Default false.
    async fn audit_billing_reads(&self) -> bool {
        self.0.audit_billing_reads
    }

    /// Days audit events are kept: the retention settings' `auditLogsDays` (one setting,
    /// changed through either; 30–3650, default 2555).
    async fn audit_retention_days(&self, ctx: &Context<'_>) -> Result<i32> {
        let rc = rc(ctx);
        domain::audit_retention_days(&rc.services, self.0.workspace_id)
            .await
            .map_err(|e| rc.err(e))
    }
}

/// Where and how requests may reach a workspace.
pub struct SecuritySettings {
    row: SettingsRow,
    stored: bool,
}

#[Object]
impl SecuritySettings {
    /// IPv4 and IPv6 networks (CIDRs) requests must come from (else `FORBIDDEN` with reason
    /// `IP_NOT_ALLOWED`); empty: any address (the default). The client address is the
    /// socket's peer, or `X-Forwarded-For` when that peer is a trusted proxy.
    async fn ip_allow_list(&self) -> &[String] {
        &self.row.ip_allow_list
    }

    /// Requests must arrive over TLS, as a trusted proxy's `X-Forwarded-Proto` reports
    /// (else `TLS_REQUIRED`). Default false.
    async fn require_tls(&self) -> bool {
        self.row.require_tls
    }

    /// Requests per minute to the workspace from people, shared by every replica (else
    /// `RATE_LIMITED` with `Retry-After`); also each API key's limit unless
    /// `apiKeyRateLimitPerMinute` is set. Null: no limit (the default).
    async fn rate_limit_per_minute(&self) -> Option<i32> {
        self.row.rate_limit_per_minute
    }

    /// Requests per minute per API key; null: `rateLimitPerMinute`.
    async fn api_key_rate_limit_per_minute(&self) -> Option<i32> {
        self.row.api_key_rate_limit_per_minute
    }

    /// A declared requirement, stored and returned but not enforced by this service:
    /// encryption at rest is the database's and the object store's duty (configure it
    /// there).
    async fn encryption_at_rest_required(&self) -> bool {
        self.row.encryption_at_rest_required
    }

    /// A declared requirement, stored and returned but not enforced by this service: it
    /// cannot tell a VPN from any other network (enforce it with `ipAllowList` listing the
    /// VPN's egress addresses).
    async fn vpn_required(&self) -> bool {
        self.row.vpn_required
    }

    /// When the policy or security settings last changed (null: never, all defaults).
    async fn updated_at(&self) -> Option<DateTime<Utc>> {
        self.stored.then_some(self.row.updated_at)
    }
}

/// The governance settings of `ws` (owners and admins: `FORBIDDEN` for viewers, not found for
/// anyone else).
pub async fn settings_of(ctx: &Context<'_>, ws: Uuid) -> Result<WorkspaceSettings> {
    super::billing::may_manage(ctx, ws, "read workspace settings").await?;
    let rc = rc(ctx);
    let (row, stored) = domain::row_of(&rc.services, ws)
        .await
        .map_err(|e| rc.err(e))?;
    Ok(WorkspaceSettings { row, stored })
}

/// Whether an upload may go ahead.
#[derive(SimpleObject)]
pub struct UploadValidation {
    /// The workspace accepts it.
    pub allowed: bool,
    /// Why not (null when allowed).
    pub reason: Option<String>,
}

/// `Workspace.validateUpload` (any member of `ws`).
pub async fn validate_upload(
    ctx: &Context<'_>,
    ws: Uuid,
    file_name: &str,
    mime_type: &str,
) -> Result<UploadValidation> {
    let rc = rc(ctx);
    let access = rc
        .loaders
        .access
        .load_one(ws)
        .await
        .map_err(|e| rc.err(e))?;
    if access.is_none() {
        return Err(rc.err(DomainError::NotFound("workspace")));
    }
    rc.actor.admit(ws).await.map_err(|e| rc.err(e))?;
    let v = domain::validate_upload(&rc.services, ws, file_name, mime_type)
        .await
        .map_err(|e| rc.err(e))?;
    Ok(UploadValidation {
        allowed: v.allowed,
        reason: v.reason,
    })
}

/// Records `billing.read` when `ws` audits billing reads (once per request); the billing
/// resolvers call it after their read check.
pub async fn audit_billing_read(ctx: &Context<'_>, ws: Uuid) -> Result<()> {
    let rc = rc(ctx);
    let field = ctx.field().name();
    domain::audit_billing_read(&rc.services, &rc.actor, ws, field, &rc.audited_reads)
        .await
        .map_err(|e| rc.err(e))
}

fn patch<T>(v: MaybeUndefined<T>) -> Patch<T> {
    match v {
        MaybeUndefined::Undefined => Patch::Keep,
        MaybeUndefined::Null => Patch::Clear,
        MaybeUndefined::Value(v) => Patch::Set(v),
    }
}

/// Input of `updateWorkspacePolicy`: fields left out keep their value; null clears a
/// nullable one (so does a variable left unset: leave the field out of the document to keep
/// it). Lists replace the stored list (an empty list clears it).
#[derive(InputObject)]
pub struct UpdateWorkspacePolicyInput {
    /// Workspace.
    pub workspace_id: ID,
    /// Require MFA (`amr` holds `mfa`).
    pub mfa_required: Option<bool>,
    /// Longest session in minutes, 5–525600; null: no limit.
    pub session_timeout_minutes: MaybeUndefined<i32>,
    /// Domains `addMember` accepts (subdomains included), at most 100; empty: any.
    pub allowed_email_domains: Option<Vec<String>>,
    /// Domains `addMember` refuses (subdomains included), at most 100.
    pub blocked_email_domains: Option<Vec<String>>,
    /// Allow API keys.
    pub api_keys_allowed: Option<bool>,
    /// Longest lifetime of a new API key in days, 1–3650; null: no limit.
    pub api_key_max_lifetime_days: MaybeUndefined<i32>,
    /// Allow webhook endpoints, Slack and e-mail recipients.
    pub external_integrations_allowed: Option<bool>,
    /// Uploads accepted (MIME types, `type/*`, `.ext`), at most 100; empty: any.
    pub allowed_upload_types: Option<Vec<String>>,
    /// Uploads refused (MIME types, `type/*`, `.ext`), at most 100.
    pub blocked_upload_types: Option<Vec<String>>,
    /// Actions that need a second person's approval. Removing actions is itself held for
    /// approval when `CHANGE_SECURITY_SETTINGS` is listed.
    pub approval_required_for: Option<Vec<ApprovalAction>>,
    /// Most live API keys, 0–1000; null: no limit.
    pub api_key_max_count: MaybeUndefined<i32>,
    /// Hours a pending approval request lives, 1–720.
    pub approval_expiry_hours: Option<i32>,
    /// Audit reads of billing data.
    pub audit_billing_reads: Option<bool>,
    /// Days audit events are kept (the retention settings' `auditLogsDays`), 30–3650.
    pub audit_retention_days: Option<i32>,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Input of `updateSecuritySettings`: fields left out keep their value; null clears a
/// nullable one (so does a variable left unset).
#[derive(InputObject)]
pub struct UpdateSecuritySettingsInput {
    /// Workspace.
    pub workspace_id: ID,
    /// IPv4/IPv6 CIDRs or addresses, at most 200 (stored as their networks); empty: any.
    /// Must include the address of this request (else `BAD_USER_INPUT`: you would be locked
    /// out).
    pub ip_allow_list: Option<Vec<String>>,
    /// Require TLS; can be turned on only over TLS.
    pub require_tls: Option<bool>,
    /// Requests per minute (people, per workspace), 1–1000000; null: no limit.
    pub rate_limit_per_minute: MaybeUndefined<i32>,
    /// Requests per minute per API key, 1–1000000; null: `rateLimitPerMinute`.
    pub api_key_rate_limit_per_minute: MaybeUndefined<i32>,
    /// Declared: data must be encrypted at rest (not enforced by this service).
    pub encryption_at_rest_required: Option<bool>,
    /// Declared: clients must come through a VPN (not enforced by this service).
    pub vpn_required: Option<bool>,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `updateWorkspacePolicy`.
pub struct UpdateWorkspacePolicyPayload(SettingsPayload);

/// Result of `updateSecuritySettings`.
pub struct UpdateSecuritySettingsPayload(SettingsPayload);

/// What both settings mutations return.
struct SettingsPayload {
    ws: Uuid,
    approval: Option<ApprovalRow>,
}

impl SettingsPayload {
    fn of(o: domain::Outcome) -> Self {
        Self {
            ws: o.workspace_id.0,
            approval: o.approval,
        }
    }

    async fn settings(&self, ctx: &Context<'_>) -> Result<Option<WorkspaceSettings>> {
        settings_of(ctx, self.ws).await.map(Some)
    }

    fn approval_request(&self) -> Option<ApprovalRequest> {
        self.approval.clone().map(ApprovalRequest)
    }
}

#[Object]
impl UpdateWorkspacePolicyPayload {
    /// The settings now (unchanged when the change was held for approval).
    async fn settings(&self, ctx: &Context<'_>) -> Result<Option<WorkspaceSettings>> {
        self.0.settings(ctx).await
    }

    /// The pending request when the change was held for a second person's approval (it
    /// removes actions from `approvalRequiredFor` while `CHANGE_SECURITY_SETTINGS` is
    /// listed); null when the change was made.
    async fn approval_request(&self) -> Option<ApprovalRequest> {
        self.0.approval_request()
    }
}

#[Object]
impl UpdateSecuritySettingsPayload {
    /// The settings now (unchanged when the change was held for approval).
    async fn settings(&self, ctx: &Context<'_>) -> Result<Option<WorkspaceSettings>> {
        self.0.settings(ctx).await
    }

    /// The pending request when the change was held for a second person's approval
    /// (`CHANGE_SECURITY_SETTINGS` is listed); null when the change was made.
    async fn approval_request(&self) -> Option<ApprovalRequest> {
        self.0.approval_request()
    }
}

fn workspace_id(id: &ID) -> Result<WorkspaceId> {
    WorkspaceId::decode(id).ok_or_else(|| error::not_found("workspace"))
}

/// Policy and security mutations.
#[derive(Default)]
pub struct GovernanceSettingsMutation;

#[Object]
impl GovernanceSettingsMutation {
    /// Changes the workspace policy (owners), idempotently and audited (`policy.update`, with
    /// the changed fields before and after). Removing actions from `approvalRequiredFor` is
    /// held for approval when `CHANGE_SECURITY_SETTINGS` is listed.
    async fn update_workspace_policy(
        &self,
        ctx: &Context<'_>,
        input: UpdateWorkspacePolicyInput,
    ) -> Result<Replayable<UpdateWorkspacePolicyPayload>> {
        let ws = workspace_id(&input.workspace_id)?;
        let change = domain::PolicyChange {
            workspace_id: ws,
            mfa_required: input.mfa_required,
            session_timeout_minutes: patch(input.session_timeout_minutes),
            allowed_email_domains: input.allowed_email_domains,
            blocked_email_domains: input.blocked_email_domains,
            api_keys_allowed: input.api_keys_allowed,
            api_key_max_lifetime_days: patch(input.api_key_max_lifetime_days),
            api_key_max_count: patch(input.api_key_max_count),
            external_integrations_allowed: input.external_integrations_allowed,
            allowed_upload_types: input.allowed_upload_types,
            blocked_upload_types: input.blocked_upload_types,
            approval_required_for: input
                .approval_required_for
                .map(|l| l.into_iter().map(Into::into).collect()),
            approval_expiry_hours: input.approval_expiry_hours,
            audit_billing_reads: input.audit_billing_reads,
            audit_retention_days: input.audit_retention_days,
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::update_policy(s, a, change, k).await,
            move |_| Some(ws.0),
            |o| UpdateWorkspacePolicyPayload(SettingsPayload::of(o)),
        )
        .await
    }

    /// Changes the security settings (owners), idempotently and audited (`security.update`,
    /// with the changed fields before and after); held for approval when the workspace lists
    /// `CHANGE_SECURITY_SETTINGS`. Settings that would refuse this very request (an
    /// allow-list without its address, TLS from a plain request) are refused.
    async fn update_security_settings(
        &self,
        ctx: &Context<'_>,
        input: UpdateSecuritySettingsInput,
    ) -> Result<Replayable<UpdateSecuritySettingsPayload>> {
        let ws = workspace_id(&input.workspace_id)?;
        let change = domain::SecurityChange {
            workspace_id: ws,
            ip_allow_list: input.ip_allow_list,
            require_tls: input.require_tls,
            rate_limit_per_minute: patch(input.rate_limit_per_minute),
            api_key_rate_limit_per_minute: patch(input.api_key_rate_limit_per_minute),
            encryption_at_rest_required: input.encryption_at_rest_required,
            vpn_required: input.vpn_required,
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::update_security(s, a, change, k).await,
            move |_| Some(ws.0),
            |o| UpdateSecuritySettingsPayload(SettingsPayload::of(o)),
        )
        .await
    }
}
