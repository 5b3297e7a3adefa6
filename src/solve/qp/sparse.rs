//! The sparse path: a [`SparseQp`] (the [`Qp`](super::Qp) of the module docs with
//! [`Csc`] matrices) solved by Clarabel on its sparse data, then refined exactly on a sparse LU
//! factorization of the working set's KKT system (`[P Rᵀ; R 0]`, [`crate::linalg`]), with the
//! same equilibration, sign repairs, activity tests and statuses as the dense path; the
//! factorization is kept ([`SparseExact`]) for Eq. 17's rate problem and the data gradients.
//! Memory and work follow the non-zeros of `P`, `A` and the factor: nothing `n × n` is formed.
//!
//! Differences from the dense path: the condition estimate is computed on request
//! ([`SparseExact::condition`]; [`ExactQp::condition`] is `NaN`). Exactly dependent active
//! inequality rows are set aside as on the dense path: at the first exact point, held rows
//! exactly dependent on the other held rows (at rounding, `linalg::rows_to_set_aside`: one row
//! per dependent direction, of an exact copy the later one, as the dense dual active set
//! keeps the first) leave the working set, and at the end active rows outside it that lie in
//! the span of the held rows are listed too, in [`ExactQp::dependent`]: active, multiplier zero,
//! labelled weak. Where a row is a combination of several others, which one goes follows the
//! row order here and the order of violation on the dense path, so the two may set aside
//! different rows: `x`, and the derivatives with respect to `P` and `q`, agree; those with
//! respect to the rows' own data are then different elements of a set-valued derivative.
//! Exactly dependent equality rows with consistent right-hand sides are set aside at the same
//! first exact point (of an exact copy the later one; a working row goes before an equality),
//! as the dense path does, in [`ExactQp::dependent_eq`] with multiplier zero. Dependent
//! equalities whose right-hand sides disagree beyond the feasibility tolerance make the KKT
//! system singular; they are then found and certified as the dense path certifies them
//! ([`Error::Infeasible`] with `u = ±(e_i − y)`, checked on the data). Nearly dependent held
//! rows beyond `f64`'s resolution give [`Error::Singular`].

use nalgebra::DVector;

use super::clarabel::{Clarabel, ClarabelData, ClarabelOutcome, ClarabelSettings};
use super::exact::Origin;
use super::problem::{complementarity, ActivityTest, Equilibration, ExactQp, Tolerances};
use crate::error::{check_finite, Error, Result};
use crate::linalg::{
    csc_to_clarabel, power_of_two_scale, rows_to_set_aside, scale_rows, sparse_abs_mul,
    sparse_abs_tr_mul, sparse_amax, sparse_mul, sparse_row_amax, sparse_tr_mul, stack_rows,
    upper_to_clarabel, Csc, KktSolve, SparseKkt,
};
use crate::prox::Activity;

/// A convex QP `min ½xᵀPx + qᵀx  s.t.  A x ≥ b, A_eq x = b_eq` with sparse `P`, `A`, `A_eq`
/// (`P` holds both triangles).
#[derive(Debug, Clone)]
pub struct SparseQp {
    /// Symmetric positive definite `n × n` Hessian.
    pub p: Csc,
    /// Linear term, length `n`.
    pub q: DVector<f64>,
    /// Inequality rows (`m × n`), `A x ≥ b`.
    pub a: Csc,
    /// Inequality right-hand side, length `m`.
    pub b: DVector<f64>,
    /// Equality rows (`k × n`).
    pub a_eq: Csc,
    /// Equality right-hand side, length `k`.
    pub b_eq: DVector<f64>,
}

impl SparseQp {
    /// Number of variables.
    pub fn n(&self) -> usize {
        self.p.nrows()
    }

