//! CHL (Fenchel energies): both phases by block-coordinate descent, the clamped phase solved
//! for its difference to the free one.

use nalgebra::{DMatrix, DVector, DVectorView};

use super::common::{
    box_increment, check_divergence, increment, pre_activation, softmax_increment,
};
use crate::error::{Error, Result};
use crate::nested::linearized::{forward_states, Gradients};
use crate::nested::{
    activate_columns, prefix_products, Batch, NestedProblem, NestedReport, NestedSettings,
    NestedStatus, Network, Optimum, Outcome, OutputLoss,
};
use crate::prox::Activation;

/// CHL by block-coordinate descent, see the module docs.
pub(super) fn chl(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    settings: &NestedSettings,
) -> Result<NestedReport> {
    let (net, top) = (problem.net, problem.top());
    // The forward pass is the starting point of both phases.
    let mut free = forward_states(net, batch.x)?;
    let (free_sweeps, r_free) = chl_free_phase(problem, batch.x, &mut free, settings)?;
    let mut d: Vec<DMatrix<f64>> = free
        .iter()
        .map(|z| DMatrix::zeros(z.nrows(), z.ncols()))
        .collect();
    let (clamped_sweeps, r_clamped) = chl_difference(problem, batch, &free, &mut d, settings)?;
    let clamped: Vec<DMatrix<f64>> = free.iter().zip(&d).map(|(z, dz)| z + dz).collect();
    let s = prefix_products(&problem.betas);
    // Mean over the batch (the batch convention): the energy terms carry the 1/B.
    let prod = s[top + 1] * batch.len() as f64;
    let mut loss_grad = clamped[top].clone();
    let loss_value = problem
        .loss
        .value_and_gradient(&clamped[top], batch.target, &mut loss_grad);
    let value = loss_value
        + chl_energy_difference(
            net,
            &s,
            batch.x,
            Phases {
                free: &free,
                clamped: &clamped,
                d: &d,
            },
        ) / prod;
    let mut grad = Gradients::zeros(net);
    for k in 0..=top {
        let ck = s[k] / prod;
        // ẑ_k ẑ_{k−1}ᵀ − ž_k ž_{k−1}ᵀ = d_k ẑ_{k−1}ᵀ + ž_k d_{k−1}ᵀ
        let input = if k == 0 { batch.x } else { &clamped[k - 1] };
        let mut outer = &d[k] * input.transpose();
        if k > 0 {
            outer += &free[k] * d[k - 1].transpose();
        }
        grad.w[k] = -outer * ck;
        grad.bias[k] = -d[k].column_sum() * ck;
    }
    Ok(NestedReport {
        value,
        grad,
        clamped,
        free,
        status: NestedStatus {
            outcome: Outcome::Solved,
            solver: "CHL: block-coordinate descent, closed-form blocks",
            iterations: free_sweeps + clamped_sweeps,
            residual: r_free.max(r_clamped),
            optimum: Optimum::Stationary,
            fallback: None,
        },
    })
}

/// The two phases' states and their difference `d = ẑ − ž`, layer by layer.
#[derive(Clone, Copy)]
pub(super) struct Phases<'a> {
    pub(super) free: &'a [DMatrix<f64>],
    pub(super) clamped: &'a [DMatrix<f64>],
    pub(super) d: &'a [DMatrix<f64>],
}

/// `Σ_k s_k ΔE_k` from `d`: `ΔE_k = ΔG_k − dᵀâ_k − žᵀW_k d_{k−1}` with `ΔG = žᵀd + ½‖d‖²` (box
/// family, `G = ½‖z‖²` on the box) or `Σ d log ž + ẑ log1p(d/ž)` (softmax, `G = Σ z log z`):
/// products with `d`, never a difference of `O(1)` energies.
pub(super) fn chl_energy_difference(
    net: &Network<f64>,
    s: &[f64],
    x: &DMatrix<f64>,
    phases: Phases<'_>,
) -> f64 {
    let Phases { free, clamped, d } = phases;
    let mut total = 0.0;
    for (k, layer) in net.layers.iter().enumerate() {
        let a_hat = pre_activation(net, x, clamped, k);
        let delta_g = if layer.activation == Activation::Softmax {
            free[k]
                .iter()
                .zip(d[k].iter())
                .map(|(&z, &dz)| {
                    if z > 0.0 {
                        dz * z.ln() + (z + dz) * (dz / z).ln_1p()
                    } else if dz > 0.0 {
                        dz * dz.ln() // 0 log 0 = 0
                    } else {
                        0.0
                    }
                })
                .sum::<f64>()
        } else {
            free[k].dot(&d[k]) + 0.5 * d[k].norm_squared()
        };
        let mut e = delta_g - d[k].dot(&a_hat);
        if k > 0 {
            e -= free[k].dot(&(&layer.w * &d[k - 1]));
        }
        total += s[k] * e;
    }
    total
}

