//! Organizations: the tree inside a workspace, its usage and its caps.

use std::sync::Arc;

use async_graphql::parser::types::Field as FieldNode;
use async_graphql::{
    Context, ContextSelectionSet, ID, InputObject, Object, Positioned, Result, SimpleObject,
};
use chrono::{DateTime, Utc};

use super::one_step::{
    Connection, ConnectionEdge, Fast, FastList, OneStep, PageRows, Paged, Plan, list,
};
use super::pagination::{self, complexity};
use super::replay::{self, Replayable};
use super::resources::{Resource, ResourceKind};
use super::workspaces::{Workspace, load_visible};
use super::{error, rc};
use crate::db::models::OrganizationRow;
use crate::db::repo::Page;
use crate::domain;
use crate::domain::governance::approvals::Outcome;
use crate::domain::organizations::{PageEdges, Wants};
use crate::domain::usage::UsageEntry;
use crate::ids::{OrganizationId, WorkspaceId};

/// A node of a workspace's organization tree (a department, region or customer); a selection
/// the one-step path can write is answered in one step (see `one_step`).
pub type Organization = Fast<OrganizationObject>;

/// A page of organizations.
pub type OrganizationConnection = Connection<OrganizationObject>;

/// An organization: its row and, for the rows of a page, the page's prefetched edges.
#[derive(Clone)]
pub struct OrganizationObject(pub OrganizationRow, pub Option<Arc<PageEdges>>);

impl Organization {
    /// An organization whose nested edges go through the request's DataLoaders.
    pub fn new(row: OrganizationRow) -> Self {
        Fast(OrganizationObject(row, None))
    }

    /// An organization whose nested edges were prefetched with its page.
    pub fn prefetched(row: OrganizationRow, prefetch: Option<Arc<PageEdges>>) -> Self {
        Fast(OrganizationObject(row, prefetch))
    }

    /// Opaque id (for the `Node` interface).
    pub async fn id(&self, ctx: &Context<'_>) -> Result<OrganizationId> {
        self.0.id(ctx).await
    }

    /// The row.
    pub fn row(&self) -> &OrganizationRow {
        &self.0.0
    }
}

