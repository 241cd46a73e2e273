//! Every cell of the role matrix in docs/features/identity-and-roles.md (the rows on the
//! workspace, its members and its invitations).

use serde_json::{Value, json};
use tests::{TestApp, assert_code, assert_ok};

/// Who acts.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Owner,
    Admin,
    Viewer,
    Outsider,
}

/// A workspace with two of each role, all signed in.
struct Setup {
    ws: String,
    owner: String,
    admin: String,
    viewer: String,
    outsider: String,
    owner2_member: String,
    admin2_member: String,
    viewer2_member: String,
    own_member: std::collections::HashMap<&'static str, String>,
    viewer_invitation: String,
    owner_invitation: String,
}

async fn setup(app: &TestApp, n: usize) -> Setup {
    let e = |r: &str| format!("{r}{n}@example.com");
    let owner = app.user(&e("owner"));
    let ws = app.create_workspace(&owner, "Matrix").await;
    let mut own_member = std::collections::HashMap::new();
    own_member.insert("owner", app.member_id(&owner, &ws, &e("owner")).await);
    let owner2_member = app.add_member(&owner, &ws, &e("owner2-"), "OWNER").await;
    own_member.insert(
        "admin",
        app.add_member(&owner, &ws, &e("admin"), "ADMIN").await,
    );
    let admin2_member = app.add_member(&owner, &ws, &e("admin2-"), "ADMIN").await;
    own_member.insert(
        "viewer",
        app.add_member(&owner, &ws, &e("viewer"), "VIEWER").await,
    );
    let viewer2_member = app.add_member(&owner, &ws, &e("viewer2-"), "VIEWER").await;
    let viewer_invitation = app
        .invite(&owner, &ws, &e("invited-viewer"), "VIEWER")
        .await;
    let owner_invitation = app.invite(&owner, &ws, &e("invited-owner"), "OWNER").await;
    Setup {
        viewer_invitation,
        owner_invitation,
        ws,
        admin: app.user(&e("admin")),
        viewer: app.user(&e("viewer")),
        outsider: app.user(&e("outsider")),
        owner,
        owner2_member,
        admin2_member,
        viewer2_member,
        own_member,
    }
}

impl Setup {
    fn token(&self, who: Who) -> &str {
        match who {
            Who::Owner => &self.owner,
            Who::Admin => &self.admin,
            Who::Viewer => &self.viewer,
            Who::Outsider => &self.outsider,
        }
    }
}

async fn act(app: &TestApp, s: &Setup, who: Who, action: &str) -> Value {
    let t = s.token(who);
    let ws = &s.ws;
    let role = |m: &str, r: &str| {
        (
            "mutation($m: ID!, $r: Role!) { updateMemberRole(input: {memberId: $m, role: $r}) { member { role } } }",
            json!({"m": m, "r": r}),
        )
    };
    let remove = |m: &str| {
        (
            "mutation($m: ID!) { removeMember(input: {memberId: $m}) { deletedMemberId } }",
            json!({"m": m}),
        )
    };
    let (q, v) = match action {
        "read" => (
            "query($w: ID!) { workspace(id: $w) { name viewerRole members { edges { node { role } } } } }",
            json!({"w": ws}),
        ),
        "rename" => (
            "mutation($w: ID!) { renameWorkspace(input: {workspaceId: $w, name: \"Renamed\"}) { workspace { name } } }",
            json!({"w": ws}),
        ),
        "delete" => (
            "mutation($w: ID!) { deleteWorkspace(input: {workspaceId: $w}) { deletedWorkspaceId } }",
            json!({"w": ws}),
        ),
        "audit" => (
            "query($w: ID!) { workspace(id: $w) { auditLog { edges { node { action } } } } }",
            json!({"w": ws}),
        ),
        "add_viewer" | "add_admin" | "add_owner" => (
            "mutation($w: ID!, $e: String!, $r: Role!) { addMember(input: {workspaceId: $w, email: $e, role: $r}) { invitation { role } } }",
            json!({"w": ws, "e": format!("new-{action}@example.com"), "r": action.trim_start_matches("add_").to_uppercase()}),
        ),
        "list_invitations" => (
            "query($w: ID!) { workspace(id: $w) { invitations { edges { node { id } } } } }",
            json!({"w": ws}),
        ),
        "revoke_viewer_invitation" | "revoke_owner_invitation" => (
            "mutation($i: ID!) { revokeInvitation(input: {invitationId: $i}) { invitationId } }",
            json!({"i": if action == "revoke_viewer_invitation" { &s.viewer_invitation } else { &s.owner_invitation }}),
        ),
        "viewer_to_admin" => role(&s.viewer2_member, "ADMIN"),
        "admin_to_viewer" => role(&s.admin2_member, "VIEWER"),
        "make_owner" => role(&s.viewer2_member, "OWNER"),
        "demote_owner" => role(&s.owner2_member, "ADMIN"),
        "remove_viewer" => remove(&s.viewer2_member),
        "remove_admin" => remove(&s.admin2_member),
        "remove_owner" => remove(&s.owner2_member),
        "leave" => {
            let key = match who {
                Who::Owner => "owner",
                Who::Admin => "admin",
                _ => "viewer",
            };
            remove(&s.own_member[key])
        }
        other => panic!("unknown action {other}"),
    };
    app.gql(t, q, v).await
}

