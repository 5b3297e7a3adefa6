//! Prop. 4 (global contrastive, bottom-up) for convex CHL: the gradient of L_GC^β matches its own
//! finite differences, tends to back-propagation as β → 0 (Cor. 2), and the clamped optimum is
//! never below the free one (Eq. 24 with ℓ ≥ 0).

use bilevel::nested::global::global_contrastive;
use bilevel::nested::linearized::{gradient, Gradients, Workspace};
use bilevel::nested::{EnergyKind, Network, OutputLoss};
use bilevel::prelude::Activation;
use bilevel::verify::instances::{matrix, rng};

fn setup() -> (Network<f64>, nalgebra::DMatrix<f64>, nalgebra::DMatrix<f64>) {
    let net = bilevel::verify::instances::network(&mut rng(31), &[4, 4, 3, 2], Activation::Relu);
    (net, matrix(&mut rng(32), 4, 3), matrix(&mut rng(33), 2, 3))
}

fn flat(g: &Gradients<f64>) -> Vec<f64> {
    g.flatten().iter().copied().collect()
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    num / b.iter().map(|v| v.abs()).fold(1e-12, f64::max)
}

#[test]
fn convex_chl_gradient_matches_finite_differences_of_its_value() {
    let (net, x, t) = setup();
    let betas = [0.5; 3];
    let sol = global_contrastive(
        &net,
        EnergyKind::Proximal,
        &betas,
        OutputLoss::Squared,
        &x,
        &t,
    )
    .unwrap();
    let g = flat(&sol.grad);
    let h = 1e-5;
    let mut fd = Vec::new();
    for k in 0..3 {
        for idx in 0..net.layers[k].w.len() {
            let mut p = net.clone();
            p.layers[k].w[idx] += h;
            let mut m = net.clone();
            m.layers[k].w[idx] -= h;
            let vp = global_contrastive(
                &p,
                EnergyKind::Proximal,
                &betas,
                OutputLoss::Squared,
                &x,
                &t,
            )
            .unwrap()
            .value;
            let vm = global_contrastive(
                &m,
                EnergyKind::Proximal,
                &betas,
                OutputLoss::Squared,
                &x,
                &t,
            )
            .unwrap()
            .value;
            fd.push((vp - vm) / (2.0 * h));
        }
    }
    assert!(
        rel(&g[..fd.len()], &fd) < 1e-6,
        "{}",
        rel(&g[..fd.len()], &fd)
    );
    assert!(sol.value >= 0.0);
}

#[test]
fn convex_chl_tends_to_back_propagation_cor2() {
    let (net, x, t) = setup();
    let mut ws = Workspace::new(&net, 3);
    let mut g = Gradients::zeros(&net);
    gradient(
        &net,
        EnergyKind::Penalizer,
        &[1.0; 3],
        OutputLoss::Squared,
        &x,
        &t,
        &mut ws,
        &mut g,
    )
    .unwrap();
    let bp = flat(&g);
    let errs: Vec<f64> = [1e-1, 1e-2, 1e-3]
        .iter()
        .map(|&b| {
            rel(
                &flat(
                    &global_contrastive(
                        &net,
                        EnergyKind::Proximal,
                        &[b; 3],
                        OutputLoss::Squared,
                        &x,
                        &t,
                    )
                    .unwrap()
                    .grad,
                ),
                &bp,
            )
        })
        .collect();
    assert!(errs[2] < 1e-2 && errs[2] < errs[0], "{errs:?}");
}

#[test]
fn chl_gradient_matches_finite_differences_and_tends_to_back_propagation() {
    let (net, x, t) = setup();
    for loss in [OutputLoss::Squared, OutputLoss::SoftmaxCrossEntropy] {
        let t = if loss == OutputLoss::Squared {
            t.clone()
        } else {
            nalgebra::DMatrix::from_fn(2, 3, |i, j| ((i + j) % 2) as f64)
        };
        // Finite β: the surrogate's own finite differences (β = 0.1 keeps the energy bounded).
        let betas = [0.1; 3];
        let sol = global_contrastive(&net, EnergyKind::Fenchel, &betas, loss, &x, &t).unwrap();
        let g = flat(&sol.grad);
        let h = 1e-6;
        let mut fd = Vec::new();
        for k in 0..3 {
            for idx in 0..net.layers[k].w.len() {
                let mut p = net.clone();
                p.layers[k].w[idx] += h;
                let mut m = net.clone();
                m.layers[k].w[idx] -= h;
                let vp = global_contrastive(&p, EnergyKind::Fenchel, &betas, loss, &x, &t)
                    .unwrap()
                    .value;
                let vm = global_contrastive(&m, EnergyKind::Fenchel, &betas, loss, &x, &t)
                    .unwrap()
                    .value;
                fd.push((vp - vm) / (2.0 * h));
            }
        }
        assert!(
            rel(&g[..fd.len()], &fd) < 1e-5,
            "{loss:?}: {}",
            rel(&g[..fd.len()], &fd)
        );
        // Cor. 2.
        let mut ws = Workspace::new(&net, 3);
        let mut gb = Gradients::zeros(&net);
        gradient(
            &net,
            EnergyKind::Penalizer,
            &[1.0; 3],
            loss,
            &x,
            &t,
            &mut ws,
            &mut gb,
        )
        .unwrap();
        let bp = flat(&gb);
        let errs: Vec<f64> = [1e-1, 1e-2, 1e-3]
            .iter()
            .map(|&b| {
                rel(
                    &flat(
                        &global_contrastive(&net, EnergyKind::Fenchel, &[b; 3], loss, &x, &t)
                            .unwrap()
                            .grad,
                    ),
                    &bp,
                )
            })
            .collect();
        assert!(errs[2] < 1e-2 && errs[2] < errs[0], "{loss:?}: {errs:?}");
    }
}

#[test]
fn chl_reports_an_unbounded_energy_as_an_error() {
    let (mut net, x, t) = setup();
    for l in &mut net.layers {
        l.w *= 4.0;
    }
    let err = global_contrastive(
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
