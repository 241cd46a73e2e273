//! Organization trees: structure, caps, moves, deletion.

use serde_json::{Value, json};
use tests::{TestApp, assert_code, assert_ok};

#[tokio::test]
async fn worked_example_of_the_reference() {
    let app = TestApp::spawn().await;
    let t = app.user("hq@example.com");
    let ws = app.create_workspace(&t, "Company").await;
    let hq = app.create_org(&t, &ws, None, "Company HQ").await;
    let eng = app.create_org(&t, &ws, Some(&hq), "Engineering").await;
    let e1 = app.create_org(&t, &ws, Some(&eng), "Team E1").await;
    let e2 = app.create_org(&t, &ws, Some(&eng), "Team E2").await;
    let sales = app.create_org(&t, &ws, Some(&hq), "Sales").await;
    let s1 = app.create_org(&t, &ws, Some(&sales), "Team S1").await;
    let s2 = app.create_org(&t, &ws, Some(&sales), "Team S2").await;
    for (org, n) in [
        (&hq, 10),
        (&eng, 5),
        (&e1, 30),
        (&e2, 40),
        (&sales, 10),
        (&s1, 15),
        (&s2, 25),
    ] {
        assert_ok(&app.record(&t, org, "users", n).await);
    }
    let expected = [
        (&hq, 10, 135),
        (&eng, 5, 75),
        (&e1, 30, 30),
        (&e2, 40, 40),
        (&sales, 10, 50),
        (&s1, 15, 15),
        (&s2, 25, 25),
    ];
    for (org, direct, subtree) in expected {
        assert_eq!(
            app.numbers(&t, org, "users").await,
            (direct, subtree),
            "{org}"
        );
    }
    // Other resources are untouched.
    assert_eq!(app.numbers(&t, &hq, "locations").await, (0, 0));
    app.assert_usage_invariant().await;

    // The tree reads back as built.
    let r = app
        .gql(
            &t,
            "query($o: ID!) { organization(id: $o) { name depth parent { name } ancestors { name } children { edges { node { name } } } descendants { edges { node { name } } } workspace { name } } }",
            json!({"o": e2}),
        )
        .await;
    let o = &r["data"]["organization"];
    assert_eq!(o["depth"], 2);
    assert_eq!(o["parent"]["name"], "Engineering");
    assert_eq!(
        o["ancestors"],
        json!([{"name": "Company HQ"}, {"name": "Engineering"}])
    );
    assert_eq!(o["workspace"]["name"], "Company");
    let r = app
        .gql(&t, "query($o: ID!) { organization(id: $o) { children { edges { node { name } } } descendants(first: 10) { edges { node { name } } } } }", json!({"o": hq}))
        .await;
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .map(|e| e["node"]["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(
        names(&r["data"]["organization"]["children"]),
        ["Engineering", "Sales"]
    );
    assert_eq!(names(&r["data"]["organization"]["descendants"]).len(), 6);
    let r = app
        .gql(&t, "query($w: ID!) { workspace(id: $w) { organizations(rootsOnly: true) { edges { node { name } } } all: organizations { edges { node { name } } } } }", json!({"w": ws}))
        .await;
    assert_eq!(
        names(&r["data"]["workspace"]["organizations"]),
        ["Company HQ"]
    );
    assert_eq!(names(&r["data"]["workspace"]["all"]).len(), 7);
}

#[tokio::test]
async fn eleventh_level_child_101_and_organization_1001_are_refused() {
    let app = TestApp::spawn().await;
    let t = app.user("caps@example.com");
    let ws = app.create_workspace(&t, "Caps").await;
    let mut parent: Option<String> = None;
    for level in 0..10 {
        let id = app
            .create_org(&t, &ws, parent.as_deref(), &format!("L{level}"))
            .await;
        parent = Some(id);
    }
    let r = app.try_create_org(&t, &ws, parent.as_deref(), "L10").await;
    assert_code(&r, "LIMIT_EXCEEDED");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("10 levels"),
        "{r}"
    );

    let hub = app.create_org(&t, &ws, None, "Hub").await;
    for i in 0..100 {
        app.create_org(&t, &ws, Some(&hub), &format!("C{i}")).await;
    }
    let r = app.try_create_org(&t, &ws, Some(&hub), "C100").await;
    assert_code(&r, "LIMIT_EXCEEDED");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("100 direct children"),
        "{r}"
    );

    // 10 + 1 + 100 exist; fill up to 1,000 with roots and siblings (concurrently: the
    // workspace lock serializes them, and the cap still holds exactly).
    let existing = app
        .sql_count("SELECT count(*) AS n FROM organizations")
        .await;
    let holders: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..9 {
            v.push(app.create_org(&t, &ws, None, &format!("R{i}")).await);
        }
        v
    };
    let remaining = 1000 - existing - holders.len() as i64;
    let creates = (0..remaining + 5).map(|i| {
        let (app, t, ws, p) = (&app, &t, &ws, holders[(i % 9) as usize].clone());
        async move { app.try_create_org(t, ws, Some(&p), &format!("F{i}")).await }
    });
    // A hundred at a time: every create serializes on the workspace's lock, and a thousand
    // at once would test how long the pool lets a request wait (5 s), not the cap.
    let results: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
        futures::stream::iter(creates),
        100,
    ))
    .await;
    let refused: Vec<_> = results
        .iter()
        .filter(|r| r.get("errors").is_some())
        .collect();
    assert_eq!(
        refused.len(),
        5,
        "{:?}",
        refused.iter().take(2).collect::<Vec<_>>()
    );
    for r in refused {
        assert_code(r, "LIMIT_EXCEEDED");
        assert!(
            r["errors"][0]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("1000 organizations"),
            "{r}"
        );
    }
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM organizations")
            .await,
        1000
    );
}

