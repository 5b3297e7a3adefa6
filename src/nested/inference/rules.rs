//! The element-wise rules the sweeps share: an activation's bounds, the clamp, and the
//! pre-activation signal of a layer's error signal.

use nalgebra::RealField;

use crate::nested::EnergyKind;

/// An activation's bounds `(lo, hi)` (infinite where it has none).
pub(super) fn bounds<T: RealField + Copy>(act: crate::prox::Activation) -> (T, T) {
    let (lo, hi) = act.bounds().unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
    (nalgebra::convert(lo), nalgebra::convert(hi))
}

/// `v` clamped to `[lo, hi]`.
pub(super) fn clamp<T: RealField + Copy>(v: T, lo: T, hi: T) -> T {
    v.max(lo).min(hi)
}

/// The pre-activation signal `q_k` of `λ` at `â_k` (module docs) into `q`, on any range of
/// units.
#[inline(always)]
pub(super) fn signal<T: RealField + Copy>(
    kind: EnergyKind,
    act: crate::prox::Activation,
    quotient_beta: T,
    (a, lambda): (&[T], &[T]),
    q: &mut [T],
) {
    match kind {
        EnergyKind::Penalizer => {
            act.derivative(a, q);
            for (qi, &li) in q.iter_mut().zip(lambda) {
                *qi *= li;
            }
        }
        _ => act.difference_quotient(a, lambda, quotient_beta, q),
    }
}
