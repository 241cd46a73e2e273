//! GraphiQL, served with its assets so that it works with no internet access.
//!
//! The assets come from the npm tarballs kept in `api/graphiql/packages`, the ones
//! `api/graphiql/package-lock.json` pins (a test checks them against its integrity hashes;
//! `just graphiql-assets` fetches them again), extracted and compiled into the binary by
//! `build.rs`: a plain `cargo build` serves GraphiQL with no network and no Node.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "react.production.min.js",
        "text/javascript",
        include_bytes!(concat!(
            env!("GRAPHIQL_ASSETS_DIR"),
            "/react.production.min.js"
        )),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript",
        include_bytes!(concat!(
            env!("GRAPHIQL_ASSETS_DIR"),
            "/react-dom.production.min.js"
        )),
    ),
    (
        "graphiql.min.js",
        "text/javascript",
        include_bytes!(concat!(env!("GRAPHIQL_ASSETS_DIR"), "/graphiql.min.js")),
    ),
    (
        "graphiql.min.css",
        "text/css",
        include_bytes!(concat!(env!("GRAPHIQL_ASSETS_DIR"), "/graphiql.min.css")),
    ),
];

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

/// The GraphiQL page.
pub async fn page() -> Response {
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

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use sha2::{Digest, Sha512};

    /// The tarballs the assets are extracted from are exactly the ones the lockfile pins.
    #[test]
    fn packaged_tarballs_match_the_lockfile_integrity() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("graphiql");
        let lock: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("package-lock.json")).expect("package-lock.json"),
        )
        .expect("lockfile JSON");
        for name in ["graphiql", "react", "react-dom"] {
            let pinned = &lock["packages"][format!("node_modules/{name}")];
            let version = pinned["version"].as_str().expect("version");
            let integrity = pinned["integrity"].as_str().expect("integrity");
            let tarball = dir.join(format!("packages/{name}-{version}.tgz"));
            let bytes = std::fs::read(&tarball).unwrap_or_else(|e| {
                panic!("{}: {e} (run `just graphiql-assets`)", tarball.display())
            });
            let digest = base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&bytes));
            assert_eq!(
                integrity,
                format!("sha512-{digest}"),
                "{} does not match the lockfile (run `just graphiql-assets`)",
                tarball.display()
            );
        }
    }
}
