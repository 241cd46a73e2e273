//! Identity: token verification and just-in-time provisioning.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tests::tokens::{Tokens, now};
use tests::{TestApp, assert_code};

const VIEWER: &str = "{ viewer { email name } }";

async fn status_of(app: &TestApp, token: Option<&str>) -> (u16, Value) {
    app.gql_raw(token, json!({"query": VIEWER})).await
}

#[tokio::test]
async fn valid_hs256_and_rs256_tokens_are_accepted() {
    let app = TestApp::spawn().await;
    let (s, body) = status_of(&app, Some(&app.user("ann@example.com"))).await;
    assert_eq!(s, 200);
    assert_eq!(body["data"]["viewer"]["email"], "ann@example.com");

    let rs = app
        .tokens
        .rs256_claims(&Tokens::claims("auth0|rs", "Rob@Example.com", true));
    let (s, body) = status_of(&app, Some(&rs)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["data"]["viewer"]["email"], "rob@example.com");
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401() {
    let app = TestApp::spawn().await;
    let t = &app.tokens;
    let base = Tokens::claims("auth0|x", "x@example.com", true);
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let none_claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&base).expect("claims"));
    // Algorithm confusion: an HS256 token whose "secret" is the public RSA key material.
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &base,
        &jsonwebtoken::EncodingKey::from_secret(tests::tokens::JWKS.as_bytes()),
    )
    .expect("sign");
    let mut unknown_kid = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    unknown_kid.kid = Some("someone-elses-key".into());
    let unknown_kid = jsonwebtoken::encode(
        &unknown_kid,
        &base,
        &jsonwebtoken::EncodingKey::from_rsa_pem(tests::tokens::RSA_PEM.as_bytes()).expect("key"),
    )
    .expect("sign");
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("garbage", Some("not.a.jwt".into())),
        (
            "expired",
            Some(t.hs256_claims(&with("exp", json!(now() - 3600)))),
        ),
        (
            "not yet valid",
            Some(t.hs256_claims(&with("nbf", json!(now() + 3600)))),
        ),
        (
            "wrong issuer",
            Some(t.hs256_claims(&with("iss", json!("https://evil.test/")))),
        ),
        (
            "wrong audience",
            Some(t.hs256_claims(&with("aud", json!("someone-else")))),
        ),
        (
            "string exp",
            Some(t.hs256_claims(&with("exp", json!((now() + 3600).to_string())))),
        ),
        (
            "string nbf",
            Some(t.hs256_claims(&with("nbf", json!(now().to_string())))),
        ),
        (
            "no sub",
            Some(t.hs256_claims(&{
                let mut c = base.clone();
                c.as_object_mut().expect("object").remove("sub");
                c
            })),
        ),
        ("alg none", Some(format!("{none_header}.{none_claims}."))),
        (
            "alg none, no dot",
            Some(format!("{none_header}.{none_claims}")),
        ),
        ("hs256 signed with the public key", Some(confused)),
        ("unknown kid", Some(unknown_kid)),
        (
            "rs256 expired",
            Some(t.rs256_claims(&with("exp", json!(now() - 3600)))),
        ),
        (
            "rs256 wrong audience",
            Some(t.rs256_claims(&with("aud", json!("nope")))),
        ),
        (
            "tampered",
            Some({
                let good = t.hs256_claims(&base);
                let mut parts: Vec<String> = good.split('.').map(String::from).collect();
                parts[1] = URL_SAFE_NO_PAD.encode(
                    serde_json::to_vec(&with("sub", json!("auth0|admin"))).expect("claims"),
                );
                parts.join(".")
            }),
        ),
    ];
    for (what, token) in cases {
        let (s, body) = status_of(&app, token.as_deref()).await;
        assert_eq!(s, 401, "{what}: {body}");
        assert_code(&body, "UNAUTHENTICATED");
        assert!(
            body.get("data").is_none_or(Value::is_null),
            "{what}: {body}"
        );
    }
}

#[tokio::test]
async fn expired_token_within_leeway_is_accepted() {
    let app = TestApp::spawn().await;
    let mut c = Tokens::claims("auth0|skew", "skew@example.com", true);
    c["exp"] = json!(now() - 5);
    let (s, body) = status_of(&app, Some(&app.tokens.hs256_claims(&c))).await;
    assert_eq!(s, 200, "{body}");
}
