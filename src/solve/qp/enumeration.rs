//! A brute-force reference for tests and `verify`: every working set tried.

use nalgebra::DVector;

use super::problem::{ActivityTest, Qp, Tolerances};
use crate::error::{Error, Result};
use crate::linalg::{amax, row_amax, select_rows, solve_kkt, vstack};

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
    let (p_norm, norms) = (amax(qp.p.as_slice()), row_amax(&qp.a));
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
        // Signs up to the classification's scale-invariant tolerances.
        let test = ActivityTest::new(tol, p_norm, qp.q.amax(), &kkt.x);
        let slack = &qp.a * &kkt.x - &qp.b;
        let primal_ok = (0..m).all(|i| slack[i] >= -test.slack_tolerance(norms[i], qp.b[i]));
        let dual_ok = (rows.iter().enumerate()).all(|(r, &i)| !test.strong(norms[i], kkt.nu[r]));
        if primal_ok && dual_ok {
            return Ok(kkt.x);
        }
    }
    Err(Error::Infeasible(
        "no working set satisfies the KKT conditions".into(),
    ))
}