    /// Checks shapes and finiteness (not definiteness: [`crate::linalg::check_sparse_spd`]).
    ///
    /// # Errors
    /// [`Error::DimensionMismatch`] naming the part; [`Error::NonFinite`].
    pub fn validate(&self) -> Result<()> {
        let n = self.n();
        let shape = |a: &Csc| format!("{} x {}", a.nrows(), a.ncols());
        if self.p.ncols() != n {
            return Err(Error::dim("P", format!("{n} x {n}"), shape(&self.p)));
        }
        if self.q.len() != n {
            return Err(Error::dim("q", n, self.q.len()));
        }
        for (name, a, b) in [
            ("A, b", &self.a, &self.b),
            ("A_eq, b_eq", &self.a_eq, &self.b_eq),
        ] {
            if a.ncols() != n || a.nrows() != b.len() {
                return Err(Error::dim(name, format!("{} x {n}", b.len()), shape(a)));
            }
        }
        check_finite("P", self.p.val().iter())?;
        check_finite("q", self.q.iter())?;
        check_finite("A", self.a.val().iter())?;
        check_finite("b", self.b.iter())?;
        check_finite("A_eq", self.a_eq.val().iter())?;
        check_finite("b_eq", self.b_eq.iter())
    }

    /// The copy with every row of `A` and `A_eq` (and its right-hand side) multiplied by the
    /// power of two that brings its ∞-norm into `[1, 2)` (exact), and that scaling.
    fn equilibrated(&self) -> (SparseQp, Equilibration) {
        let scales = |a: &Csc| sparse_row_amax(a).map(power_of_two_scale);
        let (rows, eq) = (scales(&self.a), scales(&self.a_eq));
        let scaled = SparseQp {
            p: self.p.clone(),
            q: self.q.clone(),
            a: scale_rows(&self.a, &rows),
            b: self.b.component_mul(&rows),
            a_eq: scale_rows(&self.a_eq, &eq),
            b_eq: self.b_eq.component_mul(&eq),
        };
        (scaled, Equilibration::from_scales(rows, eq))
    }
}

/// An exact solution of a [`SparseQp`] with the factorization of its final KKT system (the
/// working rows, then the equality rows, equilibrated), for solves with the same matrix.
pub struct SparseExact {
    /// The solution, in the problem's own units.
    pub solution: ExactQp,
    factor: SparseKkt,
    /// The row scales of `A`, then of `A_eq` (see [`SparseQp`]'s equilibration).
    scales: DVector<f64>,
}

impl std::fmt::Debug for SparseExact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseExact")
            .field("solution", &self.solution)
            .finish_non_exhaustive()
    }
}

impl SparseExact {
    /// The 2-norm condition estimate of the final KKT matrix `[σP R_Wᵀ; R_W 0]` (rows
    /// equilibrated, `σ` the power of two with `σ max|P| ∈ [1, 2)`): what the dense path
    /// reports in [`ExactQp::condition`] and the sparse path leaves `NaN` there, computed on
    /// request (16 products with the KKT matrix and 16 refined solves with its factorization:
    /// Lanczos on the matrix and on its inverse, [`crate::linalg::condition_estimate_of`]).
    /// `∞` when a solve fails.
    pub fn condition(&self) -> f64 {
        self.factor.condition()
    }

    /// `(x, y)` with `P x − R_Wᵀ y = −g`, `R_W x = 0` on the held rows `R_W` (the working rows,
    /// then the equality rows not set aside): the rate problem of Eq. 17 when every held row is
    /// strongly active and no other is weakly active, on the forward solve's factorization. `y`
    /// is in the problem's own units (multipliers, as [`ExactQp::lambda`]), one entry per
    /// working row and then one per equality row (`0` on those set aside,
    /// [`ExactQp::dependent_eq`]).
    ///
    /// # Errors
    /// [`Error::DimensionMismatch`] for `g`; [`Error::Singular`] as the forward solve.
    pub fn held_rate(&self, g: &DVector<f64>) -> Result<(DVector<f64>, DVector<f64>)> {
        let n = self.factor.n();
        if g.len() != n {
            return Err(Error::dim("g", n, g.len()));
        }
        let (working, k) = (&self.solution.working, self.solution.lambda_eq.len());
        let rows: Vec<usize> = (0..working.len()).filter(|&i| working[i]).collect();
        let eq_rows = kept_equalities(k, &self.solution.dependent_eq);
        let mut rhs = DVector::zeros(n + rows.len() + eq_rows.len());
        rhs.rows_mut(0, n).copy_from(&(-g));
        let KktSolve { solution, .. } = self.factor.solve(&rhs)?;
        let mut y = DVector::zeros(rows.len() + k);
        for (r, &i) in rows.iter().enumerate() {
            y[r] = -solution[n + r] * self.scales[i];
        }
        for (r, &j) in eq_rows.iter().enumerate() {
            let scale = self.scales[working.len() + j];
            y[rows.len() + j] = -solution[n + rows.len() + r] * scale;
        }
        Ok((solution.rows(0, n).into_owned(), y))
    }
}

