use std::sync::{Arc, OnceLock};

use nalgebra::{Cholesky, DMatrix, DVector, Dyn};

use super::{
    check_affine, check_augmented, check_offset, InnerProblem, InnerSolution, LinearConstraints,
    Loss, Offset, SolveStatus,
};
use crate::error::{Error, Result};
use crate::linalg::{min_eigenvalue, spd_cholesky_on, team_for, Threads};
use crate::problem::{Direction, DirectionMethod};
use crate::solve::qp::{
    complementarity, dense_exact, solve_exact, solve_factored_offset, solve_offset, Activity,
    OffsetQp, OffsetSolution, Qp, QpBackend, Tolerances, DENSE,
};
use crate::solve::qp::{ActivityTest, DenseActiveSet, DenseFactor};

/// The standard constrained quadratic layer
/// <div class="math">
///
/// $$ E(z; \theta) = \tfrac12 z^\top Q z - z^\top (B\theta + c) \quad \text{s.t.} \quad A z \ge b, \; A_{eq} z = b_{eq}, $$
///
/// </div>
///
/// with `Q` symmetric positive definite (so `E` is `ν`-strongly convex with `ν = λ_min(Q)`,
/// Prop. 3). `∂_θ E = −Bᵀz`, so the mixed derivative is `−Bᵀ` (Cor. 1).
///
/// Loss-augmented solves `β ℓ + E` stay QPs: `P = Q + βκ I`, `q = −(Bθ + c) − βh` for
/// `ℓ = (κ/2)‖z‖² − hᵀz`. By default they run on the dense dual active-set method with a
/// factorization of `Q` and the rows kept for the layer's lifetime
/// ([`crate::solve::qp`]: built on first use or by a batch's [`InnerProblem::prepare`] on
/// several threads, `O(n³)` once, then `O(|W|³ + n²)` per solve;
/// Prop. 2's direction problem, Eq. 17, reuses it), or on another [`QpBackend`]
/// ([`QuadraticProblem::with_backend`]: Clarabel, OSQP); either way the answer is refined
/// exactly ([`solve_exact`]).
#[derive(Clone)]
pub struct QuadraticProblem {
    /// `Q`, shared with the dense backend's factorization (no copy of `n²` numbers).
    q: Arc<DMatrix<f64>>,
    b: DMatrix<f64>,
    c: DVector<f64>,
    constraints: LinearConstraints,
    /// `Q = LLᵀ`, from the validation (the dense backend's factorization starts from it).
    chol: Arc<Cholesky<f64, Dyn>>,
    /// `ν = λ_min(Q)`, computed on first use (Prop. 3's bounds, negative `β` ranges).
    nu: OnceLock<f64>,
    backend: Arc<dyn QpBackend>,
    tol: Tolerances,
    /// Whether the direction solves estimate their condition ([`Direction::condition`]).
    condition: bool,
    /// The factorization of `Q` and `[A; A_eq]` (dense backend; `None` if it failed).
    factor: OnceLock<Option<Arc<DenseFactor>>>,
}

