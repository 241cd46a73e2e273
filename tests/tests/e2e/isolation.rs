//! Tenant isolation: another workspace's ids look exactly like ids that do not exist.

use serde_json::{Value, json};
use tests::TestApp;

/// Removes what legitimately differs between two answers (nothing but the id itself).
fn normalize(mut v: Value, id: &str) -> String {
    if let Some(errors) = v.get_mut("errors").and_then(Value::as_array_mut) {
        for e in errors {
            if let Some(ext) = e.get_mut("extensions").and_then(Value::as_object_mut) {
                ext.remove("requestId");
            }
        }
    }
    if id.is_empty() {
        v.to_string()
    } else {
        v.to_string().replace(id, "<id>")
    }
}

#[tokio::test]
async fn foreign_ids_are_indistinguishable_from_missing_ones() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice@a.example");
    let bob = app.user("bob@b.example");
    let ws_a = app.create_workspace(&alice, "A").await;
    let ws_b = app.create_workspace(&bob, "B").await;
    let member_b = app
        .add_member(&bob, &ws_b, "carol@b.example", "VIEWER")
        .await;
    let bob_member = app.member_id(&bob, &ws_b, "bob@b.example").await;
    let missing_ws = api::ids::WorkspaceId::new().encode();
    let missing_member = api::ids::MemberId::new().encode();
    let _ = ws_a;

    let ops: Vec<(&str, &str, bool)> = vec![
        (
            "query($id: ID!) { workspace(id: $id) { id name members { edges { node { id } } } } }",
            "ws",
            false,
        ),
        ("query($id: ID!) { node(id: $id) { id } }", "ws", false),
        ("query($id: ID!) { node(id: $id) { id } }", "member", false),
        (
            "mutation($id: ID!) { renameWorkspace(input: {workspaceId: $id, name: \"x\"}) { workspace { id } } }",
            "ws",
            true,
        ),
        (
            "mutation($id: ID!) { updateWorkspace(input: {workspaceId: $id, description: \"x\"}) { workspace { id } } }",
            "ws",
            true,
        ),
        (
            "mutation($id: ID!) { deleteWorkspace(input: {workspaceId: $id}) { deletedWorkspaceId } }",
            "ws",
            true,
        ),
        (
            "mutation($id: ID!) { addMember(input: {workspaceId: $id, email: \"x@x.example\", role: VIEWER}) { member { id } } }",
            "ws",
            true,
        ),
        (
            "mutation($id: ID!) { updateMemberRole(input: {memberId: $id, role: ADMIN}) { member { id } } }",
            "member",
            true,
        ),
        (
            "mutation($id: ID!) { removeMember(input: {memberId: $id}) { deletedMemberId } }",
            "member",
            true,
        ),
    ];
    for (q, kind, is_mutation) in ops {
        let foreign_ids: Vec<&str> = if kind == "ws" {
            vec![&ws_b]
        } else {
            vec![&member_b, &bob_member]
        };
        let missing = if kind == "ws" {
            &missing_ws
        } else {
            &missing_member
        };
        let expected = normalize(app.gql(&alice, q, json!({"id": missing})).await, missing);
        if is_mutation {
            assert!(expected.contains("NOT_FOUND"), "{q}: {expected}");
        } else {
            assert!(expected.contains("null"), "{q}: {expected}");
        }
        for foreign in foreign_ids {
            let got = normalize(app.gql(&alice, q, json!({"id": foreign})).await, foreign);
            assert_eq!(got, expected, "{q} with a foreign id");
        }
        // Malformed ids and ids of another type look missing too.
        for odd in ["", "ws_123", "mem_not-hex", &missing_member, &missing_ws] {
            if odd == missing {
                continue;
            }
            let got = normalize(app.gql(&alice, q, json!({"id": odd})).await, odd);
            assert_eq!(got, expected, "{q} with id {odd:?}");
        }
    }
    // Nothing of B changed, and B is not listed for Alice.
    let r = app
        .gql(
            &alice,
            "{ workspaces { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert!(!r.to_string().contains(&ws_b), "{r}");
    let r = app
        .gql(
            &bob,
            "query($w: ID!) { workspace(id: $w) { name members { edges { node { role } } } } }",
            json!({"w": ws_b}),
        )
        .await;
    assert_eq!(r["data"]["workspace"]["name"], "B");
    assert_eq!(
        r["data"]["workspace"]["members"]["edges"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(app.sql_count("SELECT count(*) AS n FROM audit_events WHERE actor_id = (SELECT id FROM users WHERE email = 'alice@a.example')").await, 1);
}

#[tokio::test]
async fn deleted_workspaces_disappear_everywhere() {
    let app = TestApp::spawn().await;
    let t = app.user("del@example.com");
    let ws = app.create_workspace(&t, "Gone").await;
    let r = app.gql(&t, "mutation($w: ID!) { deleteWorkspace(input: {workspaceId: $w}) { deletedWorkspaceId } }", json!({"w": ws})).await;
    assert_eq!(
        r["data"]["deleteWorkspace"]["deletedWorkspaceId"],
        ws.as_str()
    );
    let r = app
        .gql(
            &t,
            "query($w: ID!) { workspace(id: $w) { id } workspaces { edges { node { id } } } }",
            json!({"w": ws}),
        )
        .await;
    assert!(r["data"]["workspace"].is_null());
    assert_eq!(
        r["data"]["workspaces"]["edges"].as_array().map(Vec::len),
        Some(0)
    );
    let r = app
        .try_add_member(&t, &ws, "late@example.com", "VIEWER")
        .await;
    tests::assert_code(&r, "NOT_FOUND");
    // The audit trail survives the deletion.
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM audit_events WHERE action = 'workspace.delete'")
            .await,
        1
    );
}
