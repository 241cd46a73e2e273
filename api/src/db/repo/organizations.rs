//! Organizations: the tree inside a workspace.

use crate::db::cached::CachedExt;
use std::sync::LazyLock;

use crate::db::row::Timestamp;
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Nullable, SmallInt, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::Page;
use crate::db::models::OrganizationRow;
use crate::db::schema::organizations;

/// Inserts an organization.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    workspace: Uuid,
    parent: Option<Uuid>,
    name: &str,
    ancestors: &[Uuid],
) -> QueryResult<OrganizationRow> {
    diesel::insert_into(organizations::table)
        .values((
            organizations::id.eq(id),
            organizations::workspace_id.eq(workspace),
            organizations::parent_id.eq(parent),
            organizations::name.eq(name),
            organizations::depth.eq(ancestors.len() as i16),
            organizations::ancestors.eq(ancestors),
        ))
        .returning(OrganizationRow::as_returning())
        .get_result(conn)
        .await
}

/// Organizations by id, in any order.
pub async fn find_many(
    conn: &AsyncPgConnection,
    ids: &[Uuid],
) -> QueryResult<Vec<OrganizationRow>> {
    organizations::table
        .filter(organizations::id.eq_any(ids))
        .select(OrganizationRow::as_select())
        .load(&mut { conn })
        .await
}

