//! The shape every nested solver shares, as in Section 2: a problem ([`NestedProblem`]), a batch
//! of data ([`Batch`]), settings ([`NestedSettings`]) and one report ([`NestedReport`]) for every
//! row of Table 1.

use std::borrow::Cow;

use nalgebra::{DMatrix, DVector, RealField};

use super::rows::Method;
use super::{EnergyKind, Network, OutputLoss};
use crate::error::{Error, Result};

/// A deeply nested program (Eq. 21): the network, its layer energies `E_k`, the per-layer
/// spacings `β_1..β_L` and the outer loss — and, when it is a row of Table 1, the method that
/// unravels it ([`Method::problem`]). Generic over `f32` (training) and `f64` (the references
/// and checks). Built by [`NestedProblem::new`], which checks that the pieces fit together
/// (`O(L)`); the f64 solvers also scan the weights for finiteness ([`NestedProblem::check`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NestedProblem<'a, T: RealField + Copy = f64> {
    /// The layers `z_k = f_k(W_k z_{k−1} + b_k)`.
    pub net: &'a Network<T>,
    /// The layer energy kind (Table 1's `E_k` column).
    pub energy: EnergyKind,
    /// `β_1..β_L`, one finite positive entry per layer (borrowed or owned).
    pub betas: Cow<'a, [T]>,
    /// The outer loss on `z_L`, averaged over the batch.
    pub loss: OutputLoss,
    /// The row of Table 1 this is the problem of (its energy is `energy`), if any: the batched
    /// solvers need it (the direction, and predictive coding's weights), the per-sample ones
    /// read the energy.
    pub method: Option<Method>,
}

impl<'a, T: RealField + Copy> NestedProblem<'a, T> {
    /// Checks the network's structure (shapes, activation parameters, softmax only with
    /// Fenchel or proximal energies) and `betas` (one finite positive value per layer); `O(L)`.
    ///
    /// # Example
    /// ```
    /// use bilevel::nalgebra::{dmatrix, dvector};
    /// use bilevel::nested::{global, Batch, EnergyKind, Layer, NestedProblem, NestedSettings, Network, OutputLoss};
    /// use bilevel::prox::Activation;
    ///
    /// let net = Network {
    ///     layers: vec![
    ///         Layer { w: dmatrix![1.0, -0.5; 0.3, 0.8], bias: dvector![0.1, -0.2], activation: Activation::Relu },
    ///         Layer { w: dmatrix![0.7, -1.1], bias: dvector![0.05], activation: Activation::Identity },
    ///     ],
    /// };
    /// // Convex CHL: proximal energies, global contrastive objective (Eq. 22).
    /// let problem = NestedProblem::new(&net, EnergyKind::Proximal, &[0.5, 0.1], OutputLoss::Squared)?;
    /// let (x, t) = (dmatrix![1.0, -1.0; 0.5, 2.0], dmatrix![0.2, -0.3]); // two samples
    /// let report = global::contrastive(&problem, Batch::new(&problem, &x, &t)?, &NestedSettings::default())?;
    /// assert!(report.value >= 0.0); // the clamped optimum is never below the free one
    /// // One β per layer, each finite and positive.
    /// assert!(NestedProblem::new(&net, EnergyKind::Proximal, &[0.5], OutputLoss::Squared).is_err());
    /// # Ok::<(), bilevel::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidInput`], [`Error::DimensionMismatch`], [`Error::NonFinite`],
    /// [`Error::InvalidBeta`].
    pub fn new(
        net: &'a Network<T>,
        energy: EnergyKind,
        betas: impl Into<Cow<'a, [T]>>,
        loss: OutputLoss,
    ) -> Result<Self> {
        let problem = Self {
            net,
            energy,
            betas: betas.into(),
            loss,
            method: None,
        };
        problem.check_structure()?;
        Ok(problem)
    }

    /// Re-checks the structure of a problem built as a struct literal (the batched solvers
    /// call it on every batch; `O(L)`): as [`NestedProblem::new`], and that `method`, if set,
    /// has `energy`.
    ///
    /// # Errors
    /// As [`NestedProblem::new`]; [`Error::InvalidInput`] for a method of another energy.
    pub fn check_structure(&self) -> Result<()> {
        self.net.check_structure(self.energy)?;
        check_betas(&self.betas, self.net.layers.len())?;
        match self.method {
            Some(m) if m.choices().0 != self.energy => Err(Error::input(
                "energy",
                format!(
                    "{m} unravels {:?} energies, not {:?}",
                    m.choices().0,
                    self.energy
                ),
            )),
            _ => Ok(()),
        }
    }

