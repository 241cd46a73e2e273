-- Retention of removed members' personal data (`userDataDays`): which former members a
-- workspace's rows were pseudonymized for, and as of which removal (a person removed again
-- later is pseudonymized again).
CREATE TABLE removed_member_scrubs (
    workspace_id uuid        NOT NULL REFERENCES workspaces (id),
    user_id      uuid        NOT NULL REFERENCES users (id),
    removed_at   timestamptz NOT NULL,
    scrubbed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, user_id)
);
-- Removals are found by their audit events.
CREATE INDEX audit_events_removals_idx ON audit_events (workspace_id, created_at)
    WHERE action IN ('member.remove', 'member.leave');
