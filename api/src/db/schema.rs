// @generated automatically by Diesel CLI.

diesel::table! {
    audit_events (workspace_id, id) {
        workspace_id -> Uuid,
        id -> Uuid,
        actor_id -> Nullable<Uuid>,
        action -> Text,
        target_type -> Text,
        target_id -> Text,
        summary -> Jsonb,
        request_id -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    idempotency_keys (caller_id, key) {
        caller_id -> Uuid,
        key -> Text,
        operation -> Text,
        fingerprint -> Text,
        response -> Nullable<Jsonb>,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        rendered -> Nullable<Text>,
        rendered_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    members (id) {
        id -> Uuid,
        workspace_id -> Uuid,
        user_id -> Uuid,
        role -> Text,
        invited_by -> Nullable<Uuid>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    organization_limits (organization_id, resource) {
        organization_id -> Uuid,
        resource -> Text,
        workspace_id -> Uuid,
        limit -> Int8,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    organizations (id) {
        id -> Uuid,
        workspace_id -> Uuid,
        parent_id -> Nullable<Uuid>,
        name -> Text,
        depth -> Int2,
        ancestors -> Array<Uuid>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    resources (workspace_id, key) {
        workspace_id -> Uuid,
        key -> Text,
        name -> Text,
        unit -> Text,
        kind -> Text,
        reset_period -> Nullable<Text>,
        built_in -> Bool,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    usage_counters (organization_id, resource, period_start) {
        organization_id -> Uuid,
        resource -> Text,
        period_start -> Timestamptz,
        workspace_id -> Uuid,
        direct -> Int8,
        subtree -> Int8,
        limit -> Nullable<Int8>,
    }
}

diesel::table! {
    usage_events (workspace_id, id) {
        workspace_id -> Uuid,
        id -> Uuid,
        organization_id -> Uuid,
        resource -> Text,
        period_start -> Timestamptz,
        delta -> Int8,
        actor_id -> Nullable<Uuid>,
        request_id -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    users (id) {
        id -> Uuid,
        subject -> Nullable<Text>,
        email -> Text,
        name -> Nullable<Text>,
        email_verified -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        service_account -> Bool,
    }
}

diesel::table! {
    workspaces (id) {
        id -> Uuid,
        name -> Text,
        description -> Nullable<Text>,
        billing_mode -> Text,
        created_by -> Uuid,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(audit_events -> workspaces (workspace_id));
diesel::joinable!(members -> workspaces (workspace_id));
diesel::joinable!(workspaces -> users (created_by));

diesel::allow_tables_to_appear_in_same_query!(
    audit_events,
    idempotency_keys,
    members,
    users,
    workspaces,
);

diesel::table! {
    billing_accounts (id) {
        id -> Uuid,
        workspace_id -> Uuid,
        state -> Text,
        stripe_customer_id -> Nullable<Text>,
        name -> Text,
        email -> Text,
        phone -> Nullable<Text>,
        description -> Nullable<Text>,
        currency -> Text,
        address -> Nullable<Jsonb>,
        default_payment_method -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    payment_methods (id) {
        id -> Uuid,
        workspace_id -> Uuid,
        billing_account_id -> Uuid,
        stripe_payment_method_id -> Text,
        kind -> Text,
        brand -> Nullable<Text>,
        last4 -> Nullable<Text>,
        exp_month -> Nullable<Int4>,
        exp_year -> Nullable<Int4>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    subscriptions (id) {
        id -> Uuid,
        workspace_id -> Uuid,
        billing_account_id -> Uuid,
        stripe_subscription_id -> Nullable<Text>,
        plan -> Text,
        status -> Text,
        cancel_at_period_end -> Bool,
        current_period_start -> Nullable<Timestamptz>,
        current_period_end -> Nullable<Timestamptz>,
        trial_end -> Nullable<Timestamptz>,
        canceled_at -> Nullable<Timestamptz>,
        metadata -> Jsonb,
        stripe_seen_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    stripe_intents (id) {
        id -> Uuid,
        workspace_id -> Uuid,
        caller_id -> Nullable<Uuid>,
        client_key -> Nullable<Text>,
        operation -> Text,
        fingerprint -> Text,
        stripe_key -> Text,
        target_id -> Uuid,
        request -> Jsonb,
        state -> Text,
        result -> Nullable<Jsonb>,
        error -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}
