//! Sections 3-4: deeply nested programs (Eq. 21) built from layer energies.
//!
//! A layered network `z_0 = x`, `z_k* = argmin_{z_k} E_k(z_k, z_{k−1}*; θ_k)`, `k = 1..L`, with
//! `a_k = W_k z_{k−1} + b_k` and one of three layer energies (Table 1's `E_k` column):
//! * [`EnergyKind::Penalizer`]: `½‖z_k − f_k(a_k)‖²` (MAC, predictive coding, back-propagation);
//! * [`EnergyKind::Fenchel`]: `G_k(z_k) − z_kᵀa_k` with `∇G_k* = f_k` (Eq. 31; LPOM, Fenchel BP);
//! * [`EnergyKind::Proximal`]: `½‖z_k − a_k‖² + F_k(z_k)` (convex CHL).
//!
//! All three have the same forward pass `z_k* = f_k(a_k)`. The reformulations: the linearized
//! local contrastive objective of Prop. 7 ([`linearized`]: back-propagation, Fenchel BP), the
//! local contrastive objective of Prop. 5 ([`local`]: MAC / predictive coding, LPOM), the global
//! contrastive objective of Prop. 4 ([`global`]: convex CHL with proximal energies, CHL with
//! Fenchel energies), and Table 1 as data ([`method`]: each row a choice of energy, direction
//! and linearization; `bilevel taxonomy` prints it with measured errors).
//!
//! **Batches are matrix columns**: `x` is `n_0 × B`, every `z_k` is `n_k × B`. **One batch
//! convention for every method**: the surrogate of a batch is the *mean of the per-sample
//! surrogates at the same β*, `L^β_batch(θ) = (1/B) Σ_j L^β(θ; x_j, t_j)`, so value and
//! gradient of a batch equal the mean of the per-sample runs (tested for every row of Table 1).
//! This matters beyond scaling: the surrogates are not linear in the loss, e.g. the Fenchel
//! quotient on a batch-mean signal `e/B` is `D_β f(a)[e] / B = D_{βB} f(a)[e/B]`. The paper's
//! Fig. 1 and Appendix C code apply β to the batch-mean loss gradient, which is this
//! convention's `β/B` per sample: the MNIST client maps its `--beta` that way
//! (`bilevel::app::nn::Rule`).

pub mod compose;
pub mod global;
pub mod inference;
pub mod linearized;
pub mod local;
pub mod method;
mod problem;
mod rows;

pub use problem::{
    Batch, BatchReport, Fallback, Gradients, NestedProblem, NestedReport, NestedSettings,
    NestedStatus, Optimum, Outcome,
};

use nalgebra::{DMatrix, DVector, RealField};

use crate::error::{Error, Result};
use crate::linalg::vectorized;
use crate::names::Named;
use crate::prox::Activation;

/// `f(u)` applied to every column of `u` (softmax couples the entries of a column; the box
/// family is element-wise). Allocates; for the verification solvers.
pub fn activate_columns<T: RealField + Copy>(act: Activation, u: &DMatrix<T>) -> DMatrix<T> {
    let mut out = u.clone();
    activate_columns_into(act, u, &mut out);
    out
}

/// [`activate_columns`] into a buffer of the same shape (no allocation; the training path).
pub fn activate_columns_into<T: RealField + Copy>(
    act: Activation,
    u: &DMatrix<T>,
    out: &mut DMatrix<T>,
) {
    if act == Activation::Softmax {
        for (uc, mut oc) in u.column_iter().zip(out.column_iter_mut()) {
            act.activate(uc.as_slice(), oc.as_mut_slice());
        }
    } else {
        act.activate(u.as_slice(), out.as_mut_slice());
    }
}

/// `a += b 1ᵀ` (the bias added to every column).
pub(crate) fn add_bias<T: RealField + Copy>(a: &mut DMatrix<T>, bias: &DVector<T>) {
    let (a, bias) = (a.as_mut_slice(), bias.as_slice());
    vectorized(
        #[inline(always)]
        || add_bias_to_columns(a, bias),
    );
}

/// [`add_bias`] on whole columns `a` (column-major, `bias.len()` rows), inlined into vectorized
/// passes.
#[inline(always)]
pub(crate) fn add_bias_to_columns<T: RealField + Copy>(a: &mut [T], bias: &[T]) {
    if bias.is_empty() {
        return;
    }
    for col in a.chunks_exact_mut(bias.len()) {
        for (x, &b) in col.iter_mut().zip(bias) {
            *x += b;
        }
    }
}

