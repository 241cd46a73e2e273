//! Invitations to workspaces (`domain::invitations`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::Page;
use crate::db::cached::CachedExt;

/// A row of `invitations`.
#[derive(Debug, Clone, QueryableByName, serde::Serialize, serde::Deserialize)]
pub struct InvitationRow {
    /// Primary key.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// Workspace.
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// The invitee's address, normalized.
    #[diesel(sql_type = Text)]
    pub email: String,
    /// `OWNER`, `ADMIN` or `VIEWER`.
    #[diesel(sql_type = Text)]
    pub role: String,
    /// Who invited.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub invited_by: Option<Uuid>,
    /// E-mails sent.
    #[diesel(sql_type = Integer)]
    pub sends: i32,
    /// When the last e-mail was sent.
    #[diesel(sql_type = Timestamptz)]
    pub last_sent_at: DateTime<Utc>,
    /// Created.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// Past this it can no longer be accepted.
    #[diesel(sql_type = Timestamptz)]
    pub expires_at: DateTime<Utc>,
}

/// An invitation as its invitee sees it: with the workspace's name.
#[derive(Debug, Clone, QueryableByName, serde::Serialize, serde::Deserialize)]
pub struct ReceivedRow {
    /// The invitation.
    #[diesel(embed)]
    pub invitation: InvitationRow,
    /// The workspace's name.
    #[diesel(sql_type = Text)]
    pub workspace_name: String,
}

const COLUMNS: &str = "i.id, i.workspace_id, i.email, i.role, i.invited_by, i.sends, i.last_sent_at, i.created_at, i.expires_at";

/// Invites `email` to `ws` as `role`, live for `ttl_secs`; `None` when a live invitation of
/// that address to `ws` exists (an expired one is replaced).
pub async fn insert(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    email: &str,
    role: &str,
    invited_by: Uuid,
    ttl_secs: i64,
) -> QueryResult<Option<InvitationRow>> {
    diesel::sql_query(
        "INSERT INTO invitations AS i (id, workspace_id, email, role, invited_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
         ON CONFLICT (workspace_id, email) DO UPDATE
            SET id = EXCLUDED.id, role = EXCLUDED.role, invited_by = EXCLUDED.invited_by,
                sends = 1, last_sent_at = now(), created_at = now(),
                expires_at = EXCLUDED.expires_at
          WHERE i.expires_at <= now()
         RETURNING i.*",
    )
    .bind::<SqlUuid, _>(Uuid::now_v7())
    .bind::<SqlUuid, _>(ws)
    .bind::<Text, _>(email)
    .bind::<Text, _>(role)
    .bind::<SqlUuid, _>(invited_by)
    .bind::<BigInt, _>(ttl_secs)
    .cached()
    .get_result(conn)
    .await
    .optional()
}

/// Live invitations of `ws` (they count as members against the caps).
pub async fn count_live(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let r: N = diesel::sql_query(
        "SELECT count(*) AS n FROM invitations WHERE workspace_id = $1 AND expires_at > now()",
    )
    .bind::<SqlUuid, _>(ws)
    .cached()
    .get_result(conn)
    .await?;
    Ok(r.n)
}

/// A live invitation of a live workspace that `user` is a member of, with the caller's role
/// there, locked: one statement, so that another workspace's invitation costs exactly what a
/// missing one costs.
pub async fn lock_visible(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    user: Uuid,
) -> QueryResult<Option<(InvitationRow, String)>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(embed)]
        i: InvitationRow,
        #[diesel(sql_type = Text)]
        my_role: String,
    }
    let sql = format!(
        "SELECT {COLUMNS}, me.role AS my_role FROM invitations i
           JOIN workspaces w ON w.id = i.workspace_id AND w.deleted_at IS NULL
           JOIN members me ON me.workspace_id = i.workspace_id AND me.user_id = $2
          WHERE i.id = $1 AND i.expires_at > now()
            FOR UPDATE OF i"
    );
    let r: Option<Row> = diesel::sql_query(sql)
        .bind::<SqlUuid, _>(id)
        .bind::<SqlUuid, _>(user)
        .get_result(conn)
        .await
        .optional()?;
    Ok(r.map(|r| (r.i, r.my_role)))
}

