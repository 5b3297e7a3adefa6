//! Smooth unconstrained minimization with `argmin` (L-BFGS with a Moré-Thuente line search),
//! finished by a few exact Newton steps so that derivatives built on the minimizer are accurate
//! to the last digits that matter.
//!
//! L-BFGS stops at a gradient of `1e-6` (relative): argmin's line searches run without an
//! iteration limit, and the Moré-Thuente search was seen to loop forever once function values
//! differ only by rounding (near `1e-9`). Newton's method takes over from `1e-6` and converges
//! quadratically, with its own bounded backtracking.

use argmin::core::{CostFunction, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use nalgebra::{DMatrix, DVector};

use crate::error::{Error, Result};

/// A twice differentiable, strictly convex objective `f(z)`.
pub trait SmoothObjective {
    /// `f(z)`.
    fn value(&self, z: &DVector<f64>) -> f64;
    /// `∇f(z)`.
    fn gradient(&self, z: &DVector<f64>) -> DVector<f64>;
    /// `∇²f(z)` (positive definite).
    fn hessian(&self, z: &DVector<f64>) -> DMatrix<f64>;
}

/// Settings of [`minimize`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmoothSettings {
    /// L-BFGS iteration limit (default 500).
    pub max_iter: u64,
    /// L-BFGS memory (default 10).
    pub memory: usize,
    /// Final gradient tolerance, relative to `1 + |∇f(z0)|∞` (default `1e-13`).
    pub tol_grad: f64,
    /// Newton polishing steps at most (default 8).
    pub newton_steps: usize,
}

impl Default for SmoothSettings {
    fn default() -> Self {
        Self {
            max_iter: 500,
            memory: 10,
            tol_grad: 1e-13,
            newton_steps: 8,
        }
    }
}

/// Outcome of [`minimize`].
#[derive(Debug, Clone)]
pub struct SmoothSolution {
    /// The minimizer.
    pub z: DVector<f64>,
    /// L-BFGS iterations plus Newton steps.
    pub iterations: usize,
    /// `|∇f(z)|∞`.
    pub residual: f64,
}

struct Adapter<'a, F: SmoothObjective>(&'a F);

impl<F: SmoothObjective> CostFunction for Adapter<'_, F> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, p: &Vec<f64>) -> std::result::Result<f64, argmin::core::Error> {
        Ok(self.0.value(&DVector::from_column_slice(p)))
    }
}

impl<F: SmoothObjective> Gradient for Adapter<'_, F> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, p: &Vec<f64>) -> std::result::Result<Vec<f64>, argmin::core::Error> {
        Ok(self
            .0
            .gradient(&DVector::from_column_slice(p))
            .iter()
            .copied()
            .collect())
    }
}

/// Minimizes `f` from `z0`: L-BFGS (argmin) to a moderate tolerance, then Newton steps with the
/// exact Hessian (each accepted only if it does not increase `f`).
///
/// # Errors
/// [`Error::NotConverged`] with the iteration count and final gradient norm when the gradient
/// tolerance is not met.
pub fn minimize<F: SmoothObjective>(
    f: &F,
    z0: &DVector<f64>,
    settings: &SmoothSettings,
) -> Result<SmoothSolution> {
    let (sol, converged) = minimize_best(f, z0, settings);
    if converged {
        Ok(sol)
    } else {
        Err(Error::NotConverged {
            solver: "argmin L-BFGS + Newton".into(),
            iterations: sol.iterations,
            residual: sol.residual,
        })
    }
}

/// [`minimize`] that returns the best point found and whether the gradient tolerance was met
/// (for callers that finish the job themselves, e.g. at kinks of piecewise-smooth objectives).
pub fn minimize_best<F: SmoothObjective>(
    f: &F,
    z0: &DVector<f64>,
    settings: &SmoothSettings,
) -> (SmoothSolution, bool) {
    let g0 = f.gradient(z0).amax();
    let tol = settings.tol_grad * (1.0 + g0);
    let mut iterations = 0;
    let mut z = z0.clone();
    let mut grad = f.gradient(&z);
    // Rounds of L-BFGS then Newton: on piecewise-smooth objectives (ReLU networks) a Newton step
    // computed on one piece can be rejected at a kink; L-BFGS then moves on from there.
    for _round in 0..4 {
        if grad.amax() <= tol {
            break;
        }
        let linesearch: MoreThuenteLineSearch<Vec<f64>, Vec<f64>, f64> =
            MoreThuenteLineSearch::new();
        // (Fails only for a non-finite tolerance, i.e. a non-finite gradient: not converged.)
        let Ok(solver) =
            LBFGS::new(linesearch, settings.memory).with_tolerance_grad(1e-6 * (1.0 + g0))
        else {
            break;
        };
        let start: Vec<f64> = z.iter().copied().collect();
        let res = Executor::new(Adapter(f), solver)
            .configure(|state| state.param(start).max_iters(settings.max_iter))
            .run();
        // A line-search failure close to the optimum is not fatal: Newton finishes the job.
        if let Ok(res) = res {
            iterations += res.state().get_iter() as usize;
            if let Some(best) = res.state().get_best_param() {
                let cand = DVector::from_column_slice(best);
                if f.value(&cand) <= f.value(&z) {
                    z = cand;
                }
            }
        }
        grad = f.gradient(&z);
        for _ in 0..settings.newton_steps {
            if grad.amax() <= tol {
                break;
            }
            let Some(step) = f.hessian(&z).cholesky().map(|ch| ch.solve(&grad)) else {
                break;
            };
            let mut t = 1.0;
            let fz = f.value(&z);
            let mut accepted = false;
            for _ in 0..30 {
                let cand = &z - &step * t;
                if f.value(&cand) <= fz + 1e-15 * fz.abs().max(1.0) {
                    z = cand;
                    accepted = true;
                    break;
                }
                t *= 0.5;
            }
            iterations += 1;
            grad = f.gradient(&z);
            if !accepted {
                break;
            }
        }
    }
    let residual = grad.amax();
    let converged = !residual.is_nan() && residual <= tol;
    (
        SmoothSolution {
            z,
            iterations,
            residual,
        },
        converged,
    )
}
