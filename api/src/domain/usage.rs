//! Usage and limits: recording usage against the cascading caps of an organization's
//! path, setting caps, and computing what each organization may still use.
//!
//! Rules (see docs/features/organizations-and-usage.md): an allocation of n at X succeeds
//! only if, for X and every ancestor A with a cap, subtree(A) + n ≤ cap(A); a release never
//! takes X's own usage below zero; subtree(X) = direct(X) + Σ subtree(children of X) after
//! every commit.
//! Billing capacity (the workspace's subscription pools) joins the same check later as one
//! more cap on the path, and a workspace quota (`governance::quotas`) after the pools.

use std::sync::Arc;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use diesel_async::AsyncPgConnection;
use serde_json::json;
use uuid::Uuid;

use super::billing;
use super::mutation::{self, Effect};
use super::{Actor, DomainError, DomainResult, Role, Services};
use crate::db::models::{AuditEventRow, OrganizationRow, ResetPeriod, ResourceKind, ResourceRow};
use crate::db::repo::organizations::{self as orgs, RowLock};
use crate::db::repo::{self, usage};
use crate::ids::{IdMap, OrganizationId};

/// The window an allocated resource's counters live in (it never resets).
pub fn epoch() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH
}

/// Start of the current window of a resource of this kind and reset period.
pub fn current_period(
    kind: ResourceKind,
    reset: Option<ResetPeriod>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    match (kind, reset) {
        (ResourceKind::Metered, Some(ResetPeriod::Day)) => Utc
            .with_ymd_and_hms(now.year(), now.month(), now.day(), 0, 0, 0)
            .single()
            .unwrap_or(now),
        (ResourceKind::Metered, Some(ResetPeriod::Month)) => Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .unwrap_or(now),
        _ => epoch(),
    }
}

/// Every value `current_period` can take at `now`, whatever the resource.
pub fn current_periods(now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    crate::ids::distinct([
        current_period(ResourceKind::Allocated, None, now),
        current_period(ResourceKind::Metered, Some(ResetPeriod::Day), now),
        current_period(ResourceKind::Metered, Some(ResetPeriod::Month), now),
    ])
}

/// The current window of every resource in `resources`.
pub fn windows(
    resources: &[ResourceRow],
    now: DateTime<Utc>,
) -> Vec<(Uuid, String, DateTime<Utc>)> {
    resources
        .iter()
        .map(|r| {
            (
                r.workspace_id,
                r.key.clone(),
                current_period(r.kind, r.reset_period, now),
            )
        })
        .collect()
}

/// One organization's usage of one resource in its current window.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageEntry {
    /// The resource (shared by every entry of a page).
    pub resource: Arc<ResourceRow>,
    /// Start of the window (`None` for allocated resources).
    pub window_start: Option<DateTime<Utc>>,
    /// The organization's own usage.
    pub direct: i64,
    /// Its own plus its descendants'.
    pub subtree: i64,
    /// Its own cap.
    pub limit: Option<i64>,
    /// The most its subtree could reach now, under the tightest cap on its path.
    pub effective_limit: Option<i64>,
    /// How much more can be allocated here now.
    pub available: Option<i64>,
    /// Its subtree uses more than its own cap (a cap set below usage).
    pub over_limit: bool,
}

/// Current numbers of one (organization, resource).
#[derive(Debug, Clone, Copy, Default)]
pub struct Numbers {
    /// Own usage.
    pub direct: i64,
    /// Subtree usage.
    pub subtree: i64,
    /// Cap.
    pub limit: Option<i64>,
}

/// Room a cap leaves on a path: `min(cap(A) − subtree(A))` over the capped nodes.
pub fn room<'a>(path: impl IntoIterator<Item = &'a Numbers>) -> Option<i64> {
    path.into_iter()
        .filter_map(|n| n.limit.map(|l| l - n.subtree))
        .min()
}

/// The resources of the workspaces being read, with their current windows, and the current
/// numbers of the organizations being read, by (organization, index of the resource).
pub struct UsageView {
    resources: Vec<(Arc<ResourceRow>, DateTime<Utc>)>,
    numbers: IdMap<(Uuid, usize), Numbers>,
    pools: Pools,
}

