-- Integration settings (where a workspace's notifications go) and notifications (what
-- happened, each delivery to each destination, and every attempt). See
-- `domain::integrations` and `domain::notifications`.

-- Webhook endpoints. The signing secret (`whsec_…`, Standard Webhooks) is sealed with
-- AES-256-GCM under a key derived from ARCHIVE_MASTER_KEY, the endpoint id as associated
-- data: it is shown once, when the endpoint is created, and never read back by the API.
-- `event_types` holds the wire names of the subscribed types (empty: every type).
CREATE TABLE webhook_endpoints (
    id            uuid        PRIMARY KEY,
    workspace_id  uuid        NOT NULL REFERENCES workspaces (id),
    url           text        NOT NULL CHECK (octet_length(url) BETWEEN 1 AND 2048),
    event_types   text[]      NOT NULL DEFAULT '{}' CHECK (cardinality(event_types) <= 32),
    secret_sealed bytea       NOT NULL,
    created_by    uuid,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_workspace_idx ON webhook_endpoints (workspace_id, id);

-- The Slack incoming webhook of a workspace (its URL is a credential: sealed like the
-- endpoints' secrets, the workspace id as associated data; `slack_url_hint` is the masked
-- form the API shows).
CREATE TABLE integration_settings (
    workspace_id     uuid        PRIMARY KEY REFERENCES workspaces (id),
    slack_url_sealed bytea,
    slack_url_hint   text CHECK (slack_url_hint IS NULL OR char_length(slack_url_hint) <= 300),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((slack_url_sealed IS NULL) = (slack_url_hint IS NULL))
);

-- E-mail recipients per notification category (a category without a row has none).
CREATE TABLE notification_recipients (
    workspace_id uuid        NOT NULL REFERENCES workspaces (id),
    category     text        NOT NULL CHECK (category IN ('QUOTA_WARNINGS', 'SECURITY_ALERTS',
                                                          'BILLING_NOTIFICATIONS', 'APPROVAL_REQUESTS')),
    addresses    text[]      NOT NULL CHECK (cardinality(addresses) BETWEEN 1 AND 20),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, category)
);

-- What happened: the outbox, written in the transaction of the change that caused it
-- together with the job that fans it out. `dedupe_key` makes an event happen once per what
-- it is about (a quota threshold per window, a Stripe event).
CREATE TABLE notifications (
    id            uuid        PRIMARY KEY,
    workspace_id  uuid        NOT NULL REFERENCES workspaces (id),
    type          text        NOT NULL CHECK (char_length(type) BETWEEN 1 AND 100),
    category      text        NOT NULL,
    data          jsonb       NOT NULL,
    dedupe_key    text        NOT NULL CHECK (char_length(dedupe_key) BETWEEN 1 AND 500),
    created_at    timestamptz NOT NULL DEFAULT now(),
    fanned_out_at timestamptz,
    UNIQUE (workspace_id, dedupe_key)
);
CREATE INDEX notifications_created_idx ON notifications (workspace_id, created_at);

-- One notification to one destination: a webhook endpoint (`target` is its id), the Slack
-- webhook (`slack`) or an e-mail address (the address). `next_attempt_at` is when the next
-- attempt is due (its job runs then; the periodic `notification-retry` enqueues any due
-- attempt whose job went missing), NULL once the delivery has ended.
CREATE TABLE notification_deliveries (
    id              uuid        PRIMARY KEY,
    workspace_id    uuid        NOT NULL REFERENCES workspaces (id),
    notification_id uuid        NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    channel         text        NOT NULL CHECK (channel IN ('WEBHOOK', 'SLACK', 'EMAIL')),
    target          text        NOT NULL,
    destination     text        NOT NULL,
    endpoint_id     uuid,
    status          text        NOT NULL DEFAULT 'PENDING'
                                CHECK (status IN ('PENDING', 'DELIVERED', 'FAILED')),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    last_attempt_at timestamptz,
    next_attempt_at timestamptz,
    delivered_at    timestamptz,
    give_up_at      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (notification_id, channel, target),
    CHECK ((status = 'PENDING') = (next_attempt_at IS NOT NULL))
);
CREATE INDEX notification_deliveries_workspace_idx ON notification_deliveries (workspace_id, id DESC);
CREATE INDEX notification_deliveries_due_idx ON notification_deliveries (next_attempt_at)
    WHERE status = 'PENDING';

-- Every attempt of a delivery: started when claimed (a row without `finished_at` is an
-- attempt whose worker died), finished with the HTTP status or SMTP reply, or the error.
CREATE TABLE notification_attempts (
    delivery_id  uuid        NOT NULL REFERENCES notification_deliveries (id) ON DELETE CASCADE,
    number       integer     NOT NULL CHECK (number >= 1),
    workspace_id uuid        NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    duration_ms  integer,
    status_code  integer,
    error        text,
    succeeded    boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (delivery_id, number)
);
