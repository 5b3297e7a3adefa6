//! The buffers of the sweeps for one network and batch size ([`InferenceWorkspace`]).

use nalgebra::{DMatrix, DVector, RealField};

use crate::error::{Error, Result};
use crate::linalg::Threads;
use crate::nested::linearized::Gradients;
use crate::nested::method::Method;
use crate::nested::Network;

/// Buffers for one network and batch size.
#[derive(Debug, Clone)]
pub struct InferenceWorkspace<T: RealField + Copy> {
    /// Pre-activations `â_k` at the states.
    pub a: Vec<DMatrix<T>>,
    /// The states `ẑ_k`.
    pub z: Vec<DMatrix<T>>,
    /// The signals `λ_k` defining the states (batch-mean scaled).
    pub lambda: Vec<DMatrix<T>>,
    /// The forward pass's output `z_L*` (before any sweep).
    pub forward_top: DMatrix<T>,
    pub(super) next: Vec<DMatrix<T>>,
    pub(super) q: Vec<DMatrix<T>>,
    pub(super) memory: Memory<T>,
    pub(super) kinks: Kinks<T>,
    pub(super) best: Vec<DMatrix<T>>,
    pub(super) sigma: Vec<T>,
    /// Bottom-up rows: the free phase's arguments `ǔ_k` of `f`.
    pub(super) arg: Vec<DMatrix<T>>,
    /// Bottom-up rows: the clamped states `ẑ_k`, and scratch.
    pub(super) zhat: Vec<DMatrix<T>>,
    /// Bottom-up rows: `[P_k, β Q_k]` and `[ẑ_{k−1}, u_{k−1}]` side by side (`n × 2B`), so
    /// that each weight gradient is one product.
    pub(super) left: Vec<DMatrix<T>>,
    pub(super) right: Vec<DMatrix<T>>,
    pub(super) loss_grad: DMatrix<T>,
    /// The centered variant's `−β` gradient (allocated by its first call).
    pub(super) mirrored: Option<Gradients<T>>,
    /// Per sample: its layers' terms of the surrogate value.
    pub(super) terms: Vec<T>,
    /// Convex CHL: the block step sizes `t_k` of the sweeps (1 for the other rows).
    pub(super) steps: Vec<T>,
    /// Scratch of the power iteration on each `W_k` (its columns, its rows).
    pub(super) power: Vec<(DVector<T>, DVector<T>)>,
    /// The threads that compute the matrix products and the sweeps' element-wise passes (one
    /// by default; results do not depend on the count, see [`Threads`]).
    pub threads: Threads,
}

/// Units held on a convex kink of a penalizer layer ("Kinks" in the module docs).
#[derive(Debug, Clone)]
pub(super) struct Kinks<T: RealField + Copy> {
    /// Whether unit `(i, j)` of layer `k` is held on its kink.
    pub(super) held: Vec<Vec<bool>>,
    /// Its multiplier `ν = ∂J/∂â` (batch-mean scaled, like `q`).
    pub(super) nu: Vec<DMatrix<T>>,
    /// `â_k` at the previous sweep.
    pub(super) prev_a: Vec<DMatrix<T>>,
    /// `‖W_k[i, :]‖²`.
    pub(super) row_norms: Vec<Vec<T>>,
}

/// The previous sweep's state and residual, for Anderson acceleration.
#[derive(Debug, Clone)]
pub(super) struct Memory<T: RealField + Copy> {
    pub(super) prev_state: Vec<DMatrix<T>>,
    pub(super) prev_f: Vec<DMatrix<T>>,
    /// Per sample: `max |f|` and `max |Φ(x)|` of the last update.
    pub(super) change: Vec<T>,
    pub(super) size: Vec<T>,
}