/// A live invitation of a live workspace addressed to `email`, locked (the invitee's view:
/// anyone else's invitation costs exactly what a missing one costs).
pub async fn lock_addressed(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    email: &str,
) -> QueryResult<Option<InvitationRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM invitations i
           JOIN workspaces w ON w.id = i.workspace_id AND w.deleted_at IS NULL
          WHERE i.id = $1 AND i.email = $2 AND i.expires_at > now()
            FOR UPDATE OF i"
    );
    diesel::sql_query(sql)
        .bind::<SqlUuid, _>(id)
        .bind::<Text, _>(email)
        .get_result(conn)
        .await
        .optional()
}

/// The live invitations addressed to `email`, newest first (at most `limit`).
pub async fn received(
    conn: &mut AsyncPgConnection,
    email: &str,
    limit: i64,
) -> QueryResult<Vec<ReceivedRow>> {
    let sql = format!(
        "SELECT {COLUMNS}, w.name AS workspace_name FROM invitations i
           JOIN workspaces w ON w.id = i.workspace_id AND w.deleted_at IS NULL
          WHERE i.email = $1 AND i.expires_at > now()
          ORDER BY i.id DESC LIMIT $2"
    );
    diesel::sql_query(sql)
        .bind::<Text, _>(email)
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await
}

/// Whether invitation `id` is still live (a pending e-mail is sent only then), with its
/// address and workspace's name.
pub async fn live(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<ReceivedRow>> {
    let sql = format!(
        "SELECT {COLUMNS}, w.name AS workspace_name FROM invitations i
           JOIN workspaces w ON w.id = i.workspace_id AND w.deleted_at IS NULL
          WHERE i.id = $1 AND i.expires_at > now()"
    );
    diesel::sql_query(sql)
        .bind::<SqlUuid, _>(id)
        .get_result(conn)
        .await
        .optional()
}

/// Pages of several workspaces' live invitations (for the DataLoader-free list of one
/// workspace): newest first, after `page.after`.
pub async fn page(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    page: Page,
) -> QueryResult<Vec<InvitationRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM invitations i
          WHERE i.workspace_id = $1 AND i.expires_at > now() AND ($2::uuid IS NULL OR i.id < $2)
          ORDER BY i.id DESC LIMIT $3"
    );
    diesel::sql_query(sql)
        .bind::<SqlUuid, _>(ws)
        .bind::<Nullable<SqlUuid>, _>(page.after)
        .bind::<BigInt, _>(page.limit)
        .load(conn)
        .await
}

/// Counts one more e-mail and makes the invitation live for `ttl_secs` from now.
pub async fn resent(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    ttl_secs: i64,
) -> QueryResult<InvitationRow> {
    diesel::sql_query(
        "UPDATE invitations i SET sends = sends + 1, last_sent_at = now(),
                expires_at = now() + make_interval(secs => $2)
          WHERE i.id = $1 RETURNING i.*",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<BigInt, _>(ttl_secs)
    .get_result(conn)
    .await
}

/// Deletes an invitation (accepted, declined or revoked).
pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<()> {
    diesel::sql_query("DELETE FROM invitations WHERE id = $1")
        .bind::<SqlUuid, _>(id)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Deletes up to `batch` expired invitations; how many.
pub async fn delete_expired(conn: &mut AsyncPgConnection, batch: i64) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM invitations WHERE id IN (
            SELECT id FROM invitations WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED)",
    )
    .bind::<BigInt, _>(batch)
    .execute(conn)
    .await
}

/// Deletes every invitation addressed to `email` (its owner's erasure).
pub async fn delete_addressed_to(conn: &mut AsyncPgConnection, email: &str) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM invitations WHERE lower(email) = lower($1)")
        .bind::<Text, _>(email)
        .execute(conn)
        .await
}
