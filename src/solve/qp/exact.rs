//! The exact refinement: from a backend's approximate point (or the dense dual active-set
//! method's working set) to the exact KKT point of the identified active set, repaired until
//! every sign condition holds to rounding, with each row classified (see the module docs of
//! [`super`]).

use nalgebra::{DMatrix, DVector};

use super::clarabel::Clarabel;
use super::dense::{DenseActiveSet, DenseFactor, Row, DENSE, DEPENDENT_EQUALITIES};
use super::equalities::without_dependent_equalities;
use super::problem::{
    complementarity, slack_rounding, slack_terms, ActivityTest, Equilibration, ExactQp, Qp,
    QpBackend, Tolerances,
};
use crate::error::{Error, Result};
use crate::linalg::{
    amax, power_of_two_scale, row_amax, rows_in_span, select_rows, solve_kkt, vstack,
};

/// Solves `qp` with `backend`, then refines exactly (see the module docs). The rows are
/// equilibrated first (each multiplied by the power of two that brings its ∞-norm into
/// `[1, 2)`, which is exact), so the answer does not depend on how a row is scaled.
///
/// # Errors
/// The backend's errors; [`Error::Singular`] when the KKT system on the identified active set is
/// singular (LICQ fails); [`Error::NotConverged`] when the active-set repair does not settle.
pub fn solve_exact(backend: &dyn QpBackend, qp: &Qp, tol: &Tolerances) -> Result<ExactQp> {
    qp.validate()?;
    let (scaled, equilibration) = Equilibration::of(qp);
    let sol = without_dependent_equalities(&scaled, tol.feasibility, |reduced, _| {
        exact_scaled(backend, reduced, tol)
    })?;
    Ok(equilibration.unscale(sol))
}

/// [`solve_exact`] on an equilibrated problem with independent equality rows.
fn exact_scaled(backend: &dyn QpBackend, qp: &Qp, tol: &Tolerances) -> Result<ExactQp> {
    let m = qp.b.len();
    if m == 0 {
        // Equalities only: one KKT solve is the exact answer; no backend needed.
        return refine_scaled(
            qp,
            tol,
            &mut [],
            Origin::new("direct KKT (no inequalities)"),
        );
    }
    let backend_result = backend.solve(qp).and_then(|raw| {
        // Identification: an interior-point or ADMM point has, for each inequality, either a
        // small slack or a small multiplier; the larger of the two tells which side of
        // complementarity the exact solution is on (ties are weakly active and either choice is
        // exact). Both are compared on their own scales, so that the choice does not depend on
        // the scale of the energy or of the solution.
        let slack0 = &qp.a * &raw.x - &qp.b;
        let test = ActivityTest::new(tol, amax(qp.p.as_slice()), qp.q.amax(), &raw.x);
        let norms = row_amax(&qp.a);
        let mut working: Vec<bool> = (0..m)
            .map(|i| {
                test.relative_slack(norms[i], qp.b[i], slack0[i])
                    < test.relative_multiplier(norms[i], raw.lambda[i])
            })
            .collect();
        let origin = Origin::new(backend.name()).after(raw.iterations, raw.reduced_accuracy);
        refine_scaled(qp, tol, &mut working, origin)
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
                let origin = Origin::new("dual active set");
                let mut sol = refine_scaled(qp, tol, &mut working, origin)?;
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
    // The factor equilibrates its rows itself and the activity tests are scale-invariant, so
    // the problem is used as given (no copy); the rare fallbacks equilibrate. Rows so large or
    // small that a slack over- or underflows (beyond 2^±400) take the equilibrated path.
    let extreme = |a: &DMatrix<f64>| {
        (row_amax(a).iter())
            .any(|&norm| norm != 0.0 && !(EXTREME_ROW.recip()..=EXTREME_ROW).contains(&norm))
    };
    if extreme(&qp.a) || extreme(&qp.a_eq) {
        return solve_exact(&DenseActiveSet, qp, tol);
    }
    without_dependent_equalities(qp, tol.feasibility, |reduced, kept| {
        if kept.len() == k {
            return dense_with_independent_equalities(factor, reduced, rows, tol, condition);
        }
        let rows: Vec<usize> = (rows[..m].iter())
            .chain(kept.iter().map(|&i| &rows[m + i]))
            .copied()
            .collect();
        dense_with_independent_equalities(factor, reduced, &rows, tol, condition)
    })
}

/// Rows with an ∞-norm beyond `2^400` (or below `2^-400`) are equilibrated before
/// [`dense_exact`] forms slacks from them.
const EXTREME_ROW: f64 = 2.5822498780869086e120;

/// [`dense_exact`] once the equality rows are independent.
fn dense_with_independent_equalities(
    factor: &DenseFactor,
    qp: &Qp,
    rows: &[usize],
    tol: &Tolerances,
    condition: bool,
) -> Result<ExactQp> {
    let m = qp.b.len();
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
        // Dependent equality rows: `without_dependent_equalities` sets them aside and retries.
        Err(e @ Error::Singular(_)) if e.to_string().contains(DEPENDENT_EQUALITIES) => {
            return Err(e)
        }
        Err(e) => {
            let mut sol = solve_exact(&Clarabel::default(), qp, tol)?;
            sol.fallback = Some(format!("{DENSE}: {e}"));
            return Ok(sol);
        }
    };
    let mut working: Vec<bool> = rows[..m].iter().map(|&r| sol.working[r]).collect();
    let y = DVector::from_fn(rows.len(), |j, _| sol.y[rows[j]]);
    let point = WorkingPoint::from_dense(qp, (&sol.x, &y), &working, sol.error, || {
        if condition {
            factor.condition(&sol.working)
        } else {
            f64::NAN
        }
    });
    let origin = Origin::new(DENSE).after(sol.steps, false);
    if worst_violation(qp, &working, &point, tol).is_some() || !point.accurate(qp, &working) {
        refine(qp, tol, &mut working, origin)
    } else {
        Ok(point.into_exact(qp, tol, &working, origin))
    }
}

/// How a working set came about, for the [`ExactQp`]'s diagnostics: the backend that found it,
/// its iterations, whether it reported reduced accuracy, and the active-set repairs since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The backend's name.
    pub backend: &'static str,
    /// The backend's iterations.
    pub iterations: usize,
    /// The backend reported reduced accuracy.
    pub reduced_accuracy: bool,
    /// Working-set changes of the refinement.
    pub repairs: usize,
}

