//! Convex potentials, their conjugates and proximal maps: one definition of each activation.
//!
//! Every activation `f` here is the gradient of a convex conjugate, `f = ∇G*`, of a potential
//! `G` (Section 3.2.2, Eq. 31-32), so that
//! ```text
//!     f(u) = argmin_z  G(z) − zᵀu          (Fenchel form)
//!          = argmin_z  ½‖z − u‖² + F(z)    (proximal form, for the box family: G = ½‖·‖² + F)
//! ```
//! | activation | `G(z)` | `G*(u)` | `f(u)` |
//! |---|---|---|---|
//! | identity | `½‖z‖²` | `½‖u‖²` | `u` |
//! | ReLU | `½‖z‖² + ι_{≥0}(z)` | `½‖[u]₊‖²` | `[u]₊` |
//! | hard sigmoid | `½‖z‖² + ι_{[0,1]ⁿ}(z)` | `Σ u_j c_j − ½c_j²`, `c = clamp(u,0,1)` | `clamp(u,0,1)` |
//! | hard tanh | `½‖z‖² + ι_{[−1,1]ⁿ}(z)` | as above on `[−1,1]` | `clamp(u,−1,1)` |
//! | box `[lo,hi]` | `½‖z‖² + ι_{[lo,hi]ⁿ}(z)` | as above | `clamp(u,lo,hi)` |
//! | softmax | `Σ z_j log z_j + ι_Δ(z)` | `log Σ e^{u_j}` | `softmax(u)` |
//!
//! The box family's proximal energy `½‖z − u‖² + ι_C(z)` has the same minimizer as its Fenchel
//! energy; softmax's proximal energy `½‖z − u‖² + τ Σ z_j log z_j` (on the simplex) is a
//! different map, computed by [`Activation::prox`] with a scalar root solve.
//!
//! The map functions are generic over the scalar (`f32` for training, `f64` for verification).

use nalgebra::RealField;

use crate::error::{Error, Result};

/// A unit-wise (or, for softmax, vector-wise) activation defined by a convex potential.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case", tag = "kind"))]
pub enum Activation {
    /// `f(u) = u`, `G = ½‖z‖²`.
    Identity,
    /// `f(u) = [u]₊`, `G = ½‖z‖² + ι_{≥0}` (Example 1, Eq. 50).
    Relu,
    /// `f(u) = clamp(u, 0, 1)`, `G = ½‖z‖² + ι_{[0,1]ⁿ}`.
    HardSigmoid,
    /// `f(u) = clamp(u, −1, 1)`, `G = ½‖z‖² + ι_{[−1,1]ⁿ}`.
    HardTanh,
    /// `f(u) = clamp(u, lo, hi)` for `lo < hi` (either may be infinite).
    Box {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// `f(u) = softmax(u)`, `G = Σ z log z + ι_Δ` (end of Section 3.2.2).
    Softmax,
}

impl Activation {
    /// The activations without parameters, each with its one name (the serde `kind`, the
    /// command line's and Python's); a box is `box(lo, hi)` ([`Activation`]'s `FromStr`).
    pub const NAMED: [(Activation, &'static str); 5] = [
        (Activation::Identity, "identity"),
        (Activation::Relu, "relu"),
        (Activation::HardSigmoid, "hard_sigmoid"),
        (Activation::HardTanh, "hard_tanh"),
        (Activation::Softmax, "softmax"),
    ];
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self, Self::NAMED.iter().find(|(a, _)| a == self)) {
            (_, Some((_, name))) => f.write_str(name),
            (Activation::Box { lo, hi }, None) => write!(f, "box({lo}, {hi})"),
            (other, None) => write!(f, "{other:?}"),
        }
    }
}

impl std::str::FromStr for Activation {
    type Err = Error;

