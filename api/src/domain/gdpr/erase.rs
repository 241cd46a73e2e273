//! Erasure (`eraseUser`): irreversible, done by a job. Who asks decides what is erased, and
//! nobody erases more than they control:
//! - **the person themself** erases their account: everything below;
//! - **an owner** of a workspace the person belongs to erases the person *from that
//!   workspace* ([`remove_from_workspace`]): the membership goes at once, and the job replaces
//!   their e-mail and name with their pseudonym in that workspace's rows and archives, and
//!   deletes the exports about them asked for there. Their account, their sign-in and every
//!   other workspace are untouched, whatever other workspaces they have or had.
//!
//! The person's own request, in one transaction: closes the identity at once (the row's subject becomes a
//! keyed hash of the token's `sub`, so that `sub` finds nothing and is refused at sign-in, and
//! the e-mail stops counting as verified, so invitations no longer find the row), records the
//! erasure (`user_erasures`, with the pseudonym), enqueues the job and audits `user.erase` —
//! target the pseudonym, nothing personal — in the owner's workspace, or in each of the
//! person's workspaces when they asked. The process that took the request forgets the
//! identity from its cache right after (`IdentityCache::forget`).
//!
//! The job, each step idempotent, so a job killed midway does it all again:
//! - deletes the person's exports (objects, then rows; those they asked for about others
//!   too) and forgets their data key (what was sealed under it cannot be opened any more);
//! - deletes their consents, the idempotency keys they used (with the responses stored under
//!   them), the invitations to their address (and the placeholder users of old), and
//!   takes their address out of notification recipient lists;
//! - drops the stored renderings of others' responses that showed them (a replay resolves
//!   afresh, showing the pseudonym);
//! - replaces by the pseudonym their name, as whole words in the JSON of the workspaces they
//!   belonged to or acted in (now or before: former memberships and removals too, see
//!   `erasure::linked_workspaces`), and their e-mail address everywhere: every text, JSON and
//!   text-array column of every table of every schema (tables added later too), but the
//!   financial records kept by law ([`KEPT`]);
//! - rewrites the archives of deleted rows that name them (`redact_archives`), so that a
//!   restore brings nothing back: the name too in the archives of any workspace whose
//!   archived rows hold their id (a former member whose events were archived), and then in
//!   that workspace's live JSON;
//! - last, in one transaction, deletes their memberships, turns the `users` row into a
//!   tombstone (e-mail = pseudonym, no name) and marks the erasure complete.
//!
//! The person's id stays on the tombstone: foreign keys hold, and audit and usage rows keep
//! their actor, so counts by person add up while the id leads to nothing personal.
//!
//! A second request for the same person changes nothing: it returns the erasure's job (or,
//! once that job's row was purged, a new job of the requester's that finds the erasure done).

use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;
use uuid::Uuid;

use super::super::audit::{self, Change};
use super::super::mutation::{self, Effect};
use super::super::{Actor, DomainError, DomainResult, Role, Services};
use super::{Scope, closed_subject, enqueue, erase_payload, pseudonym};
use crate::db::DbPool;
use crate::db::repo::erasure::{self, Sweep, TextColumn, TextKind};
use crate::db::repo::workspace_jobs::{self, JobRow};
use crate::db::repo::{consents, data_exports};
use crate::domain::archives;
use crate::ids::{JobId, UserId, WorkspaceId};
use crate::storage::{OpenError, Sealed, Vault};

/// The kind of an erasure job.
pub const KIND: &str = "gdpr.erase";
/// Rows rewritten per statement.
const BATCH: i64 = 1_000;
/// Longest name looked for in other rows.
const MAX_NAME_CHARS: usize = 200;

/// Tables an erasure never rewrites: financial records the law requires to be kept
/// (billing contacts, invoices and what Stripe sent or was sent about them), and the
/// bookkeeping of migrations.
pub const KEPT: &[(&str, &str)] = &[
    ("public", "billing_accounts"),
    ("public", "payment_methods"),
    ("public", "subscriptions"),
    ("public", "subscription_items"),
    ("public", "invoices"),
    ("public", "stripe_events"),
    ("public", "stripe_intents"),
    ("public", "__diesel_schema_migrations"),
    ("apalis", "_sqlx_migrations"),
];

