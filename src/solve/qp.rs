//! Convex quadratic programs behind one small trait, with an exact active-set refinement.
//!
//! A [`Qp`] is
//! <div class="math">
//!
//! $$ \min_x \tfrac12 x^\top P x + q^\top x \quad \text{s.t.} \quad A x \ge b, \; A_{eq} x = b_{eq}, $$
//!
//! </div>
//!
//! with multipliers defined by the Lagrangian `½xᵀPx + qᵀx − λᵀ(Ax − b) − λ_eqᵀ(A_eq x − b_eq)`,
//! so stationarity reads `P x + q − Aᵀλ − A_eqᵀλ_eq = 0` and `λ ≥ 0`.
//!
//! A [`QpBackend`] (Clarabel, always built; OSQP behind the `osqp` feature) returns an
//! approximate primal-dual point. [`solve_exact`] then identifies the active set from it,
//! solves the equality-constrained KKT system on that set exactly (LU plus iterative
//! refinement), repairs the set if a sign condition fails (a few primal-dual active-set steps),
//! and classifies every inequality as strongly active, weakly active or inactive. This is
//! what makes derivatives exact whichever backend ran: interior-point and ADMM solvers both
//! leave `O(√tol)` ambiguity on weakly active constraints (slack and multiplier both tiny),
//! which the exact solve removes.

use nalgebra::{DMatrix, DVector};

use super::dense::{DenseFactor, Row};
use crate::error::{check_finite, Error, Result};
use crate::linalg::{select_rows, solve_kkt, vstack};

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

/// Settings of the [`Clarabel`] backend (interior point).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClarabelSettings {
    /// Iteration limit (default 200).
    pub max_iter: u32,
    /// Absolute and relative duality-gap and feasibility tolerance (default `1e-10`).
    pub tol: f64,
}

impl Default for ClarabelSettings {
    fn default() -> Self {
        Self {
            max_iter: 200,
            tol: 1e-10,
        }
    }
}

/// Clarabel, a pure-Rust interior-point solver: the default backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clarabel {
    /// Solver settings.
    pub settings: ClarabelSettings,
}

fn dense_to_clarabel(m: &DMatrix<f64>, upper_only: bool) -> clarabel::algebra::CscMatrix<f64> {
    let (rows, cols) = m.shape();
    let mut colptr = Vec::with_capacity(cols + 1);
    let mut rowval = Vec::new();
    let mut nzval = Vec::new();
    colptr.push(0);
    for j in 0..cols {
        let last = if upper_only { (j + 1).min(rows) } else { rows };
        for i in 0..last {
            let v = m[(i, j)];
            if v != 0.0 {
                rowval.push(i);
                nzval.push(v);
            }
        }
        colptr.push(rowval.len());
    }
    clarabel::algebra::CscMatrix::new(rows, cols, colptr, rowval, nzval)
}

impl QpBackend for Clarabel {
    fn name(&self) -> &'static str {
        "clarabel"
    }

    fn solve(&self, qp: &Qp) -> Result<QpRaw> {
        use clarabel::solver::{
            DefaultSettings, DefaultSolver, IPSolver, SolverStatus, SupportedConeT,
        };
        qp.validate()?;
        let n = qp.n();
        let (m, k) = (qp.b.len(), qp.b_eq.len());
        // Clarabel form: A_c x + s = b_c, s ∈ K, with K = {0}^k × R_+^m.
        // Equalities: A_eq x + s = b_eq, s = 0. Inequalities: −A x + s = −b, s = Ax − b ≥ 0.
        let a_c = vstack(&qp.a_eq, &(-&qp.a));
        let mut b_c: Vec<f64> = qp.b_eq.iter().copied().collect();
        b_c.extend(qp.b.iter().map(|v| -v));
        let mut cones = Vec::new();
        if k > 0 {
            cones.push(SupportedConeT::ZeroConeT(k));
        }
        if m > 0 {
            cones.push(SupportedConeT::NonnegativeConeT(m));
        }
        let t = self.settings.tol;
        let settings = DefaultSettings {
            max_iter: self.settings.max_iter,
            verbose: false,
            tol_gap_abs: t,
            tol_gap_rel: t,
            tol_feas: t,
            tol_ktratio: 1e-8,
            presolve_enable: false,
            // Measured on dense problems: QDLDL is faster up to a KKT size of a few hundred,
            // faer's supernodal LDLᵀ beyond (n = 1000, m = 500: 2.4 s against 11.4 s).
            direct_solve_method: if n + m + k >= 500 { "faer" } else { "qdldl" }.into(),
            max_threads: 1,
            ..DefaultSettings::default()
        };
        let p = dense_to_clarabel(&qp.p, true);
        let a = dense_to_clarabel(&a_c, false);
        let q: Vec<f64> = qp.q.iter().copied().collect();
        let mut solver = DefaultSolver::new(&p, &q, &a, &b_c, &cones, settings)
            .map_err(|e| Error::input("QP", format!("clarabel rejected the problem: {e:?}")))?;
        solver.solve();
        let sol = &solver.solution;
        let iterations = sol.iterations as usize;
        let reduced_accuracy = match sol.status {
            SolverStatus::Solved => false,
            SolverStatus::AlmostSolved => true,
            SolverStatus::PrimalInfeasible | SolverStatus::AlmostPrimalInfeasible => {
                return Err(Error::Infeasible(
                    "the constraints A x >= b, A_eq x = b_eq admit no point (clarabel certificate)"
                        .into(),
                ))
            }
            SolverStatus::DualInfeasible | SolverStatus::AlmostDualInfeasible => {
                return Err(Error::Unbounded(
                    "the QP objective is unbounded below on the feasible set (clarabel certificate)"
                        .into(),
                ))
            }
            other => {
                return Err(Error::NotConverged {
                    solver: format!("clarabel ({other:?})"),
                    iterations,
                    residual: sol.r_prim.max(sol.r_dual),
                })
            }
        };
        let x = DVector::from_column_slice(&sol.x);
        let lambda_eq = DVector::from_iterator(k, sol.z[..k].iter().map(|v| -v));
        let lambda = DVector::from_column_slice(&sol.z[k..k + m]);
        debug_assert_eq!(x.len(), n);
        Ok(QpRaw {
            x,
            lambda,
            lambda_eq,
            iterations,
            reduced_accuracy,
        })
    }
}

