//! `bilevel plot`: Fig. 1-style error curves of training logs, and (`--growth`) the log–log
//! cost-growth curves of QP layers with their fitted exponents.

use std::path::{Path, PathBuf};

use bilevel::app::plot::{draw, draw_growth, growth_curves, parse_growth, Panel};

/// `bilevel plot`: the logs' error curves drawn into `output`.
pub(crate) fn plot(runs: &[PathBuf], output: &Path, title: Option<String>) -> bilevel::Result<()> {
    let title = title.unwrap_or_else(|| "MNIST, 784-256-128-64-10".into());
    let runs = runs
        .iter()
        .map(|p| bilevel::app::nn::log::read(p).map(|r| r.series()))
        .collect::<bilevel::Result<Vec<_>>>()?;
    draw(output, &[Panel { title, runs }])?;
    out!("wrote {}", output.display());
    Ok(())
}

/// `bilevel plot --growth`: the growth tables' curves drawn into `output`, and each curve's
/// fitted exponents printed.
pub(crate) fn plot_growth(
    tables: &[PathBuf],
    output: &Path,
    title: Option<String>,
) -> bilevel::Result<()> {
    let mut rows = Vec::new();
    for path in tables {
        let text = std::fs::read_to_string(path).map_err(|e| bilevel::Error::io(path, e))?;
        rows.extend(parse_growth(&path.display().to_string(), &text)?);
    }
    let curves = growth_curves(&rows);
    let title = title.unwrap_or_else(|| "QP layers: cost growth".into());
    draw_growth(output, &curves, &title)?;
    out!(
        "{:<10} {:<40} {:>6} {:>14} {:>16}",
        "family",
        "backend",
        "sizes",
        "time exponent",
        "memory exponent"
    );
    for c in &curves {
        let (family, backend, sizes) = (&c.family, &c.backend, c.points.len());
        let (time, memory) = (c.time_exponent, c.memory_exponent);
        out!("{family:<10} {backend:<40} {sizes:>6} {time:>14.2} {memory:>16.2}");
    }
    out!("wrote {}", output.display());
    Ok(())
}