#[tokio::test]
async fn moves_refuse_cycles_and_depth_and_re_aggregate_usage() {
    let app = TestApp::spawn().await;
    let t = app.user("mover@example.com");
    let ws = app.create_workspace(&t, "Moves").await;
    let a = app.create_org(&t, &ws, None, "A").await;
    let a1 = app.create_org(&t, &ws, Some(&a), "A1").await;
    let a11 = app.create_org(&t, &ws, Some(&a1), "A11").await;
    let b = app.create_org(&t, &ws, None, "B").await;
    let b1 = app.create_org(&t, &ws, Some(&b), "B1").await;
    assert_ok(&app.record(&t, &a1, "users", 3).await);
    assert_ok(&app.record(&t, &a11, "users", 4).await);
    assert_ok(&app.record(&t, &b1, "users", 5).await);
    let mv = "mutation($o: ID!, $p: ID) { moveOrganization(input: {organizationId: $o, newParentId: $p}) { organization { id depth parent { id } ancestors { id } } } }";

    // Cycles.
    for target in [&a, &a1, &a11] {
        let r = app.gql(&t, mv, json!({"o": a, "p": target})).await;
        assert_code(&r, "BAD_USER_INPUT");
    }
    // A1 (with A11) moves under B1: its 7 users leave A and join B and B1.
    let r = app.gql(&t, mv, json!({"o": a1, "p": b1})).await;
    assert_ok(&r);
    assert_eq!(r["data"]["moveOrganization"]["organization"]["depth"], 2);
    assert_eq!(app.numbers(&t, &a, "users").await, (0, 0));
    assert_eq!(app.numbers(&t, &b, "users").await, (0, 12));
    assert_eq!(app.numbers(&t, &b1, "users").await, (5, 12));
    assert_eq!(app.numbers(&t, &a1, "users").await, (3, 7));
    let r = app
        .gql(
            &t,
            "query($o: ID!) { organization(id: $o) { depth ancestors { name } } }",
            json!({"o": a11}),
        )
        .await;
    assert_eq!(r["data"]["organization"]["depth"], 3);
    assert_eq!(
        r["data"]["organization"]["ancestors"],
        json!([{"name": "B"}, {"name": "B1"}, {"name": "A1"}])
    );
    app.assert_usage_invariant().await;

    // A cap in the new ancestry that the moved usage would break refuses the move.
    assert_ok(&app.set_limit(&t, &a, "users", Some(6)).await);
    let r = app.gql(&t, mv, json!({"o": a1, "p": a})).await;
    assert_code(&r, "LIMIT_EXCEEDED");
    assert_eq!(r["errors"][0]["extensions"]["organizationId"], a.as_str());
    assert_eq!(app.numbers(&t, &b, "users").await, (0, 12));
    // Back to the top level: B keeps only B1's own usage.
    let r = app.gql(&t, mv, json!({"o": a1, "p": null})).await;
    assert_ok(&r);
    assert_eq!(r["data"]["moveOrganization"]["organization"]["depth"], 0);
    assert_eq!(app.numbers(&t, &b, "users").await, (0, 5));
    assert_eq!(app.numbers(&t, &a1, "users").await, (3, 7));
    app.assert_usage_invariant().await;

    // Depth: a chain of 9 below C cannot go under a node at depth 1.
    let c = app.create_org(&t, &ws, None, "C").await;
    let mut last = c.clone();
    for i in 0..9 {
        last = app.create_org(&t, &ws, Some(&last), &format!("C{i}")).await;
    }
    let r = app.gql(&t, mv, json!({"o": c, "p": b1})).await;
    assert_code(&r, "LIMIT_EXCEEDED");
}

