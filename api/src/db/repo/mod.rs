//! Repositories: every SQL statement of the system lives here. Functions take a
//! connection (not the pool) so that they compose inside one transaction.

pub mod access;
pub mod analytics;
pub mod api_keys;
pub mod api_usage;
pub mod approvals;
pub mod archives;
pub mod audit;
pub mod billing;
pub mod consents;
pub mod data_exports;
pub mod data_keys;
pub mod erasure;
pub mod governance;
pub mod idempotency;
pub mod integrations;
pub mod invitations;
pub mod job_stats;
pub mod jobs;
pub mod members;
pub mod meters;
pub mod notifications;
pub mod organizations;
pub mod quotas;
pub mod resources;
pub mod retention;
pub mod stripe_events;
pub mod templates;
pub mod usage;
pub mod users;
pub mod workspace_jobs;
pub mod workspaces;

/// A keyset page request: at most `limit` rows after the row with id `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Page {
    /// Rows to return (the caller asks one more to learn whether there is a next page).
    pub limit: i64,
    /// Exclusive lower bound (or upper, for newest-first lists) on the id.
    pub after: Option<uuid::Uuid>,
}

impl Page {
    /// Rows the client asked for (`limit` includes one extra to learn about a next page).
    pub fn size(&self) -> usize {
        usize::try_from(self.limit - 1).unwrap_or(0)
    }
}
