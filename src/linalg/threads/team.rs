//! The team: a caller and persistent workers that take the pieces of one job at a time
//! ([`Threads::run`]), and the hand-off protocol between them.
//!
//! **The protocol.** A job is the caller's closure (type-erased: a data pointer and an entry
//! function) and a number of pieces. The caller publishes it in one atomic *claim word*
//! (`job << 24 | pieces << 12 | next`); then every thread, the caller included, claims pieces
//! one at a time by a compare-and-swap of `next`, until none is left; the caller then waits
//! until `finished` counts every piece. Its invariants, each held by a forced-interleaving test
//! below (a [`Script`] holds threads at named [`Point`]s, so the order is the test's, not the
//! machine's):
//!
//! 1. *A piece runs once, with its own job's closure*: a worker reads the word, then the job's
//!    pointers, then claims with a compare-and-swap of the word it read; the caller rewrites
//!    the pointers only after every piece of its job is finished, so a successful claim proves
//!    the pointers are the claimed job's (`a_late_worker_claims_nothing_of_a_finished_job`).
//! 2. *The caller returns only when every piece is finished*, so nothing a piece borrows is
//!    gone while it runs; a worker slow to notice the job finds nothing left to claim.
//! 3. *A panic reaches the caller*: a piece's panic is recorded before the piece counts as
//!    finished (`a_panic_is_recorded_before_its_piece_counts`; found in CI under load when the
//!    order was the other way round).
//! 4. *No worker is starting up when [`Threads::new`] returns* (its first allocations raced
//!    into the caller's first steps: `new_returns_after_every_worker_started`).
//! 5. *No lost wake-up*: a worker announces its sleep, then looks for a job again before it
//!    parks; the caller publishes, then reads the announcements (both sequentially consistent),
//!    so one of the two sees the other.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long an idle worker spins before it sleeps. A training step hands the workers a
/// product every 20-100 µs; between epochs (evaluation, logging) they sleep.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(500);

/// How long the caller spins for pieces still running on workers before it starts yielding its
/// CPU (to a worker that shares it, when the machine is busier than the team is large).
const SPIN_BEFORE_YIELD: Duration = Duration::from_micros(20);

/// Most threads [`Threads::new`] accepts.
pub const MAX_THREADS: usize = 256;

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

/// Named places of the protocol where a test's [`Script`] can hold a thread (no-ops outside the
/// crate's unit tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Point {
    /// A worker, before its start-up (its first product, which allocates).
    StartUp,
    /// [`Threads::new`], each time it finds a worker still starting up.
    AwaitsStartUp,
    /// [`Threads::new`], about to return.
    NewReturns,
    /// A worker that has read the claim word and the job's pointers, before its claim.
    BeforeClaim,
    /// A thread that has claimed a piece, before it runs it.
    Claimed,
    /// A thread that has counted its piece as finished.
    Counted,
    /// The caller, after publishing a job, before it claims pieces itself.
    Published,
}

/// The state the caller and the workers share: the hand-off.
struct HandOff {
    claim: AtomicU64,
    /// `data` and `entry` of the job in `claim` (written before `claim` is published).
    data: AtomicPtr<()>,
    entry: AtomicPtr<()>,
    /// Pieces of the current job finished.
    finished: AtomicUsize,
    stop: AtomicBool,
    /// A piece of the current job panicked (set before the piece counts as finished).
    panicked: AtomicBool,
    /// Worker `w` (from 1) is asleep or about to be: `asleep[w - 1]`.
    asleep: Vec<AtomicBool>,
    /// Workers done with their start-up (and its allocations).
    ready: AtomicUsize,
    #[cfg(test)]
    script: Option<Arc<script::Script>>,
}

impl HandOff {
    /// A place a test may hold this thread at.
    #[inline(always)]
    fn at(&self, _point: Point) {
        #[cfg(test)]
        if let Some(s) = &self.script {
            s.at(_point);
        }
    }
}