#[tokio::test]
async fn deletion_needs_no_children_and_no_usage() {
    let app = TestApp::spawn().await;
    let t = app.user("del@example.com");
    let ws = app.create_workspace(&t, "Del").await;
    let p = app.create_org(&t, &ws, None, "P").await;
    let c = app.create_org(&t, &ws, Some(&p), "C").await;
    let del = "mutation($o: ID!) { deleteOrganization(input: {organizationId: $o}) { deletedOrganizationId } }";
    assert_code(&app.gql(&t, del, json!({"o": p})).await, "CONFLICT");
    assert_ok(&app.record(&t, &c, "locations", 2).await);
    assert_code(&app.gql(&t, del, json!({"o": c})).await, "CONFLICT");
    assert_ok(&app.record(&t, &c, "locations", -2).await);
    let r = app.gql(&t, del, json!({"o": c})).await;
    assert_eq!(
        r["data"]["deleteOrganization"]["deletedOrganizationId"],
        c.as_str()
    );
    assert_ok(&app.gql(&t, del, json!({"o": p})).await);
    let r = app
        .gql(
            &t,
            "query($o: ID!) { organization(id: $o) { id } }",
            json!({"o": c}),
        )
        .await;
    assert!(r["data"]["organization"].is_null());
}

#[tokio::test]
async fn viewers_read_organizations_but_cannot_change_them() {
    let app = TestApp::spawn().await;
    let owner = app.user("o@example.com");
    let ws = app.create_workspace(&owner, "V").await;
    let org = app.create_org(&owner, &ws, None, "Root").await;
    app.add_member(&owner, &ws, "viewer@example.com", "VIEWER")
        .await;
    app.add_member(&owner, &ws, "admin@example.com", "ADMIN")
        .await;
    let viewer = app.user("viewer@example.com");
    let admin = app.user("admin@example.com");
    assert_eq!(app.numbers(&viewer, &org, "users").await, (0, 0));
    assert_code(
        &app.try_create_org(&viewer, &ws, None, "X").await,
        "FORBIDDEN",
    );
    assert_code(&app.record(&viewer, &org, "users", 1).await, "FORBIDDEN");
    assert_code(
        &app.set_limit(&viewer, &org, "users", Some(1)).await,
        "FORBIDDEN",
    );
    let r = app.gql(&viewer, "mutation($o: ID!) { renameOrganization(input: {organizationId: $o, name: \"x\"}) { organization { name } } }", json!({"o": org})).await;
    assert_code(&r, "FORBIDDEN");
    // Admins may.
    assert_ok(&app.try_create_org(&admin, &ws, Some(&org), "Child").await);
    assert_ok(&app.record(&admin, &org, "users", 1).await);
    let r = app.gql(&admin, "mutation($o: ID!) { renameOrganization(input: {organizationId: $o, name: \"Renamed\"}) { organization { name } } }", json!({"o": org})).await;
    assert_eq!(
        r["data"]["renameOrganization"]["organization"]["name"],
        "Renamed"
    );
}

