//! The sparse factorization of an equality-constrained KKT matrix `K = [P Rᵀ; R 0]` (`P`
//! symmetric positive definite `n × n`, `R` the held rows, equilibrated), solved to rounding by
//! iterative refinement against `K` itself.
//!
//! The fast path is faer's sparse `LDLᵀ` with a symmetric minimum-degree ordering of the
//! quasi-definite `K_δ = [P Rᵀ; R −δI]` (`δ = 1e-9 / max|P|`, with faer's dynamic
//! regularization as a guard): a quasi-definite matrix has an `LDLᵀ` factorization for every
//! symmetric ordering (Vanderbei 1995), so the ordering is chosen for fill alone, and a dense
//! row (a simplex's `1ᵀz = 1`) is eliminated last. The refinement removes `δ` and the
//! rounding. If it does not reach rounding level (a `K` too ill-conditioned for the perturbed
//! factor), faer's sparse LU with partial pivoting of the unperturbed `K` takes over, built once
//! on first need; only if that fails too is the system called singular.

use std::sync::OnceLock;

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::ldlt::factor::LdltRegularization;
use faer::linalg::solvers::Solve;
use faer::sparse::linalg::cholesky::{
    factorize_symbolic_cholesky, CholeskySymbolicParams, LdltRef, SymbolicCholesky,
    SymmetricOrdering,
};
use faer::sparse::linalg::solvers::{Lu, SymbolicLu};
use faer::{Conj, Mat, Par, Side};
use nalgebra::DVector;

use super::sparse::{compact, for_column, for_each_entry, memory, sort_column, Csc};
use crate::error::{Error, Result};

/// The factorization (module docs), kept so that the forward point, the rate problem (Eq. 17)
/// and the data gradients reuse it.
pub(crate) struct SparseKkt {
    n: usize,
    /// `max|P|` (for the scale of [`SparseKkt::condition`]).
    p_amax: f64,
    /// `K`, with explicit zeros on the held rows' diagonal (the pattern of `K_δ`).
    k: Csc,
    /// The `LDLᵀ` of `K_δ` (`None` when it broke down: the LU is used).
    ldlt: Option<(SymbolicCholesky<usize>, Vec<f64>)>,
    /// The LU of `K`, built on first need.
    lu: OnceLock<std::result::Result<Lu<usize, f64>, String>>,
}

/// A solve of [`SparseKkt`]: the solution and its accuracy.
pub(crate) struct KktSolve {
    /// `[x; y]` with `P x + Rᵀ y = r`, `R x = s`.
    pub(crate) solution: DVector<f64>,
    /// ∞-norms of the last refinement correction of `x` and of `y` (forward-error estimates).
    pub(crate) error: (f64, f64),
    /// The `LDLᵀ` did not reach rounding level and the LU solved instead.
    pub(crate) lu_fallback: bool,
}

/// The row-wise backward error [`SparseKkt::solve`] must reach (else the held rows are
/// dependent to `f64`'s resolution).
const KKT_BACKWARD_ERROR: f64 = 1e-10;

/// Refinement steps on the `LDLᵀ` of `K_δ` before the LU takes over.
const LDLT_STEPS: usize = 10;

/// The backward error the `LDLᵀ` path must reach to be taken (else the LU is tried: a
/// perturbed factor is only trusted where it gives what an exact one would).
const LDLT_BACKWARD_ERROR: f64 = 64.0 * f64::EPSILON;

impl SparseKkt {
    /// Assembles `K` and factors `K_δ`.
    ///
    /// # Errors
    /// Only allocation failures; a factorization that breaks down is replaced by the LU.
    pub(crate) fn new(p: &Csc, r: &Csc) -> Result<Self> {
        let n = p.nrows();
        let k = assemble(p, r)?;
        let p_amax = super::sparse::amax(p);
        let delta = 1e-9 / p_amax.max(f64::MIN_POSITIVE);
        let ldlt = ldlt(&k, n, delta)?;
        Ok(Self {
            n,
            p_amax,
            k,
            ldlt,
            lu: OnceLock::new(),
        })
    }

