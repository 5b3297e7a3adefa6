//! The data of `bilevel.QuadraticLayer`: matrix arguments given dense (array-likes) or sparse
//! (SciPy sparse matrices, anything with `tocoo()`), and the layer they build — the dense
//! [`QuadraticProblem`] or, for sparse data (or `backend="sparse"`), the
//! [`SparseQuadraticLayer`] — with what the sparse one answers.

use nalgebra::{DMatrix, DVector};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::{branch_labels, mat_arg, py_slice, py_vector, vec_arg, Array};
use super::sparse::{indices, values};
use crate::app::derive::{Request, SurrogateOut};
use crate::app::derive_sparse::sparse_surrogates;
use crate::error::{check_computed, Error, Result};
use crate::layer::{SparseLayerDerivative, SparseQpSolution, SparseQuadraticLayer};
use crate::linalg::{csc_from_dense, csc_from_triplets, Csc};
use crate::problem::{InnerProblem, LinearConstraints, Loss, QuadraticProblem};
use crate::solve::qp::Tolerances;

/// A matrix argument as given.
pub(crate) enum MatArg {
    Dense(DMatrix<f64>),
    Sparse(Csc),
}

impl MatArg {
    /// `obj` read as argument `name`: a SciPy sparse matrix through its COO triplets (repeated
    /// entries summed), anything else as a dense 2-D array.
    pub(crate) fn read(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Result<Self>> {
        if !obj.hasattr("tocoo")? {
            let array: Array<'_> = obj.extract()?;
            return Ok(mat_arg(name, &array).map(MatArg::Dense));
        }
        let coo = obj.call_method0("tocoo")?;
        let (nrows, ncols): (usize, usize) = coo.getattr("shape")?.extract()?;
        let rows: Array<'_> = coo.getattr("row")?.extract()?;
        let cols: Array<'_> = coo.getattr("col")?.extract()?;
        let data: Array<'_> = coo.getattr("data")?.extract()?;
        let read = || -> Result<Self> {
            let rows = indices(&format!("{name}.row"), &rows, nrows.saturating_sub(1))?;
            let cols = indices(&format!("{name}.col"), &cols, ncols.saturating_sub(1))?;
            let data = values(&format!("{name}.data"), &data)?;
            if rows.len() != data.len() || cols.len() != data.len() {
                return Err(Error::input(name, "COO arrays of different lengths"));
            }
            let triplets: Vec<_> = (rows.into_iter().zip(cols))
                .zip(data)
                .map(|((r, c), v)| (r, c, v))
                .collect();
            csc_from_triplets(nrows, ncols, &triplets)
                .map(MatArg::Sparse)
                .map_err(|e| match e {
                    Error::NonFinite { .. } => Error::NonFinite { what: name.into() },
                    other => other,
                })
        };
        Ok(read())
    }

    fn is_sparse(&self) -> bool {
        matches!(self, MatArg::Sparse(_))
    }

    fn csc(self) -> Csc {
        match self {
            MatArg::Dense(m) => csc_from_dense(&m),
            MatArg::Sparse(c) => c,
        }
    }

    fn dense(self, name: &str) -> Result<DMatrix<f64>> {
        match self {
            MatArg::Dense(m) => Ok(m),
            MatArg::Sparse(_) => Err(Error::input(
                name,
                "a sparse matrix needs backend \"sparse\" (or None, the default)",
            )),
        }
    }
}

/// The arguments of `QuadraticLayer(Q, c, B, A, b, A_eq, b_eq)`, read.
pub(crate) struct LayerArgs<'py> {
    pub q: MatArg,
    pub c: Array<'py>,
    pub b_mat: Option<MatArg>,
    pub ineq: (Option<MatArg>, Option<Array<'py>>),
    pub eq: (Option<MatArg>, Option<Array<'py>>),
}

/// The layer a `QuadraticLayer` holds (one per object: the variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Layer {
    Dense(QuadraticProblem),
    Sparse(SparseQuadraticLayer),
}

impl LayerArgs<'_> {
    /// Whether any matrix was given sparse.
    fn any_sparse(&self) -> bool {
        let given = [Some(&self.q), self.b_mat.as_ref()];
        let rows = [self.ineq.0.as_ref(), self.eq.0.as_ref()];
        given
            .into_iter()
            .chain(rows)
            .flatten()
            .any(MatArg::is_sparse)
    }

