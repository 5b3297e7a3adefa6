//! Section 2: contrastive surrogates for bilevel programs and their exact `β → 0⁺` limits.
//!
//! For `L(θ) = ℓ(z*)`, `z* = argmin_z E(z; θ)` (Eq. 2), a [`Bilevel`] gives
//! * the contrastive surrogate of Def. 1 (Eq. 5, Eq. 6) and its θ-gradient (Eq. 10) —
//!   [`Bilevel::surrogate`]:
//!
//!   <div class="math">
//!
//!   $$ L^\beta(\theta) = \ell(\hat z_\beta) + \frac{E(\hat z_\beta; \theta) - E(z^\star; \theta)}{\beta}, \quad
//!   \hat z_\beta = \arg\min_z \beta \ell(z) + E(z; \theta), \quad
//!   \nabla_\theta L^\beta = \frac{1}{\beta} \partial_\theta \big(E(\hat z_\beta; \theta) - E(z^\star; \theta)\big); $$
//!
//!   </div>
//!
//! * the linearized surrogate of Def. 2 (Eq. 36-37), `ℓ` replaced by its tangent at `z*` —
//!   [`Bilevel::linearized`];
//! * the exact limit `ż = dẑ_β/dβ|_{β=0⁺}`: Prop. 1 (`−H⁻¹ℓ'(z*)`) for smooth problems, Prop. 2
//!   (the QP of Eq. 17, with weakly active constraints) otherwise, and the θ-gradient of Cor. 1 /
//!   Eq. 9, `(∂²E/∂θ∂z) ż` — [`Bilevel::limit`];
//! * the centered surrogate gradient (beyond the paper) — [`Bilevel::centered`];
//! * the band of Prop. 3 — [`Bilevel::band`].
//!
//! Sign convention: every gradient here is the gradient of the quantity being *minimized*
//! (`L`, `L^β`), so a descent step is `θ ← θ − η·grad` (Eq. 10).
//!
//! # Where the code departs from the printed paper
//! * **Eq. 12 at ties.** For Example 1 (`ẑ_β = [θx − βg]₊`) at `(θx)_j = 0` the one-sided limit of
//!   Eq. 11 is `[−g_j]₊`: it is `−g_j` when `g_j < 0` and `0` when `g_j ≥ 0`. The printed case
//!   split of Eq. 12 assigns these the other way round (`D_jj = −1` for `g_j ≥ 0`). We follow
//!   Eq. 11 and Prop. 2 (the tangent-cone projection of `−g`), i.e.
//!   `D_jj = −1` iff `(θx)_j > 0 ∨ ((θx)_j = 0 ∧ g_j < 0)`.
//! * **Eq. 13's sign.** With `E = ½‖z − θx‖²`, `∂²E/∂θ∂z · ż = −ż xᵀ`, so by Eq. 9 / Eq. 19 the
//!   gradient of `L` is `−D g xᵀ` (for `(θx)_j > 0` this is `g_j x`, the back-propagation
//!   gradient of `gᵀ[θx]₊`). Eq. 13 as printed drops the minus sign.

use std::sync::Arc;

use nalgebra::DVector;

use crate::error::{check_beta, check_computed, Error, Result};
use crate::linalg::{select_rows, solve_kkt, vstack};
use crate::problem::{offset_cancels, scatter_multipliers};
use crate::problem::{
    Direction, DirectionMethod, InnerProblem, InnerSolution, LinearConstraints, Loss,
};
use crate::solve::qp::{solve_exact, Activity, Clarabel, Qp, QpBackend, Tolerances};

/// A bilevel program `L(θ) = ℓ(z*)`, `z* = argmin_z E(z; θ)` (Eq. 2).
pub struct Bilevel<P: InnerProblem> {
    /// The inner problem `E`.
    pub inner: P,
    /// The outer loss `ℓ`.
    pub loss: Loss,
    backend: Arc<dyn QpBackend>,
    tol: Tolerances,
}

impl<P: InnerProblem + std::fmt::Debug> std::fmt::Debug for Bilevel<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bilevel")
            .field("inner", &self.inner)
            .field("loss", &self.loss)
            .field("backend", &self.backend.name())
            .field("tol", &self.tol)
            .finish()
    }
}

