//! Eq. 28's θ-gradient by the envelope theorem, shared by MAC and LPOM.

use nalgebra::DMatrix;

use crate::nested::linearized::Gradients;
use crate::nested::{activate_columns, Network};

pub(super) fn envelope_gradient(
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