/// Tables the job handles itself (the tombstone comes last: until then the row holds what the
/// sweeps look for).
const HANDLED: &[(&str, &str)] = &[("public", "users"), ("public", "user_erasures")];

/// Input of `request`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EraseRequest {
    /// The person.
    pub user_id: UserId,
}

/// What `request` did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Requested {
    /// The job that erases (for a repeat: the erasure's job).
    pub job: JobRow,
    /// What replaces the person.
    pub pseudonym: String,
}

/// `eraseUser`: closes the person's identity and enqueues their erasure (see the module
/// docs); the job and the pseudonym.
pub async fn request(
    services: &Services,
    actor: &Actor,
    input: EraseRequest,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<Requested>> {
    actor.gate.person_only("erase users")?;
    let user = input.user_id;
    let done = mutation::run(
        services,
        actor,
        "eraseUser",
        key,
        &input,
        |c, _| -> Effect<'_, _> {
            Box::pin(request_effect(
                c,
                actor.clone(),
                user,
                services.vault.clone(),
            ))
        },
    )
    .await?;
    services.identities.forget(user.0);
    Ok(done)
}

async fn request_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    user: UserId,
    vault: std::sync::Arc<Vault>,
) -> DomainResult<Requested> {
    // The person and the caller's right to know of them in one statement: a stranger's id
    // costs what a missing one costs. (An API key's service account is no person: revoking
    // the key removes it; the caller, a person, is never one.)
    let person = if user == actor.user_id {
        erasure::lock_person(conn, user.0, true).await?
    } else {
        erasure::lock_person_visible(conn, user.0, actor.user_id.0).await?
    }
    .ok_or(DomainError::NotFound("user"))?;
    if let Some(done) = erasure::find(conn, user.0).await? {
        return repeat(conn, &actor, user, done).await;
    }
    let theirs = erasure::live_memberships(conn, user.0).await?;
    let scope = if user == actor.user_id {
        let last: Vec<String> = theirs
            .iter()
            .filter(|m| m.last_owner)
            .map(|m| WorkspaceId(m.workspace_id).encode())
            .collect();
        if !last.is_empty() {
            return Err(DomainError::FailedPrecondition(format!(
                "you are the last owner of {}: make another member an owner, or delete the \
                 workspace, before erasing your account",
                last.join(", ")
            )));
        }
        // Erasing one's account acts in every workspace one belongs to: each one's policies
        // decide (each holds part of what is erased).
        super::admit_scope(conn, &actor, None, user.0).await?;
        Scope::Everything
    } else {
        let ws = owner_scope(conn, &actor, &theirs).await?;
        return remove_from_workspace(conn, &actor, user, ws, &vault).await;
    };
    let pseudonym = pseudonym(&vault, user.0);
    let (job, _) = enqueue(
        conn,
        &actor,
        scope,
        KIND,
        &erase_payload(user.0),
        &format!("gdpr.erase:{}", user.0),
        None,
    )
    .await?;
    // An invitee who never signed in has no subject: theirs is closed all the same, so that
    // no sign-in claims the row.
    let subject = person
        .subject
        .unwrap_or_else(|| format!("\u{0}invitee:{}", user.0));
    erasure::close_identity(conn, user.0, &closed_subject(&vault, &subject)).await?;
    erasure::insert(
        conn,
        user.0,
        &pseudonym,
        actor.user_id.0,
        scope.workspace(),
        &job.id,
    )
    .await?;
    let audited: Vec<Uuid> = match scope {
        Scope::Workspace(ws) => vec![ws],
        Scope::Everything => theirs.iter().map(|m| m.workspace_id).collect(),
    };
    for ws in audited {
        audit::record(
            conn,
            Change {
                workspace: WorkspaceId(ws),
                action: "user.erase",
                target_type: "User",
                target_id: pseudonym.clone(),
                summary: json!({
                    "requestedBy": if scope == Scope::Everything { "SELF" } else { "OWNER" },
                    "jobId": JobId(job.id.clone()).encode(),
                }),
                actor: &actor,
            },
        )
        .await?;
    }
    Ok(Requested { job, pseudonym })
}

