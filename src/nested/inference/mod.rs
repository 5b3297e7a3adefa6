//! Batched iterative inference for the rows of Table 1 that are not closed form: the training
//! path (f32) and its check (f64), one generic definition. The top-down rows — MAC, predictive
//! coding and LPOM (Prop. 5) — are a fixed point of Prop. 7's pass (below); the bottom-up rows —
//! CHL and convex CHL (Prop. 4) — a free phase and a clamped phase solved for the rates
//! `(ẑ − ž)/Π β` ([below](self#bottom-up-rows)). Both run on the whole batch as matrices,
//! from the forward pass, with the same sweep budget, acceleration and status.
//!
//! **The fixed point.** Write the states of the local contrastive objective (Eq. 28) through an
//! error signal `λ_k` per layer, `ẑ_k = z_k(λ_k; â_k)` with `â_k = W_k ẑ_{k−1} + b_k`:
//! * penalizer energies (MAC, predictive coding, Eq. 30): `ẑ_k = f(â_k) − σ_k λ_k`, `σ_k = β_k`
//!   for MAC and `Π_{l≥k} β_l` for predictive coding (the weights `μ_k⁻¹` of Section 3.2.1);
//! * Fenchel energies (LPOM, Eq. 34): `ẑ_k = f(â_k − β_k λ_k)`, `σ_k = β_k`.
//!
//! Setting the `ẑ_k`-gradient of Eq. 28 to zero gives, layer by layer from the top,
//! `λ_L = ℓ'(ẑ_L)` and `λ_{k−1} = W_kᵀ q_k(λ_k)` with the pre-activation signal
//! `q_k = f'(â_k) ⊙ λ_k` (penalizer; Eq. 46-47) or `q_k = D_{β_k} f(â_k)[λ_k]`
//! (Fenchel; the one-sided quotient of Eq. 51). That is Prop. 7's backward pass taken at the
//! states `ẑ` instead of the forward pass `z*`: **one sweep from `λ = 0` is back-propagation or
//! Fenchel back-propagation** (Props. 5 and 7 meet here), and iterating the sweep — forward with
//! the current `λ`, backward for the next — converges to the minimizer of Eq. 28 whenever the
//! map is a contraction, which it is for small `β` (its Lipschitz constant is `O(σ‖W‖²ℓ'')`).
//! The envelope gradient at the states is `∂/∂W_k = q_k ẑ_{k−1}ᵀ`, `∂/∂b_k = q_k 1`: no
//! difference of two states is ever formed, so nothing cancels in `f32` however small `β` is.
//!
//! Each sweep costs the products of layers `2..L` only (`â_1 = W_1 x + b_1` does not depend on
//! `λ`): on the 784-256-128-64-10 MLP a sweep has a sixth of a back-propagation step's
//! multiply-adds. The products run on the workspace's [`Threads`]; so do the element-wise
//! passes, cut by samples (columns), compiled for the CPU's widest vectors, their sums taken
//! per sample in a fixed order — so the results are bit-identical for every thread count and
//! instruction set. Nothing allocates after [`InferenceWorkspace::new`] (for networks of up to
//! 16 layers; deeper ones allocate a list of their layers' buffers per pass).
//!
//! **Status.** The residual is the fixed-point residual `max |Φ(λ) − λ|` of the stationarity
//! conditions, per sample (the batch mean's `1/B` taken out), in units of `ℓ'`; the sweep stops
//! when it falls below `tol · (1 + max |λ|)` or after `max_sweeps` (reported, not an error: an
//! unconverged state still gives the envelope gradient of where it stopped, as predictive coding
//! with a fixed number of inference steps does; if an earlier iterate — or the forward pass —
//! had a lower objective, that one is used, so the reported value always bounds `L^β` from
//! above and never exceeds the forward loss, Eq. 29; the kink multipliers are then those of the
//! last sweep). The sweeps are accelerated per sample (the
//! samples' problems are independent) by Anderson's method with memory one, which handles the
//! mix of slow and oscillating modes the plain iteration has at larger β (on MNIST, LPOM at the
//! paper's β = 1: about 6 sweeps per batch on average instead of 11); when the residual stops
//! falling by 1 % a sweep, the step is damped instead (halved, down to `min_damping`, and
//! doubled back when the residual halves in a sweep).
//!
//! **Kinks.** Where the penalizer minimizer holds a ReLU pre-activation exactly on its kink (a
//! convex kink, see [`super::local`]) the map, with back-propagation's `f'(0) = 0`, has no fixed
//! point: the unit flips between its pieces. Such a unit (its `â` crossed a bound between two
//! sweeps, with its state beyond the bound) is *held*: its signal becomes a multiplier `ν` in
//! the subdifferential `λ ∂f(c)`, moved by a Newton step on `â = c` through the direct path
//! `λ_{k−1} = W_kᵀq_k` and released when it leaves that interval. At convergence this is the
//! exact KKT point of the active-set method of [`super::local`] (tested: the same value and
//! gradient to 1e-12 and 1e-9 on a case with two held units); units that keep flipping leave
//! the residual above the tolerance and are reported as such.
//!
//! # Bottom-up rows
//! Prop. 4's `L^β = ℓ(ẑ_L) + ℰ^β(ẑ) − ℰ^β(ž)`, `ℰ^β = Σ_k E_k/s_k`, `s_k = Π_{l≥k} β_l`. The
//! free phase `ž` solves `z_k = f(a_k + β_k W_{k+1}ᵀ r_{k+1})` (`r = z` for Fenchel energies,
//! `z − a` for proximal ones) by bottom-up Gauss–Seidel sweeps from the forward pass (the
//! coupling from below is the `O(1)` one there); the rates below by top-down sweeps (there the
//! `O(1)` coupling comes from above: one sweep carries the loss to every layer). The
//! clamped phase is solved for the rates `u_k = (ẑ_k − ž_k)/s_k` — the phases differ by `O(s_k)`,
//! so forming `ẑ − ž` would leave nothing of the first layer in `f32` — through
//! `u_k = (f(ǔ_k + s_k v_k) − f(ǔ_k))/s_k`, `v_k = β_{k−1}W_k u_{k−1} + W_{k+1}ᵀρ_{k+1}` (top:
//! `v_L = β_{L−1}W_L u_{L−1} − ℓ'(ẑ_L)`); value and gradient are products with the rates. The
//! report's sweeps add both phases; its residual is the larger of the two. Divergence of CHL's
//! free phase (its energy is bilinear in adjacent layers, unbounded below for large β) is
//! [`Error::Unbounded`]. The f64 references are [`super::global`]'s.
//!
//! The batch convention is [`crate::nested`]'s: every sample at the same `β`; the signals carry
//! the batch mean's `1/B`, so the states use `σ_k B` and the quotients `β_k B`.

use std::ops::Range;

use nalgebra::{DMatrix, RealField};