    /// Solves `K [x; y] = rhs` to the row-wise backward error
    /// `max_i |rhs − K v|_i / (‖K_i‖₁ ‖v‖∞ + |rhs_i|)` at rounding level (each row's residual
    /// against the size of that row's terms, which does not change when a row is scaled):
    /// refinement on the `LDLᵀ`, then on the LU if needed (module docs).
    ///
    /// # Errors
    /// [`Error::Singular`] when neither reaches `1e-10` with a finite solution: the held rows are
    /// dependent to `f64`'s resolution.
    pub(crate) fn solve(&self, rhs: &DVector<f64>) -> Result<KktSolve> {
        if let Some((symbolic, values)) = &self.ldlt {
            let factor = LdltRef::new(symbolic, values);
            let apply = |b: &DVector<f64>| ldlt_solve(factor, b);
            if let Ok(sol) = self.refine(rhs, apply, (LDLT_STEPS, LDLT_BACKWARD_ERROR)) {
                return Ok(sol);
            }
        }
        let lu = self.lu.get_or_init(|| lu(&self.k));
        match lu {
            Ok(lu) => Ok(KktSolve {
                lu_fallback: true,
                ..self.refine(rhs, |b| lu_solve(lu, b), (4, KKT_BACKWARD_ERROR))?
            }),
            Err(e) => Err(Error::Singular(format!(
                "the sparse KKT system on the held rows cannot be factored ({e}): the rows are \
                 linearly dependent"
            ))),
        }
    }

    /// The dimension `n` of the primal part.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    /// The 2-norm condition estimate of `K_σ = [σP Rᵀ; R 0]`, `σ` the power of two with
    /// `σ max|P| ∈ [1, 2)`: the matrix whose condition the dense path reports
    /// ([`crate::solve::qp::DenseFactor::condition`]), by Lanczos on `K_σ` and on `K_σ⁻¹`
    /// ([`super::condition_estimate_of`]). `K_σ = D K D` with `D = diag(√σ I, I/√σ)`, so both
    /// go through `K` and its refined solves ([`SparseKkt::solve`]); a solve that fails gives
    /// `∞`. It costs 16 products with `K` and 16 refined solves.
    pub(crate) fn condition(&self) -> f64 {
        let (n, dim) = (self.n, self.k.nrows());
        let root = super::power_of_two_scale(self.p_amax).sqrt();
        // D u (or D⁻¹ u, with `root` inverted).
        let scaled = |u: &DVector<f64>, root: f64| {
            let mut v = u.clone();
            v.rows_mut(0, n).scale_mut(root);
            v.rows_mut(n, dim - n).unscale_mut(root);
            v
        };
        let apply = |u: &DVector<f64>| {
            let mut out = DVector::zeros(dim);
            let v = scaled(u, root);
            for_each_entry(&self.k, |i, j, a| out[i] += a * v[j]);
            Some(scaled(&out, root))
        };
        let solve = |u: &DVector<f64>| {
            let sol = self.solve(&scaled(u, root.recip())).ok()?;
            Some(scaled(&sol.solution, root.recip()))
        };
        super::condition_estimate_of(dim, apply, solve)
    }

    /// Iterative refinement of `K v = rhs` with the approximate inverse `apply`, at most
    /// `steps` corrections, accepted at a backward error of `accept`.
    fn refine(
        &self,
        rhs: &DVector<f64>,
        apply: impl Fn(&DVector<f64>) -> DVector<f64>,
        (steps, accept): (usize, f64),
    ) -> Result<KktSolve> {
        let mut v = apply(rhs);
        let mut error = (f64::INFINITY, f64::INFINITY);
        // Corrections until one is at rounding level: the last one's size is the estimate of
        // the error before it, so an upper estimate of the error after it.
        for _ in 0..steps {
            let dv = apply(&self.residual(rhs, &v).0);
            v += &dv;
            error = (
                dv.rows(0, self.n).amax(),
                dv.rows(self.n, dv.len() - self.n).amax(),
            );
            let size = dv.amax();
            if size <= 4.0 * f64::EPSILON * v.amax() || size.is_nan() {
                break;
            }
        }
        let backward = self.residual(rhs, &v).1;
        if !(backward <= accept && v.iter().all(|x| x.is_finite())) {
            return Err(Error::Singular(format!(
                "the sparse KKT system on the held rows is singular to f64's resolution \
                 (backward error {backward:.1e}): the rows are (nearly) linearly dependent"
            )));
        }
        Ok(KktSolve {
            solution: v,
            error,
            lu_fallback: false,
        })
    }