/// An owner's erasure of a member from workspace `ws`, in the request's transaction: removes
/// the membership (audited as `member.remove` and `user.erase`) and enqueues the job that
/// pseudonymizes the person in `ws` only ([`run_in_workspace`]). The account stays.
async fn remove_from_workspace(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    user: UserId,
    ws: Uuid,
    vault: &Vault,
) -> DomainResult<Requested> {
    let m = crate::db::repo::members::find_by_user(conn, ws, user.0)
        .await?
        .ok_or(DomainError::NotFound("user"))?;
    crate::db::repo::workspaces::lock(conn, ws)
        .await?
        .ok_or(DomainError::NotFound("user"))?;
    if m.role == Role::Owner.as_str()
        && crate::db::repo::members::count_owners(conn, ws).await? <= 1
    {
        return Err(DomainError::Conflict(
            "the last owner of a workspace cannot be erased from it".into(),
        ));
    }
    crate::db::repo::members::delete(conn, m.id).await?;
    let pseudonym = pseudonym(vault, user.0);
    let payload = crate::tasks::Task::EraseInWorkspace {
        user: user.0,
        workspace: ws,
    }
    .payload();
    let (job, _) = enqueue(
        conn,
        actor,
        Scope::Workspace(ws),
        KIND,
        &payload,
        &format!("gdpr.erase:{ws}:{}", m.id),
        None,
    )
    .await?;
    let w = WorkspaceId(ws);
    audit::record(
        conn,
        Change {
            workspace: w,
            action: "member.remove",
            target_type: "Member",
            target_id: crate::ids::MemberId(m.id).encode(),
            summary: json!({"userId": user.encode(), "role": m.role, "erased": true}),
            actor,
        },
    )
    .await?;
    audit::record(
        conn,
        Change {
            workspace: w,
            action: "user.erase",
            target_type: "User",
            target_id: pseudonym.clone(),
            summary: json!({
                "requestedBy": "OWNER",
                "scope": "WORKSPACE",
                "jobId": JobId(job.id.clone()).encode(),
            }),
            actor,
        },
    )
    .await?;
    Ok(Requested { job, pseudonym })
}

/// The job of an owner's erasure: the person, no longer a member of `ws`, is pseudonymized in
/// `ws`'s rows and archives, and the exports about them asked for in `ws` are deleted
/// (idempotent; nothing is done if they became a member again meanwhile).
pub async fn run_in_workspace(
    pool: &DbPool,
    vault: &Vault,
    ws: Uuid,
    user: Uuid,
) -> anyhow::Result<()> {
    let mut conn = pool.get().await?;
    let Some(person) = erasure::lock_person(&mut conn, user, false).await? else {
        tracing::warn!(user.id = %user, "an erasure from a workspace of no user; dropped");
        return Ok(());
    };
    if crate::db::repo::members::find_by_user(&mut conn, ws, user)
        .await?
        .is_some()
    {
        tracing::info!(workspace.id = %ws, "the person is a member again; nothing to erase");
        return Ok(());
    }
    for path in data_exports::paths_about_in(&mut conn, user, ws).await? {
        vault.delete(&path).await?;
    }
    data_exports::delete_about_in(&mut conn, user, ws).await?;
    forget_in_workspace(
        &mut conn,
        vault,
        ws,
        user,
        &person.email,
        person.name.as_deref(),
    )
    .await?;
    let p = pseudonym(vault, user);
    let (name_escaped, name_pattern) = name_forms(person.name.as_deref());
    let only = [ws];
    let ids = Ids::of(user);
    let redact = Redaction {
        email_needle: &json_escaped(&person.email).to_lowercase(),
        email_pattern: &format!("(?i){}", regex_literal(&person.email)),
        names: name_escaped.as_deref().zip(name_pattern.as_deref()),
        linked: &only,
        ids: ids.needles(),
        pseudonym: &p,
        only: Some(ws),
    };
    let archives = redact_archives(&mut conn, vault, &redact).await?.rewritten;
    erasure::record_scrub(&mut conn, ws, user, chrono::Utc::now()).await?;
    tracing::info!(workspace.id = %ws, pseudonym = %p, archives, "erased from a workspace");
    Ok(())
}

