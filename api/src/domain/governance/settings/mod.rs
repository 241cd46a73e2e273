//! A workspace's policy and security settings as owners change them (`updateWorkspacePolicy`,
//! `updateSecuritySettings`), and the policies enforced outside the per-request gate:
//!
//! - e-mail domains, at `addMember` ([`check_member_email`]);
//! - external integrations, when webhook endpoints, the Slack URL or e-mail recipients are
//!   added or changed ([`require_integrations`]; delivery skips them while the policy is
//!   off, see `notifications::delivery`);
//! - upload types, answered by `Workspace.validateUpload` ([`check_upload`]);
//! - audited billing reads ([`audit_billing_read`]);
//! - the audit events' retention, which is the retention settings' `auditLogsDays` (one
//!   source of truth: `auditRetentionDays` reads and writes it).
//!
//! Changes are validated and normalized before anything is stored (domains and upload types
//! lower-cased, CIDRs truncated to their network, duplicates dropped), applied in one
//! transaction that locks the workspace and its settings row, idempotent and audited
//! (`policy.update`, `security.update`, with the changed fields before and after). A change
//! that would refuse the caller's own next request (an IP allow-list without the caller's
//! address, TLS required from a plain request) is refused: only the system, executing an
//! approved request, skips that check.
//!
//! Approval: `updateSecuritySettings` is held for a second person when the workspace lists
//! `CHANGE_SECURITY_SETTINGS`; so is an `updateWorkspacePolicy` that removes actions from
//! `approvalRequiredFor` (else the rule could be removed first and security changed alone).
//! [`execute_approved`] runs either once approved.

mod enforce;

pub use enforce::{
    AuditedReads, UploadVerdict, audit_billing_read, check_email_domain, check_upload,
    check_upload_input, validate_upload,
};
pub(crate) use enforce::{check_member_email, require_integrations};

use std::collections::HashSet;
use std::sync::Mutex;

use diesel_async::AsyncPgConnection;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::Caller;
use super::approvals::{ApprovalAction, ApprovalRow};
use super::gate::{self, reason};
use super::network::{self, Origin};
use super::owner_change;
use crate::db::repo::governance::{self as repo, SettingsRow};
use crate::domain::audit::{self, Change};
use crate::domain::mutation::{self, Effect};
use crate::domain::{Actor, DomainError, DomainResult, Services, excerpt, retention};
use crate::ids::WorkspaceId;

/// Entries of an e-mail domain or upload type list, at most.
pub const MAX_LIST: usize = 100;
/// CIDRs of an IP allow-list, at most.
pub const MAX_CIDRS: usize = 200;
/// Longest upload type (MIME type or extension) accepted in a list.
const MAX_TYPE_LEN: usize = 127;
/// Longest extension (with its dot).
const MAX_EXTENSION_LEN: usize = 32;
/// Longest file name or MIME type `validateUpload` looks at.
pub const MAX_UPLOAD_INPUT: usize = 255;

/// A nullable setting in a change: keep it, clear it, or set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Patch<T> {
    /// Unchanged (the field was left out).
    Keep,
    /// Cleared (explicit null).
    Clear,
    /// Set to this value.
    Set(T),
}

impl<T: Copy> Patch<T> {
    fn apply(self, current: Option<T>) -> Option<T> {
        match self {
            Patch::Keep => current,
            Patch::Clear => None,
            Patch::Set(v) => Some(v),
        }
    }

    fn value(self) -> Option<T> {
        match self {
            Patch::Set(v) => Some(v),
            _ => None,
        }
    }
}