/// The workers and the hand-off; dropping it stops and joins them.
struct Team {
    hand_off: Arc<HandOff>,
    workers: Vec<JoinHandle<()>>,
    /// A caller is using the team (a second concurrent caller computes on its own thread).
    busy: AtomicBool,
    /// Cut work over the workers ([`Threads::set_parallel`]).
    parallel: AtomicBool,
}

impl Drop for Team {
    fn drop(&mut self) {
        self.hand_off.stop.store(true, Ordering::SeqCst);
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
fn next_job(h: &HandOff, seen: u64, asleep: &AtomicBool) -> Option<u64> {
    let mut since = Instant::now();
    let mut spins = 0u32;
    loop {
        let job = claim::job(h.claim.load(Ordering::Acquire));
        if job != seen {
            return Some(job);
        }
        if h.stop.load(Ordering::Acquire) {
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
        if claim::job(h.claim.load(Ordering::SeqCst)) == seen && !h.stop.load(Ordering::SeqCst) {
            std::thread::park();
        }
        asleep.store(false, Ordering::SeqCst);
        since = Instant::now();
    }
}

/// Claims and runs pieces of job `job` until none is left (or the job is no longer current).
/// A piece that panics sets `panicked` before it counts as finished, so the caller, which waits
/// for the count, sees the flag.
fn claim_pieces(h: &HandOff, job: u64, worker: bool) {
    loop {
        let word = h.claim.load(Ordering::Acquire);
        // Read the job before claiming: a successful claim below proves these are its own
        // (the caller rewrites them only after every piece of the job is finished).
        let data = h.data.load(Ordering::Acquire);
        let entry = h.entry.load(Ordering::Acquire);
        let i = claim::next(word);
        if claim::job(word) != job || i >= claim::pieces(word) {
            return;
        }
        if worker {
            h.at(Point::BeforeClaim);
        }
        if h.claim
            .compare_exchange_weak(word, word + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            continue;
        }
        h.at(Point::Claimed);
        // SAFETY: `entry` was made from `entry::<F>` with `data` a `&F` (`Team::run`), which
        // stays alive until `finished` counts this piece.
        let entry: unsafe fn(*const (), usize) = unsafe { std::mem::transmute(entry) };
        // SAFETY: as above.
        if catch_unwind(AssertUnwindSafe(|| unsafe { entry(data, i) })).is_err() {
            h.panicked.store(true, Ordering::Relaxed);
        }
        h.finished.fetch_add(1, Ordering::Release);
        h.at(Point::Counted);
    }
}

/// A worker's life: start-up, then the pieces of every job until the team stops.
fn work(h: Arc<HandOff>, w: usize) {
    h.at(Point::StartUp);
    // faer allocates each thread's packing buffers on its first product: do it now, so that no
    // step of a caller allocates (the training step's allocation test counts every thread).
    // `Threads::new` waits for this.
    warm_up();
    h.ready.fetch_add(1, Ordering::Release);
    // Jobs are numbered from 1: a worker that starts late still sees the first one.
    let mut seen = 0;
    while let Some(job) = next_job(&h, seen, &h.asleep[w - 1]) {
        seen = job;
        claim_pieces(&h, job, true);
    }
}

/// Runs one small faer product on this thread, so that faer allocates its packing buffers for
/// it now (the 17 × 17 × 17 product is above faer's small-matrix kernels, which allocate
/// nothing).
fn warm_up() {
    use faer::{linalg::matmul::matmul, Accum, Mat, Par};
    let (a, b) = (Mat::<f32>::zeros(17, 17), Mat::<f32>::zeros(17, 17));
    let mut c = Mat::<f32>::zeros(17, 17);
    matmul(
        c.as_mut(),
        Accum::Replace,
        a.as_ref(),
        b.as_ref(),
        1.0,
        Par::Seq,
    );
}

/// Calls the closure behind `data` (the type-erased form a job stores).
///
/// # Safety
/// `data` points to a live `F`.
unsafe fn entry<F: Fn(usize) + Sync>(data: *const (), i: usize) {
    // SAFETY: the caller's contract.
    unsafe { (*data.cast::<F>())(i) }
}

impl Team {
    /// Runs `f(0)`, …, `f(pieces − 1)` on whichever threads claim them first (the calling
    /// thread among them); returns when all are finished.
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
        let h = &*self.hand_off;
        // Only the caller holding `busy` publishes jobs, so the last one is in `claim`.
        let job = claim::job(h.claim.load(Ordering::Relaxed)) + 1;
        let call: unsafe fn(*const (), usize) = entry::<F>;
        h.data
            .store((f as *const F).cast_mut().cast(), Ordering::Relaxed);
        h.entry.store(call as *mut (), Ordering::Relaxed);
        h.finished.store(0, Ordering::Relaxed);
        h.claim.store(claim::word(job, pieces), Ordering::SeqCst);
        for (w, handle) in self.workers.iter().enumerate() {
            if h.asleep[w].load(Ordering::SeqCst) {
                handle.thread().unpark();
            }
        }
        h.at(Point::Published);
        claim_pieces(h, job, false);
        // Pieces claimed by workers must be finished before `f` (and what it borrows) can go.
        let since = Instant::now();
        while h.finished.load(Ordering::Acquire) < pieces {
            if since.elapsed() < SPIN_BEFORE_YIELD {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if h.panicked.swap(false, Ordering::Relaxed) {
            panic!("a piece of a job on the team panicked");
        }
    }
}

/// A team of threads that share the batched network passes: each matrix product cut into
/// blocks of whole rows or columns ([`Threads::gemm`]), each element-wise pass into blocks of
/// samples. One thread (the default) computes everything on the caller's thread.
///
/// The workers are persistent: started once by [`Threads::new`], they spin for a moment after
/// each job waiting for the next (a training step hands them one every 20-100 µs; waking a
/// sleeping thread costs more than most products take) and sleep when idle. They stop when the
/// last clone of the `Threads` is dropped.
///
/// **Results are bit-identical for every thread count**: every number is computed by one
/// thread in the same order whichever thread that is (see [`Threads::gemm`] for the products).
/// A run resumed on another machine with another thread count continues exactly.
///
/// Clones share the team. Two threads using clones at the same time do not wait for each
/// other: the second computes its job alone (with the same result).
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
    team: Option<Arc<Team>>,
}

impl fmt::Debug for Threads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Threads")
            .field("count", &self.count())
            .finish()
    }
}

impl Threads {
    /// `count` threads: the caller's and `count − 1` workers, started now.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for `count` 0 or above [`MAX_THREADS`], or when the operating
    /// system refuses to start a thread.
    pub fn new(count: usize) -> Result<Self> {
        Self::start(
            count,
            #[cfg(test)]
            None,
        )
    }

