//! The batched inference sweeps (`nested::inference`: MAC, predictive coding, LPOM as the fixed
//! point of Prop. 7's pass) against the per-sample reference solvers of `nested::local` (Newton
//! on the rates, L-BFGS + active set, block-coordinate FISTA), in f64; and the f32 training path
//! against the f64 one.

mod common;

use bilevel::app::verify::instances::{matrix, network, rng};
use bilevel::nested::inference::{self, InferenceWorkspace};
use bilevel::nested::linearized::Gradients;
use bilevel::nested::method::{Method, Unravel};
use bilevel::nested::{
    Batch, BatchReport, NestedProblem, NestedSettings, Network, Outcome, OutputLoss,
};
use bilevel::prelude::Activation;
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
    settings: &NestedSettings,
) -> (BatchReport<f64>, Gradients<f64>) {
    let mut ws = InferenceWorkspace::new(net, x.ncols());
    let mut grads = Gradients::zeros(net);
    let problem = m.problem(net, betas, loss).unwrap();
    let batch = Batch::new(&problem, x, t).unwrap();
    let r = inference::gradient(&problem, batch, settings, &mut ws, &mut grads).unwrap();
    (r, grads)
}

fn solved<T>(r: &BatchReport<T>) -> bool {
    r.status.outcome == Outcome::Solved
}

