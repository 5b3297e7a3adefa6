//! The per-epoch CSV log, and reading it back for plots.
//!
//! Columns: `epoch,train_loss,train_error_pct,test_error_pct,seconds` (`seconds`: wall time of
//! the epoch's training steps, evaluation excluded), then `exact_train_error_pct` (empty unless
//! `--exact-train-error`) and the run's settings `method,beta,init,seed,batch,lr` on every row,
//! so that a CSV alone names its curve; for the iterative rules (MAC, predictive coding, LPOM)
//! `sweeps` (the budget), `mean_sweeps` (per batch) and `unconverged` (batches whose inference
//! did not reach its tolerance) and `surrogate` (the mean surrogate value `L^β` per sample over
//! the epoch's batches, comparable to `train_loss`), empty otherwise.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::{EpochRecord, Init, Rule, TrainConfig};
use crate::error::{Error, Result};
use crate::nested::method::Method;

/// The header line.
pub const HEADER: &str = "epoch,train_loss,train_error_pct,test_error_pct,seconds,\
                          exact_train_error_pct,method,beta,init,seed,batch,lr,sweeps,mean_sweeps,unconverged,surrogate";

/// One CSV row (no newline).
pub fn row(r: &EpochRecord, c: &TrainConfig) -> String {
    let beta = match c.rule.method() {
        Method::Bp => String::new(),
        _ => c.rule.beta().to_string(),
    };
    let budget = c.rule.sweeps().map_or(String::new(), |s| s.to_string());
    let (mean, unconverged, surrogate) = r.inference.map_or_else(Default::default, |i| {
        (
            format!("{:.2}", i.mean_sweeps),
            i.unconverged.to_string(),
            i.mean_surrogate
                .map_or(String::new(), |v| format!("{v:.6}")),
        )
    });
    format!(
        "{},{:.6},{:.4},{:.4},{:.4},{},{},{},{},{},{},{},{},{},{},{}",
        r.epoch,
        r.train_loss,
        r.train_error_pct,
        r.test_error_pct,
        r.seconds,
        r.exact_train_error_pct
            .map_or(String::new(), |v| format!("{v:.4}")),
        c.rule.name(),
        beta,
        c.init,
        c.seed,
        c.batch,
        c.adam.lr,
        budget,
        mean,
        unconverged,
        surrogate
    )
}

/// Writes the header and `history` to `path` (replacing it): the start of a run, or of a
/// resumed run (its earlier epochs come from the checkpoint).
///
/// # Errors
/// [`Error::Io`].
pub fn create(path: &Path, history: &[EpochRecord], c: &TrainConfig) -> Result<()> {
    let mut text = format!("{HEADER}\n");
    for r in history {
        text.push_str(&row(r, c));
        text.push('\n');
    }
    fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Appends one row.
///
/// # Errors
/// [`Error::Io`].
pub fn append(path: &Path, r: &EpochRecord, c: &TrainConfig) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{}", row(r, c)).map_err(|e| Error::io(path, e))
}

/// A run read back from its CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Legend label from the settings columns ("BP", "FenBP β=1000 (negative init)").
    pub label: String,
    /// `(epoch, train_error_pct, test_error_pct)` per row.
    pub points: Vec<(usize, f64, f64)>,
    /// Mean of the `seconds` column.
    pub mean_seconds: f64,
}

impl Run {
    /// The run's curves for [`crate::app::plot`].
    pub fn series(&self) -> crate::app::plot::Series {
        crate::app::plot::Series {
            label: self.label.clone(),
            points: self.points.clone(),
        }
    }
}

