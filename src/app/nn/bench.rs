//! `bilevel bench train`: wall time of training epochs (1000 steps of batch 50, f32) for each
//! rule — back-propagation first, the baseline — and each thread count, next to the same
//! epoch's matrix products alone, in one process (interleaved repeats, best of each), with each
//! rule's gradient at the initial network compared with back-propagation's (cosine and
//! relative distance: the `O(β)` bias of Cor. 2, plus what the inference budget leaves).

use std::fmt;
use std::time::Instant;

use nalgebra::DMatrix;

use super::{Rule, TrainConfig, Trainer};
use crate::app::data::{Mnist, Split};
use crate::error::Result;
use crate::linalg::Threads;

/// One rule's measurements at one thread count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleTime {
    /// The rule.
    pub rule: Rule,
    /// Threads of the training step ([`TrainConfig::threads`]).
    pub threads: usize,
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

/// The machine a benchmark ran on.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// The CPU model (`/proc/cpuinfo`; `unknown` elsewhere).
    pub cpu: String,
    /// Its nominal clock in GHz, when the system reports one.
    pub ghz: Option<f64>,
    /// The widest vector instructions the hand-vectorized loops dispatch to at run time
    /// (`AVX-512`, `AVX2`, `SSE2`; the products are faer's, which dispatches the same way).
    pub isa: &'static str,
    /// The logical CPUs this process may use ([`Threads::available`]).
    pub cpus: usize,
}

impl Machine {
    /// This machine.
    pub fn detect() -> Self {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        };
        Self {
            cpu: field("model name").unwrap_or_else(|| "unknown".into()),
            ghz: field("cpu MHz")
                .and_then(|v| v.parse::<f64>().ok())
                .map(|mhz| mhz / 1e3),
            isa: crate::linalg::simd::Isa::detected().name(),
            cpus: Threads::available(),
        }
    }
}

/// One layer's products in a training step, timed alone over an epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerProducts {
    /// `(n_k, n_{k−1})`.
    pub shape: (usize, usize),
    /// Seconds per epoch of `a = W z` (forward).
    pub forward: f64,
    /// Seconds per epoch of `∇W = δ zᵀ`.
    pub weight_grad: f64,
    /// Seconds per epoch of `e = Wᵀ δ` (0 for the first layer, which needs none).
    pub input_grad: f64,
}

impl LayerProducts {
    /// Floating-point operations of the layer's products in one epoch of `steps` steps of
    /// batch `b` (`2 n_k n_{k−1} b` per product).
    pub fn flops(&self, steps: usize, b: usize) -> f64 {
        let per = 2.0 * (self.shape.0 * self.shape.1 * b * steps) as f64;
        per * if self.input_grad > 0.0 { 3.0 } else { 2.0 }
    }
}

/// The products of BP's steps at one thread count.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductTimes {
    /// Threads ([`Threads::gemm`]).
    pub threads: usize,
    /// Seconds per epoch of the forward and backward matrix products, nothing else.
    pub seconds: f64,
    /// The same products layer by layer (best of the repeats), input layer first.
    pub layers: Vec<LayerProducts>,
}

/// Seconds per epoch of every rule and of the products alone, at each thread count.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochTimes {
    /// The machine.
    pub machine: Machine,
    /// Training steps per epoch.
    pub steps: usize,
    /// The batch size.
    pub batch: usize,
    /// The rules, back-propagation first, each at every thread count (in the order given).
    pub rules: Vec<RuleTime>,
    /// The products alone at every thread count.
    pub products: Vec<ProductTimes>,
}

impl EpochTimes {
    /// Seconds per epoch of the rule named `name` ([`Rule::name`]) on `threads` threads.
    pub fn seconds(&self, name: &str, threads: usize) -> Option<f64> {
        self.rules
            .iter()
            .find(|r| r.rule.name() == name && r.threads == threads)
            .map(|r| r.seconds)
    }

