//! Invitations: membership by consent.
//!
//! `addMember` never makes anyone a member: it invites an e-mail address, whoever it belongs
//! to, and answers the same for an address with an account and one without (nothing of a
//! person who has not joined is shown). The invitee is told by e-mail (the `member.invited`
//! notification: the invitee's address through the SMTP channel, with a signed link to
//! `INVITATION_ACCEPT_URL`, plus the workspace's own destinations for security alerts), sees
//! their pending invitations (`viewer.invitations`), and accepts or declines. Owners and
//! admins list (`Workspace.invitations`), resend and revoke them; an invitation expires after
//! `INVITATION_TTL_DAYS` (a resend starts the time again) and the periodic
//! `invitation-expiry` deletes expired ones.
//!
//! Accepting needs a person (not an API key) whose token's e-mail is verified (a token
//! without `email_verified` is not) and equal to the invitation's address once both are
//! normalized by [`normalize_email`]: ASCII letters lower-cased and nothing else folded, so
//! two different mailboxes never compare equal (`K`, the Kelvin sign U+212A, stays itself
//! and never becomes `k`). Accepting passes the workspace's policies (the gate) like any act
//! in it, and keeps the invitation's role.
//!
//! Invitations count with members against the member cap and the `members` quota.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use diesel_async::AsyncPgConnection;
use hmac::Mac as _;
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Change};
use super::mutation::{self, Effect};
use super::notifications::{self, EventType};
use super::{Actor, DomainError, DomainResult, Role, Services};
use crate::config::ConfigError;
use crate::db::models::MemberRow;
use crate::db::repo::invitations::{self as store, InvitationRow, ReceivedRow};
use crate::db::repo::{self, Page, members};
use crate::ids::{InvitationId, MemberId, UserId, WorkspaceId};
use crate::storage::Vault;

/// E-mails one invitation may cause (the first and the resends).
pub const MAX_SENDS: i32 = 5;
/// Seconds between two e-mails of one invitation, at least.
pub const RESEND_INTERVAL_SECS: i64 = 60;
/// Pending invitations a person is shown at most.
pub const MAX_RECEIVED: i64 = 100;
/// The purpose of the key that signs invitation links (`Vault::subkey`).
const LINK_PURPOSE: &str = "invitation-links";
/// Bytes of the link's MAC.
const LINK_MAC: usize = 16;
/// Expired invitations deleted per statement by the periodic job.
const EXPIRY_BATCH: i64 = 1_000;

/// The operator's settings of invitations.
#[derive(Debug, Clone)]
pub struct InvitationConfig {
    /// How long an invitation can be accepted (`INVITATION_TTL_DAYS`, 14).
    pub ttl: Duration,
    /// The page invitation e-mails link to, with `?invitation=<token>` appended
    /// (`INVITATION_ACCEPT_URL`; by default GraphiQL on `BIND_ADDR`): the frontend's page that
    /// calls `acceptInvitation(input: {token})`.
    pub accept_url: String,
}

impl InvitationConfig {
    /// Reads the settings through `var`.
    pub fn from_lookup(
        var: &impl Fn(&'static str) -> Option<String>,
        bind: std::net::SocketAddr,
    ) -> Result<Self, ConfigError> {
        let days = match var("INVITATION_TTL_DAYS") {
            None => 14,
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|d| (1..=365).contains(d))
                .ok_or_else(|| ConfigError {
                    var: "INVITATION_TTL_DAYS",
                    message: "must be a whole number of days between 1 and 365".into(),
                })?,
        };
        let accept_url = match var("INVITATION_ACCEPT_URL") {
            None => format!("http://{bind}/graphiql"),
            Some(v) => {
                let v = v.trim().to_string();
                let ok = url::Url::parse(&v).is_ok_and(|u| {
                    matches!(u.scheme(), "http" | "https") && u.fragment().is_none()
                });
                if !ok {
                    return Err(ConfigError {
                        var: "INVITATION_ACCEPT_URL",
                        message: "must be an http(s) URL without a fragment".into(),
                    });
                }
                v
            }
        };
        Ok(Self {
            ttl: Duration::from_secs(days * 86_400),
            accept_url,
        })
    }

    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX)
    }

    /// The link of an invitation's e-mail.
    pub fn link(&self, vault: &Vault, id: Uuid) -> String {
        let sep = if self.accept_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!("{}{sep}invitation={}", self.accept_url, token(vault, id))
    }
}

