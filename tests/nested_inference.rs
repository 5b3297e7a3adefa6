//! The batched inference sweeps (`nested::inference`: MAC, predictive coding, LPOM as the fixed
//! point of Prop. 7's pass) against the per-sample reference solvers of `nested::local` (Newton
//! on the rates, L-BFGS + active set, block-coordinate FISTA), in f64; and the f32 training path
//! against the f64 one.

mod common;

use bilevel::nested::inference::{self, InferenceSettings, InferenceWorkspace};
use bilevel::nested::linearized::Gradients;
use bilevel::nested::method::{Method, Unravel};
use bilevel::nested::{Network, OutputLoss};
use bilevel::prelude::Activation;
use bilevel::verify::instances::{matrix, network, rng};
use common::{flat, rel};
use nalgebra::DMatrix;

const METHODS: [Method; 5] = [
    Method::Mac,
    Method::PredictiveCoding,
    Method::Lpom,
    Method::Chl,
    Method::ConvexChl,
];

fn setup(batch: usize, loss: OutputLoss) -> (Network<f64>, DMatrix<f64>, DMatrix<f64>) {
    let net = network(&mut rng(31), &[5, 4, 3, 3], Activation::Relu);
    let x = matrix(&mut rng(32), 5, batch);
    let t = match loss {
        OutputLoss::Squared => matrix(&mut rng(33), 3, batch),
        OutputLoss::SoftmaxCrossEntropy => DMatrix::from_fn(3, batch, |i, j| f64::from(i == j % 3)),
    };
    (net, x, t)
}

fn sweeps(
    m: Method,
    net: &Network<f64>,
    betas: &[f64],
    loss: OutputLoss,
    (x, t): (&DMatrix<f64>, &DMatrix<f64>),
    settings: &InferenceSettings,
) -> (inference::InferenceReport<f64>, Gradients<f64>) {
    let mut ws = InferenceWorkspace::new(net, x.ncols());
    let mut grads = Gradients::zeros(net);
    let r = inference::gradient(net, m, betas, loss, x, t, settings, &mut ws, &mut grads).unwrap();
    (r, grads)
}

const EXACT: InferenceSettings = InferenceSettings {
    max_sweeps: 5000,
    tol: 1e-14,
    min_damping: 1.0 / 64.0,
    anderson: true,
};

#[test]
fn sweeps_converge_to_the_reference_minimizer_value_and_gradient() {
    for loss in [OutputLoss::Squared, OutputLoss::SoftmaxCrossEntropy] {
        let (net, x, t) = setup(4, loss);
        for m in METHODS {
            if m == Method::ConvexChl && loss != OutputLoss::Squared {
                continue; // the reference solves QPs: squared loss only (see the next test)
            }
            for beta in [0.3, 0.1, 1e-2, 1e-4] {
                let betas = [beta; 3];
                let reference = common::method(m, &net, &betas, loss, &x, &t).unwrap();
                let (r, g) = sweeps(m, &net, &betas, loss, (&x, &t), &EXACT);
                assert!(
                    r.converged,
                    "{m:?} {loss:?} beta {beta}: residual {}",
                    r.residual
                );
                let err = rel(&flat(&g), &flat(&reference.grad));
                assert!(
                    err < 1e-9,
                    "{m:?} {loss:?} beta {beta}: gradient error {err:e}"
                );
                let verr = (r.value - reference.value).abs() / reference.value.abs().max(1e-300);
                assert!(
                    verr < 1e-9,
                    "{m:?} {loss:?} beta {beta}: value {} vs {}",
                    r.value,
                    reference.value
                );
                // Eq. 29: the local surrogate lies below the loss (the forward pass is feasible).
                // The global one (Prop. 4) lies below the loss of its free phase instead.
                if m.choices().1 == Unravel::TopDown || m == Method::PredictiveCoding {
                    assert!(r.value <= r.forward_loss * (1.0 + 1e-15));
                }
            }
        }
    }
}

