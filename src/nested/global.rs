//! Prop. 4: the global contrastive objective, bottom-up (Eq. 22-25),
//! ```text
//!     L_GC^β(θ) = min_z {ℓ(z_L) + ℰ^β(z)} − min_z ℰ^β(z),   ℰ^β = Σ_k E_k(z_k, z_{k−1}) / Π_{l=k}^{L} β_l,
//! ```
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
//! with `d`. On the network of `bilevel verify`, convex CHL's relative error against
//! back-propagation is 7.4e-3, 7.5e-4, 7.5e-5, 7.5e-6 at β = 1e-1 … 1e-4: the O(β) bias only.

use nalgebra::{DMatrix, DVector};

use super::linearized::{check_betas, Gradients};
use super::{EnergyKind, Network, OutputLoss};
use crate::error::{Error, Result};
use crate::linalg::select_rows;
use crate::solve::qp::{solve_exact, Clarabel, Qp, QpBackend, Tolerances};

/// Clamped and free minimizers of Eq. 24 with the surrogate value and gradient.
#[derive(Debug, Clone)]
#[must_use]
pub struct GlobalSolution {
    /// Clamped solution `ẑ_1..ẑ_L` (`n_k × B`).
    pub clamped: Vec<DMatrix<f64>>,
    /// Free solution `ž_1..ž_L`.
    pub free: Vec<DMatrix<f64>>,
    /// `L_GC^β(θ)` (Eq. 22; the batch loss is the mean over samples).
    pub value: f64,
    /// `∂_θ(ℰ^β(ẑ) − ℰ^β(ž))`.
    pub grad: Gradients<f64>,
    /// Largest KKT residual over the (scaled) QPs (convex CHL), or the last block-coordinate
    /// sweep's largest change (CHL).
    pub residual: f64,
}

/// The global contrastive objective on one batch: convex CHL for proximal energies, CHL for
/// Fenchel energies (see the module docs).
///
/// # Errors
/// Penalizer energies (their free energy is minimized by the forward pass: use
/// [`super::local`]), softmax layers in convex CHL (not a QP), convex CHL with a loss other than
/// squared error (not a QP), softmax output layers with cross-entropy (which expects logits),
/// shapes, invalid β, the QP backend's errors, and for CHL divergence or non-convergence.
pub fn global_contrastive(
    net: &Network<f64>,
    kind: EnergyKind,
    betas: &[f64],
    loss: OutputLoss,
    x: &DMatrix<f64>,
    target: &DMatrix<f64>,
) -> Result<GlobalSolution> {
    match kind {
        EnergyKind::Proximal if loss == OutputLoss::Squared => convex_chl(net, betas, x, target),
        EnergyKind::Proximal => Err(Error::input("loss", "convex CHL is a QP only with the squared loss")),
        EnergyKind::Fenchel => chl(net, betas, loss, x, target),
        EnergyKind::Penalizer => Err(Error::input(
            "energy",
            "penalizer energies: the free phase is the forward pass (Section 3.2.1); use the local contrastive solver",
        )),
    }
}

