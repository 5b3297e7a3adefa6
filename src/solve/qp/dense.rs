//! A dense, exact QP solver that keeps its factorization: the dual active-set method of
//! Goldfarb and Idnani (1983) on the Schur complement of `P`.
//!
//! For the [`Qp`] `min ½xᵀPx + qᵀx` s.t. `C_i x ≥ b_i` (inequality rows) and `C_i x = b_i`
//! (equality rows), with `P = LLᵀ` strictly convex and all rows stacked as `C = [A; A_eq]`,
//! [`DenseFactor`] holds `L`, `V = L⁻¹Cᵀ` and the Gram matrix `G = VᵀV = C P⁻¹ Cᵀ`. Everything
//! after that lives in the space of the multipliers `y`: with `w = L⁻¹q` and `h = b + Vᵀw`,
//! the point of a multiplier vector is `x(y) = L⁻ᵀ(Vy − w)` and every row's slack is
//! `C_i x(y) − b_i = (Gy − h)_i`. So the KKT point of a working set `W` (rows held as
//! equalities) is one `|W| × |W|` solve `G_WW y_W = h_W`, and the dual active-set method —
//! from the unconstrained minimizer, add the most violated row, move its multiplier up while the
//! working rows stay active, drop a working inequality whose multiplier reaches zero first —
//! costs `O(|W|³)` per step and no `O(n³)` work at all. The factorization depends on `P` and `C`
//! only, so one serves every `q` and `b` (a layer at many `θ`, Prop. 2's direction problem on
//! the same rows, a batch), and every subset of the rows (`Row::Off` leaves one out).
//!
//! The method's dual objective increases strictly at every step, so it terminates; a row that
//! is a non-negative combination of the working rows and still violated is a Farkas certificate
//! ([`Error::Infeasible`]). The final point is refined once on the full KKT residual; callers
//! check it ([`super::solve_exact_dense`] continues on the null-space solve if a sign or
//! accuracy check fails).

use std::sync::Arc;

use nalgebra::{Cholesky, DMatrix, DVector, Dyn};

use super::problem::{Qp, QpBackend, QpRaw};
use crate::error::{Error, Result};
use crate::linalg::{power_of_two_scale, KktSolution, Threads};

/// [`Error::Singular`]'s message when the equality rows held from the start are dependent
/// (callers set such rows aside and solve again).
pub(super) const DEPENDENT_EQUALITIES: &str =
    "linearly dependent equality constraints (LICQ fails)";

/// The name the dense dual active-set method reports as its backend.
pub const DENSE: &str = "dense active set";

/// The dense dual active-set method as a [`QpBackend`] (it needs `P` positive definite). Its
/// answer is already exact; [`super::solve_exact`] confirms it. Problems that keep their
/// data ([`crate::problem::QuadraticProblem`]) call [`super::solve_exact_dense`] with a
/// stored [`DenseFactor`] instead, which skips the factorization.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenseActiveSet;

impl QpBackend for DenseActiveSet {
    fn name(&self) -> &'static str {
        DENSE
    }

    fn solve(&self, qp: &Qp) -> Result<QpRaw> {
        qp.validate()?;
        let m = qp.b.len();
        let sol = solve_qp(qp)?;
        Ok(QpRaw {
            x: sol.x,
            lambda: sol.y.rows(0, m).into_owned(),
            lambda_eq: sol.y.rows(m, qp.b_eq.len()).into_owned(),
            iterations: sol.steps,
            reduced_accuracy: false,
        })
    }
}

/// How a stacked row takes part in one solve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    /// `C_i x ≥ b_i`.
    Inequality,
    /// `C_i x = b_i`.
    Equality,
    /// Left out of this solve.
    Off,
}

/// `L`, `V = L⁻¹Cᵀ` and `G = VᵀV` for `P = LLᵀ` and the stacked rows `C` (module docs), each
/// row first multiplied by the power of two that brings its ∞-norm into `[1, 2)` (exact in
/// floating point: the method's answer is the same, without `‖c_i‖²` overflowing in `G` for
/// rows of 1e300, and its tests compare rows of like size).
#[derive(Debug, Clone)]
pub struct DenseFactor {
    p: Arc<DMatrix<f64>>, // shared with the layer that holds it
    /// The stacked rows `C = [A; A_eq]`, equilibrated.
    c: DMatrix<f64>,
    /// Row `i` of `c` is `scale[i]` times the given row.
    scale: DVector<f64>,
    chol: Cholesky<f64, Dyn>,
    v: DMatrix<f64>,
    gram: DMatrix<f64>,
}

