//! Archives: what retention cleanup deletes, kept in object storage when the workspace asks
//! for it (`archiveBeforeDelete`), listed by `Workspace.archives` and put back by
//! `restoreArchive`.
//!
//! One archive is one batch of cleanup: the oldest expired rows of one category (audit
//! events or the usage ledger), as newline-delimited JSON (`row_to_json` of each row, oldest
//! first), sealed by `storage::Vault` (zstd, then AES-256-GCM under the workspace's data key)
//! at `workspaces/{ws}/{category}/{YYYY-MM}/{archive}.ndjson.zst.enc`, with its manifest —
//! category, time range, row count, sizes, SHA-256 of the plaintext and of the object — in
//! `archives` and, as plain JSON beside the object, at `….manifest.json`.
//!
//! Order of a batch, so that a crash anywhere loses nothing: read the rows; write the object
//! and its manifest file; then one transaction stores the manifest row and deletes exactly
//! the rows archived. A crash before the commit leaves the rows in place (the next cleanup
//! archives them again under a new id; the orphan object has no manifest row and is never
//! listed); after it, the rows are in the archive. One process archives a workspace at a time
//! (a session advisory lock; another skips it until the next run).
//!
//! Between two batches, cleanup pauses as long as the last batch took (at most half of the
//! database's time goes to it).
//!
//! Restore (a job of the `archives` queue) verifies the object before it trusts it — the
//! SHA-256 of the stored bytes against the manifest, the AES-GCM tag, the SHA-256 of the
//! plaintext, the row count, every row's workspace — then inserts the rows in one statement,
//! skipping rows that are there (restoring twice duplicates nothing), and holds them from
//! cleanup for [`HOLD_DAYS`]. A corrupt archive fails the job for good with the reason.
//! Restored ledger entries are history only: usage counters were never lowered by cleanup.

use std::time::Instant;

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;
use uuid::Uuid;

use super::access::Owned;
use super::audit::{self, Change};
use super::mutation::{self, Effect};
use super::{Actor, DomainError, DomainResult, Role, Services};
use crate::db::DbPool;
use crate::db::repo::archives::{self as repo, ArchiveRow};
use crate::db::repo::workspace_jobs::{self, JobRow};
use crate::ids::WorkspaceId;
use crate::storage::{OpenError, Vault};

/// The queue of restore jobs.
pub const QUEUE: &str = crate::tasks::queue::ARCHIVES;
/// The kind of a restore job (`Workspace.jobs`).
pub const RESTORE_KIND: &str = "archive.restore";
/// Attempts of a restore job (a corrupt archive is not retried).
pub const MAX_ATTEMPTS: i32 = 5;
/// Days cleanup leaves restored rows alone.
pub const HOLD_DAYS: i64 = 30;
/// Largest plaintext a restore inflates (a batch is at most `RETENTION_BATCH` rows).
pub const MAX_PLAINTEXT: usize = 1 << 30;

/// What an archive holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// `audit_events`.
    AuditEvents,
    /// `usage_events`.
    UsageEvents,
}

impl Category {
    /// Stored and GraphQL form.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::AuditEvents => "AUDIT_EVENTS",
            Category::UsageEvents => "USAGE_EVENTS",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "AUDIT_EVENTS" => Some(Category::AuditEvents),
            "USAGE_EVENTS" => Some(Category::UsageEvents),
            _ => None,
        }
    }

    /// Its live table.
    pub fn table(self) -> repo::Table {
        match self {
            Category::AuditEvents => repo::Table::AuditEvents,
            Category::UsageEvents => repo::Table::UsageEvents,
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Category::AuditEvents => "audit-events",
            Category::UsageEvents => "usage-events",
        }
    }
}

/// The object path of archive `id`.
fn object_path(ws: Uuid, category: Category, start: DateTime<Utc>, id: Uuid) -> String {
    format!(
        "workspaces/{ws}/{}/{:04}-{:02}/{id}.ndjson.zst.enc",
        category.dir(),
        start.year(),
        start.month()
    )
}

