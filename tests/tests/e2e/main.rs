//! End-to-end tests: HTTP against a real server and a real PostgreSQL database.

mod auth;
mod graphiql;
mod hostile;
mod idempotency;
mod isolation;
mod limits;
mod ops;
mod organizations;
mod roles;
mod usage;
mod webhooks;
