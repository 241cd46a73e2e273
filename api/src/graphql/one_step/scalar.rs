//! How each scalar and enum a declared field returns is written as JSON text: one encoding
//! per type, shared by every one-step writer, and unit-tested against what async-graphql
//! itself outputs for the type (`ScalarType::to_value` / `EnumType::items`).

use async_graphql::ID;
use chrono::{DateTime, Utc};

use crate::graphql::json;

/// A value a declared field may return, written exactly as async-graphql writes it.
pub trait JsonScalar {
    /// Appends the value as JSON text.
    fn write_json(&self, out: &mut String);
}

impl JsonScalar for str {
    fn write_json(&self, out: &mut String) {
        json::string(out, self);
    }
}

impl JsonScalar for String {
    fn write_json(&self, out: &mut String) {
        json::string(out, self);
    }
}

impl JsonScalar for ID {
    fn write_json(&self, out: &mut String) {
        json::string(out, self);
    }
}

impl JsonScalar for bool {
    fn write_json(&self, out: &mut String) {
        json::boolean(out, *self);
    }
}

impl JsonScalar for i32 {
    fn write_json(&self, out: &mut String) {
        json::int(out, i64::from(*self));
    }
}

impl JsonScalar for i64 {
    fn write_json(&self, out: &mut String) {
        json::int(out, *self);
    }
}

impl JsonScalar for DateTime<Utc> {
    fn write_json(&self, out: &mut String) {
        // The `DateTime` scalar is RFC 3339 text; formatting never needs escaping.
        json::string(out, &self.to_rfc3339());
    }
}

impl<T: JsonScalar + ?Sized> JsonScalar for &T {
    fn write_json(&self, out: &mut String) {
        (**self).write_json(out);
    }
}

impl<T: JsonScalar> JsonScalar for Option<T> {
    fn write_json(&self, out: &mut String) {
        match self {
            Some(v) => v.write_json(out),
            None => out.push_str("null"),
        }
    }
}

/// Typed ids (`crate::ids`) as GraphQL `ID`s: the resolver outputs the external form as
/// async-graphql's `ID` does, and the writer writes it without building a string first.
macro_rules! id_scalars {
    ($($id:ty),+ $(,)?) => {
        $(
            impl async_graphql::OutputType for $id {
                fn type_name() -> std::borrow::Cow<'static, str> {
                    <ID as async_graphql::OutputType>::type_name()
                }

                fn create_type_info(registry: &mut async_graphql::registry::Registry) -> String {
                    <ID as async_graphql::OutputType>::create_type_info(registry)
                }

                async fn resolve(
                    &self,
                    _: &async_graphql::ContextSelectionSet<'_>,
                    _: &async_graphql::Positioned<async_graphql::parser::types::Field>,
                ) -> async_graphql::ServerResult<async_graphql::Value> {
                    Ok(async_graphql::Value::String(self.encode()))
                }
            }

            impl JsonScalar for $id {
                fn write_json(&self, out: &mut String) {
                    <$id>::write_json(self, out);
                }
            }
        )+
    };
}

id_scalars!(
    crate::ids::OrganizationId,
    crate::ids::WorkspaceId,
    crate::ids::MemberId,
    crate::ids::UserId,
    crate::ids::AuditEventId,
    crate::ids::BillingAccountId,
    crate::ids::PaymentMethodId,
    crate::ids::SubscriptionId,
    crate::ids::InvoiceId,
);

/// Makes GraphQL enums (`#[derive(Enum)]`) writable: the item's GraphQL name, as a string.
macro_rules! json_enums {
    ($($enum:ty),+ $(,)?) => {
        $(impl JsonScalar for $enum {
            fn write_json(&self, out: &mut String) {
                let name = <$enum as async_graphql::resolver_utils::EnumType>::items()
                    .iter()
                    .find(|item| item.value == *self)
                    .map_or("", |item| item.name);
                json::string(out, name);
            }
        })+
    };
}

json_enums!(
    crate::graphql::resources::ResourceKind,
    crate::graphql::resources::ResetPeriod,
    crate::graphql::billing::SubscriptionStatus,
    crate::graphql::billing::Plan,
    crate::graphql::jobs::JobStatus,
    crate::graphql::archives::ArchiveCategory,
);

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::resolver_utils::{EnumType, enum_value};
    use async_graphql::{ScalarType, Value};

    fn ours(v: &impl JsonScalar) -> String {
        let mut out = String::new();
        v.write_json(&mut out);
        out
    }

    fn theirs(v: Value) -> String {
        serde_json::to_string(&v).expect("serializes")
    }

    #[test]
    fn scalars_are_written_as_async_graphql_writes_them() {
        for s in ["", "plain", "quote \" \\ \n \u{1} é 😀 \u{2028}"] {
            assert_eq!(ours(&s), theirs(s.to_string().to_value()));
            assert_eq!(ours(&s.to_string()), theirs(s.to_string().to_value()));
            assert_eq!(ours(&ID(s.into())), theirs(ID(s.into()).to_value()));
        }
        for b in [true, false] {
            assert_eq!(ours(&b), theirs(b.to_value()));
        }
        for i in [0, 1, -1, i32::MIN, i32::MAX] {
            assert_eq!(ours(&i), theirs(i.to_value()));
        }
        for i in [0, -1, i64::MIN, i64::MAX, 9_007_199_254_740_993] {
            assert_eq!(ours(&i), theirs(i.to_value()));
        }
        for t in [
            DateTime::<Utc>::UNIX_EPOCH,
            DateTime::from_timestamp_micros(1_795_000_123_456_789).expect("in range"),
            DateTime::from_timestamp(1_795_000_000, 120_000_000).expect("in range"),
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
        ] {
            assert_eq!(ours(&t), theirs(t.to_value()));
        }
        let id = crate::ids::OrganizationId::new();
        assert_eq!(ours(&id), theirs(ID(id.encode()).to_value()));
        assert_eq!(
            <crate::ids::OrganizationId as async_graphql::OutputType>::qualified_type_name(),
            <ID as async_graphql::OutputType>::qualified_type_name()
        );
        assert_eq!(ours(&None::<i64>), theirs(Value::Null));
        assert_eq!(ours(&Some(5i64)), theirs(5i64.to_value()));
    }

    fn enum_is_written_as_async_graphql_writes_it<E: EnumType + JsonScalar>() {
        for item in E::items() {
            assert_eq!(ours(&item.value), theirs(enum_value(item.value)));
        }
    }

    #[test]
    fn enums_are_written_as_async_graphql_writes_them() {
        enum_is_written_as_async_graphql_writes_it::<crate::graphql::resources::ResourceKind>();
        enum_is_written_as_async_graphql_writes_it::<crate::graphql::resources::ResetPeriod>();
    }
}
