//! A problem and its rescaled copies have the same answer (issue 25): multiplying a row and its
//! right-hand side by `10^r`, the energy by `10^t`, or `θ`, `c`, `b` by `10^s` (which scales
//! the solution) must leave every activity label unchanged, and scale `z*`, `ż`, the
//! multipliers and the gradient exactly as the algebra says:
//!
//! | scaling | `z*` | `λ_i` | `ż` (linear loss) | `dL/dθ` |
//! |---|---|---|---|---|
//! | row `i` by `10^r` | same | `/ 10^r` | same | same |
//! | energy (`Q, B, c`) by `10^t` | same | `× 10^t` | `/ 10^t` | same |
//! | `θ, c, b, b_eq` by `10^s` | `× 10^s` | `× 10^s` | same | same |
//!
//! and the reproducers of the issue whose answers flipped with the scale, against their exact
//! answers worked out by hand.

use bilevel::app::derive::derive_json;
use bilevel::app::verify::instances::{constructed_qp, rng, vector, ConstructedQp};
use bilevel::prelude::*;
use nalgebra::{DMatrix, DVector};
use proptest::prelude::*;
use rand::Rng;
use std::sync::Arc;

/// The scalings applied to one instance: per-row and per-equality exponents, energy, solution.
struct Scaling {
    rows: Vec<i32>,
    eq: Vec<i32>,
    energy: i32,
    solution: i32,
}

fn ten(k: i32) -> f64 {
    10f64.powi(k)
}

fn scaled(inst: &ConstructedQp, s: &Scaling) -> (QuadraticProblem, DVector<f64>) {
    let (t, x) = (ten(s.energy), ten(s.solution));
    let c = &inst.constraints;
    let row_scale = |a: &DMatrix<f64>, e: &[i32]| {
        DMatrix::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] * ten(e[i]))
    };
    let rhs_scale =
        |b: &DVector<f64>, e: &[i32]| DVector::from_fn(b.len(), |i, _| b[i] * ten(e[i]) * x);
    let constraints = LinearConstraints {
        a: row_scale(&c.a, &s.rows),
        b: rhs_scale(&c.b, &s.rows),
        a_eq: row_scale(&c.a_eq, &s.eq),
        b_eq: rhs_scale(&c.b_eq, &s.eq),
    };
    let layer = QuadraticProblem::new(&inst.q * t, &inst.b * t, &inst.c * (t * x), constraints)
        .expect("a valid scaled layer");
    (layer, &inst.theta * x)
}

/// The limit derivative, with the dense active-set method or (`clarabel`) the interior-point
/// backend followed by the exact refinement.
fn limit(
    layer: QuadraticProblem,
    theta: &DVector<f64>,
    g: &DVector<f64>,
    clarabel: bool,
) -> LimitDerivative {
    let layer = if clarabel {
        layer.with_backend(Arc::new(Clarabel::default()))
    } else {
        layer
    };
    let program = Bilevel::new(layer, Loss::Linear { g: g.clone() }).unwrap();
    program
        .limit(theta)
        .expect("the limit of a well-posed layer")
}