/// The equality rows `0..k` less those set aside (`dependent`, sorted or not).
fn kept_equalities(k: usize, dependent: &[usize]) -> Vec<usize> {
    (0..k).filter(|j| !dependent.contains(j)).collect()
}

/// Solves `qp` exactly (module docs): Clarabel's point identifies the active set, the sparse
/// KKT solve on it gives the exact point, sign repairs follow, every row is classified.
///
/// # Errors
/// [`Error::DimensionMismatch`], [`Error::NonFinite`] for bad data;
/// [`Error::Infeasible`] only with a Farkas certificate verified on the data (an unverified
/// verdict is [`Error::Inaccurate`]); [`Error::Singular`] for held rows dependent beyond what the
/// refined factorization resolves (module docs);
/// [`Error::NotConverged`] when Clarabel or the repairs do not settle.
pub fn solve_sparse_exact(
    qp: &SparseQp,
    tol: &Tolerances,
    settings: &ClarabelSettings,
) -> Result<SparseExact> {
    qp.validate()?;
    tol.validate()?;
    let (scaled, equilibration) = qp.equilibrated();
    let m = scaled.b.len();
    let (mut working, origin) = if m == 0 {
        (
            Vec::new(),
            Origin::new("direct sparse KKT (no inequalities)"),
        )
    } else {
        identify(&scaled, tol, settings)?
    };
    let (solution, factor) = refine_sparse(&scaled, tol, &mut working, origin)?;
    let scales = equilibration.scales();
    Ok(SparseExact {
        solution: equilibration.unscale(solution),
        factor,
        scales,
    })
}

/// Clarabel's point and the working set it identifies (as the dense path's identification:
/// the larger of a row's relative slack and relative multiplier decides).
fn identify(
    qp: &SparseQp,
    tol: &Tolerances,
    settings: &ClarabelSettings,
) -> Result<(Vec<bool>, Origin)> {
    let (m, k) = (qp.b.len(), qp.b_eq.len());
    let data = ClarabelData {
        p: upper_to_clarabel(&qp.p),
        q: qp.q.iter().copied().collect(),
        a: csc_to_clarabel(&stack_rows(&[(&qp.a_eq, None, 1.0), (&qp.a, None, -1.0)])),
        b: qp
            .b_eq
            .iter()
            .copied()
            .chain(qp.b.iter().map(|v| -v))
            .collect(),
        rows: (m, k),
    };
    let clarabel = Clarabel {
        settings: *settings,
    };
    let raw = match clarabel.run(&data)? {
        ClarabelOutcome::Solved(raw) => raw,
        ClarabelOutcome::Infeasible { z } => return Err(verify_certificate(qp, &z)),
    };
    let slack = sparse_mul(&qp.a, &raw.x) - &qp.b;
    let test = ActivityTest::new(tol, sparse_amax(&qp.p), qp.q.amax(), &raw.x);
    let norms = sparse_row_amax(&qp.a);
    let working = (0..m)
        .map(|i| {
            test.relative_slack(norms[i], qp.b[i], slack[i])
                < test.relative_multiplier(norms[i], raw.lambda[i])
        })
        .collect();
    let origin = Origin::new("clarabel (sparse)").after(raw.iterations, raw.reduced_accuracy);
    Ok((working, origin))
}

/// Clarabel's infeasibility certificate `z` (in its form: the equality rows, then the
/// inequality rows negated) checked on the data: with `u = (z_in, −z_eq)` on `[A; A_eq]`,
/// [`Error::Infeasible`] only when `u ≥ 0` on the inequalities, `[A; A_eq]ᵀu = 0` up to the
/// rounding of its own sums and `bᵀu > 0` beyond that of its own (then `uᵀ(Cx − b) < 0` for
/// every `x`, while feasibility needs `≥ 0`); otherwise [`Error::Inaccurate`].
fn verify_certificate(qp: &SparseQp, z: &[f64]) -> Error {
    let (m, k) = (qp.b.len(), qp.b_eq.len());
    let u_in = DVector::from_fn(m, |i, _| z[k + i]);
    let u_eq = DVector::from_fn(k, |i, _| -z[i]);
    let (u_in, u_eq) = polish_certificate(qp, u_in, u_eq);
    let source = "Farkas certificate from clarabel, verified";
    farkas(qp, (&u_in, &u_eq), source).unwrap_or_else(|residual| Error::Inaccurate {
        what: "clarabel's infeasibility verdict (its certificate does not verify on the data)"
            .into(),
        residual,
    })
}

