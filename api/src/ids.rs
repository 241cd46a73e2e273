//! Typed ids used across every layer, and how they look on the wire.
//!
//! In GraphQL every id is opaque and prefixed by its type (`ws_…`, `mem_…`), so that
//! `node(id:)` knows what to load and a client cannot pass a member id where a workspace
//! id is expected. The part after the prefix is the UUID (v7: time-ordered) in hex.

use uuid::Uuid;

/// A hash map keyed by ids (or tuples holding them) with a fast hasher. Building a page
/// looks ids up thousands of times (parents, ancestors, each ancestor's counters), and
/// SipHash cost more than the lookups themselves; foldhash is randomly seeded per process.
pub type IdMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A hash set of ids with the fast hasher of [`IdMap`].
pub type IdSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The distinct ids of `ids`, in first-seen order (cheaper than sorting and deduplicating
/// the hundreds of ancestor ids of a page).
pub fn distinct<K: std::hash::Hash + Eq + Copy>(ids: impl IntoIterator<Item = K>) -> Vec<K> {
    let ids = ids.into_iter();
    let mut seen = IdSet::with_capacity_and_hasher(ids.size_hint().0, Default::default());
    ids.filter(|id| seen.insert(*id)).collect()
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// The wire prefix of this kind of id.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The opaque external form, e.g. `ws_0193…`.
            pub fn encode(&self) -> String {
                let mut hex = [0u8; uuid::fmt::Simple::LENGTH];
                let mut s = String::with_capacity($prefix.len() + 1 + hex.len());
                s.push_str($prefix);
                s.push('_');
                s.push_str(self.0.simple().encode_lower(&mut hex));
                s
            }

            /// Appends the external form as a JSON string (nothing in it needs escaping).
            pub fn write_json(&self, out: &mut String) {
                let mut hex = [0u8; uuid::fmt::Simple::LENGTH];
                out.push_str(concat!("\"", $prefix, "_"));
                out.push_str(self.0.simple().encode_lower(&mut hex));
                out.push('"');
            }

            /// Parses the external form; `None` for anything else (which callers treat
            /// exactly like an id that does not exist).
            pub fn decode(s: &str) -> Option<Self> {
                let rest = s.strip_prefix($prefix)?.strip_prefix('_')?;
                if rest.len() != 32 {
                    return None;
                }
                Uuid::try_parse(rest).ok().map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.encode())
            }
        }
    };
}

typed_id!(
    /// A person who signs in (or has been invited to).
    UserId,
    "usr"
);
typed_id!(
    /// A workspace (tenant).
    WorkspaceId,
    "ws"
);
typed_id!(
    /// A membership of a user in a workspace.
    MemberId,
    "mem"
);
typed_id!(
    /// An organization (a node of a workspace's tree).
    OrganizationId,
    "org"
);
typed_id!(
    /// An audit event.
    AuditEventId,
    "aud"
);
typed_id!(
    /// A billing account (its Stripe customer id is `stripeCustomerId`).
    BillingAccountId,
    "ba"
);
typed_id!(
    /// A payment method of a billing account.
    PaymentMethodId,
    "pmt"
);
typed_id!(
    /// An archive of a workspace's expired rows.
    ArchiveId,
    "arc"
);

typed_id!(
    /// A subscription of a billing account.
    SubscriptionId,
    "subs"
);
typed_id!(
    /// An invoice of a billing account.
    InvoiceId,
    "inv"
);
typed_id!(
    /// An invitation to join a workspace (`inv_` is an invoice's).
    InvitationId,
    "invt"
);
typed_id!(
    /// A webhook endpoint of a workspace's integration settings.
    WebhookEndpointId,
    "we"
);
typed_id!(
    /// A notification (something that happened that a workspace is told about).
    NotificationId,
    "ntf"
);
typed_id!(
    /// A delivery of a notification to one destination.
    NotificationDeliveryId,
    "ndl"
);
typed_id!(
    /// A data export: one sealed JSON document about one person.
    DataExportId,
    "dex"
);
typed_id!(
    /// An API key (a service account of one workspace).
    ApiKeyId,
    "key"
);
typed_id!(
    /// A sensitive mutation held for a second person's approval.
    ApprovalRequestId,
    "apr"
);
typed_id!(
    /// A custom workspace template (built-in ones have fixed ids).
    WorkspaceTemplateId,
    "tpl"
);

/// A background job: apalis's ULID behind the `job_` prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl JobId {
    /// The wire prefix.
    pub const PREFIX: &'static str = "job";

    /// The opaque external form, `job_<ULID>`.
    pub fn encode(&self) -> String {
        format!("job_{}", self.0)
    }

    /// Parses the external form: `job_` and 26 characters of Crockford's base32 (upper
    /// case, as apalis writes them); `None` for anything else.
    pub fn decode(s: &str) -> Option<Self> {
        let ulid = s.strip_prefix("job_")?;
        let valid = ulid.len() == 26
            && ulid.as_bytes()[0] <= b'7'
            && ulid
                .bytes()
                .all(|b| b.is_ascii_digit() || (b.is_ascii_uppercase() && !b"ILOU".contains(&b)));
        valid.then(|| Self(ulid.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_ulids_behind_their_prefix() {
        let id = JobId::decode("job_01KB2ZJ0R5V8Y3T6W9X2M4N7PQ").expect("valid");
        assert_eq!(id.encode(), "job_01KB2ZJ0R5V8Y3T6W9X2M4N7PQ");
        for bad in [
            "",
            "job_",
            "01KB2ZJ0R5V8Y3T6W9X2M4N7PQ",
            "job_01kb2zj0r5v8y3t6w9x2m4n7pq",
            "job_01KB2ZJ0R5V8Y3T6W9X2M4N7P",
            "job_01KB2ZJ0R5V8Y3T6W9X2M4N7PQQ",
            "job_81KB2ZJ0R5V8Y3T6W9X2M4N7PQ",
            "job_01KB2ZJ0R5V8Y3T6W9X2M4N7PI",
            "ws_01KB2ZJ0R5V8Y3T6W9X2M4N7PQ",
        ] {
            assert_eq!(JobId::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn round_trip_and_reject_foreign_prefix() {
        let id = WorkspaceId::new();
        assert_eq!(WorkspaceId::decode(&id.encode()), Some(id));
        assert_eq!(MemberId::decode(&id.encode()), None);
        assert_eq!(WorkspaceId::decode("ws_nothex"), None);
        assert_eq!(WorkspaceId::decode(""), None);
    }

    #[test]
    fn only_the_canonical_form_decodes() {
        let id = OrganizationId::new();
        let text = id.encode();
        let hex = text.trim_start_matches("org_");
        // The hyphenated, braced and URN forms Uuid::parse accepts are not ids of ours.
        let hyphenated = format!("org_{}", id.0.hyphenated());
        assert_eq!(OrganizationId::decode(&hyphenated), None);
        assert_eq!(OrganizationId::decode(&format!("org_{{{hex}}}")), None);
        for bad in [
            format!("org_{hex}\u{0}"),
            format!("org_{}", &hex[..31]),
            format!("org__{hex}"),
            format!("ORG_{hex}"),
            format!(" org_{hex}"),
        ] {
            assert_eq!(OrganizationId::decode(&bad), None, "{bad:?}");
        }
        // JSON writing matches the text form.
        let mut json = String::new();
        id.write_json(&mut json);
        assert_eq!(json, format!("\"{text}\""));
    }
}
