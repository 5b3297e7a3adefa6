//! Table 1 of the paper as data: every inference learning method is a choice of layer energy
//! (`E_k` column), direction of unravelling the nesting (bottom-up: Prop. 4; top-down: Props. 5
//! and 7) and whether the loss is linearized (Prop. 7). [`Method::gradient`] dispatches on that
//! triple, not on the name.

use nalgebra::DMatrix;

use super::linearized::{gradient, Gradients, Workspace};
use super::{global, local, EnergyKind, Network, OutputLoss};
use crate::error::{Error, Result};

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

/// The rows of Table 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Method {
    /// Contrastive Hebbian learning: Fenchel energies, bottom-up.
    Chl,
    /// Convex CHL: proximal energies, bottom-up.
    ConvexChl,
    /// Lifted proximal operator machines / Fenchel lifted networks: Fenchel energies, top-down.
    Lpom,
    /// Method of auxiliary coordinates: penalizer energies, top-down.
    Mac,
    /// Back-propagation: penalizer energies, top-down, linearized.
    Bp,
    /// Predictive coding networks: penalizer energies with the bottom-up (discounting) weights
    /// `μ_k⁻¹ = Π_{l≥k} β_l` (Section 3.2.1).
    PredictiveCoding,
    /// Fenchel back-propagation: Fenchel energies, top-down, linearized (Section 4.2).
    FenchelBp,
}

impl Method {
    /// All rows, in the order of Table 1.
    pub const ALL: [Method; 7] = [
        Method::Chl,
        Method::ConvexChl,
        Method::Lpom,
        Method::Mac,
        Method::Bp,
        Method::PredictiveCoding,
        Method::FenchelBp,
    ];

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

    /// The θ-gradient of the row's surrogate on one batch, with per-layer `betas`.
    ///
    /// # Errors
    /// Those of the solver the row uses (see [`super::global`], [`super::local`],
    /// [`super::linearized`]), and linearized bottom-up (not in Table 1: Appendix B shows it is
    /// of no interest).
    pub fn gradient(
        self,
        net: &Network<f64>,
        betas: &[f64],
        loss: OutputLoss,
        x: &DMatrix<f64>,
        target: &DMatrix<f64>,
    ) -> Result<Gradients<f64>> {
        if !self.choices().2 {
            check_beta_products(self.name(), betas)?;
        }
        let g = self.gradient_unchecked(net, betas, loss, x, target)?;
        let finite = g.w.iter().all(|t| t.iter().all(|v| v.is_finite()))
            && g.b.iter().all(|t| t.iter().all(|v| v.is_finite()));
        if !finite {
            return Err(Error::Overflow {
                what: format!("the {} gradient", self.name()),
            });
        }
        Ok(g)
    }

    fn gradient_unchecked(
        self,
        net: &Network<f64>,
        betas: &[f64],
        loss: OutputLoss,
        x: &DMatrix<f64>,
        target: &DMatrix<f64>,
    ) -> Result<Gradients<f64>> {
        match self.choices() {
            (kind, Unravel::TopDown, true) => {
                let mut ws = Workspace::new(net, x.ncols());
                let mut g = Gradients::zeros(net);
                gradient(net, kind, betas, loss, x, target, &mut ws, &mut g)?;
                Ok(g)
            }
            (EnergyKind::Penalizer, Unravel::BottomUp, false) => {
                // The free energy is minimized (to 0) by the forward pass, so Eq. 22 is the local
                // objective with weights 1/Π_{l≥k} β_l.
                super::linearized::check_betas(betas, net.layers.len())?;
                let mut cumulative = betas.to_vec();
                for k in (0..cumulative.len().saturating_sub(1)).rev() {
                    cumulative[k] *= cumulative[k + 1];
                }
                Ok(local::local_contrastive(
                    net,
                    EnergyKind::Penalizer,
                    &cumulative,
                    loss,
                    x,
                    target,
                )?
                .grad)
            }
            // Convex CHL: the batched solver (matrix products over the whole batch), and the
            // per-sample QPs where it does not converge (strong layer coupling, β‖W‖² ≳ 1).
            (EnergyKind::Proximal, Unravel::BottomUp, false) if loss == OutputLoss::Squared => {
                match global::convex_chl_batched(net, betas, x, target, 20_000) {
                    Ok(sol) => Ok(sol.grad),
                    Err(Error::NotConverged { .. }) => Ok(global::global_contrastive(
                        net,
                        EnergyKind::Proximal,
                        betas,
                        loss,
                        x,
                        target,
                    )?
                    .grad),
                    Err(e) => Err(e),
                }
            }
            (kind, Unravel::BottomUp, false) => {
                Ok(global::global_contrastive(net, kind, betas, loss, x, target)?.grad)
            }
            (kind, Unravel::TopDown, false) => {
                Ok(local::local_contrastive(net, kind, betas, loss, x, target)?.grad)
            }
            (_, Unravel::BottomUp, true) => Err(Error::input(
                "method",
                "linearized bottom-up surrogates are not in Table 1 (Appendix B)",
            )),
        }
    }
}

