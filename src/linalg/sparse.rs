//! Sparse matrices for the sparse QP path: faer's compressed sparse column type ([`Csc`],
//! re-exported with [`faer`] as nalgebra is) and the few products the path needs (the KKT
//! factorization is `sparse_kkt`).

use faer::sparse::linalg::solvers::{Llt, SymbolicLlt};
use faer::sparse::{SparseColMat, SymbolicSparseColMat, Triplet};
use faer::Side;
use nalgebra::{DMatrix, DVector};

use crate::error::{check_finite, Error, Result};

/// A sparse `f64` matrix in compressed sparse column form (faer's `SparseColMat`, the type
/// faer's and Clarabel's users already hold; build one with [`csc_from_triplets`] or faer's
/// own constructors).
pub type Csc = SparseColMat<usize, f64>;

/// The `nrows × ncols` matrix with the entries `(row, col, value)`; repeated positions are
/// summed (the COO convention of SciPy and faer).
///
/// ```
/// use bilevel::linalg::{csc_from_triplets, csc_to_dense};
///
/// let a = csc_from_triplets(2, 3, &[(0, 0, 1.0), (1, 2, -2.0), (1, 2, 0.5)])?;
/// assert_eq!(csc_to_dense(&a)[(1, 2)], -1.5);
/// # Ok::<(), bilevel::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidInput`] for an index out of range; [`Error::NonFinite`] for a non-finite
/// value.
pub fn csc_from_triplets(
    nrows: usize,
    ncols: usize,
    entries: &[(usize, usize, f64)],
) -> Result<Csc> {
    if let Some(&(i, j, _)) = entries.iter().find(|&&(i, j, _)| i >= nrows || j >= ncols) {
        return Err(Error::input(
            "sparse matrix",
            format!("entry ({i}, {j}) is outside the {nrows} x {ncols} shape"),
        ));
    }
    check_finite("sparse matrix", entries.iter().map(|(_, _, v)| v))?;
    let triplets: Vec<Triplet<usize, usize, f64>> = (entries.iter())
        .map(|&(i, j, v)| Triplet::new(i, j, v))
        .collect();
    SparseColMat::try_new_from_triplets(nrows, ncols, &triplets)
        .map_err(|e| Error::input("sparse matrix", format!("{e:?}")))
}

/// The non-zero entries of a dense matrix as a [`Csc`].
pub fn csc_from_dense(m: &DMatrix<f64>) -> Csc {
    let (nrows, ncols) = m.shape();
    let mut col_ptr = Vec::with_capacity(ncols + 1);
    let (mut rows, mut vals) = (Vec::new(), Vec::new());
    col_ptr.push(0);
    for j in 0..ncols {
        for (i, &v) in m.column(j).iter().enumerate() {
            if v != 0.0 {
                rows.push(i);
                vals.push(v);
            }
        }
        col_ptr.push(rows.len());
    }
    compact(nrows, ncols, col_ptr, rows, vals)
}

/// The dense copy of a [`Csc`] (for tests and small problems).
pub fn csc_to_dense(a: &Csc) -> DMatrix<f64> {
    let mut m = DMatrix::zeros(a.nrows(), a.ncols());
    for_each_entry(a, |i, j, v| m[(i, j)] += v);
    m
}

/// A [`Csc`] from sorted, duplicate-free compressed columns (built by this module only).
pub(super) fn compact(
    nrows: usize,
    ncols: usize,
    col_ptr: Vec<usize>,
    rows: Vec<usize>,
    vals: Vec<f64>,
) -> Csc {
    // `new_checked` verifies the structure (the callers build it sorted, duplicate-free).
    SparseColMat::new(
        SymbolicSparseColMat::new_checked(nrows, ncols, col_ptr, None, rows),
        vals,
    )
}

/// Calls `f(row, col, value)` for every stored entry, column by column.
pub(crate) fn for_each_entry(a: &Csc, mut f: impl FnMut(usize, usize, f64)) {
    let (sym, val) = (a.symbolic(), a.val());
    let rows = sym.row_idx();
    for j in 0..a.ncols() {
        for p in sym.col_range(j) {
            f(rows[p], j, val[p]);
        }
    }
}

