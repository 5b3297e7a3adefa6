//! The `bilevel` command line: `verify` (checks of the paper's claims), `taxonomy` (Table 1),
//! `derive` (derivatives of a constrained quadratic layer, JSON in and out), and the MNIST
//! client: `train`, `plot`, `reproduce fig1`, `bench train`.
//!
//! Exit codes: 0 success; 1 a check failed or the input was rejected (one-line message on
//! stderr); 2 usage errors (from clap).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bilevel",
    version,
    about = "Bilevel programs meet deep learning: contrastive surrogates and exact limit derivatives"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// Train the paper's MNIST MLP (784-256-128-64-10) with back-propagation or Fenchel BP.
    Train(TrainArgs),
    /// Plot training (solid) and test (dashed) error curves of CSV logs, like Fig. 1.
    Plot {
        /// CSV logs written by `bilevel train --log`.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Output file, `.svg` or `.png` (`--out` is the same flag, as in `reproduce`).
        #[arg(short, long, visible_alias = "out")]
        output: PathBuf,
        /// Panel title.
        #[arg(long, default_value = "MNIST, 784-256-128-64-10")]
        title: String,
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
enum Data {
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
enum Reproduce {
    /// Fig. 1: the seven configurations (Glorot: BP, FenBP β = 0.01, 1, 1000; negative init:
    /// BP, FenBP β = 1, 1000), their CSVs, both panels and a table next to the paper's numbers.
    Fig1 {
        /// MNIST directory (default: $BILEVEL_DATA, then ./data/mnist).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Output directory (`--output` is the same flag, as in `plot`).
        #[arg(long, visible_alias = "output")]
        out: PathBuf,
        /// Epochs per configuration.
        #[arg(long, default_value_t = 50)]
        epochs: usize,
        /// Threads for the matrix products (default: the CPUs available, at most 2). Results
        /// are bit-identical for every count.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Table 1: every row (CHL, convex CHL, LPOM, MAC, BP, Fenchel BP), predictive coding and
    /// the centered CHL variants trained on the Fig. 1 MLP under one protocol, over several
    /// seeds; writes table1.md, the CSVs and table1.svg/png (about 4 minutes on two cores with
    /// the defaults).
    Table1 {
        /// MNIST directory (default: $BILEVEL_DATA, then ./data/mnist).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Output directory (`--output` is the same flag).
        #[arg(long, visible_alias = "output")]
        out: PathBuf,
        /// Epochs per run.
        #[arg(long, default_value_t = 10)]
        epochs: usize,
        /// Seeds per method (42, 43, ...).
        #[arg(long, default_value_t = 3)]
        seeds: usize,
        /// β of every method but BP, on the batch-mean loss.
        #[arg(long, default_value_t = 0.1)]
        beta: f32,
        /// Most inference sweeps per batch (per phase for CHL and convex CHL).
        #[arg(long, default_value_t = 20)]
        sweeps: usize,
        /// Runs trained at the same time (default: the available cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Train on the first N training images (the protocol: 50,000).
        #[arg(long, default_value_t = 50_000)]
        train_size: usize,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Time training epochs of each method (f32, batch 50) against BP's and the matrix products
    /// alone, in one process, with each method's gradient compared with BP's at the start.
    Train {
        /// MNIST directory (default: $BILEVEL_DATA, then ./data/mnist; synthetic images if
        /// absent).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Epochs timed per rule (the best is reported).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Methods timed besides bp (comma-separated: fenbp, mac, pc, lpom, chl, convex-chl,
        /// chl-centered, convex-chl-centered).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "fenbp,mac,pc,lpom,chl,convex-chl"
        )]
        methods: Vec<String>,
        /// β of every method but bp, on the batch-mean loss.
        #[arg(long, default_value_t = 1.0)]
        beta: f32,
        /// Most inference sweeps per batch (per phase for chl, convex-chl; default 20).
        #[arg(long)]
        sweeps: Option<usize>,
        /// Also time the same step in JAX (jit, CPU) with this Python interpreter, which must
        /// have `jax` installed (runs `benches/jax_train_step.py`).
        #[arg(long)]
        jax: Option<PathBuf>,
        /// Thread counts to time every method at, comma-separated, the first the baseline
        /// (default: 1 and the training default, the CPUs available at most 2).
        #[arg(long, value_delimiter = ',')]
        threads: Vec<usize>,
    },
}

#[derive(clap::Args)]
struct TrainArgs {
    /// `bp` (back-propagation), `fenbp` (Fenchel back-propagation), or by inference sweeps
    /// `mac` (method of auxiliary coordinates), `pc` (predictive coding), `lpom`, `chl`,
    /// `convex-chl`, and the centered (±β, symmetric nudging) `chl-centered`,
    /// `convex-chl-centered`.
    #[arg(long, default_value = "bp")]
    method: String,
    /// β of every layer on the batch-mean loss (all methods but bp; default 1).
    #[arg(long, allow_hyphen_values = true)]
    beta: Option<f32>,
    /// Most inference sweeps per batch (per phase for chl and convex-chl; default 20).
    #[arg(long)]
    sweeps: Option<usize>,
    /// `glorot` or `negative` (first layer −|Glorot|).
    #[arg(long, default_value = "glorot")]
    init: String,
    /// Epochs.
    #[arg(long, default_value_t = 50)]
    epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Seed of the initialization (and of --shuffle).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// MNIST directory (default: $BILEVEL_DATA, then ./data/mnist).
    #[arg(long)]
    data: Option<PathBuf>,
    /// CSV log, one row per epoch.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Directory for a checkpoint after every epoch.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Continue from the checkpoint in --checkpoint DIR.
    #[arg(long)]
    resume: bool,
    /// Start afresh over an existing checkpoint in --checkpoint DIR (refused otherwise).
    #[arg(long)]
    overwrite: bool,
    /// Shuffle the training images every epoch (the paper uses file order).
    #[arg(long)]
    shuffle: bool,
    /// Also report the exact training error over all training images after each epoch.
    #[arg(long)]
    exact_train_error: bool,
    /// Train on the first N training images.
    #[arg(long, default_value_t = 50_000)]
    train_size: usize,
    /// Threads for the matrix products (default: the CPUs available, at most 2). Results are
    /// bit-identical for every count.
    #[arg(long)]
    threads: Option<usize>,
}

/// `println!` for the program's output: a closed pipe (`| head`) ends the program quietly with
/// exit 0, as Unix filters do; any other write failure (a full disk, `> /dev/full`) is a
/// one-line error and exit 1. Never a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            stdout_failed(e)
        }
    }};
}

