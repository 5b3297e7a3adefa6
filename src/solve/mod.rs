//! Inner solvers: closed forms live with their problems ([`crate::problem`]); here are the QP
//! backends with exact refinement ([`qp`]) and the `argmin`-based smooth minimizer ([`smooth`]).

pub mod dense;
pub mod qp;
pub mod smooth;
