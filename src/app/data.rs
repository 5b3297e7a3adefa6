//! MNIST in the IDX format: the four standard files, gzipped or not.
//!
//! An IDX file is a big-endian header — two zero bytes, a type byte (`0x08` = unsigned byte),
//! the number of dimensions `d`, then `d` sizes as `u32` — followed by the data in row-major
//! order. MNIST images are `0x00000803` (count × 28 × 28), labels `0x00000801` (count).
//!
//! Pixels stay `u8` in memory (47 MB for the 60,000 training images instead of 188 MB as
//! `f32`) and are scaled to `[0, 1]` (`p / 255`) only when a batch is copied out
//! ([`Split::batch_into`]). The flattening is the file's row-major order; the paper's Julia code
//! sees each image transposed, a fixed permutation of the inputs that an MLP with i.i.d.
//! initialization cannot tell apart.
//!
//! Directory resolution ([`resolve_dir`]): `--data DIR`, else `$BILEVEL_DATA`, else
//! `./data/mnist`. Every problem with the files (missing, wrong magic number, truncated,
//! image and label counts that disagree, labels outside 0-9) is an [`Error::BadData`] naming the
//! file and saying what to do.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use nalgebra::DMatrix;

use crate::error::{Error, Result};

/// Where to get the files, for error messages.
pub const MNIST_HINT: &str = "run `bilevel data fetch --dir DIR` to download and verify the \
     four MNIST files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, \
     t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz), put them into this directory by \
     hand, or name another one (--data DIR or BILEVEL_DATA)";

/// The environment variable naming the default data directory.
pub const DATA_ENV: &str = "BILEVEL_DATA";

