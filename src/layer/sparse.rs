//! Sparse QP layers: the items of [`super`] with `Q`, `G` and `A` as [`Csc`] matrices, solved
//! and differentiated without forming anything `n × n` (the sparse path of
//! [`crate::solve::qp::solve_sparse_exact`]), the gradients with respect to the matrices
//! returned on their own sparsity patterns.
//!
//! The derivative is the exact one of Props. 1-2 (one-sided at weakly active rows, with the
//! branch each took): with no weakly active row, Eq. 17 is one solve with the forward solve's
//! factorization; otherwise Eq. 17 is itself a sparse QP (the weakly active rows as
//! inequalities, the strongly active ones and the equalities held), solved exactly. The
//! formulas are [`super`]'s: `∂ℓ/∂p = ż`, `∂ℓ/∂Q = ½(ż z*ᵀ + z* żᵀ)`, `∂ℓ/∂G = μ z*ᵀ + λ* żᵀ`,
//! `∂ℓ/∂h = −μ`, `∂ℓ/∂A = −(μ_eq z*ᵀ + λ*_eq żᵀ)`, `∂ℓ/∂b = μ_eq`, evaluated at the stored
//! entries of `Q`, `G` and `A` only (the gradient with respect to the stored values; entries
//! outside the pattern are not parameters of the layer). Of active rows that are exactly dependent
//! (a duplicated row), one per dependent direction is set aside as on the dense path
//! ([`crate::solve::qp::solve_sparse_exact`]'s module docs; [`SparseQpSolution::dependent`]): `z*`
//! and the gradients of `Q` and `p` stay exact, those of the dependent rows' `G` and `h` are one
//! element of the set-valued derivative there (the dense path's for an exact copy). Active rows
//! that are nearly, but not exactly, dependent make the gradients [`Error::Inaccurate`] (issue 25's
//! case 4: which row carries the multiplier is below `f64`'s resolution), measured without forming
//! anything dense (the smallest singular value of the unit active rows, once per solution).

use std::sync::OnceLock;

use nalgebra::DVector;

mod modes;

pub(crate) use modes::SparseOffset;

use super::{ItemStatus, Mode};
use crate::error::{Error, Result};
use crate::linalg::{check_sparse_spd, sparse_independence, stack_rows, Csc, MAX_DEPENDENT};
use crate::problem::{Direction, DirectionMethod, RESOLVED_SINE};
use crate::prox::Activity;
use crate::solve::qp::{
    solve_sparse_exact, solve_sparse_from, ClarabelSettings, ExactQp, SparseExact, SparseQp,
    Tolerances,
};
use crate::surrogate::map_items;

/// One item's sparse data: `min ½zᵀQz + pᵀz` s.t. `Gz ≤ h`, `Az = b` (`Q` with both
/// triangles stored; `G`, `A` may have no rows).
#[derive(Debug, Clone)]
pub struct SparseQpData {
    /// Symmetric positive definite `n × n`.
    pub q: Csc,
    /// Linear term, length `n`.
    pub p: DVector<f64>,
    /// Inequality rows `m × n` (`Gz ≤ h`).
    pub g: Csc,
    /// Inequality right-hand side, length `m`.
    pub h: DVector<f64>,
    /// Equality rows `k × n`.
    pub a: Csc,
    /// Equality right-hand side, length `k`.
    pub b: DVector<f64>,
}

impl SparseQpData {
    /// The item as the crate's sparse QP: `P = Q`, `q = p`, rows `−G z ≥ −h`, `A z = b`.
    ///
    /// # Errors
    /// Shapes and non-finite entries, naming the argument in this convention (`Q`, `p`,
    /// `G, h`, `A, b`); a `Q` that is not symmetric positive definite.
    pub fn qp(&self) -> Result<SparseQp> {
        let n = self.q.nrows();
        if self.q.ncols() != n {
            let found = format!("{n} x {}", self.q.ncols());
            return Err(Error::dim(
                "Q",
                format!("a square matrix ({n} x {n})"),
                found,
            ));
        }
        let blocks = [("G, h", &self.g, &self.h), ("A, b", &self.a, &self.b)]
            .map(|(name, rows, rhs)| (name, (rows.nrows(), rows.ncols()), rhs.len()));
        super::check_blocks(n, self.p.len(), blocks)?;
        check_sparse_spd("Q", &self.q)?;
        let qp = SparseQp {
            p: self.q.clone(),
            q: self.p.clone(),
            a: stack_rows(&[(&self.g, None, -1.0)]),
            b: -&self.h,
            a_eq: self.a.clone(),
            b_eq: self.b.clone(),
        };
        for (name, values) in [("G", qp.a.val()), ("A", qp.a_eq.val())] {
            crate::error::check_finite(name, values.iter())?;
        }
        for (name, values) in [("p", &self.p), ("h", &self.h), ("b", &self.b)] {
            crate::error::check_finite(name, values.iter())?;
        }
        Ok(qp)
    }
}