/// Input of [`update_policy`]: `None` (or `Patch::Keep`) leaves a setting unchanged.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PolicyChange {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// Tokens must carry `mfa` in `amr`.
    pub mfa_required: Option<bool>,
    /// Longest session, in minutes (5–525600).
    pub session_timeout_minutes: Patch<i32>,
    /// Domains `addMember` accepts (empty: any).
    pub allowed_email_domains: Option<Vec<String>>,
    /// Domains `addMember` refuses.
    pub blocked_email_domains: Option<Vec<String>>,
    /// API keys may be created and used.
    pub api_keys_allowed: Option<bool>,
    /// Longest lifetime of a new API key, in days (1–3650).
    pub api_key_max_lifetime_days: Patch<i32>,
    /// Most live API keys (0–1000).
    pub api_key_max_count: Patch<i32>,
    /// Webhook, Slack and e-mail integrations may be added, changed and used.
    pub external_integrations_allowed: Option<bool>,
    /// Upload types accepted (empty: any).
    pub allowed_upload_types: Option<Vec<String>>,
    /// Upload types refused.
    pub blocked_upload_types: Option<Vec<String>>,
    /// Actions that need a second person's approval.
    pub approval_required_for: Option<Vec<ApprovalAction>>,
    /// Hours a pending approval request lives (1–720).
    pub approval_expiry_hours: Option<i32>,
    /// Reads of billing data are audited.
    pub audit_billing_reads: Option<bool>,
    /// Days audit events are kept (the retention settings' `auditLogsDays`).
    pub audit_retention_days: Option<i32>,
}

/// Input of [`update_security`]: `None` (or `Patch::Keep`) leaves a setting unchanged.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SecurityChange {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// CIDRs requests must come from (empty: any).
    pub ip_allow_list: Option<Vec<String>>,
    /// Requests must arrive over TLS.
    pub require_tls: Option<bool>,
    /// Requests per minute (people, per workspace; 1–1000000).
    pub rate_limit_per_minute: Patch<i32>,
    /// Requests per minute per API key (1–1000000).
    pub api_key_rate_limit_per_minute: Patch<i32>,
    /// Declared: data must be encrypted at rest.
    pub encryption_at_rest_required: Option<bool>,
    /// Declared: clients must come through a VPN.
    pub vpn_required: Option<bool>,
}

/// What a settings mutation did: changed the settings, or held the change for approval.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// The pending request, when the change was held (the settings are then unchanged).
    pub approval: Option<ApprovalRow>,
}

fn check_range(field: &'static str, v: i32, least: i32, most: i32) -> DomainResult<()> {
    if (least..=most).contains(&v) {
        Ok(())
    } else {
        Err(DomainError::bad_input(
            field,
            format!("{field} must be between {least} and {most}"),
        ))
    }
}

fn check_patch(field: &'static str, p: Patch<i32>, least: i32, most: i32) -> DomainResult<()> {
    match p.value() {
        Some(v) => check_range(field, v, least, most),
        None => Ok(()),
    }
}

/// Whether `d` (lower-case) is a DNS name of two labels or more: letters, digits and
/// hyphens, labels of 1–63 characters not starting or ending with a hyphen, at most 253 in
/// all, and not an IPv4 address (its last label has a letter).
pub fn is_domain(d: &str) -> bool {
    if d.is_empty() || d.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = d.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.bytes().any(|b| b.is_ascii_lowercase()))
}

/// Checks and normalizes a list of e-mail domains: each a DNS name (lower-cased, a final dot
/// dropped), at most [`MAX_LIST`], duplicates dropped.
pub fn check_domains(field: &'static str, list: &[String]) -> DomainResult<Vec<String>> {
    if list.len() > MAX_LIST {
        return Err(DomainError::bad_input(
            field,
            format!("{field} lists at most {MAX_LIST} domains"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for raw in list {
        let d = raw.trim().to_lowercase();
        let d = d.strip_suffix('.').unwrap_or(&d).to_string();
        if !is_domain(&d) {
            return Err(DomainError::bad_input(
                field,
                format!(
                    "`{}` is not a domain name (e.g. example.com; subdomains are included)",
                    excerpt(raw.trim())
                ),
            ));
        }
        if !out.contains(&d) {
            out.push(d);
        }
    }
    Ok(out)
}

/// Whether `c` may appear in a MIME type's name (RFC 6838's restricted names).
fn mime_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || b"!#$&-^_.+".contains(&c)
}

/// Whether `t` (lower-case) is an upload type a list may hold: a MIME type (`image/png`), a
/// MIME type wildcard (`image/*`) or an extension (`.pdf`, `.tar.gz`).
pub fn is_upload_type(t: &str) -> bool {
    if t.is_empty() || t.len() > MAX_TYPE_LEN {
        return false;
    }
    if let Some(ext) = t.strip_prefix('.') {
        return t.len() <= MAX_EXTENSION_LEN
            && !ext.is_empty()
            && ext.split('.').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    })
            });
    }
    let Some((kind, sub)) = t.split_once('/') else {
        return false;
    };
    let name = |s: &str| {
        s.as_bytes()
            .first()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().all(mime_char)
    };
    name(kind) && (sub == "*" || name(sub))
}

