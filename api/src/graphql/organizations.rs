//! Organizations: the tree inside a workspace, its usage and its caps.

use std::sync::Arc;

use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject};
use uuid::Uuid;

use super::json;
use super::pagination::{self, complexity};
use super::replay::{self, Replayable};
use super::resources::{Resource, ResourceKind};
use super::workspaces::{Workspace, load_visible};
use super::{error, rc};
use crate::db::models::OrganizationRow;
use crate::db::repo::Page;
use crate::domain;
use crate::ids::{IdMap, OrganizationId, WorkspaceId};

/// The fields of an organization (the GraphQL object `Organization`).
#[derive(Clone)]
pub struct OrganizationObject(pub OrganizationRow, pub Option<Arc<Prefetch>>);

/// A node of a workspace's organization tree (a department, region or customer).
///
/// It resolves as `OrganizationObject`, except that a selection of scalar fields only (the
/// usual shape of `parent`, `ancestors` and child nodes in a tree view) is answered in one
/// synchronous step instead of one future per field: a 100-organization tree has over a
/// thousand such objects.
#[derive(Clone)]
pub struct Organization(pub OrganizationObject);

impl Organization {
    /// An organization whose nested edges go through the request's DataLoaders.
    pub fn new(row: OrganizationRow) -> Self {
        Self(OrganizationObject(row, None))
    }

    /// An organization whose nested edges were prefetched with its page.
    pub fn prefetched(row: OrganizationRow, prefetch: Option<Arc<Prefetch>>) -> Self {
        Self(OrganizationObject(row, prefetch))
    }

    /// Opaque id (for the `Node` interface).
    pub async fn id(&self, _ctx: &Context<'_>) -> Result<ID> {
        Ok(ID(OrganizationId(self.row().id).encode()))
    }

    /// The row.
    pub fn row(&self) -> &OrganizationRow {
        &self.0.0
    }
}

/// The selection of `item` as a value in one step (see `json`); `None` when it needs the
/// general resolver.
fn scalars_only<T: Scalars>(
    item: &T,
    ctx: &async_graphql::ContextSelectionSet<'_>,
) -> Option<async_graphql::Value> {
    one_step(
        ctx,
        256,
        || T::plan(ctx),
        |plan, out| item.write_json(plan, out),
    )
}

/// The value of a selection answered in one step by `write` with the selection's `plan`
/// (JSON text, see `json`), or `None` when it needs the general resolver: no plan, `write`
/// declines, or the one-step path is off (`GRAPHQL_ONE_STEP=off`). Every attempt is counted.
fn one_step<P>(
    ctx: &async_graphql::ContextSelectionSet<'_>,
    capacity: usize,
    plan: impl FnOnce() -> Option<P>,
    write: impl FnOnce(&P, &mut String) -> Option<()>,
) -> Option<async_graphql::Value> {
    let rc = ctx.data_unchecked::<super::RequestCtx>();
    if !rc.one_step {
        return None;
    }
    let value = plan().and_then(|plan| {
        let mut out = String::with_capacity(capacity);
        write(&plan, &mut out)?;
        json::into_value(rc.raw_json, out)
    });
    rc.one_step_outcomes.record(value.is_some());
    value
}

/// What a one-step organization selection writes for each field.
pub enum OrgField {
    Id,
    Name,
    Depth,
    CreatedAt,
    Typename,
    Parent(json::Plan<OrgField>),
    Ancestors(json::Plan<OrgField>),
    Usage(json::Plan<UsageField>),
    /// The children page asked for (answered only when it is the prefetched one).
    Children(Page, json::Plan<ConnectionField>),
}

/// Compiles an organization's selection for one-step writing (see `write_org`): plain
/// fields that are scalars or, unless `nested`, edges a page prefetches (parent, ancestors,
/// usage, children). Organizations inside those edges are answered without a prefetch, so
/// their own edges need the general resolver.
fn org_plan(
    ctx: &async_graphql::ContextSelectionSet<'_>,
    nested: bool,
) -> Option<json::Plan<OrgField>> {
    json::Plan::new(ctx, |field| {
        let f = &field.node;
        let sub = || ctx.with_selection_set(&f.selection_set);
        Some(match f.name.node.as_str() {
            "id" => OrgField::Id,
            "name" => OrgField::Name,
            "depth" => OrgField::Depth,
            "createdAt" => OrgField::CreatedAt,
            "__typename" => OrgField::Typename,
            _ if nested => return None,
            "parent" => OrgField::Parent(org_plan(&sub(), true)?),
            "ancestors" => OrgField::Ancestors(org_plan(&sub(), true)?),
            "usage" => OrgField::Usage(usage_plan(&sub())?),
            "children" => {
                let args = ctx.with_field(field);
                let (_, first) = args.param_value::<Option<i32>>("first", None).ok()?;
                let (_, after) = args.param_value::<Option<String>>("after", None).ok()?;
                let page = pagination::page(first, after.as_deref()).ok()?;
                OrgField::Children(page, connection_plan(&sub())?)
            }
            _ => return None,
        })
    })
}

