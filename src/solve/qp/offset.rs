//! The offset problem of a QP whose solution at a base point is known: the rate of the
//! solution of a perturbed QP, solved for directly (Def. 1's `(ẑ_β − z*)/β` without
//! cancellation).

use nalgebra::{DMatrix, DVector};

use super::dense::DenseFactor;
use super::problem::slack_rounding;
use super::sparse::flip_violations;
use crate::error::{Error, Result};
use crate::linalg::{
    power_of_two_scale, scale_rows, select_rows, solve_kkt, sparse_abs_mul, sparse_amax,
    sparse_mul, sparse_row_amax, sparse_tr_mul, stack_rows, vstack, Csc, KktSolution, KktSolve,
    SparseKkt,
};

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

/// Solves an [`OffsetQp`] by the primal-dual active-set iteration of [`refine`](super::refine),
/// started from `working` (e.g. the rows active at `x*`): every violation flipped at once for
/// the first rounds, then the worst one per round (after 8 rounds).
///
/// # Errors
/// [`Error::Singular`] for a singular KKT system on a working set; [`Error::NotConverged`] when
/// `2m + 10` working-set changes do not settle (callers then fall back to solving `x̂` directly).
pub fn solve_offset(o: &OffsetQp, working: &mut [bool]) -> Result<OffsetSolution> {
    let (m, k) = (o.t.len(), o.a_eq.nrows());
    if o.a.nrows() != m
        || o.m.len() != m
        || o.g.len() != o.p.nrows()
        || o.a_eq.ncols() != o.p.nrows()
    {
        return Err(Error::dim("offset QP", m, o.a.nrows()));
    }
    let held = |rows: &[usize], r: &DVector<f64>, s: &DVector<f64>| {
        solve_kkt(&o.p, &vstack(&select_rows(&o.a, rows), &o.a_eq), r, s)
    };
    iterate(o, held, (m, k), working)
}

/// [`solve_offset`] on a stored [`DenseFactor`] of `o.p` and stacked rows of which `o.a` are
/// the first (the caller's promise: the factor was built from these `P` and rows), `eq` the
/// stacked indices of `o.a_eq`'s rows. Each working set's KKT system is then the range-space
/// solve of [`DenseFactor::solve_working`], `O(n² + n|W| + |W|³)`, where [`solve_offset`]
/// factors an `(n + |W|)`-square system every round; a round whose range-space solve fails its
/// accuracy check is solved as [`solve_offset`] solves it. [`OffsetSolution::condition`] is
/// `NaN` after a range-space round.
///
/// # Errors
/// As [`solve_offset`]; [`Error::DimensionMismatch`] when the factor's rows do not fit.
pub(crate) fn solve_factored_offset(
    o: &OffsetQp,
    (factor, eq): (&DenseFactor, &[usize]),
    working: &mut [bool],
) -> Result<OffsetSolution> {
    let (m, k) = (o.t.len(), o.a_eq.nrows());
    if o.a.nrows() != m || o.m.len() != m || eq.len() != k || factor.rows() < m {
        return Err(Error::dim("offset QP (factored)", m, o.a.nrows()));
    }
    let held = |rows: &[usize], r: &DVector<f64>, s: &DVector<f64>| {
        let stacked: Vec<usize> = rows.iter().chain(eq).copied().collect();
        // The range-space solve loses digits where the null-space one does not: a right-hand
        // side far larger than x (a strongly held row released, r of size λ*/β) or rows near
        // dependence. Its accuracy check says so, and that round is solved by `solve_kkt`.
        factor
            .solve_working(&stacked, r, s)
            .or_else(|_| solve_kkt(&o.p, &vstack(&select_rows(&o.a, rows), &o.a_eq), r, s))
    };
    iterate(o, held, (m, k), working)
}

/// An [`OffsetQp`] with sparse `P`, `A`, `A_eq` (borrowed: the layer's own matrices), solved
/// by the same iteration on sparse factorizations of each working set's KKT system
/// ([`solve_sparse_offset`]).
#[derive(Debug, Clone, Copy)]
pub struct SparseOffsetQp<'a> {
    /// `P`, symmetric positive definite, both triangles stored.
    pub p: &'a Csc,
    /// `g = (ΔP x* + Δq)/s`.
    pub g: &'a DVector<f64>,
    /// Inequality rows.
    pub a: &'a Csc,
    /// Equality rows.
    pub a_eq: &'a Csc,
    /// `t_i = (a_iᵀx* − b_i)/s ≥ 0`, exactly `0` for rows active at `x*`.
    pub t: &'a DVector<f64>,
    /// `m_i = λ*_i/s ≥ 0`.
    pub m: &'a DVector<f64>,
}

