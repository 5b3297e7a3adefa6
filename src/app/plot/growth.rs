//! Cost-growth plots: time (and peak memory, where measured) of QP layers against the problem
//! size `n`, on log–log axes, one panel per problem family, each curve labelled with its fitted
//! growth exponent (the least-squares slope of `log cost` on `log n`: 1 is linear growth, 3 a
//! dense factorization's).
//!
//! The data is CSV with the header [`GROWTH_HEADER`], one row per measurement:
//! `family,backend,n,ms,peak_mb` (`peak_mb` empty where not measured). `cargo bench --bench
//! sparse_growth` writes `growth-<family>.csv` for `bilevel`'s sparse and dense layers, and
//! `benches/peers/sparse_layers.py` writes `peers-<family>.csv` for proxsuite, Clarabel and
//! OSQP on the same instances; `bilevel plot --growth FILES… -o growth.svg` draws them all.

use std::fmt::Write as _;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{register_font, DrawResult, COLORS};
use crate::app::verify::fitted_slope;
use crate::error::{Error, Result};

/// The first line of a growth CSV.
pub const GROWTH_HEADER: &str = "family,backend,n,ms,peak_mb";

/// One measurement: a backend's cost on one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct GrowthRow {
    /// The problem family (`banded`, `random`, `box`, `simplex`).
    pub family: String,
    /// What was timed (`bilevel sparse`, `proxsuite sparse + KKT backward`, …).
    pub backend: String,
    /// The number of variables.
    pub n: usize,
    /// Median wall time per item, in milliseconds.
    pub ms: f64,
    /// Peak heap in MB, `NaN` where not measured.
    pub peak_mb: f64,
}

/// One backend's curve in one family, with its fitted growth exponents.
#[derive(Debug, Clone, PartialEq)]
pub struct GrowthCurve {
    /// The problem family.
    pub family: String,
    /// The backend.
    pub backend: String,
    /// `(n, ms, peak_mb)` in increasing `n`.
    pub points: Vec<(f64, f64, f64)>,
    /// The slope of `log ms` on `log n` (`NaN` below two sizes).
    pub time_exponent: f64,
    /// The slope of `log peak_mb` on `log n` over the sizes where it was measured (`NaN` below
    /// two).
    pub memory_exponent: f64,
}

/// `rows` as growth CSV text, [`GROWTH_HEADER`] first.
pub fn growth_csv(rows: &[GrowthRow]) -> String {
    let mut out = format!("{GROWTH_HEADER}\n");
    for r in rows {
        let mb = if r.peak_mb.is_nan() {
            String::new()
        } else {
            r.peak_mb.to_string()
        };
        // Commas would split a field: the names this crate writes have none.
        let clean = |s: &str| s.replace(',', ";");
        let (family, backend) = (clean(&r.family), clean(&r.backend));
        writeln!(out, "{family},{backend},{},{},{mb}", r.n, r.ms).expect("writing to a String");
    }
    out
}

/// The rows of growth CSV text (`what` names it in errors).
///
/// # Errors
/// [`Error::InvalidInput`] naming `what` and the line: another header, a row without five
/// fields, a size that is not a positive whole number, a time that is not finite and positive,
/// a memory that is neither empty nor finite and positive.
pub fn parse_growth(what: &str, text: &str) -> Result<Vec<GrowthRow>> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim() == GROWTH_HEADER => {}
        _ => {
            return Err(Error::input(
                what,
                format!("not a growth table (the first line must be `{GROWTH_HEADER}`)"),
            ))
        }
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    (lines.filter(|(_, l)| !l.trim().is_empty()))
        .map(|(i, line)| {
            let bad = |why: &str| Error::input(format!("{what}, line {}", i + 1), why.to_string());
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let [family, backend, n, ms, mb] = f[..] else {
                return Err(bad("expected 5 comma-separated fields"));
            };
            let n: usize = n.parse().map_err(|_| bad("n is not a whole number"))?;
            let ms: f64 = ms.parse().map_err(|_| bad("ms is not a number"))?;
            let peak_mb = match mb {
                "" => f64::NAN,
                mb => mb.parse().map_err(|_| bad("peak_mb is not a number"))?,
            };
            if n == 0 || !positive(ms) || !(peak_mb.is_nan() || positive(peak_mb)) {
                return Err(bad(
                    "n, ms and peak_mb (when given) must be positive and finite",
                ));
            }
            Ok(GrowthRow {
                family: family.into(),
                backend: backend.into(),
                n,
                ms,
                peak_mb,
            })
        })
        .collect()
}

/// The curves of `rows`: one per `(family, backend)` in order of first appearance, points in
/// increasing `n` (a size measured twice keeps its last row), with their fitted exponents.
pub fn growth_curves(rows: &[GrowthRow]) -> Vec<GrowthCurve> {
    let mut curves: Vec<GrowthCurve> = Vec::new();
    for r in rows {
        let index = (curves.iter())
            .position(|c| c.family == r.family && c.backend == r.backend)
            .unwrap_or_else(|| {
                curves.push(GrowthCurve {
                    family: r.family.clone(),
                    backend: r.backend.clone(),
                    points: Vec::new(),
                    time_exponent: f64::NAN,
                    memory_exponent: f64::NAN,
                });
                curves.len() - 1
            });
        let points = &mut curves[index].points;
        points.retain(|p| p.0 != r.n as f64);
        points.push((r.n as f64, r.ms, r.peak_mb));
    }
    for c in &mut curves {
        c.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        c.time_exponent = exponent(c.points.iter().map(|p| (p.0, p.1)));
        c.memory_exponent = exponent(c.points.iter().map(|p| (p.0, p.2)));
    }
    curves
}