impl std::fmt::Debug for QuadraticProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuadraticProblem")
            .field("n", &self.q.nrows())
            .field("p", &self.b.ncols())
            .field("m", &self.constraints.m())
            .field("k", &self.constraints.b_eq.len())
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl QuadraticProblem {
    /// Builds and validates the problem (shapes, finiteness, `Q` symmetric positive definite:
    /// its Cholesky factorization exists with every pivot above `1e-13 · max|Q_ij|`,
    /// [`crate::linalg::spd_cholesky`]; the factor is kept for the dense backend, and
    /// `ν = λ_min(Q)` is computed only when asked for).
    ///
    /// # Example
    /// ```
    /// use bilevel::nalgebra::{dmatrix, dvector};
    /// use bilevel::prelude::*;
    ///
    /// // E(z; θ) = ½zᵀQz − zᵀ(Bθ + c) subject to z_1 + z_2 ≥ 1.
    /// let constraints = LinearConstraints {
    ///     a: dmatrix![1.0, 1.0],
    ///     b: dvector![1.0],
    ///     ..LinearConstraints::none(2)
    /// };
    /// let layer = QuadraticProblem::new(dmatrix![2.0, 0.0; 0.0, 1.0], dmatrix![1.0; 0.0], dvector![0.0, 0.0], constraints)?;
    /// let program = Bilevel::new(layer, Loss::Linear { g: dvector![1.0, 0.0] })?;
    /// let z = program.solve_free(&dvector![0.0])?;
    /// // The constraint is active: z* = (1/3, 2/3) with multiplier 2/3.
    /// assert!((z.z - dvector![1.0 / 3.0, 2.0 / 3.0]).amax() < 1e-12);
    /// assert!((z.multipliers[0] - 2.0 / 3.0).abs() < 1e-12);
    /// // A Q that is not positive definite is refused, naming the field.
    /// let bad = QuadraticProblem::new(dmatrix![1.0, 0.0; 0.0, -1.0], dmatrix![1.0; 0.0], dvector![0.0, 0.0], LinearConstraints::none(2));
    /// assert!(bad.unwrap_err().to_string().contains("Q"));
    /// # Ok::<(), bilevel::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`crate::Error::DimensionMismatch`], [`crate::Error::NonFinite`], [`crate::Error::NotPositiveDefinite`], each
    /// naming the field (`Q`, `B`, `c`, `A`, `b`, `A_eq`, `b_eq`).
    pub fn new(
        q: DMatrix<f64>,
        b: DMatrix<f64>,
        c: DVector<f64>,
        constraints: LinearConstraints,
    ) -> Result<Self> {
        Self::new_on(&Threads::default(), q, b, c, constraints)
    }

    /// [`QuadraticProblem::new`] with `Q`'s Cholesky factorization cut over `threads` (the same
    /// factor, bit for bit).
    pub(crate) fn new_on(
        threads: &Threads,
        q: DMatrix<f64>,
        b: DMatrix<f64>,
        c: DVector<f64>,
        constraints: LinearConstraints,
    ) -> Result<Self> {
        let n = q.nrows();
        let chol = Arc::new(spd_cholesky_on(threads, "Q", &q)?);
        check_affine(n, &b, &c)?;
        constraints.validate(n)?;
        Ok(Self {
            q: Arc::new(q),
            b,
            c,
            constraints,
            chol,
            nu: OnceLock::new(),
            backend: Arc::new(DenseActiveSet),
            tol: Tolerances::default(),
            condition: true,
            factor: OnceLock::new(),
        })
    }

    /// Uses another QP backend (e.g. [`crate::solve::qp::Clarabel`], or
    /// `bilevel::solve::qp::Osqp` with the `osqp` feature) instead of the dense active-set
    /// method.
    pub fn with_backend(mut self, backend: Arc<dyn QpBackend>) -> Self {
        self.backend = backend;
        self
    }

    /// Uses other activity tolerances.
    pub fn with_tolerances(mut self, tol: Tolerances) -> Self {
        self.tol = tol;
        self
    }

    /// Skips the condition estimate of the direction problems (Eq. 17) on the dense backend:
    /// [`Direction::condition`] is then `NaN`. The estimate (Lanczos on the KKT matrix and its
    /// inverse) costs about as much as a Cholesky factorization of `Q`, several times the
    /// direction solve itself; layers that do not report it ([`crate::layer`]) skip it.
    pub fn without_condition_estimates(mut self) -> Self {
        self.condition = false;
        self
    }

    /// The QP backend in use.
    pub fn backend(&self) -> &Arc<dyn QpBackend> {
        &self.backend
    }

    /// The activity tolerances in use.
    pub fn tolerances(&self) -> &Tolerances {
        &self.tol
    }

    /// `Q`.
    pub fn q(&self) -> &DMatrix<f64> {
        &self.q
    }

    /// `B`.
    pub fn b(&self) -> &DMatrix<f64> {
        &self.b
    }

    /// `c`.
    pub fn c(&self) -> &DVector<f64> {
        &self.c
    }

    /// The linear loss whose Prop. 2 rate is the JVP of `z*` along `θ + t v`: a step `t v`
    /// adds `−t (Bv)ᵀz` to `E`, Def. 1's loss-augmented energy for `gᵀz` with `g = −Bv` at
    /// `β = t` ([`QuadraticProblem::jvp`]).
    ///
    /// # Errors
    /// `v` not of length `p` or not finite.
    pub fn jvp_loss(&self, v: &DVector<f64>) -> Result<Loss> {
        if v.len() != self.b.ncols() {
            return Err(Error::dim("v", self.b.ncols(), v.len()));
        }
        crate::error::check_finite("v", v.iter())?;
        Ok(Loss::Linear { g: -(&self.b * v) })
    }

    /// The stored factorization of `Q` and the rows, when the dense backend is in use (made
    /// on this thread if no batch prepared it, [`InnerProblem::prepare`]).
    fn factor(&self) -> Option<&DenseFactor> {
        self.factor_on(&Threads::default())
    }

    /// [`InnerProblem::prepare`] on a team of the caller's.
    pub(crate) fn prepare_on(&self, threads: &Threads) {
        let _ = self.factor_on(threads);
    }

    /// [`QuadraticProblem::factor`], made on `threads` if not made yet.
    fn factor_on(&self, threads: &Threads) -> Option<&DenseFactor> {
        if self.backend.name() != DENSE {
            return None;
        }
        self.factor
            .get_or_init(|| {
                let chol = (*self.chol).clone();
                let rows = (&self.constraints.a, &self.constraints.a_eq);
                DenseFactor::with_cholesky_on(threads, Arc::clone(&self.q), chol, rows)
                    .ok()
                    .map(Arc::new)
            })
            .as_deref()
    }

    /// Solves `qp` (this layer's rows) exactly: on the stored factorization when `P = Q`, on a
    /// fresh one for another `P` (dense backend), or on the backend.
    fn solve_qp(&self, qp: &Qp, curvature_added: bool) -> Result<crate::solve::qp::ExactQp> {
        // The solution's condition estimate is not reported (InnerSolution has none): skipped.
        let rows: Vec<usize> = (0..self.constraints.m() + self.constraints.b_eq.len()).collect();
        match self.factor() {
            Some(f) if !curvature_added => dense_exact(f, qp, &rows, &self.tol, false),
            Some(_) => match DenseFactor::new(&qp.p, &qp.a, &qp.a_eq) {
                Ok(f) => dense_exact(&f, qp, &rows, &self.tol, false),
                Err(_) => solve_exact(self.backend.as_ref(), qp, &self.tol),
            },
            None => solve_exact(self.backend.as_ref(), qp, &self.tol),
        }
    }

    /// The largest violation of the rows at `z`, each relative to its terms: `max(0,
    /// b_i − a_iᵀz) / (|b_i| + ‖a_i‖∞‖z‖∞)` and `|A_eq z − b_eq|` likewise (0 when feasible).
    fn violation(&self, z: &DVector<f64>) -> f64 {
        let c = &self.constraints;
        let worst = |a: &DMatrix<f64>, b: &DVector<f64>, eq: bool| {
            let (r, norms) = (a * z - b, crate::linalg::row_amax(a));
            (0..b.len())
                .map(|i| {
                    let size = b[i].abs() + norms[i] * z.amax();
                    let miss = if eq { r[i].abs() } else { (-r[i]).max(0.0) };
                    if miss > 0.0 {
                        miss / size
                    } else {
                        0.0
                    }
                })
                .fold(0.0, f64::max)
        };
        worst(&c.a, &c.b, false).max(worst(&c.a_eq, &c.b_eq, true))
    }

    /// The QP `min β ℓ(z) + E(z; θ)` on the constraints.
    pub fn qp(&self, theta: &DVector<f64>, loss: &Loss, beta: f64) -> Qp {
        let n = self.q.nrows();
        let mut p = (*self.q).clone();
        let kappa = beta * loss.curvature();
        for i in 0..n {
            p[(i, i)] += kappa;
        }
        let q = -(&self.b * theta + &self.c) - loss.linear_term() * beta;
        Qp {
            p,
            q,
            a: self.constraints.a.clone(),
            b: self.constraints.b.clone(),
            a_eq: self.constraints.a_eq.clone(),
            b_eq: self.constraints.b_eq.clone(),
        }
    }
}

