//! Time of one θ-gradient per Table 1 method on the paper's MLP, 784-256-128-64-10 (ReLU hidden
//! layers, identity output, squared loss so that convex CHL is a QP), batch of 50, β = 1e-2.
//!
//! Run: `cargo bench --bench methods` (the non-linearized methods solve an inference problem per
//! sample and take seconds per gradient; BP and Fenchel BP take about a millisecond).

use std::hint::black_box;

use bilevel::app::verify::instances::{matrix, network, rng};
use bilevel::nested::method::Method;
use bilevel::nested::{Batch, NestedSettings, OutputLoss};
use bilevel::prelude::Activation;
use criterion::{criterion_group, criterion_main, Criterion};

fn methods(c: &mut Criterion) {
    let mut r = rng(1);
    let mut net = network(&mut r, &[784, 256, 128, 64, 10], Activation::Relu);
    // Glorot-like scale so that activations stay O(1) through the layers.
    for l in &mut net.layers {
        let s = (6.0 / (l.w.nrows() + l.w.ncols()) as f64).sqrt();
        l.w *= s;
    }
    let x = matrix(&mut r, 784, 50).map(|v| 0.5 * (v + 1.0));
    let t = matrix(&mut r, 10, 50);
    let mut group = c.benchmark_group("gradient-784-256-128-64-10-batch50");
    group.sample_size(10);
    for m in Method::ALL.into_iter().chain(Method::EXTRAS) {
        group.bench_function(m.name(), |b| {
            b.iter(|| {
                let problem = m.problem(&net, &[1e-2; 4], OutputLoss::Squared).unwrap();
                let batch = Batch::new(&problem, &x, &t).unwrap();
                black_box(
                    m.run(&problem, batch, &NestedSettings::default())
                        .map(|r| r.value),
                )
            })
        });
    }
    group.finish();
}

// No HTML plots: plotters is built with `ab_glyph` (no system fonts) for `bilevel plot`, and
// criterion's plots would need a registered font.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = methods
}
criterion_main!(benches);
