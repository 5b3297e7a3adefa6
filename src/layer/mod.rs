//! QP layers as the deep-learning frameworks write them (qpth's and OptNet's convention), every
//! input differentiable, in batches whose items each have their own data.
//!
//! An item is
//! <div class="math">
//!
//! $$ z^\star = \arg\min_z \tfrac12 z^\top Q z + p^\top z \quad \text{s.t.} \quad G z \le h,
//! \; A z = b, $$
//!
//! </div>
//!
//! the crate's [`QuadraticProblem`] with `c = −p`, inequality rows `−G z ≥ −h` and equality rows
//! `A z = b` (no `θ`: the data are the parameters). [`solve`] solves every item of a batch
//! (on `threads` threads, one factorization per item, results independent of the thread
//! count); [`QpSolution::gradients`] then gives, for an upstream gradient `∂ℓ/∂z*`, the
//! gradients of `ℓ(z*)` with respect to `Q, p, G, h, A, b` from the data gradients of
//! [`QuadraticProblem::data_gradients`] (Prop. 2: one-sided at weakly active rows, with the
//! branch each took), or of Def. 1's contrastive surrogate at a finite `β`
//! ([`QuadraticProblem::surrogate_data_gradients`]). In this convention
//! `∂ℓ/∂p = ż`, `∂ℓ/∂Q = ½(ż z*ᵀ + z* żᵀ)`, `∂ℓ/∂G = μ z*ᵀ + λ* żᵀ`, `∂ℓ/∂h = −μ`,
//! `∂ℓ/∂A = −(μ_eq z*ᵀ + λ*_eq żᵀ)`, `∂ℓ/∂b = μ_eq` with `ż` and the multiplier rates `μ`,
//! `μ_eq` of Eq. 17 for the linear loss `gᵀz`, `g = ∂ℓ/∂z*` (the signs of `G`, `h` flip with
//! the rows').
//!
//! Sparse items ([`SparseQpData`]: `Q`, `G`, `A` as [`crate::linalg::Csc`]) go through
//! [`solve_sparse`] and [`SparseQpSolution::gradients`] (the exact derivative, the gradients on
//! the data's sparsity patterns; `sparse.rs`), or [`SparseQpSolution::gradients_in`] for every
//! [`Mode`] (the finite-β ones from the offset problem on sparse factorizations), without
//! forming anything `n × n`. Dense items that are large and sparse take that path too
//! ([`prefers_sparse`], measured in the results guide; [`solve_with`] and [`SolvePath`] choose
//! explicitly), with the same answers in every mode, the gradients on every entry as from the
//! dense path.

mod parametric;
mod sparse;

pub use parametric::{
    SparseCentered, SparseLayerDerivative, SparseQuadraticLayer, SparseSurrogate,
};

pub use sparse::{
    gradients_sparse, solve_sparse, SparseQpData, SparseQpGradients, SparseQpSolution,
};

use nalgebra::{DMatrix, DVector};

use crate::linalg::{csc_from_dense, csc_to_dense, team_for, Threads};

use crate::error::{Error, Result};
use crate::problem::{
    InnerProblem, InnerSolution, LayerGradients, LinearConstraints, Loss, QuadraticProblem,
};
use crate::prox::{Activity, Branch};
use crate::solve::qp::Tolerances;
use crate::surrogate::{map_items, Bilevel};

/// One item's data: `min ½zᵀQz + pᵀz` s.t. `Gz ≤ h`, `Az = b` (`G`, `A` may have no rows).
#[derive(Debug, Clone, PartialEq)]
pub struct QpData {
    /// Symmetric positive definite `n × n`.
    pub q: DMatrix<f64>,
    /// Linear term, length `n`.
    pub p: DVector<f64>,
    /// Inequality rows `m × n` (`Gz ≤ h`).
    pub g: DMatrix<f64>,
    /// Inequality right-hand side, length `m`.
    pub h: DVector<f64>,
    /// Equality rows `k × n`.
    pub a: DMatrix<f64>,
    /// Equality right-hand side, length `k`.
    pub b: DVector<f64>,
}

impl QpData {
    /// The item as the crate's layer: `c = −p`, rows `−G z ≥ −h`, `A z = b`.
    ///
    /// # Errors
    /// Shapes, non-finite entries and a `Q` that is not symmetric positive definite, naming
    /// the argument in this convention (`Q`, `p`, `G, h`, `A, b`).
    pub fn problem(&self, tol: Tolerances) -> Result<QuadraticProblem> {
        self.problem_on(tol, &Threads::default())
    }

