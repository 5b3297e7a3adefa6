//! Dense matrix products `C ← op(A) op(B)` for the batched network passes, on the calling thread
//! ([`Gemm::gemm_into`]) or cut into blocks of whole rows or columns of `C` that the team
//! computes at the same time ([`Threads::gemm`]).
//!
//! **Results do not depend on the thread count.** Every entry of `C` is computed by one thread,
//! by the same faer kernel, summing over the inner dimension in the same order: faer's x86
//! kernels cut the inner dimension into blocks of at most 512 whatever the shape of `C`, and
//! the cut never makes a block that faer would send down another path (a single row or column,
//! which faer treats as a matrix-vector product, or fewer than 16³ multiply-adds, which it hands
//! to its small-matrix kernels). The tests check bit-identity over random shapes and the
//! trainer's checks it over whole training runs.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use nalgebra::DMatrix;

use super::simd::clean_upper_state;
use super::threads::{BlocksMut, ColsMut, Cut, Threads, HANDOFF_WORK};

/// Dense matrix products for the batched network passes, `C ← op(A) op(B)` with
/// `op(X) ∈ {X, Xᵀ}`.
///
/// Implemented with faer on zero-copy views of nalgebra's column-major storage: transposes are
/// views, nothing is copied or allocated. Chosen by measurement on the paper's MLP
/// (784-256-128-64-10, f32, batch 50, forward + backward products of one batch, 2-core
/// machine): faer 0.24 0.41 ms, nalgebra `gemm` on pre-transposed copies (matrixmultiply)
/// 0.50 ms, faer 0.21 (clarabel's) 0.74 ms. faer's own threading (rayon) loses at this batch
/// size; [`Threads::gemm`] splits a product over the team instead.
pub trait Gemm: nalgebra::RealField + Copy + faer::traits::ComplexField {
    /// `c ← op(a) op(b)` on the calling thread, where `op(x) = xᵀ` if the flag is set.
    ///
    /// # Panics
    /// If the shapes do not agree (callers check them first: this is a programming error).
    fn gemm_into(c: &mut DMatrix<Self>, a: &DMatrix<Self>, ta: bool, b: &DMatrix<Self>, tb: bool) {
        let (a, b) = operands(c, a, ta, b, tb);
        let (rows, cols) = c.shape();
        let dst = MatMut::from_column_major_slice_mut(c.as_mut_slice(), rows, cols);
        block(dst, a, b);
    }
}

impl Gemm for f32 {}
impl Gemm for f64 {}

/// `op(a)`, `op(b)` as views, after checking that they multiply into `c`.
fn operands<'a, T: Gemm>(
    c: &DMatrix<T>,
    a: &'a DMatrix<T>,
    ta: bool,
    b: &'a DMatrix<T>,
    tb: bool,
) -> (MatRef<'a, T>, MatRef<'a, T>) {
    fn view<T: Gemm>(m: &DMatrix<T>, t: bool) -> MatRef<'_, T> {
        let v = MatRef::from_column_major_slice(m.as_slice(), m.nrows(), m.ncols());
        if t {
            v.transpose()
        } else {
            v
        }
    }
    let (a, b) = (view(a, ta), view(b, tb));
    assert!(
        a.nrows() == c.nrows() && b.ncols() == c.ncols() && a.ncols() == b.nrows(),
        "gemm: op(A) {}x{} times op(B) {}x{} into C {}x{}",
        a.nrows(),
        a.ncols(),
        b.nrows(),
        b.ncols(),
        c.nrows(),
        c.ncols()
    );
    (a, b)
}

/// `dst ← a b` on this thread (then the vector registers' upper halves marked clean).
fn block<T: Gemm>(dst: MatMut<'_, T>, a: MatRef<'_, T>, b: MatRef<'_, T>) {
    matmul(dst, Accum::Replace, a, b, T::one(), Par::Seq);
    clean_upper_state();
}

/// faer's small-matrix threshold (`m·n·k ≤ 16³` goes to its nano kernels): no piece may fall
/// below it, or that piece would be summed by other code than the whole product.
const NANO_MNK: usize = 16 * 16 * 16;

