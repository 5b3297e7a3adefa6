//! The Python extension module `bilevel._bilevel` (feature `python`; PyO3 with the stable ABI,
//! NumPy arrays in and out).
//!
//! The Python package `bilevel` (the `.py` files beside this one, `src/python/bilevel/`)
//! re-exports what is defined here and adds the JAX adapters. Every function here converts its
//! arguments (any array-like is accepted and converted to float64; a wrong number of dimensions
//! is a `TypeError` naming the argument, a wrong size a `DimensionMismatchError` naming it),
//! releases the GIL for the computation, and turns the crate's [`Error`] into the Python
//! exception class of the same name (`bilevel.errors`) with the same message and its data as
//! attributes. No panic crosses the boundary: PyO3 turns one into `PanicException`, and the
//! library does not panic on user data.

mod convert;
mod layer;
mod layer_data;
mod nested;
mod qp;
mod sparse;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// The module `bilevel._bilevel`.
#[pymodule]
#[pyo3(name = "_bilevel")]
fn bilevel_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<layer::QuadraticLayer>()?;
    m.add_class::<nested::Activation>()?;
    m.add_class::<nested::Network>()?;
    m.add_class::<qp::QpBatch>()?;
    m.add_function(wrap_pyfunction!(qp::qp_solve, m)?)?;
    m.add_class::<sparse::SparseQpBatch>()?;
    m.add_function(wrap_pyfunction!(sparse::_sparse_qp_solve, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(verify_ids, m)?)?;
    m.add_function(wrap_pyfunction!(error_classes, m)?)?;
    Ok(())
}

/// `verify(seed=0, ids=None)`: the checks of `bilevel verify` (every proposition against an
/// independent computation) as a list of dicts with `id`, `claim`, `description`, `quantity`,
/// `measured`, `tolerance`, `passed`, in the paper's order; `ids` selects rows (see
/// `verify_ids()`).
#[pyfunction]
#[pyo3(signature = (seed = 0, ids = None))]
fn verify<'py>(
    py: Python<'py>,
    seed: u64,
    ids: Option<Vec<String>>,
) -> PyResult<Bound<'py, PyList>> {
    let ids = ids.unwrap_or_default();
    let report = py.detach(|| {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        crate::app::verify::run_only(seed, &ids)
    });
    let rows = report
        .checks
        .iter()
        .map(|c| {
            let d = PyDict::new(py);
            d.set_item("id", &c.id)?;
            d.set_item("claim", &c.claim)?;
            d.set_item("description", &c.description)?;
            d.set_item("quantity", c.quantity)?;
            d.set_item("measured", c.measured)?;
            d.set_item("tolerance", c.tolerance)?;
            d.set_item("passed", c.passed)?;
            Ok(d)
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, rows)
}

/// `error_classes()`: the exception class of every variant of the crate's `Error`, in order
/// (`bilevel.errors` defines one class for each; its tests hold it to this list).
#[pyfunction]
fn error_classes() -> Vec<&'static str> {
    crate::Error::CLASS_NAMES.to_vec()
}

/// `verify_ids()`: the row identifiers `verify` knows, in the paper's order.
#[pyfunction]
fn verify_ids() -> Vec<&'static str> {
    crate::app::verify::ids()
}