/// The layer weights of the non-linearized surrogates, written once: prefix products
/// `s_k = Π_{l<k} β_l` for `k = 0..=L` (so `s_L = Π_l β_l`; Eq. 22 multiplied by `Π β` gives
/// layer `k` the weight `s_k` and the loss `s_L`).
pub(crate) fn prefix_products(betas: &[f64]) -> Vec<f64> {
    let mut s = vec![1.0; betas.len() + 1];
    for k in 1..=betas.len() {
        s[k] = s[k - 1] * betas[k - 1];
    }
    s
}

/// Suffix products `Π_{l≥k} β_l` for `k = 0..L` (predictive coding's `μ_k⁻¹`, Section 3.2.1).
pub(crate) fn suffix_products(betas: &[f64]) -> Vec<f64> {
    let mut s = betas.to_vec();
    for k in (0..s.len().saturating_sub(1)).rev() {
        s[k] *= s[k + 1];
    }
    s
}

/// Adds `c·J_kᵀJ_k` to a Hessian `h` over the stacked layers `(z_1; …; z_L)` (layer `k` at
/// `offsets[k]`, width `nk`): the Gauss–Newton block of `(c/2)‖r_k‖²` for a layer residual
/// `r_k = z_k − M z_{k−1} − const`, with `J_k = [−M, I]` (`M = W_k`, or `D W_k` on a linear
/// piece of the activation; `None` for the first layer, whose input is the constant `x`). The
/// sum over layers is the block-tridiagonal Hessian of the proximal and penalizer objectives.
pub(crate) fn add_residual_hessian(
    h: &mut DMatrix<f64>,
    offsets: &[usize],
    (k, nk): (usize, usize),
    m: Option<&DMatrix<f64>>,
    c: f64,
) {
    use std::ops::{AddAssign, SubAssign};
    let ok = offsets[k];
    for i in 0..nk {
        h[(ok + i, ok + i)] += c;
    }
    if let Some(m) = m {
        let (op, np) = (offsets[k - 1], m.ncols());
        h.view_mut((op, op), (np, np))
            .add_assign(&(m.transpose() * m * c));
        h.view_mut((ok, op), (nk, np)).sub_assign(&(m * c));
        h.view_mut((op, ok), (np, nk))
            .sub_assign(&(m.transpose() * c));
    }
}

/// The layer energy kind (Table 1's `E_k` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum EnergyKind {
    /// `½‖z_k − f_k(W z_{k−1} + b)‖²`.
    Penalizer,
    /// `G_k(z_k) − z_kᵀ(W z_{k−1} + b)`, `∇G_k* = f_k` (Eq. 31).
    Fenchel,
    /// `½‖z_k − (W z_{k−1} + b)‖² + F_k(z_k)`.
    Proximal,
}

/// One layer `z_k = f_k(W z_{k−1} + b)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer<T: RealField + Copy> {
    /// `W`, `n_k × n_{k−1}` (the paper's `W_{k−1}`).
    pub w: DMatrix<T>,
    /// The bias `b`, length `n_k`.
    pub bias: DVector<T>,
    /// The activation `f_k`.
    pub activation: Activation,
}

/// A feed-forward network of [`Layer`]s.
#[derive(Debug, Clone, PartialEq)]
pub struct Network<T: RealField + Copy> {
    /// Layers `1..L`.
    pub layers: Vec<Layer<T>>,
}

/// The outer loss on `z_L`, averaged over the batch. Named ([`Named`]) `squared`,
/// `softmax_cross_entropy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputLoss {
    /// `ℓ(z) = ½‖z − t‖²` per sample.
    Squared,
    /// `ℓ(z) = −Σ_j t_j log softmax(z)_j` per sample (`z_L` are logits, `t` one-hot or a
    /// distribution).
    SoftmaxCrossEntropy,
}

impl Named for OutputLoss {
    const KIND: &'static str = "loss";
    const NAMES: &'static [(Self, &'static str)] = &[
        (OutputLoss::Squared, "squared"),
        (OutputLoss::SoftmaxCrossEntropy, "softmax_cross_entropy"),
    ];
}

crate::named!(OutputLoss);

