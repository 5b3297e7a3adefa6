//! The QP and what every solver of it shares: the problem ([`Qp`]), the backends' interface
//! ([`QpBackend`], [`QpRaw`]), the classification of its rows ([`Tolerances`], [`Activity`]) and
//! the exactly refined result ([`ExactQp`]).

use nalgebra::{DMatrix, DVector};

use crate::error::{check_finite, Error, Result};

/// A convex QP `min ½xᵀPx + qᵀx  s.t.  A x ≥ b, A_eq x = b_eq` (see the module docs).
#[derive(Debug, Clone)]
pub struct Qp {
    /// Symmetric positive (semi)definite `n × n` Hessian.
    pub p: DMatrix<f64>,
    /// Linear term, length `n`.
    pub q: DVector<f64>,
    /// Inequality rows (`m × n`), `A x ≥ b`.
    pub a: DMatrix<f64>,
    /// Inequality right-hand side, length `m`.
    pub b: DVector<f64>,
    /// Equality rows (`k × n`).
    pub a_eq: DMatrix<f64>,
    /// Equality right-hand side, length `k`.
    pub b_eq: DVector<f64>,
}

impl Qp {
    /// Number of variables.
    pub fn n(&self) -> usize {
        self.p.nrows()
    }

    /// Checks shapes and finiteness.
    pub fn validate(&self) -> Result<()> {
        let n = self.n();
        if self.p.ncols() != n {
            return Err(Error::dim(
                "P",
                format!("{n} x {n}"),
                format!("{n} x {}", self.p.ncols()),
            ));
        }
        if self.q.len() != n {
            return Err(Error::dim("q", n, self.q.len()));
        }
        if self.a.ncols() != n || self.a.nrows() != self.b.len() {
            return Err(Error::dim(
                "A, b",
                format!("{} x {n}", self.b.len()),
                format!("{} x {}", self.a.nrows(), self.a.ncols()),
            ));
        }
        if self.a_eq.ncols() != n || self.a_eq.nrows() != self.b_eq.len() {
            return Err(Error::dim(
                "A_eq, b_eq",
                format!("{} x {n}", self.b_eq.len()),
                format!("{} x {}", self.a_eq.nrows(), self.a_eq.ncols()),
            ));
        }
        check_finite("P", self.p.iter())?;
        check_finite("q", self.q.iter())?;
        check_finite("A", self.a.iter())?;
        check_finite("b", self.b.iter())?;
        check_finite("A_eq", self.a_eq.iter())?;
        check_finite("b_eq", self.b_eq.iter())
    }
}

/// What a backend returns: an approximate primal-dual point.
#[derive(Debug, Clone)]
pub struct QpRaw {
    /// Primal point.
    pub x: DVector<f64>,
    /// Inequality multipliers (`≥ 0` up to the backend's accuracy).
    pub lambda: DVector<f64>,
    /// Equality multipliers.
    pub lambda_eq: DVector<f64>,
    /// Backend iterations.
    pub iterations: usize,
    /// `true` when the backend reported reduced accuracy (`AlmostSolved`, `SolvedInaccurate`).
    pub reduced_accuracy: bool,
}

/// A QP solver. Implementations map their own status codes to [`Error`]s:
/// primal infeasible → [`Error::Infeasible`], dual infeasible → [`Error::Unbounded`],
/// iteration limit / numerical trouble → [`Error::NotConverged`].
pub trait QpBackend: Send + Sync {
    /// Short name used in diagnostics (`"clarabel"`, `"osqp"`).
    fn name(&self) -> &'static str;
    /// Solves `qp` approximately.
    fn solve(&self, qp: &Qp) -> Result<QpRaw>;
}

/// Tolerances used to *classify* constraints after the exact solve (the solve itself enforces
/// the sign conditions to rounding level, see [`refine`](super::refine)). Both are relative: the feasibility
/// tolerance is scaled by `1 + max|b|`, the multiplier tolerance by `1 + max|q| + max|P|·max|x|`.
///
/// After the exact KKT solve the computed slacks and multipliers are accurate to about
/// `cond · 1e-16`, so the defaults (`1e-9`) separate exact zeros from true non-zeros on
/// problems with condition numbers up to about `1e6`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerances {
    /// A slack `a_iᵀx − b_i` at or below this (relative) is active. Default `1e-9`.
    pub feasibility: f64,
    /// An active constraint whose multiplier is above this (relative) is strongly active,
    /// otherwise weakly active. Default `1e-9`.
    pub multiplier: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Self {
            feasibility: 1e-9,
            multiplier: 1e-9,
        }
    }
}

