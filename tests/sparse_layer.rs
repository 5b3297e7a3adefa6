//! `bilevel::layer::solve_sparse`, QP layers with sparse data, against independent answers:
//! the dense layer on the same data (itself checked against constructed solutions and
//! differences in `qp_layer.rs`), QPs constructed backwards with exactly representable ties,
//! one-sided differences of the forward solve along the loss at a large banded problem,
//! invariances (a row and its rescaled copy, a batch and its items, one thread and several),
//! and the errors of bad items.

use bilevel::app::verify::instances::{constructed_qp, rng, vector, ConstructedQp};
use bilevel::app::verify::sparse_instances;
use bilevel::layer::{
    gradients_sparse, solve, solve_sparse, solve_with, LayerSettings, Mode, QpData, QpSolution,
    SolvePath, SparseQpData, SparseQpSolution,
};
use bilevel::linalg::{csc_from_dense, csc_from_triplets, csc_to_dense, Csc};
use bilevel::nalgebra::{DMatrix, DVector};
use bilevel::prox::Activity::{self, Inactive, Strong, Weak};
use bilevel::solve::qp::{
    solve_exact, solve_sparse_exact, ClarabelSettings, DenseActiveSet, Qp, SparseQp, Tolerances,
};
use bilevel::Error;

fn dense_item(inst: &ConstructedQp) -> QpData {
    QpData {
        q: inst.q.clone(),
        p: -(&inst.b * &inst.theta + &inst.c),
        g: -&inst.constraints.a,
        h: -&inst.constraints.b,
        a: inst.constraints.a_eq.clone(),
        b: inst.constraints.b_eq.clone(),
    }
}

fn col(v: &DVector<f64>) -> DMatrix<f64> {
    DMatrix::from_column_slice(v.len(), 1, v.as_slice())
}

fn one(data: &SparseQpData) -> SparseQpSolution {
    solve_sparse(std::slice::from_ref(data), 1, Tolerances::default())
        .pop()
        .unwrap()
        .unwrap()
}

fn close(what: &str, a: &DMatrix<f64>, b: &DMatrix<f64>, scale: f64) {
    assert_eq!(a.shape(), b.shape(), "{what}");
    let err = (a - b).amax();
    assert!(err <= 1e-10 * scale.max(1.0), "{what}: {err:e}\n{a}\n{b}");
}

const LABELS: [Activity; 6] = [Strong, Weak, Inactive, Weak, Strong, Inactive];

#[test]
fn sparse_items_agree_with_the_dense_layer_at_strong_weak_and_inactive_rows() {
    let mut branches = (0, 0);
    for seed in 0..10 {
        let inst = constructed_qp(&mut rng(700 + seed), 9, 2, 1, &LABELS);
        let dense = dense_item(&inst);
        let d = solve(std::slice::from_ref(&dense), 1, Tolerances::default())
            .pop()
            .unwrap()
            .unwrap();
        let s = one(&SparseQpData::from(&dense));
        let scale = inst.z_star.amax();
        close("z", &col(s.z()), &col(d.z()), scale);
        assert_eq!(s.status().activity, inst.labels, "{seed}");
        assert!(
            s.status().residual < 1e-10,
            "{seed}: {}",
            s.status().residual
        );
        for sign in [1.0, -1.0] {
            let g = vector(&mut rng(800 + seed), 9) * sign;
            let gd = d.gradients(&g, Mode::Limit).unwrap();
            let gs = s.gradients(&g).unwrap();
            let scale = scale * g.amax() * (1.0 + inst.lambda.amax());
            close("dQ", &csc_to_dense(&gs.q), &gd.q, scale);
            close("dp", &col(&gs.p), &col(&gd.p), scale);
            close("dG", &csc_to_dense(&gs.g), &gd.g, scale);
            close("dh", &col(&gs.h), &col(&gd.h), scale);
            close("dA", &csc_to_dense(&gs.a), &gd.a, scale);
            close("db", &col(&gs.b), &col(&gd.b), scale);
            assert_eq!(gs.status.branches, gd.status.branches, "{seed} {sign}");
            for b in gs.status.branches.iter().flatten() {
                match b {
                    bilevel::prox::Branch::Leaves => branches.0 += 1,
                    bilevel::prox::Branch::Stays => branches.1 += 1,
                }
            }
        }
    }
    assert!(branches.0 > 0 && branches.1 > 0, "{branches:?}");
}

fn banded(n: usize) -> (SparseQpData, Vec<Activity>) {
    let inst = sparse_instances::banded(n);
    (inst.data, inst.labels)
}

fn entries(a: &Csc) -> Vec<(usize, usize, f64)> {
    let mut out = Vec::new();
    let (sym, val) = (a.symbolic(), a.val());
    for j in 0..a.ncols() {
        for p in sym.col_range(j) {
            out.push((sym.row_idx()[p], j, val[p]));
        }
    }
    out
}

#[test]
fn a_banded_layer_of_ten_thousand_units_is_exact_with_one_sided_rates() {
    let n = 10_000;
    let (item, labels) = banded(n);
    let sol = one(&item);
    assert_eq!(sol.status().activity, labels);
    let z_star = sparse_instances::banded(n).z_star;
    assert!(
        (sol.z() - &z_star).amax() < 1e-12,
        "{:e}",
        (sol.z() - &z_star).amax()
    );
    for sign in [1.0, -1.0] {
        let g = vector(&mut rng(900), n) * sign;
        let grads = sol.gradients(&g).unwrap();
        // One-sided difference of the forward solve along the loss: p + εg is the
        // loss-augmented problem at β = ε, so (z*(p + εg) − z*)/ε → ż = ∂ℓ/∂p.
        let eps = 1e-7;
        let mut moved = item.clone();
        moved.p += &g * eps;
        let rate = (one(&moved).z() - sol.z()) / eps;
        let err = (&grads.p - &rate).amax();
        assert!(err < 1e-5 * (1.0 + rate.amax()), "{sign}: {err:e}");
        // A QP's solution path is piecewise linear: at a small enough β Def. 1's rates are
        // the one-sided limit itself (Prop. 2), here from the sparse offset problem, with no
        // cancellation (1e-10, where the difference quotient above reaches 1e-5).
        let surrogate = sol.gradients_in(&g, Mode::Contrastive(eps)).unwrap();
        for (what, a, b) in [("p", &surrogate.p, &grads.p), ("h", &surrogate.h, &grads.h)] {
            let err = (a - b).amax();
            assert!(err < 1e-10 * (1.0 + b.amax()), "{sign} {what}: {err:e}");
        }
        // The gradients keep the data's patterns.
        for (data, grad) in [(&item.q, &grads.q), (&item.g, &grads.g)] {
            assert_eq!(data.symbolic().col_ptr(), grad.symbolic().col_ptr());
            assert_eq!(data.symbolic().row_idx(), grad.symbolic().row_idx());
        }
        let (stays, leaves) = grads
            .status
            .branches
            .iter()
            .flatten()
            .fold((0, 0), |c, b| match b {
                bilevel::prox::Branch::Stays => (c.0 + 1, c.1),
                bilevel::prox::Branch::Leaves => (c.0, c.1 + 1),
            });
        assert!(stays > 0 && leaves > 0, "{stays} {leaves}");
    }
}

