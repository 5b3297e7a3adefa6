//! Convex CHL as per-sample QPs (the exact reference of the batched solver).

use std::ops::{AddAssign, SubAssign};

use nalgebra::{DMatrix, DVector, DVectorView};

use super::common::{box_bounds, proximal_report};
use crate::error::{Error, Result};
use crate::nested::{
    prefix_products, Batch, NestedProblem, NestedReport, NestedStatus, Network, Optimum, Outcome,
};
use crate::problem::LinearConstraints;
use crate::solve::qp::{solve_exact, Clarabel, ExactQp, Qp, QpBackend, Tolerances};

/// Convex CHL's free-phase QP in the stacked variable `(z_1; …; z_L)`, scaled by `Π β`:
/// `P = Σ_k s_k J_kᵀJ_k` (block-tridiagonal) and the box rows are shared by all samples; only
/// the linear term depends on `x`. The clamped phase adds `w = Π β / B` times the loss.
pub(super) struct ProximalQp {
    widths: Vec<usize>,
    offsets: Vec<usize>,
    s: Vec<f64>,
    p: DMatrix<f64>,
    boxes: LinearConstraints,
}

impl ProximalQp {
    fn new(problem: &NestedProblem<'_>) -> Result<Self> {
        let net = problem.net;
        let bounds = box_bounds(net)?;
        let widths = net.widths();
        let offsets = net.offsets();
        let n: usize = widths.iter().sum();
        let s = prefix_products(&problem.betas);
        let mut p = DMatrix::zeros(n, n);
        for (k, layer) in net.layers.iter().enumerate() {
            let m = (k > 0).then_some(&layer.w);
            crate::nested::add_residual_hessian(&mut p, &offsets, (k, widths[k]), m, s[k]);
        }
        let per_unit: Vec<(f64, f64)> = widths
            .iter()
            .zip(&bounds)
            .flat_map(|(&nk, &b)| std::iter::repeat_n(b, nk))
            .collect();
        let (boxes, _) = LinearConstraints::boxes(&per_unit);
        Ok(Self {
            widths,
            offsets,
            s,
            p,
            boxes,
        })
    }

