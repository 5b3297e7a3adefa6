//! `bilevel data fetch`: the four MNIST files from public mirrors, verified and written
//! atomically (feature `fetch`).
//!
//! Each file is tried at every mirror in order ([`MIRRORS`]: the ones torchvision uses),
//! `attempts` times each. A download goes to a temporary file next to the final one
//! (`.<name>.gz.partial`), is verified — the SHA-256 and length of its *decompressed* content
//! against [`EXPECTED`], so that a mirror's recompression does not matter — and only then renamed
//! to its final name: a file under the final name is always complete and verified, and a failed
//! or interrupted download leaves nothing behind. Files already present and verified are kept.
//! When every mirror fails, the error lists each URL with its reason and says where to put the
//! files by hand.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The mirrors, in the order they are tried (torchvision's list).
pub const MIRRORS: [&str; 2] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
];

/// A file and what its decompressed content must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// File name without `.gz`.
    pub name: &'static str,
    /// SHA-256 of the decompressed IDX content, lowercase hex.
    pub sha256: &'static str,
    /// Length of the decompressed content in bytes.
    pub len: u64,
}

/// The four MNIST files (the IDX content of the standard distribution).
pub const EXPECTED: [Expected; 4] = [
    Expected {
        name: "train-images-idx3-ubyte",
        sha256: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        len: 47_040_016,
    },
    Expected {
        name: "train-labels-idx1-ubyte",
        sha256: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        len: 60_008,
    },
    Expected {
        name: "t10k-images-idx3-ubyte",
        sha256: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        len: 7_840_016,
    },
    Expected {
        name: "t10k-labels-idx1-ubyte",
        sha256: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        len: 10_008,
    },
];

/// Mirrors, retries and limits of [`fetch`].
#[derive(Debug, Clone, PartialEq)]
pub struct FetchSettings {
    /// Base URLs, tried in order (each ends with `/`).
    pub mirrors: Vec<String>,
    /// Attempts per mirror and file (≥ 1).
    pub attempts: usize,
    /// Timeout for connecting and for each read.
    pub timeout: Duration,
    /// The largest download accepted, in bytes (a guard against a wrong URL).
    pub max_bytes: u64,
}

impl Default for FetchSettings {
    /// [`MIRRORS`], 2 attempts each, 30 s timeouts, 64 MB.
    fn default() -> Self {
        Self {
            mirrors: MIRRORS.iter().map(|m| (*m).to_string()).collect(),
            attempts: 2,
            timeout: Duration::from_secs(30),
            max_bytes: 64 << 20,
        }
    }
}

impl FetchSettings {
    /// Checks the fields.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.mirrors.is_empty() {
            return Err(Error::input("mirrors", "need at least one mirror"));
        }
        if self.attempts == 0 {
            return Err(Error::input("attempts", "must be at least 1"));
        }
        if self.timeout.is_zero() || self.max_bytes == 0 {
            return Err(Error::input(
                "timeout",
                "timeout and max_bytes must be positive",
            ));
        }
        Ok(())
    }
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// File name (`….gz`).
    pub name: String,
    /// The URL it came from; `None` if a verified copy was already there.
    pub url: Option<String>,
    /// The attempts that failed before, each `URL: reason`.
    pub failures: Vec<String>,
}

/// Progress of one download: file name, bytes so far, total if the server said.
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, Option<u64>);

/// Makes sure `dir` holds the four verified MNIST files (module docs).
///
/// # Errors
/// Invalid settings; a directory that cannot be created or written; [`Error::Download`] when
/// every mirror failed for a file (the files verified before it stay).
pub fn fetch(
    dir: &Path,
    settings: &FetchSettings,
    progress: Progress<'_>,
) -> Result<Vec<FileReport>> {
    settings.validate()?;
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(settings.timeout))
        .timeout_per_read(Some(settings.timeout))
        .build()
        .into();
    EXPECTED
        .iter()
        .map(|e| fetch_one(&agent, dir, e, settings, progress))
        .collect()
}

