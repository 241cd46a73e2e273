//! Archives of a workspace (read: owners and admins; restore: owners).

use async_graphql::connection::Connection;
use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::jobs::Job;
use super::pagination;
use super::replay::{self, Replayable};
use super::{error, rc};
use crate::db::repo::archives::ArchiveRow;
use crate::domain::{self, archives};
use crate::ids::{ArchiveId, WorkspaceId};

/// What an archive holds.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum ArchiveCategory {
    /// Audit events.
    AuditEvents,
    /// Usage ledger entries.
    UsageEvents,
}

impl From<ArchiveCategory> for archives::Category {
    fn from(c: ArchiveCategory) -> Self {
        match c {
            ArchiveCategory::AuditEvents => archives::Category::AuditEvents,
            ArchiveCategory::UsageEvents => archives::Category::UsageEvents,
        }
    }
}

impl ArchiveCategory {
    fn of(s: &str) -> Self {
        match archives::Category::parse(s) {
            Some(archives::Category::UsageEvents) => Self::UsageEvents,
            _ => Self::AuditEvents,
        }
    }
}

/// Rows retention cleanup deleted, kept in object storage: compressed newline-delimited
/// JSON, encrypted under the workspace's data key, with this manifest.
pub struct Archive(pub ArchiveRow);

crate::object! {
    #[Object(name = "Archive")]
    /// Rows retention cleanup deleted, kept in object storage: compressed newline-delimited
    /// JSON, encrypted under the workspace's data key, with this manifest.
    impl Archive {
        row: ArchiveRow;
        fields {
            /// What it holds.
            category: ArchiveCategory = ArchiveCategory::of(&row.category),
            /// Creation time of its oldest row.
            range_start: DateTime<Utc> = row.range_start,
            /// Creation time of its newest row.
            range_end: DateTime<Utc> = row.range_end,
            /// Rows.
            row_count: i64 = row.row_count,
            /// Bytes of the rows as newline-delimited JSON.
            plaintext_bytes: i64 = row.plaintext_bytes,
            /// Bytes of the stored (compressed, encrypted) object.
            object_bytes: i64 = row.object_bytes,
            /// SHA-256 of the newline-delimited JSON, hex.
            plaintext_sha256: &str = &row.plaintext_sha256,
            /// SHA-256 of the stored object, hex.
            object_sha256: &str = &row.object_sha256,
            /// When it was written.
            created_at: DateTime<Utc> = row.created_at,
            /// Its last restore.
            restored_at: Option<DateTime<Utc>> = row.restored_at,
            /// Rows its last restore put back (rows still there are skipped).
            restored_rows: Option<i64> = row.restored_rows,
            /// Until when cleanup leaves its restored rows alone.
            held_until: Option<DateTime<Utc>> = row.held_until,
        }
        resolvers {
    /// Opaque id (`arc_…`).
    async fn id(&self) -> ID {
        ID(ArchiveId(self.0.id).encode())
    }
        }
    }
}

/// Newest-first page of a workspace's archives (owners and admins; `FORBIDDEN` otherwise).
pub async fn archives_of(
    ctx: &Context<'_>,
    ws: uuid::Uuid,
    first: Option<i32>,
    after: Option<String>,
    category: Option<ArchiveCategory>,
) -> Result<Connection<String, Archive>> {
    super::billing::may_manage(ctx, ws, "read archives").await?;
    let rc = rc(ctx);
    let page = pagination::page(first, after.as_deref())?;
    let rows = domain::archives::page(
        &rc.services,
        WorkspaceId(ws),
        category.map(Into::into),
        page.after,
        page.limit,
    )
    .await
    .map_err(|e| rc.err(e))?;
    Ok(pagination::connection(rows, page, |r| r.id, Archive))
}

/// Archive queries.
#[derive(Default)]
pub struct ArchiveQuery;

#[Object]
impl ArchiveQuery {
    /// An archive of a workspace you manage; null for any other id.
    async fn archive(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Archive>> {
        let rc = rc(ctx);
        let Some(id) = ArchiveId::decode(&id) else {
            return Ok(None);
        };
        let a = domain::archives::find_readable(&rc.services, &rc.actor, id.0)
            .await
            .map_err(|e| rc.err(e))?;
        Ok(a.map(Archive))
    }
}

/// Input of `restoreArchive`.
#[derive(InputObject)]
pub struct RestoreArchiveInput {
    /// The archive.
    pub archive_id: ID,
    /// Makes the mutation safe to retry (requests with one key share one job).
    pub idempotency_key: Option<String>,
}

/// Result of `restoreArchive`.
#[derive(SimpleObject)]
pub struct RestoreArchivePayload {
    /// The archive.
    pub archive: Archive,
    /// The job that verifies it and puts its rows back.
    pub job: Job,
}

/// Archive mutations.
#[derive(Default)]
pub struct ArchiveMutation;

#[Object]
impl ArchiveMutation {
    /// Verifies an archive (hashes, encryption tag, row count) and puts its rows back into
    /// the live tables, skipping rows that are there, in a job (owners). Restored rows are
    /// kept from cleanup for 30 days. A corrupt archive fails the job with the reason.
    async fn restore_archive(
        &self,
        ctx: &Context<'_>,
        input: RestoreArchiveInput,
    ) -> Result<Replayable<RestoreArchivePayload>> {
        let id = ArchiveId::decode(&input.archive_id).ok_or_else(|| error::not_found("archive"))?;
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::archives::restore(s, a, id.0, k).await,
            |r| Some(r.archive.workspace_id),
            |r| RestoreArchivePayload {
                archive: Archive(r.archive),
                job: Job(r.job),
            },
        )
        .await
    }
}
