//! The batched QP layer of [`bilevel::layer`] (qpth's convention), as a framework adapter calls
//! it: a batch of 128 items, each with its own random data (`Q` SPD `n × n`, `m = n/2`
//! inequality rows `Gz ≤ h` with about half of them active at the solution, no equality),
//! solved, then differentiated (the one-sided limit, every input) for one upstream gradient per
//! item, and on one thread also in Def. 1's contrastive mode at `β = 1e-3`. `n ∈ {10, 50,
//! 200}`, 1 and 2 threads. `qp-layer-one-item` solves one item of `n = 500` and `1000` on 1
//! and 2 threads (the second thread helps factor it). A third group, `sparse-layer`, times one
//! item of each sparse family of [`bilevel::app::verify::sparse_instances`] (banded chain,
//! random sparse, box and simplex projections) on the sparse path at `n = 1000` and `10,000`
//! (the random family at 300 and 2000): forward solve, then the exact gradients.
//!
//! Run: `cargo bench --bench layer`. The peers (qpth, proxsuite's QPLayer) on the same sizes are
//! in `benches/peers/torch_layers.py`; the sparse peers, memory and growth exponents in
//! `benches/sparse_growth.rs` and `benches/peers/sparse_layers.py`.

use std::hint::black_box;

use bilevel::app::verify::instances::{matrix, rng, spd, vector};
use bilevel::app::verify::sparse_instances::{self, SparseInstance};
use bilevel::layer::{gradients, gradients_sparse, solve, solve_sparse, Mode, QpData};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use nalgebra::{DMatrix, DVector};

const BATCH: usize = 128;

/// `count` random items; `h = G z₀ + s` with `s ≥ 0` half zero (rows active at `z₀`).
fn batch(n: usize, count: usize, seed: u64) -> Vec<QpData> {
    let mut r = rng(seed);
    (0..count)
        .map(|_| {
            let m = n / 2;
            let g = matrix(&mut r, m, n);
            let z0 = vector(&mut r, n);
            let slack = vector(&mut r, m).map(|s| s.abs().max(0.0));
            let slack = DVector::from_fn(m, |i, _| if i % 2 == 0 { 0.0 } else { slack[i] });
            QpData {
                q: spd(&mut r, n, 0.3),
                p: vector(&mut r, n),
                h: &g * &z0 + slack,
                g,
                a: DMatrix::zeros(0, n),
                b: DVector::zeros(0),
            }
        })
        .collect()
}

fn layer(c: &mut Criterion) {
    let mut group = c.benchmark_group("qp-layer-batch");
    group.sample_size(10);
    for n in [10usize, 50, 200] {
        let items = batch(n, BATCH, n as u64);
        let mut r = rng(7);
        let upstream: Vec<_> = (0..BATCH).map(|_| vector(&mut r, n)).collect();
        for threads in [1usize, 2] {
            let id = format!("n{n}-t{threads}");
            group.bench_function(BenchmarkId::new("solve", &id), |b| {
                b.iter(|| black_box(solve(&items, threads, Default::default())))
            });
            let solved: Vec<_> = solve(&items, threads, Default::default())
                .into_iter()
                .map(|s| s.expect("the bench's items are feasible"))
                .collect();
            group.bench_function(BenchmarkId::new("gradients", &id), |b| {
                b.iter(|| black_box(gradients(&solved, &upstream, Mode::Limit, threads)))
            });
            if threads == 1 {
                // Def. 1 at β = 1e-3: the offset problem on the layer's stored factorization.
                let mode = Mode::Contrastive(1e-3);
                group.bench_function(BenchmarkId::new("contrastive", &id), |b| {
                    b.iter(|| black_box(gradients(&solved, &upstream, mode, threads)))
                });
            }
        }
    }
    group.finish();
}

/// One large item (a layer whose data all change at every call, as a framework adapter's
/// batch of one): `Q`'s Cholesky factor, `V = L⁻¹Gᵀ`, `G = VᵀV`, the dual active-set solve,
/// on one thread and on two (the second helps with `V` and `G`).
fn one_item(c: &mut Criterion) {
    let mut group = c.benchmark_group("qp-layer-one-item");
    group.sample_size(10);
    for n in [500usize, 1000] {
        let item = batch(n, 1, n as u64);
        for threads in [1usize, 2] {
            let id = format!("n{n}-t{threads}");
            group.bench_function(BenchmarkId::new("solve", &id), |b| {
                b.iter(|| black_box(solve(&item, threads, Default::default())))
            });
        }
    }
    group.finish();
}

/// The sparse families at the sizes the growth benchmark reports.
fn sparse_items() -> Vec<(String, SparseInstance)> {
    let mut out = Vec::new();
    for n in [1000usize, 10_000] {
        out.push((format!("banded-n{n}"), sparse_instances::banded(n)));
        out.push((format!("box-n{n}"), sparse_instances::box_projection(n)));
        out.push((
            format!("simplex-n{n}"),
            sparse_instances::simplex_projection(n),
        ));
    }
    for n in [300usize, 2000] {
        let inst = sparse_instances::random_sparse(&mut rng(n as u64), n, 8);
        out.push((format!("random-n{n}"), inst));
    }
    out
}

fn sparse_layer(c: &mut Criterion) {
    let mut group = c.benchmark_group("sparse-layer");
    group.sample_size(10);
    for (id, inst) in sparse_items() {
        let items = std::slice::from_ref(&inst.data);
        let n = inst.z_star.len();
        let upstream = [vector(&mut rng(11), n)];
        group.bench_function(BenchmarkId::new("solve", &id), |b| {
            b.iter(|| black_box(solve_sparse(items, 1, Default::default())))
        });
        let solved: Vec<_> = solve_sparse(items, 1, Default::default())
            .into_iter()
            .map(|s| s.expect("the families are feasible by construction"))
            .collect();
        // Def. 1's rates (the offset problem) next to the limit's: a block of weakly active
        // rows leaves in one round, so the two cost about the same.
        for (name, mode) in [
            ("gradients", Mode::Limit),
            ("contrastive", Mode::Contrastive(1e-3)),
        ] {
            group.bench_function(BenchmarkId::new(name, &id), |b| {
                b.iter(|| black_box(gradients_sparse(&solved, &upstream, 1, mode, false)))
            });
        }
    }
    group.finish();
}

// criterion's plots would need a registered font (as in `benches/limit.rs`).
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = layer, one_item, sparse_layer
}
criterion_main!(benches);
