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

use nalgebra::{DMatrix, DVector, RealField};

use crate::linalg::{vectorized, Gemm, Threads};

use super::{EnergyKind, Network, OutputLoss};
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

/// Parameter gradients, one entry per layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients<T: RealField + Copy> {
    /// `∂/∂W_k`.
    pub w: Vec<DMatrix<T>>,
    /// `∂/∂b_k` (the biases).
    pub bias: Vec<DVector<T>>,
}

impl<T: RealField + Copy> Gradients<T> {
    /// All entries in one vector: every `W_k` (column-major), then every `b_k`.
    pub fn flatten(&self) -> DVector<T> {
        let w = self.w.iter().flat_map(|m| m.iter().copied());
        let b = self.bias.iter().flat_map(|v| v.iter().copied());
        let n = self.w.iter().map(|m| m.len()).sum::<usize>()
            + self.bias.iter().map(|v| v.len()).sum::<usize>();
        DVector::from_iterator(n, w.chain(b))
    }

    /// Checks that the gradients are shaped like `net`'s parameters (`O(L)`).
    ///
    /// # Errors
    /// [`Error::DimensionMismatch`] naming `what` and the first layer that differs.
    pub fn check(&self, net: &Network<T>, what: &str) -> Result<()> {
        if self.w.len() != net.layers.len() || self.bias.len() != net.layers.len() {
            return Err(Error::dim(
                format!("{what} (layers)"),
                net.layers.len(),
                format!("{} weights, {} biases", self.w.len(), self.bias.len()),
            ));
        }
        for (k, (l, (w, b))) in net
            .layers
            .iter()
            .zip(self.w.iter().zip(&self.bias))
            .enumerate()
        {
            if w.shape() != l.w.shape() || b.len() != l.bias.len() {
                return Err(Error::dim(
                    format!("{what}[{k}]"),
                    format!("{:?} and {}", l.w.shape(), l.bias.len()),
                    format!("{:?} and {}", w.shape(), b.len()),
                ));
            }
        }
        Ok(())
    }

    /// Zero gradients shaped like `net`.
    pub fn zeros(net: &Network<T>) -> Self {
        Self {
            w: net
                .layers
                .iter()
                .map(|l| DMatrix::zeros(l.w.nrows(), l.w.ncols()))
                .collect(),
            bias: net
                .layers
                .iter()
                .map(|l| DVector::zeros(l.bias.len()))
                .collect(),
        }
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

/// Checks a β vector: one finite, positive entry per layer.
pub fn check_betas<T: RealField + Copy>(betas: &[T], layers: usize) -> Result<()> {
    if betas.len() != layers {
        return Err(Error::dim("betas", layers, betas.len()));
    }
    for &b in betas {
        if !(b.is_finite() && b > T::zero()) {
            let v: f64 = nalgebra::try_convert(b).unwrap_or(f64::NAN);
            return Err(Error::InvalidBeta { beta: v });
        }
    }
    Ok(())
}

/// Forward and Prop. 7 backward pass on one batch; writes the Remark 2 (Eq. 53) gradient into
/// `grads` and returns the batch-mean loss `ℓ(z_L*)`.
///
/// # Errors
/// Shapes (`x`, `target`, `betas`, the network, a workspace or gradients built for another
/// network), non-positive or non-finite β, β times the batch size beyond the floating-point
/// range (Fenchel and proximal energies), softmax with
/// penalizer energies, a non-finite loss (which is how non-finite weights or inputs show: the
/// weights are not scanned on every call, see [`Network::check_structure`]).
#[allow(clippy::too_many_arguments)]
pub fn gradient<T: Gemm>(
    net: &Network<T>,
    kind: EnergyKind,
    betas: &[T],
    loss: OutputLoss,
    x: &DMatrix<T>,
    target: &DMatrix<T>,
    ws: &mut Workspace<T>,
    grads: &mut Gradients<T>,
) -> Result<T> {
    net.check_structure(kind)?;
    check_betas(betas, net.layers.len())?;
    grads.check(net, "grads")?;
    forward(net, x, ws)?;
    let top = net.layers.len() - 1;
    if target.shape() != ws.z[top].shape() {
        return Err(Error::dim(
            "target",
            format!("{} x {}", ws.z[top].nrows(), ws.z[top].ncols()),
            format!("{} x {}", target.nrows(), target.ncols()),
        ));
    }
    let value = loss.value_and_gradient(&ws.z[top], target, &mut ws.e[top]);
    if !value.is_finite() {
        return Err(Error::NonFinite {
            what: "loss of the forward pass (non-finite weights, inputs or targets?)".into(),
        });
    }
    // The batch convention (module docs of `crate::nested`): each sample at β_k. The signals
    // carry the batch mean's 1/B, and D_β f(a)[B e]/B = D_{βB} f(a)[e].
    let batch: T = nalgebra::convert(x.ncols() as f64);
    if kind != EnergyKind::Penalizer {
        check_quotient_range(betas, x.ncols())?;
    }
    for k in (0..=top).rev() {
        let act = net.layers[k].activation;
        let quotient_beta = betas[k] * batch;
        let (a, e, delta) = (&ws.a[k], &ws.e[k], &mut ws.delta[k]);
        match kind {
            EnergyKind::Penalizer => {
                // δ-form of Eq. 46-47 with the Remark 2 gradient: (f'(a) ⊙ δ) z_{k−1}ᵀ. We store
                // f'(a) ⊙ e in `delta` directly (the pre-activation signal).
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
            EnergyKind::Fenchel | EnergyKind::Proximal => {
                if act == Activation::Softmax {
                    for j in 0..a.ncols() {
                        act.difference_quotient(
                            a.column(j).as_slice(),
                            e.column(j).as_slice(),
                            quotient_beta,
                            delta.column_mut(j).as_mut_slice(),
                        );
                    }
                } else {
                    act.difference_quotient(
                        a.as_slice(),
                        e.as_slice(),
                        quotient_beta,
                        delta.as_mut_slice(),
                    );
                }
            }
        }
        let input = if k == 0 { x } else { &ws.z[k - 1] };
        ws.threads
            .gemm(&mut grads.w[k], &ws.delta[k], false, input, true);
        // Row sums, accumulated column by column (contiguous; same order of additions).
        grads.bias[k].fill(T::zero());
        for col in ws.delta[k].column_iter() {
            grads.bias[k] += col;
        }
        if k > 0 {
            ws.threads.gemm(
                &mut ws.e[k - 1],
                &net.layers[k].w,
                true,
                &ws.delta[k],
                false,
            );
        }
    }
    Ok(value)
}
