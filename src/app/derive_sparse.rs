//! `bilevel derive` with sparse data: the layer of [`super::derive`] (`E(z; θ) = ½zᵀQz −
//! zᵀ(Bθ + c)` s.t. `Az ≥ b`, `A_eq z = b_eq`) with any of `Q`, `A`, `A_eq` given as
//! ```json
//! {"shape": [rows, cols], "triplets": [[i, j, value], ...]}
//! ```
//! (zero-based indices; repeated positions are summed), solved and differentiated on the sparse
//! path ([`crate::layer::solve_sparse`]: nothing `n × n` is formed). The other fields are those
//! of [`super::derive`] (`B` and `theta` dense, `loss` linear, squared or by its gradient,
//! `gradients`), and the output carries the same limit entries: `z_star`, `multipliers`,
//! `multipliers_eq`, `constraints`, `branches`, `loss`, `z_dot`, `grad_theta`, `method`,
//! `residual` (the larger of `z*`'s and Eq. 17's, as on the dense path), `condition` (of the
//! system that determined `ż`, as on the dense path), `solver`,
//! `jvp` for a `direction` instead of a loss, and `grad_*` for the data asked for, `grad_Q`,
//! `grad_A`, `grad_A_eq` in the triplet form on the data's own patterns (the gradient with
//! respect to the stored values; [`crate::layer::SparseQuadraticLayer::derive`] computes them
//! all, `B` with every entry stored), `iterations`, `dependent_constraints` and
//! `dependent_equalities` of the solve, and per β a `surrogates` entry (`sparse_surrogates`:
//! Def. 1's `z_hat`, `value`, `grad_theta` and Def. 2's `linearized_value`,
//! `linearized_grad_theta`, from the sparse offset problem; Prop. 3's `bound_lower`,
//! `bound_upper` with `bound_nu` a certified lower bound of `λ_min(Q)` within `1/64` of it,
//! where the dense path has `λ_min(Q)` itself, so the sparse `bound_upper` is at most about
//! `1/64` of the band's width above the dense one). A batch of `theta`s answers as the dense
//! batch does: an array in order, each item its output or `{"error": ...}` (solved on up to two
//! threads).

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use super::derive::{LossSpec, Request, SurrogateOut, ThetaSpec};
use crate::error::{check_computed, Error, Result};
use crate::layer::{SparseLayerDerivative, SparseQpSolution, SparseQuadraticLayer};
use crate::linalg::{csc_from_triplets, Csc};
use crate::problem::Loss;
use crate::solve::qp::Tolerances;

/// A matrix in the JSON: an array of rows, or the sparse triplet form (module docs).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MatrixSpec {
    /// `{"shape": [rows, cols], "triplets": [[i, j, v], …]}`.
    Sparse {
        /// `[rows, cols]`.
        shape: [usize; 2],
        /// `[i, j, value]` entries (`i`, `j` whole numbers).
        triplets: Vec<[f64; 3]>,
    },
    /// Rows.
    Dense(Vec<Vec<f64>>),
}

/// What `bilevel derive` answers for a request: with any of `Q`, `A`, `A_eq` in the sparse
/// form, [`derive_sparse_json`]; otherwise [`super::derive::derive_json`].
///
/// # Errors
/// Malformed JSON; the errors of the path taken.
pub fn derive_request(text: &str) -> Result<serde_json::Value> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::input("problem JSON", e.to_string()))?;
    let sparse = ["Q", "A", "A_eq"]
        .iter()
        .any(|k| value.get(k).is_some_and(|m| m.is_object()));
    if sparse {
        derive_sparse_json(value)
    } else {
        super::derive::derive_json(text)
    }
}

/// The sparse derive input (module docs); unknown fields are rejected.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
struct SparseInput {
    Q: MatrixSpec,
    c: Vec<f64>,
    B: Option<Vec<Vec<f64>>>,
    theta: Option<ThetaSpec>,
    A: Option<MatrixSpec>,
    b: Option<Vec<f64>>,
    A_eq: Option<MatrixSpec>,
    b_eq: Option<Vec<f64>>,
    loss: Option<LossSpec>,
    betas: Option<Vec<f64>>,
    direction: Option<Vec<f64>>,
    gradients: Option<Vec<String>>,
}

