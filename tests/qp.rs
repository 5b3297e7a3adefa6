//! Constrained quadratic problems: solutions, multipliers and activity labels against the
//! construction, the Prop. 2 direction against brute-force enumeration and one-sided finite
//! differences, and API misuse. Every test runs on each available QP backend.

use std::sync::Arc;

use approx::assert_relative_eq;
use bilevel::linalg::{select_rows, vstack};
use bilevel::prelude::*;
use bilevel::solve::qp::{solve_by_enumeration, solve_exact, Qp};
use bilevel::verify::instances::{constructed_qp, rng, vector, ConstructedQp};
use nalgebra::{dmatrix, dvector, DMatrix, DVector};

fn backends() -> Vec<Arc<dyn QpBackend>> {
    #[allow(unused_mut)]
    let mut v: Vec<Arc<dyn QpBackend>> = vec![Arc::new(Clarabel::default())];
    #[cfg(feature = "osqp")]
    v.push(Arc::new(bilevel::solve::qp::Osqp::default()));
    v
}

use Activity::{Inactive, Strong, Weak};
const LABELS: [Activity; 7] = [Strong, Weak, Inactive, Weak, Strong, Inactive, Weak];

fn problem(inst: &ConstructedQp, backend: &Arc<dyn QpBackend>) -> QuadraticProblem {
    QuadraticProblem::new(
        inst.q.clone(),
        inst.b.clone(),
        inst.c.clone(),
        inst.constraints.clone(),
    )
    .unwrap()
    .with_backend(backend.clone())
}

#[test]
fn constructed_qp_recovers_solution_multipliers_and_labels() {
    for backend in backends() {
        for seed in 0..25 {
            let inst = constructed_qp(&mut rng(seed), 9, 3, 1, &LABELS);
            let p = problem(&inst, &backend);
            let zero = Loss::Linear {
                g: DVector::zeros(9),
            };
            let sol = p.solve(&inst.theta, &zero, 0.0).unwrap();
            // The exact KKT solve on a system with condition ≲ 1e3 leaves errors ~1e-13;
            // 1e-9 is the accuracy the crate promises for well-conditioned problems.
            assert_relative_eq!(sol.z, inst.z_star, epsilon = 1e-9, max_relative = 1e-9);
            assert_relative_eq!(sol.multipliers, inst.lambda, epsilon = 1e-9);
            assert_relative_eq!(sol.multipliers_eq, inst.lambda_eq, epsilon = 1e-9);
            assert_eq!(sol.activity, inst.labels, "seed {seed}, {}", backend.name());
            assert!(
                sol.status.residual < 1e-10,
                "residual {}",
                sol.status.residual
            );
        }
    }
}

#[test]
fn exact_refinement_agrees_with_enumeration_on_random_forward_qps() {
    // Forward (not constructed) instances: whatever the backend identifies, the refined point
    // must equal the unique KKT point found by trying all 2^m working sets.
    for backend in backends() {
        for seed in 0..20 {
            let mut r = rng(100 + seed);
            let n = 6;
            let qp = Qp {
                p: bilevel::verify::instances::spd(&mut r, n, 0.2),
                q: vector(&mut r, n) * 3.0,
                a: bilevel::verify::instances::matrix(&mut r, 8, n),
                b: vector(&mut r, 8) * 0.5 - DVector::from_element(8, 0.5),
                a_eq: DMatrix::zeros(0, n),
                b_eq: DVector::zeros(0),
            };
            let exact = solve_exact(backend.as_ref(), &qp, &Tolerances::default()).unwrap();
            let reference = solve_by_enumeration(&qp, &Tolerances::default()).unwrap();
            assert_relative_eq!(exact.x, reference, epsilon = 1e-10, max_relative = 1e-10);
        }
    }
}

/// The direction QP of Eq. 17 built from the construction's labels (not from the solver's
/// classification), solved by enumeration.
fn eq17_reference(inst: &ConstructedQp, g: &DVector<f64>) -> DVector<f64> {
    let strong: Vec<usize> = (0..inst.labels.len())
        .filter(|&i| inst.labels[i] == Strong)
        .collect();
    let weak: Vec<usize> = (0..inst.labels.len())
        .filter(|&i| inst.labels[i] == Weak)
        .collect();
    let a = &inst.constraints.a;
    let eq = vstack(&select_rows(a, &strong), &inst.constraints.a_eq);
    let qp = Qp {
        p: inst.q.clone(),
        q: g.clone(),
        a: select_rows(a, &weak),
        b: DVector::zeros(weak.len()),
        b_eq: DVector::zeros(eq.nrows()),
        a_eq: eq,
    };
    solve_by_enumeration(&qp, &Tolerances::default()).unwrap()
}

