//! Extracts the GraphiQL assets from the npm tarballs kept in `api/graphiql/packages` (the
//! ones `package-lock.json` pins, checked against its integrity hashes by a test), so that a
//! plain `cargo build` serves GraphiQL with no network and no Node. Also makes a new or
//! changed migration rebuild the crate (`embed_migrations!` cannot tell cargo).

use std::io::Read;
use std::path::{Path, PathBuf};

/// (tarball, path inside it, name served under `/graphiql/assets/`).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "react-18.3.1.tgz",
        "package/umd/react.production.min.js",
        "react.production.min.js",
    ),
    (
        "react-dom-18.3.1.tgz",
        "package/umd/react-dom.production.min.js",
        "react-dom.production.min.js",
    ),
    (
        "graphiql-3.8.3.tgz",
        "package/graphiql.min.js",
        "graphiql.min.js",
    ),
    (
        "graphiql-3.8.3.tgz",
        "package/graphiql.min.css",
        "graphiql.min.css",
    ),
];

fn main() {
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
    let packages = manifest.join("graphiql/packages");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("graphiql");
    if let Err(e) = std::fs::create_dir_all(&out) {
        panic!("cannot create {}: {e}", out.display());
    }
    for (tarball, inside, name) in ASSETS {
        let path = packages.join(tarball);
        println!("cargo::rerun-if-changed={}", path.display());
        let bytes = extract(&path, inside)
            .unwrap_or_else(|e| panic!("GraphiQL asset {inside} from {}: {e}", path.display()));
        if let Err(e) = std::fs::write(out.join(name), bytes) {
            panic!("cannot write {name}: {e}");
        }
    }
    println!("cargo::rustc-env=GRAPHIQL_ASSETS_DIR={}", out.display());
}

/// The file at `inside` of the gzipped tarball at `path`.
fn extract(path: &Path, inside: &str) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path()?.to_string_lossy() == inside {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            return Ok(bytes);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "not in the tarball",
    ))
}