/// Checks and normalizes a list of upload types (see [`is_upload_type`]): lower-cased, at
/// most [`MAX_LIST`], duplicates dropped.
pub fn check_upload_types(field: &'static str, list: &[String]) -> DomainResult<Vec<String>> {
    if list.len() > MAX_LIST {
        return Err(DomainError::bad_input(
            field,
            format!("{field} lists at most {MAX_LIST} types"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for raw in list {
        let t = raw.trim().to_lowercase();
        if !is_upload_type(&t) {
            return Err(DomainError::bad_input(
                field,
                format!(
                    "`{}` is neither a MIME type (image/png, image/*) nor an extension (.pdf)",
                    excerpt(raw.trim())
                ),
            ));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

/// Checks and normalizes an IP allow-list: each an IPv4 or IPv6 CIDR or address, stored as
/// its network (`10.1.2.3/8` is `10.0.0.0/8`, an address is `/32` or `/128`), at most
/// [`MAX_CIDRS`], duplicates dropped.
pub fn check_cidrs(list: &[String]) -> DomainResult<Vec<String>> {
    const FIELD: &str = "ipAllowList";
    if list.len() > MAX_CIDRS {
        return Err(DomainError::bad_input(
            FIELD,
            format!("{FIELD} lists at most {MAX_CIDRS} networks"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for raw in list {
        let Some(net) = network::parse_cidr(raw) else {
            return Err(DomainError::bad_input(
                FIELD,
                format!(
                    "`{}` is not an IP address or CIDR (e.g. 203.0.113.0/24, 2001:db8::/32)",
                    excerpt(raw.trim())
                ),
            ));
        };
        let text = net.to_string();
        if !out.contains(&text) {
            out.push(text);
        }
    }
    Ok(out)
}

impl PolicyChange {
    /// The change with every value checked and every list normalized.
    pub fn validated(mut self) -> DomainResult<Self> {
        check_patch(
            "sessionTimeoutMinutes",
            self.session_timeout_minutes,
            5,
            525_600,
        )?;
        check_patch(
            "apiKeyMaxLifetimeDays",
            self.api_key_max_lifetime_days,
            1,
            3650,
        )?;
        check_patch("apiKeyMaxCount", self.api_key_max_count, 0, 1000)?;
        if let Some(h) = self.approval_expiry_hours {
            check_range("approvalExpiryHours", h, 1, 720)?;
        }
        if let Some(d) = self.audit_retention_days {
            retention::check_audit_logs_days("auditRetentionDays", d)?;
        }
        if let Some(l) = &self.allowed_email_domains {
            self.allowed_email_domains = Some(check_domains("allowedEmailDomains", l)?);
        }
        if let Some(l) = &self.blocked_email_domains {
            self.blocked_email_domains = Some(check_domains("blockedEmailDomains", l)?);
        }
        if let Some(l) = &self.allowed_upload_types {
            self.allowed_upload_types = Some(check_upload_types("allowedUploadTypes", l)?);
        }
        if let Some(l) = &self.blocked_upload_types {
            self.blocked_upload_types = Some(check_upload_types("blockedUploadTypes", l)?);
        }
        if let Some(l) = &self.approval_required_for {
            if l.len() > 4 * ApprovalAction::ALL.len() {
                return Err(DomainError::bad_input(
                    "approvalRequiredFor",
                    "approvalRequiredFor lists each action at most once",
                ));
            }
            let mut out: Vec<ApprovalAction> = Vec::with_capacity(l.len());
            for a in l {
                if !out.contains(a) {
                    out.push(*a);
                }
            }
            self.approval_required_for = Some(out);
        }
        Ok(self)
    }

    fn apply(&self, row: &mut SettingsRow) {
        let c = self.clone();
        if let Some(v) = c.mfa_required {
            row.mfa_required = v;
        }
        row.session_timeout_minutes = c.session_timeout_minutes.apply(row.session_timeout_minutes);
        if let Some(v) = c.allowed_email_domains {
            row.allowed_email_domains = v;
        }
        if let Some(v) = c.blocked_email_domains {
            row.blocked_email_domains = v;
        }
        if let Some(v) = c.api_keys_allowed {
            row.api_keys_allowed = v;
        }
        row.api_key_max_lifetime_days = c
            .api_key_max_lifetime_days
            .apply(row.api_key_max_lifetime_days);
        row.api_key_max_count = c.api_key_max_count.apply(row.api_key_max_count);
        if let Some(v) = c.external_integrations_allowed {
            row.external_integrations_allowed = v;
        }
        if let Some(v) = c.allowed_upload_types {
            row.allowed_upload_types = v;
        }
        if let Some(v) = c.blocked_upload_types {
            row.blocked_upload_types = v;
        }
        if let Some(v) = c.approval_required_for {
            row.approval_required_for = v.iter().map(|a| a.as_str().to_string()).collect();
        }
        if let Some(v) = c.approval_expiry_hours {
            row.approval_expiry_hours = v;
        }
        if let Some(v) = c.audit_billing_reads {
            row.audit_billing_reads = v;
        }
    }

    /// Whether the change removes an action from `row`'s approval list.
    fn weakens_approvals(&self, row: &SettingsRow) -> bool {
        self.approval_required_for.as_ref().is_some_and(|new| {
            row.approval_required_for
                .iter()
                .any(|a| !new.iter().any(|n| n.as_str() == a))
        })
    }
}

impl SecurityChange {
    /// The change with every value checked and the allow-list normalized.
    pub fn validated(mut self) -> DomainResult<Self> {
        check_patch(
            "rateLimitPerMinute",
            self.rate_limit_per_minute,
            1,
            1_000_000,
        )?;
        check_patch(
            "apiKeyRateLimitPerMinute",
            self.api_key_rate_limit_per_minute,
            1,
            1_000_000,
        )?;
        if let Some(l) = &self.ip_allow_list {
            self.ip_allow_list = Some(check_cidrs(l)?);
        }
        Ok(self)
    }

    fn apply(&self, row: &mut SettingsRow) {
        let c = self.clone();
        if let Some(v) = c.ip_allow_list {
            row.ip_allow_list = v;
        }
        if let Some(v) = c.require_tls {
            row.require_tls = v;
        }
        row.rate_limit_per_minute = c.rate_limit_per_minute.apply(row.rate_limit_per_minute);
        row.api_key_rate_limit_per_minute = c
            .api_key_rate_limit_per_minute
            .apply(row.api_key_rate_limit_per_minute);
        if let Some(v) = c.encryption_at_rest_required {
            row.encryption_at_rest_required = v;
        }
        if let Some(v) = c.vpn_required {
            row.vpn_required = v;
        }
    }
}

/// Refuses settings that would refuse the very request that sets them (and so lock its
/// caller out): an allow-list without the caller's address, TLS from a plain request.
pub fn check_lock_out(row: &SettingsRow, origin: Origin) -> DomainResult<()> {
    if !row.ip_allow_list.is_empty() {
        let nets: Vec<_> = row
            .ip_allow_list
            .iter()
            .filter_map(|c| network::parse_cidr(c))
            .collect();
        match origin.ip.map(network::canonical) {
            Some(ip) if network::contains(&nets, ip) => {}
            Some(ip) => {
                return Err(DomainError::bad_input(
                    "ipAllowList",
                    format!(
                        "this allow-list would refuse your own address {ip} and lock you out; include it (e.g. {})",
                        ipnet::IpNet::from(ip)
                    ),
                ));
            }
            None => {
                return Err(DomainError::bad_input(
                    "ipAllowList",
                    "this request's address is unknown, so any allow-list would lock you out",
                ));
            }
        }
    }
    if row.require_tls && !origin.tls {
        return Err(DomainError::bad_input(
            "requireTls",
            "this request did not arrive over TLS, so requiring TLS would lock you out; make the change over HTTPS",
        ));
    }
    Ok(())
}

/// The policy fields of `row` as the audit log shows them (with the audit events' retention
/// when known).
fn policy_json(row: &SettingsRow, audit_days: Option<i32>) -> Map<String, Value> {
    let mut m = json!({
        "mfaRequired": row.mfa_required,
        "sessionTimeoutMinutes": row.session_timeout_minutes,
        "allowedEmailDomains": row.allowed_email_domains,
        "blockedEmailDomains": row.blocked_email_domains,
        "apiKeysAllowed": row.api_keys_allowed,
        "apiKeyMaxLifetimeDays": row.api_key_max_lifetime_days,
        "apiKeyMaxCount": row.api_key_max_count,
        "externalIntegrationsAllowed": row.external_integrations_allowed,
        "allowedUploadTypes": row.allowed_upload_types,
        "blockedUploadTypes": row.blocked_upload_types,
        "approvalRequiredFor": row.approval_required_for,
        "approvalExpiryHours": row.approval_expiry_hours,
        "auditBillingReads": row.audit_billing_reads,
    });
    if let (Some(d), Some(o)) = (audit_days, m.as_object_mut()) {
        o.insert("auditRetentionDays".into(), json!(d));
    }
    m.as_object().cloned().unwrap_or_default()
}

/// The security fields of `row` as the audit log shows them.
fn security_json(row: &SettingsRow) -> Map<String, Value> {
    json!({
        "ipAllowList": row.ip_allow_list,
        "requireTls": row.require_tls,
        "rateLimitPerMinute": row.rate_limit_per_minute,
        "apiKeyRateLimitPerMinute": row.api_key_rate_limit_per_minute,
        "encryptionAtRestRequired": row.encryption_at_rest_required,
        "vpnRequired": row.vpn_required,
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

/// `{"before": {...}, "after": {...}}` of the fields that differ.
fn diff(before: Map<String, Value>, after: Map<String, Value>) -> Value {
    let (mut b, mut a) = (Map::new(), Map::new());
    for (k, new) in after {
        let old = before.get(&k).cloned().unwrap_or(Value::Null);
        if old != new {
            b.insert(k.clone(), old);
            a.insert(k, new);
        }
    }
    json!({"before": b, "after": a})
}

/// The stored settings of `ws` (the defaults without a row), and whether a row exists; the
/// caller checked access.
pub async fn row_of(services: &Services, ws: Uuid) -> DomainResult<(SettingsRow, bool)> {
    let mut conn = services.conn().await?;
    Ok(match repo::settings(&mut conn, ws).await? {
        Some(r) => (r, true),
        None => (SettingsRow::defaults(ws), false),
    })
}

/// Days audit events of `ws` are kept (the retention settings' `auditLogsDays`); the caller
/// checked access.
pub async fn audit_retention_days(services: &Services, ws: Uuid) -> DomainResult<i32> {
    let mut conn = services.conn().await?;
    Ok(retention::settings_of(&mut conn, ws).await?.audit_logs_days)
}

/// Changes the workspace policy (owners), idempotently and audited (`policy.update`). A
/// change that removes actions from `approvalRequiredFor` is held for approval when the
/// workspace lists `CHANGE_SECURITY_SETTINGS`.
pub async fn update_policy(
    services: &Services,
    actor: &Actor,
    change: PolicyChange,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<Outcome>> {
    let change = change.validated()?;
    owner_change::run(
        services,
        actor,
        "updateWorkspacePolicy",
        change.workspace_id,
        key,
        &change,
        |c, _| -> Effect<'_, _> { Box::pin(policy_effect(c, actor.clone(), change.clone())) },
    )
    .await
}

async fn policy_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    change: PolicyChange,
) -> DomainResult<Outcome> {
    let ws = change.workspace_id;
    // The workspace first, then its settings, then its retention: the order every writer of
    // these rows takes.
    owner_change::lock_as_owner(conn, &actor, ws, "change the workspace policy").await?;
    let before = owner_change::settings_for_update(conn, ws).await?;
    if change.weakens_approvals(&before)
        && let Some(held) =
            owner_change::hold_security_change(conn, &actor, ws, "updateWorkspacePolicy", &change)
                .await?
    {
        return Ok(Outcome {
            workspace_id: ws,
            approval: Some(held),
        });
    }
    let mut after = before.clone();
    change.apply(&mut after);
    let days_before = match change.audit_retention_days {
        Some(_) => Some(retention::settings_of(conn, ws.0).await?.audit_logs_days),
        None => None,
    };
    repo::save_settings(conn, &after).await?;
    if let Some(d) = change.audit_retention_days {
        retention::set_audit_logs_days(conn, ws.0, d).await?;
    }
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "policy.update",
            target_type: "Workspace",
            target_id: ws.encode(),
            summary: diff(
                policy_json(&before, days_before),
                policy_json(&after, change.audit_retention_days),
            ),
            actor: &actor,
        },
    )
    .await?;
    Ok(Outcome {
        workspace_id: ws,
        approval: None,
    })
}

/// Changes the security settings (owners), idempotently and audited (`security.update`);
/// held for approval when the workspace lists `CHANGE_SECURITY_SETTINGS`. Settings that would
/// refuse this very request are refused ([`check_lock_out`]).
pub async fn update_security(
    services: &Services,
    actor: &Actor,
    change: SecurityChange,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<Outcome>> {
    let change = change.validated()?;
    owner_change::run(
        services,
        actor,
        "updateSecuritySettings",
        change.workspace_id,
        key,
        &change,
        |c, _| -> Effect<'_, _> { Box::pin(security_effect(c, actor.clone(), change.clone())) },
    )
    .await
}

async fn security_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    change: SecurityChange,
) -> DomainResult<Outcome> {
    let ws = change.workspace_id;
    owner_change::lock_as_owner(conn, &actor, ws, "change security settings").await?;
    let before = owner_change::settings_for_update(conn, ws).await?;
    let mut after = before.clone();
    change.apply(&mut after);
    // An approved change runs for the requester from wherever the approver is: the
    // requester's address was checked when they asked.
    if !matches!(actor.gate.caller(), Caller::System) {
        check_lock_out(&after, actor.gate.origin())?;
    }
    if let Some(held) =
        owner_change::hold_security_change(conn, &actor, ws, "updateSecuritySettings", &change)
            .await?
    {
        return Ok(Outcome {
            workspace_id: ws,
            approval: Some(held),
        });
    }
    repo::save_settings(conn, &after).await?;
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "security.update",
            target_type: "Workspace",
            target_id: ws.encode(),
            summary: diff(security_json(&before), security_json(&after)),
            actor: &actor,
        },
    )
    .await?;
    Ok(Outcome {
        workspace_id: ws,
        approval: None,
    })
}

/// Executes an approved `updateWorkspacePolicy` or `updateSecuritySettings` in `conn`'s
/// transaction (the approvals dispatcher's), for `actor` (the requester with a system gate:
/// never held again, and the lock-out check is skipped). The stored change is validated
/// again and merged into the settings as they are now; the usual audit event is recorded.
///
/// The dispatcher must call `services.governance.forget(request.workspace_id)` after its
/// transaction commits, so that this process enforces the new settings at once.
pub(crate) async fn execute_approved(
    conn: &mut AsyncPgConnection,
    _services: &Services,
    request: &ApprovalRow,
    actor: &Actor,
) -> DomainResult<Value> {
    let ws = WorkspaceId(request.workspace_id);
    match request.operation.as_str() {
        "updateWorkspacePolicy" => {
            let change: PolicyChange =
                owner_change::stored_input(request, |c: &PolicyChange| c.workspace_id)?;
            policy_effect(conn, actor.clone(), change.validated()?).await?;
        }
        "updateSecuritySettings" => {
            let change: SecurityChange =
                owner_change::stored_input(request, |c: &SecurityChange| c.workspace_id)?;
            security_effect(conn, actor.clone(), change.validated()?).await?;
        }
        other => {
            return Err(DomainError::internal(anyhow::anyhow!(
                "settings cannot execute operation {other}"
            )));
        }
    }
    Ok(json!({ "workspaceId": ws.encode() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn domains_are_normalized_and_checked() {
        assert_eq!(
            check_domains(
                "f",
                &list(&[" Example.COM ", "example.com", "eu.example.com."])
            )
            .expect("valid"),
            list(&["example.com", "eu.example.com"])
        );
        for bad in [
            "example",
            "-a.com",
            "a-.com",
            "a..com",
            "exa mple.com",
            "*.example.com",
            "1.2.3.4",
            "@example.com",
            "ex_ample.com",
            "",
        ] {
            assert!(check_domains("f", &list(&[bad])).is_err(), "{bad}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(check_domains("f", &[long]).is_err());
        let many: Vec<String> = (0..101).map(|i| format!("d{i}.example.com")).collect();
        assert!(check_domains("f", &many).is_err());
        assert_eq!(
            check_domains("f", &many[..100]).expect("a hundred").len(),
            100
        );
    }

    #[test]
    fn upload_types_are_mime_types_or_extensions() {
        assert_eq!(
            check_upload_types(
                "f",
                &list(&["IMAGE/PNG", "image/*", ".PDF", ".tar.gz", ".pdf"])
            )
            .expect("valid"),
            list(&["image/png", "image/*", ".pdf", ".tar.gz"])
        );
        for bad in [
            "png",
            "image/",
            "/png",
            "*/*",
            ".",
            "..pdf",
            ".p df",
            "image/png/x",
            "ima ge/png",
        ] {
            assert!(check_upload_types("f", &list(&[bad])).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..101).map(|i| format!(".e{i}")).collect();
        assert!(check_upload_types("f", &many).is_err());
    }

    #[test]
    fn cidrs_are_normalized_deduplicated_and_capped() {
        assert_eq!(
            check_cidrs(&list(&[
                "10.1.2.3/8",
                "10.0.0.0/8",
                "192.0.2.7",
                "2001:db8::1/32"
            ]))
            .expect("valid"),
            list(&["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"])
        );
        assert!(check_cidrs(&list(&["10.0.0.0/33"])).is_err());
        assert!(check_cidrs(&list(&["example.com"])).is_err());
        let many: Vec<String> = (0..201)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
            .collect();
        assert!(check_cidrs(&many).is_err());
        assert_eq!(check_cidrs(&many[..200]).expect("two hundred").len(), 200);
    }

    #[test]
    fn ranges_are_checked() {
        let ws = WorkspaceId(Uuid::nil());
        let base = PolicyChange {
            workspace_id: ws,
            mfa_required: None,
            session_timeout_minutes: Patch::Keep,
            allowed_email_domains: None,
            blocked_email_domains: None,
            api_keys_allowed: None,
            api_key_max_lifetime_days: Patch::Keep,
            api_key_max_count: Patch::Keep,
            external_integrations_allowed: None,
            allowed_upload_types: None,
            blocked_upload_types: None,
            approval_required_for: None,
            approval_expiry_hours: None,
            audit_billing_reads: None,
            audit_retention_days: None,
        };
        let with = |f: &dyn Fn(&mut PolicyChange)| {
            let mut c = base.clone();
            f(&mut c);
            c.validated()
        };
        assert!(with(&|c| c.session_timeout_minutes = Patch::Set(4)).is_err());
        assert!(with(&|c| c.session_timeout_minutes = Patch::Set(5)).is_ok());
        assert!(with(&|c| c.session_timeout_minutes = Patch::Set(525_601)).is_err());
        assert!(with(&|c| c.session_timeout_minutes = Patch::Clear).is_ok());
        assert!(with(&|c| c.api_key_max_lifetime_days = Patch::Set(0)).is_err());
        assert!(with(&|c| c.api_key_max_count = Patch::Set(0)).is_ok());
        assert!(with(&|c| c.api_key_max_count = Patch::Set(1001)).is_err());
        assert!(with(&|c| c.approval_expiry_hours = Some(721)).is_err());
        assert!(with(&|c| c.audit_retention_days = Some(29)).is_err());
        assert!(with(&|c| c.audit_retention_days = Some(3650)).is_ok());
    }

    #[test]
    fn patches_round_trip_through_stored_inputs() {
        for p in [Patch::Keep, Patch::Clear, Patch::Set(7)] {
            let v = serde_json::to_value(p).expect("json");
            assert_eq!(serde_json::from_value::<Patch<i32>>(v).expect("back"), p);
        }
        assert_eq!(Patch::Clear.apply(Some(3)), None);
        assert_eq!(Patch::Keep.apply(Some(3)), Some(3));
        assert_eq!(Patch::Set(4).apply(None), Some(4));
    }

    #[test]
    fn email_domains_cover_subdomains_and_blocked_wins() {
        let mut s = SettingsRow::defaults(Uuid::nil());
        assert!(check_email_domain(&s, "a@anything.org").is_ok());
        s.allowed_email_domains = list(&["example.com"]);
        assert!(check_email_domain(&s, "a@example.com").is_ok());
        assert!(check_email_domain(&s, "a@eu.example.com").is_ok());
        assert!(check_email_domain(&s, "a@badexample.com").is_err());
        assert!(check_email_domain(&s, "a@example.com.evil.org").is_err());
        s.blocked_email_domains = list(&["eu.example.com"]);
        assert!(check_email_domain(&s, "a@eu.example.com").is_err());
        assert!(check_email_domain(&s, "a@x.eu.example.com").is_err());
        assert!(check_email_domain(&s, "a@us.example.com").is_ok());
    }

    #[test]
    fn uploads_are_checked_by_type_wildcard_and_extension() {
        let mut s = SettingsRow::defaults(Uuid::nil());
        assert!(check_upload(&s, "a.exe", "application/x-msdownload").allowed);
        s.blocked_upload_types = list(&[".exe", "application/x-sh", "video/*"]);
        assert!(!check_upload(&s, "setup.EXE", "application/octet-stream").allowed);
        assert!(!check_upload(&s, "setup.exe. ", "application/octet-stream").allowed);
        assert!(!check_upload(&s, "run", "application/x-sh; charset=utf-8").allowed);
        assert!(!check_upload(&s, "clip.bin", "video/mp4").allowed);
        assert!(!check_upload(&s, "a\u{0}.pdf", "application/pdf").allowed);
        assert!(check_upload(&s, "notes.txt", "text/plain").allowed);
        s.allowed_upload_types = list(&["image/*", ".pdf"]);
        assert!(check_upload(&s, "cat.png", "image/png").allowed);
        assert!(check_upload(&s, "paper.PDF", "application/octet-stream").allowed);
        let no = check_upload(&s, "notes.txt", "text/plain");
        assert!(!no.allowed);
        assert!(no.reason.expect("a reason").contains("image/*"));
        // Blocked wins over allowed.
        s.blocked_upload_types = list(&["image/svg+xml"]);
        assert!(!check_upload(&s, "logo.svg", "image/svg+xml").allowed);
        assert!(check_upload_input(&"a".repeat(255), "").is_ok());
        assert!(check_upload_input(&"a".repeat(256), "").is_err());
        assert!(check_upload_input("a", &"b".repeat(256)).is_err());
    }

    #[test]
    fn lock_outs_are_refused() {
        let mut s = SettingsRow::defaults(Uuid::nil());
        let here = Origin {
            ip: Some("127.0.0.1".parse().expect("ip")),
            tls: false,
        };
        assert!(check_lock_out(&s, here).is_ok());
        s.ip_allow_list = list(&["10.0.0.0/8"]);
        let e = check_lock_out(&s, here).expect_err("locked out");
        assert!(e.to_string().contains("127.0.0.1"), "{e}");
        s.ip_allow_list = list(&["10.0.0.0/8", "127.0.0.0/8"]);
        assert!(check_lock_out(&s, here).is_ok());
        let mapped = Origin {
            ip: Some("::ffff:127.0.0.1".parse().expect("ip")),
            tls: false,
        };
        assert!(check_lock_out(&s, mapped).is_ok());
        let unknown = Origin {
            ip: None,
            tls: true,
        };
        assert!(check_lock_out(&s, unknown).is_err());
        s.ip_allow_list.clear();
        s.require_tls = true;
        assert!(check_lock_out(&s, here).is_err());
        assert!(check_lock_out(&s, Origin { tls: true, ..here }).is_ok());
    }

    #[test]
    fn audits_show_only_changed_fields() {
        let before = SettingsRow::defaults(Uuid::nil());
        let mut after = before.clone();
        after.mfa_required = true;
        after.ip_allow_list = list(&["10.0.0.0/8"]);
        let d = diff(
            policy_json(&before, Some(2555)),
            policy_json(&after, Some(90)),
        );
        assert_eq!(
            d,
            json!({"before": {"mfaRequired": false, "auditRetentionDays": 2555},
                   "after": {"mfaRequired": true, "auditRetentionDays": 90}})
        );
        let d = diff(security_json(&before), security_json(&after));
        assert_eq!(
            d,
            json!({"before": {"ipAllowList": []}, "after": {"ipAllowList": ["10.0.0.0/8"]}})
        );
    }
}