/// The workspace an owner erases a member from: a live workspace the person belongs to,
/// which the caller owns (named by the request when they share several).
async fn owner_scope(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    theirs: &[erasure::Membership],
) -> DomainResult<Uuid> {
    let mine = erasure::live_memberships(conn, actor.user_id.0).await?;
    let shared: Vec<&erasure::Membership> = mine
        .iter()
        .filter(|m| theirs.iter().any(|t| t.workspace_id == m.workspace_id))
        .collect();
    let Some(first) = shared.first() else {
        // Someone who shares no workspace with the caller, exactly like a missing id.
        return Err(DomainError::NotFound("user"));
    };
    let Some(owned) = shared
        .iter()
        .find(|m| Role::parse(&m.role) == Some(Role::Owner))
    else {
        return Err(DomainError::Forbidden(format!(
            "your role {} may not erase members: only the person themself, or an owner of the \
             only workspace they belong to, may",
            first.role
        )));
    };
    if shared
        .iter()
        .filter(|m| Role::parse(&m.role) == Some(Role::Owner))
        .count()
        > 1
    {
        return Err(DomainError::bad_input(
            "workspaceId",
            "this person belongs to several of your workspaces: erase them from each with \
             removeMember, or ask them to erase their account",
        ));
    }
    // Erasing from a workspace is acting in it: its policies decide.
    actor.admit(owned.workspace_id).await?;
    Ok(owned.workspace_id)
}

/// A repeat: the erasure's job for whoever may know of it (who asked, or an owner the person
/// still shares a workspace with while the job has not run); `NOT_FOUND` for anyone else.
async fn repeat(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    user: UserId,
    done: erasure::ErasureRow,
) -> DomainResult<Requested> {
    let knows = done.requested_by == actor.user_id.0
        || user == actor.user_id
        || super::scope_of(conn, actor, user, None, "erase their account")
            .await
            .is_ok();
    if !knows {
        return Err(DomainError::NotFound("user"));
    }
    let job = match workspace_jobs::find(conn, &done.job_id).await? {
        Some(job) => job,
        None => {
            // The erasure's job was purged (finished jobs are): a job of the requester's
            // that finds the erasure done.
            let key = format!("gdpr.erase:{}:again:{}", user.0, Uuid::now_v7());
            enqueue(
                conn,
                actor,
                Scope::Everything,
                KIND,
                &erase_payload(user.0),
                &key,
                None,
            )
            .await?
            .0
        }
    };
    Ok(Requested {
        job,
        pseudonym: done.pseudonym,
    })
}