/// Reads a CSV written by [`create`]/[`append`].
///
/// # Errors
/// [`Error::BadData`] for a missing file, a wrong header or a malformed row.
pub fn read(path: &Path) -> Result<Run> {
    let bad = |reason: String| Error::BadData {
        path: path.to_path_buf(),
        reason,
    };
    let text = fs::read_to_string(path).map_err(|e| {
        bad(format!(
            "cannot read it ({e}); pass a CSV log written by a training run"
        ))
    })?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let required = "epoch,train_loss,train_error_pct,test_error_pct,seconds";
    if !header.starts_with(required) {
        return Err(bad(format!("the header must start with `{required}`")));
    }
    let names: Vec<&str> = header.split(',').collect();
    let col = |name: &str| names.iter().position(|n| *n == name);
    let (mut points, mut seconds, mut label) = (Vec::new(), 0.0, None);
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        let num = |j: usize| -> Result<f64> {
            f.get(j)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .ok_or_else(|| {
                    bad(format!(
                        "row {}: column {} is not a number",
                        i + 2,
                        names[j]
                    ))
                })
        };
        points.push((num(0)? as usize, num(2)?, num(3)?));
        seconds += num(4)?;
        if label.is_none() {
            let get = |name: &str| col(name).and_then(|j| f.get(j)).map(|s| s.trim());
            label = Some(match (get("method"), get("beta"), get("init")) {
                (Some(m), beta, init) => {
                    let row = |e: Error| bad(format!("row {}: {e}", i + 2));
                    let beta = match beta.filter(|b| !b.is_empty()) {
                        Some(b) => b.parse::<f32>().map_err(|_| {
                            bad(format!("row {}: beta `{b}` is not a number", i + 2))
                        })?,
                        None => 1.0,
                    };
                    let sweeps = get("sweeps").and_then(|s| s.parse::<usize>().ok());
                    let rule = Rule::with_defaults(m, beta, sweeps).map_err(row)?;
                    let init = match init.filter(|s| !s.is_empty()) {
                        Some(s) => s.parse::<Init>().map_err(row)?,
                        None => Init::Glorot,
                    };
                    TrainConfig {
                        rule,
                        init,
                        ..TrainConfig::default()
                    }
                    .label()
                }
                _ => path
                    .file_stem()
                    .map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned()),
            });
        }
    }
    if points.is_empty() {
        return Err(bad("no epochs in the file".into()));
    }
    Ok(Run {
        label: label.unwrap_or_default(),
        mean_seconds: seconds / points.len() as f64,
        points,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_the_operating_system_error_as_its_source() {
        let path = Path::new("/nonexistent-bilevel-dir/run.csv");
        let e = create(path, &[], &TrainConfig::default()).unwrap_err();
        let source = std::error::Error::source(&e).expect("a source");
        let io = source
            .downcast_ref::<crate::error::IoSource>()
            .expect("an IoSource");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert!(
            e.to_string().contains("/nonexistent-bilevel-dir/run.csv"),
            "{e}"
        );
    }

    /// An unknown method or init in a log is an error naming the row, not another run's label
    /// (it used to become back-propagation); known ones read back into the rule's label.
    #[test]
    fn unknown_names_in_a_log_are_errors_naming_the_row() {
        let dir = std::env::temp_dir().join(format!("bilevel-log-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.csv");
        let head = format!("{HEADER}\n");
        let cases = [
            (
                "1,0.5,10,11,1.0,,sgd,,glorot,42,50,0.001,,,",
                Some("unknown method `sgd`"),
            ),
            (
                "1,0.5,10,11,1.0,,mac,0.5,zeros,42,50,0.001,7,,",
                Some("unknown init `zeros`"),
            ),
            (
                "1,0.5,10,11,1.0,,mac,x,glorot,42,50,0.001,7,,",
                Some("beta `x`"),
            ),
            (
                "1,0.5,10,11,1.0,,chl-centered,0.5,negative,42,50,0.001,7,,",
                None,
            ),
        ];
        for (row, error) in cases {
            std::fs::write(&path, format!("{head}{row}\n")).unwrap();
            match (read(&path), error) {
                (Err(e), Some(text)) => {
                    let e = e.to_string();
                    assert!(e.contains(text) && e.contains("row 2"), "{e}");
                }
                (Ok(run), None) => assert_eq!(run.label, "CHL± β=0.5 T=7 (negative init)"),
                (other, _) => panic!("{row}: {other:?}"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