impl QuadraticProblem {
    /// The [`OffsetQp`] of `ẑ_β` around `z*`: `P = Q + βκI`, `g = sign(β) ℓ'(z*)`, rows active
    /// at `z*` (strongly or weakly) with `t_i = 0`, the others with `t_i = slack_i/|β|`, and
    /// `m_i = λ*_i/|β|` on the strongly active rows, `0` on the others (a weakly active row's
    /// multiplier is zero); the equality rows set aside as dependent at `z*` left out.
    fn offset_problem(&self, loss: &Loss, beta: f64, z_star: &InnerSolution) -> OffsetQp {
        let s = beta.abs();
        let mut p = (*self.q).clone();
        for i in 0..p.nrows() {
            p[(i, i)] += beta * loss.curvature();
        }
        let cons = &self.constraints;
        let slack = &cons.a * &z_star.z - &cons.b;
        let t = DVector::from_fn(cons.m(), |i, _| match z_star.activity[i] {
            Activity::Inactive => slack[i].max(0.0) / s,
            _ => 0.0,
        });
        // Equality rows the solve of z* set aside as dependent stay out (the offset's KKT
        // system would be singular with them); their multiplier's rate is 0.
        let kept: Vec<usize> = (0..cons.b_eq.len())
            .filter(|j| !z_star.status.dependent_eq.contains(j))
            .collect();
        OffsetQp {
            p,
            g: loss.gradient(&z_star.z) * beta.signum(),
            a: cons.a.clone(),
            a_eq: crate::linalg::select_rows(&cons.a_eq, &kept),
            t,
            // A weakly active row's multiplier is zero to the classification's resolution: its
            // rounding (1e-17, say) would be a rate of 1e-8 at β = 1e-9.
            m: DVector::from_fn(cons.m(), |i, _| match z_star.activity[i] {
                Activity::Strong => z_star.multipliers[i].max(0.0) / s,
                _ => 0.0,
            }),
        }
    }

