//! Def. 1, Def. 2 and the centered surrogate against exact rational arithmetic, for β from 1e2
//! down to 1e-300.
//!
//! The reference solves every loss-augmented QP `min βℓ(z) + E(z; θ)` exactly: the problem data
//! are dyadic rationals (exact in `f64`), β is the exact rational value of the `f64` β, and the
//! solution is found by enumerating working sets with Gaussian elimination over `BigRational`
//! (the unique strictly convex QP solution is the one whose KKT point is primal and dual
//! feasible). Values and gradients then follow from Eq. 5, Eq. 10 and Eq. 37 with no rounding
//! at all. The library must agree to 1e-10 relative at every β: it solves for the offset
//! `(ẑ_β − z*)/β` directly, so nothing cancels (before it did, the error was 180 % at 1e-15).

// Gaussian elimination and KKT assembly read best with explicit indices.
#![allow(clippy::needless_range_loop)]

use bilevel::nalgebra::{dmatrix, dvector, DMatrix, DVector};
use bilevel::prelude::*;
use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{Signed, ToPrimitive, Zero};

type Q = BigRational;

fn q(x: f64) -> Q {
    Q::from_float(x).expect("finite")
}

fn qv(v: &DVector<f64>) -> Vec<Q> {
    v.iter().map(|&x| q(x)).collect()
}

fn qm(m: &DMatrix<f64>) -> Vec<Vec<Q>> {
    (0..m.nrows())
        .map(|i| (0..m.ncols()).map(|j| q(m[(i, j)])).collect())
        .collect()
}

fn dot(a: &[Q], b: &[Q]) -> Q {
    a.iter().zip(b).fold(Q::zero(), |s, (x, y)| s + x * y)
}

fn matvec(m: &[Vec<Q>], v: &[Q]) -> Vec<Q> {
    m.iter().map(|row| dot(row, v)).collect()
}

/// Solves the square system `k x = r` exactly; `None` when singular.
fn gauss(mut k: Vec<Vec<Q>>, mut r: Vec<Q>) -> Option<Vec<Q>> {
    let n = r.len();
    for col in 0..n {
        let piv = (col..n).find(|&i| !k[i][col].is_zero())?;
        k.swap(col, piv);
        r.swap(col, piv);
        for i in col + 1..n {
            if k[i][col].is_zero() {
                continue;
            }
            let f = &k[i][col] / &k[col][col];
            for j in col..n {
                let t = &f * &k[col][j];
                k[i][j] -= t;
            }
            let t = &f * &r[col];
            r[i] -= t;
        }
    }
    let mut x = vec![Q::zero(); n];
    for i in (0..n).rev() {
        let s = (i + 1..n).fold(r[i].clone(), |s, j| s - &k[i][j] * &x[j]);
        x[i] = s / &k[i][i];
    }
    Some(x)
}

/// The layer `E = ½zᵀQz − zᵀ(Bθ + c)` s.t. `Az ≥ b`, in exact arithmetic.
struct ExactLayer {
    q: Vec<Vec<Q>>,
    b_mat: Vec<Vec<Q>>,
    u: Vec<Q>,
    a: Vec<Vec<Q>>,
    b: Vec<Q>,
}

enum ExactLoss {
    Linear(Vec<Q>),
    Squared(Vec<Q>),
}

impl ExactLoss {
    fn value(&self, z: &[Q]) -> Q {
        match self {
            ExactLoss::Linear(g) => dot(g, z),
            ExactLoss::Squared(t) => {
                let d: Vec<Q> = z.iter().zip(t).map(|(a, b)| a - b).collect();
                dot(&d, &d) / Q::from_integer(BigInt::from(2))
            }
        }
    }

    fn gradient(&self, z: &[Q]) -> Vec<Q> {
        match self {
            ExactLoss::Linear(g) => g.clone(),
            ExactLoss::Squared(t) => z.iter().zip(t).map(|(a, b)| a - b).collect(),
        }
    }

    /// `(κ, h)` of `ℓ = (κ/2)‖z‖² − hᵀz + const`.
    fn quadratic(&self) -> (Q, Vec<Q>) {
        match self {
            ExactLoss::Linear(g) => (Q::zero(), g.iter().map(|x| -x).collect()),
            ExactLoss::Squared(t) => (Q::from_integer(BigInt::from(1)), t.clone()),
        }
    }
}

impl ExactLayer {
    fn energy(&self, z: &[Q]) -> Q {
        dot(z, &matvec(&self.q, z)) / Q::from_integer(BigInt::from(2)) - dot(z, &self.u)
    }

