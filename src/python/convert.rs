//! What crosses the boundary: the crate's [`Error`] as the package's exception classes, array
//! arguments in (any array-like, as float64, its dimensions checked and named) and NumPy arrays
//! out, and computations run without the GIL.

use nalgebra::{DMatrix, DVector};
use numpy::ndarray::{Array2, ArrayViewD};
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods,
    PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::{Error, Result};
use crate::prox::Branch;

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

/// Every array argument, as the caller passed it (any array-like). It is read as float64 where
/// its name is known ([`Array::read`], [`vec_arg`], [`mat_arg`]), so that every refusal names the
/// argument: complex values (NumPy would drop their imaginary parts with a warning), text or
/// other non-numbers, a ragged list, a size that cannot be allocated.
pub(crate) struct Array<'py>(Bound<'py, PyAny>);

impl<'a, 'py> FromPyObject<'a, 'py> for Array<'py> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Array(obj.to_owned()))
    }
}

impl<'py> Array<'py> {
    /// The interpreter the argument came from (a method that takes an array needs no separate
    /// `Python` token).
    pub(crate) fn py(&self) -> Python<'py> {
        self.0.py()
    }

    /// The argument `name` as a float64 array: a float64 ndarray is borrowed as it is; booleans,
    /// integers, other floats and object arrays of numbers are converted; anything else is an
    /// `InvalidInputError` naming `name`.
    pub(crate) fn read(&self, name: &str) -> Result<PyReadonlyArrayDyn<'py, f64>> {
        let refuse = |reason: String| Error::input(name, reason);
        if let Ok(a) = self.0.cast::<PyArrayDyn<f64>>() {
            return a
                .try_readonly()
                .map_err(|e| refuse(format!("cannot be read ({e})")));
        }
        let numpy = self
            .0
            .py()
            .import("numpy")
            .map_err(|e| refuse(e.to_string()))?;
        let read = |obj: &Bound<'py, PyAny>, dtype: Option<&str>| {
            numpy
                .call_method1("asarray", (obj, dtype))
                .map_err(|e| refuse(format!("not an array of real numbers ({e})")))
        };
        let array = read(&self.0, None)?;
        let untyped = array
            .cast::<PyUntypedArray>()
            .map_err(|e| refuse(format!("not an array ({e})")))?;
        let dtype = untyped.dtype();
        match dtype.kind() {
            b'b' | b'i' | b'u' | b'f' | b'O' => {}
            b'c' => {
                return Err(refuse(format!(
                    "complex values (dtype {dtype}): the data are real; pass the real part \
                     explicitly if that is what is meant"
                )))
            }
            _ => return Err(refuse(format!("dtype {dtype} is not a real number type"))),
        }
        let floats = read(&array, Some("float64"))?;
        let floats = floats
            .cast::<PyArrayDyn<f64>>()
            .map_err(|e| refuse(format!("not read as float64 ({e})")))?;
        floats
            .try_readonly()
            .map_err(|e| refuse(format!("cannot be read ({e})")))
    }
}

/// Room for `count` values of the argument `name`, or an `InvalidInputError` when it cannot be
/// allocated (a NumPy broadcast view of a huge shape costs no memory; its copy would).
pub(crate) fn room<T>(name: &str, count: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(count).map_err(|_| {
        let bytes = count.saturating_mul(std::mem::size_of::<T>().max(1));
        Error::input(
            name,
            format!("{count} values ({bytes} bytes) cannot be allocated"),
        )
    })?;
    Ok(v)
}

/// The argument `threads`: at least 1; `None` is the machine's cores.
pub(crate) fn threads_arg(threads: Option<i64>) -> Result<usize> {
    match threads {
        // Read once (on Linux the cgroup files, tens of microseconds a call).
        None => Ok(crate::linalg::Threads::available()),
        Some(t) if t >= 1 => Ok(usize::try_from(t).unwrap_or(usize::MAX)),
        Some(t) => Err(Error::input(
            "threads",
            format!("must be at least 1, got {t}"),
        )),
    }
}

/// A 1-D argument, or an error naming it.
pub(crate) fn vec_arg(name: &str, x: &Array<'_>) -> Result<DVector<f64>> {
    let x = x.read(name)?;
    let a = x.as_array();
    if a.ndim() != 1 {
        return Err(Error::dim(
            name,
            "a vector (1-D array)",
            format!("shape {:?}", a.shape()),
        ));
    }
    let mut v = room(name, a.len())?;
    v.extend(a.iter().copied());
    Ok(DVector::from_vec(v))
}

/// A 2-D argument, or an error naming it.
pub(crate) fn mat_arg(name: &str, x: &Array<'_>) -> Result<DMatrix<f64>> {
    let x = x.read(name)?;
    matrix_of(name, &x.as_array())
}

/// A 2-D view as a matrix (`name` for errors).
pub(crate) fn matrix_of(name: &str, a: &ArrayViewD<'_, f64>) -> Result<DMatrix<f64>> {
    if a.ndim() != 2 {
        return Err(Error::dim(
            name,
            "a matrix (2-D array)",
            format!("shape {:?}", a.shape()),
        ));
    }
    let (r, c) = (a.shape()[0], a.shape()[1]);
    let mut v = room(name, a.len())?;
    // Column-major, as nalgebra stores it: a C-ordered array is its transpose in memory.
    match a.as_slice() {
        Some(rows) => {
            v.resize(rows.len(), 0.0);
            transpose_into((c, r), rows, &mut v);
        }
        None => v.extend(a.t().iter().copied()),
    }
    Ok(DMatrix::from_vec(r, c, v))
}

/// `dst` ← the transpose (column-major, `cols × rows`) of the column-major `rows × cols`
/// matrix `src`, in tiles ([`crate::linalg::tiled`]). The plain loop reads or writes one cache
/// line per number: at 2000 × 2000 it took 44 % of `QuadraticLayer(Q, …)`.
fn transpose_into((rows, cols): (usize, usize), src: &[f64], dst: &mut [f64]) {
    let _ = crate::linalg::tiled((rows, cols), |i, j| {
        dst[i * cols + j] = src[j * rows + i];
        Ok(())
    });
}

/// Each row's branch as Python sees it: `"stays"`, `"leaves"`, or `None` (not weakly active).
pub(crate) fn branch_labels(branches: &[Option<Branch>]) -> Vec<Option<&'static str>> {
    branches.iter().map(|b| b.map(|b| b.label())).collect()
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
    let (r, c) = m.shape();
    let mut rows = vec![0.0; r * c];
    transpose_into((r, c), m.as_slice(), &mut rows);
    Array2::from_shape_vec((r, c), rows)
        .expect("r · c numbers make an r × c array")
        .into_pyarray(py)
}

/// Rows of equal length `cols` as a NumPy matrix (`rows` may be empty).
pub(crate) fn py_rows<'py>(
    py: Python<'py>,
    rows: &[DVector<f64>],
    cols: usize,
) -> Bound<'py, PyArray2<f64>> {
    Array2::from_shape_fn((rows.len(), cols), |(i, j)| rows[i][j]).into_pyarray(py)
}
