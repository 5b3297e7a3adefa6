//! The training rule: a row of Table 1 (or predictive coding) with its β and sweep budget.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nested::inference::InferenceSettings;
use crate::nested::method::Method;
use crate::nested::EnergyKind;

/// The training rule: a row of Table 1 (or predictive coding) and its β.
///
/// Back-propagation and Fenchel back-propagation are Prop. 7's closed-form pass
/// ([`linearized::gradient`](crate::nested::linearized::gradient)); MAC, predictive coding and LPOM run at most `sweeps` inference
/// sweeps of the same pass to the minimizer of their local contrastive objective (Prop. 5),
/// CHL and convex CHL at most `sweeps` per phase of their global one (Prop. 4)
/// ([`inference::gradient`](crate::nested::inference::gradient)).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Rule {
    /// Back-propagation (penalizer energies).
    Bp,
    /// Fenchel back-propagation with `β_k = β` for every layer (Fenchel energies).
    FenBp {
        /// `β > 0` as in the paper's Fig. 1 and Appendix C code, where it acts on the gradient
        /// of the batch-mean loss: `β/B` per sample in the batch convention of
        /// [`crate::nested`] (the trainer passes that on).
        beta: f32,
    },
    /// The method of auxiliary coordinates (penalizer energies, Eq. 30, `σ_k = β`).
    Mac {
        /// β on the batch-mean loss, as for [`Rule::FenBp`].
        beta: f32,
        /// Most inference sweeps per batch.
        sweeps: usize,
    },
    /// Predictive coding with iterative inference (`σ_k = Π_{l≥k} β`, Section 3.2.1).
    Pc {
        /// β on the batch-mean loss, as for [`Rule::FenBp`].
        beta: f32,
        /// Most inference sweeps per batch.
        sweeps: usize,
    },
    /// Lifted proximal operator machines (Fenchel energies, Eq. 34).
    Lpom {
        /// β on the batch-mean loss, as for [`Rule::FenBp`].
        beta: f32,
        /// Most inference sweeps per batch.
        sweeps: usize,
    },
    /// Contrastive Hebbian learning (Fenchel energies, bottom-up, Prop. 4).
    Chl {
        /// β on the batch-mean loss, as for [`Rule::FenBp`].
        beta: f32,
        /// Most inference sweeps per phase and batch.
        sweeps: usize,
        /// The centered (±β) variant ([`inference::centered_gradient`](crate::nested::inference::centered_gradient)).
        #[serde(default)]
        centered: bool,
    },
    /// Convex CHL (proximal energies, bottom-up, Prop. 4).
    #[serde(rename = "convex-chl")]
    ConvexChl {
        /// β on the batch-mean loss, as for [`Rule::FenBp`].
        beta: f32,
        /// Most inference sweeps per phase and batch.
        sweeps: usize,
        /// The centered (±β) variant ([`inference::centered_gradient`](crate::nested::inference::centered_gradient)).
        #[serde(default)]
        centered: bool,
    },
}

/// The default number of inference sweeps ([`InferenceSettings::default`]).
pub const DEFAULT_SWEEPS: usize = 20;

impl Rule {
    /// The row of Table 1 the rule trains with.
    pub fn method(self) -> Method {
        match self {
            Rule::Bp => Method::Bp,
            Rule::FenBp { .. } => Method::FenchelBp,
            Rule::Mac { .. } => Method::Mac,
            Rule::Pc { .. } => Method::PredictiveCoding,
            Rule::Lpom { .. } => Method::Lpom,
            Rule::Chl { .. } => Method::Chl,
            Rule::ConvexChl { .. } => Method::ConvexChl,
        }
    }

    /// The layer energy (the [`Rule::method`]'s `E_k` column).
    pub fn energy(self) -> EnergyKind {
        self.method().choices().0
    }

    /// β of every layer (back-propagation does not depend on it; 1 is used).
    pub fn beta(self) -> f32 {
        match self {
            Rule::Bp => 1.0,
            Rule::FenBp { beta }
            | Rule::Mac { beta, .. }
            | Rule::Pc { beta, .. }
            | Rule::Lpom { beta, .. }
            | Rule::Chl { beta, .. }
            | Rule::ConvexChl { beta, .. } => beta,
        }
    }

    /// The inference budget of the iterative rules; `None` for the closed-form ones.
    pub fn sweeps(self) -> Option<usize> {
        match self {
            Rule::Bp | Rule::FenBp { .. } => None,
            Rule::Mac { sweeps, .. }
            | Rule::Pc { sweeps, .. }
            | Rule::Lpom { sweeps, .. }
            | Rule::Chl { sweeps, .. }
            | Rule::ConvexChl { sweeps, .. } => Some(sweeps),
        }
    }