/// A finite-β surrogate (Def. 1 or Def. 2) with its solutions.
#[derive(Debug, Clone)]
#[must_use]
pub struct Surrogate {
    /// The spacing parameter.
    pub beta: f64,
    /// `z*` (free solution).
    pub z_star: InnerSolution,
    /// `ẑ_β` (clamped solution; for Def. 2 with the tangent loss).
    pub z_hat: InnerSolution,
    /// `L^β(θ)` (Eq. 5 or Eq. 37).
    pub value: f64,
    /// `(1/β) ∂_θ(E(ẑ_β; θ) − E(z*; θ))` (Eq. 10).
    pub grad_theta: DVector<f64>,
    /// `(ẑ_β − z*)/β`, solved for directly ([`InnerProblem::offset`]); tends to `ż` as
    /// `β → 0⁺`.
    pub rate: DVector<f64>,
}

/// The centered surrogate gradient `(1/2β) ∂_θ(E(ẑ_β; θ) − E(ẑ_{−β}; θ))`.
#[derive(Debug, Clone)]
#[must_use]
pub struct Centered {
    /// The spacing parameter.
    pub beta: f64,
    /// `ẑ_β`.
    pub z_plus: InnerSolution,
    /// `ẑ_{−β} = argmin_z −βℓ(z) + E(z; θ)`.
    pub z_minus: InnerSolution,
    /// The centered gradient.
    pub grad_theta: DVector<f64>,
}

/// The exact `β → 0⁺` limit (Props. 1-2, Cor. 1) with its diagnostics.
#[derive(Debug, Clone)]
#[must_use]
pub struct LimitDerivative {
    /// `z*` with multipliers and the strong / weak / inactive classification.
    pub z_star: InnerSolution,
    /// `L(θ) = ℓ(z*)`.
    pub loss: f64,
    /// `ż = dẑ_β/dβ|_{β=0⁺}` with branches, condition estimate and residual.
    pub direction: Direction,
    /// `dL/dθ` in the one-sided sense of Cor. 1: `(∂²E/∂θ∂z) ż`.
    pub grad_theta: DVector<f64>,
}

/// Prop. 3's band `L^β ≤ L ≤ L^β + β/(2ν)‖ℓ'(z*)‖²`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Band {
    /// `L^β(θ)`.
    pub lower: f64,
    /// `L(θ)`.
    pub loss: f64,
    /// `L^β(θ) + β/(2ν)‖ℓ'(z*)‖²`.
    pub upper: f64,
    /// The strong-convexity modulus used.
    pub nu: f64,
}

impl Band {
    /// Prop. 3's band around `L^β = lower` at `β` for the loss `ℓ` at `z*` and a modulus `ν`
    /// (any lower bound of the strong convexity keeps the band valid, only wider).
    pub(crate) fn of(
        lower: f64,
        (loss, z_star): (&Loss, &DVector<f64>),
        beta: f64,
        nu: f64,
    ) -> Self {
        Band {
            lower,
            loss: loss.value(z_star),
            upper: lower + band_width(beta, nu, &loss.gradient(z_star)),
            nu,
        }
    }

    /// Prop. 3 is a theorem, so a computed band that misses the loss by more than the rounding
    /// of its terms (`10⁻⁹` of their magnitudes) shows that the data's conditioning exceeds
    /// what `f64` resolves: the band's two sides are then differences of nearly equal numbers
    /// (e.g. `ℓ'` along the flattest direction of an ill-conditioned `Q`, where
    /// `β‖ℓ'‖²/(2ν)` and `β ℓ'ᵀQ⁻¹ℓ'/2` agree to every digit `f64` keeps).
    ///
    /// # Errors
    /// [`Error::Inaccurate`] naming the band and its relative violation.
    pub fn check(&self) -> Result<()> {
        let scale =
            self.lower.abs() + self.upper.abs() + self.loss.abs() + (self.upper - self.lower).abs();
        // Below f64::MIN_POSITIVE rounding is absolute (steps of 5e-324): a few steps of room.
        let room = 1e-9 * scale + 32.0 * f64::from_bits(1);
        let miss = (self.lower - self.loss).max(self.loss - self.upper);
        if miss > room {
            return Err(Error::Inaccurate {
                what: format!(
                    "Prop. 3's band ({:e} <= L = {:e} <= {:e})",
                    self.lower, self.loss, self.upper
                ),
                residual: miss / scale,
            });
        }
        Ok(())
    }
}

impl<P: InnerProblem> Bilevel<P> {
    /// Pairs an inner problem with an outer loss (dimensions checked).
    ///
    /// # Errors
    /// [`Error::DimensionMismatch`] / [`Error::NonFinite`] for the loss.
    pub fn new(inner: P, loss: Loss) -> Result<Self> {
        loss.validate(inner.dim())?;
        Ok(Self {
            inner,
            loss,
            backend: Arc::new(Clarabel::default()),
            tol: Tolerances::default(),
        })
    }

