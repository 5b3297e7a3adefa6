//! Linear-algebra helpers shared by the solvers: equality-constrained KKT solves with iterative
//! refinement, a cheap condition estimate, SPD checks and the rows' distance from dependence,
//! dense and sparse ([`Csc`], faer's compressed columns: `sparse.rs`, `sparse_kkt.rs`,
//! `sparse_span.rs`); dense Cholesky factors and triangular solves on faer's blocked kernels
//! (`cholesky.rs`); and the dense matrix products of the batched network passes ([`Gemm`],
//! [`Threads`]).

mod cholesky;
mod products;
pub(crate) mod simd;
mod span;
mod sparse;
mod sparse_kkt;
mod sparse_span;
mod threads;

pub(crate) use cholesky::{cholesky, cholesky_on, solve_lower_columns};
pub use products::Gemm;
pub(crate) use simd::{lane_sum2, vectorized, Lanes, LANES};
pub(crate) use span::{independence, rows_in_span, sine_to_span};
pub(crate) use sparse::{
    abs_mul as sparse_abs_mul, abs_tr_mul as sparse_abs_tr_mul, amax as sparse_amax,
    csc_to_clarabel, min_eigenvalue_lower, mul as sparse_mul, negated, on_pattern,
    row_amax as sparse_row_amax, scale_rows, shifted_diagonal, stack_rows, tr_mul as sparse_tr_mul,
    upper_to_clarabel,
};
pub use sparse::{check_sparse_spd, csc_from_dense, csc_from_triplets, csc_to_dense, Csc};
pub(crate) use sparse_kkt::{KktSolve, SparseKkt};
pub(crate) use sparse_span::{rows_to_set_aside, sparse_independence, MAX_DEPENDENT};
pub(crate) use threads::{ColsMut, LayerCols, LayersMut};
// The derive JSON's triplets and the verify report's instances walk sparse entries.
#[cfg(feature = "app")]
pub(crate) use sparse::for_each_entry;
pub(crate) use threads::team_for;
// Adam (in the application) cuts its parameters with the same cost model.
#[cfg(feature = "app")]
pub(crate) use threads::{Cut, NUMBER_WORK};
pub use threads::{Threads, MAX_THREADS};

use nalgebra::{Cholesky, DMatrix, DVector, Dyn};

use crate::error::{Error, Result};

/// Result of an equality-constrained KKT solve.
#[derive(Debug, Clone)]
pub struct KktSolution {
    /// Primal part `x`.
    pub x: DVector<f64>,
    /// Multipliers `ν` of `K = [P Aᵀ; A 0]`, i.e. `P x + Aᵀ ν = r`, `A x = s`.
    pub nu: DVector<f64>,
    /// 2-norm condition estimate of `K`, rows of `A` equilibrated (power iteration on `K` and
    /// `K⁻¹`).
    pub condition: f64,
    /// ∞-norm of the residual `[r; s] − K [x; ν]` after refinement, with the rows of `A`
    /// equilibrated as [`solve_kkt`] does.
    pub residual: f64,
    /// ∞-norms of the iterative-refinement correction of `x` and of `ν`: estimates of their
    /// forward errors before refinement, so safe upper estimates after it.
    pub error: (f64, f64),
}

/// The power of two `d` with `d · norm ∈ [1, 2)` (1 for a zero or non-finite `norm`; the
/// exponent is kept within `±1000`): multiplying a row by it is exact in floating point, so
/// an equilibrated problem has the same solution bit for bit, only without the overflow of
/// `‖a_i‖²` or the underflow of a tiny row.
pub(crate) fn power_of_two_scale(norm: f64) -> f64 {
    if !(norm.is_finite() && norm > 0.0) {
        return 1.0;
    }
    let e = (norm.log2().floor() as i64).clamp(-1000, 1000);
    f64::from_bits(((1023 - e) as u64) << 52)
}