/// Settings of the [`Osqp`] backend (ADMM with solution polishing).
#[cfg(feature = "osqp")]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OsqpSettings {
    /// Iteration limit (default 100 000).
    pub max_iter: u32,
    /// Absolute and relative tolerance (default `1e-9`).
    pub eps: f64,
}

#[cfg(feature = "osqp")]
impl Default for OsqpSettings {
    fn default() -> Self {
        Self {
            max_iter: 100_000,
            eps: 1e-9,
        }
    }
}

/// OSQP (ADMM) with polishing enabled: the opt-in second backend (`--features osqp`).
///
/// ADMM alone is of low accuracy; [`solve_exact`] makes derivatives exact anyway.
#[cfg(feature = "osqp")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Osqp {
    /// Solver settings.
    pub settings: OsqpSettings,
}

#[cfg(feature = "osqp")]
impl QpBackend for Osqp {
    fn name(&self) -> &'static str {
        "osqp"
    }

    fn solve(&self, qp: &Qp) -> Result<QpRaw> {
        use osqp::{CscMatrix, Problem, Settings, Status};
        qp.validate()?;
        let n = qp.n();
        let (m, k) = (qp.b.len(), qp.b_eq.len());
        // OSQP form: l ≤ A_o x ≤ u. Rows: equalities (l = u = b_eq), then inequalities
        // (l = b, u = +∞). OSQP's y is positive at upper bounds, so λ = −y.
        let a_o = vstack(&qp.a_eq, &qp.a);
        let mut l: Vec<f64> = qp.b_eq.iter().copied().collect();
        let mut u = l.clone();
        l.extend(qp.b.iter().copied());
        // OSQP_INFTY: larger values count as no bound.
        u.extend(std::iter::repeat_n(1e30, m));
        let p = CscMatrix::from_column_iter_dense(n, n, qp.p.iter().copied()).into_upper_tri();
        let a = CscMatrix::from_column_iter_dense(m + k, n, a_o.iter().copied());
        let settings = Settings::default()
            .verbose(false)
            .polish(true)
            .eps_abs(self.settings.eps)
            .eps_rel(self.settings.eps)
            .max_iter(self.settings.max_iter);
        let q: Vec<f64> = qp.q.iter().copied().collect();
        let mut prob = Problem::new(p, &q, a, &l, &u, &settings)
            .map_err(|e| Error::input("QP", format!("osqp rejected the problem: {e:?}")))?;
        let status = prob.solve();
        let iterations = status.iter() as usize;
        let (sol, reduced_accuracy) = match status {
            Status::Solved(s) => (s, false),
            Status::SolvedInaccurate(s) => (s, true),
            Status::PrimalInfeasible(_) | Status::PrimalInfeasibleInaccurate(_) => {
                return Err(Error::Infeasible(
                    "the constraints A x >= b, A_eq x = b_eq admit no point (osqp certificate)"
                        .into(),
                ))
            }
            Status::DualInfeasible(_) | Status::DualInfeasibleInaccurate(_) => {
                return Err(Error::Unbounded(
                    "the QP objective is unbounded below on the feasible set (osqp certificate)"
                        .into(),
                ))
            }
            Status::MaxIterationsReached(s) | Status::TimeLimitReached(s) => {
                return Err(Error::NotConverged {
                    solver: "osqp".into(),
                    iterations,
                    residual: s.pri_res().max(s.dua_res()),
                })
            }
            _ => {
                return Err(Error::NotConverged {
                    solver: "osqp (non-convex or failed)".into(),
                    iterations,
                    residual: f64::NAN,
                })
            }
        };
        let y = sol.y();
        Ok(QpRaw {
            x: DVector::from_column_slice(sol.x()),
            lambda_eq: DVector::from_iterator(k, y[..k].iter().map(|v| -v)),
            lambda: DVector::from_iterator(m, y[k..].iter().map(|v| -v)),
            iterations,
            reduced_accuracy,
        })
    }
}