#[test]
fn rescaling_a_row_rescales_its_gradients_and_nothing_else() {
    let (item, labels) = banded(60);
    let g = vector(&mut rng(901), 60);
    let base = one(&item);
    let base_grads = base.gradients(&g).unwrap();
    for s in [2f64.powi(-30), 3e-7, 1.0 / 3.0, 7.0, 4e9] {
        let mut scaled = item.clone();
        let row = 4; // a weak bound row (labels cycle strong, weak, inactive)
        let triplets: Vec<_> = (entries(&item.g).into_iter())
            .map(|(i, j, v)| (i, j, if i == row { v * s } else { v }))
            .collect();
        scaled.g = csc_from_triplets(item.g.nrows(), 60, &triplets).unwrap();
        scaled.h[row] *= s;
        let sol = one(&scaled);
        assert_eq!(sol.status().activity, labels, "{s}");
        let err = (sol.z() - base.z()).amax();
        assert!(err < 1e-12 * (1.0 + base.z().amax()), "{s}: {err:e}");
        let grads = sol.gradients(&g).unwrap();
        assert!((&grads.p - &base_grads.p).amax() < 1e-11, "{s}");
        for (r, want) in base_grads.h.iter().enumerate() {
            let want = if r == row { want / s } else { *want };
            assert!(
                (grads.h[r] - want).abs() <= 1e-11 * (1.0 + want.abs()),
                "{s} {r}"
            );
        }
    }
}

#[test]
fn a_batch_is_its_items_for_every_thread_count() {
    let items: Vec<SparseQpData> = (0..7)
        .map(|s| {
            SparseQpData::from(&dense_item(&constructed_qp(
                &mut rng(950 + s),
                8,
                1,
                1,
                &LABELS,
            )))
        })
        .collect();
    let grads: Vec<DVector<f64>> = (0..7).map(|s| vector(&mut rng(960 + s), 8)).collect();
    for mode in [Mode::Limit, Mode::Contrastive(0.2), Mode::Centered(1e-3)] {
        let reference: Vec<_> = items
            .iter()
            .zip(&grads)
            .map(|(item, g)| one(item).gradients_in(g, mode).unwrap())
            .collect();
        for threads in [1, 2, 3, 8] {
            let sols: Vec<SparseQpSolution> = solve_sparse(&items, threads, Tolerances::default())
                .into_iter()
                .map(|r| r.unwrap())
                .collect();
            let out = gradients_sparse(&sols, &grads, threads, mode, false).unwrap();
            for (o, r) in out.into_iter().zip(&reference) {
                let o = o.unwrap();
                assert_eq!(o.p, r.p, "{threads} {mode:?}");
                assert_eq!(o.g.val(), r.g.val(), "{threads} {mode:?}");
                assert_eq!(o.q.val(), r.q.val(), "{threads} {mode:?}");
            }
        }
    }
    let short = gradients_sparse(&[], &grads, 1, Mode::Limit, false);
    assert!(matches!(short, Err(Error::DimensionMismatch { .. })));
    // The condition estimate is Eq. 17's: asked for with a finite-β mode, an error naming it.
    let sols: Vec<SparseQpSolution> = items.iter().map(one).collect();
    match gradients_sparse(&sols, &grads, 1, Mode::Contrastive(0.1), true) {
        Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "condition"),
        other => panic!("{:?}", other.map(|v| v.len())),
    }
}

#[test]
fn bad_items_are_errors_naming_the_argument() {
    let eye = |n: usize, s: f64| {
        csc_from_triplets(n, n, &(0..n).map(|i| (i, i, s)).collect::<Vec<_>>()).unwrap()
    };
    let good = SparseQpData {
        q: eye(2, 1.0),
        p: DVector::from_vec(vec![1.0, -1.0]),
        g: eye(2, -1.0),
        h: DVector::zeros(2),
        a: csc_from_triplets(0, 2, &[]).unwrap(),
        b: DVector::zeros(0),
    };
    let err = |d: SparseQpData| {
        solve_sparse(&[d], 1, Tolerances::default())
            .pop()
            .unwrap()
            .unwrap_err()
    };
    let mut bad = good.clone();
    bad.p = DVector::zeros(3);
    assert!(matches!(err(bad), Error::DimensionMismatch { ref what, .. } if what == "p"));
    let mut bad = good.clone();
    bad.h[1] = f64::NAN;
    assert!(matches!(err(bad), Error::NonFinite { ref what } if what == "h"));
    let mut bad = good.clone();
    bad.q = csc_from_triplets(2, 2, &[(0, 0, 1.0), (0, 1, 0.5), (1, 1, 1.0)]).unwrap();
    assert!(matches!(err(bad), Error::NotPositiveDefinite { .. }));
    let mut bad = good.clone();
    bad.q = csc_from_triplets(2, 2, &[(0, 0, 1.0), (1, 1, -1.0)]).unwrap();
    assert!(matches!(err(bad), Error::NotPositiveDefinite { .. }));
    // z₁ ≤ −1 and −z₁ ≤ −1: no point, with a certificate checked on the data.
    let mut bad = good.clone();
    bad.g = csc_from_triplets(2, 2, &[(0, 0, 1.0), (1, 0, -1.0)]).unwrap();
    bad.h = DVector::from_vec(vec![-1.0, -1.0]);
    match err(bad) {
        Error::Infeasible(msg) => assert!(msg.contains("verified"), "{msg}"),
        other => panic!("{other}"),
    }
    let sol = one(&good);
    assert!(matches!(
        sol.gradients(&DVector::zeros(3)),
        Err(Error::DimensionMismatch { .. })
    ));
    let nan = DVector::from_vec(vec![0.0, f64::NAN]);
    assert!(matches!(sol.gradients(&nan), Err(Error::NonFinite { .. })));
}