use super::linearized::{check_betas, Gradients};
use super::{add_bias, add_bias_to_columns, EnergyKind, Network, OutputLoss};
use crate::error::{Error, Result};
use crate::linalg::{lane_sum2, vectorized, Gemm, Lanes, Parts, PartsList, Threads, LANES};
use crate::nested::method::{Method, Unravel};

mod bottom_up;

/// Budget and tolerance of the inference sweeps.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct InferenceSettings {
    /// Most backward sweeps per batch (`T`, the number of inference steps; ≥ 1).
    pub max_sweeps: usize,
    /// Stop when the fixed-point residual is below `tol · (1 + max |λ|)` (≥ 0; 0 runs all
    /// `max_sweeps`).
    pub tol: f64,
    /// Smallest damping of the update `λ ← λ + η(Φ(λ) − λ)` (`η` starts at 1 and halves when the
    /// residual grows), in `(0, 1]`.
    pub min_damping: f64,
    /// Anderson acceleration (memory one, per sample) of the sweeps.
    pub anderson: bool,
}

impl Default for InferenceSettings {
    /// 20 sweeps (the upper end of what predictive-coding libraries use), `tol = 1e-4`.
    fn default() -> Self {
        Self {
            max_sweeps: 20,
            tol: 1e-4,
            min_damping: 1.0 / 64.0,
            anderson: true,
        }
    }
}

impl InferenceSettings {
    /// Checks the fields.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.max_sweeps == 0 {
            return Err(Error::input("max_sweeps", "must be at least 1"));
        }
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(Error::input("tol", "must be finite and non-negative"));
        }
        if !(self.min_damping > 0.0 && self.min_damping <= 1.0) {
            return Err(Error::input("min_damping", "must be in (0, 1]"));
        }
        Ok(())
    }
}

/// What one batch's inference did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InferenceReport<T> {
    /// The surrogate's batch-mean value `L^β` at the states (Eq. 28).
    pub value: T,
    /// The batch-mean loss `ℓ(z_L*)` of the forward pass.
    pub forward_loss: T,
    /// Backward sweeps run.
    pub sweeps: usize,
    /// The fixed-point residual at the last sweep (module docs).
    pub residual: T,
    /// Whether the residual reached the tolerance.
    pub converged: bool,
    /// The damping `η` of the last update.
    pub damping: T,
    /// Unconverged, the last iterate's objective was above the lowest seen (or above the
    /// forward pass's): the states, value and gradient are those of the best iterate.
    pub best_iterate: bool,
}

/// Buffers for one network and batch size.
#[derive(Debug, Clone)]
pub struct InferenceWorkspace<T: RealField + Copy> {
    /// Pre-activations `â_k` at the states.
    pub a: Vec<DMatrix<T>>,
    /// The states `ẑ_k`.
    pub z: Vec<DMatrix<T>>,
    /// The signals `λ_k` defining the states (batch-mean scaled).
    pub lambda: Vec<DMatrix<T>>,
    /// The forward pass's output `z_L*` (before any sweep).
    pub forward_top: DMatrix<T>,
    next: Vec<DMatrix<T>>,
    q: Vec<DMatrix<T>>,
    memory: Memory<T>,
    kinks: Kinks<T>,
    best: Vec<DMatrix<T>>,
    sigma: Vec<T>,
    /// Bottom-up rows: the free phase's arguments `ǔ_k` of `f`.
    arg: Vec<DMatrix<T>>,
    /// Bottom-up rows: the clamped states `ẑ_k`, and scratch.
    zhat: Vec<DMatrix<T>>,
    /// Bottom-up rows: `[P_k, β Q_k]` and `[ẑ_{k−1}, u_{k−1}]` side by side (`n × 2B`), so
    /// that each weight gradient is one product.
    left: Vec<DMatrix<T>>,
    right: Vec<DMatrix<T>>,
    loss_grad: DMatrix<T>,
    /// The centered variant's `−β` gradient (allocated by its first call).
    mirrored: Option<Gradients<T>>,
    /// Per sample: its layers' terms of the surrogate value.
    terms: Vec<T>,
    /// The threads that compute the matrix products and the sweeps' element-wise passes (one
    /// by default; results do not depend on the count, see [`Threads`]).
    pub threads: Threads,
}

/// Units held on a convex kink of a penalizer layer ("Kinks" in the module docs).
#[derive(Debug, Clone)]
struct Kinks<T: RealField + Copy> {
    /// Whether unit `(i, j)` of layer `k` is held on its kink.
    held: Vec<Vec<bool>>,
    /// Its multiplier `ν = ∂J/∂â` (batch-mean scaled, like `q`).
    nu: Vec<DMatrix<T>>,
    /// `â_k` at the previous sweep.
    prev_a: Vec<DMatrix<T>>,
    /// `‖W_k[i, :]‖²`.
    row_norms: Vec<Vec<T>>,
}

/// The previous sweep's state and residual, for Anderson acceleration.
#[derive(Debug, Clone)]
struct Memory<T: RealField + Copy> {
    prev_state: Vec<DMatrix<T>>,
    prev_f: Vec<DMatrix<T>>,
    /// Per sample: `max |f|` and `max |Φ(x)|` of the last update.
    change: Vec<T>,
    size: Vec<T>,
}

impl<T: RealField + Copy> InferenceWorkspace<T> {
    /// Buffers for `net` and batches of `batch` columns.
    pub fn new(net: &Network<T>, batch: usize) -> Self {
        let mats = || net.layer_buffers(batch);
        let top = net.layers.last().map_or(0, |l| l.w.nrows());
        Self {
            a: mats(),
            z: mats(),
            lambda: mats(),
            forward_top: DMatrix::zeros(top, batch),
            next: mats(),
            q: mats(),
            memory: Memory {
                prev_state: mats(),
                prev_f: mats(),
                change: vec![T::zero(); batch],
                size: vec![T::zero(); batch],
            },
            kinks: Kinks {
                held: net
                    .layers
                    .iter()
                    .map(|l| vec![false; l.w.nrows() * batch])
                    .collect(),
                nu: mats(),
                prev_a: mats(),
                row_norms: net
                    .layers
                    .iter()
                    .map(|l| vec![T::zero(); l.w.nrows()])
                    .collect(),
            },
            best: mats(),
            sigma: vec![T::zero(); net.layers.len()],
            arg: mats(),
            zhat: mats(),
            left: net
                .layers
                .iter()
                .map(|l| DMatrix::zeros(l.w.nrows(), 2 * batch))
                .collect(),
            right: net
                .layers
                .iter()
                .map(|l| DMatrix::zeros(l.w.ncols(), 2 * batch))
                .collect(),
            loss_grad: DMatrix::zeros(top, batch),
            mirrored: None,
            terms: vec![T::zero(); batch],
            threads: Threads::default(),
        }
    }

    /// The same buffers, with the products and element-wise passes computed by `threads`.
    pub fn with_threads(mut self, threads: Threads) -> Self {
        self.threads = threads;
        self
    }