/// `s` as a regular expression (PostgreSQL's) matching it literally: every character but
/// letters and digits escaped.
pub fn regex_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if !c.is_alphanumeric() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `s` as it appears inside a JSON string.
pub fn json_escaped(s: &str) -> String {
    let quoted = serde_json::Value::String(s.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// A name as erasure looks for it, when it can be told from other words (not empty, and not a
/// claim so long that it is no name; the tombstone drops it all the same): its form inside a
/// JSON string and its whole-word pattern.
fn name_forms(name: Option<&str>) -> (Option<String>, Option<String>) {
    let name = name
        .map(str::trim)
        .filter(|n| !n.is_empty() && n.chars().count() <= MAX_NAME_CHARS);
    (
        name.map(json_escaped),
        name.map(|n| format!("(?<![[:alnum:]_]){}(?![[:alnum:]_])", regex_literal(n))),
    )
}

fn listed(list: &[(&str, &str)], c: &TextColumn) -> bool {
    list.iter()
        .any(|(s, t)| *s == c.schema.as_str() && *t == c.table.as_str())
}

/// Does the erasure of `user` (one job; see the module docs).
pub async fn run(pool: &DbPool, vault: &Vault, user: Uuid) -> anyhow::Result<()> {
    let mut conn = pool.get().await?;
    let Some(er) = erasure::find(&mut conn, user).await? else {
        tracing::warn!(user.id = %user, "an erasure job of no requested erasure; dropped");
        return Ok(());
    };
    let p = er.pseudonym;
    if er.completed_at.is_some() {
        tracing::info!(pseudonym = %p, "already erased; nothing to do");
        return Ok(());
    }
    let person = erasure::lock_person(&mut conn, user, false)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the user row of {p} is missing"))?;
    // Exports: objects first (a crash leaves rows that lead to them), then rows, then the key.
    for path in data_exports::paths_involving(&mut conn, user).await? {
        vault.delete(&path).await?;
    }
    data_exports::delete_involving(&mut conn, user).await?;
    Vault::forget_key(&mut conn, user).await?;
    consents::delete_all(&mut conn, user).await?;
    erasure::delete_idempotency_keys(&mut conn, user).await?;
    erasure::remove_recipient(&mut conn, &person.email).await?;
    erasure::delete_invitee_placeholders(&mut conn, user, &person.email).await?;
    crate::db::repo::invitations::delete_addressed_to(&mut conn, &person.email).await?;
    let (name_escaped, name_pattern) = name_forms(person.name.as_deref());
    let email_needle = json_escaped(&person.email).to_lowercase();
    erasure::drop_renderings(&mut conn, &email_needle, name_pattern.as_deref()).await?;
    let columns: Vec<TextColumn> = erasure::text_columns(&mut conn)
        .await?
        .into_iter()
        .filter(|c| !listed(KEPT, c) && !listed(HANDLED, c))
        .collect();
    let is_json = |c: &TextColumn| matches!(c.kind, TextKind::Json | TextKind::Jsonb);
    let linked = erasure::linked_workspaces(&mut conn, user).await?;
    let names = name_escaped.as_deref().zip(name_pattern.as_deref());
    if let Some(names) = names {
        let json = columns
            .iter()
            .filter(|c| is_json(c) && (c.per_workspace || c.table == "idempotency_keys"));
        sweep_names(&mut conn, json, names, &p, &linked).await?;
    }
    let email_pattern = format!("(?i){}", regex_literal(&person.email));
    let email_raw = person.email.to_lowercase();
    for c in &columns {
        let sweep = Sweep {
            pattern: &email_pattern,
            replacement: &p,
            needle: if is_json(c) {
                &email_needle
            } else {
                &email_raw
            },
            fold_case: true,
            workspaces: None,
        };
        erasure::sweep_column(&mut conn, c, &sweep, BATCH)
            .await
            .map_err(|e| anyhow::anyhow!("rewriting {}.{}.{}: {e}", c.schema, c.table, c.column))?;
    }
    let ids = Ids::of(user);
    let redact = Redaction {
        email_needle: &email_needle,
        email_pattern: &email_pattern,
        names,
        linked: &linked,
        ids: ids.needles(),
        pseudonym: &p,
        only: None,
    };
    let redacted = redact_archives(&mut conn, vault, &redact).await?;
    // Workspaces only archived rows tie them to (they left before cleanup archived their
    // events): what those workspaces still hold may name them too. A job killed after the
    // archives were rewritten finds them again (the archived rows keep the person's id).
    if let (Some(names), false) = (names, redacted.found.is_empty()) {
        let json = columns.iter().filter(|c| is_json(c) && c.per_workspace);
        sweep_names(&mut conn, json, names, &p, &redacted.found).await?;
    }
    let archives = redacted.rewritten;
    conn.transaction::<_, diesel::result::Error, _>(async |c| {
        erasure::tombstone(c, user, &p).await
    })
    .await?;
    tracing::info!(pseudonym = %p, archives, "erased");
    Ok(())
}

/// Replaces the name (`names`: as JSON holds it, and its whole-word pattern) by the
/// pseudonym `p` in `columns` (JSON), in the rows of `workspaces` for per-workspace tables.
async fn sweep_names<'c>(
    conn: &mut AsyncPgConnection,
    columns: impl Iterator<Item = &'c TextColumn>,
    (escaped, pattern): (&str, &str),
    p: &str,
    workspaces: &[Uuid],
) -> anyhow::Result<()> {
    for c in columns {
        let sweep = Sweep {
            pattern,
            replacement: p,
            needle: escaped,
            fold_case: false,
            workspaces: Some(workspaces),
        };
        erasure::sweep_column(conn, c, &sweep, BATCH)
            .await
            .map_err(|e| anyhow::anyhow!("rewriting {}.{}.{}: {e}", c.schema, c.table, c.column))?;
    }
    Ok(())
}

/// Retention of removed members' personal data (`userDataDays`): replaces the e-mail and
/// name of `user`, no longer a member of workspace `ws`, with their pseudonym in the rows of
/// `ws` only (every per-workspace text and JSON column but the financial records erasure
/// keeps too). Their account, and what other workspaces hold, are untouched. Idempotent.
pub async fn forget_in_workspace(
    conn: &mut AsyncPgConnection,
    vault: &Vault,
    ws: Uuid,
    user: Uuid,
    email: &str,
    name: Option<&str>,
) -> anyhow::Result<()> {
    let p = pseudonym(vault, user);
    let only = [ws];
    let columns: Vec<TextColumn> = erasure::text_columns(conn)
        .await?
        .into_iter()
        .filter(|c| c.per_workspace && !listed(KEPT, c) && !listed(HANDLED, c))
        .collect();
    let is_json = |c: &TextColumn| matches!(c.kind, TextKind::Json | TextKind::Jsonb);
    let email_pattern = format!("(?i){}", regex_literal(email));
    let email_needle = json_escaped(email).to_lowercase();
    let email_raw = email.to_lowercase();
    let (name_escaped, name_pattern) = name_forms(name);
    for c in &columns {
        let sweep = Sweep {
            pattern: &email_pattern,
            replacement: &p,
            needle: if is_json(c) {
                &email_needle
            } else {
                &email_raw
            },
            fold_case: true,
            workspaces: Some(&only),
        };
        erasure::sweep_column(conn, c, &sweep, BATCH)
            .await
            .map_err(|e| anyhow::anyhow!("rewriting {}.{}.{}: {e}", c.schema, c.table, c.column))?;
        if let (Some(pattern), Some(needle), true) =
            (name_pattern.as_deref(), name_escaped.as_deref(), is_json(c))
        {
            let sweep = Sweep {
                pattern,
                replacement: &p,
                needle,
                fold_case: false,
                workspaces: Some(&only),
            };
            erasure::sweep_column(conn, c, &sweep, BATCH)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("rewriting {}.{}.{}: {e}", c.schema, c.table, c.column)
                })?;
        }
    }
    Ok(())
}