/// `y = A x`.
pub(crate) fn mul(a: &Csc, x: &DVector<f64>) -> DVector<f64> {
    let mut y = DVector::zeros(a.nrows());
    for_each_entry(a, |i, j, v| y[i] += v * x[j]);
    y
}

/// `y = Aᵀ x`.
pub(crate) fn tr_mul(a: &Csc, x: &DVector<f64>) -> DVector<f64> {
    let mut y = DVector::zeros(a.ncols());
    for_each_entry(a, |i, j, v| y[j] += v * x[i]);
    y
}

/// `Σ_j |a_ij x_j|` for every row `i`: the size of the terms a row's product is summed from.
pub(crate) fn abs_mul(a: &Csc, x: &DVector<f64>) -> DVector<f64> {
    let mut y = DVector::zeros(a.nrows());
    for_each_entry(a, |i, j, v| y[i] += (v * x[j]).abs());
    y
}

/// `Σ_i |a_ij u_i|` for every column `j`: the size of the terms `(Aᵀu)_j` is summed from.
pub(crate) fn abs_tr_mul(a: &Csc, u: &DVector<f64>) -> DVector<f64> {
    let mut y = DVector::zeros(a.ncols());
    for_each_entry(a, |i, j, v| y[j] += (v * u[i]).abs());
    y
}

/// Each row's ∞-norm (largest magnitude; 0 for an empty row).
pub(crate) fn row_amax(a: &Csc) -> DVector<f64> {
    let mut y = DVector::zeros(a.nrows());
    for_each_entry(a, |i, _, v| y[i] = f64::max(y[i], v.abs()));
    y
}

/// The largest magnitude of any entry (0 for none).
pub(crate) fn amax(a: &Csc) -> f64 {
    super::amax(a.val())
}

/// `−A` (the same pattern).
pub(crate) fn negated(a: &Csc) -> Csc {
    let mut out = a.clone();
    out.val_mut().iter_mut().for_each(|v| *v = -*v);
    out
}

/// The matrix with `a`'s pattern and the values `f(i, j)` at its stored entries.
pub(crate) fn on_pattern(a: &Csc, f: impl Fn(usize, usize) -> f64) -> Csc {
    let mut out = a.clone();
    let sym = a.symbolic();
    let val = out.val_mut();
    for j in 0..a.ncols() {
        for p in sym.col_range(j) {
            val[p] = f(sym.row_idx()[p], j);
        }
    }
    out
}

/// `A + shift I` for a square `A` whose diagonal is stored (as a positive definite matrix's
/// is), with `A`'s pattern: `shift` added to each stored diagonal entry.
pub(crate) fn shifted_diagonal(a: &Csc, shift: f64) -> Csc {
    let mut out = a.clone();
    if shift == 0.0 {
        return out;
    }
    let sym = a.symbolic();
    let val = out.val_mut();
    for j in 0..a.ncols() {
        for p in sym.col_range(j) {
            if sym.row_idx()[p] == j {
                val[p] += shift;
            }
        }
    }
    out
}

/// The matrix with row `i` multiplied by `d[i]`.
pub(crate) fn scale_rows(a: &Csc, d: &DVector<f64>) -> Csc {
    let mut scaled = a.clone();
    let rows: Vec<usize> = scaled.symbolic().row_idx().to_vec();
    let ranges: Vec<_> = (0..a.ncols()).map(|j| a.symbolic().col_range(j)).collect();
    let val = scaled.val_mut();
    for range in ranges {
        for p in range {
            val[p] *= d[rows[p]];
        }
    }
    scaled
}

