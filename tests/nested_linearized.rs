//! Prop. 7 on small networks: penalizer energies reproduce back-propagation (checked against
//! central differences of the network loss) for any β; Fenchel BP converges to it as β → 0, equals
//! the paper's Appendix C rule at every β, and batching equals averaging per-sample gradients.

use approx::assert_relative_eq;
use bilevel::app::verify::instances::{matrix, rng};
use bilevel::nested::linearized::{gradient, Gradients, Workspace};
use bilevel::nested::method::Method;
use bilevel::nested::{Batch, EnergyKind, NestedProblem, Network, Outcome, OutputLoss};
use bilevel::prelude::Activation;
use nalgebra::DMatrix;

fn net(seed: u64, widths: &[usize], hidden: Activation) -> Network<f64> {
    bilevel::app::verify::instances::network(&mut rng(seed), widths, hidden)
}

fn one_hot(labels: &[usize], classes: usize) -> DMatrix<f64> {
    DMatrix::from_fn(classes, labels.len(), |i, j| {
        if labels[j] == i {
            1.0
        } else {
            0.0
        }
    })
}

/// Independent reference: central differences of the batch-mean loss of the forward pass.
fn fd_gradient(
    n: &Network<f64>,
    loss: OutputLoss,
    x: &DMatrix<f64>,
    t: &DMatrix<f64>,
) -> Gradients<f64> {
    let value = |n: &Network<f64>| {
        let mut z = x.clone();
        for l in &n.layers {
            let mut a = &l.w * &z;
            for mut c in a.column_iter_mut() {
                c += &l.bias;
            }
            let mut out = a.clone();
            for j in 0..a.ncols() {
                l.activation
                    .activate(a.column(j).as_slice(), out.column_mut(j).as_mut_slice());
            }
            z = out;
        }
        let mut g = z.clone();
        loss.value_and_gradient(&z, t, &mut g)
    };
    bilevel::app::verify::reference::central_network(n, 1e-6, |n| Ok(value(n))).unwrap()
}

fn max_rel(a: &Gradients<f64>, b: &Gradients<f64>) -> f64 {
    let mut num = 0.0f64;
    let mut den = 1e-12f64;
    for k in 0..a.w.len() {
        num = num
            .max((&a.w[k] - &b.w[k]).amax())
            .max((&a.bias[k] - &b.bias[k]).amax());
        den = den.max(b.w[k].amax()).max(b.bias[k].amax());
    }
    num / den
}

fn run(
    n: &Network<f64>,
    kind: EnergyKind,
    betas: &[f64],
    loss: OutputLoss,
    x: &DMatrix<f64>,
    t: &DMatrix<f64>,
) -> (Gradients<f64>, Workspace<f64>) {
    let mut ws = Workspace::new(n, x.ncols());
    let mut g = Gradients::zeros(n);
    let problem = NestedProblem::new(n, kind, betas, loss).unwrap();
    let batch = Batch::new(&problem, x, t).unwrap();
    let report = gradient(&problem, batch, &mut ws, &mut g).unwrap();
    assert_eq!(report.status.outcome, Outcome::Solved);
    (g, ws)
}

#[test]
fn penalizer_energies_give_back_propagation_for_any_beta() {
    let n = net(1, &[5, 4, 3, 2], Activation::Relu);
    let x = matrix(&mut rng(2), 5, 7);
    for (loss, t) in [
        (OutputLoss::Squared, matrix(&mut rng(3), 2, 7)),
        (
            OutputLoss::SoftmaxCrossEntropy,
            one_hot(&[0, 1, 1, 0, 1, 0, 0], 2),
        ),
    ] {
        let reference = fd_gradient(&n, loss, &x, &t);
        for betas in [[1.0, 1.0, 1.0], [0.3, 2.0, 1e-3]] {
            let (g, _) = run(&n, EnergyKind::Penalizer, &betas, loss, &x, &t);
            // Central differences with h = 1e-6: O(h²) truncation plus 1e-16/h rounding.
            assert!(
                max_rel(&g, &reference) < 1e-7,
                "{}",
                max_rel(&g, &reference)
            );
        }
    }
}

#[test]
fn fenchel_bp_converges_to_back_propagation_as_beta_vanishes() {
    let n = net(4, &[5, 4, 3, 2], Activation::Relu);
    let x = matrix(&mut rng(5), 5, 6);
    let t = one_hot(&[1, 0, 1, 1, 0, 0], 2);
    let bp = run(
        &n,
        EnergyKind::Penalizer,
        &[1.0; 3],
        OutputLoss::SoftmaxCrossEntropy,
        &x,
        &t,
    )
    .0;
    let mut errs = Vec::new();
    for beta in [1e3, 1e2, 10.0, 1.0, 1e-2, 1e-4] {
        let g = run(
            &n,
            EnergyKind::Fenchel,
            &[beta; 3],
            OutputLoss::SoftmaxCrossEntropy,
            &x,
            &t,
        )
        .0;
        errs.push(max_rel(&g, &bp));
    }
    // Once β is below the distance of every pre-activation to its kink, the case split of the
    // difference quotient makes Fenchel BP equal back-propagation to rounding.
    assert!(errs[5] < 1e-12, "{errs:?}");
    assert!(errs[0] > 1e-2, "large β should differ: {errs:?}");
}