#[test]
fn gradients_are_the_gradients_of_their_own_values() {
    // Envelope theorem, checked by central differences of the sweeps' value (converged to
    // 1e-14) — including convex CHL with cross-entropy, which has no QP reference.
    for loss in [OutputLoss::Squared, OutputLoss::SoftmaxCrossEntropy] {
        let (net, x, t) = setup(3, loss);
        for m in METHODS {
            let betas = [0.2; 3];
            let (r, g) = sweeps(m, &net, &betas, loss, (&x, &t), &EXACT);
            assert!(r.converged, "{m:?} {loss:?}: {}", r.residual);
            let fd = common::fd_weights(&net, 1e-5, |n| {
                sweeps(m, n, &betas, loss, (&x, &t), &EXACT).0.value
            });
            let g = flat(&g);
            let err = rel(&g[..fd.len()], &fd);
            assert!(err < 1e-6, "{m:?} {loss:?}: {err:e}");
        }
    }
}

#[test]
fn one_sweep_is_prop7_back_propagation_or_fenchel_back_propagation() {
    // From λ = 0 the first backward sweep is Prop. 7's pass at the forward pass; the gradient
    // is then taken at the states it defines, so it differs from BP by O(β) only.
    let loss = OutputLoss::SoftmaxCrossEntropy;
    let (net, x, t) = setup(6, loss);
    let one = InferenceSettings {
        max_sweeps: 1,
        ..EXACT
    };
    for m in [Method::Mac, Method::PredictiveCoding, Method::Lpom] {
        let bp = common::method(Method::Bp, &net, &[1e-6; 3], loss, &x, &t).unwrap();
        let (r, g) = sweeps(m, &net, &[1e-6; 3], loss, (&x, &t), &one);
        assert_eq!(r.sweeps, 1);
        let err = rel(&flat(&g), &flat(&bp.grad));
        assert!(err < 1e-5, "{m:?}: {err:e}");
    }
}

#[test]
fn f32_training_path_agrees_with_f64() {
    let loss = OutputLoss::SoftmaxCrossEntropy;
    let (net, x, t) = setup(8, loss);
    let net32 = Network {
        layers: net
            .layers
            .iter()
            .map(|l| bilevel::nested::Layer {
                w: l.w.clone().cast::<f32>(),
                bias: l.bias.clone().cast::<f32>(),
                activation: l.activation,
            })
            .collect(),
    };
    let settings = InferenceSettings {
        max_sweeps: 50,
        tol: 1e-6,
        ..EXACT
    };
    for m in METHODS {
        for beta in [1e-1, 1e-3, 1e-6] {
            let (_, g64) = sweeps(m, &net, &[beta; 3], loss, (&x, &t), &EXACT);
            let mut ws = InferenceWorkspace::new(&net32, 8);
            let mut g32 = Gradients::zeros(&net32);
            let (x32, t32) = (x.clone().cast::<f32>(), t.clone().cast::<f32>());
            let b = [beta as f32; 3];
            let r = inference::gradient(
                &net32, m, &b, loss, &x32, &t32, &settings, &mut ws, &mut g32,
            )
            .unwrap();
            assert!(r.converged, "{m:?} beta {beta}: {}", r.residual);
            let g32: Vec<f64> = g32.flatten().iter().map(|&v| f64::from(v)).collect();
            // Single precision throughout; no cancellation at any β (the states carry λ).
            let err = rel(&g32, &flat(&g64));
            assert!(err < 1e-5, "{m:?} beta {beta}: {err:e}");
        }
    }
}

#[test]
fn a_batch_is_the_mean_of_its_samples() {
    let loss = OutputLoss::Squared;
    let (net, x, t) = setup(5, loss);
    for m in METHODS {
        let (r, g) = sweeps(m, &net, &[0.2; 3], loss, (&x, &t), &EXACT);
        let mut mean = vec![0.0; flat(&g).len()];
        let mut value = 0.0;
        for j in 0..5 {
            let xj = x.columns(j, 1).into_owned();
            let tj = t.columns(j, 1).into_owned();
            let (rj, gj) = sweeps(m, &net, &[0.2; 3], loss, (&xj, &tj), &EXACT);
            value += rj.value / 5.0;
            for (s, v) in mean.iter_mut().zip(flat(&gj)) {
                *s += v / 5.0;
            }
        }
        assert!(rel(&flat(&g), &mean) < 1e-12, "{m:?}");
        assert!((r.value - value).abs() < 1e-12 * value.abs(), "{m:?}");
    }
}