/// Magic number of an IDX file of unsigned bytes with `dims` dimensions.
fn magic(dims: u8) -> u32 {
    0x0800 | u32::from(dims)
}

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    /// Sizes, outermost first (`[count, 28, 28]` for images).
    pub dims: Vec<usize>,
    /// The data, row-major.
    pub data: Vec<u8>,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadData {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads an IDX file of unsigned bytes (gzipped if it starts with the gzip magic `1f 8b`),
/// checking the magic number against `expected_dims` and the length against the header.
///
/// # Errors
/// [`Error::BadData`] for a missing or unreadable file, a wrong magic number, a corrupt gzip
/// stream, or a file shorter or longer than its header says.
pub fn read_idx(path: &Path, expected_dims: u8) -> Result<Idx> {
    let file =
        File::open(path).map_err(|e| bad(path, format!("cannot read it ({e}); {MNIST_HINT}")))?;
    read_idx_from(std::io::BufReader::new(file), path, expected_dims)
}

/// The dimensions in the IDX header of `src` (after checking its magic number).
///
/// # Errors
/// As [`read_idx`]; `read_err` maps a read failure.
fn read_header(
    src: &mut dyn Read,
    path: &Path,
    expected_dims: u8,
    read_err: &dyn Fn(std::io::Error) -> Error,
) -> Result<Vec<usize>> {
    let d = usize::from(expected_dims);
    let mut header = Vec::with_capacity(4 * (d + 1));
    src.take(4 * (d as u64 + 1))
        .read_to_end(&mut header)
        .map_err(read_err)?;
    let word = |i: usize| -> Option<u32> {
        header
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let found = word(0).ok_or_else(|| {
        bad(
            path,
            format!(
                "truncated: {} bytes, shorter than an IDX header; download the file again",
                header.len()
            ),
        )
    })?;
    if found != magic(expected_dims) {
        return Err(bad(
            path,
            format!(
                "wrong magic number 0x{found:08x} (expected 0x{:08x}: unsigned bytes, {expected_dims} \
                 dimensions); is this the right file? {MNIST_HINT}",
                magic(expected_dims)
            ),
        ));
    }
    let mut dims = Vec::with_capacity(d);
    for i in 1..=d {
        let n = word(i)
            .ok_or_else(|| bad(path, "truncated inside the header; download the file again"))?;
        dims.push(n as usize);
    }
    Ok(dims)
}

/// [`read_idx`] on any buffered reader; `path` only names the source in errors.
///
/// # Errors
/// As [`read_idx`].
pub fn read_idx_from(
    mut file: impl std::io::BufRead,
    path: &Path,
    expected_dims: u8,
) -> Result<Idx> {
    let unreadable = |e: std::io::Error| bad(path, format!("cannot read it ({e}); {MNIST_HINT}"));
    let gzipped = std::io::BufRead::fill_buf(&mut file)
        .map_err(unreadable)?
        .starts_with(&[0x1f, 0x8b]);
    // Streamed: the header fixes how many bytes to read, so neither a gzip stream that inflates
    // to gigabytes nor a padded file is ever held in memory beyond the promised size + 1.
    let mut src: Box<dyn Read + '_> = if gzipped {
        Box::new(MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let read_err = |e: std::io::Error| {
        if gzipped {
            bad(
                path,
                format!("corrupt or truncated gzip stream ({e}); download the file again"),
            )
        } else {
            unreadable(e)
        }
    };
    let dims = read_header(&mut src, path, expected_dims, &read_err)?;
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .ok_or_else(|| bad(path, "header sizes overflow"))?;
    let mut data = Vec::new();
    src.take(expected as u64 + 1)
        .read_to_end(&mut data)
        .map_err(read_err)?;
    if data.len() != expected {
        let has = if data.len() < expected {
            format!("truncated: the file has {}", data.len())
        } else {
            "too long: the file has more".to_string()
        };
        return Err(bad(
            path,
            format!(
                "{has}, but the header {dims:?} promises {expected} data bytes; download the \
                 file again"
            ),
        ));
    }
    Ok(Idx { dims, data })
}

/// Writes an IDX file of unsigned bytes (gzipped if `gzip`); the inverse of [`read_idx`], used
/// for tests and for writing subsets.
///
/// # Errors
/// [`Error::InvalidInput`] if `data.len()` is not the product of `dims`; [`Error::BadData`] if
/// the file cannot be written.
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8], gzip: bool) -> Result<()> {
    if dims.iter().product::<usize>() != data.len() || dims.len() > 255 {
        return Err(Error::input(
            "data",
            format!("{} bytes do not fill dimensions {dims:?}", data.len()),
        ));
    }
    let io = |e: std::io::Error| bad(path, format!("cannot write it ({e})"));
    let file = BufWriter::new(File::create(path).map_err(io)?);
    let mut out: Box<dyn Write> = if gzip {
        Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::default(),
        ))
    } else {
        Box::new(file)
    };
    out.write_all(&magic(dims.len() as u8).to_be_bytes())
        .map_err(io)?;
    for &n in dims {
        let n = u32::try_from(n).map_err(|_| Error::input("dims", "size exceeds u32"))?;
        out.write_all(&n.to_be_bytes()).map_err(io)?;
    }
    out.write_all(data).map_err(io)?;
    out.flush().map_err(io)
}

/// One split (training or test): images as rows of `dim` bytes and their labels `0..=9`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Pixels, image after image, `dim` bytes each.
    pub pixels: Vec<u8>,
    /// Labels `0..=9`.
    pub labels: Vec<u8>,
    /// Pixels per image (784 for MNIST).
    pub dim: usize,
}

