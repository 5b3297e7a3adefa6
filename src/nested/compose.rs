//! Props. 4 and 5 as statements about Def. 1 itself: the Section 2 contrastive surrogate applied
//! level by level to a nested program, without the nested solvers.
//!
//! * [`bottom_up`] (Prop. 4, innermost first): level 1's program `z_1* = argmin E_1` is replaced
//!   by its Def. 1 surrogate with "loss" `E_2(z_2, ·)`, so `z_2* = argmin_{z_2} E'_2(z_2)` with
//!   `E'_2(z_2) = min_{z_1} {E_2(z_2, z_1) + E_1(z_1)/β_1} − min_{z_1} E_1(z_1)/β_1`, and so on up
//!   to `E'_L`; the last level's surrogate is Def. 1 on `E'_L` with the outer loss. The result is
//!   a [`Bilevel`] over `z_L` whose value and gradient Prop. 4 says equal Eq. 22.
//! * [`top_down`] (Prop. 5, outermost first): the top level's surrogate
//!   `ℓ_{L−1}(z_{L−1}) = min_{z_L} {ℓ(z_L) + Ẽ_L(z_L, z_{L−1})/β_L}` becomes the loss of level
//!   `L − 1`, and so on down to level 1, whose surrogate Prop. 5 says equals Eq. 28.
//!
//! Each step is computed exactly, so the recursion is an independent reference for
//! [`super::global`] and [`super::local`] (`bilevel verify`'s rows "Prop. 4" and "Prop. 5"). That
//! needs every intermediate level's value function to stay quadratic: the levels that are
//! eliminated have identity activations (unconstrained quadratic energies, eliminated by a Schur
//! complement), and one level keeps a box-family activation — the top level bottom-up, where the
//! Section 2 QP layer ([`QuadraticProblem`]) solves it with its constraints; the first level
//! top-down, where the last step is a box-constrained QP solved exactly. Proximal and Fenchel
//! energies coincide on identity layers up to terms the surrogates cancel.

use nalgebra::{DMatrix, DVector};

use super::{EnergyKind, NestedProblem, OutputLoss};
use crate::error::{Error, Result};
use crate::problem::{LinearConstraints, Loss, QuadraticProblem};
use crate::prox::Activation;
use crate::solve::qp::{solve_exact, Clarabel, Qp, Tolerances};
use crate::surrogate::Bilevel;

/// Prop. 4's recursion as a Section 2 program: the [`Bilevel`] over `z_L` whose energy is the
/// composed `E'_L(z_L; θ) = ½ z_Lᵀ Q z_L − z_Lᵀ(Bθ + c)` (θ-only terms dropped: Def. 1 cancels
/// them) and the parameter `θ = (b_1; …; b_L)`, the stacked biases.
pub struct Composed {
    /// The top level's program; `surrogate(&theta, β_L)` is Eq. 22 by Prop. 4.
    pub program: Bilevel<QuadraticProblem>,
    /// The stacked biases.
    pub theta: DVector<f64>,
}

/// The stacked biases `(b_1; …; b_L)` of the problem's network.
fn stacked_biases(problem: &NestedProblem<'_>) -> DVector<f64> {
    let b: Vec<f64> = problem
        .net
        .layers
        .iter()
        .flat_map(|l| l.bias.iter().copied())
        .collect();
    DVector::from_vec(b)
}

/// `S_k`: the rows of `θ = (b_1; …; b_L)` that hold `b_k`.
fn selector(problem: &NestedProblem<'_>, k: usize) -> DMatrix<f64> {
    let widths = problem.net.widths();
    let offset: usize = widths[..k].iter().sum();
    let total: usize = widths.iter().sum();
    DMatrix::from_fn(widths[k], total, |i, j| {
        f64::from(u8::from(j == offset + i))
    })
}

/// `M⁻¹ R` for symmetric positive definite `M`.
fn spd_solve(m: &DMatrix<f64>, r: &DMatrix<f64>, what: &str) -> Result<DMatrix<f64>> {
    m.clone()
        .cholesky()
        .map(|ch| ch.solve(r))
        .ok_or_else(|| Error::NotPositiveDefinite {
            what: what.into(),
            reason: "Cholesky failed".into(),
        })
}

