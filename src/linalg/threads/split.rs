//! Buffers cut at the same column boundaries, each piece of one job given `&mut` access to its
//! own columns of every buffer ([`Threads::split`]), the way faer's views split and rayon's
//! `par_chunks_mut` does: safe to use, with the disjointness proved once, here.
//!
//! A [`Cut`] divides the columns `0..cols` of a batch (samples are columns) into contiguous
//! ranges. [`Threads::split`] runs one piece per range, on whichever thread claims it, and lends
//! each piece the same range of columns of every buffer it was given ([`Split`]): of a
//! column-major matrix ([`ColsMut`]), of each layer of a network ([`LayersMut`]), of a product's
//! output as a faer view ([`BlocksMut`]), or of several of them at once (tuples, `Option`).

use std::marker::PhantomData;
use std::ops::Range;

use faer::MatMut;

use super::{Threads, HANDOFF_WORK};

/// A cut of the columns `0..cols` into `pieces` contiguous ranges whose boundaries are
/// multiples of `align` ([`Cut::range`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    cols: usize,
    align: usize,
    pieces: usize,
}

impl Cut {
    /// One piece: all columns.
    pub(crate) fn whole(cols: usize) -> Self {
        Self {
            cols,
            align: 1,
            pieces: 1,
        }
    }

    /// `pieces` ranges of `0..cols` at multiples of `align`.
    ///
    /// # Panics
    /// If `align` or `pieces` is 0.
    pub(crate) fn new(cols: usize, align: usize, pieces: usize) -> Self {
        assert!(
            align > 0 && pieces > 0,
            "Cut: align and pieces must be positive"
        );
        Self {
            cols,
            align,
            pieces,
        }
    }

    /// The cut of an element-wise pass over `cols` columns of `work` units each (multiply-add
    /// equivalents, [`super::NUMBER_WORK`] per number): as many pieces as `threads` has, fewer
    /// so that each holds at least [`HANDOFF_WORK`]; one when the team is off.
    pub(crate) fn for_work(threads: &Threads, cols: usize, align: usize, work: usize) -> Self {
        if !threads.is_parallel() {
            return Self::whole(cols);
        }
        let total = cols.saturating_mul(work);
        let pieces = threads
            .count()
            .min(cols / align)
            .min(total / HANDOFF_WORK)
            .max(1);
        Self::new(cols, align, pieces)
    }

    /// The number of pieces.
    #[cfg(test)]
    pub(crate) fn pieces(&self) -> usize {
        self.pieces
    }

    /// The columns of piece `i`: `align·⌊i·u/pieces⌋ .. align·⌊(i+1)·u/pieces⌋` with
    /// `u = ⌊cols/align⌋` units, the last piece ending at `cols`. Every piece but the last is a
    /// multiple of `align` long; pieces may be empty when `cols` is short. Together they are
    /// `0..cols`, each column in exactly one.
    ///
    /// # Panics
    /// If `i ≥ pieces`.
    pub(crate) fn range(&self, i: usize) -> Range<usize> {
        assert!(i < self.pieces, "Cut::range: piece {i} of {}", self.pieces);
        let units = self.cols / self.align;
        let edge = |j: usize| {
            if j == self.pieces {
                self.cols
            } else {
                self.align * (j * units / self.pieces)
            }
        };
        edge(i)..edge(i + 1)
    }
}

/// Buffers that [`Threads::split`] lends by columns (implemented in this module only).
pub(crate) trait Split: Sync {
    /// What one piece gets of the buffers, for `'p`. It holds no lifetime of the buffers'
    /// (nor of `self`): with one, `for<'p>` bounds on the pieces would demand `'static`
    /// buffers. [`Threads::split`] keeps `'p` within the lend.
    type Piece<'p>;

    /// Whether the buffers have `cols` columns.
    fn fits(&self, cols: usize) -> bool;

    /// The columns `cols` of the buffers.
    ///
    /// # Safety
    /// `self` stays alive and in place, and the buffers lent, for `'p`; and while the piece
    /// lives no other piece of overlapping columns of the same buffers does.
    unsafe fn piece<'p>(&self, cols: Range<usize>) -> Self::Piece<'p>;
}