impl Split {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split has no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * self.dim..(i + 1) * self.dim]
    }

    /// Copies images `indices` into the columns of `x` (scaled to `[0, 1]`) and their one-hot
    /// labels into `y` (`10 × B`), without allocating.
    ///
    /// # Errors
    /// Shapes of `x`/`y` that do not fit `indices`, an index out of range.
    pub fn batch_into(
        &self,
        indices: &[usize],
        x: &mut DMatrix<f32>,
        y: &mut DMatrix<f32>,
    ) -> Result<()> {
        if x.shape() != (self.dim, indices.len()) {
            return Err(Error::dim(
                "x",
                format!("{} x {}", self.dim, indices.len()),
                format!("{} x {}", x.nrows(), x.ncols()),
            ));
        }
        if y.shape() != (10, indices.len()) {
            return Err(Error::dim(
                "y",
                format!("10 x {}", indices.len()),
                format!("{} x {}", y.nrows(), y.ncols()),
            ));
        }
        if let Some(&i) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::input(
                "indices",
                format!("{i} ≥ {} images", self.len()),
            ));
        }
        y.fill(0.0);
        let dim = self.dim;
        for (j, &i) in indices.iter().enumerate() {
            // Plain slices, so that the conversion vectorizes.
            let dst = &mut x.as_mut_slice()[j * dim..(j + 1) * dim];
            for (d, &p) in dst.iter_mut().zip(self.image(i)) {
                *d = f32::from(p) / 255.0;
            }
            y[(usize::from(self.labels[i]), j)] = 1.0;
        }
        Ok(())
    }

    /// The first `n` images (or all, if fewer).
    pub fn truncate(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.labels.truncate(n);
        self.pixels.truncate(n * self.dim);
        self
    }
}

/// The four standard MNIST files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mnist {
    /// 60,000 training images.
    pub train: Split,
    /// 10,000 test images.
    pub test: Split,
}

/// The standard file names (without `.gz`): training images, training labels, test images,
/// test labels.
pub const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// `--data DIR` if given, else `$BILEVEL_DATA`, else `./data/mnist`.
pub fn resolve_dir(cli: Option<&Path>) -> PathBuf {
    cli.map(Path::to_path_buf)
        .or_else(|| std::env::var_os(DATA_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("data/mnist"))
}

fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    for candidate in [dir.join(format!("{name}.gz")), dir.join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(bad(
        &dir.join(format!("{name}.gz")),
        format!(
            "missing (neither {name}.gz nor {name} is in {}); {MNIST_HINT}",
            dir.display()
        ),
    ))
}

fn load_split(dir: &Path, images: &str, labels: &str) -> Result<Split> {
    let (ipath, lpath) = (find(dir, images)?, find(dir, labels)?);
    let img = read_idx(&ipath, 3)?;
    let lab = read_idx(&lpath, 1)?;
    if img.dims[0] != lab.dims[0] {
        return Err(bad(
            &lpath,
            format!(
                "{} labels but {} has {} images; the files are from different sets or \
                 truncated, download both again",
                lab.dims[0],
                ipath.display(),
                img.dims[0]
            ),
        ));
    }
    if let Some(pos) = lab.data.iter().position(|&l| l > 9) {
        return Err(bad(
            &lpath,
            format!(
                "label {} at index {pos} is not a digit 0-9; is this an MNIST label file?",
                lab.data[pos]
            ),
        ));
    }
    Ok(Split {
        dim: img.dims[1] * img.dims[2],
        pixels: img.data,
        labels: lab.data,
    })
}

impl Mnist {
    /// Loads the four files from `dir` (each gzipped or not).
    ///
    /// # Errors
    /// [`Error::BadData`] naming the file: missing directory or file, wrong magic number,
    /// truncated file, image/label count mismatch, labels outside 0-9, training and test
    /// images of different sizes.
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(bad(dir, format!("no such directory; {MNIST_HINT}")));
        }
        let train = load_split(dir, FILES[0], FILES[1])?;
        let test = load_split(dir, FILES[2], FILES[3])?;
        if train.dim != test.dim {
            return Err(bad(
                &dir.join(FILES[2]),
                format!(
                    "test images have {} pixels, training images {}; mixed data sets",
                    test.dim, train.dim
                ),
            ));
        }
        Ok(Self { train, test })
    }
}
