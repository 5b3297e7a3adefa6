//! `qp_solve` and `QpBatch`: batched QP layers in the frameworks' convention
//! (`min ½zᵀQz + pᵀz`, `Gz ≤ h`, `Az = b`; [`crate::layer`]), the one path under the PyTorch
//! and JAX adapters. Every input is batched (a leading batch axis) or shared; an empty array
//! means no rows (`G, h` or `A, b` absent).

use nalgebra::{DMatrix, DVector};
use numpy::ndarray::{Array2, Array3, ArrayViewD, Axis};
use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use super::convert::{detached, to_pyerr, Array};
use crate::error::{Error, Result};
use crate::layer::{self, Mode, QpData, QpGradients, QpSolution};
use crate::solve::qp::Tolerances;

/// One input: shared (its base number of dimensions), batched (one more, the batch first), or
/// absent (empty); with its name for errors.
struct Input<'a> {
    name: &'static str,
    view: ArrayViewD<'a, f64>,
    matrix: bool,
}

impl Input<'_> {
    /// The batch size if batched, `None` if shared or absent.
    fn batch(&self) -> Result<Option<usize>> {
        let base = if self.matrix { 2 } else { 1 };
        match self.view.ndim() {
            _ if self.view.is_empty() => Ok(None),
            d if d == base => Ok(None),
            d if d == base + 1 => Ok(Some(self.view.shape()[0])),
            _ => Err(Error::dim(
                self.name,
                format!("{base} or {} dimensions (shared or batched)", base + 1),
                format!("shape {:?}", self.view.shape()),
            )),
        }
    }

    /// Item `i`'s matrix (`rows × cols` for an absent input).
    fn matrix_of(&self, i: usize, cols: usize) -> DMatrix<f64> {
        if self.view.is_empty() {
            return DMatrix::zeros(0, cols);
        }
        let v = if self.view.ndim() == 3 {
            self.view.index_axis(Axis(0), i)
        } else {
            self.view.view()
        };
        let (r, c) = (v.shape()[0], v.shape()[1]);
        DMatrix::from_fn(r, c, |a, b| v[[a, b]])
    }

    /// Item `i`'s vector (empty for an absent input).
    fn vector_of(&self, i: usize) -> DVector<f64> {
        if self.view.is_empty() {
            return DVector::zeros(0);
        }
        let v = if self.view.ndim() == 2 {
            self.view.index_axis(Axis(0), i)
        } else {
            self.view.view()
        };
        DVector::from_iterator(v.len(), v.iter().copied())
    }
}

/// The batch size all batched inputs agree on (1 if none is batched).
fn batch_of(inputs: &[Input<'_>]) -> Result<usize> {
    let mut batch: Option<(usize, &str)> = None;
    for input in inputs {
        if let Some(b) = input.batch()? {
            match batch {
                Some((other, name)) if other != b => {
                    return Err(Error::dim(
                        format!("{} (batch size)", input.name),
                        format!("{other}, as {name}'s"),
                        b,
                    ))
                }
                _ => batch = Some((b, input.name)),
            }
        }
    }
    Ok(batch.map_or(1, |(b, _)| b))
}

/// Every item's data.
fn items(inputs: &[Input<'_>; 6]) -> Result<Vec<QpData>> {
    let batch = batch_of(inputs)?;
    let [q, p, g, h, a, b] = inputs;
    let n = match q.view.ndim() {
        2 | 3 => q.view.shape()[q.view.ndim() - 1],
        _ => {
            return Err(Error::dim(
                "Q",
                "a square matrix",
                format!("{:?}", q.view.shape()),
            ))
        }
    };
    Ok((0..batch)
        .map(|i| QpData {
            q: q.matrix_of(i, n),
            p: p.vector_of(i),
            g: g.matrix_of(i, n),
            h: h.vector_of(i),
            a: a.matrix_of(i, n),
            b: b.vector_of(i),
        })
        .collect())
}

/// The derivative a `mode` names: `"limit"`, `("contrastive", β)` or `("centered", β)`.
fn mode_of(mode: &Bound<'_, PyAny>) -> Result<Mode> {
    let unknown = || {
        Error::input(
            "mode",
            "expected \"limit\", (\"contrastive\", beta) or (\"centered\", beta)",
        )
    };
    if let Ok(name) = mode.extract::<String>() {
        return if name == "limit" {
            Ok(Mode::Limit)
        } else {
            Err(unknown())
        };
    }
    let t = mode.cast::<PyTuple>().map_err(|_| unknown())?;
    let kind: String = t
        .get_item(0)
        .and_then(|k| k.extract())
        .map_err(|_| unknown())?;
    let beta: f64 = t
        .get_item(1)
        .and_then(|b| b.extract())
        .map_err(|_| unknown())?;
    match kind.as_str() {
        "contrastive" => Ok(Mode::Contrastive(beta)),
        "centered" => Ok(Mode::Centered(beta)),
        _ => Err(unknown()),
    }
}

/// Each item's result, or the first failing item's error with its `index`.
fn all_items<T>(py: Python<'_>, results: Vec<Result<T>>) -> PyResult<Vec<T>> {
    let mut out = Vec::with_capacity(results.len());
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(v) => out.push(v),
            Err(e) => {
                let err = to_pyerr(py, e);
                let _ = err.value(py).setattr("index", i);
                return Err(err);
            }
        }
    }
    Ok(out)
}

