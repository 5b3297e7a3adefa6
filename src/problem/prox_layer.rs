use nalgebra::{DMatrix, DVector};

use super::{
    check_affine, check_augmented, check_offset, Direction, DirectionMethod, InnerProblem,
    InnerSolution, LinearConstraints, Loss, Offset, SolveStatus,
};
use crate::error::{Error, Result};
use crate::prox::{box_unit_limit, Activation};
use crate::solve::qp::{Activity, Tolerances};

/// A proximal layer `E(z; θ) = ½‖z − u(θ)‖² + F(z)` with `u(θ) = Bθ + c` and `F` the proximal
/// potential of an [`Activation`] (box family: the indicator of the box; softmax: negative
/// entropy on the simplex). Solved in closed form by the activation's proximal map:
/// `argmin β ℓ + E = prox_{τF}((u + βh)/(1 + βκ))` with `τ = 1/(1 + βκ)` for
/// `ℓ = (κ/2)‖z‖² − hᵀz`.
///
/// Example 1 is the ReLU case with `θ = vec(W)` (row-major), `u = W x`, i.e. `B = I ⊗ xᵀ`
/// (see [`ProxProblem::dense_layer`]).
///
/// Constraint rows, in order: the lower bounds `z_j ≥ lo` of all units with finite `lo`, then the
/// upper bounds `−z_j ≥ −hi` of all units with finite `hi`; softmax has the single equality
/// `1ᵀz = 1` (positivity is implied by the entropy).
#[derive(Debug, Clone)]
pub struct ProxProblem {
    activation: Activation,
    b: DMatrix<f64>,
    c: DVector<f64>,
    constraints: LinearConstraints,
    /// For each unit, the row of its lower and upper bound constraint.
    rows: Vec<super::BoundRows>,
    tol: Tolerances,
}

impl ProxProblem {
    /// `u(θ) = Bθ + c`.
    ///
    /// # Errors
    /// Shapes (`B` rows vs `c`), non-finite data, invalid box bounds.
    pub fn new(activation: Activation, b: DMatrix<f64>, c: DVector<f64>) -> Result<Self> {
        activation.validate()?;
        let n = c.len();
        check_affine(n, &b, &c)?;
        let (constraints, rows) = match activation.bounds() {
            Some(bounds) => LinearConstraints::boxes(&vec![bounds; n]),
            None => (
                LinearConstraints {
                    a_eq: DMatrix::from_element(1, n, 1.0),
                    b_eq: DVector::from_element(1, 1.0),
                    ..LinearConstraints::none(n)
                },
                vec![(None, None); n],
            ),
        };
        Ok(Self {
            activation,
            b,
            c,
            constraints,
            rows,
            tol: Tolerances::default(),
        })
    }

    /// A dense layer `u = W x` with `θ = vec(W)` in row-major order (`W` is `n × x.len()`), so
    /// `∂_θ E = −vec((z − Wx) xᵀ)` and the Cor. 1 gradient is `−vec(ż xᵀ)`.
    pub fn dense_layer(activation: Activation, n: usize, x: &DVector<f64>) -> Result<Self> {
        let m = x.len();
        let b = DMatrix::from_fn(n, n * m, |i, k| if k / m == i { x[k % m] } else { 0.0 });
        Self::new(activation, b, DVector::zeros(n))
    }

    /// Uses other activity tolerances (ties `|u_j − lo| ≤ tol.multiplier · scale` count as weakly
    /// active; the default `1e-9` relative matches the QP path).
    pub fn with_tolerances(mut self, tol: Tolerances) -> Self {
        self.tol = tol;
        self
    }

    /// The activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// `u(θ) = Bθ + c`.
    pub fn pre_activation(&self, theta: &DVector<f64>) -> DVector<f64> {
        &self.b * theta + &self.c
    }

    /// The softmax layer's offset: with `scale = 1 + βκ`, subtracting the stationarity
    /// conditions of `ẑ` and `z*` gives `scale·f + log1p(|β|f/z*)/|β| = −sign(β) ℓ'(z*) + ν`
    /// ([`entropy_offset`](crate::prox::entropy_offset)); by stationarity at `z*` and `Σf = 0`,
    /// `(E(ẑ) − E(z*))/|β| = |β| (½‖f‖² + Σ_j f_j²/z*_j · H(|β| f_j / z*_j))` with `H` the
    /// entropy's Bregman divergence over `x²`; the θ-gap is `−Bᵀf`.
    fn softmax_offset(
        &self,
        theta: &DVector<f64>,
        loss: &Loss,
        beta: f64,
        z_star: &InnerSolution,
        z_hat: InnerSolution,
    ) -> Offset {
        let s = beta.abs();
        let scale = 1.0 + beta * loss.curvature();
        let c = loss.gradient(&z_star.z) * -beta.signum();
        let mut rate = DVector::zeros(c.len());
        crate::prox::entropy_offset(
            z_star.z.as_slice(),
            scale,
            s,
            c.as_slice(),
            rate.as_mut_slice(),
        );
        let bregman: f64 = rate
            .iter()
            .zip(z_star.z.iter())
            .map(|(&f, &z)| f * f / z * crate::prox::entropy_bregman_over_x2(s * f / z))
            .sum();
        Offset {
            energy_gap: s * (0.5 * rate.norm_squared() + bregman),
            grad_theta_gap: self.cross_jvp(&z_star.z, theta, &rate),
            // The box is in G, not in constraint rows.
            multiplier_rate: DVector::zeros(z_star.multipliers.len()),
            multiplier_rate_eq: DVector::zeros(z_star.multipliers_eq.len()),
            z_hat: InnerSolution {
                z: &z_star.z + &rate * s,
                ..z_hat
            },
            rate,
        }
    }

