//! Users.

use crate::db::cached::CachedExt;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::models::UserRow;
use crate::db::schema::users;

/// The user signed in with `subject` (never an API key's service account).
pub async fn find_by_subject(
    conn: &mut AsyncPgConnection,
    subject: &str,
) -> QueryResult<Option<UserRow>> {
    users::table
        .filter(users::subject.eq(subject))
        .filter(users::service_account.eq(false))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Users by id, in any order.
pub async fn find_many(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<UserRow>> {
    users::table
        .filter(users::id.eq_any(ids))
        .select(UserRow::as_select())
        .load(conn)
        .await
}

/// Updates the profile of an existing user from fresh token claims.
pub async fn update_profile(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    email: &str,
    name: Option<&str>,
    email_verified: bool,
) -> QueryResult<UserRow> {
    diesel::update(users::table.find(id))
        .set((
            users::email.eq(email),
            users::name.eq(name),
            users::email_verified.eq(email_verified),
            users::updated_at.eq(diesel::dsl::now),
        ))
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
}

/// Inserts a signed-in user, or returns the one a concurrent request just inserted.
pub async fn insert_signed_in(
    conn: &mut AsyncPgConnection,
    subject: &str,
    email: &str,
    name: Option<&str>,
    email_verified: bool,
) -> QueryResult<UserRow> {
    diesel::insert_into(users::table)
        .values((
            users::id.eq(Uuid::now_v7()),
            users::subject.eq(subject),
            users::email.eq(email),
            users::name.eq(name),
            users::email_verified.eq(email_verified),
        ))
        .on_conflict(users::subject)
        .do_update()
        .set(users::updated_at.eq(diesel::dsl::now))
        .returning(UserRow::as_returning())
        .cached()
        .get_result(conn)
        .await
}