    /// `∂_θE = −Bᵀz`.
    fn grad_theta(&self, z: &[Q]) -> Vec<Q> {
        let p = self.b_mat[0].len();
        (0..p)
            .map(|j| {
                -self
                    .b_mat
                    .iter()
                    .zip(z)
                    .fold(Q::zero(), |s, (row, zi)| s + &row[j] * zi)
            })
            .collect()
    }

    /// `argmin β ℓ(z) + E(z)` by enumerating working sets.
    fn solve(&self, loss: &ExactLoss, beta: &Q) -> Vec<Q> {
        let n = self.u.len();
        let m = self.b.len();
        let (kappa, h) = loss.quadratic();
        for mask in 0u32..(1 << m) {
            let rows: Vec<usize> = (0..m).filter(|&i| mask & (1 << i) != 0).collect();
            let size = n + rows.len();
            let mut k = vec![vec![Q::zero(); size]; size];
            let mut r = vec![Q::zero(); size];
            for i in 0..n {
                for j in 0..n {
                    k[i][j] = self.q[i][j].clone();
                }
                k[i][i] += beta * &kappa;
                r[i] = &self.u[i] + beta * &h[i];
            }
            for (w, &row) in rows.iter().enumerate() {
                for j in 0..n {
                    k[j][n + w] = -self.a[row][j].clone();
                    k[n + w][j] = self.a[row][j].clone();
                }
                r[n + w] = self.b[row].clone();
            }
            let Some(x) = gauss(k, r) else { continue };
            let z = &x[..n];
            let primal = (0..m).all(|i| dot(&self.a[i], z) >= self.b[i]);
            let dual = x[n..].iter().all(|l| !l.is_negative());
            if primal && dual {
                return z.to_vec();
            }
        }
        panic!("no working set satisfies the KKT conditions");
    }
}

/// `(∂_θE(a) − ∂_θE(b)) / d` exactly.
fn grad_quotient(layer: &ExactLayer, a: &[Q], b: &[Q], d: &Q) -> Vec<Q> {
    let (ga, gb) = (layer.grad_theta(a), layer.grad_theta(b));
    ga.iter().zip(&gb).map(|(x, y)| (x - y) / d).collect()
}

/// `|computed − exact| / |exact|` (∞-norm for vectors), exactly, then rounded.
fn rel(computed: &[f64], exact: &[Q]) -> f64 {
    let err = computed
        .iter()
        .zip(exact)
        .map(|(&c, e)| (q(c) - e).abs())
        .max()
        .unwrap_or_else(Q::zero);
    let scale = exact.iter().map(|e| e.abs()).max().unwrap_or_else(Q::zero);
    if scale.is_zero() {
        return if err.is_zero() { 0.0 } else { f64::INFINITY };
    }
    (err / scale).to_f64().unwrap_or(f64::INFINITY)
}

struct Case {
    name: &'static str,
    q: DMatrix<f64>,
    b_mat: DMatrix<f64>,
    c: DVector<f64>,
    theta: DVector<f64>,
    a: DMatrix<f64>,
    b: DVector<f64>,
    loss: Loss,
}

fn cases() -> Vec<Case> {
    let eye2 = dmatrix![1.0, 0.0; 0.0, 1.0];
    vec![
        Case {
            name: "unconstrained, the issue's reproducer",
            q: dmatrix![2.0, 0.0; 0.0, 1.0],
            b_mat: eye2.clone(),
            c: dvector![2.0, 1.0],
            theta: dvector![0.0, 0.0],
            a: DMatrix::zeros(0, 2),
            b: DVector::zeros(0),
            loss: Loss::Linear {
                g: dvector![1.0, 2.0],
            },
        },
        Case {
            name: "coupled Q, one strong and one weak row that stays",
            q: dmatrix![2.0, 0.5; 0.5, 1.0],
            b_mat: dmatrix![1.0, 0.25; 0.0, 1.0],
            c: dvector![0.5, -1.0],
            theta: dvector![0.5, 0.0],
            a: dmatrix![0.0, 1.0; 1.0, 0.0],
            // Row 0 (z₂ ≥ 0) is strongly active; row 1 (z₁ ≥ z₁*) weakly active below.
            b: dvector![0.0, 0.0],
            loss: Loss::Linear {
                g: dvector![1.0, -0.5],
            },
        },
        Case {
            name: "weak row that leaves (ReLU at its kink as a QP)",
            q: eye2.clone(),
            b_mat: eye2.clone(),
            c: dvector![0.0, 0.0],
            theta: dvector![1.5, 0.0],
            a: eye2.clone(),
            b: dvector![0.0, 0.0],
            loss: Loss::Linear {
                g: dvector![2.0, -3.0],
            },
        },
        Case {
            name: "squared loss, inactive row that becomes active at large beta",
            q: dmatrix![3.0, 1.0; 1.0, 2.0],
            b_mat: dmatrix![1.0; -0.5],
            c: dvector![1.0, 0.25],
            theta: dvector![0.75],
            a: dmatrix![-1.0, -1.0],
            b: dvector![-2.0],
            loss: Loss::Squared {
                target: dvector![4.0, 3.0],
            },
        },
    ]
}

