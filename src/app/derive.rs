//! `bilevel derive`: derivatives of the standard constrained quadratic layer, JSON in, JSON out.
//!
//! Input (matrices are arrays of rows; `Q`, `A`, `A_eq` may also be sparse triplets,
//! `{"shape": [r, c], "triplets": [[i, j, v], …]}`, which `bilevel derive` answers on the sparse
//! path: [`super::derive_sparse`]):
//! ```json
//! {"Q": [[..]], "c": [..], "B": [[..]], "theta": [..], "A": [[..]], "b": [..],
//!  "A_eq": [[..]], "b_eq": [..], "loss": {"kind": "linear", "g": [..]}, "betas": [..]}
//! ```
//! describes `E(z; θ) = ½zᵀQz − zᵀ(Bθ + c)` s.t. `Az ≥ b`, `A_eq z = b_eq` and `ℓ(z) = gᵀz`
//! (`{"kind": "squared", "target": [..]}` for `ℓ = ½‖z − t‖²`). `B` defaults to `n × 0`,
//! `theta` to zeros, the constraints to none, `betas` to `[]`, `gradients` to `[]`. Unknown
//! fields are rejected.
//!
//! **A JVP instead of a loss**: `"direction": v` (length `p`, in place of `"loss"`) asks for
//! the one-sided directional derivative of `z*` along `θ + t v`, `t → 0⁺`, returned as `jvp`
//! (with the branch taken at each weakly active constraint in `branches`). It is computed as the
//! Prop. 2 limit for the linear loss `g = −Bv` — a step `t v` in θ adds `−t (Bv)ᵀz` to `E` —
//! so `z_dot` equals `jvp`, and `loss`, `grad_theta` and the surrogates refer to that `g` (the
//! output says so in `loss_note`). At a
//! tie the JVP is one-sided: `jvp(−v) ≠ −jvp(v)` in general (Prop. 2).
//!
//! **A loss given by its gradient**: `{"kind": "gradient", "g": [..]}` is what a framework's
//! backward pass has, `ℓ'(z*)` only. `z_dot` and `grad_theta` depend on nothing else (Prop. 2);
//! `loss` is then `gᵀz*`, the surrogates are Def. 2's linearization (Eq. 36-37; `value` equals
//! `linearized_value`), and the output says so in `loss_note`.
//!
//! **A batch**: `"theta": [[..], [..], …]` (a list of vectors) answers for each `θ` on the same
//! layer — one factorization for all — with a JSON array of outputs in the same order, an item
//! that fails being `{"error": message}` ([`derive_json`]).
//!
//! **Gradients with respect to the data**: `"gradients": ["Q", "B", "c", "A", "b", "A_eq",
//! "b_eq"]` (any subset) adds `grad_Q`, `grad_B`, … to the output, shaped like the data,
//! one-sided at weakly active rows like `grad_theta` ([`QuadraticProblem::data_gradients`]).
//!
//! Output: `z_star`, `multipliers`, `multipliers_eq`, `constraints` (`strong` / `weak` /
//! `inactive` per inequality), `condition` (of the system that determined `ż`), `loss` (`L(θ)`),
//! `z_dot` (`dẑ/dβ` at `0⁺`, Prop. 1/2), `grad_theta` (Cor. 1), and per β a `surrogates` entry
//! with `z_hat`, `value` and `grad_theta` (Def. 1), `linearized_value` and
//! `linearized_grad_theta` (Def. 2), and Prop. 3's `bound_lower` / `bound_upper` with the
//! `bound_nu` (ν) they used. Diagnostics beyond that contract: `branches` (per inequality:
//! `stays` / `leaves` for weakly active ones,
//! `null` otherwise), `method`, `residual` (KKT residual of `z*` and of the direction QP), `solver`.

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use crate::error::{check_beta, check_computed, Error, Result};
use crate::problem::{InnerProblem, LinearConstraints, Loss, QuadraticProblem};
use crate::prox::Branch;
use crate::surrogate::{Band, Bilevel};

