use nalgebra::{DMatrix, DVector};

use super::{
    check_affine, check_augmented, check_offset, InnerProblem, InnerSolution, LinearConstraints,
    Loss, Offset, SolveStatus,
};
use crate::error::{Error, Result};
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
                dependent_eq: Vec::new(),
            },
        })
    }

    /// Newton on the offset equation: with `s = |β|` and `z* + s f = ẑ`, subtracting the
    /// stationarity of `z*` (taken as exact) from that of `ẑ` and dividing by `s` gives
    /// ```text
    ///     (Q + βκ I) f + T(f) + sign(β) ℓ'(z*) = 0,
    ///     T_j = (tanh(z*_j + s f_j) − tanh z*_j)/s = f_j · sinh(s f_j)/(s f_j) · sech z*_j · sech(z*_j + s f_j),
    /// ```
    /// with `O(1)` data for every β. Then `(E(ẑ) − E(z*))/s = (s/2) fᵀQf + s Σ_j f_j² D_j`,
    /// `D_j = ∫₀¹ (1 − τ) sech²(z*_j + τ s f_j) dτ` (the log cosh Bregman divergence over
    /// `(s f_j)²`, by 8-point Gauss–Legendre for `|s f_j| ≤ 1`), and the θ-gap is `−Bᵀf`.
    ///
    /// # Errors
    /// [`Error::NotConverged`] if Newton does not reach a residual of `1e-13` (relative) in 100
    /// steps (it converges quadratically: the offset equation is the gradient of a strongly
    /// convex function).
    fn offset(
        &self,
        theta: &DVector<f64>,
        loss: &Loss,
        beta: f64,
        z_star: &InnerSolution,
    ) -> Result<Offset> {
        check_offset(self, theta, loss, beta, z_star)?;
        let n = self.dim();
        let s = beta.abs();
        let kappa = beta * loss.curvature();
        let g = loss.gradient(&z_star.z) * beta.signum();
        let sech0 = z_star.z.map(sech);
        let residual_of = |f: &DVector<f64>| -> DVector<f64> {
            let mut r = &self.q * f + f * kappa + &g;
            for j in 0..n {
                let (d, moved) = (s * f[j], z_star.z[j] + s * f[j]);
                r[j] += if d.abs() <= 1.0 {
                    f[j] * sinh_over_x(d) * sech0[j] * sech(moved)
                } else {
                    // Far apart: the plain difference has no cancellation (and sinh could overflow).
                    (moved.tanh() - z_star.z[j].tanh()) / s
                };
            }
            r
        };
        let jacobian = |f: &DVector<f64>| -> DMatrix<f64> {
            let mut h = self.q.clone();
            for j in 0..n {
                h[(j, j)] += kappa + sech(z_star.z[j] + s * f[j]).powi(2);
            }
            h
        };
        let (f, r, iterations) = newton(n, 1e-13 * (1.0 + g.amax()), residual_of, jacobian)?;
        let bregman: f64 = (0..n)
            .map(|j| f[j] * f[j] * log_cosh_bregman_over_d2(z_star.z[j], s * f[j]))
            .sum();
        let energy_gap = s * (0.5 * f.dot(&(&self.q * &f)) + bregman);
        Ok(Offset {
            grad_theta_gap: self.cross_jvp(&z_star.z, theta, &f),
            energy_gap,
            // No constraint rows.
            multiplier_rate: DVector::zeros(z_star.multipliers.len()),
            multiplier_rate_eq: DVector::zeros(z_star.multipliers_eq.len()),
            z_hat: InnerSolution {
                z: &z_star.z + &f * s,
                multipliers: DVector::zeros(0),
                multipliers_eq: DVector::zeros(0),
                activity: Vec::new(),
                status: SolveStatus {
                    solver: "offset Newton from z*",
                    iterations,
                    residual: z_star.status.residual.max(s * r.amax()),
                    dependent: Vec::new(),
                    dependent_eq: Vec::new(),
                },
            },
            rate: f,
        })
    }
}

