//! Workspace quotas (`ResourceQuotas`): limits on the workspace as a whole, on top of the
//! organizations' own caps and the billing pools.
//!
//! A quota is keyed by `resource`, one of:
//! - **a resource key of the workspace** (a built-in such as `users`, or a custom resource,
//!   `defineResource`): the workspace's total usage, the sum of its root organizations'
//!   subtree counters, may not pass the quota. An allocated resource has no window; a
//!   metered one counts per window, the same windows as the organizations' counters (the
//!   UTC day or month of its reset period, `usage::current_period`), so a metered quota is
//!   "per day" or "per month" as its resource is.
//! - **`members`**: the most members the workspace may have, people only: pending
//!   invitations count, the service-account users of API keys (`users.service_account`) do
//!   not. `addMember` enforces it ([`check_members`]).
//! - **`api_requests_per_minute`**: the workspace's rate limit. It is the same setting as
//!   `SecuritySettings.rateLimitPerMinute` (`workspace_settings.rate_limit_per_minute`, one
//!   source of truth): changing either changes both, and the gate enforces it on every
//!   request (`rate_limit`). Its usage is what the current rate limit window has handed out
//!   to the workspace's processes (leased, a little ahead of the requests actually served).
//!
//! These two keys keep their special meaning even if a workspace defines custom resources
//! with the same names (such resources cannot be given a quota of their own).
//!
//! The seed's quotas map onto these keys:
//! | seed | quota key |
//! |---|---|
//! | maximum users | `members` |
//! | API requests per minute | `api_requests_per_minute` |
//! | workflows | a custom allocated resource, e.g. `workflows` |
//! | executions per day | a custom metered resource with a DAY reset, e.g. `executions` |
//! | storage | a custom allocated resource, e.g. `storage_gb` |
//! | compute units | a custom metered resource, e.g. `compute_units` (MONTH) |
//! | concurrent connections | a custom allocated resource, e.g. `connections` (allocated on connect, released on disconnect) |
//!
//! `updateQuotas` (owners) sets and removes quotas, idempotent and audited (`quota.update`,
//! before and after per resource). A quota may be set below current usage: the status is
//! then `EXCEEDED` and every further increase is refused until usage falls below it.
//! Changing `api_requests_per_minute` is a security setting: it is held for approval when
//! the workspace lists `CHANGE_SECURITY_SETTINGS` ([`execute_approved`] runs it once
//! approved).
//!
//! ## Enforcement
//! `recordUsage` changes the organizations' counters, then the billing pool's, then (the
//! global lock order: the workspace's counter is its hottest row) the quota's counter
//! `quota_counters (workspace, resource, window)` ([`charge`]): one conditional upsert under
//! the counter's row lock, refused when `used + amount > quota`, so concurrent allocations
//! from any number of processes never pass the quota; releases decrement it. A refusal rolls
//! the whole allocation back (`LIMIT_EXCEEDED` with `resource`, `quota`, `used`,
//! `requested`). The counter of a window is created by the first allocation under the quota
//! in it, from the roots' counters (which already hold that allocation): concurrent first
//! allocations queue on the new row and add to it, so the count is exact from the start.
//! Setting a quota on a key that had none (and removing one) drops its old counters, so it
//! is counted afresh. An increase that takes the counter to 80 % or 100 % of the quota
//! notifies the workspace (`quota.warning`, `quota.reached`, once per window and threshold:
//! `notifications::quota::after_workspace_allocation`), from the counter's new value that
//! the upsert returns.
//!
//! Cost: which resources of a workspace have quotas is cached with its settings
//! (`Governance::enforced`, `GOVERNANCE_CACHE_MS`; read once per cache entry, on the first
//! allocation that needs it). An allocation of a resource without a quota costs no statement
//! more; one with a quota costs one (and one more when it crosses a warning threshold). The upsert reads the quota itself, so a quota removed or
//! changed by another process applies at once; only a quota on a key that had none reaches
//! another process up to `GOVERNANCE_CACHE_MS` late (this process forgets its cache on
//! change). Allocations by a process that has not seen a new quota yet are neither checked
//! nor counted against it; setting the quota again after removing it recounts it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use serde_json::{Value, json};
use uuid::Uuid;