/// Writes an organization with a compiled selection (see `org_plan`); `None` when an edge
/// is not in `prefetch` (its page's parents, ancestors, usage and children page).
fn write_org(
    row: &OrganizationRow,
    prefetch: Option<&Prefetch>,
    plan: &json::Plan<OrgField>,
    out: &mut String,
) -> Option<()> {
    plan.write(out, |f, out| {
        match f {
            OrgField::Id => OrganizationId(row.id).write_json(out),
            OrgField::Name => json::string(out, &row.name),
            OrgField::Depth => json::int(out, i64::from(row.depth)),
            OrgField::CreatedAt => json::string(out, &row.created_at.to_datetime().to_rfc3339()),
            OrgField::Typename => out.push_str("\"Organization\""),
            OrgField::Parent(plan) => {
                let p = prefetch?;
                match row.parent_id {
                    None => out.push_str("null"),
                    Some(id) => write_org(p.orgs.get(&id)?, None, plan, out)?,
                }
            }
            OrgField::Ancestors(plan) => {
                let p = prefetch?;
                list(out, &row.ancestors, |a, out| {
                    write_org(p.orgs.get(a)?, None, plan, out)
                })?;
            }
            OrgField::Usage(plan) => {
                let entries = prefetch?.usage.as_ref()?.get(&row.id)?;
                list(out, entries, |e, out| write_usage(e, plan, out))?;
            }
            OrgField::Children(page, plan) => {
                let (prefetched, by_parent) = prefetch?.children.as_ref()?;
                if page != prefetched {
                    return None;
                }
                write_connection(by_parent.get(&row.id)?, *page, plan, out)?;
            }
        }
        Some(())
    })
}

/// Writes a JSON array of `items`.
fn list<T>(
    out: &mut String,
    items: &[T],
    mut item: impl FnMut(&T, &mut String) -> Option<()>,
) -> Option<()> {
    out.push('[');
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        item(x, out)?;
    }
    out.push(']');
    Some(())
}

/// What a one-step connection selection writes for each field.
pub enum ConnectionField {
    Typename,
    Edges(json::Plan<EdgeField>),
    Nodes(json::Plan<OrgField>),
    PageInfo(json::Plan<PageInfoField>),
}

/// What a one-step `PageInfo` selection writes for each field.
pub enum PageInfoField {
    HasPreviousPage,
    HasNextPage,
    StartCursor,
    EndCursor,
    Typename,
}

/// Compiles a (children) connection's selection; its nodes are answered without a prefetch.
fn connection_plan(
    ctx: &async_graphql::ContextSelectionSet<'_>,
) -> Option<json::Plan<ConnectionField>> {
    json::Plan::new(ctx, |field| {
        let f = &field.node;
        let sub = ctx.with_selection_set(&f.selection_set);
        Some(match f.name.node.as_str() {
            "__typename" => ConnectionField::Typename,
            "edges" => ConnectionField::Edges(edge_plan(&sub, true)?),
            "nodes" => ConnectionField::Nodes(org_plan(&sub, true)?),
            "pageInfo" => ConnectionField::PageInfo(json::Plan::new(&sub, |p| {
                Some(match p.node.name.node.as_str() {
                    "hasPreviousPage" => PageInfoField::HasPreviousPage,
                    "hasNextPage" => PageInfoField::HasNextPage,
                    "startCursor" => PageInfoField::StartCursor,
                    "endCursor" => PageInfoField::EndCursor,
                    "__typename" => PageInfoField::Typename,
                    _ => return None,
                })
            })?),
            _ => return None,
        })
    })
}

