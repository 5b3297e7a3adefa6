//! Convex quadratic programs behind one small trait, with an exact active-set refinement.
//!
//! A [`Qp`] is
//! <div class="math">
//!
//! $$ \min_x \tfrac12 x^\top P x + q^\top x \quad \text{s.t.} \quad A x \ge b, \; A_{eq} x = b_{eq}, $$
//!
//! </div>
//!
//! with multipliers defined by the Lagrangian `½xᵀPx + qᵀx − λᵀ(Ax − b) − λ_eqᵀ(A_eq x − b_eq)`,
//! so stationarity reads `P x + q − Aᵀλ − A_eqᵀλ_eq = 0` and `λ ≥ 0`.
//!
//! A [`QpBackend`] (Clarabel, always built; OSQP behind the `osqp` feature) returns an
//! approximate primal-dual point. [`solve_exact`] then identifies the active set from it,
//! solves the equality-constrained KKT system on that set exactly (LU plus iterative
//! refinement), repairs the set if a sign condition fails (a few primal-dual active-set steps),
//! and classifies every inequality as strongly active, weakly active or inactive. This is
//! what makes derivatives exact whichever backend ran: interior-point and ADMM solvers both
//! leave `O(√tol)` ambiguity on weakly active constraints (slack and multiplier both tiny),
//! which the exact solve removes.
//!
//! Every answer is the same for a problem and its rescaled copy: rows are equilibrated by
//! powers of two (exact in floating point) before slacks, Gram matrices or KKT systems are
//! formed, and the activity tests compare each row's slack and multiplier with the size of its
//! own terms (`ActivityTest`, see [`Tolerances`]). "Infeasible" comes only with a verified
//! Farkas certificate; dependent equality rows are set aside; nearly dependent active rows are
//! reported rather than resolved by rounding.
//!
//! The folder in layers, each file importing only those below it: `problem` (the [`Qp`], the
//! backends' interface, the classification and the result types); the backends `dense` (the
//! dual active-set method of Goldfarb and Idnani on a kept factorization: the default of
//! [`crate::problem::QuadraticProblem`] and the one implementation of the method), `clarabel`
//! and `osqp`; `equalities` (dependent equality rows set aside, or proved inconsistent); then
//! `exact` (the refinement, and the fallback through the dense method), `offset` (the rate
//! problem of Def. 1's surrogates), `enumeration` (a brute-force reference) and `sparse` (the
//! [`SparseQp`]: Clarabel on sparse data, the same refinement on a sparse `LDLᵀ` of the KKT
//! system). This file only names what the folder offers.

mod clarabel;
mod dense;
mod enumeration;
mod equalities;
mod exact;
mod offset;
#[cfg(feature = "osqp")]
mod osqp;
mod problem;
mod sparse;

pub use clarabel::{Clarabel, ClarabelSettings};
pub use dense::{DenseActiveSet, DenseFactor, DenseSolution, Row, DENSE};
pub use enumeration::solve_by_enumeration;
pub(crate) use exact::dense_exact;
pub use exact::{dual_active_set, refine, solve_exact, solve_exact_dense, Origin};
pub(crate) use offset::solve_factored_offset;
pub use offset::{solve_offset, solve_sparse_offset, OffsetQp, OffsetSolution, SparseOffsetQp};
#[cfg(feature = "osqp")]
pub use osqp::{Osqp, OsqpSettings};
pub(crate) use problem::{complementarity, ActivityTest};
pub use problem::{Activity, ExactQp, Qp, QpBackend, QpRaw, Tolerances};
pub(crate) use sparse::solve_sparse_from;
pub use sparse::{solve_sparse_exact, SparseExact, SparseQp};
