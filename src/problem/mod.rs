//! The problem side: outer losses `ℓ`, inner energies `E(z; θ)` with linear constraints, and
//! the solutions inner solvers return.
//!
//! A bilevel program (Eq. 2) is `L(θ) = ℓ(z*)`, `z* = argmin_z E(z; θ)`. Everything in
//! [`crate::surrogate`] works through the [`InnerProblem`] trait; three problem classes
//! implement it:
//! * [`QuadraticProblem`]: `E = ½zᵀQz − zᵀ(Bθ + c)` s.t. `Az ≥ b`, `A_eq z = b_eq` (QP backend);
//! * [`ProxProblem`]: `E = ½‖z − (Bθ + c)‖² + F(z)` with `F` from an [`Activation`]
//!   (closed-form proximal maps; Example 1 is the ReLU case);
//! * [`LogCoshProblem`]: a smooth, non-quadratic, unconstrained energy solved with `argmin`.
//!
//! [`Activation`]: crate::prox::Activation

mod logcosh;
mod prox_layer;
mod quadratic;

pub use logcosh::LogCoshProblem;
pub use prox_layer::ProxProblem;
pub use quadratic::{LayerGradients, QuadraticProblem};

use nalgebra::{DMatrix, DVector};

use crate::error::{check_finite, Error, Result};
use crate::prox::Branch;
use crate::solve::qp::Activity;

/// Outer loss `ℓ(z)`. Both kinds are isotropic quadratics,
/// `ℓ(z) = (κ/2)‖z‖² − hᵀz + const`, which is what lets every inner solver absorb `β ℓ`
/// exactly: linear (`κ = 0`, `h = −g`) and squared error (`κ = 1`, `h = t`).
#[derive(Debug, Clone, PartialEq)]
pub enum Loss {
    /// `ℓ(z) = gᵀz` (Example 1).
    Linear {
        /// The gradient `g`.
        g: DVector<f64>,
    },
    /// `ℓ(z) = ½‖z − t‖²`.
    Squared {
        /// The target `t`.
        target: DVector<f64>,
    },
}

impl Loss {
    /// Dimension of `z`.
    pub fn dim(&self) -> usize {
        match self {
            Loss::Linear { g } => g.len(),
            Loss::Squared { target } => target.len(),
        }
    }

    /// Checks finiteness and the dimension `n`.
    pub fn validate(&self, n: usize) -> Result<()> {
        let (name, v) = match self {
            Loss::Linear { g } => ("loss.g", g),
            Loss::Squared { target } => ("loss.target", target),
        };
        if v.len() != n {
            return Err(Error::dim(name, n, v.len()));
        }
        check_finite(name, v.iter())
    }

    /// `ℓ(z)`.
    pub fn value(&self, z: &DVector<f64>) -> f64 {
        match self {
            Loss::Linear { g } => g.dot(z),
            Loss::Squared { target } => 0.5 * (z - target).norm_squared(),
        }
    }

    /// `ℓ'(z)`.
    pub fn gradient(&self, z: &DVector<f64>) -> DVector<f64> {
        match self {
            Loss::Linear { g } => g.clone(),
            Loss::Squared { target } => z - target,
        }
    }

    /// `κ`: the Hessian is `κ I`, and `κ` is the Lipschitz constant `L''` of `ℓ'`.
    pub fn curvature(&self) -> f64 {
        match self {
            Loss::Linear { .. } => 0.0,
            Loss::Squared { .. } => 1.0,
        }
    }

    /// `h` in `ℓ(z) = (κ/2)‖z‖² − hᵀz + const`.
    pub fn linear_term(&self) -> DVector<f64> {
        match self {
            Loss::Linear { g } => -g,
            Loss::Squared { target } => target.clone(),
        }
    }

    /// `ℓ(z + s·f)` from `ℓ(z)` and the offset, `ℓ(z) + s ℓ'(z)ᵀf + (κ/2) s² ‖f‖²` (exact for
    /// both kinds). Keeps the `O(s)` change of the value when `s·f` is below the rounding of `z`.
    pub fn value_offset(&self, z: &DVector<f64>, s: f64, f: &DVector<f64>) -> f64 {
        let first = self.gradient(z).dot(f);
        // `s` multiplies last: halving a subnormal `s` first would round away its last bit.
        self.value(z) + s * (first + s * (0.5 * self.curvature() * f.norm_squared()))
    }

