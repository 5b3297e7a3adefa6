//! The parametric layer of [`crate::problem::QuadraticProblem`] with sparse data:
//! <div class="math">
//!
//! $$ z^\star(\theta) = \arg\min_z \tfrac12 z^\top Q z - z^\top (B\theta + c) \quad \text{s.t.}
//! \quad A z \ge b, \; A_{eq} z = b_{eq}, $$
//!
//! </div>
//!
//! with `Q`, `B`, `A`, `A_eq` as [`Csc`] matrices. Each `θ` is one item of the sparse layer of
//! `sparse.rs` with `p = −(Bθ + c)`, `G = −A`, `h = −b` (the same rows, multipliers and
//! activity as the dense problem's), and the one-sided gradient of `L(θ) = ⟨g, z*(θ)⟩` is
//! Cor. 1's `dL/dθ = −Bᵀ ż` with `ż = ∂L/∂p` from Eq. 17 (Prop. 2, one-sided at weakly active
//! rows). Nothing `n × n` is formed.

use std::sync::OnceLock;

use nalgebra::DVector;

use super::sparse::{
    solve_sparse, SparseOffset, SparseQpData, SparseQpGradients, SparseQpSolution,
};
use super::ItemStatus;
use crate::error::{check_computed, check_finite, Error, Result};
use crate::linalg::{
    csc_from_triplets, min_eigenvalue_lower, negated, on_pattern, sparse_mul as mul,
    sparse_tr_mul as tr_mul, Csc,
};
use crate::problem::{offset_cancels, DirectionMethod, Loss};
use crate::solve::qp::Tolerances;
use crate::surrogate::{map_items, Band};

/// `z*(θ)` of a quadratic layer with sparse data (module docs), the sparse counterpart of
/// [`crate::problem::QuadraticProblem`] for [`solve`](Self::solve), [`vjp`](Self::vjp) and
/// [`jvp`](Self::jvp).
///
/// ```
/// use bilevel::layer::SparseQuadraticLayer;
/// use bilevel::linalg::csc_from_triplets;
/// use nalgebra::dvector;
///
/// // ReLU as a QP, z* = max(θ, 0): Q = B = A = I, c = b = 0.
/// let eye = csc_from_triplets(2, 2, &[(0, 0, 1.0), (1, 1, 1.0)])?;
/// let relu = SparseQuadraticLayer::new(
///     eye.clone(),
///     (eye.clone(), dvector![0.0, 0.0]),
///     (eye, dvector![0.0, 0.0]),
///     None,
///     Default::default(),
/// )?;
/// let theta = dvector![1.0, 0.0];
/// let sol = relu.solve(std::slice::from_ref(&theta), 1).pop().unwrap()?;
/// assert_eq!(sol.z().as_slice(), &[1.0, 0.0]);
/// // Descending ⟨g, z⟩ with g = (2, −3) lifts θ₂: the tied unit leaves its bound.
/// let grad = relu.vjp(&sol, &dvector![2.0, -3.0])?;
/// assert!((grad - dvector![2.0, -3.0]).amax() < 1e-15);
/// # Ok::<(), bilevel::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SparseQuadraticLayer {
    /// The item data with `p` left at zero (set per `θ`), `G = −A`, `h = −b`.
    data: SparseQpData,
    b: Csc,
    c: DVector<f64>,
    tol: Tolerances,
    /// [`SparseQuadraticLayer::strong_convexity`], once computed.
    nu: OnceLock<Option<f64>>,
}