/// The loss of a derive problem.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LossSpec {
    /// `ℓ(z) = gᵀz`.
    Linear {
        /// `g`.
        g: Vec<f64>,
    },
    /// `ℓ(z) = ½‖z − t‖²`.
    Squared {
        /// `t`.
        target: Vec<f64>,
    },
    /// Only the loss gradient `ℓ'(z*) = g` is known (what a framework's backward pass has):
    /// the limit derivatives are those of any loss with this gradient; the finite-β
    /// surrogates are Def. 2's linearization (Eq. 36-37), and `loss` is `gᵀz*`.
    Gradient {
        /// `ℓ'(z*)`.
        g: Vec<f64>,
    },
}

/// The data `"gradients"` may ask for.
const DATA: [&str; 7] = ["Q", "B", "c", "A", "b", "A_eq", "b_eq"];

/// The input of `bilevel derive` (see the module docs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct DeriveInput {
    /// `Q`, `n × n` symmetric positive definite.
    pub Q: Vec<Vec<f64>>,
    /// `c`, length `n`.
    pub c: Vec<f64>,
    /// `B`, `n × p`.
    pub B: Option<Vec<Vec<f64>>>,
    /// `θ`, length `p`, or a batch of them.
    pub theta: Option<ThetaSpec>,
    /// `A`, `m × n`.
    pub A: Option<Vec<Vec<f64>>>,
    /// `b`, length `m`.
    pub b: Option<Vec<f64>>,
    /// `A_eq`, `k × n`.
    pub A_eq: Option<Vec<Vec<f64>>>,
    /// `b_eq`, length `k`.
    pub b_eq: Option<Vec<f64>>,
    /// The loss (exactly one of `loss` and `direction`).
    pub loss: Option<LossSpec>,
    /// A θ-direction `v` for a JVP (module docs).
    pub direction: Option<Vec<f64>>,
    /// Spacing parameters for the finite-β surrogates.
    pub betas: Option<Vec<f64>>,
    /// Data to return the gradient of `L` for (any of `Q`, `B`, `c`, `A`, `b`, `A_eq`,
    /// `b_eq`): `grad_Q`, … in the output.
    pub gradients: Option<Vec<String>>,
}

/// `"theta"`: one parameter vector, or a list of them (a batch on the same layer).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ThetaSpec {
    /// `θ`.
    One(Vec<f64>),
    /// One `θ` per item.
    Batch(Vec<Vec<f64>>),
}

/// One finite-β entry of the output.
#[derive(Debug, Clone, Serialize)]
pub struct SurrogateOut {
    /// β.
    pub beta: f64,
    /// `ẑ_β` (Eq. 6).
    pub z_hat: Vec<f64>,
    /// `L^β(θ)` (Eq. 5).
    pub value: f64,
    /// Eq. 10.
    pub grad_theta: Vec<f64>,
    /// Eq. 37.
    pub linearized_value: f64,
    /// Def. 2's gradient.
    pub linearized_grad_theta: Vec<f64>,
    /// Prop. 3 lower bound (`L^β`).
    pub bound_lower: Option<f64>,
    /// Prop. 3 upper bound.
    pub bound_upper: Option<f64>,
    /// The strong-convexity constant `ν = λ_min(Q)` the Prop. 3 band used (on the sparse path a
    /// certified lower bound of it).
    pub bound_nu: Option<f64>,
}

impl SurrogateOut {
    /// The entry at `β` from Def. 1's `(ẑ_β, L^β, ∇_θL^β)`, Def. 2's `(value, gradient)` and
    /// Prop. 3's band.
    pub(crate) fn of(
        beta: f64,
        (z_hat, value, grad_theta): (&DVector<f64>, f64, &DVector<f64>),
        (linearized_value, linearized_grad): (f64, &DVector<f64>),
        band: Option<Band>,
    ) -> Self {
        let to_vec = |v: &DVector<f64>| v.as_slice().to_vec();
        SurrogateOut {
            beta,
            z_hat: to_vec(z_hat),
            value,
            grad_theta: to_vec(grad_theta),
            linearized_value,
            linearized_grad_theta: to_vec(linearized_grad),
            bound_lower: band.map(|b| b.lower),
            bound_upper: band.map(|b| b.upper),
            bound_nu: band.map(|b| b.nu),
        }
    }
}

