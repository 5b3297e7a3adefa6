//! Prop. 7: the linearized local contrastive surrogate — a closed-form forward pass `z_k*`
//! (Eq. 41) and backward pass `z̄_k` (Eq. 43) — with the weight gradient of Remark 2 (Eq. 53).
//!
//! The backward pass is carried as error signals `δ_k = (z_k* − z̄_k)/β_k` (batch columns):
//! * top layer: `z̄_L = argmin_z ℓ̄(z; z_L*) + E_L(z, z_{L−1}*)/β_L`;
//! * hidden layers: `z̄_k = argmin_z (1/β_{k+1}) Ē_{k+1}(z̄_{k+1}, z; z_k*) + E_k(z, z_{k−1}*)/β_k`;
//! * gradient (Remark 2): `∂L̄/∂W_k = (1/β_k) ∂_W Ẽ_k(z̄_k, z_{k−1}*)` — only the `Ẽ` term, never
//!   the linearization term; the rejected alternative is Eq. 52.
//!
//! **Penalizer energies** (`½‖z_k − f(a_k)‖²`, Section 4.1): `z̄_L = z_L* − β_L ℓ'` and Eq. 46-47,
//! `ε_k = z̄_k − z_k* = (β_k/β_{k+1}) f_k'(z_k*)ᵀ ε_{k+1}`. In `δ` form the ratios cancel:
//! `δ_L = ℓ'`, `δ_k = W_{k+1}ᵀ(f'(a_{k+1}) ⊙ δ_{k+1})`, and the Remark 2 gradient
//! `(f'(a_k) ⊙ δ_k) z_{k−1}ᵀ` is back-propagation *for every* β (with `f'` = 0 at kinks, the
//! frameworks' convention). The `ε_k = −β_k δ_k` themselves scale with `β_k`: used unnormalized
//! as an update (as in predictive coding, Eq. 47) they give layer `k` a step scaled by `β_k`,
//! a descent but not steepest-descent direction unless all `β_k` are equal — the paper's remark.
//!
//! **Fenchel energies** (`G_k(z) − zᵀa_k`, Section 4.2) give **Fenchel back-propagation**
//! (Eq. 49-51): `z̄_L = f_L(a_L − β_L ℓ')`, `z̄_k = f_k(a_k + (β_k/β_{k+1}) W_{k+1}ᵀ(z̄_{k+1} − z_{k+1}*))`,
//! i.e. `δ_k = D_{β_k} f_k(a_k)[W_{k+1}ᵀ δ_{k+1}]` with the one-sided quotient
//! [`Activation::difference_quotient`], and the Eq. 53 gradient `δ_k z_{k−1}*ᵀ`. For ReLU and
//! equal β this is the Appendix C rule `(z − relu(x − β·dy))/β`. **Proximal energies**
//! (`½‖z − a‖² + F(z)`) differ from Fenchel ones by `½‖a‖²`, which `Ẽ_k` cancels: Prop. 7 gives
//! the same passes for both.
//!
//! Nothing allocates after [`Workspace::new`] except softmax layers' quotient.

use nalgebra::{DMatrix, RealField};

use crate::linalg::{vectorized, Gemm, Threads};

pub use super::problem::{check_betas, Gradients};
use super::{Batch, BatchReport, EnergyKind, NestedProblem, NestedStatus, Network, OutputLoss};
use crate::error::{Error, Result};
use crate::prox::Activation;

/// Pre-allocated buffers for one batch size.
#[derive(Debug, Clone)]
pub struct Workspace<T: RealField + Copy> {
    /// Pre-activations `a_k = W_k z_{k−1} + b_k`.
    pub a: Vec<DMatrix<T>>,
    /// Forward solutions `z_k*` (Eq. 41).
    pub z: Vec<DMatrix<T>>,
    /// The signal whose product with `z_{k−1}*ᵀ` is the `W_k` gradient: `(z_k* − z̄_k)/β_k` for
    /// Fenchel and proximal energies; `f'(a_k) ⊙ (z_k* − z̄_k)/β_k` for penalizer energies.
    pub delta: Vec<DMatrix<T>>,
    /// Incoming signals `e_k` (top: `ℓ'(z_L*)`; else `W_{k+1}ᵀ δ_{k+1}`).
    pub e: Vec<DMatrix<T>>,
    /// Element-wise derivative scratch (penalizer energies).
    scratch: Vec<DMatrix<T>>,
    /// The threads that compute the matrix products (one by default; results do not depend on
    /// the count, see [`Threads`]).
    pub threads: Threads,
}

