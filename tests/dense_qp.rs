//! The dense dual active-set solver (`solve::qp::DenseFactor`) against independent answers: Clarabel
//! followed by the exact refinement, brute-force enumeration of the working sets, constructed
//! solutions with weakly active rows; infeasibility certificates, dependent rows, and one
//! factorization reused across right-hand sides and row subsets.

use bilevel::app::verify::instances::{constructed_qp, matrix, rng, spd, vector};
use bilevel::prelude::*;
use bilevel::solve::qp::{solve_by_enumeration, solve_exact, solve_exact_dense, Qp, DENSE};
use bilevel::solve::qp::{DenseFactor, Row};
use nalgebra::{dmatrix, dvector, DMatrix, DVector};

fn all_rows(qp: &Qp) -> Vec<usize> {
    (0..qp.b.len() + qp.b_eq.len()).collect()
}

fn random_qp(seed: u64, n: usize, m: usize, k: usize) -> Qp {
    let mut r = rng(seed);
    Qp {
        p: spd(&mut r, n, 0.2),
        q: vector(&mut r, n) * 3.0,
        a: matrix(&mut r, m, n),
        b: vector(&mut r, m),
        a_eq: matrix(&mut r, k, n),
        b_eq: vector(&mut r, k),
    }
}

#[test]
fn agrees_with_clarabel_and_the_exact_refinement() {
    let tol = Tolerances::default();
    let mut checked = 0;
    for seed in 0..60 {
        let n = 3 + (seed as usize % 25);
        let (m, k) = (1 + (seed as usize * 7) % (2 * n), seed as usize % 3);
        let qp = random_qp(seed, n, m, k.min(n - 1));
        let reference = match solve_exact(&Clarabel::default(), &qp, &tol) {
            Ok(s) => s,
            Err(Error::Infeasible(_)) => {
                let f = DenseFactor::new(&qp.p, &qp.a, &qp.a_eq).unwrap();
                let e = solve_exact_dense(&f, &qp, &all_rows(&qp), &tol).unwrap_err();
                assert!(matches!(e, Error::Infeasible(_)), "seed {seed}: {e}");
                continue;
            }
            Err(e) => panic!("seed {seed}: reference failed: {e}"),
        };
        let f = DenseFactor::new(&qp.p, &qp.a, &qp.a_eq).unwrap();
        let s = solve_exact_dense(&f, &qp, &all_rows(&qp), &tol).unwrap();
        assert_eq!(s.backend, DENSE, "seed {seed}: fell back");
        assert!(s.fallback.is_none());
        let scale = 1.0 + reference.x.amax();
        assert!((&s.x - &reference.x).amax() < 1e-12 * scale, "seed {seed}");
        let lscale = 1.0 + reference.lambda.amax().max(reference.lambda_eq.amax());
        assert!(
            (&s.lambda - &reference.lambda).amax() < 1e-10 * lscale,
            "seed {seed}"
        );
        assert!(
            (&s.lambda_eq - &reference.lambda_eq).amax() < 1e-10 * lscale,
            "seed {seed}"
        );
        assert_eq!(s.activity, reference.activity, "seed {seed}");
        assert!(
            s.residual < 1e-12 * (1.0 + qp.q.amax()) * lscale,
            "seed {seed}: {}",
            s.residual
        );
        assert!(
            (s.condition / reference.condition - 1.0).abs() < 1e-6,
            "seed {seed}"
        );
        checked += 1;
    }
    assert!(checked > 40, "only {checked} feasible instances");
}

#[test]
fn agrees_with_enumeration_of_every_working_set() {
    // Up to 12 inequalities, more than the variables: degenerate vertices included.
    let tol = Tolerances::default();
    for seed in 0..40 {
        let n = 2 + seed as usize % 5;
        let m = 1 + (seed as usize * 5) % 12;
        let qp = random_qp(100 + seed, n, m, 0);
        let f = DenseFactor::new(&qp.p, &qp.a, &qp.a_eq).unwrap();
        match (
            solve_by_enumeration(&qp, &tol),
            solve_exact_dense(&f, &qp, &all_rows(&qp), &tol),
        ) {
            (Ok(x), Ok(s)) => assert!((&s.x - &x).amax() < 1e-10 * (1.0 + x.amax()), "seed {seed}"),
            (Err(Error::Infeasible(_)), Err(Error::Infeasible(_))) => {}
            (a, b) => panic!("seed {seed}: enumeration {a:?}, dense {:?}", b.map(|s| s.x)),
        }
    }
}