/// The exact point of a working set, from [`DenseFactor::solve`].
#[derive(Debug, Clone)]
pub struct DenseSolution {
    /// The primal point.
    pub x: DVector<f64>,
    /// Multipliers of every stacked row (`0` off the working set), in the convention of
    /// [`Qp`]: `P x + q − Cᵀy = 0`.
    pub y: DVector<f64>,
    /// The working set (`true`: held as an equality).
    pub working: Vec<bool>,
    /// Steps of the active-set method (rows added or dropped).
    pub steps: usize,
    /// ∞-norms of the refinement's correction of `x` and of the multipliers of the
    /// equilibrated rows (error estimates; see [`DenseFactor`]).
    pub error: (f64, f64),
}

impl DenseFactor {
    /// Factors `P` and the rows `[A; A_eq]`.
    ///
    /// # Errors
    /// [`Error::NotPositiveDefinite`] when `P` is not (the method needs a strictly convex QP);
    /// [`Error::DimensionMismatch`] for rows of another width.
    pub fn new(p: &DMatrix<f64>, a: &DMatrix<f64>, a_eq: &DMatrix<f64>) -> Result<Self> {
        if p.nrows() != p.ncols() {
            return Err(Error::dim("P", p.nrows(), p.ncols()));
        }
        let chol = crate::linalg::cholesky(p).ok_or_else(|| Error::NotPositiveDefinite {
            what: "P".into(),
            reason: "the dense active-set solver needs a strictly convex QP".into(),
        })?;
        Self::with_cholesky_on(&Threads::default(), Arc::new(p.clone()), chol, (a, a_eq))
    }

    /// [`DenseFactor::new`] with `P = LLᵀ` already factored (`chol`, of this `P`).
    ///
    /// # Errors
    /// [`Error::DimensionMismatch`] for rows or a factor of another width.
    pub fn with_cholesky(
        p: &DMatrix<f64>,
        chol: Cholesky<f64, Dyn>,
        a: &DMatrix<f64>,
        a_eq: &DMatrix<f64>,
    ) -> Result<Self> {
        Self::with_cholesky_on(&Threads::default(), Arc::new(p.clone()), chol, (a, a_eq))
    }

    /// [`DenseFactor::with_cholesky`] with `V = L⁻¹Cᵀ` and `G = VᵀV` cut by columns over
    /// `threads`, bit-identical for every count ([`crate::linalg::solve_lower_columns`]).
    pub(crate) fn with_cholesky_on(
        threads: &Threads,
        p: Arc<DMatrix<f64>>,
        chol: Cholesky<f64, Dyn>,
        (a, a_eq): (&DMatrix<f64>, &DMatrix<f64>),
    ) -> Result<Self> {
        let n = p.nrows();
        for (name, rows) in [
            ("A", a),
            ("A_eq", a_eq),
            ("Cholesky factor", chol.l_dirty()),
        ] {
            if rows.ncols() != n {
                return Err(Error::dim(name, n, rows.ncols()));
            }
        }
        let (m, k) = (a.nrows(), a_eq.nrows());
        let mut c = DMatrix::zeros(m + k, n);
        c.rows_mut(0, m).copy_from(a);
        c.rows_mut(m, k).copy_from(a_eq);
        let scale = crate::linalg::row_amax(&c).map(power_of_two_scale);
        for (i, mut row) in c.row_iter_mut().enumerate() {
            row *= scale[i];
        }
        let mut v = c.transpose();
        crate::linalg::solve_lower_columns(threads, chol.l_dirty(), &mut v);
        let gram = threads.gram(&v);
        Ok(Self {
            p,
            c,
            scale,
            chol,
            v,
            gram,
        })
    }

    /// Stacked rows.
    pub fn rows(&self) -> usize {
        self.v.ncols()
    }

    /// `min ½xᵀPx + qᵀx` on the rows as `kinds` says, with right-hand sides `b` (stacked like
    /// the rows), by the dual active-set method (module docs).
    ///
    /// # Errors
    /// [`Error::DimensionMismatch`]; [`Error::Infeasible`] with the certificate;
    /// [`Error::Singular`] for dependent equality rows; [`Error::NotConverged`] at the step
    /// cap `10r + 20` (rounding cycling).
    pub fn solve(
        &self,
        q: &DVector<f64>,
        b: &DVector<f64>,
        kinds: &[Row],
    ) -> Result<DenseSolution> {
        let (n, r) = (self.v.nrows(), self.rows());
        if q.len() != n {
            return Err(Error::dim("q", n, q.len()));
        }
        if b.len() != r || kinds.len() != r {
            return Err(Error::dim("b", r, b.len().min(kinds.len())));
        }
        let mut sol = self.solve_equilibrated(q, &b.component_mul(&self.scale), kinds)?;
        sol.y.component_mul_assign(&self.scale);
        Ok(sol)
    }