/// Tolerances used to *classify* constraints after the exact solve (the solve itself enforces
/// the sign conditions to rounding level, see [`refine`]). Both are relative: the feasibility
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
    /// method ([`dual_active_set`]) found the solution instead: the backend's message.
    pub fallback: Option<String>,
}

/// Solves `qp` with `backend`, then refines exactly (see the module docs).
///
/// # Errors
/// The backend's errors; [`Error::Singular`] when the KKT system on the identified active set is
/// singular (LICQ fails); [`Error::NotConverged`] when the active-set repair does not settle.
pub fn solve_exact(backend: &dyn QpBackend, qp: &Qp, tol: &Tolerances) -> Result<ExactQp> {
    let m = qp.b.len();
    if m == 0 {
        // Equalities only: one KKT solve is the exact answer; no backend needed.
        qp.validate()?;
        return refine(qp, tol, &mut [], "direct KKT (no inequalities)", 0, false);
    }
    let backend_result = backend.solve(qp).and_then(|raw| {
        // Identification: an interior-point or ADMM point has, for each inequality, either a
        // small slack or a small multiplier; the larger of the two tells which side of
        // complementarity the exact solution is on (ties are weakly active and either choice is
        // exact).
        let slack0 = &qp.a * &raw.x - &qp.b;
        let mut working: Vec<bool> = (0..m).map(|i| slack0[i] < raw.lambda[i]).collect();
        refine(
            qp,
            tol,
            &mut working,
            backend.name(),
            raw.iterations,
            raw.reduced_accuracy,
        )
    });
    match backend_result {
        Ok(sol) => Ok(sol),
        // A backend's verdict or failure is not taken on trust: badly scaled data make
        // interior-point solvers report infeasible or unbounded problems that are neither (a
        // strictly convex QP is never unbounded). The dual active-set method either finds the
        // exact working set or proves infeasibility; if it cannot run (P only semidefinite), the
        // backend's own answer stands.
        Err(backend_error) => match dual_active_set(qp) {
            Ok(mut working) => {
                let mut sol = refine(qp, tol, &mut working, "dual active set", 0, false)?;
                sol.fallback = Some(backend_error.to_string());
                Ok(sol)
            }
            Err(Error::NotPositiveDefinite { .. }) => Err(backend_error),
            Err(e) => Err(e),
        },
    }
}

/// [`solve_exact`] on a [`DenseFactor`] of the QP's `P` and of a superset of its rows: the
/// dual active-set method finds the exact working set without an interior-point solve, and its
/// factorization gives the KKT point, the refinement and the condition estimate (`O(|W|³ + n²)`
/// per solve once the factor exists). `rows[j]` is the factor's row of the QP's stacked row `j`
/// (`A`'s rows, then `A_eq`'s); the factor's other rows are left out. The point then passes
/// the same sign and accuracy checks as [`refine`]'s; if one fails (rounding on an
/// ill-conditioned problem), [`refine`] continues from the working set on the null-space KKT
/// solve, and if the active-set method itself fails for anything but a proved infeasibility,
/// [`solve_exact`] with Clarabel runs instead (reported in `fallback`).
///
/// # Errors
/// [`Error::Infeasible`] with the certificate; `rows` of the wrong length or out of the
/// factor's range; otherwise as [`solve_exact`].
pub fn solve_exact_dense(
    factor: &DenseFactor,
    qp: &Qp,
    rows: &[usize],
    tol: &Tolerances,
) -> Result<ExactQp> {
    dense_exact(factor, qp, rows, tol, true)
}

