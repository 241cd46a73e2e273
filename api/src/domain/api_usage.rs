//! API usage counters: requests and errors per workspace, UTC day and operation, recorded by
//! the gateway and shown in `Workspace.analytics(period).apiUsage`.
//!
//! **Attribution.** A request belongs to the workspaces it names: the tenant ids in its
//! arguments and the variables they use (`ws_…`, and `org_…`, `mem_…`, `ba_…` for the
//! workspace that owns them; at most [`MAX_OWNERS`] distinct ids, in document order), of
//! which the caller is a member. The gateway reads the ids from the document
//! ([`crate::graphql::api_usage`]); membership and ownership are resolved when the counts are
//! flushed, in the flush statement itself, so recording costs no statement. A request
//! naming several ids of one workspace counts once for it; ids of workspaces the caller does
//! not belong to (or that are deleted) count for nothing, so nobody can write into another
//! tenant's numbers. A request naming no tenant id (`createWorkspace`, `viewer`, `job`) is
//! nobody's.
//!
//! **Operation.** The name of the operation executed, or its root fields (sorted, distinct,
//! comma-separated) when it has none, `(invalid)` when no operation could be chosen (a
//! syntax error, an unknown `operationName`); at most [`MAX_OPERATION_CHARS`] characters.
//! Past [`MAX_OPERATIONS_PER_DAY`] distinct operations per workspace and day the rest count
//! as `(other)` (in memory per caller and batch, and in the table per workspace and day;
//! two processes flushing at the same instant may each add up to the cap, so the table holds
//! at most processes × cap + 1 operations per workspace and day).
//!
//! **Errors** are requests whose response holds any error (a batch counts each operation).
//! Requests refused before execution (authentication, body limits) or stopped at the
//! deadline have no operation response and are not counted.
//!
//! **Cost and error bound.** Each process adds counts up in memory ([`ApiUsage::record`]: one
//! mutex, a few hash lookups) and a background task flushes them every
//! `API_USAGE_FLUSH_SECS` (10 s) with one upsert, as does the shutdown of `api serve`. A
//! crash loses at most the counts of one flush interval; a failed flush keeps its counts
//! for the next one. At most [`MAX_PENDING`] counters wait between two flushes (bounding
//! memory whatever the ids a client invents); past that, requests are dropped from the
//! counts and the flush logs how many.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::NaiveDate;
use uuid::Uuid;

use crate::db::DbPool;
use crate::db::repo::api_usage as repo;
use crate::ids::{BillingAccountId, MemberId, OrganizationId, WorkspaceId};

/// Longest operation key kept (longer ones are cut).
pub const MAX_OPERATION_CHARS: usize = 100;
/// Distinct operations kept per workspace and UTC day; the rest count as [`OTHER`].
pub const MAX_OPERATIONS_PER_DAY: usize = 200;
/// Distinct tenant ids of one request that count.
pub const MAX_OWNERS: usize = 4;
/// Counters (caller, ids, day, operation) held between two flushes.
pub const MAX_PENDING: usize = 100_000;
/// The operation of requests past [`MAX_OPERATIONS_PER_DAY`].
pub const OTHER: &str = "(other)";
/// The operation of requests whose operation could not be chosen.
pub const INVALID: &str = "(invalid)";

/// A tenant id a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// A workspace.
    Workspace(Uuid),
    /// An organization (its workspace).
    Organization(Uuid),
    /// A membership (its workspace).
    Member(Uuid),
    /// A billing account (its workspace).
    BillingAccount(Uuid),
}

impl Owner {
    /// The tenant id of an external id (`ws_…`, `org_…`, `mem_…`, `ba_…`).
    pub fn parse(s: &str) -> Option<Self> {
        // Cheap refusal of the other strings of a request.
        if !(s.len() <= 36 && s.contains('_')) {
            return None;
        }
        WorkspaceId::decode(s)
            .map(|i| Owner::Workspace(i.0))
            .or_else(|| OrganizationId::decode(s).map(|i| Owner::Organization(i.0)))
            .or_else(|| MemberId::decode(s).map(|i| Owner::Member(i.0)))
            .or_else(|| BillingAccountId::decode(s).map(|i| Owner::BillingAccount(i.0)))
    }

    /// The kind as the flush statement resolves it.
    fn kind(&self) -> &'static str {
        match self {
            Owner::Workspace(_) => "ws",
            Owner::Organization(_) => "org",
            Owner::Member(_) => "mem",
            Owner::BillingAccount(_) => "ba",
        }
    }

    fn id(&self) -> Uuid {
        match *self {
            Owner::Workspace(i)
            | Owner::Organization(i)
            | Owner::Member(i)
            | Owner::BillingAccount(i) => i,
        }
    }
}