    /// The batch size the buffers hold.
    pub fn batch(&self) -> usize {
        self.forward_top.ncols()
    }

    fn check(&self, net: &Network<T>) -> Result<()> {
        let batch = self.batch();
        let fits = self.a.len() == net.layers.len()
            && net.layers.iter().enumerate().all(|(k, l)| {
                let shape = (l.w.nrows(), batch);
                [&self.a, &self.z, &self.lambda, &self.next, &self.q]
                    .iter()
                    .all(|bufs| bufs[k].shape() == shape)
            });
        if fits {
            Ok(())
        } else {
            Err(Error::dim(
                "inference workspace (built for another network?)",
                format!("widths {:?} x batch {batch}", net.widths()),
                format!("{:?}", self.a.iter().map(|m| m.shape()).collect::<Vec<_>>()),
            ))
        }
    }
}

/// The energy and the direction of a non-linearized row.
fn energy_of(method: Method) -> Result<(EnergyKind, Unravel)> {
    match method {
        Method::Mac | Method::PredictiveCoding | Method::Lpom | Method::Chl | Method::ConvexChl => {
            let (energy, direction, _) = method.choices();
            Ok((energy, direction))
        }
        other => Err(Error::input(
            "method",
            format!(
                "{} is closed form (Prop. 7: use nested::linearized::gradient)",
                other.name()
            ),
        )),
    }
}

/// Runs the inference sweeps of `method` (MAC, predictive coding, LPOM: Eq. 28; CHL, convex
/// CHL: Prop. 4) on one batch, writes the envelope gradient of the surrogate (batch mean) into
/// `grads` and returns the report. `betas` are per sample (the batch convention of [`crate::nested`]).
///
/// ```
/// use bilevel::nested::inference::{self, InferenceSettings, InferenceWorkspace};
/// use bilevel::nested::linearized::Gradients;
/// use bilevel::nested::method::Method;
/// use bilevel::nested::{Layer, Network, OutputLoss};
/// use bilevel::prox::Activation;
/// use nalgebra::{dmatrix, dvector};
///
/// let net = Network {
///     layers: vec![
///         Layer { w: dmatrix![1.0, -0.5; 0.3, 0.8], bias: dvector![0.1, 0.0], activation: Activation::Relu },
///         Layer { w: dmatrix![0.7, -1.2], bias: dvector![0.0], activation: Activation::Identity },
///     ],
/// };
/// let (x, t) = (dmatrix![1.0; 0.5], dmatrix![0.2]);
/// let mut ws = InferenceWorkspace::new(&net, 1);
/// let mut grads = Gradients::zeros(&net);
/// let settings = InferenceSettings { max_sweeps: 100, tol: 1e-14, ..Default::default() };
/// let report = inference::gradient(
///     &net, Method::Mac, &[1e-3, 1e-3], OutputLoss::Squared, &x, &t, &settings, &mut ws, &mut grads,
/// )?;
/// assert!(report.converged && report.sweeps < 10);
/// // O(β) from back-propagation (Cor. 2): z₁ = relu(0.85, 0.7), ℓ' = 0.7·0.85 − 1.2·0.7 − 0.2.
/// let e: f64 = 0.7 * 0.85 - 1.2 * 0.7 - 0.2;
/// assert!((grads.w[1][(0, 0)] - e * 0.85).abs() < 1e-3);
/// # Ok::<(), bilevel::Error>(())
/// ```
///
/// # Errors
/// A closed-form method (BP, Fenchel BP); shapes (`x`, `target`, `betas`, a workspace or gradients for
/// another network); invalid β or settings; softmax layers (the sweeps take box-family
/// activations); a non-finite loss or state (diverged inference).
#[allow(clippy::too_many_arguments)]
pub fn gradient<T: Gemm>(
    net: &Network<T>,
    method: Method,
    betas: &[T],
    loss: OutputLoss,
    x: &DMatrix<T>,
    target: &DMatrix<T>,
    settings: &InferenceSettings,
    ws: &mut InferenceWorkspace<T>,
    grads: &mut Gradients<T>,
) -> Result<InferenceReport<T>> {
    let call = Call {
        net,
        method,
        betas,
        loss,
        x,
        target,
        settings,
    };
    run(&call, false, ws, grads)
}

/// The centered (symmetric-nudging) variant of a bottom-up row (CHL, convex CHL): the mean of
/// the surrogate of Prop. 4 (Eq. 22-25) at `+β_L` and at `−β_L` on the loss,
/// `L_c = ½(L^β + L^{−β})`, `L^{−β} = ℓ(ẑ⁻_L) + ℰ^{−β}(ẑ⁻) − ℰ^{−β}(ž)`, where only the
/// outermost `β_L` (the loss's) changes sign, so that every `s_k = Π_{l≥k} β_l` does and the
/// free phase `ž` is shared. By Def. 1, `β_L L^β = min(ℰ' + β_Lℓ) − min ℰ'` with
/// `ℰ' = β_L ℰ^β` independent of `β_L`: a smooth function of `β_L` whose odd powers cancel in
/// the mean, so for fixed inner `β_k` the gradient reaches its `β_L → 0⁺` limit — the gradient
/// of the loss at the free phase, `∂_θ ℓ(ž_L(θ))`, equilibrium propagation's target — at
/// `O(β_L²)` instead of `O(β_L)` (beyond the paper; [`crate::surrogate::Bilevel::centered`]
/// is the single-level counterpart). The inner `β_k` keep their `O(β_k)` distance to
/// back-propagation (Cor. 2). The `−β` clamped phase is solved for its rates
/// `(ẑ⁻ − ž)/(−s_k)` by the same top-down sweeps: one more clamped phase. The report's `value`
/// is `L_c`, its sweeps add the three phases, its residual is the largest of them.
///
/// `L^{−β}` needs `ℰ' − β_Lℓ` bounded below near `ž`, which holds for small `β_L` (the loss's
/// curvature is bounded: `½` for softmax cross-entropy, `1` for squared error).
///
/// ```
/// use bilevel::nested::inference::{self, InferenceSettings, InferenceWorkspace};
/// use bilevel::nested::linearized::Gradients;
/// use bilevel::nested::method::Method;
/// use bilevel::nested::{Layer, Network, OutputLoss};
/// use bilevel::prox::Activation;
/// use nalgebra::{dmatrix, dvector};
///
/// let net = Network {
///     layers: vec![
///         Layer { w: dmatrix![0.9, -0.4; 0.3, 0.8], bias: dvector![0.1, 0.2], activation: Activation::HardSigmoid },
///         Layer { w: dmatrix![0.7, -1.2], bias: dvector![0.0], activation: Activation::Identity },
///     ],
/// };
/// let (x, t) = (dmatrix![0.6; 0.2], dmatrix![0.9]);
/// let settings = InferenceSettings { max_sweeps: 200, tol: 1e-15, ..Default::default() };
/// let mut ws = InferenceWorkspace::new(&net, 1);
/// let mut at = |beta_top: f64, centered: bool| -> Result<f64, bilevel::Error> {
///     let mut g = Gradients::zeros(&net);
///     let run = if centered { inference::centered_gradient } else { inference::gradient };
///     run(&net, Method::Chl, &[0.3, beta_top], OutputLoss::Squared, &x, &t, &settings, &mut ws, &mut g)?;
///     Ok(g.w[0][(0, 0)])
/// };
/// // Halving β_L halves the one-sided estimate's distance to the limit and quarters the centered one's.
/// let one = (at(0.1, false)? - at(0.05, false)?) / (at(0.05, false)? - at(0.025, false)?);
/// let two = (at(0.1, true)? - at(0.05, true)?) / (at(0.05, true)? - at(0.025, true)?);
/// assert!((one - 2.0).abs() < 0.3 && (two - 4.0).abs() < 0.6, "{one} {two}");
/// # Ok::<(), bilevel::Error>(())
/// ```
///
/// # Errors
/// As [`gradient`]; a top-down row (MAC, predictive coding, LPOM: their local objective,
/// Eq. 28, is a minimization only for `β > 0`).
#[allow(clippy::too_many_arguments)]
pub fn centered_gradient<T: Gemm>(
    net: &Network<T>,
    method: Method,
    betas: &[T],
    loss: OutputLoss,
    x: &DMatrix<T>,
    target: &DMatrix<T>,
    settings: &InferenceSettings,
    ws: &mut InferenceWorkspace<T>,
    grads: &mut Gradients<T>,
) -> Result<InferenceReport<T>> {
    if !matches!(method, Method::Chl | Method::ConvexChl) {
        return Err(Error::input(
            "method",
            format!(
                "the centered variant is defined for the bottom-up rows (CHL, convex CHL), not {}",
                method.name()
            ),
        ));
    }
    let call = Call {
        net,
        method,
        betas,
        loss,
        x,
        target,
        settings,
    };
    run(&call, true, ws, grads)
}