    /// The tangent `ℓ̄(z; z*) = ℓ(z*) + (z − z*)ᵀℓ'(z*)` of Eq. 36, as a linear loss (the
    /// constant is dropped; add `ℓ(z*) − z*ᵀℓ'(z*)` to values).
    pub fn tangent(&self, z_star: &DVector<f64>) -> Loss {
        Loss::Linear {
            g: self.gradient(z_star),
        }
    }
}

/// Validates an affine parametrization `u(θ) = Bθ + c` of `n` variables (fields `B`, `c`).
pub(crate) fn check_affine(n: usize, b: &DMatrix<f64>, c: &DVector<f64>) -> Result<()> {
    if n == 0 {
        return Err(Error::input(
            "c",
            "the problem has no variables (n = 0); an inner problem needs at least one",
        ));
    }
    if b.nrows() != n {
        return Err(Error::dim("B (rows)", n, b.nrows()));
    }
    if c.len() != n {
        return Err(Error::dim("c", n, c.len()));
    }
    check_finite("B", b.iter())?;
    check_finite("c", c.iter())
}

/// The checks every `solve(θ, ℓ, β)` starts with: `θ` and `ℓ` well formed, `β` finite, and
/// `βℓ + E` still strongly convex (`βκ > −ν`, which matters for the negative β of the centered
/// surrogate).
pub(crate) fn check_augmented<P: InnerProblem + ?Sized>(
    p: &P,
    theta: &DVector<f64>,
    loss: &Loss,
    beta: f64,
) -> Result<()> {
    p.check_theta(theta)?;
    loss.validate(p.dim())?;
    if !beta.is_finite() {
        return Err(Error::InvalidBeta { beta });
    }
    let kappa = beta * loss.curvature();
    // Only a negative κ can break convexity (and only then is ν worth computing).
    let nu = if kappa < 0.0 {
        p.strong_convexity()
    } else {
        None
    };
    if let Some(nu) = nu.filter(|nu| kappa <= -nu) {
        return Err(Error::Unbounded(format!(
            "beta * loss curvature = {kappa} makes beta*loss + E non-convex (nu = {nu})"
        )));
    }
    Ok(())
}

/// The checks every `offset(θ, ℓ, β, z*)` starts with: those of a loss-augmented solve
/// ([`check_augmented`]), β non-zero (its sign selects `ẑ_β` or `ẑ_{−|β|}`), and `z*` shaped
/// like a solution of `p` (point, multipliers and activity of the right lengths).
pub(crate) fn check_offset<P: InnerProblem + ?Sized>(
    p: &P,
    theta: &DVector<f64>,
    loss: &Loss,
    beta: f64,
    z_star: &InnerSolution,
) -> Result<()> {
    check_augmented(p, theta, loss, beta)?;
    if beta == 0.0 {
        return Err(Error::InvalidBeta { beta });
    }
    let (n, m) = (p.dim(), p.constraints().m());
    if z_star.z.len() != n {
        return Err(Error::dim("z_star", n, z_star.z.len()));
    }
    if z_star.multipliers.len() != m || z_star.activity.len() != m {
        return Err(Error::dim(
            "z_star multipliers",
            m,
            z_star.multipliers.len(),
        ));
    }
    Ok(())
}

/// The rows of a variable's lower and upper bound in [`LinearConstraints::boxes`] (`None`: no
/// such bound).
pub type BoundRows = (Option<usize>, Option<usize>);

/// Linear constraints `A z ≥ b`, `A_eq z = b_eq` that do not depend on `θ`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearConstraints {
    /// Inequality rows, `m × n`.
    pub a: DMatrix<f64>,
    /// Inequality right-hand side.
    pub b: DVector<f64>,
    /// Equality rows, `k × n`.
    pub a_eq: DMatrix<f64>,
    /// Equality right-hand side.
    pub b_eq: DVector<f64>,
}

impl LinearConstraints {
    /// No constraints on `n` variables.
    pub fn none(n: usize) -> Self {
        Self {
            a: DMatrix::zeros(0, n),
            b: DVector::zeros(0),
            a_eq: DMatrix::zeros(0, n),
            b_eq: DVector::zeros(0),
        }
    }