/// [`solve_offset`] for a [`SparseOffsetQp`]: each working set's KKT system
/// `[P R_Wᵀ; R_W 0]` (held rows equilibrated by powers of two) is factored sparsely and solved
/// to rounding by refinement (the sparse path's `LDLᵀ`); nothing `n × n` is formed.
/// [`OffsetSolution::condition`] is `NaN` (not estimated on the sparse path).
///
/// # Errors
/// As [`solve_offset`]; [`Error::Singular`] when a working set's rows are dependent beyond what
/// the refined factorization resolves.
pub fn solve_sparse_offset(o: &SparseOffsetQp<'_>, working: &mut [bool]) -> Result<OffsetSolution> {
    let (n, m, k) = (o.p.nrows(), o.t.len(), o.a_eq.nrows());
    let fits = [
        ("offset QP: P", n, o.p.ncols()),
        ("offset QP: g", n, o.g.len()),
        ("offset QP: A", m, o.a.nrows()),
        ("offset QP: A columns", n, o.a.ncols()),
        ("offset QP: A_eq columns", n, o.a_eq.ncols()),
        ("offset QP: m", m, o.m.len()),
    ];
    if let Some(&(what, want, got)) = fits.iter().find(|(_, w, g)| w != g) {
        return Err(Error::dim(what, want, got));
    }
    iterate(o, |rows, r, s| o.solve_held(rows, r, s), (m, k), working)
}

/// What the active-set iteration reads of an offset problem, dense or sparse: its data,
/// products with its inequality rows, and the KKT solve on a working set.
trait OffsetRows {
    /// `(g, t, m)`.
    fn data(&self) -> (&DVector<f64>, &DVector<f64>, &DVector<f64>);
    /// `max|P|`.
    fn p_amax(&self) -> f64;
    /// `A f`.
    fn rows_mul(&self, f: &DVector<f64>) -> DVector<f64>;
    /// `Aᵀ v`.
    fn rows_tr_mul(&self, v: &DVector<f64>) -> DVector<f64>;
    /// For every row, how far the computed `a_iᵀf + t_i` can be from its exact value by
    /// rounding and an error `err_x` (∞-norm) in `f` ([`slack_rounding`]).
    fn slack_rounding(&self, f: &DVector<f64>, err_x: f64) -> DVector<f64>;
}