/// The person's id in the two forms archived rows hold it: the UUID (`actor_id`, `user_id`)
/// and the external `usr_…` (`summary.userId`, `target_id`).
struct Ids {
    uuid: String,
    external: String,
}

impl Ids {
    fn of(user: Uuid) -> Self {
        Ids {
            uuid: user.to_string(),
            external: UserId(user).encode(),
        }
    }

    fn needles(&self) -> [&str; 2] {
        [&self.uuid, &self.external]
    }
}

/// What erasure replaces in archived rows.
struct Redaction<'a> {
    /// The e-mail, lower-case, as JSON holds it.
    email_needle: &'a str,
    /// The e-mail's pattern (case-insensitive).
    email_pattern: &'a str,
    /// The name as JSON holds it and its whole-word pattern: in the archives of `linked`
    /// workspaces, and in those of any workspace whose archived rows hold one of `ids`.
    names: Option<(&'a str, &'a str)>,
    /// The workspaces the person belonged to or acted in, as live rows tell.
    linked: &'a [Uuid],
    /// The person's id as archived rows hold it (they acted, or were acted on).
    ids: [&'a str; 2],
    /// The replacement.
    pseudonym: &'a str,
    /// Only the archives of this workspace (an owner's erasure), or every one.
    only: Option<Uuid>,
}