impl<T: RealField + Copy> Workspace<T> {
    /// Buffers for `net` and batches of `batch` columns.
    pub fn new(net: &Network<T>, batch: usize) -> Self {
        let mats = || net.layer_buffers(batch);
        Self {
            a: mats(),
            z: mats(),
            delta: mats(),
            e: mats(),
            scratch: mats(),
            threads: Threads::default(),
        }
    }

    /// The same buffers, with the products computed by `threads`.
    pub fn with_threads(mut self, threads: Threads) -> Self {
        self.threads = threads;
        self
    }

    /// The batch size the buffers hold.
    pub fn batch(&self) -> usize {
        self.z.first().map_or(0, |z| z.ncols())
    }

    /// Checks that the buffers were built for `net` (`O(L)`, no scan of the entries).
    ///
    /// # Errors
    /// [`Error::DimensionMismatch`] naming the first buffer of the wrong shape.
    pub fn check(&self, net: &Network<T>) -> Result<()> {
        let batch = self.batch();
        let fits = |bufs: &[DMatrix<T>]| {
            bufs.len() == net.layers.len()
                && bufs
                    .iter()
                    .zip(&net.layers)
                    .all(|(m, l)| m.shape() == (l.w.nrows(), batch))
        };
        for (name, bufs) in [
            ("workspace.a", &self.a),
            ("workspace.z", &self.z),
            ("workspace.delta", &self.delta),
            ("workspace.e", &self.e),
            ("workspace.scratch", &self.scratch),
        ] {
            if !fits(bufs) {
                let found: Vec<(usize, usize)> = bufs.iter().map(|m| m.shape()).collect();
                return Err(Error::dim(
                    format!("{name} (built for another network?)"),
                    format!("widths {:?} x batch {batch}", net.widths()),
                    format!("{found:?}"),
                ));
            }
        }
        Ok(())
    }

    /// `z̄_k` of Eq. 43 after [`gradient`] ran with `kind` (allocates; for checks, not the
    /// training path), per sample: `z_k* − β_k B δ_k` (Fenchel, proximal) or `z_k* − β_k B e_k`
    /// (penalizer) — the stored signals carry the batch mean's `1/B`.
    pub fn z_bar(&self, kind: EnergyKind, k: usize, beta: T) -> DMatrix<T> {
        let signal = match kind {
            EnergyKind::Penalizer => &self.e[k],
            _ => &self.delta[k],
        };
        let batch: T = nalgebra::convert(self.batch() as f64);
        &self.z[k] - signal * (beta * batch)
    }
}

/// Forward pass (Eq. 41): `a_k = W_k z_{k−1} + b_k`, `z_k* = f_k(a_k)`, for all energy kinds.
pub fn forward<T: Gemm>(net: &Network<T>, x: &DMatrix<T>, ws: &mut Workspace<T>) -> Result<()> {
    ws.check(net)?;
    if x.nrows() != net.input_dim() || x.ncols() != ws.batch() {
        return Err(Error::dim(
            "x",
            format!("{} x {}", net.input_dim(), ws.batch()),
            format!("{} x {}", x.nrows(), x.ncols()),
        ));
    }
    for (k, layer) in net.layers.iter().enumerate() {
        let (before, after) = ws.z.split_at_mut(k);
        let input = if k == 0 { x } else { &before[k - 1] };
        let a = &mut ws.a[k];
        ws.threads.gemm(a, &layer.w, false, input, false);
        super::add_bias(a, &layer.bias);
        super::activate_columns_into(layer.activation, a, &mut after[0]);
    }
    Ok(())
}