    /// [`NestedProblem::check_structure`] and every weight finite (`O(weights)`).
    ///
    /// # Errors
    /// As [`NestedProblem::check_structure`]; [`Error::NonFinite`] naming the layer.
    pub fn check(&self) -> Result<()> {
        self.check_structure()?;
        self.net.validate(self.energy)
    }

    /// Every per-sample solver's first step: re-checks the problem, validates the settings and
    /// checks the batch against the problem (shapes and finite entries).
    ///
    /// # Errors
    /// As [`NestedProblem::check`], [`NestedSettings::validate`] and [`Batch::new`].
    pub fn prepare<'b>(
        &self,
        batch: Batch<'b, T>,
        settings: &NestedSettings,
    ) -> Result<Batch<'b, T>> {
        self.check()?;
        settings.validate()?;
        if settings.centered {
            return Err(Error::input(
                "settings.centered",
                "the centered variant is computed by the batched sweeps (nested::inference), \
                 not by the per-sample solvers",
            ));
        }
        Batch::new(self, batch.x, batch.target)
    }

    /// Index of the top layer, `L − 1`.
    pub(crate) fn top(&self) -> usize {
        self.net.layers.len() - 1
    }
}

/// One batch: inputs `x` (`n_0 × B`) and targets (`n_L × B`), samples as columns.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a, T: RealField + Copy = f64> {
    /// `z_0 = x`.
    pub x: &'a DMatrix<T>,
    /// The loss's target per sample.
    pub target: &'a DMatrix<T>,
}

impl<'a, T: RealField + Copy> Batch<'a, T> {
    /// Checks the batch against `problem`: shapes, at least one sample, finite entries. (The
    /// training path builds its batches as struct literals: the batched solvers check the
    /// shapes, and a non-finite entry shows in the loss.)
    ///
    /// # Errors
    /// [`Error::DimensionMismatch`], [`Error::InvalidInput`] (no samples), [`Error::NonFinite`].
    pub fn new(
        problem: &NestedProblem<'_, T>,
        x: &'a DMatrix<T>,
        target: &'a DMatrix<T>,
    ) -> Result<Self> {
        problem.net.check_batch(x, target)?;
        if x.ncols() == 0 {
            return Err(Error::input("x", "the batch has no samples (columns)"));
        }
        for (name, m) in [("x", x), ("target", target)] {
            if !m.iter().all(|v| v.is_finite()) {
                return Err(Error::NonFinite { what: name.into() });
            }
        }
        Ok(Self { x, target })
    }

    /// The batch size `B`.
    pub fn len(&self) -> usize {
        self.x.ncols()
    }

    /// Whether the batch has no samples (never true for a batch from [`Batch::new`]).
    pub fn is_empty(&self) -> bool {
        self.x.ncols() == 0
    }
}

