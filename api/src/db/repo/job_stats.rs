//! What `/metrics` shows of the job queues.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::cached::CachedExt;

/// Jobs of one queue in one apalis status.
#[derive(Debug, Clone, QueryableByName)]
pub struct QueueCount {
    /// The queue (`job_type`).
    #[diesel(sql_type = Text)]
    pub queue: String,
    /// apalis's status.
    #[diesel(sql_type = Text)]
    pub status: String,
    /// How many.
    #[diesel(sql_type = BigInt)]
    pub jobs: i64,
}

/// Latency of one queue's recently finished jobs (from due to done, waiting included).
#[derive(Debug, Clone, QueryableByName)]
pub struct QueueLatency {
    /// The queue.
    #[diesel(sql_type = Text)]
    pub queue: String,
    /// Median, seconds.
    #[diesel(sql_type = Nullable<Double>)]
    pub p50: Option<f64>,
    /// 99th percentile, seconds.
    #[diesel(sql_type = Nullable<Double>)]
    pub p99: Option<f64>,
    /// Jobs measured.
    #[diesel(sql_type = BigInt)]
    pub finished: i64,
}

/// Jobs per queue and status.
pub async fn counts(conn: &mut AsyncPgConnection) -> QueryResult<Vec<QueueCount>> {
    diesel::sql_query(
        "SELECT job_type AS queue, status, count(*) AS jobs FROM apalis.jobs GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .cached()
    .load(conn)
    .await
}

/// Latency per queue over the jobs finished in the last `secs` seconds.
pub async fn latencies(conn: &mut AsyncPgConnection, secs: i64) -> QueryResult<Vec<QueueLatency>> {
    diesel::sql_query(
        "SELECT job_type AS queue,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM done_at - run_at)) AS p50,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM done_at - run_at)) AS p99,
                count(*) AS finished
           FROM apalis.jobs
          WHERE status = 'Done' AND done_at > now() - make_interval(secs => $1)
          GROUP BY 1 ORDER BY 1",
    )
    .bind::<BigInt, _>(secs)
    .cached()
    .load(conn)
    .await
}