/// The output of `bilevel derive` (see the module docs).
#[derive(Debug, Clone, Serialize)]
pub struct DeriveOutput {
    /// `z*`.
    pub z_star: Vec<f64>,
    /// Inequality multipliers.
    pub multipliers: Vec<f64>,
    /// Equality multipliers.
    pub multipliers_eq: Vec<f64>,
    /// `strong` / `weak` / `inactive` per inequality.
    pub constraints: Vec<&'static str>,
    /// Branch per inequality (weakly active only).
    pub branches: Vec<Option<Branch>>,
    /// Active inequalities linearly dependent on the others (LICQ fails; multipliers 0).
    pub dependent_constraints: Vec<usize>,
    /// Equality rows that are combinations of the others with consistent right-hand sides
    /// (left out of the solve; multipliers 0).
    pub dependent_equalities: Vec<usize>,
    /// Condition estimate of the system that determined `ż`.
    pub condition: f64,
    /// `L(θ)`.
    pub loss: f64,
    /// `dẑ/dβ` at `0⁺`.
    pub z_dot: Vec<f64>,
    /// The one-sided JVP of `z*` along the input's `direction` (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jvp: Option<Vec<f64>>,
    /// Cor. 1 gradient.
    pub grad_theta: Vec<f64>,
    /// Which result produced `ż`.
    pub method: String,
    /// Max of the KKT residuals of `z*` and of the direction problem.
    pub residual: f64,
    /// QP backend.
    pub solver: &'static str,
    /// Its iterations for `z*` (with the exact refinement's repairs).
    pub iterations: usize,
    /// One entry per β.
    pub surrogates: Vec<SurrogateOut>,
    /// Said when the loss was given by its gradient only (`{"kind": "gradient"}`), or replaced
    /// by the `g = −Bv` of a JVP request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_note: Option<&'static str>,
    /// The gradients of `L` asked for by `"gradients"`, by datum (`grad_Q`, `grad_B`, …;
    /// matrices as arrays of rows), one-sided at weakly active rows
    /// ([`QuadraticProblem::data_gradients`]).
    #[serde(flatten)]
    pub data_gradients: std::collections::BTreeMap<String, serde_json::Value>,
}

/// What `loss_note` says for a JVP request (`"direction": v`).
pub const JVP_LOSS_NOTE: &str = "a direction v was given: jvp (= z_dot) is the one-sided \
     derivative of z* along theta + t v; loss, grad_theta and the surrogates are those of the \
     linear loss g = -Bv that defines it, not of a loss of yours";

/// What `loss_note` says for a loss given by its gradient.
pub const GRADIENT_LOSS_NOTE: &str =
    "only the loss gradient g was given: loss is g^T z*, z_dot and \
     grad_theta are those of every loss with this gradient at z*, and the surrogates are Def. 2's \
     linearization (value = linearized_value)";

fn matrix(field: &str, rows: &[Vec<f64>], cols: Option<usize>) -> Result<DMatrix<f64>> {
    let ncols = cols.unwrap_or_else(|| rows.first().map_or(0, Vec::len));
    for (i, row) in rows.iter().enumerate() {
        if row.len() != ncols {
            return Err(Error::dim(
                format!("{field}[{i}] (row length)"),
                ncols,
                row.len(),
            ));
        }
    }
    Ok(DMatrix::from_fn(rows.len(), ncols, |i, j| rows[i][j]))
}

/// A dense matrix of `nrows` rows of one length (`B` of the sparse path).
///
/// # Errors
/// [`Error::DimensionMismatch`] naming the field.
pub(crate) fn dense_rows(field: &str, rows: &[Vec<f64>], nrows: usize) -> Result<DMatrix<f64>> {
    if rows.len() != nrows {
        return Err(Error::dim(format!("{field} (rows)"), nrows, rows.len()));
    }
    matrix(field, rows, None)
}

