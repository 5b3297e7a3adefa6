//! What the global solvers share: boxes, pre-activations, increments of an activation, the
//! divergence check and the report of convex CHL.

use nalgebra::DMatrix;

use crate::error::{Error, Result};
use crate::nested::linearized::Gradients;
use crate::nested::{
    activate_columns, Batch, NestedReport, NestedSettings, NestedStatus, Network, OutputLoss,
};
use crate::prox::Activation;

/// Each layer's box `(lo, hi)`.
///
/// # Errors
/// A softmax layer (not a QP layer).
pub(super) fn box_bounds(net: &Network<f64>) -> Result<Vec<(f64, f64)>> {
    net.layers
        .iter()
        .map(|l| {
            l.activation
                .bounds()
                .ok_or_else(|| Error::input("activation", "softmax is not a QP layer"))
        })
        .collect()
}

/// Convex CHL's report from the free solution `ž` and the difference `d = ẑ − ž` (layer weights
/// `s_k = Π_{l<k} β_l`, `s_L = Π β`), shared by the per-sample QP and the batched solver. With
/// `r_k = z_k − W_k z_{k−1} − b_k` and `Δr_k = d_k − W_k d_{k−1}`:
/// * value: `Σ_k s_k(řᵀΔr_k + ½‖Δr_k‖²)/Πβ + mean ½‖ẑ_L − t‖²` (Eq. 22, the free energy's
///   `½‖ř‖²` terms cancel analytically, not numerically);
/// * gradient: `c_k[ř_k ž_{k−1}ᵀ − r̂_k ẑ_{k−1}ᵀ] = −c_k[ř_k d_{k−1}ᵀ + Δr_k ẑ_{k−1}ᵀ]`,
///   `c_k = s_k/Πβ`.
pub(super) fn proximal_report(
    net: &Network<f64>,
    s: &[f64],
    batch: Batch<'_>,
    (free, d): (Vec<DMatrix<f64>>, &[DMatrix<f64>]),
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

/// `a_k = W_k z_{k−1} + b_k` of a batch (`z_0 = x`).
pub(super) fn pre_activation(
    net: &Network<f64>,
    x: &DMatrix<f64>,
    z: &[DMatrix<f64>],
    k: usize,
) -> DMatrix<f64> {
    net.layers[k].affine(if k == 0 { x } else { &z[k - 1] })
}

/// `f(base + v) − f(base)` for a box-family layer without cancellation (exactly `v` inside the
/// box, exactly 0 on a bound): `−D_1 f(base)[−v]`.
pub(super) fn box_increment(
    act: Activation,
    base: &DMatrix<f64>,
    v: &DMatrix<f64>,
) -> DMatrix<f64> {
    let neg = -v;
    let mut out = DMatrix::zeros(v.nrows(), v.ncols());
    act.difference_quotient(base.as_slice(), neg.as_slice(), 1.0, out.as_mut_slice());
    -out
}

/// [`Error::Unbounded`] once the iterates pass the divergence threshold: CHL's energy is
/// bilinear in adjacent layers and unbounded below for large β.
pub(super) fn check_divergence(
    size: f64,
    settings: &NestedSettings,
    sweep: usize,
    what: &str,
) -> Result<()> {
    if !size.is_finite() || size > settings.divergence {
        return Err(Error::Unbounded(format!(
            "CHL block-coordinate descent diverged ({what} = {size:.3e} after {sweep} sweeps): the global energy is unbounded below for these beta"
        )));
    }
    Ok(())
}

/// `softmax(u + Δu) − softmax(u)` per column without cancellation: with `p = softmax(u)`,
/// `c = log1p(Σ p_i expm1(Δu_i))`, the difference is `p_i expm1(Δu_i − c)`.
pub(super) fn softmax_increment(u: &DMatrix<f64>, du: &DMatrix<f64>) -> DMatrix<f64> {
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
pub(super) fn increment(act: Activation, u: &DMatrix<f64>, shift: &DMatrix<f64>) -> DMatrix<f64> {
    if act == Activation::Softmax {
        softmax_increment(u, shift)
    } else {
        box_increment(act, u, shift)
    }
}