fn close(a: &DVector<f64>, b: &DVector<f64>, what: &str) -> Result<(), TestCaseError> {
    let scale = a.amax().max(b.amax());
    prop_assert!(
        (a - b).amax() <= 1e-9 * scale,
        "{what}: {a} against {b} (scale {scale:e})"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Odd seeds solve the scaled copy with Clarabel (and the exact refinement), even ones with
    /// the dense active-set method; the base problem always with the latter.
    #[test]
    fn labels_and_derivatives_do_not_depend_on_the_scale(seed in 0u64..100_000) {
        use Activity::{Inactive, Strong, Weak};
        let labels = [Strong, Strong, Weak, Weak, Inactive, Inactive];
        let inst = constructed_qp(&mut rng(seed), 6, 3, 1, &labels);
        let g = vector(&mut rng(seed + 1), 6);
        let base = limit(
            QuadraticProblem::new(inst.q.clone(), inst.b.clone(), inst.c.clone(), inst.constraints.clone()).unwrap(),
            &inst.theta,
            &g,
            false,
        );
        prop_assert_eq!(&base.z_star.activity, &labels.to_vec());
        let mut r = rng(seed + 2);
        let mut exponent = || r.random_range(-12..=12);
        let s = Scaling {
            rows: (0..labels.len()).map(|_| exponent()).collect(),
            eq: vec![exponent()],
            energy: exponent(),
            solution: exponent(),
        };
        let (layer, theta) = scaled(&inst, &s);
        let got = limit(layer, &theta, &g, seed % 2 == 1);
        prop_assert_eq!(&got.z_star.activity, &base.z_star.activity);
        prop_assert_eq!(&got.direction.branches, &base.direction.branches);
        close(&got.z_star.z, &(&base.z_star.z * ten(s.solution)), "z*")?;
        close(&got.direction.z_dot, &(&base.direction.z_dot / ten(s.energy)), "z_dot")?;
        close(&got.grad_theta, &base.grad_theta, "grad_theta")?;
        // The condition estimate is of the equilibrated system (rows and P scaled by powers of
        // two into [1, 2)): the same up to the factors of two that scaling by 10^k leaves.
        let ratio = got.direction.condition / base.direction.condition;
        prop_assert!((0.25..=4.0).contains(&ratio), "condition {} against {}", got.direction.condition, base.direction.condition);
        // Multipliers back in the base problem's units (row by row: their scales differ).
        let unscale = |l: &DVector<f64>, e: &[i32]| {
            DVector::from_fn(l.len(), |i, _| l[i] / ten(s.energy + s.solution - e[i]))
        };
        close(&unscale(&got.z_star.multipliers, &s.rows), &base.z_star.multipliers, "multipliers")?;
        close(&unscale(&got.z_star.multipliers_eq, &s.eq), &base.z_star.multipliers_eq, "multipliers_eq")?;
    }
}

fn derive(problem: &str) -> serde_json::Value {
    derive_json(problem).expect("derive succeeds")
}

/// Issue 25, item 1: `min ½z² + z` s.t. `10⁹ z ≥ 0`: `z* = 0` with `λ = 10⁻⁹`, so
/// `λ ‖a‖ = 1`: the row is strongly active and `ż = 0` whatever its scale (the label once
/// flipped to weak between `a = 2e8` and `5e8`, and `ż` to 1). Scaling `Q` and `B` by 1e-9
/// instead is the same problem.
#[test]
fn a_strongly_active_row_stays_strong_at_every_scale() {
    for (q, bmat, a) in [
        ("1", "1", "1"),
        ("1", "1", "1e9"),
        ("1", "1", "1e-9"),
        ("1e-9", "1e-9", "1"),
        ("1", "1", "1e300"),
    ] {
        let v = derive(&format!(
            r#"{{"Q":[[{q}]],"c":[0],"B":[[{bmat}]],"theta":[-1],"A":[[{a}]],"b":[0],
                "loss":{{"kind":"linear","g":[-1]}},"betas":[0.5,0.01]}}"#
        ));
        assert_eq!(v["constraints"][0], "strong", "a = {a}, Q = {q}");
        assert_eq!(v["z_dot"][0].as_f64(), Some(0.0), "a = {a}, Q = {q}");
        assert_eq!(v["grad_theta"][0].as_f64(), Some(0.0), "a = {a}, Q = {q}");
        // With Q = 1 the surrogates agree with the limit: ẑ_β = 0 for every β < 1 (with
        // Q = 1e-9, β = 0.5 is far beyond the multiplier and ẑ_β moves, as it should).
        if q == "1" {
            for s in v["surrogates"].as_array().unwrap() {
                assert_eq!(s["z_hat"][0].as_f64(), Some(0.0), "a = {a}");
            }
        }
    }
}

/// Issue 25, items 1 and 3: an inactive row scaled by 1e-9 stays inactive, and a row of 1e300
/// (whose square overflows) is solved, not reported infeasible: `min ½z²` s.t. `a z ≥ 0` has
/// `z* = 0`, weakly active with multiplier 0, for every `a > 0`.
#[test]
fn tiny_and_huge_rows_keep_their_labels() {
    let v = derive(r#"{"Q":[[1]],"c":[1],"A":[[1e-9]],"b":[0],"loss":{"kind":"linear","g":[1]}}"#);
    assert_eq!(v["constraints"][0], "inactive");
    for a in ["1e-300", "1e-9", "1", "1.34e154", "1e300", "1.7e308"] {
        let v = derive(&format!(
            r#"{{"Q":[[1]],"c":[0],"A":[[{a}]],"b":[0],"loss":{{"kind":"linear","g":[1]}}}}"#
        ));
        assert_eq!(v["z_star"][0].as_f64(), Some(0.0), "a = {a}");
        assert_eq!(v["constraints"][0], "weak", "a = {a}");
        assert_eq!(v["multipliers"][0].as_f64(), Some(0.0), "a = {a}");
        // g = 1 pushes z down against the row: the one-sided rate stays at 0.
        assert_eq!(v["z_dot"][0].as_f64(), Some(0.0), "a = {a}");
    }
}
