//! MAC / predictive coding on the batch: per sample, the rates for small β, else the states
//! by L-BFGS and Newton, finished by the kinks' active set.

use nalgebra::{DMatrix, DVector};

use super::envelope::envelope_gradient;
use super::kinks::kink_active_set;
use super::penalizer::{Penalizer, SampleSolution};
use super::rates::rate_sample;
use crate::error::Result;
use crate::nested::linearized::{forward_states, Gradients, Workspace};
use crate::nested::{
    Batch, EnergyKind, NestedProblem, NestedReport, NestedSettings, NestedStatus, Optimum, Outcome,
};
use crate::solve::smooth::{minimize_best, SmoothObjective, SmoothSettings};

/// MAC / predictive coding: per sample (samples decouple), L-BFGS + Newton from the forward pass,
/// finished by [`kink_active_set`] where the smooth solver stalls at a convex kink.
pub(super) fn mac(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    settings: &NestedSettings,
) -> Result<NestedReport> {
    let net = problem.net;
    let b = batch.len();
    let free = forward_states(net, batch.x)?;
    let mut cols = MacColumns::new(&free);
    let use_rates = problem.betas.iter().all(|&s| s <= settings.mac_rate_below);
    let a_star: Vec<DMatrix<f64>> = if use_rates {
        (0..net.layers.len())
            .map(|k| net.layers[k].affine(if k == 0 { batch.x } else { &free[k - 1] }))
            .collect()
    } else {
        Vec::new()
    };
    // The second start of the state formulation: Prop. 7's clamped state z̄ (one linearized
    // pass for the batch).
    let second = if settings.mac_second_start {
        Some(linearized_clamped_state(problem, batch)?)
    } else {
        None
    };
    let (mut rate_samples, mut fallbacks) = (0usize, 0usize);
    for j in 0..b {
        if use_rates {
            if rate_column(&mut cols, j, (problem, batch), (&free, &a_star), settings) {
                rate_samples += 1;
                continue;
            }
            fallbacks += 1;
        }
        state_column(
            &mut cols,
            j,
            (problem, batch),
            (&free, second.as_deref()),
            settings,
        )?;
    }
    let w = 1.0 / b as f64;
    let clamped = cols.clamped;
    let grad = envelope_gradient(net, batch.x, &clamped, |k, a, fa| {
        let mut d = a.clone();
        net.layers[k]
            .activation
            .derivative(a.as_slice(), d.as_mut_slice());
        d.component_mul_assign(&cols.mask[k]);
        -(d.component_mul(&(&clamped[k] - fa))) * (w / problem.betas[k]) + &cols.signal[k]
    });
    Ok(NestedReport {
        value: cols.value,
        grad,
        clamped,
        free,
        status: NestedStatus {
            outcome: Outcome::Solved,
            solver: if rate_samples == b {
                "MAC: semi-smooth Newton on the rates (z^ - z*)/beta per sample"
            } else if second.is_some() {
                "MAC: L-BFGS + Newton per sample, active set at kinks, best of two starts"
            } else {
                "MAC: L-BFGS + Newton per sample, active set at kinks"
            },
            iterations: cols.iterations,
            residual: cols.residual,
            optimum: Optimum::Local,
            fallback: (fallbacks > 0).then(|| crate::nested::Fallback {
                from: "MAC: semi-smooth Newton on the rates",
                reason: format!(
                    "{fallbacks} of {b} samples did not settle; solved for the states instead"
                ),
            }),
        },
    })
}

/// What [`mac`]'s per-sample solves fill in: the minimizer's columns, the value, counters, and
/// the envelope signal where it is not `−f'(a) ⊙ r/β` — at kinks (the constraint multipliers
/// `∂J/∂a`, with `f'` masked to the constrained piece's 0 rather than the rounding-level side of
/// the kink the final `a` is on) and for rate-solved samples (`−f'(â) ⊙ ρ`, no cancellation).
pub(super) struct MacColumns {
    pub(super) clamped: Vec<DMatrix<f64>>,
    pub(super) signal: Vec<DMatrix<f64>>,
    pub(super) mask: Vec<DMatrix<f64>>,
    pub(super) value: f64,
    pub(super) iterations: usize,
    pub(super) residual: f64,
}

impl MacColumns {
    pub(super) fn new(free: &[DMatrix<f64>]) -> Self {
        Self {
            clamped: free.to_vec(),
            signal: free
                .iter()
                .map(|z| DMatrix::zeros(z.nrows(), z.ncols()))
                .collect(),
            mask: free
                .iter()
                .map(|z| DMatrix::from_element(z.nrows(), z.ncols(), 1.0))
                .collect(),
            value: 0.0,
            iterations: 0,
            residual: 0.0,
        }
    }
}