    /// The layer for `backend` (`None`: sparse if any matrix is, else dense).
    pub(crate) fn build(self, backend: Option<&str>, tol: Tolerances) -> Result<Layer> {
        tol.validate()?;
        match backend {
            Some("sparse") => self.sparse(tol).map(Layer::Sparse),
            None if self.any_sparse() => self.sparse(tol).map(Layer::Sparse),
            other => self.dense(other.unwrap_or("dense"), tol).map(Layer::Dense),
        }
    }

    fn sparse(self, tol: Tolerances) -> Result<SparseQuadraticLayer> {
        let q = self.q.csc();
        let n = q.ncols();
        let b = match self.b_mat {
            Some(b) => b.csc(),
            None => csc_from_triplets(n, 0, &[])?,
        };
        let c = vec_arg("c", &self.c)?;
        let rows = |name: &str, (m, v): (Option<MatArg>, Option<Array<'_>>)| -> Result<_> {
            let rhs = v.map(|v| vec_arg(&format!("{name} (right-hand side)"), &v));
            let m = m.map(MatArg::csc);
            Ok(match (m, rhs.transpose()?) {
                (None, None) => None,
                (Some(m), Some(v)) => Some((m, v)),
                _ => {
                    return Err(Error::input(
                        name,
                        "give the matrix and its right-hand side",
                    ))
                }
            })
        };
        let ineq = rows("A, b", self.ineq)?;
        let ineq = match ineq {
            Some(rows) => rows,
            None => (csc_from_triplets(0, n, &[])?, DVector::zeros(0)),
        };
        let eq = rows("A_eq, b_eq", self.eq)?;
        SparseQuadraticLayer::new(q, (b, c), ineq, eq, tol)
    }

    fn dense(self, backend: &str, tol: Tolerances) -> Result<QuadraticProblem> {
        let q = self.q.dense("Q")?;
        let n = q.nrows();
        let bm = match self.b_mat {
            Some(m) => m.dense("B")?,
            None => DMatrix::zeros(n, 0),
        };
        let opt_mat = |name: &str, m: Option<MatArg>| m.map(|m| m.dense(name)).transpose();
        let opt_vec = |name: &str, v: Option<Array<'_>>| v.map(|v| vec_arg(name, &v)).transpose();
        let (a, b) = self.ineq;
        let (a_eq, b_eq) = self.eq;
        let constraints = LinearConstraints::from_parts(
            n,
            (opt_mat("A", a)?, opt_vec("b", b)?),
            (opt_mat("A_eq", a_eq)?, opt_vec("b_eq", b_eq)?),
        )?;
        let layer =
            QuadraticProblem::new(q, bm, vec_arg("c", &self.c)?, constraints)?.with_tolerances(tol);
        Ok(match backend {
            "dense" => layer,
            "clarabel" => {
                layer.with_backend(std::sync::Arc::new(crate::solve::qp::Clarabel::default()))
            }
            #[cfg(feature = "osqp")]
            "osqp" => layer.with_backend(std::sync::Arc::new(crate::solve::qp::Osqp::default())),
            other => {
                return Err(Error::input(
                    "backend",
                    format!("unknown backend `{other}` (expected dense, clarabel or sparse)"),
                ))
            }
        })
    }
}

impl Layer {
    /// `(n, p, m, k)`: the dimensions of `z` and `θ`, the inequality and equality rows.
    pub(crate) fn dims(&self) -> (usize, usize, usize, usize) {
        match self {
            Layer::Dense(l) => (
                l.dim(),
                l.n_params(),
                l.constraints().m(),
                l.constraints().b_eq.len(),
            ),
            Layer::Sparse(l) => {
                let (m, k) = l.rows();
                (l.dim(), l.n_params(), m, k)
            }
        }
    }

    /// `derive`'s loss for a JVP along `v`: the linear loss `g = −Bv` (Prop. 2).
    pub(crate) fn jvp_loss(&self, v: &DVector<f64>) -> Result<Loss> {
        match self {
            Layer::Dense(l) => l.jvp_loss(v),
            Layer::Sparse(l) => Ok(Loss::Linear {
                g: l.jvp_gradient(v)?,
            }),
        }
    }

    /// The dense layer, or an error saying that `method` needs one.
    pub(crate) fn dense(&self, method: &str) -> Result<&QuadraticProblem> {
        match self {
            Layer::Dense(l) => Ok(l),
            Layer::Sparse(_) => Err(Error::input(
                "backend",
                format!(
                    "`{method}` needs dense data; the sparse layer answers through its own \
                     `solve`, `vjp`, `jvp`, `derive` and `surrogate`"
                ),
            )),
        }
    }
}

