//! JSON text: the primitives the one-step writers (`one_step`) and the response body use.
//!
//! A tree view's response is over a thousand small objects. Building each as an
//! `async_graphql::Value` (an `IndexMap` per object), serializing the tree and dropping it
//! cost several times more than writing the JSON text itself, so the one-step paths write
//! text and hand it to the engine as a raw JSON value (async-graphql's `raw_value`
//! feature), which the response body ([`Pieces`]) moves in as it is.
//!
//! The engine merges the values of two fields with the same response key (a field repeated
//! directly or through fragments) by merging their objects key by key, which it cannot do
//! with text. Documents where that can happen are recognized when parsed
//! (`documents::may_merge`); for them the text is turned back into a `Value`.

use std::sync::LazyLock;

use async_graphql::{Name, Value};
use bytes::Bytes;

/// Appends `s` as a JSON string, escaped as serde_json escapes it.
pub fn string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    // Writing to a `String` cannot fail, and serde_json writes whole UTF-8 runs.
    let _ = serde_json::to_writer(StrWriter(out), s);
}

/// `io::Write` into a `String`. serde_json cuts escaped text only before and after the
/// ASCII bytes it escapes, so every piece it writes is UTF-8 on its own.
struct StrWriter<'a>(&'a mut String);

impl std::io::Write for StrWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let s = std::str::from_utf8(buf).map_err(std::io::Error::other)?;
        self.0.push_str(s);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Appends an integer.
pub fn int(out: &mut String, v: i64) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// Appends a boolean.
pub fn boolean(out: &mut String, v: bool) {
    out.push_str(if v { "true" } else { "false" });
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
        // Characters to escape (or not) at every position of short and longer strings.
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
}