impl Threads {
    /// Runs `f(columns, piece)` for each range of `cut`, each on whichever thread of the team
    /// claims it ([`Threads::run`]), `piece` being those columns of every buffer of `parts`.
    /// One call on the calling thread, with all columns, when the cut has one piece or the team
    /// is off. Per-column results must not depend on the cut: then they do not depend on the
    /// thread count either.
    ///
    /// # Panics
    /// If a buffer of `parts` does not have the cut's columns (a programming error); a panic of
    /// `f` is raised here after every piece has finished.
    pub(crate) fn split<S, F>(&self, cut: Cut, parts: S, f: &F)
    where
        S: Split,
        F: for<'p> Fn(Range<usize>, S::Piece<'p>) + Sync,
    {
        assert!(
            parts.fits(cut.cols),
            "Threads::split: a buffer does not have the cut's {} columns",
            cut.cols
        );
        if cut.pieces < 2 || !self.is_parallel() {
            // SAFETY: the only piece, of all columns (checked above).
            f(0..cut.cols, unsafe { parts.piece(0..cut.cols) });
            return;
        }
        // SAFETY: `run` calls each `i` once, the ranges of one cut are disjoint and lie within
        // `0..cut.cols` (`Cut::range`), which the buffers have (checked above); `run` returns
        // only when every piece has finished, so no piece outlives the borrow of `parts`.
        self.run(cut.pieces, &|i| {
            let r = cut.range(i);
            f(r.clone(), unsafe { parts.piece(r) })
        });
    }
}

impl Threads {
    /// [`Threads::split`] for an element-wise pass over the columns `0..cols` that touches
    /// `rows` numbers per column in all: as many pieces as threads, fewer so that each holds a
    /// hand-off's worth of work ([`Cut::for_work`]).
    pub(crate) fn columns<S, F>(&self, cols: usize, rows: usize, parts: S, f: &F)
    where
        S: Split,
        F: for<'p> Fn(Range<usize>, S::Piece<'p>) + Sync,
    {
        let cut = Cut::for_work(self, cols, 1, rows.saturating_mul(super::NUMBER_WORK));
        self.split(cut, parts, f);
    }
}

/// A column-major buffer of `rows` numbers per column, lent by columns: a piece is the
/// `&mut [T]` of its columns.
pub(crate) struct ColsMut<'a, T> {
    ptr: *mut T,
    len: usize,
    rows: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: a `ColsMut` hands out `&mut [T]` to several threads only through `Split::piece`,
// whose contract keeps the pieces in use disjoint: as sending disjoint `&mut [T]` to threads.
unsafe impl<T: Send> Send for ColsMut<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for ColsMut<'_, T> {}

impl<'a, T> ColsMut<'a, T> {
    /// Lends `s`, whose columns hold `rows` numbers each.
    pub(crate) fn new(s: &'a mut [T], rows: usize) -> Self {
        Self {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            rows,
            _borrow: PhantomData,
        }
    }

    /// Lends a matrix's storage by its columns.
    pub(crate) fn of(m: &'a mut nalgebra::DMatrix<T>) -> Self
    where
        T: nalgebra::Scalar,
    {
        let rows = m.nrows();
        Self::new(m.as_mut_slice(), rows)
    }

    fn columns(&self) -> Option<usize> {
        match self.rows {
            0 => (self.len == 0).then_some(usize::MAX),
            r => self.len.is_multiple_of(r).then_some(self.len / r),
        }
    }
}

impl<T: Send + 'static> Split for ColsMut<'_, T> {
    type Piece<'p> = &'p mut [T];

    fn fits(&self, cols: usize) -> bool {
        self.columns().is_some_and(|c| c == cols || c == usize::MAX)
    }

    unsafe fn piece<'p>(&self, cols: Range<usize>) -> &'p mut [T] {
        let (start, end) = (cols.start * self.rows, cols.end * self.rows);
        assert!(
            start <= end && end <= self.len,
            "ColsMut: columns out of range"
        );
        // SAFETY: `start..end` lies inside the lent slice (checked above), which outlives the
        // borrow; the caller keeps the pieces in use disjoint.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), end - start) }
    }
}

/// Layers lent without allocating ([`LayersMut`]); deeper networks allocate a list per call.
const FEW: usize = 16;

/// A lent column-major buffer without the lifetime of its borrow (which its holder keeps).
struct Raw<T> {
    ptr: *mut T,
    len: usize,
    rows: usize,
}

impl<T> Raw<T> {
    /// The columns `cols`.
    ///
    /// # Safety
    /// The buffer is alive and lent for `'p`, and no other live slice overlaps these columns.
    unsafe fn cols<'p>(&self, cols: Range<usize>) -> &'p mut [T] {
        let (start, end) = (cols.start * self.rows, cols.end * self.rows);
        assert!(
            start <= end && end <= self.len,
            "LayersMut: columns out of range"
        );
        // SAFETY: inside the buffer (checked above); the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), end - start) }
    }
}

/// One buffer per layer of a network (each with its own rows per column, the same columns),
/// lent by columns: a piece holds those columns of every layer ([`LayerCols::layer`]).
pub(crate) struct LayersMut<'a, T> {
    raw: Layers<T>,
    _borrow: PhantomData<&'a mut [T]>,
}

