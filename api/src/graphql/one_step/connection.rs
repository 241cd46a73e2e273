//! Relay connections of declared objects, answered in one step like the objects.
//!
//! Hand-written rather than `async_graphql::connection::Connection` so that a page (and the
//! children pages a tree view nests in it) is written as one piece of text. A connection of
//! `Foo` is named `FooConnection` and its edges `FooEdge` (Relay's convention); each new
//! one is a `concrete` line below.

use std::borrow::Cow;

use async_graphql::connection::PageInfo;
use async_graphql::parser::types::Field as FieldNode;
use async_graphql::{ContextSelectionSet, Object, ObjectType, Positioned};

use super::{Declared, Fast, FastList, Field, NoEdge, OneStep, Plan, list};
use crate::db::repo::Page;
use crate::graphql::json;
use crate::graphql::organizations::OrganizationObject;

/// Declared objects listed in connections: the opaque cursor of a row.
pub trait Paged: OneStep + ObjectType + 'static {
    /// The cursor of a row.
    fn cursor(row: &Self::Row) -> String;
}

/// An edge in a connection.
pub struct Edge<N>(pub Fast<N>);

/// An edge in a connection.
#[Object(concrete(name = "OrganizationEdge", params(OrganizationObject)))]
impl<N: Paged> Edge<N> {
    /// The item at the end of the edge
    async fn node(&self) -> &Fast<N> {
        &self.0
    }

    /// A cursor for use in pagination
    async fn cursor(&self) -> String {
        N::cursor(self.0.0.parts().0)
    }
}

/// An edge's fields in one step.
pub enum EdgeStep<N: OneStep> {
    /// `node`.
    Node(Plan<N>),
    /// `cursor`.
    Cursor,
}

impl<N: Paged> Declared for Edge<N> {
    type Row = N::Row;

    fn graphql_name() -> Cow<'static, str> {
        format!("{}Edge", N::graphql_name()).into()
    }

    fn fields() -> &'static [Field<N::Row>] {
        &[]
    }
}

impl<N: Paged> OneStep for Edge<N> {
    type Edge = EdgeStep<N>;
    type With<'a> = N::With<'a>;
    const EDGES: &'static [&'static str] = &["node", "cursor"];

    fn compile_edge(
        ctx: &ContextSelectionSet<'_>,
        field: &Positioned<FieldNode>,
    ) -> Option<Self::Edge> {
        Some(match field.node.name.node.as_str() {
            "node" => EdgeStep::Node(Plan::compile(
                &ctx.with_selection_set(&field.node.selection_set),
            )?),
            _ => EdgeStep::Cursor,
        })
    }

    fn write_edge(
        row: &N::Row,
        with: N::With<'_>,
        edge: &Self::Edge,
        out: &mut String,
    ) -> Option<()> {
        match edge {
            EdgeStep::Node(plan) => plan.write(row, with, out),
            EdgeStep::Cursor => {
                json::string(out, &N::cursor(row));
                Some(())
            }
        }
    }

    fn parts(&self) -> (&N::Row, N::With<'_>) {
        self.0.0.parts()
    }
}

/// A page of declared objects (Relay connection).
pub struct Connection<N> {
    edges: Vec<Fast<Edge<N>>>,
    has_previous_page: bool,
    has_next_page: bool,
}

impl<N: Paged> Connection<N> {
    /// A page from rows fetched with `page` (which asked one extra row), `node` making each
    /// shown row an object.
    pub fn from_rows(
        rows: Vec<N::Row>,
        page: Page,
        node: impl Fn(N::Row) -> Fast<N>,
    ) -> Fast<Self> {
        let want = page.size();
        let has_next_page = rows.len() > want;
        let edges = rows
            .into_iter()
            .take(want)
            .map(|r| Fast(Edge(node(r))))
            .collect();
        Fast(Self {
            edges,
            has_previous_page: page.after.is_some(),
            has_next_page,
        })
    }

    fn cursor(edge: Option<&Fast<Edge<N>>>) -> Option<String> {
        edge.map(|e| N::cursor(e.0.parts().0))
    }
}

/// A page of a list (Relay cursor connection).
#[Object(concrete(name = "OrganizationConnection", params(OrganizationObject)))]
impl<N: Paged> Connection<N>
where
    Edge<N>: ObjectType,
{
    /// Information to aid in pagination.
    async fn page_info(&self) -> PageInfo {
        PageInfo {
            has_previous_page: self.has_previous_page,
            has_next_page: self.has_next_page,
            start_cursor: Self::cursor(self.edges.first()),
            end_cursor: Self::cursor(self.edges.last()),
        }
    }

    /// A list of edges.
    async fn edges(&self) -> FastList<&Fast<Edge<N>>> {
        self.edges.iter().collect()
    }

    /// A list of nodes.
    async fn nodes(&self) -> FastList<&Fast<N>> {
        self.edges.iter().map(|e| &e.0.0).collect()
    }
}

/// A connection's fields in one step.
pub enum ConnectionEdge<N: Paged> {
    /// `edges`.
    Edges(Plan<Edge<N>>),
    /// `nodes`.
    Nodes(Plan<N>),
    /// `pageInfo`.
    PageInfo(Plan<PageInfo>),
}

