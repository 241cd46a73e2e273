//! Abuse limits checked before a document reaches the engine.
//!
//! Everything here costs time linear in the document. That matters because the engine's
//! own analyses (recursion depth, complexity, validation) walk fragments by expanding
//! them: a 1.6 KB document whose fragments each spread the next one twice expands to 2^40
//! fields and would pin a thread for hours. So the text is scanned for nesting before it
//! is parsed (the parser recurses), and the parsed document's expanded size is computed
//! with one memoized pass per fragment, refusing fragment cycles and documents over the
//! caps before anything walks the expansion.

use std::collections::HashMap;

use async_graphql::Name;
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};

/// The caps (from configuration). Defaults follow what GraphQL Armor and the OWASP GraphQL
/// cheat sheet recommend and GitHub and Shopify enforce.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Fields an operation may select once its fragments are expanded
    /// (`GRAPHQL_MAX_FIELDS`).
    pub max_fields: usize,
    /// Aliased fields an operation may select once its fragments are expanded
    /// (`GRAPHQL_MAX_ALIASES`).
    pub max_aliases: usize,
    /// Lexical tokens of the document, counted before it is parsed (`GRAPHQL_MAX_TOKENS`).
    pub max_tokens: usize,
    /// Directives an operation uses once its fragments are expanded
    /// (`GRAPHQL_MAX_DIRECTIVES`).
    pub max_directives: usize,
    /// Fields at an operation's root, fragments inlined (`GRAPHQL_MAX_ROOT_FIELDS`).
    pub max_root_fields: usize,
    /// Fragment definitions in the document (`GRAPHQL_MAX_FRAGMENTS`).
    pub max_fragments: usize,
    /// Fragment spreads written in the document (`GRAPHQL_MAX_SPREADS`).
    pub max_spreads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_fields: 10_000,
            max_aliases: 30,
            max_tokens: 5_000,
            max_directives: 50,
            max_root_fields: 100,
            max_fragments: 100,
            max_spreads: 500,
        }
    }
}

/// Deepest nesting of `{`, `[` and `(` the text may have; the parser refuses selection
/// sets deeper than this as well.
pub const MAX_TEXT_NESTING: usize = 64;