    /// [`DenseFactor::solve`] in the equilibrated rows' units: `b` already multiplied by the
    /// factor's row scales (the powers of two of `Equilibration`), `y` returned for the
    /// equilibrated rows. Sizes are the caller's to check.
    pub(crate) fn solve_equilibrated(
        &self,
        q: &DVector<f64>,
        b: &DVector<f64>,
        kinds: &[Row],
    ) -> Result<DenseSolution> {
        let w = self.forward(q);
        let h = b + self.v.tr_mul(&w);
        let mut state = Dual::new(self, (b, &h), kinds)?;
        let max_steps = 10 * self.rows() + 20;
        while let Some(p) = state.most_violated(kinds) {
            state.add(p, kinds)?;
            if state.steps > max_steps {
                return Err(Error::NotConverged {
                    solver: "dense dual active-set method".into(),
                    iterations: state.steps,
                    residual: -state.slack(p),
                });
            }
        }
        Ok(self.point(q, b, &w, state))
    }

    /// The 2-norm condition estimate of the KKT matrix `K = [σP C_Wᵀ; C_W 0]` of a working
    /// set, rows equilibrated and `σ` the power of two with `σ max|P| ∈ [1, 2)`
    /// ([`crate::linalg::condition_estimate`], through this factorization).
    pub fn condition(&self, working: &[bool]) -> f64 {
        let rows: Vec<usize> = (0..working.len()).filter(|&i| working[i]).collect();
        let (n, k) = (self.p.nrows(), rows.len());
        let g = DMatrix::from_fn(k, k, |a, b| self.gram[(rows[a], rows[b])]);
        let chol = match (k, g.cholesky()) {
            (0, _) => None,
            (_, Some(c)) => Some(c),
            (_, None) => return f64::INFINITY,
        };
        // P scaled like the rows (by a power of two, σ max|P| ∈ [1, 2)), as `solve_kkt` does:
        // the estimate does not depend on the energy's scale.
        let sigma = power_of_two_scale(crate::linalg::amax(self.p.as_slice()));
        // K = [σP C_Wᵀ; C_W 0] applied from its blocks (forming it would copy (n+k)² entries);
        // the working rows C_W and their columns V_W of V = L⁻¹Cᵀ are copied once, so each
        // Lanczos step is a few matrix-vector products on contiguous blocks.
        let (c_w, v_w) = (self.c.select_rows(&rows), self.v.select_columns(&rows));
        let apply = |u: &DVector<f64>| {
            let (x, nu) = (u.rows(0, n), u.rows(n, k));
            let mut out = DVector::zeros(n + k);
            let mut top = out.rows_mut(0, n);
            top.gemv(sigma, &*self.p, &x, 0.0);
            top.gemv_tr(1.0, &c_w, &nu, 1.0);
            out.rows_mut(n, k).gemv(1.0, &c_w, &x, 0.0);
            Some(out)
        };
        crate::linalg::condition_estimate_of(n + k, apply, |u| {
            // σP x + C_Wᵀν = r, C_W x = s ⇔ P x + C_Wᵀ(ν/σ) = r/σ: with ν̃ = ν/σ,
            // G_WW ν̃ = V_Wᵀ L⁻¹ r/σ − s and x = L⁻ᵀ(L⁻¹r/σ − V_W ν̃).
            let mut lr = self.forward(&(u.rows(0, n) / sigma));
            let mut rhs = -u.rows(n, k);
            rhs.gemv_tr(1.0, &v_w, &lr, 1.0);
            let nu = chol.as_ref().map_or(DVector::zeros(0), |c| c.solve(&rhs));
            lr.gemv(-1.0, &v_w, &nu, 1.0);
            self.backward(&mut lr);
            let mut out = DVector::zeros(n + k);
            out.rows_mut(0, n).copy_from(&lr);
            out.rows_mut(n, k).copy_from(&(nu * sigma));
            Some(out)
        })
    }