/// [`solve_exact_dense`]; without `condition` the estimate is skipped (`ExactQp::condition`
/// is then `NaN`: for callers that do not report it, such as a layer's forward solve).
pub(crate) fn dense_exact(
    factor: &DenseFactor,
    qp: &Qp,
    rows: &[usize],
    tol: &Tolerances,
    condition: bool,
) -> Result<ExactQp> {
    qp.validate()?;
    let (m, k) = (qp.b.len(), qp.b_eq.len());
    if rows.len() != m + k || rows.iter().any(|&r| r >= factor.rows()) {
        return Err(Error::dim("rows (of the dense factor)", m + k, rows.len()));
    }
    let mut b = DVector::zeros(factor.rows());
    let mut kinds = vec![Row::Off; factor.rows()];
    for (j, &r) in rows.iter().enumerate() {
        (b[r], kinds[r]) = if j < m {
            (qp.b[j], Row::Inequality)
        } else {
            (qp.b_eq[j - m], Row::Equality)
        };
    }
    let solved = factor.solve(&qp.q, &b, &kinds).and_then(|sol| {
        if sol.x.iter().chain(sol.y.iter()).all(|v| v.is_finite()) {
            Ok(sol)
        } else {
            Err(Error::NonFinite {
                what: "the dense active-set point (data beyond its range)".into(),
            })
        }
    });
    let sol = match solved {
        Ok(sol) => sol,
        Err(e @ Error::Infeasible(_)) => return Err(e),
        Err(e) => {
            let mut sol = solve_exact(&Clarabel::default(), qp, tol)?;
            sol.fallback = Some(format!("{DENSE}: {e}"));
            return Ok(sol);
        }
    };
    let mut working: Vec<bool> = rows[..m].iter().map(|&r| sol.working[r]).collect();
    let tol_p = tol.feasibility * (1.0 + qp.b.amax().max(qp.b_eq.amax()));
    let y = DVector::from_fn(m + k, |j, _| sol.y[rows[j]]);
    let point = WorkingPoint::from_dense(qp, &sol.x, &y, &working, sol.error, || {
        if condition {
            factor.condition(&sol.working)
        } else {
            f64::NAN
        }
    });
    if worst_violation(qp, &working, &point, tol_p).is_some() || !point.accurate(qp, &working) {
        return refine(qp, tol, &mut working, DENSE, sol.steps, false);
    }
    Ok(point.into_exact(qp, tol, &working, tol_p, DENSE, sol.steps, 0, false))
}

/// The name [`solve_exact_dense`] reports as its backend.
pub const DENSE: &str = "dense active set";

/// The exact part of [`solve_exact`], starting from a given working set (also used by the
/// brute-force references in tests).
pub fn refine(
    qp: &Qp,
    tol: &Tolerances,
    working: &mut [bool],
    backend: &'static str,
    backend_iterations: usize,
    reduced_accuracy: bool,
) -> Result<ExactQp> {
    let m = qp.b.len();
    let tol_p = tol.feasibility * (1.0 + qp.b.amax().max(qp.b_eq.amax()));
    let max_repairs = 2 * m + 10;
    let mut repairs = 0;
    loop {
        let point = WorkingPoint::solve(qp, working)?;
        let Some(i) = worst_violation(qp, working, &point, tol_p) else {
            return Ok(point.into_exact(
                qp,
                tol,
                working,
                tol_p,
                backend,
                backend_iterations + repairs,
                repairs,
                reduced_accuracy,
            ));
        };
        if repairs >= max_repairs {
            return Err(Error::NotConverged {
                solver: format!("{backend} + active-set refinement"),
                iterations: repairs,
                residual: (-point.slack.min()).max(-point.lambda.min()).max(0.0),
            });
        }
        working[i] = !working[i];
        repairs += 1;
    }
}

/// The exact KKT point of a working set: the rows in it held as equalities.
struct WorkingPoint {
    kkt: crate::linalg::KktSolution,
    /// The working rows, then the equality rows.
    a_w: DMatrix<f64>,
    lambda: DVector<f64>,
    lambda_eq: DVector<f64>,
    slack: DVector<f64>,
}

impl WorkingPoint {
    /// The point of a [`DenseFactor::solve`] (`y`: the QP's stacked multipliers), in this
    /// struct's conventions.
    fn from_dense(
        qp: &Qp,
        x: &DVector<f64>,
        y: &DVector<f64>,
        working: &[bool],
        error: (f64, f64),
        condition: impl FnOnce() -> f64,
    ) -> Self {
        let (m, k) = (qp.b.len(), qp.b_eq.len());
        let rows: Vec<usize> = (0..m).filter(|&i| working[i]).collect();
        let a_w = vstack(&select_rows(&qp.a, &rows), &qp.a_eq);
        let lambda = y.rows(0, m).into_owned();
        let lambda_eq = y.rows(m, k).into_owned();
        let mut nu = DVector::zeros(rows.len() + k);
        for (r, &i) in rows.iter().enumerate() {
            nu[r] = -lambda[i];
        }
        nu.rows_mut(rows.len(), k).copy_from(&(-&lambda_eq));
        let slack = &qp.a * x - &qp.b;
        let stationarity = &qp.p * x + &qp.q - qp.a.tr_mul(&lambda) - qp.a_eq.tr_mul(&lambda_eq);
        let mut residual = stationarity.amax();
        for &i in &rows {
            residual = residual.max(slack[i].abs());
        }
        if k > 0 {
            residual = residual.max((&qp.a_eq * x - &qp.b_eq).amax());
        }
        Self {
            kkt: crate::linalg::KktSolution {
                x: x.clone(),
                nu,
                condition: condition(),
                residual,
                error,
            },
            a_w,
            lambda,
            lambda_eq,
            slack,
        }
    }

