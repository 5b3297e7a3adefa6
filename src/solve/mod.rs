//! Inner solvers: closed forms live with their problems ([`crate::problem`]); here are the QP
//! solvers with exact refinement ([`qp`]: the dense dual active-set method, Clarabel, OSQP) and
//! the `argmin`-based smooth minimizer ([`smooth`]).

pub mod qp;
pub mod smooth;