/// The free phase of CHL by block-coordinate descent from `z` (the forward pass): each block
/// has the closed form `z_k = f_k(a_k + β_k W_{k+1}ᵀ z_{k+1})` (column-wise for softmax).
/// Returns the sweeps and the last sweep's largest change.
pub(super) fn chl_free_phase(
    problem: &NestedProblem<'_>,
    x: &DMatrix<f64>,
    z: &mut [DMatrix<f64>],
    settings: &NestedSettings,
) -> Result<(usize, f64)> {
    let (net, betas, top) = (problem.net, &problem.betas, problem.top());
    let mut change = f64::INFINITY;
    for sweep in 1..=settings.max_sweeps {
        let mut size = 1.0f64;
        change = 0.0;
        for k in 0..=top {
            let mut u = pre_activation(net, x, z, k);
            if k < top {
                u += net.layers[k + 1].w.transpose() * &z[k + 1] * betas[k];
            }
            let new = activate_columns(net.layers[k].activation, &u);
            change = change.max((&new - &z[k]).amax());
            size = size.max(new.amax());
            z[k] = new;
        }
        check_divergence(size, settings, sweep, "|z|")?;
        if change <= settings.tol_step * size {
            return Ok((sweep, change));
        }
    }
    Err(Error::NotConverged {
        solver: "CHL block-coordinate descent (free phase)".into(),
        iterations: settings.max_sweeps,
        residual: change,
    })
}

/// The clamped phase of CHL as block-coordinate descent on `d = ẑ − ž`, from `d = 0`, given the
/// converged free solution `ž`. Block `k`'s closed form `ẑ_k = f_k(ǔ_k + Δu_k)` with
/// `ǔ_k = a_k(ž_{k−1}) + β_k W_{k+1}ᵀ ž_{k+1}` and `Δu_k = W_k d_{k−1} + β_k W_{k+1}ᵀ d_{k+1}` becomes
/// `d_k = f_k(ǔ_k + Δu_k) − f_k(ǔ_k)`, evaluated without cancellation (exactly `Δu_k` inside the
/// box, exactly 0 on a bound; a subtraction only where a kink is crossed). The top block adds the
/// loss with weight `w = β_L` (per sample), see [`chl_top_block`]. Returns the sweeps and the last sweep's
/// largest change.
pub(super) fn chl_difference(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    free: &[DMatrix<f64>],
    d: &mut [DMatrix<f64>],
    settings: &NestedSettings,
) -> Result<(usize, f64)> {
    let (net, betas, top) = (problem.net, &problem.betas, problem.top());
    let x = batch.x;
    let u_free: Vec<DMatrix<f64>> = (0..=top)
        .map(|k| {
            let mut u = pre_activation(net, x, free, k);
            if k < top {
                u += net.layers[k + 1].w.transpose() * &free[k + 1] * betas[k];
            }
            u
        })
        .collect();
    let w = betas[top];
    let mut change = f64::INFINITY;
    for sweep in 1..=settings.max_sweeps {
        let mut size = 0.0f64;
        change = 0.0;
        for k in 0..=top {
            let layer = &net.layers[k];
            let mut du = if k == 0 {
                DMatrix::zeros(layer.w.nrows(), x.ncols())
            } else {
                &layer.w * &d[k - 1]
            };
            if k < top {
                du += net.layers[k + 1].w.transpose() * &d[k + 1] * betas[k];
            }
            let new = if k == top {
                let block = TopBlock {
                    u: &u_free[k],
                    free: &free[k],
                    du: &du,
                    target: batch.target,
                    w,
                };
                chl_top_block(problem, &block, &d[k], settings)?
            } else {
                increment(layer.activation, &u_free[k], &du)
            };
            change = change.max((&new - &d[k]).amax());
            size = size.max(new.amax());
            d[k] = new;
        }
        check_divergence(size, settings, sweep, "|z^ - z~|")?;
        if change <= settings.tol_step * size || size == 0.0 {
            return Ok((sweep, change));
        }
    }
    Err(Error::NotConverged {
        solver: "CHL block-coordinate descent (clamped phase)".into(),
        iterations: settings.max_sweeps,
        residual: change,
    })
}

