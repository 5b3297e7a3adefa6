//! How far the rows of a sparse matrix are from linear dependence, without forming anything
//! dense: the sparse path's counterpart of [`super::independence`], in the Euclidean metric of
//! the rows themselves (the metric of the multipliers: `Cᵀλ = ∇E(z*)` decides them).
//!
//! With the rows scaled to unit length, `U`, the smallest singular value `σ` of `U` bounds
//! every row's sine to the span of the others from below (`σ ≤ min_i sin φ_i ≤ √k σ` for `k`
//! rows). It is found by inverse iteration on the Gram matrix `UUᵀ + τI` (a sparse Cholesky
//! factorization; the shift `τ` keeps exactly dependent rows factorizable and lies far below
//! the squared sines that decide), and read off without squaring as `‖Uᵀy‖` for the converged
//! unit vector `y`: accurate to rounding, as Gram–Schmidt's sines are. Directions with
//! `‖Uᵀy‖` at the rounding of the unit rows (`64ε√r` for rows of at most `r` entries) are
//! exactly dependent rows (a duplicated row, a row that is the sum of others): they are set
//! aside (deflated) and the iteration continues on the rest, up to [`MAX_DEPENDENT`] of them.
//! (The dense path's Gram–Schmidt calls rows within `1e-10` of the span of the others
//! dependent; here such rows are measured, and the caller refuses them as not resolved.)

use faer::linalg::solvers::Solve;
use faer::sparse::linalg::solvers::{Llt, SymbolicLlt};
use faer::{Mat, Side};
use nalgebra::DVector;

use super::sparse::{csc_from_triplets, for_each_entry, memory, scale_rows, tr_mul, Csc};
use crate::error::Result;

/// The Gram matrix's shift, relative to its unit diagonal: above its rounding (`~kε` for rows
/// of a few entries), far below `1e-12`, the squared sine [`crate::problem`] calls resolved.
const GRAM_SHIFT: f64 = 1e-14;

/// At most this many exactly dependent directions are set aside; beyond them the answer is
/// `None` (not decided).
pub(crate) const MAX_DEPENDENT: usize = 16;

/// Inverse-iteration steps per direction (the small singular values this test looks for are
/// separated from the rest by many orders of magnitude: a few steps converge).
const STEPS: usize = 24;

/// The smallest singular value of the rows of `rows` scaled to unit length, over the
/// directions that are not exactly dependent (at rounding; module docs); 1 for fewer than two rows, `None`
/// when more than [`MAX_DEPENDENT`] directions are exactly dependent. Zero rows are left out.
///
/// # Errors
/// Allocation failures of the sparse factorization.
pub(crate) fn sparse_independence(rows: &Csc) -> Result<Option<f64>> {
    Ok(measured(rows)?.0)
}

/// Rows of `rows` to set aside, among those with `candidate(i)`, so that the rest holds no
/// exactly dependent direction (module docs) that involves a candidate: one row per such
/// direction, the last candidate that carries a fair share of it (so of an exact copy, the later
/// one). Directions among non-candidates alone stay. `None` when more than [`MAX_DEPENDENT`]
/// directions are exactly dependent (not decided).
///
/// # Errors
/// Allocation failures of the sparse factorization.
pub(crate) fn rows_to_set_aside(
    rows: &Csc,
    candidate: impl Fn(usize) -> bool,
) -> Result<Option<Vec<usize>>> {
    let (sigma, mut found) = measured(rows)?;
    if sigma.is_none() {
        return Ok(None);
    }
    let mut chosen: Vec<(usize, usize)> = Vec::new(); // (row, index into found)
    for t in 0..found.len() {
        // Eliminate the rows already chosen, so that each direction adds a new one.
        for &(row, s) in &chosen {
            let c = found[t][row] / found[s][row];
            let done = found[s].clone();
            found[t].axpy(-c, &done, 1.0);
        }
        let y = &found[t];
        let share = (0..y.len())
            .filter(|&i| candidate(i))
            .map(|i| y[i].abs())
            .fold(0.0, f64::max);
        if share <= 1e-8 * y.amax() {
            continue; // a dependence among non-candidates only
        }
        let row = (0..y.len())
            .rev()
            .find(|&i| candidate(i) && y[i].abs() >= 0.25 * share);
        if let Some(row) = row {
            chosen.push((row, t));
        }
    }
    let mut out: Vec<usize> = chosen.into_iter().map(|c| c.0).collect();
    out.sort_unstable();
    Ok(Some(out))
}

