//! Fig. 1-style plots: training error (solid) and test error (dashed) per epoch, one colour per
//! run, log-scale error axis over the decades the errors span (errors below 0.01 % are drawn
//! at 0.01 %), integer epoch ticks, markers on short runs, and the legend in a strip under each
//! chart (never over a curve).
//!
//! SVG or PNG by the file extension. Text uses a bundled DejaVu Sans (Bitstream Vera license,
//! `src/app/plot/DejaVuSans-LICENSE.txt`) through plotters' `ab_glyph` backend, so plotting works on
//! machines without any system font.

mod growth;

pub use growth::{
    draw_growth, growth_csv, growth_curves, parse_growth, GrowthCurve, GrowthRow, GROWTH_HEADER,
};

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{Error, Result};
static FONT: &[u8] = include_bytes!("DejaVuSans.ttf");

/// One run's curves: training and test error per epoch, and the legend's label.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label ("BP", "FenBP β=1000 (negative init)").
    pub label: String,
    /// `(epoch, train_error_pct, test_error_pct)` per epoch.
    pub points: Vec<(usize, f64, f64)>,
}

/// One panel: a title and its runs.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Caption.
    pub title: String,
    /// Curves.
    pub runs: Vec<Series>,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Lowest error drawn (log axis).
const FLOOR: f64 = 0.01;

/// The error axis: the decades the panel's errors span (`10^⌊log₁₀ min⌋` to
/// `10^⌈log₁₀ max⌉`, at least one decade), within `[FLOOR, 100]` %.
fn error_range(panel: &Panel) -> std::ops::Range<f64> {
    let errors = || {
        (panel.runs.iter())
            .flat_map(|r| r.points.iter().flat_map(|p| [p.1, p.2]))
            .filter(|v| v.is_finite())
    };
    let min = errors().fold(f64::INFINITY, f64::min).max(FLOOR);
    let max = errors().fold(0.0, f64::max).clamp(FLOOR, 100.0);
    if min > max {
        return FLOOR..100.0; // no finite point
    }
    let lo = 10f64.powf(min.log10().floor()).max(FLOOR);
    let hi = 10f64.powf(max.log10().ceil()).min(100.0);
    if hi > lo {
        lo..hi
    } else if hi < 100.0 {
        lo..hi * 10.0
    } else {
        lo / 10.0..hi
    }
}

fn register_font() -> Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| Error::input("font", "the bundled font could not be parsed"))
}

/// Draws `panels` side by side into `path` (`.svg` or `.png`), `width_per_panel × height`
/// pixels each.
///
/// # Errors
/// [`Error::InvalidInput`] for another extension or no runs; [`Error::Io`] if drawing or
/// writing fails.
pub fn draw(path: &Path, panels: &[Panel]) -> Result<()> {
    if panels.is_empty() || panels.iter().any(|p| p.runs.is_empty()) {
        return Err(Error::input("runs", "nothing to plot"));
    }
    register_font()?;
    let size = (640 * panels.len() as u32, 480);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("svg") => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            render(&root, panels).map_err(|e| Error::io_message(path, e))?;
            root.present().map_err(|e| Error::io_message(path, e))
        }
        Some("png") => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            render(&root, panels).map_err(|e| Error::io_message(path, e))?;
            root.present().map_err(|e| Error::io_message(path, e))
        }
        _ => Err(Error::input(
            "output",
            format!("{}: the output must end in .svg or .png", path.display()),
        )),
    }
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn render<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, panels: &[Panel]) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, panels.len()));
    let colours = colours(panels);
    for ((area, panel), colours) in areas.iter().zip(panels).zip(&colours) {
        // The legend gets its own strip under the chart (two entries per row), so it never
        // covers a curve.
        let rows = panel.runs.len().div_ceil(2) as u32;
        let (_, height) = area.dim_in_pixel();
        let (chart_area, legend_area) =
            area.split_vertically(height.saturating_sub(12 + 22 * rows));
        draw_chart(&chart_area, panel, colours)?;
        draw_legend(&legend_area, panel, colours)?;
    }
    Ok(())
}

/// Each run's colour, panel by panel: one colour per method across all panels (the label
/// before any parenthesis, so "FenBP β=1" and "FenBP β=1 (negative init)" match), in order of
/// first appearance.
fn colours(panels: &[Panel]) -> Vec<Vec<RGBColor>> {
    let mut keys: Vec<&str> = Vec::new();
    (panels.iter())
        .map(|panel| {
            (panel.runs.iter())
                .map(|run| {
                    let key = run.label.split(" (").next().unwrap_or_default().trim();
                    let index = keys.iter().position(|k| *k == key).unwrap_or_else(|| {
                        keys.push(key);
                        keys.len() - 1
                    });
                    COLORS[index % COLORS.len()]
                })
                .collect()
        })
        .collect()
}

