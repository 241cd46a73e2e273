//! End-to-end tests: HTTP against a real server and a real PostgreSQL database.

mod analytics;
mod api_keys;
mod approvals;
mod archives;
mod auth;
mod billing;
mod gdpr;
mod governance_gate;
mod governance_settings;
mod graphiql;
mod hostile;
mod idempotency;
mod invitations;
mod isolation;
mod jobs;
mod limits;
mod notifications;
mod ops;
mod organizations;
mod quotas;
mod retention;
mod roles;
mod stripe_api;
mod templates;
mod usage;
mod webhooks;
