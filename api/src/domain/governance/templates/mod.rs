//! Workspace templates: presets of policy, security, quota and retention settings that an
//! owner applies to a workspace in one transaction (`applyTemplate`).
//!
//! Four built-in templates live in [`presets`] with fixed ids (docs/features/templates.md
//! says what each sets and why); a workspace may also save its current settings as
//! a custom template, private to it. A template sets only what it names ([`Preset`]): what it
//! leaves out keeps its value. No template ever carries an IP allow-list (one made for
//! another network would lock the workspace out): applying one leaves the allow-list as it
//! is, and saving one leaves it out. The built-ins also leave the e-mail domain lists and the
//! rate limits alone, which depend on the organization and its traffic, not on its industry.
//!
//! Applying a template records one `template.apply` audit event listing every change (field,
//! before, after), also when nothing changed (an empty list: someone confirmed the preset).
//! When it would change a security setting or take actions off the approval list, and the
//! workspace lists `CHANGE_SECURITY_SETTINGS`, it is held for a second person's approval
//! ([`execute_approved`] applies what the requester saw: the template's settings are stored
//! with the request).

mod presets;

use std::collections::BTreeMap;

use presets::is_built_in_key;
pub use presets::{
    BUILT_INS, ENTERPRISE_STARTER_ID, FINANCIAL_SERVICES_ID, GOVERNMENT_ID, HEALTHCARE_ID, built_in,
};

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::Caller;
use super::approvals::{ApprovalAction, ApprovalRow};
use super::{owner_change, quotas, settings};
use crate::db::repo::governance::{self as settings_repo, SettingsRow};
use crate::db::repo::quotas as quota_repo;
use crate::db::repo::templates as repo;
use crate::domain::audit::{self, Change};
use crate::domain::mutation::{self, Effect};
use crate::domain::retention::{self, RetentionSettings};
use crate::domain::{Actor, DomainError, DomainResult, Role, Services, check_name, excerpt};
use crate::ids::{WorkspaceId, WorkspaceTemplateId};

/// Custom templates a workspace may have.
pub const MAX_CUSTOM: i64 = 50;

/// Longest description of a custom template, in characters.
const DESCRIPTION_MAX: usize = 500;

/// Longest name of a custom template, in characters.
const NAME_MAX: usize = 100;

/// Most quotas a template may carry.
const MAX_QUOTAS: usize = 200;

/// A list validator of `settings` (`check_domains`, `check_upload_types`).
type ListCheck = fn(&'static str, &[String]) -> DomainResult<Vec<String>>;

/// Reads a present field as `Some`, so that `Option<Option<T>>` tells "absent" (keep the
/// value) from `null` (no limit). Every preset field is optional: its struct's
/// `#[serde(default)]` reads an absent one as `None`, and `None` is never written.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The policy settings a template sets (absent: kept as they are). Names as in GraphQL's
/// `WorkspacePolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PolicyPreset {
    /// Tokens must carry `mfa` in `amr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfa_required: Option<bool>,
    /// Session timeout in minutes (`null`: none).
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub session_timeout_minutes: Option<Option<i32>>,
    /// `addMember` accepts only these domains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_email_domains: Option<Vec<String>>,
    /// `addMember` refuses these domains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_email_domains: Option<Vec<String>>,
    /// API keys may be created and used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys_allowed: Option<bool>,
    /// Longest lifetime of a new API key (`null`: unbounded).
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub api_key_max_lifetime_days: Option<Option<i32>>,
    /// Most live API keys (`null`: unbounded).
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub api_key_max_count: Option<Option<i32>>,
    /// Webhook, Slack and e-mail integrations may be created and used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_integrations_allowed: Option<bool>,
    /// Uploads accepted (MIME types or `.ext`; empty: any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_upload_types: Option<Vec<String>>,
    /// Uploads refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_upload_types: Option<Vec<String>>,
    /// `ApprovalAction`s (stored form) that need a second person's approval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_required_for: Option<Vec<String>>,
    /// Hours a pending approval request lives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_expiry_hours: Option<i32>,
    /// Reads of billing data are audited too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_billing_reads: Option<bool>,
}

/// The security settings a template sets (absent: kept). There is deliberately no IP
/// allow-list here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SecurityPreset {
    /// Requests must arrive over TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_tls: Option<bool>,
    /// Requests per minute per workspace (`null`: unlimited).
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_minute: Option<Option<i32>>,
    /// Requests per minute per API key (`null`: as the workspace).
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub api_key_rate_limit_per_minute: Option<Option<i32>>,
    /// Declared: data encrypted at rest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_at_rest_required: Option<bool>,
    /// Declared: clients come through the organization's VPN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpn_required: Option<bool>,
}

