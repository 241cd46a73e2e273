//! Quota warnings: `quota.warning` when an allocation takes an organization's subtree usage
//! (or a billing pool's, or the workspace's under a workspace quota) to 80 % of its limit
//! (capacity, quota) or past it, `quota.reached` at 100 %.
//!
//! The allocation statement already returns every changed counter's new value and cap, so
//! the check costs nothing on the hot path: a statement runs only when a threshold is
//! crossed (before < threshold ≤ after). Counters change under their row locks, so exactly
//! one allocation sees each crossing; the dedupe key (organization or pool, resource,
//! window, limit, threshold) makes it once per window even when usage falls and rises
//! again. Metered resources' windows are their reset periods; allocated resources and pools
//! have no window of their own, so their warnings re-arm each calendar month (UTC). A new
//! limit re-arms them too.
//!
//! A workspace quota's warning ([`after_workspace_allocation`]) says so in its data
//! (`"scope": "workspace"`, `quota`, no `organizationId` or `pool`); its dedupe key is
//! `quota:ws:{resource}:{window}:{quota}:{percent}`. The quota's counter statement returns
//! its new value, so it costs no statement either unless a threshold is crossed.

use chrono::{DateTime, Datelike, Utc};
use diesel_async::AsyncPgConnection;
use serde_json::json;
use uuid::Uuid;

use super::{EventType, record};
use crate::db::repo::usage::Applied;
use crate::domain::DomainResult;
use crate::ids::{OrganizationId, WorkspaceId};

/// The thresholds, in percent, and the event of each.
const THRESHOLDS: [(i64, EventType); 2] = [
    (80, EventType::QuotaWarning),
    (100, EventType::QuotaReached),
];

/// The thresholds usage crossed going from `before` to `after` under `limit`.
pub fn crossed(before: i64, after: i64, limit: i64) -> impl Iterator<Item = (i64, EventType)> {
    THRESHOLDS.into_iter().filter(move |(pct, _)| {
        // before < pct % of limit ≤ after, in integers.
        let at = i128::from(limit) * i128::from(*pct);
        limit > 0 && i128::from(before) * 100 < at && at <= i128::from(after) * 100
    })
}

/// The window part of a dedupe key: a metered window's start, else the month of `now`.
fn window_key(window: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if window == crate::domain::usage::epoch() {
        format!("month:{:04}-{:02}", now.year(), now.month())
    } else {
        super::rfc3339(window)
    }
}

/// After an allocation of `delta` of `resource` in `window` changed the counters `applied`
/// (the organizations of the path, each with its new subtree usage and cap): notifies the
/// thresholds it crossed. In the allocation's transaction.
pub async fn after_allocation(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    resource: &str,
    window: DateTime<Utc>,
    delta: i64,
    applied: &[Applied],
) -> DomainResult<()> {
    if delta <= 0 {
        return Ok(());
    }
    for a in applied {
        let Some(limit) = a.limit else { continue };
        for (pct, kind) in crossed(a.subtree - delta, a.subtree, limit) {
            let name = crate::db::repo::organizations::find_many(conn, &[a.organization_id])
                .await?
                .into_iter()
                .next()
                .map(|o| o.name);
            let org = OrganizationId(a.organization_id).encode();
            let metered = window != crate::domain::usage::epoch();
            let data = json!({
                "workspaceId": WorkspaceId(ws).encode(),
                "organizationId": org,
                "organizationName": name,
                "resource": resource,
                "limit": limit,
                "used": a.subtree,
                "percent": pct,
                "windowStart": metered.then(|| super::rfc3339(window)),
            });
            let key = format!(
                "quota:{org}:{resource}:{}:{limit}:{pct}",
                window_key(window, Utc::now())
            );
            record(conn, ws, kind, data, Some(&key)).await?;
        }
    }
    Ok(())
}

/// After an allocation of `delta` of `resource` took billing pool `pool` (`ws_…` or `ba_…`)
/// to `used` of `capacity`: notifies the thresholds it crossed. In the allocation's
/// transaction.
pub async fn after_pool_allocation(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    pool: &str,
    resource: &str,
    capacity: i64,
    used: i64,
    delta: i64,
) -> DomainResult<()> {
    if delta <= 0 {
        return Ok(());
    }
    for (pct, kind) in crossed(used - delta, used, capacity) {
        let data = json!({
            "workspaceId": WorkspaceId(ws).encode(),
            "pool": pool,
            "resource": resource,
            "limit": capacity,
            "used": used,
            "percent": pct,
        });
        let key = format!(
            "pool:{pool}:{resource}:{}:{capacity}:{pct}",
            window_key(crate::domain::usage::epoch(), Utc::now())
        );
        record(conn, ws, kind, data, Some(&key)).await?;
    }
    Ok(())
}

/// After an allocation of `delta` of `resource` in `window` took the workspace's quota
/// counter to `used` of `quota` (the counter's new value, from the statement that changed
/// it under its row lock): notifies the thresholds it crossed. In the allocation's
/// transaction.
pub async fn after_workspace_allocation(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    resource: &str,
    window: DateTime<Utc>,
    quota: i64,
    used: i64,
    delta: i64,
) -> DomainResult<()> {
    if delta <= 0 {
        return Ok(());
    }
    for (pct, kind) in crossed(used.saturating_sub(delta), used, quota) {
        let metered = window != crate::domain::usage::epoch();
        let data = json!({
            "workspaceId": WorkspaceId(ws).encode(),
            "scope": "workspace",
            "resource": resource,
            "quota": quota,
            "limit": quota,
            "used": used,
            "percent": pct,
            "windowStart": metered.then(|| super::rfc3339(window)),
        });
        let key = format!(
            "quota:ws:{resource}:{}:{quota}:{pct}",
            window_key(window, Utc::now())
        );
        record(conn, ws, kind, data, Some(&key)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcts(before: i64, after: i64, limit: i64) -> Vec<i64> {
        crossed(before, after, limit).map(|(p, _)| p).collect()
    }

    #[test]
    fn thresholds_fire_when_crossed_not_while_above() {
        assert_eq!(pcts(7, 8, 10), vec![80]);
        assert_eq!(pcts(8, 9, 10), Vec::<i64>::new());
        assert_eq!(pcts(9, 10, 10), vec![100]);
        assert_eq!(pcts(0, 10, 10), vec![80, 100]);
        assert_eq!(pcts(10, 11, 10), Vec::<i64>::new());
        // 80 % of 3 is 2.4: the third unit crosses it, and the limit.
        assert_eq!(pcts(2, 3, 3), vec![80, 100]);
        assert_eq!(pcts(1, 2, 3), Vec::<i64>::new());
        // No limit to cross.
        assert_eq!(pcts(0, 5, 0), Vec::<i64>::new());
        // Large numbers do not overflow.
        assert_eq!(pcts(0, i64::MAX / 2, i64::MAX / 4), vec![80, 100]);
    }
}
