-- Privacy (GDPR): consents, data exports, erasures. See `domain::gdpr` and README.md,
-- "Privacy (GDPR)".

-- Every consent decision a person made, append-only (the latest row per purpose is the
-- state; the history is the proof). `request_id` is the request that recorded it.
CREATE TABLE consents (
    user_id     uuid        NOT NULL REFERENCES users (id),
    id          uuid        NOT NULL,
    purpose     text        NOT NULL CHECK (purpose ~ '^[a-z][a-z0-9_.:-]{0,63}$'),
    version     text        NOT NULL CHECK (version ~ '^[A-Za-z0-9][A-Za-z0-9_.+-]{0,31}$'),
    granted     boolean     NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    request_id  text        CHECK (char_length(request_id) <= 128),
    PRIMARY KEY (user_id, id)
);
CREATE INDEX consents_latest_idx ON consents (user_id, purpose, id DESC);

-- History is never rewritten: rows are only appended (and deleted by an erasure).
CREATE FUNCTION consents_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'consents are append-only';
END $$;
CREATE TRIGGER consents_append_only BEFORE UPDATE ON consents
    FOR EACH ROW EXECUTE FUNCTION consents_append_only();

-- A person's own export or erasure belongs to no workspace: such a job has no workspace and
-- is visible to whoever requested it (`Query.job`).
ALTER TABLE workspace_jobs ALTER COLUMN workspace_id DROP NOT NULL;
ALTER TABLE workspace_jobs ADD CONSTRAINT workspace_jobs_has_reader
    CHECK (workspace_id IS NOT NULL OR requested_by IS NOT NULL);
CREATE INDEX workspace_jobs_personal_idx ON workspace_jobs (requested_by, job_id DESC)
    WHERE workspace_id IS NULL;

-- Data exports: one JSON document about one person, sealed in object storage under the
-- person's data key (`data_keys`, owner = the user) at `path`. `workspace_id` is the scope of
-- an export an owner requested (NULL: everything, which only the person may ask for). The
-- row exists from the request on (`PENDING`), so that an erasure finds every object,
-- even one still being written.
CREATE TABLE data_exports (
    id               uuid        PRIMARY KEY,
    user_id          uuid        NOT NULL REFERENCES users (id),
    requested_by     uuid        NOT NULL REFERENCES users (id),
    workspace_id     uuid        REFERENCES workspaces (id),
    job_id           text        NOT NULL UNIQUE,
    status           text        NOT NULL CHECK (status IN ('PENDING', 'READY', 'FAILED')),
    path             text        NOT NULL UNIQUE,
    plaintext_bytes  bigint,
    object_bytes     bigint,
    plaintext_sha256 text,
    object_sha256    text,
    truncated        boolean     NOT NULL DEFAULT false,
    error            text        CHECK (char_length(error) <= 500),
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    expires_at       timestamptz NOT NULL,
    CHECK ((status = 'READY') = (object_sha256 IS NOT NULL))
);
CREATE INDEX data_exports_user_idx ON data_exports (user_id, created_at DESC);
CREATE INDEX data_exports_requester_idx ON data_exports (requested_by, created_at DESC);
CREATE INDEX data_exports_expires_idx ON data_exports (expires_at);

-- Erasures, one per person, kept without personal data: the pseudonym that replaced them,
-- who asked (the person themself or an owner of `workspace_id`), the job, and when the data
-- was gone. The `users` row stays as a tombstone (foreign keys hold).
CREATE TABLE user_erasures (
    user_id      uuid        PRIMARY KEY REFERENCES users (id),
    pseudonym    text        NOT NULL UNIQUE CHECK (pseudonym ~ '^erased_[0-9a-f]{16}$'),
    requested_by uuid        NOT NULL REFERENCES users (id),
    workspace_id uuid        REFERENCES workspaces (id),
    job_id       text        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);

-- `doc` with every match of `pattern` (a regular expression; `(?i)` in front makes it
-- case-insensitive) in its strings and keys replaced by `replacement`, structure kept: how
-- erasure rewrites JSON.
CREATE FUNCTION gdpr_scrub_jsonb(doc jsonb, pattern text, replacement text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    CASE jsonb_typeof(doc)
    WHEN 'string' THEN
        RETURN to_jsonb(regexp_replace(doc #>> '{}', pattern, replacement, 'g'));
    WHEN 'object' THEN
        RETURN coalesce((SELECT jsonb_object_agg(regexp_replace(e.key, pattern, replacement, 'g'),
                                                 gdpr_scrub_jsonb(e.value, pattern, replacement))
                           FROM jsonb_each(doc) AS e), '{}'::jsonb);
    WHEN 'array' THEN
        RETURN coalesce((SELECT jsonb_agg(gdpr_scrub_jsonb(e.value, pattern, replacement) ORDER BY e.n)
                           FROM jsonb_array_elements(doc) WITH ORDINALITY AS e(value, n)), '[]'::jsonb);
    ELSE
        RETURN doc;
    END CASE;
END $$;