#[test]
fn constructed_solutions_with_weakly_active_rows_are_recovered_exactly() {
    use Activity::{Inactive, Strong, Weak};
    let tol = Tolerances::default();
    for seed in 0..20 {
        let n = 6 + seed as usize % 30;
        let labels: Vec<Activity> = (0..n / 2)
            .map(|i| [Strong, Weak, Inactive][(i + seed as usize) % 3])
            .collect();
        let inst = constructed_qp(&mut rng(seed), n, 3, 1, &labels);
        let qp = Qp {
            p: inst.q.clone(),
            q: -(&inst.b * &inst.theta + &inst.c),
            a: inst.constraints.a.clone(),
            b: inst.constraints.b.clone(),
            a_eq: inst.constraints.a_eq.clone(),
            b_eq: inst.constraints.b_eq.clone(),
        };
        let f = DenseFactor::new(&qp.p, &qp.a, &qp.a_eq).unwrap();
        let s = solve_exact_dense(&f, &qp, &all_rows(&qp), &tol).unwrap();
        assert!(
            (&s.x - &inst.z_star).amax() < 1e-12 * (1.0 + inst.z_star.amax()),
            "seed {seed}"
        );
        assert!((&s.lambda - &inst.lambda).amax() < 1e-11, "seed {seed}");
        assert_eq!(s.activity, inst.labels, "seed {seed}");
    }
}

#[test]
fn infeasibility_is_proved_and_dependent_rows_are_handled() {
    let tol = Tolerances::default();
    // x₁ ≥ 1 and −x₁ ≥ 0.
    let qp = Qp {
        p: DMatrix::identity(2, 2),
        q: dvector![0.0, 0.0],
        a: dmatrix![1.0, 0.0; -1.0, 0.0],
        b: dvector![1.0, 0.0],
        a_eq: DMatrix::zeros(0, 2),
        b_eq: DVector::zeros(0),
    };
    let f = DenseFactor::new(&qp.p, &qp.a, &qp.a_eq).unwrap();
    let e = solve_exact_dense(&f, &qp, &all_rows(&qp), &tol).unwrap_err();
    assert!(matches!(e, Error::Infeasible(_)), "{e}");
    // A duplicated active row (LICQ fails): the solution is still exact, the copy reported as
    // dependent with a zero multiplier.
    let qp = Qp {
        p: DMatrix::identity(2, 2),
        q: dvector![1.0, 1.0],
        a: dmatrix![1.0, 0.0; 1.0, 0.0; 0.0, 1.0],
        b: dvector![1.0, 1.0, -5.0],
        a_eq: DMatrix::zeros(0, 2),
        b_eq: DVector::zeros(0),
    };
    let f = DenseFactor::new(&qp.p, &qp.a, &qp.a_eq).unwrap();
    let s = solve_exact_dense(&f, &qp, &all_rows(&qp), &tol).unwrap();
    assert!((&s.x - dvector![1.0, -1.0]).amax() < 1e-15);
    assert!((s.lambda[0] + s.lambda[1] - 2.0).abs() < 1e-14);
    assert_eq!(s.dependent.len(), 1);
    // Dependent equality rows and a P that is not positive definite are errors, not panics.
    let e = DenseFactor::new(
        &dmatrix![1.0, 0.0; 0.0, -1.0],
        &DMatrix::zeros(0, 2),
        &DMatrix::zeros(0, 2),
    );
    assert!(matches!(e, Err(Error::NotPositiveDefinite { .. })));
    let f = DenseFactor::new(
        &DMatrix::identity(2, 2),
        &DMatrix::zeros(0, 2),
        &dmatrix![1.0, 1.0; 2.0, 2.0],
    )
    .unwrap();
    let e = f.solve(
        &dvector![0.0, 0.0],
        &dvector![1.0, 2.0],
        &[Row::Equality, Row::Equality],
    );
    assert!(matches!(e, Err(Error::Singular(_))), "{e:?}");
    // Shapes are checked.
    assert!(f
        .solve(
            &dvector![0.0],
            &dvector![1.0, 2.0],
            &[Row::Equality, Row::Equality]
        )
        .is_err());
    assert!(solve_exact_dense(&f, &qp, &[0, 1, 2], &tol).is_err());
}