    /// [`crate::linalg::independence`] of the given rows in the metric `P⁻¹` (the columns of
    /// `V`). First from the stored Gram matrix: the Cholesky pivots of `G_AA` give each row's
    /// squared sine to the span of the rows before it, accurate to about `1e-15` absolute, so
    /// squared sines above `1e-11` are certain and cost `O(|A|³)` without `n`; below that (a
    /// row nearly or exactly dependent) the orthogonalization of the columns of `V` decides.
    pub(crate) fn independence(&self, rows: &[usize]) -> f64 {
        let g = DMatrix::from_fn(rows.len(), rows.len(), |a, b| self.gram[(rows[a], rows[b])]);
        if let Some(chol) = g.clone().cholesky() {
            let l = chol.l_dirty();
            let sin2 = (0..rows.len())
                .map(|i| l[(i, i)] * l[(i, i)] / g[(i, i)])
                .fold(1.0, f64::min);
            if sin2 >= 1e-11 {
                return sin2.sqrt();
            }
        }
        crate::linalg::independence(&self.v.select_columns(rows))
    }

    /// The KKT system of the working rows `rows` (stacked indices, rows in their given units):
    /// `P x + C_Wᵀν = r`, `C_W x = s`, on this factorization. With `D` the row scales, the
    /// range-space solve `G_WW ν̃ = V_Wᵀ L⁻¹ r − D_W s`, `x = L⁻ᵀ(L⁻¹r − V_W ν̃)`, `ν = D_W ν̃`
    /// is the first pass of [`DenseFactor::solve`]'s refinement from `(0, 0)`; a second pass
    /// (a third when the second moved `x` or `ν` by more than `1e-8` of their size) refines it
    /// on the full residual and gives the error estimate. `O(n² + n|W| + |W|³)`: `P` is not
    /// factored again.
    ///
    /// [`crate::linalg::solve_kkt`]'s fields and meanings (the residual of the system with the
    /// rows and `P` equilibrated by powers of two; `error.1` bounds `ν`'s correction through
    /// the largest row scale), except `condition`: `NaN`, not estimated
    /// ([`DenseFactor::condition`] gives it).
    ///
    /// # Errors
    /// [`Error::Singular`] when the rows are dependent to working precision (a sine between
    /// one and the span of the others below `1e-7`, about `solve_kkt`'s condition bound of
    /// `1e14`); [`Error::Inaccurate`] from [`crate::linalg::check_kkt_accuracy`].
    pub(crate) fn solve_working(
        &self,
        rows: &[usize],
        r: &DVector<f64>,
        s: &DVector<f64>,
    ) -> Result<KktSolution> {
        let (n, k) = (self.p.nrows(), rows.len());
        let beyond = rows.iter().map(|&i| i + 1).max().unwrap_or(0);
        for (what, want, got) in [("r", n, r.len()), ("s", k, s.len())] {
            if want != got {
                return Err(Error::dim(what, want, got));
            }
        }
        if beyond > self.rows() {
            return Err(Error::dim(
                "rows (of the dense factor)",
                self.rows(),
                beyond,
            ));
        }
        let singular =
            || Error::Singular(format!("working rows of a KKT matrix of size {}", n + k));
        let chol = match k {
            0 => None,
            _ => {
                let g = DMatrix::from_fn(k, k, |a, b| self.gram[(rows[a], rows[b])]);
                let chol = g.clone().cholesky().ok_or_else(singular)?;
                let l = chol.l_dirty();
                let sin2 = (0..k).map(|i| l[(i, i)] * l[(i, i)] / g[(i, i)]);
                if sin2.fold(1.0, f64::min) < 1e-11 && self.independence(rows) < 1e-7 {
                    return Err(singular());
                }
                Some(chol)
            }
        };
        // In `refine`'s convention `P x + q − C̃ᵀy = 0`, `C̃_W x = b̃_W`: q = −r, ν = −D y.
        let (q, mut b) = (-r, DVector::zeros(self.rows()));
        for (j, &i) in rows.iter().enumerate() {
            b[i] = s[j] * self.scale[i];
        }
        let (mut x, mut y) = (DVector::zeros(n), DVector::zeros(self.rows()));
        let mut error = (f64::INFINITY, f64::INFINITY);
        for pass in 0..3 {
            error = self.refine(&q, &b, (rows, chol.as_ref()), &mut x, &mut y);
            if pass > 0 && error.0 <= 1e-8 * x.amax() && error.1 <= 1e-8 * y.amax() {
                break;
            }
        }
        if !x.iter().chain(y.iter()).all(|v| v.is_finite()) {
            return Err(singular());
        }
        let c_w = self.c.select_rows(rows);
        let (b_w, y_w) = (b.select_rows(rows), y.select_rows(rows));
        let mut sol = DVector::zeros(n + k);
        sol.rows_mut(0, n).copy_from(&x);
        sol.rows_mut(n, k).copy_from(&-&y_w);
        crate::linalg::check_kkt_accuracy(&self.p, &c_w, r, &b_w, &sol)?;
        let sigma = power_of_two_scale(crate::linalg::amax(self.p.as_slice()));
        let stationarity = (r - &*self.p * &x + c_w.tr_mul(&y_w)).amax();
        let largest_scale = rows.iter().map(|&i| self.scale[i]).fold(0.0, f64::max);
        Ok(KktSolution {
            residual: (sigma * stationarity).max((&b_w - &c_w * &x).amax()),
            nu: -DVector::from_fn(k, |j, _| y_w[j] * self.scale[rows[j]]),
            x,
            condition: f64::NAN,
            error: (error.0, error.1 * largest_scale),
        })
    }

