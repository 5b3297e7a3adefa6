//! Dense matrix products `C ← op(A) op(B)` for the batched network passes, on the calling thread
//! ([`Gemm::gemm_into`]) or cut into blocks of whole rows or columns of `C` that a persistent
//! team of worker threads computes at the same time ([`Threads::gemm`]).
//!
//! **Results do not depend on the thread count.** Every entry of `C` is computed by one thread,
//! by the same faer kernel, summing over the inner dimension in the same order: faer's x86
//! kernels cut the inner dimension into blocks of at most 512 whatever the shape of `C`, and
//! the cut never makes a block that faer would send down another path (a single row or column,
//! which faer treats as a matrix-vector product, or fewer than 16³ multiply-adds, which it hands
//! to its small-matrix kernels). The tests check bit-identity over random shapes and the
//! trainer's checks it over whole training runs.

use std::fmt;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use nalgebra::DMatrix;

use crate::error::{Error, Result};

/// Dense matrix products for the batched network passes, `C ← op(A) op(B)` with
/// `op(X) ∈ {X, Xᵀ}`.
///
/// Implemented with faer on zero-copy views of nalgebra's column-major storage: transposes are
/// views, nothing is copied or allocated. Chosen by measurement on the paper's MLP
/// (784-256-128-64-10, f32, batch 50, forward + backward products of one batch, 2-core
/// machine): faer 0.24 0.41 ms, nalgebra `gemm` on pre-transposed copies (matrixmultiply)
/// 0.50 ms, faer 0.21 (clarabel's) 0.74 ms. faer's own threading (rayon) loses at this batch
/// size; [`Threads`] splits a product over a persistent team instead.
pub trait Gemm: nalgebra::RealField + Copy + faer::traits::ComplexField {
    /// `c ← op(a) op(b)` on the calling thread, where `op(x) = xᵀ` if the flag is set.
    ///
    /// # Panics
    /// If the shapes do not agree (callers check them first: this is a programming error).
    fn gemm_into(c: &mut DMatrix<Self>, a: &DMatrix<Self>, ta: bool, b: &DMatrix<Self>, tb: bool) {
        let (a, b) = operands(c, a, ta, b, tb);
        let out = Out::of(c);
        // SAFETY: `out` is `c`, borrowed mutably for the whole call.
        unsafe { piece(out, a, b, Plan::WHOLE, 0) };
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

/// The output matrix as raw parts (column-major, leading dimension `rows`), so that disjoint
/// blocks of it can be written from several threads.
struct Out<T> {
    ptr: *mut T,
    rows: usize,
    cols: usize,
}

impl<T> Clone for Out<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Out<T> {}

// SAFETY: `Out` is only dereferenced in `piece`, whose callers give each thread its own block.
unsafe impl<T: Send> Send for Out<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Out<T> {}

impl<T> Out<T> {
    fn of(c: &mut DMatrix<T>) -> Self {
        Self {
            rows: c.nrows(),
            cols: c.ncols(),
            ptr: c.as_mut_slice().as_mut_ptr(),
        }
    }
}

/// Which side of `C` a product is cut along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Axis {
    /// Blocks of whole rows: `C[r, :] ← op(A)[r, :] op(B)`.
    Rows,
    /// Blocks of whole columns: `C[:, r] ← op(A) op(B)[:, r]`.
    Cols,
}

/// How a product is cut: `pieces` blocks along `axis`, each a multiple of `align` long except
/// the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    axis: Axis,
    pieces: usize,
    align: usize,
}

/// faer's small-matrix threshold (`m·n·k ≤ 16³` goes to its nano kernels): no piece may fall
/// below it, or that piece would be summed by other code than the whole product.
const NANO_MNK: usize = 16 * 16 * 16;