/// The sparse derive output (module docs).
#[derive(Debug, Clone, Serialize)]
pub struct SparseDeriveOutput {
    z_star: Vec<f64>,
    multipliers: Vec<f64>,
    multipliers_eq: Vec<f64>,
    constraints: Vec<&'static str>,
    branches: Vec<Option<crate::prox::Branch>>,
    loss: f64,
    z_dot: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jvp: Option<Vec<f64>>,
    grad_theta: Vec<f64>,
    method: String,
    residual: f64,
    condition: f64,
    solver: &'static str,
    iterations: usize,
    dependent_constraints: Vec<usize>,
    dependent_equalities: Vec<usize>,
    surrogates: Vec<SurrogateOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loss_note: Option<&'static str>,
    #[serde(flatten)]
    data_gradients: std::collections::BTreeMap<String, serde_json::Value>,
}

/// `field` as a sparse matrix with `cols` columns (`None`: no rows).
fn matrix(field: &str, spec: Option<&MatrixSpec>, cols: usize) -> Result<Csc> {
    let entries: Vec<(usize, usize, f64)> = match spec {
        None => return csc_from_triplets(0, cols, &[]),
        Some(MatrixSpec::Dense(rows)) => {
            if let Some((i, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != cols) {
                return Err(Error::dim(
                    format!("{field}[{i}] (row length)"),
                    cols,
                    row.len(),
                ));
            }
            let dense = DMatrix::from_fn(rows.len(), cols, |i, j| rows[i][j]);
            return Ok(crate::linalg::csc_from_dense(&dense));
        }
        Some(MatrixSpec::Sparse { shape, triplets }) => {
            if shape[1] != cols {
                return Err(Error::dim(
                    format!("{field}.shape (columns)"),
                    cols,
                    shape[1],
                ));
            }
            let index = |v: f64| (v.fract() == 0.0 && v >= 0.0).then_some(v as usize);
            (triplets.iter().enumerate())
                .map(|(t, &[i, j, v])| match (index(i), index(j)) {
                    (Some(i), Some(j)) => Ok((i, j, v)),
                    _ => Err(Error::input(
                        format!("{field}.triplets[{t}]"),
                        format!("[{i}, {j}] are not whole, non-negative indices"),
                    )),
                })
                .collect::<Result<_>>()?
        }
    };
    let rows = match spec {
        Some(MatrixSpec::Sparse { shape, .. }) => shape[0],
        _ => 0,
    };
    csc_from_triplets(rows, cols, &entries).map_err(|e| match e {
        Error::InvalidInput { reason, .. } => Error::input(field, reason),
        Error::NonFinite { .. } => Error::NonFinite { what: field.into() },
        other => other,
    })
}

/// The triplet form of a matrix.
fn triplets(a: &Csc) -> serde_json::Value {
    let mut out = Vec::with_capacity(a.val().len());
    crate::linalg::for_each_entry(a, |i, j, v| out.push(serde_json::json!([i, j, v])));
    serde_json::json!({"shape": [a.nrows(), a.ncols()], "triplets": out})
}

/// Runs a sparse derive request (module docs) and returns its JSON answer.
///
/// # Errors
/// Malformed JSON or data, naming the field; the sparse layer's errors (for one `θ`; a batch,
/// as the dense [`super::derive::derive_json`], answers per item and fails as a whole only on
/// bad input).
pub fn derive_sparse_json(value: serde_json::Value) -> Result<serde_json::Value> {
    let input: SparseInput = serde_json::from_value(value)
        .map_err(|e| Error::input("problem JSON (sparse)", e.to_string()))?;
    let parsed = parse(input)?;
    let to_json = |out: SparseDeriveOutput| {
        serde_json::to_value(out).map_err(|e| Error::input("output", e.to_string()))
    };
    if !parsed.batch {
        let sol = parsed.layer.solve_one(&parsed.thetas[0])?;
        return to_json(derive_one(&parsed, &parsed.thetas[0], &sol)?);
    }
    let threads = crate::linalg::Threads::default_count();
    let solutions = parsed.layer.solve(&parsed.thetas, threads);
    let items = (parsed.thetas.iter().zip(solutions))
        .map(|(theta, sol)| {
            sol.and_then(|sol| derive_one(&parsed, theta, &sol))
                .and_then(to_json)
                .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
        })
        .collect();
    Ok(serde_json::Value::Array(items))
}

/// `Q` square `n × n`, and each row block as long as its right-hand side, named as in the
/// request (the layer below would name them in its own convention).
fn check_shapes(input: &SparseInput, (q, a, a_eq): (&Csc, &Csc, &Csc), n: usize) -> Result<()> {
    if q.nrows() != n {
        return Err(Error::dim(
            "Q",
            format!("{n} x {n} (c has {n} entries)"),
            format!("{} x {n}", q.nrows()),
        ));
    }
    let len = |v: &Option<Vec<f64>>| v.as_ref().map_or(0, Vec::len);
    for (name, rows, rhs) in [
        ("A, b", a.nrows(), len(&input.b)),
        ("A_eq, b_eq", a_eq.nrows(), len(&input.b_eq)),
    ] {
        if rows != rhs {
            return Err(Error::dim(name, format!("{rhs} rows"), rows));
        }
    }
    Ok(())
}

/// The request's `θ`s (one, the zero vector when absent, or a batch) checked against `B`'s
/// columns, and whether they were a batch.
fn thetas_of(input: &SparseInput, p: usize) -> Result<(Vec<DVector<f64>>, bool)> {
    let check = |t: &[f64], name: &str| {
        if t.len() != p {
            return Err(Error::dim(name, p, t.len()));
        }
        crate::error::check_finite(name, t.iter())?;
        Ok(DVector::from_column_slice(t))
    };
    match &input.theta {
        None => Ok((vec![DVector::zeros(p)], false)),
        Some(ThetaSpec::One(t)) => Ok((vec![check(t, "theta")?], false)),
        Some(ThetaSpec::Batch(items)) => {
            let named = items.iter().enumerate();
            let thetas = named.map(|(i, t)| check(t, &format!("theta[{i}]")));
            Ok((thetas.collect::<Result<_>>()?, true))
        }
    }
}

/// The request's layer (`B` with every entry stored, so that `grad_B` is dense, as `B` is in
/// the request), and `B` as given.
fn layer_of(input: &SparseInput) -> Result<(SparseQuadraticLayer, DMatrix<f64>)> {
    let n = input.c.len();
    let q = matrix("Q", Some(&input.Q), n)?;
    let b_mat = match &input.B {
        Some(rows) => super::derive::dense_rows("B", rows, n)?,
        None => DMatrix::zeros(n, 0),
    };
    let a = matrix("A", input.A.as_ref(), n)?;
    let a_eq = matrix("A_eq", input.A_eq.as_ref(), n)?;
    check_shapes(input, (&q, &a, &a_eq), n)?;
    let every: Vec<_> = (0..b_mat.ncols())
        .flat_map(|j| (0..n).map(move |i| (i, j)))
        .map(|(i, j)| (i, j, b_mat[(i, j)]))
        .collect();
    let b = csc_from_triplets(n, b_mat.ncols(), &every).map_err(|e| match e {
        Error::NonFinite { .. } => Error::NonFinite { what: "B".into() },
        other => other,
    })?;
    let vector = |v: &Option<Vec<f64>>| DVector::from_vec(v.clone().unwrap_or_default());
    let layer = SparseQuadraticLayer::new(
        q,
        (b, DVector::from_column_slice(&input.c)),
        (a, vector(&input.b)),
        Some((a_eq, vector(&input.b_eq))),
        Tolerances::default(),
    )?;
    Ok((layer, b_mat))
}

/// The `grad_*` entries asked for, in the request's form (module docs).
fn gradients_json(
    names: &[String],
    d: &SparseLayerDerivative,
) -> Result<std::collections::BTreeMap<String, serde_json::Value>> {
    let to_vec = |v: &DVector<f64>| v.as_slice().to_vec();
    let mut out = std::collections::BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let value = match name.as_str() {
            "Q" => triplets(&d.q),
            "A" => triplets(&d.a),
            "A_eq" => triplets(&d.a_eq),
            "c" => serde_json::json!(to_vec(&d.c)),
            "b" => serde_json::json!(to_vec(&d.lower)),
            "b_eq" => serde_json::json!(to_vec(&d.b_eq)),
            "B" => {
                let gb = crate::linalg::csc_to_dense(&d.b);
                let rows: Vec<Vec<f64>> =
                    gb.row_iter().map(|r| r.iter().copied().collect()).collect();
                serde_json::json!(rows)
            }
            other => {
                return Err(Error::input(
                    format!("gradients[{i}]"),
                    format!("unknown datum `{other}`"),
                ))
            }
        };
        out.insert(format!("grad_{name}"), value);
    }
    Ok(out)
}