/// [`Error::Infeasible`] when `u = (u_in, u_eq)` on `[A; A_eq]` is a Farkas certificate:
/// `u ≥ 0` on the inequalities, `[A; A_eq]ᵀu = 0` up to the rounding of its own sums and
/// `bᵀu > 0` beyond that of its own (then `uᵀ(Cx − b) < 0` for every `x`, while feasibility
/// needs `≥ 0`); the message names `source`. Otherwise `Err` with `‖Cᵀu‖∞` relative to its
/// terms.
fn farkas(
    qp: &SparseQp,
    (u_in, u_eq): (&DVector<f64>, &DVector<f64>),
    source: &str,
) -> std::result::Result<Error, f64> {
    let (m, k) = (qp.b.len(), qp.b_eq.len());
    let r = sparse_tr_mul(&qp.a, u_in) + sparse_tr_mul(&qp.a_eq, u_eq);
    let size = sparse_abs_tr_mul(&qp.a, u_in) + sparse_abs_tr_mul(&qp.a_eq, u_eq);
    let beta = qp.b.dot(u_in) + qp.b_eq.dot(u_eq);
    let beta_size = qp.b.abs().dot(&u_in.abs()) + qp.b_eq.abs().dot(&u_eq.abs());
    let gamma = 64.0 * f64::EPSILON * (m + k + 2) as f64;
    let signs = u_in.iter().all(|&u| u >= 0.0);
    let zero = (0..r.len()).all(|j| r[j].abs() <= gamma * size[j]);
    if signs && zero && beta > gamma * beta_size {
        return Ok(Error::Infeasible(format!(
            "the constraints A x >= b, A_eq x = b_eq admit no point: u ≥ 0 on the inequalities \
             gives Cᵀu = 0 to rounding ({:.1e}) and bᵀu = {beta:.3e} > 0 ({source})",
            r.amax()
        )));
    }
    Err(r.amax() / size.amax().max(f64::MIN_POSITIVE))
}

/// An interior-point certificate satisfies `Cᵀu = 0` only to the solver's tolerance; the
/// exact one has the same support. On that support (rows with `|u_i|` above `1e-6` of the
/// largest, at most [`POLISHED_SUPPORT`] of them) `u` is projected twice onto the null space
/// of `C_Sᵀ` (a dense SVD of the support's rows on the columns they touch), which brings an
/// exact certificate to rounding; anything else is left as it was for the check to refuse.
fn polish_certificate(
    qp: &SparseQp,
    u_in: DVector<f64>,
    u_eq: DVector<f64>,
) -> (DVector<f64>, DVector<f64>) {
    let m = u_in.len();
    let u = DVector::from_iterator(m + u_eq.len(), u_in.iter().chain(u_eq.iter()).copied());
    let cut = 1e-6 * u.amax();
    let support: Vec<usize> = (0..u.len()).filter(|&i| u[i].abs() > cut).collect();
    if support.is_empty() || support.len() > POLISHED_SUPPORT {
        return (u_in, u_eq);
    }
    let rows = |first: usize, len: usize| -> Vec<usize> {
        (support.iter())
            .filter(|&&i| (first..first + len).contains(&i))
            .map(|&i| i - first)
            .collect()
    };
    let (rows_in, rows_eq) = (rows(0, m), rows(m, u_eq.len()));
    let c_s = crate::linalg::csc_to_dense(&stack_rows(&[
        (&qp.a, Some(&rows_in), 1.0),
        (&qp.a_eq, Some(&rows_eq), 1.0),
    ]));
    let touched: Vec<usize> = (0..c_s.ncols())
        .filter(|&j| c_s.column(j).iter().any(|&v| v != 0.0))
        .collect();
    let m_t = c_s.select_columns(&touched).transpose();
    let svd = m_t.svd(false, true);
    let (Some(v_t), sigma) = (svd.v_t, svd.singular_values) else {
        return (u_in, u_eq);
    };
    let kept: Vec<usize> = (0..sigma.len())
        .filter(|&r| sigma[r] > 1e-10 * sigma.amax())
        .collect();
    let mut u_s = DVector::from_fn(support.len(), |r, _| u[support[r]]);
    for _ in 0..2 {
        for &r in &kept {
            let along = v_t.row(r).transpose();
            u_s.axpy(-along.dot(&u_s), &along, 1.0);
        }
    }
    let mut out = DVector::zeros(u.len());
    for (r, &i) in support.iter().enumerate() {
        out[i] = u_s[r];
    }
    (
        out.rows(0, m).into_owned(),
        out.rows(m, u_eq.len()).into_owned(),
    )
}

