//! Replays what fuzzing found (`fuzz/`, see the README) and the reliability issue's reproducers
//! through the same checks the fuzz targets make, so that each stays fixed:
//! * `tests/regressions/derive/*.json`: problems for `bilevel derive`, checked by the oracle in
//!   `tests/support/derive_oracle.rs` (finite numbers, feasibility, KKT with the printed
//!   multipliers, Prop. 3's band; one-line errors);
//! * `tests/regressions/idx/*`, `tests/regressions/checkpoint/*`: files for the IDX reader and
//!   the checkpoint loader, which must give a result or a clean error.

#[path = "support/derive_oracle.rs"]
mod oracle;

use std::path::{Path, PathBuf};

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/regressions")
        .join(dir);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn derive_regressions_satisfy_the_oracle() {
    let cases = files("derive");
    assert!(cases.len() >= 10, "the corpus is missing");
    for path in cases {
        let input = std::fs::read_to_string(&path).unwrap();
        if let Err(violation) = oracle::check(&input) {
            panic!("{}: {violation}", path.display());
        }
    }
}

#[test]
fn idx_regressions_are_read_or_refused_cleanly() {
    for path in files("idx") {
        let bytes = std::fs::read(&path).unwrap();
        for dims in [1u8, 3] {
            match bilevel::app::data::read_idx_from(bytes.as_slice(), &path, dims) {
                Ok(idx) => assert_eq!(idx.data.len(), idx.dims.iter().product::<usize>()),
                Err(bilevel::Error::BadData { .. }) => {}
                Err(e) => panic!("{}: {e}", path.display()),
            }
        }
    }
}

#[test]
fn checkpoint_regressions_are_loaded_or_refused_cleanly() {
    let config = bilevel::app::nn::TrainConfig {
        widths: vec![16, 8, 10],
        train_size: 60,
        batch: 20,
        epochs: 2,
        ..bilevel::app::nn::TrainConfig::default()
    };
    for path in files("checkpoint") {
        let bytes = std::fs::read(&path).unwrap();
        if let Ok(t) = bilevel::app::nn::checkpoint::decode(&bytes, &path, config.clone()) {
            assert_eq!(t.epoch(), t.history.len());
        }
    }
}