/// The distinct tenant ids of one request (at most [`MAX_OWNERS`], kept sorted so that two
/// requests naming the same ids share a counter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Owners {
    len: u8,
    items: [Option<Owner>; MAX_OWNERS],
}

impl Owners {
    /// Adds an id; false once [`MAX_OWNERS`] are held (later ids are ignored).
    pub fn push(&mut self, owner: Owner) -> bool {
        let len = usize::from(self.len);
        if self.items[..len].contains(&Some(owner)) {
            return true;
        }
        if len == MAX_OWNERS {
            return false;
        }
        self.items[len] = Some(owner);
        self.items[..=len].sort_unstable();
        self.len += 1;
        len + 1 < MAX_OWNERS
    }

    /// Whether the request named no tenant id.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ids.
    pub fn iter(&self) -> impl Iterator<Item = Owner> + '_ {
        self.items.iter().flatten().copied()
    }
}

/// Requests and errors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Requests.
    pub requests: i64,
    /// Of those, answered with errors.
    pub errors: i64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.requests += other.requests;
        self.errors += other.errors;
    }
}

/// The requests of one caller naming the same ids on one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Group {
    owners: Owners,
    user: Uuid,
    day: NaiveDate,
}

#[derive(Default)]
struct Pending {
    groups: HashMap<Group, HashMap<Box<str>, Tally>>,
    /// Counters held (the sum of the groups' operations).
    entries: usize,
    /// Requests left out since the last flush (memory cap reached).
    dropped: u64,
}

impl Pending {
    fn add(&mut self, group: Group, operation: &str, tally: Tally) {
        let Pending {
            groups,
            entries,
            dropped,
        } = self;
        let full = *entries >= MAX_PENDING;
        let Some(ops) = groups.get_mut(&group) else {
            if full {
                *dropped += tally.requests as u64;
            } else {
                groups.insert(group, HashMap::from([(operation.into(), tally)]));
                *entries += 1;
            }
            return;
        };
        if let Some(t) = ops.get_mut(operation) {
            t.add(tally);
            return;
        }
        let key = if ops.len() >= MAX_OPERATIONS_PER_DAY {
            OTHER
        } else {
            operation
        };
        if let Some(t) = ops.get_mut(key) {
            t.add(tally);
        } else if full {
            *dropped += tally.requests as u64;
        } else {
            ops.insert(key.into(), tally);
            *entries += 1;
        }
    }
}

/// The in-memory counters of one process (shared by its requests; see the module).
#[derive(Default)]
pub struct ApiUsage {
    pending: Mutex<Pending>,
    /// One flush at a time: a forced flush returns once everything recorded before it is
    /// stored, even while the periodic one runs.
    flushing: tokio::sync::Mutex<()>,
}

/// `operation` cut to [`MAX_OPERATION_CHARS`] characters.
pub fn bounded(operation: &str) -> &str {
    match operation.char_indices().nth(MAX_OPERATION_CHARS) {
        Some((i, _)) => &operation[..i],
        None => operation,
    }
}

impl ApiUsage {
    /// Counts one request of `user` on `day` naming `owners` (nothing when it names none).
    pub fn record(
        &self,
        owners: &Owners,
        user: Uuid,
        operation: &str,
        error: bool,
        day: NaiveDate,
    ) {
        if owners.is_empty() {
            return;
        }
        let operation = match bounded(operation) {
            "" => INVALID,
            op => op,
        };
        let tally = Tally {
            requests: 1,
            errors: i64::from(error),
        };
        let group = Group {
            owners: *owners,
            user,
            day,
        };
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.add(group, operation, tally);
    }

    /// Stores what was recorded so far with one upsert (on the process's bookkeeping
    /// connection); the counters written. On failure the counts wait for the next flush.
    pub async fn flush(&self, pool: &DbPool) -> anyhow::Result<usize> {
        let _one = self.flushing.lock().await;
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if taken.dropped > 0 {
            tracing::warn!(
                requests = taken.dropped,
                "API usage counters were full between two flushes; requests left out of the counts"
            );
        }
        if taken.groups.is_empty() {
            return Ok(0);
        }
        let batch = batch_of(&taken.groups);
        let stored = async {
            let mut conn = pool.get().await?;
            Ok::<_, anyhow::Error>(
                repo::add(&mut conn, &batch, MAX_OPERATIONS_PER_DAY as i64).await?,
            )
        }
        .await;
        if stored.is_err() {
            // Put the counts back (with what was recorded meanwhile) for the next flush.
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (group, ops) in taken.groups {
                for (op, tally) in ops {
                    pending.add(group, &op, tally);
                }
            }
        }
        stored
    }

