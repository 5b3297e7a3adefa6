//! Dense Cholesky factors on faer's blocked kernels: `P = LLᵀ` ([`cholesky`]) and the
//! triangular solve `L⁻¹B` of many right-hand sides, cut by columns over the team
//! ([`solve_lower_columns`]). These are the `O(n³)` part of a dense QP layer (its
//! `DenseFactor`: `L`, `V = L⁻¹Cᵀ`, `G = VᵀV`); nalgebra's own kernels work a column at a time
//! (level-2 BLAS), 5-10 times slower at n = 1000.
//!
//! **Results do not depend on the thread count.** [`solve_lower_columns`] solves the columns in
//! fixed blocks of [`SOLVE_BLOCK`], one faer call per block, whichever thread runs it: the
//! pieces given to threads are whole blocks, so every column meets the same arithmetic.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::triangular_solve::solve_lower_triangular_in_place;
use faer::{MatMut, MatRef, Par};
use nalgebra::{Cholesky, DMatrix, Dyn};

use super::simd::clean_upper_state;
use super::threads::{ColsMut, Cut, Threads, HANDOFF_WORK};

/// Right-hand sides solved by one kernel call in [`solve_lower_columns`] (module docs).
const SOLVE_BLOCK: usize = 64;

/// `q = LLᵀ` from the lower triangle of `q` (faer's blocked left-looking kernel, one thread),
/// as nalgebra's [`Cholesky`]: the stored matrix holds `L` in its lower triangle; the entries
/// above it are faer's workspace (nalgebra's `l_dirty` makes no promise about them either, and
/// every solve reads the lower triangle alone). `None` when a pivot is not positive (or not a
/// number).
pub(crate) fn cholesky(q: &DMatrix<f64>) -> Option<Cholesky<f64, Dyn>> {
    let n = q.nrows();
    if q.ncols() != n {
        return None;
    }
    let mut l = q.clone();
    let scratch = cholesky_in_place_scratch::<f64>(n, Par::Seq, Default::default());
    let mut buffer = MemBuffer::new(scratch);
    let view = MatMut::from_column_major_slice_mut(l.as_mut_slice(), n, n);
    let stack = MemStack::new(&mut buffer);
    let factored = cholesky_in_place(
        view,
        Default::default(),
        Par::Seq,
        stack,
        Default::default(),
    );
    clean_upper_state();
    // faer stops at a pivot that is not positive; a NaN pivot passes its test.
    let finite = (0..n).all(|i| l[(i, i)] > 0.0);
    (factored.is_ok() && finite).then(|| Cholesky::pack_dirty(l))
}

/// `B ← L⁻¹B` for the lower triangle `L` of `l` (the entries above its diagonal are not
/// read), the columns of `B` cut over `threads` in whole blocks of [`SOLVE_BLOCK`] (module
/// docs): bit-identical for every thread count.
///
/// # Panics
/// If `l` is not square or `B` has another number of rows (callers check the shapes first: a
/// programming error).
pub(crate) fn solve_lower_columns(threads: &Threads, l: &DMatrix<f64>, b: &mut DMatrix<f64>) {
    let (n, cols) = b.shape();
    if n == 0 || cols == 0 {
        return;
    }
    assert!(
        l.nrows() == n && l.ncols() == n,
        "solve_lower_columns: L is {}x{}, B has {n} rows",
        l.nrows(),
        l.ncols()
    );
    let l = MatRef::from_column_major_slice(l.as_slice(), n, n);
    // Whole blocks per piece (the last piece takes the columns left over); n²/2 multiply-adds
    // per column.
    let blocks = cols / SOLVE_BLOCK;
    let work = (n * n / 2).saturating_mul(cols);
    let pieces = threads.count().min(blocks).min(work / HANDOFF_WORK).max(1);
    let cut = Cut::new(cols, SOLVE_BLOCK, pieces);
    threads.split(cut, ColsMut::of(b), &|range, piece: &mut [f64]| {
        // Blocks start at multiples of SOLVE_BLOCK: the cut's boundaries are.
        debug_assert!(range.start.is_multiple_of(SOLVE_BLOCK));
        for block in piece.chunks_mut(SOLVE_BLOCK * n) {
            let rhs = MatMut::from_column_major_slice_mut(block, n, block.len() / n);
            solve_lower_triangular_in_place(l, rhs, Par::Seq);
        }
        clean_upper_state();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, seed: usize) -> DMatrix<f64> {
        DMatrix::from_fn(rows, cols, |i, j| {
            let h = (i * 7919 + j * 104_729 + seed * 1_299_709) % 1_000_003;
            h as f64 / 1_000_003.0 - 0.37
        })
    }

    fn spd(n: usize, seed: usize) -> DMatrix<f64> {
        let m = matrix(n, n, seed);
        &m * m.transpose() / n as f64 + DMatrix::identity(n, n)
    }

    #[test]
    fn the_factor_is_nalgebras_to_rounding() {
        for (n, seed) in [(1, 0), (2, 1), (7, 2), (63, 3), (200, 4), (513, 5)] {
            let q = spd(n, seed);
            let ours = cholesky(&q).expect("positive definite");
            let theirs = q.clone().cholesky().expect("positive definite");
            let (l, m) = (ours.l(), theirs.l());
            assert!((&l - &m).amax() <= 1e-12 * m.amax(), "n = {n}");
            assert!((&l * l.transpose() - &q).amax() <= 1e-13 * n as f64 * q.amax());
            // nalgebra's solve, on the dirty factor, is q's inverse to rounding.
            let b = matrix(n, 3, seed + 20);
            assert!((&q * ours.solve(&b) - &b).amax() <= 1e-12 * (1.0 + b.amax()));
        }
    }

    #[test]
    fn matrices_that_are_not_positive_definite_have_no_factor() {
        let mut q = spd(40, 7);
        q[(17, 17)] = -1.0;
        assert!(cholesky(&q).is_none());
        assert!(cholesky(&DMatrix::zeros(3, 3)).is_none());
        let mut nan = spd(5, 8);
        nan[(4, 4)] = f64::NAN;
        assert!(cholesky(&nan).is_none());
        assert!(cholesky(&DMatrix::zeros(3, 2)).is_none());
        // The empty matrix has the empty factor.
        assert!(cholesky(&DMatrix::zeros(0, 0)).is_some());
    }

    #[test]
    fn the_solve_is_exact_to_rounding_and_bit_identical_for_every_thread_count() {
        let teams: Vec<Threads> = (1..=3).map(|t| Threads::new(t).unwrap()).collect();
        for (n, cols, seed) in [
            (1, 1, 0),
            (5, 0, 1),
            (30, 200, 2),
            (300, 63, 3),
            (300, 65, 4),
            (400, 300, 5),
            (129, 1000, 6),
        ] {
            let l = cholesky(&spd(n, seed)).unwrap().l();
            let b = matrix(n, cols, seed + 10);
            let mut one = b.clone();
            solve_lower_columns(&teams[0], &l, &mut one);
            assert!(
                (&l * &one - &b).amax() <= 1e-12 * (1.0 + b.amax()),
                "{n}x{cols}"
            );
            for t in &teams[1..] {
                let mut split = b.clone();
                solve_lower_columns(t, &l, &mut split);
                assert_eq!(one, split, "{n}x{cols} on {} threads", t.count());
            }
        }
    }
}