/// How a product is cut: along whole rows of `C` (`by_rows`) or whole columns, in `cut`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    by_rows: bool,
    cut: Cut,
}

impl Plan {
    /// The cut of an `m × n` output with inner dimension `k` for `threads` threads: along the
    /// longer side of `C` (columns on ties), rows in multiples of 16 (a SIMD register of f32),
    /// columns in multiples of 4 (faer's micro-kernel width); as many pieces as threads, fewer
    /// if a piece would be smaller than a hand-off's worth ([`HANDOFF_WORK`]), never one faer
    /// would treat differently from the whole (one row or column, or below [`NANO_MNK`]).
    ///
    /// The side was chosen by measurement (the products of one epoch of the paper's MLP at
    /// batch 50 on two threads, the benchmark of `Threads::gemm`): cut along the longer side
    /// 0.255 s, always along columns 0.279 s, always along rows 0.265 s, along the shorter side
    /// 0.383 s; one thread 0.496 s.
    fn new(m: usize, n: usize, k: usize, threads: usize) -> Plan {
        let by_rows = n < m;
        let (len, other, align) = if by_rows { (m, n, 16) } else { (n, m, 4) };
        let whole = Plan {
            by_rows,
            cut: Cut::whole(len),
        };
        let mnk = m.saturating_mul(n).saturating_mul(k);
        if threads < 2 || other < 2 || k == 0 {
            return whole;
        }
        let mut pieces = threads.min(len / align).min(mnk / HANDOFF_WORK);
        while pieces > 1 {
            let cut = Cut::new(len, align, pieces);
            let smallest = (0..pieces).map(|i| cut.range(i).len()).min();
            if smallest.is_some_and(|s| s * other * k > NANO_MNK) {
                return Plan { by_rows, cut };
            }
            pieces -= 1;
        }
        whole
    }
}

impl Threads {
    /// `c ← op(a) op(b)` (as [`Gemm::gemm_into`]), cut into blocks of whole rows or columns of
    /// `c` that the threads compute at the same time; bit-identical to [`Gemm::gemm_into`].
    /// Products too small to gain from a hand-off run whole on the calling thread.
    ///
    /// # Panics
    /// If the shapes do not agree (as [`Gemm::gemm_into`]).
    pub fn gemm<T: Gemm>(
        &self,
        c: &mut DMatrix<T>,
        a: &DMatrix<T>,
        ta: bool,
        b: &DMatrix<T>,
        tb: bool,
    ) {
        let (a, b) = operands(c, a, ta, b, tb);
        let plan = Plan::new(c.nrows(), c.ncols(), a.ncols(), self.count());
        let by_rows = plan.by_rows;
        self.split(plan.cut, BlocksMut::of(c, by_rows), &|r, dst| {
            let (a, b) = if by_rows {
                (a.subrows(r.start, r.len()), b)
            } else {
                (a, b.subcols(r.start, r.len()))
            };
            block(dst, a, b);
        });
    }
}

/// Columns of `G` per block in [`Threads::gram`]: a piece of the team's work is whole blocks,
/// each one faer call, so every entry is computed the same way for any thread count.
const GRAM_BLOCK: usize = 64;