    fn block<'a>(&self, v: &'a DVector<f64>, k: usize) -> DVectorView<'a, f64> {
        v.rows(self.offsets[k], self.widths[k])
    }

    /// The free QP of one sample: linear term `−Σ_k s_k J_kᵀ const_k` with
    /// `const_1 = W_1 x + b_1`, `const_k = b_k`.
    fn free_qp(&self, net: &Network<f64>, x: DVectorView<'_, f64>) -> Qp {
        let n = self.p.nrows();
        let mut q = DVector::zeros(n);
        for (k, layer) in net.layers.iter().enumerate() {
            let c = if k == 0 {
                &layer.w * x + &layer.bias
            } else {
                layer.bias.clone()
            };
            q.rows_mut(self.offsets[k], self.widths[k])
                .sub_assign(&(&c * self.s[k]));
            if k > 0 {
                let back = layer.w.transpose() * &c * self.s[k];
                q.rows_mut(self.offsets[k - 1], self.widths[k - 1])
                    .add_assign(&back);
            }
        }
        Qp {
            p: self.p.clone(),
            q,
            a: self.boxes.a.clone(),
            b: self.boxes.b.clone(),
            a_eq: DMatrix::zeros(0, n),
            b_eq: DVector::zeros(0),
        }
    }

    /// Both phases of one sample: the free solution `ž` and `d = ẑ − ž` from the difference of
    /// the two KKT systems on the clamped working set Ŵ (bound rows: they fix coordinates),
    /// `(P + wE) d + A_Ŵᵀ ν = −wE(ž − t) − Σ_{i∈W̌∖Ŵ} a_iᵀ λ̌_i`, `a_i d = b_i − a_i ž (i ∈ Ŵ)`,
    /// whose right-hand side is `O(w)`: `d` comes out with relative, not absolute, accuracy.
    fn sample(
        &self,
        net: &Network<f64>,
        x: DVectorView<'_, f64>,
        t: DVectorView<'_, f64>,
        w: f64,
    ) -> Result<(ExactQp, DVector<f64>, ExactQp)> {
        let backend = Clarabel::default();
        let tol = Tolerances::default();
        let free_qp = self.free_qp(net, x);
        let mut clamped_qp = free_qp.clone();
        let top = self.widths.len() - 1;
        let (ot, nt) = (self.offsets[top], self.widths[top]);
        for i in 0..nt {
            clamped_qp.p[(ot + i, ot + i)] += w;
        }
        clamped_qp.q.rows_mut(ot, nt).sub_assign(&(t * w));
        let zf = solve_exact(&backend as &dyn QpBackend, &free_qp, &tol)?;
        let zc = solve_exact(&backend as &dyn QpBackend, &clamped_qp, &tol)?;
        // Every row is a bound `±z_j ≥ ±c`: the clamped working set fixes those coordinates of
        // `d` exactly (`d_j = b_i − a_i ž` over `a_ij = ±1`), and the rest solve
        // `(P + wE)_FF d_F = r1_F − (P + wE)_FA d_A` (no multipliers needed).
        let a = &self.boxes.a;
        let n = self.p.nrows();
        let mut r1 = DVector::zeros(n);
        for i in 0..nt {
            r1[ot + i] = -w * (zf.x[ot + i] - t[i]);
        }
        for i in (0..a.nrows()).filter(|&i| zf.working[i] && !zc.working[i]) {
            r1 -= a.row(i).transpose() * zf.lambda[i];
        }
        let mut d = DVector::zeros(n);
        let mut fixed = vec![false; n];
        for i in (0..a.nrows()).filter(|&i| zc.working[i]) {
            let j = a.row(i).transpose().iamax();
            d[j] = if zf.working[i] {
                0.0
            } else {
                (self.boxes.b[i] - a.row(i).dot(&zf.x.transpose())) / a[(i, j)]
            };
            fixed[j] = true;
        }
        let free: Vec<usize> = (0..n).filter(|&j| !fixed[j]).collect();
        let rhs = &r1 - &clamped_qp.p * &d;
        let p_ff = DMatrix::from_fn(free.len(), free.len(), |i, j| {
            clamped_qp.p[(free[i], free[j])]
        });
        let r_f = DVector::from_fn(free.len(), |i, _| rhs[free[i]]);
        let d_f =
            p_ff.cholesky()
                .map(|ch| ch.solve(&r_f))
                .ok_or_else(|| Error::NotPositiveDefinite {
                    what: "convex CHL's clamped Hessian on the free coordinates".into(),
                    reason: "Cholesky failed".into(),
                })?;
        for (i, &j) in free.iter().enumerate() {
            d[j] = d_f[i];
        }
        Ok((zf, d, zc))
    }
}

/// Convex CHL by two exact QPs per sample (samples decouple) and the difference of their KKT
/// systems.
pub(super) fn convex_chl(problem: &NestedProblem<'_>, batch: Batch<'_>) -> Result<NestedReport> {
    let qp = ProximalQp::new(problem)?;
    let b = batch.len();
    let zeros =
        || -> Vec<DMatrix<f64>> { qp.widths.iter().map(|&n| DMatrix::zeros(n, b)).collect() };
    let (mut free, mut d) = (zeros(), zeros());
    let (mut iterations, mut residual) = (0, 0.0f64);
    let mut fallback = None;
    // Per-sample surrogates at β (the batch convention): the loss weight is Π β per sample.
    let w = qp.s[qp.widths.len()];
    for j in 0..b {
        let (zf, dj, zc) = qp.sample(problem.net, batch.x.column(j), batch.target.column(j), w)?;
        iterations += zf.iterations + zc.iterations;
        residual = residual.max(zf.residual).max(zc.residual);
        fallback = fallback.or(zf.fallback.clone()).or(zc.fallback.clone());
        for k in 0..qp.widths.len() {
            free[k].column_mut(j).copy_from(&qp.block(&zf.x, k));
            d[k].column_mut(j).copy_from(&qp.block(&dj, k));
        }
    }
    let status = NestedStatus {
        outcome: Outcome::Solved,
        solver: "convex CHL: exact QP per sample",
        iterations,
        residual,
        optimum: Optimum::Global,
        fallback: fallback.map(|reason| crate::nested::Fallback {
            from: "the QP backend (the dual active-set method finished)",
            reason,
        }),
    };
    Ok(proximal_report(
        problem.net,
        &qp.s,
        batch,
        (free, &d),
        status,
    ))
}
