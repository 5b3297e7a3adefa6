//! The crate's single error type.
//!
//! Library code returns [`Result`]; only the command-line front end turns an [`Error`] into a
//! message and an exit code. Every variant carries enough context to act on: which field or
//! quantity, the sizes involved, and for numerical failures the iteration count and residual.

use std::path::PathBuf;

/// Everything that can go wrong in `bilevel`. New variants may be added in minor releases, so
/// a `match` on it needs a wildcard arm.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two sizes that must agree do not.
    #[error("dimension mismatch in {what}: expected {expected}, found {found}")]
    DimensionMismatch {
        /// The quantity whose size is wrong (a field name where there is one).
        what: String,
        /// The size implied by the rest of the problem.
        expected: String,
        /// The size given.
        found: String,
    },
    /// The spacing parameter β must be finite and strictly positive (Def. 1).
    #[error("invalid beta {beta}: the spacing parameter must be finite and > 0")]
    InvalidBeta {
        /// The offending value.
        beta: f64,
    },
    /// β is outside the range where a construction is defined (e.g. the centered surrogate).
    #[error("beta {beta:e} out of range for {what}: {reason}")]
    BetaOutOfRange {
        /// The offending value.
        beta: f64,
        /// What needed it.
        what: String,
        /// Why, with the admissible range.
        reason: String,
    },
    /// NaN or ±∞ in input data.
    #[error("non-finite value in {what}")]
    NonFinite {
        /// The field or quantity that holds it.
        what: String,
    },
    /// A computed quantity is not representable in `f64` (the data's scale is too large, or
    /// too small, for the formula). Reported instead of printing `inf` or `NaN` as a result.
    #[error("{what} overflowed f64 (the problem's scale is out of range; rescale the data)")]
    Overflow {
        /// The quantity.
        what: String,
    },
    /// A result could not be computed to the accuracy the crate promises: the data's scaling
    /// (say, multipliers of 1e150 against constraint coefficients of 1) exceeds what `f64`
    /// resolves. Reported instead of numbers that contradict each other.
    #[error("{what} is inaccurate (relative residual {residual:.1e}): the data ask for more than f64 resolves")]
    Inaccurate {
        /// The computation.
        what: String,
        /// The relative residual reached.
        residual: f64,
    },
    /// A matrix that must be symmetric positive definite is not.
    #[error("{what} is not symmetric positive definite: {reason}")]
    NotPositiveDefinite {
        /// The matrix.
        what: String,
        /// Which property failed.
        reason: String,
    },
    /// An iterative solver stopped before meeting its tolerance.
    #[error("{solver} did not converge after {iterations} iterations (residual {residual:.3e})")]
    NotConverged {
        /// Solver name.
        solver: String,
        /// Iterations performed.
        iterations: usize,
        /// Final residual (solver-specific norm, documented by the solver).
        residual: f64,
    },
    /// The constraints admit no point.
    #[error("infeasible problem: {0}")]
    Infeasible(String),
    /// The objective is unbounded below on the feasible set.
    #[error("unbounded problem: {0}")]
    Unbounded(String),
    /// A linear system that must be solved is singular (e.g. LICQ fails).
    #[error("singular system: {0}")]
    Singular(String),
    /// Any other invalid argument, with the field it concerns.
    #[error("invalid input in {field}: {reason}")]
    InvalidInput {
        /// The field or argument.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A data file is missing or malformed.
    #[error("bad data file {path}: {reason}")]
    BadData {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// Every mirror failed for a file of `bilevel data fetch`.
    #[error("could not download {file}: {} — put the four MNIST .gz files into {} by hand, or point --data DIR or BILEVEL_DATA at a folder that holds them", attempts.join("; "), dir.display())]
    Download {
        /// The file.
        file: String,
        /// The directory it was meant for.
        dir: PathBuf,
        /// Each mirror's attempts, `URL: reason` (`(k attempts)` when all failed alike).
        attempts: Vec<String>,
    },
    /// Writing an output file (log, checkpoint, plot) failed.
    #[error("cannot write {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
        /// The operating system's error, when there is one (`std::error::Error::source`).
        #[source]
        source: Option<IoSource>,
    },
}

/// An operating-system error kept as the source of [`Error::Io`]: shared, so that [`Error`]
/// stays `Clone`, and compared by kind and message, so that it stays `PartialEq`.
#[derive(Debug, Clone)]
pub struct IoSource(pub std::sync::Arc<std::io::Error>);

impl IoSource {
    /// The error's kind (`NotFound`, `PermissionDenied`, `StorageFull`, …).
    pub fn kind(&self) -> std::io::ErrorKind {
        self.0.kind()
    }
}

impl PartialEq for IoSource {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.to_string() == other.0.to_string()
    }
}

