//! Notifications, their deliveries and the attempts of each (see `domain::notifications`).
//!
//! A delivery's job is keyed by the time its attempt is due
//! (`notification-delivery:{id}:{due}`): the job that fails an attempt enqueues the next for
//! its due time, and the periodic sweep ([`enqueue_due`]) enqueues the same key for any due
//! delivery, which inserts nothing when that job exists. A job claims its attempt only while
//! the delivery is still due at the time it names ([`claim`]), so duplicate or stale jobs
//! do nothing.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::cached::CachedExt;

/// SQL of a delivery's due time as the text its job carries (RFC 3339, UTC, microseconds).
fn due_text(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
}

/// SQL that enqueues the attempt job of every row of `source` (columns `id`,
/// `next_attempt_at`) on queue `$queue` with `$attempts` apalis attempts, at its due time.
fn enqueue_sql(source: &str, queue: &str, attempts: &str) -> String {
    let due = due_text("d.next_attempt_at");
    format!(
        "INSERT INTO apalis.jobs (id, job_type, job, max_attempts, idempotency_key, run_at)
         SELECT apalis.generate_ulid(), {queue},
                convert_to(json_build_object('v', 1, 'kind', 'deliver', 'delivery', d.id, 'due', {due})::text, 'UTF8'),
                {attempts}, 'notification-delivery:' || d.id || ':' || {due}, d.next_attempt_at
           FROM {source} d
         ON CONFLICT (job_type, idempotency_key) DO NOTHING"
    )
}

/// Records notification `id` of `ws` (`kind` its wire type, `category` its stored category,
/// `data`) once per `dedupe_key`, with the job on `queue` (`job_attempts` apalis attempts)
/// that fans it out, in the caller's transaction: one statement, so a rolled-back change
/// notifies nobody and a committed one is never lost. `true` when recorded now.
#[allow(clippy::too_many_arguments)]
pub async fn record(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    ws: Uuid,
    kind: &str,
    category: &str,
    data: serde_json::Value,
    dedupe_key: &str,
    queue: &str,
    job_attempts: i32,
) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Recorded {
        #[allow(dead_code)]
        #[diesel(sql_type = Bool)]
        recorded: bool,
    }
    // The fan-out job's payload is `{"v": 1, "kind": "fanout", "notification": id}`.
    let rows: Vec<Recorded> = diesel::sql_query(
        "WITH n AS (
            INSERT INTO notifications (id, workspace_id, type, category, data, dedupe_key)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (workspace_id, dedupe_key) DO NOTHING
            RETURNING id)
         INSERT INTO apalis.jobs (id, job_type, job, max_attempts, idempotency_key, run_at)
         SELECT apalis.generate_ulid(), $7,
                convert_to(json_build_object('v', 1, 'kind', 'fanout', 'notification', n.id)::text, 'UTF8'),
                $8, 'notification:' || n.id, now()
           FROM n
         ON CONFLICT (job_type, idempotency_key) DO NOTHING
         RETURNING true AS recorded",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(ws)
    .bind::<Text, _>(kind)
    .bind::<Text, _>(category)
    .bind::<Jsonb, _>(data)
    .bind::<Text, _>(dedupe_key)
    .bind::<Text, _>(queue)
    .bind::<Integer, _>(job_attempts)
    .cached()
    .load(conn)
    .await?;
    Ok(!rows.is_empty())
}

/// A notification as stored.
#[derive(Debug, Clone, QueryableByName)]
pub struct NotificationRow {
    /// Its id.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// Workspace.
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// Wire type.
    #[diesel(sql_type = Text)]
    pub r#type: String,
    /// Category (stored form).
    #[diesel(sql_type = Text)]
    pub category: String,
    /// Its data.
    #[diesel(sql_type = Jsonb)]
    pub data: serde_json::Value,
    /// When it happened.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// Whether its workspace is still live.
    #[diesel(sql_type = Bool)]
    pub live: bool,
}

