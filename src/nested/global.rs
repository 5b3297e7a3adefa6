//! Prop. 4: the global contrastive objective, bottom-up (Eq. 22-25),
//! ```text
//!     L_GC^β(θ) = min_z {ℓ(z_L) + ℰ^β(z)} − min_z ℰ^β(z),   ℰ^β = Σ_k E_k(z_k, z_{k−1}) / Π_{l=k}^{L} β_l,
//! ```
//! with the gradient `∂_θ(ℰ^β(ẑ) − ℰ^β(ž))` at the clamped (`ẑ`) and free (`ž`) minimizers.
//!
//! This slice covers **convex CHL**: proximal energies `½‖z_k − W_k z_{k−1} − b_k‖² + ι_C(z_k)`
//! with box-family activations and the squared loss, where both phases are convex QPs (one per
//! sample; samples decouple). They are solved with the crate's QP backend and refined exactly
//! ([`crate::solve::qp::solve_exact`]).
//!
//! Scaling: the objective is multiplied by `Π_l β_l`, so layer `k` carries the weight
//! `Π_{l<k} β_l` and the loss `Π_l β_l` — `O(1)` for the bottom layer instead of `β^{−L}`.
//! Both phases are still solved separately and the gradient is a difference of the two, which
//! loses about `log10(Π β_l⁻¹)` digits. On the 3-layer network of `bilevel verify` the relative
//! error against back-propagation is 7.4e-3, 7.5e-4, 7.5e-5 at β = 1e-1, 1e-2, 1e-3 (the O(β)
//! bias) but 3.1e-4 at β = 1e-4, where rounding (≈ 1e-16 · 1e12) dominates. Solving for the
//! difference `ẑ − ž` directly is the planned route to β = 1e-4.

use nalgebra::{DMatrix, DVector};

use super::linearized::{check_betas, Gradients};
use super::{EnergyKind, Network, OutputLoss};
use crate::error::{Error, Result};
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
    /// Largest KKT residual over the (scaled) QPs.
    pub residual: f64,
}

/// Convex CHL on one batch (see the module docs).
///
/// # Errors
/// Energies other than [`EnergyKind::Proximal`], softmax layers or a loss other than squared
/// error (not QPs: later slices), shapes, invalid β, and the QP backend's errors.
pub fn global_contrastive(
    net: &Network<f64>,
    kind: EnergyKind,
    betas: &[f64],
    loss: OutputLoss,
    x: &DMatrix<f64>,
    target: &DMatrix<f64>,
) -> Result<GlobalSolution> {
    if kind != EnergyKind::Proximal || loss != OutputLoss::Squared {
        return Err(Error::input(
            "energy",
            "the global contrastive solver covers proximal energies with squared loss (convex CHL) so far",
        ));
    }
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
    let mut value = 0.0;
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
        let obj = |qp: &Qp, v: &DVector<f64>| 0.5 * v.dot(&(&qp.p * v)) + qp.q.dot(v);
        // Constant terms cancel in the difference (the loss's ½‖t‖² is added back below).
        value += (obj(&clamped_qp, &zc.x) - obj(&free_qp, &zf.x)) / prod
            + loss_w / prod * 0.5 * target.column(j).norm_squared();
        for k in 0..=top {
            clamped[k]
                .column_mut(j)
                .copy_from(&zc.x.rows(offsets[k], widths[k]));
            free[k]
                .column_mut(j)
                .copy_from(&zf.x.rows(offsets[k], widths[k]));
        }
    }
    // Gradient: c_k [−(ẑ_k − â_k) ẑ_{k−1}ᵀ + (ž_k − ǎ_k) ž_{k−1}ᵀ], c_k = s_k / Π β.
    let mut grad = Gradients::zeros(net);
    for k in 0..=top {
        let layer = &net.layers[k];
        let ck = s[k] / prod;
        let residual_of = |z: &[DMatrix<f64>]| -> (DMatrix<f64>, DMatrix<f64>) {
            let input = if k == 0 { x.clone() } else { z[k - 1].clone() };
            let mut r = &z[k] - &layer.w * &input;
            for mut c in r.column_iter_mut() {
                c -= &layer.b;
            }
            (r, input)
        };
        let (rc, ic) = residual_of(&clamped);
        let (rf, inf) = residual_of(&free);
        grad.w[k] = (&rf * inf.transpose() - &rc * ic.transpose()) * ck;
        grad.b[k] = (rf.column_sum() - rc.column_sum()) * ck;
    }
    Ok(GlobalSolution {
        clamped,
        free,
        value,
        grad,
        residual,
    })
}

use std::ops::{AddAssign, SubAssign};
