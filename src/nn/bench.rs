//! `bilevel bench train`: wall time of training epochs (1000 steps of batch 50, f32) for each
//! rule — back-propagation first, the baseline — next to the same epoch's matrix products
//! alone, in one process (interleaved repeats, best of each), with each rule's gradient at the
//! initial network compared with back-propagation's (cosine and relative distance: the `O(β)`
//! bias of Cor. 2, plus what the inference budget leaves).

use std::fmt;
use std::time::Instant;

use nalgebra::DMatrix;

use super::{Rule, TrainConfig, Trainer};
use crate::data::{Mnist, Split};
use crate::error::Result;
use crate::linalg::Gemm;

/// One rule's measurements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleTime {
    /// The rule.
    pub rule: Rule,
    /// Seconds per epoch (best of the repeats).
    pub seconds: f64,
    /// Mean inference sweeps per batch in the timed epochs (iterative rules).
    pub mean_sweeps: Option<f64>,
    /// Batches of the last timed epoch whose inference did not reach its tolerance.
    pub unconverged: Option<usize>,
    /// Cosine between the rule's gradient and back-propagation's on the first batch, at the
    /// initial network.
    pub cosine_to_bp: f64,
    /// `‖g − g_BP‖ / ‖g_BP‖` on the same batch.
    pub rel_error_vs_bp: f64,
}

/// Seconds per epoch of every rule and of the products alone.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochTimes {
    /// Training steps per epoch.
    pub steps: usize,
    /// The rules, back-propagation first.
    pub rules: Vec<RuleTime>,
    /// The forward and backward matrix products of BP's steps, nothing else.
    pub products: f64,
}

impl EpochTimes {
    /// Seconds per epoch of the rule named `name` ([`Rule::name`]).
    pub fn seconds(&self, name: &str) -> Option<f64> {
        self.rules
            .iter()
            .find(|r| r.rule.name() == name)
            .map(|r| r.seconds)
    }
}

impl fmt::Display for EpochTimes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "one epoch = {} steps of batch 50 (784-256-128-64-10, f32, one thread), best of the repeats;",
            self.steps
        )?;
        writeln!(
            f,
            "gradients compared with BP's on the first batch at the initial network"
        )?;
        let bp = self.rules.first().map_or(f64::NAN, |r| r.seconds);
        writeln!(
            f,
            "  {:<22} {:>8} {:>8} {:>10} {:>7} {:>11} {:>10} {:>12}",
            "rule",
            "s/epoch",
            "x BP",
            "x products",
            "sweeps",
            "unconverged",
            "cos to BP",
            "rel.err"
        )?;
        writeln!(
            f,
            "  {:<22} {:>8.3} {:>8} {:>10.2}",
            "matrix products alone", self.products, "", 1.0
        )?;
        for r in &self.rules {
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            writeln!(
                f,
                "  {:<22} {:>8.3} {:>8.2} {:>10.2} {:>7} {:>11} {:>10.6} {:>12.2e}",
                r.rule.label(),
                r.seconds,
                r.seconds / bp,
                r.seconds / self.products,
                opt(r.mean_sweeps.map(|s| format!("{s:.1}"))),
                opt(r.unconverged.map(|u| format!("{u}/{}", self.steps))),
                r.cosine_to_bp,
                r.rel_error_vs_bp
            )?;
        }
        Ok(())
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

/// Times `repeats` epochs of back-propagation and of each of `rules` on `data` (paper
/// settings, Glorot init, seed 42) and the products alone.
///
/// # Errors
/// Data with fewer than 50,000 training images; training errors.
pub fn epochs(data: &Mnist, repeats: usize, rules: &[Rule]) -> Result<EpochTimes> {
    let config = |rule| TrainConfig {
        rule,
        ..TrainConfig::default()
    };
    let mut all = vec![Rule::Bp];
    all.extend(rules.iter().copied().filter(|&r| r != Rule::Bp));
    let mut trainers = all
        .iter()
        .map(|&r| Trainer::new(config(r)))
        .collect::<Result<Vec<_>>>()?;
    let (n, b) = (trainers[0].config.train_size, trainers[0].config.batch);
    let steps = n.div_ceil(b);
    let first: Vec<usize> = (0..b).collect();
    let mut compared = Vec::with_capacity(all.len());
    let mut reference = None;
    for t in &mut trainers {
        t.gradient(&data.train, &first)?;
        let g: Vec<f64> = t.grads().flatten().iter().map(|&v| f64::from(v)).collect();
        let r = reference.get_or_insert_with(|| g.clone());
        compared.push(compare(&g, r));
    }
    let indices: Vec<usize> = (0..n).collect();
    let mut best = vec![f64::INFINITY; all.len()];
    let mut products = f64::INFINITY;
    for _ in 0..repeats {
        for (i, t) in trainers.iter_mut().enumerate() {
            let start = Instant::now();
            t.train_steps(&data.train, &indices)?;
            best[i] = best[i].min(start.elapsed().as_secs_f64());
        }
        products = products.min(products_epoch(&trainers[0], steps));
    }
    let rules = all
        .iter()
        .zip(&trainers)
        .zip(best.iter().zip(compared))
        .map(
            |((&rule, t), (&seconds, (cosine_to_bp, rel_error_vs_bp)))| {
                let stats = t.sweep_stats();
                RuleTime {
                    rule,
                    seconds,
                    mean_sweeps: stats.map(|s| s.mean_sweeps),
                    unconverged: stats.map(|s| s.unconverged),
                    cosine_to_bp,
                    rel_error_vs_bp,
                }
            },
        )
        .collect();
    Ok(EpochTimes {
        steps,
        rules,
        products,
    })
}

/// Cosine and relative distance of `g` to `r`.
pub(crate) fn compare(g: &[f64], r: &[f64]) -> (f64, f64) {
    let dot: f64 = g.iter().zip(r).map(|(a, b)| a * b).sum();
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let diff: f64 = g
        .iter()
        .zip(r)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        .sqrt();
    (dot / (norm(g) * norm(r)), diff / norm(r))
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