/// The retention settings a template sets, in days (absent: kept). Names as in GraphQL's
/// `RetentionSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RetentionPreset {
    /// Audit events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_logs_days: Option<i32>,
    /// The usage ledger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_events_days: Option<i32>,
    /// Execution logs (declared).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_logs_days: Option<i32>,
    /// Workflow data (declared).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_data_days: Option<i32>,
    /// Removed members' personal data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data_days: Option<i32>,
    /// Archive before deleting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_before_delete: Option<bool>,
}

/// What a template sets: also its preview in GraphQL (`WorkspaceTemplate.settings`), and
/// what a held application stores for its approval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preset {
    /// Policy.
    #[serde(default)]
    pub policy: PolicyPreset,
    /// Security.
    #[serde(default)]
    pub security: SecurityPreset,
    /// Quotas by resource key (only keys the target workspace has are applied).
    #[serde(default)]
    pub quotas: BTreeMap<String, i64>,
    /// Retention.
    #[serde(default)]
    pub retention: RetentionPreset,
}

impl Preset {
    /// Everything `row`, `retention` and `quotas` hold, except the IP allow-list.
    pub fn snapshot(
        row: &SettingsRow,
        retention: &RetentionSettings,
        quotas: &[quota_repo::QuotaRow],
    ) -> Self {
        Self {
            policy: PolicyPreset {
                mfa_required: Some(row.mfa_required),
                session_timeout_minutes: Some(row.session_timeout_minutes),
                allowed_email_domains: Some(row.allowed_email_domains.clone()),
                blocked_email_domains: Some(row.blocked_email_domains.clone()),
                api_keys_allowed: Some(row.api_keys_allowed),
                api_key_max_lifetime_days: Some(row.api_key_max_lifetime_days),
                api_key_max_count: Some(row.api_key_max_count),
                external_integrations_allowed: Some(row.external_integrations_allowed),
                allowed_upload_types: Some(row.allowed_upload_types.clone()),
                blocked_upload_types: Some(row.blocked_upload_types.clone()),
                approval_required_for: Some(row.approval_required_for.clone()),
                approval_expiry_hours: Some(row.approval_expiry_hours),
                audit_billing_reads: Some(row.audit_billing_reads),
            },
            security: SecurityPreset {
                require_tls: Some(row.require_tls),
                rate_limit_per_minute: Some(row.rate_limit_per_minute),
                api_key_rate_limit_per_minute: Some(row.api_key_rate_limit_per_minute),
                encryption_at_rest_required: Some(row.encryption_at_rest_required),
                vpn_required: Some(row.vpn_required),
            },
            quotas: quotas
                .iter()
                .map(|q| (q.resource.clone(), q.quota))
                .collect(),
            retention: RetentionPreset {
                audit_logs_days: Some(retention.audit_logs_days),
                usage_events_days: Some(retention.usage_events_days),
                execution_logs_days: Some(retention.execution_logs_days),
                workflow_data_days: Some(retention.workflow_data_days),
                user_data_days: Some(retention.user_data_days),
                archive_before_delete: Some(retention.archive_before_delete),
            },
        }
    }