/// The fitted log–log slope of the points with a measured (non-`NaN`) value.
fn exponent(points: impl Iterator<Item = (f64, f64)>) -> f64 {
    let (ns, ys): (Vec<f64>, Vec<f64>) = points.filter(|p| !p.1.is_nan()).unzip();
    if ns.len() < 2 {
        f64::NAN
    } else {
        fitted_slope(&ns, &ys)
    }
}

/// Draws `curves` into `path` (`.svg` or `.png`): per family a time panel, and under it a
/// memory panel when any of its curves has a measured memory; log–log axes, the legend under
/// each panel with each curve's fitted exponent.
///
/// # Errors
/// [`Error::InvalidInput`] for another extension or no curves; [`Error::Io`] if drawing or
/// writing fails.
pub fn draw_growth(path: &Path, curves: &[GrowthCurve], title: &str) -> Result<()> {
    if curves.is_empty() {
        return Err(Error::input("runs", "nothing to plot"));
    }
    register_font()?;
    let families = first_appearance(curves.iter().map(|c| c.family.as_str()));
    let rows = if curves.iter().any(|c| !c.memory_exponent.is_nan()) {
        2
    } else {
        1
    };
    let size = (560 * families.len() as u32, 520 * rows);
    let layout = (&families[..], rows, title);
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("svg") => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            render(&root, curves, layout)
                .and_then(|()| root.present())
                .map_err(|e| Error::io_message(path, e))
        }
        Some(e) if e.eq_ignore_ascii_case("png") => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            render(&root, curves, layout)
                .and_then(|()| root.present())
                .map_err(|e| Error::io_message(path, e))
        }
        _ => Err(Error::input(
            "output",
            format!("{}: the output must end in .svg or .png", path.display()),
        )),
    }
}

/// Which cost a panel draws.
#[derive(Clone, Copy, PartialEq)]
enum Cost {
    Time,
    Memory,
}

fn render<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    curves: &[GrowthCurve],
    (families, rows, title): (&[&str], u32, &str),
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let areas = root.split_evenly((rows as usize, families.len()));
    // One colour per backend across the panels.
    let backends = first_appearance(curves.iter().map(|c| c.backend.as_str()));
    for (k, area) in areas.iter().enumerate() {
        let family = families[k % families.len()];
        let cost = if k < families.len() {
            Cost::Time
        } else {
            Cost::Memory
        };
        let shown: Vec<&GrowthCurve> = (curves.iter())
            .filter(|c| c.family == family)
            .filter(|c| cost == Cost::Time || !c.memory_exponent.is_nan())
            .collect();
        let lines = shown.len() as u32;
        let (_, height) = area.dim_in_pixel();
        let (chart, legend) = area.split_vertically(height.saturating_sub(8 + 20 * lines));
        let colour = |c: &GrowthCurve| {
            let i = backends.iter().position(|b| *b == c.backend).unwrap_or(0);
            COLORS[i % COLORS.len()]
        };
        draw_panel(&chart, &shown, (family, cost), &colour)?;
        for (i, c) in shown.iter().enumerate() {
            let y = 4 + 20 * i as i32;
            let slope = match cost {
                Cost::Time => c.time_exponent,
                Cost::Memory => c.memory_exponent,
            };
            let style = colour(c).stroke_width(3);
            legend.draw(&PathElement::new(vec![(40, y + 8), (64, y + 8)], style))?;
            let label = format!("{} (exponent {slope:.2})", c.backend);
            legend.draw(&Text::new(label, (72, y), ("sans-serif", 14)))?;
        }
    }
    Ok(())
}

/// The distinct `names` in order of first appearance.
fn first_appearance<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for name in names {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// The decades `[10^⌊log₁₀ min⌋, 10^⌈log₁₀ max⌉]` of positive `values` (one decade at least).
fn decades(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return 1.0..10.0;
    }
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    lo..hi
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    shown: &[&GrowthCurve],
    (family, cost): (&str, Cost),
    colour: &dyn Fn(&GrowthCurve) -> RGBColor,
) -> DrawResult<DB> {
    let value = |p: &(f64, f64, f64)| match cost {
        Cost::Time => p.1,
        Cost::Memory => p.2,
    };
    let points = || shown.iter().flat_map(|c| c.points.iter());
    let xs = decades(points().map(|p| p.0));
    let ys = decades(points().map(value));
    let (caption, y_desc) = match cost {
        Cost::Time => (format!("{family}: time"), "ms per item"),
        Cost::Memory => (format!("{family}: peak memory"), "peak heap (MB)"),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(xs.log_scale(), ys.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("n (log scale)")
        .y_desc(y_desc)
        .label_style(("sans-serif", 13))
        .x_label_formatter(&|v| format!("{v:e}"))
        .y_label_formatter(&|v| format!("{v:e}"))
        .draw()?;
    for c in shown {
        let style = colour(c);
        let line: Vec<(f64, f64)> = (c.points.iter())
            .map(|p| (p.0, value(p)))
            .filter(|p| !p.1.is_nan())
            .collect();
        chart.draw_series(LineSeries::new(line.iter().copied(), style.stroke_width(2)))?;
        chart.draw_series(line.iter().map(|&p| Circle::new(p, 4, style.filled())))?;
    }
    Ok(())
}
