//! Organization trees: create, rename, move and delete, within the structural caps.

use chrono::Utc;
use diesel_async::AsyncPgConnection;
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Change};
use super::governance::approvals::{self, ApprovalAction, ApprovalRow, Held, Outcome};
use super::mutation::{self, Effect};
use super::usage::{self as usage_domain, windows};
use super::workspaces::require_role;
use super::{Actor, DomainError, DomainResult, Role, Services, check_name};
use crate::db::models::OrganizationRow;
use crate::db::repo::organizations::{self as orgs, RowLock};
use crate::db::repo::{self, Page, usage};
use crate::ids::{IdMap, OrganizationId, WorkspaceId};

/// Deepest `depth` (0 is a root): ten levels.
pub const MAX_DEPTH: i16 = 9;
/// Direct children an organization may have.
pub const MAX_CHILDREN: i64 = 100;
/// Organizations a workspace may have.
pub const MAX_ORGANIZATIONS: i64 = 1000;
/// Longest organization name.
pub const NAME_MAX: usize = 50;

fn depth_exceeded() -> DomainError {
    DomainError::LimitExceeded(format!(
        "an organization tree has at most {} levels (depth 0 to {MAX_DEPTH})",
        MAX_DEPTH + 1
    ))
}

fn children_exceeded() -> DomainError {
    DomainError::LimitExceeded(format!(
        "an organization has at most {MAX_CHILDREN} direct children"
    ))
}

/// Organizations by id (the caller checks access).
pub async fn load_many(services: &Services, ids: &[Uuid]) -> DomainResult<Vec<OrganizationRow>> {
    let conn = services.conn().await?;
    Ok(orgs::find_many(&conn, ids).await?)
}

/// Organizations by id that `actor` may see (missing and foreign ids alike are absent).
pub async fn load_visible(
    services: &Services,
    actor: &Actor,
    ids: &[Uuid],
) -> DomainResult<Vec<OrganizationRow>> {
    let conn = services.conn().await?;
    let rows = orgs::find_visible(&conn, ids, actor.user_id.0).await?;
    drop(conn);
    for ws in rows
        .iter()
        .map(|o| o.workspace_id)
        .collect::<std::collections::BTreeSet<_>>()
    {
        actor.admit(ws).await?;
    }
    Ok(rows)
}

/// One page of a workspace's organizations (the caller checks access).
pub async fn page_for_workspace(
    services: &Services,
    ws: Uuid,
    roots_only: bool,
    page: Page,
) -> DomainResult<Vec<OrganizationRow>> {
    let mut conn = services.conn().await?;
    Ok(orgs::page_for_workspace(&mut conn, ws, roots_only, page).await?)
}

/// Pages of children of several organizations.
pub async fn children_pages(
    services: &Services,
    parents: &[Uuid],
    page: Page,
) -> DomainResult<Vec<OrganizationRow>> {
    let mut conn = services.conn().await?;
    Ok(orgs::children_pages(&mut conn, parents, page).await?)
}

/// What a page's selection asks of every row of the page, in one batch per edge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wants {
    /// Parents and ancestors.
    pub ancestors: bool,
    /// A children page (one page for every row).
    pub children: Option<Page>,
    /// Usage entries.
    pub usage: bool,
}

impl Wants {
    /// Whether anything is asked.
    pub fn any(&self) -> bool {
        self.ancestors || self.children.is_some() || self.usage
    }
}

/// The nested edges of a page of organizations, fetched up front for the whole page (one
/// statement per edge, whatever the page size and however busy the server: DataLoader
/// batches are time-based and split under load, a page's prefetch never does).
#[derive(Debug, Default)]
pub struct PageEdges {
    /// The page's rows and their ancestors, by id.
    pub orgs: IdMap<Uuid, OrganizationRow>,
    /// The children page asked for, and each row's children in it, by parent.
    pub children: Option<(Page, IdMap<Uuid, Vec<OrganizationRow>>)>,
    /// Each row's usage entries.
    pub usage: Option<IdMap<Uuid, Vec<usage_domain::UsageEntry>>>,
}

