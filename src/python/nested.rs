//! `bilevel.Activation` (the closed-form layers of `prox`) and `bilevel.Network` (the deeply
//! nested programs of Sections 3-4 and every row of Table 1).
//!
//! Batches are **rows** here, as in NumPy and JAX: `x` is `(B, n_0)`, every `z_k` is
//! `(B, n_k)`; weights are `(n_k, n_{k−1})` (`z_k = f_k(z_{k−1} W_kᵀ + b_k)`). The Rust side keeps
//! samples in columns; the bindings transpose.

use nalgebra::DMatrix;
use numpy::ndarray::{Array2, ArrayD, ArrayViewD, Axis};
use numpy::{IntoPyArray, PyArrayDyn};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use super::convert::{detached, mat_arg, py_matrix, py_vector, room, to_pyerr, vec_arg, Array};
use crate::error::{Error, Result};
use crate::nested::method::Method;
use crate::nested::{Batch, Layer, NestedReport, NestedSettings, Network as Net, OutputLoss};
use crate::prox::{box_unit_limit, Activation as Act};

/// An activation from its Python name: `"identity"`, `"relu"`, `"hard_sigmoid"`,
/// `"hard_tanh"`, `"softmax"`, or `("box", lo, hi)`.
fn activation_of(obj: &Bound<'_, PyAny>) -> PyResult<Act> {
    let py = obj.py();
    if let Ok(t) = obj.cast::<PyTuple>() {
        if t.len() == 3 && t.get_item(0)?.extract::<String>().ok().as_deref() == Some("box") {
            let act = Act::Box {
                lo: t.get_item(1)?.extract()?,
                hi: t.get_item(2)?.extract()?,
            };
            act.validate().map_err(|e| to_pyerr(py, e))?;
            return Ok(act);
        }
    }
    let name: String = obj
        .cast::<PyString>()
        .map_err(|_| {
            to_pyerr(
                py,
                Error::input(
                    "activation",
                    "expected a name (identity, relu, hard_sigmoid, hard_tanh, softmax) or \
                     (\"box\", lo, hi)",
                ),
            )
        })?
        .to_string();
    name.parse::<Act>().map_err(|e| to_pyerr(py, e))
}

/// The Python name of an activation: its name ([`Act::NAMED`]), or `("box", lo, hi)`.
fn activation_name(act: Act) -> String {
    match act {
        Act::Box { lo, hi } => format!("(\"box\", {lo}, {hi})"),
        named => named.to_string(),
    }
}

/// Applies `f` to every row (last axis) of the argument `u` and of the argument `g` (of `u`'s
/// shape; the row is empty without it), after checking that they are finite: a new array of
/// `u`'s shape.
fn rowwise<'py>(
    py: Python<'py>,
    u: (&str, &Array<'py>),
    g: Option<(&str, &Array<'py>)>,
    f: impl Fn(&[f64], &[f64], &mut [f64]),
) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
    rows_mapped(u, g, f)
        .map(|a| a.into_pyarray(py))
        .map_err(|e| to_pyerr(py, e))
}