/// The layers' buffers: on the stack up to [`FEW`] (the array is the point: no allocation per
/// pass for networks of up to 16 layers).
#[allow(clippy::large_enum_variant)]
enum Layers<T> {
    Few([Option<Raw<T>>; FEW], usize),
    Many(Vec<Raw<T>>),
}

impl<T> Layers<T> {
    fn len(&self) -> usize {
        match self {
            Self::Few(_, len) => *len,
            Self::Many(v) => v.len(),
        }
    }

    fn get(&self, k: usize) -> &Raw<T> {
        assert!(k < self.len(), "LayersMut: layer {k} of {}", self.len());
        match self {
            Self::Few(few, _) => few[k].as_ref().expect("a lent layer"),
            Self::Many(v) => &v[k],
        }
    }
}

// SAFETY: as for `ColsMut`: pieces are disjoint column ranges of each layer.
unsafe impl<T: Send> Send for LayersMut<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for LayersMut<'_, T> {}

impl<'a, T: nalgebra::Scalar> LayersMut<'a, T> {
    /// Lends every matrix of `layers` by its columns.
    pub(crate) fn of(layers: &'a mut [nalgebra::DMatrix<T>]) -> Self {
        let raw = |m: &mut nalgebra::DMatrix<T>| Raw {
            rows: m.nrows(),
            len: m.len(),
            ptr: m.as_mut_slice().as_mut_ptr(),
        };
        let len = layers.len();
        let raw = if len <= FEW {
            let mut it = layers.iter_mut();
            Layers::Few(std::array::from_fn(|_| it.next().map(raw)), len)
        } else {
            Layers::Many(layers.iter_mut().map(raw).collect())
        };
        Self {
            raw,
            _borrow: PhantomData,
        }
    }
}

impl<T: Send + 'static> Split for LayersMut<'_, T> {
    type Piece<'p> = LayerCols<'p, T>;

    fn fits(&self, cols: usize) -> bool {
        (0..self.raw.len()).all(|k| {
            let r = self.raw.get(k);
            if r.rows == 0 {
                r.len == 0
            } else {
                r.len == cols * r.rows
            }
        })
    }

    unsafe fn piece<'p>(&self, cols: Range<usize>) -> LayerCols<'p, T> {
        LayerCols {
            layers: &self.raw,
            cols,
            _piece: PhantomData,
        }
    }
}

/// A piece's columns of every layer of a [`LayersMut`].
pub(crate) struct LayerCols<'p, T> {
    /// The lent layers, alive and in place for `'p` (`Split::piece`'s contract).
    layers: *const Layers<T>,
    cols: Range<usize>,
    _piece: PhantomData<&'p mut [T]>,
}

impl<T> LayerCols<'_, T> {
    /// The piece's columns of layer `k` (one layer at a time: the borrow of `self` says so).
    pub(crate) fn layer(&mut self, k: usize) -> &mut [T] {
        // SAFETY: the layers are alive, in place and lent while the piece lives
        // (`Split::piece`'s contract), the piece's columns are its own, and `&mut self` keeps
        // one layer's slice in use at a time.
        unsafe { (*self.layers).get(k).cols(self.cols.clone()) }
    }
}

/// The output of a matrix product, lent as blocks of whole rows or of whole columns: a piece is
/// a faer view of its block (rows or columns `r` of the matrix, for a cut of its rows or
/// columns).
pub(crate) struct BlocksMut<'a, T> {
    ptr: *mut T,
    rows: usize,
    cols: usize,
    by_rows: bool,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: as for `ColsMut`: pieces are disjoint blocks.
unsafe impl<T: Send> Send for BlocksMut<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for BlocksMut<'_, T> {}

impl<'a, T: nalgebra::Scalar> BlocksMut<'a, T> {
    /// Lends `m` by blocks of rows (`by_rows`) or of columns.
    pub(crate) fn of(m: &'a mut nalgebra::DMatrix<T>, by_rows: bool) -> Self {
        Self {
            rows: m.nrows(),
            cols: m.ncols(),
            ptr: m.as_mut_slice().as_mut_ptr(),
            by_rows,
            _borrow: PhantomData,
        }
    }
}

impl<T: Send + 'static> Split for BlocksMut<'_, T> {
    type Piece<'p> = MatMut<'p, T>;

    fn fits(&self, cols: usize) -> bool {
        cols == if self.by_rows { self.rows } else { self.cols }
    }

    unsafe fn piece<'p>(&self, r: Range<usize>) -> MatMut<'p, T> {
        let (rows, cols) = if self.by_rows {
            (r, 0..self.cols)
        } else {
            (0..self.rows, r)
        };
        assert!(
            rows.start <= rows.end && rows.end <= self.rows && cols.end <= self.cols,
            "BlocksMut: block out of range"
        );
        // SAFETY: the block lies inside the lent column-major matrix (checked above; leading
        // dimension `self.rows`); the caller keeps the blocks in use disjoint.
        unsafe {
            MatMut::from_raw_parts_mut(
                self.ptr.add(rows.start + cols.start * self.rows),
                rows.len(),
                cols.len(),
                1,
                self.rows as isize,
            )
        }
    }
}