    /// Constraints from optional parts, as the front ends receive them (`bilevel derive`, the
    /// Python bindings): `A` with `b`, `A_eq` with `b_eq`, each pair both or neither; a missing
    /// pair gives no rows on `n` variables. Shapes are checked by [`LinearConstraints::validate`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the missing half of a pair (`b`, `A`, `b_eq`, `A_eq`).
    pub fn from_parts(
        n: usize,
        (a, b): (Option<DMatrix<f64>>, Option<DVector<f64>>),
        (a_eq, b_eq): (Option<DMatrix<f64>>, Option<DVector<f64>>),
    ) -> Result<Self> {
        fn pair(
            (mname, m): (&str, Option<DMatrix<f64>>),
            (vname, v): (&str, Option<DVector<f64>>),
            n: usize,
        ) -> Result<(DMatrix<f64>, DVector<f64>)> {
            match (m, v) {
                (None, None) => Ok((DMatrix::zeros(0, n), DVector::zeros(0))),
                (Some(_), None) => Err(Error::input(
                    vname,
                    format!("missing (required with {mname})"),
                )),
                (None, Some(_)) => Err(Error::input(
                    mname,
                    format!("missing (required with {vname})"),
                )),
                (Some(m), Some(v)) => Ok((m, v)),
            }
        }
        let (a, b) = pair(("A", a), ("b", b), n)?;
        let (a_eq, b_eq) = pair(("A_eq", a_eq), ("b_eq", b_eq), n)?;
        Ok(Self { a, b, a_eq, b_eq })
    }

    /// The box `lo_j ≤ z_j ≤ hi_j` as rows `z_j ≥ lo_j` and `−z_j ≥ −hi_j` (infinite ends give
    /// no row): first every finite lower bound in variable order, then every finite upper bound.
    /// Also returns, per variable, the indices of its lower and upper rows.
    pub fn boxes(bounds: &[(f64, f64)]) -> (Self, Vec<BoundRows>) {
        let n = bounds.len();
        let mut rows = vec![(None, None); n];
        let mut entries: Vec<(usize, f64, f64)> = Vec::new(); // (variable, coefficient, rhs)
        for (j, &(lo, _)) in bounds.iter().enumerate() {
            if lo.is_finite() {
                rows[j].0 = Some(entries.len());
                entries.push((j, 1.0, lo));
            }
        }
        for (j, &(_, hi)) in bounds.iter().enumerate() {
            if hi.is_finite() {
                rows[j].1 = Some(entries.len());
                entries.push((j, -1.0, -hi));
            }
        }
        let mut a = DMatrix::zeros(entries.len(), n);
        let mut b = DVector::zeros(entries.len());
        for (i, &(j, coef, rhs)) in entries.iter().enumerate() {
            a[(i, j)] = coef;
            b[i] = rhs;
        }
        let constraints = Self {
            a,
            b,
            ..Self::none(n)
        };
        (constraints, rows)
    }

    /// Number of inequalities.
    pub fn m(&self) -> usize {
        self.b.len()
    }

    /// Checks shapes against `n` variables and finiteness, naming the fields `A`, `b`, `A_eq`,
    /// `b_eq`.
    pub fn validate(&self, n: usize) -> Result<()> {
        if self.a.ncols() != n {
            return Err(Error::dim("A (columns)", n, self.a.ncols()));
        }
        if self.a.nrows() != self.b.len() {
            return Err(Error::dim("b", self.a.nrows(), self.b.len()));
        }
        if self.a_eq.ncols() != n {
            return Err(Error::dim("A_eq (columns)", n, self.a_eq.ncols()));
        }
        if self.a_eq.nrows() != self.b_eq.len() {
            return Err(Error::dim("b_eq", self.a_eq.nrows(), self.b_eq.len()));
        }
        check_finite("A", self.a.iter())?;
        check_finite("b", self.b.iter())?;
        check_finite("A_eq", self.a_eq.iter())?;
        check_finite("b_eq", self.b_eq.iter())
    }
}

