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
//!   Minimized on the whole batch at once (samples as columns) by block-coordinate descent over
//!   layers, each block the convex problem of Eq. 35 solved by accelerated proximal gradient
//!   (FISTA with a restart per sample): projection for box-family
//!   activations, the entropy prox for softmax layers (`G = Σ z log z`, `G* = log Σ e^u`, the
//!   soft-arg-max layer of Section 3.2.2 that the original LPOM cannot express). Gradient:
//!   `∂_{W_k} = (1/β_k)(f(a_k) − ẑ_k) ẑ_{k−1}ᵀ`.
//!
//! The batch loss is the mean over samples, as everywhere in [`crate::nested`].
//!
//! # Kinks (MAC)
//! The penalizer objective is non-smooth where a ReLU pre-activation crosses 0. At a *convex*
//! kink (a unit whose target `z_k` is below the bound) the minimizer can sit exactly on the kink
//! (seen for β ≥ 1e-2 on random 5-4-3-2 ReLU networks); the gradient then never vanishes and the
//! smooth solver stalls. It is finished by an active-set method on the pieces (exact for the
//! piecewise-quadratic squared-loss objective, Newton for cross-entropy) that holds such units on
//! their kink and returns their multipliers `ν = ∂J/∂a`, which enter the gradient in place of
//! `f'(a)·(…)`. The gradient at kinks matches the surrogate's own finite differences to 1e-9.

use nalgebra::{DMatrix, DVector};

use super::linearized::{check_betas, Gradients};
use super::{EnergyKind, Network, OutputLoss};
use crate::error::{Error, Result};
use crate::prox::Activation;
use crate::solve::smooth::{minimize_best, SmoothObjective, SmoothSettings};

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
        self.gradient_on(v, &self.pieces_at(v))
    }

    /// Exact on each linear piece of the activations (their second derivative vanishes there).
    fn hessian(&self, v: &DVector<f64>) -> DMatrix<f64> {
        self.hessian_on(v, &self.pieces_at(v))
    }
}

/// Which linear piece of a box-family activation a unit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Lo,
    In,
    Hi,
}

/// Result of [`kink_active_set`].
struct KinkSolution {
    z: DVector<f64>,
    /// `(layer, unit, ν)` of every unit whose minimizer sits on a kink, `ν = ∂J/∂a` there.
    kinks: Vec<(usize, usize, f64)>,
    iterations: usize,
    residual: f64,
}

