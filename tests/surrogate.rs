//! Section 2 surrogates: Def. 1 / Def. 2 gradients against finite differences of their own
//! values, Prop. 1 and Cor. 1 on a smooth non-quadratic energy (argmin), convergence rates of the
//! finite-β and centered gradients, and Prop. 3's band as a property over random problems.

use approx::assert_relative_eq;
use bilevel::app::verify::instances::{constructed_qp, matrix, rng, spd, vector};
use bilevel::prelude::*;
use nalgebra::{DMatrix, DVector};
use proptest::prelude::*;

fn logcosh(seed: u64, n: usize, p: usize) -> (LogCoshProblem, DVector<f64>) {
    let mut r = rng(seed);
    let q = spd(&mut r, n, 0.3);
    let b = matrix(&mut r, n, p);
    let c = vector(&mut r, n);
    (LogCoshProblem::new(q, b, c).unwrap(), vector(&mut r, p))
}

fn central<F: Fn(&DVector<f64>) -> f64>(f: F, theta: &DVector<f64>, h: f64) -> DVector<f64> {
    bilevel::app::verify::reference::central(|t| Ok(f(t)), theta, h).unwrap()
}

#[test]
fn def1_gradient_is_the_gradient_of_the_surrogate_value() {
    // For finite β, L^β is a loss in its own right and Eq. 10 is its exact gradient (envelope
    // theorem on both minimizations of Eq. 5).
    let (p, theta) = logcosh(1, 6, 3);
    let target = vector(&mut rng(2), 6);
    let program = Bilevel::new(p, Loss::Squared { target }).unwrap();
    for beta in [1.0, 0.1, 0.01] {
        let s = program.surrogate(&theta, beta).unwrap();
        let fd = central(|t| program.surrogate(t, beta).unwrap().value, &theta, 1e-4);
        // central difference O(h²) plus solver accuracy 1e-13/h: 1e-7 relative is ample.
        assert_relative_eq!(s.grad_theta, fd, epsilon = 1e-7, max_relative = 1e-6);
    }
    use Activity::{Inactive, Strong, Weak};
    let inst = constructed_qp(&mut rng(3), 7, 3, 1, &[Strong, Weak, Inactive, Strong]);
    let qp = QuadraticProblem::new(inst.q, inst.b, inst.c, inst.constraints).unwrap();
    let program = Bilevel::new(
        qp,
        Loss::Squared {
            target: vector(&mut rng(4), 7),
        },
    )
    .unwrap();
    let theta = inst.theta + vector(&mut rng(5), 3) * 0.1; // move off the degenerate point
    for beta in [1.0, 0.1] {
        let s = program.surrogate(&theta, beta).unwrap();
        let fd = central(|t| program.surrogate(t, beta).unwrap().value, &theta, 1e-5);
        assert_relative_eq!(s.grad_theta, fd, epsilon = 1e-7, max_relative = 1e-6);
    }
}

#[test]
fn def2_gradient_is_the_gradient_of_the_linearized_value_with_the_tangent_fixed() {
    let (p, theta) = logcosh(6, 5, 2);
    let target = vector(&mut rng(7), 5);
    let program = Bilevel::new(p, Loss::Squared { target }).unwrap();
    let beta = 0.5;
    let s = program.linearized(&theta, beta).unwrap();
    let z0 = s.z_star.z.clone();
    let tangent = program.loss.tangent(&z0);
    let l0 = program.loss.value(&z0);
    // Eq. 37 with ℓ̄(·; z0) frozen, evaluated from scratch at θ'.
    let value = |t: &DVector<f64>| {
        let zs = program.inner.solve(t, &program.loss, 0.0).unwrap().z;
        let zh = program.inner.solve(t, &tangent, beta).unwrap().z;
        l0 + tangent.value(&(&zh - &z0))
            + (program.inner.energy(&zh, t) - program.inner.energy(&zs, t)) / beta
    };
    assert_relative_eq!(s.value, value(&theta), epsilon = 1e-12);
    let fd = central(value, &theta, 1e-4);
    assert_relative_eq!(s.grad_theta, fd, epsilon = 1e-7, max_relative = 1e-6);
}