/// The arguments of [`gradient`] and [`centered_gradient`].
struct Call<'a, T: RealField + Copy> {
    net: &'a Network<T>,
    method: Method,
    betas: &'a [T],
    loss: OutputLoss,
    x: &'a DMatrix<T>,
    target: &'a DMatrix<T>,
    settings: &'a InferenceSettings,
}

/// Checks the call and runs its direction.
fn run<T: Gemm>(
    c: &Call<'_, T>,
    centered: bool,
    ws: &mut InferenceWorkspace<T>,
    grads: &mut Gradients<T>,
) -> Result<InferenceReport<T>> {
    let net = c.net;
    let (kind, direction) = energy_of(c.method)?;
    c.settings.validate()?;
    net.check_structure(kind)?;
    if let Some(k) = net
        .layers
        .iter()
        .position(|l| l.activation.bounds().is_none())
    {
        return Err(Error::input(
            "network",
            format!("layer {k} is softmax: the inference sweeps take box-family activations"),
        ));
    }
    check_betas(c.betas, net.layers.len())?;
    grads.check(net, "grads")?;
    ws.check(net)?;
    check_batch(net, c.x, c.target, ws.batch())?;
    state_weights(c.method, c.betas, ws);
    let problem = Sweeps {
        net,
        kind,
        betas: c.betas,
        loss: c.loss,
        x: c.x,
        target: c.target,
        settings: c.settings,
        centered,
    };
    match (kind, direction) {
        (EnergyKind::Penalizer, _) | (_, Unravel::TopDown) => top_down(&problem, ws, grads),
        _ => bottom_up::run(&problem, ws, grads),
    }
}

/// The data of one call, shared by both directions.
struct Sweeps<'a, T: RealField + Copy> {
    net: &'a Network<T>,
    kind: EnergyKind,
    betas: &'a [T],
    loss: OutputLoss,
    x: &'a DMatrix<T>,
    target: &'a DMatrix<T>,
    settings: &'a InferenceSettings,
    /// Bottom-up rows: add the `−β` clamped phase ([`centered_gradient`]).
    centered: bool,
}

/// The top-down rows (module docs): sweeps on `λ` from the forward pass.
fn top_down<T: Gemm>(
    p: &Sweeps<'_, T>,
    ws: &mut InferenceWorkspace<T>,
    grads: &mut Gradients<T>,
) -> Result<InferenceReport<T>> {
    let (net, kind, betas, loss, target) = (p.net, p.kind, p.betas, p.loss, p.target);
    ws.lambda.iter_mut().for_each(|l| l.fill(T::zero()));
    first_layer(net, p.x, ws);
    forward(net, kind, ws);
    if kind == EnergyKind::Penalizer {
        ws.kinks.reset(net, &ws.a);
    }
    let top = net.layers.len() - 1;
    ws.forward_top.copy_from(&ws.z[top]);
    let forward_loss = loss.value_and_gradient(&ws.z[top], target, &mut ws.next[top]);
    finite(
        forward_loss,
        "loss of the forward pass (non-finite weights or inputs?)",
    )?;
    let batch: T = nalgebra::convert(ws.batch() as f64);
    let mut fp = FixedPoint::new(p.settings);
    // The lowest objective seen and its signals (λ = 0, the forward pass, to begin with).
    let mut best = forward_loss;
    ws.best.iter_mut().for_each(|l| l.fill(T::zero()));
    while fp.sweeps < p.settings.max_sweeps {
        if fp.sweeps > 0 {
            forward(net, kind, ws);
            let value = loss.value_and_gradient(&ws.z[top], target, &mut ws.next[top]);
            finite(value, "loss at the inference states (diverged inference)")?;
            let objective = value + layer_terms(net, kind, betas, batch, ws);
            if objective < best {
                best = objective;
                copy_all(&mut ws.best, &ws.lambda);
            }
        }
        backward(net, kind, betas, batch, ws);
        if fp.advance(
            &mut ws.lambda,
            &ws.next,
            (&mut ws.memory, &ws.threads),
            batch,
        ) {
            break;
        }
    }
    forward(net, kind, ws);
    let mut value = surrogate_value(net, kind, loss, target, betas, batch, ws);
    let mut report = fp.report(value, forward_loss);
    if !fp.converged && (!value.is_finite() || value > best) {
        // Unconverged and worse than an earlier iterate (or than the forward pass): that one is
        // the better upper bound of L^β and the point the gradient is taken at.
        copy_all(&mut ws.lambda, &ws.best);
        forward(net, kind, ws);
        value = surrogate_value(net, kind, loss, target, betas, batch, ws);
        report.value = value;
        report.best_iterate = true;
    }
    finite(
        value,
        "surrogate value at the inference states (diverged inference)",
    )?;
    envelope_gradient(net, kind, betas, batch, p.x, ws, grads);
    Ok(report)
}