/// Def. 1's and Def. 2's surrogates at each β on the sparse layer
/// ([`SparseQuadraticLayer::surrogate`], [`SparseQuadraticLayer::linearized`]) as the dense
/// derive's `surrogates` entries, with Prop. 3's band ([`SparseQuadraticLayer::band`]: `ν` a
/// certified lower bound of `λ_min(Q)`).
///
/// # Errors
/// The surrogates' errors.
pub(crate) fn sparse_surrogates(
    (layer, sol): (&SparseQuadraticLayer, &SparseQpSolution),
    theta: &DVector<f64>,
    loss: &Loss,
    betas: &[f64],
) -> Result<Vec<SurrogateOut>> {
    (betas.iter())
        .map(|&beta| {
            let s = layer.surrogate(sol, theta, (loss, beta))?;
            let lin = layer.linearized(sol, theta, (loss, beta))?;
            let band = layer.band(sol, &s, loss)?;
            Ok(SurrogateOut::of(
                beta,
                (&s.z_hat, s.value, &s.grad_theta),
                (lin.value, &lin.grad_theta),
                band,
            ))
        })
        .collect()
}

/// A parsed sparse request: the layer, its `θ`s, and what to answer for each.
struct Parsed {
    layer: SparseQuadraticLayer,
    thetas: Vec<DVector<f64>>,
    batch: bool,
    loss: Loss,
    betas: Vec<f64>,
    /// The data whose gradients are asked for.
    names: Vec<String>,
    /// `Request`'s flags for the loss note.
    request: Request,
}

