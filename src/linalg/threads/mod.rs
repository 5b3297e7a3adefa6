//! The team of threads ([`Threads`]) and the safe cutting of buffers among its pieces: the
//! crate's one room for `unsafe` with [`super::simd`] — everything above is safe Rust.
//!
//! * `team`: the caller and persistent workers, the lock-free hand-off of a job's pieces, and
//!   the forced-interleaving tests of its invariants;
//! * `split`: [`Cut`] (the columns of a batch in contiguous pieces) and [`Threads::split`], which
//!   lends each piece `&mut` access to its own columns of every buffer ([`ColsMut`],
//!   [`LayersMut`], [`BlocksMut`] and tuples of them) — disjointness proved once, there.
//!
//! **One cost model** decides how finely work is cut: a hand-off to another thread costs about
//! a microsecond (publishing the job, a worker noticing it, waiting for its end), as much as
//! [`HANDOFF_WORK`] multiply-adds of a product (`2¹⁶`: 0.6-1.5 µs on one core at 50-100
//! GFLOP/s); a number of an element-wise pass costs [`NUMBER_WORK`] of them (a pass over 2,048
//! numbers, or Adam's update of 2,048 parameters, about a microsecond). A piece holds at least
//! one hand-off's worth of work.

mod split;
mod team;

pub(crate) use split::{BlocksMut, ColsMut, Cut, LayerCols, LayersMut};
pub use team::{Threads, MAX_THREADS};

/// Work worth one hand-off to another thread, in multiply-adds of a matrix product (module
/// docs): no piece of a cut holds less.
pub(crate) const HANDOFF_WORK: usize = 1 << 16;

/// Work worth starting a team for one call (`Threads::new` starts its workers: tens of
/// microseconds each), in multiply-adds: a dense layer's factorization is cut over threads
/// only above it ([`team_for`]).
pub(crate) const TEAM_WORK: usize = 1 << 22;

/// A team of up to `threads` threads for one call of `work` multiply-adds: the calling thread
/// alone when the work does not pay for starting one ([`TEAM_WORK`]) or the system refuses to
/// start one, and never more threads than the machine runs at once. Callers' answers do not
/// depend on it.
pub(crate) fn team_for(threads: usize, work: usize) -> Threads {
    if threads < 2 || work < TEAM_WORK {
        return Threads::default();
    }
    Threads::new(threads.min(Threads::available())).unwrap_or_default()
}

/// The work of one number of an element-wise pass, in multiply-adds (module docs).
pub(crate) const NUMBER_WORK: usize = 32;
