//! Gradients of a QP layer's loss with respect to all of its data (Q, B, c, A, b, A_eq, b_eq),
//! `QuadraticProblem::data_gradients`: where nothing is weakly active, against central
//! differences of `L` itself in every datum; at weakly active rows (where `L` has a kink in
//! the data), against the one-sided difference quotient in `β` of Def. 1's envelope gradient,
//! formed from two independent solves (`z*` and the loss-augmented `ẑ_β` with its multipliers).

use bilevel::app::verify::instances::{constructed_qp, matrix, rng, vector, ConstructedQp};
use bilevel::prelude::*;
use bilevel::problem::LayerGradients;
use bilevel::prox::Branch;
use nalgebra::{DMatrix, DVector};

use Activity::{Inactive, Strong, Weak};

/// The layer with one datum moved by `h Δ` (`which`: 0 Q, 1 B, 2 c, 3 A, 4 b, 5 A_eq, 6 b_eq).
fn perturbed(inst: &ConstructedQp, which: usize, delta: &DMatrix<f64>, h: f64) -> QuadraticProblem {
    let (mut q, mut b, mut c, mut cons) = (
        inst.q.clone(),
        inst.b.clone(),
        inst.c.clone(),
        inst.constraints.clone(),
    );
    match which {
        0 => q += delta * h,
        1 => b += delta * h,
        2 => c += delta.column(0) * h,
        3 => cons.a += delta * h,
        4 => cons.b += delta.column(0) * h,
        5 => cons.a_eq += delta * h,
        _ => cons.b_eq += delta.column(0) * h,
    }
    QuadraticProblem::new(q, b, c, cons).unwrap()
}

fn direction(inst: &ConstructedQp, which: usize, seed: u64) -> DMatrix<f64> {
    let n = inst.q.nrows();
    let mut r = rng(seed);
    match which {
        0 => {
            let m = matrix(&mut r, n, n);
            (&m + m.transpose()) * 0.5
        }
        1 => matrix(&mut r, n, inst.b.ncols()),
        2 => matrix(&mut r, n, 1),
        3 => matrix(&mut r, inst.constraints.a.nrows(), n),
        4 => matrix(&mut r, inst.constraints.b.len(), 1),
        5 => matrix(&mut r, inst.constraints.a_eq.nrows(), n),
        _ => matrix(&mut r, inst.constraints.b_eq.len(), 1),
    }
}

fn claimed(g: &LayerGradients, which: usize, delta: &DMatrix<f64>) -> f64 {
    let dot = |a: &DMatrix<f64>| a.component_mul(delta).sum();
    let dotv = |a: &DVector<f64>| a.dot(&delta.column(0));
    match which {
        0 => dot(&g.q),
        1 => dot(&g.b),
        2 => dotv(&g.c),
        3 => dot(&g.constraints.a),
        4 => dotv(&g.constraints.b),
        5 => dot(&g.constraints.a_eq),
        _ => dotv(&g.constraints.b_eq),
    }
}

const NAMES: [&str; 7] = ["Q", "B", "c", "A", "b", "A_eq", "b_eq"];

