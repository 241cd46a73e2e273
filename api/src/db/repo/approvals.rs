//! Approval requests: sensitive mutations held for a second person's approval
//! (`domain::governance::approvals`).

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::Page;
use crate::db::cached::CachedExt;

/// A row of `approval_requests`.
#[derive(Debug, Clone, QueryableByName, serde::Serialize, serde::Deserialize)]
pub struct ApprovalRow {
    /// Primary key.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// Workspace.
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// `ApprovalAction` (stored form).
    #[diesel(sql_type = Text)]
    pub action: String,
    /// The held mutation's name (e.g. `deleteOrganization`).
    #[diesel(sql_type = Text)]
    pub operation: String,
    /// Its validated input, as the executor reads it.
    #[diesel(sql_type = Jsonb)]
    pub input: serde_json::Value,
    /// Kind of the object it acts on.
    #[diesel(sql_type = Nullable<Text>)]
    pub target_type: Option<String>,
    /// External id of the object it acts on.
    #[diesel(sql_type = Nullable<Text>)]
    pub target_id: Option<String>,
    /// `PENDING`, `APPROVED`, `REJECTED`, `EXPIRED` or `FAILED`.
    #[diesel(sql_type = Text)]
    pub status: String,
    /// Who asked.
    #[diesel(sql_type = SqlUuid)]
    pub requested_by: Uuid,
    /// Who approved or rejected.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub decided_by: Option<Uuid>,
    /// Why it was rejected, or why the execution failed.
    #[diesel(sql_type = Nullable<Text>)]
    pub reason: Option<String>,
    /// What the execution returned.
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub result: Option<serde_json::Value>,
    /// When it was asked.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// When it expires if nobody decides.
    #[diesel(sql_type = Timestamptz)]
    pub expires_at: DateTime<Utc>,
    /// When it was decided.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub decided_at: Option<DateTime<Utc>>,
}

/// What a new request holds.
pub struct NewApproval<'a> {
    /// Primary key.
    pub id: Uuid,
    /// Workspace.
    pub workspace_id: Uuid,
    /// Action (stored form).
    pub action: &'a str,
    /// The held mutation's name.
    pub operation: &'a str,
    /// Its validated input.
    pub input: &'a serde_json::Value,
    /// Kind of the object it acts on.
    pub target_type: &'a str,
    /// External id of that object.
    pub target_id: &'a str,
    /// Who asks.
    pub requested_by: Uuid,
    /// Hours until it expires.
    pub expiry_hours: i32,
}

/// Stores a pending request.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    new: &NewApproval<'_>,
) -> QueryResult<ApprovalRow> {
    diesel::sql_query(
        "INSERT INTO approval_requests
                (id, workspace_id, action, operation, input, target_type, target_id,
                 requested_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(hours => $9))
         RETURNING *",
    )
    .bind::<SqlUuid, _>(new.id)
    .bind::<SqlUuid, _>(new.workspace_id)
    .bind::<Text, _>(new.action)
    .bind::<Text, _>(new.operation)
    .bind::<Jsonb, _>(new.input)
    .bind::<Text, _>(new.target_type)
    .bind::<Text, _>(new.target_id)
    .bind::<SqlUuid, _>(new.requested_by)
    .bind::<Integer, _>(new.expiry_hours)
    .cached()
    .get_result(conn)
    .await
}

/// A request by id.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<ApprovalRow>> {
    diesel::sql_query("SELECT * FROM approval_requests WHERE id = $1")
        .bind::<SqlUuid, _>(id)
        .cached()
        .get_result(conn)
        .await
        .optional()
}