/// A notification by id, with whether its workspace is live.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<NotificationRow>> {
    diesel::sql_query(
        "SELECT n.id, n.workspace_id, n.type, n.category, n.data, n.created_at,
                (w.deleted_at IS NULL) AS live
           FROM notifications n JOIN workspaces w ON w.id = n.workspace_id
          WHERE n.id = $1",
    )
    .bind::<SqlUuid, _>(id)
    .cached()
    .get_result(conn)
    .await
    .optional()
}

/// One destination of a notification, for [`fan_out`].
#[derive(Debug, Clone)]
pub struct Target {
    /// A new delivery id.
    pub id: Uuid,
    /// `WEBHOOK`, `SLACK` or `EMAIL`.
    pub channel: &'static str,
    /// What identifies it: the endpoint id, `slack`, or the address.
    pub target: String,
    /// What readers see: the URL, the masked Slack URL, or the address.
    pub destination: String,
    /// The endpoint (webhooks).
    pub endpoint_id: Option<Uuid>,
}

/// Creates the deliveries of notification `n` of `ws` to `targets` (those not created yet),
/// each due now and retried until `give_up_secs` from now, with their first jobs, and marks
/// it fanned out: one statement. How many deliveries were created.
pub async fn fan_out(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    n: Uuid,
    targets: &[Target],
    give_up_secs: i64,
    queue: &str,
    job_attempts: i32,
) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Created {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH t AS (
                SELECT * FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::uuid[])
                       AS t(id, channel, target, destination, endpoint_id)),
             created AS (
                INSERT INTO notification_deliveries
                       (id, workspace_id, notification_id, channel, target, destination, endpoint_id,
                        next_attempt_at, give_up_at)
                SELECT t.id, $1, $2, t.channel, t.target, t.destination, t.endpoint_id, now(),
                       now() + make_interval(secs => $8)
                  FROM t
                ON CONFLICT (notification_id, channel, target) DO NOTHING
                RETURNING id, next_attempt_at),
             jobs AS ({jobs}),
             marked AS (UPDATE notifications SET fanned_out_at = now()
                         WHERE id = $2 AND fanned_out_at IS NULL)
             SELECT count(*) AS n FROM created",
            jobs = enqueue_sql("created", "$9", "$10"),
        )
    });
    let ids: Vec<Uuid> = targets.iter().map(|t| t.id).collect();
    let channels: Vec<&str> = targets.iter().map(|t| t.channel).collect();
    let keys: Vec<&str> = targets.iter().map(|t| t.target.as_str()).collect();
    let shown: Vec<&str> = targets.iter().map(|t| t.destination.as_str()).collect();
    let endpoints: Vec<Option<Uuid>> = targets.iter().map(|t| t.endpoint_id).collect();
    let created: Created = diesel::sql_query(SQL.as_str())
        .bind::<SqlUuid, _>(ws)
        .bind::<SqlUuid, _>(n)
        .bind::<Array<SqlUuid>, _>(ids)
        .bind::<Array<Text>, _>(channels)
        .bind::<Array<Text>, _>(keys)
        .bind::<Array<Text>, _>(shown)
        .bind::<Array<Nullable<SqlUuid>>, _>(endpoints)
        .bind::<BigInt, _>(give_up_secs)
        .bind::<Text, _>(queue)
        .bind::<Integer, _>(job_attempts)
        .cached()
        .get_result(conn)
        .await?;
    Ok(created.n)
}

/// A delivery claimed for an attempt, with its notification.
#[derive(Debug, Clone, QueryableByName)]
pub struct Claimed {
    /// The delivery.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// Workspace.
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// Its workspace's name.
    #[diesel(sql_type = Text)]
    pub workspace_name: String,
    /// `WEBHOOK`, `SLACK` or `EMAIL`.
    #[diesel(sql_type = Text)]
    pub channel: String,
    /// The endpoint id, `slack`, or the address.
    #[diesel(sql_type = Text)]
    pub target: String,
    /// The endpoint (webhooks).
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub endpoint_id: Option<Uuid>,
    /// This attempt's number.
    #[diesel(sql_type = Integer)]
    pub attempt: i32,
    /// The notification.
    #[diesel(sql_type = SqlUuid)]
    pub notification_id: Uuid,
    /// Its wire type.
    #[diesel(sql_type = Text)]
    pub r#type: String,
    /// Its category.
    #[diesel(sql_type = Text)]
    pub category: String,
    /// Its data.
    #[diesel(sql_type = Jsonb)]
    pub data: serde_json::Value,
    /// When it happened.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
}