/// Smallest piece worth a hand-off to another thread, in multiply-adds (`m·n·k`). A hand-off
/// costs about 1 µs (publishing the job, the worker noticing it, waiting for its end);
/// `1 << 16` multiply-adds take 0.6-1.5 µs on one core at 50-100 GFLOP/s. Chosen by
/// `bilevel bench train` on the paper's MLP: the 64→10 layer's products (32,000) stay whole.
const MIN_PIECE_MNK: usize = 1 << 16;

impl Plan {
    /// One piece: the whole product.
    const WHOLE: Plan = Plan {
        axis: Axis::Cols,
        pieces: 1,
        align: 1,
    };

    /// The cut of an `m × n` output with inner dimension `k` for `threads` threads: along the
    /// longer side of `C` (columns on ties), rows in multiples of 16 (a SIMD register of f32),
    /// columns in multiples of 4 (faer's micro-kernel width); as many pieces as threads, fewer
    /// if a piece would be smaller than [`MIN_PIECE_MNK`], never one faer would treat
    /// differently from the whole (one row or column, or below [`NANO_MNK`]).
    ///
    /// The side was chosen by measurement (the products of one epoch of the paper's MLP at
    /// batch 50 on two threads, the benchmark of `Threads::gemm`): cut along the longer side
    /// 0.255 s, always along columns 0.279 s, always along rows 0.265 s, along the shorter side
    /// 0.383 s; one thread 0.496 s.
    fn new(m: usize, n: usize, k: usize, threads: usize) -> Plan {
        let (axis, len, align) = if n >= m {
            (Axis::Cols, n, 4)
        } else {
            (Axis::Rows, m, 16)
        };
        let other = if axis == Axis::Cols { m } else { n };
        let mnk = m.saturating_mul(n).saturating_mul(k);
        if threads < 2 || other < 2 || k == 0 {
            return Plan::WHOLE;
        }
        let mut pieces = threads.min(len / align).min(mnk / MIN_PIECE_MNK);
        while pieces > 1 {
            let plan = Plan {
                axis,
                pieces,
                align,
            };
            let smallest = (0..pieces).map(|i| plan.range(len, i).len()).min();
            if smallest.is_some_and(|s| s * other * k > NANO_MNK) {
                return plan;
            }
            pieces -= 1;
        }
        Plan::WHOLE
    }

    /// The rows or columns (of `len`) that piece `i` computes.
    fn range(self, len: usize, i: usize) -> Range<usize> {
        Threads::range(len, self.align, self.pieces, i)
    }
}

/// Piece `i` of `plan`: its block of `C` from the matching rows of `op(A)` or columns of
/// `op(B)`.
///
/// # Safety
/// `c` points to a live `c.rows × c.cols` column-major matrix that nothing else reads or
/// writes during the call, except other pieces of the same plan on other threads.
unsafe fn piece<T: Gemm>(c: Out<T>, a: MatRef<'_, T>, b: MatRef<'_, T>, plan: Plan, i: usize) {
    let (rows, cols) = match plan.axis {
        Axis::Rows => (plan.range(c.rows, i), 0..c.cols),
        Axis::Cols => (0..c.rows, plan.range(c.cols, i)),
    };
    // SAFETY: the block lies inside `c` (`range` stays within `0..len`); pieces of one plan
    // are disjoint blocks, so no two threads write the same entry.
    let dst = unsafe {
        MatMut::from_raw_parts_mut(
            c.ptr.add(rows.start + cols.start * c.rows),
            rows.len(),
            cols.len(),
            1,
            c.rows as isize,
        )
    };
    let a = a.subrows(rows.start, rows.len());
    let b = b.subcols(cols.start, cols.len());
    matmul(dst, Accum::Replace, a, b, T::one(), Par::Seq);
    // faer's AVX-512 kernels return with the upper halves of the vector registers dirty; every
    // legacy-SSE instruction after that (all of our element-wise code, compiled for the x86-64
    // baseline) then paid a transition penalty: the softmax loss of one batch took 100 µs
    // instead of 10 µs, an epoch 0.80 s instead of 0.67 s. `vzeroupper` restores the clean
    // state.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU supports AVX (checked just above).
        unsafe { std::arch::x86_64::_mm256_zeroupper() };
    }
}

