//! Prop. 5: the local (layer-wise) contrastive objective, top-down (Eq. 26-30),
//! ```text
//!     L_LC^β(θ) = min_{z_1..z_L} ℓ(z_L) + Σ_k (1/β_k) Ẽ_k(z_k, z_{k−1}),
//!     Ẽ_k(z_k, z_{k−1}) = E_k(z_k, z_{k−1}) − min_{z'} E_k(z', z_{k−1})          (Eq. 27)
//! ```
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
//!   Minimized by block-coordinate descent over layers, each block the convex problem of Eq. 35
//!   solved by accelerated proximal gradient (FISTA with restarts): projection for box-family
//!   activations, the entropy prox for softmax layers (`G = Σ z log z`, `G* = log Σ e^u`, the
//!   soft-arg-max layer of Section 3.2.2 that the original LPOM cannot express). Gradient:
//!   `∂_{W_k} = (1/β_k)(f(a_k) − ẑ_k) ẑ_{k−1}ᵀ`.
//!
//! The batch loss is the mean over samples, as everywhere in [`crate::nested`].
//!
//! # Known limitation (MAC)
//! The penalizer objective is non-smooth where a ReLU pre-activation crosses 0. At a *convex*
//! kink (a unit whose target `z_k` is negative) the minimizer can sit exactly on the kink; the
//! gradient then never vanishes and the solver reports [`Error::NotConverged`] with its residual
//! instead of a number. This happens for larger β (seen at β ≥ 1e-2 on random 5-4-3-2 ReLU
//! networks); for small β the minimizer stays on the forward pass's linear pieces. An
//! active-set treatment of the kinks is the planned fix.

use nalgebra::{DMatrix, DVector};

use super::linearized::{check_betas, Gradients};
use super::{EnergyKind, Network, OutputLoss};
use crate::error::{Error, Result};
use crate::prox::Activation;
use crate::solve::smooth::{minimize, SmoothObjective, SmoothSettings};

/// The minimizer of Eq. 28 for one batch, with the surrogate value and diagnostics.
#[derive(Debug, Clone)]
#[must_use]
pub struct LocalSolution {
    /// `ẑ_1..ẑ_L` (`n_k × B`).
    pub z: Vec<DMatrix<f64>>,
    /// `L_LC^β(θ)` (batch mean of the per-sample objective).
    pub value: f64,
    /// The θ-gradient.
    pub grad: Gradients<f64>,
    /// Iterations summed over samples (L-BFGS + Newton, or BCD sweeps × inner steps).
    pub iterations: usize,
    /// Largest final optimality residual over samples.
    pub residual: f64,
}

fn affine(net: &Network<f64>, k: usize, input: &DVector<f64>) -> DVector<f64> {
    &net.layers[k].w * input + &net.layers[k].b
}

fn act(a: Activation, u: &DVector<f64>) -> DVector<f64> {
    let mut out = u.clone();
    a.activate(u.as_slice(), out.as_mut_slice());
    out
}

fn deriv(a: Activation, u: &DVector<f64>) -> DVector<f64> {
    let mut out = u.clone();
    a.derivative(u.as_slice(), out.as_mut_slice());
    out
}

/// Per-sample loss value, gradient and Hessian, scaled by `w = 1/B`.
fn sample_loss(
    loss: OutputLoss,
    z: &DVector<f64>,
    t: &DVector<f64>,
    w: f64,
) -> (f64, DVector<f64>, DMatrix<f64>) {
    match loss {
        OutputLoss::Squared => (
            w * 0.5 * (z - t).norm_squared(),
            (z - t) * w,
            DMatrix::identity(z.len(), z.len()) * w,
        ),
        OutputLoss::SoftmaxCrossEntropy => {
            let lse = crate::prox::log_sum_exp(z.as_slice());
            let p = z.map(|v| (v - lse).exp());
            let mass = t.sum();
            let value = -t
                .iter()
                .zip(z.iter())
                .map(|(ti, zi)| ti * (zi - lse))
                .sum::<f64>();
            let hess = (DMatrix::from_diagonal(&p) - &p * p.transpose()) * (w * mass);
            (w * value, (&p * mass - t) * w, hess)
        }
    }
}