    /// [`Threads::new`] with a test's [`Script`] attached to the hand-off.
    #[cfg(test)]
    fn scripted(count: usize, script: Arc<script::Script>) -> Result<Self> {
        Self::start(count, Some(script))
    }

    fn start(count: usize, #[cfg(test)] script: Option<Arc<script::Script>>) -> Result<Self> {
        if count == 0 || count > MAX_THREADS {
            return Err(Error::input(
                "threads",
                format!("must be between 1 and {MAX_THREADS}, got {count}"),
            ));
        }
        if count == 1 {
            return Ok(Self::default());
        }
        let hand_off = Arc::new(HandOff {
            claim: AtomicU64::new(0),
            data: AtomicPtr::new(std::ptr::null_mut()),
            entry: AtomicPtr::new(std::ptr::null_mut()),
            finished: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            asleep: (1..count).map(|_| AtomicBool::new(false)).collect(),
            ready: AtomicUsize::new(0),
            #[cfg(test)]
            script,
        });
        let mut team = Team {
            hand_off: Arc::clone(&hand_off),
            workers: Vec::with_capacity(count - 1),
            busy: AtomicBool::new(false),
            parallel: AtomicBool::new(true),
        };
        for w in 1..count {
            let h = Arc::clone(&hand_off);
            let handle = std::thread::Builder::new()
                .name(format!("bilevel-team-{w}"))
                .spawn(move || work(h, w))
                .map_err(|e| {
                    Error::input("threads", format!("cannot start worker thread {w}: {e}"))
                })?;
            team.workers.push(handle);
        }
        // The workers' start-up allocates (the thread itself, faer's buffers): let it happen
        // here rather than during the caller's first products.
        while hand_off.ready.load(Ordering::Acquire) < count - 1
            && !team.workers.iter().any(JoinHandle::is_finished)
        {
            hand_off.at(Point::AwaitsStartUp);
            std::thread::yield_now();
        }
        hand_off.at(Point::NewReturns);
        Ok(Self {
            team: Some(Arc::new(team)),
        })
    }