/// Iteration limits, tolerances and safety margins of the nested solvers, with the defaults
/// every test and `verify` row uses. [`NestedSettings::validate`] runs before every solve.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NestedSettings {
    /// Block-coordinate sweeps at most: CHL's two phases and the batched convex CHL solver's
    /// (default 20 000).
    pub max_sweeps: usize,
    /// LPOM's block-coordinate sweeps at most (default 500; every sweep runs FISTA per layer).
    pub lpom_max_sweeps: usize,
    /// FISTA steps per LPOM block at most (default 10 000).
    pub fista_max_steps: usize,
    /// Stop when a sweep (or a FISTA / Newton step) changes no entry by more than this,
    /// relative to the largest entry (default `1e-15`).
    pub tol_step: f64,
    /// LPOM stops when a sweep changes no entry by more than this, absolute (default `1e-14`).
    pub lpom_tol_sweep: f64,
    /// CHL is reported [`Error::Unbounded`] once an entry exceeds this (default `1e12`): the
    /// bilinear energy is unbounded below for large β.
    pub divergence: f64,
    /// Safety factor on the power-iteration estimate of `‖W‖₂²` in step sizes, which approaches
    /// from below (default 1.1; must be ≥ 1).
    pub lipschitz_margin: f64,
    /// MAC / predictive coding: smooth solver's gradient tolerance (default `1e-13`, relative to
    /// `1 + |∇J(z_0)|∞`).
    pub mac_tol_grad: f64,
    /// MAC / predictive coding: Newton steps after L-BFGS at most (default 30).
    pub mac_newton_steps: usize,
    /// MAC / predictive coding: also start from Prop. 7's clamped state `z̄` (Eq. 43) and keep
    /// the lower of the two local minima (default `true`). The objective is non-convex and this
    /// is a heuristic, not a global method: the report says [`Optimum::Local`]. Measured against
    /// the exact global minimum (enumeration of the ReLU pieces, one QP each) on 60 random
    /// 4-3-3-2 ReLU networks at β = 1, one sample each: the forward-pass start alone ends above
    /// it on 8, both starts on 6, by up to 50 % of the value
    /// (`tests/nested_local.rs::mac_misses_the_global_minimum_as_often_as_documented`).
    pub mac_second_start: bool,
    /// MAC / predictive coding: when every layer's weight `σ_k` (β_k for MAC, `Π_{l≥k} β_l` for
    /// predictive coding) is at most this, solve for the rates `(ẑ − z*)/σ` (exact however small
    /// σ is) instead of the states (default `1e-3`; samples where the rate Newton does not
    /// settle fall back to the states, reported as a [`Fallback`]).
    pub mac_rate_below: f64,
    /// MAC at kinks: a pre-activation within this of a bound (relative to `1 + |z|∞`) starts on
    /// the kink (default `1e-7`).
    pub kink_tol: f64,
    /// MAC at kinks: a kink multiplier may leave its subdifferential interval by this much,
    /// relative to the interval's ends (default `1e-10`).
    pub kink_multiplier_tol: f64,
    /// MAC at kinks: a unit has left its linear piece once its pre-activation crosses the
    /// piece's end by more than this, relative to `1 + |z|∞` (default `1e-12`).
    pub piece_tol: f64,
    /// Newton steps at most per linear system of pieces (MAC at kinks) or per sample (CHL's
    /// cross-entropy output block) (default 50).
    pub newton_max_steps: usize,
    /// CHL, softmax output under the squared loss: fixed-point steps at most (default 1000) and
    /// their relative stopping tolerance (default `1e-16`).
    pub fixed_point_max_steps: usize,
    /// See [`NestedSettings::fixed_point_max_steps`].
    pub fixed_point_tol: f64,
    /// Power-iteration steps for `‖W‖₂²` in step sizes (default 100).
    pub power_iterations: usize,
    /// LPOM's safety factor on the `‖W‖₂²` estimate in FISTA's step (default 1.05; ≥ 1).
    pub fista_lipschitz_margin: f64,
    /// The batched sweeps ([`crate::nested::inference`], training): most sweeps per batch (per
    /// phase for CHL and convex CHL; `T`, the number of inference steps; default 20, the upper
    /// end of what predictive-coding libraries use).
    pub inference_max_sweeps: usize,
    /// The batched sweeps stop when the fixed-point residual is below
    /// `inference_tol · (1 + max |λ|)` (default `1e-4`; 0 runs every sweep).
    pub inference_tol: f64,
    /// Smallest damping of the sweeps' update `λ ← λ + η(Φ(λ) − λ)` (`η` starts at 1 and
    /// halves when the residual grows), in `(0, 1]` (default 1/64).
    pub inference_min_damping: f64,
    /// Anderson acceleration (memory one, per sample) of the sweeps (default `true`).
    pub inference_anderson: bool,
    /// Convex CHL's sweeps: power-iteration steps for the `‖W_{k+1}‖₂²` of their block step
    /// sizes, once per batch (default 8; the step has a factor-two margin for an estimate from
    /// below, see [`crate::nested::inference`]).
    pub inference_power_iterations: usize,
    /// The centered (±β) variant of the bottom-up rows (CHL, convex CHL) in the batched sweeps
    /// (`L_c = ½(L^β + L^{−β})`, [`crate::nested::inference::gradient`]; default `false`).
    pub centered: bool,
}

