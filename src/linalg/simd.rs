//! Vector instructions: [`vectorized`], which compiles an element-wise pass for the widest
//! vector instructions the CPU has (the one runtime dispatch of the crate), [`Lanes`], sums
//! whose bits do not depend on which instructions ran (or on how many threads share the pass),
//! and [`clean_upper_state`], which products call after faer's AVX-512 kernels. With
//! [`super::threads`], the crate's one room for `unsafe`.

use std::sync::atomic::{AtomicU8, Ordering};

use nalgebra::RealField;

/// The instruction sets [`vectorized`] compiles its passes for, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    /// The target's baseline (SSE2 on x86-64).
    Baseline,
    /// AVX2 (256-bit vectors).
    Avx2,
    /// AVX-512F (512-bit vectors).
    Avx512,
}

/// The widest [`Isa`] [`vectorized`] may use (lowered by tests that compare the variants).
static CEILING: AtomicU8 = AtomicU8::new(Isa::Avx512 as u8);

impl Isa {
    /// The widest this CPU has.
    pub(crate) fn detected() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Self::Avx2;
            }
        }
        Self::Baseline
    }

    /// What [`vectorized`] runs: the detected set, capped in tests (`Isa::with_ceiling`).
    pub(crate) fn active() -> Self {
        let ceiling = match CEILING.load(Ordering::Relaxed) {
            0 => Self::Baseline,
            1 => Self::Avx2,
            _ => Self::Avx512,
        };
        Self::detected().min(ceiling)
    }

    /// Runs `f` with [`vectorized`] capped at `ceiling` (every variant gives the same bits, so
    /// the cap changes only the speed of code running meanwhile on other threads); one caller
    /// at a time.
    #[cfg(test)]
    pub(crate) fn with_ceiling<R>(ceiling: Self, f: impl FnOnce() -> R) -> R {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        CEILING.store(ceiling as u8, Ordering::Relaxed);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        CEILING.store(Self::Avx512 as u8, Ordering::Relaxed);
        r.unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// Its name (`AVX-512`, `AVX2`, `SSE2`, or `baseline` off x86-64).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "AVX-512",
            Self::Avx2 => "AVX2",
            Self::Baseline if cfg!(target_arch = "x86_64") => "SSE2",
            Self::Baseline => "baseline",
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Runs `f` compiled for the widest vector instructions the CPU has ([`Isa::active`]): AVX-512,
/// AVX2, else the target's baseline (SSE2 on x86-64). Pass an `#[inline(always)]` closure (and
/// call only `#[inline(always)]` or small functions from it): the pass must be inlined into
/// each variant to be vectorized there — a closure called from three variants is otherwise
/// left out of line and compiled for the baseline. Every variant performs the same IEEE
/// operations in the same order (Rust never contracts `a·b + c` into an FMA, and sums go
/// through [`Lanes`]), so the result is bit-identical whichever runs.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match Isa::active() {
        // SAFETY: `active` never exceeds what the CPU has (`Isa::detected`).
        Isa::Avx512 => return unsafe { avx512(f) },
        // SAFETY: as above.
        Isa::Avx2 => return unsafe { avx2(f) },
        Isa::Baseline => {}
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Marks the upper halves of the vector registers clean (`vzeroupper`) where the CPU has AVX.
///
/// faer's AVX-512 kernels return with the upper halves dirty; every legacy-SSE instruction
/// after that (all of the element-wise code compiled for the x86-64 baseline) then paid a
/// transition penalty: the softmax loss of one batch took 100 µs instead of 10 µs, an epoch
/// 0.80 s instead of 0.67 s. The products call this after each kernel.
#[inline(always)]
pub(crate) fn clean_upper_state() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU supports AVX (checked just above).
        unsafe { std::arch::x86_64::_mm256_zeroupper() };
    }
}

/// How many partial sums a [`Lanes`] keeps.
pub(crate) const LANES: usize = 8;

/// A sum kept as [`LANES`] interleaved partial sums — term `i` of a run goes to lane
/// `i mod LANES` — and combined pairwise in one fixed order by [`Lanes::total`]. A sequential
/// sum is one chain of dependent additions (3-4 cycles each) that the compiler may not
/// reorder; eight chains vectorize. The order is fixed by the data's layout alone, so the bits
/// are the same on every instruction set and for every thread count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lanes<T>(pub(crate) [T; LANES]);

impl<T: RealField + Copy> Lanes<T> {
    /// All lanes zero.
    #[inline(always)]
    pub(crate) fn zero() -> Self {
        Self([T::zero(); LANES])
    }

    /// `((l₀ + l₁) + (l₂ + l₃)) + ((l₄ + l₅) + (l₆ + l₇))`.
    #[inline(always)]
    pub(crate) fn total(self) -> T {
        let l = self.0;
        ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
    }
}

/// `Σ_i term(x_i, y_i)` through [`Lanes`] (terms `i ≥ LANES·⌊n/LANES⌋` into lanes `0, 1, …`).
#[inline(always)]
pub(crate) fn lane_sum2<T: RealField + Copy>(x: &[T], y: &[T], term: impl Fn(T, T) -> T) -> T {
    let mut acc = Lanes::zero();
    let full = x.len().min(y.len()) / LANES * LANES;
    for (xs, ys) in x[..full]
        .chunks_exact(LANES)
        .zip(y[..full].chunks_exact(LANES))
    {
        for l in 0..LANES {
            acc.0[l] += term(xs[l], ys[l]);
        }
    }
    for (l, (&xi, &yi)) in x[full..].iter().zip(&y[full..]).enumerate() {
        acc.0[l] += term(xi, yi);
    }
    acc.total()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_follow_their_documented_order() {
        // 11 terms: lanes 0-2 get two, lanes 3-7 one; the expected bits are formed by the
        // documented rule, independently of the helper.
        let x: Vec<f32> = (0..11).map(|i| 1.0 + (i as f32) * 1e-7).collect();
        let y = vec![1.0_f32; 11];
        let got = vectorized(
            #[inline(always)]
            || lane_sum2(&x, &y, |a, b| a * b),
        );
        let mut lanes = [0.0_f32; LANES];
        for (i, v) in x.iter().enumerate() {
            lanes[i % LANES] += v;
        }
        let l = lanes;
        let want = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
        assert_eq!(got.to_bits(), want.to_bits());
        // And without the dispatch (the baseline variant): the same bits.
        assert_eq!(lane_sum2(&x, &y, |a, b| a * b).to_bits(), want.to_bits());
        assert_eq!(lane_sum2::<f64>(&[], &[], |a, b| a * b), 0.0);
    }
}