/// What `redact_archives` did.
struct Redacted {
    /// Archives rewritten.
    rewritten: usize,
    /// Workspaces outside `linked` whose archived rows hold the person's id.
    found: Vec<Uuid>,
}

/// What one archive held (`redact_archive`).
struct Seen {
    /// Its rows hold the person's id.
    theirs: bool,
    /// It holds the name, which was not replaced (neither its workspace nor its rows were
    /// known to be theirs).
    name_left: bool,
    /// It was rewritten.
    rewritten: bool,
}

/// Archives hold rows cleanup deleted (sealed under their workspace's key, restorable):
/// every archive whose rows name the person is rewritten with the pseudonym, sealed at a new
/// path (its manifest row then points there, with the new sizes and digests, and the old
/// object goes), so a restore brings back no personal data. The e-mail is replaced in every
/// archive; the name (a whole word, which elsewhere may be a common word) in the archives of
/// workspaces the person belonged to or acted in: `linked`, and any workspace one of whose
/// archives holds rows with the person's id — which is how a former member is found whose
/// events were archived before (a second pass takes that workspace's other archives). An
/// archive that no longer opens (corrupt, or its workspace's key gone) cannot be restored
/// either: it is skipped with a warning.
async fn redact_archives(
    conn: &mut AsyncPgConnection,
    vault: &Vault,
    r: &Redaction<'_>,
) -> anyhow::Result<Redacted> {
    const PAGE: i64 = 100;
    let mut after = Uuid::nil();
    let mut done = Redacted {
        rewritten: 0,
        found: Vec::new(),
    };
    // Archives that hold the name in a workspace not (yet) known to be the person's.
    let mut name_left: Vec<(Uuid, Uuid)> = Vec::new();
    loop {
        let page = erasure::archives_after(conn, after, PAGE).await?;
        for a in page
            .iter()
            .filter(|a| r.only.is_none_or(|w| w == a.workspace_id))
        {
            let seen = redact_archive(conn, vault, r, a, false).await?;
            done.rewritten += usize::from(seen.rewritten);
            if seen.theirs
                && !r.linked.contains(&a.workspace_id)
                && !done.found.contains(&a.workspace_id)
            {
                done.found.push(a.workspace_id);
            }
            if seen.name_left {
                name_left.push((a.id, a.workspace_id));
            }
        }
        match page.last() {
            Some(last) if page.len() as i64 == PAGE => after = last.id,
            _ => break,
        }
    }
    for (id, ws) in name_left {
        if !done.found.contains(&ws) {
            continue;
        }
        // Read again: the first pass may have rewritten it (the e-mail) at a new path.
        let Some(a) = erasure::archive(conn, id).await? else {
            continue;
        };
        let seen = redact_archive(conn, vault, r, &a, true).await?;
        done.rewritten += usize::from(seen.rewritten);
    }
    Ok(done)
}

