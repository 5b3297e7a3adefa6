//! The training rule: a row of Table 1 (or predictive coding) with its hyper-parameters.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::names::Named;
use crate::nested::method::Method;
use crate::nested::{EnergyKind, NestedSettings};

/// The training rule: a [`Method`] (a row of Table 1, or predictive coding) and its
/// hyper-parameters — β, the inference budget, and for CHL and convex CHL the centered
/// variant.
///
/// Back-propagation and Fenchel back-propagation are Prop. 7's closed-form pass
/// ([`linearized::gradient`](crate::nested::linearized::gradient)); MAC, predictive coding and
/// LPOM run at most `sweeps` inference sweeps of the same pass to the minimizer of their local
/// contrastive objective (Prop. 5), CHL and convex CHL at most `sweeps` per phase of their
/// global one (Prop. 4) ([`inference::gradient`](crate::nested::inference::gradient)).
///
/// β acts as in the paper's Fig. 1 and Appendix C code, on the gradient of the batch-mean
/// loss: `β/B` per sample in the batch convention of [`crate::nested`] (the trainer passes that
/// on). [`Rule::validate`] checks that the hyper-parameters fit the method (and runs wherever a
/// rule is read: the command line, configurations, checkpoints, logs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    method: Method,
    /// β of every layer (1 for back-propagation, which does not depend on it).
    #[serde(default = "one")]
    beta: f32,
    /// Most inference sweeps per batch (per phase for CHL and convex CHL); `None` for the
    /// closed-form rules.
    #[serde(default)]
    sweeps: Option<usize>,
    /// The centered (±β) variant of CHL or convex CHL
    /// ([`NestedSettings::centered`](crate::nested::NestedSettings::centered)).
    #[serde(default)]
    centered: bool,
}

fn one() -> f32 {
    1.0
}

/// The default number of inference sweeps (`NestedSettings::inference_max_sweeps`).
pub const DEFAULT_SWEEPS: usize = 20;

impl Rule {
    /// Back-propagation (penalizer energies).
    pub const fn bp() -> Self {
        Self {
            method: Method::Bp,
            beta: 1.0,
            sweeps: None,
            centered: false,
        }
    }

    /// Fenchel back-propagation with `β_k = β` for every layer (Fenchel energies).
    pub const fn fenbp(beta: f32) -> Self {
        Self {
            method: Method::FenchelBp,
            ..Self::bp()
        }
        .with_beta(beta)
    }

    /// An iterative rule (MAC, predictive coding, LPOM, CHL, convex CHL) with β and at most
    /// `sweeps` inference sweeps per batch (checked by [`Rule::validate`]).
    pub const fn iterative(method: Method, beta: f32, sweeps: usize) -> Self {
        Self {
            method,
            beta,
            sweeps: Some(sweeps),
            centered: false,
        }
    }

    /// The same rule with β.
    pub const fn with_beta(self, beta: f32) -> Self {
        Self { beta, ..self }
    }

    /// The centered (±β) variant of CHL or convex CHL (checked by [`Rule::validate`]).
    pub const fn centered(self) -> Self {
        Self {
            centered: true,
            ..self
        }
    }

    /// The row of Table 1 the rule trains with.
    pub fn method(self) -> Method {
        self.method
    }

    /// The layer energy (the [`Rule::method`]'s `E_k` column).
    pub fn energy(self) -> EnergyKind {
        self.method.choices().0
    }

    /// β of every layer (back-propagation does not depend on it; 1 there).
    pub fn beta(self) -> f32 {
        self.beta
    }

    /// The inference budget of the iterative rules; `None` for the closed-form ones.
    pub fn sweeps(self) -> Option<usize> {
        self.sweeps
    }

    /// Whether the rule is a centered (±β) variant.
    pub fn is_centered(self) -> bool {
        self.centered
    }

    /// The name: the method's ([`Named`]), with `-centered` for the centered variants (the
    /// command line's `--method`, the logs' `method` column).
    pub fn name(self) -> String {
        let base = self.method.as_str();
        if self.centered {
            format!("{base}-centered")
        } else {
            base.to_string()
        }
    }

    /// "BP", "FenBP β=…", "MAC β=… T=…", for legends.
    pub fn label(self) -> String {
        let short = match self.method {
            Method::Bp => return "BP".into(),
            Method::FenchelBp => "FenBP",
            Method::Mac => "MAC",
            Method::PredictiveCoding => "PC",
            Method::Lpom => "LPOM",
            Method::Chl => "CHL",
            Method::ConvexChl => "convex CHL",
        };
        let centered = if self.centered { "±" } else { "" };
        match self.sweeps {
            Some(t) => format!("{short}{centered} β={} T={t}", self.beta),
            None => format!("{short}{centered} β={}", self.beta),
        }
    }

