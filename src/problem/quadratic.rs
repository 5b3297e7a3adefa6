use std::sync::Arc;

use nalgebra::{DMatrix, DVector};

use super::{
    check_affine, check_augmented, InnerProblem, InnerSolution, LinearConstraints, Loss,
    SolveStatus,
};
use crate::error::Result;
use crate::linalg::check_spd;
use crate::solve::qp::{solve_exact, Clarabel, Qp, QpBackend, Tolerances};

/// The standard constrained quadratic layer
/// ```text
///     E(z; θ) = ½ zᵀQz − zᵀ(Bθ + c)   s.t.  A z ≥ b,  A_eq z = b_eq,
/// ```
/// with `Q` symmetric positive definite (so `E` is `ν`-strongly convex with `ν = λ_min(Q)`,
/// Prop. 3). `∂_θ E = −Bᵀz`, so the mixed derivative is `−Bᵀ` (Cor. 1).
///
/// Loss-augmented solves `β ℓ + E` stay QPs: `P = Q + βκ I`, `q = −(Bθ + c) − βh` for
/// `ℓ = (κ/2)‖z‖² − hᵀz`. They run on a [`QpBackend`] (Clarabel by default) and are refined
/// exactly ([`solve_exact`]).
#[derive(Clone)]
pub struct QuadraticProblem {
    q: DMatrix<f64>,
    b: DMatrix<f64>,
    c: DVector<f64>,
    constraints: LinearConstraints,
    nu: f64,
    backend: Arc<dyn QpBackend>,
    tol: Tolerances,
}

impl std::fmt::Debug for QuadraticProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuadraticProblem")
            .field("n", &self.q.nrows())
            .field("p", &self.b.ncols())
            .field("m", &self.constraints.m())
            .field("k", &self.constraints.b_eq.len())
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl QuadraticProblem {
    /// Builds and validates the problem (shapes, finiteness, `Q` symmetric positive definite).
    ///
    /// # Errors
    /// [`crate::Error::DimensionMismatch`], [`crate::Error::NonFinite`], [`crate::Error::NotPositiveDefinite`], each
    /// naming the field (`Q`, `B`, `c`, `A`, `b`, `A_eq`, `b_eq`).
    pub fn new(
        q: DMatrix<f64>,
        b: DMatrix<f64>,
        c: DVector<f64>,
        constraints: LinearConstraints,
    ) -> Result<Self> {
        let n = q.nrows();
        let nu = check_spd("Q", &q)?;
        check_affine(n, &b, &c)?;
        constraints.validate(n)?;
        Ok(Self {
            q,
            b,
            c,
            constraints,
            nu,
            backend: Arc::new(Clarabel::default()),
            tol: Tolerances::default(),
        })
    }

    /// Uses another QP backend (e.g. `bilevel::solve::qp::Osqp` with the `osqp` feature).
    pub fn with_backend(mut self, backend: Arc<dyn QpBackend>) -> Self {
        self.backend = backend;
        self
    }

    /// Uses other activity tolerances.
    pub fn with_tolerances(mut self, tol: Tolerances) -> Self {
        self.tol = tol;
        self
    }

    /// The QP backend in use.
    pub fn backend(&self) -> &Arc<dyn QpBackend> {
        &self.backend
    }

    /// The activity tolerances in use.
    pub fn tolerances(&self) -> &Tolerances {
        &self.tol
    }

    /// `Q`.
    pub fn q(&self) -> &DMatrix<f64> {
        &self.q
    }

    /// `B`.
    pub fn b(&self) -> &DMatrix<f64> {
        &self.b
    }

    /// `c`.
    pub fn c(&self) -> &DVector<f64> {
        &self.c
    }

    /// The QP `min β ℓ(z) + E(z; θ)` on the constraints.
    pub fn qp(&self, theta: &DVector<f64>, loss: &Loss, beta: f64) -> Qp {
        let n = self.q.nrows();
        let mut p = self.q.clone();
        let kappa = beta * loss.curvature();
        for i in 0..n {
            p[(i, i)] += kappa;
        }
        let q = -(&self.b * theta + &self.c) - loss.linear_term() * beta;
        Qp {
            p,
            q,
            a: self.constraints.a.clone(),
            b: self.constraints.b.clone(),
            a_eq: self.constraints.a_eq.clone(),
            b_eq: self.constraints.b_eq.clone(),
        }
    }
}

impl InnerProblem for QuadraticProblem {
    fn dim(&self) -> usize {
        self.q.nrows()
    }

    fn n_params(&self) -> usize {
        self.b.ncols()
    }

    fn energy(&self, z: &DVector<f64>, theta: &DVector<f64>) -> f64 {
        0.5 * z.dot(&(&self.q * z)) - z.dot(&(&self.b * theta + &self.c))
    }

    fn grad_theta(&self, z: &DVector<f64>, _theta: &DVector<f64>) -> DVector<f64> {
        -(self.b.tr_mul(z))
    }

    fn cross_jvp(
        &self,
        _z: &DVector<f64>,
        _theta: &DVector<f64>,
        dz: &DVector<f64>,
    ) -> DVector<f64> {
        -(self.b.tr_mul(dz))
    }

    fn hessian(&self, _z: &DVector<f64>, _theta: &DVector<f64>) -> DMatrix<f64> {
        self.q.clone()
    }

    fn constraints(&self) -> &LinearConstraints {
        &self.constraints
    }

    fn strong_convexity(&self) -> Option<f64> {
        Some(self.nu)
    }

    fn solve(&self, theta: &DVector<f64>, loss: &Loss, beta: f64) -> Result<InnerSolution> {
        check_augmented(self, theta, loss, beta)?;
        let sol = solve_exact(
            self.backend.as_ref(),
            &self.qp(theta, loss, beta),
            &self.tol,
        )?;
        Ok(InnerSolution {
            z: sol.x,
            multipliers: sol.lambda,
            multipliers_eq: sol.lambda_eq,
            activity: sol.activity,
            status: SolveStatus {
                solver: sol.backend,
                iterations: sol.iterations,
                residual: sol.residual,
            },
        })
    }
}