    /// The KKT system on the working set holds to the accuracy [`solve_kkt`] demands.
    fn accurate(&self, qp: &Qp, working: &[bool]) -> bool {
        let rows: Vec<usize> = (0..qp.b.len()).filter(|&i| working[i]).collect();
        let (n, k, w) = (qp.n(), qp.b_eq.len(), self.kkt.nu.len());
        let mut s = DVector::zeros(rows.len() + k);
        for (r, &i) in rows.iter().enumerate() {
            s[r] = qp.b[i];
        }
        s.rows_mut(rows.len(), k).copy_from(&qp.b_eq);
        let mut sol = DVector::zeros(n + w);
        sol.rows_mut(0, n).copy_from(&self.kkt.x);
        sol.rows_mut(n, w).copy_from(&self.kkt.nu);
        crate::linalg::check_kkt_accuracy(&qp.p, &self.a_w, &(-&qp.q), &s, &sol).is_ok()
    }

    fn solve(qp: &Qp, working: &[bool]) -> Result<Self> {
        let (m, k) = (qp.b.len(), qp.b_eq.len());
        let rows: Vec<usize> = (0..m).filter(|&i| working[i]).collect();
        let a_w = vstack(&select_rows(&qp.a, &rows), &qp.a_eq);
        let mut rhs_c = DVector::zeros(rows.len() + k);
        for (r, &i) in rows.iter().enumerate() {
            rhs_c[r] = qp.b[i];
        }
        rhs_c.rows_mut(rows.len(), k).copy_from(&qp.b_eq);
        let kkt = solve_kkt(&qp.p, &a_w, &(-&qp.q), &rhs_c)?;
        let mut lambda = DVector::zeros(m);
        for (r, &i) in rows.iter().enumerate() {
            lambda[i] = -kkt.nu[r];
        }
        let lambda_eq = -kkt.nu.rows(rows.len(), k);
        let slack = &qp.a * &kkt.x - &qp.b;
        Ok(Self {
            kkt,
            a_w,
            lambda,
            lambda_eq,
            slack,
        })
    }

    /// The result once no repair is needed: classification, dependent rows, KKT residual.
    #[allow(clippy::too_many_arguments)]
    fn into_exact(
        self,
        qp: &Qp,
        tol: &Tolerances,
        working: &[bool],
        tol_p: f64,
        backend: &'static str,
        iterations: usize,
        repairs: usize,
        reduced_accuracy: bool,
    ) -> ExactQp {
        let (x, lambda, slack) = (self.kkt.x, self.lambda, self.slack);
        let tol_d = tol.multiplier * (1.0 + qp.q.amax() + qp.p.amax() * x.amax());
        let activity = classify(working, &lambda, &slack, tol_p, tol_d);
        let dependent = dependent_rows(&qp.a, &self.a_w, |i| !working[i] && slack[i] <= tol_p);
        let stationarity =
            &qp.p * &x + &qp.q - qp.a.tr_mul(&lambda) - qp.a_eq.tr_mul(&self.lambda_eq);
        let eq_res = if qp.b_eq.is_empty() {
            0.0
        } else {
            (&qp.a_eq * &x - &qp.b_eq).amax()
        };
        let residual = stationarity
            .amax()
            .max(eq_res)
            .max(complementarity(&lambda, &slack));
        ExactQp {
            x,
            lambda,
            lambda_eq: self.lambda_eq,
            slack,
            activity,
            working: working.to_vec(),
            condition: self.kkt.condition,
            residual,
            backend,
            iterations,
            repairs,
            reduced_accuracy,
            fallback: None,
            dependent,
        }
    }
}

/// The row the repair loop flips next: the most violated constraint outside the working set,
/// else the most negative multiplier inside it; `None` at the exact solution.
///
/// The repair demands sign conditions up to what rounding explains, not up to the
/// classification tolerances: a point that violates a constraint by 1e-9 is not the exact
/// solution, and finite differences at small β see the difference. Rounding is measured per
/// row ([`slack_rounding`]) with the KKT solve's own error estimate; a global `cond · ‖A‖‖x‖`
/// bound once let a violation of 21 pass as rounding. A violation beyond the feasibility
/// tolerance is repaired even when that estimate could explain it (ill-conditioned systems):
/// the result must be feasible as documented, or the iteration ends in an error.
fn worst_violation(qp: &Qp, working: &[bool], point: &WorkingPoint, tol_p: f64) -> Option<usize> {
    let (x, slack, lambda, error) = (&point.kkt.x, &point.slack, &point.lambda, point.kkt.error);
    let m = qp.b.len();
    let rep_d = 64.0 * f64::EPSILON * (1.0 + qp.q.amax() + qp.p.amax() * x.amax()) + error.1;
    let worst_primal = (0..m)
        .filter(|&i| {
            let bound = slack_rounding(&qp.a, i, qp.b[i], x, error.0).min(tol_p);
            !working[i] && slack[i] < -bound
        })
        .min_by(|&i, &j| slack[i].total_cmp(&slack[j]));
    let worst_dual = (0..m)
        .filter(|&i| working[i] && lambda[i] < -rep_d)
        .min_by(|&i, &j| lambda[i].total_cmp(&lambda[j]));
    worst_primal.or(worst_dual)
}

