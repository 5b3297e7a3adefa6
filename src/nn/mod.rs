//! The MNIST client: the paper's Fig. 1 experiment (Discussion and the Julia program of
//! Appendix C) — an MLP trained with back-propagation or Fenchel back-propagation.
//!
//! Both rules are the crate's Prop. 7 pass ([`linearized::gradient`]), not a separate copy:
//! * [`Rule::Bp`]: penalizer energies `½‖z_k − f(a_k)‖²`, whose Prop. 7 pass with the Remark 2
//!   gradient is exact back-propagation for every β (Eq. 46-47);
//! * [`Rule::FenBp`]: Fenchel energies, the pass of Eq. 49-51 with the Eq. 53 gradient. On each
//!   ReLU the signal is the one-sided quotient `(relu(a) − relu(a − β·e))/β` — the Appendix C
//!   pullback `(z − relu(x − β·dy))/β` — computed case by case so that it is exactly `e`
//!   where both arguments are positive ([`crate::prox::Activation::difference_quotient`]).
//!
//! The loss is softmax cross-entropy averaged over the batch, as Flux's `crossentropy`; so `e`
//! carries the factor `1/B` and a batch-mean loss acts on each sample like `β/B`.
//!
//! **Initialization** ([`Init`]): Glorot uniform `U(−a, a)`, `a = √(6/(n_in + n_out))`, zero
//! biases, for every layer; `negative` replaces the *first* layer's weights by `−|U(−a, a)|`
//! (the Julia code's `glorot_neg_uniform`, which it passes to the first `Dense` only; the other
//! layers keep Flux's default Glorot init). With pixels in `[0, 1]`, every first-layer
//! pre-activation is then `≤ 0`: all ReLUs are off, back-propagation's gradient of the first
//! layer is exactly zero and the network can only learn the class prior (88.65 % test error),
//! while Fenchel BP with large β still passes a signal `(relu(a − β e))/β` through the kink.
//!
//! Samples are matrix columns. The training step allocates nothing: buffers are built once per
//! batch size in [`Trainer::new`].
//!
//! **Threads** ([`TrainConfig::threads`]): every matrix product of the step is cut into blocks
//! of rows or columns that a persistent team of threads computes at the same time
//! ([`Threads::gemm`]), and Adam's update into the column blocks in which the weight
//! gradients were computed ([`Adam::step_with`]). Each entry is still computed by one thread
//! in the same order, so runs are bit-identical for every thread count (tested over whole
//! runs, and on resuming with another count). Measured with `bilevel bench train` on a 2-core AMD EPYC (Zen 4):
//! products alone 0.50 → 0.26 s per epoch, a BP epoch 0.76 → 0.46 s on two threads.

pub mod adam;
pub mod bench;
pub mod checkpoint;
pub mod log;
pub mod reproduce;
pub mod table1;

use std::time::Instant;

use nalgebra::{DMatrix, DVector};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::data::{Mnist, Split};
use crate::error::{Error, Result};
use crate::linalg::{Threads, MAX_THREADS};
use crate::nested::inference::{self, InferenceSettings, InferenceWorkspace};
use crate::nested::linearized::{self, Gradients, Workspace};
use crate::nested::method::Method;
use crate::nested::{EnergyKind, Layer, Network, OutputLoss};
use crate::prox::Activation;

pub use adam::{Adam, AdamSettings};

/// The paper's MLP: 784-256-128-64-10.
pub const PAPER_WIDTHS: [usize; 5] = [784, 256, 128, 64, 10];

/// The training rule: a row of Table 1 (or predictive coding) and its β.
///
/// Back-propagation and Fenchel back-propagation are Prop. 7's closed-form pass
/// ([`linearized::gradient`]); MAC, predictive coding and LPOM run at most `sweeps` inference
/// sweeps of the same pass to the minimizer of their local contrastive objective (Prop. 5),
/// CHL and convex CHL at most `sweeps` per phase of their global one (Prop. 4)
/// ([`inference::gradient`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Rule {
    /// Back-propagation (penalizer energies).
    Bp,
    /// Fenchel back-propagation with `β_k = β` for every layer (Fenchel energies).
    FenBp {
        /// `β > 0` as in the paper's Fig. 1 and Appendix C code, where it acts on the gradient
        /// of the batch-mean loss: `β/B` per sample in the batch convention of
        /// [`crate::nested`] (the trainer passes that on).
        beta: f32,
    },
    /// The method of auxiliary coordinates (penalizer energies, Eq. 30, `σ_k = β`).
    Mac {
        /// β on the batch-mean loss, as for [`Rule::FenBp`].
        beta: f32,
        /// Most inference sweeps per batch.
        sweeps: usize,
    },
    /// Predictive coding with iterative inference (`σ_k = Π_{l≥k} β`, Section 3.2.1).
    Pc {
        /// β on the batch-mean loss, as for [`Rule::FenBp`].
        beta: f32,
        /// Most inference sweeps per batch.
        sweeps: usize,
    },
    /// Lifted proximal operator machines (Fenchel energies, Eq. 34).
    Lpom {
        /// β on the batch-mean loss, as for [`Rule::FenBp`].
        beta: f32,
        /// Most inference sweeps per batch.
        sweeps: usize,
    },
    /// Contrastive Hebbian learning (Fenchel energies, bottom-up, Prop. 4).
    Chl {
        /// β on the batch-mean loss, as for [`Rule::FenBp`].
        beta: f32,
        /// Most inference sweeps per phase and batch.
        sweeps: usize,
        /// The centered (±β) variant ([`inference::centered_gradient`]).
        #[serde(default)]
        centered: bool,
    },
    /// Convex CHL (proximal energies, bottom-up, Prop. 4).
    #[serde(rename = "convex-chl")]
    ConvexChl {
        /// β on the batch-mean loss, as for [`Rule::FenBp`].
        beta: f32,
        /// Most inference sweeps per phase and batch.
        sweeps: usize,
        /// The centered (±β) variant ([`inference::centered_gradient`]).
        #[serde(default)]
        centered: bool,
    },
}