/// Solves the symmetric KKT system `[P Aᵀ; A 0] [x; ν] = [r; s]` by the null-space method,
/// with one step of iterative refinement. Each row of `A` (with its `s_i`), and `P` (with
/// `r`), is first multiplied by the power of two that brings its ∞-norm (largest entry) into
/// `[1, 2)` (`power_of_two_scale`, exact), and `ν` mapped back, so that the answer, the
/// singularity test and the condition estimate (of the scaled `K`) do not depend on how a row
/// or the energy is scaled.
///
/// This is the exact "refinement" step used after a QP backend has identified an active set
/// (Prop. 2 and the inner QP alike). `a` holds the active constraint rows (possibly zero rows).
///
/// With the complete QR factorization `Aᵀ = [Q₁ Q₂] [R; 0]`, `x = x_p + Q₂ y` where
/// `x_p = Q₁R⁻ᵀs` meets the constraints by itself, `(Q₂ᵀPQ₂) y = Q₂ᵀ(r − P x_p)`, and
/// `ν = R⁻¹Q₁ᵀ(r − P x)`. Unlike an LU of `K`, this keeps `A x = s` accurate to the rounding of
/// `A` and `s` whatever the size of `r` (a linear term of 1e64 against constraints of size 0.1
/// made the LU's `x` wrong in every digit while its residual, relative to 1e64, looked fine).
///
/// # Errors
/// [`Error::Singular`] when `K` is singular to working precision (linearly dependent active
/// constraints, so LICQ fails, or a singular `P` on the null space of `A`).
pub fn solve_kkt(
    p: &DMatrix<f64>,
    a: &DMatrix<f64>,
    r: &DVector<f64>,
    s: &DVector<f64>,
) -> Result<KktSolution> {
    let n = p.nrows();
    let m = a.nrows();
    if n + m == 0 {
        // No unknowns: the empty solution, exactly.
        return Ok(KktSolution {
            x: DVector::zeros(0),
            nu: DVector::zeros(0),
            condition: 1.0,
            residual: 0.0,
            error: (0.0, 0.0),
        });
    }
    // Equilibration by powers of two (exact): rows of A to ∞-norms in [1, 2), and P (with r)
    // likewise; ν = D ν' / σ maps the scaled multipliers back.
    let sigma = power_of_two_scale(p.amax());
    let scale = DVector::from_fn(m, |i, _| power_of_two_scale(a.row(i).amax()) / sigma);
    let a = &DMatrix::from_fn(m, n, |i, j| a[(i, j)] * scale[i] * sigma);
    let s = &DVector::from_fn(m, |i, _| s[i] * scale[i] * sigma);
    let (p, r) = (&(p * sigma), &(r * sigma));
    let singular = |why: &str| Error::Singular(format!("KKT matrix of size {}: {why}", n + m));
    if m > n {
        return Err(singular(
            "more active constraints than variables (linearly dependent rows)",
        ));
    }
    let factors = NullSpace::new(p, a).ok_or_else(|| {
        singular("linearly dependent active constraints, or P singular on their null space")
    })?;
    let mut k = DMatrix::<f64>::zeros(n + m, n + m);
    k.view_mut((0, 0), (n, n)).copy_from(p);
    if m > 0 {
        k.view_mut((n, 0), (m, n)).copy_from(a);
        k.view_mut((0, n), (n, m)).copy_from(&a.transpose());
    }
    let mut rhs = DVector::<f64>::zeros(n + m);
    rhs.rows_mut(0, n).copy_from(r);
    rhs.rows_mut(n, m).copy_from(s);
    let mut sol = factors.solve(&rhs);
    // One step of iterative refinement: recovers digits lost to the conditioning of R and of
    // the reduced Hessian.
    let corr = factors.solve(&(&rhs - &k * &sol));
    let mut error = (f64::INFINITY, f64::INFINITY);
    if corr.iter().all(|v| v.is_finite()) {
        error = (
            corr.rows(0, n).amax(),
            corr.rows(n, m).component_mul(&scale).amax(),
        );
        sol += corr;
    }
    let residual = (&rhs - &k * &sol).amax();
    if !sol.iter().all(|v| v.is_finite()) {
        return Err(singular("numerically singular"));
    }
    let condition = condition_estimate(&k, |v| Some(factors.solve(v)));
    if condition > 1e14 {
        return Err(Error::Singular(format!(
            "KKT matrix of size {} is numerically singular (condition estimate {condition:.2e})",
            n + m
        )));
    }
    check_kkt_accuracy(p, a, r, s, &sol)?;
    Ok(KktSolution {
        x: sol.rows(0, n).into_owned(),
        nu: sol.rows(n, m).component_mul(&scale),
        condition,
        residual,
        error,
    })
}