/// The dual active-set method of Goldfarb and Idnani (1983) for a *strictly* convex QP: the
/// working set of the exact solution, or a verified infeasibility certificate. It is the
/// fallback of [`solve_exact`] whenever a backend fails or returns a verdict it cannot prove.
///
/// Starting from the minimizer on the equality constraints (dual feasible, every inequality
/// multiplier zero), each step adds the most violated inequality `p`, moving the primal point
/// along `z` (which keeps the working set active) and the multipliers along `−r` (from the KKT
/// system `[P, N; Nᵀ, 0][z; r] = [n_p; 0]` of the working normals `N`), and drops a working
/// inequality whose multiplier reaches zero first. If `n_p` is a non-negative combination of the
/// working inequality normals (`z = 0`, `r ≤ 0`), then `y = (1, −r)` is a Farkas certificate:
/// `Σ y_i a_i = 0` with `Σ y_i b_i = b_p − a_pᵀx > 0`, so no point satisfies the constraints.
/// Every step strictly increases the dual objective, so the method terminates (at most a few
/// multiples of `m` steps in practice; capped at `10m + 20`). Dependent rows (LICQ failing) are
/// never added: a row in the span of the working rows is satisfied when they are.
///
/// # Errors
/// [`Error::Infeasible`] with the certificate; [`Error::NotPositiveDefinite`] when `P` is not
/// (then nothing can be proved this way); [`Error::Singular`] for dependent equality rows;
/// [`Error::NotConverged`] at the step cap.
pub fn dual_active_set(qp: &Qp) -> Result<Vec<bool>> {
    qp.validate()?;
    let m = qp.b.len();
    let chol =
        qp.p.clone()
            .cholesky()
            .ok_or_else(|| Error::NotPositiveDefinite {
                what: "P".into(),
                reason: "the dual active-set method needs a strictly convex QP".into(),
            })?;
    let mut working = vec![false; m];
    let mut lambda = DVector::<f64>::zeros(m);
    let solve_on = |working: &[bool]| -> Result<DVector<f64>> {
        let rows: Vec<usize> = (0..m).filter(|&i| working[i]).collect();
        let a_w = vstack(&select_rows(&qp.a, &rows), &qp.a_eq);
        let mut rhs = DVector::zeros(rows.len() + qp.b_eq.len());
        for (j, &i) in rows.iter().enumerate() {
            rhs[j] = qp.b[i];
        }
        rhs.rows_mut(rows.len(), qp.b_eq.len()).copy_from(&qp.b_eq);
        Ok(solve_kkt(&qp.p, &a_w, &(-&qp.q), &rhs)?.x)
    };
    let mut x = solve_on(&working)?;
    let max_steps = 10 * m + 20;
    for _ in 0..max_steps {
        let slack = &qp.a * &x - &qp.b;
        let Some(p) = (0..m)
            .filter(|&i| !working[i] && slack[i] < -slack_rounding(&qp.a, i, qp.b[i], &x, 0.0))
            .min_by(|&i, &j| slack[i].total_cmp(&slack[j]))
        else {
            return Ok(working);
        };
        let n_p = qp.a.row(p).transpose();
        let full_ratio = n_p.dot(&chol.solve(&n_p)).max(f64::MIN_POSITIVE);
        // Add p: partial steps (dropping blocking rows) until p is active.
        loop {
            let rows: Vec<usize> = (0..m).filter(|&i| working[i]).collect();
            let a_w = vstack(&select_rows(&qp.a, &rows), &qp.a_eq);
            let kkt = solve_kkt(&qp.p, &a_w, &n_p, &DVector::zeros(a_w.nrows()))?;
            let z = kkt.x;
            let r = kkt.nu;
            let zn = z.dot(&n_p);
            let s_p = qp.a.row(p).dot(&x.transpose()) - qp.b[p];
            // Blocking working inequality: the first multiplier to reach zero along −r.
            let block = rows
                .iter()
                .enumerate()
                .filter(|&(j, _)| r[j] > 0.0)
                .map(|(j, &i)| (lambda[i] / r[j], j, i))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            let in_span = zn <= 1e-12 * full_ratio;
            if in_span && block.is_none() {
                return Err(Error::Infeasible(format!(
                    "inequality {p} cannot be satisfied together with the {} working \
                     constraints (verified Farkas certificate from the dual active-set method)",
                    rows.len() + qp.b_eq.len()
                )));
            }
            let t_full = if in_span { f64::INFINITY } else { -s_p / zn };
            let (t, drop) = match block {
                Some((t_dual, j, i)) if t_dual < t_full => (t_dual, Some((j, i))),
                _ => (t_full, None),
            };
            if !in_span {
                x += &z * t;
            }
            for (j, &i) in rows.iter().enumerate() {
                lambda[i] -= t * r[j];
            }
            lambda[p] += t;
            match drop {
                Some((_, i)) => {
                    working[i] = false;
                    lambda[i] = 0.0;
                }
                None => {
                    working[p] = true;
                    // Recompute x on the new working set exactly (no drift over many steps).
                    x = solve_on(&working)?;
                    break;
                }
            }
        }
    }
    Err(Error::NotConverged {
        solver: "dual active-set method".into(),
        iterations: max_steps,
        residual: (-(&qp.a * &x - &qp.b).min()).max(0.0),
    })
}