/// Claims the attempt of delivery `id` due at `due` (the text its job carries): counts it,
/// starts its attempt row, and moves the delivery's due time `lease_secs` ahead (should this
/// worker die, the sweep enqueues it again then). `None` when it is no longer due at that
/// time (done, failed, or already claimed).
pub async fn claim(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    due: &str,
    lease_secs: i64,
) -> QueryResult<Option<Claimed>> {
    diesel::sql_query(
        "WITH d AS (
            UPDATE notification_deliveries
               SET attempts = attempts + 1, last_attempt_at = clock_timestamp(),
                   next_attempt_at = clock_timestamp() + make_interval(secs => $3)
             WHERE id = $1 AND status = 'PENDING' AND next_attempt_at = $2::timestamptz
            RETURNING id, workspace_id, notification_id, channel, target, endpoint_id, attempts),
         a AS (
            INSERT INTO notification_attempts (delivery_id, number, workspace_id, started_at)
            SELECT id, attempts, workspace_id, clock_timestamp() FROM d)
         SELECT d.id, d.workspace_id, w.name AS workspace_name, d.channel, d.target, d.endpoint_id,
                d.attempts AS attempt, n.id AS notification_id, n.type, n.category, n.data,
                n.created_at
           FROM d JOIN notifications n ON n.id = d.notification_id
                  JOIN workspaces w ON w.id = d.workspace_id",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(due)
    .bind::<BigInt, _>(lease_secs)
    .cached()
    .get_result(conn)
    .await
    .optional()
}

/// Ends delivery `id` as `SKIPPED` with `reason` (no attempt is made) when its attempt due at
/// `due` is still due and its workspace's policy turns external integrations off; whether it
/// did. One statement, which the attempt's job runs before it claims the attempt.
pub async fn skip_if_integrations_off(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    due: &str,
    reason: &str,
) -> QueryResult<bool> {
    let n = diesel::sql_query(
        "UPDATE notification_deliveries d
            SET status = 'SKIPPED', next_attempt_at = NULL, last_error = $3
           FROM workspace_settings s
          WHERE d.id = $1 AND d.status = 'PENDING' AND d.next_attempt_at = $2::timestamptz
            AND s.workspace_id = d.workspace_id AND NOT s.external_integrations_allowed
            -- An invitation's e-mail to its invitee is the product's own, not an integration.
            AND NOT (d.channel = 'EMAIL' AND starts_with(d.target, 'invitation:'))",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(due)
    .bind::<Text, _>(reason)
    .cached()
    .execute(conn)
    .await?;
    Ok(n > 0)
}

/// The result of an attempt, for [`finish`].
#[derive(Debug, Clone)]
pub struct Finished<'a> {
    /// Milliseconds it took.
    pub duration_ms: i32,
    /// HTTP status or SMTP reply code.
    pub status_code: Option<i32>,
    /// What went wrong (`None`: delivered).
    pub error: Option<&'a str>,
    /// Do not retry.
    pub permanent: bool,
    /// Seconds until the next attempt (when failed and retried).
    pub backoff_secs: i64,
}