impl Default for InvitationConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(14 * 86_400),
            accept_url: "http://127.0.0.1:8080/graphiql".into(),
        }
    }
}

/// An e-mail address as invitations compare it: trimmed, checked, its ASCII letters
/// lower-cased and nothing else changed (no Unicode case folding, which would make two
/// mailboxes one: U+212A KELVIN SIGN folds to `k`).
pub fn normalize_email(email: &str) -> DomainResult<String> {
    // One bare address as delivery reads it (no display name, quotes or lists), with a
    // dotted domain.
    let parsed = super::notifications::channels::check_recipient("email", email)?;
    super::members::check_email(parsed.as_ref())
}

fn link_mac(vault: &Vault, id: Uuid) -> [u8; LINK_MAC] {
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&vault.subkey(LINK_PURPOSE))
            .expect("any key size");
    mac.update(id.as_bytes());
    let full = mac.finalize().into_bytes();
    let mut out = [0; LINK_MAC];
    out.copy_from_slice(&full[..LINK_MAC]);
    out
}

/// The signed token of an invitation's link: base64url of its id and a MAC of it under the
/// master key's subkey for invitation links (whoever holds it still has to be the invitee).
pub fn token(vault: &Vault, id: Uuid) -> String {
    let mut bytes = Vec::with_capacity(16 + LINK_MAC);
    bytes.extend_from_slice(id.as_bytes());
    bytes.extend_from_slice(&link_mac(vault, id));
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The invitation a link's token names, when its signature holds.
pub fn verify_token(vault: &Vault, token: &str) -> Option<Uuid> {
    if token.len() > 64 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    if bytes.len() != 16 + LINK_MAC {
        return None;
    }
    let id = Uuid::from_slice(&bytes[..16]).ok()?;
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&vault.subkey(LINK_PURPOSE))
            .expect("any key size");
    mac.update(id.as_bytes());
    mac.verify_truncated_left(&bytes[16..]).ok()?;
    Some(id)
}

/// Invites `email` (normalized) to `ws` as `role` by `actor`, in the caller's transaction
/// (`addMember`'s, after its checks): the invitation, audited and notified.
pub(crate) async fn invite(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    ws: WorkspaceId,
    email: &str,
    role: Role,
    config: &InvitationConfig,
) -> DomainResult<InvitationRow> {
    if members::is_member_by_email(conn, ws.0, email).await? {
        return Err(DomainError::Conflict(format!(
            "{} is already a member of this workspace",
            super::excerpt(email)
        )));
    }
    let row = store::insert(
        conn,
        ws.0,
        email,
        role.as_str(),
        actor.user_id.0,
        config.ttl_secs(),
    )
    .await?
    .ok_or_else(|| {
        DomainError::Conflict(format!(
            "{} already has a pending invitation to this workspace: resend or revoke it",
            super::excerpt(email)
        ))
    })?;
    let id = InvitationId(row.id).encode();
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "member.invite",
            target_type: "Invitation",
            target_id: id,
            summary: json!({"email": email, "role": role.as_str()}),
            actor,
        },
    )
    .await?;
    notify(conn, &row, actor).await?;
    Ok(row)
}

