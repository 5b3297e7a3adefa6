//! [`Parts`]: a mutable slice whose disjoint ranges the pieces of one [`Threads::run`] write
//! at the same time ([`PartsList`]: one per layer), and [`Threads::columns`], which cuts a
//! batch's columns into such pieces.

use std::marker::PhantomData;
use std::ops::Range;

use super::Threads;

/// A mutable slice lent to the pieces of one [`Threads::run`], each of which takes its own
/// range with [`Parts::range`]. The borrow of the slice lasts as long as the `Parts`.
pub(crate) struct Parts<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

impl<T> Clone for Parts<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Parts<'_, T> {}

// SAFETY: a `Parts` hands out `&mut [T]` to several threads only through `range`, whose
// contract keeps the ranges in use disjoint: as sending disjoint `&mut [T]` to threads.
unsafe impl<T: Send> Send for Parts<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Parts<'_, T> {}

impl<'a, T> Parts<'a, T> {
    /// Lends `s`.
    pub(crate) fn new(s: &'a mut [T]) -> Self {
        Self {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _borrow: PhantomData,
        }
    }

    /// Nothing (a placeholder in fixed-size arrays of parts).
    pub(crate) fn empty() -> Self {
        Self::new(&mut [])
    }

    /// The range `r` of the slice.
    ///
    /// # Safety
    /// While the result lives, no other range of this slice that overlaps `r` is in use
    /// (taken from this `Parts` or a copy of it).
    ///
    /// # Panics
    /// If `r` is not inside the slice.
    pub(crate) unsafe fn range(&self, r: Range<usize>) -> &'a mut [T] {
        assert!(
            r.start <= r.end && r.end <= self.len,
            "Parts::range out of bounds"
        );
        // SAFETY: `r` lies inside the lent slice (checked above), which outlives `'a`; the
        // caller keeps the ranges in use disjoint.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.end - r.start) }
    }
}

/// Layers lent without allocating ([`PartsList`]); deeper lists allocate once per call.
const FEW: usize = 16;

/// [`Parts`] of each slice of a list (the matrices of a network's layers), held on the stack
/// for up to 16 slices.
// The array is the point: no allocation per sweep for networks of up to 16 layers.
#[allow(clippy::large_enum_variant)]
pub(crate) enum PartsList<'a, T> {
    /// Up to [`FEW`] slices: the first `len` of the array.
    Few([Parts<'a, T>; FEW], usize),
    /// More.
    Many(Vec<Parts<'a, T>>),
}

impl<'a, T> PartsList<'a, T> {
    /// Lends each slice of `slices`.
    pub(crate) fn new<I: ExactSizeIterator<Item = &'a mut [T]>>(mut slices: I) -> Self {
        let len = slices.len();
        if len <= FEW {
            let parts =
                std::array::from_fn(|_| slices.next().map_or_else(Parts::empty, Parts::new));
            Self::Few(parts, len)
        } else {
            Self::Many(slices.map(Parts::new).collect())
        }
    }
}

impl<'a, T> std::ops::Deref for PartsList<'a, T> {
    type Target = [Parts<'a, T>];

    fn deref(&self) -> &Self::Target {
        match self {
            Self::Few(parts, len) => &parts[..*len],
            Self::Many(parts) => parts,
        }
    }
}

/// Fewest elements per piece of [`Threads::columns`] worth a hand-off (about a microsecond,
/// against a few hundred picoseconds per element of an element-wise pass).
pub(crate) const MIN_COLUMN_PIECE: usize = 2048;

impl Threads {
    /// Runs `f(columns)` for pieces of whole columns `0..cols` of a batch whose columns hold
    /// `rows` numbers in all, each piece on whichever thread claims it ([`Threads::run`]); one
    /// piece (all columns, on the calling thread) when the pieces would hold fewer than
    /// [`MIN_COLUMN_PIECE`] numbers. The pieces are disjoint, so `f` may take its columns of
    /// shared buffers with [`Parts::range`]; the cut depends only on the sizes and the thread
    /// count, and per-column results must not depend on it.
    pub(crate) fn columns<F: Fn(Range<usize>) + Sync>(&self, cols: usize, rows: usize, f: &F) {
        let pieces = if self.is_parallel() {
            self.count().min(cols).min(cols * rows / MIN_COLUMN_PIECE)
        } else {
            1
        };
        if pieces < 2 {
            f(0..cols);
        } else {
            self.run(pieces, &|i| f(Threads::range(cols, 1, pieces, i)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_pieces_cover_the_batch_once() {
        let team = Threads::new(3).unwrap();
        for (cols, rows) in [(50, 256), (50, 10), (7, 4096), (1, 100_000), (0, 5)] {
            let mut seen = vec![0_u32; cols];
            let parts = Parts::new(&mut seen);
            team.columns(cols, rows, &|c| {
                // SAFETY: `columns` gives each piece its own columns.
                let mine = unsafe { parts.range(c) };
                mine.iter_mut().for_each(|s| *s += 1);
            });
            assert!(seen.iter().all(|&s| s == 1), "{cols} x {rows}");
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_range_beyond_the_slice_panics() {
        let mut v = [0_u8; 4];
        let parts = Parts::new(&mut v);
        // SAFETY: the only range taken.
        let _ = unsafe { parts.range(2..5) };
    }
}