impl std::fmt::Display for IoSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for IoSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Shorthand for `std::result::Result<T, bilevel::Error>`; the error type is a defaulted
/// parameter (as `std::io::Result` is not, and `anyhow::Result` is), so that code importing
/// the prelude can still write `fn main() -> Result<(), Box<dyn std::error::Error>>` or
/// `Result<(), bilevel::Error>`.
///
/// ```
/// use bilevel::nalgebra::{dvector, DMatrix};
/// use bilevel::prelude::*;
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let layer = QuadraticProblem::new(
///         DMatrix::identity(1, 1), DMatrix::identity(1, 1), dvector![0.0], LinearConstraints::none(1),
///     )?;
///     let program = Bilevel::new(layer, Loss::Linear { g: dvector![1.0] })?;
///     println!("{program:?}");
///     Ok(())
/// }
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The name of every variant's class in the foreign bindings (the Python package's
    /// `bilevel.errors`), in the order of the variants: the one list the bindings are built
    /// and tested against.
    pub const CLASS_NAMES: [&'static str; 15] = [
        "DimensionMismatchError",
        "InvalidBetaError",
        "BetaOutOfRangeError",
        "NonFiniteError",
        "FloatOverflowError",
        "InaccurateError",
        "NotPositiveDefiniteError",
        "NotConvergedError",
        "InfeasibleError",
        "UnboundedError",
        "SingularError",
        "InvalidInputError",
        "BadDataError",
        "DownloadError",
        "IoError",
    ];

    /// This error's class name ([`Error::CLASS_NAMES`]): the variant's name with `Error`
    /// (`Overflow` is `FloatOverflowError`, clear of Python's built-in `OverflowError`).
    pub fn class_name(&self) -> &'static str {
        let i = match self {
            Error::DimensionMismatch { .. } => 0,
            Error::InvalidBeta { .. } => 1,
            Error::BetaOutOfRange { .. } => 2,
            Error::NonFinite { .. } => 3,
            Error::Overflow { .. } => 4,
            Error::Inaccurate { .. } => 5,
            Error::NotPositiveDefinite { .. } => 6,
            Error::NotConverged { .. } => 7,
            Error::Infeasible(_) => 8,
            Error::Unbounded(_) => 9,
            Error::Singular(_) => 10,
            Error::InvalidInput { .. } => 11,
            Error::BadData { .. } => 12,
            Error::Download { .. } => 13,
            Error::Io { .. } => 14,
        };
        Self::CLASS_NAMES[i]
    }

    /// Shorthand for [`Error::DimensionMismatch`].
    pub fn dim(what: impl Into<String>, expected: impl ToString, found: impl ToString) -> Self {
        Error::DimensionMismatch {
            what: what.into(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }

    /// Shorthand for [`Error::InvalidInput`].
    pub fn input(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl Error {
    /// [`Error::Io`] from the operating system's error, kept as the source.
    pub fn io(path: &std::path::Path, e: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
            source: Some(IoSource(std::sync::Arc::new(e))),
        }
    }

    /// [`Error::Io`] from another library's message (a drawing backend, say).
    pub fn io_message(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            reason: reason.to_string(),
            source: None,
        }
    }
}

/// Checks that β is finite and strictly positive.
pub fn check_beta(beta: f64) -> Result<()> {
    if beta.is_finite() && beta > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidBeta { beta })
    }
}

/// Every value is finite: its exponent bits are not all ones (which is what ±∞ and NaN have).
/// An integer OR over the values, without an early exit, vectorizes: OR is associative, where
/// a floating-point sum is a serial chain the compiler may not reorder (one add's latency per
/// value), and `all` tests one value at a time. Matrices of a QP are scanned on every solve.
fn all_finite<'a>(values: impl IntoIterator<Item = &'a f64>) -> bool {
    const EXPONENT: u64 = 0x7ff0_0000_0000_0000;
    let special = values.into_iter().fold(0u64, |acc, &v| {
        acc | u64::from(v.to_bits() & EXPONENT == EXPONENT)
    });
    special == 0
}

/// Checks that every entry of a *computed* `values` is finite ([`Error::Overflow`] otherwise).
pub fn check_computed<'a>(what: &str, values: impl IntoIterator<Item = &'a f64>) -> Result<()> {
    if all_finite(values) {
        Ok(())
    } else {
        Err(Error::Overflow { what: what.into() })
    }
}

/// Checks that every entry of `values` is finite.
pub fn check_finite<'a>(what: &str, values: impl IntoIterator<Item = &'a f64>) -> Result<()> {
    if all_finite(values) {
        Ok(())
    } else {
        Err(Error::NonFinite { what: what.into() })
    }
}

#[cfg(test)]
mod class_tests {
    use super::*;

    #[test]
    fn finiteness_checks_catch_every_non_finite_value() {
        for bad in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
            assert!(check_finite("v", &[1.0, bad, 2.0]).is_err());
            assert!(check_computed("v", &[bad]).is_err());
        }
        // Largest magnitudes, signed zeros, subnormals and the empty set are finite.
        let fine = [f64::MAX, -f64::MAX, -0.0, 0.0, f64::MIN_POSITIVE / 4.0];
        assert!(check_finite("v", &fine).is_ok());
        assert!(check_finite("v", &[]).is_ok());
    }

    /// One error of every variant: each has its own class name from the list.
    #[test]
    fn every_variant_has_its_own_class_name() {
        let s = || String::from("x");
        let all = [
            Error::dim("x", 1, 2),
            Error::InvalidBeta { beta: 0.0 },
            Error::BetaOutOfRange {
                beta: 1e308,
                what: s(),
                reason: s(),
            },
            Error::NonFinite { what: s() },
            Error::Overflow { what: s() },
            Error::Inaccurate {
                what: s(),
                residual: 1.0,
            },
            Error::NotPositiveDefinite {
                what: s(),
                reason: s(),
            },
            Error::NotConverged {
                solver: s(),
                iterations: 1,
                residual: 1.0,
            },
            Error::Infeasible(s()),
            Error::Unbounded(s()),
            Error::Singular(s()),
            Error::input("x", "y"),
            Error::BadData {
                path: "p".into(),
                reason: s(),
            },
            Error::Download {
                file: s(),
                dir: "d".into(),
                attempts: vec![],
            },
            Error::Io {
                path: "p".into(),
                reason: s(),
                source: None,
            },
        ];
        let names: Vec<&str> = all.iter().map(Error::class_name).collect();
        assert_eq!(names, Error::CLASS_NAMES);
    }
}