/// The `member.invited` notification of the invitation's latest e-mail (its dedupe key
/// counts the sends, so each send is one notification).
async fn notify(
    conn: &mut AsyncPgConnection,
    row: &InvitationRow,
    actor: &Actor,
) -> DomainResult<()> {
    let id = InvitationId(row.id).encode();
    let data = json!({
        "workspaceId": WorkspaceId(row.workspace_id).encode(),
        "invitationId": id,
        "email": row.email,
        "role": row.role,
        "invitedBy": actor.user_id.encode(),
        "expiresAt": row.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    notifications::record(
        conn,
        row.workspace_id,
        EventType::MemberInvited,
        data,
        Some(&format!("invitation:{id}:{}", row.sends)),
    )
    .await?;
    Ok(())
}

/// How an invitee names the invitation they answer.
#[derive(Debug, Clone, serde::Serialize)]
pub enum InvitationRef {
    /// By id (from `viewer.invitations`).
    Id(InvitationId),
    /// By the token of the e-mail's link.
    Token(String),
}

/// The invitation `r` names, as a uuid (`None`: a token that does not verify, which is
/// answered like a missing invitation).
fn resolve(vault: &Vault, r: &InvitationRef) -> Option<Uuid> {
    match r {
        InvitationRef::Id(id) => Some(id.0),
        InvitationRef::Token(t) => verify_token(vault, t),
    }
}

/// The caller's address when it is verified (normalized), or why they cannot answer
/// invitations.
async fn verified_email(conn: &mut AsyncPgConnection, actor: &Actor) -> DomainResult<String> {
    actor.gate.person_only("answer invitations")?;
    let me = repo::users::find_many(conn, &[actor.user_id.0])
        .await?
        .into_iter()
        .next()
        .ok_or(DomainError::NotFound("invitation"))?;
    if !me.email_verified {
        return Err(DomainError::Forbidden(
            "answering an invitation needs a verified e-mail address: sign in with an \
             identity that verifies it (email_verified)"
                .into(),
        ));
    }
    super::members::check_email(&me.email).map_err(|_| {
        DomainError::Forbidden("your e-mail address cannot receive invitations".into())
    })
}

/// `acceptInvitation`: the caller joins the invitation's workspace with its role (see the
/// module docs); the new membership.
pub async fn accept(
    services: &Services,
    actor: &Actor,
    which: InvitationRef,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<MemberRow>> {
    let id = resolve(&services.vault, &which);
    mutation::run(
        services,
        actor,
        "acceptInvitation",
        key,
        &which,
        |c, _| -> Effect<'_, _> { Box::pin(accept_effect(c, actor.clone(), id)) },
    )
    .await
}

async fn accept_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    id: Option<Uuid>,
) -> DomainResult<MemberRow> {
    let email = verified_email(conn, &actor).await?;
    let inv = match id {
        Some(id) => store::lock_addressed(conn, id, &email).await?,
        None => None,
    }
    .ok_or(DomainError::NotFound("invitation"))?;
    let ws = WorkspaceId(inv.workspace_id);
    // Joining is acting in the workspace: its policies decide as for any member.
    actor.admit(ws.0).await?;
    repo::workspaces::lock(conn, ws.0)
        .await?
        .ok_or(DomainError::NotFound("invitation"))?;
    if members::find_by_user(conn, ws.0, actor.user_id.0)
        .await?
        .is_some()
    {
        store::delete(conn, inv.id).await?;
        return Err(DomainError::Conflict(
            "you are already a member of this workspace".into(),
        ));
    }
    let role = Role::parse(&inv.role)
        .ok_or_else(|| DomainError::internal(anyhow::anyhow!("bad role in invitation")))?;
    let m = members::insert(conn, ws.0, actor.user_id.0, role.as_str(), inv.invited_by).await?;
    store::delete(conn, inv.id).await?;
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "member.join",
            target_type: "Member",
            target_id: MemberId(m.id).encode(),
            summary: json!({
                "invitationId": InvitationId(inv.id).encode(),
                "userId": UserId(m.user_id).encode(),
                "role": role.as_str(),
            }),
            actor: &actor,
        },
    )
    .await?;
    if role == Role::Owner {
        let who = (MemberId(m.id), UserId(m.user_id));
        notifications::owner_added(conn, ws, who, Some(&email), false, &actor).await?;
    }
    Ok(m)
}

/// What answering or revoking an invitation reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Ended {
    /// The invitation.
    pub invitation_id: InvitationId,
    /// Its workspace.
    pub workspace_id: WorkspaceId,
}

