//! DataLoaders: every nested edge is fetched in batches, so the number of SQL statements
//! of a query does not grow with page sizes. They are built per request (some depend on
//! the caller), and their errors are `Clone` (`DomainError` keeps causes in an `Arc`).

use std::collections::HashMap;

use async_graphql::dataloader::{DataLoader, Loader};
use uuid::Uuid;

use crate::db::models::{
    AuditEventRow, MemberRow, OrganizationRow, ResourceRow, UserRow, WorkspaceRow,
};
use crate::db::repo::Page;
use crate::domain::{self, Actor, DomainError, Role, Services};

/// All loaders of one request.
pub struct Loaders {
    /// Users by id.
    pub users: DataLoader<UserLoader>,
    /// Workspaces the caller belongs to, with the caller's role.
    pub access: DataLoader<WorkspaceAccessLoader>,
    /// Member pages per workspace.
    pub member_pages: DataLoader<MemberPageLoader>,
    /// Audit log pages per workspace.
    pub audit_pages: DataLoader<AuditPageLoader>,
    /// Organizations by id (parents and ancestors).
    pub organizations: DataLoader<OrganizationLoader>,
    /// Organizations by id that the caller may see (lookups by id from the client).
    pub visible_organizations: DataLoader<VisibleOrganizationLoader>,
    /// Children pages per organization.
    pub children: DataLoader<ChildrenPageLoader>,
    /// Descendant pages per organization.
    pub descendants: DataLoader<DescendantPageLoader>,
    /// Usage per organization.
    pub usage: DataLoader<UsageLoader>,
    /// Resources per workspace.
    pub resources: DataLoader<ResourceLoader>,
    /// Usage histories per (organization, resource, windows).
    pub histories: DataLoader<HistoryLoader>,
    /// Subscriptions (with their capacities) per billing account.
    pub subscriptions: DataLoader<SubscriptionLoader>,
    /// Payment methods per billing account.
    pub payment_methods: DataLoader<PaymentMethodLoader>,
    /// Data exports the caller asked for, per person.
    pub data_exports: DataLoader<super::gdpr::DataExportLoader>,
}

impl Loaders {
    /// Fresh loaders for one request.
    pub fn new(services: &Services, actor: &Actor) -> Self {
        let s = || services.clone();
        Self {
            users: DataLoader::new(UserLoader(s()), crate::db::budget::spawn)
                .delay(services.loader_delay),
            access: DataLoader::new(
                WorkspaceAccessLoader(s(), actor.clone()),
                crate::db::budget::spawn,
            )
            .delay(services.loader_delay),
            member_pages: DataLoader::new(MemberPageLoader(s()), crate::db::budget::spawn)
                .delay(services.loader_delay),
            audit_pages: DataLoader::new(AuditPageLoader(s()), crate::db::budget::spawn)
                .delay(services.loader_delay),
            organizations: DataLoader::new(OrganizationLoader(s()), crate::db::budget::spawn)
                .delay(services.loader_delay),
            visible_organizations: DataLoader::new(
                VisibleOrganizationLoader(s(), actor.clone()),
                tokio::spawn,
            )
            .delay(services.loader_delay),
            children: DataLoader::new(ChildrenPageLoader(s()), crate::db::budget::spawn)
                .delay(services.loader_delay),
            descendants: DataLoader::new(DescendantPageLoader(s()), crate::db::budget::spawn)
                .delay(services.loader_delay),
            usage: DataLoader::new(UsageLoader(s()), crate::db::budget::spawn)
                .delay(services.loader_delay),
            resources: DataLoader::new(ResourceLoader(s()), crate::db::budget::spawn)
                .delay(services.loader_delay),
            histories: DataLoader::new(HistoryLoader(s()), crate::db::budget::spawn)
                .delay(services.loader_delay),
            subscriptions: DataLoader::new(SubscriptionLoader(s()), crate::db::budget::spawn)
                .delay(services.loader_delay),
            payment_methods: DataLoader::new(PaymentMethodLoader(s()), crate::db::budget::spawn)
                .delay(services.loader_delay),
            data_exports: DataLoader::new(
                super::gdpr::DataExportLoader(s(), actor.clone()),
                tokio::spawn,
            )
            .delay(services.loader_delay),
        }
    }
}

/// Users by id.
pub struct UserLoader(Services);