/// The computed `[x; ν]` must solve the KKT system to a relative accuracy of `1e-8`, measured
/// block by block: stationarity against `|r| + |P||x| + |A||ν|`, and each constraint row against
/// `|s_i| + ‖a_i‖₁ ‖x‖∞` on its own (a global scale once hid a row violated by its whole
/// size: with multipliers of 1e153, the rounding of an orthogonal factor moves `x` by 1e119).
pub(crate) fn check_kkt_accuracy(
    p: &DMatrix<f64>,
    a: &DMatrix<f64>,
    r: &DVector<f64>,
    s: &DVector<f64>,
    sol: &DVector<f64>,
) -> Result<()> {
    let n = p.nrows();
    let (x, nu) = (sol.rows(0, n), sol.rows(n, a.nrows()));
    let stationarity = (r - p * x - a.transpose() * nu).amax();
    let force = r.amax() + p.amax() * x.amax() + a.amax() * nu.amax();
    let inaccurate = |what: &str, residual: f64| {
        Err(Error::Inaccurate {
            what: format!("the KKT solve ({what})"),
            residual,
        })
    };
    if stationarity > 1e-8 * force {
        return inaccurate("stationarity", stationarity / force);
    }
    // `A x` and the rows' 1-norms in passes down A's columns (A is column-major).
    let ax = a * x;
    let mut row_l1 = DVector::<f64>::zeros(a.nrows());
    for column in a.column_iter() {
        row_l1.zip_apply(&column, |l1: &mut f64, v| *l1 += v.abs());
    }
    let x_max = x.amax();
    for i in 0..a.nrows() {
        let scale = s[i].abs() + row_l1[i] * x_max;
        let violation = (s[i] - ax[i]).abs();
        if violation > 1e-8 * scale {
            return inaccurate(&format!("row {i} of the active set"), violation / scale);
        }
    }
    Ok(())
}

/// The factors of the null-space method for `[P Aᵀ; A 0]` (see [`solve_kkt`]).
struct NullSpace {
    /// Complete orthogonal factor of `Aᵀ`: the first `m` columns span the rows of `A`.
    q: DMatrix<f64>,
    /// `R` of `Aᵀ = Q₁R` (`m × m`, upper triangular, non-singular).
    r: DMatrix<f64>,
    /// `P`.
    p: DMatrix<f64>,
    /// LU of the reduced Hessian `Q₂ᵀPQ₂`.
    reduced: nalgebra::LU<f64, nalgebra::Dyn, nalgebra::Dyn>,
    m: usize,
}

impl NullSpace {
    /// `None` when `A` is rank deficient or the reduced Hessian singular.
    fn new(p: &DMatrix<f64>, a: &DMatrix<f64>) -> Option<Self> {
        let (n, m) = (p.nrows(), a.nrows());
        // QR of [Aᵀ | I] gives a complete n × n orthogonal Q whose first m columns are those
        // of the thin QR of Aᵀ.
        let mut aug = DMatrix::<f64>::zeros(n, m + n);
        aug.view_mut((0, 0), (n, m)).copy_from(&a.transpose());
        aug.view_mut((0, m), (n, n)).fill_with_identity();
        let qr = aug.qr();
        let q = qr.q();
        let r = qr.r().view((0, 0), (m, m)).into_owned();
        let big = r.diagonal().amax().max(a.amax());
        if (0..m).any(|i| r[(i, i)].abs() <= 1e-13 * big) {
            return None;
        }
        let q2 = q.columns(m, n - m);
        let reduced = (q2.transpose() * p * q2).lu();
        if n > m && !reduced.is_invertible() {
            return None;
        }
        Some(Self {
            q,
            r,
            p: p.clone(),
            reduced,
            m,
        })
    }

