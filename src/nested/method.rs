//! The solvers of Table 1's rows: every inference learning method is a choice of layer energy
//! (`E_k` column), direction of unravelling the nesting (bottom-up: Prop. 4; top-down: Props. 5
//! and 7) and whether the loss is linearized (Prop. 7). [`Method::run`] dispatches on that triple,
//! not on the name, and returns one [`NestedReport`] for every row.

use std::borrow::Cow;

use nalgebra::{DMatrix, RealField};

use super::linearized::{gradient, Gradients, Workspace};
use super::{
    global, local, Batch, EnergyKind, Fallback, NestedProblem, NestedReport, NestedSettings,
    NestedStatus, Network, OutputLoss,
};
use crate::error::{Error, Result};

pub use super::rows::{Method, PaperRow, Unravel};

impl Method {
    /// The row's problem on `net`: the row's energy (Table 1's `E_k` column) with per-layer
    /// `betas` and the outer `loss`.
    ///
    /// # Errors
    /// As [`NestedProblem::new`].
    pub fn problem<'a, T: RealField + Copy>(
        self,
        net: &'a Network<T>,
        betas: impl Into<Cow<'a, [T]>>,
        loss: OutputLoss,
    ) -> Result<NestedProblem<'a, T>> {
        let problem = NestedProblem {
            method: Some(self),
            ..NestedProblem::new(net, self.choices().0, betas, loss)?
        };
        Ok(problem)
    }

    /// The row's surrogate on one batch: value, θ-gradient, inner solutions and status.
    ///
    /// # Example
    /// ```
    /// use bilevel::nalgebra::{dmatrix, dvector};
    /// use bilevel::nested::method::Method;
    /// use bilevel::nested::{Batch, Layer, NestedSettings, Network, OutputLoss};
    /// use bilevel::prox::Activation;
    ///
    /// let net = Network {
    ///     layers: vec![
    ///         Layer { w: dmatrix![1.0, -0.5; 0.3, 0.8], bias: dvector![0.1, -0.2], activation: Activation::Relu },
    ///         Layer { w: dmatrix![0.7, -1.1], bias: dvector![0.05], activation: Activation::Identity },
    ///     ],
    /// };
    /// let (x, t) = (dmatrix![1.0; 0.5], dmatrix![0.2]);
    /// let problem = Method::Lpom.problem(&net, &[1e-3, 1e-3], OutputLoss::Squared)?;
    /// let batch = Batch::new(&problem, &x, &t)?;
    /// let lpom = Method::Lpom.run(&problem, batch, &NestedSettings::default())?;
    /// let bp_problem = Method::Bp.problem(&net, &[1e-3, 1e-3], OutputLoss::Squared)?;
    /// let bp = Method::Bp.run(&bp_problem, batch, &NestedSettings::default())?;
    /// // Cor. 2: the surrogate gradients approach back-propagation's as β → 0.
    /// let gap = (lpom.grad.flatten() - bp.grad.flatten()).amax();
    /// assert!(gap < 1e-2 * bp.grad.flatten().amax());
    /// println!("{} iterations, residual {:.1e}", lpom.status.iterations, lpom.status.residual);
    /// # Ok::<(), bilevel::Error>(())
    /// ```
    ///
    /// # Errors
    /// A problem whose energy is not the row's, an invalid batch or settings, β products
    /// outside the `f64` range (the non-linearized rows weigh layers by products of the β's),
    /// a non-finite result, and those of the solver the row uses (see [`super::global`],
    /// [`super::local`], [`super::linearized`]).
    pub fn run(
        self,
        problem: &NestedProblem<'_>,
        batch: Batch<'_>,
        settings: &NestedSettings,
    ) -> Result<NestedReport> {
        let (energy, direction, linearized) = self.choices();
        if problem.energy != energy {
            return Err(Error::input(
                "problem.energy",
                format!(
                    "{} uses {energy:?} energies, the problem has {:?} (build it with Method::problem)",
                    self.name(),
                    problem.energy
                ),
            ));
        }
        let batch = problem.prepare(batch, settings)?;
        if !linearized {
            check_beta_products(self.name(), &problem.betas)?;
        }
        let report = match (direction, linearized) {
            (Unravel::TopDown, true) => linearized_report(problem, batch)?,
            (Unravel::BottomUp, true) => {
                return Err(Error::input(
                    "method",
                    "linearized bottom-up surrogates are not in Table 1 (Appendix B)",
                ))
            }
            (Unravel::TopDown, false) => local::contrastive(problem, batch, settings)?,
            (Unravel::BottomUp, false) => match energy {
                // The free energy is minimized (to 0) by the forward pass, so Eq. 22 is the
                // local objective with weights 1/Π_{l≥k} β_l.
                EnergyKind::Penalizer => {
                    let scaled = NestedProblem {
                        betas: super::suffix_products(&problem.betas).into(),
                        ..problem.clone()
                    };
                    local::contrastive(&scaled, batch, settings)?
                }
                EnergyKind::Proximal if problem.loss == OutputLoss::Squared => {
                    convex_chl(problem, batch, settings)?
                }
                _ => global::contrastive(problem, batch, settings)?,
            },
        };
        report.check_finite(self.name())
    }
}