impl Default for NestedSettings {
    fn default() -> Self {
        Self {
            max_sweeps: 20_000,
            lpom_max_sweeps: 500,
            fista_max_steps: 10_000,
            tol_step: 1e-15,
            lpom_tol_sweep: 1e-14,
            divergence: 1e12,
            lipschitz_margin: 1.1,
            mac_tol_grad: 1e-13,
            mac_newton_steps: 30,
            mac_second_start: true,
            mac_rate_below: 1e-3,
            kink_tol: 1e-7,
            kink_multiplier_tol: 1e-10,
            piece_tol: 1e-12,
            newton_max_steps: 50,
            fixed_point_max_steps: 1000,
            fixed_point_tol: 1e-16,
            power_iterations: 100,
            fista_lipschitz_margin: 1.05,
            inference_max_sweeps: 20,
            inference_tol: 1e-4,
            inference_min_damping: 1.0 / 64.0,
            inference_anderson: true,
            inference_power_iterations: 8,
            centered: false,
        }
    }
}

impl NestedSettings {
    /// Checks every field: limits at least 1, tolerances finite and in `[0, 1)` (the
    /// divergence threshold finite and > 1, the margins finite and ≥ 1).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let limits = [
            ("max_sweeps", self.max_sweeps),
            ("lpom_max_sweeps", self.lpom_max_sweeps),
            ("fista_max_steps", self.fista_max_steps),
            ("mac_newton_steps", self.mac_newton_steps),
            ("newton_max_steps", self.newton_max_steps),
            ("fixed_point_max_steps", self.fixed_point_max_steps),
            ("power_iterations", self.power_iterations),
            ("inference_max_sweeps", self.inference_max_sweeps),
            (
                "inference_power_iterations",
                self.inference_power_iterations,
            ),
        ];
        for (name, v) in limits {
            if v == 0 {
                return Err(Error::input(
                    format!("settings.{name}"),
                    "must be at least 1",
                ));
            }
        }
        let tolerances = [
            ("tol_step", self.tol_step),
            ("lpom_tol_sweep", self.lpom_tol_sweep),
            ("mac_tol_grad", self.mac_tol_grad),
            ("kink_tol", self.kink_tol),
            ("kink_multiplier_tol", self.kink_multiplier_tol),
            ("piece_tol", self.piece_tol),
            ("fixed_point_tol", self.fixed_point_tol),
            ("inference_tol", self.inference_tol),
        ];
        for (name, v) in tolerances {
            if !(v.is_finite() && (0.0..1.0).contains(&v)) {
                return Err(Error::input(
                    format!("settings.{name}"),
                    format!("{v} is not a tolerance in [0, 1)"),
                ));
            }
        }
        if !(self.divergence.is_finite() && self.divergence > 1.0) {
            return Err(Error::input(
                "settings.divergence",
                format!("{} must be finite and > 1", self.divergence),
            ));
        }
        if !(self.mac_rate_below.is_finite() && self.mac_rate_below >= 0.0) {
            return Err(Error::input(
                "settings.mac_rate_below",
                format!("{} must be finite and >= 0", self.mac_rate_below),
            ));
        }
        if !(self.inference_min_damping > 0.0 && self.inference_min_damping <= 1.0) {
            return Err(Error::input(
                "settings.inference_min_damping",
                format!("{} is not in (0, 1]", self.inference_min_damping),
            ));
        }
        let margins = [
            ("lipschitz_margin", self.lipschitz_margin),
            ("fista_lipschitz_margin", self.fista_lipschitz_margin),
        ];
        for (name, v) in margins {
            if !(v.is_finite() && v >= 1.0) {
                return Err(Error::input(
                    format!("settings.{name}"),
                    format!("{v} must be finite and >= 1"),
                ));
            }
        }
        Ok(())
    }
}

/// What the inner minimization guarantees about the point it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Optimum {
    /// Closed form (the linearized rows, Prop. 7): exact up to rounding.
    ClosedForm,
    /// A convex inner problem solved to its tolerance: the global minimum the paper's surrogate
    /// is defined with (convex CHL).
    Global,
    /// Convex in each layer but jointly non-convex (CHL's bilinear energy, LPOM's Eq. 34): a
    /// stationary point reached by block-coordinate descent from the forward pass.
    Stationary,
    /// Non-convex (MAC, predictive coding): a local minimum reached from the forward pass. The
    /// surrogate of Def. 1 uses the global minimum; value and gradient can differ from it.
    Local,
}