/// The default number of inference sweeps ([`InferenceSettings::default`]).
pub const DEFAULT_SWEEPS: usize = 20;

impl Rule {
    /// The row of Table 1 the rule trains with.
    pub fn method(self) -> Method {
        match self {
            Rule::Bp => Method::Bp,
            Rule::FenBp { .. } => Method::FenchelBp,
            Rule::Mac { .. } => Method::Mac,
            Rule::Pc { .. } => Method::PredictiveCoding,
            Rule::Lpom { .. } => Method::Lpom,
            Rule::Chl { .. } => Method::Chl,
            Rule::ConvexChl { .. } => Method::ConvexChl,
        }
    }

    /// The layer energy (the [`Rule::method`]'s `E_k` column).
    pub fn energy(self) -> EnergyKind {
        self.method().choices().0
    }

    /// β of every layer (back-propagation does not depend on it; 1 is used).
    pub fn beta(self) -> f32 {
        match self {
            Rule::Bp => 1.0,
            Rule::FenBp { beta }
            | Rule::Mac { beta, .. }
            | Rule::Pc { beta, .. }
            | Rule::Lpom { beta, .. }
            | Rule::Chl { beta, .. }
            | Rule::ConvexChl { beta, .. } => beta,
        }
    }

    /// The inference budget of the iterative rules; `None` for the closed-form ones.
    pub fn sweeps(self) -> Option<usize> {
        match self {
            Rule::Bp | Rule::FenBp { .. } => None,
            Rule::Mac { sweeps, .. }
            | Rule::Pc { sweeps, .. }
            | Rule::Lpom { sweeps, .. }
            | Rule::Chl { sweeps, .. }
            | Rule::ConvexChl { sweeps, .. } => Some(sweeps),
        }
    }

    /// Whether the rule is a centered (±β) variant ([`inference::centered_gradient`]).
    pub fn centered(self) -> bool {
        matches!(
            self,
            Rule::Chl { centered: true, .. } | Rule::ConvexChl { centered: true, .. }
        )
    }

    /// The command-line name ([`Method::cli_name`], with `-centered` for the centered
    /// variants; the logs' `method` column).
    pub fn name(self) -> &'static str {
        match self {
            Rule::Chl { centered: true, .. } => "chl-centered",
            Rule::ConvexChl { centered: true, .. } => "convex-chl-centered",
            rule => rule.method().cli_name(),
        }
    }

    /// "BP", "FenBP β=…", "MAC β=… T=…", for legends.
    pub fn label(self) -> String {
        match self {
            Rule::Bp => "BP".into(),
            Rule::FenBp { beta } => format!("FenBP β={beta}"),
            Rule::Mac { beta, sweeps } => format!("MAC β={beta} T={sweeps}"),
            Rule::Pc { beta, sweeps } => format!("PC β={beta} T={sweeps}"),
            Rule::Lpom { beta, sweeps } => format!("LPOM β={beta} T={sweeps}"),
            Rule::Chl {
                beta,
                sweeps,
                centered,
            } => format!("CHL{} β={beta} T={sweeps}", if centered { "±" } else { "" }),
            Rule::ConvexChl {
                beta,
                sweeps,
                centered,
            } => format!(
                "convex CHL{} β={beta} T={sweeps}",
                if centered { "±" } else { "" }
            ),
        }
    }

    /// The rule named `name` ([`Rule::name`]: `bp`, `fenbp`, `mac`, `pc`, `lpom`, `chl`,
    /// `convex-chl`, `chl-centered`, `convex-chl-centered`) with an optional β (default 1) and
    /// inference budget (default [`DEFAULT_SWEEPS`]).
    ///
    /// # Errors
    /// An unknown name ([`Error::InvalidInput`] for `method`); a β given with `bp` or sweeps
    /// with a closed-form rule; a non-positive or non-finite β; zero sweeps.
    pub fn from_name(name: &str, beta: Option<f32>, sweeps: Option<usize>) -> Result<Self> {
        let (base, centered) = match name.strip_suffix("-centered") {
            Some(base @ ("chl" | "convex-chl")) => (base, true),
            _ => (name, false),
        };
        let method = Method::from_cli_name(base).ok_or_else(|| {
            Error::input(
                "method",
                format!(
                    "unknown method `{name}` (expected bp, fenbp, mac, pc, lpom, chl, convex-chl, \
                     chl-centered or convex-chl-centered)"
                ),
            )
        })?;
        if method == Method::Bp && beta.is_some() {
            return Err(Error::input(
                "beta",
                "back-propagation takes no beta (Fenchel back-propagation, fenbp, does)",
            ));
        }
        let closed_form = matches!(method, Method::Bp | Method::FenchelBp);
        if closed_form && sweeps.is_some() {
            return Err(Error::input(
                "sweeps",
                format!("{name} is closed form (sweeps are for the other methods)"),
            ));
        }
        let (beta, sweeps) = (beta.unwrap_or(1.0), sweeps.unwrap_or(DEFAULT_SWEEPS));
        let rule = match method {
            Method::Bp => Rule::Bp,
            Method::FenchelBp => Rule::FenBp { beta },
            Method::Mac => Rule::Mac { beta, sweeps },
            Method::PredictiveCoding => Rule::Pc { beta, sweeps },
            Method::Lpom => Rule::Lpom { beta, sweeps },
            Method::Chl => Rule::Chl {
                beta,
                sweeps,
                centered,
            },
            Method::ConvexChl => Rule::ConvexChl {
                beta,
                sweeps,
                centered,
            },
        };
        rule.validate()?;
        Ok(rule)
    }

    /// Checks β and the sweeps.
    ///
    /// # Errors
    /// [`Error::InvalidBeta`] for a non-positive or non-finite β; zero sweeps.
    pub fn validate(self) -> Result<()> {
        crate::error::check_beta(f64::from(self.beta()))?;
        if self.sweeps() == Some(0) {
            return Err(Error::input("sweeps", "must be at least 1"));
        }
        Ok(())
    }

    /// The inference settings of the iterative rules.
    pub fn inference_settings(self) -> Option<InferenceSettings> {
        self.sweeps().map(|max_sweeps| InferenceSettings {
            max_sweeps,
            ..InferenceSettings::default()
        })
    }
}