/// How long an idle worker spins before it sleeps. A training step hands the workers a
/// product every 20-100 µs; between epochs (evaluation, logging) they sleep.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(500);

/// How long the caller spins for pieces still running on workers before it starts yielding its
/// CPU (to a worker that shares it, when the machine is busier than the team is large).
const SPIN_BEFORE_YIELD: Duration = Duration::from_micros(20);

/// The claim word: `job << 24 | pieces << 12 | next`, the current job's number, its number of
/// pieces and the next unclaimed piece. One atomic word, so that a thread claims a piece of the
/// job it read and of no other.
mod claim {
    pub const PIECE_BITS: u32 = 12;
    pub const MASK: u64 = (1 << PIECE_BITS) - 1;

    pub fn word(job: u64, pieces: usize) -> u64 {
        (job << (2 * PIECE_BITS)) | ((pieces as u64) << PIECE_BITS)
    }
    pub fn job(word: u64) -> u64 {
        word >> (2 * PIECE_BITS)
    }
    pub fn pieces(word: u64) -> usize {
        ((word >> PIECE_BITS) & MASK) as usize
    }
    pub fn next(word: u64) -> usize {
        (word & MASK) as usize
    }
}

/// State shared by the caller and the workers.
///
/// A job is the caller's closure (`data`, type-erased, called through `call`) and a number of
/// pieces. The caller publishes it in `claim`; then every thread, the caller included, claims
/// pieces one at a time until none is left, and the caller waits until `finished` counts them
/// all. A worker that is slow to notice (asleep, or sharing its CPU with another program)
/// finds nothing left to claim: the caller has computed its piece. Which thread computes a piece
/// never changes its result.
struct Team {
    claim: AtomicU64,
    /// `data` and `call` of the job in `claim` (written before `claim` is published).
    data: AtomicPtr<()>,
    call: AtomicPtr<()>,
    /// Pieces of the current job computed.
    finished: AtomicUsize,
    stop: AtomicBool,
    /// A piece of the current job panicked (set before the piece counts as finished).
    panicked: AtomicBool,
    /// Worker `w` (from 1) is asleep or about to be: `asleep[w - 1]`.
    asleep: Vec<AtomicBool>,
    /// Workers done with their start-up (and its allocations).
    ready: AtomicUsize,
}

/// The workers and their shared state; dropping it stops and joins them.
struct Crew {
    team: Arc<Team>,
    workers: Vec<JoinHandle<()>>,
    /// A caller is using the team (a second concurrent caller computes on its own thread).
    busy: AtomicBool,
    /// Cut work over the workers ([`Threads::set_parallel`]).
    parallel: AtomicBool,
}

impl Drop for Crew {
    fn drop(&mut self) {
        self.team.stop.store(true, Ordering::SeqCst);
        for w in &self.workers {
            w.thread().unpark();
        }
        for w in self.workers.drain(..) {
            // A worker cannot panic (pieces run under `catch_unwind`); nothing to report.
            let _ = w.join();
        }
    }
}

/// Waits for a job other than `seen`: spins for [`SPIN_BEFORE_SLEEP`], then sleeps until woken.
/// `None` when the team stops.
fn next_job(team: &Team, seen: u64, asleep: &AtomicBool) -> Option<u64> {
    let mut since = Instant::now();
    let mut spins = 0u32;
    loop {
        let job = claim::job(team.claim.load(Ordering::Acquire));
        if job != seen {
            return Some(job);
        }
        if team.stop.load(Ordering::Acquire) {
            return None;
        }
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(256) || since.elapsed() < SPIN_BEFORE_SLEEP {
            std::hint::spin_loop();
            continue;
        }
        // Announce the sleep, then look again: the caller publishes a job before it reads
        // `asleep` (both SeqCst), so either we see the job or it sees us and unparks us.
        asleep.store(true, Ordering::SeqCst);
        if claim::job(team.claim.load(Ordering::SeqCst)) == seen
            && !team.stop.load(Ordering::SeqCst)
        {
            std::thread::park();
        }
        asleep.store(false, Ordering::SeqCst);
        since = Instant::now();
    }
}

