-- A replay returns what the first request returned (Stripe's semantics): the rendered JSON
-- of the mutation field, stored as text (jsonb would reorder its keys) right after the
-- response exists. `rendered_at` marks the rendering as settled: set with `rendered` NULL
-- when the first response held errors, so that a replay resolves the payload afresh.
ALTER TABLE idempotency_keys
    ADD COLUMN rendered    text,
    ADD COLUMN rendered_at timestamptz;