    /// The QP backend used for the Prop. 2 direction QP (Eq. 17).
    pub fn with_backend(mut self, backend: Arc<dyn QpBackend>) -> Self {
        self.backend = backend;
        self
    }

    /// Activity tolerances for the Prop. 2 direction QP.
    pub fn with_tolerances(mut self, tol: Tolerances) -> Self {
        self.tol = tol;
        self
    }

    /// `z* = argmin_z E(z; θ)`.
    pub fn solve_free(&self, theta: &DVector<f64>) -> Result<InnerSolution> {
        self.inner.solve(theta, &self.loss, 0.0)
    }

    /// `L(θ) = ℓ(z*)` (Eq. 2).
    pub fn loss_value(&self, theta: &DVector<f64>) -> Result<f64> {
        Ok(self.loss.value(&self.solve_free(theta)?.z))
    }

    /// Def. 1: `L^β(θ)` (Eq. 5), `ẑ_β`, `z*` and the gradient of Eq. 10.
    ///
    /// # Example
    /// ```
    /// use bilevel::nalgebra::dvector;
    /// use bilevel::prelude::*;
    ///
    /// // E(z; θ) = ½‖z‖² − zᵀθ on z ≥ 0, so z* = [θ]₊: a ReLU layer written as a QP.
    /// let (boxes, _) = LinearConstraints::boxes(&[(0.0, f64::INFINITY); 2]);
    /// let relu = QuadraticProblem::new(
    ///     nalgebra::DMatrix::identity(2, 2), nalgebra::DMatrix::identity(2, 2), dvector![0.0, 0.0], boxes,
    /// )?;
    /// let program = Bilevel::new(relu, Loss::Squared { target: dvector![0.0, 0.5] })?;
    /// let theta = dvector![1.0, -1.0];
    /// let s = program.surrogate(&theta, 0.1)?;
    /// // Here ẑ_β = [(θ + βt)/(1 + β)]₊, so Eq. 10 gives (1/(1 + β), 0).
    /// assert!((s.grad_theta - dvector![1.0 / 1.1, 0.0]).amax() < 1e-12);
    /// // Prop. 3: the surrogate never exceeds the loss.
    /// assert!(s.value <= program.loss_value(&theta)?);
    /// # use bilevel::nalgebra;
    /// # Ok::<(), bilevel::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidBeta`] for `β ≤ 0` or non-finite; the inner solver's errors.
    pub fn surrogate(&self, theta: &DVector<f64>, beta: f64) -> Result<Surrogate> {
        check_beta(beta)?;
        let z_star = self.solve_free(theta)?;
        self.surrogate_with(theta, beta, z_star)
    }

    /// [`Bilevel::surrogate`] with a known `z*` (saves one inner solve per β).
    pub fn surrogate_with(
        &self,
        theta: &DVector<f64>,
        beta: f64,
        z_star: InnerSolution,
    ) -> Result<Surrogate> {
        self.contrastive(theta, beta, z_star, &self.loss, |z, s, f, z_hat| {
            if offset_cancels(z, s, f, z_hat) {
                // ℓ(z*) + sℓ'ᵀf + … would cancel as badly as z* + sf: ẑ is exact.
                self.loss.value(z_hat)
            } else {
                self.loss.value_offset(z, s, f)
            }
        })
    }

    /// Def. 2: the linearized surrogate (Eq. 37) with `ℓ̄(z; z*) = ℓ(z*) + (z − z*)ᵀℓ'(z*)`
    /// (Eq. 36). The gradient is Eq. 10 applied to Eq. 37 with the tangent point `z*` held fixed
    /// (the convention of Prop. 6 and Remark 2): `(1/β) ∂_θ(E(ẑ; θ) − E(z*; θ))`,
    /// `ẑ = argmin_z βℓ'(z*)ᵀz + E(z; θ)`.
    ///
    /// # Example
    /// ```
    /// use bilevel::nalgebra::dvector;
    /// use bilevel::prelude::*;
    ///
    /// // E(z; θ) = ½‖z‖² − zᵀθ on z ≥ 0, so z* = [θ]₊: a ReLU layer written as a QP.
    /// let (boxes, _) = LinearConstraints::boxes(&[(0.0, f64::INFINITY); 2]);
    /// let relu = QuadraticProblem::new(
    ///     nalgebra::DMatrix::identity(2, 2), nalgebra::DMatrix::identity(2, 2), dvector![0.0, 0.0], boxes,
    /// )?;
    /// let program = Bilevel::new(relu, Loss::Squared { target: dvector![0.0, 0.5] })?;
    /// let theta = dvector![1.0, -1.0];
    /// // Def. 1 and Def. 2 share the β → 0⁺ limit (Props. 1-2 hold for both).
    /// let (def1, def2) = (program.surrogate(&theta, 1e-6)?, program.linearized(&theta, 1e-6)?);
    /// assert!((def1.grad_theta - def2.grad_theta).amax() < 1e-5);
    /// # use bilevel::nalgebra;
    /// # Ok::<(), bilevel::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Bilevel::surrogate`].
    pub fn linearized(&self, theta: &DVector<f64>, beta: f64) -> Result<Surrogate> {
        check_beta(beta)?;
        let z_star = self.solve_free(theta)?;
        self.linearized_with(theta, beta, z_star)
    }

