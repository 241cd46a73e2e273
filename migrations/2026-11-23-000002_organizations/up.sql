-- Organization trees inside a workspace. `ancestors` is the root-first path of ancestor ids
-- (without the organization itself), so ancestors, descendants and the allocation path are
-- one indexed lookup each; a move rewrites the paths of the moved subtree.
CREATE TABLE organizations (
    id           uuid        PRIMARY KEY,
    workspace_id uuid        NOT NULL REFERENCES workspaces (id),
    parent_id    uuid        REFERENCES organizations (id),
    name         text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 50),
    depth        smallint    NOT NULL CHECK (depth BETWEEN 0 AND 9),
    ancestors    uuid[]      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (cardinality(ancestors) = depth),
    CHECK ((parent_id IS NULL) = (depth = 0))
);
CREATE UNIQUE INDEX organizations_workspace_id_idx ON organizations (workspace_id, id);
CREATE INDEX organizations_parent_idx ON organizations (parent_id, id);
CREATE INDEX organizations_roots_idx ON organizations (workspace_id, id) WHERE parent_id IS NULL;
CREATE INDEX organizations_ancestors_idx ON organizations USING gin (ancestors);

-- What organizations consume. Built-ins (`users`, `locations`, `sso_connections`) are
-- created with every workspace; workspaces define their own.
CREATE TABLE resources (
    workspace_id uuid        NOT NULL REFERENCES workspaces (id),
    key          text        NOT NULL CHECK (key ~ '^[a-z][a-z0-9_]{0,39}$'),
    name         text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 50),
    unit         text        NOT NULL CHECK (char_length(unit) BETWEEN 1 AND 30),
    kind         text        NOT NULL CHECK (kind IN ('ALLOCATED', 'METERED')),
    reset_period text        CHECK (reset_period IN ('DAY', 'MONTH')),
    built_in     boolean     NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, key),
    CHECK ((kind = 'METERED') = (reset_period IS NOT NULL))
);

INSERT INTO resources (workspace_id, key, name, unit, kind, built_in)
SELECT w.id, r.key, r.name, r.unit, 'ALLOCATED', true
  FROM workspaces w
 CROSS JOIN (VALUES ('users', 'Users', 'seats'), ('locations', 'Locations', 'locations'),
                    ('sso_connections', 'SSO connections', 'connections')) AS r (key, name, unit);

-- Caps on the subtree usage of an organization (absent = inherit, 0 = blocked).
CREATE TABLE organization_limits (
    organization_id uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    resource        text        NOT NULL,
    workspace_id    uuid        NOT NULL,
    "limit"         bigint      NOT NULL CHECK ("limit" >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, resource),
    FOREIGN KEY (workspace_id, resource) REFERENCES resources (workspace_id, key)
);

-- Usage counters per organization, resource and window. Allocated resources have one
-- window starting at the epoch; metered ones one per day or month. `subtree` is the
-- organization's own usage plus its descendants'; `limit` repeats the organization's cap
-- so that the allocation path reads usage and caps under one row lock.
CREATE TABLE usage_counters (
    organization_id uuid        NOT NULL,
    resource        text        NOT NULL,
    period_start    timestamptz NOT NULL,
    workspace_id    uuid        NOT NULL REFERENCES workspaces (id),
    direct          bigint      NOT NULL DEFAULT 0 CHECK (direct >= 0),
    subtree         bigint      NOT NULL DEFAULT 0 CHECK (subtree >= direct),
    "limit"         bigint      CHECK ("limit" >= 0),
    PRIMARY KEY (organization_id, resource, period_start)
);
CREATE INDEX usage_counters_workspace_idx ON usage_counters (workspace_id, resource, period_start);

-- The usage ledger: every recorded change, with who and which request.
CREATE TABLE usage_events (
    workspace_id    uuid        NOT NULL REFERENCES workspaces (id),
    id              uuid        NOT NULL,
    organization_id uuid        NOT NULL,
    resource        text        NOT NULL,
    period_start    timestamptz NOT NULL,
    delta           bigint      NOT NULL CHECK (delta <> 0),
    actor_id        uuid,
    request_id      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, id)
);
CREATE INDEX usage_events_organization_idx ON usage_events (organization_id, id);
