//! Convex CHL on the whole batch: block-coordinate descent on both phases.

use nalgebra::DMatrix;

use super::common::{box_bounds, box_increment, pre_activation, proximal_report};
use crate::error::{Error, Result};
use crate::nested::linearized::forward_states;
use crate::nested::{
    activate_columns, prefix_products, Batch, EnergyKind, NestedProblem, NestedReport,
    NestedSettings, NestedStatus, Optimum, Outcome, OutputLoss,
};

/// Convex CHL (proximal energies, box-family activations, squared loss) for the whole batch at
/// once, without a QP solver: block-coordinate projected gradient over layers on matrices whose
/// columns are the samples (every step is a batched matrix product).
///
/// Free phase from the forward pass; clamped phase on `d = ẑ − ž` from `d = 0`. Block `k`
/// (objective divided by `s_k`): `½‖z_k − W_k z_{k−1} − b_k‖² + (β_k/2)‖z_{k+1} − W_{k+1} z_k − b_{k+1}‖²`
/// over the box, by projected gradient with step `2/(2 + mβ_k‖W_{k+1}‖₂²)` (`m` the
/// `lipschitz_margin`); the top block
/// (`½‖z − a_L‖² + β_L½‖z − t‖²` in the clamped phase) is separable and closed-form. In the
/// clamped phase the free gradient is snapped to exact stationarity (zero off the bounds) and
/// every step is an increment `clamp(ž + v) − ž` formed without cancellation, so `d` keeps its
/// relative accuracy for small β, as in [`contrastive`](super::contrastive). Layers couple with strength
/// `c = β_k‖W‖₂²` and a block step contracts by about `c/(2 + c)`: the method is fast for small
/// β and slows as `c` grows (reported as [`Error::NotConverged`] after `settings.max_sweeps`).
///
/// # Errors
/// As [`contrastive`](super::contrastive) for proximal energies; [`Error::NotConverged`].
pub fn convex_chl_batched(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    settings: &NestedSettings,
) -> Result<NestedReport> {
    let batch = problem.prepare(batch, settings)?;
    if problem.energy != EnergyKind::Proximal || problem.loss != OutputLoss::Squared {
        return Err(Error::input(
            "problem",
            "the batched convex CHL solver needs proximal energies and the squared loss",
        ));
    }
    box_bounds(problem.net)?;
    let (net, betas, top) = (problem.net, &problem.betas, problem.top());
    // Step sizes 2/(2 + mβ_k‖W_{k+1}‖₂²): block k's Hessian has spectrum in [1, 1 + β_k‖W‖₂²],
    // and 2/(μ + L) is the best fixed step for it (contraction c/(2 + c), where 1/(1 + c) gave
    // c/(1 + c)); power iteration approaches ‖W‖₂² from below, hence the margin m.
    let steps: Vec<f64> = (0..=top)
        .map(|k| {
            if k == top {
                1.0
            } else {
                let norm = crate::linalg::spectral_norm_sq(
                    &net.layers[k + 1].w,
                    settings.power_iterations,
                );
                2.0 / (2.0 + settings.lipschitz_margin * betas[k] * norm)
            }
        })
        .collect();
    let mut free = forward_states(net, batch.x)?;
    let (free_sweeps, free_change) =
        batched_free_phase(problem, batch, &steps, &mut free, settings)?;
    let (d, clamped_sweeps, clamped_change) =
        batched_clamped_phase(problem, batch, &steps, &free, settings)?;
    let status = NestedStatus {
        outcome: Outcome::Solved,
        solver: "convex CHL: batched block-coordinate projected gradient",
        iterations: free_sweeps + clamped_sweeps,
        residual: free_change.max(clamped_change),
        optimum: Optimum::Global,
        fallback: None,
    };
    let s = prefix_products(betas);
    Ok(proximal_report(net, &s, batch, (free, &d), status))
}