#[tokio::test]
async fn foreign_organizations_look_missing() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice@a.example");
    let bob = app.user("bob@b.example");
    let ws_a = app.create_workspace(&alice, "A").await;
    let ws_b = app.create_workspace(&bob, "B").await;
    let org_b = app.create_org(&bob, &ws_b, None, "B-root").await;
    let org_a = app.create_org(&alice, &ws_a, None, "A-root").await;
    let missing = api::ids::OrganizationId::new().encode();
    let ops = [
        "query($o: ID!) { organization(id: $o) { id } }",
        "query($o: ID!) { node(id: $o) { id } }",
        "mutation($o: ID!) { recordUsage(input: {organizationId: $o, resource: \"users\", delta: 1}) { organization { id } } }",
        "mutation($o: ID!) { setOrganizationLimit(input: {organizationId: $o, resource: \"users\", limit: 1}) { organization { id } } }",
        "mutation($o: ID!) { renameOrganization(input: {organizationId: $o, name: \"x\"}) { organization { id } } }",
        "mutation($o: ID!) { moveOrganization(input: {organizationId: $o, newParentId: null}) { organization { id } } }",
        "mutation($o: ID!) { deleteOrganization(input: {organizationId: $o}) { deletedOrganizationId } }",
    ];
    for q in ops {
        let foreign = app
            .gql(&alice, q, json!({"o": org_b}))
            .await
            .to_string()
            .replace(&org_b, "<id>");
        let absent = app
            .gql(&alice, q, json!({"o": missing}))
            .await
            .to_string()
            .replace(&missing, "<id>");
        assert_eq!(foreign, absent, "{q}");
    }
    // Nor can a foreign organization be used as a parent.
    let r = app
        .try_create_org(&alice, &ws_a, Some(&org_b), "Sneaky")
        .await;
    let r2 = app
        .try_create_org(&alice, &ws_a, Some(&missing), "Sneaky")
        .await;
    assert_code(&r, "NOT_FOUND");
    assert_eq!(
        r.to_string().replace(&org_b, "<id>"),
        r2.to_string().replace(&missing, "<id>")
    );
    let mv = "mutation($o: ID!, $p: ID) { moveOrganization(input: {organizationId: $o, newParentId: $p}) { organization { id } } }";
    assert_code(
        &app.gql(&alice, mv, json!({"o": org_a, "p": org_b})).await,
        "NOT_FOUND",
    );
    assert_eq!(app.numbers(&bob, &org_b, "users").await, (0, 0));
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM organizations")
            .await,
        2
    );
}

