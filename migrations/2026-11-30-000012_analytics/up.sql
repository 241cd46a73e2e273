-- The latest analytics snapshot of each workspace and month, written (upserted) by the
-- `analytics` queue's jobs (`domain::analytics`). `data` is the snapshot as the API shows it
-- (users, usage per resource per day, jobs, cost), versioned by its `v` field.
CREATE TABLE analytics_snapshots (
    workspace_id uuid        NOT NULL REFERENCES workspaces (id),
    period_start timestamptz NOT NULL,
    generated_at timestamptz NOT NULL,
    data         jsonb       NOT NULL,
    PRIMARY KEY (workspace_id, period_start)
);