/// The free phase of the batched solver, in place from the forward pass; returns the sweeps and
/// the last sweep's largest change.
pub(super) fn batched_free_phase(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    steps: &[f64],
    free: &mut [DMatrix<f64>],
    settings: &NestedSettings,
) -> Result<(usize, f64)> {
    let (net, betas, top) = (problem.net, &problem.betas, problem.top());
    let mut sweeps = 0;
    loop {
        sweeps += 1;
        let (mut change, mut size) = (0.0f64, 1.0f64);
        for k in 0..=top {
            let a = pre_activation(net, batch.x, free, k);
            let new = if k == top {
                activate_columns(net.layers[k].activation, &a)
            } else {
                let r_up = &free[k + 1] - pre_activation(net, batch.x, free, k + 1);
                let g = &free[k] - &a - net.layers[k + 1].w.transpose() * r_up * betas[k];
                activate_columns(net.layers[k].activation, &(&free[k] - g * steps[k]))
            };
            change = change.max((&new - &free[k]).amax());
            size = size.max(new.amax());
            free[k] = new;
        }
        if change <= settings.tol_step * size {
            return Ok((sweeps, change));
        }
        if sweeps >= settings.max_sweeps || !change.is_finite() {
            return Err(Error::NotConverged {
                solver: "convex CHL batched block-coordinate descent (free phase)".into(),
                iterations: sweeps,
                residual: change,
            });
        }
    }
}

/// The clamped phase of the batched solver on `d = ẑ − ž` from `d = 0`; returns `d`, the sweeps
/// and the last sweep's largest change.
pub(super) fn batched_clamped_phase(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    steps: &[f64],
    free: &[DMatrix<f64>],
    settings: &NestedSettings,
) -> Result<(Vec<DMatrix<f64>>, usize, f64)> {
    let (net, betas, top) = (problem.net, &problem.betas, problem.top());
    let (x, target) = (batch.x, batch.target);
    // Exact stationarity of the free phase: g0_k = ř_k − β_k W_{k+1}ᵀ ř_{k+1} vanishes off the
    // bounds; on a bound it is the (scaled) multiplier.
    let r_free: Vec<DMatrix<f64>> = (0..=top)
        .map(|k| &free[k] - pre_activation(net, x, free, k))
        .collect();
    let g0: Vec<DMatrix<f64>> = (0..=top)
        .map(|k| {
            let mut g = r_free[k].clone();
            if k < top {
                g -= net.layers[k + 1].w.transpose() * &r_free[k + 1] * betas[k];
            }
            let (lo, hi) = net.layers[k]
                .activation
                .bounds()
                .unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
            for (gi, &zi) in g.iter_mut().zip(free[k].iter()) {
                if zi > lo && zi < hi {
                    *gi = 0.0;
                }
            }
            g
        })
        .collect();
    let w = betas[top];
    let a_top_free = pre_activation(net, x, free, top);
    let mut d: Vec<DMatrix<f64>> = free
        .iter()
        .map(|z| DMatrix::zeros(z.nrows(), z.ncols()))
        .collect();
    let mut sweeps = 0;
    loop {
        sweeps += 1;
        let (mut change, mut size) = (0.0f64, 0.0f64);
        for k in 0..=top {
            let act = net.layers[k].activation;
            let below = if k == 0 {
                DMatrix::zeros(d[0].nrows(), batch.len())
            } else {
                &net.layers[k].w * &d[k - 1]
            };
            let new = if k == top {
                // z = clamp((â + w t)/(1 + w)), â = ǎ + W d_{L−1}
                let v = (&below + (target - &a_top_free) * w) / (1.0 + w);
                box_increment(act, &a_top_free, &v)
            } else {
                let dr_up = &d[k + 1] - &net.layers[k + 1].w * &d[k];
                let grad =
                    &g0[k] + &d[k] - &below - net.layers[k + 1].w.transpose() * dr_up * betas[k];
                box_increment(act, &free[k], &(&d[k] - grad * steps[k]))
            };
            change = change.max((&new - &d[k]).amax());
            size = size.max(new.amax());
            d[k] = new;
        }
        if change <= settings.tol_step * size || size == 0.0 {
            return Ok((d, sweeps, change));
        }
        if sweeps >= settings.max_sweeps || !change.is_finite() {
            return Err(Error::NotConverged {
                solver: "convex CHL batched block-coordinate descent (clamped phase)".into(),
                iterations: sweeps,
                residual: change,
            });
        }
    }
}