impl OutputLoss {
    /// Batch-mean loss and its gradient `∂ℓ/∂z_L` (including the `1/B`), written into `grad`.
    pub fn value_and_gradient<T: RealField + Copy>(
        &self,
        z: &DMatrix<T>,
        target: &DMatrix<T>,
        grad: &mut DMatrix<T>,
    ) -> T {
        let batch: T = nalgebra::convert(z.ncols() as f64);
        let mut total = T::zero();
        match self {
            OutputLoss::Squared => {
                for ((g, &zi), &ti) in grad.iter_mut().zip(z.iter()).zip(target.iter()) {
                    let d = zi - ti;
                    total += d * d;
                    *g = d / batch;
                }
                total *= nalgebra::convert(0.5);
            }
            OutputLoss::SoftmaxCrossEntropy => {
                // Per column: one exp per entry (stored in `grad`), then
                // ℓ = Σt·(lse − z) and ∂ℓ/∂z = softmax(z)·Σt − t. Terms e^(z−max) < e^(−87)
                // (below the smallest normal f32) are taken as 0: they change the sum (≥ 1)
                // by less than 1e-36, and libm's exp takes a slow path on underflow, which
                // confident networks hit for most of the ten classes.
                let cutoff: T = nalgebra::convert(-87.0);
                for ((zc, tc), mut gc) in z
                    .column_iter()
                    .zip(target.column_iter())
                    .zip(grad.column_iter_mut())
                {
                    let max = zc.iter().copied().fold(zc[0], |a, b| a.max(b));
                    let mut sum = T::zero();
                    for (g, &v) in gc.iter_mut().zip(zc.iter()) {
                        let d = v - max;
                        *g = if d > cutoff { d.exp() } else { T::zero() };
                        sum += *g;
                    }
                    let lse = max + sum.ln();
                    let tsum = tc.sum();
                    for ((g, &v), &t) in gc.iter_mut().zip(zc.iter()).zip(tc.iter()) {
                        total += t * (lse - v);
                        *g = (*g / sum * tsum - t) / batch;
                    }
                }
            }
        }
        total / batch
    }

    /// `(ℓ(z + σu; t) − ℓ(z; t))/σ` for one sample without cancellation, for any `σ > 0`
    /// however small: squared loss `(z − t)ᵀu + (σ/2)‖u‖²`; cross-entropy
    /// `Σt · log1p(Σ_i p_i expm1(σu_i))/σ − tᵀu` with `p = softmax(z)`.
    pub fn sample_offset(
        &self,
        z: &DVector<f64>,
        t: &DVector<f64>,
        sigma: f64,
        u: &DVector<f64>,
    ) -> f64 {
        match self {
            OutputLoss::Squared => (z - t).dot(u) + sigma * (0.5 * u.norm_squared()),
            OutputLoss::SoftmaxCrossEntropy => {
                let lse = crate::prox::log_sum_exp(z.as_slice());
                let growth: f64 = z
                    .iter()
                    .zip(u.iter())
                    .map(|(&zi, &ui)| (zi - lse).exp() * (sigma * ui).exp_m1())
                    .sum();
                t.sum() * growth.ln_1p() / sigma - t.dot(u)
            }
        }
    }

    /// One sample's loss `w·ℓ(z; t)` with its gradient and Hessian (allocates; for the
    /// verification solvers' per-sample Newton steps). Value and gradient are
    /// [`OutputLoss::value_and_gradient`] on a one-column batch; the Hessian is `w·I` (squared)
    /// or `w·Σt·(diag p − p pᵀ)` with `p = softmax(z)` (cross-entropy).
    pub fn sample(
        &self,
        z: &DVector<f64>,
        t: &DVector<f64>,
        w: f64,
    ) -> (f64, DVector<f64>, DMatrix<f64>) {
        let n = z.len();
        let zm = DMatrix::from_column_slice(n, 1, z.as_slice());
        let tm = DMatrix::from_column_slice(n, 1, t.as_slice());
        let mut g = DMatrix::zeros(n, 1);
        let value = self.value_and_gradient(&zm, &tm, &mut g);
        let hessian = match self {
            OutputLoss::Squared => DMatrix::identity(n, n),
            OutputLoss::SoftmaxCrossEntropy => {
                let lse = crate::prox::log_sum_exp(z.as_slice());
                let p = z.map(|v| (v - lse).exp());
                (DMatrix::from_diagonal(&p) - &p * p.transpose()) * t.sum()
            }
        };
        (
            w * value,
            DVector::from_column_slice(g.as_slice()) * w,
            hessian * w,
        )
    }
}

impl<T: RealField + Copy> Layer<T> {
    /// `a = W z + b` for a batch `z` (columns), allocated (verification solvers; the training
    /// path writes into a [`linearized::Workspace`]).
    pub fn affine(&self, z: &DMatrix<T>) -> DMatrix<T> {
        let mut a = &self.w * z;
        for mut c in a.column_iter_mut() {
            c += &self.bias;
        }
        a
    }
}

