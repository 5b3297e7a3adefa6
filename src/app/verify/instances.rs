//! Seeded random instances for `verify`, the tests and the benchmarks.
//!
//! The constrained instances are built *backwards* from a chosen solution: pick `z*`, the
//! multipliers and an activity label per constraint, then set `b` and `c` so that the KKT
//! conditions hold. That is how weakly active constraints (active, zero multiplier) are present
//! on purpose, which random forward instances almost never produce.

use nalgebra::{DMatrix, DVector};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::Result;
use crate::nested::{Layer, Network};
use crate::problem::LinearConstraints;
use crate::problem::{LogCoshProblem, Loss, QuadraticProblem};
use crate::prox::Activation;
use crate::solve::qp::Activity;
use crate::surrogate::Bilevel;

/// A seeded generator (`StdRng`, reproducible for a given seed and crate version).
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A vector with entries uniform in `[-1, 1]`.
pub fn vector(rng: &mut StdRng, n: usize) -> DVector<f64> {
    DVector::from_fn(n, |_, _| rng.random_range(-1.0..1.0))
}

/// A matrix with entries uniform in `[-1, 1]`.
pub fn matrix(rng: &mut StdRng, r: usize, c: usize) -> DMatrix<f64> {
    DMatrix::from_fn(r, c, |_, _| rng.random_range(-1.0..1.0))
}

/// A symmetric positive definite matrix `MᵀM/n + δI` with `δ` chosen so that its condition
/// number is at most about `4/δ` (`δ = 0.1` gives `cond ≲ 40`).
pub fn spd(rng: &mut StdRng, n: usize, delta: f64) -> DMatrix<f64> {
    let m = matrix(rng, n, n);
    let mut q = m.transpose() * &m / n as f64;
    for i in 0..n {
        q[(i, i)] += delta;
    }
    (&q + q.transpose()) * 0.5
}

/// A constrained quadratic instance `E = ½zᵀQz − zᵀ(Bθ + c)` s.t. `Az ≥ b`, `A_eq z = b_eq`
/// with known solution, multipliers and activity labels.
#[derive(Debug, Clone)]
pub struct ConstructedQp {
    /// `Q`.
    pub q: DMatrix<f64>,
    /// `B`.
    pub b: DMatrix<f64>,
    /// `c`.
    pub c: DVector<f64>,
    /// `θ`.
    pub theta: DVector<f64>,
    /// The constraints.
    pub constraints: LinearConstraints,
    /// The solution `z*` by construction.
    pub z_star: DVector<f64>,
    /// Inequality multipliers by construction.
    pub lambda: DVector<f64>,
    /// Equality multipliers by construction.
    pub lambda_eq: DVector<f64>,
    /// Activity labels by construction.
    pub labels: Vec<Activity>,
}

impl ConstructedQp {
    /// The instance as a [`QuadraticProblem`] on the default dense backend.
    ///
    /// # Errors
    /// As [`QuadraticProblem::new`] (never for a constructed instance).
    pub fn layer(&self) -> Result<QuadraticProblem> {
        let (q, b, c) = (self.q.clone(), self.b.clone(), self.c.clone());
        QuadraticProblem::new(q, b, c, self.constraints.clone())
    }
}

/// Builds a [`ConstructedQp`] with `n` variables, `p` parameters, `k` equalities and one
/// inequality per label. Requires `#active + k ≤ n` for LICQ.
pub fn constructed_qp(
    rng: &mut StdRng,
    n: usize,
    p: usize,
    k: usize,
    labels: &[Activity],
) -> ConstructedQp {
    let m = labels.len();
    let q = spd(rng, n, 0.3);
    let b = matrix(rng, n, p);
    let theta = vector(rng, p);
    let a = matrix(rng, m, n);
    let a_eq = matrix(rng, k, n);
    let z_star = vector(rng, n);
    let mut lambda = DVector::zeros(m);
    let mut rhs = &a * &z_star;
    for (i, label) in labels.iter().enumerate() {
        match label {
            Activity::Strong => lambda[i] = rng.random_range(0.5..2.0),
            Activity::Weak => {}
            Activity::Inactive => rhs[i] -= rng.random_range(0.5..2.0),
        }
    }
    let lambda_eq = vector(rng, k);
    let b_eq = &a_eq * &z_star;
    // Stationarity: Q z* − Bθ − c − Aᵀλ − A_eqᵀλ_eq = 0.
    let c = &q * &z_star - &b * &theta - a.transpose() * &lambda - a_eq.transpose() * &lambda_eq;
    ConstructedQp {
        q,
        b,
        c,
        theta,
        constraints: LinearConstraints {
            a,
            b: rhs,
            a_eq,
            b_eq,
        },
        z_star,
        lambda,
        lambda_eq,
        labels: labels.to_vec(),
    }
}

/// A network with the given widths: `hidden` activations, an identity output layer, weights
/// uniform in `[-1, 1]` and biases uniform in `[-0.1, 0.1]`.
pub fn network(rng: &mut StdRng, widths: &[usize], hidden: Activation) -> Network<f64> {
    let last = widths.len().saturating_sub(2);
    Network {
        layers: widths
            .windows(2)
            .enumerate()
            .map(|(k, w)| Layer {
                w: matrix(rng, w[1], w[0]),
                bias: vector(rng, w[1]) * 0.1,
                activation: if k == last {
                    Activation::Identity
                } else {
                    hidden
                },
            })
            .collect(),
    }
}

/// A `LogCoshProblem` program with `n` variables and `p` parameters, and a `θ`.
pub(super) fn logcosh(
    seed: u64,
    n: usize,
    p: usize,
) -> Result<(Bilevel<LogCoshProblem>, DVector<f64>)> {
    let mut r = rng(seed);
    let q = spd(&mut r, n, 0.3);
    let b = matrix(&mut r, n, p);
    let c = vector(&mut r, n);
    let theta = vector(&mut r, p);
    let target = vector(&mut r, n);
    Ok((
        Bilevel::new(LogCoshProblem::new(q, b, c)?, Loss::Squared { target })?,
        theta,
    ))
}

/// The program of a constructed QP layer with `loss`.
pub(super) fn qp_program(inst: &ConstructedQp, loss: Loss) -> Result<Bilevel<QuadraticProblem>> {
    let p = QuadraticProblem::new(
        inst.q.clone(),
        inst.b.clone(),
        inst.c.clone(),
        inst.constraints.clone(),
    )?;
    Bilevel::new(p, loss)
}

/// The activity pattern of the degenerate QPs: three weakly active rows.
pub(super) const DEGENERATE: [Activity; 7] = [
    Activity::Strong,
    Activity::Weak,
    Activity::Inactive,
    Activity::Weak,
    Activity::Strong,
    Activity::Inactive,
    Activity::Weak,
];