    /// A name of [`Activation::NAMED`] or `box(lo, hi)` (validated).
    fn from_str(s: &str) -> Result<Self> {
        if let Some((a, _)) = Self::NAMED.iter().find(|(_, n)| *n == s) {
            return Ok(*a);
        }
        let unknown = || {
            let names: Vec<&str> = Self::NAMED.iter().map(|(_, n)| *n).collect();
            Error::input(
                "activation",
                format!(
                    "unknown activation `{s}` (expected {} or box(lo, hi))",
                    names.join(", ")
                ),
            )
        };
        let inner = s
            .strip_prefix("box(")
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(unknown)?;
        let (lo, hi) = inner.split_once(',').ok_or_else(unknown)?;
        let bound = |v: &str| v.trim().parse::<f64>().map_err(|_| unknown());
        let act = Activation::Box {
            lo: bound(lo)?,
            hi: bound(hi)?,
        };
        act.validate()?;
        Ok(act)
    }
}

/// How an inequality constraint stands at a solution (Prop. 2's classification).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Activity {
    /// Active with a positive multiplier.
    Strong,
    /// Active with a zero multiplier (the degenerate case of Prop. 2).
    Weak,
    /// Not active (positive slack).
    Inactive,
}

impl Activity {
    /// The label used in JSON and tables: `strong`, `weak`, `inactive`.
    pub fn label(self) -> &'static str {
        match self {
            Activity::Strong => "strong",
            Activity::Weak => "weak",
            Activity::Inactive => "inactive",
        }
    }
}

/// One-sided branch taken by a weakly active constraint under the limit derivative (Prop. 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Branch {
    /// `B_i ż = 0`: the constraint stays active for small β > 0.
    Stays,
    /// `B_i ż > 0`: the constraint becomes inactive for small β > 0.
    Leaves,
}

impl Branch {
    /// `stays` or `leaves` (as in JSON and tables).
    pub fn label(self) -> &'static str {
        match self {
            Branch::Stays => "stays",
            Branch::Leaves => "leaves",
        }
    }
}

fn cast<T: RealField + Copy>(v: f64) -> T {
    nalgebra::convert(v)
}

impl Activation {
    /// Checks the parameters (`lo < hi`, no NaN).
    pub fn validate(&self) -> Result<()> {
        if let Activation::Box { lo, hi } = *self {
            if lo.is_nan()
                || hi.is_nan()
                || lo >= hi
                || lo == f64::INFINITY
                || hi == f64::NEG_INFINITY
            {
                return Err(Error::input(
                    "activation.box",
                    format!("need lo < hi with finite lo or hi, got [{lo}, {hi}]"),
                ));
            }
        }
        Ok(())
    }

    /// The box `[lo, hi]` of the box family, `None` for softmax. Identity is `(−∞, ∞)`.
    pub fn bounds(&self) -> Option<(f64, f64)> {
        match *self {
            Activation::Identity => Some((f64::NEG_INFINITY, f64::INFINITY)),
            Activation::Relu => Some((0.0, f64::INFINITY)),
            Activation::HardSigmoid => Some((0.0, 1.0)),
            Activation::HardTanh => Some((-1.0, 1.0)),
            Activation::Box { lo, hi } => Some((lo, hi)),
            Activation::Softmax => None,
        }
    }

    /// `f(u) = ∇G*(u) = argmin_z G(z) − zᵀu`, written into `out`.
    pub fn activate<T: RealField + Copy>(&self, u: &[T], out: &mut [T]) {
        match self.bounds() {
            Some((lo, hi)) => {
                let (lo, hi) = (cast::<T>(lo), cast::<T>(hi));
                for (o, &v) in out.iter_mut().zip(u) {
                    *o = clamp(v, lo, hi);
                }
            }
            None => softmax(u, out),
        }
    }

    /// The potential `G(z)` (`+∞` outside its domain).
    pub fn potential<T: RealField + Copy>(&self, z: &[T]) -> T {
        match self.bounds() {
            Some((lo, hi)) => {
                let (lo, hi) = (cast::<T>(lo), cast::<T>(hi));
                let mut s = T::zero();
                for &v in z {
                    if v < lo || v > hi {
                        return cast(f64::INFINITY);
                    }
                    s += v * v;
                }
                s * cast(0.5)
            }
            None => {
                let mut sum = T::zero();
                let mut s = T::zero();
                for &v in z {
                    if v < T::zero() {
                        return cast(f64::INFINITY);
                    }
                    sum += v;
                    if v > T::zero() {
                        s += v * v.ln();
                    }
                }
                if (sum - T::one()).abs() > cast(1e-9) {
                    return cast(f64::INFINITY);
                }
                s
            }
        }
    }