    /// The number of threads (1 + workers).
    pub fn count(&self) -> usize {
        self.team.as_ref().map_or(1, |c| c.workers.len() + 1)
    }

    /// Turns the cutting of work over the workers on (the default) or off, for every clone:
    /// off, every job runs on the calling thread — with the same results — and the workers go
    /// to sleep. The trainer switches it by measurement (`bilevel::app::nn::Trainer`): a machine whose
    /// cores are busy, or slow to share data, can make the team slower than one thread.
    pub fn set_parallel(&self, on: bool) {
        if let Some(team) = &self.team {
            team.parallel.store(on, Ordering::Relaxed);
        }
    }

    /// Whether work is cut over the workers ([`Threads::set_parallel`]); `false` for one
    /// thread.
    pub fn is_parallel(&self) -> bool {
        self.team
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
    /// CPUs, at most 2 — the fastest count `bilevel bench train --threads 1,2` measured on a
    /// 2-core machine at batch 50 (more threads are untested; pass them explicitly).
    pub fn default_count() -> usize {
        Self::available().min(2)
    }

    /// Runs `f(0)`, …, `f(pieces − 1)` at the same time, each piece on whichever thread of the
    /// team claims it first (the calling thread claims pieces too, and runs every piece no
    /// worker has started when it runs out of its own). Returns when all are finished; a panic
    /// in any piece is raised here. `f` must give the same result whichever thread runs it.
    pub fn run<F: Fn(usize) + Sync>(&self, pieces: usize, f: &F) {
        match &self.team {
            Some(team) if pieces > 1 && team.parallel.load(Ordering::Relaxed) => {
                // The claim word holds at most `claim::MASK` pieces per job.
                let most = claim::MASK as usize;
                for base in (0..pieces).step_by(most) {
                    let n = most.min(pieces - base);
                    team.run(n, &|i| f(base + i));
                }
            }
            _ => (0..pieces).for_each(f),
        }
    }
}

/// A test's hold on the team's threads: a thread's `n`-th arrival at a held [`Point`] waits
/// there until the test releases the point, so that a test sets the order of the protocol's
/// steps itself instead of hoping the machine's load produces it.
#[cfg(test)]
pub(super) mod script {
    use std::sync::{Arc, Condvar, Mutex};

    use super::Point;

    #[derive(Debug, Default)]
    struct State {
        /// `(point, n)`: the `n`-th arrival at `point` (from 0) waits.
        holds: Vec<(Point, usize)>,
        /// Arrivals so far at each point.
        arrivals: Vec<(Point, usize)>,
        /// Points a thread waits at now.
        waiting: Vec<Point>,
    }

    impl State {
        fn arrivals(&mut self, p: Point) -> &mut usize {
            if let Some(i) = self.arrivals.iter().position(|&(q, _)| q == p) {
                return &mut self.arrivals[i].1;
            }
            self.arrivals.push((p, 0));
            &mut self.arrivals.last_mut().unwrap().1
        }
    }