/// Why a document is refused (the message names the limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// Refuses, before the text is parsed, nesting deeper than [`MAX_TEXT_NESTING`] (the parser
/// recurses), more than `limits.max_tokens` lexical tokens and more than
/// `limits.max_spreads` fragment spreads: one pass over the bytes. Strings and block
/// strings are one token each; comments, white space and commas are none.
pub fn scan_text(query: &str, limits: &Limits) -> Result<(), Refusal> {
    let b = query.as_bytes();
    let (mut i, mut depth, mut tokens, mut spreads) = (0, 0usize, 0usize, 0usize);
    // The previous token was `...`: a name other than `on` after it makes a spread.
    let mut after_ellipsis = false;
    while i < b.len() {
        let c = b[i];
        if c == b'#' {
            while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_whitespace() || c == b',' {
            i += 1;
            continue;
        }
        if b[i..].starts_with("\u{feff}".as_bytes()) {
            // The byte order mark, which the parser ignores as well.
            i += 3;
            continue;
        }
        tokens += 1;
        if tokens > limits.max_tokens {
            return Err(Refusal(format!(
                "the document has more than {} tokens (GRAPHQL_MAX_TOKENS)",
                limits.max_tokens
            )));
        }
        let was_ellipsis = std::mem::take(&mut after_ellipsis);
        match c {
            b'"' if b[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < b.len() && !b[i..].starts_with(b"\"\"\"") {
                    // `\"""` is an escaped triple quote inside a block string.
                    i += if b[i..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                i += 3;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'.' if b[i..].starts_with(b"...") => {
                after_ellipsis = true;
                i += 3;
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > MAX_TEXT_NESTING {
                    return Err(Refusal(format!(
                        "the document is nested more than {MAX_TEXT_NESTING} levels deep"
                    )));
                }
                i += 1;
            }
            b'}' | b']' | b')' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            c if c == b'_' || c.is_ascii_alphabetic() => {
                let start = i;
                while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                if was_ellipsis && &b[start..i] != b"on" {
                    spreads += 1;
                    if spreads > limits.max_spreads {
                        return Err(Refusal(format!(
                            "the document has more than {} fragment spreads (GRAPHQL_MAX_SPREADS)",
                            limits.max_spreads
                        )));
                    }
                }
            }
            c if c == b'-' || c.is_ascii_digit() => {
                i += 1;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'.' | b'+' | b'-'))
                {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// What a selection set amounts to once its fragments are expanded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    /// Fields, nested ones included.
    pub fields: u64,
    /// Fields with an alias.
    pub aliases: u64,
    /// Directives, on fields, spreads and inline fragments.
    pub directives: u64,
    /// Fields at this level (through fragments, not inside fields).
    pub width: u64,
}

impl Size {
    /// Adds a nested selection (inside a field): everything but the width.
    fn add_nested(&mut self, other: Size) {
        self.fields = self.fields.saturating_add(other.fields);
        self.aliases = self.aliases.saturating_add(other.aliases);
        self.directives = self.directives.saturating_add(other.directives);
    }

    /// Adds a selection at the same level (a fragment's).
    fn add(&mut self, other: Size) {
        self.add_nested(other);
        self.width = self.width.saturating_add(other.width);
    }
}

enum Memo {
    InProgress,
    Done(Size),
}

/// Refuses fragment cycles and operations whose expanded selection exceeds `limits`;
/// returns the largest operation's size. Each selection set of the document is visited
/// once: a fragment's size is computed the first time it is spread and reused after.
pub fn check_document(doc: &ExecutableDocument, limits: Limits) -> Result<Size, Refusal> {
    if doc.fragments.len() > limits.max_fragments {
        return Err(Refusal(format!(
            "the document defines {} fragments; the limit is {} (GRAPHQL_MAX_FRAGMENTS)",
            doc.fragments.len(),
            limits.max_fragments
        )));
    }
    let mut sizer = Sizer {
        doc,
        memo: HashMap::with_capacity(doc.fragments.len()),
    };
    let mut largest = Size::default();
    let mut operations = 0u64;
    for (_, op) in doc.operations.iter() {
        let size = sizer.set(&op.node.selection_set.node)?;
        if size.fields > limits.max_fields as u64 {
            return Err(Refusal(format!(
                "the operation selects {} fields once its fragments are expanded; the limit is {} (GRAPHQL_MAX_FIELDS)",
                display(size.fields),
                limits.max_fields
            )));
        }
        if size.aliases > limits.max_aliases as u64 {
            return Err(Refusal(format!(
                "the operation uses {} aliases once its fragments are expanded; the limit is {} (GRAPHQL_MAX_ALIASES)",
                display(size.aliases),
                limits.max_aliases
            )));
        }
        let directives = size
            .directives
            .saturating_add(op.node.directives.len() as u64);
        if directives > limits.max_directives as u64 {
            return Err(Refusal(format!(
                "the operation uses {} directives once its fragments are expanded; the limit is {} (GRAPHQL_MAX_DIRECTIVES)",
                display(directives),
                limits.max_directives
            )));
        }
        if size.width > limits.max_root_fields as u64 {
            return Err(Refusal(format!(
                "the operation selects {} root fields; the limit is {} (GRAPHQL_MAX_ROOT_FIELDS)",
                display(size.width),
                limits.max_root_fields
            )));
        }
        operations = operations.saturating_add(size.fields);
        largest = largest.max_by_fields(size);
    }
    if operations > limits.max_fields as u64 {
        return Err(Refusal(format!(
            "the document's operations select {} fields together once their fragments are expanded; the limit is {} (GRAPHQL_MAX_FIELDS)",
            display(operations),
            limits.max_fields
        )));
    }
    // Validation walks every fragment definition on its own, spreads expanded, used or not.
    let mut fragments = 0u64;
    for name in doc.fragments.keys() {
        fragments = fragments.saturating_add(sizer.fragment(name)?.fields);
    }
    if fragments > limits.max_fields as u64 {
        return Err(Refusal(format!(
            "the document's fragment definitions select {} fields once expanded; the limit is {} (GRAPHQL_MAX_FIELDS)",
            display(fragments),
            limits.max_fields
        )));
    }
    Ok(largest)
}

impl Size {
    fn max_by_fields(self, other: Size) -> Size {
        if other.fields > self.fields {
            other
        } else {
            self
        }
    }
}

fn display(n: u64) -> String {
    if n == u64::MAX {
        "more than 18 quintillion".into()
    } else {
        n.to_string()
    }
}

struct Sizer<'a> {
    doc: &'a ExecutableDocument,
    memo: HashMap<&'a Name, Memo>,
}

impl<'a> Sizer<'a> {
    fn set(&mut self, set: &'a SelectionSet) -> Result<Size, Refusal> {
        let mut size = Size::default();
        for item in &set.items {
            size.directives = size
                .directives
                .saturating_add(item.node.directives().len() as u64);
            match &item.node {
                Selection::Field(f) => {
                    size.add(Size {
                        fields: 1,
                        aliases: u64::from(f.node.alias.is_some()),
                        directives: 0,
                        width: 1,
                    });
                    if !f.node.selection_set.node.items.is_empty() {
                        size.add_nested(self.set(&f.node.selection_set.node)?);
                    }
                }
                Selection::InlineFragment(i) => size.add(self.set(&i.node.selection_set.node)?),
                Selection::FragmentSpread(s) => {
                    size.add(self.fragment(&s.node.fragment_name.node)?)
                }
            }
        }
        Ok(size)
    }

    fn fragment(&mut self, name: &'a Name) -> Result<Size, Refusal> {
        match self.memo.get(name) {
            Some(Memo::Done(size)) => return Ok(*size),
            Some(Memo::InProgress) => {
                return Err(Refusal(format!(
                    "fragment \"{name}\" spreads itself (directly or through other fragments)"
                )));
            }
            None => {}
        }
        // An unknown fragment is the validator's to report; it selects nothing here.
        let Some(def) = self.doc.fragments.get(name) else {
            return Ok(Size::default());
        };
        self.memo.insert(name, Memo::InProgress);
        let size = self.set(&def.node.selection_set.node)?;
        self.memo.insert(name, Memo::Done(size));
        Ok(size)
    }
}

/// A string input holding a control character other than tab, line feed and carriage
/// return (NUL above all, which PostgreSQL cannot store): the input field it was given for,
/// and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadString {
    /// The argument or input-object field (or variable) holding it.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn allowed(c: char) -> bool {
    !c.is_control() || matches!(c, '\t' | '\n' | '\r')
}

fn check_str(field: &str, s: &str) -> Result<(), BadString> {
    match s.chars().find(|c| !allowed(*c)) {
        None => Ok(()),
        Some(c) => Err(BadString {
            field: field.to_string(),
            message: format!(
                "`{field}` contains the control character U+{:04X}; text inputs may hold tab, line feed and carriage return only",
                u32::from(c)
            ),
        }),
    }
}

/// Refuses control characters in every string the request hands to resolvers: the
/// arguments written in the document (each selection set visited once, fragments on their
/// own) and the variables they use (each once, named after the input field it is given
/// for). Linear in the document and the variables.
pub fn check_strings(
    doc: &ExecutableDocument,
    variables: &async_graphql::Variables,
) -> Result<(), BadString> {
    let mut walk = Strings {
        variables,
        checked: std::collections::HashSet::new(),
    };
    let sets = doc
        .operations
        .iter()
        .map(|(_, op)| &op.node.selection_set.node)
        .chain(doc.fragments.values().map(|f| &f.node.selection_set.node));
    for set in sets {
        walk.set(set)?;
    }
    Ok(())
}

struct Strings<'a> {
    variables: &'a async_graphql::Variables,
    checked: std::collections::HashSet<&'a str>,
}

impl<'a> Strings<'a> {
    fn set(&mut self, set: &'a SelectionSet) -> Result<(), BadString> {
        for item in &set.items {
            for d in item.node.directives() {
                for (name, value) in &d.node.arguments {
                    self.value(name.node.as_str(), &value.node)?;
                }
            }
            match &item.node {
                Selection::Field(f) => {
                    for (name, value) in &f.node.arguments {
                        self.value(name.node.as_str(), &value.node)?;
                    }
                    self.set(&f.node.selection_set.node)?;
                }
                Selection::InlineFragment(i) => self.set(&i.node.selection_set.node)?,
                Selection::FragmentSpread(_) => {}
            }
        }
        Ok(())
    }

    fn value(&mut self, field: &str, v: &'a async_graphql_value::Value) -> Result<(), BadString> {
        use async_graphql_value::Value as V;
        match v {
            V::String(s) => check_str(field, s),
            V::List(items) => items.iter().try_for_each(|i| self.value(field, i)),
            V::Object(map) => map.iter().try_for_each(|(k, v)| self.value(k.as_str(), v)),
            V::Variable(name) if self.checked.insert(name.as_str()) => {
                match self.variables.get(name) {
                    Some(value) => const_strings(field, value),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

fn const_strings(field: &str, v: &async_graphql::Value) -> Result<(), BadString> {
    match v {
        async_graphql::Value::String(s) => check_str(field, s),
        async_graphql::Value::List(items) => items.iter().try_for_each(|i| const_strings(field, i)),
        async_graphql::Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| const_strings(k.as_str(), v)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_fields: 10_000,
        max_aliases: 30,
        max_tokens: 100_000,
        max_directives: 50,
        max_root_fields: 100,
        max_fragments: 100,
        max_spreads: 500,
    };

    fn check(q: &str) -> Result<Size, Refusal> {
        scan_text(q, &LIMITS)?;
        let doc = async_graphql::parser::parse_query(q).expect("parses");
        check_document(&doc, LIMITS)
    }

    /// `{...W0} fragment W0 on Query {viewer{id} ...W1 ...W1} … fragment Wn on Query {viewer{id}}`
    fn doubling(n: usize) -> String {
        let mut q = String::from("{...W0}");
        for i in 0..n {
            q.push_str(&format!(
                " fragment W{i} on Query {{viewer{{id}} ...W{} ...W{}}}",
                i + 1,
                i + 1
            ));
        }
        q.push_str(&format!(" fragment W{n} on Query {{viewer{{id}}}}"));
        q
    }

    #[test]
    fn counts_expanded_fields_once_per_fragment() {
        // Each Wi selects viewer{id} (2 fields) plus twice W(i+1): 2^(n+2) - 2 fields.
        assert_eq!(check(&doubling(5)).map(|s| s.fields), Ok((1 << 7) - 2));
        let e = check(&doubling(40)).expect_err("refused");
        assert!(e.0.contains("limit is 10000"), "{e:?}");
        // Far past u64: saturates instead of overflowing.
        let e = check(&doubling(80)).expect_err("refused");
        assert!(e.0.contains("more than"), "{e:?}");
    }

    #[test]
    fn counts_unused_fragments_and_every_operation() {
        let wide: String = (0..500).map(|i| format!(" a{i}: __typename")).collect();
        let mut q = format!("{{ __typename }} fragment G on Query {{{wide} }}");
        for i in 0..19 {
            q.push_str(&format!(" fragment F{i} on Query {{...G}}"));
        }
        // 20 fragments of 500 fields each: validation would walk 10,000.
        assert!(check(&q).is_ok());
        q.push_str(" fragment F19 on Query {...G}");
        let e = check(&q).expect_err("refused");
        assert!(e.0.contains("fragment definitions"), "{e:?}");
        let ops: String = (0..3)
            .map(|i| format!(" query Q{i} {{ a {{ {} }} }}", "__typename ".repeat(4_000)))
            .collect();
        let e = check(&ops).expect_err("refused");
        assert!(e.0.contains("operations select 12003"), "{e:?}");
    }

    #[test]
    fn refuses_fragment_cycles() {
        let e = check("{...A} fragment A on Query {...B ...B} fragment B on Query {...A}")
            .expect_err("cycle");
        assert!(e.0.contains("spreads itself"), "{e:?}");
        assert!(check("{...A} fragment A on Query {...A ...A}").is_err());
    }

    #[test]
    fn counts_aliases_through_fragments() {
        let ten: String = (0..10).map(|i| format!("a{i}: __typename ")).collect();
        let q = format!("{{...F ...F ...F}} fragment F on Query {{ {ten} }}");
        assert_eq!(check(&q).map(|s| s.aliases), Ok(30));
        let q =
            format!("{{...F ...F ...F __typename x: __typename}} fragment F on Query {{ {ten} }}");
        assert!(check(&q).is_err());
    }

    #[test]
    fn control_characters_are_refused_wherever_a_string_is_given() {
        let vars = |v: serde_json::Value| async_graphql::Variables::from_json(v);
        let doc = |q: &str| async_graphql::parser::parse_query(q).expect("parses");
        let plain = doc("mutation($i: X) { a(input: $i) { id } }");
        let e = check_strings(
            &plain,
            &vars(serde_json::json!({"i": {"description": "a\u{0}b"}})),
        )
        .expect_err("NUL in a variable");
        assert_eq!(e.field, "description");
        assert!(e.message.contains("U+0000"), "{}", e.message);
        let ok = vars(serde_json::json!({"i": {"description": "two\nlines\tand\r"}}));
        assert_eq!(check_strings(&plain, &ok), Ok(()));
        let literal = doc("{ a(s: \"x\\u001b[31m\") { b(t: [\"ok\", {k: \"\\u0000\"}]) } }");
        assert_eq!(
            check_strings(&literal, &vars(serde_json::json!({}))).map_err(|e| e.field),
            Err("s".to_string())
        );
        let in_fragment = doc("{ ...F } fragment F on Q { b(k: \"\\u007f\") }");
        assert!(check_strings(&in_fragment, &vars(serde_json::json!({}))).is_err());
    }

    #[test]
    fn text_nesting_skips_strings_and_comments() {
        let deep = format!("{}{}", "{a".repeat(65), "}".repeat(65));
        assert!(scan_text(&deep, &LIMITS).is_err());
        let fine = format!("{}{}", "{a".repeat(64), "}".repeat(64));
        assert!(scan_text(&fine, &LIMITS).is_ok());
        let quoted = format!(
            "{{a(s: \"{}\") # {}\n b(s: \"\"\"{}\\\"\"\"\"\"\")}}",
            "{".repeat(100),
            "[".repeat(100),
            "(".repeat(100)
        );
        assert_eq!(scan_text(&quoted, &LIMITS), Ok(()));
        assert!(scan_text(&"[".repeat(100_000), &LIMITS).is_err());
    }

    #[test]
    fn tokens_and_spreads_are_counted_as_the_lexer_would() {
        let limits = Limits {
            max_tokens: 12,
            max_spreads: 2,
            ..LIMITS
        };
        // { a(x: "s, t" y: -1.5e3) ...F ... on Q { b } } : 15 tokens before `...F`? Count:
        // `{` `a` `(` `x` `:` `"s, t"` `y` `:` `-1.5e3` `)` = 10, `...` `F` = 12.
        let q = "\u{feff}{ a(x: \"s, t\", y: -1.5e3) # a comment { [ (\n ...F";
        assert_eq!(scan_text(q, &limits), Ok(()));
        assert!(scan_text(&format!("{q} }}"), &limits).is_err());
        let block = "\"\"\"many \\\"\"\" words { ( [ \"\"\"";
        assert_eq!(scan_text(block, &limits), Ok(()));
        let spreads = Limits {
            max_tokens: 1_000,
            ..limits
        };
        assert_eq!(
            scan_text(
                "{ ...A ... on Q { x } ...B ... @skip(if: true) { y } }",
                &spreads
            ),
            Ok(())
        );
        assert!(scan_text("{ ...A ...B ...C }", &spreads).is_err());
    }

    #[test]
    fn directives_root_fields_and_fragments_are_capped() {
        let few = Limits {
            max_directives: 2,
            max_root_fields: 3,
            max_fragments: 1,
            ..LIMITS
        };
        let check = |q: &str| {
            let doc = async_graphql::parser::parse_query(q).expect("parses");
            check_document(&doc, few)
        };
        assert!(check("query @a { x @b y }").is_ok());
        assert!(check("query @a { x @b y @c }").is_err());
        // Directives count through fragments, once per spread.
        assert!(check("{ ...F ...F } fragment F on Q { x @a }").is_ok());
        assert!(check("{ ...F ...F @b } fragment F on Q { x @a }").is_err());
        // Root fields count through fragments, but not inside fields.
        assert!(check("{ a { b c d e } ...F } fragment F on Q { x y }").is_ok());
        assert!(check("{ a b ...F } fragment F on Q { x y }").is_err());
        assert!(check("{ ...F ...G } fragment F on Q { x } fragment G on Q { y }").is_err());
    }
}
