//! Background jobs of a workspace (owners and admins).

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::pagination::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use super::replay::{self, Replayable};
use super::{error, rc};
use crate::db::repo::workspace_jobs::JobRow;
use crate::domain;
use crate::ids::{JobId, WorkspaceId};

/// Where a job is.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum JobStatus {
    /// Waiting to run (or to run again after a failed attempt).
    Pending,
    /// A worker runs it.
    Running,
    /// Done.
    Succeeded,
    /// Failed for good (`retryJob` puts it back).
    Failed,
}

impl JobStatus {
    fn parse(s: &str) -> Self {
        match s {
            "RUNNING" => Self::Running,
            "SUCCEEDED" => Self::Succeeded,
            "FAILED" => Self::Failed,
            _ => Self::Pending,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
        }
    }
}

/// A background job of a workspace.
pub struct Job(pub JobRow);

crate::object! {
    #[Object(name = "Job")]
    /// A background job of a workspace.
    impl Job {
        row: JobRow;
        fields {
            /// What it does, e.g. `billing.request`.
            kind: &str = &row.kind,
            /// Where it is.
            status: JobStatus = JobStatus::parse(&row.status),
            /// Attempts so far.
            attempts: i32 = row.attempts,
            /// Its last error, while it has one.
            last_error: Option<&str> = row.last_error.as_deref(),
            /// When it was enqueued.
            created_at: DateTime<Utc> = row.created_at,
            /// When it is (or was last) due.
            run_at: DateTime<Utc> = row.run_at,
            /// When a worker last took it.
            started_at: Option<DateTime<Utc>> = row.started_at,
            /// When it ended.
            finished_at: Option<DateTime<Utc>> = row.finished_at,
        }
        resolvers {
    /// Opaque id (`job_…`).
    async fn id(&self) -> ID {
        ID(JobId(self.0.id.clone()).encode())
    }
        }
    }
}

/// Newest-first page of a workspace's jobs (owners and admins; `FORBIDDEN` otherwise).
pub async fn jobs_of(
    ctx: &Context<'_>,
    ws: uuid::Uuid,
    first: Option<i32>,
    after: Option<String>,
    status: Option<JobStatus>,
) -> Result<Connection<String, Job>> {
    super::billing::may_manage(ctx, ws, "read jobs").await?;
    let rc = rc(ctx);
    let n = first.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(0..=MAX_PAGE_SIZE).contains(&n) {
        return Err(error::bad_input(
            "first",
            format!("first must be between 0 and {MAX_PAGE_SIZE}"),
        ));
    }
    let after = after
        .as_deref()
        .map(|a| {
            JobId::decode(a).ok_or_else(|| error::bad_input("after", "after is not a valid cursor"))
        })
        .transpose()?;
    let rows = domain::jobs::page(
        &rc.services,
        WorkspaceId(ws),
        status.map(JobStatus::as_str),
        after.as_ref(),
        i64::from(n) + 1,
    )
    .await
    .map_err(|e| rc.err(e))?;
    let want = usize::try_from(n).unwrap_or(0);
    let mut c = Connection::new(after.is_some(), rows.len() > want);
    c.edges.extend(
        rows.into_iter()
            .take(want)
            .map(|r| Edge::new(JobId(r.id.clone()).encode(), Job(r))),
    );
    Ok(c)
}

/// Job queries.
#[derive(Default)]
pub struct JobQuery;

#[Object]
impl JobQuery {
    /// A job of a workspace you manage, or a job of no workspace that you asked for (your
    /// own data export or erasure); null for any other id.
    async fn job(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Job>> {
        let rc = rc(ctx);
        let Some(id) = JobId::decode(&id) else {
            return Ok(None);
        };
        let job = domain::jobs::find_readable(&rc.services, &rc.actor, &id)
            .await
            .map_err(|e| rc.err(e))?;
        Ok(job.map(Job))
    }
}

/// Input of `retryJob`.
#[derive(InputObject)]
pub struct RetryJobInput {
    /// A job that failed for good.
    pub job_id: ID,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `retryJob`.
#[derive(SimpleObject)]
pub struct RetryJobPayload {
    /// The job, pending again.
    pub job: Job,
}

/// Job mutations.
#[derive(Default)]
pub struct JobMutation;

#[Object]
impl JobMutation {
    /// Puts a job that failed for good back on its queue (owners and admins).
    async fn retry_job(
        &self,
        ctx: &Context<'_>,
        input: RetryJobInput,
    ) -> Result<Replayable<RetryJobPayload>> {
        let id = JobId::decode(&input.job_id).ok_or_else(|| error::not_found("job"))?;
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::jobs::retry(s, a, id, k).await,
            |j| j.workspace_id,
            |j| RetryJobPayload { job: Job(j) },
        )
        .await
    }
}