/// The data a sparse request may ask gradients of (`gradients`).
const GRADIENT_NAMES: [&str; 7] = ["Q", "B", "c", "A", "b", "A_eq", "b_eq"];

/// Checks the whole request before any solve (a batch then fails as a whole only here).
fn parse(input: SparseInput) -> Result<Parsed> {
    let (layer, b_mat) = layer_of(&input)?;
    let (thetas, batch) = thetas_of(&input, b_mat.ncols())?;
    let loss = super::derive::loss_of(
        input.loss.clone(),
        input.direction.as_deref(),
        input.B.is_some().then_some(&b_mat),
        b_mat.ncols(),
    )?;
    let betas = input.betas.clone().unwrap_or_default();
    Request {
        betas: betas.clone(),
        ..Request::default()
    }
    .validate()?;
    let names = input.gradients.clone().unwrap_or_default();
    if let Some((i, name)) =
        (names.iter().enumerate()).find(|(_, n)| !GRADIENT_NAMES.contains(&n.as_str()))
    {
        return Err(Error::input(
            format!("gradients[{i}]"),
            format!("unknown datum `{name}`"),
        ));
    }
    let request = Request {
        jvp: input.direction.is_some(),
        gradient_loss: matches!(input.loss, Some(LossSpec::Gradient { .. })),
        ..Request::default()
    };
    Ok(Parsed {
        layer,
        thetas,
        batch,
        loss,
        betas,
        names,
        request,
    })
}

