//! Table 1 of the paper as data: the methods ([`Method`]), the choices that define each — layer
//! energy (`E_k` column), direction of unravelling the nesting ([`Unravel`]) and whether the loss
//! is linearized — and the table's printed rows ([`PaperRow`]). The solvers of each row live
//! above, in [`super::method`].

use super::EnergyKind;
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
}
