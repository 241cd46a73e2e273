-- The jobs that belong to a workspace (shown in `Workspace.jobs`): a row per apalis job,
-- written in the transaction that enqueues it. Jobs of no workspace (Stripe events,
-- maintenance ticks) have none.
CREATE TABLE workspace_jobs (
    job_id       text        PRIMARY KEY,
    workspace_id uuid        NOT NULL REFERENCES workspaces (id),
    kind         text        NOT NULL CHECK (char_length(kind) BETWEEN 1 AND 100),
    requested_by uuid,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workspace_jobs_workspace_idx ON workspace_jobs (workspace_id, job_id DESC);