#[test]
fn fenchel_bp_equals_the_appendix_c_rule_at_every_beta() {
    let n = net(6, &[4, 5, 3, 3], Activation::Relu);
    let x = matrix(&mut rng(7), 4, 5);
    let t = one_hot(&[0, 2, 1, 2, 0], 3);
    for beta in [1e-3, 0.1, 1.0, 1000.0] {
        let (g, ws) = run(
            &n,
            EnergyKind::Fenchel,
            &[beta / 5.0; 3], // the Julia code's β acts on the batch-mean gradient: β/B per sample
            OutputLoss::SoftmaxCrossEntropy,
            &x,
            &t,
        );
        // Julia's rule, written out once in the test support: dy flows down as in BP, but every
        // ReLU pulls it back with (z − relu(x − β·dy))/β instead of relu'(x)·dy.
        let dy = {
            let z = &ws.z[2];
            let mut g = z.clone();
            OutputLoss::SoftmaxCrossEntropy.value_and_gradient(z, &t, &mut g);
            g // identity top layer: pre-activation gradient = dy
        };
        let julia =
            bilevel::app::verify::reference::appendix_c_gradient(&n, &x, (&ws.a, &ws.z), dy, beta);
        for k in 0..3 {
            // Both compute the same quotient; the library skips it where it is exactly dy or 0.
            assert_relative_eq!(g.w[k], julia.w[k], epsilon = 1e-12, max_relative = 1e-9);
        }
    }
}

#[test]
fn batched_gradient_is_the_mean_of_per_sample_gradients() {
    let n = net(8, &[3, 4, 2], Activation::HardTanh);
    let x = matrix(&mut rng(9), 3, 5);
    let t = matrix(&mut rng(10), 2, 5);
    for kind in [EnergyKind::Penalizer, EnergyKind::Fenchel] {
        let batched = run(&n, kind, &[0.5, 0.5], OutputLoss::Squared, &x, &t).0;
        let mut mean = Gradients::zeros(&n);
        for j in 0..5 {
            let xs = x.columns(j, 1).into_owned();
            let ts = t.columns(j, 1).into_owned();
            // The batch convention: a batch is the mean of its samples run alone at the same β.
            let g = run(&n, kind, &[0.5, 0.5], OutputLoss::Squared, &xs, &ts).0;
            for k in 0..2 {
                mean.w[k] += &g.w[k] / 5.0;
                mean.bias[k] += &g.bias[k] / 5.0;
            }
        }
        // Same sums in another order: rounding only.
        let err = max_rel(&batched, &mean);
        assert!(err < 1e-13, "{err}");
    }
}

#[test]
fn fenchel_error_signal_tends_to_the_one_sided_derivative_at_ties() {
    // One hidden ReLU layer whose first unit has a_1 = 0 exactly (zero weights and bias).
    let mut n = net(11, &[3, 3, 2], Activation::Relu);
    n.layers[0].w.row_mut(0).fill(0.0);
    n.layers[0].bias[0] = 0.0;
    let x = matrix(&mut rng(12), 3, 4);
    let t = matrix(&mut rng(13), 2, 4);
    let (_, ws) = run(
        &n,
        EnergyKind::Fenchel,
        &[1e-7, 1e-7],
        OutputLoss::Squared,
        &x,
        &t,
    );
    // (z̄ − z*)/β → ż = [−e]₊ at the tie (Example 1 with g = e), i.e. δ = −[−e]₊ = min(e, 0).
    for j in 0..4 {
        let e = ws.e[0][(0, j)];
        assert_relative_eq!(ws.delta[0][(0, j)], e.min(0.0), epsilon = 1e-12);
        let zbar = ws.z_bar(EnergyKind::Fenchel, 0, 1e-7);
        assert_relative_eq!(
            (zbar[(0, j)] - ws.z[0][(0, j)]) / 1e-7,
            (-e).max(0.0),
            epsilon = 1e-6
        );
    }
}