    /// [`Bilevel::linearized`] with a known `z*`.
    pub fn linearized_with(
        &self,
        theta: &DVector<f64>,
        beta: f64,
        z_star: InnerSolution,
    ) -> Result<Surrogate> {
        let tangent = self.loss.tangent(&z_star.z);
        // ℓ̄(z* + βf; z*) = ℓ(z*) + β fᵀℓ'(z*)  (Eq. 36)
        self.contrastive(theta, beta, z_star, &tangent, |z, s, f, _| {
            self.loss.value(z) + s * tangent.value(f)
        })
    }

    /// The centered surrogate gradient `(1/2β) ∂_θ(E(ẑ_β; θ) − E(ẑ_{−β}; θ))`,
    /// `ẑ_{−β} = argmin_z −βℓ(z) + E(z; θ)` (beyond the paper).
    ///
    /// Where it is defined its bias against the limit gradient is `O(β²)` instead of Def. 1's
    /// `O(β)` (it is a central difference of `β ↦ ∂_θE(ẑ_β)`). It is defined when `−βℓ + E` is
    /// still strongly convex: always for a linear `ℓ`; for an `ℓ` whose gradient is
    /// `L''`-Lipschitz and a `ν`-strongly convex `E`, for `β < ν / L''`.
    ///
    /// At a weakly active constraint `β ↦ ẑ_β` has a kink at 0, so this gradient tends to the
    /// *average* of the two one-sided derivatives instead of choosing the branch of Prop. 2;
    /// use [`Bilevel::limit`] there.
    ///
    /// # Errors
    /// [`Error::BetaOutOfRange`] outside the range above (or when `ν` is unknown and `ℓ` is not
    /// linear); [`Error::InvalidBeta`] for `β ≤ 0`.
    pub fn centered(&self, theta: &DVector<f64>, beta: f64) -> Result<Centered> {
        check_beta(beta)?;
        let curvature = self.loss.curvature();
        if curvature > 0.0 {
            match self.inner.strong_convexity() {
                Some(nu) if beta * curvature < nu => {}
                Some(nu) => {
                    return Err(Error::BetaOutOfRange {
                        beta,
                        what: "the centered surrogate".into(),
                        reason: format!(
                            "need beta < nu / L'' = {} (nu = {nu}, L'' = {curvature}); \
                             -beta*loss + E is not strongly convex otherwise",
                            nu / curvature
                        ),
                    })
                }
                None => {
                    return Err(Error::BetaOutOfRange {
                        beta,
                        what: "the centered surrogate".into(),
                        reason: "strong convexity of E is unknown and the loss is not linear"
                            .into(),
                    })
                }
            }
        }
        // Both offsets from z*: (∂_θE(ẑ_β) − ∂_θE(ẑ_{−β}))/(2β) = (G₊ − G₋)/2 with
        // G± = (∂_θE(ẑ_{±β}) − ∂_θE(z*))/β, each free of cancellation.
        let z_star = self.solve_free(theta)?;
        let plus = self.inner.offset(theta, &self.loss, beta, &z_star)?;
        let minus = self.inner.offset(theta, &self.loss, -beta, &z_star)?;
        Ok(Centered {
            beta,
            z_plus: plus.z_hat,
            z_minus: minus.z_hat,
            grad_theta: (plus.grad_theta_gap - minus.grad_theta_gap) / 2.0,
        })
    }