    /// `rhs − K v` and its row-wise backward error (see [`SparseKkt::solve`]).
    fn residual(&self, rhs: &DVector<f64>, v: &DVector<f64>) -> (DVector<f64>, f64) {
        let (mut r, mut size) = (rhs.clone(), DVector::<f64>::zeros(rhs.len()));
        for_each_entry(&self.k, |i, j, a| {
            r[i] -= a * v[j];
            size[i] += a.abs();
        });
        let v_norm = v.amax();
        let backward = (0..r.len())
            .map(|i| {
                let s = size[i] * v_norm + rhs[i].abs();
                if r[i] == 0.0 {
                    0.0
                } else if s > 0.0 {
                    r[i].abs() / s
                } else {
                    f64::INFINITY
                }
            })
            .fold(0.0, f64::max);
        (r, backward)
    }
}

/// `K = [P Rᵀ; R 0]` with explicit zeros on the held rows' diagonal.
fn assemble(p: &Csc, r: &Csc) -> Result<Csc> {
    let n = p.nrows();
    let rt = r.as_ref().transpose().to_col_major().map_err(memory)?;
    let size = n + r.nrows();
    let nnz = p.val().len() + 2 * r.val().len() + r.nrows();
    let mut col_ptr = Vec::with_capacity(size + 1);
    let (mut rows, mut vals) = (Vec::with_capacity(nnz), Vec::with_capacity(nnz));
    col_ptr.push(0);
    for j in 0..size {
        let start = rows.len();
        let mut push = |i: usize, v: f64| {
            rows.push(i);
            vals.push(v);
        };
        if j < n {
            for_column(p, j, &mut push);
            for_column(r, j, |i, v| push(n + i, v));
        } else {
            for_column(&rt, j - n, &mut push);
            push(j, 0.0);
        }
        sort_column(&mut rows, &mut vals, start);
        col_ptr.push(rows.len());
    }
    Ok(compact(size, size, col_ptr, rows, vals))
}

/// The `LDLᵀ` of `K_δ` (module docs), or `None` if faer reports a zero pivot.
fn ldlt(k: &Csc, n: usize, delta: f64) -> Result<Option<(SymbolicCholesky<usize>, Vec<f64>)>> {
    let size = k.nrows();
    let mut k_delta = k.clone();
    {
        let sym = k.symbolic();
        let val = k_delta.val_mut();
        for j in n..size {
            for p in sym.col_range(j) {
                if sym.row_idx()[p] == j {
                    val[p] = -delta;
                }
            }
        }
    }
    let symbolic = factorize_symbolic_cholesky(
        k.symbolic(),
        Side::Lower,
        SymmetricOrdering::Amd,
        CholeskySymbolicParams::default(),
    )
    .map_err(memory)?;
    let mut values = vec![0.0; symbolic.len_val()];
    let signs: Vec<i8> = (0..size).map(|i| if i < n { 1 } else { -1 }).collect();
    let regularization = LdltRegularization {
        dynamic_regularization_signs: Some(&signs),
        dynamic_regularization_delta: delta,
        dynamic_regularization_epsilon: 1e-3 * delta,
    };
    let par = Par::Seq;
    let mut buffer =
        MemBuffer::try_new(symbolic.factorize_numeric_ldlt_scratch::<f64>(par, Default::default()))
            .map_err(memory)?;
    let factored = symbolic.factorize_numeric_ldlt(
        &mut values,
        k_delta.as_ref(),
        Side::Lower,
        regularization,
        par,
        MemStack::new(&mut buffer),
        Default::default(),
    );
    Ok(factored.is_ok().then_some((symbolic, values)))
}

fn ldlt_solve(factor: LdltRef<'_, usize, f64>, rhs: &DVector<f64>) -> DVector<f64> {
    let mut b = Mat::from_fn(rhs.len(), 1, |i, _| rhs[i]);
    let req = factor.symbolic().solve_in_place_scratch::<f64>(1, Par::Seq);
    let mut buffer = MemBuffer::new(req);
    factor.solve_in_place_with_conj(Conj::No, b.as_mut(), Par::Seq, MemStack::new(&mut buffer));
    DVector::from_fn(rhs.len(), |i, _| b[(i, 0)])
}

/// The LU of `K` with partial pivoting.
fn lu(k: &Csc) -> std::result::Result<Lu<usize, f64>, String> {
    let symbolic = SymbolicLu::try_new(k.symbolic()).map_err(|e| format!("{e:?}"))?;
    Lu::try_new_with_symbolic(symbolic, k.as_ref()).map_err(|e| format!("{e:?}"))
}