/// Organizations by id that `user` may see (a member of their live workspace), in any
/// order. One statement answers "may I see it" and "what is it" together, so that an id of
/// another workspace costs exactly what a missing id costs.
pub async fn find_visible(
    conn: &AsyncPgConnection,
    ids: &[Uuid],
    user: Uuid,
) -> QueryResult<Vec<OrganizationRow>> {
    diesel::sql_query(
        "SELECT o.* FROM organizations o
           JOIN workspaces w ON w.id = o.workspace_id AND w.deleted_at IS NULL
           JOIN members m ON m.workspace_id = o.workspace_id AND m.user_id = $2
          WHERE o.id = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<SqlUuid>, _>(ids)
    .bind::<SqlUuid, _>(user)
    .cached()
    .load(&mut { conn })
    .await
}

/// Reads an organization and holds it against moves and deletion (`FOR KEY SHARE`) for the
/// rest of the transaction, so that its ancestor path stays true while usage is applied.
pub async fn find_key_share(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<OrganizationRow>> {
    organizations::table
        .find(id)
        .select(OrganizationRow::as_select())
        .for_key_share()
        .first(conn)
        .await
        .optional()
}

/// Locks an organization and its whole subtree (`FOR UPDATE`, in id order); returns them.
pub async fn lock_subtree(
    conn: &mut AsyncPgConnection,
    root: Uuid,
) -> QueryResult<Vec<OrganizationRow>> {
    diesel::sql_query(
        "SELECT * FROM organizations WHERE id = $1 OR ancestors @> ARRAY[$1]::uuid[] ORDER BY id FOR UPDATE",
    )
    .bind::<SqlUuid, _>(root)
    .cached()
    .load(conn)
    .await
}

/// Organizations in a workspace.
pub async fn count_in_workspace(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<i64> {
    organizations::table
        .filter(organizations::workspace_id.eq(ws))
        .count()
        .get_result(conn)
        .await
}

/// Direct children of an organization.
pub async fn count_children(conn: &mut AsyncPgConnection, parent: Uuid) -> QueryResult<i64> {
    organizations::table
        .filter(organizations::parent_id.eq(parent))
        .count()
        .get_result(conn)
        .await
}

/// One page of a workspace's organizations (or only its roots), oldest first.
pub async fn page_for_workspace(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    roots_only: bool,
    page: Page,
) -> QueryResult<Vec<OrganizationRow>> {
    let mut q = organizations::table
        .filter(organizations::workspace_id.eq(ws))
        .select(OrganizationRow::as_select())
        .order(organizations::id.asc())
        .limit(page.limit)
        .into_boxed();
    if roots_only {
        q = q.filter(organizations::parent_id.is_null());
    }
    if let Some(after) = page.after {
        q = q.filter(organizations::id.gt(after));
    }
    q.load(conn).await
}

/// The statement of a children page for several parents, selecting `cols`: for each parent
/// (unnested from `$1`), an index range scan of `(parent_id, id)` that stops after the page.
/// `COALESCE` keeps the cursor an index bound in the generic plan PostgreSQL settles on
/// (`$2 IS NULL OR id > $2` would make it a filter over every child).
fn children_sql(cols: &str) -> String {
    format!(
        "SELECT {cols}
           FROM unnest($1::uuid[]) AS p(parent)
          CROSS JOIN LATERAL (
                SELECT * FROM organizations o
                 WHERE o.parent_id = p.parent
                   AND o.id > COALESCE($2, '00000000-0000-0000-0000-000000000000'::uuid)
                 ORDER BY o.id LIMIT $3
          ) c"
    )
}

/// Pages of children of several organizations in one statement.
pub async fn children_pages(
    conn: &mut AsyncPgConnection,
    parents: &[Uuid],
    page: Page,
) -> QueryResult<Vec<OrganizationRow>> {
    static SQL: LazyLock<String> = LazyLock::new(|| children_sql("c.*"));
    diesel::sql_query(SQL.as_str())
        .bind::<Array<SqlUuid>, _>(parents)
        .bind::<Nullable<SqlUuid>, _>(page.after)
        .bind::<BigInt, _>(page.limit)
        .cached()
        .load(conn)
        .await
}

crate::positional_row! {
    /// The columns of a child that its parent does not determine (its workspace, depth and
    /// ancestor path follow from the parent's).
    pub struct ChildRow {
        /// Primary key.
        id: Uuid = SqlUuid,
        /// Parent.
        parent_id: Uuid = SqlUuid,
        /// Name.
        name: String = Text,
        /// Created.
        created_at: Timestamp = Timestamptz,
    }
}

impl ChildRow {
    /// The full row, given its parent's.
    pub fn under(self, parent: &OrganizationRow) -> OrganizationRow {
        let mut ancestors = Vec::with_capacity(parent.ancestors.len() + 1);
        ancestors.extend_from_slice(&parent.ancestors);
        ancestors.push(parent.id);
        OrganizationRow {
            id: self.id,
            workspace_id: parent.workspace_id,
            parent_id: Some(self.parent_id),
            name: self.name,
            depth: parent.depth + 1,
            ancestors,
            created_at: self.created_at,
        }
    }
}

/// Like `children_pages`, without the columns the parents determine.
pub async fn child_rows(
    conn: &AsyncPgConnection,
    parents: &[Uuid],
    page: Page,
) -> QueryResult<Vec<ChildRow>> {
    static SQL: LazyLock<String> = LazyLock::new(|| children_sql(&ChildRow::select_list()));
    diesel::sql_query(SQL.as_str())
        .bind::<Array<SqlUuid>, _>(parents)
        .bind::<Nullable<SqlUuid>, _>(page.after)
        .bind::<BigInt, _>(page.limit)
        .cached()
        .load(&mut { conn })
        .await
}

/// A descendant row with the ancestor it was fetched for.
#[derive(QueryableByName)]
pub struct DescendantRow {
    /// The organization whose descendants were asked for.
    #[diesel(sql_type = SqlUuid)]
    pub of: Uuid,
    /// The descendant.
    #[diesel(embed)]
    pub org: OrganizationRow,
}

/// Pages of descendants (any depth, in id order) of several organizations in one statement.
pub async fn descendant_pages(
    conn: &mut AsyncPgConnection,
    roots: &[Uuid],
    page: Page,
) -> QueryResult<Vec<DescendantRow>> {
    diesel::sql_query(
        "SELECT p.id AS of, d.* FROM unnest($1::uuid[]) AS p(id)
         CROSS JOIN LATERAL (
            SELECT * FROM organizations o
             WHERE o.ancestors @> ARRAY[p.id] AND ($2::uuid IS NULL OR o.id > $2)
             ORDER BY o.id LIMIT $3
         ) d",
    )
    .bind::<Array<SqlUuid>, _>(roots)
    .bind::<Nullable<SqlUuid>, _>(page.after)
    .bind::<BigInt, _>(page.limit)
    .cached()
    .load(conn)
    .await
}

/// Renames an organization.
pub async fn rename(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    name: &str,
) -> QueryResult<OrganizationRow> {
    diesel::update(organizations::table.find(id))
        .set((
            organizations::name.eq(name),
            organizations::updated_at.eq(diesel::dsl::now),
        ))
        .returning(OrganizationRow::as_returning())
        .get_result(conn)
        .await
}

/// Re-parents `root`: its path becomes `new_prefix` and every descendant's path is rewritten
/// (the part below `root` is kept). `old_depth` is the root's depth before the move.
pub async fn move_subtree(
    conn: &mut AsyncPgConnection,
    root: Uuid,
    new_parent: Option<Uuid>,
    new_prefix: &[Uuid],
    old_depth: i16,
) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE organizations SET
            parent_id = CASE WHEN id = $1 THEN $2 ELSE parent_id END,
            ancestors = $3::uuid[] || ancestors[$4 + 1 : cardinality(ancestors)],
            depth = (cardinality($3::uuid[]) + cardinality(ancestors) - $4)::smallint,
            updated_at = CASE WHEN id = $1 THEN now() ELSE updated_at END
          WHERE id = $1 OR ancestors @> ARRAY[$1]::uuid[]",
    )
    .bind::<SqlUuid, _>(root)
    .bind::<Nullable<SqlUuid>, _>(new_parent)
    .bind::<Array<SqlUuid>, _>(new_prefix)
    .bind::<SmallInt, _>(old_depth)
    .cached()
    .execute(conn)
    .await
}

/// Deletes an organization (its limits go with it).
pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<()> {
    diesel::delete(organizations::table.find(id))
        .execute(conn)
        .await
        .map(|_| ())
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    b: bool,
}

/// Whether an organization has children.
pub async fn has_children(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    let r: Exists =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM organizations WHERE parent_id = $1) AS b")
            .bind::<SqlUuid, _>(id)
            .cached()
            .get_result(conn)
            .await?;
    Ok(r.b)
}

