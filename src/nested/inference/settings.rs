//! What one call of the sweeps is given and what it reports: the budget ([`InferenceSettings`]),
//! the problem of the call ([`Sweeps`]) and the report ([`InferenceReport`]).

use nalgebra::{DMatrix, RealField};

use crate::error::{Error, Result};
use crate::nested::{EnergyKind, Network, OutputLoss};

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

/// The data of one call, shared by both directions.
pub(super) struct Sweeps<'a, T: RealField + Copy> {
    pub(super) net: &'a Network<T>,
    pub(super) kind: EnergyKind,
    pub(super) betas: &'a [T],
    pub(super) loss: OutputLoss,
    pub(super) x: &'a DMatrix<T>,
    pub(super) target: &'a DMatrix<T>,
    pub(super) settings: &'a InferenceSettings,
    /// Bottom-up rows: add the `−β` clamped phase ([`centered_gradient`]).
    pub(super) centered: bool,
}

/// `v`, or [`Error::NonFinite`] naming `what`.
pub(super) fn finite<T: RealField + Copy>(v: T, what: &str) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::NonFinite { what: what.into() })
    }
}