impl SparseQuadraticLayer {
    /// The layer `½zᵀQz − zᵀ(Bθ + c)` s.t. `Az ≥ b` (`ineq`), `A_eq z = b_eq` (`eq`, `None`:
    /// no equalities). `Q` is checked (symmetric positive definite) with the shapes and
    /// finiteness of everything.
    ///
    /// # Errors
    /// [`Error::DimensionMismatch`] naming the argument (`B`, `c`, `A, b`, `A_eq, b_eq`),
    /// [`Error::NonFinite`], [`Error::NotPositiveDefinite`], invalid tolerances.
    pub fn new(
        q: Csc,
        (b, c): (Csc, DVector<f64>),
        (a, lower): (Csc, DVector<f64>),
        eq: Option<(Csc, DVector<f64>)>,
        tol: Tolerances,
    ) -> Result<Self> {
        tol.validate()?;
        let n = q.ncols();
        let (a_eq, b_eq) = match eq {
            Some(eq) => eq,
            None => (csc_from_triplets(0, n, &[])?, DVector::zeros(0)),
        };
        if b.nrows() != n {
            return Err(Error::dim("B (rows)", n, b.nrows()));
        }
        if c.len() != n {
            return Err(Error::dim("c", n, c.len()));
        }
        check_finite("B", b.val().iter())?;
        check_finite("c", c.iter())?;
        let data = SparseQpData {
            q,
            p: DVector::zeros(n),
            g: negated(&a),
            h: -lower,
            a: a_eq,
            b: b_eq,
        };
        data.qp().map_err(rename_rows)?;
        Ok(Self {
            data,
            b,
            c,
            tol,
            nu: OnceLock::new(),
        })
    }

    /// `n`, the dimension of `z`.
    pub fn dim(&self) -> usize {
        self.data.q.ncols()
    }

    /// `p`, the dimension of `θ`.
    pub fn n_params(&self) -> usize {
        self.b.ncols()
    }

    /// The numbers of inequality and equality rows.
    pub fn rows(&self) -> (usize, usize) {
        (self.data.g.nrows(), self.data.a.nrows())
    }

    /// `Q`, `B` and `c`.
    pub fn matrices(&self) -> (&Csc, &Csc, &DVector<f64>) {
        (&self.data.q, &self.b, &self.c)
    }

    /// The layer's item at `θ`: `p = −(Bθ + c)`.
    fn item(&self, theta: &DVector<f64>) -> Result<SparseQpData> {
        if theta.len() != self.n_params() {
            return Err(Error::dim("theta", self.n_params(), theta.len()));
        }
        check_finite("theta", theta.iter())?;
        let mut item = self.data.clone();
        item.p = -(mul(&self.b, theta) + &self.c);
        Ok(item)
    }

    /// `z*(θ)` for every `θ` of `thetas` on up to `threads` threads (results in order,
    /// independent of the count), each kept with its factorization for [`vjp`](Self::vjp). The
    /// multipliers and activity are those of the rows `Az ≥ b` and `A_eq z = b_eq`.
    pub fn solve(&self, thetas: &[DVector<f64>], threads: usize) -> Vec<Result<SparseQpSolution>> {
        map_items(thetas.len(), threads.max(1), |i| self.solve_one(&thetas[i]))
    }

    /// `z*(θ)` for one `θ` on this thread ([`solve`](Self::solve) for a batch).
    ///
    /// # Errors
    /// `theta` of another length than `p`, or not finite; the sparse solve's errors.
    pub fn solve_one(&self, theta: &DVector<f64>) -> Result<SparseQpSolution> {
        let item = self.item(theta)?;
        let mut one = solve_sparse(std::slice::from_ref(&item), 1, self.tol);
        one.pop()
            .unwrap_or_else(|| Err(Error::input("theta", "no item")))
    }

    /// Cor. 1's one-sided `dL/dθ = −Bᵀ ż` of `L(θ) = ⟨g, z*(θ)⟩` at a solution of
    /// [`solve`](Self::solve) (`ż = ∂L/∂p`, Eq. 17; one-sided at weakly active rows, along the
    /// descent direction: not linear in `g` there).
    ///
    /// # Errors
    /// `g` of another length than `n`, or not finite; the rate problem's errors.
    pub fn vjp(&self, solution: &SparseQpSolution, g: &DVector<f64>) -> Result<DVector<f64>> {
        let grads = solution.gradients(g)?;
        Ok(-tr_mul(&self.b, &grads.p))
    }