#[tokio::test]
async fn scalar_only_selections_resolve_like_any_other() {
    let app = TestApp::spawn().await;
    let t = app.user("fast@example.com");
    let ws = app.create_workspace(&t, "Fast").await;
    let root = app.create_org(&t, &ws, None, "Root").await;
    let child = app.create_org(&t, &ws, Some(&root), "Child").await;
    app.create_org(&t, &ws, Some(&child), "Grandchild").await;
    // The same selection answered by the one-step path (plain scalars) and by the general
    // path (a directive or a fragment forces it) must be identical, aliases and all.
    assert_ok(&app.set_limit(&t, &root, "users", Some(9)).await);
    assert_ok(&app.record(&t, &child, "users", 4).await);
    let plain = "query($o: ID!) { organization(id: $o) { usage { resource kind direct subtree limit effectiveLimit available overLimit windowStart __typename u: subtree }
        parent { a: id __typename name depth b: name createdAt }
        children { edges { cursor node { id name depth __typename } } pageInfo { hasNextPage endCursor } nodes { id } } ancestors { x: id name } } }";
    let general = "query($o: ID!) { organization(id: $o) { usage { resource kind direct subtree limit effectiveLimit available overLimit windowStart __typename u: subtree @include(if: true) }
        parent { a: id __typename name depth @include(if: true) b: name createdAt }
        children { edges { cursor @include(if: true) node { id ... on Organization { name } depth __typename } } pageInfo { hasNextPage endCursor } nodes { id } } ancestors { x: id name @skip(if: false) } } }";
    let a = app.gql(&t, plain, json!({"o": child})).await;
    let b = app.gql(&t, general, json!({"o": child})).await;
    assert_ok(&a);
    assert_eq!(a, b);
    assert_eq!(a["data"]["organization"]["parent"]["a"], root.as_str());
    let users = &a["data"]["organization"]["usage"][0];
    assert_eq!(
        (
            users["resource"].as_str(),
            users["kind"].as_str(),
            users["u"].as_i64(),
            users["available"].as_i64()
        ),
        (Some("users"), Some("ALLOCATED"), Some(4), Some(5))
    );
    assert_eq!(a["data"]["organization"]["parent"]["b"], "Root");
    // The creation time is the stored one, to the microsecond.
    let created = a["data"]["organization"]["parent"]["createdAt"]
        .as_str()
        .expect("createdAt");
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM organizations WHERE name = 'Root' AND created_at = '{created}'::timestamptz"
        ))
        .await,
        1,
        "{created}"
    );
    let children = &a["data"]["organization"]["children"];
    assert_eq!(children["edges"][0]["node"]["__typename"], "Organization");
    assert_eq!(
        children["edges"][0]["cursor"],
        children["pageInfo"]["endCursor"]
    );
    assert_eq!(
        children["nodes"][0]["id"],
        children["edges"][0]["node"]["id"]
    );
    // Directives that remove a field are honoured.
    let r = app
        .gql(
            &t,
            "query($o: ID!) { organization(id: $o) { parent { id name @skip(if: true) } } }",
            json!({"o": child}),
        )
        .await;
    assert_eq!(r["data"]["organization"]["parent"], json!({"id": root}));
}

