use nalgebra::{DMatrix, DVector};

use super::{
    check_affine, check_augmented, InnerProblem, InnerSolution, LinearConstraints, Loss,
    SolveStatus,
};
use crate::error::Result;
use crate::linalg::check_spd;
use crate::solve::smooth::{minimize, SmoothObjective, SmoothSettings};

/// A smooth, non-quadratic, unconstrained energy (Prop. 1's setting)
/// ```text
///     E(z; θ) = ½ zᵀQz + Σ_j log cosh(z_j) − zᵀ(Bθ + c),
/// ```
/// `ν`-strongly convex with `ν = λ_min(Q)` (log cosh is convex), Hessian
/// `Q + diag(1 − tanh²(z))`. Solved with `argmin` ([`crate::solve::smooth`]).
#[derive(Debug, Clone)]
pub struct LogCoshProblem {
    q: DMatrix<f64>,
    b: DMatrix<f64>,
    c: DVector<f64>,
    nu: f64,
    none: LinearConstraints,
    settings: SmoothSettings,
}

/// `log cosh x`, stable for large `|x|`.
fn log_cosh(x: f64) -> f64 {
    let a = x.abs();
    a + (-2.0 * a).exp().ln_1p() - std::f64::consts::LN_2
}

impl LogCoshProblem {
    /// Builds and validates the problem.
    ///
    /// # Errors
    /// Shapes, non-finite data, `Q` not symmetric positive definite.
    pub fn new(q: DMatrix<f64>, b: DMatrix<f64>, c: DVector<f64>) -> Result<Self> {
        let n = q.nrows();
        let nu = check_spd("Q", &q)?;
        check_affine(n, &b, &c)?;
        Ok(Self {
            q,
            b,
            c,
            nu,
            none: LinearConstraints::none(n),
            settings: SmoothSettings::default(),
        })
    }
}

/// `β ℓ + E` with `ℓ = (κ/2)‖z‖² − hᵀz`: `½zᵀQz + Σ log cosh z + (βκ/2)‖z‖² − rᵀz`.
struct Augmented<'a> {
    q: &'a DMatrix<f64>,
    kappa: f64,
    r: DVector<f64>,
}

impl SmoothObjective for Augmented<'_> {
    fn value(&self, z: &DVector<f64>) -> f64 {
        0.5 * z.dot(&(self.q * z))
            + z.iter().map(|&v| log_cosh(v)).sum::<f64>()
            + 0.5 * self.kappa * z.norm_squared()
            - self.r.dot(z)
    }
    fn gradient(&self, z: &DVector<f64>) -> DVector<f64> {
        self.q * z + z.map(f64::tanh) + z * self.kappa - &self.r
    }
    fn hessian(&self, z: &DVector<f64>) -> DMatrix<f64> {
        let mut h = self.q.clone();
        for i in 0..z.len() {
            let t = z[i].tanh();
            h[(i, i)] += 1.0 - t * t + self.kappa;
        }
        h
    }
}

impl InnerProblem for LogCoshProblem {
    fn dim(&self) -> usize {
        self.q.nrows()
    }

    fn n_params(&self) -> usize {
        self.b.ncols()
    }

    fn energy(&self, z: &DVector<f64>, theta: &DVector<f64>) -> f64 {
        Augmented {
            q: &self.q,
            kappa: 0.0,
            r: &self.b * theta + &self.c,
        }
        .value(z)
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

    fn hessian(&self, z: &DVector<f64>, theta: &DVector<f64>) -> DMatrix<f64> {
        Augmented {
            q: &self.q,
            kappa: 0.0,
            r: &self.b * theta + &self.c,
        }
        .hessian(z)
    }

    fn constraints(&self) -> &LinearConstraints {
        &self.none
    }

    fn strong_convexity(&self) -> Option<f64> {
        Some(self.nu)
    }

    fn solve(&self, theta: &DVector<f64>, loss: &Loss, beta: f64) -> Result<InnerSolution> {
        check_augmented(self, theta, loss, beta)?;
        let kappa = beta * loss.curvature();
        let obj = Augmented {
            q: &self.q,
            kappa,
            r: &self.b * theta + &self.c + loss.linear_term() * beta,
        };
        let sol = minimize(&obj, &DVector::zeros(self.dim()), &self.settings)?;
        Ok(InnerSolution {
            z: sol.z,
            multipliers: DVector::zeros(0),
            multipliers_eq: DVector::zeros(0),
            activity: Vec::new(),
            status: SolveStatus {
                solver: "argmin L-BFGS + Newton",
                iterations: sol.iterations,
                residual: sol.residual,
                dependent: Vec::new(),
            },
        })
    }
}
