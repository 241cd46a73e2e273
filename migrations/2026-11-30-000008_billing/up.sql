-- Billing: accounts (Stripe customers), payment methods, subscriptions and their items,
-- invoices, the capacity pools that subscriptions fund, and the recovery points of calls
-- to Stripe. Rows mirror Stripe objects; the worker keeps them in step with Stripe's events.

-- A billing account is a Stripe customer. It is created `PENDING` (the customer is being
-- created: the row holds the account's place under the mode's cap) and becomes `ACTIVE`
-- when Stripe answers; `DELETED` accounts stay for their invoices.
CREATE TABLE billing_accounts (
    id                     uuid        PRIMARY KEY,
    workspace_id           uuid        NOT NULL REFERENCES workspaces (id),
    state                  text        NOT NULL CHECK (state IN ('PENDING', 'ACTIVE', 'DELETED')),
    stripe_customer_id     text        UNIQUE CHECK (char_length(stripe_customer_id) BETWEEN 1 AND 255),
    name                   text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    email                  text        NOT NULL CHECK (char_length(email) BETWEEN 3 AND 150),
    phone                  text        CHECK (char_length(phone) BETWEEN 1 AND 50),
    description            text        CHECK (char_length(description) BETWEEN 1 AND 200),
    currency               text        NOT NULL CHECK (currency IN ('usd', 'eur', 'gbp', 'aud', 'zar')),
    address                jsonb,
    -- The customer's `invoice_settings.default_payment_method`.
    default_payment_method text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    deleted_at             timestamptz,
    CHECK ((state = 'PENDING') = (stripe_customer_id IS NULL))
);
CREATE UNIQUE INDEX billing_accounts_workspace_id_idx ON billing_accounts (workspace_id, id);
CREATE INDEX billing_accounts_live_idx ON billing_accounts (workspace_id, created_at, id)
    WHERE state <> 'DELETED';

-- In the ASSIGNED mode every root organization names the account its tree draws from.
ALTER TABLE organizations ADD COLUMN billing_account_id uuid REFERENCES billing_accounts (id);
ALTER TABLE organizations ADD CONSTRAINT organizations_account_on_roots
    CHECK (billing_account_id IS NULL OR parent_id IS NULL);
CREATE INDEX organizations_billing_account_idx ON organizations (billing_account_id)
    WHERE billing_account_id IS NOT NULL;

-- Payment methods attached to an account's customer.
CREATE TABLE payment_methods (
    id                       uuid        PRIMARY KEY,
    workspace_id             uuid        NOT NULL REFERENCES workspaces (id),
    billing_account_id       uuid        NOT NULL REFERENCES billing_accounts (id),
    stripe_payment_method_id text        NOT NULL UNIQUE CHECK (char_length(stripe_payment_method_id) BETWEEN 1 AND 255),
    kind                     text        NOT NULL,
    brand                    text,
    last4                    text,
    exp_month                integer,
    exp_year                 integer,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_methods_account_idx ON payment_methods (billing_account_id, created_at, id);

-- Subscriptions. `stripe_subscription_id` is NULL while Stripe is being asked to create it.
CREATE TABLE subscriptions (
    id                     uuid        PRIMARY KEY,
    workspace_id           uuid        NOT NULL REFERENCES workspaces (id),
    billing_account_id     uuid        NOT NULL REFERENCES billing_accounts (id),
    stripe_subscription_id text        UNIQUE CHECK (char_length(stripe_subscription_id) BETWEEN 1 AND 255),
    plan                   text        NOT NULL CHECK (plan IN ('STARTER', 'ENTERPRISE', 'CUSTOM')),
    status                 text        NOT NULL CHECK (status IN ('PENDING', 'TRIALING', 'ACTIVE', 'PAST_DUE',
                                            'CANCELED', 'UNPAID', 'INCOMPLETE', 'INCOMPLETE_EXPIRED', 'PAUSED')),
    cancel_at_period_end   boolean     NOT NULL DEFAULT false,
    current_period_start   timestamptz,
    current_period_end     timestamptz,
    trial_end              timestamptz,
    canceled_at            timestamptz,
    metadata               jsonb       NOT NULL DEFAULT '{}',
    -- The state of the Stripe object last applied (for ordering events of one object).
    stripe_seen_at         timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'PENDING') = (stripe_subscription_id IS NULL))
);
CREATE UNIQUE INDEX subscriptions_workspace_id_idx ON subscriptions (workspace_id, id);
CREATE INDEX subscriptions_account_idx ON subscriptions (billing_account_id, created_at, id);

