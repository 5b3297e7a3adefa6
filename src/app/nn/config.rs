//! The settings of a training run ([`TrainConfig`]) and what each epoch measured
//! ([`EpochRecord`]).

use serde::{Deserialize, Serialize};

use super::adam::AdamSettings;
use super::model::{Init, MAX_BATCH, PAPER_WIDTHS};
use super::rule::Rule;
use crate::app::data::Mnist;
use crate::error::{Error, Result};
use crate::linalg::MAX_THREADS;

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
    /// Threads that compute the matrix products ([`crate::linalg::Threads`]; 1 to [`MAX_THREADS`]). Results
    /// are bit-identical for every count, so a run may be resumed with another one. The
    /// trainer falls back to one thread while it measures that faster ([`Trainer::step`](super::Trainer::step)).
    #[serde(default = "one_thread")]
    pub threads: usize,
}

fn one_thread() -> usize {
    1
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            rule: Rule::bp(),
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
    /// The paper's settings ([`Default`]) with `rule` on `threads` threads.
    pub fn paper(rule: Rule, threads: usize) -> Self {
        Self {
            rule,
            threads,
            ..Self::default()
        }
    }
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

/// The inference sweeps of one epoch ([`inference::gradient`](crate::nested::inference::gradient)'s reports, summed over batches).
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
    /// The mean surrogate value `L^β` per sample over the epoch's batches (before each update),
    /// next to `train_loss` (the forward pass's loss on the same batches): for MAC and predictive
    /// coding a lower bound of it (Eq. 30 is at most the forward loss, where every penalty
    /// vanishes), for CHL and convex CHL the contrastive value (Eq. 22). `None` in records
    /// written before it was logged.
    #[serde(default)]
    pub mean_surrogate: Option<f64>,
}
