//! Batched iterative inference for the rows of Table 1 that are not closed form: the training
//! path (f32) and its check (f64), one generic definition. The top-down rows — MAC, predictive
//! coding and LPOM (Prop. 5) — are a fixed point of Prop. 7's pass (below); the bottom-up rows —
//! CHL and convex CHL (Prop. 4) — a free phase and a clamped phase solved for the rates
//! `(ẑ − ž)/Π β` ([below](self#bottom-up-rows)). Both run on the whole batch as matrices,
//! from the forward pass, with the same sweep budget, acceleration and status.
//!
//! **The fixed point.** Write the states of the local contrastive objective (Eq. 28) through an
//! error signal `λ_k` per layer, `ẑ_k = z_k(λ_k; â_k)` with `â_k = W_k ẑ_{k−1} + b_k`:
//! * penalizer energies (MAC, predictive coding, Eq. 30): `ẑ_k = f(â_k) − σ_k λ_k`, `σ_k = β_k`
//!   for MAC and `Π_{l≥k} β_l` for predictive coding (the weights `μ_k⁻¹` of Section 3.2.1);
//! * Fenchel energies (LPOM, Eq. 34): `ẑ_k = f(â_k − β_k λ_k)`, `σ_k = β_k`.
//!
//! Setting the `ẑ_k`-gradient of Eq. 28 to zero gives, layer by layer from the top,
//! `λ_L = ℓ'(ẑ_L)` and `λ_{k−1} = W_kᵀ q_k(λ_k)` with the pre-activation signal
//! `q_k = f'(â_k) ⊙ λ_k` (penalizer; Eq. 46-47) or `q_k = D_{β_k} f(â_k)[λ_k]`
//! (Fenchel; the one-sided quotient of Eq. 51). That is Prop. 7's backward pass taken at the
//! states `ẑ` instead of the forward pass `z*`: **one sweep from `λ = 0` is back-propagation or
//! Fenchel back-propagation** (Props. 5 and 7 meet here), and iterating the sweep — forward with
//! the current `λ`, backward for the next — converges to the minimizer of Eq. 28 whenever the
//! map is a contraction, which it is for small `β` (its Lipschitz constant is `O(σ‖W‖²ℓ'')`).
//! The envelope gradient at the states is `∂/∂W_k = q_k ẑ_{k−1}ᵀ`, `∂/∂b_k = q_k 1`: no
//! difference of two states is ever formed, so nothing cancels in `f32` however small `β` is.
//!
//! Each sweep costs the products of layers `2..L` only (`â_1 = W_1 x + b_1` does not depend on
//! `λ`): on the 784-256-128-64-10 MLP a sweep has a sixth of a back-propagation step's
//! multiply-adds. The products run on the workspace's [`Threads`](crate::linalg::Threads); so do the element-wise
//! passes, cut by samples (columns), compiled for the CPU's widest vectors, their sums taken
//! per sample in a fixed order — so the results are bit-identical for every thread count and
//! instruction set. Nothing allocates after [`InferenceWorkspace::new`] (for networks of up to
//! 16 layers; deeper ones allocate a list of their layers' buffers per pass).
//!
//! **Status.** The residual is the fixed-point residual `max |Φ(λ) − λ|` of the stationarity
//! conditions, per sample (the batch mean's `1/B` taken out), in units of `ℓ'`; the sweep stops
//! when it falls below `tol · (1 + max |λ|)` or after `max_sweeps` (reported, not an error: an
//! unconverged state still gives the envelope gradient of where it stopped, as predictive coding
//! with a fixed number of inference steps does; if an earlier iterate — or the forward pass —
//! had a lower objective, that one is used, so the reported value always bounds `L^β` from
//! above and never exceeds the forward loss, Eq. 29; the kink multipliers are then those of the
//! last sweep). The sweeps are accelerated per sample (the
//! samples' problems are independent) by Anderson's method with memory one, which handles the
//! mix of slow and oscillating modes the plain iteration has at larger β (on MNIST, LPOM at the
//! paper's β = 1: about 6 sweeps per batch on average instead of 11); when the residual stops
//! falling by 1 % a sweep, the step is damped instead (halved, down to `min_damping`, and
//! doubled back when the residual halves in a sweep).
//!
//! **Kinks.** Where the penalizer minimizer holds a ReLU pre-activation exactly on its kink (a
//! convex kink, see [`super::local`]) the map, with back-propagation's `f'(0) = 0`, has no fixed
//! point: the unit flips between its pieces. Such a unit (its `â` crossed a bound between two
//! sweeps, with its state beyond the bound) is *held*: its signal becomes a multiplier `ν` in
//! the subdifferential `λ ∂f(c)`, moved by a Newton step on `â = c` through the direct path
//! `λ_{k−1} = W_kᵀq_k` and released when it leaves that interval. At convergence this is the
//! exact KKT point of the active-set method of [`super::local`] (tested: the same value and
//! gradient to 1e-12 and 1e-9 on a case with two held units); units that keep flipping leave
//! the residual above the tolerance and are reported as such.
//!
//! # Bottom-up rows
//! Prop. 4's `L^β = ℓ(ẑ_L) + ℰ^β(ẑ) − ℰ^β(ž)`, `ℰ^β = Σ_k E_k/s_k`, `s_k = Π_{l≥k} β_l`. The
//! free phase `ž` solves `z_k = f(a_k + β_k W_{k+1}ᵀ r_{k+1})` (`r = z` for Fenchel energies,
//! `z − a` for proximal ones) by bottom-up Gauss–Seidel sweeps from the forward pass (the
//! coupling from below is the `O(1)` one there); the rates below by top-down sweeps (there the
//! `O(1)` coupling comes from above: one sweep carries the loss to every layer). The
//! clamped phase is solved for the rates `u_k = (ẑ_k − ž_k)/s_k` — the phases differ by `O(s_k)`,
//! so forming `ẑ − ž` would leave nothing of the first layer in `f32` — through
//! `u_k = (f(ǔ_k + s_k v_k) − f(ǔ_k))/s_k`, `v_k = β_{k−1}W_k u_{k−1} + W_{k+1}ᵀρ_{k+1}` (top:
//! `v_L = β_{L−1}W_L u_{L−1} − ℓ'(ẑ_L)`); value and gradient are products with the rates. The
//! report's sweeps add both phases; its residual is the larger of the two. Divergence of CHL's
//! free phase (its energy is bilinear in adjacent layers, unbounded below for large β) is
//! [`Error::Unbounded`]. Convex CHL's energy is a sum of squares, strongly convex over the
//! boxes: its sweeps take projected gradient steps `t_k = 2/(2 + m β_k ‖W_{k+1}‖₂²)` per block
//! (power-iteration estimate, `m` the `lipschitz_margin`; unit steps diverge once
//! `β_k‖W_{k+1}‖₂² ≥ 1`), plain Gauss–Seidel in the free phase, so the sweeps descend (while
//! the estimate is within the margin, see `bottom_up`'s docs) and both phases converge to the
//! per-sample QPs' minimizers where unit steps diverged (tested up to `β‖W‖_F² = 18`). The f64 references are [`super::global`]'s.
//!
//! The batch convention is [`crate::nested`]'s: every sample at the same `β`; the signals carry
//! the batch mean's `1/B`, so the states use `σ_k B` and the quotients `β_k B`.

