//! Response JSON written directly for selections answered in one step.
//!
//! A tree view's response is over a thousand small objects. Building each as an
//! `async_graphql::Value` (an `IndexMap` per object), serializing the tree and dropping it
//! cost several times more than writing the JSON text itself, so the one-step paths write
//! text and hand it to the engine as a raw JSON value (async-graphql's `raw_value`
//! feature), which the response serializer copies as is.
//!
//! The engine merges the values of two fields with the same response key (a field repeated
//! directly or through fragments) by merging their objects key by key, which it cannot do
//! with text. Documents where that can happen are recognized when parsed
//! ([`may_merge`]); for them the text is turned back into a `Value`.

use std::sync::LazyLock;

use async_graphql::parser::types::{ExecutableDocument, Field, Selection, SelectionSet};
use async_graphql::{ContextSelectionSet, Name, Positioned, Value};
use bytes::Bytes;

/// Bytes a JSON string cannot hold as they are: control characters, `"` and `\`.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Whether any byte of `s` is a control character, `"` or `\`, eight bytes at a time
/// (names are short and almost never need escaping).
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Nonzero exactly when some byte of `w` is below `n` (n ≤ 0x80).
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS;
    let zero = |w: u64| below(w, 1);
    let (words, tail) = s.as_chunks::<8>();
    words.iter().any(|w| {
        let w = u64::from_ne_bytes(*w);
        below(w, 0x20) | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))
            != 0
    }) || tail.iter().any(|&b| NEEDS_ESCAPE[usize::from(b)])
}

/// Appends `s` as a JSON string.
pub fn string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    if needs_escape(s.as_bytes()) {
        escaped(out, s);
    } else {
        out.push_str(s);
    }
    out.push('"');
}

fn escaped(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    while let Some(n) = bytes[start..]
        .iter()
        .position(|&b| NEEDS_ESCAPE[usize::from(b)])
    {
        let i = start + n;
        // Only ASCII bytes are escaped, so `i` is always a character boundary.
        out.push_str(&s[start..i]);
        match bytes[i] {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            b => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0xf)] as char);
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

/// Appends an integer.
pub fn int(out: &mut String, v: i64) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// Appends an optional integer (`null` for none).
pub fn opt_int(out: &mut String, v: Option<i64>) {
    match v {
        Some(v) => int(out, v),
        None => out.push_str("null"),
    }
}

/// Appends a boolean.
pub fn boolean(out: &mut String, v: bool) {
    out.push_str(if v { "true" } else { "false" });
}

/// A selection made of plain fields only (no fragments or directives), compiled once and
/// written for each object of a list: every field's key with its separator, and what the
/// caller writes for it. A repeated scalar key is written once (validation guarantees both
/// occurrences are the same field with the same arguments).
pub struct Plan<F> {
    fields: Vec<(Box<str>, F)>,
}

impl<F> Plan<F> {
    /// Compiles the selection of `ctx`, `field` telling what each field writes; `None` as
    /// soon as anything needs the general resolver (including `field` declining, or a repeated
    /// response key with a sub-selection, whose selections would need merging).
    pub fn new(
        ctx: &ContextSelectionSet<'_>,
        mut field: impl FnMut(&Positioned<Field>) -> Option<F>,
    ) -> Option<Self> {
        let items = &ctx.item.node.items;
        let mut fields: Vec<(Box<str>, F)> = Vec::with_capacity(items.len());
        let mut keys: Vec<&str> = Vec::with_capacity(items.len());
        for item in items {
            let f = plain_field(item)?;
            let key = f.node.response_key().node.as_str();
            if keys.contains(&key) {
                if f.node.selection_set.node.items.is_empty() {
                    continue;
                }
                return None;
            }
            keys.push(key);
            // GraphQL names are `[_A-Za-z][_0-9A-Za-z]*`: nothing to escape.
            let separator = if fields.is_empty() { '{' } else { ',' };
            fields.push((format!("{separator}\"{key}\":").into(), field(f)?));
        }
        Some(Self { fields })
    }

    /// Appends one object, `value` appending each field's value; `None` when `value`
    /// declines a field, `out` then holding a partial object that the caller discards.
    pub fn write(
        &self,
        out: &mut String,
        mut value: impl FnMut(&F, &mut String) -> Option<()>,
    ) -> Option<()> {
        if self.fields.is_empty() {
            out.push_str("{}");
            return Some(());
        }
        for (key, f) in &self.fields {
            out.push_str(key);
            value(f, out)?;
        }
        out.push('}');
        Some(())
    }
}

fn plain_field(item: &Positioned<Selection>) -> Option<&Positioned<Field>> {
    match &item.node {
        Selection::Field(f) if f.node.directives.is_empty() => Some(f),
        _ => None,
    }
}

static RAW_VALUE: LazyLock<Name> =
    LazyLock::new(|| Name::new(async_graphql_value::RAW_VALUE_TOKEN));

/// The value to hand to the engine for JSON text written by this module: the text itself
/// when the document cannot merge values (see the module documentation), else the text
/// parsed back.
pub fn into_value(raw: bool, json: String) -> Option<Value> {
    if raw {
        let mut map = async_graphql::indexmap::IndexMap::with_capacity(1);
        map.insert(RAW_VALUE.clone(), Value::String(json));
        Some(Value::Object(map))
    } else {
        serde_json::from_str(&json).ok()
    }
}