fn convex_chl(
    net: &Network<f64>,
    betas: &[f64],
    x: &DMatrix<f64>,
    target: &DMatrix<f64>,
) -> Result<GlobalSolution> {
    let kind = EnergyKind::Proximal;
    net.validate(kind)?;
    check_betas(betas, net.layers.len())?;
    let widths = net.widths();
    let top = widths.len() - 1;
    net.check_batch(x, target)?;
    let bounds: Vec<(f64, f64)> = net
        .layers
        .iter()
        .map(|l| {
            l.activation
                .bounds()
                .ok_or_else(|| Error::input("activation", "softmax is not a QP layer"))
        })
        .collect::<Result<_>>()?;
    let batch = x.ncols();
    let mut offsets = vec![0; widths.len()];
    for k in 1..widths.len() {
        offsets[k] = offsets[k - 1] + widths[k - 1];
    }
    let n: usize = widths.iter().sum();
    // Scaled weights: s_k = Π_{l<k} β_l for layer k, s_{L+1} = Π_l β_l for the loss.
    let mut s = vec![1.0; widths.len() + 1];
    for k in 1..=widths.len() {
        s[k] = s[k - 1] * betas[k - 1];
    }
    let prod = s[widths.len()];

    // P and the x-independent part of q are shared by all samples.
    let mut p = DMatrix::zeros(n, n);
    for k in 0..=top {
        let (ok, nk) = (offsets[k], widths[k]);
        for i in 0..nk {
            p[(ok + i, ok + i)] += s[k];
        }
        if k > 0 {
            let w = &net.layers[k].w;
            let (op, np) = (offsets[k - 1], widths[k - 1]);
            p.view_mut((op, op), (np, np))
                .add_assign(&(w.transpose() * w * s[k]));
            p.view_mut((ok, op), (nk, np)).sub_assign(&(w * s[k]));
            p.view_mut((op, ok), (np, nk))
                .sub_assign(&(w.transpose() * s[k]));
        }
    }
    // Box rows.
    let mut rows: Vec<(usize, f64, f64)> = Vec::new();
    for k in 0..=top {
        let (lo, hi) = bounds[k];
        for i in 0..widths[k] {
            if lo.is_finite() {
                rows.push((offsets[k] + i, 1.0, lo));
            }
            if hi.is_finite() {
                rows.push((offsets[k] + i, -1.0, -hi));
            }
        }
    }
    let mut a = DMatrix::zeros(rows.len(), n);
    let mut b = DVector::zeros(rows.len());
    for (r, &(j, coef, rhs)) in rows.iter().enumerate() {
        a[(r, j)] = coef;
        b[r] = rhs;
    }
    let backend = Clarabel::default();
    let tol = Tolerances::default();
    let mut clamped: Vec<DMatrix<f64>> = widths.iter().map(|&w| DMatrix::zeros(w, batch)).collect();
    let mut free = clamped.clone();
    let mut diffs = clamped.clone();
    let mut residual = 0.0f64;
    let loss_w = prod / batch as f64;
    for j in 0..batch {
        // Linear term: −Σ_k s_k J_kᵀ const_k, const_1 = W_1 x + b_1, const_k = b_k.
        let mut q = DVector::zeros(n);
        for k in 0..=top {
            let layer = &net.layers[k];
            let c = if k == 0 {
                &layer.w * x.column(j) + &layer.b
            } else {
                layer.b.clone()
            };
            q.rows_mut(offsets[k], widths[k]).sub_assign(&(&c * s[k]));
            if k > 0 {
                let back = layer.w.transpose() * &c * s[k];
                q.rows_mut(offsets[k - 1], widths[k - 1]).add_assign(&back);
            }
        }
        let free_qp = Qp {
            p: p.clone(),
            q: q.clone(),
            a: a.clone(),
            b: b.clone(),
            a_eq: DMatrix::zeros(0, n),
            b_eq: DVector::zeros(0),
        };
        let mut clamped_qp = free_qp.clone();
        let (ot, nt) = (offsets[top], widths[top]);
        for i in 0..nt {
            clamped_qp.p[(ot + i, ot + i)] += loss_w;
        }
        clamped_qp
            .q
            .rows_mut(ot, nt)
            .sub_assign(&(target.column(j) * loss_w));
        let zf = solve_exact(&backend as &dyn QpBackend, &free_qp, &tol)?;
        let zc = solve_exact(&backend as &dyn QpBackend, &clamped_qp, &tol)?;
        residual = residual.max(zf.residual).max(zc.residual);
        // d = ẑ − ž from the difference of the two KKT systems on the clamped working set Ŵ:
        // (P + wE) d + A_Ŵᵀ ν = −wE(ž − t) − Σ_{i∈W̌∖Ŵ} a_iᵀ λ̌_i,  a_i d = b_i − a_i ž (i ∈ Ŵ),
        // whose right-hand side is O(w): d comes out with relative, not absolute, accuracy.
        let rows: Vec<usize> = (0..a.nrows()).filter(|&i| zc.working[i]).collect();
        let mut r1 = DVector::zeros(n);
        for i in 0..nt {
            r1[ot + i] = -loss_w * (zf.x[ot + i] - target[(i, j)]);
        }
        for i in (0..a.nrows()).filter(|&i| zf.working[i] && !zc.working[i]) {
            r1 -= a.row(i).transpose() * zf.lambda[i];
        }
        let r2 = DVector::from_iterator(
            rows.len(),
            rows.iter().map(|&i| {
                if zf.working[i] {
                    0.0
                } else {
                    b[i] - a.row(i).dot(&zf.x.transpose())
                }
            }),
        );
        let diff = crate::linalg::solve_kkt(&clamped_qp.p, &select_rows(&a, &rows), &r1, &r2)?;
        let d = diff.x;
        for k in 0..=top {
            free[k]
                .column_mut(j)
                .copy_from(&zf.x.rows(offsets[k], widths[k]));
            diffs[k]
                .column_mut(j)
                .copy_from(&d.rows(offsets[k], widths[k]));
            clamped[k]
                .column_mut(j)
                .copy_from(&(zf.x.rows(offsets[k], widths[k]) + d.rows(offsets[k], widths[k])));
        }
    }
    let (value, grad) = proximal_value_and_gradient(net, &s, x, target, &free, &diffs);
    Ok(GlobalSolution {
        clamped,
        free,
        value,
        grad,
        residual,
    })
}