    fn tie(&self, v: &DVector<f64>) -> f64 {
        self.tol.multiplier * (1.0 + 2.0 * v.amax())
    }
}

impl InnerProblem for ProxProblem {
    fn dim(&self) -> usize {
        self.c.len()
    }

    fn n_params(&self) -> usize {
        self.b.ncols()
    }

    fn energy(&self, z: &DVector<f64>, theta: &DVector<f64>) -> f64 {
        let quad = 0.5 * (z - self.pre_activation(theta)).norm_squared();
        match self.activation {
            Activation::Softmax => quad + self.activation.potential(z.as_slice()),
            _ => quad,
        }
    }

    fn grad_theta(&self, z: &DVector<f64>, theta: &DVector<f64>) -> DVector<f64> {
        -(self.b.tr_mul(&(z - self.pre_activation(theta))))
    }

    fn cross_jvp(
        &self,
        _z: &DVector<f64>,
        _theta: &DVector<f64>,
        dz: &DVector<f64>,
    ) -> DVector<f64> {
        -(self.b.tr_mul(dz))
    }

    fn hessian(&self, z: &DVector<f64>, _theta: &DVector<f64>) -> DMatrix<f64> {
        match self.activation {
            Activation::Softmax => DMatrix::from_diagonal(&z.map(|v| 1.0 + 1.0 / v)),
            _ => DMatrix::identity(z.len(), z.len()),
        }
    }

    fn constraints(&self) -> &LinearConstraints {
        &self.constraints
    }

    /// `ν = 1` for the box family; `ν = 2` for softmax (`I + diag(1/z) ⪰ 2I` on the simplex).
    fn strong_convexity(&self) -> Option<f64> {
        Some(match self.activation {
            Activation::Softmax => 2.0,
            _ => 1.0,
        })
    }

    fn solve(&self, theta: &DVector<f64>, loss: &Loss, beta: f64) -> Result<InnerSolution> {
        check_augmented(self, theta, loss, beta)?;
        let scale = 1.0 + beta * loss.curvature();
        if scale <= 0.0 {
            return Err(Error::Unbounded(format!(
                "1 + beta * loss curvature = {scale} <= 0: the loss-augmented energy is not convex"
            )));
        }
        let v = (self.pre_activation(theta) + loss.linear_term() * beta) / scale;
        let mut z = DVector::zeros(v.len());
        self.activation
            .prox(v.as_slice(), 1.0 / scale, z.as_mut_slice());
        let m = self.constraints.m();
        let mut multipliers = DVector::zeros(m);
        let mut activity = vec![Activity::Inactive; m];
        let mut multipliers_eq = DVector::zeros(self.constraints.b_eq.len());
        let mut residual = 0.0;
        match self.activation.bounds() {
            Some((lo, hi)) => {
                let tie = self.tie(&v);
                for (j, &(lo_row, hi_row)) in self.rows.iter().enumerate() {
                    // Stationarity: scale (z − v) − λ_lo + λ_hi = 0.
                    if let Some(r) = lo_row {
                        if v[j] <= lo + tie {
                            multipliers[r] = (scale * (z[j] - v[j])).max(0.0);
                            activity[r] = if v[j] < lo - tie {
                                Activity::Strong
                            } else {
                                Activity::Weak
                            };
                        }
                    }
                    if let Some(r) = hi_row {
                        if v[j] >= hi - tie {
                            multipliers[r] = (scale * (v[j] - z[j])).max(0.0);
                            activity[r] = if v[j] > hi + tie {
                                Activity::Strong
                            } else {
                                Activity::Weak
                            };
                        }
                    }
                }
            }
            None => {
                // ∇f_j = scale (z_j − v_j) + log z_j + 1 = λ_eq for every j.
                let grads: Vec<f64> = (0..z.len())
                    .map(|j| scale * (z[j] - v[j]) + z[j].ln() + 1.0)
                    .collect();
                let mean = grads.iter().sum::<f64>() / grads.len().max(1) as f64;
                if !grads.is_empty() {
                    multipliers_eq[0] = mean;
                }
                residual = grads.iter().fold(0.0f64, |r, g| r.max((g - mean).abs()));
                residual = residual.max((z.sum() - 1.0).abs());
            }
        }
        Ok(InnerSolution {
            z,
            multipliers,
            multipliers_eq,
            activity,
            status: SolveStatus {
                solver: "closed form",
                iterations: 0,
                residual,
                dependent: Vec::new(),
                dependent_eq: Vec::new(),
            },
        })
    }