    /// The convex conjugate `G*(u) = sup_z zᵀu − G(z)`.
    pub fn conjugate<T: RealField + Copy>(&self, u: &[T]) -> T {
        match self.bounds() {
            Some((lo, hi)) => {
                let (lo, hi) = (cast::<T>(lo), cast::<T>(hi));
                let half: T = cast(0.5);
                u.iter().fold(T::zero(), |s, &v| {
                    let c = clamp(v, lo, hi);
                    s + v * c - half * c * c
                })
            }
            None => log_sum_exp(u),
        }
    }

    /// Proximal map `argmin_z ½‖z − u‖² + τ F(z)` of the proximal energy's potential `F`
    /// (box family: `F = ι_C`, the projection, independent of `τ`; softmax: `F` = negative
    /// entropy on the simplex, solved by a safeguarded Newton iteration on the simplex
    /// multiplier to full precision).
    pub fn prox<T: RealField + Copy>(&self, u: &[T], tau: T, out: &mut [T]) {
        match self.bounds() {
            Some(_) => self.activate(u, out),
            None => entropy_prox(u, tau, out),
        }
    }
}

impl Activation {
    /// Back-propagation's derivative `f'(u)` (element-wise, box family only): `1` on the open
    /// interval `(lo, hi)`, `0` outside *and at the kinks* — the convention of deep-learning
    /// frameworks (`relu'(0) = 0`), which Prop. 2 replaces by a one-sided derivative.
    ///
    /// # Panics
    /// For softmax, whose derivative is not element-wise (callers validate layers first).
    pub fn derivative<T: RealField + Copy>(&self, u: &[T], out: &mut [T]) {
        let (lo, hi) = self
            .bounds()
            .expect("element-wise derivative of a box-family activation");
        let (lo, hi) = (cast::<T>(lo), cast::<T>(hi));
        for (o, &v) in out.iter_mut().zip(u) {
            *o = if v > lo && v < hi {
                T::one()
            } else {
                T::zero()
            };
        }
    }

    /// The one-sided difference quotient `D_β f(u)[e] = (f(u) − f(u − βe)) / β` (the error
    /// signal `(z* − z̄)/β` of Fenchel back-propagation, Eq. 51; it tends to the Prop. 2
    /// derivative as `β → 0⁺`).
    ///
    /// Computed without cancellation for the box family. With `y = u − βe`, `f(u) − f(y)` is
    /// `f(u) − u + βe` when `y` is inside the box, so the quotient is `(f(u) − u)/β + e`: exactly
    /// `e` where `u` is inside too (back-propagation, for every β), and exact to rounding where
    /// `u` sits on or beyond a bound — forming `y` first would round `βe` against the bound and
    /// lose `log₁₀(|bound|/(β|e|))` digits. Where `y` is clamped the quotient is
    /// `(f(u) − bound)/β`, a difference of two stored numbers. Which piece `u − βe` lies in is
    /// decided by comparing `u − bound` with `βe`, so a step below the bound's rounding unit is
    /// still seen to enter the box.
    pub fn difference_quotient<T: RealField + Copy>(
        &self,
        u: &[T],
        e: &[T],
        beta: T,
        out: &mut [T],
    ) {
        match self.bounds() {
            Some((lo, hi)) => {
                let (lo, hi) = (cast::<T>(lo), cast::<T>(hi));
                // Written as selects so that it vectorizes (no data-dependent branch).
                for ((o, &x), &ej) in out.iter_mut().zip(u).zip(e) {
                    let step = beta * ej;
                    let fx = clamp(x, lo, hi);
                    // `lo < u − βe < hi`, decided without rounding `u − βe` (`u − bound` is
                    // exact near the bound).
                    let y_inside = x - lo > step && x - hi < step;
                    let (numerator, rest) = if y_inside {
                        (fx - x, ej)
                    } else {
                        (fx - clamp(x - step, lo, hi), T::zero())
                    };
                    *o = numerator / beta + rest;
                }
            }
            None => {
                let n = u.len();
                let shifted: Vec<T> = u.iter().zip(e).map(|(&x, &ej)| x - beta * ej).collect();
                let mut fu = vec![T::zero(); n];
                softmax(u, &mut fu);
                softmax(&shifted, out);
                for (o, &a) in out.iter_mut().zip(&fu) {
                    *o = (a - *o) / beta;
                }
            }
        }
    }
}