    /// [`OffsetQp`]'s solution for [`QuadraticProblem::offset`], started from the rows active
    /// at `z*` and, when that does not settle, from the working set of a solve of `ẑ_β`; the
    /// equality rows set aside at `z*` get rate 0.
    fn offset_rates(
        &self,
        theta: &DVector<f64>,
        loss: &Loss,
        (beta, z_star): (f64, &InnerSolution),
        problem: &OffsetQp,
    ) -> Result<OffsetSolution> {
        let (m, k) = (self.constraints.m(), self.constraints.b_eq.len());
        // On the dense backend every working set's KKT system is solved on one factorization
        // of P and the rows: the stored one of Q when P = Q (no curvature added), else one of
        // P = Q + βκI made here; a round then costs O(n²), not a factorization. (Other
        // backends keep no factor, and their rows may be too many for a dense Gram matrix.)
        let curvature_added = beta * loss.curvature() != 0.0;
        let eq: Vec<usize> = (0..k)
            .filter(|j| !z_star.status.dependent_eq.contains(j))
            .map(|j| m + j)
            .collect();
        let cons = &self.constraints;
        let fresh;
        let factor = match self.factor() {
            Some(stored) if !curvature_added => Some(stored),
            Some(_) => {
                fresh = DenseFactor::new(&problem.p, &cons.a, &cons.a_eq).ok();
                fresh.as_ref()
            }
            None => None,
        };
        let solve = |working: &mut Vec<bool>| match factor {
            Some(factor) => solve_factored_offset(problem, (factor, &eq), working),
            None => solve_offset(problem, working),
        };
        let mut working: Vec<bool> = problem.t.iter().map(|&t| t == 0.0).collect();
        let sol = match solve(&mut working) {
            Ok(sol) => sol,
            Err(_) => {
                let qp = self.qp(theta, loss, beta);
                let mut working = self.solve_qp(&qp, curvature_added)?.working;
                solve(&mut working)?
            }
        };
        let mut mu_eq = DVector::zeros(k);
        let kept = (0..k).filter(|j| !z_star.status.dependent_eq.contains(j));
        for (r, j) in kept.enumerate() {
            mu_eq[j] = sol.mu_eq[r];
        }
        Ok(OffsetSolution { mu_eq, ..sol })
    }

    /// `ẑ_β = z* + |β| f` with `λ̂ = λ* + |β| μ` on the working set (0 off it), classified as
    /// [`solve_exact`] classifies, on the scales of the loss-augmented QP.
    fn offset_solution(
        &self,
        theta: &DVector<f64>,
        loss: &Loss,
        beta: f64,
        z_star: &InnerSolution,
        (problem, sol, af): (&OffsetQp, &OffsetSolution, &DVector<f64>),
    ) -> InnerSolution {
        let (s, cons) = (beta.abs(), &self.constraints);
        let m = cons.m();
        let lambda = DVector::from_fn(m, |i, _| {
            if sol.working[i] {
                z_star.multipliers[i] + s * sol.mu[i]
            } else {
                0.0
            }
        });
        // Rows active at z* have slack exactly 0 there (t_i = 0); the others their own.
        let slack0 = &cons.a * &z_star.z - &cons.b;
        let slack_hat = DVector::from_fn(m, |i, _| {
            let base = if problem.t[i] == 0.0 { 0.0 } else { slack0[i] };
            base + s * af[i]
        });
        let z = &z_star.z + &sol.f * s;
        let scale_q = (&self.b * theta + &self.c - loss.linear_term() * beta).amax();
        let p_norm = crate::linalg::amax(problem.p.as_slice());
        let test = ActivityTest::new(&self.tol, p_norm, scale_q, &z);
        let residual = z_star
            .status
            .residual
            .max(s * sol.residual)
            .max(complementarity(&lambda, &slack_hat));
        InnerSolution {
            z,
            activity: test.classify(
                (&crate::linalg::row_amax(&cons.a), &cons.b),
                &sol.working,
                &lambda,
                &slack_hat,
            ),
            multipliers: lambda,
            multipliers_eq: &z_star.multipliers_eq + &sol.mu_eq * s,
            status: SolveStatus {
                solver: "offset active set from z*",
                iterations: sol.repairs,
                residual,
                dependent: z_star.status.dependent.clone(),
                dependent_eq: z_star.status.dependent_eq.clone(),
            },
        }
    }
}

