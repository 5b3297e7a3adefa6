//! The command line's grammar (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bilevel",
    version,
    about = "Bilevel programs meet deep learning: contrastive surrogates and exact limit derivatives"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Check the paper's claims (Sections 2-4, Appendix C) numerically on seeded random instances.
    Verify {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Seed of the random instances.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Run only these rows (comma-separated ids, e.g. `prop4-composed,cor2-mac`; a group
        /// of rows that share their instances runs whole).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Print Table 1 as built from the method definitions, with each method's gradient error
    /// against back-propagation and its time on a fixed small network.
    Taxonomy {
        /// The common spacing parameter β.
        #[arg(long, default_value_t = 1e-3)]
        beta: f64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Derivatives of E(z; θ) = ½zᵀQz − zᵀ(Bθ + c) s.t. Az ≥ b, A_eq z = b_eq, as JSON on stdout.
    Derive {
        /// Problem file (JSON; `-` reads stdin). See `bilevel::derive` for the format.
        problem: String,
    },
    /// Train the paper's MNIST MLP (784-256-128-64-10) with a method of Table 1 (BP by default).
    Train(TrainArgs),
    /// Plot training (solid) and test (dashed) error curves of CSV logs, like Fig. 1; with
    /// `--growth`, log–log cost-growth curves of QP layers with their fitted exponents.
    Plot {
        /// CSV logs written by `bilevel train --log`; with `--growth`, growth tables
        /// (`cargo bench --bench sparse_growth` and `benches/peers/sparse_layers.py` write them).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Output file, `.svg` or `.png` (`--out` is the same flag, as in `reproduce`).
        #[arg(short, long, visible_alias = "out")]
        output: PathBuf,
        /// Title (default: "MNIST, 784-256-128-64-10", or "QP layers: cost growth").
        #[arg(long)]
        title: Option<String>,
        /// The files are growth tables (`family,backend,n,ms,peak_mb`): time and peak memory
        /// against n, log–log, one panel per family; prints each curve's fitted exponent.
        #[arg(long)]
        growth: bool,
    },
    /// Reproduce a figure of the paper.
    Reproduce {
        #[command(subcommand)]
        what: Reproduce,
    },
    /// Speed measurements.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
    /// The MNIST data.
    Data {
        #[command(subcommand)]
        what: Data,
    },
}

#[derive(Subcommand)]
pub(crate) enum Data {
    /// Download the four MNIST files from public mirrors (torchvision's), verify each file's
    /// SHA-256, and write it atomically; files already present and verified are kept.
    Fetch {
        /// Target directory (default: $BILEVEL_DATA, then ./data/mnist: where `train` looks).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Mirror base URLs tried in order, comma-separated (default: torchvision's).
        #[arg(long, value_delimiter = ',')]
        mirrors: Vec<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum Reproduce {
    /// Fig. 1: the seven configurations (Glorot: BP, FenBP β = 0.01, 1, 1000; negative init:
    /// BP, FenBP β = 1, 1000), their CSVs, both panels and a table next to the paper's numbers.
    Fig1(Fig1Args),
    /// Table 1: every row (CHL, convex CHL, LPOM, MAC, BP, Fenchel BP), predictive coding and
    /// the centered CHL variants trained on the Fig. 1 MLP under one protocol, over several
    /// seeds; writes table1.md, the CSVs and table1.svg/png (about 4 minutes on two cores with
    /// the defaults).
    Table1(Table1Args),
}

#[derive(Subcommand)]
pub(crate) enum Bench {
    /// Time training epochs of each method (f32, batch 50) against BP's and the matrix products
    /// alone, in one process, with each method's gradient compared with BP's at the start.
    Train(BenchTrainArgs),
}

#[derive(clap::Args)]
pub(crate) struct TrainArgs {
    /// `bp` (back-propagation), `fenbp` (Fenchel back-propagation), or by inference sweeps
    /// `mac` (method of auxiliary coordinates), `pc` (predictive coding), `lpom`, `chl`,
    /// `convex-chl`, and the centered (±β, symmetric nudging) `chl-centered`,
    /// `convex-chl-centered`.
    #[arg(long, default_value = "bp")]
    pub(crate) method: String,
    /// β of every layer on the batch-mean loss (all methods but bp; default 1).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) beta: Option<f32>,
    /// Most inference sweeps per batch (per phase for chl and convex-chl; default 20).
    #[arg(long)]
    pub(crate) sweeps: Option<usize>,
    /// `glorot` or `negative` (first layer −|Glorot|).
    #[arg(long, default_value = "glorot")]
    pub(crate) init: String,
    /// Epochs.
    #[arg(long, default_value_t = 50)]
    pub(crate) epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 50)]
    pub(crate) batch: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub(crate) lr: f32,
    /// Seed of the initialization (and of --shuffle).
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// MNIST directory (default: $BILEVEL_DATA, then ./data/mnist).
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
    /// CSV log, one row per epoch.
    #[arg(long)]
    pub(crate) log: Option<PathBuf>,
    /// Directory for a checkpoint after every epoch.
    #[arg(long)]
    pub(crate) checkpoint: Option<PathBuf>,
    /// Continue from the checkpoint in --checkpoint DIR.
    #[arg(long)]
    pub(crate) resume: bool,
    /// Start afresh over an existing checkpoint in --checkpoint DIR (refused otherwise).
    #[arg(long)]
    pub(crate) overwrite: bool,
    /// Shuffle the training images every epoch (the paper uses file order).
    #[arg(long)]
    pub(crate) shuffle: bool,
    /// Also report the exact training error over all training images after each epoch.
    #[arg(long)]
    pub(crate) exact_train_error: bool,
    /// Train on the first N training images.
    #[arg(long, default_value_t = 50_000)]
    pub(crate) train_size: usize,
    /// Threads for the matrix products (default: the CPUs available, at most 2). Results are
    /// bit-identical for every count.
    #[arg(long)]
    pub(crate) threads: Option<usize>,
}

#[derive(clap::Args)]
pub(crate) struct Fig1Args {
    /// MNIST directory (default: $BILEVEL_DATA, then ./data/mnist).
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
    /// Output directory (`--output` is the same flag, as in `plot`).
    #[arg(long, visible_alias = "output")]
    pub(crate) out: PathBuf,
    /// Epochs per configuration.
    #[arg(long, default_value_t = 50)]
    pub(crate) epochs: usize,
    /// Threads for the matrix products (default: the CPUs available, at most 2). Results
    /// are bit-identical for every count.
    #[arg(long)]
    pub(crate) threads: Option<usize>,
}

#[derive(clap::Args)]
pub(crate) struct Table1Args {
    /// MNIST directory (default: $BILEVEL_DATA, then ./data/mnist).
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
    /// Output directory (`--output` is the same flag).
    #[arg(long, visible_alias = "output")]
    pub(crate) out: PathBuf,
    /// Epochs per run.
    #[arg(long, default_value_t = 10)]
    pub(crate) epochs: usize,
    /// Seeds per method (42, 43, ...).
    #[arg(long, default_value_t = 3)]
    pub(crate) seeds: usize,
    /// β of every method but BP, on the batch-mean loss.
    #[arg(long, default_value_t = 0.1)]
    pub(crate) beta: f32,
    /// Most inference sweeps per batch (per phase for CHL and convex CHL).
    #[arg(long, default_value_t = 20)]
    pub(crate) sweeps: usize,
    /// Runs trained at the same time (default: the available cores).
    #[arg(long)]
    pub(crate) jobs: Option<usize>,
    /// Train on the first N training images (the protocol: 50,000).
    #[arg(long, default_value_t = 50_000)]
    pub(crate) train_size: usize,
}

#[derive(clap::Args)]
pub(crate) struct BenchTrainArgs {
    /// MNIST directory (default: $BILEVEL_DATA, then ./data/mnist; synthetic images if
    /// absent).
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
    /// Epochs timed per rule (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) repeats: usize,
    /// Methods timed besides bp (comma-separated: fenbp, mac, pc, lpom, chl, convex-chl,
    /// chl-centered, convex-chl-centered).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fenbp,mac,pc,lpom,chl,convex-chl"
    )]
    pub(crate) methods: Vec<String>,
    /// β of every method but bp, on the batch-mean loss.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) beta: f32,
    /// Most inference sweeps per batch (per phase for chl, convex-chl; default 20).
    #[arg(long)]
    pub(crate) sweeps: Option<usize>,
    /// Also time the same step in JAX (jit, CPU) with this Python interpreter, which must
    /// have `jax` installed (and `optax`, for the fastest formulations): runs
    /// `benches/jax_train_step.py` and compares with the fastest formulation it timed.
    #[arg(long)]
    pub(crate) jax: Option<PathBuf>,
    /// Thread counts to time every method at, comma-separated, the first the baseline
    /// (default: 1 and the training default, the CPUs available at most 2).
    #[arg(long, value_delimiter = ',')]
    pub(crate) threads: Vec<usize>,
}