/// The billing pools of the workspaces being read (those whose billing is active).
#[derive(Default)]
pub struct Pools {
    /// Root organization → its pool (`None`: unassigned, in an ASSIGNED workspace).
    roots: IdMap<Uuid, Option<Uuid>>,
    /// (pool, resource) → room left (capacity − usage).
    room: std::collections::HashMap<(Uuid, String), i64>,
}

impl Pools {
    /// Indexes the rows of `billing::pool_views`.
    pub fn new(rows: Vec<repo::billing::PoolViewRow>) -> Self {
        let mut pools = Pools::default();
        for r in rows {
            match (r.root_id, r.resource) {
                (Some(root), _) => {
                    pools.roots.insert(root, r.pool_id);
                }
                (None, Some(resource)) => {
                    if let Some(pool) = r.pool_id {
                        pools.room.insert((pool, resource), r.capacity - r.used);
                    }
                }
                (None, None) => {}
            }
        }
        pools
    }

    /// The room the pool of `org` leaves for `resource`: `None` when billing does not limit
    /// it (no active account, or not a pooled resource).
    fn room(&self, org: &OrganizationRow, resource: &str) -> Option<i64> {
        if !billing::catalog::is_pooled(resource) {
            return None;
        }
        let root = org.ancestors.first().copied().unwrap_or(org.id);
        match self.roots.get(&root)? {
            None => Some(0),
            Some(pool) => Some(
                self.room
                    .get(&(*pool, resource.to_string()))
                    .copied()
                    .unwrap_or(0),
            ),
        }
    }
}

impl UsageView {
    /// Indexes `rows` (counters and caps) by resource position; rows of a past window or an
    /// unknown resource are left out.
    pub fn new(
        resources: Vec<ResourceRow>,
        now: DateTime<Utc>,
        rows: Vec<usage::UsageRow>,
        pools: Pools,
    ) -> Self {
        let resources: Vec<(Arc<ResourceRow>, DateTime<Utc>)> = resources
            .into_iter()
            .map(|r| {
                let window = current_period(r.kind, r.reset_period, now);
                (Arc::new(r), window)
            })
            .collect();
        let index: IdMap<(Uuid, &str), usize> = resources
            .iter()
            .enumerate()
            .map(|(i, (r, _))| ((r.workspace_id, r.key.as_str()), i))
            .collect();
        let mut numbers: IdMap<(Uuid, usize), Numbers> =
            IdMap::with_capacity_and_hasher(rows.len(), Default::default());
        for r in rows {
            let Some(&i) = index.get(&(r.workspace_id, r.resource.as_str())) else {
                continue;
            };
            match r.period_start {
                Some(p) if p != resources[i].1 => {}
                Some(_) => {
                    let n = numbers.entry((r.organization_id, i)).or_default();
                    n.direct = r.direct;
                    n.subtree = r.subtree;
                }
                None => numbers.entry((r.organization_id, i)).or_default().limit = r.limit,
            }
        }
        Self {
            resources,
            numbers,
            pools,
        }
    }

    /// The usage entries of `org` (whose path is its ancestors then itself).
    pub fn entries(&self, org: &OrganizationRow) -> Vec<UsageEntry> {
        self.resources
            .iter()
            .enumerate()
            .filter(|(_, (r, _))| r.workspace_id == org.workspace_id)
            .map(|(i, (r, window))| {
                let get = |id: &Uuid| self.numbers.get(&(*id, i)).copied().unwrap_or_default();
                let own = get(&org.id);
                let available = org
                    .ancestors
                    .iter()
                    .map(get)
                    .chain(std::iter::once(own))
                    .filter_map(|n| n.limit.map(|l| l - n.subtree))
                    .chain(self.pools.room(org, &r.key))
                    .min()
                    .map(|r| r.max(0));
                UsageEntry {
                    resource: r.clone(),
                    window_start: (*window != epoch()).then_some(*window),
                    direct: own.direct,
                    subtree: own.subtree,
                    limit: own.limit,
                    effective_limit: available.map(|a| own.subtree + a),
                    available,
                    over_limit: own.limit.is_some_and(|l| own.subtree > l),
                }
            })
            .collect()
    }
}