    /// See the module docs.
    #[derive(Debug, Default)]
    pub(crate) struct Script {
        state: Mutex<State>,
        changed: Condvar,
    }

    impl Script {
        /// Holds the `n`-th arrival at `point` for each `(point, n)` of `holds`.
        pub(crate) fn holding(holds: &[(Point, usize)]) -> Arc<Self> {
            let s = Self::default();
            s.state.lock().unwrap().holds = holds.to_vec();
            Arc::new(s)
        }

        /// Called by the team at `p`.
        pub(super) fn at(&self, p: Point) {
            let mut st = self.state.lock().unwrap();
            let n = *st.arrivals(p);
            *st.arrivals(p) += 1;
            if st.holds.contains(&(p, n)) {
                st.waiting.push(p);
                self.changed.notify_all();
                while st.holds.contains(&(p, n)) {
                    st = self.changed.wait(st).unwrap();
                }
                let i = st.waiting.iter().position(|&w| w == p).unwrap();
                st.waiting.remove(i);
            }
            self.changed.notify_all();
        }

        /// Blocks until a thread waits at one of `points`; the first of them that has one.
        pub(crate) fn wait_for_any(&self, points: &[Point]) -> Point {
            let mut st = self.state.lock().unwrap();
            loop {
                if let Some(&p) = points.iter().find(|p| st.waiting.contains(p)) {
                    return p;
                }
                st = self.changed.wait(st).unwrap();
            }
        }

        /// Blocks until a thread waits at `p`.
        pub(crate) fn wait_for(&self, p: Point) {
            self.wait_for_any(&[p]);
        }

        /// Lets the threads held at `p` go (later arrivals held by the script still wait).
        pub(crate) fn release(&self, p: Point) {
            let mut st = self.state.lock().unwrap();
            let arrived = *st.arrivals(p);
            st.holds.retain(|&(h, n)| h != p || n >= arrived);
            self.changed.notify_all();
        }