    /// [`QpData::problem`] with `Q`'s factorization cut over `threads` (the same layer).
    fn problem_on(&self, tol: Tolerances, threads: &Threads) -> Result<QuadraticProblem> {
        self.check_shapes()?;
        let n = self.q.nrows();
        let constraints = LinearConstraints {
            a: -&self.g,
            b: -&self.h,
            a_eq: self.a.clone(),
            b_eq: self.b.clone(),
        };
        let empty = DMatrix::zeros(n, 0);
        Ok(
            QuadraticProblem::new_on(threads, self.q.clone(), empty, -&self.p, constraints)?
                .with_tolerances(tol)
                .without_condition_estimates(),
        )
    }
}

impl QpData {
    /// Checks shapes and finiteness, naming the argument in this convention (`Q`, `p`, `G, h`,
    /// `A, b`).
    ///
    /// # Errors
    /// [`Error::DimensionMismatch`], [`Error::NonFinite`].
    pub fn check_shapes(&self) -> Result<()> {
        let n = self.q.nrows();
        let shape = |m: &DMatrix<f64>| format!("{} x {}", m.nrows(), m.ncols());
        if self.q.ncols() != n {
            return Err(Error::dim("Q", format!("{n} x {n}"), shape(&self.q)));
        }
        let blocks = [("G, h", &self.g, &self.h), ("A, b", &self.a, &self.b)]
            .map(|(name, rows, rhs)| (name, rows.shape(), rhs.len()));
        check_blocks(n, self.p.len(), blocks)?;
        let parts = [
            ("Q", self.q.as_slice()),
            ("p", self.p.as_slice()),
            ("G", self.g.as_slice()),
            ("h", self.h.as_slice()),
            ("A", self.a.as_slice()),
            ("b", self.b.as_slice()),
        ];
        for (name, values) in parts {
            crate::error::check_finite(name, values.iter())?;
        }
        Ok(())
    }
}

/// The shape checks both conventions share (dense [`QpData`], [`SparseQpData`]): `p` of length
/// `n`, and each row block (`G, h`; `A, b`) of shape `(rows, cols)` with `n` columns and as many
/// rows as its right-hand side has entries.
fn check_blocks(n: usize, p: usize, blocks: [(&str, (usize, usize), usize); 2]) -> Result<()> {
    if p != n {
        return Err(Error::dim("p", n, p));
    }
    for (name, (rows, cols), rhs) in blocks {
        if cols != n || rows != rhs {
            return Err(Error::dim(
                name,
                format!("{rhs} x {n} and {rhs}"),
                format!("{rows} x {cols} and {rhs}"),
            ));
        }
    }
    Ok(())
}

impl From<&SparseQpData> for QpData {
    /// The dense item of sparse data.
    fn from(data: &SparseQpData) -> Self {
        QpData {
            q: csc_to_dense(&data.q),
            p: data.p.clone(),
            g: csc_to_dense(&data.g),
            h: data.h.clone(),
            a: csc_to_dense(&data.a),
            b: data.b.clone(),
        }
    }
}

impl From<&QpData> for SparseQpData {
    /// The sparse item of dense data (its non-zero entries).
    fn from(item: &QpData) -> Self {
        SparseQpData {
            q: csc_from_dense(&item.q),
            p: item.p.clone(),
            g: csc_from_dense(&item.g),
            h: item.h.clone(),
            a: csc_from_dense(&item.a),
            b: item.b.clone(),
        }
    }
}

/// Which derivative [`QpSolution::gradients`] returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// The exact (one-sided at weakly active rows) derivative of `ℓ(z*)`: Props. 1-2.
    Limit,
    /// The gradient of Def. 1's contrastive surrogate of the linearized loss at `β > 0`.
    Contrastive(f64),
    /// The mean of the contrastive surrogates at `+β` and `−β` (`O(β²)` from the limit).
    Centered(f64),
}

/// One item's solution, kept for its gradients.
#[derive(Debug)]
pub struct QpSolution {
    solved: Solved,
}

/// The path an item was solved on ([`SolvePath`]). Both variants are large (a factorization's
/// handles and the solution); one lives per item, so neither is boxed.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Solved {
    Dense {
        layer: QuadraticProblem,
        z_star: InnerSolution,
    },
    /// The sparse path (every mode, finite-β ones included, on its own factorizations).
    Sparse { solution: SparseQpSolution },
}