/// The offset problem of a QP whose solution at a base point is known: the rate
/// `f = (x̂ − x*)/s` (`s > 0`) of the solution `x̂` of a perturbed QP, with the perturbation's
/// data divided by `s` so that nothing of size `s` is ever added to something of size 1.
///
/// With `x*, λ*, λ*_eq` the exact solution of `min ½xᵀP₀x + q₀ᵀx` on the constraints of [`Qp`],
/// and the perturbed QP `P = P₀ + ΔP`, `q = q₀ + Δq` on the same constraints, subtracting the two
/// KKT systems gives, for `μ = (λ̂ − λ*)/s` and `μ_eq = (λ̂_eq − λ*_eq)/s`,
/// ```text
///     P f + g − Aᵀμ − A_eqᵀμ_eq = 0,   g = (ΔP x* + Δq)/s,
///     A_i f ≥ −t_i,  t_i = (a_iᵀx* − b_i)/s,   A_eq f = 0,
///     μ_i ≥ −m_i,  m_i = λ*_i/s,   (μ_i + m_i)(A_i f + t_i) = 0.
/// ```
/// Rows active at `x*` have `t_i = 0`; `t_i` and `m_i` may be `+∞` (a row too far away to
/// become active, or too strongly held to leave, at this `s`).
#[derive(Debug, Clone)]
pub struct OffsetQp {
    /// `P = P₀ + ΔP`, symmetric positive definite.
    pub p: DMatrix<f64>,
    /// `g = (ΔP x* + Δq)/s`.
    pub g: DVector<f64>,
    /// Inequality rows.
    pub a: DMatrix<f64>,
    /// Equality rows.
    pub a_eq: DMatrix<f64>,
    /// `t_i = (a_iᵀx* − b_i)/s ≥ 0`, exactly `0` for rows active at `x*`.
    pub t: DVector<f64>,
    /// `m_i = λ*_i/s ≥ 0`.
    pub m: DVector<f64>,
}

/// The solution of an [`OffsetQp`].
#[derive(Debug, Clone)]
#[must_use]
pub struct OffsetSolution {
    /// The rate `f`.
    pub f: DVector<f64>,
    /// `μ_i` on the working set, `−m_i` off it (so `λ̂ = s(m + μ)` everywhere).
    pub mu: DVector<f64>,
    /// `μ_eq`.
    pub mu_eq: DVector<f64>,
    /// The final working set (`true`: `A_i f = −t_i`).
    pub working: Vec<bool>,
    /// Condition estimate of the final KKT matrix.
    pub condition: f64,
    /// ∞-norm residual of the rate system (stationarity; feasibility and the shifted sign
    /// conditions hold by construction of the working set).
    pub residual: f64,
    /// Working-set changes.
    pub repairs: usize,
}