    /// The exact limit derivative `ż` (Prop. 1 / Prop. 2) and the θ-gradient of Cor. 1.
    ///
    /// Closed forms are used where the inner problem has one (separable layers); otherwise the
    /// direction QP of Eq. 17 is solved with the QP backend and refined exactly
    /// ([`prop2_direction`]).
    ///
    /// # Example
    /// ```
    /// use bilevel::nalgebra::dvector;
    /// use bilevel::prelude::*;
    ///
    /// // E(z; θ) = ½‖z‖² − zᵀθ on z ≥ 0, so z* = [θ]₊: a ReLU layer written as a QP.
    /// let (boxes, _) = LinearConstraints::boxes(&[(0.0, f64::INFINITY); 2]);
    /// let relu = QuadraticProblem::new(
    ///     nalgebra::DMatrix::identity(2, 2), nalgebra::DMatrix::identity(2, 2), dvector![0.0, 0.0], boxes,
    /// )?;
    /// let program = Bilevel::new(relu, Loss::Squared { target: dvector![0.0, 0.5] })?;
    /// // θ_2 = 0: the second unit sits exactly on its bound with a zero multiplier (weakly
    /// // active). The loss pulls it up (t_2 = 0.5 > 0), so the one-sided derivative leaves the
    /// // bound (Prop. 2); with t_2 < 0 it would stay.
    /// let limit = program.limit(&dvector![1.0, 0.0])?;
    /// assert_eq!(limit.direction.branches[1], Some(Branch::Leaves));
    /// assert!((limit.direction.z_dot - dvector![-1.0, 0.5]).amax() < 1e-12);
    /// assert!((limit.grad_theta - dvector![1.0, -0.5]).amax() < 1e-12);
    /// # use bilevel::nalgebra;
    /// # Ok::<(), bilevel::Error>(())
    /// ```
    ///
    /// # Errors
    /// The inner solver's and the direction QP's errors.
    pub fn limit(&self, theta: &DVector<f64>) -> Result<LimitDerivative> {
        let z_star = self.solve_free(theta)?;
        self.limit_with(theta, z_star)
    }

    /// [`Bilevel::limit`] with a known `z*`.
    pub fn limit_with(
        &self,
        theta: &DVector<f64>,
        z_star: InnerSolution,
    ) -> Result<LimitDerivative> {
        let c = self.loss.gradient(&z_star.z);
        let direction = match self.inner.closed_form_direction(theta, &z_star, &c) {
            Some(d) => d?,
            None => prop2_direction(
                &self.inner.hessian(&z_star.z, theta),
                &c,
                self.inner.constraints(),
                &z_star.activity,
                (self.backend.as_ref(), &self.tol),
            )?,
        };
        let grad_theta = self.inner.cross_jvp(&z_star.z, theta, &direction.z_dot);
        let loss = self.loss.value(&z_star.z);
        check_computed("loss", [&loss])?;
        check_computed("z_dot", direction.z_dot.iter())?;
        check_computed("limit gradient", grad_theta.iter())?;
        Ok(LimitDerivative {
            loss,
            z_star,
            direction,
            grad_theta,
        })
    }

    /// Prop. 3: `L^β ≤ L ≤ L^β + β/(2ν)‖ℓ'(z*)‖²` for convex `ℓ` (both loss kinds are) and a
    /// `ν`-strongly convex `E`. `None` when the inner problem does not know `ν`.
    ///
    /// # Errors
    /// As [`Bilevel::surrogate`]; [`Error::Inaccurate`] when the computed band misses the loss
    /// beyond rounding ([`Band::check`]).
    pub fn band(&self, theta: &DVector<f64>, beta: f64) -> Result<Option<Band>> {
        let s = self.surrogate(theta, beta)?;
        let band = self.band_of(&s);
        band.map(|b| b.check()).transpose()?;
        Ok(band)
    }

    /// Prop. 3's band from an already computed Def. 1 surrogate (unchecked: see
    /// [`Band::check`]).
    pub fn band_of(&self, s: &Surrogate) -> Option<Band> {
        let nu = self.inner.strong_convexity()?;
        Some(Band::of(s.value, (&self.loss, &s.z_star.z), s.beta, nu))
    }

    /// `min_z {ℓ_c(z) + E/β} − min_z E/β` evaluated at `ẑ = argmin βℓ_c + E`, with the outer
    /// value at `ẑ` given by `outer(z*, β, f, ẑ)` for `ẑ = z* + βf`, and its θ-gradient (Eq. 5 and
    /// Eq. 10 for `ℓ_c = ℓ`, Eq. 37 for its tangent). Everything comes from the offset
    /// `f = (ẑ − z*)/β` ([`InnerProblem::offset`]), so no `O(β)` quantity is formed by
    /// subtracting two `O(1)` ones.
    fn contrastive(
        &self,
        theta: &DVector<f64>,
        beta: f64,
        z_star: InnerSolution,
        clamped_loss: &Loss,
        outer: impl Fn(&DVector<f64>, f64, &DVector<f64>, &DVector<f64>) -> f64,
    ) -> Result<Surrogate> {
        check_beta(beta)?;
        let off = self.inner.offset(theta, clamped_loss, beta, &z_star)?;
        let value = outer(&z_star.z, beta, &off.rate, &off.z_hat.z) + off.energy_gap;
        check_computed("surrogate value", [&value])?;
        check_computed("surrogate gradient", off.grad_theta_gap.iter())?;
        check_computed("z_hat", off.z_hat.z.iter())?;
        Ok(Surrogate {
            beta,
            z_star,
            z_hat: off.z_hat,
            value,
            grad_theta: off.grad_theta_gap,
            rate: off.rate,
        })
    }
}