/// Clarabel's settings for the forward solve: its point only identifies the active set (the
/// exact refinement verifies every sign and repairs), so `1e-8` suffices and saves a fifth of
/// the forward time against `1e-10` on the growth benchmark's families at n = 10,000.
const IDENTIFICATION: ClarabelSettings = ClarabelSettings {
    max_iter: 200,
    tol: 1e-8,
};

/// One sparse item's solution, kept (with its factorization) for its gradients.
#[derive(Debug)]
pub struct SparseQpSolution {
    qp: SparseQp,
    exact: SparseExact,
    tol: Tolerances,
    /// The active rows' distance from dependence, once computed (`check_active_rows`).
    independence: OnceLock<Option<f64>>,
}

/// The gradients of `ℓ(z*)` with respect to one sparse item's data (module docs), shaped like
/// [`SparseQpData`]: `q`, `g`, `a` on the patterns of `Q`, `G`, `A`.
#[derive(Debug, Clone)]
pub struct SparseQpGradients {
    /// `∂/∂Q` at `Q`'s stored entries (symmetric when the pattern is).
    pub q: Csc,
    /// `∂/∂p`.
    pub p: DVector<f64>,
    /// `∂/∂G` at `G`'s stored entries.
    pub g: Csc,
    /// `∂/∂h`.
    pub h: DVector<f64>,
    /// `∂/∂A` at `A`'s stored entries.
    pub a: Csc,
    /// `∂/∂b`.
    pub b: DVector<f64>,
    /// The item's status, with the branches this derivative took.
    pub status: ItemStatus,
    /// How Eq. 17 was solved.
    pub method: DirectionMethod,
    /// The 2-norm condition estimate of the KKT matrix that determined `ż` (Eq. 17's, rows
    /// equilibrated: [`crate::problem::Direction::condition`]); `NaN` unless asked for
    /// ([`SparseQpSolution::gradients_with_condition`]), as on the dense layer.
    pub condition: f64,
    /// The ∞-norm residual of Eq. 17's rate system at `ż` and its multipliers
    /// ([`crate::problem::Direction::residual`]); `status.residual` is that of `z*`.
    pub direction_residual: f64,
}

impl SparseQpSolution {
    /// `z*`.
    pub fn z(&self) -> &DVector<f64> {
        &self.exact.solution.x
    }

    /// The multipliers of `z*`: `λ* ≥ 0` of the rows of `G` (in the sign convention of the
    /// crate's rows `−G z ≥ −h`, [`crate::solve::qp::ExactQp::lambda`]) and `λ*_eq` of `A`.
    pub fn multipliers(&self) -> (&DVector<f64>, &DVector<f64>) {
        let s = &self.exact.solution;
        (&s.lambda, &s.lambda_eq)
    }

    /// The inequality rows set aside as exactly dependent on the held rows (active, multiplier
    /// zero, labelled weak: [`crate::solve::qp::ExactQp::dependent`], as on the dense path).
    pub fn dependent(&self) -> &[usize] {
        &self.exact.solution.dependent
    }

    /// The equality rows set aside as exactly dependent on the others with consistent
    /// right-hand sides (multiplier zero: [`crate::solve::qp::ExactQp::dependent_eq`], as on
    /// the dense path).
    pub fn dependent_equalities(&self) -> &[usize] {
        &self.exact.solution.dependent_eq
    }