/// The largest certificate support [`polish_certificate`] projects (its dense SVD).
const POLISHED_SUPPORT: usize = 400;

/// The KKT point of a working set on the equilibrated problem, with its factorization.
struct SparsePoint {
    factor: SparseKkt,
    x: DVector<f64>,
    lambda: DVector<f64>,
    lambda_eq: DVector<f64>,
    slack: DVector<f64>,
    /// Forward-error estimates of `x` and of the multipliers.
    error: (f64, f64),
    /// The KKT solve needed the LU ([`KktSolve::lu_fallback`]).
    lu_fallback: bool,
}

impl SparsePoint {
    /// The point with the inequality rows `working` and the equality rows `eq_rows` held.
    fn solve(qp: &SparseQp, working: &[bool], eq_rows: &[usize]) -> Result<Self> {
        let (n, m, k) = (qp.n(), qp.b.len(), qp.b_eq.len());
        let rows: Vec<usize> = (0..m).filter(|&i| working[i]).collect();
        let held = stack_rows(&[(&qp.a, Some(&rows), 1.0), (&qp.a_eq, Some(eq_rows), 1.0)]);
        let factor = SparseKkt::new(&qp.p, &held)?;
        let mut rhs = DVector::zeros(n + rows.len() + eq_rows.len());
        rhs.rows_mut(0, n).copy_from(&(-&qp.q));
        for (r, &i) in rows.iter().enumerate() {
            rhs[n + r] = qp.b[i];
        }
        for (r, &j) in eq_rows.iter().enumerate() {
            rhs[n + rows.len() + r] = qp.b_eq[j];
        }
        let KktSolve {
            solution,
            error,
            lu_fallback,
        } = factor.solve(&rhs)?;
        let x = solution.rows(0, n).into_owned();
        let mut lambda = DVector::zeros(m);
        for (r, &i) in rows.iter().enumerate() {
            lambda[i] = -solution[n + r];
        }
        let mut lambda_eq = DVector::zeros(k);
        for (r, &j) in eq_rows.iter().enumerate() {
            lambda_eq[j] = -solution[n + rows.len() + r];
        }
        let slack = sparse_mul(&qp.a, &x) - &qp.b;
        Ok(Self {
            factor,
            x,
            lambda,
            lambda_eq,
            slack,
            error,
            lu_fallback,
        })
    }
}

/// Rounds of the repair that flip every violation at once (a primal-dual active-set step,
/// which settles in a few rounds on most problems) before it flips one row per round (the
/// dense path's rule, which cannot cycle back through a block of flips); the offset problem's
/// iteration ([`super::solve_offset`]) follows the same rule ([`flip_violations`]).
const BLOCK_ROUNDS: usize = 8;

