//! Object storage of archives and exports: where they go (`ARCHIVE_URL`, through the
//! `object_store` crate) and how they are sealed.
//!
//! Every object is sealed the same way: the plaintext (newline-delimited JSON for archives,
//! JSON for exports) is compressed with zstd, then encrypted with AES-256-GCM under the data
//! key of its owner (a workspace, or a user for their data export), with the object's path as
//! associated data, so that an object copied to another path does not open. An object is
//! `MAGIC ‖ nonce (12 bytes) ‖ ciphertext and tag`.
//!
//! Data keys are random 32-byte keys, one per owner, kept in `data_keys` wrapped (AES-256-GCM)
//! by the master key (`ARCHIVE_MASTER_KEY`) with the owner's id as associated data; the
//! master key never touches the database or the store. Forgetting an owner's data key makes
//! everything sealed under it unreadable (what erasure does to a user's exports).
//!
//! Compression and encryption run on the blocking pool (`spawn_blocking`), never on the
//! async workers, so a large archive does not starve the job worker's heartbeats.

use std::sync::Arc;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use diesel_async::AsyncPgConnection;
use hmac::Mac as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::db::repo::data_keys;

/// The first bytes of every sealed object (format version 1).
pub const MAGIC: &[u8; 4] = b"WSA1";
/// Bytes of an AES-GCM nonce.
const NONCE: usize = 12;
/// zstd level: fast, and most of the ratio on JSON.
const ZSTD_LEVEL: i32 = 3;

/// Why an object could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No object at that path.
    #[error("the object is missing from storage")]
    Missing,
    /// The object is there but is not what was sealed (tampered, truncated, another key).
    #[error("the object is corrupt: {0}")]
    Corrupt(String),
    /// The store could not be reached, or failed.
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// What sealing one object produced (the manifest's facts about it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sealed {
    /// Path in the store (below the store's prefix).
    pub path: String,
    /// Bytes of the plaintext.
    pub plaintext_bytes: i64,
    /// Bytes of the stored object.
    pub object_bytes: i64,
    /// SHA-256 of the plaintext, hex.
    pub plaintext_sha256: String,
    /// SHA-256 of the stored object, hex.
    pub object_sha256: String,
}

/// An object read back and opened.
#[derive(Debug)]
pub struct Opened {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// SHA-256 of the plaintext, hex.
    pub plaintext_sha256: String,
    /// SHA-256 of the object as stored, hex.
    pub object_sha256: String,
}