#[test]
fn at_weakly_active_rows_every_gradient_is_the_one_sided_limit_of_the_envelope_gradient() {
    // Def. 1's surrogate has, at β > 0, the envelope gradient
    // [∂_data Lagr(ẑ_β, λ̂_β) − ∂_data Lagr(z*, λ*)]/β, computed here from two independent
    // solves (z* and the loss-augmented ẑ_β with its multipliers). For a linear loss the path
    // ẑ_β, λ̂_β is straight for small β, so at β = 1e-7 this one-sided difference quotient in
    // β is the limit up to rounding; the formulas must reproduce it, weak rows included.
    let labels = [Strong, Weak, Inactive, Weak, Strong, Inactive, Weak];
    let (mut leaves, mut stays) = (0, 0);
    for seed in 0..20 {
        let inst = constructed_qp(&mut rng(seed), 9, 3, 1, &labels);
        let loss = Loss::Linear {
            g: vector(&mut rng(100 + seed), 9),
        };
        let program = Bilevel::new(
            perturbed(&inst, 2, &DMatrix::zeros(9, 1), 0.0),
            loss.clone(),
        )
        .unwrap();
        let limit = program.limit(&inst.theta).unwrap();
        for b in limit.direction.branches.iter().flatten() {
            match b {
                Branch::Leaves => leaves += 1,
                Branch::Stays => stays += 1,
            }
        }
        let grads = program
            .inner
            .data_gradients(&inst.theta, &limit.z_star, &limit.direction)
            .unwrap();
        let beta = 1e-7;
        let hat = program.inner.solve(&inst.theta, &loss, beta).unwrap();
        let star = &limit.z_star;
        let (zh, zs, th) = (&hat.z, &star.z, &inst.theta);
        let quotient = |a: DMatrix<f64>, b: DMatrix<f64>| (a - b) / beta;
        let outer = |u: &DVector<f64>, v: &DVector<f64>| u * v.transpose();
        let want: [DMatrix<f64>; 7] = [
            quotient(outer(zh, zh) * 0.5, outer(zs, zs) * 0.5),
            quotient(-outer(zh, th), -outer(zs, th)),
            quotient(
                -DMatrix::from_column_slice(9, 1, zh.as_slice()),
                -DMatrix::from_column_slice(9, 1, zs.as_slice()),
            ),
            quotient(-outer(&hat.multipliers, zh), -outer(&star.multipliers, zs)),
            quotient(
                DMatrix::from_column_slice(7, 1, hat.multipliers.as_slice()),
                DMatrix::from_column_slice(7, 1, star.multipliers.as_slice()),
            ),
            quotient(
                -outer(&hat.multipliers_eq, zh),
                -outer(&star.multipliers_eq, zs),
            ),
            quotient(
                DMatrix::from_column_slice(1, 1, hat.multipliers_eq.as_slice()),
                DMatrix::from_column_slice(1, 1, star.multipliers_eq.as_slice()),
            ),
        ];
        let got: [DMatrix<f64>; 7] = [
            grads.q.clone(),
            grads.b.clone(),
            DMatrix::from_column_slice(9, 1, grads.c.as_slice()),
            grads.constraints.a.clone(),
            DMatrix::from_column_slice(7, 1, grads.constraints.b.as_slice()),
            grads.constraints.a_eq.clone(),
            DMatrix::from_column_slice(1, 1, grads.constraints.b_eq.as_slice()),
        ];
        for which in 0..7 {
            let err = (&got[which] - &want[which]).amax() / (1.0 + want[which].amax());
            assert!(err < 1e-6, "seed {seed}, d/d{}: {err:e}", NAMES[which]);
        }
    }
    assert!(leaves > 5 && stays > 5, "leaves {leaves}, stays {stays}");
}

#[test]
fn without_weak_rows_the_gradients_are_those_of_the_loss_itself() {
    let labels = [Strong, Inactive, Strong, Inactive, Inactive];
    for seed in 0..8 {
        let inst = constructed_qp(&mut rng(50 + seed), 8, 2, 1, &labels);
        let loss = Loss::Squared {
            target: vector(&mut rng(60 + seed), 8),
        };
        let program = Bilevel::new(
            perturbed(&inst, 2, &DMatrix::zeros(8, 1), 0.0),
            loss.clone(),
        )
        .unwrap();
        let limit = program.limit(&inst.theta).unwrap();
        let grads = program
            .inner
            .data_gradients(&inst.theta, &limit.z_star, &limit.direction)
            .unwrap();
        for (which, name) in NAMES.iter().enumerate() {
            let delta = direction(&inst, which, 7000 + 10 * seed + which as u64);
            let value = |h: f64| {
                let p = Bilevel::new(perturbed(&inst, which, &delta, h), loss.clone()).unwrap();
                p.loss_value(&inst.theta).unwrap()
            };
            let h = 1e-6;
            let fd = (value(h) - value(-h)) / (2.0 * h);
            let want = claimed(&grads, which, &delta);
            assert!(
                (fd - want).abs() < 1e-7 * (1.0 + want.abs()),
                "seed {seed}, d/d{name}: {fd} vs {want}"
            );
        }
    }
}

