//! The training step allocates nothing: a counting global allocator around `Trainer::step` (the
//! Prop. 7 gradient in f32 or the inference sweeps of the other Table 1 rows, Adam,
//! batch copy-in) after one warm-up step.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bilevel::app::nn::bench::synthetic;
use bilevel::app::nn::{Rule, TrainConfig, Trainer};
use bilevel::nested::method::Method;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn training_steps_do_not_allocate() {
    let data = synthetic(200, 10, 1);
    let sweeps = 20;
    for (rule, threads) in [
        Rule::bp(),
        Rule::fenbp(1.0),
        Rule::iterative(Method::Mac, 1.0, sweeps),
        Rule::iterative(Method::PredictiveCoding, 1.0, sweeps),
        Rule::iterative(Method::Lpom, 1.0, sweeps),
        Rule::iterative(Method::Chl, 1.0, sweeps),
        Rule::iterative(Method::ConvexChl, 1.0, sweeps),
        Rule::iterative(Method::Chl, 0.1, sweeps).centered(),
        Rule::iterative(Method::ConvexChl, 0.1, sweeps).centered(),
    ]
    .into_iter()
    .flat_map(|rule| [(rule, 1), (rule, 2)])
    {
        // Two threads: the workers and the hand-offs allocate nothing per step either.
        let mut t = Trainer::new(TrainConfig {
            rule,
            train_size: 200,
            threads,
            ..TrainConfig::default()
        })
        .unwrap();
        // The team computes every step (no timing of one thread against it).
        t.set_pacing(false);
        let idx: Vec<usize> = (0..50).collect();
        t.step(&data.train, &idx).unwrap(); // warm-up (lazy statics, CPU feature detection)
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for s in 0..4 {
            let batch: Vec<usize> = (50 * s..50 * s + 50).collect();
            let counted = ALLOCATIONS.load(Ordering::Relaxed);
            t.step(&data.train, &batch).unwrap();
            assert_eq!(
                ALLOCATIONS.load(Ordering::Relaxed),
                counted,
                "{rule:?} on {threads} threads: step {s} allocated"
            );
        }
        assert!(
            ALLOCATIONS.load(Ordering::Relaxed) >= before + 4,
            "the batch vectors are counted"
        );
    }
}