/// `declineInvitation`: the invitee refuses it (it is deleted, and the workspace's audit log
/// says so).
pub async fn decline(
    services: &Services,
    actor: &Actor,
    which: InvitationRef,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<Ended>> {
    let id = resolve(&services.vault, &which);
    mutation::run(
        services,
        actor,
        "declineInvitation",
        key,
        &which,
        |c, _| -> Effect<'_, _> { Box::pin(decline_effect(c, actor.clone(), id)) },
    )
    .await
}

async fn decline_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    id: Option<Uuid>,
) -> DomainResult<Ended> {
    let email = verified_email(conn, &actor).await?;
    let inv = match id {
        Some(id) => store::lock_addressed(conn, id, &email).await?,
        None => None,
    }
    .ok_or(DomainError::NotFound("invitation"))?;
    store::delete(conn, inv.id).await?;
    let ended = Ended {
        invitation_id: InvitationId(inv.id),
        workspace_id: WorkspaceId(inv.workspace_id),
    };
    audit::record(
        conn,
        Change {
            workspace: ended.workspace_id,
            action: "invitation.decline",
            target_type: "Invitation",
            target_id: ended.invitation_id.encode(),
            summary: json!({"role": inv.role}),
            actor: &actor,
        },
    )
    .await?;
    Ok(ended)
}

/// An invitation of a workspace the caller manages, locked (one statement: another
/// workspace's costs what a missing one costs), after the workspace's policies admitted the
/// caller. Owner invitations are managed by owners only.
async fn managed(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: InvitationId,
    what: &str,
) -> DomainResult<InvitationRow> {
    let (inv, mine) = store::lock_visible(conn, id.0, actor.user_id.0)
        .await?
        .ok_or(DomainError::NotFound("invitation"))?;
    actor.admit(inv.workspace_id).await?;
    let mine = Role::parse(&mine).unwrap_or(Role::Viewer);
    if !mine.is_manager() {
        return Err(DomainError::Forbidden(format!(
            "your role {} may not {what}",
            mine.as_str()
        )));
    }
    if inv.role == Role::Owner.as_str() && mine != Role::Owner {
        return Err(DomainError::Forbidden(format!(
            "only owners can {what} of owners"
        )));
    }
    Ok(inv)
}

/// `revokeInvitation` (owners and admins; owners for owner invitations).
pub async fn revoke(
    services: &Services,
    actor: &Actor,
    id: InvitationId,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<Ended>> {
    mutation::run(
        services,
        actor,
        "revokeInvitation",
        key,
        &id,
        |c, _| -> Effect<'_, _> { Box::pin(revoke_effect(c, actor.clone(), id)) },
    )
    .await
}

async fn revoke_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    id: InvitationId,
) -> DomainResult<Ended> {
    let inv = managed(conn, &actor, id, "revoke invitations").await?;
    store::delete(conn, inv.id).await?;
    let ended = Ended {
        invitation_id: id,
        workspace_id: WorkspaceId(inv.workspace_id),
    };
    audit::record(
        conn,
        Change {
            workspace: ended.workspace_id,
            action: "invitation.revoke",
            target_type: "Invitation",
            target_id: id.encode(),
            summary: json!({"email": inv.email, "role": inv.role}),
            actor: &actor,
        },
    )
    .await?;
    Ok(ended)
}

/// `resendInvitation` (owners and admins): e-mails the invitation again and starts its time
/// again; at most [`MAX_SENDS`] e-mails, one a minute.
pub async fn resend(
    services: &Services,
    actor: &Actor,
    id: InvitationId,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<InvitationRow>> {
    let ttl = services.invitations.ttl_secs();
    mutation::run(
        services,
        actor,
        "resendInvitation",
        key,
        &id,
        |c, _| -> Effect<'_, _> { Box::pin(resend_effect(c, actor.clone(), id, ttl)) },
    )
    .await
}

async fn resend_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    id: InvitationId,
    ttl_secs: i64,
) -> DomainResult<InvitationRow> {
    let inv = managed(conn, &actor, id, "resend invitations").await?;
    if inv.sends >= MAX_SENDS {
        return Err(DomainError::LimitExceeded(format!(
            "an invitation is e-mailed at most {MAX_SENDS} times; revoke it and invite again"
        )));
    }
    let since = chrono::Utc::now() - inv.last_sent_at;
    if since.num_seconds() < RESEND_INTERVAL_SECS {
        return Err(DomainError::LimitExceeded(format!(
            "an invitation is e-mailed at most once a minute; try again in {} s",
            RESEND_INTERVAL_SECS - since.num_seconds().max(0)
        )));
    }
    let row = store::resent(conn, inv.id, ttl_secs).await?;
    audit::record(
        conn,
        Change {
            workspace: WorkspaceId(row.workspace_id),
            action: "invitation.resend",
            target_type: "Invitation",
            target_id: id.encode(),
            summary: json!({"email": row.email, "sends": row.sends}),
            actor: &actor,
        },
    )
    .await?;
    notify(conn, &row, &actor).await?;
    Ok(row)
}

