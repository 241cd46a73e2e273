//! Data keys of object storage (`storage::Vault`): one per owner (a workspace, or a user for
//! their data export), stored wrapped by the master key.

use diesel::prelude::*;
use diesel::sql_types::{Bytea, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::cached::CachedExt;

/// Stores `wrapped` as the data key of `owner` unless it has one (two processes may race to
/// create it: the first one's key wins).
pub async fn insert_if_absent(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    wrapped: &[u8],
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO data_keys (owner_id, wrapped) VALUES ($1, $2) ON CONFLICT (owner_id) DO NOTHING",
    )
    .bind::<SqlUuid, _>(owner)
    .bind::<Bytea, _>(wrapped)
    .cached()
    .execute(conn)
    .await?;
    Ok(())
}

/// The wrapped data key of `owner`, if it has one.
pub async fn find(conn: &mut AsyncPgConnection, owner: Uuid) -> QueryResult<Option<Vec<u8>>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Bytea)]
        wrapped: Vec<u8>,
    }
    let row: Option<Row> = diesel::sql_query("SELECT wrapped FROM data_keys WHERE owner_id = $1")
        .bind::<SqlUuid, _>(owner)
        .cached()
        .get_result(conn)
        .await
        .optional()?;
    Ok(row.map(|r| r.wrapped))
}

/// Deletes the data key of `owner`; `true` when it had one.
pub async fn delete(conn: &mut AsyncPgConnection, owner: Uuid) -> QueryResult<bool> {
    let n = diesel::sql_query("DELETE FROM data_keys WHERE owner_id = $1")
        .bind::<SqlUuid, _>(owner)
        .cached()
        .execute(conn)
        .await?;
    Ok(n > 0)
}