/// [`rowwise`]'s computation.
fn rows_mapped(
    (name, u): (&str, &Array<'_>),
    g: Option<(&str, &Array<'_>)>,
    f: impl Fn(&[f64], &[f64], &mut [f64]),
) -> Result<ArrayD<f64>> {
    let u = u.read(name)?;
    let g = g
        .map(|(other, g)| Ok((other, g.read(other)?)))
        .transpose()?;
    let u = u.as_array();
    if u.ndim() == 0 {
        return Err(Error::dim(
            name,
            "an array with at least one axis",
            "a scalar",
        ));
    }
    let last = Axis(u.ndim() - 1);
    let width = u.len_of(last);
    // The output in C order, and contiguous copies of one row of `u` and of `g` (allocated
    // before any pass over the data: a broadcast view may be too large to hold).
    let mut out = room(name, u.len())?;
    let mut rows = room(name, 2 * width)?;
    rows.resize(2 * width, 0.0);
    check_finite(name, &u)?;
    let g = g.as_ref().map(|(other, g)| (*other, g.as_array()));
    let mut g_lanes = match &g {
        Some((other, v)) => {
            if v.shape() != u.shape() {
                return Err(Error::dim(
                    *other,
                    format!("shape {:?} (as {name})", u.shape()),
                    format!("shape {:?}", v.shape()),
                ));
            }
            check_finite(other, v)?;
            Some(v.lanes(last).into_iter())
        }
        None => None,
    };
    let (u_row, g_row) = rows.split_at_mut(width);
    let g_width = if g_lanes.is_some() { width } else { 0 };
    for lane in u.lanes(last) {
        for (dst, src) in u_row.iter_mut().zip(lane) {
            *dst = *src;
        }
        if let Some(g_lane) = g_lanes.as_mut().and_then(Iterator::next) {
            for (dst, src) in g_row.iter_mut().zip(g_lane) {
                *dst = *src;
            }
        }
        let start = out.len();
        out.resize(start + width, 0.0);
        f(u_row, &g_row[..g_width], &mut out[start..]);
    }
    ArrayD::from_shape_vec(u.shape(), out).map_err(|e| Error::input(name, e.to_string()))
}

/// `NonFiniteError` naming `name` if `u` holds a NaN or an infinity.
fn check_finite(name: &str, u: &ArrayViewD<'_, f64>) -> Result<()> {
    if u.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(Error::NonFinite { what: name.into() })
    }
}

/// `Activation(name)`: a closed-form layer `z = f(u) = argmin_z G(z) − zᵀu` (Section 3.2.2,
/// Eq. 31-32) with `name` one of `"identity"`, `"relu"`, `"hard_sigmoid"` (`clamp(u, 0, 1)`),
/// `"hard_tanh"` (`clamp(u, −1, 1)`), `"softmax"`, or `("box", lo, hi)`. Every method works on
/// the last axis (softmax couples the units of a row; the box family is unit-wise).
///
/// Example:
///
/// ```text
/// >>> import bilevel
/// >>> relu = bilevel.Activation("relu")
/// >>> relu([-1.0, 0.0, 2.0]).tolist()
/// [0.0, 0.0, 2.0]
/// >>> # one-sided at the kink u = 0: g = −1 (the loss wants the unit up) passes, g = 1 does not
/// >>> (relu.vjp([0.0, 0.0], [-1.0, 1.0]) + 0.0).tolist()
/// [-1.0, 0.0]
/// >>> relu.fenchel_vjp([-1.0, 0.0, 2.0], [1.0, 1.0, 1.0], 0.5).tolist()   # Eq. 51
/// [0.0, 0.0, 1.0]
///
/// ```
#[pyclass(frozen, module = "bilevel", name = "Activation")]
pub struct Activation {
    act: Act,
}

#[pymethods]
impl Activation {
    #[new]
    fn new(name: Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(Self {
            act: activation_of(&name)?,
        })
    }

    fn __repr__(&self) -> String {
        format!("Activation({})", activation_name(self.act))
    }

    /// `f(u)`.
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        u: Array<'py>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        rowwise(py, ("u", &u), None, |u, _, out| self.act.activate(u, out))
    }

    /// `vjp(u, g)`: the one-sided gradient with respect to `u` of `L = ⟨g, f(u)⟩` (Prop. 2 and
    /// Cor. 1 for the proximal layer `½‖z − u‖² + ι_C(z)`: `−ż` with `ż = d/dβ f(u − βg)` at
    /// `0⁺`). Box family: `g` strictly inside the box, `0` beyond a bound, and at a bound (a
    /// weakly active unit) `g` when the descent step `u − βg` moves into the box, else `0` —
    /// e.g. ReLU at `u = 0` passes `min(g, 0)`, where frameworks pass `0`. Softmax (smooth):
    /// `s ⊙ (g − ⟨s, g⟩)`. Not linear in `g` at ties.
    fn vjp<'py>(
        &self,
        py: Python<'py>,
        u: Array<'py>,
        g: Array<'py>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let act = self.act;
        rowwise(py, ("u", &u), Some(("g", &g)), |u, g, out| {
            match act.bounds() {
                Some((lo, hi)) => {
                    for ((o, &uj), &gj) in out.iter_mut().zip(u).zip(g) {
                        *o = -box_unit_limit(uj, lo, hi, gj, 0.0).0;
                    }
                }
                None => {
                    act.activate(u, out);
                    let sg: f64 = out.iter().zip(g).map(|(s, gj)| s * gj).sum();
                    for (o, &gj) in out.iter_mut().zip(g) {
                        *o *= gj - sg;
                    }
                }
            }
        })
    }

    /// `fenchel_vjp(u, g, beta)`: Fenchel back-propagation's error signal, the one-sided
    /// difference quotient `D_β f(u)[g] = (f(u) − f(u − βg)) / β` (Eq. 51; the rule of the
    /// paper's Appendix C code). It tends to `vjp(u, g)` as `β → 0⁺`; for the box family it is
    /// exactly `g` where `u` and `u − βg` are both inside the box.
    fn fenchel_vjp<'py>(
        &self,
        py: Python<'py>,
        u: Array<'py>,
        g: Array<'py>,
        beta: f64,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        crate::error::check_beta(beta).map_err(|e| to_pyerr(py, e))?;
        let act = self.act;
        rowwise(py, ("u", &u), Some(("g", &g)), |u, g, out| {
            act.difference_quotient(u, g, beta, out)
        })
    }

    /// `derivative(u)`: back-propagation's `f'(u)` for the box family (`1` strictly inside,
    /// `0` outside and at the kinks, the frameworks' convention that Prop. 2 replaces).
    fn derivative<'py>(
        &self,
        py: Python<'py>,
        u: Array<'py>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        if self.act.bounds().is_none() {
            return Err(to_pyerr(
                py,
                Error::input(
                    "activation",
                    "softmax has no element-wise derivative: use vjp",
                ),
            ));
        }
        rowwise(py, ("u", &u), None, |u, _, out| self.act.derivative(u, out))
    }
}