/// A delivery's state after [`finish`].
#[derive(Debug, Clone, QueryableByName)]
pub struct After {
    /// `PENDING`, `DELIVERED` or `FAILED`.
    #[diesel(sql_type = Text)]
    pub status: String,
    /// When the next attempt is due.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Records attempt `attempt` of delivery `id` and its effect on the delivery: delivered;
/// failed for good (`permanent`, or its retry window is over); or failed, the next attempt
/// due after the backoff (never past the window's end) with its job enqueued. One
/// statement. `None` when the delivery moved on meanwhile (another attempt claimed it after
/// this one's lease ran out): only the attempt is recorded.
pub async fn finish(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    attempt: i32,
    f: &Finished<'_>,
    queue: &str,
    job_attempts: i32,
) -> QueryResult<Option<After>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH a AS (
                UPDATE notification_attempts
                   SET finished_at = clock_timestamp(), duration_ms = $3, status_code = $4,
                       error = $5, succeeded = ($5 IS NULL)
                 WHERE delivery_id = $1 AND number = $2),
             d AS (
                UPDATE notification_deliveries AS x SET
                       status = CASE WHEN $5 IS NULL THEN 'DELIVERED'
                                     WHEN $6 OR clock_timestamp() >= x.give_up_at THEN 'FAILED'
                                     ELSE 'PENDING' END,
                       delivered_at = CASE WHEN $5 IS NULL THEN clock_timestamp() END,
                       last_error = $5,
                       next_attempt_at = CASE WHEN $5 IS NULL OR $6 OR clock_timestamp() >= x.give_up_at THEN NULL
                                              ELSE LEAST(clock_timestamp() + make_interval(secs => $7), x.give_up_at) END
                 WHERE x.id = $1 AND x.attempts = $2 AND x.status = 'PENDING'
                RETURNING x.id, x.status, x.next_attempt_at),
             jobs AS ({jobs})
             SELECT status, next_attempt_at FROM d",
            jobs = enqueue_sql("(SELECT * FROM d WHERE status = 'PENDING')", "$8", "$9"),
        )
    });
    diesel::sql_query(SQL.as_str())
        .bind::<SqlUuid, _>(id)
        .bind::<Integer, _>(attempt)
        .bind::<Integer, _>(f.duration_ms)
        .bind::<Nullable<Integer>, _>(f.status_code)
        .bind::<Nullable<Text>, _>(f.error)
        .bind::<Bool, _>(f.permanent)
        .bind::<BigInt, _>(f.backoff_secs)
        .bind::<Text, _>(queue)
        .bind::<Integer, _>(job_attempts)
        .cached()
        .get_result(conn)
        .await
        .optional()
}

/// Enqueues the attempt jobs of up to `limit` deliveries whose attempt is due and has no job
/// (whatever that job's state), skipping rows other sweeps hold; how many jobs.
pub async fn enqueue_due(
    conn: &mut AsyncPgConnection,
    limit: i64,
    queue: &str,
    job_attempts: i32,
) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH due AS (
                SELECT x.id, x.next_attempt_at FROM notification_deliveries x
                 WHERE x.status = 'PENDING' AND x.next_attempt_at <= now()
                   AND NOT EXISTS (
                       SELECT 1 FROM apalis.jobs j
                        WHERE j.job_type = $2
                          AND j.idempotency_key = 'notification-delivery:' || x.id || ':' || {due})
                 ORDER BY x.next_attempt_at LIMIT $1
                 FOR UPDATE SKIP LOCKED),
             jobs AS ({jobs} RETURNING 1)
             SELECT count(*) AS n FROM jobs",
            jobs = enqueue_sql("due", "$2", "$3"),
            due = due_text("x.next_attempt_at"),
        )
    });
    let n: N = diesel::sql_query(SQL.as_str())
        .bind::<BigInt, _>(limit)
        .bind::<Text, _>(queue)
        .bind::<Integer, _>(job_attempts)
        .cached()
        .get_result(conn)
        .await?;
    Ok(n.n)
}

