//! End-to-end tests: HTTP against a real server and a real PostgreSQL database.

mod analytics;
mod auth;
mod billing;
mod graphiql;
mod hostile;
mod idempotency;
mod isolation;
mod jobs;
mod limits;
mod ops;
mod organizations;
mod retention;
mod roles;
mod stripe_api;
mod usage;
mod webhooks;
