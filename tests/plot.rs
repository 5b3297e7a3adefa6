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

/// Growth tables: written and read back unchanged, curves grouped per family and backend with
/// the exponents of exact power laws (`ms = 3 n^1.5`, `MB = n / 10`, a peer without memory),
/// bad tables refused naming the line, and the drawing: a time and a memory panel per family,
/// each curve's exponent in the legend, the peer only in the time panel.
#[test]
fn growth_tables_give_the_exponents_of_power_laws_and_draw_them_log_log() {
    use bilevel::app::plot::{
        draw_growth, growth_csv, growth_curves, parse_growth, GrowthRow, GROWTH_HEADER,
    };
    let row = |family: &str, backend: &str, n: usize, ms: f64, peak_mb: f64| GrowthRow {
        family: family.into(),
        backend: backend.into(),
        n,
        ms,
        peak_mb,
    };
    let mut rows = Vec::new();
    for (family, n) in [
        ("banded", 100),
        ("banded", 1000),
        ("box", 100),
        ("box", 10000),
    ] {
        let x = n as f64;
        rows.push(row(
            family,
            "bilevel sparse",
            n,
            3.0 * x.powf(1.5),
            x / 10.0,
        ));
        rows.push(row(family, "peer fwd", n, x * x, f64::NAN));
    }
    rows.push(row("banded", "peer fwd", 10, 7.0, f64::NAN)); // out of order
    let text = growth_csv(&rows);
    assert!(text.starts_with(GROWTH_HEADER));
    let back = parse_growth("t.csv", &text).unwrap();
    assert_eq!(back.len(), rows.len());
    for (a, b) in back.iter().zip(&rows) {
        assert_eq!(
            (&a.family, &a.backend, a.n, a.ms),
            (&b.family, &b.backend, b.n, b.ms)
        );
        assert!(a.peak_mb == b.peak_mb || (a.peak_mb.is_nan() && b.peak_mb.is_nan()));
    }
    let curves = growth_curves(&back);
    assert_eq!(curves.len(), 4);
    for c in &curves {
        assert!(c.points.windows(2).all(|w| w[0].0 < w[1].0), "sorted by n");
        if c.backend == "bilevel sparse" {
            assert!((c.time_exponent - 1.5).abs() < 1e-12, "{}", c.time_exponent);
            assert!((c.memory_exponent - 1.0).abs() < 1e-12);
        } else {
            assert!(c.memory_exponent.is_nan());
        }
    }
    // The banded peer's three points (7 ms at n = 10) are not one power law: not 2.
    let peer = (curves.iter()).find(|c| c.family == "banded" && c.backend == "peer fwd");
    assert!((peer.unwrap().time_exponent - 2.0).abs() > 0.01);

    for (bad, needle) in [
        ("n,ms\n1,2\n", "not a growth table"),
        (
            &format!("{GROWTH_HEADER}\nbanded,x,10,1\n") as &str,
            "line 2",
        ),
        (
            &format!("{GROWTH_HEADER}\nbanded,x,10,1,\nbox,x,10,-1,\n"),
            "line 3",
        ),
        (
            &format!("{GROWTH_HEADER}\nbanded,x,ten,1,\n"),
            "whole number",
        ),
        (&format!("{GROWTH_HEADER}\nbanded,x,10,1,inf\n"), "line 2"),
    ] {
        let err = parse_growth("t.csv", bad).unwrap_err().to_string();
        assert!(
            err.contains("t.csv") && err.contains(needle),
            "{bad:?}: {err}"
        );
    }

    let dir = Scratch::new("growth-plot");
    let path = dir.join("growth.svg");
    draw_growth(&path, &curves, "cost growth").unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    let texts: Vec<String> = texts(&svg).into_iter().map(|t| t.1).collect();
    for caption in [
        "banded: time",
        "banded: peak memory",
        "box: time",
        "box: peak memory",
    ] {
        assert!(texts.iter().any(|t| t == caption), "{caption}: {texts:?}");
    }
    let count = |label: &str| texts.iter().filter(|t| t.as_str() == label).count();
    assert_eq!(count("bilevel sparse (exponent 1.50)"), 2); // the two time panels
    assert_eq!(count("bilevel sparse (exponent 1.00)"), 2); // the two memory panels
    assert_eq!(count("peer fwd (exponent 2.00)"), 1); // box's time panel only
    assert!(draw_growth(&dir.join("g.txt"), &curves, "t").is_err());
    assert!(draw_growth(&path, &[], "t").is_err());
}
