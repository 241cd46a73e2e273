//! Enums stored as text: the variants and their stored names are declared once, and the
//! conversions in both directions (Rust, SQL, serde) are generated from that declaration,
//! like crates.io's `pg_enum!` does for integers.

/// Declares an enum whose values are stored in a `text` column (with a `CHECK` constraint
/// listing the same names): `as_str`, `parse`, diesel's `ToSql`/`FromSql` for `Text`, and
/// serde under the stored names.
#[macro_export]
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $stored:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash,
            diesel::deserialize::FromSqlRow, diesel::expression::AsExpression,
            serde::Serialize, serde::Deserialize,
        )]
        #[diesel(sql_type = diesel::sql_types::Text)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $stored)] $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored (and wire) name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $stored,)+
                }
            }

            /// The value stored as `s`.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($stored => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                <str as diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg>>::to_sql(
                    self.as_str(),
                    &mut out.reborrow(),
                )
            }
        }

        impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn from_sql(bytes: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
                let s = std::str::from_utf8(bytes.as_bytes())?;
                $name::parse(s).ok_or_else(|| {
                    format!(concat!("unknown ", stringify!($name), " `{}`"), s).into()
                })
            }
        }
    };
}