impl Network {
    /// The samples `x` of shape `(B, n_0)` and the targets of shape `(B, n_L)` as the Rust
    /// side's columns, their shapes checked (and named in errors) in the caller's row layout.
    fn samples(
        &self,
        x: &Array<'_>,
        target: Option<&Array<'_>>,
    ) -> Result<(DMatrix<f64>, Option<DMatrix<f64>>)> {
        let x = mat_arg("x", x)?;
        let (batch, n0) = x.shape();
        if n0 != self.net.input_dim() {
            return Err(Error::dim(
                "x",
                format!("shape (batch, {})", self.net.input_dim()),
                format!("shape ({batch}, {n0})"),
            ));
        }
        let target = match target {
            Some(t) => {
                let t = mat_arg("target", t)?;
                let out = self.net.widths().last().copied().unwrap_or(0);
                if t.shape() != (batch, out) {
                    return Err(Error::dim(
                        "target",
                        format!("shape ({batch}, {out}) (a row per row of x)"),
                        format!("shape ({}, {})", t.nrows(), t.ncols()),
                    ));
                }
                Some(t.transpose())
            }
            None => None,
        };
        Ok((x.transpose(), target))
    }
}

/// Rows `(B, n)` from columns `n × B`.
fn rows_of<'py>(py: Python<'py>, m: &DMatrix<f64>) -> Bound<'py, numpy::PyArray2<f64>> {
    Array2::from_shape_fn((m.ncols(), m.nrows()), |(i, j)| m[(j, i)]).into_pyarray(py)
}

/// The nested solvers' settings: the defaults with the entries of `settings` replaced (names
/// and meanings as in `NestedSettings`), validated.
fn settings_of(py: Python<'_>, settings: Option<&Bound<'_, PyDict>>) -> PyResult<NestedSettings> {
    let defaults = NestedSettings::default();
    let Some(d) = settings else {
        return Ok(defaults);
    };
    let invalid = |reason: String| to_pyerr(py, Error::input("settings", reason));
    let mut value = serde_json::to_value(defaults).map_err(|e| invalid(e.to_string()))?;
    let Some(map) = value.as_object_mut() else {
        return Err(invalid("the defaults are not a table".into()));
    };
    for (key, v) in d.iter() {
        let key: String = key.extract()?;
        let known: Vec<&String> = map.keys().collect();
        let known = known
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let Some(slot) = map.get_mut(&key) else {
            return Err(invalid(format!("unknown setting `{key}` (known: {known})")));
        };
        // The default's type is the setting's: a count, a flag or a number.
        let expected = |what: &str| invalid(format!("`{key}`: expected {what}"));
        *slot = match &*slot {
            serde_json::Value::Bool(_) => {
                serde_json::json!(v.extract::<bool>().map_err(|_| expected("a bool"))?)
            }
            serde_json::Value::Number(n) if n.is_u64() => serde_json::json!(v
                .extract::<u64>()
                .map_err(|_| expected("a non-negative integer"))?),
            _ => serde_json::json!(v.extract::<f64>().map_err(|_| expected("a number"))?),
        };
    }
    let s: NestedSettings = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
    s.validate().map_err(|e| to_pyerr(py, e))?;
    Ok(s)
}

