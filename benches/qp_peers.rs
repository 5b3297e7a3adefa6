//! The QP layer side by side with its peers: times `Bilevel::limit` (forward solve + the
//! one-sided derivative of a linear loss with respect to θ) on the random grid and
//! writes each instance with its timing and gradients (θ and the layer's data) to JSON, for `benches/peers/qp_layers.py`
//! to time proxsuite's QPLayer calls (and qpth, if installed) on the very same data and print
//! the ratio table.
//!
//! Run: `python3 benches/peers/qp_layers.py` (it calls
//! `cargo bench --bench qp_peers -- --out target/qp-peers`), or this alone for the Rust side
//! (`--sizes 500,1000` to choose sizes, `--repeats 20` for at least 20 timed repeats each,
//! `--no-batch` to skip the batch timing).
//!
//! Instances: `E(z; θ) = ½zᵀQz − zᵀ(Bθ + c)` s.t. `Az ≥ b`, `m = n/2`, `p = 4`, `Q` SPD with
//! condition ≲ 15, the loss `gᵀz*`; `random` draws `A`, `b` (no weakly active rows with
//! probability one), `weak` is constructed with a third of the rows strongly active, a third
//! weakly active (slack and multiplier exactly zero), a third inactive.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use bilevel::app::verify::instances::{constructed_qp, matrix, rng, spd, vector};
use bilevel::prelude::*;
use nalgebra::{DMatrix, DVector};

fn main() {
    let mut out = PathBuf::from("target/qp-peers");
    let mut sizes = vec![10usize, 50, 100, 200];
    // At least this many timed repeats per instance (the median is reported).
    let mut min_repeats = 5usize;
    let mut batch = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = PathBuf::from(args.next().expect("--out DIR")),
            "--sizes" => {
                sizes = args
                    .next()
                    .expect("--sizes 10,50")
                    .split(',')
                    .map(|s| s.parse().expect("a size"))
                    .collect()
            }
            "--repeats" => {
                min_repeats = (args.next())
                    .and_then(|s| s.parse().ok())
                    .expect("--repeats N")
            }
            "--no-batch" => batch = false,
            _ => {} // `cargo bench` adds `--bench`
        }
    }
    std::fs::create_dir_all(&out).expect("the output directory");
    println!("bilevel QP layer: forward + one-sided dL/dθ (median of repeats, one thread)");
    println!(
        "{:>5} {:>7} {:>12} {:>18}",
        "n", "kind", "limit ms", "batch 64, 2 thr ms"
    );
    for &n in &sizes {
        for kind in ["random", "weak"] {
            let inst = instance(n, kind);
            let program = Bilevel::new(
                QuadraticProblem::new(
                    inst.q.clone(),
                    inst.b.clone(),
                    inst.c.clone(),
                    inst.constraints.clone(),
                )
                .expect("a valid layer"),
                Loss::Linear { g: inst.g.clone() },
            )
            .expect("a valid program");
            let d = program.limit(&inst.theta).expect("the derivative");
            let data = program
                .inner
                .data_gradients(&inst.theta, &d.z_star, &d.direction)
                .expect("the data gradients");
            let repeats =
                (2_000_000 / (n * n * n / 4 + 1000)).clamp(min_repeats, 2000.max(min_repeats));
            let ms = median_ms(repeats, || {
                let _ = std::hint::black_box(program.limit(&inst.theta).expect("the derivative"));
            });
            let thetas: Vec<DVector<f64>> = (0..64)
                .map(|i| &inst.theta + vector(&mut rng(9000 + i), 4) * 0.1)
                .collect();
            let batch = if batch {
                median_ms((repeats / 32).max(3), || {
                    let _ = std::hint::black_box(program.limit_batch(&thetas, 2).expect("threads"));
                })
            } else {
                f64::NAN
            };
            println!("{n:>5} {kind:>7} {ms:>12.4} {batch:>18.3}");
            let weak = d.direction.branches.iter().filter(|b| b.is_some()).count();
            let json = format!(
                "{{\"n\":{n},\"kind\":\"{kind}\",\"Q\":{},\"B\":{},\"c\":{},\"A\":{},\"b\":{},\"theta\":{},\"g\":{},\"grad_theta\":{},\"grad_Q\":{},\"grad_c\":{},\"grad_A\":{},\"grad_b\":{},\"weak_rows\":{weak},\"limit_ms\":{ms},\"batch64_ms\":{batch}}}",
                mat(&inst.q),
                mat(&inst.b),
                vec(&inst.c),
                mat(&inst.constraints.a),
                vec(&inst.constraints.b),
                vec(&inst.theta),
                vec(&inst.g),
                vec(&d.grad_theta),
                mat(&data.q),
                vec(&data.c),
                mat(&data.constraints.a),
                vec(&data.constraints.b),
            );
            std::fs::write(out.join(format!("{kind}_{n}.json")), json).expect("writing JSON");
        }
    }
    println!("instances written to {}", out.display());
}

struct Instance {
    q: DMatrix<f64>,
    b: DMatrix<f64>,
    c: DVector<f64>,
    constraints: LinearConstraints,
    theta: DVector<f64>,
    g: DVector<f64>,
}

fn instance(n: usize, kind: &str) -> Instance {
    let m = n / 2;
    let g = vector(&mut rng(1), n);
    if kind == "weak" {
        use Activity::{Inactive, Strong, Weak};
        let labels: Vec<Activity> = (0..m).map(|i| [Strong, Weak, Inactive][i % 3]).collect();
        let c = constructed_qp(&mut rng(n as u64), n, 4, 0, &labels);
        return Instance {
            q: c.q,
            b: c.b,
            c: c.c,
            constraints: c.constraints,
            theta: c.theta,
            g,
        };
    }
    let mut r = rng(n as u64 + 7);
    Instance {
        q: spd(&mut r, n, 0.3),
        b: matrix(&mut r, n, 4),
        c: vector(&mut r, n),
        constraints: LinearConstraints {
            a: matrix(&mut r, m, n),
            b: vector(&mut r, m),
            ..LinearConstraints::none(n)
        },
        theta: vector(&mut r, 4),
        g,
    }
}

fn median_ms(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..repeats)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn vec(v: &DVector<f64>) -> String {
    let mut s = String::from("[");
    for (i, x) in v.iter().enumerate() {
        let _ = write!(s, "{}{x:e}", if i > 0 { "," } else { "" });
    }
    s + "]"
}

fn mat(m: &DMatrix<f64>) -> String {
    let rows: Vec<String> = m
        .row_iter()
        .map(|r| vec(&r.transpose().into_owned()))
        .collect();
    format!("[{}]", rows.join(","))
}
