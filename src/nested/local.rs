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

use std::ops::{AddAssign, SubAssign};

use nalgebra::{DMatrix, DVector};

use super::linearized::{forward_states, Gradients, Workspace};
use super::{
    activate_columns, Batch, EnergyKind, NestedProblem, NestedReport, NestedSettings, NestedStatus,
    Network, Optimum, OutputLoss,
};
use crate::error::{Error, Result};
use crate::solve::smooth::{minimize_best, SmoothObjective, SmoothSettings};

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
        EnergyKind::Penalizer => mac(problem, batch, settings),
        EnergyKind::Fenchel | EnergyKind::Proximal => lpom(problem, batch, settings),
    }
}

/// Eq. 28's θ-gradient by the envelope theorem, `Σ_k (1/β_k) ∂_θ Ẽ_k(ẑ_k, ẑ_{k−1})`, from each
/// layer's pre-activation signal `s_k = ∂/∂a_k` of the batch-mean `Ẽ_k/β_k` at `ẑ`:
/// `∂/∂W_k = s_k ẑ_{k−1}ᵀ`, `∂/∂b_k = s_k 1`. `signal(k, a_k, f(a_k))` returns `s_k`.
fn envelope_gradient(
    net: &Network<f64>,
    x: &DMatrix<f64>,
    z: &[DMatrix<f64>],
    mut signal: impl FnMut(usize, &DMatrix<f64>, &DMatrix<f64>) -> DMatrix<f64>,
) -> Gradients<f64> {
    let mut grad = Gradients::zeros(net);
    for (k, layer) in net.layers.iter().enumerate() {
        let input = if k == 0 { x } else { &z[k - 1] };
        let a = layer.affine(input);
        let fa = activate_columns(layer.activation, &a);
        let s = signal(k, &a, &fa);
        grad.w[k] = &s * input.transpose();
        grad.bias[k] = s.column_sum();
    }
    grad
}

// ---------------------------------------------------------------------------------------------
// MAC / predictive coding (penalizer energies)

/// The penalizer (MAC / predictive coding) objective of one sample in the stacked variable
/// `(z_1; …; z_L)`, scaled by `w` (`1/B` times the objective scale).
struct Penalizer<'a> {
    net: &'a Network<f64>,
    betas: &'a [f64],
    loss: OutputLoss,
    x: DVector<f64>,
    t: DVector<f64>,
    w: f64,
    offsets: &'a [usize],
}

/// Which linear piece of a box-family activation a unit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Lo,
    In,
    Hi,
}

impl Piece {
    /// The piece of pre-activation `a` for bounds `(lo, hi)`; at a kink the clamped side
    /// (`f' = 0`, as [`crate::prox::Activation::derivative`]).
    fn of(a: f64, (lo, hi): (f64, f64)) -> Piece {
        if a <= lo {
            Piece::Lo
        } else if a >= hi {
            Piece::Hi
        } else {
            Piece::In
        }
    }
}

impl Penalizer<'_> {
    fn split<'b>(&self, v: &'b DVector<f64>, k: usize) -> nalgebra::DVectorView<'b, f64> {
        v.rows(self.offsets[k], self.net.layers[k].w.nrows())
    }

    /// `a_k = W_k z_{k−1} + b_k` at the stacked point `v` (`z_0 = x`).
    fn pre(&self, v: &DVector<f64>, k: usize) -> DVector<f64> {
        let layer = &self.net.layers[k];
        if k == 0 {
            &layer.w * &self.x + &layer.bias
        } else {
            &layer.w * self.split(v, k - 1) + &layer.bias
        }
    }

    /// Layer `k`'s activation bounds (`±∞` for the identity).
    fn bounds(&self, k: usize) -> (f64, f64) {
        self.net.layers[k]
            .activation
            .bounds()
            .unwrap_or((f64::NEG_INFINITY, f64::INFINITY))
    }

    fn top(&self) -> usize {
        self.net.layers.len() - 1
    }

    /// The loss term's value, gradient and Hessian at `v`.
    fn loss_at(&self, v: &DVector<f64>) -> (f64, DVector<f64>, DMatrix<f64>) {
        let z = self.split(v, self.top()).into_owned();
        self.loss.sample(&z, &self.t, self.w)
    }

    /// The piece each unit of layers `k ≥ 1` is on at `v` (layer 0's input is the constant `x`,
    /// so its pieces never enter a derivative).
    fn pieces_at(&self, v: &DVector<f64>) -> Vec<Vec<Piece>> {
        let mut pieces = vec![Vec::new()];
        for k in 1..=self.top() {
            let bounds = self.bounds(k);
            pieces.push(
                self.pre(v, k)
                    .iter()
                    .map(|&a| Piece::of(a, bounds))
                    .collect(),
            );
        }
        pieces
    }

    /// Layer `k`'s `f(a_k)` and `f'(a_k)` on the given pieces (layer 0: `f(a_0)` only).
    fn layer_on(
        &self,
        v: &DVector<f64>,
        k: usize,
        piece: &[Piece],
    ) -> (DVector<f64>, DVector<f64>) {
        let a = self.pre(v, k);
        if k == 0 {
            let mut fa = a.clone();
            let act = self.net.layers[0].activation;
            act.activate(a.as_slice(), fa.as_mut_slice());
            return (fa, DVector::zeros(a.len()));
        }
        let (lo, hi) = self.bounds(k);
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
        let top = self.top();
        let mut g = DVector::zeros(v.len());
        let lg = self.loss_at(v).1;
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
        let top = self.top();
        let n = v.len();
        let mut h = DMatrix::zeros(n, n);
        let lh = self.loss_at(v).2;
        let o = self.offsets[top];
        h.view_mut((o, o), lh.shape()).add_assign(&lh);
        for (k, (layer, piece)) in self.net.layers.iter().zip(pieces).enumerate() {
            let c = self.w / self.betas[k];
            let dw =
                (k > 0).then(|| DMatrix::from_diagonal(&self.layer_on(v, k, piece).1) * &layer.w);
            super::add_residual_hessian(&mut h, self.offsets, (k, layer.w.nrows()), dw.as_ref(), c);
        }
        h
    }
}

