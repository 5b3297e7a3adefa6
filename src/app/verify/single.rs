//! Section 2 rows of `bilevel verify`: Defs. 1-2, Props. 1-3, Example 1, Cor. 1 and the rates,
//! one function per check (or per group of checks that share one set of instances).

use nalgebra::{DMatrix, DVector};

use super::check::{fitted_slope, rel_err, Check};
use super::instances::{constructed_qp, logcosh, matrix, qp_program, rng, spd, vector, DEGENERATE};
use super::reference::central;
use crate::error::Result;
use crate::linalg::{select_rows, vstack};
use crate::problem::{InnerProblem, LinearConstraints, Loss, ProxProblem, QuadraticProblem};
use crate::prox::Activation;
use crate::solve::qp::{solve_by_enumeration, Activity, Qp, Tolerances};
use crate::surrogate::{prop2_direction, Bilevel};
use Activity::{Inactive, Strong, Weak};

/// `def1-gradient-qp` (Def. 1).
pub(super) fn def1_gradient_qp(s: u64) -> Check {
    Check::measure(
        "def1-gradient-qp",
        "Def. 1",
        "Eq. 10 gradient vs central differences of L^beta(theta), constrained QP n=8, beta=0.1"
            .into(),
        (|| {
            let inst = constructed_qp(
                &mut rng(s + 1),
                8,
                3,
                1,
                &[Strong, Inactive, Strong, Inactive],
            );
            let prog = qp_program(
                &inst,
                Loss::Squared {
                    target: vector(&mut rng(s + 2), 8),
                },
            )?;
            let g = prog.surrogate(&inst.theta, 0.1)?.grad_theta;
            let fd = central(|th| Ok(prog.surrogate(th, 0.1)?.value), &inst.theta, 1e-5)?;
            Ok(rel_err(&g, &fd))
        })(),
        1e-6,
    )
}

/// `def1-gradient-smooth` (Def. 1).
pub(super) fn def1_gradient_smooth(s: u64) -> Check {
    Check::measure(
        "def1-gradient-smooth",
        "Def. 1",
        "Eq. 10 gradient vs central differences of L^beta(theta), log-cosh energy n=6 (argmin), beta=0.1".into(),
        (|| {
            let (prog, theta) = logcosh(s + 3, 6, 3)?;
            let g = prog.surrogate(&theta, 0.1)?.grad_theta;
            let fd = central(|th| Ok(prog.surrogate(th, 0.1)?.value), &theta, 1e-4)?;
            Ok(rel_err(&g, &fd))
        })(),
        1e-6,
    )
}

/// `def2-gradient` (Def. 2).
pub(super) fn def2_gradient(s: u64) -> Check {
    Check::measure(
        "def2-gradient",
        "Def. 2",
        "linearized gradient vs central differences of Eq. 37 with the tangent point fixed, log-cosh n=5, beta=0.5".into(),
        (|| {
            let (prog, theta) = logcosh(s + 4, 5, 2)?;
            let beta = 0.5;
            let lin = prog.linearized(&theta, beta)?;
            let z0 = lin.z_star.z.clone();
            let tangent = prog.loss.tangent(&z0);
            let l0 = prog.loss.value(&z0);
            let value = |th: &DVector<f64>| -> Result<f64> {
                let zs = prog.inner.solve(th, &prog.loss, 0.0)?.z;
                let zh = prog.inner.solve(th, &tangent, beta)?.z;
                Ok(l0 + tangent.value(&(&zh - &z0)) + (prog.inner.energy(&zh, th) - prog.inner.energy(&zs, th)) / beta)
            };
            Ok(rel_err(&lin.grad_theta, &central(value, &theta, 1e-4)?))
        })(),
        1e-6,
    )
}

/// `def2-limit` (Def. 2).
pub(super) fn def2_limit(s: u64) -> Check {
    Check::measure(
        "def2-limit",
        "Def. 2",
        "linearized gradient at beta=1e-7 vs the Prop. 2 limit gradient (Props. 1-2 hold for Def. 2), QP with 3 weakly active constraints".into(),
        (|| {
            let inst = constructed_qp(&mut rng(s + 5), 9, 3, 1, &DEGENERATE);
            let prog = qp_program(&inst, Loss::Squared { target: vector(&mut rng(s + 6), 9) })?;
            let limit = prog.limit(&inst.theta)?;
            let lin = prog.linearized(&inst.theta, 1e-7)?;
            Ok(rel_err(&lin.grad_theta, &limit.grad_theta))
        })(),
        1e-5,
    )
}