/// The rows `rows` (in that order, increasing) of each part, each multiplied by its sign,
/// stacked: `[s₁ A₁[rows₁]; s₂ A₂[rows₂]; …]` (`None`: every row). All parts have the same
/// number of columns.
pub(crate) fn stack_rows(parts: &[(&Csc, Option<&[usize]>, f64)]) -> Csc {
    let ncols = parts.first().map_or(0, |(a, _, _)| a.ncols());
    let mut offset = 0;
    let maps: Vec<Vec<Option<usize>>> = (parts.iter())
        .map(|(a, rows, _)| {
            let mut map = vec![None; a.nrows()];
            match rows {
                Some(rows) => {
                    for (r, &i) in rows.iter().enumerate() {
                        map[i] = Some(offset + r);
                    }
                    offset += rows.len();
                }
                None => {
                    for (i, slot) in map.iter_mut().enumerate() {
                        *slot = Some(offset + i);
                    }
                    offset += a.nrows();
                }
            }
            map
        })
        .collect();
    let mut col_ptr = Vec::with_capacity(ncols + 1);
    let (mut rows, mut vals) = (Vec::new(), Vec::new());
    col_ptr.push(0);
    for j in 0..ncols {
        let start = rows.len();
        for ((a, _, sign), map) in parts.iter().zip(&maps) {
            for_column(a, j, |i, v| {
                if let Some(r) = map[i] {
                    rows.push(r);
                    vals.push(sign * v);
                }
            });
        }
        sort_column(&mut rows, &mut vals, start);
        col_ptr.push(rows.len());
    }
    compact(offset, ncols, col_ptr, rows, vals)
}

/// The upper triangle (`i ≤ j`) of a square matrix, in Clarabel's CSC type.
pub(crate) fn upper_to_clarabel(p: &Csc) -> clarabel::algebra::CscMatrix<f64> {
    to_clarabel(p, |i, j| i <= j)
}

/// A [`Csc`] in Clarabel's CSC type.
pub(crate) fn csc_to_clarabel(a: &Csc) -> clarabel::algebra::CscMatrix<f64> {
    to_clarabel(a, |_, _| true)
}

fn to_clarabel(a: &Csc, keep: impl Fn(usize, usize) -> bool) -> clarabel::algebra::CscMatrix<f64> {
    let mut col_ptr = Vec::with_capacity(a.ncols() + 1);
    let (mut rows, mut vals) = (Vec::new(), Vec::new());
    col_ptr.push(0);
    for j in 0..a.ncols() {
        let start = rows.len();
        for_column(a, j, |i, v| {
            if keep(i, j) && v != 0.0 {
                rows.push(i);
                vals.push(v);
            }
        });
        sort_column(&mut rows, &mut vals, start);
        col_ptr.push(rows.len());
    }
    clarabel::algebra::CscMatrix::new(a.nrows(), a.ncols(), col_ptr, rows, vals)
}

/// Sorts the entries from `start` on by row (a no-op for the sorted columns faer keeps, unless
/// a matrix was built with unsorted columns).
pub(super) fn sort_column(rows: &mut [usize], vals: &mut [f64], start: usize) {
    if rows[start..].windows(2).all(|w| w[0] < w[1]) {
        return;
    }
    let mut pairs: Vec<(usize, f64)> = (rows[start..].iter().copied())
        .zip(vals[start..].iter().copied())
        .collect();
    pairs.sort_unstable_by_key(|&(i, _)| i);
    for (k, (i, v)) in pairs.into_iter().enumerate() {
        (rows[start + k], vals[start + k]) = (i, v);
    }
}

