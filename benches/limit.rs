//! Limit derivatives (Prop. 1, Prop. 2) against the finite-difference gradient of `L(θ)`
//! (`2p` inner solves), for `n ∈ {10, 100, 1000}` and `p = 4` parameters.
//!
//! Groups:
//! * `prop1-quadratic`: unconstrained quadratic (`Q` dense SPD), limit = one Cholesky-free KKT
//!   solve after the inner solve;
//! * `prop2-qp`: constrained QP with `n/2` inequalities, a third of them weakly active
//!   (constructed), limit = Eq. 17 QP (dense active set) + exact KKT; `n = 1000` is skipped for the
//!   finite-difference side (8 dense interior-point solves per iteration);
//! * `qp-layer`: the dense active-set path against Clarabel on the same layers (see the function);
//! * `prop2-relu`: ReLU layer with ties (closed form).
//!
//! Run: `cargo bench --bench limit`. Each reports `limit` and `finite-differences`; their ratio
//! is the speed-up of the exact derivative.

use std::hint::black_box;

use bilevel::app::verify::instances::{constructed_qp, matrix, rng, spd, vector};
use bilevel::prelude::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use nalgebra::DVector;

fn fd_gradient<P: InnerProblem>(program: &Bilevel<P>, theta: &DVector<f64>) -> DVector<f64> {
    let h = 1e-6;
    DVector::from_fn(theta.len(), |j, _| {
        let mut tp = theta.clone();
        let mut tm = theta.clone();
        tp[j] += h;
        tm[j] -= h;
        (program.loss_value(&tp).unwrap() - program.loss_value(&tm).unwrap()) / (2.0 * h)
    })
}

fn prop1(c: &mut Criterion) {
    let mut group = c.benchmark_group("prop1-quadratic");
    group.sample_size(10);
    for n in [10usize, 100, 1000] {
        let mut r = rng(n as u64);
        let inner = QuadraticProblem::new(
            spd(&mut r, n, 0.3),
            matrix(&mut r, n, 4),
            vector(&mut r, n),
            LinearConstraints::none(n),
        )
        .unwrap();
        let program = Bilevel::new(
            inner,
            Loss::Squared {
                target: vector(&mut r, n),
            },
        )
        .unwrap();
        let theta = vector(&mut r, 4);
        group.bench_with_input(BenchmarkId::new("limit", n), &n, |b, _| {
            b.iter(|| black_box(program.limit(&theta).unwrap().grad_theta))
        });
        group.bench_with_input(BenchmarkId::new("finite-differences", n), &n, |b, _| {
            b.iter(|| black_box(fd_gradient(&program, &theta)))
        });
    }
    group.finish();
}

fn prop2_qp(c: &mut Criterion) {
    use Activity::{Inactive, Strong, Weak};
    let mut group = c.benchmark_group("prop2-qp");
    group.sample_size(10);
    for n in [10usize, 100, 1000] {
        let labels: Vec<Activity> = (0..n / 2)
            .map(|i| [Strong, Weak, Inactive][i % 3])
            .collect();
        let inst = constructed_qp(&mut rng(n as u64), n, 4, 0, &labels);
        let inner = QuadraticProblem::new(inst.q, inst.b, inst.c, inst.constraints).unwrap();
        let program = Bilevel::new(
            inner,
            Loss::Linear {
                g: vector(&mut rng(1), n),
            },
        )
        .unwrap();
        group.bench_with_input(BenchmarkId::new("limit", n), &n, |b, _| {
            b.iter(|| black_box(program.limit(&inst.theta).unwrap().grad_theta))
        });
        if n <= 100 {
            group.bench_with_input(BenchmarkId::new("finite-differences", n), &n, |b, _| {
                b.iter(|| black_box(fd_gradient(&program, &inst.theta)))
            });
        }
    }
    group.finish();
}

