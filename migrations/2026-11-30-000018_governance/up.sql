-- Workspace governance (issue 13): policies and security settings the gateway enforces,
-- quotas, API keys (service accounts), approval workflows, templates and the shared rate
-- limit counters.

-- One row per workspace that changed anything from the defaults (a missing row means every
-- default: nothing is enforced). The gateway caches the row per process (`GOVERNANCE_CACHE_MS`).
CREATE TABLE workspace_settings (
    workspace_id                  uuid        PRIMARY KEY REFERENCES workspaces (id),
    -- Policy.
    mfa_required                  boolean     NOT NULL DEFAULT false,
    session_timeout_minutes       integer     CHECK (session_timeout_minutes BETWEEN 1 AND 525600),
    allowed_email_domains         text[]      NOT NULL DEFAULT '{}',
    blocked_email_domains         text[]      NOT NULL DEFAULT '{}',
    api_keys_allowed              boolean     NOT NULL DEFAULT true,
    api_key_max_lifetime_days     integer     CHECK (api_key_max_lifetime_days BETWEEN 1 AND 3650),
    api_key_max_count             integer     CHECK (api_key_max_count BETWEEN 0 AND 1000),
    external_integrations_allowed boolean     NOT NULL DEFAULT true,
    allowed_upload_types          text[]      NOT NULL DEFAULT '{}',
    blocked_upload_types          text[]      NOT NULL DEFAULT '{}',
    approval_required_for         text[]      NOT NULL DEFAULT '{}',
    approval_expiry_hours         integer     NOT NULL DEFAULT 72 CHECK (approval_expiry_hours BETWEEN 1 AND 720),
    audit_billing_reads           boolean     NOT NULL DEFAULT false,
    -- Security.
    ip_allow_list                 text[]      NOT NULL DEFAULT '{}',
    require_tls                   boolean     NOT NULL DEFAULT false,
    rate_limit_per_minute         integer     CHECK (rate_limit_per_minute BETWEEN 1 AND 1000000),
    api_key_rate_limit_per_minute integer     CHECK (api_key_rate_limit_per_minute BETWEEN 1 AND 1000000),
    -- Declared requirements this service cannot enforce itself (stored and returned).
    encryption_at_rest_required   boolean     NOT NULL DEFAULT false,
    vpn_required                  boolean     NOT NULL DEFAULT false,
    updated_at                    timestamptz NOT NULL DEFAULT now()
);

-- Workspace-wide quotas: a limit on the workspace as a whole, per resource key (a resource
-- of the workspace, or one of the quota keys of `domain::governance::quotas`).
CREATE TABLE workspace_quotas (
    workspace_id uuid        NOT NULL REFERENCES workspaces (id),
    resource     text        NOT NULL CHECK (resource ~ '^[a-z][a-z0-9_]{0,39}$'),
    quota        bigint      NOT NULL CHECK (quota >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, resource)
);

-- What the workspace as a whole has used of a quota in a window (metered resources) or in all
-- (allocated: period_start = 'epoch'), changed in the transaction of each allocation after the
-- organizations' and pools' counters, so concurrent allocations never overshoot.
CREATE TABLE quota_counters (
    workspace_id uuid        NOT NULL REFERENCES workspaces (id),
    resource     text        NOT NULL,
    period_start timestamptz NOT NULL,
    used         bigint      NOT NULL CHECK (used >= 0),
    PRIMARY KEY (workspace_id, resource, period_start)
);

-- Service accounts are users that no token can ever sign in as: provisioning skips them.
ALTER TABLE users ADD COLUMN service_account boolean NOT NULL DEFAULT false;

-- API keys: `Authorization: Bearer wsk_<prefix>_<secret>`. Only the SHA-256 of the whole key
-- is stored. Each key acts as its own service-account user, a member of its workspace only.
CREATE TABLE api_keys (
    id           uuid        PRIMARY KEY,
    workspace_id uuid        NOT NULL REFERENCES workspaces (id),
    user_id      uuid        NOT NULL UNIQUE REFERENCES users (id),
    name         text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    role         text        NOT NULL CHECK (role IN ('OWNER', 'ADMIN', 'VIEWER')),
    prefix       text        NOT NULL UNIQUE,
    secret_hash  bytea       NOT NULL,
    created_by   uuid        REFERENCES users (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    revoked_by   uuid        REFERENCES users (id),
    last_used_at timestamptz,
    -- Set while the key waits for a second person's approval (CREATE_API_KEY): such a key
    -- authenticates nothing until the request is approved, and is revoked if it is not.
    pending_approval_id uuid
);
CREATE INDEX api_keys_workspace_idx ON api_keys (workspace_id, created_at, id);

-- Sensitive mutations held for a second person's approval. `operation` and `input` are the
-- original mutation and its (validated) input, executed once on approval.
CREATE TABLE approval_requests (
    id           uuid        PRIMARY KEY,
    workspace_id uuid        NOT NULL REFERENCES workspaces (id),
    action       text        NOT NULL,
    operation    text        NOT NULL,
    input        jsonb       NOT NULL,
    target_type  text,
    target_id    text,
    status       text        NOT NULL DEFAULT 'PENDING'
                             CHECK (status IN ('PENDING', 'APPROVED', 'REJECTED', 'EXPIRED', 'FAILED')),
    requested_by uuid        NOT NULL REFERENCES users (id),
    decided_by   uuid        REFERENCES users (id),
    reason       text,
    result       jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    decided_at   timestamptz
);
CREATE INDEX approval_requests_workspace_idx ON approval_requests (workspace_id, created_at, id);
CREATE INDEX approval_requests_pending_idx ON approval_requests (expires_at) WHERE status = 'PENDING';

-- Custom templates a workspace saved from its settings (built-in templates live in the code).
CREATE TABLE workspace_templates (
    id           uuid        PRIMARY KEY,
    workspace_id uuid        NOT NULL REFERENCES workspaces (id),
    key          text        NOT NULL CHECK (key ~ '^[A-Z][A-Z0-9_]{0,39}$'),
    name         text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    description  text        CHECK (description IS NULL OR char_length(description) <= 500),
    public       boolean     NOT NULL DEFAULT false,
    settings     jsonb       NOT NULL,
    created_by   uuid        REFERENCES users (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, key)
);

-- Rate limit windows shared by every `api` process: each leases part of a window's budget
-- at a time (`domain::governance::rate_limit`). Unlogged: a crash of PostgreSQL resets the
-- current windows, which only forgives one window's requests.
CREATE UNLOGGED TABLE rate_limit_windows (
    scope        uuid        NOT NULL,
    window_start timestamptz NOT NULL,
    used         bigint      NOT NULL CHECK (used >= 0),
    -- What the last lease took (computed from the locked row, returned to the leaser).
    granted      bigint      NOT NULL CHECK (granted >= 0),
    PRIMARY KEY (scope, window_start)
);