fn clamp<T: RealField + Copy>(v: T, lo: T, hi: T) -> T {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

/// `log Σ_j e^{u_j}`, computed stably.
pub fn log_sum_exp<T: RealField + Copy>(u: &[T]) -> T {
    let max = u
        .iter()
        .copied()
        .fold(cast::<T>(f64::NEG_INFINITY), |a, b| a.max(b));
    if !max.is_finite() {
        return max;
    }
    let s = u.iter().fold(T::zero(), |s, &v| s + (v - max).exp());
    max + s.ln()
}

/// `softmax(u)_j = e^{u_j} / Σ_k e^{u_k}`, computed stably.
pub fn softmax<T: RealField + Copy>(u: &[T], out: &mut [T]) {
    let max = u
        .iter()
        .copied()
        .fold(cast::<T>(f64::NEG_INFINITY), |a, b| a.max(b));
    let mut s = T::zero();
    for (o, &v) in out.iter_mut().zip(u) {
        *o = (v - max).exp();
        s += *o;
    }
    for o in out.iter_mut() {
        *o /= s;
    }
}

/// Solves `z + τ log z = a` for `z > 0` (Newton in `y = log z` from the right of the root,
/// where the map is convex and increasing, so the iteration is monotone).
fn solve_z_plus_tau_log_z<T: RealField + Copy>(a: T, tau: T) -> T {
    let one = T::one();
    let mut y = if a > T::zero() {
        (a + one).ln()
    } else {
        T::zero()
    };
    if a / tau > y {
        y = a / tau;
    }
    for _ in 0..200 {
        let e = y.exp();
        let h = e + tau * y - a;
        let step = h / (e + tau);
        y -= step;
        if step.abs() <= cast::<T>(4.0) * T::default_epsilon() * (one + y.abs()) {
            break;
        }
    }
    y.exp()
}

/// `argmin_{z ∈ Δ} ½‖z − u‖² + τ Σ z_j log z_j`: `z_j` solves `z_j + τ log z_j = u_j − τ − ν`
/// with the simplex multiplier `ν` chosen so that `Σ z_j = 1` (bisection-safeguarded Newton).
fn entropy_prox<T: RealField + Copy>(u: &[T], tau: T, out: &mut [T]) {
    let n = u.len();
    if n == 0 {
        return;
    }
    let inv_n = T::one() / cast::<T>(n as f64);
    let a_star = inv_n + tau * inv_n.ln(); // z(a_star) = 1/n
    let umax = u.iter().copied().fold(u[0], |a, b| a.max(b));
    let umin = u.iter().copied().fold(u[0], |a, b| a.min(b));
    // At ν_hi every z_j ≤ 1/n (sum ≤ 1); at ν_lo every z_j ≥ 1/n (sum ≥ 1).
    let (mut lo, mut hi) = (umin - tau - a_star, umax - tau - a_star);
    let mut nu = (lo + hi) * cast(0.5);
    for _ in 0..200 {
        let mut sum = T::zero();
        let mut dsum = T::zero();
        for (o, &uj) in out.iter_mut().zip(u) {
            let z = solve_z_plus_tau_log_z(uj - tau - nu, tau);
            *o = z;
            sum += z;
            dsum += z / (z + tau);
        }
        let f = sum - T::one();
        if f.abs() <= cast::<T>(8.0) * T::default_epsilon() {
            break;
        }
        if f > T::zero() {
            lo = nu;
        } else {
            hi = nu;
        }
        let newton = nu + f / dsum;
        nu = if newton > lo && newton < hi {
            newton
        } else {
            (lo + hi) * cast(0.5)
        };
        if hi - lo <= T::default_epsilon() * (T::one() + nu.abs()) {
            break;
        }
    }
    let s: T = out.iter().fold(T::zero(), |s, &v| s + v);
    for o in out.iter_mut() {
        *o /= s;
    }
}

/// The offset of the negative-entropy proximal map: `f = (ẑ − z*)/s` (`s > 0`) for
/// `z* = argmin_{z∈Δ} ½‖z − u‖² + Σ z log z` and the loss-augmented point `ẑ` whose
/// stationarity differs from that of `z*` by `c` per unit of `s` and whose quadratic weight is
/// `scale` (see [`crate::problem::ProxProblem`]): subtracting the two stationarity conditions,
/// ```text
///     scale·f_j + log1p(s f_j / z*_j)/s = c_j + ν,    Σ_j f_j = 0,
/// ```
/// each left side increasing in `f_j`, so `f_j(ν)` is a safeguarded scalar Newton solve and `ν`
/// the root of the increasing `Σ_j f_j(ν)`. All data are `O(1)` for every `s`: no
/// `ẑ − z*` is formed, so nothing cancels. `log1p(x)/s` is written `(f/z*)·G(x)` with
/// `G(x) = log1p(x)/x` (a series near 0).
pub fn entropy_offset(z_star: &[f64], scale: f64, s: f64, c: &[f64], out: &mut [f64]) {
    let n = z_star.len();
    if n == 0 {
        return;
    }
    // f_j for a given ν (the unit's equation, bracketed and Newton-safeguarded).
    let unit = |j: usize, nu: f64| -> (f64, f64) {
        let (z, rhs) = (z_star[j], c[j] + nu);
        let phi = |f: f64| scale * f + f / z * log1p_over_x(s * f / z);
        let dphi = |f: f64| scale + 1.0 / (z + s * f);
        let (mut lo, mut hi) = if rhs >= 0.0 {
            (0.0, rhs / scale)
        } else {
            ((rhs / (scale + 1.0 / z)).max(-z / s), 0.0)
        };
        let mut f = if rhs >= 0.0 { hi } else { 0.5 * (lo + hi) };
        for _ in 0..200 {
            let r = phi(f) - rhs;
            if r == 0.0 {
                break;
            }
            if r > 0.0 {
                hi = f;
            } else {
                lo = f;
            }
            let newton = f - r / dphi(f);
            let next = if newton > lo && newton < hi {
                newton
            } else {
                0.5 * (lo + hi)
            };
            if (next - f).abs() <= 4.0 * f64::EPSILON * f.abs().max(f64::MIN_POSITIVE) {
                f = next;
                break;
            }
            f = next;
        }
        (f, 1.0 / dphi(f))
    };
    let (mut lo, mut hi) = (
        c.iter().map(|v| -v).fold(f64::INFINITY, f64::min),
        c.iter().map(|v| -v).fold(f64::NEG_INFINITY, f64::max),
    );
    let mut nu = 0.5 * (lo + hi);
    for _ in 0..200 {
        let (mut sum, mut dsum, mut size) = (0.0, 0.0, 0.0f64);
        for (j, o) in out.iter_mut().enumerate() {
            let (f, df) = unit(j, nu);
            *o = f;
            sum += f;
            dsum += df;
            size = size.max(f.abs());
        }
        if sum.abs() <= 8.0 * f64::EPSILON * size || hi - lo <= 4.0 * f64::EPSILON * nu.abs() {
            break;
        }
        if sum > 0.0 {
            hi = nu;
        } else {
            lo = nu;
        }
        let newton = nu - sum / dsum;
        nu = if newton > lo && newton < hi {
            newton
        } else {
            0.5 * (lo + hi)
        };
    }
}

/// `log1p(x)/x`, accurate near 0 (series for `|x| < 0.25`), `1` at 0.
pub fn log1p_over_x(x: f64) -> f64 {
    if x.abs() < 0.25 {
        // Σ_{k≥0} (−x)^k/(k+1): 30 terms reach 0.25^30 ≈ 1e-18.
        let mut sum = 0.0;
        let mut p = 1.0;
        for k in 0..30 {
            sum += p / (k + 1) as f64;
            p *= -x;
        }
        sum
    } else {
        x.ln_1p() / x
    }
}

/// `((1 + x)·log1p(x) − x)/x²`, the Bregman divergence of `t log t` between `1 + x` and `1`
/// over `x²`, accurate near 0 (series for `|x| < 0.25`), `1/2` at 0.
pub fn entropy_bregman_over_x2(x: f64) -> f64 {
    if x.abs() < 0.25 {
        // Σ_{k≥2} (−x)^{k−2}/(k(k−1)).
        let mut sum = 0.0;
        let mut p = 1.0;
        for k in 2..32 {
            sum += p / (k * (k - 1)) as f64;
            p *= -x;
        }
        sum
    } else {
        ((1.0 + x) * x.ln_1p() - x) / (x * x)
    }
}

/// Closed-form limit derivative of one box-constrained unit (Prop. 2 with a diagonal,
/// unit Hessian and at most one active bound):
/// the projection of `−c` onto the tangent cone of `[lo, hi]` at `z`, given `u` where
/// `z = clamp(u)`, with the classification of the active bound.
///
/// * `lo < u < hi`: inactive, `ż = −c`;
/// * `u < lo` (multiplier `lo − u > 0`) or `u > hi`: strongly active, `ż = 0`;
/// * `u = lo` (weakly active): `ż = [−c]₊`, branch `Leaves` when `−c > 0`;
/// * `u = hi` (weakly active): `ż = −[c]₊`... i.e. `min(−c, 0)`, branch `Leaves` when `−c < 0`.
///
/// "`u = lo`" means `|u − lo| ≤ tie` (pass `0.0` for exact ties).
pub fn box_unit_limit(
    u: f64,
    lo: f64,
    hi: f64,
    c: f64,
    tie: f64,
) -> (f64, Activity, Option<Branch>) {
    let d = -c;
    let at = |b: f64| b.is_finite() && (u - b).abs() <= tie;
    if at(lo) {
        if d > 0.0 {
            (d, Activity::Weak, Some(Branch::Leaves))
        } else {
            (0.0, Activity::Weak, Some(Branch::Stays))
        }
    } else if at(hi) {
        if d < 0.0 {
            (d, Activity::Weak, Some(Branch::Leaves))
        } else {
            (0.0, Activity::Weak, Some(Branch::Stays))
        }
    } else if u < lo || u > hi {
        (0.0, Activity::Strong, None)
    } else {
        (d, Activity::Inactive, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn difference_quotient_is_exact_at_a_bound() {
        // u on hard sigmoid's upper bound, the step u − βe moves inside: the quotient is e
        // exactly for every β (forming u − βe first would round βe against 1: at β = 1e-9 the
        // earlier formula kept 7 digits).
        let e = [0.123_456_789, 1e-3];
        for beta in [1e-3, 1e-9, 1e-14] {
            let mut out = [0.0_f64; 2];
            Activation::HardSigmoid.difference_quotient(&[1.0, 1.0], &e, beta, &mut out);
            assert_eq!(out, e, "beta {beta}");
            // u beyond the bound by 2β: (1 − u)/β + e = e − 2 to rounding.
            let u = [1.0 + 2.0 * beta, 1.0 + 2.0 * beta];
            Activation::HardSigmoid.difference_quotient(&u, &[3.0, 3.0], beta, &mut out);
            let exact = ((1.0 - u[0]) / beta) + 3.0;
            assert!((out[0] - exact).abs() <= 1e-15 * 3.0, "{} {exact}", out[0]);
        }
    }

    #[test]
    fn fenchel_young_equality_holds_at_the_activation() {
        // G(f(u)) + G*(u) = f(u)ᵀu for every activation (equality case of Fenchel-Young).
        let u = [0.7, -1.3, 0.0, 2.5, 0.4];
        for act in [
            Activation::Identity,
            Activation::Relu,
            Activation::HardSigmoid,
            Activation::HardTanh,
            Activation::Box { lo: -0.5, hi: 2.0 },
            Activation::Softmax,
        ] {
            let mut z = [0.0; 5];
            act.activate(&u, &mut z);
            let lhs = act.potential(&z) + act.conjugate(&u);
            let rhs: f64 = z.iter().zip(&u).map(|(a, b)| a * b).sum();
            // Rounding of a handful of O(1) terms: 1e-14 is generous.
            assert_relative_eq!(lhs, rhs, epsilon = 1e-14, max_relative = 1e-14);
        }
    }

    #[test]
    fn activation_is_argmin_of_fenchel_energy() {
        // G(f(u)) − f(u)ᵀu ≤ G(z) − zᵀu at random feasible perturbations.
        let u = [0.3, -0.2, 1.7];
        for act in [Activation::Relu, Activation::HardTanh, Activation::Softmax] {
            let mut z = [0.0; 3];
            act.activate(&u, &mut z);
            let e =
                |z: &[f64]| act.potential(z) - z.iter().zip(&u).map(|(a, b)| a * b).sum::<f64>();
            let e0 = e(&z);
            for k in 0..20 {
                let t = 0.01 * (k as f64 - 10.0);
                let mut w = [z[0] + t, z[1] - 0.5 * t, z[2] - 0.5 * t];
                if matches!(act, Activation::Softmax) {
                    // stay on the simplex
                    w = [
                        z[0] + t * z[0],
                        z[1] - t * z[0] * 0.5,
                        z[2] - t * z[0] * 0.5,
                    ];
                }
                assert!(e(&w) >= e0 - 1e-14);
            }
        }
    }

    #[test]
    fn entropy_prox_satisfies_its_optimality_condition() {
        // z_j − u_j + τ(log z_j + 1) + ν = 0 for one ν, Σ z = 1.
        let u = [0.5, -2.0, 3.0, 0.1];
        for tau in [0.1, 1.0, 10.0] {
            let mut z = [0.0; 4];
            Activation::Softmax.prox(&u, tau, &mut z);
            assert_relative_eq!(z.iter().sum::<f64>(), 1.0, epsilon = 1e-14);
            let nus: Vec<f64> = (0..4)
                .map(|j| u[j] - z[j] - tau * (z[j].ln() + 1.0))
                .collect();
            for nu in &nus {
                assert_relative_eq!(*nu, nus[0], epsilon = 1e-12);
            }
        }
    }

    #[test]
    fn f32_and_f64_paths_agree() {
        let u64 = [0.3, -0.2, 1.7, 0.9];
        let u32: Vec<f32> = u64.iter().map(|&v| v as f32).collect();
        for act in [
            Activation::Relu,
            Activation::HardSigmoid,
            Activation::Softmax,
        ] {
            let mut a = [0.0f64; 4];
            let mut b = [0.0f32; 4];
            act.activate(&u64, &mut a);
            act.activate(&u32, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert_relative_eq!(*x, *y as f64, epsilon = 1e-6);
            }
        }
    }

    #[test]
    fn box_limit_at_ties_is_one_sided() {
        // ẑ_β = [u − βc]₊ at u = 0: derivative [−c]₊.
        assert_eq!(box_unit_limit(0.0, 0.0, f64::INFINITY, -2.0, 0.0).0, 2.0);
        assert_eq!(box_unit_limit(0.0, 0.0, f64::INFINITY, 2.0, 0.0).0, 0.0);
        assert_eq!(box_unit_limit(1.0, 0.0, 1.0, -2.0, 0.0).0, 0.0);
        assert_eq!(box_unit_limit(1.0, 0.0, 1.0, 2.0, 0.0).0, -2.0);
        assert_eq!(box_unit_limit(-1.0, 0.0, 1.0, 2.0, 0.0).1, Activity::Strong);
    }
}