    /// `[x; ν]` for the right-hand side `[r; s]`.
    fn solve(&self, rhs: &DVector<f64>) -> DVector<f64> {
        let (n, m) = (self.p.nrows(), self.m);
        let (r, s) = (rhs.rows(0, n), rhs.rows(n, m));
        let q1 = self.q.columns(0, m);
        let q2 = self.q.columns(m, n - m);
        // x_p = Q₁ R⁻ᵀ s.
        let w = self
            .r
            .transpose()
            .solve_lower_triangular(&s.into_owned())
            .unwrap_or_else(|| DVector::from_element(m, f64::NAN));
        let xp = q1 * w;
        // (nalgebra's LU cannot solve a 0 × 0 system: it slices out of bounds.)
        let y = if n == m {
            DVector::zeros(0)
        } else {
            self.reduced
                .solve(&(q2.transpose() * (r - &self.p * &xp)))
                .unwrap_or_else(|| DVector::from_element(n - m, f64::NAN))
        };
        let x = xp + q2 * y;
        let nu = self
            .r
            .solve_upper_triangular(&(q1.transpose() * (r - &self.p * &x)))
            .unwrap_or_else(|| DVector::from_element(m, f64::NAN));
        let mut out = DVector::zeros(n + m);
        out.rows_mut(0, n).copy_from(&x);
        out.rows_mut(n, m).copy_from(&nu);
        out
    }
}

/// Estimates the 2-norm condition number `|λ|max / |λ|min` of a symmetric matrix by 16 steps
/// of the Lanczos method (full reorthogonalization) on `k` and on `k⁻¹` (through `solve`):
/// [`lanczos_extreme`]. Both factors are estimates from below, so the result is too; the
/// extreme eigenvalues converge fastest under Lanczos (a few percent after 16 steps on the KKT
/// matrices of this crate, exact when the size is at most 16), at `O(n²)` per step.
pub fn condition_estimate(
    k: &DMatrix<f64>,
    solve: impl Fn(&DVector<f64>) -> Option<DVector<f64>>,
) -> f64 {
    condition_estimate_of(k.nrows(), |v| Some(k * v), solve)
}

/// [`condition_estimate`] of the symmetric `dim × dim` operator that `apply` multiplies by (for
/// a matrix that is cheaper to apply than to form, such as a KKT matrix from its blocks).
pub fn condition_estimate_of(
    dim: usize,
    apply: impl Fn(&DVector<f64>) -> Option<DVector<f64>>,
    solve: impl Fn(&DVector<f64>) -> Option<DVector<f64>>,
) -> f64 {
    if dim == 0 {
        return 1.0;
    }
    // A fixed, non-symmetric-looking start vector avoids accidental orthogonality.
    let start = DVector::from_fn(dim, |i, _| 1.0 + 0.1 * ((i * 7919) % 13) as f64);
    let big = lanczos_extreme(&start, CONDITION_STEPS, apply);
    let inv = lanczos_extreme(&start, CONDITION_STEPS, solve);
    if big == 0.0 {
        return f64::INFINITY;
    }
    big * inv
}

/// Lanczos steps per factor of [`condition_estimate`].
const CONDITION_STEPS: usize = 16;

/// The largest eigenvalue magnitude `|λ|max` of a symmetric operator: the largest Ritz value
/// magnitude after `steps` steps of the Lanczos method from `start`, with full
/// reorthogonalization (an estimate from below, exact once `steps` reaches the dimension).
/// `apply` returning `None` or a non-finite vector gives `∞`; a zero operator gives `0`. Norms
/// are formed without overflow.
pub fn lanczos_extreme(
    start: &DVector<f64>,
    steps: usize,
    apply: impl Fn(&DVector<f64>) -> Option<DVector<f64>>,
) -> f64 {
    let steps = steps.min(start.len()).max(1);
    let mut basis: Vec<DVector<f64>> = Vec::with_capacity(steps);
    let (mut alpha, mut beta): (Vec<f64>, Vec<f64>) =
        (Vec::with_capacity(steps), Vec::with_capacity(steps));
    let mut q = start.normalize();
    for j in 0..steps {
        let Some(mut w) = apply(&q) else {
            return f64::INFINITY;
        };
        if !w.iter().all(|v| v.is_finite()) {
            return f64::INFINITY;
        }
        let a = q.dot(&w);
        w.axpy(-a, &q, 1.0);
        if let (Some(prev), Some(&b)) = (basis.last(), beta.last()) {
            w.axpy(-b, prev, 1.0);
        }
        basis.push(q);
        alpha.push(a);
        // One pass of full reorthogonalization: what is left of the lost orthogonality only
        // duplicates converged Ritz values, which does not move the extreme one.
        for v in &basis {
            let c = v.dot(&w);
            w.axpy(-c, v, 1.0);
        }
        let scale = w.amax();
        let norm = if scale > 0.0 && scale.is_finite() {
            scale * (&w / scale).norm()
        } else {
            scale
        };
        if !norm.is_finite() {
            return f64::INFINITY;
        }
        let size = alpha
            .iter()
            .chain(&beta)
            .fold(0.0f64, |m, v| m.max(v.abs()));
        if j + 1 == steps || norm <= 1e-14 * size {
            break;
        }
        beta.push(norm);
        q = w / norm;
    }
    let (lo, hi) = tridiagonal_extremes(&alpha, &beta);
    lo.abs().max(hi.abs())
}