/// Every family of the growth benchmark solves to its constructed answer, with its labels.
#[test]
fn the_benchmark_families_solve_to_their_constructed_answers() {
    let cases = [
        (
            "random sparse",
            sparse_instances::random_sparse(&mut rng(990), 400, 6),
        ),
        ("box", sparse_instances::box_projection(1000)),
        ("simplex", sparse_instances::simplex_projection(1000)),
    ];
    for (name, inst) in cases {
        let sol = one(&inst.data);
        let err = (sol.z() - &inst.z_star).amax();
        assert!(err < 1e-12 * (1.0 + inst.z_star.amax()), "{name}: {err:e}");
        assert_eq!(sol.status().activity, inst.labels, "{name}");
        let g = vector(&mut rng(991), inst.z_star.len());
        let eps = 1e-7;
        let mut moved = inst.data.clone();
        moved.p += &g * eps;
        let rate = (one(&moved).z() - sol.z()) / eps;
        let grads = sol.gradients(&g).unwrap();
        let err = (&grads.p - &rate).amax();
        assert!(err < 1e-5 * (1.0 + rate.amax()), "{name}: {err:e}");
    }
}

/// `Q = I` with the rows `G z ≤ h` given as `(row, column, value)` entries.
fn rows_item(p: &[f64], rows: &[(usize, usize, f64)], h: &[f64]) -> SparseQpData {
    let n = p.len();
    let eye: Vec<_> = (0..n).map(|i| (i, i, 1.0)).collect();
    SparseQpData {
        q: csc_from_triplets(n, n, &eye).unwrap(),
        p: DVector::from_row_slice(p),
        g: csc_from_triplets(h.len(), n, rows).unwrap(),
        h: DVector::from_row_slice(h),
        a: csc_from_triplets(0, n, &[]).unwrap(),
        b: DVector::zeros(0),
    }
}

/// An exactly dependent active row is set aside (active, multiplier zero, weak, listed as
/// dependent), as on the dense path. Of an exact copy the later one goes, as there, and every
/// gradient equals the dense path's along both branches of the copy. Of a row that is the sum
/// of two held ones, the dense path's choice follows its order of violation, which the sparse
/// path does not reproduce: both set one row aside, with the same `z*`, the same labels' counts,
/// and the same `∂/∂p` and `∂/∂Q` (those of the rows' own data are one element of a set-valued
/// derivative there).
#[test]
fn an_exactly_dependent_active_row_is_set_aside_as_on_the_dense_path() {
    // z₁ ≤ 1, the same row ×2, z₂ ≤ 1, z₃ ≤ 5 (inactive).
    let copy = [(0, 0, 1.0), (1, 0, 2.0), (2, 1, 1.0), (3, 2, 1.0)];
    let item = rows_item(&[-2.0, -1.5, -1.0], &copy, &[1.0, 2.0, 1.0, 5.0]);
    let s = one(&item);
    let d = with_path(&QpData::from(&item), SolvePath::Dense);
    assert_eq!(s.z(), d.z());
    assert_eq!(s.dependent(), &[1]);
    assert_eq!(s.status().activity, [Strong, Weak, Strong, Inactive]);
    assert_eq!(s.status().activity, d.status().activity);
    assert_eq!(s.multipliers().0.as_slice(), &[1.0, 0.0, 0.5, 0.0]);
    for loss in [[1.0, 0.0, 0.0], [-1.0, 0.5, 1.0], [0.0, -1.0, -1.0]] {
        let loss = DVector::from_row_slice(&loss);
        let (gs, gd) = (
            s.gradients(&loss).unwrap(),
            d.gradients(&loss, Mode::Limit).unwrap(),
        );
        assert_eq!(gs.status.branches, gd.status.branches);
        close("p", &col(&gs.p), &col(&gd.p), 1.0);
        close("h", &col(&gs.h), &col(&gd.h), 1.0);
        close("G", &csc_to_dense(&gs.g), &on(&item.g, &gd.g), 1.0);
        close("Q", &csc_to_dense(&gs.q), &on(&item.q, &gd.q), 1.0);
    }
    // z₁ ≤ 1, z₂ ≤ 1 and z₁ + z₂ ≤ 2: three active rows in two dimensions.
    let sum = [
        (0, 0, 1.0),
        (1, 1, 1.0),
        (2, 0, 1.0),
        (2, 1, 1.0),
        (3, 2, 1.0),
    ];
    let item = rows_item(&[-2.0, -1.5, -1.0], &sum, &[1.0, 1.0, 2.0, 5.0]);
    let s = one(&item);
    let d = with_path(&QpData::from(&item), SolvePath::Dense);
    assert_eq!(s.z(), d.z());
    assert_eq!(s.dependent().len(), 1);
    let i = s.dependent()[0];
    assert!(s.status().activity[i] == Weak && s.multipliers().0[i] == 0.0);
    let count = |a: &[Activity], k: Activity| a.iter().filter(|&&x| x == k).count();
    for k in [Strong, Weak, Inactive] {
        assert_eq!(
            count(&s.status().activity, k),
            count(&d.status().activity, k)
        );
    }
    for loss in [[1.0, 0.0, 0.0], [-1.0, 0.5, 1.0]] {
        let loss = DVector::from_row_slice(&loss);
        let (gs, gd) = (
            s.gradients(&loss).unwrap(),
            d.gradients(&loss, Mode::Limit).unwrap(),
        );
        close("p", &col(&gs.p), &col(&gd.p), 1.0);
        close("Q", &csc_to_dense(&gs.q), &on(&item.q, &gd.q), 1.0);
    }
}

