ALTER TABLE idempotency_keys
    DROP COLUMN rendered_at,
    DROP COLUMN rendered;
