//! # bilevel
//!
//! Bilevel and deeply nested optimization programs, after C. Zach, *Bilevel Programs Meet Deep
//! Learning: A Unifying View on Inference Learning Methods*, arXiv:2105.07231 (2021),
//! <https://arxiv.org/abs/2105.07231>; equation numbers in these docs are the paper's. The crate
//! computes
//! * contrastive surrogates `L^β(θ)` of `L(θ) = ℓ(z*)`, `z* = argmin_z E(z; θ)` (Def. 1, Def. 2),
//! * their exact `β → 0⁺` limits through constrained argmin layers, with one-sided derivatives
//!   at weakly active constraints (Props. 1-2, Cor. 1), and
//! * deeply nested programs (Sections 3-4, [`nested`]): every method of the paper's Table 1 —
//!   CHL, convex CHL, LPOM, MAC, predictive coding, back-propagation, Fenchel back-propagation —
//!   from one set of layer energies,
//! * an MNIST training client reproducing the paper's Fig. 1 ([`app::nn`], [`app::data`], [`app::plot`]), and
//! * numerical checks of the paper's claims ([`app::verify`]).
//!
//! ```
//! use bilevel::nalgebra::{self, dvector};
//! use bilevel::prelude::*;
//!
//! // Example 1: ReLU layer z* = [W x]₊, linear loss gᵀz, one unit exactly at its kink.
//! let x = dvector![1.0, 2.0];
//! let layer = ProxProblem::dense_layer(Activation::Relu, 2, &x)?;
//! let theta = dvector![0.5, 0.25, 0.0, 0.0]; // W = [[0.5, 0.25], [0, 0]]: (Wx)_2 = 0
//! let program = Bilevel::new(layer, Loss::Linear { g: dvector![1.0, -3.0] })?;
//! let limit = program.limit(&theta)?;
//! // Unit 2 sits at the kink with g_2 < 0: the one-sided derivative is [−g_2]₊ = 3.
//! assert_eq!(limit.direction.z_dot, dvector![-1.0, 3.0]);
//! assert_eq!(limit.z_star.activity[1], Activity::Weak);
//! # Ok::<(), bilevel::Error>(())
//! ```

#![warn(missing_docs)]

// The mathematical core, built with `default-features = false`.
pub mod error;
pub mod guide;
pub mod layer;
pub mod linalg;
pub mod names;
pub mod nested;
pub mod problem;
pub mod prox;
pub mod solve;
pub mod surrogate;

// The application (feature `app`, on by default): the MNIST client, the JSON contract of
// `bilevel derive`, and the verify report.
#[cfg(feature = "app")]
pub mod app;

// The Python extension module (feature `python`): bindings only, nothing public in Rust.
#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};
/// The sparse linear-algebra crate of the sparse QP path (version 0.24):
/// [`linalg::Csc`] is its `sparse::SparseColMat<usize, f64>`. Use `bilevel::faer` (or depend on
/// `faer = "0.24"`) to build sparse matrices of the same type.
pub use faer;
/// The linear-algebra crate the API speaks (version 0.34): `DVector`, `DMatrix` in every
/// signature are this crate's types. Use `bilevel::nalgebra` (or depend on `nalgebra = "0.34"`)
/// so that your vectors are the same type; 0.35's are distinct and do not convert.
pub use nalgebra;

/// The types most programs need.
pub mod prelude {
    pub use crate::error::{Error, Result};
    pub use crate::problem::{
        Direction, InnerProblem, InnerSolution, LinearConstraints, LogCoshProblem, Loss,
        ProxProblem, QuadraticProblem,
    };
    pub use crate::prox::{Activation, Branch};
    pub use crate::solve::qp::{Activity, Clarabel, QpBackend, Tolerances};
    pub use crate::surrogate::{Band, Bilevel, Centered, LimitDerivative, Surrogate};
}

/// The README's code compiles and runs as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