/// The largest batch [`TrainConfig::validate`] accepts: the step's buffers are sized by it
/// before any data is seen (2²⁰ columns of 784 `f32` pixels are 3.2 GB already).
pub const MAX_BATCH: usize = 1 << 20;

/// Weight initialization (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// Glorot uniform everywhere, zero biases.
    Glorot,
    /// First layer `−|Glorot uniform|`, the others Glorot uniform; zero biases.
    Negative,
}

impl Init {
    /// `glorot` or `negative`.
    pub fn name(self) -> &'static str {
        match self {
            Init::Glorot => "glorot",
            Init::Negative => "negative",
        }
    }

    /// Parses `glorot` or `negative`.
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "glorot" => Ok(Init::Glorot),
            "negative" => Ok(Init::Negative),
            _ => Err(Error::input(
                "init",
                format!("unknown init `{s}` (expected glorot or negative)"),
            )),
        }
    }
}

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

/// Settings of a training run; [`Default`] is the paper's (Fig. 1, Appendix C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// BP or Fenchel BP.
    pub rule: Rule,
    /// Weight initialization.
    pub init: Init,
    /// Layer widths (input first).
    pub widths: Vec<usize>,
    /// Epochs to train in total.
    pub epochs: usize,
    /// Batch size (the last batch of an epoch is smaller if it does not divide `train_size`).
    pub batch: usize,
    /// Adam settings (learning rate 1e-3).
    pub adam: AdamSettings,
    /// Seed of the initialization (and of the shuffling).
    pub seed: u64,
    /// Train on the first `train_size` training images (50,000: the rest is not used).
    pub train_size: usize,
    /// Shuffle the training images every epoch (the paper does not: file order).
    pub shuffle: bool,
    /// Also compute the exact training error over all `train_size` images after each epoch.
    pub exact_train_error: bool,
    /// Threads that compute the matrix products ([`Threads`]; 1 to [`MAX_THREADS`]). Results
    /// are bit-identical for every count, so a run may be resumed with another one. The
    /// trainer falls back to one thread while it measures that faster ([`Trainer::step`]).
    #[serde(default = "one_thread")]
    pub threads: usize,
}

fn one_thread() -> usize {
    1
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            rule: Rule::Bp,
            init: Init::Glorot,
            widths: PAPER_WIDTHS.to_vec(),
            epochs: 50,
            batch: 50,
            adam: AdamSettings::default(),
            seed: 42,
            train_size: 50_000,
            shuffle: false,
            exact_train_error: false,
            threads: 1,
        }
    }
}

