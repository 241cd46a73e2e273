//! Parsed documents by query text.
//!
//! Clients send the same few documents over and over (a frontend has a fixed set of
//! operations); parsing one costs more than executing a simple query. Parsing is a pure
//! function of the text, so a parsed document can be reused for any request with the same
//! text; validation, variables and execution still happen per request.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use async_graphql::parser::types::ExecutableDocument;

/// Longest query text kept (longer ones are parsed every time).
const MAX_CACHED_QUERY_BYTES: usize = 64 * 1024;

/// A parsed document and what execution needs to know about it.
#[derive(Clone)]
pub struct Parsed {
    /// The document.
    pub doc: ExecutableDocument,
    /// Whether executing it may merge values under one response key (see
    /// [`super::json::may_merge`]).
    pub may_merge: bool,
}

/// A bounded, least-recently-used map from query text to its parsed document.
pub struct DocumentCache(Mutex<lru::LruCache<String, Arc<Parsed>>>);

impl DocumentCache {
    /// A cache of at most `capacity` documents.
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self(Mutex::new(lru::LruCache::new(capacity)))
    }

    /// The parsed document of `query`, or `None` when it does not parse (the engine then
    /// reports the syntax error as usual).
    pub fn parse(&self, query: &str) -> Option<Parsed> {
        if let Some(parsed) = self.0.lock().ok()?.get(query).cloned() {
            return Some((*parsed).clone());
        }
        let doc = async_graphql::parser::parse_query(query).ok()?;
        let parsed = Parsed {
            may_merge: super::json::may_merge(&doc),
            doc,
        };
        if query.len() <= MAX_CACHED_QUERY_BYTES
            && let Ok(mut cache) = self.0.lock()
        {
            cache.put(query.to_owned(), Arc::new(parsed.clone()));
        }
        Some(parsed)
    }
}
