-- How many times each job's handler has started (`api::jobs::count_run`), keyed by the id of
-- its row in `apalis.jobs`. apalis-postgres 1.0 re-queues the job of a worker that stopped
-- heartbeating as `Pending`, which it fetches whatever `max_attempts` says: a job that
-- kills its process would run forever. Each start is counted in its own autocommitted
-- statement (so a run that dies is counted too) and a job past the limit gives up.
-- No foreign key: the `apalis` schema is created after our migrations; the retention purge
-- deletes a job's row here with the job.
CREATE TABLE job_runs (
    job_id text PRIMARY KEY,
    runs integer NOT NULL CHECK (runs > 0),
    first_run_at timestamptz NOT NULL DEFAULT now(),
    last_run_at timestamptz NOT NULL DEFAULT now()
);