impl TrainConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// Zero batch, epochs or training size; invalid β; a learning rate that is not positive
    /// and finite; widths that do not make a network; a thread count outside 1 to
    /// [`MAX_THREADS`].
    pub fn validate(&self) -> Result<()> {
        self.rule.validate()?;
        if self.threads == 0 || self.threads > MAX_THREADS {
            return Err(Error::input(
                "threads",
                format!("must be between 1 and {MAX_THREADS}"),
            ));
        }
        if self.batch == 0 || self.batch > MAX_BATCH {
            return Err(Error::input(
                "batch",
                format!("must be between 1 and {MAX_BATCH}"),
            ));
        }
        if self.train_size == 0 {
            return Err(Error::input("train_size", "must be at least 1"));
        }
        if !(self.adam.lr.is_finite() && self.adam.lr > 0.0) {
            return Err(Error::input("adam.lr", "must be positive and finite"));
        }
        if self.widths.len() < 2 || self.widths.contains(&0) {
            return Err(Error::input("widths", "need at least two positive widths"));
        }
        Ok(())
    }

    /// Checks the run against its data before anything is allocated for it: at least
    /// `train_size` training images, a non-empty test split, and images of the input width.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the mismatch.
    pub fn check_data(&self, data: &Mnist) -> Result<()> {
        let n = self.train_size;
        if data.train.len() < n {
            return Err(Error::input(
                "train_size",
                format!("{n} exceeds the {} training images", data.train.len()),
            ));
        }
        if data.test.is_empty() {
            return Err(Error::input(
                "data",
                "the test split is empty; the run reports the test error after every epoch",
            ));
        }
        let dim = self.widths[0];
        if data.train.dim != dim || data.test.dim != dim {
            return Err(Error::dim("image size", dim, data.train.dim));
        }
        Ok(())
    }

    /// Settings that must agree for a checkpoint to be resumed (everything except `epochs`,
    /// `exact_train_error` and `threads`).
    pub fn same_run(&self, other: &Self) -> bool {
        let strip = |c: &Self| Self {
            epochs: 0,
            exact_train_error: false,
            threads: 1,
            ..c.clone()
        };
        strip(self) == strip(other)
    }

    /// A legend label: "BP", "FenBP β=1000 (negative init)".
    pub fn label(&self) -> String {
        match self.init {
            Init::Glorot => self.rule.label(),
            Init::Negative => format!("{} (negative init)", self.rule.label()),
        }
    }
}

/// What one epoch measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (before each update), per sample.
    pub train_loss: f64,
    /// Running training error in % (each batch scored before its update, as the Julia code).
    pub train_error_pct: f64,
    /// Test error in % on the test split after the epoch.
    pub test_error_pct: f64,
    /// Wall time of the epoch's training steps (evaluation excluded).
    pub seconds: f64,
    /// Exact training error in % after the epoch (if requested).
    pub exact_train_error_pct: Option<f64>,
    /// What the inference sweeps did (MAC, predictive coding, LPOM).
    #[serde(default)]
    pub inference: Option<InferenceStats>,
}

/// The inference sweeps of one epoch ([`inference::gradient`]'s reports, summed over batches).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InferenceStats {
    /// Mean sweeps per batch.
    pub mean_sweeps: f64,
    /// Batches whose fixed-point residual did not reach the tolerance within the budget.
    pub unconverged: usize,
    /// The largest final fixed-point residual over the epoch's batches.
    pub max_residual: f64,
    /// Batches in the epoch.
    #[serde(default)]
    pub batches: usize,
}

/// Running sums behind [`InferenceStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct SweepTally {
    batches: usize,
    sweeps: usize,
    unconverged: usize,
    max_residual: f64,
}

impl SweepTally {
    fn add(&mut self, r: &inference::InferenceReport<f32>) {
        self.batches += 1;
        self.sweeps += r.sweeps;
        self.unconverged += usize::from(!r.converged);
        self.max_residual = self.max_residual.max(f64::from(r.residual));
    }

    fn stats(&self) -> Option<InferenceStats> {
        (self.batches > 0).then(|| InferenceStats {
            mean_sweeps: self.sweeps as f64 / self.batches as f64,
            unconverged: self.unconverged,
            max_residual: self.max_residual,
            batches: self.batches,
        })
    }
}

/// Buffers for one batch size: the closed-form pass's, and the sweeps' for iterative rules.
#[derive(Debug, Clone)]
struct Buffers {
    ws: Workspace<f32>,
    sweeps: Option<InferenceWorkspace<f32>>,
    x: DMatrix<f32>,
    y: DMatrix<f32>,
}

impl Buffers {
    fn new(net: &Network<f32>, batch: usize, rule: Option<Rule>, threads: &Threads) -> Self {
        let top = net.layers.last().map_or(0, |l| l.w.nrows());
        Self {
            ws: Workspace::new(net, batch).with_threads(threads.clone()),
            sweeps: rule
                .and_then(Rule::sweeps)
                .map(|_| InferenceWorkspace::new(net, batch).with_threads(threads.clone())),
            x: DMatrix::zeros(net.input_dim(), batch),
            y: DMatrix::zeros(top, batch),
        }
    }
}

/// Samples per evaluation chunk.
const EVAL_CHUNK: usize = 1000;

/// A training run: network, optimizer, history and all buffers.
#[derive(Debug, Clone)]
pub struct Trainer {
    /// The settings.
    pub config: TrainConfig,
    /// The network being trained.
    pub net: Network<f32>,
    /// Adam's state.
    pub adam: Adam,
    /// One record per completed epoch.
    pub history: Vec<EpochRecord>,
    grads: Gradients<f32>,
    full: Buffers,
    rest: Option<Buffers>,
    eval: Option<Buffers>,
    betas: Vec<f32>,
    order: Vec<usize>,
    tally: SweepTally,
    threads: Threads,
    pacer: Pacer,
}