/// The penalizer (MAC / predictive coding) objective of one sample in the stacked variable
/// `(z_1; …; z_L)`.
struct Penalizer<'a> {
    net: &'a Network<f64>,
    betas: &'a [f64],
    loss: OutputLoss,
    x: DVector<f64>,
    t: DVector<f64>,
    w: f64,
    offsets: Vec<usize>,
}

impl Penalizer<'_> {
    fn split<'b>(&self, v: &'b DVector<f64>, k: usize) -> nalgebra::DVectorView<'b, f64> {
        v.rows(self.offsets[k], self.net.layers[k].w.nrows())
    }

    fn input(&self, v: &DVector<f64>, k: usize) -> DVector<f64> {
        if k == 0 {
            self.x.clone()
        } else {
            self.split(v, k - 1).into_owned()
        }
    }
}

impl SmoothObjective for Penalizer<'_> {
    fn value(&self, v: &DVector<f64>) -> f64 {
        let top = self.net.layers.len() - 1;
        let mut s = sample_loss(self.loss, &self.split(v, top).into_owned(), &self.t, self.w).0;
        for k in 0..=top {
            let a = affine(self.net, k, &self.input(v, k));
            let r = self.split(v, k) - act(self.net.layers[k].activation, &a);
            s += self.w * 0.5 * r.norm_squared() / self.betas[k];
        }
        s
    }

    fn gradient(&self, v: &DVector<f64>) -> DVector<f64> {
        let top = self.net.layers.len() - 1;
        let mut g = DVector::zeros(v.len());
        let lg = sample_loss(self.loss, &self.split(v, top).into_owned(), &self.t, self.w).1;
        g.rows_mut(self.offsets[top], lg.len()).add_assign(&lg);
        for k in 0..=top {
            let layer = &self.net.layers[k];
            let a = affine(self.net, k, &self.input(v, k));
            let r = (self.split(v, k) - act(layer.activation, &a)) * (self.w / self.betas[k]);
            g.rows_mut(self.offsets[k], r.len()).add_assign(&r);
            if k > 0 {
                let back = layer.w.transpose() * deriv(layer.activation, &a).component_mul(&r);
                g.rows_mut(self.offsets[k - 1], back.len())
                    .sub_assign(&back);
            }
        }
        g
    }

    /// Exact on each linear piece of the activations (their second derivative vanishes there).
    fn hessian(&self, v: &DVector<f64>) -> DMatrix<f64> {
        let top = self.net.layers.len() - 1;
        let n = v.len();
        let mut h = DMatrix::zeros(n, n);
        let lh = sample_loss(self.loss, &self.split(v, top).into_owned(), &self.t, self.w).2;
        let o = self.offsets[top];
        h.view_mut((o, o), lh.shape()).add_assign(&lh);
        for k in 0..=top {
            let layer = &self.net.layers[k];
            let c = self.w / self.betas[k];
            let nk = layer.w.nrows();
            // r_k = z_k − D W z_{k−1} − const: ∂r/∂z_k = I, ∂r/∂z_{k−1} = −D W.
            let ok = self.offsets[k];
            for i in 0..nk {
                h[(ok + i, ok + i)] += c;
            }
            if k > 0 {
                let a = affine(self.net, k, &self.input(v, k));
                let dw = DMatrix::from_diagonal(&deriv(layer.activation, &a)) * &layer.w;
                let op = self.offsets[k - 1];
                let np = layer.w.ncols();
                h.view_mut((op, op), (np, np))
                    .add_assign(&(dw.transpose() * &dw * c));
                h.view_mut((ok, op), (nk, np)).sub_assign(&(&dw * c));
                h.view_mut((op, ok), (np, nk))
                    .sub_assign(&(dw.transpose() * c));
            }
        }
        h
    }
}

use std::ops::{AddAssign, SubAssign};