use crate::error::{Error, Result};
use crate::linalg::Gemm;
use crate::nested::method::{Method, Unravel};
use crate::nested::EnergyKind;
use crate::nested::{Batch, BatchReport, Gradients, NestedProblem, NestedSettings};

mod bottom_up;
mod fixed_point;
mod kinks;
mod rules;
mod settings;
mod top_down;
mod workspace;

use settings::Sweeps;
pub use workspace::InferenceWorkspace;
use workspace::{check_batch, state_weights};

/// The energy and the direction of a non-linearized row.
fn energy_of(method: Method) -> Result<(EnergyKind, Unravel)> {
    match method {
        Method::Mac | Method::PredictiveCoding | Method::Lpom | Method::Chl | Method::ConvexChl => {
            let (energy, direction, _) = method.choices();
            Ok((energy, direction))
        }
        other => Err(Error::input(
            "method",
            format!("{other} is closed form (Prop. 7: use nested::linearized::gradient)"),
        )),
    }
}

/// Runs the inference sweeps of the problem's method (MAC, predictive coding, LPOM: Eq. 28;
/// CHL, convex CHL: Prop. 4) on one batch, writes the envelope gradient of the surrogate (batch
/// mean) into `grads` and returns the value and the status (sweeps, residual, whether they
/// reached the tolerance or stopped at `settings.inference_max_sweeps`). `betas` are per
/// sample (the batch convention of [`crate::nested`]). Build the problem with
/// [`Method::problem`]: the method decides the direction and, for predictive coding, the
/// weights.
///
/// **Centered.** With `settings.centered`, the bottom-up rows (CHL, convex CHL) return the mean
/// of the surrogate of Prop. 4 (Eq. 22-25) at `+β_L` and at `−β_L` on the loss,
/// `L_c = ½(L^β + L^{−β})`, `L^{−β} = ℓ(ẑ⁻_L) + ℰ^{−β}(ẑ⁻) − ℰ^{−β}(ž)`, where only the
/// outermost `β_L` (the loss's) changes sign, so that every `s_k = Π_{l≥k} β_l` does and the
/// free phase `ž` is shared. By Def. 1, `β_L L^β = min(ℰ' + β_Lℓ) − min ℰ'` with
/// `ℰ' = β_L ℰ^β` independent of `β_L`: a smooth function of `β_L` whose odd powers cancel in
/// the mean, so for fixed inner `β_k` the gradient reaches its `β_L → 0⁺` limit — the gradient
/// of the loss at the free phase, `∂_θ ℓ(ž_L(θ))`, equilibrium propagation's target — at
/// `O(β_L²)` instead of `O(β_L)` (beyond the paper; [`crate::surrogate::Bilevel::centered`]
/// is the single-level counterpart). The inner `β_k` keep their `O(β_k)` distance to
/// back-propagation (Cor. 2). The `−β` clamped phase is solved for its rates
/// `(ẑ⁻ − ž)/(−s_k)` by the same top-down sweeps: one more clamped phase; the report's
/// iterations add the three phases, its residual is the largest of them. `L^{−β}` needs
/// `ℰ' − β_Lℓ` bounded below near `ž`, which holds for small `β_L` (the loss's curvature is
/// bounded: `½` for softmax cross-entropy, `1` for squared error).
///
/// ```
/// use bilevel::nested::inference::{self, InferenceWorkspace};
/// use bilevel::nested::method::Method;
/// use bilevel::nested::{Batch, Gradients, Layer, NestedSettings, Network, Outcome, OutputLoss};
/// use bilevel::prox::Activation;
/// use nalgebra::{dmatrix, dvector};
///
/// let net = Network {
///     layers: vec![
///         Layer { w: dmatrix![1.0, -0.5; 0.3, 0.8], bias: dvector![0.1, 0.0], activation: Activation::Relu },
///         Layer { w: dmatrix![0.7, -1.2], bias: dvector![0.0], activation: Activation::Identity },
///     ],
/// };
/// let (x, t) = (dmatrix![1.0; 0.5], dmatrix![0.2]);
/// let problem = Method::Mac.problem(&net, &[1e-3, 1e-3], OutputLoss::Squared)?;
/// let settings = NestedSettings { inference_max_sweeps: 100, inference_tol: 1e-14, ..Default::default() };
/// let (mut ws, mut grads) = (InferenceWorkspace::new(&net, 1), Gradients::zeros(&net));
/// let report = inference::gradient(&problem, Batch::new(&problem, &x, &t)?, &settings, &mut ws, &mut grads)?;
/// assert!(report.status.outcome == Outcome::Solved && report.status.iterations < 10);
/// // O(β) from back-propagation (Cor. 2): z₁ = relu(0.85, 0.7), ℓ' = 0.7·0.85 − 1.2·0.7 − 0.2.
/// let e: f64 = 0.7 * 0.85 - 1.2 * 0.7 - 0.2;
/// assert!((grads.w[1][(0, 0)] - e * 0.85).abs() < 1e-3);
///
/// // The centered variant of CHL: halving β_L halves the one-sided estimate's distance to the
/// // limit and quarters the centered one's.
/// let net = Network {
///     layers: vec![
///         Layer { w: dmatrix![0.9, -0.4; 0.3, 0.8], bias: dvector![0.1, 0.2], activation: Activation::HardSigmoid },
///         Layer { w: dmatrix![0.7, -1.2], bias: dvector![0.0], activation: Activation::Identity },
///     ],
/// };
/// let (x, t) = (dmatrix![0.6; 0.2], dmatrix![0.9]);
/// let mut ws = InferenceWorkspace::new(&net, 1);
/// let mut at = |beta_top: f64, centered: bool| -> Result<f64, bilevel::Error> {
///     let problem = Method::Chl.problem(&net, vec![0.3, beta_top], OutputLoss::Squared)?;
///     let settings = NestedSettings { inference_max_sweeps: 200, inference_tol: 1e-15, centered, ..Default::default() };
///     let mut g = Gradients::zeros(&net);
///     inference::gradient(&problem, Batch::new(&problem, &x, &t)?, &settings, &mut ws, &mut g)?;
///     Ok(g.w[0][(0, 0)])
/// };
/// let one = (at(0.1, false)? - at(0.05, false)?) / (at(0.05, false)? - at(0.025, false)?);
/// let two = (at(0.1, true)? - at(0.05, true)?) / (at(0.05, true)? - at(0.025, true)?);
/// assert!((one - 2.0).abs() < 0.3 && (two - 4.0).abs() < 0.6, "{one} {two}");
/// # Ok::<(), bilevel::Error>(())
/// ```
///
/// # Errors
/// A problem without a method, or of a closed-form method (BP, Fenchel BP); a centered
/// top-down row (MAC, predictive coding, LPOM: their local objective, Eq. 28, is a minimization
/// only for `β > 0`); shapes (`x`, `target`, `betas`, a workspace or gradients for another
/// network); invalid β or settings; softmax layers (the sweeps take box-family activations); a
/// non-finite loss or state (diverged inference).
pub fn gradient<T: Gemm>(
    problem: &NestedProblem<'_, T>,
    batch: Batch<'_, T>,
    settings: &NestedSettings,
    ws: &mut InferenceWorkspace<T>,
    grads: &mut Gradients<T>,
) -> Result<BatchReport<T>> {
    let method = problem.method.ok_or_else(|| {
        Error::input(
            "method",
            "the sweeps solve a row of Table 1: build the problem with Method::problem",
        )
    })?;
    let (kind, direction) = energy_of(method)?;
    settings.validate()?;
    problem.check_structure()?;
    if settings.centered && !matches!(method, Method::Chl | Method::ConvexChl) {
        return Err(Error::input(
            "settings.centered",
            format!(
                "the centered variant is defined for the bottom-up rows (CHL, convex CHL), not {}",
                method.name()
            ),
        ));
    }
    let net = problem.net;
    if let Some(k) = net
        .layers
        .iter()
        .position(|l| l.activation.bounds().is_none())
    {
        return Err(Error::input(
            "network",
            format!("layer {k} is softmax: the inference sweeps take box-family activations"),
        ));
    }
    grads.check(net, "grads")?;
    ws.check(net)?;
    check_batch(net, batch.x, batch.target, ws.batch())?;
    state_weights(method, &problem.betas, ws);
    let sweeps = Sweeps {
        net,
        kind,
        betas: &problem.betas,
        loss: problem.loss,
        x: batch.x,
        target: batch.target,
        settings,
    };
    let tally = match (kind, direction) {
        (EnergyKind::Penalizer, _) | (_, Unravel::TopDown) => {
            top_down::top_down(&sweeps, ws, grads)?
        }
        _ => bottom_up::run(&sweeps, ws, grads)?,
    };
    Ok(tally.into_report(method))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::simd::Isa;
    use crate::nested::{linearized, Layer, Network, OutputLoss};
    use crate::prox::Activation;
    use nalgebra::DMatrix;

    /// A pseudo-random f32 network 19-17-11-5 (widths and batch 7 off the lane count), inputs
    /// and one-hot targets.
    fn problem() -> (Network<f32>, DMatrix<f32>, DMatrix<f32>) {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let widths = [19, 17, 11, 5];
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(k, w)| Layer {
                w: DMatrix::from_fn(w[1], w[0], |_, _| 0.6 * uniform()),
                bias: nalgebra::DVector::from_fn(w[1], |_, _| 0.1 * uniform()),
                activation: if k + 2 < widths.len() {
                    Activation::Relu
                } else {
                    Activation::Identity
                },
            })
            .collect();
        let x = DMatrix::from_fn(widths[0], 7, |_, _| uniform());
        let t = DMatrix::from_fn(widths[3], 7, |i, j| f32::from(u8::from(i == j % 5)));
        (Network { layers }, x, t)
    }

    /// The bits of a run's gradients and report.
    fn bits(g: &Gradients<f32>, numbers: &[f32]) -> Vec<u32> {
        let w = g.w.iter().flat_map(|m| m.iter());
        let b = g.bias.iter().flat_map(|v| v.iter());
        w.chain(b).chain(numbers).map(|v| v.to_bits()).collect()
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let (net, x, t) = problem();
        let loss = OutputLoss::SoftmaxCrossEntropy;
        let betas = [0.3_f32; 3];
        let isas: Vec<Isa> = [Isa::Baseline, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&i| i <= Isa::detected())
            .collect();
        let run = |isa: Isa| -> Vec<Vec<u32>> {
            assert_eq!(Isa::active(), isa);
            let mut out = Vec::new();
            let mut grads = Gradients::zeros(&net);
            let mut ws = InferenceWorkspace::new(&net, x.ncols());
            let batch = Batch { x: &x, target: &t };
            let mut record = |r: BatchReport<f32>, grads: &Gradients<f32>| {
                let sweeps = r.status.iterations as f32;
                out.push(bits(grads, &[r.value, r.status.residual as f32, sweeps]));
            };
            for (method, centered) in [
                (Method::Mac, false),
                (Method::PredictiveCoding, false),
                (Method::Lpom, false),
                (Method::Chl, false),
                (Method::ConvexChl, false),
                (Method::Chl, true),
            ] {
                let settings = NestedSettings {
                    centered,
                    ..NestedSettings::default()
                };
                let problem = method.problem(&net, &betas[..], loss).unwrap();
                let r = gradient(&problem, batch, &settings, &mut ws, &mut grads).unwrap();
                record(r, &grads);
            }
            let mut lws = linearized::Workspace::new(&net, x.ncols());
            for method in [Method::Bp, Method::FenchelBp] {
                let problem = method.problem(&net, &betas[..], loss).unwrap();
                let r = linearized::gradient(&problem, batch, &mut lws, &mut grads).unwrap();
                record(r, &grads);
            }
            out
        };
        let runs: Vec<_> = isas
            .iter()
            .map(|&isa| Isa::with_ceiling(isa, || run(isa)))
            .collect();
        // The sweeps did run (and stopped for their tolerance, not at the first sweep).
        assert!(runs[0][0].last().is_some_and(|&s| f32::from_bits(s) > 1.0));
        for (isa, r) in isas.iter().zip(&runs).skip(1) {
            for (m, (a, b)) in r.iter().zip(&runs[0]).enumerate() {
                assert!(
                    a == b,
                    "{} differs from the baseline in run {m}",
                    isa.name()
                );
            }
        }
    }
}