impl Origin {
    /// A working set from `backend`, with no iterations or repairs counted yet.
    pub fn new(backend: &'static str) -> Self {
        Self {
            backend,
            iterations: 0,
            reduced_accuracy: false,
            repairs: 0,
        }
    }

    /// After the backend's `iterations`, with its accuracy verdict.
    pub fn after(self, iterations: usize, reduced_accuracy: bool) -> Self {
        Self {
            iterations,
            reduced_accuracy,
            ..self
        }
    }

    fn repaired(self, repairs: usize) -> Self {
        Self { repairs, ..self }
    }
}

/// The exact part of [`solve_exact`], starting from a given working set (also used by the
/// brute-force references in tests). The rows are equilibrated as in [`solve_exact`].
///
/// # Errors
/// As [`solve_exact`]'s refinement.
pub fn refine(qp: &Qp, tol: &Tolerances, working: &mut [bool], origin: Origin) -> Result<ExactQp> {
    qp.validate()?;
    let (scaled, equilibration) = Equilibration::of(qp);
    let sol = without_dependent_equalities(&scaled, tol.feasibility, |reduced, _| {
        refine_scaled(reduced, tol, working, origin)
    })?;
    Ok(equilibration.unscale(sol))
}

/// [`refine`] on an equilibrated problem.
fn refine_scaled(
    qp: &Qp,
    tol: &Tolerances,
    working: &mut [bool],
    origin: Origin,
) -> Result<ExactQp> {
    let m = qp.b.len();
    let max_repairs = 2 * m + 10;
    let mut repairs = 0;
    loop {
        let point = WorkingPoint::solve(qp, working)?;
        let Some(i) = worst_violation(qp, working, &point, tol) else {
            return Ok(point.into_exact(qp, tol, working, origin.repaired(repairs)));
        };
        if repairs >= max_repairs {
            return Err(Error::NotConverged {
                solver: format!("{} + active-set refinement", origin.backend),
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
    /// `‖P x + q − Aᵀλ − A_eqᵀλ_eq‖∞`.
    stationarity: f64,
    /// The problem's fixed scales for the activity tests: `max|P|` and each inequality row's
    /// ∞-norm (computed once per point, not once per test).
    p_norm: f64,
    row_norms: DVector<f64>,
}

impl WorkingPoint {
    /// The point of a [`DenseFactor::solve`] (`y`: the QP's stacked multipliers), in this
    /// struct's conventions.
    fn from_dense(
        qp: &Qp,
        (x, y): (&DVector<f64>, &DVector<f64>),
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
        let stationarity = stationarity(qp, x, &lambda, &lambda_eq);
        let mut residual = stationarity;
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
            stationarity,
            p_norm: amax(qp.p.as_slice()),
            row_norms: row_amax(&qp.a),
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
            stationarity: stationarity(qp, &kkt.x, &lambda, &lambda_eq),
            kkt,
            a_w,
            lambda,
            lambda_eq,
            slack,
            p_norm: amax(qp.p.as_slice()),
            row_norms: row_amax(&qp.a),
        })
    }

    /// The result once no repair is needed: classification, dependent rows, KKT residual.
    fn into_exact(self, qp: &Qp, tol: &Tolerances, working: &[bool], origin: Origin) -> ExactQp {
        let test = ActivityTest::new(tol, self.p_norm, qp.q.amax(), &self.kkt.x);
        let (x, lambda, slack, norms) = (self.kkt.x, self.lambda, self.slack, self.row_norms);
        let activity = test.classify((&norms, &qp.b), working, &lambda, &slack);
        let dependent = dependent_rows(&qp.a, &self.a_w, |i| {
            !working[i] && test.active(norms[i], qp.b[i], slack[i])
        });
        // Each equality row's residual as if the row were equilibrated (the residual's one
        // meaning, see `ExactQp::residual`), whether or not it was.
        let eq = &qp.a_eq * &x - &qp.b_eq;
        let eq_res = (eq.zip_map(&row_amax(&qp.a_eq), |r, norm| {
            (r * power_of_two_scale(norm)).abs()
        }))
        .fold(0.0, f64::max);
        let residual = self
            .stationarity
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
            backend: origin.backend,
            iterations: origin.iterations + origin.repairs,
            repairs: origin.repairs,
            reduced_accuracy: origin.reduced_accuracy,
            fallback: None,
            dependent,
            dependent_eq: Vec::new(),
        }
    }
}

/// `‖P x + q − Aᵀλ − A_eqᵀλ_eq‖∞`, the stationarity part of the KKT residual.
fn stationarity(qp: &Qp, x: &DVector<f64>, lambda: &DVector<f64>, lambda_eq: &DVector<f64>) -> f64 {
    (&qp.p * x + &qp.q - qp.a.tr_mul(lambda) - qp.a_eq.tr_mul(lambda_eq)).amax()
}

/// The row the repair loop flips next: the most violated constraint outside the working set,
/// else the most negative multiplier inside it; `None` at the exact solution.
///
/// The repair demands sign conditions up to what rounding explains, not up to the
/// classification tolerances: a point that violates a constraint by 1e-9 is not the exact
/// solution, and finite differences at small β see the difference. Rounding is measured per
/// row ([`slack_rounding`]) with the KKT solve's own error estimate; a global `cond · ‖A‖‖x‖`
/// bound once let a violation of 21 pass as rounding. A violation beyond the feasibility
/// tolerance ([`ActivityTest::slack_tolerance`]) is repaired even when that estimate could
/// explain it (ill-conditioned systems): the result must be feasible as documented, or the
/// iteration ends in an error.
fn worst_violation(
    qp: &Qp,
    working: &[bool],
    point: &WorkingPoint,
    tol: &Tolerances,
) -> Option<usize> {
    let (x, slack, lambda, error) = (&point.kkt.x, &point.slack, &point.lambda, point.kkt.error);
    let m = qp.b.len();
    let test = ActivityTest::new(tol, point.p_norm, qp.q.amax(), x);
    let rep_d = 64.0 * f64::EPSILON * test.force() + error.1;
    let worst_primal = (0..m)
        .filter(|&i| !working[i] && slack[i] < 0.0)
        .filter(|&i| {
            let (b_i, violation) = (qp.b[i], -slack[i]);
            let bound = (slack_rounding(&qp.a, i, b_i, x, error.0))
                .min(test.slack_tolerance(point.row_norms[i], b_i));
            // A violation beyond the feasibility tolerance of the row's own right-hand side
            // (and beyond the rounding of the slack's own terms) is never excused by the
            // error estimate of x: an energy 1e30 times the rows' scale makes that estimate
            // exceed a violation of 30 % of b_i.
            let own_b = (tol.feasibility * b_i.abs()).max(slack_rounding(&qp.a, i, b_i, x, 0.0));
            violation > bound
                || (b_i != 0.0 && violation > own_b)
                || excused_wrongly(qp, i, violation, point, tol)
        })
        .min_by(|&i, &j| slack[i].total_cmp(&slack[j]));
    let worst_dual = (0..m)
        .map(|i| (i, lambda[i] * point.row_norms[i]))
        .filter(|&(i, pull)| working[i] && pull < -rep_d)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i);
    worst_primal.or(worst_dual)
}