fn exact_of(case: &Case) -> (ExactLayer, ExactLoss) {
    let u = &case.b_mat * &case.theta + &case.c;
    let layer = ExactLayer {
        q: qm(&case.q),
        b_mat: qm(&case.b_mat),
        u: qv(&u),
        a: qm(&case.a),
        b: qv(&case.b),
    };
    let loss = match &case.loss {
        Loss::Linear { g } => ExactLoss::Linear(qv(g)),
        Loss::Squared { target } => ExactLoss::Squared(qv(target)),
    };
    (layer, loss)
}

const BETAS: [f64; 12] = [
    1e2, 1.0, 1e-2, 1e-5, 1e-8, 1e-10, 1e-12, 1e-15, 1e-16, 1e-50, 1e-150, 1e-300,
];

#[test]
fn def1_def2_and_centered_match_exact_arithmetic_at_every_beta() {
    let mut worst = 0.0f64;
    // Per β: the worst relative error of (Def. 1 value, Def. 1 gradient, Def. 2, centered).
    let mut table = [[0.0f64; 4]; BETAS.len()];
    for case in cases() {
        let (layer, loss) = exact_of(&case);
        // The weak case fixes the z* that makes row 1 weakly active: b₁ = z₁*.
        let layer = if case.name.starts_with("coupled") {
            let z0 = layer.solve(&loss, &Q::zero());
            let mut b = layer.b.clone();
            b[1] = z0[0].clone();
            ExactLayer { b, ..layer }
        } else {
            layer
        };
        let b_f64 =
            DVector::from_iterator(layer.b.len(), layer.b.iter().map(|x| x.to_f64().unwrap()));
        assert!(
            layer.b.iter().zip(b_f64.iter()).all(|(e, &f)| q(f) == *e),
            "{}: b not exact",
            case.name
        );
        let constraints = LinearConstraints {
            a: case.a.clone(),
            b: b_f64,
            ..LinearConstraints::none(2)
        };
        let inner = QuadraticProblem::new(
            case.q.clone(),
            case.b_mat.clone(),
            case.c.clone(),
            constraints,
        )
        .unwrap();
        let program = Bilevel::new(inner, case.loss.clone()).unwrap();
        let z_star = layer.solve(&loss, &Q::zero());
        let g_star = loss.gradient(&z_star);
        let tangent = ExactLoss::Linear(g_star.clone());
        let l_star = loss.value(&z_star);
        for (row, beta) in BETAS.into_iter().enumerate() {
            let bq = q(beta);
            // Def. 1 (Eq. 5, Eq. 10).
            let z_hat = layer.solve(&loss, &bq);
            let value = loss.value(&z_hat) + (layer.energy(&z_hat) - layer.energy(&z_star)) / &bq;
            let grad = grad_quotient(&layer, &z_hat, &z_star, &bq);
            let s = program.surrogate(&case.theta, beta).unwrap();
            let (ev, eg) = (
                rel(&[s.value], std::slice::from_ref(&value)),
                rel(s.grad_theta.as_slice(), &grad),
            );
            // Def. 2 (Eq. 37): the tangent loss in the clamped phase and in the outer value.
            let z_lin = layer.solve(&tangent, &bq);
            let diff: Vec<Q> = z_lin.iter().zip(&z_star).map(|(a, b)| a - b).collect();
            let lin_value = &l_star
                + dot(&g_star, &diff)
                + (layer.energy(&z_lin) - layer.energy(&z_star)) / &bq;
            let lin_grad = grad_quotient(&layer, &z_lin, &z_star, &bq);
            let l = program.linearized(&case.theta, beta).unwrap();
            let (lv, lg) = (
                rel(&[l.value], &[lin_value]),
                rel(l.grad_theta.as_slice(), &lin_grad),
            );
            // Centered: (∂_θE(ẑ_β) − ∂_θE(ẑ_{−β}))/(2β), where −βℓ + E is still convex.
            let ec = match program.centered(&case.theta, beta) {
                Ok(c) => {
                    let z_minus = layer.solve(&loss, &(-bq.clone()));
                    let two_beta = &bq * Q::from_integer(BigInt::from(2));
                    let cg = grad_quotient(&layer, &z_hat, &z_minus, &two_beta);
                    rel(c.grad_theta.as_slice(), &cg)
                }
                Err(Error::BetaOutOfRange { .. }) => 0.0,
                Err(e) => panic!("{}: centered at {beta}: {e}", case.name),
            };
            for (what, e) in [
                ("value", ev),
                ("gradient", eg),
                ("Def. 2 value", lv),
                ("Def. 2 gradient", lg),
                ("centered gradient", ec),
            ] {
                assert!(
                    e <= 1e-10,
                    "{}: {what} at beta {beta:e}: relative error {e:.2e}",
                    case.name
                );
                worst = worst.max(e);
            }
            for (cell, e) in table[row].iter_mut().zip([ev, eg, lv.max(lg), ec]) {
                *cell = cell.max(e);
            }
        }
    }
    // The table of the closing note (`cargo test --release --test exact -- --nocapture`).
    eprintln!("beta      Def.1 value  Def.1 grad  Def.2       centered");
    for (beta, r) in BETAS.iter().zip(&table) {
        eprintln!(
            "{beta:<9e} {:<12.1e} {:<11.1e} {:<11.1e} {:.1e}",
            r[0], r[1], r[2], r[3]
        );
    }
    eprintln!("worst relative error against exact arithmetic: {worst:.2e}");
}

