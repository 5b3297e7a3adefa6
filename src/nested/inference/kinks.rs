//! Units held on a convex kink of a penalizer layer ("Kinks" in the module docs of
//! [`super`]): the rule that holds and releases them, and their multipliers.

use nalgebra::{DMatrix, RealField};

use super::rules::bounds;
use super::workspace::Kinks;
use crate::linalg::{vectorized, ColsMut};
use crate::nested::Network;

impl<T: RealField + Copy> Kinks<T> {
    /// No unit held; `â` of the forward pass; the row norms of the weights (layers `k ≥ 1`:
    /// `â_1` does not move).
    pub(super) fn reset(&mut self, net: &Network<T>, a: &[DMatrix<T>]) {
        for (k, layer) in net.layers.iter().enumerate().skip(1) {
            self.held[k].fill(false);
            self.prev_a[k].copy_from(&a[k]);
            for (i, n) in self.row_norms[k].iter_mut().enumerate() {
                *n = layer.w.row(i).norm_squared();
            }
        }
    }

    /// Layer `k ≥ 1`'s kinks: the rule (shared by the pieces of a sweep, [`KinkLayer::hold`])
    /// and the held units' state, lent by columns (`held`, `ν`, the last `â`).
    #[allow(clippy::type_complexity)]
    pub(super) fn layer(
        &mut self,
        k: usize,
        act: crate::prox::Activation,
    ) -> (
        KinkLayer<'_, T>,
        (ColsMut<'_, bool>, ColsMut<'_, T>, ColsMut<'_, T>),
    ) {
        let rows = self.row_norms[k].len();
        let rule = KinkLayer {
            bounds: bounds::<T>(act),
            row_norms: &self.row_norms[k],
        };
        let state = (
            ColsMut::new(&mut self.held[k], rows),
            ColsMut::of(&mut self.nu[k]),
            ColsMut::of(&mut self.prev_a[k]),
        );
        (rule, state)
    }

    /// Replaces `q_k` by the multiplier `ν` on the units of layer `k` held on a kink (the
    /// envelope gradient: no step).
    pub(super) fn substitute(&self, k: usize, q: &mut DMatrix<T>) {
        let q = q.as_mut_slice();
        for ((qi, &h), &nu) in q.iter_mut().zip(&self.held[k]).zip(self.nu[k].as_slice()) {
            if h {
                *qi = nu;
            }
        }
    }
}

/// One layer's kink rule: its activation's bounds and the squared row norms of its weights,
/// shared by the pieces of a sweep.
pub(super) struct KinkLayer<'a, T> {
    bounds: (T, T),
    row_norms: &'a [T],
}

/// A piece's columns of one layer's held units: whether held, `ν`, and `â` of the last sweep.
pub(super) struct KinkState<'p, T> {
    pub(super) held: &'p mut [bool],
    pub(super) nu: &'p mut [T],
    pub(super) prev_a: &'p mut [T],
}

impl<T: RealField + Copy> KinkLayer<'_, T> {
    /// Replaces `q_k = f'(â_k) ⊙ λ_k` by the multiplier `ν` on the units held on a convex kink,
    /// for a piece's whole columns of the layer (`(a, lambda)`, `q` and `state` are those
    /// columns'). First updates the held set, with `step = σ_{k−1} B`: a unit whose `â` crossed
    /// a bound `c` since the last sweep, with its state beyond the bound (`λ > 0` at the lower
    /// bound, `λ < 0` at the upper), is held; a held unit takes the Newton step
    /// `ν ← ν + (â − c)/(σ_{k−1} B ‖W_k[i, :]‖²)` towards `â = c` (the direct effect of `ν` on
    /// `â` through `λ_{k−1} = W_kᵀq_k`), and is released when `ν` leaves
    /// `[min(0, λ), max(0, λ)]` (the subdifferential `λ ∂f(c)`): then it belongs to a piece.
    pub(super) fn hold(
        &self,
        step: T,
        (a, lambda): (&[T], &[T]),
        q: &mut [T],
        state: KinkState<'_, T>,
    ) {
        let KinkState { held, nu, prev_a } = state;
        let ((lo, hi), rows, zero) = (self.bounds, self.row_norms.len(), T::zero());
        // A crossing of the bound c between the last two sweeps.
        // (`&`, `|`: no short circuit, so that the test vectorizes.)
        let crossed = |prev: T, av: T, c: T| ((prev - c) * (av - c) <= zero) & (prev != av);
        let convex = |prev: T, av: T, l: T| {
            ((l > zero) & crossed(prev, av, lo)) | ((l < zero) & crossed(prev, av, hi))
        };
        // Held units and crossings are rare: blocks with neither only move `â` into `prev_a`,
        // in a pass that vectorizes.
        const BLOCK: usize = 64;
        vectorized(
            #[inline(always)]
            || {
                for start in (0..a.len()).step_by(BLOCK) {
                    let end = (start + BLOCK).min(a.len());
                    let block = a[start..end].iter().zip(&prev_a[start..end]);
                    let block = block.zip(&lambda[start..end]).zip(&held[start..end]);
                    let quiet = block.fold(true, |quiet, (((&av, &prev), &l), &h)| {
                        quiet & !(h | convex(prev, av, l))
                    });
                    if quiet {
                        prev_a[start..end].copy_from_slice(&a[start..end]);
                        continue;
                    }
                    for idx in start..end {
                        let (av, l) = (a[idx], lambda[idx]);
                        let prev = std::mem::replace(&mut prev_a[idx], av);
                        if !held[idx] {
                            if !convex(prev, av, l) {
                                continue;
                            }
                            // The state at this sweep was made by the previous sweep's
                            // signal, f'(â_prev)·λ: the Newton step starts from it.
                            held[idx] = true;
                            nu[idx] = if prev > lo && prev < hi { l } else { zero };
                        }
                        let c = if l > zero { lo } else { hi };
                        let v = nu[idx] + (av - c) / (step * self.row_norms[idx % rows]);
                        if v >= l.min(zero) && v <= l.max(zero) && v.is_finite() {
                            nu[idx] = v;
                            q[idx] = v;
                        } else {
                            held[idx] = false;
                        }
                    }
                }
            },
        );
    }
}