/// Minimizes Eq. 28 for the batch (`x`: `n_0 × B`, `target`: `n_L × B`) and returns the
/// minimizer, the value and the θ-gradient.
///
/// # Errors
/// Shapes, invalid β, softmax layers with penalizer energies (MAC needs an element-wise `f'`;
/// softmax is an LPOM layer), non-convergence.
pub fn local_contrastive(
    net: &Network<f64>,
    kind: EnergyKind,
    betas: &[f64],
    loss: OutputLoss,
    x: &DMatrix<f64>,
    target: &DMatrix<f64>,
) -> Result<LocalSolution> {
    net.validate(kind)?;
    check_betas(betas, net.layers.len())?;
    if kind == EnergyKind::Penalizer
        && net
            .layers
            .iter()
            .any(|l| l.activation == Activation::Softmax)
    {
        return Err(Error::input(
            "activation",
            "MAC supports box-family activations only; softmax is a Fenchel (LPOM) layer",
        ));
    }
    net.check_batch(x, target)?;
    let widths = net.widths();
    let top = widths.len() - 1;
    let batch = x.ncols();
    let w = 1.0 / batch as f64;
    let mut offsets = vec![0; widths.len()];
    for k in 1..widths.len() {
        offsets[k] = offsets[k - 1] + widths[k - 1];
    }
    let total: usize = widths.iter().sum();
    let mut z: Vec<DMatrix<f64>> = widths.iter().map(|&n| DMatrix::zeros(n, batch)).collect();
    let mut grad = Gradients::zeros(net);
    let (mut value, mut iterations, mut residual) = (0.0, 0, 0.0f64);
    for j in 0..batch {
        let xj = x.column(j).into_owned();
        let tj = target.column(j).into_owned();
        // Start from the forward pass (Eq. 29: Ẽ = 0 there).
        let mut start = DVector::zeros(total);
        let mut input = xj.clone();
        for k in 0..=top {
            let zk = act(net.layers[k].activation, &affine(net, k, &input));
            start.rows_mut(offsets[k], widths[k]).copy_from(&zk);
            input = zk;
        }
        let (sol, its, res) = match kind {
            EnergyKind::Penalizer => {
                // Scaled by min β so that the penalties have O(1) weights and the loss O(β): the
                // gradient then has an O(1) rounding floor, which makes β down to 1e-4 (and
                // below) solvable to full precision in f64.
                let scale = betas.iter().copied().fold(f64::INFINITY, f64::min);
                let obj = Penalizer {
                    net,
                    betas,
                    loss,
                    x: xj.clone(),
                    t: tj.clone(),
                    w: w * scale,
                    offsets: offsets.clone(),
                };
                let settings = SmoothSettings {
                    tol_grad: 1e-13,
                    newton_steps: 30,
                    ..SmoothSettings::default()
                };
                let s = minimize(&obj, &start, &settings)?;
                value += obj.value(&s.z) / scale;
                (s.z, s.iterations, s.residual)
            }
            EnergyKind::Fenchel | EnergyKind::Proximal => {
                let (s, its, res, v) = lpom_sample(net, betas, loss, &xj, &tj, w, &offsets, start)?;
                value += v;
                (s, its, res)
            }
        };
        iterations += its;
        residual = residual.max(res);
        for k in 0..=top {
            z[k].column_mut(j)
                .copy_from(&sol.rows(offsets[k], widths[k]));
        }
    }
    // Envelope-theorem gradient at ẑ.
    for k in 0..=top {
        let layer = &net.layers[k];
        let input = if k == 0 { x.clone() } else { z[k - 1].clone() };
        let a = layer.affine(&input);
        let fa = super::activate_columns(layer.activation, &a);
        let signal = match kind {
            EnergyKind::Penalizer => {
                let mut d = a.clone();
                layer.activation.derivative(a.as_slice(), d.as_mut_slice());
                -(d.component_mul(&(&z[k] - &fa))) * (w / betas[k])
            }
            _ => (&fa - &z[k]) * (w / betas[k]),
        };
        grad.w[k] = &signal * input.transpose();
        grad.b[k] = signal.column_sum();
    }
    Ok(LocalSolution {
        z,
        value,
        grad,
        iterations,
        residual,
    })
}

