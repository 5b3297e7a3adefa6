//! A training run ([`Trainer`]): the network, Adam, the step's buffers and the epoch loop.

use std::borrow::Cow;
use std::time::Instant;

use nalgebra::DMatrix;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::adam::Adam;
use super::config::{EpochRecord, InferenceStats, TrainConfig};
use super::model::mlp;
use super::pacer::{step_work, Pacer};
use super::rule::Rule;
use crate::app::data::{Mnist, Split};
use crate::error::{Error, Result};
use crate::linalg::Threads;
use crate::nested::inference::{self, InferenceWorkspace};
use crate::nested::linearized::{self, Gradients, Workspace};
use crate::nested::{Batch, BatchReport, NestedProblem, Network, Outcome, OutputLoss};

/// Running sums behind [`InferenceStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct SweepTally {
    batches: usize,
    sweeps: usize,
    unconverged: usize,
    max_residual: f64,
    samples: usize,
    value_sum: f64,
}

impl SweepTally {
    fn add(&mut self, r: &BatchReport<f32>, samples: usize) {
        self.batches += 1;
        self.samples += samples;
        self.value_sum += f64::from(r.value) * samples as f64;
        self.sweeps += r.status.iterations;
        self.unconverged += usize::from(r.status.outcome != Outcome::Solved);
        self.max_residual = self.max_residual.max(r.status.residual);
    }

    fn stats(&self) -> Option<InferenceStats> {
        (self.batches > 0).then(|| InferenceStats {
            mean_sweeps: self.sweeps as f64 / self.batches as f64,
            unconverged: self.unconverged,
            max_residual: self.max_residual,
            batches: self.batches,
            mean_surrogate: Some(self.value_sum / self.samples.max(1) as f64),
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
        let rule = self.config.rule;
        let problem = NestedProblem {
            net: &self.net,
            energy: rule.energy(),
            betas: Cow::Borrowed(&self.betas),
            loss: OutputLoss::SoftmaxCrossEntropy,
            method: Some(rule.method()),
        };
        let batch = Batch {
            x: &buf.x,
            target: &buf.y,
        };
        match &mut buf.sweeps {
            Some(ws) => {
                let report =
                    inference::gradient(&problem, batch, &rule.settings(), ws, &mut self.grads)?;
                self.tally.add(&report, indices.len());
                Ok((report.forward_loss, count_correct(&ws.forward_top, &buf.y)))
            }
            None => {
                let report = linearized::gradient(&problem, batch, &mut buf.ws, &mut self.grads)?;
                let top = self.net.layers.len() - 1;
                Ok((report.value, count_correct(&buf.ws.z[top], &buf.y)))
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
        self.pacer = Pacer::new(on);
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
