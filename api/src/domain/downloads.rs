//! Signed download links: files handed out through short-lived links, for a browser to
//! download without an `Authorization` header (served by `GET /downloads/{token}`,
//! `http::downloads`).
//!
//! **The token** is `base64url(payload ‖ mac)` without padding, where `payload` is
//! `version (1) ‖ expiry (i64 BE, Unix seconds) ‖ kind tag (1) ‖ kind body` and `mac` is
//! HMAC-SHA256 over the payload under `vault.subkey("download-links")` (derived from the
//! master key, so every process of the deployment signs and verifies alike, and rotating the
//! master key voids every link). The payload names everything the link grants (the kind,
//! its objects, the user it was issued to), so nothing in it can be changed without the key;
//! the tag compare is constant-time ([`hmac::Mac::verify_slice`]); the expiry is checked
//! after the signature. Any invalid, tampered, expired or revoked link is answered with the
//! same `404` (no detail), and each kind re-checks at download time that the user named in
//! the link may still read what it grants. Tokens longer than [`MAX_TOKEN_CHARS`] are refused
//! before they are decoded. Answers carry `Cache-Control: no-store` and
//! `Referrer-Policy: no-referrer` (the link is a bearer credential until it expires).
//!
//! **Adding a kind**: add a variant to [`Download`] with a new, never reused tag in
//! [`Download::tag`], its fixed-size body in [`Download::write`] and [`Download::read`]
//! (the read must consume the body exactly), and its answer in `http::downloads::serve`
//! (re-check access there, answer its `not_found` when it fails). Issue links with [`link`] from the resolver
//! that grants them; the lifetime is `DOWNLOAD_LINK_TTL_SECS` ([`LinkSettings`] in the
//! GraphQL context).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::domain::analytics::ExportFormat;
use crate::storage::Vault;

/// The route's path prefix (links are same-origin relative URLs).
pub const PREFIX: &str = "/downloads/";
/// The purpose of the signing key (`Vault::subkey`).
pub const KEY_PURPOSE: &str = "download-links";
/// Longest token looked at.
pub const MAX_TOKEN_CHARS: usize = 256;
/// Lifetime of a link unless configured (`DOWNLOAD_LINK_TTL_SECS`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(900);

const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
/// Version, expiry and tag.
const HEAD_LEN: usize = 1 + 8 + 1;

/// The lifetime of the links resolvers issue (schema data, from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct LinkSettings {
    /// How long a link stays valid.
    pub ttl: Duration,
}

/// What a link grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Download {
    /// The stored analytics snapshot of one workspace and month, to a user who must still be
    /// an owner or admin of the workspace when downloading.
    AnalyticsExport {
        /// The workspace.
        workspace: Uuid,
        /// The user the link was issued to.
        user: Uuid,
        /// First instant of the month.
        period_start: DateTime<Utc>,
        /// File format.
        format: ExportFormat,
    },
    /// A data export about a person (`requestDataExport`), to the user who asked for it,
    /// who must still be allowed to read it when downloading (`gdpr::export::download`).
    DataExport {
        /// The user the link was issued to (who asked for the export).
        user: Uuid,
        /// The export.
        export_id: Uuid,
    },
}

impl Download {
    /// The kind's tag in the token; never reuse one.
    fn tag(&self) -> u8 {
        match self {
            Download::AnalyticsExport { .. } => 1,
            Download::DataExport { .. } => 2,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Download::AnalyticsExport {
                workspace,
                user,
                period_start,
                format,
            } => {
                out.extend_from_slice(workspace.as_bytes());
                out.extend_from_slice(user.as_bytes());
                out.extend_from_slice(&period_start.timestamp().to_be_bytes());
                out.push(match format {
                    ExportFormat::Csv => 1,
                    ExportFormat::Json => 2,
                });
            }
            Download::DataExport { user, export_id } => {
                out.extend_from_slice(user.as_bytes());
                out.extend_from_slice(export_id.as_bytes());
            }
        }
    }

    fn read(tag: u8, body: &[u8]) -> Option<Self> {
        let mut r = Reader(body);
        let d = match tag {
            1 => Download::AnalyticsExport {
                workspace: r.uuid()?,
                user: r.uuid()?,
                period_start: DateTime::from_timestamp(r.i64()?, 0)?,
                format: match r.u8()? {
                    1 => ExportFormat::Csv,
                    2 => ExportFormat::Json,
                    _ => return None,
                },
            },
            2 => Download::DataExport {
                user: r.uuid()?,
                export_id: r.uuid()?,
            },
            _ => return None,
        };
        r.0.is_empty().then_some(d)
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }

    fn i64(&mut self) -> Option<i64> {
        self.take::<8>().map(i64::from_be_bytes)
    }

    fn uuid(&mut self) -> Option<Uuid> {
        self.take::<16>().map(Uuid::from_bytes)
    }
}

fn mac(vault: &Vault) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(&vault.subkey(KEY_PURPOSE)).expect("any key size")
}

/// A link to `download` valid for `ttl` from `now`: the path with its token (relative to
/// the API's origin) and when it expires (whole seconds).
pub fn link(
    vault: &Vault,
    download: &Download,
    ttl: Duration,
    now: DateTime<Utc>,
) -> (String, DateTime<Utc>) {
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(900));
    let expires = now.timestamp().saturating_add(ttl.num_seconds().max(1));
    let mut payload = Vec::with_capacity(HEAD_LEN + 64 + MAC_LEN);
    payload.push(VERSION);
    payload.extend_from_slice(&expires.to_be_bytes());
    payload.push(download.tag());
    download.write(&mut payload);
    let mut m = mac(vault);
    m.update(&payload);
    payload.extend_from_slice(&m.finalize().into_bytes());
    (
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&payload)),
        DateTime::from_timestamp(expires, 0).unwrap_or(now),
    )
}

/// What `token` grants at `now`; `None` when it is malformed, not signed with this
/// deployment's key, changed, or expired (callers answer all alike).
pub fn verify(vault: &Vault, token: &str, now: DateTime<Utc>) -> Option<Download> {
    if token.is_empty() || token.len() > MAX_TOKEN_CHARS {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let split = bytes.len().checked_sub(MAC_LEN)?;
    let (payload, tag) = bytes.split_at(split);
    if payload.len() < HEAD_LEN {
        return None;
    }
    let mut m = mac(vault);
    m.update(payload);
    m.verify_slice(tag).ok()?;
    let mut r = Reader(payload);
    if r.u8()? != VERSION {
        return None;
    }
    if r.i64()? <= now.timestamp() {
        return None;
    }
    let kind = r.u8()?;
    Download::read(kind, r.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(key: u8) -> Vault {
        Vault::open("memory:///", &[], [key; 32]).expect("vault")
    }

    fn export() -> Download {
        Download::AnalyticsExport {
            workspace: Uuid::now_v7(),
            user: Uuid::now_v7(),
            period_start: DateTime::from_timestamp(1_790_000_000, 0).expect("time"),
            format: ExportFormat::Csv,
        }
    }

    fn token(path: &str) -> &str {
        path.strip_prefix(PREFIX).expect("prefix")
    }

    #[test]
    fn a_link_verifies_until_it_expires() {
        let v = vault(1);
        let now = Utc::now();
        let d = export();
        let (path, expires) = link(&v, &d, Duration::from_secs(60), now);
        assert_eq!(expires.timestamp(), now.timestamp() + 60);
        assert!(token(&path).len() <= MAX_TOKEN_CHARS);
        assert_eq!(verify(&v, token(&path), now), Some(d.clone()));
        assert_eq!(verify(&v, token(&path), expires), None);
        // Another deployment's key signs other links.
        assert_eq!(verify(&vault(2), token(&path), now), None);
    }

    #[test]
    fn any_changed_byte_voids_a_link() {
        let v = vault(1);
        let now = Utc::now();
        let (path, _) = link(&v, &export(), Duration::from_secs(60), now);
        let bytes = URL_SAFE_NO_PAD.decode(token(&path)).expect("base64");
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert_eq!(
                verify(&v, &URL_SAFE_NO_PAD.encode(&b), now),
                None,
                "byte {i}"
            );
        }
        assert_eq!(verify(&v, &URL_SAFE_NO_PAD.encode(&bytes[1..]), now), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(verify(&v, &URL_SAFE_NO_PAD.encode(&longer), now), None);
        for junk in [
            "",
            "..%2F..%2Fetc",
            "../../etc/passwd",
            "a",
            &"A".repeat(100_000),
        ] {
            assert_eq!(verify(&v, junk, now), None);
        }
    }
}