#[test]
fn prop2_direction_matches_enumeration_and_one_sided_differences() {
    let mut leaves = 0;
    let mut stays = 0;
    for backend in backends() {
        for seed in 0..25 {
            let inst = constructed_qp(&mut rng(seed), 9, 3, 1, &LABELS);
            let mut r = rng(1000 + seed);
            let g = vector(&mut r, 9);
            let loss = Loss::Linear { g: g.clone() };
            let program = Bilevel::new(problem(&inst, &backend), loss.clone())
                .unwrap()
                .with_backend(backend.clone());
            let limit = program.limit(&inst.theta).unwrap();
            let z_dot = &limit.direction.z_dot;
            assert_relative_eq!(
                *z_dot,
                eq17_reference(&inst, &g),
                epsilon = 1e-9,
                max_relative = 1e-9
            );

            // ẑ_β is piecewise linear in β for a QP with linear loss, so the one-sided quotient is
            // exact for small β up to rounding (~1e-16 |z| / β ≈ 1e-9).
            let beta = 1e-7;
            let z_beta = program.inner.solve(&inst.theta, &loss, beta).unwrap();
            let fd = (&z_beta.z - &limit.z_star.z) / beta;
            assert_relative_eq!(*z_dot, fd, epsilon = 1e-6, max_relative = 1e-6);

            // Branches: a weak constraint leaves iff B_i ż > 0.
            for (i, label) in inst.labels.iter().enumerate() {
                let bz = inst.constraints.a.row(i).dot(&z_dot.transpose());
                match (label, limit.direction.branches[i]) {
                    (Weak, Some(Branch::Leaves)) => {
                        assert!(bz > 1e-9);
                        leaves += 1
                    }
                    (Weak, Some(Branch::Stays)) => {
                        assert!(bz.abs() < 1e-9);
                        stays += 1
                    }
                    (Weak, None) => panic!("weak constraint without a branch"),
                    (_, b) => assert_eq!(b, None),
                }
            }
            // Cor. 1: grad = −Bᵀż.
            assert_relative_eq!(
                limit.grad_theta,
                -(inst.b.transpose() * z_dot),
                epsilon = 1e-12
            );
            assert!(limit.direction.method.contains("Prop. 2 QP"));
        }
    }
    // The seeds exercise both one-sided branches.
    assert!(leaves > 5 && stays > 5, "leaves {leaves}, stays {stays}");
}

#[test]
fn cor1_gradient_matches_central_differences_at_nondegenerate_points() {
    for backend in backends() {
        for seed in 0..10 {
            let inst = constructed_qp(
                &mut rng(seed),
                7,
                4,
                1,
                &[Strong, Inactive, Strong, Inactive],
            );
            let target = vector(&mut rng(500 + seed), 7);
            let program = Bilevel::new(problem(&inst, &backend), Loss::Squared { target }).unwrap();
            let limit = program.limit(&inst.theta).unwrap();
            let h = 1e-5;
            for j in 0..4 {
                let mut tp = inst.theta.clone();
                let mut tm = inst.theta.clone();
                tp[j] += h;
                tm[j] -= h;
                // L is smooth here (no weak constraint): central difference error O(h²) ≈ 1e-10.
                let fd = (program.loss_value(&tp).unwrap() - program.loss_value(&tm).unwrap())
                    / (2.0 * h);
                assert_relative_eq!(limit.grad_theta[j], fd, epsilon = 1e-7, max_relative = 1e-6);
            }
        }
    }
}

