//! The one-step path against a test-only declaration: plain fields are written in one step,
//! a guarded field never is.

use std::sync::Arc;

use async_graphql::{
    Context, EmptyMutation, EmptySubscription, Guard, Object, Request, Result, Schema,
};

use super::{Fast, FastList, Switch, camel_case, check};

struct Row {
    name: String,
    secret: String,
}

struct Thing(Row);

/// Refuses every caller (a stand-in for a role check).
struct Deny;

impl Guard for Deny {
    async fn check(&self, _: &Context<'_>) -> Result<()> {
        Err("denied by the guard".into())
    }
}

crate::object! {
    #[Object(name = "Thing")]
    /// A test-only type.
    impl Thing {
        row: Row;
        fields {
            /// A plain field.
            name: &str = &row.name,
        }
        guarded {
            /// A field only some callers may read.
            #[graphql(guard = "Deny")]
            secret_value: &str = &row.secret,
        }
    }
}

fn thing() -> Fast<Thing> {
    Fast(Thing(Row {
        name: "visible".into(),
        secret: "hidden".into(),
    }))
}

struct Query;

#[Object]
impl Query {
    async fn thing(&self) -> Fast<Thing> {
        thing()
    }

    async fn things(&self) -> FastList<Fast<Thing>> {
        FastList(vec![thing(), thing()])
    }
}

/// Runs `query` with the one-step path on: (response JSON, answered, fallback).
async fn run(query: &str) -> (serde_json::Value, u64, u64) {
    let schema = Schema::new(Query, EmptyMutation, EmptySubscription);
    let switch = Arc::new(Switch::new(true, false));
    let response = schema
        .execute(Request::new(query).data(switch.clone()))
        .await;
    let (answered, fallback) = switch.outcomes();
    (
        serde_json::to_value(&response).expect("serializes"),
        answered,
        fallback,
    )
}

#[tokio::test]
async fn plain_fields_are_answered_in_one_step() {
    let (r, answered, fallback) = run("{ thing { name __typename } things { name } }").await;
    assert_eq!(
        r["data"],
        serde_json::json!({
            "thing": {"name": "visible", "__typename": "Thing"},
            "things": [{"name": "visible"}, {"name": "visible"}],
        })
    );
    assert_eq!((answered, fallback), (2, 0));
}

#[tokio::test]
async fn a_guarded_field_is_never_written_by_the_one_step_path() {
    for query in [
        "{ thing { name secretValue } }",
        "{ things { secretValue } }",
        "{ thing { ...F } } fragment F on Thing { name secretValue }",
        "{ things { ... on Thing { secretValue } } }",
    ] {
        let (r, answered, fallback) = run(query).await;
        assert_eq!(answered, 0, "{query}: {r}");
        assert!(fallback >= 1, "{query}: {r}");
        assert!(
            !r.to_string().contains("hidden"),
            "{query}: the guarded value leaked: {r}"
        );
        assert_eq!(
            r["errors"][0]["message"], "denied by the guard",
            "{query}: {r}"
        );
    }
}

#[test]
fn declarations_match_the_registry() {
    check::<Thing>().expect("Thing matches");
    super::check_all().expect("every declared type matches");
    assert_eq!(camel_case("created_at"), "createdAt");
    assert_eq!(camel_case("secret_value"), "secretValue");
    assert_eq!(camel_case("id"), "id");
}
