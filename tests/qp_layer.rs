//! `bilevel::layer`, QP layers in the frameworks' convention (`min ½zᵀQz + pᵀz`, `Gz ≤ h`,
//! `Az = b`), against independent answers: QPs constructed backwards from a known solution,
//! central differences of the forward solve for every input away from ties, and one-sided
//! differences along the loss at weakly active rows; a batch against its items and one thread
//! against several.

use bilevel::app::verify::instances::{constructed_qp, matrix, rng, vector, ConstructedQp};
use bilevel::layer::{gradients, solve, Mode, QpData, QpSolution};
use bilevel::nalgebra::{DMatrix, DVector};
use bilevel::prox::Activity::{self, Inactive, Strong, Weak};
use bilevel::solve::qp::Tolerances;
use bilevel::Error;

/// A constructed QP in this convention: `p = −(Bθ + c)`, `G = −A`, `h = −b`.
fn item(inst: &ConstructedQp) -> QpData {
    let c = &inst.b * &inst.theta + &inst.c;
    QpData {
        q: inst.q.clone(),
        p: -c,
        g: -&inst.constraints.a,
        h: -&inst.constraints.b,
        a: inst.constraints.a_eq.clone(),
        b: inst.constraints.b_eq.clone(),
    }
}

fn one(data: &QpData) -> QpSolution {
    solve(std::slice::from_ref(data), 1, Tolerances::default())
        .pop()
        .unwrap()
        .unwrap()
}

fn z_of(data: &QpData) -> DVector<f64> {
    one(data).z().clone()
}

const LABELS: [Activity; 5] = [Strong, Inactive, Strong, Inactive, Inactive];

#[test]
fn the_forward_solve_finds_the_constructed_solution() {
    for seed in 0..10 {
        let inst = constructed_qp(&mut rng(seed), 7, 2, 1, &LABELS);
        let sol = one(&item(&inst));
        let err = (sol.z() - &inst.z_star).amax();
        assert!(err < 1e-12 * (1.0 + inst.z_star.amax()), "{seed}: {err:e}");
        let s = sol.status();
        assert_eq!(s.activity, inst.labels, "{seed}");
        assert!(s.residual < 1e-10, "{seed}: {}", s.residual);
    }
}

/// A change of one input by `t` along a fixed direction.
type Perturbation = Box<dyn Fn(&mut QpData, f64)>;

/// `⟨∂ℓ/∂X, Δ⟩` against `(ℓ(X + εΔ) − ℓ(X − εΔ))/2ε` for `ℓ = gᵀz*`, every input, random
/// directions (symmetric for `Q`), on QPs without weakly active rows (where `z*` is smooth).
#[test]
fn gradients_of_every_input_match_central_differences_away_from_ties() {
    for seed in 0..8 {
        let inst = constructed_qp(&mut rng(100 + seed), 7, 2, 1, &LABELS);
        let data = item(&inst);
        let g = vector(&mut rng(200 + seed), 7);
        let grads = one(&data).gradients(&g, Mode::Limit).unwrap();
        let loss = |d: &QpData| g.dot(&z_of(d));
        let dq = {
            let m = matrix(&mut rng(300 + seed), 7, 7);
            &m + m.transpose()
        };
        let along = dq.clone();
        let cases: Vec<(&str, Perturbation, f64)> = vec![
            (
                "Q",
                Box::new(move |d, t| d.q += &along * t),
                grads.q.dot(&dq),
            ),
            ("p", Box::new(|d, t| d.p[3] += t), grads.p[3]),
            ("G", Box::new(|d, t| d.g[(2, 4)] += t), grads.g[(2, 4)]),
            ("h", Box::new(|d, t| d.h[0] += t), grads.h[0]),
            ("A", Box::new(|d, t| d.a[(0, 5)] += t), grads.a[(0, 5)]),
            ("b", Box::new(|d, t| d.b[0] += t), grads.b[0]),
        ];
        for (name, perturb, claimed) in cases {
            let at = |t: f64| {
                let mut d = data.clone();
                perturb(&mut d, t);
                loss(&d)
            };
            let eps = 1e-6;
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            let err = (claimed - fd).abs() / fd.abs().max(1.0);
            assert!(err < 1e-6, "seed {seed}, {name}: {claimed} vs {fd}");
        }
    }
}