fn with_path(item: &QpData, path: SolvePath) -> QpSolution {
    let settings = LayerSettings {
        path,
        ..LayerSettings::default()
    };
    solve_with(std::slice::from_ref(item), &settings)
        .pop()
        .unwrap()
        .unwrap()
}

/// `layer::solve` takes the sparse path for a large sparse dense-stored item (the banded chain
/// of 500 units with weak rows) and the dense path for a small dense one; either path gives the
/// same z*, labels and limit gradients, and on a small item forced onto the sparse path the
/// same gradients in every mode (the finite-β modes on the sparse offset problem).
#[test]
fn the_automatic_choice_takes_the_sparse_path_for_large_sparse_items_with_the_same_answers() {
    let n = 500;
    let inst = sparse_instances::banded(n);
    let item = QpData::from(&inst.data);
    assert!(bilevel::layer::prefers_sparse(&item));
    let auto = solve(std::slice::from_ref(&item), 1, Tolerances::default())
        .pop()
        .unwrap()
        .unwrap();
    assert!(
        auto.status().solver.contains("sparse"),
        "{}",
        auto.status().solver
    );
    let dense = with_path(&item, SolvePath::Dense);
    assert!(!dense.status().solver.contains("sparse"));
    assert_eq!(auto.status().activity, inst.labels);
    assert_eq!(dense.status().activity, inst.labels);
    close("z", &col(auto.z()), &col(dense.z()), 2.0);
    let g = vector(&mut rng(992), n);
    let (a, d) = (
        auto.gradients(&g, Mode::Limit).unwrap(),
        dense.gradients(&g, Mode::Limit).unwrap(),
    );
    close("dQ", &a.q, &d.q, 2.0);
    close("dp", &col(&a.p), &col(&d.p), 2.0);
    close("dG", &a.g, &d.g, 2.0);
    close("dh", &col(&a.h), &col(&d.h), 2.0);
    assert_eq!(a.status.branches, d.status.branches);
    let small = dense_item(&constructed_qp(&mut rng(993), 9, 2, 1, &LABELS));
    assert!(!bilevel::layer::prefers_sparse(&small));
    let forced = with_path(&small, SolvePath::Sparse);
    assert!(forced.status().solver.contains("sparse"));
    let dense = with_path(&small, SolvePath::Dense);
    close("z", &col(forced.z()), &col(dense.z()), 2.0);
    let g = vector(&mut rng(994), 9);
    for mode in [Mode::Limit, Mode::Contrastive(1e-3), Mode::Centered(1e-3)] {
        let (a, d) = (
            forced.gradients(&g, mode).unwrap(),
            dense.gradients(&g, mode).unwrap(),
        );
        close("dQ", &a.q, &d.q, 10.0);
        close("dG", &a.g, &d.g, 10.0);
        close("dA", &a.a, &d.a, 10.0);
        close("db", &col(&a.b), &col(&d.b), 10.0);
        assert_eq!(a.status.branches, d.status.branches, "{mode:?}");
    }
}

/// The sparse parametric layer (with `b` as its `B`) and the dense problem of an instance.
fn both_layers(
    inst: &ConstructedQp,
    b: Csc,
) -> (
    bilevel::layer::SparseQuadraticLayer,
    bilevel::problem::QuadraticProblem,
) {
    let cons = &inst.constraints;
    let eq = (!cons.b_eq.is_empty()).then(|| (csc_from_dense(&cons.a_eq), cons.b_eq.clone()));
    let sparse = bilevel::layer::SparseQuadraticLayer::new(
        csc_from_dense(&inst.q),
        (b, inst.c.clone()),
        (csc_from_dense(&cons.a), cons.b.clone()),
        eq,
        Tolerances::default(),
    )
    .unwrap();
    let dense = bilevel::problem::QuadraticProblem::new(
        inst.q.clone(),
        inst.b.clone(),
        inst.c.clone(),
        cons.clone(),
    )
    .unwrap();
    (sparse, dense)
}

#[test]
fn the_sparse_parametric_layer_is_the_dense_one_in_vjp_and_jvp_on_both_branches() {
    use bilevel::problem::Loss;
    use bilevel::surrogate::Bilevel;
    let mut one_sided = 0; // items where jvp(−v) ≠ −jvp(v): a weak row's branch mattered
    for seed in 0..6 {
        let k = seed % 2;
        let inst = constructed_qp(&mut rng(900 + seed as u64), 9, 3, k, &LABELS);
        let (sparse, dense) = both_layers(&inst, csc_from_dense(&inst.b));
        let sol = sparse
            .solve(std::slice::from_ref(&inst.theta), 1)
            .pop()
            .unwrap()
            .unwrap();
        let scale = inst.z_star.amax() * (1.0 + inst.lambda.amax());
        close("z", &col(sol.z()), &col(&inst.z_star), scale);
        close(
            "lambda",
            &col(sol.multipliers().0),
            &col(&inst.lambda),
            scale,
        );
        close(
            "lambda_eq",
            &col(sol.multipliers().1),
            &col(&inst.lambda_eq),
            scale,
        );
        assert_eq!(sol.status().activity, inst.labels);
        for sign in [1.0, -1.0] {
            let g = vector(&mut rng(950 + seed as u64), 9) * sign;
            let program = Bilevel::new(&dense, Loss::Linear { g: g.clone() }).unwrap();
            let expected = program.limit(&inst.theta).unwrap().grad_theta;
            close(
                "vjp",
                &col(&sparse.vjp(&sol, &g).unwrap()),
                &col(&expected),
                scale,
            );
            let v = vector(&mut rng(990 + seed as u64), 3) * sign;
            let expected = dense.jvp(&inst.theta, &v).unwrap().z_dot;
            let found = sparse.jvp(&sol, &v).unwrap();
            close("jvp", &col(&found), &col(&expected), scale);
            let back = sparse.jvp(&sol, &-&v).unwrap();
            one_sided += usize::from((found + back).amax() > 1e-8);
        }
    }
    assert!(one_sided > 0, "no weak row changed the rate");
}

