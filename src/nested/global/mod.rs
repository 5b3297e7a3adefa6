//! Prop. 4: the global contrastive objective, bottom-up (Eq. 22-25),
//! <div class="math">
//!
//! $$ L_{GC}^\beta(\theta) = \min_z \lbrace \ell(z_L) + \mathcal{E}^\beta(z) \rbrace - \min_z \mathcal{E}^\beta(z),
//! \qquad \mathcal{E}^\beta(z) = \sum_{k=1}^{L} \frac{E_k(z_k, z_{k-1})}{\prod_{l=k}^{L} \beta_l}, $$
//!
//! </div>
//!
//! with the gradient `∂_θ(ℰ^β(ẑ) − ℰ^β(ž))` at the clamped (`ẑ`) and free (`ž`) minimizers.
//!
//! * **Convex CHL**: proximal energies `½‖z_k − W_k z_{k−1} − b_k‖² + ι_C(z_k)` with box-family
//!   activations and the squared loss: both phases are convex QPs (one per sample; samples
//!   decouple), solved with the crate's QP backend and refined exactly
//!   ([`crate::solve::qp::solve_exact`]).
//! * **CHL**: Fenchel energies `G_k(z_k) − z_kᵀ(W_k z_{k−1} + b_k)`, layer-wise convex, with
//!   box-family layers or softmax layers (`G` = negative entropy, Section 3.2.2). Both phases
//!   by block-coordinate descent from the forward pass; each block has the closed form
//!   `z_k = f_k(a_k + β_k W_{k+1}ᵀ z_{k+1})` (the top block adds the loss). The joint energy is
//!   bilinear in adjacent layers and can be unbounded below for large β (roughly
//!   `β_k ‖W_{k+1}‖² ≥ 1`): divergence is reported as [`Error::Unbounded`], a stall as
//!   [`Error::NotConverged`].
//!
//! Scaling: the objective is multiplied by `Π_l β_l`, so layer `k` carries the weight
//! `Π_{l<k} β_l` and the loss `Π_l β_l` — `O(1)` for the bottom layer instead of `β^{−L}`.
//!
//! **The difference is solved for, not formed.** The gradient and the value are
//! `1/Π β`-weighted differences between the two phases; subtracting two separately computed
//! solutions would lose `log10(Π β_l⁻¹)` digits (12 at β = 1e-4 with three layers: a 2–3e-4
//! gradient error against back-propagation, where the O(β) bias is 1e-5). Instead `d = ẑ − ž`
//! is computed directly — convex CHL: from the difference of the two KKT systems on the clamped
//! working set, whose right-hand side is `O(w)`; CHL: block-coordinate descent on `d` with the
//! cancellation-free increments `f(ǔ + Δu) − f(ǔ)` of [`crate::prox::Activation::difference_quotient`]
//! — and the gradient `c_k[ř_k ž_{k−1}ᵀ − r̂_k ẑ_{k−1}ᵀ]` and value are rewritten as products
//! with `d`. Entry points: [`contrastive`] and [`convex_chl_batched`], both returning a
//! [`NestedReport`]. On the network of `bilevel verify`, convex CHL's relative error against
//! back-propagation is 7.4e-3, 7.5e-4, 7.5e-5, 7.5e-6 at β = 1e-1 … 1e-4: the O(β) bias only.

mod batched;
mod chl;
mod common;
mod convex_qp;

pub use batched::convex_chl_batched;

use crate::error::{Error, Result};
use crate::nested::{Batch, EnergyKind, NestedProblem, NestedReport, NestedSettings, OutputLoss};

/// The global contrastive objective on one batch: convex CHL (per-sample QPs) for proximal
/// energies, CHL for Fenchel energies (see the module docs). `clamped` and `free` of the report
/// are `ẑ` and `ž`.
///
/// # Errors
/// Penalizer energies (their free energy is minimized by the forward pass: use
/// [`super::local`]), softmax layers in convex CHL (not a QP), convex CHL with a loss other than
/// squared error (not a QP), softmax output layers with cross-entropy (which expects logits),
/// an invalid problem, batch or settings, the QP backend's errors, and for CHL divergence or
/// non-convergence.
pub fn contrastive(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    settings: &NestedSettings,
) -> Result<NestedReport> {
    let batch = problem.prepare(batch, settings)?;
    match (problem.energy, problem.loss) {
        (EnergyKind::Proximal, OutputLoss::Squared) => convex_qp::convex_chl(problem, batch),
        (EnergyKind::Proximal, _) => Err(Error::input(
            "loss",
            "convex CHL is a QP only with the squared loss",
        )),
        (EnergyKind::Fenchel, _) => chl::chl(problem, batch, settings),
        (EnergyKind::Penalizer, _) => Err(Error::input(
            "energy",
            "penalizer energies: the free phase is the forward pass (Section 3.2.1); use the local contrastive solver",
        )),
    }
}