/// Checks that `q` is square, symmetric (relative tolerance `1e-10` of its largest entry, as
/// [`super::check_symmetric`]) and positive definite (its sparse Cholesky factorization exists).
///
/// # Errors
/// [`Error::DimensionMismatch`], [`Error::NonFinite`], [`Error::NotPositiveDefinite`].
pub fn check_sparse_spd(what: &str, q: &Csc) -> Result<()> {
    let n = q.nrows();
    if q.ncols() != n {
        return Err(Error::dim(
            what,
            format!("square matrix ({n} x {n})"),
            format!("{n} x {}", q.ncols()),
        ));
    }
    check_finite(what, q.val().iter())?;
    let scale = amax(q).max(f64::MIN_POSITIVE);
    let transpose = q.as_ref().transpose().to_col_major().map_err(memory)?;
    // Q − Qᵀ, column by column (both have sorted columns after `to_col_major`'s copy and
    // faer's own invariant).
    let mut difference = vec![0.0; n];
    for j in 0..n {
        for_column(q, j, |i, v| difference[i] += v);
        for_column(&transpose, j, |i, v| difference[i] -= v);
        let mut worst = None;
        for_column(q, j, |i, _| {
            if difference[i].abs() > 1e-10 * scale {
                worst = Some(i);
            }
        });
        for_column(&transpose, j, |i, _| {
            if difference[i].abs() > 1e-10 * scale {
                worst = Some(i);
            }
            difference[i] = 0.0;
        });
        for_column(q, j, |i, _| difference[i] = 0.0);
        if let Some(i) = worst {
            return Err(Error::NotPositiveDefinite {
                what: what.into(),
                reason: format!("not symmetric: entry ({i},{j}) differs from ({j},{i})"),
            });
        }
    }
    let symbolic = SymbolicLlt::try_new(q.symbolic(), Side::Lower).map_err(memory)?;
    Llt::try_new_with_symbolic(symbolic, q.as_ref(), Side::Lower).map_err(|e| {
        Error::NotPositiveDefinite {
            what: what.into(),
            reason: format!("its sparse Cholesky factorization fails ({e:?})"),
        }
    })?;
    Ok(())
}