// Organizations are the usage loader's keys (the loader needs their paths).
impl Eq for OrganizationRow {}

impl std::hash::Hash for OrganizationRow {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
        self.ancestors.hash(state);
    }
}

/// Usage entries of several organizations: two statements, whatever their number.
pub async fn load_entries(
    services: &Services,
    orgs: &[OrganizationRow],
) -> DomainResult<IdMap<Uuid, Vec<UsageEntry>>> {
    let conn = services.conn().await?;
    load_entries_on(&conn, orgs).await
}

/// `load_entries` on a connection the caller may be pipelining other statements on.
pub async fn load_entries_on(
    conn: &AsyncPgConnection,
    orgs: &[OrganizationRow],
) -> DomainResult<IdMap<Uuid, Vec<UsageEntry>>> {
    let view = load_view(conn, orgs).await?;
    Ok(orgs.iter().map(|o| (o.id, view.entries(o))).collect())
}

/// The resources and current numbers needed for the usage entries of `orgs`, on a given
/// connection: two statements, whatever their number. They do not wait for each other (they
/// are pipelined): the counters are read for every window a resource can be in now, and
/// the view keeps each resource's own.
pub async fn load_view(
    conn: &AsyncPgConnection,
    orgs: &[OrganizationRow],
) -> DomainResult<UsageView> {
    let ws = crate::ids::distinct(orgs.iter().map(|o| o.workspace_id));
    let ids = crate::ids::distinct(
        orgs.iter()
            .flat_map(|o| o.ancestors.iter().copied().chain([o.id])),
    );
    let now = Utc::now();
    let periods = current_periods(now);
    let (resources, rows, pools) = futures::try_join!(
        repo::resources::for_workspaces(conn, &ws),
        usage::current(conn, &ids, &periods),
        repo::billing::pool_views(conn, &ws, billing::pools::window()),
    )?;
    Ok(UsageView::new(resources, now, rows, Pools::new(pools)))
}

/// One history asked for: an organization, a resource, how many windows.
pub type HistoryKey = (Uuid, String, i64);

/// Past and current windows of several organizations' usage of resources, newest first,
/// by key, in one statement.
pub async fn histories(
    services: &Services,
    keys: &[HistoryKey],
) -> DomainResult<Vec<(HistoryKey, Vec<usage::WindowRow>)>> {
    let mut conn = services.conn().await?;
    let orgs: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    let resources: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let limits: Vec<i64> = keys.iter().map(|k| k.2).collect();
    let rows = usage::windows_many(&mut conn, &orgs, &resources, &limits).await?;
    let mut out: Vec<(HistoryKey, Vec<usage::WindowRow>)> =
        keys.iter().map(|k| (k.clone(), Vec::new())).collect();
    for row in rows {
        if let Some((_, windows)) = usize::try_from(row.key).ok().and_then(|i| out.get_mut(i)) {
            windows.push(row.window);
        }
    }
    Ok(out)
}

/// Checks the caller may change usage or caps of the organization it reads.
async fn require_manager(access: &orgs::Access, actor: &Actor, what: &str) -> DomainResult<Role> {
    let role = access.role.as_deref().and_then(Role::parse);
    if role.is_some() {
        actor.admit(access.org.workspace_id).await?;
    }
    match role {
        None => Err(DomainError::NotFound("organization")),
        Some(r) if r.is_manager() => Ok(r),
        Some(r) => Err(DomainError::Forbidden(format!(
            "your role {} may not {what}",
            r.as_str()
        ))),
    }
}

/// Checks a resource key's shape.
pub fn check_resource_key(key: &str) -> DomainResult<()> {
    let ok = (1..=40).contains(&key.len())
        && key.starts_with(|c: char| c.is_ascii_lowercase())
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(DomainError::bad_input(
            "resource",
            format!(
                "`{}` is not a resource key (lower-case letters, digits and _, starting with a letter, at most 40)",
                super::excerpt(key)
            ),
        ))
    }
}

