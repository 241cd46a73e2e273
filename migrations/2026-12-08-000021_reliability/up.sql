-- Stripe events are retried with backoff for as long as Stripe (or the read of an object) is
-- what fails: each failed attempt is counted here and the next one is due at `retry_at`.
ALTER TABLE stripe_events
    ADD COLUMN failures integer NOT NULL DEFAULT 0,
    ADD COLUMN retry_at timestamptz,
    ADD COLUMN last_error text;

-- The time of the newest state of each Stripe object the mirror applied (read from Stripe's
-- API, or an event's own object): a state read earlier is never applied over a later one,
-- whichever worker's read finishes last.
CREATE TABLE stripe_reads (
    object_id text PRIMARY KEY,
    read_at timestamptz NOT NULL,
    CHECK (length(object_id) BETWEEN 1 AND 255)
);
CREATE INDEX stripe_reads_read_at ON stripe_reads (read_at);

-- A workspace's (or a person's) jobs of one kind, for the limit on those queued or running
-- (`WORKSPACE_JOB_LIMIT`).
CREATE INDEX workspace_jobs_kind_idx ON workspace_jobs (workspace_id, kind, job_id DESC);
CREATE INDEX workspace_jobs_personal_kind_idx ON workspace_jobs (requested_by, kind, job_id DESC)
    WHERE workspace_id IS NULL;
