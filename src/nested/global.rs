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

use std::ops::SubAssign;

use nalgebra::{DMatrix, DVector, DVectorView};

use super::linearized::{forward_states, Gradients};
use super::{
    activate_columns, Batch, EnergyKind, NestedProblem, NestedReport, NestedSettings, NestedStatus,
    Network, Optimum, OutputLoss,
};
use crate::error::{Error, Result};
use crate::problem::LinearConstraints;
use crate::prox::Activation;
use crate::solve::qp::{solve_exact, Clarabel, ExactQp, Qp, QpBackend, Tolerances};

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
        (EnergyKind::Proximal, OutputLoss::Squared) => convex_chl(problem, batch),
        (EnergyKind::Proximal, _) => Err(Error::input(
            "loss",
            "convex CHL is a QP only with the squared loss",
        )),
        (EnergyKind::Fenchel, _) => chl(problem, batch, settings),
        (EnergyKind::Penalizer, _) => Err(Error::input(
            "energy",
            "penalizer energies: the free phase is the forward pass (Section 3.2.1); use the local contrastive solver",
        )),
    }
}

/// Each layer's box `(lo, hi)`.
///
/// # Errors
/// A softmax layer (not a QP layer).
fn box_bounds(net: &Network<f64>) -> Result<Vec<(f64, f64)>> {
    net.layers
        .iter()
        .map(|l| {
            l.activation
                .bounds()
                .ok_or_else(|| Error::input("activation", "softmax is not a QP layer"))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Convex CHL as per-sample QPs

/// Convex CHL's free-phase QP in the stacked variable `(z_1; …; z_L)`, scaled by `Π β`:
/// `P = Σ_k s_k J_kᵀJ_k` (block-tridiagonal) and the box rows are shared by all samples; only
/// the linear term depends on `x`. The clamped phase adds `w = Π β / B` times the loss.
struct ProximalQp {
    widths: Vec<usize>,
    offsets: Vec<usize>,
    s: Vec<f64>,
    p: DMatrix<f64>,
    boxes: LinearConstraints,
}

impl ProximalQp {
    fn new(problem: &NestedProblem<'_>) -> Result<Self> {
        let net = problem.net;
        let bounds = box_bounds(net)?;
        let widths = net.widths();
        let offsets = net.offsets();
        let n: usize = widths.iter().sum();
        let s = super::prefix_products(&problem.betas);
        let mut p = DMatrix::zeros(n, n);
        for (k, layer) in net.layers.iter().enumerate() {
            let m = (k > 0).then_some(&layer.w);
            super::add_residual_hessian(&mut p, &offsets, (k, widths[k]), m, s[k]);
        }
        let per_unit: Vec<(f64, f64)> = widths
            .iter()
            .zip(&bounds)
            .flat_map(|(&nk, &b)| std::iter::repeat_n(b, nk))
            .collect();
        let (boxes, _) = LinearConstraints::boxes(&per_unit);
        Ok(Self {
            widths,
            offsets,
            s,
            p,
            boxes,
        })
    }

    fn block<'a>(&self, v: &'a DVector<f64>, k: usize) -> DVectorView<'a, f64> {
        v.rows(self.offsets[k], self.widths[k])
    }

    /// The free QP of one sample: linear term `−Σ_k s_k J_kᵀ const_k` with
    /// `const_1 = W_1 x + b_1`, `const_k = b_k`.
    fn free_qp(&self, net: &Network<f64>, x: DVectorView<'_, f64>) -> Qp {
        let n = self.p.nrows();
        let mut q = DVector::zeros(n);
        for (k, layer) in net.layers.iter().enumerate() {
            let c = if k == 0 {
                &layer.w * x + &layer.bias
            } else {
                layer.bias.clone()
            };
            q.rows_mut(self.offsets[k], self.widths[k])
                .sub_assign(&(&c * self.s[k]));
            if k > 0 {
                let back = layer.w.transpose() * &c * self.s[k];
                q.rows_mut(self.offsets[k - 1], self.widths[k - 1])
                    .add_assign(&back);
            }
        }
        Qp {
            p: self.p.clone(),
            q,
            a: self.boxes.a.clone(),
            b: self.boxes.b.clone(),
            a_eq: DMatrix::zeros(0, n),
            b_eq: DVector::zeros(0),
        }
    }

    /// Both phases of one sample: the free solution `ž` and `d = ẑ − ž` from the difference of
    /// the two KKT systems on the clamped working set Ŵ (bound rows: they fix coordinates),
    /// `(P + wE) d + A_Ŵᵀ ν = −wE(ž − t) − Σ_{i∈W̌∖Ŵ} a_iᵀ λ̌_i`, `a_i d = b_i − a_i ž (i ∈ Ŵ)`,
    /// whose right-hand side is `O(w)`: `d` comes out with relative, not absolute, accuracy.
    fn sample(
        &self,
        net: &Network<f64>,
        x: DVectorView<'_, f64>,
        t: DVectorView<'_, f64>,
        w: f64,
    ) -> Result<(ExactQp, DVector<f64>, ExactQp)> {
        let backend = Clarabel::default();
        let tol = Tolerances::default();
        let free_qp = self.free_qp(net, x);
        let mut clamped_qp = free_qp.clone();
        let top = self.widths.len() - 1;
        let (ot, nt) = (self.offsets[top], self.widths[top]);
        for i in 0..nt {
            clamped_qp.p[(ot + i, ot + i)] += w;
        }
        clamped_qp.q.rows_mut(ot, nt).sub_assign(&(t * w));
        let zf = solve_exact(&backend as &dyn QpBackend, &free_qp, &tol)?;
        let zc = solve_exact(&backend as &dyn QpBackend, &clamped_qp, &tol)?;
        // Every row is a bound `±z_j ≥ ±c`: the clamped working set fixes those coordinates of
        // `d` exactly (`d_j = b_i − a_i ž` over `a_ij = ±1`), and the rest solve
        // `(P + wE)_FF d_F = r1_F − (P + wE)_FA d_A` (no multipliers needed).
        let a = &self.boxes.a;
        let n = self.p.nrows();
        let mut r1 = DVector::zeros(n);
        for i in 0..nt {
            r1[ot + i] = -w * (zf.x[ot + i] - t[i]);
        }
        for i in (0..a.nrows()).filter(|&i| zf.working[i] && !zc.working[i]) {
            r1 -= a.row(i).transpose() * zf.lambda[i];
        }
        let mut d = DVector::zeros(n);
        let mut fixed = vec![false; n];
        for i in (0..a.nrows()).filter(|&i| zc.working[i]) {
            let j = a.row(i).transpose().iamax();
            d[j] = if zf.working[i] {
                0.0
            } else {
                (self.boxes.b[i] - a.row(i).dot(&zf.x.transpose())) / a[(i, j)]
            };
            fixed[j] = true;
        }
        let free: Vec<usize> = (0..n).filter(|&j| !fixed[j]).collect();
        let rhs = &r1 - &clamped_qp.p * &d;
        let p_ff = DMatrix::from_fn(free.len(), free.len(), |i, j| {
            clamped_qp.p[(free[i], free[j])]
        });
        let r_f = DVector::from_fn(free.len(), |i, _| rhs[free[i]]);
        let d_f =
            p_ff.cholesky()
                .map(|ch| ch.solve(&r_f))
                .ok_or_else(|| Error::NotPositiveDefinite {
                    what: "convex CHL's clamped Hessian on the free coordinates".into(),
                    reason: "Cholesky failed".into(),
                })?;
        for (i, &j) in free.iter().enumerate() {
            d[j] = d_f[i];
        }
        Ok((zf, d, zc))
    }
}

/// Convex CHL by two exact QPs per sample (samples decouple) and the difference of their KKT
/// systems.
fn convex_chl(problem: &NestedProblem<'_>, batch: Batch<'_>) -> Result<NestedReport> {
    let qp = ProximalQp::new(problem)?;
    let b = batch.len();
    let zeros =
        || -> Vec<DMatrix<f64>> { qp.widths.iter().map(|&n| DMatrix::zeros(n, b)).collect() };
    let (mut free, mut d) = (zeros(), zeros());
    let (mut iterations, mut residual) = (0, 0.0f64);
    let mut fallback = None;
    // Per-sample surrogates at β (the batch convention): the loss weight is Π β per sample.
    let w = qp.s[qp.widths.len()];
    for j in 0..b {
        let (zf, dj, zc) = qp.sample(problem.net, batch.x.column(j), batch.target.column(j), w)?;
        iterations += zf.iterations + zc.iterations;
        residual = residual.max(zf.residual).max(zc.residual);
        fallback = fallback.or(zf.fallback.clone()).or(zc.fallback.clone());
        for k in 0..qp.widths.len() {
            free[k].column_mut(j).copy_from(&qp.block(&zf.x, k));
            d[k].column_mut(j).copy_from(&qp.block(&dj, k));
        }
    }
    let status = NestedStatus {
        solver: "convex CHL: exact QP per sample",
        iterations,
        residual,
        optimum: Optimum::Global,
        fallback: fallback.map(|reason| super::Fallback {
            from: "the QP backend (the dual active-set method finished)",
            reason,
        }),
    };
    Ok(proximal_report(problem.net, &qp.s, batch, free, &d, status))
}

/// Convex CHL's report from the free solution `ž` and the difference `d = ẑ − ž` (layer weights
/// `s_k = Π_{l<k} β_l`, `s_L = Π β`), shared by the per-sample QP and the batched solver. With
/// `r_k = z_k − W_k z_{k−1} − b_k` and `Δr_k = d_k − W_k d_{k−1}`:
/// * value: `Σ_k s_k(řᵀΔr_k + ½‖Δr_k‖²)/Πβ + mean ½‖ẑ_L − t‖²` (Eq. 22, the free energy's
///   `½‖ř‖²` terms cancel analytically, not numerically);
/// * gradient: `c_k[ř_k ž_{k−1}ᵀ − r̂_k ẑ_{k−1}ᵀ] = −c_k[ř_k d_{k−1}ᵀ + Δr_k ẑ_{k−1}ᵀ]`,
///   `c_k = s_k/Πβ`.
fn proximal_report(
    net: &Network<f64>,
    s: &[f64],
    batch: Batch<'_>,
    free: Vec<DMatrix<f64>>,
    d: &[DMatrix<f64>],
    status: NestedStatus,
) -> NestedReport {
    let (x, target) = (batch.x, batch.target);
    let top = net.layers.len() - 1;
    // Mean over the batch (the batch convention): c_k carries the 1/B.
    let prod = s[top + 1] * batch.len() as f64;
    let mut grad = Gradients::zeros(net);
    let clamped_top = &free[top] + &d[top];
    let mut loss_grad = clamped_top.clone();
    let mut value = OutputLoss::Squared.value_and_gradient(&clamped_top, target, &mut loss_grad);
    for (k, layer) in net.layers.iter().enumerate() {
        let ck = s[k] / prod;
        let (r_free, dr) = if k == 0 {
            (&free[0] - layer.affine(x), d[0].clone())
        } else {
            (
                &free[k] - layer.affine(&free[k - 1]),
                &d[k] - &layer.w * &d[k - 1],
            )
        };
        value += ck * (r_free.dot(&dr) + 0.5 * dr.norm_squared());
        let input_c = if k == 0 {
            x.clone()
        } else {
            &free[k - 1] + &d[k - 1]
        };
        let mut bracket = -(&dr * input_c.transpose());
        if k > 0 {
            bracket -= &r_free * d[k - 1].transpose();
        }
        grad.w[k] = bracket * ck;
        grad.bias[k] = -dr.column_sum() * ck;
    }
    let clamped = free.iter().zip(d).map(|(z, dz)| z + dz).collect();
    NestedReport {
        value,
        grad,
        clamped,
        free,
        status,
    }
}

// ---------------------------------------------------------------------------------------------
// Convex CHL batched

/// Convex CHL (proximal energies, box-family activations, squared loss) for the whole batch at
/// once, without a QP solver: block-coordinate projected gradient over layers on matrices whose
/// columns are the samples (every step is a batched matrix product).
///
/// Free phase from the forward pass; clamped phase on `d = ẑ − ž` from `d = 0`. Block `k`
/// (objective divided by `s_k`): `½‖z_k − W_k z_{k−1} − b_k‖² + (β_k/2)‖z_{k+1} − W_{k+1} z_k − b_{k+1}‖²`
/// over the box, by projected gradient with step `1/(1 + β_k‖W_{k+1}‖₂²)`; the top block
/// (`½‖z − a_L‖² + β_L½‖z − t‖²` in the clamped phase) is separable and closed-form. In the
/// clamped phase the free gradient is snapped to exact stationarity (zero off the bounds) and
/// every step is an increment `clamp(ž + v) − ž` formed without cancellation, so `d` keeps its
/// relative accuracy for small β, as in [`contrastive`]. Layers couple with strength about
/// `β_k‖W‖²`: the method is fast for small β and slow (reported as [`Error::NotConverged`]
/// after `settings.max_sweeps`) when that product approaches 1.
///
/// # Errors
/// As [`contrastive`] for proximal energies; [`Error::NotConverged`].
pub fn convex_chl_batched(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    settings: &NestedSettings,
) -> Result<NestedReport> {
    let batch = problem.prepare(batch, settings)?;
    if problem.energy != EnergyKind::Proximal || problem.loss != OutputLoss::Squared {
        return Err(Error::input(
            "problem",
            "the batched convex CHL solver needs proximal energies and the squared loss",
        ));
    }
    box_bounds(problem.net)?;
    let (net, betas, top) = (problem.net, &problem.betas, problem.top());
    // Step sizes 1/(1 + β_k‖W_{k+1}‖₂²) (power iteration, with a margin: it converges from
    // below).
    let steps: Vec<f64> = (0..=top)
        .map(|k| {
            if k == top {
                1.0
            } else {
                let norm = crate::linalg::spectral_norm_sq(
                    &net.layers[k + 1].w,
                    settings.power_iterations,
                );
                1.0 / (1.0 + settings.lipschitz_margin * betas[k] * norm)
            }
        })
        .collect();
    let mut free = forward_states(net, batch.x)?;
    let (free_sweeps, free_change) =
        batched_free_phase(problem, batch, &steps, &mut free, settings)?;
    let (d, clamped_sweeps, clamped_change) =
        batched_clamped_phase(problem, batch, &steps, &free, settings)?;
    let status = NestedStatus {
        solver: "convex CHL: batched block-coordinate projected gradient",
        iterations: free_sweeps + clamped_sweeps,
        residual: free_change.max(clamped_change),
        optimum: Optimum::Global,
        fallback: None,
    };
    let s = super::prefix_products(betas);
    Ok(proximal_report(net, &s, batch, free, &d, status))
}

/// `a_k = W_k z_{k−1} + b_k` of a batch (`z_0 = x`).
fn pre_activation(
    net: &Network<f64>,
    x: &DMatrix<f64>,
    z: &[DMatrix<f64>],
    k: usize,
) -> DMatrix<f64> {
    net.layers[k].affine(if k == 0 { x } else { &z[k - 1] })
}

/// The free phase of the batched solver, in place from the forward pass; returns the sweeps and
/// the last sweep's largest change.
fn batched_free_phase(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    steps: &[f64],
    free: &mut [DMatrix<f64>],
    settings: &NestedSettings,
) -> Result<(usize, f64)> {
    let (net, betas, top) = (problem.net, &problem.betas, problem.top());
    let mut sweeps = 0;
    loop {
        sweeps += 1;
        let (mut change, mut size) = (0.0f64, 1.0f64);
        for k in 0..=top {
            let a = pre_activation(net, batch.x, free, k);
            let new = if k == top {
                activate_columns(net.layers[k].activation, &a)
            } else {
                let r_up = &free[k + 1] - pre_activation(net, batch.x, free, k + 1);
                let g = &free[k] - &a - net.layers[k + 1].w.transpose() * r_up * betas[k];
                activate_columns(net.layers[k].activation, &(&free[k] - g * steps[k]))
            };
            change = change.max((&new - &free[k]).amax());
            size = size.max(new.amax());
            free[k] = new;
        }
        if change <= settings.tol_step * size {
            return Ok((sweeps, change));
        }
        if sweeps >= settings.max_sweeps || !change.is_finite() {
            return Err(Error::NotConverged {
                solver: "convex CHL batched block-coordinate descent (free phase)".into(),
                iterations: sweeps,
                residual: change,
            });
        }
    }
}

/// `f(base + v) − f(base)` for a box-family layer without cancellation (exactly `v` inside the
/// box, exactly 0 on a bound): `−D_1 f(base)[−v]`.
fn box_increment(act: Activation, base: &DMatrix<f64>, v: &DMatrix<f64>) -> DMatrix<f64> {
    let neg = -v;
    let mut out = DMatrix::zeros(v.nrows(), v.ncols());
    act.difference_quotient(base.as_slice(), neg.as_slice(), 1.0, out.as_mut_slice());
    -out
}

/// The clamped phase of the batched solver on `d = ẑ − ž` from `d = 0`; returns `d`, the sweeps
/// and the last sweep's largest change.
fn batched_clamped_phase(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    steps: &[f64],
    free: &[DMatrix<f64>],
    settings: &NestedSettings,
) -> Result<(Vec<DMatrix<f64>>, usize, f64)> {
    let (net, betas, top) = (problem.net, &problem.betas, problem.top());
    let (x, target) = (batch.x, batch.target);
    // Exact stationarity of the free phase: g0_k = ř_k − β_k W_{k+1}ᵀ ř_{k+1} vanishes off the
    // bounds; on a bound it is the (scaled) multiplier.
    let r_free: Vec<DMatrix<f64>> = (0..=top)
        .map(|k| &free[k] - pre_activation(net, x, free, k))
        .collect();
    let g0: Vec<DMatrix<f64>> = (0..=top)
        .map(|k| {
            let mut g = r_free[k].clone();
            if k < top {
                g -= net.layers[k + 1].w.transpose() * &r_free[k + 1] * betas[k];
            }
            let (lo, hi) = net.layers[k]
                .activation
                .bounds()
                .unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
            for (gi, &zi) in g.iter_mut().zip(free[k].iter()) {
                if zi > lo && zi < hi {
                    *gi = 0.0;
                }
            }
            g
        })
        .collect();
    let w = betas[top];
    let a_top_free = pre_activation(net, x, free, top);
    let mut d: Vec<DMatrix<f64>> = free
        .iter()
        .map(|z| DMatrix::zeros(z.nrows(), z.ncols()))
        .collect();
    let mut sweeps = 0;
    loop {
        sweeps += 1;
        let (mut change, mut size) = (0.0f64, 0.0f64);
        for k in 0..=top {
            let act = net.layers[k].activation;
            let below = if k == 0 {
                DMatrix::zeros(d[0].nrows(), batch.len())
            } else {
                &net.layers[k].w * &d[k - 1]
            };
            let new = if k == top {
                // z = clamp((â + w t)/(1 + w)), â = ǎ + W d_{L−1}
                let v = (&below + (target - &a_top_free) * w) / (1.0 + w);
                box_increment(act, &a_top_free, &v)
            } else {
                let dr_up = &d[k + 1] - &net.layers[k + 1].w * &d[k];
                let grad =
                    &g0[k] + &d[k] - &below - net.layers[k + 1].w.transpose() * dr_up * betas[k];
                box_increment(act, &free[k], &(&d[k] - grad * steps[k]))
            };
            change = change.max((&new - &d[k]).amax());
            size = size.max(new.amax());
            d[k] = new;
        }
        if change <= settings.tol_step * size || size == 0.0 {
            return Ok((d, sweeps, change));
        }
        if sweeps >= settings.max_sweeps || !change.is_finite() {
            return Err(Error::NotConverged {
                solver: "convex CHL batched block-coordinate descent (clamped phase)".into(),
                iterations: sweeps,
                residual: change,
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CHL (Fenchel energies)

/// CHL by block-coordinate descent, see the module docs.
fn chl(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    settings: &NestedSettings,
) -> Result<NestedReport> {
    let (net, top) = (problem.net, problem.top());
    // The forward pass is the starting point of both phases.
    let mut free = forward_states(net, batch.x)?;
    let (free_sweeps, r_free) = chl_free_phase(problem, batch.x, &mut free, settings)?;
    let mut d: Vec<DMatrix<f64>> = free
        .iter()
        .map(|z| DMatrix::zeros(z.nrows(), z.ncols()))
        .collect();
    let (clamped_sweeps, r_clamped) = chl_difference(problem, batch, &free, &mut d, settings)?;
    let clamped: Vec<DMatrix<f64>> = free.iter().zip(&d).map(|(z, dz)| z + dz).collect();
    let s = super::prefix_products(&problem.betas);
    // Mean over the batch (the batch convention): the energy terms carry the 1/B.
    let prod = s[top + 1] * batch.len() as f64;
    let mut loss_grad = clamped[top].clone();
    let loss_value = problem
        .loss
        .value_and_gradient(&clamped[top], batch.target, &mut loss_grad);
    let value = loss_value + chl_energy_difference(net, &s, batch.x, &free, &clamped, &d) / prod;
    let mut grad = Gradients::zeros(net);
    for k in 0..=top {
        let ck = s[k] / prod;
        // ẑ_k ẑ_{k−1}ᵀ − ž_k ž_{k−1}ᵀ = d_k ẑ_{k−1}ᵀ + ž_k d_{k−1}ᵀ
        let input = if k == 0 { batch.x } else { &clamped[k - 1] };
        let mut outer = &d[k] * input.transpose();
        if k > 0 {
            outer += &free[k] * d[k - 1].transpose();
        }
        grad.w[k] = -outer * ck;
        grad.bias[k] = -d[k].column_sum() * ck;
    }
    Ok(NestedReport {
        value,
        grad,
        clamped,
        free,
        status: NestedStatus {
            solver: "CHL: block-coordinate descent, closed-form blocks",
            iterations: free_sweeps + clamped_sweeps,
            residual: r_free.max(r_clamped),
            optimum: Optimum::Stationary,
            fallback: None,
        },
    })
}

/// `Σ_k s_k ΔE_k` from `d`: `ΔE_k = ΔG_k − dᵀâ_k − žᵀW_k d_{k−1}` with `ΔG = žᵀd + ½‖d‖²` (box
/// family, `G = ½‖z‖²` on the box) or `Σ d log ž + ẑ log1p(d/ž)` (softmax, `G = Σ z log z`):
/// products with `d`, never a difference of `O(1)` energies.
fn chl_energy_difference(
    net: &Network<f64>,
    s: &[f64],
    x: &DMatrix<f64>,
    free: &[DMatrix<f64>],
    clamped: &[DMatrix<f64>],
    d: &[DMatrix<f64>],
) -> f64 {
    let mut total = 0.0;
    for (k, layer) in net.layers.iter().enumerate() {
        let a_hat = pre_activation(net, x, clamped, k);
        let delta_g = if layer.activation == Activation::Softmax {
            free[k]
                .iter()
                .zip(d[k].iter())
                .map(|(&z, &dz)| {
                    if z > 0.0 {
                        dz * z.ln() + (z + dz) * (dz / z).ln_1p()
                    } else if dz > 0.0 {
                        dz * dz.ln() // 0 log 0 = 0
                    } else {
                        0.0
                    }
                })
                .sum::<f64>()
        } else {
            free[k].dot(&d[k]) + 0.5 * d[k].norm_squared()
        };
        let mut e = delta_g - d[k].dot(&a_hat);
        if k > 0 {
            e -= free[k].dot(&(&layer.w * &d[k - 1]));
        }
        total += s[k] * e;
    }
    total
}

/// The free phase of CHL by block-coordinate descent from `z` (the forward pass): each block
/// has the closed form `z_k = f_k(a_k + β_k W_{k+1}ᵀ z_{k+1})` (column-wise for softmax).
/// Returns the sweeps and the last sweep's largest change.
fn chl_free_phase(
    problem: &NestedProblem<'_>,
    x: &DMatrix<f64>,
    z: &mut [DMatrix<f64>],
    settings: &NestedSettings,
) -> Result<(usize, f64)> {
    let (net, betas, top) = (problem.net, &problem.betas, problem.top());
    let mut change = f64::INFINITY;
    for sweep in 1..=settings.max_sweeps {
        let mut size = 1.0f64;
        change = 0.0;
        for k in 0..=top {
            let mut u = pre_activation(net, x, z, k);
            if k < top {
                u += net.layers[k + 1].w.transpose() * &z[k + 1] * betas[k];
            }
            let new = activate_columns(net.layers[k].activation, &u);
            change = change.max((&new - &z[k]).amax());
            size = size.max(new.amax());
            z[k] = new;
        }
        check_divergence(size, settings, sweep, "|z|")?;
        if change <= settings.tol_step * size {
            return Ok((sweep, change));
        }
    }
    Err(Error::NotConverged {
        solver: "CHL block-coordinate descent (free phase)".into(),
        iterations: settings.max_sweeps,
        residual: change,
    })
}

/// [`Error::Unbounded`] once the iterates pass the divergence threshold: CHL's energy is
/// bilinear in adjacent layers and unbounded below for large β.
fn check_divergence(size: f64, settings: &NestedSettings, sweep: usize, what: &str) -> Result<()> {
    if !size.is_finite() || size > settings.divergence {
        return Err(Error::Unbounded(format!(
            "CHL block-coordinate descent diverged ({what} = {size:.3e} after {sweep} sweeps): the global energy is unbounded below for these beta"
        )));
    }
    Ok(())
}

/// `softmax(u + Δu) − softmax(u)` per column without cancellation: with `p = softmax(u)`,
/// `c = log1p(Σ p_i expm1(Δu_i))`, the difference is `p_i expm1(Δu_i − c)`.
fn softmax_increment(u: &DMatrix<f64>, du: &DMatrix<f64>) -> DMatrix<f64> {
    let p = activate_columns(Activation::Softmax, u);
    let mut out = DMatrix::zeros(u.nrows(), u.ncols());
    for j in 0..u.ncols() {
        let c = (0..u.nrows())
            .map(|i| p[(i, j)] * du[(i, j)].exp_m1())
            .sum::<f64>()
            .ln_1p();
        for i in 0..u.nrows() {
            out[(i, j)] = p[(i, j)] * (du[(i, j)] - c).exp_m1();
        }
    }
    out
}

/// `f(u + shift) − f(u)` without cancellation, for any activation.
fn increment(act: Activation, u: &DMatrix<f64>, shift: &DMatrix<f64>) -> DMatrix<f64> {
    if act == Activation::Softmax {
        softmax_increment(u, shift)
    } else {
        box_increment(act, u, shift)
    }
}

/// The clamped phase of CHL as block-coordinate descent on `d = ẑ − ž`, from `d = 0`, given the
/// converged free solution `ž`. Block `k`'s closed form `ẑ_k = f_k(ǔ_k + Δu_k)` with
/// `ǔ_k = a_k(ž_{k−1}) + β_k W_{k+1}ᵀ ž_{k+1}` and `Δu_k = W_k d_{k−1} + β_k W_{k+1}ᵀ d_{k+1}` becomes
/// `d_k = f_k(ǔ_k + Δu_k) − f_k(ǔ_k)`, evaluated without cancellation (exactly `Δu_k` inside the
/// box, exactly 0 on a bound; a subtraction only where a kink is crossed). The top block adds the
/// loss with weight `w = β_L` (per sample), see [`chl_top_block`]. Returns the sweeps and the last sweep's
/// largest change.
fn chl_difference(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    free: &[DMatrix<f64>],
    d: &mut [DMatrix<f64>],
    settings: &NestedSettings,
) -> Result<(usize, f64)> {
    let (net, betas, top) = (problem.net, &problem.betas, problem.top());
    let x = batch.x;
    let u_free: Vec<DMatrix<f64>> = (0..=top)
        .map(|k| {
            let mut u = pre_activation(net, x, free, k);
            if k < top {
                u += net.layers[k + 1].w.transpose() * &free[k + 1] * betas[k];
            }
            u
        })
        .collect();
    let w = betas[top];
    let mut change = f64::INFINITY;
    for sweep in 1..=settings.max_sweeps {
        let mut size = 0.0f64;
        change = 0.0;
        for k in 0..=top {
            let layer = &net.layers[k];
            let mut du = if k == 0 {
                DMatrix::zeros(layer.w.nrows(), x.ncols())
            } else {
                &layer.w * &d[k - 1]
            };
            if k < top {
                du += net.layers[k + 1].w.transpose() * &d[k + 1] * betas[k];
            }
            let new = if k == top {
                chl_top_block(
                    problem, batch, &u_free[k], &free[k], &du, &d[k], w, settings,
                )?
            } else {
                increment(layer.activation, &u_free[k], &du)
            };
            change = change.max((&new - &d[k]).amax());
            size = size.max(new.amax());
            d[k] = new;
        }
        check_divergence(size, settings, sweep, "|z^ - z~|")?;
        if change <= settings.tol_step * size || size == 0.0 {
            return Ok((sweep, change));
        }
    }
    Err(Error::NotConverged {
        solver: "CHL block-coordinate descent (clamped phase)".into(),
        iterations: settings.max_sweeps,
        residual: change,
    })
}

/// CHL's top block in the clamped phase, `d_L` given `Δu_L`, with the loss weight `w = β_L` (per sample):
/// * squared loss, box family: `d_L = f(ǔ + (Δu + w(t − ǔ))/(1 + w)) − f(ǔ)`;
/// * squared loss, softmax output: the fixed point of [`softmax_squared_top`];
/// * cross-entropy (identity output, `ž_L = ǔ_L`): Newton on
///   `d − Δu + w(softmax(ž_L + d)Σt − t) = 0` per sample.
#[allow(clippy::too_many_arguments)]
fn chl_top_block(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    u: &DMatrix<f64>,
    free: &DMatrix<f64>,
    du: &DMatrix<f64>,
    d: &DMatrix<f64>,
    w: f64,
    settings: &NestedSettings,
) -> Result<DMatrix<f64>> {
    let act = problem.net.layers[problem.top()].activation;
    let target = batch.target;
    match problem.loss {
        OutputLoss::Squared if act == Activation::Softmax => {
            Ok(softmax_squared_top(u, du, d, target, w, settings))
        }
        OutputLoss::Squared => {
            let shift = (du + (target - u) * w) / (1.0 + w);
            Ok(box_increment(act, u, &shift))
        }
        OutputLoss::SoftmaxCrossEntropy => {
            if act != Activation::Identity {
                return Err(Error::input(
                    "activation",
                    "CHL with cross-entropy needs an identity output layer (logits)",
                ));
            }
            let mut new = d.clone();
            for j in 0..u.ncols() {
                let dj = cross_entropy_top(
                    free.column(j),
                    target.column(j),
                    du.column(j),
                    d.column(j).into_owned(),
                    w,
                    settings,
                )?;
                new.column_mut(j).copy_from(&dj);
            }
            Ok(new)
        }
    }
}

/// Softmax output under the squared loss on the probabilities: `ẑ = p ⊙ e^ρ` with
/// `ρ = Δu − w(ẑ − t) − c` (stationarity of `G(z) − zᵀû + w½‖z − t‖²` on the simplex, minus the
/// free one), `c` normalizing `Σẑ = 1`. A fixed point with contraction factor `≤ w`; every
/// quantity is formed as a difference-free expression in `Δu`, `w` and `expm1`.
fn softmax_squared_top(
    u: &DMatrix<f64>,
    du: &DMatrix<f64>,
    d: &DMatrix<f64>,
    target: &DMatrix<f64>,
    w: f64,
    settings: &NestedSettings,
) -> DMatrix<f64> {
    let p = activate_columns(Activation::Softmax, u);
    let mut dd = d.clone();
    for _ in 0..settings.fixed_point_max_steps {
        let g = du - (&p + &dd - target) * w;
        let next = softmax_increment(u, &g);
        let step = (&next - &dd).amax();
        dd = next;
        if step <= settings.fixed_point_tol * dd.amax() {
            break;
        }
    }
    dd
}

/// One sample of the cross-entropy top block: Newton on `d − Δu + w(softmax(ž + d)Σt − t) = 0`,
/// whose Jacobian `I + wΣt(diag p − ppᵀ)` is positive definite.
fn cross_entropy_top(
    z: DVectorView<'_, f64>,
    t: DVectorView<'_, f64>,
    du: DVectorView<'_, f64>,
    mut dj: DVector<f64>,
    w: f64,
    settings: &NestedSettings,
) -> Result<DVector<f64>> {
    let (t, du) = (t.into_owned(), du.into_owned());
    for _ in 0..settings.newton_max_steps {
        let (_, lg, lh) = OutputLoss::SoftmaxCrossEntropy.sample(&(z + &dj), &t, w);
        let g = &dj - &du + lg;
        if g.amax() <= settings.tol_step * (du.amax() + dj.amax()) {
            break;
        }
        let h = DMatrix::identity(dj.len(), dj.len()) + lh;
        match h.cholesky() {
            Some(ch) => dj -= ch.solve(&g),
            None => return Err(Error::Singular("CHL output block".into())),
        }
    }
    Ok(dj)
}

use std::ops::AddAssign;
