//! Data exports (`requestDataExport`): a JSON document of what the service holds about one
//! person, built by a job, sealed into object storage under the person's data key
//! (`storage::Vault`, at `exports/{user}/{export}.json.zst.enc`), downloadable by whoever
//! asked for it through a short-lived signed link until it expires ([`EXPORT_DAYS`]).
//!
//! What it holds depends on who asked (see `gdpr::scope_of`):
//! - the person themself: their profile (with their token's subject), every membership (with
//!   the workspace and role, deleted workspaces included), their consent history, the audit
//!   events and usage events they are the actor of, in every workspace, the notification
//!   recipient lists that name their e-mail, and their API keys' metadata (once API keys
//!   exist);
//! - an owner: the profile (as the workspace sees it: no subject), the membership in the
//!   owner's workspace, and that workspace's events, recipient lists and API keys; not the
//!   consents (they are between the person and the service) nor other workspaces.
//!
//! Events are read a page at a time and written into the document as they come; each
//! section stops at [`MAX_SECTION_ROWS`] rows and the document at [`MAX_DOCUMENT_BYTES`]
//! (`truncated` says so), so an export of a very active person stays bounded.
//!
//! Job idempotency keys: `gdpr.export:{requester}:{user}:{scope}:{minute}` (repeats within a
//! minute share one export), or `gdpr.export:key:{requester}:{client key}`.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;
use uuid::Uuid;

use super::super::audit::{self, Change};
use super::super::mutation::{self, Effect};
use super::super::{Actor, DomainError, DomainResult, Services};
use super::{Scope, consents::refuse_if_erased, enqueue, export_payload, scope_of};
use crate::db::DbPool;
use crate::db::repo::data_exports::{self as repo, Events, ExportRow, NewExport};
use crate::db::repo::erasure;
use crate::db::repo::workspace_jobs::JobRow;
use crate::ids::{DataExportId, UserId, WorkspaceId};
use crate::storage::{OpenError, Vault};

/// The kind of an export job.
pub const KIND: &str = "gdpr.export";
/// Days an export can be downloaded.
pub const EXPORT_DAYS: i64 = 7;
/// Rows of a section (audit events, usage events) an export holds at most.
pub const MAX_SECTION_ROWS: usize = 100_000;
/// Bytes of JSON an export holds at most (sections stop when it is reached).
pub const MAX_DOCUMENT_BYTES: usize = 64 << 20;
/// Rows read per statement.
const PAGE: i64 = 1_000;
/// Consent decisions an export holds at most.
const MAX_CONSENTS: i64 = 10_000;
/// Requests of one requester, person and scope within this many seconds share one export.
const BUCKET_SECS: i64 = 60;
/// Expired exports deleted after each export job (a batch).
const PURGE_BATCH: i64 = 100;

/// Input of `request`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportRequest {
    /// The person.
    pub user_id: UserId,
    /// Narrows the export to one workspace (an owner sharing several with the person names
    /// one).
    pub workspace_id: Option<WorkspaceId>,
}

/// What `request` did: the job and the export it builds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Requested {
    /// The job.
    pub job: JobRow,
    /// The export.
    pub export: ExportRow,
}

/// The object path of export `id` about `user`.
fn object_path(user: Uuid, id: Uuid) -> String {
    format!("exports/{user}/{id}.json.zst.enc")
}

/// `requestDataExport`: enqueues the job that builds an export about a person (the person
/// themself, or an owner of a workspace they belong to); the job and the export.
pub async fn request(
    services: &Services,
    actor: &Actor,
    input: ExportRequest,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<Requested>> {
    actor.gate.person_only("request data exports")?;
    let now = Utc::now();
    let job_key = match key {
        Some(k) => format!("gdpr.export:key:{}:{}", actor.user_id.0, k.key),
        None => {
            let t = now.timestamp();
            format!(
                "gdpr.export:{}:{}:{}:{}",
                actor.user_id.0,
                input.user_id.0,
                input.workspace_id.map_or("all".into(), |w| w.0.to_string()),
                t - t.rem_euclid(BUCKET_SECS)
            )
        }
    };
    mutation::run(
        services,
        actor,
        "requestDataExport",
        key,
        &input,
        |c, _| -> Effect<'_, _> {
            Box::pin(request_effect(
                c,
                actor.clone(),
                input.clone(),
                job_key.clone(),
                now,
                services.job_limit,
            ))
        },
    )
    .await
}

