//! API request counters (`api_request_counters`): the gateway's flush and the analytics
//! aggregate (`domain::api_usage`).

use chrono::NaiveDate;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Date, Integer, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::cached::CachedExt;

/// The counts of one flush, as parallel arrays: one row per group (caller, ids, day) and
/// operation, and one per group and tenant id it named.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// Group of each counter.
    pub group: Vec<i32>,
    /// Caller of each counter.
    pub user: Vec<Uuid>,
    /// UTC day of each counter.
    pub day: Vec<NaiveDate>,
    /// Operation of each counter.
    pub operation: Vec<String>,
    /// Requests of each counter.
    pub requests: Vec<i64>,
    /// Errors of each counter.
    pub errors: Vec<i64>,
    /// Group of each named id.
    pub owner_group: Vec<i32>,
    /// Kind of each named id (`ws`, `org`, `mem`, `ba`).
    pub owner_kind: Vec<&'static str>,
    /// Each named id.
    pub owner_id: Vec<Uuid>,
}

/// Adds a flush's counts, in one statement: resolves every named id to its workspace,
/// counts each group once per distinct live workspace its caller is a member of, maps the
/// operations past `max_operations` distinct ones per workspace and day to `(other)`, and
/// upserts; the counters written.
pub async fn add(
    conn: &mut AsyncPgConnection,
    batch: &Batch,
    max_operations: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        "WITH req AS (
             SELECT * FROM unnest($1::int4[], $2::uuid[], $3::date[], $4::text[], $5::int8[], $6::int8[])
                 AS r(gid, user_id, day, operation, requests, errors)),
         named AS (
             SELECT * FROM unnest($7::int4[], $8::text[], $9::uuid[]) AS n(gid, kind, id)),
         owners AS (
             SELECT DISTINCT n.gid, CASE n.kind
                     WHEN 'ws' THEN n.id
                     WHEN 'org' THEN (SELECT o.workspace_id FROM organizations o WHERE o.id = n.id)
                     WHEN 'mem' THEN (SELECT m.workspace_id FROM members m WHERE m.id = n.id)
                     WHEN 'ba' THEN (SELECT b.workspace_id FROM billing_accounts b WHERE b.id = n.id)
                 END AS workspace_id
               FROM named n),
         counted AS (
             SELECT o.workspace_id, r.day, r.operation,
                    sum(r.requests)::int8 AS requests, sum(r.errors)::int8 AS errors
               FROM owners o JOIN req r ON r.gid = o.gid
              WHERE EXISTS (SELECT 1 FROM members m JOIN workspaces w ON w.id = m.workspace_id
                             WHERE m.workspace_id = o.workspace_id AND m.user_id = r.user_id
                               AND w.deleted_at IS NULL)
              GROUP BY 1, 2, 3),
         stored AS (
             SELECT a.workspace_id, a.day, count(*) AS n
               FROM api_request_counters a
               JOIN (SELECT DISTINCT workspace_id, day FROM counted) d
                 ON d.workspace_id = a.workspace_id AND d.day = a.day
              WHERE a.operation <> '(other)'
              GROUP BY 1, 2),
         ranked AS (
             SELECT c.*, (a.operation IS NOT NULL OR c.operation = '(other)') AS kept,
                    COALESCE(s.n, 0) AS stored,
                    row_number() OVER (
                        PARTITION BY c.workspace_id, c.day, (a.operation IS NOT NULL OR c.operation = '(other)')
                        ORDER BY c.requests DESC, c.operation) AS rank
               FROM counted c
               LEFT JOIN api_request_counters a
                 ON a.workspace_id = c.workspace_id AND a.day = c.day AND a.operation = c.operation
               LEFT JOIN stored s ON s.workspace_id = c.workspace_id AND s.day = c.day)
         INSERT INTO api_request_counters AS a (workspace_id, day, operation, requests, errors)
         SELECT workspace_id, day,
                CASE WHEN kept OR stored + rank <= $10 THEN operation ELSE '(other)' END,
                sum(requests)::int8, sum(errors)::int8
           FROM ranked GROUP BY 1, 2, 3
         ON CONFLICT (workspace_id, day, operation) DO UPDATE
            SET requests = a.requests + EXCLUDED.requests, errors = a.errors + EXCLUDED.errors",
    )
    .bind::<Array<Integer>, _>(&batch.group)
    .bind::<Array<SqlUuid>, _>(&batch.user)
    .bind::<Array<Date>, _>(&batch.day)
    .bind::<Array<Text>, _>(&batch.operation)
    .bind::<Array<BigInt>, _>(&batch.requests)
    .bind::<Array<BigInt>, _>(&batch.errors)
    .bind::<Array<Integer>, _>(&batch.owner_group)
    .bind::<Array<Text>, _>(&batch.owner_kind)
    .bind::<Array<SqlUuid>, _>(&batch.owner_id)
    .bind::<BigInt, _>(max_operations)
    .cached()
    .execute(conn)
    .await
}

/// Requests of one operation on one day.
#[derive(Debug, Clone, QueryableByName)]
pub struct DayRow {
    /// The UTC day.
    #[diesel(sql_type = Date)]
    pub day: NaiveDate,
    /// Operation.
    #[diesel(sql_type = Text)]
    pub operation: String,
    /// Requests.
    #[diesel(sql_type = BigInt)]
    pub requests: i64,
    /// Requests answered with errors.
    #[diesel(sql_type = BigInt)]
    pub errors: i64,
}

/// The counters of `ws` for the UTC days `[from, until)`, by day then operation (in byte
/// order, whatever the database's collation).
pub async fn per_day(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    from: NaiveDate,
    until: NaiveDate,
) -> QueryResult<Vec<DayRow>> {
    diesel::sql_query(
        "SELECT day, operation, requests, errors FROM api_request_counters
          WHERE workspace_id = $1 AND day >= $2 AND day < $3
          ORDER BY day, operation COLLATE \"C\"",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Date, _>(from)
    .bind::<Date, _>(until)
    .load(conn)
    .await
}
