//! Prop. 5: the local (layer-wise) contrastive objective, top-down (Eq. 26-30),
//! <div class="math">
//!
//! $$ L_{LC}^\beta(\theta) = \min_{z_1, \dots, z_L} \ell(z_L) + \sum_{k=1}^{L} \frac{1}{\beta_k} \tilde E_k(z_k, z_{k-1}),
//! \qquad \tilde E_k(z_k, z_{k-1}) = E_k(z_k, z_{k-1}) - \min_{z'} E_k(z', z_{k-1}) \quad \text{(Eq. 27)} $$
//!
//! </div>
//!
//! and its θ-gradient by the envelope theorem, `Σ_k (1/β_k) ∂_θ Ẽ_k(ẑ_k, ẑ_{k−1})` at the
//! minimizer `ẑ` (with `z_0 = x` fixed).
//!
//! * **Penalizer** energies give MAC / predictive coding (Eq. 30): `Ẽ_k = ½‖z_k − f(a_k)‖²`,
//!   non-convex in `z`. Minimized per sample (samples decouple) with `argmin`'s L-BFGS started
//!   from the forward pass, finished by Newton steps with the exact Hessian of the current linear
//!   piece of the activations (the objective is piecewise quadratic for box-family activations
//!   and squared loss), see [`crate::solve::smooth`]. Gradient:
//!   `∂_{W_k} = −(1/β_k)(f'(a_k) ⊙ (ẑ_k − f(a_k))) ẑ_{k−1}ᵀ`.
//! * **Fenchel** energies give LPOM (Eq. 34): `Ẽ_k = G(z_k) − z_kᵀa_k + G*(a_k)`, block-convex.
//!   Minimized on the whole batch at once (samples as columns) by block-coordinate descent over
//!   layers, each block the convex problem of Eq. 35 solved by accelerated proximal gradient
//!   (FISTA with a restart per sample): projection for box-family
//!   activations, the entropy prox for softmax layers (`G = Σ z log z`, `G* = log Σ e^u`, the
//!   soft-arg-max layer of Section 3.2.2 that the original LPOM cannot express). Gradient:
//!   `∂_{W_k} = (1/β_k)(f(a_k) − ẑ_k) ẑ_{k−1}ᵀ`.
//!
//! The batch loss is the mean over samples, as everywhere in [`crate::nested`]. Entry point:
//! [`contrastive`], which returns a [`NestedReport`].
//!
//! # Kinks (MAC)
//! The penalizer objective is non-smooth where a ReLU pre-activation crosses 0. At a *convex*
//! kink (a unit whose target `z_k` is below the bound) the minimizer can sit exactly on the kink
//! (seen for β ≥ 1e-2 on random 5-4-3-2 ReLU networks); the gradient then never vanishes and the
//! smooth solver stalls. It is finished by an active-set method on the pieces (exact for the
//! piecewise-quadratic squared-loss objective, Newton for cross-entropy) that holds such units on
//! their kink and returns their multipliers `ν = ∂J/∂a`, which enter the gradient in place of
//! `f'(a)·(…)`. The gradient at kinks matches the surrogate's own finite differences to 1e-9.

mod envelope;
mod kinks;
mod lpom;
mod mac;
mod penalizer;
mod rates;

use crate::error::Result;
use crate::nested::{Batch, EnergyKind, NestedProblem, NestedReport, NestedSettings};

/// Minimizes Eq. 28 for the batch and returns the value, the envelope-theorem θ-gradient, the
/// minimizer `ẑ` (as `clamped`; `free` is the forward pass, Eq. 29) and the status: MAC for
/// penalizer energies, LPOM for Fenchel or proximal ones (which differ by `½‖a‖²`, cancelled in
/// `Ẽ_k`).
///
/// # Errors
/// An invalid problem, batch or settings; non-convergence; the linear-algebra errors of the
/// active-set method at kinks.
pub fn contrastive(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    settings: &NestedSettings,
) -> Result<NestedReport> {
    let batch = problem.prepare(batch, settings)?;
    match problem.energy {
        EnergyKind::Penalizer => mac::mac(problem, batch, settings),
        EnergyKind::Fenchel | EnergyKind::Proximal => lpom::lpom(problem, batch, settings),
    }
}