#[tokio::test]
async fn a_page_with_prefetched_edges_resolves_like_the_general_path() {
    let app = TestApp::spawn().await;
    let t = app.user("page@example.com");
    let ws = app.create_workspace(&t, "Page").await;
    let root = app.create_org(&t, &ws, None, "Root").await;
    let mut kids = Vec::new();
    for i in 0..4 {
        kids.push(
            app.create_org(&t, &ws, Some(&root), &format!("Kid {i}"))
                .await,
        );
    }
    let grandchild = app.create_org(&t, &ws, Some(&kids[1]), "Grandchild").await;
    assert_ok(&app.set_limit(&t, &root, "users", Some(20)).await);
    assert_ok(&app.set_limit(&t, &kids[1], "users", Some(8)).await);
    assert_ok(&app.record(&t, &grandchild, "users", 3).await);
    assert_ok(&app.record(&t, &kids[0], "users", 2).await);
    // Page nodes whose nested edges were prefetched with the page are answered in one step;
    // a directive anywhere in a node forces the general path. Both must agree exactly,
    // including children pages driven by variables, page info and cursors.
    let node = |d: &str| {
        format!(
            "id name depth __typename parent {{ id name }} ancestors {{ id name{d} }}
             usage {{ resource direct subtree limit effectiveLimit available overLimit }}
             children(first: $n, after: $after) {{ edges {{ cursor node {{ id name }} }}
               nodes {{ id }} pageInfo {{ hasNextPage hasPreviousPage startCursor endCursor }} }}"
        )
    };
    let query = |d: &str| {
        format!(
            "query($w: ID!, $n: Int, $after: String) {{ workspace(id: $w) {{ organizations(first: 10) {{
               edges {{ cursor node {{ {} }} }} }} }} }}",
            node(d)
        )
    };
    for (n, after) in [
        (json!(2), json!(null)),
        (json!(10), json!(null)),
        (json!(null), json!(null)),
    ] {
        let vars = json!({"w": ws, "n": n, "after": after});
        let fast = app.gql(&t, &query(""), vars.clone()).await;
        let general = app.gql(&t, &query(" @include(if: true)"), vars).await;
        assert_ok(&fast);
        assert_eq!(fast, general);
    }
    let vars = json!({"w": ws, "n": 2, "after": null});
    let r = app.gql(&t, &query(""), vars).await;
    let edges = r["data"]["workspace"]["organizations"]["edges"]
        .as_array()
        .expect("edges")
        .clone();
    assert_eq!(edges.len(), 6);
    let first = &edges[0]["node"];
    assert_eq!(first["id"], root.as_str());
    assert_eq!(first["parent"], Value::Null);
    assert_eq!(
        first["children"]["edges"].as_array().expect("edges").len(),
        2,
        "first: $n is honoured"
    );
    assert_eq!(first["children"]["pageInfo"]["hasNextPage"], true);
    assert_eq!(
        first["children"]["pageInfo"]["endCursor"],
        first["children"]["edges"][1]["cursor"]
    );
    // The second page of the root's children, through `after`, agrees on both paths.
    let after = first["children"]["pageInfo"]["endCursor"].clone();
    let vars = json!({"w": ws, "n": 2, "after": after});
    let fast = app.gql(&t, &query(""), vars.clone()).await;
    let general = app.gql(&t, &query(" @include(if: true)"), vars).await;
    assert_eq!(fast, general);
    let root_kids = &fast["data"]["workspace"]["organizations"]["edges"][0]["node"]["children"];
    assert_eq!(
        root_kids["nodes"],
        json!([{"id": kids[2]}, {"id": kids[3]}])
    );
    assert_eq!(root_kids["pageInfo"]["hasPreviousPage"], true);
    // The grandchild's usage: its own 3, capped by its parent's 8 (5 left).
    let gc = edges
        .iter()
        .find(|e| e["node"]["id"] == grandchild.as_str())
        .expect("the grandchild is on the page");
    let users = &gc["node"]["usage"][0];
    assert_eq!(
        (
            users["direct"].as_i64(),
            users["available"].as_i64(),
            users["effectiveLimit"].as_i64()
        ),
        (Some(3), Some(5), Some(8))
    );
    assert_eq!(
        gc["node"]["ancestors"],
        json!([{"id": root, "name": "Root"}, {"id": kids[1], "name": "Kid 1"}])
    );
    // Repeated keys with sub-selections are merged, two children pages both answered.
    let r = app
        .gql(
            &t,
            "query($w: ID!) { workspace(id: $w) { organizations(first: 2) { edges { node {
               parent { id } parent { name } a: children(first: 1) { nodes { id } } b: children(first: 3) { nodes { id } } } } } } }",
            json!({"w": ws}),
        )
        .await;
    assert_ok(&r);
    let n = &r["data"]["workspace"]["organizations"]["edges"][0]["node"];
    assert_eq!(n["a"]["nodes"], json!([{"id": kids[0]}]));
    assert_eq!(
        n["b"]["nodes"],
        json!([{"id": kids[0]}, {"id": kids[1]}, {"id": kids[2]}])
    );
    let kid = &r["data"]["workspace"]["organizations"]["edges"][1]["node"];
    assert_eq!(kid["parent"], json!({"id": root, "name": "Root"}));
    // The same page asked for by two fragments: the engine merges both answers field by
    // field, exactly as if it had been asked once.
    let merged = app
        .gql(
            &t,
            "query($w: ID!) { workspace(id: $w) { ...A ...B } }
             fragment A on Workspace { organizations(first: 10) { edges { node { id usage { resource direct } } } } }
             fragment B on Workspace { organizations(first: 10) { edges { node { name usage { resource subtree } } } } }",
            json!({"w": ws}),
        )
        .await;
    let once = app
        .gql(
            &t,
            "query($w: ID!) { workspace(id: $w) { organizations(first: 10) { edges { node {
               id usage { resource direct subtree } name } } } } }",
            json!({"w": ws}),
        )
        .await;
    assert_ok(&once);
    assert_eq!(merged, once);
    assert_eq!(
        once["data"]["workspace"]["organizations"]["edges"][0]["node"]["usage"][0],
        json!({"resource": "users", "direct": 0, "subtree": 5})
    );
    // Names needing JSON escapes come back as they were written, on both paths.
    let odd_name = "Q\"uote \\ back — é ✓ 😀";
    let odd = app.create_org(&t, &ws, Some(&kids[3]), odd_name).await;
    let names = |d: &str| {
        format!(
            "query($w: ID!) {{ workspace(id: $w) {{ organizations(first: 10) {{ edges {{ node {{
               id name{d} parent {{ name }} children(first: 5) {{ nodes {{ name }} }} id }} }} }} }} }}"
        )
    };
    let fast = app.gql(&t, &names(""), json!({"w": ws})).await;
    let general = app
        .gql(&t, &names(" @include(if: true)"), json!({"w": ws}))
        .await;
    assert_ok(&fast);
    assert_eq!(fast, general);
    let edges = fast["data"]["workspace"]["organizations"]["edges"]
        .as_array()
        .expect("edges");
    let node = edges
        .iter()
        .map(|e| &e["node"])
        .find(|n| n["id"] == odd.as_str())
        .expect("the new organization is on the page");
    assert_eq!(node["name"], odd_name);
    let parent = edges
        .iter()
        .map(|e| &e["node"])
        .find(|n| n["id"] == kids[3].as_str())
        .expect("its parent is on the page");
    assert_eq!(parent["children"]["nodes"], json!([{"name": odd_name}]));
}