#[test]
fn budget_and_bad_input_are_reported() {
    let loss = OutputLoss::Squared;
    let (net, x, t) = setup(3, loss);
    let two = InferenceSettings {
        max_sweeps: 2,
        ..EXACT
    };
    let (r, _) = sweeps(Method::Mac, &net, &[0.5; 3], loss, (&x, &t), &two);
    assert_eq!(r.sweeps, 2);
    assert!(!r.converged && r.residual > 0.0);
    // Unconverged or not, the reported value bounds L^β from above and stays below the forward
    // loss (Eq. 29): the best iterate is kept when the last one is worse.
    let mut kept = 0;
    for m in [Method::Mac, Method::PredictiveCoding, Method::Lpom] {
        for beta in [0.5, 3.0, 30.0] {
            for budget in [1, 2, 3, 7] {
                let s = InferenceSettings {
                    max_sweeps: budget,
                    ..EXACT
                };
                let (r, _) = sweeps(m, &net, &[beta; 3], loss, (&x, &t), &s);
                assert!(
                    r.value <= r.forward_loss * (1.0 + 1e-12),
                    "{m:?} {beta} {budget}"
                );
                kept += usize::from(r.best_iterate);
            }
        }
    }
    assert!(kept > 0, "no case exercised the best-iterate rule");
    let mut ws = InferenceWorkspace::new(&net, 3);
    let mut g = Gradients::zeros(&net);
    let bad = InferenceSettings {
        max_sweeps: 0,
        ..EXACT
    };
    let e = inference::gradient(
        &net,
        Method::Mac,
        &[0.5; 3],
        loss,
        &x,
        &t,
        &bad,
        &mut ws,
        &mut g,
    );
    assert!(e.unwrap_err().to_string().contains("max_sweeps"));
    let e = inference::gradient(
        &net,
        Method::FenchelBp,
        &[0.5; 3],
        loss,
        &x,
        &t,
        &EXACT,
        &mut ws,
        &mut g,
    );
    assert!(e.is_err());
    let e = inference::gradient(
        &net,
        Method::Mac,
        &[0.5; 2],
        loss,
        &x,
        &t,
        &EXACT,
        &mut ws,
        &mut g,
    );
    assert!(e.is_err());
    let mut small = InferenceWorkspace::new(&net, 2);
    let e = inference::gradient(
        &net,
        Method::Mac,
        &[0.5; 3],
        loss,
        &x,
        &t,
        &EXACT,
        &mut small,
        &mut g,
    );
    assert!(e.is_err());
}

#[test]
fn at_a_convex_kink_the_held_units_reach_the_active_set_answer() {
    // MAC with cross-entropy at β = 0.3 on this network: the reference minimizer holds two ReLU
    // pre-activations on their kinks (the active-set finish of `nested::local`, whose
    // multipliers enter the gradient), where the map with f'(0) = 0 has no fixed point. The
    // sweeps hold those units (Newton on their multipliers) and must reach the same point —
    // value and gradient to 1e-9 — and say that they converged.
    let loss = OutputLoss::SoftmaxCrossEntropy;
    let (net, x, t) = setup(4, loss);
    let reference = common::method(Method::Mac, &net, &[0.3; 3], loss, &x, &t).unwrap();
    let (r, g) = sweeps(Method::Mac, &net, &[0.3; 3], loss, (&x, &t), &EXACT);
    assert!(r.converged, "{}", r.residual);
    let err = rel(&flat(&g), &flat(&reference.grad));
    assert!(err < 1e-9, "gradient error {err:e}");
    let gap = (r.value - reference.value) / reference.value;
    assert!(gap.abs() < 1e-12, "{gap:e}");
    // Without damping the held units do not settle within the budget: reported, not hidden.
    let undamped = InferenceSettings {
        min_damping: 1.0,
        ..EXACT
    };
    let (r, _) = sweeps(Method::Mac, &net, &[0.3; 3], loss, (&x, &t), &undamped);
    assert!(!r.converged && r.sweeps == EXACT.max_sweeps && r.residual > 1e-3);
}
