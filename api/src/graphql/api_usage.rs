//! What the API usage counters need to know about a request, read from its document before
//! execution (the rules are in `domain::api_usage`): the operation's key and the tenant ids
//! it names. Linear in the document and the variables; no statement.

use std::collections::{BTreeSet, HashSet};

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, Selection, SelectionSet,
};
use async_graphql::{Positioned, Variables};

use crate::domain::api_usage::{self, INVALID, Owner, Owners};

/// Deepest nesting of an argument value looked into (variables are JSON, already bounded by
/// the JSON reader; fragments by the document limits).
const MAX_DEPTH: usize = 64;

/// The counters' view of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    /// The tenant ids it names.
    pub owners: Owners,
    /// The operation key (at most `MAX_OPERATION_CHARS` characters).
    pub operation: String,
}

impl Attribution {
    /// A request whose document did not parse: the ids of its variables, `(invalid)`.
    pub fn unparsed(variables: &Variables) -> Self {
        let mut owners = Owners::default();
        for v in variables.values() {
            if !const_value(v, &mut owners, 0) {
                break;
            }
        }
        Self {
            owners,
            operation: INVALID.into(),
        }
    }

    /// The operation `operation_name` chooses in `doc` (as the engine chooses it) and the ids
    /// of its arguments and of the variables they use.
    pub fn of(
        doc: &ExecutableDocument,
        operation_name: Option<&str>,
        variables: &Variables,
    ) -> Self {
        let chosen = match (&doc.operations, operation_name) {
            (DocumentOperations::Single(op), None) => Some((None, op)),
            (DocumentOperations::Single(_), Some(_)) => None,
            (DocumentOperations::Multiple(ops), Some(name)) => ops
                .get_key_value(name)
                .map(|(n, op)| (Some(n.as_str()), op)),
            (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => {
                ops.iter().next().map(|(n, op)| (Some(n.as_str()), op))
            }
            (DocumentOperations::Multiple(_), None) => None,
        };
        let Some((name, op)) = chosen else {
            return Self::unparsed(variables);
        };
        let mut walk = Walk {
            doc,
            variables,
            owners: Owners::default(),
            seen_variables: HashSet::new(),
            seen_fragments: HashSet::new(),
            full: false,
        };
        walk.set(&op.node.selection_set.node, 0);
        let operation = match name {
            Some(n) => api_usage::bounded(n).to_string(),
            None => root_fields(doc, &op.node),
        };
        Self {
            owners: walk.owners,
            operation,
        }
    }
}

/// The root fields of an unnamed operation: their names (not aliases), sorted, distinct,
/// comma-separated, cut to `MAX_OPERATION_CHARS`.
fn root_fields(doc: &ExecutableDocument, op: &OperationDefinition) -> String {
    fn collect<'a>(
        doc: &'a ExecutableDocument,
        set: &'a SelectionSet,
        names: &mut BTreeSet<&'a str>,
        seen: &mut HashSet<&'a str>,
        depth: usize,
    ) {
        if depth > MAX_DEPTH {
            return;
        }
        for item in &set.items {
            match &item.node {
                Selection::Field(f) => {
                    names.insert(f.node.name.node.as_str());
                }
                Selection::InlineFragment(i) => {
                    collect(doc, &i.node.selection_set.node, names, seen, depth + 1)
                }
                Selection::FragmentSpread(s) => {
                    let name = s.node.fragment_name.node.as_str();
                    if seen.insert(name)
                        && let Some(f) = doc.fragments.get(name)
                    {
                        collect(doc, &f.node.selection_set.node, names, seen, depth + 1);
                    }
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    collect(
        doc,
        &op.selection_set.node,
        &mut names,
        &mut HashSet::new(),
        0,
    );
    let mut key = String::new();
    for n in names {
        if !key.is_empty() {
            key.push(',');
        }
        key.push_str(n);
        if key.len() > api_usage::MAX_OPERATION_CHARS {
            break;
        }
    }
    match api_usage::bounded(&key) {
        "" => INVALID.into(),
        k => k.to_string(),
    }
}

/// The argument values of a selection (fragments spread in it once each, variables read
/// once each), collecting tenant ids until [`api_usage::MAX_OWNERS`] are found.
struct Walk<'a> {
    doc: &'a ExecutableDocument,
    variables: &'a Variables,
    owners: Owners,
    seen_variables: HashSet<&'a str>,
    seen_fragments: HashSet<&'a str>,
    full: bool,
}

impl<'a> Walk<'a> {
    fn set(&mut self, set: &'a SelectionSet, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        for item in &set.items {
            if self.full {
                return;
            }
            match &item.node {
                Selection::Field(f) => {
                    for (_, value) in &f.node.arguments {
                        self.value(value, 0);
                    }
                    self.set(&f.node.selection_set.node, depth + 1);
                }
                Selection::InlineFragment(i) => self.set(&i.node.selection_set.node, depth + 1),
                Selection::FragmentSpread(s) => {
                    let name = s.node.fragment_name.node.as_str();
                    if self.seen_fragments.insert(name)
                        && let Some(f) = self.doc.fragments.get(name)
                    {
                        self.set(&f.node.selection_set.node, depth + 1);
                    }
                }
            }
        }
    }

    fn value(&mut self, v: &'a Positioned<async_graphql_value::Value>, depth: usize) {
        self.node(&v.node, depth);
    }

    fn node(&mut self, v: &'a async_graphql_value::Value, depth: usize) {
        use async_graphql_value::Value as V;
        if self.full || depth > MAX_DEPTH {
            return;
        }
        match v {
            V::String(s) => {
                if let Some(o) = Owner::parse(s) {
                    self.full = !self.owners.push(o);
                }
            }
            V::List(items) => items.iter().for_each(|i| self.node(i, depth + 1)),
            V::Object(map) => map.values().for_each(|i| self.node(i, depth + 1)),
            V::Variable(name) if self.seen_variables.insert(name.as_str()) => {
                if let Some(value) = self.variables.get(name) {
                    self.full = !const_value(value, &mut self.owners, 0);
                }
            }
            _ => {}
        }
    }
}

/// Collects the tenant ids of a variable's value; false once no more are taken.
fn const_value(v: &async_graphql::Value, owners: &mut Owners, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return true;
    }
    match v {
        async_graphql::Value::String(s) => match Owner::parse(s) {
            Some(o) => owners.push(o),
            None => true,
        },
        async_graphql::Value::List(items) => {
            items.iter().all(|i| const_value(i, owners, depth + 1))
        }
        async_graphql::Value::Object(map) => {
            map.values().all(|i| const_value(i, owners, depth + 1))
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{OrganizationId, WorkspaceId};

    fn of(q: &str, name: Option<&str>, vars: serde_json::Value) -> Attribution {
        let doc = async_graphql::parser::parse_query(q).expect("parses");
        Attribution::of(&doc, name, &Variables::from_json(vars))
    }

    #[test]
    fn named_operations_count_under_their_name() {
        let ws = WorkspaceId::new();
        let a = of(
            "query Dash($w: ID!) { workspace(id: $w) { name } }",
            None,
            serde_json::json!({"w": ws.encode()}),
        );
        assert_eq!(a.operation, "Dash");
        assert_eq!(
            a.owners.iter().collect::<Vec<_>>(),
            [Owner::Workspace(ws.0)]
        );
    }

    #[test]
    fn unnamed_operations_count_under_their_root_fields() {
        let ws = WorkspaceId::new();
        let q = format!(
            r#"{{ b: workspace(id: "{}") {{ id }} viewer {{ id }} ...F }} fragment F on Query {{ viewer {{ id }} node(id: "x") {{ id }} }}"#,
            ws.encode()
        );
        let a = of(&q, None, serde_json::json!({}));
        assert_eq!(a.operation, "node,viewer,workspace");
        assert_eq!(a.owners.iter().count(), 1);
    }

    #[test]
    fn ids_in_nested_inputs_count_once_each() {
        let (ws, org) = (WorkspaceId::new(), OrganizationId::new());
        let a = of(
            "mutation($i: CreateOrganizationInput!) { createOrganization(input: $i) { organization { id } } }",
            None,
            serde_json::json!({"i": {"workspaceId": ws.encode(), "parentId": org.encode(), "name": "ws_x"}}),
        );
        assert_eq!(a.operation, "createOrganization");
        assert_eq!(a.owners.iter().count(), 2);
    }

    #[test]
    fn an_unknown_or_ambiguous_operation_is_invalid() {
        let ws = WorkspaceId::new();
        let vars = serde_json::json!({"w": ws.encode()});
        let q = "query A($w: ID!) { workspace(id: $w) { id } } query B { viewer { id } }";
        assert_eq!(of(q, None, vars.clone()).operation, INVALID);
        assert_eq!(of(q, Some("C"), vars.clone()).operation, INVALID);
        assert_eq!(of(q, Some("B"), vars.clone()).operation, "B");
        assert_eq!(of(q, Some("A"), vars.clone()).owners.iter().count(), 1);
        // B does not use $w: it names nobody.
        assert!(of(q, Some("B"), vars.clone()).owners.is_empty());
        // Without an operation the variables still name the workspace.
        assert_eq!(of(q, None, vars).owners.iter().count(), 1);
    }

    #[test]
    fn long_names_are_cut() {
        let name = "A".repeat(300);
        let a = of(
            &format!("query {name} {{ viewer {{ id }} }}"),
            None,
            serde_json::json!({}),
        );
        assert_eq!(a.operation.len(), api_usage::MAX_OPERATION_CHARS);
    }
}
