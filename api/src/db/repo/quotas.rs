//! Workspace quotas (`workspace_quotas`), their counters (`quota_counters`) and the numbers
//! `Workspace.quotaStatus` shows. The rules are in `domain::governance::quotas`.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::cached::CachedExt;

/// A quota: the most the workspace as a whole may use of `resource`.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, serde::Serialize, serde::Deserialize)]
pub struct QuotaRow {
    /// Resource key (or a special quota key).
    #[diesel(sql_type = Text)]
    pub resource: String,
    /// The limit.
    #[diesel(sql_type = BigInt)]
    pub quota: i64,
}

/// The rows of `workspace_quotas` of `ws` (not the rate limit, which lives in the settings).
pub async fn stored(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<Vec<QuotaRow>> {
    diesel::sql_query("SELECT resource, quota FROM workspace_quotas WHERE workspace_id = $1")
        .bind::<SqlUuid, _>(ws)
        .cached()
        .load(conn)
        .await
}

/// Every quota of `ws` in one statement: its rows of `workspace_quotas`, and its rate limit
/// (`workspace_settings.rate_limit_per_minute`) under the key `rate_key` when it has one.
pub async fn list(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    rate_key: &str,
) -> QueryResult<Vec<QuotaRow>> {
    diesel::sql_query(
        "SELECT resource, quota FROM workspace_quotas WHERE workspace_id = $1
         UNION ALL
         SELECT $2, rate_limit_per_minute::int8 FROM workspace_settings
          WHERE workspace_id = $1 AND rate_limit_per_minute IS NOT NULL",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Text, _>(rate_key)
    .cached()
    .load(conn)
    .await
}

/// Sets quotas of `ws` (`resources[i]` to `quotas[i]`), inserted or replaced.
pub async fn set_many(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    resources: &[&str],
    quotas: &[i64],
) -> QueryResult<usize> {
    diesel::sql_query(
        "INSERT INTO workspace_quotas (workspace_id, resource, quota)
         SELECT $1, r, q FROM unnest($2::text[], $3::int8[]) AS i(r, q)
         ON CONFLICT (workspace_id, resource) DO UPDATE
            SET quota = excluded.quota, updated_at = now()",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Array<Text>, _>(resources)
    .bind::<Array<BigInt>, _>(quotas)
    .cached()
    .execute(conn)
    .await
}

/// Removes quotas of `ws`.
pub async fn remove_many(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    resources: &[&str],
) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM workspace_quotas WHERE workspace_id = $1 AND resource = ANY($2::text[])",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Array<Text>, _>(resources)
    .cached()
    .execute(conn)
    .await
}

/// Deletes the counters of `resources` in `ws` (every window): the next allocation counts
/// the quota again from the organizations' counters.
pub async fn reset_counters(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    resources: &[&str],
) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM quota_counters WHERE workspace_id = $1 AND resource = ANY($2::text[])",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Array<Text>, _>(resources)
    .cached()
    .execute(conn)
    .await
}

/// What the workspace as a whole uses of `$2` in window `$3`: the sum of its root
/// organizations' subtree counters (one primary-key lookup per root).
const ROOTS_USAGE: &str = "SELECT COALESCE(sum(u.subtree), 0)::int8
       FROM organizations o
       JOIN usage_counters u ON u.organization_id = o.id AND u.resource = $2 AND u.period_start = $3
      WHERE o.workspace_id = $1 AND o.parent_id IS NULL";

/// What `charge` did.
#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct Charge {
    /// The quota (`None`: the workspace has no quota on the resource: nothing was done).
    #[diesel(sql_type = Nullable<BigInt>)]
    pub quota: Option<i64>,
    /// The counter after the change (`None` with a quota: refused, nothing changed).
    #[diesel(sql_type = Nullable<BigInt>)]
    pub used: Option<i64>,
    /// When the counter of the window did not exist yet: the usage it was counted from
    /// (the roots' counters, which already hold this transaction's change).
    #[diesel(sql_type = Nullable<BigInt>)]
    pub initial: Option<i64>,
}

