//! Adam (Kingma & Ba), in the form of Flux's `ADAM` used by the paper's Appendix C code.

use serde::{Deserialize, Serialize};

use crate::linalg::{vectorized, ColsMut, Cut, Threads, NUMBER_WORK};
use crate::nested::linearized::Gradients;
use crate::nested::Network;

/// Adam's hyper-parameters; [`Default`] is Flux's `ADAM(0.001)`: `β₁ = 0.9`, `β₂ = 0.999`,
/// `ε = 1e-8`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamSettings {
    /// Learning rate `η`.
    pub lr: f32,
    /// First-moment decay `β₁`.
    pub beta1: f32,
    /// Second-moment decay `β₂`.
    pub beta2: f32,
    /// `ε`, added to `√v̂`.
    pub eps: f32,
}

impl Default for AdamSettings {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Adam's state: step count and the moment estimates, shaped like the network.
///
/// Step `t` (from 1), per parameter `θ` with gradient `g`:
/// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
/// `θ ← θ − η · (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)` (Flux's `ADAM`), evaluated as
/// `θ ← θ − α·m/(√v + ε̂)`, `α = η√(1−β₂ᵗ)/(1−β₁ᵗ)`, `ε̂ = ε√(1−β₂ᵗ)` — the same number up to
/// rounding.
#[derive(Debug, Clone, PartialEq)]
pub struct Adam {
    /// Hyper-parameters.
    pub settings: AdamSettings,
    /// Steps taken.
    pub t: u64,
    /// First moments `m`.
    pub m: Gradients<f32>,
    /// Second moments `v`.
    pub v: Gradients<f32>,
}

impl Adam {
    /// Zero moments shaped like `net`.
    pub fn new(net: &Network<f32>, settings: AdamSettings) -> Self {
        Self {
            settings,
            t: 0,
            m: Gradients::zeros(net),
            v: Gradients::zeros(net),
        }
    }

    /// One step on every parameter of `net` with the gradient `g`. No allocation.
    ///
    /// # Errors
    /// [`crate::Error::DimensionMismatch`] when `g` or the moments are not shaped like `net`
    /// (nothing is updated then).
    pub fn step(&mut self, net: &mut Network<f32>, g: &Gradients<f32>) -> crate::Result<()> {
        self.step_with(net, g, &Threads::default())
    }

    /// [`Adam::step`] with the update split over `threads`, bit-identical to it (the update is
    /// element-wise). Each weight matrix is cut into the column blocks in which
    /// [`Threads::gemm`] computes its gradient `δ zᵀ` (when it cuts that product's columns), so
    /// that each thread updates the part of the gradient it wrote.
    ///
    /// # Errors
    /// As [`Adam::step`].
    pub fn step_with(
        &mut self,
        net: &mut Network<f32>,
        g: &Gradients<f32>,
        threads: &Threads,
    ) -> crate::Result<()> {
        g.check(net, "gradient")?;
        self.m.check(net, "adam.m")?;
        self.v.check(net, "adam.v")?;
        self.t += 1;
        let s = self.settings;
        // Bias corrections in f64 (β₂ᵗ loses digits in f32 after ~10⁴ steps), folded into
        // two scalars: η·(m/c₁)/(√(v/c₂) + ε) = α·m/(√v + ε̂) with α = η√c₂/c₁, ε̂ = ε√c₂
        // (Kingma & Ba's "more efficient" ordering: one division and one square root per
        // parameter instead of three divisions).
        let t = i32::try_from(self.t).unwrap_or(i32::MAX);
        let c1 = 1.0 - f64::from(s.beta1).powi(t);
        let c2 = 1.0 - f64::from(s.beta2).powi(t);
        let alpha = (f64::from(s.lr) * c2.sqrt() / c1) as f32;
        let eps_hat = (f64::from(s.eps) * c2.sqrt()) as f32;
        let c = Coefs {
            b1: s.beta1,
            b2: s.beta2,
            alpha,
            eps_hat,
        };
        for (k, layer) in net.layers.iter_mut().enumerate() {
            // Each weight matrix in the column blocks `Threads::gemm` computed its gradient in
            // (multiples of 4 columns), so that each thread updates the gradient it wrote.
            let rows = layer.w.nrows();
            let weights = Tensor {
                theta: layer.w.as_mut_slice(),
                g: g.w[k].as_slice(),
                m: self.m.w[k].as_mut_slice(),
                v: self.v.w[k].as_mut_slice(),
            };
            update_split(weights, (rows, 4), c, threads);
            let biases = Tensor {
                theta: layer.bias.as_mut_slice(),
                g: g.bias[k].as_slice(),
                m: self.m.bias[k].as_mut_slice(),
                v: self.v.bias[k].as_mut_slice(),
            };
            update_split(biases, (1, 1), c, threads);
        }
        Ok(())
    }
}

/// [`update`] cut over `threads` by columns of `rows` parameters, in pieces of whole multiples
/// of `align` columns ([`Cut::for_work`]: at least a hand-off's worth of parameters each).
fn update_split(t: Tensor<'_>, (rows, align): (usize, usize), c: Coefs, threads: &Threads) {
    let cols = t.theta.len() / rows.max(1);
    let cut = Cut::for_work(threads, cols, align, rows * NUMBER_WORK);
    let Tensor { theta, g, m, v } = t;
    let parts = (
        ColsMut::new(theta, rows),
        ColsMut::new(m, rows),
        ColsMut::new(v, rows),
    );
    threads.split(cut, parts, &|cols, (theta, m, v)| {
        let g = &g[cols.start * rows..cols.end * rows];
        update(Tensor { theta, g, m, v }, c);
    });
}

/// One tensor's parameters, gradient and moments.
struct Tensor<'a> {
    theta: &'a mut [f32],
    g: &'a [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
}

