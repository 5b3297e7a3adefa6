//! `bilevel.QuadraticLayer`: the constrained quadratic layer of `bilevel derive`, held across
//! calls (its factorization is computed once and serves every `θ`, loss and batch item).

use nalgebra::DVector;
use numpy::ndarray::Axis;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use super::convert::{
    branch_labels, detached, py_matrix, py_rows, py_slice, py_vector, room, threads_arg, to_pyerr,
    vec_arg, Array,
};
use super::layer_data::{
    scipy_csc, sparse_derive, sparse_derive_dict, sparse_solution, sparse_surrogate_dict,
    surrogate_list, Layer, LayerArgs, MatArg,
};
use crate::app::derive::{DeriveOutput, Request};
use crate::error::{Error, Result};
use crate::problem::{InnerProblem, InnerSolution, Loss, QuadraticProblem};
use crate::solve::qp::Tolerances;
use crate::surrogate::Bilevel;

/// `QuadraticLayer(Q, c, B=None, A=None, b=None, A_eq=None, b_eq=None, *, backend=None,
/// feasibility_tol=1e-9, multiplier_tol=1e-9)`: the layer `z*(θ) = argmin_z ½zᵀQz − zᵀ(Bθ + c)`
/// subject to `Az ≥ b`, `A_eq z = b_eq` (`Q` symmetric positive definite), with the exact
/// one-sided derivatives of Prop. 2 of "Bilevel Programs Meet Deep Learning" (arXiv
/// 2105.07231). The tolerances classify the rows (relative): a slack at or below
/// `feasibility_tol` is active, an active row whose multiplier is at or below
/// `multiplier_tol` is weakly active (a tie, where the derivative is one-sided).
///
/// Every method takes `theta` of shape `(p,)`, or `(batch, p)` for a batch on the same layer
/// (looped in Rust on `threads` threads, default: the machine's cores; the answers do not depend
/// on the thread count). The first call on a large dense layer also factors it on those
/// threads. A batch raises the error of its first failing item, with the item's position in
/// the exception's `index` attribute.
///
/// `backend` is `"dense"` (the dual active-set solver), `"clarabel"`, `"osqp"` (with that
/// feature) or `"sparse"`; `None` (the default) is `"sparse"` when `Q`, `B`, `A` or `A_eq` is a
/// SciPy sparse matrix and `"dense"` otherwise. The sparse layer forms nothing `n × n` and gives
/// `solve`, `vjp`, `jvp` and `derive` (exact, one-sided at weakly active rows; `derive`'s data
/// gradients on the data's own patterns, as `scipy.sparse.csc_array`s: a matrix's pattern is
/// its stored entries, or its non-zero entries when it was given as a dense array), and the
/// finite-β `surrogate` and `derive`'s `betas` (from its offset problem; Prop. 3's band with
/// `bound_nu` a certified lower bound of `λ_min(Q)` within 1/64 of it).
///
/// Example:
///
/// ```text
/// >>> import numpy as np, bilevel
/// >>> # ReLU as a QP, z* = max(θ, 0), with a tie in the second unit
/// >>> relu = bilevel.QuadraticLayer(np.eye(2), np.zeros(2), B=np.eye(2), A=np.eye(2), b=np.zeros(2))
/// >>> relu.solve([1.0, 0.0])["z"].tolist()
/// [1.0, 0.0]
/// >>> relu.vjp([1.0, 0.0], [2.0, -3.0]).tolist()   # descending lifts θ₂: the unit leaves 0
/// [2.0, -3.0]
/// >>> (relu.vjp([1.0, 0.0], [-2.0, 3.0]) + 0.0).tolist()   # the other way it stays
/// [-2.0, 0.0]
/// >>> relu.jvp([1.0, 0.0], [1.0, -1.0]).tolist()   # one-sided: θ₂ down keeps z₂ at 0
/// [1.0, 0.0]
///
/// ```
#[pyclass(frozen, module = "bilevel", name = "QuadraticLayer")]
pub struct QuadraticLayer {
    layer: Layer,
}

