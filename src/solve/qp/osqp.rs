//! OSQP (ADMM with solution polishing) as a [`QpBackend`], behind the `osqp` feature.

use nalgebra::DVector;

use super::problem::{Qp, QpBackend, QpRaw};
use crate::error::{Error, Result};
use crate::linalg::vstack;

/// Settings of the [`Osqp`] backend (ADMM with solution polishing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OsqpSettings {
    /// Iteration limit (default 100 000).
    pub max_iter: u32,
    /// Absolute and relative tolerance (default `1e-9`).
    pub eps: f64,
}

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
/// ADMM alone is of low accuracy; [`solve_exact`](super::solve_exact) makes derivatives exact anyway.
#[derive(Debug, Clone, Copy, Default)]
pub struct Osqp {
    /// Solver settings.
    pub settings: OsqpSettings,
}

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
