//! The crate's error types: [`SpecError`] for configuration problems, [`CoreError`] for
//! everything else (shape mismatches in the math).

/// A problem with an adapter specification. Every message starts with the dotted path of the
/// field at fault (`adapter.mlae.expert_dropout`, `adapter.mlae.mask.expert_dropout_per_layer[3]`,
/// ...), so a user can find it in their config without reading code.
///
/// ```
/// use mlae_core::{AdapterSpec, MlaeSpec};
/// let spec = AdapterSpec { mlae: MlaeSpec { expert_dropout: 1.2, ..Default::default() }, ..Default::default() };
/// let err = spec.validate().unwrap_err();
/// assert_eq!(err.to_string(), "adapter.mlae.expert_dropout: 1.2 is outside [0, 1)");
/// assert_eq!(err.field(), "adapter.mlae.expert_dropout");
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// A number outside its allowed range.
    #[error("{field}: {value} is outside {range}")]
    OutOfRange {
        /// Dotted path of the field.
        field: String,
        /// The offending value, as written.
        value: String,
        /// The allowed range, e.g. `[0, 1)`.
        range: &'static str,
    },
    /// A per-block list whose length is not the model's depth.
    #[error("{field}: has {len} entries but the model has {depth} blocks")]
    WrongLength {
        /// Dotted path of the field.
        field: String,
        /// Entries given.
        len: usize,
        /// Blocks in the model.
        depth: usize,
    },
    /// A name that is not one of the known values (from `FromStr`; serde reports its own).
    #[error("{field}: unknown value `{value}`; expected one of {expected}")]
    Unknown {
        /// Dotted path of the field.
        field: String,
        /// The name given.
        value: String,
        /// The accepted names, comma-separated.
        expected: String,
    },
    /// Any other invalid or contradictory setting, explained in `message`.
    #[error("{field}: {message}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Keys of an older config layout; `message` names the new key of each (`adapter.dropout
    /// was renamed: use adapter.mlae.expert_dropout (mlae), ...`).
    #[error("{message}")]
    Renamed {
        /// Dotted path of the first old key found.
        field: String,
        /// One sentence per old key, naming its replacement.
        message: String,
    },
}

impl SpecError {
    /// The dotted path of the field at fault, e.g. `adapter.mlae.mask.pattern`.
    pub fn field(&self) -> &str {
        match self {
            SpecError::OutOfRange { field, .. }
            | SpecError::WrongLength { field, .. }
            | SpecError::Unknown { field, .. }
            | SpecError::Invalid { field, .. }
            | SpecError::Renamed { field, .. } => field,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError::Invalid { field: field.into(), message: message.into() }
    }

    pub(crate) fn out_of_range(field: impl Into<String>, value: impl ToString, range: &'static str) -> Self {
        SpecError::OutOfRange { field: field.into(), value: value.to_string(), range }
    }

    /// A probability that must be in [0, 1) (1 would drop everything).
    pub(crate) fn check_unit_open(field: impl Into<String>, v: f64) -> Result<(), SpecError> {
        if v.is_finite() && (0.0..1.0).contains(&v) {
            Ok(())
        } else {
            Err(Self::out_of_range(field, v, "[0, 1)"))
        }
    }

    /// A fraction of training, in [0, 1].
    pub(crate) fn check_unit_closed(field: impl Into<String>, v: f64) -> Result<(), SpecError> {
        if v.is_finite() && (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(Self::out_of_range(field, v, "[0, 1]"))
        }
    }

    /// A count that must be at least 1.
    pub(crate) fn check_positive(field: &str, n: usize) -> Result<(), SpecError> {
        if n == 0 { Err(Self::invalid(field, "must be at least 1")) } else { Ok(()) }
    }

    /// A scale that must be finite and non-zero: zero would leave a low-rank update with
    /// `B = 0` at the start without any gradient, forever.
    pub(crate) fn check_live_scale(field: &str, v: f64) -> Result<(), SpecError> {
        if v.is_finite() && v != 0.0 { Ok(()) } else { Err(Self::out_of_range(field, v, "finite, non-zero")) }
    }
}

/// Any error of this crate.
///
/// ```
/// use mlae_core::{try_merge_delta, CoreError};
/// use ndarray::{Array1, Array2};
/// // A has 4 rows but B has 3: the experts do not line up.
/// let err = try_merge_delta(
///     Array2::<f32>::zeros((4, 5)).view(),
///     Array2::<f32>::zeros((3, 6)).view(),
///     Array1::<f32>::ones(4).view(),
///     None,
///     1,
/// )
/// .unwrap_err();
/// assert!(matches!(err, CoreError::Shape { .. }));
/// assert!(err.to_string().starts_with("B: has 3 rows"));
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    /// An invalid adapter specification.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Arrays whose shapes do not fit together.
    #[error("{what}: {message}")]
    Shape {
        /// Which argument (`A`, `B`, `lambda`, `mask`, `expert_rank`).
        what: &'static str,
        /// What was expected and what was given.
        message: String,
    },
}