/// Two strongly active rows `eps` apart (issue 25's case 4 as a family, `Q = I` so that the
/// dense path's metric is the sparse path's): both paths give the derivative while the rows
/// are resolved (the same `∂ℓ/∂p`), both refuse it (`Inaccurate`, never a confident rate) once
/// they are nearly parallel, and both take a duplicated row. Rows `1e-13` apart the dense path
/// calls dependent (its `1e-10` convention) and the sparse path refuses as not resolved.
#[test]
fn nearly_dependent_active_rows_are_inaccurate_on_both_paths() {
    use bilevel::nalgebra::{dmatrix, dvector};
    let cases = [
        (1e-3, [true, true]),
        (1e-5, [true, true]),
        (1e-8, [false, false]),
        (1e-13, [true, false]),
        (0.0, [true, true]),
    ];
    for (eps, given) in cases {
        // z* = (1, 1, 1); rows a₁ = (1, 1, 0), a₂ = (1, 1 + eps, 0), both tight with λ = (1, 1).
        let g = dmatrix![1.0, 1.0, 0.0; 1.0, 1.0 + eps, 0.0];
        let z = dvector![1.0, 1.0, 1.0];
        let item = QpData {
            q: DMatrix::identity(3, 3),
            p: -&z - g.transpose() * dvector![1.0, 1.0],
            h: &g * &z,
            g,
            a: DMatrix::zeros(0, 3),
            b: DVector::zeros(0),
        };
        let grad = dvector![0.3, -0.7, 0.2];
        let mut rates = Vec::new();
        for (path, given) in [SolvePath::Dense, SolvePath::Sparse].into_iter().zip(given) {
            let sol = with_path(&item, path);
            match (given, sol.gradients(&grad, Mode::Limit)) {
                (true, Ok(d)) => rates.push(d.p),
                (false, Err(Error::Inaccurate { .. })) => {}
                (_, other) => panic!("eps {eps:e}, {path:?}: {other:?}"),
            }
        }
        if let [dense, sparse] = &rates[..] {
            assert!(
                (dense - sparse).amax() < 1e-8,
                "eps {eps:e}: {dense} {sparse}"
            );
        }
    }
    let (c, theta) = (
        dvector![-0.570000013, 0.9499999905000002, -0.07999999299999994],
        0.5,
    );
    let g = dmatrix![
        -0.1, 0.54, -0.36;
        -0.100000013, 0.5399999905, -0.35999999299999996
    ];
    let item = QpData {
        q: DMatrix::identity(3, 3),
        p: -(c + dvector![theta, 0.0, 0.0]),
        g,
        h: dvector![-0.3136, -0.313599995975],
        a: DMatrix::zeros(0, 3),
        b: DVector::zeros(0),
    };
    let sol = with_path(&item, SolvePath::Sparse);
    let out = sol.gradients(&dvector![-1.27, -0.62, 0.04], Mode::Limit);
    assert!(matches!(out, Err(Error::Inaccurate { .. })), "{out:?}");
}

/// A QP with `n = 30` (the KKT matrix is larger than Lanczos' 16 steps), `P = MᵀM + I`, 20 rows,
/// `eps` moving row 1 towards row 0 (`0`: independent rows).
fn conditioned_qp(eps: f64) -> Qp {
    let mut r = rng(29);
    let (n, m) = (30, 20);
    let mm = DMatrix::from_fn(n, n, |_, _| vector(&mut r, 1)[0]);
    let p = mm.transpose() * &mm + DMatrix::identity(n, n);
    let mut a = DMatrix::from_fn(m, n, |_, _| vector(&mut r, 1)[0]);
    if eps > 0.0 {
        let row = a.row(0) * (1.0 - eps) + a.row(1) * eps;
        a.set_row(1, &row);
    }
    // Built backwards: x0 is the solution, rows 0 and 1 strongly active (λ = 1), the others
    // 1 from it.
    let x0 = vector(&mut r, n);
    let lambda = DVector::from_fn(m, |i, _| if i < 2 { 1.0 } else { 0.0 });
    let b = &a * &x0 - DVector::from_fn(m, |i, _| if i < 2 { 0.0 } else { 1.0 });
    Qp {
        q: a.transpose() * lambda - &p * &x0,
        p,
        a,
        b,
        a_eq: DMatrix::zeros(0, n),
        b_eq: DVector::zeros(0),
    }
}

fn sparse_copy(qp: &Qp) -> SparseQp {
    SparseQp {
        p: csc_from_dense(&qp.p),
        q: qp.q.clone(),
        a: csc_from_dense(&qp.a),
        b: qp.b.clone(),
        a_eq: csc_from_dense(&qp.a_eq),
        b_eq: qp.b_eq.clone(),
    }
}

#[test]
fn the_sparse_condition_estimate_is_the_dense_one_and_invariant_under_power_of_two_scaling() {
    let tol = Tolerances::default();
    for eps in [0.0, 1e-5] {
        let qp = conditioned_qp(eps);
        let dense = solve_exact(&DenseActiveSet, &qp, &tol).unwrap();
        let sparse =
            solve_sparse_exact(&sparse_copy(&qp), &tol, &ClarabelSettings::default()).unwrap();
        assert_eq!(sparse.solution.working, dense.working, "eps {eps}");
        assert!(dense.working[0] && dense.working[1], "eps {eps}");
        assert!(
            sparse.solution.condition.is_nan(),
            "computed on request only"
        );
        let (c, d) = (sparse.condition(), dense.condition);
        // The same matrix and the same Lanczos start: equal up to rounding in the iteration.
        assert!(
            (c - d).abs() <= 1e-6 * d,
            "eps {eps}: sparse {c:e}, dense {d:e}"
        );
        if eps > 0.0 {
            assert!(c > 1e8, "two active rows 1e-5 apart: condition {c:e}");
        } else {
            assert!(c < 1e6, "independent rows: condition {c:e}");
        }
        // The energy times 4, row i times 2^(i mod 5 − 2): the equilibrated matrix is the same.
        let mut scaled = sparse_copy(&qp);
        scaled.p = csc_from_dense(&(&qp.p * 4.0));
        scaled.q = &qp.q * 4.0;
        let s = DVector::from_fn(qp.b.len(), |i, _| 2f64.powi(i as i32 % 5 - 2));
        scaled.a = csc_from_dense(&DMatrix::from_fn(qp.a.nrows(), qp.a.ncols(), |i, j| {
            qp.a[(i, j)] * s[i]
        }));
        scaled.b = qp.b.component_mul(&s);
        let again = solve_sparse_exact(&scaled, &tol, &ClarabelSettings::default()).unwrap();
        let c2 = again.condition();
        assert!((c2 - c).abs() <= 1e-12 * c, "eps {eps}: {c2:e} vs {c:e}");
    }
}