/// LPOM for one sample: block-coordinate descent over layers, each block (Eq. 35) by FISTA with
/// projection onto the activation's box. Returns `(ẑ, iterations, residual, value)`.
#[allow(clippy::too_many_arguments)]
fn lpom_sample(
    net: &Network<f64>,
    betas: &[f64],
    loss: OutputLoss,
    x: &DVector<f64>,
    t: &DVector<f64>,
    w: f64,
    offsets: &[usize],
    mut v: DVector<f64>,
) -> Result<(DVector<f64>, usize, f64, f64)> {
    let top = net.layers.len() - 1;
    let block = |v: &DVector<f64>, k: usize| -> DVector<f64> {
        if k == usize::MAX {
            x.clone()
        } else {
            v.rows(offsets[k], net.layers[k].w.nrows()).into_owned()
        }
    };
    let prev = |k: usize| if k == 0 { usize::MAX } else { k - 1 };
    // Objective of one sample (Eq. 34), weighted by w = 1/B.
    let objective = |v: &DVector<f64>| -> f64 {
        let mut s = sample_loss(loss, &block(v, top), t, w).0;
        for (k, (l, beta)) in net.layers.iter().zip(betas).enumerate() {
            let a = affine(net, k, &block(v, prev(k)));
            let zk = block(v, k);
            s += w / beta
                * (l.activation.potential(zk.as_slice()) - zk.dot(&a)
                    + l.activation.conjugate(a.as_slice()));
        }
        s
    };
    // ‖W_k‖₂² by power iteration on WᵀW (the Frobenius norm overestimates the Lipschitz
    // constant by up to the layer width and made FISTA crawl on 784-wide layers).
    let spectral_sq: Vec<f64> = net
        .layers
        .iter()
        // Power iteration approaches from below: a 5 % margin keeps the step safe.
        .map(|l| 1.05 * super::global::spectral_norm_sq(&l.w))
        .collect();
    let mut iterations = 0;
    let mut change = f64::INFINITY;
    for _sweep in 0..500 {
        change = 0.0f64;
        for k in 0..=top {
            let l = &net.layers[k];
            // Box family: G = ½‖z‖² + ι_box is split as a smooth ½‖z‖²/β_k plus a projection.
            // Softmax (negative entropy on the simplex, end of Section 3.2.2): G/β_k is the
            // prox part of a proximal-gradient (FISTA) step, with the entropy prox.
            let softmax = l.activation.bounds().is_none();
            let a_k = affine(net, k, &block(&v, prev(k)));
            let next = (k < top).then(|| (&net.layers[k + 1], block(&v, k + 1)));
            // Lipschitz constant of the block's smooth part (scaled by 1/w); softmax and the
            // box family are both 1-Lipschitz maps f = ∇G*.
            let mut lip = if softmax { 0.0 } else { 1.0 / betas[k] };
            if next.is_some() {
                lip += spectral_sq[k + 1] / betas[k + 1];
            }
            if k == top {
                lip += 1.0;
            }
            let lip = lip.max(1.0 / betas[k]);
            let step = |y: &DVector<f64>, g: DVector<f64>| -> DVector<f64> {
                let v = y - g / lip;
                let mut out = v.clone();
                l.activation
                    .prox(v.as_slice(), 1.0 / (betas[k] * lip), out.as_mut_slice());
                out
            };
            let grad = |z: &DVector<f64>| -> DVector<f64> {
                let mut g = if softmax {
                    -&a_k / betas[k]
                } else {
                    (z - &a_k) / betas[k]
                };
                if let Some((ln, zn)) = &next {
                    let an = &ln.w * z + &ln.b;
                    g += ln.w.transpose() * (act(ln.activation, &an) - zn) / betas[k + 1];
                }
                if k == top {
                    g += sample_loss(loss, z, t, 1.0).1;
                }
                g
            };
            let z0 = block(&v, k);
            let (mut z, mut y, mut tk) = (z0.clone(), z0.clone(), 1.0f64);
            for _ in 0..10_000 {
                iterations += 1;
                // Box family: prox = projection (independent of τ).
                let z_new = step(&y, grad(&y));
                let t_new = (1.0 + (1.0 + 4.0 * tk * tk).sqrt()) / 2.0;
                let step = (&z_new - &z).amax();
                // Gradient-mapping restart keeps FISTA monotone enough on this strongly convex block.
                let restart = (&y - &z_new).dot(&(&z_new - &z)) > 0.0;
                y = if restart {
                    z_new.clone()
                } else {
                    &z_new + (&z_new - &z) * ((tk - 1.0) / t_new)
                };
                tk = if restart { 1.0 } else { t_new };
                z = z_new;
                if step <= 1e-15 * (1.0 + z.amax()) {
                    break;
                }
            }
            change = change.max((&z - &z0).amax());
            v.rows_mut(offsets[k], z.len()).copy_from(&z);
        }
        if change <= 1e-14 {
            return Ok((v.clone(), iterations, change, objective(&v)));
        }
    }
    Err(Error::NotConverged {
        solver: "LPOM block-coordinate descent".into(),
        iterations,
        residual: change,
    })
}