/// The step's scalars: `β₁`, `β₂`, `α = η√(1−β₂ᵗ)/(1−β₁ᵗ)`, `ε̂ = ε√(1−β₂ᵗ)`.
#[derive(Clone, Copy)]
struct Coefs {
    b1: f32,
    b2: f32,
    alpha: f32,
    eps_hat: f32,
}

/// The element-wise update, compiled for the widest vector instructions the CPU has
/// ([`vectorized`]: AVX-512, AVX2, else the SSE2 baseline; the same bits from each).
/// Measured on the paper's MLP (235k parameters): SSE2 0.20 ms per step, AVX-512 0.155 ms.
fn update(t: Tensor<'_>, c: Coefs) {
    vectorized(
        #[inline(always)]
        || update_scalar(t, c),
    );
}

/// The loop itself (inlined into each instruction-set variant of [`update`]).
#[inline(always)]
fn update_scalar(t: Tensor<'_>, c: Coefs) {
    let Coefs {
        b1,
        b2,
        alpha,
        eps_hat,
    } = c;
    let Tensor { theta, g, m, v } = t;
    // Moments that decay below the smallest normal f32 are flushed to zero: subnormal
    // arithmetic costs ~100 cycles per operation on x86 (it made Adam 70 % of an MNIST epoch:
    // border pixels get a gradient rarely, then their moments decay geometrically), and such
    // values cannot move a weight (their update is below half an ulp of any weight ≥ 1e-17).
    // Likewise gradients below √(smallest normal) ≈ 1.1e-19, whose square would be subnormal.
    let flush = |x: f32| if x.abs() < f32::MIN_POSITIVE { 0.0 } else { x };
    const TINY_GRADIENT: f32 = 1.1e-19;
    for (((p, &gi), mi), vi) in theta.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let gi = if gi.abs() < TINY_GRADIENT { 0.0 } else { gi };
        *mi = flush(b1 * *mi + (1.0 - b1) * gi);
        *vi = flush(b2 * *vi + (1.0 - b2) * (gi * gi));
        *p -= alpha * *mi / (vi.sqrt() + eps_hat);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nested::Layer;
    use crate::prox::Activation;
    use nalgebra::{DMatrix, DVector};

    fn net(widths: &[usize]) -> Network<f32> {
        Network {
            layers: widths
                .windows(2)
                .map(|w| Layer {
                    w: DMatrix::from_element(w[1], w[0], 0.5),
                    bias: DVector::from_element(w[1], 0.1),
                    activation: Activation::Relu,
                })
                .collect(),
        }
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        use crate::linalg::simd::Isa;
        // Gradients spanning the flushed range (tiny, subnormal-squaring) and ordinary sizes.
        let n = net(&[37, 29, 3]);
        let mut g = Gradients::zeros(&n);
        for (k, w) in g.w.iter_mut().enumerate() {
            for (i, v) in w.iter_mut().enumerate() {
                *v = [1e-20, -3e-3, 0.7, 2e-19, -1.5][(i + k) % 5] * (1.0 + i as f32 * 1e-3);
            }
        }
        let run = |isa: Isa| {
            assert_eq!(Isa::active(), isa);
            let (mut n, mut adam) = (n.clone(), Adam::new(&n, AdamSettings::default()));
            for _ in 0..3 {
                adam.step(&mut n, &g).unwrap();
            }
            (
                bits_of(&n.layers[0].w),
                bits_of(&adam.m.w[0]),
                bits_of(&adam.v.w[1]),
            )
        };
        let isas = [Isa::Baseline, Isa::Avx2, Isa::Avx512];
        let runs: Vec<_> = isas
            .iter()
            .filter(|&&i| i <= Isa::detected())
            .map(|&i| Isa::with_ceiling(i, || run(i)))
            .collect();
        assert!(runs.iter().all(|r| *r == runs[0]));
        assert_ne!(
            runs[0].0,
            bits_of(&n.layers[0].w),
            "the steps moved the weights"
        );
    }

    fn bits_of(m: &DMatrix<f32>) -> Vec<u32> {
        m.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn a_gradient_of_another_shape_is_an_error_and_changes_nothing() {
        let mut n = net(&[3, 2, 1]);
        let mut adam = Adam::new(&n, AdamSettings::default());
        let before = (n.clone(), adam.clone());
        let wrong = Gradients::zeros(&net(&[3, 4, 1]));
        assert!(adam.step(&mut n, &wrong).is_err());
        assert_eq!((n.clone(), adam.clone()), before);
        let right = Gradients::zeros(&n);
        adam.step(&mut n, &right).unwrap();
        assert_eq!(adam.t, 1);
    }
}