/// Sweeps run to convergence (the references' accuracy).
fn exact() -> NestedSettings {
    NestedSettings {
        inference_max_sweeps: 5000,
        inference_tol: 1e-14,
        ..NestedSettings::default()
    }
}

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
                let (r, g) = sweeps(m, &net, &betas, loss, (&x, &t), &exact());
                assert!(
                    solved(&r),
                    "{m:?} {loss:?} beta {beta}: residual {}",
                    r.status.residual
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
            let (r, g) = sweeps(m, &net, &betas, loss, (&x, &t), &exact());
            assert!(solved(&r), "{m:?} {loss:?}: {}", r.status.residual);
            let fd = common::fd_weights(&net, 1e-5, |n| {
                sweeps(m, n, &betas, loss, (&x, &t), &exact()).0.value
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
    let one = NestedSettings {
        inference_max_sweeps: 1,
        ..exact()
    };
    for m in [Method::Mac, Method::PredictiveCoding, Method::Lpom] {
        let bp = common::method(Method::Bp, &net, &[1e-6; 3], loss, &x, &t).unwrap();
        let (r, g) = sweeps(m, &net, &[1e-6; 3], loss, (&x, &t), &one);
        assert_eq!(r.status.iterations, 1);
        let err = rel(&flat(&g), &flat(&bp.grad));
        assert!(err < 1e-5, "{m:?}: {err:e}");
    }
}

#[test]
fn f32_training_path_agrees_with_f64() {
    let loss = OutputLoss::SoftmaxCrossEntropy;
    let (net, x, t) = setup(8, loss);
    let net32: Network<f32> = net.cast();
    let settings = NestedSettings {
        inference_max_sweeps: 50,
        inference_tol: 1e-6,
        ..exact()
    };
    for m in METHODS {
        for beta in [1e-1, 1e-3, 1e-6] {
            let (_, g64) = sweeps(m, &net, &[beta; 3], loss, (&x, &t), &exact());
            let mut ws = InferenceWorkspace::new(&net32, 8);
            let mut g32 = Gradients::zeros(&net32);
            let (x32, t32) = (x.clone().cast::<f32>(), t.clone().cast::<f32>());
            let b = [beta as f32; 3];
            let r = inference::gradient(
                &NestedProblem {
                    net: &net32,
                    energy: m.choices().0,
                    betas: (&b as &[_]).into(),
                    loss,
                    method: Some(m),
                },
                Batch {
                    x: &x32,
                    target: &t32,
                },
                &settings,
                &mut ws,
                &mut g32,
            )
            .unwrap();
            assert!(solved(&r), "{m:?} beta {beta}: {}", r.status.residual);
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
        let (r, g) = sweeps(m, &net, &[0.2; 3], loss, (&x, &t), &exact());
        let mut mean = vec![0.0; flat(&g).len()];
        let mut value = 0.0;
        for j in 0..5 {
            let xj = x.columns(j, 1).into_owned();
            let tj = t.columns(j, 1).into_owned();
            let (rj, gj) = sweeps(m, &net, &[0.2; 3], loss, (&xj, &tj), &exact());
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
    let two = NestedSettings {
        inference_max_sweeps: 2,
        ..exact()
    };
    let (r, _) = sweeps(Method::Mac, &net, &[0.5; 3], loss, (&x, &t), &two);
    assert_eq!(r.status.iterations, 2);
    assert!(!solved(&r) && r.status.residual > 0.0);
    // Unconverged or not, the reported value bounds L^β from above and stays below the forward
    // loss (Eq. 29): the best iterate is kept when the last one is worse.
    let mut kept = 0;
    for m in [Method::Mac, Method::PredictiveCoding, Method::Lpom] {
        for beta in [0.5, 3.0, 30.0] {
            for budget in [1, 2, 3, 7] {
                let s = NestedSettings {
                    inference_max_sweeps: budget,
                    ..exact()
                };
                let (r, _) = sweeps(m, &net, &[beta; 3], loss, (&x, &t), &s);
                assert!(
                    r.value <= r.forward_loss * (1.0 + 1e-12),
                    "{m:?} {beta} {budget}"
                );
                kept += usize::from(r.status.outcome == Outcome::BestIterate);
            }
        }
    }
    assert!(kept > 0, "no case exercised the best-iterate rule");
    let mut ws = InferenceWorkspace::new(&net, 3);
    let mut g = Gradients::zeros(&net);
    let bad = NestedSettings {
        inference_max_sweeps: 0,
        ..exact()
    };
    let e = inference::gradient(
        &NestedProblem {
            net: &net,
            energy: Method::Mac.choices().0,
            betas: (&[0.5; 3] as &[_]).into(),
            loss,
            method: Some(Method::Mac),
        },
        Batch { x: &x, target: &t },
        &bad,
        &mut ws,
        &mut g,
    );
    assert!(e.unwrap_err().to_string().contains("max_sweeps"));
    let e = inference::gradient(
        &NestedProblem {
            net: &net,
            energy: Method::FenchelBp.choices().0,
            betas: (&[0.5; 3] as &[_]).into(),
            loss,
            method: Some(Method::FenchelBp),
        },
        Batch { x: &x, target: &t },
        &exact(),
        &mut ws,
        &mut g,
    );
    assert!(e.is_err());
    let e = inference::gradient(
        &NestedProblem {
            net: &net,
            energy: Method::Mac.choices().0,
            betas: (&[0.5; 2] as &[_]).into(),
            loss,
            method: Some(Method::Mac),
        },
        Batch { x: &x, target: &t },
        &exact(),
        &mut ws,
        &mut g,
    );
    assert!(e.is_err());
    let mut small = InferenceWorkspace::new(&net, 2);
    let e = inference::gradient(
        &NestedProblem {
            net: &net,
            energy: Method::Mac.choices().0,
            betas: (&[0.5; 3] as &[_]).into(),
            loss,
            method: Some(Method::Mac),
        },
        Batch { x: &x, target: &t },
        &exact(),
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
    let (r, g) = sweeps(Method::Mac, &net, &[0.3; 3], loss, (&x, &t), &exact());
    assert!(solved(&r), "{}", r.status.residual);
    let err = rel(&flat(&g), &flat(&reference.grad));
    assert!(err < 1e-9, "gradient error {err:e}");
    let gap = (r.value - reference.value) / reference.value;
    assert!(gap.abs() < 1e-12, "{gap:e}");
    // Without damping the held units do not settle within the budget: reported, not hidden.
    let undamped = NestedSettings {
        inference_min_damping: 1.0,
        ..exact()
    };
    let (r, _) = sweeps(Method::Mac, &net, &[0.3; 3], loss, (&x, &t), &undamped);
    assert!(
        !solved(&r)
            && r.status.iterations == exact().inference_max_sweeps
            && r.status.residual > 1e-3
    );
}

// ---- The centered (±β) variant of the bottom-up rows -------------------------------------

fn centered(
    m: Method,
    net: &Network<f64>,
    betas: &[f64],
    loss: OutputLoss,
    (x, t): (&DMatrix<f64>, &DMatrix<f64>),
) -> (BatchReport<f64>, Gradients<f64>) {
    let settings = NestedSettings {
        centered: true,
        ..exact()
    };
    let (r, grads) = sweeps(m, net, betas, loss, (x, t), &settings);
    assert!(solved(&r), "{m:?}: residual {}", r.status.residual);
    (r, grads)
}

/// `J_γ(z) = Σ_k E_k(z_k, z_{k−1})/c_k + γ ½‖z_L − t‖²` for identity layers (`G = ½‖·‖²`),
/// `c_k = Π_{k≤l<L} β_l`, with every state in one vector `z`.
fn joint_energy(
    net: &Network<f64>,
    proximal: bool,
    betas: &[f64],
    gamma: f64,
    (x, t): (&DMatrix<f64>, &DMatrix<f64>),
    z: &nalgebra::DVector<f64>,
) -> f64 {
    let top = net.layers.len() - 1;
    let (mut below, mut offset, mut total) = (x.column(0).into_owned(), 0, 0.0);
    for (k, layer) in net.layers.iter().enumerate() {
        let n = layer.w.nrows();
        let zk = z.rows(offset, n).into_owned();
        let a = &layer.w * &below + &layer.bias;
        let energy = if proximal {
            0.5 * (&zk - &a).norm_squared()
        } else {
            0.5 * zk.norm_squared() - zk.dot(&a)
        };
        total += energy / betas[k..top].iter().product::<f64>();
        below = zk;
        offset += n;
    }
    total + gamma * 0.5 * (below - t.column(0)).norm_squared()
}

/// `min_z J_γ` of the quadratic `J_γ`, its Hessian and gradient at 0 assembled from values
/// (exact for a quadratic up to rounding).
fn dense_minimum(f: impl Fn(&nalgebra::DVector<f64>) -> f64, n: usize) -> f64 {
    let unit = |i: usize| nalgebra::DVector::from_fn(n, |j, _| f64::from(i == j));
    let f0 = f(&nalgebra::DVector::zeros(n));
    let g = nalgebra::DVector::from_fn(n, |i, _| 0.5 * (f(&unit(i)) - f(&-unit(i))));
    let h = DMatrix::from_fn(n, n, |i, j| {
        f(&(unit(i) + unit(j))) - f(&unit(i)) - f(&unit(j)) + f0
    });
    let chol = h
        .cholesky()
        .expect("the joint energy is strongly convex here");
    f(&-chol.solve(&g))
}

#[test]
fn centered_value_is_the_mean_of_the_exact_plus_and_minus_beta_surrogates() {
    // Identity layers and the squared loss: both phases are unconstrained quadratics, so
    // `L^{±β} = (min J_{±β_L} − min J_0)/(±β_L)` is a dense linear solve, independent of the
    // sweeps (and of how the −β phase is solved for its rates). Unequal β_k: only β_L flips.
    let net = network(&mut rng(41), &[4, 3, 3, 2], Activation::Identity);
    let (x, t) = (matrix(&mut rng(42), 4, 1), matrix(&mut rng(43), 2, 1));
    let n = 3 + 3 + 2;
    for (m, proximal) in [(Method::Chl, false), (Method::ConvexChl, true)] {
        for betas in [[0.1, 0.1, 0.1], [0.2, 0.15, 0.3]] {
            let top = betas[2];
            let min = |gamma: f64| {
                dense_minimum(
                    |z| joint_energy(&net, proximal, &betas, gamma, (&x, &t), z),
                    n,
                )
            };
            let (plus, minus) = ((min(top) - min(0.0)) / top, (min(-top) - min(0.0)) / -top);
            let (r, _) = centered(m, &net, &betas, OutputLoss::Squared, (&x, &t));
            let want = 0.5 * (plus + minus);
            assert!(
                (r.value - want).abs() < 1e-10 * want.abs(),
                "{m:?} {betas:?}: {} vs {want}",
                r.value
            );
            let (one, _) = sweeps(m, &net, &betas, OutputLoss::Squared, (&x, &t), &exact());
            assert!((one.value - plus).abs() < 1e-10 * plus.abs(), "{m:?}");
            // Def. 1's value is concave in β_L: L^{−β} ≥ ℓ(ž_L) ≥ L^β, and the gap is O(β_L).
            assert!(minus > plus, "{m:?}: {minus} {plus}");
        }
    }
}

#[test]
fn centered_gradient_reaches_its_limit_at_second_order_in_the_loss_beta() {
    // With the inner β_k fixed, halving β_L halves the one-sided gradient's distance to the
    // β_L → 0⁺ limit and quarters the centered one's: successive differences shrink by 2 and 4.
    let cases = [
        (Method::Chl, OutputLoss::Squared),
        (Method::Chl, OutputLoss::SoftmaxCrossEntropy),
        (Method::ConvexChl, OutputLoss::Squared),
        (Method::ConvexChl, OutputLoss::SoftmaxCrossEntropy),
    ];
    for (m, loss) in cases {
        let (net, x, t) = setup(4, loss);
        let grad = |top: f64, c: bool| {
            let betas = [0.2, 0.2, top];
            let g = if c {
                centered(m, &net, &betas, loss, (&x, &t)).1
            } else {
                sweeps(m, &net, &betas, loss, (&x, &t), &exact()).1
            };
            nalgebra::DVector::from_vec(flat(&g))
        };
        for (c, want) in [(false, 2.0), (true, 4.0)] {
            let (g1, g2, g3) = (grad(0.04, c), grad(0.02, c), grad(0.01, c));
            let ratio = (&g1 - &g2).norm() / (&g2 - &g3).norm();
            assert!(
                (ratio / want - 1.0).abs() < 0.15,
                "{m:?} {loss:?} centered {c}: ratio {ratio}"
            );
        }
    }
}

#[test]
fn centered_gradient_is_the_gradient_of_its_value_and_a_batch_mean() {
    for loss in [OutputLoss::Squared, OutputLoss::SoftmaxCrossEntropy] {
        let (net, x, t) = setup(3, loss);
        for m in [Method::Chl, Method::ConvexChl] {
            let betas = [0.2; 3];
            let (r, g) = centered(m, &net, &betas, loss, (&x, &t));
            let fd = common::fd_weights(&net, 1e-5, |n| {
                centered(m, n, &betas, loss, (&x, &t)).0.value
            });
            let g = flat(&g);
            let err = rel(&g[..fd.len()], &fd);
            assert!(err < 1e-6, "{m:?} {loss:?}: {err:e}");
            let mut mean = vec![0.0; g.len()];
            let mut value = 0.0;
            for j in 0..3 {
                let (xj, tj) = (x.columns(j, 1).into_owned(), t.columns(j, 1).into_owned());
                let (rj, gj) = centered(m, &net, &betas, loss, (&xj, &tj));
                value += rj.value / 3.0;
                for (s, v) in mean.iter_mut().zip(flat(&gj)) {
                    *s += v / 3.0;
                }
            }
            assert!(rel(&g, &mean) < 1e-12, "{m:?} {loss:?}");
            assert!(
                (r.value - value).abs() < 1e-12 * value.abs(),
                "{m:?} {loss:?}"
            );
        }
    }
    // Defined for the bottom-up rows only.
    let (net, x, t) = setup(2, OutputLoss::Squared);
    let mut ws = InferenceWorkspace::new(&net, 2);
    let mut g = Gradients::zeros(&net);
    for m in [
        Method::Mac,
        Method::PredictiveCoding,
        Method::Lpom,
        Method::Bp,
    ] {
        let problem = m.problem(&net, &[0.2; 3], OutputLoss::Squared).unwrap();
        let batch = Batch::new(&problem, &x, &t).unwrap();
        let settings = NestedSettings {
            centered: true,
            ..exact()
        };
        let e = inference::gradient(&problem, batch, &settings, &mut ws, &mut g);
        assert!(e.is_err(), "{m:?}");
    }
}

/// Convex CHL where the layers couple strongly (`β‖W_2‖_F²` from 1 to 18): the sweeps reach
/// the minimizers of both phases — the per-sample QPs, solved exactly by `global::contrastive`
/// — where sweeps with unit steps diverged in 6 of these 8 cases (states beyond 1e12, reported
/// as an unbounded energy although it is a sum of squares) and stalled in a seventh.
#[test]
fn convex_chl_converges_under_strong_layer_coupling() {
    let (base, x, t) = setup(4, OutputLoss::Squared);
    for scale in [1.0, 1.5, 2.0, 3.0] {
        let mut net = base.clone();
        for l in &mut net.layers {
            l.w *= scale;
        }
        let coupling = net.layers[1].w.norm_squared(); // ≥ ‖W_2‖₂²
        for beta in [0.5, 1.0] {
            let betas = [beta; 3];
            let problem = Method::ConvexChl
                .problem(&net, &betas, OutputLoss::Squared)
                .unwrap();
            let batch = Batch::new(&problem, &x, &t).unwrap();
            let reference =
                bilevel::nested::global::contrastive(&problem, batch, &NestedSettings::default())
                    .unwrap();
            let (r, g) = sweeps(
                Method::ConvexChl,
                &net,
                &betas,
                OutputLoss::Squared,
                (&x, &t),
                &exact(),
            );
            let case = format!(
                "scale {scale} beta {beta} (beta |W_2|_F^2 = {:.1})",
                beta * coupling
            );
            assert!(solved(&r), "{case}: residual {}", r.status.residual);
            let err = rel(&flat(&g), &flat(&reference.grad));
            assert!(err < 1e-9, "{case}: gradient error {err:e}");
            let verr = (r.value - reference.value).abs() / reference.value.abs();
            assert!(
                verr < 1e-9,
                "{case}: value {} vs {}",
                r.value,
                reference.value
            );
        }
    }
}
