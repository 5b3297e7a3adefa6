//! MAC / predictive coding for small β: the rate formulation.

use nalgebra::{DMatrix, DVector};

use crate::nested::{NestedSettings, Network, OutputLoss};

/// One sample solved for the rates `u_k = (ẑ_k − z_k*)/σ_k` (`σ_k` the layer's β in the
/// objective: `β_k` for MAC, `Π_{l≥k} β_l` for predictive coding).
pub(super) struct RateSample {
    /// `u_1..u_L`.
    pub(super) u: Vec<DVector<f64>>,
    /// `ρ_k = (ẑ_k − f(â_k))/σ_k`, the scaled residuals at the solution.
    pub(super) rho: Vec<DVector<f64>>,
    /// `f'(â_k)` on the final pieces.
    pub(super) slope: Vec<DVector<f64>>,
    /// `(L_LC^β − ℓ(z*))/σ_L` for this sample.
    pub(super) gap: f64,
    pub(super) iterations: usize,
    /// `‖F(u)‖∞` of the scaled stationarity system.
    pub(super) residual: f64,
}

/// MAC / predictive coding for one sample, solved for the rates instead of the states, as the
/// Section 2 offsets are: with `z_k = z_k* + σ_k u_k`, the residuals are
/// `r_k/σ_k = ρ_k = u_k − (σ_{k−1}/σ_k) q_k`, `q_k = (f(a_k* + σ_{k−1}W_k u_{k−1}) − f(a_k*))/σ_{k−1}`
/// (a one-sided difference quotient, exact on each linear piece: no cancellation however small
/// σ is), and the objective divided by `σ_L` is
/// `Ĵ(u) = (ℓ(z_L* + σ_L u_L) − ℓ(z_L*))/σ_L + Σ_k (σ_k/2σ_L)‖ρ_k‖²`, whose data are `O(1)`.
/// Its stationarity conditions, each block divided by its weight `σ_k/σ_L`, are
/// `F_k = ρ_k − (D_{k+1}W_{k+1})ᵀρ_{k+1} = 0` (`k < L`), `F_L = ρ_L + ℓ'(z_L) = 0`, solved by
/// Newton with the pieces `D_k = f'(a_k)` updated every step (semi-smooth Newton; on fixed
/// pieces `Ĵ` is a convex quadratic for the squared loss, so one step solves it).
///
/// `None` when Newton does not settle within `settings.newton_max_steps` steps (the caller
/// falls back to the state formulation).
pub(super) fn rate_sample(
    net: &Network<f64>,
    sigmas: &[f64],
    (loss, t): (OutputLoss, &DVector<f64>),
    (z_star, a_star): (&[DVector<f64>], &[DVector<f64>]),
    settings: &NestedSettings,
) -> Option<RateSample> {
    let top = net.layers.len() - 1;
    let widths = net.widths();
    let offsets = net.offsets();
    let mut u: Vec<DVector<f64>> = widths.iter().map(|&n| DVector::zeros(n)).collect();
    let mut last_step = f64::INFINITY;
    for iteration in 0..=settings.newton_max_steps {
        let (rho, slope) = rate_residuals(net, sigmas, &u, a_star);
        let z_top = &z_star[top] + &u[top] * sigmas[top];
        let (_, lg, lh) = loss.sample(&z_top, t, 1.0);
        let (f, jac) = rate_system(net, sigmas, (&rho, &slope), (&lg, &lh), &offsets);
        let scale = 1.0 + u.iter().map(|v| v.amax()).fold(0.0, f64::max);
        let residual = f.amax();
        if residual <= settings.mac_tol_grad * scale && last_step <= 1e3 * settings.tol_step * scale
        {
            let gap = loss.sample_offset(&z_star[top], t, sigmas[top], &u[top])
                + (0..=top)
                    .map(|k| sigmas[k] / sigmas[top] * (0.5 * rho[k].norm_squared()))
                    .sum::<f64>();
            return Some(RateSample {
                u,
                rho,
                slope,
                gap,
                iterations: iteration,
                residual,
            });
        }
        let delta = jac.lu().solve(&(-&f))?;
        last_step = delta.amax();
        for (k, uk) in u.iter_mut().enumerate() {
            *uk += delta.rows(offsets[k], widths[k]);
        }
    }
    None
}

