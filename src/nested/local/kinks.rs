//! The active-set method on the pieces of a penalizer objective where the minimizer sits on a
//! convex kink.

use nalgebra::{DMatrix, DVector};

use super::penalizer::{Penalizer, Piece, SampleSolution};
use crate::error::{Error, Result};
use crate::nested::NestedSettings;

/// A unit held on a kink: layer, unit, and the bound's side.
pub(super) type Kink = (usize, usize, Piece);

/// The pieces of every unit of layers `k ≥ 1` and the units held on convex kinks.
pub(super) struct PieceState {
    pub(super) pieces: Vec<Vec<Piece>>,
    pub(super) kinks: Vec<Kink>,
}

/// MAC at kinks: a primal active-set method on the pieces of the (piecewise-quadratic for the
/// squared loss) penalizer objective, from the point where the smooth solver stalled.
///
/// A unit `i` of layer `k ≥ 1` whose pre-activation sits on a bound `c ∈ {lo, hi}` with its
/// target beyond it (`z < lo`, or `z > hi`) is a *convex* kink: there `J = J_off + ψ(a)`, `ψ`
/// convex with `∂ψ(c) = [0, (lo − z)·w/β]` (resp. `[(hi − z)·w/β, 0]`). Such units are held at
/// `a_{k,i}(z_{k−1}) = c` (equality constraints), the others use the piece their `a` lies on,
/// and each piece is solved by Newton on the equality-constrained KKT system (one step for the
/// squared loss). Optimal when every kink multiplier `ν = ∂J/∂a` lies in `∂ψ(c)` and every other
/// unit stays on its piece; otherwise the worst offender changes piece (a released kink moves
/// to the side its multiplier points to; a unit leaving its piece across a convex kink becomes a
/// kink). The multipliers are the gradient's `∂J/∂a` at the kinks (the value function is smooth
/// there when `ν` is interior).
pub(super) fn kink_active_set(
    obj: &Penalizer<'_>,
    mut v: DVector<f64>,
    settings: &NestedSettings,
) -> Result<SampleSolution> {
    let scale = 1.0 + v.amax();
    let mut state = initial_pieces(obj, &v, settings.kink_tol * scale);
    let mut iterations = 0;
    let mut residual = f64::INFINITY;
    for _ in 0..(4 * v.len() + 20) {
        let (nu, steps) = newton_on_pieces(obj, &mut v, &state, settings)?;
        iterations += steps;
        let g = obj.gradient_on(&v, &state.pieces);
        residual = (g + kink_rows(obj, &state.kinks, v.len()).transpose() * &nu).amax();
        if let Some((r, side)) = worst_kink(obj, &v, &state.kinks, &nu, settings) {
            let (k, i, _) = state.kinks.remove(r);
            state.pieces[k][i] = side;
            continue;
        }
        if !move_pieces(obj, &v, &mut state, settings.piece_tol * scale) {
            let kinks = state.kinks.iter().zip(nu.iter());
            return Ok(SampleSolution {
                kinks: kinks.map(|(&(k, i, _), &n)| (k, i, n)).collect(),
                z: v,
                iterations,
                residual,
            });
        }
    }
    Err(Error::NotConverged {
        solver: "MAC kink active set".into(),
        iterations,
        residual,
    })
}

/// Pieces and kinks at the stalled point: a unit within `tol` of a bound with its target beyond
/// it starts on the kink.
pub(super) fn initial_pieces(obj: &Penalizer<'_>, v: &DVector<f64>, tol: f64) -> PieceState {
    let mut pieces: Vec<Vec<Piece>> = vec![Vec::new()];
    let mut kinks = Vec::new();
    for k in 1..=obj.top() {
        let a = obj.pre(v, k);
        let (lo, hi) = obj.bounds(k);
        let z = obj.split(v, k);
        let layer = (0..a.len())
            .map(|i| {
                if (a[i] - lo).abs() <= tol && z[i] < lo {
                    kinks.push((k, i, Piece::Lo));
                    Piece::Lo
                } else if (a[i] - hi).abs() <= tol && z[i] > hi {
                    kinks.push((k, i, Piece::Hi));
                    Piece::Hi
                } else {
                    Piece::of(a[i], (lo, hi))
                }
            })
            .collect();
        pieces.push(layer);
    }
    PieceState { pieces, kinks }
}