#[test]
fn unconstrained_quadratic_matches_closed_form() {
    // Prop. 1 with E = ½zᵀQz − zᵀ(Bθ + c): ż = −Q⁻¹ℓ'(z*).
    let mut r = rng(7);
    let q = bilevel::verify::instances::spd(&mut r, 5, 0.2);
    let b = bilevel::verify::instances::matrix(&mut r, 5, 2);
    let c = vector(&mut r, 5);
    let theta = vector(&mut r, 2);
    let target = vector(&mut r, 5);
    let p = QuadraticProblem::new(q.clone(), b, c.clone(), LinearConstraints::none(5)).unwrap();
    let program = Bilevel::new(
        p,
        Loss::Squared {
            target: target.clone(),
        },
    )
    .unwrap();
    let limit = program.limit(&theta).unwrap();
    let ch = q.clone().cholesky().unwrap();
    let z_star = ch.solve(&(program.inner.b() * &theta + &c));
    let expected = -ch.solve(&(&z_star - &target));
    assert_relative_eq!(
        limit.direction.z_dot,
        expected,
        epsilon = 1e-12,
        max_relative = 1e-12
    );
    assert_eq!(limit.direction.method, "Prop. 1");
}

#[test]
fn infeasible_constraints_are_an_error() {
    // z_1 ≥ 1 and −z_1 ≥ 0 admit no point.
    let cons = LinearConstraints {
        a: dmatrix![1.0, 0.0; -1.0, 0.0],
        b: dvector![1.0, 0.0],
        ..LinearConstraints::none(2)
    };
    for backend in backends() {
        let p = QuadraticProblem::new(
            DMatrix::identity(2, 2),
            DMatrix::zeros(2, 0),
            dvector![0.0, 0.0],
            cons.clone(),
        )
        .unwrap()
        .with_backend(backend.clone());
        let err = p
            .solve(
                &DVector::zeros(0),
                &Loss::Linear {
                    g: dvector![1.0, 1.0],
                },
                0.0,
            )
            .unwrap_err();
        assert!(matches!(err, Error::Infeasible(_)), "{err}");
    }
}

#[test]
fn bad_input_is_rejected_with_the_field_named() {
    let e = QuadraticProblem::new(
        dmatrix![1.0, 2.0; 0.0, 1.0],
        DMatrix::zeros(2, 0),
        dvector![0.0, 0.0],
        LinearConstraints::none(2),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::NotPositiveDefinite { ref what, .. } if what == "Q"),
        "{e}"
    );
    let e = QuadraticProblem::new(
        dmatrix![1.0, 2.0; 2.0, 1.0],
        DMatrix::zeros(2, 0),
        dvector![0.0, 0.0],
        LinearConstraints::none(2),
    )
    .unwrap_err();
    assert!(matches!(e, Error::NotPositiveDefinite { .. }), "{e}");
    let e = QuadraticProblem::new(
        DMatrix::identity(2, 2),
        DMatrix::zeros(2, 0),
        dvector![0.0, f64::NAN],
        LinearConstraints::none(2),
    )
    .unwrap_err();
    assert_eq!(e, Error::NonFinite { what: "c".into() });
    let p = QuadraticProblem::new(
        DMatrix::identity(2, 2),
        DMatrix::zeros(2, 1),
        dvector![0.0, 0.0],
        LinearConstraints::none(2),
    )
    .unwrap();
    let program = Bilevel::new(
        p,
        Loss::Linear {
            g: dvector![1.0, 0.0],
        },
    )
    .unwrap();
    for beta in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            program.surrogate(&dvector![0.0], beta),
            Err(Error::InvalidBeta { .. })
        ));
    }
    assert!(matches!(
        program.limit(&dvector![0.0, 1.0]),
        Err(Error::DimensionMismatch { .. })
    ));
    assert!(Bilevel::new(program.inner.clone(), Loss::Linear { g: dvector![1.0] }).is_err());
}

#[test]
fn dependent_active_constraints_give_a_singular_error_not_a_panic() {
    // The same active row twice: LICQ fails and the KKT system is singular.
    let cons = LinearConstraints {
        a: dmatrix![1.0, 0.0; 1.0, 0.0],
        b: dvector![1.0, 1.0],
        ..LinearConstraints::none(2)
    };
    let p = QuadraticProblem::new(
        DMatrix::identity(2, 2),
        DMatrix::zeros(2, 0),
        dvector![0.0, 0.0],
        cons,
    )
    .unwrap();
    match p.solve(
        &DVector::zeros(0),
        &Loss::Linear {
            g: dvector![0.0, 0.0],
        },
        0.0,
    ) {
        Err(Error::Singular(_)) => {}
        Ok(sol) => {
            // Acceptable only if the refinement kept one copy in the working set.
            assert_relative_eq!(sol.z, dvector![1.0, 0.0], epsilon = 1e-9);
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}