/// The solutions of one `qp_solve` call, kept for their gradients.
#[pyclass(frozen, module = "bilevel", name = "QpBatch")]
pub struct QpBatch {
    solutions: Vec<QpSolution>,
    threads: usize,
}

/// `qp_solve(Q, p, G, h, A, b, *, threads=None, feasibility_tol=1e-9, multiplier_tol=1e-9)`:
/// `z*` of every item of `min ½zᵀQz + pᵀz` s.t. `Gz ≤ h`, `Az = b` (each input shared or with a
/// leading batch axis; an empty array: no rows), as an array `(batch, n)`, and the `QpBatch`
/// that gives the gradients of every input. Items are solved on `threads` threads (default:
/// the machine's cores); the answers do not depend on the count.
///
/// Example:
///
/// ```text
/// >>> import numpy as np, bilevel
/// >>> # projection of −p onto z ≥ 0 (G = −I, h = 0); the second unit sits on its bound
/// >>> none = np.zeros(0)
/// >>> z, batch = bilevel.qp_solve(np.eye(2), [[-1.0, 0.0]], -np.eye(2), np.zeros(2), none, none)
/// >>> z.tolist(), len(batch)
/// ([[1.0, 0.0]], 1)
/// >>> batch.status()[0]["activity"]
/// ['inactive', 'weak']
/// >>> grads = batch.gradients([[0.0, -1.0]])   # ℓ = −z₂ lifts unit 2 off its bound
/// >>> (grads["p"] + 0.0).tolist(), grads["branches"]
/// ([[0.0, 1.0]], [[None, 'leaves']])
///
/// ```
#[pyfunction]
#[pyo3(signature = (Q, p, G, h, A, b, *, threads = None, feasibility_tol = 1e-9, multiplier_tol = 1e-9))]
#[allow(non_snake_case, clippy::too_many_arguments)]
pub(crate) fn qp_solve<'py>(
    py: Python<'py>,
    Q: Array<'py>,
    p: Array<'py>,
    G: Array<'py>,
    h: Array<'py>,
    A: Array<'py>,
    b: Array<'py>,
    threads: Option<usize>,
    feasibility_tol: f64,
    multiplier_tol: f64,
) -> PyResult<(Bound<'py, PyAny>, QpBatch)> {
    let tol = Tolerances {
        feasibility: feasibility_tol,
        multiplier: multiplier_tol,
    };
    tol.validate().map_err(|e| to_pyerr(py, e))?;
    let threads = threads
        .unwrap_or_else(crate::linalg::Threads::available)
        .max(1);
    let inputs = [
        Input {
            name: "Q",
            view: Q.as_array(),
            matrix: true,
        },
        Input {
            name: "p",
            view: p.as_array(),
            matrix: false,
        },
        Input {
            name: "G",
            view: G.as_array(),
            matrix: true,
        },
        Input {
            name: "h",
            view: h.as_array(),
            matrix: false,
        },
        Input {
            name: "A",
            view: A.as_array(),
            matrix: true,
        },
        Input {
            name: "b",
            view: b.as_array(),
            matrix: false,
        },
    ];
    let data = items(&inputs).map_err(|e| to_pyerr(py, e))?;
    let results = py.detach(|| layer::solve(&data, threads, tol));
    let solutions = all_items(py, results)?;
    let n = solutions.first().map_or(0, |s| s.z().len());
    let z = Array2::from_shape_fn((solutions.len(), n), |(i, j)| solutions[i].z()[j]);
    Ok((
        z.into_pyarray(py).into_any(),
        QpBatch { solutions, threads },
    ))
}

