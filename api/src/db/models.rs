//! Rows as they are stored.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::schema::{audit_events, members, organizations, resources, users, workspaces};

/// A row of `users`.
#[derive(
    Debug,
    Clone,
    Queryable,
    QueryableByName,
    Selectable,
    Identifiable,
    serde::Serialize,
    serde::Deserialize,
)]
#[diesel(table_name = users)]
pub struct UserRow {
    /// Primary key.
    pub id: Uuid,
    /// JWT `sub`; `None` until an invited person first signs in.
    pub subject: Option<String>,
    /// E-mail address.
    pub email: String,
    /// Display name.
    pub name: Option<String>,
    /// Whether the identity provider verified the e-mail.
    pub email_verified: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// A row of `workspaces`.
#[derive(
    Debug,
    Clone,
    Queryable,
    QueryableByName,
    Selectable,
    Identifiable,
    serde::Serialize,
    serde::Deserialize,
)]
#[diesel(table_name = workspaces)]
pub struct WorkspaceRow {
    /// Primary key.
    pub id: Uuid,
    /// Name, 1–50 characters.
    pub name: String,
    /// Optional description, up to 200 characters.
    pub description: Option<String>,
    /// `SINGLE`, `ASSIGNED` or `POOLED`.
    pub billing_mode: String,
    /// Creator.
    pub created_by: Uuid,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Set when deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A row of `members`.
#[derive(
    Debug,
    Clone,
    Queryable,
    Selectable,
    Identifiable,
    QueryableByName,
    serde::Serialize,
    serde::Deserialize,
)]
#[diesel(table_name = members)]
pub struct MemberRow {
    /// Primary key.
    pub id: Uuid,
    /// Workspace.
    pub workspace_id: Uuid,
    /// User (possibly a pending, invited one).
    pub user_id: Uuid,
    /// `OWNER`, `ADMIN` or `VIEWER`.
    pub role: String,
    /// Who added the member.
    pub invited_by: Option<Uuid>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// A row of `audit_events`.
#[derive(
    Debug,
    Clone,
    Queryable,
    Selectable,
    Insertable,
    QueryableByName,
    serde::Serialize,
    serde::Deserialize,
)]
#[diesel(table_name = audit_events)]
pub struct AuditEventRow {
    /// Workspace the event belongs to.
    pub workspace_id: Uuid,
    /// Primary key (time-ordered).
    pub id: Uuid,
    /// Who acted.
    pub actor_id: Option<Uuid>,
    /// What was done, e.g. `member.add`.
    pub action: String,
    /// Kind of the changed object.
    pub target_type: String,
    /// External id of the changed object.
    pub target_id: String,
    /// Summary of the change.
    pub summary: serde_json::Value,
    /// Request that caused it.
    pub request_id: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A row of `organizations`.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Queryable,
    QueryableByName,
    Selectable,
    serde::Serialize,
    serde::Deserialize,
)]
#[diesel(table_name = organizations)]
pub struct OrganizationRow {
    /// Primary key.
    pub id: Uuid,
    /// Workspace.
    pub workspace_id: Uuid,
    /// Parent; `None` for a root.
    pub parent_id: Option<Uuid>,
    /// Name, 1–50 characters.
    pub name: String,
    /// 0 for a root, at most 9.
    pub depth: i16,
    /// Root-first ancestor ids (without itself).
    pub ancestors: Vec<Uuid>,
    /// Created.
    pub created_at: super::row::Timestamp,
}

crate::text_enum! {
    /// How a resource is used.
    pub enum ResourceKind {
        /// Held until released (seats, locations, connections).
        Allocated = "ALLOCATED",
        /// Consumed and counted per window that resets.
        Metered = "METERED",
    }
}

crate::text_enum! {
    /// When a metered resource's window resets (UTC).
    pub enum ResetPeriod {
        /// Every day at 00:00 UTC.
        Day = "DAY",
        /// On the first of every month, 00:00 UTC.
        Month = "MONTH",
    }
}

/// A row of `resources`.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Queryable,
    QueryableByName,
    Selectable,
    serde::Serialize,
    serde::Deserialize,
)]
#[diesel(table_name = resources)]
pub struct ResourceRow {
    /// Workspace.
    pub workspace_id: Uuid,
    /// Key, e.g. `users`.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Unit, e.g. `seats`.
    pub unit: String,
    /// Allocated or metered.
    pub kind: ResourceKind,
    /// When a metered resource's window resets.
    pub reset_period: Option<ResetPeriod>,
    /// One of the three built-ins.
    pub built_in: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
}