/// Writes a connection over `rows` (fetched with `page`, one extra row) in one step.
fn write_connection(
    rows: &[OrganizationRow],
    page: Page,
    plan: &json::Plan<ConnectionField>,
    out: &mut String,
) -> Option<()> {
    let want = page.size();
    let shown = &rows[..rows.len().min(want)];
    let cursor = |r: Option<&OrganizationRow>, out: &mut String| match r {
        Some(r) => json::string(out, &pagination::encode_cursor(r.id)),
        None => out.push_str("null"),
    };
    plan.write(out, |f, out| {
        match f {
            ConnectionField::Typename => out.push_str("\"OrganizationConnection\""),
            ConnectionField::Edges(plan) => list(out, shown, |r, out| {
                write_edge(
                    plan,
                    out,
                    |out| json::string(out, &pagination::encode_cursor(r.id)),
                    |node, out| write_org(r, None, node, out),
                )
            })?,
            ConnectionField::Nodes(plan) => {
                list(out, shown, |r, out| write_org(r, None, plan, out))?
            }
            ConnectionField::PageInfo(plan) => plan.write(out, |p, out| {
                match p {
                    PageInfoField::HasPreviousPage => json::boolean(out, page.after.is_some()),
                    PageInfoField::HasNextPage => json::boolean(out, rows.len() > want),
                    PageInfoField::StartCursor => cursor(shown.first(), out),
                    PageInfoField::EndCursor => cursor(shown.last(), out),
                    PageInfoField::Typename => out.push_str("\"PageInfo\""),
                }
                Some(())
            })?,
        }
        Some(())
    })
}

/// What a one-step edge selection writes for each field.
pub enum EdgeField {
    Cursor,
    Node(json::Plan<OrgField>),
    Typename,
}

/// Compiles an edge's selection (`cursor`, `node`, `__typename`).
fn edge_plan(
    ctx: &async_graphql::ContextSelectionSet<'_>,
    nested: bool,
) -> Option<json::Plan<EdgeField>> {
    json::Plan::new(ctx, |f| {
        Some(match f.node.name.node.as_str() {
            "cursor" => EdgeField::Cursor,
            "node" => EdgeField::Node(org_plan(
                &ctx.with_selection_set(&f.node.selection_set),
                nested,
            )?),
            "__typename" => EdgeField::Typename,
            _ => return None,
        })
    })
}

/// Writes an edge in one step, `node` writing the node with its compiled selection.
fn write_edge(
    plan: &json::Plan<EdgeField>,
    out: &mut String,
    cursor: impl Fn(&mut String),
    node: impl Fn(&json::Plan<OrgField>, &mut String) -> Option<()>,
) -> Option<()> {
    plan.write(out, |f, out| {
        match f {
            EdgeField::Cursor => cursor(out),
            EdgeField::Node(plan) => node(plan, out)?,
            EdgeField::Typename => out.push_str("\"OrganizationEdge\""),
        }
        Some(())
    })
}

/// What a one-step usage entry selection writes for each field.
pub enum UsageField {
    Resource,
    Kind,
    WindowStart,
    Direct,
    Subtree,
    Limit,
    EffectiveLimit,
    Available,
    OverLimit,
    Typename,
}

/// Compiles a usage entry's selection of plain scalar fields.
fn usage_plan(ctx: &async_graphql::ContextSelectionSet<'_>) -> Option<json::Plan<UsageField>> {
    json::Plan::new(ctx, |f| {
        Some(match f.node.name.node.as_str() {
            "resource" => UsageField::Resource,
            "kind" => UsageField::Kind,
            "windowStart" => UsageField::WindowStart,
            "direct" => UsageField::Direct,
            "subtree" => UsageField::Subtree,
            "limit" => UsageField::Limit,
            "effectiveLimit" => UsageField::EffectiveLimit,
            "available" => UsageField::Available,
            "overLimit" => UsageField::OverLimit,
            "__typename" => UsageField::Typename,
            _ => return None,
        })
    })
}