/// Which path [`solve_with`] takes for an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SolvePath {
    /// The sparse path when the item is large and sparse ([`prefers_sparse`]), else the dense.
    #[default]
    Auto,
    /// The dense dual active-set method on a kept factorization.
    Dense,
    /// The sparse path ([`solve_sparse`]): the item's matrices are read as sparse.
    Sparse,
}

/// Settings of [`solve_with`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerSettings {
    /// Threads for the items (at least 1; results do not depend on the count). Threads left
    /// over when there are fewer items cut each dense item's factorization
    /// ([`crate::problem::InnerProblem::prepare`]).
    pub threads: usize,
    /// The activity tests' tolerances.
    pub tol: Tolerances,
    /// Dense, sparse, or chosen per item (default).
    pub path: SolvePath,
}

impl Default for LayerSettings {
    fn default() -> Self {
        Self {
            threads: 1,
            tol: Tolerances::default(),
            path: SolvePath::Auto,
        }
    }
}

/// [`SolvePath::Auto`]'s rule: the sparse path when `n ≥ 500` and at most 5 % of the entries of `Q`,
/// `G` and `A` are non-zero. Measured (the results guide, "Sparse QP layers"): the sparse path
/// is 1.7–1650 times faster at n = 1000 on banded, projection and random layers of about 1 %
/// density, and the dense one up to 5 times faster on random layers of n ≤ 300.
pub fn prefers_sparse(item: &QpData) -> bool {
    let n = item.q.nrows();
    let stored: usize = [&item.q, &item.g, &item.a]
        .iter()
        .map(|m| m.iter().filter(|v| **v != 0.0).count())
        .sum();
    let entries = n * (n + item.g.nrows() + item.a.nrows());
    n >= 500 && (stored as f64) <= 0.05 * entries as f64
}

/// What an item's solve and derivative did: the solver, its iterations and residual, each
/// inequality row's activity, and at weakly active rows the branch the derivative took.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ItemStatus {
    /// The QP solver that found `z*`.
    pub solver: &'static str,
    /// Its iterations.
    pub iterations: usize,
    /// The KKT residual of `z*` (∞-norm).
    pub residual: f64,
    /// Each inequality row of `G`: strongly active, weakly active or inactive.
    pub activity: Vec<Activity>,
    /// At weakly active rows, the branch of the last derivative (`None` before one, or at
    /// other rows).
    pub branches: Vec<Option<Branch>>,
}

/// The gradients of `ℓ(z*)` (or of its surrogate) with respect to one item's data, shaped like
/// [`QpData`].
#[derive(Debug, Clone, PartialEq)]
pub struct QpGradients {
    /// `∂/∂Q` (symmetric).
    pub q: DMatrix<f64>,
    /// `∂/∂p`.
    pub p: DVector<f64>,
    /// `∂/∂G`.
    pub g: DMatrix<f64>,
    /// `∂/∂h`.
    pub h: DVector<f64>,
    /// `∂/∂A`.
    pub a: DMatrix<f64>,
    /// `∂/∂b`.
    pub b: DVector<f64>,
    /// The item's status, with the branches this derivative took.
    pub status: ItemStatus,
}

impl QpSolution {
    /// `z*`.
    pub fn z(&self) -> &DVector<f64> {
        match &self.solved {
            Solved::Dense { z_star, .. } => &z_star.z,
            Solved::Sparse { solution } => solution.z(),
        }
    }

    /// The solve's status (no branches yet).
    pub fn status(&self) -> ItemStatus {
        let z_star = match &self.solved {
            Solved::Dense { z_star, .. } => z_star,
            Solved::Sparse { solution } => return solution.status(),
        };
        let s = &z_star.status;
        ItemStatus {
            solver: s.solver,
            iterations: s.iterations,
            residual: s.residual,
            activity: z_star.activity.clone(),
            branches: vec![None; z_star.activity.len()],
        }
    }