impl<T: RealField + Copy> Network<T> {
    /// The same network in another precision (`f64` for checking an `f32` training network,
    /// `f32` for training from an `f64` one), entry by entry through `f64`: exact from `f32`,
    /// rounded to nearest into `f32`.
    pub fn cast<U: RealField + Copy>(&self) -> Network<U> {
        let to = |v: &T| nalgebra::convert::<f64, U>(nalgebra::convert_unchecked::<T, f64>(*v));
        Network {
            layers: self
                .layers
                .iter()
                .map(|l| Layer {
                    w: l.w.map(|v| to(&v)),
                    bias: l.bias.map(|v| to(&v)),
                    activation: l.activation,
                })
                .collect(),
        }
    }

    /// Checks that consecutive shapes agree, entries are finite and softmax appears only where
    /// allowed (not with penalizer energies, whose back-propagation needs an element-wise `f'`).
    pub fn validate(&self, kind: EnergyKind) -> Result<()> {
        self.check_structure(kind)?;
        for (k, layer) in self.layers.iter().enumerate() {
            if !layer
                .w
                .iter()
                .chain(layer.bias.iter())
                .all(|v| v.is_finite())
            {
                return Err(Error::NonFinite {
                    what: format!("layers[{k}]"),
                });
            }
        }
        Ok(())
    }

    /// [`Network::validate`] without the scan of every weight for finiteness: shapes,
    /// activation parameters and the softmax rule only (`O(L)`, used on the training path, which
    /// instead checks that the loss is finite — a non-finite weight reaches the loss, because
    /// every activation here propagates NaN).
    pub fn check_structure(&self, kind: EnergyKind) -> Result<()> {
        if self.layers.is_empty() {
            return Err(Error::input("network", "no layers"));
        }
        for (k, layer) in self.layers.iter().enumerate() {
            layer.activation.validate()?;
            if layer.bias.len() != layer.w.nrows() {
                return Err(Error::dim(
                    format!("layers[{k}].bias"),
                    layer.w.nrows(),
                    layer.bias.len(),
                ));
            }
            if k > 0 && layer.w.ncols() != self.layers[k - 1].w.nrows() {
                return Err(Error::dim(
                    format!("layers[{k}].w (columns)"),
                    self.layers[k - 1].w.nrows(),
                    layer.w.ncols(),
                ));
            }
            if kind == EnergyKind::Penalizer && layer.activation == Activation::Softmax {
                return Err(Error::input(
                    format!("layers[{k}].activation"),
                    "softmax is only available as a Fenchel layer (Section 3.2.2)",
                ));
            }
        }
        Ok(())
    }

    /// Checks a batch: `x` is `n_0 × B` and `target` is `n_L × B`.
    pub fn check_batch(&self, x: &DMatrix<T>, target: &DMatrix<T>) -> Result<()> {
        if x.nrows() != self.input_dim() {
            return Err(Error::dim("x (rows)", self.input_dim(), x.nrows()));
        }
        let top = self.layers.last().map_or(0, |l| l.w.nrows());
        if target.shape() != (top, x.ncols()) {
            return Err(Error::dim(
                "target",
                format!("{top} x {}", x.ncols()),
                format!("{} x {}", target.nrows(), target.ncols()),
            ));
        }
        Ok(())
    }

    /// Input dimension `n_0`.
    pub fn input_dim(&self) -> usize {
        self.layers.first().map_or(0, |l| l.w.ncols())
    }

    /// Layer widths `n_1..n_L`.
    pub fn widths(&self) -> Vec<usize> {
        self.layers.iter().map(|l| l.w.nrows()).collect()
    }

    /// One zero `n_k × batch` matrix per layer: the batched solvers' buffers.
    pub(crate) fn layer_buffers(&self, batch: usize) -> Vec<DMatrix<T>> {
        self.layers
            .iter()
            .map(|l| DMatrix::zeros(l.w.nrows(), batch))
            .collect()
    }

    /// Where `z_k` starts in the stacked variable `(z_1; …; z_L)`: `Σ_{l<k} n_l`.
    pub(crate) fn offsets(&self) -> Vec<usize> {
        self.layers
            .iter()
            .scan(0, |start, l| {
                let here = *start;
                *start += l.w.nrows();
                Some(here)
            })
            .collect()
    }
}