/// A sparse solution as `solve` returns it (the dense layer's keys; dependent equality rows
/// are not set aside on the sparse path).
pub(crate) fn sparse_solution<'py>(
    py: Python<'py>,
    s: &SparseQpSolution,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let (lambda, lambda_eq) = s.multipliers();
    let status = s.status();
    d.set_item("z", py_vector(py, s.z()))?;
    d.set_item("multipliers", py_vector(py, lambda))?;
    d.set_item("multipliers_eq", py_vector(py, lambda_eq))?;
    let labels: Vec<&str> = status.activity.iter().map(|a| a.label()).collect();
    d.set_item("constraints", labels)?;
    d.set_item("dependent_constraints", s.dependent().to_vec())?;
    d.set_item("dependent_equalities", s.dependent_equalities().to_vec())?;
    d.set_item("solver", status.solver)?;
    d.set_item("iterations", status.iterations)?;
    d.set_item("residual", status.residual)?;
    Ok(d)
}

/// `m` as a `scipy.sparse.csc_array` (SciPy imported on demand).
pub(crate) fn scipy_csc<'py>(py: Python<'py>, m: &Csc) -> PyResult<Bound<'py, PyAny>> {
    let (indptr, rows, vals) = super::sparse::parts(py, m);
    let sp = py.import("scipy.sparse")?;
    sp.getattr("csc_array")?
        .call1(((vals, rows, indptr), (m.nrows(), m.ncols())))
}

/// `derive` at one `θ` on the sparse layer: the solution, [`SparseQuadraticLayer::derive`]'s
/// derivative (checked computed) and the surrogates at the request's `betas`
/// ([`crate::app::derive_sparse::sparse_surrogates`]: without Prop. 3's band).
pub(crate) fn sparse_derive(
    layer: &SparseQuadraticLayer,
    theta: &DVector<f64>,
    loss: &Loss,
    request: &Request,
) -> Result<SparseDerive> {
    request.validate()?;
    let solution = layer.solve_one(theta)?;
    let d = layer.derive(&solution, theta, loss)?;
    check_computed("z_dot", d.z_dot.iter())?;
    check_computed("loss", [&d.loss])?;
    check_computed("condition", [&d.condition])?;
    let surrogates = sparse_surrogates((layer, &solution), theta, loss, &request.betas)?;
    Ok((solution, d, surrogates))
}

/// One sparse `derive` item: the solution, the limit derivative and the surrogates.
pub(crate) type SparseDerive = (SparseQpSolution, SparseLayerDerivative, Vec<SurrogateOut>);

/// The `surrogates` list of a `derive` dict, one dict per β with the keys of
/// [`SurrogateOut`].
pub(crate) fn surrogate_list<'py>(
    py: Python<'py>,
    surrogates: &[SurrogateOut],
) -> PyResult<Bound<'py, pyo3::types::PyList>> {
    let entries = (surrogates.iter())
        .map(|s| {
            let e = PyDict::new(py);
            e.set_item("beta", s.beta)?;
            e.set_item("z_hat", py_slice(py, &s.z_hat))?;
            e.set_item("value", s.value)?;
            e.set_item("grad_theta", py_slice(py, &s.grad_theta))?;
            e.set_item("linearized_value", s.linearized_value)?;
            e.set_item(
                "linearized_grad_theta",
                py_slice(py, &s.linearized_grad_theta),
            )?;
            e.set_item("bound_lower", s.bound_lower)?;
            e.set_item("bound_upper", s.bound_upper)?;
            e.set_item("bound_nu", s.bound_nu)?;
            Ok(e)
        })
        .collect::<PyResult<Vec<_>>>()?;
    pyo3::types::PyList::new(py, entries)
}

