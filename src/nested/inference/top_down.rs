//! The top-down rows (MAC, predictive coding, LPOM; Prop. 5): sweeps on the error signals `λ`
//! from the forward pass (module docs of [`super`]), and the value and envelope gradient at
//! their states.

use nalgebra::{DMatrix, RealField};

use super::fixed_point::FixedPoint;
use super::kinks::KinkState;
use super::rules::{bounds, clamp, signal};
use super::settings::{finite, Sweeps, Tally};
use super::workspace::{copy_all, InferenceWorkspace};
use crate::error::Result;
use crate::linalg::{lane_sum2, vectorized, ColsMut, Gemm, LayerCols, LayersMut};
use crate::nested::linearized::Gradients;
use crate::nested::{add_bias, add_bias_to_columns, EnergyKind, Network};

/// The top-down rows (module docs): sweeps on `λ` from the forward pass.
pub(super) fn top_down<T: Gemm>(
    p: &Sweeps<'_, T>,
    ws: &mut InferenceWorkspace<T>,
    grads: &mut Gradients<T>,
) -> Result<Tally<T>> {
    let (net, kind, loss, target) = (p.net, p.kind, p.loss, p.target);
    ws.lambda.iter_mut().for_each(|l| l.fill(T::zero()));
    first_layer(net, p.x, ws);
    forward(net, kind, ws);
    if kind == EnergyKind::Penalizer {
        ws.kinks.reset(net, &ws.a);
    }
    let top = net.layers.len() - 1;
    ws.forward_top.copy_from(&ws.z[top]);
    let forward_loss = loss.value_and_gradient(&ws.z[top], target, &mut ws.next[top]);
    finite(
        forward_loss,
        "loss of the forward pass (non-finite weights or inputs?)",
    )?;
    let batch: T = nalgebra::convert(ws.batch() as f64);
    let mut fp = FixedPoint::new(p.settings);
    // The lowest objective seen and its signals (λ = 0, the forward pass, to begin with).
    let mut best = forward_loss;
    ws.best.iter_mut().for_each(|l| l.fill(T::zero()));
    while fp.sweeps < p.settings.inference_max_sweeps {
        if fp.sweeps > 0 {
            forward(net, kind, ws);
            let value = loss.value_and_gradient(&ws.z[top], target, &mut ws.next[top]);
            finite(value, "loss at the inference states (diverged inference)")?;
            let objective = value + layer_terms(p, ws);
            if objective < best {
                best = objective;
                copy_all(&mut ws.best, &ws.lambda);
            }
        }
        backward(p, ws);
        if fp.advance(
            &mut ws.lambda,
            &ws.next,
            (&mut ws.memory, &ws.threads),
            batch,
        ) {
            break;
        }
    }
    forward(net, kind, ws);
    let mut value = surrogate_value(p, ws);
    let mut report = fp.tally(value, forward_loss);
    if !fp.converged && (!value.is_finite() || value > best) {
        // Unconverged and worse than an earlier iterate (or than the forward pass): that one is
        // the better upper bound of L^β and the point the gradient is taken at.
        copy_all(&mut ws.lambda, &ws.best);
        forward(net, kind, ws);
        value = surrogate_value(p, ws);
        report.value = value;
        report.best_iterate = true;
    }
    finite(
        value,
        "surrogate value at the inference states (diverged inference)",
    )?;
    envelope_gradient(p, ws, grads);
    Ok(report)
}

/// `â_1 = W_1 x + b_1`, the one product the sweeps never repeat.
pub(super) fn first_layer<T: Gemm>(
    net: &Network<T>,
    x: &DMatrix<T>,
    ws: &mut InferenceWorkspace<T>,
) {
    ws.threads
        .gemm(&mut ws.a[0], &net.layers[0].w, false, x, false);
    add_bias(&mut ws.a[0], &net.layers[0].bias);
}

