//! End-to-end tests: HTTP against a real server and a real PostgreSQL database.

mod analytics;
mod archives;
mod auth;
mod billing;
mod gdpr;
mod graphiql;
mod hostile;
mod idempotency;
mod isolation;
mod jobs;
mod limits;
mod notifications;
mod ops;
mod organizations;
mod retention;
mod roles;
mod stripe_api;
mod usage;
mod webhooks;
