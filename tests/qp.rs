//! Constrained quadratic problems: solutions, multipliers and activity labels against the
//! construction, the Prop. 2 direction against brute-force enumeration and one-sided finite
//! differences, and API misuse. Every test runs on each available QP backend (the dense
//! active-set method of the layer's stored factorization included).

use std::sync::Arc;

use approx::assert_relative_eq;
use bilevel::app::verify::instances::{constructed_qp, rng, vector, ConstructedQp};
use bilevel::linalg::{select_rows, vstack};
use bilevel::prelude::*;
use bilevel::solve::qp::{solve_by_enumeration, solve_exact, Qp};
use nalgebra::{dmatrix, dvector, DMatrix, DVector};

fn backends() -> Vec<Arc<dyn QpBackend>> {
    #[allow(unused_mut)]
    let mut v: Vec<Arc<dyn QpBackend>> = vec![
        Arc::new(Clarabel::default()),
        Arc::new(bilevel::solve::qp::DenseActiveSet),
    ];
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
                p: bilevel::app::verify::instances::spd(&mut r, n, 0.2),
                q: vector(&mut r, n) * 3.0,
                a: bilevel::app::verify::instances::matrix(&mut r, 8, n),
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
            assert!(matches!(
                limit.direction.method,
                bilevel::problem::DirectionMethod::Prop2Qp { .. }
            ));
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
    let q = bilevel::app::verify::instances::spd(&mut r, 5, 0.2);
    let b = bilevel::app::verify::instances::matrix(&mut r, 5, 2);
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
    assert_eq!(
        limit.direction.method,
        bilevel::problem::DirectionMethod::Prop1
    );
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

fn solve_free(p: &QuadraticProblem) -> Result<InnerSolution> {
    p.solve(
        &DVector::zeros(p.b().ncols()),
        &Loss::Linear {
            g: DVector::zeros(p.q().nrows()),
        },
        0.0,
    )
}

fn scalar_problem(q: f64, c: f64, a: DMatrix<f64>, b: DVector<f64>) -> QuadraticProblem {
    let cons = LinearConstraints {
        a,
        b,
        ..LinearConstraints::none(1)
    };
    QuadraticProblem::new(dmatrix![q], DMatrix::zeros(1, 0), dvector![c], cons).unwrap()
}

#[test]
fn badly_scaled_feasible_problems_are_never_called_infeasible_or_unbounded() {
    // Reliability issue, failure 9: Clarabel called both of these infeasible / unbounded.
    for backend in backends() {
        // z ≥ 1e8 with the unconstrained minimizer at 0: z* = 1e8, λ = 1e8.
        let p =
            scalar_problem(1.0, 0.0, dmatrix![1.0], dvector![1e8]).with_backend(backend.clone());
        let sol = solve_free(&p).unwrap();
        assert_relative_eq!(sol.z[0], 1e8, max_relative = 1e-12);
        assert_relative_eq!(sol.multipliers[0], 1e8, max_relative = 1e-12);
        // 0.423 z ≥ −1e200 is inactive: z* = −0.834 / 0.739 (a strictly convex QP is bounded).
        let p = scalar_problem(0.739, -0.834, dmatrix![0.423], dvector![-1e200])
            .with_backend(backend.clone());
        let sol = solve_free(&p).unwrap();
        assert_relative_eq!(sol.z[0], -0.834 / 0.739, max_relative = 1e-14);
        assert_eq!(sol.activity, vec![Inactive]);
        // Badly scaled and truly infeasible: z ≥ 1e8 and z ≤ 1e7, with a verified certificate.
        let p = scalar_problem(1.0, 0.0, dmatrix![1.0; -1.0], dvector![1e8, -1e7])
            .with_backend(backend.clone());
        match solve_free(&p) {
            Err(Error::Infeasible(msg)) => assert!(!msg.is_empty()),
            other => panic!("{}: {other:?}", backend.name()),
        }
    }
}

#[test]
fn the_dual_active_set_method_agrees_with_enumeration_and_proves_infeasibility() {
    use bilevel::solve::qp::{dual_active_set, refine, Origin};
    for seed in 0..40 {
        let mut r = rng(500 + seed);
        let n = 5;
        let k = (seed % 3) as usize;
        let qp = Qp {
            p: bilevel::app::verify::instances::spd(&mut r, n, 0.2),
            q: vector(&mut r, n) * 3.0,
            a: bilevel::app::verify::instances::matrix(&mut r, 7, n),
            b: vector(&mut r, 7) * 0.5 - DVector::from_element(7, 0.5),
            a_eq: bilevel::app::verify::instances::matrix(&mut r, k, n),
            b_eq: vector(&mut r, k),
        };
        let tol = Tolerances::default();
        let Ok(reference) = solve_by_enumeration(&qp, &tol) else {
            // Random equalities can make the polytope empty (2 of these 40 seeds).
            assert!(
                matches!(dual_active_set(&qp), Err(Error::Infeasible(_))),
                "seed {seed}"
            );
            continue;
        };
        let mut working = dual_active_set(&qp).unwrap();
        let sol = refine(&qp, &tol, &mut working, Origin::new("test")).unwrap();
        assert_eq!(
            sol.repairs, 0,
            "seed {seed}: the method's working set is already exact"
        );
        assert_relative_eq!(sol.x, reference, epsilon = 1e-10, max_relative = 1e-10);
        // Add a row that contradicts the solution's own constraints: a_0ᵀz ≥ b_0 and
        // −a_0ᵀz ≥ −b_0 + 1 cannot both hold.
        let mut bad = qp.clone();
        bad.a = vstack(&qp.a, &(-qp.a.rows(0, 1).into_owned()));
        bad.b = DVector::from_iterator(8, qp.b.iter().copied().chain([-qp.b[0] + 1.0]));
        assert!(
            matches!(dual_active_set(&bad), Err(Error::Infeasible(_))),
            "seed {seed}"
        );
    }
}

#[test]
fn dependent_and_zero_rows_are_solved_and_named() {
    // Reliability issue, failure 10: z* and ż are unique (Q ≻ 0) even where LICQ fails.
    let eye = DMatrix::<f64>::identity(2, 2);
    let cases = [
        // The same active row twice (strongly active: the minimizer is at z₁ = −1).
        (
            dmatrix![1.0, 0.0; 1.0, 0.0],
            dvector![0.0, 0.0],
            dvector![-1.0, 0.0],
            vec![1],
        ),
        // A zero row 0ᵀz ≥ 0: always active, never binding.
        (
            dmatrix![0.0, 0.0],
            dvector![0.0],
            dvector![1.0, 0.0],
            vec![0],
        ),
    ];
    for (a, b, c, dependent) in cases {
        let m = b.len();
        let cons = LinearConstraints {
            a: a.clone(),
            b: b.clone(),
            ..LinearConstraints::none(2)
        };
        for backend in backends() {
            let p = QuadraticProblem::new(eye.clone(), eye.clone(), c.clone(), cons.clone())
                .unwrap()
                .with_backend(backend.clone());
            let qp = p.qp(
                &dvector![0.0, 0.0],
                &Loss::Linear {
                    g: dvector![0.0, 0.0],
                },
                0.0,
            );
            let reference = solve_by_enumeration(&qp, &Tolerances::default()).unwrap();
            let program = Bilevel::new(
                p,
                Loss::Linear {
                    g: dvector![1.0, 1.0],
                },
            )
            .unwrap();
            let limit = program.limit(&dvector![0.0, 0.0]).unwrap();
            assert_relative_eq!(limit.z_star.z, reference, epsilon = 1e-12);
            assert_eq!(limit.z_star.status.dependent, dependent, "{a}");
            assert_eq!(limit.z_star.multipliers.len(), m);
            // ẑ_β = clamp(c − β g) unit-wise: ż = −g where free, 0 where held at the bound.
            let held = c[0] < 0.0;
            let expected = dvector![if held { 0.0 } else { -1.0 }, -1.0];
            assert_relative_eq!(limit.direction.z_dot, expected, epsilon = 1e-12);
            // And the one-sided difference quotient agrees.
            let s = program.surrogate(&dvector![0.0, 0.0], 1e-6).unwrap();
            assert_relative_eq!(s.rate, expected, epsilon = 1e-9);
        }
    }
}