/// `prop1-closed-form` (Prop. 1).
pub(super) fn prop1_closed_form(s: u64) -> Check {
    Check::measure(
        "prop1-closed-form",
        "Prop. 1",
        "z_dot vs -Q^-1 l'(z*) (independent Cholesky), unconstrained quadratic n=10".into(),
        (|| {
            let mut r = rng(s + 7);
            let q = spd(&mut r, 10, 0.2);
            let c = vector(&mut r, 10);
            let target = vector(&mut r, 10);
            let p = QuadraticProblem::new(
                q.clone(),
                DMatrix::zeros(10, 0),
                c.clone(),
                LinearConstraints::none(10),
            )?;
            let prog = Bilevel::new(
                p,
                Loss::Squared {
                    target: target.clone(),
                },
            )?;
            let limit = prog.limit(&DVector::zeros(0))?;
            let ch = q.cholesky().expect("spd");
            let expected = -ch.solve(&(ch.solve(&c) - &target));
            Ok(rel_err(&limit.direction.z_dot, &expected))
        })(),
        1e-12,
    )
}

/// `prop1-differences` (Prop. 1).
pub(super) fn prop1_differences(s: u64) -> Check {
    Check::measure(
        "prop1-differences",
        "Prop. 1",
        "z_dot vs central difference (z_hat(b) - z_hat(-b))/2b, b=1e-4, log-cosh n=6 (argmin)"
            .into(),
        (|| {
            let (prog, theta) = logcosh(s + 8, 6, 3)?;
            let limit = prog.limit(&theta)?;
            let zp = prog.inner.solve(&theta, &prog.loss, 1e-4)?.z;
            let zm = prog.inner.solve(&theta, &prog.loss, -1e-4)?.z;
            Ok(rel_err(&limit.direction.z_dot, &((zp - zm) / 2e-4)))
        })(),
        1e-6,
    )
}

/// Degenerate QP `k` of [`prop2_degenerate`]: `z_dot`'s error against enumeration and against
/// a one-sided difference, the label mismatches, and the branches taken (leave, stay).
fn degenerate_case(s: u64, k: u64) -> Result<(f64, f64, f64, (usize, usize))> {
    let inst = constructed_qp(&mut rng(s + 100 + k), 9, 3, 1, &DEGENERATE);
    let g = vector(&mut rng(s + 200 + k), 9);
    let prog = qp_program(&inst, Loss::Linear { g: g.clone() })?;
    let limit = prog.limit(&inst.theta)?;
    // Independent reference: Eq. 17 built from the construction's labels, enumerated.
    let idx =
        |want: Activity| -> Vec<usize> { (0..7).filter(|&i| inst.labels[i] == want).collect() };
    let eq = vstack(
        &select_rows(&inst.constraints.a, &idx(Strong)),
        &inst.constraints.a_eq,
    );
    let reference = solve_by_enumeration(
        &Qp {
            p: inst.q.clone(),
            q: g.clone(),
            a: select_rows(&inst.constraints.a, &idx(Weak)),
            b: DVector::zeros(3),
            b_eq: DVector::zeros(eq.nrows()),
            a_eq: eq,
        },
        &Tolerances::default(),
    )?;
    let e1 = rel_err(&limit.direction.z_dot, &reference);
    let zb = prog.inner.solve(&inst.theta, &prog.loss, 1e-7)?.z;
    let e2 = rel_err(&limit.direction.z_dot, &((zb - &limit.z_star.z) / 1e-7));
    let mism = (0..7)
        .filter(|&i| limit.z_star.activity[i] != inst.labels[i])
        .count() as f64;
    let taken = |branch| {
        let branch = Some(branch);
        limit
            .direction
            .branches
            .iter()
            .filter(|b| **b == branch)
            .count()
    };
    let branches = (
        taken(crate::prox::Branch::Leaves),
        taken(crate::prox::Branch::Stays),
    );
    Ok((e1, e2, mism, branches))
}