impl<T: Gemm> Network<T> {
    /// The batch-mean loss `ℓ(z_L*)` of the forward pass (allocates a workspace; for checks).
    pub fn loss(&self, loss: OutputLoss, x: &DMatrix<T>, target: &DMatrix<T>) -> Result<T> {
        let mut ws = Workspace::new(self, x.ncols());
        forward(self, x, &mut ws)?;
        let top = &ws.z[self.layers.len() - 1];
        if target.shape() != top.shape() {
            return Err(Error::dim(
                "target",
                format!("{:?}", top.shape()),
                format!("{:?}", target.shape()),
            ));
        }
        let mut g = top.clone();
        Ok(loss.value_and_gradient(top, target, &mut g))
    }
}

/// The states `z_k* = f_k(a_k)` of the [`forward`] pass of the batch `x` (Eq. 29: the free
/// minimizer of `Ẽ`, the clamped phases' start), in a workspace of their own.
///
/// # Errors
/// As [`forward`].
pub(crate) fn forward_states(net: &Network<f64>, x: &DMatrix<f64>) -> Result<Vec<DMatrix<f64>>> {
    let mut ws = Workspace::new(net, x.ncols());
    forward(net, x, &mut ws)?;
    Ok(ws.z)
}

/// The Fenchel quotient of a batch-mean signal is taken at `β_k B`: it must stay finite.
fn check_quotient_range<T: RealField + Copy>(betas: &[T], batch: usize) -> Result<()> {
    let b: T = nalgebra::convert(batch as f64);
    match betas.iter().find(|&&beta| !(beta * b).is_finite()) {
        None => Ok(()),
        Some(&beta) => Err(Error::BetaOutOfRange {
            beta: nalgebra::try_convert(beta).unwrap_or(f64::NAN),
            what: "Fenchel back-propagation".into(),
            reason: format!(
                "beta times the batch size ({batch}) overflows: the quotient of the batch-mean \
                 signal is taken at beta * B"
            ),
        }),
    }
}

/// Forward and Prop. 7 backward pass on one batch of the problem (its energy: penalizer for
/// back-propagation, Fenchel for Fenchel back-propagation); writes the Remark 2 (Eq. 53)
/// gradient into `grads` and returns the batch-mean loss `ℓ(z_L*)` as the value, with a
/// closed-form status.
///
/// ```
/// use bilevel::nested::linearized::{self, Workspace};
/// use bilevel::nested::method::Method;
/// use bilevel::nested::{Batch, Gradients, Layer, Network, OutputLoss};
/// use bilevel::prox::Activation;
/// use nalgebra::{dmatrix, dvector};
///
/// let net = Network {
///     layers: vec![
///         Layer { w: dmatrix![1.0, -0.5; 0.3, 0.8], bias: dvector![0.1, 0.0], activation: Activation::Relu },
///         Layer { w: dmatrix![0.7, -1.2], bias: dvector![0.0], activation: Activation::Identity },
///     ],
/// };
/// let (x, t) = (dmatrix![1.0; 0.5], dmatrix![0.2]);
/// let problem = Method::Bp.problem(&net, &[1.0, 1.0], OutputLoss::Squared)?;
/// let (mut ws, mut grads) = (Workspace::new(&net, 1), Gradients::zeros(&net));
/// let report = linearized::gradient(&problem, Batch::new(&problem, &x, &t)?, &mut ws, &mut grads)?;
/// // Back-propagation: z₁ = relu(0.85, 0.7), ℓ' = 0.7·0.85 − 1.2·0.7 − 0.2, ∂/∂W₂ = ℓ' z₁ᵀ.
/// let e: f64 = 0.7 * 0.85 - 1.2 * 0.7 - 0.2;
/// assert!((report.value - 0.5 * e * e).abs() < 1e-15);
/// assert!((grads.w[1][(0, 0)] - e * 0.85).abs() < 1e-15);
/// # Ok::<(), bilevel::Error>(())
/// ```
///
/// # Errors
/// Shapes (`x`, `target`, `betas`, the network, a workspace or gradients built for another
/// network), non-positive or non-finite β, β times the batch size beyond the floating-point
/// range (Fenchel and proximal energies), softmax with penalizer energies, a non-finite loss
/// (which is how non-finite weights or inputs show: the weights are not scanned on every call,
/// see [`Network::check_structure`]).
pub fn gradient<T: Gemm>(
    problem: &NestedProblem<'_, T>,
    batch: Batch<'_, T>,
    ws: &mut Workspace<T>,
    grads: &mut Gradients<T>,
) -> Result<BatchReport<T>> {
    let (net, kind, betas) = (problem.net, problem.energy, &problem.betas[..]);
    problem.check_structure()?;
    grads.check(net, "grads")?;
    let value = forward_loss(problem, batch, ws)?;
    // The batch convention (module docs of `crate::nested`): each sample at β_k. The signals
    // carry the batch mean's 1/B, and D_β f(a)[B e]/B = D_{βB} f(a)[e].
    let b: T = nalgebra::convert(batch.x.ncols() as f64);
    if kind != EnergyKind::Penalizer {
        check_quotient_range(betas, batch.x.ncols())?;
    }
    for k in (0..net.layers.len()).rev() {
        layer_signal(kind, net.layers[k].activation, betas[k] * b, k, ws);
        let input = if k == 0 { batch.x } else { &ws.z[k - 1] };
        ws.threads
            .gemm(&mut grads.w[k], &ws.delta[k], false, input, true);
        // Row sums, accumulated column by column (contiguous; same order of additions).
        grads.bias[k].fill(T::zero());
        for col in ws.delta[k].column_iter() {
            grads.bias[k] += col;
        }
        if k > 0 {
            let w = &net.layers[k].w;
            ws.threads
                .gemm(&mut ws.e[k - 1], w, true, &ws.delta[k], false);
        }
    }
    Ok(BatchReport {
        value,
        forward_loss: value,
        damping: T::one(),
        status: NestedStatus::closed_form("linearized pass (Prop. 7)"),
    })
}

