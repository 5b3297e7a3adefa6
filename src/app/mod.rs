//! The application, on the mathematical core: the MNIST client (`data`, `fetch`, `nn`,
//! `plot`), the JSON contract of `bilevel derive` (`derive`) and the numerical checks of
//! `bilevel verify` (`verify`). Feature `app` (on by default; `fetch` adds the downloader). The
//! core never imports from here.

pub mod data;
pub mod derive;
pub mod derive_sparse;
#[cfg(feature = "fetch")]
pub mod fetch;
pub mod nn;
pub mod plot;
pub mod verify;