/// How an inner solve went.
#[derive(Debug, Clone, PartialEq)]
pub struct SolveStatus {
    /// Which solver ran (`"closed form"`, `"dense active set"`, `"clarabel"`, `"osqp"`,
    /// `"argmin L-BFGS + Newton"`).
    pub solver: &'static str,
    /// Iterations (0 for closed forms).
    pub iterations: usize,
    /// ∞-norm of the KKT residual at the returned point.
    pub residual: f64,
    /// Inequalities active at the solution whose rows are linearly dependent on the rows the
    /// exact solve kept (LICQ fails there: duplicated or zero rows). The solution is still
    /// unique; their multipliers are reported as 0, one independent row carrying the force.
    pub dependent: Vec<usize>,
    /// Equality rows that are combinations of the others with consistent right-hand sides
    /// (duplicated or rank-deficient `A_eq`): left out, multipliers 0.
    pub dependent_eq: Vec<usize>,
}

/// A solution of `argmin_z β ℓ(z) + E(z; θ)` with multipliers and diagnostics.
#[derive(Debug, Clone)]
#[must_use]
pub struct InnerSolution {
    /// The minimizer.
    pub z: DVector<f64>,
    /// Inequality multipliers `λ ≥ 0` (input order; empty without inequalities).
    pub multipliers: DVector<f64>,
    /// Equality multipliers.
    pub multipliers_eq: DVector<f64>,
    /// Classification of each inequality at `z`.
    pub activity: Vec<Activity>,
    /// Solver, iterations and residual.
    pub status: SolveStatus,
}

/// The loss-augmented solution `ẑ_β = argmin_z βℓ(z) + E(z; θ)` (Eq. 6) told by its offset from
/// `z*`, with the two differences Def. 1 needs, all divided by `|β|`:
/// <div class="math">
///
/// $$ f = \frac{\hat z_\beta - z^\star}{|\beta|}, \qquad \frac{E(\hat z_\beta; \theta) - E(z^\star; \theta)}{|\beta|}, \qquad
/// \frac{\partial_\theta E(\hat z_\beta; \theta) - \partial_\theta E(z^\star; \theta)}{|\beta|}. $$
///
/// </div>
///
/// Solving for the offset directly (its data are `O(1)` however small β is) keeps every digit
/// that subtracting two separately solved points would cancel: Eq. 5 and Eq. 10 divide an
/// `O(β)` difference by β, so `ẑ_β − z*` formed in floating point loses `log₁₀(1/β)` digits.
/// As `β → 0⁺`, `f → ż` (Props. 1-2).
#[derive(Debug, Clone)]
#[must_use]
pub struct Offset {
    /// `ẑ_β` (equal to `z* + |β| f` up to rounding), with its multipliers and status,
    /// accurate to its own magnitude: where `z* + |β| f` cancels it is
    /// solved for directly.
    pub z_hat: InnerSolution,
    /// `f = (ẑ_β − z*)/|β|`.
    pub rate: DVector<f64>,
    /// `(E(ẑ_β; θ) − E(z*; θ))/|β|`.
    pub energy_gap: f64,
    /// `(∂_θE(ẑ_β; θ) − ∂_θE(z*; θ))/|β|`.
    pub grad_theta_gap: DVector<f64>,
    /// `(λ̂_β − λ*)/|β|` of each inequality (the multipliers' rate, like `rate` for `z`).
    pub multiplier_rate: DVector<f64>,
    /// `(λ̂_{eq,β} − λ*_eq)/|β|`.
    pub multiplier_rate_eq: DVector<f64>,
}

/// `ẑ = z* + s f` loses more than four digits to cancellation (`‖z*‖∞ + s‖f‖∞ > 10⁴ ‖ẑ‖∞`,
/// as when `|z*| ≈ 1e20` and `|ẑ_β| ≈ 1`): then `ẑ_β` is solved for directly, and values at
/// `ẑ_β` are evaluated there rather than expanded around `z*` (issue 25, item 5).
pub(crate) fn offset_cancels(
    z_star: &DVector<f64>,
    s: f64,
    f: &DVector<f64>,
    z_hat: &DVector<f64>,
) -> bool {
    z_star.amax() + s * f.amax() > 1e4 * z_hat.amax()
}