/// `derive`'s dict on the sparse layer: the dense layer's keys (Prop. 3's band with `ν` a
/// certified lower bound of `λ_min(Q)`), with the sparse data's gradients as
/// `scipy.sparse.csc_array`s on their patterns.
pub(crate) fn sparse_derive_dict<'py>(
    py: Python<'py>,
    (s, d, surrogates): &SparseDerive,
    request: &Request,
) -> PyResult<Bound<'py, PyDict>> {
    let out = sparse_solution(py, s)?;
    out.set_item("z_star", out.get_item("z")?)?;
    out.del_item("z")?;
    out.set_item("branches", branch_labels(&d.status.branches))?;
    out.set_item("condition", d.condition)?;
    out.set_item("loss", d.loss)?;
    out.set_item("z_dot", py_vector(py, &d.z_dot))?;
    if request.jvp {
        out.set_item("jvp", py_vector(py, &d.z_dot))?;
    }
    out.set_item("grad_theta", py_vector(py, &d.grad_theta))?;
    out.set_item("method", d.method.to_string())?;
    out.set_item("residual", d.residual)?;
    out.set_item("surrogates", surrogate_list(py, surrogates)?)?;
    if let Some(note) = request.loss_note() {
        out.set_item("loss_note", note)?;
    }
    for name in &request.gradients {
        let key = format!("grad_{name}");
        match name.as_str() {
            "Q" => out.set_item(key, scipy_csc(py, &d.q)?)?,
            "B" => out.set_item(key, scipy_csc(py, &d.b)?)?,
            "c" => out.set_item(key, py_vector(py, &d.c))?,
            "A" => out.set_item(key, scipy_csc(py, &d.a)?)?,
            "b" => out.set_item(key, py_vector(py, &d.lower))?,
            "A_eq" => out.set_item(key, scipy_csc(py, &d.a_eq)?)?,
            _ => out.set_item(key, py_vector(py, &d.b_eq))?,
        }
    }
    Ok(out)
}

/// `QuadraticLayer.surrogate` on the sparse layer: the dense layer's dict for `kind`
/// (`"contrastive"`, `"linearized"`, `"centered"`) from [`SparseQuadraticLayer::surrogate`],
/// [`SparseQuadraticLayer::linearized`] and [`SparseQuadraticLayer::centered`], with Prop. 3's
/// band for `"contrastive"` from [`SparseQuadraticLayer::band`].
pub(crate) fn sparse_surrogate_dict<'py>(
    py: Python<'py>,
    (layer, theta): (&SparseQuadraticLayer, &DVector<f64>),
    (loss, beta): (&Loss, f64),
    kind: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let err = |e: Error| super::convert::to_pyerr(py, e);
    if !matches!(kind, "contrastive" | "linearized" | "centered") {
        let why =
            format!("unknown surrogate `{kind}` (expected contrastive, linearized or centered)");
        return Err(err(Error::input("kind", why)));
    }
    let d = PyDict::new(py);
    d.set_item("kind", kind)?;
    d.set_item("beta", beta)?;
    let solution = super::convert::detached(py, || layer.solve_one(theta))?;
    if kind == "centered" {
        let c = super::convert::detached(py, || layer.centered(&solution, theta, (loss, beta)))?;
        d.set_item("value", py.None())?;
        d.set_item("grad_theta", py_vector(py, &c.grad_theta))?;
        d.set_item("z_hat", py_vector(py, &c.z_plus))?;
        d.set_item("z_minus", py_vector(py, &c.z_minus))?;
        d.set_item("residual", c.residual)?;
        return Ok(d);
    }
    let (s, band) = super::convert::detached(py, || match kind {
        "contrastive" => {
            let s = layer.surrogate(&solution, theta, (loss, beta))?;
            let band = layer.band(&solution, &s, loss)?;
            Ok((s, band))
        }
        _ => Ok((layer.linearized(&solution, theta, (loss, beta))?, None)),
    })?;
    d.set_item("value", s.value)?;
    d.set_item("grad_theta", py_vector(py, &s.grad_theta))?;
    d.set_item("z_star", py_vector(py, solution.z()))?;
    d.set_item("z_hat", py_vector(py, &s.z_hat))?;
    d.set_item("rate", py_vector(py, &s.rate))?;
    set_band(&d, band)?;
    d.set_item("residual", s.residual)?;
    Ok(d)
}

/// Prop. 3's band as a surrogate dict's `bound_lower`, `bound_upper`, `bound_nu` (`None`
/// without a band).
pub(crate) fn set_band(
    d: &Bound<'_, PyDict>,
    band: Option<crate::surrogate::Band>,
) -> PyResult<()> {
    d.set_item("bound_lower", band.map(|b| b.lower))?;
    d.set_item("bound_upper", band.map(|b| b.upper))?;
    d.set_item("bound_nu", band.map(|b| b.nu))
}
