//! `_sparse_qp_solve` and `SparseQpBatch`: QP layers with sparse `Q`, `G`, `A`
//! ([`crate::layer::solve_sparse`]), a batch of items at once, for the Python wrappers
//! (`bilevel.sparse_qp_solve` and the framework adapters' sparse inputs,
//! `src/python/bilevel/sparse.py`), which pass each matrix as its compressed-column arrays
//! `(nrows, ncols, indptr, indices, data)`; the gradients come back in the same form, on the
//! input's pattern.

use nalgebra::DVector;
use numpy::ndarray::Array2;
use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use super::convert::{branch_labels, detached, threads_arg, to_pyerr, Array};
use super::qp::{all_items, grad_rows, mode_of, status_list};
use crate::error::{Error, Result};
use crate::layer::{self, Mode, SparseQpData, SparseQpGradients, SparseQpSolution};
use crate::linalg::{csc_from_triplets, Csc};
use crate::solve::qp::Tolerances;

/// A matrix as the wrapper passes it: `(nrows, ncols, indptr, indices, data)`.
type Parts<'py> = (usize, usize, Array<'py>, Array<'py>, Array<'py>);

/// The item as the wrapper passes it: `(Q, p, G, h, A, b)`.
type Item<'py> = (
    Parts<'py>,
    Array<'py>,
    Parts<'py>,
    Array<'py>,
    Parts<'py>,
    Array<'py>,
);

/// A 1-D argument as float64 values.
pub(crate) fn values(name: &str, a: &Array<'_>) -> Result<Vec<f64>> {
    let read = a.read(name)?;
    let view = read.as_array();
    if view.ndim() != 1 {
        return Err(Error::dim(
            name,
            "1 dimension",
            format!("shape {:?}", view.shape()),
        ));
    }
    Ok(view.iter().copied().collect())
}

/// A 1-D argument of indices below `bound` (whole numbers, as float64 holds them exactly).
pub(crate) fn indices(name: &str, a: &Array<'_>, bound: usize) -> Result<Vec<usize>> {
    (values(name, a)?.into_iter())
        .map(|v| {
            if v.fract() == 0.0 && v >= 0.0 && v <= bound as f64 {
                Ok(v as usize)
            } else {
                Err(Error::input(
                    name,
                    format!("{v} is not an index in 0..={bound}"),
                ))
            }
        })
        .collect()
}

/// The compressed columns of argument `name`, checked (`indptr` of length `ncols + 1`, from 0,
/// non-decreasing, ending at the number of entries; row indices below `nrows`).
fn matrix(name: &str, (nrows, ncols, indptr, rows, data): &Parts<'_>) -> Result<Csc> {
    let data = values(&format!("{name}.data"), data)?;
    let indptr = indices(&format!("{name}.indptr"), indptr, data.len())?;
    let rows = indices(&format!("{name}.indices"), rows, *nrows)?;
    let well_formed = indptr.len() == ncols + 1
        && indptr.first() == Some(&0)
        && indptr.last() == Some(&data.len())
        && rows.len() == data.len()
        && indptr.windows(2).all(|w| w[0] <= w[1])
        && rows.iter().all(|&r| r < *nrows);
    if !well_formed {
        return Err(Error::input(
            name,
            format!("not a valid {nrows} x {ncols} compressed-column matrix"),
        ));
    }
    let mut triplets = Vec::with_capacity(data.len());
    for j in 0..*ncols {
        for p in indptr[j]..indptr[j + 1] {
            triplets.push((rows[p], j, data[p]));
        }
    }
    csc_from_triplets(*nrows, *ncols, &triplets).map_err(|e| match e {
        Error::NonFinite { .. } => Error::NonFinite { what: name.into() },
        other => other,
    })
}

/// Item `i`'s data, read and checked (its errors name the argument).
fn item_data((q, p, g, h, a, b): &Item<'_>) -> Result<SparseQpData> {
    Ok(SparseQpData {
        q: matrix("Q", q)?,
        p: DVector::from_vec(values("p", p)?),
        g: matrix("G", g)?,
        h: DVector::from_vec(values("h", h)?),
        a: matrix("A", a)?,
        b: DVector::from_vec(values("b", b)?),
    })
}

/// The solved items of one `_sparse_qp_solve` call, kept (with their factorizations) for their
/// gradients.
#[pyclass(frozen, module = "bilevel", name = "SparseQpBatch")]
pub struct SparseQpBatch {
    solutions: Vec<SparseQpSolution>,
    threads: usize,
}