#[test]
fn one_factor_serves_many_right_hand_sides_and_row_subsets() {
    // The same factor of P and all rows, for ten linear terms and for a subset of the rows
    // (the others Off): each equals a solve with a factor of exactly those rows.
    let tol = Tolerances::default();
    let qp = random_qp(7, 30, 24, 2);
    let f = DenseFactor::new(&qp.p, &qp.a, &qp.a_eq).unwrap();
    for seed in 0..10 {
        let mut q = qp.clone();
        q.q = vector(&mut rng(1000 + seed), 30) * 4.0;
        let shared = solve_exact_dense(&f, &q, &all_rows(&q), &tol).unwrap();
        let fresh = solve_exact(&Clarabel::default(), &q, &tol).unwrap();
        assert!((&shared.x - &fresh.x).amax() < 1e-12 * (1.0 + fresh.x.amax()));
        // Rows 3..15 only, and the second equality only.
        let keep: Vec<usize> = (3..15).collect();
        let sub = Qp {
            a: bilevel::linalg::select_rows(&q.a, &keep),
            b: DVector::from_fn(keep.len(), |j, _| q.b[keep[j]]),
            a_eq: q.a_eq.rows(1, 1).into_owned(),
            b_eq: q.b_eq.rows(1, 1).into_owned(),
            ..q.clone()
        };
        let rows: Vec<usize> = keep.iter().copied().chain([24 + 1]).collect();
        let subset = solve_exact_dense(&f, &sub, &rows, &tol).unwrap();
        let direct = solve_exact(&Clarabel::default(), &sub, &tol).unwrap();
        assert!((&subset.x - &direct.x).amax() < 1e-12 * (1.0 + direct.x.amax()));
        assert_eq!(subset.activity, direct.activity);
    }
}

#[test]
fn the_layer_and_its_prop2_direction_match_the_interior_point_path() {
    // QuadraticProblem's default (dense, stored factor) against the same layer on Clarabel:
    // z*, multipliers, ż, branches and the gradient, on layers with weakly active rows.
    use std::sync::Arc;
    use Activity::{Inactive, Strong, Weak};
    for seed in 0..15 {
        let n = 8 + seed as usize % 20;
        let labels: Vec<Activity> = (0..n / 2)
            .map(|i| [Weak, Strong, Inactive][(i + seed as usize) % 3])
            .collect();
        let inst = constructed_qp(&mut rng(50 + seed), n, 4, 1, &labels);
        let layer = inst.layer().unwrap();
        let loss = Loss::Linear {
            g: vector(&mut rng(seed), n),
        };
        let dense = Bilevel::new(layer.clone(), loss.clone()).unwrap();
        let ipm = Bilevel::new(layer.with_backend(Arc::new(Clarabel::default())), loss).unwrap();
        let (a, b) = (
            dense.limit(&inst.theta).unwrap(),
            ipm.limit(&inst.theta).unwrap(),
        );
        assert_eq!(a.z_star.status.solver, DENSE);
        assert!((&a.z_star.z - &b.z_star.z).amax() < 1e-12 * (1.0 + b.z_star.z.amax()));
        assert!(
            (&a.direction.z_dot - &b.direction.z_dot).amax()
                < 1e-10 * (1.0 + b.direction.z_dot.amax()),
            "seed {seed}"
        );
        assert_eq!(a.direction.branches, b.direction.branches, "seed {seed}");
        assert!((&a.grad_theta - &b.grad_theta).amax() < 1e-10 * (1.0 + b.grad_theta.amax()));
    }
}

#[test]
fn condition_estimates_are_close_to_the_exact_condition_from_below() {
    // Lanczos on K and K⁻¹ (16 steps each) against the eigenvalues of the KKT matrix
    // [P Aᵀ; A 0] of random QPs: never above the exact 2-norm condition, within 5 % of it
    // (exact up to rounding when the size is at most 16).
    for seed in 0..12u64 {
        let n = [3usize, 10, 12, 40, 120, 250][seed as usize % 6];
        let m = n / 3;
        let mut r = rng(300 + seed);
        let p = spd(&mut r, n, 0.05 + 0.1 * seed as f64);
        let a = matrix(&mut r, m, n);
        let mut k = DMatrix::zeros(n + m, n + m);
        k.view_mut((0, 0), (n, n)).copy_from(&p);
        k.view_mut((n, 0), (m, n)).copy_from(&a);
        k.view_mut((0, n), (n, m)).copy_from(&a.transpose());
        let eig = k.clone().symmetric_eigenvalues();
        let exact = eig.amax() / eig.iter().fold(f64::INFINITY, |s, v| s.min(v.abs()));
        let lu = k.clone().lu();
        let est = bilevel::linalg::condition_estimate(&k, |v| lu.solve(v));
        assert!(est <= exact * (1.0 + 1e-9), "n {n}: {est} > {exact}");
        let floor = if n + m <= 16 { 1.0 - 1e-9 } else { 0.95 };
        assert!(est >= floor * exact, "n {n}: {est} vs {exact}");
    }
}