/// Sample `j` solved for the rates ([`rate_sample`]); `false` when Newton did not settle.
pub(super) fn rate_column(
    cols: &mut MacColumns,
    j: usize,
    (problem, batch): (&NestedProblem<'_>, Batch<'_>),
    (free, a_star): (&[DMatrix<f64>], &[DMatrix<f64>]),
    settings: &NestedSettings,
) -> bool {
    let (net, sigmas) = (problem.net, &problem.betas);
    let w = 1.0 / batch.len() as f64;
    let t = batch.target.column(j).into_owned();
    let col = |m: &[DMatrix<f64>]| -> Vec<DVector<f64>> {
        m.iter().map(|z| z.column(j).into_owned()).collect()
    };
    let (zs, as_) = (col(free), col(a_star));
    let Some(rs) = rate_sample(net, sigmas, (problem.loss, &t), (&zs, &as_), settings) else {
        return false;
    };
    let top = net.layers.len() - 1;
    cols.value += w * (problem.loss.sample(&zs[top], &t, 1.0).0 + sigmas[top] * rs.gap);
    cols.iterations += rs.iterations;
    cols.residual = cols.residual.max(rs.residual);
    for k in 0..=top {
        cols.clamped[k]
            .column_mut(j)
            .copy_from(&(&zs[k] + &rs.u[k] * sigmas[k]));
        cols.mask[k].column_mut(j).fill(0.0);
        cols.signal[k]
            .column_mut(j)
            .copy_from(&(-rs.slope[k].component_mul(&rs.rho[k]) * w));
    }
    true
}

/// Sample `j` solved for the states ([`mac_sample`]) from the forward pass and, when given, a
/// second start, keeping the lower local minimum (the objective is non-convex).
pub(super) fn state_column(
    cols: &mut MacColumns,
    j: usize,
    (problem, batch): (&NestedProblem<'_>, Batch<'_>),
    (free, second): (&[DMatrix<f64>], Option<&[DMatrix<f64>]>),
    settings: &NestedSettings,
) -> Result<()> {
    let net = problem.net;
    let widths = net.widths();
    let offsets = net.offsets();
    // The objective is scaled by min β so that the penalties have O(1) weights and the loss
    // O(β): the gradient then has an O(1) rounding floor.
    let scale = problem.betas.iter().copied().fold(f64::INFINITY, f64::min);
    let obj = Penalizer {
        net,
        betas: &problem.betas,
        loss: problem.loss,
        x: batch.x.column(j).into_owned(),
        t: batch.target.column(j).into_owned(),
        w: (1.0 / batch.len() as f64) * scale,
        offsets: &offsets,
    };
    let stack = |states: &[DMatrix<f64>]| {
        let mut v = DVector::zeros(widths.iter().sum());
        for (k, z) in states.iter().enumerate() {
            v.rows_mut(offsets[k], widths[k]).copy_from(&z.column(j));
        }
        v
    };
    let mut sol = mac_sample(&obj, stack(free), settings)?;
    cols.iterations += sol.iterations;
    if let Some(states) = second {
        let other = mac_sample(&obj, stack(states), settings)?;
        cols.iterations += other.iterations;
        if obj.value(&other.z) < obj.value(&sol.z) {
            sol = other;
        }
    }
    for &(k, i, nu) in &sol.kinks {
        cols.signal[k][(i, j)] = nu / scale;
        cols.mask[k][(i, j)] = 0.0;
    }
    cols.value += obj.value(&sol.z) / scale;
    cols.residual = cols.residual.max(sol.residual);
    for (k, z) in cols.clamped.iter_mut().enumerate() {
        z.column_mut(j)
            .copy_from(&sol.z.rows(offsets[k], widths[k]));
    }
    Ok(())
}

/// Prop. 7's clamped state `z̄_k = z_k* − β_k B e_k` of the penalizer pass (Eq. 43, per sample),
/// the second starting point of [`mac`]: the linearized problem's minimizer, on the side of the
/// forward pass the loss pulls towards.
pub(super) fn linearized_clamped_state(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
) -> Result<Vec<DMatrix<f64>>> {
    let net = problem.net;
    let mut ws = Workspace::new(net, batch.len());
    let mut g = Gradients::zeros(net);
    let penalizer = NestedProblem {
        energy: EnergyKind::Penalizer,
        method: None,
        ..problem.clone()
    };
    let _ = crate::nested::linearized::gradient(&penalizer, batch, &mut ws, &mut g)?;
    Ok((0..net.layers.len())
        .map(|k| ws.z_bar(EnergyKind::Penalizer, k, problem.betas[k]))
        .collect())
}

/// One MAC sample: the smooth solver, and at a convex kink (where it stalls) the active-set
/// method on the pieces (exact for this piecewise-quadratic objective), which also yields the
/// kink multipliers the gradient needs.
pub(super) fn mac_sample(
    obj: &Penalizer<'_>,
    start: DVector<f64>,
    settings: &NestedSettings,
) -> Result<SampleSolution> {
    let smooth = SmoothSettings {
        tol_grad: settings.mac_tol_grad,
        newton_steps: settings.mac_newton_steps,
        ..SmoothSettings::default()
    };
    let (s, converged) = minimize_best(obj, &start, &smooth);
    if converged {
        return Ok(SampleSolution {
            z: s.z,
            kinks: Vec::new(),
            iterations: s.iterations,
            residual: s.residual,
        });
    }
    let mut polished = kink_active_set(obj, s.z, settings)?;
    polished.iterations += s.iterations;
    Ok(polished)
}
