//! Table 1 of the paper as data: every inference learning method is a choice of layer energy
//! (`E_k` column), direction of unravelling the nesting (bottom-up: Prop. 4; top-down: Props. 5
//! and 7) and whether the loss is linearized (Prop. 7). [`Method::run`] dispatches on that triple,
//! not on the name, and returns one [`NestedReport`] for every row.

use nalgebra::DMatrix;

use super::linearized::{gradient, Gradients, Workspace};
use super::{
    global, local, Batch, EnergyKind, Fallback, NestedProblem, NestedReport, NestedSettings,
    NestedStatus, Network, Optimum, OutputLoss,
};
use crate::error::{Error, Result};
use crate::names::Named;

/// Direction of unravelling the nesting levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum Unravel {
    /// Inside-out: the global contrastive objective (Prop. 4).
    BottomUp,
    /// Outside-in: the local contrastive objective (Prop. 5), or its linearization (Prop. 7).
    TopDown,
}

/// The rows of Table 1. Named ([`Named`]) `chl`, `convex-chl`, `lpom`, `mac`, `bp`, `fenbp`,
/// `pc` on the command line, in logs and in Python; [`Method::name`] is the paper's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Contrastive Hebbian learning: Fenchel energies, bottom-up.
    Chl,
    /// Convex CHL: proximal energies, bottom-up.
    ConvexChl,
    /// Lifted proximal operator machines / Fenchel lifted networks: Fenchel energies, top-down.
    Lpom,
    /// Method of auxiliary coordinates: penalizer energies, top-down.
    Mac,
    /// Back-propagation, and predictive coding networks in their Table 1 form ("BP & PCN"):
    /// penalizer energies, top-down, linearized, closed form (Prop. 7).
    Bp,
    /// Fenchel back-propagation: Fenchel energies, top-down, linearized (Section 4.2).
    FenchelBp,
    /// Not a Table 1 row: predictive coding with *iterative* inference, the penalizer objective
    /// of Eq. 30 with the discounting weights `μ_k⁻¹ = Π_{l≥k} β_l` of Section 3.2.1 minimized
    /// to convergence (the global contrastive reading of MAC's objective). Table 1 files PCN
    /// with BP: the linearized pass it reduces to; this extra is how predictive coding is run
    /// in practice, and its gradient tends to back-propagation's as β → 0 (Cor. 2).
    PredictiveCoding,
}

impl Named for Method {
    const KIND: &'static str = "method";
    const NAMES: &'static [(Self, &'static str)] = &[
        (Method::Chl, "chl"),
        (Method::ConvexChl, "convex-chl"),
        (Method::Lpom, "lpom"),
        (Method::Mac, "mac"),
        (Method::Bp, "bp"),
        (Method::FenchelBp, "fenbp"),
        (Method::PredictiveCoding, "pc"),
    ];
}

crate::named!(Method);

/// A row of Table 1 as the paper prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PaperRow {
    /// "Method".
    pub method: &'static str,
    /// "E_k".
    pub energy: &'static str,
    /// "Direction".
    pub direction: &'static str,
    /// "Linearized outer loss".
    pub linearized: &'static str,
    /// "Inference".
    pub inference: &'static str,
}

impl Method {
    /// The rows of Table 1, in the paper's order.
    pub const ALL: [Method; 6] = [
        Method::Chl,
        Method::ConvexChl,
        Method::Lpom,
        Method::Mac,
        Method::Bp,
        Method::FenchelBp,
    ];

    /// Methods beyond Table 1 (see each variant's docs).
    pub const EXTRAS: [Method; 1] = [Method::PredictiveCoding];

    /// The row as Table 1 prints it; `None` for the [`Method::EXTRAS`].
    pub fn paper_row(self) -> Option<PaperRow> {
        let row = |method, energy, direction, linearized, inference| PaperRow {
            method,
            energy,
            direction,
            linearized,
            inference,
        };
        match self {
            Method::Chl => Some(row("CHL", "Fenchel", "Bottom-up", "No", "Layer-convex")),
            Method::ConvexChl => Some(row("Convex CHL", "Proximal", "Bottom-up", "No", "Convex")),
            Method::Lpom => Some(row(
                "FLN & LPOM",
                "Fenchel/Proximal",
                "Top-down",
                "No",
                "Layer-Convex",
            )),
            Method::Mac => Some(row("MAC", "Penalizer", "Any", "No", "Non-convex")),
            Method::Bp => Some(row(
                "BP & PCN",
                "Penalizer",
                "Top-down",
                "Yes",
                "Closed-form",
            )),
            Method::FenchelBp => Some(row(
                "Fenchel BP",
                "Fenchel/Proximal",
                "Top-down",
                "Yes",
                "Closed-form",
            )),
            Method::PredictiveCoding => None,
        }
    }

    /// The row's name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Chl => "CHL",
            Method::ConvexChl => "convex CHL",
            Method::Lpom => "LPOM",
            Method::Mac => "MAC",
            Method::Bp => "BP",
            Method::PredictiveCoding => "predictive coding",
            Method::FenchelBp => "Fenchel BP",
        }
    }

    /// `(E_k, direction, linearized)`: the row's defining choices.
    pub fn choices(self) -> (EnergyKind, Unravel, bool) {
        use EnergyKind::*;
        use Unravel::*;
        match self {
            Method::Chl => (Fenchel, BottomUp, false),
            Method::ConvexChl => (Proximal, BottomUp, false),
            Method::Lpom => (Fenchel, TopDown, false),
            Method::Mac => (Penalizer, TopDown, false),
            Method::Bp => (Penalizer, TopDown, true),
            Method::PredictiveCoding => (Penalizer, BottomUp, false),
            Method::FenchelBp => (Fenchel, TopDown, true),
        }
    }

    /// The inference task the row needs (the last column of Table 1).
    pub fn inference(self) -> &'static str {
        match self.choices() {
            (_, _, true) => "closed form (forward + backward pass)",
            (EnergyKind::Proximal, Unravel::BottomUp, _) => "convex (batched BCD; QP per sample)",
            (EnergyKind::Fenchel, Unravel::BottomUp, _) => "layer-wise convex (two phases)",
            (EnergyKind::Fenchel, Unravel::TopDown, _) => "block-convex (BCD)",
            _ => "non-convex (L-BFGS + Newton)",
        }
    }

    /// The row's problem on `net`: the row's energy (Table 1's `E_k` column) with per-layer
    /// `betas` and the outer `loss`.
    ///
    /// # Errors
    /// As [`NestedProblem::new`].
    pub fn problem<'a>(
        self,
        net: &'a Network<f64>,
        betas: &[f64],
        loss: OutputLoss,
    ) -> Result<NestedProblem<'a>> {
        NestedProblem::new(net, self.choices().0, betas, loss)
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
                        betas: super::suffix_products(&problem.betas),
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
    let value = gradient(
        net,
        problem.energy,
        &problem.betas,
        problem.loss,
        batch.x,
        batch.target,
        &mut ws,
        &mut grad,
    )?;
    let clamped = (0..net.layers.len())
        .map(|k| ws.z_bar(problem.energy, k, problem.betas[k]))
        .collect();
    Ok(NestedReport {
        value,
        grad,
        clamped,
        free: ws.z,
        status: NestedStatus {
            solver: "closed form (forward + backward pass)",
            iterations: 0,
            residual: 0.0,
            optimum: Optimum::ClosedForm,
            fallback: None,
        },
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