/// Writes a usage entry with a compiled selection.
fn write_usage(
    e: &domain::usage::UsageEntry,
    plan: &json::Plan<UsageField>,
    out: &mut String,
) -> Option<()> {
    plan.write(out, |f, out| {
        match f {
            UsageField::Resource => json::string(out, &e.resource.key),
            UsageField::Kind => json::string(out, e.resource.kind.as_str()),
            UsageField::WindowStart => match e.window_start {
                Some(w) => json::string(out, &w.to_rfc3339()),
                None => out.push_str("null"),
            },
            UsageField::Direct => json::int(out, e.direct),
            UsageField::Subtree => json::int(out, e.subtree),
            UsageField::Limit => json::opt_int(out, e.limit),
            UsageField::EffectiveLimit => json::opt_int(out, e.effective_limit),
            UsageField::Available => json::opt_int(out, e.available),
            UsageField::OverLimit => json::boolean(out, e.over_limit),
            UsageField::Typename => out.push_str("\"OrganizationUsage\""),
        }
        Some(())
    })
}

impl async_graphql::OutputType for Organization {
    fn type_name() -> std::borrow::Cow<'static, str> {
        <OrganizationObject as async_graphql::OutputType>::type_name()
    }

    fn create_type_info(registry: &mut async_graphql::registry::Registry) -> String {
        <OrganizationObject as async_graphql::OutputType>::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &async_graphql::ContextSelectionSet<'_>,
        field: &async_graphql::Positioned<async_graphql::parser::types::Field>,
    ) -> async_graphql::ServerResult<async_graphql::Value> {
        match scalars_only(self, ctx) {
            Some(v) => Ok(v),
            None => async_graphql::OutputType::resolve(&self.0, ctx, field).await,
        }
    }
}

impl async_graphql::ContainerType for Organization {
    async fn resolve_field(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::ServerResult<Option<async_graphql::Value>> {
        async_graphql::ContainerType::resolve_field(&self.0, ctx).await
    }
}

impl async_graphql::ObjectType for Organization {}

/// Nested edges fetched up front for a whole page of organizations (one statement per
/// edge, whatever the page size and however busy the server: DataLoader batches are
/// time-based and split under load, a page's prefetch never does).
#[derive(Default)]
pub struct Prefetch {
    /// Parents and ancestors, by id.
    pub orgs: IdMap<Uuid, OrganizationRow>,
    /// Children pages, by parent and page.
    pub children: Option<(Page, IdMap<Uuid, Vec<OrganizationRow>>)>,
    /// Usage entries, by organization.
    pub usage: Option<IdMap<Uuid, Vec<domain::usage::UsageEntry>>>,
}

/// Fetches what the selection of a page of organizations (`edges { node { … } }`) will ask
/// for, in one batch per edge.
pub(crate) async fn prefetch(
    ctx: &Context<'_>,
    rows: &[OrganizationRow],
) -> Result<Option<Arc<Prefetch>>> {
    let node = ctx.look_ahead().field("edges").field("node");
    let wants_orgs = node.field("parent").exists() || node.field("ancestors").exists();
    let wants_usage = node.field("usage").exists();
    // One children page for the whole selection (aliases with other arguments use the loader).
    let children_page = match node.field("children").selection_fields().as_slice() {
        [only] => {
            let args = only.arguments()?;
            let int = |n: &str| {
                args.iter()
                    .find(|(k, _)| k.as_str() == n)
                    .and_then(|(_, v)| {
                        if let async_graphql::Value::Number(x) = v {
                            x.as_i64()
                        } else {
                            None
                        }
                    })
            };
            let text = |n: &str| {
                args.iter()
                    .find(|(k, _)| k.as_str() == n)
                    .and_then(|(_, v)| {
                        if let async_graphql::Value::String(s) = v {
                            Some(s.clone())
                        } else {
                            None
                        }
                    })
            };
            Some(pagination::page(
                int("first").map(|n| n as i32),
                text("after").as_deref(),
            )?)
        }
        _ => None,
    };
    if rows.is_empty() || !(wants_orgs || wants_usage || children_page.is_some()) {
        return Ok(None);
    }
    let rc = rc(ctx);
    let wanted: Vec<Uuid> = if wants_orgs {
        let in_page: crate::ids::IdSet<Uuid> = rows.iter().map(|r| r.id).collect();
        crate::ids::distinct(
            rows.iter()
                .flat_map(|r| r.ancestors.iter().copied())
                .filter(|a| !in_page.contains(a)),
        )
    } else {
        Vec::new()
    };
    let edges = domain::organizations::PageEdges::load(
        &rc.services,
        rows,
        &wanted,
        children_page,
        wants_usage,
    )
    .await
    .map_err(|e| rc.err(e))?;
    Ok(Some(Arc::new(Prefetch {
        orgs: edges
            .orgs
            .into_iter()
            .chain(rows.iter().cloned())
            .map(|o| (o.id, o))
            .collect(),
        children: children_page.zip(edges.children),
        usage: edges.usage,
    })))
}

#[Object(name = "Organization")]
impl OrganizationObject {
    /// Opaque id (`org_…`).
    pub async fn id(&self) -> ID {
        ID(OrganizationId(self.0.id).encode())
    }

