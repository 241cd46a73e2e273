-- Data keys of archives and exports (`storage`): one per owner (a workspace, or a user for
-- their data exports), wrapped by the master key with the owner's id as associated data.
-- Deleting a row makes everything sealed under it unreadable.
CREATE TABLE data_keys (
    owner_id   uuid        PRIMARY KEY,
    wrapped    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Whether retention cleanup archives what it deletes (per workspace).
ALTER TABLE retention_settings ADD COLUMN archive_before_delete boolean NOT NULL DEFAULT false;

-- The manifest of each archive: one sealed object of newline-delimited JSON rows of one
-- category, the rows retention cleanup deleted in one batch.
CREATE TABLE archives (
    id               uuid        PRIMARY KEY,
    workspace_id     uuid        NOT NULL REFERENCES workspaces (id),
    category         text        NOT NULL CHECK (category IN ('AUDIT_EVENTS', 'USAGE_EVENTS')),
    path             text        NOT NULL UNIQUE,
    range_start      timestamptz NOT NULL,
    range_end        timestamptz NOT NULL,
    row_count        bigint      NOT NULL CHECK (row_count > 0),
    plaintext_bytes  bigint      NOT NULL,
    object_bytes     bigint      NOT NULL,
    plaintext_sha256 text        NOT NULL,
    object_sha256    text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- The last restore: while `held_until` is ahead, cleanup leaves the restored rows alone.
    restored_at      timestamptz,
    restored_rows    bigint,
    held_until       timestamptz
);
CREATE INDEX archives_workspace_idx ON archives (workspace_id, created_at DESC, id DESC);
CREATE INDEX archives_held_idx ON archives (workspace_id, category, held_until) WHERE held_until IS NOT NULL;