use super::Governance;
use super::approvals::ApprovalRow;
use super::owner_change;
use crate::db::models::{ResetPeriod, ResourceKind};
use crate::db::repo::governance as settings_repo;
use crate::db::repo::quotas as repo;
use crate::domain::audit::{self, Change};
use crate::domain::mutation::{self, Effect};
use crate::domain::usage::{MAX_COUNT, current_period, epoch};
use crate::domain::{Actor, DomainError, DomainResult, Services, excerpt};
use crate::ids::{ApprovalRequestId, WorkspaceId};

/// The quota key of the most members (people) a workspace may have.
pub const MEMBERS: &str = "members";
/// The quota key of the workspace's rate limit (requests per minute).
pub const API_REQUESTS_PER_MINUTE: &str = "api_requests_per_minute";
/// Entries of one `updateQuotas`, at most.
pub const MAX_ENTRIES: usize = 50;
/// Usage at or above this percentage of a quota is a `WARNING`.
pub const WARNING_PERCENT: i64 = 80;
/// The largest rate limit (as `SecuritySettings.rateLimitPerMinute`).
pub const MAX_RATE_LIMIT: i64 = 1_000_000;

/// Whether `key` is one of the special quota keys (not a resource).
pub fn is_special(key: &str) -> bool {
    key == MEMBERS || key == API_REQUESTS_PER_MINUTE
}

/// A quota: the most the workspace as a whole may use of `resource`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quota {
    /// Resource key, `members` or `api_requests_per_minute`.
    pub resource: String,
    /// The limit.
    pub limit: i64,
}

/// Where a quota's usage stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum QuotaState {
    /// Below 80 % of the quota.
    Ok,
    /// At least 80 % of the quota, below it.
    Warning,
    /// At (or past) the quota: nothing more fits.
    Exceeded,
}

/// The percentage of `limit` that `usage` is (0 when both are 0; 100 for any usage of a
/// zero quota), rounded to two decimals, and its state: `EXCEEDED` when usage ≥ limit,
/// `WARNING` when usage ≥ 80 % of limit, else `OK`.
pub fn state(usage: i64, limit: i64) -> (f64, QuotaState) {
    let percentage = if limit > 0 {
        (usage as f64 * 10_000.0 / limit as f64).round() / 100.0
    } else if usage > 0 {
        100.0
    } else {
        0.0
    };
    let state = if usage >= limit {
        QuotaState::Exceeded
    } else if i128::from(usage) * 100 >= i128::from(limit) * i128::from(WARNING_PERCENT) {
        QuotaState::Warning
    } else {
        QuotaState::Ok
    };
    (percentage, state)
}

/// A quota with its usage now.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The quota's key.
    pub resource: String,
    /// Usage now (in the current window, for metered resources and the rate limit).
    pub usage: i64,
    /// The quota.
    pub limit: i64,
    /// `usage` as a percentage of the quota (see [`state`]).
    pub percentage: f64,
    /// OK, WARNING or EXCEEDED.
    pub state: QuotaState,
    /// Start of the current window (`None` for allocated resources and `members`).
    pub period_start: Option<DateTime<Utc>>,
}

/// Every quota of `ws`, sorted by key, in one statement (the caller has checked access).
pub async fn list(services: &Services, ws: Uuid) -> DomainResult<Vec<Quota>> {
    let mut conn = services.conn().await?;
    list_on(&mut conn, ws).await
}

async fn list_on(conn: &mut AsyncPgConnection, ws: Uuid) -> DomainResult<Vec<Quota>> {
    let mut quotas: Vec<Quota> = repo::list(conn, ws, API_REQUESTS_PER_MINUTE)
        .await?
        .into_iter()
        .map(|r| Quota {
            resource: r.resource,
            limit: r.quota,
        })
        .collect();
    quotas.sort_by(|a, b| a.resource.cmp(&b.resource));
    Ok(quotas)
}

