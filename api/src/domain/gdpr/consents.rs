//! Consents: each person records their own decisions (`recordConsent`); every decision is
//! kept (append-only, with when and by which request), and the latest per purpose is the
//! state (`User.consents`, read by the person alone).

use diesel_async::AsyncPgConnection;

use super::super::mutation::{self, Effect};
use super::super::{Actor, DomainError, DomainResult, Services, excerpt};
use crate::db::repo::consents::{self as repo, ConsentRow};
use crate::db::repo::erasure;
use crate::ids::UserId;

/// Longest purpose.
pub const PURPOSE_MAX: usize = 64;
/// Longest version.
pub const VERSION_MAX: usize = 32;

/// Input of `record`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewConsent {
    /// What the consent is for, e.g. `marketing.email`.
    pub purpose: String,
    /// The version of the text agreed to (or refused).
    pub version: String,
    /// Given, or refused / withdrawn.
    pub granted: bool,
}

/// Checks a purpose: 1–64 characters of `a-z 0-9 _ . : -`, starting with a letter (a key,
/// not free text: it holds nothing personal). Length first, so a huge input costs nothing.
pub fn check_purpose(p: &str) -> DomainResult<()> {
    let ok = (1..=PURPOSE_MAX).contains(&p.len())
        && p.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && p.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b':' | b'-')
        });
    if ok {
        return Ok(());
    }
    Err(DomainError::bad_input(
        "purpose",
        format!(
            "purpose must be 1 to {PURPOSE_MAX} characters of a-z, 0-9, `_`, `.`, `:` and `-`, \
             starting with a letter (got `{}`)",
            excerpt(p)
        ),
    ))
}

/// Checks a version: 1–32 characters of `A-Z a-z 0-9 _ . + -`, starting with a letter or
/// digit.
pub fn check_version(v: &str) -> DomainResult<()> {
    let ok = (1..=VERSION_MAX).contains(&v.len())
        && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'));
    if ok {
        return Ok(());
    }
    Err(DomainError::bad_input(
        "version",
        format!(
            "version must be 1 to {VERSION_MAX} characters of letters, digits, `_`, `.`, `+` \
             and `-` (got `{}`)",
            excerpt(v)
        ),
    ))
}

/// `recordConsent`: appends the caller's decision.
pub async fn record(
    services: &Services,
    actor: &Actor,
    input: NewConsent,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<ConsentRow>> {
    actor.gate.person_only("record consents")?;
    check_purpose(&input.purpose)?;
    check_version(&input.version)?;
    mutation::run(
        services,
        actor,
        "recordConsent",
        key,
        &input,
        |c, _| -> Effect<'_, _> { Box::pin(record_effect(c, actor.clone(), input.clone())) },
    )
    .await
}

async fn record_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    input: NewConsent,
) -> DomainResult<ConsentRow> {
    refuse_if_erased(conn, &actor).await?;
    Ok(repo::insert(
        conn,
        actor.user_id.0,
        &input.purpose,
        &input.version,
        input.granted,
        &actor.request_id,
    )
    .await?)
}

/// An identity whose erasure was requested acts no more (another process may still hold it
/// in its identity cache for up to a minute).
pub(super) async fn refuse_if_erased(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
) -> DomainResult<()> {
    if erasure::find(conn, actor.user_id.0).await?.is_some() {
        return Err(DomainError::Unauthenticated(
            "this account was erased; it cannot sign in again".into(),
        ));
    }
    Ok(())
}

/// The latest decision per purpose of `user`, who must be the caller.
pub async fn latest(
    services: &Services,
    actor: &Actor,
    user: UserId,
) -> DomainResult<Vec<ConsentRow>> {
    if user != actor.user_id {
        return Err(DomainError::Forbidden(
            "only the person themself may read their consents".into(),
        ));
    }
    let mut conn = services.conn().await?;
    Ok(repo::latest(&mut conn, user.0).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_and_versions_are_keys() {
        for ok in ["marketing", "marketing.email", "a", "terms:v2-eu_1"] {
            assert!(check_purpose(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(PURPOSE_MAX + 1);
        for bad in [
            "",
            "Marketing",
            "1st",
            "x y",
            "a\u{0}",
            "é",
            long.as_str(),
            "<script>",
        ] {
            assert!(check_purpose(bad).is_err(), "{bad:?}");
        }
        assert!(check_purpose(&"a".repeat(PURPOSE_MAX)).is_ok());
        for ok in ["1", "2024-01", "v1.2+eu", "A_b"] {
            assert!(check_version(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-1", "v 1", "v\n1", &"1".repeat(VERSION_MAX + 1)] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
        // The refusal quotes a bounded, printable excerpt.
        let huge = "a".repeat(1 << 20) + "\u{7}";
        let DomainError::BadInput { message, .. } = check_purpose(&huge).expect_err("refused")
        else {
            panic!("bad input expected")
        };
        assert!(message.len() < 300, "{message}");
    }
}