/// Adds `delta` to the quota counter of (`ws`, `resource`, `period`) in one statement, under
/// the counter's row lock, unless it is an increase that would take it past the quota; a
/// decrease never takes it below zero. Without a quota row nothing happens (a quota removed
/// meanwhile never blocks). A missing counter is created from the roots' counters, which the
/// caller's transaction has already changed by `delta`.
pub async fn charge(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    resource: &str,
    period: DateTime<Utc>,
    delta: i64,
) -> QueryResult<Charge> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH q AS (
                SELECT quota FROM workspace_quotas WHERE workspace_id = $1 AND resource = $2
             ), init AS (
                SELECT CASE WHEN EXISTS (SELECT 1 FROM quota_counters e
                                          WHERE e.workspace_id = $1 AND e.resource = $2 AND e.period_start = $3)
                            THEN NULL ELSE ({ROOTS_USAGE}) END AS total
                 WHERE EXISTS (SELECT 1 FROM q)
             ), up AS (
                INSERT INTO quota_counters AS c (workspace_id, resource, period_start, used)
                SELECT $1, $2, $3, COALESCE(i.total, 0) FROM q LEFT JOIN init i ON true
                 WHERE $4 < 0 OR COALESCE(i.total, 0) <= q.quota
                ON CONFLICT (workspace_id, resource, period_start) DO UPDATE
                   SET used = GREATEST(c.used + $4, 0)
                 WHERE $4 < 0 OR c.used + $4 <= (SELECT quota FROM q)
                RETURNING c.used
             )
             SELECT (SELECT quota FROM q) AS quota, (SELECT used FROM up) AS used,
                    (SELECT total FROM init) AS initial"
        )
    });
    diesel::sql_query(SQL.as_str())
        .bind::<SqlUuid, _>(ws)
        .bind::<Text, _>(resource)
        .bind::<Timestamptz, _>(period)
        .bind::<BigInt, _>(delta)
        .cached()
        .get_result(conn)
        .await
}

/// The quota counter of (`ws`, `resource`, `period`), if it exists.
pub async fn counter(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    resource: &str,
    period: DateTime<Utc>,
) -> QueryResult<Option<i64>> {
    #[derive(QueryableByName)]
    struct Used {
        #[diesel(sql_type = BigInt)]
        used: i64,
    }
    let row: Option<Used> = diesel::sql_query(
        "SELECT used FROM quota_counters WHERE workspace_id = $1 AND resource = $2 AND period_start = $3",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Text, _>(resource)
    .bind::<Timestamptz, _>(period)
    .cached()
    .get_result(conn)
    .await
    .optional()?;
    Ok(row.map(|r| r.used))
}

/// The `members` quota of `ws` and the people it counts now (members, pending invitations
/// included, that are not API keys' service accounts); `None` without such a quota.
pub async fn members_quota(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    key: &str,
) -> QueryResult<Option<(i64, i64)>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        quota: i64,
        #[diesel(sql_type = BigInt)]
        people: i64,
    }
    let row: Option<Row> = diesel::sql_query(
        "SELECT q.quota,
                (SELECT count(*) FROM members m JOIN users u ON u.id = m.user_id
                  WHERE m.workspace_id = $1 AND NOT u.service_account)
                + (SELECT count(*) FROM invitations i
                    WHERE i.workspace_id = $1 AND i.expires_at > now()) AS people
           FROM workspace_quotas q WHERE q.workspace_id = $1 AND q.resource = $2",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Text, _>(key)
    .cached()
    .get_result(conn)
    .await
    .optional()?;
    Ok(row.map(|r| (r.quota, r.people)))
}

