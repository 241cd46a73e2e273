//! Relay cursor connections with keyset pagination on time-ordered ids.

use async_graphql::OutputType;
use async_graphql::connection::{Connection, Edge};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use super::error::bad_input;
use crate::db::repo::Page;

/// Page size when `first` is not given.
pub const DEFAULT_PAGE_SIZE: i32 = 20;
/// The largest page a client may ask for.
pub const MAX_PAGE_SIZE: i32 = 100;

/// Complexity of a connection field: its page size times what each node selects.
pub fn complexity(first: Option<i32>, child: usize) -> usize {
    let n = first.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE) as usize;
    n.saturating_mul(child).saturating_add(1)
}

/// Validates `first`/`after` into a page that fetches one extra row (to learn `hasNextPage`).
pub fn page(first: Option<i32>, after: Option<&str>) -> async_graphql::Result<Page> {
    let n = first.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(0..=MAX_PAGE_SIZE).contains(&n) {
        return Err(bad_input(
            "first",
            format!("first must be between 0 and {MAX_PAGE_SIZE}"),
        ));
    }
    let after = after.map(decode_cursor).transpose()?;
    Ok(Page {
        limit: i64::from(n) + 1,
        after,
    })
}

/// The opaque cursor of a row.
pub fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode_cursor(s: &str) -> async_graphql::Result<Uuid> {
    URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| Uuid::from_slice(&b).ok())
        .ok_or_else(|| bad_input("after", "after is not a valid cursor"))
}

/// Builds a connection from rows fetched with `page` (which asked one extra row).
pub fn connection<R, N: OutputType>(
    rows: Vec<R>,
    page: Page,
    id_of: impl Fn(&R) -> Uuid,
    node: impl Fn(R) -> N,
) -> Connection<String, N> {
    let want = page.size();
    let has_next = rows.len() > want;
    let mut c = Connection::new(page.after.is_some(), has_next);
    c.edges.extend(
        rows.into_iter()
            .take(want)
            .map(|r| Edge::new(encode_cursor(id_of(&r)), node(r))),
    );
    c
}
