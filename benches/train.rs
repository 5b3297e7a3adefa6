//! One training step (Prop. 7 gradient + Adam, f32, batch 50) on the paper's MLP
//! 784-256-128-64-10: back-propagation vs Fenchel BP. A whole epoch is 1000 such steps;
//! `bilevel bench train` times whole epochs next to the matrix products alone.
//!
//! Run: `cargo bench --bench train`.

use bilevel::app::nn::bench::synthetic;
use bilevel::app::nn::{Rule, TrainConfig, Trainer};
use criterion::{criterion_group, criterion_main, Criterion};

fn steps(c: &mut Criterion) {
    let data = synthetic(1000, 10, 3);
    let mut group = c.benchmark_group("train-step-784-256-128-64-10-batch50-f32");
    for (name, rule) in [
        ("bp", Rule::bp()),
        ("fenbp-beta-0.01", Rule::fenbp(0.01)),
        ("fenbp-beta-1", Rule::fenbp(1.0)),
        ("fenbp-beta-1000", Rule::fenbp(1000.0)),
    ] {
        let mut t = Trainer::new(TrainConfig {
            rule,
            train_size: 1000,
            ..TrainConfig::default()
        })
        .expect("valid settings");
        let mut start = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                let idx: [usize; 50] = std::array::from_fn(|i| start + i);
                start = (start + 50) % 1000;
                t.step(&data.train, &idx).expect("finite loss")
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
    targets = steps
}
criterion_main!(benches);
