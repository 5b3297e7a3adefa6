//! The sparse item's derivative in every [`Mode`]: the limit's rates (Eq. 17) and Def. 1's
//! finite-β rates from the offset problem on sparse factorizations
//! ([`crate::solve::qp::solve_sparse_offset`]), combined by one formula into the gradients of
//! every datum (the parent module's docs), on the data's patterns or densely.

use nalgebra::DVector;

use super::{SparseQpGradients, SparseQpSolution, IDENTIFICATION};
use crate::error::{Error, Result};
use crate::layer::{ItemStatus, Mode};
use crate::linalg::{on_pattern, shifted_diagonal, sparse_mul, sparse_row_amax, stack_rows, Csc};
use crate::problem::{offset_cancels, DirectionMethod};
use crate::prox::{Activity, Branch};
use crate::solve::qp::{
    solve_sparse_exact, solve_sparse_offset, ExactQp, SparseOffsetQp, SparseQp,
};

/// Def. 1's offset of one sparse item at `β` ([`SparseQpSolution::offset`]): the rates of `z`
/// and of the multipliers, `ẑ_β`, and the energy gap, each formed without cancellation.
#[derive(Debug, Clone)]
pub(crate) struct SparseOffset {
    /// `ẑ_β`.
    pub(crate) z_hat: DVector<f64>,
    /// `f = (ẑ_β − z*)/|β|`.
    pub(crate) rate: DVector<f64>,
    /// `(λ̂_β − λ*)/|β|` of each inequality row (`−λ*_i/|β|` on rows that left).
    pub(crate) multiplier_rate: DVector<f64>,
    /// `(λ̂_{eq,β} − λ*_eq)/|β|`.
    pub(crate) multiplier_rate_eq: DVector<f64>,
    /// `(E(ẑ_β) − E(z*))/|β|`.
    pub(crate) energy_gap: f64,
    /// The offset problem's ∞-norm residual.
    pub(crate) residual: f64,
}