impl<T: RealField + Copy> InferenceWorkspace<T> {
    /// Buffers for `net` and batches of `batch` columns.
    pub fn new(net: &Network<T>, batch: usize) -> Self {
        let mats = || net.layer_buffers(batch);
        let top = net.layers.last().map_or(0, |l| l.w.nrows());
        Self {
            a: mats(),
            z: mats(),
            lambda: mats(),
            forward_top: DMatrix::zeros(top, batch),
            next: mats(),
            q: mats(),
            memory: Memory {
                prev_state: mats(),
                prev_f: mats(),
                change: vec![T::zero(); batch],
                size: vec![T::zero(); batch],
            },
            kinks: Kinks {
                held: net
                    .layers
                    .iter()
                    .map(|l| vec![false; l.w.nrows() * batch])
                    .collect(),
                nu: mats(),
                prev_a: mats(),
                row_norms: net
                    .layers
                    .iter()
                    .map(|l| vec![T::zero(); l.w.nrows()])
                    .collect(),
            },
            best: mats(),
            sigma: vec![T::zero(); net.layers.len()],
            arg: mats(),
            zhat: mats(),
            left: net
                .layers
                .iter()
                .map(|l| DMatrix::zeros(l.w.nrows(), 2 * batch))
                .collect(),
            right: net
                .layers
                .iter()
                .map(|l| DMatrix::zeros(l.w.ncols(), 2 * batch))
                .collect(),
            loss_grad: DMatrix::zeros(top, batch),
            mirrored: None,
            terms: vec![T::zero(); batch],
            steps: vec![T::one(); net.layers.len()],
            power: net
                .layers
                .iter()
                .map(|l| (DVector::zeros(l.w.ncols()), DVector::zeros(l.w.nrows())))
                .collect(),
            threads: Threads::default(),
        }
    }

    /// The same buffers, with the products and element-wise passes computed by `threads`.
    pub fn with_threads(mut self, threads: Threads) -> Self {
        self.threads = threads;
        self
    }

    /// The batch size the buffers hold.
    pub fn batch(&self) -> usize {
        self.forward_top.ncols()
    }

    /// The buffers fit `net` (and the batch size they were built for).
    pub(super) fn check(&self, net: &Network<T>) -> Result<()> {
        let batch = self.batch();
        let fits = self.a.len() == net.layers.len()
            && net.layers.iter().enumerate().all(|(k, l)| {
                let shape = (l.w.nrows(), batch);
                [&self.a, &self.z, &self.lambda, &self.next, &self.q]
                    .iter()
                    .all(|bufs| bufs[k].shape() == shape)
            });
        if fits {
            Ok(())
        } else {
            Err(Error::dim(
                "inference workspace (built for another network?)",
                format!("widths {:?} x batch {batch}", net.widths()),
                format!("{:?}", self.a.iter().map(|m| m.shape()).collect::<Vec<_>>()),
            ))
        }
    }
}

/// `x` and `target` are batches of `batch` columns for `net`.
pub(super) fn check_batch<T: RealField + Copy>(
    net: &Network<T>,
    x: &DMatrix<T>,
    target: &DMatrix<T>,
    batch: usize,
) -> Result<()> {
    if x.shape() != (net.input_dim(), batch) {
        return Err(Error::dim(
            "x",
            format!("{} x {batch}", net.input_dim()),
            format!("{} x {}", x.nrows(), x.ncols()),
        ));
    }
    let out = net.layers.last().map_or(0, |l| l.w.nrows());
    if target.shape() != (out, batch) {
        return Err(Error::dim(
            "target",
            format!("{out} x {batch}"),
            format!("{} x {}", target.nrows(), target.ncols()),
        ));
    }
    Ok(())
}

/// `σ_k`: `β_k` (MAC, LPOM) or `s_k = Π_{l≥k} β_l` (predictive coding, Section 3.2.1, and
/// the layer weights `1/s_k` of Prop. 4's `ℰ^β`, Eq. 22).
pub(super) fn state_weights<T: RealField + Copy>(
    method: Method,
    betas: &[T],
    ws: &mut InferenceWorkspace<T>,
) {
    ws.sigma.copy_from_slice(betas);
    if matches!(
        method,
        Method::PredictiveCoding | Method::Chl | Method::ConvexChl
    ) {
        for k in (0..betas.len().saturating_sub(1)).rev() {
            let next = ws.sigma[k + 1];
            ws.sigma[k] *= next;
        }
    }
}

/// `dst[k] ← src[k]` for every layer.
pub(super) fn copy_all<T: RealField + Copy>(dst: &mut [DMatrix<T>], src: &[DMatrix<T>]) {
    for (d, s) in dst.iter_mut().zip(src) {
        d.copy_from(s);
    }
}
