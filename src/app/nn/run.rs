//! A whole run as the command line does it: resumed from a checkpoint or fresh, the CSV log
//! and the checkpoint written after every epoch, progress reported to an [`Observer`].

use super::checkpoint;
use super::config::{EpochRecord, TrainConfig};
use super::log;
use super::trainer::Trainer;
use crate::app::data::Mnist;
use crate::error::{Error, Result};

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