    /// The one-sided directional derivative of `z*` along `θ + t v`, `t → 0⁺`: a step `t v`
    /// adds `−t (Bv)ᵀz` to the energy, so it is Prop. 2's rate `ż` for the loss gradient
    /// `g = −Bv` (the same Eq. 17 as [`vjp`](Self::vjp)'s, one-sided at weakly active rows).
    ///
    /// # Errors
    /// `v` of another length than `p`, or not finite; the rate problem's errors.
    pub fn jvp(&self, solution: &SparseQpSolution, v: &DVector<f64>) -> Result<DVector<f64>> {
        Ok(solution.gradients(&self.jvp_gradient(v)?)?.p)
    }

    /// The loss gradient `g = −Bv` whose rate is the one-sided directional derivative of `z*`
    /// along `θ + t v` ([`jvp`](Self::jvp); the sparse counterpart of
    /// [`crate::problem::QuadraticProblem::jvp_loss`]).
    ///
    /// # Errors
    /// `v` of another length than `p`, or not finite.
    pub fn jvp_gradient(&self, v: &DVector<f64>) -> Result<DVector<f64>> {
        if v.len() != self.n_params() {
            return Err(Error::dim("v", self.n_params(), v.len()));
        }
        check_finite("v", v.iter())?;
        Ok(-mul(&self.b, v))
    }
}

/// What [`SparseQuadraticLayer::derive`] answers at one `θ`: the limit derivative of the loss
/// (Props. 1-2, Cor. 1; one-sided at weakly active rows) with the gradients of the layer's data
/// in the layer's own convention, each sparse one on its datum's pattern.
#[derive(Debug, Clone)]
pub struct SparseLayerDerivative {
    /// `L(θ) = ℓ(z*(θ))`.
    pub loss: f64,
    /// `ż`, the one-sided rate of Eq. 17 for `g = ℓ'(z*)` (`dẑ_β/dβ` at `β = 0⁺`).
    pub z_dot: DVector<f64>,
    /// Cor. 1's `dL/dθ = −Bᵀż`.
    pub grad_theta: DVector<f64>,
    /// `∂L/∂Q = ½(ż z*ᵀ + z* żᵀ)` at `Q`'s stored entries.
    pub q: Csc,
    /// `∂L/∂B = −ż θᵀ` at `B`'s stored entries.
    pub b: Csc,
    /// `∂L/∂c = −ż`.
    pub c: DVector<f64>,
    /// `∂L/∂A` at `A`'s stored entries (rows `Az ≥ b`).
    pub a: Csc,
    /// `∂L/∂b` (the right-hand side of `Az ≥ b`).
    pub lower: DVector<f64>,
    /// `∂L/∂A_eq` at `A_eq`'s stored entries.
    pub a_eq: Csc,
    /// `∂L/∂b_eq`.
    pub b_eq: DVector<f64>,
    /// The item's status, with the branch each weakly active row took.
    pub status: ItemStatus,
    /// How Eq. 17 was solved.
    pub method: DirectionMethod,
    /// The 2-norm condition estimate of the KKT matrix that determined `ż`
    /// ([`SparseQpSolution::gradients_with_condition`]).
    pub condition: f64,
    /// The larger ∞-norm KKT residual of `z*` and of Eq. 17's rate system (what the dense
    /// derive reports as `residual`).
    pub residual: f64,
}