/// The path of the manifest file beside the object at `path`.
pub fn manifest_path(path: &str) -> String {
    format!(
        "{}.manifest.json",
        path.strip_suffix(".ndjson.zst.enc").unwrap_or(path)
    )
}

/// The manifest as its JSON file holds it.
fn manifest_json(a: &ArchiveRow) -> serde_json::Value {
    let t = |d: DateTime<Utc>| d.to_rfc3339_opts(SecondsFormat::Micros, true);
    json!({
        "version": 1,
        "archive": a.id,
        "workspace": a.workspace_id,
        "category": a.category,
        "format": "ndjson+zstd+aes-256-gcm",
        "object": a.path,
        "rangeStart": t(a.range_start),
        "rangeEnd": t(a.range_end),
        "rowCount": a.row_count,
        "plaintextBytes": a.plaintext_bytes,
        "objectBytes": a.object_bytes,
        "plaintextSha256": a.plaintext_sha256,
        "objectSha256": a.object_sha256,
        "createdAt": t(a.created_at),
    })
}

/// What archiving (or deleting) one category of a workspace did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Retired {
    /// Rows deleted.
    pub rows: usize,
    /// Archives written.
    pub archives: usize,
    /// Statements that deleted (each at most a batch).
    pub batches: usize,
    /// The longest delete transaction, in microseconds (row locks are held that long).
    pub longest_lock_us: u64,
}

/// Deletes the rows of `category` of `ws` created before `cutoff` (and not held by a
/// restore at `now`), oldest first, `batch` rows per transaction; with `archive`, each batch
/// is archived first (see the module docs).
#[allow(clippy::too_many_arguments)]
pub async fn retire(
    conn: &mut AsyncPgConnection,
    vault: &Vault,
    ws: Uuid,
    category: Category,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
    batch: i64,
    archive: bool,
) -> anyhow::Result<Retired> {
    let mut done = Retired::default();
    if !archive {
        loop {
            let started = Instant::now();
            let n = repo::delete_oldest(conn, category.table(), ws, cutoff, now, batch).await?;
            note_batch(&mut done, n, started);
            if (n as i64) < batch {
                return Ok(done);
            }
            yield_to_traffic(started).await;
        }
    }
    if !repo::try_lock(conn, ws).await? {
        tracing::info!(workspace.id = %ws, "another process archives this workspace; skipped");
        return Ok(done);
    }
    let result = archive_all(conn, vault, ws, category, cutoff, now, batch, &mut done).await;
    let unlocked = repo::unlock(conn, ws).await;
    result?;
    unlocked?;
    Ok(done)
}

fn note_batch(done: &mut Retired, rows: usize, started: Instant) {
    done.rows += rows;
    done.batches += 1;
    done.longest_lock_us = done
        .longest_lock_us
        .max(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
}

#[allow(clippy::too_many_arguments)]
async fn archive_all(
    conn: &mut AsyncPgConnection,
    vault: &Vault,
    ws: Uuid,
    category: Category,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
    batch: i64,
    done: &mut Retired,
) -> anyhow::Result<()> {
    let key = vault.data_key(conn, ws).await?;
    loop {
        let rows = repo::oldest(conn, category.table(), ws, cutoff, now, batch).await?;
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Ok(());
        };
        let (range_start, range_end) = (first.created_at, last.created_at);
        let full = rows.len() as i64 >= batch;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let mut text = String::with_capacity(rows.iter().map(|r| r.line.len() + 1).sum());
        for r in &rows {
            text.push_str(&r.line);
            text.push('\n');
        }
        drop(rows);
        let id = Uuid::now_v7();
        let path = object_path(ws, category, range_start, id);
        let sealed = vault.put(&key, &path, text.into_bytes()).await?;
        let manifest = ArchiveRow {
            id,
            workspace_id: ws,
            category: category.as_str().to_string(),
            path: path.clone(),
            range_start,
            range_end,
            row_count: ids.len() as i64,
            plaintext_bytes: sealed.plaintext_bytes,
            object_bytes: sealed.object_bytes,
            plaintext_sha256: sealed.plaintext_sha256,
            object_sha256: sealed.object_sha256,
            created_at: now,
            restored_at: None,
            restored_rows: None,
            held_until: None,
        };
        vault
            .put_plain(
                &manifest_path(&path),
                serde_json::to_vec_pretty(&manifest_json(&manifest))?,
            )
            .await?;
        let started = Instant::now();
        let table = category.table();
        let deleted = conn
            .transaction::<_, anyhow::Error, _>(async |tx| {
                repo::insert(tx, &manifest).await?;
                Ok(repo::delete_ids(tx, table, ws, &ids).await?)
            })
            .await?;
        note_batch(done, deleted, started);
        done.archives += 1;
        if deleted != ids.len() {
            // Rows are never deleted but by cleanup, under this lock: worth a look.
            tracing::warn!(archive = %id, archived = ids.len(), deleted, "rows vanished while being archived");
        }
        if !full {
            return Ok(());
        }
        yield_to_traffic(started).await;
    }
}

