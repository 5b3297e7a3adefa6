//! What crosses the boundary: the crate's [`Error`] as the package's exception classes, array
//! arguments in (any array-like, as float64, its dimensions checked and named) and NumPy arrays
//! out, and computations run without the GIL.

use nalgebra::{DMatrix, DVector};
use numpy::ndarray::Array2;
use numpy::{AllowTypeChange, IntoPyArray, PyArray1, PyArray2, PyArrayLikeDyn};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::{Error, Result};

/// The Python exception for an [`Error`]: the class of `bilevel.errors` named after the variant,
/// constructed with the same message, the variant's data as attributes.
pub(crate) fn to_pyerr(py: Python<'_>, e: Error) -> PyErr {
    let message = e.to_string();
    let build = || -> PyResult<PyErr> {
        let data = PyDict::new(py);
        error_data(&data, &e)?;
        let class = py.import("bilevel.errors")?.getattr(e.class_name())?;
        let value = class.call((message.as_str(),), Some(&data))?;
        Ok(PyErr::from_value(value))
    };
    // The package's error module is part of the wheel; should it be missing (a broken
    // install), the message still arrives.
    build().unwrap_or_else(|_| PyRuntimeError::new_err(message.clone()))
}

/// The variant's data of `e` into `data` (the exception's attributes).
fn error_data(data: &Bound<'_, PyDict>, e: &Error) -> PyResult<()> {
    match e {
        Error::DimensionMismatch {
            what,
            expected,
            found,
        } => {
            data.set_item("what", what)?;
            data.set_item("expected", expected)?;
            data.set_item("found", found)?;
        }
        Error::InvalidBeta { beta } => {
            data.set_item("beta", beta)?;
        }
        Error::BetaOutOfRange { beta, what, reason } => {
            data.set_item("beta", beta)?;
            data.set_item("what", what)?;
            data.set_item("reason", reason)?;
        }
        Error::NonFinite { what } => {
            data.set_item("what", what)?;
        }
        Error::Overflow { what } => {
            data.set_item("what", what)?;
        }
        Error::Inaccurate { what, residual } => {
            data.set_item("what", what)?;
            data.set_item("residual", residual)?;
        }
        Error::NotPositiveDefinite { what, reason } => {
            data.set_item("what", what)?;
            data.set_item("reason", reason)?;
        }
        Error::NotConverged {
            solver,
            iterations,
            residual,
        } => {
            data.set_item("solver", solver)?;
            data.set_item("iterations", iterations)?;
            data.set_item("residual", residual)?;
        }
        Error::Infeasible(reason) => {
            data.set_item("reason", reason)?;
        }
        Error::Unbounded(reason) => {
            data.set_item("reason", reason)?;
        }
        Error::Singular(reason) => {
            data.set_item("reason", reason)?;
        }
        Error::InvalidInput { field, reason } => {
            data.set_item("field", field)?;
            data.set_item("reason", reason)?;
        }
        Error::BadData { path, reason } => {
            data.set_item("path", path.display().to_string())?;
            data.set_item("reason", reason)?;
        }
        Error::Download {
            file,
            dir,
            attempts,
        } => {
            data.set_item("file", file)?;
            data.set_item("dir", dir.display().to_string())?;
            data.set_item("attempts", attempts.clone())?;
        }
        Error::Io { path, reason, .. } => {
            data.set_item("path", path.display().to_string())?;
            data.set_item("reason", reason)?;
        }
        // `Error` is non-exhaustive: a variant without data of its own.
        #[allow(unreachable_patterns)]
        _ => {}
    }
    Ok(())
}

/// Runs `f` without the GIL and converts its error.
pub(crate) fn detached<T: Send>(
    py: Python<'_>,
    f: impl Send + FnOnce() -> crate::Result<T>,
) -> PyResult<T> {
    py.detach(f).map_err(|e| to_pyerr(py, e))
}

/// Every array argument: any array-like, converted to float64; its number of dimensions is
/// checked here so that the error names the argument ([`vec_arg`], [`mat_arg`]).
pub(crate) type Array<'py> = PyArrayLikeDyn<'py, f64, AllowTypeChange>;

/// A 1-D argument, or a `DimensionMismatchError` naming it.
pub(crate) fn vec_arg(name: &str, x: &Array<'_>) -> Result<DVector<f64>> {
    let a = x.as_array();
    if a.ndim() != 1 {
        return Err(Error::dim(
            name,
            "a vector (1-D array)",
            format!("shape {:?}", a.shape()),
        ));
    }
    Ok(DVector::from_iterator(a.len(), a.iter().copied()))
}

/// A 2-D argument, or a `DimensionMismatchError` naming it.
pub(crate) fn mat_arg(name: &str, x: &Array<'_>) -> Result<DMatrix<f64>> {
    let a = x.as_array();
    if a.ndim() != 2 {
        return Err(Error::dim(
            name,
            "a matrix (2-D array)",
            format!("shape {:?}", a.shape()),
        ));
    }
    let (r, c) = (a.shape()[0], a.shape()[1]);
    Ok(DMatrix::from_fn(r, c, |i, j| a[[i, j]]))
}

/// A `DVector` as a new NumPy vector.
pub(crate) fn py_vector<'py>(py: Python<'py>, v: &DVector<f64>) -> Bound<'py, PyArray1<f64>> {
    v.as_slice().to_vec().into_pyarray(py)
}

/// A slice as a new NumPy vector.
pub(crate) fn py_slice<'py>(py: Python<'py>, v: &[f64]) -> Bound<'py, PyArray1<f64>> {
    v.to_vec().into_pyarray(py)
}

/// A `DMatrix` as a new NumPy matrix (C order).
pub(crate) fn py_matrix<'py>(py: Python<'py>, m: &DMatrix<f64>) -> Bound<'py, PyArray2<f64>> {
    Array2::from_shape_fn((m.nrows(), m.ncols()), |(i, j)| m[(i, j)]).into_pyarray(py)
}

/// Rows of equal length `cols` as a NumPy matrix (`rows` may be empty).
pub(crate) fn py_rows<'py>(
    py: Python<'py>,
    rows: &[DVector<f64>],
    cols: usize,
) -> Bound<'py, PyArray2<f64>> {
    Array2::from_shape_fn((rows.len(), cols), |(i, j)| rows[i][j]).into_pyarray(py)
}