/// Value and gradient of convex CHL from the free solution `ž` and the difference `d = ẑ − ž`
/// (layer weights `s_k = Π_{l<k} β_l`, `s_L = Π β`), shared by the per-sample QP and the
/// batched solver. With `r_k = z_k − W_k z_{k−1} − b_k` and `Δr_k = d_k − W_k d_{k−1}`:
/// * value: `Σ_k s_k(řᵀΔr_k + ½‖Δr_k‖²)/Πβ + mean ½‖ẑ_L − t‖²` (Eq. 22, the free energy's
///   `½‖ř‖²` terms cancel analytically, not numerically);
/// * gradient: `c_k[ř_k ž_{k−1}ᵀ − r̂_k ẑ_{k−1}ᵀ] = −c_k[ř_k d_{k−1}ᵀ + Δr_k ẑ_{k−1}ᵀ]`,
///   `c_k = s_k/Πβ`.
fn proximal_value_and_gradient(
    net: &Network<f64>,
    s: &[f64],
    x: &DMatrix<f64>,
    target: &DMatrix<f64>,
    free: &[DMatrix<f64>],
    d: &[DMatrix<f64>],
) -> (f64, Gradients<f64>) {
    let top = net.layers.len() - 1;
    let prod = s[top + 1];
    let batch = x.ncols() as f64;
    let mut grad = Gradients::zeros(net);
    let mut value = 0.5 * (&free[top] + &d[top] - target).norm_squared() / batch;
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
        grad.b[k] = -dr.column_sum() * ck;
    }
    (value, grad)
}