/// `ρ_k` and the pieces `f'(a_k)` at the rates `u` (see [`rate_sample`]).
pub(super) fn rate_residuals(
    net: &Network<f64>,
    sigmas: &[f64],
    u: &[DVector<f64>],
    a_star: &[DVector<f64>],
) -> (Vec<DVector<f64>>, Vec<DVector<f64>>) {
    let mut rho = Vec::with_capacity(u.len());
    let mut slope = Vec::with_capacity(u.len());
    for (k, layer) in net.layers.iter().enumerate() {
        let act = layer.activation;
        let mut d = a_star[k].clone();
        if k == 0 {
            act.derivative(a_star[0].as_slice(), d.as_mut_slice());
            rho.push(u[0].clone());
            slope.push(d);
            continue;
        }
        // q = (f(a* + σW u) − f(a*))/σ = −D_σ f(a*)[−W u], exact on each piece.
        let wu = &layer.w * &u[k - 1];
        let mut q = DVector::zeros(wu.len());
        act.difference_quotient(
            a_star[k].as_slice(),
            (-&wu).as_slice(),
            sigmas[k - 1],
            q.as_mut_slice(),
        );
        rho.push(&u[k] + q * (sigmas[k - 1] / sigmas[k]));
        let a = &a_star[k] + wu * sigmas[k - 1];
        act.derivative(a.as_slice(), d.as_mut_slice());
        slope.push(d);
    }
    (rho, slope)
}

/// The scaled stationarity system `F(u)` of [`rate_sample`] and its Jacobian on the current
/// pieces: `∂F_k/∂u_k = I + (σ_k/σ_{k+1}) M_{k+1}ᵀM_{k+1}` (top: `I + σ_L ℓ''`),
/// `∂F_k/∂u_{k+1} = −M_{k+1}ᵀ`, `∂F_k/∂u_{k−1} = −(σ_{k−1}/σ_k) M_k`, `M_k = D_k W_k`.
pub(super) fn rate_system(
    net: &Network<f64>,
    sigmas: &[f64],
    (rho, slope): (&[DVector<f64>], &[DVector<f64>]),
    (lg, lh): (&DVector<f64>, &DMatrix<f64>),
    offsets: &[usize],
) -> (DVector<f64>, DMatrix<f64>) {
    let top = net.layers.len() - 1;
    let n = offsets[top] + rho[top].len();
    let mut f = DVector::zeros(n);
    let mut jac = DMatrix::zeros(n, n);
    for k in 0..=top {
        let (o, nk) = (offsets[k], rho[k].len());
        let mut fk = rho[k].clone();
        let mut diag = DMatrix::identity(nk, nk);
        if k < top {
            let m = DMatrix::from_diagonal(&slope[k + 1]) * &net.layers[k + 1].w;
            fk -= m.transpose() * &rho[k + 1];
            diag += m.transpose() * &m * (sigmas[k] / sigmas[k + 1]);
            jac.view_mut((o, offsets[k + 1]), (nk, rho[k + 1].len()))
                .copy_from(&(-m.transpose()));
        } else {
            fk += lg;
            diag += lh * sigmas[top];
        }
        if k > 0 {
            let m = DMatrix::from_diagonal(&slope[k]) * &net.layers[k].w;
            jac.view_mut((o, offsets[k - 1]), (nk, rho[k - 1].len()))
                .copy_from(&(-m * (sigmas[k - 1] / sigmas[k])));
        }
        jac.view_mut((o, o), (nk, nk)).copy_from(&diag);
        f.rows_mut(o, nk).copy_from(&fk);
    }
    (f, jac)
}