/// Every quota of `ws` with its usage, sorted by key, in one statement whatever their
/// number. The caller has checked that the actor is an owner or admin of `ws`.
pub async fn status(services: &Services, ws: Uuid) -> DomainResult<Vec<Status>> {
    let now = Utc::now();
    let kinds = [
        (ResourceKind::Allocated, None),
        (ResourceKind::Metered, Some(ResetPeriod::Day)),
        (ResourceKind::Metered, Some(ResetPeriod::Month)),
    ];
    let windows: Vec<(&str, Option<&str>, DateTime<Utc>)> = kinds
        .iter()
        .map(|(k, r)| {
            (
                k.as_str(),
                r.map(|r| r.as_str()),
                current_period(*k, *r, now),
            )
        })
        .collect();
    let governance = &services.governance;
    let window_secs = governance.config.rate_window.as_secs().max(1) as i64;
    let secs = now.timestamp();
    let rate_window =
        DateTime::<Utc>::from_timestamp(secs - secs.rem_euclid(window_secs), 0).unwrap_or(now);
    let keys = repo::StatusKeys {
        members: MEMBERS,
        rate: API_REQUESTS_PER_MINUTE,
        rate_window,
        windows: &windows,
    };
    let mut conn = services.conn().await?;
    let rows = repo::status(&mut conn, ws, &keys).await?;
    drop(conn);
    let mut out: Vec<Status> = rows
        .into_iter()
        .map(|r| {
            // The rate limit counts in windows of RATE_LIMIT_WINDOW_SECS: its budget there.
            let budget = if r.resource == API_REQUESTS_PER_MINUTE {
                governance
                    .limiter
                    .budget(u32::try_from(r.quota).unwrap_or(u32::MAX))
            } else {
                r.quota
            };
            let (percentage, state) = state(r.used, budget);
            Status {
                period_start: r.period_start.filter(|p| *p != epoch()),
                usage: r.used,
                limit: r.quota,
                percentage,
                state,
                resource: r.resource,
            }
        })
        .collect();
    out.sort_by(|a, b| a.resource.cmp(&b.resource));
    Ok(out)
}

/// One entry of `updateQuotas`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuotaChange {
    /// Resource key, `members` or `api_requests_per_minute`.
    pub resource: String,
    /// The new quota; `None` removes it.
    pub limit: Option<i64>,
}

/// Input of [`update`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuotasChange {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// The changes, one per key.
    pub quotas: Vec<QuotaChange>,
}