fn fetch_one(
    agent: &ureq::Agent,
    dir: &Path,
    e: &Expected,
    settings: &FetchSettings,
    progress: Progress<'_>,
) -> Result<FileReport> {
    let target = path_of(dir, e);
    let name = format!("{}.gz", e.name);
    let mut report = FileReport {
        name: name.clone(),
        url: None,
        failures: Vec::new(),
    };
    if verify(&target, e).is_ok() {
        return Ok(report);
    }
    let partial = dir.join(format!(".{name}.partial"));
    for mirror in &settings.mirrors {
        let url = format!("{mirror}{name}");
        let mut reasons: Vec<String> = Vec::new();
        for _ in 0..settings.attempts {
            let outcome = download(agent, &url, &partial, settings.max_bytes, &mut |n, t| {
                progress(&name, n, t)
            })
            .and_then(|()| verify(&partial, e));
            match outcome {
                Ok(()) => {
                    fs::rename(&partial, &target).map_err(|err| Error::io(&target, err))?;
                    report.url = Some(url);
                    return Ok(report);
                }
                Err(reason) => {
                    let _ = fs::remove_file(&partial);
                    reasons.push(reason);
                }
            }
        }
        report.failures.push(failure(&url, &reasons));
    }
    Err(Error::Download {
        file: name,
        dir: dir.to_path_buf(),
        attempts: report.failures,
    })
}

/// One line for a mirror's failed attempts: `URL: reason`, `URL: reason (k attempts)` when
/// every attempt failed the same way, else the reasons in order.
fn failure(url: &str, reasons: &[String]) -> String {
    match reasons {
        [one] => format!("{url}: {one}"),
        [first, rest @ ..] if rest.iter().all(|r| r == first) => {
            format!("{url}: {first} ({} attempts)", reasons.len())
        }
        _ => format!("{url}: {}", reasons.join(" / ")),
    }
}

/// Streams `url` into `path` (created or truncated), at most `max_bytes`, synced to disk.
fn download(
    agent: &ureq::Agent,
    url: &str,
    path: &Path,
    max_bytes: u64,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> std::result::Result<(), String> {
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    let total = response.body().content_length();
    if total.is_some_and(|t| t > max_bytes) {
        return Err(format!(
            "{} bytes announced, more than the {max_bytes} accepted",
            total.unwrap_or(0)
        ));
    }
    let mut reader = response.body_mut().with_config().limit(max_bytes).reader();
    let file = File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut out = BufWriter::new(file);
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("connection: {e}"))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        done += n as u64;
        progress(done, total);
    }
    if total.is_some_and(|t| t != done) {
        return Err(format!("{done} of {} bytes received", total.unwrap_or(0)));
    }
    let file = out.into_inner().map_err(|e| e.to_string())?;
    file.sync_all().map_err(|e| e.to_string())
}

/// Checks the decompressed content of the gzipped file at `path` against `e`.
fn verify(path: &Path, e: &Expected) -> std::result::Result<(), String> {
    let file = File::open(path).map_err(|err| err.to_string())?;
    let mut gz = MultiGzDecoder::new(std::io::BufReader::new(file));
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = gz
            .read(&mut buf)
            .map_err(|err| format!("not a valid gzip file ({err})"))?;
        if n == 0 {
            break;
        }
        len += n as u64;
        if len > e.len {
            return Err(format!("more than the {} bytes of {}", e.len, e.name));
        }
        hash.update(&buf[..n]);
    }
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if len != e.len || hex != e.sha256 {
        return Err(format!(
            "content does not match (SHA-256 {hex}, {len} bytes; expected {}, {} bytes)",
            e.sha256, e.len
        ));
    }
    Ok(())
}

/// The final path of file `e` in `dir`.
pub fn path_of(dir: &Path, e: &Expected) -> PathBuf {
    dir.join(format!("{}.gz", e.name))
}
