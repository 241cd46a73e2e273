//! [`object!`](crate::object): one declaration per GraphQL object type.

/// Declares a GraphQL object type once for both execution paths.
///
/// ```ignore
/// object! {
///     #[Object(name = "Organization")]
///     /// Description of the type (after the attribute).
///     impl OrganizationObject {
///         // The object is a tuple struct whose first field is the row; `row` names it
///         // in the expressions below.
///         row: OrganizationRow;
///         fields {
///             /// Name, 1–50 characters.
///             name: &str = &row.name,
///         }
///         // Optional: fields with a guard, masking or any per-caller rule. They get a
///         // resolver only: the one-step path never writes them.
///         guarded {
///             /// Billing email (owners and admins).
///             #[graphql(guard = "Role::Admin")]
///             billing_email: Option<&str> = row.billing_email.as_deref(),
///         }
///         // Optional: the edge type of a hand-written `OneStep` impl; without it the
///         // type has no edges in one step.
///         edges: OrgEdge;
///         resolvers {
///             /// Hand-written resolvers (edges with arguments, loaders …).
///             async fn parent(&self, ctx: &Context<'_>) -> Result<Option<Organization>> { … }
///         }
///     }
/// }
/// ```
///
/// Generates the `#[Object]` impl (a resolver per field, the description from its doc
/// comment) and `one_step::Declared` (a writer per plain field, through `JsonScalar`). A
/// plain field takes doc comments only: any other attribute (a guard) does not match, so a
/// guarded field cannot be declared plain by mistake.
#[macro_export]
macro_rules! object {
    (
        // The attribute is taken token for token: re-emitted as a `meta` fragment, the
        // variables `#[Object]` defines (`child_complexity`) would be hidden from the
        // resolvers' attributes by macro hygiene.
        $pound:tt $attr:tt
        $(#[doc = $tdoc:literal])*
        impl $obj:ident {
            $row:ident : $row_ty:ty;
            fields {
                $( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $expr:expr ),* $(,)?
            }
            $(guarded {
                $( $(#[$gattr:meta])* $gfield:ident : $gty:ty = $gexpr:expr ),* $(,)?
            })?
            $(edges: $edges:ty;)?
            $(resolvers { $($resolvers:tt)* })?
        }
    ) => {
        $pound $attr
        $(#[doc = $tdoc])*
        impl $obj {
            $(
                $(#[doc = $doc])*
                async fn $field(&self) -> $ty {
                    let $row: &$row_ty = &self.0;
                    $expr
                }
            )*
            $($(
                $(#[$gattr])*
                async fn $gfield(&self) -> $gty {
                    let $row: &$row_ty = &self.0;
                    $gexpr
                }
            )*)?
            $($($resolvers)*)?
        }

        impl $crate::graphql::one_step::Declared for $obj {
            type Row = $row_ty;

            fn graphql_name() -> std::borrow::Cow<'static, str> {
                <$obj as async_graphql::OutputType>::type_name()
            }

            fn fields() -> &'static [$crate::graphql::one_step::Field<$row_ty>] {
                static FIELDS: std::sync::LazyLock<Vec<$crate::graphql::one_step::Field<$row_ty>>> =
                    std::sync::LazyLock::new(|| vec![$(
                        $crate::graphql::one_step::Field::new(
                            stringify!($field),
                            |$row: &$row_ty, out: &mut String| {
                                let value: $ty = $expr;
                                $crate::graphql::one_step::scalar::JsonScalar::write_json(&value, out)
                            },
                        ),
                    )*]);
                &FIELDS
            }

            fn guarded() -> &'static [&'static str] {
                &[$($(stringify!($gfield)),*)?]
            }
        }

        $crate::object!(@edges $obj $($edges)?);
    };
    (@edges $obj:ident $edges:ty) => {};
    (@edges $obj:ident) => {
        impl $crate::graphql::one_step::OneStep for $obj {
            type Edge = $crate::graphql::one_step::NoEdge;
            type With<'a> = ();
            const EDGES: &'static [&'static str] = &[];

            fn compile_edge(
                _: &async_graphql::ContextSelectionSet<'_>,
                _: &async_graphql::Positioned<async_graphql::parser::types::Field>,
            ) -> Option<Self::Edge> {
                None
            }

            fn write_edge(
                _: &Self::Row,
                _: (),
                edge: &Self::Edge,
                _: &mut String,
            ) -> Option<()> {
                match *edge {}
            }

            fn parts(&self) -> (&Self::Row, ()) {
                (&self.0, ())
            }
        }
    };
}