/// Solves an [`OffsetQp`] by the primal-dual active-set iteration of [`refine`], started from
/// `working` (e.g. the rows active at `x*`).
///
/// # Errors
/// [`Error::Singular`] for a singular KKT system on a working set; [`Error::NotConverged`] when
/// `2m + 10` working-set changes do not settle (callers then fall back to solving `x̂` directly).
pub fn solve_offset(o: &OffsetQp, working: &mut [bool]) -> Result<OffsetSolution> {
    let n = o.p.nrows();
    let (m, k) = (o.t.len(), o.a_eq.nrows());
    if o.a.nrows() != m || o.m.len() != m || working.len() != m || o.g.len() != n {
        return Err(Error::dim("offset QP", m, o.a.nrows()));
    }
    // A row held with an unbounded m_i (λ*_i/s overflowed) cannot leave at this s.
    for i in (0..m).filter(|&i| o.m[i] == f64::INFINITY) {
        working[i] = true;
    }
    let max_repairs = 2 * m + 10;
    let mut repairs = 0;
    loop {
        let rows: Vec<usize> = (0..m).filter(|&i| working[i]).collect();
        let a_w = vstack(&select_rows(&o.a, &rows), &o.a_eq);
        // Rows that hold a multiplier at x* but left the working set keep λ̂_i = 0, i.e.
        // μ_i = −m_i: that term moves to the right-hand side.
        let mut r = -&o.g;
        for i in (0..m).filter(|&i| !working[i] && o.m[i] > 0.0) {
            r -= o.a.row(i).transpose() * o.m[i];
        }
        let mut s = DVector::zeros(rows.len() + k);
        for (j, &i) in rows.iter().enumerate() {
            s[j] = -o.t[i];
        }
        let kkt = solve_kkt(&o.p, &a_w, &r, &s)?;
        let f = kkt.x;
        let mut mu = -&o.m;
        for (j, &i) in rows.iter().enumerate() {
            mu[i] = -kkt.nu[j];
        }
        let mu_eq = -kkt.nu.rows(rows.len(), k);
        let af = &o.a * &f;
        let rep_d = 64.0 * f64::EPSILON * (1.0 + r.amax() + o.p.amax() * f.amax()) + kkt.error.1;
        // `t` and `m` may be +∞: such a row is never violated, which the comparisons give.
        let worst_primal = (0..m)
            .filter(|&i| {
                !working[i] && af[i] + o.t[i] < -slack_rounding(&o.a, i, o.t[i], &f, kkt.error.0)
            })
            .min_by(|&i, &j| (af[i] + o.t[i]).total_cmp(&(af[j] + o.t[j])));
        let worst_dual = (0..m)
            .filter(|&i| working[i] && mu[i] + o.m[i] < -rep_d)
            .min_by(|&i, &j| (mu[i] + o.m[i]).total_cmp(&(mu[j] + o.m[j])));
        if let Some(i) = worst_primal.or(worst_dual) {
            if repairs >= max_repairs {
                return Err(Error::NotConverged {
                    solver: "offset active-set iteration".into(),
                    iterations: repairs,
                    residual: kkt.residual,
                });
            }
            working[i] = !working[i];
            repairs += 1;
            continue;
        }
        return Ok(OffsetSolution {
            f,
            mu,
            mu_eq,
            working: working.to_vec(),
            condition: kkt.condition,
            residual: kkt.residual,
            repairs,
        });
    }
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
fn slack_rounding(a: &DMatrix<f64>, i: usize, b_i: f64, x: &DVector<f64>, err_x: f64) -> f64 {
    let row = a.row(i);
    let product: f64 = row.iter().zip(x.iter()).map(|(a, x)| (a * x).abs()).sum();
    64.0 * f64::EPSILON * (b_i.abs() + product) + row.lp_norm(1) * err_x
}

/// The rows `i` of `a` with `candidate(i)` that lie in the row space of `a_w` (relative
/// residual of the least-squares fit below `1e-10`; a zero row always does).
fn dependent_rows(
    a: &DMatrix<f64>,
    a_w: &DMatrix<f64>,
    candidate: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let rows: Vec<usize> = (0..a.nrows()).filter(|&i| candidate(i)).collect();
    if rows.is_empty() {
        return rows;
    }
    let svd = (a_w.nrows() > 0).then(|| a_w.transpose().svd(true, true));
    rows.into_iter()
        .filter(|&i| {
            let ai = a.row(i).transpose();
            let norm = ai.norm();
            if norm == 0.0 {
                return true;
            }
            let Some(svd) = &svd else { return false };
            let tol = 1e-12 * svd.singular_values.max();
            svd.solve(&ai, tol)
                .map(|y| (a_w.transpose() * y - &ai).norm() <= 1e-10 * norm)
                .unwrap_or(false)
        })
        .collect()
}

/// Brute-force reference: enumerates all `2^m` working sets and returns the unique one whose
/// exact KKT point is primal and dual feasible. Only for small `m` (tests and `verify`).
///
/// # Errors
/// [`Error::InvalidInput`] for `m > 20`; [`Error::Infeasible`] when no working set satisfies
/// the KKT conditions.
pub fn solve_by_enumeration(qp: &Qp, tol: &Tolerances) -> Result<DVector<f64>> {
    let m = qp.b.len();
    if m > 20 {
        return Err(Error::input(
            "A",
            "enumeration is limited to 20 inequalities",
        ));
    }
    let tol_p = tol.feasibility * (1.0 + qp.b.amax().max(qp.b_eq.amax()));
    for mask in 0u32..(1u32 << m) {
        let rows: Vec<usize> = (0..m).filter(|&i| mask & (1 << i) != 0).collect();
        let a_w = vstack(&select_rows(&qp.a, &rows), &qp.a_eq);
        let mut rhs_c = DVector::zeros(rows.len() + qp.b_eq.len());
        for (r, &i) in rows.iter().enumerate() {
            rhs_c[r] = qp.b[i];
        }
        rhs_c
            .rows_mut(rows.len(), qp.b_eq.len())
            .copy_from(&qp.b_eq);
        let Ok(kkt) = solve_kkt(&qp.p, &a_w, &(-&qp.q), &rhs_c) else {
            continue;
        };
        let tol_d = tol.multiplier * (1.0 + qp.q.amax() + qp.p.amax() * kkt.x.amax());
        let slack = &qp.a * &kkt.x - &qp.b;
        let primal_ok = (0..m).all(|i| slack[i] >= -tol_p);
        let dual_ok = rows.iter().enumerate().all(|(r, _)| -kkt.nu[r] >= -tol_d);
        if primal_ok && dual_ok {
            return Ok(kkt.x);
        }
    }
    Err(Error::Infeasible(
        "no working set satisfies the KKT conditions".into(),
    ))
}