impl Loader<Uuid> for UserLoader {
    type Value = UserRow;
    type Error = DomainError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, UserRow>, DomainError> {
        Ok(domain::users::load_many(&self.0, keys)
            .await?
            .into_iter()
            .map(|u| (u.id, u))
            .collect())
    }
}

/// The workspaces the caller belongs to, with the caller's role, by id (one statement
/// answers both "may I see it" and "what is it").
pub struct WorkspaceAccessLoader(Services, Actor);

impl Loader<Uuid> for WorkspaceAccessLoader {
    type Value = (WorkspaceRow, Role);
    type Error = DomainError;

    async fn load(
        &self,
        keys: &[Uuid],
    ) -> Result<HashMap<Uuid, (WorkspaceRow, Role)>, DomainError> {
        Ok(domain::workspaces::load_visible(&self.0, &self.1, keys)
            .await?
            .into_iter()
            .map(|(w, r)| (w.id, (w, r)))
            .collect())
    }
}

/// Groups page keys by page so that each distinct (first, after) costs one statement.
async fn load_pages<R, F, Fut>(
    keys: &[(Uuid, Page)],
    parent: impl Fn(&R) -> Uuid,
    fetch: F,
) -> Result<HashMap<(Uuid, Page), Vec<R>>, DomainError>
where
    F: Fn(Vec<Uuid>, Page) -> Fut,
    Fut: Future<Output = Result<Vec<R>, DomainError>>,
{
    let mut by_page: HashMap<Page, Vec<Uuid>> = HashMap::new();
    for (id, page) in keys {
        by_page.entry(*page).or_default().push(*id);
    }
    let mut out: HashMap<(Uuid, Page), Vec<R>> = keys.iter().map(|k| (*k, Vec::new())).collect();
    for (page, ids) in by_page {
        for row in fetch(ids, page).await? {
            if let Some(v) = out.get_mut(&(parent(&row), page)) {
                v.push(row);
            }
        }
    }
    Ok(out)
}

