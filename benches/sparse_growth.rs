//! Cost growth of the sparse QP layer (`layer::solve_sparse` + the exact one-sided gradients of
//! a linear loss) over the sparse families of `app::verify::sparse_instances`, with the dense
//! layer on the same data where it fits (n ≤ `--dense-max`, default 2000) for the crossover:
//! median time and peak heap of each, and the fitted growth exponents. Each instance is also
//! written as JSON (triplets) for `benches/peers/sparse_layers.py`, which times proxsuite's
//! sparse backend, Clarabel and OSQP on the very same data, and the measurements as the growth
//! table `growth-<family>.csv` (`bilevel plot --growth` draws it, log–log).
//!
//! Run: `cargo bench --bench sparse_growth -- --family banded --sizes 100,1000,10000`
//! (`--family random|box|simplex`, `--repeats N`, `--out DIR`, `--dense-max N`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use bilevel::app::plot::{growth_csv, GrowthRow};
use bilevel::app::verify::fitted_slope;
use bilevel::app::verify::instances::{rng, vector};
use bilevel::app::verify::sparse_instances::{
    banded, box_projection, random_sparse, simplex_projection, SparseInstance,
};
use bilevel::layer::{
    solve_sparse, solve_with, LayerSettings, Mode, QpData, SolvePath, SparseQpData,
};
use bilevel::linalg::Csc;
use bilevel::nalgebra::DVector;