crate::object! {
    #[Object(name = "Organization")]
    /// A node of a workspace's organization tree (a department, region or customer).
    impl OrganizationObject {
        row: OrganizationRow;
        fields {
            /// Opaque id (`org_…`).
            id: OrganizationId = OrganizationId(row.id),
            /// Name, 1–50 characters.
            name: &str = &row.name,
            /// 0 for a root, at most 9 (ten levels).
            depth: i32 = i32::from(row.depth),
            /// When it was created.
            created_at: DateTime<Utc> = row.created_at.to_datetime(),
        }
        edges: OrgEdge;
        resolvers {
    /// The workspace it belongs to.
    async fn workspace(&self, ctx: &Context<'_>) -> Result<Option<Workspace>> {
        load_visible(ctx, WorkspaceId(self.0.workspace_id)).await
    }

    /// The parent; null for a root.
    async fn parent(&self, ctx: &Context<'_>) -> Result<Option<Organization>> {
        let Some(parent) = self.0.parent_id else {
            return Ok(None);
        };
        if let Some(found) = self.1.as_ref().and_then(|p| p.orgs.get(&parent)) {
            return Ok(Some(Organization::new(found.clone())));
        }
        let rc = rc(ctx);
        Ok(rc
            .loaders
            .organizations
            .load_one(parent)
            .await
            .map_err(|e| rc.err(e))?
            .map(Organization::new))
    }

    /// Direct children, oldest first. At most 100 per page.
    #[graphql(complexity = "complexity(first, child_complexity)")]
    async fn children(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Fast<OrganizationConnection>> {
        let rc = rc(ctx);
        let page = pagination::page(first, after.as_deref())?;
        if let Some((p, by_parent)) = self.1.as_ref().and_then(|p| p.children.as_ref())
            && *p == page
            && let Some(rows) = by_parent.get(&self.0.id)
        {
            return Ok(OrganizationConnection::from_rows(
                rows.clone(),
                page,
                Organization::new,
            ));
        }
        let rows = rc
            .loaders
            .children
            .load_one((self.0.id, page))
            .await
            .map_err(|e| rc.err(e))?;
        Ok(OrganizationConnection::from_rows(
            rows.unwrap_or_default(),
            page,
            Organization::new,
        ))
    }

    /// Every ancestor, root first (empty for a root).
    #[graphql(complexity = "10 * child_complexity")]
    async fn ancestors(&self, ctx: &Context<'_>) -> Result<FastList<Organization>> {
        if let Some(p) = &self.1
            && self.0.ancestors.iter().all(|a| p.orgs.contains_key(a))
        {
            return Ok(self
                .0
                .ancestors
                .iter()
                .filter_map(|a| p.orgs.get(a).cloned())
                .map(Organization::new)
                .collect());
        }
        let rc = rc(ctx);
        let found = rc
            .loaders
            .organizations
            .load_many(self.0.ancestors.iter().copied())
            .await
            .map_err(|e| rc.err(e))?;
        Ok(self
            .0
            .ancestors
            .iter()
            .filter_map(|a| found.get(a).cloned().map(Organization::new))
            .collect())
    }

    /// Every descendant at any depth, in creation order. At most 100 per page.
    #[graphql(complexity = "complexity(first, child_complexity)")]
    async fn descendants(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Fast<OrganizationConnection>> {
        let rc = rc(ctx);
        let page = pagination::page(first, after.as_deref())?;
        let rows = rc
            .loaders
            .descendants
            .load_one((self.0.id, page))
            .await
            .map_err(|e| rc.err(e))?;
        Ok(OrganizationConnection::from_rows(
            rows.unwrap_or_default(),
            page,
            Organization::new,
        ))
    }

    /// Usage of every resource of the workspace in its current window, with caps.
    #[graphql(complexity = "5 * child_complexity")]
    async fn usage(&self, ctx: &Context<'_>) -> Result<FastList<OrganizationUsage>> {
        if let Some(entries) = self
            .1
            .as_ref()
            .and_then(|p| p.usage.as_ref())
            .and_then(|u| u.get(&self.0.id))
        {
            return Ok(entries
                .iter()
                .cloned()
                .map(OrganizationUsage::new)
                .collect());
        }
        let rc = rc(ctx);
        let entries = rc
            .loaders
            .usage
            .load_one(self.0.clone())
            .await
            .map_err(|e| rc.err(e))?;
        Ok(entries
            .unwrap_or_default()
            .into_iter()
            .map(OrganizationUsage::new)
            .collect())
    }

    /// Past and current windows of one resource's usage, newest first (one window for an
    /// allocated resource).
    async fn usage_history(
        &self,
        ctx: &Context<'_>,
        resource: String,
        #[graphql(default = 31)] last: i32,
    ) -> Result<Vec<UsageWindow>> {
        if !(1..=366).contains(&last) {
            return Err(error::bad_input("last", "last must be between 1 and 366"));
        }
        let rc = rc(ctx);
        let rows = rc
            .loaders
            .histories
            .load_one((self.0.id, resource, i64::from(last)))
            .await
            .map_err(|e| rc.err(e))?;
        Ok(rows
            .unwrap_or_default()
            .into_iter()
            .map(|w| UsageWindow {
                window_start: w.period_start,
                direct: w.direct,
                subtree: w.subtree,
            })
            .collect())
    }
        }
    }
}

/// The edges of an organization the one-step path writes: those a page prefetches.
pub enum OrgEdge {
    /// `parent`.
    Parent(Plan<OrganizationObject>),
    /// `ancestors`.
    Ancestors(Plan<OrganizationObject>),
    /// `usage`.
    Usage(Plan<OrganizationUsageObject>),
    /// `children`, written when its page is the prefetched one.
    Children(Page, Plan<OrganizationConnection>),
}

impl OneStep for OrganizationObject {
    type Edge = OrgEdge;
    type With<'a> = Option<&'a PageEdges>;
    const EDGES: &'static [&'static str] = &["parent", "ancestors", "usage", "children"];

    fn compile_edge(
        ctx: &ContextSelectionSet<'_>,
        field: &Positioned<FieldNode>,
    ) -> Option<OrgEdge> {
        let sub = ctx.with_selection_set(&field.node.selection_set);
        Some(match field.node.name.node.as_str() {
            "parent" => OrgEdge::Parent(Plan::compile(&sub)?),
            "ancestors" => OrgEdge::Ancestors(Plan::compile(&sub)?),
            "usage" => OrgEdge::Usage(Plan::compile(&sub)?),
            _ => {
                let args = ctx.with_field(field);
                let (_, first) = args.param_value::<Option<i32>>("first", None).ok()?;
                let (_, after) = args.param_value::<Option<String>>("after", None).ok()?;
                let page = pagination::page(first, after.as_deref()).ok()?;
                OrgEdge::Children(page, Plan::compile(&sub)?)
            }
        })
    }

    fn write_edge(
        row: &OrganizationRow,
        prefetch: Option<&PageEdges>,
        edge: &OrgEdge,
        out: &mut String,
    ) -> Option<()> {
        // Organizations reached through an edge have no prefetch of their own.
        let p = prefetch?;
        match edge {
            OrgEdge::Parent(plan) => match row.parent_id {
                None => out.push_str("null"),
                Some(id) => plan.write(p.orgs.get(&id)?, None, out)?,
            },
            OrgEdge::Ancestors(plan) => list(out, &row.ancestors, |a, out| {
                plan.write(p.orgs.get(a)?, None, out)
            })?,
            OrgEdge::Usage(plan) => {
                let entries = p.usage.as_ref()?.get(&row.id)?;
                list(out, entries, |e, out| plan.write(e, (), out))?;
            }
            OrgEdge::Children(page, plan) => {
                let (prefetched, by_parent) = p.children.as_ref()?;
                if page != prefetched {
                    return None;
                }
                let (shown, rows) = PageRows::of(by_parent.get(&row.id)?, *page);
                rows.write(shown, |r| (r, None), plan, out)?;
            }
        }
        Some(())
    }

    fn parts(&self) -> (&OrganizationRow, Option<&PageEdges>) {
        (&self.0, self.1.as_deref())
    }
}

impl Paged for OrganizationObject {
    fn cursor(row: &OrganizationRow) -> String {
        pagination::encode_cursor(row.id)
    }
}

/// What the selection of a page of organizations (`organizations { … }`) asks of every row,
/// read from its compiled plan: the edges the one-step path writes are the ones prefetched.
fn wants(plan: &Plan<OrganizationConnection>) -> Wants {
    let mut wants = Wants::default();
    let mut pages = Vec::new();
    for node in plan.edges().filter_map(ConnectionEdge::nodes) {
        for edge in node.edges() {
            match edge {
                OrgEdge::Parent(_) | OrgEdge::Ancestors(_) => wants.ancestors = true,
                OrgEdge::Usage(_) => wants.usage = true,
                OrgEdge::Children(page, _) => pages.push(*page),
            }
        }
    }
    // One children page for every row; aliases asking other pages use the loader.
    if let Some(first) = pages.first()
        && pages.iter().all(|p| p == first)
    {
        wants.children = Some(*first);
    }
    wants
}

/// Fetches what the selection of a page of organizations will ask for, in one batch per
/// edge.
pub(crate) async fn prefetch(
    ctx: &Context<'_>,
    rows: &[OrganizationRow],
) -> Result<Option<Arc<PageEdges>>> {
    let selection = ctx.with_selection_set(&ctx.item.node.selection_set);
    let wants = Plan::compile(&selection)
        .map(|plan| wants(&plan))
        .unwrap_or_default();
    if rows.is_empty() || !wants.any() {
        return Ok(None);
    }
    let rc = rc(ctx);
    let edges = PageEdges::load(&rc.services, rows, wants)
        .await
        .map_err(|e| rc.err(e))?;
    Ok(Some(Arc::new(edges)))
}

/// One organization's usage of one resource in the current window.
pub type OrganizationUsage = Fast<OrganizationUsageObject>;

/// A usage entry.
pub struct OrganizationUsageObject(pub UsageEntry);

impl OrganizationUsage {
    fn new(entry: UsageEntry) -> Self {
        Fast(OrganizationUsageObject(entry))
    }
}

crate::object! {
    #[Object(name = "OrganizationUsage")]
    /// One organization's usage of one resource in the current window, with its caps.
    impl OrganizationUsageObject {
        entry: UsageEntry;
        fields {
            /// Resource key.
            resource: &str = &entry.resource.key,
            /// Allocated or metered.
            kind: ResourceKind = entry.resource.kind.into(),
            /// Start of the current window of a metered resource; null for allocated ones.
            window_start: Option<DateTime<Utc>> = entry.window_start,
            /// The organization's own usage.
            direct: i64 = entry.direct,
            /// Its own usage plus all its descendants'.
            subtree: i64 = entry.subtree,
            /// Its own cap on the subtree usage; null when it inherits.
            limit: Option<i64> = entry.limit,
            /// The tightest cap that applies here (its own or an ancestor's), expressed as the
            /// most this organization's subtree could reach now; null when nothing caps it.
            effective_limit: Option<i64> = entry.effective_limit,
            /// How much more can be allocated here right now; null when unlimited.
            available: Option<i64> = entry.available,
            /// True when the subtree uses more than the organization's own cap (a cap set below
            /// usage): nothing more can be allocated until usage falls below it.
            over_limit: bool = entry.over_limit,
        }
        resolvers {
            /// The resource's definition.
            async fn definition(&self) -> Resource {
                Resource((*self.0.resource).clone())
            }
        }
    }
}

/// Usage of one resource in one window.
#[derive(SimpleObject)]
pub struct UsageWindow {
    /// Start of the window (the epoch for allocated resources).
    pub window_start: chrono::DateTime<chrono::Utc>,
    /// Own usage in the window.
    pub direct: i64,
    /// Subtree usage in the window.
    pub subtree: i64,
}

/// Organization queries.
#[derive(Default)]
pub struct OrganizationQuery;

/// Loads an organization the caller may see.
pub(crate) async fn load_organization(
    ctx: &Context<'_>,
    id: OrganizationId,
) -> Result<Option<Organization>> {
    let rc = rc(ctx);
    let org = rc
        .loaders
        .visible_organizations
        .load_one(id.0)
        .await
        .map_err(|e| rc.err(e))?;
    Ok(org.map(Organization::new))
}

#[Object]
impl OrganizationQuery {
    /// An organization of a workspace the caller belongs to; null otherwise.
    async fn organization(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Organization>> {
        match OrganizationId::decode(&id) {
            Some(id) => load_organization(ctx, id).await,
            None => Ok(None),
        }
    }
}

fn org_id(id: &ID, what: &'static str) -> Result<OrganizationId> {
    OrganizationId::decode(id).ok_or_else(|| error::not_found(what))
}

/// Input of `createOrganization`.
#[derive(InputObject)]
pub struct CreateOrganizationInput {
    /// Workspace.
    pub workspace_id: ID,
    /// Parent; null creates a root.
    pub parent_id: Option<ID>,
    /// Name, 1–50 characters.
    pub name: String,
    /// The billing account of a root organization in an ASSIGNED workspace (required there
    /// once the workspace has one; children inherit their root's, other modes take none).
    pub billing_account_id: Option<ID>,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Input of `renameOrganization`.
#[derive(InputObject)]
pub struct RenameOrganizationInput {
    /// Organization.
    pub organization_id: ID,
    /// New name, 1–50 characters.
    pub name: String,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Input of `moveOrganization`.
#[derive(InputObject)]
pub struct MoveOrganizationInput {
    /// Organization to move, with its whole subtree.
    pub organization_id: ID,
    /// New parent; null makes it a root.
    pub new_parent_id: Option<ID>,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Input of `deleteOrganization`.
#[derive(InputObject)]
pub struct DeleteOrganizationInput {
    /// Organization (without children and usage).
    pub organization_id: ID,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `deleteOrganization`.
#[derive(SimpleObject)]
pub struct DeleteOrganizationPayload {
    /// Id of the deleted organization; null while the deletion waits for approval.
    pub deleted_organization_id: Option<ID>,
    /// The pending approval request, when the workspace requires approval for
    /// `DELETE_ORGANIZATION`: nothing was deleted yet.
    pub approval_request: Option<super::approvals::ApprovalRequest>,
}

/// Input of `recordUsage`.
#[derive(InputObject)]
pub struct RecordUsageInput {
    /// Organization that consumes.
    pub organization_id: ID,
    /// Resource key, e.g. `users`.
    pub resource: String,
    /// Positive allocates (refused with `LIMIT_EXCEEDED` when a cap on the path would be
    /// exceeded, or a counter would pass 2,147,483,647, the largest `Int`); negative
    /// releases (refused with `CONFLICT` below zero). A 32-bit `Int`, as GraphQL defines it.
    pub delta: i32,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Input of `setOrganizationLimit`.
#[derive(InputObject)]
pub struct SetOrganizationLimitInput {
    /// Organization.
    pub organization_id: ID,
    /// Resource key.
    pub resource: String,
    /// Cap on the organization's subtree usage: null removes it (inherit), 0 blocks the
    /// whole subtree, a positive cap may not exceed what the organization inherits.
    pub limit: Option<i32>,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Payloads of the mutations that show the changed organization.
macro_rules! organization_payloads {
    ($($(#[doc = $doc:literal])* $name:ident: $field:literal;)+) => {$(
        $(#[doc = $doc])*
        #[derive(SimpleObject)]
        pub struct $name {
            #[doc = $field]
            pub organization: Organization,
        }

        impl From<OrganizationRow> for $name {
            fn from(row: OrganizationRow) -> Self {
                Self {
                    organization: Organization::new(row),
                }
            }
        }
    )+};
}

organization_payloads! {
    /// Result of `createOrganization`.
    CreateOrganizationPayload: "The new organization.";
    /// Result of `renameOrganization`.
    RenameOrganizationPayload: "The renamed organization.";
    /// Result of `moveOrganization`.
    MoveOrganizationPayload: "The moved organization.";
    /// Result of `recordUsage`.
    RecordUsagePayload: "The organization; its `usage` shows the result.";
    /// Result of `setOrganizationLimit`.
    SetOrganizationLimitPayload: "The organization; its `usage` shows the new cap.";
}

/// A mutation that shows the changed organization (see `replay::mutate`).
async fn mutate_organization<P: From<OrganizationRow>>(
    ctx: &Context<'_>,
    idempotency_key: Option<String>,
    call: impl AsyncFnOnce(
        &domain::Services,
        &domain::Actor,
        Option<&domain::mutation::Key>,
    ) -> domain::DomainResult<domain::mutation::Done<OrganizationRow>>,
) -> Result<Replayable<P>> {
    replay::mutate(
        ctx,
        idempotency_key,
        call,
        |o| Some(o.workspace_id),
        P::from,
    )
    .await
}

/// Organization mutations.
#[derive(Default)]
pub struct OrganizationMutation;

#[Object]
impl OrganizationMutation {
    /// Creates an organization under a parent, or a root (owners and admins). Caps: ten
    /// levels, 100 children per organization, 1,000 organizations per workspace.
    async fn create_organization(
        &self,
        ctx: &Context<'_>,
        input: CreateOrganizationInput,
    ) -> Result<Replayable<CreateOrganizationPayload>> {
        let new = domain::organizations::NewOrganization {
            workspace_id: WorkspaceId::decode(&input.workspace_id)
                .ok_or_else(|| error::not_found("workspace"))?,
            parent_id: input
                .parent_id
                .as_ref()
                .map(|p| org_id(p, "parent organization"))
                .transpose()?,
            name: input.name,
            billing_account_id: input
                .billing_account_id
                .as_ref()
                .map(|b| {
                    crate::ids::BillingAccountId::decode(b)
                        .ok_or_else(|| error::not_found("billing account"))
                })
                .transpose()?,
        };
        mutate_organization(ctx, input.idempotency_key, async move |s, a, k| {
            domain::organizations::create(s, a, new, k).await
        })
        .await
    }

    /// Renames an organization (owners and admins).
    async fn rename_organization(
        &self,
        ctx: &Context<'_>,
        input: RenameOrganizationInput,
    ) -> Result<Replayable<RenameOrganizationPayload>> {
        let change = domain::organizations::Rename {
            organization_id: org_id(&input.organization_id, "organization")?,
            name: input.name,
        };
        mutate_organization(ctx, input.idempotency_key, async move |s, a, k| {
            domain::organizations::rename(s, a, change, k).await
        })
        .await
    }

    /// Moves an organization and its subtree (owners and admins); its usage moves from the
    /// old ancestors to the new ones.
    async fn move_organization(
        &self,
        ctx: &Context<'_>,
        input: MoveOrganizationInput,
    ) -> Result<Replayable<MoveOrganizationPayload>> {
        let change = domain::organizations::Move {
            organization_id: org_id(&input.organization_id, "organization")?,
            new_parent_id: input
                .new_parent_id
                .as_ref()
                .map(|p| org_id(p, "parent organization"))
                .transpose()?,
        };
        mutate_organization(ctx, input.idempotency_key, async move |s, a, k| {
            domain::organizations::move_to(s, a, change, k).await
        })
        .await
    }

    /// Deletes an organization without children and usage (owners and admins).
    async fn delete_organization(
        &self,
        ctx: &Context<'_>,
        input: DeleteOrganizationInput,
    ) -> Result<Replayable<DeleteOrganizationPayload>> {
        let id = org_id(&input.organization_id, "organization")?;
        // Shows only the id the input held, or the workspace's approval request.
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::organizations::delete(s, a, id, k).await,
            |o| o.held().map(|r| r.workspace_id),
            |o| match o {
                Outcome::Done(id) => DeleteOrganizationPayload {
                    deleted_organization_id: Some(ID(id.encode())),
                    approval_request: None,
                },
                Outcome::Held(r) => DeleteOrganizationPayload {
                    deleted_organization_id: None,
                    approval_request: Some(super::approvals::ApprovalRequest(*r)),
                },
            },
        )
        .await
    }

    /// Allocates (positive delta) or releases (negative delta) usage at an organization,
    /// atomically against every cap on its path (owners and admins).
    async fn record_usage(
        &self,
        ctx: &Context<'_>,
        input: RecordUsageInput,
    ) -> Result<Replayable<RecordUsagePayload>> {
        let change = domain::usage::UsageChange {
            organization_id: org_id(&input.organization_id, "organization")?,
            resource: input.resource,
            delta: i64::from(input.delta),
        };
        mutate_organization(ctx, input.idempotency_key, async move |s, a, k| {
            domain::usage::record(s, a, change, k).await
        })
        .await
    }

    /// Sets or removes an organization's cap on a resource (owners and admins).
    async fn set_organization_limit(
        &self,
        ctx: &Context<'_>,
        input: SetOrganizationLimitInput,
    ) -> Result<Replayable<SetOrganizationLimitPayload>> {
        let change = domain::usage::LimitChange {
            organization_id: org_id(&input.organization_id, "organization")?,
            resource: input.resource,
            limit: input.limit.map(i64::from),
        };
        mutate_organization(ctx, input.idempotency_key, async move |s, a, k| {
            domain::usage::set_limit(s, a, change, k).await
        })
        .await
    }
}