impl InnerProblem for QuadraticProblem {
    /// Makes the dense backend's factorization now (`V = L⁻¹Cᵀ`, `G = VᵀV`: `n²r/2 + nr²/2`
    /// multiply-adds for `r` rows), cut over a team of `threads` when that work pays for
    /// starting one (`2²²` multiply-adds, about a millisecond); the same factor, bit for bit,
    /// as the first solve would make alone.
    fn prepare(&self, threads: usize) {
        // Other backends keep no factorization: no team to start for them.
        if self.backend.name() == DENSE && self.factor.get().is_none() {
            let (n, r) = (self.q.nrows(), self.constraints.m());
            let r = r + self.constraints.b_eq.len();
            let work = (n * n / 2).saturating_mul(r).saturating_add(n * r * r / 2);
            self.prepare_on(&team_for(threads, work));
        }
    }

    fn dim(&self) -> usize {
        self.q.nrows()
    }

    fn n_params(&self) -> usize {
        self.b.ncols()
    }

    fn energy(&self, z: &DVector<f64>, theta: &DVector<f64>) -> f64 {
        0.5 * z.dot(&(&*self.q * z)) - z.dot(&(&self.b * theta + &self.c))
    }

    fn grad_theta(&self, z: &DVector<f64>, _theta: &DVector<f64>) -> DVector<f64> {
        -(self.b.tr_mul(z))
    }

    fn cross_jvp(
        &self,
        _z: &DVector<f64>,
        _theta: &DVector<f64>,
        dz: &DVector<f64>,
    ) -> DVector<f64> {
        -(self.b.tr_mul(dz))
    }

    fn hessian(&self, _z: &DVector<f64>, _theta: &DVector<f64>) -> DMatrix<f64> {
        (*self.q).clone()
    }

    fn constraints(&self) -> &LinearConstraints {
        &self.constraints
    }

    fn strong_convexity(&self) -> Option<f64> {
        Some(*self.nu.get_or_init(|| min_eigenvalue(&self.q)))
    }

    /// Prop. 2's Eq. 17 on the stored factorization of `Q` (dense backend): the strongly
    /// active and equality rows held, the weakly active ones as inequalities, the rest left
    /// out — the same rows, so the same factor as `z*`'s solve.
    fn closed_form_direction(
        &self,
        _theta: &DVector<f64>,
        z_star: &InnerSolution,
        c: &DVector<f64>,
    ) -> Option<Result<Direction>> {
        let factor = self.factor()?;
        Some(dense_direction(self, factor, z_star, c))
    }

    fn solve(&self, theta: &DVector<f64>, loss: &Loss, beta: f64) -> Result<InnerSolution> {
        check_augmented(self, theta, loss, beta)?;
        let curvature_added = beta * loss.curvature() != 0.0;
        let sol = self.solve_qp(&self.qp(theta, loss, beta), curvature_added)?;
        Ok(InnerSolution {
            z: sol.x,
            multipliers: sol.lambda,
            multipliers_eq: sol.lambda_eq,
            activity: sol.activity,
            status: SolveStatus {
                solver: sol.backend,
                iterations: sol.iterations,
                residual: sol.residual,
                dependent: sol.dependent,
                dependent_eq: sol.dependent_eq,
            },
        })
    }