impl<N: Paged> ConnectionEdge<N> {
    /// The plan of the nodes this field writes, if it writes nodes.
    pub fn nodes(&self) -> Option<&Plan<N>> {
        match self {
            Self::Nodes(plan) => Some(plan),
            Self::Edges(edge) => edge.edges().find_map(|e| match e {
                EdgeStep::Node(plan) => Some(plan),
                EdgeStep::Cursor => None,
            }),
            Self::PageInfo(_) => None,
        }
    }
}

impl<N: Paged> Declared for Connection<N> {
    type Row = Self;

    fn graphql_name() -> Cow<'static, str> {
        format!("{}Connection", N::graphql_name()).into()
    }

    fn fields() -> &'static [Field<Self>] {
        &[]
    }
}

impl<N: Paged> OneStep for Connection<N> {
    type Edge = ConnectionEdge<N>;
    type With<'a> = ();
    const EDGES: &'static [&'static str] = &["edges", "nodes", "pageInfo"];

    fn compile_edge(
        ctx: &ContextSelectionSet<'_>,
        field: &Positioned<FieldNode>,
    ) -> Option<Self::Edge> {
        let sub = ctx.with_selection_set(&field.node.selection_set);
        Some(match field.node.name.node.as_str() {
            "edges" => ConnectionEdge::Edges(Plan::compile(&sub)?),
            "nodes" => ConnectionEdge::Nodes(Plan::compile(&sub)?),
            _ => ConnectionEdge::PageInfo(Plan::compile(&sub)?),
        })
    }

    fn write_edge(row: &Self, _: (), edge: &Self::Edge, out: &mut String) -> Option<()> {
        let page = PageRows {
            has_previous_page: row.has_previous_page,
            has_next_page: row.has_next_page,
        };
        page.write_edge(&row.edges, |e| e.0.parts(), edge, out)
    }

    fn parts(&self) -> (&Self, ()) {
        (self, ())
    }
}

/// What a page shows besides its rows.
#[derive(Clone, Copy)]
pub struct PageRows {
    /// `pageInfo.hasPreviousPage`.
    pub has_previous_page: bool,
    /// `pageInfo.hasNextPage`.
    pub has_next_page: bool,
}

impl PageRows {
    /// Of rows fetched with `page` (one extra row).
    pub fn of<T>(rows: &[T], page: Page) -> (&[T], Self) {
        let want = page.size();
        (
            &rows[..rows.len().min(want)],
            Self {
                has_previous_page: page.after.is_some(),
                has_next_page: rows.len() > want,
            },
        )
    }

    /// Appends a connection of `items` with its compiled selection, `parts` giving each
    /// item's row and what its edges read.
    pub fn write<N: Paged, I>(
        self,
        items: &[I],
        parts: impl for<'a> Fn(&'a I) -> (&'a N::Row, N::With<'a>),
        plan: &Plan<Connection<N>>,
        out: &mut String,
    ) -> Option<()> {
        plan.write_by(
            out,
            |_, _| None,
            |edge, out| self.write_edge(items, &parts, edge, out),
        )
    }

    fn write_edge<N: Paged, I>(
        self,
        items: &[I],
        parts: impl for<'a> Fn(&'a I) -> (&'a N::Row, N::With<'a>),
        edge: &ConnectionEdge<N>,
        out: &mut String,
    ) -> Option<()> {
        match edge {
            ConnectionEdge::Edges(plan) => list(out, items, |i, out| {
                let (row, with) = parts(i);
                plan.write(row, with, out)
            }),
            ConnectionEdge::Nodes(plan) => list(out, items, |i, out| {
                let (row, with) = parts(i);
                plan.write(row, with, out)
            }),
            ConnectionEdge::PageInfo(plan) => {
                let cursor = |i: Option<&I>| i.map(|i| N::cursor(parts(i).0));
                let info = PageInfo {
                    has_previous_page: self.has_previous_page,
                    has_next_page: self.has_next_page,
                    start_cursor: cursor(items.first()),
                    end_cursor: cursor(items.last()),
                };
                plan.write(&info, (), out)
            }
        }
    }
}

impl Declared for PageInfo {
    type Row = PageInfo;

    fn graphql_name() -> Cow<'static, str> {
        "PageInfo".into()
    }

    fn fields() -> &'static [Field<PageInfo>] {
        static FIELDS: std::sync::LazyLock<Vec<Field<PageInfo>>> = std::sync::LazyLock::new(|| {
            use super::scalar::JsonScalar;
            vec![
                Field::new("has_previous_page", |p, out| {
                    p.has_previous_page.write_json(out)
                }),
                Field::new("has_next_page", |p, out| p.has_next_page.write_json(out)),
                Field::new("start_cursor", |p, out| p.start_cursor.write_json(out)),
                Field::new("end_cursor", |p, out| p.end_cursor.write_json(out)),
            ]
        });
        &FIELDS
    }
}

impl OneStep for PageInfo {
    type Edge = NoEdge;
    type With<'a> = ();
    const EDGES: &'static [&'static str] = &[];

    fn compile_edge(_: &ContextSelectionSet<'_>, _: &Positioned<FieldNode>) -> Option<NoEdge> {
        None
    }

    fn write_edge(_: &PageInfo, _: (), edge: &NoEdge, _: &mut String) -> Option<()> {
        match *edge {}
    }

    fn parts(&self) -> (&PageInfo, ()) {
        (self, ())
    }
}