    /// The gradients with respect to the item's data for the upstream gradient
    /// `grad_z = ∂ℓ/∂z*` (module docs).
    ///
    /// # Errors
    /// `grad_z` of another length or not finite; a non-positive `β`; the direction QP's errors.
    pub fn gradients(&self, grad_z: &DVector<f64>, mode: Mode) -> Result<QpGradients> {
        let (layer, z_star) = match &self.solved {
            Solved::Dense { layer, z_star } => (layer, z_star),
            Solved::Sparse { solution } => return dense_gradients(solution, grad_z, mode),
        };
        let n = z_star.z.len();
        if grad_z.len() != n {
            return Err(Error::dim("grad_z", n, grad_z.len()));
        }
        crate::error::check_finite("grad_z", grad_z.iter())?;
        let loss = Loss::Linear { g: grad_z.clone() };
        let theta = DVector::zeros(0);
        let (ours, branches) = match mode {
            Mode::Limit => {
                let program = Bilevel::new(layer, loss)?.with_tolerances(*layer.tolerances());
                let limit = program.limit_with(&theta, z_star.clone())?;
                let g = layer.data_gradients(&theta, &limit.z_star, &limit.direction)?;
                (g, limit.direction.branches)
            }
            Mode::Contrastive(beta) => (
                surrogate((layer, z_star), &loss, beta)?,
                vec![None; z_star.activity.len()],
            ),
            Mode::Centered(beta) => {
                // (D₊ − D₋)/2 with D± the surrogate's rate terms at ±β (each at |β|): the mean
                // of L^β and L^{−β}, as [`Bilevel::centered`] for θ.
                let plus = surrogate((layer, z_star), &loss, beta)?;
                let minus = surrogate((layer, z_star), &loss, -beta)?;
                (
                    half_difference(plus, &minus),
                    vec![None; z_star.activity.len()],
                )
            }
        };
        let c = &ours.constraints;
        Ok(QpGradients {
            q: ours.q,
            p: -ours.c,
            g: -&c.a,
            h: -&c.b,
            a: c.a_eq.clone(),
            b: c.b_eq.clone(),
            status: ItemStatus {
                branches,
                ..self.status()
            },
        })
    }
}

/// The rate terms of Def. 1's surrogate at `β` (`β < 0`: the offset at `−|β|`, its terms at
/// `|β|`; [`QuadraticProblem::surrogate_data_gradients`]).
fn surrogate(
    (layer, z_star): (&QuadraticProblem, &InnerSolution),
    loss: &Loss,
    beta: f64,
) -> Result<LayerGradients> {
    crate::error::check_beta(beta.abs())?;
    let theta = DVector::zeros(0);
    let offset = layer.offset(&theta, loss, beta, z_star)?;
    layer.surrogate_data_gradients(&theta, z_star, &offset, beta.abs())
}

/// The dense gradients (every entry of `Q`, `G`, `A`, as the dense path gives them) from a
/// sparse solution: its rates in `mode` evaluated at every entry, by the formulas the sparse
/// gradients use at the stored ones ([`SparseQpSolution::gradients_in`]).
fn dense_gradients(
    solution: &SparseQpSolution,
    grad_z: &DVector<f64>,
    mode: Mode,
) -> Result<QpGradients> {
    let rates = solution.rates(grad_z, mode, false)?;
    let (n, (m, k)) = (
        grad_z.len(),
        (
            rates.status().activity.len(),
            solution.multipliers().1.len(),
        ),
    );
    let (p, h, b) = rates.vectors();
    Ok(QpGradients {
        q: DMatrix::from_fn(n, n, |i, j| rates.q(i, j)),
        p,
        g: DMatrix::from_fn(m, n, |i, j| rates.g(i, j)),
        h,
        a: DMatrix::from_fn(k, n, |i, j| rates.a(i, j)),
        b,
        status: rates.status(),
    })
}

/// One item on the dense path.
fn dense_solution(item: &QpData, tol: Tolerances, threads: usize) -> Result<QpSolution> {
    // Q's Cholesky factor (n³/3), then V = L⁻¹Cᵀ and G = VᵀV for the r rows.
    let (n, r) = (item.q.nrows(), item.g.nrows() + item.a.nrows());
    let work = ((n * n).saturating_mul(2 * n + 3 * r) / 6).saturating_add(n * r * r / 2);
    let team = team_for(threads, work);
    let layer = item.problem_on(tol, &team)?;
    layer.prepare_on(&team);
    let none = Loss::Linear {
        g: DVector::zeros(layer.dim()),
    };
    let z_star = layer.solve(&DVector::zeros(0), &none, 0.0)?;
    Ok(QpSolution {
        solved: Solved::Dense { layer, z_star },
    })
}

/// One item on the sparse path (shapes are checked densely first, with the dense path's names).
fn sparse_solution(item: &QpData, tol: Tolerances) -> Result<QpSolution> {
    let data = SparseQpData::from(item);
    let solution = solve_sparse(std::slice::from_ref(&data), 1, tol)
        .pop()
        .unwrap_or_else(|| Err(Error::input("item", "no item")))?;
    Ok(QpSolution {
        solved: Solved::Sparse { solution },
    })
}