-- The items of a subscription as Stripe has them (one per price) ...
CREATE TABLE subscription_items (
    subscription_id uuid   NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    stripe_price_id text   NOT NULL,
    stripe_item_id  text,
    quantity        bigint NOT NULL CHECK (quantity >= 0),
    PRIMARY KEY (subscription_id, stripe_price_id)
);

-- ... and the capacity the subscription grants per resource. An increase applies at once;
-- a decrease only when Stripe reports the subscription's next period.
CREATE TABLE subscription_capacities (
    subscription_id uuid   NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    resource        text   NOT NULL,
    quantity        bigint NOT NULL CHECK (quantity >= 0),
    PRIMARY KEY (subscription_id, resource)
);

-- Invoices, newest first per account.
CREATE TABLE invoices (
    id                     uuid        PRIMARY KEY,
    workspace_id           uuid        NOT NULL REFERENCES workspaces (id),
    billing_account_id     uuid        NOT NULL REFERENCES billing_accounts (id),
    stripe_invoice_id      text        NOT NULL UNIQUE,
    stripe_subscription_id text,
    status                 text,
    number                 text,
    amount_due             bigint      NOT NULL,
    amount_paid            bigint      NOT NULL,
    amount_remaining       bigint      NOT NULL,
    subtotal               bigint      NOT NULL,
    total                  bigint      NOT NULL,
    currency               text        NOT NULL,
    hosted_invoice_url     text,
    invoice_pdf            text,
    lines                  jsonb       NOT NULL DEFAULT '[]',
    period_start           timestamptz,
    period_end             timestamptz,
    stripe_created         timestamptz NOT NULL,
    -- Status rank of the state last applied: a late event never moves an invoice back.
    status_rank            smallint    NOT NULL DEFAULT 0,
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoices_account_idx ON invoices (billing_account_id, stripe_created DESC, id DESC);

-- The capacity of each pool per resource: the sum of its subscriptions' capacities. A pool
-- is the workspace (SINGLE and POOLED modes; pool id = workspace id) or a billing account
-- (ASSIGNED; pool id = account id).
CREATE TABLE pool_capacities (
    pool_id      uuid   NOT NULL,
    resource     text   NOT NULL,
    workspace_id uuid   NOT NULL REFERENCES workspaces (id),
    capacity     bigint NOT NULL CHECK (capacity >= 0),
    PRIMARY KEY (pool_id, resource)
);

-- What the organizations of a pool use, per resource and window, with the pool's capacity
-- repeated so that an allocation checks it under the row's lock (like usage_counters).
CREATE TABLE pool_counters (
    pool_id      uuid        NOT NULL,
    resource     text        NOT NULL,
    period_start timestamptz NOT NULL,
    workspace_id uuid        NOT NULL REFERENCES workspaces (id),
    used         bigint      NOT NULL CHECK (used >= 0),
    capacity     bigint      NOT NULL CHECK (capacity >= 0),
    PRIMARY KEY (pool_id, resource, period_start)
);
CREATE INDEX pool_counters_workspace_idx ON pool_counters (workspace_id);

-- Recovery points of calls that change something in Stripe: the intent is stored (with the
-- Stripe idempotency key) before the call and completed with its result after it; a crash
-- in between is finished by the `billing-intents` job with the same key.
CREATE TABLE stripe_intents (
    id           uuid        PRIMARY KEY,
    workspace_id uuid        NOT NULL REFERENCES workspaces (id),
    caller_id    uuid,
    client_key   text,
    operation    text        NOT NULL,
    fingerprint  text        NOT NULL,
    stripe_key   text        NOT NULL UNIQUE,
    target_id    uuid        NOT NULL,
    request      jsonb       NOT NULL,
    state        text        NOT NULL CHECK (state IN ('PENDING', 'DONE', 'FAILED')),
    result       jsonb,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX stripe_intents_client_key_idx ON stripe_intents (caller_id, client_key)
    WHERE client_key IS NOT NULL;
CREATE INDEX stripe_intents_pending_idx ON stripe_intents (created_at) WHERE state = 'PENDING';