/// [`sparse_independence`]'s measure with the exactly dependent directions it set aside (unit
/// vectors over the rows).
fn measured(rows: &Csc) -> Result<(Option<f64>, Vec<DVector<f64>>)> {
    let k = rows.nrows();
    let mut norm2 = DVector::<f64>::zeros(k);
    for_each_entry(rows, |i, _, v| norm2[i] += v * v);
    let live: Vec<bool> = norm2.iter().map(|&s| s > 0.0).collect();
    if live.iter().filter(|&&l| l).count() < 2 {
        return Ok((Some(1.0), Vec::new()));
    }
    let unit = scale_rows(
        rows,
        &norm2.map(|s| if s > 0.0 { 1.0 / s.sqrt() } else { 0.0 }),
    );
    let mut entries = vec![0usize; k];
    for_each_entry(rows, |i, _, _| entries[i] += 1);
    let longest = entries.into_iter().max().unwrap_or(1) as f64;
    let rounding = 64.0 * f64::EPSILON * longest.sqrt();
    let llt = shifted_gram(&unit, &live)?;
    let solve = |y: &DVector<f64>| -> DVector<f64> {
        let x = llt.solve(Mat::from_fn(k, 1, |i, _| y[i]));
        DVector::from_fn(k, |i, _| if live[i] { x[(i, 0)] } else { 0.0 })
    };
    let mut dependent: Vec<DVector<f64>> = Vec::new();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    while dependent.len() <= MAX_DEPENDENT {
        let mut y = start(&live, &mut seed);
        let mut sigma = f64::INFINITY;
        for step in 0..STEPS {
            y = solve(&y);
            deflate(&mut y, &dependent);
            let norm = y.norm();
            if norm == 0.0 || !norm.is_finite() {
                return Ok((Some(0.0), dependent));
            }
            y /= norm;
            let next = tr_mul(&unit, &y).norm();
            let settled = step >= 1 && (next - sigma).abs() <= 1e-2 * next;
            sigma = next;
            if sigma <= rounding || settled {
                break;
            }
        }
        if sigma > rounding {
            return Ok((Some(sigma.min(1.0)), dependent));
        }
        dependent.push(y);
    }
    Ok((None, dependent))
}

/// The Cholesky factorization of `UUᵀ + τI` (a zero row's diagonal set to 1, decoupled).
fn shifted_gram(unit: &Csc, live: &[bool]) -> Result<Llt<usize, f64>> {
    let k = unit.nrows();
    let mut columns: Vec<Vec<(usize, f64)>> = vec![Vec::new(); unit.ncols()];
    for_each_entry(unit, |i, j, v| columns[j].push((i, v)));
    let mut triplets: Vec<(usize, usize, f64)> = (0..k)
        .map(|i| (i, i, if live[i] { GRAM_SHIFT } else { 1.0 }))
        .collect();
    for column in &columns {
        for &(i, u) in column {
            for &(l, v) in column {
                triplets.push((i, l, u * v));
            }
        }
    }
    let gram = csc_from_triplets(k, k, &triplets)?;
    let symbolic = SymbolicLlt::try_new(gram.symbolic(), Side::Lower).map_err(memory)?;
    Llt::try_new_with_symbolic(symbolic, gram.as_ref(), Side::Lower).map_err(memory)
}

/// A start vector with every live entry non-zero (a fixed pseudo-random sequence: the answer
/// does not depend on the run).
fn start(live: &[bool], seed: &mut u64) -> DVector<f64> {
    DVector::from_iterator(
        live.len(),
        live.iter().map(|&l| {
            *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let u = (*seed >> 11) as f64 / (1u64 << 53) as f64;
            if l {
                0.5 + u
            } else {
                0.0
            }
        }),
    )
}