impl Tolerances {
    /// Checks both tolerances: finite, `≥ 0` and below 1 (they are relative).
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] naming `feasibility` or `multiplier`.
    pub fn validate(&self) -> crate::Result<()> {
        for (name, v) in [
            ("feasibility", self.feasibility),
            ("multiplier", self.multiplier),
        ] {
            if !(v.is_finite() && (0.0..1.0).contains(&v)) {
                return Err(crate::Error::input(
                    format!("tolerances.{name}"),
                    format!("{v} is not a relative tolerance in [0, 1)"),
                ));
            }
        }
        Ok(())
    }
}

/// The classification of inequalities (defined with the other Prop. 2 terms in [`crate::prox`],
/// the bottom layer, so that nothing below `solve` imports it from here).
pub use crate::prox::Activity;

/// An exactly refined QP solution with its diagnostics.
#[derive(Debug, Clone)]
#[must_use]
pub struct ExactQp {
    /// Primal solution.
    pub x: DVector<f64>,
    /// Inequality multipliers, exactly 0 off the working set.
    pub lambda: DVector<f64>,
    /// Equality multipliers.
    pub lambda_eq: DVector<f64>,
    /// Slacks `A x − b`.
    pub slack: DVector<f64>,
    /// Classification of each inequality.
    pub activity: Vec<Activity>,
    /// The working set the exact KKT solve used (`true`: treated as equality).
    pub working: Vec<bool>,
    /// Condition estimate of the final KKT matrix.
    pub condition: f64,
    /// ∞-norm KKT residual (stationarity, feasibility, complementarity) of the returned point.
    pub residual: f64,
    /// Backend name.
    pub backend: &'static str,
    /// Backend iterations plus active-set repairs.
    pub iterations: usize,
    /// Active-set changes the repair loop needed after the backend's identification.
    pub repairs: usize,
    /// The backend reported reduced accuracy (the exact solve still succeeded).
    pub reduced_accuracy: bool,
    /// Active inequalities outside the working set whose rows lie in the span of the working
    /// rows (duplicated or zero rows: LICQ fails there). Their multipliers are 0.
    pub dependent: Vec<usize>,
    /// When the backend failed or returned an unprovable verdict and the dual active-set
    /// method ([`dual_active_set`](super::dual_active_set)) found the solution instead: the backend's message.
    pub fallback: Option<String>,
}

/// Prop. 2's classification of each inequality from the working set of an exact solve, its
/// multipliers and slacks: working with `λ_i > tol_d` strongly active, other working rows and
/// rows with slack `≤ tol_p` weakly active, the rest inactive.
pub(crate) fn classify(
    working: &[bool],
    lambda: &DVector<f64>,
    slack: &DVector<f64>,
    tol_p: f64,
    tol_d: f64,
) -> Vec<Activity> {
    (0..working.len())
        .map(
            |i| match (working[i], lambda[i] > tol_d, slack[i] <= tol_p) {
                (true, true, _) => Activity::Strong,
                (true, false, _) | (false, _, true) => Activity::Weak,
                (false, _, false) => Activity::Inactive,
            },
        )
        .collect()
}

/// The sign and complementarity part of the KKT residual: `max_i max(−s_i, −λ_i, |λ_i s_i|, 0)`.
pub(crate) fn complementarity(lambda: &DVector<f64>, slack: &DVector<f64>) -> f64 {
    lambda
        .iter()
        .zip(slack.iter())
        .map(|(&l, &s)| (l * s).abs().max(-s).max(-l))
        .fold(0.0, f64::max)
}

/// How far the computed slack `a_iᵀx − b_i` can be from its exact value by rounding alone:
/// the rounding of the product and of `b_i` (`64 ε (|b_i| + Σ_j |a_ij x_j|)`) plus the effect
/// of an error `err_x` (∞-norm) in `x` (`‖a_i‖₁ err_x`).
pub(super) fn slack_rounding(
    a: &DMatrix<f64>,
    i: usize,
    b_i: f64,
    x: &DVector<f64>,
    err_x: f64,
) -> f64 {
    let row = a.row(i);
    let product: f64 = row.iter().zip(x.iter()).map(|(a, x)| (a * x).abs()).sum();
    64.0 * f64::EPSILON * (b_i.abs() + product) + row.lp_norm(1) * err_x
}