    /// Box family: the offset in closed form. `ẑ_β = clamp((u + βh)/(1 + βκ))` moves the
    /// argument by `β w`, `w = (h − κu)/(1 + βκ)`, so unit by unit `f_j = (clamp(u_j + βw_j) −
    /// clamp(u_j))/|β|` is `sign(β) w_j` where both points are inside the box, `0` where both are
    /// clamped to the same bound, and the explicit quotient only across a kink; then
    /// `(E(ẑ) − E(z*))/|β| = (z* − u)ᵀf + (|β|/2)‖f‖²` and the θ-gap is `−Bᵀf`. Softmax:
    /// [`entropy_offset`](crate::prox::entropy_offset) solves for `f` directly.
    fn offset(
        &self,
        theta: &DVector<f64>,
        loss: &Loss,
        beta: f64,
        z_star: &InnerSolution,
    ) -> Result<Offset> {
        check_offset(self, theta, loss, beta, z_star)?;
        let z_hat = self.solve(theta, loss, beta)?;
        let s = beta.abs();
        let Some((lo, hi)) = self.activation.bounds() else {
            return Ok(self.softmax_offset(theta, loss, beta, z_star, z_hat));
        };
        let u = self.pre_activation(theta);
        let kappa = loss.curvature();
        let h = loss.linear_term();
        let inside = |x: f64| x >= lo && x <= hi;
        let rate = DVector::from_fn(u.len(), |j, _| {
            let w = (h[j] - kappa * u[j]) / (1.0 + beta * kappa);
            let step = beta * w;
            let moved = u[j] + step;
            // `clamp(u + step) − clamp(u)`, each case written so that nothing of the size of
            // `u` is subtracted from something of the size of `step`.
            let d = if inside(u[j]) && inside(moved) {
                return beta.signum() * w;
            } else if (u[j] <= lo && moved <= lo) || (u[j] >= hi && moved >= hi) {
                0.0
            } else if u[j] < lo {
                ((u[j] - lo) + step).min(hi - lo)
            } else if u[j] > hi {
                ((u[j] - hi) + step).max(lo - hi)
            } else if moved > hi {
                hi - u[j]
            } else {
                lo - u[j]
            };
            d / s
        });
        let offset_from_u = &z_star.z - &u;
        Ok(Offset {
            energy_gap: offset_from_u.dot(&rate) + s * (0.5 * rate.norm_squared()),
            grad_theta_gap: self.cross_jvp(&z_star.z, theta, &rate),
            // The box is in G, not in constraint rows.
            multiplier_rate: DVector::zeros(z_star.multipliers.len()),
            multiplier_rate_eq: DVector::zeros(z_star.multipliers_eq.len()),
            z_hat: InnerSolution {
                z: &z_star.z + &rate * s,
                ..z_hat
            },
            rate,
        })
    }

    /// Box family: unit-wise projection of `−c` onto the tangent cone ([`box_unit_limit`]).
    /// Softmax: `ż = −(D − D11ᵀD / 1ᵀD1) c` with `D = diag(z/(1+z)) = A⁻¹` (Prop. 2 with the
    /// strongly active simplex equality).
    fn closed_form_direction(
        &self,
        theta: &DVector<f64>,
        z_star: &InnerSolution,
        c: &DVector<f64>,
    ) -> Option<Result<Direction>> {
        let n = self.dim();
        if c.len() != n {
            return Some(Err(Error::dim("loss gradient", n, c.len())));
        }
        let u = self.pre_activation(theta);
        let mut branches = vec![None; self.constraints.m()];
        let (z_dot, condition, method) = match self.activation.bounds() {
            Some((lo, hi)) => {
                let tie = self.tie(&u);
                let mut z_dot = DVector::zeros(n);
                for j in 0..n {
                    let (d, act, branch) = box_unit_limit(u[j], lo, hi, c[j], tie);
                    z_dot[j] = d;
                    if act == Activity::Weak {
                        let at_lo = (u[j] - lo).abs() <= tie;
                        let row = if at_lo {
                            self.rows[j].0
                        } else {
                            self.rows[j].1
                        };
                        if let Some(r) = row {
                            branches[r] = branch;
                        }
                    }
                }
                let method = if self.constraints.m() == 0 {
                    DirectionMethod::Prop1ClosedForm
                } else {
                    DirectionMethod::BoxClosedForm
                };
                (z_dot, 1.0, method)
            }
            None => {
                let z = &z_star.z;
                let d = z.map(|v| v / (1.0 + v));
                let dc = d.component_mul(c);
                let z_dot = -(&dc - &d * (dc.sum() / d.sum()));
                let cond = d.max() / d.min();
                (z_dot, cond, DirectionMethod::SimplexClosedForm)
            }
        };
        Some(Ok(Direction {
            z_dot,
            branches,
            multipliers: DVector::zeros(self.constraints.m()),
            multipliers_eq: DVector::zeros(self.constraints.b_eq.len()),
            condition,
            residual: 0.0,
            method,
        }))
    }
}