/// `_sparse_qp_solve(items, (feasibility_tol, multiplier_tol), threads=None)`: `z*` of every
/// item `(Q, p, G, h, A, b)` (all with the same number of variables `n`) as an array
/// `(items, n)`, and the `SparseQpBatch` of their gradients; the items are solved on `threads`
/// threads (default: the machine's cores), the answers independent of the count. An item's
/// error carries its `index` (use `bilevel.sparse_qp_solve`, which takes SciPy matrices, or the
/// framework adapters, which take their sparse tensors).
#[pyfunction]
#[pyo3(signature = (items, tol, threads = None))]
pub(crate) fn _sparse_qp_solve<'py>(
    py: Python<'py>,
    items: Vec<Item<'py>>,
    tol: (f64, f64),
    threads: Option<i64>,
) -> PyResult<(Bound<'py, PyAny>, SparseQpBatch)> {
    let tol = Tolerances {
        feasibility: tol.0,
        multiplier: tol.1,
    };
    let threads = (|| {
        tol.validate()?;
        threads_arg(threads)
    })()
    .map_err(|e| to_pyerr(py, e))?;
    let data = all_items(py, items.iter().map(item_data).collect())?;
    let n = data.first().map_or(0, |d| d.q.ncols());
    let columns = data.iter().map(|d| match d.q.ncols() {
        c if c == n => Ok(()),
        c => Err(Error::dim("Q (columns)", format!("{n}, as item 0's"), c)),
    });
    all_items(py, columns.collect())?;
    let results = py.detach(|| layer::solve_sparse(&data, threads, tol));
    let solutions = all_items(py, results)?;
    let z = Array2::from_shape_fn((solutions.len(), n), |(i, j)| solutions[i].z()[j]);
    Ok((
        z.into_pyarray(py).into_any(),
        SparseQpBatch { solutions, threads },
    ))
}

/// `(indptr, indices, data)` of a matrix's compressed columns.
pub(crate) fn parts<'py>(
    py: Python<'py>,
    a: &Csc,
) -> (Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>) {
    let sym = a.symbolic();
    let indptr: Vec<i64> = (0..=a.ncols())
        .map(|j| {
            if j == 0 {
                0
            } else {
                sym.col_range(j - 1).end as i64
            }
        })
        .collect();
    let mut rows = Vec::with_capacity(a.val().len());
    let mut vals = Vec::with_capacity(a.val().len());
    for j in 0..a.ncols() {
        for p in sym.col_range(j) {
            rows.push(sym.row_idx()[p] as i64);
            vals.push(a.val()[p]);
        }
    }
    (
        indptr.into_pyarray(py).into_any(),
        rows.into_pyarray(py).into_any(),
        vals.into_pyarray(py).into_any(),
    )
}

#[pymethods]
impl SparseQpBatch {
    /// `gradients(grad_z, condition=False, mode=None)`: for `grad_z = ∂ℓ/∂z*` (shape
    /// `(items, n)`), per item the gradients of `ℓ` in `mode` (`None` or `"limit"`: the exact,
    /// one-sided ones; `("contrastive", β)` or `("centered", β)`: Def. 1's surrogates, from the
    /// sparse offset problem): a dict with `Q`, `G`, `A` as `(indptr, indices, data)` on the
    /// inputs' patterns, `p`, `h`, `b` as arrays, `branches` (`"stays"`, `"leaves"` or `None`
    /// per row of `G`; all `None` at finite β), `method` and `condition` (the 2-norm condition
    /// estimate of the KKT matrix that determined `ż`, rows equilibrated; `nan` unless
    /// `condition` is true, since it costs up to a few times the gradients; the limit only).
    #[pyo3(signature = (grad_z, condition = false, mode = None))]
    fn gradients<'py>(
        &self,
        py: Python<'py>,
        grad_z: Array<'py>,
        condition: bool,
        mode: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let count = self.solutions.len();
        let n = self.solutions.first().map_or(0, |s| s.z().len());
        let grads = grad_rows(&grad_z, (count, n)).map_err(|e| to_pyerr(py, e))?;
        let mode = match &mode {
            Some(m) => mode_of(m).map_err(|e| to_pyerr(py, e))?,
            None => Mode::Limit,
        };
        let results = detached(py, || {
            layer::gradients_sparse(&self.solutions, &grads, self.threads, mode, condition)
        })?;
        let items = all_items(py, results)?;
        let dicts = items
            .iter()
            .map(|g| gradient_dict(py, g))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, dicts)
    }

    /// `status()`: per item, a dict with the `solver`, its `iterations` and `residual`, each row
    /// of `G`'s `activity` (`"strong"`, `"weak"`, `"inactive"`).
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        status_list(py, self.solutions.iter().map(|s| s.status()))
    }

    fn __len__(&self) -> usize {
        self.solutions.len()
    }
}

/// One item's gradients as a dict (matrices as their compressed columns).
fn gradient_dict<'py>(py: Python<'py>, grads: &SparseQpGradients) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("Q", parts(py, &grads.q))?;
    d.set_item("p", grads.p.as_slice().to_vec().into_pyarray(py))?;
    d.set_item("G", parts(py, &grads.g))?;
    d.set_item("h", grads.h.as_slice().to_vec().into_pyarray(py))?;
    d.set_item("A", parts(py, &grads.a))?;
    d.set_item("b", grads.b.as_slice().to_vec().into_pyarray(py))?;
    d.set_item("branches", branch_labels(&grads.status.branches))?;
    d.set_item("method", grads.method.to_string())?;
    d.set_item("condition", grads.condition)?;
    Ok(d)
}