    /// Name, 1–50 characters.
    async fn name(&self) -> &str {
        &self.0.name
    }

    /// 0 for a root, at most 9 (ten levels).
    async fn depth(&self) -> i32 {
        i32::from(self.0.depth)
    }

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
    ) -> Result<OrganizationConnection> {
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
    ) -> Result<OrganizationConnection> {
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

    /// When it was created.
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at.to_datetime()
    }
}

/// The fields of a usage entry (the GraphQL object `OrganizationUsage`).
pub struct OrganizationUsageObject(pub domain::usage::UsageEntry);

/// One organization's usage of one resource in the current window. Like `Organization`, a
/// selection of plain scalar fields is answered in one step.
pub struct OrganizationUsage(pub OrganizationUsageObject);

impl OrganizationUsage {
    fn new(entry: domain::usage::UsageEntry) -> Self {
        Self(OrganizationUsageObject(entry))
    }
}

impl async_graphql::OutputType for OrganizationUsage {
    fn type_name() -> std::borrow::Cow<'static, str> {
        <OrganizationUsageObject as async_graphql::OutputType>::type_name()
    }

    fn create_type_info(registry: &mut async_graphql::registry::Registry) -> String {
        <OrganizationUsageObject as async_graphql::OutputType>::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &async_graphql::ContextSelectionSet<'_>,
        field: &async_graphql::Positioned<async_graphql::parser::types::Field>,
    ) -> async_graphql::ServerResult<async_graphql::Value> {
        match scalars_only(self, ctx) {
            Some(v) => Ok(v),
            None => async_graphql::OutputType::resolve(&self.0, ctx, field).await,
        }
    }
}

#[Object(name = "OrganizationUsage")]
impl OrganizationUsageObject {
    /// Resource key.
    async fn resource(&self) -> &str {
        &self.0.resource.key
    }

    /// Allocated or metered.
    async fn kind(&self) -> ResourceKind {
        self.0.resource.kind.into()
    }

    /// The resource's definition.
    async fn definition(&self) -> Resource {
        Resource((*self.0.resource).clone())
    }

    /// Start of the current window of a metered resource; null for allocated ones.
    async fn window_start(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.0.window_start
    }

    /// The organization's own usage.
    async fn direct(&self) -> i64 {
        self.0.direct
    }

    /// Its own usage plus all its descendants'.
    async fn subtree(&self) -> i64 {
        self.0.subtree
    }

    /// Its own cap on the subtree usage; null when it inherits.
    async fn limit(&self) -> Option<i64> {
        self.0.limit
    }

    /// The tightest cap that applies here (its own or an ancestor's), expressed as the most
    /// this organization's subtree could reach now; null when nothing caps it.
    async fn effective_limit(&self) -> Option<i64> {
        self.0.effective_limit
    }

    /// How much more can be allocated here right now; null when unlimited.
    async fn available(&self) -> Option<i64> {
        self.0.available
    }

