//! Checkpoints: the network, Adam's state and the epoch history after each epoch.
//!
//! One file `DIR/checkpoint.bin`: a line `BILEVEL-CHECKPOINT 2`, a line of JSON (settings,
//! step count, history, tensor shapes), then every tensor as little-endian `f32` — the weights
//! and biases layer by layer (`W_1, b_1, W_2, …`, column-major), then Adam's `m`, then `v`, in
//! the same order — and last the CRC-32 (IEEE, little-endian) of every byte before it. It is
//! written to `checkpoint.bin.tmp` and renamed, so a crash leaves the previous complete epoch.
//! The data order of every epoch is a function of `(seed, epoch)`, so resuming reproduces the
//! uninterrupted run bit for bit.
//!
//! Loading checks the checksum (any flipped bit, truncation or appended byte is refused), then
//! the header's invariants: epochs numbered `1, 2, …`, Adam's step count equal to the steps
//! those epochs took, finite records in range, finite tensors with `v ≥ 0`, and zero moments
//! before the first step. Format 1
//! (no checksum) is refused with a message: it cannot be verified.

use std::fs;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Adam, EpochRecord, TrainConfig, Trainer};
use crate::error::{Error, Result};
use crate::nested::linearized::Gradients;
use crate::nested::Network;

const MAGIC: &str = "BILEVEL-CHECKPOINT 2";
const MAGIC_V1: &str = "BILEVEL-CHECKPOINT 1";

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
        out.push(l.bias.as_slice());
    }
    for g in [m, v] {
        for (w, b) in g.w.iter().zip(&g.bias) {
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
    let json = serde_json::to_string(&header).map_err(|e| Error::io_message(&tmp, e))?;
    let mut bytes = format!("{MAGIC}\n{json}\n").into_bytes();
    for t in tensors(&trainer.net, &trainer.adam.m, &trainer.adam.v) {
        for v in t {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let mut out = fs::File::create(&tmp).map_err(io)?;
    out.write_all(&bytes).map_err(io)?;
    let file = out;
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
    let bytes = fs::read(&file).map_err(|e| Error::BadData {
        path: file.clone(),
        reason: format!("cannot read it ({e}); start afresh instead of resuming"),
    })?;
    decode(&bytes, &file, config)
}

/// [`load`] on the bytes of a checkpoint file; `file` only names it in errors.
///
/// # Errors
/// As [`load`].
pub fn decode(bytes: &[u8], file: &Path, config: TrainConfig) -> Result<Trainer> {
    let bad = |reason: String| Error::BadData {
        path: file.to_path_buf(),
        reason,
    };
    let body = checked_body(bytes).map_err(bad)?;
    let mut r = &body[MAGIC.len() + 1..];
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| bad(format!("cannot read its header ({e})")))?;
    let header: Header =
        serde_json::from_str(&line).map_err(|e| bad(format!("malformed header ({e})")))?;
    check_header(&header, &config).map_err(bad)?;
    if !header.config.same_run(&config) {
        return Err(Error::input(
            "resume",
            format!(
                "the checkpoint {} was written by a run with other settings ({}, init {}, \
                 batch {}, lr {}, seed {}); use the same settings or another checkpoint \
                 directory",
                file.display(),
                header.config.rule.label(),
                header.config.init,
                header.config.batch,
                header.config.adam.lr,
                header.config.seed
            ),
        ));
    }
    // Any seed: only the shapes matter, every tensor is overwritten below.
    let mut net = super::mlp(
        &config.widths,
        config.init,
        &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0),
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
    fill_tensors(r, &mut net, &mut adam).map_err(bad)?;
    check_tensors(&net, &adam).map_err(bad)?;
    Trainer::from_parts(config, net, Some(adam), header.history)
}

/// The file's body (magic line, header, tensors) once the format and the CRC-32 check out.
fn checked_body(bytes: &[u8]) -> std::result::Result<&[u8], String> {
    if bytes.starts_with(MAGIC_V1.as_bytes()) {
        return Err(
            "format 1 (written by an older bilevel, without a checksum) cannot be verified; \
             start afresh by overwriting it"
                .into(),
        );
    }
    if !bytes.starts_with(format!("{MAGIC}\n").as_bytes()) {
        return Err(format!(
            "not a bilevel checkpoint (first line should be `{MAGIC}`)"
        ));
    }
    let (body, crc) = bytes.split_at(bytes.len().saturating_sub(4));
    let stored = u32::from_le_bytes(crc.try_into().unwrap_or([0; 4]));
    if crc32fast::hash(body) != stored {
        return Err(
            "checksum mismatch: the file is corrupted or truncated (the previous epoch's file \
             is gone; start afresh by overwriting it)"
                .into(),
        );
    }
    Ok(body)
}

/// Reads the weights, then Adam's first and second moments, layer by layer (`W` then `b`),
/// little-endian `f32`, from `buf`, which must hold exactly that many.
fn fill_tensors(
    buf: &[u8],
    net: &mut Network<f32>,
    adam: &mut Adam,
) -> std::result::Result<(), String> {
    let needed: usize = tensors(net, &adam.m, &adam.v).iter().map(|t| t.len()).sum();
    if buf.len() != 4 * needed {
        return Err(format!(
            "{} bytes of tensors, expected {} (truncated? the previous epoch's file is gone; \
             start afresh instead of resuming)",
            buf.len(),
            4 * needed
        ));
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
        fill(l.bias.as_mut_slice());
    }
    for g in [&mut adam.m, &mut adam.v] {
        for (w, b) in g.w.iter_mut().zip(g.bias.iter_mut()) {
            fill(w.as_mut_slice());
            fill(b.as_mut_slice());
        }
    }
    Ok(())
}

/// The tensors' invariants: finite, second moments non-negative, moments exactly zero before
/// the first step.
fn check_tensors(net: &Network<f32>, adam: &Adam) -> std::result::Result<(), String> {
    let finite = |t: &[f32]| t.iter().all(|v| v.is_finite());
    let tensors_ok = tensors(net, &adam.m, &adam.v).into_iter().all(finite)
        && adam.v.w.iter().all(|t| t.iter().all(|&v| v >= 0.0))
        && adam.v.bias.iter().all(|t| t.iter().all(|&v| v >= 0.0));
    let fresh = adam.t > 0
        || tensors(net, &adam.m, &adam.v)
            .into_iter()
            .skip(2 * net.layers.len())
            .all(|t| t.iter().all(|&v| v == 0.0));
    if tensors_ok && fresh {
        Ok(())
    } else {
        Err(
            "non-finite weights or moments, a negative second moment, or moments without \
             a step"
                .into(),
        )
    }
}

/// The header's invariants (see the module docs); the reason when one fails.
fn check_header(h: &Header, config: &TrainConfig) -> std::result::Result<(), String> {
    for (i, r) in h.history.iter().enumerate() {
        if r.epoch != i + 1 {
            return Err(format!(
                "history entry {} is epoch {} (epochs must be numbered 1, 2, ...)",
                i + 1,
                r.epoch
            ));
        }
        let pct = |v: f64| (0.0..=100.0).contains(&v);
        let in_range = r.train_loss.is_finite()
            && r.train_loss >= 0.0
            && pct(r.train_error_pct)
            && pct(r.test_error_pct)
            && r.seconds.is_finite()
            && r.seconds >= 0.0
            && r.exact_train_error_pct.is_none_or(pct);
        if !in_range {
            return Err(format!("epoch {} has values out of range", r.epoch));
        }
    }
    let steps = config.train_size.div_ceil(config.batch) as u64;
    if h.adam_t != steps * h.history.len() as u64 {
        return Err(format!(
            "Adam's step count {} does not match {} epochs of {steps} steps",
            h.adam_t,
            h.history.len()
        ));
    }
    Ok(())
}
