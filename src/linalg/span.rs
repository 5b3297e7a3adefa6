//! Angles between rows and the span of other rows: linear dependence decided at
//! [`DEPENDENT_SINE`], by modified Gram–Schmidt (accurate to rounding) or, for many rows at once,
//! from Gram matrices formed by matrix products where those decide.

use nalgebra::{DMatrix, DVector};

/// Below this sine of its angle to the span of the others a row counts as a combination of
/// them (a duplicate: LICQ fails, its multiplier is 0), as in the exact solve's
/// `dependent` rows.
pub(crate) const DEPENDENT_SINE: f64 = 1e-10;

/// How far a set of rows is from linear dependence: the columns of `v` are the rows in the
/// metric of the problem (`L⁻¹c_i` for `P = LLᵀ`). Each column is orthogonalized against the
/// columns kept before it (modified Gram–Schmidt, twice where the first pass cancelled much,
/// so that the sine is accurate to rounding rather than to its square root); a column whose
/// sine to their span is at most [`DEPENDENT_SINE`] is a combination of them and left out; the
/// result is the smallest sine among the others (1 for none). The KKT matrix of the kept rows has a condition number of
/// about its inverse square.
pub(crate) fn independence(v: &DMatrix<f64>) -> f64 {
    let mut basis: Vec<DVector<f64>> = Vec::new();
    let mut smallest = 1.0f64;
    for col in v.column_iter() {
        if let Some(r) = orthogonal_part(col.into_owned(), &basis) {
            let sine = r.norm();
            if sine > DEPENDENT_SINE {
                smallest = smallest.min(sine);
                basis.push(r / sine);
            }
        }
    }
    smallest
}

/// The sine of the angle between `v` and the span of the rows of `rows` (1 without rows, 0
/// for a zero `v`): [`RowSpan::sine`] for one vector.
pub(crate) fn sine_to_span(rows: &DMatrix<f64>, v: &DVector<f64>) -> f64 {
    RowSpan::new(rows).sine(v)
}

/// An orthonormal basis of the span of a matrix's rows (built as in [`independence`]: each
/// row scaled to unit length, modified Gram–Schmidt, twice where it cancels, rows within
/// [`DEPENDENT_SINE`] of the earlier ones left out), for the angles of many vectors to that
/// span at `O(n r)` each.
pub(crate) struct RowSpan {
    basis: Vec<DVector<f64>>,
}

impl RowSpan {
    /// The basis of the span of `rows`' rows (`O(n r²)`).
    pub(crate) fn new(rows: &DMatrix<f64>) -> Self {
        let mut basis: Vec<DVector<f64>> = Vec::new();
        for row in rows.row_iter() {
            if let Some(r) = orthogonal_part(row.transpose(), &basis) {
                let sine = r.norm();
                if sine > DEPENDENT_SINE {
                    basis.push(r / sine);
                }
            }
        }
        Self { basis }
    }

    /// The sine of the angle between `v` and the span (0 for a zero or non-finite `v`).
    pub(crate) fn sine(&self, v: &DVector<f64>) -> f64 {
        orthogonal_part(v.clone(), &self.basis).map_or(0.0, |r| r.norm())
    }
}

/// `col` scaled to unit length (by its ∞-norm first, so that no norm overflows) minus its
/// projection on the orthonormal `basis`, by modified Gram–Schmidt, repeated once when the
/// first pass cancelled more than half of the vector's length (Kahan and Parlett's "twice is
/// enough": the result is then orthogonal to rounding rather than to its square root);
/// `None` for a zero or non-finite `col`. Its norm is the sine of the angle between `col` and
/// the basis' span.
fn orthogonal_part(col: DVector<f64>, basis: &[DVector<f64>]) -> Option<DVector<f64>> {
    let norm = col.amax();
    if !(norm > 0.0 && norm.is_finite()) {
        return None;
    }
    let col = col.unscale(norm);
    let mut r = col.unscale(col.norm());
    let pass = |r: &mut DVector<f64>| {
        for q in basis {
            let t = q.dot(r);
            r.axpy(-t, q, 1.0);
        }
    };
    pass(&mut r);
    if r.norm() < 0.5 {
        pass(&mut r);
    }
    Some(r)
}