#[test]
fn f32_training_path_agrees_with_f64() {
    let n = net(14, &[6, 5, 3], Activation::Relu);
    let x = matrix(&mut rng(15), 6, 4);
    let t = one_hot(&[0, 2, 1, 1], 3);
    let g64 = run(
        &n,
        EnergyKind::Fenchel,
        &[0.1, 0.1],
        OutputLoss::SoftmaxCrossEntropy,
        &x,
        &t,
    )
    .0;
    let n32: Network<f32> = n.cast();
    let mut ws = Workspace::new(&n32, 4);
    let mut g32 = Gradients::zeros(&n32);
    let (x32, t32) = (x.clone().cast(), t.clone().cast());
    let problem = Method::FenchelBp
        .problem(&n32, &[0.1f32, 0.1][..], OutputLoss::SoftmaxCrossEntropy)
        .unwrap();
    let _report = gradient(
        &problem,
        Batch::new(&problem, &x32, &t32).unwrap(),
        &mut ws,
        &mut g32,
    )
    .unwrap();
    for k in 0..2 {
        assert_relative_eq!(g32.w[k].clone().cast::<f64>(), g64.w[k], epsilon = 1e-5);
    }
}

#[test]
fn bad_shapes_and_betas_are_errors() {
    let n = net(16, &[3, 2], Activation::Relu);
    let x = matrix(&mut rng(17), 3, 2);
    let t = matrix(&mut rng(18), 2, 2);
    let mut ws = Workspace::new(&n, 2);
    let mut g = Gradients::zeros(&n);
    assert!(gradient(
        &NestedProblem {
            net: &n,
            energy: EnergyKind::Fenchel,
            betas: (&[0.0] as &[_]).into(),
            loss: OutputLoss::Squared,
            method: None
        },
        Batch { x: &x, target: &t },
        &mut ws,
        &mut g
    )
    .is_err());
    assert!(gradient(
        &NestedProblem {
            net: &n,
            energy: EnergyKind::Fenchel,
            betas: (&[1.0, 1.0] as &[_]).into(),
            loss: OutputLoss::Squared,
            method: None
        },
        Batch { x: &x, target: &t },
        &mut ws,
        &mut g
    )
    .is_err());
    assert!(gradient(
        &NestedProblem {
            net: &n,
            energy: EnergyKind::Fenchel,
            betas: (&[1.0] as &[_]).into(),
            loss: OutputLoss::Squared,
            method: None
        },
        Batch {
            x: &matrix(&mut rng(1), 4, 2),
            target: &t
        },
        &mut ws,
        &mut g
    )
    .is_err());
    assert!(gradient(
        &NestedProblem {
            net: &n,
            energy: EnergyKind::Fenchel,
            betas: (&[1.0] as &[_]).into(),
            loss: OutputLoss::Squared,
            method: None
        },
        Batch {
            x: &x,
            target: &matrix(&mut rng(1), 3, 2)
        },
        &mut ws,
        &mut g
    )
    .is_err());
    let mut soft = n.clone();
    soft.layers[0].activation = Activation::Softmax;
    assert!(gradient(
        &NestedProblem {
            net: &soft,
            energy: EnergyKind::Penalizer,
            betas: (&[1.0] as &[_]).into(),
            loss: OutputLoss::Squared,
            method: None
        },
        Batch { x: &x, target: &t },
        &mut ws,
        &mut g
    )
    .is_err());
    assert!(gradient(
        &NestedProblem {
            net: &soft,
            energy: EnergyKind::Fenchel,
            betas: (&[1.0] as &[_]).into(),
            loss: OutputLoss::Squared,
            method: None
        },
        Batch { x: &x, target: &t },
        &mut ws,
        &mut g
    )
    .is_ok());
}

/// A workspace or gradients built for another network are an error, not a panic inside the
/// matrix products.
#[test]
fn buffers_built_for_another_network_are_errors() {
    use bilevel::nested::linearized::{gradient, Gradients, Workspace};
    use bilevel::nested::{EnergyKind, OutputLoss};
    let small = net(1, &[4, 3, 2], Activation::Relu);
    let large = net(2, &[4, 5, 2], Activation::Relu);
    let x = matrix(&mut rng(3), 4, 6);
    let t = matrix(&mut rng(4), 2, 6);
    for (ws_net, grads_net, named) in [(&small, &large, "workspace"), (&large, &small, "grads")] {
        let mut ws = Workspace::new(ws_net, 6);
        let mut g = Gradients::zeros(grads_net);
        let betas = [1.0; 2];
        let err = gradient(
            &NestedProblem {
                net: &large,
                energy: EnergyKind::Penalizer,
                betas: (&betas as &[_]).into(),
                loss: OutputLoss::Squared,
                method: None,
            },
            Batch { x: &x, target: &t },
            &mut ws,
            &mut g,
        )
        .unwrap_err();
        assert!(err.to_string().contains(named), "{err}");
    }
}