impl Threads {
    /// The Gram matrix `G = VᵀV`, symmetric bit for bit, in half the multiply-adds of
    /// [`Threads::gemm`]: each block of 64 columns `J = j₀..j₁` computes its entries on and
    /// below the diagonal, `G[j₀.., J] = V[:, j₀..]ᵀ V[:, J]`, one block per piece (the team's
    /// threads claim them as they come free: later blocks hold less work), then the upper
    /// triangle is copied from the lower. Bit-identical for every thread count.
    pub(crate) fn gram<T: Gemm>(&self, v: &DMatrix<T>) -> DMatrix<T> {
        let (n, m) = v.shape();
        let mut g = DMatrix::zeros(m, m);
        if m == 0 {
            return g;
        }
        let work = (m * m / 2).saturating_mul(n);
        let cut = if work < 2 * HANDOFF_WORK {
            Cut::whole(m)
        } else {
            // One block per piece, the last one with the columns left over.
            Cut::new(m, GRAM_BLOCK, (m / GRAM_BLOCK).max(1))
        };
        let v = MatRef::from_column_major_slice(v.as_slice(), n, m);
        self.split(cut, ColsMut::of(&mut g), &|range, piece: &mut [T]| {
            for (k, cols) in piece.chunks_mut(GRAM_BLOCK * m).enumerate() {
                let (j0, w) = (range.start + k * GRAM_BLOCK, cols.len() / m);
                let dst =
                    MatMut::from_column_major_slice_with_stride_mut(&mut cols[j0..], m - j0, w, m);
                block(dst, v.subcols(j0, m - j0).transpose(), v.subcols(j0, w));
            }
        });
        mirror_lower(&mut g);
        g
    }
}