/// Checks the shape [`bottom_up`] and [`top_down`] support: identity activations except at
/// layer `boxed`, which has a box-family one; squared loss; one sample.
fn check_composable(
    problem: &NestedProblem<'_>,
    boxed: usize,
    x: &DVector<f64>,
    target: &DVector<f64>,
) -> Result<(f64, f64)> {
    problem.check()?;
    if problem.loss != OutputLoss::Squared {
        return Err(Error::input(
            "loss",
            "the composed surrogates need the squared loss",
        ));
    }
    if problem.energy == EnergyKind::Penalizer {
        return Err(Error::input(
            "energy",
            "the composed surrogates need proximal or Fenchel (convex) layer energies",
        ));
    }
    for (k, layer) in problem.net.layers.iter().enumerate() {
        let identity = layer.activation == Activation::Identity;
        if k != boxed && !identity {
            return Err(Error::input(
                format!("layers[{k}].activation"),
                format!("the composed surrogates eliminate this level: it must be the identity (only layer {} may have a box)", boxed + 1),
            ));
        }
    }
    let bounds = problem.net.layers[boxed]
        .activation
        .bounds()
        .ok_or_else(|| Error::input("activation", "softmax is not a QP layer"))?;
    problem.net.check_batch(
        &DMatrix::from_column_slice(x.len(), 1, x.as_slice()),
        &DMatrix::from_column_slice(target.len(), 1, target.as_slice()),
    )?;
    Ok(bounds)
}

/// Prop. 4's recursion (module docs), innermost level first, for one sample `x` with target
/// `t`: identity activations below the top layer, a box-family (or identity) top layer,
/// proximal energies, squared loss. Level `k`'s composed energy
/// `E'_k(z_k) = ½z_kᵀQ_kz_k − z_kᵀ(P_kθ + r_k)` follows from
/// `min_{z_{k−1}} ½‖z_k − W_k z_{k−1} − b_k‖² + E'_{k−1}(z_{k−1})/β_{k−1}`:
/// with `M = W_kᵀW_k + Q_{k−1}/β_{k−1}`,
/// `Q_k = I − W_k M⁻¹ W_kᵀ`, `P_k = S_k − W_k M⁻¹(W_kᵀS_k − P_{k−1}/β_{k−1})`,
/// `r_k = W_k M⁻¹ r_{k−1}/β_{k−1}` (`Q_1 = I`, `P_1 = S_1`, `r_1 = W_1 x`).
///
/// # Errors
/// Unsupported shapes (hidden activations other than the identity, softmax, a loss other than
/// squared, penalizer energies), Fenchel energies (their bilinear global energy differs from
/// the proximal one by `½‖a_k‖²`, which depends on `z_{k−1}`), a non-positive-definite
/// elimination.
pub fn bottom_up(
    problem: &NestedProblem<'_>,
    x: &DVector<f64>,
    target: &DVector<f64>,
) -> Result<Composed> {
    let top = problem.top();
    let bounds = check_composable(problem, top, x, target)?;
    if problem.energy != EnergyKind::Proximal {
        return Err(Error::input(
            "energy",
            "bottom-up composition is built for proximal energies (convex CHL)",
        ));
    }
    let first = &problem.net.layers[0];
    let (mut q, mut p, mut r) = (
        DMatrix::identity(first.w.nrows(), first.w.nrows()),
        selector(problem, 0),
        &first.w * x,
    );
    for k in 1..=top {
        let (w, beta) = (&problem.net.layers[k].w, problem.betas[k - 1]);
        let s = selector(problem, k);
        let m = w.transpose() * w + &q / beta;
        let n = w.nrows();
        // Right-hand sides [W_kᵀ | W_kᵀS_k − P_{k−1}/β | r_{k−1}/β], solved with one factorization.
        let mut rhs = DMatrix::zeros(m.nrows(), n + p.ncols() + 1);
        rhs.columns_mut(0, n).copy_from(&w.transpose());
        rhs.columns_mut(n, p.ncols())
            .copy_from(&(w.transpose() * &s - &p / beta));
        rhs.column_mut(n + p.ncols()).copy_from(&(&r / beta));
        let sol = spd_solve(&m, &rhs, "the level elimination matrix")?;
        let minv_wt = sol.columns(0, n);
        let minv_p = sol.columns(n, p.ncols());
        let minv_r = sol.column(n + p.ncols());
        q = DMatrix::identity(n, n) - w * minv_wt;
        q = (&q + q.transpose()) * 0.5;
        p = &s - w * minv_p;
        r = w * minv_r;
    }
    let (constraints, _) = LinearConstraints::boxes(&vec![bounds; q.nrows()]);
    let program = Bilevel::new(
        QuadraticProblem::new(q, p, r, constraints)?,
        Loss::Squared {
            target: target.clone(),
        },
    )?;
    Ok(Composed {
        program,
        theta: stacked_biases(problem),
    })
}