fn unknown_resource(key: &str) -> DomainError {
    DomainError::bad_input(
        "resource",
        format!("this workspace has no resource `{}`", super::excerpt(key)),
    )
}

/// The largest count a usage counter holds: GraphQL's `Int` is 32 bits, and every count is
/// shown as one. An allocation that would pass it is refused like one over a cap.
pub const MAX_COUNT: i64 = i32::MAX as i64;

/// Input of `record`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UsageChange {
    /// Organization.
    pub organization_id: OrganizationId,
    /// Resource key.
    pub resource: String,
    /// Positive allocates, negative releases.
    pub delta: i64,
}

/// Records usage at an organization, all or nothing (owners and admins).
pub async fn record(
    services: &Services,
    actor: &Actor,
    input: UsageChange,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<OrganizationRow>> {
    check_resource_key(&input.resource)?;
    if input.delta == 0 {
        return Err(DomainError::bad_input("delta", "delta must not be zero"));
    }
    // The hot path: the key claim rides on the statement that reads the organization.
    mutation::run_claiming_in_effect(
        services,
        actor,
        "recordUsage",
        key,
        &input,
        |c, d| -> Effect<'_, _> {
            Box::pin(record_effect(
                c,
                d,
                input.clone(),
                actor.clone(),
                services.governance.clone(),
            ))
        },
    )
    .await
}

/// The effect of `recordUsage`, in the mutation's transaction.
async fn record_effect(
    conn: &mut AsyncPgConnection,
    done: &mutation::Completion,
    input: UsageChange,
    actor: Actor,
    governance: Arc<super::governance::Governance>,
) -> DomainResult<OrganizationRow> {
    let claim = done.key_claim().cloned();
    let found = orgs::access_claiming(
        conn,
        input.organization_id.0,
        actor.user_id.0,
        &input.resource,
        claim.as_ref(),
    )
    .await
    .map_err(mutation::map_lock_timeout)?;
    let (a, pool) = match found {
        Some(f) if f.claimed || claim.is_none() => {
            let mode = crate::domain::BillingMode::parse(&f.billing_mode)
                .ok_or_else(|| DomainError::internal(anyhow::anyhow!("bad billing mode")))?;
            let pool = billing::pools::pool_of(
                f.access.org.workspace_id,
                mode,
                f.billing_active,
                f.root_account,
            );
            (f.access, pool)
        }
        // The key was used before: replay the first result (or refuse a reuse).
        Some(_) => return done.replay(conn).await,
        // Missing organization: a key that holds a committed result still replays it.
        None if claim.is_some() => {
            return match done.replay::<OrganizationRow>(conn).await {
                Err(DomainError::IdempotencyKeyInUse) | Err(DomainError::Internal(_)) => {
                    Err(DomainError::NotFound("organization"))
                }
                other => other,
            };
        }
        None => return Err(DomainError::NotFound("organization")),
    };
    require_manager(&a, &actor, "record usage").await?;
    let kind = a
        .resource_kind
        .ok_or_else(|| unknown_resource(&input.resource))?;
    let period = current_period(kind, a.resource_reset, Utc::now());
    let org = a.org;
    // Whether a workspace quota applies: from the settings cache, no statement while cached.
    let quota =
        super::governance::quotas::watched(&governance, org.workspace_id, &input.resource).await?;
    // The result is known now: the statement that applies the change also stores it
    // under the idempotency key, so that it is the only one holding the path's locks
    // before COMMIT.
    let completion = done.hand_over(&org)?;
    let path: Vec<Uuid> = org.ancestors.iter().copied().chain([org.id]).collect();
    let audit = AuditEventRow {
        workspace_id: org.workspace_id,
        id: crate::ids::AuditEventId::new().0,
        actor_id: Some(actor.user_id.0),
        action: "usage.record".into(),
        target_type: "Organization".into(),
        target_id: OrganizationId(org.id).encode(),
        summary: json!({"resource": input.resource, "delta": input.delta, "windowStart": (period != epoch()).then_some(period)}),
        request_id: Some(actor.request_id.clone()),
        created_at: Utc::now(),
    };
    let application = usage::Application {
        workspace_id: org.workspace_id,
        organization_id: org.id,
        path: &path,
        resource: &input.resource,
        period,
        delta: input.delta,
        event_id: Uuid::now_v7(),
        audit: &audit,
        completion: completion
            .as_ref()
            .map(|(caller, key, value)| (*caller, *key, value)),
    };
    let applied = usage::check_and_apply(conn, &application).await?;
    if applied.len() == path.len() {
        // A statement only when an allocation crosses 80 % or 100 % of a cap.
        super::notifications::quota::after_allocation(
            conn,
            org.workspace_id,
            &input.resource,
            period,
            input.delta,
            &applied,
        )
        .await?;
        // The billing pool last: its row is the hottest lock of the allocation.
        if billing::catalog::is_pooled(&input.resource) {
            match pool {
                billing::pools::PoolOf::Unbilled => {}
                billing::pools::PoolOf::Unassigned if input.delta > 0 => {
                    return Err(billing::pools::unassigned());
                }
                billing::pools::PoolOf::Unassigned => {}
                billing::pools::PoolOf::Pool(p) => {
                    billing::pools::apply(conn, org.workspace_id, p, &input.resource, input.delta)
                        .await?;
                }
            }
        }
        // The workspace's quota after the pools: its counter is the workspace-wide row.
        if quota {
            super::governance::quotas::charge(
                conn,
                org.workspace_id,
                &input.resource,
                period,
                input.delta,
            )
            .await?;
        }
        return Ok(org);
    }
    let applied: Vec<Uuid> = applied.iter().map(|a| a.organization_id).collect();
    Err(refusal(conn, &org, &path, &applied, &input, period).await)
}

