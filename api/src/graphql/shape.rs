//! The response's shape as the GraphQL specification defines it, whatever order resolvers
//! finish in.
//!
//! async-graphql 7.2 builds each object in the order its fields *finish* (so key order
//! varied between identical requests, and told an outsider whether a lookup waited for a
//! second statement), and drops a failed field's key instead of setting it to null and
//! propagating the null to the nearest nullable parent (so an object could lack a non-null
//! field). This extension restores both rules for every field of every type, library types
//! (connections, introspection) included:
//!
//! - **Order**: each object's keys follow its selection set (fragments expanded where their
//!   type condition applies, `@skip`/`@include` evaluated), the root's too.
//! - **Errors**: a field that fails is recorded as an error and answers null. When its type
//!   is non-null, its parent becomes null in turn, up to the nearest nullable field (or
//!   `data` itself).
//! - **Errors are listed** in the order of their place in the document, then of their path.
//!
//! The concrete type of an object whose field returns an interface is recorded by
//! [`Typed`] while it resolves; everything else is read from the schema's registry.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextResolve, ResolveInfo,
};
use async_graphql::parser::types::{
    Directive, DocumentOperations, ExecutableDocument, Field, Selection, SelectionSet,
};
use async_graphql::registry::{MetaType, Registry};
use async_graphql::{
    ContextSelectionSet, Name, OutputType, PathSegment, Positioned, QueryPathNode, Response,
    ServerError, ServerResult, Value, Variables,
};
use indexmap::IndexMap;

use super::RequestCtx;

/// Per-request shape state: the document as sent (for fragments and directives), its
/// variables, and what resolution reported.
pub struct Shape {
    doc: Arc<ExecutableDocument>,
    variables: Variables,
    /// Poisoned paths not yet taken: lets the common case skip the lock.
    poisons: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    errors: Vec<ServerError>,
    /// Paths (as displayed) of objects that must become null: a non-null field in them failed.
    poisoned: HashSet<String>,
    /// A non-null root field failed: `data` is null.
    root_poisoned: bool,
    /// Concrete type names of objects returned as an interface, by path.
    concrete: HashMap<String, Cow<'static, str>>,
}

impl Shape {
    /// The shape of a response to `doc` with `variables`.
    pub fn new(doc: Arc<ExecutableDocument>, variables: Variables) -> Self {
        Self {
            doc,
            variables,
            poisons: AtomicUsize::new(0),
            state: Mutex::new(State::default()),
        }
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    fn poison(&self, parent: Option<&QueryPathNode<'_>>) {
        match parent {
            Some(p) => {
                let key = p.to_string();
                if self.with_state(|s| s.poisoned.insert(key)) {
                    self.poisons.fetch_add(1, Ordering::AcqRel);
                }
            }
            None => self.with_state(|s| s.root_poisoned = true),
        }
    }

    fn take_poison(&self, path: &QueryPathNode<'_>) -> bool {
        if self.poisons.load(Ordering::Acquire) == 0 {
            return false;
        }
        let key = path.to_string();
        let taken = self.with_state(|s| s.poisoned.remove(&key));
        if taken {
            self.poisons.fetch_sub(1, Ordering::AcqRel);
        }
        taken
    }

    fn record_concrete(&self, path: Option<&QueryPathNode<'_>>, name: Cow<'static, str>) {
        if let Some(p) = path {
            let key = p.to_string();
            self.with_state(|s| s.concrete.insert(key, name));
        }
    }

    /// What a field's resolution turns into: its value in selection order, or null with
    /// its error recorded (and its parent poisoned when the field is non-null).
    fn settle(
        &self,
        registry: &Registry,
        path: &QueryPathNode<'_>,
        field: &Field,
        return_type: &str,
        result: ServerResult<Option<Value>>,
    ) -> Option<Value> {
        let error = match result {
            Ok(value) if !self.take_poison(path) => {
                return value.map(|v| self.order_value(registry, path, field, return_type, v));
            }
            Ok(_) => None,
            Err(e) => Some(e),
        };
        if let Some(e) = error {
            self.with_state(|s| s.errors.push(e));
        }
        if return_type.ends_with('!') {
            self.poison(path.parent);
        }
        Some(Value::Null)
    }

    fn order_value(
        &self,
        registry: &Registry,
        path: &QueryPathNode<'_>,
        field: &Field,
        return_type: &str,
        value: Value,
    ) -> Value {
        let Value::Object(map) = value else {
            return value;
        };
        if map.len() == 1 && map.contains_key(async_graphql_value::RAW_VALUE_TOKEN) {
            // JSON text written in selection order by the one-step path.
            return Value::Object(map);
        }
        let named = return_type.trim_matches(|c| matches!(c, '[' | ']' | '!'));
        let concrete: Cow<'_, str> = match registry.types.get(named) {
            Some(MetaType::Object { .. }) => Cow::Borrowed(named),
            Some(MetaType::Interface { .. } | MetaType::Union { .. }) => {
                let key = path.to_string();
                match self.with_state(|s| s.concrete.get(&key).cloned()) {
                    Some(c) => c,
                    None => return Value::Object(map),
                }
            }
            _ => return Value::Object(map),
        };
        Value::Object(self.reorder(registry, &field.selection_set.node, &concrete, map))
    }