/// Parses and validates a derive problem.
///
/// # Errors
/// [`Error::InvalidInput`] for malformed JSON (the message names the field serde saw), and the
/// validation errors of [`QuadraticProblem::new`], each naming its field.
pub fn parse(text: &str) -> Result<(Bilevel<QuadraticProblem>, DVector<f64>, Vec<f64>)> {
    let p = parse_problem(text)?;
    if p.batch {
        return Err(Error::input(
            "theta",
            "a batch (a list of vectors): use derive_json, which answers per item",
        ));
    }
    let theta = p.thetas.into_iter().next().unwrap_or_default();
    Ok((Bilevel::new(p.layer, p.loss)?, theta, p.request.betas))
}

/// What a derive call asks for besides `z*`, `ż` and `dL/dθ`, and how its loss was given: the
/// part of the input that is not the layer, `θ` or the loss.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// Spacing parameters for the finite-β entries (each finite and > 0).
    pub betas: Vec<f64>,
    /// Data whose gradients to return (`"Q"`, `"B"`, `"c"`, `"A"`, `"b"`, `"A_eq"`, `"b_eq"`).
    pub gradients: Vec<String>,
    /// The loss is `g = −Bv` for a θ-direction `v`: the output carries `jvp`.
    pub jvp: bool,
    /// The loss was given by its gradient only: the output carries `loss_note`.
    pub gradient_loss: bool,
}

