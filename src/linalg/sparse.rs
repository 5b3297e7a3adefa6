//! Sparse matrices for the sparse QP path: faer's compressed sparse column type ([`Csc`],
//! re-exported with [`faer`] as nalgebra is), the few products the path needs, and the sparse
//! factorization of an equality-constrained KKT system with iterative refinement
//! ([`SparseKkt`]).

use faer::linalg::solvers::Solve;
use faer::sparse::linalg::solvers::{Llt, Lu, SymbolicLlt, SymbolicLu};
use faer::sparse::{SparseColMat, SymbolicSparseColMat, Triplet};
use faer::{Mat, Side};
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
fn compact(
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
fn sort_column(rows: &mut [usize], vals: &mut [f64], start: usize) {
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
fn for_column(a: &Csc, j: usize, mut f: impl FnMut(usize, f64)) {
    let (sym, val) = (a.symbolic(), a.val());
    for p in sym.col_range(j) {
        f(sym.row_idx()[p], val[p]);
    }
}

fn memory(e: impl std::fmt::Debug) -> Error {
    Error::input("sparse matrix", format!("faer could not allocate ({e:?})"))
}

/// The factorization of an equality-constrained KKT matrix `K = [P Rᵀ; R 0]` (`P` symmetric
/// positive definite `n × n`, `R` the held rows), by faer's sparse LU with partial pivoting
/// (exact for the indefinite `K` without regularization), kept so that the forward point, the
/// rate problem (Eq. 17) and the data gradients reuse it.
pub(crate) struct SparseKkt {
    n: usize,
    k: Csc,
    lu: Lu<usize, f64>,
}

/// A solve of [`SparseKkt`]: the solution and its accuracy.
pub(crate) struct KktSolve {
    /// `[x; y]` with `P x + Rᵀ y = r`, `R x = s`.
    pub(crate) solution: DVector<f64>,
    /// ∞-norms of the last refinement correction of `x` and of `y` (forward-error estimates).
    pub(crate) error: (f64, f64),
}

/// The componentwise backward error [`SparseKkt::solve`] must reach (else the held rows are
/// dependent to `f64`'s resolution).
const KKT_BACKWARD_ERROR: f64 = 1e-10;

impl SparseKkt {
    /// Assembles and factors `[P Rᵀ; R 0]`.
    ///
    /// # Errors
    /// [`Error::Singular`] when the factorization fails (structurally dependent rows).
    pub(crate) fn new(p: &Csc, r: &Csc) -> Result<Self> {
        let n = p.nrows();
        let rt = r.as_ref().transpose().to_col_major().map_err(memory)?;
        let size = n + r.nrows();
        let mut col_ptr = Vec::with_capacity(size + 1);
        let nnz = p.val().len() + 2 * r.val().len();
        let (mut rows, mut vals) = (Vec::with_capacity(nnz), Vec::with_capacity(nnz));
        col_ptr.push(0);
        for j in 0..n {
            let start = rows.len();
            for_column(p, j, |i, v| {
                rows.push(i);
                vals.push(v);
            });
            for_column(r, j, |i, v| {
                rows.push(n + i);
                vals.push(v);
            });
            sort_column(&mut rows, &mut vals, start);
            col_ptr.push(rows.len());
        }
        for j in 0..r.nrows() {
            let start = rows.len();
            for_column(&rt, j, |i, v| {
                rows.push(i);
                vals.push(v);
            });
            sort_column(&mut rows, &mut vals, start);
            col_ptr.push(rows.len());
        }
        let k = compact(size, size, col_ptr, rows, vals);
        let singular = |e: &dyn std::fmt::Debug| {
            Error::Singular(format!(
                "the sparse KKT system on the held rows cannot be factored ({e:?}): the rows are \
                 linearly dependent"
            ))
        };
        let symbolic = SymbolicLu::try_new(k.symbolic()).map_err(|e| singular(&e))?;
        let lu = Lu::try_new_with_symbolic(symbolic, k.as_ref()).map_err(|e| singular(&e))?;
        Ok(Self { n, k, lu })
    }

    /// Solves `K [x; y] = rhs` with iterative refinement (up to four corrections, until the
    /// row-wise backward error `max_i |rhs − K v|_i / (‖K_i‖₁ ‖v‖∞ + |rhs_i|)` is at rounding
    /// level: each row's residual against the size of that row's terms, which does not change
    /// when a row is scaled).
    ///
    /// # Errors
    /// [`Error::Singular`] when the backward error stays above `1e-10` or the solution is not
    /// finite: the held rows are dependent to `f64`'s resolution.
    pub(crate) fn solve(&self, rhs: &DVector<f64>) -> Result<KktSolve> {
        let mut v = self.lu_solve(rhs);
        let mut error = (f64::INFINITY, f64::INFINITY);
        let mut backward = f64::INFINITY;
        for _ in 0..4 {
            let (residual, size) = self.residual(rhs, &v);
            backward = (residual.iter().zip(size.iter()))
                .map(|(&r, &s)| {
                    if r == 0.0 {
                        0.0
                    } else if s > 0.0 {
                        r.abs() / s
                    } else {
                        f64::INFINITY
                    }
                })
                .fold(0.0, f64::max);
            if !backward.is_finite() {
                break;
            }
            let dv = self.lu_solve(&residual);
            v += &dv;
            error = (
                dv.rows(0, self.n).amax(),
                dv.rows(self.n, dv.len() - self.n).amax(),
            );
            if backward <= 4.0 * f64::EPSILON {
                break;
            }
        }
        if !(backward <= KKT_BACKWARD_ERROR && v.iter().all(|x| x.is_finite())) {
            return Err(Error::Singular(format!(
                "the sparse KKT system on the held rows is singular to f64's resolution \
                 (backward error {backward:.1e}): the rows are (nearly) linearly dependent"
            )));
        }
        Ok(KktSolve { solution: v, error })
    }

    /// The dimension `n` of the primal part.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    fn lu_solve(&self, rhs: &DVector<f64>) -> DVector<f64> {
        let mut b = Mat::from_fn(rhs.len(), 1, |i, _| rhs[i]);
        self.lu.solve_in_place(b.as_mut());
        DVector::from_fn(rhs.len(), |i, _| b[(i, 0)])
    }

    /// `rhs − K v` and `‖K_i‖₁ ‖v‖∞ + |rhs_i|` for every row `i`.
    fn residual(&self, rhs: &DVector<f64>, v: &DVector<f64>) -> (DVector<f64>, DVector<f64>) {
        let (mut r, mut size) = (rhs.clone(), DVector::zeros(rhs.len()));
        for_each_entry(&self.k, |i, j, a| {
            r[i] -= a * v[j];
            size[i] += a.abs();
        });
        let v_norm = v.amax();
        size.zip_apply(rhs, |s, b| *s = *s * v_norm + b.abs());
        (r, size)
    }
}