async fn request_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    input: ExportRequest,
    job_key: String,
    now: DateTime<Utc>,
    limit: i64,
) -> DomainResult<Requested> {
    refuse_if_erased(conn, &actor).await?;
    let user = input.user_id;
    let scope = scope_of(conn, &actor, user, input.workspace_id, "export their data").await?;
    // Shared with an erasure request's exclusive lock: one of the two comes first.
    erasure::lock_person(conn, user.0, false)
        .await?
        .ok_or(DomainError::NotFound("user"))?;
    if erasure::find(conn, user.0).await?.is_some() {
        return Err(DomainError::FailedPrecondition(
            "this person's erasure was requested: there is nothing left to export".into(),
        ));
    }
    let id = DataExportId::new();
    let (job, fresh) = enqueue(
        conn,
        &actor,
        scope,
        KIND,
        &export_payload(id.0),
        &job_key,
        Some(limit),
    )
    .await?;
    if !fresh {
        let export = repo::by_job(conn, &job.id).await?.ok_or_else(|| {
            DomainError::Conflict(
                "this idempotency key was used for an export that no longer exists; use a new key"
                    .into(),
            )
        })?;
        return Ok(Requested { job, export });
    }
    let export = repo::insert(
        conn,
        &NewExport {
            id: id.0,
            user_id: user.0,
            requested_by: actor.user_id.0,
            workspace_id: scope.workspace(),
            job_id: &job.id,
            path: &object_path(user.0, id.0),
            expires_at: now + Duration::days(EXPORT_DAYS),
        },
    )
    .await?;
    if let Scope::Workspace(ws) = scope {
        audit::record(
            conn,
            Change {
                workspace: WorkspaceId(ws),
                action: "user.export",
                target_type: "User",
                target_id: user.encode(),
                summary: json!({"dataExportId": id.encode()}),
                actor: &actor,
            },
        )
        .await?;
    }
    Ok(Requested { job, export })
}

/// An export `actor` asked for; `None` alike for a missing one and anyone else's. An
/// owner's export stays readable while they are an owner of its workspace.
pub async fn find_readable(
    services: &Services,
    actor: &Actor,
    id: DataExportId,
) -> DomainResult<Option<ExportRow>> {
    let mut conn = services.conn().await?;
    let row = repo::find_readable(&mut conn, id.0, actor.user_id.0).await?;
    if let Some(e) = &row {
        super::admit_scope(&mut conn, actor, e.workspace_id, e.user_id).await?;
    }
    Ok(row)
}

/// Newest first, at most `limit` per person: the exports about each of `users` that `actor`
/// asked for (and may still read).
pub async fn requested_about(
    services: &Services,
    actor: &Actor,
    users: &[Uuid],
    limit: i64,
) -> DomainResult<Vec<ExportRow>> {
    let mut conn = services.conn().await?;
    let rows = repo::readable_about(&mut conn, users, actor.user_id.0, limit).await?;
    for e in &rows {
        super::admit_scope(&mut conn, actor, e.workspace_id, e.user_id).await?;
    }
    Ok(rows)
}

/// A downloaded export: the JSON document and its file name.
#[derive(Debug)]
pub struct Download {
    /// `data-export-dex_….json`.
    pub filename: String,
    /// The JSON document.
    pub body: Vec<u8>,
}

