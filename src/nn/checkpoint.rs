//! Checkpoints: the network, Adam's state and the epoch history after each epoch.
//!
//! One file `DIR/checkpoint.bin`: a line `BILEVEL-CHECKPOINT 1`, a line of JSON (settings,
//! step count, history, tensor shapes), then every tensor as little-endian `f32` — the weights
//! and biases layer by layer (`W_1, b_1, W_2, …`, column-major), then Adam's `m`, then `v`, in
//! the same order. It is written to `checkpoint.bin.tmp` and renamed, so a crash leaves the
//! previous complete epoch. The data order of every epoch is a function of `(seed, epoch)`, so
//! resuming reproduces the uninterrupted run bit for bit.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Adam, EpochRecord, TrainConfig, Trainer};
use crate::error::{Error, Result};
use crate::nested::linearized::Gradients;
use crate::nested::Network;

const MAGIC: &str = "BILEVEL-CHECKPOINT 1";

/// The file name inside the checkpoint directory.
pub const FILE: &str = "checkpoint.bin";

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    config: TrainConfig,
    adam_t: u64,
    history: Vec<EpochRecord>,
    /// `(rows, cols)` of every `W_k`.
    shapes: Vec<(usize, usize)>,
}

/// The checkpoint file in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

fn tensors<'a>(
    net: &'a Network<f32>,
    m: &'a Gradients<f32>,
    v: &'a Gradients<f32>,
) -> Vec<&'a [f32]> {
    let mut out = Vec::new();
    for l in &net.layers {
        out.push(l.w.as_slice());
        out.push(l.b.as_slice());
    }
    for g in [m, v] {
        for (w, b) in g.w.iter().zip(&g.b) {
            out.push(w.as_slice());
            out.push(b.as_slice());
        }
    }
    out
}

/// Writes `trainer`'s state to `dir/checkpoint.bin` atomically (temporary file, then rename).
///
/// # Errors
/// [`Error::Io`] if the directory cannot be created or the file written.
pub fn save(dir: &Path, trainer: &Trainer) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let header = Header {
        config: trainer.config.clone(),
        adam_t: trainer.adam.t,
        history: trainer.history.clone(),
        shapes: trainer.net.layers.iter().map(|l| l.w.shape()).collect(),
    };
    let tmp = dir.join(format!("{FILE}.tmp"));
    let io = |e: std::io::Error| Error::io(&tmp, e);
    let mut out = std::io::BufWriter::new(fs::File::create(&tmp).map_err(io)?);
    let json = serde_json::to_string(&header).map_err(|e| Error::io(&tmp, e))?;
    writeln!(out, "{MAGIC}\n{json}").map_err(io)?;
    for t in tensors(&trainer.net, &trainer.adam.m, &trainer.adam.v) {
        for v in t {
            out.write_all(&v.to_le_bytes()).map_err(io)?;
        }
    }
    let file = out.into_inner().map_err(|e| Error::io(&tmp, e.error()))?;
    file.sync_all().map_err(io)?;
    let dst = path(dir);
    fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))
}

/// Whether `dir` holds a checkpoint.
pub fn exists(dir: &Path) -> bool {
    path(dir).is_file()
}

/// Reads the checkpoint in `dir` and rebuilds the trainer, with `config` (whose run settings
/// must equal the checkpoint's; `epochs` and `exact_train_error` may differ).
///
/// # Errors
/// [`Error::BadData`] for a missing, truncated or malformed file; [`Error::InvalidInput`] if
/// the checkpoint was written by a run with other settings.
pub fn load(dir: &Path, config: TrainConfig) -> Result<Trainer> {
    let file = path(dir);
    let bad = |reason: String| Error::BadData {
        path: file.clone(),
        reason,
    };
    let mut r = BufReader::new(fs::File::open(&file).map_err(|e| {
        bad(format!(
            "cannot open it ({e}); run without --resume to start afresh"
        ))
    })?);
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| bad(format!("cannot read it ({e})")))?;
    if line.trim_end() != MAGIC {
        return Err(bad(format!(
            "not a bilevel checkpoint (first line should be `{MAGIC}`)"
        )));
    }
    line.clear();
    r.read_line(&mut line)
        .map_err(|e| bad(format!("cannot read its header ({e})")))?;
    let header: Header =
        serde_json::from_str(&line).map_err(|e| bad(format!("malformed header ({e})")))?;
    if !header.config.same_run(&config) {
        return Err(Error::input(
            "--resume",
            format!(
                "the checkpoint in {} was written by a run with other settings ({}, init {}, \
                 batch {}, lr {}, seed {}); pass the same settings or another --checkpoint \
                 directory",
                dir.display(),
                header.config.rule.label(),
                header.config.init.name(),
                header.config.batch,
                header.config.adam.lr,
                header.config.seed
            ),
        ));
    }
    let mut net = super::mlp(
        &config.widths,
        config.init,
        &mut crate::verify::instances::rng(0),
    )?;
    let shapes: Vec<_> = net.layers.iter().map(|l| l.w.shape()).collect();
    if shapes != header.shapes {
        return Err(bad(format!(
            "tensor shapes {:?} do not match the network {shapes:?}",
            header.shapes
        )));
    }
    let mut adam = Adam::new(&net, config.adam);
    adam.t = header.adam_t;
    let mut buf = Vec::new();
    r.read_to_end(&mut buf)
        .map_err(|e| bad(format!("cannot read its tensors ({e})")))?;
    let needed: usize = tensors(&net, &adam.m, &adam.v)
        .iter()
        .map(|t| t.len())
        .sum();
    if buf.len() != 4 * needed {
        return Err(bad(format!(
            "{} bytes of tensors, expected {} (truncated? the previous epoch's file is gone; \
             start afresh without --resume)",
            buf.len(),
            4 * needed
        )));
    }
    let mut values = buf
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    let mut fill = |dst: &mut [f32]| {
        for d in dst {
            *d = values.next().unwrap_or(f32::NAN);
        }
    };
    for l in &mut net.layers {
        fill(l.w.as_mut_slice());
        fill(l.b.as_mut_slice());
    }
    for g in [&mut adam.m, &mut adam.v] {
        for (w, b) in g.w.iter_mut().zip(g.b.iter_mut()) {
            fill(w.as_mut_slice());
            fill(b.as_mut_slice());
        }
    }
    Trainer::from_parts(config, net, Some(adam), header.history)
}