/// Newton's method from 0 on `residual(f) = 0` with the symmetric positive definite
/// `jacobian(f)`, backtracking on `‖residual‖∞` (a strongly monotone map: full steps near the
/// root), until `‖residual‖∞ ≤ tol`: the root, its residual and the steps taken.
///
/// # Errors
/// [`Error::NotConverged`] after 100 steps; [`Error::NotPositiveDefinite`] for a Jacobian that
/// is not.
fn newton(
    n: usize,
    tol: f64,
    residual: impl Fn(&DVector<f64>) -> DVector<f64>,
    jacobian: impl Fn(&DVector<f64>) -> DMatrix<f64>,
) -> Result<(DVector<f64>, DVector<f64>, usize)> {
    let mut f = DVector::zeros(n);
    let mut r = residual(&f);
    let mut iterations = 0;
    while r.amax() > tol {
        if iterations == 100 {
            return Err(Error::NotConverged {
                solver: "log cosh offset Newton".into(),
                iterations,
                residual: r.amax(),
            });
        }
        iterations += 1;
        let step = jacobian(&f)
            .cholesky()
            .map(|c| c.solve(&r))
            .ok_or_else(|| Error::NotPositiveDefinite {
                what: "the offset Newton system".into(),
                reason: "Q + diag(sech²) lost definiteness".into(),
            })?;
        let mut t = 1.0;
        loop {
            let trial = &f - &step * t;
            let rt = residual(&trial);
            if rt.amax() < r.amax() || t < 1e-12 {
                f = trial;
                r = rt;
                break;
            }
            t *= 0.5;
        }
    }
    Ok((f, r, iterations))
}

/// `sech x = 1/cosh x` without overflow (`2e^{−|x|}/(1 + e^{−2|x|})`).
fn sech(x: f64) -> f64 {
    let e = (-x.abs()).exp();
    2.0 * e / (1.0 + e * e)
}

/// `sinh(x)/x`, `1` at 0 (series for `|x| < 0.1`).
fn sinh_over_x(x: f64) -> f64 {
    if x.abs() < 0.1 {
        let x2 = x * x;
        // 1 + x²/6 + x⁴/120 + x⁶/5040 + x⁸/362880.
        1.0 + x2 * (1.0 / 6.0 + x2 * (1.0 / 120.0 + x2 * (1.0 / 5040.0 + x2 / 362_880.0)))
    } else {
        x.sinh() / x
    }
}

/// `(log cosh(x + d) − log cosh x − d tanh x)/d² = ∫₀¹ (1 − τ) sech²(x + τd) dτ`: 8-point
/// Gauss–Legendre for `|d| ≤ 1` (no cancellation, error ≈ 1e-13), the difference itself beyond.
fn log_cosh_bregman_over_d2(x: f64, d: f64) -> f64 {
    if d.abs() > 1.0 {
        return (log_cosh(x + d) - log_cosh(x) - d * x.tanh()) / (d * d);
    }
    // Nodes and weights of the 8-point rule on [−1, 1] (±ξ), as published to 16 digits.
    #[allow(clippy::excessive_precision)]
    const NODES: [(f64, f64); 4] = [
        (0.183_434_642_495_649_8, 0.362_683_783_378_362_0),
        (0.525_532_409_916_329_0, 0.313_706_645_877_887_3),
        (0.796_666_477_413_626_7, 0.222_381_034_453_374_5),
        (0.960_289_856_497_536_3, 0.101_228_536_290_376_3),
    ];
    let sech2 = |t: f64| sech(x + t * d).powi(2);
    NODES
        .iter()
        .flat_map(|&(xi, w)| [(0.5 * (1.0 - xi), 0.5 * w), (0.5 * (1.0 + xi), 0.5 * w)])
        .map(|(tau, w)| w * (1.0 - tau) * sech2(tau))
        .sum()
}
