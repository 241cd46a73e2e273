//! Parsed documents by query text.
//!
//! Clients send the same few documents over and over (a frontend has a fixed set of
//! operations); parsing one costs more than executing a simple query. Parsing is a pure
//! function of the text, so a parsed document can be reused for any request with the same
//! text; validation, variables and execution still happen per request.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Name, Pos, ServerError};

use super::limits::{self, Limits};

/// Longest query text kept (longer ones are parsed every time).
const MAX_CACHED_QUERY_BYTES: usize = 64 * 1024;

/// A parsed document and what execution needs to know about it.
#[derive(Clone)]
pub struct Parsed {
    /// The document (the engine takes a copy of its own).
    pub doc: Arc<ExecutableDocument>,
    /// Whether executing it may merge values under one response key (see
    /// [`may_merge`]).
    pub may_merge: bool,
}

/// A bounded, least-recently-used map from query text to its parsed document.
pub struct DocumentCache {
    documents: Mutex<lru::LruCache<String, Arc<Parsed>>>,
    limits: Limits,
}

/// Longest description of a syntax error sent back (the parser's own message quotes the
/// offending line, which may be the whole document).
const MAX_SYNTAX_MESSAGE_CHARS: usize = 200;

impl DocumentCache {
    /// A cache of at most `capacity` documents, each checked against `limits`.
    pub fn new(capacity: NonZeroUsize, limits: Limits) -> Self {
        Self {
            documents: Mutex::new(lru::LruCache::new(capacity)),
            limits,
        }
    }

    /// The parsed document of `query`, or the error to answer with: a syntax error (its
    /// message short and without the document's text) or an exceeded limit. Only documents
    /// within the limits are parsed into a tree and kept.
    pub fn parse(&self, query: &str) -> Result<Parsed, ServerError> {
        if let Some(parsed) = self
            .documents
            .lock()
            .ok()
            .and_then(|mut c| c.get(query).cloned())
        {
            return Ok((*parsed).clone());
        }
        limits::scan_text(query, &self.limits).map_err(|r| ServerError::new(r.0, None))?;
        let doc = async_graphql::parser::parse_query(query).map_err(syntax_error)?;
        limits::check_document(&doc, self.limits).map_err(|r| ServerError::new(r.0, None))?;
        let parsed = Parsed {
            may_merge: may_merge(&doc),
            doc: Arc::new(doc),
        };
        if query.len() <= MAX_CACHED_QUERY_BYTES
            && let Ok(mut cache) = self.documents.lock()
        {
            cache.put(query.to_owned(), Arc::new(parsed.clone()));
        }
        Ok(parsed)
    }
}

/// A parse error as a short message with its position.
fn syntax_error(e: async_graphql::parser::Error) -> ServerError {
    let pos: Option<Pos> = e.positions().next();
    let detail = match &e {
        // pest's message is the offending line with a caret, then `= expected …`.
        async_graphql::parser::Error::Syntax { message, .. } => message
            .lines()
            .rev()
            .find_map(|l| l.trim_start().strip_prefix("= "))
            .unwrap_or("unexpected input")
            .to_string(),
        other => other.to_string(),
    };
    let mut detail = detail;
    if let Some((cut, _)) = detail.char_indices().nth(MAX_SYNTAX_MESSAGE_CHARS) {
        detail.truncate(cut);
        detail.push('…');
    }
    ServerError::new(format!("syntax error: {detail}"), pos)
}

/// Selections bigger than this (fields and fragments, with fragments inlined) are not
/// examined and count as possibly merging.
const MAX_EXAMINED_ITEMS: usize = 512;
/// Fragment and selection nesting examined before giving up (counts as possibly merging).
const MAX_EXAMINED_DEPTH: usize = 64;

/// Whether executing `doc` may merge two values under one response key: some selection
/// set (after inlining its fragments, whatever their type conditions) holds a response key
/// twice, one of them with a sub-selection. Runs before validation, so it must not trust the
/// document: unknown fragments are ignored and deep or huge ones count as merging.
pub fn may_merge(doc: &ExecutableDocument) -> bool {
    doc.operations
        .iter()
        .map(|(_, op)| &op.node.selection_set.node)
        .chain(doc.fragments.values().map(|f| &f.node.selection_set.node))
        .any(|set| set_may_merge(doc, set, 0))
}

fn set_may_merge(doc: &ExecutableDocument, set: &SelectionSet, depth: usize) -> bool {
    if depth > MAX_EXAMINED_DEPTH {
        return true;
    }
    let mut keys: Vec<(&Name, bool)> = Vec::new();
    let mut budget = MAX_EXAMINED_ITEMS;
    if !flatten(doc, set, &mut keys, &mut budget, depth) {
        return true;
    }
    // Linear: whether each key was seen before, and whether any occurrence had a
    // sub-selection (a repeated key merges when either occurrence has one).
    let mut seen: foldhash::HashMap<&Name, bool> = foldhash::HashMap::default();
    for (key, nested) in &keys {
        match seen.get_mut(*key) {
            Some(any_nested) if *any_nested || *nested => return true,
            Some(_) => {}
            None => {
                seen.insert(key, *nested);
            }
        }
    }
    set.items.iter().any(|item| match &item.node {
        Selection::Field(f) => set_may_merge(doc, &f.node.selection_set.node, depth + 1),
        Selection::InlineFragment(i) => set_may_merge(doc, &i.node.selection_set.node, depth + 1),
        // Fragment definitions are examined on their own.
        Selection::FragmentSpread(_) => false,
    })
}

/// Collects the response keys of `set` with its fragments inlined; `false` when too big or
/// too deep to examine.
fn flatten<'a>(
    doc: &'a ExecutableDocument,
    set: &'a SelectionSet,
    keys: &mut Vec<(&'a Name, bool)>,
    budget: &mut usize,
    depth: usize,
) -> bool {
    if depth > MAX_EXAMINED_DEPTH {
        return false;
    }
    for item in &set.items {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        match &item.node {
            Selection::Field(f) => {
                keys.push((
                    &f.node.response_key().node,
                    !f.node.selection_set.node.items.is_empty(),
                ));
            }
            Selection::InlineFragment(i) => {
                if !flatten(doc, &i.node.selection_set.node, keys, budget, depth + 1) {
                    return false;
                }
            }
            Selection::FragmentSpread(s) => {
                if let Some(f) = doc.fragments.get(&s.node.fragment_name.node)
                    && !flatten(doc, &f.node.selection_set.node, keys, budget, depth + 1)
                {
                    return false;
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod merge_tests {
    use super::may_merge;

    fn merges(q: &str) -> bool {
        may_merge(&async_graphql::parser::parse_query(q).expect("parses"))
    }

    #[test]
    fn documents_that_may_merge_values_are_recognized() {
        assert!(!merges("{ a { b c } d { b } }"));
        assert!(
            !merges("{ a { id id name } }"),
            "repeated scalars are not merged"
        );
        assert!(merges("{ a { b } a { c } }"));
        assert!(merges("{ x { a { b } y: a { c } y { d } } }"));
        assert!(merges("{ ...F a { b } } fragment F on Query { a { c } }"));
        assert!(merges("{ ... on Query { a { b } } a { c } }"));
        assert!(merges(
            "{ a { ...F } } fragment F on A { b { c } ...G } fragment G on A { b { d } }"
        ));
        assert!(!merges("{ a { ...F } } fragment F on A { b { c } }"));
        // Fragment cycles (refused later by validation) are not followed forever.
        assert!(merges(
            "{ ...F } fragment F on Query { ...G } fragment G on Query { ...F }"
        ));
    }
}