/// Rewrites archive `a` if it names the person (see [`redact_archives`]); the name is
/// replaced when `a`'s workspace is linked, its rows hold the person's id, or `theirs`.
async fn redact_archive(
    conn: &mut AsyncPgConnection,
    vault: &Vault,
    r: &Redaction<'_>,
    a: &erasure::ArchiveRef,
    theirs: bool,
) -> anyhow::Result<Seen> {
    let mut seen = Seen {
        theirs: false,
        name_left: false,
        rewritten: false,
    };
    let Some(key) = vault.existing_key(conn, a.workspace_id).await? else {
        return Ok(seen);
    };
    let opened = match vault.get(&key, &a.path, archives::MAX_PLAINTEXT).await {
        Ok(o) => o,
        Err(OpenError::Store(e)) => return Err(e),
        Err(e) => {
            tracing::warn!(archive = %a.id, error = %e, "an archive that does not open was not redacted");
            return Ok(seen);
        }
    };
    let Ok(text) = String::from_utf8(opened.plaintext) else {
        tracing::warn!(archive = %a.id, "an archive that is not UTF-8 was not redacted");
        return Ok(seen);
    };
    seen.theirs = r.ids.iter().any(|id| text.contains(id));
    let names = r.names.filter(|(needle, _)| text.contains(needle));
    let names = if r.linked.contains(&a.workspace_id) || seen.theirs || theirs {
        names
    } else {
        seen.name_left = names.is_some();
        None
    };
    if !text.to_lowercase().contains(r.email_needle) && names.is_none() {
        return Ok(seen);
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let scrubbed = erasure::scrub_lines(
        conn,
        &lines,
        r.email_pattern,
        names.map(|(_, pattern)| pattern),
        r.pseudonym,
    )
    .await?;
    let mut plain = scrubbed.join("\n");
    plain.push('\n');
    drop(text);
    let path = redacted_path(&a.path);
    let sealed = vault.put(&key, &path, plain.into_bytes()).await?;
    rewrite_manifest(vault, &a.path, &sealed).await?;
    if erasure::repoint_archive(conn, a.id, &a.path, &sealed).await? {
        vault.delete(&a.path).await?;
        vault.delete(&archives::manifest_path(&a.path)).await?;
        seen.rewritten = true;
    } else {
        // Changed meanwhile (another erasure): theirs stands.
        vault.delete(&path).await?;
        vault.delete(&archives::manifest_path(&path)).await?;
    }
    Ok(seen)
}

/// A new path beside `path` for its redacted object: `{dir}/{archive}.r{random}` and the
/// same extension.
fn redacted_path(path: &str) -> String {
    let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
    let (stem, _) = file.split_once('.').unwrap_or((file, ""));
    let ext = ".ndjson.zst.enc";
    let name = format!("{stem}.r{}{ext}", Uuid::now_v7().simple());
    if dir.is_empty() {
        name
    } else {
        format!("{dir}/{name}")
    }
}

/// Writes the manifest file of the redacted object: the old one's, with the new object's
/// path, sizes and digests (none when the old one is missing).
async fn rewrite_manifest(vault: &Vault, old_path: &str, sealed: &Sealed) -> anyhow::Result<()> {
    let mut manifest: serde_json::Value =
        match vault.get_raw(&archives::manifest_path(old_path)).await {
            Ok(bytes) => serde_json::from_slice(&bytes)?,
            Err(OpenError::Missing) => return Ok(()),
            Err(e) => return Err(anyhow::anyhow!("reading a manifest: {e}")),
        };
    manifest["object"] = json!(sealed.path);
    manifest["plaintextBytes"] = json!(sealed.plaintext_bytes);
    manifest["objectBytes"] = json!(sealed.object_bytes);
    manifest["plaintextSha256"] = json!(sealed.plaintext_sha256);
    manifest["objectSha256"] = json!(sealed.object_sha256);
    vault
        .put_plain(
            &archives::manifest_path(&sealed.path),
            serde_json::to_vec_pretty(&manifest)?,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_json_forms() {
        assert_eq!(regex_literal("a.b+c@x.com"), "a\\.b\\+c\\@x\\.com");
        assert_eq!(regex_literal("Zoë O'Neil"), "Zoë\\ O\\'Neil");
        assert_eq!(json_escaped("a\"b\\c"), "a\\\"b\\\\c");
        assert_eq!(json_escaped("plain@x.com"), "plain@x.com");
    }
}