impl Optimum {
    /// What the point is, in words: `closed form`, `global minimum`, `stationary point`,
    /// `local minimum`.
    pub fn label(self) -> &'static str {
        match self {
            Optimum::ClosedForm => "closed form",
            Optimum::Global => "global minimum",
            Optimum::Stationary => "stationary point",
            Optimum::Local => "local minimum",
        }
    }
}

/// How an inner solve ended (in the spirit of Clarabel's `SolverStatus`). The per-sample f64
/// solvers return an error instead of stopping short ([`Error::NotConverged`]); the batched
/// sweeps of training stop at their budget, as predictive coding with a fixed number of
/// inference steps does, and say so here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Outcome {
    /// Solved to the tolerance (or closed form).
    Solved,
    /// Stopped at the iteration budget above the tolerance: value and gradient are those of
    /// the last iterate (the envelope gradient of where it stopped).
    MaxIterations,
    /// Stopped at the budget, and an earlier iterate (or the forward pass) had a lower
    /// objective: value and gradient are that iterate's, the better upper bound of `L^β`.
    BestIterate,
}

impl Outcome {
    /// `solved`, `stopped at the budget`, `best iterate (stopped at the budget)`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Solved => "solved",
            Outcome::MaxIterations => "stopped at the budget",
            Outcome::BestIterate => "best iterate (stopped at the budget)",
        }
    }
}

/// What a batched solve on a workspace reports ([`crate::nested::inference::gradient`],
/// [`crate::nested::linearized::gradient`]): the value and the status; the θ-gradient is in the
/// caller's [`Gradients`], the states in the workspace.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct BatchReport<T> {
    /// The surrogate's batch-mean value (`L^β`, Eq. 28 or 22; the forward loss `ℓ(z_L*)` for
    /// the linearized rows).
    pub value: T,
    /// The batch-mean loss `ℓ(z_L*)` of the forward pass.
    pub forward_loss: T,
    /// The damping `η` of the sweeps' last update (1 for closed forms).
    pub damping: T,
    /// Solver, sweeps (`iterations`), residual, optimum, outcome.
    pub status: NestedStatus,
}

/// A solver the method switched to because its first choice failed.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Fallback {
    /// The solver that was tried first.
    pub from: &'static str,
    /// Why it was abandoned (the error it returned).
    pub reason: String,
}

/// The status every nested solve reports.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct NestedStatus {
    /// The solver that produced the result.
    pub solver: &'static str,
    /// Iterations summed over phases and samples (sweeps × inner steps for block-coordinate
    /// solvers, L-BFGS + Newton steps for MAC; 0 for closed forms).
    pub iterations: usize,
    /// The first-order optimality residual of the inner minimization at the returned point,
    /// ∞-norm, in the units the solver works in, maximized over phases and samples. Newton-type
    /// solvers (MAC and predictive coding, the per-sample QPs of convex CHL) report the
    /// stationarity (gradient or KKT) norm; block-coordinate solvers (CHL, batched convex CHL,
    /// LPOM) report the last sweep's update `‖z_{t+1} − z_t‖∞`, the fixed-point residual of the
    /// sweep, which vanishes exactly at stationary points. `0` for closed forms.
    pub residual: f64,
    /// What the returned point is (global, stationary, local; see [`Optimum`]).
    pub optimum: Optimum,
    /// Whether the inner problem was solved to its tolerance, or the solver stopped at its
    /// budget ([`Outcome`]).
    pub outcome: Outcome,
    /// Set when the first-choice solver failed and another one produced the result.
    pub fallback: Option<Fallback>,
}

impl NestedStatus {
    /// The status of a closed form (`solver`): no iterations, residual 0, solved.
    pub fn closed_form(solver: &'static str) -> Self {
        Self {
            solver,
            iterations: 0,
            residual: 0.0,
            optimum: Optimum::ClosedForm,
            outcome: Outcome::Solved,
            fallback: None,
        }
    }
}