/// At a weakly active row the derivative is one-sided: `∂ℓ/∂p = ż`, the rate of
/// `z*(p + εg)` as `ε → 0⁺` (the loss `gᵀz` added to the energy), which a forward solve
/// gives directly; the opposite loss takes the other branch.
#[test]
fn at_weakly_active_rows_the_gradient_is_the_one_sided_rate_along_the_loss() {
    let labels = [Strong, Weak, Inactive, Weak, Inactive];
    let mut branches_seen = (0, 0);
    for seed in 0..12 {
        let inst = constructed_qp(&mut rng(400 + seed), 7, 2, 1, &labels);
        let data = item(&inst);
        let sol = one(&data);
        assert_eq!(sol.status().activity, labels, "{seed}");
        for sign in [1.0, -1.0] {
            let g = vector(&mut rng(500 + seed), 7) * sign;
            let grads = sol.gradients(&g, Mode::Limit).unwrap();
            let eps = 1e-8;
            let mut moved = data.clone();
            moved.p += &g * eps;
            let rate = (z_of(&moved) - sol.z()) / eps;
            let err = (&grads.p - &rate).amax();
            assert!(err < 1e-6 * (1.0 + rate.amax()), "{seed} {sign}: {err:e}");
            for b in grads.status.branches.iter().flatten() {
                match b {
                    bilevel::prox::Branch::Leaves => branches_seen.0 += 1,
                    bilevel::prox::Branch::Stays => branches_seen.1 += 1,
                }
            }
        }
    }
    assert!(
        branches_seen.0 > 0 && branches_seen.1 > 0,
        "{branches_seen:?}"
    );
}

/// The items solved and their limit gradients for `grads`, on `threads` threads.
fn solved_and_differentiated(
    data: &[QpData],
    grads: &[DVector<f64>],
    threads: usize,
) -> (Vec<QpSolution>, Vec<bilevel::layer::QpGradients>) {
    let sols: Vec<QpSolution> = solve(data, threads, Tolerances::default())
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let g = gradients(&sols, grads, Mode::Limit, threads).unwrap();
    (sols, g.into_iter().map(Result::unwrap).collect())
}

#[test]
fn a_batch_is_its_items_for_every_thread_count() {
    let data: Vec<QpData> = (0..9)
        .map(|s| {
            item(&constructed_qp(
                &mut rng(600 + s),
                6,
                1,
                1,
                &[Strong, Weak, Inactive],
            ))
        })
        .collect();
    let grads: Vec<DVector<f64>> = (0..9).map(|s| vector(&mut rng(700 + s), 6)).collect();
    let (sols1, g1) = solved_and_differentiated(&data, &grads, 1);
    for threads in [2, 3, 16] {
        let (sols, g) = solved_and_differentiated(&data, &grads, threads);
        for i in 0..9 {
            assert_eq!(sols[i].z(), sols1[i].z(), "item {i}, {threads} threads");
            assert_eq!(g[i], g1[i], "item {i}, {threads} threads");
        }
    }
    for i in 0..9 {
        assert_eq!(sols1[i].z(), one(&data[i]).z());
    }
}

#[test]
fn the_contrastive_gradient_tends_to_the_limit_at_rate_beta() {
    let inst = constructed_qp(&mut rng(800), 6, 1, 1, &[Strong, Inactive, Inactive]);
    let sol = one(&item(&inst));
    let g = vector(&mut rng(801), 6);
    let limit = sol.gradients(&g, Mode::Limit).unwrap();
    let err = |beta: f64| {
        let c = sol.gradients(&g, Mode::Contrastive(beta)).unwrap();
        (&c.p - &limit.p).amax() + (&c.q - &limit.q).amax() + (&c.g - &limit.g).amax()
    };
    let (e1, e2) = (err(1e-2), err(5e-3));
    assert!(e1 > 0.0 && (e1 / e2 - 2.0).abs() < 0.1, "{e1:e} {e2:e}");
}

#[test]
fn bad_items_are_errors_naming_the_argument() {
    let inst = constructed_qp(&mut rng(900), 4, 1, 0, &[Strong]);
    let good = item(&inst);
    let cases: Vec<(QpData, &str)> = vec![
        (
            QpData {
                p: DVector::zeros(3),
                ..good.clone()
            },
            "p",
        ),
        (
            QpData {
                h: DVector::zeros(2),
                ..good.clone()
            },
            "G, h",
        ),
        (
            QpData {
                a: DMatrix::zeros(1, 3),
                b: DVector::zeros(1),
                ..good.clone()
            },
            "A, b",
        ),
        (
            QpData {
                q: -DMatrix::identity(4, 4),
                ..good.clone()
            },
            "Q",
        ),
        (
            QpData {
                h: DVector::from_element(1, f64::NAN),
                ..good.clone()
            },
            "h",
        ),
    ];
    for (data, name) in cases {
        let e = solve(&[data], 1, Tolerances::default())
            .pop()
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains(name), "{name}: {e}");
    }
    let sol = one(&good);
    assert!(matches!(
        sol.gradients(&DVector::zeros(3), Mode::Limit),
        Err(Error::DimensionMismatch { .. })
    ));
    assert!(sol
        .gradients(&DVector::zeros(4), Mode::Contrastive(0.0))
        .is_err());
}