/// The non-linearized methods weigh layer `k` by products of the β's (`Π_{l<k} β_l` in Eq. 22,
/// `1/Π_{l≥k} β_l` for predictive coding): every partial product and its reciprocal must be a
/// normal `f64`, else [`Error::BetaOutOfRange`] (instead of an `inf` weight and a NaN gradient).
fn check_beta_products(method: &str, betas: &[f64]) -> Result<()> {
    for &b in betas {
        crate::error::check_beta(b)?;
    }
    let ok = |p: f64| p.is_finite() && p >= f64::MIN_POSITIVE && (1.0 / p).is_finite();
    let mut prefix = 1.0;
    for (k, &b) in betas.iter().enumerate() {
        prefix *= b;
        let suffix: f64 = betas[k..].iter().product();
        if !ok(prefix) || !ok(suffix) {
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
    /// `E_k` column.
    pub energy: EnergyKind,
    /// Direction of unravelling.
    pub direction: Unravel,
    /// Linearized loss (Prop. 7).
    pub linearized: bool,
    /// Inference task.
    pub inference: &'static str,
    /// `‖∇ − ∇_BP‖∞ / ‖∇_BP‖∞` at the given β (`None` with the error text when it failed).
    pub rel_error_vs_bp: Option<f64>,
    /// Mean seconds per gradient.
    pub seconds: f64,
    /// Failure, if any.
    pub error: Option<String>,
}

/// Table 1 as built from [`Method::ALL`], measured on one network and batch at equal `beta`.
pub fn taxonomy(
    net: &Network<f64>,
    beta: f64,
    loss: OutputLoss,
    x: &DMatrix<f64>,
    target: &DMatrix<f64>,
) -> Result<Vec<TaxonomyRow>> {
    let betas = vec![beta; net.layers.len()];
    let reference = Method::Bp.gradient(net, &betas, loss, x, target)?.flatten();
    let scale = reference.amax().max(f64::MIN_POSITIVE);
    Ok(Method::ALL
        .iter()
        .map(|&m| {
            let (energy, direction, linearized) = m.choices();
            let start = std::time::Instant::now();
            let mut reps = 0u32;
            let mut result = m.gradient(net, &betas, loss, x, target);
            while result.is_ok() && start.elapsed().as_secs_f64() < 0.05 && reps < 1000 {
                result = m.gradient(net, &betas, loss, x, target);
                reps += 1;
            }
            let seconds = start.elapsed().as_secs_f64() / f64::from(reps + 1);
            let (rel_error_vs_bp, error) = match result {
                Ok(g) => (Some((g.flatten() - &reference).amax() / scale), None),
                Err(e) => (None, Some(e.to_string())),
            };
            TaxonomyRow {
                method: m.name(),
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