/// Convex CHL: the batched solver (matrix products over the whole batch), and the per-sample
/// QPs where it does not converge (strong layer coupling, `β‖W‖² ≳ 1`), recorded as a
/// [`Fallback`].
fn convex_chl(
    problem: &NestedProblem<'_>,
    batch: Batch<'_>,
    settings: &NestedSettings,
) -> Result<NestedReport> {
    match global::convex_chl_batched(problem, batch, settings) {
        Err(e @ Error::NotConverged { .. }) => {
            let mut report = global::contrastive(problem, batch, settings)?;
            report.status.fallback = Some(Fallback {
                from: "convex CHL: batched block-coordinate projected gradient",
                reason: e.to_string(),
            });
            Ok(report)
        }
        other => other,
    }
}

/// The linearized rows (Prop. 7): forward and backward pass in closed form.
fn linearized_report(problem: &NestedProblem<'_>, batch: Batch<'_>) -> Result<NestedReport> {
    let net = problem.net;
    let mut ws = Workspace::new(net, batch.len());
    let mut grad = Gradients::zeros(net);
    let report = gradient(problem, batch, &mut ws, &mut grad)?;
    let clamped = (0..net.layers.len())
        .map(|k| ws.z_bar(problem.energy, k, problem.betas[k]))
        .collect();
    Ok(NestedReport {
        value: report.value,
        grad,
        clamped,
        free: ws.z,
        status: NestedStatus::closed_form("closed form (forward + backward pass)"),
    })
}

/// The non-linearized methods weigh layer `k` by products of the β's (`Π_{l<k} β_l` in Eq. 22,
/// `1/Π_{l≥k} β_l` for predictive coding): every partial product and its reciprocal must be a
/// normal `f64`, else [`Error::BetaOutOfRange`] (instead of an `inf` weight and a NaN gradient).
fn check_beta_products(method: &str, betas: &[f64]) -> Result<()> {
    for &b in betas {
        crate::error::check_beta(b)?;
    }
    let ok = |p: f64| p.is_finite() && p >= f64::MIN_POSITIVE && (1.0 / p).is_finite();
    let (prefix, suffix) = (super::prefix_products(betas), super::suffix_products(betas));
    for (k, &b) in betas.iter().enumerate() {
        if !ok(prefix[k + 1]) || !ok(suffix[k]) {
            return Err(Error::BetaOutOfRange {
                beta: b,
                what: method.into(),
                reason: format!(
                    "its layer weights are products of the betas over layers and leave the f64 \
                     range at layer {} ({} layers of equal beta: keep |log10 beta| < {:.0})",
                    k + 1,
                    betas.len(),
                    (f64::MAX.log10() / betas.len() as f64).floor()
                ),
            });
        }
    }
    Ok(())
}

/// One measured row of `bilevel taxonomy`.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct TaxonomyRow {
    /// The method.
    pub method: &'static str,
    /// The row as Table 1 prints it (`None`: an extra beyond Table 1).
    pub table1: Option<PaperRow>,
    /// `E_k` the crate uses for it.
    pub energy: EnergyKind,
    /// Direction of unravelling the crate uses.
    pub direction: Unravel,
    /// Linearized loss (Prop. 7).
    pub linearized: bool,
    /// The crate's inference solver.
    pub inference: &'static str,
    /// `‖∇ − ∇_BP‖∞ / ‖∇_BP‖∞` at the given β (`None` with the error text when it failed).
    pub rel_error_vs_bp: Option<f64>,
    /// Mean seconds per gradient.
    pub seconds: f64,
    /// Failure, if any.
    pub error: Option<String>,
}

/// Table 1 as built from [`Method::ALL`], then the [`Method::EXTRAS`], measured on one network
/// and batch at equal `beta`.
pub fn taxonomy(
    net: &Network<f64>,
    beta: f64,
    loss: OutputLoss,
    x: &DMatrix<f64>,
    target: &DMatrix<f64>,
) -> Result<Vec<TaxonomyRow>> {
    let betas = vec![beta; net.layers.len()];
    let settings = NestedSettings::default();
    let run = |m: Method| -> Result<Gradients<f64>> {
        let problem = m.problem(net, &betas, loss)?;
        let batch = Batch::new(&problem, x, target)?;
        Ok(m.run(&problem, batch, &settings)?.grad)
    };
    let reference = run(Method::Bp)?.flatten();
    let scale = reference.amax().max(f64::MIN_POSITIVE);
    Ok(Method::ALL
        .iter()
        .chain(&Method::EXTRAS)
        .map(|&m| {
            let (energy, direction, linearized) = m.choices();
            let start = std::time::Instant::now();
            let mut reps = 0u32;
            let mut result = run(m);
            while result.is_ok() && start.elapsed().as_secs_f64() < 0.05 && reps < 1000 {
                result = run(m);
                reps += 1;
            }
            let seconds = start.elapsed().as_secs_f64() / f64::from(reps + 1);
            let (rel_error_vs_bp, error) = match result {
                Ok(g) => (Some((g.flatten() - &reference).amax() / scale), None),
                Err(e) => (None, Some(e.to_string())),
            };
            TaxonomyRow {
                method: m.name(),
                table1: m.paper_row(),
                energy,
                direction,
                linearized,
                inference: m.inference(),
                rel_error_vs_bp,
                seconds,
                error,
            }
        })
        .collect())
}