/// Convex CHL (proximal energies, box-family activations, squared loss) for the whole batch at
/// once, without a QP solver: block-coordinate projected gradient over layers on matrices whose
/// columns are the samples (every step is a batched matrix product).
///
/// Free phase from the forward pass; clamped phase on `d = ẑ − ž` from `d = 0`. Block `k`
/// (objective divided by `s_k`): `½‖z_k − W_k z_{k−1} − b_k‖² + (β_k/2)‖z_{k+1} − W_{k+1} z_k − b_{k+1}‖²`
/// over the box, by projected gradient with step `1/(1 + β_k‖W_{k+1}‖₂²)`; the top block
/// (`½‖z − a_L‖² + (β_L/B)½‖z − t‖²` in the clamped phase) is separable and closed-form. In the
/// clamped phase the free gradient is snapped to exact stationarity (zero off the bounds) and
/// every step is an increment `clamp(ž + v) − ž` formed without cancellation, so `d` keeps its
/// relative accuracy for small β, as in [`global_contrastive`]. Layers couple with strength
/// about `β_k‖W‖²`: the method is fast for small β and slow (reported as
/// [`Error::NotConverged`]) when that product approaches 1.
///
/// # Errors
/// As [`global_contrastive`] for proximal energies; [`Error::NotConverged`] after `max_sweeps`.
pub fn convex_chl_batched(
    net: &Network<f64>,
    betas: &[f64],
    x: &DMatrix<f64>,
    target: &DMatrix<f64>,
    max_sweeps: usize,
) -> Result<GlobalSolution> {
    net.validate(EnergyKind::Proximal)?;
    check_betas(betas, net.layers.len())?;
    net.check_batch(x, target)?;
    if net.layers.iter().any(|l| l.activation.bounds().is_none()) {
        return Err(Error::input("activation", "softmax is not a QP layer"));
    }
    let top = net.layers.len() - 1;
    let batch = x.ncols();
    let s = scaled_weights(betas);
    // Step sizes 1/(1 + β_k‖W_{k+1}‖₂²) (power iteration, with 10 % margin: it converges from
    // below).
    let steps: Vec<f64> = (0..=top)
        .map(|k| {
            if k == top {
                1.0
            } else {
                1.0 / (1.0 + 1.1 * betas[k] * spectral_norm_sq(&net.layers[k + 1].w))
            }
        })
        .collect();
    let clamp = |k: usize, v: &DMatrix<f64>| super::activate_columns(net.layers[k].activation, v);
    let input = |z: &[DMatrix<f64>], k: usize| -> DMatrix<f64> {
        net.layers[k].affine(if k == 0 { x } else { &z[k - 1] })
    };
    // Free phase.
    let mut ws = super::linearized::Workspace::new(net, batch);
    super::linearized::forward(net, x, &mut ws)?;
    let mut free = ws.z;
    let mut sweeps = 0;
    loop {
        sweeps += 1;
        let (mut change, mut size) = (0.0f64, 1.0f64);
        for k in 0..=top {
            let a = input(&free, k);
            let new = if k == top {
                clamp(k, &a)
            } else {
                let r_up = &free[k + 1] - input(&free, k + 1);
                let g = &free[k] - &a - net.layers[k + 1].w.transpose() * r_up * betas[k];
                clamp(k, &(&free[k] - g * steps[k]))
            };
            change = change.max((&new - &free[k]).amax());
            size = size.max(new.amax());
            free[k] = new;
        }
        if change <= 1e-15 * size {
            break;
        }
        if sweeps >= max_sweeps || !change.is_finite() {
            return Err(Error::NotConverged {
                solver: "convex CHL batched block-coordinate descent (free phase)".into(),
                iterations: sweeps,
                residual: change,
            });
        }
    }
    // Exact stationarity of the free phase: g0_k = ř_k − β_k W_{k+1}ᵀ ř_{k+1} vanishes off the
    // bounds; on a bound it is the (scaled) multiplier.
    let r_free: Vec<DMatrix<f64>> = (0..=top).map(|k| &free[k] - input(&free, k)).collect();
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
    // Clamped phase on d.
    let w = betas[top] / batch as f64;
    let increment = |k: usize, base: &DMatrix<f64>, v: &DMatrix<f64>| -> DMatrix<f64> {
        // clamp(base + v) − clamp(base) = −D_1 f(base)[−v]
        let neg = -v;
        let mut out = DMatrix::zeros(v.nrows(), v.ncols());
        net.layers[k].activation.difference_quotient(
            base.as_slice(),
            neg.as_slice(),
            1.0,
            out.as_mut_slice(),
        );
        -out
    };
    let a_top_free = input(&free, top);
    let mut d: Vec<DMatrix<f64>> = free
        .iter()
        .map(|z| DMatrix::zeros(z.nrows(), z.ncols()))
        .collect();
    let mut clamped_sweeps = 0;
    loop {
        clamped_sweeps += 1;
        let (mut change, mut size) = (0.0f64, 0.0f64);
        for k in 0..=top {
            let below = if k == 0 {
                DMatrix::zeros(d[0].nrows(), batch)
            } else {
                &net.layers[k].w * &d[k - 1]
            };
            let new = if k == top {
                // z = clamp((â + w t)/(1 + w)), â = ǎ + W d_{L−1}
                let v = (&below + (target - &a_top_free) * w) / (1.0 + w);
                increment(k, &a_top_free, &v)
            } else {
                let dr_up = &d[k + 1] - &net.layers[k + 1].w * &d[k];
                let grad =
                    &g0[k] + &d[k] - &below - net.layers[k + 1].w.transpose() * dr_up * betas[k];
                let v = &d[k] - grad * steps[k];
                increment(k, &free[k], &v)
            };
            change = change.max((&new - &d[k]).amax());
            size = size.max(new.amax());
            d[k] = new;
        }
        if change <= 1e-15 * size || size == 0.0 {
            break;
        }
        if clamped_sweeps >= max_sweeps || !change.is_finite() {
            return Err(Error::NotConverged {
                solver: "convex CHL batched block-coordinate descent (clamped phase)".into(),
                iterations: clamped_sweeps,
                residual: change,
            });
        }
    }
    let (value, grad) = proximal_value_and_gradient(net, &s, x, target, &free, &d);
    let clamped = free.iter().zip(&d).map(|(z, dz)| z + dz).collect();
    Ok(GlobalSolution {
        clamped,
        free,
        value,
        grad,
        residual: 0.0,
    })
}

