//! The fixed-point iteration of the sweeps: damping, Anderson acceleration per sample, the
//! residual and the stop ([`FixedPoint`]).

use nalgebra::{DMatrix, RealField};

use super::settings::Tally;
use super::workspace::Memory;
use crate::linalg::{vectorized, ColsMut, Lanes, LayerCols, LayersMut, Threads, LANES};
use crate::nested::NestedSettings;

/// The bookkeeping of one fixed-point iteration `state ← Φ(state)`.
pub(super) struct FixedPoint<T> {
    pub(super) eta: T,
    pub(super) last: T,
    pub(super) sweeps: usize,
    pub(super) residual: T,
    pub(super) converged: bool,
    pub(super) tol: T,
    pub(super) min_damping: T,
    pub(super) anderson: bool,
}

impl<T: RealField + Copy> FixedPoint<T> {
    pub(super) fn new(settings: &NestedSettings) -> Self {
        Self {
            eta: T::one(),
            last: T::zero(),
            sweeps: 0,
            residual: T::zero(),
            converged: false,
            tol: nalgebra::convert(settings.inference_tol),
            min_damping: nalgebra::convert(settings.inference_min_damping),
            anderson: settings.inference_anderson,
        }
    }

    /// Takes `next = Φ(state)`: updates `state` (Anderson while undamped, else the damped
    /// step), halves the damping when the residual stops falling by 1 %, and returns whether
    /// the residual (times `scale`, which makes it per sample) reached the tolerance.
    pub(super) fn advance(
        &mut self,
        state: &mut [DMatrix<T>],
        next: &[DMatrix<T>],
        (memory, threads): (&mut Memory<T>, &Threads),
        scale: T,
    ) -> bool {
        self.sweeps += 1;
        let accelerate = self.anderson && self.sweeps > 1 && self.eta == T::one();
        let (change, size) = memory.update(state, next, (self.eta, accelerate), threads);
        self.residual = change * scale;
        let stalled = self.residual > self.last * nalgebra::convert(0.99);
        let falling = self.residual < self.last * nalgebra::convert(0.5);
        if self.sweeps > 1 && stalled && self.eta > self.min_damping {
            self.eta *= nalgebra::convert(0.5);
        } else if falling && self.eta < T::one() {
            self.eta = (self.eta * nalgebra::convert(2.0)).min(T::one());
        }
        self.last = self.residual;
        self.converged = self.residual <= self.tol * (T::one() + size * scale);
        self.converged
    }

    pub(super) fn tally(&self, value: T, forward_loss: T) -> Tally<T> {
        Tally {
            value,
            forward_loss,
            sweeps: self.sweeps,
            residual: self.residual,
            converged: self.converged,
            damping: self.eta,
            best_iterate: false,
        }
    }
}

impl<T: RealField + Copy> Memory<T> {
    /// The update of a state from its fixed-point residual `f = Φ(x) − x`, per sample (the
    /// samples' problems are independent): Anderson acceleration with memory one (type II,
    /// mixing `η`), `x ← x + ηf − γ(Δx + ηΔf)` with `γ = ⟨Δf, f⟩/‖Δf‖²` from the previous
    /// sweep's differences, or the damped step `x ← x + ηf` (`anderson` false). Cut over the
    /// team by samples (columns); returns `max |f|` and `max |Φ(x)|`.
    pub(super) fn update(
        &mut self,
        state: &mut [DMatrix<T>],
        next: &[DMatrix<T>],
        (eta, anderson): (T, bool),
        threads: &Threads,
    ) -> (T, T) {
        let cols = self.change.len();
        let rows: usize = next.iter().map(DMatrix::nrows).sum();
        let parts = (
            ColsMut::new(&mut self.change, 1),
            ColsMut::new(&mut self.size, 1),
            LayersMut::of(state),
            LayersMut::of(&mut self.prev_state),
            LayersMut::of(&mut self.prev_f),
        );
        threads.columns(cols, rows, parts, &|c, (change, size, x, px, pf)| {
            let mut piece = AndersonPiece { x, px, pf };
            vectorized(
                #[inline(always)]
                || {
                    for (jj, (change, size)) in change.iter_mut().zip(size.iter_mut()).enumerate() {
                        let j = c.start + jj;
                        (*change, *size) =
                            update_sample(&mut piece, next, (jj, j), (eta, anderson));
                    }
                },
            );
        });
        let max = |m: &[T]| m.iter().fold(T::zero(), |a, &b| a.max(b));
        (max(&self.change), max(&self.size))
    }
}