    /// `L⁻¹ u`.
    fn forward(&self, u: &DVector<f64>) -> DVector<f64> {
        let mut out = u.clone();
        self.chol.l_dirty().solve_lower_triangular_mut(&mut out);
        out
    }

    /// `L⁻ᵀ u`.
    fn backward(&self, u: &mut DVector<f64>) {
        self.chol.l_dirty().tr_solve_lower_triangular_mut(u);
    }

    /// `x = L⁻ᵀ(V_W y_W − w)`, then a refinement step on the full KKT residual, and a second
    /// one when the first moved `x` or `y` by more than `1e-8` of their size (data whose
    /// energy dwarfs the constraints: `x` pinned near 0 by the rows while `q` is 1e206). The
    /// error estimate is the last correction.
    fn point(
        &self,
        q: &DVector<f64>,
        b: &DVector<f64>,
        w: &DVector<f64>,
        s: Dual,
    ) -> DenseSolution {
        let working_rows = s.working.clone();
        let mut y = DVector::zeros(self.rows());
        for (j, &i) in working_rows.iter().enumerate() {
            y[i] = s.y[j];
        }
        let mut x = &self.v * &y - w;
        self.backward(&mut x);
        let mut error = (f64::INFINITY, f64::INFINITY);
        for _ in 0..2 {
            error = self.refine(q, b, (&working_rows, s.chol.as_ref()), &mut x, &mut y);
            if error.0 <= 1e-8 * x.amax() && error.1 <= 1e-8 * y.amax() {
                break;
            }
        }
        let mut working = vec![false; self.rows()];
        for &i in &working_rows {
            working[i] = true;
        }
        DenseSolution {
            x,
            y,
            working,
            steps: s.steps,
            error,
        }
    }

    /// One refinement step of `(x, y)` on the working rows, returning the correction's
    /// ∞-norms (infinite, and nothing changed, if it is not finite).
    fn refine(
        &self,
        q: &DVector<f64>,
        b: &DVector<f64>,
        (working_rows, chol): (&[usize], Option<&Cholesky<f64, Dyn>>),
        x: &mut DVector<f64>,
        y: &mut DVector<f64>,
    ) -> (f64, f64) {
        // Residuals from P and C themselves: stationarity −(P x + q − Cᵀy) and the working
        // rows' b_W − C_W x.
        let r1 = -(&*self.p * &*x + q - self.c.tr_mul(&*y));
        let Some(chol) = chol else {
            // No working rows: x = −P⁻¹q; refine with P alone.
            let dx = self.chol.solve(&r1);
            let error = (dx.amax(), 0.0);
            *x += dx;
            return error;
        };
        let mut r2 = DVector::zeros(working_rows.len());
        for (j, &i) in working_rows.iter().enumerate() {
            r2[j] = b[i] - self.c.row(i).transpose().dot(&*x);
        }
        // [P −C_Wᵀ; C_W 0][dx; dy] = [r1; r2]: G_WW dy = r2 − V_Wᵀ L⁻¹ r1, dx = L⁻ᵀ(L⁻¹r1 + V_W dy).
        let l_r1 = self.forward(&r1);
        let mut rhs = r2;
        for (j, &i) in working_rows.iter().enumerate() {
            rhs[j] -= self.v.column(i).dot(&l_r1);
        }
        let dy = chol.solve(&rhs);
        let mut dx = l_r1;
        for (j, &i) in working_rows.iter().enumerate() {
            dx.axpy(dy[j], &self.v.column(i), 1.0);
        }
        self.backward(&mut dx);
        if !dx.iter().chain(dy.iter()).all(|v| v.is_finite()) {
            return (f64::INFINITY, f64::INFINITY);
        }
        *x += &dx;
        for (j, &i) in working_rows.iter().enumerate() {
            y[i] += dy[j];
        }
        (dx.amax(), dy.amax())
    }
}

