-- Per-workspace API request counters, written by the gateway (`domain::api_usage`): each
-- API process adds up its requests in memory and flushes them every API_USAGE_FLUSH_SECS with
-- one upsert, so a crash loses at most one interval of counts. One row per workspace, UTC
-- day and operation (the GraphQL operation name, or its root fields when unnamed; at most
-- 100 characters, and `(other)` past the distinct operations kept per workspace and day).
-- `Workspace.analytics(period).apiUsage` sums them; retention deletes them with the usage
-- events (`usage_events_days`).
CREATE TABLE api_request_counters (
    workspace_id uuid   NOT NULL REFERENCES workspaces (id),
    day          date   NOT NULL,
    operation    text   NOT NULL CHECK (char_length(operation) BETWEEN 1 AND 100),
    requests     bigint NOT NULL CHECK (requests >= 0),
    errors       bigint NOT NULL CHECK (errors >= 0 AND errors <= requests),
    PRIMARY KEY (workspace_id, day, operation)
);