/// `print!` with the same handling as [`out!`].
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            stdout_failed(e)
        }
    }};
}

/// Ends the program after standard output failed (see [`out!`]).
fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to standard output: {e}");
    std::process::exit(1);
}

fn main() -> ExitCode {
    let code = run(Cli::parse());
    // Buffered output that has not reached the pipe or file yet fails here, if at all.
    if let Err(e) = std::io::Write::flush(&mut std::io::stdout()) {
        stdout_failed(e);
    }
    code
}

fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Verify { json, seed, only } => verify(json, seed, &only),
        Command::Taxonomy { beta, json } => match taxonomy(beta, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                eprintln!("error: {msg}");
                ExitCode::FAILURE
            }
        },
        Command::Derive { problem } => match derive(&problem) {
            Ok(out) => {
                out!("{out}");
                ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("error: {msg}");
                ExitCode::FAILURE
            }
        },
        Command::Train(args) => report(train(args)),
        Command::Data {
            what: Data::Fetch { dir, mirrors },
        } => report(data_fetch(dir, mirrors)),
        Command::Plot {
            runs,
            output,
            title,
        } => report(plot(&runs, &output, title)),
        Command::Reproduce {
            what:
                Reproduce::Fig1 {
                    data,
                    out,
                    epochs,
                    threads,
                },
        } => report(reproduce_fig1(
            data,
            &out,
            epochs,
            threads.unwrap_or_else(bilevel::linalg::Threads::default_count),
        )),
        Command::Reproduce {
            what:
                Reproduce::Table1 {
                    data,
                    out,
                    epochs,
                    seeds,
                    beta,
                    sweeps,
                    jobs,
                    train_size,
                },
        } => {
            let jobs = jobs.unwrap_or_else(bilevel::linalg::Threads::available);
            let settings = bilevel::nn::table1::Table1Settings {
                epochs,
                seeds,
                beta,
                sweeps,
                jobs,
                train_size,
            };
            report(reproduce_table1(data, &out, &settings))
        }
        Command::Bench {
            what:
                Bench::Train {
                    data,
                    repeats,
                    methods,
                    beta,
                    sweeps,
                    jax,
                    threads,
                },
        } => report(bench_train(
            data,
            repeats,
            (&methods, beta, sweeps),
            &threads,
            jax,
        )),
    }
}