/// One result shape for every row of Table 1: the surrogate's value and θ-gradient on a batch,
/// the inner solutions, and the status.
#[derive(Debug, Clone)]
#[must_use]
pub struct NestedReport {
    /// The surrogate value: `L_GC^β` (Eq. 22) bottom-up, `L_LC^β` (Eq. 28) top-down; for the
    /// linearized rows (Prop. 7) the loss of the forward pass `ℓ(z_L*)`, where the linearized
    /// surrogate is anchored. Batch means.
    pub value: f64,
    /// The θ-gradient.
    pub grad: Gradients<f64>,
    /// The clamped (loss-perturbed) solution `ẑ_1..ẑ_L` (`n_k × B`); `z̄` of Eq. 43 for the
    /// linearized rows.
    pub clamped: Vec<DMatrix<f64>>,
    /// The free solution `ž_1..ž_L`: the minimizer of the free energy bottom-up, the forward
    /// pass top-down and linearized (Eq. 29: there `Ẽ_k = 0`).
    pub free: Vec<DMatrix<f64>>,
    /// Solver, iterations, residual, optimum, fallback.
    pub status: NestedStatus,
}

impl NestedReport {
    /// Checks that the value and every gradient entry are finite.
    ///
    /// # Errors
    /// [`Error::Overflow`] naming `what`.
    pub fn check_finite(self, what: &str) -> Result<Self> {
        let finite = self.value.is_finite()
            && self.grad.w.iter().all(|t| t.iter().all(|v| v.is_finite()))
            && self
                .grad
                .bias
                .iter()
                .all(|t| t.iter().all(|v| v.is_finite()));
        if finite {
            Ok(self)
        } else {
            Err(Error::Overflow {
                what: format!("the {what} value or gradient"),
            })
        }
    }
}

/// Parameter gradients, one entry per layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients<T: RealField + Copy> {
    /// `∂/∂W_k`.
    pub w: Vec<DMatrix<T>>,
    /// `∂/∂b_k` (the biases).
    pub bias: Vec<DVector<T>>,
}

impl<T: RealField + Copy> Gradients<T> {
    /// All entries in one vector: every `W_k` (column-major), then every `b_k`.
    pub fn flatten(&self) -> DVector<T> {
        let w = self.w.iter().flat_map(|m| m.iter().copied());
        let b = self.bias.iter().flat_map(|v| v.iter().copied());
        let n = self.w.iter().map(|m| m.len()).sum::<usize>()
            + self.bias.iter().map(|v| v.len()).sum::<usize>();
        DVector::from_iterator(n, w.chain(b))
    }

    /// Checks that the gradients are shaped like `net`'s parameters (`O(L)`).
    ///
    /// # Errors
    /// [`Error::DimensionMismatch`] naming `what` and the first layer that differs.
    pub fn check(&self, net: &Network<T>, what: &str) -> Result<()> {
        if self.w.len() != net.layers.len() || self.bias.len() != net.layers.len() {
            return Err(Error::dim(
                format!("{what} (layers)"),
                net.layers.len(),
                format!("{} weights, {} biases", self.w.len(), self.bias.len()),
            ));
        }
        for (k, (l, (w, b))) in net
            .layers
            .iter()
            .zip(self.w.iter().zip(&self.bias))
            .enumerate()
        {
            if w.shape() != l.w.shape() || b.len() != l.bias.len() {
                return Err(Error::dim(
                    format!("{what}[{k}]"),
                    format!("{:?} and {}", l.w.shape(), l.bias.len()),
                    format!("{:?} and {}", w.shape(), b.len()),
                ));
            }
        }
        Ok(())
    }

    /// Zero gradients shaped like `net`.
    pub fn zeros(net: &Network<T>) -> Self {
        Self {
            w: net
                .layers
                .iter()
                .map(|l| DMatrix::zeros(l.w.nrows(), l.w.ncols()))
                .collect(),
            bias: net
                .layers
                .iter()
                .map(|l| DVector::zeros(l.bias.len()))
                .collect(),
        }
    }
}

/// Checks a β vector: one finite, positive entry per layer.
pub fn check_betas<T: RealField + Copy>(betas: &[T], layers: usize) -> Result<()> {
    if betas.len() != layers {
        return Err(Error::dim("betas", layers, betas.len()));
    }
    for &b in betas {
        if !(b.is_finite() && b > T::zero()) {
            let v: f64 = nalgebra::try_convert(b).unwrap_or(f64::NAN);
            return Err(Error::InvalidBeta { beta: v });
        }
    }
    Ok(())
}
