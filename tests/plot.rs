//! Plots of short runs show something: markers (a one-epoch run is not an empty axis), unique
//! integer epoch ticks, and the legend outside the data area. Checked on the SVG output.

#[path = "support/scratch.rs"]
mod scratch;

use bilevel::app::plot::{draw, Panel, Series};
use scratch::Scratch;

fn run(label: &str, epochs: usize, offset: f64) -> Series {
    Series {
        label: label.into(),
        points: (1..=epochs)
            .map(|e| (e, 10.0 / e as f64 + offset, 12.0 / e as f64 + offset))
            .collect(),
    }
}

/// Every `<text …>content</text>` of an SVG with its `y` attribute.
fn texts(svg: &str) -> Vec<(f64, String)> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let y = t.split("y=\"").nth(1)?.split('"').next()?.parse().ok()?;
            let content = t
                .split('>')
                .nth(1)?
                .split("</text")
                .next()?
                .trim()
                .to_string();
            Some((y, content))
        })
        .collect()
}

fn svg_of(epochs: usize) -> String {
    let dir = Scratch::new(&format!("plot-{epochs}"));
    let path = dir.join("p.svg");
    let panel = Panel {
        title: format!("{epochs} epochs"),
        runs: vec![run("BP", epochs, 0.0), run("FenBP β=1", epochs, 0.5)],
    };
    draw(&path, &[panel]).unwrap();
    std::fs::read_to_string(&path).unwrap()
}

#[test]
fn short_runs_have_markers_unique_integer_ticks_and_a_legend_off_the_data() {
    for epochs in [1, 2, 3, 7] {
        let svg = svg_of(epochs);
        // One dot per run and epoch (the training error); crosses are paths.
        assert!(
            svg.matches("<circle").count() >= 2 * epochs,
            "{epochs}: markers missing"
        );
        let texts = texts(&svg);
        let axis_y = texts
            .iter()
            .find(|(_, t)| t.starts_with("epoch"))
            .map(|(y, _)| *y)
            .expect("x axis label");
        // Tick labels: the numbers printed just above the axis label.
        let ticks: Vec<&String> = texts
            .iter()
            .filter(|(y, t)| *y < axis_y && *y > axis_y - 40.0 && t.parse::<f64>().is_ok())
            .map(|(_, t)| t)
            .collect();
        let mut unique: Vec<&String> = ticks.clone();
        unique.dedup();
        assert_eq!(
            unique.len(),
            ticks.len(),
            "{epochs}: repeated ticks {ticks:?}"
        );
        for t in &ticks {
            let v: f64 = t.parse().unwrap();
            assert!(
                v.fract() == 0.0 && (1.0..=epochs as f64).contains(&v),
                "{epochs}: tick {t}"
            );
        }
        assert_eq!(
            ticks.len(),
            epochs,
            "{epochs}: one tick per epoch, got {ticks:?}"
        );
        // The legend's labels sit below the axis label: outside the data area.
        for label in ["BP", "FenBP β=1"] {
            let (y, _) = texts
                .iter()
                .find(|(_, t)| t == label)
                .expect("legend entry");
            assert!(
                *y > axis_y,
                "{epochs}: legend entry {label} at y {y} inside the chart"
            );
        }
    }
}

#[test]
fn the_error_axis_spans_the_decades_of_the_data() {
    // Errors between 1.0 % and 12.5 % (run(): 10/e and 12/e + 0.5 over 8 epochs): the axis runs
    // from 1 to 100 %, not from 0.01 %.
    let labels: Vec<String> = texts(&svg_of(8)).into_iter().map(|t| t.1).collect();
    assert!(labels.iter().any(|l| l == "1"), "{labels:?}");
    assert!(labels.iter().any(|l| l == "10"), "{labels:?}");
    assert!(
        !labels.iter().any(|l| l == "0.1" || l == "0.01"),
        "{labels:?}"
    );
}
