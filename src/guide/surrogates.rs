//! # Section 2: the contrastive surrogate and its exact limits
//!
//! A bilevel program is a loss of the solution of an inner minimization,
//!
//! ```text
//! L(θ) = ℓ(z*),    z* = argmin_z E(z; θ)                      (Eq. 2)
//! ```
//!
//! and `bilevel` replaces it by the **contrastive surrogate** of Def. 1,
//!
//! ```text
//! L^β(θ) = ℓ(ẑ_β) + (E(ẑ_β; θ) − E(z*; θ)) / β,   ẑ_β = argmin_z β ℓ(z) + E(z; θ)   (Eq. 5-6)
//! ∇L^β(θ) = (1/β) ∂_θ (E(ẑ_β; θ) − E(z*; θ))                                        (Eq. 10)
//! ```
//!
//! whose `β → 0⁺` limit is an exact gradient: `dẑ_β/dβ|₀₊ = −H⁻¹ℓ'(z*)` for smooth problems
//! (Prop. 1), and the solution of a small convex QP when constraints are active (Prop. 2, Eq. 17).
//! The Prop. 2 derivative exists even at *weakly active* constraints (active with a zero
//! multiplier: a ReLU exactly at its kink), where back-propagation and implicit differentiation
//! have none; `bilevel` returns it as a one-sided derivative together with the branch it took.
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