/// `Ok(())` for allowed, `Err(code)` for refused.
fn expected(action: &str, who: Who) -> Result<(), &'static str> {
    use Who::*;
    if who == Outsider {
        // Reads of a foreign workspace return null (checked separately); every change is NOT_FOUND.
        return Err("NOT_FOUND");
    }
    let allowed = match action {
        "read" | "leave" => true,
        "rename"
        | "audit"
        | "add_viewer"
        | "add_admin"
        | "viewer_to_admin"
        | "admin_to_viewer"
        | "remove_viewer"
        | "remove_admin"
        | "list_invitations"
        | "revoke_viewer_invitation" => {
            matches!(who, Owner | Admin)
        }
        "delete"
        | "add_owner"
        | "make_owner"
        | "demote_owner"
        | "remove_owner"
        | "revoke_owner_invitation" => who == Owner,
        other => panic!("unknown action {other}"),
    };
    if allowed { Ok(()) } else { Err("FORBIDDEN") }
}

const ACTIONS: &[&str] = &[
    "read",
    "rename",
    "delete",
    "audit",
    "add_viewer",
    "add_admin",
    "add_owner",
    "list_invitations",
    "revoke_viewer_invitation",
    "revoke_owner_invitation",
    "viewer_to_admin",
    "admin_to_viewer",
    "make_owner",
    "demote_owner",
    "remove_viewer",
    "remove_admin",
    "remove_owner",
    "leave",
];

#[tokio::test]
async fn every_cell_of_the_role_matrix() {
    let app = TestApp::spawn().await;
    let mut n = 0;
    for action in ACTIONS {
        for who in [Who::Owner, Who::Admin, Who::Viewer, Who::Outsider] {
            n += 1;
            let s = setup(&app, n).await;
            let body = act(&app, &s, who, action).await;
            let outsider_read =
                who == Who::Outsider && matches!(*action, "read" | "audit" | "list_invitations");
            match expected(action, who) {
                _ if outsider_read => {
                    assert_ok(&body);
                    assert!(
                        body["data"]["workspace"].is_null(),
                        "{action} by {who:?}: {body}"
                    );
                }
                Ok(()) => assert_ok(&body),
                Err(code) if *action == "audit" => {
                    // The field is refused; the rest of the workspace still resolves.
                    assert_code(&body, code);
                    assert!(body["data"]["workspace"]["auditLog"].is_null(), "{body}");
                }
                Err(code) if *action == "list_invitations" => {
                    // A non-null field refused: the workspace itself is null, with the error.
                    assert_code(&body, code);
                    assert!(body["data"]["workspace"].is_null(), "{body}");
                }
                Err(code) => assert_code(&body, code),
            }
            // The owner can always read the workspace unless it was deleted.
            let reader = if *action == "leave" && who == Who::Owner {
                &s.admin
            } else {
                &s.owner
            };
            let still = app
                .gql(
                    reader,
                    "query($w: ID!) { workspace(id: $w) { id } }",
                    json!({"w": s.ws}),
                )
                .await;
            let deleted = *action == "delete" && who == Who::Owner;
            assert_eq!(
                still["data"]["workspace"].is_null(),
                deleted,
                "{action} by {who:?}: {still}"
            );
        }
    }
}

#[tokio::test]
async fn last_owner_can_be_neither_removed_nor_demoted() {
    let app = TestApp::spawn().await;
    let owner = app.user("solo@example.com");
    let ws = app.create_workspace(&owner, "Solo").await;
    let me = app.member_id(&owner, &ws, "solo@example.com").await;

    let r = app
        .gql(
            &owner,
            "mutation($m: ID!) { removeMember(input: {memberId: $m}) { deletedMemberId } }",
            json!({"m": me}),
        )
        .await;
    assert_code(&r, "CONFLICT");
    let r = app
        .gql(&owner, "mutation($m: ID!) { updateMemberRole(input: {memberId: $m, role: ADMIN}) { member { role } } }", json!({"m": me}))
        .await;
    assert_code(&r, "CONFLICT");

    // With a second owner, the first may step down, and then the second is the last one.
    let second_member = app
        .add_member(&owner, &ws, "second@example.com", "OWNER")
        .await;
    let second = app.user("second@example.com");
    let r = app
        .gql(&owner, "mutation($m: ID!) { updateMemberRole(input: {memberId: $m, role: ADMIN}) { member { role } } }", json!({"m": me}))
        .await;
    assert_ok(&r);
    let r = app
        .gql(
            &second,
            "mutation($m: ID!) { removeMember(input: {memberId: $m}) { deletedMemberId } }",
            json!({"m": second_member}),
        )
        .await;
    assert_code(&r, "CONFLICT");
    // The demoted admin cannot remove the remaining owner either.
    let r = app
        .gql(
            &owner,
            "mutation($m: ID!) { removeMember(input: {memberId: $m}) { deletedMemberId } }",
            json!({"m": second_member}),
        )
        .await;
    assert_code(&r, "FORBIDDEN");
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM members WHERE role = 'OWNER'")
            .await,
        1
    );
}

#[tokio::test]
async fn concurrent_demotions_keep_one_owner() {
    let app = TestApp::spawn().await;
    let a = app.user("a@example.com");
    let ws = app.create_workspace(&a, "Race").await;
    app.add_member(&a, &ws, "b@example.com", "OWNER").await;
    let b = app.user("b@example.com");
    let ma = app.member_id(&a, &ws, "a@example.com").await;
    let mb = app.member_id(&a, &ws, "b@example.com").await;
    let q = "mutation($m: ID!) { removeMember(input: {memberId: $m}) { deletedMemberId } }";
    let (ra, rb) = tokio::join!(
        app.gql(&a, q, json!({"m": ma})),
        app.gql(&b, q, json!({"m": mb}))
    );
    let ok = [&ra, &rb]
        .iter()
        .filter(|r| r.get("errors").is_none())
        .count();
    assert_eq!(ok, 1, "exactly one owner may leave: {ra} {rb}");
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM members WHERE role = 'OWNER'")
            .await,
        1
    );
}
