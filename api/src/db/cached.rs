//! Prepared-statement caching for hand-written SQL.
//!
//! `diesel::sql_query` marks every statement unsafe to cache (its text might be built at
//! run time), so each execution costs a Parse/Describe round trip and a fresh plan. The
//! statements in `repo` are fixed strings: wrapping them in [`Cached`] keeps them prepared
//! per connection, like diesel's own DSL queries.

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};

/// A raw statement with its binds added one by one: the type of statements assembled from
/// shared SQL parts (`idempotency::claim_sql`, `audit::insert_sql` …), each part binding its
/// own values in order.
pub type BoxedSql<'a> =
    diesel::query_builder::BoxedSqlQuery<'a, Pg, diesel::query_builder::SqlQuery>;

/// A statement whose SQL text never changes (only its bind values do).
#[derive(Debug, Clone)]
pub struct Cached<Q>(pub Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Cached<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        // The statement cache keys by SQL text and bind types; the text is a constant.
        Ok(true)
    }
}

impl<Q> QueryId for Cached<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Cached<Q> {
    type SqlType = Q::SqlType;
}

/// Marks a statement built from constant SQL as cacheable.
pub trait CachedExt: Sized {
    /// Keeps this statement prepared per connection. Only for constant SQL text.
    fn cached(self) -> Cached<Self> {
        Cached(self)
    }
}

impl<Q: QueryFragment<Pg>> CachedExt for Q {}
