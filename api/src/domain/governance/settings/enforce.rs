//! The policies enforced outside the gate: e-mail domains of new members, the integrations
//! switch, upload types, and audited billing reads.

use super::*;

/// Whether `domain` is `listed` or one of its subdomains (`example.com` covers
/// `eu.example.com`).
fn domain_covered(domain: &str, listed: &str) -> bool {
    domain == listed
        || domain
            .strip_suffix(listed)
            .is_some_and(|head| head.ends_with('.'))
}

/// Refuses `email` (normalized, as `members::check_email` returns it) when its domain is
/// blocked, or outside a non-empty allowed list (`DOMAIN_NOT_ALLOWED`). A listed domain
/// covers its subdomains: `example.com` admits (or blocks) `a@eu.example.com` too. Blocked
/// wins over allowed. Called in `addMember`'s transaction after the workspace's lock.
pub(crate) async fn check_member_email(
    conn: &mut AsyncPgConnection,
    ws: WorkspaceId,
    email: &str,
) -> DomainResult<()> {
    let Some(s) = repo::settings_for_update(conn, ws.0).await? else {
        return Ok(());
    };
    check_email_domain(&s, email)
}

/// The rule of [`check_member_email`] on given settings.
pub fn check_email_domain(s: &SettingsRow, email: &str) -> DomainResult<()> {
    let domain = email.rsplit_once('@').map_or(email, |(_, d)| d);
    if s.blocked_email_domains
        .iter()
        .any(|b| domain_covered(domain, b))
    {
        return Err(gate::refused(
            reason::DOMAIN_NOT_ALLOWED,
            format!(
                "this workspace does not accept members from {}",
                excerpt(domain)
            ),
        ));
    }
    if !s.allowed_email_domains.is_empty()
        && !s
            .allowed_email_domains
            .iter()
            .any(|a| domain_covered(domain, a))
    {
        return Err(gate::refused(
            reason::DOMAIN_NOT_ALLOWED,
            format!(
                "this workspace accepts members only from its allowed e-mail domains; {} is not one",
                excerpt(domain)
            ),
        ));
    }
    Ok(())
}

/// Refuses (`INTEGRATIONS_DISABLED`) when the policy of `ws` turns external integrations
/// off: webhook endpoints, the Slack URL and e-mail recipients cannot be added or changed
/// then (removing them stays possible). Called in the integration mutation's transaction
/// after the workspace's lock; the settings row is locked too, so a concurrent policy change
/// waits.
pub(crate) async fn require_integrations(
    conn: &mut AsyncPgConnection,
    ws: WorkspaceId,
) -> DomainResult<()> {
    match repo::settings_for_update(conn, ws.0).await? {
        Some(s) if !s.external_integrations_allowed => Err(gate::refused(
            reason::INTEGRATIONS_DISABLED,
            "this workspace's policy turns external integrations off: webhook endpoints, Slack and e-mail recipients cannot be added or changed (an owner can set externalIntegrationsAllowed)",
        )),
        _ => Ok(()),
    }
}

/// What `validateUpload` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadVerdict {
    /// The upload is accepted.
    pub allowed: bool,
    /// Why not.
    pub reason: Option<String>,
}

impl UploadVerdict {
    fn refused(reason: String) -> Self {
        Self {
            allowed: false,
            reason: Some(reason),
        }
    }
}

/// Whether list entry `t` matches an upload of MIME type `mime` named `name` (both
/// normalized): an extension matches the end of the name, `type/*` any subtype, a MIME
/// type itself.
fn type_matches(t: &str, mime: &str, name: &str) -> bool {
    if t.starts_with('.') {
        name.ends_with(t)
    } else if let Some(prefix) = t.strip_suffix('*') {
        !mime.is_empty() && mime.starts_with(prefix)
    } else {
        mime == t
    }
}