/// Claims and computes pieces of job `job` until none is left (or the job is no longer
/// current). A piece that panics sets `team.panicked` before it is counted as finished, so the
/// caller, which waits for the count, sees the flag.
fn claim_pieces(team: &Team, job: u64) {
    loop {
        let word = team.claim.load(Ordering::Acquire);
        // Read the job before claiming: a successful claim below proves these are its own
        // (the caller rewrites them only after every piece of the job is computed).
        let data = team.data.load(Ordering::Acquire);
        let call = team.call.load(Ordering::Acquire);
        let i = claim::next(word);
        if claim::job(word) != job || i >= claim::pieces(word) {
            return;
        }
        if team
            .claim
            .compare_exchange_weak(word, word + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            continue;
        }
        // SAFETY: `call` was made from `call::<F>` with `data` a `&F` (`Crew::run`), which stays
        // alive until `finished` counts this piece.
        let call: unsafe fn(*const (), usize) = unsafe { std::mem::transmute(call) };
        if catch_unwind(AssertUnwindSafe(|| unsafe { call(data, i) })).is_err() {
            team.panicked.store(true, Ordering::Relaxed);
        }
        team.finished.fetch_add(1, Ordering::Release);
    }
}

fn work(team: Arc<Team>, w: usize) {
    // faer allocates each thread's packing buffers on its first product: do it now, so that no
    // step of a caller allocates (the training step's allocation test counts every thread).
    // `Threads::new` waits for this.
    let (a, b) = (DMatrix::<f32>::zeros(17, 17), DMatrix::<f32>::zeros(17, 17));
    f32::gemm_into(&mut DMatrix::zeros(17, 17), &a, false, &b, false);
    drop((a, b));
    team.ready.fetch_add(1, Ordering::Release);
    // Jobs are numbered from 1: a worker that starts late still sees the first one.
    let mut seen = 0;
    while let Some(job) = next_job(&team, seen, &team.asleep[w - 1]) {
        seen = job;
        claim_pieces(&team, job);
    }
}

/// Calls the closure behind `data` (the type-erased form a job stores).
///
/// # Safety
/// `data` points to a live `F`.
unsafe fn call<F: Fn(usize) + Sync>(data: *const (), i: usize) {
    // SAFETY: the caller's contract.
    unsafe { (*data.cast::<F>())(i) }
}

impl Crew {
    /// Runs `f(0)`, …, `f(pieces − 1)` on whichever threads claim them first (the calling
    /// thread among them); returns when all are done.
    fn run<F: Fn(usize) + Sync>(&self, pieces: usize, f: &F) {
        if self
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // Another thread is using the team (a cloned workspace): same pieces, same results.
            (0..pieces).for_each(f);
            return;
        }
        struct Release<'a>(&'a AtomicBool);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _release = Release(&self.busy);
        let team = &*self.team;
        // Only the caller holding `busy` publishes jobs, so the last one is in `claim`.
        let job = claim::job(team.claim.load(Ordering::Relaxed)) + 1;
        let entry: unsafe fn(*const (), usize) = call::<F>;
        team.data
            .store((f as *const F).cast_mut().cast(), Ordering::Relaxed);
        team.call.store(entry as *mut (), Ordering::Relaxed);
        team.finished.store(0, Ordering::Relaxed);
        team.claim.store(claim::word(job, pieces), Ordering::SeqCst);
        for (w, handle) in self.workers.iter().enumerate() {
            if team.asleep[w].load(Ordering::SeqCst) {
                handle.thread().unpark();
            }
        }
        claim_pieces(team, job);
        // Pieces claimed by workers must be done before `f` (and what it borrows) can go.
        let since = Instant::now();
        while team.finished.load(Ordering::Acquire) < pieces {
            if since.elapsed() < SPIN_BEFORE_YIELD {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if team.panicked.swap(false, Ordering::Relaxed) {
            panic!("a piece of a split matrix product panicked");
        }
    }
}

