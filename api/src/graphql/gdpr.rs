//! Privacy (GDPR): consents, data exports and erasure (see `domain::gdpr`).

use std::collections::HashMap;

use async_graphql::dataloader::Loader;
use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::jobs::Job;
use super::replay::{self, Replayable};
use super::{error, rc};
use crate::db::repo::consents::ConsentRow;
use crate::db::repo::data_exports::ExportRow;
use crate::domain::downloads::{self, Download, LinkSettings};
use crate::domain::gdpr::{consents, erase, export};
use crate::domain::{Actor, DomainError, Services};
use crate::ids::{DataExportId, UserId, WorkspaceId};

/// Exports listed per person at most.
const MAX_EXPORTS: i32 = 50;

/// A consent decision.
#[derive(SimpleObject)]
pub struct Consent {
    /// What it is for, e.g. `marketing.email`.
    pub purpose: String,
    /// The version of the text agreed to (or refused).
    pub version: String,
    /// Given (true), or refused or withdrawn (false).
    pub granted: bool,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}

impl From<ConsentRow> for Consent {
    fn from(c: ConsentRow) -> Self {
        Self {
            purpose: c.purpose,
            version: c.version,
            granted: c.granted,
            recorded_at: c.recorded_at,
        }
    }
}

/// `User.consents`: the person's latest decision per purpose (the person alone;
/// `FORBIDDEN` for anyone else).
pub async fn consents_of(ctx: &Context<'_>, user: uuid::Uuid) -> Result<Vec<Consent>> {
    let rc = rc(ctx);
    let rows = consents::latest(&rc.services, &rc.actor, UserId(user))
        .await
        .map_err(|e| rc.err(e))?;
    Ok(rows.into_iter().map(Consent::from).collect())
}

/// Where a data export is.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum DataExportStatus {
    /// Being built.
    Pending,
    /// Built: `downloadUrl` serves it until `expiresAt`.
    Ready,
    /// Its job failed for good (or the person's erasure was requested meanwhile).
    Failed,
    /// Past `expiresAt`: no longer served.
    Expired,
}

/// A JSON document of what the service holds about one person, for whoever asked for it.
pub struct DataExport(pub ExportRow);

#[Object]
impl DataExport {
    /// Opaque id (`dex_…`).
    async fn id(&self) -> ID {
        ID(DataExportId(self.0.id).encode())
    }

    /// Where it is.
    async fn status(&self) -> DataExportStatus {
        match self.0.status.as_str() {
            "READY" if self.0.expires_at <= Utc::now() => DataExportStatus::Expired,
            "READY" => DataExportStatus::Ready,
            "FAILED" => DataExportStatus::Failed,
            _ => DataExportStatus::Pending,
        }
    }

    /// The person it is about (`usr_…`).
    async fn user_id(&self) -> ID {
        ID(UserId(self.0.user_id).encode())
    }

    /// The workspace it is limited to (an owner's export: what relates to that workspace);
    /// null when it covers everything (the person's own).
    async fn workspace_id(&self) -> Option<ID> {
        self.0.workspace_id.map(|w| ID(WorkspaceId(w).encode()))
    }

    /// When it was asked for.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    /// When it was built (or failed).
    async fn completed_at(&self) -> Option<DateTime<Utc>> {
        self.0.completed_at
    }

    /// When it stops being served (its object is deleted soon after).
    async fn expires_at(&self) -> DateTime<Utc> {
        self.0.expires_at
    }

    /// Bytes of the JSON document, once built.
    async fn byte_size(&self) -> Option<i64> {
        self.0.plaintext_bytes
    }

    /// SHA-256 of the JSON document (hex), once built: what a download must hash to.
    async fn sha256(&self) -> Option<&str> {
        self.0.plaintext_sha256.as_deref()
    }

    /// A section reached its cap (the document's `truncated` fields say which).
    async fn truncated(&self) -> bool {
        self.0.truncated
    }

    /// Where to download the JSON document with a plain `GET` (no `Authorization` header:
    /// the link is the credential, so keep it private): a path on this API's origin
    /// (`/downloads/…`), valid for a few minutes, for you alone, while you may still read
    /// the export. Null unless the export is ready.
    async fn download_url(&self, ctx: &Context<'_>) -> Option<String> {
        let now = Utc::now();
        if self.0.status != "READY" || self.0.expires_at <= now {
            return None;
        }
        let rc = rc(ctx);
        let ttl = ctx
            .data_opt::<LinkSettings>()
            .map_or(downloads::DEFAULT_TTL, |s| s.ttl);
        let download = Download::DataExport {
            user: rc.actor.user_id.0,
            export_id: self.0.id,
        };
        Some(downloads::link(&rc.services.vault, &download, ttl, now).0)
    }
}

/// `User.dataExports`: the exports about `user` that the caller asked for, newest first
/// (batched over the users of a response).
pub async fn exports_of(
    ctx: &Context<'_>,
    user: uuid::Uuid,
    first: Option<i32>,
) -> Result<Vec<DataExport>> {
    let rc = rc(ctx);
    let n = first.unwrap_or(10);
    if !(0..=MAX_EXPORTS).contains(&n) {
        return Err(error::bad_input(
            "first",
            format!("first must be between 0 and {MAX_EXPORTS}"),
        ));
    }
    let rows = rc
        .loaders
        .data_exports
        .load_one(user)
        .await
        .map_err(|e| rc.err(e))?
        .unwrap_or_default();
    Ok(rows
        .into_iter()
        .take(usize::try_from(n).unwrap_or(0))
        .map(DataExport)
        .collect())
}

