//! The bottom-up rows — CHL (Fenchel energies) and convex CHL (proximal energies) — by sweeps:
//! Prop. 4's global contrastive objective (Eq. 22-25),
//! `L^β = ℓ(ẑ_L) + ℰ^β(ẑ) − ℰ^β(ž)`, `ℰ^β(z) = Σ_k E_k(z_k, z_{k−1})/s_k`, `s_k = Π_{l≥k} β_l`.
//!
//! **Free phase** `ž = argmin ℰ^β`: stationarity in `z_k` is
//! `z_k = f(a_k + β_k W_{k+1}ᵀ r_{k+1})` with `a_k = W_k z_{k−1} + b_k` and `r_{k+1} = z_{k+1}`
//! (Fenchel: `E_k = G(z_k) − z_kᵀa_k`) or `r_{k+1} = z_{k+1} − a_{k+1}` (proximal:
//! `E_k = ½‖z_k − a_k‖² + ι_C(z_k)`), and `z_L = f(a_L)`; the sweep runs it bottom up
//! (Gauss–Seidel: `a_k` from the new `z_{k−1}`) from the forward pass.
//!
//! **Convex CHL's block steps.** For proximal energies `ℰ^β` is a sum of squares of affine
//! maps, strongly convex over the boxes, and `z_k − ǔ_k` is the gradient of its block `k`
//! (divided by its weight), whose Hessian `I + β_k W_{k+1}ᵀW_{k+1}` has its spectrum in
//! `[1, 1 + β_k‖W_{k+1}‖₂²]`. The unit step `z_k = f(ǔ_k)` is a descent step only while
//! `β_k‖W_{k+1}‖₂² < 1`; beyond, the sweeps diverged (tested). So block `k` takes the projected
//! gradient step `z_k ← f(z_k + t_k(ǔ_k − z_k))` with `t_k = 2/(2 + m β_k ℓ̂_{k+1})`, `ℓ̂` a
//! power-iteration estimate of `‖W_{k+1}‖₂²` (from below; `m` the `lipschitz_margin`), the
//! step that is optimal for that spectrum. It stays below the bound `2/(1 + β_k‖W_{k+1}‖₂²)`
//! of descent whenever `m ℓ̂ > ‖W_{k+1}‖₂² − 1/β_k` (the default 8 power steps from the ones
//! vector reach 0.86–1.0 of `‖W‖₂²` on Glorot matrices of the MNIST net's shapes, so with
//! `m = 1.1` descent holds up to `β_k‖W_{k+1}‖₂² ≈ 20` in the worst case seen, and for every
//! β once the estimate is within the margin). Every block step then lowers `ℰ^β`, and the
//! free sweep is plain projected Gauss–Seidel — no Anderson mixing or damping, which would
//! leave `a_{k+1}` behind `z_k` — so it converges to the minimizer. The clamped phase (its map
//! is computed from its state alone, so it keeps Anderson's mixing) takes the same steps, and `2/(2 + |s_L| h)` at the top (`h`
//! the loss's curvature per sample), through the quotient's argument
//! `ǔ + s((1 − t)(u + g/s) + t v)`, `g = f(ǔ) − ǔ` (exactly 0 inside the box). On MNIST at
//! β = 1 (`bilevel train --method convex-chl --beta 1`, 10 epochs) the unit steps needed 16.6
//! sweeps per batch in epoch 10 with 38 batches at the budget of 20, the block steps 12.4 and
//! none.
//!
//! **Clamped phase, solved for the difference.** The two phases differ by `O(s_k)` in layer
//! `k` (`β⁴` in the first layer of a four-layer net: nothing would be left of it in `f32`), so the
//! rates `u_k = (ẑ_k − ž_k)/s_k` are the unknowns. Subtracting the two stationarity conditions,
//! `u_k = (f(ǔ_k + s_k v_k) − f(ǔ_k))/s_k` — a one-sided quotient at the free argument
//! `ǔ_k`, exact on each linear piece — with
//! `v_k = β_{k−1} W_k u_{k−1} + W_{k+1}ᵀ ρ_{k+1}` below the top and
//! `v_L = β_{L−1} W_L u_{L−1} − ℓ'(ž_L + s_L u_L)`, where `ρ_k = u_k` (Fenchel) or
//! `ρ_k = u_k − β_{k−1} W_k u_{k−1}` (proximal: `(r̂_k − ř_k)/s_k`).
//!
//! **Gradient and value** (envelope theorem on both minimizations), with `P_k = u_k`,
//! `Q_k = ž_k` (Fenchel) or `P_k = ρ_k`, `Q_k = ř_k = ž_k − ǎ_k` (proximal):
//! `∂/∂W_k = −(P_k ẑ_{k−1}ᵀ + β_{k−1} Q_k u_{k−1}ᵀ)`, `∂/∂b_k = −P_k 1`, and
//! `(E_k(ẑ) − E_k(ž))/s_k = u_kᵀ(ž_k + s_k u_k/2 − â_k) − β_{k−1} ž_kᵀW_k u_{k−1}` (Fenchel)
//! or `ρ_kᵀ(ř_k + s_k ρ_k/2)` (proximal): products with the rates, no difference of phases.
//! The f64 references are [`crate::nested::global`]'s (per-sample QPs for convex CHL,
//! block-coordinate descent on the difference for CHL).