/// A violation of row `i` that the error estimate of `x` (or the solution's scale) excuses but
/// that exceeds the feasibility tolerance of the slack's own terms `|b_i| + Σ_j |a_ij x_j|`
/// must still be repaired when holding row `i` would move `x` by more than the feasibility
/// tolerance of `x`'s own size (or of its error estimate, if larger): the move is at least
/// `violation / (‖a_i‖₂ sin φ_i)`, `φ_i` the angle between row `i` and the span of the working
/// rows. Excused, a point of size 1e24 once violated a row nearly parallel to an equality by its
/// whole size (`P = 2.7e-40 I`; the exact solution was 2.7e40 away), and a point on an equality
/// violated a parallel row with an inconsistent right-hand side (an infeasible problem).
fn excused_wrongly(
    qp: &Qp,
    i: usize,
    violation: f64,
    point: &WorkingPoint,
    tol: &Tolerances,
) -> bool {
    let own =
        tol.feasibility.max(64.0 * f64::EPSILON) * slack_terms(&qp.a, i, qp.b[i], &point.kkt.x);
    if violation <= own {
        return false;
    }
    let row = qp.a.row(i).transpose();
    let scale = row.amax();
    let row = row.unscale(scale);
    let sine = crate::linalg::sine_to_span(&point.a_w, &row);
    // Divided in steps, so that neither the norm nor the quotient overflows first.
    let x_scale = point.kkt.x.amax().max(point.kkt.error.0);
    violation / scale / row.norm() / sine > tol.feasibility * x_scale
}

