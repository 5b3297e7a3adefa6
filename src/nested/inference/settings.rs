//! What one call of the sweeps works on ([`Sweeps`]: the problem, the batch and the settings)
//! and what it counts ([`Tally`], reported as a [`BatchReport`]).

use nalgebra::{DMatrix, RealField};

use crate::error::{Error, Result};
use crate::nested::method::Method;
use crate::nested::{
    BatchReport, EnergyKind, NestedSettings, NestedStatus, Network, Optimum, Outcome, OutputLoss,
};

/// What one batch's sweeps did, summed over phases ([`Tally::into_report`] makes the
/// [`BatchReport`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Tally<T> {
    /// The surrogate's batch-mean value `L^β` at the states (Eq. 28).
    pub(super) value: T,
    /// The batch-mean loss `ℓ(z_L*)` of the forward pass.
    pub(super) forward_loss: T,
    /// Backward sweeps run.
    pub(super) sweeps: usize,
    /// The fixed-point residual at the last sweep (module docs).
    pub(super) residual: T,
    /// Whether the residual reached the tolerance.
    pub(super) converged: bool,
    /// The damping `η` of the last update.
    pub(super) damping: T,
    /// Unconverged, the last iterate's objective was above the lowest seen (or above the
    /// forward pass's): the states, value and gradient are those of the best iterate.
    pub(super) best_iterate: bool,
}

/// The data of one call, shared by both directions.
pub(super) struct Sweeps<'a, T: RealField + Copy> {
    pub(super) net: &'a Network<T>,
    pub(super) kind: EnergyKind,
    pub(super) betas: &'a [T],
    pub(super) loss: OutputLoss,
    pub(super) x: &'a DMatrix<T>,
    pub(super) target: &'a DMatrix<T>,
    /// The budget, and for the bottom-up rows whether to add the `−β` clamped phase
    /// (`centered`).
    pub(super) settings: &'a NestedSettings,
}

impl<T: RealField + Copy> Tally<T> {
    /// The report of `method`'s sweeps: sweeps as iterations, the outcome, what the point is.
    pub(super) fn into_report(self, method: Method) -> BatchReport<T> {
        let outcome = match (self.converged, self.best_iterate) {
            (true, _) => Outcome::Solved,
            (false, false) => Outcome::MaxIterations,
            (false, true) => Outcome::BestIterate,
        };
        let (solver, optimum) = match method {
            Method::Mac | Method::PredictiveCoding => ("top-down sweeps (Prop. 5)", Optimum::Local),
            Method::Lpom => ("top-down sweeps (Prop. 5)", Optimum::Stationary),
            Method::Chl => ("bottom-up sweeps (Prop. 4)", Optimum::Stationary),
            _ => ("bottom-up sweeps (Prop. 4)", Optimum::Global),
        };
        BatchReport {
            value: self.value,
            forward_loss: self.forward_loss,
            damping: self.damping,
            status: NestedStatus {
                solver,
                iterations: self.sweeps,
                residual: nalgebra::try_convert(self.residual).unwrap_or(f64::NAN),
                optimum,
                outcome,
                fallback: None,
            },
        }
    }
}

/// `v`, or [`Error::NonFinite`] naming `what`.
pub(super) fn finite<T: RealField + Copy>(v: T, what: &str) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::NonFinite { what: what.into() })
    }
}