/// The pending invitations addressed to the caller's verified e-mail, newest first (none
/// while it is not verified).
pub async fn received(services: &Services, actor: &Actor) -> DomainResult<Vec<ReceivedRow>> {
    let mut conn = services.conn().await?;
    let email = match verified_email(&mut conn, actor).await {
        Ok(e) => e,
        Err(DomainError::Forbidden(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(store::received(&mut conn, &email, MAX_RECEIVED).await?)
}

/// A page of the live invitations of `ws`, newest first (the caller checked the reader).
pub async fn page(
    services: &Services,
    ws: WorkspaceId,
    page: Page,
) -> DomainResult<Vec<InvitationRow>> {
    let mut conn = services.conn().await?;
    Ok(store::page(&mut conn, ws.0, page).await?)
}

/// The periodic `invitation-expiry`: deletes expired invitations in batches; how many.
pub async fn expire_due(pool: &crate::db::DbPool) -> anyhow::Result<usize> {
    let mut conn = pool.get().await?;
    let mut total = 0;
    loop {
        let n = store::delete_expired(&mut conn, EXPIRY_BATCH).await?;
        total += n;
        if n < EXPIRY_BATCH as usize {
            return Ok(total);
        }
    }
}

/// What an invitation's e-mail says: subject and text, with the signed link.
pub fn email_text(config: &InvitationConfig, vault: &Vault, r: &ReceivedRow) -> (String, String) {
    let i = &r.invitation;
    let subject = format!("You are invited to {}", super::excerpt(&r.workspace_name));
    let text = format!(
        "You are invited to join the workspace {} ({}) as {}.\n\n\
         Accept or decline: {}\n\n\
         Sign in with this e-mail address ({}); the invitation expires at {}.\n\
         If you did not expect it, ignore this e-mail: nothing happens unless you accept.\n",
        r.workspace_name,
        WorkspaceId(i.workspace_id),
        i.role,
        config.link(vault, i.id),
        i.email,
        i.expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    (subject, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(k: u8) -> Vault {
        Vault::open("memory:///", &[], [k; 32]).expect("vault")
    }

    #[test]
    fn link_tokens_verify_and_any_change_voids_them() {
        let (v, id) = (vault(1), Uuid::now_v7());
        let t = token(&v, id);
        assert_eq!(verify_token(&v, &t), Some(id));
        assert_eq!(verify_token(&vault(2), &t), None);
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).expect("base64");
        for i in 0..bytes.len() {
            bytes[i] ^= 1;
            assert_eq!(
                verify_token(&v, &URL_SAFE_NO_PAD.encode(&bytes)),
                None,
                "byte {i}"
            );
            bytes[i] ^= 1;
        }
        assert_eq!(verify_token(&v, &"A".repeat(10_000)), None);
        assert_eq!(verify_token(&v, ""), None);
    }

    #[test]
    fn addresses_fold_ascii_only() {
        assert_eq!(
            normalize_email(" Kate@Example.COM ").expect("ok"),
            "kate@example.com"
        );
        // The Kelvin sign is not `k`: two mailboxes never become one.
        let kelvin = normalize_email("\u{212A}ate@example.com").expect("ok");
        assert_ne!(kelvin, "kate@example.com");
        assert_eq!(kelvin, "\u{212A}ate@example.com");
        assert_eq!(
            normalize_email("ÄRGER@Example.com").expect("ok"),
            "Ärger@example.com"
        );
    }

    #[test]
    fn links_append_the_token() {
        let v = vault(3);
        let id = Uuid::now_v7();
        let mut c = InvitationConfig::default();
        assert!(
            c.link(&v, id)
                .starts_with("http://127.0.0.1:8080/graphiql?invitation=")
        );
        c.accept_url = "https://app.example.com/join?x=1".into();
        assert!(
            c.link(&v, id)
                .starts_with("https://app.example.com/join?x=1&invitation=")
        );
    }
}