impl PageEdges {
    /// Fetches what `wants` asks of `rows` on one connection, one statement per edge,
    /// pipelined: none waits for another.
    pub async fn load(
        services: &Services,
        rows: &[OrganizationRow],
        wants: Wants,
    ) -> DomainResult<Self> {
        let wanted: Vec<Uuid> = if wants.ancestors {
            let in_page: crate::ids::IdSet<Uuid> = rows.iter().map(|r| r.id).collect();
            crate::ids::distinct(
                rows.iter()
                    .flat_map(|r| r.ancestors.iter().copied())
                    .filter(|a| !in_page.contains(a)),
            )
        } else {
            Vec::new()
        };
        let conn = services.conn().await?;
        let conn: &AsyncPgConnection = &conn;
        let (orgs, children, usage) = futures::try_join!(
            async {
                if wanted.is_empty() {
                    Ok(Vec::new())
                } else {
                    Ok(orgs::find_many(conn, &wanted).await?)
                }
            },
            async {
                match wants.children {
                    Some(page) => children_of_rows(conn, rows, page)
                        .await
                        .map(|c| Some((page, c))),
                    None => Ok(None),
                }
            },
            async {
                if wants.usage {
                    usage_domain::load_entries_on(conn, rows).await.map(Some)
                } else {
                    Ok(None)
                }
            },
        )?;
        Ok(Self {
            orgs: orgs
                .into_iter()
                .chain(rows.iter().cloned())
                .map(|o| (o.id, o))
                .collect(),
            children,
            usage,
        })
    }
}

/// Pages of children of several organizations given as rows, by parent: the children come
/// back complete while the statement reads only what the parents do not determine (on a
/// connection the caller may be pipelining other statements on).
pub async fn children_of_rows(
    conn: &AsyncPgConnection,
    parents: &[OrganizationRow],
    page: Page,
) -> DomainResult<IdMap<Uuid, Vec<OrganizationRow>>> {
    let ids: Vec<Uuid> = parents.iter().map(|p| p.id).collect();
    let found = orgs::child_rows(conn, &ids, page).await?;
    let by_id: IdMap<Uuid, &OrganizationRow> = parents.iter().map(|p| (p.id, p)).collect();
    let mut out: IdMap<Uuid, Vec<OrganizationRow>> =
        parents.iter().map(|p| (p.id, Vec::new())).collect();
    for c in found {
        if let Some(parent) = by_id.get(&c.parent_id) {
            let row = c.under(parent);
            if let Some(v) = out.get_mut(&parent.id) {
                v.push(row);
            }
        }
    }
    Ok(out)
}

/// Pages of descendants of several organizations, as (ancestor asked for, descendant).
pub async fn descendant_pages(
    services: &Services,
    roots: &[Uuid],
    page: Page,
) -> DomainResult<Vec<(Uuid, OrganizationRow)>> {
    let mut conn = services.conn().await?;
    Ok(orgs::descendant_pages(&mut conn, roots, page)
        .await?
        .into_iter()
        .map(|d| (d.of, d.org))
        .collect())
}

/// Input of `create`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewOrganization {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// Parent; `None` makes a root.
    pub parent_id: Option<OrganizationId>,
    /// Name, 1–50 characters.
    pub name: String,
    /// ASSIGNED workspaces: the billing account of a root (required once the workspace has
    /// an active account; children inherit their root's).
    pub billing_account_id: Option<crate::ids::BillingAccountId>,
}

/// Creates an organization (owners and admins) within the caps: ten levels, 100 children
/// per organization, 1,000 organizations per workspace.
pub async fn create(
    services: &Services,
    actor: &Actor,
    input: NewOrganization,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<OrganizationRow>> {
    let name = check_name("name", &input.name, NAME_MAX)?;
    let ws = input.workspace_id;
    mutation::run(
        services,
        actor,
        "createOrganization",
        key,
        &input,
        |c, _| -> Effect<'_, _> {
            Box::pin(create_effect(
                c,
                input.clone(),
                name.clone(),
                actor.clone(),
                ws,
            ))
        },
    )
    .await
}