fn lu_solve(lu: &Lu<usize, f64>, rhs: &DVector<f64>) -> DVector<f64> {
    let mut b = Mat::from_fn(rhs.len(), 1, |i, _| rhs[i]);
    lu.solve_in_place(b.as_mut());
    DVector::from_fn(rhs.len(), |i, _| b[(i, 0)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::{csc_from_dense, csc_to_dense};
    use nalgebra::DMatrix;

    /// `[P Rᵀ; R 0] v = rhs` densely (nalgebra's LU), the reference.
    fn dense(p: &DMatrix<f64>, r: &DMatrix<f64>, rhs: &DVector<f64>) -> DVector<f64> {
        let (n, k) = (p.nrows(), r.nrows());
        let mut m = DMatrix::zeros(n + k, n + k);
        m.view_mut((0, 0), (n, n)).copy_from(p);
        m.view_mut((n, 0), (k, n)).copy_from(r);
        m.view_mut((0, n), (n, k)).copy_from(&r.transpose());
        m.lu().solve(rhs).unwrap()
    }

    fn spd(n: usize, seed: u64) -> DMatrix<f64> {
        let f = |i: usize, j: usize| ((i * 31 + j * 17 + seed as usize) % 13) as f64 / 13.0 - 0.5;
        let m = DMatrix::from_fn(n, n, f);
        &m * m.transpose() + DMatrix::identity(n, n)
    }

    #[test]
    fn the_ldlt_path_solves_a_kkt_system_to_rounding() {
        let (p, r) = (
            spd(12, 1),
            DMatrix::from_fn(5, 12, |i, j| ((i + 2 * j) % 7) as f64 - 3.0),
        );
        let rhs = DVector::from_fn(17, |i, _| (i as f64).sin());
        let kkt = SparseKkt::new(&csc_from_dense(&p), &csc_from_dense(&r)).unwrap();
        let sol = kkt.solve(&rhs).unwrap();
        assert!(!sol.lu_fallback);
        let want = dense(&p, &r, &rhs);
        assert!((&sol.solution - &want).amax() < 1e-12 * want.amax());
        assert_eq!(csc_to_dense(&kkt.k).nrows(), 17);
    }

    #[test]
    fn both_paths_reach_rounding_on_nearly_dependent_rows_and_dependent_rows_are_singular() {
        // Two rows 1e-7 apart: RP⁻¹Rᵀ has an eigenvalue near 1e-14, far below K_δ's δ = 1e-9;
        // the refinement still reaches a backward error at rounding (the promise), and x, which
        // the rows determine, is accurate. The LU path (forced) does the same.
        let n = 8;
        let p = DMatrix::identity(n, n);
        let r = DMatrix::from_fn(2, n, |i, j| match (i, j) {
            (_, 0) => 1.0,
            (1, 1) => 1e-7,
            _ => 0.0,
        });
        let rhs = DVector::from_fn(n + 2, |i, _| 1.0 + i as f64);
        let mut kkt = SparseKkt::new(&csc_from_dense(&p), &csc_from_dense(&r)).unwrap();
        for forced_lu in [false, true] {
            if forced_lu {
                kkt.ldlt = None;
            }
            let sol = kkt.solve(&rhs).unwrap();
            // The LDLᵀ of K_δ does not reach rounding here: the LU takes over either way.
            assert!(sol.lu_fallback, "{forced_lu}");
            let (_, backward) = kkt.residual(&rhs, &sol.solution);
            assert!(backward < 1e-14, "{forced_lu}: {backward:e}");
            // x₀ = s₀ = 9 and x₁ = (s₁ − s₀)/1e-7 = 1e7 from the rows (to the rounding of
            // 1e-7 itself).
            let x = &sol.solution;
            assert!(
                (x[0] - 9.0).abs() < 1e-8 && (x[1] - 1e7).abs() < 1e-6,
                "{forced_lu}: {x}"
            );
        }
        // The same row twice with different right-hand sides: no solution.
        let twice = DMatrix::from_fn(2, n, |_, j| j as f64 + 1.0);
        let kkt = SparseKkt::new(&csc_from_dense(&p), &csc_from_dense(&twice)).unwrap();
        let rhs = DVector::from_fn(n + 2, |i, _| if i == n + 1 { 2.0 } else { 1.0 });
        assert!(matches!(kkt.solve(&rhs), Err(Error::Singular(_))));
    }
}