/// The repair loop of the dense path's `refine`, on sparse factorizations: flip the sign
/// violations (all at once for [`BLOCK_ROUNDS`] rounds, then the worst one per round) until
/// none is left beyond rounding, then classify.
fn refine_sparse(
    qp: &SparseQp,
    tol: &Tolerances,
    working: &mut [bool],
    origin: Origin,
) -> Result<(ExactQp, SparseKkt)> {
    let m = qp.b.len();
    let scales = Scales::of(qp);
    let max_repairs = 2 * m + 10;
    let (mut repairs, mut rounds) = (0, 0);
    let mut set_aside: Option<Vec<usize>> = None;
    let mut eq_rows: Vec<usize> = (0..qp.b_eq.len()).collect();
    loop {
        let point = match SparsePoint::solve(qp, working, &eq_rows) {
            // Dependent equality rows with inconsistent right-hand sides make the system
            // singular: found, certified or set aside, once.
            Err(first @ Error::Singular(_))
                if eq_rows.len() > 1 && eq_rows.len() == qp.b_eq.len() =>
            {
                eq_rows = consistent_equalities(qp, tol, working, first)?;
                continue;
            }
            point => point?,
        };
        let flips = violations(qp, &scales, working, &point, tol);
        if flips.is_empty() && set_aside.is_none() {
            // Once, at the first exact point: exactly dependent held rows are set aside.
            let (dependent, eq_dependent) = dependent_held_rows(qp, working)?;
            dependent.iter().for_each(|&i| working[i] = false);
            eq_rows.retain(|j| !eq_dependent.contains(j));
            let again = !dependent.is_empty() || !eq_dependent.is_empty();
            set_aside = Some(dependent);
            if again {
                continue;
            }
        }
        if flips.is_empty() {
            let mut sol = into_exact(qp, &scales, tol, working, &point);
            sol.dependent_eq = (0..qp.b_eq.len())
                .filter(|j| !eq_rows.contains(j))
                .collect();
            let mut dependent: Vec<usize> = (set_aside.into_iter().flatten())
                .filter(|&i| !working[i])
                .collect();
            let outside: Vec<usize> = (0..working.len())
                .filter(|&i| !working[i] && sol.activity[i] != Activity::Inactive)
                .filter(|i| !dependent.contains(i))
                .collect();
            dependent.extend(in_held_span(qp, (working, &eq_rows), &outside)?);
            dependent.sort_unstable();
            sol.dependent = dependent;
            let origin = Origin { repairs, ..origin };
            return Ok((finish(sol, origin), point.factor));
        }
        if repairs >= max_repairs {
            return Err(Error::NotConverged {
                solver: format!("{} + sparse active-set refinement", origin.backend),
                iterations: repairs,
                residual: (-point.slack.min()).max(-point.lambda.min()).max(0.0),
            });
        }
        repairs += flip_violations(working, &flips, rounds);
        rounds += 1;
    }
}

/// The equality rows to keep when the first KKT system is singular: the exactly dependent
/// equalities (one measurement of `A_eq`, [`rows_to_set_aside`]: of an exact copy the later
/// one), each checked for consistency as the dense path checks it. At the point of the other
/// held rows, one solve on its factor, `P w + R_Kᵀy = a_i`, `R_K w = 0`, gives `a_i`'s
/// coefficients `y` (`w = 0`), and `β = b_i − yᵀb_K`. Beyond the feasibility tolerance of
/// `|b_i| + Σ|y_j b_j|`, `u = ±(e_i − y)` on the equalities is a Farkas certificate, checked on
/// the data ([`Error::Infeasible`]); within it the row is set aside.
///
/// # Errors
/// `singular` (the first error) when no equality is exactly dependent or a certificate does
/// not verify; [`Error::Infeasible`]; the point's errors without the set-aside rows.
fn consistent_equalities(
    qp: &SparseQp,
    tol: &Tolerances,
    working: &[bool],
    singular: Error,
) -> Result<Vec<usize>> {
    let k = qp.b_eq.len();
    let dependent = match rows_to_set_aside(&qp.a_eq, |_| true)? {
        Some(dependent) if !dependent.is_empty() => dependent,
        _ => return Err(singular),
    };
    let kept: Vec<usize> = (0..k).filter(|j| !dependent.contains(j)).collect();
    let point = SparsePoint::solve(qp, working, &kept)?;
    let (n, w) = (qp.n(), working.iter().filter(|&&held| held).count());
    for &i in &dependent {
        let mut u_eq = DVector::from_fn(k, |j, _| if j == i { 1.0 } else { 0.0 });
        let mut rhs = DVector::zeros(n + w + kept.len());
        rhs.rows_mut(0, n)
            .copy_from(&sparse_tr_mul(&qp.a_eq, &u_eq));
        let y = point.factor.solve(&rhs)?.solution;
        // Coefficients at the rounding of the largest are zeros (a column of A_eqᵀu made of
        // rounding alone would fail the certificate's per-column test).
        let cut = 64.0 * f64::EPSILON * y.rows(n + w, kept.len()).amax();
        for (r, &j) in kept.iter().enumerate() {
            let y_j = y[n + w + r];
            u_eq[j] = if y_j.abs() > cut { -y_j } else { 0.0 };
        }
        let beta = qp.b_eq.dot(&u_eq);
        if beta.abs() <= tol.feasibility * qp.b_eq.abs().dot(&u_eq.abs()).max(f64::MIN_POSITIVE) {
            continue;
        }
        let u_in = DVector::zeros(qp.b.len());
        let source =
            format!("Farkas certificate u = ±(e_i − y): equality {i} is a combination of others");
        return Err(farkas(qp, (&u_in, &(u_eq * beta.signum())), &source).unwrap_or(singular));
    }
    Ok(kept)
}