impl SparseQpSolution {
    /// The rates of `mode` for `grad_z` (see [`SparseQpSolution::gradients_in`]).
    pub(in crate::layer) fn rates(
        &self,
        grad_z: &DVector<f64>,
        mode: Mode,
        condition: bool,
    ) -> Result<ModeRates<'_>> {
        let n = self.qp.n();
        if grad_z.len() != n {
            return Err(Error::dim("grad_z", n, grad_z.len()));
        }
        crate::error::check_finite("grad_z", grad_z.iter())?;
        self.check_active_rows()?;
        let beta = match mode {
            Mode::Limit => {
                let d = self.direction(grad_z, condition)?;
                return Ok(ModeRates {
                    solution: self,
                    rates: vec![Rates::limit(d.z_dot, d.multipliers, d.multipliers_eq)],
                    branches: d.branches,
                    method: d.method,
                    condition: d.condition,
                    residual: d.residual,
                });
            }
            Mode::Contrastive(beta) | Mode::Centered(beta) => beta,
        };
        crate::error::check_beta(beta.abs())?;
        let mut rates = vec![self.offset_rates(grad_z, beta)?];
        if matches!(mode, Mode::Centered(_)) {
            // (D₊ − D₋)/2, each at |β| ([`super::Mode::Centered`]).
            let mut minus = self.offset_rates(grad_z, -beta)?;
            rates[0].weight = 0.5;
            minus.weight = -0.5;
            rates.push(minus);
        }
        Ok(ModeRates {
            solution: self,
            residual: rates.iter().map(|r| r.residual).fold(0.0, f64::max),
            rates,
            branches: vec![None; self.exact.solution.activity.len()],
            method: DirectionMethod::Offset,
            condition: f64::NAN,
        })
    }

    /// Def. 1's rates at `β` for the linear loss `grad_zᵀz` ([`SparseQpSolution::offset`]).
    fn offset_rates(&self, grad_z: &DVector<f64>, beta: f64) -> Result<Rates> {
        let offset = self.offset(grad_z, 0.0, beta)?;
        Ok(Rates {
            weight: 1.0,
            s: beta.abs(),
            f: offset.rate,
            mu: offset.multiplier_rate,
            mu_eq: offset.multiplier_rate_eq,
            residual: offset.residual,
        })
    }

    /// Def. 1's offset at `β` (`β < 0`: at `−|β|`) for a loss with gradient `gradient = ℓ'(z*)` and
    /// curvature `κ` (`ℓ(z) = ℓ(z*) + ℓ'(z*)ᵀ(z − z*) + (κ/2)‖z − z*‖²`): the offset problem of
    /// [`crate::solve::qp::OffsetQp`] on the sparse data, `P = Q + βκI`, `g = sign(β) ℓ'(z*)`,
    /// `t_i = slack_i/|β|` off the active rows, `m_i = λ*_i/|β|` on the strongly active ones (0
    /// elsewhere: a weakly active row's multiplier is zero, and its rounding, 1e-16 say, would be a
    /// rate of 1e-7 at β = 1e-9), started with the active rows (less those set aside as dependent)
    /// held, the equality rows set aside left out. When the iteration does not settle (a `β` that
    /// changes many rows), it restarts from the working set of a solve of `ẑ_β` itself. The energy
    /// gap is `(E(ẑ) − E(z*))/|β| = Σ_{i left} λ*_i a_iᵀf + (|β|/2) fᵀQf` (stationarity at `z*`;
    /// `a_iᵀf = 0` on the rows that stay), as on the dense layer
    /// ([`crate::problem::InnerProblem::offset`]).
    pub(crate) fn offset(
        &self,
        gradient: &DVector<f64>,
        curvature: f64,
        beta: f64,
    ) -> Result<SparseOffset> {
        let (sol, s) = (&self.exact.solution, beta.abs());
        let g = gradient * beta.signum();
        let t = DVector::from_fn(sol.activity.len(), |i, _| match sol.activity[i] {
            Activity::Inactive => sol.slack[i].max(0.0) / s,
            _ => 0.0,
        });
        let m = DVector::from_fn(t.len(), |i, _| match sol.activity[i] {
            Activity::Strong => sol.lambda[i].max(0.0) / s,
            _ => 0.0,
        });
        let shift = beta * curvature;
        let p = shifted_diagonal(&self.qp.p, shift);
        // Equality rows set aside as dependent at z* stay out; their multiplier's rate is 0.
        let k = sol.lambda_eq.len();
        let kept: Vec<usize> = (0..k).filter(|j| !sol.dependent_eq.contains(j)).collect();
        let a_eq = stack_rows(&[(&self.qp.a_eq, Some(&kept), 1.0)]);
        let problem = SparseOffsetQp {
            p: if shift == 0.0 { &self.qp.p } else { &p },
            g: &g,
            a: &self.qp.a,
            a_eq: &a_eq,
            t: &t,
            m: &m,
        };
        let mut working: Vec<bool> = (0..t.len())
            .map(|i| t[i] == 0.0 && !sol.dependent.contains(&i))
            .collect();
        let offset = match solve_sparse_offset(&problem, &mut working) {
            Ok(offset) => offset,
            Err(_) => {
                let mut working = self.shifted(gradient, curvature, beta)?.working;
                solve_sparse_offset(&problem, &mut working)?
            }
        };
        let af = sparse_mul(&self.qp.a, &offset.f);
        let energy_gap = (0..t.len())
            .filter(|&i| !offset.working[i] && sol.lambda[i] > 0.0)
            .map(|i| sol.lambda[i] * af[i])
            .sum::<f64>()
            + s * (0.5 * offset.f.dot(&sparse_mul(&self.qp.p, &offset.f)));
        let mut z_hat = self.z() + &offset.f * s;
        if offset_cancels(self.z(), s, &offset.f, &z_hat) {
            // ẑ_β is much smaller than z*: z* + βf has lost its digits; ẑ_β's own QP is not.
            z_hat = self.shifted(gradient, curvature, beta)?.x;
        }
        self.check_offset_point(&z_hat, beta)?;
        let mut multiplier_rate_eq = DVector::zeros(k);
        for (r, &j) in kept.iter().enumerate() {
            multiplier_rate_eq[j] = offset.mu_eq[r];
        }
        Ok(SparseOffset {
            z_hat,
            energy_gap,
            residual: offset.residual,
            rate: offset.f,
            multiplier_rate: offset.mu,
            multiplier_rate_eq,
        })
    }

    /// `ẑ_β` solved directly: the QP with `P + βκI` and `q + β(ℓ'(z*) − κz*)` (the loss
    /// `βℓ` added, [`SparseQpSolution::offset`]'s quadratic model of it, which is exact for the
    /// linear and squared losses).
    fn shifted(&self, gradient: &DVector<f64>, curvature: f64, beta: f64) -> Result<ExactQp> {
        let shift = beta * curvature;
        let shifted = SparseQp {
            p: shifted_diagonal(&self.qp.p, shift),
            q: &self.qp.q + (gradient - self.z() * curvature) * beta,
            ..self.qp.clone()
        };
        Ok(solve_sparse_exact(&shifted, &self.tol, &IDENTIFICATION)?.solution)
    }

    /// [`Error::Inaccurate`] when `ẑ = z* + s f` violates a row by more than the feasibility
    /// tolerance relative to the row's terms (`|b_i| + ‖a_i‖∞ ‖ẑ‖∞`), as the dense offset.
    fn check_offset_point(&self, z_hat: &DVector<f64>, beta: f64) -> Result<()> {
        let size = z_hat.amax();
        let worst = |a: &Csc, b: &DVector<f64>, eq: bool| {
            let (r, norms) = (sparse_mul(a, z_hat) - b, sparse_row_amax(a));
            (0..b.len())
                .map(|i| {
                    let miss = if eq { r[i].abs() } else { (-r[i]).max(0.0) };
                    if miss > 0.0 {
                        miss / (b[i].abs() + norms[i] * size)
                    } else {
                        0.0
                    }
                })
                .fold(0.0, f64::max)
        };
        let violation =
            worst(&self.qp.a, &self.qp.b, false).max(worst(&self.qp.a_eq, &self.qp.b_eq, true));
        if violation > self.tol.feasibility {
            return Err(Error::Inaccurate {
                what: format!(
                    "the sparse offset solve at beta {beta:e} (z* + beta f violates the \
                     constraints beyond the feasibility tolerance)"
                ),
                residual: violation,
            });
        }
        Ok(())
    }
}