/// Steps per cycle of [`Pacer`].
const PACE_CYCLE: usize = 1000;
/// Steps timed on one thread, then as many on the team, at the start of every cycle.
const PACE_PROBE: usize = 8;

/// Decides by measurement whether the team of threads pays: every [`PACE_CYCLE`] steps it
/// times [`PACE_PROBE`] steps on one thread and as many on the team, and runs the rest of the
/// cycle on whichever was faster (the fastest step of each, per unit of [`step_work`], so that
/// the inference rules' batches, whose sweeps vary, compare). Results do not depend on the
/// choice ([`Threads`] is bit-identical to one thread), only the speed: on the 2-core VM the
/// team was measured on, two threads are 1.6× faster most of the time, but in stretches of
/// seconds to minutes both threads run at about half speed and the team is 1.5× slower than
/// one thread (two one-thread processes side by side are not slowed at such times).
#[derive(Debug, Clone)]
struct Pacer {
    on: bool,
    step: usize,
    one: f64,
    team: f64,
}

impl Default for Pacer {
    fn default() -> Self {
        Self {
            on: true,
            step: 0,
            one: f64::INFINITY,
            team: f64::INFINITY,
        }
    }
}

/// The multiply-adds per sample of a training step's products, `n₁n₀ + Σ_k n_k n_{k−1}` (the
/// first layer's pre-activation and the weight gradients), plus `2 Σ_{k≥2} n_k n_{k−1}` per
/// inference sweep (every sweep of [`crate::nested::inference`] computes two products per layer
/// above the first): the unit the [`Pacer`] compares step times in. Element-wise work and Adam
/// scale with the same sizes.
fn step_work(net: &Network<f32>, sweeps: usize) -> f64 {
    let size = |l: &Layer<f32>| (l.w.nrows() * l.w.ncols()) as f64;
    let first = net.layers.first().map_or(0.0, size);
    let all: f64 = net.layers.iter().map(size).sum();
    first + all + 2.0 * (all - first) * sweeps as f64
}

impl Pacer {
    /// Before a step: switches the team for the probes; the probe's start time.
    fn before(&mut self, threads: &Threads) -> Option<Instant> {
        if threads.count() < 2 || !self.on {
            return None;
        }
        match self.step % PACE_CYCLE {
            0 => {
                threads.set_parallel(false);
                self.one = f64::INFINITY;
                self.team = f64::INFINITY;
            }
            PACE_PROBE => threads.set_parallel(true),
            _ => {}
        }
        (self.step % PACE_CYCLE < 2 * PACE_PROBE).then(Instant::now)
    }

    /// After a step of `work` ([`step_work`]): records the probe's time per unit of work;
    /// after the last probe, chooses.
    fn after(&mut self, threads: &Threads, start: Option<Instant>, work: f64) {
        if let Some(start) = start {
            self.record(threads, start.elapsed().as_secs_f64() / work);
        }
    }

    /// A probe step took `seconds` (per unit of work).
    fn record(&mut self, threads: &Threads, seconds: f64) {
        let phase = self.step % PACE_CYCLE;
        self.step += 1;
        if phase < PACE_PROBE {
            self.one = self.one.min(seconds);
        } else {
            self.team = self.team.min(seconds);
        }
        if phase == 2 * PACE_PROBE - 1 {
            threads.set_parallel(self.team < self.one);
        }
    }
}

impl Trainer {
    /// A fresh run: the network initialized from `config.seed`.
    ///
    /// # Errors
    /// Invalid settings ([`TrainConfig::validate`]).
    pub fn new(config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let mut rng = StdRng::seed_from_u64(config.seed);
        let net = mlp(&config.widths, config.init, &mut rng)?;
        Self::from_parts(config, net, None, Vec::new())
    }

    /// A run from a given network and optimizer state (resuming, or a custom network).
    ///
    /// # Errors
    /// Invalid settings; a network whose widths differ from `config.widths` or that is not
    /// valid for the rule's energy.
    pub fn from_parts(
        config: TrainConfig,
        net: Network<f32>,
        adam: Option<Adam>,
        history: Vec<EpochRecord>,
    ) -> Result<Self> {
        config.validate()?;
        net.validate(config.rule.energy())?;
        let mut widths = vec![net.input_dim()];
        widths.extend(net.widths());
        if widths != config.widths {
            return Err(Error::dim(
                "network widths",
                format!("{:?}", config.widths),
                format!("{widths:?}"),
            ));
        }
        let adam = adam.unwrap_or_else(|| Adam::new(&net, config.adam));
        let rest = config.train_size % config.batch;
        let threads = Threads::new(config.threads)?;
        let rule = Some(config.rule);
        Ok(Self {
            grads: Gradients::zeros(&net),
            full: Buffers::new(&net, config.batch.min(config.train_size), rule, &threads),
            rest: (rest > 0 && config.train_size > config.batch)
                .then(|| Buffers::new(&net, rest, rule, &threads)),
            eval: None,
            betas: vec![config.rule.beta(); net.layers.len()],
            // Filled by `prepare_order` once the data are known to hold `train_size` images.
            order: Vec::new(),
            tally: SweepTally::default(),
            threads,
            pacer: Pacer::default(),
            config,
            net,
            adam,
            history,
        })
    }