/// Opens a ready, unexpired export `actor` asked for (checked again at download time);
/// `NOT_FOUND` alike for a missing one, anyone else's, one not ready or expired, and one
/// whose person was erased since (their data key is gone).
pub async fn download(
    services: &Services,
    actor: &Actor,
    id: DataExportId,
) -> DomainResult<Download> {
    let gone = || DomainError::NotFound("data export");
    let e = find_readable(services, actor, id)
        .await?
        .filter(|e| e.status == "READY" && e.expires_at > Utc::now())
        .ok_or_else(gone)?;
    let key = {
        let mut conn = services.conn().await?;
        services
            .vault
            .existing_key(&mut conn, e.user_id)
            .await
            .map_err(DomainError::internal)?
            .ok_or_else(gone)?
    };
    let opened = match services
        .vault
        .get(&key, &e.path, MAX_DOCUMENT_BYTES + (1 << 20))
        .await
    {
        Ok(o) => o,
        Err(OpenError::Missing) => return Err(gone()),
        Err(e) => {
            return Err(DomainError::internal(anyhow::anyhow!(
                "opening an export: {e}"
            )));
        }
    };
    if e.plaintext_sha256.as_deref() != Some(opened.plaintext_sha256.as_str()) {
        return Err(DomainError::internal(anyhow::anyhow!(
            "export {} does not match its digest",
            id.encode()
        )));
    }
    Ok(Download {
        filename: format!("data-export-{}.json", id.encode()),
        body: opened.plaintext,
    })
}

/// Builds, seals and records export `id` (one job). An export that is gone (its person was
/// erased) or no longer pending is left alone; one whose person's erasure was requested
/// meanwhile is not kept.
pub async fn run(pool: &DbPool, vault: &Vault, id: Uuid) -> anyhow::Result<()> {
    let mut conn = pool.get().await?;
    let Some(e) = repo::find(&mut conn, id).await? else {
        tracing::info!(data_export.id = %id, "export gone before it was built; nothing to do");
        return Ok(());
    };
    if e.completed_at.is_some() || e.status == "READY" {
        return Ok(());
    }
    if erasure::find(&mut conn, e.user_id).await?.is_some() {
        repo::mark_failed(&mut conn, id, "the person's erasure was requested").await?;
        return Ok(());
    }
    let (document, truncated) = build(&mut conn, &e).await?;
    let key = vault.data_key(&mut conn, e.user_id).await?;
    // No connection is held while the object store is written.
    drop(conn);
    let sealed = vault.put(&key, &e.path, document).await?;
    let mut conn = pool.get().await?;
    let user = e.user_id;
    let stored = conn
        .transaction::<_, diesel::result::Error, _>(async |c| {
            erasure::lock_person(c, user, false).await?;
            if erasure::find(c, user).await?.is_some() {
                return Ok(false);
            }
            repo::mark_ready(c, id, &sealed, truncated).await
        })
        .await?;
    if !stored {
        // Erased meanwhile: nothing of this export may remain, its key included (the
        // erasure may have forgotten it before `data_key` made a new one).
        vault.delete(&e.path).await?;
        if erasure::find(&mut conn, user).await?.is_some() {
            Vault::forget_key(&mut conn, user).await?;
        }
        tracing::info!(data_export.id = %id, "export dropped: its person is being erased");
    }
    purge_expired(&mut conn, vault, Utc::now()).await
}

/// Deletes a batch of expired exports (objects, then rows).
pub async fn purge_expired(
    conn: &mut AsyncPgConnection,
    vault: &Vault,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    for (id, path) in repo::expired(conn, now, PURGE_BATCH).await? {
        vault.delete(&path).await?;
        repo::delete(conn, id).await?;
    }
    Ok(())
}

