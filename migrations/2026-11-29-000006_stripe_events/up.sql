-- Stripe events as delivered to POST /webhooks/stripe, stored once per event id (Stripe
-- delivers at least once, sometimes twice at the same moment).
CREATE TABLE stripe_events (
    id text PRIMARY KEY,
    type text NOT NULL,
    api_version text,
    livemode boolean NOT NULL,
    -- Stripe's `created` (seconds since the epoch, as a time).
    created_at timestamptz NOT NULL,
    payload jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    CHECK (length(id) BETWEEN 1 AND 255),
    CHECK (length(type) BETWEEN 1 AND 255)
);

CREATE INDEX stripe_events_unprocessed ON stripe_events (received_at) WHERE processed_at IS NULL;
