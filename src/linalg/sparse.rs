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
