-- Metered usage reported to Stripe's billing meters: one row per workspace, paying account,
-- resource and closed hour, created before the report is sent and marked when Stripe took
-- it. Its id is the meter event's identifier (and idempotency key), so a retried report
-- never counts twice.
CREATE TABLE meter_reports (
    id                 uuid        PRIMARY KEY,
    workspace_id       uuid        NOT NULL REFERENCES workspaces (id),
    billing_account_id uuid        NOT NULL REFERENCES billing_accounts (id),
    resource           text        NOT NULL,
    hour               timestamptz NOT NULL,
    value              bigint      NOT NULL CHECK (value > 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    reported_at        timestamptz,
    UNIQUE (workspace_id, billing_account_id, resource, hour)
);
CREATE INDEX meter_reports_unreported_idx ON meter_reports (created_at) WHERE reported_at IS NULL;
CREATE INDEX usage_events_resource_time_idx ON usage_events (resource, created_at);