/// A team of threads that split each matrix product of the batched network passes
/// ([`Threads::gemm`]); one thread (the default) computes everything on the caller's thread.
///
/// The workers are persistent: started once by [`Threads::new`], they spin for a moment after
/// each product waiting for the next (a training step hands them one every 20-100 µs; waking a
/// sleeping thread costs more than most products take) and sleep when idle. They stop when the
/// last clone of the `Threads` is dropped.
///
/// **Results are bit-identical for every thread count**: every entry of the output is computed
/// by one thread, by the same faer kernel, summing over the inner dimension in the same order
/// (faer's x86 kernels cut the inner dimension into blocks of at most 512 whatever the shape of
/// the output, and no piece is ever one faer sends down another path: a single row or column,
/// or fewer than 16³ multiply-adds). A run resumed on another machine with another thread count
/// continues exactly.
///
/// Clones share the team. Two threads using clones at the same time do not wait for each
/// other: the second computes its product alone (with the same result).
///
/// ```
/// use bilevel::linalg::{Gemm, Threads};
/// use nalgebra::DMatrix;
///
/// let a = DMatrix::<f32>::from_fn(256, 784, |i, j| ((i * 7 + j * 3) % 11) as f32 - 5.0);
/// let b = DMatrix::<f32>::from_fn(784, 50, |i, j| ((i + 2 * j) % 5) as f32 * 0.25);
/// let (mut one, mut two) = (DMatrix::zeros(256, 50), DMatrix::zeros(256, 50));
/// f32::gemm_into(&mut one, &a, false, &b, false);
/// Threads::new(2)?.gemm(&mut two, &a, false, &b, false);
/// assert_eq!(one, two);
/// # Ok::<(), bilevel::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Threads {
    crew: Option<Arc<Crew>>,
}

impl fmt::Debug for Threads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Threads")
            .field("count", &self.count())
            .finish()
    }
}

/// Most threads [`Threads::new`] accepts.
pub const MAX_THREADS: usize = 256;

impl Threads {
    /// `count` threads: the caller's and `count − 1` workers, started now.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for `count` 0 or above [`MAX_THREADS`], or when the operating
    /// system refuses to start a thread.
    pub fn new(count: usize) -> Result<Self> {
        if count == 0 || count > MAX_THREADS {
            return Err(Error::input(
                "threads",
                format!("must be between 1 and {MAX_THREADS}, got {count}"),
            ));
        }
        if count == 1 {
            return Ok(Self::default());
        }
        let team = Arc::new(Team {
            claim: AtomicU64::new(0),
            data: AtomicPtr::new(std::ptr::null_mut()),
            call: AtomicPtr::new(std::ptr::null_mut()),
            finished: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            asleep: (1..count).map(|_| AtomicBool::new(false)).collect(),
            ready: AtomicUsize::new(0),
        });
        let mut crew = Crew {
            team: Arc::clone(&team),
            workers: Vec::with_capacity(count - 1),
            busy: AtomicBool::new(false),
            parallel: AtomicBool::new(true),
        };
        for w in 1..count {
            let team = Arc::clone(&team);
            let handle = std::thread::Builder::new()
                .name(format!("bilevel-gemm-{w}"))
                .spawn(move || work(team, w))
                .map_err(|e| {
                    Error::input("threads", format!("cannot start worker thread {w}: {e}"))
                })?;
            crew.workers.push(handle);
        }
        // The workers' start-up allocates (the thread itself, faer's buffers): let it happen
        // here rather than during the caller's first products.
        while team.ready.load(Ordering::Acquire) < count - 1
            && !crew.workers.iter().any(JoinHandle::is_finished)
        {
            std::thread::yield_now();
        }
        Ok(Self {
            crew: Some(Arc::new(crew)),
        })
    }

