//! # Sections 3-4: deep nesting and every method of Table 1
//!
//! A network is a deeply nested program: each layer's activations minimize an energy that takes
//! the previous layer's minimizer as data (Eq. 21),
//!
//! <div class="math">
//! $$ \mathcal L_{\text{deep}}(\theta) = \ell(z_L^\star), \qquad
//!    z_k^\star = \arg\min_{z_k} E_k(z_k, z_{k-1}^\star; \theta), \quad k = 1, \dots, L. $$
//! </div>
//!
//! Def. 1 applied level by level unravels it in one of two directions. **Bottom-up** (innermost
//! level first, Prop. 4) gives a *global* contrastive loss: a clamped and a free energy over all
//! layers at once, with later layers discounted (Eq. 22-24; contrastive Hebbian learning),
//!
//! <div class="math">
//! $$ \mathcal L_{GC}^\beta(\theta) = \min_z \hat{\mathcal E}^\beta(z;\theta) - \min_z \mathcal E^\beta(z;\theta),
//!    \qquad \mathcal E^\beta(z;\theta) = \sum_{k=1}^L \frac{E_k(z_k, z_{k-1};\theta)}{\prod_{l=k}^L \beta_l},
//!    \qquad \hat{\mathcal E}^\beta = \ell(z_L) + \mathcal E^\beta. $$
//! </div>
//!
//! **Top-down** (outermost level first, Prop. 5) gives a *local*, layer-wise loss in the
//! energies' excess over their minima `Ẽ_k = E_k − min_{z'_k} E_k(z'_k, z_{k−1})` (Eq. 26-28;
//! lifted networks, MAC, predictive coding),
//!
//! <div class="math">
//! $$ \mathcal L_{LC}^\beta(\theta) = \min_{z_1,\dots,z_L} \Big\{ \ell(z_L) + \sum_{k=1}^L \frac1{\beta_k}\, \tilde E_k(z_k, z_{k-1};\theta) \Big\}. $$
//! </div>
//!
//! Top-down with Def. 2's linearization at every level (Prop. 7) needs no joint minimization:
//! one forward pass for the `z*_k`, then one backward pass of per-layer problems for the targets
//! `z̄_k` (Eq. 41-43), in closed form for proximal and Fenchel layers. With `β → 0⁺` it is
//! back-propagation; with Fenchel layer energies at finite `β_k` it is **Fenchel
//! back-propagation** (Section 4.2), which sends finite targets backwards instead of
//! infinitesimal corrections. Table 1 is the grid of these choices: the layer energy `E_k`
//! (penalizer, Fenchel, proximal), the direction, and the linearization.
//!
//! From Sections 3-4 (`bilevel::nested`): layered networks with penalizer, Fenchel or proximal
//! layer energies (identity, ReLU, hard sigmoid, hard tanh, box, and softmax as a Fenchel layer
//! with negative entropy), batched (samples as columns), and every row of the paper's Table 1 as a
//! choice of energy, direction and linearization (`Method`):
//!
//! * Prop. 7, linearized: back-propagation and **Fenchel back-propagation** (Eq. 46-53, Remark 2),
//!   generic over `f32`/`f64`, allocation-free — the training path of the MNIST client;
//! * Prop. 5, local: MAC / predictive coding (argmin L-BFGS + Newton, finished by an active-set
//!   method where the minimizer sits on a ReLU kink) and LPOM (block-coordinate descent, FISTA
//!   blocks with the entropy prox for softmax layers);
//! * Prop. 4, global: convex CHL (a batched block-coordinate solver for the whole batch, and an
//!   exact QP per sample; tested to agree) and CHL (block-coordinate descent). Both solve for the
//!   difference `ẑ − ž` of the two phases directly, so their gradients stay accurate to the O(β)
//!   bias down to β = 1e-4.
//!
//! Every row has the shape of the Section 2 layers: a problem (`NestedProblem`: network, energy,
//! β per layer, loss), a `Batch`, validated `NestedSettings`, and one `NestedReport` (value,
//! gradient, clamped and free states, and a status with solver, iterations, residual, whether the
//! point is a global minimum, a stationary point or a local minimum, and any fallback taken):
//!
//! ```rust
//! use bilevel::nalgebra::{dmatrix, dvector};
//! use bilevel::nested::method::Method;
//! use bilevel::nested::{Batch, Layer, NestedSettings, Network, OutputLoss};
//! use bilevel::prox::Activation;
//!
//! fn main() -> Result<(), bilevel::Error> {
//!     let net = Network {
//!         layers: vec![
//!             Layer { w: dmatrix![1.0, -0.5; 0.3, 0.8], bias: dvector![0.1, -0.2], activation: Activation::Relu },
//!             Layer { w: dmatrix![0.7, -1.1], bias: dvector![0.05], activation: Activation::Identity },
//!         ],
//!     };
//!     let (x, t) = (dmatrix![1.0; 0.5], dmatrix![0.2]); // one sample per column
//!     let problem = Method::Mac.problem(&net, &[1e-2, 1e-2], OutputLoss::Squared)?;
//!     let report = Method::Mac.run(&problem, Batch::new(&problem, &x, &t)?, &NestedSettings::default())?;
//!     println!("{:.6} {:?} after {} iterations", report.value, report.status.optimum, report.status.iterations);
//!     Ok(())
//! }
//! ```
//!
//! `nested::compose` applies Def. 1 level by level with the Section 2 wrapper (innermost first:
//! Prop. 4; outermost first: Prop. 5) as an independent reference for these solvers.
//!
//! `bilevel verify` shows every method's gradient converging to back-propagation at rate O(β)
//! (Cor. 2) at β = 1 … 1e-4; `bilevel taxonomy` prints Table 1 as built from these definitions,
//! with each method's gradient error against back-propagation and its time, and
//! `cargo run --release --example taxonomy` shows all of them converging as β shrinks.
