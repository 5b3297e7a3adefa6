//! `qp_solve` and `QpBatch`: batched QP layers in the frameworks' convention
//! (`min ½zᵀQz + pᵀz`, `Gz ≤ h`, `Az = b`; [`crate::layer`]), the one path under the PyTorch
//! and JAX adapters. Every input is batched (a leading batch axis) or shared; an empty array
//! means no rows (`G, h` or `A, b` absent).

use nalgebra::{DMatrix, DVector};
use numpy::ndarray::{Array2, Array3, ArrayViewD, Axis};
use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use super::convert::{branch_labels, detached, matrix_of, room, threads_arg, to_pyerr, Array};
use crate::error::{Error, Result};
use crate::layer::{self, ItemStatus, Mode, QpData, QpGradients, QpSolution};
use crate::solve::qp::Tolerances;

/// One input: shared (its base number of dimensions), batched (one more, the batch first), or
/// absent (an empty array of at most the base dimensions); with its name for errors.
struct Input<'a> {
    name: &'static str,
    view: ArrayViewD<'a, f64>,
    matrix: bool,
}

impl Input<'_> {
    fn base(&self) -> usize {
        if self.matrix {
            2
        } else {
            1
        }
    }

    /// Absent: `G, h, A, b` given as an empty array without a batch axis.
    fn absent(&self) -> bool {
        self.view.is_empty() && self.view.ndim() <= self.base()
    }

    /// The batch size if batched, `None` if shared or absent.
    fn batch(&self) -> Result<Option<usize>> {
        let base = self.base();
        match self.view.ndim() {
            _ if self.absent() => Ok(None),
            d if d == base => Ok(None),
            d if d == base + 1 => Ok(Some(self.view.shape()[0])),
            _ => Err(Error::dim(
                self.name,
                format!("{base} or {} dimensions (shared or batched)", base + 1),
                format!("shape {:?}", self.view.shape()),
            )),
        }
    }

    /// Item `i`'s view (the whole view if shared).
    fn item(&self, i: usize) -> ArrayViewD<'_, f64> {
        if self.view.ndim() == self.base() + 1 {
            self.view.index_axis(Axis(0), i)
        } else {
            self.view.view()
        }
    }

    /// Item `i`'s matrix (no rows of `cols` columns for an absent input or an empty item).
    fn matrix_of(&self, i: usize, cols: usize) -> Result<DMatrix<f64>> {
        if self.absent() {
            return Ok(DMatrix::zeros(0, cols));
        }
        let v = self.item(i);
        if v.is_empty() && v.shape()[0] == 0 {
            return Ok(DMatrix::zeros(0, cols));
        }
        matrix_of(self.name, &v)
    }

    /// Item `i`'s vector (empty for an absent input).
    fn vector_of(&self, i: usize) -> Result<DVector<f64>> {
        if self.absent() {
            return Ok(DVector::zeros(0));
        }
        let v = self.item(i);
        let mut out = room(self.name, v.len())?;
        out.extend(v.iter().copied());
        Ok(DVector::from_vec(out))
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

/// The shape `(n, m, k)` (variables, inequality and equality rows) and every item's data.
fn items(inputs: &[Input<'_>; 6]) -> Result<(Shape, Vec<QpData>)> {
    let batch = batch_of(inputs)?;
    let [q, p, g, h, a, b] = inputs;
    let n = match q.view.ndim() {
        2 | 3 => q.view.shape()[q.view.ndim() - 1],
        _ => {
            return Err(Error::dim(
                "Q",
                "a square matrix, shared (n, n) or batched (batch, n, n)",
                format!("shape {:?}", q.view.shape()),
            ))
        }
    };
    let rows = |x: &Input<'_>| match x.absent() {
        true => 0,
        false => x.view.shape()[x.view.ndim() - 2],
    };
    let shape = Shape {
        n,
        m: rows(g),
        k: rows(a),
    };
    let mut data = room("Q", batch)?;
    for i in 0..batch {
        data.push(QpData {
            q: q.matrix_of(i, n)?,
            p: p.vector_of(i)?,
            g: g.matrix_of(i, n)?,
            h: h.vector_of(i)?,
            a: a.matrix_of(i, n)?,
            b: b.vector_of(i)?,
        });
    }
    Ok((shape, data))
}

/// A batch's sizes: variables, inequality rows, equality rows (also of a batch without items).
#[derive(Clone, Copy)]
struct Shape {
    n: usize,
    m: usize,
    k: usize,
}

/// The derivative a `mode` names: `"limit"`, `("contrastive", β)` or `("centered", β)`.
pub(crate) fn mode_of(mode: &Bound<'_, PyAny>) -> Result<Mode> {
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
pub(crate) fn all_items<T>(py: Python<'_>, results: Vec<Result<T>>) -> PyResult<Vec<T>> {
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
    shape: Shape,
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
    threads: Option<i64>,
    feasibility_tol: f64,
    multiplier_tol: f64,
) -> PyResult<(Bound<'py, PyAny>, QpBatch)> {
    let tol = Tolerances {
        feasibility: feasibility_tol,
        multiplier: multiplier_tol,
    };
    let read = || -> Result<_> {
        tol.validate()?;
        let threads = threads_arg(threads)?;
        let arrays = [
            Q.read("Q")?,
            p.read("p")?,
            G.read("G")?,
            h.read("h")?,
            A.read("A")?,
            b.read("b")?,
        ];
        let names = ["Q", "p", "G", "h", "A", "b"];
        let inputs = std::array::from_fn(|k| Input {
            name: names[k],
            view: arrays[k].as_array(),
            matrix: k % 2 == 0,
        });
        let (shape, data) = items(&inputs)?;
        Ok((threads, shape, data))
    };
    let (threads, shape, data) = read().map_err(|e| to_pyerr(py, e))?;
    let n = shape.n;
    let results = py.detach(|| layer::solve(&data, threads, tol));
    let solutions = all_items(py, results)?;
    let z = Array2::from_shape_fn((solutions.len(), n), |(i, j)| solutions[i].z()[j]);
    Ok((
        z.into_pyarray(py).into_any(),
        QpBatch {
            solutions,
            shape,
            threads,
        },
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
        let (count, n) = (self.solutions.len(), self.shape.n);
        let grads = grad_rows(&grad_z, (count, n)).map_err(|e| to_pyerr(py, e))?;
        let results = detached(py, || {
            layer::gradients(&self.solutions, &grads, mode, self.threads)
        })?;
        let items = all_items(py, results)?;
        gradient_dict(py, &items, self.shape)
    }

    /// `status()`: per item, a dict with the `solver`, its `iterations` and `residual`, each
    /// inequality row's `activity` (`"strong"`, `"weak"`, `"inactive"`).
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        status_list(py, self.solutions.iter().map(|s| s.status()))
    }

    fn __len__(&self) -> usize {
        self.solutions.len()
    }
}

/// The upstream gradients `grad_z`, one row `(count, n)` per item.
pub(crate) fn grad_rows(
    grad_z: &Array<'_>,
    (count, n): (usize, usize),
) -> Result<Vec<DVector<f64>>> {
    let g = grad_z.read("grad_z")?;
    let g = g.as_array();
    if g.shape() != [count, n] {
        return Err(Error::dim(
            "grad_z",
            format!("({count}, {n})"),
            format!("{:?}", g.shape()),
        ));
    }
    Ok(g.outer_iter()
        .map(|r| DVector::from_iterator(n, r.iter().copied()))
        .collect())
}

/// Per item, a dict with the `solver`, its `iterations` and `residual`, each inequality row's
/// `activity` (`"strong"`, `"weak"`, `"inactive"`): `status()` of both batch classes.
pub(crate) fn status_list<'py>(
    py: Python<'py>,
    statuses: impl Iterator<Item = ItemStatus>,
) -> PyResult<Bound<'py, PyList>> {
    let rows = statuses
        .map(|s| {
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

/// The items' gradients stacked along a leading batch axis, by input name; `branches` per item
/// (`"leaves"`, `"stays"` or `None` for each inequality row).
fn gradient_dict<'py>(
    py: Python<'py>,
    items: &[QpGradients],
    Shape { n, m, k }: Shape,
) -> PyResult<Bound<'py, PyDict>> {
    let stack_m = |f: &dyn Fn(&QpGradients) -> &DMatrix<f64>, r: usize| {
        Array3::from_shape_fn((items.len(), r, n), |(i, a, b)| f(&items[i])[(a, b)])
    };
    let stack_v = |f: &dyn Fn(&QpGradients) -> &DVector<f64>, r: usize| {
        Array2::from_shape_fn((items.len(), r), |(i, a)| f(&items[i])[a])
    };
    let d = PyDict::new(py);
    d.set_item("Q", stack_m(&|g| &g.q, n).into_pyarray(py))?;
    d.set_item("p", stack_v(&|g| &g.p, n).into_pyarray(py))?;
    d.set_item("G", stack_m(&|g| &g.g, m).into_pyarray(py))?;
    d.set_item("h", stack_v(&|g| &g.h, m).into_pyarray(py))?;
    d.set_item("A", stack_m(&|g| &g.a, k).into_pyarray(py))?;
    d.set_item("b", stack_v(&|g| &g.b, k).into_pyarray(py))?;
    let branches: Vec<Vec<Option<&str>>> = items
        .iter()
        .map(|g| branch_labels(&g.status.branches))
        .collect();
    d.set_item("branches", branches)?;
    Ok(d)
}