/// The working set of the exact solution of a *strictly* convex QP, or a verified
/// infeasibility certificate, by the dual active-set method of Goldfarb and Idnani (1983) — the
/// one implementation, [`DenseFactor::solve`] (module docs of `dense`). It is the fallback of
/// [`solve_exact`] whenever a backend fails or returns a verdict it cannot prove.
///
/// # Errors
/// [`Error::Infeasible`] with the certificate; [`Error::NotPositiveDefinite`] when `P` is not
/// (then nothing can be proved this way); [`Error::Singular`] for dependent equality rows;
/// [`Error::NotConverged`] at the step cap.
pub fn dual_active_set(qp: &Qp) -> Result<Vec<bool>> {
    qp.validate()?;
    let sol = super::dense::solve_qp(qp)?;
    Ok(sol.working[..qp.b.len()].to_vec())
}

/// The rows `i` of `a` with `candidate(i)` that lie in the row space of `a_w` (the sine of
/// the angle between the row and that space at most `DEPENDENT_SINE`; a zero row always
/// does), each row scaled to unit length first (scale-invariant, no norm overflows):
/// [`rows_in_span`], Gram matrices by matrix products where they decide, Gram–Schmidt where not.
fn dependent_rows(
    a: &DMatrix<f64>,
    a_w: &DMatrix<f64>,
    candidate: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let rows: Vec<usize> = (0..a.nrows()).filter(|&i| candidate(i)).collect();
    if rows.is_empty() {
        return rows;
    }
    let inside = rows_in_span(a_w, &select_rows(a, &rows));
    rows.into_iter()
        .zip(inside)
        .filter_map(|(i, inside)| inside.then_some(i))
        .collect()
}