    /// `value` (an object of type `concrete` selected by `set`) with its keys in selection
    /// order, as the field's own hook will leave it.
    pub fn order_object(
        &self,
        registry: &Registry,
        set: &SelectionSet,
        concrete: &str,
        value: Value,
    ) -> Value {
        match value {
            Value::Object(map) if !map.contains_key(async_graphql_value::RAW_VALUE_TOKEN) => {
                Value::Object(self.reorder(registry, set, concrete, map))
            }
            other => other,
        }
    }

    /// Whether an error was recorded at `path` or below it.
    pub fn errors_under(&self, path: Option<&QueryPathNode<'_>>) -> bool {
        let prefix: Vec<String> = path.map(|p| p.to_string_vec()).unwrap_or_default();
        self.with_state(|s| {
            s.errors.iter().any(|e| {
                e.path.len() >= prefix.len()
                    && e.path.iter().zip(&prefix).all(|(seg, p)| match seg {
                        PathSegment::Field(f) => f == p,
                        PathSegment::Index(i) => i.to_string() == *p,
                    })
            })
        })
    }

    /// `map` with its keys in the order `set` selects them on an object of type `concrete`.
    fn reorder(
        &self,
        registry: &Registry,
        set: &SelectionSet,
        concrete: &str,
        mut map: IndexMap<Name, Value>,
    ) -> IndexMap<Name, Value> {
        let mut keys: indexmap::IndexSet<&Name> = indexmap::IndexSet::new();
        self.collect(registry, set, concrete, &mut keys, 0);
        let in_order = map
            .keys()
            .zip(keys.iter().filter(|k| map.contains_key(**k)))
            .all(|(a, b)| a == *b);
        if in_order {
            return map;
        }
        let mut out = IndexMap::with_capacity(map.len());
        for k in keys {
            if let Some((k, v)) = map.shift_remove_entry(k) {
                out.insert(k, v);
            }
        }
        // Anything the selection does not explain keeps its place after the rest.
        out.extend(map);
        out
    }

