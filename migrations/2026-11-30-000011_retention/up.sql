-- How long each workspace keeps each kind of its data (days); a workspace without a row
-- has the defaults of `domain::retention::DEFAULTS`.
CREATE TABLE retention_settings (
    workspace_id        uuid        PRIMARY KEY REFERENCES workspaces (id),
    audit_logs_days     integer     NOT NULL CHECK (audit_logs_days BETWEEN 30 AND 3650),
    usage_events_days   integer     NOT NULL CHECK (usage_events_days BETWEEN 30 AND 3650),
    execution_logs_days integer     NOT NULL CHECK (execution_logs_days BETWEEN 1 AND 3650),
    workflow_data_days  integer     NOT NULL CHECK (workflow_data_days BETWEEN 1 AND 3650),
    user_data_days      integer     NOT NULL CHECK (user_data_days BETWEEN 1 AND 3650),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
-- Retention deletes the oldest rows first, a batch at a time.
CREATE INDEX audit_events_created_idx ON audit_events (workspace_id, created_at);
CREATE INDEX usage_events_created_idx ON usage_events (workspace_id, created_at);
CREATE INDEX stripe_events_received_idx ON stripe_events (received_at) WHERE processed_at IS NOT NULL;