    /// Completed epochs.
    pub fn epoch(&self) -> usize {
        self.history.len()
    }

    /// One Adam step on the images `indices` of `data`: [`Trainer::gradient`], then Adam.
    /// Returns the batch-mean loss before the update and how many images the network
    /// classified correctly before the update. Allocates nothing when `indices.len()` is the
    /// configured batch size (or the remainder size). On more than one thread, the first 16
    /// steps of every 1000 are timed on one thread and on the team, and the rest run on the
    /// faster (the results are the same either way).
    ///
    /// # Errors
    /// An index out of range; a non-finite loss (diverged training).
    pub fn step(&mut self, data: &Split, indices: &[usize]) -> Result<(f32, usize)> {
        let probe = self.pacer.before(&self.threads);
        let sweeps = self.tally.sweeps;
        let (value, correct) = self.gradient(data, indices)?;
        self.adam
            .step_with(&mut self.net, &self.grads, &self.threads)?;
        let work = step_work(&self.net, self.tally.sweeps - sweeps);
        self.pacer.after(&self.threads, probe, work);
        Ok((value, correct))
    }

    /// The rule's gradient on the images `indices` of `data` into [`Trainer::grads`] (Prop. 7's
    /// pass for BP and Fenchel BP, the inference sweeps for MAC, predictive coding and LPOM),
    /// without updating the network. Returns the batch-mean loss of the forward pass and how
    /// many images it classifies correctly.
    ///
    /// # Errors
    /// As [`Trainer::step`].
    pub fn gradient(&mut self, data: &Split, indices: &[usize]) -> Result<(f32, usize)> {
        let buf = if indices.len() == self.full.x.ncols() {
            &mut self.full
        } else {
            match &mut self.rest {
                Some(r) if r.x.ncols() == indices.len() => r,
                other => other.insert(Buffers::new(
                    &self.net,
                    indices.len(),
                    Some(self.config.rule),
                    &self.threads,
                )),
            }
        };
        data.batch_into(indices, &mut buf.x, &mut buf.y)?;
        // The rule's β is the paper's (Fig. 1, Appendix C): it acts on the batch-mean loss
        // gradient, i.e. β/B per sample in the library's batch convention (crate::nested).
        let per_sample = self.config.rule.beta() / indices.len() as f32;
        self.betas.fill(per_sample);
        let loss = OutputLoss::SoftmaxCrossEntropy;
        match (self.config.rule.inference_settings(), &mut buf.sweeps) {
            (Some(settings), Some(ws)) => {
                let run = if self.config.rule.centered() {
                    inference::centered_gradient
                } else {
                    inference::gradient
                };
                let report = run(
                    &self.net,
                    self.config.rule.method(),
                    &self.betas,
                    loss,
                    &buf.x,
                    &buf.y,
                    &settings,
                    ws,
                    &mut self.grads,
                )?;
                self.tally.add(&report);
                Ok((report.forward_loss, count_correct(&ws.forward_top, &buf.y)))
            }
            _ => {
                let value = linearized::gradient(
                    &self.net,
                    self.config.rule.energy(),
                    &self.betas,
                    loss,
                    &buf.x,
                    &buf.y,
                    &mut buf.ws,
                    &mut self.grads,
                )?;
                let top = self.net.layers.len() - 1;
                Ok((value, count_correct(&buf.ws.z[top], &buf.y)))
            }
        }
    }

    /// Steps over `indices` in batches (no evaluation, no history): the timed part of an epoch.
    /// Resets the sweep statistics first ([`Trainer::sweep_stats`]).
    ///
    /// # Errors
    /// As [`Trainer::step`].
    pub fn train_steps(&mut self, data: &Split, indices: &[usize]) -> Result<()> {
        self.tally = SweepTally::default();
        for chunk in indices.chunks(self.config.batch) {
            self.step(data, chunk)?;
        }
        Ok(())
    }

    /// The inference statistics since the last epoch (or [`Trainer::train_steps`]) began;
    /// `None` for the closed-form rules.
    pub fn sweep_stats(&self) -> Option<InferenceStats> {
        self.tally.stats()
    }

    /// Whether [`Trainer::step`] measures if the team of threads pays (on by default). Off, the
    /// team computes every step (for tests and for measuring the team itself).
    pub fn set_pacing(&mut self, on: bool) {
        self.pacer = Pacer {
            on,
            ..Pacer::default()
        };
        self.threads.set_parallel(true);
    }

    /// The gradient of the last [`Trainer::gradient`] or [`Trainer::step`].
    pub fn grads(&self) -> &Gradients<f32> {
        &self.grads
    }

    /// The training order of epoch `epoch` (from 1): file order, or a permutation seeded by
    /// `(seed, epoch)` with `shuffle` — so a resumed run sees the same batches.
    fn prepare_order(&mut self, epoch: usize) {
        // Allocates in the first epoch only (the capacity stays).
        self.order.clear();
        self.order.extend(0..self.config.train_size);
        if self.config.shuffle {
            let mix = self.config.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            self.order.shuffle(&mut StdRng::seed_from_u64(mix));
        }
    }

