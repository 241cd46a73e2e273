//! The jobs of a workspace as its owners and admins see them: what each does, its state,
//! its last error; a job that failed for good can be retried.

use diesel_async::AsyncPgConnection;
use serde_json::json;

use super::audit::{self, Change};
use super::mutation::{self, Effect};
use super::workspaces::require_role;
use super::{Actor, DomainError, DomainResult, Role, Services};
use crate::db::repo::workspace_jobs::{self as repo, JobRow};
use crate::ids::{JobId, WorkspaceId};

/// A job of a workspace the actor manages (owners and admins), or a job of no workspace the
/// actor requested (their own data export or erasure); `None` alike for missing jobs, other
/// workspaces' and people's, and a viewer's.
pub async fn find_readable(
    services: &Services,
    actor: &Actor,
    id: &JobId,
) -> DomainResult<Option<JobRow>> {
    let mut conn = services.conn().await?;
    let Some(job) = repo::find(&mut conn, &id.0).await? else {
        return Ok(None);
    };
    let Some(ws) = job.workspace_id else {
        return Ok((job.requested_by == Some(actor.user_id.0)).then_some(job));
    };
    match require_role(
        &mut conn,
        actor,
        WorkspaceId(ws),
        Role::is_manager,
        "read jobs",
    )
    .await
    {
        Ok(_) => Ok(Some(job)),
        Err(DomainError::NotFound(_) | DomainError::Forbidden(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Newest-first page of a workspace's jobs (the caller checked the reader).
pub async fn page(
    services: &Services,
    ws: WorkspaceId,
    status: Option<&str>,
    after: Option<&JobId>,
    limit: i64,
) -> DomainResult<Vec<JobRow>> {
    let mut conn = services.conn().await?;
    Ok(repo::page(&mut conn, ws.0, status, after.map(|a| a.0.as_str()), limit).await?)
}

/// Puts a job that failed for good back on its queue (owners and admins).
pub async fn retry(
    services: &Services,
    actor: &Actor,
    id: JobId,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<JobRow>> {
    mutation::run(
        services,
        actor,
        "retryJob",
        key,
        &id,
        |c, _| -> Effect<'_, _> { Box::pin(retry_effect(c, id.clone(), actor.clone())) },
    )
    .await
}

async fn retry_effect(
    conn: &mut AsyncPgConnection,
    id: JobId,
    actor: Actor,
) -> DomainResult<JobRow> {
    let job = repo::find(conn, &id.0)
        .await?
        .ok_or(DomainError::NotFound("job"))?;
    // A job of no workspace is retried by whoever requested it, and audited nowhere.
    let ws = match job.workspace_id {
        Some(ws) => Some(WorkspaceId(ws)),
        None if job.requested_by == Some(actor.user_id.0) => None,
        None => return Err(DomainError::NotFound("job")),
    };
    if let Some(ws) = ws {
        match require_role(conn, &actor, ws, Role::is_manager, "retry jobs").await {
            Err(DomainError::NotFound(_)) => return Err(DomainError::NotFound("job")),
            other => other?,
        };
    }
    if job.status != "FAILED" {
        return Err(DomainError::Conflict(format!(
            "job {} is {}: only failed jobs are retried",
            id.encode(),
            job.status
        )));
    }
    if !crate::db::repo::jobs::retry(conn, &id.0).await? {
        return Err(DomainError::Conflict(format!(
            "job {} is no longer failed",
            id.encode()
        )));
    }
    if let Some(ws) = ws {
        audit::record(
            conn,
            Change {
                workspace: ws,
                action: "job.retry",
                target_type: "Job",
                target_id: id.encode(),
                summary: json!({"kind": job.kind, "lastError": job.last_error}),
                actor: &actor,
            },
        )
        .await?;
    }
    repo::find(conn, &id.0)
        .await?
        .ok_or(DomainError::NotFound("job"))
}

/// How long a request refused for its jobs queued or running is told to wait.
pub const RETRY_AFTER_FULL_SECS: u64 = 30;

/// The refusal of one more job of `what` when `live` of them are queued or running.
pub fn too_many(what: &str, live: i64) -> DomainError {
    DomainError::RateLimited {
        message: format!(
            "{live} {what} jobs of this workspace are queued or running, the most it may have \
             at once; retry once one has finished"
        ),
        retry_after_secs: RETRY_AFTER_FULL_SECS,
    }
}