/// Pauses between two batches as long as the last one's statement took: cleanup uses at
/// most half of the database's time, so that the service's own traffic keeps its pace (a
/// backlog takes twice as long, in a daily job).
async fn yield_to_traffic(batch_started: Instant) {
    tokio::time::sleep(batch_started.elapsed()).await;
}

/// An archive of a workspace the actor manages (owners and admins); `None` alike for
/// missing archives, other workspaces' and a viewer's.
pub async fn find_readable(
    services: &Services,
    actor: &Actor,
    id: Uuid,
) -> DomainResult<Option<ArchiveRow>> {
    let mut conn = services.conn().await?;
    let access = match super::access::to(&mut conn, actor, Owned::Archive, id, "archive").await {
        Ok(a) => a,
        Err(DomainError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !access.role.is_manager() {
        return Ok(None);
    }
    Ok(repo::find(&mut conn, id).await?)
}

/// Newest-first page of a workspace's archives (the caller checked the reader).
pub async fn page(
    services: &Services,
    ws: WorkspaceId,
    category: Option<Category>,
    after: Option<Uuid>,
    limit: i64,
) -> DomainResult<Vec<ArchiveRow>> {
    let mut conn = services.conn().await?;
    Ok(repo::page(
        &mut conn,
        ws.0,
        category.map(Category::as_str),
        after,
        limit,
    )
    .await?)
}

/// The result of `restoreArchive`: the archive and the job that restores it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Restoring {
    /// The archive.
    pub archive: ArchiveRow,
    /// Its restore job.
    pub job: JobRow,
}

/// `restoreArchive` (owners): enqueues the job that verifies archive `id` and puts its rows
/// back. Requests with one idempotency key share a job; without one, each enqueues its own
/// (restoring twice is harmless). A workspace has at most `WORKSPACE_JOB_LIMIT` restores
/// queued or running: past it, a restore of an archive whose restore is queued or running is
/// that one, another is refused with `RATE_LIMITED`.
pub async fn restore(
    services: &Services,
    actor: &Actor,
    id: Uuid,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<Restoring>> {
    let job_key = match key {
        Some(k) => format!("archive-restore:{id}:key:{}:{}", actor.user_id.0, k.key),
        None => format!("archive-restore:{id}:{}", Uuid::now_v7()),
    };
    mutation::run(
        services,
        actor,
        "restoreArchive",
        key,
        &id,
        |c, _| -> Effect<'_, _> {
            Box::pin(restore_effect(
                c,
                id,
                actor.clone(),
                job_key.clone(),
                services.job_limit,
            ))
        },
    )
    .await
}

async fn restore_effect(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    actor: Actor,
    job_key: String,
    limit: i64,
) -> DomainResult<Restoring> {
    let access = super::access::to(conn, &actor, Owned::Archive, id, "archive").await?;
    access.require(|r| r == Role::Owner, "restore archives")?;
    let ws = access.workspace;
    let archive = repo::find(conn, id)
        .await?
        .ok_or(DomainError::NotFound("archive"))?;
    let payload = crate::tasks::Task::ArchiveRestore { archive: id }.payload();
    let job = match workspace_jobs::enqueue_limited(
        conn,
        Some(ws.0),
        actor.user_id.0,
        RESTORE_KIND,
        QUEUE,
        &payload,
        &job_key,
        MAX_ATTEMPTS,
        limit,
    )
    .await?
    {
        workspace_jobs::Enqueued::New(job)
        | workspace_jobs::Enqueued::Existing(job)
        | workspace_jobs::Enqueued::Coalesced(job) => job,
        workspace_jobs::Enqueued::Full(n) => {
            return Err(super::jobs::too_many("archive restore", n));
        }
    };
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "archive.restore",
            target_type: "Archive",
            target_id: crate::ids::ArchiveId(id).encode(),
            summary: json!({"category": archive.category, "rowCount": archive.row_count}),
            actor: &actor,
        },
    )
    .await?;
    let job = workspace_jobs::find(conn, &job)
        .await?
        .ok_or_else(|| DomainError::internal(anyhow::anyhow!("restore job {job} vanished")))?;
    Ok(Restoring { archive, job })
}