/// `dense` with the entries outside `pattern`'s stored ones set to zero.
fn on(pattern: &Csc, dense: &DMatrix<f64>) -> DMatrix<f64> {
    let mut out = DMatrix::zeros(dense.nrows(), dense.ncols());
    for (i, j, _) in entries(pattern) {
        out[(i, j)] = dense[(i, j)];
    }
    out
}

/// `SparseQuadraticLayer::derive` against the dense layer's limit and `data_gradients` on the
/// same data: `ż`, `dL/dθ`, every datum's gradient (at the stored entries of a `B` with half
/// its entries dropped, `c` compensating), the branches and the condition estimate, for a
/// linear and a squared loss, along `±g` (both branches of the weak rows).
#[test]
fn the_sparse_layer_derive_is_the_dense_derivative_for_every_datum() {
    use bilevel::problem::Loss;
    use bilevel::surrogate::Bilevel;
    for seed in 0..4 {
        let k = seed % 2;
        let mut inst = constructed_qp(&mut rng(1200 + seed as u64), 9, 3, k, &LABELS);
        // B with every other entry dropped; c keeps Bθ + c (and so z*) unchanged.
        let b_full = inst.b.clone();
        inst.b = DMatrix::from_fn(9, 3, |i, j| {
            if (i + j) % 2 == 0 {
                b_full[(i, j)]
            } else {
                0.0
            }
        });
        inst.c += (&b_full - &inst.b) * &inst.theta;
        let b_sparse = csc_from_dense(&inst.b);
        assert_eq!(entries(&b_sparse).len(), 14, "B's pattern");
        let (sparse, dense) = both_layers(&inst, b_sparse.clone());
        let theta = &inst.theta;
        let sol = sparse
            .solve(std::slice::from_ref(theta), 1)
            .pop()
            .unwrap()
            .unwrap();
        let scale = inst.z_star.amax() * (1.0 + inst.lambda.amax());
        for (sign, squared) in [(1.0, false), (-1.0, false), (1.0, true), (-1.0, true)] {
            let g = vector(&mut rng(1250 + seed as u64), 9) * sign;
            let loss = match squared {
                false => Loss::Linear { g },
                true => Loss::Squared {
                    target: &inst.z_star - g,
                },
            };
            let found = sparse.derive(&sol, theta, &loss).unwrap();
            let program = Bilevel::new(&dense, loss).unwrap();
            let limit = program.limit(theta).unwrap();
            let d = &limit.direction;
            let want = dense.data_gradients(theta, &limit.z_star, d).unwrap();
            assert!((found.loss - limit.loss).abs() <= 1e-12 * scale * scale);
            close("z_dot", &col(&found.z_dot), &col(&d.z_dot), scale);
            close(
                "grad_theta",
                &col(&found.grad_theta),
                &col(&limit.grad_theta),
                scale,
            );
            close("Q", &csc_to_dense(&found.q), &want.q, scale);
            close("B", &csc_to_dense(&found.b), &on(&b_sparse, &want.b), scale);
            assert!(entries(&found.b).len() == 14 && want.b != on(&b_sparse, &want.b));
            close("c", &col(&found.c), &col(&want.c), scale);
            let wc = &want.constraints;
            close("A", &csc_to_dense(&found.a), &wc.a, scale);
            close("b", &col(&found.lower), &col(&wc.b), scale);
            close("A_eq", &csc_to_dense(&found.a_eq), &wc.a_eq, scale);
            close("b_eq", &col(&found.b_eq), &col(&wc.b_eq), scale);
            assert_eq!(found.status.branches, d.branches);
            assert_eq!(found.status.activity, inst.labels);
            // The residual covers z* and Eq. 17's system, as the dense derive's does.
            let dense_residual = limit.z_star.status.residual.max(d.residual);
            assert!(found.residual >= found.status.residual);
            assert!(found.residual.max(dense_residual) <= 1e-12 * scale.max(1.0));
            let rel = (found.condition - d.condition).abs() / d.condition;
            assert!(
                rel < 1e-6,
                "condition {} vs {}",
                found.condition,
                d.condition
            );
        }
    }
}

