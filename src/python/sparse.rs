//! `_sparse_qp_solve` and `SparseQpHandle`: one QP layer with sparse `Q`, `G`, `A`
//! ([`crate::layer::solve_sparse`]) for the Python wrapper `bilevel.sparse_qp_solve`
//! (`src/python/bilevel/sparse.py`), which takes SciPy sparse matrices and passes each as its
//! compressed-column arrays `(nrows, ncols, indptr, indices, data)`; the gradients come back in
//! the same form, on the input's pattern.

use nalgebra::DVector;
use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::{detached, to_pyerr, Array};
use crate::error::{Error, Result};
use crate::layer::{self, SparseQpData, SparseQpSolution};
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
fn values(name: &str, a: &Array<'_>) -> Result<Vec<f64>> {
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
fn indices(name: &str, a: &Array<'_>, bound: usize) -> Result<Vec<usize>> {
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

/// One solved sparse layer, kept (with its factorization) for its gradients.
#[pyclass(frozen, module = "bilevel", name = "SparseQpHandle")]
pub struct SparseQpHandle {
    solution: SparseQpSolution,
}

/// `_sparse_qp_solve((Q, p, G, h, A, b), (feasibility_tol, multiplier_tol))`: `z*` and the
/// handle of its gradients (use `bilevel.sparse_qp_solve`, which takes SciPy matrices).
#[pyfunction]
pub(crate) fn _sparse_qp_solve<'py>(
    py: Python<'py>,
    item: Item<'py>,
    tol: (f64, f64),
) -> PyResult<(Bound<'py, PyAny>, SparseQpHandle)> {
    let tol = Tolerances {
        feasibility: tol.0,
        multiplier: tol.1,
    };
    let read = || -> Result<SparseQpData> {
        tol.validate()?;
        let (q, p, g, h, a, b) = &item;
        Ok(SparseQpData {
            q: matrix("Q", q)?,
            p: DVector::from_vec(values("p", p)?),
            g: matrix("G", g)?,
            h: DVector::from_vec(values("h", h)?),
            a: matrix("A", a)?,
            b: DVector::from_vec(values("b", b)?),
        })
    };
    let data = read().map_err(|e| to_pyerr(py, e))?;
    let solution = detached(py, || {
        layer::solve_sparse(std::slice::from_ref(&data), 1, tol)
            .pop()
            .unwrap_or_else(|| Err(Error::input("item", "no item")))
    })?;
    let z = solution.z().as_slice().to_vec().into_pyarray(py).into_any();
    Ok((z, SparseQpHandle { solution }))
}

/// `(indptr, indices, data)` of a matrix's compressed columns.
fn parts<'py>(
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
impl SparseQpHandle {
    /// `gradients(grad_z)`: the exact (one-sided) gradients of `ℓ` for `grad_z = ∂ℓ/∂z*`, a
    /// dict with `Q`, `G`, `A` as `(indptr, indices, data)` on the inputs' patterns, `p`, `h`,
    /// `b` as arrays, `branches` (`"stays"`, `"leaves"` or `None` per row of `G`) and
    /// `method`.
    fn gradients<'py>(&self, py: Python<'py>, grad_z: Array<'py>) -> PyResult<Bound<'py, PyDict>> {
        let g = values("grad_z", &grad_z).map_err(|e| to_pyerr(py, e))?;
        let g = DVector::from_vec(g);
        let grads = detached(py, || self.solution.gradients(&g))?;
        let d = PyDict::new(py);
        d.set_item("Q", parts(py, &grads.q))?;
        d.set_item("p", grads.p.as_slice().to_vec().into_pyarray(py))?;
        d.set_item("G", parts(py, &grads.g))?;
        d.set_item("h", grads.h.as_slice().to_vec().into_pyarray(py))?;
        d.set_item("A", parts(py, &grads.a))?;
        d.set_item("b", grads.b.as_slice().to_vec().into_pyarray(py))?;
        let branches: Vec<Option<&str>> = grads
            .status
            .branches
            .iter()
            .map(|b| b.map(|b| b.label()))
            .collect();
        d.set_item("branches", branches)?;
        d.set_item("method", grads.method.to_string())?;
        Ok(d)
    }

    /// `status()`: a dict with the `solver`, its `iterations` and `residual`, each row of `G`'s
    /// `activity` (`"strong"`, `"weak"`, `"inactive"`).
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.solution.status();
        let d = PyDict::new(py);
        d.set_item("solver", s.solver)?;
        d.set_item("iterations", s.iterations)?;
        d.set_item("residual", s.residual)?;
        let labels: Vec<&str> = s.activity.iter().map(|a| a.label()).collect();
        d.set_item("activity", labels)?;
        Ok(d)
    }
}