/// Prints a library error as one line and maps it to exit code 1.
fn report(r: bilevel::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", for_cli(e));
            ExitCode::FAILURE
        }
    }
}

/// The library names the fields of its settings (`batch`, `adam.lr`, `resume`, …); the
/// command line names its flags. Other errors pass through; a missing data directory gets the
/// flag that chooses another one.
fn for_cli(e: bilevel::Error) -> String {
    const FLAGS: [(&str, &str); 14] = [
        ("seeds", "--seeds"),
        ("jobs", "--jobs"),
        ("sweeps", "--sweeps"),
        ("output", "--output"),
        ("batch", "--batch"),
        ("adam.lr", "--lr"),
        ("init", "--init"),
        ("method", "--method"),
        ("beta", "--beta"),
        ("epochs", "--epochs"),
        ("resume", "--resume"),
        ("overwrite", "--overwrite"),
        ("checkpoint", "--checkpoint"),
        ("train_size", "--train-size"),
    ];
    match e {
        bilevel::Error::InvalidInput { field, reason } => {
            let flag = FLAGS
                .iter()
                .find(|(f, _)| *f == field)
                .map_or(field.as_str(), |(_, flag)| flag);
            format!("invalid {flag}: {reason}")
        }
        bilevel::Error::BadData { path, reason } if reason.starts_with("no such directory") => {
            format!(
                "bad data file {}: {reason} (choose the directory with --data DIR)",
                path.display()
            )
        }
        other => other.to_string(),
    }
}

/// Progress: an indicatif bar on a terminal, one line per epoch always.
struct Progress {
    bar: indicatif::ProgressBar,
    epochs: usize,
}

impl Progress {
    /// A line above the bar (or plainly, when there is no bar).
    fn line(&self, text: String) {
        if self.bar.is_hidden() {
            out!("{text}");
        } else {
            self.bar.println(text);
        }
    }

    fn new() -> Self {
        let bar = if std::io::stdout().is_terminal() {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} loss {msg} ETA {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Self { bar, epochs: 0 }
    }
}

impl bilevel::nn::Observer for Progress {
    fn begin(&mut self, label: &str, epochs: usize) {
        self.epochs = epochs;
        self.line(format!("== {label}"));
    }

    fn step(&mut self, epoch: usize, step: usize, steps: usize, loss: f64) {
        if step == 1 {
            self.bar.reset();
            self.bar.set_length(steps as u64);
            self.bar
                .set_prefix(format!("epoch {epoch}/{}", self.epochs));
        }
        // The message allocates: refresh it every 50 steps only.
        if step.is_multiple_of(50) || step == steps {
            self.bar.set_message(format!("{loss:.4}"));
        }
        self.bar.set_position(step as u64);
    }