impl SparseQuadraticLayer {
    /// The limit derivative of `L(θ) = ℓ(z*(θ))` at a solution of [`solve`](Self::solve) for
    /// that `θ` (module docs): `ż` for `g = ℓ'(z*)`, `dL/dθ = −Bᵀż`, and the gradients of
    /// every datum, the sparse ones on their patterns; the item's gradients carry the condition
    /// estimate (which costs up to a few times the gradients; [`vjp`](Self::vjp) skips it).
    /// The data gradients are the item's (`p = −(Bθ + c)`, `G = −A`, `h = −b`) mapped back by
    /// the chain rule: `∂L/∂c = −ż`, `∂L/∂B = −ż θᵀ`, `∂L/∂A = −∂L/∂G`, `∂L/∂b = −∂L/∂h`.
    ///
    /// # Errors
    /// `theta` of another length than `p`, the loss of another length than `n` or not finite;
    /// the rate problem's errors (as [`SparseQpSolution::gradients`]).
    pub fn derive(
        &self,
        solution: &SparseQpSolution,
        theta: &DVector<f64>,
        loss: &Loss,
    ) -> Result<SparseLayerDerivative> {
        if theta.len() != self.n_params() {
            return Err(Error::dim("theta", self.n_params(), theta.len()));
        }
        loss.validate(self.dim())?;
        let z = solution.z();
        let SparseQpGradients {
            q,
            p: z_dot,
            g,
            h,
            a: a_eq,
            b: b_eq,
            status,
            method,
            condition,
            direction_residual,
        } = solution.gradients_with_condition(&loss.gradient(z))?;
        Ok(SparseLayerDerivative {
            loss: loss.value(z),
            grad_theta: -tr_mul(&self.b, &z_dot),
            q,
            b: on_pattern(&self.b, |i, j| -z_dot[i] * theta[j]),
            c: -&z_dot,
            a: negated(&g),
            lower: -h,
            a_eq,
            b_eq,
            z_dot,
            residual: status.residual.max(direction_residual),
            status,
            method,
            condition,
        })
    }
}

/// A finite-β surrogate of `L(θ) = ℓ(z*(θ))` on the sparse layer at one `β > 0`
/// ([`SparseQuadraticLayer::surrogate`], [`SparseQuadraticLayer::linearized`]), every
/// quantity from the offset `f = (ẑ_β − z*)/β` of the sparse offset problem (no `O(β)` value
/// formed by subtracting two `O(1)` ones).
#[derive(Debug, Clone)]
#[must_use]
pub struct SparseSurrogate {
    /// The spacing parameter.
    pub beta: f64,
    /// `ẑ_β` (for Def. 2, of the tangent loss).
    pub z_hat: DVector<f64>,
    /// `L^β(θ)`: Eq. 5 (Def. 1) or Eq. 37 (Def. 2).
    pub value: f64,
    /// Eq. 10's `(1/β) ∂_θ(E(ẑ_β; θ) − E(z*; θ)) = −Bᵀf`.
    pub grad_theta: DVector<f64>,
    /// `f = (ẑ_β − z*)/β`, which tends to `ż` as `β → 0⁺`.
    pub rate: DVector<f64>,
    /// The larger ∞-norm residual of `z*`'s KKT system and of the offset problem's.
    pub residual: f64,
}

/// The centred surrogate gradient `(1/2β) ∂_θ(E(ẑ_β; θ) − E(ẑ_{−β}; θ))` on the sparse layer
/// ([`SparseQuadraticLayer::centered`]).
#[derive(Debug, Clone)]
#[must_use]
pub struct SparseCentered {
    /// The spacing parameter.
    pub beta: f64,
    /// `ẑ_β`.
    pub z_plus: DVector<f64>,
    /// `ẑ_{−β}`.
    pub z_minus: DVector<f64>,
    /// `−Bᵀ(f₊ − f₋)/2` with `f± = (ẑ_{±β} − z*)/β`.
    pub grad_theta: DVector<f64>,
    /// The larger ∞-norm residual of `z*`'s KKT system and of the two offset problems'.
    pub residual: f64,
}