/// The rows of a 2-D array (`name` for errors).
fn rows(name: &str, a: &numpy::ndarray::ArrayViewD<'_, f64>) -> Result<Vec<DVector<f64>>> {
    let mut rows = room(name, a.shape()[0])?;
    for r in a.outer_iter() {
        let mut v = room(name, r.len())?;
        v.extend(r.iter().copied());
        rows.push(DVector::from_vec(v));
    }
    Ok(rows)
}

/// `theta` as items: `(p,)` is one item (batch `None`), `(batch, p)` a batch of rows.
fn theta_items(theta: &Array<'_>) -> Result<(Vec<DVector<f64>>, Option<usize>)> {
    let x = theta.read("theta")?;
    let a = x.as_array();
    match a.ndim() {
        1 => Ok((rows("theta", &a.insert_axis(Axis(0)))?, None)),
        2 => Ok((rows("theta", &a)?, Some(a.shape()[0]))),
        _ => Err(Error::dim(
            "theta",
            "shape (p,) or (batch, p)",
            format!("shape {:?}", a.shape()),
        )),
    }
}

/// A per-item array (`g` of `vjp`, `v` of `jvp`) matching `theta`'s batch.
fn items(name: &str, x: &Array<'_>, batch: Option<usize>) -> Result<Vec<DVector<f64>>> {
    let x = x.read(name)?;
    let a = x.as_array();
    match (a.ndim(), batch) {
        (1, None) => rows(name, &a.insert_axis(Axis(0))),
        (2, Some(k)) if a.shape()[0] == k => rows(name, &a),
        (_, None) => Err(Error::dim(
            name,
            "a vector (one theta)",
            format!("shape {:?}", a.shape()),
        )),
        (_, Some(k)) => Err(Error::dim(
            name,
            format!("shape ({k}, ·) (a batch of {k} thetas)"),
            format!("shape {:?}", a.shape()),
        )),
    }
}

/// Runs `f` on every item, on up to `threads` threads (results in order); the first failing
/// item's error with its index.
fn par_items<T: Send>(
    count: usize,
    threads: usize,
    f: impl Fn(usize) -> Result<T> + Sync,
) -> std::result::Result<Vec<T>, (usize, Error)> {
    crate::surrogate::map_items(count, threads, |i| f(i).map_err(|e| (i, e)))
        .into_iter()
        .collect()
}

/// The exception of a batch item: its error, with `index` set.
fn item_error(py: Python<'_>, (index, e): (usize, Error)) -> PyErr {
    let err = to_pyerr(py, e);
    // Setting an attribute on an exception instance cannot fail for the classes of
    // `bilevel.errors`; for the fallback class it may, and the error is still raised.
    let _ = err.value(py).setattr("index", index);
    err
}

/// The exception of a call: for a batch the failing item's error with `index`, for one `θ` its
/// error.
fn call_error(py: Python<'_>, batch: Option<usize>, e: (usize, Error)) -> PyErr {
    match batch {
        Some(_) => item_error(py, e),
        None => to_pyerr(py, e.1),
    }
}

/// One result, or a list of them for a batch.
fn one_or_list<'py>(
    py: Python<'py>,
    batch: Option<usize>,
    mut items: Vec<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    match (batch, items.pop()) {
        (None, Some(one)) => Ok(one),
        (_, last) => {
            items.extend(last);
            Ok(PyList::new(py, items)?.into_any())
        }
    }
}