/// Marks failed the deliveries still pending more than `grace_secs` past the end of their
/// retry window (their jobs failed for good on database errors); how many.
pub async fn fail_overdue(conn: &mut AsyncPgConnection, grace_secs: i64) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE notification_deliveries
            SET status = 'FAILED', next_attempt_at = NULL,
                last_error = coalesce(last_error || '; ', '') || 'retry window over (its last attempt never ran)'
          WHERE status = 'PENDING' AND give_up_at < now() - make_interval(secs => $1)
            AND next_attempt_at < now() - make_interval(secs => $1)",
    )
    .bind::<BigInt, _>(grace_secs)
    .cached()
    .execute(conn)
    .await
}

/// A delivery as readers see it, with its notification.
#[derive(Debug, Clone, QueryableByName, serde::Serialize, serde::Deserialize)]
pub struct DeliveryRow {
    /// Its id.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// Workspace.
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// `WEBHOOK`, `SLACK` or `EMAIL`.
    #[diesel(sql_type = Text)]
    pub channel: String,
    /// The URL, the masked Slack URL, or the address.
    #[diesel(sql_type = Text)]
    pub destination: String,
    /// `PENDING`, `DELIVERED` or `FAILED`.
    #[diesel(sql_type = Text)]
    pub status: String,
    /// Attempts so far.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// The last attempt's error.
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    /// When it was last attempted.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// When the next attempt is due.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was delivered.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub delivered_at: Option<DateTime<Utc>>,
    /// When it was created.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// The notification.
    #[diesel(sql_type = SqlUuid)]
    pub notification_id: Uuid,
    /// Its wire type.
    #[diesel(sql_type = Text)]
    pub r#type: String,
    /// Its category.
    #[diesel(sql_type = Text)]
    pub category: String,
    /// Its data.
    #[diesel(sql_type = Jsonb)]
    pub data: serde_json::Value,
    /// When it happened.
    #[diesel(sql_type = Timestamptz)]
    pub notified_at: DateTime<Utc>,
}

/// Newest first: the deliveries of `ws` (of one status, or all) after delivery `after`.
pub async fn page(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    status: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<DeliveryRow>> {
    diesel::sql_query(
        "SELECT d.id, d.workspace_id, d.channel, d.destination, d.status, d.attempts, d.last_error,
                d.last_attempt_at, d.next_attempt_at, d.delivered_at, d.created_at,
                n.id AS notification_id, n.type, n.category, n.data, n.created_at AS notified_at
           FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
          WHERE d.workspace_id = $1 AND ($2::text IS NULL OR d.status = $2)
            AND ($3::uuid IS NULL OR d.id < $3)
          ORDER BY d.id DESC LIMIT $4",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Nullable<Text>, _>(status)
    .bind::<Nullable<SqlUuid>, _>(after)
    .bind::<BigInt, _>(limit)
    .cached()
    .load(conn)
    .await
}

/// One attempt of a delivery.
#[derive(Debug, Clone, QueryableByName, serde::Serialize, serde::Deserialize)]
pub struct AttemptRow {
    /// The delivery.
    #[diesel(sql_type = SqlUuid)]
    pub delivery_id: Uuid,
    /// 1, 2, …
    #[diesel(sql_type = Integer)]
    pub number: i32,
    /// When it started.
    #[diesel(sql_type = Timestamptz)]
    pub started_at: DateTime<Utc>,
    /// When it ended (`None`: its worker died).
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub finished_at: Option<DateTime<Utc>>,
    /// How long it took.
    #[diesel(sql_type = Nullable<Integer>)]
    pub duration_ms: Option<i32>,
    /// HTTP status or SMTP reply code.
    #[diesel(sql_type = Nullable<Integer>)]
    pub status_code: Option<i32>,
    /// What went wrong.
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
    /// Whether it delivered.
    #[diesel(sql_type = Bool)]
    pub succeeded: bool,
}

/// The attempts of deliveries `ids`, by delivery then number.
pub async fn attempts_of(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> QueryResult<Vec<AttemptRow>> {
    diesel::sql_query(
        "SELECT delivery_id, number, started_at, finished_at, duration_ms, status_code, error, succeeded
           FROM notification_attempts WHERE delivery_id = ANY($1) ORDER BY delivery_id, number",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .cached()
    .load(conn)
    .await
}