/// The effect of `createOrganization`, in the mutation's transaction.
async fn create_effect(
    conn: &mut AsyncPgConnection,
    input: NewOrganization,
    name: String,
    actor: Actor,
    ws: WorkspaceId,
) -> DomainResult<OrganizationRow> {
    require_role(conn, &actor, ws, Role::is_manager, "create organizations").await?;
    // Structural changes of one workspace are serialized on its row.
    let w = repo::workspaces::lock(conn, ws.0)
        .await?
        .ok_or(DomainError::NotFound("workspace"))?;
    let account = super::billing::accounts::account_for_new_org(
        conn,
        &w,
        input.parent_id.is_none(),
        input.billing_account_id,
    )
    .await?;
    if orgs::count_in_workspace(conn, ws.0).await? >= MAX_ORGANIZATIONS {
        return Err(DomainError::LimitExceeded(format!(
            "a workspace has at most {MAX_ORGANIZATIONS} organizations"
        )));
    }
    let ancestors = match input.parent_id {
        None => Vec::new(),
        Some(p) => {
            let parent = orgs::find_key_share(conn, p.0)
                .await?
                .filter(|o| o.workspace_id == ws.0)
                .ok_or(DomainError::NotFound("parent organization"))?;
            if parent.depth >= MAX_DEPTH {
                return Err(depth_exceeded());
            }
            if orgs::count_children(conn, parent.id).await? >= MAX_CHILDREN {
                return Err(children_exceeded());
            }
            parent
                .ancestors
                .iter()
                .copied()
                .chain([parent.id])
                .collect()
        }
    };
    let id = OrganizationId::new();
    let row = orgs::insert(
        conn,
        id.0,
        ws.0,
        input.parent_id.map(|p| p.0),
        &name,
        &ancestors,
    )
    .await?;
    if let Some(a) = account {
        repo::billing::assign_root(conn, row.id, Some(a)).await?;
    }
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "organization.create",
            target_type: "Organization",
            target_id: id.encode(),
            summary: json!({
                "name": name,
                "parentId": input.parent_id.map(|p| p.encode()),
                "billingAccountId": account.map(|a| crate::ids::BillingAccountId(a).encode()),
            }),
            actor: &actor,
        },
    )
    .await?;
    Ok(row)
}

/// Loads an organization for a change by a manager, locking its row as asked.
async fn managed(
    conn: &mut diesel_async::AsyncPgConnection,
    actor: &Actor,
    id: OrganizationId,
    lock: RowLock,
    what: &str,
) -> DomainResult<OrganizationRow> {
    let a = orgs::access(conn, id.0, actor.user_id.0, None, lock)
        .await?
        .ok_or(DomainError::NotFound("organization"))?;
    let role = a.role.as_deref().and_then(Role::parse);
    if role.is_some() {
        actor.admit(a.org.workspace_id).await?;
    }
    match role {
        None => Err(DomainError::NotFound("organization")),
        Some(r) if r.is_manager() => Ok(a.org),
        Some(r) => Err(DomainError::Forbidden(format!(
            "your role {} may not {what}",
            r.as_str()
        ))),
    }
}

/// Input of `rename`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rename {
    /// Organization.
    pub organization_id: OrganizationId,
    /// New name.
    pub name: String,
}

/// Renames an organization (owners and admins).
pub async fn rename(
    services: &Services,
    actor: &Actor,
    input: Rename,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<OrganizationRow>> {
    let name = check_name("name", &input.name, NAME_MAX)?;
    mutation::run(
        services,
        actor,
        "renameOrganization",
        key,
        &input,
        |c, _| -> Effect<'_, _> {
            Box::pin(rename_effect(c, input.clone(), name.clone(), actor.clone()))
        },
    )
    .await
}

/// The effect of `renameOrganization`, in the mutation's transaction.
async fn rename_effect(
    conn: &mut AsyncPgConnection,
    input: Rename,
    name: String,
    actor: Actor,
) -> DomainResult<OrganizationRow> {
    let before = managed(
        conn,
        &actor,
        input.organization_id,
        RowLock::KeyShare,
        "rename organizations",
    )
    .await?;
    let row = orgs::rename(conn, before.id, &name).await?;
    audit::record(
        conn,
        Change {
            workspace: WorkspaceId(row.workspace_id),
            action: "organization.rename",
            target_type: "Organization",
            target_id: input.organization_id.encode(),
            summary: json!({"before": before.name, "after": name}),
            actor: &actor,
        },
    )
    .await?;
    Ok(row)
}

/// Input of `move_to`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Move {
    /// Organization to move (with its subtree).
    pub organization_id: OrganizationId,
    /// New parent; `None` makes it a root.
    pub new_parent_id: Option<OrganizationId>,
}