#[test]
fn tridiagonal_extremes_match_a_dense_eigensolver() {
    use bilevel::linalg::tridiagonal_extremes;
    for seed in 0..30u64 {
        let n = 1 + seed as usize % 20;
        let mut r = rng(500 + seed);
        let alpha: Vec<f64> = vector(&mut r, n)
            .iter()
            .map(|v| v * 10f64.powi((seed % 7) as i32 - 3))
            .collect();
        let mut beta: Vec<f64> = vector(&mut r, n.saturating_sub(1))
            .iter()
            .copied()
            .collect();
        if seed % 5 == 0 && n > 2 {
            beta[n / 2 - 1] = 0.0; // a split matrix
        }
        let t = DMatrix::from_fn(n, n, |i, j| match i.abs_diff(j) {
            0 => alpha[i],
            1 => beta[i.min(j)],
            _ => 0.0,
        });
        let eig = t.symmetric_eigenvalues();
        let (lo, hi) = tridiagonal_extremes(&alpha, &beta);
        // The documented accuracy: 1e-10 of the Gershgorin interval's magnitude.
        let scale = (0..n)
            .map(|i| t.row(i).iter().map(|v| v.abs()).sum::<f64>())
            .fold(1e-300, f64::max);
        let (emin, emax) = (eig.min(), eig.max());
        assert!(
            (lo - emin).abs() <= 1e-10 * scale,
            "seed {seed}: {lo} vs {emin}"
        );
        assert!(
            (hi - emax).abs() <= 1e-10 * scale,
            "seed {seed}: {hi} vs {emax}"
        );
    }
}

#[test]
fn a_batch_is_its_items_in_order_on_any_number_of_threads() {
    use Activity::{Inactive, Strong, Weak};
    let labels: Vec<Activity> = (0..12).map(|i| [Strong, Weak, Inactive][i % 3]).collect();
    let inst = constructed_qp(&mut rng(77), 30, 4, 1, &labels);
    let layer = QuadraticProblem::new(inst.q, inst.b, inst.c, inst.constraints).unwrap();
    let program = Bilevel::new(
        layer,
        Loss::Linear {
            g: vector(&mut rng(78), 30),
        },
    )
    .unwrap();
    let mut thetas: Vec<DVector<f64>> = (0..21).map(|i| vector(&mut rng(200 + i), 4)).collect();
    thetas.push(inst.theta.clone()); // the constructed point: weakly active rows
    thetas.insert(5, dvector![1.0, 2.0]); // wrong length: this item fails, the others do not
    let single: Vec<_> = thetas.iter().map(|t| program.limit(t)).collect();
    for threads in [1, 2, 3, 64] {
        let batch = program.limit_batch(&thetas, threads).unwrap();
        assert_eq!(batch.len(), thetas.len());
        for (i, (b, s)) in batch.iter().zip(&single).enumerate() {
            match (b, s) {
                (Ok(b), Ok(s)) => {
                    assert_eq!(b.grad_theta, s.grad_theta, "item {i}, {threads} threads");
                    assert_eq!(b.direction.branches, s.direction.branches);
                    assert_eq!(b.z_star.status.iterations, s.z_star.status.iterations);
                }
                (Err(b), Err(s)) => assert_eq!(b.to_string(), s.to_string()),
                _ => panic!("item {i}: batch and single disagree on success"),
            }
        }
        assert!(batch[5].is_err());
        let last = batch.last().unwrap().as_ref().unwrap();
        assert!(last.direction.branches.iter().any(Option::is_some));
    }
    assert!(program.limit_batch(&thetas, 0).is_err());
    assert!(program.limit_batch(&[], 2).unwrap().is_empty());
}

#[test]
fn a_large_layer_factored_on_two_threads_answers_as_on_one() {
    use Activity::{Inactive, Strong, Weak};
    // n²r/2 + nr² = 6.9e6 multiply-adds: above the work that starts a team for the factor.
    let (n, r) = (240, 120);
    let labels: Vec<Activity> = (0..r).map(|i| [Strong, Weak, Inactive][i % 3]).collect();
    let inst = constructed_qp(&mut rng(91), n, 3, 0, &labels);
    let program = || {
        let g = vector(&mut rng(92), n);
        Bilevel::new(inst.layer().unwrap(), Loss::Linear { g }).unwrap()
    };
    let (alone, batch) = (program(), program());
    let single = alone.limit(&inst.theta).unwrap();
    // One item on two threads: the batch's spare thread helps factor the layer.
    let item = batch
        .limit_batch(std::slice::from_ref(&inst.theta), 2)
        .unwrap();
    let item = item[0].as_ref().unwrap();
    assert_eq!(item.z_star.z, single.z_star.z);
    assert_eq!(item.grad_theta, single.grad_theta);
    assert_eq!(item.direction.branches, single.direction.branches);
    assert!(single.direction.branches.iter().any(Option::is_some));
}