/// `qp-layer`: the QP layer's forward solve and one-sided derivative (`limit`) on the dense
/// active-set method with its stored factorization against the same layer on Clarabel (+ the
/// exact refinement), on the grid: random layers with `m = n/2` inequalities and
/// `p = 4`, regular (`random`) and with a third of the rows weakly active (`weak`). The ratio
/// of the two lines is the speed-up, measured in the same run; `batch64` times
/// `limit_batch` on 64 nearby θ (two threads) against 64 times the single item.
fn qp_layer(c: &mut Criterion) {
    use std::sync::Arc;
    use Activity::{Inactive, Strong, Weak};
    let mut group = c.benchmark_group("qp-layer");
    group.sample_size(10);
    for n in [10usize, 50, 100, 200, 500] {
        let m = n / 2;
        let mut r = rng(n as u64 + 7);
        let random = QuadraticProblem::new(
            spd(&mut r, n, 0.3),
            matrix(&mut r, n, 4),
            vector(&mut r, n),
            LinearConstraints {
                a: matrix(&mut r, m, n),
                b: vector(&mut r, m),
                ..LinearConstraints::none(n)
            },
        )
        .unwrap();
        let theta = vector(&mut r, 4);
        let labels: Vec<Activity> = (0..m).map(|i| [Strong, Weak, Inactive][i % 3]).collect();
        let inst = constructed_qp(&mut rng(n as u64), n, 4, 0, &labels);
        let weak = QuadraticProblem::new(inst.q, inst.b, inst.c, inst.constraints).unwrap();
        let loss = Loss::Linear {
            g: vector(&mut rng(1), n),
        };
        for (name, layer, at) in [("random", random, &theta), ("weak", weak, &inst.theta)] {
            let dense = Bilevel::new(layer.clone(), loss.clone()).unwrap();
            group.bench_with_input(BenchmarkId::new(format!("dense-{name}"), n), &n, |b, _| {
                b.iter(|| black_box(dense.limit(at).unwrap().grad_theta))
            });
            // A batch of 64 nearby θ on the same layer, two threads.
            let thetas: Vec<DVector<f64>> = (0..64)
                .map(|i| at + vector(&mut rng(9000 + i), 4) * 0.1)
                .collect();
            group.bench_with_input(
                BenchmarkId::new(format!("dense-{name}-batch64"), n),
                &n,
                |b, _| b.iter(|| black_box(dense.limit_batch(&thetas, 2).unwrap())),
            );
            if n <= 200 {
                let ipm = Bilevel::new(
                    layer.with_backend(Arc::new(Clarabel::default())),
                    loss.clone(),
                )
                .unwrap();
                group.bench_with_input(
                    BenchmarkId::new(format!("clarabel-{name}"), n),
                    &n,
                    |b, _| b.iter(|| black_box(ipm.limit(at).unwrap().grad_theta)),
                );
            }
        }
    }
    group.finish();
}

fn prop2_relu(c: &mut Criterion) {
    let mut group = c.benchmark_group("prop2-relu");
    for n in [10usize, 100, 1000] {
        let mut r = rng(n as u64);
        let mut u = vector(&mut r, n);
        for j in (0..n).step_by(5) {
            u[j] = 0.0; // ties
        }
        let layer = ProxProblem::new(Activation::Relu, matrix(&mut r, n, 4), u).unwrap();
        let program = Bilevel::new(
            layer,
            Loss::Linear {
                g: vector(&mut r, n),
            },
        )
        .unwrap();
        let theta = DVector::zeros(4);
        group.bench_with_input(BenchmarkId::new("limit", n), &n, |b, _| {
            b.iter(|| black_box(program.limit(&theta).unwrap().grad_theta))
        });
        group.bench_with_input(BenchmarkId::new("finite-differences", n), &n, |b, _| {
            b.iter(|| black_box(fd_gradient(&program, &theta)))
        });
    }
    group.finish();
}

// No HTML plots: plotters is built with `ab_glyph` (no system fonts) for `bilevel plot`, and
// criterion's plots would need a registered font.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = prop1, prop2_qp, qp_layer, prop2_relu
}
criterion_main!(benches);
