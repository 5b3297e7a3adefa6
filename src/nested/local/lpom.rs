//! LPOM (Fenchel energies): block-coordinate descent with FISTA blocks.

use nalgebra::DMatrix;

use super::envelope::envelope_gradient;
use crate::error::{Error, Result};
use crate::nested::linearized::forward_states;
use crate::nested::{
    activate_columns, Batch, NestedProblem, NestedReport, NestedSettings, NestedStatus, Optimum,
    Outcome,
};

/// LPOM on the whole batch (samples as columns; they decouple): block-coordinate descent over
/// layers from the forward pass, each block the convex problem of Eq. 35 solved by
/// [`lpom_block`].
pub(super) fn lpom(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    settings: &NestedSettings,
) -> Result<NestedReport> {
    let net = problem.net;
    let free = forward_states(net, batch.x)?;
    let mut z = free.clone();
    // ‖W_k‖₂² by power iteration (the Frobenius norm overestimates the Lipschitz constant by up
    // to the layer width and made FISTA crawl on 784-wide layers); it approaches from below,
    // hence the margin.
    let spectral_sq: Vec<f64> = net
        .layers
        .iter()
        .map(|l| {
            settings.fista_lipschitz_margin
                * crate::linalg::spectral_norm_sq(&l.w, settings.power_iterations)
        })
        .collect();
    let mut iterations = 0;
    let mut change = f64::INFINITY;
    for _sweep in 0..settings.lpom_max_sweeps {
        change = 0.0f64;
        for k in 0..=problem.top() {
            let (zk, steps) = lpom_block(problem, batch, (&z, k), &spectral_sq, settings);
            iterations += steps;
            change = change.max((&zk - &z[k]).amax());
            z[k] = zk;
        }
        if change <= settings.lpom_tol_sweep {
            let w = 1.0 / batch.len() as f64;
            let value = lpom_objective(problem, batch, &z);
            let grad = envelope_gradient(net, batch.x, &z, |k, _, fa| {
                (fa - &z[k]) * (w / problem.betas[k])
            });
            return Ok(NestedReport {
                value,
                grad,
                clamped: z,
                free,
                status: NestedStatus {
                    outcome: Outcome::Solved,
                    solver: "LPOM: block-coordinate descent, FISTA blocks",
                    iterations,
                    residual: change,
                    optimum: Optimum::Stationary,
                    fallback: None,
                },
            });
        }
    }
    Err(Error::NotConverged {
        solver: "LPOM block-coordinate descent".into(),
        iterations,
        residual: change,
    })
}

/// The LPOM objective (Eq. 34) averaged over the batch.
pub(super) fn lpom_objective(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    z: &[DMatrix<f64>],
) -> f64 {
    let top = problem.top();
    let mut grad = z[top].clone();
    let b = batch.len() as f64;
    let mut s = problem
        .loss
        .value_and_gradient(&z[top], batch.target, &mut grad)
        * b;
    for (k, (l, beta)) in problem
        .net
        .layers
        .iter()
        .zip(problem.betas.iter())
        .enumerate()
    {
        let a = l.affine(if k == 0 { batch.x } else { &z[k - 1] });
        for (zk, ak) in z[k].column_iter().zip(a.column_iter()) {
            s += (l.activation.potential(zk.as_slice()) - zk.dot(&ak)
                + l.activation.conjugate(ak.as_slice()))
                / beta;
        }
    }
    s / b
}

/// Block `k` of LPOM (Eq. 35) on the whole batch by FISTA with a gradient-mapping restart per
/// sample: box family `G = ½‖z‖² + ι_box`, split as a smooth `½‖z‖²/β_k` plus a projection;
/// softmax (negative entropy on the simplex, end of Section 3.2.2) with `G/β_k` as the prox
/// part. Returns the block's minimizer and the number of steps.
pub(super) fn lpom_block(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    (z, k): (&[DMatrix<f64>], usize),
    spectral_sq: &[f64],
    settings: &NestedSettings,
) -> (DMatrix<f64>, usize) {
    let (net, betas, top) = (problem.net, &problem.betas, problem.top());
    let l = &net.layers[k];
    let softmax = l.activation.bounds().is_none();
    let a_k = l.affine(if k == 0 { batch.x } else { &z[k - 1] });
    // Lipschitz constant of the block's smooth part; softmax and the box family are both
    // 1-Lipschitz maps f = ∇G*.
    let mut lip = if softmax { 0.0 } else { 1.0 / betas[k] };
    if k < top {
        lip += spectral_sq[k + 1] / betas[k + 1];
    } else {
        lip += 1.0;
    }
    let lip = lip.max(1.0 / betas[k]);
    let b = batch.len() as f64;
    let grad = |zz: &DMatrix<f64>| -> DMatrix<f64> {
        let mut g = if softmax {
            -&a_k / betas[k]
        } else {
            (zz - &a_k) / betas[k]
        };
        if k < top {
            let ln = &net.layers[k + 1];
            let fa = activate_columns(ln.activation, &ln.affine(zz));
            g += ln.w.transpose() * (fa - &z[k + 1]) / betas[k + 1];
        } else {
            // The per-sample loss gradient (the batch mean's times B).
            let mut lg = zz.clone();
            problem.loss.value_and_gradient(zz, batch.target, &mut lg);
            g += lg * b;
        }
        g
    };
    let step = |y: &DMatrix<f64>| -> DMatrix<f64> {
        let v = y - grad(y) / lip;
        let mut out = v.clone();
        for (vc, mut oc) in v.column_iter().zip(out.column_iter_mut()) {
            l.activation
                .prox(vc.as_slice(), 1.0 / (betas[k] * lip), oc.as_mut_slice());
        }
        out
    };
    let (mut zc, mut y) = (z[k].clone(), z[k].clone());
    let mut tk = vec![1.0f64; batch.len()];
    for steps in 1..=settings.fista_max_steps {
        let z_new = step(&y);
        let size = (&z_new - &zc).amax();
        for (j, tj) in tk.iter_mut().enumerate() {
            let t_new = (1.0 + (1.0 + 4.0 * *tj * *tj).sqrt()) / 2.0;
            let (zn, zo) = (z_new.column(j), zc.column(j));
            // Gradient-mapping restart keeps FISTA monotone enough on this strongly convex
            // block.
            let restart = (y.column(j) - zn).dot(&(zn - zo)) > 0.0;
            let yj = if restart {
                zn.into_owned()
            } else {
                zn + (zn - zo) * ((*tj - 1.0) / t_new)
            };
            y.column_mut(j).copy_from(&yj);
            *tj = if restart { 1.0 } else { t_new };
        }
        zc = z_new;
        if size <= settings.tol_step * (1.0 + zc.amax()) {
            return (zc, steps);
        }
    }
    (zc, settings.fista_max_steps)
}