    /// `row` with the policy and security settings this preset names.
    pub fn settings_after(&self, row: &SettingsRow) -> SettingsRow {
        let (p, s) = (&self.policy, &self.security);
        let mut r = row.clone();
        fn set<T: Clone>(field: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *field = v.clone();
            }
        }
        set(&mut r.mfa_required, &p.mfa_required);
        set(&mut r.session_timeout_minutes, &p.session_timeout_minutes);
        set(&mut r.allowed_email_domains, &p.allowed_email_domains);
        set(&mut r.blocked_email_domains, &p.blocked_email_domains);
        set(&mut r.api_keys_allowed, &p.api_keys_allowed);
        set(
            &mut r.api_key_max_lifetime_days,
            &p.api_key_max_lifetime_days,
        );
        set(&mut r.api_key_max_count, &p.api_key_max_count);
        set(
            &mut r.external_integrations_allowed,
            &p.external_integrations_allowed,
        );
        set(&mut r.allowed_upload_types, &p.allowed_upload_types);
        set(&mut r.blocked_upload_types, &p.blocked_upload_types);
        set(&mut r.approval_required_for, &p.approval_required_for);
        set(&mut r.approval_expiry_hours, &p.approval_expiry_hours);
        set(&mut r.audit_billing_reads, &p.audit_billing_reads);
        set(&mut r.require_tls, &s.require_tls);
        set(&mut r.rate_limit_per_minute, &s.rate_limit_per_minute);
        set(
            &mut r.api_key_rate_limit_per_minute,
            &s.api_key_rate_limit_per_minute,
        );
        set(
            &mut r.encryption_at_rest_required,
            &s.encryption_at_rest_required,
        );
        set(&mut r.vpn_required, &s.vpn_required);
        r
    }

    /// `before` with the retention settings this preset names.
    pub fn retention_after(&self, before: &RetentionSettings) -> RetentionSettings {
        let t = &self.retention;
        RetentionSettings {
            audit_logs_days: t.audit_logs_days.unwrap_or(before.audit_logs_days),
            usage_events_days: t.usage_events_days.unwrap_or(before.usage_events_days),
            execution_logs_days: t.execution_logs_days.unwrap_or(before.execution_logs_days),
            workflow_data_days: t.workflow_data_days.unwrap_or(before.workflow_data_days),
            user_data_days: t.user_data_days.unwrap_or(before.user_data_days),
            archive_before_delete: t
                .archive_before_delete
                .unwrap_or(before.archive_before_delete),
        }
    }

    /// Checks every value against the bounds the settings accept (a stored template may
    /// predate a tightened bound; a built-in is checked by a unit test).
    pub fn check(&self) -> DomainResult<()> {
        let bad = |field: &str, message: String| {
            DomainError::Conflict(format!(
                "the template's {field} cannot be applied: {message}"
            ))
        };
        let bounded = |field: &str, v: Option<Option<i32>>, least: i32, most: i32| match v.flatten()
        {
            Some(n) if !(least..=most).contains(&n) => {
                Err(bad(field, format!("{n} is not between {least} and {most}")))
            }
            _ => Ok(()),
        };
        let p = &self.policy;
        let s = &self.security;
        bounded(
            "sessionTimeoutMinutes",
            p.session_timeout_minutes,
            5,
            525_600,
        )?;
        bounded(
            "apiKeyMaxLifetimeDays",
            p.api_key_max_lifetime_days,
            1,
            3650,
        )?;
        bounded("apiKeyMaxCount", p.api_key_max_count, 0, 1000)?;
        bounded(
            "approvalExpiryHours",
            p.approval_expiry_hours.map(Some),
            1,
            720,
        )?;
        bounded("rateLimitPerMinute", s.rate_limit_per_minute, 1, 1_000_000)?;
        bounded(
            "apiKeyRateLimitPerMinute",
            s.api_key_rate_limit_per_minute,
            1,
            1_000_000,
        )?;
        // The lists as `updateWorkspacePolicy` accepts them.
        let lists: [(&'static str, &Option<Vec<String>>, ListCheck); 4] = [
            (
                "allowedEmailDomains",
                &p.allowed_email_domains,
                settings::check_domains,
            ),
            (
                "blockedEmailDomains",
                &p.blocked_email_domains,
                settings::check_domains,
            ),
            (
                "allowedUploadTypes",
                &p.allowed_upload_types,
                settings::check_upload_types,
            ),
            (
                "blockedUploadTypes",
                &p.blocked_upload_types,
                settings::check_upload_types,
            ),
        ];
        for (field, list, check) in lists {
            if let Some(list) = list {
                check(field, list).map_err(|e| bad(field, e.to_string()))?;
            }
        }
        if p.approval_required_for
            .as_ref()
            .is_some_and(|l| l.len() > ApprovalAction::ALL.len())
        {
            return Err(bad(
                "approvalRequiredFor",
                "it lists an action twice".into(),
            ));
        }
        if let Some(a) = p
            .approval_required_for
            .iter()
            .flatten()
            .find(|a| ApprovalAction::parse(a).is_none())
        {
            return Err(bad(
                "approvalRequiredFor",
                format!("`{}` is not an approval action", excerpt(a)),
            ));
        }
        if self.quotas.len() > MAX_QUOTAS {
            return Err(bad("quotas", format!("at most {MAX_QUOTAS} quotas")));
        }
        if let Some((k, q)) = self.quotas.iter().find(|(k, q)| {
            !(0..=crate::domain::usage::MAX_COUNT).contains(*q)
                || k.as_str() == quotas::API_REQUESTS_PER_MINUTE
                || crate::domain::usage::check_resource_key(k).is_err()
        }) {
            return Err(bad(
                "quotas",
                format!("`{}` = {q} is not a quota", excerpt(k)),
            ));
        }
        retention::check(&self.retention_after(&retention::DEFAULTS))
            .map_err(|e| bad("retention", e.to_string()))
    }
}