/// The smallest and largest eigenvalues of the symmetric tridiagonal matrix with diagonal
/// `alpha` and off-diagonal `beta` (entries beyond `beta`'s length are zero), by bisection on
/// Sturm counts inside the Gershgorin interval, to `1e-10` of the largest magnitude.
pub fn tridiagonal_extremes(alpha: &[f64], beta: &[f64]) -> (f64, f64) {
    let n = alpha.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    // β_{i−1} and β_i around row i (zero outside).
    let off = |i: usize| beta.get(i).copied().filter(|_| i + 1 < n).unwrap_or(0.0);
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (i, &a) in alpha.iter().enumerate() {
        let r = off(i).abs() + i.checked_sub(1).map_or(0.0, |j| off(j).abs());
        lo = lo.min(a - r);
        hi = hi.max(a + r);
    }
    // The number of eigenvalues below x (the negative pivots of T − xI).
    let below = |x: f64| {
        let (mut count, mut d) = (0, 1.0);
        for (i, &a) in alpha.iter().enumerate() {
            let b2 = i.checked_sub(1).map_or(0.0, |j| off(j) * off(j));
            d = a - x - if i > 0 { b2 / d } else { 0.0 };
            if d == 0.0 {
                d = -f64::EPSILON * (hi - lo).abs().max(f64::MIN_POSITIVE);
            }
            count += usize::from(d < 0.0);
        }
        count
    };
    let bisect = |k: usize| {
        // The (k+1)-th smallest eigenvalue.
        let (mut a, mut b) = (lo, hi);
        // To 1e-10 of the magnitude (plenty for a condition estimate; the Gershgorin width
        // shrinks to it in about 35 halvings).
        let size = lo.abs().max(hi.abs());
        for _ in 0..200 {
            let mid = 0.5 * (a + b);
            if mid <= a || mid >= b || b - a <= 1e-10 * size {
                break;
            }
            if below(mid) > k {
                b = mid;
            } else {
                a = mid;
            }
        }
        0.5 * (a + b)
    };
    (bisect(0), bisect(n - 1))
}

/// The largest eigenvalue magnitude `|λ|max` of a symmetric operator by `steps` steps of power
/// iteration from `start` (an estimate from below). `apply` returning `None` or a non-finite
/// vector gives `∞`; a zero image gives `0`. Norms are formed without overflow.
pub fn power_iteration(
    start: &DVector<f64>,
    steps: usize,
    apply: impl Fn(&DVector<f64>) -> Option<DVector<f64>>,
) -> f64 {
    let mut v = start.normalize();
    let mut lambda = 0.0;
    for _ in 0..steps {
        let Some(w) = apply(&v) else {
            return f64::INFINITY;
        };
        // ‖w‖ without overflow or underflow of the squares (entries near 1e±200 are fine).
        let big = w.amax();
        let norm = if big > 0.0 && big.is_finite() {
            big * (&w / big).norm()
        } else {
            big
        };
        if !norm.is_finite() {
            return f64::INFINITY;
        }
        if norm == 0.0 {
            return 0.0;
        }
        lambda = norm;
        v = w / norm;
    }
    lambda
}

/// `‖W‖₂²` by `steps` steps of power iteration on `WᵀW` (an estimate from below): the
/// allocating form of [`spectral_norm_sq_in`], for callers outside inner loops. An image that
/// overflows gives `∞`.
pub fn spectral_norm_sq(w: &DMatrix<f64>, steps: usize) -> f64 {
    let (mut x, mut y) = (DVector::zeros(w.ncols()), DVector::zeros(w.nrows()));
    let norm = spectral_norm_sq_in(w, steps, (&mut x, &mut y));
    if norm.is_finite() {
        norm
    } else {
        f64::INFINITY
    }
}

