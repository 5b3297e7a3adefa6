//! # Section 2: the contrastive surrogate and its exact limits
//!
//! A bilevel program is a loss of the solution of an inner minimization (Eq. 2),
//!
//! <div class="math">
//! $$ \mathcal L(\theta) = \ell(z^\star), \qquad z^\star = \arg\min_z E(z; \theta). $$
//! </div>
//!
//! **Def. 1, the contrastive surrogate.** Relax the optimal-value reformulation with a fixed
//! multiplier `1/β` (Eq. 5-6):
//!
//! <div class="math">
//! $$ \mathcal L^\beta(\theta) = \min_z \Big\{ \ell(z) + \tfrac1\beta E(z;\theta) \Big\} - \min_z \tfrac1\beta E(z;\theta)
//!    = \ell(\hat z_\beta) + \frac{E(\hat z_\beta;\theta) - E(z^\star;\theta)}{\beta}, $$
//! $$ \hat z_\beta = \arg\min_z \beta\,\ell(z) + E(z;\theta). $$
//! </div>
//!
//! Its gradient needs no derivative of either minimizer (Eq. 10): two solves, a *clamped* one
//! (`ẑ_β`) and a *free* one (`z*`), and the partial derivatives of `E` at both,
//!
//! <div class="math">
//! $$ \nabla_\theta \mathcal L^\beta(\theta) = \frac1\beta\, \partial_\theta \big( E(\hat z_\beta;\theta) - E(z^\star;\theta) \big). $$
//! </div>
//!
//! **Prop. 1, the smooth limit.** For `ℓ` differentiable and `E` twice continuously
//! differentiable, `β → 0⁺` gives implicit differentiation back (Eq. 7, 9):
//!
//! <div class="math">
//! $$ \frac{d\hat z_\beta}{d\beta}\Big|_{\beta=0} = -\big(\partial_z^2 E(z^\star;\theta)\big)^{-1} \ell'(z^\star),
//!    \qquad \frac{d\mathcal L}{d\theta} = \lim_{\beta\to0^+} \frac1\beta\, \partial_\theta\big(E(\hat z_\beta;\theta) - E(z^\star;\theta)\big). $$
//! </div>
//!
//! **Example 1, a ReLU at its kink.** With `E(z; θ) = ½‖z − θx‖² + ι_{≥0}(z)` and `ℓ(z) = gᵀz`,
//! `z* = [θx]₊` and `ẑ_β = [θx − βg]₊`, so the limit is one-sided (Eq. 11-12):
//!
//! <div class="math">
//! $$ \frac{d\hat z_\beta}{d\beta}\Big|_{\beta=0^+} = D g, \qquad
//!    D_{jj} = \begin{cases} -1 & (\theta x)_j > 0 \ \text{ or } \ (\theta x)_j = 0,\ g_j \ge 0, \\
//!    \phantom{-}0 & (\theta x)_j < 0 \ \text{ or } \ (\theta x)_j = 0,\ g_j < 0. \end{cases} $$
//! </div>
//!
//! At `(θx)_j = 0` back-propagation and implicit differentiation have no derivative; this one
//! exists and is the one a descent step needs: it asks whether `−g` would lift the unit off its
//! bound.
//!
//! **Prop. 2, constrained layers.** For `E = f(z; θ)` subject to `g_i(z) ≥ 0`, with `W*` the
//! *weakly active* constraints (active with a zero multiplier), `ż = dẑ_β/dβ|₀₊` is the unique
//! solution of a small strictly convex QP (Eq. 15-17):
//!
//! <div class="math">
//! $$ \dot z = \arg\min_{\dot z}\ \tfrac12 \dot z^\top \mathbf A \dot z + \mathbf c^\top \dot z
//!    \quad \text{s.t.} \quad \mathbf B_{i,:}\dot z \ge 0 \ (i \in \mathcal W^\star), \quad
//!    \mathbf B_{i,:}\dot z = 0 \ (i \text{ strongly active}), $$
//! $$ \mathbf c = \ell'(z^\star), \qquad \mathbf A = \partial_z^2 f(z^\star;\theta) + \textstyle\sum_i \lambda_i^\star\, \partial_z^2 g_i(z^\star), \qquad \mathbf B = \partial_z \mathbf g(z^\star). $$
//! </div>
//!
//! With `f` differentiable in `θ`, Cor. 1 turns `ż` into the gradient,
//! `∂_θ lim L^β = ∂_θ f(z*; θ) · ż` (Eq. 19). `bilevel` returns `ż`, the gradient, and for each
//! weakly active constraint the branch it took (`B_i ż > 0`: it leaves its bound; `= 0`: it stays).
//!
//! **Prop. 3, the band.** For `ℓ` convex and `E(·; θ)` `ν`-strongly convex, the surrogate is a
//! lower bound within a band of width `O(β)` for every `β > 0` (Eq. 20):
//!
//! <div class="math">
//! $$ \mathcal L^\beta(\theta) \;\le\; \mathcal L(\theta) \;\le\; \mathcal L^\beta(\theta) + \frac{\beta}{2\nu}\, \|\partial\ell(z^\star)\|^2. $$
//! </div>
//!
//! **Def. 2, the linearized surrogate.** Replace `ℓ` by its tangent at `z*`,
//! `ℓ̄(z; z*) = ℓ(z*) + (z − z*)ᵀℓ'(z*)` (Eq. 36-37); Props. 1-2 hold unchanged, and it is the
//! building block of Fenchel back-propagation (Section 4, [`nested`](super::nested)):
//!
//! <div class="math">
//! $$ \bar{\mathcal L}^\beta(\theta) = \min_z \Big\{ \bar\ell(z; z^\star) + \tfrac1\beta E(z;\theta) \Big\} - \min_z \tfrac1\beta E(z;\theta). $$
//! </div>
//!
//! What the crate gives today (Section 2 of the paper):
//!
//! * inner solvers: closed-form proximal maps (identity, ReLU, hard sigmoid, hard tanh, box,
//!   softmax via negative entropy), a QP layer on a **dense dual active-set method** that keeps
//!   its factorization of `Q` and the constraint rows (default: `solve::dense`; the layer's
//!   solves, Prop. 2's direction problem and `Bilevel::limit_batch` all reuse it), or on
//!   **Clarabel** (pure Rust) or **OSQP** (`--features osqp`, needs `cmake`), all refined by an
//!   exact active-set KKT solve, and
//!   `argmin` (L-BFGS, then Newton) for smooth energies;
//! * Def. 1 and Def. 2 (linearized, Eq. 36-37) surrogates with values and gradients, the exact
//!   limits of Props. 1-2 and Cor. 1, a centered surrogate with `O(β²)` bias, and Prop. 3's band.
//!   They are computed from the offset `(ẑ_β − z*)/β`, solved for directly, so they stay exact to
//!   rounding for every β: checked against exact rational arithmetic from β = 1e2 down to 1e-300
//!   for QP and ReLU / hard-tanh layers, and against the exact limit down to 1e-300 for softmax
//!   layers and `LogCoshProblem` (offset Newton solves);
//! * with every derivative: the strong / weak / inactive classification of each constraint, the
//!   branch each weakly active constraint took, a condition estimate and KKT residuals;
//! * `bilevel verify`: numerical checks of every Section 2 claim; `bilevel derive`: derivatives
//!   of a constrained quadratic layer as JSON, for other tools.
//!
//! ## In code
//!
//! ```rust
//! use bilevel::nalgebra::{self, dvector}; // the re-exported nalgebra 0.34 (its macros name `nalgebra::`)
//! use bilevel::prelude::*;
//!
//! fn main() -> Result<(), bilevel::Error> {
//!     // Example 1: z* = [W x]₊ with ℓ(z) = gᵀz; unit 2 sits exactly at its kink.
//!     let x = dvector![1.0, 2.0];
//!     let layer = ProxProblem::dense_layer(Activation::Relu, 2, &x)?;
//!     let theta = dvector![0.5, 0.25, 0.0, 0.0]; // W row-major
//!     let program = Bilevel::new(layer, Loss::Linear { g: dvector![1.0, -3.0] })?;
//!
//!     let limit = program.limit(&theta)?;          // Props. 1-2, Cor. 1
//!     assert_eq!(limit.direction.z_dot, dvector![-1.0, 3.0]);  // [−g₂]₊ = 3 at the tie
//!     println!("{:?} {:?}", limit.z_star.activity, limit.direction.branches);
//!
//!     let s = program.surrogate(&theta, 1e-2)?;    // Def. 1: value and Eq. 10 gradient
//!     let lin = program.linearized(&theta, 1e-2)?; // Def. 2
//!     let band = program.band_of(&s);              // Prop. 3
//!     Ok(())
//! }
//! ```
//!
//! A constrained QP layer in qpth's convention (`min ½zᵀQz + pᵀz` s.t. `Gz ≤ h`, `Az = b`), a
//! batch of items each with its own data, and the gradients of every input (`bilevel::layer`):
//!
//! ```rust
//! use bilevel::layer::{solve, Mode, QpData};
//! use bilevel::nalgebra::{dvector, DMatrix, DVector};
//!
//! fn main() -> Result<(), bilevel::Error> {
//!     // Projection of −p onto z ≥ 0 (G = −I, h = 0): the second unit sits on its bound (a tie).
//!     let item = QpData {
//!         q: DMatrix::identity(2, 2), p: dvector![-1.0, 0.0],
//!         g: -DMatrix::identity(2, 2), h: dvector![0.0, 0.0],
//!         a: DMatrix::zeros(0, 2), b: DVector::zeros(0),
//!     };
//!     let solved = solve(&[item], 2, Default::default()); // items on 2 threads
//!     let sol = solved[0].as_ref().map_err(Clone::clone)?;
//!     let grads = sol.gradients(&dvector![0.0, -1.0], Mode::Limit)?; // ℓ = −z₂ lifts unit 2 off
//!     assert_eq!((sol.z(), grads.p[1]), (&dvector![1.0, 0.0], 1.0)); // one-sided: ∂ℓ/∂p₂ = 1
//!     Ok(())
//! }
//! ```
//!
//! The mathematical core (`problem`, `prox`, `solve`, `linalg`, `surrogate`, `nested`) builds on
//! its numerical dependencies alone: `bilevel = { version = "0.1", default-features = false }`.
//! Features: `serde` (Serialize/Deserialize for the core's enums and rows), `app` (the MNIST client
//! `data`/`nn`/`plot`, the `derive` JSON contract and the `verify` report; implies `serde`), `cli`
//! (the `bilevel` command; implies `app`; on by default), `osqp` (the second QP backend), `python`
//! (the extension module of the Python package; built by `pip install .`, see below).
//!
//! The API speaks **nalgebra 0.34** (`DVector`, `DMatrix`). Either depend on `nalgebra = "0.34"`
//! yourself (not 0.35: its types are distinct and do not convert), or use the re-export
//! `bilevel::nalgebra`, which is always the version the crate was built with.
//!
//! Problem classes implement `InnerProblem` (`QuadraticProblem`, `ProxProblem`, `LogCoshProblem`);
//! losses are `Loss::Linear { g }` and `Loss::Squared { target }`. All fallible calls return
//! `bilevel::Result`; nothing panics on user data.