    /// The offset solve of [`OffsetQp`]: `f = (ẑ_β − z*)/|β|` solves
    /// `(Q + βκI) f + sign(β) ℓ'(z*) − Aᵀμ − A_eqᵀμ_eq = 0` with the rows active at `z*`
    /// (strongly or weakly) starting on the working set at `A_i f = 0`, so its data are `O(1)`
    /// for every β. Then `(E(ẑ) − E(z*))/|β| = Σ_{i left} λ*_i a_iᵀf + (|β|/2) fᵀQf` (by
    /// stationarity at `z*`, `∇E(z*) = Aᵀλ* + A_eqᵀλ*_eq`, and `a_iᵀf = 0` on rows that stay)
    /// and `(∂_θE(ẑ) − ∂_θE(z*))/|β| = −Bᵀf`. When the active-set iteration does not settle
    /// from there (β large enough to change many rows), it restarts from the working set of a
    /// backend solve of `ẑ_β`.
    fn offset(
        &self,
        theta: &DVector<f64>,
        loss: &Loss,
        beta: f64,
        z_star: &InnerSolution,
    ) -> Result<Offset> {
        check_offset(self, theta, loss, beta, z_star)?;
        let m = self.constraints.m();
        let problem = self.offset_problem(loss, beta, z_star);
        let sol = self.offset_rates(theta, loss, (beta, z_star), &problem)?;
        let s = beta.abs();
        let af = &self.constraints.a * &sol.f;
        // Rows that held a multiplier at z* and left contribute λ*_i a_iᵀf; rows that stay
        // have a_iᵀf = 0 exactly.
        let energy_gap = (0..m)
            .filter(|&i| !sol.working[i] && z_star.multipliers[i] > 0.0)
            .map(|i| z_star.multipliers[i] * af[i])
            .sum::<f64>()
            + s * (0.5 * sol.f.dot(&(&*self.q * &sol.f)));
        let mut z_hat = self.offset_solution(theta, loss, beta, z_star, (&problem, &sol, &af));
        if super::offset_cancels(&z_star.z, s, &sol.f, &z_hat.z) {
            // ẑ_β is much smaller than z* (|z*| ≈ 1e20 against |ẑ_β| ≈ 1): z* + βf has lost
            // its digits; ẑ_β's own QP is well scaled.
            z_hat = self.solve(theta, loss, beta)?;
        }
        let violation = self.violation(&z_hat.z);
        if violation > self.tol.feasibility {
            // f (and with it the value and the gradient) is off by more than the tolerance:
            // said, not printed (β of 1e284 on a nearly singular Q).
            return Err(Error::Inaccurate {
                what: format!(
                    "the offset solve at beta {beta:e} (z* + beta f violates the constraints \
                     beyond the feasibility tolerance)"
                ),
                residual: violation,
            });
        }
        Ok(Offset {
            grad_theta_gap: self.cross_jvp(&z_star.z, theta, &sol.f),
            energy_gap,
            z_hat,
            // μ is the rate on every row: μ_i on the working set, −λ*_i/|β| off it.
            multiplier_rate: sol.mu,
            multiplier_rate_eq: sol.mu_eq,
            rate: sol.f,
        })
    }
}

/// The one-sided gradients of `L(data) = ℓ(z*)` with respect to every datum of a
/// [`QuadraticProblem`] ([`QuadraticProblem::data_gradients`]), shaped like the data.
#[derive(Debug, Clone)]
#[must_use]
pub struct LayerGradients {
    /// `∂L/∂Q = ½(ż z*ᵀ + z* żᵀ)`.
    pub q: DMatrix<f64>,
    /// `∂L/∂B = −ż θᵀ`.
    pub b: DMatrix<f64>,
    /// `∂L/∂c = −ż`.
    pub c: DVector<f64>,
    /// `∂L/∂A = −(μ z*ᵀ + λ* żᵀ)`, `∂L/∂b = μ`, and the same for `A_eq`, `b_eq` with
    /// `μ_eq`, `λ*_eq`.
    pub constraints: LinearConstraints,
}