/// `‖W‖₂²` by `steps` steps of power iteration on `WᵀW` from the normalized ones vector (an
/// estimate from below), without forming `WᵀW` and without allocating: `x` (length
/// `W.ncols()`) and `y` (length `W.nrows()`) are scratch. A zero image gives `0`; an image that
/// overflows `T` gives a non-finite result (the caller's error).
pub fn spectral_norm_sq_in<T: nalgebra::RealField + Copy>(
    w: &DMatrix<T>,
    steps: usize,
    (x, y): (&mut DVector<T>, &mut DVector<T>),
) -> T {
    let n: T = nalgebra::convert(w.ncols().max(1) as f64);
    x.fill(T::one() / n.sqrt());
    let mut lambda = T::zero();
    for _ in 0..steps {
        y.gemv(T::one(), w, x, T::zero());
        x.gemv_tr(T::one(), w, y, T::zero());
        lambda = x.norm();
        if lambda == T::zero() || !lambda.is_finite() {
            return lambda;
        }
        x.unscale_mut(lambda);
    }
    lambda
}

/// Calls `f(i, j)` for every `i < rows`, `j < cols`, in 32 × 32 tiles, stopping at its first
/// error: a walk that reads or writes both `(i, j)` and `(j, i)` of a column-major matrix
/// (a transpose, a symmetry check) without touching a cache line per number.
pub(crate) fn tiled(
    (rows, cols): (usize, usize),
    mut f: impl FnMut(usize, usize) -> Result<()>,
) -> Result<()> {
    const TILE: usize = 32;
    for j0 in (0..cols).step_by(TILE) {
        for i0 in (0..rows).step_by(TILE) {
            for j in j0..(j0 + TILE).min(cols) {
                for i in i0..(i0 + TILE).min(rows) {
                    f(i, j)?;
                }
            }
        }
    }
    Ok(())
}

/// Checks that `q` is square, finite and symmetric (relative tolerance `1e-10` of its largest
/// entry); returns that entry's magnitude (at least `f64::MIN_POSITIVE`), the scale of the
/// positivity thresholds below.
pub fn check_symmetric(what: &str, q: &DMatrix<f64>) -> Result<f64> {
    if q.nrows() != q.ncols() {
        return Err(Error::dim(
            what,
            format!("square matrix ({} x {})", q.nrows(), q.nrows()),
            format!("{} x {}", q.nrows(), q.ncols()),
        ));
    }
    crate::error::check_finite(what, q.iter())?;
    let scale = q.amax().max(f64::MIN_POSITIVE);
    // The first pair found is the first in the order of the tiles.
    tiled((q.nrows(), q.nrows()), |i, j| {
        if i > j && (q[(i, j)] - q[(j, i)]).abs() > 1e-10 * scale {
            return Err(Error::NotPositiveDefinite {
                what: what.into(),
                reason: format!("not symmetric: entry ({i},{j}) differs from ({j},{i})"),
            });
        }
        Ok(())
    })?;
    Ok(scale)
}

/// Checks that `q` is symmetric ([`check_symmetric`]) and positive definite, and returns its
/// Cholesky factor `q = LLᵀ` (of the lower triangle). Positive definite means here: every
/// pivot `L_ii²` exceeds `1e-13 · max|q_ij|` (each pivot is at least `λ_min(q)`, so a matrix
/// [`check_spd`] accepts passes too; this one costs `n³/3` flops instead of an eigenvalue
/// decomposition's).
pub fn spd_cholesky(what: &str, q: &DMatrix<f64>) -> Result<Cholesky<f64, Dyn>> {
    spd_cholesky_on(&Threads::default(), what, q)
}

/// [`spd_cholesky`] with the factorization cut over `threads` (the same factor, bit for bit).
pub(crate) fn spd_cholesky_on(
    threads: &Threads,
    what: &str,
    q: &DMatrix<f64>,
) -> Result<Cholesky<f64, Dyn>> {
    let scale = check_symmetric(what, q)?;
    let refuse = |pivot: f64| Error::NotPositiveDefinite {
        what: what.into(),
        reason: format!("Cholesky pivot {pivot:.3e} is not positive"),
    };
    let chol = cholesky_on(threads, q).ok_or_else(|| refuse(0.0))?;
    let l = chol.l_dirty();
    let pivot = (0..q.nrows())
        .map(|i| l[(i, i)] * l[(i, i)])
        .fold(f64::INFINITY, f64::min);
    if pivot <= 1e-13 * scale {
        return Err(refuse(pivot));
    }
    Ok(chol)
}