impl Request {
    /// The output's `loss_note`: [`JVP_LOSS_NOTE`] for a JVP, [`GRADIENT_LOSS_NOTE`] for a loss
    /// given by its gradient, else none.
    pub fn loss_note(&self) -> Option<&'static str> {
        if self.jvp {
            Some(JVP_LOSS_NOTE)
        } else {
            self.gradient_loss.then_some(GRADIENT_LOSS_NOTE)
        }
    }

    /// Checks every β (finite, > 0) and every datum name, naming the entry.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `betas[i]` or `gradients[i]`.
    pub fn validate(&self) -> Result<()> {
        for (i, &beta) in self.betas.iter().enumerate() {
            check_beta(beta).map_err(|_| {
                Error::input(
                    format!("betas[{i}]"),
                    format!("{beta} is not finite and > 0"),
                )
            })?;
        }
        for (i, name) in self.gradients.iter().enumerate() {
            if !DATA.contains(&name.as_str()) {
                return Err(Error::input(
                    format!("gradients[{i}]"),
                    format!(
                        "unknown datum `{name}` (expected any of {})",
                        DATA.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A parsed derive problem.
struct Parsed {
    layer: QuadraticProblem,
    loss: Loss,
    /// One θ, or the batch's.
    thetas: Vec<DVector<f64>>,
    /// Whether `theta` was a list of vectors.
    batch: bool,
    request: Request,
}

impl Parsed {
    /// The program on the parsed layer (borrowed: its factorization serves every `θ`).
    fn program(&self) -> Result<Bilevel<&QuadraticProblem>> {
        Bilevel::new(&self.layer, self.loss.clone())
    }
}

/// One `θ`, checked against `B`.
fn theta_of(
    t: &[f64],
    field: &str,
    p: usize,
    b: &Option<Vec<Vec<f64>>>,
    n: usize,
) -> Result<DVector<f64>> {
    if b.is_none() && !t.is_empty() {
        return Err(Error::input(
            "B",
            format!(
                "missing: {field} has {} entries, but E(z; theta) depends on theta only through \
                 B theta; give B ({n} x {})",
                t.len(),
                t.len()
            ),
        ));
    }
    if t.len() != p {
        return Err(Error::dim(field, p, t.len()));
    }
    let theta = DVector::from_column_slice(t);
    crate::error::check_finite(field, theta.iter())?;
    Ok(theta)
}

/// The loss of a problem: `loss` (a gradient `g`, a target) or, for a JVP, the linear loss
/// `g = −B v` of the `direction` `v` (length `p`; needs `B`).
pub(crate) fn loss_of(
    loss: Option<LossSpec>,
    direction: Option<&[f64]>,
    b: Option<&DMatrix<f64>>,
    p: usize,
) -> Result<Loss> {
    Ok(match (loss, direction) {
        (Some(_), Some(_)) => {
            return Err(Error::input(
                "direction",
                "give either loss (a gradient) or direction (a JVP), not both",
            ))
        }
        (None, None) => {
            return Err(Error::input(
                "loss",
                "missing (or give direction for a JVP of z* along theta + t v)",
            ))
        }
        (None, Some(v)) => {
            let Some(b) = b else {
                return Err(Error::input(
                    "B",
                    "missing: a direction moves theta, which enters E only through B theta",
                ));
            };
            if v.len() != p {
                return Err(Error::dim("direction", p, v.len()));
            }
            let v = DVector::from_column_slice(v);
            crate::error::check_finite("direction", v.iter())?;
            Loss::Linear { g: -(b * v) }
        }
        (Some(LossSpec::Linear { g }), None) | (Some(LossSpec::Gradient { g }), None) => {
            Loss::Linear {
                g: DVector::from_vec(g),
            }
        }
        (Some(LossSpec::Squared { target }), None) => Loss::Squared {
            target: DVector::from_vec(target),
        },
    })
}

fn parse_problem(text: &str) -> Result<Parsed> {
    let input: DeriveInput =
        serde_json::from_str(text).map_err(|e| Error::input("problem JSON", e.to_string()))?;
    let n = input.Q.len();
    if n == 0 {
        return Err(Error::input(
            "Q",
            "empty: the problem needs at least one variable",
        ));
    }
    let q = matrix("Q", &input.Q, Some(n))?;
    if input.c.len() != n {
        return Err(Error::dim("c", n, input.c.len()));
    }
    let b = match &input.B {
        Some(rows) => {
            if rows.len() != n {
                return Err(Error::dim("B (rows)", n, rows.len()));
            }
            matrix("B", rows, None)?
        }
        None => DMatrix::zeros(n, 0),
    };
    let p = b.ncols();
    let (thetas, batch) = match &input.theta {
        None => (vec![DVector::zeros(p)], false),
        Some(ThetaSpec::One(t)) => (vec![theta_of(t, "theta", p, &input.B, n)?], false),
        Some(ThetaSpec::Batch(items)) => (
            items
                .iter()
                .enumerate()
                .map(|(i, t)| theta_of(t, &format!("theta[{i}]"), p, &input.B, n))
                .collect::<Result<Vec<_>>>()?,
            true,
        ),
    };
    let rows = |name: &str, m: &Option<Vec<Vec<f64>>>| {
        m.as_ref().map(|m| matrix(name, m, Some(n))).transpose()
    };
    let vector = |v: &Option<Vec<f64>>| v.as_deref().map(DVector::from_column_slice);
    let constraints = LinearConstraints::from_parts(
        n,
        (rows("A", &input.A)?, vector(&input.b)),
        (rows("A_eq", &input.A_eq)?, vector(&input.b_eq)),
    )?;
    let gradient_loss = matches!(input.loss, Some(LossSpec::Gradient { .. }));
    let given_b = input.B.is_some().then_some(&b);
    let loss = loss_of(input.loss, input.direction.as_deref(), given_b, p)?;
    let layer = QuadraticProblem::new(q, b, DVector::from_column_slice(&input.c), constraints)?;
    loss.validate(layer.dim())?;
    let request = Request {
        betas: input.betas.unwrap_or_default(),
        gradients: input.gradients.unwrap_or_default(),
        jvp: input.direction.is_some(),
        gradient_loss,
    };
    request.validate()?;
    Ok(Parsed {
        layer,
        loss,
        thetas,
        batch,
        request,
    })
}

/// Runs a derive problem given as JSON text (one `θ`).
///
/// # Errors
/// As [`parse`]; a batch `theta` (use [`derive_json`]); the solvers' errors; a non-finite
/// result ([`DeriveOutput::check_finite`]).
pub fn derive(text: &str) -> Result<DeriveOutput> {
    let parsed = parse_problem(text)?;
    if parsed.batch {
        return Err(Error::input(
            "theta",
            "a batch (a list of vectors): use derive_json, which answers per item",
        ));
    }
    derive_with(&parsed.program()?, &parsed.thetas[0], &parsed.request)
}

/// Runs a derive problem given as JSON text and returns the JSON answer (a request with sparse
/// matrices: [`super::derive_sparse::derive_request`], which the command line calls): the
/// [`DeriveOutput`] for one `θ`, or for a batch (`"theta"` a list of vectors) an array with
/// one entry per item, in order — its output, or `{"error": message}` for an item that
/// failed. The batch shares the layer's factorization ([`Bilevel::limit_batch`], on up to two
/// threads; the answers do not depend on the thread count).
///
/// # Errors
/// As [`parse`]; for one `θ`, as [`derive()`]. A batch fails as a whole only on bad input.
pub fn derive_json(text: &str) -> Result<serde_json::Value> {
    let parsed = parse_problem(text)?;
    let program = parsed.program()?;
    let to_json = |out: DeriveOutput| {
        serde_json::to_value(out).map_err(|e| Error::input("output", e.to_string()))
    };
    if !parsed.batch {
        return to_json(derive_with(&program, &parsed.thetas[0], &parsed.request)?);
    }
    let threads = crate::linalg::Threads::default_count();
    let limits = program.limit_batch(&parsed.thetas, threads)?;
    let items = parsed
        .thetas
        .iter()
        .zip(limits)
        .map(|(theta, limit)| {
            limit
                .and_then(|l| output(&program, theta, l, &parsed.request))
                .and_then(to_json)
                .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
        })
        .collect();
    Ok(serde_json::Value::Array(items))
}

/// The derive output for one `θ` on a layer paired with its loss (what [`derive()`] computes
/// after parsing; the Python bindings call it with their own layer).
///
/// # Errors
/// `request` invalid ([`Request::validate`]); the solvers' errors ([`Bilevel::limit`]); a
/// non-finite result ([`DeriveOutput::check_finite`]).
pub fn derive_with(
    program: &Bilevel<&QuadraticProblem>,
    theta: &DVector<f64>,
    request: &Request,
) -> Result<DeriveOutput> {
    request.validate()?;
    output(program, theta, program.limit(theta)?, request)
}

/// The output for one `θ` from its limit derivative.
pub fn output(
    program: &Bilevel<&QuadraticProblem>,
    theta: &DVector<f64>,
    limit: crate::surrogate::LimitDerivative,
    request: &Request,
) -> Result<DeriveOutput> {
    let to_vec = |v: &DVector<f64>| v.iter().copied().collect::<Vec<f64>>();
    let mut surrogates = Vec::with_capacity(request.betas.len());
    for &beta in &request.betas {
        let s = program.surrogate_with(theta, beta, limit.z_star.clone())?;
        let lin = program.linearized_with(theta, beta, limit.z_star.clone())?;
        let band = program.band_of(&s);
        if let Some(b) = &band {
            b.check()?;
        }
        surrogates.push(SurrogateOut::of(
            beta,
            (&s.z_hat.z, s.value, &s.grad_theta),
            (lin.value, &lin.grad_theta),
            band,
        ));
    }
    let out = DeriveOutput {
        z_star: to_vec(&limit.z_star.z),
        multipliers: to_vec(&limit.z_star.multipliers),
        multipliers_eq: to_vec(&limit.z_star.multipliers_eq),
        constraints: limit.z_star.activity.iter().map(|a| a.label()).collect(),
        branches: limit.direction.branches.clone(),
        dependent_constraints: limit.z_star.status.dependent.clone(),
        dependent_equalities: limit.z_star.status.dependent_eq.clone(),
        condition: limit.direction.condition,
        loss: limit.loss,
        z_dot: to_vec(&limit.direction.z_dot),
        jvp: request.jvp.then(|| to_vec(&limit.direction.z_dot)),
        grad_theta: to_vec(&limit.grad_theta),
        method: limit.direction.method.to_string(),
        residual: limit.z_star.status.residual.max(limit.direction.residual),
        solver: program.inner.backend().name(),
        iterations: limit.z_star.status.iterations,
        surrogates,
        loss_note: request.loss_note(),
        data_gradients: data_gradients(program, theta, &limit, &request.gradients)?,
    };
    out.check_finite()?;
    Ok(out)
}

/// The `grad_*` entries asked for.
fn data_gradients(
    program: &Bilevel<&QuadraticProblem>,
    theta: &DVector<f64>,
    limit: &crate::surrogate::LimitDerivative,
    names: &[String],
) -> Result<std::collections::BTreeMap<String, serde_json::Value>> {
    let mut out = std::collections::BTreeMap::new();
    if names.is_empty() {
        return Ok(out);
    }
    let g = program
        .inner
        .data_gradients(theta, &limit.z_star, &limit.direction)?;
    let rows = |m: &DMatrix<f64>| {
        serde_json::json!(m
            .row_iter()
            .map(|r| r.iter().copied().collect::<Vec<f64>>())
            .collect::<Vec<_>>())
    };
    let vector = |v: &DVector<f64>| serde_json::json!(v.iter().copied().collect::<Vec<f64>>());
    for name in names {
        let value = match name.as_str() {
            "Q" => rows(&g.q),
            "B" => rows(&g.b),
            "c" => vector(&g.c),
            "A" => rows(&g.constraints.a),
            "b" => vector(&g.constraints.b),
            "A_eq" => rows(&g.constraints.a_eq),
            _ => vector(&g.constraints.b_eq),
        };
        out.insert(format!("grad_{name}"), value);
    }
    Ok(out)
}

impl DeriveOutput {
    /// Every number of the output is finite, or [`Error::Overflow`] names the first that is
    /// not: the JSON contract never carries `null` for a number.
    pub fn check_finite(&self) -> Result<()> {
        check_computed("z_star", &self.z_star)?;
        check_computed("multipliers", &self.multipliers)?;
        check_computed("multipliers_eq", &self.multipliers_eq)?;
        check_computed("condition", [&self.condition])?;
        check_computed("loss", [&self.loss])?;
        check_computed("z_dot", &self.z_dot)?;
        if let Some(jvp) = &self.jvp {
            check_computed("jvp", jvp)?;
        }
        check_computed("grad_theta", &self.grad_theta)?;
        check_computed("residual", [&self.residual])?;
        for (i, s) in self.surrogates.iter().enumerate() {
            let at = |field: &str| format!("surrogates[{i}].{field} (beta {:e})", s.beta);
            check_computed(&at("z_hat"), &s.z_hat)?;
            check_computed(&at("value"), [&s.value])?;
            check_computed(&at("grad_theta"), &s.grad_theta)?;
            check_computed(&at("linearized_value"), [&s.linearized_value])?;
            check_computed(&at("linearized_grad_theta"), &s.linearized_grad_theta)?;
            check_computed(&at("bound_lower"), s.bound_lower.iter())?;
            check_computed(&at("bound_upper"), s.bound_upper.iter())?;
            check_computed(&at("bound_nu"), s.bound_nu.iter())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_as_qp_at_a_tie() {
        // E = ½‖z‖² − zᵀθ, z ≥ 0, θ = (1, 0): the second unit is weakly active.
        let out = derive(
            r#"{"Q": [[1,0],[0,1]], "c": [0,0], "B": [[1,0],[0,1]], "theta": [1, 0],
                "A": [[1,0],[0,1]], "b": [0,0], "loss": {"kind":"linear","g":[2,-3]},
                "betas": [0.5]}"#,
        )
        .unwrap();
        assert_eq!(out.constraints, vec!["inactive", "weak"]);
        assert_eq!(out.branches, vec![None, Some(Branch::Leaves)]);
        assert!((out.z_dot[0] + 2.0).abs() < 1e-12 && (out.z_dot[1] - 3.0).abs() < 1e-12);
        // grad = −Bᵀż
        assert!((out.grad_theta[0] - 2.0).abs() < 1e-12 && (out.grad_theta[1] + 3.0).abs() < 1e-12);
        assert_eq!(out.surrogates.len(), 1);
    }

    #[test]
    fn tiny_beta_keeps_prop3_band() {
        // Regression (reliability issue, failure 3): at β = 1e-16 the value was the upper bound
        // 0.7796 while L = 3. Exactly: ẑ = (1 − β/2, 1 − 2β), L^β = 3 − 2.25β.
        for beta in [1e-2, 1e-8, 1e-16, 1e-300] {
            let out = derive(&format!(
                r#"{{"Q":[[2,0],[0,1]],"c":[2,1],"loss":{{"kind":"linear","g":[1,2]}},"betas":[{beta:e}]}}"#
            ))
            .unwrap();
            let s = &out.surrogates[0];
            let exact = 3.0 - 2.25 * beta;
            assert!(
                (s.value - exact).abs() <= 4.0 * f64::EPSILON,
                "{beta}: {}",
                s.value
            );
            assert!((s.linearized_value - exact).abs() <= 4.0 * f64::EPSILON);
            let (lo, hi) = (s.bound_lower.unwrap(), s.bound_upper.unwrap());
            assert!(
                lo <= out.loss && out.loss <= hi,
                "{beta}: {lo} {} {hi}",
                out.loss
            );
        }
    }

    #[test]
    fn a_band_beyond_f64_accuracy_is_reported_inaccurate() {
        // Found by fuzzing: ℓ' along the flattest direction of a Q with condition 4e12, where
        // the band's width and L − L^β agree to every digit f64 keeps; the computed upper
        // bound fell 1.5e10 below L (relative 1.6e-5). Now an error, not a wrong band.
        let text = include_str!(
            "../../tests/regressions/derive/fuzz-band-flat-direction-ill-conditioned.json"
        );
        match derive(text) {
            Err(Error::Inaccurate { what, .. }) => assert!(what.contains("Prop. 3"), "{what}"),
            other => panic!("expected Inaccurate, got {other:?}"),
        }
        // The same layer at a small β is well within f64: its band holds and is reported.
        let small = text.replace("186.7094017094017", "1e-30");
        let out = derive(&small).unwrap();
        let s = &out.surrogates[0];
        assert!(s.bound_lower.unwrap() <= out.loss && out.loss <= s.bound_upper.unwrap());
    }

    #[test]
    fn bad_input_names_the_field() {
        let cases = [
            (
                r#"{"Q": [[1]], "c": [0], "loss": {"kind":"linear","g":[1]}, "betas": [0]}"#,
                "betas[0]",
            ),
            (
                r#"{"Q": [[1,2],[2,1]], "c": [0,0], "loss": {"kind":"linear","g":[1,1]}}"#,
                "Q",
            ),
            (
                r#"{"Q": [[1,0.5],[0,1]], "c": [0,0], "loss": {"kind":"linear","g":[1,1]}}"#,
                "Q",
            ),
            (
                r#"{"Q": [[1]], "c": [0,1], "loss": {"kind":"linear","g":[1]}}"#,
                "c",
            ),
            (
                r#"{"Q": [[1]], "c": [0], "A": [[1]], "loss": {"kind":"linear","g":[1]}}"#,
                "b",
            ),
            (
                r#"{"Q": [[1]], "c": [0], "loss": {"kind":"linear","g":[1,2]}}"#,
                "loss.g",
            ),
            (
                r#"{"Q": [[1]], "c": [0], "loss": {"kind":"cubic","g":[1]}}"#,
                "cubic",
            ),
            (r#"{"Q": [[1]], "c": [0]}"#, "loss"),
            (
                r#"{"Q": [[1]], "c": [0], "loss": {"kind":"linear","g":[1]}, "extra": 1}"#,
                "extra",
            ),
            (
                r#"{"Q": [[1]], "c": [0], "A": [[1],[-1]], "b": [1, 0], "loss": {"kind":"linear","g":[1]}}"#,
                "infeasible",
            ),
            (
                r#"{"Q": [[1]], "c": [1e999], "loss": {"kind":"linear","g":[1]}}"#,
                "JSON",
            ),
            (
                r#"{"Q": [[1, 0], [0]], "c": [0, 0], "loss": {"kind":"linear","g":[1, 1]}}"#,
                "Q[1]",
            ),
        ];
        for (json, field) in cases {
            let err = derive(json).unwrap_err().to_string();
            assert!(err.contains(field), "{json}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
