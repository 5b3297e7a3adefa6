//! The shape every nested solver shares, as in Section 2: a problem ([`NestedProblem`]), a batch
//! of data ([`Batch`]), settings ([`NestedSettings`]) and one report ([`NestedReport`]) for every
//! row of Table 1.

use nalgebra::DMatrix;

use super::linearized::{check_betas, Gradients};
use super::{EnergyKind, Network, OutputLoss};
use crate::error::{Error, Result};

/// A deeply nested program (Eq. 21): the network, its layer energies `E_k`, the per-layer
/// spacings `β_1..β_L` and the outer loss. Built by [`NestedProblem::new`], which checks that
/// the pieces fit together, so the solvers only check the [`Batch`].
#[derive(Debug, Clone, PartialEq)]
pub struct NestedProblem<'a> {
    /// The layers `z_k = f_k(W_k z_{k−1} + b_k)`.
    pub net: &'a Network<f64>,
    /// The layer energy kind (Table 1's `E_k` column).
    pub energy: EnergyKind,
    /// `β_1..β_L`, one finite positive entry per layer.
    pub betas: Vec<f64>,
    /// The outer loss on `z_L`, averaged over the batch.
    pub loss: OutputLoss,
}

impl<'a> NestedProblem<'a> {
    /// Checks the network (shapes, finite entries, softmax only with Fenchel or proximal
    /// energies) and `betas` (one finite positive value per layer).
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
        net: &'a Network<f64>,
        energy: EnergyKind,
        betas: &[f64],
        loss: OutputLoss,
    ) -> Result<Self> {
        let problem = Self {
            net,
            energy,
            betas: betas.to_vec(),
            loss,
        };
        problem.check()?;
        Ok(problem)
    }

    /// Re-checks a problem built as a struct literal (the solvers call it; `O(weights)`).
    ///
    /// # Errors
    /// As [`NestedProblem::new`].
    pub fn check(&self) -> Result<()> {
        self.net.validate(self.energy)?;
        check_betas(&self.betas, self.net.layers.len())
    }

    /// Every solver's first step: re-checks the problem, validates the settings and checks the
    /// batch against the problem.
    ///
    /// # Errors
    /// As [`NestedProblem::check`], [`NestedSettings::validate`] and [`Batch::new`].
    pub fn prepare<'b>(&self, batch: Batch<'b>, settings: &NestedSettings) -> Result<Batch<'b>> {
        self.check()?;
        settings.validate()?;
        Batch::new(self, batch.x, batch.target)
    }

    /// Index of the top layer, `L − 1`.
    pub(crate) fn top(&self) -> usize {
        self.net.layers.len() - 1
    }
}

/// One batch: inputs `x` (`n_0 × B`) and targets (`n_L × B`), samples as columns.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// `z_0 = x`.
    pub x: &'a DMatrix<f64>,
    /// The loss's target per sample.
    pub target: &'a DMatrix<f64>,
}

impl<'a> Batch<'a> {
    /// Checks the batch against `problem`: shapes, at least one sample, finite entries.
    ///
    /// # Errors
    /// [`Error::DimensionMismatch`], [`Error::InvalidInput`] (no samples), [`Error::NonFinite`].
    pub fn new(
        problem: &NestedProblem<'_>,
        x: &'a DMatrix<f64>,
        target: &'a DMatrix<f64>,
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
    /// the lower of the two local minima (default `true`; the objective is non-convex and the
    /// forward pass alone was seen to end 0.2 % above the global minimum, with a gradient 19 %
    /// off).
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
    /// Set when the first-choice solver failed and another one produced the result.
    pub fallback: Option<Fallback>,
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