/// `∂a_{k,i}/∂v` of the held kinks: row `i` of `W_k`, in the block of `z_{k−1}`.
pub(super) fn kink_rows(obj: &Penalizer<'_>, kinks: &[Kink], n: usize) -> DMatrix<f64> {
    let mut c = DMatrix::zeros(kinks.len(), n);
    for (r, &(k, i, _)) in kinks.iter().enumerate() {
        let w = &obj.net.layers[k].w;
        c.view_mut((r, obj.offsets[k - 1]), (1, w.ncols()))
            .copy_from(&w.row(i));
    }
    c
}

/// Newton on the current pieces with the kink equalities `a_{k,i} = bound`; returns the kink
/// multipliers and the number of steps.
pub(super) fn newton_on_pieces(
    obj: &Penalizer<'_>,
    v: &mut DVector<f64>,
    state: &PieceState,
    settings: &NestedSettings,
) -> Result<(DVector<f64>, usize)> {
    let c = kink_rows(obj, &state.kinks, v.len());
    let mut nu = DVector::zeros(state.kinks.len());
    for step in 1..=settings.newton_max_steps {
        let g = obj.gradient_on(v, &state.pieces);
        let h = obj.hessian_on(v, &state.pieces);
        let rhs = DVector::from_iterator(
            state.kinks.len(),
            state.kinks.iter().map(|&(k, i, piece)| {
                let (lo, hi) = obj.bounds(k);
                let bound = if piece == Piece::Lo { lo } else { hi };
                bound - obj.pre(v, k)[i]
            }),
        );
        let kkt = crate::linalg::solve_kkt(&h, &c, &(-&g), &rhs)?;
        *v += &kkt.x;
        nu = kkt.nu;
        if kkt.x.amax() <= settings.tol_step * (1.0 + v.amax()) {
            return Ok((nu, step));
        }
    }
    Ok((nu, settings.newton_max_steps))
}

/// The kink whose multiplier lies farthest outside `∂ψ(c)`, with the side it is released to.
pub(super) fn worst_kink(
    obj: &Penalizer<'_>,
    v: &DVector<f64>,
    kinks: &[Kink],
    nu: &DVector<f64>,
    settings: &NestedSettings,
) -> Option<(usize, Piece)> {
    let mut worst: Option<(f64, usize, Piece)> = None;
    for (r, &(k, i, piece)) in kinks.iter().enumerate() {
        let z = obj.split(v, k)[i];
        let cw = obj.w / obj.betas[k];
        let (lo, hi) = obj.bounds(k);
        let (lo_end, hi_end, off_side, on_side) = match piece {
            Piece::Lo => (0.0, (lo - z) * cw, Piece::Lo, Piece::In),
            _ => ((hi - z) * cw, 0.0, Piece::In, Piece::Hi),
        };
        let tol = settings.kink_multiplier_tol * (1.0 + lo_end.abs() + hi_end.abs());
        let (violation, side) = if nu[r] < lo_end - tol {
            (lo_end - nu[r], off_side)
        } else if nu[r] > hi_end + tol {
            (nu[r] - hi_end, on_side)
        } else {
            continue;
        };
        if worst.is_none_or(|(w, _, _)| violation > w) {
            worst = Some((violation, r, side));
        }
    }
    worst.map(|(_, r, side)| (r, side))
}

/// Moves every free unit whose pre-activation left its piece by more than `tol` (crossing a
/// convex kink: held there); returns whether any moved.
pub(super) fn move_pieces(
    obj: &Penalizer<'_>,
    v: &DVector<f64>,
    state: &mut PieceState,
    tol: f64,
) -> bool {
    let mut moved = false;
    for k in 1..=obj.top() {
        let a = obj.pre(v, k);
        let (lo, hi) = obj.bounds(k);
        for i in 0..a.len() {
            if state.kinks.iter().any(|&(kk, ii, _)| kk == k && ii == i) {
                continue;
            }
            let z = obj.split(v, k)[i];
            let piece = &mut state.pieces[k][i];
            let left = match *piece {
                Piece::Lo => a[i] > lo + tol,
                Piece::In => a[i] < lo - tol || a[i] > hi + tol,
                Piece::Hi => a[i] < hi - tol,
            };
            if !left {
                continue;
            }
            moved = true;
            let crossing_lo = (*piece == Piece::Lo) != (a[i] <= lo);
            if crossing_lo && z < lo {
                state.kinks.push((k, i, Piece::Lo));
                *piece = Piece::Lo;
            } else if !crossing_lo && z > hi {
                state.kinks.push((k, i, Piece::Hi));
                *piece = Piece::Hi;
            } else {
                *piece = Piece::of(a[i], (lo, hi));
            }
        }
    }
    moved
}
