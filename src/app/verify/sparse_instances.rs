//! Sparse QP layers for the tests and the growth benchmarks, in the frameworks' convention
//! ([`SparseQpData`]: `min ½zᵀQz + pᵀz`, `Gz ≤ h`, `Az = b`), each built backwards from a
//! chosen solution and an activity label per row (as [`super::instances`]), so that weakly
//! active rows are present on purpose and the answer is known:
//!
//! * [`banded`]: a chain (`Q` tridiagonal, bounds on every third unit, differences of
//!   neighbours on every fifth), the shape of a control problem over time; every product is
//!   exact in `f64`, so its weak rows are exact ties;
//! * [`random_sparse`]: `Q` and `G` with about `per_row` random entries per row (`m = n/2`);
//! * [`box_projection`] and [`simplex_projection`]: projections, `Q = I`.

use nalgebra::DVector;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::layer::SparseQpData;
use crate::linalg::{csc_from_triplets, Csc};
use crate::prox::Activity::{self, Inactive, Strong, Weak};

/// A sparse layer with its solution and labels by construction.
#[derive(Debug, Clone)]
pub struct SparseInstance {
    /// The layer's data.
    pub data: SparseQpData,
    /// `z*` by construction.
    pub z_star: DVector<f64>,
    /// Each row of `G`: its activity by construction.
    pub labels: Vec<Activity>,
}

/// Labels cycling strong, weak, inactive.
fn cycling(m: usize) -> Vec<Activity> {
    (0..m).map(|r| [Strong, Weak, Inactive][r % 3]).collect()
}

fn csc(nrows: usize, ncols: usize, entries: &[(usize, usize, f64)]) -> Csc {
    csc_from_triplets(nrows, ncols, entries).expect("entries within the shape, finite")
}

/// `h` and `p` from `z*`, the multipliers `ν ≥ 0` and the labels: `h = Gz* (+ a gap on the
/// inactive rows)`, `p = −(Qz* + Gᵀν)` (stationarity `Qz + p + Gᵀν = 0`).
fn backwards(
    q: Csc,
    g: Csc,
    z: DVector<f64>,
    nu: &DVector<f64>,
    labels: Vec<Activity>,
) -> SparseInstance {
    let mul = |a: &Csc, x: &DVector<f64>, transpose: bool| {
        let mut y = DVector::zeros(if transpose { a.ncols() } else { a.nrows() });
        crate::linalg::for_each_entry(a, |i, j, v| {
            if transpose {
                y[j] += v * x[i];
            } else {
                y[i] += v * x[j];
            }
        });
        y
    };
    let gz = mul(&g, &z, false);
    let h = DVector::from_fn(g.nrows(), |r, _| {
        gz[r] + if labels[r] == Inactive { 0.75 } else { 0.0 }
    });
    let p = -(mul(&q, &z, false) + mul(&g, nu, true));
    let n = z.len();
    SparseInstance {
        data: SparseQpData {
            q,
            p,
            g,
            h,
            a: csc(0, n, &[]),
            b: DVector::zeros(0),
        },
        z_star: z,
        labels,
    }
}

/// The chain of `n` units (module docs): `Q` with 2.5 on the diagonal and −1 beside it
/// (strictly diagonally dominant), `z*` and the multipliers in quarters.
pub fn banded(n: usize) -> SparseInstance {
    let z = DVector::from_fn(n, |i, _| ((i * 7) % 11) as f64 / 4.0 - 1.0);
    let mut q = Vec::with_capacity(3 * n);
    for i in 0..n {
        q.push((i, i, 2.5));
        if i + 1 < n {
            q.push((i, i + 1, -1.0));
            q.push((i + 1, i, -1.0));
        }
    }
    let (mut g, mut rows) = (Vec::new(), 0);
    for i in (0..n).step_by(3) {
        g.push((rows, i, 1.0));
        rows += 1;
    }
    for i in (1..n.saturating_sub(1)).step_by(5) {
        g.push((rows, i, 1.0));
        g.push((rows, i + 1, -1.0));
        rows += 1;
    }
    let labels = cycling(rows);
    let nu = DVector::from_fn(rows, |r, _| {
        if labels[r] == Strong {
            0.5 + (r % 4) as f64
        } else {
            0.0
        }
    });
    backwards(csc(n, n, &q), csc(rows, n, &g), z, &nu, labels)
}