/// A template: built-in or a workspace's own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Template {
    /// Fixed for built-ins, generated for custom ones.
    pub id: Uuid,
    /// The workspace of a custom template (`None`: built-in).
    pub workspace_id: Option<Uuid>,
    /// Key, e.g. `HEALTHCARE`.
    pub key: String,
    /// Display name.
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// What it sets.
    pub preset: Preset,
    /// When a custom template was saved (`None` for built-ins).
    pub created_at: Option<DateTime<Utc>>,
}

impl Template {
    /// Built into the service (and public: every workspace sees it).
    pub fn built_in(&self) -> bool {
        self.workspace_id.is_none()
    }

    /// The opaque external id (`tpl_…`).
    pub fn external_id(&self) -> String {
        WorkspaceTemplateId(self.id).encode()
    }

    fn from_row(row: repo::TemplateRow) -> DomainResult<Self> {
        let preset = serde_json::from_value(row.settings).map_err(DomainError::internal)?;
        Ok(Self {
            id: row.id,
            workspace_id: Some(row.workspace_id),
            key: row.key,
            name: row.name,
            description: row.description,
            preset,
            created_at: Some(row.created_at),
        })
    }
}

/// The templates the actor may apply: the built-ins, and unless `public_only`, the custom
/// templates of `ws` when the actor is one of its owners or admins. A workspace the actor
/// cannot manage (a viewer's, a stranger's, a missing one) adds nothing, so a foreign id reads
/// exactly like a missing one.
pub async fn list(
    services: &Services,
    actor: &Actor,
    public_only: bool,
    ws: Option<WorkspaceId>,
) -> DomainResult<Vec<Template>> {
    let mut out: Vec<Template> = BUILT_INS.to_vec();
    let Some(ws) = ws.filter(|_| !public_only) else {
        return Ok(out);
    };
    let mut conn = services.conn().await?;
    let role = crate::db::repo::members::role_of(&mut conn, ws.0, actor.user_id.0)
        .await?
        .and_then(|r| Role::parse(&r));
    let Some(role) = role else {
        return Ok(out);
    };
    actor.admit(ws.0).await?;
    if role.is_manager() {
        for row in repo::list(&mut conn, ws.0).await? {
            out.push(Template::from_row(row)?);
        }
    }
    Ok(out)
}

/// Checks a custom template's key.
fn check_key(key: &str) -> DomainResult<&str> {
    let b = key.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 40
        && b[0].is_ascii_uppercase()
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_');
    if !ok {
        return Err(DomainError::bad_input(
            "key",
            "key must be upper-case letters, digits and _, start with a letter, at most 40 \
             characters (e.g. ACME_BASELINE)",
        ));
    }
    if is_built_in_key(key) {
        return Err(DomainError::Conflict(format!(
            "{key} is the key of a built-in template: choose another"
        )));
    }
    Ok(key)
}

/// Input of `save`.
#[derive(Debug, Clone, Serialize)]
pub struct NewTemplate {
    /// Workspace whose settings it snapshots.
    pub workspace_id: WorkspaceId,
    /// Key, unique in the workspace.
    pub key: String,
    /// Display name.
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
}

/// Saves the workspace's current settings (policy, security without the IP allow-list,
/// quotas, retention) as a custom template (owners; at most [`MAX_CUSTOM`] per workspace).
pub async fn save(
    services: &Services,
    actor: &Actor,
    input: NewTemplate,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<Template>> {
    check_key(&input.key)?;
    let name = check_name("name", &input.name, NAME_MAX)?;
    let description = match input.description.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(d) if d.chars().count() > DESCRIPTION_MAX => {
            return Err(DomainError::bad_input(
                "description",
                format!("description must be at most {DESCRIPTION_MAX} characters"),
            ));
        }
        Some(d) => Some(d.to_string()),
    };
    let valid = NewTemplate {
        name,
        description,
        ..input.clone()
    };
    mutation::run(
        services,
        actor,
        "saveWorkspaceTemplate",
        key,
        &input,
        |c, _| -> Effect<'_, _> { Box::pin(save_effect(c, valid.clone(), actor.clone())) },
    )
    .await
}

