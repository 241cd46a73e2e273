//! Reading a GraphQL request from HTTP, bounded before anything is allocated for it.
//!
//! The body is read only after the token was verified, only up to
//! `GRAPHQL_MAX_BODY_BYTES` (a larger `Content-Length` is refused before a byte is read),
//! and scanned once for its nesting, its number of JSON values and its batch length before
//! it is parsed, so a request refused for its size costs no more memory than the cap.

use async_graphql::Variables;
use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use serde_json::Value;

use crate::graphql::error::code;

/// Deepest nesting of arrays and objects in a request body (variables included).
pub const MAX_JSON_NESTING: usize = 64;
/// Most JSON values (objects, arrays, strings, numbers, literals) in one request body.
pub const MAX_JSON_VALUES: usize = 100_000;

/// A request refused before execution.
#[derive(Debug)]
pub struct Refusal {
    /// HTTP status.
    pub status: StatusCode,
    /// `extensions.code`.
    pub code: &'static str,
    /// What is wrong, for the client.
    pub message: String,
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        code: code::BAD_USER_INPUT,
        message: message.into(),
    }
}

fn too_large(max: usize) -> Refusal {
    Refusal {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: code::BAD_USER_INPUT,
        message: format!("the request body is larger than {max} bytes (GRAPHQL_MAX_BODY_BYTES)"),
    }
}

/// The operations of one HTTP request.
pub struct Operations {
    /// In the order sent.
    pub requests: Vec<async_graphql::Request>,
    /// Whether they came as a JSON array (answered as an array).
    pub is_batch: bool,
}

/// Caps that apply while reading.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// `GRAPHQL_MAX_BODY_BYTES`.
    pub max_body_bytes: usize,
    /// `GRAPHQL_MAX_BATCH`.
    pub max_batch: usize,
}

/// Reads the operations of a `GET` (query string) or `POST` (JSON or `application/graphql`).
pub async fn read(parts: &Parts, body: Body, limits: ReadLimits) -> Result<Operations, Refusal> {
    if parts.method == Method::GET {
        let raw = parts.uri.query().unwrap_or_default();
        if raw.len() > limits.max_body_bytes {
            return Err(too_large(limits.max_body_bytes));
        }
        let params: Vec<(String, String)> = serde_urlencoded_pairs(raw)?;
        let mut object = serde_json::Map::new();
        for (k, v) in params {
            let value = match k.as_str() {
                "variables" | "extensions" => {
                    scan_json(v.as_bytes(), limits.max_batch)?;
                    serde_json::from_str(&v)
                        .map_err(|_| bad(format!("the `{k}` parameter is not valid JSON")))?
                }
                _ => Value::String(v),
            };
            object.insert(k, value);
        }
        let request = operation(Value::Object(object))?;
        return Ok(Operations {
            requests: vec![request],
            is_batch: false,
        });
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    let bytes = read_body(parts, body, limits.max_body_bytes).await?;
    match content_type.as_deref() {
        None | Some("application/json") | Some("application/graphql-response+json") => {}
        Some("application/graphql") => {
            let query = String::from_utf8(bytes.to_vec())
                .map_err(|_| bad("the GraphQL document is not valid UTF-8"))?;
            return Ok(Operations {
                requests: vec![async_graphql::Request::new(query)],
                is_batch: false,
            });
        }
        Some(other) => {
            return Err(Refusal {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: code::BAD_USER_INPUT,
                message: format!("content type `{other}` is not accepted; send application/json"),
            });
        }
    }
    scan_json(&bytes, limits.max_batch)?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        bad(format!(
            "the request body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(bad("empty batch"));
            }
            let requests = items.into_iter().map(operation).collect::<Result<_, _>>()?;
            Ok(Operations {
                requests,
                is_batch: true,
            })
        }
        other => Ok(Operations {
            requests: vec![operation(other)?],
            is_batch: false,
        }),
    }
}

fn serde_urlencoded_pairs(raw: &str) -> Result<Vec<(String, String)>, Refusal> {
    let uri: axum::http::Uri = format!("/?{raw}")
        .parse()
        .map_err(|_| bad("the query string is malformed"))?;
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|_| bad("the query string is malformed"))
}

async fn read_body(parts: &Parts, body: Body, max: usize) -> Result<bytes::Bytes, Refusal> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    match axum::body::to_bytes(body, max).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let limited = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if limited {
                too_large(max)
            } else {
                bad("the request body could not be read")
            })
        }
    }
}

