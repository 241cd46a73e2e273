//! Decoding helpers for the rows a tree view reads by the hundred.

use chrono::{DateTime, Utc};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::pg::{Pg, PgValue};
use diesel::row::NamedRow;
use diesel::sql_types::Timestamptz;

/// Column `i` of a raw SQL row, by position. `sql_query` rows are read by column name,
/// which scans the row's column names for every field; the hot statements (children pages,
/// usage) are decoded by position instead, from a [`positional_row!`](crate::positional_row)
/// declaration that also writes their select list.
pub fn col<'a, ST, T>(row: &impl NamedRow<'a, Pg>, i: usize) -> deserialize::Result<T>
where
    T: FromSql<ST, Pg>,
{
    diesel::row::Row::get_value::<ST, T, usize>(row, i)
}

/// Declares a row decoded by position: the struct, its select list (`select_list`, the
/// columns quoted, in declaration order) and the decoder (`QueryableByName`, reading column
/// `i` for the `i`-th field) come from one list, so the two cannot drift apart. Each field
/// names its SQL type after `=`.
#[macro_export]
macro_rules! positional_row {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $sql:ty ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )+
        }

        impl $name {
            /// The columns this row is decoded from, in order.
            pub const COLUMNS: &'static [&'static str] = &[$(stringify!($field)),+];

            /// The select list of the statements that read this row (`"a", "b", …`).
            pub fn select_list() -> String {
                Self::COLUMNS
                    .iter()
                    .map(|c| format!("\"{c}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        }

        impl diesel::QueryableByName<diesel::pg::Pg> for $name {
            #[allow(unused_assignments)]
            fn build<'a>(
                row: &impl diesel::row::NamedRow<'a, diesel::pg::Pg>,
            ) -> diesel::deserialize::Result<Self> {
                let mut i = 0usize;
                Ok(Self {
                    $($field: {
                        let v = $crate::db::row::col::<$sql, _>(row, i)?;
                        i += 1;
                        v
                    },)+
                })
            }
        }
    };
}

/// A `timestamptz` as PostgreSQL sends it (microseconds since 2000-01-01 UTC), turned into a
/// date and time only when shown: a page decodes hundreds of organizations whose creation
/// time is seldom asked for. Serialized as the date and time it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, FromSqlRow)]
#[diesel(sql_type = Timestamptz)]
pub struct Timestamp(i64);

/// 2000-01-01T00:00:00Z, PostgreSQL's epoch, in Unix microseconds.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

impl Timestamp {
    /// The date and time (PostgreSQL's `±infinity` saturate).
    pub fn to_datetime(self) -> DateTime<Utc> {
        self.0
            .checked_add(PG_EPOCH_UNIX_MICROS)
            .and_then(DateTime::from_timestamp_micros)
            .unwrap_or(if self.0 < 0 {
                DateTime::<Utc>::MIN_UTC
            } else {
                DateTime::<Utc>::MAX_UTC
            })
    }

    /// The timestamp of a date and time.
    pub fn from_datetime(t: DateTime<Utc>) -> Self {
        Self(t.timestamp_micros() - PG_EPOCH_UNIX_MICROS)
    }
}

impl FromSql<Timestamptz, Pg> for Timestamp {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        let bytes: [u8; 8] = value
            .as_bytes()
            .try_into()
            .map_err(|_| "a timestamptz is 8 bytes")?;
        Ok(Self(i64::from_be_bytes(bytes)))
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_datetime().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DateTime::<Utc>::deserialize(d).map(Self::from_datetime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_convert_like_chrono_decoding() {
        for micros in [0, 1, -1, 815_000_123_456, -946_684_800_000_000] {
            let t = Timestamp(micros);
            let expected =
                DateTime::from_timestamp_micros(micros + PG_EPOCH_UNIX_MICROS).expect("in range");
            assert_eq!(t.to_datetime(), expected);
            assert_eq!(Timestamp::from_datetime(expected), t);
        }
        assert_eq!(Timestamp(i64::MAX).to_datetime(), DateTime::<Utc>::MAX_UTC);
        assert_eq!(Timestamp(i64::MIN).to_datetime(), DateTime::<Utc>::MIN_UTC);
    }
}