async fn save_effect(
    conn: &mut AsyncPgConnection,
    input: NewTemplate,
    actor: Actor,
) -> DomainResult<Template> {
    let ws = input.workspace_id;
    // The workspace's lock serializes saves, so the cap holds under concurrency.
    owner_change::lock_as_owner(conn, &actor, ws, "save templates").await?;
    if repo::count(conn, ws.0).await? >= MAX_CUSTOM {
        return Err(DomainError::LimitExceeded(format!(
            "a workspace has at most {MAX_CUSTOM} custom templates: delete one first"
        )));
    }
    let row = settings_repo::settings(conn, ws.0)
        .await?
        .unwrap_or_else(|| SettingsRow::defaults(ws.0));
    let kept = retention::settings_of(conn, ws.0).await?;
    let quotas = quota_repo::stored(conn, ws.0).await?;
    let preset = Preset::snapshot(&row, &kept, &quotas);
    let settings = serde_json::to_value(&preset).map_err(DomainError::internal)?;
    let id = WorkspaceTemplateId::new();
    let saved = repo::insert(
        conn,
        &repo::NewTemplate {
            id: id.0,
            workspace_id: ws.0,
            key: &input.key,
            name: &input.name,
            description: input.description.as_deref(),
            settings: &settings,
            created_by: actor.user_id.0,
        },
    )
    .await?
    .ok_or_else(|| {
        DomainError::Conflict(format!(
            "this workspace already has a template with the key {}",
            input.key
        ))
    })?;
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "template.save",
            target_type: "WorkspaceTemplate",
            target_id: id.encode(),
            summary: json!({"key": input.key, "name": input.name, "settings": settings}),
            actor: &actor,
        },
    )
    .await?;
    Template::from_row(saved)
}

/// Input of `delete`.
#[derive(Debug, Clone, Serialize)]
pub struct DeleteTemplate {
    /// The template (`tpl_…`).
    pub template_id: String,
}

/// Deletes a custom template (owners of its workspace); the id deleted. Built-ins cannot be.
pub async fn delete(
    services: &Services,
    actor: &Actor,
    input: DeleteTemplate,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<String>> {
    let id =
        WorkspaceTemplateId::decode(&input.template_id).ok_or(DomainError::NotFound("template"))?;
    if built_in(id.0).is_some() {
        return Err(DomainError::bad_input(
            "templateId",
            "built-in templates cannot be deleted",
        ));
    }
    mutation::run(
        services,
        actor,
        "deleteWorkspaceTemplate",
        key,
        &input,
        |c, _| -> Effect<'_, _> { Box::pin(delete_effect(c, id, actor.clone())) },
    )
    .await
}

async fn delete_effect(
    conn: &mut AsyncPgConnection,
    id: WorkspaceTemplateId,
    actor: Actor,
) -> DomainResult<String> {
    let not_found = || DomainError::NotFound("template");
    let access = crate::domain::access::to(
        conn,
        &actor,
        crate::domain::access::Owned::Template,
        id.0,
        "template",
    )
    .await?;
    access.require(|r| r == Role::Owner, "delete templates")?;
    let ws = access.workspace;
    let gone = repo::delete(conn, ws.0, id.0)
        .await?
        .ok_or_else(not_found)?;
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "template.delete",
            target_type: "WorkspaceTemplate",
            target_id: id.encode(),
            summary: json!({"key": gone.key, "name": gone.name}),
            actor: &actor,
        },
    )
    .await?;
    Ok(id.encode())
}

/// One setting a template application changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingChange {
    /// `section.field`, e.g. `policy.mfaRequired`, `quotas.members`.
    pub field: String,
    /// Before (`None`: unset, no limit).
    pub from: Option<String>,
    /// After.
    pub to: Option<String>,
}

/// Input of `apply`.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyTemplate {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The template (`tpl_…`): a built-in or a custom template of this workspace.
    pub template_id: String,
}

/// What `apply` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// What changed (empty when nothing did, or when held).
    pub changes: Vec<SettingChange>,
    /// The approval request holding the application, if it was held.
    pub approval_request: Option<ApprovalRow>,
}

/// What a held application stores for its approval: the template as the requester saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeldApply {
    workspace_id: WorkspaceId,
    template_id: String,
    template_key: String,
    template_name: String,
    settings: Preset,
}

