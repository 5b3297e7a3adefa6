//! `bilevel bench train`: wall time of training epochs (1000 steps of batch 50, f32) for
//! back-propagation and Fenchel BP, next to the same epoch's matrix products alone, in one
//! process (interleaved repeats, best of each).

use std::fmt;
use std::time::Instant;

use nalgebra::DMatrix;

use super::{Rule, TrainConfig, Trainer};
use crate::data::{Mnist, Split};
use crate::error::Result;
use crate::linalg::Gemm;

/// Seconds per epoch (best of the repeats).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochTimes {
    /// Training steps per epoch.
    pub steps: usize,
    /// Back-propagation.
    pub bp: f64,
    /// Fenchel BP.
    pub fenbp: f64,
    /// β of the Fenchel BP run.
    pub beta: f32,
    /// The forward and backward matrix products of the same steps, nothing else.
    pub products: f64,
}

impl fmt::Display for EpochTimes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "one epoch = {} steps of batch 50 (784-256-128-64-10, f32, one thread), best of the repeats:", self.steps)?;
        writeln!(f, "  matrix products alone  {:.3} s", self.products)?;
        writeln!(
            f,
            "  back-propagation       {:.3} s  ({:.2}x the products)",
            self.bp,
            self.bp / self.products
        )?;
        write!(
            f,
            "  Fenchel BP (beta={})    {:.3} s  ({:.2}x the products, {:+.1} % vs BP)",
            self.beta,
            self.fenbp,
            self.fenbp / self.products,
            100.0 * (self.fenbp / self.bp - 1.0)
        )
    }
}

/// Random images and labels (for timing without the data set).
pub fn synthetic(train: usize, test: usize, seed: u64) -> Mnist {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut split = |n: usize| Split {
        pixels: (0..n * 784).map(|_| rng.random::<u8>()).collect(),
        labels: (0..n).map(|_| rng.random_range(0..10u8)).collect(),
        dim: 784,
    };
    Mnist {
        train: split(train),
        test: split(test),
    }
}

/// Times `repeats` epochs of each rule on `data` (paper settings, Glorot init, seed 42) and the
/// products alone.
///
/// # Errors
/// Data with fewer than 50,000 training images; training errors.
pub fn epochs(data: &Mnist, repeats: usize, beta: f32) -> Result<EpochTimes> {
    let config = |rule| TrainConfig {
        rule,
        ..TrainConfig::default()
    };
    let mut bp = Trainer::new(config(Rule::Bp))?;
    let mut fen = Trainer::new(config(Rule::FenBp { beta }))?;
    let (n, b) = (bp.config.train_size, bp.config.batch);
    let steps = n.div_ceil(b);
    let indices: Vec<usize> = (0..n).collect();
    let mut best = [f64::INFINITY; 3];
    for _ in 0..repeats {
        for (i, t) in [&mut bp, &mut fen].into_iter().enumerate() {
            let start = Instant::now();
            for chunk in indices.chunks(b) {
                t.step(&data.train, chunk)?;
            }
            best[i] = best[i].min(start.elapsed().as_secs_f64());
        }
        best[2] = best[2].min(products_epoch(&bp, steps));
    }
    Ok(EpochTimes {
        steps,
        bp: best[0],
        fenbp: best[1],
        beta,
        products: best[2],
    })
}

/// The products of `steps` training steps: per layer `a = W z`, `∇W = δ zᵀ` and (above the
/// first layer) `e = Wᵀ δ`, through the same [`Gemm`] as the training path.
fn products_epoch(t: &Trainer, steps: usize) -> f64 {
    let b = t.config.batch;
    let net = &t.net;
    let mut z: Vec<DMatrix<f32>> = vec![DMatrix::from_element(net.input_dim(), b, 0.5)];
    z.extend(
        net.widths()
            .iter()
            .map(|&n| DMatrix::from_element(n, b, 0.5)),
    );
    let mut out: Vec<DMatrix<f32>> = net.widths().iter().map(|&n| DMatrix::zeros(n, b)).collect();
    let mut e: Vec<DMatrix<f32>> = z.iter().map(|m| DMatrix::zeros(m.nrows(), b)).collect();
    let mut g: Vec<DMatrix<f32>> = net
        .layers
        .iter()
        .map(|l| DMatrix::zeros(l.w.nrows(), l.w.ncols()))
        .collect();
    let start = Instant::now();
    for _ in 0..steps {
        for (k, l) in net.layers.iter().enumerate() {
            f32::gemm_into(&mut out[k], &l.w, false, &z[k], false);
        }
        for (k, l) in net.layers.iter().enumerate().rev() {
            f32::gemm_into(&mut g[k], &z[k + 1], false, &z[k], true);
            if k > 0 {
                f32::gemm_into(&mut e[k], &l.w, true, &z[k + 1], false);
            }
        }
    }
    std::hint::black_box((&out, &g, &e));
    start.elapsed().as_secs_f64()
}