/// The answer for one `θ` and its solution.
fn derive_one(
    p: &Parsed,
    theta: &DVector<f64>,
    sol: &SparseQpSolution,
) -> Result<SparseDeriveOutput> {
    let d = p.layer.derive(sol, theta, &p.loss)?;
    let (lambda, lambda_eq) = sol.multipliers();
    let to_vec = |v: &DVector<f64>| v.as_slice().to_vec();
    let out = SparseDeriveOutput {
        z_star: to_vec(sol.z()),
        multipliers: to_vec(lambda),
        multipliers_eq: to_vec(lambda_eq),
        constraints: d.status.activity.iter().map(|a| a.label()).collect(),
        branches: d.status.branches.clone(),
        loss: d.loss,
        jvp: p.request.jvp.then(|| to_vec(&d.z_dot)),
        z_dot: to_vec(&d.z_dot),
        grad_theta: to_vec(&d.grad_theta),
        method: d.method.to_string(),
        residual: d.residual,
        condition: d.condition,
        solver: d.status.solver,
        iterations: d.status.iterations,
        dependent_constraints: sol.dependent().to_vec(),
        dependent_equalities: sol.dependent_equalities().to_vec(),
        surrogates: sparse_surrogates((&p.layer, sol), theta, &p.loss, &p.betas)?,
        loss_note: p.request.loss_note(),
        data_gradients: gradients_json(&p.names, &d)?,
    };
    check_computed("z_star", &out.z_star)?;
    check_computed("z_dot", &out.z_dot)?;
    check_computed("loss", [&out.loss])?;
    check_computed("condition", [&out.condition])?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::derive_request as derive_json;
    use serde_json::{json, Value};

    /// A layer with a strongly active, a weakly active (exact tie) and an inactive row, as
    /// arrays of rows; the same with `Q`, `A`, `A_eq` as triplets.
    fn requests() -> (Value, Value) {
        let dense = json!({
            "Q": [[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]],
            "c": [1.0, 0.25, -1.0], "B": [[1.0], [0.0], [0.5]], "theta": [0.5],
            "A": [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]], "b": [-0.5, 0.0, -3.0],
            "A_eq": [[0.0, 0.0, 1.0]], "b_eq": [0.5],
            "loss": {"kind": "linear", "g": [1.0, -1.0, 0.5]},
            "gradients": ["Q", "B", "c", "A", "b", "A_eq", "b_eq"]
        });
        let triplets = |m: &Value| {
            let rows = m.as_array().unwrap();
            let cols = rows[0].as_array().unwrap().len();
            let mut t = Vec::new();
            for (i, r) in rows.iter().enumerate() {
                for (j, v) in r.as_array().unwrap().iter().enumerate() {
                    if v.as_f64().unwrap() != 0.0 {
                        t.push(json!([i, j, v]));
                    }
                }
            }
            json!({"shape": [rows.len(), cols], "triplets": t})
        };
        let mut sparse = dense.clone();
        for k in ["Q", "A", "A_eq"] {
            sparse[k] = triplets(&dense[k]);
        }
        (dense, sparse)
    }

    fn numbers(v: &Value) -> Vec<f64> {
        match v {
            Value::Array(a) => a.iter().flat_map(numbers).collect(),
            Value::Number(x) => vec![x.as_f64().unwrap()],
            _ => vec![],
        }
    }

    #[test]
    fn triplets_give_the_dense_answer_on_both_branches() {
        for (g1, branch) in [(-1.0, "stays"), (1.0, "leaves")] {
            let (mut dense, mut sparse) = requests();
            for r in [&mut dense, &mut sparse] {
                r["loss"]["g"][1] = json!(g1);
            }
            same_answer(&dense, &sparse);
            let s = derive_json(&sparse.to_string()).unwrap();
            assert_eq!(s["branches"][1], json!(branch), "{s}");
        }
    }

    fn same_answer(dense: &Value, sparse: &Value) {
        let d = derive_json(&dense.to_string()).unwrap();
        let s = derive_json(&sparse.to_string()).unwrap();
        assert_eq!(
            s["constraints"],
            json!(["strong", "weak", "inactive"]),
            "{s}"
        );
        assert_eq!(s["constraints"], d["constraints"]);
        assert_eq!(s["branches"], d["branches"]);
        for key in [
            "z_star",
            "multipliers",
            "multipliers_eq",
            "z_dot",
            "grad_theta",
            "loss",
            "grad_B",
            "grad_c",
            "grad_b",
            "grad_b_eq",
        ] {
            let (a, b) = (numbers(&s[key]), numbers(&d[key]));
            assert_eq!(a.len(), b.len(), "{key}");
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-12, "{key}: {x} vs {y}");
            }
        }
        // The same matrix's condition (its dimension is under Lanczos' 16 steps: exact).
        let (cs, cd) = (
            s["condition"].as_f64().unwrap(),
            d["condition"].as_f64().unwrap(),
        );
        assert!(
            cs.is_finite() && (cs - cd).abs() <= 1e-9 * cd,
            "condition {cs} vs {cd}"
        );
        // The matrices' gradients on their patterns equal the dense gradients there.
        for key in ["grad_Q", "grad_A", "grad_A_eq"] {
            for t in s[key]["triplets"].as_array().unwrap() {
                let (i, j, v) = (
                    t[0].as_u64().unwrap() as usize,
                    t[1].as_u64().unwrap() as usize,
                    t[2].as_f64().unwrap(),
                );
                let want = d[key][i][j].as_f64().unwrap();
                assert!((v - want).abs() < 1e-12, "{key}[{i}][{j}]: {v} vs {want}");
            }
        }
    }

    /// `betas` on triplets: Def. 1's and Def. 2's entries of the dense derive (both losses,
    /// both branches, β small and large); Prop. 3's band with `ν` at most `1/64` below the
    /// dense path's `λ_min(Q)`, never above it, the same lower side and an upper side at most
    /// `1/64` of the width wider; `iterations` as the dense output has it.
    #[test]
    fn betas_give_the_dense_surrogates_and_the_band() {
        for (g1, squared) in [(-1.0, false), (1.0, false), (1.0, true)] {
            let (mut dense, mut sparse) = requests();
            for r in [&mut dense, &mut sparse] {
                r["loss"] = match squared {
                    false => json!({"kind": "linear", "g": [g1, -1.0, 0.5]}),
                    true => json!({"kind": "squared", "target": [0.0, 1.0, 0.0]}),
                };
                r["betas"] = json!([1e-7, 0.3, 4.0]);
            }
            let d = derive_json(&dense.to_string()).unwrap();
            let s = derive_json(&sparse.to_string()).unwrap();
            assert!(s["iterations"].is_u64() && d["iterations"].is_u64());
            let (ds, ss) = (
                d["surrogates"].as_array().unwrap(),
                s["surrogates"].as_array(),
            );
            assert_eq!(ss.unwrap().len(), 3);
            for (a, b) in ss.unwrap().iter().zip(ds) {
                for key in [
                    "beta",
                    "z_hat",
                    "value",
                    "grad_theta",
                    "linearized_value",
                    "linearized_grad_theta",
                ] {
                    let (x, y) = (numbers(&a[key]), numbers(&b[key]));
                    assert!(!x.is_empty() && x.len() == y.len(), "{key}");
                    for (x, y) in x.iter().zip(&y) {
                        assert!((x - y).abs() < 1e-12 * (1.0 + y.abs()), "{key}: {x} {y}");
                    }
                }
                let nu = |x: &serde_json::Value| x["bound_nu"].as_f64().unwrap();
                assert!(
                    nu(a) <= nu(b) && nu(a) >= nu(b) * (1.0 - 1.0 / 64.0),
                    "{a} {b}"
                );
                let side = |x: &serde_json::Value, key: &str| x[key].as_f64().unwrap();
                let (lower, upper) = (side(b, "bound_lower"), side(b, "bound_upper"));
                assert_eq!(side(a, "bound_lower"), side(a, "value"));
                assert!((side(a, "bound_lower") - lower).abs() < 1e-12 * (1.0 + lower.abs()));
                let width = upper - lower;
                let extra = side(a, "bound_upper") - upper;
                assert!(extra >= -1e-12 * (1.0 + upper.abs()), "{a} {b}");
                assert!(
                    extra <= width / 60.0 + 1e-12 * (1.0 + upper.abs()),
                    "{a} {b}"
                );
            }
        }
    }

    #[test]
    fn a_direction_gives_the_dense_jvp_on_both_branches() {
        for v in [1.0, -1.0] {
            let (mut dense, mut sparse) = requests();
            for r in [&mut dense, &mut sparse] {
                r.as_object_mut().unwrap().remove("loss");
                r["direction"] = json!([v]);
            }
            let d = derive_json(&dense.to_string()).unwrap();
            let s = derive_json(&sparse.to_string()).unwrap();
            assert!(s["loss_note"] == d["loss_note"] && d["loss_note"].is_string());
            assert_eq!(s["branches"], d["branches"]);
            for key in ["jvp", "z_dot", "grad_theta", "loss", "grad_B", "grad_c"] {
                let (a, b) = (numbers(&s[key]), numbers(&d[key]));
                assert!(!a.is_empty() && a.len() == b.len(), "{key}");
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() < 1e-12, "{key}: {x} vs {y}");
                }
            }
        }
    }

    /// A batch of `θ`s answers, item by item and in order, what each `θ` alone answers (with
    /// `betas`), as the dense batch does; a wrong item fails the whole request naming it.
    #[test]
    fn a_batch_of_thetas_answers_each_theta_as_alone() {
        let (dense, mut sparse) = requests();
        sparse["betas"] = json!([0.01]);
        let thetas = [0.5, -2.0, 3.0];
        let mut batch = sparse.clone();
        batch["theta"] = json!(thetas.map(|t| [t]));
        let out = derive_json(&batch.to_string()).unwrap();
        let items = out.as_array().unwrap();
        assert_eq!(items.len(), 3);
        for (item, t) in items.iter().zip(thetas) {
            let mut one = sparse.clone();
            one["theta"] = json!([t]);
            assert_eq!(item, &derive_json(&one.to_string()).unwrap(), "theta {t}");
        }
        // The items differ (θ moves z*), and the dense batch agrees on z*.
        assert_ne!(items[0]["z_star"], items[1]["z_star"]);
        let mut dense_batch = dense.clone();
        dense_batch["theta"] = batch["theta"].clone();
        let d = derive_json(&dense_batch.to_string()).unwrap();
        for (a, b) in items.iter().zip(d.as_array().unwrap()) {
            for (x, y) in numbers(&a["z_star"]).iter().zip(numbers(&b["z_star"])) {
                assert!((x - y).abs() < 1e-12, "{x} {y}");
            }
        }
        batch["theta"] = json!([[0.5], [1.0, 2.0]]);
        let e = derive_json(&batch.to_string()).unwrap_err().to_string();
        assert!(e.contains("theta[1]"), "{e}");
    }

    #[test]
    fn what_the_sparse_path_lacks_or_refuses_is_an_error_naming_the_field() {
        let (_, sparse) = requests();
        let fails = |edit: &dyn Fn(&mut Value), field: &str| {
            let mut r = sparse.clone();
            edit(&mut r);
            let e = derive_json(&r.to_string()).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        };
        fails(&|r| r["betas"] = json!([0.1, 0.0]), "betas[1]");
        fails(
            &|r| r["A"]["triplets"][0] = json!([0.5, 0, 1.0]),
            "A.triplets[0]",
        );
        fails(&|r| r["A"]["triplets"][0] = json!([7, 0, 1.0]), "A");
        fails(&|r| r["b"] = json!([1.0]), "A, b");
        fails(&|r| r["Q"]["shape"] = json!([3, 2]), "Q.shape");
        fails(&|r| r["gradients"] = json!(["Z"]), "gradients[0]");
        fails(&|r| r["direction"] = json!([1.0]), "direction");
        fails(&|r| r["B"] = json!([[1.0], [0.0]]), "B");
        fails(&|r| r["extra"] = json!(1), "extra");
    }
}