/// Which rows of `rows` lie in the row space of `span`: for each row, whether the sine of its
/// angle to that space is at most [`DEPENDENT_SINE`] (a zero row always is) — what
/// `RowSpan::new(span).sine(row) <= DEPENDENT_SINE` decides row by row, at the cost of matrix
/// products where they decide.
///
/// With every row scaled to unit length (`Ŝ`, `R̂`), the squared sine of row `r` is the last
/// Cholesky pivot of the Gram matrix of `[Ŝ; r̂]`, `1 − ‖y‖²` with `y = L⁻¹Ŝr̂` and `ŜŜᵀ = LLᵀ`.
/// Cholesky is backward stable with `|L_ij| ≤ 1` here, so that pivot is accurate to about
/// `k ε (1 + ‖z‖²)` (`k` the span's rows), `z = L⁻ᵀy = (ŜŜᵀ)⁻¹Ŝr̂`: a pivot above
/// `max(1e-11, 64 k ε) (1 + ‖z‖²)` proves the row independent (its sine is then far above
/// [`DEPENDENT_SINE`]). The rows that bound does not decide, and all of them when `span`'s own rows
/// are nearly dependent (a pivot of `ŜŜᵀ` below `1e-11`), are decided by Gram–Schmidt.
pub(crate) fn rows_in_span(span: &DMatrix<f64>, rows: &DMatrix<f64>) -> Vec<bool> {
    let (s, s_zero) = unit_rows(span);
    let (r, r_zero) = unit_rows(rows);
    let mut decided: Vec<Option<bool>> = r_zero.iter().map(|&z| z.then_some(true)).collect();
    let chol = if s_zero.contains(&true) {
        None
    } else {
        (&s * s.transpose()).cholesky()
    };
    let certain = chol.filter(|c| {
        let l = c.l_dirty();
        (0..l.nrows()).all(|i| l[(i, i)] * l[(i, i)] >= 1e-11)
    });
    if let Some(chol) = certain {
        let l = chol.l_dirty();
        let mut y = &s * r.transpose();
        l.solve_lower_triangular_mut(&mut y);
        let mut z = y.clone();
        l.tr_solve_lower_triangular_mut(&mut z);
        let bound = 1e-11f64.max(64.0 * span.nrows() as f64 * f64::EPSILON);
        for (j, d) in decided.iter_mut().enumerate() {
            let sin2 = 1.0 - y.column(j).norm_squared();
            if d.is_none() && sin2 > bound * (1.0 + z.column(j).norm_squared()) {
                *d = Some(false);
            }
        }
    }
    if decided.iter().any(Option::is_none) {
        let basis = RowSpan::new(span);
        for (j, d) in decided.iter_mut().enumerate() {
            if d.is_none() {
                *d = Some(basis.sine(&rows.row(j).transpose()) <= DEPENDENT_SINE);
            }
        }
    }
    decided.into_iter().map(|d| d.unwrap_or(true)).collect()
}

/// `a`'s rows scaled to unit 2-norm (by their ∞-norm first, so that no norm overflows), and
/// which rows are zero or not finite (left as zeros).
fn unit_rows(a: &DMatrix<f64>) -> (DMatrix<f64>, Vec<bool>) {
    let mut out = a.clone();
    let mut zero = vec![false; a.nrows()];
    for (i, flag) in zero.iter_mut().enumerate() {
        let mut row = out.row_mut(i);
        let big = row.amax();
        if !(big > 0.0 && big.is_finite()) {
            row.fill(0.0);
            *flag = true;
            continue;
        }
        row.unscale_mut(big);
        let norm = row.norm();
        row.unscale_mut(norm);
    }
    (out, zero)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of a fixed, well-spread pattern (no random numbers needed in this layer).
    fn rows(k: usize, n: usize, seed: f64) -> DMatrix<f64> {
        DMatrix::from_fn(k, n, |i, j| {
            let t = (i * n + j) as f64;
            (t * t * 0.437_191 + seed).sin()
        })
    }

    /// The products' answer is Gram–Schmidt's, row by row, on both sides of the threshold: rows
    /// independent, exact combinations, combinations moved off the span by a sine of 1e-8
    /// (independent) and 1e-12 (dependent), zero rows, rescaled rows, and a span whose own rows
    /// are dependent (the fallback).
    #[test]
    fn rows_in_span_decides_as_gram_schmidt_does() {
        let n = 40;
        let span = rows(12, n, 0.3);
        let basis = RowSpan::new(&span);
        // A unit direction orthogonal to the span.
        let orth = {
            let r = orthogonal_part(rows(1, n, 7.0).row(0).transpose(), &basis.basis).unwrap();
            &r / r.norm()
        };
        let comb = |w: f64| span.row(2) * 0.7 - span.row(5) * 1.3 + span.row(11) * w;
        let mut cands = rows(6, n, 2.0);
        let extra = [
            comb(0.2),
            comb(-1.0) * 1e150,
            comb(0.5) / comb(0.5).norm() + orth.transpose() * 1e-8,
            comb(0.5) / comb(0.5).norm() + orth.transpose() * 1e-12,
            nalgebra::RowDVector::zeros(n),
        ];
        for r in &extra {
            let last = cands.nrows();
            cands = cands.insert_row(last, 0.0);
            cands.row_mut(last).copy_from(r);
        }
        let expected: Vec<bool> = (0..cands.nrows())
            .map(|j| basis.sine(&cands.row(j).transpose()) <= DEPENDENT_SINE)
            .collect();
        assert_eq!(
            expected,
            [vec![false; 6], vec![true, true, false, true, true]].concat()
        );
        assert_eq!(rows_in_span(&span, &cands), expected);
        // A span with a repeated row: the Gram matrix is singular and Gram–Schmidt decides.
        let mut repeated = span.clone().insert_row(3, 0.0);
        let copy = span.row(7).into_owned();
        repeated.row_mut(3).copy_from(&copy);
        assert_eq!(rows_in_span(&repeated, &cands), expected);
        // No span: only zero rows lie in it.
        let none = DMatrix::zeros(0, n);
        let only_zero: Vec<bool> = (0..cands.nrows()).map(|j| j == cands.nrows() - 1).collect();
        assert_eq!(rows_in_span(&none, &cands), only_zero);
    }
}
