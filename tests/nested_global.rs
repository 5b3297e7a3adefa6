//! Prop. 4 (global contrastive, bottom-up): convex CHL and CHL gradients match finite
//! differences of their own values, tend to back-propagation as β → 0 (Cor. 2), the clamped
//! optimum is never below the free one (Eq. 24 with ℓ ≥ 0), and an unbounded CHL energy is an
//! error.

mod common;

use bilevel::app::verify::instances::{matrix, network, rng};
use bilevel::nested::{Batch, EnergyKind, NestedProblem, NestedSettings, Network, OutputLoss};
use bilevel::prelude::Activation;
use common::{bp, fd_weights, flat, rel};
use nalgebra::DMatrix;

fn setup() -> (Network<f64>, DMatrix<f64>, DMatrix<f64>) {
    let net = network(&mut rng(31), &[4, 4, 3, 2], Activation::Relu);
    (net, matrix(&mut rng(32), 4, 3), matrix(&mut rng(33), 2, 3))
}

fn ce_target() -> DMatrix<f64> {
    DMatrix::from_fn(2, 3, |i, j| ((i + j) % 2) as f64)
}

/// Own-value finite differences and Cor. 2 for one (energy, loss) pair; returns the errors at
/// β = 1e-1, 1e-2, 1e-3, 1e-4.
fn check(kind: EnergyKind, loss: OutputLoss, beta_fd: f64, tol_fd: f64) -> Vec<f64> {
    let (net, x, t) = setup();
    let t = if loss == OutputLoss::Squared {
        t
    } else {
        ce_target()
    };
    let betas = [beta_fd; 3];
    let sol = common::global(&net, kind, &betas, loss, &x, &t).unwrap();
    assert!(sol.value >= 0.0, "clamped optimum below the free one");
    let fd = fd_weights(&net, 1e-6, |n| {
        common::global(n, kind, &betas, loss, &x, &t).unwrap().value
    });
    let g = flat(&sol.grad);
    assert!(
        rel(&g[..fd.len()], &fd) < tol_fd,
        "{kind:?} {loss:?}: {}",
        rel(&g[..fd.len()], &fd)
    );
    let reference = bp(&net, loss, &x, &t);
    [1e-1, 1e-2, 1e-3, 1e-4]
        .iter()
        .map(|&b| {
            rel(
                &flat(
                    &common::global(&net, kind, &[b; 3], loss, &x, &t)
                        .unwrap()
                        .grad,
                ),
                &reference,
            )
        })
        .collect()
}

#[test]
fn convex_chl_gradient_and_cor2() {
    let errs = check(EnergyKind::Proximal, OutputLoss::Squared, 0.5, 1e-6);
    // O(β) all the way down: each decade divides the error by about 10 (no rounding floor).
    for w in errs.windows(2) {
        assert!(w[1] < 0.2 * w[0], "{errs:?}");
    }
}

#[test]
fn chl_gradient_and_cor2() {
    // β = 0.1 keeps the bilinear energy bounded for the finite-difference check.
    for loss in [OutputLoss::Squared, OutputLoss::SoftmaxCrossEntropy] {
        let errs = check(EnergyKind::Fenchel, loss, 0.1, 1e-5);
        for w in errs.windows(2) {
            assert!(w[1] < 0.2 * w[0], "{loss:?}: {errs:?}");
        }
    }
}

#[test]
fn chl_reports_an_unbounded_energy_as_an_error() {
    let (mut net, x, t) = setup();
    for l in &mut net.layers {
        l.w *= 4.0;
    }
    let err = common::global(
        &net,
        EnergyKind::Fenchel,
        &[5.0; 3],
        OutputLoss::Squared,
        &x,
        &t,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            bilevel::Error::Unbounded(_) | bilevel::Error::NotConverged { .. }
        ),
        "{err}"
    );
}

#[test]
fn unsupported_combinations_are_errors() {
    let (net, x, t) = setup();
    assert!(common::global(
        &net,
        EnergyKind::Proximal,
        &[0.1; 3],
        OutputLoss::SoftmaxCrossEntropy,
        &x,
        &ce_target()
    )
    .is_err());
    assert!(common::global(
        &net,
        EnergyKind::Penalizer,
        &[0.1; 3],
        OutputLoss::Squared,
        &x,
        &t
    )
    .is_err());
}

#[test]
fn batched_convex_chl_agrees_with_the_per_sample_qps() {
    use bilevel::nested::global::convex_chl_batched;
    for (seed, act) in [
        (41, Activation::Relu),
        (42, Activation::HardTanh),
        (43, Activation::HardSigmoid),
    ] {
        let net = network(&mut rng(seed), &[5, 6, 4, 3], act);
        let x = matrix(&mut rng(seed + 100), 5, 7);
        let t = matrix(&mut rng(seed + 200), 3, 7);
        for beta in [0.3, 0.1, 1e-2, 1e-3, 1e-4] {
            let betas = [beta; 3];
            let qp = common::global(
                &net,
                EnergyKind::Proximal,
                &betas,
                OutputLoss::Squared,
                &x,
                &t,
            )
            .unwrap();
            let problem =
                NestedProblem::new(&net, EnergyKind::Proximal, &betas, OutputLoss::Squared)
                    .unwrap();
            let batch = Batch::new(&problem, &x, &t).unwrap();
            let settings = NestedSettings {
                max_sweeps: 100_000,
                ..NestedSettings::default()
            };
            let fast = convex_chl_batched(&problem, batch, &settings).unwrap();
            let (gq, gf) = (flat(&qp.grad), flat(&fast.grad));
            assert!(
                rel(&gf, &gq) < 1e-8,
                "{act:?} beta {beta}: gradient {}",
                rel(&gf, &gq)
            );
            assert!(
                (fast.value - qp.value).abs() <= 1e-9 * qp.value.abs().max(1e-12),
                "{act:?} beta {beta}: value {} vs {}",
                fast.value,
                qp.value
            );
            for k in 0..3 {
                assert!((&fast.free[k] - &qp.free[k]).amax() < 1e-12);
            }
        }
    }
}

/// CHL with softmax Fenchel layers (negative entropy): as the output layer under a squared loss
/// on the probabilities, and as a hidden layer.
#[test]
fn chl_with_softmax_layers() {
    let (nets, x) = common::softmax_nets(44);
    for (n, t) in nets {
        let l = n.layers.len();
        let errs =
            common::own_fd_and_cor2(&n, &x, &t, 0.1, 1e-5, &[1e-1, 1e-2, 1e-3, 1e-4], |m, b| {
                let sol = common::global(
                    m,
                    EnergyKind::Fenchel,
                    &vec![b; l],
                    OutputLoss::Squared,
                    &x,
                    &t,
                )
                .unwrap();
                (sol.value, sol.grad)
            });
        for w in errs.windows(2) {
            assert!(w[1] < 0.2 * w[0], "{errs:?}");
        }
    }
}