/// The primal-dual active-set iteration of [`solve_offset`] (its docs) on either kind of data;
/// `held(rows, r, s)` solves `P f + R_Wᵀ ν = r`, `R_W f = s` with `R_W` the inequality rows
/// `rows`, then the equality rows ([`solve_kkt`]'s convention and accuracy fields).
fn iterate(
    o: &impl OffsetRows,
    held: impl Fn(&[usize], &DVector<f64>, &DVector<f64>) -> Result<KktSolution>,
    (m, k): (usize, usize),
    working: &mut [bool],
) -> Result<OffsetSolution> {
    let (g, t, bound) = o.data();
    if working.len() != m {
        return Err(Error::dim("offset QP: working set", m, working.len()));
    }
    // A row held with an unbounded m_i (λ*_i/s overflowed) cannot leave at this s.
    for i in (0..m).filter(|&i| bound[i] == f64::INFINITY) {
        working[i] = true;
    }
    let max_repairs = 2 * m + 10;
    let (mut repairs, mut rounds) = (0, 0);
    loop {
        let rows: Vec<usize> = (0..m).filter(|&i| working[i]).collect();
        // Rows that hold a multiplier at x* but left the working set keep λ̂_i = 0, i.e.
        // μ_i = −m_i: that term moves to the right-hand side.
        let released = DVector::from_fn(m, |i, _| if working[i] { 0.0 } else { bound[i] });
        let r = -g - o.rows_tr_mul(&released);
        let mut s = DVector::zeros(rows.len() + k);
        for (j, &i) in rows.iter().enumerate() {
            s[j] = -t[i];
        }
        let kkt = held(&rows, &r, &s)?;
        let f = kkt.x;
        let mut mu = -bound;
        for (j, &i) in rows.iter().enumerate() {
            mu[i] = -kkt.nu[j];
        }
        let mu_eq = -kkt.nu.rows(rows.len(), k);
        let af = o.rows_mul(&f);
        let rounding = o.slack_rounding(&f, kkt.error.0);
        let rep_d = 64.0 * f64::EPSILON * (1.0 + r.amax() + o.p_amax() * f.amax()) + kkt.error.1;
        // `t` and `m` may be +∞: such a row is never violated, which the comparisons give.
        let mut primal: Vec<usize> = (0..m)
            .filter(|&i| !working[i] && af[i] + t[i] < -rounding[i])
            .collect();
        primal.sort_by(|&i, &j| (af[i] + t[i]).total_cmp(&(af[j] + t[j])));
        let mut dual: Vec<usize> = (0..m)
            .filter(|&i| working[i] && mu[i] + bound[i] < -rep_d)
            .collect();
        dual.sort_by(|&i, &j| (mu[i] + bound[i]).total_cmp(&(mu[j] + bound[j])));
        primal.extend(dual);
        if !primal.is_empty() {
            if repairs >= max_repairs {
                return Err(Error::NotConverged {
                    solver: "offset active-set iteration".into(),
                    iterations: repairs,
                    residual: kkt.residual,
                });
            }
            // Every violation at once for the first rounds (a primal-dual active-set step: the
            // weakly active rows that leave for a loss go in one round, where one flip per
            // round took 111 dense KKT solves and 875 times the limit's time on a banded layer
            // of 1000 units), then the worst one per round (which cannot cycle back).
            repairs += flip_violations(working, &primal, rounds);
            rounds += 1;
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

impl OffsetRows for OffsetQp {
    fn data(&self) -> (&DVector<f64>, &DVector<f64>, &DVector<f64>) {
        (&self.g, &self.t, &self.m)
    }

    fn p_amax(&self) -> f64 {
        self.p.amax()
    }

    fn rows_mul(&self, f: &DVector<f64>) -> DVector<f64> {
        &self.a * f
    }

    fn rows_tr_mul(&self, v: &DVector<f64>) -> DVector<f64> {
        self.a.tr_mul(v)
    }

    fn slack_rounding(&self, f: &DVector<f64>, err_x: f64) -> DVector<f64> {
        DVector::from_fn(self.t.len(), |i, _| {
            slack_rounding(&self.a, i, self.t[i], f, err_x)
        })
    }
}

impl OffsetRows for SparseOffsetQp<'_> {
    fn data(&self) -> (&DVector<f64>, &DVector<f64>, &DVector<f64>) {
        (self.g, self.t, self.m)
    }

    fn p_amax(&self) -> f64 {
        sparse_amax(self.p)
    }

    fn rows_mul(&self, f: &DVector<f64>) -> DVector<f64> {
        sparse_mul(self.a, f)
    }

    fn rows_tr_mul(&self, v: &DVector<f64>) -> DVector<f64> {
        sparse_tr_mul(self.a, v)
    }

    /// [`slack_rounding`]'s bound, `64ε(|t_i| + Σ_j |a_ij f_j|) + ‖a_i‖₁ err_x`, for all rows.
    fn slack_rounding(&self, f: &DVector<f64>, err_x: f64) -> DVector<f64> {
        let terms = sparse_abs_mul(self.a, f) + self.t.abs();
        let l1 = sparse_abs_mul(self.a, &DVector::from_element(f.len(), 1.0));
        terms * (64.0 * f64::EPSILON) + l1 * err_x
    }
}

impl SparseOffsetQp<'_> {
    /// The KKT solve of [`iterate`]'s `held` on a sparse factorization of the working set's
    /// system, rows equilibrated by powers of two.
    fn solve_held(
        &self,
        rows: &[usize],
        r: &DVector<f64>,
        s: &DVector<f64>,
    ) -> Result<KktSolution> {
        let n = self.p.nrows();
        let held = stack_rows(&[(self.a, Some(rows), 1.0), (self.a_eq, None, 1.0)]);
        // Rows to ∞-norms in [1, 2) (exact): ν = D y for the scaled rows' multipliers y.
        let d = sparse_row_amax(&held).map(power_of_two_scale);
        let held = scale_rows(&held, &d);
        let factor = SparseKkt::new(self.p, &held)?;
        let mut rhs = DVector::zeros(n + d.len());
        rhs.rows_mut(0, n).copy_from(r);
        rhs.rows_mut(n, d.len()).copy_from(&s.component_mul(&d));
        let KktSolve {
            solution, error, ..
        } = factor.solve(&rhs)?;
        let x = solution.rows(0, n).into_owned();
        let y = solution.rows(n, d.len()).into_owned();
        let stationarity = sparse_mul(self.p, &x) + sparse_tr_mul(&held, &y) - r;
        let feasibility = sparse_mul(&held, &x) - s.component_mul(&d);
        Ok(KktSolution {
            nu: y.component_mul(&d),
            x,
            condition: f64::NAN,
            residual: stationarity.amax().max(feasibility.amax()),
            error: (error.0, error.1 * d.amax()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random entry in `[-1, 1)` (SplitMix64 of the indices).
    fn entry(i: usize, j: usize, seed: usize) -> f64 {
        let mut z = ((i << 40) ^ (j << 20) ^ seed) as u64;
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    /// An offset problem with `n = 12`, eight inequality rows (rows 0–3 active at `x*`, 0–1 of
    /// them strongly) and two equality rows, `P = MᵀM + I`.
    fn problem(seed: usize) -> OffsetQp {
        let (n, m) = (12, 8);
        let root = DMatrix::from_fn(n, n, |i, j| entry(i, j, seed));
        let p = root.tr_mul(&root) + DMatrix::identity(n, n);
        OffsetQp {
            p,
            g: DVector::from_fn(n, |i, _| 3.0 * entry(i, 99, seed)),
            a: DMatrix::from_fn(m, n, |i, j| entry(i + 20, j, seed)),
            a_eq: DMatrix::from_fn(2, n, |i, j| entry(i + 40, j, seed)),
            t: DVector::from_fn(m, |i, _| if i < 4 { 0.0 } else { 0.1 * (i as f64) }),
            m: DVector::from_fn(m, |i, _| if i < 2 { 0.5 + i as f64 } else { 0.0 }),
        }
    }

    /// The offset conditions of [`OffsetQp`] at a solution, each relative to its terms.
    fn worst_condition(o: &OffsetQp, s: &OffsetSolution) -> f64 {
        let stationarity = &o.p * &s.f + &o.g - o.a.tr_mul(&s.mu) - o.a_eq.tr_mul(&s.mu_eq);
        let size = 1.0 + o.g.amax() + o.p.amax() * s.f.amax() + s.mu.amax();
        let af = &o.a * &s.f;
        let mut worst = (stationarity.amax() / size).max((&o.a_eq * &s.f).amax());
        for i in 0..o.t.len() {
            let (slack, dual) = (af[i] + o.t[i], s.mu[i] + o.m[i]);
            worst = worst
                .max(-slack)
                .max(-dual)
                .max((slack * dual).abs() / size);
        }
        worst
    }

    #[test]
    fn the_factored_offset_is_the_refactored_one_and_meets_the_offset_conditions() {
        let mut flips = 0;
        for seed in 0..6 {
            let o = problem(seed);
            let factor = DenseFactor::new(&o.p, &o.a, &o.a_eq).unwrap();
            let start: Vec<bool> = o.t.iter().map(|&t| t == 0.0).collect();
            let (mut w1, mut w2) = (start.clone(), start.clone());
            let dense = solve_offset(&o, &mut w1).unwrap();
            let factored = solve_factored_offset(&o, (&factor, &[8, 9]), &mut w2).unwrap();
            assert_eq!(dense.working, factored.working, "seed {seed}");
            assert!(dense.repairs == factored.repairs && factored.condition.is_nan());
            flips += usize::from(factored.working != start);
            let close =
                |a: &DVector<f64>, b: &DVector<f64>| (a - b).amax() <= 1e-12 * (1.0 + a.amax());
            assert!(close(&dense.f, &factored.f), "seed {seed}");
            assert!(close(&dense.mu, &factored.mu) && close(&dense.mu_eq, &factored.mu_eq));
            assert!(worst_condition(&o, &factored) < 1e-13, "seed {seed}");
            assert!(
                factored.residual < 1e-13,
                "seed {seed}: {}",
                factored.residual
            );
        }
        // The working set changed on some seeds: the rounds after the first were exercised.
        assert!(flips > 0);
    }

    #[test]
    fn a_dependent_working_row_is_singular_on_the_factor_too() {
        let mut o = problem(1);
        // Row 3 (active at x*) is a copy of row 2 times two: the starting working set's KKT
        // system is singular.
        let copy = o.a.row(2) * 2.0;
        o.a.row_mut(3).copy_from(&copy);
        let factor = DenseFactor::new(&o.p, &o.a, &o.a_eq).unwrap();
        let mut working: Vec<bool> = o.t.iter().map(|&t| t == 0.0).collect();
        let factored = solve_factored_offset(&o, (&factor, &[8, 9]), &mut working);
        assert!(matches!(factored, Err(Error::Singular(_))), "{factored:?}");
        let mut working: Vec<bool> = o.t.iter().map(|&t| t == 0.0).collect();
        assert!(matches!(
            solve_offset(&o, &mut working),
            Err(Error::Singular(_))
        ));
    }
}