impl SmoothObjective for Penalizer<'_> {
    fn value(&self, v: &DVector<f64>) -> f64 {
        let mut s = self.loss_at(v).0;
        for (k, layer) in self.net.layers.iter().enumerate() {
            let a = self.pre(v, k);
            let mut fa = a.clone();
            layer.activation.activate(a.as_slice(), fa.as_mut_slice());
            s += self.w * 0.5 * (self.split(v, k) - fa).norm_squared() / self.betas[k];
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

/// One sample's minimizer of the penalizer objective.
struct SampleSolution {
    z: DVector<f64>,
    /// `(layer, unit, ν)` of every unit whose minimizer sits on a kink, `ν = ∂J/∂a` there.
    kinks: Vec<(usize, usize, f64)>,
    iterations: usize,
    /// Stationarity norm (with the kink multipliers).
    residual: f64,
}

/// MAC / predictive coding: per sample (samples decouple), L-BFGS + Newton from the forward pass,
/// finished by [`kink_active_set`] where the smooth solver stalls at a convex kink.
fn mac(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    settings: &NestedSettings,
) -> Result<NestedReport> {
    let net = problem.net;
    let b = batch.len();
    let free = forward_states(net, batch.x)?;
    let mut cols = MacColumns::new(&free);
    let use_rates = problem.betas.iter().all(|&s| s <= settings.mac_rate_below);
    let a_star: Vec<DMatrix<f64>> = if use_rates {
        (0..net.layers.len())
            .map(|k| net.layers[k].affine(if k == 0 { batch.x } else { &free[k - 1] }))
            .collect()
    } else {
        Vec::new()
    };
    // The second start of the state formulation: Prop. 7's clamped state z̄ (one linearized
    // pass for the batch).
    let second = if settings.mac_second_start {
        Some(linearized_clamped_state(problem, batch)?)
    } else {
        None
    };
    let (mut rate_samples, mut fallbacks) = (0usize, 0usize);
    for j in 0..b {
        if use_rates {
            if rate_column(&mut cols, j, problem, batch, (&free, &a_star), settings) {
                rate_samples += 1;
                continue;
            }
            fallbacks += 1;
        }
        state_column(
            &mut cols,
            j,
            problem,
            batch,
            (&free, second.as_deref()),
            settings,
        )?;
    }
    let w = 1.0 / b as f64;
    let clamped = cols.clamped;
    let grad = envelope_gradient(net, batch.x, &clamped, |k, a, fa| {
        let mut d = a.clone();
        net.layers[k]
            .activation
            .derivative(a.as_slice(), d.as_mut_slice());
        d.component_mul_assign(&cols.mask[k]);
        -(d.component_mul(&(&clamped[k] - fa))) * (w / problem.betas[k]) + &cols.signal[k]
    });
    Ok(NestedReport {
        value: cols.value,
        grad,
        clamped,
        free,
        status: NestedStatus {
            solver: if rate_samples == b {
                "MAC: semi-smooth Newton on the rates (z^ - z*)/beta per sample"
            } else if second.is_some() {
                "MAC: L-BFGS + Newton per sample, active set at kinks, best of two starts"
            } else {
                "MAC: L-BFGS + Newton per sample, active set at kinks"
            },
            iterations: cols.iterations,
            residual: cols.residual,
            optimum: Optimum::Local,
            fallback: (fallbacks > 0).then(|| super::Fallback {
                from: "MAC: semi-smooth Newton on the rates",
                reason: format!(
                    "{fallbacks} of {b} samples did not settle; solved for the states instead"
                ),
            }),
        },
    })
}

/// What [`mac`]'s per-sample solves fill in: the minimizer's columns, the value, counters, and
/// the envelope signal where it is not `−f'(a) ⊙ r/β` — at kinks (the constraint multipliers
/// `∂J/∂a`, with `f'` masked to the constrained piece's 0 rather than the rounding-level side of
/// the kink the final `a` is on) and for rate-solved samples (`−f'(â) ⊙ ρ`, no cancellation).
struct MacColumns {
    clamped: Vec<DMatrix<f64>>,
    signal: Vec<DMatrix<f64>>,
    mask: Vec<DMatrix<f64>>,
    value: f64,
    iterations: usize,
    residual: f64,
}

impl MacColumns {
    fn new(free: &[DMatrix<f64>]) -> Self {
        Self {
            clamped: free.to_vec(),
            signal: free
                .iter()
                .map(|z| DMatrix::zeros(z.nrows(), z.ncols()))
                .collect(),
            mask: free
                .iter()
                .map(|z| DMatrix::from_element(z.nrows(), z.ncols(), 1.0))
                .collect(),
            value: 0.0,
            iterations: 0,
            residual: 0.0,
        }
    }
}

/// Sample `j` solved for the rates ([`rate_sample`]); `false` when Newton did not settle.
fn rate_column(
    cols: &mut MacColumns,
    j: usize,
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    (free, a_star): (&[DMatrix<f64>], &[DMatrix<f64>]),
    settings: &NestedSettings,
) -> bool {
    let (net, sigmas) = (problem.net, &problem.betas);
    let w = 1.0 / batch.len() as f64;
    let t = batch.target.column(j).into_owned();
    let col = |m: &[DMatrix<f64>]| -> Vec<DVector<f64>> {
        m.iter().map(|z| z.column(j).into_owned()).collect()
    };
    let (zs, as_) = (col(free), col(a_star));
    let Some(rs) = rate_sample(net, sigmas, (problem.loss, &t), &zs, &as_, settings) else {
        return false;
    };
    let top = net.layers.len() - 1;
    cols.value += w * (problem.loss.sample(&zs[top], &t, 1.0).0 + sigmas[top] * rs.gap);
    cols.iterations += rs.iterations;
    cols.residual = cols.residual.max(rs.residual);
    for k in 0..=top {
        cols.clamped[k]
            .column_mut(j)
            .copy_from(&(&zs[k] + &rs.u[k] * sigmas[k]));
        cols.mask[k].column_mut(j).fill(0.0);
        cols.signal[k]
            .column_mut(j)
            .copy_from(&(-rs.slope[k].component_mul(&rs.rho[k]) * w));
    }
    true
}

/// Sample `j` solved for the states ([`mac_sample`]) from the forward pass and, when given, a
/// second start, keeping the lower local minimum (the objective is non-convex).
fn state_column(
    cols: &mut MacColumns,
    j: usize,
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    (free, second): (&[DMatrix<f64>], Option<&[DMatrix<f64>]>),
    settings: &NestedSettings,
) -> Result<()> {
    let net = problem.net;
    let widths = net.widths();
    let offsets = net.offsets();
    // The objective is scaled by min β so that the penalties have O(1) weights and the loss
    // O(β): the gradient then has an O(1) rounding floor.
    let scale = problem.betas.iter().copied().fold(f64::INFINITY, f64::min);
    let obj = Penalizer {
        net,
        betas: &problem.betas,
        loss: problem.loss,
        x: batch.x.column(j).into_owned(),
        t: batch.target.column(j).into_owned(),
        w: (1.0 / batch.len() as f64) * scale,
        offsets: &offsets,
    };
    let stack = |states: &[DMatrix<f64>]| {
        let mut v = DVector::zeros(widths.iter().sum());
        for (k, z) in states.iter().enumerate() {
            v.rows_mut(offsets[k], widths[k]).copy_from(&z.column(j));
        }
        v
    };
    let mut sol = mac_sample(&obj, stack(free), settings)?;
    cols.iterations += sol.iterations;
    if let Some(states) = second {
        let other = mac_sample(&obj, stack(states), settings)?;
        cols.iterations += other.iterations;
        if obj.value(&other.z) < obj.value(&sol.z) {
            sol = other;
        }
    }
    for &(k, i, nu) in &sol.kinks {
        cols.signal[k][(i, j)] = nu / scale;
        cols.mask[k][(i, j)] = 0.0;
    }
    cols.value += obj.value(&sol.z) / scale;
    cols.residual = cols.residual.max(sol.residual);
    for (k, z) in cols.clamped.iter_mut().enumerate() {
        z.column_mut(j)
            .copy_from(&sol.z.rows(offsets[k], widths[k]));
    }
    Ok(())
}

/// Prop. 7's clamped state `z̄_k = z_k* − β_k B e_k` of the penalizer pass (Eq. 43, per sample),
/// the second starting point of [`mac`]: the linearized problem's minimizer, on the side of the
/// forward pass the loss pulls towards.
fn linearized_clamped_state(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
) -> Result<Vec<DMatrix<f64>>> {
    let net = problem.net;
    let mut ws = Workspace::new(net, batch.len());
    let mut g = Gradients::zeros(net);
    super::linearized::gradient(
        net,
        EnergyKind::Penalizer,
        &problem.betas,
        problem.loss,
        batch.x,
        batch.target,
        &mut ws,
        &mut g,
    )?;
    Ok((0..net.layers.len())
        .map(|k| ws.z_bar(EnergyKind::Penalizer, k, problem.betas[k]))
        .collect())
}

/// One MAC sample: the smooth solver, and at a convex kink (where it stalls) the active-set
/// method on the pieces (exact for this piecewise-quadratic objective), which also yields the
/// kink multipliers the gradient needs.
fn mac_sample(
    obj: &Penalizer<'_>,
    start: DVector<f64>,
    settings: &NestedSettings,
) -> Result<SampleSolution> {
    let smooth = SmoothSettings {
        tol_grad: settings.mac_tol_grad,
        newton_steps: settings.mac_newton_steps,
        ..SmoothSettings::default()
    };
    let (s, converged) = minimize_best(obj, &start, &smooth);
    if converged {
        return Ok(SampleSolution {
            z: s.z,
            kinks: Vec::new(),
            iterations: s.iterations,
            residual: s.residual,
        });
    }
    let mut polished = kink_active_set(obj, s.z, settings)?;
    polished.iterations += s.iterations;
    Ok(polished)
}

/// A unit held on a kink: layer, unit, and the bound's side.
type Kink = (usize, usize, Piece);

/// The pieces of every unit of layers `k ≥ 1` and the units held on convex kinks.
struct PieceState {
    pieces: Vec<Vec<Piece>>,
    kinks: Vec<Kink>,
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
fn kink_active_set(
    obj: &Penalizer<'_>,
    mut v: DVector<f64>,
    settings: &NestedSettings,
) -> Result<SampleSolution> {
    let scale = 1.0 + v.amax();
    let mut state = initial_pieces(obj, &v, settings.kink_tol * scale);
    let mut iterations = 0;
    let mut residual = f64::INFINITY;
    for _ in 0..(4 * v.len() + 20) {
        let (nu, steps) = newton_on_pieces(obj, &mut v, &state, settings)?;
        iterations += steps;
        let g = obj.gradient_on(&v, &state.pieces);
        residual = (g + kink_rows(obj, &state.kinks, v.len()).transpose() * &nu).amax();
        if let Some((r, side)) = worst_kink(obj, &v, &state.kinks, &nu, settings) {
            let (k, i, _) = state.kinks.remove(r);
            state.pieces[k][i] = side;
            continue;
        }
        if !move_pieces(obj, &v, &mut state, settings.piece_tol * scale) {
            let kinks = state.kinks.iter().zip(nu.iter());
            return Ok(SampleSolution {
                kinks: kinks.map(|(&(k, i, _), &n)| (k, i, n)).collect(),
                z: v,
                iterations,
                residual,
            });
        }
    }
    Err(Error::NotConverged {
        solver: "MAC kink active set".into(),
        iterations,
        residual,
    })
}

/// Pieces and kinks at the stalled point: a unit within `tol` of a bound with its target beyond
/// it starts on the kink.
fn initial_pieces(obj: &Penalizer<'_>, v: &DVector<f64>, tol: f64) -> PieceState {
    let mut pieces: Vec<Vec<Piece>> = vec![Vec::new()];
    let mut kinks = Vec::new();
    for k in 1..=obj.top() {
        let a = obj.pre(v, k);
        let (lo, hi) = obj.bounds(k);
        let z = obj.split(v, k);
        let layer = (0..a.len())
            .map(|i| {
                if (a[i] - lo).abs() <= tol && z[i] < lo {
                    kinks.push((k, i, Piece::Lo));
                    Piece::Lo
                } else if (a[i] - hi).abs() <= tol && z[i] > hi {
                    kinks.push((k, i, Piece::Hi));
                    Piece::Hi
                } else {
                    Piece::of(a[i], (lo, hi))
                }
            })
            .collect();
        pieces.push(layer);
    }
    PieceState { pieces, kinks }
}

/// `∂a_{k,i}/∂v` of the held kinks: row `i` of `W_k`, in the block of `z_{k−1}`.
fn kink_rows(obj: &Penalizer<'_>, kinks: &[Kink], n: usize) -> DMatrix<f64> {
    let mut c = DMatrix::zeros(kinks.len(), n);
    for (r, &(k, i, _)) in kinks.iter().enumerate() {
        let w = &obj.net.layers[k].w;
        c.view_mut((r, obj.offsets[k - 1]), (1, w.ncols()))
            .copy_from(&w.row(i));
    }
    c
}

/// Newton on the current pieces with the kink equalities `a_{k,i} = bound`; returns the kink
/// multipliers and the number of steps.
fn newton_on_pieces(
    obj: &Penalizer<'_>,
    v: &mut DVector<f64>,
    state: &PieceState,
    settings: &NestedSettings,
) -> Result<(DVector<f64>, usize)> {
    let c = kink_rows(obj, &state.kinks, v.len());
    let mut nu = DVector::zeros(state.kinks.len());
    for step in 1..=settings.newton_max_steps {
        let g = obj.gradient_on(v, &state.pieces);
        let h = obj.hessian_on(v, &state.pieces);
        let rhs = DVector::from_iterator(
            state.kinks.len(),
            state.kinks.iter().map(|&(k, i, piece)| {
                let (lo, hi) = obj.bounds(k);
                let bound = if piece == Piece::Lo { lo } else { hi };
                bound - obj.pre(v, k)[i]
            }),
        );
        let kkt = crate::linalg::solve_kkt(&h, &c, &(-&g), &rhs)?;
        *v += &kkt.x;
        nu = kkt.nu;
        if kkt.x.amax() <= settings.tol_step * (1.0 + v.amax()) {
            return Ok((nu, step));
        }
    }
    Ok((nu, settings.newton_max_steps))
}

/// The kink whose multiplier lies farthest outside `∂ψ(c)`, with the side it is released to.
fn worst_kink(
    obj: &Penalizer<'_>,
    v: &DVector<f64>,
    kinks: &[Kink],
    nu: &DVector<f64>,
    settings: &NestedSettings,
) -> Option<(usize, Piece)> {
    let mut worst: Option<(f64, usize, Piece)> = None;
    for (r, &(k, i, piece)) in kinks.iter().enumerate() {
        let z = obj.split(v, k)[i];
        let cw = obj.w / obj.betas[k];
        let (lo, hi) = obj.bounds(k);
        let (lo_end, hi_end, off_side, on_side) = match piece {
            Piece::Lo => (0.0, (lo - z) * cw, Piece::Lo, Piece::In),
            _ => ((hi - z) * cw, 0.0, Piece::In, Piece::Hi),
        };
        let tol = settings.kink_multiplier_tol * (1.0 + lo_end.abs() + hi_end.abs());
        let (violation, side) = if nu[r] < lo_end - tol {
            (lo_end - nu[r], off_side)
        } else if nu[r] > hi_end + tol {
            (nu[r] - hi_end, on_side)
        } else {
            continue;
        };
        if worst.is_none_or(|(w, _, _)| violation > w) {
            worst = Some((violation, r, side));
        }
    }
    worst.map(|(_, r, side)| (r, side))
}

/// Moves every free unit whose pre-activation left its piece by more than `tol` (crossing a
/// convex kink: held there); returns whether any moved.
fn move_pieces(obj: &Penalizer<'_>, v: &DVector<f64>, state: &mut PieceState, tol: f64) -> bool {
    let mut moved = false;
    for k in 1..=obj.top() {
        let a = obj.pre(v, k);
        let (lo, hi) = obj.bounds(k);
        for i in 0..a.len() {
            if state.kinks.iter().any(|&(kk, ii, _)| kk == k && ii == i) {
                continue;
            }
            let z = obj.split(v, k)[i];
            let piece = &mut state.pieces[k][i];
            let left = match *piece {
                Piece::Lo => a[i] > lo + tol,
                Piece::In => a[i] < lo - tol || a[i] > hi + tol,
                Piece::Hi => a[i] < hi - tol,
            };
            if !left {
                continue;
            }
            moved = true;
            let crossing_lo = (*piece == Piece::Lo) != (a[i] <= lo);
            if crossing_lo && z < lo {
                state.kinks.push((k, i, Piece::Lo));
                *piece = Piece::Lo;
            } else if !crossing_lo && z > hi {
                state.kinks.push((k, i, Piece::Hi));
                *piece = Piece::Hi;
            } else {
                *piece = Piece::of(a[i], (lo, hi));
            }
        }
    }
    moved
}

// ---------------------------------------------------------------------------------------------
// LPOM (Fenchel energies)

/// LPOM on the whole batch (samples as columns; they decouple): block-coordinate descent over
/// layers from the forward pass, each block the convex problem of Eq. 35 solved by
/// [`lpom_block`].
fn lpom(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    settings: &NestedSettings,
) -> Result<NestedReport> {
    let net = problem.net;
    let free = forward_states(net, batch.x)?;
    let mut z = free.clone();
    // ‖W_k‖₂² by power iteration (the Frobenius norm overestimates the Lipschitz constant by up
    // to the layer width and made FISTA crawl on 784-wide layers); it approaches from below,
    // hence the margin.
    let spectral_sq: Vec<f64> = net
        .layers
        .iter()
        .map(|l| {
            settings.fista_lipschitz_margin
                * crate::linalg::spectral_norm_sq(&l.w, settings.power_iterations)
        })
        .collect();
    let mut iterations = 0;
    let mut change = f64::INFINITY;
    for _sweep in 0..settings.lpom_max_sweeps {
        change = 0.0f64;
        for k in 0..=problem.top() {
            let (zk, steps) = lpom_block(problem, batch, &z, k, &spectral_sq, settings);
            iterations += steps;
            change = change.max((&zk - &z[k]).amax());
            z[k] = zk;
        }
        if change <= settings.lpom_tol_sweep {
            let w = 1.0 / batch.len() as f64;
            let value = lpom_objective(problem, batch, &z);
            let grad = envelope_gradient(net, batch.x, &z, |k, _, fa| {
                (fa - &z[k]) * (w / problem.betas[k])
            });
            return Ok(NestedReport {
                value,
                grad,
                clamped: z,
                free,
                status: NestedStatus {
                    solver: "LPOM: block-coordinate descent, FISTA blocks",
                    iterations,
                    residual: change,
                    optimum: Optimum::Stationary,
                    fallback: None,
                },
            });
        }
    }
    Err(Error::NotConverged {
        solver: "LPOM block-coordinate descent".into(),
        iterations,
        residual: change,
    })
}

/// The LPOM objective (Eq. 34) averaged over the batch.
fn lpom_objective(problem: &NestedProblem<'_>, batch: Batch<'_>, z: &[DMatrix<f64>]) -> f64 {
    let top = problem.top();
    let mut grad = z[top].clone();
    let b = batch.len() as f64;
    let mut s = problem
        .loss
        .value_and_gradient(&z[top], batch.target, &mut grad)
        * b;
    for (k, (l, beta)) in problem.net.layers.iter().zip(&problem.betas).enumerate() {
        let a = l.affine(if k == 0 { batch.x } else { &z[k - 1] });
        for (zk, ak) in z[k].column_iter().zip(a.column_iter()) {
            s += (l.activation.potential(zk.as_slice()) - zk.dot(&ak)
                + l.activation.conjugate(ak.as_slice()))
                / beta;
        }
    }
    s / b
}

/// Block `k` of LPOM (Eq. 35) on the whole batch by FISTA with a gradient-mapping restart per
/// sample: box family `G = ½‖z‖² + ι_box`, split as a smooth `½‖z‖²/β_k` plus a projection;
/// softmax (negative entropy on the simplex, end of Section 3.2.2) with `G/β_k` as the prox
/// part. Returns the block's minimizer and the number of steps.
fn lpom_block(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    z: &[DMatrix<f64>],
    k: usize,
    spectral_sq: &[f64],
    settings: &NestedSettings,
) -> (DMatrix<f64>, usize) {
    let (net, betas, top) = (problem.net, &problem.betas, problem.top());
    let l = &net.layers[k];
    let softmax = l.activation.bounds().is_none();
    let a_k = l.affine(if k == 0 { batch.x } else { &z[k - 1] });
    // Lipschitz constant of the block's smooth part; softmax and the box family are both
    // 1-Lipschitz maps f = ∇G*.
    let mut lip = if softmax { 0.0 } else { 1.0 / betas[k] };
    if k < top {
        lip += spectral_sq[k + 1] / betas[k + 1];
    } else {
        lip += 1.0;
    }
    let lip = lip.max(1.0 / betas[k]);
    let b = batch.len() as f64;
    let grad = |zz: &DMatrix<f64>| -> DMatrix<f64> {
        let mut g = if softmax {
            -&a_k / betas[k]
        } else {
            (zz - &a_k) / betas[k]
        };
        if k < top {
            let ln = &net.layers[k + 1];
            let fa = activate_columns(ln.activation, &ln.affine(zz));
            g += ln.w.transpose() * (fa - &z[k + 1]) / betas[k + 1];
        } else {
            // The per-sample loss gradient (the batch mean's times B).
            let mut lg = zz.clone();
            problem.loss.value_and_gradient(zz, batch.target, &mut lg);
            g += lg * b;
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
    let (mut zc, mut y) = (z[k].clone(), z[k].clone());
    let mut tk = vec![1.0f64; batch.len()];
    for steps in 1..=settings.fista_max_steps {
        let z_new = step(&y);
        let size = (&z_new - &zc).amax();
        for (j, tj) in tk.iter_mut().enumerate() {
            let t_new = (1.0 + (1.0 + 4.0 * *tj * *tj).sqrt()) / 2.0;
            let (zn, zo) = (z_new.column(j), zc.column(j));
            // Gradient-mapping restart keeps FISTA monotone enough on this strongly convex
            // block.
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
        if size <= settings.tol_step * (1.0 + zc.amax()) {
            return (zc, steps);
        }
    }
    (zc, settings.fista_max_steps)
}

// ---------------------------------------------------------------------------------------------
// MAC / predictive coding for small β: the rate formulation

/// One sample solved for the rates `u_k = (ẑ_k − z_k*)/σ_k` (`σ_k` the layer's β in the
/// objective: `β_k` for MAC, `Π_{l≥k} β_l` for predictive coding).
struct RateSample {
    /// `u_1..u_L`.
    u: Vec<DVector<f64>>,
    /// `ρ_k = (ẑ_k − f(â_k))/σ_k`, the scaled residuals at the solution.
    rho: Vec<DVector<f64>>,
    /// `f'(â_k)` on the final pieces.
    slope: Vec<DVector<f64>>,
    /// `(L_LC^β − ℓ(z*))/σ_L` for this sample.
    gap: f64,
    iterations: usize,
    /// `‖F(u)‖∞` of the scaled stationarity system.
    residual: f64,
}

/// MAC / predictive coding for one sample, solved for the rates instead of the states, as the
/// Section 2 offsets are: with `z_k = z_k* + σ_k u_k`, the residuals are
/// `r_k/σ_k = ρ_k = u_k − (σ_{k−1}/σ_k) q_k`, `q_k = (f(a_k* + σ_{k−1}W_k u_{k−1}) − f(a_k*))/σ_{k−1}`
/// (a one-sided difference quotient, exact on each linear piece: no cancellation however small
/// σ is), and the objective divided by `σ_L` is
/// `Ĵ(u) = (ℓ(z_L* + σ_L u_L) − ℓ(z_L*))/σ_L + Σ_k (σ_k/2σ_L)‖ρ_k‖²`, whose data are `O(1)`.
/// Its stationarity conditions, each block divided by its weight `σ_k/σ_L`, are
/// `F_k = ρ_k − (D_{k+1}W_{k+1})ᵀρ_{k+1} = 0` (`k < L`), `F_L = ρ_L + ℓ'(z_L) = 0`, solved by
/// Newton with the pieces `D_k = f'(a_k)` updated every step (semi-smooth Newton; on fixed
/// pieces `Ĵ` is a convex quadratic for the squared loss, so one step solves it).
///
/// `None` when Newton does not settle within `settings.newton_max_steps` steps (the caller
/// falls back to the state formulation).
fn rate_sample(
    net: &Network<f64>,
    sigmas: &[f64],
    (loss, t): (OutputLoss, &DVector<f64>),
    z_star: &[DVector<f64>],
    a_star: &[DVector<f64>],
    settings: &NestedSettings,
) -> Option<RateSample> {
    let top = net.layers.len() - 1;
    let widths = net.widths();
    let offsets = net.offsets();
    let mut u: Vec<DVector<f64>> = widths.iter().map(|&n| DVector::zeros(n)).collect();
    let mut last_step = f64::INFINITY;
    for iteration in 0..=settings.newton_max_steps {
        let (rho, slope) = rate_residuals(net, sigmas, &u, a_star);
        let z_top = &z_star[top] + &u[top] * sigmas[top];
        let (_, lg, lh) = loss.sample(&z_top, t, 1.0);
        let (f, jac) = rate_system(net, sigmas, (&rho, &slope), (&lg, &lh), &offsets);
        let scale = 1.0 + u.iter().map(|v| v.amax()).fold(0.0, f64::max);
        let residual = f.amax();
        if residual <= settings.mac_tol_grad * scale && last_step <= 1e3 * settings.tol_step * scale
        {
            let gap = loss.sample_offset(&z_star[top], t, sigmas[top], &u[top])
                + (0..=top)
                    .map(|k| sigmas[k] / sigmas[top] * (0.5 * rho[k].norm_squared()))
                    .sum::<f64>();
            return Some(RateSample {
                u,
                rho,
                slope,
                gap,
                iterations: iteration,
                residual,
            });
        }
        let delta = jac.lu().solve(&(-&f))?;
        last_step = delta.amax();
        for (k, uk) in u.iter_mut().enumerate() {
            *uk += delta.rows(offsets[k], widths[k]);
        }
    }
    None
}

/// `ρ_k` and the pieces `f'(a_k)` at the rates `u` (see [`rate_sample`]).
fn rate_residuals(
    net: &Network<f64>,
    sigmas: &[f64],
    u: &[DVector<f64>],
    a_star: &[DVector<f64>],
) -> (Vec<DVector<f64>>, Vec<DVector<f64>>) {
    let mut rho = Vec::with_capacity(u.len());
    let mut slope = Vec::with_capacity(u.len());
    for (k, layer) in net.layers.iter().enumerate() {
        let act = layer.activation;
        let mut d = a_star[k].clone();
        if k == 0 {
            act.derivative(a_star[0].as_slice(), d.as_mut_slice());
            rho.push(u[0].clone());
            slope.push(d);
            continue;
        }
        // q = (f(a* + σW u) − f(a*))/σ = −D_σ f(a*)[−W u], exact on each piece.
        let wu = &layer.w * &u[k - 1];
        let mut q = DVector::zeros(wu.len());
        act.difference_quotient(
            a_star[k].as_slice(),
            (-&wu).as_slice(),
            sigmas[k - 1],
            q.as_mut_slice(),
        );
        rho.push(&u[k] + q * (sigmas[k - 1] / sigmas[k]));
        let a = &a_star[k] + wu * sigmas[k - 1];
        act.derivative(a.as_slice(), d.as_mut_slice());
        slope.push(d);
    }
    (rho, slope)
}

/// The scaled stationarity system `F(u)` of [`rate_sample`] and its Jacobian on the current
/// pieces: `∂F_k/∂u_k = I + (σ_k/σ_{k+1}) M_{k+1}ᵀM_{k+1}` (top: `I + σ_L ℓ''`),
/// `∂F_k/∂u_{k+1} = −M_{k+1}ᵀ`, `∂F_k/∂u_{k−1} = −(σ_{k−1}/σ_k) M_k`, `M_k = D_k W_k`.
fn rate_system(
    net: &Network<f64>,
    sigmas: &[f64],
    (rho, slope): (&[DVector<f64>], &[DVector<f64>]),
    (lg, lh): (&DVector<f64>, &DMatrix<f64>),
    offsets: &[usize],
) -> (DVector<f64>, DMatrix<f64>) {
    let top = net.layers.len() - 1;
    let n = offsets[top] + rho[top].len();
    let mut f = DVector::zeros(n);
    let mut jac = DMatrix::zeros(n, n);
    for k in 0..=top {
        let (o, nk) = (offsets[k], rho[k].len());
        let mut fk = rho[k].clone();
        let mut diag = DMatrix::identity(nk, nk);
        if k < top {
            let m = DMatrix::from_diagonal(&slope[k + 1]) * &net.layers[k + 1].w;
            fk -= m.transpose() * &rho[k + 1];
            diag += m.transpose() * &m * (sigmas[k] / sigmas[k + 1]);
            jac.view_mut((o, offsets[k + 1]), (nk, rho[k + 1].len()))
                .copy_from(&(-m.transpose()));
        } else {
            fk += lg;
            diag += lh * sigmas[top];
        }
        if k > 0 {
            let m = DMatrix::from_diagonal(&slope[k]) * &net.layers[k].w;
            jac.view_mut((o, offsets[k - 1]), (nk, rho[k - 1].len()))
                .copy_from(&(-m * (sigmas[k - 1] / sigmas[k])));
        }
        jac.view_mut((o, o), (nk, nk)).copy_from(&diag);
        f.rows_mut(o, nk).copy_from(&fk);
    }
    (f, jac)
}
