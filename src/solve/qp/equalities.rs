//! Dependent equality rows: found, checked for consistency, and set aside before any KKT
//! system is formed (issue 25, item 7: duplicated or rank-deficient but consistent `A_eq` used
//! to be refused as a singular system).
//!
//! An equality row that is a combination of the rows before it, `a_i = Σ_j y_j a_j` to the
//! rounding of that sum, adds nothing to the feasible set when `b_i = Σ_j y_j b_j` (to the
//! feasibility tolerance): it is dropped, its multiplier is 0 (one independent row carries the
//! force, as for dependent inequalities), and it is reported. When `b_i` differs, no point
//! satisfies both and `u = (1 on i, −y)` (sign chosen so that `bᵀu > 0`) is a Farkas
//! certificate with `A_eqᵀu = 0` to rounding: [`Error::Infeasible`]. Rows only *nearly*
//! dependent are kept; the KKT solve then decides (and says so when it is singular).

use nalgebra::{DMatrix, DVector};

use super::problem::{ExactQp, Qp};
use crate::error::{Error, Result};

/// Runs `solve` on `qp`; when that fails as singular and `qp` has equality rows, finds the
/// dependent ones (none: the error stands), and runs `solve` again without them, mapping the
/// answer back: their multipliers 0, their indices in [`ExactQp::dependent_eq`]. (Dependent
/// equality rows always make the first attempt singular, so independent rows cost nothing
/// here.) `solve` gets the problem and the original indices of its equality rows. `qp`'s rows
/// should be equilibrated (the rounding test compares magnitudes row against row).
///
/// # Errors
/// [`Error::Infeasible`] for inconsistent dependent rows; `solve`'s errors.
pub(crate) fn without_dependent_equalities(
    qp: &Qp,
    feasibility: f64,
    mut solve: impl FnMut(&Qp, &[usize]) -> Result<ExactQp>,
) -> Result<ExactQp> {
    let k = qp.b_eq.len();
    let all: Vec<usize> = (0..k).collect();
    let first = solve(qp, &all);
    if k == 0 || !matches!(first, Err(Error::Singular(_))) {
        return first;
    }
    let kept = independent_rows(&qp.a_eq, &qp.b_eq, feasibility)?;
    if kept.len() == k {
        return first;
    }
    let reduced = Qp {
        a_eq: DMatrix::from_fn(kept.len(), qp.n(), |r, j| qp.a_eq[(kept[r], j)]),
        b_eq: DVector::from_fn(kept.len(), |r, _| qp.b_eq[kept[r]]),
        ..qp.clone()
    };
    let mut sol = solve(&reduced, &kept)?;
    let mut lambda_eq = DVector::zeros(k);
    for (r, &i) in kept.iter().enumerate() {
        lambda_eq[i] = sol.lambda_eq[r];
    }
    sol.lambda_eq = lambda_eq;
    sol.dependent_eq = (0..k).filter(|i| !kept.contains(i)).collect();
    let eq_residual = (&qp.a_eq * &sol.x - &qp.b_eq).amax();
    sol.residual = sol.residual.max(eq_residual);
    Ok(sol)
}

/// The rows of `a` that are not combinations of the rows kept before them (modified
/// Gram–Schmidt, twice), after checking each dropped row's right-hand side.
fn independent_rows(a: &DMatrix<f64>, b: &DVector<f64>, feasibility: f64) -> Result<Vec<usize>> {
    let n = a.ncols();
    let mut kept: Vec<usize> = Vec::new();
    // Orthonormal basis of the kept rows, and each basis vector as a combination of them.
    let mut basis: Vec<DVector<f64>> = Vec::new();
    let mut coeffs: Vec<DVector<f64>> = Vec::new();
    for i in 0..a.nrows() {
        let row = a.row(i).transpose();
        let mut r = row.clone();
        let mut y = DVector::zeros(kept.len());
        for _ in 0..2 {
            for (q, c) in basis.iter().zip(&coeffs) {
                let t = q.dot(&r);
                r.axpy(-t, q, 1.0);
                y.rows_mut(0, c.len()).axpy(t, c, 1.0);
            }
        }
        // r = a_i − Σ y_j a_j, computed from magnitudes up to `size` per entry.
        let mut size = row.abs();
        for (j, &kj) in kept.iter().enumerate() {
            size.axpy(y[j].abs(), &a.row(kj).transpose().abs(), 1.0);
        }
        let gamma = 64.0 * f64::EPSILON * (kept.len() + 2) as f64;
        let dependent = (0..n).all(|j| r[j].abs() <= gamma * size[j]);
        if !dependent {
            let norm = r.norm();
            let mut c = DVector::zeros(kept.len() + 1);
            c.rows_mut(0, kept.len()).copy_from(&(-&y / norm));
            c[kept.len()] = 1.0 / norm;
            basis.push(r / norm);
            coeffs.push(c);
            kept.push(i);
            continue;
        }
        let mut beta = b[i];
        let mut beta_size = b[i].abs();
        for (j, &kj) in kept.iter().enumerate() {
            beta -= y[j] * b[kj];
            beta_size += (y[j] * b[kj]).abs();
        }
        if beta.abs() > feasibility * beta_size.max(f64::MIN_POSITIVE) {
            return Err(Error::Infeasible(format!(
                "equality {i} is a combination of equalities {kept:?} (to rounding) but its \
                 right-hand side differs from theirs by {beta:.3e}: u = ±(1, −y) gives \
                 A_eqᵀu = 0 and bᵀu = {:.3e} > 0 (Farkas certificate)",
                beta.abs()
            )));
        }
    }
    Ok(kept)
}