    /// True when the subtree uses more than the organization's own cap (a cap set below
    /// usage): nothing more can be allocated until usage falls below it.
    async fn over_limit(&self) -> bool {
        self.0.over_limit
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
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `createOrganization`.
#[derive(SimpleObject)]
pub struct CreateOrganizationPayload {
    /// The new organization.
    pub organization: Organization,
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

/// Result of `renameOrganization`.
#[derive(SimpleObject)]
pub struct RenameOrganizationPayload {
    /// The renamed organization.
    pub organization: Organization,
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

/// Result of `moveOrganization`.
#[derive(SimpleObject)]
pub struct MoveOrganizationPayload {
    /// The moved organization.
    pub organization: Organization,
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
    /// Id of the deleted organization.
    pub deleted_organization_id: ID,
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

/// Result of `recordUsage`.
#[derive(SimpleObject)]
pub struct RecordUsagePayload {
    /// The organization; its `usage` shows the result.
    pub organization: Organization,
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

/// Result of `setOrganizationLimit`.
#[derive(SimpleObject)]
pub struct SetOrganizationLimitPayload {
    /// The organization; its `usage` shows the new cap.
    pub organization: Organization,
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
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::organizations::create(s, a, new, k).await,
            |o| Some(o.workspace_id),
            |row| CreateOrganizationPayload {
                organization: Organization::new(row),
            },
        )
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
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::organizations::rename(s, a, change, k).await,
            |o| Some(o.workspace_id),
            |row| RenameOrganizationPayload {
                organization: Organization::new(row),
            },
        )
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
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::organizations::move_to(s, a, change, k).await,
            |o| Some(o.workspace_id),
            |row| MoveOrganizationPayload {
                organization: Organization::new(row),
            },
        )
        .await
    }

    /// Deletes an organization without children and usage (owners and admins).
    async fn delete_organization(
        &self,
        ctx: &Context<'_>,
        input: DeleteOrganizationInput,
    ) -> Result<Replayable<DeleteOrganizationPayload>> {
        let id = org_id(&input.organization_id, "organization")?;
        // Shows only the id the input held.
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::organizations::delete(s, a, id, k).await,
            |_| None,
            |id| DeleteOrganizationPayload {
                deleted_organization_id: ID(id.encode()),
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
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::usage::record(s, a, change, k).await,
            |o| Some(o.workspace_id),
            |row| RecordUsagePayload {
                organization: Organization::new(row),
            },
        )
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
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::usage::set_limit(s, a, change, k).await,
            |o| Some(o.workspace_id),
            |row| SetOrganizationLimitPayload {
                organization: Organization::new(row),
            },
        )
        .await
    }
}

/// A page of organizations (Relay connection). Hand-written rather than
/// `async_graphql::connection::Connection` so that edges whose node selection is plain
/// scalars resolve in one step: a tree view has a thousand of them per page.
pub struct OrganizationConnection {
    edges: Vec<OrganizationEdge>,
    has_previous_page: bool,
    has_next_page: bool,
}

impl OrganizationConnection {
    /// Builds a page from rows fetched with `page` (which asked one extra row).
    pub fn from_rows(
        rows: Vec<OrganizationRow>,
        page: Page,
        node: impl Fn(OrganizationRow) -> Organization,
    ) -> Self {
        let want = page.size();
        let has_next_page = rows.len() > want;
        let edges = rows
            .into_iter()
            .take(want)
            .map(|r| OrganizationEdge(OrganizationEdgeObject { node: node(r) }))
            .collect();
        Self {
            edges,
            has_previous_page: page.after.is_some(),
            has_next_page,
        }
    }
}

#[Object]
impl OrganizationConnection {
    /// Information to aid in pagination.
    async fn page_info(&self) -> async_graphql::connection::PageInfo {
        async_graphql::connection::PageInfo {
            has_previous_page: self.has_previous_page,
            has_next_page: self.has_next_page,
            start_cursor: self.edges.first().map(|e| e.0.encoded_cursor()),
            end_cursor: self.edges.last().map(|e| e.0.encoded_cursor()),
        }
    }

    /// A list of edges.
    async fn edges(&self) -> FastList<&OrganizationEdge> {
        FastList(self.edges.iter().collect())
    }

    /// A list of nodes.
    async fn nodes(&self) -> Vec<&Organization> {
        self.edges.iter().map(|e| &e.0.node).collect()
    }
}

/// The fields of an edge (the GraphQL object `OrganizationEdge`).
pub struct OrganizationEdgeObject {
    node: Organization,
}

impl OrganizationEdgeObject {
    /// The node's cursor (computed when asked: tree views seldom ask for it).
    fn encoded_cursor(&self) -> String {
        pagination::encode_cursor(self.node.row().id)
    }
}

/// An edge in a connection.
#[Object(name = "OrganizationEdge")]
impl OrganizationEdgeObject {
    /// The item at the end of the edge
    async fn node(&self) -> &Organization {
        &self.node
    }

    /// A cursor for use in pagination
    async fn cursor(&self) -> String {
        self.encoded_cursor()
    }
}

/// An edge that resolves `{ cursor node { …scalars… } }` in one step.
pub struct OrganizationEdge(OrganizationEdgeObject);

impl OrganizationEdge {}

impl async_graphql::OutputType for OrganizationEdge {
    fn type_name() -> std::borrow::Cow<'static, str> {
        <OrganizationEdgeObject as async_graphql::OutputType>::type_name()
    }