/// Applies a template to a workspace (owners): one transaction writes the settings, quotas
/// and retention it names and one `template.apply` audit event listing every change; or the
/// application is held for approval (see the module docs). A template that is neither a
/// built-in nor a custom template of this workspace is `NOT_FOUND`.
pub async fn apply(
    services: &Services,
    actor: &Actor,
    input: ApplyTemplate,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<Applied>> {
    owner_change::run(
        services,
        actor,
        "applyTemplate",
        input.workspace_id,
        key,
        &input,
        |c, _| -> Effect<'_, _> { Box::pin(apply_effect(c, input.clone(), actor.clone())) },
    )
    .await
}

async fn apply_effect(
    conn: &mut AsyncPgConnection,
    input: ApplyTemplate,
    actor: Actor,
) -> DomainResult<Applied> {
    let ws = input.workspace_id;
    // Lock order: the workspace, then its settings (as retention changes lock the workspace).
    owner_change::lock_as_owner(conn, &actor, ws, "apply templates").await?;
    let not_found = || DomainError::NotFound("template");
    let id = WorkspaceTemplateId::decode(&input.template_id).ok_or_else(not_found)?;
    let template = match built_in(id.0) {
        Some(t) => t.clone(),
        None => Template::from_row(repo::find(conn, ws.0, id.0).await?.ok_or_else(not_found)?)?,
    };
    let held = HeldApply {
        workspace_id: ws,
        template_id: template.external_id(),
        template_key: template.key,
        template_name: template.name,
        settings: template.preset,
    };
    apply_in(conn, &actor, &held, None).await
}

/// Applies `held.settings` to its workspace in `conn`'s transaction (the actor's role checked
/// and the workspace locked by the caller, [`owner_change::lock_as_owner`]); holds it for approval when it must be (never for an approved execution,
/// whose actor is the system's).
async fn apply_in(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    held: &HeldApply,
    approval: Option<&ApprovalRow>,
) -> DomainResult<Applied> {
    let ws = held.workspace_id;
    let preset = &held.settings;
    preset.check()?;
    let before = owner_change::settings_for_update(conn, ws).await?;
    let after = preset.settings_after(&before);
    let kept = retention::settings_of(conn, ws.0).await?;
    let kept_after = preset.retention_after(&kept);
    let current: BTreeMap<String, i64> = quota_repo::stored(conn, ws.0)
        .await?
        .into_iter()
        .map(|q| (q.resource, q.quota))
        .collect();
    // Quotas on `members` and on the workspace's resources; others are skipped (and named in
    // the audit event). The rate limit is a security setting, not a quota row.
    let known = crate::db::repo::resources::for_workspaces(conn, &[ws.0]).await?;
    let (quotas, skipped): (Vec<_>, Vec<_>) = preset
        .quotas
        .iter()
        .partition(|(k, _)| k.as_str() == quotas::MEMBERS || known.iter().any(|r| &r.key == *k));

    let mut changes = Vec::new();
    let quota_of = |m: &BTreeMap<String, i64>, k: &str| m.get(k).copied();
    let before_all = Preset::snapshot(&before, &kept, &[]);
    let after_all = Preset::snapshot(&after, &kept_after, &[]);
    diff(
        "policy",
        &before_all.policy,
        &after_all.policy,
        &mut changes,
    )?;
    diff(
        "security",
        &before_all.security,
        &after_all.security,
        &mut changes,
    )?;
    for (k, q) in &quotas {
        let from = quota_of(&current, k);
        if from != Some(**q) {
            changes.push(SettingChange {
                field: format!("quotas.{k}"),
                from: from.map(|v| v.to_string()),
                to: Some(q.to_string()),
            });
        }
    }
    diff(
        "retention",
        &before_all.retention,
        &after_all.retention,
        &mut changes,
    )?;

    let weakens_approvals = before
        .approval_required_for
        .iter()
        .any(|a| !after.approval_required_for.contains(a));
    let touches_security = changes.iter().any(|c| c.field.starts_with("security."));
    if after.require_tls
        && !before.require_tls
        && matches!(
            actor.gate.caller(),
            Caller::Person { .. } | Caller::ApiKey { .. }
        )
        && !actor.gate.origin().tls
    {
        return Err(DomainError::FailedPrecondition(
            "this template requires TLS, but this request did not arrive over TLS (HTTPS \
             through a trusted proxy): applying it would lock everyone out. Apply it over HTTPS."
                .into(),
        ));
    }
    if weakens_approvals || touches_security {
        let request =
            owner_change::hold_security_change(conn, actor, ws, "applyTemplate", held).await?;
        if let Some(request) = request {
            return Ok(Applied {
                workspace_id: ws,
                changes: Vec::new(),
                approval_request: Some(request),
            });
        }
    }

    if after != before {
        settings_repo::save_settings(conn, &after).await?;
    }
    let set: Vec<(&str, i64)> = quotas
        .iter()
        .filter(|(k, q)| quota_of(&current, k) != Some(**q))
        .map(|(k, q)| (k.as_str(), **q))
        .collect();
    if !set.is_empty() {
        let (keys, limits): (Vec<&str>, Vec<i64>) = set.iter().copied().unzip();
        quota_repo::set_many(conn, ws.0, &keys, &limits).await?;
        // A quota on a key that had none counts afresh (as `updateQuotas` does).
        let fresh: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| !current.contains_key(*k))
            .collect();
        if !fresh.is_empty() {
            quota_repo::reset_counters(conn, ws.0, &fresh).await?;
        }
    }
    if kept_after != kept {
        retention::store(conn, ws.0, &kept_after).await?;
    }
    let mut summary = json!({
        "template": {"id": held.template_id, "key": held.template_key, "name": held.template_name},
        "changes": changes,
    });
    if !skipped.is_empty() {
        summary["skippedQuotas"] = json!(skipped.iter().map(|(k, _)| k).collect::<Vec<_>>());
    }
    if let Some(a) = approval {
        summary["approvalRequestId"] = json!(crate::ids::ApprovalRequestId(a.id).encode());
    }
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "template.apply",
            target_type: "Workspace",
            target_id: ws.encode(),
            summary,
            actor,
        },
    )
    .await?;
    Ok(Applied {
        workspace_id: ws,
        changes,
        approval_request: None,
    })
}