/// An organization with the caller's role in its (live) workspace and, when asked, the
/// kind of one of the workspace's resources.
#[derive(QueryableByName)]
pub struct Access {
    /// The organization.
    #[diesel(embed)]
    pub org: OrganizationRow,
    /// The caller's role, if a member.
    #[diesel(sql_type = Nullable<diesel::sql_types::Text>)]
    pub role: Option<String>,
    /// The resource's kind, if it exists.
    #[diesel(sql_type = Nullable<diesel::sql_types::Text>)]
    pub resource_kind: Option<crate::db::models::ResourceKind>,
    /// When a metered resource's window resets.
    #[diesel(sql_type = Nullable<diesel::sql_types::Text>)]
    pub resource_reset: Option<crate::db::models::ResetPeriod>,
}

/// How `access` locks the organization row.
#[derive(Debug, Clone, Copy)]
pub enum RowLock {
    /// No lock (the caller locks what it needs next, in the global order).
    None,
    /// Holds it against moves and deletion (usage, limits, renames).
    KeyShare,
    /// Exclusive (moves, deletion).
    Update,
}

/// Reads an organization, the caller's role and a resource's kind in one statement, locking
/// the organization row for the rest of the transaction.
pub async fn access(
    conn: &mut AsyncPgConnection,
    org: Uuid,
    user: Uuid,
    resource: Option<&str>,
    lock: RowLock,
) -> QueryResult<Option<Access>> {
    let lock = match lock {
        RowLock::None => "",
        RowLock::KeyShare => "FOR KEY SHARE OF o",
        RowLock::Update => "FOR UPDATE OF o",
    };
    diesel::sql_query(format!(
        "SELECT o.*, m.role, r.kind AS resource_kind, r.reset_period AS resource_reset
           FROM organizations o
           JOIN workspaces w ON w.id = o.workspace_id AND w.deleted_at IS NULL
           LEFT JOIN members m ON m.workspace_id = o.workspace_id AND m.user_id = $2
           LEFT JOIN resources r ON r.workspace_id = o.workspace_id AND r.key = $3
          WHERE o.id = $1 {lock}"
    ))
    .bind::<SqlUuid, _>(org)
    .bind::<SqlUuid, _>(user)
    .bind::<Nullable<diesel::sql_types::Text>, _>(resource)
    .cached()
    .get_result(conn)
    .await
    .optional()
}

/// `Access` plus whether the statement claimed the idempotency key.
#[derive(QueryableByName)]
pub struct ClaimedAccess {
    /// The organization, role and resource.
    #[diesel(embed)]
    pub access: Access,
    /// The key was free (or expired) and is now held by this transaction.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub claimed: bool,
    /// The workspace's billing mode.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub billing_mode: String,
    /// Whether the workspace has an active billing account (its pools apply).
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub billing_active: bool,
    /// The billing account of the organization's root (ASSIGNED mode).
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub root_account: Option<Uuid>,
}

/// `access` (with `FOR KEY SHARE`) and, when `claim` is given, the idempotency key claim
/// (`idempotency::claim_sql`), in one statement.
pub async fn access_claiming(
    conn: &mut AsyncPgConnection,
    org: Uuid,
    user: Uuid,
    resource: &str,
    claim: Option<&super::idempotency::KeyClaim>,
) -> QueryResult<Option<ClaimedAccess>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH claim AS ({claim})
             SELECT o.*, m.role, r.kind AS resource_kind, r.reset_period AS resource_reset,
                    EXISTS (SELECT 1 FROM claim) AS claimed, w.billing_mode,
                    EXISTS (SELECT 1 FROM billing_accounts b
                             WHERE b.workspace_id = o.workspace_id AND b.state = 'ACTIVE') AS billing_active,
                    (SELECT root.billing_account_id FROM organizations root
                      WHERE root.id = coalesce(o.ancestors[1], o.id)) AS root_account
               FROM organizations o
               JOIN workspaces w ON w.id = o.workspace_id AND w.deleted_at IS NULL
               LEFT JOIN members m ON m.workspace_id = o.workspace_id AND m.user_id = $2
               LEFT JOIN resources r ON r.workspace_id = o.workspace_id AND r.key = $3
              WHERE o.id = $1 FOR KEY SHARE OF o",
            claim = super::idempotency::claim_sql(4),
        )
    });
    let q = diesel::sql_query(SQL.as_str())
        .into_boxed()
        .bind::<SqlUuid, _>(org)
        .bind::<SqlUuid, _>(user)
        .bind::<diesel::sql_types::Text, _>(resource);
    super::idempotency::bind_claim(q, claim)
        .cached()
        .get_result(conn)
        .await
        .optional()
}