#[test]
fn gradients_of_the_wrong_shape_are_refused() {
    let inst = constructed_qp(&mut rng(3), 5, 2, 1, &[Strong, Inactive]);
    let program = Bilevel::new(
        perturbed(&inst, 2, &DMatrix::zeros(5, 1), 0.0),
        Loss::Linear {
            g: vector(&mut rng(4), 5),
        },
    )
    .unwrap();
    let limit = program.limit(&inst.theta).unwrap();
    let e = program
        .inner
        .data_gradients(&DVector::zeros(7), &limit.z_star, &limit.direction);
    assert!(e.unwrap_err().to_string().contains("theta"));
}

#[test]
fn finite_beta_gradients_are_the_gradients_of_the_surrogate_value() {
    // Away from weakly active rows L^β(data) is smooth: its gradient (the envelope formula of
    // `surrogate_data_gradients`) must match fourth-order central differences of the value in
    // every datum. (At a weakly active row of z*, L^β is only C¹ in the data; there the
    // finite-β gradients are checked through their β → 0 limit below and in the test above.)
    let labels = [
        Strong, Inactive, Strong, Inactive, Strong, Inactive, Inactive,
    ];
    let weak_labels = [Strong, Weak, Inactive, Weak, Strong, Inactive, Weak];
    for seed in 0..6 {
        let inst = constructed_qp(&mut rng(300 + seed), 9, 3, 1, &labels);
        for (loss, beta) in [
            (
                Loss::Linear {
                    g: vector(&mut rng(400 + seed), 9),
                },
                0.5,
            ),
            (
                Loss::Squared {
                    target: vector(&mut rng(500 + seed), 9),
                },
                0.05,
            ),
        ] {
            let program = Bilevel::new(
                perturbed(&inst, 2, &DMatrix::zeros(9, 1), 0.0),
                loss.clone(),
            )
            .unwrap();
            let z_star = program.solve_free(&inst.theta).unwrap();
            let offset = program
                .inner
                .offset(&inst.theta, &loss, beta, &z_star)
                .unwrap();
            let grads = program
                .inner
                .surrogate_data_gradients(&inst.theta, &z_star, &offset, beta)
                .unwrap();
            for (which, name) in NAMES.iter().enumerate() {
                let delta = direction(&inst, which, 9000 + 10 * seed + which as u64);
                let value = |h: f64| {
                    let p = Bilevel::new(perturbed(&inst, which, &delta, h), loss.clone()).unwrap();
                    p.surrogate(&inst.theta, beta).unwrap().value
                };
                // Fourth-order differences: the step stays far above the activity
                // tolerances (1e-9) while the truncation error, O(h⁴), vanishes.
                let h = 1e-4;
                let fd = (8.0 * (value(h) - value(-h)) - (value(2.0 * h) - value(-2.0 * h)))
                    / (12.0 * h);
                let want = claimed(&grads, which, &delta);
                assert!(
                    (fd - want).abs() < 1e-8 * (1.0 + want.abs()),
                    "seed {seed}, beta {beta}, d/d{name}: {fd} vs {want}"
                );
            }
        }
    }
    // At β → 0 the finite-β gradients approach the limit ones (here β = 1e-6, linear loss),
    // weakly active rows included.
    let inst = constructed_qp(&mut rng(7), 9, 3, 1, &weak_labels);
    let loss = Loss::Linear {
        g: vector(&mut rng(8), 9),
    };
    let program = Bilevel::new(
        perturbed(&inst, 2, &DMatrix::zeros(9, 1), 0.0),
        loss.clone(),
    )
    .unwrap();
    let limit = program.limit(&inst.theta).unwrap();
    let at = program
        .inner
        .data_gradients(&inst.theta, &limit.z_star, &limit.direction)
        .unwrap();
    let offset = program
        .inner
        .offset(&inst.theta, &loss, 1e-6, &limit.z_star)
        .unwrap();
    let near = program
        .inner
        .surrogate_data_gradients(&inst.theta, &limit.z_star, &offset, 1e-6)
        .unwrap();
    assert!(
        (&near.q - &at.q).amax() < 1e-5 && (&near.constraints.a - &at.constraints.a).amax() < 1e-5
    );
    assert!((&near.constraints.b - &at.constraints.b).amax() < 1e-9);
    // β must be positive.
    assert!(program
        .inner
        .surrogate_data_gradients(&inst.theta, &limit.z_star, &offset, 0.0)
        .is_err());
}
