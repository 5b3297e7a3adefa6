//! One row of the verification table ([`Check`]) and the measures rows share.

use nalgebra::DVector;
use serde::Serialize;

use crate::error::Result;

/// One row of the verification table.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable identifier (`prop2-enumeration`, ...).
    pub id: String,
    /// The paper's name of the claim (`Prop. 2`, ...).
    pub claim: String,
    /// The instance and what is compared with what.
    pub description: String,
    /// What `measured` is, with its unit (see [`quantity`]).
    pub quantity: &'static str,
    /// The measured value.
    pub measured: f64,
    /// The largest error that passes.
    pub tolerance: f64,
    /// `measured ≤ tolerance` (false for NaN).
    pub passed: bool,
}

impl Check {
    /// A row from a measurement; a measurement that failed counts as failed, with the error in
    /// the description.
    pub(super) fn measure(
        id: &str,
        claim: &str,
        description: String,
        r: Result<f64>,
        tolerance: f64,
    ) -> Self {
        let (description, measured) = match r {
            Ok(m) => (description, m),
            Err(e) => (format!("{description} — error: {e}"), f64::NAN),
        };
        Self {
            quantity: quantity(id),
            id: id.into(),
            claim: claim.into(),
            description,
            measured,
            tolerance,
            passed: measured <= tolerance,
        }
    }
}

/// What a row's `measured` is, with its unit: one of "relative error" (`‖a − b‖∞ / max(1, ‖b‖∞)`
/// unless the description names another scale), "absolute error", "|rate − expected rate|"
/// (fitted log-log slope), "count" or "bound violation" (how far an inequality of the paper
/// fails, absolute; 0 when it holds).
pub fn quantity(id: &str) -> &'static str {
    match id {
        "prop2-classification" => "count",
        "cor1-rate" | "centered-rate" | "table1-centered" => "|rate - expected rate|",
        "prop3-band" | "eq29-local-below-loss" | "eq29-fenchel-young-gap" => "bound violation",
        "softmax-fenchel-young" | "example1-generalized" => "absolute error",
        _ => "relative error",
    }
}

/// `‖a − b‖∞ / max(1, ‖b‖∞)`.
pub fn rel_err(a: &DVector<f64>, b: &DVector<f64>) -> f64 {
    (a - b).amax() / b.amax().max(1.0)
}

/// Least-squares slope of `log err` against `log β`.
pub fn fitted_slope(betas: &[f64], errs: &[f64]) -> f64 {
    let xs: Vec<f64> = betas.iter().map(|b| b.ln()).collect();
    let ys: Vec<f64> = errs.iter().map(|e| e.ln()).collect();
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    cov / var
}