    fn epoch(&mut self, r: &bilevel::nn::EpochRecord, resumed: bool) {
        let exact = r
            .exact_train_error_pct
            .map_or(String::new(), |v| format!(", exact train error {v:.2} %"));
        self.line(format!(
            "epoch {:>3}{}: loss {:.4}, train error {:.2} % (running{exact}), test error {:.2} %, {:.2} s",
            r.epoch,
            if resumed { " (from checkpoint)" } else { "" },
            r.train_loss,
            r.train_error_pct,
            r.test_error_pct,
            r.seconds
        ));
        if !self.bar.is_hidden() {
            self.bar.set_position(0);
        }
    }
}

fn data_fetch(dir: Option<PathBuf>, mirrors: Vec<String>) -> bilevel::Result<()> {
    use bilevel::fetch::{fetch, FetchSettings};
    let dir = bilevel::data::resolve_dir(dir.as_deref());
    let mut settings = FetchSettings::default();
    if !mirrors.is_empty() {
        settings.mirrors = mirrors
            .into_iter()
            .map(|m| if m.ends_with('/') { m } else { format!("{m}/") })
            .collect();
    }
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let reports = fetch(&dir, &settings, &mut |name, done, total| {
        bar.set_prefix(name.to_string());
        bar.set_length(total.unwrap_or(done));
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    for r in reports {
        for f in &r.failures {
            out!("{}: failed at {f}", r.name);
        }
        match r.url {
            Some(url) => out!("{}: downloaded from {url}, verified", r.name),
            None => out!("{}: already present, verified", r.name),
        }
    }
    out!(
        "MNIST is in {} (train reads it with --data {0})",
        dir.display()
    );
    Ok(())
}

fn load_mnist(data: Option<PathBuf>) -> bilevel::Result<bilevel::data::Mnist> {
    let dir = bilevel::data::resolve_dir(data.as_deref());
    bilevel::data::Mnist::load(&dir)
}

fn train(a: TrainArgs) -> bilevel::Result<()> {
    use bilevel::nn::{AdamSettings, Init, Outputs, Rule, TrainConfig};
    if a.resume && a.checkpoint.is_none() {
        return Err(bilevel::Error::input(
            "--resume",
            "needs --checkpoint DIR to resume from",
        ));
    }
    let config = TrainConfig {
        rule: Rule::from_name(&a.method, a.beta, a.sweeps)?,
        init: a.init.parse::<Init>()?,
        epochs: a.epochs,
        batch: a.batch,
        adam: AdamSettings {
            lr: a.lr,
            ..AdamSettings::default()
        },
        seed: a.seed,
        train_size: a.train_size,
        shuffle: a.shuffle,
        exact_train_error: a.exact_train_error,
        threads: a
            .threads
            .unwrap_or_else(bilevel::linalg::Threads::default_count),
        ..TrainConfig::default()
    };
    config.validate()?;
    let outputs = Outputs {
        log: a.log,
        checkpoint: a.checkpoint,
        resume: a.resume,
        overwrite: a.overwrite,
    };
    outputs.validate()?;
    let data = load_mnist(a.data)?;
    let mut progress = Progress::new();
    bilevel::nn::run(config, &data, &outputs, &mut progress)?;
    progress.bar.finish_and_clear();
    Ok(())
}

fn plot(runs: &[PathBuf], output: &std::path::Path, title: String) -> bilevel::Result<()> {
    let runs = runs
        .iter()
        .map(|p| bilevel::nn::log::read(p).map(|r| r.series()))
        .collect::<bilevel::Result<Vec<_>>>()?;
    bilevel::plot::draw(output, &[bilevel::plot::Panel { title, runs }])?;
    out!("wrote {}", output.display());
    Ok(())
}

fn reproduce_fig1(
    data: Option<PathBuf>,
    out: &std::path::Path,
    epochs: usize,
    threads: usize,
) -> bilevel::Result<()> {
    if epochs == 0 {
        return Err(bilevel::Error::input("epochs", "must be at least 1"));
    }
    let data = load_mnist(data)?;
    let mut progress = Progress::new();
    let results = bilevel::nn::reproduce::fig1(&data, out, epochs, threads, &mut progress)?;
    progress.bar.finish_and_clear();
    out_raw!("{}", bilevel::nn::reproduce::table(&results, epochs));
    out!(
        "wrote {}/fig1.svg, fig1.png, fig1.md and one CSV per configuration",
        out.display()
    );
    Ok(())
}

fn reproduce_table1(
    data: Option<PathBuf>,
    out: &std::path::Path,
    settings: &bilevel::nn::table1::Table1Settings,
) -> bilevel::Result<()> {
    settings.validate()?;
    let data = load_mnist(data)?;
    let start = std::time::Instant::now();
    let lines = |line: &str| out!("{line}");
    let methods = bilevel::nn::table1::reproduce(&data, out, settings, &lines)?;
    out_raw!("{}", bilevel::nn::table1::table(settings, &methods));
    out!(
        "wrote {}/table1.md, table1.svg, table1.png and one CSV per run ({:.0} s)",
        out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn bench_train(
    data: Option<PathBuf>,
    repeats: usize,
    (methods, beta, sweeps): (&[String], f32, Option<usize>),
    threads: &[usize],
    jax: Option<PathBuf>,
) -> bilevel::Result<()> {
    let threads = if threads.is_empty() {
        let default = bilevel::linalg::Threads::default_count();
        let mut t = vec![1];
        if default > 1 {
            t.push(default);
        }
        t
    } else {
        threads.to_vec()
    };
    let rules = methods
        .iter()
        .map(|m| bilevel::nn::Rule::with_defaults(m, beta, sweeps))
        .collect::<bilevel::Result<Vec<_>>>()?;
    let dir = bilevel::data::resolve_dir(data.as_deref());
    let mnist = match bilevel::data::Mnist::load(&dir) {
        Ok(m) => m,
        Err(e) => {
            out!("({e}; timing on synthetic images instead)");
            bilevel::nn::bench::synthetic(50_000, 1_000, 7)
        }
    };
    let r = bilevel::nn::bench::epochs(&mnist, repeats.max(1), &rules, &threads)?;
    out!("{r}");
    if let Some(python) = jax {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/jax_train_step.py");
        let out = std::process::Command::new(&python)
            .args([
                script,
                "--repeats",
                &repeats.max(1).to_string(),
                "--beta",
                &beta.to_string(),
            ])
            .output()
            .map_err(|e| {
                bilevel::Error::input("--jax", format!("cannot run {}: {e}", python.display()))
            })?;
        if !out.status.success() {
            return Err(bilevel::Error::input(
                "--jax",
                format!(
                    "{script} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| bilevel::Error::input("--jax", format!("unexpected output ({e})")))?;
        let (jbp, jfen) = (
            v["bp"].as_f64().unwrap_or(f64::NAN),
            v["fenbp"].as_f64().unwrap_or(f64::NAN),
        );
        out!(
            "JAX {} (jit, CPU), same step, same process tree:",
            v["jax"].as_str().unwrap_or("?")
        );
        // Each method at BP's fastest thread count.
        let fastest = r.fastest_bp().map_or(1, |(t, _)| t);
        let ratio = |jax: f64, name: &str| {
            r.seconds(name, fastest)
                .map_or("not timed here".into(), |s| {
                    format!(
                        "bilevel {s:.3} s on {fastest} thread(s): {:.2}x JAX's time, {:.2}x faster",
                        s / jax,
                        jax / s
                    )
                })
        };
        out!(
            "  back-propagation       {jbp:.3} s  ({})",
            ratio(jbp, "bp")
        );
        out!(
            "  Fenchel BP (beta={beta})    {jfen:.3} s  ({})",
            ratio(jfen, "fenbp")
        );
    }
    Ok(())
}

fn derive(path: &str) -> Result<String, String> {
    let mut text = String::new();
    if path == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
    } else {
        text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    }
    let out = bilevel::derive::derive_json(&text).map_err(|e| e.to_string())?;
    serde_json::to_string_pretty(&out).map_err(|e| e.to_string())
}

fn verify(json: bool, seed: u64, only: &[String]) -> ExitCode {
    let known = bilevel::verify::ids();
    if let Some(bad) = only.iter().find(|id| !known.contains(&id.as_str())) {
        eprintln!(
            "error: unknown verify row `{bad}`; the rows are: {}",
            known.join(", ")
        );
        return ExitCode::from(2);
    }
    let only: Vec<&str> = only.iter().map(String::as_str).collect();
    let report = bilevel::verify::run_only(seed, &only);
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        // One line per row (claim, id, what is measured, value, tolerance, verdict), then its
        // description wrapped to the terminal width.
        let width = terminal_width();
        out!(
            "{:<16} {:<22} {:<22} {:>9} {:>9}  ok",
            "claim",
            "id",
            "measured quantity",
            "value",
            "tolerance"
        );
        for c in &report.checks {
            out!(
                "{:<16} {:<22} {:<22} {:>9.2e} {:>9.1e}  {}",
                c.claim,
                c.id,
                c.quantity,
                c.measured,
                c.tolerance,
                if c.passed { "pass" } else { "FAIL" }
            );
            for line in wrap(&c.description, width.saturating_sub(4).max(40)) {
                out!("    {line}");
            }
        }
        out!(
            "verify: {} passed, {} failed (seed {}, bilevel {})",
            report.passed,
            report.failed,
            report.seed,
            report.version
        );
    }
    if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `$COLUMNS` when set to a sensible number, else 100.
fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .filter(|&c| (40..=1000).contains(&c))
        .unwrap_or(100)
}

/// Greedy word wrap to lines of at most `width` characters (a longer word gets its own line).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

fn taxonomy(beta: f64, json: bool) -> Result<(), String> {
    use bilevel::nested::method::taxonomy;
    use bilevel::nested::OutputLoss;
    use bilevel::prox::Activation;
    use bilevel::verify::instances::{matrix, network, rng};
    bilevel::error::check_beta(beta).map_err(|e| e.to_string())?;
    // Fixed network: 5-4-3-2, ReLU hidden layers, identity output, squared loss (so that convex
    // CHL is a QP), batch of 8.
    let mut r = rng(2024);
    let net = network(&mut r, &[5, 4, 3, 2], Activation::Relu);
    let x = matrix(&mut r, 5, 8);
    let t = matrix(&mut r, 2, 8);
    let rows = taxonomy(&net, beta, OutputLoss::Squared, &x, &t).map_err(|e| e.to_string())?;
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    out!("Table 1 as printed, measured on a 5-4-3-2 ReLU network (squared loss, batch 8, beta = {beta:e} per sample and layer)");
    out!(
        "{:<18} {:<17} {:<10} {:<11} {:<13} {:>14} {:>11}  solver",
        "method",
        "E_k",
        "direction",
        "linearized",
        "inference",
        "rel.err vs BP",
        "s/gradient"
    );
    for row in rows {
        let err = match (row.rel_error_vs_bp, &row.error) {
            (Some(e), _) => format!("{e:.2e}"),
            (None, Some(msg)) => format!("error: {msg}"),
            _ => String::new(),
        };
        let Some(paper) = row.table1 else {
            out!(
                "extra (not in Table 1): {}: penalizer energies, Eq. 30 with the discounting weights \
                 1/prod_(l>=k) beta_l, inference iterated to convergence; Table 1's PCN row is its \
                 linearized form (BP). rel.err vs BP {err}, {:.2e} s/gradient",
                row.method, row.seconds
            );
            continue;
        };
        out!(
            "{:<18} {:<17} {:<10} {:<11} {:<13} {:>14} {:>11.2e}  {}",
            paper.method,
            paper.energy,
            paper.direction,
            paper.linearized,
            paper.inference,
            err,
            row.seconds,
            row.inference
        );
    }
    Ok(())
}
