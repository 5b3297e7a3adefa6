//! The MNIST client's commands: `data fetch`, `train`, `plot`, `reproduce`, `bench train`.

use std::io::IsTerminal;
use std::path::PathBuf;

use super::args::{BenchTrainArgs, Fig1Args, Table1Args, TrainArgs};
use super::output::Progress;

/// `bilevel data fetch`.
pub(crate) fn data_fetch(dir: Option<PathBuf>, mirrors: Vec<String>) -> bilevel::Result<()> {
    use bilevel::app::fetch::{fetch, FetchSettings};
    let dir = bilevel::app::data::resolve_dir(dir.as_deref());
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

fn load_mnist(data: Option<PathBuf>) -> bilevel::Result<bilevel::app::data::Mnist> {
    let dir = bilevel::app::data::resolve_dir(data.as_deref());
    bilevel::app::data::Mnist::load(&dir)
}

/// `bilevel train`.
pub(crate) fn train(a: TrainArgs) -> bilevel::Result<()> {
    use bilevel::app::nn::{AdamSettings, Init, Outputs, Rule, TrainConfig};
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
    bilevel::app::nn::run(config, &data, &outputs, &mut progress)?;
    progress.bar.finish_and_clear();
    Ok(())
}

/// `bilevel reproduce fig1`.
pub(crate) fn reproduce_fig1(a: Fig1Args) -> bilevel::Result<()> {
    let threads = a
        .threads
        .unwrap_or_else(bilevel::linalg::Threads::default_count);
    let (data, out, epochs) = (a.data, a.out.as_path(), a.epochs);
    if epochs == 0 {
        return Err(bilevel::Error::input("epochs", "must be at least 1"));
    }
    let data = load_mnist(data)?;
    let mut progress = Progress::new();
    let results = bilevel::app::nn::reproduce::fig1(&data, out, epochs, threads, &mut progress)?;
    progress.bar.finish_and_clear();
    out_raw!("{}", bilevel::app::nn::reproduce::table(&results, epochs));
    out!(
        "wrote {}/fig1.svg, fig1.png, fig1.md and one CSV per configuration",
        out.display()
    );
    Ok(())
}

/// `bilevel reproduce table1`.
pub(crate) fn reproduce_table1(a: Table1Args) -> bilevel::Result<()> {
    let settings = &bilevel::app::nn::table1::Table1Settings {
        epochs: a.epochs,
        seeds: a.seeds,
        beta: a.beta,
        sweeps: a.sweeps,
        jobs: a.jobs.unwrap_or_else(bilevel::linalg::Threads::available),
        train_size: a.train_size,
    };
    let (data, out) = (a.data, a.out.as_path());
    settings.validate()?;
    let data = load_mnist(data)?;
    let start = std::time::Instant::now();
    let lines = |line: &str| out!("{line}");
    let methods = bilevel::app::nn::table1::reproduce(&data, out, settings, &lines)?;
    out_raw!("{}", bilevel::app::nn::table1::table(settings, &methods));
    out!(
        "wrote {}/table1.md, table1.svg, table1.png and one CSV per run ({:.0} s)",
        out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `bilevel bench train`.
pub(crate) fn bench_train(a: BenchTrainArgs) -> bilevel::Result<()> {
    let threads = if a.threads.is_empty() {
        let default = bilevel::linalg::Threads::default_count();
        let mut t = vec![1];
        if default > 1 {
            t.push(default);
        }
        t
    } else {
        a.threads.clone()
    };
    let rules = a
        .methods
        .iter()
        .map(|m| bilevel::app::nn::Rule::with_defaults(m, a.beta, a.sweeps))
        .collect::<bilevel::Result<Vec<_>>>()?;
    let dir = bilevel::app::data::resolve_dir(a.data.as_deref());
    let mnist = match bilevel::app::data::Mnist::load(&dir) {
        Ok(m) => m,
        Err(e) => {
            out!("({e}; timing on synthetic images instead)");
            bilevel::app::nn::bench::synthetic(50_000, 1_000, 7)
        }
    };
    let r = bilevel::app::nn::bench::epochs(&mnist, a.repeats.max(1), &rules, &threads)?;
    out!("{r}");
    match &a.jax {
        Some(python) => compare_with_jax(python, &a, &r),
        None => Ok(()),
    }
}

/// The same step in JAX (`benches/jax_train_step.py` run by `python`), against the bench's
/// figures at BP's fastest thread count.
fn compare_with_jax(
    python: &std::path::Path,
    a: &BenchTrainArgs,
    r: &bilevel::app::nn::bench::EpochTimes,
) -> bilevel::Result<()> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/jax_train_step.py");
    let out = std::process::Command::new(python)
        .args([
            script,
            "--repeats",
            &a.repeats.max(1).to_string(),
            "--beta",
            &a.beta.to_string(),
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
    let timed = v["formulations"]
        .as_object()
        .map_or(0, serde_json::Map::len);
    out!(
        "JAX {} (jit, CPU), same step, same process tree; the fastest of the {timed} formulations \
         timed (benches/jax_train_step.py):",
        v["jax"].as_str().unwrap_or("?")
    );
    let formulation = |rule: &str| {
        v[format!("{rule}_formulation")]
            .as_str()
            .unwrap_or("?")
            .to_string()
    };
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
        "  back-propagation       {jbp:.3} s  ({})\n    JAX formulation: {}",
        ratio(jbp, "bp"),
        formulation("bp")
    );
    out!(
        "  Fenchel BP (beta={})    {jfen:.3} s  ({})\n    JAX formulation: {}",
        a.beta,
        ratio(jfen, "fenbp"),
        formulation("fenbp")
    );
    Ok(())
}