/// The state of the dual active-set method: the working rows, their multipliers and the
/// Cholesky factor of `G_WW`.
struct Dual<'a> {
    f: &'a DenseFactor,
    /// The equilibrated right-hand sides (for certificates).
    b: &'a DVector<f64>,
    h: &'a DVector<f64>,
    /// Working rows, in the order added.
    working: Vec<usize>,
    /// Their multipliers.
    y: DVector<f64>,
    chol: Option<Cholesky<f64, Dyn>>,
    steps: usize,
    /// The buffer of [`Dual::most_violated`]: every row's slack.
    slack_buf: DVector<f64>,
}

impl<'a> Dual<'a> {
    /// The equality rows held, at the minimizer on them.
    fn new(
        f: &'a DenseFactor,
        (b, h): (&'a DVector<f64>, &'a DVector<f64>),
        kinds: &[Row],
    ) -> Result<Self> {
        let working: Vec<usize> = (0..kinds.len())
            .filter(|&i| kinds[i] == Row::Equality)
            .collect();
        let mut s = Self {
            f,
            b,
            h,
            working,
            y: DVector::zeros(0),
            chol: None,
            steps: 0,
            slack_buf: DVector::zeros(h.len()),
        };
        s.refactor()
            .map_err(|_| Error::Singular(DEPENDENT_EQUALITIES.into()))?;
        Ok(s)
    }

    /// Row `p` joins the working set: the Cholesky factor of `G_WW` grows by one row
    /// (`l = L⁻¹G_Wp`, `√(G_pp − ‖l‖²)`, `O(|W|²)`) instead of being recomputed (`O(|W|³)`),
    /// and `y_W = G_WW⁻¹ h_W`. A pivot as small as [`Dual::refactor`] refuses means the row
    /// is dependent on the working rows.
    fn push(&mut self, p: usize) -> Result<()> {
        let k = self.working.len();
        let col = DVector::from_fn(k + 1, |a, _| {
            let i = if a < k { self.working[a] } else { p };
            self.f.gram[(i, p)]
        });
        let chol = match &self.chol {
            Some(c) => c.insert_column(k, col),
            None => Cholesky::new_unchecked(DMatrix::from_element(1, 1, col[0])),
        };
        let l = chol.l_dirty();
        let big = (0..=k)
            .map(|a| {
                let i = if a < k { self.working[a] } else { p };
                self.f.gram[(i, i)]
            })
            .fold(0.0, f64::max);
        let pivot = l[(k, k)];
        // A NaN pivot (G_pp − ‖l‖² < 0 by rounding) is refused too.
        if pivot.is_nan() || pivot * pivot <= 1e-13 * big {
            return Err(Error::Singular("dependent working rows".into()));
        }
        self.working.push(p);
        self.chol = Some(chol);
        self.resolve();
        Ok(())
    }

    /// Working row `j` leaves: the factor loses its row and column (a rank-one update of the
    /// trailing block, `O(|W|²)`), and `y_W` is not recomputed (the caller does).
    fn remove(&mut self, j: usize) {
        self.working.remove(j);
        self.chol = match &self.chol {
            Some(c) if !self.working.is_empty() => Some(c.remove_column(j)),
            _ => None,
        };
    }

    /// `y_W = G_WW⁻¹ h_W` with the current factor.
    fn resolve(&mut self) {
        let hw = DVector::from_fn(self.working.len(), |a, _| self.h[self.working[a]]);
        self.y = match &self.chol {
            Some(c) => c.solve(&hw),
            None => DVector::zeros(0),
        };
    }

    /// Cholesky of `G_WW` and `y_W = G_WW⁻¹ h_W` on the current working set.
    fn refactor(&mut self) -> Result<()> {
        let k = self.working.len();
        if k == 0 {
            self.chol = None;
            self.y = DVector::zeros(0);
            return Ok(());
        }
        let g = DMatrix::from_fn(k, k, |a, b| self.f.gram[(self.working[a], self.working[b])]);
        let big = g.diagonal().amax();
        let chol = g
            .cholesky()
            .filter(|c| {
                let d = c.l_dirty().diagonal();
                d.iter().all(|&v| v * v > 1e-13 * big)
            })
            .ok_or_else(|| Error::Singular("dependent working rows".into()))?;
        let hw = DVector::from_fn(k, |a, _| self.h[self.working[a]]);
        self.y = chol.solve(&hw);
        self.chol = Some(chol);
        Ok(())
    }

    /// `(G y − h)_i` at the current multipliers.
    fn slack(&self, i: usize) -> f64 {
        let mut s = -self.h[i];
        for (j, &wj) in self.working.iter().enumerate() {
            s += self.f.gram[(i, wj)] * self.y[j];
        }
        s
    }