impl QuadraticProblem {
    /// The gradients of `L = ℓ(z*)` with respect to `Q`, `B`, `c`, `A`, `b`, `A_eq`, `b_eq`
    /// (not only `θ`), in the one-sided sense of Prop. 2, from `z*` and the limit direction.
    ///
    /// By the envelope theorem on Def. 1's contrastive surrogate
    /// `L^β = (min_z{E + βℓ} − min_z E)/β` under the constraints, each is a difference of the
    /// Lagrangian's partial derivatives at the two minimizers divided by `β`; with
    /// `ẑ_β = z* + βż + o(β)` and `λ̂_β = λ* + βμ + o(β)` (`ż`, `μ`, `μ_eq`: Eq. 17's solution
    /// and multipliers, [`Direction::multipliers`]) the limits are, for the Lagrangian
    /// `½zᵀQz − zᵀ(Bθ + c) − λᵀ(Az − b) − λ_eqᵀ(A_eq z − b_eq)`,
    /// `∂L/∂Q = ½(żz*ᵀ + z*żᵀ)`, `∂L/∂B = −żθᵀ`, `∂L/∂c = −ż` (so `dL/dθ = −Bᵀż`, Cor. 1),
    /// `∂L/∂A = −(μz*ᵀ + λ*żᵀ)`, `∂L/∂b = μ`, `∂L/∂A_eq = −(μ_eq z*ᵀ + λ*_eq żᵀ)`,
    /// `∂L/∂b_eq = μ_eq`. At weakly active rows they inherit the one-sidedness of `ż` and `μ`
    /// (the branch each row took). For a symmetric perturbation of `Q` the directional
    /// derivative is `⟨∂L/∂Q, ΔQ⟩`.
    ///
    /// ```
    /// use bilevel::nalgebra::{dmatrix, dvector};
    /// use bilevel::prelude::*;
    ///
    /// // min ½‖z‖² − z₁θ s.t. z₁ + z₂ ≥ 1, loss z₁: the constraint is active at θ = 0.
    /// let constraints = LinearConstraints { a: dmatrix![1.0, 1.0], b: dvector![1.0], ..LinearConstraints::none(2) };
    /// let layer = QuadraticProblem::new(dmatrix![1.0, 0.0; 0.0, 1.0], dmatrix![1.0; 0.0], dvector![0.0, 0.0], constraints)?;
    /// let program = Bilevel::new(layer, Loss::Linear { g: dvector![1.0, 0.0] })?;
    /// let theta = dvector![0.0];
    /// let limit = program.limit(&theta)?;
    /// let g = program.inner.data_gradients(&theta, &limit.z_star, &limit.direction)?;
    /// // z* = (b/2, b/2): dL/db = ½.
    /// assert!((g.constraints.b[0] - 0.5).abs() < 1e-12);
    /// # Ok::<(), bilevel::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`crate::Error::DimensionMismatch`] when `theta`, `z_star` or `direction` do not fit
    /// the layer.
    pub fn data_gradients(
        &self,
        theta: &DVector<f64>,
        z_star: &InnerSolution,
        direction: &Direction,
    ) -> Result<LayerGradients> {
        let rates = Rates {
            z: &direction.z_dot,
            multipliers: &direction.multipliers,
            multipliers_eq: &direction.multipliers_eq,
            beta: 0.0,
        };
        self.gradients_from(theta, z_star, &rates)
    }

    /// The gradients of Def. 1's surrogate `L^β` with respect to the layer's data at a finite
    /// `β` (the finite-β counterpart of [`QuadraticProblem::data_gradients`], which is its
    /// limit): by the envelope theorem, `[∂Lagr(ẑ_β, λ̂_β) − ∂Lagr(z*, λ*)]/β`, written with the
    /// rates `f = (ẑ_β − z*)/β`, `μ = (λ̂_β − λ*)/β` of [`Offset`] so that nothing of size `β`
    /// is formed by subtraction: `∂/∂Q = ½(fz*ᵀ + z*fᵀ) + (β/2)ffᵀ`, `∂/∂B = −fθᵀ`,
    /// `∂/∂c = −f`, `∂/∂A = −(μz*ᵀ + λ*fᵀ + βμfᵀ)`, `∂/∂b = μ`, and the same for `A_eq`, `b_eq`.
    ///
    /// # Errors
    /// As [`QuadraticProblem::data_gradients`]; `offset` from another problem.
    pub fn surrogate_data_gradients(
        &self,
        theta: &DVector<f64>,
        z_star: &InnerSolution,
        offset: &Offset,
        beta: f64,
    ) -> Result<LayerGradients> {
        crate::error::check_beta(beta)?;
        let rates = Rates {
            z: &offset.rate,
            multipliers: &offset.multiplier_rate,
            multipliers_eq: &offset.multiplier_rate_eq,
            beta,
        };
        self.gradients_from(theta, z_star, &rates)
    }