/// Explains a refused change: the nearest organization on the path whose counter was not
/// changed, with its numbers.
async fn refusal(
    conn: &mut diesel_async::AsyncPgConnection,
    org: &OrganizationRow,
    path: &[Uuid],
    applied: &[Uuid],
    input: &UsageChange,
    period: DateTime<Utc>,
) -> DomainError {
    let Some(&blocker) = path.iter().rev().find(|id| !applied.contains(id)) else {
        return DomainError::internal(anyhow::anyhow!("refused change without a blocker"));
    };
    let numbers = match usage::counter(conn, blocker, &input.resource, period).await {
        Ok(n) => n,
        Err(e) => return e.into(),
    };
    let (direct, subtree, limit) = numbers
        .map(|n| (n.direct, n.subtree, n.limit))
        .unwrap_or((0, 0, None));
    if input.delta < 0 {
        return DomainError::Conflict(format!(
            "cannot release {} {}: organization {} has only {direct} allocated",
            -input.delta,
            input.resource,
            OrganizationId(org.id)
        ));
    }
    let name = match orgs::find_many(conn, &[blocker]).await {
        Ok(rows) => rows.into_iter().next().map(|o| o.name).unwrap_or_default(),
        Err(e) => return e.into(),
    };
    // Without a cap, what binds is the largest count a counter holds.
    let limit = limit.unwrap_or(MAX_COUNT).min(MAX_COUNT);
    DomainError::LimitBreached {
        message: format!(
            "allocating {} {} at organization {} would exceed the limit of organization {} (\"{name}\"): {subtree} of {limit} in use",
            input.delta,
            input.resource,
            OrganizationId(org.id),
            OrganizationId(blocker),
        ),
        organization_id: OrganizationId(blocker).encode(),
        limit,
        used: subtree,
        requested: input.delta,
    }
}

/// Input of `set_limit`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LimitChange {
    /// Organization.
    pub organization_id: OrganizationId,
    /// Resource key.
    pub resource: String,
    /// New cap; `None` removes it (the organization inherits).
    pub limit: Option<i64>,
}