/// Flips the rows `flips` (worst first, not empty) of the working set in round `rounds` of a
/// repair: every one of them in the first [`BLOCK_ROUNDS`] rounds, then the worst one only.
/// Returns how many were flipped.
pub(super) fn flip_violations(working: &mut [bool], flips: &[usize], rounds: usize) -> usize {
    let block = if rounds < BLOCK_ROUNDS {
        flips.len()
    } else {
        1
    };
    for &i in &flips[..block] {
        working[i] = !working[i];
    }
    block
}

/// The held rows to set aside as exactly dependent on the others, in `qp`'s row numbers: the
/// inequality rows among the working ones, and the equality rows (one measurement of the
/// equalities, then the working rows, stacked in that order: [`crate::linalg::rows_to_set_aside`]
/// sets aside the last row with a fair share of each dependent direction, so of an exact copy
/// the later one, as the dense dual active set keeps the first, and a working row before an
/// equality, whose dependent copies the dense path drops before it solves). Beyond the
/// directions that test decides, none.
fn dependent_held_rows(qp: &SparseQp, working: &[bool]) -> Result<(Vec<usize>, Vec<usize>)> {
    let held: Vec<usize> = (0..working.len()).filter(|&i| working[i]).collect();
    let k = qp.b_eq.len();
    if held.len() + k <= 1 {
        return Ok((Vec::new(), Vec::new()));
    }
    let rows = stack_rows(&[(&qp.a_eq, None, 1.0), (&qp.a, Some(&held[..]), 1.0)]);
    let chosen = rows_to_set_aside(&rows, |_| true)?.unwrap_or_default();
    let (eq, ineq): (Vec<usize>, Vec<usize>) = chosen.into_iter().partition(|&r| r < k);
    Ok((ineq.into_iter().map(|r| held[r - k]).collect(), eq))
}

/// The rows of `outside` (active, not held) that lie in the span of the held rows, as the
/// dense path's [`ExactQp::dependent`] lists them (the held rows are independent by now, so
/// every exactly dependent direction involves one of them).
fn in_held_span(
    qp: &SparseQp,
    (working, eq_rows): (&[bool], &[usize]),
    outside: &[usize],
) -> Result<Vec<usize>> {
    if outside.is_empty() {
        return Ok(Vec::new());
    }
    let held: Vec<usize> = (0..working.len()).filter(|&i| working[i]).collect();
    let parts = [
        (&qp.a, Some(&held[..]), 1.0),
        (&qp.a_eq, Some(eq_rows), 1.0),
        (&qp.a, Some(outside), 1.0),
    ];
    let first = held.len() + eq_rows.len();
    let chosen = rows_to_set_aside(&stack_rows(&parts), |r| r >= first)?.unwrap_or_default();
    Ok(chosen.into_iter().map(|r| outside[r - first]).collect())
}

/// [`solve_sparse_exact`] without Clarabel: the repair loop from the working set `working`
/// (for a problem whose active set is nearly known, such as Eq. 17's, whose weak rows mostly
/// stay). Callers fall back to [`solve_sparse_exact`] on an error.
///
/// # Errors
/// As [`solve_sparse_exact`]'s refinement.
pub(crate) fn solve_sparse_from(
    qp: &SparseQp,
    tol: &Tolerances,
    mut working: Vec<bool>,
) -> Result<SparseExact> {
    qp.validate()?;
    if working.len() != qp.b.len() {
        return Err(Error::dim("working set", qp.b.len(), working.len()));
    }
    let (scaled, equilibration) = qp.equilibrated();
    let origin = Origin::new("sparse active set (warm start)");
    let (solution, factor) = refine_sparse(&scaled, tol, &mut working, origin)?;
    Ok(SparseExact {
        solution: equilibration.unscale(solution),
        factor,
        scales: equilibration.scales(),
    })
}

