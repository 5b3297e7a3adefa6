//! The checkpoint loader: raw bytes, bytes resealed with a valid checksum (so the header and
//! tensor parsing behind the CRC are reached), and byte edits of a real checkpoint, resealed.
//! A clean result or a clean error, never a panic.
#![no_main]

use std::sync::OnceLock;

use bilevel::app::nn::{checkpoint, TrainConfig, Trainer};
use libfuzzer_sys::fuzz_target;

fn config() -> TrainConfig {
    TrainConfig {
        widths: vec![16, 8, 10],
        train_size: 60,
        batch: 20,
        epochs: 2,
        ..TrainConfig::default()
    }
}

/// A real checkpoint of a fresh 16-8-10 network, without its 4 checksum bytes.
fn valid_body() -> &'static [u8] {
    static BODY: OnceLock<Vec<u8>> = OnceLock::new();
    BODY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bilevel-fuzz-ck-{}", std::process::id()));
        let trainer = Trainer::new(config()).unwrap();
        checkpoint::save(&dir, &trainer).unwrap();
        let mut bytes = std::fs::read(checkpoint::path(&dir)).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        bytes.truncate(bytes.len() - 4);
        bytes
    })
}

fn reseal(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = match mode % 3 {
        0 => rest.to_vec(),
        1 => reseal(rest.to_vec()),
        _ => {
            let mut body = valid_body().to_vec();
            for edit in rest.chunks(3) {
                if let [hi, lo, value] = *edit {
                    let at = usize::from(u16::from_be_bytes([hi, lo])) % body.len();
                    body[at] = value;
                }
            }
            reseal(body)
        }
    };
    let path = std::path::Path::new("fuzz-checkpoint.bin");
    if let Ok(t) = checkpoint::decode(&bytes, path, config()) {
        assert_eq!(t.epoch(), t.history.len());
    }
});