/// A DataLoader of pages of rows per parent, by (parent, page): `$fetch` loads the pages of
/// several parents at once and `$parent` tells which parent a row belongs to.
macro_rules! page_loader {
    ($(#[doc = $doc:literal])* $name:ident, $row:ty, $parent:expr, $fetch:path) => {
        $(#[doc = $doc])*
        pub struct $name(Services);

        impl Loader<(Uuid, Page)> for $name {
            type Value = Vec<$row>;
            type Error = DomainError;

            async fn load(
                &self,
                keys: &[(Uuid, Page)],
            ) -> Result<HashMap<(Uuid, Page), Vec<$row>>, DomainError> {
                load_pages(keys, $parent, |ids, page| async move {
                    $fetch(&self.0, &ids, page).await
                })
                .await
            }
        }
    };
}

page_loader!(
    /// Pages of members per workspace.
    MemberPageLoader,
    MemberRow,
    |m: &MemberRow| m.workspace_id,
    domain::members::pages
);
page_loader!(
    /// Pages of audit events per workspace.
    AuditPageLoader,
    AuditEventRow,
    |e: &AuditEventRow| e.workspace_id,
    domain::audit::pages
);
page_loader!(
    /// Pages of children per organization.
    ChildrenPageLoader,
    OrganizationRow,
    |o: &OrganizationRow| o.parent_id.unwrap_or_default(),
    domain::organizations::children_pages
);

/// Organizations by id.
pub struct OrganizationLoader(Services);

impl Loader<Uuid> for OrganizationLoader {
    type Value = OrganizationRow;
    type Error = DomainError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, OrganizationRow>, DomainError> {
        Ok(domain::organizations::load_many(&self.0, keys)
            .await?
            .into_iter()
            .map(|o| (o.id, o))
            .collect())
    }
}

/// Organizations by id that the caller may see: one statement answers both "may I see
/// it" and "what is it", so that a foreign id costs exactly what a missing one costs.
pub struct VisibleOrganizationLoader(Services, Actor);

impl Loader<Uuid> for VisibleOrganizationLoader {
    type Value = OrganizationRow;
    type Error = DomainError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, OrganizationRow>, DomainError> {
        Ok(domain::organizations::load_visible(&self.0, &self.1, keys)
            .await?
            .into_iter()
            .map(|o| (o.id, o))
            .collect())
    }
}

/// Pages of descendants per organization.
pub struct DescendantPageLoader(Services);

impl Loader<(Uuid, Page)> for DescendantPageLoader {
    type Value = Vec<OrganizationRow>;
    type Error = DomainError;

    async fn load(
        &self,
        keys: &[(Uuid, Page)],
    ) -> Result<HashMap<(Uuid, Page), Vec<OrganizationRow>>, DomainError> {
        let pages = load_pages(
            keys,
            |(of, _): &(Uuid, OrganizationRow)| *of,
            |ids, page| async move {
                domain::organizations::descendant_pages(&self.0, &ids, page).await
            },
        )
        .await?;
        Ok(pages
            .into_iter()
            .map(|(k, rows)| (k, rows.into_iter().map(|(_, o)| o).collect()))
            .collect())
    }
}

/// Current usage entries per organization (keyed by the row: the loader needs its path).
pub struct UsageLoader(Services);

impl Loader<OrganizationRow> for UsageLoader {
    type Value = Vec<domain::usage::UsageEntry>;
    type Error = DomainError;

    async fn load(
        &self,
        keys: &[OrganizationRow],
    ) -> Result<HashMap<OrganizationRow, Self::Value>, DomainError> {
        let mut by_id = domain::usage::load_entries(&self.0, keys).await?;
        Ok(keys
            .iter()
            .map(|k| (k.clone(), by_id.remove(&k.id).unwrap_or_default()))
            .collect())
    }
}

/// Resources per workspace.
pub struct ResourceLoader(Services);

impl Loader<Uuid> for ResourceLoader {
    type Value = Vec<ResourceRow>;
    type Error = DomainError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Vec<ResourceRow>>, DomainError> {
        let mut out: HashMap<Uuid, Vec<ResourceRow>> =
            keys.iter().map(|k| (*k, Vec::new())).collect();
        for r in domain::resources::load_many(&self.0, keys).await? {
            out.entry(r.workspace_id).or_default().push(r);
        }
        Ok(out)
    }
}

/// Usage histories: every `usageHistory` field of a request in one statement, however many
/// aliases ask for one.
pub struct HistoryLoader(Services);

impl Loader<domain::usage::HistoryKey> for HistoryLoader {
    type Value = Vec<crate::db::repo::usage::WindowRow>;
    type Error = DomainError;

    async fn load(
        &self,
        keys: &[domain::usage::HistoryKey],
    ) -> Result<HashMap<domain::usage::HistoryKey, Self::Value>, DomainError> {
        Ok(domain::usage::histories(&self.0, keys)
            .await?
            .into_iter()
            .collect())
    }
}

/// A subscription with its capacity per resource.
pub type SubscriptionWithCapacities = (
    crate::db::repo::billing::SubscriptionRow,
    Vec<(String, i64)>,
);

/// Subscriptions (oldest first, with their capacities) per billing account (readers are
/// checked where the account was read).
pub struct SubscriptionLoader(Services);

impl Loader<Uuid> for SubscriptionLoader {
    type Value = Vec<SubscriptionWithCapacities>;
    type Error = DomainError;

    async fn load(
        &self,
        keys: &[Uuid],
    ) -> Result<HashMap<Uuid, Vec<SubscriptionWithCapacities>>, DomainError> {
        let (subs, caps) = domain::billing::subscriptions::of_accounts(&self.0, keys).await?;
        let mut out: HashMap<Uuid, Vec<SubscriptionWithCapacities>> =
            keys.iter().map(|k| (*k, Vec::new())).collect();
        for s in subs {
            let mine = caps
                .iter()
                .filter(|c| c.0 == s.id)
                .map(|c| (c.1.clone(), c.2))
                .collect();
            out.entry(s.billing_account_id).or_default().push((s, mine));
        }
        Ok(out)
    }
}

/// Payment methods (oldest first) per billing account.
pub struct PaymentMethodLoader(Services);

impl Loader<Uuid> for PaymentMethodLoader {
    type Value = Vec<crate::db::repo::billing::PaymentMethodRow>;
    type Error = DomainError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, DomainError> {
        let rows = domain::billing::payment_methods::of_accounts(&self.0, keys).await?;
        let mut out: HashMap<Uuid, Self::Value> = keys.iter().map(|k| (*k, Vec::new())).collect();
        for r in rows {
            out.entry(r.billing_account_id).or_default().push(r);
        }
        Ok(out)
    }
}