    /// The number of threads (1 + workers).
    pub fn count(&self) -> usize {
        self.crew.as_ref().map_or(1, |c| c.workers.len() + 1)
    }

    /// Turns the cutting of work over the workers on (the default) or off, for every clone:
    /// off, [`Threads::gemm`] and [`Threads::run`] compute everything on the calling thread —
    /// with the same results — and the workers go to sleep. The trainer switches it by
    /// measurement (`crate::nn::Trainer`): a machine whose cores are busy, or slow to share
    /// data, can make the team slower than one thread.
    pub fn set_parallel(&self, on: bool) {
        if let Some(crew) = &self.crew {
            crew.parallel.store(on, Ordering::Relaxed);
        }
    }

    /// Whether work is cut over the workers ([`Threads::set_parallel`]); `false` for one
    /// thread.
    pub fn is_parallel(&self) -> bool {
        self.crew
            .as_ref()
            .is_some_and(|c| c.parallel.load(Ordering::Relaxed))
    }

    /// The logical CPUs this process may use (`std::thread::available_parallelism`, read once:
    /// it reads cgroup files on every call).
    pub fn available() -> usize {
        static CORES: OnceLock<usize> = OnceLock::new();
        *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The default thread count (training, `bilevel derive` batches): as many threads as
    /// CPUs, at most 2 — the fastest count
    /// `bilevel bench train --threads 1,2` measured on a 2-core machine at batch 50 (more
    /// threads are untested; pass them explicitly).
    pub fn default_count() -> usize {
        Self::available().min(2)
    }

    /// Runs `f(0)`, …, `f(pieces − 1)` at the same time, each piece on whichever thread of the
    /// team claims it first (the calling thread claims pieces too, and computes every piece
    /// no worker has started when it runs out of its own). Returns when all are done; a panic
    /// in any piece is raised here. `f` must give the same result whichever thread runs it.
    ///
    /// For element-wise passes over data a [`Threads::gemm`] wrote, cut the data with
    /// [`Threads::range`] as the product cut its output, so that each thread mostly finds its
    /// part in its own cache.
    pub fn run<F: Fn(usize) + Sync>(&self, pieces: usize, f: &F) {
        match &self.crew {
            Some(crew) if pieces > 1 && crew.parallel.load(Ordering::Relaxed) => {
                // The claim word holds at most `claim::MASK` pieces per job.
                let most = claim::MASK as usize;
                for base in (0..pieces).step_by(most) {
                    let n = most.min(pieces - base);
                    crew.run(n, &|i| f(base + i));
                }
            }
            _ => (0..pieces).for_each(f),
        }
    }

    /// Piece `i` of `0..len` cut into `pieces` contiguous ranges at multiples of `align`
    /// (every piece but the last a multiple of `align` long; pieces may be empty when `len` is
    /// short). [`Threads::gemm`] cuts the rows or columns of its output this way: with `align`
    /// = 4 × rows, the ranges of a column-major matrix's storage are its column blocks.
    ///
    /// # Panics
    /// If `align` or `pieces` is 0, or `i ≥ pieces`.
    pub fn range(len: usize, align: usize, pieces: usize, i: usize) -> Range<usize> {
        assert!(
            align > 0 && i < pieces,
            "Threads::range: align 0 or piece out of range"
        );
        let units = len / align;
        let edge = |j: usize| {
            if j == pieces {
                len
            } else {
                align * (j * units / pieces)
            }
        };
        edge(i)..edge(i + 1)
    }

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
        let out = Out::of(c);
        match &self.crew {
            Some(crew) if plan.pieces > 1 && crew.parallel.load(Ordering::Relaxed) => {
                // SAFETY: `out` is `c`, borrowed mutably for the whole call; `run` gives each
                // piece of the plan to one thread.
                crew.run(plan.pieces, &|i| unsafe { piece(out, a, b, plan, i) });
            }
            // SAFETY: as in `Gemm::gemm_into`.
            _ => unsafe { piece(out, a, b, Plan::WHOLE, 0) },
        }
    }
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
    fn split_products_are_bit_identical_to_whole_ones() {
        let threads: Vec<Threads> = (1..=5).map(|n| Threads::new(n).unwrap()).collect();
        check_bit_identical::<f32>(&threads);
        check_bit_identical::<f64>(&threads);
    }

