//! # The guide
//!
//! Chapters as documented modules (nothing here is code): rendered by rustdoc, their Rust
//! examples compiled and run by `cargo test` as doctests. Read them in this order:
//!
//! 1. [`surrogates`]: Section 2 of *Bilevel Programs Meet Deep Learning* (arXiv:2105.07231):
//!    Def. 1-2, the exact limits of Props. 1-2 with one-sided derivatives at weakly active
//!    constraints, Prop. 3's band, and the API that computes them.
//! 2. [`nested`]: Sections 3-4: layered energies and every method of Table 1.
//! 3. [`python`]: the Python package: NumPy, the PyTorch drop-in for qpth, JAX.
//! 4. [`command_line`]: `bilevel verify`, `taxonomy`, `derive` and its JSON contract.
//! 5. [`training`]: the MNIST client (Fig. 1, Appendix C, Table 1 trained).
//! 6. [`results`]: every measured table, with the command that made it.
//! 7. [`errata`]: where the code departs from the printed paper.
//! 8. [`internals`]: the layout of the crate, its examples, notebooks and fuzzing.

pub mod command_line;
pub mod errata;
pub mod internals;
pub mod nested;
pub mod python;
pub mod results;
pub mod surrogates;
pub mod training;