/// The exports about each person that the caller asked for, newest first, at most
/// [`MAX_EXPORTS`] each (`User.dataExports`).
pub struct DataExportLoader(pub Services, pub Actor);

impl Loader<uuid::Uuid> for DataExportLoader {
    type Value = Vec<ExportRow>;
    type Error = DomainError;

    async fn load(
        &self,
        keys: &[uuid::Uuid],
    ) -> std::result::Result<HashMap<uuid::Uuid, Vec<ExportRow>>, DomainError> {
        let rows = export::requested_about(&self.0, &self.1, keys, i64::from(MAX_EXPORTS)).await?;
        let mut out: HashMap<uuid::Uuid, Vec<ExportRow>> = HashMap::new();
        for r in rows {
            out.entry(r.user_id).or_default().push(r);
        }
        Ok(out)
    }
}

/// Privacy queries.
#[derive(Default)]
pub struct GdprQuery;

#[Object]
impl GdprQuery {
    /// A data export you asked for; null for any other id.
    async fn data_export(&self, ctx: &Context<'_>, id: ID) -> Result<Option<DataExport>> {
        let rc = rc(ctx);
        let Some(id) = DataExportId::decode(&id) else {
            return Ok(None);
        };
        let row = export::find_readable(&rc.services, &rc.actor, id)
            .await
            .map_err(|e| rc.err(e))?;
        Ok(row.map(DataExport))
    }
}

/// Input of `recordConsent`.
#[derive(InputObject)]
pub struct RecordConsentInput {
    /// What it is for: 1–64 characters of `a-z 0-9 _ . : -`, starting with a letter.
    pub purpose: String,
    /// The version of the text: 1–32 characters of letters, digits, `_ . + -`.
    pub version: String,
    /// Given (true), or refused or withdrawn (false).
    pub granted: bool,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `recordConsent`.
#[derive(SimpleObject)]
pub struct RecordConsentPayload {
    /// The decision as recorded.
    pub consent: Consent,
}

/// Input of `requestDataExport`.
#[derive(InputObject)]
pub struct RequestDataExportInput {
    /// The person: yourself (everything), or a member of a workspace you own (what relates
    /// to that workspace).
    pub user_id: ID,
    /// The workspace to limit the export to; needed when the person belongs to several of
    /// the workspaces you own.
    pub workspace_id: Option<ID>,
    /// Makes the mutation safe to retry: a repeat returns the same export. Without one,
    /// requests for the same person and scope within a minute share one export.
    pub idempotency_key: Option<String>,
}

/// Result of `requestDataExport`.
#[derive(SimpleObject)]
pub struct RequestDataExportPayload {
    /// The job that builds it.
    pub job: Job,
    /// The export (`PENDING` until the job is done).
    pub data_export: DataExport,
}

/// Input of `eraseUser`.
#[derive(InputObject)]
pub struct EraseUserInput {
    /// The person: yourself, or a member who belongs only to a workspace you own.
    pub user_id: ID,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `eraseUser`.
#[derive(SimpleObject)]
pub struct EraseUserPayload {
    /// The job that erases (a repeat: the erasure's job).
    pub job: Job,
    /// What replaces the person wherever they were named (`erased_…`).
    pub pseudonym: String,
}

/// Privacy mutations.
#[derive(Default)]
pub struct GdprMutation;

#[Object]
impl GdprMutation {
    /// Records a consent decision of yours (the history is kept; `viewer.consents` shows
    /// the latest per purpose).
    async fn record_consent(
        &self,
        ctx: &Context<'_>,
        input: RecordConsentInput,
    ) -> Result<Replayable<RecordConsentPayload>> {
        let new = consents::NewConsent {
            purpose: input.purpose,
            version: input.version,
            granted: input.granted,
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| consents::record(s, a, new, k).await,
            |_| None,
            |c| RecordConsentPayload { consent: c.into() },
        )
        .await
    }

    /// Asks for a JSON document of what the service holds about a person: yourself (all of
    /// it), or a member of a workspace you own (what relates to that workspace). A job
    /// builds it; `dataExport.downloadUrl` serves it once ready, for seven days.
    async fn request_data_export(
        &self,
        ctx: &Context<'_>,
        input: RequestDataExportInput,
    ) -> Result<Replayable<RequestDataExportPayload>> {
        let user = UserId::decode(&input.user_id).ok_or_else(|| error::not_found("user"))?;
        let workspace = input
            .workspace_id
            .as_deref()
            .map(|w| WorkspaceId::decode(w).ok_or_else(|| error::not_found("workspace")))
            .transpose()?;
        let request = export::ExportRequest {
            user_id: user,
            workspace_id: workspace,
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| export::request(s, a, request, k).await,
            |r| r.export.workspace_id,
            |r| RequestDataExportPayload {
                job: Job(r.job),
                data_export: DataExport(r.export),
            },
        )
        .await
    }

    /// Erases a person, irreversibly: yourself (you are signed out for good), or a member
    /// who belongs only to a workspace you own. Their personal data is removed and they are
    /// replaced by a pseudonym wherever they were named; financial records the law requires
    /// are kept. A job does it; a second request changes nothing and returns the erasure's
    /// job.
    async fn erase_user(
        &self,
        ctx: &Context<'_>,
        input: EraseUserInput,
    ) -> Result<Replayable<EraseUserPayload>> {
        let user = UserId::decode(&input.user_id).ok_or_else(|| error::not_found("user"))?;
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| {
                erase::request(s, a, erase::EraseRequest { user_id: user }, k).await
            },
            |r| r.job.workspace_id,
            |r| EraseUserPayload {
                job: Job(r.job),
                pseudonym: r.pseudonym,
            },
        )
        .await
    }
}