#[test]
fn prop1_and_cor1_on_a_smooth_non_quadratic_energy() {
    let (p, theta) = logcosh(8, 6, 3);
    let target = vector(&mut rng(9), 6);
    let program = Bilevel::new(
        p,
        Loss::Squared {
            target: target.clone(),
        },
    )
    .unwrap();
    let limit = program.limit(&theta).unwrap();
    assert_eq!(
        limit.direction.method,
        bilevel::problem::DirectionMethod::Prop1
    );
    // Reference 1: −H⁻¹ℓ'(z*) by an independent Cholesky solve.
    let z = &limit.z_star.z;
    let h = program.inner.hessian(z, &theta);
    let expected = -h.cholesky().unwrap().solve(&(z - &target));
    assert_relative_eq!(
        limit.direction.z_dot,
        expected,
        epsilon = 1e-12,
        max_relative = 1e-10
    );
    // Reference 2: central difference of β ↦ ẑ_β (smooth here), O(β²).
    let beta = 1e-4;
    let zp = program.inner.solve(&theta, &program.loss, beta).unwrap().z;
    let zm = program.inner.solve(&theta, &program.loss, -beta).unwrap().z;
    assert_relative_eq!(
        limit.direction.z_dot,
        (zp - zm) / (2.0 * beta),
        epsilon = 1e-7
    );
    // Cor. 1 against central differences of L(θ).
    let fd = central(|t| program.loss_value(t).unwrap(), &theta, 1e-5);
    assert_relative_eq!(limit.grad_theta, fd, epsilon = 1e-8, max_relative = 1e-7);
}

use bilevel::app::verify::fitted_slope as slope;

#[test]
fn finite_beta_gradients_converge_at_rate_one_and_centered_at_rate_two() {
    let (p, theta) = logcosh(10, 6, 3);
    let target = vector(&mut rng(11), 6);
    let program = Bilevel::new(p, Loss::Squared { target }).unwrap();
    let exact = program.limit(&theta).unwrap().grad_theta;
    let betas = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3];
    let one: Vec<f64> = betas
        .iter()
        .map(|&b| (program.surrogate(&theta, b).unwrap().grad_theta - &exact).norm())
        .collect();
    let two: Vec<f64> = betas
        .iter()
        .map(|&b| (program.centered(&theta, b).unwrap().grad_theta - &exact).norm())
        .collect();
    let (s1, s2) = (slope(&betas, &one), slope(&betas, &two));
    assert!((s1 - 1.0).abs() < 0.1, "Def. 1 rate {s1}");
    assert!((s2 - 2.0).abs() < 0.15, "centered rate {s2}");
    assert!(two[4] < one[4] * 1e-2);
}