/// Def. 1's surrogate gradients on the sparse path (the sparse offset problem) against the
/// dense layer's (the dense offset problem) for every datum, at β from 1e-9 to 5 (rows
/// leaving and entering), both signs and the centred mean, with strongly and weakly active,
/// inactive and equality rows; and against an independent answer, the difference of two
/// forward solves: `∂/∂p` of the surrogate is `(ẑ_β − z*)/β` with `ẑ_β` the solution at
/// `p + βg` (at β = 0.3, where the quotient loses no more than a few digits).
#[test]
fn the_sparse_surrogates_are_the_dense_ones_and_the_rates_of_the_perturbed_solve() {
    let mut changed = 0;
    for seed in 0..6 {
        let inst = constructed_qp(&mut rng(1700 + seed), 9, 2, 1, &LABELS);
        let item = dense_item(&inst);
        let (s, d) = (
            one(&SparseQpData::from(&item)),
            with_path(&item, SolvePath::Dense),
        );
        let g = vector(&mut rng(1800 + seed), 9);
        let scale = inst.z_star.amax() * g.amax() * (1.0 + inst.lambda.amax());
        for beta in [1e-9, 1e-4, 0.3, 5.0] {
            for mode in [
                Mode::Contrastive(beta),
                Mode::Contrastive(-beta),
                Mode::Centered(beta),
            ] {
                let gs = s.gradients_in(&g, mode).unwrap();
                let gd = d.gradients(&g, mode).unwrap();
                let what = format!("{seed} {mode:?}");
                let scale = scale * (1.0 + beta);
                close(&format!("dQ {what}"), &csc_to_dense(&gs.q), &gd.q, scale);
                close(&format!("dp {what}"), &col(&gs.p), &col(&gd.p), scale);
                close(&format!("dG {what}"), &csc_to_dense(&gs.g), &gd.g, scale);
                close(&format!("dh {what}"), &col(&gs.h), &col(&gd.h), scale);
                close(&format!("dA {what}"), &csc_to_dense(&gs.a), &gd.a, scale);
                close(&format!("db {what}"), &col(&gs.b), &col(&gd.b), scale);
                assert!(gs.status.branches.iter().all(Option::is_none), "{what}");
                assert_eq!(gs.method, bilevel::problem::DirectionMethod::Offset);
                assert!(gs.condition.is_nan(), "{what}");
                assert!(gs.direction_residual < 1e-12 * scale, "{what}");
                // At β = 1e-9 Def. 1's rates are the limit's (a QP's path is piecewise linear),
                // on both paths (a weak row's rounding-level multiplier is not a rate of 1e-7);
                // some larger β moves a row off its bound or onto one.
                let limit = s.gradients(&g).unwrap();
                if mode == Mode::Contrastive(1e-9) {
                    for p in [&gs.p, &gd.p] {
                        let err = (p - &limit.p).amax();
                        assert!(err < 1e-13 * scale, "{what}: {err:e}");
                    }
                }
                if (&gs.h - &limit.h).amax() > 1e-6 {
                    changed += 1;
                }
            }
        }
        let beta = 0.3;
        let mut moved = item.clone();
        moved.p += &g * beta;
        let z_hat = with_path(&moved, SolvePath::Dense).z().clone();
        let rate = (&z_hat - s.z()) / beta;
        let gs = s.gradients_in(&g, Mode::Contrastive(beta)).unwrap();
        let err = (&gs.p - &rate).amax();
        assert!(err < 1e-12 * (1.0 + z_hat.amax()) / beta, "{seed}: {err:e}");
    }
    assert!(changed > 0);
}

/// A finite-β mode with a bad β is an error naming it, on the sparse path as on the dense one.
#[test]
fn a_sparse_surrogate_refuses_a_zero_or_non_finite_beta() {
    let item = dense_item(&constructed_qp(&mut rng(1900), 9, 2, 1, &LABELS));
    let s = one(&SparseQpData::from(&item));
    let g = vector(&mut rng(1901), 9);
    for beta in [0.0, f64::NAN, f64::INFINITY] {
        for mode in [Mode::Contrastive(beta), Mode::Centered(beta)] {
            match s.gradients_in(&g, mode) {
                Err(Error::InvalidBeta { .. }) => {}
                other => panic!("{mode:?}: {other:?}"),
            }
        }
    }
}

/// The sparse parametric layer's finite-β surrogates (Def. 1 with its value, Def. 2, the
/// centred gradient) against the dense `Bilevel`'s on the same data, linear and squared
/// losses, β from 1e-8 to 2 (rows leaving and entering), with and without equalities; the
/// centred surrogate of a squared loss refuses a β at which `Q − βI` is not positive definite
/// (decided by the sparse Cholesky factorization, against the dense smallest eigenvalue).
#[test]
fn the_sparse_layer_surrogates_are_the_dense_programs() {
    use bilevel::problem::Loss;
    use bilevel::surrogate::Bilevel;
    let mut refused = 0;
    for seed in 0..4u64 {
        let inst = constructed_qp(&mut rng(2100 + seed), 9, 3, (seed % 2) as usize, &LABELS);
        let (sparse, dense) = both_layers(&inst, csc_from_dense(&inst.b));
        let theta = &inst.theta;
        let sol = sparse.solve_one(theta).unwrap();
        let scale = inst.z_star.amax() * (1.0 + inst.lambda.amax());
        for squared in [false, true] {
            let g = vector(&mut rng(2150 + seed), 9);
            let loss = match squared {
                false => Loss::Linear { g },
                true => Loss::Squared {
                    target: &inst.z_star - g,
                },
            };
            let program = Bilevel::new(&dense, loss.clone()).unwrap();
            for beta in [1e-8, 1e-3, 0.3, 2.0] {
                let what = format!("{seed} {squared} {beta:e}");
                let tol = 1e-10 * scale * scale * (1.0 + beta);
                for def2 in [false, true] {
                    let (s, d) = match def2 {
                        false => (
                            sparse.surrogate(&sol, theta, (&loss, beta)).unwrap(),
                            program.surrogate(theta, beta).unwrap(),
                        ),
                        true => (
                            sparse.linearized(&sol, theta, (&loss, beta)).unwrap(),
                            program.linearized(theta, beta).unwrap(),
                        ),
                    };
                    let what = format!("{what} {def2}: {} {}", s.value, d.value);
                    assert!((s.value - d.value).abs() <= tol, "{what}");
                    close(&what, &col(&s.grad_theta), &col(&d.grad_theta), tol);
                    close(&what, &col(&s.z_hat), &col(&d.z_hat.z), tol);
                    close(&what, &col(&s.rate), &col(&d.rate), tol);
                    if !def2 {
                        // Prop. 3's band: ν a lower bound of λ_min within 1/64 (the dense
                        // band's ν is λ_min), the loss inside it, the upper side at most a
                        // 60th of the width above the dense one.
                        let sb = sparse.band(&sol, &s, &loss).unwrap().unwrap();
                        let db = program.band_of(&d).unwrap();
                        assert!(
                            sb.nu <= db.nu && sb.nu >= db.nu * (1.0 - 1.0 / 64.0),
                            "{what}"
                        );
                        assert!(sb.lower <= sb.loss && sb.loss <= sb.upper, "{what}");
                        let width = db.upper - db.lower;
                        let extra = sb.upper - db.upper;
                        assert!(extra >= -tol && extra <= width / 60.0 + tol, "{what}");
                    }
                }
                let nu = bilevel::linalg::min_eigenvalue(&inst.q);
                let centered = sparse.centered(&sol, theta, (&loss, beta));
                if squared && beta >= nu {
                    assert!(
                        matches!(centered, Err(Error::BetaOutOfRange { .. })),
                        "{what}"
                    );
                    refused += 1;
                    continue;
                }
                let (s, d) = (centered.unwrap(), program.centered(theta, beta).unwrap());
                close(&what, &col(&s.grad_theta), &col(&d.grad_theta), tol);
                close(&what, &col(&s.z_minus), &col(&d.z_minus.z), tol);
            }
        }
        let linear = Loss::Linear {
            g: DVector::zeros(9),
        };
        for beta in [0.0, -1.0, f64::NAN] {
            let bad = sparse.surrogate(&sol, theta, (&linear, beta));
            assert!(matches!(bad, Err(Error::InvalidBeta { .. })), "{beta}");
        }
    }
    assert!(refused > 0);
}