#[tokio::test]
async fn descendants_page_through_the_whole_subtree_and_node_refetches() {
    let app = TestApp::spawn().await;
    let t = app.user("desc@example.com");
    let ws = app.create_workspace(&t, "Desc").await;
    let root = app.create_org(&t, &ws, None, "Root").await;
    let mut expected = Vec::new();
    let mut parent = root.clone();
    for i in 0..3 {
        let a = app
            .create_org(&t, &ws, Some(&parent), &format!("A{i}"))
            .await;
        expected.push(a.clone());
        expected.push(
            app.create_org(&t, &ws, Some(&parent), &format!("B{i}"))
                .await,
        );
        parent = a;
    }
    let q = "query($o: ID!, $a: String) { organization(id: $o) { descendants(first: 2, after: $a) { edges { node { id } } pageInfo { hasNextPage endCursor } } } }";
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let r = app.gql(&t, q, json!({"o": root, "a": after})).await;
        assert_ok(&r);
        let d = &r["data"]["organization"]["descendants"];
        for e in d["edges"].as_array().expect("edges") {
            seen.push(e["node"]["id"].as_str().expect("id").to_string());
        }
        if d["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = d["pageInfo"]["endCursor"].as_str().map(String::from);
    }
    assert_eq!(seen, expected);
    let r = app
        .gql(
            &t,
            "query($o: ID!) { node(id: $o) { id ... on Organization { name depth } } }",
            json!({"o": expected[4]}),
        )
        .await;
    assert_eq!(
        r["data"]["node"],
        json!({"id": expected[4], "name": "A2", "depth": 3})
    );
}