/// Moves an organization and its subtree under a new parent (or to the top), carrying its
/// usage from the old ancestors to the new ones in the same transaction. Refuses cycles,
/// moves that would push any node past ten levels or a parent past 100 children, and
/// moves whose usage would break a cap in the new ancestry.
pub async fn move_to(
    services: &Services,
    actor: &Actor,
    input: Move,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<OrganizationRow>> {
    mutation::run(
        services,
        actor,
        "moveOrganization",
        key,
        &input,
        |c, _| -> Effect<'_, _> { Box::pin(move_effect(c, input.clone(), actor.clone())) },
    )
    .await
}

/// The effect of `moveOrganization`, in the mutation's transaction.
async fn move_effect(
    conn: &mut AsyncPgConnection,
    input: Move,
    actor: Actor,
) -> DomainResult<OrganizationRow> {
    // Lock order: workspace row, then organization rows, then counters.
    let root = managed(
        conn,
        &actor,
        input.organization_id,
        RowLock::None,
        "move organizations",
    )
    .await?;
    let ws = root.workspace_id;
    let w = repo::workspaces::lock(conn, ws)
        .await?
        .ok_or(DomainError::NotFound("organization"))?;
    // Every node of the subtree: allocations inside it wait until the move commits.
    let subtree = orgs::lock_subtree(conn, root.id).await?;
    let root = subtree
        .iter()
        .find(|o| o.id == root.id)
        .cloned()
        .ok_or(DomainError::NotFound("organization"))?;
    let new_prefix: Vec<Uuid> = match input.new_parent_id {
        None => Vec::new(),
        Some(p) => {
            if subtree.iter().any(|o| o.id == p.0) {
                return Err(DomainError::bad_input(
                    "newParentId",
                    "an organization cannot move under itself or one of its descendants",
                ));
            }
            let parent = orgs::find_key_share(conn, p.0)
                .await?
                .filter(|o| o.workspace_id == ws)
                .ok_or(DomainError::NotFound("parent organization"))?;
            parent
                .ancestors
                .iter()
                .copied()
                .chain([parent.id])
                .collect()
        }
    };
    if root.parent_id == input.new_parent_id.map(|p| p.0) {
        return Ok(root);
    }
    let height = subtree
        .iter()
        .map(|o| o.depth - root.depth)
        .max()
        .unwrap_or(0);
    if new_prefix.len() as i16 + height > MAX_DEPTH {
        return Err(depth_exceeded());
    }
    if let Some(p) = input.new_parent_id
        && orgs::count_children(conn, p.0).await? >= MAX_CHILDREN
    {
        return Err(children_exceeded());
    }
    carry_usage(conn, ws, &root, &new_prefix).await?;
    super::billing::accounts::carry_pool_usage(conn, &w, &root, &new_prefix).await?;
    orgs::move_subtree(
        conn,
        root.id,
        input.new_parent_id.map(|p| p.0),
        &new_prefix,
        root.depth,
    )
    .await?;
    let moved = orgs::find_many(conn, &[root.id])
        .await?
        .into_iter()
        .next()
        .ok_or(DomainError::NotFound("organization"))?;
    audit::record(
        conn,
        Change {
            workspace: WorkspaceId(ws),
            action: "organization.move",
            target_type: "Organization",
            target_id: input.organization_id.encode(),
            summary: json!({
                "fromParentId": root.parent_id.map(|p| OrganizationId(p).encode()),
                "toParentId": input.new_parent_id.map(|p| p.encode()),
                "subtreeSize": subtree.len(),
            }),
            actor: &actor,
        },
    )
    .await?;
    Ok(moved)
}

/// Moves the subtree's current usage from the ancestors it leaves to those it joins,
/// refusing when that would break a cap of a new ancestor.
async fn carry_usage(
    conn: &mut diesel_async::AsyncPgConnection,
    ws: Uuid,
    root: &OrganizationRow,
    new_prefix: &[Uuid],
) -> DomainResult<()> {
    let resources = repo::resources::for_workspaces(conn, &[ws]).await?;
    let current = windows(&resources, Utc::now());
    let mut periods: Vec<chrono::DateTime<Utc>> = current.iter().map(|w| w.2).collect();
    periods.sort_unstable();
    periods.dedup();
    let rows = usage::current(conn, &[root.id], &periods).await?;
    let leaving: Vec<Uuid> = root
        .ancestors
        .iter()
        .filter(|a| !new_prefix.contains(a))
        .copied()
        .collect();
    let joining: Vec<Uuid> = new_prefix
        .iter()
        .filter(|a| !root.ancestors.contains(a))
        .copied()
        .collect();
    let mut moving: Vec<(String, chrono::DateTime<Utc>, i64)> = rows
        .into_iter()
        .filter(|r| r.subtree > 0)
        .filter_map(|r| {
            let window = current.iter().find(|w| w.1 == r.resource)?.2;
            (r.period_start == Some(window)).then_some((r.resource, window, r.subtree))
        })
        .collect();
    // One resource after another, each in organization-id order (the global lock order).
    moving.sort();
    for (resource, window, amount) in moving {
        let mut touched: Vec<Uuid> = leaving.iter().chain(joining.iter()).copied().collect();
        touched.sort_unstable();
        let counters = usage::lock_counters(conn, ws, &touched, &resource, window).await?;
        let numbers: std::collections::HashMap<Uuid, usage_domain::Numbers> = counters
            .iter()
            .map(|c| {
                (
                    c.organization_id,
                    usage_domain::Numbers {
                        direct: c.direct,
                        subtree: c.subtree,
                        limit: c.limit,
                    },
                )
            })
            .collect();
        for a in &joining {
            let n = numbers.get(a).copied().unwrap_or_default();
            let limit = n
                .limit
                .unwrap_or(usage_domain::MAX_COUNT)
                .min(usage_domain::MAX_COUNT);
            if n.subtree + amount > limit {
                return Err(DomainError::LimitBreached {
                    message: format!(
                        "moving {} {resource} under organization {} would exceed its limit: {} of {limit} in use",
                        amount,
                        OrganizationId(*a),
                        n.subtree
                    ),
                    organization_id: OrganizationId(*a).encode(),
                    limit,
                    used: n.subtree,
                    requested: amount,
                });
            }
        }
        usage::adjust_subtree(conn, &leaving, &resource, window, -amount).await?;
        usage::adjust_subtree(conn, &joining, &resource, window, amount).await?;
    }
    Ok(())
}

/// Deletes an organization (owners and admins); refused while it has children or usage.
/// Held for approval when the workspace requires it for `DELETE_ORGANIZATION`.
pub async fn delete(
    services: &Services,
    actor: &Actor,
    id: OrganizationId,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<Outcome<OrganizationId>>> {
    mutation::run(
        services,
        actor,
        "deleteOrganization",
        key,
        &id,
        |c, _| -> Effect<'_, _> { Box::pin(delete_effect(c, actor.clone(), id)) },
    )
    .await
}

/// What a held `deleteOrganization` stores for its execution.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct HeldDelete {
    organization_id: OrganizationId,
}

/// Executes an approved `deleteOrganization` (`governance::approvals`) as the requester.
pub(crate) async fn execute_approved(
    conn: &mut AsyncPgConnection,
    _services: &Services,
    request: &ApprovalRow,
    actor: &Actor,
) -> DomainResult<serde_json::Value> {
    let held: HeldDelete =
        serde_json::from_value(request.input.clone()).map_err(DomainError::internal)?;
    match delete_effect(conn, actor.clone(), held.organization_id).await? {
        Outcome::Done(id) => Ok(json!({"deletedOrganizationId": id.encode()})),
        Outcome::Held(_) => approvals::held_again(),
    }
}

/// The effect of `deleteOrganization`, in the mutation's transaction.
async fn delete_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    id: OrganizationId,
) -> DomainResult<Outcome<OrganizationId>> {
    let org = managed(conn, &actor, id, RowLock::Update, "delete organizations").await?;
    if orgs::has_children(conn, org.id).await? {
        return Err(DomainError::Conflict(
            "an organization with children cannot be deleted: move or delete its children first"
                .into(),
        ));
    }
    let resources = repo::resources::for_workspaces(conn, &[org.workspace_id]).await?;
    if usage::has_usage(conn, org.id, &windows(&resources, Utc::now())).await? {
        return Err(DomainError::Conflict(
            "an organization with usage cannot be deleted: release its usage first".into(),
        ));
    }
    let held = Held {
        workspace: WorkspaceId(org.workspace_id),
        action: ApprovalAction::DeleteOrganization,
        operation: "deleteOrganization",
        input: &HeldDelete {
            organization_id: id,
        },
        target_type: "Organization",
        target_id: id.encode(),
    };
    if let Some(request) = approvals::hold_if_required(conn, &actor, held).await? {
        return Ok(Outcome::Held(Box::new(request)));
    }
    orgs::delete(conn, org.id).await?;
    audit::record(
        conn,
        Change {
            workspace: WorkspaceId(org.workspace_id),
            action: "organization.delete",
            target_type: "Organization",
            target_id: id.encode(),
            summary: json!({"name": org.name, "parentId": org.parent_id.map(|p| OrganizationId(p).encode())}),
            actor: &actor,
        },
    )
    .await?;
    Ok(Outcome::Done(id))
}
