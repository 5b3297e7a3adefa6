//! Dense Cholesky factors on faer's blocked kernels: `P = LLᵀ` ([`cholesky_on`]) and the
//! triangular solve `L⁻¹B` of many right-hand sides ([`solve_lower_columns`]), both cut by
//! columns over the team. These are the `O(n³)` part of a dense QP layer (its
//! `DenseFactor`: `L`, `V = L⁻¹Cᵀ`, `G = VᵀV`); nalgebra's own kernels work a column at a time
//! (level-2 BLAS), 5-10 times slower at n = 1000.
//!
//! **Results do not depend on the thread count.** Both work in fixed blocks of [`SOLVE_BLOCK`]
//! columns, one faer call per block, whichever thread runs it: the pieces given to threads are
//! whole blocks, so every column meets the same arithmetic.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_solve::solve_lower_triangular_in_place;
use faer::{Accum, MatMut, MatRef, Par};
use nalgebra::{Cholesky, DMatrix, Dyn};

use super::simd::clean_upper_state;
use super::threads::{ColsMut, Cut, Threads, HANDOFF_WORK};

/// Right-hand sides solved by one kernel call in [`solve_lower_columns`] (module docs).
const SOLVE_BLOCK: usize = 64;

/// `q = LLᵀ` from the lower triangle of `q` on the calling thread ([`cholesky_on`] with one
/// thread, the same factor bit for bit).
pub(crate) fn cholesky(q: &DMatrix<f64>) -> Option<Cholesky<f64, Dyn>> {
    cholesky_on(&Threads::default(), q)
}

/// `q = LLᵀ` from the lower triangle of `q`, as nalgebra's [`Cholesky`]: the stored matrix
/// holds `L` in its lower triangle; the entries above it are workspace (nalgebra's `l_dirty`
/// makes no promise about them either, and every solve reads the lower triangle alone). `None`
/// when a pivot is not positive (or not a number).
///
/// Right-looking by panels of [`PANEL`] columns: each panel's diagonal block is factored by
/// faer's kernel and the rows below it solved, on the calling thread; then the lower triangle
/// to its right is updated, `A₂₂ ← A₂₂ − L₂₁L₂₁ᵀ`, in blocks of [`SOLVE_BLOCK`] columns, one
/// faer product each, which the team's threads claim as they come free (module docs: the same
/// factor for every thread count).
pub(crate) fn cholesky_on(threads: &Threads, q: &DMatrix<f64>) -> Option<Cholesky<f64, Dyn>> {
    let n = q.nrows();
    if q.ncols() != n {
        return None;
    }
    let mut l = q.clone();
    for k0 in (0..n).step_by(PANEL) {
        let b = PANEL.min(n - k0);
        if !factor_panel(l.as_mut_slice(), n, (k0, b)) {
            clean_upper_state();
            return None;
        }
        update_right_of_panel(threads, l.as_mut_slice(), n, (k0, b));
    }
    clean_upper_state();
    // faer stops at a pivot that is not positive; a NaN pivot passes its test.
    (0..n)
        .all(|i| l[(i, i)] > 0.0)
        .then(|| Cholesky::pack_dirty(l))
}

/// Columns per panel of [`cholesky_on`].
const PANEL: usize = 128;

/// Factors the panel of columns `k0..k0 + b` of the column-major `n × n` matrix `a` (rows
/// `k0..`): its diagonal block `L₁₁L₁₁ᵀ` and the rows below, `L₂₁ = A₂₁L₁₁⁻ᵀ`. `false` at a
/// pivot that is not positive.
fn factor_panel(a: &mut [f64], n: usize, (k0, b): (usize, usize)) -> bool {
    let panel =
        MatMut::from_column_major_slice_with_stride_mut(&mut a[k0 * n + k0..], n - k0, b, n);
    let (mut diag, below) = panel.split_at_row_mut(b);
    let scratch = cholesky_in_place_scratch::<f64>(b, Par::Seq, Default::default());
    let mut buffer = MemBuffer::new(scratch);
    let stack = MemStack::new(&mut buffer);
    let params = Default::default();
    if cholesky_in_place(diag.as_mut(), Default::default(), Par::Seq, stack, params).is_err() {
        return false;
    }
    solve_lower_triangular_in_place(diag.as_ref(), below.transpose_mut(), Par::Seq);
    true
}

/// `A₂₂ ← A₂₂ − L₂₁L₂₁ᵀ` on and below the diagonal of the columns right of the panel
/// `k0..k0 + b` ([`cholesky_on`]): blocks of [`SOLVE_BLOCK`] columns from the panel's end, each
/// one faer product, one block per piece of the team's work (later blocks hold less).
fn update_right_of_panel(threads: &Threads, a: &mut [f64], n: usize, (k0, b): (usize, usize)) {
    let start = k0 + b;
    let cols = n - start;
    if cols == 0 {
        return;
    }
    let (left, right) = a.split_at_mut(start * n);
    let panel = &left[k0 * n..];
    let cut = if (cols * cols / 2).saturating_mul(b) < 2 * HANDOFF_WORK {
        Cut::whole(cols)
    } else {
        Cut::new(cols, SOLVE_BLOCK, (cols / SOLVE_BLOCK).max(1))
    };
    threads.split(cut, ColsMut::new(right, n), &|range, piece: &mut [f64]| {
        for (k, block) in piece.chunks_mut(SOLVE_BLOCK * n).enumerate() {
            let (g0, w) = (start + range.start + k * SOLVE_BLOCK, block.len() / n);
            let dst =
                MatMut::from_column_major_slice_with_stride_mut(&mut block[g0..], n - g0, w, n);
            let l21 = MatRef::from_column_major_slice_with_stride(&panel[g0..], n - g0, b, n);
            matmul(
                dst,
                Accum::Add,
                l21,
                l21.subrows(0, w).transpose(),
                -1.0,
                Par::Seq,
            );
        }
        clean_upper_state();
    });
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
        for (n, seed) in [
            (1, 0),
            (2, 1),
            (7, 2),
            (63, 3),
            (200, 4),
            (513, 5),
            (700, 6),
        ] {
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
    fn the_factor_is_bit_identical_for_every_thread_count() {
        let teams: Vec<Threads> = (2..=3).map(|t| Threads::new(t).unwrap()).collect();
        for (n, seed) in [(129, 1), (300, 2), (450, 3)] {
            let q = spd(n, seed);
            let one = cholesky(&q).unwrap();
            for t in &teams {
                let split = cholesky_on(t, &q).unwrap();
                assert_eq!(split.l(), one.l(), "n = {n} on {} threads", t.count());
            }
            // A pivot that fails in a later panel fails on every team.
            let mut bad = q.clone();
            bad[(n - 5, n - 5)] = -1.0;
            assert!(cholesky(&bad).is_none());
            assert!(teams.iter().all(|t| cholesky_on(t, &bad).is_none()));
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