/// One pass over a JSON text, before it is parsed: refuses nesting deeper than
/// [`MAX_JSON_NESTING`], more than [`MAX_JSON_VALUES`] values, and a top-level array longer
/// than `max_batch`. Malformed JSON is left for the parser to report.
pub fn scan_json(bytes: &[u8], max_batch: usize) -> Result<(), Refusal> {
    let (mut depth, mut values, mut top_items) = (0usize, 0usize, 0usize);
    let top_is_array = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'[');
    let mut in_string = false;
    let mut escaped = false;
    let mut item_open = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        // A value starts here (closing brackets, separators and spaces start none).
        let starts_value = matches!(
            b,
            b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
        );
        if starts_value && top_is_array && depth == 1 && !item_open {
            item_open = true;
            top_items += 1;
            if top_items > max_batch {
                return Err(bad(format!(
                    "a batch may hold at most {max_batch} operations (GRAPHQL_MAX_BATCH)"
                )));
            }
        }
        match b {
            b'"' => {
                in_string = true;
                values += 1;
            }
            b'{' | b'[' => {
                depth += 1;
                values += 1;
                if depth > MAX_JSON_NESTING {
                    return Err(bad(format!(
                        "the request body is nested more than {MAX_JSON_NESTING} levels deep"
                    )));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' => {
                values += 1;
                if depth == 1 {
                    item_open = false;
                }
            }
            _ => {}
        }
        if values > MAX_JSON_VALUES {
            return Err(bad(format!(
                "the request body holds more than {MAX_JSON_VALUES} JSON values"
            )));
        }
    }
    Ok(())
}

/// One operation object: `query` (a string), optional `operationName` (a string),
/// `variables` and `extensions` (objects).
fn operation(value: Value) -> Result<async_graphql::Request, Refusal> {
    let Value::Object(mut o) = value else {
        return Err(bad(
            "the request must be a JSON object with a `query` string (or an array of them for a batch)",
        ));
    };
    let query = match o.remove("query") {
        Some(Value::String(q)) => q,
        Some(_) | None => {
            return Err(bad("`query` must be a string holding the GraphQL document"));
        }
    };
    let mut request = async_graphql::Request::new(query);
    match o.remove("operationName") {
        None | Some(Value::Null) => {}
        Some(Value::String(name)) => request = request.operation_name(name),
        Some(_) => return Err(bad("`operationName` must be a string or null")),
    }
    match o.remove("variables") {
        None | Some(Value::Null) => {}
        Some(v @ Value::Object(_)) => request = request.variables(Variables::from_json(v)),
        Some(_) => return Err(bad("`variables` must be an object or null")),
    }
    match o.remove("extensions") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => return Err(bad("`extensions` must be an object or null")),
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_counts_batch_items_and_ignores_strings() {
        assert!(scan_json(br#"[{"query":"{a}"},{"query":"[[[,,,"}]"#, 2).is_ok());
        assert!(scan_json(br#"[{"query":"{a}"},{"query":"b"},{}]"#, 2).is_err());
        assert!(scan_json(br#"[1,2,3]"#, 3).is_ok());
        assert!(scan_json(br#"[1,2,3,4]"#, 3).is_err());
        // Nested arrays do not count as batch items.
        assert!(scan_json(br#"[[1,2,3,4,5]]"#, 1).is_ok());
        assert!(scan_json(br#"{"variables":{"a":"\"]]]]"}}"#, 1).is_ok());
    }

    #[test]
    fn scan_refuses_deep_and_numerous_values() {
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(scan_json(deep.as_bytes(), 10).is_err());
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(scan_json(ok.as_bytes(), 10).is_ok());
        let many = format!("{{\"v\":[{}]}}", vec!["{}"; MAX_JSON_VALUES].join(","));
        assert!(scan_json(many.as_bytes(), 10).is_err());
    }

    #[test]
    fn operation_messages_name_the_member() {
        let e = operation(serde_json::json!({"query": null})).expect_err("null query");
        assert!(
            e.message.contains("`query` must be a string"),
            "{}",
            e.message
        );
        assert!(operation(serde_json::json!({"query": "{a}", "variables": [1]})).is_err());
        assert!(operation(serde_json::json!(7)).is_err());
        assert!(operation(serde_json::json!({"query": "{a}", "operationName": null})).is_ok());
    }
}