    /// Whether the rule is a centered (±β) variant ([`inference::centered_gradient`](crate::nested::inference::centered_gradient)).
    pub fn centered(self) -> bool {
        matches!(
            self,
            Rule::Chl { centered: true, .. } | Rule::ConvexChl { centered: true, .. }
        )
    }

    /// The command-line name ([`Method::cli_name`], with `-centered` for the centered
    /// variants; the logs' `method` column).
    pub fn name(self) -> &'static str {
        match self {
            Rule::Chl { centered: true, .. } => "chl-centered",
            Rule::ConvexChl { centered: true, .. } => "convex-chl-centered",
            rule => rule.method().cli_name(),
        }
    }

    /// "BP", "FenBP β=…", "MAC β=… T=…", for legends.
    pub fn label(self) -> String {
        match self {
            Rule::Bp => "BP".into(),
            Rule::FenBp { beta } => format!("FenBP β={beta}"),
            Rule::Mac { beta, sweeps } => format!("MAC β={beta} T={sweeps}"),
            Rule::Pc { beta, sweeps } => format!("PC β={beta} T={sweeps}"),
            Rule::Lpom { beta, sweeps } => format!("LPOM β={beta} T={sweeps}"),
            Rule::Chl {
                beta,
                sweeps,
                centered,
            } => format!("CHL{} β={beta} T={sweeps}", if centered { "±" } else { "" }),
            Rule::ConvexChl {
                beta,
                sweeps,
                centered,
            } => format!(
                "convex CHL{} β={beta} T={sweeps}",
                if centered { "±" } else { "" }
            ),
        }
    }

    /// The rule named `name` ([`Rule::name`]: `bp`, `fenbp`, `mac`, `pc`, `lpom`, `chl`,
    /// `convex-chl`, `chl-centered`, `convex-chl-centered`) with an optional β (default 1) and
    /// inference budget (default [`DEFAULT_SWEEPS`]).
    ///
    /// # Errors
    /// An unknown name ([`Error::InvalidInput`] for `method`); a β given with `bp` or sweeps
    /// with a closed-form rule; a non-positive or non-finite β; zero sweeps.
    pub fn from_name(name: &str, beta: Option<f32>, sweeps: Option<usize>) -> Result<Self> {
        let (base, centered) = match name.strip_suffix("-centered") {
            Some(base @ ("chl" | "convex-chl")) => (base, true),
            _ => (name, false),
        };
        let method = Method::from_cli_name(base).ok_or_else(|| {
            Error::input(
                "method",
                format!(
                    "unknown method `{name}` (expected bp, fenbp, mac, pc, lpom, chl, convex-chl, \
                     chl-centered or convex-chl-centered)"
                ),
            )
        })?;
        if method == Method::Bp && beta.is_some() {
            return Err(Error::input(
                "beta",
                "back-propagation takes no beta (Fenchel back-propagation, fenbp, does)",
            ));
        }
        let closed_form = matches!(method, Method::Bp | Method::FenchelBp);
        if closed_form && sweeps.is_some() {
            return Err(Error::input(
                "sweeps",
                format!("{name} is closed form (sweeps are for the other methods)"),
            ));
        }
        let (beta, sweeps) = (beta.unwrap_or(1.0), sweeps.unwrap_or(DEFAULT_SWEEPS));
        let rule = match method {
            Method::Bp => Rule::Bp,
            Method::FenchelBp => Rule::FenBp { beta },
            Method::Mac => Rule::Mac { beta, sweeps },
            Method::PredictiveCoding => Rule::Pc { beta, sweeps },
            Method::Lpom => Rule::Lpom { beta, sweeps },
            Method::Chl => Rule::Chl {
                beta,
                sweeps,
                centered,
            },
            Method::ConvexChl => Rule::ConvexChl {
                beta,
                sweeps,
                centered,
            },
        };
        rule.validate()?;
        Ok(rule)
    }

    /// Checks β and the sweeps.
    ///
    /// # Errors
    /// [`Error::InvalidBeta`] for a non-positive or non-finite β; zero sweeps.
    pub fn validate(self) -> Result<()> {
        crate::error::check_beta(f64::from(self.beta()))?;
        if self.sweeps() == Some(0) {
            return Err(Error::input("sweeps", "must be at least 1"));
        }
        Ok(())
    }

    /// The inference settings of the iterative rules.
    pub fn inference_settings(self) -> Option<InferenceSettings> {
        self.sweeps().map(|max_sweeps| InferenceSettings {
            max_sweeps,
            ..InferenceSettings::default()
        })
    }
}