impl<S: Split> Split for Option<S> {
    type Piece<'p> = Option<S::Piece<'p>>;

    fn fits(&self, cols: usize) -> bool {
        self.as_ref().is_none_or(|s| s.fits(cols))
    }

    unsafe fn piece<'p>(&self, cols: Range<usize>) -> Self::Piece<'p> {
        // SAFETY: the caller's contract.
        self.as_ref().map(|s| unsafe { s.piece(cols) })
    }
}

macro_rules! split_tuple {
    ($($s:ident . $i:tt),+) => {
        impl<$($s: Split),+> Split for ($($s,)+) {
            type Piece<'p> = ($($s::Piece<'p>,)+);

            fn fits(&self, cols: usize) -> bool {
                $(self.$i.fits(cols))&&+
            }

            unsafe fn piece<'p>(&self, cols: Range<usize>) -> Self::Piece<'p> {
                // SAFETY: the caller's contract, for every buffer (each a different one).
                unsafe { ($(self.$i.piece(cols.clone()),)+) }
            }
        }
    };
}

split_tuple!(A.0, B.1);
split_tuple!(A.0, B.1, C.2);
split_tuple!(A.0, B.1, C.2, D.3);
split_tuple!(A.0, B.1, C.2, D.3, E.4);

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::DMatrix;

    #[test]
    fn cuts_cover_the_columns_once_at_their_alignment() {
        for (cols, align) in [(50, 1), (50, 4), (7, 4), (0, 1), (1000, 16), (3, 8)] {
            for pieces in 1..=6 {
                let cut = Cut::new(cols, align, pieces);
                let mut next = 0;
                for i in 0..pieces {
                    let r = cut.range(i);
                    assert_eq!(r.start, next, "{cols} {align} {pieces}");
                    assert!(i + 1 == pieces || r.len().is_multiple_of(align));
                    next = r.end;
                }
                assert_eq!(next, cols);
            }
        }
    }

    #[test]
    fn every_column_of_every_buffer_goes_to_one_piece() {
        let team = Threads::new(3).unwrap();
        let (cols, rows) = (37, 5);
        let mut a = DMatrix::<u32>::zeros(rows, cols);
        let mut layers = vec![
            DMatrix::<u32>::zeros(3, cols),
            DMatrix::<u32>::zeros(8, cols),
        ];
        let mut per_col = vec![0_u32; cols];
        let cut = Cut::new(cols, 4, 3);
        let parts = (
            ColsMut::of(&mut a),
            LayersMut::of(&mut layers),
            ColsMut::new(&mut per_col, 1),
        );
        team.split(cut, parts, &|c, (a, mut layers, per_col)| {
            assert_eq!(a.len(), c.len() * rows);
            a.iter_mut().for_each(|v| *v += 1);
            for k in 0..2 {
                layers.layer(k).iter_mut().for_each(|v| *v += 1);
            }
            for (j, v) in c.zip(per_col.iter_mut()) {
                *v += j as u32 + 1;
            }
        });
        assert!(a.iter().all(|&v| v == 1));
        assert!(layers.iter().all(|m| m.iter().all(|&v| v == 1)));
        assert!(per_col.iter().enumerate().all(|(j, &v)| v == j as u32 + 1));
    }

    #[test]
    fn blocks_of_rows_and_of_columns_are_their_parts_of_the_matrix() {
        let team = Threads::new(2).unwrap();
        for by_rows in [true, false] {
            let mut m = DMatrix::<f64>::zeros(9, 7);
            let len = if by_rows { 9 } else { 7 };
            team.split(
                Cut::new(len, 2, 2),
                BlocksMut::of(&mut m, by_rows),
                &|r, mut b| {
                    for i in 0..b.nrows() {
                        for j in 0..b.ncols() {
                            let (gi, gj) = if by_rows {
                                (r.start + i, j)
                            } else {
                                (i, r.start + j)
                            };
                            b[(i, j)] = (10 * gi + gj) as f64;
                        }
                    }
                },
            );
            assert!(m.iter().enumerate().all(|(idx, &v)| {
                let (i, j) = (idx % 9, idx / 9);
                v == (10 * i + j) as f64
            }));
        }
    }

    #[test]
    #[should_panic(expected = "does not have the cut's")]
    fn a_buffer_of_other_columns_is_refused_before_any_piece_runs() {
        let mut v = [0_u8; 12];
        Threads::default().split(Cut::whole(5), ColsMut::new(&mut v, 4), &|_, _| {});
    }
}