    /// Trains one epoch on `data.train` and evaluates on `data.test`; `progress(step, steps,
    /// running_loss)` is called after every step. Appends and returns the epoch's record.
    ///
    /// # Errors
    /// Fewer than `train_size` training images; a non-finite loss.
    pub fn train_epoch(
        &mut self,
        data: &Mnist,
        progress: &mut dyn FnMut(usize, usize, f64),
    ) -> Result<EpochRecord> {
        let n = self.config.train_size;
        self.config.check_data(data)?;
        let epoch = self.epoch() + 1;
        self.prepare_order(epoch);
        let order = std::mem::take(&mut self.order);
        self.tally = SweepTally::default();
        let steps = n.div_ceil(self.config.batch);
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        let start = Instant::now();
        let result = (|| {
            for (s, chunk) in order.chunks(self.config.batch).enumerate() {
                let (loss, c) = self.step(&data.train, chunk)?;
                loss_sum += f64::from(loss) * chunk.len() as f64;
                correct += c;
                progress(
                    s + 1,
                    steps,
                    loss_sum / ((s * self.config.batch + chunk.len()) as f64),
                );
            }
            Ok::<(), Error>(())
        })();
        self.order = order;
        result?;
        let seconds = start.elapsed().as_secs_f64();
        if !self
            .net
            .layers
            .iter()
            .all(|l| l.w.iter().chain(l.bias.iter()).all(|v| v.is_finite()))
        {
            return Err(Error::NonFinite {
                what: format!("network weights after epoch {epoch} (training diverged)"),
            });
        }
        let test_error_pct = self.error_pct(&data.test, data.test.len())?;
        let exact_train_error_pct = if self.config.exact_train_error {
            Some(self.error_pct(&data.train, n)?)
        } else {
            None
        };
        let record = EpochRecord {
            epoch,
            train_loss: loss_sum / n as f64,
            train_error_pct: 100.0 * (1.0 - correct as f64 / n as f64),
            test_error_pct,
            seconds,
            exact_train_error_pct,
            inference: self.tally.stats(),
        };
        self.history.push(record.clone());
        Ok(record)
    }

    /// Classification error in % of the current network on the first `count` images of
    /// `split` (forward passes in chunks of 1000; buffers allocated once).
    ///
    /// # Errors
    /// `count` larger than the split; a wrong image size.
    pub fn error_pct(&mut self, split: &Split, count: usize) -> Result<f64> {
        if count == 0 || count > split.len() {
            return Err(Error::input(
                "count",
                format!("{count} of {} images", split.len()),
            ));
        }
        let mut wrong = 0usize;
        let mut indices: Vec<usize> = Vec::with_capacity(EVAL_CHUNK);
        let mut start = 0;
        while start < count {
            let len = EVAL_CHUNK.min(count - start);
            let buf = match &mut self.eval {
                Some(b) if b.x.ncols() == len => b,
                other => other.insert(Buffers::new(&self.net, len, None, &self.threads)),
            };
            indices.clear();
            indices.extend(start..start + len);
            split.batch_into(&indices, &mut buf.x, &mut buf.y)?;
            linearized::forward(&self.net, &buf.x, &mut buf.ws)?;
            let top = self.net.layers.len() - 1;
            if !buf.ws.z[top].iter().all(|v| v.is_finite()) {
                return Err(Error::NonFinite {
                    what: "network outputs during evaluation".into(),
                });
            }
            wrong += len - count_correct(&buf.ws.z[top], &buf.y);
            start += len;
        }
        Ok(100.0 * wrong as f64 / count as f64)
    }
}

/// Columns whose largest output (first on ties, as Flux's `onecold`) is the one-hot target.
pub fn count_correct(outputs: &DMatrix<f32>, onehot: &DMatrix<f32>) -> usize {
    outputs
        .column_iter()
        .zip(onehot.column_iter())
        .filter(|(o, t)| {
            let argmax = |c: &nalgebra::DVectorView<f32>| {
                let mut best = 0;
                for i in 1..c.len() {
                    if c[i] > c[best] {
                        best = i;
                    }
                }
                best
            };
            let (o, t) = (o.as_view(), t.as_view());
            argmax(&o) == argmax(&t)
        })
        .count()
}

/// Where a run writes its files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs {
    /// The CSV log ([`log`]).
    pub log: Option<std::path::PathBuf>,
    /// The checkpoint directory ([`checkpoint`]), written after every epoch.
    pub checkpoint: Option<std::path::PathBuf>,
    /// Continue from the checkpoint if one exists (requires `checkpoint`).
    pub resume: bool,
    /// Start afresh over an existing checkpoint (without it, and without `resume`, an
    /// existing checkpoint is never replaced).
    pub overwrite: bool,
}