/// A request by id, locked for its decision (waits at most `DATABASE_LOCK_TIMEOUT_MS` for
/// a concurrent decision).
pub async fn lock(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<ApprovalRow>> {
    diesel::sql_query("SELECT * FROM approval_requests WHERE id = $1 FOR UPDATE")
        .bind::<SqlUuid, _>(id)
        .cached()
        .get_result(conn)
        .await
        .optional()
}

/// A request that `user` may read (an owner or admin of its live workspace), by id: one
/// statement, so that another workspace's request, or one a viewer may not read, costs
/// exactly what a missing one costs.
pub async fn find_visible(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    user: Uuid,
) -> QueryResult<Option<ApprovalRow>> {
    diesel::sql_query(
        "SELECT r.* FROM approval_requests r
           JOIN members m ON m.workspace_id = r.workspace_id AND m.user_id = $2
                         AND m.role IN ('OWNER', 'ADMIN')
           JOIN workspaces w ON w.id = r.workspace_id AND w.deleted_at IS NULL
          WHERE r.id = $1",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(user)
    .cached()
    .get_result(conn)
    .await
    .optional()
}

/// Records the decision of a locked pending request: its new status, who decided (none
/// for an expiry), why, and what the execution returned.
pub async fn decide(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    status: &str,
    decided_by: Option<Uuid>,
    reason: Option<&str>,
    result: Option<&serde_json::Value>,
) -> QueryResult<ApprovalRow> {
    diesel::sql_query(
        "UPDATE approval_requests
            SET status = $2, decided_by = $3, reason = $4, result = $5,
                decided_at = CASE WHEN $2 = 'EXPIRED' THEN expires_at ELSE now() END
          WHERE id = $1
         RETURNING *",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(status)
    .bind::<Nullable<SqlUuid>, _>(decided_by)
    .bind::<Nullable<Text>, _>(reason)
    .bind::<Nullable<Jsonb>, _>(result)
    .cached()
    .get_result(conn)
    .await
}

/// A workspace's requests, newest first, of one status (`PENDING` and `EXPIRED` as the API
/// shows them: a pending request past its expiry is expired) or all.
pub async fn page(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    status: Option<&str>,
    page: Page,
) -> QueryResult<Vec<ApprovalRow>> {
    diesel::sql_query(
        "SELECT * FROM approval_requests
          WHERE workspace_id = $1 AND ($2::uuid IS NULL OR id < $2)
            AND CASE $3::text
                  WHEN 'PENDING' THEN status = 'PENDING' AND expires_at > now()
                  WHEN 'EXPIRED' THEN status = 'EXPIRED'
                                   OR (status = 'PENDING' AND expires_at <= now())
                  ELSE $3::text IS NULL OR status = $3::text
                END
          ORDER BY id DESC
          LIMIT $4",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Nullable<SqlUuid>, _>(page.after)
    .bind::<Nullable<Text>, _>(status)
    .bind::<BigInt, _>(page.limit)
    .cached()
    .load(conn)
    .await
}

/// Marks up to `batch` pending requests past their expiry `EXPIRED` (skipping any being
/// decided right now) and returns them.
pub async fn expire_due(conn: &mut AsyncPgConnection, batch: i64) -> QueryResult<Vec<ApprovalRow>> {
    diesel::sql_query(
        "UPDATE approval_requests SET status = 'EXPIRED', decided_at = expires_at
          WHERE id IN (SELECT id FROM approval_requests
                        WHERE status = 'PENDING' AND expires_at <= now()
                        ORDER BY expires_at LIMIT $1
                        FOR UPDATE SKIP LOCKED)
         RETURNING *",
    )
    .bind::<BigInt, _>(batch)
    .cached()
    .load(conn)
    .await
}

/// Marks an approved request `FAILED` with `reason`: its execution's Stripe call was
/// refused after the approval committed.
pub async fn fail(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    reason: &str,
) -> QueryResult<Option<ApprovalRow>> {
    diesel::sql_query(
        "UPDATE approval_requests SET status = 'FAILED', reason = $2
          WHERE id = $1 AND status = 'APPROVED'
         RETURNING *",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(reason)
    .cached()
    .get_result(conn)
    .await
    .optional()
}