impl Penalizer<'_> {
    /// The piece each unit of layers `k ≥ 1` is on at `v` (`a ≤ lo`, inside, `a ≥ hi`; at a
    /// kink the clamped side, i.e. `f' = 0` as in [`Activation::derivative`]).
    fn pieces_at(&self, v: &DVector<f64>) -> Vec<Vec<Piece>> {
        let mut pieces = vec![Vec::new()];
        for (k, layer) in self.net.layers.iter().enumerate().skip(1) {
            let (lo, hi) = layer
                .activation
                .bounds()
                .unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
            let a = affine(self.net, k, &self.input(v, k));
            pieces.push(
                a.iter()
                    .map(|&ai| {
                        if ai <= lo {
                            Piece::Lo
                        } else if ai >= hi {
                            Piece::Hi
                        } else {
                            Piece::In
                        }
                    })
                    .collect(),
            );
        }
        pieces
    }

    /// Layer `k`'s `f(a_k)` and `f'(a_k)` on the given pieces (layer 0: its input is the constant
    /// `x`, so only `f(a_0)` matters).
    fn layer_on(
        &self,
        v: &DVector<f64>,
        k: usize,
        piece: &[Piece],
    ) -> (DVector<f64>, DVector<f64>) {
        let layer = &self.net.layers[k];
        let a = affine(self.net, k, &self.input(v, k));
        if k == 0 {
            return (act(layer.activation, &a), DVector::zeros(a.len()));
        }
        let (lo, hi) = layer
            .activation
            .bounds()
            .unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
        let fa = DVector::from_fn(a.len(), |i, _| match piece[i] {
            Piece::Lo => lo,
            Piece::In => a[i],
            Piece::Hi => hi,
        });
        let d = DVector::from_fn(a.len(), |i, _| f64::from(u8::from(piece[i] == Piece::In)));
        (fa, d)
    }

    /// Gradient of the objective with every unit's piece fixed (`pieces[k]` for `k ≥ 1`).
    fn gradient_on(&self, v: &DVector<f64>, pieces: &[Vec<Piece>]) -> DVector<f64> {
        let top = self.net.layers.len() - 1;
        let mut g = DVector::zeros(v.len());
        let lg = sample_loss(self.loss, &self.split(v, top).into_owned(), &self.t, self.w).1;
        g.rows_mut(self.offsets[top], lg.len()).add_assign(&lg);
        for (k, (layer, piece)) in self.net.layers.iter().zip(pieces).enumerate() {
            let (fa, d) = self.layer_on(v, k, piece);
            let r = (self.split(v, k) - fa) * (self.w / self.betas[k]);
            g.rows_mut(self.offsets[k], r.len()).add_assign(&r);
            if k > 0 {
                let back = layer.w.transpose() * d.component_mul(&r);
                g.rows_mut(self.offsets[k - 1], back.len())
                    .sub_assign(&back);
            }
        }
        g
    }

    /// Hessian with every unit's piece fixed: `r_k = z_k − D W z_{k−1} − const`, so
    /// `∂r/∂z_k = I`, `∂r/∂z_{k−1} = −D W`; quadratic in `z` for the squared loss.
    fn hessian_on(&self, v: &DVector<f64>, pieces: &[Vec<Piece>]) -> DMatrix<f64> {
        let top = self.net.layers.len() - 1;
        let n = v.len();
        let mut h = DMatrix::zeros(n, n);
        let lh = sample_loss(self.loss, &self.split(v, top).into_owned(), &self.t, self.w).2;
        let o = self.offsets[top];
        h.view_mut((o, o), lh.shape()).add_assign(&lh);
        for (k, (layer, piece)) in self.net.layers.iter().zip(pieces).enumerate() {
            let c = self.w / self.betas[k];
            let nk = layer.w.nrows();
            let ok = self.offsets[k];
            for i in 0..nk {
                h[(ok + i, ok + i)] += c;
            }
            if k > 0 {
                let dw = DMatrix::from_diagonal(&self.layer_on(v, k, piece).1) * &layer.w;
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

/// MAC at kinks: a primal active-set method on the pieces of the (piecewise-quadratic for the
/// squared loss) penalizer objective, from the point where the smooth solver stalled.
///
/// A unit `i` of layer `k ≥ 1` whose pre-activation sits on a bound `c ∈ {lo, hi}` with its
/// target beyond it (`z < lo`, or `z > hi`) is a *convex* kink: there `J = J_off + ψ(a)`, `ψ`
/// convex with `∂ψ(c) = [0, (lo − z)·w/β]` (resp. `[(hi − z)·w/β, 0]`). Such units are held at
/// `a_{k,i}(z_{k−1}) = c` (equality constraints), the others use the piece their `a` lies on,
/// and each piece is solved by Newton on the equality-constrained KKT system (one step for the
/// squared loss). Optimal when every kink multiplier `ν = ∂J/∂a` lies in `∂ψ(c)` and every other
/// unit stays on its piece; otherwise the worst offender changes piece (a released kink moves
/// to the side its multiplier points to; a unit leaving its piece across a convex kink becomes a
/// kink). The multipliers are the gradient's `∂J/∂a` at the kinks (the value function is smooth
/// there when `ν` is interior).
fn kink_active_set(obj: &Penalizer<'_>, mut v: DVector<f64>) -> Result<KinkSolution> {
    let net = obj.net;
    let top = net.layers.len() - 1;
    let bounds: Vec<(f64, f64)> = net
        .layers
        .iter()
        .map(|l| {
            l.activation
                .bounds()
                .unwrap_or((f64::NEG_INFINITY, f64::INFINITY))
        })
        .collect();
    let pre = |v: &DVector<f64>, k: usize| affine(net, k, &obj.input(v, k));
    // ∂a_{k,i}/∂v of the held kinks: row i of W_k, in the block of z_{k−1}.
    let kink_rows = |kinks: &[(usize, usize, Piece)], n: usize| -> DMatrix<f64> {
        let mut c = DMatrix::zeros(kinks.len(), n);
        for (r, &(k, i, _)) in kinks.iter().enumerate() {
            c.view_mut((r, obj.offsets[k - 1]), (1, net.layers[k].w.ncols()))
                .copy_from(&net.layers[k].w.row(i));
        }
        c
    };
    let scale = 1.0 + v.amax();
    let tol_kink = 1e-7 * scale;
    // Initial pieces and kinks from the stalled point.
    let mut pieces: Vec<Vec<Piece>> = vec![Vec::new(); top + 1];
    let mut kinks: Vec<(usize, usize, Piece)> = Vec::new();
    for k in 1..=top {
        let a = pre(&v, k);
        let (lo, hi) = bounds[k];
        pieces[k] = (0..a.len())
            .map(|i| {
                let z = obj.split(&v, k)[i];
                if (a[i] - lo).abs() <= tol_kink && z < lo {
                    kinks.push((k, i, Piece::Lo));
                    Piece::Lo
                } else if (a[i] - hi).abs() <= tol_kink && z > hi {
                    kinks.push((k, i, Piece::Hi));
                    Piece::Hi
                } else if a[i] <= lo {
                    Piece::Lo
                } else if a[i] >= hi {
                    Piece::Hi
                } else {
                    Piece::In
                }
            })
            .collect();
    }
    let mut iterations = 0;
    for _ in 0..(4 * v.len() + 20) {
        // Newton on the current pieces with the kink equalities a_{k,i} = bound.
        let n = v.len();
        let mut nu = DVector::zeros(kinks.len());
        for _ in 0..50 {
            iterations += 1;
            let (g, h) = (obj.gradient_on(&v, &pieces), obj.hessian_on(&v, &pieces));
            let c = kink_rows(&kinks, n);
            let mut rhs = DVector::zeros(kinks.len());
            for (r, &(k, i, piece)) in kinks.iter().enumerate() {
                let bound = if piece == Piece::Lo {
                    bounds[k].0
                } else {
                    bounds[k].1
                };
                rhs[r] = bound - pre(&v, k)[i];
            }
            let kkt = crate::linalg::solve_kkt(&h, &c, &(-&g), &rhs)?;
            v += &kkt.x;
            nu = kkt.nu;
            if kkt.x.amax() <= 1e-15 * (1.0 + v.amax()) {
                break;
            }
        }
        // Worst kink multiplier outside ∂ψ, then worst unit off its piece.
        let mut worst: Option<(f64, usize, Option<Piece>)> = None;
        for (r, &(k, i, piece)) in kinks.iter().enumerate() {
            let z = obj.split(&v, k)[i];
            let cw = obj.w / obj.betas[k];
            let (lo_end, hi_end, off_side, on_side) = match piece {
                Piece::Lo => (0.0, (bounds[k].0 - z) * cw, Piece::Lo, Piece::In),
                _ => ((bounds[k].1 - z) * cw, 0.0, Piece::In, Piece::Hi),
            };
            let tol = 1e-10 * (1.0 + lo_end.abs() + hi_end.abs());
            let (violation, side) = if nu[r] < lo_end - tol {
                (lo_end - nu[r], off_side)
            } else if nu[r] > hi_end + tol {
                (nu[r] - hi_end, on_side)
            } else {
                continue;
            };
            if worst.is_none_or(|(w, _, _)| violation > w) {
                worst = Some((violation, r, Some(side)));
            }
        }
        if let Some((_, r, Some(side))) = worst {
            let (k, i, _) = kinks.remove(r);
            pieces[k][i] = side;
            continue;
        }
        let mut moved = false;
        for k in 1..=top {
            let a = pre(&v, k);
            let (lo, hi) = bounds[k];
            for i in 0..a.len() {
                if kinks.iter().any(|&(kk, ii, _)| kk == k && ii == i) {
                    continue;
                }
                let z = obj.split(&v, k)[i];
                let tol = 1e-12 * scale;
                let (left, right) = match pieces[k][i] {
                    Piece::Lo => (a[i] > lo + tol, false),
                    Piece::In => (a[i] < lo - tol, a[i] > hi + tol),
                    Piece::Hi => (false, a[i] < hi - tol),
                };
                if !(left || right) {
                    continue;
                }
                moved = true;
                // Crossing a convex kink: hold the unit there; otherwise take the new piece.
                let crossing_lo = (pieces[k][i] == Piece::Lo) != (a[i] <= lo);
                if crossing_lo && z < lo {
                    kinks.push((k, i, Piece::Lo));
                    pieces[k][i] = Piece::Lo;
                } else if !crossing_lo && z > hi {
                    kinks.push((k, i, Piece::Hi));
                    pieces[k][i] = Piece::Hi;
                } else {
                    pieces[k][i] = if a[i] <= lo {
                        Piece::Lo
                    } else if a[i] >= hi {
                        Piece::Hi
                    } else {
                        Piece::In
                    };
                }
            }
        }
        if !moved {
            let g = obj.gradient_on(&v, &pieces);
            let residual = (g + kink_rows(&kinks, v.len()).transpose() * &nu).amax();
            return Ok(KinkSolution {
                z: v,
                kinks: kinks
                    .iter()
                    .zip(nu.iter())
                    .map(|(&(k, i, _), &n)| (k, i, n))
                    .collect(),
                iterations,
                residual,
            });
        }
    }
    Err(Error::NotConverged {
        solver: "MAC kink active set".into(),
        iterations,
        residual: f64::NAN,
    })
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
    // ∂J/∂a_{k,i} of units whose minimizer sits on a kink (the constraint multipliers).
    let mut kink_signal: Vec<DMatrix<f64>> =
        widths.iter().map(|&n| DMatrix::zeros(n, batch)).collect();
    // 0 at those units: their `f'` is the constrained piece's, 0 (not the rounding-level side
    // of the kink the final `a` happens to be on).
    let mut kink_mask: Vec<DMatrix<f64>> = widths
        .iter()
        .map(|&n| DMatrix::from_element(n, batch, 1.0))
        .collect();
    if kind != EnergyKind::Penalizer {
        // LPOM: the whole batch at once (samples decouple; every block step is a matrix
        // product over the batch).
        let mut ws = super::linearized::Workspace::new(net, batch);
        super::linearized::forward(net, x, &mut ws)?;
        let (zs, its, res, v) = lpom_batched(net, betas, loss, x, target, ws.z)?;
        z = zs;
        iterations = its;
        residual = res;
        value = v;
    }
    for j in (0..batch).filter(|_| kind == EnergyKind::Penalizer) {
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
                let (s, converged) = minimize_best(&obj, &start, &settings);
                // At a convex kink the smooth solver stalls: finish with the active-set method
                // on the pieces (exact for this piecewise-quadratic objective), which also
                // yields the kink multipliers the gradient needs.
                let (zs, its, res) = if converged {
                    (s.z, s.iterations, s.residual)
                } else {
                    let polished = kink_active_set(&obj, s.z)?;
                    for &(k, i, nu) in &polished.kinks {
                        kink_signal[k][(i, j)] = nu / scale;
                        kink_mask[k][(i, j)] = 0.0;
                    }
                    (
                        polished.z,
                        s.iterations + polished.iterations,
                        polished.residual,
                    )
                };
                value += obj.value(&zs) / scale;
                (zs, its, res)
            }
            EnergyKind::Fenchel | EnergyKind::Proximal => unreachable!("LPOM runs batched above"),
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
                d.component_mul_assign(&kink_mask[k]);
                -(d.component_mul(&(&z[k] - &fa))) * (w / betas[k]) + &kink_signal[k]
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

/// LPOM on the whole batch (samples as columns; they decouple): block-coordinate descent over
/// layers, each block the convex problem of Eq. 35 solved by FISTA with a gradient-mapping
/// restart per sample — projection for the box family, the entropy prox for softmax layers.
/// Returns `(ẑ, FISTA iterations, last sweep's change, L_LC^β)`.
fn lpom_batched(
    net: &Network<f64>,
    betas: &[f64],
    loss: OutputLoss,
    x: &DMatrix<f64>,
    t: &DMatrix<f64>,
    mut z: Vec<DMatrix<f64>>,
) -> Result<(Vec<DMatrix<f64>>, usize, f64, f64)> {
    let top = net.layers.len() - 1;
    let batch = x.ncols();
    let input = |z: &[DMatrix<f64>], k: usize| -> DMatrix<f64> {
        net.layers[k].affine(if k == 0 { x } else { &z[k - 1] })
    };
    // Objective (Eq. 34) averaged over the batch.
    let objective = |z: &[DMatrix<f64>]| -> f64 {
        let mut s = 0.0;
        for j in 0..batch {
            let zt = z[top].column(j).into_owned();
            s += sample_loss(loss, &zt, &t.column(j).into_owned(), 1.0).0;
        }
        for (k, (l, beta)) in net.layers.iter().zip(betas).enumerate() {
            let a = input(z, k);
            for j in 0..batch {
                let (zk, ak) = (z[k].column(j), a.column(j));
                s += (l.activation.potential(zk.as_slice()) - zk.dot(&ak)
                    + l.activation.conjugate(ak.as_slice()))
                    / beta;
            }
        }
        s / batch as f64
    };
    // ‖W_k‖₂² by power iteration (the Frobenius norm overestimates the Lipschitz constant by up
    // to the layer width and made FISTA crawl on 784-wide layers); it approaches from below, so
    // a 5 % margin keeps the step safe.
    let spectral_sq: Vec<f64> = net
        .layers
        .iter()
        .map(|l| 1.05 * super::global::spectral_norm_sq(&l.w))
        .collect();
    let loss_gradient = |zz: &DMatrix<f64>| -> DMatrix<f64> {
        let mut g = zz.clone();
        for j in 0..batch {
            let gj = sample_loss(
                loss,
                &zz.column(j).into_owned(),
                &t.column(j).into_owned(),
                1.0,
            )
            .1;
            g.column_mut(j).copy_from(&gj);
        }
        g
    };
    let mut iterations = 0;
    let mut change = f64::INFINITY;
    for _sweep in 0..500 {
        change = 0.0f64;
        for k in 0..=top {
            let l = &net.layers[k];
            // Box family: G = ½‖z‖² + ι_box, split as a smooth ½‖z‖²/β_k plus a projection.
            // Softmax (negative entropy on the simplex, end of Section 3.2.2): G/β_k is the prox
            // part, with the entropy prox.
            let softmax = l.activation.bounds().is_none();
            let a_k = input(&z, k);
            // Lipschitz constant of the block's smooth part; softmax and the box family are
            // both 1-Lipschitz maps f = ∇G*.
            let mut lip = if softmax { 0.0 } else { 1.0 / betas[k] };
            if k < top {
                lip += spectral_sq[k + 1] / betas[k + 1];
            }
            if k == top {
                lip += 1.0;
            }
            let lip = lip.max(1.0 / betas[k]);
            let grad = |zz: &DMatrix<f64>| -> DMatrix<f64> {
                let mut g = if softmax {
                    -&a_k / betas[k]
                } else {
                    (zz - &a_k) / betas[k]
                };
                if k < top {
                    let ln = &net.layers[k + 1];
                    let fa = super::activate_columns(ln.activation, &ln.affine(zz));
                    g += ln.w.transpose() * (fa - &z[k + 1]) / betas[k + 1];
                }
                if k == top {
                    g += loss_gradient(zz);
                }
                g
            };
            let step = |y: &DMatrix<f64>| -> DMatrix<f64> {
                let v = y - grad(y) / lip;
                let mut out = v.clone();
                for (vc, mut oc) in v.column_iter().zip(out.column_iter_mut()) {
                    l.activation
                        .prox(vc.as_slice(), 1.0 / (betas[k] * lip), oc.as_mut_slice());
                }
                out
            };
            let z0 = z[k].clone();
            let (mut zc, mut y) = (z0.clone(), z0.clone());
            let mut tk = vec![1.0f64; batch];
            for _ in 0..10_000 {
                iterations += 1;
                let z_new = step(&y);
                let size = (&z_new - &zc).amax();
                for (j, tj) in tk.iter_mut().enumerate() {
                    let t_new = (1.0 + (1.0 + 4.0 * *tj * *tj).sqrt()) / 2.0;
                    let (zn, zo) = (z_new.column(j), zc.column(j));
                    // Gradient-mapping restart keeps FISTA monotone enough on this strongly
                    // convex block.
                    let restart = (y.column(j) - zn).dot(&(zn - zo)) > 0.0;
                    let yj = if restart {
                        zn.into_owned()
                    } else {
                        zn + (zn - zo) * ((*tj - 1.0) / t_new)
                    };
                    y.column_mut(j).copy_from(&yj);
                    *tj = if restart { 1.0 } else { t_new };
                }
                zc = z_new;
                if size <= 1e-15 * (1.0 + zc.amax()) {
                    break;
                }
            }
            change = change.max((&zc - &z0).amax());
            z[k] = zc;
        }
        if change <= 1e-14 {
            let value = objective(&z);
            return Ok((z, iterations, change, value));
        }
    }
    Err(Error::NotConverged {
        solver: "LPOM block-coordinate descent".into(),
        iterations,
        residual: change,
    })
}