/// The loss argument: an array-like `g` (`ℓ(z) = gᵀz`), a pair `("linear" | "squared" |
/// "gradient", vector)`, or a dict as in `bilevel derive` (`{"kind": "squared", "target": t}`).
/// Returns the loss and whether it was given by its gradient only.
fn loss_of(obj: &Bound<'_, PyAny>) -> PyResult<(Loss, bool)> {
    let (kind, data): (String, Bound<'_, PyAny>) = if let Ok(d) = obj.cast::<PyDict>() {
        let kind: String = d
            .get_item("kind")?
            .ok_or_else(|| PyTypeError::new_err("loss: a dict needs \"kind\""))?
            .extract()?;
        let key = if kind == "squared" { "target" } else { "g" };
        let data = d
            .get_item(key)?
            .ok_or_else(|| PyTypeError::new_err(format!("loss: kind {kind:?} needs {key:?}")))?;
        (kind, data)
    } else if let Ok(t) = obj.cast::<PyTuple>() {
        if t.len() != 2 || !t.get_item(0)?.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(
                "loss: a tuple must be (kind, vector) with kind \"linear\", \"squared\" or \"gradient\"",
            ));
        }
        (t.get_item(0)?.extract()?, t.get_item(1)?)
    } else {
        ("linear".to_string(), obj.clone())
    };
    let v: Array<'_> = data
        .extract()
        .map_err(|e| PyTypeError::new_err(format!("loss: expected a vector ({e})")))?;
    let v = vec_arg("loss", &v).map_err(|e| to_pyerr(obj.py(), e))?;
    match kind.as_str() {
        "linear" => Ok((Loss::Linear { g: v }, false)),
        "gradient" => Ok((Loss::Linear { g: v }, true)),
        "squared" => Ok((Loss::Squared { target: v }, false)),
        other => Err(to_pyerr(
            obj.py(),
            Error::input(
                "loss.kind",
                format!("unknown kind `{other}` (expected linear, squared or gradient)"),
            ),
        )),
    }
}

impl QuadraticLayer {
    /// Makes the dense layer's factorization before a call's items, cut over up to `threads`
    /// threads where that pays ([`crate::problem::InnerProblem::prepare`]); the sparse layer
    /// has nothing to prepare.
    fn prepare(&self, threads: usize) {
        if let Layer::Dense(l) = &self.layer {
            l.prepare(threads);
        }
    }

    /// The program of this layer and a loss (borrowing the layer and its factorization).
    /// (`method` names the caller for the error of a sparse layer, which has none.)
    fn program(&self, loss: Loss, method: &str) -> Result<Bilevel<&QuadraticProblem>> {
        let layer = self.layer.dense(method)?;
        Ok(Bilevel::new(layer, loss)?.with_tolerances(*layer.tolerances()))
    }

    /// `vjp`'s computation for one item: `dL/dθ` of `⟨g, z*(θ)⟩`.
    fn vjp_one(&self, theta: &DVector<f64>, g: &DVector<f64>) -> Result<DVector<f64>> {
        match &self.layer {
            Layer::Sparse(l) => l.vjp(&l.solve_one(theta)?, g),
            Layer::Dense(_) => {
                let program = self.program(Loss::Linear { g: g.clone() }, "vjp")?;
                Ok(program.limit(theta)?.grad_theta)
            }
        }
    }

    /// `jvp`'s computation for one item: the one-sided derivative of `z*` along `v`.
    fn jvp_one(&self, theta: &DVector<f64>, v: &DVector<f64>) -> Result<DVector<f64>> {
        match &self.layer {
            Layer::Sparse(l) => l.jvp(&l.solve_one(theta)?, v),
            Layer::Dense(l) => Ok(l.jvp(theta, v)?.z_dot),
        }
    }