/// `Network(weights, biases, activations)`: the feed-forward network `z_0 = x`,
/// `z_k = f_k(z_{k−1} W_kᵀ + b_k)`, read as the deeply nested program of Eq. 21 with the
/// layer energy each method of Table 1 chooses. `weights[k]` is `(n_k, n_{k−1})`, `biases[k]`
/// `(n_k,)`, `activations[k]` a name as for [`Activation`].
///
/// Example:
///
/// ```text
/// >>> import numpy as np, bilevel
/// >>> net = bilevel.Network([np.array([[1.0, -1.0]]), np.array([[2.0]])], [np.zeros(1), np.zeros(1)],
/// ...                       ["relu", "identity"])
/// >>> net.widths, [a.tolist() for a in net.forward([[1.0, 0.0]])]
/// ([2, 1, 1], [[[1.0]], [[2.0]]])
/// >>> out = net.gradient("fenbp", 1e-3, [[1.0, 0.0]], [[1.0]])   # Table 1's Fenchel BP
/// >>> out["value"], [np.round(w, 6).tolist() for w in out["grad_weights"]]
/// (0.5, [[[2.0, 0.0]], [[1.0]]])
///
/// ```
#[pyclass(frozen, module = "bilevel", name = "Network")]
pub struct Network {
    net: Net<f64>,
}

#[pymethods]
impl Network {
    #[new]
    fn new(
        py: Python<'_>,
        weights: Vec<Array<'_>>,
        biases: Vec<Array<'_>>,
        activations: Vec<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        if weights.is_empty() || biases.len() != weights.len() || activations.len() != weights.len()
        {
            return Err(to_pyerr(
                py,
                Error::input(
                    "weights",
                    format!(
                        "need one weight matrix, bias and activation per layer (at least one \
                         layer): got {} weights, {} biases, {} activations",
                        weights.len(),
                        biases.len(),
                        activations.len()
                    ),
                ),
            ));
        }
        let mut layers = Vec::with_capacity(weights.len());
        for (k, ((w, b), a)) in weights.iter().zip(&biases).zip(&activations).enumerate() {
            let w = mat_arg(&format!("weights[{k}]"), w).map_err(|e| to_pyerr(py, e))?;
            let b = vec_arg(&format!("biases[{k}]"), b).map_err(|e| to_pyerr(py, e))?;
            layers.push(Layer {
                w,
                bias: b,
                activation: activation_of(a)?,
            });
        }
        let net = Net { layers };
        // Shapes and finite entries; the energy-specific check (softmax needs Fenchel or
        // proximal energies) runs with the method.
        net.validate(crate::nested::EnergyKind::Fenchel)
            .map_err(|e| to_pyerr(py, e))?;
        Ok(Self { net })
    }

    fn __repr__(&self) -> String {
        let acts: Vec<String> = self
            .net
            .layers
            .iter()
            .map(|l| activation_name(l.activation))
            .collect();
        format!(
            "Network(widths={:?}, activations=[{}])",
            self.widths(),
            acts.join(", ")
        )
    }

    /// `[n_0, n_1, …, n_L]`.
    #[getter]
    fn widths(&self) -> Vec<usize> {
        let mut w = vec![self.net.input_dim()];
        w.extend(self.net.widths());
        w
    }

    /// `forward(x)`: the forward pass `[z_1, …, z_L]`, each `(B, n_k)`, for `x` of shape
    /// `(B, n_0)` (every method's free solution top-down).
    fn forward<'py>(&self, py: Python<'py>, x: Array<'py>) -> PyResult<Bound<'py, PyList>> {
        let (x, _) = self.samples(&x, None).map_err(|e| to_pyerr(py, e))?;
        let zs = py.detach(|| {
            let mut z = x;
            let mut out = Vec::with_capacity(self.net.layers.len());
            for layer in &self.net.layers {
                let a = layer.affine(&z);
                z = crate::nested::activate_columns(layer.activation, &a);
                out.push(z.clone());
            }
            out
        });
        PyList::new(py, zs.iter().map(|z| rows_of(py, z)))
    }