/// `Q` symmetric with about `per_row` random off-diagonal entries per row in `[-1, 1]` and
/// the diagonal `1 + Σ_j |Q_ij|` (strictly diagonally dominant, so positive definite); `m =
/// n/2` rows of `G`, each with a column of its own (so the rows are independent) and about
/// `per_row − 1` random entries among the columns no row owns; labels cycling strong, weak,
/// inactive.
pub fn random_sparse(rng: &mut StdRng, n: usize, per_row: usize) -> SparseInstance {
    let mut q = Vec::with_capacity(n * (2 * per_row + 1));
    let mut diagonal = vec![1.0; n];
    for _ in 0..n * per_row / 2 {
        let (i, j) = (rng.random_range(0..n), rng.random_range(0..n));
        if i != j {
            let v: f64 = rng.random_range(-1.0..1.0);
            q.push((i, j, v));
            q.push((j, i, v));
            diagonal[i] += v.abs();
            diagonal[j] += v.abs();
        }
    }
    q.extend(diagonal.iter().enumerate().map(|(i, &d)| (i, i, d)));
    let m = n / 2;
    let mut columns: Vec<usize> = (0..n).collect();
    columns.shuffle(rng);
    let (own, shared) = columns.split_at(m);
    let mut g = Vec::with_capacity(m * per_row);
    for (r, &c) in own.iter().enumerate() {
        g.push((r, c, rng.random_range(1.0..2.0)));
        for _ in 1..per_row.max(1) {
            let c = shared[rng.random_range(0..shared.len())];
            g.push((r, c, rng.random_range(-1.0..1.0)));
        }
    }
    let labels = cycling(m);
    let z = DVector::from_fn(n, |_, _| rng.random_range(-1.0..1.0));
    let nu = DVector::from_fn(m, |r, _| {
        if labels[r] == Strong {
            rng.random_range(0.5..2.0)
        } else {
            0.0
        }
    });
    backwards(csc(n, n, &q), csc(m, n, &g), z, &nu, labels)
}

/// The projection of `y` onto the box `[−1, 1]ⁿ` (`Q = I`, `p = −y`, `G = [I; −I]`): unit `i`
/// above, on (weakly, `y_i = ±1` exactly) or inside its bounds by a cycle of `i`.
pub fn box_projection(n: usize) -> SparseInstance {
    let q: Vec<_> = (0..n).map(|i| (i, i, 1.0)).collect();
    let mut g = Vec::with_capacity(2 * n);
    for i in 0..n {
        g.push((i, i, 1.0));
        g.push((n + i, i, -1.0));
    }
    // y cycles: 1.5 (upper strong), 1 (upper weak), 0.25 (inside), −1 (lower weak), −2.
    let y: DVector<f64> = DVector::from_fn(n, |i, _| [1.5, 1.0, 0.25, -1.0, -2.0][i % 5]);
    let z = y.map(|v: f64| v.clamp(-1.0, 1.0));
    let labels = (0..2 * n)
        .map(|r| {
            // Row r < n is z_i ≤ 1, row n + i is −z_i ≤ 1: y beyond the bound, on it, inside.
            let v = if r < n { y[r] } else { -y[r - n] };
            match v.total_cmp(&1.0) {
                std::cmp::Ordering::Greater => Strong,
                std::cmp::Ordering::Equal => Weak,
                std::cmp::Ordering::Less => Inactive,
            }
        })
        .collect();
    let data = SparseQpData {
        q: csc(n, n, &q),
        p: -&y,
        g: csc(2 * n, n, &g),
        h: DVector::from_element(2 * n, 1.0),
        a: csc(0, n, &[]),
        b: DVector::zeros(0),
    };
    SparseInstance {
        data,
        z_star: z,
        labels,
    }
}

/// The projection of `y` onto the probability simplex (`Q = I`, `p = −y`, `−z ≤ 0`,
/// `1ᵀz = 1`), `y` chosen so that the threshold is exactly `τ = 1/4`: `y_i ∈ {0.25 + 4/n·k}`
/// above it on a quarter of the units, `y_i = τ` (weak) on a quarter, below it on the rest.
pub fn simplex_projection(n: usize) -> SparseInstance {
    let above = n / 4;
    // z_i = y_i − τ on the units above τ; their sum must be 1: each 4/n (n divisible by 4 is
    // not required: the last one takes the remainder).
    let share = 1.0 / above.max(1) as f64;
    let y = DVector::from_fn(n, |i, _| match i % 4 {
        0 if i / 4 < above => 0.25 + share,
        1 => 0.25,
        _ => 0.25 - 0.5,
    });
    let z = y.map(|v: f64| (v - 0.25).max(0.0));
    let labels = (0..n)
        .map(|i| match y[i].total_cmp(&0.25) {
            std::cmp::Ordering::Greater => Inactive,
            std::cmp::Ordering::Equal => Weak,
            std::cmp::Ordering::Less => Strong,
        })
        .collect();
    let q: Vec<_> = (0..n).map(|i| (i, i, 1.0)).collect();
    let g: Vec<_> = (0..n).map(|i| (i, i, -1.0)).collect();
    let a: Vec<_> = (0..n).map(|i| (0, i, 1.0)).collect();
    let data = SparseQpData {
        q: csc(n, n, &q),
        p: -&y,
        g: csc(n, n, &g),
        h: DVector::zeros(n),
        a: csc(1, n, &a),
        b: DVector::from_element(1, 1.0),
    };
    SparseInstance {
        data,
        z_star: z,
        labels,
    }
}