    /// `f(θ_i, x_i)` for every item of `theta` and of the per-item argument `x` (called `name`),
    /// without the GIL: a vector of length `cols` for one `θ`, a `(batch, cols)` array for a
    /// batch (`vjp`, `jvp`).
    fn per_item<'py>(
        &self,
        py: Python<'py>,
        theta: &Array<'py>,
        (name, x): (&str, &Array<'py>),
        (threads, cols): (Option<i64>, usize),
        f: impl Fn(&DVector<f64>, &DVector<f64>) -> Result<DVector<f64>> + Sync,
    ) -> PyResult<Bound<'py, PyAny>> {
        let threads = threads_arg(threads).map_err(|e| to_pyerr(py, e))?;
        let (ts, batch) = theta_items(theta).map_err(|e| to_pyerr(py, e))?;
        let xs = items(name, x, batch).map_err(|e| to_pyerr(py, e))?;
        let out = py
            .detach(|| {
                self.prepare(threads);
                par_items(ts.len(), threads, |i| f(&ts[i], &xs[i]))
            })
            .map_err(|e| call_error(py, batch, e))?;
        Ok(match batch {
            None => py_vector(py, &out[0]).into_any(),
            Some(_) => py_rows(py, &out, cols).into_any(),
        })
    }

    fn solution<'py>(&self, py: Python<'py>, s: &InnerSolution) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("z", py_vector(py, &s.z))?;
        d.set_item("multipliers", py_vector(py, &s.multipliers))?;
        d.set_item("multipliers_eq", py_vector(py, &s.multipliers_eq))?;
        let labels: Vec<&str> = s.activity.iter().map(|a| a.label()).collect();
        d.set_item("constraints", labels)?;
        d.set_item("dependent_constraints", s.status.dependent.clone())?;
        d.set_item("dependent_equalities", s.status.dependent_eq.clone())?;
        d.set_item("solver", s.status.solver)?;
        d.set_item("iterations", s.status.iterations)?;
        d.set_item("residual", s.status.residual)?;
        Ok(d)
    }

    fn derive_dict<'py>(
        &self,
        py: Python<'py>,
        out: &DeriveOutput,
    ) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("z_star", py_slice(py, &out.z_star))?;
        d.set_item("multipliers", py_slice(py, &out.multipliers))?;
        d.set_item("multipliers_eq", py_slice(py, &out.multipliers_eq))?;
        d.set_item("constraints", out.constraints.clone())?;
        d.set_item("branches", branch_labels(&out.branches))?;
        d.set_item("dependent_constraints", out.dependent_constraints.clone())?;
        d.set_item("dependent_equalities", out.dependent_equalities.clone())?;
        d.set_item("condition", out.condition)?;
        d.set_item("loss", out.loss)?;
        d.set_item("z_dot", py_slice(py, &out.z_dot))?;
        if let Some(jvp) = &out.jvp {
            d.set_item("jvp", py_slice(py, jvp))?;
        }
        d.set_item("grad_theta", py_slice(py, &out.grad_theta))?;
        d.set_item("method", &out.method)?;
        d.set_item("residual", out.residual)?;
        d.set_item("solver", out.solver)?;
        d.set_item("iterations", out.iterations)?;
        d.set_item("surrogates", surrogate_list(py, &out.surrogates)?)?;
        if let Some(note) = out.loss_note {
            d.set_item("loss_note", note)?;
        }
        for (key, value) in &out.data_gradients {
            let cols = match key.as_str() {
                "grad_Q" | "grad_A" | "grad_A_eq" => Some(self.n()),
                "grad_B" => Some(self.p()),
                _ => None,
            };
            let numbers = |v: &serde_json::Value| -> Vec<f64> {
                v.as_array()
                    .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
                    .unwrap_or_default()
            };
            let rows = value.as_array().map(Vec::as_slice).unwrap_or_default();
            match cols {
                Some(cols) => {
                    let rows: Vec<DVector<f64>> =
                        rows.iter().map(|r| DVector::from_vec(numbers(r))).collect();
                    d.set_item(key, py_rows(py, &rows, cols))?;
                }
                None => d.set_item(key, py_slice(py, &numbers(value)))?,
            }
        }
        Ok(d)
    }
}