/// A limit derivative `ż = dẑ_β/dβ |_{β=0⁺}` with everything needed to trust it.
#[derive(Debug, Clone)]
#[must_use]
pub struct Direction {
    /// `ż`.
    pub z_dot: DVector<f64>,
    /// Branch taken by each weakly active inequality (`None` for the others).
    pub branches: Vec<Option<Branch>>,
    /// `μ_i = d λ̂_i/dβ |_{β=0⁺}` of each inequality of [`InnerProblem::constraints`] (the
    /// multipliers of Eq. 17, in the sign convention of [`InnerSolution::multipliers`]; `0`
    /// for inactive rows, `≥ 0` for weakly active ones). With `ż` they give the gradients with
    /// respect to the constraint data ([`crate::problem::QuadraticProblem::data_gradients`]).
    pub multipliers: DVector<f64>,
    /// `μ_eq = d λ̂_eq/dβ |_{β=0⁺}` of the equality rows.
    pub multipliers_eq: DVector<f64>,
    /// Condition estimate of the reduced system that determined `ż`; `NaN` when the problem
    /// was built without condition estimates
    /// ([`crate::problem::QuadraticProblem::without_condition_estimates`], as the batched
    /// layers of [`crate::layer`] do: the estimate costs more than the direction itself).
    pub condition: f64,
    /// ∞-norm KKT residual of the direction problem (Eq. 17).
    pub residual: f64,
    /// Which result produced it.
    pub method: DirectionMethod,
}

/// The result (and computation) a [`Direction`] comes from. `Display` gives the name the
/// `derive` JSON reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum DirectionMethod {
    /// No active constraint: Prop. 1, `ż = −(∇²_z E)⁻¹ ℓ'(z*)`, one linear solve.
    Prop1,
    /// Active constraints, none weakly active: Prop. 2's Eq. 17 reduces to one KKT solve on the
    /// strongly active rows.
    Prop2Linear,
    /// Weakly active constraints: Eq. 17 as a QP, solved by the backend and refined exactly.
    Prop2Qp {
        /// The QP backend.
        backend: &'static str,
    },
    /// A proximal layer with no unit on a bound: Prop. 1 in closed form.
    Prop1ClosedForm,
    /// A box layer (ReLU, hard sigmoid, hard tanh, box): Prop. 2 in closed form per unit.
    BoxClosedForm,
    /// A softmax layer: Prop. 2 in closed form on the simplex.
    SimplexClosedForm,
    /// Not the limit: Def. 1's finite-`β` rates `(ẑ_β − z*)/|β|`, from the offset problem
    /// ([`crate::solve::qp::OffsetQp`]) solved by its active-set iteration.
    Offset,
}

impl std::fmt::Display for DirectionMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirectionMethod::Prop1 => write!(f, "Prop. 1"),
            DirectionMethod::Prop2Linear => {
                write!(f, "Prop. 2 (no weakly active constraint: one KKT solve)")
            }
            DirectionMethod::Prop2Qp { backend } => {
                write!(f, "Prop. 2 QP ({backend}) + exact KKT")
            }
            DirectionMethod::Prop1ClosedForm => write!(f, "Prop. 1 closed form"),
            DirectionMethod::BoxClosedForm => write!(f, "Prop. 2 closed form (box)"),
            DirectionMethod::SimplexClosedForm => write!(f, "Prop. 2 closed form (simplex)"),
            DirectionMethod::Offset => write!(f, "Def. 1 offset problem (finite beta)"),
        }
    }
}

/// An inner problem `min_z E(z; θ)` with linear constraints independent of `θ`.
///
/// Requirements: `E(·; θ)` strictly convex with a twice differentiable smooth part, so the
/// minimizer is unique (Eq. 2) and Props. 1-2 apply.
pub trait InnerProblem {
    /// Dimension of `z`.
    fn dim(&self) -> usize;
    /// Dimension of `θ`.
    fn n_params(&self) -> usize;
    /// `E(z; θ)` (the smooth part; constraints are separate).
    fn energy(&self, z: &DVector<f64>, theta: &DVector<f64>) -> f64;
    /// `∂_θ E(z; θ)`.
    fn grad_theta(&self, z: &DVector<f64>, theta: &DVector<f64>) -> DVector<f64>;
    /// `(∂²E/∂θ∂z) dz`, the mixed second derivative applied to `dz` (Eq. 9, Eq. 19).
    fn cross_jvp(&self, z: &DVector<f64>, theta: &DVector<f64>, dz: &DVector<f64>) -> DVector<f64>;
    /// `∂²E/∂z²` at `z` (the matrix `A` of Eq. 15 for linear constraints).
    fn hessian(&self, z: &DVector<f64>, theta: &DVector<f64>) -> DMatrix<f64>;
    /// The constraints.
    fn constraints(&self) -> &LinearConstraints;
    /// A strong-convexity modulus `ν > 0` of `E(·; θ)` valid for every `θ`, if known (Prop. 3).
    fn strong_convexity(&self) -> Option<f64>;
    /// `argmin_z β ℓ(z) + E(z; θ)` (Eq. 6). `β = 0` gives `z*`; negative `β` is used by the
    /// centered surrogate and requires `E − |β| ℓ` to stay strongly convex (callers check).
    fn solve(&self, theta: &DVector<f64>, loss: &Loss, beta: f64) -> Result<InnerSolution>;
    /// A closed-form limit derivative, when the problem has one (separable layers). `None`
    /// means: use the generic Prop. 2 QP.
    fn closed_form_direction(
        &self,
        _theta: &DVector<f64>,
        _z_star: &InnerSolution,
        _c: &DVector<f64>,
    ) -> Option<Result<Direction>> {
        None
    }