/// The forward pass of the batch and the batch-mean loss at its top, `ℓ'` into `e[L]`.
fn forward_loss<T: Gemm>(
    problem: &NestedProblem<'_, T>,
    batch: Batch<'_, T>,
    ws: &mut Workspace<T>,
) -> Result<T> {
    forward(problem.net, batch.x, ws)?;
    let top = problem.net.layers.len() - 1;
    if batch.target.shape() != ws.z[top].shape() {
        return Err(Error::dim(
            "target",
            format!("{} x {}", ws.z[top].nrows(), ws.z[top].ncols()),
            format!("{} x {}", batch.target.nrows(), batch.target.ncols()),
        ));
    }
    let value = problem
        .loss
        .value_and_gradient(&ws.z[top], batch.target, &mut ws.e[top]);
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::NonFinite {
            what: "loss of the forward pass (non-finite weights, inputs or targets?)".into(),
        })
    }
}

/// Layer `k`'s pre-activation signal into `delta[k]` from `e[k]` at `a[k]`: `f'(a) ⊙ e`
/// (penalizer: the δ-form of Eq. 46-47 with the Remark 2 gradient) or the one-sided quotient
/// `D_β f(a)[e]` (Fenchel and proximal, Eq. 51).
fn layer_signal<T: Gemm>(
    kind: EnergyKind,
    act: Activation,
    quotient_beta: T,
    k: usize,
    ws: &mut Workspace<T>,
) {
    let (a, e, delta) = (&ws.a[k], &ws.e[k], &mut ws.delta[k]);
    match kind {
        EnergyKind::Penalizer => {
            let (d, delta) = (ws.scratch[k].as_mut_slice(), delta.as_mut_slice());
            vectorized(
                #[inline(always)]
                || {
                    act.derivative(a.as_slice(), d);
                    for ((di, &fi), &ei) in delta.iter_mut().zip(&*d).zip(e.as_slice()) {
                        *di = ei * fi;
                    }
                },
            );
        }
        _ if act == Activation::Softmax => {
            for j in 0..a.ncols() {
                act.difference_quotient(
                    a.column(j).as_slice(),
                    e.column(j).as_slice(),
                    quotient_beta,
                    delta.column_mut(j).as_mut_slice(),
                );
            }
        }
        _ => act.difference_quotient(
            a.as_slice(),
            e.as_slice(),
            quotient_beta,
            delta.as_mut_slice(),
        ),
    }
}