        /// Holds nothing any more.
        pub(crate) fn release_all(&self) {
            self.state.lock().unwrap().holds.clear();
            self.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::script::Script;
    use super::*;

    #[test]
    fn thread_counts_are_validated() {
        assert!(matches!(Threads::new(0), Err(Error::InvalidInput { .. })));
        assert!(Threads::new(MAX_THREADS + 1).is_err());
        assert_eq!(Threads::new(3).unwrap().count(), 3);
        assert_eq!(Threads::default().count(), 1);
        assert!(Threads::default_count() >= 1);
    }

    /// Invariant 4: with a worker held before its start-up, `new` waits for it (it arrives
    /// at `AwaitsStartUp`) instead of returning (arriving at `NewReturns`).
    #[test]
    fn new_returns_after_every_worker_started() {
        let holds = [
            (Point::StartUp, 0),
            (Point::AwaitsStartUp, 0),
            (Point::NewReturns, 0),
        ];
        let script = Script::holding(&holds);
        std::thread::scope(|s| {
            let caller = s.spawn(|| Threads::scripted(2, Arc::clone(&script)).unwrap());
            script.wait_for(Point::StartUp);
            let reached = script.wait_for_any(&[Point::AwaitsStartUp, Point::NewReturns]);
            script.release_all();
            let t = caller.join().unwrap();
            assert_eq!(
                reached,
                Point::AwaitsStartUp,
                "new returned before the start-up"
            );
            let h = &t.team.as_ref().unwrap().hand_off;
            assert_eq!(h.ready.load(Ordering::SeqCst), 1);
        });
    }

    /// Invariant 3: a worker held right after counting its panicking piece as finished; the
    /// caller, which then finds every piece finished, must still see the panic.
    #[test]
    fn a_panic_is_recorded_before_its_piece_counts() {
        let script = Script::holding(&[
            (Point::Published, 0),
            (Point::Claimed, 0),
            (Point::Counted, 0),
        ]);
        let threads = Threads::scripted(2, Arc::clone(&script)).unwrap();
        std::thread::scope(|s| {
            let caller = s.spawn(|| {
                catch_unwind(AssertUnwindSafe(|| {
                    threads.run(2, &|i| assert!(i != 0, "piece 0 fails"));
                }))
            });
            // The caller has published the job and waits; the worker claims piece 0 first.
            script.wait_for(Point::Published);
            script.wait_for(Point::Claimed);
            // The worker runs piece 0 (it panics) and counts it; it is held after the count.
            script.release(Point::Claimed);
            script.wait_for(Point::Counted);
            // The caller runs piece 1 and finds both finished while the worker is held.
            script.release(Point::Published);
            let outcome = caller.join().unwrap();
            script.release(Point::Counted);
            assert!(
                outcome.is_err(),
                "the caller returned without the worker's panic"
            );
        });
    }

    /// Invariant 1: a worker that read job 1's word and pointers is held while the caller runs
    /// job 1 alone and publishes job 2; let go, it claims nothing of job 1 and runs job 2's
    /// piece with job 2's closure: every piece of each job runs exactly once. (The jobs go to
    /// `Team::run` directly, their closures living in this frame: a stale claim then shows as
    /// a count, where `Threads::run`'s per-call wrapper would be a dangling closure.)
    #[test]
    fn a_late_worker_claims_nothing_of_a_finished_job() {
        let script = Script::holding(&[
            (Point::Published, 0),
            (Point::BeforeClaim, 0),
            (Point::Published, 1),
            // The caller claims job 1's three pieces (arrivals 0-2); the worker's claim is next.
            (Point::Claimed, 3),
        ]);
        let threads = Threads::scripted(2, Arc::clone(&script)).unwrap();
        let first: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        let second: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        let job1 = |i: usize| {
            first[i].fetch_add(1, Ordering::SeqCst);
        };
        let job2 = |i: usize| {
            second[i].fetch_add(1, Ordering::SeqCst);
        };
        let team = threads.team.as_deref().unwrap();
        std::thread::scope(|s| {
            let one = s.spawn(|| team.run(3, &job1));
            // Job 1 is published; the worker reads it and is held before its claim.
            script.wait_for(Point::Published);
            script.wait_for(Point::BeforeClaim);
            // The caller runs all of job 1 itself.
            script.release(Point::Published);
            one.join().unwrap();
            // Job 2 is published; its caller is held before claiming, the worker let go: it
            // claims a piece (of job 2 only) before the caller claims the rest.
            let two = s.spawn(|| team.run(3, &job2));
            script.wait_for(Point::Published);
            script.release(Point::BeforeClaim);
            script.wait_for(Point::Claimed);
            script.release(Point::Published);
            script.release(Point::Claimed);
            two.join().unwrap();
        });
        let once = |c: &[AtomicUsize]| c.iter().all(|c| c.load(Ordering::SeqCst) == 1);
        assert!(once(&first), "a piece of job 1 ran twice or not at all");
        assert!(once(&second), "a piece of job 2 ran twice or not at all");
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
    fn switched_off_teams_run_on_the_caller() {
        let threads = Threads::new(2).unwrap();
        assert!(threads.is_parallel() && !Threads::default().is_parallel());
        threads.clone().set_parallel(false);
        assert!(!threads.is_parallel());
        let caller = std::thread::current().id();
        let ran_on = std::sync::Mutex::new(Vec::new());
        threads.run(4, &|_| {
            ran_on.lock().unwrap().push(std::thread::current().id())
        });
        assert_eq!(ran_on.into_inner().unwrap(), vec![caller; 4]);
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let threads = Threads::new(2).unwrap();
        for _ in 0..3 {
            std::thread::sleep(SPIN_BEFORE_SLEEP * 4);
            let done = AtomicUsize::new(0);
            threads.run(4, &|_| {
                done.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(done.into_inner(), 4);
        }
    }
}
