//! Helpers shared by the nested-program integration tests.
#![allow(dead_code)]

use bilevel::nested::linearized::{gradient, Gradients, Workspace};
use bilevel::nested::{EnergyKind, Network, OutputLoss};
use nalgebra::DMatrix;

/// All gradient entries (weights, then biases).
pub fn flat(g: &Gradients<f64>) -> Vec<f64> {
    g.flatten().iter().copied().collect()
}

/// `max |a − b| / max |b|`.
pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    num / b.iter().map(|v| v.abs()).fold(1e-12, f64::max)
}

/// Back-propagation's gradient (Prop. 7 with penalizer energies, itself checked against
/// finite differences in `nested_linearized.rs`).
pub fn bp(net: &Network<f64>, loss: OutputLoss, x: &DMatrix<f64>, t: &DMatrix<f64>) -> Vec<f64> {
    let mut ws = Workspace::new(net, x.ncols());
    let mut g = Gradients::zeros(net);
    gradient(
        net,
        EnergyKind::Penalizer,
        &vec![1.0; net.layers.len()],
        loss,
        x,
        t,
        &mut ws,
        &mut g,
    )
    .unwrap();
    flat(&g)
}

/// Central differences of `value` in every weight entry (biases excluded), step `h`.
pub fn fd_weights(net: &Network<f64>, h: f64, value: impl Fn(&Network<f64>) -> f64) -> Vec<f64> {
    let mut fd = Vec::new();
    for k in 0..net.layers.len() {
        for idx in 0..net.layers[k].w.len() {
            let mut p = net.clone();
            p.layers[k].w[idx] += h;
            let mut m = net.clone();
            m.layers[k].w[idx] -= h;
            fd.push((value(&p) - value(&m)) / (2.0 * h));
        }
    }
    fd
}