/// An owner's data key, unwrapped (held in memory only while an object is sealed or opened).
#[derive(Clone)]
pub struct DataKey {
    owner: Uuid,
    key: [u8; 32],
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// The object store and the master key.
#[derive(Clone)]
pub struct Vault {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    master: [u8; 32],
    url: String,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// The store at `url` (`file:///dir`, `s3://bucket/prefix`, `gs://…`, `az://…`, or
    /// `memory:///` for tests of this module) configured by `options` (the `AWS_*`,
    /// `GOOGLE_*`, `AZURE_*` settings `object_store` reads, lower-cased), sealing under
    /// `master`. A local directory is created if missing.
    pub fn open(url: &str, options: &[(String, String)], master: [u8; 32]) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| anyhow::anyhow!("ARCHIVE_URL: {e}"))?;
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = if parsed.scheme() == "file" {
            let dir = parsed
                .to_file_path()
                .map_err(|()| anyhow::anyhow!("ARCHIVE_URL: not a local path: {url}"))?;
            std::fs::create_dir_all(&dir).map_err(|e| {
                anyhow::anyhow!("ARCHIVE_URL: cannot create {}: {e}", dir.display())
            })?;
            let local = object_store::local::LocalFileSystem::new_with_prefix(&dir)?
                .with_automatic_cleanup(true);
            (Arc::new(local), Path::default())
        } else {
            let (store, prefix) = object_store::parse_url_opts(
                &parsed,
                options.iter().map(|(k, v)| (k.as_str(), v.clone())),
            )?;
            (Arc::from(store), prefix)
        };
        Ok(Self {
            store,
            prefix,
            master,
            url: url.to_string(),
        })
    }

    /// The store's URL (for logs; it holds no secret).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A key derived from the master key for `purpose` (HMAC-SHA256), e.g. the key that
    /// signs download links.
    pub fn subkey(&self, purpose: &str) -> [u8; 32] {
        let mut mac =
            <hmac::Hmac<Sha256> as hmac::Mac>::new_from_slice(&self.master).expect("any key size");
        mac.update(b"workspaces subkey\0");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn location(&self, path: &str) -> anyhow::Result<Path> {
        let rel = Path::parse(path).map_err(|e| anyhow::anyhow!("object path {path:?}: {e}"))?;
        Ok(self.prefix.parts().chain(rel.parts()).collect())
    }

    fn master_cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&Key::<Aes256Gcm>::from(self.master))
    }

    /// The data key of `owner`, created (and stored wrapped) on first use.
    pub async fn data_key(
        &self,
        conn: &mut AsyncPgConnection,
        owner: Uuid,
    ) -> anyhow::Result<DataKey> {
        if let Some(k) = self.existing_key(conn, owner).await? {
            return Ok(k);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&Aes256Gcm::generate_key(OsRng));
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let wrapped = self
            .master_cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: &key,
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("wrapping a data key failed"))?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&wrapped);
        // Two processes may race to create it: the first one's key wins, and both read it.
        data_keys::insert_if_absent(conn, owner, &stored).await?;
        self.existing_key(conn, owner)
            .await?
            .ok_or_else(|| anyhow::anyhow!("data key of {owner} vanished as it was created"))
    }

    /// The data key of `owner` if it has one.
    pub async fn existing_key(
        &self,
        conn: &mut AsyncPgConnection,
        owner: Uuid,
    ) -> anyhow::Result<Option<DataKey>> {
        let Some(stored) = data_keys::find(conn, owner).await? else {
            return Ok(None);
        };
        if stored.len() < NONCE {
            anyhow::bail!("the stored data key of {owner} is truncated");
        }
        let (nonce, wrapped) = stored.split_at(NONCE);
        let key = self
            .master_cipher()
            .decrypt(
                &nonce_of(nonce)?,
                Payload {
                    msg: wrapped,
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "the data key of {owner} does not open with ARCHIVE_MASTER_KEY (was the master key changed?)"
                )
            })?;
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| anyhow::anyhow!("the data key of {owner} has the wrong length"))?;
        Ok(Some(DataKey { owner, key }))
    }

    /// Forgets `owner`'s data key: what was sealed under it can no longer be opened.
    pub async fn forget_key(conn: &mut AsyncPgConnection, owner: Uuid) -> anyhow::Result<bool> {
        Ok(data_keys::delete(conn, owner).await?)
    }

    /// Compresses and encrypts `plaintext` under `key` (on the blocking pool) and writes it
    /// at `path`, replacing what was there.
    pub async fn put(
        &self,
        key: &DataKey,
        path: &str,
        plaintext: Vec<u8>,
    ) -> anyhow::Result<Sealed> {
        let location = self.location(path)?;
        let aad = location.to_string();
        let key = key.clone();
        let (object, plaintext_sha256, plaintext_bytes) =
            tokio::task::spawn_blocking(move || seal(&key, &aad, &plaintext)).await??;
        let sealed = Sealed {
            path: path.to_string(),
            plaintext_bytes,
            object_bytes: object.len() as i64,
            plaintext_sha256,
            object_sha256: hex::encode(Sha256::digest(&object)),
        };
        self.store
            .put(&location, PutPayload::from(bytes::Bytes::from(object)))
            .await?;
        Ok(sealed)
    }

    /// Reads the object at `path` and opens it with `key` (decryption and decompression on
    /// the blocking pool). At most `max_plaintext` bytes are inflated: a larger plaintext is
    /// refused as corrupt.
    pub async fn get(
        &self,
        key: &DataKey,
        path: &str,
        max_plaintext: usize,
    ) -> Result<Opened, OpenError> {
        let location = self.location(path)?;
        let object = match self.store.get(&location).await {
            Ok(r) => r.bytes().await.map_err(anyhow::Error::from)?,
            Err(object_store::Error::NotFound { .. }) => return Err(OpenError::Missing),
            Err(e) => return Err(OpenError::Store(e.into())),
        };
        let aad = location.to_string();
        let key = key.clone();
        tokio::task::spawn_blocking(move || open(&key, &aad, &object, max_plaintext))
            .await
            .map_err(anyhow::Error::from)?
    }

    /// Opens `object`, the bytes stored at `path`, with `key` (see [`Vault::get`]).
    pub async fn open_bytes(
        &self,
        key: &DataKey,
        path: &str,
        object: Vec<u8>,
        max_plaintext: usize,
    ) -> Result<Opened, OpenError> {
        let aad = self.location(path)?.to_string();
        let key = key.clone();
        tokio::task::spawn_blocking(move || open(&key, &aad, &object, max_plaintext))
            .await
            .map_err(anyhow::Error::from)?
    }

    /// Writes `bytes` at `path` as they are: only for what holds no personal data (archive
    /// manifests).
    pub async fn put_plain(&self, path: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.put_raw(path, bytes).await
    }

    /// Deletes the object at `path` (absent is fine).
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        match self.store.delete(&self.location(path)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Overwrites the object at `path` with `bytes` as they are (tests corrupt archives with
    /// it; nothing in the service writes unsealed bytes).
    pub async fn put_raw(&self, path: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.store
            .put(
                &self.location(path)?,
                PutPayload::from(bytes::Bytes::from(bytes)),
            )
            .await?;
        Ok(())
    }

    /// The object at `path` as stored.
    pub async fn get_raw(&self, path: &str) -> Result<Vec<u8>, OpenError> {
        match self.store.get(&self.location(path)?).await {
            Ok(r) => Ok(r.bytes().await.map_err(anyhow::Error::from)?.to_vec()),
            Err(object_store::Error::NotFound { .. }) => Err(OpenError::Missing),
            Err(e) => Err(OpenError::Store(e.into())),
        }
    }
}

/// zstd, then AES-256-GCM: `(object, sha256(plaintext), plaintext bytes)`.
fn seal(key: &DataKey, aad: &str, plaintext: &[u8]) -> anyhow::Result<(Vec<u8>, String, i64)> {
    let digest = hex::encode(Sha256::digest(plaintext));
    let compressed = zstd::bulk::compress(plaintext, ZSTD_LEVEL)?;
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(key.key));
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: &compressed,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| anyhow::anyhow!("encryption failed"))?;
    let mut object = Vec::with_capacity(MAGIC.len() + NONCE + ciphertext.len());
    object.extend_from_slice(MAGIC);
    object.extend_from_slice(&nonce);
    object.extend_from_slice(&ciphertext);
    Ok((object, digest, plaintext.len() as i64))
}