/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to `System` with the caller's own arguments; the counters are
// bookkeeping only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = IN_USE.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(now, Relaxed);
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` once and returns the heap it added at its peak, in bytes.
fn peak_bytes(f: impl FnOnce()) -> usize {
    let base = IN_USE.load(Relaxed);
    PEAK.store(base, Relaxed);
    f();
    PEAK.load(Relaxed) - base
}

struct Args {
    family: String,
    sizes: Vec<usize>,
    repeats: usize,
    dense_max: usize,
    out: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        family: "banded".into(),
        sizes: vec![100, 300, 1000, 3000, 10000],
        repeats: 5,
        dense_max: 2000,
        out: PathBuf::from("target/sparse-peers"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--family" => a.family = value(),
            "--sizes" => {
                a.sizes = (value().split(',').map(|s| s.parse().expect("a size"))).collect()
            }
            "--repeats" => a.repeats = value().parse().expect("--repeats N"),
            "--dense-max" => a.dense_max = value().parse().expect("--dense-max N"),
            "--out" => a.out = PathBuf::from(value()),
            _ => {} // `cargo bench` adds `--bench`
        }
    }
    a
}

fn instance(family: &str, n: usize) -> SparseInstance {
    match family {
        "banded" => banded(n),
        "random" => random_sparse(&mut rng(n as u64), n, 8),
        "box" => box_projection(n),
        "simplex" => simplex_projection(n),
        other => panic!("unknown family {other} (banded, random, box, simplex)"),
    }
}

fn main() {
    let a = args();
    std::fs::create_dir_all(&a.out).expect("the output directory");
    println!(
        "{} family: sparse layer, forward + exact gradients (median of {}, one thread)",
        a.family, a.repeats
    );
    println!(
        "{:>7} {:>9} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "n", "nnz", "sparse fwd", "sparse grad", "sparse MB", "dense ms", "dense MB"
    );
    let (mut ns, mut times, mut mems) = (Vec::new(), Vec::new(), Vec::new());
    let mut rows = Vec::new();
    for &n in &a.sizes {
        let inst = instance(&a.family, n);
        let item = &inst.data;
        let g = vector(&mut rng(7), n);
        let forward = median_ms(a.repeats, || {
            let sol = solve_sparse(std::slice::from_ref(item), 1, Default::default());
            assert!(sol[0].is_ok(), "{:?}", sol[0].as_ref().err());
        });
        let sol = solve_sparse(std::slice::from_ref(item), 1, Default::default())
            .pop()
            .unwrap()
            .unwrap();
        let err = (sol.z() - &inst.z_star).amax();
        assert!(err < 1e-10 * (1.0 + inst.z_star.amax()), "n = {n}: {err:e}");
        let grad = median_ms(a.repeats, || {
            sol.gradients(&g).unwrap();
        });
        let memory = peak_bytes(|| {
            let s = solve_sparse(std::slice::from_ref(item), 1, Default::default());
            s[0].as_ref().unwrap().gradients(&g).unwrap();
        });
        let (dense_ms, dense_mb) = if n <= a.dense_max {
            dense_cost(item, &g, a.repeats)
        } else {
            (f64::NAN, f64::NAN)
        };
        let nnz = item.q.val().len() + item.g.val().len() + item.a.val().len();
        let mb = memory as f64 / 1e6;
        println!(
            "{n:>7} {nnz:>9} {forward:>11.2} {grad:>11.2} {mb:>11.2} {dense_ms:>11.2} {dense_mb:>11.2}"
        );
        write_instance(&a, &inst, &g, (forward, grad, mb));
        ns.push(n as f64);
        times.push(forward + grad);
        mems.push(mb);
        let row = |backend: &str, ms: f64, peak_mb: f64| GrowthRow {
            family: a.family.clone(),
            backend: backend.into(),
            n,
            ms,
            peak_mb,
        };
        rows.push(row("bilevel sparse", forward + grad, mb));
        if !dense_ms.is_nan() {
            rows.push(row("bilevel dense", dense_ms, dense_mb));
        }
    }
    let table = a.out.join(format!("growth-{}.csv", a.family));
    std::fs::write(&table, growth_csv(&rows)).expect("the growth table");
    println!(
        "wrote {} (draw with `bilevel plot --growth`)",
        table.display()
    );
    if ns.len() >= 2 {
        println!(
            "fitted exponents (log-log least squares): time {:.2}, peak memory {:.2}",
            fitted_slope(&ns, &times),
            fitted_slope(&ns, &mems)
        );
    }
}

/// The dense layer on the same item: median ms of solve + gradients, and its peak MB.
fn dense_cost(item: &SparseQpData, g: &DVector<f64>, repeats: usize) -> (f64, f64) {
    let dense = QpData::from(item);
    let settings = LayerSettings {
        path: SolvePath::Dense,
        ..LayerSettings::default()
    };
    let run = || {
        // Forced dense: `solve` would choose the sparse path for large sparse items.
        let sol = solve_with(std::slice::from_ref(&dense), &settings);
        sol[0].as_ref().unwrap().gradients(g, Mode::Limit).unwrap();
    };
    let ms = median_ms(repeats, run);
    (ms, peak_bytes(run) as f64 / 1e6)
}

fn median_ms(repeats: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn triplets(a: &Csc) -> String {
    let mut s = String::from("[");
    let (sym, val) = (a.symbolic(), a.val());
    for j in 0..a.ncols() {
        for p in sym.col_range(j) {
            let sep = if s.len() > 1 { "," } else { "" };
            write!(s, "{sep}[{},{j},{:e}]", sym.row_idx()[p], val[p]).unwrap();
        }
    }
    s.push(']');
    s
}

fn vec_json(v: &DVector<f64>) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:e}")).collect();
    format!("[{}]", items.join(","))
}

/// `{out}/{family}-{n}.json`: the item (triplets), the loss gradient and bilevel's figures.
fn write_instance(a: &Args, inst: &SparseInstance, g: &DVector<f64>, ms: (f64, f64, f64)) {
    let (item, n) = (&inst.data, inst.z_star.len());
    let json = format!(
        "{{\"n\":{n},\"z_star\":{},\"family\":\"{}\",\"Q\":{},\"p\":{},\"G\":{},\"h\":{},\"m\":{},\"A\":{},\"b\":{},\"k\":{},\"g\":{},\"bilevel_forward_ms\":{},\"bilevel_gradient_ms\":{},\"bilevel_peak_mb\":{}}}",
        vec_json(&inst.z_star),
        a.family,
        triplets(&item.q),
        vec_json(&item.p),
        triplets(&item.g),
        vec_json(&item.h),
        item.h.len(),
        triplets(&item.a),
        vec_json(&item.b),
        item.b.len(),
        vec_json(g),
        ms.0,
        ms.1,
        ms.2
    );
    let path = a.out.join(format!("{}-{n}.json", a.family));
    std::fs::write(&path, json).expect("the instance file");
}