/// The chart: integer epochs on the x axis (one tick per epoch up to 10 epochs, never a repeated
/// label), markers on every point of runs up to 20 epochs (a one-epoch run is a dot and a cross,
/// not an empty axis), log-scale error.
fn draw_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    colours: &[RGBColor],
) -> DrawResult<DB> {
    let epochs = panel
        .runs
        .iter()
        .flat_map(|r| r.points.iter().map(|p| p.0 as u32))
        .max()
        .unwrap_or(1)
        .max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0u32..epochs + 1, error_range(panel).log_scale())?;
    chart
        .configure_mesh()
        .x_desc(if epochs <= 20 {
            "epoch   (solid, dots: training error; dashed, crosses: test error)"
        } else {
            "epoch   (solid: training error, dashed: test error)"
        })
        .y_desc("error (%)")
        .label_style(("sans-serif", 14))
        .x_labels((epochs as usize + 2).min(12))
        .x_label_formatter(&|v| {
            if *v == 0 || *v > epochs {
                String::new()
            } else {
                v.to_string()
            }
        })
        .y_label_formatter(&|v| format!("{v}"))
        .draw()?;
    for (i, run) in panel.runs.iter().enumerate() {
        let color = colours[i];
        // Earlier runs are drawn wider, so that identical curves (BP and Fenchel BP stuck at the
        // class prior with the negative init) stay visible under later ones.
        let width = if i == 0 { 4 } else { 2 };
        let train: Vec<(u32, f64)> = run
            .points
            .iter()
            .map(|p| (p.0 as u32, p.1.max(FLOOR)))
            .collect();
        let test: Vec<(u32, f64)> = run
            .points
            .iter()
            .map(|p| (p.0 as u32, p.2.max(FLOOR)))
            .collect();
        chart.draw_series(LineSeries::new(
            train.iter().copied(),
            color.stroke_width(width),
        ))?;
        chart.draw_series(DashedLineSeries::new(
            test.iter().copied(),
            6,
            4,
            color.stroke_width(width),
        ))?;
        // Markers where they can be told apart (short runs; a one-epoch run is only markers).
        if epochs <= 20 {
            chart.draw_series(train.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
            chart.draw_series(
                test.iter()
                    .map(|&p| Cross::new(p, 5, color.stroke_width(2))),
            )?;
        }
    }
    Ok(())
}

/// The legend strip: a short line and the run's label, two runs per row.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    colours: &[RGBColor],
) -> DrawResult<DB> {
    let (width, _) = area.dim_in_pixel();
    let column = (width as i32 - 40) / 2;
    for (i, run) in panel.runs.iter().enumerate() {
        let color = colours[i];
        let x = 40 + (i as i32 % 2) * column;
        let y = 6 + (i as i32 / 2) * 22;
        area.draw(&PathElement::new(
            vec![(x, y + 8), (x + 24, y + 8)],
            color.stroke_width(3),
        ))?;
        area.draw(&Circle::new((x + 12, y + 8), 4, color.filled()))?;
        area.draw(&Text::new(
            run.label.clone(),
            (x + 32, y),
            ("sans-serif", 14),
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{colours, Panel, Series, COLORS};

    #[test]
    fn a_method_keeps_its_colour_across_panels() {
        let series = |label: &str| Series {
            label: label.into(),
            points: vec![(1, 1.0, 1.0)],
        };
        let panels = [
            Panel {
                title: "Glorot".into(),
                runs: vec![series("BP"), series("FenBP β=0.01"), series("FenBP β=1")],
            },
            Panel {
                title: "negative".into(),
                runs: vec![
                    series("BP (negative init)"),
                    series("FenBP β=1 (negative init)"),
                    series("FenBP β=1000 (negative init)"),
                ],
            },
        ];
        let c = colours(&panels);
        assert_eq!(c[1][0], c[0][0]);
        assert_eq!(c[1][1], c[0][2]); // FenBP β=1: index 1 in the second panel, 2 in the first
        assert_eq!(c[1][2], COLORS[3]); // a new method gets the next colour
        assert_ne!(c[0][1], c[0][2]);
    }
}