use nalgebra::{DMatrix, RealField};

use super::fixed_point::FixedPoint;
use super::rules;
use super::settings::{finite, Sweeps, Tally};
use super::top_down::first_layer;
use super::workspace::InferenceWorkspace;
use crate::error::{Error, Result};
use crate::linalg::{vectorized, ColsMut, Gemm, Lanes, Threads, LANES};
use crate::nested::linearized::Gradients;
use crate::nested::{add_bias, add_bias_to_columns, EnergyKind, OutputLoss};

/// Free phase, then the rates, then value and gradient (module docs).
pub(super) fn run<T: Gemm>(
    p: &Sweeps<'_, T>,
    ws: &mut InferenceWorkspace<T>,
    grads: &mut Gradients<T>,
) -> Result<Tally<T>> {
    let (net, loss, target) = (p.net, p.loss, p.target);
    let top = net.layers.len() - 1;
    first_layer(net, p.x, ws);
    for k in 0..=top {
        if k > 0 {
            affine(&ws.threads, net, k, &ws.z[k - 1], &mut ws.a[k]);
        }
        activate(net, k, &ws.a[k], &mut ws.z[k]);
    }
    ws.forward_top.copy_from(&ws.z[top]);
    let forward_loss = loss.value_and_gradient(&ws.z[top], target, &mut ws.loss_grad);
    finite(
        forward_loss,
        "loss of the forward pass (non-finite weights or inputs?)",
    )?;
    block_steps(p, ws)?;
    let mut free = FixedPoint::new(p.settings);
    if p.kind == EnergyKind::Proximal {
        // Plain projected Gauss–Seidel: a descent method (module docs). Mixing states would
        // leave `a_{k+1}` behind `z_k` and the step without its guarantee.
        (free.anderson, free.min_damping) = (false, T::one());
    }
    while free.sweeps < p.settings.inference_max_sweeps {
        free_sweep(p, ws);
        check_bounded(p.kind, &ws.next, free.sweeps)?;
        if free.advance(&mut ws.z, &ws.next, (&mut ws.memory, &ws.threads), T::one()) {
            break;
        }
    }
    free_arguments(p, ws);
    let (value, clamped) = clamped_phase(p, ws, grads)?;
    let mut report = clamped.tally(value, forward_loss);
    report.sweeps += free.sweeps;
    report.converged &= free.converged;
    report.residual = report.residual.max(free.residual);
    if p.settings.centered {
        // The −β phase: only the loss's β changes sign, i.e. every s_k (module docs).
        let mut mirrored = ws.mirrored.take().unwrap_or_else(|| Gradients::zeros(net));
        ws.sigma.iter_mut().for_each(|s| *s = -*s);
        free_arguments(p, ws);
        let other = clamped_phase(p, ws, &mut mirrored);
        ws.sigma.iter_mut().for_each(|s| *s = -*s);
        let (other_value, other_phase) = other?;
        let half: T = nalgebra::convert(0.5);
        for (g, m) in grads.w.iter_mut().zip(&mirrored.w) {
            g.zip_apply(m, |a, b| *a = half * (*a + b));
        }
        for (g, m) in grads.bias.iter_mut().zip(&mirrored.bias) {
            g.zip_apply(m, |a, b| *a = half * (*a + b));
        }
        ws.mirrored = Some(mirrored);
        report.value = half * (value + other_value);
        report.sweeps += other_phase.sweeps;
        report.converged &= other_phase.converged;
        report.residual = report.residual.max(other_phase.residual);
    }
    Ok(report)
}

