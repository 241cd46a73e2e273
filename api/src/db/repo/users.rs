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

/// Turns the pending (invited) user with this e-mail into the signed-in user `subject`.
pub async fn claim_pending(
    conn: &mut AsyncPgConnection,
    subject: &str,
    email: &str,
    name: Option<&str>,
) -> QueryResult<Option<UserRow>> {
    diesel::sql_query(
        "UPDATE users SET subject = $1, name = COALESCE($3, name), email_verified = true, updated_at = now()
          WHERE lower(email) = lower($2) AND subject IS NULL AND NOT service_account
         RETURNING *",
    )
    .bind::<diesel::sql_types::Text, _>(subject)
    .bind::<diesel::sql_types::Text, _>(email)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(name)
    .get_result::<UserRow>(conn)
    .await
    .optional()
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

/// Moves the memberships of the pending user with this e-mail to `user` and deletes the
/// pending user (memberships in workspaces `user` already belongs to are dropped).
pub async fn merge_pending_into(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    email: &str,
) -> QueryResult<()> {
    let pending: Option<Uuid> = users::table
        .filter(users::subject.is_null())
        .filter(users::service_account.eq(false))
        .filter(
            diesel::dsl::sql::<diesel::sql_types::Bool>("lower(email) = lower(")
                .bind::<diesel::sql_types::Text, _>(email)
                .sql(")"),
        )
        .select(users::id)
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let Some(pending) = pending else {
        return Ok(());
    };
    diesel::sql_query(
        "UPDATE members SET user_id = $1, updated_at = now()
          WHERE user_id = $2 AND workspace_id NOT IN (SELECT workspace_id FROM members WHERE user_id = $1)",
    )
    .bind::<diesel::sql_types::Uuid, _>(user)
    .bind::<diesel::sql_types::Uuid, _>(pending)
    .cached()
    .execute(conn)
    .await?;
    diesel::delete(users::table.find(pending))
        .execute(conn)
        .await?;
    Ok(())
}

/// The user an invitation to `email` should point to: a signed-in user with that verified
/// e-mail, else the pending placeholder for it (created if needed).
pub async fn find_or_create_invitee(
    conn: &mut AsyncPgConnection,
    email: &str,
) -> QueryResult<UserRow> {
    let existing: Option<UserRow> = users::table
        .filter(
            diesel::dsl::sql::<diesel::sql_types::Bool>("lower(email) = lower(")
                .bind::<diesel::sql_types::Text, _>(email)
                .sql(")"),
        )
        .filter(users::subject.is_null().or(users::email_verified.eq(true)))
        .filter(users::service_account.eq(false))
        .order((users::subject.is_null().asc(), users::updated_at.desc()))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()?;
    if let Some(u) = existing {
        return Ok(u);
    }
    diesel::sql_query(
        "INSERT INTO users (id, subject, email, email_verified) VALUES ($1, NULL, $2, false)
         ON CONFLICT (lower(email)) WHERE subject IS NULL DO UPDATE SET updated_at = users.updated_at
         RETURNING *",
    )
    .bind::<diesel::sql_types::Uuid, _>(Uuid::now_v7())
    .bind::<diesel::sql_types::Text, _>(email)
    .cached()
    .get_result(conn)
    .await
}