impl SparseQuadraticLayer {
    /// Def. 1's contrastive surrogate at `β > 0` (Eq. 5, its gradient Eq. 10) at a solution of
    /// [`solve`](Self::solve) for that `θ`: `L^β = ℓ(ẑ_β) + (E(ẑ_β) − E(z*))/β` with `ẑ_β`
    /// the minimizer of `βℓ + E`, as the dense layer's [`crate::surrogate::Bilevel::surrogate`].
    /// `ℓ(ẑ_β)` is expanded around `z*` (`ℓ(z*) + βℓ'ᵀf + (β²κ/2)‖f‖²`) unless `z* + βf` has
    /// lost its digits, when `ẑ_β` is solved for directly. Prop. 3's band around it:
    /// [`band`](Self::band).
    ///
    /// # Errors
    /// As [`derive`](Self::derive); [`Error::InvalidBeta`] for `β ≤ 0` or not finite; the
    /// offset problem's errors ([`SparseQpSolution::gradients_in`]).
    pub fn surrogate(
        &self,
        solution: &SparseQpSolution,
        theta: &DVector<f64>,
        (loss, beta): (&Loss, f64),
    ) -> Result<SparseSurrogate> {
        self.check_request(theta, loss, beta)?;
        let z = solution.z();
        let off = solution.offset(&loss.gradient(z), loss.curvature(), beta)?;
        let outer = if offset_cancels(z, beta, &off.rate, &off.z_hat) {
            loss.value(&off.z_hat)
        } else {
            loss.value_offset(z, beta, &off.rate)
        };
        self.finish(solution, beta, off, outer)
    }

    /// Def. 2's linearized surrogate at `β > 0` (Eq. 36-37): [`surrogate`](Self::surrogate)
    /// for the tangent `ℓ̄(z) = ℓ(z*) + ℓ'(z*)ᵀ(z − z*)`, as
    /// [`crate::surrogate::Bilevel::linearized`].
    ///
    /// # Errors
    /// As [`surrogate`](Self::surrogate).
    pub fn linearized(
        &self,
        solution: &SparseQpSolution,
        theta: &DVector<f64>,
        (loss, beta): (&Loss, f64),
    ) -> Result<SparseSurrogate> {
        self.check_request(theta, loss, beta)?;
        let z = solution.z();
        let g = loss.gradient(z);
        let off = solution.offset(&g, 0.0, beta)?;
        let outer = loss.value(z) + beta * g.dot(&off.rate);
        self.finish(solution, beta, off, outer)
    }

    /// The centred surrogate gradient at `±β` ([`SparseCentered`], as
    /// [`crate::surrogate::Bilevel::centered`]). A loss with curvature `κ > 0` needs
    /// `Q − βκI` positive definite (`−βℓ + E` strongly convex), decided by its sparse Cholesky
    /// factorization.
    ///
    /// # Errors
    /// As [`surrogate`](Self::surrogate); [`Error::BetaOutOfRange`] when `Q − βκI` is not
    /// positive definite.
    pub fn centered(
        &self,
        solution: &SparseQpSolution,
        theta: &DVector<f64>,
        (loss, beta): (&Loss, f64),
    ) -> Result<SparseCentered> {
        self.check_request(theta, loss, beta)?;
        let kappa = loss.curvature();
        if kappa > 0.0 {
            let shifted = crate::linalg::shifted_diagonal(&self.data.q, -beta * kappa);
            if crate::linalg::check_sparse_spd("Q - beta L''", &shifted).is_err() {
                return Err(Error::BetaOutOfRange {
                    beta,
                    what: "the centered surrogate".into(),
                    reason: format!(
                        "Q - beta L'' I is not positive definite (L'' = {kappa}), so -beta*loss \
                         + E is not strongly convex"
                    ),
                });
            }
        }
        let g = loss.gradient(solution.z());
        let plus = solution.offset(&g, kappa, beta)?;
        let minus = solution.offset(&g, kappa, -beta)?;
        let rate = (&plus.rate - &minus.rate) / 2.0;
        let out = SparseCentered {
            beta,
            grad_theta: -tr_mul(&self.b, &rate),
            residual: (solution.status().residual)
                .max(plus.residual)
                .max(minus.residual),
            z_plus: plus.z_hat,
            z_minus: minus.z_hat,
        };
        check_computed("surrogate gradient", out.grad_theta.iter())?;
        Ok(out)
    }

