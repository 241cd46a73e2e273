//! Compiles the GraphiQL assets into the binary when `npm ci --prefix api/graphiql` has
//! installed them; without them `/graphiql` explains how to get them. Also makes a new or
//! changed migration rebuild the crate (`embed_migrations!` cannot tell cargo).

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(graphiql_assets)");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let migrations = manifest.join("../migrations");
    println!("cargo::rerun-if-changed={}", migrations.display());
    for entry in std::fs::read_dir(&migrations)
        .into_iter()
        .flatten()
        .flatten()
    {
        println!("cargo::rerun-if-changed={}", entry.path().display());
        for file in std::fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            println!("cargo::rerun-if-changed={}", file.path().display());
        }
    }
    let dir = manifest.join("graphiql/node_modules");
    let files = [
        "react/umd/react.production.min.js",
        "react-dom/umd/react-dom.production.min.js",
        "graphiql/graphiql.min.js",
        "graphiql/graphiql.min.css",
    ];
    for f in files {
        println!("cargo::rerun-if-changed={}", dir.join(f).display());
    }
    println!("cargo::rerun-if-changed={}", dir.display());
    if files.iter().all(|f| dir.join(f).is_file()) {
        println!("cargo::rustc-cfg=graphiql_assets");
        println!("cargo::rustc-env=GRAPHIQL_ASSETS_DIR={}", dir.display());
    } else {
        println!(
            "cargo::warning=GraphiQL assets not found: run `npm ci --prefix api/graphiql` to serve GraphiQL"
        );
    }
}