    /// `ẑ_β` and its offset from `z*` ([`Offset`]); `β` may be negative (the centered
    /// surrogate), `z_star` must be this problem's solution at the same `θ` and `β = 0`.
    ///
    /// The default solves for `ẑ_β` and subtracts, which loses `log₁₀(1/|β|)` digits to
    /// cancellation; the problem classes of this crate override it with an offset solve that is
    /// exact to rounding for every `β` (see each implementation).
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
        Ok(Offset {
            rate: (&z_hat.z - &z_star.z) / s,
            energy_gap: (self.energy(&z_hat.z, theta) - self.energy(&z_star.z, theta)) / s,
            grad_theta_gap: (self.grad_theta(&z_hat.z, theta) - self.grad_theta(&z_star.z, theta))
                / s,
            multiplier_rate: (&z_hat.multipliers - &z_star.multipliers) / s,
            multiplier_rate_eq: (&z_hat.multipliers_eq - &z_star.multipliers_eq) / s,
            z_hat,
        })
    }

    /// Computes now what the solves of every `θ` share (the dense QP layer: its
    /// factorization), cutting that work over up to `threads` threads where it pays; the
    /// batches (`Bilevel::limit_batch`, the layer batches, the Python bindings) call it before
    /// their items. No answer depends on it or on `threads`. The default does nothing.
    fn prepare(&self, _threads: usize) {}

    /// Checks the length and finiteness of `θ`.
    fn check_theta(&self, theta: &DVector<f64>) -> Result<()> {
        if theta.len() != self.n_params() {
            return Err(Error::dim("theta", self.n_params(), theta.len()));
        }
        check_finite("theta", theta.iter())
    }
}

/// A borrowed inner problem is one too: `Bilevel::new(&layer, loss)` pairs a layer with a loss
/// without copying its data or its stored factorization, so one layer serves many losses
/// (`bilevel derive`, the Python bindings).
impl<P: InnerProblem> InnerProblem for &P {
    fn dim(&self) -> usize {
        (**self).dim()
    }
    fn n_params(&self) -> usize {
        (**self).n_params()
    }
    fn energy(&self, z: &DVector<f64>, theta: &DVector<f64>) -> f64 {
        (**self).energy(z, theta)
    }
    fn grad_theta(&self, z: &DVector<f64>, theta: &DVector<f64>) -> DVector<f64> {
        (**self).grad_theta(z, theta)
    }
    fn cross_jvp(&self, z: &DVector<f64>, theta: &DVector<f64>, dz: &DVector<f64>) -> DVector<f64> {
        (**self).cross_jvp(z, theta, dz)
    }
    fn hessian(&self, z: &DVector<f64>, theta: &DVector<f64>) -> DMatrix<f64> {
        (**self).hessian(z, theta)
    }
    fn constraints(&self) -> &LinearConstraints {
        (**self).constraints()
    }
    fn strong_convexity(&self) -> Option<f64> {
        (**self).strong_convexity()
    }
    fn prepare(&self, threads: usize) {
        (**self).prepare(threads)
    }
    fn solve(&self, theta: &DVector<f64>, loss: &Loss, beta: f64) -> Result<InnerSolution> {
        (**self).solve(theta, loss, beta)
    }
    fn closed_form_direction(
        &self,
        theta: &DVector<f64>,
        z_star: &InnerSolution,
        c: &DVector<f64>,
    ) -> Option<Result<Direction>> {
        (**self).closed_form_direction(theta, z_star, c)
    }
    fn offset(
        &self,
        theta: &DVector<f64>,
        loss: &Loss,
        beta: f64,
        z_star: &InnerSolution,
    ) -> Result<Offset> {
        (**self).offset(theta, loss, beta, z_star)
    }
    fn check_theta(&self, theta: &DVector<f64>) -> Result<()> {
        (**self).check_theta(theta)
    }
}