    /// The solve's status (no branches yet). The residual is [`crate::solve::qp::ExactQp`]'s.
    pub fn status(&self) -> ItemStatus {
        let s = &self.exact.solution;
        ItemStatus {
            solver: s.backend,
            iterations: s.iterations,
            residual: s.residual,
            activity: s.activity.clone(),
            branches: vec![None; s.activity.len()],
        }
    }

    /// The exact (one-sided) gradients for the upstream gradient `grad_z = ∂ℓ/∂z*`.
    ///
    /// # Errors
    /// `grad_z` of another length or not finite; the rate problem's errors.
    pub fn gradients(&self, grad_z: &DVector<f64>) -> Result<SparseQpGradients> {
        self.gradients_estimating(grad_z, false)
    }

    /// [`SparseQpSolution::gradients`] with [`SparseQpGradients::condition`] estimated
    /// ([`crate::solve::qp::SparseExact::condition`]: 16 products and 16 refined solves with
    /// the factorization of Eq. 17's KKT system, typically more than the gradients cost).
    ///
    /// # Errors
    /// As [`SparseQpSolution::gradients`].
    pub fn gradients_with_condition(&self, grad_z: &DVector<f64>) -> Result<SparseQpGradients> {
        self.gradients_estimating(grad_z, true)
    }

    fn gradients_estimating(
        &self,
        grad_z: &DVector<f64>,
        condition: bool,
    ) -> Result<SparseQpGradients> {
        Ok(self.rates(grad_z, Mode::Limit, condition)?.on_patterns())
    }

    /// The gradients in `mode` ([`Mode`]): the exact ones of Props. 1-2
    /// ([`SparseQpSolution::gradients`]); those of Def. 1's contrastive surrogate of the
    /// linearized loss `gᵀz` at `β` (`Mode::Contrastive`), from the rates `f = (ẑ_β − z*)/|β|`,
    /// `μ = (λ̂_β − λ*)/|β|` of the offset problem solved on sparse factorizations
    /// ([`crate::solve::qp::solve_sparse_offset`], no cancellation at small `β`):
    /// `∂/∂Q = ½(f z*ᵀ + z* fᵀ) + (|β|/2) f fᵀ`, `∂/∂p = f`, `∂/∂G = μ z*ᵀ + λ* fᵀ + |β| μ fᵀ`,
    /// `∂/∂h = −μ`, and the same for `A`, `b` with the opposite sign (the dense layer's
    /// surrogate gradients, [`crate::problem::QuadraticProblem::surrogate_data_gradients`]);
    /// or the mean of the surrogates at `+β` and `−β` (`Mode::Centered`). A finite-`β` mode
    /// has no branches (nothing is one-sided at finite `β`), the method
    /// [`DirectionMethod::Offset`], condition `NaN`, and the offset problem's residual.
    ///
    /// # Errors
    /// As [`SparseQpSolution::gradients`]; [`Error::InvalidBeta`] for `β` zero or not finite;
    /// [`Error::Inaccurate`] when `z* + |β| f` violates the constraints beyond the feasibility
    /// tolerance (a `β` so large that `f` has lost its digits).
    pub fn gradients_in(&self, grad_z: &DVector<f64>, mode: Mode) -> Result<SparseQpGradients> {
        Ok(self.rates(grad_z, mode, false)?.on_patterns())
    }