    /// Response keys of `set` on an object of type `concrete`, in first-occurrence order
    /// (the specification's CollectFields). Fragments were checked for cycles before
    /// execution; `depth` only guards against a document that was not.
    fn collect<'d>(
        &'d self,
        registry: &Registry,
        set: &'d SelectionSet,
        concrete: &str,
        keys: &mut indexmap::IndexSet<&'d Name>,
        depth: usize,
    ) {
        if depth > super::limits::MAX_TEXT_NESTING {
            return;
        }
        for item in &set.items {
            if self.skipped(item.node.directives()) {
                continue;
            }
            match &item.node {
                Selection::Field(f) => {
                    keys.insert(&f.node.response_key().node);
                }
                Selection::InlineFragment(i) => {
                    let applies = i
                        .node
                        .type_condition
                        .as_ref()
                        .is_none_or(|c| applies(registry, &c.node.on.node, concrete));
                    if applies {
                        self.collect(
                            registry,
                            &i.node.selection_set.node,
                            concrete,
                            keys,
                            depth + 1,
                        );
                    }
                }
                Selection::FragmentSpread(s) => {
                    if let Some(def) = self.doc.fragments.get(&s.node.fragment_name.node)
                        && applies(registry, &def.node.type_condition.node.on.node, concrete)
                    {
                        self.collect(
                            registry,
                            &def.node.selection_set.node,
                            concrete,
                            keys,
                            depth + 1,
                        );
                    }
                }
            }
        }
    }

    /// Whether `@skip`/`@include` leave this selection out.
    fn skipped(&self, directives: &[Positioned<Directive>]) -> bool {
        directives.iter().any(|d| {
            let include = match d.node.name.node.as_str() {
                "skip" => false,
                "include" => true,
                _ => return false,
            };
            let condition = d
                .node
                .get_argument("if")
                .and_then(|v| {
                    v.node
                        .clone()
                        .into_const_with(|name| self.variables.get(&name).cloned().ok_or(()))
                        .ok()
                })
                .is_some_and(|v| v == Value::Boolean(true));
            condition != include
        })
    }

    /// Applies what resolution reported to the finished response: the root in selection
    /// order (or null when a non-null root field failed), the recorded errors, and every
    /// error in document order.
    fn finish(
        &self,
        registry: &Registry,
        operation_name: Option<&str>,
        mut resp: Response,
    ) -> Response {
        let (errors, root_poisoned) =
            self.with_state(|s| (std::mem::take(&mut s.errors), s.root_poisoned));
        resp.errors.extend(errors);
        if root_poisoned {
            resp.data = Value::Null;
        } else if let Value::Object(map) = std::mem::take(&mut resp.data) {
            let operation = match (&self.doc.operations, operation_name) {
                (DocumentOperations::Single(op), _) => Some(op),
                (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name),
                (DocumentOperations::Multiple(ops), None) => ops.values().next(),
            };
            resp.data = Value::Object(match operation {
                Some(op) => {
                    let root = match op.node.ty {
                        async_graphql::parser::types::OperationType::Mutation => {
                            registry.mutation_type.as_deref().unwrap_or("Mutation")
                        }
                        async_graphql::parser::types::OperationType::Subscription => registry
                            .subscription_type
                            .as_deref()
                            .unwrap_or("Subscription"),
                        async_graphql::parser::types::OperationType::Query => {
                            registry.query_type.as_str()
                        }
                    };
                    self.reorder(registry, &op.node.selection_set.node, root, map)
                }
                None => map,
            });
        }
        resp.errors.sort_by(|a, b| {
            let place = |e: &ServerError| e.locations.first().map(|p| (p.line, p.column));
            place(a)
                .cmp(&place(b))
                .then_with(|| compare_paths(&a.path, &b.path))
        });
        resp
    }
}

fn compare_paths(a: &[PathSegment], b: &[PathSegment]) -> std::cmp::Ordering {
    let key = |s: &PathSegment| match s {
        PathSegment::Field(f) => (0, 0, f.clone()),
        PathSegment::Index(i) => (1, *i, String::new()),
    };
    a.iter().map(key).cmp(b.iter().map(key))
}

/// Whether a fragment on `condition` applies to an object of type `concrete`.
fn applies(registry: &Registry, condition: &str, concrete: &str) -> bool {
    condition == concrete
        || registry
            .types
            .get(condition)
            .is_some_and(|t| t.is_possible_type(concrete))
}

/// The extension that keeps the shape (install with `SchemaBuilder::extension`).
pub struct ShapeExtension;

impl ExtensionFactory for ShapeExtension {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ShapeHooks)
    }
}

struct ShapeHooks;

fn shape_of<'a>(ctx: &ExtensionContext<'a>) -> Option<&'a Shape> {
    ctx.data_opt::<RequestCtx>().map(|rc| &*rc.shape)
}

#[async_graphql::async_trait::async_trait]
impl Extension for ShapeHooks {
    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let resp = next.run(ctx, operation_name).await;
        match shape_of(ctx) {
            Some(shape) => shape.finish(&ctx.schema_env.registry, operation_name, resp),
            None => resp,
        }
    }

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        let Some(shape) = shape_of(ctx) else {
            return next.run(ctx, info).await;
        };
        let (path, field, return_type) = (info.path_node, info.field, info.return_type);
        let result = next.run(ctx, info).await;
        Ok(shape.settle(&ctx.schema_env.registry, path, field, return_type, result))
    }
}

/// A value returned as an interface or union: records its concrete type so that its keys
/// can be ordered by the fragments that apply to it. Same GraphQL type as `T`.
pub struct Typed<T>(pub T);

impl<T: OutputType + Sync> OutputType for Typed<T> {
    fn type_name() -> Cow<'static, str> {
        T::type_name()
    }

    fn create_type_info(registry: &mut async_graphql::registry::Registry) -> String {
        T::create_type_info(registry)
    }

    fn introspection_type_name(&self) -> Cow<'static, str> {
        self.0.introspection_type_name()
    }

    async fn resolve(
        &self,
        ctx: &ContextSelectionSet<'_>,
        field: &Positioned<Field>,
    ) -> ServerResult<Value> {
        if let Some(rc) = ctx.data_opt::<RequestCtx>() {
            rc.shape
                .record_concrete(ctx.path_node.as_ref(), self.0.introspection_type_name());
        }
        self.0.resolve(ctx, field).await
    }
}