impl QuotasChange {
    /// The change with every entry checked: 1 to [`MAX_ENTRIES`] entries, each key well
    /// formed and listed once, each limit zero or more (the rate limit 1 to
    /// [`MAX_RATE_LIMIT`]) and at most the largest count a counter holds.
    pub fn validated(self) -> DomainResult<Self> {
        if self.quotas.is_empty() {
            return Err(DomainError::bad_input(
                "quotas",
                "quotas must list at least one change",
            ));
        }
        if self.quotas.len() > MAX_ENTRIES {
            return Err(DomainError::bad_input(
                "quotas",
                format!(
                    "at most {MAX_ENTRIES} quotas can be changed at once (got {})",
                    self.quotas.len()
                ),
            ));
        }
        let mut seen = HashSet::new();
        for q in &self.quotas {
            if crate::domain::usage::check_resource_key(&q.resource).is_err() {
                return Err(DomainError::bad_input(
                    "resource",
                    format!(
                        "`{}` is not a quota key: a resource key (lower-case letters, digits and _, starting with a letter, at most 40), `{MEMBERS}` or `{API_REQUESTS_PER_MINUTE}`",
                        excerpt(&q.resource)
                    ),
                ));
            }
            if !seen.insert(q.resource.as_str()) {
                return Err(DomainError::bad_input(
                    "resource",
                    format!("`{}` is listed more than once", q.resource),
                ));
            }
            match q.limit {
                Some(l) if l < 0 => {
                    return Err(DomainError::bad_input(
                        "limit",
                        format!(
                            "the quota of `{}` must be zero or more (null removes it); got {l}",
                            q.resource
                        ),
                    ));
                }
                Some(l)
                    if q.resource == API_REQUESTS_PER_MINUTE
                        && !(1..=MAX_RATE_LIMIT).contains(&l) =>
                {
                    return Err(DomainError::bad_input(
                        "limit",
                        format!(
                            "`{API_REQUESTS_PER_MINUTE}` must be between 1 and {MAX_RATE_LIMIT} (null removes the rate limit); got {l}"
                        ),
                    ));
                }
                Some(l) if l > MAX_COUNT => {
                    return Err(DomainError::bad_input(
                        "limit",
                        format!(
                            "the quota of `{}` must be at most {MAX_COUNT}; got {l}",
                            q.resource
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(self)
    }

    fn touches_rate_limit(&self) -> bool {
        self.quotas
            .iter()
            .any(|q| q.resource == API_REQUESTS_PER_MINUTE)
    }
}

/// What `updateQuotas` did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Updated {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// Every quota of the workspace now.
    pub quotas: Vec<Quota>,
    /// When the change waits for approval: the request (nothing changed yet).
    pub approval: Option<ApprovalRow>,
}

/// Sets and removes quotas of a workspace (owners), idempotent and audited (`quota.update`).
/// A change of `api_requests_per_minute` is held for approval when the workspace lists
/// `CHANGE_SECURITY_SETTINGS`.
pub async fn update(
    services: &Services,
    actor: &Actor,
    change: QuotasChange,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<Updated>> {
    let change = change.validated()?;
    // The cached settings hold the quota keys and the rate limit: `run` forgets them.
    owner_change::run(
        services,
        actor,
        "updateQuotas",
        change.workspace_id,
        key,
        &change,
        |c, _| -> Effect<'_, _> { Box::pin(update_effect(c, actor.clone(), change.clone())) },
    )
    .await
}

async fn update_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    change: QuotasChange,
) -> DomainResult<Updated> {
    let ws = change.workspace_id;
    owner_change::lock_as_owner(conn, &actor, ws, "change quotas").await?;
    // Unknown keys are refused before anything is held for approval.
    check_keys(conn, ws.0, &change).await?;
    if change.touches_rate_limit()
        && let Some(held) =
            owner_change::hold_security_change(conn, &actor, ws, "updateQuotas", &change).await?
    {
        return Ok(Updated {
            workspace_id: ws,
            quotas: list_on(conn, ws.0).await?,
            approval: Some(held),
        });
    }
    apply(conn, &actor, &change, None).await
}

/// Refuses keys that are neither special nor a resource of `ws`, naming the first.
async fn check_keys(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    change: &QuotasChange,
) -> DomainResult<()> {
    let resources = crate::db::repo::resources::for_workspaces(conn, &[ws]).await?;
    let known: HashSet<&str> = resources.iter().map(|r| r.key.as_str()).collect();
    if let Some(q) = change
        .quotas
        .iter()
        .find(|q| !is_special(&q.resource) && !known.contains(q.resource.as_str()))
    {
        return Err(DomainError::bad_input(
            "resource",
            format!(
                "this workspace has no resource `{}` (a quota key is one of its resources, `{MEMBERS}` or `{API_REQUESTS_PER_MINUTE}`)",
                q.resource
            ),
        ));
    }
    Ok(())
}

/// Applies a checked change in the caller's transaction (the workspace is locked) and
/// audits it; `approval` is the request an approved change executes.
async fn apply(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    change: &QuotasChange,
    approval: Option<&ApprovalRow>,
) -> DomainResult<Updated> {
    let ws = change.workspace_id;
    let before: HashMap<String, i64> = list_on(conn, ws.0)
        .await?
        .into_iter()
        .map(|q| (q.resource, q.limit))
        .collect();
    let (mut set_keys, mut set_limits, mut removed, mut fresh) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut rate: Option<Option<i64>> = None;
    for q in &change.quotas {
        if q.resource == API_REQUESTS_PER_MINUTE {
            rate = Some(q.limit);
            continue;
        }
        let had = before.contains_key(&q.resource);
        match q.limit {
            Some(l) => {
                set_keys.push(q.resource.as_str());
                set_limits.push(l);
                if !had {
                    fresh.push(q.resource.as_str());
                }
            }
            None if had => {
                removed.push(q.resource.as_str());
                fresh.push(q.resource.as_str());
            }
            None => {}
        }
    }
    if !set_keys.is_empty() {
        repo::set_many(conn, ws.0, &set_keys, &set_limits).await?;
    }
    if !removed.is_empty() {
        repo::remove_many(conn, ws.0, &removed).await?;
    }
    if !fresh.is_empty() {
        // A new quota counts from the organizations' counters; a removed one leaves nothing.
        repo::reset_counters(conn, ws.0, &fresh).await?;
    }
    if let Some(limit) = rate {
        let mut row = owner_change::settings_for_update(conn, ws).await?;
        let limit = limit.map(|l| i32::try_from(l).unwrap_or(i32::MAX));
        if row.rate_limit_per_minute != limit {
            row.rate_limit_per_minute = limit;
            settings_repo::save_settings(conn, &row).await?;
        }
    }
    let changes: Vec<Value> = change
        .quotas
        .iter()
        .map(|q| {
            json!({
                "resource": q.resource,
                "before": before.get(&q.resource),
                "after": q.limit,
            })
        })
        .collect();
    let mut summary = json!({ "changes": changes });
    if let Some(r) = approval {
        summary["approvalRequestId"] = json!(ApprovalRequestId(r.id).encode());
    }
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "quota.update",
            target_type: "Workspace",
            target_id: ws.encode(),
            summary,
            actor,
        },
    )
    .await?;
    Ok(Updated {
        workspace_id: ws,
        quotas: list_on(conn, ws.0).await?,
        approval: None,
    })
}

/// Executes an approved `updateQuotas` in `conn`'s transaction (the approvals
/// dispatcher's) for `actor` (the requester with a system gate, who must still be an
/// owner): the stored change is checked again and applied to the quotas as they are now,
/// audited as `quota.update`.
///
/// The dispatcher must call `services.governance.forget(request.workspace_id)` after its
/// transaction commits, so that this process enforces the new rate limit at once.
pub(crate) async fn execute_approved(
    conn: &mut AsyncPgConnection,
    _services: &Services,
    request: &ApprovalRow,
    actor: &Actor,
) -> DomainResult<Value> {
    let change: QuotasChange =
        owner_change::stored_input(request, |c: &QuotasChange| c.workspace_id)?;
    let ws = change.workspace_id;
    let change = change.validated()?;
    owner_change::lock_as_owner(conn, actor, ws, "change quotas").await?;
    check_keys(conn, ws.0, &change).await?;
    let done = apply(conn, actor, &change, Some(request)).await?;
    Ok(json!({
        "workspaceId": ws.encode(),
        "quotas": done.quotas,
    }))
}

/// The quotas of `ws` by resource key, from the settings cache (read on the first need of
/// each cache entry: one statement on the governance pool).
pub async fn limits(governance: &Governance, ws: Uuid) -> DomainResult<Arc<HashMap<String, i64>>> {
    let e = governance.enforced(ws).await?;
    if let Some(q) = e.quotas.get() {
        return Ok(q.clone());
    }
    let mut conn = governance.conn().await?;
    let rows = repo::stored(&mut conn, ws).await?;
    drop(conn);
    let map: HashMap<String, i64> = rows.into_iter().map(|r| (r.resource, r.quota)).collect();
    Ok(e.quotas.get_or_init(|| Arc::new(map)).clone())
}

/// Whether allocations of `resource` in `ws` are to be charged to a quota ([`charge`]):
/// no statement while the settings are cached.
pub async fn watched(governance: &Governance, ws: Uuid, resource: &str) -> DomainResult<bool> {
    if is_special(resource) {
        return Ok(false);
    }
    Ok(limits(governance, ws).await?.contains_key(resource))
}

/// Charges an allocation (or release, `delta` < 0) of `resource` in window `period` to the
/// workspace's quota, in the allocation's transaction after the organizations' and pools'
/// counters changed: refuses (the caller rolls back) an increase past the quota. A quota
/// removed meanwhile is not charged. An increase that crosses 80 % or 100 % of the quota
/// records its notification (a statement only then).
pub async fn charge(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    resource: &str,
    period: DateTime<Utc>,
    delta: i64,
) -> DomainResult<()> {
    let c = repo::charge(conn, ws, resource, period, delta).await?;
    let Some(quota) = c.quota else {
        return Ok(());
    };
    if let Some(used) = c.used {
        // Charged: `used` is the counter's new value (an increase adds exactly `delta`, and
        // a new counter's count already holds it), so the thresholds crossed are known
        // without a statement; one runs only when one is crossed.
        return crate::domain::notifications::quota::after_workspace_allocation(
            conn, ws, resource, period, quota, used, delta,
        )
        .await;
    }
    // Refused: what the workspace uses without this allocation (the counter is locked).
    let used = match c.initial {
        Some(total) => total - delta,
        None => repo::counter(conn, ws, resource, period)
            .await?
            .unwrap_or_default(),
    };
    let window = if period == epoch() {
        String::new()
    } else {
        format!(
            " in the window since {}",
            period.format("%Y-%m-%d %H:%M UTC")
        )
    };
    Err(DomainError::QuotaExceeded {
        message: format!(
            "allocating {delta} {resource} would exceed the workspace's quota: {used} of {quota} in use{window}"
        ),
        resource: resource.to_string(),
        quota,
        used,
        requested: delta,
    })
}

/// Refuses a new member of `ws` when the workspace's `members` quota is reached (people
/// only). In `addMember`'s transaction, after the workspace's lock (which serializes
/// additions, so the quota holds exactly).
pub(crate) async fn check_members(conn: &mut AsyncPgConnection, ws: Uuid) -> DomainResult<()> {
    let Some((quota, people)) = repo::members_quota(conn, ws, MEMBERS).await? else {
        return Ok(());
    };
    if people >= quota {
        return Err(DomainError::QuotaExceeded {
            message: format!(
                "this workspace's quota of {quota} members is reached ({people} people, pending invitations included)"
            ),
            resource: MEMBERS.into(),
            quota,
            used: people,
            requested: 1,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_the_thresholds() {
        assert_eq!(state(0, 10), (0.0, QuotaState::Ok));
        assert_eq!(state(7, 10), (70.0, QuotaState::Ok));
        assert_eq!(state(8, 10), (80.0, QuotaState::Warning));
        assert_eq!(state(9, 10), (90.0, QuotaState::Warning));
        assert_eq!(state(10, 10), (100.0, QuotaState::Exceeded));
        assert_eq!(state(12, 10), (120.0, QuotaState::Exceeded));
        // 80 % of 3 is 2.4: 2 is OK, 3 is the quota.
        assert_eq!(state(2, 3).1, QuotaState::Ok);
        assert_eq!(state(2, 3).0, 66.67);
        // A zero quota admits nothing: it is always reached.
        assert_eq!(state(0, 0), (0.0, QuotaState::Exceeded));
        assert_eq!(state(5, 0), (100.0, QuotaState::Exceeded));
        // Large numbers do not overflow.
        assert_eq!(state(i64::MAX / 2, i64::MAX).1, QuotaState::Ok);
    }

    fn change(entries: &[(&str, Option<i64>)]) -> QuotasChange {
        QuotasChange {
            workspace_id: WorkspaceId(Uuid::nil()),
            quotas: entries
                .iter()
                .map(|(r, l)| QuotaChange {
                    resource: (*r).into(),
                    limit: *l,
                })
                .collect(),
        }
    }

    fn refused_field(c: QuotasChange) -> &'static str {
        match c.validated() {
            Err(DomainError::BadInput { field, .. }) => field,
            other => panic!("expected BAD_USER_INPUT, got {other:?}"),
        }
    }

    #[test]
    fn changes_are_checked() {
        assert!(
            change(&[("users", Some(5)), (MEMBERS, None)])
                .validated()
                .is_ok()
        );
        assert_eq!(refused_field(change(&[])), "quotas");
        let many: Vec<(String, Option<i64>)> = (0..=MAX_ENTRIES)
            .map(|i| (format!("r{i}"), Some(1)))
            .collect();
        let many: Vec<(&str, Option<i64>)> = many.iter().map(|(r, l)| (r.as_str(), *l)).collect();
        assert_eq!(refused_field(change(&many)), "quotas");
        assert_eq!(refused_field(change(&[("Users", Some(1))])), "resource");
        assert_eq!(
            refused_field(change(&[("users", Some(1)), ("users", None)])),
            "resource"
        );
        assert_eq!(refused_field(change(&[("users", Some(-1))])), "limit");
        assert_eq!(
            refused_field(change(&[(API_REQUESTS_PER_MINUTE, Some(0))])),
            "limit"
        );
        assert_eq!(
            refused_field(change(&[("users", Some(MAX_COUNT + 1))])),
            "limit"
        );
        assert!(
            change(&[(API_REQUESTS_PER_MINUTE, None)])
                .validated()
                .is_ok()
        );
        // A hostile key is quoted shortened.
        let long = "x".repeat(10_000);
        match change(&[(long.as_str(), Some(1))]).validated() {
            Err(DomainError::BadInput { message, .. }) => assert!(message.len() < 300),
            other => panic!("expected BAD_USER_INPUT, got {other:?}"),
        }
    }
}