/// Sets or removes an organization's cap on a resource (owners and admins). A positive cap
/// may not exceed what the organization inherits (the tightest cap of its ancestors); a cap
/// below current usage is accepted and blocks new allocations until usage falls below it.
pub async fn set_limit(
    services: &Services,
    actor: &Actor,
    input: LimitChange,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<OrganizationRow>> {
    check_resource_key(&input.resource)?;
    if input.limit.is_some_and(|l| l < 0) {
        return Err(DomainError::bad_input(
            "limit",
            "limit must be zero or positive (null removes it)",
        ));
    }
    mutation::run(
        services,
        actor,
        "setOrganizationLimit",
        key,
        &input,
        |c, _| -> Effect<'_, _> { Box::pin(set_limit_effect(c, input.clone(), actor.clone())) },
    )
    .await
}

/// The effect of `setOrganizationLimit`, in the mutation's transaction.
async fn set_limit_effect(
    conn: &mut AsyncPgConnection,
    input: LimitChange,
    actor: Actor,
) -> DomainResult<OrganizationRow> {
    let a = orgs::access(
        conn,
        input.organization_id.0,
        actor.user_id.0,
        Some(&input.resource),
        RowLock::KeyShare,
    )
    .await?
    .ok_or(DomainError::NotFound("organization"))?;
    require_manager(&a, &actor, "set limits").await?;
    let kind = a
        .resource_kind
        .ok_or_else(|| unknown_resource(&input.resource))?;
    let period = current_period(kind, a.resource_reset, Utc::now());
    let org = a.org;
    let mut path: Vec<Uuid> = org.ancestors.iter().copied().chain([org.id]).collect();
    path.sort_unstable();
    // Locks the path's counters: allocations and other cap changes on it wait.
    let counters =
        usage::lock_counters(conn, org.workspace_id, &path, &input.resource, period).await?;
    let before = counters
        .iter()
        .find(|c| c.organization_id == org.id)
        .and_then(|c| c.limit);
    if let Some(limit) = input.limit.filter(|l| *l > 0) {
        let inherited = counters
            .iter()
            .filter(|c| c.organization_id != org.id)
            .filter_map(|c| c.limit.map(|l| (l, c.organization_id)))
            .min();
        if let Some((cap, from)) = inherited.filter(|(cap, _)| limit > *cap) {
            return Err(DomainError::bad_input(
                "limit",
                format!(
                    "limit {limit} exceeds the capacity of {cap} {} that organization {} inherits from organization {}",
                    input.resource,
                    OrganizationId(org.id),
                    OrganizationId(from)
                ),
            ));
        }
    }
    usage::set_limit(
        conn,
        org.workspace_id,
        org.id,
        &input.resource,
        period,
        input.limit,
    )
    .await?;
    super::audit::record(
        conn,
        super::audit::Change {
            workspace: crate::ids::WorkspaceId(org.workspace_id),
            action: "limit.set",
            target_type: "Organization",
            target_id: OrganizationId(org.id).encode(),
            summary: json!({"resource": input.resource, "before": before, "after": input.limit}),
            actor: &actor,
        },
    )
    .await?;
    Ok(org)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::db::row::Timestamp;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 30, 15)
            .single()
            .expect("valid time")
    }

    #[test]
    fn windows_start_at_utc_midnight_or_the_first_of_the_month() {
        let now = at(2026, 11, 29, 23);
        assert_eq!(current_period(ResourceKind::Allocated, None, now), epoch());
        let day = current_period(ResourceKind::Metered, Some(ResetPeriod::Day), now);
        assert_eq!(day, Utc.with_ymd_and_hms(2026, 11, 29, 0, 0, 0).unwrap());
        let month = current_period(ResourceKind::Metered, Some(ResetPeriod::Month), now);
        assert_eq!(month, Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap());
        // An allocated resource never resets, whatever a stray period says.
        assert_eq!(
            current_period(ResourceKind::Allocated, Some(ResetPeriod::Day), now),
            epoch()
        );
        assert_eq!(current_periods(now).len(), 3);
    }

    #[test]
    fn room_is_the_tightest_cap_minus_its_subtree() {
        let n = |subtree, limit| Numbers {
            direct: 0,
            subtree,
            limit,
        };
        assert_eq!(room(&[n(5, None), n(1, None)]), None);
        assert_eq!(room(&[n(6, Some(10)), n(5, None), n(2, Some(8))]), Some(4));
        // A cap set below usage leaves negative room (the view shows 0).
        assert_eq!(room(&[n(5, Some(3))]), Some(-2));
    }

    fn resource(
        ws: Uuid,
        key: &str,
        kind: ResourceKind,
        reset: Option<ResetPeriod>,
    ) -> ResourceRow {
        ResourceRow {
            workspace_id: ws,
            key: key.into(),
            name: key.into(),
            unit: "units".into(),
            kind,
            reset_period: reset,
            built_in: false,
            created_at: epoch(),
        }
    }

    fn org(ws: Uuid, id: Uuid, ancestors: Vec<Uuid>) -> OrganizationRow {
        OrganizationRow {
            id,
            workspace_id: ws,
            parent_id: ancestors.last().copied(),
            name: "o".into(),
            depth: ancestors.len() as i16,
            ancestors,
            created_at: Timestamp::from_datetime(epoch()),
        }
    }

    fn row(
        ws: Uuid,
        o: Uuid,
        key: &str,
        period: Option<DateTime<Utc>>,
        direct: i64,
        subtree: i64,
        limit: Option<i64>,
    ) -> usage::UsageRow {
        usage::UsageRow {
            workspace_id: ws,
            organization_id: o,
            resource: key.into(),
            period_start: period,
            direct,
            subtree,
            limit,
        }
    }

    #[test]
    fn usage_entries_cascade_the_tightest_cap_and_keep_the_current_window() {
        let (ws, root, mid, leaf) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let now = at(2026, 11, 29, 12);
        let today = current_period(ResourceKind::Metered, Some(ResetPeriod::Day), now);
        let yesterday = today - chrono::Duration::days(1);
        let resources = vec![
            resource(ws, "users", ResourceKind::Allocated, None),
            resource(ws, "calls", ResourceKind::Metered, Some(ResetPeriod::Day)),
        ];
        let allocated = Some(epoch());
        let rows = vec![
            // users: root cap 10 (6 used), mid uncapped (5), leaf cap 8 (2 own).
            row(ws, root, "users", allocated, 1, 6, None),
            row(ws, root, "users", None, 0, 0, Some(10)),
            row(ws, mid, "users", allocated, 3, 5, None),
            row(ws, leaf, "users", allocated, 2, 2, None),
            row(ws, leaf, "users", None, 0, 0, Some(8)),
            // calls: yesterday's counter is not today's; mid's cap sits below its usage.
            row(ws, leaf, "calls", Some(yesterday), 50, 50, None),
            row(ws, leaf, "calls", Some(today), 4, 4, None),
            row(ws, mid, "calls", Some(today), 0, 9, None),
            row(ws, mid, "calls", None, 0, 0, Some(7)),
            // A resource the workspace does not have is left out.
            row(ws, leaf, "ghost", allocated, 1, 1, None),
        ];
        let view = UsageView::new(resources, now, rows, Pools::default());
        let entries = view.entries(&org(ws, leaf, vec![root, mid]));
        assert_eq!(entries.len(), 2);
        let users = &entries[0];
        assert_eq!(users.resource.key, "users");
        assert_eq!((users.direct, users.subtree, users.limit), (2, 2, Some(8)));
        // min(10 − 6, 8 − 2) = 4 more fit; the leaf could reach 2 + 4.
        assert_eq!(users.available, Some(4));
        assert_eq!(users.effective_limit, Some(6));
        assert!(!users.over_limit);
        assert_eq!(users.window_start, None);
        let calls = &entries[1];
        assert_eq!((calls.direct, calls.subtree), (4, 4));
        assert_eq!(calls.window_start, Some(today));
        // mid's cap of 7 is already passed (9): nothing more fits below it.
        assert_eq!(calls.available, Some(0));
        assert_eq!(calls.effective_limit, Some(4));
        let mid_calls = &view.entries(&org(ws, mid, vec![root]))[1];
        assert!(mid_calls.over_limit);
        // Another workspace's organization sees none of these resources.
        assert!(view.entries(&org(Uuid::now_v7(), leaf, vec![])).is_empty());
    }
}
