//! DataLoaders: every nested edge is fetched in batches, so the number of SQL statements
//! of a query does not grow with page sizes. They are built per request (some depend on
//! the caller), and their errors are `Clone` (`DomainError` keeps causes in an `Arc`).

use std::collections::HashMap;

use async_graphql::dataloader::{DataLoader, Loader};
use uuid::Uuid;

use crate::db::models::{AuditEventRow, MemberRow, UserRow, WorkspaceRow};
use crate::db::repo::Page;
use crate::domain::{self, Actor, DomainError, Role, Services};

/// All loaders of one request.
pub struct Loaders {
    /// Users by id.
    pub users: DataLoader<UserLoader>,
    /// Live workspaces by id.
    pub workspaces: DataLoader<WorkspaceLoader>,
    /// The caller's role per workspace.
    pub viewer_roles: DataLoader<ViewerRoleLoader>,
    /// Member pages per workspace.
    pub member_pages: DataLoader<MemberPageLoader>,
    /// Audit log pages per workspace.
    pub audit_pages: DataLoader<AuditPageLoader>,
}

impl Loaders {
    /// Fresh loaders for one request.
    pub fn new(services: &Services, actor: &Actor) -> Self {
        let s = || services.clone();
        Self {
            users: DataLoader::new(UserLoader(s()), tokio::spawn),
            workspaces: DataLoader::new(WorkspaceLoader(s()), tokio::spawn),
            viewer_roles: DataLoader::new(ViewerRoleLoader(s(), actor.clone()), tokio::spawn),
            member_pages: DataLoader::new(MemberPageLoader(s()), tokio::spawn),
            audit_pages: DataLoader::new(AuditPageLoader(s()), tokio::spawn),
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

/// Live workspaces by id.
pub struct WorkspaceLoader(Services);

impl Loader<Uuid> for WorkspaceLoader {
    type Value = WorkspaceRow;
    type Error = DomainError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, WorkspaceRow>, DomainError> {
        Ok(domain::workspaces::load_many(&self.0, keys)
            .await?
            .into_iter()
            .map(|w| (w.id, w))
            .collect())
    }
}

/// The caller's role in each workspace.
pub struct ViewerRoleLoader(Services, Actor);

impl Loader<Uuid> for ViewerRoleLoader {
    type Value = Role;
    type Error = DomainError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Role>, DomainError> {
        domain::members::viewer_roles(&self.0, &self.1, keys).await
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

/// Pages of members per workspace.
pub struct MemberPageLoader(Services);

impl Loader<(Uuid, Page)> for MemberPageLoader {
    type Value = Vec<MemberRow>;
    type Error = DomainError;

    async fn load(
        &self,
        keys: &[(Uuid, Page)],
    ) -> Result<HashMap<(Uuid, Page), Vec<MemberRow>>, DomainError> {
        load_pages(
            keys,
            |m: &MemberRow| m.workspace_id,
            |ids, page| async move { domain::members::pages(&self.0, &ids, page).await },
        )
        .await
    }
}

/// Pages of audit events per workspace.
pub struct AuditPageLoader(Services);

impl Loader<(Uuid, Page)> for AuditPageLoader {
    type Value = Vec<AuditEventRow>;
    type Error = DomainError;

    async fn load(
        &self,
        keys: &[(Uuid, Page)],
    ) -> Result<HashMap<(Uuid, Page), Vec<AuditEventRow>>, DomainError> {
        load_pages(
            keys,
            |e: &AuditEventRow| e.workspace_id,
            |ids, page| async move { domain::audit::pages(&self.0, &ids, page).await },
        )
        .await
    }
}