/// The rates by top-down sweeps from zero, then the value and gradient at them.
fn clamped_phase<T: Gemm>(
    p: &Sweeps<'_, T>,
    ws: &mut InferenceWorkspace<T>,
    grads: &mut Gradients<T>,
) -> Result<(T, FixedPoint<T>)> {
    ws.lambda.iter_mut().for_each(|u| u.fill(T::zero()));
    top_rate_step(p, ws);
    let mut clamped = FixedPoint::new(p.settings);
    while clamped.sweeps < p.settings.inference_max_sweeps {
        rate_sweep(p, ws)?;
        if clamped.advance(
            &mut ws.lambda,
            &ws.next,
            (&mut ws.memory, &ws.threads),
            T::one(),
        ) {
            break;
        }
    }
    let value = value_and_gradient(p, ws, grads);
    finite(value, "surrogate value (diverged inference)")?;
    Ok((value, clamped))
}

/// `y += α x` (inlined into the vectorized passes).
#[inline(always)]
fn axpy<T: RealField + Copy>(y: &mut [T], alpha: T, x: &[T]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// `out = W_k z + b_k`.
fn affine<T: Gemm>(
    threads: &Threads,
    net: &crate::nested::Network<T>,
    k: usize,
    z: &DMatrix<T>,
    out: &mut DMatrix<T>,
) {
    threads.gemm(out, &net.layers[k].w, false, z, false);
    add_bias(out, &net.layers[k].bias);
}

/// `out = f_k(u)` (box family).
fn activate<T: RealField + Copy>(
    net: &crate::nested::Network<T>,
    k: usize,
    u: &DMatrix<T>,
    out: &mut DMatrix<T>,
) {
    net.layers[k]
        .activation
        .activate(u.as_slice(), out.as_mut_slice());
}

/// The joint energy of CHL is bilinear in adjacent layers and unbounded below for large β
/// (roughly `β_k ‖W_{k+1}‖² ≥ 1`): states beyond `1e12` are divergence. Convex CHL's energy is
/// a sum of squares and its sweeps descend, so only a non-finite state (data beyond `T`'s range)
/// is an error there.
fn check_bounded<T: RealField + Copy>(
    kind: EnergyKind,
    next: &[DMatrix<T>],
    sweep: usize,
) -> Result<()> {
    // Proximal energies: only a non-finite state is an error (`v.abs() > ∞` is never true).
    let limit: T = nalgebra::convert(if kind == EnergyKind::Proximal {
        f64::INFINITY
    } else {
        1e12
    });
    for z in next {
        // A fold (no early exit) vectorizes.
        let beyond = |acc: bool, &v: &T| acc | !v.is_finite() | (v.abs() > limit);
        if !vectorized(
            #[inline(always)]
            || z.as_slice().iter().fold(false, beyond),
        ) {
            continue;
        }
        return Err(if kind == EnergyKind::Proximal {
            Error::NonFinite {
                what: format!(
                    "convex CHL's free-phase states at sweep {} (weights or inputs beyond the \
                     floating-point range)",
                    sweep + 1
                ),
            }
        } else {
            Error::Unbounded(format!(
                "the free phase diverged at sweep {} (states beyond 1e12): the energy is \
                 unbounded below for this beta and these weights",
                sweep + 1
            ))
        });
    }
    Ok(())
}

/// `r_{k+1}` into `q[k+1]`: `z_{k+1}` (Fenchel) or `z_{k+1} − a_{k+1}` (proximal), cut over
/// the team by columns.
fn residual_above<T: Gemm>(kind: EnergyKind, k: usize, ws: &mut InferenceWorkspace<T>) {
    let (z, a) = (ws.z[k + 1].as_slice(), ws.a[k + 1].as_slice());
    if kind != EnergyKind::Proximal {
        ws.q[k + 1].copy_from(&ws.z[k + 1]);
        return;
    }
    let (cols, rows) = (ws.forward_top.ncols(), ws.a[k + 1].nrows());
    let out = ColsMut::of(&mut ws.q[k + 1]);
    ws.threads.columns(cols, rows, out, &|c, out| {
        let r = c.start * rows..c.end * rows;
        let (z, a) = (&z[r.clone()], &a[r]);
        vectorized(
            #[inline(always)]
            || {
                for ((o, &zi), &ai) in out.iter_mut().zip(z).zip(a) {
                    *o = zi - ai;
                }
            },
        );
    });
}

/// One bottom-up Gauss–Seidel sweep of the free phase into `next`.
fn free_sweep<T: Gemm>(p: &Sweeps<'_, T>, ws: &mut InferenceWorkspace<T>) {
    let top = p.net.layers.len() - 1;
    for k in 0..=top {
        if k > 0 {
            let w = &p.net.layers[k].w;
            ws.threads
                .gemm(&mut ws.a[k], w, false, &ws.next[k - 1], false);
        }
        free_argument(p, k, ws, k > 0, true);
    }
}

/// `ǔ_k = a_k + β_k W_{k+1}ᵀ r_{k+1}` from the current `z_{k+1}` and `a_{k+1}` (top: `a_L`),
/// after adding the bias to `a_k` when `bias`; with `activate`, the new state `f(ǔ_k)` into
/// `next[k]`. The element-wise part is cut over the team by columns.
fn free_argument<T: Gemm>(
    p: &Sweeps<'_, T>,
    k: usize,
    ws: &mut InferenceWorkspace<T>,
    bias: bool,
    activate: bool,
) {
    let above = k + 1 < p.net.layers.len();
    if above {
        residual_above(p.kind, k, ws);
        let w = &p.net.layers[k + 1].w;
        ws.threads
            .gemm(&mut ws.arg[k], w, true, &ws.q[k + 1], false);
    }
    let layer = &p.net.layers[k];
    let (rows, beta, act) = (layer.w.nrows(), p.betas[k], layer.activation);
    let bias = if bias { layer.bias.as_slice() } else { &[] };
    let cols = ws.forward_top.ncols();
    // Convex CHL's block step below the top: f(z_k + t_k(ǔ_k − z_k)) (module docs).
    let step = if above { ws.steps[k] } else { T::one() };
    let (lo, hi) = rules::bounds::<T>(act);
    let z = ws.z[k].as_slice();
    let parts = (
        ColsMut::of(&mut ws.a[k]),
        ColsMut::of(&mut ws.arg[k]),
        activate.then(|| ColsMut::of(&mut ws.next[k])),
    );
    ws.threads.columns(cols, rows, parts, &|c, (a, arg, next)| {
        let z = &z[c.start * rows..c.end * rows];
        vectorized(
            #[inline(always)]
            || {
                add_bias_to_columns(a, bias);
                if above {
                    for (u, &a) in arg.iter_mut().zip(&*a) {
                        *u = a + beta * *u;
                    }
                } else {
                    arg.copy_from_slice(a);
                }
                match next {
                    Some(next) if step != T::one() => {
                        for ((o, &u), &zi) in next.iter_mut().zip(&*arg).zip(z) {
                            *o = rules::clamp(zi + step * (u - zi), lo, hi);
                        }
                    }
                    Some(next) => act.activate(arg, next),
                    None => {}
                }
            },
        );
    });
}

/// Convex CHL's block steps (module docs) into `ws.steps`: `t_k = 2/(2 + m β_k ℓ̂_{k+1})`
/// below the top, `ℓ̂_{k+1}` the power-iteration estimate of `‖W_{k+1}‖₂²` and `m` the
/// settings' `lipschitz_margin`; 1 at the top (set per phase by [`top_rate_step`]) and for
/// CHL.
fn block_steps<T: Gemm>(p: &Sweeps<'_, T>, ws: &mut InferenceWorkspace<T>) -> Result<()> {
    ws.steps.fill(T::one());
    if p.kind != EnergyKind::Proximal {
        return Ok(());
    }
    let (two, margin): (T, T) = (
        nalgebra::convert(2.0),
        nalgebra::convert(p.settings.lipschitz_margin),
    );
    for k in 0..p.net.layers.len() - 1 {
        let (x, y) = &mut ws.power[k + 1];
        let norm = crate::linalg::spectral_norm_sq_in(
            &p.net.layers[k + 1].w,
            p.settings.inference_power_iterations,
            (x, y),
        );
        let coupling = margin * p.betas[k] * norm;
        finite(coupling, "beta times the squared norm of a weight matrix")?;
        ws.steps[k] = two / (two + coupling);
    }
    Ok(())
}

/// Convex CHL's step of the top block in a clamped phase: `2/(2 + |s_L| h)`, `h` the loss's
/// curvature bound per sample (1 for the squared loss, `½ max_j Σ_i t_ij` for softmax
/// cross-entropy); 1 for CHL.
fn top_rate_step<T: Gemm>(p: &Sweeps<'_, T>, ws: &mut InferenceWorkspace<T>) {
    let top = p.net.layers.len() - 1;
    ws.steps[top] = T::one();
    if p.kind != EnergyKind::Proximal {
        return;
    }
    let two: T = nalgebra::convert(2.0);
    let h = match p.loss {
        OutputLoss::Squared => T::one(),
        OutputLoss::SoftmaxCrossEntropy => {
            p.target
                .column_iter()
                .map(|c| c.sum())
                .fold(T::zero(), |a, b| a.max(b.abs()))
                / two
        }
    };
    ws.steps[top] = two / (two + ws.sigma[top].abs() * h);
}

/// `ǎ_k` and `ǔ_k` consistent with the final free states `ž`.
fn free_arguments<T: Gemm>(p: &Sweeps<'_, T>, ws: &mut InferenceWorkspace<T>) {
    let top = p.net.layers.len() - 1;
    for k in 1..=top {
        affine(&ws.threads, p.net, k, &ws.z[k - 1], &mut ws.a[k]);
    }
    for k in 0..=top {
        free_argument(p, k, ws, false, false);
    }
}

/// One top-down Gauss–Seidel sweep of the rates `u` (in `lambda`) into `next`: the coupling
/// from above is `O(1)` and the one from below `O(β)`, so the top's signal reaches every layer
/// in one sweep, as in back-propagation (and the rates converge in a few sweeps for small β).
fn rate_sweep<T: Gemm>(p: &Sweeps<'_, T>, ws: &mut InferenceWorkspace<T>) -> Result<()> {
    let (net, top) = (p.net, p.net.layers.len() - 1);
    let batch: T = nalgebra::convert(ws.batch() as f64);
    clamped_state(ws, top);
    let value = p
        .loss
        .value_and_gradient(&ws.zhat[top], p.target, &mut ws.loss_grad);
    finite(value, "loss at the clamped states (diverged inference)")?;
    for k in (0..=top).rev() {
        // v_k: from above, W_{k+1}ᵀ ρ_{k+1} with this sweep's u_{k+1} (ρ in zhat[k+1] as
        // scratch), or −ℓ' at the top …
        if k < top {
            rate_residual(p, k + 1, ws);
            ws.threads.gemm(
                &mut ws.q[k],
                &net.layers[k + 1].w,
                true,
                &ws.zhat[k + 1],
                false,
            );
        } else {
            ws.q[k].copy_from(&ws.loss_grad);
            ws.q[k] *= -batch;
        }
        // … plus β_{k−1} W_k u_{k−1} from below (the previous sweep's u_{k−1}).
        let below = k > 0;
        if below {
            let w = &net.layers[k].w;
            ws.threads
                .gemm(&mut ws.zhat[k], w, false, &ws.lambda[k - 1], false);
        }
        // u_k = (f(ǔ + s v) − f(ǔ))/s = −D_s f(ǔ)[−v], cut over the team by columns.
        let (rows, act, s) = (
            net.layers[k].w.nrows(),
            net.layers[k].activation,
            ws.sigma[k],
        );
        let beta_below = if below { p.betas[k - 1] } else { T::zero() };
        let (arg, wu) = (ws.arg[k].as_slice(), ws.zhat[k].as_slice());
        let (step, rate, (lo, hi)) = (ws.steps[k], ws.lambda[k].as_slice(), rules::bounds(act));
        let cols = ws.forward_top.ncols();
        let parts = (ColsMut::of(&mut ws.q[k]), ColsMut::of(&mut ws.next[k]));
        ws.threads.columns(cols, rows, parts, &|c, (v, u)| {
            let r = c.start * rows..c.end * rows;
            let (arg, wu, rate) = (&arg[r.clone()], &wu[r.clone()], &rate[r]);
            vectorized(
                #[inline(always)]
                || {
                    if below {
                        axpy(v, beta_below, wu);
                    }
                    if step != T::one() {
                        // Convex CHL's block step: the argument ǔ + s((1 − t)(u + g/s) + t v),
                        // g = f(ǔ) − ǔ (exactly 0 inside the box).
                        let keep = T::one() - step;
                        for ((vi, &a), &ui) in v.iter_mut().zip(arg).zip(rate) {
                            let g = rules::clamp(a, lo, hi) - a;
                            *vi = keep * (ui + g / s) + step * *vi;
                        }
                    }
                    v.iter_mut().for_each(|x| *x = -*x);
                    act.difference_quotient(arg, v, s, u);
                    u.iter_mut().for_each(|x| *x = -*x);
                },
            );
        });
    }
    Ok(())
}

/// `ẑ_k = ž_k + s_k u_k` into `zhat[k]`.
fn clamped_state<T: RealField + Copy>(ws: &mut InferenceWorkspace<T>, k: usize) {
    ws.zhat[k].copy_from(&ws.z[k]);
    let (zhat, s, u) = (
        ws.zhat[k].as_mut_slice(),
        ws.sigma[k],
        ws.lambda[k].as_slice(),
    );
    vectorized(
        #[inline(always)]
        || axpy(zhat, s, u),
    );
}

/// `ρ_k` into `zhat[k]` (scratch) from this sweep's `u_k` (in `next`) and the previous
/// sweep's `u_{k−1}`: `u_k` (Fenchel) or `u_k − β_{k−1} W_k u_{k−1}` (proximal).
fn rate_residual<T: Gemm>(p: &Sweeps<'_, T>, k: usize, ws: &mut InferenceWorkspace<T>) {
    if p.kind == EnergyKind::Proximal && k > 0 {
        ws.threads.gemm(
            &mut ws.zhat[k],
            &p.net.layers[k].w,
            false,
            &ws.lambda[k - 1],
            false,
        );
        let (beta, rows) = (p.betas[k - 1], p.net.layers[k].w.nrows());
        let (cols, u) = (ws.forward_top.ncols(), ws.next[k].as_slice());
        ws.threads
            .columns(cols, rows, ColsMut::of(&mut ws.zhat[k]), &|c, rho| {
                let u = &u[c.start * rows..c.end * rows];
                vectorized(
                    #[inline(always)]
                    || {
                        for (r, &u) in rho.iter_mut().zip(u) {
                            *r = u - beta * *r;
                        }
                    },
                );
            });
    } else {
        ws.zhat[k].copy_from(&ws.next[k]);
    }
}

/// The surrogate's batch-mean value and the envelope gradient (module docs) at the rates.
fn value_and_gradient<T: Gemm>(
    p: &Sweeps<'_, T>,
    ws: &mut InferenceWorkspace<T>,
    grads: &mut Gradients<T>,
) -> T {
    let (net, top) = (p.net, p.net.layers.len() - 1);
    let batch: T = nalgebra::convert(ws.batch() as f64);
    let scale = -T::one() / batch;
    let half: T = nalgebra::convert(0.5);
    let mut value = T::zero();
    for k in (0..=top).rev() {
        // P_k into q[k]; W_k u_{k−1} into arg[k] (ǔ_k is not needed any more; no layer below
        // the first: zero).
        if k > 0 {
            ws.threads.gemm(
                &mut ws.arg[k],
                &net.layers[k].w,
                false,
                &ws.lambda[k - 1],
                false,
            );
        } else {
            ws.arg[0].fill(T::zero());
        }
        ws.q[k].copy_from(&ws.lambda[k]);
        let beta_below = if k > 0 { p.betas[k - 1] } else { T::zero() };
        let (s, kind) = (ws.sigma[k], p.kind);
        // One unit's term of the value; proximal energies also turn u into ρ in place.
        let term = |u: &mut T, zf: T, af: T, wu: T| match kind {
            EnergyKind::Proximal => {
                let rho = *u - beta_below * wu;
                *u = rho;
                rho * ((zf - af) + half * s * rho)
            }
            _ => {
                // â_k = ǎ_k + s_{k−1} W_k u_{k−1}, s_{k−1} = β_{k−1} s_k.
                let a_hat = af + beta_below * s * wu;
                *u * (zf + half * s * *u - a_hat) - beta_below * zf * wu
            }
        };
        let q = ws.q[k].as_mut_slice();
        let (z, a, wu) = (ws.z[k].as_slice(), ws.a[k].as_slice(), ws.arg[k].as_slice());
        value += vectorized(
            #[inline(always)]
            || {
                let mut acc = Lanes::<T>::zero();
                let full = q.len() / LANES * LANES;
                let (q_full, q_rest) = q.split_at_mut(full);
                let chunks = q_full.chunks_exact_mut(LANES).zip(z.chunks_exact(LANES));
                let chunks = chunks
                    .zip(a.chunks_exact(LANES))
                    .zip(wu.chunks_exact(LANES));
                for (((qs, zs), as_), ws_) in chunks {
                    for l in 0..LANES {
                        acc.0[l] += term(&mut qs[l], zs[l], as_[l], ws_[l]);
                    }
                }
                let rest = q_rest.iter_mut().zip(&z[full..]).zip(&a[full..]);
                for (l, (((qi, &zi), &ai), &wi)) in rest.zip(&wu[full..]).enumerate() {
                    acc.0[l] += term(qi, zi, ai, wi);
                }
                acc.total()
            },
        );
        gradient_of_layer(p, k, ws, grads, scale);
    }
    clamped_state(ws, top);
    value / batch
        + p.loss
            .value_and_gradient(&ws.zhat[top], p.target, &mut ws.loss_grad)
}

/// `∂/∂W_k = −(P_k ẑ_{k−1}ᵀ + β_{k−1} Q_k u_{k−1}ᵀ)/B` as one product of the side-by-side
/// buffers, `∂/∂b_k = −P_k 1/B` (`P_k` in `q[k]`).
fn gradient_of_layer<T: Gemm>(
    p: &Sweeps<'_, T>,
    k: usize,
    ws: &mut InferenceWorkspace<T>,
    grads: &mut Gradients<T>,
    scale: T,
) {
    let b = ws.batch();
    grads.bias[k].fill(T::zero());
    for col in ws.q[k].column_iter() {
        grads.bias[k] += col;
    }
    grads.bias[k] *= scale;
    if k == 0 {
        ws.q[0] *= scale;
        ws.threads.gemm(&mut grads.w[0], &ws.q[0], false, p.x, true);
        return;
    }
    let beta = p.betas[k - 1];
    let (left, right) = (&mut ws.left[k], &mut ws.right[k]);
    ws.q[k] *= scale;
    left.columns_mut(0, b).copy_from(&ws.q[k]);
    {
        let mut q = left.columns_mut(b, b);
        q.copy_from(&ws.z[k]);
        if p.kind == EnergyKind::Proximal {
            q -= &ws.a[k];
        }
        q *= beta * scale;
    }
    // ẑ_{k−1} = ž_{k−1} + s_{k−1} u_{k−1} (the first B columns: a contiguous slice).
    right.columns_mut(0, b).copy_from(&ws.z[k - 1]);
    let n = ws.z[k - 1].len();
    let (zhat, s, u) = (
        &mut right.as_mut_slice()[..n],
        ws.sigma[k - 1],
        ws.lambda[k - 1].as_slice(),
    );
    vectorized(
        #[inline(always)]
        || axpy(zhat, s, u),
    );
    right.columns_mut(b, b).copy_from(&ws.lambda[k - 1]);
    ws.threads.gemm(&mut grads.w[k], left, false, right, true);
}