    /// The one formula behind both (see [`QuadraticProblem::surrogate_data_gradients`]; the
    /// limit is `β = 0` with the limit rates).
    fn gradients_from(
        &self,
        theta: &DVector<f64>,
        z_star: &InnerSolution,
        r: &Rates<'_>,
    ) -> Result<LayerGradients> {
        let (n, m, k) = (
            self.q.nrows(),
            self.constraints.m(),
            self.constraints.b_eq.len(),
        );
        let fits = [
            ("theta", self.b.ncols(), theta.len()),
            ("z_star", n, z_star.z.len()),
            ("z_star multipliers", m, z_star.multipliers.len()),
            (
                "z_star equality multipliers",
                k,
                z_star.multipliers_eq.len(),
            ),
            ("rate of z", n, r.z.len()),
            ("rate of the multipliers", m, r.multipliers.len()),
            (
                "rate of the equality multipliers",
                k,
                r.multipliers_eq.len(),
            ),
        ];
        if let Some(&(what, want, got)) = fits.iter().find(|(_, w, g)| w != g) {
            return Err(crate::error::Error::dim(what, want, got));
        }
        let (z, f, s) = (&z_star.z, r.z, r.beta);
        let outer = |u: &DVector<f64>, v: &DVector<f64>| u * v.transpose();
        let q = (outer(f, z) + outer(z, f)) * 0.5 + outer(f, f) * (0.5 * s);
        let rows = |mu: &DVector<f64>, lambda: &DVector<f64>| {
            -(outer(mu, z) + outer(lambda, f) + outer(mu, f) * s)
        };
        let grads = LayerGradients {
            q,
            b: -outer(f, theta),
            c: -f,
            constraints: LinearConstraints {
                a: rows(r.multipliers, &z_star.multipliers),
                b: r.multipliers.clone(),
                a_eq: rows(r.multipliers_eq, &z_star.multipliers_eq),
                b_eq: r.multipliers_eq.clone(),
            },
        };
        let every = grads.q.iter().chain(grads.b.iter()).chain(grads.c.iter());
        let c = &grads.constraints;
        let every = every
            .chain(c.a.iter())
            .chain(c.b.iter())
            .chain(c.a_eq.iter());
        crate::error::check_finite("layer gradients", every.chain(c.b_eq.iter()))?;
        Ok(grads)
    }
}

/// The rates of `z` and the multipliers along `β` (at `β`, or their limits at `β = 0`).
struct Rates<'a> {
    z: &'a DVector<f64>,
    multipliers: &'a DVector<f64>,
    multipliers_eq: &'a DVector<f64>,
    beta: f64,
}

/// [`QuadraticProblem::closed_form_direction`]: Eq. 17 as a QP on the layer's own rows.
fn dense_direction(
    layer: &QuadraticProblem,
    factor: &DenseFactor,
    z_star: &InnerSolution,
    c: &DVector<f64>,
) -> Result<Direction> {
    let (m, k) = (layer.constraints.m(), layer.constraints.b_eq.len());
    if z_star.activity.len() != m {
        return Err(crate::error::Error::dim(
            "activity",
            m,
            z_star.activity.len(),
        ));
    }
    let weak: Vec<usize> = (0..m)
        .filter(|&i| z_star.activity[i] == Activity::Weak)
        .collect();
    let held: Vec<usize> = (0..m)
        .filter(|&i| z_star.activity[i] == Activity::Strong)
        .chain(m..m + k)
        .collect();
    let rows: Vec<usize> = weak.iter().chain(&held).copied().collect();
    if !weak.is_empty() {
        // Without weak rows the direction's KKT system is the held rows' own, and its
        // condition estimate (reported) covers their geometry; weak rows that leave are not
        // in it, so their angles to the others are checked here.
        super::check_active_rows(factor.independence(&rows))?;
    }
    let stacked = |r: usize| {
        if r < m {
            layer.constraints.a.row(r).into_owned()
        } else {
            layer.constraints.a_eq.row(r - m).into_owned()
        }
    };
    let n = layer.q.nrows();
    let pick = |list: &[usize]| {
        let mut out = DMatrix::zeros(list.len(), n);
        for (j, &r) in list.iter().enumerate() {
            out.row_mut(j).copy_from(&stacked(r));
        }
        out
    };
    let qp = Qp {
        p: (*layer.q).clone(),
        q: c.clone(),
        a: pick(&weak),
        b: DVector::zeros(weak.len()),
        a_eq: pick(&held),
        b_eq: DVector::zeros(held.len()),
    };
    let sol = dense_exact(factor, &qp, &rows, &layer.tol, layer.condition)?;
    let method = match (weak.is_empty(), held.is_empty()) {
        (false, _) => DirectionMethod::Prop2Qp { backend: DENSE },
        (true, true) => DirectionMethod::Prop1,
        (true, false) => DirectionMethod::Prop2Linear,
    };
    let strong = &held[..held.len() - k];
    Ok(Direction::from_eq17(sol, (m, k), &weak, strong, method))
}