    /// Flushes every `every` while the counters live (the task ends with them).
    pub fn spawn_flusher(self: &Arc<Self>, pool: DbPool, every: Duration) {
        let usage: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(usage) = usage.upgrade() else { return };
                if let Err(e) = usage.flush(&pool).await {
                    tracing::warn!(error = %e, "flushing API usage counters failed; kept for the next flush");
                }
            }
        });
    }
}

/// The arrays of the flush statement: one row per (group, operation) and one per (group, id).
fn batch_of(groups: &HashMap<Group, HashMap<Box<str>, Tally>>) -> repo::Batch {
    let mut b = repo::Batch::default();
    for (gid, (group, ops)) in groups.iter().enumerate() {
        let gid = gid as i32;
        for owner in group.owners.iter() {
            b.owner_group.push(gid);
            b.owner_kind.push(owner.kind());
            b.owner_id.push(owner.id());
        }
        for (op, tally) in ops {
            b.group.push(gid);
            b.user.push(group.user);
            b.day.push(group.day);
            b.operation.push(op.to_string());
            b.requests.push(tally.requests);
            b.errors.push(tally.errors);
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 30).expect("date")
    }

    fn owners(ids: &[Owner]) -> Owners {
        let mut o = Owners::default();
        for i in ids {
            o.push(*i);
        }
        o
    }

    #[test]
    fn owners_are_distinct_sorted_and_bounded() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let x = owners(&[
            Owner::Organization(b),
            Owner::Workspace(a),
            Owner::Workspace(a),
        ]);
        let y = owners(&[Owner::Workspace(a), Owner::Organization(b)]);
        assert_eq!(x, y);
        assert_eq!(x.iter().count(), 2);
        let many: Vec<_> = (0..10)
            .map(|i| Owner::Workspace(Uuid::from_u128(i)))
            .collect();
        assert_eq!(owners(&many).iter().count(), MAX_OWNERS);
    }

    #[test]
    fn external_ids_name_their_kind() {
        let id = Uuid::now_v7();
        assert_eq!(
            Owner::parse(&WorkspaceId(id).encode()),
            Some(Owner::Workspace(id))
        );
        assert_eq!(
            Owner::parse(&OrganizationId(id).encode()),
            Some(Owner::Organization(id))
        );
        assert_eq!(Owner::parse("ws_nope"), None);
        assert_eq!(Owner::parse(&format!("usr_{}", id.simple())), None);
        assert_eq!(Owner::parse(&"x".repeat(100_000)), None);
    }

    #[test]
    fn operations_are_cut_and_capped() {
        assert_eq!(
            bounded(&"é".repeat(150)).chars().count(),
            MAX_OPERATION_CHARS
        );
        let usage = ApiUsage::default();
        let o = owners(&[Owner::Workspace(Uuid::from_u128(7))]);
        let user = Uuid::from_u128(9);
        for i in 0..MAX_OPERATIONS_PER_DAY + 50 {
            usage.record(&o, user, &format!("Op{i}"), i % 2 == 0, day());
        }
        usage.record(&o, user, "Op0", false, day());
        let p = usage.pending.lock().expect("lock");
        let ops = &p.groups[&Group {
            owners: o,
            user,
            day: day(),
        }];
        assert_eq!(ops.len(), MAX_OPERATIONS_PER_DAY + 1);
        assert_eq!(
            ops["Op0"],
            Tally {
                requests: 2,
                errors: 1
            }
        );
        assert_eq!(ops[OTHER].requests, 50);
        let total: i64 = ops.values().map(|t| t.requests).sum();
        assert_eq!(total, MAX_OPERATIONS_PER_DAY as i64 + 51);
    }

    #[test]
    fn requests_naming_nobody_are_not_counted() {
        let usage = ApiUsage::default();
        usage.record(&Owners::default(), Uuid::nil(), "Op", true, day());
        assert!(usage.pending.lock().expect("lock").groups.is_empty());
    }

    #[test]
    fn memory_is_bounded_whatever_the_ids() {
        let mut p = Pending::default();
        let one = Tally {
            requests: 1,
            errors: 0,
        };
        for i in 0..(MAX_PENDING + 10) as u128 {
            let group = Group {
                owners: owners(&[Owner::Workspace(Uuid::from_u128(i))]),
                user: Uuid::nil(),
                day: day(),
            };
            p.add(group, "Op", one);
        }
        assert_eq!(p.entries, MAX_PENDING);
        assert_eq!(p.dropped, 10);
    }
}
