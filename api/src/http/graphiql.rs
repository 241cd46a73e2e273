//! GraphiQL, served with its assets so that it works with no internet access.
//!
//! The assets come from the npm packages pinned in `api/graphiql/package-lock.json`
//! (`npm ci --prefix api/graphiql`) and are compiled into the binary by `build.rs`.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

#[cfg(graphiql_assets)]
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "react.production.min.js",
        "text/javascript",
        include_bytes!(concat!(
            env!("GRAPHIQL_ASSETS_DIR"),
            "/react/umd/react.production.min.js"
        )),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript",
        include_bytes!(concat!(
            env!("GRAPHIQL_ASSETS_DIR"),
            "/react-dom/umd/react-dom.production.min.js"
        )),
    ),
    (
        "graphiql.min.js",
        "text/javascript",
        include_bytes!(concat!(
            env!("GRAPHIQL_ASSETS_DIR"),
            "/graphiql/graphiql.min.js"
        )),
    ),
    (
        "graphiql.min.css",
        "text/css",
        include_bytes!(concat!(
            env!("GRAPHIQL_ASSETS_DIR"),
            "/graphiql/graphiql.min.css"
        )),
    ),
];

#[cfg(not(graphiql_assets))]
const ASSETS: &[(&str, &str, &[u8])] = &[];

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>GraphiQL · Workspaces</title>
  <link rel="stylesheet" href="/graphiql/assets/graphiql.min.css">
  <style>body { margin: 0; height: 100vh; } #graphiql { height: 100vh; }</style>
</head>
<body>
  <div id="graphiql">Loading GraphiQL…</div>
  <script src="/graphiql/assets/react.production.min.js"></script>
  <script src="/graphiql/assets/react-dom.production.min.js"></script>
  <script src="/graphiql/assets/graphiql.min.js"></script>
  <script>
    const fetcher = GraphiQL.createFetcher({ url: '/graphql' });
    const defaultHeaders = JSON.stringify({ Authorization: 'Bearer PASTE-A-TOKEN-HERE' }, null, 2);
    const defaultQuery = `# Paste a token into the Headers tab below (\`api dev-token --email you@example.com\`),
# then run this query.
query Me {
  viewer { id email name }
  workspaces(first: 10) { edges { node { id name billingMode viewerRole } } }
}
`;
    ReactDOM.createRoot(document.getElementById('graphiql')).render(
      React.createElement(GraphiQL, {
        fetcher,
        defaultQuery,
        defaultHeaders,
        defaultEditorToolsVisibility: 'headers',
        shouldPersistHeaders: true,
      }),
    );
  </script>
</body>
</html>
"#;

const MISSING: &str = "<!doctype html><title>GraphiQL assets missing</title>\
<p>This binary was built without the GraphiQL assets. Run <code>npm ci --prefix api/graphiql</code> and rebuild.</p>";

/// The GraphiQL page.
pub async fn page() -> Response {
    if ASSETS.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, Html(MISSING)).into_response();
    }
    Html(PAGE).into_response()
}

/// One of the bundled assets.
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, mime, body)) => (
            [
                (header::CONTENT_TYPE, *mime),
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            *body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