/// In this convention `∂/∂p = −∂/∂c`; a layer with `B = I` at `θ = 0` has `c` as its `θ`, so
/// the θ-gradients of `Bilevel` (Cor. 1, Def. 1, the centered surrogate) are `−∂/∂p` in each
/// mode, by another route (the cross term `∂²E/∂θ∂z` instead of the data formula).
#[test]
fn each_mode_agrees_with_the_theta_gradients_of_the_same_program() {
    use bilevel::prelude::{Bilevel, LinearConstraints, Loss, QuadraticProblem};
    for seed in 0..6 {
        let labels = [Strong, Weak, Inactive, Inactive];
        let inst = constructed_qp(&mut rng(1000 + seed), 6, 1, 1, &labels);
        let data = item(&inst);
        let g = vector(&mut rng(1100 + seed), 6);
        let constraints = LinearConstraints {
            a: -&data.g,
            b: -&data.h,
            a_eq: data.a.clone(),
            b_eq: data.b.clone(),
        };
        let layer = QuadraticProblem::new(
            data.q.clone(),
            DMatrix::identity(6, 6),
            DVector::zeros(6),
            constraints,
        )
        .unwrap();
        let program = Bilevel::new(layer, Loss::Linear { g: g.clone() }).unwrap();
        let theta = -&data.p; // c = −p enters as Bθ
        let sol = one(&data);
        let check = |mode: Mode, want: DVector<f64>| {
            let got = -sol.gradients(&g, mode).unwrap().p;
            let err = (&got - &want).amax();
            assert!(
                err < 1e-10 * (1.0 + want.amax()),
                "{seed} {mode:?}: {err:e}"
            );
        };
        check(Mode::Limit, program.limit(&theta).unwrap().grad_theta);
        check(
            Mode::Contrastive(0.1),
            program.surrogate(&theta, 0.1).unwrap().grad_theta,
        );
        check(
            Mode::Centered(0.1),
            program.centered(&theta, 0.1).unwrap().grad_theta,
        );
    }
}

/// On one piece of a QP (no row changes status within `±β`) `ẑ_β` is affine in `β`, so the
/// contrastive surrogate's data gradient is the limit plus exactly `O(β)` terms (the `β ffᵀ`
/// ones), which the centered mean of `±β` cancels: it is the limit to rounding.
#[test]
fn on_one_piece_the_centered_gradient_is_the_limit() {
    let inst = constructed_qp(&mut rng(1200), 6, 1, 1, &[Strong, Inactive, Inactive]);
    let sol = one(&item(&inst));
    let g = vector(&mut rng(1201), 6) * 0.01;
    let limit = sol.gradients(&g, Mode::Limit).unwrap();
    let gap = |mode: Mode| {
        let c = sol.gradients(&g, mode).unwrap();
        (&c.q - &limit.q).amax() + (&c.g - &limit.g).amax() + (&c.a - &limit.a).amax()
    };
    let scale = limit.q.amax() + limit.g.amax() + limit.a.amax();
    assert!(gap(Mode::Centered(1e-2)) < 1e-12 * scale);
    assert!(gap(Mode::Contrastive(1e-2)) > 1e-6 * scale);
}

#[test]
fn one_large_item_on_two_threads_is_the_item_on_one() {
    // n = 240 with 120 rows: the second thread helps factor the item's layer.
    let labels: Vec<Activity> = (0..120).map(|i| [Strong, Weak, Inactive][i % 3]).collect();
    let data = [item(&constructed_qp(&mut rng(610), 240, 1, 0, &labels))];
    let grad = [vector(&mut rng(611), 240)];
    let (sols1, g1) = solved_and_differentiated(&data, &grad, 1);
    let (sols2, g2) = solved_and_differentiated(&data, &grad, 2);
    assert_eq!(sols1[0].z(), sols2[0].z());
    assert_eq!(g1, g2);
}