/// The JSON document of export `e`, and whether a section was cut at its cap.
async fn build(conn: &mut AsyncPgConnection, e: &ExportRow) -> anyhow::Result<(Vec<u8>, bool)> {
    let scope = e.workspace_id;
    let everything = scope.is_none();
    let user = e.user_id;
    let t = |d: DateTime<Utc>| d.to_rfc3339_opts(SecondsFormat::Micros, true);
    let mut doc = Vec::with_capacity(64 * 1024);
    let header = json!({
        "id": DataExportId(e.id).encode(),
        "requestedBy": UserId(e.requested_by).encode(),
        "requestedAt": t(e.created_at),
        "generatedAt": t(Utc::now()),
        "scope": match scope {
            None => json!({"kind": "EVERYTHING"}),
            Some(ws) => json!({"kind": "WORKSPACE", "workspace": WorkspaceId(ws).encode()}),
        },
        "caps": {"sectionRows": MAX_SECTION_ROWS, "documentBytes": MAX_DOCUMENT_BYTES},
    });
    doc.extend_from_slice(b"{\"format\":\"workspaces.data-export\",\"version\":1,\"export\":");
    serde_json::to_writer(&mut doc, &header)?;
    let profile = repo::profile_doc(conn, user, everything).await?;
    let email = serde_json::from_str::<serde_json::Value>(&profile)?["email"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    field(&mut doc, "profile", &profile);
    field(
        &mut doc,
        "memberships",
        &repo::memberships_doc(conn, user, scope).await?,
    );
    if everything {
        let consents: Vec<serde_json::Value> =
            crate::db::repo::consents::history(conn, user, MAX_CONSENTS)
                .await?
                .into_iter()
                .map(|c| {
                    json!({"purpose": c.purpose, "version": c.version, "granted": c.granted,
                           "recordedAt": t(c.recorded_at), "requestId": c.request_id})
                })
                .collect();
        field(&mut doc, "consents", &serde_json::to_string(&consents)?);
    }
    let mut truncated = false;
    for (name, kind) in [
        ("auditEvents", Events::Audit),
        ("usageEvents", Events::Usage),
    ] {
        truncated |= section(conn, &mut doc, name, kind, user, scope).await?;
    }
    let recipients = repo::recipients_doc(conn, &email, scope).await?;
    field(
        &mut doc,
        "notificationRecipients",
        recipients.as_deref().unwrap_or("null"),
    );
    let keys = repo::api_keys_doc(conn, user, scope).await?;
    field(&mut doc, "apiKeys", keys.as_deref().unwrap_or("null"));
    doc.push(b'}');
    Ok((doc, truncated))
}

/// Appends `,"name":value` (`value` is JSON text).
fn field(doc: &mut Vec<u8>, name: &str, value: &str) {
    doc.extend_from_slice(b",\"");
    doc.extend_from_slice(name.as_bytes());
    doc.extend_from_slice(b"\":");
    doc.extend_from_slice(value.as_bytes());
}

/// Appends `,"name":{"items":[…],"truncated":…}` with the person's events of `kind`, a page
/// at a time; whether it stopped at a cap.
async fn section(
    conn: &mut AsyncPgConnection,
    doc: &mut Vec<u8>,
    name: &str,
    kind: Events,
    user: Uuid,
    scope: Option<Uuid>,
) -> anyhow::Result<bool> {
    doc.extend_from_slice(b",\"");
    doc.extend_from_slice(name.as_bytes());
    doc.extend_from_slice(b"\":{\"items\":[");
    let mut after = (Uuid::nil(), Uuid::nil());
    let mut rows = 0;
    let mut truncated = false;
    'pages: loop {
        let page = repo::events_page(conn, kind, user, scope, after, PAGE).await?;
        let full = page.docs.len() as i64 == PAGE;
        for item in &page.docs {
            if rows >= MAX_SECTION_ROWS || doc.len() + item.len() > MAX_DOCUMENT_BYTES {
                truncated = true;
                break 'pages;
            }
            if rows > 0 {
                doc.push(b',');
            }
            doc.extend_from_slice(item.as_bytes());
            rows += 1;
        }
        match page.last {
            Some(last) if full => after = last,
            _ => break,
        }
    }
    doc.extend_from_slice(b"],\"truncated\":");
    doc.extend_from_slice(if truncated { b"true" } else { b"false" });
    doc.push(b'}');
    Ok(truncated)
}
