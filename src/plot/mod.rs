//! Fig. 1-style plots: training error (solid) and test error (dashed) per epoch, one colour per
//! run, log-scale error axis (errors below 0.01 % are drawn at 0.01 %).
//!
//! SVG or PNG by the file extension. Text uses a bundled DejaVu Sans (Bitstream Vera license,
//! `src/plot/DejaVuSans-LICENSE.txt`) through plotters' `ab_glyph` backend, so plotting works on
//! machines without any system font.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{Error, Result};
use crate::nn::log::Run;

static FONT: &[u8] = include_bytes!("DejaVuSans.ttf");

/// One panel: a title and its runs.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Caption.
    pub title: String,
    /// Curves.
    pub runs: Vec<Run>,
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
            "-o",
            format!("{}: the output must end in .svg or .png", path.display()),
        )),
    }
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn render<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, panels: &[Panel]) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, panels.len()));
    for (area, panel) in areas.iter().zip(panels) {
        let epochs = panel
            .runs
            .iter()
            .flat_map(|r| r.points.iter().map(|p| p.0))
            .max()
            .unwrap_or(1)
            .max(2);
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(1.0..epochs as f64, (FLOOR..100.0).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("epoch   (solid: training error, dashed: test error)")
            .y_desc("error (%)")
            .label_style(("sans-serif", 14))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v}"))
            .draw()?;
        for (i, run) in panel.runs.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            // Earlier runs are drawn wider, so that identical curves (BP and Fenchel BP stuck at
            // the class prior with the negative init) stay visible under later ones.
            let width = if i == 0 { 4 } else { 2 };
            let train = run.points.iter().map(|p| (p.0 as f64, p.1.max(FLOOR)));
            let test = run.points.iter().map(|p| (p.0 as f64, p.2.max(FLOOR)));
            chart
                .draw_series(LineSeries::new(train, color.stroke_width(width)))?
                .label(run.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(DashedLineSeries::new(test, 6, 4, color.stroke_width(width)))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}