impl<P: InnerProblem + Sync> Bilevel<P> {
    /// [`Bilevel::limit`] for a batch of parameters on the same inner problem, on `threads`
    /// threads (contiguous chunks of the batch; `1` runs on the caller's thread). Each item
    /// has its own result with its own diagnostics (status, iterations, residual, branches), so
    /// one failing item does not hide the others; the order is the batch's. A
    /// [`crate::problem::QuadraticProblem`] on its default dense backend factors `Q` and its
    /// rows once for the whole batch (and for later calls), that work cut over the batch's
    /// threads ([`InnerProblem::prepare`]).
    ///
    /// ```
    /// use bilevel::nalgebra::{dmatrix, dvector};
    /// use bilevel::prelude::*;
    ///
    /// let constraints = LinearConstraints { a: dmatrix![1.0, 1.0], b: dvector![1.0], ..LinearConstraints::none(2) };
    /// let layer = QuadraticProblem::new(dmatrix![2.0, 0.0; 0.0, 1.0], dmatrix![1.0; 0.0], dvector![0.0, 0.0], constraints)?;
    /// let program = Bilevel::new(layer, Loss::Linear { g: dvector![1.0, 0.0] })?;
    /// let thetas: Vec<_> = (0..8).map(|i| dvector![i as f64 - 4.0]).collect();
    /// let batch = program.limit_batch(&thetas, 2)?;
    /// for (theta, item) in thetas.iter().zip(&batch) {
    ///     assert_eq!(item.as_ref().unwrap().grad_theta, program.limit(theta)?.grad_theta);
    /// }
    /// # Ok::<(), bilevel::Error>(())
    /// ```
    ///
    /// # Errors
    /// `threads == 0` ([`Error::InvalidInput`]); each item's errors are [`Bilevel::limit`]'s.
    pub fn limit_batch(
        &self,
        thetas: &[DVector<f64>],
        threads: usize,
    ) -> Result<Vec<Result<LimitDerivative>>> {
        if threads == 0 {
            return Err(Error::input("threads", "must be at least 1"));
        }
        self.inner.prepare(threads);
        Ok(map_items(thetas.len(), threads, |i| self.limit(&thetas[i])))
    }
}

/// `f(0), …, f(count − 1)` in order, on up to `threads` threads (contiguous chunks; `1` runs on
/// the caller's thread). The batch loops share it ([`Bilevel::limit_batch`], the Python
/// bindings' batches), so the results never depend on the thread count. A chunk whose thread
/// the system refuses to start (a count beyond its limit) runs on the caller's thread instead.
pub(crate) fn map_items<T: Send>(
    count: usize,
    threads: usize,
    f: impl Fn(usize) -> T + Sync,
) -> Vec<T> {
    let threads = threads.clamp(1, count.max(1));
    if threads == 1 {
        return (0..count).map(f).collect();
    }
    let chunk = count.div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let run =
            move |start: usize| -> Vec<T> { (start..(start + chunk).min(count)).map(f).collect() };
        let handles: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| {
                std::thread::Builder::new()
                    .spawn_scoped(scope, move || run(start))
                    .map_err(|_| start)
            })
            .collect();
        let mut out = Vec::with_capacity(count);
        for h in handles {
            match h {
                // A panic in a worker is a bug, not a user error: re-raise it as it was.
                Ok(h) => out.extend(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))),
                Err(start) => out.extend(run(start)),
            }
        }
        out
    })
}

/// Prop. 3's width `β/(2ν)‖g‖²`, computed without intermediate underflow or overflow wherever
/// the result itself is representable (`‖g‖²` alone underflows for `|g| ≈ 1e-160`, `β/(2ν)`
/// for a subnormal β and a large ν): `‖g‖² = s²‖g/s‖²` with `s = max|g_i|`, and the factors
/// multiplied as binary mantissas and exponents ([`product`]).
fn band_width(beta: f64, nu: f64, g: &DVector<f64>) -> f64 {
    let s = g.amax();
    if s == 0.0 {
        return 0.0;
    }
    product(&[beta, 0.5 / nu, s, s, (g / s).norm_squared()])
}

