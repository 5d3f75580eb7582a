//! `named_enum!`: the config names of unit-only enums, in one place per enum.
//!
//! Every enum a config names (`kind`, `targets`, mask strategy and pattern, ramp shape) gets
//! `ALL`, `as_str`, `Display` and `FromStr` from the same table as its serde names, so a name
//! printed in an error is always one the parser accepts.

/// Implements `ALL`, `as_str`, `Display` and `FromStr` for a unit-only enum whose serde names
/// are given explicitly (they must match the serde names of the enum's variants).
macro_rules! named_enum {
    ($ty:ident, $field:literal, { $($var:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$var),+];

            /// The name used in configs (identical to the serde name).
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$var => $s),+ }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::error::SpecError;

            fn from_str(s: &str) -> Result<Self, $crate::error::SpecError> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    $crate::error::SpecError::Unknown {
                        field: $field.to_string(),
                        value: s.to_string(),
                        expected: Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                    }
                })
            }
        }
    };
}

pub(crate) use named_enum;
