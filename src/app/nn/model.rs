//! The network of the Fig. 1 experiment: the paper's widths, Glorot initialization (and the
//! Julia code's all-negative first layer), the MLP itself.

use nalgebra::{DMatrix, DVector};
use rand::rngs::StdRng;
use rand::Rng;

use crate::error::{Error, Result};
use crate::names::Named;
use crate::nested::{Layer, Network};
use crate::prox::Activation;

/// The paper's MLP: 784-256-128-64-10.
pub const PAPER_WIDTHS: [usize; 5] = [784, 256, 128, 64, 10];

/// The largest batch [`TrainConfig::validate`](super::TrainConfig::validate) accepts: the step's buffers are sized by it
/// before any data is seen (2²⁰ columns of 784 `f32` pixels are 3.2 GB already).
pub const MAX_BATCH: usize = 1 << 20;

/// Weight initialization (see the module docs). Named ([`Named`]) `glorot`, `negative`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// Glorot uniform everywhere, zero biases.
    Glorot,
    /// First layer `−|Glorot uniform|`, the others Glorot uniform; zero biases.
    Negative,
}

impl Named for Init {
    const KIND: &'static str = "init";
    const NAMES: &'static [(Self, &'static str)] =
        &[(Init::Glorot, "glorot"), (Init::Negative, "negative")];
}

crate::named!(Init);

/// Glorot (Xavier) uniform `rows × cols`: entries `U(−a, a)`, `a = √(6/(rows + cols))`
/// (Flux: `(rand − 0.5)·√(24/(n_in + n_out))`).
pub fn glorot_uniform(rng: &mut StdRng, rows: usize, cols: usize) -> DMatrix<f32> {
    let a = (6.0 / (rows + cols) as f64).sqrt() as f32;
    DMatrix::from_fn(rows, cols, |_, _| rng.random_range(-a..a))
}

/// The MLP `widths[0] → … → widths[L]`: ReLU hidden layers, identity output (logits, for the
/// softmax cross-entropy loss), initialized per [`Init`].
///
/// # Errors
/// Fewer than two widths or a zero width.
pub fn mlp(widths: &[usize], init: Init, rng: &mut StdRng) -> Result<Network<f32>> {
    if widths.len() < 2 || widths.contains(&0) {
        return Err(Error::input(
            "widths",
            format!("need at least two positive widths, got {widths:?}"),
        ));
    }
    let last = widths.len() - 2;
    let layers = widths
        .windows(2)
        .enumerate()
        .map(|(k, w)| {
            let mut weights = glorot_uniform(rng, w[1], w[0]);
            if k == 0 && init == Init::Negative {
                weights.apply(|v| *v = -v.abs());
            }
            Layer {
                w: weights,
                bias: DVector::zeros(w[1]),
                activation: if k == last {
                    Activation::Identity
                } else {
                    Activation::Relu
                },
            }
        })
        .collect();
    Ok(Network { layers })
}