/// `Π x_i` of positive finite factors, exact up to one rounding per factor, with no
/// intermediate overflow or underflow: each factor is split into a mantissa in `[1, 2)` and a
/// binary exponent, mantissas are multiplied (at most `2^len`), exponents added, and the
/// result is scaled once at the end.
fn product(factors: &[f64]) -> f64 {
    let mut mantissa = 1.0f64;
    let mut exponent = 0i64;
    for &x in factors {
        if x == 0.0 || !x.is_finite() {
            return factors.iter().product();
        }
        // Subnormals first become normal (×2^64), then bits give the exponent.
        let (x, shift) = if x.abs() < f64::MIN_POSITIVE {
            (x * 2f64.powi(64), -64)
        } else {
            (x, 0)
        };
        let e = ((x.to_bits() >> 52) & 0x7ff) as i64 - 1023;
        mantissa *= x * 2f64.powi(-e as i32);
        exponent += e + shift;
    }
    // 2^exponent in at most two steps, each within range where the result is.
    let half = (exponent / 2) as i32;
    mantissa * 2f64.powi(half) * 2f64.powi(exponent as i32 - half)
}

/// Prop. 2: `ż` solves the strictly convex QP of Eq. 17,
/// <div class="math">
///
/// $$ \min_{\dot z} \tfrac12 \dot z^\top A \dot z + c^\top \dot z \quad \text{s.t.} \quad
/// B_i \dot z \ge 0 \;(i \text{ weakly active}), \quad B_i \dot z = 0 \;(i \text{ strongly active}), $$
///
/// </div>
///
/// with `A = ∂²E/∂z²(z*)` (linear constraints have no curvature term), `c = ℓ'(z*)` and `B` the
/// constraint Jacobian; equality constraints count as strongly active, inactive ones are dropped.
/// Without weak constraints this is one KKT solve (Prop. 1 when nothing is active). With weak
/// ones the QP goes to `backend` and is refined exactly ([`solve_exact`]); each weak constraint
/// then reports its branch: [`Branch::Stays`](crate::prox::Branch::Stays) (`B_i ż = 0`) or [`Branch::Leaves`](crate::prox::Branch::Leaves) (`B_i ż > 0`).
pub fn prop2_direction(
    a: &nalgebra::DMatrix<f64>,
    c: &DVector<f64>,
    constraints: &LinearConstraints,
    activity: &[Activity],
    (backend, tol): (&dyn QpBackend, &Tolerances),
) -> Result<Direction> {
    let n = c.len();
    if activity.len() != constraints.m() {
        return Err(Error::dim("activity", constraints.m(), activity.len()));
    }
    let strong: Vec<usize> = (0..activity.len())
        .filter(|&i| activity[i] == Activity::Strong)
        .collect();
    let weak: Vec<usize> = (0..activity.len())
        .filter(|&i| activity[i] == Activity::Weak)
        .collect();
    let eq_rows = vstack(&select_rows(&constraints.a, &strong), &constraints.a_eq);
    let (m, k) = (constraints.m(), constraints.b_eq.len());
    if let (false, Some(chol)) = (weak.is_empty(), a.clone().cholesky()) {
        // The active rows in the metric of A: columns of L⁻¹[A_S; A_eq; A_W]ᵀ (without weak
        // rows the KKT solve below is on the held rows alone and its condition covers them).
        let mut v = vstack(&eq_rows, &select_rows(&constraints.a, &weak)).transpose();
        chol.l_dirty().solve_lower_triangular_mut(&mut v);
        crate::problem::check_active_rows(crate::linalg::independence(&v))?;
    }
    if weak.is_empty() {
        let kkt = solve_kkt(a, &eq_rows, &(-c), &DVector::zeros(eq_rows.nrows()))?;
        let method = if eq_rows.nrows() == 0 {
            DirectionMethod::Prop1
        } else {
            DirectionMethod::Prop2Linear
        };
        // Q ż + ℓ' + [A_S; A_eq]ᵀν = 0: the multipliers are −ν.
        let held = -&kkt.nu;
        let (multipliers, multipliers_eq) =
            scatter_multipliers((m, k), (&[], &DVector::zeros(0)), (&strong, &held));
        return Ok(Direction {
            z_dot: kkt.x,
            branches: vec![None; m],
            multipliers,
            multipliers_eq,
            condition: kkt.condition,
            residual: kkt.residual,
            method,
        });
    }
    let b_weak = select_rows(&constraints.a, &weak);
    let qp = Qp {
        p: a.clone(),
        q: c.clone(),
        a: b_weak,
        b: DVector::zeros(weak.len()),
        a_eq: eq_rows.clone(),
        b_eq: DVector::zeros(eq_rows.nrows()),
    };
    let sol = solve_exact(backend, &qp, tol)?;
    debug_assert_eq!(sol.x.len(), n);
    let method = DirectionMethod::Prop2Qp {
        backend: sol.backend,
    };
    Ok(Direction::from_eq17(sol, (m, k), &weak, &strong, method))
}