/// One set of rates the data gradients are formed from (module docs), with its weight in
/// the mode's combination: `f` (`ż` in the limit, `(ẑ_β − z*)/|β|` at finite `β`), the
/// multipliers' rates `μ`, `μ_eq`, and `s` (`0` in the limit, `|β|` at finite `β`).
struct Rates {
    weight: f64,
    s: f64,
    f: DVector<f64>,
    mu: DVector<f64>,
    mu_eq: DVector<f64>,
    residual: f64,
}

impl Rates {
    fn limit(f: DVector<f64>, mu: DVector<f64>, mu_eq: DVector<f64>) -> Self {
        Self {
            weight: 1.0,
            s: 0.0,
            f,
            mu,
            mu_eq,
            residual: 0.0,
        }
    }
}

/// A derivative of one sparse item in a [`Mode`], before it is evaluated at the data's
/// entries: the weighted sum over its [`Rates`] of the module docs' formulas (with the
/// `s`-terms of Def. 1's surrogate), one definition for the sparse patterns and the dense
/// layer's full matrices.
pub(in crate::layer) struct ModeRates<'a> {
    solution: &'a SparseQpSolution,
    rates: Vec<Rates>,
    branches: Vec<Option<Branch>>,
    method: DirectionMethod,
    condition: f64,
    residual: f64,
}

impl ModeRates<'_> {
    /// `Σ w (f_i z_j + z_i f_j)/2 + w (s/2) f_i f_j`: `∂/∂Q_ij`.
    pub(in crate::layer) fn q(&self, i: usize, j: usize) -> f64 {
        let z = self.solution.z();
        self.rates
            .iter()
            .map(|r| {
                r.weight * (0.5 * (r.f[i] * z[j] + z[i] * r.f[j]) + 0.5 * r.s * r.f[i] * r.f[j])
            })
            .sum()
    }

    /// `Σ w (μ_i z_j + λ*_i f_j + s μ_i f_j)`: `∂/∂G_ij`.
    pub(in crate::layer) fn g(&self, i: usize, j: usize) -> f64 {
        let (z, lambda) = (self.solution.z(), self.solution.multipliers().0);
        self.rates
            .iter()
            .map(|r| r.weight * (r.mu[i] * z[j] + lambda[i] * r.f[j] + r.s * r.mu[i] * r.f[j]))
            .sum()
    }

    /// `−Σ w (μ_eq,i z_j + λ*_eq,i f_j + s μ_eq,i f_j)`: `∂/∂A_ij`.
    pub(in crate::layer) fn a(&self, i: usize, j: usize) -> f64 {
        let (z, lambda_eq) = (self.solution.z(), self.solution.multipliers().1);
        -self
            .rates
            .iter()
            .map(|r| {
                r.weight * (r.mu_eq[i] * z[j] + lambda_eq[i] * r.f[j] + r.s * r.mu_eq[i] * r.f[j])
            })
            .sum::<f64>()
    }

    /// `Σ w v(r)` of one vector of the rates.
    fn sum(&self, v: impl Fn(&Rates) -> &DVector<f64>) -> DVector<f64> {
        let mut out = v(&self.rates[0]) * self.rates[0].weight;
        for r in &self.rates[1..] {
            out += v(r) * r.weight;
        }
        out
    }

    /// `∂/∂p = Σ w f`, `∂/∂h = −Σ w μ`, `∂/∂b = Σ w μ_eq`.
    pub(in crate::layer) fn vectors(&self) -> (DVector<f64>, DVector<f64>, DVector<f64>) {
        (
            self.sum(|r| &r.f),
            -self.sum(|r| &r.mu),
            self.sum(|r| &r.mu_eq),
        )
    }

    /// The item's status with this derivative's branches.
    pub(in crate::layer) fn status(&self) -> ItemStatus {
        ItemStatus {
            branches: self.branches.clone(),
            ..self.solution.status()
        }
    }

    /// The gradients at the stored entries of `Q`, `G`, `A`.
    pub(super) fn on_patterns(self) -> SparseQpGradients {
        let qp = &self.solution.qp;
        let (p, h, b) = self.vectors();
        SparseQpGradients {
            q: on_pattern(&qp.p, |i, j| self.q(i, j)),
            p,
            // The QP's rows are −G (same pattern).
            g: on_pattern(&qp.a, |i, j| self.g(i, j)),
            h,
            a: on_pattern(&qp.a_eq, |i, j| self.a(i, j)),
            b,
            status: self.status(),
            method: self.method,
            condition: self.condition,
            direction_residual: self.residual,
        }
    }
}