/// `max_i |v_i|` (0 for none; NaN entries are skipped), written as a select that compiles to
/// vector maxima (`f64::max` and nalgebra's `amax` go one entry at a time).
pub(crate) fn amax(v: &[f64]) -> f64 {
    v.iter()
        .fold(0.0, |m, &x| if x.abs() > m { x.abs() } else { m })
}

/// The ∞-norm of each row of `a`, `max_j |a_ij|` (NaN entries skipped, as [`amax`]), in one
/// pass down `a`'s columns (a row of a column-major matrix is strided: a pass per row reads a
/// cache line per entry).
pub(crate) fn row_amax(a: &DMatrix<f64>) -> DVector<f64> {
    let mut norms = DVector::<f64>::zeros(a.nrows());
    for column in a.column_iter() {
        norms.zip_apply(&column, |m: &mut f64, x| {
            if x.abs() > *m {
                *m = x.abs();
            }
        });
    }
    norms
}

/// The smallest eigenvalue of the symmetric `q` (`+∞` for `0 × 0`), from its symmetric part.
pub fn min_eigenvalue(q: &DMatrix<f64>) -> f64 {
    if q.nrows() == 0 {
        return f64::INFINITY;
    }
    ((q + q.transpose()) * 0.5).symmetric_eigenvalues().min()
}

/// Checks that `q` is symmetric ([`check_symmetric`]) and positive definite, and returns its
/// smallest eigenvalue (the strong-convexity modulus `ν` of `½ zᵀQz`, used by Prop. 3).
/// Positive definite means here: `λ_min > 1e-13 · max|q_ij|`.
pub fn check_spd(what: &str, q: &DMatrix<f64>) -> Result<f64> {
    let scale = check_symmetric(what, q)?;
    let min = min_eigenvalue(q);
    if min <= 1e-13 * scale {
        return Err(Error::NotPositiveDefinite {
            what: what.into(),
            reason: format!("smallest eigenvalue {min:.3e} is not positive"),
        });
    }
    Ok(min)
}

/// Stacks the selected rows of `a` into a new matrix.
pub fn select_rows(a: &DMatrix<f64>, rows: &[usize]) -> DMatrix<f64> {
    DMatrix::from_fn(rows.len(), a.ncols(), |i, j| a[(rows[i], j)])
}

/// Vertically stacks two matrices with the same number of columns.
pub fn vstack(a: &DMatrix<f64>, b: &DMatrix<f64>) -> DMatrix<f64> {
    let mut out = DMatrix::zeros(a.nrows() + b.nrows(), a.ncols());
    out.view_mut((0, 0), (a.nrows(), a.ncols())).copy_from(a);
    out.view_mut((a.nrows(), 0), (b.nrows(), b.ncols()))
        .copy_from(b);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass maxima equal nalgebra's entry-by-entry ones (which skip nothing: no NaN
    /// here), and skip NaN entries as documented.
    #[test]
    fn row_maxima_in_one_pass_match_the_rows() {
        let a = DMatrix::from_fn(7, 5, |i, j| {
            ((i * 5 + j) as f64 * 0.37).sin() * 10f64.powi(i as i32 - 3)
        });
        let norms = row_amax(&a);
        for (i, row) in a.row_iter().enumerate() {
            assert_eq!(norms[i], row.amax(), "row {i}");
        }
        assert_eq!(amax(a.as_slice()), a.amax());
        let mut b = DMatrix::from_row_slice(2, 3, &[-3.0, f64::NAN, 2.0, 0.0, -0.0, f64::NAN]);
        assert_eq!(row_amax(&b).as_slice(), &[3.0, 0.0]);
        b[(1, 1)] = f64::MIN;
        assert_eq!(row_amax(&b)[1], f64::MAX);
        assert_eq!(row_amax(&DMatrix::zeros(3, 0)).as_slice(), &[0.0; 3]);
    }
}
