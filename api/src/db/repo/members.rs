//! Memberships.

use crate::db::cached::CachedExt;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::Page;
use crate::db::models::MemberRow;
use crate::db::schema::{members, users, workspaces};

/// The role of `user` in the live workspace `ws`.
pub async fn role_of(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    user: Uuid,
) -> QueryResult<Option<String>> {
    members::table
        .inner_join(workspaces::table)
        .filter(members::workspace_id.eq(ws))
        .filter(members::user_id.eq(user))
        .filter(workspaces::deleted_at.is_null())
        .select(members::role)
        .first(conn)
        .await
        .optional()
}

/// A person's membership of a live workspace, by id (an API key's is managed through the
/// key: `None`).
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<MemberRow>> {
    members::table
        .inner_join(workspaces::table)
        .inner_join(users::table.on(users::id.eq(members::user_id)))
        .filter(members::id.eq(id))
        .filter(workspaces::deleted_at.is_null())
        .filter(users::service_account.eq(false))
        .select(MemberRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A person's membership of a live workspace that `user` belongs to: one statement, so that
/// a membership of another workspace costs exactly what a missing one costs.
pub async fn find_visible(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    user: Uuid,
) -> QueryResult<Option<MemberRow>> {
    diesel::sql_query(
        "SELECT m.* FROM members m
           JOIN workspaces w ON w.id = m.workspace_id AND w.deleted_at IS NULL
           JOIN users u ON u.id = m.user_id AND NOT u.service_account
           JOIN members me ON me.workspace_id = m.workspace_id AND me.user_id = $2
          WHERE m.id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<diesel::sql_types::Uuid, _>(user)
    .cached()
    .get_result(conn)
    .await
    .optional()
}

/// The membership of `user` in `ws`.
pub async fn find_by_user(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    user: Uuid,
) -> QueryResult<Option<MemberRow>> {
    members::table
        .filter(members::workspace_id.eq(ws))
        .filter(members::user_id.eq(user))
        .select(MemberRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Members of `ws`: people, pending invitations included (API keys' service accounts are
/// not members in this sense).
pub async fn count(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<i64> {
    members::table
        .inner_join(users::table.on(users::id.eq(members::user_id)))
        .filter(members::workspace_id.eq(ws))
        .filter(users::service_account.eq(false))
        .count()
        .get_result(conn)
        .await
}

/// Owners of `ws` who are people (an OWNER API key never counts as an owner).
pub async fn count_owners(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<i64> {
    members::table
        .inner_join(users::table.on(users::id.eq(members::user_id)))
        .filter(members::workspace_id.eq(ws))
        .filter(users::service_account.eq(false))
        .filter(members::role.eq("OWNER"))
        .count()
        .get_result(conn)
        .await
}

/// Adds a membership.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    user: Uuid,
    role: &str,
    invited_by: Option<Uuid>,
) -> QueryResult<MemberRow> {
    diesel::insert_into(members::table)
        .values((
            members::id.eq(Uuid::now_v7()),
            members::workspace_id.eq(ws),
            members::user_id.eq(user),
            members::role.eq(role),
            members::invited_by.eq(invited_by),
        ))
        .returning(MemberRow::as_returning())
        .get_result(conn)
        .await
}

/// Changes a role.
pub async fn update_role(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    role: &str,
) -> QueryResult<MemberRow> {
    diesel::update(members::table.find(id))
        .set((
            members::role.eq(role),
            members::updated_at.eq(diesel::dsl::now),
        ))
        .returning(MemberRow::as_returning())
        .get_result(conn)
        .await
}

/// Removes a membership.
pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<()> {
    diesel::delete(members::table.find(id))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Pages of several workspaces' members in one statement (for the DataLoader): up to
/// `page.limit` members per workspace, oldest first, after `page.after`. People only: API
/// keys' service accounts are listed as keys.
pub async fn pages_for_workspaces(
    conn: &mut AsyncPgConnection,
    ws_ids: &[Uuid],
    page: Page,
) -> QueryResult<Vec<MemberRow>> {
    diesel::sql_query(
        "SELECT m.* FROM unnest($1::uuid[]) AS w(id)
         CROSS JOIN LATERAL (
            SELECT x.* FROM members x
              JOIN users u ON u.id = x.user_id AND NOT u.service_account
             WHERE x.workspace_id = w.id AND ($2::uuid IS NULL OR x.id > $2)
             ORDER BY x.id LIMIT $3
         ) m",
    )
    .bind::<Array<SqlUuid>, _>(ws_ids)
    .bind::<Nullable<SqlUuid>, _>(page.after)
    .bind::<BigInt, _>(page.limit)
    .cached()
    .load(conn)
    .await
}

/// Whether a person with the (normalized) address `email` is a member of `ws`.
pub async fn is_member_by_email(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    email: &str,
) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        members::table
            .inner_join(users::table.on(users::id.eq(members::user_id)))
            .filter(members::workspace_id.eq(ws))
            .filter(users::service_account.eq(false))
            .filter(users::email.eq(email)),
    ))
    .get_result(conn)
    .await
}