impl Outputs {
    /// Checks that `resume` comes with a checkpoint directory.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for `resume` without `checkpoint`.
    pub fn validate(&self) -> Result<()> {
        if self.resume && self.checkpoint.is_none() {
            return Err(Error::input(
                "resume",
                "needs a checkpoint directory to resume from",
            ));
        }
        if self.resume && self.overwrite {
            return Err(Error::input(
                "overwrite",
                "contradicts resume: choose to continue the checkpoint or to replace it",
            ));
        }
        if let Some(dir) = &self.checkpoint {
            if checkpoint::exists(dir) && !self.resume && !self.overwrite {
                return Err(Error::input(
                    "checkpoint",
                    format!(
                        "{} already holds a checkpoint; resume it to continue, or overwrite \
                         it to start afresh",
                        dir.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Creates the checkpoint directory and proves it writable (a probe file, removed again),
    /// so that a run cannot train an epoch and only then fail to save it.
    ///
    /// # Errors
    /// [`Error::Io`] naming the directory.
    pub fn prepare(&self) -> Result<()> {
        if let Some(dir) = &self.checkpoint {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let probe = dir.join(format!("{}.probe", checkpoint::FILE));
            std::fs::write(&probe, b"").map_err(|e| Error::io(&probe, e))?;
            std::fs::remove_file(&probe).map_err(|e| Error::io(&probe, e))?;
        }
        Ok(())
    }
}

/// Receives progress from [`run`].
pub trait Observer {
    /// Before the first epoch of a run with this legend label and `epochs` epochs in total.
    fn begin(&mut self, _label: &str, _epochs: usize) {}
    /// After every step of epoch `epoch`: `step` of `steps`, running mean loss.
    fn step(&mut self, _epoch: usize, _step: usize, _steps: usize, _loss: f64) {}
    /// After every epoch (also the ones restored from a checkpoint, with `resumed`).
    fn epoch(&mut self, _record: &EpochRecord, _resumed: bool) {}
}

/// An observer that ignores everything.
impl Observer for () {}

/// Trains for `config.epochs` epochs (from a checkpoint if `outputs.resume`), writing the log
/// and the checkpoint after every epoch. Returns the trainer.
///
/// # Errors
/// Settings, data, a diverged run, file errors; `resume` without `checkpoint`.
pub fn run(
    config: TrainConfig,
    data: &Mnist,
    outputs: &Outputs,
    observer: &mut dyn Observer,
) -> Result<Trainer> {
    outputs.validate()?;
    config.validate()?;
    config.check_data(data)?;
    outputs.prepare()?;
    let mut trainer = match (&outputs.checkpoint, outputs.resume) {
        (None, true) => {
            return Err(Error::input(
                "resume",
                "needs a checkpoint directory to resume from",
            ))
        }
        (Some(dir), true) if checkpoint::exists(dir) => checkpoint::load(dir, config)?,
        _ => Trainer::new(config)?,
    };
    observer.begin(&trainer.config.label(), trainer.config.epochs);
    for r in &trainer.history {
        observer.epoch(r, true);
    }
    if let Some(path) = &outputs.log {
        log::create(path, &trainer.history, &trainer.config)?;
    }
    while trainer.epoch() < trainer.config.epochs {
        let epoch = trainer.epoch() + 1;
        let record = trainer.train_epoch(data, &mut |s, n, l| observer.step(epoch, s, n, l))?;
        if let Some(path) = &outputs.log {
            log::append(path, &record, &trainer.config)?;
        }
        if let Some(dir) = &outputs.checkpoint {
            checkpoint::save(dir, &trainer)?;
        }
        observer.epoch(&record, false);
    }
    Ok(trainer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one cycle of the pacer with the given probe times; whether the team is on after it,
    /// and the team's state during each probe.
    fn cycle(p: &mut Pacer, threads: &Threads, one: f64, team: f64) -> (bool, Vec<bool>) {
        let mut during = Vec::new();
        for s in 0..PACE_CYCLE {
            let probe = p.before(threads);
            during.push(threads.is_parallel());
            match probe {
                Some(_) if s < PACE_PROBE => p.record(threads, one),
                Some(_) => p.record(threads, team),
                None => p.step += 1,
            }
        }
        (threads.is_parallel(), during)
    }

    #[test]
    fn a_step_is_weighed_by_its_products() {
        let net = mlp(
            &[784, 256, 128, 64, 10],
            Init::Glorot,
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap();
        // 256·784 + (256·784 + 128·256 + 64·128 + 10·64), and per sweep the three upper layers
        // twice.
        assert_eq!(step_work(&net, 0), 443_008.0);
        assert_eq!(step_work(&net, 3) - step_work(&net, 2), 83_200.0);
    }

    #[test]
    fn the_pacer_probes_one_thread_then_the_team_and_keeps_the_faster() {
        let threads = Threads::new(2).unwrap();
        let mut p = Pacer::default();
        let (on, during) = cycle(&mut p, &threads, 1.0, 0.6);
        assert!(on, "the team was faster");
        assert!(during[..PACE_PROBE].iter().all(|&t| !t));
        assert!(during[PACE_PROBE..].iter().all(|&t| t));
        let (on, during) = cycle(&mut p, &threads, 1.0, 1.5);
        assert!(!on, "one thread was faster");
        assert!(during[PACE_PROBE..2 * PACE_PROBE].iter().all(|&t| t));
        assert!(during[2 * PACE_PROBE..].iter().all(|&t| !t));
        // One thread, or pacing off: no probes, the team stays as it is.
        assert!(Pacer::default().before(&Threads::default()).is_none());
        let mut off = Pacer {
            on: false,
            ..Pacer::default()
        };
        threads.set_parallel(true);
        assert!(off.before(&threads).is_none() && threads.is_parallel());
    }
}