fn copy_all<T: RealField + Copy>(dst: &mut [DMatrix<T>], src: &[DMatrix<T>]) {
    for (d, s) in dst.iter_mut().zip(src) {
        d.copy_from(s);
    }
}

/// The bookkeeping of one fixed-point iteration `state ← Φ(state)`.
struct FixedPoint<T> {
    eta: T,
    last: T,
    sweeps: usize,
    residual: T,
    converged: bool,
    tol: T,
    min_damping: T,
    anderson: bool,
}

impl<T: RealField + Copy> FixedPoint<T> {
    fn new(settings: &InferenceSettings) -> Self {
        Self {
            eta: T::one(),
            last: T::zero(),
            sweeps: 0,
            residual: T::zero(),
            converged: false,
            tol: nalgebra::convert(settings.tol),
            min_damping: nalgebra::convert(settings.min_damping),
            anderson: settings.anderson,
        }
    }

    /// Takes `next = Φ(state)`: updates `state` (Anderson while undamped, else the damped
    /// step), halves the damping when the residual stops falling by 1 %, and returns whether
    /// the residual (times `scale`, which makes it per sample) reached the tolerance.
    fn advance(
        &mut self,
        state: &mut [DMatrix<T>],
        next: &[DMatrix<T>],
        (memory, threads): (&mut Memory<T>, &Threads),
        scale: T,
    ) -> bool {
        self.sweeps += 1;
        let accelerate = self.anderson && self.sweeps > 1 && self.eta == T::one();
        let (change, size) = memory.update(state, next, (self.eta, accelerate), threads);
        self.residual = change * scale;
        let stalled = self.residual > self.last * nalgebra::convert(0.99);
        let falling = self.residual < self.last * nalgebra::convert(0.5);
        if self.sweeps > 1 && stalled && self.eta > self.min_damping {
            self.eta *= nalgebra::convert(0.5);
        } else if falling && self.eta < T::one() {
            self.eta = (self.eta * nalgebra::convert(2.0)).min(T::one());
        }
        self.last = self.residual;
        self.converged = self.residual <= self.tol * (T::one() + size * scale);
        self.converged
    }

    fn report(&self, value: T, forward_loss: T) -> InferenceReport<T> {
        InferenceReport {
            value,
            forward_loss,
            sweeps: self.sweeps,
            residual: self.residual,
            converged: self.converged,
            damping: self.eta,
            best_iterate: false,
        }
    }
}

fn finite<T: RealField + Copy>(v: T, what: &str) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::NonFinite { what: what.into() })
    }
}

fn check_batch<T: RealField + Copy>(
    net: &Network<T>,
    x: &DMatrix<T>,
    target: &DMatrix<T>,
    batch: usize,
) -> Result<()> {
    if x.shape() != (net.input_dim(), batch) {
        return Err(Error::dim(
            "x",
            format!("{} x {batch}", net.input_dim()),
            format!("{} x {}", x.nrows(), x.ncols()),
        ));
    }
    let out = net.layers.last().map_or(0, |l| l.w.nrows());
    if target.shape() != (out, batch) {
        return Err(Error::dim(
            "target",
            format!("{out} x {batch}"),
            format!("{} x {}", target.nrows(), target.ncols()),
        ));
    }
    Ok(())
}

/// `σ_k`: `β_k` (MAC, LPOM) or `s_k = Π_{l≥k} β_l` (predictive coding, Section 3.2.1, and
/// the layer weights `1/s_k` of Prop. 4's `ℰ^β`, Eq. 22).
fn state_weights<T: RealField + Copy>(method: Method, betas: &[T], ws: &mut InferenceWorkspace<T>) {
    ws.sigma.copy_from_slice(betas);
    if matches!(
        method,
        Method::PredictiveCoding | Method::Chl | Method::ConvexChl
    ) {
        for k in (0..betas.len().saturating_sub(1)).rev() {
            let next = ws.sigma[k + 1];
            ws.sigma[k] *= next;
        }
    }
}

/// `â_1 = W_1 x + b_1`, the one product the sweeps never repeat.
fn first_layer<T: Gemm>(net: &Network<T>, x: &DMatrix<T>, ws: &mut InferenceWorkspace<T>) {
    ws.threads
        .gemm(&mut ws.a[0], &net.layers[0].w, false, x, false);
    add_bias(&mut ws.a[0], &net.layers[0].bias);
}

/// The states at the current `λ`: `â_k = W_k ẑ_{k−1} + b_k` for `k ≥ 2` (`â_1` is fixed), then
/// `ẑ_k = f(â_k) − σ_k B λ_k` (penalizer) or `f(â_k − σ_k B λ_k)` (Fenchel), the element-wise
/// part cut over the team by columns.
fn forward<T: Gemm>(net: &Network<T>, kind: EnergyKind, ws: &mut InferenceWorkspace<T>) {
    let cols = ws.batch();
    let batch: T = nalgebra::convert(cols as f64);
    for (k, layer) in net.layers.iter().enumerate() {
        if k > 0 {
            ws.threads
                .gemm(&mut ws.a[k], &layer.w, false, &ws.z[k - 1], false);
        }
        let rows = layer.w.nrows();
        let bias = if k > 0 { layer.bias.as_slice() } else { &[] };
        let (lo, hi) = bounds::<T>(layer.activation);
        let s = ws.sigma[k] * batch;
        let (a, z) = (
            Parts::new(ws.a[k].as_mut_slice()),
            Parts::new(ws.z[k].as_mut_slice()),
        );
        let lambda = ws.lambda[k].as_slice();
        ws.threads.columns(cols, rows, &|c: Range<usize>| {
            let r = c.start * rows..c.end * rows;
            // SAFETY: `columns` gives each piece its own columns.
            let (a, z) = unsafe { (a.range(r.clone()), z.range(r.clone())) };
            let lambda = &lambda[r];
            vectorized(
                #[inline(always)]
                || {
                    add_bias_to_columns(a, bias);
                    match kind {
                        EnergyKind::Penalizer => {
                            for ((zi, &ai), &li) in z.iter_mut().zip(&*a).zip(lambda) {
                                *zi = clamp(ai, lo, hi) - s * li;
                            }
                        }
                        _ => {
                            for ((zi, &ai), &li) in z.iter_mut().zip(&*a).zip(lambda) {
                                *zi = clamp(ai - s * li, lo, hi);
                            }
                        }
                    }
                },
            );
        });
    }
}

fn bounds<T: RealField + Copy>(act: crate::prox::Activation) -> (T, T) {
    let (lo, hi) = act.bounds().unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
    (nalgebra::convert(lo), nalgebra::convert(hi))
}

fn clamp<T: RealField + Copy>(v: T, lo: T, hi: T) -> T {
    v.max(lo).min(hi)
}