    /// The fastest thread count for back-propagation and its seconds per epoch.
    pub fn fastest_bp(&self) -> Option<(usize, f64)> {
        self.rules
            .iter()
            .filter(|r| r.rule == Rule::bp())
            .map(|r| (r.threads, r.seconds))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

impl EpochTimes {
    /// The products' lines of the report: each thread count, then each layer.
    fn write_products(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_cycle = |gflops: f64| {
            self.machine
                .ghz
                .map_or(String::new(), |g| format!(", {:.1} flop/cycle", gflops / g))
        };
        let one = self.products.first().map_or(f64::NAN, |p| p.seconds);
        for p in &self.products {
            let total_flops: f64 = p
                .layers
                .iter()
                .map(|l| l.flops(self.steps, self.batch))
                .sum();
            let gflops = total_flops / p.seconds / 1e9;
            writeln!(
                f,
                "products alone on {} thread(s): {:.3} s/epoch ({:.2}x the first count), {gflops:.1} GFLOP/s{} (at the nominal clock; turbo raises the count); by layer:",
                p.threads,
                p.seconds,
                p.seconds / one,
                per_cycle(gflops)
            )?;
            for l in &p.layers {
                let secs = l.forward + l.weight_grad + l.input_grad;
                let g = l.flops(self.steps, self.batch) / secs / 1e9;
                writeln!(
                    f,
                    "    {:>3} x {:<3}  W z {:>6.3} s  dW {:>6.3} s  W'd {:>6.3} s  {:>6.1} GFLOP/s{}",
                    l.shape.0,
                    l.shape.1,
                    l.forward,
                    l.weight_grad,
                    l.input_grad,
                    g,
                    per_cycle(g)
                )?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for EpochTimes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({}), {} vectors, {} CPU(s) available",
            self.machine.cpu,
            self.machine
                .ghz
                .map_or("clock unknown".to_string(), |g| format!(
                    "{g:.2} GHz nominal"
                )),
            self.machine.isa,
            self.machine.cpus
        )?;
        writeln!(
            f,
            "one epoch = {} steps of batch {} (784-256-128-64-10, f32), best of the repeats;",
            self.steps, self.batch
        )?;
        writeln!(
            f,
            "gradients compared with BP's on the first batch at the initial network"
        )?;
        self.write_products(f)?;
        writeln!(
            f,
            "  {:<22} {:>7} {:>8} {:>8} {:>10} {:>7} {:>11} {:>10} {:>12}",
            "rule",
            "threads",
            "s/epoch",
            "x BP",
            "x products",
            "sweeps",
            "unconverged",
            "cos to BP",
            "rel.err"
        )?;
        let bp_one = self.rules.first().map_or(f64::NAN, |r| r.seconds);
        for r in &self.rules {
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            let products = self
                .products
                .iter()
                .find(|p| p.threads == r.threads)
                .map_or(f64::NAN, |p| p.seconds);
            writeln!(
                f,
                "  {:<22} {:>7} {:>8.3} {:>8.2} {:>10.2} {:>7} {:>11} {:>10.6} {:>12.2e}",
                r.rule.label(),
                r.threads,
                r.seconds,
                r.seconds / bp_one,
                r.seconds / products,
                opt(r.mean_sweeps.map(|s| format!("{s:.1}"))),
                opt(r.unconverged.map(|u| format!("{u}/{}", self.steps))),
                r.cosine_to_bp,
                r.rel_error_vs_bp
            )?;
        }
        writeln!(
            f,
            "  (x BP: against BP on the first thread count; x products: against the products on the same count)"
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

/// Times `repeats` epochs of back-propagation and of each of `rules` (paper settings, Glorot
/// init, seed 42) on each count of `threads` (the first is the baseline), and the products
/// alone on each count, interleaved.
///
/// # Errors
/// Data with fewer than 50,000 training images; an invalid thread count; training errors.
pub fn epochs(
    data: &Mnist,
    repeats: usize,
    rules: &[Rule],
    threads: &[usize],
) -> Result<EpochTimes> {
    let counts = if threads.is_empty() {
        &[1][..]
    } else {
        threads
    };
    let mut all = vec![Rule::bp()];
    all.extend(rules.iter().copied().filter(|&r| r != Rule::bp()));
    let runs: Vec<(Rule, usize)> = all
        .iter()
        .flat_map(|&r| counts.iter().map(move |&t| (r, t)))
        .collect();
    let mut trainers = runs
        .iter()
        .map(|&(rule, threads)| Trainer::new(TrainConfig::paper(rule, threads)))
        .collect::<Result<Vec<_>>>()?;
    let teams = counts
        .iter()
        .map(|&t| Threads::new(t))
        .collect::<Result<Vec<_>>>()?;
    let (n, b) = (trainers[0].config.train_size, trainers[0].config.batch);
    let steps = n.div_ceil(b);
    let compared = start_gradients(&mut trainers, data, b)?;
    let indices: Vec<usize> = (0..n).collect();
    let mut best = vec![f64::INFINITY; runs.len()];
    let mut products: Vec<ProductTimes> = counts
        .iter()
        .map(|&threads| ProductTimes {
            threads,
            seconds: f64::INFINITY,
            layers: Vec::new(),
        })
        .collect();
    for _ in 0..repeats {
        for (i, t) in trainers.iter_mut().enumerate() {
            let start = Instant::now();
            t.train_steps(&data.train, &indices)?;
            best[i] = best[i].min(start.elapsed().as_secs_f64());
        }
        for (p, team) in products.iter_mut().zip(&teams) {
            p.keep_faster(&trainers[0], steps, team);
        }
    }
    let rules = runs
        .iter()
        .zip(&trainers)
        .zip(best.iter().zip(compared))
        .map(
            |((&(rule, threads), t), (&seconds, (cosine_to_bp, rel_error_vs_bp)))| {
                let stats = t.sweep_stats();
                RuleTime {
                    rule,
                    threads,
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
        machine: Machine::detect(),
        steps,
        batch: b,
        rules,
        products,
    })
}

/// Each trainer's gradient on the first batch at the initial network, compared with the first
/// trainer's (back-propagation's): cosine and relative distance.
fn start_gradients(
    trainers: &mut [Trainer],
    data: &Mnist,
    batch: usize,
) -> Result<Vec<(f64, f64)>> {
    let first: Vec<usize> = (0..batch).collect();
    let mut compared = Vec::with_capacity(trainers.len());
    let mut reference = None;
    for t in trainers {
        t.gradient(&data.train, &first)?;
        let g: Vec<f64> = t.grads().flatten().iter().map(|&v| f64::from(v)).collect();
        let r = reference.get_or_insert_with(|| g.clone());
        compared.push(compare(&g, r));
    }
    Ok(compared)
}

impl ProductTimes {
    /// Times the products of one epoch of `trainer`'s network on `team` (whole and by layer)
    /// and keeps the faster of these and the times so far.
    fn keep_faster(&mut self, trainer: &Trainer, steps: usize, team: &Threads) {
        self.seconds = self.seconds.min(products_epoch(trainer, steps, team));
        let now = layer_products(trainer, steps, team);
        self.layers = if self.layers.is_empty() {
            now
        } else {
            self.layers
                .iter()
                .zip(&now)
                .map(|(a, b)| LayerProducts {
                    shape: a.shape,
                    forward: a.forward.min(b.forward),
                    weight_grad: a.weight_grad.min(b.weight_grad),
                    input_grad: a.input_grad.min(b.input_grad),
                })
                .collect()
        };
    }
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

/// Each layer's three products timed alone over `steps` steps (same shapes and
/// [`Threads::gemm`] as the training path).
fn layer_products(t: &Trainer, steps: usize, team: &Threads) -> Vec<LayerProducts> {
    let b = t.config.batch;
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..steps {
            f();
        }
        start.elapsed().as_secs_f64()
    };
    t.net
        .layers
        .iter()
        .enumerate()
        .map(|(k, l)| {
            let (n_out, n_in) = (l.w.nrows(), l.w.ncols());
            let z = DMatrix::from_element(n_in, b, 0.5f32);
            let delta = DMatrix::from_element(n_out, b, 0.5f32);
            let mut a = DMatrix::zeros(n_out, b);
            let mut g = DMatrix::zeros(n_out, n_in);
            let mut e = DMatrix::zeros(n_in, b);
            let forward = time(&mut || team.gemm(&mut a, &l.w, false, &z, false));
            let weight_grad = time(&mut || team.gemm(&mut g, &delta, false, &z, true));
            let input_grad = if k > 0 {
                time(&mut || team.gemm(&mut e, &l.w, true, &delta, false))
            } else {
                0.0
            };
            std::hint::black_box((&a, &g, &e));
            LayerProducts {
                shape: (n_out, n_in),
                forward,
                weight_grad,
                input_grad,
            }
        })
        .collect()
}

/// The products of `steps` training steps: per layer `a = W z`, `∇W = δ zᵀ` and (above the
/// first layer) `e = Wᵀ δ`, through the same [`Threads::gemm`] as the training path.
fn products_epoch(t: &Trainer, steps: usize, team: &Threads) -> f64 {
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
            team.gemm(&mut out[k], &l.w, false, &z[k], false);
        }
        for (k, l) in net.layers.iter().enumerate().rev() {
            team.gemm(&mut g[k], &z[k + 1], false, &z[k], true);
            if k > 0 {
                team.gemm(&mut e[k], &l.w, true, &z[k + 1], false);
            }
        }
    }
    std::hint::black_box((&out, &g, &e));
    start.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_count_two_per_multiply_add_and_skip_the_first_input_gradient() {
        let first = LayerProducts {
            shape: (256, 784),
            forward: 1.0,
            weight_grad: 1.0,
            input_grad: 0.0,
        };
        assert_eq!(
            first.flops(1000, 50),
            2.0 * 2.0 * 256.0 * 784.0 * 50.0 * 1000.0
        );
        let inner = LayerProducts {
            input_grad: 1.0,
            ..first
        };
        assert_eq!(inner.flops(1, 1), 3.0 * 2.0 * 256.0 * 784.0);
    }

    #[test]
    fn the_machine_is_described() {
        let m = Machine::detect();
        assert!(!m.cpu.is_empty());
        assert!(["AVX-512", "AVX2", "SSE2", "baseline"].contains(&m.isa));
        assert!(m.cpus >= 1);
        assert!(m.ghz.is_none_or(|g| g > 0.0 && g.is_finite()));
    }
}