/// The states at the current `λ`: `â_k = W_k ẑ_{k−1} + b_k` for `k ≥ 2` (`â_1` is fixed), then
/// `ẑ_k = f(â_k) − σ_k B λ_k` (penalizer) or `f(â_k − σ_k B λ_k)` (Fenchel), the element-wise
/// part cut over the team by columns.
fn forward<T: Gemm>(net: &Network<T>, kind: EnergyKind, ws: &mut InferenceWorkspace<T>) {
    let cols = ws.batch();
    let batch: T = nalgebra::convert(cols as f64);
    for (k, layer) in net.layers.iter().enumerate() {
        if k > 0 {
            ws.threads
                .gemm(&mut ws.a[k], &layer.w, false, &ws.z[k - 1], false);
        }
        let rows = layer.w.nrows();
        let bias = if k > 0 { layer.bias.as_slice() } else { &[] };
        let (lo, hi) = bounds::<T>(layer.activation);
        let s = ws.sigma[k] * batch;
        let lambda = ws.lambda[k].as_slice();
        let parts = (ColsMut::of(&mut ws.a[k]), ColsMut::of(&mut ws.z[k]));
        ws.threads.columns(cols, rows, parts, &|c, (a, z)| {
            let lambda = &lambda[c.start * rows..c.end * rows];
            vectorized(
                #[inline(always)]
                || {
                    add_bias_to_columns(a, bias);
                    match kind {
                        EnergyKind::Penalizer => {
                            for ((zi, &ai), &li) in z.iter_mut().zip(&*a).zip(lambda) {
                                *zi = clamp(ai, lo, hi) - s * li;
                            }
                        }
                        _ => {
                            for ((zi, &ai), &li) in z.iter_mut().zip(&*a).zip(lambda) {
                                *zi = clamp(ai - s * li, lo, hi);
                            }
                        }
                    }
                },
            );
        });
    }
}

/// One backward sweep at the current states into `next` (`next[L]` already holds `ℓ'(ẑ_L)`):
/// `next_{k−1} = W_kᵀ q_k(next_k)`, the signals (and kinks) cut over the team by columns.
fn backward<T: Gemm>(p: &Sweeps<'_, T>, ws: &mut InferenceWorkspace<T>) {
    let (net, kind, betas) = (p.net, p.kind, p.betas);
    let batch: T = nalgebra::convert(ws.batch() as f64);
    let cols = ws.batch();
    for k in (1..net.layers.len()).rev() {
        let act = net.layers[k].activation;
        let rows = net.layers[k].w.nrows();
        let (lower, upper) = ws.next.split_at_mut(k);
        let (a, lambda) = (ws.a[k].as_slice(), upper[0].as_slice());
        let quotient_beta = betas[k] * batch;
        let (kinks, held) = match kind {
            EnergyKind::Penalizer => {
                let (rule, state) = ws.kinks.layer(k, act);
                (Some(rule), Some(state))
            }
            _ => (None, None),
        };
        let step = ws.sigma[k - 1] * batch;
        let parts = (ColsMut::of(&mut ws.q[k]), held);
        ws.threads.columns(cols, rows, parts, &|c, (q, held)| {
            let r = c.start * rows..c.end * rows;
            let (a, lambda) = (&a[r.clone()], &lambda[r]);
            vectorized(
                #[inline(always)]
                || signal(kind, act, quotient_beta, (a, lambda), q),
            );
            if let (Some(kinks), Some((held, nu, prev_a))) = (&kinks, held) {
                let state = KinkState { held, nu, prev_a };
                kinks.hold(step, (a, lambda), q, state);
            }
        });
        ws.threads
            .gemm(&mut lower[k - 1], &net.layers[k].w, true, &ws.q[k], false);
    }
}

/// Eq. 28 averaged over the batch at the current states: `ℓ(ẑ_L) + Σ_k Ẽ_k/σ_k` with
/// `Ẽ_k/σ_k = (σ_k/2)‖ρ‖²` per sample for penalizer energies (`ρ = Bλ`) and, per unit,
/// `(β/2)Q² + Q(â − f(â))` for Fenchel ones (`Q = (f(â) − ẑ)/β`, the Bregman gap of `G`).
fn surrogate_value<T: Gemm>(p: &Sweeps<'_, T>, ws: &mut InferenceWorkspace<T>) -> T {
    let top = p.net.layers.len() - 1;
    let value = p
        .loss
        .value_and_gradient(&ws.z[top], p.target, &mut ws.next[top]);
    value + layer_terms(p, ws)
}