/// The same for a proximal layer (ReLU and hard tanh, closed-form offsets).
#[test]
fn prox_layers_match_exact_arithmetic_at_every_beta() {
    for activation in [Activation::Relu, Activation::HardTanh] {
        let (lo, hi) = activation.bounds().unwrap();
        // u = W x with units inside, at the lower kink, below it, and above the upper bound.
        let x = dvector![1.0, 0.5];
        let theta = dvector![0.25, 0.5, -1.0, 0.0, -2.0, 1.0, 2.0, 1.0];
        let layer = ProxProblem::dense_layer(activation, 4, &x).unwrap();
        let u = layer.pre_activation(&theta);
        for loss in [
            Loss::Linear {
                g: dvector![1.0, -2.0, 0.5, 3.0],
            },
            Loss::Squared {
                target: dvector![0.75, 0.25, -0.5, 0.5],
            },
        ] {
            let program = Bilevel::new(layer.clone(), loss.clone()).unwrap();
            let (kappa, h) = match &loss {
                Loss::Linear { g } => (0.0, -g),
                Loss::Squared { target } => (1.0, target.clone()),
            };
            let clamp = |v: Q| -> Q {
                let v = if lo.is_finite() && v < q(lo) {
                    q(lo)
                } else {
                    v
                };
                if hi.is_finite() && v > q(hi) {
                    q(hi)
                } else {
                    v
                }
            };
            for beta in BETAS {
                let bq = q(beta);
                let one = Q::from_integer(BigInt::from(1));
                let z_star: Vec<Q> = u.iter().map(|&v| clamp(q(v))).collect();
                let z_hat: Vec<Q> = (0..4)
                    .map(|j| clamp((q(u[j]) + &bq * q(h[j])) / (&one + &bq * q(kappa))))
                    .collect();
                // E = ½‖z − u‖² on the box; ∂_θE = −Bᵀ(z − u) with B = I ⊗ xᵀ.
                let energy = |z: &[Q]| {
                    z.iter().zip(u.iter()).fold(Q::zero(), |s, (a, &b)| {
                        let d = a - q(b);
                        s + &d * &d
                    }) / Q::from_integer(BigInt::from(2))
                };
                let lq = match &loss {
                    Loss::Linear { g } => ExactLoss::Linear(qv(g)),
                    Loss::Squared { target } => ExactLoss::Squared(qv(target)),
                };
                let value = lq.value(&z_hat) + (energy(&z_hat) - energy(&z_star)) / &bq;
                let grad: Vec<Q> = (0..8)
                    .map(|k| -(&z_hat[k / 2] - &z_star[k / 2]) * q(x[k % 2]) / &bq)
                    .collect();
                let s = program.surrogate(&theta, beta).unwrap();
                let (ev, eg) = (
                    rel(&[s.value], &[value]),
                    rel(s.grad_theta.as_slice(), &grad),
                );
                assert!(
                    ev <= 1e-10 && eg <= 1e-10,
                    "{activation:?} at {beta:e}: value {ev:.2e}, gradient {eg:.2e}"
                );
            }
        }
    }
}