    #[test]
    fn plans_cover_the_output_with_aligned_pieces_that_faer_treats_like_the_whole() {
        for &(m, n, k) in &[(256, 50, 784), (256, 784, 50), (10, 64, 50), (40, 40, 40)] {
            for threads in 1..=8 {
                let plan = Plan::new(m, n, k, threads);
                assert!(plan.pieces >= 1 && plan.pieces <= threads);
                let (len, other) = match plan.axis {
                    Axis::Rows => (m, n),
                    Axis::Cols => (n, m),
                };
                let mut next = 0;
                for i in 0..plan.pieces {
                    let r = plan.range(len, i);
                    assert_eq!(r.start, next);
                    assert!(plan.pieces == 1 || r.len() * other * k > NANO_MNK);
                    assert!(plan.pieces == 1 || r.len() >= 2);
                    assert_eq!(r.start % plan.align, 0);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
        // The paper's MLP at batch 50 on two threads: the big products split, 64→10 does not.
        assert_eq!(Plan::new(256, 50, 784, 2).pieces, 2);
        assert_eq!(Plan::new(256, 784, 50, 2).pieces, 2);
        assert_eq!(Plan::new(10, 64, 50, 2).pieces, 1);
        assert_eq!(Plan::new(10, 50, 64, 2).pieces, 1);
    }

    #[test]
    fn thread_counts_are_validated() {
        assert!(matches!(Threads::new(0), Err(Error::InvalidInput { .. })));
        assert!(Threads::new(MAX_THREADS + 1).is_err());
        assert_eq!(Threads::new(3).unwrap().count(), 3);
        assert_eq!(Threads::default().count(), 1);
        assert!(Threads::default_count() >= 1);
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
            std::thread::sleep(SPIN_BEFORE_SLEEP * 4);
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
        let caller = std::thread::current().id();
        let ran_on = std::sync::Mutex::new(Vec::new());
        threads.run(4, &|_| {
            ran_on.lock().unwrap().push(std::thread::current().id())
        });
        assert_eq!(ran_on.into_inner().unwrap(), vec![caller; 4]);
        let mut off = DMatrix::zeros(256, 50);
        threads.gemm(&mut off, &a, false, &b, false);
        assert_eq!(on, off);
        threads.set_parallel(true);
        let mut again = DMatrix::zeros(256, 50);
        threads.gemm(&mut again, &a, false, &b, false);
        assert_eq!(on, again);
    }

    #[test]
    fn a_panic_in_any_piece_reaches_the_caller_and_the_team_keeps_working() {
        let threads = Threads::new(3).unwrap();
        for bad in 0..6 {
            let caught = catch_unwind(AssertUnwindSafe(|| {
                threads.run(6, &|i| {
                    // Slow pieces, so that the workers claim some of them.
                    std::thread::sleep(Duration::from_millis(2));
                    assert!(i != bad, "piece {i}");
                });
            }));
            assert!(caught.is_err(), "the panic of piece {bad} was lost");
        }
        let done = AtomicUsize::new(0);
        threads.run(6, &|_| {
            done.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(done.into_inner(), 6);
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
