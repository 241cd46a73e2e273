-- Users are provisioned just in time from a verified JWT (`subject` = the token's `sub`).
-- An invited person who has not signed in yet is a user row with `subject` NULL: their
-- first sign-in with that (verified) e-mail claims it, and with it every pending membership.
CREATE TABLE users (
    id             uuid        PRIMARY KEY,
    subject        text        UNIQUE,
    email          text        NOT NULL,
    name           text,
    email_verified boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- One placeholder (invited, never signed in) user per e-mail address.
CREATE UNIQUE INDEX users_pending_email_key ON users (lower(email)) WHERE subject IS NULL;
CREATE INDEX users_email_idx ON users (lower(email));

CREATE TABLE workspaces (
    id           uuid        PRIMARY KEY,
    name         text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 50),
    description  text        CHECK (description IS NULL OR char_length(description) <= 200),
    billing_mode text        NOT NULL CHECK (billing_mode IN ('SINGLE', 'ASSIGNED', 'POOLED')),
    created_by   uuid        NOT NULL REFERENCES users (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- Deleted workspaces are kept (invisible) so that their audit trail survives;
    -- the retention jobs of the data-lifecycle work purge them later.
    deleted_at   timestamptz
);

CREATE TABLE members (
    id           uuid        PRIMARY KEY,
    workspace_id uuid        NOT NULL REFERENCES workspaces (id),
    user_id      uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role         text        NOT NULL CHECK (role IN ('OWNER', 'ADMIN', 'VIEWER')),
    invited_by   uuid        REFERENCES users (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, user_id)
);
CREATE INDEX members_user_idx ON members (user_id, workspace_id);
CREATE UNIQUE INDEX members_workspace_id_idx ON members (workspace_id, id);

-- Append-only trail of every successful mutation, written in the mutation's transaction.
CREATE TABLE audit_events (
    workspace_id uuid        NOT NULL REFERENCES workspaces (id),
    id           uuid        NOT NULL,
    actor_id     uuid        REFERENCES users (id),
    action       text        NOT NULL,
    target_type  text        NOT NULL,
    target_id    text        NOT NULL,
    summary      jsonb       NOT NULL,
    request_id   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, id)
);

-- Stripe-style idempotency keys, scoped to the caller. The row is inserted before the
-- mutation runs (a concurrent repeat waits on it) and completed in the same transaction
-- as the mutation's effect, so a crash leaves neither.
CREATE TABLE idempotency_keys (
    caller_id   uuid        NOT NULL,
    key         text        NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    operation   text        NOT NULL,
    fingerprint text        NOT NULL,
    response    jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (caller_id, key)
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);