    fn create_type_info(registry: &mut async_graphql::registry::Registry) -> String {
        <OrganizationEdgeObject as async_graphql::OutputType>::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &async_graphql::ContextSelectionSet<'_>,
        field: &async_graphql::Positioned<async_graphql::parser::types::Field>,
    ) -> async_graphql::ServerResult<async_graphql::Value> {
        match scalars_only(self, ctx) {
            Some(v) => Ok(v),
            None => async_graphql::OutputType::resolve(&self.0, ctx, field).await,
        }
    }
}

/// Objects that can answer a plain selection in one step.
pub trait Scalars {
    /// The selection compiled for writing (see `json::Plan`).
    type Plan;

    /// Compiles the selection, or `None` when it needs the general resolver.
    fn plan(ctx: &async_graphql::ContextSelectionSet<'_>) -> Option<Self::Plan>;

    /// Writes the object with a compiled selection as JSON text (see `json`), or `None`
    /// when it needs the general resolver after all.
    fn write_json(&self, plan: &Self::Plan, out: &mut String) -> Option<()>;
}

impl Scalars for Organization {
    type Plan = json::Plan<OrgField>;

    fn plan(ctx: &async_graphql::ContextSelectionSet<'_>) -> Option<Self::Plan> {
        org_plan(ctx, false)
    }

    fn write_json(&self, plan: &Self::Plan, out: &mut String) -> Option<()> {
        write_org(self.row(), self.0.1.as_deref(), plan, out)
    }
}

impl Scalars for OrganizationUsage {
    type Plan = json::Plan<UsageField>;

    fn plan(ctx: &async_graphql::ContextSelectionSet<'_>) -> Option<Self::Plan> {
        usage_plan(ctx)
    }

    fn write_json(&self, plan: &Self::Plan, out: &mut String) -> Option<()> {
        write_usage(&self.0.0, plan, out)
    }
}

impl<T: Scalars> Scalars for &T {
    type Plan = T::Plan;

    fn plan(ctx: &async_graphql::ContextSelectionSet<'_>) -> Option<Self::Plan> {
        T::plan(ctx)
    }

    fn write_json(&self, plan: &Self::Plan, out: &mut String) -> Option<()> {
        (**self).write_json(plan, out)
    }
}

impl Scalars for OrganizationEdge {
    type Plan = json::Plan<EdgeField>;

    fn plan(ctx: &async_graphql::ContextSelectionSet<'_>) -> Option<Self::Plan> {
        edge_plan(ctx, false)
    }

    fn write_json(&self, plan: &Self::Plan, out: &mut String) -> Option<()> {
        write_edge(
            plan,
            out,
            |out| json::string(out, &self.0.encoded_cursor()),
            |node, out| self.0.node.write_json(node, out),
        )
    }
}

/// A list (`[T!]!`) whose items, when they all take the one-step path, are answered without
/// a future per item; otherwise it resolves like any list.
pub struct FastList<T>(pub Vec<T>);

impl<T> FromIterator<T> for FastList<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl<T: Scalars + async_graphql::OutputType> async_graphql::OutputType for FastList<T> {
    fn type_name() -> std::borrow::Cow<'static, str> {
        <Vec<T> as async_graphql::OutputType>::type_name()
    }

    fn qualified_type_name() -> String {
        <Vec<T> as async_graphql::OutputType>::qualified_type_name()
    }

    fn create_type_info(registry: &mut async_graphql::registry::Registry) -> String {
        <Vec<T> as async_graphql::OutputType>::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &async_graphql::ContextSelectionSet<'_>,
        field: &async_graphql::Positioned<async_graphql::parser::types::Field>,
    ) -> async_graphql::ServerResult<async_graphql::Value> {
        // A tree view's node with its edges is around a kilobyte of JSON (growing the buffer
        // copies it: better too big than too small).
        let capacity = (self.0.len() * 2048).min(1 << 21);
        let written = one_step(
            ctx,
            capacity,
            || T::plan(ctx),
            |plan, out| list(out, &self.0, |item, out| item.write_json(plan, out)),
        );
        match written {
            Some(value) => Ok(value),
            None => {
                async_graphql::resolver_utils::resolve_list(
                    ctx,
                    field,
                    self.0.iter(),
                    Some(self.0.len()),
                )
                .await
            }
        }
    }
}