/// The pre-activation signal `q_k` of `λ` at `â_k` (module docs) into `q`, on any range of
/// units.
#[inline(always)]
fn signal<T: RealField + Copy>(
    kind: EnergyKind,
    act: crate::prox::Activation,
    quotient_beta: T,
    a: &[T],
    lambda: &[T],
    q: &mut [T],
) {
    match kind {
        EnergyKind::Penalizer => {
            act.derivative(a, q);
            for (qi, &li) in q.iter_mut().zip(lambda) {
                *qi *= li;
            }
        }
        _ => act.difference_quotient(a, lambda, quotient_beta, q),
    }
}

/// One backward sweep at the current states into `next` (`next[L]` already holds `ℓ'(ẑ_L)`):
/// `next_{k−1} = W_kᵀ q_k(next_k)`, the signals (and kinks) cut over the team by columns.
fn backward<T: Gemm>(
    net: &Network<T>,
    kind: EnergyKind,
    betas: &[T],
    batch: T,
    ws: &mut InferenceWorkspace<T>,
) {
    let cols = ws.batch();
    for k in (1..net.layers.len()).rev() {
        let act = net.layers[k].activation;
        let rows = net.layers[k].w.nrows();
        let (lower, upper) = ws.next.split_at_mut(k);
        let (a, lambda) = (ws.a[k].as_slice(), upper[0].as_slice());
        let q = Parts::new(ws.q[k].as_mut_slice());
        let quotient_beta = betas[k] * batch;
        let kinks = (kind == EnergyKind::Penalizer).then(|| ws.kinks.layer(k, act));
        let step = ws.sigma[k - 1] * batch;
        ws.threads.columns(cols, rows, &|c: Range<usize>| {
            let r = c.start * rows..c.end * rows;
            // SAFETY: `columns` gives each piece its own columns.
            let q = unsafe { q.range(r.clone()) };
            let (a, lambda) = (&a[r.clone()], &lambda[r.clone()]);
            vectorized(
                #[inline(always)]
                || signal(kind, act, quotient_beta, a, lambda, q),
            );
            if let Some(kinks) = &kinks {
                // SAFETY: as above (whole columns, so `r` starts a column).
                unsafe { kinks.hold(r, step, a, lambda, q) };
            }
        });
        ws.threads
            .gemm(&mut lower[k - 1], &net.layers[k].w, true, &ws.q[k], false);
    }
}

impl<T: RealField + Copy> Kinks<T> {
    /// No unit held; `â` of the forward pass; the row norms of the weights (layers `k ≥ 1`:
    /// `â_1` does not move).
    fn reset(&mut self, net: &Network<T>, a: &[DMatrix<T>]) {
        for (k, layer) in net.layers.iter().enumerate().skip(1) {
            self.held[k].fill(false);
            self.prev_a[k].copy_from(&a[k]);
            for (i, n) in self.row_norms[k].iter_mut().enumerate() {
                *n = layer.w.row(i).norm_squared();
            }
        }
    }

    /// Layer `k ≥ 1`'s kinks, lent to the pieces of a sweep ([`KinkLayer::hold`]).
    fn layer(&mut self, k: usize, act: crate::prox::Activation) -> KinkLayer<'_, T> {
        KinkLayer {
            bounds: bounds::<T>(act),
            row_norms: &self.row_norms[k],
            held: Parts::new(&mut self.held[k]),
            nu: Parts::new(self.nu[k].as_mut_slice()),
            prev_a: Parts::new(self.prev_a[k].as_mut_slice()),
        }
    }

    /// Replaces `q_k` by the multiplier `ν` on the units of layer `k` held on a kink (the
    /// envelope gradient: no step).
    fn substitute(&self, k: usize, q: &mut DMatrix<T>) {
        let q = q.as_mut_slice();
        for ((qi, &h), &nu) in q.iter_mut().zip(&self.held[k]).zip(self.nu[k].as_slice()) {
            if h {
                *qi = nu;
            }
        }
    }
}

/// One layer's [`Kinks`], lent to the pieces of a sweep.
struct KinkLayer<'a, T> {
    bounds: (T, T),
    row_norms: &'a [T],
    held: Parts<'a, bool>,
    nu: Parts<'a, T>,
    prev_a: Parts<'a, T>,
}

impl<T: RealField + Copy> KinkLayer<'_, T> {
    /// Replaces `q_k = f'(â_k) ⊙ λ_k` by the multiplier `ν` on the units held on a convex kink,
    /// for the units `r` of the layer (`a`, `lambda`, `q` are those units'). First updates the
    /// held set, with `step = σ_{k−1} B`: a unit whose `â` crossed a bound `c` since the last
    /// sweep, with its state beyond the bound (`λ > 0` at the lower bound, `λ < 0` at the
    /// upper), is held; a held unit takes the Newton step
    /// `ν ← ν + (â − c)/(σ_{k−1} B ‖W_k[i, :]‖²)` towards `â = c` (the direct effect of `ν` on
    /// `â` through `λ_{k−1} = W_kᵀq_k`), and is released when `ν` leaves
    /// `[min(0, λ), max(0, λ)]` (the subdifferential `λ ∂f(c)`): then it belongs to a piece.
    ///
    /// # Safety
    /// `r` starts a column, and no other call uses an overlapping range at the same time.
    unsafe fn hold(&self, r: Range<usize>, step: T, a: &[T], lambda: &[T], q: &mut [T]) {
        let ((lo, hi), rows, zero) = (self.bounds, self.row_norms.len(), T::zero());
        // SAFETY: the caller's contract.
        let (held, nu, prev_a) = unsafe {
            (
                self.held.range(r.clone()),
                self.nu.range(r.clone()),
                self.prev_a.range(r),
            )
        };
        // A crossing of the bound c between the last two sweeps.
        // (`&`, `|`: no short circuit, so that the test vectorizes.)
        let crossed = |prev: T, av: T, c: T| ((prev - c) * (av - c) <= zero) & (prev != av);
        let convex = |prev: T, av: T, l: T| {
            ((l > zero) & crossed(prev, av, lo)) | ((l < zero) & crossed(prev, av, hi))
        };
        // Held units and crossings are rare: blocks with neither only move `â` into `prev_a`,
        // in a pass that vectorizes.
        const BLOCK: usize = 64;
        vectorized(
            #[inline(always)]
            || {
                for start in (0..a.len()).step_by(BLOCK) {
                    let end = (start + BLOCK).min(a.len());
                    let block = a[start..end].iter().zip(&prev_a[start..end]);
                    let block = block.zip(&lambda[start..end]).zip(&held[start..end]);
                    let quiet = block.fold(true, |quiet, (((&av, &prev), &l), &h)| {
                        quiet & !(h | convex(prev, av, l))
                    });
                    if quiet {
                        prev_a[start..end].copy_from_slice(&a[start..end]);
                        continue;
                    }
                    for idx in start..end {
                        let (av, l) = (a[idx], lambda[idx]);
                        let prev = std::mem::replace(&mut prev_a[idx], av);
                        if !held[idx] {
                            if !convex(prev, av, l) {
                                continue;
                            }
                            // The state at this sweep was made by the previous sweep's
                            // signal, f'(â_prev)·λ: the Newton step starts from it.
                            held[idx] = true;
                            nu[idx] = if prev > lo && prev < hi { l } else { zero };
                        }
                        let c = if l > zero { lo } else { hi };
                        let v = nu[idx] + (av - c) / (step * self.row_norms[idx % rows]);
                        if v >= l.min(zero) && v <= l.max(zero) && v.is_finite() {
                            nu[idx] = v;
                            q[idx] = v;
                        } else {
                            held[idx] = false;
                        }
                    }
                }
            },
        );
    }
}