    /// The shapes and values every surrogate request needs.
    fn check_request(&self, theta: &DVector<f64>, loss: &Loss, beta: f64) -> Result<()> {
        if theta.len() != self.n_params() {
            return Err(Error::dim("theta", self.n_params(), theta.len()));
        }
        loss.validate(self.dim())?;
        crate::error::check_beta(beta)
    }

    /// A surrogate from its offset and its outer value at `ẑ_β`.
    /// The strong-convexity modulus `ν` of `½zᵀQz` for Prop. 3's band: a certified lower bound
    /// of `λ_min(Q)`, within `1/64` of it above a rounding margin (bisection on sparse Cholesky
    /// factorizations of `Q − νI`), computed once per layer. `None` when `λ_min(Q)` is below
    /// that margin (`2(n + 2)ε tr Q`).
    ///
    /// # Errors
    /// Allocation failures of the factorization.
    pub fn strong_convexity(&self) -> Result<Option<f64>> {
        if let Some(&nu) = self.nu.get() {
            return Ok(nu);
        }
        let nu = min_eigenvalue_lower(&self.data.q)?;
        Ok(*self.nu.get_or_init(|| nu))
    }

    /// Prop. 3's band `L^β ≤ L ≤ L^β + β/(2ν)‖ℓ'(z*)‖²` around a Def. 1 surrogate `surrogate`
    /// (from [`surrogate`](Self::surrogate) at `solution`, for `loss`), as the dense
    /// [`crate::surrogate::Bilevel::band`], with `ν` from
    /// [`strong_convexity`](Self::strong_convexity): a lower bound of `λ_min(Q)` keeps the
    /// theorem true, and its upper term is at most about `1/64` wider than with `λ_min`
    /// itself. `None` when `ν` is.
    ///
    /// # Errors
    /// [`Error::Inaccurate`] when the computed band misses the loss beyond rounding
    /// ([`Band::check`]); [`strong_convexity`](Self::strong_convexity)'s errors.
    pub fn band(
        &self,
        solution: &SparseQpSolution,
        surrogate: &SparseSurrogate,
        loss: &Loss,
    ) -> Result<Option<Band>> {
        let Some(nu) = self.strong_convexity()? else {
            return Ok(None);
        };
        let band = Band::of(surrogate.value, (loss, solution.z()), surrogate.beta, nu);
        band.check()?;
        Ok(Some(band))
    }

    fn finish(
        &self,
        solution: &SparseQpSolution,
        beta: f64,
        off: SparseOffset,
        outer: f64,
    ) -> Result<SparseSurrogate> {
        let out = SparseSurrogate {
            beta,
            value: outer + off.energy_gap,
            grad_theta: -tr_mul(&self.b, &off.rate),
            residual: solution.status().residual.max(off.residual),
            z_hat: off.z_hat,
            rate: off.rate,
        };
        check_computed("surrogate value", [&out.value])?;
        check_computed("surrogate gradient", out.grad_theta.iter())?;
        check_computed("z_hat", out.z_hat.iter())?;
        Ok(out)
    }
}

/// An error of the qpth-convention item renamed to this layer's arguments.
fn rename_rows(e: Error) -> Error {
    let name = |what: &str| match what {
        "G, h" | "G" => "A, b".to_string(),
        "h" => "b".to_string(),
        "A, b" => "A_eq, b_eq".to_string(),
        "A" => "A_eq".to_string(),
        "b" => "b_eq".to_string(),
        other => other.to_string(),
    };
    match e {
        Error::DimensionMismatch {
            what,
            expected,
            found,
        } => Error::DimensionMismatch {
            what: name(&what),
            expected,
            found,
        },
        Error::NonFinite { what } => Error::NonFinite { what: name(&what) },
        other => other,
    }
}