    /// [`Error::Inaccurate`] when the rows active at `z*` (strongly and weakly active, and the
    /// equalities) are nearly, but not exactly, dependent: the smallest singular value of the
    /// unit rows ([`crate::linalg::sparse_independence`], a lower bound of each row's sine to
    /// the span of the others) below the dense path's `RESOLVED_SINE` (`1e-6`). Which of such
    /// rows carries the multiplier, and so the gradients of `G`, `h` and the labels, are
    /// decided by digits `f64` does not have. Exactly dependent rows (a duplicated row) were
    /// set aside by the solve (module docs); up to `MAX_DEPENDENT` such directions are
    /// measured past.
    fn check_active_rows(&self) -> Result<()> {
        let sine = match self.independence.get() {
            Some(sine) => *sine,
            None => {
                let sol = &self.exact.solution;
                let active: Vec<usize> = (0..sol.activity.len())
                    .filter(|&i| sol.activity[i] != Activity::Inactive)
                    .collect();
                let parts = [
                    (&self.qp.a, Some(&active[..]), 1.0),
                    (&self.qp.a_eq, None, 1.0),
                ];
                let sine = sparse_independence(&stack_rows(&parts))?;
                *self.independence.get_or_init(|| sine)
            }
        };
        match sine {
            Some(s) if s >= RESOLVED_SINE => Ok(()),
            Some(s) => Err(Error::Inaccurate {
                what: format!(
                    "the derivative at z* (the active constraints are nearly, not exactly, \
                     linearly dependent: scaled to unit length their smallest singular value, a \
                     lower bound of the sine of the smallest angle between one and the span of \
                     the others, is {s:.1e} < {RESOLVED_SINE:.0e}, so which of them carries \
                     the multiplier is decided by digits f64 does not have)"
                ),
                residual: s,
            }),
            None => Err(Error::Inaccurate {
                what: format!(
                    "the derivative at z* (more than {MAX_DEPENDENT} directions of the active \
                     constraints are exactly dependent; whether the others are nearly \
                     dependent is not decided on the sparse path)"
                ),
                residual: f64::NAN,
            }),
        }
    }

    /// Eq. 17 for the linear loss `gᵀz` (module docs), its condition estimated if asked.
    fn direction(&self, g: &DVector<f64>, condition: bool) -> Result<Direction> {
        let sol = &self.exact.solution;
        let (m, k) = (sol.activity.len(), sol.lambda_eq.len());
        let rows = |kind: Activity| -> Vec<usize> {
            (0..m).filter(|&i| sol.activity[i] == kind).collect()
        };
        let (strong, weak) = (rows(Activity::Strong), rows(Activity::Weak));
        if weak.is_empty() {
            // Every held row is strongly active: one solve on the forward factorization.
            let (z_dot, held_mu) = self.exact.held_rate(g)?;
            let none = DVector::zeros(0);
            let (multipliers, multipliers_eq) =
                crate::problem::scatter_multipliers((m, k), (&[], &none), (&strong, &held_mu));
            let residual = self.rate_residual(g, &z_dot, (&multipliers, &multipliers_eq), &strong);
            let method = if strong.is_empty() && k == 0 {
                DirectionMethod::Prop1
            } else {
                DirectionMethod::Prop2Linear
            };
            return Ok(Direction {
                z_dot,
                branches: vec![None; m],
                multipliers,
                multipliers_eq,
                condition: estimate(condition, || self.exact.condition()),
                residual,
                method,
            });
        }
        let eq17 = SparseQp {
            p: self.qp.p.clone(),
            q: g.clone(),
            a: stack_rows(&[(&self.qp.a, Some(&weak), 1.0)]),
            b: DVector::zeros(weak.len()),
            a_eq: stack_rows(&[(&self.qp.a, Some(&strong), 1.0), (&self.qp.a_eq, None, 1.0)]),
            b_eq: DVector::zeros(strong.len() + k),
        };
        // Warm start: every weak row held (the rows that leave are released by the repair);
        // Clarabel's identification if the repair does not settle.
        let rate = solve_sparse_from(&eq17, &self.tol, vec![true; weak.len()])
            .or_else(|_| solve_sparse_exact(&eq17, &self.tol, &ClarabelSettings::default()))?;
        let rate = ExactQp {
            condition: estimate(condition, || rate.condition()),
            ..rate.solution
        };
        let method = DirectionMethod::Prop2Qp {
            backend: rate.backend,
        };
        Ok(Direction::from_eq17(rate, (m, k), &weak, &strong, method))
    }
}

impl SparseQpSolution {
    /// Eq. 17's ∞-norm KKT residual with every weakly active row absent: stationarity
    /// `P ż + g − Aᵀμ − A_eqᵀμ_eq` and the held rows `A_S ż`, `A_eq ż`.
    fn rate_residual(
        &self,
        g: &DVector<f64>,
        z_dot: &DVector<f64>,
        (mu, mu_eq): (&DVector<f64>, &DVector<f64>),
        strong: &[usize],
    ) -> f64 {
        use crate::linalg::{sparse_mul, sparse_tr_mul};
        let qp = &self.qp;
        let stationarity = (sparse_mul(&qp.p, z_dot) + g
            - sparse_tr_mul(&qp.a, mu)
            - sparse_tr_mul(&qp.a_eq, mu_eq))
        .amax();
        let rows = sparse_mul(&qp.a, z_dot);
        let held = strong.iter().map(|&i| rows[i].abs()).fold(0.0, f64::max);
        stationarity
            .max(held)
            .max(sparse_mul(&qp.a_eq, z_dot).amax())
    }
}