/// The problem's fixed scales for the tests: `max|P|`, `‖q‖∞` and each row's ∞- and 1-norm.
struct Scales {
    p_norm: f64,
    row_norms: DVector<f64>,
    row_l1: DVector<f64>,
}

impl Scales {
    fn of(qp: &SparseQp) -> Self {
        let ones = DVector::from_element(qp.n(), 1.0);
        Self {
            p_norm: sparse_amax(&qp.p),
            row_norms: sparse_row_amax(&qp.a),
            row_l1: sparse_abs_mul(&qp.a, &ones),
        }
    }
}

/// The rows the repair may flip, worst first (the dense path's rule without its span test):
/// rows outside the working set whose violation exceeds both what rounding explains
/// (`64ε (|b_i| + Σ_j |a_ij x_j|) + ‖a_i‖₁ err_x`) capped at the feasibility tolerance, or
/// the feasibility tolerance of `b_i` itself, most violated first; then held rows whose
/// multiplier is negative beyond rounding, most negative first.
fn violations(
    qp: &SparseQp,
    scales: &Scales,
    working: &[bool],
    point: &SparsePoint,
    tol: &Tolerances,
) -> Vec<usize> {
    let (x, slack, lambda) = (&point.x, &point.slack, &point.lambda);
    let test = ActivityTest::new(tol, scales.p_norm, qp.q.amax(), x);
    let terms = sparse_abs_mul(&qp.a, x) + qp.b.abs();
    let mut primal: Vec<usize> = (0..qp.b.len())
        .filter(|&i| !working[i] && slack[i] < 0.0)
        .filter(|&i| {
            let (b_i, violation) = (qp.b[i], -slack[i]);
            let rounding = 64.0 * f64::EPSILON * terms[i];
            let bound = (rounding + scales.row_l1[i] * point.error.0)
                .min(test.slack_tolerance(scales.row_norms[i], b_i));
            let own_b = (tol.feasibility * b_i.abs()).max(rounding);
            violation > bound || (b_i != 0.0 && violation > own_b)
        })
        .collect();
    primal.sort_by(|&i, &j| slack[i].total_cmp(&slack[j]));
    let rep_d = 64.0 * f64::EPSILON * test.force() + point.error.1;
    let pull = |i: usize| lambda[i] * scales.row_norms[i];
    let mut dual: Vec<usize> = (0..qp.b.len())
        .filter(|&i| working[i] && pull(i) < -rep_d)
        .collect();
    dual.sort_by(|&i, &j| pull(i).total_cmp(&pull(j)));
    primal.extend(dual);
    primal
}

/// The classified result at the final working set (residual as [`ExactQp::residual`]).
fn into_exact(
    qp: &SparseQp,
    scales: &Scales,
    tol: &Tolerances,
    working: &[bool],
    point: &SparsePoint,
) -> ExactQp {
    let x = point.x.clone();
    let test = ActivityTest::new(tol, scales.p_norm, qp.q.amax(), &x);
    let (lambda, slack) = (point.lambda.clone(), point.slack.clone());
    let activity = test.classify((&scales.row_norms, &qp.b), working, &lambda, &slack);
    let stationarity = (sparse_mul(&qp.p, &x) + &qp.q
        - sparse_tr_mul(&qp.a, &lambda)
        - sparse_tr_mul(&qp.a_eq, &point.lambda_eq))
    .amax();
    let eq = (sparse_mul(&qp.a_eq, &x) - &qp.b_eq).amax();
    ExactQp {
        residual: stationarity.max(eq).max(complementarity(&lambda, &slack)),
        x,
        lambda,
        lambda_eq: point.lambda_eq.clone(),
        slack,
        activity,
        working: working.to_vec(),
        condition: f64::NAN,
        backend: "",
        iterations: 0,
        repairs: 0,
        reduced_accuracy: false,
        dependent: Vec::new(),
        dependent_eq: Vec::new(),
        fallback: point.lu_fallback.then(|| {
            "the sparse LDLᵀ of the regularized KKT system did not reach rounding level; the \
             LU of the exact system solved it"
                .to_string()
        }),
    }
}

fn finish(sol: ExactQp, origin: Origin) -> ExactQp {
    ExactQp {
        backend: origin.backend,
        iterations: origin.iterations + origin.repairs,
        repairs: origin.repairs,
        reduced_accuracy: origin.reduced_accuracy,
        ..sol
    }
}