/// `‖W‖₂²` by 100 steps of power iteration on `WᵀW` (a lower estimate converging from below).
pub(crate) fn spectral_norm_sq(w: &DMatrix<f64>) -> f64 {
    let wtw = w.transpose() * w;
    let ones = DVector::from_element(wtw.nrows(), 1.0);
    crate::linalg::power_iteration(&ones, 100, |v| Some(&wtw * v))
}

use std::ops::{AddAssign, SubAssign};

/// Scaled layer weights `s_k = Π_{l<k} β_l` (layer `k`, 0-based) and `s_L = Π_l β_l` (loss).
fn scaled_weights(betas: &[f64]) -> Vec<f64> {
    let mut s = vec![1.0; betas.len() + 1];
    for k in 1..=betas.len() {
        s[k] = s[k - 1] * betas[k - 1];
    }
    s
}

/// The free phase of CHL by block-coordinate descent from `z` (the forward pass): each block
/// has the closed form `z_k = f_k(a_k + β_k W_{k+1}ᵀ z_{k+1})` (column-wise for softmax).
fn chl_free_phase(
    net: &Network<f64>,
    betas: &[f64],
    x: &DMatrix<f64>,
    z: &mut [DMatrix<f64>],
) -> Result<(usize, f64)> {
    let top = net.layers.len() - 1;
    for sweep in 1..=20_000 {
        let (mut change, mut size) = (0.0f64, 1.0f64);
        for k in 0..=top {
            let mut u = net.layers[k].affine(if k == 0 { x } else { &z[k - 1] });
            if k < top {
                u += net.layers[k + 1].w.transpose() * &z[k + 1] * betas[k];
            }
            let new = super::activate_columns(net.layers[k].activation, &u);
            change = change.max((&new - &z[k]).amax());
            size = size.max(new.amax());
            z[k] = new;
        }
        if !size.is_finite() || size > 1e12 {
            return Err(Error::Unbounded(format!(
                "CHL block-coordinate descent diverged (|z| = {size:.3e} after {sweep} sweeps): the global energy is unbounded below for these beta"
            )));
        }
        if change <= 1e-15 * size {
            return Ok((sweep, change));
        }
    }
    Err(Error::NotConverged {
        solver: "CHL block-coordinate descent (free phase)".into(),
        iterations: 20_000,
        residual: f64::NAN,
    })
}