/// `(a − b)/2`, entry by entry.
fn half_difference(a: LayerGradients, b: &LayerGradients) -> LayerGradients {
    let half = |x: DMatrix<f64>, y: &DMatrix<f64>| (x - y) * 0.5;
    let halfv = |x: DVector<f64>, y: &DVector<f64>| (x - y) * 0.5;
    let (ca, cb) = (a.constraints, &b.constraints);
    LayerGradients {
        q: half(a.q, &b.q),
        b: half(a.b, &b.b),
        c: halfv(a.c, &b.c),
        constraints: LinearConstraints {
            a: half(ca.a, &cb.a),
            b: halfv(ca.b, &cb.b),
            a_eq: half(ca.a_eq, &cb.a_eq),
            b_eq: halfv(ca.b_eq, &cb.b_eq),
        },
    }
}

/// Solves every item (on up to `threads` threads, contiguous chunks, results in order and
/// independent of the count): each item's solution or its error.
///
/// ```
/// use bilevel::layer::{solve, Mode, QpData};
/// use bilevel::nalgebra::{dmatrix, dvector, DMatrix, DVector};
///
/// // Projection of −p onto z ≥ 0 (G = −I, h = 0): the second unit sits on its bound.
/// let item = QpData {
///     q: DMatrix::identity(2, 2), p: dvector![-1.0, 0.0],
///     g: -DMatrix::identity(2, 2), h: dvector![0.0, 0.0],
///     a: DMatrix::zeros(0, 2), b: DVector::zeros(0),
/// };
/// let solved = solve(&[item], 1, Default::default());
/// let sol = solved[0].as_ref().unwrap();
/// assert_eq!(sol.z(), &dvector![1.0, 0.0]);
/// // ℓ = z₂ pulls the unit down: it stays on the bound, ∂ℓ/∂p₂ = 0 (one-sided); ℓ = −z₂ lifts it.
/// let down = sol.gradients(&dvector![0.0, 1.0], Mode::Limit)?;
/// let up = sol.gradients(&dvector![0.0, -1.0], Mode::Limit)?;
/// assert_eq!((down.p[1], up.p[1]), (0.0, 1.0));
/// # Ok::<(), bilevel::Error>(())
/// ```
pub fn solve(items: &[QpData], threads: usize, tol: Tolerances) -> Vec<Result<QpSolution>> {
    solve_with(
        items,
        &LayerSettings {
            threads,
            tol,
            path: SolvePath::Auto,
        },
    )
}

/// [`solve`] with the path chosen by `settings` ([`SolvePath`]; [`SolvePath::Auto`]: per item by
/// [`prefers_sparse`]). Either path gives the same `z*`, activities and limit gradients (to
/// rounding); the status names the solver that ran.
pub fn solve_with(items: &[QpData], settings: &LayerSettings) -> Vec<Result<QpSolution>> {
    let threads = settings.threads.max(1);
    // Threads the batch leaves over cut each item's factorization (bit-identical results).
    let per_item = (threads / items.len().max(1)).max(1);
    map_items(items.len(), threads, |i| {
        let item = &items[i];
        let sparse = match settings.path {
            SolvePath::Auto => prefers_sparse(item),
            SolvePath::Dense => false,
            SolvePath::Sparse => true,
        };
        if sparse {
            // The dense checks name the arguments in this convention and test `Q` as the dense
            // path would; only then the sparse solve.
            item.check_shapes()?;
            sparse_solution(item, settings.tol)
        } else {
            dense_solution(item, settings.tol, per_item)
        }
    })
}

/// [`QpSolution::gradients`] for every item with its upstream gradient, on up to `threads`
/// threads (results in order, independent of the count).
///
/// # Errors
/// `grads` of another length than `solutions` ([`Error::DimensionMismatch`]); each item's
/// errors are [`QpSolution::gradients`]'s.
pub fn gradients(
    solutions: &[QpSolution],
    grads: &[DVector<f64>],
    mode: Mode,
    threads: usize,
) -> Result<Vec<Result<QpGradients>>> {
    if grads.len() != solutions.len() {
        return Err(Error::dim("grad_z (batch)", solutions.len(), grads.len()));
    }
    Ok(map_items(solutions.len(), threads.max(1), |i| {
        solutions[i].gradients(&grads[i], mode)
    }))
}