/// Four equality rows on three units: a row, its copy ×2, a second row, the sum of the two.
const DEPENDENT_EQ: [(usize, usize, f64); 9] = [
    (0, 0, 1.0),
    (0, 1, 1.0),
    (1, 0, 2.0),
    (1, 1, 2.0),
    (2, 1, 1.0),
    (2, 2, 1.0),
    (3, 0, 1.0),
    (3, 1, 2.0),
    (3, 2, 1.0),
];

/// An exactly dependent equality row (a copy ×2, and a sum of two others) with a consistent
/// right-hand side is set aside as on the dense path: multiplier zero, listed in
/// `dependent_equalities`, and every gradient, `A`'s and `b`'s included, equals the dense
/// path's along several losses.
#[test]
fn an_exactly_dependent_equality_row_is_set_aside_as_on_the_dense_path() {
    // z₁ + z₂ = 1, its copy ×2, z₂ + z₃ = 0.5, their sum = 1.5; z₁ ≤ 0.25 (active).
    let mut item = rows_item(&[-2.0, -1.0, 0.5, -1.0], &[(0, 0, 1.0)], &[0.25]);
    item.a = csc_from_triplets(4, 4, &DEPENDENT_EQ).unwrap();
    item.b = DVector::from_row_slice(&[1.0, 2.0, 0.5, 1.5]);
    let s = one(&item);
    let d = with_path(&QpData::from(&item), SolvePath::Dense);
    close("z", &col(s.z()), &col(d.z()), 1.0);
    assert_eq!(s.dependent_equalities(), &[1, 3]);
    let lambda_eq = s.multipliers().1;
    assert!(lambda_eq[1] == 0.0 && lambda_eq[3] == 0.0, "{lambda_eq}");
    for loss in [
        [1.0, 0.0, 0.0, 0.0],
        [-1.0, 0.5, 1.0, 0.0],
        [0.0, -1.0, -1.0, 2.0],
    ] {
        let loss = DVector::from_row_slice(&loss);
        for mode in [Mode::Limit, Mode::Contrastive(0.1)] {
            let (gs, gd) = (
                s.gradients_in(&loss, mode).unwrap(),
                d.gradients(&loss, mode).unwrap(),
            );
            close("p", &col(&gs.p), &col(&gd.p), 1.0);
            close("h", &col(&gs.h), &col(&gd.h), 1.0);
            close("b", &col(&gs.b), &col(&gd.b), 1.0);
            close("A", &csc_to_dense(&gs.a), &on(&item.a, &gd.a), 1.0);
            close("Q", &csc_to_dense(&gs.q), &on(&item.q, &gd.q), 1.0);
        }
    }
}

/// Dependent equalities whose right-hand sides disagree: beyond the feasibility tolerance both
/// paths answer `Infeasible` (the sparse path with `u = ±(e_i − y)` from its factor, checked
/// on the data), within it both set the row aside and agree on `z`. With and without
/// inequality rows (with them Clarabel runs first).
#[test]
fn inconsistent_dependent_equalities_are_infeasible_on_both_paths() {
    let mut decided = (0, 0);
    for rows in [&[(0, 0, 1.0)][..], &[]] {
        let h: &[f64] = if rows.is_empty() { &[] } else { &[0.25] };
        // (b, consistent to the feasibility tolerance 1e-9 of |b_i| + Σ|y_j b_j|)
        for (b, consistent) in [
            ([1.0, 2.0 + 1e-3, 0.5, 1.5], false),
            ([1.0, 2.0, 0.5, 1.5 - 1e-6], false),
            ([1.0, 2.0 + 1e-13, 0.5, 1.5], true),
            ([1.0, 2.0, 0.5, 1.5 + 1e-13], true),
        ] {
            let mut item = rows_item(&[-2.0, -1.0, 0.5, -1.0], rows, h);
            item.a = csc_from_triplets(4, 4, &DEPENDENT_EQ).unwrap();
            item.b = DVector::from_row_slice(&b);
            let sparse = solve_sparse(std::slice::from_ref(&item), 1, Tolerances::default())
                .pop()
                .unwrap();
            let settings = LayerSettings {
                path: SolvePath::Dense,
                ..LayerSettings::default()
            };
            let dense = solve_with(&[QpData::from(&item)], &settings).pop().unwrap();
            if consistent {
                let (s, d) = (sparse.unwrap(), dense.unwrap());
                close("z", &col(s.z()), &col(d.z()), 1.0);
                assert_eq!(s.dependent_equalities(), &[1, 3]);
                decided.0 += 1;
            } else {
                assert!(
                    matches!(sparse, Err(Error::Infeasible(_))),
                    "{b:?}: {sparse:?}"
                );
                assert!(
                    matches!(dense, Err(Error::Infeasible(_))),
                    "{b:?}: {dense:?}"
                );
                decided.1 += 1;
            }
        }
    }
    assert_eq!(decided, (4, 4));
}
