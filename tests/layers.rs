//! Proximal layers (closed-form solves and limit derivatives): Example 1 with ties, the box
//! family at both bounds, and softmax; each against an independent formula or finite difference
//! and against the generic Prop. 2 QP path.

use approx::assert_relative_eq;
use bilevel::app::verify::instances::{rng, vector};
use bilevel::app::verify::reference::relu_quotient;
use bilevel::prelude::*;
use bilevel::surrogate::prop2_direction;
use nalgebra::{dvector, DMatrix, DVector};

#[test]
fn example1_relu_one_sided_limit_including_ties() {
    // θ = vec(W); rows 1 and 3 of W are zero so (Wx)_1 = (Wx)_3 = 0 exactly (ties).
    let x = dvector![0.5, -1.0, 2.0];
    let w = DMatrix::from_row_slice(
        4,
        3,
        &[0.3, 0.1, 0.2, 0.0, 0.0, 0.0, -0.4, 0.2, 0.1, 0.0, 0.0, 0.0],
    );
    let theta = DVector::from_iterator(12, w.transpose().iter().copied()); // row-major
    let u = &w * &x;
    for g in [
        dvector![1.0, -2.0, 0.5, 3.0],
        dvector![-1.0, 2.0, -0.5, -3.0],
        dvector![0.0, 0.0, 1.0, 0.0],
    ] {
        let layer = ProxProblem::dense_layer(Activation::Relu, 4, &x).unwrap();
        let program = Bilevel::new(layer, Loss::Linear { g: g.clone() }).unwrap();
        let limit = program.limit(&theta).unwrap();
        // Eq. 11 in closed form: the quotient is exact once β < min |u_j| / |g_j| over non-ties.
        // (rounding of the quotient: ~1e-16/β)
        assert_relative_eq!(
            limit.direction.z_dot,
            relu_quotient(&u, &g, 1e-6),
            epsilon = 1e-9
        );
        // At the ties the derivative is [−g_j]₊ (not what the printed Eq. 12 says).
        for j in [1, 3] {
            assert_eq!(limit.direction.z_dot[j], (-g[j]).max(0.0));
            assert_eq!(limit.z_star.activity[j], Activity::Weak);
            let expected = if -g[j] > 0.0 {
                Branch::Leaves
            } else {
                Branch::Stays
            };
            assert_eq!(limit.direction.branches[j], Some(expected));
        }
        assert_eq!(limit.z_star.activity[0], Activity::Inactive);
        assert_eq!(limit.z_star.activity[2], Activity::Strong);
        // Cor. 1 / Eq. 9: grad = −vec(ż xᵀ) (Eq. 13 as printed has the opposite sign).
        let expected = -(&limit.direction.z_dot * x.transpose());
        let expected = DVector::from_iterator(12, expected.transpose().iter().copied());
        assert_relative_eq!(limit.grad_theta, expected, epsilon = 1e-15);
        // Away from ties this is back-propagation: g_j x for active units, 0 otherwise.
        assert_relative_eq!(limit.grad_theta[0], g[0] * x[0], epsilon = 1e-15);
        assert_eq!(limit.grad_theta[6], 0.0);
        // Same answer from the generic Prop. 2 QP (Clarabel + exact KKT).
        let generic = prop2_direction(
            &DMatrix::identity(4, 4),
            &g,
            program.inner.constraints(),
            &limit.z_star.activity,
            (&Clarabel::default(), &Tolerances::default()),
        )
        .unwrap();
        assert_relative_eq!(generic.z_dot, limit.direction.z_dot, epsilon = 1e-12);
        assert_eq!(generic.branches, limit.direction.branches);
    }
}

#[test]
fn box_family_matches_generic_prop2_and_one_sided_differences() {
    let cases = [
        (
            Activation::HardSigmoid,
            dvector![0.0, 1.0, 0.4, 1.3, -0.2, 1.0],
        ),
        (
            Activation::HardTanh,
            dvector![-1.0, 1.0, 0.4, 1.3, -1.2, 0.0],
        ),
        (
            Activation::Box { lo: -0.5, hi: 2.0 },
            dvector![-0.5, 2.0, 0.4, 3.0, -0.7, 2.0],
        ),
        (
            Activation::Identity,
            dvector![-0.5, 2.0, 0.4, 3.0, -0.7, 2.0],
        ),
    ];
    for (act, u) in cases {
        for seed in 0..5 {
            let g = vector(&mut rng(seed), 6);
            // u(θ) = Bθ + c with B = I, θ = u, c = 0.
            let layer = ProxProblem::new(act, DMatrix::identity(6, 6), DVector::zeros(6)).unwrap();
            let program = Bilevel::new(layer, Loss::Linear { g: g.clone() }).unwrap();
            let limit = program.limit(&u).unwrap();
            // One-sided quotient of the clamp, written out independently.
            let (lo, hi) = act.bounds().unwrap();
            let beta = 1e-7;
            let fd = DVector::from_fn(6, |j, _| {
                ((u[j] - beta * g[j]).clamp(lo, hi) - u[j].clamp(lo, hi)) / beta
            });
            assert_relative_eq!(limit.direction.z_dot, fd, epsilon = 1e-8);
            let generic = prop2_direction(
                &DMatrix::identity(6, 6),
                &g,
                program.inner.constraints(),
                &limit.z_star.activity,
                (&Clarabel::default(), &Tolerances::default()),
            )
            .unwrap();
            assert_relative_eq!(generic.z_dot, limit.direction.z_dot, epsilon = 1e-12);
            assert_eq!(generic.branches, limit.direction.branches);
        }
    }
}

#[test]
fn softmax_layer_limit_matches_differences_and_generic_path() {
    let mut r = rng(3);
    let u = vector(&mut r, 5) * 2.0;
    let target = vector(&mut r, 5).map(|v| v.abs());
    let layer = ProxProblem::new(
        Activation::Softmax,
        DMatrix::identity(5, 5),
        DVector::zeros(5),
    )
    .unwrap();
    let program = Bilevel::new(layer, Loss::Squared { target }).unwrap();
    let limit = program.limit(&u).unwrap();
    // Smooth in β: central difference, error O(β²) ≈ 1e-10.
    let beta = 1e-5;
    let zp = program.inner.solve(&u, &program.loss, beta).unwrap().z;
    let zm = program.inner.solve(&u, &program.loss, -beta).unwrap().z;
    assert_relative_eq!(
        limit.direction.z_dot,
        (zp - zm) / (2.0 * beta),
        epsilon = 1e-8
    );
    assert_relative_eq!(limit.direction.z_dot.sum(), 0.0, epsilon = 1e-14);
    let generic = prop2_direction(
        &program.inner.hessian(&limit.z_star.z, &u),
        &program.loss.gradient(&limit.z_star.z),
        program.inner.constraints(),
        &limit.z_star.activity,
        (&Clarabel::default(), &Tolerances::default()),
    )
    .unwrap();
    assert_relative_eq!(generic.z_dot, limit.direction.z_dot, epsilon = 1e-12);
}