#[pymethods]
impl QuadraticLayer {
    #[new]
    #[pyo3(signature = (Q, c, B=None, A=None, b=None, A_eq=None, b_eq=None, *, backend=None, feasibility_tol=1e-9, multiplier_tol=1e-9))]
    #[allow(non_snake_case, clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        Q: Bound<'_, PyAny>,
        c: Array<'_>,
        B: Option<Bound<'_, PyAny>>,
        A: Option<Bound<'_, PyAny>>,
        b: Option<Array<'_>>,
        A_eq: Option<Bound<'_, PyAny>>,
        b_eq: Option<Array<'_>>,
        backend: Option<&str>,
        feasibility_tol: f64,
        multiplier_tol: f64,
    ) -> PyResult<Self> {
        let matrix =
            |name: &str, m: Option<Bound<'_, PyAny>>| -> PyResult<Result<Option<MatArg>>> {
                Ok(match m {
                    Some(m) => MatArg::read(name, &m)?.map(Some),
                    None => Ok(None),
                })
            };
        let (q, b_mat, a, a_eq) = (
            MatArg::read("Q", &Q)?,
            matrix("B", B)?,
            matrix("A", A)?,
            matrix("A_eq", A_eq)?,
        );
        let build = || -> Result<Layer> {
            let args = LayerArgs {
                q: q?,
                c,
                b_mat: b_mat?,
                ineq: (a?, b),
                eq: (a_eq?, b_eq),
            };
            let tol = Tolerances {
                feasibility: feasibility_tol,
                multiplier: multiplier_tol,
            };
            args.build(backend, tol)
        };
        let layer = build().map_err(|e| to_pyerr(py, e))?;
        Ok(Self { layer })
    }

    /// `n`, the dimension of `z`.
    #[getter]
    fn n(&self) -> usize {
        self.layer.dims().0
    }

    /// `p`, the dimension of `θ`.
    #[getter]
    fn p(&self) -> usize {
        self.layer.dims().1
    }

    /// The number of inequality rows `A z ≥ b`.
    #[getter]
    fn m(&self) -> usize {
        self.layer.dims().2
    }

    /// The number of equality rows `A_eq z = b_eq`.
    #[getter]
    fn k(&self) -> usize {
        self.layer.dims().3
    }

    /// The QP backend's name (`"sparse"` for the sparse layer).
    #[getter]
    fn backend(&self) -> &'static str {
        match &self.layer {
            Layer::Dense(l) => l.backend().name(),
            Layer::Sparse(_) => "sparse",
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "QuadraticLayer(n={}, p={}, m={}, k={}, backend={:?})",
            self.n(),
            self.p(),
            self.m(),
            self.k(),
            self.backend()
        )
    }

    /// `solve(theta, *, threads=None)`: `z*(θ)` with its multipliers, the activity of every
    /// inequality (`"strong"`, `"weak"`, `"inactive"`), the rows left out as linearly dependent,
    /// and the solver, its iterations and the ∞-norm of the KKT residual. A dict, or a list of
    /// dicts for a batch.
    #[pyo3(signature = (theta, *, threads = None))]
    fn solve<'py>(
        &self,
        py: Python<'py>,
        theta: Array<'py>,
        threads: Option<i64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let threads = threads_arg(threads).map_err(|e| to_pyerr(py, e))?;
        let (ts, batch) = theta_items(&theta).map_err(|e| to_pyerr(py, e))?;
        if let Layer::Sparse(l) = &self.layer {
            let sols = py.detach(|| l.solve(&ts, threads));
            let dicts = (sols.into_iter().enumerate())
                .map(|(i, s)| {
                    let s = s.map_err(|e| call_error(py, batch, (i, e)))?;
                    Ok(sparse_solution(py, &s)?.into_any())
                })
                .collect::<PyResult<Vec<_>>>()?;
            return one_or_list(py, batch, dicts);
        }
        let zero = Loss::Linear {
            g: DVector::zeros(self.n()),
        };
        let program = self.program(zero, "solve").map_err(|e| to_pyerr(py, e))?;
        let sols = py
            .detach(|| {
                self.prepare(threads);
                par_items(ts.len(), threads, |i| program.solve_free(&ts[i]))
            })
            .map_err(|e| call_error(py, batch, e))?;
        let dicts = sols
            .iter()
            .map(|s| Ok(self.solution(py, s)?.into_any()))
            .collect::<PyResult<Vec<_>>>()?;
        one_or_list(py, batch, dicts)
    }

    /// `derive(theta, loss=None, *, direction=None, betas=(), gradients=(), threads=None)`: what
    /// `bilevel derive` returns, as a dict (vectors and matrices as NumPy arrays): `z_star`,
    /// multipliers, `constraints`, `branches` (`"stays"` / `"leaves"` at each weakly active
    /// row, else `None`), `condition`, `residual`, `method`, `solver`, `loss` (`L(θ)`), `z_dot`
    /// (`dẑ/dβ` at `0⁺`, Props. 1-2), `grad_theta` (Cor. 1, one-sided at ties), per β a
    /// `surrogates` entry (Def. 1, Def. 2, Prop. 3's band), and `grad_Q`, … for the data named
    /// in `gradients`. `loss` is an array-like `g` (`ℓ = gᵀz`), `("squared", t)` (`ℓ = ½‖z −
    /// t‖²`), `("gradient", g)` (only `ℓ'(z*)` known) or the CLI's dict; `direction=v` instead
    /// asks for the one-sided JVP of `z*` along `v` (`jvp`). A list of dicts for a batch.
    #[pyo3(signature = (theta, loss = None, *, direction = None, betas = Vec::new(), gradients = Vec::new(), threads = None))]
    fn derive<'py>(
        &self,
        theta: Array<'py>,
        loss: Option<Bound<'py, PyAny>>,
        direction: Option<Array<'py>>,
        betas: Vec<f64>,
        gradients: Vec<String>,
        threads: Option<i64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = theta.py();
        let threads = threads_arg(threads).map_err(|e| to_pyerr(py, e))?;
        let (loss, gradient_loss, jvp) = match (loss, direction) {
            (Some(_), Some(_)) => {
                return Err(to_pyerr(
                    py,
                    Error::input(
                        "direction",
                        "give either loss (a gradient) or direction (a JVP), not both",
                    ),
                ))
            }
            (None, None) => {
                return Err(to_pyerr(
                    py,
                    Error::input("loss", "missing (or give direction for a JVP of z*)"),
                ))
            }
            (Some(l), None) => {
                let (loss, gradient_loss) = loss_of(&l)?;
                (loss, gradient_loss, false)
            }
            (None, Some(v)) => {
                let loss = vec_arg("direction", &v)
                    .and_then(|v| self.layer.jvp_loss(&v))
                    .map_err(|e| to_pyerr(py, rename(e, "v", "direction")))?;
                (loss, false, true)
            }
        };
        let request = Request {
            betas,
            gradients,
            jvp,
            gradient_loss,
        };
        let (ts, batch) = theta_items(&theta).map_err(|e| to_pyerr(py, e))?;
        if let Layer::Sparse(l) = &self.layer {
            let outs = py
                .detach(|| {
                    par_items(ts.len(), threads, |i| {
                        sparse_derive(l, &ts[i], &loss, &request)
                    })
                })
                .map_err(|e| call_error(py, batch, e))?;
            let dicts = (outs.iter())
                .map(|item| Ok(sparse_derive_dict(py, item, &request)?.into_any()))
                .collect::<PyResult<Vec<_>>>()?;
            return one_or_list(py, batch, dicts);
        }
        let program = self.program(loss, "derive").map_err(|e| to_pyerr(py, e))?;
        let outs = py
            .detach(|| {
                self.prepare(threads);
                par_items(ts.len(), threads, |i| {
                    crate::app::derive::derive_with(&program, &ts[i], &request)
                })
            })
            .map_err(|e| call_error(py, batch, e))?;
        let dicts = outs
            .iter()
            .map(|o| Ok(self.derive_dict(py, o)?.into_any()))
            .collect::<PyResult<Vec<_>>>()?;
        one_or_list(py, batch, dicts)
    }

    /// `vjp(theta, g, *, threads=None)`: the one-sided gradient `dL/dθ` of `L(θ) = ⟨g, z*(θ)⟩`
    /// (Prop. 2 and Cor. 1: `−Bᵀż` with `ż` the solution of Eq. 17), shape `(p,)`, or
    /// `(batch, p)` for `theta` and `g` of shapes `(batch, p)` and `(batch, n)`.
    ///
    /// It is the derivative along the descent direction: where a constraint is weakly active
    /// (`z*` on its boundary with a zero multiplier) `z*` has a kink, and the answer is the
    /// derivative of the branch `ẑ_β` takes as `β → 0⁺`, so it is **not linear in `g`**:
    /// `vjp(θ, −g) ≠ −vjp(θ, g)` in general. `derive` returns the same gradient with the
    /// activity, branches, condition and residual.
    #[pyo3(signature = (theta, g, *, threads = None))]
    fn vjp<'py>(
        &self,
        py: Python<'py>,
        theta: Array<'py>,
        g: Array<'py>,
        threads: Option<i64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let p = self.p();
        self.per_item(py, &theta, ("g", &g), (threads, p), |t, g| {
            self.vjp_one(t, g)
        })
    }

    /// Benchmark helper, not API: the mean wall time in seconds of `repeats` runs of the Rust
    /// computation behind `vjp(theta, g, threads=threads)`, timed inside Rust in this process
    /// (`benches/python_layer.py` subtracts it from the Python call's time: the binding's
    /// overhead).
    #[pyo3(signature = (theta, g, repeats = 100, threads = None))]
    fn _rust_vjp_seconds(
        &self,
        py: Python<'_>,
        theta: Array<'_>,
        g: Array<'_>,
        repeats: usize,
        threads: Option<i64>,
    ) -> PyResult<f64> {
        let threads = threads_arg(threads).map_err(|e| to_pyerr(py, e))?;
        let (ts, batch) = theta_items(&theta).map_err(|e| to_pyerr(py, e))?;
        let gs = items("g", &g, batch).map_err(|e| to_pyerr(py, e))?;
        let repeats = repeats.max(1);
        py.detach(|| {
            self.prepare(threads);
            let start = std::time::Instant::now();
            for _ in 0..repeats {
                par_items(ts.len(), threads, |i| self.vjp_one(&ts[i], &gs[i]))?;
            }
            Ok(start.elapsed().as_secs_f64() / repeats as f64)
        })
        .map_err(|e: (usize, Error)| item_error(py, e))
    }

    /// `jvp(theta, v, *, threads=None)`: the one-sided directional derivative of `z*` along
    /// `θ + t v`, `t → 0⁺` (Prop. 2 for `g = −Bv`: a step `t v` adds `−t (Bv)ᵀz` to `E`), shape
    /// `(n,)`, or `(batch, n)` for `theta` and `v` of shape `(batch, p)`. At a weakly active
    /// constraint it is one-sided: `jvp(θ, −v) ≠ −jvp(θ, v)` in general.
    #[pyo3(signature = (theta, v, *, threads = None))]
    fn jvp<'py>(
        &self,
        py: Python<'py>,
        theta: Array<'py>,
        v: Array<'py>,
        threads: Option<i64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let n = self.n();
        self.per_item(py, &theta, ("v", &v), (threads, n), |t, v| {
            self.jvp_one(t, v)
        })
    }

    /// `surrogate(theta, loss, beta, kind="contrastive")`: a finite-β surrogate and its
    /// gradient, as a dict. `"contrastive"`: Def. 1, `L^β = (1/β)(E(ẑ_β) + βℓ(ẑ_β) − E(z*))`
    /// (Eq. 5) and Eq. 10's gradient, with Prop. 3's band `L^β ≤ L ≤ L^β + β/(2ν)‖ℓ'(z*)‖²`
    /// (`bound_lower`, `bound_upper`, `bound_nu`); `"linearized"`: Def. 2 (Eq. 36-37);
    /// `"centered"`: the mean of the `+β` and `−β` gradients (`O(β²)` from the limit where `z*`
    /// is smooth; no value). `z_hat` is `ẑ_β` (`z_minus` is `ẑ_{−β}`), `rate` `(ẑ_β − z*)/β`.
    #[pyo3(signature = (theta, loss, beta, kind = "contrastive"))]
    fn surrogate<'py>(
        &self,
        py: Python<'py>,
        theta: Array<'py>,
        loss: Bound<'py, PyAny>,
        beta: f64,
        kind: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let t = vec_arg("theta", &theta).map_err(|e| to_pyerr(py, e))?;
        let (loss, _) = loss_of(&loss)?;
        if let Layer::Sparse(l) = &self.layer {
            return sparse_surrogate_dict(py, (l, &t), (&loss, beta), kind);
        }
        let program = self
            .program(loss, "surrogate")
            .map_err(|e| to_pyerr(py, e))?;
        let d = PyDict::new(py);
        d.set_item("kind", kind)?;
        d.set_item("beta", beta)?;
        match kind {
            "contrastive" | "linearized" => {
                let (s, band) = detached(py, || {
                    let s = if kind == "contrastive" {
                        program.surrogate(&t, beta)?
                    } else {
                        program.linearized(&t, beta)?
                    };
                    let band = (kind == "contrastive")
                        .then(|| program.band_of(&s))
                        .flatten();
                    band.map(|b| b.check()).transpose()?;
                    Ok((s, band))
                })?;
                d.set_item("value", s.value)?;
                d.set_item("grad_theta", py_vector(py, &s.grad_theta))?;
                d.set_item("z_star", py_vector(py, &s.z_star.z))?;
                d.set_item("z_hat", py_vector(py, &s.z_hat.z))?;
                d.set_item("rate", py_vector(py, &s.rate))?;
                super::layer_data::set_band(&d, band)?;
                d.set_item(
                    "residual",
                    s.z_star.status.residual.max(s.z_hat.status.residual),
                )?;
            }
            "centered" => {
                let c = detached(py, || program.centered(&t, beta))?;
                d.set_item("value", py.None())?;
                d.set_item("grad_theta", py_vector(py, &c.grad_theta))?;
                d.set_item("z_hat", py_vector(py, &c.z_plus.z))?;
                d.set_item("z_minus", py_vector(py, &c.z_minus.z))?;
                d.set_item(
                    "residual",
                    c.z_plus.status.residual.max(c.z_minus.status.residual),
                )?;
            }
            other => {
                return Err(to_pyerr(
                    py,
                    Error::input(
                        "kind",
                        format!(
                            "unknown surrogate `{other}` (expected contrastive, linearized or centered)"
                        ),
                    ),
                ))
            }
        }
        Ok(d)
    }

    /// `Q`, `B`, `c` as NumPy arrays (copies); `Q` and `B` of a sparse layer as
    /// `scipy.sparse.csc_array`s.
    #[getter]
    #[allow(non_snake_case)]
    fn Q<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.layer {
            Layer::Dense(l) => Ok(py_matrix(py, l.q()).into_any()),
            Layer::Sparse(l) => scipy_csc(py, l.matrices().0),
        }
    }

    #[getter]
    #[allow(non_snake_case)]
    fn B<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.layer {
            Layer::Dense(l) => Ok(py_matrix(py, l.b()).into_any()),
            Layer::Sparse(l) => scipy_csc(py, l.matrices().1),
        }
    }

    #[getter]
    fn c<'py>(&self, py: Python<'py>) -> Bound<'py, numpy::PyArray1<f64>> {
        match &self.layer {
            Layer::Dense(l) => py_vector(py, l.c()),
            Layer::Sparse(l) => py_vector(py, l.matrices().2),
        }
    }
}

/// An error naming `from` renamed to name `to` (the Python argument's name).
fn rename(e: Error, from: &str, to: &str) -> Error {
    match e {
        Error::DimensionMismatch {
            what,
            expected,
            found,
        } if what == from => Error::DimensionMismatch {
            what: to.to_string(),
            expected,
            found,
        },
        Error::NonFinite { what } if what == from => Error::NonFinite {
            what: to.to_string(),
        },
        e => e,
    }
}
