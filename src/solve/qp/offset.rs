//! The offset problem of a QP whose solution at a base point is known: the rate of the
//! solution of a perturbed QP, solved for directly (Def. 1's `(ẑ_β − z*)/β` without
//! cancellation).

use nalgebra::{DMatrix, DVector};

use super::problem::slack_rounding;
use crate::error::{Error, Result};
use crate::linalg::{select_rows, solve_kkt, vstack};

/// The offset problem of a QP whose solution at a base point is known: the rate
/// `f = (x̂ − x*)/s` (`s > 0`) of the solution `x̂` of a perturbed QP, with the perturbation's
/// data divided by `s` so that nothing of size `s` is ever added to something of size 1.
///
/// With `x*, λ*, λ*_eq` the exact solution of `min ½xᵀP₀x + q₀ᵀx` on the constraints of [`Qp`](super::Qp),
/// and the perturbed QP `P = P₀ + ΔP`, `q = q₀ + Δq` on the same constraints, subtracting the two
/// KKT systems gives, for `μ = (λ̂ − λ*)/s` and `μ_eq = (λ̂_eq − λ*_eq)/s`,
/// ```text
///     P f + g − Aᵀμ − A_eqᵀμ_eq = 0,   g = (ΔP x* + Δq)/s,
///     A_i f ≥ −t_i,  t_i = (a_iᵀx* − b_i)/s,   A_eq f = 0,
///     μ_i ≥ −m_i,  m_i = λ*_i/s,   (μ_i + m_i)(A_i f + t_i) = 0.
/// ```
/// Rows active at `x*` have `t_i = 0`; `t_i` and `m_i` may be `+∞` (a row too far away to
/// become active, or too strongly held to leave, at this `s`).
#[derive(Debug, Clone)]
pub struct OffsetQp {
    /// `P = P₀ + ΔP`, symmetric positive definite.
    pub p: DMatrix<f64>,
    /// `g = (ΔP x* + Δq)/s`.
    pub g: DVector<f64>,
    /// Inequality rows.
    pub a: DMatrix<f64>,
    /// Equality rows.
    pub a_eq: DMatrix<f64>,
    /// `t_i = (a_iᵀx* − b_i)/s ≥ 0`, exactly `0` for rows active at `x*`.
    pub t: DVector<f64>,
    /// `m_i = λ*_i/s ≥ 0`.
    pub m: DVector<f64>,
}

/// The solution of an [`OffsetQp`].
#[derive(Debug, Clone)]
#[must_use]
pub struct OffsetSolution {
    /// The rate `f`.
    pub f: DVector<f64>,
    /// `μ_i` on the working set, `−m_i` off it (so `λ̂ = s(m + μ)` everywhere).
    pub mu: DVector<f64>,
    /// `μ_eq`.
    pub mu_eq: DVector<f64>,
    /// The final working set (`true`: `A_i f = −t_i`).
    pub working: Vec<bool>,
    /// Condition estimate of the final KKT matrix.
    pub condition: f64,
    /// ∞-norm residual of the rate system (stationarity; feasibility and the shifted sign
    /// conditions hold by construction of the working set).
    pub residual: f64,
    /// Working-set changes.
    pub repairs: usize,
}

/// Solves an [`OffsetQp`] by the primal-dual active-set iteration of [`refine`](super::refine), started from
/// `working` (e.g. the rows active at `x*`).
///
/// # Errors
/// [`Error::Singular`] for a singular KKT system on a working set; [`Error::NotConverged`] when
/// `2m + 10` working-set changes do not settle (callers then fall back to solving `x̂` directly).
pub fn solve_offset(o: &OffsetQp, working: &mut [bool]) -> Result<OffsetSolution> {
    let n = o.p.nrows();
    let (m, k) = (o.t.len(), o.a_eq.nrows());
    if o.a.nrows() != m || o.m.len() != m || working.len() != m || o.g.len() != n {
        return Err(Error::dim("offset QP", m, o.a.nrows()));
    }
    // A row held with an unbounded m_i (λ*_i/s overflowed) cannot leave at this s.
    for i in (0..m).filter(|&i| o.m[i] == f64::INFINITY) {
        working[i] = true;
    }
    let max_repairs = 2 * m + 10;
    let mut repairs = 0;
    loop {
        let rows: Vec<usize> = (0..m).filter(|&i| working[i]).collect();
        let a_w = vstack(&select_rows(&o.a, &rows), &o.a_eq);
        // Rows that hold a multiplier at x* but left the working set keep λ̂_i = 0, i.e.
        // μ_i = −m_i: that term moves to the right-hand side.
        let mut r = -&o.g;
        for i in (0..m).filter(|&i| !working[i] && o.m[i] > 0.0) {
            r -= o.a.row(i).transpose() * o.m[i];
        }
        let mut s = DVector::zeros(rows.len() + k);
        for (j, &i) in rows.iter().enumerate() {
            s[j] = -o.t[i];
        }
        let kkt = solve_kkt(&o.p, &a_w, &r, &s)?;
        let f = kkt.x;
        let mut mu = -&o.m;
        for (j, &i) in rows.iter().enumerate() {
            mu[i] = -kkt.nu[j];
        }
        let mu_eq = -kkt.nu.rows(rows.len(), k);
        let af = &o.a * &f;
        let rep_d = 64.0 * f64::EPSILON * (1.0 + r.amax() + o.p.amax() * f.amax()) + kkt.error.1;
        // `t` and `m` may be +∞: such a row is never violated, which the comparisons give.
        let worst_primal = (0..m)
            .filter(|&i| {
                !working[i] && af[i] + o.t[i] < -slack_rounding(&o.a, i, o.t[i], &f, kkt.error.0)
            })
            .min_by(|&i, &j| (af[i] + o.t[i]).total_cmp(&(af[j] + o.t[j])));
        let worst_dual = (0..m)
            .filter(|&i| working[i] && mu[i] + o.m[i] < -rep_d)
            .min_by(|&i, &j| (mu[i] + o.m[i]).total_cmp(&(mu[j] + o.m[j])));
        if let Some(i) = worst_primal.or(worst_dual) {
            if repairs >= max_repairs {
                return Err(Error::NotConverged {
                    solver: "offset active-set iteration".into(),
                    iterations: repairs,
                    residual: kkt.residual,
                });
            }
            working[i] = !working[i];
            repairs += 1;
            continue;
        }
        return Ok(OffsetSolution {
            f,
            mu,
            mu_eq,
            working: working.to_vec(),
            condition: kkt.condition,
            residual: kkt.residual,
            repairs,
        });
    }
}
