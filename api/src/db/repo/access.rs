//! An object of a workspace and the caller's role there, in one statement: another
//! workspace's object costs exactly what a missing one costs (`domain::access`).

use diesel::prelude::*;
use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::cached::CachedExt;

/// The kinds of objects that belong to one workspace and are named by id in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owned {
    /// `organizations`.
    Organization,
    /// `archives`.
    Archive,
    /// `billing_accounts`.
    BillingAccount,
    /// `payment_methods`.
    PaymentMethod,
    /// `subscriptions`.
    Subscription,
    /// `webhook_endpoints`.
    WebhookEndpoint,
    /// `approval_requests`.
    ApprovalRequest,
    /// `api_keys`.
    ApiKey,
    /// `workspace_templates` (custom ones: built-ins belong to no workspace).
    Template,
    /// `members` of people (an API key's membership is reached through the key).
    Member,
}

/// The statement of each kind: the object's workspace (live) and the caller's (`$2`) role in
/// it, or no row.
macro_rules! access_sql {
    ($table:literal) => {
        concat!(
            "SELECT o.workspace_id, me.role FROM ",
            $table,
            " o JOIN workspaces w ON w.id = o.workspace_id AND w.deleted_at IS NULL
               JOIN members me ON me.workspace_id = o.workspace_id AND me.user_id = $2
              WHERE o.id = $1"
        )
    };
}

impl Owned {
    fn sql(self) -> &'static str {
        match self {
            Owned::Organization => access_sql!("organizations"),
            Owned::Archive => access_sql!("archives"),
            Owned::BillingAccount => access_sql!("billing_accounts"),
            Owned::PaymentMethod => access_sql!("payment_methods"),
            Owned::Subscription => access_sql!("subscriptions"),
            Owned::WebhookEndpoint => access_sql!("webhook_endpoints"),
            Owned::ApprovalRequest => access_sql!("approval_requests"),
            Owned::ApiKey => access_sql!("api_keys"),
            Owned::Template => access_sql!("workspace_templates"),
            Owned::Member => {
                "SELECT o.workspace_id, me.role FROM members o
                   JOIN users u ON u.id = o.user_id AND NOT u.service_account
                   JOIN workspaces w ON w.id = o.workspace_id AND w.deleted_at IS NULL
                   JOIN members me ON me.workspace_id = o.workspace_id AND me.user_id = $2
                  WHERE o.id = $1"
            }
        }
    }
}

/// The workspace of object `id` of `kind` and the role of `user` there, when the object
/// exists in a live workspace `user` belongs to.
pub async fn role_for(
    conn: &mut AsyncPgConnection,
    kind: Owned,
    id: Uuid,
    user: Uuid,
) -> QueryResult<Option<(Uuid, String)>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = SqlUuid)]
        workspace_id: Uuid,
        #[diesel(sql_type = Text)]
        role: String,
    }
    let row: Option<Row> = diesel::sql_query(kind.sql())
        .bind::<SqlUuid, _>(id)
        .bind::<SqlUuid, _>(user)
        .cached()
        .get_result(conn)
        .await
        .optional()?;
    Ok(row.map(|r| (r.workspace_id, r.role)))
}