impl<T: RealField + Copy> Memory<T> {
    /// The update of a state from its fixed-point residual `f = Φ(x) − x`, per sample (the
    /// samples' problems are independent): Anderson acceleration with memory one (type II,
    /// mixing `η`), `x ← x + ηf − γ(Δx + ηΔf)` with `γ = ⟨Δf, f⟩/‖Δf‖²` from the previous
    /// sweep's differences, or the damped step `x ← x + ηf` (`anderson` false). Cut over the
    /// team by samples (columns); returns `max |f|` and `max |Φ(x)|`.
    fn update(
        &mut self,
        state: &mut [DMatrix<T>],
        next: &[DMatrix<T>],
        (eta, anderson): (T, bool),
        threads: &Threads,
    ) -> (T, T) {
        let cols = self.change.len();
        let rows: usize = next.iter().map(DMatrix::nrows).sum();
        let x = PartsList::new(state.iter_mut().map(DMatrix::as_mut_slice));
        let px = PartsList::new(self.prev_state.iter_mut().map(DMatrix::as_mut_slice));
        let pf = PartsList::new(self.prev_f.iter_mut().map(DMatrix::as_mut_slice));
        let (change, size) = (Parts::new(&mut self.change), Parts::new(&mut self.size));
        threads.columns(cols, rows, &|c: Range<usize>| {
            // SAFETY: `columns` gives each piece its own columns, of every layer.
            let (change, size) = unsafe { (change.range(c.clone()), size.range(c.clone())) };
            let column = |k: usize, j: usize| {
                let r = j * next[k].nrows()..(j + 1) * next[k].nrows();
                // SAFETY: as above (column j is this piece's).
                unsafe {
                    let n = &next[k].as_slice()[r.clone()];
                    (
                        x[k].range(r.clone()),
                        n,
                        px[k].range(r.clone()),
                        pf[k].range(r),
                    )
                }
            };
            vectorized(
                #[inline(always)]
                || {
                    for (j, (change, size)) in c.zip(change.iter_mut().zip(size.iter_mut())) {
                        (*change, *size) = update_sample(next.len(), j, &column, eta, anderson);
                    }
                },
            );
        });
        let max = |m: &[T]| m.iter().fold(T::zero(), |a, &b| a.max(b));
        (max(&self.change), max(&self.size))
    }
}

/// [`Memory::update`] of sample `j`, whose column of layer `k` is `column(k, j)` (state,
/// `Φ(state)`, previous state, previous residual): `max |f|` and `max |Φ(x)|` over its units.
/// The sums `⟨Δf, f⟩`, `‖Δf‖²` go through [`Lanes`] per layer, added up in layer order.
#[inline(always)]
#[allow(clippy::type_complexity)]
fn update_sample<'a, T: RealField + Copy>(
    layers: usize,
    j: usize,
    column: &impl Fn(usize, usize) -> (&'a mut [T], &'a [T], &'a mut [T], &'a mut [T]),
    eta: T,
    anderson: bool,
) -> (T, T) {
    let zero = T::zero();
    let (mut dot, mut norm, mut change, mut size) = (zero, zero, zero, zero);
    for k in 0..layers {
        let (x, n, _, pf) = column(k, j);
        let mut lanes = [Lanes::<T>::zero(); 4];
        let mut term = |l: usize, xi: T, ni: T, pi: T| {
            let f = ni - xi;
            let df = f - pi;
            lanes[0].0[l] += df * f;
            lanes[1].0[l] += df * df;
            lanes[2].0[l] = lanes[2].0[l].max(f.abs());
            lanes[3].0[l] = lanes[3].0[l].max(ni.abs());
        };
        let full = x.len() / LANES * LANES;
        let chunks = x[..full].chunks_exact(LANES).zip(n.chunks_exact(LANES));
        for ((xs, ns), ps) in chunks.zip(pf.chunks_exact(LANES)) {
            for l in 0..LANES {
                term(l, xs[l], ns[l], ps[l]);
            }
        }
        let rest = x[full..].iter().zip(&n[full..]).zip(&pf[full..]);
        for (l, ((&xi, &ni), &pi)) in rest.enumerate() {
            term(l, xi, ni, pi);
        }
        let max = |m: Lanes<T>| m.0.iter().fold(zero, |a, &b| a.max(b));
        dot += lanes[0].total();
        norm += lanes[1].total();
        change = change.max(max(lanes[2]));
        size = size.max(max(lanes[3]));
    }
    let gamma = if anderson && norm > zero {
        dot / norm
    } else {
        zero
    };
    for k in 0..layers {
        let (x, n, px, pf) = column(k, j);
        let column = x.iter_mut().zip(n).zip(px.iter_mut()).zip(pf.iter_mut());
        if gamma == zero {
            for (((xi, &ni), px), pf) in column {
                let f = ni - *xi;
                (*px, *pf) = (*xi, f);
                *xi += eta * f;
            }
        } else {
            for (((xi, &ni), px), pf) in column {
                let f = ni - *xi;
                let step = eta * f - gamma * ((*xi - *px) + eta * (f - *pf));
                (*px, *pf) = (*xi, f);
                *xi += step;
            }
        }
    }
    (change, size)
}

/// Eq. 28 averaged over the batch at the current states: `ℓ(ẑ_L) + Σ_k Ẽ_k/σ_k` with
/// `Ẽ_k/σ_k = (σ_k/2)‖ρ‖²` per sample for penalizer energies (`ρ = Bλ`) and, per unit,
/// `(β/2)Q² + Q(â − f(â))` for Fenchel ones (`Q = (f(â) − ẑ)/β`, the Bregman gap of `G`).
fn surrogate_value<T: Gemm>(
    net: &Network<T>,
    kind: EnergyKind,
    loss: OutputLoss,
    target: &DMatrix<T>,
    betas: &[T],
    batch: T,
    ws: &mut InferenceWorkspace<T>,
) -> T {
    let top = net.layers.len() - 1;
    let value = loss.value_and_gradient(&ws.z[top], target, &mut ws.next[top]);
    value + layer_terms(net, kind, betas, batch, ws)
}

