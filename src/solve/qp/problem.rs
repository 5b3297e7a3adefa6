//! The QP and what every solver of it shares: the problem ([`Qp`]), the backends' interface
//! ([`QpBackend`], [`QpRaw`]), the classification of its rows ([`Tolerances`], [`Activity`]) and
//! the exactly refined result ([`ExactQp`]).

use nalgebra::{DMatrix, DVector};

use crate::error::{check_finite, Error, Result};
use crate::linalg::power_of_two_scale;

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
        check_finite("P", self.p.as_slice())?;
        check_finite("q", self.q.as_slice())?;
        check_finite("A", self.a.as_slice())?;
        check_finite("b", self.b.as_slice())?;
        check_finite("A_eq", self.a_eq.as_slice())?;
        check_finite("b_eq", self.b_eq.as_slice())
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
/// the sign conditions to rounding level, see [`refine`](super::refine)). Both are relative,
/// and the tests they define do not change when a row, the energy or the solution is scaled
/// (see below): row `i` is active when
/// `slack_i / ‖a_i‖∞ ≤ feasibility · (|b_i| / ‖a_i‖∞ + max(‖x‖∞, ‖q‖∞ / max|P|))`, and an active row is strongly
/// active when `λ_i ‖a_i‖∞ > multiplier · (‖q‖∞ + max|P| ‖x‖∞)` (the size of the terms of
/// stationarity `P x + q − Aᵀλ = 0`).
///
/// After the exact KKT solve the computed slacks and multipliers are accurate to about
/// `cond · 1e-16` relative to those scales, so the defaults (`1e-9`) separate exact zeros from
/// true non-zeros on problems with condition numbers up to about `1e6`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerances {
    /// A slack at or below this (relative, see above) is active. Default `1e-9`.
    pub feasibility: f64,
    /// An active constraint whose multiplier is above this (relative, see above) is strongly
    /// active, otherwise weakly active. Default `1e-9`.
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
    /// Condition estimate of the final KKT matrix, with each row scaled to an ∞-norm in
    /// `[1, 2)` by a power of two.
    pub condition: f64,
    /// ∞-norm KKT residual (stationarity, feasibility, complementarity) of the returned point,
    /// with each row scaled to an ∞-norm in `[1, 2)` by a power of two (so that it does not
    /// change when a row is multiplied through by a constant).
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
    /// Equality rows that are combinations of the others (to rounding) with consistent
    /// right-hand sides: left out of the solve, multipliers 0 (one independent row carries
    /// the force).
    pub dependent_eq: Vec<usize>,
    /// When the backend failed or returned an unprovable verdict and the dual active-set
    /// method ([`dual_active_set`](super::dual_active_set)) found the solution instead: the
    /// backend's message. On the sparse path ([`super::solve_sparse_exact`]): when the final
    /// KKT solve needed the LU of the exact system because the fast `LDLᵀ` of the regularized
    /// one did not reach rounding level.
    pub fallback: Option<String>,
}

/// Prop. 2's activity tests for one point `x` with multipliers `λ` (the one definition; see
/// [`Tolerances`]). Each test compares a row's quantity with the size of the terms it is made
/// of, so scaling a row (`a_i, b_i → s a_i, s b_i`: slack `× s`, `λ_i / s`), the energy
/// (`P, q → t P, t q`: `λ × t`) or the solution (`q, b → s q, s b`: `x, slack × s`, `λ × s`)
/// leaves every label unchanged. Row norms are ∞-norms, which never overflow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ActivityTest {
    feasibility: f64,
    multiplier: f64,
    /// The solution's scale `max(‖x‖∞, ‖q‖∞ / max|P|)`: where `x` is (nearly) 0 its rounding
    /// is still that of the data's own scale.
    x_norm: f64,
    /// `‖q‖∞ + max|P| ‖x‖∞`: the size of the stationarity terms.
    force: f64,
}

impl ActivityTest {
    /// The tests at `x` for a QP with Hessian of largest entry `p_norm` (`max|P|`, computed
    /// once per problem: [`crate::linalg::amax`]) and linear term of ∞-norm `q_norm`.
    pub(crate) fn new(tol: &Tolerances, p_norm: f64, q_norm: f64, x: &DVector<f64>) -> Self {
        let x_norm = if p_norm > 0.0 {
            x.amax().max(q_norm / p_norm)
        } else {
            x.amax()
        };
        Self {
            feasibility: tol.feasibility,
            multiplier: tol.multiplier,
            x_norm,
            force: q_norm + p_norm * x.amax(),
        }
    }

    /// `‖q‖∞ + max|P| ‖x‖∞`, the size of the stationarity terms.
    pub(crate) fn force(&self) -> f64 {
        self.force
    }

    /// The largest slack of a row of ∞-norm `norm` and right-hand side `b_i` that counts as
    /// active, in the row's own units: `feasibility · (|b_i| + ‖a_i‖∞ ‖x‖∞)`, `‖x‖∞` the
    /// solution's scale. (Every test here takes the row's ∞-norm, [`crate::linalg::row_amax`].)
    pub(crate) fn slack_tolerance(&self, norm: f64, b_i: f64) -> f64 {
        // `norm · (|b_i| / norm + ‖x‖∞)` keeps the product from overflowing before the sum.
        let relative = if norm > 0.0 {
            b_i.abs() / norm + self.x_norm
        } else {
            b_i.abs()
        };
        self.feasibility
            * if norm > 0.0 {
                norm * relative
            } else {
                relative
            }
    }