/// The one-step path and the general resolvers answer byte for byte alike: a second server
/// with `GRAPHQL_ONE_STEP=off` on the same database gets the same documents.
#[tokio::test]
async fn one_step_answers_exactly_what_the_general_resolvers_answer() {
    let app = TestApp::with(tests::Options {
        env: [("GRAPHQL_ONE_STEP".to_string(), "on".to_string())].into(),
    })
    .await;
    let t = app.user("diff@example.com");
    let ws = app.create_workspace(&t, "Differential").await;
    let root = app.create_org(&t, &ws, None, "Root \"quoted\" ✓").await;
    let mid = app.create_org(&t, &ws, Some(&root), "Mid").await;
    let leaf = app.create_org(&t, &ws, Some(&mid), "Leaf\\slash").await;
    assert_ok(&app.set_limit(&t, &root, "users", Some(40)).await);
    assert_ok(&app.record(&t, &leaf, "users", 7).await);
    let off = {
        let config = app.config_for(&[("GRAPHQL_ONE_STEP", "off")]);
        let state =
            api::AppState::new(config, app.pool.clone(), Default::default()).expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(api::http::server::serve(
            listener,
            api::router(state),
            std::future::pending(),
            std::time::Duration::from_secs(1),
        ));
        format!("http://{addr}")
    };
    let documents = [
        "query($w: ID!) { workspace(id: $w) { name organizations(first: 100) { pageInfo { hasNextPage endCursor } edges { cursor node { id name depth createdAt
            parent { id name } children(first: 10) { edges { node { id name } } pageInfo { hasNextPage } } ancestors { id name }
            usage { resource kind direct subtree limit effectiveLimit available overLimit windowStart } } } } } }",
        "query($w: ID!) { workspace(id: $w) { organizations(rootsOnly: true) { nodes { a: name b: name id ...F } } } } fragment F on Organization { children { edges { node { name } } } }",
        "query($w: ID!) { workspace(id: $w) { organizations(first: 2) { edges { node { ancestors { id } usage { resource available } } } } } }",
        // Fragments and inline fragments on the type are inlined by the one-step plans.
        "query($w: ID!) { workspace(id: $w) { organizations { __typename edges { __typename ...E } nodes { ... on Organization { id __typename } ... { name } } } } }
         fragment E on OrganizationEdge { node { ...O parent { ...O } ancestors { ...O } usage { __typename ...U } children { __typename edges { node { ...O } } } } }
         fragment O on Organization { id name ...D } fragment D on Organization { depth name }
         fragment U on OrganizationUsage { resource direct resource }",
        // A directive, a fragment on an interface, and a repeated key with sub-selections take
        // the general path (or its parsed-back text) and still answer the same.
        "query($w: ID!, $yes: Boolean!) { workspace(id: $w) { organizations { edges { node { id name @include(if: $yes) depth @skip(if: $yes) ...N } } } } }
         fragment N on Node { id }",
        "query($w: ID!) { workspace(id: $w) { organizations { edges { node { parent { id } parent { name } usage { resource } } } } } }",
    ];
    let answered = "graphql_one_step_total{outcome=\"answered\"}";
    let fallback = "graphql_one_step_total{outcome=\"fallback\"}";
    for (i, doc) in documents.into_iter().enumerate() {
        let (before_answered, before_fallback) =
            (app.metric(answered).await, app.metric(fallback).await);
        let on_body = app.gql_text(&t, doc, json!({"w": ws, "yes": true})).await;
        let off_body = app
            .http
            .post(format!("{off}/graphql"))
            .bearer_auth(&t)
            .json(&json!({"query": doc, "variables": {"w": ws, "yes": true}}))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body");
        assert_ok(&serde_json::from_str(&on_body).expect("json"));
        assert_eq!(on_body, off_body, "{doc}");
        if i == 0 || i == 3 {
            // The tree view is answered in one step, without a fallback, fragments or not.
            assert!(app.metric(answered).await > before_answered);
            assert_eq!(app.metric(fallback).await, before_fallback);
        }
    }
}