/// Prop. 5's recursion (module docs), outermost level first, for one sample `x` with target
/// `t`: a box-family (or identity) first layer, identity activations above it, proximal or
/// Fenchel energies (equal here: on identity layers `Ẽ_k = ½‖z_k − a_k‖²` for both, and the
/// first layer's `Ẽ_1 = ½‖z_1 − a_1‖² − ½dist²(a_1, box)` on the box for both), squared loss.
/// The loss of level `k − 1` is the surrogate of level `k`,
/// `ℓ_{k−1}(u) = min_z ℓ_k(z) + ½‖z − W_k u − b_k‖²/β_k`, a quadratic
/// `½uᵀH u − uᵀg + c` when `ℓ_k` is: with `N = H_k + I/β_k` and `v = g_k + b_k/β_k`,
/// `H_{k−1} = W_kᵀ(I − N⁻¹/β_k)W_k/β_k`, `g_{k−1} = W_kᵀ(N⁻¹v − b_k)/β_k`,
/// `c_{k−1} = c_k − ½vᵀN⁻¹v + ‖b_k‖²/(2β_k)`. The last step, level 1's surrogate
/// `min_{z ∈ box} ℓ_1(z) + Ẽ_1(z)/β_1`, is a box-constrained QP solved exactly
/// ([`solve_exact`]). Returns its value, Eq. 28 by Prop. 5 (the θ-gradient is left to the
/// caller: the value is an exact function of the biases).
///
/// # Errors
/// As [`bottom_up`] with the box on the first layer instead of the top one; the QP solver's.
pub fn top_down(
    problem: &NestedProblem<'_>,
    x: &DVector<f64>,
    target: &DVector<f64>,
) -> Result<f64> {
    let bounds = check_composable(problem, 0, x, target)?;
    let layers = &problem.net.layers;
    let n_top = target.len();
    let (mut h, mut g, mut c) = (
        DMatrix::identity(n_top, n_top),
        target.clone(),
        0.5 * target.norm_squared(),
    );
    for k in (1..layers.len()).rev() {
        let (w, b, beta) = (&layers[k].w, &layers[k].bias, problem.betas[k]);
        let n = &h + DMatrix::identity(h.nrows(), h.nrows()) / beta;
        let v = &g + b / beta;
        let mut rhs = DMatrix::zeros(n.nrows(), w.ncols() + 1);
        rhs.columns_mut(0, w.ncols()).copy_from(w);
        rhs.column_mut(w.ncols()).copy_from(&v);
        let sol = spd_solve(&n, &rhs, "the level elimination matrix")?;
        let (ninv_w, ninv_v) = (sol.columns(0, w.ncols()), sol.column(w.ncols()));
        h = w.transpose() * (w - ninv_w / beta) / beta;
        h = (&h + h.transpose()) * 0.5;
        g = w.transpose() * (ninv_v - b) / beta;
        c += -0.5 * v.dot(&ninv_v) + 0.5 * b.norm_squared() / beta;
    }
    let first = &layers[0];
    let beta = problem.betas[0];
    let a = &first.w * x + &first.bias;
    let dist_sq: f64 = a
        .iter()
        .map(|&ai| (ai - ai.clamp(bounds.0, bounds.1)).powi(2))
        .sum();
    let (boxes, _) = LinearConstraints::boxes(&vec![bounds; a.len()]);
    let qp = Qp {
        p: &h + DMatrix::identity(a.len(), a.len()) / beta,
        q: -(&g + &a / beta),
        a: boxes.a,
        b: boxes.b,
        a_eq: DMatrix::zeros(0, a.len()),
        b_eq: DVector::zeros(0),
    };
    let z = solve_exact(&Clarabel::default(), &qp, &Tolerances::default())?.x;
    let quadratic = 0.5 * z.dot(&(&qp.p * &z)) + qp.q.dot(&z);
    Ok(quadratic + c + (a.norm_squared() - dist_sq) / (2.0 * beta))
}