/// Forward-mode derivatives of a QP layer.
impl crate::problem::QuadraticProblem {
    /// The Jacobian-vector product `ż = lim_{t→0⁺} (z*(θ + t v) − z*(θ)) / t` of the layer's
    /// solution in a parameter direction `v`: one-sided where a constraint is weakly active
    /// (`jvp(θ, −v) ≠ −jvp(θ, v)` in general), Prop. 2's direction with branches, multiplier
    /// rates, residual and method.
    ///
    /// A step `t v` adds `−t (Bv)ᵀz` to `E(z; θ) = ½zᵀQz − zᵀ(Bθ + c)`, which is Def. 1's
    /// loss-augmented energy with the linear loss `gᵀz`, `g = −Bv`, at `β = t`
    /// ([`QuadraticProblem::jvp_loss`](crate::problem::QuadraticProblem::jvp_loss)): so
    /// `ẑ_β = z*(θ + βv)` and the JVP is Prop. 2's `ż = dẑ_β/dβ|_{β=0⁺}` (Eq. 17) for that `g`.
    ///
    /// ```
    /// use bilevel::nalgebra::{dvector, DMatrix, DVector};
    /// use bilevel::prelude::*;
    ///
    /// // ReLU as a QP: z* = max(θ, 0) (Q = I, B = I, rows z ≥ 0); θ₂ = 0 is a tie.
    /// let eye = DMatrix::identity(2, 2);
    /// let rows = LinearConstraints {
    ///     a: eye.clone(), b: DVector::zeros(2), a_eq: DMatrix::zeros(0, 2), b_eq: DVector::zeros(0),
    /// };
    /// let relu = QuadraticProblem::new(eye.clone(), eye, dvector![0.0, 0.0], rows)?;
    /// let theta = dvector![1.0, 0.0];
    /// assert_eq!(relu.jvp(&theta, &dvector![1.0, 1.0])?.z_dot, dvector![1.0, 1.0]);
    /// assert_eq!(relu.jvp(&theta, &dvector![1.0, -1.0])?.z_dot, dvector![1.0, 0.0]);
    /// # Ok::<(), bilevel::Error>(())
    /// ```
    ///
    /// # Errors
    /// `theta` or `v` of the wrong length or not finite; the inner solve's and the direction
    /// problem's errors ([`Bilevel::limit`]).
    pub fn jvp(&self, theta: &DVector<f64>, v: &DVector<f64>) -> Result<Direction> {
        let program = Bilevel::new(self, self.jvp_loss(v)?)?.with_tolerances(*self.tolerances());
        Ok(program.limit(theta)?.direction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_has_no_intermediate_underflow_or_overflow() {
        // Left to right, 1e-300 · 1e-300 underflows to 0 and 1e300 · 1e300 overflows.
        let p = product(&[1e-300, 1e-300, 1e300, 1e300]);
        assert!((p - 1.0).abs() < 4.0 * f64::EPSILON, "{p}");
        // The smallest subnormal times 2^1074 in two factors: exactly 1.
        assert_eq!(product(&[5e-324, 2f64.powi(1000), 2f64.powi(74)]), 1.0);
        // A subnormal result, and honest underflow / overflow.
        assert_eq!(
            product(&[2f64.powi(-600), 2f64.powi(-470)]),
            2f64.powi(-1070)
        );
        assert_eq!(product(&[1e-200, 1e-200]), 0.0);
        assert_eq!(product(&[1e200, 1e200]), f64::INFINITY);
        assert_eq!(product(&[3.0, 0.0, 1e300]), 0.0);
    }

    #[test]
    fn band_width_survives_tiny_gradients_and_subnormal_beta() {
        // β/(2ν)‖g‖² with ‖g‖² = 4e-320 (underflows alone) and with a subnormal β.
        let w = band_width(2.0, 0.5, &DVector::from_element(4, 1e-160));
        assert!((w / 8e-320 - 1.0).abs() < 1e-12, "{w}");
        let w = band_width(5.4e-312, 1.15e164, &DVector::from_element(1, 1.15e164));
        let exact = 5.4e-312 * 1.15e164 / 2.0; // ν = g, so β g² / (2ν) = β g / 2
        assert!((w / exact - 1.0).abs() < 1e-12, "{w} {exact}");
    }
}