/// Appends the fields of `before` and `after` (two full snapshots of one section) that differ.
fn diff<T: Serialize>(
    section: &str,
    before: &T,
    after: &T,
    out: &mut Vec<SettingChange>,
) -> DomainResult<()> {
    let before = serde_json::to_value(before).map_err(DomainError::internal)?;
    let after = serde_json::to_value(after).map_err(DomainError::internal)?;
    let (Value::Object(before), Value::Object(after)) = (before, after) else {
        return Err(DomainError::internal(anyhow::anyhow!(
            "a settings section is not an object"
        )));
    };
    for (field, to) in &after {
        let from = before.get(field).unwrap_or(&Value::Null);
        if from != to {
            out.push(SettingChange {
                field: format!("{section}.{field}"),
                from: render(from),
                to: render(to),
            });
        }
    }
    Ok(())
}

fn render(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        v => Some(v.to_string()),
    }
}

/// Executes an approved `applyTemplate`: applies the settings the requester saw (stored with
/// the request) in `conn`'s transaction, as the requester (who must still be an owner), and
/// records `template.apply`. The caller forgets the workspace's cached settings after commit.
pub(crate) async fn execute_approved(
    conn: &mut AsyncPgConnection,
    _services: &Services,
    request: &ApprovalRow,
    actor: &Actor,
) -> DomainResult<Value> {
    let held: HeldApply = owner_change::stored_input(request, |h: &HeldApply| h.workspace_id)?;
    owner_change::lock_as_owner(conn, actor, held.workspace_id, "apply templates").await?;
    let applied = apply_in(conn, actor, &held, Some(request)).await?;
    Ok(json!({
        "workspaceId": held.workspace_id.encode(),
        "templateId": held.template_id,
        "changes": applied.changes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_row() -> SettingsRow {
        SettingsRow {
            workspace_id: Uuid::nil(),
            mfa_required: true,
            session_timeout_minutes: Some(42),
            allowed_email_domains: vec!["example.com".into()],
            blocked_email_domains: vec!["spam.example".into()],
            api_keys_allowed: false,
            api_key_max_lifetime_days: Some(7),
            api_key_max_count: Some(3),
            external_integrations_allowed: false,
            allowed_upload_types: vec![".pdf".into()],
            blocked_upload_types: vec![".exe".into()],
            approval_required_for: vec!["CREATE_API_KEY".into()],
            approval_expiry_hours: 5,
            audit_billing_reads: true,
            ip_allow_list: Vec::new(),
            require_tls: true,
            rate_limit_per_minute: Some(100),
            api_key_rate_limit_per_minute: Some(10),
            encryption_at_rest_required: true,
            vpn_required: true,
            updated_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_snapshot_carries_every_setting_but_the_ip_allow_list() {
        // Applying the snapshot of a row with every setting changed to the defaults gives the
        // row back: no field is forgotten by `snapshot` or `settings_after`.
        let row = full_row();
        let snap = Preset::snapshot(&row, &retention::DEFAULTS, &[]);
        let mut with_ips = SettingsRow::defaults(Uuid::nil());
        with_ips.ip_allow_list = vec!["10.0.0.0/8".into()];
        let applied = snap.settings_after(&with_ips);
        assert_eq!(applied.ip_allow_list, vec!["10.0.0.0/8".to_string()]);
        assert_eq!(
            SettingsRow {
                ip_allow_list: Vec::new(),
                ..applied
            },
            row
        );
        let text = serde_json::to_string(&snap).expect("json");
        assert!(!text.contains("ipAllowList"), "{text}");
        let back: Preset = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, snap);
    }

    #[test]
    fn absent_and_null_differ() {
        let p: Preset =
            serde_json::from_str(r#"{"policy": {"sessionTimeoutMinutes": null}}"#).expect("p");
        assert_eq!(p.policy.session_timeout_minutes, Some(None));
        assert_eq!(p.policy.api_key_max_count, None);
        let after = p.settings_after(&full_row());
        assert_eq!(after.session_timeout_minutes, None);
        assert_eq!(after.api_key_max_count, Some(3));
    }

    #[test]
    fn built_ins_are_valid_distinct_and_never_lock_anyone_out() {
        let mut keys = std::collections::HashSet::new();
        for t in BUILT_INS.iter() {
            t.preset.check().expect(&t.key);
            assert!(keys.insert(t.key.clone()));
            assert!(check_key(&t.key).is_err(), "{} is reserved", t.key);
            let json = serde_json::to_value(&t.preset).expect("json");
            assert!(json["security"].get("ipAllowList").is_none());
            assert!(json["policy"].get("allowedEmailDomains").is_none());
            assert!(t.external_id().starts_with("tpl_"));
            assert_eq!(
                WorkspaceTemplateId::decode(&t.external_id()).map(|i| i.0),
                Some(t.id)
            );
        }
        let hc = built_in(HEALTHCARE_ID).expect("healthcare");
        assert_eq!(hc.key, "HEALTHCARE");
        assert_eq!(hc.preset.policy.mfa_required, Some(true));
        assert_eq!(hc.preset.policy.session_timeout_minutes, Some(Some(15)));
        assert_eq!(hc.preset.retention.audit_logs_days, Some(2555));
        assert_eq!(hc.preset.policy.external_integrations_allowed, Some(false));
        let gov = built_in(GOVERNMENT_ID).expect("government");
        assert_eq!(
            gov.preset
                .policy
                .approval_required_for
                .as_ref()
                .map(Vec::len),
            Some(ApprovalAction::ALL.len())
        );
    }

    #[test]
    fn keys_are_checked() {
        for bad in ["", "lower", "1ABC", "A-B", &"A".repeat(41)] {
            assert!(
                matches!(check_key(bad), Err(DomainError::BadInput { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            check_key("GOVERNMENT"),
            Err(DomainError::Conflict(_))
        ));
        assert!(check_key(&format!("A{}", "_9".repeat(19))).is_ok());
    }

    #[test]
    fn diff_lists_exactly_what_changed() {
        let before = full_row();
        let mut after = before.clone();
        after.mfa_required = false;
        after.session_timeout_minutes = None;
        after.blocked_upload_types = vec![".exe".into(), ".bat".into()];
        let b = Preset::snapshot(&before, &retention::DEFAULTS, &[]);
        let a = Preset::snapshot(&after, &retention::DEFAULTS, &[]);
        let mut out = Vec::new();
        diff("policy", &b.policy, &a.policy, &mut out).expect("diff");
        assert_eq!(
            out,
            vec![
                SettingChange {
                    field: "policy.blockedUploadTypes".into(),
                    from: Some(r#"[".exe"]"#.into()),
                    to: Some(r#"[".exe",".bat"]"#.into()),
                },
                SettingChange {
                    field: "policy.mfaRequired".into(),
                    from: Some("true".into()),
                    to: Some("false".into()),
                },
                SettingChange {
                    field: "policy.sessionTimeoutMinutes".into(),
                    from: Some("42".into()),
                    to: None,
                },
            ]
        );
    }

    #[test]
    fn bad_stored_values_are_refused() {
        let mut p = Preset::default();
        p.policy.approval_required_for = Some(vec!["NOPE".into()]);
        assert!(p.check().is_err());
        let mut p = Preset::default();
        p.retention.audit_logs_days = Some(1);
        assert!(p.check().is_err());
        let mut p = Preset::default();
        p.quotas.insert("members".into(), -1);
        assert!(p.check().is_err());
    }
}
