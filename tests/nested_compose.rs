//! Props. 4 and 5 through the Section 2 wrapper: Def. 1 applied level by level
//! (`nested::compose`) equals the nested solvers' Eq. 22 and Eq. 28, and the shapes the
//! composition cannot express are errors.

mod common;

use bilevel::app::verify::instances::{network, rng, vector};
use bilevel::nested::compose::{bottom_up, top_down};
use bilevel::nested::{EnergyKind, NestedProblem, Network, OutputLoss};
use bilevel::prelude::Activation;
use nalgebra::{DMatrix, DVector};

fn net(seed: u64, widths: &[usize], relu: usize, bias: f64) -> Network<f64> {
    let mut n = network(&mut rng(seed), widths, Activation::Identity);
    for (k, l) in n.layers.iter_mut().enumerate() {
        l.bias *= bias;
        l.activation = if k == relu {
            Activation::Relu
        } else {
            Activation::Identity
        };
    }
    n
}

fn column(v: &DVector<f64>) -> DMatrix<f64> {
    DMatrix::from_column_slice(v.len(), 1, v.as_slice())
}

#[test]
fn bottom_up_composition_is_eq22() {
    for (seed, widths) in [(1, &[3, 4, 2][..]), (2, &[4, 3, 3, 2][..])] {
        let levels = widths.len() - 1;
        let n = net(seed, widths, levels - 1, 5.0);
        let (x, t) = (
            vector(&mut rng(seed + 10), widths[0]),
            vector(&mut rng(seed + 20), widths[levels]),
        );
        let betas: Vec<f64> = (0..levels).map(|k| 0.2 + 0.3 * k as f64).collect();
        let problem =
            NestedProblem::new(&n, EnergyKind::Proximal, &betas, OutputLoss::Squared).unwrap();
        let composed = bottom_up(&problem, &x, &t).unwrap();
        let def1 = composed
            .program
            .surrogate(&composed.theta, betas[levels - 1])
            .unwrap();
        let eq22 = common::global(
            &n,
            EnergyKind::Proximal,
            &betas,
            OutputLoss::Squared,
            &column(&x),
            &column(&t),
        )
        .unwrap();
        assert!(
            (def1.value - eq22.value).abs() <= 1e-12 * eq22.value.abs(),
            "{} vs {}",
            def1.value,
            eq22.value
        );
        let grad_b: Vec<f64> = eq22
            .grad
            .bias
            .iter()
            .flat_map(|b| b.iter().copied())
            .collect();
        assert!(common::rel(def1.grad_theta.as_slice(), &grad_b) < 1e-10);
    }
}

#[test]
fn top_down_composition_is_eq28() {
    for (seed, widths) in [(3, &[3, 4, 2][..]), (4, &[4, 3, 3, 2][..])] {
        let levels = widths.len() - 1;
        let n = net(seed, widths, 0, 5.0);
        let (x, t) = (
            vector(&mut rng(seed + 10), widths[0]),
            vector(&mut rng(seed + 20), widths[levels]),
        );
        let betas: Vec<f64> = (0..levels).map(|k| 0.9 - 0.3 * k as f64).collect();
        for kind in [EnergyKind::Fenchel, EnergyKind::Proximal] {
            let problem = NestedProblem::new(&n, kind, &betas, OutputLoss::Squared).unwrap();
            let value = top_down(&problem, &x, &t).unwrap();
            let eq28 = common::local(
                &n,
                kind,
                &betas,
                OutputLoss::Squared,
                &column(&x),
                &column(&t),
            )
            .unwrap();
            assert!(
                (value - eq28.value).abs() <= 1e-12 * eq28.value.abs(),
                "{kind:?}: {value} vs {}",
                eq28.value
            );
        }
    }
}

#[test]
fn shapes_the_composition_cannot_express_are_errors() {
    let (x, t) = (vector(&mut rng(5), 3), vector(&mut rng(6), 2));
    // A box on a level that has to be eliminated.
    let boxed_hidden = net(7, &[3, 4, 2], 0, 1.0);
    let p = NestedProblem::new(
        &boxed_hidden,
        EnergyKind::Proximal,
        &[0.5; 2],
        OutputLoss::Squared,
    )
    .unwrap();
    assert!(bottom_up(&p, &x, &t).is_err());
    let boxed_top = net(7, &[3, 4, 2], 1, 1.0);
    let p = NestedProblem::new(
        &boxed_top,
        EnergyKind::Fenchel,
        &[0.5; 2],
        OutputLoss::Squared,
    )
    .unwrap();
    assert!(top_down(&p, &x, &t).is_err());
    // Cross-entropy, penalizer energies, wrong sizes.
    let ok = net(7, &[3, 4, 2], 1, 1.0);
    let p = NestedProblem::new(
        &ok,
        EnergyKind::Proximal,
        &[0.5; 2],
        OutputLoss::SoftmaxCrossEntropy,
    )
    .unwrap();
    assert!(bottom_up(&p, &x, &t).is_err());
    let p = NestedProblem::new(&ok, EnergyKind::Penalizer, &[0.5; 2], OutputLoss::Squared).unwrap();
    assert!(bottom_up(&p, &x, &t).is_err());
    let p = NestedProblem::new(&ok, EnergyKind::Proximal, &[0.5; 2], OutputLoss::Squared).unwrap();
    assert!(bottom_up(&p, &vector(&mut rng(8), 4), &t).is_err());
}

/// Convex CHL whose clamped working set holds every top unit on its bound in both phases, so
/// `d = ẑ − ž` is exactly 0 (the difference system used to report rounding noise in `d` as an
/// inaccurate KKT solve; found by the Prop. 4 row at verify seed 2).
#[test]
fn convex_chl_with_every_top_unit_clamped_in_both_phases() {
    let mut n = net(9, &[3, 4, 3], 1, 1.0);
    n.layers[1].bias.fill(-50.0);
    let (x, t) = (vector(&mut rng(10), 3), vector(&mut rng(11), 3));
    let sol = common::global(
        &n,
        EnergyKind::Proximal,
        &[0.5, 0.5],
        OutputLoss::Squared,
        &column(&x),
        &column(&t),
    )
    .unwrap();
    for k in 0..2 {
        assert_eq!((&sol.clamped[k] - &sol.free[k]).amax(), 0.0);
    }
    // The value is the loss at the (clamped = free) solution: ½‖0 − t‖².
    assert!((sol.value - 0.5 * t.norm_squared()).abs() < 1e-15);
}