/// Below this sine of the angle between a row active at `z*` and the span of the other
/// active rows (in the metric of `∂²E/∂z²`, [`crate::linalg::independence`]; rows within
/// `1e-10` of the span are duplicates and left out), Prop. 2's derivative is not resolved in
/// `f64`: the KKT matrix of the active rows has a condition number of about `1e12` or more
/// (a margin below `1e14`, where [`crate::linalg::solve_kkt`] calls a system singular, so that
/// one answer, this one, is given), and which of the nearly
/// parallel rows carries the multiplier — and so the derivative — is decided by digits `f64`
/// does not have (issue 25: two rows 1.3e-8 apart gave a rate 98× off, with a condition
/// estimate of 4 for the rows the solve kept).
pub(crate) const RESOLVED_SINE: f64 = 1e-6;

/// [`Error::Inaccurate`] when the rows active at `z*` are nearly, but not exactly, dependent
/// (their [`crate::linalg::independence`] `sine` below [`RESOLVED_SINE`]).
pub(crate) fn check_active_rows(sine: f64) -> Result<()> {
    if sine >= RESOLVED_SINE {
        return Ok(());
    }
    Err(Error::Inaccurate {
        what: format!(
            "the derivative at z* (the active constraints are nearly, not exactly, linearly \
             dependent: the sine of the smallest angle between one and the span of the others \
             is {sine:.1e} < {RESOLVED_SINE:.0e}, so which of them carries the multiplier is \
             decided by digits f64 does not have)"
        ),
        residual: sine,
    })
}

impl Direction {
    /// The direction from an exact solve of Eq. 17 as a QP whose inequality rows are the
    /// weakly active rows `weak` and whose equality rows are the strongly active `strong`, then
    /// the `k` equalities, of an inner problem with `m` inequalities: a weak row `Stays` when it
    /// is held (or its slack is not positive), else it `Leaves`; the multipliers go back to the
    /// inner problem's rows ([`Direction::multipliers`]).
    pub(crate) fn from_eq17(
        sol: crate::solve::qp::ExactQp,
        (m, k): (usize, usize),
        weak: &[usize],
        strong: &[usize],
        method: DirectionMethod,
    ) -> Self {
        let mut branches = vec![None; m];
        for (r, &i) in weak.iter().enumerate() {
            // A row set aside as dependent on the held ones stays with them (its slack is
            // zero but for rounding).
            let held = sol.working[r] || sol.dependent.contains(&r);
            branches[i] = Some(if held || sol.slack[r] <= 0.0 {
                Branch::Stays
            } else {
                Branch::Leaves
            });
        }
        let (multipliers, multipliers_eq) =
            scatter_multipliers((m, k), (weak, &sol.lambda), (strong, &sol.lambda_eq));
        Direction {
            z_dot: sol.x,
            branches,
            multipliers,
            multipliers_eq,
            condition: sol.condition,
            residual: sol.residual,
            method,
        }
    }
}

/// Eq. 17's multipliers back on the inner problem's rows: `weak_mu` of the weakly active rows
/// `weak`, and `held_mu` of the held rows (the strongly active `strong`, then the `k`
/// equalities); inactive rows get `0`.
pub(crate) fn scatter_multipliers(
    (m, k): (usize, usize),
    (weak, weak_mu): (&[usize], &DVector<f64>),
    (strong, held_mu): (&[usize], &DVector<f64>),
) -> (DVector<f64>, DVector<f64>) {
    let mut mu = DVector::zeros(m);
    for (r, &i) in weak.iter().enumerate() {
        mu[i] = weak_mu[r];
    }
    for (r, &i) in strong.iter().enumerate() {
        mu[i] = held_mu[r];
    }
    let mu_eq = held_mu.rows(strong.len(), k).into_owned();
    (mu, mu_eq)
}