/// Checks the inputs of `validateUpload` (each at most [`MAX_UPLOAD_INPUT`] characters).
pub fn check_upload_input(file_name: &str, mime_type: &str) -> DomainResult<()> {
    for (field, v) in [("fileName", file_name), ("mimeType", mime_type)] {
        if v.chars().count() > MAX_UPLOAD_INPUT {
            return Err(DomainError::bad_input(
                field,
                format!("{field} must be at most {MAX_UPLOAD_INPUT} characters"),
            ));
        }
    }
    Ok(())
}

/// Whether an upload named `file_name` of `mime_type` is accepted by `s`: a blocked type
/// (the MIME type exactly, its `type/*` wildcard, or the name's extension) refuses it; a
/// non-empty allowed list must then match by MIME type or extension. The name is compared
/// lower-cased, without trailing dots and spaces (which some file systems drop, turning
/// `x.exe.` into `x.exe`); a name with control characters is refused. MIME parameters
/// (`; charset=…`) are ignored. This is what the client declares: the check does not look
/// at the content.
pub fn check_upload(s: &SettingsRow, file_name: &str, mime_type: &str) -> UploadVerdict {
    if file_name.chars().any(char::is_control) {
        return UploadVerdict::refused("the file name holds control characters".into());
    }
    let name = file_name
        .trim_end_matches(|c: char| c == '.' || c.is_whitespace())
        .to_lowercase();
    let mime = mime_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_lowercase();
    if let Some(t) = s
        .blocked_upload_types
        .iter()
        .find(|t| type_matches(t, &mime, &name))
    {
        return UploadVerdict::refused(format!("uploads of {t} are blocked in this workspace"));
    }
    if !s.allowed_upload_types.is_empty()
        && !s
            .allowed_upload_types
            .iter()
            .any(|t| type_matches(t, &mime, &name))
    {
        let shown: Vec<&str> = s
            .allowed_upload_types
            .iter()
            .take(10)
            .map(String::as_str)
            .collect();
        let more = if s.allowed_upload_types.len() > shown.len() {
            ", …"
        } else {
            ""
        };
        return UploadVerdict::refused(format!(
            "this workspace accepts only these uploads: {}{more}",
            shown.join(", ")
        ));
    }
    UploadVerdict {
        allowed: true,
        reason: None,
    }
}

/// `validateUpload` for a member of `ws` (the caller checked membership): the settings as
/// the gate caches them, no statement when they are cached.
pub async fn validate_upload(
    services: &Services,
    ws: Uuid,
    file_name: &str,
    mime_type: &str,
) -> DomainResult<UploadVerdict> {
    check_upload_input(file_name, mime_type)?;
    let e = services.governance.enforced(ws).await?;
    Ok(check_upload(&e.row, file_name, mime_type))
}

/// The workspaces whose billing reads one request already audited.
#[derive(Debug, Default)]
pub struct AuditedReads(Mutex<HashSet<Uuid>>);

impl AuditedReads {
    /// Marks `ws`; whether it was not marked yet.
    fn first(&self, ws: Uuid) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(ws)
    }

    /// Unmarks `ws` (its event could not be recorded).
    fn undo(&self, ws: Uuid) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&ws);
    }
}

/// Records `billing.read` when `ws` audits billing reads: once per request (`seen`) and
/// workspace, naming the field read first. The policy is read from the gate's cache (filled
/// by the access check that precedes), so a workspace that does not audit billing reads
/// costs no statement. A read that cannot be audited fails.
pub async fn audit_billing_read(
    services: &Services,
    actor: &Actor,
    ws: Uuid,
    field: &str,
    seen: &AuditedReads,
) -> DomainResult<()> {
    let e = services.governance.enforced(ws).await?;
    if !e.row.audit_billing_reads || !seen.first(ws) {
        return Ok(());
    }
    let recorded = async {
        let mut conn = services.conn().await?;
        audit::record(
            &mut conn,
            Change {
                workspace: WorkspaceId(ws),
                action: "billing.read",
                target_type: "Workspace",
                target_id: WorkspaceId(ws).encode(),
                summary: json!({ "field": excerpt(field) }),
                actor,
            },
        )
        .await
    }
    .await;
    if recorded.is_err() {
        seen.undo(ws);
    }
    recorded
}