/// The inverse of [`seal`].
fn open(
    key: &DataKey,
    aad: &str,
    object: &[u8],
    max_plaintext: usize,
) -> Result<Opened, OpenError> {
    let object_sha256 = hex::encode(Sha256::digest(object));
    let corrupt = |m: &str| OpenError::Corrupt(m.to_string());
    let body = object
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| corrupt("not a sealed object (wrong header)"))?;
    if body.len() < NONCE + 16 {
        return Err(corrupt("truncated"));
    }
    let (nonce, ciphertext) = body.split_at(NONCE);
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(key.key));
    let compressed = cipher
        .decrypt(
            &nonce_of(nonce)?,
            Payload {
                msg: ciphertext,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| {
            corrupt("authentication failed (altered, or not sealed for this path and key)")
        })?;
    let plaintext = zstd::bulk::decompress(&compressed, max_plaintext)
        .map_err(|e| OpenError::Corrupt(format!("does not decompress within the size cap: {e}")))?;
    Ok(Opened {
        plaintext_sha256: hex::encode(Sha256::digest(&plaintext)),
        plaintext,
        object_sha256,
    })
}

/// A nonce from its 12 bytes.
fn nonce_of(bytes: &[u8]) -> Result<Nonce<aes_gcm::aead::consts::U12>, OpenError> {
    let arr: [u8; NONCE] = bytes
        .try_into()
        .map_err(|_| OpenError::Corrupt("truncated nonce".into()))?;
    Ok(Nonce::from(arr))
}

/// Parses a master key: 64 hex digits or the standard base64 of 32 bytes.
pub fn parse_master_key(s: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    let s = s.trim();
    let bytes = if s.len() == 64 {
        hex::decode(s).ok()?
    } else {
        base64::engine::general_purpose::STANDARD.decode(s).ok()?
    };
    bytes.try_into().ok()
}

/// The master key of development setups without `ARCHIVE_MASTER_KEY` (refused in production):
/// public, so archives sealed under it protect nothing.
pub fn development_master_key() -> [u8; 32] {
    Sha256::digest(b"workspaces development archive master key; never use in production").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> DataKey {
        DataKey {
            owner: Uuid::nil(),
            key: [b; 32],
        }
    }

    #[test]
    fn sealed_objects_open_only_with_their_key_and_path() {
        let text = b"{\"a\":1}\n{\"a\":2}\n".repeat(100);
        let (object, digest, n) = seal(&key(1), "ws/x/1", &text).expect("seal");
        assert_eq!(n, text.len() as i64);
        assert!(object.len() < text.len(), "compressed");
        let opened = open(&key(1), "ws/x/1", &object, 1 << 20).expect("open");
        assert_eq!(opened.plaintext, text);
        assert_eq!(opened.plaintext_sha256, digest);
        assert!(matches!(
            open(&key(2), "ws/x/1", &object, 1 << 20),
            Err(OpenError::Corrupt(_))
        ));
        assert!(matches!(
            open(&key(1), "ws/x/2", &object, 1 << 20),
            Err(OpenError::Corrupt(_))
        ));
        let mut flipped = object.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            open(&key(1), "ws/x/1", &flipped, 1 << 20),
            Err(OpenError::Corrupt(_))
        ));
        assert!(matches!(
            open(&key(1), "ws/x/1", &object[..10], 1 << 20),
            Err(OpenError::Corrupt(_))
        ));
        // A plaintext over the cap is refused, not inflated.
        assert!(matches!(
            open(&key(1), "ws/x/1", &object, 100),
            Err(OpenError::Corrupt(_))
        ));
    }

    #[test]
    fn master_keys_parse_from_hex_or_base64() {
        let hex_key = "00".repeat(32);
        assert_eq!(parse_master_key(&hex_key), Some([0; 32]));
        assert_eq!(
            parse_master_key("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="),
            Some([1; 32])
        );
        assert_eq!(parse_master_key("short"), None);
    }
}