/// Copies the strict lower triangle of the square `g` onto its upper one ([`super::tiled`]).
fn mirror_lower<T: nalgebra::Scalar + Copy>(g: &mut DMatrix<T>) {
    let m = g.nrows();
    let _ = super::tiled((m, m), |i, j| {
        if i < j {
            g[(i, j)] = g[(j, i)];
        }
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix<T: Gemm>(rows: usize, cols: usize, seed: usize) -> DMatrix<T> {
        // Values with many significant bits, so that a different order of additions shows.
        DMatrix::from_fn(rows, cols, |i, j| {
            let h = (i * 7919 + j * 104_729 + seed * 1_299_709) % 1_000_003;
            nalgebra::convert(h as f64 / 1_000_003.0 - 0.37)
        })
    }

    fn check_bit_identical<T: Gemm>(threads: &[Threads]) {
        let shapes = [
            (256, 50, 784),
            (256, 784, 50),
            (784, 50, 256),
            (10, 50, 64),
            (64, 128, 50),
            (1000, 3, 700),
            (3, 1000, 700),
            (97, 131, 1031),
            (33, 2, 900),
            (600, 600, 5),
            (17, 19, 1),
            (5, 5, 5),
        ];
        for (s, &(m, n, k)) in shapes.iter().enumerate() {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a: DMatrix<T> = if ta { matrix(k, m, s) } else { matrix(m, k, s) };
                let b: DMatrix<T> = if tb {
                    matrix(n, k, s + 1)
                } else {
                    matrix(k, n, s + 1)
                };
                let mut whole = DMatrix::zeros(m, n);
                T::gemm_into(&mut whole, &a, ta, &b, tb);
                for t in threads {
                    let mut split = DMatrix::from_element(m, n, T::one());
                    t.gemm(&mut split, &a, ta, &b, tb);
                    assert!(
                        whole.iter().zip(split.iter()).all(|(x, y)| x == y),
                        "{m}x{n}x{k} ta={ta} tb={tb} on {} threads differs",
                        t.count()
                    );
                }
            }
        }
    }

    #[test]
    fn gram_matrices_are_symmetric_exact_to_rounding_and_bit_identical_on_every_team() {
        let threads: Vec<Threads> = (1..=3).map(|n| Threads::new(n).unwrap()).collect();
        for (s, &(n, m)) in [
            (0, 5),
            (7, 0),
            (1, 1),
            (40, 63),
            (300, 64),
            (250, 65),
            (90, 300),
        ]
        .iter()
        .enumerate()
        {
            let v: DMatrix<f64> = matrix(n, m, s);
            let one = threads[0].gram(&v);
            assert_eq!(one, one.transpose(), "{n}x{m}");
            let full = v.tr_mul(&v);
            assert!(
                (&one - &full).amax() <= 1e-13 * (1.0 + full.amax()),
                "{n}x{m}"
            );
            for t in &threads[1..] {
                assert_eq!(t.gram(&v), one, "{n}x{m} on {} threads", t.count());
            }
        }
    }

    #[test]
    fn split_products_are_bit_identical_to_whole_ones() {
        let threads: Vec<Threads> = (1..=5).map(|n| Threads::new(n).unwrap()).collect();
        check_bit_identical::<f32>(&threads);
        check_bit_identical::<f64>(&threads);
    }

    #[test]
    fn plans_cut_the_output_into_pieces_that_faer_treats_like_the_whole() {
        for &(m, n, k) in &[(256, 50, 784), (256, 784, 50), (10, 64, 50), (40, 40, 40)] {
            for threads in 1..=8 {
                let plan = Plan::new(m, n, k, threads);
                let pieces = plan.cut.pieces();
                assert!(pieces >= 1 && pieces <= threads);
                let (other, align) = if plan.by_rows { (n, 16) } else { (m, 4) };
                for i in 0..pieces {
                    let r = plan.cut.range(i);
                    assert!(pieces == 1 || r.len() * other * k > NANO_MNK);
                    assert!(pieces == 1 || r.len() >= 2);
                    assert_eq!(r.start % align, 0);
                }
            }
        }
        // The paper's MLP at batch 50 on two threads: the big products split, 64→10 does not.
        assert_eq!(Plan::new(256, 50, 784, 2).cut.pieces(), 2);
        assert_eq!(Plan::new(256, 784, 50, 2).cut.pieces(), 2);
        assert_eq!(Plan::new(10, 64, 50, 2).cut.pieces(), 1);
        assert_eq!(Plan::new(10, 50, 64, 2).cut.pieces(), 1);
    }

    #[test]
    fn concurrent_users_of_one_team_get_the_same_results() {
        let threads = Threads::new(2).unwrap();
        let a: DMatrix<f64> = matrix(200, 300, 1);
        let b: DMatrix<f64> = matrix(300, 60, 2);
        let mut expected = DMatrix::zeros(200, 60);
        f64::gemm_into(&mut expected, &a, false, &b, false);
        std::thread::scope(|s| {
            for _ in 0..3 {
                let (t, a, b, expected) = (threads.clone(), &a, &b, &expected);
                s.spawn(move || {
                    let mut c = DMatrix::zeros(200, 60);
                    for _ in 0..200 {
                        t.gemm(&mut c, a, false, b, false);
                        assert_eq!(&c, expected);
                    }
                });
            }
        });
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let threads = Threads::new(2).unwrap();
        let a: DMatrix<f32> = matrix(128, 256, 3);
        let b: DMatrix<f32> = matrix(256, 64, 4);
        let (mut whole, mut split) = (DMatrix::zeros(128, 64), DMatrix::zeros(128, 64));
        f32::gemm_into(&mut whole, &a, false, &b, false);
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            split.fill(0.0);
            threads.gemm(&mut split, &a, false, &b, false);
            assert_eq!(split, whole);
        }
    }

    #[test]
    fn switched_off_teams_compute_on_the_caller_with_the_same_results() {
        let threads = Threads::new(2).unwrap();
        assert!(threads.is_parallel() && !Threads::default().is_parallel());
        let a: DMatrix<f32> = matrix(256, 784, 5);
        let b: DMatrix<f32> = matrix(784, 50, 6);
        let mut on = DMatrix::zeros(256, 50);
        threads.gemm(&mut on, &a, false, &b, false);
        threads.clone().set_parallel(false);
        assert!(!threads.is_parallel());
        let mut off = DMatrix::zeros(256, 50);
        threads.gemm(&mut off, &a, false, &b, false);
        assert_eq!(on, off);
        threads.set_parallel(true);
        let mut again = DMatrix::zeros(256, 50);
        threads.gemm(&mut again, &a, false, &b, false);
        assert_eq!(on, again);
    }

    #[test]
    #[should_panic(expected = "gemm: op(A)")]
    fn mismatched_shapes_panic_before_any_thread_runs() {
        let threads = Threads::new(2).unwrap();
        let mut c = DMatrix::<f32>::zeros(4, 4);
        threads.gemm(
            &mut c,
            &DMatrix::zeros(4, 3),
            false,
            &DMatrix::zeros(4, 4),
            false,
        );
    }
}