/// The data of CHL's top block in one clamped sweep: `ǔ_L`, `ž_L`, `Δu_L`, the target and the
/// loss weight `w = β_L` (per sample).
#[derive(Clone, Copy)]
pub(super) struct TopBlock<'a> {
    pub(super) u: &'a DMatrix<f64>,
    pub(super) free: &'a DMatrix<f64>,
    pub(super) du: &'a DMatrix<f64>,
    pub(super) target: &'a DMatrix<f64>,
    pub(super) w: f64,
}

/// CHL's top block in the clamped phase, `d_L` given `Δu_L`, with the loss weight `w = β_L` (per sample):
/// * squared loss, box family: `d_L = f(ǔ + (Δu + w(t − ǔ))/(1 + w)) − f(ǔ)`;
/// * squared loss, softmax output: the fixed point of [`softmax_squared_top`];
/// * cross-entropy (identity output, `ž_L = ǔ_L`): Newton on
///   `d − Δu + w(softmax(ž_L + d)Σt − t) = 0` per sample.
pub(super) fn chl_top_block(
    problem: &NestedProblem<'_>,
    block: &TopBlock<'_>,
    d: &DMatrix<f64>,
    settings: &NestedSettings,
) -> Result<DMatrix<f64>> {
    let act = problem.net.layers[problem.top()].activation;
    let TopBlock {
        u,
        free,
        du,
        target,
        w,
    } = *block;
    match problem.loss {
        OutputLoss::Squared if act == Activation::Softmax => {
            Ok(softmax_squared_top(block, d, settings))
        }
        OutputLoss::Squared => {
            let shift = (du + (target - u) * w) / (1.0 + w);
            Ok(box_increment(act, u, &shift))
        }
        OutputLoss::SoftmaxCrossEntropy => {
            if act != Activation::Identity {
                return Err(Error::input(
                    "activation",
                    "CHL with cross-entropy needs an identity output layer (logits)",
                ));
            }
            let mut new = d.clone();
            for j in 0..u.ncols() {
                let sample = (free.column(j), target.column(j), du.column(j));
                let dj = cross_entropy_top(sample, d.column(j).into_owned(), w, settings)?;
                new.column_mut(j).copy_from(&dj);
            }
            Ok(new)
        }
    }
}

/// Softmax output under the squared loss on the probabilities: `ẑ = p ⊙ e^ρ` with
/// `ρ = Δu − w(ẑ − t) − c` (stationarity of `G(z) − zᵀû + w½‖z − t‖²` on the simplex, minus the
/// free one), `c` normalizing `Σẑ = 1`. A fixed point with contraction factor `≤ w`; every
/// quantity is formed as a difference-free expression in `Δu`, `w` and `expm1`.
pub(super) fn softmax_squared_top(
    block: &TopBlock<'_>,
    d: &DMatrix<f64>,
    settings: &NestedSettings,
) -> DMatrix<f64> {
    let TopBlock {
        u, du, target, w, ..
    } = *block;
    let p = activate_columns(Activation::Softmax, u);
    let mut dd = d.clone();
    for _ in 0..settings.fixed_point_max_steps {
        let g = du - (&p + &dd - target) * w;
        let next = softmax_increment(u, &g);
        let step = (&next - &dd).amax();
        dd = next;
        if step <= settings.fixed_point_tol * dd.amax() {
            break;
        }
    }
    dd
}

/// One sample of the cross-entropy top block: Newton on `d − Δu + w(softmax(ž + d)Σt − t) = 0`,
/// whose Jacobian `I + wΣt(diag p − ppᵀ)` is positive definite.
pub(super) fn cross_entropy_top(
    (z, t, du): (
        DVectorView<'_, f64>,
        DVectorView<'_, f64>,
        DVectorView<'_, f64>,
    ),
    mut dj: DVector<f64>,
    w: f64,
    settings: &NestedSettings,
) -> Result<DVector<f64>> {
    let (t, du) = (t.into_owned(), du.into_owned());
    for _ in 0..settings.newton_max_steps {
        let (_, lg, lh) = OutputLoss::SoftmaxCrossEntropy.sample(&(z + &dj), &t, w);
        let g = &dj - &du + lg;
        if g.amax() <= settings.tol_step * (du.amax() + dj.amax()) {
            break;
        }
        let h = DMatrix::identity(dj.len(), dj.len()) + lh;
        match h.cholesky() {
            Some(ch) => dj -= ch.solve(&g),
            None => return Err(Error::Singular("CHL output block".into())),
        }
    }
    Ok(dj)
}