/// `softmax(u + Δu) − softmax(u)` per column without cancellation: with `p = softmax(u)`,
/// `c = log1p(Σ p_i expm1(Δu_i))`, the difference is `p_i expm1(Δu_i − c)`.
fn softmax_increment(u: &DMatrix<f64>, du: &DMatrix<f64>) -> DMatrix<f64> {
    let p = super::activate_columns(crate::prox::Activation::Softmax, u);
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

/// The clamped phase of CHL as block-coordinate descent on `d = ẑ − ž`, from `d = 0`, given the
/// converged free solution `ž`. Block `k`'s closed form `ẑ_k = f_k(ǔ_k + Δu_k)` with
/// `ǔ_k = a_k(ž_{k−1}) + β_k W_{k+1}ᵀ ž_{k+1}` and `Δu_k = W_k d_{k−1} + β_k W_{k+1}ᵀ d_{k+1}` becomes
/// `d_k = f_k(ǔ_k + Δu_k) − f_k(ǔ_k)`, evaluated without cancellation (exactly `Δu_k` inside the
/// box, exactly 0 on a bound; a subtraction only where a kink is crossed). The top block adds the
/// loss with weight `w = β_L/B`: squared error `d_L = f(ǔ + (Δu + w(t − ǔ))/(1 + w)) − f(ǔ)`;
/// cross-entropy (identity output, `ž_L = ǔ_L`) solves `d − Δu + w(softmax(ž_L + d)Σt − t) = 0`
/// by Newton.
#[allow(clippy::too_many_arguments)]
fn chl_difference(
    net: &Network<f64>,
    betas: &[f64],
    loss: OutputLoss,
    x: &DMatrix<f64>,
    target: &DMatrix<f64>,
    loss_weight: f64,
    free: &[DMatrix<f64>],
    d: &mut [DMatrix<f64>],
) -> Result<(usize, f64)> {
    let top = net.layers.len() - 1;
    let u_free: Vec<DMatrix<f64>> = (0..=top)
        .map(|k| {
            let mut u = net.layers[k].affine(if k == 0 { x } else { &free[k - 1] });
            if k < top {
                u += net.layers[k + 1].w.transpose() * &free[k + 1] * betas[k];
            }
            u
        })
        .collect();
    for sweep in 1..=20_000 {
        let (mut change, mut size) = (0.0f64, 0.0f64);
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
            let u = &u_free[k];
            let mut new = DMatrix::zeros(u.nrows(), u.ncols());
            let softmax = layer.activation == crate::prox::Activation::Softmax;
            let increment = |shift: &DMatrix<f64>, out: &mut DMatrix<f64>| {
                if softmax {
                    *out = softmax_increment(u, shift);
                    return;
                }
                // f(u + shift) − f(u) = −D_1 f(u)[−shift]
                let neg = -shift;
                layer.activation.difference_quotient(
                    u.as_slice(),
                    neg.as_slice(),
                    1.0,
                    out.as_mut_slice(),
                );
                out.neg_mut();
            };
            if k == top && loss_weight > 0.0 {
                match loss {
                    // Softmax output, squared loss on the probabilities: ẑ = p ⊙ e^ρ with
                    // ρ = Δu − w(ẑ − t) − c (stationarity of G(z) − zᵀû + w½‖z − t‖² on the
                    // simplex, minus the free one), c normalizing Σẑ = 1. A fixed point with
                    // contraction factor ≤ w; every quantity is formed as a difference-free
                    // expression in Δu, w and expm1.
                    OutputLoss::Squared if softmax => {
                        let p = super::activate_columns(layer.activation, u);
                        let mut dd = d[k].clone();
                        for _ in 0..1000 {
                            let g = &du - (&p + &dd - target) * loss_weight;
                            let next = softmax_increment(u, &g);
                            let step = (&next - &dd).amax();
                            dd = next;
                            if step <= 1e-16 * dd.amax() {
                                break;
                            }
                        }
                        new = dd;
                    }
                    OutputLoss::Squared => {
                        let shift = (&du + (target - u) * loss_weight) / (1.0 + loss_weight);
                        increment(&shift, &mut new);
                    }
                    OutputLoss::SoftmaxCrossEntropy => {
                        if layer.activation != crate::prox::Activation::Identity {
                            return Err(Error::input(
                                "activation",
                                "CHL with cross-entropy needs an identity output layer (logits)",
                            ));
                        }
                        for j in 0..u.ncols() {
                            let (zj, tj) = (free[k].column(j), target.column(j).into_owned());
                            let duj = du.column(j).into_owned();
                            let mut dj = d[k].column(j).into_owned();
                            for _ in 0..50 {
                                let v = zj + &dj;
                                let lse = crate::prox::log_sum_exp(v.as_slice());
                                let p = v.map(|e| (e - lse).exp());
                                let g = &dj - &duj + (&p * tj.sum() - &tj) * loss_weight;
                                if g.amax() <= 1e-15 * (duj.amax() + dj.amax()) {
                                    break;
                                }
                                let h = DMatrix::identity(p.len(), p.len())
                                    + (DMatrix::from_diagonal(&p) - &p * p.transpose())
                                        * (loss_weight * tj.sum());
                                match h.cholesky() {
                                    Some(ch) => dj -= ch.solve(&g),
                                    None => return Err(Error::Singular("CHL output block".into())),
                                }
                            }
                            new.column_mut(j).copy_from(&dj);
                        }
                    }
                }
            } else {
                increment(&du, &mut new);
            }
            change = change.max((&new - &d[k]).amax());
            size = size.max(new.amax());
            d[k] = new;
        }
        if !size.is_finite() || size > 1e12 {
            return Err(Error::Unbounded(format!(
                "CHL block-coordinate descent diverged (|z^ - z~| = {size:.3e} after {sweep} sweeps): the global energy is unbounded below for these beta"
            )));
        }
        if change <= 1e-15 * size || size == 0.0 {
            return Ok((sweep, change));
        }
    }
    Err(Error::NotConverged {
        solver: "CHL block-coordinate descent (clamped phase)".into(),
        iterations: 20_000,
        residual: f64::NAN,
    })
}

