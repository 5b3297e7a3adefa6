//! The penalizer (MAC / predictive coding) objective of one sample and its pieces.

use std::ops::{AddAssign, SubAssign};

use nalgebra::{DMatrix, DVector};

use crate::nested::{Network, OutputLoss};
use crate::solve::smooth::SmoothObjective;

/// The penalizer (MAC / predictive coding) objective of one sample in the stacked variable
/// `(z_1; …; z_L)`, scaled by `w` (`1/B` times the objective scale).
pub(super) struct Penalizer<'a> {
    pub(super) net: &'a Network<f64>,
    pub(super) betas: &'a [f64],
    pub(super) loss: OutputLoss,
    pub(super) x: DVector<f64>,
    pub(super) t: DVector<f64>,
    pub(super) w: f64,
    pub(super) offsets: &'a [usize],
}

/// Which linear piece of a box-family activation a unit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Piece {
    Lo,
    In,
    Hi,
}

impl Piece {
    /// The piece of pre-activation `a` for bounds `(lo, hi)`; at a kink the clamped side
    /// (`f' = 0`, as [`crate::prox::Activation::derivative`]).
    pub(super) fn of(a: f64, (lo, hi): (f64, f64)) -> Piece {
        if a <= lo {
            Piece::Lo
        } else if a >= hi {
            Piece::Hi
        } else {
            Piece::In
        }
    }
}

impl Penalizer<'_> {
    pub(super) fn split<'b>(
        &self,
        v: &'b DVector<f64>,
        k: usize,
    ) -> nalgebra::DVectorView<'b, f64> {
        v.rows(self.offsets[k], self.net.layers[k].w.nrows())
    }

    /// `a_k = W_k z_{k−1} + b_k` at the stacked point `v` (`z_0 = x`).
    pub(super) fn pre(&self, v: &DVector<f64>, k: usize) -> DVector<f64> {
        let layer = &self.net.layers[k];
        if k == 0 {
            &layer.w * &self.x + &layer.bias
        } else {
            &layer.w * self.split(v, k - 1) + &layer.bias
        }
    }

    /// Layer `k`'s activation bounds (`±∞` for the identity).
    pub(super) fn bounds(&self, k: usize) -> (f64, f64) {
        self.net.layers[k]
            .activation
            .bounds()
            .unwrap_or((f64::NEG_INFINITY, f64::INFINITY))
    }

    pub(super) fn top(&self) -> usize {
        self.net.layers.len() - 1
    }

    /// The loss term's value, gradient and Hessian at `v`.
    pub(super) fn loss_at(&self, v: &DVector<f64>) -> (f64, DVector<f64>, DMatrix<f64>) {
        let z = self.split(v, self.top()).into_owned();
        self.loss.sample(&z, &self.t, self.w)
    }

    /// The piece each unit of layers `k ≥ 1` is on at `v` (layer 0's input is the constant `x`,
    /// so its pieces never enter a derivative).
    pub(super) fn pieces_at(&self, v: &DVector<f64>) -> Vec<Vec<Piece>> {
        let mut pieces = vec![Vec::new()];
        for k in 1..=self.top() {
            let bounds = self.bounds(k);
            pieces.push(
                self.pre(v, k)
                    .iter()
                    .map(|&a| Piece::of(a, bounds))
                    .collect(),
            );
        }
        pieces
    }

    /// Layer `k`'s `f(a_k)` and `f'(a_k)` on the given pieces (layer 0: `f(a_0)` only).
    pub(super) fn layer_on(
        &self,
        v: &DVector<f64>,
        k: usize,
        piece: &[Piece],
    ) -> (DVector<f64>, DVector<f64>) {
        let a = self.pre(v, k);
        if k == 0 {
            let mut fa = a.clone();
            let act = self.net.layers[0].activation;
            act.activate(a.as_slice(), fa.as_mut_slice());
            return (fa, DVector::zeros(a.len()));
        }
        let (lo, hi) = self.bounds(k);
        let fa = DVector::from_fn(a.len(), |i, _| match piece[i] {
            Piece::Lo => lo,
            Piece::In => a[i],
            Piece::Hi => hi,
        });
        let d = DVector::from_fn(a.len(), |i, _| f64::from(u8::from(piece[i] == Piece::In)));
        (fa, d)
    }

    /// Gradient of the objective with every unit's piece fixed (`pieces[k]` for `k ≥ 1`).
    pub(super) fn gradient_on(&self, v: &DVector<f64>, pieces: &[Vec<Piece>]) -> DVector<f64> {
        let top = self.top();
        let mut g = DVector::zeros(v.len());
        let lg = self.loss_at(v).1;
        g.rows_mut(self.offsets[top], lg.len()).add_assign(&lg);
        for (k, (layer, piece)) in self.net.layers.iter().zip(pieces).enumerate() {
            let (fa, d) = self.layer_on(v, k, piece);
            let r = (self.split(v, k) - fa) * (self.w / self.betas[k]);
            g.rows_mut(self.offsets[k], r.len()).add_assign(&r);
            if k > 0 {
                let back = layer.w.transpose() * d.component_mul(&r);
                g.rows_mut(self.offsets[k - 1], back.len())
                    .sub_assign(&back);
            }
        }
        g
    }

    /// Hessian with every unit's piece fixed: `r_k = z_k − D W z_{k−1} − const`, so
    /// `∂r/∂z_k = I`, `∂r/∂z_{k−1} = −D W`; quadratic in `z` for the squared loss.
    pub(super) fn hessian_on(&self, v: &DVector<f64>, pieces: &[Vec<Piece>]) -> DMatrix<f64> {
        let top = self.top();
        let n = v.len();
        let mut h = DMatrix::zeros(n, n);
        let lh = self.loss_at(v).2;
        let o = self.offsets[top];
        h.view_mut((o, o), lh.shape()).add_assign(&lh);
        for (k, (layer, piece)) in self.net.layers.iter().zip(pieces).enumerate() {
            let c = self.w / self.betas[k];
            let dw =
                (k > 0).then(|| DMatrix::from_diagonal(&self.layer_on(v, k, piece).1) * &layer.w);
            crate::nested::add_residual_hessian(
                &mut h,
                self.offsets,
                (k, layer.w.nrows()),
                dw.as_ref(),
                c,
            );
        }
        h
    }
}

impl SmoothObjective for Penalizer<'_> {
    fn value(&self, v: &DVector<f64>) -> f64 {
        let mut s = self.loss_at(v).0;
        for (k, layer) in self.net.layers.iter().enumerate() {
            let a = self.pre(v, k);
            let mut fa = a.clone();
            layer.activation.activate(a.as_slice(), fa.as_mut_slice());
            s += self.w * 0.5 * (self.split(v, k) - fa).norm_squared() / self.betas[k];
        }
        s
    }

    fn gradient(&self, v: &DVector<f64>) -> DVector<f64> {
        self.gradient_on(v, &self.pieces_at(v))
    }

    /// Exact on each linear piece of the activations (their second derivative vanishes there).
    fn hessian(&self, v: &DVector<f64>) -> DMatrix<f64> {
        self.hessian_on(v, &self.pieces_at(v))
    }
}

/// One sample's minimizer of the penalizer objective.
pub(super) struct SampleSolution {
    pub(super) z: DVector<f64>,
    /// `(layer, unit, ν)` of every unit whose minimizer sits on a kink, `ν = ∂J/∂a` there.
    pub(super) kinks: Vec<(usize, usize, f64)>,
    pub(super) iterations: usize,
    /// Stationarity norm (with the kink multipliers).
    pub(super) residual: f64,
}