/// `prop2-enumeration`, `prop2-one-sided`, `prop2-classification` (Prop. 2): one set of 20
/// degenerate QPs, three measurements.
pub(super) fn prop2_degenerate(s: u64) -> Vec<Check> {
    let mut enum_err: Result<f64> = Ok(0.0);
    let mut fd_err: Result<f64> = Ok(0.0);
    let mut label_mismatch = 0.0;
    let mut branches = (0, 0);
    for k in 0..20 {
        let r = degenerate_case(s, k);
        match r {
            Ok((e1, e2, m, (l, st))) => {
                enum_err = enum_err.map(|e| e.max(e1));
                fd_err = fd_err.map(|e| e.max(e2));
                label_mismatch += m;
                branches.0 += l;
                branches.1 += st;
            }
            Err(e) => {
                enum_err = Err(e.clone());
                fd_err = Err(e);
            }
        }
    }
    vec![
        Check::measure(
            "prop2-enumeration",
            "Prop. 2",
            format!(
                "z_dot (Clarabel + exact KKT) vs brute-force enumeration of Eq. 17, 20 QPs n=9 with 3 weakly active constraints each ({} leave, {} stay)",
                branches.0, branches.1
            ),
            enum_err,
            1e-9,
        ),
        Check::measure(
            "prop2-one-sided",
            "Prop. 2",
            "z_dot vs one-sided difference (z_hat(b) - z*)/b, b=1e-7, same 20 QPs".into(),
            fd_err,
            1e-6,
        ),
        Check::measure(
            "prop2-classification",
            "Prop. 2",
            "strong/weak/inactive labels vs construction, same 20 QPs (count of mismatches)".into(),
            Ok(label_mismatch),
            0.0,
        ),
    ]
}

/// `prop2-softmax` (Prop. 2).
pub(super) fn prop2_softmax(s: u64) -> Check {
    Check::measure(
        "prop2-softmax",
        "Prop. 2",
        "softmax layer: closed-form z_dot vs generic Eq. 17 path (Clarabel + KKT)".into(),
        (|| {
            let u = vector(&mut rng(s + 9), 5) * 2.0;
            let layer = ProxProblem::new(
                Activation::Softmax,
                DMatrix::identity(5, 5),
                DVector::zeros(5),
            )?;
            let prog = Bilevel::new(
                layer,
                Loss::Squared {
                    target: vector(&mut rng(s + 10), 5),
                },
            )?;
            let limit = prog.limit(&u)?;
            let generic = prop2_direction(
                &prog.inner.hessian(&limit.z_star.z, &u),
                &prog.loss.gradient(&limit.z_star.z),
                prog.inner.constraints(),
                &limit.z_star.activity,
                (
                    &crate::solve::qp::Clarabel::default(),
                    &Tolerances::default(),
                ),
            )?;
            Ok(rel_err(&limit.direction.z_dot, &generic.z_dot))
        })(),
        1e-10,
    )
}

/// `prop2-backends` (Prop. 2).
#[cfg(feature = "osqp")]
pub(super) fn prop2_backends(s: u64) -> Check {
    Check::measure(
        "prop2-backends",
        "Prop. 2",
        "z_dot with OSQP vs with Clarabel (both refined exactly), QP n=9 with weak constraints"
            .into(),
        (|| {
            use std::sync::Arc;
            let inst = constructed_qp(&mut rng(s + 11), 9, 3, 1, &DEGENERATE);
            let g = vector(&mut rng(s + 12), 9);
            let a = qp_program(&inst, Loss::Linear { g: g.clone() })?.limit(&inst.theta)?;
            let osqp: Arc<dyn crate::solve::qp::QpBackend> =
                Arc::new(crate::solve::qp::Osqp::default());
            let p = QuadraticProblem::new(
                inst.q.clone(),
                inst.b.clone(),
                inst.c.clone(),
                inst.constraints.clone(),
            )?
            .with_backend(osqp.clone());
            let b = Bilevel::new(p, Loss::Linear { g })?
                .with_backend(osqp)
                .limit(&inst.theta)?;
            Ok(rel_err(&a.direction.z_dot, &b.direction.z_dot))
        })(),
        1e-9,
    )
}

/// `prop3-band` (Prop. 3).
pub(super) fn prop3_band(s: u64) -> Check {
    Check::measure(
        "prop3-band",
        "Prop. 3",
        "max violation of L^b <= L <= L^b + b/(2 nu)|l'(z*)|^2 over 20 QPs (weak constraints included) x b in {10,1,0.1,1e-2,1e-3}".into(),
        (|| {
            let mut worst = 0.0f64;
            for k in 0..20 {
                let inst = constructed_qp(&mut rng(s + 300 + k), 6, 2, 0, &[Strong, Weak, Inactive]);
                let prog = qp_program(&inst, Loss::Squared { target: vector(&mut rng(s + 400 + k), 6) * 2.0 })?;
                for beta in [10.0, 1.0, 0.1, 1e-2, 1e-3] {
                    let sur = prog.surrogate(&inst.theta, beta)?;
                    let band = prog.band_of(&sur).expect("QP knows nu");
                    worst = worst.max(band.lower - band.loss).max(band.loss - band.upper);
                }
            }
            Ok(worst.max(0.0))
        })(),
        1e-9,
    )
}