/// Why a restore was refused for good.
fn corrupt(archive: Uuid, why: impl std::fmt::Display) -> anyhow::Error {
    let message = format!(
        "archive {} is corrupt: {why}",
        crate::ids::ArchiveId(archive).encode()
    );
    tracing::error!("{message}");
    crate::tasks::GiveUp(message).into()
}

/// Verifies archive `id` and puts its rows back (see the module docs); the rows inserted.
pub async fn run_restore(
    pool: &DbPool,
    vault: &Vault,
    id: Uuid,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let mut conn = pool.get().await?;
    let Some(a) = repo::find(&mut conn, id).await? else {
        tracing::info!(archive = %id, "restore of an archive that is gone; dropped");
        return Ok(());
    };
    let category = Category::parse(&a.category)
        .ok_or_else(|| corrupt(id, format!("unknown category {}", a.category)))?;
    let key = vault
        .existing_key(&mut conn, a.workspace_id)
        .await?
        .ok_or_else(|| corrupt(id, "the workspace's data key is gone"))?;
    drop(conn);
    let raw = match vault.get_raw(&a.path).await {
        Ok(raw) => raw,
        Err(OpenError::Missing) => return Err(corrupt(id, "the object is missing from storage")),
        Err(e) => return Err(e.into()),
    };
    if hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&raw)) != a.object_sha256 {
        return Err(corrupt(
            id,
            "the object's SHA-256 differs from the manifest's",
        ));
    }
    let opened = match vault.open_bytes(&key, &a.path, raw, MAX_PLAINTEXT).await {
        Ok(o) => o,
        Err(OpenError::Store(e)) => return Err(e),
        Err(e) => return Err(corrupt(id, e)),
    };
    if opened.plaintext_sha256 != a.plaintext_sha256 {
        return Err(corrupt(
            id,
            "the plaintext's SHA-256 differs from the manifest's",
        ));
    }
    let text = String::from_utf8(opened.plaintext).map_err(|_| corrupt(id, "not UTF-8"))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    if lines.len() as i64 != a.row_count {
        return Err(corrupt(
            id,
            format!(
                "{} rows where the manifest says {}",
                lines.len(),
                a.row_count
            ),
        ));
    }
    let mut array = String::with_capacity(text.len() + 2);
    array.push('[');
    array.push_str(&lines.join(","));
    array.push(']');
    drop(lines);
    let mut conn = pool.get().await?;
    let table = category.table();
    let ws = a.workspace_id;
    let held = now + chrono::Duration::days(HOLD_DAYS);
    let outcome = conn
        .transaction::<_, anyhow::Error, _>(async |tx| {
            let r = repo::reimport(tx, table, ws, &array).await?;
            if r.total != a.row_count || r.own != r.total {
                return Ok(Err(format!(
                    "{} rows, {} of its workspace, where the manifest says {}",
                    r.total, r.own, a.row_count
                )));
            }
            repo::mark_restored(tx, id, now, r.inserted, held).await?;
            Ok(Ok(r.inserted))
        })
        .await?;
    match outcome {
        Ok(inserted) => {
            tracing::info!(archive = %id, inserted, "archive restored");
            Ok(())
        }
        Err(why) => Err(corrupt(id, why)),
    }
}