    /// A row's slack on the scale of its terms, `slack_i / (|b_i| + ‖a_i‖∞ ‖x‖∞)` (the
    /// quantity [`ActivityTest::active`] compares with the feasibility tolerance).
    pub(crate) fn relative_slack(&self, norm: f64, b_i: f64, slack_i: f64) -> f64 {
        let size = if norm > 0.0 {
            b_i.abs() / norm + self.x_norm
        } else {
            b_i.abs()
        };
        let slack = if norm > 0.0 { slack_i / norm } else { slack_i };
        if size > 0.0 {
            slack / size
        } else {
            slack * f64::INFINITY
        }
    }

    /// A row's multiplier on the scale of stationarity, `λ_i ‖a_i‖∞ / (‖q‖∞ + max|P| ‖x‖∞)`
    /// (the quantity [`ActivityTest::strong`] compares with the multiplier tolerance).
    pub(crate) fn relative_multiplier(&self, norm: f64, lambda_i: f64) -> f64 {
        let force = lambda_i * norm;
        if self.force > 0.0 {
            force / self.force
        } else {
            force * f64::INFINITY
        }
    }

    /// A row is active: `slack_i / ‖a_i‖∞ ≤ feasibility · (|b_i| / ‖a_i‖∞ + ‖x‖∞)`.
    pub(crate) fn active(&self, norm: f64, b_i: f64, slack_i: f64) -> bool {
        if norm > 0.0 {
            slack_i / norm <= self.feasibility * (b_i.abs() / norm + self.x_norm)
        } else {
            slack_i <= self.feasibility * b_i.abs()
        }
    }

    /// An active row is strongly active: `λ_i ‖a_i‖∞ > multiplier · (‖q‖∞ + max|P| ‖x‖∞)`.
    pub(crate) fn strong(&self, norm: f64, lambda_i: f64) -> bool {
        lambda_i * norm > self.multiplier * self.force
    }

    /// The classification of every inequality (rows of ∞-norms `norms`, right-hand side `b`)
    /// from the working set of an exact solve: working rows strongly active when
    /// [`ActivityTest::strong`], otherwise weakly active; rows outside the working set weakly
    /// active when [`ActivityTest::active`], otherwise inactive.
    pub(crate) fn classify(
        &self,
        (norms, b): (&DVector<f64>, &DVector<f64>),
        working: &[bool],
        lambda: &DVector<f64>,
        slack: &DVector<f64>,
    ) -> Vec<Activity> {
        (0..working.len())
            .map(|i| {
                if working[i] {
                    if self.strong(norms[i], lambda[i]) {
                        Activity::Strong
                    } else {
                        Activity::Weak
                    }
                } else if self.active(norms[i], b[i], slack[i]) {
                    Activity::Weak
                } else {
                    Activity::Inactive
                }
            })
            .collect()
    }
}

/// The row scaling of a [`Qp`]: row `i` of `A` (and of `A_eq`) multiplied by a power of two
/// bringing its ∞-norm into `[1, 2)` (`linalg::power_of_two_scale`). The scaled problem has the same
/// `x`; its multipliers are `λ_i / d_i` and its slacks `d_i · slack_i`.
#[derive(Debug, Clone)]
pub(crate) struct Equilibration {
    rows: DVector<f64>,
    eq: DVector<f64>,
}

impl Equilibration {
    /// The scaled copy of `qp` (which must have consistent shapes) and its scaling.
    pub(crate) fn of(qp: &Qp) -> (Qp, Self) {
        let scales = |a: &DMatrix<f64>| crate::linalg::row_amax(a).map(power_of_two_scale);
        let this = Self {
            rows: scales(&qp.a),
            eq: scales(&qp.a_eq),
        };
        let scaled = Qp {
            p: qp.p.clone(),
            q: qp.q.clone(),
            a: DMatrix::from_fn(qp.a.nrows(), qp.a.ncols(), |i, j| {
                qp.a[(i, j)] * this.rows[i]
            }),
            b: qp.b.component_mul(&this.rows),
            a_eq: DMatrix::from_fn(qp.a_eq.nrows(), qp.a_eq.ncols(), |i, j| {
                qp.a_eq[(i, j)] * this.eq[i]
            }),
            b_eq: qp.b_eq.component_mul(&this.eq),
        };
        (scaled, this)
    }

    /// The scaling with the given row scales of `A` and of `A_eq`.
    pub(crate) fn from_scales(rows: DVector<f64>, eq: DVector<f64>) -> Self {
        Self { rows, eq }
    }

    /// The row scales of `A`, then of `A_eq`.
    pub(crate) fn scales(&self) -> DVector<f64> {
        DVector::from_iterator(
            self.rows.len() + self.eq.len(),
            self.rows.iter().chain(self.eq.iter()).copied(),
        )
    }

    /// A solution of the scaled problem in the original problem's units: multipliers `d_i λ_i`,
    /// slacks `slack_i / d_i`. The residual and the condition estimate stay those of the
    /// scaled problem (see [`ExactQp::residual`]).
    pub(crate) fn unscale(&self, mut sol: ExactQp) -> ExactQp {
        sol.lambda.component_mul_assign(&self.rows);
        sol.lambda_eq.component_mul_assign(&self.eq);
        sol.slack.component_div_assign(&self.rows);
        sol
    }
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
    64.0 * f64::EPSILON * slack_terms(a, i, b_i, x) + a.row(i).lp_norm(1) * err_x
}

/// `|b_i| + Σ_j |a_ij x_j|`: the size of the terms row `i`'s slack at `x` is computed from.
pub(super) fn slack_terms(a: &DMatrix<f64>, i: usize, b_i: f64, x: &DVector<f64>) -> f64 {
    let product: f64 = a
        .row(i)
        .iter()
        .zip(x.iter())
        .map(|(a, x)| (a * x).abs())
        .sum();
    b_i.abs() + product
}