/// `Σ_k Ẽ_k/σ_k` of [`surrogate_value`] (uses `q` as scratch): per sample (cut over the team
/// by samples), each layer's sum through [`Lanes`], then added up over the samples in order.
fn layer_terms<T: Gemm>(
    net: &Network<T>,
    kind: EnergyKind,
    betas: &[T],
    batch: T,
    ws: &mut InferenceWorkspace<T>,
) -> T {
    let half: T = nalgebra::convert(0.5);
    let (cols, rows) = (ws.batch(), ws.a.iter().map(DMatrix::nrows).sum());
    let (a, lambda, sigma) = (&ws.a, &ws.lambda, &ws.sigma);
    let q = PartsList::new(ws.q.iter_mut().map(DMatrix::as_mut_slice));
    let terms = Parts::new(&mut ws.terms);
    ws.threads.columns(cols, rows, &|c: Range<usize>| {
        // SAFETY: `columns` gives each piece its own columns, of every layer.
        let terms = unsafe { terms.range(c.clone()) };
        vectorized(
            #[inline(always)]
            || {
                for (j, term) in c.zip(terms.iter_mut()) {
                    *term = T::zero();
                    for (k, layer) in net.layers.iter().enumerate() {
                        let rows = a[k].nrows();
                        let r = j * rows..(j + 1) * rows;
                        let s = sigma[k] * batch;
                        let l = &lambda[k].as_slice()[r.clone()];
                        *term += match kind {
                            EnergyKind::Penalizer => half * s * lane_sum2(l, l, |x, y| x * y),
                            _ => {
                                let a = &a[k].as_slice()[r.clone()];
                                // SAFETY: as above (column j is this piece's).
                                let q = unsafe { q[k].range(r) };
                                let act = layer.activation;
                                signal(kind, act, betas[k] * batch, a, l, q);
                                let (lo, hi) = bounds::<T>(act);
                                lane_sum2(q, a, |q, a| {
                                    half * s * q * q + q * (a - clamp(a, lo, hi))
                                })
                            }
                        };
                    }
                }
            },
        );
    });
    ws.terms.iter().fold(T::zero(), |sum, &t| sum + t)
}

/// The envelope gradient at the states: `∂/∂W_k = q_k(λ_k) ẑ_{k−1}ᵀ`, `∂/∂b_k = q_k 1`.
fn envelope_gradient<T: Gemm>(
    net: &Network<T>,
    kind: EnergyKind,
    betas: &[T],
    batch: T,
    x: &DMatrix<T>,
    ws: &mut InferenceWorkspace<T>,
    grads: &mut Gradients<T>,
) {
    for (k, layer) in net.layers.iter().enumerate() {
        let (a, lambda, q) = (
            ws.a[k].as_slice(),
            ws.lambda[k].as_slice(),
            ws.q[k].as_mut_slice(),
        );
        let quotient_beta = betas[k] * batch;
        vectorized(
            #[inline(always)]
            || signal(kind, layer.activation, quotient_beta, a, lambda, q),
        );
        if kind == EnergyKind::Penalizer && k > 0 {
            ws.kinks.substitute(k, &mut ws.q[k]);
        }
        let input = if k == 0 { x } else { &ws.z[k - 1] };
        ws.threads
            .gemm(&mut grads.w[k], &ws.q[k], false, input, true);
        grads.bias[k].fill(T::zero());
        for col in ws.q[k].column_iter() {
            grads.bias[k] += col;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::elementwise::Isa;
    use crate::nested::{linearized, Layer};
    use crate::prox::Activation;

    /// A pseudo-random f32 network 19-17-11-5 (widths and batch 7 off the lane count), inputs
    /// and one-hot targets.
    fn problem() -> (Network<f32>, DMatrix<f32>, DMatrix<f32>) {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let widths = [19, 17, 11, 5];
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(k, w)| Layer {
                w: DMatrix::from_fn(w[1], w[0], |_, _| 0.6 * uniform()),
                bias: nalgebra::DVector::from_fn(w[1], |_, _| 0.1 * uniform()),
                activation: if k + 2 < widths.len() {
                    Activation::Relu
                } else {
                    Activation::Identity
                },
            })
            .collect();
        let x = DMatrix::from_fn(widths[0], 7, |_, _| uniform());
        let t = DMatrix::from_fn(widths[3], 7, |i, j| f32::from(u8::from(i == j % 5)));
        (Network { layers }, x, t)
    }

    /// The bits of a run's gradients and report.
    fn bits(g: &Gradients<f32>, numbers: &[f32]) -> Vec<u32> {
        let w = g.w.iter().flat_map(|m| m.iter());
        let b = g.bias.iter().flat_map(|v| v.iter());
        w.chain(b).chain(numbers).map(|v| v.to_bits()).collect()
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let (net, x, t) = problem();
        let loss = OutputLoss::SoftmaxCrossEntropy;
        let betas = [0.3_f32; 3];
        let settings = InferenceSettings::default();
        let isas: Vec<Isa> = [Isa::Baseline, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&i| i <= Isa::detected())
            .collect();
        let run = |isa: Isa| -> Vec<Vec<u32>> {
            assert_eq!(Isa::active(), isa);
            let mut out = Vec::new();
            let mut grads = Gradients::zeros(&net);
            let mut ws = InferenceWorkspace::new(&net, x.ncols());
            for method in [
                Method::Mac,
                Method::PredictiveCoding,
                Method::Lpom,
                Method::Chl,
                Method::ConvexChl,
            ] {
                let r = gradient(
                    &net, method, &betas, loss, &x, &t, &settings, &mut ws, &mut grads,
                )
                .unwrap();
                out.push(bits(&grads, &[r.value, r.residual, r.sweeps as f32]));
            }
            let r = centered_gradient(
                &net,
                Method::Chl,
                &betas,
                loss,
                &x,
                &t,
                &settings,
                &mut ws,
                &mut grads,
            )
            .unwrap();
            out.push(bits(&grads, &[r.value, r.residual, r.sweeps as f32]));
            let mut lws = linearized::Workspace::new(&net, x.ncols());
            for kind in [EnergyKind::Penalizer, EnergyKind::Fenchel] {
                let v =
                    linearized::gradient(&net, kind, &betas, loss, &x, &t, &mut lws, &mut grads)
                        .unwrap();
                out.push(bits(&grads, &[v]));
            }
            out
        };
        let runs: Vec<_> = isas
            .iter()
            .map(|&isa| Isa::with_ceiling(isa, || run(isa)))
            .collect();
        // The sweeps did run (and stopped for their tolerance, not at the first sweep).
        assert!(runs[0][0].last().is_some_and(|&s| f32::from_bits(s) > 1.0));
        for (isa, r) in isas.iter().zip(&runs).skip(1) {
            for (m, (a, b)) in r.iter().zip(&runs[0]).enumerate() {
                assert!(
                    a == b,
                    "{} differs from the baseline in run {m}",
                    isa.name()
                );
            }
        }
    }
}