#[test]
fn centered_surrogate_range_and_its_average_at_weak_constraints() {
    // Squared loss (L'' = 1) and ν = λ_min(Q): defined only for β < ν.
    let (p, theta) = logcosh(12, 4, 2);
    let nu = p.strong_convexity().unwrap();
    let program = Bilevel::new(
        p,
        Loss::Squared {
            target: DVector::zeros(4),
        },
    )
    .unwrap();
    assert!(program.centered(&theta, 0.5 * nu).is_ok());
    assert!(matches!(
        program.centered(&theta, 1.01 * nu),
        Err(Error::BetaOutOfRange { .. })
    ));
    // ReLU exactly at the kink: the centered quotient is the average of the two one-sided
    // derivatives, ([−g]₊ − [g]₊)/2 = −g/2, not Prop. 2's branch [−g]₊.
    let layer =
        ProxProblem::new(Activation::Relu, DMatrix::identity(2, 2), DVector::zeros(2)).unwrap();
    let g = nalgebra::dvector![1.5, -2.0];
    let program = Bilevel::new(layer, Loss::Linear { g: g.clone() }).unwrap();
    let u = DVector::zeros(2);
    let centered = program.centered(&u, 1e-3).unwrap();
    // grad = −Bᵀ(ẑ_β − ẑ_{−β})/(2β) = g/2 here (B = I)
    assert_relative_eq!(centered.grad_theta, &g * 0.5, epsilon = 1e-12);
    let limit = program.limit(&u).unwrap();
    assert_relative_eq!(
        limit.grad_theta,
        nalgebra::dvector![0.0, -2.0],
        epsilon = 1e-15
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Prop. 3 on random strongly convex problems (constrained QPs with squared loss) for β on a
    /// grid, together with L^β ≤ L, ẑ_β → z* and finite-β → limit consistency.
    ///
    /// ẑ_β → z* is checked through what is a theorem at every β: comparing the optimality of
    /// ẑ_β₁ and ẑ_β₂ gives (β₁ − β₂)(ℓ(ẑ_β₁) − ℓ(ẑ_β₂)) ≤ 0, so the loss ℓ(ẑ_β) rises and the
    /// energy gap E(ẑ_β) − E(z*) falls as β decreases, and strong convexity bounds the distance,
    /// ½ λ_min(Q) ‖ẑ_β − z*‖² ≤ E(ẑ_β) − E(z*). The Euclidean distance itself need not fall
    /// monotonically once constraints bend the path (seed 910, n = 4, one weak row: 1.6924 at
    /// β = 10, 1.6966 at β = 1).
    #[test]
    fn prop3_band_and_convergence(seed in 0u64..10_000, n in 3usize..8, weak in 0usize..3) {
        prop3_case(seed, n, weak)?;
    }
}

/// The case proptest recorded as failing once while the offset iteration moved to the stored
/// factorization (2026-12-07; it has not failed again, with or without the `solve_kkt`
/// fallback of a range-space round), kept here because CI does not replay proptest's failure
/// files.
#[test]
fn prop3_band_and_convergence_at_a_recorded_case() {
    prop3_case(9222, 3, 2).unwrap();
}

/// [`prop3_band_and_convergence`]'s body for one instance.
fn prop3_case(seed: u64, n: usize, weak: usize) -> Result<(), TestCaseError> {
    use Activity::{Inactive, Strong, Weak};
    let mut labels = vec![Strong, Inactive];
    labels.extend(std::iter::repeat_n(Weak, weak));
    let inst = constructed_qp(&mut rng(seed), n, 2, 0, &labels);
    let target = vector(&mut rng(seed + 1), n) * 2.0;
    let lambda_min = inst.q.clone().symmetric_eigenvalues().min();
    let qp = QuadraticProblem::new(inst.q, inst.b, inst.c, inst.constraints).unwrap();
    let program = Bilevel::new(
        qp,
        Loss::Squared {
            target: target.clone(),
        },
    )
    .unwrap();
    let limit = program.limit(&inst.theta).unwrap();
    let loss = limit.loss;
    let energy = |z: &DVector<f64>| program.inner.energy(z, &inst.theta);
    let loss_at = |z: &DVector<f64>| 0.5 * (z - &target).norm_squared();
    let e_star = energy(&limit.z_star.z);
    let (mut prev_gap, mut prev_loss) = (f64::INFINITY, f64::NEG_INFINITY);
    for beta in [10.0, 1.0, 0.1, 1e-2, 1e-3, 1e-4] {
        let s = program.surrogate(&inst.theta, beta).unwrap();
        let band = program.band_of(&s).unwrap();
        // rounding slack: E(ẑ) − E(z*) is a difference of O(1) numbers divided by β.
        let slack = 1e-12 * (1.0 + loss.abs()) / beta;
        prop_assert!(
            band.lower <= loss + slack,
            "L^beta {} > L {}",
            band.lower,
            loss
        );
        prop_assert!(
            loss <= band.upper + slack,
            "L {} > upper {}",
            loss,
            band.upper
        );
        let gap = energy(&s.z_hat.z) - e_star;
        let l_hat = loss_at(&s.z_hat.z);
        let round = 1e-12 * (1.0 + e_star.abs() + loss.abs());
        prop_assert!(
            gap <= prev_gap + round,
            "energy gap rose: {gap} after {prev_gap}"
        );
        prop_assert!(
            l_hat >= prev_loss - round,
            "loss fell: {l_hat} after {prev_loss}"
        );
        let dist = (&s.z_hat.z - &limit.z_star.z).norm();
        prop_assert!(
            0.5 * lambda_min * dist * dist <= gap.max(0.0) + round,
            "distance {dist} beyond the strong-convexity bound of gap {gap}"
        );
        (prev_gap, prev_loss) = (gap, l_hat);
        if beta <= 1e-3 {
            // ‖(ẑ_β − z*)/β − ż‖ = O(β) (in fact 0 once the active set has settled).
            let err = (&s.grad_theta - &limit.grad_theta).norm();
            prop_assert!(
                err <= 100.0 * beta * (1.0 + limit.grad_theta.norm()),
                "err {err} at beta {beta}"
            );
        }
    }
    Ok(())
}

/// An offset solve ([`InnerProblem::offset`]) against solve-and-subtract at the moderate
/// `betas` (where subtraction still holds `accuracy`), and against the exact limit (Props.
/// 1-2) down to β = 1e-300, where subtracting returns 0 or noise: `f(β) = ż + O(β)` with the
/// bias below `bias · β`, plus `rounding`.
struct OffsetCheck {
    betas: [f64; 3],
    accuracy: f64,
    bias: f64,
    rounding: f64,
}

impl OffsetCheck {
    fn run<P: InnerProblem + Clone>(&self, inner: &P, theta: &DVector<f64>, losses: [Loss; 2]) {
        for loss in losses {
            let program = Bilevel::new(inner.clone(), loss.clone()).unwrap();
            let z_star = program.solve_free(theta).unwrap();
            for beta in self.betas {
                let s = program.surrogate(theta, beta).unwrap();
                let z_hat = inner.solve(theta, &loss, beta).unwrap();
                let naive_rate = (&z_hat.z - &z_star.z) / beta;
                let gap = (inner.energy(&z_hat.z, theta) - inner.energy(&z_star.z, theta)) / beta;
                let tol = self.accuracy;
                assert_relative_eq!(s.rate, naive_rate, epsilon = tol, max_relative = tol);
                let naive_value = loss.value(&z_hat.z) + gap;
                assert_relative_eq!(s.value, naive_value, epsilon = tol, max_relative = tol);
            }
            let limit = program.limit(theta).unwrap();
            for beta in [1e-8, 1e-12, 1e-16, 1e-50, 1e-300] {
                let s = program.surrogate(theta, beta).unwrap();
                let tol = self.rounding + self.bias * beta;
                let z_dot = &limit.direction.z_dot;
                assert_relative_eq!(s.rate, z_dot, epsilon = tol, max_relative = tol);
                let grad = &limit.grad_theta;
                assert_relative_eq!(s.grad_theta, grad, epsilon = tol, max_relative = tol);
                // Prop. 3 holds with its O(β) band resolved: L^β ≤ L.
                let band = program.band_of(&s).unwrap();
                assert!(
                    band.lower <= band.loss && band.loss <= band.upper + 1e-15,
                    "{beta}: {band:?}"
                );
            }
        }
    }
}

/// The softmax layer's offset solve (negative-entropy Fenchel energy). Its prox is solved to
/// full precision, so subtraction holds ~1e-16/β (1e-12 at β = 1e-4).
#[test]
fn softmax_offsets_match_subtraction_at_moderate_beta_and_the_limit_at_tiny_beta() {
    let x = DVector::from_vec(vec![0.7, -1.2, 0.4]);
    let layer = ProxProblem::dense_layer(Activation::Softmax, 4, &x).unwrap();
    let check = OffsetCheck {
        betas: [1.0, 1e-2, 1e-4],
        accuracy: 1e-8,
        bias: 1.0,
        rounding: 1e-12,
    };
    let target = DVector::from_vec(vec![0.1, 0.6, 0.2, 0.1]);
    let g = DVector::from_vec(vec![1.0, -2.0, 0.5, 0.25]);
    check.run(
        &layer,
        &vector(&mut rng(17), 12),
        [Loss::Linear { g }, Loss::Squared { target }],
    );
}

/// The log cosh energy's offset Newton solve. argmin's solves are accurate to ~1e-12, so
/// subtraction holds ~1e-12/β.
#[test]
fn logcosh_offsets_match_subtraction_at_moderate_beta_and_the_limit_at_tiny_beta() {
    let (inner, theta) = logcosh(31, 4, 3);
    let check = OffsetCheck {
        betas: [1.0, 1e-2, 1e-3],
        accuracy: 1e-7,
        bias: 10.0,
        rounding: 1e-10,
    };
    let target = DVector::from_vec(vec![0.1, 0.6, -0.2, 1.5]);
    let g = DVector::from_vec(vec![1.0, -2.0, 0.5, 0.25]);
    check.run(
        &inner,
        &theta,
        [Loss::Linear { g }, Loss::Squared { target }],
    );
}