    /// The rule named `name` ([`Rule::name`]: a [`Method`] name, or `chl-centered`,
    /// `convex-chl-centered`) with an optional β (default 1) and inference budget (default
    /// [`DEFAULT_SWEEPS`]), as the command line gives them.
    ///
    /// # Errors
    /// An unknown name ([`Error::InvalidInput`] for `method`); a β given with `bp` or sweeps
    /// with a closed-form rule; a non-positive or non-finite β; zero sweeps.
    pub fn from_name(name: &str, beta: Option<f32>, sweeps: Option<usize>) -> Result<Self> {
        let rule = Self::with_defaults(name, beta.unwrap_or(1.0), sweeps)?;
        if rule.method == Method::Bp && beta.is_some() {
            return Err(Error::input(
                "beta",
                "back-propagation takes no beta (Fenchel back-propagation, fenbp, does)",
            ));
        }
        if rule.sweeps.is_none() && sweeps.is_some() {
            return Err(Error::input(
                "sweeps",
                format!("{name} is closed form (sweeps are for the other methods)"),
            ));
        }
        Ok(rule)
    }

    /// The rule named `name` with β and the sweeps applied where its method takes them (β is
    /// ignored by `bp`, the sweeps by the closed-form rules; default [`DEFAULT_SWEEPS`]): one
    /// protocol for a list of rules (`reproduce table1`, `bench train`).
    ///
    /// # Errors
    /// An unknown name; an invalid β or budget ([`Rule::validate`]).
    pub fn with_defaults(name: &str, beta: f32, sweeps: Option<usize>) -> Result<Self> {
        let (base, centered) = match name.strip_suffix("-centered") {
            Some(base) => (base, true),
            None => (name, false),
        };
        let method = Method::from_name(base).map_err(|_| {
            Error::input(
                "method",
                format!(
                    "unknown method `{name}` (expected {}, chl-centered or convex-chl-centered)",
                    <Method as Named>::listing().replace(" or ", ", ")
                ),
            )
        })?;
        let rule = match method {
            Method::Bp => Self::bp(),
            Method::FenchelBp => Self::fenbp(beta),
            _ => Self::iterative(method, beta, sweeps.unwrap_or(DEFAULT_SWEEPS)),
        };
        let rule = if centered { rule.centered() } else { rule };
        rule.validate()?;
        Ok(rule)
    }

    /// Checks that the hyper-parameters fit the method: β finite and positive (1 for
    /// back-propagation), sweeps (at least 1) exactly for the iterative methods, centered only
    /// for CHL and convex CHL.
    ///
    /// # Errors
    /// [`Error::InvalidBeta`]; [`Error::InvalidInput`] naming `sweeps` or `centered`.
    pub fn validate(self) -> Result<()> {
        crate::error::check_beta(f64::from(self.beta))?;
        let closed_form = matches!(self.method, Method::Bp | Method::FenchelBp);
        match self.sweeps {
            Some(0) => return Err(Error::input("sweeps", "must be at least 1")),
            Some(_) if closed_form => {
                return Err(Error::input(
                    "sweeps",
                    format!("{} is closed form", self.method),
                ))
            }
            None if !closed_form => {
                return Err(Error::input(
                    "sweeps",
                    format!("{} needs an inference budget", self.method),
                ))
            }
            _ => {}
        }
        if self.method == Method::Bp && self.beta != 1.0 {
            return Err(Error::input("beta", "back-propagation takes no beta"));
        }
        if self.centered && !matches!(self.method, Method::Chl | Method::ConvexChl) {
            return Err(Error::input(
                "centered",
                format!(
                    "the centered variant is defined for chl and convex-chl, not {}",
                    self.method
                ),
            ));
        }
        Ok(())
    }

    /// The settings of the rule's solve: the iterative rules' budget (`inference_max_sweeps`)
    /// and the centered variant, the defaults otherwise.
    pub fn settings(self) -> NestedSettings {
        let defaults = NestedSettings::default();
        NestedSettings {
            inference_max_sweeps: self.sweeps.unwrap_or(defaults.inference_max_sweeps),
            centered: self.centered,
            ..defaults
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_into_the_same_rule_and_misfits_are_refused() {
        for name in [
            "bp",
            "fenbp",
            "mac",
            "pc",
            "lpom",
            "chl",
            "convex-chl",
            "chl-centered",
            "convex-chl-centered",
        ] {
            let rule = Rule::with_defaults(name, 0.5, Some(7)).unwrap();
            assert_eq!(rule.name(), name);
            assert_eq!(
                Rule::with_defaults(&rule.name(), rule.beta, rule.sweeps),
                Ok(rule)
            );
            let json = serde_json::to_string(&rule).unwrap();
            assert_eq!(serde_json::from_str::<Rule>(&json).unwrap(), rule, "{json}");
        }
        assert!(Rule::with_defaults("mac-centered", 1.0, None).is_err());
        assert!(Rule::with_defaults("sgd", 1.0, None).is_err());
        assert!(Rule::iterative(Method::Bp, 1.0, 3).validate().is_err());
        assert!(Rule::iterative(Method::Mac, 1.0, 0).validate().is_err());
        assert!(Rule::fenbp(0.0).validate().is_err());
        // The checkpoints' form of a rule: a closed-form rule has no sweeps.
        let bp: Rule = serde_json::from_str(r#"{"method":"bp"}"#).unwrap();
        assert_eq!(bp, Rule::bp());
        assert!(serde_json::from_str::<Rule>(r#"{"method":"sgd"}"#).is_err());
    }
}
