//! Independent references shared by `verify` and the tests, each written once and never built
//! from the code it checks: central differences, the Appendix C pullback and Example 1's
//! quotient, spelled out from the paper.

use nalgebra::{DMatrix, DVector};

use crate::error::Result;
use crate::nested::linearized::Gradients;
use crate::nested::Network;

/// Central differences `(f(θ + h e_j) − f(θ − h e_j)) / 2h` of a scalar function, every `j`
/// (error `O(h²)` where `f` is smooth, plus rounding `≈ ε|f|/h`).
///
/// # Errors
/// The first error of `f`.
pub fn central(
    mut f: impl FnMut(&DVector<f64>) -> Result<f64>,
    theta: &DVector<f64>,
    h: f64,
) -> Result<DVector<f64>> {
    let mut g = DVector::zeros(theta.len());
    let mut t = theta.clone();
    for j in 0..theta.len() {
        t[j] = theta[j] + h;
        let plus = f(&t)?;
        t[j] = theta[j] - h;
        let minus = f(&t)?;
        t[j] = theta[j];
        g[j] = (plus - minus) / (2.0 * h);
    }
    Ok(g)
}

/// [`central`] in every weight and bias of a network: the result is shaped like its
/// [`Gradients`].
///
/// # Errors
/// The first error of `value`.
pub fn central_network(
    net: &Network<f64>,
    h: f64,
    mut value: impl FnMut(&Network<f64>) -> Result<f64>,
) -> Result<Gradients<f64>> {
    let mut grads = Gradients::zeros(net);
    let mut probe = net.clone();
    for k in 0..net.layers.len() {
        for idx in 0..net.layers[k].w.len() {
            let w0 = net.layers[k].w[idx];
            probe.layers[k].w[idx] = w0 + h;
            let plus = value(&probe)?;
            probe.layers[k].w[idx] = w0 - h;
            let minus = value(&probe)?;
            probe.layers[k].w[idx] = w0;
            grads.w[k][idx] = (plus - minus) / (2.0 * h);
        }
        for idx in 0..net.layers[k].bias.len() {
            let b0 = net.layers[k].bias[idx];
            probe.layers[k].bias[idx] = b0 + h;
            let plus = value(&probe)?;
            probe.layers[k].bias[idx] = b0 - h;
            let minus = value(&probe)?;
            probe.layers[k].bias[idx] = b0;
            grads.bias[k][idx] = (plus - minus) / (2.0 * h);
        }
    }
    Ok(grads)
}

/// The paper's Appendix C code, written out: Fenchel back-propagation with equal `β` through
/// ReLU hidden layers and an identity output layer is back-propagation with the pullback
/// `my_relu(x) = (relu(x) − relu(x − β·dy))/β` in place of `relu'(x)·dy`. Given the forward
/// pass's pre-activations `a_k` and activations `z_k`, the input `x` and the loss gradient
/// `dy` at the output, returns the weight gradients `(pullback_k) z_{k−1}ᵀ` (biases: row sums).
/// `beta` is the Julia code's: it acts on the batch-mean `dy`, so it is `β/B` per sample in the
/// batch convention of [`crate::nested`].
pub fn appendix_c_gradient(
    net: &Network<f64>,
    x: &DMatrix<f64>,
    (a, z): (&[DMatrix<f64>], &[DMatrix<f64>]),
    mut dy: DMatrix<f64>,
    beta: f64,
) -> Gradients<f64> {
    let top = net.layers.len() - 1;
    let mut grads = Gradients::zeros(net);
    for k in (0..=top).rev() {
        let pre = if k == top {
            dy.clone()
        } else {
            DMatrix::from_fn(a[k].nrows(), a[k].ncols(), |i, j| {
                let (ak, d) = (a[k][(i, j)], dy[(i, j)]);
                (ak.max(0.0) - (ak - beta * d).max(0.0)) / beta
            })
        };
        let input = if k == 0 { x } else { &z[k - 1] };
        grads.w[k] = &pre * input.transpose();
        grads.bias[k] = pre.column_sum();
        dy = net.layers[k].w.transpose() * &pre;
    }
    grads
}

/// Example 1's one-sided quotient `([u − βg]₊ − [u]₊)/β` (Eq. 11) per unit.
pub fn relu_quotient(u: &DVector<f64>, g: &DVector<f64>, beta: f64) -> DVector<f64> {
    DVector::from_fn(u.len(), |j, _| {
        ((u[j] - beta * g[j]).max(0.0) - u[j].max(0.0)) / beta
    })
}