/// `v` as JSON text, written exactly as the response body writes it.
pub fn to_text(v: Value) -> String {
    let mut out = Pieces::default();
    value(&mut out, v);
    let pieces = out.finish();
    let mut text = Vec::with_capacity(pieces.iter().map(Bytes::len).sum());
    for p in pieces {
        text.extend_from_slice(&p);
    }
    // Every piece is text this module wrote or was handed as a `String`.
    String::from_utf8(text).unwrap_or_default()
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

/// JSON text written in pieces: raw JSON text (see [`into_value`]) is moved in as a piece of
/// its own instead of being copied, so a response of a hundred kilobytes of one-step text is
/// never copied whole again (the pieces are written with one vectored write).
#[derive(Default)]
pub struct Pieces {
    done: Vec<Bytes>,
    text: String,
}

impl Pieces {
    /// The text being written (after the pieces so far).
    pub fn text(&mut self) -> &mut String {
        &mut self.text
    }

    fn raw(&mut self, raw: String) {
        if !self.text.is_empty() {
            self.done.push(Bytes::from(std::mem::take(&mut self.text)));
        }
        self.done.push(Bytes::from(raw));
    }

    /// The pieces, in order.
    pub fn finish(mut self) -> Vec<Bytes> {
        if !self.text.is_empty() {
            self.done.push(Bytes::from(self.text));
        }
        self.done
    }
}

/// Appends a value as JSON, moving raw JSON text (see [`into_value`]) in as it is.
pub fn value(out: &mut Pieces, v: Value) {
    match v {
        Value::Null => out.text().push_str("null"),
        Value::Boolean(b) => boolean(out.text(), b),
        Value::String(s) => string(out.text(), &s),
        Value::Enum(e) => string(out.text(), &e),
        Value::Number(n) => match n.as_i64() {
            Some(i) => int(out.text(), i),
            None => out.text().push_str(&n.to_string()),
        },
        Value::List(items) => {
            out.text().push('[');
            for (i, item) in items.into_iter().enumerate() {
                if i > 0 {
                    out.text().push(',');
                }
                value(out, item);
            }
            out.text().push(']');
        }
        Value::Object(mut map) => {
            if map.len() == 1
                && matches!(map.get(&*RAW_VALUE), Some(Value::String(_)))
                && let Some(Value::String(raw)) = map.swap_remove(&*RAW_VALUE)
            {
                out.raw(raw);
                return;
            }
            out.text().push('{');
            for (i, (k, item)) in map.into_iter().enumerate() {
                if i > 0 {
                    out.text().push(',');
                }
                string(out.text(), &k);
                out.text().push(':');
                value(out, item);
            }
            out.text().push('}');
        }
        Value::Binary(_) => match serde_json::to_string(&v) {
            Ok(s) => out.text().push_str(&s),
            Err(_) => out.text().push_str("null"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_values_are_written_as_serde_json_writes_them() {
        for s in [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "controls \n \r \t \u{8} \u{c} \u{0} \u{1f} \u{7f}",
            "unicode é ✓ 😀 \u{2028}",
        ] {
            let mut out = String::new();
            string(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).expect("serializes"), "{s:?}");
        }
        // Every position of a character to escape (or not) within and after 8-byte words.
        for c in [
            '"', '\\', '\n', '\u{0}', '\u{1f}', ' ', '\u{7f}', 'é', '😀', '~',
        ] {
            for before in 0..20 {
                for after in [0, 1, 7, 8, 9] {
                    let s = format!("{}{c}{}", "a".repeat(before), "b".repeat(after));
                    let mut out = String::new();
                    string(&mut out, &s);
                    assert_eq!(out, serde_json::to_string(&s).expect("serializes"), "{s:?}");
                }
            }
        }
        let v: Value = serde_json::from_str(
            r#"{"a": [1, -2, 9007199254740993, 1.5, true, null, "x\"y"], "b": {"c": {}}, "d": []}"#,
        )
        .expect("parses");
        assert_eq!(
            write(v.clone()).concat(),
            serde_json::to_string(&v).expect("serializes")
        );
        // Raw text is moved in as a piece of its own, and parsed back when it may need
        // merging.
        let raw = into_value(true, r#"{"x":[1,"2"]}"#.into()).expect("raw");
        assert_eq!(
            write(Value::List(vec![raw.clone(), Value::Null])),
            ["[", r#"{"x":[1,"2"]}"#, ",null]"]
        );
        assert_eq!(
            serde_json::to_string(&raw).expect("serializes"),
            r#"{"x":[1,"2"]}"#
        );
        let parsed = into_value(false, r#"{"x":[1,"2"]}"#.into()).expect("parsed");
        assert_eq!(
            parsed,
            serde_json::from_str::<Value>(r#"{"x":[1,"2"]}"#).expect("parses")
        );
    }

    fn write(v: Value) -> Vec<String> {
        let mut out = Pieces::default();
        value(&mut out, v);
        out.finish()
            .into_iter()
            .map(|b| String::from_utf8(b.to_vec()).expect("utf-8"))
            .collect()
    }

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