    /// The most violated inequality outside the working set, if any: every slack
    /// `(G_{:,W} y_W − h)_i` in one pass over the working columns of `G` (contiguous), into a
    /// buffer kept across steps; a negative one counts only beyond the rounding of its terms
    /// ([`Dual::rounding`], computed for those alone).
    fn most_violated(&mut self, kinds: &[Row]) -> Option<usize> {
        let mut slack = std::mem::take(&mut self.slack_buf);
        slack.copy_from(self.h);
        slack.neg_mut();
        for (j, &wj) in self.working.iter().enumerate() {
            slack.axpy(self.y[j], &self.f.gram.column(wj), 1.0);
        }
        for &i in &self.working {
            slack[i] = 0.0; // held rows are not candidates
        }
        let worst = (0..kinds.len())
            .filter(|&i| kinds[i] == Row::Inequality && slack[i] < 0.0)
            .filter(|&i| slack[i] < -self.rounding(i))
            .min_by(|&a, &b| slack[a].total_cmp(&slack[b]));
        self.slack_buf = slack;
        worst
    }

    /// How far a computed slack can be off by rounding alone.
    fn rounding(&self, i: usize) -> f64 {
        let mut size = self.h[i].abs();
        for (j, &wj) in self.working.iter().enumerate() {
            size += (self.f.gram[(i, wj)] * self.y[j]).abs();
        }
        64.0 * f64::EPSILON * size
    }

    /// Adds row `p`: partial steps (dropping blocking inequalities) until it is active.
    fn add(&mut self, p: usize, kinds: &[Row]) -> Result<()> {
        let gpp = self.f.gram[(p, p)];
        let mut yp = 0.0;
        loop {
            self.steps += 1;
            let k = self.working.len();
            // d = G_WW⁻¹ G_Wp: the working multipliers move by −t d when y_p moves by t.
            let gwp = DVector::from_fn(k, |a, _| self.f.gram[(self.working[a], p)]);
            let d = match &self.chol {
                Some(c) => c.solve(&gwp),
                None => DVector::zeros(0),
            };
            let schur = gpp - gwp.dot(&d);
            // k = n independent rows span everything, whatever the rounding of the complement.
            let in_span = k >= self.f.v.nrows() || schur <= 1e-12 * gpp;
            let slack_p = self.slack(p) + gpp * yp;
            let block = (0..k)
                .filter(|&j| kinds[self.working[j]] == Row::Inequality && d[j] > 0.0)
                .map(|j| (self.y[j] / d[j], j))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            if in_span && block.is_none() {
                return Err(self.certificate(p, &d, kinds));
            }
            let t_full = if in_span {
                f64::INFINITY
            } else {
                -slack_p / schur
            };
            match block {
                Some((t, j)) if t < t_full => {
                    // Drop working row j at its zero multiplier, keep p's partial multiplier.
                    yp += t;
                    self.remove(j);
                    // Stationarity on W with y_p held: G_WW y_W = h_W − G_Wp y_p.
                    self.resolve_with(p, yp);
                }
                _ => return self.push(p),
            }
        }
    }

