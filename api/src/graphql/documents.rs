//! Parsed documents by query text.
//!
//! Clients send the same few documents over and over (a frontend has a fixed set of
//! operations); parsing one costs more than executing a simple query. Parsing is a pure
//! function of the text, so a parsed document can be reused for any request with the same
//! text; validation, variables and execution still happen per request.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{Pos, ServerError};

use super::limits::{self, Limits};

/// Longest query text kept (longer ones are parsed every time).
const MAX_CACHED_QUERY_BYTES: usize = 64 * 1024;

/// A parsed document and what execution needs to know about it.
#[derive(Clone)]
pub struct Parsed {
    /// The document (the engine takes a copy of its own).
    pub doc: Arc<ExecutableDocument>,
    /// Whether executing it may merge values under one response key (see
    /// [`super::json::may_merge`]).
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
            may_merge: super::json::may_merge(&doc),
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
