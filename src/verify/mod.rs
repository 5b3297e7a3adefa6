//! Numerical checks of the paper's claims (`bilevel verify`).

pub mod instances;