    /// Row `p` lies in the span of the working rows (`c_p ≈ Σ d_j c_j`) and its multiplier
    /// can rise without bound: `u = (1 on p, −d on W)` is a candidate Farkas certificate
    /// (`u ≥ 0` on inequalities; `uᵀ(Cx − b) ≥ 0` for every feasible `x`, so `Cᵀu = 0` and
    /// `bᵀu > 0` prove that none exists). It is checked before it is believed:
    /// [`Error::Infeasible`] only when `Cᵀu` is zero up to the rounding of its own sum and
    /// `bᵀu` positive beyond that of its own; otherwise the rows are only *nearly* dependent
    /// (the problem may well be feasible, far away or at a point their difference decides),
    /// which this method cannot resolve: [`Error::Inaccurate`], and callers fall back.
    fn certificate(&self, p: usize, d: &DVector<f64>, kinds: &[Row]) -> Error {
        let (c, w) = (&self.f.c, &self.working);
        // r = c_p − Σ d_j c_j, with `size` the sum of the magnitudes it is computed from.
        let residual = |d: &DVector<f64>| {
            let mut r = c.row(p).transpose();
            let mut size = r.abs();
            for (j, &i) in w.iter().enumerate() {
                r.axpy(-d[j], &c.row(i).transpose(), 1.0);
                size.axpy(d[j].abs(), &c.row(i).transpose().abs(), 1.0);
            }
            (r, size)
        };
        // `d` came through the Gram matrix (error ~ cond(G_WW) ε): two steps of refinement in
        // the rows' own space, G_WW δ = V_Wᵀ L⁻¹ r, bring an exact combination to rounding.
        let mut d = d.clone();
        for _ in 0..2 {
            let (r, _) = residual(&d);
            let lr = self.f.forward(&r);
            let rhs = DVector::from_fn(w.len(), |j, _| self.f.v.column(w[j]).dot(&lr));
            if let Some(chol) = &self.chol {
                d += chol.solve(&rhs);
            }
        }
        let (r, size) = residual(&d);
        let (mut beta, mut beta_size) = (self.b[p], self.b[p].abs());
        for (j, &i) in w.iter().enumerate() {
            beta -= d[j] * self.b[i];
            beta_size += (d[j] * self.b[i]).abs();
        }
        let gamma = 64.0 * f64::EPSILON * (w.len() + 2) as f64;
        // The refined u must still be a certificate's shape: ≥ 0 on the inequalities (to
        // rounding: a zero may come back as ±1e-17).
        let signs = (0..w.len()).all(|j| kinds[w[j]] == Row::Equality || d[j] <= gamma * d.amax());
        let exact = signs && (0..r.len()).all(|i| r[i].abs() <= gamma * size[i]);
        let kind = |i: usize| match kinds[i] {
            Row::Equality => "equality",
            _ => "inequality",
        };
        if exact && beta > gamma * beta_size {
            return Error::Infeasible(format!(
                "{} {p} cannot be satisfied together with the {} working constraints: \
                 u = (1, −d) ≥ 0 on the inequalities gives Cᵀu = 0 to rounding ({:.1e}) and \
                 bᵀu = {beta:.3e} > 0 (Farkas certificate, dense dual active-set method)",
                kind(p),
                self.working.len(),
                r.amax(),
            ));
        }
        Error::Inaccurate {
            what: format!(
                "the dense active-set method ({} {p} is nearly, not exactly, a combination of \
                 the working constraints: no certificate)",
                kind(p)
            ),
            residual: r.amax() / size.amax().max(f64::MIN_POSITIVE),
        }
    }

    /// `y_W` from `G_WW y_W = h_W − G_Wp y_p` (row `p` held at a partial multiplier).
    fn resolve_with(&mut self, p: usize, yp: f64) {
        let k = self.working.len();
        let rhs = DVector::from_fn(k, |a, _| {
            self.h[self.working[a]] - self.f.gram[(self.working[a], p)] * yp
        });
        if let Some(c) = &self.chol {
            self.y = c.solve(&rhs);
        }
    }
}

/// [`DenseFactor::solve`] on a [`Qp`]'s own rows (inequalities, then equalities).
///
/// # Errors
/// As [`DenseFactor::new`] and [`DenseFactor::solve`].
pub(crate) fn solve_qp(qp: &Qp) -> Result<DenseSolution> {
    let f = DenseFactor::new(&qp.p, &qp.a, &qp.a_eq)?;
    let (m, k) = (qp.b.len(), qp.b_eq.len());
    let mut b = DVector::zeros(m + k);
    b.rows_mut(0, m).copy_from(&qp.b);
    b.rows_mut(m, k).copy_from(&qp.b_eq);
    let kinds: Vec<Row> = (0..m + k)
        .map(|i| {
            if i < m {
                Row::Inequality
            } else {
                Row::Equality
            }
        })
        .collect();
    f.solve(&qp.q, &b, &kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_factor_is_the_same_bit_for_bit_on_every_team() {
        // V's 300 columns in five blocks of 64 and G's 300 columns, both cut over the team.
        let x = |r, c, s: usize| DMatrix::from_fn(r, c, |i, j| ((i * 7 + j * 13 + s) % 17) as f64);
        let p = x(250, 250, 1).tr_mul(&x(250, 250, 1)) + DMatrix::identity(250, 250);
        let (a, a_eq) = (x(280, 250, 2) * 1e3 - x(280, 250, 4), x(20, 250, 3));
        let one = DenseFactor::new(&p, &a, &a_eq).unwrap();
        assert!((one.v.tr_mul(&one.v) - &one.gram).amax() < 1e-12 * one.gram.amax());
        let p = Arc::new(p);
        for t in 2..=3 {
            let (team, chol) = (
                Threads::new(t).unwrap(),
                crate::linalg::cholesky(&p).unwrap(),
            );
            let s = DenseFactor::with_cholesky_on(&team, p.clone(), chol, (&a, &a_eq)).unwrap();
            assert!(s.v == one.v && s.gram == one.gram, "{t} threads");
        }
    }
}