#[pymethods]
impl QpBatch {
    /// `gradients(grad_z, mode="limit")`: for the upstream gradient `grad_z = ∂ℓ/∂z*` (shape
    /// `(batch, n)`), a dict of the gradients of `ℓ` with respect to `Q, p, G, h, A, b`, each
    /// with a leading batch axis (a framework sums them over the batch for a shared input).
    /// `mode="limit"`: the exact derivative, one-sided at weakly active rows (Prop. 2);
    /// `("contrastive", beta)`: Def. 1's surrogate at `beta > 0`; `("centered", beta)`: the mean
    /// of the surrogates at `±beta`.
    #[pyo3(signature = (grad_z, mode = None))]
    fn gradients<'py>(
        &self,
        py: Python<'py>,
        grad_z: Array<'py>,
        mode: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let mode = match &mode {
            Some(m) => mode_of(m).map_err(|e| to_pyerr(py, e))?,
            None => Mode::Limit,
        };
        let g = grad_z.as_array();
        let (count, n) = (
            self.solutions.len(),
            self.solutions.first().map_or(0, |s| s.z().len()),
        );
        if g.shape() != [count, n] {
            let e = Error::dim(
                "grad_z",
                format!("({count}, {n})"),
                format!("{:?}", g.shape()),
            );
            return Err(to_pyerr(py, e));
        }
        let grads: Vec<DVector<f64>> = g
            .outer_iter()
            .map(|r| DVector::from_iterator(n, r.iter().copied()))
            .collect();
        let results = detached(py, || {
            layer::gradients(&self.solutions, &grads, mode, self.threads)
        })?;
        let items = all_items(py, results)?;
        gradient_dict(py, &items)
    }

    /// `status()`: per item, a dict with the `solver`, its `iterations` and `residual`, each
    /// inequality row's `activity` (`"strong"`, `"weak"`, `"inactive"`).
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let rows = self
            .solutions
            .iter()
            .map(|s| {
                let s = s.status();
                let d = PyDict::new(py);
                d.set_item("solver", s.solver)?;
                d.set_item("iterations", s.iterations)?;
                d.set_item("residual", s.residual)?;
                let labels: Vec<&str> = s.activity.iter().map(|a| a.label()).collect();
                d.set_item("activity", labels)?;
                Ok(d)
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, rows)
    }

    fn __len__(&self) -> usize {
        self.solutions.len()
    }
}

/// The items' gradients stacked along a leading batch axis, by input name; `branches` per item
/// (`"leaves"`, `"stays"` or `None` for each inequality row).
fn gradient_dict<'py>(py: Python<'py>, items: &[QpGradients]) -> PyResult<Bound<'py, PyDict>> {
    let stack_m = |f: &dyn Fn(&QpGradients) -> &DMatrix<f64>| {
        let (r, c) = items.first().map_or((0, 0), |g| f(g).shape());
        Array3::from_shape_fn((items.len(), r, c), |(i, a, b)| f(&items[i])[(a, b)])
    };
    let stack_v = |f: &dyn Fn(&QpGradients) -> &DVector<f64>| {
        let r = items.first().map_or(0, |g| f(g).len());
        Array2::from_shape_fn((items.len(), r), |(i, a)| f(&items[i])[a])
    };
    let d = PyDict::new(py);
    d.set_item("Q", stack_m(&|g| &g.q).into_pyarray(py))?;
    d.set_item("p", stack_v(&|g| &g.p).into_pyarray(py))?;
    d.set_item("G", stack_m(&|g| &g.g).into_pyarray(py))?;
    d.set_item("h", stack_v(&|g| &g.h).into_pyarray(py))?;
    d.set_item("A", stack_m(&|g| &g.a).into_pyarray(py))?;
    d.set_item("b", stack_v(&|g| &g.b).into_pyarray(py))?;
    let branches: Vec<Vec<Option<&str>>> = items
        .iter()
        .map(|g| {
            g.status
                .branches
                .iter()
                .map(|b| b.map(|b| b.label()))
                .collect()
        })
        .collect();
    d.set_item("branches", branches)?;
    Ok(d)
}