/// `y` with its components along the (unit, mutually orthogonal up to rounding) `found`
/// directions removed, twice (modified Gram–Schmidt).
fn deflate(y: &mut DVector<f64>, found: &[DVector<f64>]) {
    for _ in 0..2 {
        for f in found {
            let c = f.dot(y);
            y.axpy(-c, f, 1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(entries: &[(usize, usize, f64)], k: usize, n: usize) -> Csc {
        csc_from_triplets(k, n, entries).unwrap()
    }

    #[test]
    fn orthogonal_rows_are_independent_and_a_near_pair_is_measured() {
        let eye = rows(&[(0, 0, 1.0), (1, 1, 2.0), (2, 2, -3.0)], 3, 3);
        let s = sparse_independence(&eye).unwrap().unwrap();
        assert!((s - 1.0).abs() < 1e-12, "{s}");
        // Two rows at an angle φ = 1e-8: σ = √(1 − cos φ) ≈ φ/√2, resolved without squaring.
        let phi: f64 = 1e-8;
        let pair = rows(
            &[
                (0, 0, 1.0),
                (1, 0, phi.cos()),
                (1, 1, phi.sin()),
                (2, 2, 1.0),
            ],
            3,
            3,
        );
        let s = sparse_independence(&pair).unwrap().unwrap();
        let expected = 2f64.sqrt() * (phi / 2.0).sin();
        assert!((s / expected - 1.0).abs() < 1e-3, "{s} vs {expected}");
    }

    #[test]
    fn duplicated_rows_are_set_aside_and_a_near_pair_behind_them_is_found() {
        // Row 1 duplicates row 0 (scaled); rows 2 and 3 are 1e-9 apart.
        let r = rows(
            &[
                (0, 0, 1.0),
                (0, 1, 1.0),
                (1, 0, 3.0),
                (1, 1, 3.0),
                (2, 2, 1.0),
                (3, 2, 1.0),
                (3, 3, 1e-9),
                (4, 4, 1.0),
            ],
            5,
            5,
        );
        let s = sparse_independence(&r).unwrap().unwrap();
        assert!(s > 1e-10 && s < 1e-8, "{s}");
        let only_duplicates = rows(&[(0, 0, 1.0), (1, 0, 2.0), (2, 1, 1.0)], 3, 2);
        let s = sparse_independence(&only_duplicates).unwrap().unwrap();
        assert!((s - 1.0).abs() < 1e-6, "{s}");
        let many: Vec<_> = (0..40).map(|i| (i, 0, 1.0 + i as f64)).collect();
        assert_eq!(sparse_independence(&rows(&many, 40, 1)).unwrap(), None);
        assert_eq!(
            rows_to_set_aside(&rows(&many, 40, 1), |_| true).unwrap(),
            None
        );
    }

    #[test]
    fn the_later_copy_of_each_dependence_is_set_aside_among_the_candidates() {
        // Rows 0 and 2 copy each other (scaled); row 4 = row 1 + row 3; row 5 stands alone.
        let r = rows(
            &[
                (0, 0, 1.0),
                (2, 0, -2.0),
                (1, 1, 1.0),
                (3, 2, 1.0),
                (4, 1, 1.0),
                (4, 2, 1.0),
                (5, 3, 1.0),
            ],
            6,
            4,
        );
        assert_eq!(rows_to_set_aside(&r, |_| true).unwrap(), Some(vec![2, 4]));
        // Without row 4 as a candidate, the sum's dependence drops row 3 instead.
        assert_eq!(rows_to_set_aside(&r, |i| i != 4).unwrap(), Some(vec![2, 3]));
        // A dependence among non-candidates only is left alone.
        assert_eq!(rows_to_set_aside(&r, |i| i == 5).unwrap(), Some(vec![]));
        let eye = rows(&[(0, 0, 1.0), (1, 1, 1.0)], 2, 2);
        assert_eq!(rows_to_set_aside(&eye, |_| true).unwrap(), Some(vec![]));
    }
}