/// `example1-ties` (Example 1).
pub(super) fn example1_ties(s: u64) -> Check {
    Check::measure(
        "example1-ties",
        "Example 1",
        "ReLU layer with ties (theta x)_j = 0: z_dot vs Eq. 11 quotient ([theta x - b g]+ - [theta x]+)/b, b=1e-9; ties give [-g_j]+ (the printed Eq. 12 swaps the tie cases)".into(),
        (|| {
            let mut r = rng(s + 13);
            let x = vector(&mut r, 4);
            let mut w = matrix(&mut r, 6, 4);
            for j in [1, 4] {
                w.row_mut(j).fill(0.0);
            }
            let mut worst = 0.0f64;
            for sign in [1.0, -1.0] {
                let g = vector(&mut r, 6) * sign;
                let theta = DVector::from_iterator(24, w.transpose().iter().copied());
                let prog = Bilevel::new(ProxProblem::dense_layer(Activation::Relu, 6, &x)?, Loss::Linear { g: g.clone() })?;
                let limit = prog.limit(&theta)?;
                let u = &w * &x;
                let b = 1e-9;
                let q = super::reference::relu_quotient(&u, &g, b);
                worst = worst.max(rel_err(&limit.direction.z_dot, &q));
            }
            Ok(worst)
        })(),
        1e-6,
    )
}

/// `cor1-gradient-qp` (Cor. 1).
pub(super) fn cor1_gradient_qp(s: u64) -> Check {
    Check::measure(
        "cor1-gradient-qp",
        "Cor. 1",
        "limit gradient vs central differences of L(theta), constrained QP (no weak constraint)"
            .into(),
        (|| {
            let inst = constructed_qp(
                &mut rng(s + 14),
                7,
                4,
                1,
                &[Strong, Inactive, Strong, Inactive],
            );
            let prog = qp_program(
                &inst,
                Loss::Squared {
                    target: vector(&mut rng(s + 15), 7),
                },
            )?;
            let g = prog.limit(&inst.theta)?.grad_theta;
            Ok(rel_err(
                &g,
                &central(|th| prog.loss_value(th), &inst.theta, 1e-5)?,
            ))
        })(),
        1e-7,
    )
}

/// `cor1-gradient-smooth` (Cor. 1).
pub(super) fn cor1_gradient_smooth(s: u64) -> Check {
    Check::measure(
        "cor1-gradient-smooth",
        "Cor. 1",
        "limit gradient vs central differences of L(theta), log-cosh energy (argmin)".into(),
        (|| {
            let (prog, theta) = logcosh(s + 16, 6, 3)?;
            let g = prog.limit(&theta)?.grad_theta;
            Ok(rel_err(
                &g,
                &central(|th| prog.loss_value(th), &theta, 1e-5)?,
            ))
        })(),
        1e-7,
    )
}

/// `cor1-rate` (Cor. 1) and `centered-rate`: the rates of the finite-β and the centered
/// gradients on one instance.
pub(super) fn rates(s: u64) -> Vec<Check> {
    let betas = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3];
    let rates = (|| -> Result<(f64, f64)> {
        let (prog, theta) = logcosh(s + 17, 6, 3)?;
        let exact = prog.limit(&theta)?.grad_theta;
        let mut one = Vec::new();
        let mut two = Vec::new();
        for &b in &betas {
            one.push((prog.surrogate(&theta, b)?.grad_theta - &exact).norm());
            two.push((prog.centered(&theta, b)?.grad_theta - &exact).norm());
        }
        Ok((fitted_slope(&betas, &one), fitted_slope(&betas, &two)))
    })();
    let (s1, s2) = match &rates {
        Ok((a, b)) => (Ok(*a), Ok(*b)),
        Err(e) => (Err(e.clone()), Err(e.clone())),
    };
    vec![
        Check::measure(
            "cor1-rate",
            "Cor. 1",
            format!(
                "finite-beta gradient (Eq. 10) -> limit at rate O(beta): |fitted slope - 1| (slope {:.3}), beta in 1e-1..1e-3, log-cosh",
                s1.as_ref().copied().unwrap_or(f64::NAN)
            ),
            s1.map(|v| (v - 1.0).abs()),
            0.1,
        ),
        Check::measure(
            "centered-rate",
            "Centered (extra)",
            format!(
                "centered gradient -> limit at rate O(beta^2): |fitted slope - 2| (slope {:.3}), same instance",
                s2.as_ref().copied().unwrap_or(f64::NAN)
            ),
            s2.map(|v| (v - 2.0).abs()),
            0.15,
        ),
    ]
}
