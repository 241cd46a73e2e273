//! A selection compiled once for one-step writing: every field's response key with its
//! separator, and what writes its value.

use async_graphql::parser::types::{Field, Selection, SelectionSet};
use async_graphql::{ContextSelectionSet, Positioned};

use super::OneStep;
use crate::graphql::json;

/// What a plan writes for one field.
pub enum Step<T: OneStep> {
    /// A declared field, written from the row.
    Field(fn(&T::Row, &mut String)),
    /// Fixed text (`__typename`).
    Text(Box<str>),
    /// A hand-written edge, compiled by `OneStep::compile_edge`.
    Edge(T::Edge),
    /// A field only its resolver may answer: a guarded or per-caller field, or an edge the
    /// one-step path does not know. Writing a plan that holds one declines.
    Resolver,
}

/// The selection of a `T` compiled for writing (see `OneStep`). Fragments whose type
/// condition is `T` (or absent) are inlined; a repeated scalar key is written once
/// (validation guarantees both occurrences are the same field).
pub struct Plan<T: OneStep> {
    fields: Vec<(Box<str>, Step<T>)>,
}

impl<T: OneStep> Plan<T> {
    /// Compiles the selection of `ctx`; `None` when the engine must resolve it: a directive,
    /// a fragment on another type, or a repeated key with a sub-selection (values that need
    /// merging).
    pub fn compile(ctx: &ContextSelectionSet<'_>) -> Option<Self> {
        let mut plan = Plan { fields: Vec::new() };
        let mut keys: Vec<&str> = Vec::new();
        let type_name = T::graphql_name();
        plan.collect(ctx, &ctx.item.node, &type_name, &mut keys)?;
        Some(plan)
    }

    fn collect<'a>(
        &mut self,
        ctx: &ContextSelectionSet<'a>,
        set: &'a SelectionSet,
        type_name: &str,
        keys: &mut Vec<&'a str>,
    ) -> Option<()> {
        for item in &set.items {
            match &item.node {
                Selection::Field(f) => {
                    if !f.node.directives.is_empty() {
                        return None;
                    }
                    let key = f.node.response_key().node.as_str();
                    if keys.contains(&key) {
                        if f.node.selection_set.node.items.is_empty() {
                            continue;
                        }
                        return None;
                    }
                    keys.push(key);
                    // GraphQL names are `[_A-Za-z][_0-9A-Za-z]*`: nothing to escape.
                    let separator = if self.fields.is_empty() { '{' } else { ',' };
                    let step = Self::step(ctx, f, type_name);
                    self.fields
                        .push((format!("{separator}\"{key}\":").into(), step));
                }
                Selection::InlineFragment(i) => {
                    let i = &i.node;
                    let on = i.type_condition.as_ref().map(|c| c.node.on.node.as_str());
                    if !i.directives.is_empty() || on.is_some_and(|on| on != type_name) {
                        return None;
                    }
                    self.collect(ctx, &i.selection_set.node, type_name, keys)?;
                }
                Selection::FragmentSpread(s) => {
                    if !s.node.directives.is_empty() {
                        return None;
                    }
                    let f = ctx.query_env.fragments.get(&s.node.fragment_name.node)?;
                    if !f.node.directives.is_empty()
                        || f.node.type_condition.node.on.node != type_name
                    {
                        return None;
                    }
                    self.collect(ctx, &f.node.selection_set.node, type_name, keys)?;
                }
            }
        }
        Some(())
    }

    fn step(ctx: &ContextSelectionSet<'_>, f: &Positioned<Field>, type_name: &str) -> Step<T> {
        let name = f.node.name.node.as_str();
        if name == "__typename" {
            let mut text = String::new();
            json::string(&mut text, type_name);
            return Step::Text(text.into());
        }
        if let Some(d) = T::fields().iter().find(|d| d.name == name) {
            return Step::Field(d.write);
        }
        if T::EDGES.contains(&name)
            && let Some(edge) = T::compile_edge(ctx, f)
        {
            return Step::Edge(edge);
        }
        Step::Resolver
    }

    /// The compiled edges.
    pub fn edges(&self) -> impl Iterator<Item = &T::Edge> {
        self.fields.iter().filter_map(|(_, s)| match s {
            Step::Edge(e) => Some(e),
            _ => None,
        })
    }

    /// Appends the object of `row` (its edges reading `with`); `None` when a field needs
    /// its resolver, `out` then holding a partial object that the caller discards.
    pub fn write(&self, row: &T::Row, with: T::With<'_>, out: &mut String) -> Option<()> {
        self.write_by(
            out,
            |write, out| {
                write(row, out);
                Some(())
            },
            |edge, out| T::write_edge(row, with, edge, out),
        )
    }

    /// Appends an object whose declared fields are written by `field` and edges by `edge`
    /// (for objects written without a row of their own, like a page of prefetched rows).
    pub fn write_by(
        &self,
        out: &mut String,
        mut field: impl FnMut(fn(&T::Row, &mut String), &mut String) -> Option<()>,
        mut edge: impl FnMut(&T::Edge, &mut String) -> Option<()>,
    ) -> Option<()> {
        if self.fields.is_empty() {
            out.push_str("{}");
            return Some(());
        }
        for (key, step) in &self.fields {
            out.push_str(key);
            match step {
                Step::Field(write) => field(*write, out)?,
                Step::Text(text) => out.push_str(text),
                Step::Edge(e) => edge(e, out)?,
                Step::Resolver => return None,
            }
        }
        out.push('}');
        Some(())
    }
}