/// `condition()` when asked for, else `NaN` (not estimated).
fn estimate(asked: bool, condition: impl FnOnce() -> f64) -> f64 {
    if asked {
        condition()
    } else {
        f64::NAN
    }
}

/// Solves every sparse item (on up to `threads` threads, results in order and independent of
/// the count): each item's solution or its error.
///
/// ```
/// use bilevel::layer::{solve_sparse, SparseQpData};
/// use bilevel::linalg::csc_from_triplets;
/// use bilevel::nalgebra::dvector;
///
/// // Projection of −p onto z ≥ 0 (G = −I, h = 0): the second unit sits on its bound.
/// let eye = |s: f64| csc_from_triplets(2, 2, &[(0, 0, s), (1, 1, s)]);
/// let item = SparseQpData {
///     q: eye(1.0)?, p: dvector![-1.0, 0.0],
///     g: eye(-1.0)?, h: dvector![0.0, 0.0],
///     a: csc_from_triplets(0, 2, &[])?, b: dvector![],
/// };
/// let solved = solve_sparse(&[item], 1, Default::default());
/// let sol = solved[0].as_ref().unwrap();
/// assert_eq!(sol.z(), &dvector![1.0, 0.0]);
/// // ℓ = z₂ pulls the unit down: it stays on the bound (∂ℓ/∂p₂ = 0); ℓ = −z₂ lifts it
/// // (exact to rounding: the sparse factorization is refined, not exact in every bit).
/// let down = sol.gradients(&dvector![0.0, 1.0])?;
/// let up = sol.gradients(&dvector![0.0, -1.0])?;
/// assert!(down.p[1].abs() < 1e-15 && (up.p[1] - 1.0).abs() < 1e-15);
/// # Ok::<(), bilevel::Error>(())
/// ```
pub fn solve_sparse(
    items: &[SparseQpData],
    threads: usize,
    tol: Tolerances,
) -> Vec<Result<SparseQpSolution>> {
    map_items(items.len(), threads.max(1), |i| {
        let qp = items[i].qp()?;
        let exact = solve_sparse_exact(&qp, &tol, &IDENTIFICATION)?;
        Ok(SparseQpSolution {
            qp,
            exact,
            tol,
            independence: OnceLock::new(),
        })
    })
}

/// [`SparseQpSolution::gradients_in`] for every item with its upstream gradient in `mode`, on
/// up to `threads` threads (results in order, independent of the count); with `condition`,
/// each limit with its condition estimate ([`SparseQpSolution::gradients_with_condition`]).
///
/// # Errors
/// `grads` of another length than `solutions` ([`Error::DimensionMismatch`]); `condition` with
/// a finite-β mode ([`Error::InvalidInput`]: the estimate is of Eq. 17's KKT matrix, which a
/// finite-β mode does not solve); each item's errors are [`SparseQpSolution::gradients_in`]'s.
pub fn gradients_sparse(
    solutions: &[SparseQpSolution],
    grads: &[DVector<f64>],
    threads: usize,
    mode: Mode,
    condition: bool,
) -> Result<Vec<Result<SparseQpGradients>>> {
    if grads.len() != solutions.len() {
        return Err(Error::dim("grad_z (batch)", solutions.len(), grads.len()));
    }
    if condition && mode != Mode::Limit {
        return Err(Error::input(
            "condition",
            "the condition estimate is of Eq. 17's KKT matrix: it is given with the exact \
             derivative (mode \"limit\") only",
        ));
    }
    Ok(map_items(solutions.len(), threads.max(1), |i| {
        Ok(solutions[i]
            .rates(&grads[i], mode, condition)?
            .on_patterns())
    }))
}