/// A certified lower bound `ν ≤ λ_min(q)` of a sparse symmetric positive definite `q` (the
/// strong-convexity modulus Prop. 3's band needs), within `1/64` of `λ_min` above the rounding
/// margin, by bisection on positive definiteness: `λ_min ≤ min_i q_ii` (the Rayleigh quotient of
/// `e_i`), and a sparse Cholesky factorization of `q − νI` that succeeds shows
/// `λ_min(q) ≥ ν − ‖ΔA‖₂` with `‖ΔA‖₂ ≤ γ_{n+1} tr(q − νI)` (Higham, *Accuracy and Stability
/// of Numerical Algorithms*, Thm. 10.3, with `‖|L||Lᵀ|‖₂ ≤ ‖L‖_F²`); the margin
/// `2(n + 2)ε tr(q)` covers that and the shift's rounding. About `log₄(min_i q_ii / λ_min) + 6`
/// factorizations on one symbolic analysis. `None` when the bound is not positive (`λ_min`
/// below the margin), for `0 × 0`, or when a diagonal entry is not stored.
///
/// # Errors
/// Allocation failures of the factorization.
pub(crate) fn min_eigenvalue_lower(q: &Csc) -> Result<Option<f64>> {
    let n = q.nrows();
    let mut diagonal = vec![None; n];
    for (j, entry) in diagonal.iter_mut().enumerate() {
        for_column(q, j, |i, v| {
            if i == j {
                *entry = Some(v);
            }
        });
    }
    let Some(diagonal) = diagonal.into_iter().collect::<Option<Vec<f64>>>() else {
        return Ok(None);
    };
    let trace: f64 = diagonal.iter().sum();
    let margin = 2.0 * (n + 2) as f64 * f64::EPSILON * trace;
    let symbolic = SymbolicLlt::try_new(q.symbolic(), Side::Lower).map_err(memory)?;
    let definite = |nu: f64| {
        let shifted = shifted_diagonal(q, -nu);
        Llt::try_new_with_symbolic(symbolic.clone(), shifted.as_ref(), Side::Lower).is_ok()
    };
    // `hi`: min_i q_ii or a shift that failed; `lo`: a shift that succeeded.
    let mut hi = diagonal.iter().copied().fold(f64::INFINITY, f64::min);
    if !(hi > 0.0 && hi.is_finite()) {
        return Ok(None);
    }
    let mut lo = hi / 2.0;
    while !definite(lo) {
        (hi, lo) = (lo, lo / 4.0);
        // `lo` is positive and finite here (`hi` was): at or below the margin nothing certifies.
        if lo <= margin {
            return Ok(None);
        }
    }
    while hi - lo > lo / 64.0 {
        let mid = 0.5 * (lo + hi);
        if definite(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some(lo - margin).filter(|&nu| nu > 0.0))
}

/// Calls `f(row, value)` for the stored entries of column `j`.
pub(super) fn for_column(a: &Csc, j: usize, mut f: impl FnMut(usize, f64)) {
    let (sym, val) = (a.symbolic(), a.val());
    for p in sym.col_range(j) {
        f(sym.row_idx()[p], val[p]);
    }
}

pub(super) fn memory(e: impl std::fmt::Debug) -> Error {
    Error::input("sparse matrix", format!("faer could not allocate ({e:?})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tridiag(−1, 2, −1)` of size `n` times `scale`: `λ_k = scale (2 − 2cos(kπ/(n + 1)))`.
    fn second_difference(n: usize, scale: f64) -> Csc {
        let mut t = Vec::new();
        for i in 0..n {
            t.push((i, i, 2.0 * scale));
            if i + 1 < n {
                t.push((i, i + 1, -scale));
                t.push((i + 1, i, -scale));
            }
        }
        csc_from_triplets(n, n, &t).unwrap()
    }

    #[test]
    fn the_eigenvalue_bound_is_below_the_closed_form_and_within_a_64th_of_it() {
        for (n, scale) in [
            (1, 3.0),
            (2, 1.0),
            (50, 1.0),
            (1000, 1.0),
            (1000, 1e-6),
            (300, 1e8),
        ] {
            let exact = scale * (2.0 - 2.0 * (std::f64::consts::PI / (n + 1) as f64).cos());
            let nu = min_eigenvalue_lower(&second_difference(n, scale))
                .unwrap()
                .unwrap();
            // `exact` is computed to a few ulps of its terms (2 and cos ≈ 1, each × scale).
            let ulps = 8.0 * f64::EPSILON * 2.0 * scale;
            assert!(nu <= exact + ulps, "n {n}: {nu} above {exact}");
            let margin = 2.0 * (n + 2) as f64 * f64::EPSILON * 2.0 * scale * n as f64;
            assert!(
                nu >= exact * (1.0 - 1.0 / 64.0) - margin - ulps,
                "n {n}: {nu} vs {exact}"
            );
        }
    }

    #[test]
    fn the_eigenvalue_bound_matches_a_dense_eigensolver_and_stops_at_the_margin() {
        // Q = MᵀM + δI with an integer M: λ_min from nalgebra's symmetric eigensolver.
        let m = DMatrix::from_fn(12, 12, |i, j| ((i * j + i + 2 * j) % 7) as f64 - 3.0);
        for delta in [1.0, 1e-3, 1e-8] {
            let q = m.tr_mul(&m) + DMatrix::identity(12, 12) * delta;
            let exact = super::super::min_eigenvalue(&q);
            let nu = min_eigenvalue_lower(&csc_from_dense(&q)).unwrap().unwrap();
            let resolution = 64.0 * f64::EPSILON * q.amax();
            assert!(nu <= exact + resolution, "δ {delta}: {nu} above {exact}");
            assert!(
                nu >= exact * (1.0 - 1.0 / 64.0) - resolution,
                "δ {delta}: {nu} {exact}"
            );
        }
        // λ_min = 1e-20 is below the rounding margin of tr Q ≈ 1: no bound is certified.
        let tiny = csc_from_triplets(2, 2, &[(0, 0, 1.0), (1, 1, 1e-20)]).unwrap();
        assert_eq!(min_eigenvalue_lower(&tiny).unwrap(), None);
        // Not positive definite, and a diagonal entry not stored: none either.
        let indefinite = csc_from_triplets(2, 2, &[(0, 0, 1.0), (1, 1, -1.0)]).unwrap();
        assert_eq!(min_eigenvalue_lower(&indefinite).unwrap(), None);
        let hollow = csc_from_triplets(2, 2, &[(0, 0, 1.0), (0, 1, 0.5), (1, 0, 0.5)]).unwrap();
        assert_eq!(min_eigenvalue_lower(&hollow).unwrap(), None);
    }
}