    /// `default_settings()`: the nested solvers' iteration limits and tolerances with their
    /// defaults (pass changed entries to `gradient(..., settings=)`).
    #[staticmethod]
    fn default_settings<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let value = serde_json::to_value(NestedSettings::default())
            .map_err(|e| to_pyerr(py, Error::input("settings", e.to_string())))?;
        for (key, v) in value.as_object().into_iter().flatten() {
            match v {
                serde_json::Value::Bool(b) => d.set_item(key, b)?,
                serde_json::Value::Number(n) if n.is_u64() => d.set_item(key, n.as_u64())?,
                serde_json::Value::Number(n) => d.set_item(key, n.as_f64())?,
                other => d.set_item(key, other.to_string())?,
            }
        }
        Ok(d)
    }

    /// `gradient(method, beta, x, target, loss="squared", settings=None)`: the surrogate of one Table 1 row on
    /// the batch `(x, target)` (rows are samples; the batch surrogate is the mean of the
    /// per-sample surrogates at the same β), as a dict: `value`, `grad_weights` and
    /// `grad_biases` (shaped like the parameters), `clamped` and `free` (the inner solutions
    /// `ẑ_k`, `ž_k`, each `(B, n_k)`), and `status` (`solver`, `iterations`, `residual`,
    /// `optimum`, `fallback`). `method` is one of `"chl"`, `"convex-chl"`, `"lpom"`, `"mac"`,
    /// `"bp"`, `"fenbp"`, `"pc"`; `beta` one value for every layer or one per layer; `loss`
    /// `"squared"` (`½‖z_L − t‖²`) or `"softmax_cross_entropy"` (`z_L` are logits); `settings`
    /// a dict of changed iteration limits and tolerances (see `default_settings()`).
    #[pyo3(signature = (method, beta, x, target, loss = "squared", settings = None))]
    fn gradient<'py>(
        &self,
        method: &str,
        beta: Bound<'py, PyAny>,
        x: Array<'py>,
        target: Array<'py>,
        loss: &str,
        settings: Option<Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let py = beta.py();
        let settings = settings_of(py, settings.as_ref())?;
        let m = method.parse::<Method>().map_err(|e| to_pyerr(py, e))?;
        let layers = self.net.layers.len();
        let betas: Vec<f64> = match beta.extract::<f64>() {
            Ok(b) => vec![b; layers],
            Err(_) => beta.extract()?,
        };
        let loss = loss.parse::<OutputLoss>().map_err(|e| to_pyerr(py, e))?;
        let (x, target) = self
            .samples(&x, Some(&target))
            .map_err(|e| to_pyerr(py, e))?;
        let target = target.unwrap_or_default();
        let report: NestedReport = detached(py, || {
            let problem = m.problem(&self.net, &betas, loss)?;
            let batch = Batch::new(&problem, &x, &target)?;
            m.run(&problem, batch, &settings)
        })?;
        let d = PyDict::new(py);
        d.set_item("method", m.to_string())?;
        d.set_item("value", report.value)?;
        let gw: Vec<_> = report.grad.w.iter().map(|w| py_matrix(py, w)).collect();
        let gb: Vec<_> = report.grad.bias.iter().map(|b| py_vector(py, b)).collect();
        d.set_item("grad_weights", PyList::new(py, gw)?)?;
        d.set_item("grad_biases", PyList::new(py, gb)?)?;
        let clamped: Vec<_> = report.clamped.iter().map(|z| rows_of(py, z)).collect();
        let free: Vec<_> = report.free.iter().map(|z| rows_of(py, z)).collect();
        d.set_item("clamped", PyList::new(py, clamped)?)?;
        d.set_item("free", PyList::new(py, free)?)?;
        let s = PyDict::new(py);
        s.set_item("solver", report.status.solver)?;
        s.set_item("iterations", report.status.iterations)?;
        s.set_item("residual", report.status.residual)?;
        s.set_item("optimum", report.status.optimum.label())?;
        match &report.status.fallback {
            Some(f) => {
                let fd = PyDict::new(py);
                fd.set_item("from", f.from)?;
                fd.set_item("reason", &f.reason)?;
                s.set_item("fallback", fd)?;
            }
            None => s.set_item("fallback", py.None())?,
        }
        d.set_item("status", s)?;
        Ok(d)
    }
}