crate::positional_row! {
    /// A quota with its usage now (see `status`).
    #[derive(Debug, Clone)]
    pub struct StatusRow {
        /// Resource key (or a special quota key).
        resource: String = Text,
        /// The quota.
        quota: i64 = BigInt,
        /// The window usage is counted in (`None`: the quota has no window of its own, or
        /// its resource is gone).
        period_start: Option<DateTime<Utc>> = Nullable<Timestamptz>,
        /// Usage now.
        used: i64 = BigInt,
    }
}

/// The keys `status` gives special meanings to, and the windows it counts in.
pub struct StatusKeys<'a> {
    /// The key of the members quota (counts people).
    pub members: &'a str,
    /// The key of the rate limit (from the settings, counted in the rate limit window).
    pub rate: &'a str,
    /// Start of the current rate limit window.
    pub rate_window: DateTime<Utc>,
    /// The current window of each kind of resource: (kind, reset period, window start).
    pub windows: &'a [(&'a str, Option<&'a str>, DateTime<Utc>)],
}

/// Every quota of `ws` with its usage now, in one statement whatever their number: the
/// members quota counts people; the rate limit, what the current rate limit window handed
/// out; a resource's quota, its counter in the resource's current window, or (before the
/// window's first allocation under the quota) the roots' counters.
pub async fn status(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    keys: &StatusKeys<'_>,
) -> QueryResult<Vec<StatusRow>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {cols} FROM (
                SELECT q.resource, q.quota, w.period_start,
                       CASE WHEN q.resource = $5 THEN
                                (SELECT count(*) FROM members m JOIN users u ON u.id = m.user_id
                                  WHERE m.workspace_id = $1 AND NOT u.service_account)
                                + (SELECT count(*) FROM invitations i
                                    WHERE i.workspace_id = $1 AND i.expires_at > now())
                            WHEN w.period_start IS NULL THEN 0::int8
                            ELSE COALESCE(
                                (SELECT c.used FROM quota_counters c
                                  WHERE c.workspace_id = $1 AND c.resource = q.resource
                                    AND c.period_start = w.period_start),
                                (SELECT COALESCE(sum(u.subtree), 0)::int8
                                   FROM organizations o
                                   JOIN usage_counters u ON u.organization_id = o.id
                                    AND u.resource = q.resource AND u.period_start = w.period_start
                                  WHERE o.workspace_id = $1 AND o.parent_id IS NULL))
                       END AS used
                  FROM workspace_quotas q
                  LEFT JOIN resources r ON r.workspace_id = q.workspace_id AND r.key = q.resource
                  LEFT JOIN unnest($2::text[], $3::text[], $4::timestamptz[]) AS w(kind, reset, period_start)
                         ON q.resource <> $5 AND w.kind = r.kind
                        AND w.reset IS NOT DISTINCT FROM r.reset_period
                 WHERE q.workspace_id = $1
                UNION ALL
                SELECT $6, s.rate_limit_per_minute::int8, $7::timestamptz,
                       COALESCE((SELECT rw.used FROM rate_limit_windows rw
                                  WHERE rw.scope = $1 AND rw.window_start = $7), 0)
                  FROM workspace_settings s
                 WHERE s.workspace_id = $1 AND s.rate_limit_per_minute IS NOT NULL
             ) x",
            cols = StatusRow::select_list()
        )
    });
    let kinds: Vec<&str> = keys.windows.iter().map(|w| w.0).collect();
    let resets: Vec<Option<&str>> = keys.windows.iter().map(|w| w.1).collect();
    let starts: Vec<DateTime<Utc>> = keys.windows.iter().map(|w| w.2).collect();
    diesel::sql_query(SQL.as_str())
        .bind::<SqlUuid, _>(ws)
        .bind::<Array<Text>, _>(kinds)
        .bind::<Array<Nullable<Text>>, _>(resets)
        .bind::<Array<Timestamptz>, _>(starts)
        .bind::<Text, _>(keys.members)
        .bind::<Text, _>(keys.rate)
        .bind::<Timestamptz, _>(keys.rate_window)
        .cached()
        .load(conn)
        .await
}