/// A piece's columns of the buffers of [`Memory::update`], every layer: the states, the
/// previous states and the previous residuals.
struct AndersonPiece<'p, T> {
    x: LayerCols<'p, T>,
    px: LayerCols<'p, T>,
    pf: LayerCols<'p, T>,
}

impl<T> AndersonPiece<'_, T> {
    /// Column `jj` of the piece in layer `k` (`rows` units): state, previous state, previous
    /// residual.
    #[inline(always)]
    fn column(&mut self, k: usize, jj: usize, rows: usize) -> (&mut [T], &mut [T], &mut [T]) {
        let r = jj * rows..(jj + 1) * rows;
        (
            &mut self.x.layer(k)[r.clone()],
            &mut self.px.layer(k)[r.clone()],
            &mut self.pf.layer(k)[r],
        )
    }
}

/// [`Memory::update`] of sample `j`, column `jj` of `piece`, whose `Φ(state)` in layer `k` is
/// column `j` of `next[k]`: `max |f|` and `max |Φ(x)|` over its units. The sums `⟨Δf, f⟩`,
/// `‖Δf‖²` go through [`Lanes`] per layer, added up in layer order.
#[inline(always)]
fn update_sample<T: RealField + Copy>(
    piece: &mut AndersonPiece<'_, T>,
    next: &[DMatrix<T>],
    (jj, j): (usize, usize),
    (eta, anderson): (T, bool),
) -> (T, T) {
    let zero = T::zero();
    let (mut dot, mut norm, mut change, mut size) = (zero, zero, zero, zero);
    for (k, next) in next.iter().enumerate() {
        let rows = next.nrows();
        let n = &next.as_slice()[j * rows..(j + 1) * rows];
        let (x, _, pf) = piece.column(k, jj, rows);
        let mut lanes = [Lanes::<T>::zero(); 4];
        let mut term = |l: usize, xi: T, ni: T, pi: T| {
            let f = ni - xi;
            let df = f - pi;
            lanes[0].0[l] += df * f;
            lanes[1].0[l] += df * df;
            lanes[2].0[l] = lanes[2].0[l].max(f.abs());
            lanes[3].0[l] = lanes[3].0[l].max(ni.abs());
        };
        let full = x.len() / LANES * LANES;
        let chunks = x[..full].chunks_exact(LANES).zip(n.chunks_exact(LANES));
        for ((xs, ns), ps) in chunks.zip(pf.chunks_exact(LANES)) {
            for l in 0..LANES {
                term(l, xs[l], ns[l], ps[l]);
            }
        }
        let rest = x[full..].iter().zip(&n[full..]).zip(&pf[full..]);
        for (l, ((&xi, &ni), &pi)) in rest.enumerate() {
            term(l, xi, ni, pi);
        }
        let max = |m: Lanes<T>| m.0.iter().fold(zero, |a, &b| a.max(b));
        dot += lanes[0].total();
        norm += lanes[1].total();
        change = change.max(max(lanes[2]));
        size = size.max(max(lanes[3]));
    }
    let gamma = if anderson && norm > zero {
        dot / norm
    } else {
        zero
    };
    for (k, next) in next.iter().enumerate() {
        let rows = next.nrows();
        let n = &next.as_slice()[j * rows..(j + 1) * rows];
        let (x, px, pf) = piece.column(k, jj, rows);
        let column = x.iter_mut().zip(n).zip(px.iter_mut()).zip(pf.iter_mut());
        if gamma == zero {
            for (((xi, &ni), px), pf) in column {
                let f = ni - *xi;
                (*px, *pf) = (*xi, f);
                *xi += eta * f;
            }
        } else {
            for (((xi, &ni), px), pf) in column {
                let f = ni - *xi;
                let step = eta * f - gamma * ((*xi - *px) + eta * (f - *pf));
                (*px, *pf) = (*xi, f);
                *xi += step;
            }
        }
    }
    (change, size)
}