/// CHL (Fenchel energies) by block-coordinate descent, see the module docs.
fn chl(
    net: &Network<f64>,
    betas: &[f64],
    loss: OutputLoss,
    x: &DMatrix<f64>,
    target: &DMatrix<f64>,
) -> Result<GlobalSolution> {
    net.validate(EnergyKind::Fenchel)?;
    check_betas(betas, net.layers.len())?;
    net.check_batch(x, target)?;
    let top = net.layers.len() - 1;
    let batch = x.ncols();
    // Forward pass as the starting point of both phases.
    let mut ws = super::linearized::Workspace::new(net, batch);
    super::linearized::forward(net, x, &mut ws)?;
    let mut free = ws.z;
    let (_, r_free) = chl_free_phase(net, betas, x, &mut free)?;
    let w_top = betas[top] / batch as f64;
    let mut d: Vec<DMatrix<f64>> = free
        .iter()
        .map(|z| DMatrix::zeros(z.nrows(), z.ncols()))
        .collect();
    let (_, r_clamped) = chl_difference(net, betas, loss, x, target, w_top, &free, &mut d)?;
    let clamped: Vec<DMatrix<f64>> = free.iter().zip(&d).map(|(z, dz)| z + dz).collect();
    let s = scaled_weights(betas);
    let prod = s[top + 1];
    // Energy difference per layer from d: ΔE_k = ΔG_k − dᵀâ_k − žᵀW_k d_{k−1} with
    // ΔG = žᵀd + ½‖d‖² (box family, G = ½‖z‖² on the box) or Σ d log ž + ẑ log1p(d/ž)
    // (softmax, G = Σ z log z): products with d, never a difference of O(1) energies.
    let mut delta_energy = 0.0;
    for (k, layer) in net.layers.iter().enumerate() {
        let a_hat = layer.affine(if k == 0 { x } else { &clamped[k - 1] });
        let delta_g = if layer.activation == crate::prox::Activation::Softmax {
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
        delta_energy += s[k] * e;
    }
    let mut loss_grad = clamped[top].clone();
    let loss_value = loss.value_and_gradient(&clamped[top], target, &mut loss_grad);
    let value = loss_value + delta_energy / prod;
    let mut grad = Gradients::zeros(net);
    for k in 0..=top {
        let ck = s[k] / prod;
        // ẑ_k ẑ_{k−1}ᵀ − ž_k ž_{k−1}ᵀ = d_k ẑ_{k−1}ᵀ + ž_k d_{k−1}ᵀ
        let input = if k == 0 { x } else { &clamped[k - 1] };
        let mut outer = &d[k] * input.transpose();
        if k > 0 {
            outer += &free[k] * d[k - 1].transpose();
        }
        grad.w[k] = -outer * ck;
        grad.b[k] = -d[k].column_sum() * ck;
    }
    // Residual: the last sweep's largest change (a fixed point of the block updates).
    Ok(GlobalSolution {
        clamped,
        free,
        value,
        grad,
        residual: r_free.max(r_clamped),
    })
}
