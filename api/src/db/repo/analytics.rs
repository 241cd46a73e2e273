//! Analytics snapshots (`analytics_snapshots`) and the set-based aggregates they are made of.
//! Every aggregate returns a handful of rows (one per role, per resource and day, ...),
//! whatever the number of events behind it: the database does the counting.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Date, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::workspace_jobs::STATUS_SQL;

/// A stored snapshot.
#[derive(Debug, Clone, QueryableByName)]
pub struct SnapshotRow {
    /// Workspace.
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// First instant of the month it covers.
    #[diesel(sql_type = Timestamptz)]
    pub period_start: DateTime<Utc>,
    /// When its computation started.
    #[diesel(sql_type = Timestamptz)]
    pub generated_at: DateTime<Utc>,
    /// The snapshot (`domain::analytics::Snapshot`).
    #[diesel(sql_type = Jsonb)]
    pub data: serde_json::Value,
}

/// The snapshot of `ws` for the month starting at `period_start`.
pub async fn find(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    period_start: DateTime<Utc>,
) -> QueryResult<Option<SnapshotRow>> {
    diesel::sql_query(
        "SELECT workspace_id, period_start, generated_at, data FROM analytics_snapshots
          WHERE workspace_id = $1 AND period_start = $2",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Timestamptz, _>(period_start)
    .get_result(conn)
    .await
    .optional()
}

/// Stores a snapshot, unless one computed later is stored already (two runs racing keep
/// the newer); whether it was stored.
pub async fn upsert(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    period_start: DateTime<Utc>,
    generated_at: DateTime<Utc>,
    data: &serde_json::Value,
) -> QueryResult<bool> {
    let n = diesel::sql_query(
        "INSERT INTO analytics_snapshots (workspace_id, period_start, generated_at, data)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (workspace_id, period_start) DO UPDATE
            SET generated_at = EXCLUDED.generated_at, data = EXCLUDED.data
          WHERE analytics_snapshots.generated_at <= EXCLUDED.generated_at",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Timestamptz, _>(period_start)
    .bind::<Timestamptz, _>(generated_at)
    .bind::<Jsonb, _>(data)
    .execute(conn)
    .await?;
    Ok(n > 0)
}

/// Members of a role: at the end of the period, and added during it.
#[derive(Debug, Clone, QueryableByName)]
pub struct RoleCount {
    /// `OWNER`, `ADMIN` or `VIEWER`.
    #[diesel(sql_type = Text)]
    pub role: String,
    /// Members (pending invitations included) that joined before the period's end.
    #[diesel(sql_type = BigInt)]
    pub members: i64,
    /// Of those, the ones that joined during the period.
    #[diesel(sql_type = BigInt)]
    pub new_members: i64,
}

/// Current members of `ws` by role, counting those that joined before `end` and those that
/// joined in `[start, end)`.
pub async fn members_by_role(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> QueryResult<Vec<RoleCount>> {
    diesel::sql_query(
        "SELECT m.role, count(*) AS members, count(*) FILTER (WHERE m.created_at >= $2) AS new_members
           FROM members m JOIN users u ON u.id = m.user_id AND NOT u.service_account
          WHERE m.workspace_id = $1 AND m.created_at < $3
          GROUP BY m.role ORDER BY m.role",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Timestamptz, _>(start)
    .bind::<Timestamptz, _>(end)
    .load(conn)
    .await
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Distinct users that acted in `ws` in `[start, end)`: actors of its audit events or of
/// its usage events.
pub async fn active_users(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> QueryResult<i64> {
    let c: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM (
             SELECT actor_id FROM audit_events
              WHERE workspace_id = $1 AND created_at >= $2 AND created_at < $3
                AND actor_id IS NOT NULL
             UNION
             SELECT actor_id FROM usage_events
              WHERE workspace_id = $1 AND created_at >= $2 AND created_at < $3
                AND actor_id IS NOT NULL) actors",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Timestamptz, _>(start)
    .bind::<Timestamptz, _>(end)
    .get_result(conn)
    .await?;
    Ok(c.n)
}

/// Usage of one resource on one day.
#[derive(Debug, Clone, QueryableByName)]
pub struct UsageDay {
    /// Resource key.
    #[diesel(sql_type = Text)]
    pub resource: String,
    /// The UTC day.
    #[diesel(sql_type = Date)]
    pub day: NaiveDate,
    /// Sum of the recorded deltas.
    #[diesel(sql_type = BigInt)]
    pub total: i64,
    /// Usage events recorded.
    #[diesel(sql_type = BigInt)]
    pub events: i64,
}

/// Usage of `ws` per resource per UTC day in `[start, end)`, by resource then day.
pub async fn usage_per_day(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> QueryResult<Vec<UsageDay>> {
    diesel::sql_query(
        "SELECT resource, (created_at AT TIME ZONE 'UTC')::date AS day,
                sum(delta)::bigint AS total, count(*) AS events
           FROM usage_events
          WHERE workspace_id = $1 AND created_at >= $2 AND created_at < $3
          GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Timestamptz, _>(start)
    .bind::<Timestamptz, _>(end)
    .load(conn)
    .await
}

/// Jobs of a workspace by state.
#[derive(Debug, Clone, Default, QueryableByName)]
pub struct JobCounts {
    /// All of them.
    #[diesel(sql_type = BigInt)]
    pub total: i64,
    /// Done.
    #[diesel(sql_type = BigInt)]
    pub succeeded: i64,
    /// Failed for good.
    #[diesel(sql_type = BigInt)]
    pub failed: i64,
    /// Waiting or running.
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
}

/// The jobs of `ws` enqueued in `[start, end)` by state, but those of kind `except`.
pub async fn job_counts(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    except: &str,
) -> QueryResult<JobCounts> {
    diesel::sql_query(format!(
        "SELECT count(*) AS total,
                count(*) FILTER (WHERE s = 'SUCCEEDED') AS succeeded,
                count(*) FILTER (WHERE s = 'FAILED') AS failed,
                count(*) FILTER (WHERE s IN ('PENDING', 'RUNNING')) AS pending
           FROM (SELECT {STATUS_SQL} AS s
                   FROM workspace_jobs w JOIN apalis.jobs j ON j.id = w.job_id
                  WHERE w.workspace_id = $1 AND w.created_at >= $2 AND w.created_at < $3
                    AND w.kind <> $4) states"
    ))
    .bind::<SqlUuid, _>(ws)
    .bind::<Timestamptz, _>(start)
    .bind::<Timestamptz, _>(end)
    .bind::<Text, _>(except)
    .get_result(conn)
    .await
}

/// Whether workspace `ws` is live (exists and is not deleted).
pub async fn is_live(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<bool> {
    let c: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM workspaces WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind::<SqlUuid, _>(ws)
    .get_result(conn)
    .await?;
    Ok(c.n > 0)
}

/// The job of `queue` enqueued under `key`, if the queue still holds it.
pub async fn job_by_key(
    conn: &mut AsyncPgConnection,
    queue: &str,
    key: &str,
) -> QueryResult<Option<String>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = Text)]
        id: String,
    }
    let row: Option<Id> = diesel::sql_query(
        "SELECT id FROM apalis.jobs WHERE job_type = $1 AND idempotency_key = $2",
    )
    .bind::<Text, _>(queue)
    .bind::<Text, _>(key)
    .get_result(conn)
    .await
    .optional()?;
    Ok(row.map(|r| r.id))
}

/// Up to `limit` live workspaces after `after` (by id) whose snapshot of the month starting
/// at `period_start` is missing, older than `stale_before`, or older than their latest
/// audit or usage event (member changes are audited).
pub async fn needing_refresh(
    conn: &mut AsyncPgConnection,
    after: Option<Uuid>,
    limit: i64,
    period_start: DateTime<Utc>,
    stale_before: DateTime<Utc>,
) -> QueryResult<Vec<Uuid>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }
    let rows: Vec<Id> = diesel::sql_query(
        "SELECT w.id FROM workspaces w
           LEFT JOIN analytics_snapshots s ON s.workspace_id = w.id AND s.period_start = $3
          WHERE w.deleted_at IS NULL AND ($1::uuid IS NULL OR w.id > $1)
            AND (s.generated_at IS NULL OR s.generated_at < $4
                 OR EXISTS (SELECT 1 FROM audit_events a
                             WHERE a.workspace_id = w.id AND a.created_at > s.generated_at)
                 OR EXISTS (SELECT 1 FROM usage_events u
                             WHERE u.workspace_id = w.id AND u.created_at > s.generated_at))
          ORDER BY w.id LIMIT $2",
    )
    .bind::<Nullable<SqlUuid>, _>(after)
    .bind::<BigInt, _>(limit)
    .bind::<Timestamptz, _>(period_start)
    .bind::<Timestamptz, _>(stale_before)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}