/// `Σ_k Ẽ_k/σ_k` of [`surrogate_value`] (uses `q` as scratch): per sample (cut over the team
/// by samples), each layer's sum through [`Lanes`], then added up over the samples in order.
fn layer_terms<T: Gemm>(p: &Sweeps<'_, T>, ws: &mut InferenceWorkspace<T>) -> T {
    let (net, kind, betas) = (p.net, p.kind, p.betas);
    let batch: T = nalgebra::convert(ws.batch() as f64);
    let (cols, rows) = (ws.batch(), ws.a.iter().map(DMatrix::nrows).sum());
    let terms = LayerTerms {
        net,
        kind,
        betas,
        batch,
        a: &ws.a,
        lambda: &ws.lambda,
        sigma: &ws.sigma,
    };
    let parts = (ColsMut::new(&mut ws.terms, 1), LayersMut::of(&mut ws.q));
    ws.threads.columns(cols, rows, parts, &|c, (out, mut q)| {
        vectorized(
            #[inline(always)]
            || {
                for (jj, out) in out.iter_mut().enumerate() {
                    *out = terms.sample(c.start + jj, jj, &mut q);
                }
            },
        );
    });
    ws.terms.iter().fold(T::zero(), |sum, &t| sum + t)
}

/// What [`layer_terms`] reads: the network, the energy, the states' `â`, `λ` and `σ`.
struct LayerTerms<'a, T: RealField + Copy> {
    net: &'a Network<T>,
    kind: EnergyKind,
    betas: &'a [T],
    batch: T,
    a: &'a [DMatrix<T>],
    lambda: &'a [DMatrix<T>],
    sigma: &'a [T],
}

impl<T: RealField + Copy> LayerTerms<'_, T> {
    /// `Σ_k Ẽ_k/σ_k` of sample `j`, column `jj` of the piece's scratch `q`.
    #[inline(always)]
    fn sample(&self, j: usize, jj: usize, q: &mut LayerCols<'_, T>) -> T {
        let half: T = nalgebra::convert(0.5);
        let mut term = T::zero();
        for (k, layer) in self.net.layers.iter().enumerate() {
            let rows = self.a[k].nrows();
            let r = j * rows..(j + 1) * rows;
            let s = self.sigma[k] * self.batch;
            let l = &self.lambda[k].as_slice()[r.clone()];
            term += match self.kind {
                EnergyKind::Penalizer => half * s * lane_sum2(l, l, |x, y| x * y),
                _ => {
                    let a = &self.a[k].as_slice()[r];
                    let q = &mut q.layer(k)[jj * rows..(jj + 1) * rows];
                    let act = layer.activation;
                    signal(self.kind, act, self.betas[k] * self.batch, (a, l), q);
                    let (lo, hi) = bounds::<T>(act);
                    lane_sum2(q, a, |q, a| half * s * q * q + q * (a - clamp(a, lo, hi)))
                }
            };
        }
        term
    }
}

/// The envelope gradient at the states: `∂/∂W_k = q_k(λ_k) ẑ_{k−1}ᵀ`, `∂/∂b_k = q_k 1`.
fn envelope_gradient<T: Gemm>(
    p: &Sweeps<'_, T>,
    ws: &mut InferenceWorkspace<T>,
    grads: &mut Gradients<T>,
) {
    let x = p.x;
    let (net, kind, betas) = (p.net, p.kind, p.betas);
    let batch: T = nalgebra::convert(ws.batch() as f64);
    for (k, layer) in net.layers.iter().enumerate() {
        let (a, lambda, q) = (
            ws.a[k].as_slice(),
            ws.lambda[k].as_slice(),
            ws.q[k].as_mut_slice(),
        );
        let quotient_beta = betas[k] * batch;
        vectorized(
            #[inline(always)]
            || signal(kind, layer.activation, quotient_beta, (a, lambda), q),
        );
        if kind == EnergyKind::Penalizer && k > 0 {
            ws.kinks.substitute(k, &mut ws.q[k]);
        }
        let input = if k == 0 { x } else { &ws.z[k - 1] };
        ws.threads
            .gemm(&mut grads.w[k], &ws.q[k], false, input, true);
        grads.bias[k].fill(T::zero());
        for col in ws.q[k].column_iter() {
            grads.bias[k] += col;
        }
    }
}
